/* The architecture config of a GGUF file in llama.cpp's conventions
 * (tests/reference/make_arch_model.py holds the mapping, checked against
 * llama.cpp's own converter): metadata keys prefixed with the
 * architecture's name, read through the same rows as config.json (each row
 * names its GGUF key). What llama.cpp fixes per architecture rather than
 * writing (gpt-oss's window pattern and SwiGLU, MiniMax's renormalisation)
 * comes from the recipe; optional parts (biases, q/k norms) from the
 * presence of their tensors, as llama.cpp decides it. Every "<arch>." key
 * must be claimed: an unknown one fails the load naming it. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "model/model_arch.h"
#include "model/model_int.h"

/* keys of any architecture that do not change the logits */
static const char *const ignored_keys[] = {
    "rope.scaling.finetuned", "nextn_predict_layers", "expert_shared_feed_forward_length",
    "rope.scaling.type", "pooling_type", "causal_attention",
};

static void full_key(const struct moe_gguf_cfg *c, const char *key, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s.%s", c->arch, key);
}

bool moe_gguf_present(struct moe_gguf_cfg *c, const char *key)
{
    return moe_claims_mark(&c->claims, key);
}

int moe_gguf_u32(struct moe_gguf_cfg *c, const char *key, int64_t def, bool required,
                 int32_t *out)
{
    char k[160];
    full_key(c, key, k, sizeof(k));
    moe_gguf_present(c, key);
    uint32_t v;
    int rc = moe_gguf_get_u32(c->g, k, &v);
    if (rc == -ENOENT) {
        if (required)
            return moe_err(-EINVAL, "%s: missing metadata key '%s'", c->file, k);
        *out = (int32_t)def;
        return 0;
    }
    if (rc < 0)
        return rc;
    if (v > INT32_MAX)
        return moe_err(-EINVAL, "%s: metadata key '%s' out of range", c->file, k);
    *out = (int32_t)v;
    return 0;
}

int moe_gguf_f32(struct moe_gguf_cfg *c, const char *key, double def, float *out)
{
    char k[160];
    full_key(c, key, k, sizeof(k));
    moe_gguf_present(c, key);
    int rc = moe_gguf_get_f32(c->g, k, out);
    if (rc == -ENOENT) {
        *out = (float)def;
        return 0;
    }
    if (rc == 0 && !isfinite(*out))
        return moe_err(-EINVAL, "%s: metadata key '%s' is not finite", c->file, k);
    return rc;
}

int moe_gguf_bool(struct moe_gguf_cfg *c, const char *key, bool def, bool *out)
{
    char k[160];
    full_key(c, key, k, sizeof(k));
    moe_gguf_present(c, key);
    int rc = moe_gguf_get_bool(c->g, k, out);
    if (rc == -ENOENT) {
        *out = def;
        return 0;
    }
    return rc;
}

static bool has_tensor(const struct moe_gguf_cfg *c, const char *name)
{
    return moe_gguf_find_tensor(c->g, name) != NULL;
}

/* ---- what llama.cpp's loaders decide per architecture ---------------------------- */

/* dense layers: no router of their own (Qwen-MoE's mlp_only_layers) */
static void dense_by_tensors(struct moe_gguf_cfg *c, struct moe_config *cfg)
{
    for (int32_t l = 0; l < cfg->n_layers && l < MOE_MAX_LAYERS; l++) {
        char name[64];
        snprintf(name, sizeof(name), "blk.%d.ffn_gate_inp.weight", l);
        if (has_tensor(c, name))
            continue;
        snprintf(name, sizeof(name), "blk.%d.ffn_gate.weight", l);
        const struct moe_tensor_info *t = moe_gguf_find_tensor(c->g, name);
        if (t && t->n_dims == 2) {
            cfg->layer_dense[l] = true;
            cfg->dense_ffn = (int32_t)t->dims[0];
        }
    }
}

