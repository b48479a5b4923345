/* Constrained decoding: GBNF compiling and matching, JSON Schema to GBNF,
 * and the token mask against a real 50k vocabulary (GPT-2's): every token
 * the mask allows is one the matcher accepts, and no other. */
#include "test.h"

#include "common/common.h"
#include "engine/engine_grammar.h"
#include "tokenizer/tokenizer.h"

#include <jansson.h>
#include <errno.h>
#include <time.h>

static struct moe_grammar *compile(const char *gbnf)
{
    struct moe_grammar *g = NULL;
    if (moe_grammar_compile(gbnf, &g) < 0)
        fail_msg("compile: %s\n%s", moe_err_msg(), gbnf);
    return g;
}

/* whether text is a whole sentence of g */
static bool whole(struct moe_grammar *g, const char *text)
{
    struct moe_grammar_state *st;
    assert_int_equal(moe_grammar_state_new(g, &st), 0);
    bool ok = moe_grammar_advance(st, text, strlen(text)) == 0 && moe_grammar_can_end(st);
    moe_grammar_state_free(st);
    return ok;
}

static bool prefix(struct moe_grammar *g, const char *text)
{
    struct moe_grammar_state *st;
    assert_int_equal(moe_grammar_state_new(g, &st), 0);
    bool ok = moe_grammar_accepts(st, text, strlen(text));
    moe_grammar_state_free(st);
    return ok;
}

static void test_gbnf_matching(void **state)
{
    (void)state;
    struct moe_grammar *g = compile(
        "root ::= greeting (\", \" name)? \"!\"\n"
        "greeting ::= \"hi\" | \"hello\"   # a comment\n"
        "name ::= [A-Z] [a-z]{1,5}\n");
    assert_true(whole(g, "hi!"));
    assert_true(whole(g, "hello, Bob!"));
    assert_true(whole(g, "hi, Ann!"));
    assert_false(whole(g, "hi, A!"));       /* {1,5}: one at least */
    assert_false(whole(g, "hi, Abcdefg!")); /* at most five */
    assert_false(whole(g, "hi"));           /* a prefix, not a sentence */
    assert_true(prefix(g, "hel"));
    assert_false(prefix(g, "hex"));
    moe_grammar_unref(g);

    /* repetition, groups over lines, classes with escapes and negation */
    g = compile("root ::= ( [^\\n\"] | \"\\\\\" . )* \"\\n\"\n");
    assert_true(whole(g, "a b\\\"c\n"));
    assert_false(whole(g, "a\"b\n"));
    moe_grammar_unref(g);
    g = compile("root ::= x\n  | y\nx ::= \"a\"+\ny ::= \"b\"*\n");
    assert_true(whole(g, "aaa"));
    assert_true(whole(g, ""));
    assert_true(whole(g, "bb"));
    assert_false(whole(g, "ab"));
    moe_grammar_unref(g);
}

static void test_gbnf_utf8(void **state)
{
    (void)state;
    struct moe_grammar *g = compile("root ::= [à-ÿ]+ \"中\"\n");
    assert_true(whole(g, "éè中"));
    assert_false(whole(g, "e中"));
    /* a character's bytes one at a time: the first alone already fails
     * when no character it can begin fits */
    struct moe_grammar_state *st;
    assert_int_equal(moe_grammar_state_new(g, &st), 0);
    assert_true(moe_grammar_accepts(st, "\xc3", 1));   /* é's first byte */
    assert_false(moe_grammar_accepts(st, "\xe4", 1));  /* 中's first: not a class member */
    assert_int_equal(moe_grammar_advance(st, "\xc3", 1), 0);
    assert_false(moe_grammar_can_end(st));             /* half a character */
    assert_int_equal(moe_grammar_advance(st, "\xa9", 1), 0);
    assert_int_equal(moe_grammar_advance(st, "\xe4\xb8", 2), 0);
    assert_int_equal(moe_grammar_advance(st, "\xad", 1), 0);
    assert_true(moe_grammar_done(st));
    moe_grammar_state_free(st);
    moe_grammar_unref(g);
    /* an overlong form of '"' is not '"' */
    g = compile("root ::= \"\\\"\"\n");
    assert_false(prefix(g, "\xf0\x80\x80\xa2"));
    assert_false(prefix(g, "\xc0\xa2"));
    assert_true(whole(g, "\""));
    moe_grammar_unref(g);
}

