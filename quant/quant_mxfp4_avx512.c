/* MXFP4 gemm on AVX-512. Only called after moe_isa_best() has seen
 * avx512f/bw/vl/dq in cpuid.
 *
 * Decoding is a 16-entry table lookup per 16 weights: the 16 code bytes of
 * a block zero-extended to 16 dwords index a table of fp32 with vpermps,
 * which reads only the low 4 bits, so the bytes give weights 0..15 (low
 * nibbles) as they are and weights 16..31 (high nibbles) after one shift.
 *
 * n == 1 (decode) streams each row front to back, 4.25 bits per weight, one
 * sequential stream per thread (rows side by side ran at half the speed
 * from memory): the table is the doubled E2M1 values themselves, each
 * block's 32 products are summed unscaled and the sum is scaled once into
 * the row's accumulator by the block's half scale 2^(e - 128), broadcast
 * from moe_mxfp4_half_scale_bits. Scaling the table instead puts a multiply
 * in front of every lookup's inputs and ran ~20% slower (Zen 5); only the
 * rounding of the sum differs from the reference.
 * 2 <= n <= 16: 4 rows at a time, each block decoded once into registers
 * with the block's table {kv2 * half scale} (the reference's weights
 * exactly), then applied to 4 tokens at a time read in place: each x load
 * feeds 4 rows. While the first 4 tokens run, the next 4 rows are
 * prefetched: 4 rows read side by side are a pattern the hardware prefetcher
 * follows badly (from memory, n = 2..8 ran at 40-50% of the speed without
 * it). About 1.4-2.5x the panel below at n = 2..8 (Zen 5).
 * n > 16: a panel of PR rows x KC columns is decoded once into an fp32
 * buffer on the stack, then a 4-row x 6-token register block applies it to
 * every tile of packed tokens (the plan of quant_gq_avx512.c). */
#include <immintrin.h>

#include "quant/quant_panel_avx512.h"
#include "common/common.h"
#include "quant/quant_int.h"

#define INLINE static inline __attribute__((always_inline))

#define QK MOE_MXFP4_BLOCK

typedef struct moe_block_mxfp4 block;

INLINE __m512 kv2_vec(void)
{
    return _mm512_loadu_ps(moe_mxfp4_kv2);
}

INLINE __m512 half_scale(const block *b)
{
    return _mm512_castsi512_ps(_mm512_set1_epi32((int)moe_mxfp4_half_scale_bits[b->e]));
}

/* the block's 16 possible weights */
INLINE __m512 block_table(const block *b, __m512 kv)
{
    return _mm512_mul_ps(kv, half_scale(b));
}

INLINE __m512i block_codes(const block *b)
{
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)b->qs));
}

/* ---- n == 1 --------------------------------------------------------------- */

/* sum over the block of kv2 * x, unscaled */
INLINE __m512 block_dot(const block *b, __m512 kv, const float *x)
{
    __m512i v = block_codes(b);
    __m512 t = _mm512_mul_ps(_mm512_permutexvar_ps(v, kv), _mm512_loadu_ps(x));
    return _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), kv),
                           _mm512_loadu_ps(x + 16), t);
}

INLINE float dot_row(const block *row, const float *x, int64_t nb)
{
    const __m512 kv = kv2_vec();
    __m512 a[4];
    for (int i = 0; i < 4; i++)
        a[i] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++)
            a[k] = _mm512_fmadd_ps(block_dot(&row[b + k], kv, x + (b + k) * QK),
                                   half_scale(&row[b + k]), a[k]);
    }
    for (; b < nb; b++)
        a[0] = _mm512_fmadd_ps(block_dot(&row[b], kv, x + b * QK), half_scale(&row[b]), a[0]);
    __m512 s = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
    return _mm512_reduce_add_ps(s);
}

/* ---- n > 16: a decoded panel ------------------------------------------------ */

#define KC PANEL_KC

/* rows [0, R) of the panel, columns [k0, k0 + kc) -> wb[R][KC] */
static void convert_panel(int arg, const uint8_t *base, size_t rb, int R, int64_t k0, int64_t kc,
                          float *wb)
{
    const __m512 kv = kv2_vec();
    for (int i = 0; i < R; i++) {
        const block *b = (const block *)(base + (size_t)i * rb) + k0 / QK;
        float *d = wb + (size_t)i * KC;
        for (int64_t c = 0; c < kc; c += QK, b++, d += QK) {
            __m512 tab = block_table(b, kv);
            __m512i v = block_codes(b);
            _mm512_store_ps(d, _mm512_permutexvar_ps(v, tab));
            _mm512_store_ps(d + 16, _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tab));
        }
    }
}

