/* QMoE gemm with AVX2 + FMA: the ternary code decoded straight into the
 * product, never into floats in memory. Only called after moe_isa_best()
 * has seen avx2/fma, on a matrix moe_qmoe_view() accepted.
 *
 * No mask registers: each byte of a codeword's lo/hi digit mask becomes an
 * 8-lane vector mask through a 256-entry table (8 KiB, stays in L1). A
 * codeword's 28 weights are four groups of 8 lanes, always all four (a
 * branch on the pair count would mispredict). Unmasked loads of 32 floats
 * from the codeword's position would run past the row's end near it, so
 * there x is read from a small zero-padded copy of the row's last 32 values
 * (per token, on the stack): nothing past x's own columns is ever read.
 *
 * n == 1: x is and-ed with the lo / hi lane masks into S_lo / S_hi (zero
 * weights never meet x); y = lo*S_lo + hi*S_hi as in the reference.
 * n > 1: tiles of NT tokens; each codeword is decoded once per tile into
 * four weight vectors and applied to every token of the tile by FMA (there
 * a zero weight does meet x: x must be finite, as activations are). */
#include <immintrin.h>

#include "common/common.h"
#include "quant/quant_int.h"

#define INLINE static inline __attribute__((always_inline))
#define NT 8    /* tokens per tile */
#define TAIL 64 /* floats per token in the tail copy: 32 values + 32 zeros */

#define B8(i) {-((i) & 1), -((i) >> 1 & 1), -((i) >> 2 & 1), -((i) >> 3 & 1), \
               -((i) >> 4 & 1), -((i) >> 5 & 1), -((i) >> 6 & 1), -((i) >> 7 & 1)}
#define B8x4(i) B8(i), B8((i) + 1), B8((i) + 2), B8((i) + 3)
#define B8x16(i) B8x4(i), B8x4((i) + 4), B8x4((i) + 8), B8x4((i) + 12)
#define B8x64(i) B8x16(i), B8x16((i) + 16), B8x16((i) + 32), B8x16((i) + 48)
/* lane_mask[b][k] = all ones when bit k of b is set */
static const int32_t lane_mask[256][8] __attribute__((aligned(32))) = {
    B8x64(0), B8x64(64), B8x64(128), B8x64(192)};

INLINE __m256 lmask(uint32_t m, int g)
{
    return _mm256_castsi256_ps(_mm256_load_si256((const __m256i *)lane_mask[(m >> (8 * g)) & 255]));
}

static inline uint64_t side_entry(const struct moe_qmoe_side *s, uint16_t c)
{
    uint64_t e;
    memcpy(&e, s->e[c], 8);
    return e;
}

/* tb <- x[ts, cols) then zeros, ts = max(0, cols - 32) */
static void tail_copy(const float *x, int64_t cols, float *tb)
{
    int64_t ts = cols > 32 ? cols - 32 : 0;
    memset(tb, 0, TAIL * sizeof(float));
    memcpy(tb, x + ts, (size_t)(cols - ts) * sizeof(float));
}

/* where the 32 floats at position p of token x are: in place while they lie
 * inside the row, else in the tail copy */
INLINE const float *x_at(const float *x, const float *tb, int64_t p, int64_t cols, int64_t ts)
{
    return p + 32 <= cols ? x + p : tb + (p - ts);
}

INLINE float row_dot(const struct moe_qmoe_side *s, const uint16_t *code, uint32_t *idx,
                     const float *x, const float *tb, int64_t cols, float lo, float hi)
{
    __m256 sl[4], sh[4];
    for (int g = 0; g < 4; g++)
        sl[g] = sh[g] = _mm256_setzero_ps();
    int64_t ts = cols > 32 ? cols - 32 : 0;
    uint32_t j = *idx;
    for (int64_t p = 0; p < cols;) {
        uint64_t e = side_entry(s, code[j++]);
        uint32_t lm = (uint32_t)e & MOE_QMOE_SIDE_MASK, hm = (uint32_t)(e >> 32);
        const float *xp = x_at(x, tb, p, cols, ts);
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
            __m256 xv = _mm256_loadu_ps(xp + 8 * g);
            sl[g] = _mm256_add_ps(sl[g], _mm256_and_ps(xv, lmask(lm, g)));
            sh[g] = _mm256_add_ps(sh[g], _mm256_and_ps(xv, lmask(hm, g)));
        }
        p += 2 * (int64_t)((uint32_t)e >> 28);
    }
    *idx = j;
    __m256 a = _mm256_add_ps(_mm256_add_ps(sl[0], sl[1]), _mm256_add_ps(sl[2], sl[3]));
    __m256 b = _mm256_add_ps(_mm256_add_ps(sh[0], sh[1]), _mm256_add_ps(sh[2], sh[3]));
    /* {sum a, sum b} */
    __m256 ab = _mm256_hadd_ps(a, b); /* a01 a23 b01 b23 | a45 a67 b45 b67 */
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(ab), _mm256_extractf128_ps(ab, 1));
    q = _mm_hadd_ps(q, q); /* suma sumb suma sumb */
    return lo * _mm_cvtss_f32(q) + hi * _mm_cvtss_f32(_mm_shuffle_ps(q, q, 1));
}

