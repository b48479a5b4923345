/* Group-wise integer weights (GQ1/2/3/4): the group quantiser with the
 * MC-MoE clipping search (and the 1-bit sign rule), row packing, the traits
 * conversions and the plain C reference kernels. Layouts: quant_gq.h.
 *
 * Nibble order (one group of 128 weights = 4 stretches of 32): stretch s
 * occupies bytes 16*s .. 16*s+15 of the 64 code bytes, and byte j of it
 * holds q[32s + j] in its low nibble and q[32s + 16 + j] in its high nibble.
 * An AVX-512 kernel zero-extends the 16 bytes to 16 dwords once and gets both
 * halves with one shift: vpermps looks only at the low 4 bits of each index,
 * so the per-group table {scale * (q - zero)} maps the codes to weights with
 * no masking at all. */
#include <math.h>

#include "common/common.h"
#include "quant/quant_gq.h"
#include "quant/quant_int.h"

#define FP16_MAX 65504.0f
#define FP16_MIN_SUB 5.9604645e-8f /* 2^-24, the smallest positive fp16 */

static float f16_round(float v)
{
    return moe_f16_to_f32(moe_f32_to_f16(v));
}

/* |e|^2.4 = e^2 * |e|^0.4, the latter through exp2(0.4 * log2|e|) with short
 * polynomials (about 3e-5 relative): only a selection criterion, evaluated
 * 101 x 128 times per group, where powf would dominate a whole pack.
 * Branch-free, so the loop over a group vectorises. */
static inline float pow24(float e)
{
    float a = fabsf(e) + 1e-30f; /* log of 0 stays finite; 2^-40 underflows below */
    uint32_t u;
    memcpy(&u, &a, 4);
    float ex = (float)((int32_t)(u >> 23) - 127);
    uint32_t mu = (u & 0x007fffffu) | 0x3f800000u;
    float m;
    memcpy(&m, &mu, 4); /* [1, 2) */
    /* log2(m) on [1,2): least-squares quintic, error < 3e-5 */
    float t = m - 1.0f;
    float l2 = t * (1.4418255f + t * (-0.7086789f + t * (0.4154112f +
                                                         t * (-0.1944083f + t * 0.0458790f))));
    float y = 0.4f * (ex + l2); /* in [-40, 52] */
    /* 2^y = 2^floor(y) * 2^f, f in [0,1) */
    int32_t fi = (int32_t)y;
    fi -= (float)fi > y;
    float f = y - (float)fi;
    float p = 1.0000073f + f * (0.6929314f + f * (0.2417100f + f * (0.0516670f + f * 0.0136766f)));
    uint32_t eu = (uint32_t)(fi + 127) << 23;
    float sc;
    memcpy(&sc, &eu, 4);
    return a * a * p * sc;
}

/* sum over the group of |scale * (q(x) - zero) - x|^2.4; q as moe_gq_quant
 * picks it but through a reciprocal (this is only the search's measure) */
static inline __attribute__((always_inline)) float clip_err(const float *x, int n, float s,
                                                            float z, float qmax)
{
    float inv = 1.0f / s, err = 0.0f;
    for (int i = 0; i < n; i++) {
        float q = x[i] * inv + z;
        q = (float)(int32_t)(q + (q >= 0.0f ? 0.5f : -0.5f));
        q = q < 0.0f ? 0.0f : q;
        q = q > qmax ? qmax : q;
        err += pow24(s * (q - z) - x[i]);
    }
    return err;
}

/* scale, zero (both fp16-representable) for the clip factor p */
static void params_for(float xmin, float xmax, float p, int bits, float *scale, float *zero)
{
    float qmax = (float)((1 << bits) - 1);
    float s = p * (xmax - xmin) / qmax;
    s = fminf(fmaxf(s, FP16_MIN_SUB), FP16_MAX);
    float z = -p * xmin / s;
    z = fminf(fmaxf(z, -FP16_MAX), FP16_MAX);
    *scale = f16_round(s);
    *zero = f16_round(z);
}

