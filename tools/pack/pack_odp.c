/* moe-pack: fits online dynamic pruning's defaults (ALGORITHMS.md s.2) from
 * the calibration text, so a pack comes with a pruning level measured on
 * its own model rather than Mixtral's numbers.
 *
 * For every MoE layer, on the recorded calibration tokens, and for each beta
 * of a grid: how many expert activations the rule "drop j when
 * p_j < beta * p_1" removes, and how much that changes the layer's MoE output
 * (sum over tokens of ||y_pruned - y_full||^2, the kept weights renormalised
 * as the router does), relative to the energy of the residual stream that
 * enters the layer: the size of the disturbance the pruning adds to each
 * token's state. At the end, a greedy walk raises one layer's beta a step
 * at a time, always the step with the least added disturbance per removed
 * activation, until the target fraction of all activations is removed. The
 * least sensitive layers thus prune first and hardest; a layer whose steps
 * cost much is left alone. The result goes into the pack's meta "odp"
 * (model/model_prune.c reads it), with the curves behind it. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "common/common.h"
#include "tools/pack/pack.h"

#define ODP_STEPS 19 /* beta = 0.05, 0.10, ... 0.95 */

struct odp_fit {
    int32_t n_layers;
    bool *measured;        /* [L] */
    double *pruned;        /* [L][ODP_STEPS + 1] activations removed; step 0 = beta 0 */
    double *err;           /* [L][ODP_STEPS + 1] relative disturbance */
    double *activations;   /* [L] all activations of the layer */
    double *freq;          /* [L][E] tokens routed to each expert */
    int32_t n_experts;
};

static double step_beta(int s)
{
    return 0.05 * s;
}

int odp_fit_layer(struct packer *P, const struct calib *cb, int32_t l)
{
    const struct moe_config *c = &P->m->cfg;
    int64_t H = c->hidden, F = c->expert_ffn, N = calib_tokens(cb);
    int32_t K = c->top_k;
    if (!P->odp) {
        struct odp_fit *f = calloc(1, sizeof(*f));
        size_t L = (size_t)c->n_layers;
        if (!f || !(f->measured = calloc(L, sizeof(bool))) ||
            !(f->pruned = calloc(L * (ODP_STEPS + 1), sizeof(double))) ||
            !(f->err = calloc(L * (ODP_STEPS + 1), sizeof(double))) ||
            !(f->activations = calloc(L, sizeof(double))) ||
            !(f->freq = calloc(L * (size_t)c->n_experts, sizeof(double)))) {
            odp_fit_free(f);
            return moe_err(-ENOMEM, "out of memory");
        }
        f->n_layers = c->n_layers;
        f->n_experts = c->n_experts;
        P->odp = f;
    }
    struct odp_fit *f = P->odp;
    /* Y[t][j][H]: the output of token t's j-th expert */
    float *Y = malloc((size_t)N * K * H * sizeof(float));
    float *xe = malloc((size_t)N * H * sizeof(float)), *ye = malloc((size_t)N * H * sizeof(float));
    float *g = malloc((size_t)N * F * sizeof(float)), *u = malloc((size_t)N * F * sizeof(float));
    int64_t *idx = malloc((size_t)N * sizeof(int64_t));
    double *dy = malloc((size_t)H * sizeof(double));
    int rc = 0;
    if (!Y || !xe || !ye || !g || !u || !idx || !dy) {
        rc = moe_err(-ENOMEM, "out of memory");
        goto out;
    }
    for (int32_t e = 0; e < c->n_experts; e++) {
        int64_t ne = calib_expert_inputs(cb, e, xe, idx, NULL);
        if (ne == 0)
            continue;
        moe_expert_ffn(P->pool, &P->m->layers[l].experts[e], &P->m->ffn, xe, (int32_t)ne, g, u, ye);
        for (int64_t i = 0; i < ne; i++) {
            const struct moe_route *r = &cb->routes[idx[i]];
            for (int32_t j = 0; j < r->n; j++)
                if (r->expert[j] == e)
                    memcpy(Y + ((size_t)idx[i] * K + j) * H, ye + i * H, (size_t)H * sizeof(float));
        }
    }
    double energy = 0;
    for (size_t i = 0; i < (size_t)N * H; i++)
        energy += (double)cb->x[i] * cb->x[i];
    double *pr = f->pruned + (size_t)l * (ODP_STEPS + 1), *er = f->err + (size_t)l * (ODP_STEPS + 1);
    for (int64_t t = 0; t < N; t++) {
        const struct moe_route *r = &cb->routes[t];
        f->activations[l] += r->n;
        for (int32_t j = 0; j < r->n; j++)
            f->freq[(size_t)l * f->n_experts + r->expert[j]] += 1;
        if (r->n < 2 || !(r->weight[0] > 0))
            continue;
        double all = 0;
        for (int32_t j = 0; j < r->n; j++)
            all += r->weight[j];
        for (int s = 1; s <= ODP_STEPS; s++) {
            double beta = step_beta(s), kept = r->weight[0];
            int dropped = 0;
            for (int32_t j = 1; j < r->n; j++) {
                if (r->weight[j] < beta * r->weight[0])
                    dropped++;
                else
                    kept += r->weight[j];
            }
            if (dropped == 0)
                continue;
            /* y_pruned - y_full = sum_kept w_j (all/kept - 1) y_j - sum_dropped w_j y_j */
            double up = all / kept - 1.0, ss = 0;
            for (int64_t k = 0; k < H; k++)
                dy[k] = 0;
            for (int32_t j = 0; j < r->n; j++) {
                bool keep = j == 0 || r->weight[j] >= beta * r->weight[0];
                double a = keep ? r->weight[j] * up : -(double)r->weight[j];
                const float *y = Y + ((size_t)t * K + j) * H;
                for (int64_t k = 0; k < H; k++)
                    dy[k] += a * y[k];
            }
            for (int64_t k = 0; k < H; k++)
                ss += dy[k] * dy[k];
            pr[s] += dropped;
            er[s] += energy > 0 ? ss / energy : 0;
        }
    }
    f->measured[l] = true;
out:
    free(Y);
    free(xe);
    free(ye);
    free(g);
    free(u);
    free(idx);
    free(dy);
    return rc;
}

