/* model: the architecture table. One row per architecture: its names in
 * Hugging Face and GGUF files, its config keys (both transformers
 * spellings, transformers' defaults), the layer recipe its blocks follow,
 * and hooks for the few rules a table cannot say. The tensors every
 * architecture may hold are rows of the table in model_tensors.c, each with
 * the condition (on the config) under which an architecture has it.
 * Private to model/. */
#ifndef MOE_MODEL_ARCH_H
#define MOE_MODEL_ARCH_H

#include <jansson.h>
#include <stddef.h>

#include "format/format.h"
#include "model/model.h"

/* ---- reading a config: every key is claimed by a row, a check or a hook ---- */

/* The keys a config holds, each to be claimed by what reads it: one left
 * unclaimed at the end is a key moed does not know, and fails the load. */
struct moe_claims {
    const char **keys; /* not owned: they live as long as the file's data */
    bool *claimed;
    size_t n;
};
int moe_claims_init(struct moe_claims *c, size_t cap); /* room for cap keys */
void moe_claims_add(struct moe_claims *c, const char *key);
bool moe_claims_mark(struct moe_claims *c, const char *key); /* false: not in the file */
const char *moe_claims_unclaimed(const struct moe_claims *c); /* the first, or NULL */
void moe_claims_free(struct moe_claims *c);

/* config.json being read: the root's keys to be claimed */
struct moe_hf_cfg {
    json_t *root;
    const char *file;
    struct moe_claims claims;
};

/* The value of key (NULL when absent or JSON null), which is then claimed.
 * A dotted key reads inside an object ("rope_parameters.rope_theta"); only
 * top-level keys are tracked. */
json_t *moe_hf_take(struct moe_hf_cfg *c, const char *key);
/* Marks key as read without reading it. */
void moe_hf_claim(struct moe_hf_cfg *c, const char *key);
/* Typed reads of the first present of names[] (NULL-terminated); absent:
 * def, or an error naming names[0] when required. Two spellings both
 * present must agree. */
int moe_hf_int(struct moe_hf_cfg *c, const char *const *names, int64_t def, bool required,
               int32_t *out);
int moe_hf_float(struct moe_hf_cfg *c, const char *const *names, double def, float *out);
int moe_hf_bool(struct moe_hf_cfg *c, const char *const *names, bool def, bool *out);
/* key absent, null, or equal to one of allowed ('|'-separated: strings,
 * numbers, true/false); otherwise -ENOTSUP naming the key and its value */
int moe_hf_require(struct moe_hf_cfg *c, const char *key, const char *allowed);

/* GGUF metadata being read: "<arch>." keys nobody claims are an error */
struct moe_gguf_cfg {
    const struct moe_gguf *g;
    const char *file;
    char arch[64];
    struct moe_claims claims; /* the "<arch>." keys, prefix stripped */
};
int moe_gguf_u32(struct moe_gguf_cfg *c, const char *key, int64_t def, bool required,
                 int32_t *out);
int moe_gguf_f32(struct moe_gguf_cfg *c, const char *key, double def, float *out);
int moe_gguf_bool(struct moe_gguf_cfg *c, const char *key, bool def, bool *out);
bool moe_gguf_present(struct moe_gguf_cfg *c, const char *key); /* claims it */

/* ---- the table ------------------------------------------------------------------ */

enum moe_key_type { MOE_KEY_INT, MOE_KEY_FLOAT, MOE_KEY_BOOL };

/* one config field: its spellings in config.json (transformers 5 first,
 * then 4.x and the checkpoint's own remote code), its GGUF key (after
 * "<arch>."), and transformers' default when absent */
struct moe_key_row {
    const char *hf[4];
    const char *gguf;
    enum moe_key_type type;
    size_t off; /* into struct moe_config */
    double def;
    bool required;
};

struct moe_arch_row {
    enum moe_arch arch;
    const char *name;            /* moed's name (packs) */
    const char *hf_class[3];     /* architectures[0] */
    const char *model_type[3];
    const char *gguf;            /* general.architecture */
    const struct moe_key_row *keys;
    size_t n_keys;
    /* value checks: "key=allowed|values" */
    const char *const *checks;
    /* keys that do not change the math (beyond the global list) */
    const char *const *ignore;
    /* the recipe, before the keys are read */
    void (*recipe)(struct moe_config *c);
    /* what the keys cannot say alone (dense layers, windows, routing) */
    int (*hf_finish)(struct moe_hf_cfg *h, struct moe_config *c);
    float rope_partial; /* partial_rotary_factor when the config has none (0: 1) */
    /* transformers' rope parameters (JSON) when the config has neither
     * rope_parameters nor rope_scaling (NULL: plain rope) */
    const char *rope_default;
    /* Hugging Face tensor names: the MoE block's module, each expert's
     * matrices (gate, up, down), the shared experts' module */
    const char *hf_moe, *hf_expert[3], *hf_shared;
};

const struct moe_arch_row *moe_arch_row(enum moe_arch arch);
const struct moe_arch_row *moe_arch_by_hf(const char *hf_class, const char *model_type);
const struct moe_arch_row *moe_arch_by_gguf(const char *name);
/* "MixtralForCausalLM, ..." for messages */
const char *moe_arch_hf_list(void);
const char *moe_arch_gguf_list(void);

/* rope_parameters / rope_theta + rope_scaling + partial_rotary_factor (both
 * spellings) into c; head_dim_for_rope: the dims rope sees when partial is 1 */
int moe_hf_rope(struct moe_hf_cfg *h, struct moe_config *c, int32_t head_dim_for_rope);
/* layer_types (or arch default via sliding) into c->layer_swa */
int moe_hf_layer_types(struct moe_hf_cfg *h, struct moe_config *c);

/* YaRN's magnitude correction: 0.1 m ln(scale) + 1 (1 when scale <= 1) */
double moe_yarn_mscale(double scale, double m);

/* The inverse frequencies of c's rotary embedding, scaling applied:
 * inv[rope_dim / 2]. */
void moe_rope_inv_freq(const struct moe_config *c, float *inv);

#endif
