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
 * n > 1: groups of G rows are decoded once (per segment, per 64 tiles of
 * tokens) and applied to tiles of NT tokens with G x NT accumulators: a
 * weight vector serves NT tokens and an x vector G rows. x must be finite
 * there (a zero weight meets x), as activations are. */
#include <immintrin.h>
#include <stdlib.h>

#include "common/common.h"
#include "quant/quant_int.h"

#define INLINE static inline __attribute__((always_inline))
#define NT 4      /* tokens per tile (n > 1) */
#define G 4       /* rows per group (n > 1): G x NT accumulators */
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

/* G rows x T tokens over decoded segments [0, len): sum[g][t] += w_g . x_t.
 * x is loaded once per 16 columns and token for all G rows (register
 * blocking: a row at a time streamed the tokens' x from L2 and ran at
 * 15 G weight-tokens/s at n = 16) */
INLINE void seg_group(const int T, uint8_t *const *buf, const __m512 *lut, const float *x,
                      int64_t ldx, int64_t len, float (*sum)[NT])
{
    __m512 a[G][NT];
#pragma GCC unroll 4
    for (int g = 0; g < G; g++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            a[g][t] = _mm512_setzero_ps();
    for (int64_t c = 0; c < len; c += 16) {
        __mmask16 m = len - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (len - c)) - 1);
        __m512 wv[G];
#pragma GCC unroll 4
        for (int g = 0; g < G; g++)
            wv[g] = wvec(buf[g] + c, lut[g]);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + t * ldx + c);
#pragma GCC unroll 4
            for (int g = 0; g < G; g++)
                a[g][t] = _mm512_fmadd_ps(wv[g], xv, a[g][t]);
        }
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; g++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            sum[g][t] += _mm512_reduce_add_ps(a[g][t]);
}

/* n > 1: groups of G rows, each row segment decoded once for all n tokens */
static void gemm_batched(const struct moe_weight *w, const struct moe_qmoe_layout *L,
                         decode_fn decode, uint32_t idx, int64_t r0, int64_t r1, const float *x,
                         int64_t ldx, int n, float *y, int64_t ldy)
{
    const struct moe_qmoe_side *s = w->aux;
    int64_t cols = w->cols;
    uint8_t mem[G][PRE + SEG + POST] __attribute__((aligned(64)));
    uint8_t *buf[G];
    for (int g = 0; g < G; g++)
        buf[g] = mem[g] + PRE;
    struct dec next = {idx, 0};
    for (int64_t r = r0; r < r1; r += G) {
        int gn = (int)MOE_MIN(G, r1 - r);
        struct dec st[G];
        __m512 lut[G];
        for (int g = 0; g < G; g++)
            lut[g] = g < gn ? lut16(L, r + g) : _mm512_setzero_ps(); /* spare rows: weight 0 */
        /* each row's first codeword: one segment decodes the row and so
         * finds the next; longer rows are walked by their counts first */
        for (int g = 0; g < gn; g++) {
            st[g] = next;
            if (cols <= SEG) {
                decode(s->d, L->code, &next, 0, cols, cols, buf[g]);
                next.p = 0;
            } else {
                int64_t p = 0;
                uint32_t j = next.j;
                while (p < cols)
                    p += (uint8_t)s->d[L->code[j++]];
                next = (struct dec){j, 0};
            }
        }
        for (int g = gn; g < G; g++)
            buf[g] = buf[0]; /* any digits: spare rows' weights are 0 */
        float sum[64][G][NT];
        for (int t0 = 0; t0 < n;) {
            /* up to 64 tiles per pass over the row's segments */
            int tend = (int)MOE_MIN((int64_t)n, (int64_t)t0 + 64 * NT);
            for (int ti = 0; ti < 64; ti++)
                memset(sum[ti], 0, sizeof(sum[ti]));
            struct dec cur[G];
            memcpy(cur, st, sizeof(cur));
            for (int64_t c0 = 0; c0 < cols; c0 += SEG) {
                int64_t c1 = MOE_MIN(cols, c0 + SEG);
                if (cols > SEG) /* else the buffers hold the whole rows */
                    for (int g = 0; g < gn; g++)
                        decode(s->d, L->code, &cur[g], c0, c1, cols, buf[g]);
                for (int t = t0; t < tend; t += NT) {
                    const float *xt = x + (int64_t)t * ldx + c0;
                    float(*sm)[NT] = sum[(t - t0) / NT];
                    switch (MOE_MIN(NT, tend - t)) {
                    case 1: seg_group(1, buf, lut, xt, ldx, c1 - c0, sm); break;
                    case 2: seg_group(2, buf, lut, xt, ldx, c1 - c0, sm); break;
                    case 3: seg_group(3, buf, lut, xt, ldx, c1 - c0, sm); break;
                    default: seg_group(NT, buf, lut, xt, ldx, c1 - c0, sm); break;
                    }
                }
            }
            for (int t = t0; t < tend; t++)
                for (int g = 0; g < gn; g++)
                    y[(int64_t)t * ldy + r + g] = sum[(t - t0) / NT][g][(t - t0) % NT];
            t0 = tend;
        }
    }
}