/* 1 bit: MC-MoE's sign(x) * mean|x| (levels -m, +m), then Lloyd steps that
 * move each level to the mean of the weights it stands for and the threshold
 * to the midpoint. Every step lowers the squared error, so the result is never
 * worse than the sign rule; asymmetric groups gain most. Levels a < b are
 * stored as scale b - a and zero -a / (b - a) (q = 0 -> a, q = 1 -> b). */
static void one_bit_params(const float *x, int n, float *scale, float *zero)
{
    float m = 0.0f;
    for (int i = 0; i < n; i++)
        m += fabsf(x[i]);
    m /= (float)n;
    float a = -m, b = m, t = 0.0f;
    for (int it = 0; it < 8; it++) {
        float sa = 0, sb = 0;
        int na = 0, nb = 0;
        for (int i = 0; i < n; i++) {
            if (x[i] >= t) {
                sb += x[i];
                nb++;
            } else {
                sa += x[i];
                na++;
            }
        }
        if (na == 0 || nb == 0)
            break;
        a = sa / (float)na;
        b = sb / (float)nb;
        t = 0.5f * (a + b);
    }
    if (!(b > a)) { /* a constant group: the sign rule's symmetric levels */
        a = -m;
        b = m;
    }
    float s = f16_round(fminf(fmaxf(b - a, FP16_MIN_SUB), FP16_MAX));
    if (s == 0.0f)
        s = 1.0f;
    *scale = s;
    *zero = f16_round(fminf(fmaxf(-a / s, -FP16_MAX), FP16_MAX));
}

void moe_gq_group_params(const float *x, int n, int bits, float *scale, float *zero)
{
    if (bits == 1) {
        one_bit_params(x, n, scale, zero);
        return;
    }
    float xmin = x[0], xmax = x[0];
    for (int i = 1; i < n; i++) {
        xmin = fminf(xmin, x[i]);
        xmax = fmaxf(xmax, x[i]);
    }
    if (!(xmax > xmin)) {
        /* a constant group: q = 0 everywhere and w = -scale * zero = x */
        float s = xmin == 0.0f ? 1.0f : f16_round(fminf(fabsf(xmin), FP16_MAX));
        if (s == 0.0f)
            s = 1.0f;
        *scale = s;
        *zero = f16_round(-xmin / s);
        return;
    }
    float best = INFINITY, bs = 0, bz = 0;
    for (int k = 0; k <= 100; k++) {
        float p = 0.9f + 0.002f * (float)k;
        float s, z;
        params_for(xmin, xmax, p, bits, &s, &z);
        float qmax = (float)((1 << bits) - 1);
        /* a constant trip count lets -O2 vectorise the common case */
        float err = n == MOE_GQ_GROUP ? clip_err(x, MOE_GQ_GROUP, s, z, qmax)
                                      : clip_err(x, n, s, z, qmax);
        if (err < best) {
            best = err;
            bs = s;
            bz = z;
        }
    }
    *scale = bs;
    *zero = bz;
}

void moe_gq4_pack_row(const uint8_t *q, const uint16_t *scale, const uint16_t *zero,
                      int64_t cols, void *dst)
{
    uint8_t *d = dst;
    for (int64_t g = 0; g < cols / MOE_GQ_GROUP; g++, d += MOE_GQ4_GROUP_BYTES) {
        const uint8_t *qg = q + g * MOE_GQ_GROUP;
        memcpy(d, &scale[g], 2);
        memcpy(d + 2, &zero[g], 2);
        for (int s = 0; s < 4; s++)
            for (int j = 0; j < 16; j++)
                d[4 + 16 * s + j] =
                    (uint8_t)((qg[32 * s + j] & 15) | (qg[32 * s + 16 + j] & 15) << 4);
    }
}

size_t moe_gq_group_bytes(int bits)
{
    return bits >= 1 && bits <= 4 ? (size_t)MOE_GQ_GROUP_BYTES(bits) : 0;
}

int moe_gq_dtype(int bits)
{
    static const int ids[] = {0, MOE_DTYPE_GQ1, MOE_DTYPE_GQ2, MOE_DTYPE_GQ3, MOE_DTYPE_GQ4};
    return bits >= 1 && bits <= 4 ? ids[bits] : 0;
}

