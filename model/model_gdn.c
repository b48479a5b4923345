/* The gated delta rule (model_gdn.h): the plain C reference, which the
 * fast builds of model_gdn_impl.h are tested against, and the choice of the
 * build this CPU runs best. */
#include <math.h>
#include <string.h>

#include "common/common.h"
#include "model/model_gdn.h"
#include "quant/quant.h"

/* the rule token by token, as transformers' torch_recurrent_gated_delta_rule */
static void recurrent_ref(const struct moe_gdn_head *h)
{
    int32_t dk = h->dk, dv = h->dv;
    float *const *S = h->S;
    float kvm[MOE_GDN_MAX_DV];
    for (int32_t t = 0; t < h->n; t++) {
        const float *q = h->q + (size_t)t * h->qs, *k = h->k + (size_t)t * h->ks;
        const float *v = h->v + (size_t)t * h->vs;
        float decay = expf(h->g[(size_t)t * h->gs]), beta = h->beta[(size_t)t * h->gs];
        float *o = h->out + (size_t)t * h->os;
        memset(kvm, 0, (size_t)dv * sizeof(float));
        for (int32_t a = 0; a < dk; a++) {
            for (int32_t j = 0; j < dv; j++)
                S[a][j] *= decay;
            moe_gdn_axpy(kvm, k[a], S[a], dv);
        }
        for (int32_t j = 0; j < dv; j++)
            kvm[j] = beta * (v[j] - kvm[j]); /* the correction delta */
        memset(o, 0, (size_t)dv * sizeof(float));
        for (int32_t a = 0; a < dk; a++) {
            moe_gdn_axpy(S[a], k[a], kvm, dv);
            moe_gdn_axpy(o, q[a], S[a], dv);
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
static void chunked_ref(const struct moe_gdn_head *h, float *work)
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
                float lij = b * moe_gdn_dot(K(i), K(j), dk) * expf(gc[i] - gc[j]);
                moe_gdn_axpy(u, -lij, U + (size_t)j * dv, dv);
                moe_gdn_axpy(w, -lij, W + (size_t)j * dk, dk);
            }
        }
        for (int32_t i = 0; i < m; i++) { /* v' = U - W S, in U */
            float *u = U + (size_t)i * dv;
            const float *w = W + (size_t)i * dk;
            for (int32_t a = 0; a < dk; a++)
                moe_gdn_axpy(u, -w[a], S[a], dv);
        }
        for (int32_t i = 0; i < m; i++) {
            float *o = out + (size_t)i * h->os;
            memset(o, 0, (size_t)dv * sizeof(float));
            for (int32_t a = 0; a < dk; a++)
                moe_gdn_axpy(o, Q(i)[a], S[a], dv);
            float e = expf(gc[i]);
            for (int32_t j = 0; j < dv; j++)
                o[j] *= e;
            for (int32_t j = 0; j <= i; j++)
                moe_gdn_axpy(o, moe_gdn_dot(Q(i), K(j), dk) * expf(gc[i] - gc[j]),
                             U + (size_t)j * dv, dv);
        }
        float last = gc[m - 1], dl = expf(last);
        for (int32_t j = 0; j < m; j++)
            kd[j] = expf(last - gc[j]);
        for (int32_t a = 0; a < dk; a++) {
            for (int32_t j = 0; j < dv; j++)
                S[a][j] *= dl;
            for (int32_t j = 0; j < m; j++)
                moe_gdn_axpy(S[a], K(j)[a] * kd[j], U + (size_t)j * dv, dv);
        }
#undef Q
#undef K
    }
}

void moe_gdn_recurrent_avx2(const struct moe_gdn_head *h);
void moe_gdn_chunked_avx2(const struct moe_gdn_head *h, float *work);
void moe_gdn_recurrent_avx512(const struct moe_gdn_head *h);
void moe_gdn_chunked_avx512(const struct moe_gdn_head *h, float *work);

static const struct {
    void (*recurrent)(const struct moe_gdn_head *h);
    void (*chunked)(const struct moe_gdn_head *h, float *work);
} builds[MOE_ISA_COUNT] = {
    [MOE_ISA_REF] = {recurrent_ref, chunked_ref},
#ifndef MOE_NO_SIMD
    [MOE_ISA_AVX2] = {moe_gdn_recurrent_avx2, moe_gdn_chunked_avx2},
    [MOE_ISA_AVX512] = {moe_gdn_recurrent_avx512, moe_gdn_chunked_avx512},
#endif
};

static int isa = -1;

int moe_gdn_set_isa(int want)
{
    int best = (int)moe_isa_best();
#ifdef MOE_NO_SIMD
    best = MOE_ISA_REF;
#endif
    isa = want < 0 || want > best ? best : want;
    return isa;
}

void moe_gdn_recurrent(const struct moe_gdn_head *h)
{
    if (isa < 0)
        moe_gdn_set_isa(-1);
    builds[isa].recurrent(h);
}

void moe_gdn_chunked(const struct moe_gdn_head *h, float *work)
{
    if (isa < 0)
        moe_gdn_set_isa(-1);
    builds[isa].chunked(h, work);
}

/* the fast builds' need, the larger: gc, kd; G, Aqk, T [C][C]; VB, U
 * [C][dv]; KB, W [C][dk]; KT, KD [dk][C]; six pointer arrays of max(C, dk)
 * (two floats per pointer) */
size_t moe_gdn_chunked_work(int32_t dk, int32_t dv)
{
    size_t C = MOE_GDN_CHUNK, k = (size_t)dk, v = (size_t)dv, big = C > k ? C : k;
    return 2 * C + 3 * C * C + 2 * C * v + 2 * C * k + 2 * k * C + 6 * 2 * big;
}