static void leading_dense(struct moe_config *cfg, int32_t k)
{
    for (int32_t l = 0; l < cfg->n_layers && l < MOE_MAX_LAYERS; l++)
        cfg->layer_dense[l] = l < k;
}

/* rope.dimension_count and YaRN (rope.scaling.*) */
static int rope(struct moe_gguf_cfg *c, struct moe_config *cfg, int32_t def_dim)
{
    int rc;
    if ((rc = moe_gguf_u32(c, "rope.dimension_count", def_dim, false, &cfg->rope_dim)) < 0 ||
        (rc = moe_gguf_f32(c, "rope.freq_base", cfg->rope_theta, &cfg->rope_theta)) < 0)
        return rc;
    char k[160];
    full_key(c, "rope.scaling.type", k, sizeof(k));
    struct moe_gguf_str type = {"none", 4};
    moe_gguf_present(c, "rope.scaling.type");
    if ((rc = moe_gguf_get_str(c->g, k, &type)) < 0 && rc != -ENOENT)
        return rc;
    cfg->rope_attn_factor = 1.0f;
    if (type.len == 4 && !memcmp(type.ptr, "none", 4))
        return 0;
    if (type.len == 6 && !memcmp(type.ptr, "linear", 6)) {
        cfg->rope_scaling = MOE_ROPE_LINEAR;
        return moe_gguf_f32(c, "rope.scaling.factor", 1.0, &cfg->rope_factor);
    }
    if (!(type.len == 4 && !memcmp(type.ptr, "yarn", 4)))
        return moe_err(-ENOTSUP, "%s: metadata key '%s' = '%.*s' is not supported (moed "
                       "implements none, linear, yarn)", c->file, k, (int)type.len, type.ptr);
    float log_mul = 0;
    cfg->rope_scaling = MOE_ROPE_YARN;
    if ((rc = moe_gguf_f32(c, "rope.scaling.factor", 1.0, &cfg->rope_factor)) < 0 ||
        (rc = moe_gguf_u32(c, "rope.scaling.original_context_length", cfg->max_ctx, false,
                           &cfg->rope_orig_ctx)) < 0 ||
        (rc = moe_gguf_f32(c, "rope.scaling.yarn_beta_fast", 32.0, &cfg->yarn_beta_fast)) < 0 ||
        (rc = moe_gguf_f32(c, "rope.scaling.yarn_beta_slow", 1.0, &cfg->yarn_beta_slow)) < 0 ||
        (rc = moe_gguf_f32(c, "rope.scaling.yarn_log_multiplier", 0.0, &log_mul)) < 0)
        return rc;
    double f = cfg->rope_factor, mad = log_mul / 0.1; /* the converter wrote 0.1 * mscale_all_dim */
    double ms = moe_yarn_mscale(f, mad != 0 ? mad : 1.0);
    /* the cos/sin factor: mscale / mscale_all_dim, 1 when the converter wrote
     * the latter (DeepSeek: both equal in every published config) */
    float af = mad != 0 ? 1.0f : (float)ms;
    if ((rc = moe_gguf_f32(c, "rope.scaling.yarn_attn_factor", af, &cfg->rope_attn_factor)) < 0)
        return rc;
    cfg->yarn_truncate = cfg->arch != MOE_ARCH_GPT_OSS; /* gpt-oss's HF config says false */
    if (cfg->attn == MOE_ATTN_MLA && mad != 0) /* MLA scales q.k by mscale^2 too */
        cfg->attn_scale *= (float)(ms * ms);
    return 0;
}

static int gguf_mixtral(struct moe_gguf_cfg *c, struct moe_config *cfg)
{
    cfg->rope_interleaved = true; /* convert_hf_to_gguf permuted Q/K */
    int rc = moe_gguf_u32(c, "attention.sliding_window", 0, false, &cfg->sliding_window);
    for (int32_t l = 0; l < cfg->n_layers && l < MOE_MAX_LAYERS; l++)
        cfg->layer_swa[l] = cfg->sliding_window > 0;
    if (rc == 0)
        rc = moe_gguf_bool(c, "expert_weights_norm", true, &cfg->norm_topk_prob);
    return rc < 0 ? rc : rope(c, cfg, cfg->head_dim);
}