static void test_gbnf_errors(void **state)
{
    (void)state;
    static const struct {
        const char *gbnf, *msg;
    } bad[] = {
        {"root ::= x\n", "rule 'x' is used but never defined"},
        {"a ::= \"a\"\n", "no rule named 'root'"},
        {"root ::= root \"a\" | \"b\"\n", "left recursion"},
        {"root ::= x \"a\"\nx ::= \"\" | root \"b\"\n", "left recursion"},
        {"root ::= x* \"a\"\nx ::= \"\" | \"b\"\n", "can match nothing"},
        {"root ::= (\"a\"\n", "missing )"},
        {"root ::= \"a\n", "unterminated"},
        {"root ::= [z-a]\n", "out of order"},
        {"root ::= \"a\"{3,2}\n", "repetition"},
        {"root ::= \"a\"{99999}\n", "repetition bound"},
        {"root ::= \"\\q\"\n", "unknown escape"},
        {"root ::= \"\"*\n", "empty literal"},
        {"root ::= \"a\"\nroot ::= \"b\"\n", "defined twice"},
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(bad); i++) {
        struct moe_grammar *g = NULL;
        assert_int_equal(moe_grammar_compile(bad[i].gbnf, &g), -EINVAL);
        assert_null(g);
        if (!strstr(moe_err_msg(), bad[i].msg))
            fail_msg("%s: got \"%s\", want \"%s\"", bad[i].gbnf, moe_err_msg(), bad[i].msg);
        assert_non_null(strstr(moe_err_msg(), "grammar line"));
    }
}

static struct moe_grammar *schema(const char *json)
{
    json_error_t je;
    json_t *s = json_loads(json, 0, &je);
    assert_non_null(s);
    char *gbnf = NULL;
    if (moe_schema_to_gbnf(s, NULL, NULL, &gbnf) < 0)
        fail_msg("schema %s: %s", json, moe_err_msg());
    json_decref(s);
    struct moe_grammar *g = compile(gbnf);
    free(gbnf);
    return g;
}

static void test_schema_objects(void **state)
{
    (void)state;
    struct moe_grammar *g = schema(
        "{\"type\":\"object\",\"properties\":{"
        "\"name\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":5},"
        "\"age\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":120},"
        "\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"a\",\"b\"]},\"maxItems\":2},"
        "\"when\":{\"type\":\"string\",\"format\":\"date\"},"
        "\"id\":{\"type\":\"string\",\"pattern\":\"^[A-Z]{2}-\\\\d+$\"}},"
        "\"required\":[\"name\",\"age\"],\"additionalProperties\":false}");
    assert_true(whole(g, "{\"name\": \"bob\", \"age\": 42}"));
    assert_true(whole(g, "{\"name\":\"é\",\"age\":0,\"tags\":[\"a\", \"b\"]}"));
    assert_true(whole(g, "{\n  \"name\": \"x\",\n  \"age\": 120,\n  \"when\": \"2026-12-08\"\n}"));
    assert_true(whole(g, "{\"name\":\"x\",\"age\":1,\"id\":\"AB-42\"}"));
    assert_false(whole(g, "{\"age\": 3}"));                     /* required */
    assert_false(whole(g, "{\"name\": \"\", \"age\": 3}"));     /* minLength */
    assert_false(whole(g, "{\"name\": \"bobbyy\", \"age\": 3}"));
    assert_false(whole(g, "{\"name\": \"x\", \"age\": 121}"));
    assert_false(whole(g, "{\"name\": \"x\", \"age\": -1}"));
    assert_false(whole(g, "{\"name\": \"x\", \"age\": 1, \"tags\": [\"a\",\"b\",\"a\"]}"));
    assert_false(whole(g, "{\"name\": \"x\", \"age\": 1, \"other\": 1}"));
    assert_false(whole(g, "{\"name\": \"x\", \"age\": 1, \"when\": \"2026-13-01\"}"));
    assert_false(whole(g, "{\"name\": \"x\", \"age\": 1, \"id\": \"ab-1\"}"));
    moe_grammar_unref(g);

    /* $defs, recursion, anyOf, nullable, const, additionalProperties as a schema */
    g = schema("{\"$defs\":{\"node\":{\"type\":\"object\",\"properties\":{"
               "\"v\":{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"null\"}]},"
               "\"kids\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/node\"}}},"
               "\"required\":[\"v\"]}},"
               "\"type\":\"object\",\"properties\":{\"root\":{\"$ref\":\"#/$defs/node\"},"
               "\"kind\":{\"const\":\"tree\"}},\"required\":[\"root\",\"kind\"],"
               "\"additionalProperties\":{\"type\":\"number\"}}");
    assert_true(whole(g, "{\"root\":{\"v\":1,\"kids\":[{\"v\":null},{\"v\":2,\"kids\":[]}]},"
                         "\"kind\":\"tree\",\"x\":1.5}"));
    assert_false(whole(g, "{\"root\":{\"v\":\"1\"},\"kind\":\"tree\"}"));
    assert_false(whole(g, "{\"root\":{\"v\":1},\"kind\":\"bush\"}"));
    assert_false(whole(g, "{\"root\":{\"v\":1},\"kind\":\"tree\",\"x\":\"s\"}"));
    moe_grammar_unref(g);
}

