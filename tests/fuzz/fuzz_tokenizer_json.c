/* libFuzzer: arbitrary bytes as a tokenizer.json (loaded, then used on a few
 * texts and on the input itself), and arbitrary bytes as text for real
 * tokenizers (tiny-moe, the GPT-2 and Llama vocabularies), which must decode
 * back to the input when it is valid UTF-8 without special tokens in it.
 *
 *   make fuzz && build/fuzz/fuzz_tokenizer_json -max_total_time=60 \
 *       tests/fuzz/corpus-tokenizer_json   (from the repository root) */
#define _GNU_SOURCE /* memmem */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_int.h"

static struct moe_tokenizer *real[3];
static const char *const real_paths[3][2] = {
    { "models/tiny-moe/tokenizer.json", "models/tiny-moe/tokenizer_config.json" },
    { "tests/data/tokenizers/ggml-vocab-gpt-2.tokenizer.json", NULL },
    { "tests/data/tokenizers/ggml-vocab-llama-spm.tokenizer.json", NULL },
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    moe_log_set_level(MOE_LOG_ERR);
    for (int i = 0; i < 3; i++)
        if (moe_tokenizer_from_hf(real_paths[i][0], real_paths[i][1], &real[i]))
            fprintf(stderr, "fuzz_tokenizer_json: %s (run from the repository root)\n",
                    moe_err_msg());
    return 0;
}

/* Encodes and decodes; the decoded text must equal the input when asked. */
static void use(const struct moe_tokenizer *tok, const uint8_t *data, size_t size, bool exact)
{
    int32_t *ids;
    size_t n;
    if (moe_tokenizer_encode(tok, (const char *)data, size, true, &ids, &n))
        return;
    size_t max = moe_tokenizer_max_piece(tok), cap = 4 * max + 64, o = 0;
    char *out = malloc(n * max + cap);
    if (!out)
        abort();
    struct moe_detok d;
    moe_detok_init(&d, tok);
    int32_t vocab = moe_tokenizer_vocab_size(tok);
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= vocab)
            abort(); /* the encoder made an id that does not exist */
        size_t w = moe_detok_push(&d, ids[i], out + o, cap);
        if (w > max)
            abort(); /* more than moe_tokenizer_max_piece() promised */
        o += w;
    }
    o += moe_detok_flush(&d, out + o, cap);
    if (exact && (o != size || memcmp(out, data, size) != 0))
        abort();
    if (!moe_utf8_valid((const uint8_t *)out, o))
        abort(); /* detok must only ever give whole characters */
    free(out);
    free(ids);
}

/* The input as a stream of token ids: whatever the order, only whole
 * characters come out, within moe_tokenizer_max_piece() per push. */
static void decode_ids(const struct moe_tokenizer *tok, const uint8_t *data, size_t size)
{
    size_t max = moe_tokenizer_max_piece(tok), o = 0;
    char *out = malloc(size / 3 * max + max + 8);
    if (!out)
        abort();
    struct moe_detok d;
    moe_detok_init(&d, tok);
    int32_t vocab = moe_tokenizer_vocab_size(tok);
    for (size_t i = 0; i + 3 <= size; i += 3) {
        int32_t id = (int32_t)((data[i] | data[i + 1] << 8 | data[i + 2] << 16) % (uint32_t)vocab);
        size_t w = moe_detok_push(&d, id, out + o, max);
        if (w > max)
            abort();
        o += w;
    }
    o += moe_detok_flush(&d, out + o, max);
    if (!moe_utf8_valid((const uint8_t *)out, o))
        abort();
    free(out);
}

static bool has(const uint8_t *data, size_t size, const char *needle)
{
    return memmem(data, size, needle, strlen(needle)) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* as a tokenizer.json */
    struct moe_tokenizer *tok = NULL;
    if (moe_tok_from_hf_text("fuzz.json", (const char *)data, size, NULL, false, &tok) == 0) {
        static const char *const texts[] = {
            "Hello world", " leading", "a  b\t\nc", "\xf0\x9f\xa6\x99 caf\xc3\xa9 123", "",
        };
        for (size_t i = 0; i < MOE_ARRAY_SIZE(texts); i++)
            use(tok, (const uint8_t *)texts[i], strlen(texts[i]), false);
        use(tok, data, size, false);
        moe_tokenizer_free(tok);
    }

    /* as text */
    bool utf8 = moe_utf8_valid(data, size);
    bool specials = has(data, size, "<s>") || has(data, size, "</s>") ||
                    has(data, size, "<unk>") || has(data, size, "<|endoftext|>");
    bool marker = has(data, size, "\xe2\x96\x81"); /* "▁" decodes to a space */
    for (int i = 0; i < 3; i++) {
        if (!real[i])
            continue;
        bool exact = utf8 && !specials && (i < 2 || !marker);
        use(real[i], data, size, exact);
        decode_ids(real[i], data, size);
    }
    return 0;
}