int moe_gq_bits(int dtype)
{
    switch (dtype) {
    case MOE_DTYPE_GQ1: return 1;
    case MOE_DTYPE_GQ2: return 2;
    case MOE_DTYPE_GQ3: return 3;
    case MOE_DTYPE_GQ4: return 4;
    default: return 0;
    }
}

void moe_gq_pack_row(int bits, const uint8_t *q, const uint16_t *scale, const uint16_t *zero,
                     int64_t cols, void *dst)
{
    if (bits == 4) {
        moe_gq4_pack_row(q, scale, zero, cols, dst);
        return;
    }
    size_t gb = moe_gq_group_bytes(bits);
    uint8_t *d = dst;
    for (int64_t g = 0; g < cols / MOE_GQ_GROUP; g++, d += gb) {
        const uint8_t *qg = q + g * MOE_GQ_GROUP;
        memcpy(d, &scale[g], 2);
        memcpy(d + 2, &zero[g], 2);
        uint32_t mask = (1u << bits) - 1;
        for (int j = 0; j < 16; j++) {
            uint32_t word = 0; /* lane j: q[16k + j] at bits * k */
            for (int k = 0; k < 8; k++)
                word |= (qg[16 * k + j] & mask) << (bits * k);
            for (int b = 0; b < bits; b++)
                d[4 + bits * j + b] = (uint8_t)(word >> (8 * b));
        }
    }
}

/* one group's 128 weights as fp32: exactly the values every kernel uses
 * (scale * (q - zero) in fp32, q - zero first) */
static inline void group_to_f32(const uint8_t *g, float *dst)
{
    uint16_t hs, hz;
    memcpy(&hs, g, 2);
    memcpy(&hz, g + 2, 2);
    float s = moe_f16_to_f32(hs), z = moe_f16_to_f32(hz);
    const uint8_t *c = g + 4;
    for (int st = 0; st < 4; st++)
        for (int j = 0; j < 16; j++) {
            uint8_t b = c[16 * st + j];
            dst[32 * st + j] = s * ((float)(b & 15) - z);
            dst[32 * st + 16 + j] = s * ((float)(b >> 4) - z);
        }
}

void moe_gq4_to_f32(const void *src, float *dst, int64_t n)
{
    const uint8_t *g = src;
    for (int64_t i = 0; i < n / MOE_GQ_GROUP; i++)
        group_to_f32(g + i * MOE_GQ4_GROUP_BYTES, dst + i * MOE_GQ_GROUP);
}

/* round to nearest with the clipping search, group by group */
void moe_gq4_from_f32(const float *src, void *dst, int64_t n)
{
    uint8_t q[MOE_GQ_GROUP];
    for (int64_t i = 0; i < n / MOE_GQ_GROUP; i++) {
        const float *x = src + i * MOE_GQ_GROUP;
        float s, z;
        moe_gq_group_params(x, MOE_GQ_GROUP, 4, &s, &z);
        for (int j = 0; j < MOE_GQ_GROUP; j++)
            q[j] = (uint8_t)moe_gq_quant(x[j], s, z, 4);
        uint16_t hs = moe_f32_to_f16(s), hz = moe_f32_to_f16(z);
        moe_gq4_pack_row(q, &hs, &hz, MOE_GQ_GROUP,
                         (uint8_t *)dst + i * MOE_GQ4_GROUP_BYTES);
    }
}

/* the same for a GQ1/2/3 group (code words by lane, quant_gq.h) */
static inline void groupb_to_f32(int bits, const uint8_t *g, float *dst)
{
    uint16_t hs, hz;
    memcpy(&hs, g, 2);
    memcpy(&hz, g + 2, 2);
    float s = moe_f16_to_f32(hs), z = moe_f16_to_f32(hz);
    const uint8_t *c = g + 4;
    uint32_t mask = (1u << bits) - 1;
    for (int j = 0; j < 16; j++) {
        uint32_t word = 0;
        for (int b = 0; b < bits; b++)
            word |= (uint32_t)c[bits * j + b] << (8 * b);
        for (int k = 0; k < 8; k++)
            dst[16 * k + j] = s * ((float)((word >> (bits * k)) & mask) - z);
    }
}

