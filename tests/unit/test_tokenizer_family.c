/* The tiny tokenizers of the model families (tests/data/tokenizers/<family>/,
 * written by tests/reference/make_family_tokenizer.py): every test string
 * through tokenizer.json and through the GGUF twin must give exactly the ids
 * Hugging Face tokenizers gave (expected.json), decode as it decodes, and the
 * pre-tokenizer must be recognised as the family's preset. */
#include "tests/unit/test.h"

#include <jansson.h>

#include "common/common.h"
#include "format/format.h"
#include "tokenizer/tokenizer.h"

#define DIR "tests/data/tokenizers/"

/* family directory, the preset its tokenizer.json is recognised as */
static const struct {
    const char *dir, *pretok;
} families[] = {
    { "llama3", "llama3" },       { "qwen3", "qwen2" },
    { "qwen35", "qwen35" },       { "dots1", "qwen2" },
    { "deepseek-llm", "deepseek-llm" }, { "deepseek-coder", "deepseek-coder" },
    { "deepseek-v3", "deepseek-v3" }, { "gpt-oss", "gpt-4o" },
    { "glm45", "llama3" }, /* GLM-4.5 splits as cl100k, as Llama 3 does */
    { "kimi-k2", "kimi-k2" },     { "minimax-m2", "gpt-4o" },
    { "ernie45", "none" },        { "starcoder", "starcoder" },
    { "falcon", "falcon" },       { "command-r", "starcoder" },
    { "gpt2", "gpt2" },           { "bailingmoe", "bailingmoe" },
    { "tekken", "tekken" },       { "exaone-moe", "exaone-moe" },
    { "tiny-aya", "tiny_aya" },   { "superbpe", "superbpe" },
    { "hf-behaviors", "custom" }, { "hf-metaspace", "custom" },
};

static char *path_in(const char *family, const char *file)
{
    static char buf[2][512];
    static int k;
    k ^= 1;
    snprintf(buf[k], sizeof(buf[k]), "%s", moe_test_path(DIR));
    size_t n = strlen(buf[k]);
    snprintf(buf[k] + n, sizeof(buf[k]) - n, "%s/%s", family, file);
    return buf[k];
}

static bool ids_equal(const int32_t *a, size_t na, const json_t *want)
{
    if (na != json_array_size(want))
        return false;
    for (size_t i = 0; i < na; i++)
        if (a[i] != json_integer_value(json_array_get(want, i)))
            return false;
    return true;
}

static void print_ids(const char *what, const int32_t *ids, size_t n)
{
    char line[4096];
    size_t o = 0;
    for (size_t i = 0; i < n && o + 16 < sizeof(line); i++)
        o += (size_t)snprintf(line + o, sizeof(line) - o, " %d", ids[i]);
    line[o] = 0;
    print_message("    %s:%s\n", what, line);
}

static void print_want(const json_t *want)
{
    int32_t ids[2048];
    size_t n = MOE_MIN(json_array_size(want), MOE_ARRAY_SIZE(ids));
    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(want, i));
    print_ids("want", ids, n);
}

/* moed's streaming decode of ids (control tokens give nothing, as Hugging
 * Face's decode with skip_special_tokens) */
static char *decode(const struct moe_tokenizer *tok, const int32_t *ids, size_t n, size_t *len)
{
    size_t cap = moe_tokenizer_max_piece(tok), o = 0;
    char *out = malloc(n * cap + cap + 1);
    assert_non_null(out);
    struct moe_detok d;
    moe_detok_init(&d, tok);
    for (size_t i = 0; i < n; i++)
        o += moe_detok_push(&d, ids[i], out + o, cap);
    o += moe_detok_flush(&d, out + o, cap);
    out[o] = 0;
    *len = o;
    return out;
}

