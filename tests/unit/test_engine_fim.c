/* Fill in the middle: the prompt is [BOS] PRE prefix SUF suffix MID with each family's own
 * three tokens, found in real vocabularies; a vocabulary without them is refused by name. */
#include "test.h"

#include "common/common.h"
#include "engine/engine.h"
#include "tokenizer/tokenizer.h"

#include <errno.h>

static struct moe_tokenizer *load(const char *dir)
{
    char rel[256];
    snprintf(rel, sizeof(rel), "tests/data/tokenizers/%s/tokenizer.json", dir);
    struct moe_tokenizer *t = NULL;
    if (moe_tokenizer_from_hf(moe_test_path(rel), NULL, &t) < 0)
        fail_msg("%s: %s", dir, moe_err_msg());
    return t;
}

static void test_fim_prompts(void **state)
{
    (void)state;
    static const struct {
        const char *dir, *pre, *suf, *mid;
    } rows[] = {
        {"qwen35", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"},
        {"starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"},
        {"deepseek-coder", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"},
    };
    const char *prefix = "def add(a, b):\n    ", *suffix = "\n\nprint(add(1, 2))\n";
    for (size_t r = 0; r < MOE_ARRAY_SIZE(rows); r++) {
        struct moe_tokenizer *t = load(rows[r].dir);
        int32_t fim[3];
        assert_int_equal(moe_fim_tokens(t, fim), 0);
        assert_int_equal(fim[0], moe_tokenizer_find(t, rows[r].pre));
        assert_int_equal(fim[1], moe_tokenizer_find(t, rows[r].suf));
        assert_int_equal(fim[2], moe_tokenizer_find(t, rows[r].mid));
        int32_t *ids, *p, *s, *lead;
        size_t n, np, ns, nl;
        assert_int_equal(moe_fim_prompt(t, prefix, suffix, &ids, &n), 0);
        assert_int_equal(moe_tokenizer_encode(t, prefix, strlen(prefix), false, &p, &np), 0);
        assert_int_equal(moe_tokenizer_encode(t, suffix, strlen(suffix), false, &s, &ns), 0);
        assert_int_equal(moe_tokenizer_encode(t, "", 0, true, &lead, &nl), 0);
        size_t k = nl > 0 && lead[0] == moe_tokenizer_bos(t); /* BOS where the tokenizer adds it */
        if (k)
            assert_int_equal(ids[0], moe_tokenizer_bos(t));
        assert_int_equal(n, k + np + ns + 3);
        assert_int_equal(ids[k], fim[0]);
        assert_memory_equal(ids + k + 1, p, np * sizeof(int32_t));
        assert_int_equal(ids[k + 1 + np], fim[1]);
        assert_memory_equal(ids + k + 2 + np, s, ns * sizeof(int32_t));
        assert_int_equal(ids[n - 1], fim[2]);
        free(ids), free(p), free(s), free(lead);
        moe_tokenizer_free(t);
    }
}

static void test_no_fim_tokens(void **state)
{
    (void)state;
    struct moe_tokenizer *t = NULL;
    assert_int_equal(moe_tokenizer_from_hf(moe_test_path(
                         "tests/data/tokenizers/ggml-vocab-gpt-2.tokenizer.json"), NULL, &t), 0);
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(moe_fim_prompt(t, "a", "b", &ids, &n), -EINVAL);
    assert_null(ids);
    assert_non_null(strstr(moe_err_msg(), "no fill-in-the-middle tokens"));
    moe_tokenizer_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fim_prompts),
        cmocka_unit_test(test_no_fim_tokens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
