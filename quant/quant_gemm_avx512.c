/* AVX-512 gemm kernels (16 fp32 lanes, 32 zmm registers). Only called after
 * moe_isa_best() has seen avx512f/bw/vl/dq in cpuid.
 *
 * Weights are converted exactly to fp32 (vcvtph2ps for f16, zero-extend and
 * shift by 16 for bf16, d*q for q8_0) and multiplied with fp32 activations
 * by FMA; only the order of the additions differs from the reference.
 *
 * n == 1 (decode) is memory bound: each row is streamed front to back with
 * four independent accumulators, so every thread reads one sequential stream
 * that the hardware prefetcher follows.
 * n > 1 (prefill, batched decode) turns compute bound as n grows: a 4-row x
 * 6-token microkernel keeps 24 zmm accumulators; each 16-column chunk of the
 * 4 rows is loaded and converted once and used for up to 6 tokens. Blocking,
 * outermost first: panels of rows whose KC columns fit in L2 (read from
 * memory once per call), passes of KC columns, tiles of 6 tokens packed into
 * L1, then the panel's rows 4 at a time. On the first token tile the next 4
 * rows are prefetched as the current 4 are read: 4 rows read side by side
 * in 2 KiB stretches are a pattern the hardware prefetcher follows badly,
 * and without this n = 2..16 ran at about half the memory bandwidth.
 * About 80% of the FMA peak of a core at n = 64 (Zen 5). */
#include <immintrin.h>

#include "common/common.h"
#include "quant/quant_int.h"

#define INLINE static inline __attribute__((always_inline))

enum kind { K_F32, K_F16, K_BF16, K_Q8_0 };

#define MR 4 /* rows per microkernel */
#define NT 6 /* tokens per microkernel */

/* ---- weight loads: 16 consecutive weights of a row as fp32 ---------------- */

INLINE __m512 bf16x16_to_f32(__m256i h)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

INLINE __m512 load_w16(enum kind k, const uint8_t *row, int64_t c)
{
    if (k == K_F32)
        return _mm512_loadu_ps((const float *)row + c);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)row + c));
    return k == K_F16 ? _mm512_cvtph_ps(h) : bf16x16_to_f32(h);
}

/* masked lanes read nothing (no fault past the end) and come back as 0 */
INLINE __m512 load_w16_mask(enum kind k, const uint8_t *row, int64_t c, __mmask16 m)
{
    if (k == K_F32)
        return _mm512_maskz_loadu_ps(m, (const float *)row + c);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + c);
    return k == K_F16 ? _mm512_cvtph_ps(h) : bf16x16_to_f32(h);
}

/* q8_0: the scale of block b of row, broadcast */
INLINE __m512 q8_scale(const uint8_t *row, int64_t b)
{
    const struct moe_block_q8_0 *blk = (const struct moe_block_q8_0 *)row + b;
    return _mm512_set1_ps(_cvtsh_ss(blk->d));
}

/* q8_0: half h (0 or 1) of block b of row as fp32, times the scale (exact) */
INLINE __m512 q8_half(const uint8_t *row, int64_t b, int h, __m512 d)
{
    const struct moe_block_q8_0 *blk = (const struct moe_block_q8_0 *)row + b;
    __m128i q = _mm_loadu_si128((const __m128i *)(blk->q + 16 * h));
    return _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)));
}

/* q8_0: both halves of block b, one 32-byte load */
INLINE void q8_block(const uint8_t *row, int64_t b, __m512 d, __m512 *lo, __m512 *hi)
{
    const struct moe_block_q8_0 *blk = (const struct moe_block_q8_0 *)row + b;
    __m256i q = _mm256_loadu_si256((const __m256i *)blk->q);
    *lo = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q))));
    *hi = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1))));
}

/* ---- horizontal sums --------------------------------------------------- */

