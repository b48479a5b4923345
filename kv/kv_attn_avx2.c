/* AVX2 + FMA + F16C kernels for attention on the compressed cache (called
 * only after a cpuid check); shapes they do not cover go to the reference. */
#include "kv/kv_attn_simd.h"

static void k_scores_avx2(int bits, int G, int D, const uint8_t *codes, const uint16_t *scale,
                          const uint16_t *min, const float *q, float *acc)
{
    if (!k_scores256(bits, G, D, codes, scale, min, q, acc))
        moe_kv_ops_ref.k_scores(bits, G, D, codes, scale, min, q, acc);
}

static void v_accum_avx2(int bits, int Gv, int D, const uint8_t *codes, const uint16_t *sm,
                         const float *p, int cnt, float *out)
{
    if (!v_accum256(bits, Gv, D, codes, sm, p, cnt, out))
        moe_kv_ops_ref.v_accum(bits, Gv, D, codes, sm, p, cnt, out);
}

static void k_accum_avx2(int bits, int G, int Dv, const uint8_t *codes, const uint16_t *scale,
                         const uint16_t *min, const float *p, int cnt, float *out)
{
    if (!k_accum256(bits, G, Dv, codes, scale, min, p, cnt, out))
        moe_kv_ops_ref.k_accum(bits, G, Dv, codes, scale, min, p, cnt, out);
}

static float dot_f16_avx2(const float *q, const uint16_t *k, int D)
{
    float r;
    return dot_f16_256(q, k, D, &r) ? r : moe_kv_ops_ref.dot_f16(q, k, D);
}

static void axpy_f16_avx2(float *out, float a, const uint16_t *v, int D)
{
    if (!axpy_f16_256(out, a, v, D))
        moe_kv_ops_ref.axpy_f16(out, a, v, D);
}

const struct moe_kv_ops moe_kv_ops_avx2 = {k_scores_avx2, v_accum_avx2, k_accum_avx2, dot_f16_avx2,
                                           axpy_f16_avx2};
