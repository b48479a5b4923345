/* struct moe_config <-> JSON (the pack's "config" object). Every field is
 * written; reading wants every key and no other, so a pack written by a
 * different moed is refused with the key at fault rather than half read. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/common.h"
#include "model/model_int.h"

enum field_type { F_I32, F_F32, F_BOOL };

static const struct field {
    const char *key;
    enum field_type type;
    size_t off;
} fields[] = {
#define I(k, f) {k, F_I32, offsetof(struct moe_config, f)}
#define R(k, f) {k, F_F32, offsetof(struct moe_config, f)}
#define B(k, f) {k, F_BOOL, offsetof(struct moe_config, f)}
    I("vocab", vocab),           I("hidden", hidden),         I("n_layers", n_layers),
    I("n_heads", n_heads),       I("n_kv_heads", n_kv_heads), I("head_dim", head_dim),
    I("n_experts", n_experts),   I("top_k", top_k),           I("expert_ffn", expert_ffn),
    I("shared_ffn", shared_ffn), I("dense_ffn", dense_ffn),   I("max_ctx", max_ctx),
    R("rms_eps", rms_eps),       R("rope_theta", rope_theta), R("clip_qkv", clip_qkv),
    B("norm_topk_prob", norm_topk_prob), B("qkv_bias", qkv_bias),
    B("tied_embeddings", tied_embeddings), B("rope_interleaved", rope_interleaved),
    I("bos_id", bos_id),         I("eos_id", eos_id),
#undef I
#undef R
#undef B
};

static const char *const qk_norm_names[] = {
    [MOE_QK_NORM_NONE] = "none", [MOE_QK_NORM_HEAD] = "head", [MOE_QK_NORM_FULL] = "full"};
static const enum moe_arch archs[] = {MOE_ARCH_MIXTRAL, MOE_ARCH_QWEN2_MOE, MOE_ARCH_QWEN3_MOE,
                                      MOE_ARCH_OLMOE};

json_t *moe_config_to_json(const struct moe_config *c)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    int bad = json_object_set_new(o, "arch", json_string(moe_arch_name(c->arch)));
    for (size_t i = 0; i < MOE_ARRAY_SIZE(fields); i++) {
        const void *p = (const char *)c + fields[i].off;
        json_t *v = fields[i].type == F_I32   ? json_integer(*(const int32_t *)p)
                    : fields[i].type == F_F32 ? json_real(*(const float *)p)
                                              : json_boolean(*(const bool *)p);
        bad |= json_object_set_new(o, fields[i].key, v);
    }
    bad |= json_object_set_new(o, "qk_norm", json_string(qk_norm_names[c->qk_norm]));
    json_t *ld = json_array();
    for (int32_t l = 0; ld && l < c->n_layers && l < MOE_MAX_LAYERS; l++)
        bad |= json_array_append_new(ld, json_boolean(c->layer_dense[l]));
    bad |= json_object_set_new(o, "layer_dense", ld);
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
        bool known = !strcmp(key, "arch") || !strcmp(key, "qk_norm") ||
                     !strcmp(key, "layer_dense");
        for (size_t i = 0; !known && i < MOE_ARRAY_SIZE(fields); i++)
            known = !strcmp(key, fields[i].key);
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
    for (size_t i = 0; i < MOE_ARRAY_SIZE(archs); i++)
        if (json_is_string(v) && !strcmp(json_string_value(v), moe_arch_name(archs[i]))) {
            c->arch = archs[i];
            found = true;
        }
    if (!found)
        return moe_err(-EINVAL, "%s: config: key 'arch': not one of mixtral, qwen2_moe, "
                       "qwen3_moe, olmoe", file);

    for (size_t i = 0; i < MOE_ARRAY_SIZE(fields); i++) {
        const struct field *f = &fields[i];
        void *p = (char *)c + f->off;
        if ((rc = need(o, file, f->key, &v)) < 0)
            return rc;
        switch (f->type) {
        case F_I32:
            if (!json_is_integer(v) || json_integer_value(v) < INT32_MIN ||
                json_integer_value(v) > INT32_MAX)
                return moe_err(-EINVAL, "%s: config: key '%s': not a 32-bit integer", file,
                               f->key);
            *(int32_t *)p = (int32_t)json_integer_value(v);
            break;
        case F_F32:
            if (!json_is_number(v) || !isfinite(json_number_value(v)))
                return moe_err(-EINVAL, "%s: config: key '%s': not a finite number", file,
                               f->key);
            *(float *)p = (float)json_number_value(v);
            break;
        case F_BOOL:
            if (!json_is_boolean(v))
                return moe_err(-EINVAL, "%s: config: key '%s': not true or false", file, f->key);
            *(bool *)p = json_is_true(v);
            break;
        }
    }

    if ((rc = need(o, file, "qk_norm", &v)) < 0)
        return rc;
    found = false;
    for (size_t i = 0; i < MOE_ARRAY_SIZE(qk_norm_names); i++)
        if (json_is_string(v) && !strcmp(json_string_value(v), qk_norm_names[i])) {
            c->qk_norm = (enum moe_qk_norm)i;
            found = true;
        }
    if (!found)
        return moe_err(-EINVAL, "%s: config: key 'qk_norm': not one of none, head, full", file);

    if ((rc = need(o, file, "layer_dense", &v)) < 0)
        return rc;
    if (c->n_layers < 1 || c->n_layers > MOE_MAX_LAYERS)
        return moe_err(-EINVAL, "%s: config: key 'n_layers': %d outside 1..%d", file,
                       c->n_layers, MOE_MAX_LAYERS);
    if (!json_is_array(v) || json_array_size(v) != (size_t)c->n_layers)
        return moe_err(-EINVAL, "%s: config: key 'layer_dense': not an array of %d booleans",
                       file, c->n_layers);
    for (int32_t l = 0; l < c->n_layers; l++) {
        const json_t *b = json_array_get(v, (size_t)l);
        if (!json_is_boolean(b))
            return moe_err(-EINVAL, "%s: config: key 'layer_dense': [%d] is not true or false",
                           file, l);
        c->layer_dense[l] = json_is_true(b);
    }
    return moe_config_validate(c, file);
}