/* Every case of expected.json through tok; returns the number that fail. */
static size_t run_cases(const struct moe_tokenizer *tok, const char *name, const json_t *cases,
                        bool check_decode)
{
    size_t bad = 0, i;
    const json_t *c;
    json_array_foreach(cases, i, c) {
        const json_t *text = json_object_get(c, "text");
        const char *s = json_string_value(text);
        size_t len = json_string_length(text);
        for (int special = 0; special < 2; special++) {
            const json_t *want = json_object_get(c, special ? "ids_special" : "ids");
            int32_t *ids;
            size_t n;
            if (moe_tokenizer_encode(tok, s, len, special, &ids, &n))
                fail_msg("%s: case %zu: %s", name, i, moe_err_msg());
            if (!ids_equal(ids, n, want)) {
                print_message("  %s: case %zu%s \"%.60s\": wrong ids\n", name, i,
                              special ? " (add_special)" : "", s);
                print_want(want);
                print_ids("got ", ids, n);
                bad++;
            } else if (!special && check_decode) {
                const json_t *dec = json_object_get(c, "decoded");
                size_t got_len;
                char *got = decode(tok, ids, n, &got_len);
                if (got_len != json_string_length(dec) ||
                    memcmp(got, json_string_value(dec), got_len)) {
                    print_message("  %s: case %zu \"%.60s\": decodes to \"%.60s\"\n", name, i,
                                  s, got);
                    bad++;
                }
                free(got);
            }
            free(ids);
        }
    }
    return bad;
}

static void test_families(void **state)
{
    (void)state;
    size_t total = 0, bad = 0, gguf = 0;
    for (size_t f = 0; f < MOE_ARRAY_SIZE(families); f++) {
        const char *name = families[f].dir;
        json_error_t err;
        json_t *exp = json_load_file(path_in(name, "expected.json"), 0, &err);
        if (!exp)
            fail_msg("%s/expected.json: %s", name, err.text);
        const json_t *cases = json_object_get(exp, "cases");
        assert_true(json_array_size(cases) >= 30);

        struct moe_tokenizer *tok = NULL;
        char cfg[512];
        snprintf(cfg, sizeof(cfg), "%s", path_in(name, "tokenizer_config.json"));
        if (moe_tokenizer_from_hf(path_in(name, "tokenizer.json"), cfg, &tok))
            fail_msg("%s: %s", name, moe_err_msg());
        assert_int_equal(moe_tokenizer_vocab_size(tok),
                         json_integer_value(json_object_get(exp, "vocab_size")));
        assert_true(moe_tokenizer_vocab_size(tok) <= 1024);
        if (strcmp(moe_tokenizer_pretok_name(tok), families[f].pretok))
            fail_msg("%s: pre-tokenizer recognised as \"%s\", want \"%s\"", name,
                     moe_tokenizer_pretok_name(tok), families[f].pretok);
        size_t b = run_cases(tok, name, cases, true);
        print_message("%-15s tokenizer.json (%s): %zu of %zu cases\n", name,
                      moe_tokenizer_pretok_name(tok), json_array_size(cases) - b / 2,
                      json_array_size(cases));
        bad += b;
        total += json_array_size(cases);
        moe_tokenizer_free(tok);

        /* the same vocabulary from a GGUF, split by its tokenizer.ggml.pre preset */
        const json_t *pre = json_object_get(exp, "gguf_pre");
        if (json_is_string(pre)) {
            struct moe_gguf *g;
            if (moe_gguf_open(path_in(name, "vocab.gguf"), &g) ||
                moe_tokenizer_from_gguf(g, &tok))
                fail_msg("%s/vocab.gguf: %s", name, moe_err_msg());
            b = run_cases(tok, name, cases, false);
            print_message("%-15s vocab.gguf (\"%s\" -> %s): %zu of %zu cases\n", name,
                          json_string_value(pre), moe_tokenizer_pretok_name(tok),
                          json_array_size(cases) - b / 2, json_array_size(cases));
            bad += b;
            gguf++;
            moe_tokenizer_free(tok);
            moe_gguf_close(g);
        }
        json_decref(exp);
    }
    print_message("%zu families, %zu cases, %zu GGUF twins: %zu mismatches\n",
                  MOE_ARRAY_SIZE(families), total, gguf, bad);
    assert_true(gguf >= 15);
    assert_int_equal(bad, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_families),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
