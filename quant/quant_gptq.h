/* GPTQ (Frantar et al.): quantise a weight matrix column by column, each
 * column's rounding error spread over the columns not yet quantised through
 * the inverse Hessian of the layer's inputs. Format-agnostic: the caller's
 * callbacks choose the grid (QMoE ternary per row, group-wise integers).
 * Used by moe-pack, nothing at serving time. */
#ifndef MOE_QUANT_GPTQ_H
#define MOE_QUANT_GPTQ_H

#include <stdint.h>

struct moe_pool;

/* H [cols][cols] += sum over the n inputs x[n][cols] of x x^T (unnormalised;
 * moe_gptq_quantize scales it). Runs on the pool (NULL: the caller alone);
 * allocates scratch of about cols x 512 floats. */
void moe_gptq_hessian_add(struct moe_pool *pool, float *H, const float *x, int64_t n,
                          int64_t cols);

struct moe_gptq_ops {
    /* Optional: column c0 starts a group [c0, c1) (when group > 0: c0 = 0,
     * group, 2 group, ...). Wt holds the current weights, transposed
     * (Wt[c][rows]): columns < c0 already quantised, columns >= c0 with every
     * update from them applied (column blocks are cut at group starts). */
    void (*group_begin)(void *ctx, const float *Wt, int64_t rows, int64_t c0, int64_t c1);
    /* Quantises column c: w[rows] in, q[rows] = the dequantised values out;
     * the callback records the codes it chose. */
    void (*quant_col)(void *ctx, int64_t c, const float *w, float *q, int64_t rows);
    void *ctx;
};

/* Quantises W [rows][cols] in place (W ends as the dequantised result).
 * H: the summed Hessian of n_samples inputs (scaled to 2/n inside), or NULL
 * for the identity (plain rounding). damp: fraction of mean(diag H) added
 * (0.1 QMoE, 0.01 MC-MoE). Column blocks of 128 with lazy batch updates.
 * group: columns per group_begin call, 0 for none.
 * Returns 0, or 1 when H was not positive definite and plain rounding was
 * used instead; negative errno on allocation failure (W untouched). Scratch:
 * 3 cols^2 + rows x cols floats and a little more. pool may be NULL. */
int moe_gptq_quantize(struct moe_pool *pool, float *W, int64_t rows, int64_t cols,
                      const float *H, int64_t n_samples, float damp, int64_t group,
                      const struct moe_gptq_ops *ops);

#endif
