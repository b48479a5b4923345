/* libFuzzer: the pre-tokenizer's own machinery. The first byte picks what the
 * rest is:
 *   0: a regex as tokenizer.json would hold it, then (after a NUL) a text: the
 *      Oniguruma -> PCRE2 rewrite must either refuse it or give a pattern
 *      PCRE2 compiles (a refusal by PCRE2 is fine too), and matching it over
 *      the text must end;
 *   1: text for NFC: NFC is idempotent, and the quick check never passes text
 *      that NFC changes;
 *   else: text for the family tokenizers of tests/data/tokenizers/: ids in
 *      range, decoded text whole characters and, for byte-level families with
 *      no normalizer, the input itself (valid UTF-8 without special tokens).
 *
 *   make fuzz && build/fuzz/fuzz_tokenizer_pretok -max_total_time=60 \
 *       tests/fuzz/corpus/fuzz_tokenizer_pretok   (from the repository root) */
#define _GNU_SOURCE /* memmem */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_int.h"

/* family, and whether decoding gives the input back (no normalizer) */
static const struct {
    const char *dir;
    bool exact;
} families[] = {
    { "llama3", true },   { "qwen3", false },     { "qwen35", true },  { "deepseek-llm", true },
    { "deepseek-v3", true }, { "gpt-oss", true }, { "kimi-k2", true }, { "falcon", true },
    { "starcoder", true }, { "superbpe", true },  { "tiny-aya", true }, { "ernie45", false },
    { "hf-behaviors", false }, { "hf-metaspace", false },
};
static struct moe_tokenizer *toks[MOE_ARRAY_SIZE(families)];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    moe_log_set_level(MOE_LOG_ERR);
    for (size_t i = 0; i < MOE_ARRAY_SIZE(families); i++) {
        char json[256], cfg[256];
        snprintf(json, sizeof(json), "tests/data/tokenizers/%s/tokenizer.json", families[i].dir);
        snprintf(cfg, sizeof(cfg), "tests/data/tokenizers/%s/tokenizer_config.json",
                 families[i].dir);
        if (moe_tokenizer_from_hf(json, cfg, &toks[i]))
            fprintf(stderr, "fuzz_tokenizer_pretok: %s (run from the repository root)\n",
                    moe_err_msg());
    }
    return 0;
}

static void regex(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t plen = nul ? (size_t)(nul - data) : size;
    const char *text = nul ? (const char *)nul + 1 : "";
    size_t tlen = nul ? size - plen - 1 : 0;
    pcre2_code *re = NULL;
    if (plen == 0 || moe_tok_compile("fuzz", (const char *)data, plen, false, &re))
        return; /* refused, with a message */
    pcre2_match_data *md = pcre2_match_data_create(4, NULL);
    pcre2_match_context *mc = pcre2_match_context_create(NULL);
    pcre2_set_match_limit(mc, 100000);
    size_t from = 0;
    for (int k = 0; k < 256 && from <= tlen; k++) {
        int rc = pcre2_match(re, (PCRE2_SPTR)text, tlen, from, 0, md, mc);
        if (rc < 0)
            break;
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        from = ov[1] > from ? ov[1] : from + 1;
    }
    pcre2_match_context_free(mc);
    pcre2_match_data_free(md);
    pcre2_code_free(re);
}

static void nfc(const uint8_t *data, size_t size)
{
    char *a = NULL, *b = NULL;
    uint32_t *cps = NULL;
    size_t ca = 0, cb = 0, ccps = 0, na, nb;
    if (moe_tok_nfc((const char *)data, size, &a, &ca, &na, &cps, &ccps) ||
        moe_tok_nfc(a, na, &b, &cb, &nb, &cps, &ccps))
        abort();
    if (na != nb || memcmp(a, b, na))
        abort(); /* not idempotent */
    if (moe_tok_is_nfc((const char *)data, size) && (na != size || memcmp(a, data, size)))
        abort(); /* the quick check passed text that changes */
    free(a);
    free(b);
    free(cps);
}

static void encode(size_t k, const uint8_t *data, size_t size)
{
    const struct moe_tokenizer *tok = toks[k % MOE_ARRAY_SIZE(families)];
    if (!tok)
        return;
    int32_t *ids;
    size_t n;
    if (moe_tokenizer_encode(tok, (const char *)data, size, false, &ids, &n))
        return;
    size_t max = moe_tokenizer_max_piece(tok), o = 0, specials = 0;
    char *out = malloc(n * max + max + 8);
    if (!out)
        abort();
    struct moe_detok d;
    moe_detok_init(&d, tok);
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= moe_tokenizer_vocab_size(tok))
            abort();
        specials += moe_tokenizer_token_bytes(tok, ids[i], NULL, 0) == 0;
        o += moe_detok_push(&d, ids[i], out + o, max);
    }
    o += moe_detok_flush(&d, out + o, max);
    if (!moe_utf8_valid((const uint8_t *)out, o))
        abort();
    if (families[k % MOE_ARRAY_SIZE(families)].exact && specials == 0 && moe_utf8_valid(data, size) &&
        (o != size || memcmp(out, data, size)))
        abort(); /* a byte-level tokenizer lost or changed text */
    free(out);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] == 0)
        regex(data + 1, size - 1);
    else if (data[0] == 1)
        nfc(data + 1, size - 1);
    else
        encode(data[0], data + 1, size - 1);
    return 0;
}
