/* MXFP4 gemm on AVX2 + FMA + F16C. Only called after moe_isa_best() has
 * seen them in cpuid.
 *
 * AVX2's vpermps indexes only 8 entries, too few for the 16 signed codes, so
 * the codes are decoded with vpshufb instead: a 16-entry byte table of the
 * doubled E2M1 values (-12 .. 12, integers) maps the nibbles of a block to
 * 32 int8 in order (low nibbles are weights 0..15, high nibbles 16..31), and
 * vpmovsxbd + vcvtdq2ps turn them into fp32.
 *
 * n == 1: each block's 32 products with x are summed unscaled, then scaled
 * once by the block's half scale 2^(e - 128) into the row's accumulator (one
 * fma per block instead of a multiply per weight). Only the rounding of the
 * sum differs from the reference's, well inside the kernels' tolerance.
 * 2 <= n <= 4: 2 rows at a time, each block's 32 int8 made once, then 8
 * weights at a time widened and scaled (exactly the reference's weights) and
 * applied to the tokens read in place, with the next rows prefetched. From
 * memory 1.6-2.3x the panel below at n = 2..4 (Zen 5 running AVX2).
 * n > 4: a panel of rows is decoded once into fp32 (the same weights) and
 * applied to tiles of packed tokens with a 3-row x 4-token register block,
 * as quant_gq_avx2.c does. */
#include <immintrin.h>

#include "quant/quant_panel_avx2.h"
#include "common/common.h"
#include "quant/quant_int.h"

#define INLINE static inline __attribute__((always_inline))

#define QK MOE_MXFP4_BLOCK

typedef struct moe_block_mxfp4 block;

/* the doubled E2M1 values as int8, in both 128-bit lanes */
INLINE __m256i kv2_bytes(void)
{
    return _mm256_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12, 0, 1, 2, 3,
                            4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
}

INLINE __m256 half_scale(const block *b)
{
    return _mm256_castsi256_ps(_mm256_set1_epi32((int)moe_mxfp4_half_scale_bits[b->e]));
}

/* the block's 32 doubled E2M1 values as int8, weights 0..31 in order */
INLINE __m256i block_bytes(const block *b, __m256i tab)
{
    /* lane 0: the 16 code bytes' low nibbles, lane 1: their high nibbles */
    __m256i q = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)b->qs));
    q = _mm256_and_si256(_mm256_srlv_epi32(q, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)),
                         _mm256_set1_epi8(15));
    return _mm256_shuffle_epi8(tab, q);
}

/* the same as fp32, weights 8k .. 8k + 7 in w[k] */
INLINE void block_values(const block *b, __m256i tab, __m256 w[4])
{
    __m256i v = block_bytes(b, tab);
    __m128i v0 = _mm256_castsi256_si128(v), v1 = _mm256_extracti128_si256(v, 1);
    w[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v0));
    w[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v0, 8)));
    w[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v1));
    w[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v1, 8)));
}

/* ---- n == 1 --------------------------------------------------------------- */

/* sum over the block of kv2 * x, unscaled */
INLINE __m256 block_dot(const block *b, __m256i tab, const float *x)
{
    __m256 w[4];
    block_values(b, tab, w);
    __m256 s = _mm256_mul_ps(w[0], _mm256_loadu_ps(x));
    s = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(x + 8), s);
    s = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(x + 16), s);
    return _mm256_fmadd_ps(w[3], _mm256_loadu_ps(x + 24), s);
}

INLINE float dot_row(const block *row, const float *x, int64_t nb)
{
    const __m256i tab = kv2_bytes();
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        a0 = _mm256_fmadd_ps(block_dot(&row[b], tab, x + b * QK), half_scale(&row[b]), a0);
        a1 = _mm256_fmadd_ps(block_dot(&row[b + 1], tab, x + (b + 1) * QK),
                             half_scale(&row[b + 1]), a1);
    }
    if (b < nb)
        a0 = _mm256_fmadd_ps(block_dot(&row[b], tab, x + b * QK), half_scale(&row[b]), a0);
    return panel_hsum8(_mm256_add_ps(a0, a1));
}

/* ---- n > 1 ---------------------------------------------------------------- */

#define KC PANEL_KC

static void convert_panel(int arg, const uint8_t *base, size_t rb, int R, int64_t k0, int64_t kc,
                          float *wb)
{
    const __m256i tab = kv2_bytes();
    for (int i = 0; i < R; i++) {
        const block *b = (const block *)(base + (size_t)i * rb) + k0 / QK;
        float *d = wb + (size_t)i * KC;
        for (int64_t c = 0; c < kc; c += QK, b++, d += QK) {
            __m256 w[4], s = half_scale(b);
            block_values(b, tab, w);
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++)
                _mm256_store_ps(d + 8 * k, _mm256_mul_ps(w[k], s));
        }
    }
}

