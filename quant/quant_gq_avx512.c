/* GQ4 and GQ1/2/3 gemm on AVX-512. Only called after moe_isa_best() has
 * seen avx512f/bw/vl/dq in cpuid.
 *
 * Weights are made exactly as the reference makes them: per group a 16-entry
 * table {scale * (q - zero)} (fp32 sub then mul), looked up with vpermps,
 * which reads only the low 4 bits of each index. With the nibble order of
 * quant_gq.c, 16 code bytes zero-extended to 16 dwords give weights j (low
 * nibbles) and, after one shift, weights j + 16 (high nibbles): two lookups
 * per 32 weights and no masking.
 *
 * n == 1 (decode) streams each row front to back (4.25 bits per weight) with
 * eight accumulators.
 * n > 1: a panel of PR rows x KC columns is converted once into an fp32
 * buffer on the stack, then a 4-row x 6-token register block (as in
 * quant_gemm_avx512.c) applies it to every tile of packed tokens.
 *
 * GQ1/2/3 (bit planes, quant_gq.h): each plane's 16-bit word for 16
 * consecutive weights is a mask register. n == 1 never makes weights: with
 * the per-group sums of x (16 lanes per group, once per call, shared by all
 * rows), row . x = sum_g scale_g * (sum_p 2^p P_p - zero_g * sum x), where
 * P_p = sum of x over the weights with bit p set is one masked add per 16
 * weights and plane. n > 1 converts panels (q = masked adds of 1, 2, 4;
 * w = scale * (q - zero), exactly the reference's values) and then runs the
 * GQ4 register blocks unchanged. */
#include <immintrin.h>

#include "common/common.h"
#include "quant/quant_gq.h"
#include "quant/quant_int.h"

#define INLINE static inline __attribute__((always_inline))

#define G MOE_GQ_GROUP
#define GB MOE_GQ4_GROUP_BYTES

/* the group's 16 possible weights */
INLINE __m512 group_table(const uint8_t *g)
{
    static const float iota[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    uint16_t hs, hz;
    memcpy(&hs, g, 2);
    memcpy(&hz, g + 2, 2);
    __m128i h = _mm_cvtsi32_si128((int)hs | (int)hz << 16);
    __m128 sz = _mm_cvtph_ps(h);
    __m512 s = _mm512_broadcastss_ps(sz);
    __m512 z = _mm512_broadcastss_ps(_mm_movehdup_ps(sz));
    return _mm512_mul_ps(s, _mm512_sub_ps(_mm512_loadu_ps(iota), z));
}

/* ---- n == 1 --------------------------------------------------------------- */

INLINE float dot_row(const uint8_t *row, const float *x, int64_t ng)
{
    __m512 a[8];
    for (int i = 0; i < 8; i++)
        a[i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; g++, row += GB, x += G) {
        __m512 tab = group_table(row);
        const uint8_t *c = row + 4;
#pragma GCC unroll 4
        for (int s = 0; s < 4; s++) {
            __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c + 16 * s)));
            __m512 lo = _mm512_permutexvar_ps(v, tab);
            __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tab);
            a[2 * s] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + 32 * s), a[2 * s]);
            a[2 * s + 1] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + 32 * s + 16), a[2 * s + 1]);
        }
    }
    __m512 s0 = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
    __m512 s1 = _mm512_add_ps(_mm512_add_ps(a[4], a[5]), _mm512_add_ps(a[6], a[7]));
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

/* 16 consecutive weights' bits of one plane (16 code bytes) */
INLINE __mmask16 plane16(const uint8_t *p)
{
    uint16_t m;
    memcpy(&m, p, 2);
    return _cvtu32_mask16(m);
}

INLINE void group_sz_b(const uint8_t *g, __m512 *s, __m512 *z)
{
    uint16_t hs, hz;
    memcpy(&hs, g, 2);
    memcpy(&hz, g + 2, 2);
    __m128 sz = _mm_cvtph_ps(_mm_cvtsi32_si128((int)hs | (int)hz << 16));
    *s = _mm512_broadcastss_ps(sz);
    *z = _mm512_broadcastss_ps(_mm_movehdup_ps(sz));
}

#define SXG 256 /* groups of x sums per pass: 16 KiB of stack, 32768 columns */

/* xs[16 g + l] = sum_k x[128 g + 16 k + l], groups [0, ng) */
static void x_group_sums(const float *x, int64_t ng, float *xs)
{
    for (int64_t g = 0; g < ng; g++, x += G) {
        __m512 a = _mm512_add_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(x + 16));
        __m512 b = _mm512_add_ps(_mm512_loadu_ps(x + 32), _mm512_loadu_ps(x + 48));
        __m512 c = _mm512_add_ps(_mm512_loadu_ps(x + 64), _mm512_loadu_ps(x + 80));
        __m512 d = _mm512_add_ps(_mm512_loadu_ps(x + 96), _mm512_loadu_ps(x + 112));
        _mm512_store_ps(xs + 16 * g, _mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d)));
    }
}

