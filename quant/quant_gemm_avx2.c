/* AVX2 + FMA + F16C gemm kernels (8 fp32 lanes, 16 ymm registers). Only
 * called after moe_isa_best() has seen avx2, fma and f16c in cpuid.
 *
 * Same plan as the AVX-512 kernels (see quant_gemm_avx512.c): exact weight
 * conversion then FMA; n == 1 streams each row with four accumulators; n > 1
 * uses a 3-row x 4-token register block (12 accumulators + 3 weights + 1
 * activation = all 16 registers) over packed tokens. AVX2 has no masked
 * 16-bit loads, so the last cols % 8 weights of a row go through a small
 * zeroed buffer. */
#include <immintrin.h>

#include "common/common.h"
#include "quant/quant_int.h"

#define INLINE static inline __attribute__((always_inline))

enum kind { K_F32, K_F16, K_BF16, K_Q8_0 };

#define MR 3 /* rows per microkernel */
#define NT 4 /* tokens per microkernel */

static const int32_t tail_mask_tab[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

/* lanes [0, rem) set, rem in 1..7 */
INLINE __m256i tail_mask(int64_t rem)
{
    return _mm256_loadu_si256((const __m256i *)(tail_mask_tab + 8 - rem));
}

INLINE __m256 bf16x8_to_f32(__m128i h)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* 8 consecutive weights of a row as fp32 */
INLINE __m256 load_w8(enum kind k, const uint8_t *row, int64_t c)
{
    if (k == K_F32)
        return _mm256_loadu_ps((const float *)row + c);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + c));
    return k == K_F16 ? _mm256_cvtph_ps(h) : bf16x8_to_f32(h);
}

/* the last rem (1..7) weights of a row, zero padded */
INLINE __m256 load_w8_tail(enum kind k, const uint8_t *row, int64_t c, int64_t rem)
{
    if (k == K_F32)
        return _mm256_maskload_ps((const float *)row + c, tail_mask(rem));
    uint16_t buf[8] = {0};
    memcpy(buf, (const uint16_t *)row + c, (size_t)rem * 2);
    __m128i h = _mm_loadu_si128((const __m128i *)buf);
    return k == K_F16 ? _mm256_cvtph_ps(h) : bf16x8_to_f32(h);
}

INLINE __m256 q8_scale(const uint8_t *row, int64_t b)
{
    const struct moe_block_q8_0 *blk = (const struct moe_block_q8_0 *)row + b;
    return _mm256_set1_ps(_cvtsh_ss(blk->d));
}

/* q8_0: quarter h (0..3) of block b of row as fp32, times the scale (exact) */
INLINE __m256 q8_part(const uint8_t *row, int64_t b, int h, __m256 d)
{
    const struct moe_block_q8_0 *blk = (const struct moe_block_q8_0 *)row + b;
    __m128i q = _mm_loadl_epi64((const __m128i *)(blk->q + 8 * h));
    return _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
}

INLINE float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* {sum a, sum b, sum c, sum d} */
INLINE __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* ---- n == 1: one row at a time, one sequential stream -------------------- */

