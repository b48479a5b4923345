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
 * GQ1/2/3 (bit planes, quant_gq.h): a plane's 32-bit word for weights
 * 32m..32m+31 is broadcast to all lanes; a variable left shift by
 * 31 - (8k + l) puts weight 8k + l's bit into lane l's sign, which blendv
 * reads. n == 1 sums x per plane under those masks and applies scale and
 * zero once per group with the per-group sums of x (as the AVX-512 kernel);
 * n > 1 converts panels to scale * (q - zero) for the GQ4 register blocks. */
#include <immintrin.h>

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
    __m128 sz = _mm_cvtph_ps(_mm_cvtsi32_si128((int)hs | (int)hz << 16));
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

/* lane l of shl[k]: 31 - (8k + l), moving bit 8k + l of a word to the sign */
static const int32_t shl[4][8] __attribute__((aligned(32))) = {
    {31, 30, 29, 28, 27, 26, 25, 24},
    {23, 22, 21, 20, 19, 18, 17, 16},
    {15, 14, 13, 12, 11, 10, 9, 8},
    {7, 6, 5, 4, 3, 2, 1, 0},
};

/* bits 32m..32m+31 of a plane (at byte 4m) in every lane */
INLINE __m256i plane32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32((int)v);
}

INLINE __m256 sign_mask(__m256i v, int k)
{
    return _mm256_castsi256_ps(_mm256_sllv_epi32(v, _mm256_load_si256((const __m256i *)shl[k])));
}

#define SXG 256 /* groups of x sums per pass: 8 KiB of stack, 32768 columns */

