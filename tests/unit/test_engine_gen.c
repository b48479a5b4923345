/* The generation loop (engine/engine_gen.c) on the bundled model's real
 * tokenizer, with logits made by hand so that each step's winner is known:
 * free text, stop strings, the token limit, logprobs from the row as it
 * came, end of generation, a grammar from the start, and a grammar that
 * holds only once its trigger has been written (tool_choice auto). */
#include "tests/unit/test.h"

#include <errno.h>

#include "common/common.h"
#include "engine/engine.h"
#include "engine/engine_grammar.h"
#include "tokenizer/tokenizer.h"

static struct moe_tokenizer *tok;
static int32_t V;
static float *row;

static int setup(void **state)
{
    (void)state;
    assert_int_equal(moe_tokenizer_from_hf(moe_test_path("models/tiny-moe/tokenizer.json"),
                                           moe_test_path("models/tiny-moe/tokenizer_config.json"),
                                           &tok), 0);
    V = moe_tokenizer_vocab_size(tok);
    row = malloc((size_t)V * sizeof(float));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    moe_tokenizer_free(tok);
    free(row);
    return 0;
}

/* the single token spelling s */
static int32_t id_of(const char *s)
{
    int32_t *ids;
    size_t n;
    assert_int_equal(moe_tokenizer_encode(tok, s, strlen(s), false, &ids, &n), 0);
    assert_int_equal(n, 1);
    int32_t id = ids[0];
    free(ids);
    return id;
}

/* a row where first wins and second comes next (-1: none) */
static float *rank(int32_t first, int32_t second)
{
    for (int32_t i = 0; i < V; i++)
        row[i] = -10.0f + (float)(i % 7) * 0.01f;
    row[first] = 10.0f;
    if (second >= 0)
        row[second] = 5.0f;
    return row;
}

static struct moe_gen_params greedy(void)
{
    struct moe_gen_params p = {.max_new = -1};
    moe_sampling_defaults(&p.sampling);
    p.sampling.temperature = 0;
    return p;
}

static void test_free_text_stop_and_limit(void **state)
{
    (void)state;
    struct moe_gen_shared *sh;
    assert_int_equal(moe_gen_shared_create(tok, V, &sh), 0);
    const char *stops[] = {"ab"};
    struct moe_gen_params p = greedy();
    p.stop = stops, p.n_stop = 1, p.logprobs = true, p.top_logprobs = 2;
    struct moe_gen *g;
    assert_int_equal(moe_gen_create(sh, &p, &g), 0);
    struct moe_gen_token t;
    assert_int_equal(moe_gen_step(g, rank(id_of("x"), id_of("y")), NULL, 0, &t), 0);
    assert_int_equal(t.id, id_of("x"));
    assert_int_equal(t.len, 1);
    assert_memory_equal(t.text, "x", 1);
    assert_null(t.finish);
    /* logprobs: the row as it came, the likeliest two */
    assert_non_null(t.lp);
    assert_int_equal(t.lp->n_top, 2);
    assert_true(t.lp->tok.logprob > -0.01f && t.lp->tok.logprob <= 0.0f);
    assert_memory_equal(t.lp->top[1].bytes, "y", 1);
    assert_int_equal(moe_gen_step(g, rank(id_of("a"), -1), NULL, 0, &t), 0);
    assert_int_equal(t.len, 0); /* "a" may begin the stop string: held */
    assert_int_equal(moe_gen_step(g, rank(id_of("b"), -1), NULL, 0, &t), 0);
    assert_string_equal(t.finish, "stop");
    assert_false(t.flush); /* what follows a stop string is dropped */
    assert_int_equal(moe_gen_count(g), 3);
    moe_gen_free(g);

    p = greedy();
    p.max_new = 2;
    assert_int_equal(moe_gen_create(sh, &p, &g), 0);
    assert_int_equal(moe_gen_step(g, rank(id_of("x"), -1), NULL, 0, &t), 0);
    assert_null(t.finish);
    assert_int_equal(moe_gen_step(g, rank(id_of("y"), -1), NULL, 0, &t), 0);
    assert_string_equal(t.finish, "length");
    assert_true(t.flush);
    moe_gen_free(g);

    /* end of generation: not text; ignore_eos makes it a token like another */
    p = greedy();
    assert_int_equal(moe_gen_create(sh, &p, &g), 0);
    assert_int_equal(moe_gen_step(g, rank(moe_tokenizer_eos(tok), -1), NULL, 0, &t), 0);
    assert_true(t.eog);
    assert_string_equal(t.finish, "stop");
    moe_gen_free(g);
    moe_gen_shared_free(sh);
}

/* steps pieces one token at a time, each the winner over a runner-up "x",
 * and checks the text that came out and how the last step ended */
static void expect_text(struct moe_gen *g, const char *const *pieces, const char *want,
                        const char *finish)
{
    char out[256] = "";
    struct moe_gen_token t = {0};
    for (size_t i = 0; pieces[i]; i++) {
        assert_int_equal(moe_gen_step(g, rank(id_of(pieces[i]), id_of("x")), NULL, 0, &t), 0);
        strncat(out, t.text, t.len);
    }
    assert_string_equal(out, want);
    if (finish)
        assert_string_equal(t.finish, finish);
    else
        assert_null(t.finish);
}

static void test_grammar_and_trigger(void **state)
{
    (void)state;
    struct moe_gen_shared *sh;
    assert_int_equal(moe_gen_shared_create(tok, V, &sh), 0);
    struct moe_grammar *gr;
    assert_int_equal(moe_grammar_compile("root ::= \"<\" [0-9]+ \">\"\n", &gr), 0);
    struct moe_gen_params p = greedy();
    p.grammar = gr;
    struct moe_gen *g;
    /* from the start: "y" wins each row but may not come: the mask takes the
     * runner-up where it fits, and the grammar's end ends generation */
    assert_int_equal(moe_gen_create(sh, &p, &g), 0);
    struct moe_gen_token t;
    assert_int_equal(moe_gen_step(g, rank(id_of("y"), id_of("<")), NULL, 0, &t), 0);
    assert_int_equal(t.id, id_of("<"));
    assert_int_equal(moe_gen_step(g, rank(id_of("y"), id_of("7")), NULL, 0, &t), 0);
    assert_int_equal(t.id, id_of("7"));
    assert_int_equal(moe_gen_step(g, rank(id_of(">"), -1), NULL, 0, &t), 0);
    assert_string_equal(t.finish, "stop");
    moe_gen_free(g);

    /* with a trigger: free until "<" is written, then held to the grammar */
    p.trigger = "<";
    assert_int_equal(moe_gen_create(sh, &p, &g), 0);
    static const char *const free_part[] = {"h", "i", " ", NULL};
    expect_text(g, free_part, "hi ", NULL);
    assert_int_equal(moe_gen_step(g, rank(id_of("<"), -1), NULL, 0, &t), 0);
    assert_int_equal(moe_gen_step(g, rank(id_of("y"), id_of("4")), NULL, 0, &t), 0);
    assert_int_equal(t.id, id_of("4")); /* "y" wins the row but the grammar holds now */
    assert_int_equal(moe_gen_step(g, rank(id_of(">"), -1), NULL, 0, &t), 0);
    assert_string_equal(t.finish, "stop");
    assert_int_equal(moe_gen_count(g), 6);
    moe_gen_free(g);
    moe_grammar_unref(gr);
    moe_gen_shared_free(sh);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_free_text_stop_and_limit),
        cmocka_unit_test(test_grammar_and_trigger),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
