/* struct moe_config <-> JSON (the pack's "config" object). Every field is
 * written; reading wants every key of the first pack version and no
 * unknown one, so a pack written by a different moed is refused with the
 * key at fault rather than half read. Keys added since (the architectures
 * of 2026) may be absent from older packs: they then take the values that
 * reproduce what those packs always computed. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/common.h"
#include "model/model_int.h"

enum field_type { F_I32, F_F32, F_BOOL, F_ENUM };

struct field {
    const char *key;
    enum field_type type;
    size_t off;
    bool added;                /* absent in older packs: optional */
    const char *const *names;  /* F_ENUM: the values' names, by number */
    int n_names;
};

static const char *const qk_norm_names[] = {"none", "head", "full"};
static const char *const attn_names[] = {"gqa", "mla"};
static const char *const router_names[] = {"softmax", "softmax_group", "sigmoid", "topk_softmax",
                                           "softmax_bias"};
static const char *const rope_names[] = {"none", "linear", "yarn"};
static const char *const act_names[] = {"silu", "swiglu_oai"};

static const struct field fields[] = {
#define I(k, f) {k, F_I32, offsetof(struct moe_config, f), false, NULL, 0}
#define R(k, f) {k, F_F32, offsetof(struct moe_config, f), false, NULL, 0}
#define B(k, f) {k, F_BOOL, offsetof(struct moe_config, f), false, NULL, 0}
#define I2(k, f) {k, F_I32, offsetof(struct moe_config, f), true, NULL, 0}
#define R2(k, f) {k, F_F32, offsetof(struct moe_config, f), true, NULL, 0}
#define B2(k, f) {k, F_BOOL, offsetof(struct moe_config, f), true, NULL, 0}
#define E2(k, f, n) {k, F_ENUM, offsetof(struct moe_config, f), true, n, MOE_ARRAY_SIZE(n)}
    I("vocab", vocab),           I("hidden", hidden),         I("n_layers", n_layers),
    I("n_heads", n_heads),       I("n_kv_heads", n_kv_heads), I("head_dim", head_dim),
    I("n_experts", n_experts),   I("top_k", top_k),           I("expert_ffn", expert_ffn),
    I("shared_ffn", shared_ffn), I("dense_ffn", dense_ffn),   I("max_ctx", max_ctx),
    R("rms_eps", rms_eps),       R("rope_theta", rope_theta), R("clip_qkv", clip_qkv),
    B("norm_topk_prob", norm_topk_prob), B("qkv_bias", qkv_bias),
    B("tied_embeddings", tied_embeddings), B("rope_interleaved", rope_interleaved),
    I("bos_id", bos_id),         I("eos_id", eos_id),
    {"qk_norm", F_ENUM, offsetof(struct moe_config, qk_norm), false, qk_norm_names, 3},
    /* added for the architectures of 2026 */
    I2("v_head_dim", v_head_dim), E2("attn", attn, attn_names),
    I2("q_lora_rank", q_lora_rank), I2("kv_lora_rank", kv_lora_rank),
    I2("qk_nope_dim", qk_nope_dim), I2("qk_rope_dim", qk_rope_dim), B2("o_bias", o_bias),
    B2("attn_sinks", attn_sinks), I2("sliding_window", sliding_window),
    R2("attn_scale", attn_scale), I2("rope_dim", rope_dim),
    E2("rope_scaling", rope_scaling, rope_names), R2("rope_factor", rope_factor),
    I2("rope_orig_ctx", rope_orig_ctx), R2("yarn_beta_fast", yarn_beta_fast),
    R2("yarn_beta_slow", yarn_beta_slow), R2("rope_attn_factor", rope_attn_factor),
    B2("yarn_truncate", yarn_truncate), E2("router", router, router_names),
    I2("n_group", n_group), I2("topk_group", topk_group), R2("routed_scale", routed_scale),
    R2("router_norm_min", router_norm_min), B2("router_bias", router_bias),
    B2("score_bias", score_bias), B2("shared_gate", shared_gate), E2("act", act, act_names),
    R2("swiglu_alpha", swiglu_alpha), R2("swiglu_limit", swiglu_limit),
    B2("expert_bias", expert_bias), B2("mlp_bias", mlp_bias),
    B2("attn_gate", attn_gate), I2("lin_k_heads", lin_k_heads), I2("lin_v_heads", lin_v_heads),
    I2("lin_k_dim", lin_k_dim), I2("lin_v_dim", lin_v_dim), I2("lin_conv", lin_conv),
    B2("lin_v_tiled", lin_v_tiled),
#undef I
#undef R
#undef B
#undef I2
#undef R2
#undef B2
#undef E2
};