static int gguf_qwen(struct moe_gguf_cfg *c, struct moe_config *cfg)
{
    dense_by_tensors(c, cfg);
    bool qwen2 = cfg->arch == MOE_ARCH_QWEN2_MOE;
    cfg->qkv_bias = qwen2 || has_tensor(c, "blk.0.attn_q.bias");
    cfg->o_bias = !qwen2 && has_tensor(c, "blk.0.attn_output.bias");
    cfg->shared_gate = qwen2 && cfg->shared_ffn > 0;
    /* llama.cpp's fixed choice: qwen2moe keeps the top-k weights, qwen3moe renormalises */
    int rc = moe_gguf_bool(c, "expert_weights_norm", !qwen2, &cfg->norm_topk_prob);
    return rc < 0 ? rc : rope(c, cfg, cfg->head_dim);
}

static int gguf_olmoe(struct moe_gguf_cfg *c, struct moe_config *cfg)
{
    cfg->qkv_bias = has_tensor(c, "blk.0.attn_q.bias");
    cfg->o_bias = has_tensor(c, "blk.0.attn_output.bias");
    int rc = moe_gguf_bool(c, "expert_weights_norm", false, &cfg->norm_topk_prob);
    return rc < 0 ? rc : rope(c, cfg, cfg->head_dim);
}

/* shared experts as a count of expert-sized FFNs */
static int shared_count(struct moe_gguf_cfg *c, struct moe_config *cfg)
{
    int32_t n = 0;
    int rc = moe_gguf_u32(c, "expert_shared_count", 0, false, &n);
    if (rc < 0)
        return rc;
    int64_t ffn = (int64_t)n * cfg->expert_ffn; /* both from the file: may not fit */
    if (ffn > INT32_MAX)
        return moe_err(-EINVAL, "%s: metadata key '%s.expert_shared_count' = %d shared experts "
                       "of %d is too large", c->file, c->arch, n, cfg->expert_ffn);
    cfg->shared_ffn = (int32_t)ffn;
    return 0;
}

static int groups(struct moe_gguf_cfg *c, struct moe_config *cfg)
{
    int rc;
    if ((rc = moe_gguf_u32(c, "expert_group_count", 0, false, &cfg->n_group)) < 0 ||
        (rc = moe_gguf_u32(c, "expert_group_used_count", 0, false, &cfg->topk_group)) < 0)
        return rc;
    if (cfg->n_group <= 1)
        cfg->n_group = cfg->topk_group = 0;
    return 0;
}

