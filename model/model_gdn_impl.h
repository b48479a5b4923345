/* The gated delta rule's kernels (model_gdn.h), written once in plain C
 * and compiled three times: model_gdn.c (the baseline x86-64 build: the
 * reference), model_gdn_avx2.c and model_gdn_avx512.c (the same code, which
 * the compiler vectorises for the wider ISA). Every inner loop runs over
 * contiguous floats; GDN_NAME gives each build's names. */
#include <math.h>
#include <string.h>

#include "model/model_gdn.h"

static inline float GDN_NAME(dot)(const float *restrict a, const float *restrict b, int32_t n)
{
    float s = 0.0f;
    for (int32_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static inline void GDN_NAME(axpy)(float *restrict y, float a, const float *restrict x,
                                  int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

/* Per token: kvm = S^T k (S read once, as it was), delta = beta (v - decay
 * kvm), then one pass writing S = decay S + k delta^T and reading o = S^T q. */
void GDN_NAME(moe_gdn_recurrent)(const struct moe_gdn_head *h)
{
    int32_t dk = h->dk, dv = h->dv;
    float *const *S = h->S;
    float delta[MOE_GDN_MAX_DV];
    for (int32_t t = 0; t < h->n; t++) {
        const float *q = h->q + (size_t)t * h->qs, *k = h->k + (size_t)t * h->ks;
        const float *v = h->v + (size_t)t * h->vs;
        float decay = expf(h->g[(size_t)t * h->gs]), beta = h->beta[(size_t)t * h->gs];
        float *o = h->out + (size_t)t * h->os;
        memset(delta, 0, (size_t)dv * sizeof(float));
        for (int32_t a = 0; a < dk; a++)
            GDN_NAME(axpy)(delta, k[a], S[a], dv);
        for (int32_t j = 0; j < dv; j++)
            delta[j] = beta * (v[j] - decay * delta[j]);
        memset(o, 0, (size_t)dv * sizeof(float));
        for (int32_t a = 0; a < dk; a++) {
            float *restrict row = S[a];
            float ka = k[a], qa = q[a];
            for (int32_t j = 0; j < dv; j++) {
                float s = decay * row[j] + ka * delta[j];
                row[j] = s;
                o[j] += qa * s;
            }
        }
    }
}

/* Per chunk of m tokens, gc the cumulative log decay inside it and
 * L[i][j] = beta_i (k_i . k_j) exp(gc_i - gc_j) for j < i (each computed
 * where the forward substitution needs it):
 *   U = (I + L)^-1 (beta v),  W = (I + L)^-1 (beta exp(gc) k)   (WY/UT)
 *   v' = U - W S                 the corrections, given the state before
 *   o_i = exp(gc_i) q_i S + sum_{j<=i} (q_i . k_j) exp(gc_i - gc_j) v'_j
 *   S = exp(gc_m) S + sum_j exp(gc_m - gc_j) k_j v'_j^T */
void GDN_NAME(moe_gdn_chunked)(const struct moe_gdn_head *h, float *work)
{
    const int32_t C = MOE_GDN_CHUNK, dk = h->dk, dv = h->dv;
    float *gc = work, *kd = gc + C, *U = kd + C;
    float *W = U + (size_t)C * dv;
    float *const *S = h->S;
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
                float lij = b * GDN_NAME(dot)(K(i), K(j), dk) * expf(gc[i] - gc[j]);
                GDN_NAME(axpy)(u, -lij, U + (size_t)j * dv, dv);
                GDN_NAME(axpy)(w, -lij, W + (size_t)j * dk, dk);
            }
        }
        for (int32_t i = 0; i < m; i++) { /* v' = U - W S, in U */
            float *u = U + (size_t)i * dv;
            const float *w = W + (size_t)i * dk;
            for (int32_t a = 0; a < dk; a++)
                GDN_NAME(axpy)(u, -w[a], S[a], dv);
        }
        for (int32_t i = 0; i < m; i++) {
            float *o = out + (size_t)i * h->os;
            memset(o, 0, (size_t)dv * sizeof(float));
            for (int32_t a = 0; a < dk; a++)
                GDN_NAME(axpy)(o, Q(i)[a], S[a], dv);
            float e = expf(gc[i]);
            for (int32_t j = 0; j < dv; j++)
                o[j] *= e;
            for (int32_t j = 0; j <= i; j++)
                GDN_NAME(axpy)(o, GDN_NAME(dot)(Q(i), K(j), dk) * expf(gc[i] - gc[j]),
                               U + (size_t)j * dv, dv);
        }
        float last = gc[m - 1], dl = expf(last);
        for (int32_t j = 0; j < m; j++)
            kd[j] = expf(last - gc[j]);
        for (int32_t a = 0; a < dk; a++) {
            float *row = S[a];
            for (int32_t j = 0; j < dv; j++)
                row[j] *= dl;
            for (int32_t j = 0; j < m; j++)
                GDN_NAME(axpy)(row, K(j)[a] * kd[j], U + (size_t)j * dv, dv);
        }
#undef Q
#undef K
    }
}
