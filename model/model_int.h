/* model: private declarations shared by the loader files. */
#ifndef MOE_MODEL_INT_H
#define MOE_MODEL_INT_H

#include "format/format.h"
#include "model/model.h"

struct moe_model_files {
    struct moe_safetensors *st; /* HF checkpoints */
    struct moe_gguf *gguf;      /* GGUF files */
};

/* config.json -> cfg (defaults per architecture as transformers has them) */
int moe_config_from_hf(const char *config_path, struct moe_config *cfg);
/* GGUF metadata -> cfg */
int moe_config_from_gguf(const struct moe_gguf *g, struct moe_config *cfg);
/* Checks the dimensions make sense; file names the source in messages. */
int moe_config_validate(const struct moe_config *cfg, const char *file);

/* Bind every tensor of the model (shapes and dtypes checked). */
int moe_model_bind_hf(struct moe_model *m);
int moe_model_bind_gguf(struct moe_model *m);

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
