/* The architecture table: one row per architecture (names, config keys in
 * both transformers spellings with transformers' defaults, layer recipe,
 * value checks, keys that do not change the math) and the hooks for what a
 * row cannot say. Defaults are transformers 5.25's config classes' (4.57's
 * where they differ only in spelling). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "model/model_arch.h"
#include "model/model_int.h"

#define F(field) offsetof(struct moe_config, field)
#define REQ(field, gguf, ...) {{__VA_ARGS__}, gguf, MOE_KEY_INT, F(field), 0, true}
#define INT(field, def, gguf, ...) {{__VA_ARGS__}, gguf, MOE_KEY_INT, F(field), def, false}
#define FLT(field, def, gguf, ...) {{__VA_ARGS__}, gguf, MOE_KEY_FLOAT, F(field), def, false}
#define BOOL(field, def, gguf, ...) {{__VA_ARGS__}, gguf, MOE_KEY_BOOL, F(field), def, false}

/* every architecture's shape keys; -1: derived afterwards (kv heads = heads,
 * head_dim = hidden / heads) */
#define COMMON(ctx, eps, tied)                                                                 \
    REQ(vocab, "vocab_size", "vocab_size"), REQ(hidden, "embedding_length", "hidden_size"),    \
        REQ(n_layers, "block_count", "num_hidden_layers"),                                     \
        REQ(n_heads, "attention.head_count", "num_attention_heads"),                           \
        INT(n_kv_heads, -1, "attention.head_count_kv", "num_key_value_heads"),                 \
        INT(max_ctx, ctx, "context_length", "max_position_embeddings"),                        \
        FLT(rms_eps, eps, "attention.layer_norm_rms_epsilon", "rms_norm_eps"),                 \
        BOOL(tied_embeddings, tied, NULL, "tie_word_embeddings")

/* ---- shared pieces of the hooks -------------------------------------------------- */

static void derive_heads(struct moe_config *c)
{
    if (c->n_kv_heads < 0)
        c->n_kv_heads = c->n_heads;
    if (c->head_dim < 0 && c->n_heads > 0)
        c->head_dim = c->hidden / c->n_heads;
    if (c->v_head_dim <= 0)
        c->v_head_dim = c->head_dim;
}