/* the per-layer flags: written as arrays of n_layers booleans */
static const struct layer_flags {
    const char *key;
    size_t off;
    bool added;
} layer_flags[] = {
    {"layer_dense", offsetof(struct moe_config, layer_dense), false},
    {"layer_swa", offsetof(struct moe_config, layer_swa), true},
    {"layer_linear", offsetof(struct moe_config, layer_linear), true},
};

json_t *moe_config_to_json(const struct moe_config *c)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    int bad = json_object_set_new(o, "arch", json_string(moe_arch_name(c->arch)));
    for (size_t i = 0; i < MOE_ARRAY_SIZE(fields); i++) {
        const struct field *f = &fields[i];
        const void *p = (const char *)c + f->off;
        json_t *v;
        switch (f->type) {
        case F_I32: v = json_integer(*(const int32_t *)p); break;
        case F_F32: v = json_real(*(const float *)p); break;
        case F_BOOL: v = json_boolean(*(const bool *)p); break;
        case F_ENUM:
        default: {
            int e = *(const int *)p;
            v = json_string(e >= 0 && e < f->n_names ? f->names[e] : "?");
        }
        }
        bad |= json_object_set_new(o, f->key, v);
    }
    for (size_t k = 0; k < MOE_ARRAY_SIZE(layer_flags); k++) {
        const bool *flags = (const bool *)((const char *)c + layer_flags[k].off);
        json_t *a = json_array();
        for (int32_t l = 0; a && l < c->n_layers && l < MOE_MAX_LAYERS; l++)
            bad |= json_array_append_new(a, json_boolean(flags[l]));
        bad |= json_object_set_new(o, layer_flags[k].key, a);
    }
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int need(const json_t *o, const char *file, const char *key, const json_t **v)
{
    *v = json_object_get(o, key);
    if (!*v)
        return moe_err(-EINVAL, "%s: config: missing key '%s'", file, key);
    return 0;
}

static int read_field(const struct field *f, const json_t *v, const char *file, void *p)
{
    switch (f->type) {
    case F_I32:
        if (!json_is_integer(v) || json_integer_value(v) < INT32_MIN ||
            json_integer_value(v) > INT32_MAX)
            return moe_err(-EINVAL, "%s: config: key '%s': not a 32-bit integer", file, f->key);
        *(int32_t *)p = (int32_t)json_integer_value(v);
        return 0;
    case F_F32:
        if (!json_is_number(v) || !isfinite(json_number_value(v)))
            return moe_err(-EINVAL, "%s: config: key '%s': not a finite number", file, f->key);
        *(float *)p = (float)json_number_value(v);
        return 0;
    case F_BOOL:
        if (!json_is_boolean(v))
            return moe_err(-EINVAL, "%s: config: key '%s': not true or false", file, f->key);
        *(bool *)p = json_is_true(v);
        return 0;
    case F_ENUM:
        for (int i = 0; i < f->n_names; i++)
            if (json_is_string(v) && !strcmp(json_string_value(v), f->names[i])) {
                *(int *)p = i;
                return 0;
            }
        return moe_err(-EINVAL, "%s: config: key '%s': not a known value", file, f->key);
    }
    return -EINVAL;
}

