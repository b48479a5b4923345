/* MC-MoE bit allocation: the exact optimum of the per-layer integer programme. */
#include <errno.h>
#include <float.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "quant/quant_mcmoe.h"

#define ENUM_MAX 10 /* 3^10 = 59049 assignments */

static int check_args(int32_t n, int32_t budget)
{
    if (n < 2)
        return moe_err(-EINVAL, "bit allocation needs at least 2 experts (one 3-bit, one 2-bit)");
    if (budget < 5 + (n - 2))
        return moe_err(-EINVAL, "a budget of %d bits cannot give %d experts one 3-bit, one "
                       "2-bit and the rest 1 bit (needs %d)", budget, n, 5 + (n - 2));
    return 0;
}

static int allocate_enum(int32_t n, const double *cost, int32_t budget, uint8_t *bits,
                         double *best_out)
{
    uint8_t cur[ENUM_MAX];
    double best = DBL_MAX;
    int32_t total = 1;
    for (int32_t i = 0; i < n; i++)
        total *= 3;
    for (int32_t code = 0; code < total; code++) {
        int32_t c = code, sum = 0;
        bool has3 = false, has2 = false;
        double v = 0.0;
        for (int32_t e = 0; e < n; e++, c /= 3) {
            cur[e] = (uint8_t)(c % 3 + 1);
            sum += cur[e];
            has3 |= cur[e] == 3;
            has2 |= cur[e] == 2;
            v += cost[e * 3 + cur[e] - 1];
        }
        if (sum <= budget && has3 && has2 && v < best) { /* first optimum in code order */
            best = v;
            memcpy(bits, cur, (size_t)n);
        }
    }
    if (best_out)
        *best_out = best;
    return 0;
}

int moe_mcmoe_allocate_dp(int32_t n, const double *cost, int32_t budget, uint8_t *bits,
                          double *best_out)
{
    int rc = check_args(n, budget);
    if (rc < 0)
        return rc;
    int32_t B = MOE_MIN(budget, 3 * n); /* more bits than 3 each is never used */
    /* f[e][u][flags]: least cost of experts [0, e) using exactly u bits; flags
     * bit 0 = a 3-bit expert so far, bit 1 = a 2-bit one */
    size_t layer = (size_t)(B + 1) * 4, states = (size_t)(n + 1) * layer;
    double *f = malloc(states * sizeof(double));
    uint8_t *choice = malloc(states);
    if (!f || !choice) {
        free(f);
        free(choice);
        return moe_err(-ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < states; i++)
        f[i] = DBL_MAX;
    f[0] = 0.0; /* no experts, 0 bits, no flags */
    for (int32_t e = 0; e < n; e++)
        for (int32_t u = 0; u <= B; u++)
            for (int fl = 0; fl < 4; fl++) {
                double v = f[(size_t)e * layer + (size_t)u * 4 + fl];
                if (v == DBL_MAX)
                    continue;
                for (int b = 1; b <= 3 && u + b <= B; b++) {
                    int nf = fl | (b == 3 ? 1 : 0) | (b == 2 ? 2 : 0);
                    size_t to = (size_t)(e + 1) * layer + (size_t)(u + b) * 4 + nf;
                    double w = v + cost[e * 3 + b - 1];
                    if (w < f[to]) {
                        f[to] = w;
                        choice[to] = (uint8_t)(b | fl << 2); /* width and where it came from */
                    }
                }
            }
    double best = DBL_MAX;
    int32_t bu = -1;
    for (int32_t u = 0; u <= B; u++) {
        double v = f[(size_t)n * layer + (size_t)u * 4 + 3];
        if (v < best) {
            best = v;
            bu = u;
        }
    }
    int fl = 3;
    for (int32_t e = n; e > 0; e--) { /* walk the choices back */
        uint8_t ch = choice[(size_t)e * layer + (size_t)bu * 4 + fl];
        bits[e - 1] = ch & 3;
        bu -= ch & 3;
        fl = ch >> 2;
    }
    free(f);
    free(choice);
    if (best_out)
        *best_out = best;
    return 0;
}

int moe_mcmoe_allocate(int32_t n, const double *cost, int32_t budget, uint8_t *bits,
                       double *best)
{
    int rc = check_args(n, budget);
    if (rc < 0)
        return rc;
    return n <= ENUM_MAX ? allocate_enum(n, cost, budget, bits, best)
                         : moe_mcmoe_allocate_dp(n, cost, budget, bits, best);
}
