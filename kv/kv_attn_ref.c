/* Plain C kernels for attention on the compressed cache: the reference the
 * SIMD versions are tested against, and the fallback. */
#include <math.h>
#include <string.h>

#include "common/common.h"
#include "kv/kv_int.h"

void moe_kv_quant_row(const float *x, int n, int bits, uint8_t *codes, uint16_t *scale,
                      uint16_t *min)
{
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    int qmax = (1 << bits) - 1;
    uint16_t s16 = moe_f32_to_f16((hi - lo) / (float)qmax), m16 = moe_f32_to_f16(lo);
    float s = moe_f16_to_f32(s16), m = moe_f16_to_f32(m16);
    float inv = s > 0 ? 1.0f / s : 0.0f;
    int per = 8 / bits, nb = n / per;
    memset(codes, 0, (size_t)nb);
    for (int i = 0; i < n; i++) {
        int c = (int)lrintf((x[i] - m) * inv);
        c = c < 0 ? 0 : c > qmax ? qmax : c;
        codes[i % nb] |= (uint8_t)(c << ((i / nb) * bits));
    }
    *scale = s16;
    *min = m16;
}

static void k_scores_ref(int bits, int G, int D, const uint8_t *codes, const uint16_t *scale,
                         const uint16_t *min, const float *q, float *acc)
{
    size_t row = (size_t)G * bits / 8;
    float bias = 0.0f;
    for (int t = 0; t < G; t++)
        acc[t] = 0.0f;
    for (int c = 0; c < D; c++) {
        float qs = q[c] * moe_f16_to_f32(scale[c]); /* the scale folded into q */
        bias += q[c] * moe_f16_to_f32(min[c]);
        for (int t = 0; t < G; t++)
            acc[t] += qs * (float)moe_kv_code(codes + c * row, G, bits, t);
    }
    for (int t = 0; t < G; t++)
        acc[t] += bias;
}

static void v_accum_ref(int bits, int Gv, int D, const uint8_t *codes, const uint16_t *sm,
                        const float *p, int cnt, float *out)
{
    size_t row = (size_t)D * bits / 8, grow = (size_t)Gv * bits / 8;
    int ng = D / Gv;
    for (int t = 0; t < cnt; t++) {
        for (int g = 0; g < ng; g++) {
            float a = p[t] * moe_f16_to_f32(sm[(t * ng + g) * 2]);
            float b = p[t] * moe_f16_to_f32(sm[(t * ng + g) * 2 + 1]);
            const uint8_t *r = codes + t * row + g * grow;
            for (int i = 0; i < Gv; i++)
                out[g * Gv + i] += a * (float)moe_kv_code(r, Gv, bits, i) + b;
        }
    }
}

static void k_accum_ref(int bits, int G, int Dv, const uint8_t *codes, const uint16_t *scale,
                        const uint16_t *min, const float *p, int cnt, float *out)
{
    size_t row = (size_t)G * bits / 8;
    float psum = 0.0f;
    for (int t = 0; t < cnt; t++)
        psum += p[t];
    for (int c = 0; c < Dv; c++) {
        float acc = 0.0f;
        for (int t = 0; t < cnt; t++)
            acc += p[t] * (float)moe_kv_code(codes + c * row, G, bits, t);
        out[c] += moe_f16_to_f32(scale[c]) * acc + moe_f16_to_f32(min[c]) * psum;
    }
}

static float dot_f16_ref(const float *q, const uint16_t *k, int D)
{
    float s = 0.0f;
    for (int c = 0; c < D; c++)
        s += q[c] * moe_f16_to_f32(k[c]);
    return s;
}

static void axpy_f16_ref(float *out, float a, const uint16_t *v, int D)
{
    for (int c = 0; c < D; c++)
        out[c] += a * moe_f16_to_f32(v[c]);
}

const struct moe_kv_ops moe_kv_ops_ref = {k_scores_ref, v_accum_ref, k_accum_ref, dot_f16_ref,
                                          axpy_f16_ref};