/* ---- 2 <= n <= 16: decoded in registers ----------------------------------- */

#define DR 4    /* rows decoded side by side: each x load feeds DR fmas */
#define DT 4    /* tokens at a time: DR x DT accumulators + 2 DR weights */
#define KD 1024 /* columns per pass: DT tokens x 4 KiB of x stay in L1 */
#define DIRECT_MAX_N 16 /* above, the panel (decoded once for all tokens) wins */

/* R rows x T tokens (T <= DT), columns [k0, k0 + kc): each block of each row
 * is decoded once (two registers of weights) and applied to the T tokens,
 * read in place; one accumulator per row and token. */
INLINE void direct_rows(const int R, const int T, const uint8_t *base, size_t rb, int64_t r,
                        int64_t k0, int64_t kc, const float *x, int64_t ldx, float *y,
                        int64_t ldy, const bool pf)
{
    const __m512 kv = kv2_vec();
    __m512 acc[DR][DT];
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            acc[i][t] = _mm512_setzero_ps();
    const block *b[DR];
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
        b[i] = (const block *)(base + (size_t)(r + i) * rb) + k0 / QK;
    for (int64_t c = 0; c < kc; c += QK) {
        __m512 lo[DR], hi[DR];
        if (pf && (c & 63) == 0) /* every 2 blocks (34 bytes): each line at least once */
#pragma GCC unroll 4
            for (int i = 0; i < R; i++)
                _mm_prefetch((const char *)(b[i] + c / QK) + DR * rb, _MM_HINT_T0);
#pragma GCC unroll 4
        for (int i = 0; i < R; i++) {
            const block *bb = b[i] + c / QK;
            __m512 tab = block_table(bb, kv);
            __m512i v = block_codes(bb);
            lo[i] = _mm512_permutexvar_ps(v, tab);
            hi[i] = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tab);
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const float *xt = x + t * ldx + k0 + c;
            __m512 x0 = _mm512_loadu_ps(xt), x1 = _mm512_loadu_ps(xt + 16);
#pragma GCC unroll 4
            for (int i = 0; i < R; i++)
                acc[i][t] = _mm512_fmadd_ps(hi[i], x1, _mm512_fmadd_ps(lo[i], x0, acc[i][t]));
        }
    }
    bool add = k0 > 0;
    if (R == DR) {
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            __m128 s = panel_hsum4(acc[0][t], acc[1][t], acc[2][t], acc[3][t]);
            if (add)
                s = _mm_add_ps(s, _mm_loadu_ps(y + t * ldy + r));
            _mm_storeu_ps(y + t * ldy + r, s);
        }
        return;
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            float s = _mm512_reduce_add_ps(acc[i][t]);
            y[t * ldy + r + i] = add ? y[t * ldy + r + i] + s : s;
        }
}

INLINE void direct_tokens(const int T, const struct moe_weight *w, int64_t r0, int64_t r1,
                          const float *x, int64_t ldx, float *y, int64_t ldy, bool pf)
{
    const uint8_t *base = w->data;
    size_t rb = w->row_bytes;
    for (int64_t k0 = 0; k0 < w->cols; k0 += KD) {
        int64_t kc = MOE_MIN((int64_t)KD, w->cols - k0);
        int64_t r = r0;
        for (; r + DR <= r1; r += DR)
            if (pf)
                direct_rows(DR, T, base, rb, r, k0, kc, x, ldx, y, ldy, true);
            else
                direct_rows(DR, T, base, rb, r, k0, kc, x, ldx, y, ldy, false);
        for (; r < r1; r++)
            direct_rows(1, T, base, rb, r, k0, kc, x, ldx, y, ldy, false);
    }
}

static void gemm_direct(const struct moe_weight *w, int64_t r0, int64_t r1, const float *x,
                        int64_t ldx, int n, float *y, int64_t ldy)
{
    for (int t0 = 0; t0 < n; t0 += DT) {
        const float *xt = x + t0 * ldx;
        float *yt = y + t0 * ldy;
        bool pf = t0 == 0; /* the next rows, once per call */
        switch (MOE_MIN(DT, n - t0)) {
        case 1: direct_tokens(1, w, r0, r1, xt, ldx, yt, ldy, pf); break;
        case 2: direct_tokens(2, w, r0, r1, xt, ldx, yt, ldy, pf); break;
        case 3: direct_tokens(3, w, r0, r1, xt, ldx, yt, ldy, pf); break;
        default: direct_tokens(DT, w, r0, r1, xt, ldx, yt, ldy, pf); break;
        }
    }
}

void moe_quant_gemm_mxfp4_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
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