/* integer and number bounds against every value in a window */
static void test_schema_ranges(void **state)
{
    (void)state;
    static const struct {
        const char *schema;
        double lo, hi;
        bool lo_ex, hi_ex, integer;
    } cases[] = {
        {"{\"type\":\"integer\",\"minimum\":-37,\"maximum\":215}", -37, 215, false, false, true},
        {"{\"type\":\"integer\",\"exclusiveMinimum\":9,\"maximum\":100}", 9, 100, true, false, true},
        {"{\"type\":\"integer\",\"maximum\":-3}", -1e9, -3, false, false, true},
        {"{\"type\":\"integer\",\"minimum\":98}", 98, 1e9, false, false, true},
        {"{\"type\":\"integer\",\"minimum\":-250,\"exclusiveMaximum\":-99}", -250, -99, false, true, true},
        {"{\"type\":\"number\",\"minimum\":0,\"maximum\":1}", 0, 1, false, false, false},
        {"{\"type\":\"number\",\"exclusiveMinimum\":0,\"exclusiveMaximum\":100}", 0, 100, true, true, false},
        {"{\"type\":\"number\",\"minimum\":18}", 18, 1e9, false, false, false},
        {"{\"type\":\"number\",\"minimum\":-90,\"maximum\":90}", -90, 90, false, false, false},
        {"{\"type\":\"number\",\"exclusiveMinimum\":-180,\"exclusiveMaximum\":-7}", -180, -7, true,
         true, false},
        {"{\"type\":\"number\",\"maximum\":-3}", -1e9, -3, false, false, false},
        {"{\"type\":\"number\",\"exclusiveMaximum\":0}", -1e9, 0, false, true, false},
    };
    for (size_t c = 0; c < MOE_ARRAY_SIZE(cases); c++) {
        struct moe_grammar *g = schema(cases[c].schema);
        for (int v = -400; v <= 400; v++) {
            for (int f = 0; f < (cases[c].integer ? 1 : 3); f++) {
                static const char *const frac[] = {"", ".5", ".0"};
                double x = v + (f == 1 ? (v < 0 ? -0.5 : 0.5) : 0);
                char text[32];
                snprintf(text, sizeof(text), "%s%d%s", v == 0 && f == 1 && x < 0 ? "-" : "", v,
                         frac[f]);
                bool want = (cases[c].lo_ex ? x > cases[c].lo : x >= cases[c].lo) &&
                            (cases[c].hi_ex ? x < cases[c].hi : x <= cases[c].hi);
                if (whole(g, text) != want)
                    fail_msg("%s: %s should be %s", cases[c].schema, text,
                             want ? "accepted" : "refused");
            }
        }
        moe_grammar_unref(g);
    }
}

static void test_schema_refusals(void **state)
{
    (void)state;
    static const struct {
        const char *schema, *msg;
    } bad[] = {
        {"{\"type\":\"string\",\"foo\":1}", "keyword 'foo' is not supported"},
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\",\"multipleOf\":2}}}",
         "#/properties/a: keyword 'multipleOf'"},
        {"{\"type\":\"string\",\"format\":\"email\"}", "format 'email'"},
        {"{\"$ref\":\"http://x/y\"}", "only local references"},
        {"{\"$ref\":\"#/$defs/nope\"}", "names no definition"},
        {"{\"type\":\"string\",\"minimum\":3}", "does not apply to type 'string'"},
        {"{\"allOf\":[{\"type\":\"string\"},{\"maxLength\":3}]}", "allOf"},
        {"{\"type\":\"array\",\"uniqueItems\":true}", "uniqueItems"},
        {"{\"type\":\"number\",\"minimum\":-1.5}", "must be whole numbers"},
        {"{\"type\":\"number\",\"minimum\":3,\"exclusiveMaximum\":3}", "no number lies"},
        {"{\"type\":\"integer\",\"minimum\":5,\"maximum\":4}", "no integer"},
        {"{\"type\":\"object\",\"required\":[\"x\"]}", "required property 'x'"},
        {"{\"type\":\"string\",\"pattern\":\"(?=a)\"}", "lookaround"},
        {"{\"type\":\"string\",\"pattern\":\"[\\\"]\"}", "class that holds"},
        {"false", "allows no value"},
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(bad); i++) {
        json_error_t je;
        json_t *s = json_loads(bad[i].schema, JSON_DECODE_ANY, &je);
        assert_non_null(s);
        char *gbnf = NULL;
        assert_int_equal(moe_schema_to_gbnf(s, NULL, NULL, &gbnf), -EINVAL);
        assert_null(gbnf);
        if (!strstr(moe_err_msg(), bad[i].msg))
            fail_msg("%s: got \"%s\", want \"%s\"", bad[i].schema, moe_err_msg(), bad[i].msg);
        json_decref(s);
    }
}

