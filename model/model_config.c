/* Architecture config from Hugging Face config.json. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "model/model_int.h"

const char *moe_arch_name(enum moe_arch arch)
{
    switch (arch) {
    case MOE_ARCH_MIXTRAL: return "mixtral";
    case MOE_ARCH_QWEN2_MOE: return "qwen2_moe";
    case MOE_ARCH_QWEN3_MOE: return "qwen3_moe";
    case MOE_ARCH_OLMOE: return "olmoe";
    }
    return "?";
}

struct arch_name {
    const char *hf_class, *model_type;
    enum moe_arch arch;
};

static const struct arch_name hf_archs[] = {
    {"MixtralForCausalLM", "mixtral", MOE_ARCH_MIXTRAL},
    {"Qwen2MoeForCausalLM", "qwen2_moe", MOE_ARCH_QWEN2_MOE},
    {"Qwen3MoeForCausalLM", "qwen3_moe", MOE_ARCH_QWEN3_MOE},
    {"OlmoeForCausalLM", "olmoe", MOE_ARCH_OLMOE},
};

/* Reads an integer field; absent -> def (or an error when def < 0 means
 * "required"). */
static int get_int(json_t *root, const char *file, const char *key, int64_t def, int32_t *out)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (def < 0)
            return moe_err(-EINVAL, "%s: missing required field '%s'", file, key);
        *out = (int32_t)def;
        return 0;
    }
    if (!json_is_integer(v))
        return moe_err(-EINVAL, "%s: field '%s' must be an integer", file, key);
    json_int_t x = json_integer_value(v);
    if (x < 0 || x > INT32_MAX)
        return moe_err(-EINVAL, "%s: field '%s' out of range: %lld", file, key, (long long)x);
    *out = (int32_t)x;
    return 0;
}

static int get_float(json_t *root, const char *file, const char *key, double def, float *out)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = (float)def;
        return 0;
    }
    if (!json_is_number(v))
        return moe_err(-EINVAL, "%s: field '%s' must be a number", file, key);
    *out = (float)json_number_value(v);
    return 0;
}

static int get_bool(json_t *root, const char *file, const char *key, bool def, bool *out)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return moe_err(-EINVAL, "%s: field '%s' must be true or false", file, key);
    *out = json_is_true(v);
    return 0;
}

static int pick_arch(json_t *root, const char *file, enum moe_arch *arch)
{
    json_t *archs = json_object_get(root, "architectures");
    const char *cls = NULL;
    if (json_is_array(archs) && json_array_size(archs) > 0)
        cls = json_string_value(json_array_get(archs, 0));
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    for (size_t i = 0; i < MOE_ARRAY_SIZE(hf_archs); i++)
        if ((cls && !strcmp(cls, hf_archs[i].hf_class)) ||
            (!cls && mt && !strcmp(mt, hf_archs[i].model_type))) {
            *arch = hf_archs[i].arch;
            return 0;
        }
    return moe_err(-ENOTSUP,
                   "%s: unsupported architecture '%s' (model_type '%s'); supported: "
                   "MixtralForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM, OlmoeForCausalLM",
                   file, cls ? cls : "?", mt ? mt : "?");
}