/* "deepseek2" holds V2 (softmax) and V3 (sigmoid + correction bias) alike */
static int gguf_deepseek(struct moe_gguf_cfg *c, struct moe_config *cfg)
{
    int rc;
    int32_t gating = 1, lead = 0, k_mla = 0, v_mla = 0, k_len = 0, v_len = 0;
    if ((rc = moe_gguf_u32(c, "expert_gating_func", 1, false, &gating)) < 0 ||
        (rc = moe_gguf_u32(c, "leading_dense_block_count", 0, false, &lead)) < 0 ||
        (rc = moe_gguf_u32(c, "attention.q_lora_rank", 0, false, &cfg->q_lora_rank)) < 0 ||
        (rc = moe_gguf_u32(c, "attention.kv_lora_rank", 0, true, &cfg->kv_lora_rank)) < 0 ||
        (rc = moe_gguf_u32(c, "attention.key_length_mla", 0, true, &k_mla)) < 0 ||
        (rc = moe_gguf_u32(c, "attention.value_length_mla", 0, true, &v_mla)) < 0 ||
        (rc = moe_gguf_u32(c, "attention.key_length", 0, false, &k_len)) < 0 ||
        (rc = moe_gguf_u32(c, "attention.value_length", 0, false, &v_len)) < 0 ||
        (rc = moe_gguf_bool(c, "expert_weights_norm", false, &cfg->norm_topk_prob)) < 0 ||
        (rc = shared_count(c, cfg)) < 0 || (rc = groups(c, cfg)) < 0 ||
        (rc = moe_gguf_u32(c, "rope.dimension_count", 64, false, &cfg->qk_rope_dim)) < 0)
        return rc;
    if (gating == 2) { /* sigmoid: DeepSeek-V3, R1, Kimi-K2 */
        cfg->arch = MOE_ARCH_DEEPSEEK3;
        cfg->router = MOE_ROUTE_SIGMOID;
        cfg->score_bias = true;
    } else if (gating == 1) {
        cfg->router = cfg->n_group > 1 ? MOE_ROUTE_SOFTMAX_GROUP : MOE_ROUTE_SOFTMAX;
        cfg->norm_topk_prob = false; /* transformers' V2 never renormalises */
    } else {
        return moe_err(-ENOTSUP, "%s: metadata key '%s.expert_gating_func' = %d is not supported "
                       "(1 softmax, 2 sigmoid)", c->file, c->arch, gating);
    }
    leading_dense(cfg, lead);
    cfg->attn = MOE_ATTN_MLA;
    cfg->qk_nope_dim = k_mla - cfg->qk_rope_dim;
    cfg->v_head_dim = v_mla;
    cfg->head_dim = k_mla;
    cfg->n_kv_heads = cfg->n_heads; /* the file says 1: the latent is one shared "head" */
    cfg->rope_interleaved = true;
    cfg->qkv_bias = has_tensor(c, "blk.0.attn_kv_a_mqa.bias");
    cfg->o_bias = has_tensor(c, "blk.0.attn_output.bias");
    if ((k_len && k_len != (int64_t)cfg->kv_lora_rank + cfg->qk_rope_dim) ||
        (v_len && v_len != cfg->kv_lora_rank))
        return moe_err(-EINVAL, "%s: MLA key/value lengths %d/%d do not match kv_lora_rank %d "
                       "and rope dims %d", c->file, k_len, v_len, cfg->kv_lora_rank,
                       cfg->qk_rope_dim);
    cfg->attn_scale = 1.0f / sqrtf((float)k_mla);
    return rope(c, cfg, cfg->qk_rope_dim);
}

static int gguf_glm4(struct moe_gguf_cfg *c, struct moe_config *cfg)
{
    int rc;
    int32_t lead = 0, gating = 2, nextn = 0;
    if ((rc = moe_gguf_u32(c, "leading_dense_block_count", 0, false, &lead)) < 0 ||
        (rc = moe_gguf_u32(c, "expert_gating_func", 2, false, &gating)) < 0 ||
        (rc = moe_gguf_u32(c, "nextn_predict_layers", 0, false, &nextn)) < 0 ||
        (rc = moe_gguf_bool(c, "expert_weights_norm", true, &cfg->norm_topk_prob)) < 0 ||
        (rc = shared_count(c, cfg)) < 0 || (rc = groups(c, cfg)) < 0)
        return rc;
    if (gating != 2)
        return moe_err(-ENOTSUP, "%s: glm4moe with expert_gating_func %d: only sigmoid (2)",
                       c->file, gating);
    cfg->n_layers -= nextn; /* block_count counts the MTP blocks appended */
    leading_dense(cfg, lead);
    cfg->qk_norm = has_tensor(c, "blk.0.attn_q_norm.weight") ? MOE_QK_NORM_HEAD : MOE_QK_NORM_NONE;
    cfg->qkv_bias = has_tensor(c, "blk.0.attn_q.bias");
    return rope(c, cfg, cfg->head_dim / 2);
}