static void gqb_to_f32(int bits, const void *src, float *dst, int64_t n)
{
    const uint8_t *g = src;
    size_t gb = moe_gq_group_bytes(bits);
    for (int64_t i = 0; i < n / MOE_GQ_GROUP; i++)
        groupb_to_f32(bits, g + i * gb, dst + i * MOE_GQ_GROUP);
}

static void gqb_from_f32(int bits, const float *src, void *dst, int64_t n)
{
    uint8_t q[MOE_GQ_GROUP];
    size_t gb = moe_gq_group_bytes(bits);
    for (int64_t i = 0; i < n / MOE_GQ_GROUP; i++) {
        const float *x = src + i * MOE_GQ_GROUP;
        float s, z;
        moe_gq_group_params(x, MOE_GQ_GROUP, bits, &s, &z);
        for (int j = 0; j < MOE_GQ_GROUP; j++)
            q[j] = (uint8_t)moe_gq_quant(x[j], s, z, bits);
        uint16_t hs = moe_f32_to_f16(s), hz = moe_f32_to_f16(z);
        moe_gq_pack_row(bits, q, &hs, &hz, MOE_GQ_GROUP, (uint8_t *)dst + i * gb);
    }
}

void moe_gq1_to_f32(const void *src, float *dst, int64_t n) { gqb_to_f32(1, src, dst, n); }
void moe_gq2_to_f32(const void *src, float *dst, int64_t n) { gqb_to_f32(2, src, dst, n); }
void moe_gq3_to_f32(const void *src, float *dst, int64_t n) { gqb_to_f32(3, src, dst, n); }
void moe_gq1_from_f32(const float *src, void *dst, int64_t n) { gqb_from_f32(1, src, dst, n); }
void moe_gq2_from_f32(const float *src, void *dst, int64_t n) { gqb_from_f32(2, src, dst, n); }
void moe_gq3_from_f32(const float *src, void *dst, int64_t n) { gqb_from_f32(3, src, dst, n); }

/* Like the other reference kernels: each group converted once per row, then
 * dotted with every token, one fp32 sum per output with columns in order. */
void moe_quant_gemm_gq4_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                            const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    float wf[MOE_GQ_GROUP];
    const uint8_t *base = w->data;
    int64_t ng = w->cols / MOE_GQ_GROUP;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = base + (size_t)r * w->row_bytes;
        for (int t = 0; t < n; t++)
            y[t * ldy + r] = 0.0f;
        for (int64_t g = 0; g < ng; g++) {
            group_to_f32(row + g * MOE_GQ4_GROUP_BYTES, wf);
            for (int t = 0; t < n; t++) {
                const float *xt = x + t * ldx + g * MOE_GQ_GROUP;
                float acc = y[t * ldy + r];
                for (int c = 0; c < MOE_GQ_GROUP; c++)
                    acc += wf[c] * xt[c];
                y[t * ldy + r] = acc;
            }
        }
    }
}

static void gemm_gqb_ref(int bits, const struct moe_weight *w, int64_t r0, int64_t r1,
                         const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    float wf[MOE_GQ_GROUP];
    const uint8_t *base = w->data;
    size_t gb = moe_gq_group_bytes(bits);
    int64_t ng = w->cols / MOE_GQ_GROUP;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = base + (size_t)r * w->row_bytes;
        for (int t = 0; t < n; t++)
            y[t * ldy + r] = 0.0f;
        for (int64_t g = 0; g < ng; g++) {
            groupb_to_f32(bits, row + g * gb, wf);
            for (int t = 0; t < n; t++) {
                const float *xt = x + t * ldx + g * MOE_GQ_GROUP;
                float acc = y[t * ldy + r];
                for (int c = 0; c < MOE_GQ_GROUP; c++)
                    acc += wf[c] * xt[c];
                y[t * ldy + r] = acc;
            }
        }
    }
}

void moe_quant_gemm_gq1_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                            const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm_gqb_ref(1, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_gq2_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                            const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm_gqb_ref(2, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_gq3_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                            const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm_gqb_ref(3, w, r0, r1, x, ldx, n, y, ldy);
}