int moe_config_from_hf(const char *path, struct moe_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) {
        if (!strcmp(jerr.text, "unable to open") || strstr(jerr.text, "unable to open"))
            return moe_err(-ENOENT, "%s: cannot open: %s", path, jerr.text);
        return moe_err(-EINVAL, "%s:%d: invalid JSON: %s", path, jerr.line, jerr.text);
    }
    int rc = -EINVAL;
    if (!json_is_object(root)) {
        rc = moe_err(-EINVAL, "%s: not a JSON object", path);
        goto out;
    }
    if ((rc = pick_arch(root, path, &cfg->arch)) < 0)
        goto out;

    bool is_mixtral = cfg->arch == MOE_ARCH_MIXTRAL;
    const char *experts_key = is_mixtral ? "num_local_experts" : "num_experts";
    bool is_qwen = cfg->arch == MOE_ARCH_QWEN2_MOE || cfg->arch == MOE_ARCH_QWEN3_MOE;
    const char *ffn_key = is_qwen ? "moe_intermediate_size" : "intermediate_size";
    if ((rc = get_int(root, path, "vocab_size", -1, &cfg->vocab)) < 0 ||
        (rc = get_int(root, path, "hidden_size", -1, &cfg->hidden)) < 0 ||
        (rc = get_int(root, path, "num_hidden_layers", -1, &cfg->n_layers)) < 0 ||
        (rc = get_int(root, path, "num_attention_heads", -1, &cfg->n_heads)) < 0 ||
        (rc = get_int(root, path, "num_key_value_heads", cfg->n_heads, &cfg->n_kv_heads)) < 0 ||
        (rc = get_int(root, path, experts_key, -1, &cfg->n_experts)) < 0 ||
        (rc = get_int(root, path, "num_experts_per_tok", -1, &cfg->top_k)) < 0 ||
        (rc = get_int(root, path, ffn_key, -1, &cfg->expert_ffn)) < 0 ||
        (rc = get_int(root, path, "max_position_embeddings", 4096, &cfg->max_ctx)) < 0 ||
        (rc = get_float(root, path, "rms_norm_eps", 1e-6, &cfg->rms_eps)) < 0 ||
        (rc = get_float(root, path, "rope_theta", 10000.0, &cfg->rope_theta)) < 0 ||
        (rc = get_bool(root, path, "tie_word_embeddings", false, &cfg->tied_embeddings)) < 0)
        goto out;
    if (cfg->n_heads > 0 && (rc = get_int(root, path, "head_dim", cfg->hidden / cfg->n_heads,
                                          &cfg->head_dim)) < 0)
        goto out;

    /* architecture specifics, defaults as in transformers' config classes */
    switch (cfg->arch) {
    case MOE_ARCH_MIXTRAL:
        cfg->norm_topk_prob = true;
        break;
    case MOE_ARCH_QWEN2_MOE:
        cfg->qkv_bias = true;
        if ((rc = get_bool(root, path, "norm_topk_prob", false, &cfg->norm_topk_prob)) < 0 ||
            (rc = get_int(root, path, "shared_expert_intermediate_size", 0, &cfg->shared_ffn)) < 0)
            goto out;
        break;
    case MOE_ARCH_QWEN3_MOE:
        cfg->qk_norm = MOE_QK_NORM_HEAD;
        if ((rc = get_bool(root, path, "norm_topk_prob", false, &cfg->norm_topk_prob)) < 0 ||
            (rc = get_bool(root, path, "attention_bias", false, &cfg->qkv_bias)) < 0)
            goto out;
        break;
    case MOE_ARCH_OLMOE:
        cfg->qk_norm = MOE_QK_NORM_FULL;
        if ((rc = get_bool(root, path, "norm_topk_prob", false, &cfg->norm_topk_prob)) < 0 ||
            (rc = get_float(root, path, "clip_qkv", 0.0, &cfg->clip_qkv)) < 0)
            goto out;
        break;
    }

    /* Qwen-MoE can make some layers dense: mlp_only_layers and decoder_sparse_step */
    if (cfg->arch == MOE_ARCH_QWEN2_MOE || cfg->arch == MOE_ARCH_QWEN3_MOE) {
        int32_t step = 1;
        if ((rc = get_int(root, path, "decoder_sparse_step", 1, &step)) < 0 ||
            (rc = get_int(root, path, "intermediate_size", 0, &cfg->dense_ffn)) < 0)
            goto out;
        json_t *only = json_object_get(root, "mlp_only_layers");
        for (int32_t l = 0; l < cfg->n_layers && l < MOE_MAX_LAYERS; l++)
            cfg->layer_dense[l] = !(step > 0 && (l + 1) % step == 0);
        if (json_is_array(only)) {
            size_t i;
            json_t *v;
            json_array_foreach(only, i, v) {
                json_int_t l = json_integer_value(v);
                if (!json_is_integer(v) || l < 0 || l >= cfg->n_layers || l >= MOE_MAX_LAYERS) {
                    rc = moe_err(-EINVAL, "%s: mlp_only_layers[%zu] is not a layer index", path, i);
                    goto out;
                }
                cfg->layer_dense[l] = true;
            }
        }
    }

    json_t *scaling = json_object_get(root, "rope_scaling");
    if (scaling && !json_is_null(scaling)) {
        const char *type = json_string_value(json_object_get(scaling, "rope_type"));
        if (!type)
            type = json_string_value(json_object_get(scaling, "type"));
        if (!type || strcmp(type, "default")) {
            rc = moe_err(-ENOTSUP, "%s: rope_scaling '%s' is not supported", path,
                         type ? type : "?");
            goto out;
        }
    }

    cfg->bos_id = cfg->eos_id = -1;
    json_t *bos = json_object_get(root, "bos_token_id"), *eos = json_object_get(root, "eos_token_id");
    if (json_is_integer(bos))
        cfg->bos_id = (int32_t)json_integer_value(bos);
    if (json_is_integer(eos))
        cfg->eos_id = (int32_t)json_integer_value(eos);
    else if (json_is_array(eos) && json_is_integer(json_array_get(eos, 0)))
        cfg->eos_id = (int32_t)json_integer_value(json_array_get(eos, 0));

    rc = moe_config_validate(cfg, path);
