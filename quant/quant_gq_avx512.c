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
 * GQ1/2/3 (code words by lane, quant_gq.h) run the same plan: the group's
 * 16 code words become 16 dwords once (vpmovzxbd / vpmovzxwd; for 3 bits a
 * masked load, vpermd and vpshufb), then weights 16k.. are one shift by
 * bits*k and one vpermps on a table of period 2^bits: the next code's bits
 * above select the same entry. The zero term is inside the table, so the
 * GEMV needs no per-group sums of x and the weights are exactly the
 * reference's. (Bit planes read as mask registers were tried first: masked
 * adds ran at about one per cycle on Zen 5, 2-3x slower than this.) */
#include <immintrin.h>

#include "quant/quant_panel_avx512.h"
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
    __m128i h = _mm_cvtsi32_si128((int)((uint32_t)hs | (uint32_t)hz << 16));
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

INLINE void group_sz_b(const uint8_t *g, __m512 *s, __m512 *z)
{
    uint16_t hs, hz;
    memcpy(&hs, g, 2);
    memcpy(&hz, g + 2, 2);
    __m128 sz = _mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)hs | (uint32_t)hz << 16)));
    *s = _mm512_broadcastss_ps(sz);
    *z = _mm512_broadcastss_ps(_mm_movehdup_ps(sz));
}

/* the 16 code words of a GQ<bits> group (bits 1..3) as 16 dwords */
INLINE __m512i group_words(const int bits, const uint8_t *c)
{
    if (bits == 1)
        return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)c));
    if (bits == 2)
        return _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)c));
    /* 48 bytes (no overread past the group: masked load), 12 per 128-bit
     * lane, then 3 bytes per dword */
    __m512i t = _mm512_maskz_loadu_epi32(0x0fff, c);
    t = _mm512_permutexvar_epi32(
        _mm512_setr_epi32(0, 1, 2, 0, 3, 4, 5, 0, 6, 7, 8, 0, 9, 10, 11, 0), t);
    const __m128i sh = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
    return _mm512_shuffle_epi8(t, _mm512_broadcast_i32x4(sh));
}

/* the group's weights for codes i mod 2^bits, i = 0..15 */
INLINE __m512 group_table_b(const int bits, const uint8_t *g)
{
    static const float iota[3][16] __attribute__((aligned(64))) = {
        {0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1},
        {0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3},
        {0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7}};
    __m512 s, z;
    group_sz_b(g, &s, &z);
    return _mm512_mul_ps(s, _mm512_sub_ps(_mm512_load_ps(iota[bits - 1]), z));
}

INLINE float dot_row_b(const int bits, const uint8_t *row, const float *x, int64_t ng)
{
    const int gb = MOE_GQ_GROUP_BYTES(bits);
    __m512 a[8];
    for (int i = 0; i < 8; i++)
        a[i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; g++, row += gb, x += G) {
        __m512 tab = group_table_b(bits, row);
        __m512i v = group_words(bits, row + 4);
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) {
            __m512i idx = k ? _mm512_srli_epi32(v, bits * k) : v;
            a[k] = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx, tab), _mm512_loadu_ps(x + 16 * k),
                                   a[k]);
        }
    }
    __m512 s0 = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
    __m512 s1 = _mm512_add_ps(_mm512_add_ps(a[4], a[5]), _mm512_add_ps(a[6], a[7]));
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static void gemv_b(int bits, const struct moe_weight *w, int64_t r0, int64_t r1, const float *x,
                   float *y)
{
    const uint8_t *base = w->data;
    int64_t ng = w->cols / G;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = base + (size_t)r * w->row_bytes;
        switch (bits) {
        case 1: y[r] = dot_row_b(1, row, x, ng); break;
        case 2: y[r] = dot_row_b(2, row, x, ng); break;
        default: y[r] = dot_row_b(3, row, x, ng); break;
        }
    }
}

/* ---- n > 1 ---------------------------------------------------------------- */

#define KC PANEL_KC

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
    for (int i = 0; i < R; i++) {
        const uint8_t *g = base + (size_t)i * rb + (k0 / G) * gb;
        float *d = wb + (size_t)i * KC;
        for (int64_t c = 0; c < kc; c += G, g += gb, d += G) {
            __m512 tab = group_table_b(bits, g);
            __m512i v = group_words(bits, g + 4);
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++) {
                __m512i idx = k ? _mm512_srli_epi32(v, bits * k) : v;
                _mm512_store_ps(d + 16 * k, _mm512_permutexvar_ps(idx, tab));
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

void moe_quant_gemm_gq4_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                               const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    if (n <= 0 || r1 <= r0 || moe_quant_gemm_gq4_vnni(w, r0, r1, x, ldx, n, y, ldy))
        return;
    if (n == 1) {
        const uint8_t *base = w->data;
        int64_t ng = w->cols / G;
        for (int64_t r = r0; r < r1; r++)
            y[r] = dot_row(base + (size_t)r * w->row_bytes, x, ng);
    } else {
        panel_gemm(convert_panel, 4, w, r0, r1, x, ldx, n, y, ldy);
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
        panel_gemm(convert_panel, bits, w, r0, r1, x, ldx, n, y, ldy);
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