/* groups [0, ng) of a GQ<bits> row against x; xs from x_group_sums. NA
 * accumulators per plane keep enough independent add chains in flight. */
INLINE float dot_row_b(const int bits, const uint8_t *row, const float *x, const float *xs,
                       int64_t ng)
{
    enum { NA = 4 };
    const int gb = MOE_GQ_GROUP_BYTES(bits), na = bits == 1 ? NA : 2;
    __m512 tot0 = _mm512_setzero_ps(), tot1 = tot0;
    for (int64_t g = 0; g < ng; g++, row += gb, x += G) {
        __m512 P[3][NA];
#pragma GCC unroll 3
        for (int p = 0; p < bits; p++)
#pragma GCC unroll 4
            for (int a = 0; a < na; a++)
                P[p][a] = _mm512_setzero_ps();
        const uint8_t *c = row + 4;
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            __m512 xv = _mm512_loadu_ps(x + 16 * k);
#pragma GCC unroll 3
            for (int p = 0; p < bits; p++)
                P[p][k % na] =
                    _mm512_mask_add_ps(P[p][k % na], plane16(c + 16 * p + 2 * k), P[p][k % na], xv);
        }
        /* t = sum_p 2^p P_p - zero * (sum x), then tot += scale * t */
        __m512 t = P[bits - 1][0];
#pragma GCC unroll 4
        for (int a = 1; a < na; a++)
            t = _mm512_add_ps(t, P[bits - 1][a]);
#pragma GCC unroll 3
        for (int p = bits - 2; p >= 0; p--) {
            __m512 u = P[p][0];
#pragma GCC unroll 4
            for (int a = 1; a < na; a++)
                u = _mm512_add_ps(u, P[p][a]);
            t = _mm512_fmadd_ps(t, _mm512_set1_ps(2.0f), u);
        }
        __m512 s, z;
        group_sz_b(row, &s, &z);
        t = _mm512_fnmadd_ps(z, _mm512_load_ps(xs + 16 * g), t);
        if (g & 1)
            tot1 = _mm512_fmadd_ps(s, t, tot1);
        else
            tot0 = _mm512_fmadd_ps(s, t, tot0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(tot0, tot1));
}

static void gemv_b(const int bits, const struct moe_weight *w, int64_t r0, int64_t r1,
                   const float *x, float *y)
{
    float xs[SXG * 16] __attribute__((aligned(64)));
    const uint8_t *base = w->data;
    const size_t gb = MOE_GQ_GROUP_BYTES(bits);
    int64_t ng = w->cols / G;
    for (int64_t g0 = 0; g0 < ng; g0 += SXG) {
        int64_t gn = MOE_MIN((int64_t)SXG, ng - g0);
        x_group_sums(x + g0 * G, gn, xs);
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *row = base + (size_t)r * w->row_bytes + (size_t)g0 * gb;
            float v;
            switch (bits) {
            case 1: v = dot_row_b(1, row, x + g0 * G, xs, gn); break;
            case 2: v = dot_row_b(2, row, x + g0 * G, xs, gn); break;
            default: v = dot_row_b(3, row, x + g0 * G, xs, gn); break;
            }
            y[r] = g0 ? y[r] + v : v;
        }
    }
}

/* ---- n > 1 ---------------------------------------------------------------- */

#define MR 4
#define NT 6
#define KC 1024 /* columns per pass, a multiple of G: 6 tokens x 4 KiB of L1 */
#define PR 32   /* rows per converted panel: 32 x KC x 4 B = 128 KiB of L2 */

/* rows [0, R) of the panel, columns [k0, k0 + kc) -> wb[R][KC] */
static void convert_panel4(const uint8_t *base, size_t rb, int R, int64_t k0, int64_t kc,
                          float *wb)
{
    for (int i = 0; i < R; i++) {
        const uint8_t *g = base + (size_t)i * rb + (k0 / G) * GB;
        float *d = wb + (size_t)i * KC;
        for (int64_t c = 0; c < kc; c += G, g += GB, d += G) {
            __m512 tab = group_table(g);
#pragma GCC unroll 4
            for (int s = 0; s < 4; s++) {
                __m512i v =
                    _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(g + 4 + 16 * s)));
                _mm512_store_ps(d + 32 * s, _mm512_permutexvar_ps(v, tab));
                _mm512_store_ps(d + 32 * s + 16,
                                _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), tab));
            }
        }
    }
}