/* ---- 2 <= n <= 4: decoded in registers -------------------------------------- */

#define DR 2    /* rows side by side: each x load feeds DR fmas */
#define DT 4    /* tokens, all of them at once: DR x DT accumulators */
#define KD 1024 /* columns per pass: DT tokens x 4 KiB of x stay in L1 */
#define DIRECT_MAX_N DT /* above, the panel (decoded once for all tokens) wins */

/* R rows x T tokens, columns [k0, k0 + kc): each block of a row becomes 32
 * int8 once (vpshufb), then 8 weights at a time are widened, scaled exactly
 * as the reference's and applied to the T tokens read in place. pf: also
 * prefetch the next DR rows (rows side by side are a pattern the hardware
 * prefetcher follows badly). */
INLINE void direct_rows(const int R, const int T, const uint8_t *base, size_t rb, int64_t r,
                        int64_t k0, int64_t kc, const float *x, int64_t ldx, float *y,
                        int64_t ldy, const bool pf)
{
    const __m256i tab = kv2_bytes();
    __m256 acc[DR][DT];
#pragma GCC unroll 2
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            acc[i][t] = _mm256_setzero_ps();
    const block *b[DR];
#pragma GCC unroll 2
    for (int i = 0; i < R; i++)
        b[i] = (const block *)(base + (size_t)(r + i) * rb) + k0 / QK;
    for (int64_t c = 0; c < kc; c += QK) {
        __m256i q[DR];
        __m256 s[DR];
        if (pf && (c & 63) == 0)
#pragma GCC unroll 2
            for (int i = 0; i < R; i++)
                _mm_prefetch((const char *)(b[i] + c / QK) + DR * rb, _MM_HINT_T0);
#pragma GCC unroll 2
        for (int i = 0; i < R; i++) {
            q[i] = block_bytes(b[i] + c / QK, tab);
            s[i] = half_scale(b[i] + c / QK);
        }
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            __m256 wv[DR];
#pragma GCC unroll 2
            for (int i = 0; i < R; i++) {
                __m128i h =
                    k < 2 ? _mm256_castsi256_si128(q[i]) : _mm256_extracti128_si256(q[i], 1);
                if (k & 1)
                    h = _mm_srli_si128(h, 8);
                wv[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(h)), s[i]);
            }
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                __m256 xv = _mm256_loadu_ps(x + t * ldx + k0 + c + 8 * k);
#pragma GCC unroll 2
                for (int i = 0; i < R; i++)
                    acc[i][t] = _mm256_fmadd_ps(wv[i], xv, acc[i][t]);
            }
        }
    }
    bool add = k0 > 0;
#pragma GCC unroll 2
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            float v = panel_hsum8(acc[i][t]);
            y[t * ldy + r + i] = add ? y[t * ldy + r + i] + v : v;
        }
}

INLINE void direct_tokens(const int T, const struct moe_weight *w, int64_t r0, int64_t r1,
                          const float *x, int64_t ldx, float *y, int64_t ldy)
{
    const uint8_t *base = w->data;
    size_t rb = w->row_bytes;
    for (int64_t k0 = 0; k0 < w->cols; k0 += KD) {
        int64_t kc = MOE_MIN((int64_t)KD, w->cols - k0);
        int64_t r = r0;
        for (; r + DR <= r1; r += DR)
            direct_rows(DR, T, base, rb, r, k0, kc, x, ldx, y, ldy, true);
        for (; r < r1; r++)
            direct_rows(1, T, base, rb, r, k0, kc, x, ldx, y, ldy, false);
    }
}

/* 2 <= n <= DT: every token in one pass */
static void gemm_direct(const struct moe_weight *w, int64_t r0, int64_t r1, const float *x,
                        int64_t ldx, int n, float *y, int64_t ldy)
{
    switch (n) {
    case 2: direct_tokens(2, w, r0, r1, x, ldx, y, ldy); break;
    case 3: direct_tokens(3, w, r0, r1, x, ldx, y, ldy); break;
    default: direct_tokens(DT, w, r0, r1, x, ldx, y, ldy); break;
    }
}

void moe_quant_gemm_mxfp4_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                               const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    if (n <= 0 || r1 <= r0)
        return;
    if (n == 1) {
        const uint8_t *base = w->data;
        int64_t nb = w->cols / QK;
        for (int64_t r = r0; r < r1; r++)
            y[r] = dot_row((const block *)(base + (size_t)r * w->row_bytes), x, nb);
    } else if (n <= DIRECT_MAX_N) {
        gemm_direct(w, r0, r1, x, ldx, n, y, ldy);
    } else {
        panel_gemm(convert_panel, 0, w, r0, r1, x, ldx, n, y, ldy);
    }
}
