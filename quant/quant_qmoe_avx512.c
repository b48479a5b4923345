/* QMoE gemm with AVX-512. Only called after moe_isa_best() has seen
 * avx512f/bw/vl/dq (and with them avx2 + bmi2), on a matrix moe_qmoe_view()
 * accepted.
 *
 * Two phases per row (and per segment of SEG columns, so a long row needs
 * no big buffer):
 * 1. decode: the row's codewords become one digit byte per weight in a
 *    small buffer in L1 (a row of bytes, never the matrix in floats). Per
 *    codeword: broadcast its side-table entry d (2 * count in bits 0-7,
 *    digit k at bits 8+2k), one vpmultishiftqb puts digit k in the low two
 *    bits of byte k (the bits above are the following digits: garbage the
 *    lookup below ignores), one 32-byte store at the codeword's column;
 *    the next codeword's store overwrites the tail. No mask registers.
 *    Without VBMI the same bytes come from a shuffle and two shift-blends.
 * 2. apply: per 16 weights, vpmovzxbd of 16 digit bytes and vpermps from
 *    {0, lo, hi, 0} x 4 (only the low two bits of the index matter) give
 *    the weights; FMA with x. x is read unmasked except at the row's end,
 *    where the load is masked to the columns (so nothing past cols is read
 *    and x is zero against the digit bytes past the row).
 *
 * Measured on Zen 5 (2816x2048, P(0) = 0.85, in cache): the old fused
 * kernel (masked loads of x by the digit masks) ran 12 G weights/s, bound
 * by moving masks from GPRs into k registers; this one decodes a codeword
 * in ~2 cycles (side-table load from L2 + store) and applies 16 weights in
 * about one.
 *
 * n > 1: a row segment is decoded once, then applied to every token in
 * tiles of NT, one weight vector per 16 columns shared by the tile; x must
 * be finite there (a zero weight meets x), as activations are. */
#include <immintrin.h>
#include <stdlib.h>

#include "common/common.h"
#include "quant/quant_int.h"

#define INLINE static inline __attribute__((always_inline))
#define NT 8      /* tokens per tile */
#define SEG 4096  /* columns decoded at a time: multiple of 64 */
#define PRE 32    /* bytes before a segment: a codeword started in the last one */
#define POST 64   /* bytes after: the last codeword's tail and the last 16-chunk */

/* vpmultishiftqb control: byte k takes the 8 bits from 8 + 2k */
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

/* decoder state: codeword j starts at column p */
struct dec {
    uint32_t j;
    int64_t p;
};

/* Decodes the codewords that start in [c0, c1) into buf (buf[0] is column
 * c0; buf[-PRE..) takes a codeword carried over from the last segment).
 * On return st is the first codeword starting at or past c1, or, when the
 * last one decoded runs past c1 < cols, that one again: the next segment
 * redoes it at a negative offset. */
#define DECODE_LOOP(STORE)                                                    \
    uint32_t j = st->j;                                                       \
    int64_t p = st->p - c0, end = c1 - c0;                                    \
    unsigned last = 0;                                                        \
    do {                                                                      \
        const uint64_t *e = d + code[j++];                                    \
        STORE;                                                                \
        last = *(const uint8_t *)e;                                           \
        p += last;                                                            \
    } while (p < end);                                                        \
    if (p > end && c1 < cols) {                                               \
        j--;                                                                  \
        p -= last;                                                            \
    }                                                                         \
    st->j = j;                                                                \
    st->p = p + c0;

__attribute__((target("avx512vbmi"))) static void
decode_vbmi(const uint64_t *d, const uint16_t *code, struct dec *st, int64_t c0, int64_t c1,
            int64_t cols, uint8_t *buf)
{
    const __m256i ctrl = _mm256_load_si256((const __m256i *)ms_ctrl);
    DECODE_LOOP(_mm256_storeu_si256((__m256i *)(buf + p),
                                    _mm256_multishift_epi64_epi8(
                                        ctrl, _mm256_set1_epi64x((long long)*e))))
}

