/* GQ4 and GQ1/2/3 gemm on AVX2 + FMA + F16C. Only called after
 * moe_isa_best() has seen them in cpuid.
 *
 * Weights are made exactly as the reference makes them, scale * (q - zero)
 * in fp32: 8 code bytes zero-extended to 8 dwords give weights j (the low
 * nibble, masked) and j + 16 (the high nibble, one shift). Same plan as the
 * AVX-512 kernel (quant_gq_avx512.c): n == 1 streams each row; n > 1
 * converts a panel of rows once into an fp32 buffer and applies it to tiles
 * of packed tokens with a 3-row x 4-token register block (12 accumulators +
 * 3 weights + 1 activation = the 16 ymm registers).
 *
 * GQ1/2/3 (code words by lane, quant_gq.h): 8 of the group's 16 code
 * words become 8 dwords (vpmovzxbd / vpmovzxwd; for 3 bits a masked load,
 * vpermd and vpshufb), then weights 16k + 8h.. are one shift by bits*k and
 * one vpermps on the group's 8-entry table {scale * ((i mod 2^bits) - zero)}:
 * vpermps reads the low 3 bits, and the next code's bits above a 1- or
 * 2-bit code select the same entry. Exactly the reference's weights, so n == 1
 * is a plain fused dot and n > 1 converts panels for the GQ4 blocks. */
#include <immintrin.h>

#include "quant/quant_panel_avx2.h"
#include "common/common.h"
#include "quant/quant_gq.h"
#include "quant/quant_int.h"

#define INLINE static inline __attribute__((always_inline))

#define G MOE_GQ_GROUP
#define GB MOE_GQ4_GROUP_BYTES

INLINE void group_sz(const uint8_t *g, __m256 *s, __m256 *z)
{
    uint16_t hs, hz;
    memcpy(&hs, g, 2);
    memcpy(&hz, g + 2, 2);
    __m128 sz = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)hs | (uint32_t)hz << 16)));
    *s = _mm256_broadcastss_ps(sz);
    *z = _mm256_broadcastss_ps(_mm_movehdup_ps(sz));
}

/* the 8 weights of code bytes b..b+7 of a stretch: low nibbles (weights b..)
 * and high nibbles (weights 16 + b..) */
INLINE void weights8(const uint8_t *p, __m256 s, __m256 z, __m256 *lo, __m256 *hi)
{
    __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    __m256 ql = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
    __m256 qh = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
    *lo = _mm256_mul_ps(s, _mm256_sub_ps(ql, z));
    *hi = _mm256_mul_ps(s, _mm256_sub_ps(qh, z));
}

/* ---- n == 1 --------------------------------------------------------------- */

INLINE float dot_row(const uint8_t *row, const float *x, int64_t ng)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t g = 0; g < ng; g++, row += GB, x += G) {
        __m256 s, z;
        group_sz(row, &s, &z);
        const uint8_t *c = row + 4;
#pragma GCC unroll 4
        for (int st = 0; st < 4; st++) {
            __m256 l0, h0, l1, h1;
            weights8(c + 16 * st, s, z, &l0, &h0);
            weights8(c + 16 * st + 8, s, z, &l1, &h1);
            const float *xs = x + 32 * st;
            a0 = _mm256_fmadd_ps(l0, _mm256_loadu_ps(xs), a0);
            a1 = _mm256_fmadd_ps(l1, _mm256_loadu_ps(xs + 8), a1);
            a2 = _mm256_fmadd_ps(h0, _mm256_loadu_ps(xs + 16), a2);
            a3 = _mm256_fmadd_ps(h1, _mm256_loadu_ps(xs + 24), a3);
        }
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

/* code words 8h .. 8h + 7 of a GQ<bits> group (bits 1..3) as 8 dwords */
INLINE __m256i group_words8(const int bits, const uint8_t *c, int h)
{
    if (bits == 1)
        return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c + 8 * h)));
    if (bits == 2)
        return _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(c + 16 * h)));
    /* 24 bytes (masked load: no overread past the group), 12 per 128-bit
     * lane, then 3 bytes per dword */
    __m256i t = _mm256_maskload_epi32((const int *)(c + 24 * h),
                                      _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0));
    t = _mm256_permutevar8x32_epi32(t, _mm256_setr_epi32(0, 1, 2, 0, 3, 4, 5, 0));
    return _mm256_shuffle_epi8(t, _mm256_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10,
                                                   11, -1, 0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1,
                                                   9, 10, 11, -1));
}

/* the group's weights for codes i mod 2^bits, i = 0..7 */
INLINE __m256 group_table8(const int bits, const uint8_t *g)
{
    static const float iota[3][8] __attribute__((aligned(32))) = {
        {0, 1, 0, 1, 0, 1, 0, 1}, {0, 1, 2, 3, 0, 1, 2, 3}, {0, 1, 2, 3, 4, 5, 6, 7}};
    __m256 s, z;
    group_sz(g, &s, &z);
    return _mm256_mul_ps(s, _mm256_sub_ps(_mm256_load_ps(iota[bits - 1]), z));
}