static int gguf_gpt_oss(struct moe_gguf_cfg *c, struct moe_config *cfg)
{
    int rc;
    if ((rc = moe_gguf_u32(c, "attention.sliding_window", 128, false, &cfg->sliding_window)) < 0)
        return rc;
    for (int32_t l = 0; l < cfg->n_layers && l < MOE_MAX_LAYERS; l++)
        cfg->layer_swa[l] = (l + 1) % 2 != 0; /* llama.cpp's fixed pattern: even layers slide */
    cfg->qkv_bias = cfg->o_bias = true;
    cfg->swiglu_limit = 7.0f;
    cfg->swiglu_alpha = 1.702f;
    return rope(c, cfg, cfg->head_dim);
}

static int gguf_minimax(struct moe_gguf_cfg *c, struct moe_config *cfg)
{
    int32_t gating = 2;
    int rc = moe_gguf_u32(c, "expert_gating_func", 2, false, &gating);
    if (rc == 0 && gating != 2)
        return moe_err(-ENOTSUP, "%s: minimax-m2 with expert_gating_func %d: only sigmoid (2)",
                       c->file, gating);
    return rc < 0 ? rc : rope(c, cfg, cfg->head_dim);
}

static int gguf_ernie(struct moe_gguf_cfg *c, struct moe_config *cfg)
{
    int rc;
    int32_t start = 1, every = 1;
    if ((rc = moe_gguf_u32(c, "leading_dense_block_count", 1, false, &start)) < 0 ||
        (rc = moe_gguf_u32(c, "interleave_moe_layer_step", 1, false, &every)) < 0)
        return rc;
    if (every <= 0)
        return moe_err(-EINVAL, "%s: interleave_moe_layer_step must be positive", c->file);
    for (int32_t l = 0; l < cfg->n_layers && l < MOE_MAX_LAYERS; l++)
        cfg->layer_dense[l] = !((l + 1) % every == 0 && l >= start);
    /* the shared experts' size from their tensors (the keys are a converter's heuristic) */
    moe_gguf_present(c, "expert_shared_count");
    /* n_layers is not validated yet: a file's 2^31 layers must not mean 2^31 lookups */
    for (int32_t l = 0; l < cfg->n_layers && l < MOE_MAX_LAYERS; l++) {
        char name[64];
        snprintf(name, sizeof(name), "blk.%d.ffn_gate_shexp.weight", l);
        const struct moe_tensor_info *t = moe_gguf_find_tensor(c->g, name);
        if (t && t->n_dims == 2 && t->dims[0] <= INT32_MAX) {
            cfg->shared_ffn = (int32_t)t->dims[0];
            break;
        }
    }
    cfg->qkv_bias = cfg->o_bias = cfg->mlp_bias = has_tensor(c, "blk.0.attn_q.bias");
    cfg->router_norm_min = 1e-12f;
    return rope(c, cfg, cfg->head_dim);
}

static int gguf_dots1(struct moe_gguf_cfg *c, struct moe_config *cfg)
{
    int rc;
    int32_t lead = 0, gating = 2;
    if ((rc = moe_gguf_u32(c, "leading_dense_block_count", 0, false, &lead)) < 0 ||
        (rc = moe_gguf_u32(c, "expert_gating_func", 2, false, &gating)) < 0 ||
        (rc = shared_count(c, cfg)) < 0 || (rc = groups(c, cfg)) < 0)
        return rc;
    if (gating != 2)
        return moe_err(-ENOTSUP, "%s: dots1 with expert_gating_func %d: only sigmoid (2)",
                       c->file, gating);
    leading_dense(cfg, lead);
    return rope(c, cfg, cfg->head_dim);
}

/* Qwen3-Next / Qwen3.5: which layers are linear, the value heads' size, and
 * llama.cpp's value-head order */
