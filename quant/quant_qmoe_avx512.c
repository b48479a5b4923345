/* QMoE gemm with AVX-512: the ternary code is decoded straight into the
 * product, never into floats in memory. Only called after moe_isa_best()
 * has seen avx512f/bw/vl/dq, on a matrix moe_qmoe_view() accepted.
 *
 * Per codeword one 8-byte side-table load gives the lo and hi digit masks
 * of its (up to) 28 weights and its pair count. x is read with loads masked
 * by the nonzero digits, so nothing past the row's last weight is touched
 * (view() guarantees no codeword crosses the row end and an odd width's
 * padding digit is 0) and zero weights never meet x (an inf there stays out).
 *
 * Since x comes back zero outside the nonzero digits, a codeword's weights
 * are one blend of broadcast lo and hi by the hi mask per 16 lanes.
 *
 * n == 1: FMA of those weights with x into two accumulator sets (alternate
 * codewords) to break the chains. The side-table loads of successive
 * codewords are independent (their addresses are the codes); only the
 * position p carries from one codeword to the next. Moving the masks from
 * GPRs into mask registers bounds this loop on Zen 5: masked adds into
 * S_lo/S_hi (6 mask moves a codeword) ran 20% slower, and a mask-free form
 * (pdep to 2-bit digits, variable shift, permute from {0,lo,hi}) too.
 * n > 1: tiles of NT tokens; each codeword is decoded once per tile and
 * applied to every token of the tile, one pair of accumulators per token. */
#include <immintrin.h>

#include "common/common.h"
#include "quant/quant_int.h"

#define INLINE static inline __attribute__((always_inline))
#define NT 8 /* tokens per tile: 16 accumulators */

static inline uint64_t side_entry(const struct moe_qmoe_side *s, uint16_t c)
{
    uint64_t e;
    memcpy(&e, s->e[c], 8);
    return e;
}

/* one row at n == 1, from codeword *idx; advances *idx past the row.
 * x is loaded masked by the nonzero digits (zero elsewhere), so the weight
 * vector needs no zeroing: one blend of lo and hi by the hi mask, one FMA.
 * Four mask moves per codeword (mask moves from GPRs bound this loop). */
INLINE float row_dot(const struct moe_qmoe_side *s, const uint16_t *code, uint32_t *idx,
                     const float *x, int64_t cols, __m512 vlo, __m512 vhi)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
    uint32_t j = *idx;
    int64_t p = 0;
    for (;;) {
        uint64_t e = side_entry(s, code[j++]);
        uint32_t hm = (uint32_t)(e >> 32), nz = ((uint32_t)e & MOE_QMOE_SIDE_MASK) | hm;
        __m512 x0 = _mm512_maskz_loadu_ps((__mmask16)nz, x + p);
        __m512 x1 = _mm512_maskz_loadu_ps((__mmask16)(nz >> 16), x + p + 16);
        a0 = _mm512_fmadd_ps(_mm512_mask_blend_ps((__mmask16)hm, vlo, vhi), x0, a0);
        a1 = _mm512_fmadd_ps(_mm512_mask_blend_ps((__mmask16)(hm >> 16), vlo, vhi), x1, a1);
        p += 2 * (int64_t)((uint32_t)e >> 28);
        if (p >= cols)
            break;
        e = side_entry(s, code[j++]);
        hm = (uint32_t)(e >> 32), nz = ((uint32_t)e & MOE_QMOE_SIDE_MASK) | hm;
        x0 = _mm512_maskz_loadu_ps((__mmask16)nz, x + p);
        x1 = _mm512_maskz_loadu_ps((__mmask16)(nz >> 16), x + p + 16);
        b0 = _mm512_fmadd_ps(_mm512_mask_blend_ps((__mmask16)hm, vlo, vhi), x0, b0);
        b1 = _mm512_fmadd_ps(_mm512_mask_blend_ps((__mmask16)(hm >> 16), vlo, vhi), x1, b1);
        p += 2 * (int64_t)((uint32_t)e >> 28);
        if (p >= cols)
            break;
    }
    *idx = j;
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(b0, b1)));
}

/* rows [r0, r1) for T tokens (x: token 0 of the tile, y likewise) */
INLINE void rows_tile(const int T, const struct moe_qmoe_layout *L,
                      const struct moe_qmoe_side *s, uint32_t idx, int64_t r0, int64_t r1,
                      int64_t cols, const float *x, int64_t ldx, float *y, int64_t ldy)
{
    const uint16_t *code = L->code;
    for (int64_t r = r0; r < r1; r++) {
        __m512 vlo = _mm512_set1_ps(-moe_qmoe_level_decode(L->scale, L->level[2 * r]));
        __m512 vhi = _mm512_set1_ps(moe_qmoe_level_decode(L->scale, L->level[2 * r + 1]));
        __m512 a0[NT], a1[NT];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            a0[t] = a1[t] = _mm512_setzero_ps();
        for (int64_t p = 0; p < cols;) {
            uint64_t e = side_entry(s, code[idx++]);
            uint32_t lm = (uint32_t)e & MOE_QMOE_SIDE_MASK, hm = (uint32_t)(e >> 32);
            __mmask16 n0 = (__mmask16)(lm | hm), n1 = (__mmask16)((lm | hm) >> 16);
            /* x is zero outside the nonzero digits: no zeroing needed */
            __m512 w0 = _mm512_mask_blend_ps((__mmask16)hm, vlo, vhi);
            __m512 w1 = _mm512_mask_blend_ps((__mmask16)(hm >> 16), vlo, vhi);
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                const float *xt = x + t * ldx + p;
                a0[t] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(n0, xt), a0[t]);
                a1[t] = _mm512_fmadd_ps(w1, _mm512_maskz_loadu_ps(n1, xt + 16), a1[t]);
            }
            p += 2 * (int64_t)((uint32_t)e >> 28);
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            y[t * ldy + r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[t], a1[t]));
    }
}

void moe_quant_gemm_qmoe_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
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
        uint32_t idx = idx0;
        for (int64_t r = r0; r < r1; r++) {
            __m512 vlo = _mm512_set1_ps(-moe_qmoe_level_decode(L.scale, L.level[2 * r]));
            __m512 vhi = _mm512_set1_ps(moe_qmoe_level_decode(L.scale, L.level[2 * r + 1]));
            y[r] = row_dot(s, L.code, &idx, x, cols, vlo, vhi);
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
