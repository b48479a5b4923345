/* kv: the per-sequence key/value cache and attention over it. For now fp32
 * and contiguous; paging and quantisation come with the compressed-KV work. */
#ifndef MOE_KV_H
#define MOE_KV_H

#include <stddef.h>
#include <stdint.h>

struct moe_pool;
struct moe_kv;

int moe_kv_create(int32_t n_layers, int32_t n_kv_heads, int32_t head_dim, int32_t max_ctx,
                  struct moe_kv **out);
void moe_kv_free(struct moe_kv *kv);
int32_t moe_kv_capacity(const struct moe_kv *kv);

/* Stores one token's k and v ([n_kv_heads*head_dim], already roped) of
 * layer at position pos. */
void moe_kv_store(struct moe_kv *kv, int32_t layer, int32_t pos, const float *k, const float *v);

/* Causal grouped-query attention for a batch of n query tokens that may
 * belong to different sequences: token i attends to positions 0..pos[i] of
 * kvs[i] (which must already hold them). q [n][n_heads*head_dim] ->
 * out [n][n_heads*head_dim], scale 1/sqrt(hd). scores: scratch of
 * threads x (largest pos + 1) floats. */
void moe_kv_attention(struct moe_pool *pool, struct moe_kv *const *kvs, const int32_t *pos,
                      int32_t n, int32_t layer, int32_t n_heads, const float *q, float *out,
                      float *scores, size_t scores_stride);

#endif
