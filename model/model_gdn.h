/* The gated delta rule of Gated DeltaNet layers (Qwen3-Next, Qwen3.5), one
 * head at a time, in its two forms. Per token t of a head:
 *
 *   S = exp(g_t) S                           S: [dk][dv], the recurrent state
 *   S += k_t (beta_t (v_t - S^T k_t))^T      the delta rule's correction
 *   o_t = S^T q_t
 *
 * q and k are already L2-normalised (q also scaled by 1/sqrt(dk)), g_t <= 0
 * is the log decay and beta_t in (0, 1) the write strength. The recurrent
 * form runs that loop (decode); the chunked form (prefill) processes up to
 * MOE_GDN_CHUNK tokens at a time with the WY/UT transform: the chunk's
 * corrections come from one triangular solve and a few matrix products,
 * and S is read and written once per chunk. Both give the same outputs
 * and final state up to rounding (tests/unit/test_gdn.c).
 *
 * Private to model/. */
#ifndef MOE_MODEL_GDN_H
#define MOE_MODEL_GDN_H

#include <stddef.h>
#include <stdint.h>

#define MOE_GDN_CHUNK 64
#define MOE_GDN_MAX_DV 1024

/* One head over n tokens: q, k [n] rows of dk at strides qs, ks; v, out
 * rows of dv at vs, os; g, beta [n] at stride gs. The state S is dk rows of
 * dv floats (wherever they lie: a sequence's KV units), updated in place. */
struct moe_gdn_head {
    int32_t n, dk, dv;
    const float *q, *k, *v, *g, *beta;
    size_t qs, ks, vs, gs, os;
    float *const *S;
    float *out;
};

static inline float moe_gdn_dot(const float *restrict a, const float *restrict b, int32_t n)
{
    float s = 0.0f;
    for (int32_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static inline void moe_gdn_axpy(float *restrict y, float a, const float *restrict x, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

void moe_gdn_recurrent(const struct moe_gdn_head *h);
/* work: moe_gdn_chunked_work(dk, dv) floats */
void moe_gdn_chunked(const struct moe_gdn_head *h, float *work);
size_t moe_gdn_chunked_work(int32_t dk, int32_t dv);
/* Test hook: which build runs (0 the plain C reference, 1 AVX2, 2
 * AVX-512, as enum moe_isa); -1 = the best this CPU has. Returns it. */
int moe_gdn_set_isa(int isa);

#endif