/* the same for GQ<bits>, bits 1..3 */
INLINE void convert_panel_b(const int bits, const uint8_t *base, size_t rb, int R, int64_t k0,
                            int64_t kc, float *wb)
{
    const int gb = MOE_GQ_GROUP_BYTES(bits);
    const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
    const __m512 four = _mm512_set1_ps(4.0f);
    for (int i = 0; i < R; i++) {
        const uint8_t *g = base + (size_t)i * rb + (k0 / G) * gb;
        float *d = wb + (size_t)i * KC;
        for (int64_t c = 0; c < kc; c += G, g += gb, d += G) {
            __m512 s, z;
            group_sz_b(g, &s, &z);
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) {
                __m512 q = _mm512_maskz_mov_ps(plane16(g + 4 + 2 * k), one);
                if (bits > 1)
                    q = _mm512_mask_add_ps(q, plane16(g + 20 + 2 * k), q, two);
                if (bits > 2)
                    q = _mm512_mask_add_ps(q, plane16(g + 36 + 2 * k), q, four);
                _mm512_store_ps(d + 16 * k, _mm512_mul_ps(s, _mm512_sub_ps(q, z)));
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

/* xp <- tokens [0, T) of x, columns [k0, k0 + kc) (kc a multiple of 16) */
static void pack_x(const float *x, int64_t ldx, int T, int64_t k0, int64_t kc, float *xp)
{
    for (int64_t c = 0; c < kc; c += 16, xp += T * 16)
        for (int j = 0; j < T; j++)
            _mm512_store_ps(xp + j * 16, _mm512_loadu_ps(x + j * ldx + k0 + c));
}

/* {sum a, sum b, sum c, sum d} */
INLINE __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d)
{
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a8, b8), _mm256_hadd_ps(c8, d8));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* R rows of wb (KC apart) x T packed tokens over kc columns */
INLINE void microkernel(const int R, const int T, const float *wb, int64_t kc, const float *xp,
                        float *y, int64_t ldy, bool add)
{
    __m512 acc[MR][NT];
#pragma GCC unroll 4
    for (int i = 0; i < R; i++)
#pragma GCC unroll 6
        for (int j = 0; j < T; j++)
            acc[i][j] = _mm512_setzero_ps();
    for (int64_t c = 0; c < kc; c += 16, xp += T * 16) {
        __m512 wv[MR];
#pragma GCC unroll 4
        for (int i = 0; i < R; i++)
            wv[i] = _mm512_load_ps(wb + i * KC + c);
#pragma GCC unroll 6
        for (int j = 0; j < T; j++) {
            __m512 xv = _mm512_load_ps(xp + j * 16);
#pragma GCC unroll 4
            for (int i = 0; i < R; i++)
                acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
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

INLINE void tile(const int T, int R, const float *wb, int64_t kc, const float *xp, float *y,
                 int64_t ldy, bool add)
{
    int i = 0;
    for (; i + MR <= R; i += MR)
        microkernel(MR, T, wb + (size_t)i * KC, kc, xp, y + i, ldy, add);
    for (; i < R; i++)
        microkernel(1, T, wb + (size_t)i * KC, kc, xp, y + i, ldy, add);
}

static void gemm_batched(int bits, const struct moe_weight *w, int64_t r0, int64_t r1,
                         const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    float wb[PR * KC] __attribute__((aligned(64)));
    float xp[NT * KC] __attribute__((aligned(64)));
    const uint8_t *base = w->data;
    size_t rb = w->row_bytes;
    int64_t cols = w->cols;
    for (int64_t p0 = r0; p0 < r1; p0 += PR) {
        int R = (int)MOE_MIN((int64_t)PR, r1 - p0);
        for (int64_t k0 = 0; k0 < cols; k0 += KC) {
            int64_t kc = MOE_MIN((int64_t)KC, cols - k0);
            convert_panel(bits, base + (size_t)p0 * rb, rb, R, k0, kc, wb);
            bool add = k0 > 0;
            for (int t0 = 0; t0 < n; t0 += NT) {
                int T = MOE_MIN(NT, n - t0);
                pack_x(x + t0 * ldx, ldx, T, k0, kc, xp);
                float *yt = y + t0 * ldy + p0;
                switch (T) {
                case 1: tile(1, R, wb, kc, xp, yt, ldy, add); break;
                case 2: tile(2, R, wb, kc, xp, yt, ldy, add); break;
                case 3: tile(3, R, wb, kc, xp, yt, ldy, add); break;
                case 4: tile(4, R, wb, kc, xp, yt, ldy, add); break;
                case 5: tile(5, R, wb, kc, xp, yt, ldy, add); break;
                default: tile(NT, R, wb, kc, xp, yt, ldy, add); break;
                }
            }
        }
    }
}

void moe_quant_gemm_gq4_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
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
        gemm_batched(4, w, r0, r1, x, ldx, n, y, ldy);
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
        gemm_batched(bits, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_gq1_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                               const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm_gqb(1, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_gq2_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                               const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm_gqb(2, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_gq3_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                               const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm_gqb(3, w, r0, r1, x, ldx, n, y, ldy);
}
