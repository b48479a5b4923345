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
 * The shape (struct moe_kv_shape) covers multi-head latent attention too:
 * with v_in_k a token stores one key vector per kv head and its value is the
 * key's first v_dim channels (MLA's compressed latent; nothing else stored,
 * quantised per channel as keys are). A layer with a sliding window keeps
 * only the blocks its window still reaches: older ones go back to the pool
 * after each attention (a ring of blocks), so its cache stays bounded.
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

/* What one token stores per layer, and each layer's window. */
struct moe_kv_shape {
    int32_t n_layers, n_kv_heads;
    int32_t k_dim, v_dim;  /* per kv head */
    bool v_in_k;           /* values are the keys' first v_dim channels (MLA) */
    const int32_t *window; /* [n_layers]: the last window[l] positions are attended
                            * (0 = all), or NULL: none; copied by the pool */
    int32_t max_chunk;     /* most tokens one sequence adds in one forward (0 =
                            * unbounded): what a window layer's bound counts */
    /* Recurrent layers (linear attention) store no tokens: each sequence
     * holds a fixed state of state_rows rows of state_row floats there
     * instead, in units of the same pool (a row never straddles two). */
    const bool *recurrent; /* [n_layers] or NULL: none; copied by the pool */
    int32_t state_rows, state_row;
};

struct moe_kv_params {
    int32_t key_bits, value_bits; /* 32, 16, 8, 4, 2 (32 beside 2/4/8 acts as 16) */
    int32_t group;                /* G: tokens per block, 32, 64 or 128 */
    int32_t residual;             /* R: tokens kept fp16, a multiple of G (KIVI mode) */
    int32_t state_bits;           /* recurrent states: 32 (fp32) or 16 (bf16); 0 = 32 */
};

/* Validates p for a shape (message on error). */
int moe_kv_params_check(const struct moe_kv_params *p, const struct moe_kv_shape *sh);

/* A pool of n_units units. Memory is reserved up front but only touched as
 * units are used. */
int moe_kv_pool_create(const struct moe_kv_shape *sh, const struct moe_kv_params *p,
                       int64_t n_units, struct moe_kv_pool **out);
void moe_kv_pool_free(struct moe_kv_pool *pool);
/* Bytes of one unit, and units one sequence of n_tokens needs at most
 * (all layers, residual window included). */
size_t moe_kv_pool_unit_bytes(const struct moe_kv_pool *pool);
int64_t moe_kv_pool_units_for(const struct moe_kv_pool *pool, int64_t n_tokens);
/* Units a pool needs so that it can hold n_tokens tokens of cache, each
 * sequence of max_ctx contributing its own window (for [kv] tokens). */
int64_t moe_kv_units_for_params(const struct moe_kv_shape *sh, const struct moe_kv_params *p,
                                int64_t n_tokens);
/* Units for n_tokens tokens of cache in all, shared by up to n_seqs
 * sequences (each with its own window). */
int64_t moe_kv_units_for_tokens(const struct moe_kv_shape *sh, const struct moe_kv_params *p,
                                int64_t n_tokens, int32_t n_seqs);
size_t moe_kv_unit_bytes_for_params(const struct moe_kv_shape *sh, const struct moe_kv_params *p);
/* Bytes one token of one layer takes once quantised (its share of a block,
 * scales included; the fp16 window and block rounding not counted). */
double moe_kv_token_bytes(const struct moe_kv_shape *sh, const struct moe_kv_params *p);

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

/* A sequence with a private pool of max_ctx tokens (p NULL = fp32, exact):
 * a session's own cache. */
int moe_kv_create(const struct moe_kv_shape *sh, const struct moe_kv_params *p, int32_t max_ctx,
                  struct moe_kv **out);
void moe_kv_free(struct moe_kv *kv); /* units back to the pool (and a private pool freed) */
int32_t moe_kv_capacity(const struct moe_kv *kv);

/* Stores one token's k [n_kv_heads*k_dim] and v [n_kv_heads*v_dim] (NULL
 * with v_in_k), already roped, of layer at position pos. pos may go back
 * (the cache of that layer is cut there first; -EINVAL when a window layer
 * has already given those blocks back, unless pos is 0: starting over). -ENOSPC with a message when the
 * pool has no unit left; the sequence then stays as it was and no other
 * sequence is touched. */
int moe_kv_store(struct moe_kv *kv, int32_t layer, int32_t pos, const float *k, const float *v);

/* How the query heads attend. */
struct moe_kv_attn {
    int32_t n_heads;    /* query heads, a multiple of the kv heads */
    float scale;        /* of q.k */
    const float *sinks; /* [n_heads]: a learned logit per head in each softmax's
                         * denominator (gpt-oss), or NULL */
};

/* Causal attention for a batch of n query tokens that may belong to
 * different sequences: token i attends to positions 0..pos[i] of kvs[i]
 * (the last window[layer] of them on a window layer; they must be stored).
 * q [n][n_heads*k_dim] -> out [n][n_heads*v_dim]. scores: scratch of
 * threads x (largest pos + 1) floats. Afterwards every window layer of the
 * kvs gives back the blocks no later token can reach. */
void moe_kv_attention(struct moe_pool *pool, struct moe_kv *const *kvs, const int32_t *pos,
                      int32_t n, int32_t layer, const struct moe_kv_attn *a, const float *q,
                      float *out, float *scores, size_t scores_stride);

/* dst (empty, of the same pool) becomes a copy of src as it stands: the
 * blocks src has filled (and quantised) are shared, not copied (a unit
 * goes back to the pool when its last holder gives it up); the partial
 * block, the fp16 window and recurrent states are copied. n choices of one
 * prompt prefill it once. dst's reservation is dropped (reserve again).
 * -ENOTSUP for pools with window layers, -ENOSPC when the copies do not
 * fit; dst is then empty. */
int moe_kv_fork(struct moe_kv *dst, const struct moe_kv *src);
/* Keeps positions [0, n) of a direct (16/32-bit) cache's attention layers and
 * gives the blocks past them back; a shared block n falls in is copied, as
 * it will be written. Recurrent layers are untouched. -ENOTSUP for KIVI
 * caches, -ENOSPC when the copy does not fit. */
int moe_kv_truncate(struct moe_kv *kv, int32_t n);

/* ---- recurrent layers' states ----
 * A forward of a chunk of a sequence on recurrent layer l starts with
 * moe_kv_state_begin(kv, l, pos) (pos 0: the state is taken if needed and
 * zeroed; otherwise pos must be the tokens already absorbed: a state cannot
 * go back) and ends with moe_kv_state_end(kv, l, pos + n). -ENOSPC with a
 * message when the pool has no units for the state. */
int moe_kv_state_begin(struct moe_kv *kv, int32_t layer, int32_t pos);
void moe_kv_state_end(struct moe_kv *kv, int32_t layer, int32_t n_tokens);
/* Row r of layer's state: state_row floats (fp32) or bf16 values. */
void *moe_kv_state_row(const struct moe_kv *kv, int32_t layer, int32_t r);
int moe_kv_state_bits(const struct moe_kv *kv); /* 32 or 16 */
/* Bytes of one sequence's states (all recurrent layers, whole units). */
size_t moe_kv_pool_state_bytes(const struct moe_kv_pool *pool);

/* Test hook: which kernels attention uses (0 ref, 1 AVX2, 2 AVX-512, as
 * enum moe_isa); -1 = the best this CPU has. Returns the ISA now in use. */
int moe_kv_set_isa(int isa);

#endif
