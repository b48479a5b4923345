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
    void **owned; /* copies the model made (fp32 vectors, rearranged layouts) */
    size_t n_owned, cap_owned;
};
void moe_model_free_owned(struct moe_model_files *f);

struct moe_expert_source;

/* Layer l's experts for this step when the model serves from a host tier:
 * submits the reads of the routed ones that are not resident and points
 * *experts at views of those that are; *src hands out the others as their
 * reads land (moe_experts_run_from runs the resident ones meanwhile). Once
 * all are in, starts the next MoE layer's prefetch from x [n][H], the
 * residual stream entering this MoE block (left as it is until then; tmp
 * [n][H] and router_buf [n][E]: scratch, free until then too). isolate:
 * an expert whose read fails is marked failed in *src (moe_experts_run_from
 * goes on without it) and its message kept for moe_model_offload_failure;
 * otherwise the failure fails the run. */
int moe_model_offload_layer(const struct moe_model *m, struct moe_pool *pool, int32_t l,
                            const float *x, int32_t n, const struct moe_route *routes, float *tmp,
                            float *router_buf, bool isolate,
                            const struct moe_expert_weights **experts,
                            const struct moe_expert_source **src);
/* After an isolated run of the layer in progress: the message of expert e's
 * failed read (naming the layer and expert), or NULL when it did not fail. */
const char *moe_model_offload_failure(const struct moe_model *m, int32_t e);
void moe_model_offload_free(struct moe_model *m);
/* layer l's router as the architecture routes (router/router.h) */
struct moe_router_cfg;
void moe_model_router_cfg(const struct moe_model *m, int32_t l, struct moe_router_cfg *out);

/* config.json -> cfg (defaults per architecture as transformers has them) */
int moe_config_from_hf(const char *config_path, struct moe_config *cfg);
/* GGUF metadata -> cfg */
int moe_config_from_gguf(const struct moe_gguf *g, struct moe_config *cfg);
/* Checks the dimensions make sense; file names the source in messages. */
int moe_config_validate(const struct moe_config *cfg, const char *file);
/* What the config implies beyond its fields: the rope table, the cache's
 * per-layer windows, the experts' activation (after cfg is final). */
int moe_model_derive(struct moe_model *m);
/* m->layers and each layer's experts, zeroed, for m->cfg */
int moe_model_alloc_layers(struct moe_model *m);

/* Binds every tensor the architecture's rows give it (model_tensors.c),
 * from the checkpoint the model was opened from (shapes and dtypes
 * checked); a pack's experts are bound from its blobs instead. */
int moe_model_bind_tensors(struct moe_model *m);

/* A dense tensor (everything but the routed experts) under its pack name:
 * a matrix, or an fp32 vector of n values. */
struct moe_dense_tensor {
    const char *name;
    const char *file_name; /* its name in the file the model was opened from */
    const struct moe_weight *mat;
    const float *vec;
    int64_t n;
};
/* fn's non-zero return stops the walk and is returned */
typedef int (*moe_dense_visit)(void *ctx, const struct moe_dense_tensor *t);
int moe_model_visit_dense(const struct moe_model *m, moe_dense_visit fn, void *ctx);
/* Where expert x of layer l's part (its pack name: "gate", "down_bias") is in
 * the file the model was opened from, for messages: "tensor 'NAME'" for a
 * per-expert tensor, "tensor 'NAME' (expert x)" for a stack of all experts
 * (GGUF, gpt-oss), "layer l expert x part 'gate'" for a pack's blob. */
void moe_model_expert_where(const struct moe_model *m, int32_t l, int32_t x, const char *part,
                            char *out, size_t cap);


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
/* a vector of n elements (or [1, n]) converted to an fp32 copy; a NaN or
 * an infinity in it is -EBADMSG naming the tensor (a corrupt file) */
int moe_bind_vector(const struct moe_tensor_info *t, const char *file, const char *name,
                    int64_t n, float **out);
/* 0, or -EBADMSG naming file, tensor and the first element of v[0..n) that
 * is NaN or infinite; what: "" or a qualifier such as " (expert 3)" */
int moe_bind_check_finite(const float *v, int64_t n, const char *file, const char *name,
                          const char *what);

/* ---- Gated DeltaNet layers (model_linear.c) ---- */
struct moe_linear_scratch {
    float *buf;
    size_t cap, per_thread;
    float *qkv, *conv, *hist, *z, *core, *b, *a, *beta, *g, *thread;
    bool recurrent_only; /* MOE_GDN_RECURRENT set: no chunked form (tests) */
};
void moe_linear_scratch_free(struct moe_linear_scratch *s);
/* rows of a sequence's state that the conv state takes (the rest: the
 * value heads' [dk][dv] delta states) */
int32_t moe_linear_conv_rows(const struct moe_config *c);
/* Linear layer l over the normalised xn [n][H]: *out = [n][v heads * v dim]
 * (s->core), ready for W_out. */
int moe_model_linear_attn(const struct moe_model *m, struct moe_pool *pool, int32_t l, int32_t n,
                          const float *xn, struct moe_kv *const *kvs, const int32_t *pos,
                          struct moe_linear_scratch *s, const float **out);

#endif
