/* QMoE gemm with AVX-512 + VNNI: ternary rows as integer dot products.
 * Only called after moe_isa_best() has seen avx512f/bw/vl/dq, on a matrix
 * moe_qmoe_view() accepted.
 *
 * A row's weights are lo (digit 1), hi (digit 2) or 0, so
 *   y = lo * S1 + hi * S2,  S1 = sum of x where digit 1, S2 where digit 2.
 * x is quantised per token to int16 (s = max|x| / 32767): S1 and S2 are then
 * exact int32 sums, and y = s * (lo * S1 + hi * S2) differs from the float
 * sum by at most max|x| / 65534 * sum|w|. Integer sums do not depend on the
 * order of the additions, so a token gets bit-identical outputs alone or in
 * any batch, through any row range.
 *
 * Two phases per block of 16 rows (MOE_QMOE_ROW_BLOCK):
 * 1. decode: the block's codewords, [block_start[b], block_start[b + 1]),
 *    become one digit byte per weight (row i at i * ce). Per codeword: its
 *    8-byte side-table entry broadcast, one vpmultishiftqb (or, without
 *    VBMI, a shuffle and two shift-blends), one 32-byte store. The trip
 *    count is known, so no branch waits on the table. The old kernel
 *    stopped at each row's end, a branch on the loaded codeword lengths that
 *    mispredicted once a row and resolved only after the table loads
 *    (512 KiB, L2 or L3): about 40% of its time went there.
 * 2. apply: per 32 weights, vpmovzxbw of 32 digit bytes, `and` with 1 and
 *    with 2 (the lo and hi indicators), two vpdpwssd against int16 x. In
 *    batches each indicator vector serves every token of a tile.
 *
 * The decode stays the cost: about 2 cycles per codeword (18 weights at
 * P(0) = 0.85) bound by the random table loads. A dictionary small enough
 * for L1 (4096 entries) would lift that, at a cost in bits per weight.
 *
 * x past cols is never read: the int16 copy is padded with zeros, which
 * also meet the digit bytes past a row's end. Rows wider than MAXC columns,
 * x that is not finite, or a CPU without VNNI go to the AVX2 kernel (its
 * float sums carry NaN and infinities as the reference does). */
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "quant/quant_int.h"

#define INLINE static inline __attribute__((always_inline))
#define NT 8       /* tokens per tile (n > 1) */
#define MAXC 8192  /* widest row on this path: NT int16 copies on the stack */
#define XPAD 32    /* zero words after a token's copy: a codeword's reach */
#define LDQ (MAXC + XPAD)
#define GR MOE_QMOE_ROW_BLOCK /* rows decoded at a time: one block */

/* vpmultishiftqb control: byte k takes the 8 bits from 8 + 2k (digit k in
 * its low two bits); bytes 28..31 take the count byte, which the next
 * codeword's store overwrites or which meets zero x */
static const uint8_t ms_ctrl[32] __attribute__((aligned(32))) = {
    8,  10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38,
    40, 42, 44, 46, 48, 50, 52, 54, 56, 58, 60, 62, 0,  0,  0,  0};

/* the same without VBMI: byte k <- entry byte 1 + k/4 (shuffle), then
 * shifted right by 4 where k%4 >= 2 and by 2 more where k is odd */
static const uint8_t sh_ctrl[32] __attribute__((aligned(32))) = {
    1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4,
    5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7};
static const uint8_t sh_sel4[32] __attribute__((aligned(32))) = {
    0, 0, 0x80, 0x80, 0, 0, 0x80, 0x80, 0, 0, 0x80, 0x80, 0, 0, 0x80, 0x80,
    0, 0, 0x80, 0x80, 0, 0, 0x80, 0x80, 0, 0, 0x80, 0x80, 0, 0, 0x80, 0x80};
static const uint8_t sh_sel2[32] __attribute__((aligned(32))) = {
    0, 0x80, 0, 0x80, 0, 0x80, 0, 0x80, 0, 0x80, 0, 0x80, 0, 0x80, 0, 0x80,
    0, 0x80, 0, 0x80, 0, 0x80, 0, 0x80, 0, 0x80, 0, 0x80, 0, 0x80, 0, 0x80};

/* Codewords [j, jb) into digit bytes at buf[0..): the rows of a range are
 * one stream (a codeword never crosses a row end), so row i's digits land
 * at i * ce. The trip count is known: no branch waits on the table. */
#define DECODE_STREAM(DIGITS)                                                 \
    int64_t p = 0;                                                            \
    for (; j < jb; j++) {                                                     \
        const uint64_t *e_ = d + code[j];                                     \
        _mm256_storeu_si256((__m256i *)(buf + p), DIGITS);                    \
        p += *(const uint8_t *)e_;                                            \
    }

__attribute__((target("avx512vbmi"))) static void
decode_vbmi(const uint64_t *d, const uint16_t *code, uint32_t j, uint32_t jb, uint8_t *buf)
{
    const __m256i ctrl = _mm256_load_si256((const __m256i *)ms_ctrl);
    DECODE_STREAM(_mm256_multishift_epi64_epi8(ctrl, _mm256_set1_epi64x((long long)*e_)))
}