/* A key whose JSON null means "none" (0), unlike an absent key (def). */
static int int_or_null(struct moe_hf_cfg *h, const char *key, int32_t def, int32_t *out)
{
    json_t *v = json_object_get(h->root, key);
    moe_hf_claim(h, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (json_is_null(v)) {
        *out = 0;
        return 0;
    }
    const char *names[] = {key, NULL};
    return moe_hf_int(h, names, def, false, out);
}

/* first_k_dense_replace leading dense layers (DeepSeek, GLM, dots) */
static int first_k_dense(struct moe_hf_cfg *h, struct moe_config *c, int32_t def)
{
    int32_t k;
    const char *names[] = {"first_k_dense_replace", NULL};
    int rc = moe_hf_int(h, names, def, false, &k);
    if (rc < 0)
        return rc;
    if ((rc = moe_hf_require(h, "moe_layer_freq", "1")) < 0)
        return rc;
    for (int32_t l = 0; l < c->n_layers && l < MOE_MAX_LAYERS; l++)
        c->layer_dense[l] = l < k;
    return 0;
}

/* n_shared_experts of moe_intermediate_size each, ungated */
static int shared_experts(struct moe_hf_cfg *h, struct moe_config *c, const char *key,
                          int32_t def)
{
    int32_t n;
    int rc = int_or_null(h, key, def, &n);
    if (rc < 0)
        return rc;
    if (n < 0)
        return moe_err(-EINVAL, "%s: '%s' must not be negative", h->file, key);
    int64_t ffn = (int64_t)n * c->expert_ffn; /* both from the file: may not fit */
    if (ffn > INT32_MAX || ffn < INT32_MIN)
        return moe_err(-EINVAL, "%s: '%s' = %d shared experts of %d is too large", h->file, key,
                       n, c->expert_ffn);
    c->shared_ffn = (int32_t)ffn;
    return 0;
}

/* n_group / topk_group (null or 1: no groups) */
static int groups(struct moe_hf_cfg *h, struct moe_config *c, int32_t def_n, int32_t def_k)
{
    int rc;
    if ((rc = int_or_null(h, "n_group", def_n, &c->n_group)) < 0 ||
        (rc = int_or_null(h, "topk_group", def_k, &c->topk_group)) < 0)
        return rc;
    if (c->n_group <= 1)
        c->n_group = c->topk_group = 0;
    return 0;
}

/* MLA's dimensions; head_dim and qk_head_dim are derived in transformers
 * (head_dim = the rope dims) and must agree when a config writes them */
static int mla_dims(struct moe_hf_cfg *h, struct moe_config *c)
{
    int rc;
    const char *nope[] = {"qk_nope_head_dim", NULL}, *rope[] = {"qk_rope_head_dim", NULL};
    const char *vd[] = {"v_head_dim", NULL}, *kvl[] = {"kv_lora_rank", NULL};
    if ((rc = moe_hf_int(h, kvl, 512, false, &c->kv_lora_rank)) < 0 ||
        (rc = moe_hf_int(h, nope, 128, false, &c->qk_nope_dim)) < 0 ||
        (rc = moe_hf_int(h, rope, 64, false, &c->qk_rope_dim)) < 0 ||
        (rc = moe_hf_int(h, vd, 128, false, &c->v_head_dim)) < 0 ||
        (rc = int_or_null(h, "q_lora_rank", 1536, &c->q_lora_rank)) < 0)
        return rc;
    int64_t qk = (int64_t)c->qk_nope_dim + c->qk_rope_dim;
    if (c->qk_nope_dim < 0 || c->qk_rope_dim < 0 || qk > INT32_MAX)
        return moe_err(-EINVAL, "%s: qk_nope_head_dim %d and qk_rope_head_dim %d: not a head "
                       "size", h->file, c->qk_nope_dim, c->qk_rope_dim);
    char want[32];
    snprintf(want, sizeof(want), "%lld", (long long)qk);
    if ((rc = moe_hf_require(h, "qk_head_dim", want)) < 0)
        return rc;
    snprintf(want, sizeof(want), "%d", c->qk_rope_dim);
    if ((rc = moe_hf_require(h, "head_dim", want)) < 0)
        return rc;
    c->head_dim = (int32_t)qk;
    c->attn = MOE_ATTN_MLA;
    /* the cache is one "head" of the latent and the rope key */
    return 0;
}

/* attention_bias: q/k/v (and the output projection where o) */
static int attention_bias(struct moe_hf_cfg *h, struct moe_config *c, const char *key,
                          bool def, bool o)
{
    const char *names[] = {key, NULL};
    int rc = moe_hf_bool(h, names, def, &c->qkv_bias);
    c->o_bias = o && c->qkv_bias;
    return rc;
}

static void all_layers_swa(struct moe_config *c, bool on)
{
    for (int32_t l = 0; l < c->n_layers && l < MOE_MAX_LAYERS; l++)
        c->layer_swa[l] = on;
}

/* Qwen-MoE's sliding-window switch: the transformers versions disagree on
 * which layers it covers, and no released checkpoint turns it on */
static int qwen_no_sliding(struct moe_hf_cfg *h)
{
    int rc = moe_hf_require(h, "use_sliding_window", "false");
    moe_hf_claim(h, "sliding_window");
    moe_hf_claim(h, "max_window_layers");
    json_t *lt = moe_hf_take(h, "layer_types");
    size_t i;
    json_t *v;
    json_array_foreach(lt, i, v) if (!json_is_string(v) ||
                                     strcmp(json_string_value(v), "full_attention"))
        return moe_err(-ENOTSUP, "%s: config key 'layer_types'[%zu] is not full_attention: "
                       "sliding layers are not supported for this architecture", h->file, i);
    return rc;
}

/* Qwen-MoE's mlp_only_layers and decoder_sparse_step */
static int qwen_dense_layers(struct moe_hf_cfg *h, struct moe_config *c)
{
    int32_t step = 1;
    const char *names[] = {"decoder_sparse_step", NULL};
    int rc = moe_hf_int(h, names, 1, false, &step);
    if (rc < 0)
        return rc;
    json_t *only = moe_hf_take(h, "mlp_only_layers");
    for (int32_t l = 0; l < c->n_layers && l < MOE_MAX_LAYERS; l++)
        c->layer_dense[l] = !(step > 0 && (l + 1) % step == 0);
    if (only && !json_is_array(only))
        return moe_err(-EINVAL, "%s: mlp_only_layers is not a list", h->file);
    size_t i;
    json_t *v;
    json_array_foreach(only, i, v) {
        json_int_t l = json_integer_value(v);
        if (!json_is_integer(v) || l < 0 || l >= c->n_layers || l >= MOE_MAX_LAYERS)
            return moe_err(-EINVAL, "%s: mlp_only_layers[%zu] is not a layer index", h->file, i);
        c->layer_dense[l] = true;
    }
    return 0;
}

/* ---- the recipes ------------------------------------------------------------------- */

static void recipe_base(struct moe_config *c)
{
    c->rope_theta = 10000.0f;
    c->head_dim = -1;
    c->n_kv_heads = -1;
    c->router = MOE_ROUTE_SOFTMAX;
    c->routed_scale = 1.0f;
    c->act = MOE_ACT_SILU;
    c->attn = MOE_ATTN_GQA;
}

static void recipe_mixtral(struct moe_config *c)
{
    recipe_base(c);
    c->rope_theta = 1e6f;
    c->norm_topk_prob = true;
}

static void recipe_qwen2(struct moe_config *c)
{
    recipe_base(c);
    c->shared_gate = true;
}

static void recipe_qwen3(struct moe_config *c)
{
    recipe_base(c);
    c->qk_norm = MOE_QK_NORM_HEAD;
}

/* Qwen3-Next / Qwen3.5: Qwen2-MoE's gated shared expert, Qwen3's per-head
 * q/k norm, and an output gate in q_proj */
static void recipe_qwen3_next(struct moe_config *c)
{
    recipe_base(c);
    c->qk_norm = MOE_QK_NORM_HEAD;
    c->shared_gate = true;
    c->attn_gate = true;
}

static void recipe_olmoe(struct moe_config *c)
{
    recipe_base(c);
    c->qk_norm = MOE_QK_NORM_FULL;
}

static void recipe_deepseek2(struct moe_config *c)
{
    recipe_base(c);
    c->rope_interleaved = true; /* complex multiplication of adjacent pairs */
}

static void recipe_sigmoid(struct moe_config *c)
{
    recipe_base(c);
    c->router = MOE_ROUTE_SIGMOID;
    c->score_bias = true;
}

static void recipe_dots1(struct moe_config *c)
{
    recipe_sigmoid(c);
    c->qk_norm = MOE_QK_NORM_HEAD;
}

static void recipe_minimax(struct moe_config *c)
{
    recipe_sigmoid(c);
    c->rope_theta = 5e6f;
    c->qk_norm = MOE_QK_NORM_FULL;
    c->norm_topk_prob = true;
}

static void recipe_gpt_oss(struct moe_config *c)
{
    recipe_base(c);
    c->rope_theta = 150000.0f;
    c->router = MOE_ROUTE_TOPK_SOFTMAX;
    c->router_bias = true;
    c->expert_bias = true;
    c->attn_sinks = true;
    c->act = MOE_ACT_SWIGLU_OAI;
}

static void recipe_ernie(struct moe_config *c)
{
    recipe_base(c);
    c->rope_theta = 500000.0f;
    c->router = MOE_ROUTE_SOFTMAX_BIAS;
    c->score_bias = true;
    c->rope_interleaved = true;
}

/* ---- the hooks: what the keys cannot say alone ---------------------------------- */

static int finish_common(struct moe_hf_cfg *h, struct moe_config *c, int32_t rope_head)
{
    derive_heads(c);
    return moe_hf_rope(h, c, rope_head > 0 ? rope_head : c->head_dim); /* attn_scale too */
}

static int hf_mixtral(struct moe_hf_cfg *h, struct moe_config *c)
{
    int32_t w = 0; /* sliding_window: every layer, when set */
    const char *names[] = {"sliding_window", NULL};
    int rc = moe_hf_int(h, names, 0, false, &w);
    if (rc < 0)
        return rc;
    c->sliding_window = w;
    all_layers_swa(c, w > 0);
    /* not a Mixtral key (transformers slides every layer when sliding_window
     * is set): accepted only when it says the same */
    if ((rc = moe_hf_layer_types(h, c)) < 0)
        return rc;
    for (int32_t l = 0; l < c->n_layers && l < MOE_MAX_LAYERS; l++)
        if (c->layer_swa[l] != (w > 0))
            return moe_err(-ENOTSUP, "%s: config key 'layer_types'[%d] is %s, but Mixtral's "
                           "layers all %s (sliding_window %d)", h->file, l,
                           w > 0 ? "full_attention" : "sliding_attention",
                           w > 0 ? "slide" : "attend to everything", w);
    return finish_common(h, c, 0);
}

static int hf_qwen2(struct moe_hf_cfg *h, struct moe_config *c)
{
    int rc;
    if ((rc = qwen_dense_layers(h, c)) < 0 || (rc = qwen_no_sliding(h)) < 0)
        return rc;
    return finish_common(h, c, 0);
}

static int hf_qwen3(struct moe_hf_cfg *h, struct moe_config *c)
{
    int rc;
    if ((rc = qwen_dense_layers(h, c)) < 0 || (rc = qwen_no_sliding(h)) < 0 ||
        (rc = attention_bias(h, c, "attention_bias", false, true)) < 0)
        return rc;
    return finish_common(h, c, 0);
}

/* layer_types of linear_attention / full_attention, or (4.x configs
 * without it) every full_attention_interval-th layer full */
static int hybrid_layers(struct moe_hf_cfg *h, struct moe_config *c)
{
    int32_t every;
    const char *names[] = {"full_attention_interval", NULL};
    int rc = moe_hf_int(h, names, 4, false, &every);
    if (rc < 0)
        return rc;
    if (every <= 0)
        return moe_err(-EINVAL, "%s: full_attention_interval must be positive", h->file);
    json_t *lt = moe_hf_take(h, "layer_types");
    if (lt && (!json_is_array(lt) || (int32_t)json_array_size(lt) != c->n_layers))
        return moe_err(-EINVAL, "%s: layer_types must list the %d layers", h->file, c->n_layers);
    for (int32_t l = 0; l < c->n_layers && l < MOE_MAX_LAYERS; l++) {
        c->layer_linear[l] = (l + 1) % every != 0;
        if (!lt)
            continue;
        const char *t = json_string_value(json_array_get(lt, (size_t)l));
        if (t && !strcmp(t, "linear_attention"))
            c->layer_linear[l] = true;
        else if (t && !strcmp(t, "full_attention"))
            c->layer_linear[l] = false;
        else
            return moe_err(-ENOTSUP, "%s: config key 'layer_types'[%d] = '%s' is not supported "
                           "(moed implements linear_attention, full_attention)", h->file, l,
                           t ? t : "?");
    }
    return 0;
}

static int hf_qwen3_next(struct moe_hf_cfg *h, struct moe_config *c)
{
    int rc;
    if ((rc = qwen_dense_layers(h, c)) < 0 || (rc = hybrid_layers(h, c)) < 0 ||
        (rc = attention_bias(h, c, "attention_bias", false, true)) < 0)
        return rc;
    return finish_common(h, c, 0);
}

static int hf_olmoe(struct moe_hf_cfg *h, struct moe_config *c)
{
    int rc = attention_bias(h, c, "attention_bias", false, true);
    if (rc < 0)
        return rc;
    return finish_common(h, c, 0);
}

static int hf_deepseek2(struct moe_hf_cfg *h, struct moe_config *c)
{
    int rc;
    if ((rc = mla_dims(h, c)) < 0 || (rc = shared_experts(h, c, "n_shared_experts", 2)) < 0 ||
        (rc = first_k_dense(h, c, 0)) < 0 || (rc = groups(h, c, 0, 0)) < 0 ||
        (rc = attention_bias(h, c, "attention_bias", false, true)) < 0 ||
        (rc = moe_hf_require(h, "scoring_func", "softmax")) < 0)
        return rc;
    /* transformers' DeepSeek-V2 router never renormalises; a config asking
     * for it is read differently by the checkpoint's own code */
    if ((rc = moe_hf_require(h, "norm_topk_prob", "false")) < 0)
        return rc;
    json_t *m = moe_hf_take(h, "topk_method");
    const char *method = m ? json_string_value(m) : "greedy";
    if (method && !strcmp(method, "greedy")) {
        c->router = MOE_ROUTE_SOFTMAX;
        c->n_group = c->topk_group = 0;
    } else if (method && !strcmp(method, "group_limited_greedy")) {
        c->router = MOE_ROUTE_SOFTMAX_GROUP;
        if (c->n_group <= 1)
            return moe_err(-EINVAL, "%s: topk_method group_limited_greedy needs n_group", h->file);
    } else {
        return moe_err(-ENOTSUP, "%s: config key 'topk_method' = %s is not supported (moed "
                       "implements greedy|group_limited_greedy)", h->file, method ? method : "?");
    }
    c->norm_topk_prob = false;
    return finish_common(h, c, c->qk_rope_dim);
}

static int hf_deepseek3(struct moe_hf_cfg *h, struct moe_config *c)
{
    int rc;
    if ((rc = mla_dims(h, c)) < 0 || (rc = shared_experts(h, c, "n_shared_experts", 1)) < 0 ||
        (rc = first_k_dense(h, c, 3)) < 0 || (rc = groups(h, c, 8, 4)) < 0 ||
        (rc = attention_bias(h, c, "attention_bias", false, true)) < 0 ||
        (rc = moe_hf_require(h, "topk_method", "noaux_tc")) < 0 ||
        (rc = moe_hf_require(h, "scoring_func", "sigmoid")) < 0)
        return rc;
    const char *ri[] = {"rope_interleave", NULL};
    if ((rc = moe_hf_bool(h, ri, true, &c->rope_interleaved)) < 0)
        return rc;
    return finish_common(h, c, c->qk_rope_dim);
}

static int hf_glm4(struct moe_hf_cfg *h, struct moe_config *c)
{
    int rc;
    bool qk = false;
    const char *names[] = {"use_qk_norm", NULL};
    if ((rc = shared_experts(h, c, "n_shared_experts", 1)) < 0 ||
        (rc = first_k_dense(h, c, 1)) < 0 || (rc = groups(h, c, 1, 1)) < 0 ||
        (rc = attention_bias(h, c, "attention_bias", false, false)) < 0 ||
        (rc = moe_hf_bool(h, names, false, &qk)) < 0)
        return rc;
    c->qk_norm = qk ? MOE_QK_NORM_HEAD : MOE_QK_NORM_NONE;
    return finish_common(h, c, 0);
}

static int hf_gpt_oss(struct moe_hf_cfg *h, struct moe_config *c)
{
    int rc;
    const char *sw[] = {"sliding_window", NULL};
    if ((rc = attention_bias(h, c, "attention_bias", true, true)) < 0 ||
        (rc = moe_hf_int(h, sw, 128, false, &c->sliding_window)) < 0)
        return rc;
    /* layer_types absent: even layers slide (transformers' default) */
    for (int32_t l = 0; l < c->n_layers && l < MOE_MAX_LAYERS; l++)
        c->layer_swa[l] = (l + 1) % 2 != 0;
    if ((rc = moe_hf_layer_types(h, c)) < 0)
        return rc;
    return finish_common(h, c, 0);
}

static int hf_minimax(struct moe_hf_cfg *h, struct moe_config *c)
{
    json_t *types = moe_hf_take(h, "attn_type_list"); /* 1 = full softmax attention */
    size_t i;
    json_t *v;
    json_array_foreach(types, i, v) if (!json_is_integer(v) || json_integer_value(v) != 1)
        return moe_err(-ENOTSUP, "%s: config key 'attn_type_list'[%zu] is not 1: only full "
                       "attention layers are supported", h->file, i);
    return finish_common(h, c, 0);
}

static int hf_ernie(struct moe_hf_cfg *h, struct moe_config *c)
{
    int rc;
    int32_t start = 1, end = -1, every = 1;
    const char *s[] = {"moe_layer_start_index", NULL}, *e[] = {"moe_layer_end_index", NULL};
    const char *iv[] = {"moe_layer_interval", NULL}, *ub[] = {"use_bias", NULL};
    bool bias = false;
    /* moe_layer_end_index absent is -1, the last layer (transformers'
     * Ernie4_5_MoeConfig default and __post_init__, 4.57 and 5.25 alike):
     * ERNIE-4.5-300B's 54 layers are MoE to the end, not to layer 27 */
    if ((rc = moe_hf_int(h, s, 1, false, &start)) < 0 ||
        (rc = moe_hf_int(h, e, -1, false, &end)) < 0 ||
        (rc = moe_hf_int(h, iv, 1, false, &every)) < 0 ||
        (rc = shared_experts(h, c, "moe_num_shared_experts", 2)) < 0 ||
        (rc = moe_hf_bool(h, ub, false, &bias)) < 0)
        return rc;
    if (end == -1) /* n_layers is not validated yet: it may be INT32_MIN */
        end = c->n_layers > 0 ? c->n_layers - 1 : 0;
    if (every <= 0)
        return moe_err(-EINVAL, "%s: moe_layer_interval must be positive", h->file);
    for (int32_t l = 0; l < c->n_layers && l < MOE_MAX_LAYERS; l++)
        c->layer_dense[l] = !((l + 1) % every == 0 && l >= start && l <= end);
    c->qkv_bias = c->o_bias = c->mlp_bias = bias;
    return finish_common(h, c, 0);
}

static int hf_dots1(struct moe_hf_cfg *h, struct moe_config *c)
{
    int rc;
    const char *sw[] = {"sliding_window", NULL}, *mw[] = {"max_window_layers", NULL};
    int32_t max_window = 62;
    json_t *swv = json_object_get(h->root, "sliding_window");
    if ((rc = shared_experts(h, c, "n_shared_experts", 0)) < 0 ||
        (rc = first_k_dense(h, c, 0)) < 0 || (rc = groups(h, c, 1, 1)) < 0 ||
        (rc = attention_bias(h, c, "attention_bias", false, true)) < 0 ||
        (rc = moe_hf_int(h, sw, swv ? 0 : 4096, false, &c->sliding_window)) < 0 ||
        (rc = moe_hf_int(h, mw, 62, false, &max_window)) < 0)
        return rc;
    /* layer_types absent: layers from max_window_layers on slide when a window is set */
    for (int32_t l = 0; l < c->n_layers && l < MOE_MAX_LAYERS; l++)
        c->layer_swa[l] = c->sliding_window > 0 && l >= max_window;
    if ((rc = moe_hf_layer_types(h, c)) < 0)
        return rc;
    return finish_common(h, c, 0);
}

/* ---- the rows --------------------------------------------------------------------- */

static const struct moe_key_row keys_mixtral[] = {
    COMMON(131072, 1e-5, false),
    INT(head_dim, -1, "attention.key_length", "head_dim"),
    INT(n_experts, 8, "expert_count", "num_local_experts", "num_experts"),
    INT(top_k, 2, "expert_used_count", "num_experts_per_tok"),
    INT(expert_ffn, 14336, "feed_forward_length", "intermediate_size"),
};

static const struct moe_key_row keys_qwen2[] = {
    COMMON(32768, 1e-6, false),
    INT(n_experts, 60, "expert_count", "num_experts", "num_local_experts"),
    INT(top_k, 4, "expert_used_count", "num_experts_per_tok"),
    INT(expert_ffn, 1408, "expert_feed_forward_length", "moe_intermediate_size"),
    INT(shared_ffn, 5632, "expert_shared_feed_forward_length", "shared_expert_intermediate_size"),
    INT(dense_ffn, 5632, "feed_forward_length", "intermediate_size"),
    BOOL(norm_topk_prob, false, "expert_weights_norm", "norm_topk_prob"),
    BOOL(qkv_bias, true, NULL, "qkv_bias"),
};

static const struct moe_key_row keys_qwen3[] = {
    COMMON(32768, 1e-6, false),
    INT(head_dim, -1, "attention.key_length", "head_dim"),
    INT(n_experts, 128, "expert_count", "num_local_experts", "num_experts"),
    INT(top_k, 8, "expert_used_count", "num_experts_per_tok"),
    INT(expert_ffn, 768, "expert_feed_forward_length", "moe_intermediate_size"),
    INT(dense_ffn, 6144, "feed_forward_length", "intermediate_size"),
    BOOL(norm_topk_prob, false, "expert_weights_norm", "norm_topk_prob"),
};

#define LINEAR_KEYS                                                                            \
    INT(lin_conv, 4, "ssm.conv_kernel", "linear_conv_kernel_dim"),                             \
        INT(lin_k_dim, 128, "ssm.state_size", "linear_key_head_dim"),                          \
        INT(lin_v_dim, 128, NULL, "linear_value_head_dim"),                                    \
        INT(lin_k_heads, 16, "ssm.group_count", "linear_num_key_heads"),                       \
        INT(lin_v_heads, 32, "ssm.time_step_rank", "linear_num_value_heads")

static const struct moe_key_row keys_qwen3_next[] = {
    COMMON(32768, 1e-6, false),
    INT(head_dim, 256, "attention.key_length", "head_dim"),
    INT(n_experts, 512, "expert_count", "num_experts"),
    INT(top_k, 10, "expert_used_count", "num_experts_per_tok"),
    INT(expert_ffn, 512, "expert_feed_forward_length", "moe_intermediate_size"),
    INT(shared_ffn, 512, "expert_shared_feed_forward_length", "shared_expert_intermediate_size"),
    INT(dense_ffn, 5632, "feed_forward_length", "intermediate_size"),
    BOOL(norm_topk_prob, true, "expert_weights_norm", "norm_topk_prob"),
    LINEAR_KEYS,
};

/* Qwen3.5-MoE's text config: no dense layers (no intermediate_size), 256 experts */
static const struct moe_key_row keys_qwen3_5[] = {
    COMMON(32768, 1e-6, false),
    INT(head_dim, 256, "attention.key_length", "head_dim"),
    INT(n_experts, 256, "expert_count", "num_experts"),
    INT(top_k, 8, "expert_used_count", "num_experts_per_tok"),
    INT(expert_ffn, 512, "expert_feed_forward_length", "moe_intermediate_size"),
    INT(shared_ffn, 512, "expert_shared_feed_forward_length", "shared_expert_intermediate_size"),
    BOOL(norm_topk_prob, true, "expert_weights_norm", "norm_topk_prob"),
    LINEAR_KEYS,
};

static const struct moe_key_row keys_olmoe[] = {
    COMMON(4096, 1e-5, false),
    INT(n_experts, 64, "expert_count", "num_experts", "num_local_experts"),
    INT(top_k, 8, "expert_used_count", "num_experts_per_tok"),
    INT(expert_ffn, 2048, "feed_forward_length", "intermediate_size"),
    BOOL(norm_topk_prob, false, "expert_weights_norm", "norm_topk_prob"),
    FLT(clip_qkv, 0, "attention.clamp_kqv", "clip_qkv"),
};

static const struct moe_key_row keys_deepseek2[] = {
    COMMON(2048, 1e-6, false),
    INT(n_experts, 64, "expert_count", "n_routed_experts", "num_experts"),
    REQ(top_k, "expert_used_count", "num_experts_per_tok"),
    INT(expert_ffn, 1407, "expert_feed_forward_length", "moe_intermediate_size"),
    INT(dense_ffn, 11008, "feed_forward_length", "intermediate_size"),
    FLT(routed_scale, 1.0, "expert_weights_scale", "routed_scaling_factor"),
    BOOL(mlp_bias, false, NULL, "mlp_bias"),
};

static const struct moe_key_row keys_deepseek3[] = {
    COMMON(4096, 1e-6, false),
    INT(n_experts, 256, "expert_count", "n_routed_experts", "num_local_experts"),
    INT(top_k, 8, "expert_used_count", "num_experts_per_tok"),
    INT(expert_ffn, 2048, "expert_feed_forward_length", "moe_intermediate_size"),
    INT(dense_ffn, 18432, "feed_forward_length", "intermediate_size"),
    FLT(routed_scale, 2.5, "expert_weights_scale", "routed_scaling_factor"),
    BOOL(norm_topk_prob, true, "expert_weights_norm", "norm_topk_prob"),
};

static const struct moe_key_row keys_glm4[] = {
    COMMON(131072, 1e-5, false),
    INT(head_dim, -1, "attention.key_length", "head_dim"),
    INT(n_experts, 128, "expert_count", "n_routed_experts", "num_local_experts"),
    INT(top_k, 8, "expert_used_count", "num_experts_per_tok"),
    INT(expert_ffn, 1408, "expert_feed_forward_length", "moe_intermediate_size"),
    INT(dense_ffn, 10944, "feed_forward_length", "intermediate_size"),
    FLT(routed_scale, 1.0, "expert_weights_scale", "routed_scaling_factor"),
    BOOL(norm_topk_prob, true, "expert_weights_norm", "norm_topk_prob"),
};

static const struct moe_key_row keys_gpt_oss[] = {
    COMMON(131072, 1e-5, false),
    INT(head_dim, 64, "attention.key_length", "head_dim"),
    INT(n_experts, 128, "expert_count", "num_local_experts", "num_experts"),
    INT(top_k, 4, "expert_used_count", "num_experts_per_tok", "experts_per_token"),
    INT(expert_ffn, 2880, "expert_feed_forward_length", "intermediate_size"),
    FLT(swiglu_limit, 7.0, NULL, "swiglu_limit"),
    FLT(swiglu_alpha, 1.702, NULL, "swiglu_alpha"),
};

static const struct moe_key_row keys_minimax[] = {
    COMMON(196608, 1e-6, false),
    INT(head_dim, 128, "attention.key_length", "head_dim"),
    INT(n_experts, 256, "expert_count", "num_local_experts", "num_experts"),
    INT(top_k, 8, "expert_used_count", "num_experts_per_tok"),
    INT(expert_ffn, 1536, "expert_feed_forward_length", "intermediate_size"),
};

static const struct moe_key_row keys_ernie[] = {
    COMMON(131072, 1e-5, true),
    INT(head_dim, -1, "attention.key_length", "head_dim"),
    INT(n_experts, 64, "expert_count", "moe_num_experts", "num_experts"),
    INT(top_k, 6, "expert_used_count", "moe_k", "num_experts_per_tok"),
    INT(expert_ffn, 1536, "expert_feed_forward_length", "moe_intermediate_size"),
    INT(dense_ffn, 12288, "feed_forward_length", "intermediate_size"),
    FLT(router_norm_min, 1e-12, NULL, "moe_norm_min"),
};

static const struct moe_key_row keys_dots1[] = {
    COMMON(2048, 1e-6, false),
    INT(head_dim, -1, "attention.key_length", "head_dim"),
    REQ(n_experts, "expert_count", "n_routed_experts", "num_local_experts"),
    REQ(top_k, "expert_used_count", "num_experts_per_tok"),
    INT(expert_ffn, 1408, "expert_feed_forward_length", "moe_intermediate_size"),
    INT(dense_ffn, 10944, "feed_forward_length", "intermediate_size"),
    FLT(routed_scale, 1.0, "expert_weights_scale", "routed_scaling_factor"),
    BOOL(norm_topk_prob, false, "expert_weights_norm", "norm_topk_prob"),
};

static const char *const checks_minimax[] = {
    "use_qk_norm=true", "qk_norm_type=per_layer", "scoring_func=sigmoid",
    "use_routing_bias=true", "shared_intermediate_size=0", NULL};
static const char *const ignore_minimax[] = {"mtp_transformer_layers", "num_mtp_modules",
                                             "use_mtp", NULL};
static const char *const checks_ernie[] = {"use_rmsnorm=true", "moe_gate=topk",
                                           "moe_use_aux_free=true", "compression_ratio=1", NULL};
static const char *const ignore_ernie[] = {"moe_capacity", "multi_token_pred_lambda",
                                           "weight_share_add_bias", NULL};
static const char *const ignore_deepseek[] = {"moe_layer_freq", NULL};
/* the routers these configs name are the ones moed computes for them */
/* zai-org's own converter also writes these into GLM configs: every layer
 * from first_k_dense_replace on is MoE, the router in fp32, as transformers
 * computes them */
static const char *const checks_glm4[] = {"topk_method=noaux_tc", "scoring_func=sigmoid",
                                          "decoder_sparse_step=1", "moe_router_dtype=float32",
                                          NULL};
static const char *const checks_dots1[] = {"topk_method=noaux_tc", "scoring_func=sigmoid",
                                           "use_sliding_window=false", NULL};
/* Qwen3.5's published text config: the output gate it always has, the
 * multi-token-prediction head (not used for the logits) and the state's
 * dtype in its own kernels (moed keeps [kv] state_bits). Qwen3-Next's
 * published config says use_sliding_window, which transformers never reads
 * (its attention deletes the window: a plain causal mask whatever it says). */
static const char *const checks_qwen3_next[] = {"attn_output_gate=true", NULL};
static const char *const ignore_qwen3_next[] = {"mtp_num_hidden_layers",
                                                "mtp_use_dedicated_embeddings",
                                                "mamba_ssm_dtype", "use_sliding_window", NULL};
/* OpenAI's own name of the original context, beside rope_scaling's */
static const char *const ignore_gpt_oss[] = {"initial_context_length", NULL};

#define KEYS(k) k, MOE_ARRAY_SIZE(k)
#define EXPERTS_W123 .hf_expert = {"w1", "w3", "w2"}
#define EXPERTS_PROJ .hf_expert = {"gate_proj", "up_proj", "down_proj"}

static const struct moe_arch_row rows[MOE_ARCH_COUNT] = {
    [MOE_ARCH_MIXTRAL] = {
        MOE_ARCH_MIXTRAL, "mixtral", {"MixtralForCausalLM"}, {"mixtral"}, "llama",
        KEYS(keys_mixtral), NULL, NULL, recipe_mixtral, hf_mixtral,
        .hf_moe = "block_sparse_moe", EXPERTS_W123},
    [MOE_ARCH_QWEN2_MOE] = {
        MOE_ARCH_QWEN2_MOE, "qwen2_moe", {"Qwen2MoeForCausalLM"}, {"qwen2_moe"}, "qwen2moe",
        KEYS(keys_qwen2), NULL, NULL, recipe_qwen2, hf_qwen2,
        .hf_moe = "mlp", EXPERTS_PROJ, .hf_shared = "shared_expert"},
    [MOE_ARCH_QWEN3_MOE] = {
        MOE_ARCH_QWEN3_MOE, "qwen3_moe", {"Qwen3MoeForCausalLM"}, {"qwen3_moe"}, "qwen3moe",
        KEYS(keys_qwen3), NULL, NULL, recipe_qwen3, hf_qwen3,
        .hf_moe = "mlp", EXPERTS_PROJ},
    [MOE_ARCH_OLMOE] = {
        MOE_ARCH_OLMOE, "olmoe", {"OlmoeForCausalLM"}, {"olmoe"}, "olmoe",
        KEYS(keys_olmoe), NULL, NULL, recipe_olmoe, hf_olmoe,
        .hf_moe = "mlp", EXPERTS_PROJ},
    [MOE_ARCH_DEEPSEEK2] = {
        MOE_ARCH_DEEPSEEK2, "deepseek2", {"DeepseekV2ForCausalLM"}, {"deepseek_v2"}, "deepseek2",
        KEYS(keys_deepseek2), NULL, ignore_deepseek, recipe_deepseek2, hf_deepseek2,
        .hf_moe = "mlp", EXPERTS_PROJ, .hf_shared = "shared_experts"},
    [MOE_ARCH_DEEPSEEK3] = {
        MOE_ARCH_DEEPSEEK3, "deepseek3", {"DeepseekV3ForCausalLM"}, {"deepseek_v3", "kimi_k2"},
        "deepseek2", KEYS(keys_deepseek3), NULL, ignore_deepseek, recipe_sigmoid, hf_deepseek3,
        .hf_moe = "mlp", EXPERTS_PROJ, .hf_shared = "shared_experts"},
    [MOE_ARCH_GLM4_MOE] = {
        MOE_ARCH_GLM4_MOE, "glm4_moe", {"Glm4MoeForCausalLM"}, {"glm4_moe"}, "glm4moe",
        KEYS(keys_glm4), checks_glm4, NULL, recipe_sigmoid, hf_glm4, .rope_partial = 0.5f,
        .hf_moe = "mlp", EXPERTS_PROJ, .hf_shared = "shared_experts"},
    [MOE_ARCH_GPT_OSS] = {
        MOE_ARCH_GPT_OSS, "gpt_oss", {"GptOssForCausalLM"}, {"gpt_oss"}, "gpt-oss",
        KEYS(keys_gpt_oss), NULL, ignore_gpt_oss, recipe_gpt_oss, hf_gpt_oss,
        .rope_default = "{\"rope_type\": \"yarn\", \"factor\": 32.0, \"beta_fast\": 32.0, "
                        "\"beta_slow\": 1.0, \"truncate\": false, "
                        "\"original_max_position_embeddings\": 4096}",
        .hf_moe = "mlp", .hf_expert = {"gate_up_proj", "gate_up_proj", "down_proj"}},
    [MOE_ARCH_MINIMAX_M2] = {
        MOE_ARCH_MINIMAX_M2, "minimax_m2", {"MiniMaxM2ForCausalLM"}, {"minimax_m2"},
        "minimax-m2", KEYS(keys_minimax), checks_minimax, ignore_minimax, recipe_minimax,
        hf_minimax, .hf_moe = "block_sparse_moe", EXPERTS_W123},
    [MOE_ARCH_ERNIE4_5] = {
        MOE_ARCH_ERNIE4_5, "ernie4_5_moe", {"Ernie4_5_MoeForCausalLM"}, {"ernie4_5_moe"},
        "ernie4_5-moe", KEYS(keys_ernie), checks_ernie, ignore_ernie, recipe_ernie, hf_ernie,
        .hf_moe = "mlp", EXPERTS_PROJ, .hf_shared = "shared_experts"},
    [MOE_ARCH_DOTS1] = {
        MOE_ARCH_DOTS1, "dots1", {"Dots1ForCausalLM"}, {"dots1"}, "dots1",
        KEYS(keys_dots1), checks_dots1, NULL, recipe_dots1, hf_dots1,
        .hf_moe = "mlp", EXPERTS_PROJ, .hf_shared = "shared_experts"},
    [MOE_ARCH_QWEN3_NEXT] = {
        MOE_ARCH_QWEN3_NEXT, "qwen3_next", {"Qwen3NextForCausalLM"}, {"qwen3_next"},
        "qwen3next", KEYS(keys_qwen3_next), checks_qwen3_next,
        ignore_qwen3_next, recipe_qwen3_next, hf_qwen3_next,
        .rope_partial = 0.25f, .hf_moe = "mlp", EXPERTS_PROJ, .hf_shared = "shared_expert"},
    [MOE_ARCH_QWEN3_5_MOE] = {
        MOE_ARCH_QWEN3_5_MOE, "qwen3_5_moe", {"Qwen3_5MoeForCausalLM"}, {"qwen3_5_moe_text"},
        "qwen35moe", KEYS(keys_qwen3_5), checks_qwen3_next,
        ignore_qwen3_next, recipe_qwen3_next, hf_qwen3_next,
        .rope_partial = 0.25f, .hf_moe = "mlp", EXPERTS_PROJ, .hf_shared = "shared_expert"},
};

const struct moe_arch_row *moe_arch_row(enum moe_arch arch)
{
    return (unsigned)arch < MOE_ARCH_COUNT ? &rows[arch] : NULL;
}

const struct moe_arch_row *moe_arch_by_hf(const char *cls, const char *mt)
{
    for (size_t i = 0; i < MOE_ARRAY_SIZE(rows); i++)
        for (int j = 0; j < 3; j++) {
            if (cls && rows[i].hf_class[j] && !strcmp(cls, rows[i].hf_class[j]))
                return &rows[i];
            if (!cls && mt && rows[i].model_type[j] && !strcmp(mt, rows[i].model_type[j]))
                return &rows[i];
        }
    return NULL;
}

const struct moe_arch_row *moe_arch_by_gguf(const char *name)
{
    for (size_t i = 0; i < MOE_ARRAY_SIZE(rows); i++)
        if (rows[i].gguf && !strcmp(name, rows[i].gguf))
            return &rows[i];
    return NULL;
}

static const char *list(bool gguf)
{
    static char buf[2][512];
    char *b = buf[gguf];
    if (!b[0]) {
        size_t n = 0;
        for (size_t i = 0; i < MOE_ARRAY_SIZE(rows); i++) {
            const char *s = gguf ? rows[i].gguf : rows[i].hf_class[0];
            if (gguf && strstr(b, s)) /* deepseek2 serves two rows */
                continue;
            n += (size_t)snprintf(b + n, sizeof(buf[0]) - n, "%s%s", n ? ", " : "", s);
        }
    }
    return b;
}

const char *moe_arch_hf_list(void)
{
    return list(false);
}

const char *moe_arch_gguf_list(void)
{
    return list(true);
}

/* ---- claimed keys ------------------------------------------------------------------ */

int moe_claims_init(struct moe_claims *c, size_t cap)
{
    c->n = 0;
    c->keys = calloc(cap + 1, sizeof(char *));
    c->claimed = calloc(cap + 1, sizeof(bool));
    return c->keys && c->claimed ? 0 : moe_err(-ENOMEM, "out of memory");
}

void moe_claims_add(struct moe_claims *c, const char *key)
{
    c->keys[c->n++] = key;
}

bool moe_claims_mark(struct moe_claims *c, const char *key)
{
    for (size_t i = 0; i < c->n; i++)
        if (!strcmp(c->keys[i], key)) {
            c->claimed[i] = true;
            return true;
        }
    return false;
}

const char *moe_claims_unclaimed(const struct moe_claims *c)
{
    for (size_t i = 0; i < c->n; i++)
        if (!c->claimed[i])
            return c->keys[i];
    return NULL;
}

void moe_claims_free(struct moe_claims *c)
{
    free(c->keys);
    free(c->claimed);
    memset(c, 0, sizeof(*c));
}

/* ---- rotary embedding -------------------------------------------------------------- */

double moe_yarn_mscale(double scale, double m)
{
    return scale <= 1.0 ? 1.0 : 0.1 * m * log(scale) + 1.0;
}

/* the rope dict's keys moed knows; anything else inside it is an error */
static const char *const rope_keys[] = {
    "rope_type", "type", "rope_theta", "partial_rotary_factor", "factor",
    "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
    "attention_factor", "truncate", "low_freq_factor", "high_freq_factor",
    /* Qwen3.5's multimodal rope: text positions are the same on its three
     * axes, which makes it the plain rope */
    "mrope_section", "mrope_interleaved"};

static int rope_num(struct moe_hf_cfg *h, json_t *o, const char *key, double def, double *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v))
        return moe_err(-EINVAL, "%s: rope parameter '%s' must be a number", h->file, key);
    *out = json_number_value(v);
    return 0;
}

