/* MC-MoE pre-loading mixed precision (ALGORITHMS.md s.2): per layer, one
 * width b in {1, 2, 3} bits per expert, minimising the summed cost
 * C[e][b] = F[e] * Wt[e]^1.5 * L[e][b] subject to a bit budget, with at
 * least one 3-bit and one 2-bit expert. Experts of a layer share one shape,
 * so the budget is a count of bits over the layer's experts. */
#ifndef MOE_QUANT_MCMOE_H
#define MOE_QUANT_MCMOE_H

#include <stdint.h>

#define MOE_MCMOE_WIDTHS 3 /* b = 1, 2, 3 */

/* cost: [n][3], cost[e*3 + (b-1)]. budget: the most bits the widths may sum
 * to (e.g. floor(2.5 * n)). bits[n] gets the widths. Exact: enumeration of
 * all 3^n assignments for n <= 10, else a dynamic programme over (expert,
 * bits used, has a 3-bit, has a 2-bit), O(n^2). Returns the optimum's cost
 * through *best (may be NULL); -EINVAL when no assignment fits (budget below
 * 3 + 2 + (n - 2)) or n < 2. */
int moe_mcmoe_allocate(int32_t n, const double *cost, int32_t budget, uint8_t *bits,
                       double *best);

/* The same by the dynamic programme whatever n is (tests compare the two). */
int moe_mcmoe_allocate_dp(int32_t n, const double *cost, int32_t budget, uint8_t *bits,
                          double *best);

#endif