/* what a pack of the first version always computed, for keys it lacks */
static void old_pack_defaults(struct moe_config *c, const json_t *o)
{
    if (!json_object_get(o, "v_head_dim"))
        c->v_head_dim = c->head_dim;
    if (!json_object_get(o, "rope_dim"))
        c->rope_dim = c->head_dim;
    if (!json_object_get(o, "attn_scale") && c->head_dim > 0)
        c->attn_scale = 1.0f / sqrtf((float)c->head_dim);
    if (!json_object_get(o, "rope_attn_factor"))
        c->rope_attn_factor = 1.0f;
    if (!json_object_get(o, "routed_scale"))
        c->routed_scale = 1.0f;
    if (!json_object_get(o, "shared_gate"))
        c->shared_gate = c->arch == MOE_ARCH_QWEN2_MOE;
}

int moe_config_from_json(const json_t *o, const char *file, struct moe_config *c)
{
    memset(c, 0, sizeof(*c));
    if (!json_is_object(o))
        return moe_err(-EINVAL, "%s: config is not a JSON object", file);
    const json_t *v;
    int rc;

    /* unknown keys first: a newer writer's field must not be silently lost */
    const char *key;
    json_t *jv;
    json_object_foreach((json_t *)o, key, jv) {
        bool known = !strcmp(key, "arch");
        for (size_t i = 0; !known && i < MOE_ARRAY_SIZE(fields); i++)
            known = !strcmp(key, fields[i].key);
        for (size_t i = 0; !known && i < MOE_ARRAY_SIZE(layer_flags); i++)
            known = !strcmp(key, layer_flags[i].key);
        if (!known) {
            char nm[64];
            size_t n = strlen(key) < 60 ? strlen(key) : 60;
            for (size_t i = 0; i < n; i++)
                nm[i] = (key[i] >= 0x20 && key[i] < 0x7f) ? key[i] : '?';
            nm[n] = '\0';
            return moe_err(-EINVAL, "%s: config: unknown key '%s'", file, nm);
        }
    }

    if ((rc = need(o, file, "arch", &v)) < 0)
        return rc;
    bool found = false;
    for (int a = 0; a < MOE_ARCH_COUNT; a++)
        if (json_is_string(v) && !strcmp(json_string_value(v), moe_arch_name(a))) {
            c->arch = (enum moe_arch)a;
            found = true;
        }
    if (!found)
        return moe_err(-EINVAL, "%s: config: key 'arch': not an architecture moed knows", file);

    for (size_t i = 0; i < MOE_ARRAY_SIZE(fields); i++) {
        const struct field *f = &fields[i];
        v = json_object_get(o, f->key);
        if (!v && f->added)
            continue;
        if ((rc = need(o, file, f->key, &v)) < 0 ||
            (rc = read_field(f, v, file, (char *)c + f->off)) < 0)
            return rc;
    }
    if (c->n_layers < 1 || c->n_layers > MOE_MAX_LAYERS)
        return moe_err(-EINVAL, "%s: config: key 'n_layers': %d outside 1..%d", file,
                       c->n_layers, MOE_MAX_LAYERS);
    for (size_t k = 0; k < MOE_ARRAY_SIZE(layer_flags); k++) {
        const struct layer_flags *lf = &layer_flags[k];
        bool *flags = (bool *)((char *)c + lf->off);
        v = json_object_get(o, lf->key);
        if (!v && lf->added)
            continue;
        if ((rc = need(o, file, lf->key, &v)) < 0)
            return rc;
        if (!json_is_array(v) || json_array_size(v) != (size_t)c->n_layers)
            return moe_err(-EINVAL, "%s: config: key '%s': not an array of %d booleans", file,
                           lf->key, c->n_layers);
        for (int32_t l = 0; l < c->n_layers; l++) {
            const json_t *b = json_array_get(v, (size_t)l);
            if (!json_is_boolean(b))
                return moe_err(-EINVAL, "%s: config: key '%s': [%d] is not true or false", file,
                               lf->key, l);
            flags[l] = json_is_true(b);
        }
    }
    old_pack_defaults(c, o);
    return moe_config_validate(c, file);
}
