/* kv: the paged, optionally quantised key/value cache and attention over it.
 *
 * One pool (struct moe_kv_pool) holds fixed-size blocks ("units"); every
 * unit belongs to one layer of one sequence. Sequences (struct moe_kv) keep
 * per-layer block tables and give their units back when they end.
 *
 * Two ways of storing tokens, chosen by the bit widths:
 *  - direct (both widths 16 or 32): a unit holds G tokens of one layer,
 *    fp16 or fp32, written as they come;
 *  - KIVI (either width 2, 4 or 8; the other may be 16): the newest tokens
 *    sit in an fp16 ring (the residual window, R..R+G-1 tokens, stored in
 *    units too); each time G tokens leave it they are quantised into one
 *    unit: keys per channel over the G tokens, values per token over groups
 *    of min(G, head_dim) channels, asymmetric, fp16 scale and minimum.
 * Attention reads the quantised units directly (ALGORITHMS.md section 4);
 * no fp copy of the cache is ever made.
 *
 * A pool is used by one thread at a time (the engine thread, or a session). */
#ifndef MOE_KV_H
#define MOE_KV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct moe_pool;
struct moe_kv;
struct moe_kv_pool;

struct moe_kv_params {
    int32_t key_bits, value_bits; /* 32, 16, 8, 4, 2 (32 beside 2/4/8 acts as 16) */
    int32_t group;                /* G: tokens per block, 32, 64 or 128 */
    int32_t residual;             /* R: tokens kept fp16, a multiple of G (KIVI mode) */
};

/* Validates p (message on error). */
int moe_kv_params_check(const struct moe_kv_params *p, int32_t head_dim);

/* A pool of n_units units. Memory is reserved up front but only touched as
 * units are used. */
int moe_kv_pool_create(int32_t n_layers, int32_t n_kv_heads, int32_t head_dim,
                       const struct moe_kv_params *p, int64_t n_units, struct moe_kv_pool **out);
void moe_kv_pool_free(struct moe_kv_pool *pool);
/* Bytes of one unit, and units one sequence of n_tokens needs at most
 * (all layers, residual window included). */
size_t moe_kv_pool_unit_bytes(const struct moe_kv_pool *pool);
int64_t moe_kv_pool_units_for(const struct moe_kv_pool *pool, int64_t n_tokens);
/* Units a pool needs so that it can hold n_tokens tokens of cache, each
 * sequence of max_ctx contributing its own window (for [kv] tokens). */
int64_t moe_kv_units_for_params(int32_t n_layers, int32_t n_kv_heads, int32_t head_dim,
                                const struct moe_kv_params *p, int64_t n_tokens);
/* Units for n_tokens tokens of cache in all, shared by up to n_seqs
 * sequences (each with its own window). */
int64_t moe_kv_units_for_tokens(int32_t n_layers, int32_t n_kv_heads, int32_t head_dim,
                                const struct moe_kv_params *p, int64_t n_tokens, int32_t n_seqs);
size_t moe_kv_unit_bytes_for_params(int32_t n_layers, int32_t n_kv_heads, int32_t head_dim,
                                    const struct moe_kv_params *p);

struct moe_kv_pool_stats {
    int64_t units_total, units_used, units_reserved; /* reserved: promised, not yet taken */
    size_t unit_bytes;
    int32_t group, residual, key_bits, value_bits;
    double bytes_per_token_4k; /* one sequence at 4096 tokens, window included */
};
void moe_kv_pool_get_stats(const struct moe_kv_pool *pool, struct moe_kv_pool_stats *st);
/* Bytes one sequence of n_tokens holds (its units, window included). */
size_t moe_kv_pool_bytes_for(const struct moe_kv_pool *pool, int64_t n_tokens);

/* A sequence of at most max_ctx tokens drawing on pool. No units are taken
 * until tokens are stored (or moe_kv_reserve is called). */
int moe_kv_seq_create(struct moe_kv_pool *pool, int32_t max_ctx, struct moe_kv **out);
/* Promises the units for n_tokens tokens (all layers) to kv, so later stores
 * up to n_tokens cannot fail: -ENOSPC (message) when the pool cannot promise
 * them now, nothing changed. A new reservation replaces the old one. */
int moe_kv_reserve(struct moe_kv *kv, int32_t n_tokens);
/* Gives every unit and reservation back; the sequence is empty. */
void moe_kv_reset(struct moe_kv *kv);

/* The old interface: a sequence with a private fp32 pool of max_ctx tokens
 * (exact, as before paging). */
int moe_kv_create(int32_t n_layers, int32_t n_kv_heads, int32_t head_dim, int32_t max_ctx,
                  struct moe_kv **out);
/* The same with other parameters (p NULL = fp32): a session's own cache. */
int moe_kv_create_params(int32_t n_layers, int32_t n_kv_heads, int32_t head_dim,
                         const struct moe_kv_params *p, int32_t max_ctx, struct moe_kv **out);
void moe_kv_free(struct moe_kv *kv); /* units back to the pool (and a private pool freed) */
int32_t moe_kv_capacity(const struct moe_kv *kv);

/* Stores one token's k and v ([n_kv_heads*head_dim], already roped) of
 * layer at position pos. pos may go back (the cache of that layer is cut
 * there first). -ENOSPC with a message when the pool has no unit left; the
 * sequence then stays as it was and no other sequence is touched. */
int moe_kv_store(struct moe_kv *kv, int32_t layer, int32_t pos, const float *k, const float *v);

/* Causal grouped-query attention for a batch of n query tokens that may
 * belong to different sequences: token i attends to positions 0..pos[i] of
 * kvs[i] (which must already hold them). q [n][n_heads*head_dim] ->
 * out [n][n_heads*head_dim], scale 1/sqrt(hd). scores: scratch of
 * threads x (largest pos + 1) floats. */
void moe_kv_attention(struct moe_pool *pool, struct moe_kv *const *kvs, const int32_t *pos,
                      int32_t n, int32_t layer, int32_t n_heads, const float *q, float *out,
                      float *scores, size_t scores_stride);

/* Test hook: which kernels attention uses (0 ref, 1 AVX2, 2 AVX-512, as
 * enum moe_isa); -1 = the best this CPU has. Returns the ISA now in use. */
int moe_kv_set_isa(int isa);

#endif