/* o: the rope dict in force (rope_parameters, rope_scaling or the row's
 * default; NULL: none); rp: rope_parameters as given */
static int rope_params(struct moe_hf_cfg *h, struct moe_config *c, json_t *o, json_t *rp,
                       json_t *theta_top, json_t *prf_top, json_t *rotary_dim,
                       int32_t head_dim_for_rope)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        bool known = false;
        for (size_t i = 0; i < MOE_ARRAY_SIZE(rope_keys) && !known; i++)
            known = !strcmp(k, rope_keys[i]);
        if (!strncmp(k, "mrope_", 6) && c->arch != MOE_ARCH_QWEN3_5_MOE)
            known = false;
        if (!known)
            return moe_err(-ENOTSUP, "%s: rope parameter '%s' is not known to moed", h->file, k);
    }
    const char *type = o ? json_string_value(json_object_get(o, "rope_type")) : NULL;
    if (!type && o)
        type = json_string_value(json_object_get(o, "type"));
    if (!type)
        type = "default";
    /* the defaults: the recipe's theta, the row's partial factor */
    const struct moe_arch_row *row = moe_arch_row(c->arch);
    double theta = c->rope_theta > 0 ? c->rope_theta : 10000.0;
    double prf = row && row->rope_partial > 0 ? row->rope_partial : 1.0;
    int rc;
    if (theta_top && !json_is_number(theta_top))
        return moe_err(-EINVAL, "%s: rope_theta must be a number", h->file);
    if (theta_top)
        theta = json_number_value(theta_top);
    if (o && (rc = rope_num(h, o, "rope_theta", theta, &theta)) < 0)
        return rc;
    if (theta_top && rp && json_number_value(theta_top) != theta)
        return moe_err(-EINVAL, "%s: rope_theta and rope_parameters.rope_theta disagree", h->file);
    if (prf_top && !json_is_number(prf_top))
        return moe_err(-EINVAL, "%s: partial_rotary_factor must be a number", h->file);
    if (prf_top)
        prf = json_number_value(prf_top);
    else if (rotary_dim && json_is_integer(rotary_dim))
        prf = (double)json_integer_value(rotary_dim) / head_dim_for_rope;
    if (o && (rc = rope_num(h, o, "partial_rotary_factor", prf, &prf)) < 0)
        return rc;
    if (!(prf > 0 && prf <= 1)) /* also keeps the product below in int32's range */
        return moe_err(-EINVAL, "%s: partial rotary factor %g (partial_rotary_factor or "
                       "rotary_dim / head_dim) is outside (0, 1]", h->file, prf);
    c->rope_theta = (float)theta;
    c->rope_dim = (int32_t)(head_dim_for_rope * prf);
    c->rope_attn_factor = 1.0f;
    if (c->attn_scale == 0.0f)
        c->attn_scale = 1.0f / sqrtf((float)c->head_dim);
    if (!strcmp(type, "default")) {
        c->rope_scaling = MOE_ROPE_NONE;
    } else if (!strcmp(type, "linear")) {
        double f;
        if ((rc = rope_num(h, o, "factor", 1.0, &f)) < 0)
            return rc;
        c->rope_scaling = MOE_ROPE_LINEAR;
        c->rope_factor = (float)f;
    } else if (!strcmp(type, "yarn")) {
        double f, orig, bf, bs, m, mad, af;
        if ((rc = rope_num(h, o, "original_max_position_embeddings", c->max_ctx, &orig)) < 0 ||
            (rc = rope_num(h, o, "factor", NAN, &f)) < 0 ||
            (rc = rope_num(h, o, "beta_fast", 32, &bf)) < 0 ||
            (rc = rope_num(h, o, "beta_slow", 1, &bs)) < 0 ||
            (rc = rope_num(h, o, "mscale", 0, &m)) < 0 ||
            (rc = rope_num(h, o, "mscale_all_dim", 0, &mad)) < 0 ||
            (rc = rope_num(h, o, "attention_factor", NAN, &af)) < 0)
            return rc;
        if (isnan(f))
            f = (double)c->max_ctx / orig;
        if (isnan(af))
            af = m != 0 && mad != 0 ? moe_yarn_mscale(f, m) / moe_yarn_mscale(f, mad)
                                    : moe_yarn_mscale(f, 1);
        json_t *tr = json_object_get(o, "truncate");
        c->rope_scaling = MOE_ROPE_YARN;
        c->rope_factor = (float)f;
        c->rope_orig_ctx = (int32_t)orig;
        c->yarn_beta_fast = bf != 0 ? (float)bf : 32.0f; /* transformers: `or 32` */
        c->yarn_beta_slow = bs != 0 ? (float)bs : 1.0f;
        c->yarn_truncate = !json_is_false(tr);
        c->rope_attn_factor = (float)af;
        /* MLA also scales q.k by mscale(mscale_all_dim)^2 (yarn_apply_mscale) */
        if (c->attn == MOE_ATTN_MLA && mad != 0) {
            double ms = moe_yarn_mscale(f, mad);
            c->attn_scale = (float)(c->attn_scale * ms * ms);
        }
    } else {
        return moe_err(-ENOTSUP, "%s: rope type '%s' is not supported (moed implements default, "
                       "linear, yarn)", h->file, type);
    }
    return 0;
}