INLINE __m256i digits_shuf(const uint64_t *e, __m256i ctrl, __m256i sel4, __m256i sel2)
{
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi64x((long long)*e), ctrl);
    v = _mm256_blendv_epi8(v, _mm256_srli_epi16(v, 4), sel4);
    return _mm256_blendv_epi8(v, _mm256_srli_epi16(v, 2), sel2);
}

static void decode_shuf(const uint64_t *d, const uint16_t *code, struct dec *st, int64_t c0,
                        int64_t c1, int64_t cols, uint8_t *buf)
{
    const __m256i ctrl = _mm256_load_si256((const __m256i *)sh_ctrl);
    const __m256i sel4 = _mm256_load_si256((const __m256i *)sh_sel4);
    const __m256i sel2 = _mm256_load_si256((const __m256i *)sh_sel2);
    DECODE_LOOP(_mm256_storeu_si256((__m256i *)(buf + p), digits_shuf(e, ctrl, sel4, sel2)))
}

typedef void (*decode_fn)(const uint64_t *, const uint16_t *, struct dec *, int64_t, int64_t,
                          int64_t, uint8_t *);

static decode_fn decoder(void)
{
    static int vbmi = -1; /* racing first calls store the same answer */
    int v = __atomic_load_n(&vbmi, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        /* MOE_QMOE_NO_VBMI=1: the shuffle decoder, to test it on a VBMI CPU */
        const char *off = getenv("MOE_QMOE_NO_VBMI");
        v = __builtin_cpu_supports("avx512vbmi") && !(off && *off && *off != '0');
        __atomic_store_n(&vbmi, v, __ATOMIC_RELAXED);
    }
    return v ? decode_vbmi : decode_shuf;
}

INLINE __m512 lut16(const struct moe_qmoe_layout *L, int64_t r)
{
    float lo = -moe_qmoe_level_decode(L->scale, L->level[2 * r]);
    float hi = moe_qmoe_level_decode(L->scale, L->level[2 * r + 1]);
    return _mm512_setr_ps(0, lo, hi, 0, 0, lo, hi, 0, 0, lo, hi, 0, 0, lo, hi, 0);
}

INLINE __m512 wvec(const uint8_t *b, __m512 lut)
{
    return _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)b)), lut);
}

/* sum over [0, len) of the weights in buf times x; len > 0 */
INLINE __m512 seg_dot(const uint8_t *buf, const float *x, int64_t len, __m512 lut)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t c = 0;
    for (; c + 64 <= len; c += 64) {
        a0 = _mm512_fmadd_ps(wvec(buf + c, lut), _mm512_loadu_ps(x + c), a0);
        a1 = _mm512_fmadd_ps(wvec(buf + c + 16, lut), _mm512_loadu_ps(x + c + 16), a1);
        a2 = _mm512_fmadd_ps(wvec(buf + c + 32, lut), _mm512_loadu_ps(x + c + 32), a2);
        a3 = _mm512_fmadd_ps(wvec(buf + c + 48, lut), _mm512_loadu_ps(x + c + 48), a3);
    }
    for (; c + 16 <= len; c += 16)
        a1 = _mm512_fmadd_ps(wvec(buf + c, lut), _mm512_loadu_ps(x + c), a1);
    if (c < len) {
        __mmask16 m = (__mmask16)((1u << (len - c)) - 1);
        a2 = _mm512_fmadd_ps(wvec(buf + c, lut), _mm512_maskz_loadu_ps(m, x + c), a2);
    }
    return _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
}