static void decode_shuf(const uint64_t *d, const uint16_t *code, uint32_t j, uint32_t jb,
                        uint8_t *buf)
{
    const __m256i ctrl = _mm256_load_si256((const __m256i *)sh_ctrl);
    const __m256i sel4 = _mm256_load_si256((const __m256i *)sh_sel4);
    const __m256i sel2 = _mm256_load_si256((const __m256i *)sh_sel2);
    DECODE_STREAM(({
        __m256i v_ = _mm256_shuffle_epi8(_mm256_set1_epi64x((long long)*e_), ctrl);
        v_ = _mm256_blendv_epi8(v_, _mm256_srli_epi16(v_, 4), sel4);
        _mm256_blendv_epi8(v_, _mm256_srli_epi16(v_, 2), sel2);
    }))
}

typedef void (*decode_fn)(const uint64_t *, const uint16_t *, uint32_t, uint32_t, uint8_t *);

/* x rows [0, T) quantised into q (LDQ words apart), zero-padded; scale[t]
 * = max|x_t| / 32767. False when some x is not finite. */
static bool quantise(const float *x, int64_t ldx, int T, int64_t cols, int16_t *q, float *scale)
{
    const __m512 absm = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int t = 0; t < T; t++) {
        const float *xt = x + (int64_t)t * ldx;
        int16_t *qt = q + (int64_t)t * LDQ;
        __m512 mx = _mm512_setzero_ps();
        __mmask16 bad = 0;
        for (int64_t c = 0; c < cols; c += 16) {
            __mmask16 m = cols - c >= 16 ? 0xffff : (__mmask16)((1u << (cols - c)) - 1);
            __m512 v = _mm512_maskz_loadu_ps(m, xt + c);
            bad |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            mx = _mm512_max_ps(mx, _mm512_and_ps(v, absm));
        }
        float amax = _mm512_reduce_max_ps(mx);
        if (bad || !isfinite(amax))
            return false;
        scale[t] = amax / 32767.0f;
        const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 32767.0f / amax : 0.0f);
        for (int64_t c = 0; c < cols; c += 16) {
            __mmask16 m = cols - c >= 16 ? 0xffff : (__mmask16)((1u << (cols - c)) - 1);
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, xt + c), inv));
            _mm256_mask_storeu_epi16(qt + c, m, _mm512_cvtsepi32_epi16(v));
        }
        memset(qt + cols, 0, XPAD * sizeof(int16_t));
    }
    return true;
}

/* one formula for every path, so outputs do not depend on the batch */
INLINE float combine(float scale, float lo, float hi, __m512i s1, __m512i s2)
{
    return scale * (lo * (float)_mm512_reduce_add_epi32(s1) +
                    hi * 0.5f * (float)_mm512_reduce_add_epi32(s2)); /* s2 counts hi twice */
}

INLINE float row_lo(const struct moe_qmoe_layout *L, int64_t r)
{
    return -moe_qmoe_level_decode(L->scale, L->level[2 * r]);
}

INLINE float row_hi(const struct moe_qmoe_layout *L, int64_t r)
{
    return moe_qmoe_level_decode(L->scale, L->level[2 * r + 1]);
}

/* digit bytes [0, ce) of a row against T tokens' int16 x: S1 (lo) and S2
 * (hi, counted twice) per token. Bytes past ce (the next row's digits or
 * garbage) meet the zeros after each token's x. */
__attribute__((target("avx512vnni"), always_inline)) static inline void
apply(const int T, const uint8_t *dg, int64_t ce, const int16_t *q, __m512i *s1, __m512i *s2)
{
    const __m512i one = _mm512_set1_epi16(1), two = _mm512_set1_epi16(2);
    __m512i a[NT], b[NT], a2 = _mm512_setzero_si512(), b2 = a2;
#pragma GCC unroll 8
    for (int t = 0; t < T; t++)
        a[t] = b[t] = _mm512_setzero_si512();
    int64_t c = 0;
    if (T == 1) /* a second pair of sums hides the dot products' latency */
        for (; c + 64 <= ce; c += 64) {
            __m512i w0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(dg + c)));
            __m512i w1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(dg + c + 32)));
            __m512i x0 = _mm512_loadu_si512(q + c), x1 = _mm512_loadu_si512(q + c + 32);
            a[0] = _mm512_dpwssd_epi32(a[0], _mm512_and_si512(w0, one), x0);
            b[0] = _mm512_dpwssd_epi32(b[0], _mm512_and_si512(w0, two), x0);
            a2 = _mm512_dpwssd_epi32(a2, _mm512_and_si512(w1, one), x1);
            b2 = _mm512_dpwssd_epi32(b2, _mm512_and_si512(w1, two), x1);
        }
    for (; c < ce; c += 32) {
        __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(dg + c)));
        __m512i wl = _mm512_and_si512(w, one), wh = _mm512_and_si512(w, two);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            __m512i xv = _mm512_loadu_si512(q + (int64_t)t * LDQ + c);
            a[t] = _mm512_dpwssd_epi32(a[t], wl, xv);
            b[t] = _mm512_dpwssd_epi32(b[t], wh, xv);
        }
    }
    s1[0] = _mm512_add_epi32(a[0], a2);
    s2[0] = _mm512_add_epi32(b[0], b2);
