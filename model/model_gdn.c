/* The gated delta rule, recurrent and chunked (model_gdn.h). Plain C: the
 * inner loops run over dv contiguous floats and vectorise as they are. */
#include <math.h>
#include <string.h>

#include "model/model_gdn.h"

static float dot(const float *a, const float *b, int32_t n)
{
    float s = 0.0f;
    for (int32_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void axpy(float *y, float a, const float *x, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

void moe_gdn_recurrent(const struct moe_gdn_head *h)
{
    int32_t dk = h->dk, dv = h->dv;
    float *S = h->S;
    for (int32_t t = 0; t < h->n; t++) {
        const float *q = h->q + (size_t)t * h->qs, *k = h->k + (size_t)t * h->ks;
        const float *v = h->v + (size_t)t * h->vs;
        float decay = expf(h->g[(size_t)t * h->gs]), beta = h->beta[(size_t)t * h->gs];
        float *o = h->out + (size_t)t * h->os; /* first S^T k, then the output */
        memset(o, 0, (size_t)dv * sizeof(float));
        for (int32_t a = 0; a < dk; a++) {
            float *row = S + (size_t)a * dv;
            for (int32_t j = 0; j < dv; j++)
                row[j] *= decay;
            axpy(o, k[a], row, dv);
        }
        for (int32_t j = 0; j < dv; j++) /* delta = beta (v - S^T k) */
            o[j] = beta * (v[j] - o[j]);
        float delta[1024];
        memcpy(delta, o, (size_t)dv * sizeof(float));
        memset(o, 0, (size_t)dv * sizeof(float));
        for (int32_t a = 0; a < dk; a++) {
            float *row = S + (size_t)a * dv;
            axpy(row, k[a], delta, dv);
            axpy(o, q[a], row, dv);
        }
    }
}

size_t moe_gdn_chunked_work(int32_t dk, int32_t dv)
{
    size_t C = MOE_GDN_CHUNK;
    return 2 * C + C * (size_t)dv + C * (size_t)dk;
}

/* Per chunk of m tokens, gc the cumulative log decay inside it and
 * L[i][j] = beta_i (k_i . k_j) exp(gc_i - gc_j) for j < i (each computed
 * where the forward substitution needs it):
 *   U = (I + L)^-1 (beta v),  W = (I + L)^-1 (beta exp(gc) k)   (WY/UT)
 *   v' = U - W S                 the corrections, given the state before
 *   o_i = exp(gc_i) q_i S + sum_{j<=i} (q_i . k_j) exp(gc_i - gc_j) v'_j
 *   S = exp(gc_m) S + sum_j exp(gc_m - gc_j) k_j v'_j^T */
void moe_gdn_chunked(const struct moe_gdn_head *h, float *work)
{
    const int32_t C = MOE_GDN_CHUNK, dk = h->dk, dv = h->dv;
    float *gc = work, *kd = gc + C, *U = kd + C;
    float *W = U + (size_t)C * dv;
    float *S = h->S;
    for (int32_t c0 = 0; c0 < h->n; c0 += C) {
        int32_t m = h->n - c0 < C ? h->n - c0 : C;
        const float *q = h->q + (size_t)c0 * h->qs, *k = h->k + (size_t)c0 * h->ks;
        const float *v = h->v + (size_t)c0 * h->vs, *g = h->g + (size_t)c0 * h->gs;
        const float *beta = h->beta + (size_t)c0 * h->gs;
        float *out = h->out + (size_t)c0 * h->os;
#define Q(i) (q + (size_t)(i) * h->qs)
#define K(i) (k + (size_t)(i) * h->ks)
        float acc = 0.0f;
        for (int32_t i = 0; i < m; i++) {
            acc += g[(size_t)i * h->gs];
            gc[i] = acc;
        }
        for (int32_t i = 0; i < m; i++) {
            float b = beta[(size_t)i * h->gs];
            float *u = U + (size_t)i * dv, *w = W + (size_t)i * dk;
            for (int32_t j = 0; j < dv; j++)
                u[j] = b * v[(size_t)i * h->vs + j];
            float e = b * expf(gc[i]);
            for (int32_t a = 0; a < dk; a++)
                w[a] = e * K(i)[a];
            for (int32_t j = 0; j < i; j++) { /* forward substitution */
                float lij = b * dot(K(i), K(j), dk) * expf(gc[i] - gc[j]);
                axpy(u, -lij, U + (size_t)j * dv, dv);
                axpy(w, -lij, W + (size_t)j * dk, dk);
            }
        }
        for (int32_t i = 0; i < m; i++) { /* v' = U - W S, in U */
            float *u = U + (size_t)i * dv;
            const float *w = W + (size_t)i * dk;
            for (int32_t a = 0; a < dk; a++)
                axpy(u, -w[a], S + (size_t)a * dv, dv);
        }
        for (int32_t i = 0; i < m; i++) {
            float *o = out + (size_t)i * h->os;
            memset(o, 0, (size_t)dv * sizeof(float));
            for (int32_t a = 0; a < dk; a++)
                axpy(o, Q(i)[a], S + (size_t)a * dv, dv);
            float e = expf(gc[i]);
            for (int32_t j = 0; j < dv; j++)
                o[j] *= e;
            for (int32_t j = 0; j <= i; j++)
                axpy(o, dot(Q(i), K(j), dk) * expf(gc[i] - gc[j]), U + (size_t)j * dv, dv);
        }
        float last = gc[m - 1], dl = expf(last);
        for (int32_t j = 0; j < m; j++)
            kd[j] = expf(last - gc[j]);
        for (int32_t a = 0; a < dk; a++) {
            float *row = S + (size_t)a * dv;
            for (int32_t j = 0; j < dv; j++)
                row[j] *= dl;
            for (int32_t j = 0; j < m; j++)
                axpy(row, K(j)[a] * kd[j], U + (size_t)j * dv, dv);
        }
#undef Q
#undef K
    }
}