INLINE float dot_row(enum kind k, const uint8_t *row, const float *x, int64_t cols)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    if (k == K_Q8_0) {
        int64_t nb = cols / MOE_Q8_0_BLOCK;
        for (int64_t b = 0; b < nb; b++) {
            __m256 d = q8_scale(row, b);
            const float *xb = x + b * MOE_Q8_0_BLOCK;
            a0 = _mm256_fmadd_ps(q8_part(row, b, 0, d), _mm256_loadu_ps(xb), a0);
            a1 = _mm256_fmadd_ps(q8_part(row, b, 1, d), _mm256_loadu_ps(xb + 8), a1);
            a2 = _mm256_fmadd_ps(q8_part(row, b, 2, d), _mm256_loadu_ps(xb + 16), a2);
            a3 = _mm256_fmadd_ps(q8_part(row, b, 3, d), _mm256_loadu_ps(xb + 24), a3);
        }
    } else {
        int64_t c = 0;
        for (; c + 32 <= cols; c += 32) {
            a0 = _mm256_fmadd_ps(load_w8(k, row, c), _mm256_loadu_ps(x + c), a0);
            a1 = _mm256_fmadd_ps(load_w8(k, row, c + 8), _mm256_loadu_ps(x + c + 8), a1);
            a2 = _mm256_fmadd_ps(load_w8(k, row, c + 16), _mm256_loadu_ps(x + c + 16), a2);
            a3 = _mm256_fmadd_ps(load_w8(k, row, c + 24), _mm256_loadu_ps(x + c + 24), a3);
        }
        for (; c + 8 <= cols; c += 8)
            a0 = _mm256_fmadd_ps(load_w8(k, row, c), _mm256_loadu_ps(x + c), a0);
        if (c < cols) {
            int64_t rem = cols - c;
            a1 = _mm256_fmadd_ps(load_w8_tail(k, row, c, rem),
                                 _mm256_maskload_ps(x + c, tail_mask(rem)), a1);
        }
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

/* ---- n > 1: R rows x T tokens register block ------------------------------
 * Blocked as in quant_gemm_avx512.c: L2 panels of rows, passes of KC
 * columns, tiles of NT tokens packed side by side per 8-column chunk (one
 * sequential L1 stream instead of NT streams that alias in L1 whenever
 * ldx * 4 is a multiple of 4 KiB), then the panel's rows MR at a time, the
 * next MR rows prefetched during the first token tile. */
#define KC 1024                  /* 4 tokens x 1024 x 4 B = 16 KiB of L1 */
#define PANEL_BYTES (512 * 1024) /* rows x KC weights kept in L2 */

INLINE void microkernel(enum kind k, const int R, const int T, const uint8_t *w, size_t rb,
                        int64_t k0, int64_t kc, const float *xp, float *y, int64_t ldy, bool add,
                        bool pf)
{
    __m256 acc[MR][NT];
#pragma GCC unroll 3
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int j = 0; j < T; j++)
            acc[i][j] = _mm256_setzero_ps();

    if (k == K_Q8_0) {
        for (int64_t b = k0 / MOE_Q8_0_BLOCK; b < (k0 + kc) / MOE_Q8_0_BLOCK; b++) {
            __m256 d[MR];
            if (pf)
#pragma GCC unroll 3
                for (int i = 0; i < R; i++) {
                    const struct moe_block_q8_0 *nb =
                        (const struct moe_block_q8_0 *)(w + (i + R) * rb) + b;
                    _mm_prefetch((const char *)nb, _MM_HINT_T0);
                    _mm_prefetch((const char *)nb + sizeof(*nb) - 1, _MM_HINT_T0);
                }
#pragma GCC unroll 3
            for (int i = 0; i < R; i++)
                d[i] = q8_scale(w + i * rb, b);
#pragma GCC unroll 4
            for (int h = 0; h < 4; h++) {
                __m256 wv[MR];
#pragma GCC unroll 3
                for (int i = 0; i < R; i++)
                    wv[i] = q8_part(w + i * rb, b, h, d[i]);
#pragma GCC unroll 4
                for (int j = 0; j < T; j++) {
                    __m256 xv = _mm256_load_ps(xp + j * 8);
#pragma GCC unroll 3
                    for (int i = 0; i < R; i++)
                        acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
                }
                xp += T * 8;
            }
        }
    } else {
        int64_t c = k0, end = k0 + kc;
        for (; c + 8 <= end; c += 8, xp += T * 8) {
            __m256 wv[MR];
            if (pf && (c & (k == K_F32 ? 15 : 31)) == 0) /* once per 64-byte line */
#pragma GCC unroll 3
                for (int i = 0; i < R; i++)
                    _mm_prefetch((const char *)(w + (i + R) * rb) + c * (k == K_F32 ? 4 : 2),
                                 _MM_HINT_T0);
#pragma GCC unroll 3
            for (int i = 0; i < R; i++)
                wv[i] = load_w8(k, w + i * rb, c);
#pragma GCC unroll 4
            for (int j = 0; j < T; j++) {
                __m256 xv = _mm256_load_ps(xp + j * 8);
#pragma GCC unroll 3
                for (int i = 0; i < R; i++)
                    acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
            }
        }
        if (c < end) { /* the row's last cols % 8 weights; xp is zero padded */
            __m256 wv[MR];
#pragma GCC unroll 3
            for (int i = 0; i < R; i++)
                wv[i] = load_w8_tail(k, w + i * rb, c, end - c);
#pragma GCC unroll 4
            for (int j = 0; j < T; j++) {
                __m256 xv = _mm256_load_ps(xp + j * 8);
#pragma GCC unroll 3
                for (int i = 0; i < R; i++)
                    acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
            }
        }
    }

    if (R == MR) {
        const __m128i m3 = _mm_setr_epi32(-1, -1, -1, 0);
#pragma GCC unroll 4
        for (int j = 0; j < T; j++) {
            __m128 s = hsum4(acc[0][j], acc[1][j], acc[R > 2 ? 2 : 0][j], _mm256_setzero_ps());
            if (add)
                s = _mm_add_ps(s, _mm_maskload_ps(y + j * ldy, m3));
            _mm_maskstore_ps(y + j * ldy, m3, s);
        }
    } else {
#pragma GCC unroll 3
        for (int i = 0; i < R; i++)
#pragma GCC unroll 4
            for (int j = 0; j < T; j++) {
                float s = hsum(acc[i][j]);
                y[j * ldy + i] = add ? y[j * ldy + i] + s : s;
            }
    }
}