int moe_hf_rope(struct moe_hf_cfg *h, struct moe_config *c, int32_t head_dim_for_rope)
{
    /* transformers 5: rope_parameters holds everything; 4.x: rope_theta,
     * rope_scaling and partial_rotary_factor at the top (and MiniMax-M2's
     * own rotary_dim) */
    json_t *rp = moe_hf_take(h, "rope_parameters");
    json_t *rs = moe_hf_take(h, "rope_scaling");
    json_t *theta_top = moe_hf_take(h, "rope_theta");
    json_t *prf_top = moe_hf_take(h, "partial_rotary_factor");
    json_t *rotary_dim = moe_hf_take(h, "rotary_dim");
    if (rp && !json_is_object(rp))
        return moe_err(-EINVAL, "%s: rope_parameters is not an object", h->file);
    if (rs && !json_is_object(rs))
        return moe_err(-EINVAL, "%s: rope_scaling is not an object", h->file);
    if (rp) { /* per-layer-type parameters: all the same, or refused */
        const char *k;
        json_t *v, *first = NULL;
        bool nested = false;
        json_object_foreach(rp, k, v) if (json_is_object(v)) {
            nested = true;
            if (first && !json_equal(first, v))
                return moe_err(-ENOTSUP, "%s: rope_parameters differ between layer types: "
                               "not supported", h->file);
            first = v;
        }
        if (nested)
            rp = first;
    }
    json_t *o = rp ? rp : rs, *dflt = NULL;
    const struct moe_arch_row *row = moe_arch_row(c->arch);
    if (!o && row && row->rope_default) {
        dflt = json_loads(row->rope_default, 0, NULL); /* our own literal: only ENOMEM fails */
        if (!dflt)
            return moe_err(-ENOMEM, "out of memory");
        o = dflt;
    }
    int rc = rope_params(h, c, o, rp, theta_top, prf_top, rotary_dim, head_dim_for_rope);
    json_decref(dflt);
    return rc;
}

