/* moe-pack, MC-MoE pre-loading mixed precision (ALGORITHMS.md s.2): per layer
 * and expert, from the calibration tokens: activation frequency F (top-k
 * selections), activation weight Wt (summed routing weights of those
 * selections) and the output loss L[b] at b = 1, 2, 3 bits (the MoE block's
 * output with only that expert rounded to nearest, group 128: the L2 norm of
 * the change per calibration window, summed). Cost C = F * Wt^1.5 * L with F
 * and Wt normalised within the layer; the widths are the exact optimum of
 * the integer programme under the bit budget (quant_mcmoe.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "common/common.h"
#include "quant/quant_gq.h"
#include "quant/quant_mcmoe.h"
#include "tools/pack/pack.h"

struct ffn_bufs {
    float *gate, *up; /* [ne][F] */
};

/* expert ew's FFN (its biases and the model's activation) with fp32 weights W */
static void ffn_f32(struct packer *P, const struct moe_expert_weights *ew, float *const W[3],
                    const float *x, int64_t n, struct ffn_bufs *b, float *out)
{
    int64_t H = ew->gate.cols, F = ew->gate.rows;
    struct moe_expert_weights w = {
        .gate = {MOE_DTYPE_F32, F, H, (size_t)H * 4, W[0], 0, NULL},
        .up = {MOE_DTYPE_F32, F, H, (size_t)H * 4, W[1], 0, NULL},
        .down = {MOE_DTYPE_F32, H, F, (size_t)F * 4, W[2], 0, NULL},
        .b_gate = ew->b_gate, .b_up = ew->b_up, .b_down = ew->b_down,
    };
    moe_expert_ffn(P->pool, &w, &P->m->ffn, x, (int32_t)n, b->gate, b->up, out);
}

/* L[b-1] for one expert: its weights in fp32 W (gate, up, down), its tokens
 * xe[ne] (token numbers idx, routing weights rw), the full-precision outputs yfp. */
static int expert_losses(struct packer *P, const struct moe_expert_weights *ew,
                         float *const W[3], const float *xe, const int64_t *idx, const float *rw,
                         int64_t ne, const float *yfp, struct ffn_bufs *b, float *yq, double L[3])
{
    int64_t H = ew->gate.cols, F = ew->gate.rows;
    const struct moe_weight *src[3] = {&ew->gate, &ew->up, &ew->down};
    float *Wq[3] = {0};
    int rc = 0;
    for (int i = 0; i < 3 && rc == 0; i++)
        if (!(Wq[i] = malloc((size_t)H * F * sizeof(float))))
            rc = moe_err(-ENOMEM, "out of memory");
    double *win = calloc((size_t)P->o->calib_tokens / CALIB_SEQ + 2, sizeof(double));
    if (!win && rc == 0)
        rc = moe_err(-ENOMEM, "out of memory");
    for (int bits = 1; bits <= 3 && rc == 0; bits++) {
        struct matrix_spec rtn = {moe_gq_dtype(bits), false, bits};
        for (int i = 0; i < 3 && rc == 0; i++) {
            struct matrix_out mo = {0};
            memcpy(Wq[i], W[i], (size_t)H * F * sizeof(float));
            rc = encode_matrix(P, &rtn, Wq[i], src[i]->rows, src[i]->cols, NULL, 0, &mo);
            free(mo.data);
        }
        if (rc < 0)
            break;
        ffn_f32(P, ew, Wq, xe, ne, b, yq);
        int64_t n_win = 0;
        for (int64_t t = 0; t < ne; t++) { /* per window: sum of squares of the change */
            int64_t wi = idx[t] / CALIB_SEQ;
            n_win = MOE_MAX(n_win, wi + 1);
            double ss = 0;
            for (int64_t k = 0; k < H; k++) {
                double d = (double)rw[t] * (yfp[t * H + k] - yq[t * H + k]);
                ss += d * d;
            }
            win[wi] += ss;
        }
        L[bits - 1] = 0;
        for (int64_t wi = 0; wi < n_win; wi++) {
            L[bits - 1] += sqrt(win[wi]);
            win[wi] = 0;
        }
    }
    for (int i = 0; i < 3; i++)
        free(Wq[i]);
    free(win);
    return rc;
}

/* freq, wt (normalised within the layer) and loss[e*3 + b-1] of layer l, and
 * cost = F * Wt^1.5 * L, into the packer's per-layer tables */