INLINE float hsum8(__m256 v)
{
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

INLINE void rows_tile(const int T, const struct moe_qmoe_layout *L,
                      const struct moe_qmoe_side *s, uint32_t idx, int64_t r0, int64_t r1,
                      int64_t cols, const float *x, int64_t ldx, float *y, int64_t ldy)
{
    float tb[NT][TAIL] __attribute__((aligned(32)));
    for (int t = 0; t < T; t++)
        tail_copy(x + t * ldx, cols, tb[t]);
    int64_t ts = cols > 32 ? cols - 32 : 0;
    const uint16_t *code = L->code;
    for (int64_t r = r0; r < r1; r++) {
        __m256 vlo = _mm256_set1_ps(-moe_qmoe_level_decode(L->scale, L->level[2 * r]));
        __m256 vhi = _mm256_set1_ps(moe_qmoe_level_decode(L->scale, L->level[2 * r + 1]));
        __m256 acc[NT];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            acc[t] = _mm256_setzero_ps();
        for (int64_t p = 0; p < cols;) {
            uint64_t e = side_entry(s, code[idx++]);
            uint32_t lm = (uint32_t)e & MOE_QMOE_SIDE_MASK, hm = (uint32_t)(e >> 32);
            __m256 wv[4];
#pragma GCC unroll 4
            for (int g = 0; g < 4; g++)
                wv[g] = _mm256_or_ps(_mm256_and_ps(vlo, lmask(lm, g)),
                                     _mm256_and_ps(vhi, lmask(hm, g)));
            bool inside = p + 32 <= cols;
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                const float *xp = inside ? x + t * ldx + p : tb[t] + (p - ts);
#pragma GCC unroll 4
                for (int g = 0; g < 4; g++)
                    acc[t] = _mm256_fmadd_ps(wv[g], _mm256_loadu_ps(xp + 8 * g), acc[t]);
            }
            p += 2 * (int64_t)((uint32_t)e >> 28);
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            y[t * ldy + r] = hsum8(acc[t]);
    }
}

void moe_quant_gemm_qmoe_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                              const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    if (r1 <= r0 || n <= 0)
        return;
    struct moe_qmoe_layout L;
    moe_qmoe_layout_get(w, &L);
    const struct moe_qmoe_side *s = w->aux;
    int64_t cols = w->cols;
    uint32_t idx0 = moe_qmoe_row_seek(&L, s, cols, r0);
    if (n == 1) {
        float tb[TAIL] __attribute__((aligned(32)));
        tail_copy(x, cols, tb);
        uint32_t idx = idx0;
        for (int64_t r = r0; r < r1; r++) {
            float lo = -moe_qmoe_level_decode(L.scale, L.level[2 * r]);
            float hi = moe_qmoe_level_decode(L.scale, L.level[2 * r + 1]);
            y[r] = row_dot(s, L.code, &idx, x, tb, cols, lo, hi);
        }
        return;
    }
    for (int t0 = 0; t0 < n; t0 += NT) {
        const float *xt = x + t0 * ldx;
        float *yt = y + t0 * ldy;
        switch (MOE_MIN(NT, n - t0)) {
        case 1: rows_tile(1, &L, s, idx0, r0, r1, cols, xt, ldx, yt, ldy); break;
        case 2: rows_tile(2, &L, s, idx0, r0, r1, cols, xt, ldx, yt, ldy); break;
        case 3: rows_tile(3, &L, s, idx0, r0, r1, cols, xt, ldx, yt, ldy); break;
        case 4: rows_tile(4, &L, s, idx0, r0, r1, cols, xt, ldx, yt, ldy); break;
        case 5: rows_tile(5, &L, s, idx0, r0, r1, cols, xt, ldx, yt, ldy); break;
        case 6: rows_tile(6, &L, s, idx0, r0, r1, cols, xt, ldx, yt, ldy); break;
        case 7: rows_tile(7, &L, s, idx0, r0, r1, cols, xt, ldx, yt, ldy); break;
        default: rows_tile(NT, &L, s, idx0, r0, r1, cols, xt, ldx, yt, ldy); break;
        }
    }
}