/* The mask: the tokens it allows are exactly those the matcher accepts,
 * at states inside and outside strings, and a repeated state is answered
 * from the cache. Prints the cost per mask. */
static void test_mask_matches_the_matcher(void **state)
{
    (void)state;
    struct moe_tokenizer *tok;
    assert_int_equal(moe_tokenizer_from_hf(
                         moe_test_path("tests/data/tokenizers/ggml-vocab-gpt-2.tokenizer.json"),
                         NULL, &tok), 0);
    struct moe_vocab_trie *trie;
    assert_int_equal(moe_vocab_trie_build(tok, &trie), 0);
    int32_t V = moe_tokenizer_vocab_size(tok);
    uint64_t *mask = calloc(((size_t)V + 63) / 64, sizeof(uint64_t));
    /* a free string (its state repeats: the cache), a bounded one (the run's room
     * decides which long tokens fit), numbers, UTF-8 split over steps */
    static const struct {
        const char *schema;
        const char *steps[12];
    } cases[] = {
        {"{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},"
         "\"n\":{\"type\":\"integer\",\"minimum\":0,\"maximum\":999}},\"required\":[\"name\",\"n\"]}",
         {"", "{", "\"name\": \"", "Bob", "\u00e9", "\xe4", "\xb8\xad", "\", \"n\": ", "12", "3"}},
        {"{\"type\":\"object\",\"properties\":{\"c\":{\"type\":\"string\",\"minLength\":3,"
         "\"maxLength\":9}},\"required\":[\"c\"]}",
         {"{\"c\": \"", "a", "bc", "d", "ef", "g", "h"}},
    };
    char buf[256];
    double spent = 0;
    int masks = 0;
    for (size_t cs = 0; cs < MOE_ARRAY_SIZE(cases); cs++) {
        struct moe_grammar *g = schema(cases[cs].schema);
        struct moe_grammar_state *st;
        assert_int_equal(moe_grammar_state_new(g, &st), 0);
        for (size_t s = 0; s < MOE_ARRAY_SIZE(cases[cs].steps) && cases[cs].steps[s]; s++) {
            const char *step = cases[cs].steps[s];
            assert_int_equal(moe_grammar_advance(st, step, strlen(step)), 0);
            for (int rep = 0; rep < 2; rep++) { /* the second: from the cache */
                struct timespec t0, t1;
                clock_gettime(CLOCK_MONOTONIC, &t0);
                int32_t n = moe_grammar_mask(st, trie, mask, V);
                clock_gettime(CLOCK_MONOTONIC, &t1);
                if (rep == 0) {
                    spent += (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
                    masks++;
                }
                int32_t count = 0;
                for (int32_t id = 0; id < V; id++) {
                    size_t len = moe_tokenizer_token_bytes(tok, id, buf, sizeof(buf));
                    bool want = len > 0 && len <= sizeof(buf) && moe_grammar_accepts(st, buf, len);
                    bool got = (mask[id >> 6] >> (id & 63)) & 1;
                    if (want != got)
                        fail_msg("after \"%s\": token %d (%.*s) mask %d, matcher %d", step, id,
                                 (int)len, buf, got, want);
                    count += want;
                }
                assert_int_equal(n, count);
            }
        }
        moe_grammar_state_free(st);
        moe_grammar_unref(g);
    }
    print_message("mask: %d states, %.3f ms per mask (50257 tokens)\n", masks, 1e3 * spent / masks);
    free(mask);
    moe_vocab_trie_free(trie);
    moe_tokenizer_free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gbnf_matching),
        cmocka_unit_test(test_gbnf_utf8),
        cmocka_unit_test(test_gbnf_errors),
        cmocka_unit_test(test_schema_objects),
        cmocka_unit_test(test_schema_ranges),
        cmocka_unit_test(test_schema_refusals),
        cmocka_unit_test(test_mask_matches_the_matcher),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