out:
    json_decref(root);
    return rc;
}

int moe_config_validate(const struct moe_config *c, const char *file)
{
#define REQUIRE(cond, ...)                                     \
    do {                                                       \
        if (!(cond))                                           \
            return moe_err(-EINVAL, __VA_ARGS__);              \
    } while (0)
    REQUIRE(c->vocab > 0, "%s: vocab size must be positive", file);
    REQUIRE(c->hidden > 0, "%s: hidden size must be positive", file);
    REQUIRE(c->n_layers > 0 && c->n_layers <= MOE_MAX_LAYERS,
            "%s: layer count %d outside 1..%d", file, c->n_layers, MOE_MAX_LAYERS);
    REQUIRE(c->n_heads > 0 && c->n_kv_heads > 0 && c->n_heads % c->n_kv_heads == 0,
            "%s: %d attention heads is not a multiple of %d key/value heads", file,
            c->n_heads, c->n_kv_heads);
    REQUIRE(c->head_dim > 0 && c->head_dim % 2 == 0, "%s: head dimension %d must be even",
            file, c->head_dim);
    REQUIRE(c->n_experts > 0, "%s: expert count must be positive", file);
    REQUIRE(c->top_k > 0 && c->top_k <= c->n_experts && c->top_k <= MOE_ROUTER_MAX_K,
            "%s: experts per token %d outside 1..%d", file, c->top_k,
            MOE_MIN(c->n_experts, MOE_ROUTER_MAX_K));
    REQUIRE(c->expert_ffn > 0, "%s: expert intermediate size must be positive", file);
    REQUIRE(c->max_ctx > 0, "%s: context length must be positive", file);
    REQUIRE(c->rms_eps > 0 && isfinite(c->rms_eps), "%s: rms_norm_eps must be positive", file);
    REQUIRE(c->rope_theta > 0 && isfinite(c->rope_theta), "%s: rope_theta must be positive",
            file);
    for (int32_t l = 0; l < c->n_layers; l++)
        REQUIRE(!c->layer_dense[l] || c->dense_ffn > 0,
                "%s: layer %d is dense but intermediate_size is missing", file, l);
#undef REQUIRE
    return 0;
}
