/* The vocabulary embedded in a GGUF file (tokenizer.ggml.*) -> struct
 * moe_tokenizer. "gpt2": byte-level BPE with tokenizer.ggml.merges and the
 * pre-tokenizer preset named by tokenizer.ggml.pre (tokenizer_preset.c;
 * an unknown name fails the load); "llama": SentencePiece
 * BPE merged by score with <0xNN> byte fallback, as llama.cpp does. */
#include "tokenizer/tokenizer_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "format/format.h"

static double num_at(const void *data, enum moe_gguf_type t, uint64_t i)
{
    const uint8_t *p = data;
    switch (t) {
    case MOE_GGUF_U8: return p[i];
    case MOE_GGUF_I8: return (int8_t)p[i];
    case MOE_GGUF_BOOL: return p[i] != 0;
    case MOE_GGUF_U16: { uint16_t v; memcpy(&v, p + 2 * i, 2); return v; }
    case MOE_GGUF_I16: { int16_t v; memcpy(&v, p + 2 * i, 2); return v; }
    case MOE_GGUF_U32: { uint32_t v; memcpy(&v, p + 4 * i, 4); return v; }
    case MOE_GGUF_I32: { int32_t v; memcpy(&v, p + 4 * i, 4); return v; }
    case MOE_GGUF_F32: { float v; memcpy(&v, p + 4 * i, 4); return v; }
    case MOE_GGUF_U64: { uint64_t v; memcpy(&v, p + 8 * i, 8); return (double)v; }
    case MOE_GGUF_I64: { int64_t v; memcpy(&v, p + 8 * i, 8); return (double)v; }
    case MOE_GGUF_F64: { double v; memcpy(&v, p + 8 * i, 8); return v; }
    default: return 0;
    }
}

/* A numeric array of exactly n elements, or -ENOENT. */
static int num_array(const struct moe_gguf *g, const char *key, uint64_t n,
                     enum moe_gguf_type *t, const void **data)
{
    uint64_t count;
    int rc = moe_gguf_get_array(g, key, t, data, &count);
    if (rc)
        return rc;
    if (count != n)
        return moe_err(-EINVAL, "%s: %s has %llu entries for %llu tokens", moe_gguf_path(g),
                       key, (unsigned long long)count, (unsigned long long)n);
    if (*t == MOE_GGUF_STRING || *t == MOE_GGUF_ARRAY)
        return moe_err(-EINVAL, "%s: %s: not numbers", moe_gguf_path(g), key);
    return 0;
}

static int32_t opt_id(const struct moe_gguf *g, const char *key, int32_t def)
{
    uint32_t v;
    return moe_gguf_get_u32(g, key, &v) == 0 ? (int32_t)v : def;
}

static bool opt_bool(const struct moe_gguf *g, const char *key, bool def)
{
    bool v;
    return moe_gguf_get_bool(g, key, &v) == 0 ? v : def;
}