#pragma GCC unroll 8
    for (int t = 1; t < T; t++) {
        s1[t] = a[t];
        s2[t] = b[t];
    }
}

/* rows [0, nr) of a decoded range against T tokens */
__attribute__((target("avx512vnni"), always_inline)) static inline void
apply_rows(const int T, const struct moe_qmoe_layout *L, int64_t r0, int64_t nr, int64_t ce,
           const uint8_t *buf, const int16_t *q, const float *scale, float *y, int64_t ldy)
{
    for (int64_t i = 0; i < nr; i++) {
        __m512i s1[NT], s2[NT];
        apply(T, buf + i * ce, ce, q, s1, s2);
        float lo = row_lo(L, r0 + i), hi = row_hi(L, r0 + i);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            y[(int64_t)t * ldy + r0 + i] = combine(scale[t], lo, hi, s1[t], s2[t]);
    }
}

__attribute__((target("avx512vnni"))) static void
apply_tile(int T, const struct moe_qmoe_layout *L, int64_t r0, int64_t nr, int64_t ce,
           const uint8_t *buf, const int16_t *q, const float *scale, float *y, int64_t ldy)
{
    switch (T) {
    case 1: apply_rows(1, L, r0, nr, ce, buf, q, scale, y, ldy); break;
    case 2: apply_rows(2, L, r0, nr, ce, buf, q, scale, y, ldy); break;
    case 3: apply_rows(3, L, r0, nr, ce, buf, q, scale, y, ldy); break;
    case 4: apply_rows(4, L, r0, nr, ce, buf, q, scale, y, ldy); break;
    case 5: apply_rows(5, L, r0, nr, ce, buf, q, scale, y, ldy); break;
    case 6: apply_rows(6, L, r0, nr, ce, buf, q, scale, y, ldy); break;
    case 7: apply_rows(7, L, r0, nr, ce, buf, q, scale, y, ldy); break;
    default: apply_rows(NT, L, r0, nr, ce, buf, q, scale, y, ldy); break;
    }
}

static decode_fn decoder(void)
{
    static int vbmi = -1; /* racing first calls store the same answer */
    int v = __atomic_load_n(&vbmi, __ATOMIC_RELAXED);
    if (v < 0) {
        /* MOE_QMOE_NO_VBMI=1: the shuffle decoder, to test it on a VBMI CPU */
        const char *off = getenv("MOE_QMOE_NO_VBMI");
        v = __builtin_cpu_supports("avx512vbmi") && !(off && *off && *off != '0');
        __atomic_store_n(&vbmi, v, __ATOMIC_RELAXED);
    }
    return v ? decode_vbmi : decode_shuf;
}

void moe_quant_gemm_qmoe_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                                const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    if (r1 <= r0 || n <= 0)
        return;
    int64_t cols = w->cols, ce = (cols + 1) & ~(int64_t)1;
    if (cols > MAXC || !__builtin_cpu_supports("avx512vnni")) {
        moe_quant_gemm_qmoe_avx2(w, r0, r1, x, ldx, n, y, ldy);
        return;
    }
    decode_fn decode = decoder();
    struct moe_qmoe_layout L;
    moe_qmoe_layout_get(w, &L);
    const struct moe_qmoe_side *s = w->aux;
    int16_t q[NT * LDQ] __attribute__((aligned(64)));
    uint8_t buf[GR * (MAXC + 2) + XPAD] __attribute__((aligned(64)));
    float scale[NT];
    /* token tiles outside, so each tile's x is quantised once; row ranges
     * inside, decoded once per tile */
    for (int t0 = 0; t0 < n; t0 += NT) {
        int T = MOE_MIN(NT, n - t0);
        if (!quantise(x + (int64_t)t0 * ldx, ldx, T, cols, q, scale)) {
            moe_quant_gemm_qmoe_avx2(w, r0, r1, x + (int64_t)t0 * ldx, ldx, n - t0,
                                     y + (int64_t)t0 * ldy, ldy);
            return;
        }
        uint32_t j = moe_qmoe_row_seek(&L, s, cols, r0);
        for (int64_t ra = r0; ra < r1;) {
            /* up to the next block boundary, where block_start says where
             * the codewords end without walking them */
            int64_t rb = MOE_MIN(r1, (ra / GR + 1) * GR);
            uint32_t jb = rb % GR == 0 || rb == w->rows
                              ? moe_qmoe_block_start(&L, (rb + GR - 1) / GR)
                              : moe_qmoe_row_seek(&L, s, cols, rb);
            decode(s->d, L.code, j, jb, buf);
            apply_tile(T, &L, ra, rb - ra, ce, buf, q, scale, y + (int64_t)t0 * ldy, ldy);
            j = jb;
            ra = rb;
        }
    }
}
