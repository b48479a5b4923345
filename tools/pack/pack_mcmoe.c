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

static void ffn_f32(struct moe_pool *pool, float *const W[3], int64_t H, int64_t F,
                    const float *x, int64_t n, struct ffn_bufs *b, float *out)
{
    struct moe_expert_weights w = {
        .gate = {MOE_DTYPE_F32, F, H, (size_t)H * 4, W[0], 0, NULL},
        .up = {MOE_DTYPE_F32, F, H, (size_t)H * 4, W[1], 0, NULL},
        .down = {MOE_DTYPE_F32, H, F, (size_t)F * 4, W[2], 0, NULL},
    };
    moe_expert_ffn(pool, &w, x, (int32_t)n, b->gate, b->up, out);
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
        ffn_f32(P->pool, Wq, H, F, xe, ne, b, yq);
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

int mcmoe_layer_widths(struct packer *P, const struct calib *cb, int32_t l, uint8_t *bits)
{
    const struct moe_config *c = &P->m->cfg;
    int32_t E = c->n_experts;
    int64_t H = c->hidden, F = c->expert_ffn, N = calib_tokens(cb);
    double *freq = calloc((size_t)E, sizeof(double)), *wt = calloc((size_t)E, sizeof(double));
    double *loss = calloc((size_t)E * 3, sizeof(double)), *cost = calloc((size_t)E * 3, sizeof(double));
    float *xe = malloc((size_t)N * H * sizeof(float)), *rw = malloc((size_t)N * sizeof(float));
    int64_t *idx = malloc((size_t)N * sizeof(int64_t));
    float *yfp = malloc((size_t)N * H * sizeof(float)), *yq = malloc((size_t)N * H * sizeof(float));
    struct ffn_bufs b = {malloc((size_t)N * F * sizeof(float)), malloc((size_t)N * F * sizeof(float))};
    float *W[3] = {malloc((size_t)H * F * sizeof(float)), malloc((size_t)H * F * sizeof(float)),
                   malloc((size_t)H * F * sizeof(float))};
    int rc = 0;
    if (!freq || !wt || !loss || !cost || !xe || !rw || !idx || !yfp || !yq || !b.gate || !b.up ||
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
        ffn_f32(P->pool, W, H, F, xe, ne, &b, yfp);
        rc = expert_losses(P, ew, W, xe, idx, rw, ne, yfp, &b, yq, &loss[e * 3]);
    }
    if (rc < 0)
        goto out;
    for (int32_t e = 0; e < E; e++) {
        double f = fsum > 0 ? freq[e] / fsum : 0, w = wsum > 0 ? wt[e] / wsum : 0;
        for (int k = 0; k < 3; k++)
            cost[e * 3 + k] = f * pow(w, 1.5) * loss[e * 3 + k];
    }
    int32_t budget = (int32_t)floor(P->o->mcmoe_bits * E + 1e-9);
    double best;
    if ((rc = moe_mcmoe_allocate(E, cost, budget, bits, &best)) < 0)
        goto out;

    json_t *jf = json_array(), *jw = json_array(), *jl = json_array(), *jb = json_array();
    fprintf(stderr, "moe-pack: layer %d widths:", l);
    for (int32_t e = 0; e < E; e++) {
        json_array_append_new(jf, json_real(fsum > 0 ? freq[e] / fsum : 0));
        json_array_append_new(jw, json_real(wsum > 0 ? wt[e] / wsum : 0));
        json_array_append_new(jl, json_pack("[f,f,f]", loss[e * 3], loss[e * 3 + 1], loss[e * 3 + 2]));
        json_array_append_new(jb, json_integer(bits[e]));
        fprintf(stderr, " %d", bits[e]);
    }
    fprintf(stderr, " (budget %d bits over %d experts)\n", budget, E);
    json_array_append_new(P->mcmoe, json_pack("{s:i, s:o, s:o, s:o, s:o, s:f}", "layer", l,
                                              "frequency", jf, "weight", jw, "loss", jl, "bits",
                                              jb, "cost", best));
out:
    free(freq);
    free(wt);
    free(loss);
    free(cost);
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