/* one tile of T tokens over a decoded segment [0, len): acc[t] += w . x_t */
INLINE void seg_tile(const int T, const uint8_t *buf, const float *x, int64_t ldx, int64_t len,
                     __m512 lut, __m512 *acc)
{
    __m512 a[NT], b[NT]; /* locals: acc could alias x for the compiler */
#pragma GCC unroll 8
    for (int t = 0; t < T; t++)
        a[t] = b[t] = _mm512_setzero_ps();
    int64_t c = 0;
    for (; c + 32 <= len; c += 32) {
        __m512 w0 = wvec(buf + c, lut), w1 = wvec(buf + c + 16, lut);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            a[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + t * ldx + c), a[t]);
            b[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + t * ldx + c + 16), b[t]);
        }
    }
    for (; c < len; c += 16) {
        __mmask16 m = len - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (len - c)) - 1);
        __m512 w0 = wvec(buf + c, lut);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            a[t] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m, x + t * ldx + c), a[t]);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++)
        acc[t] = _mm512_add_ps(acc[t], _mm512_add_ps(a[t], b[t]));
}

void moe_quant_gemm_qmoe_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                                const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    if (r1 <= r0 || n <= 0)
        return;
    struct moe_qmoe_layout L;
    moe_qmoe_layout_get(w, &L);
    const struct moe_qmoe_side *s = w->aux;
    const decode_fn decode = decoder();
    int64_t cols = w->cols;
    uint8_t mem[PRE + SEG + POST] __attribute__((aligned(64)));
    uint8_t *buf = mem + PRE;
    struct dec st = {moe_qmoe_row_seek(&L, s, cols, r0), 0};
    for (int64_t r = r0; r < r1; r++) {
        __m512 lut = lut16(&L, r);
        st.p = 0;
        if (n == 1) {
            __m512 acc = _mm512_setzero_ps();
            for (int64_t c0 = 0; c0 < cols; c0 += SEG) {
                int64_t c1 = MOE_MIN(cols, c0 + SEG);
                decode(s->d, L.code, &st, c0, c1, cols, buf);
                acc = _mm512_add_ps(acc, seg_dot(buf, x + c0, c1 - c0, lut));
            }
            y[r] = _mm512_reduce_add_ps(acc);
            continue;
        }
        /* n > 1: each segment decoded once for up to 64 tokens, applied
         * in tiles of NT; a row is decoded again per further 64 tokens */
        __m512 acc[64];
        for (int tb = 0; tb < n; tb += 64) {
            int nb = MOE_MIN(64, n - tb);
            struct dec st0 = st;
            for (int t = 0; t < nb; t++)
                acc[t] = _mm512_setzero_ps();
            for (int64_t c0 = 0; c0 < cols; c0 += SEG) {
                int64_t c1 = MOE_MIN(cols, c0 + SEG);
                decode(s->d, L.code, &st, c0, c1, cols, buf);
                const float *xs = x + (int64_t)tb * ldx + c0;
                for (int t0 = 0; t0 < nb; t0 += NT) {
                    const float *xt = xs + t0 * ldx;
                    __m512 *a = acc + t0;
                    switch (MOE_MIN(NT, nb - t0)) {
                    case 1: seg_tile(1, buf, xt, ldx, c1 - c0, lut, a); break;
                    case 2: seg_tile(2, buf, xt, ldx, c1 - c0, lut, a); break;
                    case 3: seg_tile(3, buf, xt, ldx, c1 - c0, lut, a); break;
                    case 4: seg_tile(4, buf, xt, ldx, c1 - c0, lut, a); break;
                    case 5: seg_tile(5, buf, xt, ldx, c1 - c0, lut, a); break;
                    case 6: seg_tile(6, buf, xt, ldx, c1 - c0, lut, a); break;
                    case 7: seg_tile(7, buf, xt, ldx, c1 - c0, lut, a); break;
                    default: seg_tile(NT, buf, xt, ldx, c1 - c0, lut, a); break;
                    }
                }
            }
            for (int t = 0; t < nb; t++)
                y[(int64_t)(tb + t) * ldy + r] = _mm512_reduce_add_ps(acc[t]);
            if (tb + 64 < n)
                st = st0; /* the next 64 tokens decode the row again */
        }
    }
}