int moe_tokenizer_from_gguf(const struct moe_gguf *g, struct moe_tokenizer **out)
{
    const char *path = moe_gguf_path(g);
    struct moe_tokenizer *tok = NULL;
    struct moe_gguf_str model;
    const struct moe_gguf_str *tokens;
    uint64_t n;
    int rc;
    *out = NULL;

    rc = moe_gguf_get_str(g, "tokenizer.ggml.model", &model);
    if (rc == -ENOENT)
        return moe_err(-ENOENT, "%s: no tokenizer.ggml.model", path);
    if (rc)
        return rc;
    bool spm = model.len == 5 && !memcmp(model.ptr, "llama", 5);
    bool gpt2 = model.len == 4 && !memcmp(model.ptr, "gpt2", 4);
    if (!spm && !gpt2)
        return moe_err(-EINVAL, "%s: unsupported tokenizer model \"%.*s\" (moed supports "
                       "\"llama\" and \"gpt2\")", path, (int)MOE_MIN(model.len, 64), model.ptr);
    rc = moe_gguf_get_str_array(g, "tokenizer.ggml.tokens", &tokens, &n);
    if (rc == -ENOENT)
        return moe_err(-ENOENT, "%s: no tokenizer.ggml.tokens", path);
    if (rc)
        return rc;
    if (n == 0 || n > MOE_TOK_MAX_VOCAB)
        return moe_err(-EINVAL, "%s: %llu tokens", path, (unsigned long long)n);
    if ((rc = moe_tok_new((int32_t)n, path, &tok)))
        return rc;

    enum moe_gguf_type tt = MOE_GGUF_I32, st = MOE_GGUF_F32;
    const void *types = NULL, *scores = NULL;
    rc = num_array(g, "tokenizer.ggml.token_type", n, &tt, &types);
    if (rc && rc != -ENOENT)
        goto fail;
    rc = num_array(g, "tokenizer.ggml.scores", n, &st, &scores);
    if (rc && rc != -ENOENT)
        goto fail;
    if (scores) {
        tok->score = malloc(n * sizeof(float));
        if (!tok->score) {
            rc = moe_err(-ENOMEM, "out of memory");
            goto fail;
        }
    }
    for (uint64_t i = 0; i < n; i++) {
        int type = types ? (int)num_at(types, tt, i) : MOE_TOK_NORMAL;
        if (type < MOE_TOK_NORMAL || type > MOE_TOK_BYTE)
            type = MOE_TOK_NORMAL;
        if ((rc = moe_tok_set_token(tok, (int32_t)i, tokens[i].ptr, tokens[i].len, type)))
            goto fail;
        if (scores)
            tok->score[i] = (float)num_at(scores, st, i);
    }
    if ((rc = moe_tok_build_vocab(tok)))
        goto fail;

    tok->bos = opt_id(g, "tokenizer.ggml.bos_token_id", -1);
    tok->eos = opt_id(g, "tokenizer.ggml.eos_token_id", -1);
    tok->eot = opt_id(g, "tokenizer.ggml.eot_token_id", -1);
    tok->eom = opt_id(g, "tokenizer.ggml.eom_token_id", -1);
    tok->unk_id = opt_id(g, "tokenizer.ggml.unknown_token_id", -1);
    tok->add_bos = opt_bool(g, "tokenizer.ggml.add_bos_token", spm);
    tok->add_eos = opt_bool(g, "tokenizer.ggml.add_eos_token", false);

    if (spm) {
        /* llama.cpp's SPM: ' ' -> "▁" with one in front, merged by score,
         * unknown characters as <0xNN> */
        static const char sp[] = "\xe2\x96\x81";
        bool prefix = opt_bool(g, "tokenizer.ggml.add_space_prefix", true);
        tok->algo = MOE_TOK_ALGO_SCORE;
        tok->byte_fallback = true;
        if (tok->unk_id < 0)
            tok->unk_id = moe_tok_lookup(tok, "<unk>", 5);
        if ((prefix && (rc = moe_tok_add_norm(tok, MOE_TOK_NORM_PREPEND, sp, 3, "", 0, NULL))) ||
            (rc = moe_tok_add_norm(tok, MOE_TOK_NORM_REPLACE, " ", 1, sp, 3, NULL)) ||
            (rc = moe_tok_add_dec_replace(tok, sp, 3, " ", 1)))
            goto fail;
        tok->strip_first_space = prefix;
    } else {
        const struct moe_gguf_str *merges;
        uint64_t n_merges;
        struct moe_gguf_str pre = { "default", 7 };
        tok->algo = MOE_TOK_ALGO_RANK;
        tok->byte_level = tok->dec_byte_level = true;
        rc = moe_gguf_get_str(g, "tokenizer.ggml.pre", &pre);
        if (rc == -ENOENT) /* as llama.cpp: its fallback split, with a warning */
            moe_log(MOE_LOG_WARN, "%s: no tokenizer.ggml.pre; splitting as llama.cpp's "
                    "\"default\" does (not as any Hugging Face tokenizer)", path);
        else if (rc)
            goto fail;
        const struct moe_tok_preset *preset = moe_tok_preset_by_gguf(pre.ptr, pre.len);
        if (!preset) {
            rc = moe_err(-EINVAL, "%s: tokenizer.ggml.pre \"%.*s\" is not a pre-tokenizer moed "
                         "knows (tokenizer/tokenizer_preset.c)", path,
                         (int)MOE_MIN(pre.len, 64), pre.ptr);
            goto fail;
        }
        if ((rc = moe_tok_preset_apply(tok, preset, pre.ptr, pre.len)))
            goto fail;
        tok->add_bos = opt_bool(g, "tokenizer.ggml.add_bos_token", preset->add_bos);
        rc = moe_gguf_get_str_array(g, "tokenizer.ggml.merges", &merges, &n_merges);
        if (rc == -ENOENT) {
            rc = moe_err(-EINVAL, "%s: gpt2 tokenizer without tokenizer.ggml.merges", path);
            goto fail;
        }
        if (rc || (rc = moe_tok_reserve_merges(tok, n_merges)))
            goto fail;
        for (uint64_t i = 0; i < n_merges; i++) {
            const char *s = merges[i].ptr;
            size_t len = merges[i].len;
            /* "a b": the first space after the first byte (a may be " ") */
            const char *spc = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
            if (!spc) {
                rc = moe_err(-EINVAL, "%s: tokenizer.ggml.merges[%llu] is not \"a b\"", path,
                             (unsigned long long)i);
                goto fail;
            }
            size_t alen = (size_t)(spc - s);
            if ((rc = moe_tok_add_merge(tok, s, alen, spc + 1, len - alen - 1, (int32_t)i)))
                goto fail;
        }
    }
    if ((rc = moe_tok_finish(tok)))
        goto fail;
    *out = tok;
    return 0;
fail:
    moe_tokenizer_free(tok);
    return rc;
}
