/* kv: the per-sequence key/value cache and attention over it. For now fp32
 * and contiguous; paging and quantisation come with the compressed-KV work. */
#ifndef MOE_KV_H
#define MOE_KV_H

#include <stdint.h>

struct moe_pool;
struct moe_kv;

int moe_kv_create(int32_t n_layers, int32_t n_kv_heads, int32_t head_dim, int32_t max_ctx,
                  struct moe_kv **out);
void moe_kv_free(struct moe_kv *kv);
int32_t moe_kv_capacity(const struct moe_kv *kv);

/* Stores k and v ([n][n_kv_heads*head_dim], already roped) of layer at
 * positions pos0..pos0+n-1. */
void moe_kv_store(struct moe_kv *kv, int32_t layer, int32_t pos0, int32_t n,
                  const float *k, const float *v);

/* Causal grouped-query attention of n query tokens at positions
 * pos0..pos0+n-1 over the cache (which must already hold them):
 * q [n][n_heads*head_dim] -> out [n][n_heads*head_dim], scale 1/sqrt(hd). */
int moe_kv_attention(struct moe_pool *pool, struct moe_kv *kv, int32_t layer, int32_t n_heads,
                     const float *q, int32_t pos0, int32_t n, float *out);

#endif