INLINE float dot_row_b(const int bits, const uint8_t *row, const float *x, int64_t ng)
{
    const int gb = MOE_GQ_GROUP_BYTES(bits);
    __m256 a[4];
    for (int i = 0; i < 4; i++)
        a[i] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; g++, row += gb, x += G) {
        __m256 tab = group_table8(bits, row);
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256i v = group_words8(bits, row + 4, h);
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) {
                __m256i idx = k ? _mm256_srli_epi32(v, bits * k) : v;
                a[k % 4] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(tab, idx),
                                           _mm256_loadu_ps(x + 16 * k + 8 * h), a[k % 4]);
            }
        }
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

static void gemv_b(int bits, const struct moe_weight *w, int64_t r0, int64_t r1, const float *x,
                   float *y)
{
    const uint8_t *base = w->data;
    int64_t ng = w->cols / G;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = base + (size_t)r * w->row_bytes;
        switch (bits) {
        case 1: y[r] = dot_row_b(1, row, x, ng); break;
        case 2: y[r] = dot_row_b(2, row, x, ng); break;
        default: y[r] = dot_row_b(3, row, x, ng); break;
        }
    }
}

/* ---- n > 1 ---------------------------------------------------------------- */

#define KC PANEL_KC

static void convert_panel4(const uint8_t *base, size_t rb, int R, int64_t k0, int64_t kc,
                          float *wb)
{
    for (int i = 0; i < R; i++) {
        const uint8_t *g = base + (size_t)i * rb + (k0 / G) * GB;
        float *d = wb + (size_t)i * KC;
        for (int64_t c = 0; c < kc; c += G, g += GB, d += G) {
            __m256 s, z;
            group_sz(g, &s, &z);
#pragma GCC unroll 8
            for (int h = 0; h < 8; h++) { /* stretch h / 2, bytes 8 * (h % 2) */
                __m256 lo, hi;
                weights8(g + 4 + 8 * h, s, z, &lo, &hi);
                float *ds = d + 32 * (h / 2) + 8 * (h % 2);
                _mm256_store_ps(ds, lo);
                _mm256_store_ps(ds + 16, hi);
            }
        }
    }
}

/* the same for GQ<bits>, bits 1..3 */
INLINE void convert_panel_b(const int bits, const uint8_t *base, size_t rb, int R, int64_t k0,
                            int64_t kc, float *wb)
{
    const int gb = MOE_GQ_GROUP_BYTES(bits);
    for (int i = 0; i < R; i++) {
        const uint8_t *g = base + (size_t)i * rb + (k0 / G) * gb;
        float *d = wb + (size_t)i * KC;
        for (int64_t c = 0; c < kc; c += G, g += gb, d += G) {
            __m256 tab = group_table8(bits, g);
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                __m256i v = group_words8(bits, g + 4, h);
#pragma GCC unroll 8
                for (int k = 0; k < 8; k++) {
                    __m256i idx = k ? _mm256_srli_epi32(v, bits * k) : v;
                    _mm256_store_ps(d + 16 * k + 8 * h, _mm256_permutevar8x32_ps(tab, idx));
                }
            }
        }
    }
}

static void convert_panel(int bits, const uint8_t *base, size_t rb, int R, int64_t k0,
                          int64_t kc, float *wb)
{
    switch (bits) {
    case 1: convert_panel_b(1, base, rb, R, k0, kc, wb); break;
    case 2: convert_panel_b(2, base, rb, R, k0, kc, wb); break;
    case 3: convert_panel_b(3, base, rb, R, k0, kc, wb); break;
    default: convert_panel4(base, rb, R, k0, kc, wb); break;
    }
}

void moe_quant_gemm_gq4_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    if (n <= 0 || r1 <= r0)
        return;
    if (n == 1) {
        const uint8_t *base = w->data;
        int64_t ng = w->cols / G;
        for (int64_t r = r0; r < r1; r++)
            y[r] = dot_row(base + (size_t)r * w->row_bytes, x, ng);
    } else {
        panel_gemm(convert_panel, 4, w, r0, r1, x, ldx, n, y, ldy);
    }
}

static void gemm_gqb(int bits, const struct moe_weight *w, int64_t r0, int64_t r1,
                     const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    if (n <= 0 || r1 <= r0)
        return;
    if (n == 1)
        gemv_b(bits, w, r0, r1, x, y);
    else
        panel_gemm(convert_panel, bits, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_gq1_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm_gqb(1, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_gq2_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm_gqb(2, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_gq3_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm_gqb(3, w, r0, r1, x, ldx, n, y, ldy);
}
