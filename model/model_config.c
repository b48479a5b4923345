/* Architecture config from Hugging Face config.json, as transformers 5
 * writes it or as 4.x and the checkpoints' own code wrote it. The
 * architecture's row (model_arch.c) says which keys exist, under which
 * spellings, with which defaults; every key of the file must be claimed by
 * a row, a check, a hook or the list of keys that do not change the math.
 * A key nobody claims fails the load naming it: nothing is ignored
 * silently. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "model/model_arch.h"
#include "model/model_int.h"

const char *moe_arch_name(enum moe_arch arch)
{
    const struct moe_arch_row *r = moe_arch_row(arch);
    return r ? r->name : "?";
}

/* Keys of every architecture's config that do not change the logits:
 * transformers' generic config attributes, generation defaults, training
 * options, the file's own bookkeeping. */
static const char *const ignored_everywhere[] = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype",
    "_name_or_path", "auto_map", "use_cache", "initializer_range", "output_router_logits",
    "router_aux_loss_coef", "aux_loss_alpha", "seq_aux", "attention_dropout",
    "router_jitter_noise", "pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id",
    "decoder_start_token_id", "output_attentions", "output_hidden_states", "return_dict",
    "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "add_cross_attention",
    "cross_attention_hidden_size", "tie_encoder_decoder", "problem_type", "id2label",
    "label2id", "num_labels", "finetuning_task", "tokenizer_class", "prefix",
    "task_specific_params", "pruned_heads", "torchscript", "use_bfloat16", "tf_legacy_loss",
    "bad_words_ids", "begin_suppress_tokens", "suppress_tokens", "diversity_penalty",
    "do_sample", "early_stopping", "encoder_no_repeat_ngram_size",
    "exponential_decay_length_penalty", "forced_bos_token_id", "forced_eos_token_id",
    "length_penalty", "max_length", "min_length", "no_repeat_ngram_size", "num_beam_groups",
    "num_beams", "num_return_sequences", "output_scores", "remove_invalid_values",
    "repetition_penalty", "return_dict_in_generate", "temperature", "top_k", "top_p",
    "typical_p", "pretraining_tp", "ep_size", "num_nextn_predict_layers", "num_mtp_layers",
    "use_flash_attention", "_attn_implementation", "_attn_implementation_autoset",
    "synthetic", /* make_moe_model.py's provenance record (generator, seed) */
};

/* ---- the reader ------------------------------------------------------------------ */

void moe_hf_claim(struct moe_hf_cfg *c, const char *key)
{
    moe_claims_mark(&c->claims, key);
}

json_t *moe_hf_take(struct moe_hf_cfg *c, const char *key)
{
    const char *dot = strchr(key, '.');
    json_t *v;
    if (dot) {
        char top[128];
        snprintf(top, sizeof(top), "%.*s", (int)(dot - key), key);
        moe_hf_claim(c, top);
        json_t *o = json_object_get(c->root, top);
        v = json_is_object(o) ? json_object_get(o, dot + 1) : NULL;
    } else {
        moe_hf_claim(c, key);
        v = json_object_get(c->root, key);
    }
    return v && !json_is_null(v) ? v : NULL;
}

/* the first present spelling; a second one present must say the same */
static int take_any(struct moe_hf_cfg *c, const char *const *names, json_t **out,
                    const char **which)
{
    *out = NULL;
    *which = names[0];
    for (int i = 0; i < 4 && names[i]; i++) {
        json_t *v = moe_hf_take(c, names[i]);
        if (!v)
            continue;
        if (*out && !json_equal(*out, v))
            return moe_err(-EINVAL, "%s: '%s' and '%s' disagree", c->file, *which, names[i]);
        if (!*out) {
            *out = v;
            *which = names[i];
        }
    }
    return 0;
}

int moe_hf_int(struct moe_hf_cfg *c, const char *const *names, int64_t def, bool required,
               int32_t *out)
{
    json_t *v;
    const char *key;
    int rc = take_any(c, names, &v, &key);
    if (rc < 0)
        return rc;
    if (!v) {
        if (required)
            return moe_err(-EINVAL, "%s: missing required field '%s'", c->file, key);
        *out = (int32_t)def;
        return 0;
    }
    if (!json_is_integer(v))
        return moe_err(-EINVAL, "%s: field '%s' must be an integer", c->file, key);
    json_int_t x = json_integer_value(v);
    if (x < INT32_MIN || x > INT32_MAX)
        return moe_err(-EINVAL, "%s: field '%s' out of range: %lld", c->file, key, (long long)x);
    *out = (int32_t)x;
    return 0;
}