/* {sum a, sum b, sum c, sum d} */
INLINE __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d)
{
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    __m256 ab = _mm256_hadd_ps(a8, b8);
    __m256 cd = _mm256_hadd_ps(c8, d8);
    __m256 s = _mm256_hadd_ps(ab, cd);
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* ---- n == 1: one row at a time, one sequential stream -------------------
 * Tried and dropped (Zen 5): software prefetch 2-6 KiB ahead (no gain over
 * the hardware prefetcher, a loss for f32); several rows at once (several
 * streams: much slower); column passes for wide rows (many short streams:
 * slower still). x is re-read from L1 for every row, so rows wider than
 * ~4096 columns (x over 16 KiB) lose some speed per core. */

INLINE float dot_row(enum kind k, const uint8_t *row, const float *x, int64_t cols)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t c = 0;
    if (k == K_Q8_0) {
        int64_t nb = cols / MOE_Q8_0_BLOCK, b = 0;
        for (; b + 2 <= nb; b += 2) {
            __m512 w0, w1, w2, w3;
            q8_block(row, b, q8_scale(row, b), &w0, &w1);
            q8_block(row, b + 1, q8_scale(row, b + 1), &w2, &w3);
            const float *xb = x + b * MOE_Q8_0_BLOCK;
            a0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xb), a0);
            a1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xb + 16), a1);
            a2 = _mm512_fmadd_ps(w2, _mm512_loadu_ps(xb + 32), a2);
            a3 = _mm512_fmadd_ps(w3, _mm512_loadu_ps(xb + 48), a3);
        }
        if (b < nb) {
            __m512 d0 = q8_scale(row, b);
            const float *xb = x + b * MOE_Q8_0_BLOCK;
            a0 = _mm512_fmadd_ps(q8_half(row, b, 0, d0), _mm512_loadu_ps(xb), a0);
            a1 = _mm512_fmadd_ps(q8_half(row, b, 1, d0), _mm512_loadu_ps(xb + 16), a1);
        }
    } else {
        for (; c + 64 <= cols; c += 64) {
            a0 = _mm512_fmadd_ps(load_w16(k, row, c), _mm512_loadu_ps(x + c), a0);
            a1 = _mm512_fmadd_ps(load_w16(k, row, c + 16), _mm512_loadu_ps(x + c + 16), a1);
            a2 = _mm512_fmadd_ps(load_w16(k, row, c + 32), _mm512_loadu_ps(x + c + 32), a2);
            a3 = _mm512_fmadd_ps(load_w16(k, row, c + 48), _mm512_loadu_ps(x + c + 48), a3);
        }
        for (; c + 16 <= cols; c += 16)
            a0 = _mm512_fmadd_ps(load_w16(k, row, c), _mm512_loadu_ps(x + c), a0);
        if (c < cols) {
            __mmask16 m = (__mmask16)((1u << (cols - c)) - 1);
            a1 = _mm512_fmadd_ps(load_w16_mask(k, row, c, m), _mm512_maskz_loadu_ps(m, x + c), a1);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

INLINE void gemv(enum kind k, const struct moe_weight *w, int64_t r0, int64_t r1,
                 const float *x, float *y)
{
    const uint8_t *base = w->data;
    for (int64_t r = r0; r < r1; r++)
        y[r] = dot_row(k, base + (size_t)r * w->row_bytes, x, w->cols);
}

/* ---- n > 1: R rows x T tokens register block -----------------------------
 * Tokens are first packed, KC columns at a time, into xp: for each 16-column
 * chunk the T tokens' 16 values lie side by side, so the microkernel reads
 * one sequential stream from L1. Reading the tokens in place would make T
 * streams ldx apart, and with power-of-two widths (2048 columns = 8 KiB)
 * they all map to the same L1 sets and evict each other: half the speed. */
#define KC 1024 /* columns per pass: 6 tokens x 1024 x 4 B = 24 KiB of L1 */
#define PANEL_BYTES (512 * 1024) /* rows x KC weights kept in L2 across token tiles */

/* w: first of R rows, rb bytes apart; columns [k0, k0 + kc); xp: the packed
 * tokens of those columns; y: output (token 0, row 0), token t at y + t*ldy;
 * add: add to y (a later column pass) rather than overwrite it. */
INLINE void microkernel(enum kind k, const int R, const int T, const uint8_t *w, size_t rb,
                        int64_t k0, int64_t kc, const float *xp, float *y, int64_t ldy, bool add,
                        bool pf)
{
    __m512 acc[MR][NT];
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 6
        for (int j = 0; j < T; j++)
            acc[i][j] = _mm512_setzero_ps();

    if (k == K_Q8_0) {
        for (int64_t b = k0 / MOE_Q8_0_BLOCK; b < (k0 + kc) / MOE_Q8_0_BLOCK; b++) {
            __m512 d[MR];
            if (pf)
#pragma GCC unroll 4
                for (int i = 0; i < R; i++) {
                    const struct moe_block_q8_0 *nb =
                        (const struct moe_block_q8_0 *)(w + (i + R) * rb) + b;
                    _mm_prefetch((const char *)nb, _MM_HINT_T0);
                    _mm_prefetch((const char *)nb + sizeof(*nb) - 1, _MM_HINT_T0);
                }
#pragma GCC unroll 4
            for (int i = 0; i < R; i++)
                d[i] = q8_scale(w + i * rb, b);
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                __m512 wv[MR];
#pragma GCC unroll 4
                for (int i = 0; i < R; i++)
                    wv[i] = q8_half(w + i * rb, b, h, d[i]);
#pragma GCC unroll 6
                for (int j = 0; j < T; j++) {
                    __m512 xv = _mm512_load_ps(xp + j * 16);
#pragma GCC unroll 4
                    for (int i = 0; i < R; i++)
                        acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
                }
                xp += T * 16;
            }
        }
    } else {
        int64_t c = k0, end = k0 + kc;
        for (; c + 16 <= end; c += 16, xp += T * 16) {
            __m512 wv[MR];
            if (pf && (k == K_F32 || (c & 31) == 0)) /* once per 64-byte line */
#pragma GCC unroll 4
                for (int i = 0; i < R; i++)
                    _mm_prefetch((const char *)(w + (i + R) * rb) + c * (k == K_F32 ? 4 : 2),
                                 _MM_HINT_T0);
#pragma GCC unroll 4
            for (int i = 0; i < R; i++)
                wv[i] = load_w16(k, w + i * rb, c);
#pragma GCC unroll 6
            for (int j = 0; j < T; j++) {
                __m512 xv = _mm512_load_ps(xp + j * 16);
#pragma GCC unroll 4
                for (int i = 0; i < R; i++)
                    acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
            }
        }
        if (c < end) { /* the row's last cols % 16 weights; xp is zero padded */
            __mmask16 m = (__mmask16)((1u << (end - c)) - 1);
            __m512 wv[MR];
#pragma GCC unroll 4
            for (int i = 0; i < R; i++)
                wv[i] = load_w16_mask(k, w + i * rb, c, m);
#pragma GCC unroll 6
            for (int j = 0; j < T; j++) {
                __m512 xv = _mm512_load_ps(xp + j * 16);
#pragma GCC unroll 4
                for (int i = 0; i < R; i++)
                    acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
            }
        }
    }

    if (R == MR) {
#pragma GCC unroll 6
        for (int j = 0; j < T; j++) {
            __m128 s = hsum4(acc[0][j], acc[1][j], acc[2][j], acc[3][j]);
            if (add)
                s = _mm_add_ps(s, _mm_loadu_ps(y + j * ldy));
            _mm_storeu_ps(y + j * ldy, s);
        }
    } else {
#pragma GCC unroll 4
        for (int i = 0; i < R; i++)
#pragma GCC unroll 6
            for (int j = 0; j < T; j++) {
                float s = _mm512_reduce_add_ps(acc[i][j]);
                y[j * ldy + i] = add ? y[j * ldy + i] + s : s;
            }
    }
}

/* xp <- tokens [0, T) of x, columns [k0, k0 + kc), zero padded to 16 */
static void pack_x(const float *x, int64_t ldx, int T, int64_t k0, int64_t kc, float *xp)
{
    int64_t c = 0;
    for (; c + 16 <= kc; c += 16, xp += T * 16)
        for (int j = 0; j < T; j++)
            _mm512_store_ps(xp + j * 16, _mm512_loadu_ps(x + j * ldx + k0 + c));
    if (c < kc) {
        __mmask16 m = (__mmask16)((1u << (kc - c)) - 1);
        for (int j = 0; j < T; j++)
            _mm512_store_ps(xp + j * 16, _mm512_maskz_loadu_ps(m, x + j * ldx + k0 + c));
    }
}

/* rows [p0, p1) x T packed tokens */
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
    float xp[NT * KC] __attribute__((aligned(64)));
    const uint8_t *base = w->data;
    size_t rb = w->row_bytes;
    int64_t cols = w->cols;
    /* bytes of one row's KC columns, hence rows per L2 panel */
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
                case 4: panel(k, 4, base, rb, p0, p1, k0, kc, xp, yt, ldy, add, pf); break;
                case 5: panel(k, 5, base, rb, p0, p1, k0, kc, xp, yt, ldy, add, pf); break;
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
    if (n == 1)
        gemv(k, w, r0, r1, x, y);
    else
        gemm_batched(k, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_f32_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                               const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm(K_F32, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_f16_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                               const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm(K_F16, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_bf16_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                                const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm(K_BF16, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_q8_0_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                                const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm(K_Q8_0, w, r0, r1, x, ldx, n, y, ldy);
}

/* ---- fp32 vector helpers ------------------------------------------------ */

float moe_quant_vec_dot_f32_avx512(const float *a, const float *b, int64_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + 16 <= n; i += 16)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

void moe_quant_vec_axpy_f32_avx512(float *y, float a, const float *x, int64_t n)
{
    __m512 av = _mm512_set1_ps(a);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
        _mm512_storeu_ps(y + i + 16,
                         _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16)));
    }
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 r = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, r);
    }
}