int moe_hf_layer_types(struct moe_hf_cfg *h, struct moe_config *c)
{
    json_t *lt = moe_hf_take(h, "layer_types");
    if (!lt)
        return 0;
    if (!json_is_array(lt) || (int32_t)json_array_size(lt) < c->n_layers)
        return moe_err(-EINVAL, "%s: layer_types must list every layer", h->file);
    for (int32_t l = 0; l < c->n_layers && l < MOE_MAX_LAYERS; l++) {
        const char *t = json_string_value(json_array_get(lt, (size_t)l));
        if (t && !strcmp(t, "full_attention"))
            c->layer_swa[l] = false;
        else if (t && !strcmp(t, "sliding_attention"))
            c->layer_swa[l] = true;
        else
            return moe_err(-ENOTSUP, "%s: config key 'layer_types'[%d] = '%s' is not supported "
                           "(moed implements full_attention, sliding_attention)", h->file, l,
                           t ? t : "?");
    }
    return 0;
}

void moe_rope_inv_freq(const struct moe_config *c, float *inv)
{
    int32_t dim = c->rope_dim, half = dim / 2;
    double base = c->rope_theta, f = c->rope_factor;
    for (int32_t i = 0; i < half; i++) {
        double pos_freq = pow(base, (2.0 * i) / dim);
        inv[i] = (float)(1.0 / pos_freq);
        if (c->rope_scaling == MOE_ROPE_LINEAR)
            inv[i] = (float)(1.0 / (f * pos_freq));
    }
    if (c->rope_scaling != MOE_ROPE_YARN)
        return;
    /* YaRN (transformers' _compute_yarn_parameters): dims that turn fewer
     * than beta_slow times over the original context are interpolated,
     * more than beta_fast extrapolated, a linear ramp between */
    double orig = c->rope_orig_ctx;
    double low = dim * log(orig / (c->yarn_beta_fast * 2 * M_PI)) / (2 * log(base));
    double high = dim * log(orig / (c->yarn_beta_slow * 2 * M_PI)) / (2 * log(base));
    if (c->yarn_truncate) {
        low = floor(low);
        high = ceil(high);
    }
    low = fmax(low, 0);
    high = fmin(high, dim - 1);
    if (low == high)
        high += 0.001;
    for (int32_t i = 0; i < half; i++) {
        double pos_freq = pow(base, (2.0 * i) / dim);
        double ramp = fmin(fmax(((double)i - low) / (high - low), 0.0), 1.0);
        double extra_w = 1.0 - ramp;
        inv[i] = (float)(1.0 / (f * pos_freq) * (1.0 - extra_w) + 1.0 / pos_freq * extra_w);
    }
}
