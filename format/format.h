/* format: the files moed reads. Safetensors (single file or sharded with
 * model.safetensors.index.json) and GGUF v3. Everything is mmapped; tensor
 * views point into the mapping, nothing is copied.
 *
 * Errors return a negative errno and set moe_err_msg() to one line naming
 * the file (and the tensor or key) at fault. */
#ifndef MOE_FORMAT_H
#define MOE_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quant/quant.h"

/* 5: a vision tower's Conv3d patch embedding, in checkpoints whose text
 * model is served; GGUF itself has at most 4 (GGML_MAX_DIMS) */
#define MOE_MAX_DIMS 5
#define MOE_DTYPE_OTHER (-1) /* a dtype moed does not compute with (I64, ...) */

/* A tensor inside a mapped file. dims[0] is the OUTERMOST dimension (numpy
 * and Hugging Face order): a [rows, cols] matrix has dims {rows, cols}.
 * GGUF's ne[] is reversed into this order by the reader. */
struct moe_tensor_info {
    const char *name;   /* NUL-terminated, owned by the reader */
    int dtype;          /* enum moe_dtype, or MOE_DTYPE_OTHER */
    int n_dims;
    int64_t dims[MOE_MAX_DIMS];
    const void *data;   /* into the mapping */
    size_t nbytes;
    const char *file;   /* path of the file holding it, for messages */
};

/* ---- safetensors ---------------------------------------------------------- */
struct moe_safetensors;

/* dir holds model.safetensors, or model.safetensors.index.json and shards */
int moe_safetensors_open_dir(const char *dir, struct moe_safetensors **out);
int moe_safetensors_open_file(const char *path, struct moe_safetensors **out);
void moe_safetensors_close(struct moe_safetensors *st);
size_t moe_safetensors_count(const struct moe_safetensors *st);
const struct moe_tensor_info *moe_safetensors_at(const struct moe_safetensors *st, size_t i);
const struct moe_tensor_info *moe_safetensors_find(const struct moe_safetensors *st,
                                                   const char *name); /* NULL if absent */

/* ---- GGUF ----------------------------------------------------------------- */
enum moe_gguf_type {
    MOE_GGUF_U8 = 0, MOE_GGUF_I8 = 1, MOE_GGUF_U16 = 2, MOE_GGUF_I16 = 3,
    MOE_GGUF_U32 = 4, MOE_GGUF_I32 = 5, MOE_GGUF_F32 = 6, MOE_GGUF_BOOL = 7,
    MOE_GGUF_STRING = 8, MOE_GGUF_ARRAY = 9, MOE_GGUF_U64 = 10, MOE_GGUF_I64 = 11,
    MOE_GGUF_F64 = 12,
};

/* GGUF strings are length-prefixed, not NUL-terminated. */
struct moe_gguf_str {
    const char *ptr;
    uint64_t len;
};

struct moe_gguf;

int moe_gguf_open(const char *path, struct moe_gguf **out);
/* The same over bytes in memory (a pack's "tokenizer.gguf" blob), which must
 * outlive the handle; name is for messages. */
int moe_gguf_open_mem(const void *data, size_t size, const char *name, struct moe_gguf **out);
void moe_gguf_close(struct moe_gguf *g);
/* The key/value section's bytes as stored (after the 24-byte header), with
 * the version and key count: "GGUF", version, u64 0 tensors, n_kv and these
 * bytes make a vocabulary-only GGUF of the same metadata. */
int moe_gguf_kv_section(const struct moe_gguf *g, uint32_t *version, uint64_t *n_kv,
                        const void **data, size_t *size);
const char *moe_gguf_path(const struct moe_gguf *g);

bool moe_gguf_has(const struct moe_gguf *g, const char *key);
/* Typed getters: 0, -ENOENT when the key is absent, -EINVAL (message set)
 * when its type does not convert. Integers accept any integer type whose
 * value fits; floats accept F32 and F64. */
int moe_gguf_get_u32(const struct moe_gguf *g, const char *key, uint32_t *out);
int moe_gguf_get_f32(const struct moe_gguf *g, const char *key, float *out);
int moe_gguf_get_bool(const struct moe_gguf *g, const char *key, bool *out);
int moe_gguf_get_str(const struct moe_gguf *g, const char *key, struct moe_gguf_str *out);
/* Arrays of strings (an index built at open), and of numbers (raw
 * little-endian elements, possibly unaligned: read with memcpy). */
int moe_gguf_get_str_array(const struct moe_gguf *g, const char *key,
                           const struct moe_gguf_str **items, uint64_t *count);
int moe_gguf_get_array(const struct moe_gguf *g, const char *key, enum moe_gguf_type *elem,
                       const void **data, uint64_t *count);

/* Every key in file order (for dumps and tests); *type gets its value type
 * (may be NULL). NULL past the end. */
size_t moe_gguf_kv_count(const struct moe_gguf *g);
const char *moe_gguf_key_at(const struct moe_gguf *g, size_t i, enum moe_gguf_type *type);

size_t moe_gguf_tensor_count(const struct moe_gguf *g);
const struct moe_tensor_info *moe_gguf_tensor_at(const struct moe_gguf *g, size_t i);
const struct moe_tensor_info *moe_gguf_find_tensor(const struct moe_gguf *g, const char *name);

#endif
