/* GGUF checkpoints in llama.cpp's conventions: metadata keys prefixed with
 * the architecture name, tensors named blk.N.*, experts stacked in 3-D
 * tensors, Q/K rows permuted for interleaved rotary on "llama" (Mixtral). */
#include <errno.h>
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

    uint32_t id;
    cfg->bos_id = moe_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &id) == 0 ? (int32_t)id : -1;
    cfg->eos_id = moe_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &id) == 0 ? (int32_t)id : -1;
    return moe_config_validate(cfg, moe_gguf_path(g));
}

struct gg_ctx {
    const struct moe_gguf *g;
    const char *file;
    char name[128];
};

static const struct moe_tensor_info *find(struct gg_ctx *c, const char *fmt, ...)
    MOE_PRINTF(2, 3);
static const struct moe_tensor_info *find(struct gg_ctx *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->name, sizeof(c->name), fmt, ap);
    va_end(ap);
    return moe_gguf_find_tensor(c->g, c->name);
}

#define MAT(var, rows, cols, ...)                                                              \
    do {                                                                                       \
        if ((rc = moe_bind_matrix(find(&c, __VA_ARGS__), c.file, c.name, rows, cols, &(var))) < 0) \
            return rc;                                                                         \
    } while (0)
#define VEC(var, n, ...)                                                                       \
    do {                                                                                       \
        if ((rc = moe_bind_vector(find(&c, __VA_ARGS__), c.file, c.name, n, &(var))) < 0)      \
            return rc;                                                                         \
    } while (0)

/* Experts: stacked blk.N.ffn_{gate,up,down}_exps [E, rows, cols], or the
 * older per-expert blk.N.ffn_{gate,up,down}.E tensors of early Mixtral GGUFs. */
static int bind_experts(struct moe_model *m, struct gg_ctx *cc, int32_t l)
{
    struct gg_ctx c = *cc;
    const struct moe_config *cfg = &m->cfg;
    int64_t H = cfg->hidden, F = cfg->expert_ffn, E = cfg->n_experts;
    int rc;
    struct {
        const char *stacked, *single;
        int64_t rows, cols;
        size_t off;
    } mats[] = {
        {"ffn_gate_exps", "ffn_gate", F, H, offsetof(struct moe_expert_weights, gate)},
        {"ffn_up_exps", "ffn_up", F, H, offsetof(struct moe_expert_weights, up)},
        {"ffn_down_exps", "ffn_down", H, F, offsetof(struct moe_expert_weights, down)},
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(mats); i++) {
        const struct moe_tensor_info *t = find(&c, "blk.%d.%s.weight", l, mats[i].stacked);
        for (int64_t e = 0; e < E; e++) {
            struct moe_weight *w =
                (struct moe_weight *)((char *)&m->layers[l].experts[e] + mats[i].off);
            if (t) {
                rc = moe_bind_matrix_slice(t, c.file, t->name, E, e, mats[i].rows, mats[i].cols, w);
            } else {
                const struct moe_tensor_info *s =
                    find(&c, "blk.%d.%s.%lld.weight", l, mats[i].single, (long long)e);
                if (!s) /* name the modern layout in the message */
                    snprintf(c.name, sizeof(c.name), "blk.%d.%s.weight", l, mats[i].stacked);
                rc = moe_bind_matrix(s, c.file, c.name, mats[i].rows, mats[i].cols, w);
            }
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

int moe_model_bind_gguf(struct moe_model *m)
{
    const struct moe_config *cfg = &m->cfg;
    struct gg_ctx c = {.g = m->files->gguf, .file = moe_gguf_path(m->files->gguf)};
    int rc;
    int64_t H = cfg->hidden, hd = cfg->head_dim;
    int64_t nq = (int64_t)cfg->n_heads * hd, nkv = (int64_t)cfg->n_kv_heads * hd;

    MAT(m->embed, cfg->vocab, H, "token_embd.weight");
    if (cfg->tied_embeddings)
        m->lm_head = m->embed;
    else
        MAT(m->lm_head, cfg->vocab, H, "output.weight");
    VEC(m->final_norm, H, "output_norm.weight");

    for (int32_t l = 0; l < cfg->n_layers; l++) {
        struct moe_layer *L = &m->layers[l];
        VEC(L->attn_norm, H, "blk.%d.attn_norm.weight", l);
        VEC(L->ffn_norm, H, "blk.%d.ffn_norm.weight", l);
        MAT(L->wq, nq, H, "blk.%d.attn_q.weight", l);
        MAT(L->wk, nkv, H, "blk.%d.attn_k.weight", l);
        MAT(L->wv, nkv, H, "blk.%d.attn_v.weight", l);
        MAT(L->wo, H, nq, "blk.%d.attn_output.weight", l);
        if (cfg->qkv_bias) {
            VEC(L->bq, nq, "blk.%d.attn_q.bias", l);
            VEC(L->bk, nkv, "blk.%d.attn_k.bias", l);
            VEC(L->bv, nkv, "blk.%d.attn_v.bias", l);
        }
        if (cfg->qk_norm != MOE_QK_NORM_NONE) {
            bool full = cfg->qk_norm == MOE_QK_NORM_FULL;
            VEC(L->q_norm, full ? nq : hd, "blk.%d.attn_q_norm.weight", l);
            VEC(L->k_norm, full ? nkv : hd, "blk.%d.attn_k_norm.weight", l);
        }
        if (cfg->layer_dense[l]) {
            int64_t D = cfg->dense_ffn;
            MAT(L->shared.gate, D, H, "blk.%d.ffn_gate.weight", l);
            MAT(L->shared.up, D, H, "blk.%d.ffn_up.weight", l);
            MAT(L->shared.down, H, D, "blk.%d.ffn_down.weight", l);
            continue;
        }
        MAT(L->router, cfg->n_experts, H, "blk.%d.ffn_gate_inp.weight", l);
        if ((rc = bind_experts(m, &c, l)) < 0)
            return rc;
        if (cfg->shared_ffn > 0) {
            int64_t S = cfg->shared_ffn;
            MAT(L->shared.gate, S, H, "blk.%d.ffn_gate_shexp.weight", l);
            MAT(L->shared.up, S, H, "blk.%d.ffn_up_shexp.weight", l);
            MAT(L->shared.down, H, S, "blk.%d.ffn_down_shexp.weight", l);
            MAT(L->shared_gate, 1, H, "blk.%d.ffn_gate_inp_shexp.weight", l);
        }
    }
    return 0;
}