/* xs[8 g + l] = sum_k x[128 g + 8 k + l], groups [0, ng) */
static void x_group_sums(const float *x, int64_t ng, float *xs)
{
    for (int64_t g = 0; g < ng; g++, x += G) {
        __m256 a[4];
        for (int i = 0; i < 4; i++)
            a[i] = _mm256_add_ps(_mm256_loadu_ps(x + 16 * i), _mm256_loadu_ps(x + 16 * i + 8));
        for (int i = 4; i < 8; i++)
            a[i % 4] = _mm256_add_ps(a[i % 4], _mm256_add_ps(_mm256_loadu_ps(x + 16 * i),
                                                             _mm256_loadu_ps(x + 16 * i + 8)));
        _mm256_store_ps(xs + 8 * g,
                        _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
    }
}

/* groups [0, ng) of a GQ<bits> row against x; xs from x_group_sums */
INLINE float dot_row_b(const int bits, const uint8_t *row, const float *x, const float *xs,
                       int64_t ng)
{
    enum { NA = 2 };
    const int gb = MOE_GQ_GROUP_BYTES(bits);
    const __m256 zero = _mm256_setzero_ps();
    __m256 tot = zero;
    for (int64_t g = 0; g < ng; g++, row += gb, x += G) {
        __m256 P[3][NA];
#pragma GCC unroll 3
        for (int p = 0; p < bits; p++)
#pragma GCC unroll 2
            for (int a = 0; a < NA; a++)
                P[p][a] = zero;
        const uint8_t *c = row + 4;
#pragma GCC unroll 4
        for (int m = 0; m < 4; m++) {
            __m256i v[3];
#pragma GCC unroll 3
            for (int p = 0; p < bits; p++)
                v[p] = plane32(c + 16 * p + 4 * m);
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                __m256 xv = _mm256_loadu_ps(x + 32 * m + 8 * k);
#pragma GCC unroll 3
                for (int p = 0; p < bits; p++)
                    P[p][k % NA] = _mm256_add_ps(P[p][k % NA],
                                                 _mm256_blendv_ps(zero, xv, sign_mask(v[p], k)));
            }
        }
        __m256 t = _mm256_add_ps(P[bits - 1][0], P[bits - 1][1]);
#pragma GCC unroll 3
        for (int p = bits - 2; p >= 0; p--)
            t = _mm256_fmadd_ps(t, _mm256_set1_ps(2.0f), _mm256_add_ps(P[p][0], P[p][1]));
        __m256 s, z;
        group_sz(row, &s, &z);
        t = _mm256_fnmadd_ps(z, _mm256_load_ps(xs + 8 * g), t);
        tot = _mm256_fmadd_ps(s, t, tot);
    }
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(tot), _mm256_extractf128_ps(tot, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

static void gemv_b(const int bits, const struct moe_weight *w, int64_t r0, int64_t r1,
                   const float *x, float *y)
{
    float xs[SXG * 8] __attribute__((aligned(32)));
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

#define MR 3
#define NT 4
#define KC 1024 /* columns per pass, a multiple of G: 4 tokens x 4 KiB of L1 */
#define PR 30   /* rows per converted panel (a multiple of MR): 120 KiB of L2 */

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

/* the same for GQ<bits>, bits 1..3: q = sum over planes of 2^p where the
 * plane's bit is set, exact in fp32, then scale * (q - zero) */
INLINE void convert_panel_b(const int bits, const uint8_t *base, size_t rb, int R, int64_t k0,
                            int64_t kc, float *wb)
{
    const int gb = MOE_GQ_GROUP_BYTES(bits);
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    const __m256 two = _mm256_set1_ps(2.0f), four = _mm256_set1_ps(4.0f);
    for (int i = 0; i < R; i++) {
        const uint8_t *g = base + (size_t)i * rb + (k0 / G) * gb;
        float *d = wb + (size_t)i * KC;
        for (int64_t c = 0; c < kc; c += G, g += gb, d += G) {
            __m256 s, z;
            group_sz(g, &s, &z);
#pragma GCC unroll 4
            for (int m = 0; m < 4; m++) {
                __m256i v0 = plane32(g + 4 + 4 * m), v1 = v0, v2 = v0;
                if (bits > 1)
                    v1 = plane32(g + 20 + 4 * m);
                if (bits > 2)
                    v2 = plane32(g + 36 + 4 * m);
#pragma GCC unroll 4
                for (int k = 0; k < 4; k++) {
                    __m256 q = _mm256_blendv_ps(zero, one, sign_mask(v0, k));
                    if (bits > 1)
                        q = _mm256_add_ps(q, _mm256_blendv_ps(zero, two, sign_mask(v1, k)));
                    if (bits > 2)
                        q = _mm256_add_ps(q, _mm256_blendv_ps(zero, four, sign_mask(v2, k)));
                    _mm256_store_ps(d + 32 * m + 8 * k, _mm256_mul_ps(s, _mm256_sub_ps(q, z)));
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

static void pack_x(const float *x, int64_t ldx, int T, int64_t k0, int64_t kc, float *xp)
{
    for (int64_t c = 0; c < kc; c += 8, xp += T * 8)
        for (int j = 0; j < T; j++)
            _mm256_store_ps(xp + j * 8, _mm256_loadu_ps(x + j * ldx + k0 + c));
}

INLINE float hsum8(__m256 v)
{
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

INLINE void microkernel(const int R, const int T, const float *wb, int64_t kc, const float *xp,
                        float *y, int64_t ldy, bool add)
{
    __m256 acc[MR][NT];
#pragma GCC unroll 3
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int j = 0; j < T; j++)
            acc[i][j] = _mm256_setzero_ps();
    for (int64_t c = 0; c < kc; c += 8, xp += T * 8) {
        __m256 wv[MR];
#pragma GCC unroll 3
        for (int i = 0; i < R; i++)
            wv[i] = _mm256_load_ps(wb + i * KC + c);
#pragma GCC unroll 4
        for (int j = 0; j < T; j++) {
            __m256 xv = _mm256_load_ps(xp + j * 8);
#pragma GCC unroll 3
            for (int i = 0; i < R; i++)
                acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
#pragma GCC unroll 3
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int j = 0; j < T; j++) {
            float s = hsum8(acc[i][j]);
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
    float wb[PR * KC] __attribute__((aligned(32)));
    float xp[NT * KC] __attribute__((aligned(32)));
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
                default: tile(NT, R, wb, kc, xp, yt, ldy, add); break;
                }
            }
        }
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
