/* Fill in the middle: a completion's "suffix" (OpenAI) / llama-server's
 * /infill, for models trained with FIM tokens. The prompt becomes, in the
 * prefix-suffix-middle order these models were trained on,
 *     [BOS] PRE prefix SUF suffix MID
 * and the completion is the middle. Each family spells its three tokens
 * its own way; the first row whose three tokens the vocabulary has wins. */
#include "engine/engine.h"

#include "common/common.h"
#include "tokenizer/tokenizer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char *const FIM[][3] = {
    {"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"}, /* Qwen2.5-Coder, Qwen3(-Coder, -.5) */
    {"<fim_prefix>", "<fim_suffix>", "<fim_middle>"},       /* StarCoder */
    {"<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"},  /* DeepSeek-Coder, -V2, -V3 */
    {"<PRE>", "<SUF>", "<MID>"},                            /* CodeLlama */
    {"[PREFIX]", "[SUFFIX]", "[MIDDLE]"},                   /* Codestral (Mistral) */
};

int moe_fim_tokens(const struct moe_tokenizer *tok, int32_t out[3])
{
    for (size_t r = 0; r < MOE_ARRAY_SIZE(FIM); r++) {
        for (int k = 0; k < 3; k++)
            out[k] = moe_tokenizer_find(tok, FIM[r][k]);
        if (out[0] >= 0 && out[1] >= 0 && out[2] >= 0)
            return 0;
    }
    return moe_err(-ENOENT, "'suffix': this model has no fill-in-the-middle tokens "
                            "(<|fim_prefix|>, <fim_prefix>, <｜fim▁begin｜>, <PRE> or [PREFIX])");
}

int moe_fim_prompt(const struct moe_tokenizer *tok, const char *prefix, const char *suffix,
                   int32_t **ids, size_t *n_ids)
{
    int32_t fim[3];
    *ids = NULL;
    *n_ids = 0;
    int rc = moe_fim_tokens(tok, fim);
    if (rc < 0)
        return -EINVAL;
    int32_t *lead = NULL, *pre = NULL, *suf = NULL;
    size_t n_lead = 0, n_pre = 0, n_suf = 0;
    /* what the tokenizer puts first on its own (BOS, where it adds one) */
    rc = moe_tokenizer_encode(tok, "", 0, true, &lead, &n_lead);
    if (!rc)
        rc = moe_tokenizer_encode(tok, prefix, strlen(prefix), false, &pre, &n_pre);
    if (!rc)
        rc = moe_tokenizer_encode(tok, suffix, strlen(suffix), false, &suf, &n_suf);
    int32_t bos = moe_tokenizer_bos(tok);
    bool add_bos = !rc && n_lead > 0 && bos >= 0 && lead[0] == bos;
    int32_t *out = rc ? NULL : malloc((n_pre + n_suf + 4) * sizeof(int32_t));
    if (!rc && !out)
        rc = moe_err(-ENOMEM, "out of memory");
    if (!rc) {
        size_t k = 0;
        if (add_bos)
            out[k++] = bos;
        out[k++] = fim[0];
        memcpy(out + k, pre, n_pre * sizeof(int32_t));
        k += n_pre;
        out[k++] = fim[1];
        memcpy(out + k, suf, n_suf * sizeof(int32_t));
        k += n_suf;
        out[k++] = fim[2];
        *ids = out;
        *n_ids = k;
    }
    free(lead);
    free(pre);
    free(suf);
    return rc;
}