static int layer_stats(struct packer *P, const struct calib *cb, int32_t l)
{
    const struct moe_config *c = &P->m->cfg;
    int32_t E = c->n_experts;
    int64_t H = c->hidden, F = c->expert_ffn, N = calib_tokens(cb);
    double *freq = P->mc_freq + (size_t)l * E, *wt = P->mc_wt + (size_t)l * E;
    double *loss = P->mc_loss + (size_t)l * E * 3, *cost = P->mc_cost + (size_t)l * E * 3;
    float *xe = malloc((size_t)N * H * sizeof(float)), *rw = malloc((size_t)N * sizeof(float));
    int64_t *idx = malloc((size_t)N * sizeof(int64_t));
    float *yfp = malloc((size_t)N * H * sizeof(float)), *yq = malloc((size_t)N * H * sizeof(float));
    struct ffn_bufs b = {malloc((size_t)N * F * sizeof(float)), malloc((size_t)N * F * sizeof(float))};
    float *W[3] = {malloc((size_t)H * F * sizeof(float)), malloc((size_t)H * F * sizeof(float)),
                   malloc((size_t)H * F * sizeof(float))};
    int rc = 0;
    if (!xe || !rw || !idx || !yfp || !yq || !b.gate || !b.up ||
        !W[0] || !W[1] || !W[2]) {
        rc = moe_err(-ENOMEM, "out of memory");
        goto out;
    }
    for (int64_t t = 0; t < N; t++)
        for (int32_t j = 0; j < cb->routes[t].n; j++) {
            freq[cb->routes[t].expert[j]] += 1;
            wt[cb->routes[t].expert[j]] += cb->routes[t].weight[j];
        }
    double fsum = 0, wsum = 0;
    for (int32_t e = 0; e < E; e++) {
        fsum += freq[e];
        wsum += wt[e];
    }
    for (int32_t e = 0; e < E && rc == 0; e++) {
        const struct moe_expert_weights *ew = &P->m->layers[l].experts[e];
        int64_t ne = calib_expert_inputs(cb, e, xe, idx, rw);
        if (ne == 0)
            continue; /* never chosen: no loss, its cost is 0 at any width */
        weight_to_f32(&ew->gate, W[0]);
        weight_to_f32(&ew->up, W[1]);
        weight_to_f32(&ew->down, W[2]);
        ffn_f32(P, ew, W, xe, ne, &b, yfp);
        rc = expert_losses(P, ew, W, xe, idx, rw, ne, yfp, &b, yq, &loss[e * 3]);
    }
    for (int32_t e = 0; e < E && rc == 0; e++) {
        freq[e] = fsum > 0 ? freq[e] / fsum : 0;
        wt[e] = wsum > 0 ? wt[e] / wsum : 0;
        for (int k = 0; k < 3; k++)
            cost[e * 3 + k] = P->o->mcmoe_cost_paper ? freq[e] * pow(wt[e], 1.5) * loss[e * 3 + k]
                                                     : loss[e * 3 + k];
    }
out:
    free(xe);
    free(rw);
    free(idx);
    free(yfp);
    free(yq);
    free(b.gate);
    free(b.up);
    for (int i = 0; i < 3; i++)
        free(W[i]);
    return rc;
}

static void shuffle_widths(const struct packer *P, int32_t l, int32_t E, uint8_t *bits)
{
    uint64_t s = (uint64_t)P->o->mcmoe_shuffle * 0x9e3779b97f4a7c15ull + (uint64_t)l + 1;
    for (int32_t e = E - 1; e > 0; e--) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17; /* xorshift64 */
        int32_t j = (int32_t)(s % (uint64_t)(e + 1));
        uint8_t t = bits[e];
        bits[e] = bits[j];
        bits[j] = t;
    }
}

int mcmoe_tables_alloc(struct packer *P)
{
    size_t n = (size_t)P->m->cfg.n_layers * (size_t)P->m->cfg.n_experts;
    P->mc_freq = calloc(n, sizeof(double));
    P->mc_wt = calloc(n, sizeof(double));
    P->mc_loss = calloc(n * 3, sizeof(double));
    P->mc_cost = calloc(n * 3, sizeof(double));
    P->mc_bits = calloc(n, 1);
    if (!P->mc_freq || !P->mc_wt || !P->mc_loss || !P->mc_cost || !P->mc_bits)
        return moe_err(-ENOMEM, "out of memory");
    return 0;
}

void mcmoe_tables_free(struct packer *P)
{
    free(P->mc_freq);
    free(P->mc_wt);
    free(P->mc_loss);
    free(P->mc_cost);
    free(P->mc_bits);
}

int mcmoe_layer_widths(struct packer *P, const struct calib *cb, int32_t l, uint8_t *bits)
{
    int32_t E = P->m->cfg.n_experts;
    const double *cost = P->mc_cost + (size_t)l * E * 3;
    double best = 0;
    int rc;
    int32_t budget = (int32_t)floor(P->o->mcmoe_bits * E + 1e-9);
    if (P->mcmoe_global) { /* chosen for the whole model beforehand */
        memcpy(bits, P->mc_bits + (size_t)l * E, (size_t)E);
    } else {
        if ((rc = layer_stats(P, cb, l)) < 0)
            return rc;
        if ((rc = moe_mcmoe_allocate(E, cost, budget, bits, &best)) < 0)
            return rc;
    }
    if (P->o->mcmoe_shuffle > 0) /* the baseline: the same widths, placed blind */
        shuffle_widths(P, l, E, bits);
    budget = 0;
    best = 0;
    for (int32_t e = 0; e < E; e++) {
        budget += bits[e];
        best += cost[e * 3 + bits[e] - 1];
    }
    const double *freq = P->mc_freq + (size_t)l * E, *wt = P->mc_wt + (size_t)l * E;
    const double *loss = P->mc_loss + (size_t)l * E * 3;
    json_t *jf = json_array(), *jw = json_array(), *jl = json_array(), *jb = json_array();
    fprintf(stderr, "moe-pack: layer %d widths:", l);
    for (int32_t e = 0; e < E; e++) {
        json_array_append_new(jf, json_real(freq[e]));
        json_array_append_new(jw, json_real(wt[e]));
        json_array_append_new(jl, json_pack("[f,f,f]", loss[e * 3], loss[e * 3 + 1], loss[e * 3 + 2]));
        json_array_append_new(jb, json_integer(bits[e]));
        fprintf(stderr, " %d", bits[e]);
    }
    fprintf(stderr, " (%d bits over %d experts)\n", budget, E);
    json_array_append_new(P->mcmoe, json_pack("{s:i, s:o, s:o, s:o, s:o, s:f}", "layer", l,
                                              "frequency", jf, "weight", jw, "loss", jl, "bits",
                                              jb, "cost", best));
    return 0;
}