static int gguf_qwen3_next(struct moe_gguf_cfg *c, struct moe_config *cfg)
{
    dense_by_tensors(c, cfg);
    cfg->shared_gate = cfg->shared_ffn > 0;
    int32_t inner = 0, every = 4;
    int rc;
    if ((rc = moe_gguf_u32(c, "ssm.inner_size", 0, true, &inner)) < 0 ||
        (rc = moe_gguf_u32(c, "full_attention_interval", 4, false, &every)) < 0)
        return rc;
    if (cfg->lin_v_heads <= 0 || every <= 0 || inner % cfg->lin_v_heads)
        return moe_err(-EINVAL, "%s: ssm.inner_size %d is not a multiple of %d value heads",
                       c->file, inner, cfg->lin_v_heads);
    cfg->lin_v_dim = inner / cfg->lin_v_heads;
    char k[160];
    full_key(c, "attention.recurrent_layers", k, sizeof(k));
    moe_gguf_present(c, "attention.recurrent_layers");
    enum moe_gguf_type et;
    const void *data;
    uint64_t n;
    rc = moe_gguf_get_array(c->g, k, &et, &data, &n);
    if (rc < 0 && rc != -ENOENT)
        return rc;
    if (rc == 0 && (et != MOE_GGUF_BOOL || n < (uint64_t)cfg->n_layers))
        return moe_err(-EINVAL, "%s: '%s' must hold a bool per layer", c->file, k);
    int32_t first_full = -1;
    for (int32_t l = 0; l < cfg->n_layers && l < MOE_MAX_LAYERS; l++) {
        cfg->layer_linear[l] = rc == 0 ? ((const uint8_t *)data)[l] != 0 : (l + 1) % every != 0;
        if (!cfg->layer_linear[l] && first_full < 0)
            first_full = l;
    }
    char name[64];
    snprintf(name, sizeof(name), "blk.%d.attn_q.bias", first_full);
    cfg->qkv_bias = cfg->o_bias = first_full >= 0 && has_tensor(c, name);
    /* text positions are equal on the three axes of Qwen3.5's rope: plain rope */
    moe_gguf_present(c, "rope.dimension_sections");
    /* llama.cpp's Qwen3.5 converter orders value heads tiled (k head h % nk) */
    cfg->lin_v_tiled = cfg->arch == MOE_ARCH_QWEN3_5_MOE && cfg->lin_v_heads != cfg->lin_k_heads;
    return rope(c, cfg, cfg->head_dim);
}

static const struct {
    enum moe_arch arch;
    int (*finish)(struct moe_gguf_cfg *c, struct moe_config *cfg);
} hooks[] = {
    {MOE_ARCH_MIXTRAL, gguf_mixtral},     {MOE_ARCH_QWEN2_MOE, gguf_qwen},
    {MOE_ARCH_QWEN3_MOE, gguf_qwen},      {MOE_ARCH_OLMOE, gguf_olmoe},
    {MOE_ARCH_DEEPSEEK2, gguf_deepseek},  {MOE_ARCH_GLM4_MOE, gguf_glm4},
    {MOE_ARCH_GPT_OSS, gguf_gpt_oss},     {MOE_ARCH_MINIMAX_M2, gguf_minimax},
    {MOE_ARCH_ERNIE4_5, gguf_ernie},      {MOE_ARCH_DOTS1, gguf_dots1},
    {MOE_ARCH_QWEN3_NEXT, gguf_qwen3_next}, {MOE_ARCH_QWEN3_5_MOE, gguf_qwen3_next},
};

/* ---- the reader ------------------------------------------------------------------- */

static int read_rows(struct moe_gguf_cfg *c, const struct moe_arch_row *r, struct moe_config *cfg)
{
    int rc = 0;
    for (size_t i = 0; i < r->n_keys && rc == 0; i++) {
        const struct moe_key_row *k = &r->keys[i];
        if (!k->gguf)
            continue;
        void *p = (char *)cfg + k->off;
        switch (k->type) {
        case MOE_KEY_INT:
            rc = moe_gguf_u32(c, k->gguf, (int64_t)k->def, k->required && strcmp(k->gguf,
                              "vocab_size"), (int32_t *)p);
            break;
        case MOE_KEY_FLOAT:
            rc = moe_gguf_f32(c, k->gguf, k->def, (float *)p);
            break;
        case MOE_KEY_BOOL:
        default:
            rc = moe_gguf_bool(c, k->gguf, k->def != 0, (bool *)p);
            break;
        }
    }
    return rc;
}