/* xp <- tokens [0, T) of x, columns [k0, k0 + kc), zero padded to 8 */
static void pack_x(const float *x, int64_t ldx, int T, int64_t k0, int64_t kc, float *xp)
{
    int64_t c = 0;
    for (; c + 8 <= kc; c += 8, xp += T * 8)
        for (int j = 0; j < T; j++)
            _mm256_store_ps(xp + j * 8, _mm256_loadu_ps(x + j * ldx + k0 + c));
    if (c < kc) {
        __m256i m = tail_mask(kc - c);
        for (int j = 0; j < T; j++)
            _mm256_store_ps(xp + j * 8, _mm256_maskload_ps(x + j * ldx + k0 + c, m));
    }
}

INLINE void panel(enum kind k, const int T, const uint8_t *base, size_t rb, int64_t p0,
                  int64_t p1, int64_t k0, int64_t kc, const float *xp, float *y, int64_t ldy,
                  bool add, bool pf)
{
    int64_t r = p0;
    /* pf as a constant in each copy: a test in the inner loop costs ~8% */
    for (; r + MR <= p1; r += MR)
        if (pf)
            microkernel(k, MR, T, base + (size_t)r * rb, rb, k0, kc, xp, y + r, ldy, add, true);
        else
            microkernel(k, MR, T, base + (size_t)r * rb, rb, k0, kc, xp, y + r, ldy, add, false);
    for (; r < p1; r++)
        microkernel(k, 1, T, base + (size_t)r * rb, rb, k0, kc, xp, y + r, ldy, add, false);
}

INLINE void gemm_batched(enum kind k, const struct moe_weight *w, int64_t r0, int64_t r1,
                         const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    float xp[NT * KC] __attribute__((aligned(32)));
    const uint8_t *base = w->data;
    size_t rb = w->row_bytes;
    int64_t cols = w->cols;
    size_t kc_bytes = k == K_F32 ? KC * 4 : k == K_Q8_0 ? KC / 32 * 34 : KC * 2;
    int64_t mc = MOE_MAX((int64_t)MR, (int64_t)(PANEL_BYTES / kc_bytes) / MR * MR);
    for (int64_t p0 = r0; p0 < r1; p0 += mc) {
        int64_t p1 = MOE_MIN(r1, p0 + mc);
        for (int64_t k0 = 0; k0 < cols; k0 += KC) {
            int64_t kc = MOE_MIN((int64_t)KC, cols - k0);
            for (int t0 = 0; t0 < n; t0 += NT) {
                int T = MOE_MIN(NT, n - t0);
                pack_x(x + t0 * ldx, ldx, T, k0, kc, xp);
                float *yt = y + t0 * ldy;
                bool add = k0 > 0, pf = t0 == 0;
                switch (T) {
                case 1: panel(k, 1, base, rb, p0, p1, k0, kc, xp, yt, ldy, add, pf); break;
                case 2: panel(k, 2, base, rb, p0, p1, k0, kc, xp, yt, ldy, add, pf); break;
                case 3: panel(k, 3, base, rb, p0, p1, k0, kc, xp, yt, ldy, add, pf); break;
                default: panel(k, NT, base, rb, p0, p1, k0, kc, xp, yt, ldy, add, pf); break;
                }
            }
        }
    }
}

INLINE void gemm(enum kind k, const struct moe_weight *w, int64_t r0, int64_t r1,
                 const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    if (n <= 0 || r1 <= r0)
        return;
    if (n == 1) {
        const uint8_t *base = w->data;
        for (int64_t r = r0; r < r1; r++)
            y[r] = dot_row(k, base + (size_t)r * w->row_bytes, x, w->cols);
        return;
    }
    gemm_batched(k, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_f32_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm(K_F32, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_f16_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm(K_F16, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_bf16_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                              const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm(K_BF16, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_q8_0_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                              const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm(K_Q8_0, w, r0, r1, x, ldx, n, y, ldy);
}

/* ---- fp32 vector helpers ------------------------------------------------- */

float moe_quant_vec_dot_f32_avx2(const float *a, const float *b, int64_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    if (i < n) {
        __m256i m = tail_mask(n - i);
        s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s1);
    }
    return hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

void moe_quant_vec_axpy_f32_avx2(float *y, float a, const float *x, int64_t n)
{
    __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
        _mm256_storeu_ps(y + i + 8,
                         _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8)));
    }
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}