int moe_hf_float(struct moe_hf_cfg *c, const char *const *names, double def, float *out)
{
    json_t *v;
    const char *key;
    int rc = take_any(c, names, &v, &key);
    if (rc < 0)
        return rc;
    if (!v) {
        *out = (float)def;
        return 0;
    }
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return moe_err(-EINVAL, "%s: field '%s' must be a number", c->file, key);
    *out = (float)json_number_value(v);
    return 0;
}

int moe_hf_bool(struct moe_hf_cfg *c, const char *const *names, bool def, bool *out)
{
    json_t *v;
    const char *key;
    int rc = take_any(c, names, &v, &key);
    if (rc < 0)
        return rc;
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return moe_err(-EINVAL, "%s: field '%s' must be true or false", c->file, key);
    *out = json_is_true(v);
    return 0;
}

/* v as text for messages and comparisons */
static void value_text(const json_t *v, char *buf, size_t cap)
{
    if (json_is_string(v))
        snprintf(buf, cap, "%s", json_string_value(v));
    else if (json_is_true(v) || json_is_false(v))
        snprintf(buf, cap, "%s", json_is_true(v) ? "true" : "false");
    else if (json_is_integer(v))
        snprintf(buf, cap, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        snprintf(buf, cap, "%g", json_real_value(v));
    else
        snprintf(buf, cap, "(%s)", json_is_array(v) ? "array" : "object");
}

int moe_hf_require(struct moe_hf_cfg *c, const char *key, const char *allowed)
{
    json_t *v = moe_hf_take(c, key);
    if (!v)
        return 0;
    char have[128];
    value_text(v, have, sizeof(have));
    for (const char *a = allowed; *a;) {
        const char *bar = strchr(a, '|');
        size_t n = bar ? (size_t)(bar - a) : strlen(a);
        if (strlen(have) == n && !strncmp(have, a, n))
            return 0;
        if (json_is_number(v)) { /* 1 and 1.0 are the same number */
            char *end;
            double want = strtod(a, &end);
            if (end == a + n && json_number_value(v) == want)
                return 0;
        }
        if (!bar)
            break;
        a = bar + 1;
    }
    return moe_err(-ENOTSUP, "%s: config key '%s' = %s is not supported (moed implements %s)",
                   c->file, key, have, allowed);
}

static int hf_open(const char *path, struct moe_hf_cfg *c, json_t **root)
{
    json_error_t jerr;
    memset(c, 0, sizeof(*c)); /* the caller frees the claims whatever happens */
    *root = json_load_file(path, 0, &jerr);
    if (!*root) {
        if (strstr(jerr.text, "unable to open"))
            return moe_err(-ENOENT, "%s: cannot open: %s", path, jerr.text);
        return moe_err(-EINVAL, "%s:%d: invalid JSON: %s", path, jerr.line, jerr.text);
    }
    if (!json_is_object(*root))
        return moe_err(-EINVAL, "%s: not a JSON object", path);
    c->root = *root;
    c->file = path;
    int rc = moe_claims_init(&c->claims, json_object_size(*root));
    if (rc < 0)
        return rc;
    const char *k;
    json_t *v;
    json_object_foreach(*root, k, v)
        moe_claims_add(&c->claims, k);
    return 0;
}

static const struct moe_arch_row *pick_arch(struct moe_hf_cfg *c)
{
    json_t *archs = json_object_get(c->root, "architectures");
    const char *cls = NULL;
    if (json_is_array(archs) && json_array_size(archs) > 0)
        cls = json_string_value(json_array_get(archs, 0));
    const char *mt = json_string_value(json_object_get(c->root, "model_type"));
    const struct moe_arch_row *r = moe_arch_by_hf(cls, mt);
    if (!r) {
        bool vision = json_is_object(json_object_get(c->root, "vision_config"));
        moe_err(-ENOTSUP, "%s: unsupported architecture '%s' (model_type '%s')%s; supported: %s",
                c->file, cls ? cls : "?", mt ? mt : "?",
                vision ? " (a vision-language model: only text models are served)" : "",
                moe_arch_hf_list());
    }
    return r;
}

static int read_keys(struct moe_hf_cfg *h, const struct moe_arch_row *r, struct moe_config *cfg)
{
    int rc;
    for (size_t i = 0; i < r->n_keys; i++) {
        const struct moe_key_row *k = &r->keys[i];
        void *p = (char *)cfg + k->off;
        switch (k->type) {
        case MOE_KEY_INT:
            rc = moe_hf_int(h, k->hf, (int64_t)k->def, k->required, (int32_t *)p);
            break;
        case MOE_KEY_FLOAT:
            rc = moe_hf_float(h, k->hf, k->def, (float *)p);
            break;
        case MOE_KEY_BOOL:
        default:
            rc = moe_hf_bool(h, k->hf, k->def != 0, (bool *)p);
            break;
        }
        if (rc < 0)
            return rc;
    }
    for (const char *const *ck = r->checks; ck && *ck; ck++) {
        const char *eq = strchr(*ck, '=');
        char key[96];
        snprintf(key, sizeof(key), "%.*s", (int)(eq - *ck), *ck);
        if ((rc = moe_hf_require(h, key, eq + 1)) < 0)
            return rc;
    }
    for (const char *const *ig = r->ignore; ig && *ig; ig++)
        moe_hf_claim(h, *ig);
    for (size_t i = 0; i < MOE_ARRAY_SIZE(ignored_everywhere); i++)
        moe_hf_claim(h, ignored_everywhere[i]);
    return 0;
}

static void token_ids(struct moe_hf_cfg *h, struct moe_config *cfg)
{
    cfg->bos_id = cfg->eos_id = -1;
    json_t *bos = json_object_get(h->root, "bos_token_id");
    json_t *eos = json_object_get(h->root, "eos_token_id");
    if (json_is_integer(bos))
        cfg->bos_id = (int32_t)json_integer_value(bos);
    if (json_is_integer(eos))
        cfg->eos_id = (int32_t)json_integer_value(eos);
    else if (json_is_array(eos) && json_is_integer(json_array_get(eos, 0)))
        cfg->eos_id = (int32_t)json_integer_value(json_array_get(eos, 0));
}

/* quantization_config: only what moed computes exactly (gpt-oss's MXFP4
 * experts); anything else (fp8 blocks, AWQ, GPTQ, bitsandbytes ...) would
 * be read as plain weights */
static int quantization(struct moe_hf_cfg *h, const struct moe_config *cfg)
{
    json_t *q = moe_hf_take(h, "quantization_config");
    if (!q)
        return 0;
    const char *m = json_string_value(json_object_get(q, "quant_method"));
    if (cfg->arch == MOE_ARCH_GPT_OSS && m && !strcmp(m, "mxfp4"))
        return 0;
    return moe_err(-ENOTSUP, "%s: config key 'quantization_config': quant_method '%s' is not "
                   "supported (moed reads bf16/f16/f32 checkpoints, gpt-oss's MXFP4 experts, "
                   "and GGUF; dequantise it or convert it to GGUF)", h->file, m ? m : "?");
}

/* A vision-language checkpoint whose text model moed serves (Qwen3.5's
 * published form): its text_config is read as the model's config, and the
 * vision tower is not loaded (images are refused as any text model
 * refuses them). The wrapper's own keys must be these. */
static const char *const vl_wrappers[] = {"Qwen3_5MoeForConditionalGeneration"};
static const char *const vl_keys[] = {
    "text_config", "vision_config", "image_token_id", "video_token_id", "vision_start_token_id",
    "vision_end_token_id", "tie_word_embeddings"};

static int unwrap_text_config(struct moe_hf_cfg *h)
{
    json_t *archs = json_object_get(h->root, "architectures");
    const char *cls = json_string_value(json_array_get(archs, 0));
    json_t *tc = json_object_get(h->root, "text_config");
    bool wrapper = false;
    for (size_t i = 0; cls && i < MOE_ARRAY_SIZE(vl_wrappers); i++)
        wrapper |= !strcmp(cls, vl_wrappers[i]);
    if (!wrapper)
        return 0;
    if (!json_is_object(tc))
        return moe_err(-EINVAL, "%s: %s without a text_config object", h->file, cls);
    const char *k;
    json_t *v;
    json_object_foreach(h->root, k, v) {
        bool known = false;
        for (size_t i = 0; i < MOE_ARRAY_SIZE(vl_keys) && !known; i++)
            known = !strcmp(k, vl_keys[i]);
        for (size_t i = 0; i < MOE_ARRAY_SIZE(ignored_everywhere) && !known; i++)
            known = !strcmp(k, ignored_everywhere[i]);
        if (!known)
            return moe_err(-ENOTSUP, "%s: config key '%s' is not known to moed for %s; it may "
                           "change the model's math, so the model is not loaded", h->file, k,
                           cls);
    }
    json_t *tied = json_object_get(h->root, "tie_word_embeddings");
    json_t *text = json_deep_copy(tc);
    if (!text)
        return moe_err(-ENOMEM, "out of memory");
    if (tied && !json_object_get(text, "tie_word_embeddings"))
        json_object_set(text, "tie_word_embeddings", tied);
    if (json_object_get(h->root, "eos_token_id") && !json_object_get(text, "eos_token_id"))
        json_object_set(text, "eos_token_id", json_object_get(h->root, "eos_token_id"));
    json_object_del(text, "architectures"); /* picked by the text model_type */
    moe_log(MOE_LOG_INFO, "%s: %s: serving its text model; the vision tower is not loaded",
            h->file, cls);
    moe_claims_free(&h->claims);
    int rc = moe_claims_init(&h->claims, json_object_size(text));
    if (rc < 0) {
        json_decref(text);
        return rc;
    }
    json_object_foreach(text, k, v)
        moe_claims_add(&h->claims, k);
    /* the wrapper holds the copy (freed with it); the keys are read from it */
    json_object_set_new(h->root, " moed text config", text);
    h->root = text;
    return 1;
}

int moe_config_from_hf(const char *path, struct moe_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    struct moe_hf_cfg h;
    json_t *root = NULL;
    int rc = hf_open(path, &h, &root);
    const struct moe_arch_row *r = NULL;
    if (rc == 0 && (rc = unwrap_text_config(&h)) > 0)
        rc = 0;
    if (rc < 0)
        goto out;
    if (!(r = pick_arch(&h))) {
        rc = -ENOTSUP;
        goto out;
    }
    cfg->arch = r->arch;
    r->recipe(cfg);
    if ((rc = moe_hf_require(&h, "hidden_act", "silu")) < 0 || (rc = read_keys(&h, r, cfg)) < 0 ||
        (rc = quantization(&h, cfg)) < 0 || (rc = r->hf_finish(&h, cfg)) < 0)
        goto out;
    token_ids(&h, cfg);
    const char *unknown = moe_claims_unclaimed(&h.claims);
    if (unknown) {
        rc = moe_err(-ENOTSUP, "%s: config key '%s' is not known to moed for %s; it may change "
                     "the model's math, so the model is not loaded", path, unknown, r->name);
        goto out;
    }
    rc = moe_config_validate(cfg, path);
out:
    moe_claims_free(&h.claims);
    json_decref(root);
    return rc;
}

/* ---- validation ------------------------------------------------------------------ */

int moe_config_validate(const struct moe_config *c, const char *file)
{
#define REQUIRE(cond, ...)                                     \
    do {                                                       \
        if (!(cond))                                           \
            return moe_err(-EINVAL, __VA_ARGS__);              \
    } while (0)
    REQUIRE(c->arch >= 0 && c->arch < MOE_ARCH_COUNT, "%s: unknown architecture", file);
    REQUIRE(c->vocab > 0, "%s: vocab size must be positive", file);
    REQUIRE(c->hidden > 0, "%s: hidden size must be positive", file);
    REQUIRE(c->n_layers > 0 && c->n_layers <= MOE_MAX_LAYERS,
            "%s: layer count %d outside 1..%d", file, c->n_layers, MOE_MAX_LAYERS);
    REQUIRE(c->n_heads > 0 && c->n_kv_heads > 0 && c->n_heads % c->n_kv_heads == 0,
            "%s: %d attention heads is not a multiple of %d key/value heads", file,
            c->n_heads, c->n_kv_heads);
    REQUIRE(c->head_dim > 0 && c->head_dim % 2 == 0, "%s: head dimension %d must be even",
            file, c->head_dim);
    REQUIRE(c->v_head_dim > 0, "%s: value head dimension must be positive", file);
    REQUIRE(c->n_experts > 0 && c->n_experts <= MOE_ROUTER_MAX_EXPERTS,
            "%s: expert count %d outside 1..%d", file, c->n_experts, MOE_ROUTER_MAX_EXPERTS);
    REQUIRE(c->top_k > 0 && c->top_k <= c->n_experts && c->top_k <= MOE_ROUTER_MAX_K,
            "%s: experts per token %d outside 1..%d", file, c->top_k,
            MOE_MIN(c->n_experts, MOE_ROUTER_MAX_K));
    REQUIRE(c->expert_ffn > 0, "%s: expert intermediate size must be positive", file);
    REQUIRE(c->max_ctx > 0, "%s: context length must be positive", file);
    REQUIRE(c->rms_eps > 0 && isfinite(c->rms_eps), "%s: rms_norm_eps must be positive", file);
    REQUIRE(c->rope_theta > 0 && isfinite(c->rope_theta), "%s: rope_theta must be positive",
            file);
    REQUIRE(c->rope_dim > 0 && c->rope_dim % 2 == 0 &&
                c->rope_dim <= (c->attn == MOE_ATTN_MLA ? c->qk_rope_dim : c->head_dim),
            "%s: rotary dimension %d must be even and at most the head's", file, c->rope_dim);
    REQUIRE(c->rope_scaling == MOE_ROPE_NONE || (c->rope_factor > 0 && isfinite(c->rope_factor)),
            "%s: rope scaling factor must be positive", file);
    REQUIRE(c->rope_scaling != MOE_ROPE_YARN || c->rope_orig_ctx > 0,
            "%s: YaRN needs original_max_position_embeddings", file);
    REQUIRE(c->attn_scale > 0 && isfinite(c->attn_scale), "%s: bad attention scale", file);
    if (c->n_group > 1) {
        REQUIRE(c->n_experts % c->n_group == 0 && c->n_group <= MOE_ROUTER_MAX_GROUPS,
                "%s: %d experts do not split into %d groups", file, c->n_experts, c->n_group);
        REQUIRE(c->topk_group >= 1 && c->topk_group <= c->n_group &&
                    c->topk_group * (c->n_experts / c->n_group) >= c->top_k,
                "%s: topk_group %d of %d groups cannot hold %d experts", file, c->topk_group,
                c->n_group, c->top_k);
    }
    if (c->attn == MOE_ATTN_MLA) {
        REQUIRE(c->kv_lora_rank > 0 && c->qk_rope_dim > 0 && c->qk_rope_dim % 2 == 0 &&
                    c->qk_nope_dim > 0 && c->v_head_dim > 0 && c->q_lora_rank >= 0,
                "%s: MLA dimensions (kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim, "
                "v_head_dim) must be positive", file);
        REQUIRE((int64_t)c->kv_lora_rank + c->qk_rope_dim <= 1024,
                "%s: MLA latent of %lld values is over moed's 1024", file,
                (long long)c->kv_lora_rank + c->qk_rope_dim);
    }
    bool any_swa = false;
    for (int32_t l = 0; l < c->n_layers; l++) {
        REQUIRE(!c->layer_dense[l] || c->dense_ffn > 0,
                "%s: layer %d is dense but intermediate_size is missing", file, l);
        any_swa |= c->layer_swa[l];
    }
    REQUIRE(!any_swa || c->sliding_window > 0, "%s: sliding layers need a positive sliding_window",
            file);
    bool any_linear = false;
    for (int32_t l = 0; l < c->n_layers; l++)
        any_linear |= c->layer_linear[l];
    if (any_linear) {
        REQUIRE(c->lin_k_heads > 0 && c->lin_v_heads > 0 && c->lin_v_heads % c->lin_k_heads == 0,
                "%s: linear attention: %d value heads is not a multiple of %d key heads", file,
                c->lin_v_heads, c->lin_k_heads);
        REQUIRE(c->lin_k_dim > 0 && c->lin_k_dim <= 1024 && c->lin_v_dim > 0 &&
                    c->lin_v_dim <= 1024,
                "%s: linear attention head sizes %d / %d outside 1..1024", file, c->lin_k_dim,
                c->lin_v_dim);
        REQUIRE(c->lin_conv >= 1 && c->lin_conv <= 16,
                "%s: linear_conv_kernel_dim %d outside 1..16", file, c->lin_conv);
        REQUIRE(c->attn == MOE_ATTN_GQA, "%s: linear layers beside MLA are not supported", file);
    }
#undef REQUIRE
    return 0;
}
