/* model: private declarations shared by the loader files. */
#ifndef MOE_MODEL_INT_H
#define MOE_MODEL_INT_H

#include "format/format.h"
#include "format/format_pack.h"
#include "model/model.h"

#define MOE_PACK_MAX_SIDES 4

struct moe_model_files {
    struct moe_safetensors *st; /* HF checkpoints */
    struct moe_gguf *gguf;      /* GGUF files */
    struct moe_pack *pack;      /* moed packs */
    struct moe_pack_side {      /* a dtype's shared table (QMoE decode table) */
        int dtype;
        const struct moe_dtype_traits *traits;
        void *side;
    } sides[MOE_PACK_MAX_SIDES];
    int n_sides;
};

struct moe_expert_source;

/* Layer l's experts for this step when the model serves from a host tier:
 * submits the reads of the routed ones that are not resident and points
 * *experts at views of those that are; *src hands out the others as their
 * reads land (moe_experts_run_from runs the resident ones meanwhile). Once
 * all are in, starts the next MoE layer's prefetch from x [n][H], the
 * residual stream entering this MoE block (left as it is until then; tmp
 * [n][H] and router_buf [n][E]: scratch, free until then too). */
int moe_model_offload_layer(const struct moe_model *m, struct moe_pool *pool, int32_t l,
                            const float *x, int32_t n, const struct moe_route *routes, float *tmp,
                            float *router_buf, const struct moe_expert_weights **experts,
                            const struct moe_expert_source **src);
void moe_model_offload_free(struct moe_model *m);

/* config.json -> cfg (defaults per architecture as transformers has them) */
int moe_config_from_hf(const char *config_path, struct moe_config *cfg);
/* GGUF metadata -> cfg */
int moe_config_from_gguf(const struct moe_gguf *g, struct moe_config *cfg);
/* Checks the dimensions make sense; file names the source in messages. */
int moe_config_validate(const struct moe_config *cfg, const char *file);

/* Bind every tensor of the model (shapes and dtypes checked). */
int moe_model_bind_hf(struct moe_model *m);
int moe_model_bind_gguf(struct moe_model *m);
/* A pack: config, tensors, experts, tokenizer (model_pack.c); m->path is the pack */
int moe_model_open_pack(struct moe_model *m);
/* The tokenizer held in a pack's blobs (*out NULL when it has none) */
int moe_pack_tokenizer(const struct moe_pack *p, struct moe_tokenizer **out);
void moe_model_pack_free_sides(struct moe_model_files *f);

/* Shared binding helpers (model_bind.c). name is the tensor's name in its file. */
int moe_bind_matrix(const struct moe_tensor_info *t, const char *file, const char *name,
                    int64_t rows, int64_t cols, struct moe_weight *out);
/* slice e of a stacked [E, rows, cols] tensor */
int moe_bind_matrix_slice(const struct moe_tensor_info *t, const char *file, const char *name,
                          int64_t n, int64_t e, int64_t rows, int64_t cols, struct moe_weight *out);
/* a vector of n elements (or [1, n]) converted to an fp32 copy */
int moe_bind_vector(const struct moe_tensor_info *t, const char *file, const char *name,
                    int64_t n, float **out);

#endif
