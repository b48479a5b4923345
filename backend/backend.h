/* backend: where work runs. For now the CPU: a thread pool over all cores and
 * the matmul entry point that splits rows across it. */
#ifndef MOE_BACKEND_H
#define MOE_BACKEND_H

#include "quant/quant.h"

struct moe_pool;

/* n_threads <= 0: one per online core. The caller is thread 0 of every run. */
int moe_pool_create(int n_threads, struct moe_pool **out);
void moe_pool_free(struct moe_pool *pool);
int moe_pool_threads(const struct moe_pool *pool);

/* Runs fn(arg, ith, nth) on every thread (ith = 0..nth-1, the caller is 0)
 * and returns when all have finished. Cheap enough to call hundreds of times
 * per token (workers spin briefly before sleeping). */
typedef void (*moe_task_fn)(void *arg, int ith, int nth);
void moe_pool_run(struct moe_pool *pool, moe_task_fn fn, void *arg);

/* y[n][w->rows] = x[n][w->cols] . W^T with the best kernel, rows split
 * across the pool. x and y are contiguous (ldx = cols, ldy = rows). */
void moe_matmul(struct moe_pool *pool, const struct moe_weight *w,
                const float *x, int n, float *y);

/* A weight whose rows come in `groups` equal groups, each applied to its
 * own slice of every token's input (MLA's per-head matrices): for group g,
 * y[t][g*R + r] = sum_c W[g*R + r][c] * x[t*ldx + g*xg + c] with R =
 * rows / groups and c < cols; y is [n][rows] contiguous. */
void moe_matmul_grouped(struct moe_pool *pool, const struct moe_weight *w, int groups,
                        const float *x, int64_t ldx, int64_t xg, int n, float *y);

/* Best of reps timed reads of a bytes-sized buffer by every thread of the
 * pool, in GB/s: the memory roofline of a decode step. */
double moe_mem_read_bandwidth_gbs(struct moe_pool *pool, size_t bytes, int reps);

#endif