json_t *odp_fit_choose(struct packer *P)
{
    struct odp_fit *f = P->odp;
    if (!f || P->o->odp_target <= 0)
        return NULL;
    int32_t L = f->n_layers;
    int *at = calloc((size_t)L, sizeof(int));
    if (!at)
        return NULL;
    double total = 0, removed = 0;
    for (int32_t l = 0; l < L; l++)
        total += f->activations[l];
    while (total > 0 && removed < P->o->odp_target * total) {
        int32_t best_l = -1;
        int best_s = 0;
        double best = INFINITY;
        for (int32_t l = 0; l < L; l++) {
            if (!f->measured[l])
                continue;
            const double *pr = f->pruned + (size_t)l * (ODP_STEPS + 1);
            const double *er = f->err + (size_t)l * (ODP_STEPS + 1);
            /* the next beta of this layer that removes anything more */
            for (int s = at[l] + 1; s <= ODP_STEPS; s++) {
                double dn = pr[s] - pr[at[l]];
                if (dn <= 0)
                    continue;
                double cost = (er[s] - er[at[l]]) / dn;
                if (cost < best) {
                    best = cost;
                    best_l = l;
                    best_s = s;
                }
                break;
            }
        }
        if (best_l < 0)
            break; /* every layer at its largest beta */
        removed += f->pruned[(size_t)best_l * (ODP_STEPS + 1) + best_s] -
                   f->pruned[(size_t)best_l * (ODP_STEPS + 1) + at[best_l]];
        at[best_l] = best_s;
    }
    json_t *beta = json_array(), *layers = json_array();
    fprintf(stderr, "moe-pack: ODP defaults for %.0f%% of activations removed on the calibration "
            "text:", 100 * P->o->odp_target);
    for (int32_t l = 0; l < L; l++) {
        const double *pr = f->pruned + (size_t)l * (ODP_STEPS + 1);
        const double *er = f->err + (size_t)l * (ODP_STEPS + 1);
        json_array_append_new(beta, json_real(step_beta(at[l])));
        fprintf(stderr, " L%d beta %.2f", l, step_beta(at[l]));
        json_t *curve = json_array();
        for (int s = 1; s <= ODP_STEPS && f->measured[l]; s++)
            json_array_append_new(curve, json_pack("[f,f,f]", step_beta(s),
                                                   f->activations[l] > 0 ? pr[s] / f->activations[l] : 0,
                                                   er[s]));
        json_array_append_new(layers, curve);
    }
    fprintf(stderr, " (%.1f%% removed)\n", total > 0 ? 100 * removed / total : 0);
    free(at);
    return json_pack("{s:o, s:f, s:f, s:f, s:o}", "beta", beta, "protect_fraction",
                     (double)MOE_PRUNE_PROTECT_DEFAULT, "target_fraction", P->o->odp_target,
                     "calib_removed_fraction", total > 0 ? removed / total : 0.0,
                     "curves_beta_fraction_disturbance", layers);
}

void odp_fit_free(struct odp_fit *f)
{
    if (!f)
        return;
    free(f->measured);
    free(f->pruned);
    free(f->err);
    free(f->activations);
    free(f->freq);
    free(f);
}

json_t *odp_fit_frequencies(const struct packer *P)
{
    const struct odp_fit *f = P->odp;
    if (!f)
        return NULL;
    json_t *rows = json_array();
    for (int32_t l = 0; l < f->n_layers; l++) {
        json_t *row = json_array();
        for (int32_t e = 0; e < f->n_experts; e++)
            json_array_append_new(row, json_real(f->freq[(size_t)l * f->n_experts + e]));
        json_array_append_new(rows, row);
    }
    return json_pack("{s:o}", "expert_frequency", rows);
}
