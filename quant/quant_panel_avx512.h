/* The batched (n > 1) GEMM driver of the formats whose weights are decoded
 * into an fp32 panel first (GQ1-4, MXFP4), for AVX-512; included by their
 * *_avx512.c files, compiled with their ISA flags. PR rows x KC columns are
 * decoded once by the format's convert(), then an MR x NT register
 * microkernel applies them to NT tokens at a time. */
#ifndef MOE_QUANT_PANEL_AVX512_H
#define MOE_QUANT_PANEL_AVX512_H

#include <immintrin.h>
#include <stdbool.h>

#include "common/common.h"
#include "quant/quant.h"

#define PANEL_INLINE static inline __attribute__((always_inline))
#define PANEL_MR 4
#define PANEL_NT 6
#define PANEL_KC 1024 /* columns per pass, a multiple of every block: 6 tokens x 4 KiB of L1 */
#define PANEL_PR 32   /* rows per decoded panel: 32 x KC x 4 B = 128 KiB of L2 */

/* rows [0, R) of base (rb bytes apart), columns [k0, k0 + kc) -> wb[R][PANEL_KC];
 * arg is the format's own (GQ's bits) */
typedef void (*panel_convert_fn)(int arg, const uint8_t *base, size_t rb, int R, int64_t k0,
                                 int64_t kc, float *wb);

/* xp <- tokens [0, T) of x, columns [k0, k0 + kc) (kc a multiple of 16) */
PANEL_INLINE void panel_pack_x(const float *x, int64_t ldx, int T, int64_t k0, int64_t kc,
                               float *xp)
{
    for (int64_t c = 0; c < kc; c += 16, xp += T * 16)
        for (int j = 0; j < T; j++)
            _mm512_store_ps(xp + j * 16, _mm512_loadu_ps(x + j * ldx + k0 + c));
}

/* {sum a, sum b, sum c, sum d} */
PANEL_INLINE __m128 panel_hsum4(__m512 a, __m512 b, __m512 c, __m512 d)
{
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a8, b8), _mm256_hadd_ps(c8, d8));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* R rows of wb (PANEL_KC apart) x T packed tokens over kc columns */
PANEL_INLINE void panel_microkernel(const int R, const int T, const float *wb, int64_t kc,
                                    const float *xp, float *y, int64_t ldy, bool add)
{
    __m512 acc[PANEL_MR][PANEL_NT];
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 6
        for (int j = 0; j < T; j++)
            acc[i][j] = _mm512_setzero_ps();
    for (int64_t c = 0; c < kc; c += 16, xp += T * 16) {
        __m512 wv[PANEL_MR];
#pragma GCC unroll 4
        for (int i = 0; i < R; i++)
            wv[i] = _mm512_load_ps(wb + i * PANEL_KC + c);
#pragma GCC unroll 6
        for (int j = 0; j < T; j++) {
            __m512 xv = _mm512_load_ps(xp + j * 16);
#pragma GCC unroll 4
            for (int i = 0; i < R; i++)
                acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    if (R == PANEL_MR) {
#pragma GCC unroll 6
        for (int j = 0; j < T; j++) {
            __m128 s = panel_hsum4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]);
            if (add)
                s = _mm_add_ps(s, _mm_loadu_ps(y + j * ldy));
            _mm_storeu_ps(y + j * ldy, s);
        }
        return;
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 6
        for (int j = 0; j < T; j++) {
            float s = _mm512_reduce_add_ps(acc[i][j]);
            y[j * ldy + i] = add ? y[j * ldy + i] + s : s;
        }
}

PANEL_INLINE void panel_tile(const int T, int R, const float *wb, int64_t kc, const float *xp,
                             float *y, int64_t ldy, bool add)
{
    int i = 0;
    for (; i + PANEL_MR <= R; i += PANEL_MR)
        panel_microkernel(PANEL_MR, T, wb + (size_t)i * PANEL_KC, kc, xp, y + i, ldy, add);
    for (; i < R; i++)
        panel_microkernel(1, T, wb + (size_t)i * PANEL_KC, kc, xp, y + i, ldy, add);
}

/* y[t][r] = W[r] . x[t] for r in [r0, r1), t < n, W decoded by convert */
PANEL_INLINE void panel_gemm(panel_convert_fn convert, int arg, const struct moe_weight *w,
                             int64_t r0, int64_t r1, const float *x, int64_t ldx, int n,
                             float *y, int64_t ldy)
{
    float wb[PANEL_PR * PANEL_KC] __attribute__((aligned(64)));
    float xp[PANEL_NT * PANEL_KC] __attribute__((aligned(64)));
    const uint8_t *base = w->data;
    size_t rb = w->row_bytes;
    int64_t cols = w->cols;
    for (int64_t p0 = r0; p0 < r1; p0 += PANEL_PR) {
        int R = (int)MOE_MIN((int64_t)PANEL_PR, r1 - p0);
        for (int64_t k0 = 0; k0 < cols; k0 += PANEL_KC) {
            int64_t kc = MOE_MIN((int64_t)PANEL_KC, cols - k0);
            convert(arg, base + (size_t)p0 * rb, rb, R, k0, kc, wb);
            bool add = k0 > 0;
            for (int t0 = 0; t0 < n; t0 += PANEL_NT) {
                int T = MOE_MIN(PANEL_NT, n - t0);
                panel_pack_x(x + t0 * ldx, ldx, T, k0, kc, xp);
                float *yt = y + t0 * ldy + p0;
                switch (T) {
                case 1: panel_tile(1, R, wb, kc, xp, yt, ldy, add); break;
                case 2: panel_tile(2, R, wb, kc, xp, yt, ldy, add); break;
                case 3: panel_tile(3, R, wb, kc, xp, yt, ldy, add); break;
                case 4: panel_tile(4, R, wb, kc, xp, yt, ldy, add); break;
                case 5: panel_tile(5, R, wb, kc, xp, yt, ldy, add); break;
                default: panel_tile(PANEL_NT, R, wb, kc, xp, yt, ldy, add); break;
                }
            }
        }
    }
}

#endif