/* --mcmoe-scope model: one budget for all layers. The statistics of every
 * layer come first, from a pass over the calibration text with the original
 * experts; then, for each layer, the optimum at every budget it could get
 * (its own integer programme), and a knapsack over layers picks how many bits
 * each layer gets. Costs of different layers are compared as they are: each
 * is the change of the residual stream that the layer's output adds to. */
int mcmoe_model_widths(struct packer *P, struct calib *cb)
{
    const struct moe_config *c = &P->m->cfg;
    int32_t E = c->n_experts, L = c->n_layers, lo = 3 + 2 + (E - 2), hi = 3 * E - 1;
    int32_t span = hi - lo + 1;
    int32_t total = (int32_t)floor(P->o->mcmoe_bits * E + 1e-9), moe_layers = 0;
    double *best = malloc((size_t)L * span * sizeof(double));
    uint8_t *opt = malloc((size_t)L * span * E);
    int rc = 0;
    if (!best || !opt) {
        rc = moe_err(-ENOMEM, "out of memory");
        goto out;
    }
    for (int32_t l = 0; l < L && rc == 0; l++) {
        if (c->layer_dense[l]) {
            rc = calib_run_layer(P->m, P->pool, cb, l, false, true);
            continue;
        }
        moe_layers++;
        if ((rc = calib_run_layer(P->m, P->pool, cb, l, true, false)) < 0 ||
            (rc = layer_stats(P, cb, l)) < 0)
            break;
        for (int32_t b = lo; b <= hi && rc == 0; b++)
            rc = moe_mcmoe_allocate(E, P->mc_cost + (size_t)l * E * 3, b,
                                    opt + ((size_t)l * span + (b - lo)) * E,
                                    &best[(size_t)l * span + (b - lo)]);
        if (rc == 0 && l + 1 < L)
            rc = calib_run_layer(P->m, P->pool, cb, l, false, true);
    }
    if (rc < 0)
        goto out;
    total = MOE_MAX(total * moe_layers, 0);
    /* knapsack over layers: dp[j] = least cost of the layers so far with j bits */
    int32_t cap = total + 1;
    double *dp = malloc((size_t)cap * sizeof(double)), *nd = malloc((size_t)cap * sizeof(double));
    int32_t *pick = malloc((size_t)L * cap * sizeof(int32_t));
    if (!dp || !nd || !pick) {
        free(dp);
        free(nd);
        free(pick);
        rc = moe_err(-ENOMEM, "out of memory");
        goto out;
    }
    for (int32_t j = 0; j < cap; j++)
        dp[j] = j == 0 ? 0 : INFINITY;
    for (int32_t l = 0; l < L; l++) {
        for (int32_t j = 0; j < cap; j++) {
            nd[j] = c->layer_dense[l] ? dp[j] : INFINITY;
            pick[(size_t)l * cap + j] = -1;
        }
        for (int32_t j = 0; j < cap && !c->layer_dense[l]; j++)
            for (int32_t b = lo; b <= hi && b <= j; b++) {
                double v = dp[j - b] + best[(size_t)l * span + (b - lo)];
                if (v < nd[j]) {
                    nd[j] = v;
                    pick[(size_t)l * cap + j] = b;
                }
            }
        memcpy(dp, nd, (size_t)cap * sizeof(double));
    }
    int32_t j = 0;
    double least = INFINITY;
    for (int32_t k = 0; k < cap; k++)
        if (dp[k] < least) {
            least = dp[k];
            j = k;
        }
    if (!(least < INFINITY))
        rc = moe_err(-EINVAL, "mcmoe:%g cannot give every layer a 3-bit and a 2-bit expert",
                     P->o->mcmoe_bits);
    for (int32_t l = L - 1; l >= 0 && rc == 0; l--) {
        if (c->layer_dense[l])
            continue;
        int32_t b = pick[(size_t)l * cap + j];
        memcpy(P->mc_bits + (size_t)l * E, opt + ((size_t)l * span + (b - lo)) * E, (size_t)E);
        j -= b;
    }
    free(dp);
    free(nd);
    free(pick);
    P->mcmoe_global = rc == 0;
out:
    free(best);
    free(opt);
    return rc;
}
