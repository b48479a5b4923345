/* The gated delta rule's fast kernels (model_gdn.h), compiled for AVX2
 * (model_gdn_avx2.c) and AVX-512 (model_gdn_avx512.c) from this one source
 * with GCC's vector extensions; model_gdn.c holds the plain C reference
 * they are tested against. Decode reads the state once and writes it once;
 * the chunked form is a handful of small matrix products (register tiles of
 * 4 x 32). GDN_NAME gives each build's names. */
#include <math.h>
#include <string.h>

#include "model/model_gdn.h"

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
            moe_gdn_axpy(delta, k[a], S[a], dv);
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

/* ---- the chunked form as small matrix products ------------------------------ */

typedef float GDN_NAME(vf) __attribute__((vector_size(64), aligned(4)));
#define VF GDN_NAME(vf)

/* C[i] += A[i] . B over k < K for i < m, columns j < n: A row i at A + i
 * lda, B's and C's rows by pointer. Tiles of 4 rows x 32 columns held in
 * registers over the whole k loop. */
static void GDN_NAME(gemm)(int32_t m, int32_t n, int32_t K, const float *A, size_t lda,
                           const float *const *B, float *const *Cr)
{
    int32_t nv = n / 32 * 32, i = 0;
    for (; i + 4 <= m; i += 4) {
        const float *a0 = A + (size_t)i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        for (int32_t j = 0; j < nv; j += 32) {
            VF c[4][2];
            for (int r = 0; r < 4; r++)
                for (int h = 0; h < 2; h++)
                    c[r][h] = *(const VF *)(Cr[i + r] + j + 16 * h);
            for (int32_t k = 0; k < K; k++) {
                VF b0 = *(const VF *)(B[k] + j), b1 = *(const VF *)(B[k] + j + 16);
                c[0][0] += a0[k] * b0, c[0][1] += a0[k] * b1;
                c[1][0] += a1[k] * b0, c[1][1] += a1[k] * b1;
                c[2][0] += a2[k] * b0, c[2][1] += a2[k] * b1;
                c[3][0] += a3[k] * b0, c[3][1] += a3[k] * b1;
            }
            for (int r = 0; r < 4; r++)
                for (int h = 0; h < 2; h++)
                    *(VF *)(Cr[i + r] + j + 16 * h) = c[r][h];
        }
        for (int32_t r = 0; r < 4 && nv < n; r++) /* the columns past the last tile */
            for (int32_t k = 0; k < K; k++)
                for (int32_t j = nv; j < n; j++)
                    Cr[i + r][j] += A[(size_t)(i + r) * lda + k] * B[k][j];
    }
    for (; i < m; i++)
        for (int32_t k = 0; k < K; k++)
            moe_gdn_axpy(Cr[i], A[(size_t)i * lda + k], B[k], n);
}
#undef VF

/* Per chunk of m tokens, gc the cumulative log decay inside it (the
 * transformers / FLA formulation, as matrix products):
 *   L = strictly-lower(diag(beta) K K^T) . exp(gc_i - gc_j),  T = (I + L)^-1
 *   U = T diag(beta) V,  W = T diag(beta exp(gc)) K          (WY/UT)
 *   V' = U - W S                      the corrections, given the state before
 *   O = diag(exp(gc)) Q S + (lower(Q K^T) . exp(gc_i - gc_j)) V'
 *   S = exp(gc_m) S + (K . exp(gc_m - gc))^T V' */
