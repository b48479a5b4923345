/* The architecture config of a GGUF file in llama.cpp's conventions:
 * metadata keys prefixed with the architecture's name (the tensors are
 * bound by the table in model_tensors.c). Q/K rows of "llama" (Mixtral)
 * are permuted for interleaved rotary. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "model/model_int.h"

struct gguf_arch {
    const char *name;
    enum moe_arch arch;
    bool norm_topk;          /* llama.cpp's fixed choice per architecture */
    enum moe_qk_norm qk_norm;
    bool qkv_bias;
    bool permuted_qk;        /* convert_hf_to_gguf permutes Q/K for these */
};

static const struct gguf_arch gguf_archs[] = {
    {"llama", MOE_ARCH_MIXTRAL, true, MOE_QK_NORM_NONE, false, true},
    {"qwen2moe", MOE_ARCH_QWEN2_MOE, false, MOE_QK_NORM_NONE, true, false},
    {"qwen3moe", MOE_ARCH_QWEN3_MOE, true, MOE_QK_NORM_HEAD, false, false},
    {"olmoe", MOE_ARCH_OLMOE, false, MOE_QK_NORM_FULL, false, false},
};

static int key_u32(const struct moe_gguf *g, const char *arch, const char *key, int64_t def,
                   int32_t *out)
{
    char k[128];
    snprintf(k, sizeof(k), "%s.%s", arch, key);
    uint32_t v;
    int rc = moe_gguf_get_u32(g, k, &v);
    if (rc == -ENOENT) {
        if (def < 0)
            return moe_err(-EINVAL, "%s: missing metadata key '%s'", moe_gguf_path(g), k);
        *out = (int32_t)def;
        return 0;
    }
    if (rc < 0)
        return rc;
    if (v > INT32_MAX)
        return moe_err(-EINVAL, "%s: metadata key '%s' out of range", moe_gguf_path(g), k);
    *out = (int32_t)v;
    return 0;
}

static int key_f32(const struct moe_gguf *g, const char *arch, const char *key, float def,
                   float *out)
{
    char k[128];
    snprintf(k, sizeof(k), "%s.%s", arch, key);
    int rc = moe_gguf_get_f32(g, k, out);
    if (rc == -ENOENT) {
        *out = def;
        return 0;
    }
    return rc;
}

static const struct gguf_arch *find_arch(const struct moe_gguf *g, char *name, size_t cap)
{
    struct moe_gguf_str s;
    if (moe_gguf_get_str(g, "general.architecture", &s) < 0) {
        moe_err(-EINVAL, "%s: missing metadata key 'general.architecture'", moe_gguf_path(g));
        return NULL;
    }
    snprintf(name, cap, "%.*s", (int)MOE_MIN(s.len, cap - 1), s.ptr);
    for (size_t i = 0; i < MOE_ARRAY_SIZE(gguf_archs); i++)
        if (!strcmp(name, gguf_archs[i].name))
            return &gguf_archs[i];
    moe_err(-ENOTSUP, "%s: unsupported architecture '%s'; supported: llama (Mixtral), "
            "qwen2moe, qwen3moe, olmoe", moe_gguf_path(g), name);
    return NULL;
}

int moe_config_from_gguf(const struct moe_gguf *g, struct moe_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    char a[64];
    const struct gguf_arch *ga = find_arch(g, a, sizeof(a));
    if (!ga)
        return -ENOTSUP;
    cfg->arch = ga->arch;
    cfg->qk_norm = ga->qk_norm;
    cfg->qkv_bias = ga->qkv_bias;
    cfg->rope_interleaved = ga->permuted_qk;
    int rc;
    int32_t ffn = 0;
    if ((rc = key_u32(g, a, "embedding_length", -1, &cfg->hidden)) < 0 ||
        (rc = key_u32(g, a, "block_count", -1, &cfg->n_layers)) < 0 ||
        (rc = key_u32(g, a, "attention.head_count", -1, &cfg->n_heads)) < 0 ||
        (rc = key_u32(g, a, "attention.head_count_kv", cfg->n_heads, &cfg->n_kv_heads)) < 0 ||
        (rc = key_u32(g, a, "context_length", 4096, &cfg->max_ctx)) < 0 ||
        (rc = key_u32(g, a, "feed_forward_length", 0, &ffn)) < 0 ||
        (rc = key_u32(g, a, "expert_feed_forward_length", ffn, &cfg->expert_ffn)) < 0 ||
        (rc = key_u32(g, a, "expert_shared_feed_forward_length", 0, &cfg->shared_ffn)) < 0 ||
        (rc = key_u32(g, a, "expert_count", -1, &cfg->n_experts)) < 0 ||
        (rc = key_u32(g, a, "expert_used_count", -1, &cfg->top_k)) < 0 ||
        (rc = key_f32(g, a, "rope.freq_base", 10000.0f, &cfg->rope_theta)) < 0 ||
        (rc = key_f32(g, a, "attention.layer_norm_rms_epsilon", 1e-6f, &cfg->rms_eps)) < 0 ||
        (rc = key_f32(g, a, "attention.clamp_kqv", 0.0f, &cfg->clip_qkv)) < 0)
        return rc;
    if (cfg->n_heads > 0 &&
        (rc = key_u32(g, a, "attention.key_length", cfg->hidden / cfg->n_heads, &cfg->head_dim)) < 0)
        return rc;
    char k[128];
    snprintf(k, sizeof(k), "%s.expert_weights_norm", a);
    if (moe_gguf_get_bool(g, k, &cfg->norm_topk_prob) == -ENOENT)
        cfg->norm_topk_prob = ga->norm_topk;

    /* vocabulary size: the key, else the embedding's rows */
    if ((rc = key_u32(g, a, "vocab_size", 0, &cfg->vocab)) < 0)
        return rc;
    const struct moe_tensor_info *emb = moe_gguf_find_tensor(g, "token_embd.weight");
    if (cfg->vocab == 0 && emb && emb->n_dims == 2)
        cfg->vocab = (int32_t)emb->dims[0];
    cfg->tied_embeddings = moe_gguf_find_tensor(g, "output.weight") == NULL;

    /* Qwen-MoE dense layers (mlp_only_layers): a block with a plain ffn_gate
     * and no router */
    for (int32_t l = 0; l < cfg->n_layers && l < MOE_MAX_LAYERS; l++) {
        char name[64];
        snprintf(name, sizeof(name), "blk.%d.ffn_gate_inp.weight", l);
        if (moe_gguf_find_tensor(g, name))
            continue;
        snprintf(name, sizeof(name), "blk.%d.ffn_gate.weight", l);
        const struct moe_tensor_info *t = moe_gguf_find_tensor(g, name);
        if (t && t->n_dims == 2) {
            cfg->layer_dense[l] = true;
            cfg->dense_ffn = (int32_t)t->dims[0];
        }
    }

    /* what the fields of the newer architectures are for these four */
    cfg->v_head_dim = cfg->head_dim;
    cfg->rope_dim = cfg->head_dim;
    cfg->attn_scale = 1.0f / sqrtf((float)cfg->head_dim);
    cfg->rope_attn_factor = 1.0f;
    cfg->routed_scale = 1.0f;
    cfg->router = MOE_ROUTE_SOFTMAX;
    cfg->shared_gate = cfg->shared_ffn > 0;

    uint32_t id;
    cfg->bos_id = moe_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &id) == 0 ? (int32_t)id : -1;
    cfg->eos_id = moe_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &id) == 0 ? (int32_t)id : -1;
    return moe_config_validate(cfg, moe_gguf_path(g));
}