/* n = 1, rows of at most SEG columns: the chunk's codewords are one stream
 * (a codeword never crosses a row end, so row r's digits are the stream's
 * ce digits after row r-1's, ce = cols rounded up to even). Decoding four
 * codewords per end-of-row check (the check and the index bookkeeping were
 * half the decode loop's instructions) overshoots the row by up to three
 * codewords, at most 3 * 28 digits plus a 32-byte store tail: those bytes
 * are the next row's first digits and move to the buffer's start after the
 * row is applied. The four-at-a-time loop stops 3 codewords short of the
 * matrix's last, so it never reads a codeword past n_codes.
 * Measured (Zen 5, one core, 2816x2048): 16.0 -> 17.5 G weights/s at
 * P(0) = 0.85, 22.7 -> 24.3 at 0.99. */
#define DEC_ONE(DIGITS)                                                       \
    do {                                                                      \
        const uint64_t *e_ = d + code[j++];                                   \
        _mm256_storeu_si256((__m256i *)(buf + p), DIGITS);                    \
        p += *(const uint8_t *)e_;                                            \
    } while (0)
#define GEMV_STREAM(DIGITS)                                                   \
    const uint64_t *d = s->d;                                                 \
    const uint16_t *code = L->code;                                           \
    int64_t cols = w->cols, ce = (cols + 1) & ~(int64_t)1, p = 0;             \
    uint32_t jn = L->n_codes > 3 ? L->n_codes - 3 : 0;                        \
    uint8_t mem[PRE + SEG + POST + 128] __attribute__((aligned(64)));         \
    uint8_t *buf = mem + PRE;                                                 \
    for (int64_t r = r0; r < r1; r++) {                                       \
        while (p < ce && j < jn) {                                            \
            DEC_ONE(DIGITS);                                                  \
            DEC_ONE(DIGITS);                                                  \
            DEC_ONE(DIGITS);                                                  \
            DEC_ONE(DIGITS);                                                  \
        }                                                                     \
        while (p < ce)                                                        \
            DEC_ONE(DIGITS);                                                  \
        y[r] = _mm512_reduce_add_ps(seg_dot(buf, x, cols, lut16(L, r)));      \
        /* the overshoot, [ce, ce + 116), is the next row's start */         \
        p -= ce;                                                              \
        _mm512_storeu_si512(buf, _mm512_loadu_si512(buf + ce));               \
        _mm512_storeu_si512(buf + 64, _mm512_loadu_si512(buf + ce + 64));     \
    }

__attribute__((target("avx512vbmi"))) static void
gemv_stream_vbmi(const struct moe_weight *w, const struct moe_qmoe_layout *L, uint32_t j,
                 int64_t r0, int64_t r1, const float *x, float *y)
{
    const struct moe_qmoe_side *s = w->aux;
    const __m256i ctrl = _mm256_load_si256((const __m256i *)ms_ctrl);
    GEMV_STREAM(_mm256_multishift_epi64_epi8(ctrl, _mm256_set1_epi64x((long long)*e_)))
}

static void gemv_stream_shuf(const struct moe_weight *w, const struct moe_qmoe_layout *L,
                             uint32_t j, int64_t r0, int64_t r1, const float *x, float *y)
{
    const struct moe_qmoe_side *s = w->aux;
    const __m256i ctrl = _mm256_load_si256((const __m256i *)sh_ctrl);
    const __m256i sel4 = _mm256_load_si256((const __m256i *)sh_sel4);
    const __m256i sel2 = _mm256_load_si256((const __m256i *)sh_sel2);
    GEMV_STREAM(digits_shuf(e_, ctrl, sel4, sel2))
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
    uint32_t idx = moe_qmoe_row_seek(&L, s, cols, r0);
    if (n > 1) {
        gemm_batched(w, &L, decode, idx, r0, r1, x, ldx, n, y, ldy);
        return;
    }
    if (cols <= SEG) {
        if (decode == decode_vbmi)
            gemv_stream_vbmi(w, &L, idx, r0, r1, x, y);
        else
            gemv_stream_shuf(w, &L, idx, r0, r1, x, y);
        return;
    }
    uint8_t mem[PRE + SEG + POST] __attribute__((aligned(64)));
    uint8_t *buf = mem + PRE;
    struct dec st = {idx, 0};
    for (int64_t r = r0; r < r1; r++) {
        __m512 lut = lut16(&L, r), acc = _mm512_setzero_ps();
        st.p = 0;
        for (int64_t c0 = 0; c0 < cols; c0 += SEG) {
            int64_t c1 = MOE_MIN(cols, c0 + SEG);
            decode(s->d, L.code, &st, c0, c1, cols, buf);
            acc = _mm512_add_ps(acc, seg_dot(buf, x + c0, c1 - c0, lut));
        }
        y[r] = _mm512_reduce_add_ps(acc);
    }
}