int moe_config_from_gguf(const struct moe_gguf *g, struct moe_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    struct moe_gguf_cfg c = {.g = g, .file = moe_gguf_path(g)};
    struct moe_gguf_str s;
    if (moe_gguf_get_str(g, "general.architecture", &s) < 0)
        return moe_err(-EINVAL, "%s: missing metadata key 'general.architecture'", c.file);
    snprintf(c.arch, sizeof(c.arch), "%.*s", (int)MOE_MIN(s.len, sizeof(c.arch) - 1), s.ptr);
    const struct moe_arch_row *r = moe_arch_by_gguf(c.arch);
    if (!r)
        return moe_err(-ENOTSUP, "%s: unsupported architecture '%s'; supported: %s", c.file,
                       c.arch, moe_arch_gguf_list());
    /* the "<arch>." keys, each to be claimed */
    size_t n = moe_gguf_kv_count(g), plen = strlen(c.arch);
    int rc = moe_claims_init(&c.claims, n);
    if (rc < 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        const char *k = moe_gguf_key_at(g, i, NULL);
        if (k && !strncmp(k, c.arch, plen) && k[plen] == '.')
            moe_claims_add(&c.claims, k + plen + 1);
    }
    cfg->arch = r->arch;
    r->recipe(cfg);
    if ((rc = read_rows(&c, r, cfg)) < 0)
        goto out;
    for (size_t i = 0; i < MOE_ARRAY_SIZE(ignored_keys); i++)
        moe_gguf_present(&c, ignored_keys[i]);
    if (cfg->n_kv_heads < 0)
        cfg->n_kv_heads = cfg->n_heads;
    int32_t klen = -1, vlen = 0, ffn = 0;
    if ((rc = moe_gguf_u32(&c, "attention.key_length", -1, false, &klen)) < 0 ||
        (rc = moe_gguf_u32(&c, "attention.value_length", 0, false, &vlen)) < 0 ||
        (rc = moe_gguf_u32(&c, "feed_forward_length", 0, false, &ffn)) < 0)
        goto out;
    if (cfg->head_dim < 0)
        cfg->head_dim = klen > 0 ? klen : cfg->n_heads > 0 ? cfg->hidden / cfg->n_heads : 0;
    cfg->v_head_dim = vlen > 0 && cfg->arch != MOE_ARCH_DEEPSEEK2 ? vlen : cfg->head_dim;
    /* vocabulary size: the key, else the embedding's rows */
    const struct moe_tensor_info *emb = moe_gguf_find_tensor(g, "token_embd.weight");
    if (cfg->vocab == 0 && emb && emb->n_dims == 2 && emb->dims[0] <= INT32_MAX)
        cfg->vocab = (int32_t)emb->dims[0];
    cfg->tied_embeddings = moe_gguf_find_tensor(g, "output.weight") == NULL;
    cfg->attn_scale = 1.0f / sqrtf((float)cfg->head_dim);
    for (size_t i = 0; i < MOE_ARRAY_SIZE(hooks); i++)
        if (hooks[i].arch == r->arch && (rc = hooks[i].finish(&c, cfg)) < 0)
            goto out;
    const char *unknown = moe_claims_unclaimed(&c.claims);
    if (unknown) {
        rc = moe_err(-ENOTSUP, "%s: metadata key '%s.%s' is not known to moed for %s; it may "
                     "change the model's math, so the model is not loaded", c.file, c.arch,
                     unknown, c.arch);
        goto out;
    }
    uint32_t id;
    cfg->bos_id = moe_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &id) == 0 ? (int32_t)id : -1;
    cfg->eos_id = moe_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &id) == 0 ? (int32_t)id : -1;
    rc = moe_config_validate(cfg, c.file);
out:
    moe_claims_free(&c.claims);
    return rc;
}
