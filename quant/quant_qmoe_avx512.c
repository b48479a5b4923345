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
 * n == 1: masked adds into S_lo / S_hi vectors, y = lo*S_lo + hi*S_hi as
 * the reference does; two accumulator sets, alternate codewords, break the
 * add chains. The side-table loads of successive codewords are independent
 * (their addresses are the codes), so only the position p carries from one
 * codeword to the next.
 * n > 1: tiles of NT tokens; each codeword is decoded once per tile into two
 * weight vectors (masked blends of lo and hi) and applied to every token of
 * the tile with FMAs, one pair of accumulators per token. */
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

/* one row at n == 1, from codeword *idx; advances *idx past the row */
INLINE float row_dot(const struct moe_qmoe_side *s, const uint16_t *code, uint32_t *idx,
                     const float *x, int64_t cols, float lo, float hi)
{
    __m512 la0 = _mm512_setzero_ps(), ha0 = la0, la1 = la0, ha1 = la0;
    __m512 lb0 = la0, hb0 = la0, lb1 = la0, hb1 = la0;
    uint32_t j = *idx;
    int64_t p = 0;
    for (;;) {
        uint64_t e = side_entry(s, code[j++]);
        uint32_t lm = (uint32_t)e & MOE_QMOE_SIDE_MASK, hm = (uint32_t)(e >> 32), nz = lm | hm;
        __m512 x0 = _mm512_maskz_loadu_ps((__mmask16)nz, x + p);
        __m512 x1 = _mm512_maskz_loadu_ps((__mmask16)(nz >> 16), x + p + 16);
        la0 = _mm512_mask_add_ps(la0, (__mmask16)lm, la0, x0);
        ha0 = _mm512_mask_add_ps(ha0, (__mmask16)hm, ha0, x0);
        la1 = _mm512_mask_add_ps(la1, (__mmask16)(lm >> 16), la1, x1);
        ha1 = _mm512_mask_add_ps(ha1, (__mmask16)(hm >> 16), ha1, x1);
        p += 2 * (int64_t)((uint32_t)e >> 28);
        if (p >= cols)
            break;
        e = side_entry(s, code[j++]);
        lm = (uint32_t)e & MOE_QMOE_SIDE_MASK, hm = (uint32_t)(e >> 32), nz = lm | hm;
        x0 = _mm512_maskz_loadu_ps((__mmask16)nz, x + p);
        x1 = _mm512_maskz_loadu_ps((__mmask16)(nz >> 16), x + p + 16);
        lb0 = _mm512_mask_add_ps(lb0, (__mmask16)lm, lb0, x0);
        hb0 = _mm512_mask_add_ps(hb0, (__mmask16)hm, hb0, x0);
        lb1 = _mm512_mask_add_ps(lb1, (__mmask16)(lm >> 16), lb1, x1);
        hb1 = _mm512_mask_add_ps(hb1, (__mmask16)(hm >> 16), hb1, x1);
        p += 2 * (int64_t)((uint32_t)e >> 28);
        if (p >= cols)
            break;
    }
    *idx = j;
    __m512 sl = _mm512_add_ps(_mm512_add_ps(la0, la1), _mm512_add_ps(lb0, lb1));
    __m512 sh = _mm512_add_ps(_mm512_add_ps(ha0, ha1), _mm512_add_ps(hb0, hb1));
    return lo * _mm512_reduce_add_ps(sl) + hi * _mm512_reduce_add_ps(sh);
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
            __m512 w0 = _mm512_mask_mov_ps(_mm512_maskz_mov_ps((__mmask16)lm, vlo),
                                           (__mmask16)hm, vhi);
            __m512 w1 = _mm512_mask_mov_ps(_mm512_maskz_mov_ps((__mmask16)(lm >> 16), vlo),
                                           (__mmask16)(hm >> 16), vhi);
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
            float lo = -moe_qmoe_level_decode(L.scale, L.level[2 * r]);
            float hi = moe_qmoe_level_decode(L.scale, L.level[2 * r + 1]);
            y[r] = row_dot(s, L.code, &idx, x, cols, lo, hi);
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
