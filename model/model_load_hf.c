/* Tensor names of Hugging Face checkpoints, per architecture. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "model/model_int.h"

struct hf_ctx {
    const struct moe_safetensors *st;
    char name[256];
};

static const struct moe_tensor_info *find(struct hf_ctx *c, const char *fmt, ...)
    MOE_PRINTF(2, 3);
static const struct moe_tensor_info *find(struct hf_ctx *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->name, sizeof(c->name), fmt, ap);
    va_end(ap);
    return moe_safetensors_find(c->st, c->name);
}

static const char *file_of(const struct moe_tensor_info *t, const char *dflt)
{
    return t ? t->file : dflt;
}

/* The file named in "missing tensor" messages for a sharded checkpoint is the
 * directory; for others it is the tensor's own file. */
#define MAT(var, rows, cols, ...)                                                              \
    do {                                                                                       \
        const struct moe_tensor_info *t_ = find(&c, __VA_ARGS__);                              \
        if ((rc = moe_bind_matrix(t_, file_of(t_, m->path), c.name, rows, cols, &(var))) < 0)  \
            return rc;                                                                         \
    } while (0)
#define VEC(var, n, ...)                                                                       \
    do {                                                                                       \
        const struct moe_tensor_info *t_ = find(&c, __VA_ARGS__);                              \
        if ((rc = moe_bind_vector(t_, file_of(t_, m->path), c.name, n, &(var))) < 0)           \
            return rc;                                                                         \
    } while (0)

static int bind_ffn(struct moe_model *m, struct hf_ctx *cc, struct moe_expert_weights *w,
                    int64_t ffn, const char *prefix, const char *g, const char *u, const char *d)
{
    struct hf_ctx c = *cc;
    int rc;
    int64_t H = m->cfg.hidden;
    MAT(w->gate, ffn, H, "%s.%s.weight", prefix, g);
    MAT(w->up, ffn, H, "%s.%s.weight", prefix, u);
    MAT(w->down, H, ffn, "%s.%s.weight", prefix, d);
    return 0;
}

int moe_model_bind_hf(struct moe_model *m)
{
    const struct moe_config *cfg = &m->cfg;
    struct hf_ctx c = {.st = m->files->st};
    int rc;
    int64_t H = cfg->hidden, hd = cfg->head_dim;
    int64_t nq = (int64_t)cfg->n_heads * hd, nkv = (int64_t)cfg->n_kv_heads * hd;

    MAT(m->embed, cfg->vocab, H, "model.embed_tokens.weight");
    if (cfg->tied_embeddings)
        m->lm_head = m->embed;
    else
        MAT(m->lm_head, cfg->vocab, H, "lm_head.weight");
    VEC(m->final_norm, H, "model.norm.weight");

    bool mixtral = cfg->arch == MOE_ARCH_MIXTRAL;
    const char *moe = mixtral ? "block_sparse_moe" : "mlp";
    for (int32_t l = 0; l < cfg->n_layers; l++) {
        struct moe_layer *L = &m->layers[l];
        char p[128], ep[192];
        snprintf(p, sizeof(p), "model.layers.%d", l);
        VEC(L->attn_norm, H, "%s.input_layernorm.weight", p);
        VEC(L->ffn_norm, H, "%s.post_attention_layernorm.weight", p);
        MAT(L->wq, nq, H, "%s.self_attn.q_proj.weight", p);
        MAT(L->wk, nkv, H, "%s.self_attn.k_proj.weight", p);
        MAT(L->wv, nkv, H, "%s.self_attn.v_proj.weight", p);
        MAT(L->wo, H, nq, "%s.self_attn.o_proj.weight", p);
        if (cfg->qkv_bias) {
            VEC(L->bq, nq, "%s.self_attn.q_proj.bias", p);
            VEC(L->bk, nkv, "%s.self_attn.k_proj.bias", p);
            VEC(L->bv, nkv, "%s.self_attn.v_proj.bias", p);
        }
        if (cfg->qk_norm != MOE_QK_NORM_NONE) {
            bool full = cfg->qk_norm == MOE_QK_NORM_FULL;
            VEC(L->q_norm, full ? nq : hd, "%s.self_attn.q_norm.weight", p);
            VEC(L->k_norm, full ? nkv : hd, "%s.self_attn.k_norm.weight", p);
        }
        if (cfg->layer_dense[l]) {
            snprintf(ep, sizeof(ep), "%s.mlp", p);
            if ((rc = bind_ffn(m, &c, &L->shared, cfg->dense_ffn, ep, "gate_proj", "up_proj",
                               "down_proj")) < 0)
                return rc;
            continue;
        }
        MAT(L->router, cfg->n_experts, H, "%s.%s.gate.weight", p, moe);
        for (int32_t e = 0; e < cfg->n_experts; e++) {
            snprintf(ep, sizeof(ep), "%s.%s.experts.%d", p, moe, e);
            rc = mixtral ? bind_ffn(m, &c, &L->experts[e], cfg->expert_ffn, ep, "w1", "w3", "w2")
                         : bind_ffn(m, &c, &L->experts[e], cfg->expert_ffn, ep, "gate_proj",
                                    "up_proj", "down_proj");
            if (rc < 0)
                return rc;
        }
        if (cfg->shared_ffn > 0) {
            snprintf(ep, sizeof(ep), "%s.mlp.shared_expert", p);
            if ((rc = bind_ffn(m, &c, &L->shared, cfg->shared_ffn, ep, "gate_proj", "up_proj",
                               "down_proj")) < 0)
                return rc;
            MAT(L->shared_gate, 1, H, "%s.mlp.shared_expert_gate.weight", p);
        }
    }
    return 0;
}