void GDN_NAME(moe_gdn_chunked)(const struct moe_gdn_head *h, float *work)
{
    const int32_t C = MOE_GDN_CHUNK, dk = h->dk, dv = h->dv, big = C > dk ? C : dk;
    float *gc = work, *kd = gc + C, *G = kd + C, *Aq = G + C * C, *T = Aq + C * C;
    float *VB = T + C * C, *U = VB + (size_t)C * dv, *KB = U + (size_t)C * dv;
    float *W = KB + (size_t)C * dk, *KT = W + (size_t)C * dk, *KD = KT + (size_t)dk * C;
    float **p0 = (float **)(void *)(KD + (size_t)dk * C), **p1 = p0 + big, **p2 = p1 + big;
    float **p3 = p2 + big, **p4 = p3 + big, **p5 = p4 + big;
    float *const *S = h->S;
    for (int32_t c0 = 0; c0 < h->n; c0 += C) {
        int32_t m = h->n - c0 < C ? h->n - c0 : C;
        const float *q = h->q + (size_t)c0 * h->qs, *k = h->k + (size_t)c0 * h->ks;
        const float *v = h->v + (size_t)c0 * h->vs, *g = h->g + (size_t)c0 * h->gs;
        const float *beta = h->beta + (size_t)c0 * h->gs;
        float *out = h->out + (size_t)c0 * h->os;
        float acc = 0.0f;
        for (int32_t i = 0; i < m; i++) {
            acc += g[(size_t)i * h->gs];
            gc[i] = acc;
        }
        for (int32_t i = 0; i < m; i++) { /* K^T, beta v, beta exp(gc) k */
            const float *ki = k + (size_t)i * h->ks, *vi = v + (size_t)i * h->vs;
            float b = beta[(size_t)i * h->gs], e = b * expf(gc[i]);
            for (int32_t a = 0; a < dk; a++) {
                KT[(size_t)a * C + i] = ki[a];
                KB[(size_t)i * dk + a] = e * ki[a];
            }
            for (int32_t j = 0; j < dv; j++)
                VB[(size_t)i * dv + j] = b * vi[j];
        }
        /* G = K K^T and Aq = Q K^T over the chunk */
        for (int32_t a = 0; a < dk; a++)
            p0[a] = KT + (size_t)a * C;
        for (int32_t i = 0; i < m; i++) {
            p1[i] = G + (size_t)i * C, p2[i] = Aq + (size_t)i * C;
            memset(p1[i], 0, (size_t)m * sizeof(float));
            memset(p2[i], 0, (size_t)m * sizeof(float));
        }
        GDN_NAME(gemm)(m, m, dk, k, h->ks, (const float *const *)p0, p1);
        GDN_NAME(gemm)(m, m, dk, q, h->qs, (const float *const *)p0, p2);
        /* T = (I + L)^-1 by forward substitution, row by row */
        for (int32_t i = 0; i < m; i++) {
            float *ti = T + (size_t)i * C, b = beta[(size_t)i * h->gs];
            memset(ti, 0, (size_t)m * sizeof(float));
            ti[i] = 1.0f;
            for (int32_t l = 0; l < i; l++)
                moe_gdn_axpy(ti, -b * G[(size_t)i * C + l] * expf(gc[i] - gc[l]),
                               T + (size_t)l * C, l + 1);
        }
        /* U = T VB, W = T KB */
        for (int32_t i = 0; i < m; i++) {
            p0[i] = VB + (size_t)i * dv, p1[i] = U + (size_t)i * dv;
            p2[i] = KB + (size_t)i * dk, p3[i] = W + (size_t)i * dk;
            memset(p1[i], 0, (size_t)dv * sizeof(float));
            memset(p3[i], 0, (size_t)dk * sizeof(float));
        }
        GDN_NAME(gemm)(m, dv, m, T, C, (const float *const *)p0, p1);
        GDN_NAME(gemm)(m, dk, m, T, C, (const float *const *)p2, p3);
        /* V' = U - W S, in U */
        for (int32_t i = 0; i < m * dk; i++)
            W[i] = -W[i];
        GDN_NAME(gemm)(m, dv, dk, W, dk, (const float *const *)S, p1);
        /* O = diag(exp(gc)) Q S + (masked Aq) V' */
        for (int32_t i = 0; i < m; i++) {
            p4[i] = out + (size_t)i * h->os;
            memset(p4[i], 0, (size_t)dv * sizeof(float));
        }
        GDN_NAME(gemm)(m, dv, dk, q, h->qs, (const float *const *)S, p4);
        for (int32_t i = 0; i < m; i++) {
            float e = expf(gc[i]), *ai = Aq + (size_t)i * C;
            for (int32_t j = 0; j < dv; j++)
                p4[i][j] *= e;
            for (int32_t j = 0; j < m; j++)
                ai[j] = j <= i ? ai[j] * expf(gc[i] - gc[j]) : 0.0f;
        }
        GDN_NAME(gemm)(m, dv, m, Aq, C, (const float *const *)p1, p4);
        /* S = exp(gc_m) S + KD V', KD = K^T scaled per token */
        float last = gc[m - 1], dl = expf(last);
        for (int32_t j = 0; j < m; j++)
            kd[j] = expf(last - gc[j]);
        for (int32_t a = 0; a < dk; a++) {
            for (int32_t j = 0; j < m; j++)
                KD[(size_t)a * C + j] = KT[(size_t)a * C + j] * kd[j];
            for (int32_t j = 0; j < dv; j++)
                S[a][j] *= dl;
            p5[a] = S[a];
        }
        GDN_NAME(gemm)(dk, dv, m, KD, C, (const float *const *)p1, p5);
    }
}
