/* GQ4 with int8 activations and AVX-512 VNNI, the path moe_quant_gemm_gq4_avx512
 * takes when the CPU has avx512vnni.
 *
 * x is quantised per token and per group of 128 columns (the weights' own
 * groups) to int8: xq = round(x / d), d = max|x| / 127, as llama.cpp's q8
 * activations. A group's product is then
 *   s * d * (sum q * xq - z * sum xq)
 * with q the 4-bit codes (0..15) as unsigned bytes against signed xq: two
 * vpdpbusd per 128 weights and token, exact int32 sums. fp32 FMAs on looked-up
 * weights did 16 weight-token products an instruction; this does 64. The
 * error against float x is at most d/2 per x, about max|x_group| / 254.
 *
 * The codes need no shuffling: the 64 code bytes of a group hold weights
 * 32s + j in the low nibble of byte 16s + j and 32s + 16 + j in the high
 * nibble (quant_gq.h), so the low nibbles are the weights of 16-column
 * chunks 0, 2, 4, 6 and the high nibbles those of 1, 3, 5, 7. xq is stored in
 * that order (A half, then B half) once per call.
 *
 * Every (row, token) runs the same instructions in the same order whatever
 * the batch, tile or row range: a token gets bit-identical outputs alone or
 * batched. In batches, register blocks of GR rows x GT tokens share the code
 * unpacking (per row) and the x loads (per token); one token takes the rows
 * one after another, a single stream for the prefetchers.
 * Measured (moe-bench gemv, 2816x2048, 2 threads, Zen 5): n = 1 at the float
 * kernel's speed (memory-bound, 58-66 G weights/s); weight-token products a
 * second at n = 8 / 32 / 64: 178-237 / 167-220 / 207-262 G, against the
 * float kernel's 73 / 131 / 150 G in the same run. */
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "quant/quant_gq.h"
#include "quant/quant_int.h"

#define G MOE_GQ_GROUP
#define GB MOE_GQ4_GROUP_BYTES
#define GR 3 /* rows per register block in batches */
#define GT 6 /* tokens per register block in batches */
#define R GR /* array sizes */
#define T GT
#define MAXG 256 /* groups per row on this path: 32768 columns */

/* one call's activations: per token, per group: 128 int8 (A then B order),
 * d, and d * sum(xq) */
struct xq8 {
    int8_t *q;
    float *d, *c;
    size_t n_groups; /* capacity, tokens x groups */
};

static pthread_key_t xq_key;
static pthread_once_t xq_once = PTHREAD_ONCE_INIT;

static void xq_free(void *p)
{
    struct xq8 *b = p;
    free(b->q);
    free(b->d);
    free(b->c);
    free(b);
}

static void xq_key_make(void)
{
    (void)pthread_key_create(&xq_key, xq_free);
}

/* this thread's buffer for n_groups token-groups, grown as needed and freed
 * with the thread; NULL when out of memory */
static struct xq8 *xq_get(size_t n_groups)
{
    pthread_once(&xq_once, xq_key_make);
    struct xq8 *b = pthread_getspecific(xq_key);
    if (!b) {
        if (!(b = calloc(1, sizeof(*b))) || pthread_setspecific(xq_key, b)) {
            free(b);
            return NULL;
        }
    }
    if (b->n_groups < n_groups) {
        free(b->q);
        free(b->d);
        free(b->c);
        b->q = aligned_alloc(64, n_groups * G);
        b->d = malloc(n_groups * sizeof(float));
        b->c = malloc(n_groups * sizeof(float));
        b->n_groups = b->q && b->d && b->c ? n_groups : 0;
        if (!b->n_groups)
            return NULL;
    }
    return b;
}

/* Quantises n tokens of ng groups each. False when some x is not finite. */
static bool quantise(const float *x, int64_t ldx, int n, int64_t ng, struct xq8 *b)
{
    const __m512 absm = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int t = 0; t < n; t++)
        for (int64_t g = 0; g < ng; g++) {
            const float *xg = x + (int64_t)t * ldx + g * G;
            size_t k = (size_t)t * (size_t)ng + (size_t)g;
            __m512 v[8], mx = _mm512_setzero_ps();
            __mmask16 bad = 0;
            for (int i = 0; i < 8; i++) {
                v[i] = _mm512_loadu_ps(xg + 16 * i);
                bad |= _mm512_cmp_ps_mask(v[i], v[i], _CMP_UNORD_Q);
                mx = _mm512_max_ps(mx, _mm512_and_ps(v[i], absm));
            }
            float amax = _mm512_reduce_max_ps(mx);
            if (bad || !isfinite(amax))
                return false;
            const __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
            int8_t *q = b->q + k * G;
            __m512i sum = _mm512_setzero_si512();
            for (int i = 0; i < 8; i++) {
                __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(v[i], inv));
                sum = _mm512_add_epi32(sum, qi);
                /* chunk i to A (even chunks) or B (odd), in chunk order */
                _mm_storeu_si128((__m128i *)(q + (i & 1) * 64 + (i >> 1) * 16),
                                 _mm512_cvtsepi32_epi8(qi));
            }
            b->d[k] = amax / 127.0f;
            b->c[k] = b->d[k] * (float)_mm512_reduce_add_epi32(sum);
        }
    return true;
}

/* rows [r0, r0 + nr) x tokens [t0, t0 + nt), nr <= R, nt <= T: every group */
__attribute__((target("avx512vnni"), always_inline)) static inline void
block(const int nr, const int nt, const uint8_t *base, size_t rb, int64_t ng,
      const struct xq8 *b, int64_t r0, int t0, float *y, int64_t ldy)
{
    const __m512i lo4 = _mm512_set1_epi8(0x0f);
    __m512 acc[R][T];
    float sz[R][MAXG]; /* s * z per row and group, for the zero term after */
#pragma GCC unroll 8
    for (int i = 0; i < nr; i++)
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++)
            acc[i][t] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        /* the row scales stay scalars (an embedded broadcast in the
         * multiply): R x T sums, 2R code vectors and x fill the registers */
        __m512i A[R], B[R];
        float sc[R];
#pragma GCC unroll 8
        for (int i = 0; i < R; i++) { /* past nr: unused, set for the compiler */
            A[i] = B[i] = _mm512_setzero_si512();
            sc[i] = 0.0f;
        }
#pragma GCC unroll 8
        for (int i = 0; i < nr; i++) {
            const uint8_t *gp = base + (size_t)(r0 + i) * rb + (size_t)g * GB;
            uint16_t hs, hz;
            memcpy(&hs, gp, 2);
            memcpy(&hz, gp + 2, 2);
            sc[i] = _cvtsh_ss(hs);
            sz[i][g] = sc[i] * _cvtsh_ss(hz);
            __m512i c = _mm512_loadu_si512(gp + 4);
            A[i] = _mm512_and_si512(c, lo4);
            B[i] = _mm512_and_si512(_mm512_srli_epi16(c, 4), lo4);
        }
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++) {
            size_t k = (size_t)(t0 + t) * (size_t)ng + (size_t)g;
            __m512i xa = _mm512_load_si512(b->q + k * G), xb = _mm512_load_si512(b->q + k * G + 64);
            __m512 D = _mm512_set1_ps(b->d[k]);
    #pragma GCC unroll 8
        for (int i = 0; i < nr; i++) {
                __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), A[i], xa);
                dot = _mm512_dpbusd_epi32(dot, B[i], xb);
                acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(D, _mm512_set1_ps(sc[i])),
                                            acc[i][t]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < nr; i++)
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++) {
            /* the zero term: sum over groups of s z * d sum(xq), 16 groups
             * a vector (a scalar chain here cost as much as the products) */
            const float *c = b->c + (size_t)(t0 + t) * (size_t)ng;
            __m512 corr = _mm512_setzero_ps();
            for (int64_t g = 0; g < ng; g += 16) {
                __mmask16 m = ng - g >= 16 ? 0xffff : (__mmask16)((1u << (ng - g)) - 1);
                corr = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, &sz[i][g]),
                                       _mm512_maskz_loadu_ps(m, c + g), corr);
            }
            y[(int64_t)(t0 + t) * ldy + r0 + i] =
                _mm512_reduce_add_ps(acc[i][t]) - _mm512_reduce_add_ps(corr);
        }
}

/* GR rows x nt tokens: the full tile and the last, shorter one of a batch */
__attribute__((target("avx512vnni"))) static void block_rows(int nt, const uint8_t *base,
                                                            size_t rb, int64_t ng,
                                                            const struct xq8 *b, int64_t r0,
                                                            int t0, float *y, int64_t ldy)
{
    switch (nt) {
    case 1: block(GR, 1, base, rb, ng, b, r0, t0, y, ldy); break;
    case 2: block(GR, 2, base, rb, ng, b, r0, t0, y, ldy); break;
    case 3: block(GR, 3, base, rb, ng, b, r0, t0, y, ldy); break;
    case 4: block(GR, 4, base, rb, ng, b, r0, t0, y, ldy); break;
    case 5: block(GR, 5, base, rb, ng, b, r0, t0, y, ldy); break;
    default: block(GR, GT, base, rb, ng, b, r0, t0, y, ldy); break;
    }
}
_Static_assert(GT == 6, "block_rows has a case per tile width below GT");

__attribute__((target("avx512vnni"))) static void block_gemv(const uint8_t *base, size_t rb,
                                                            int64_t ng, const struct xq8 *b,
                                                            int64_t r0, int t0, float *y,
                                                            int64_t ldy)
{
    block(1, 1, base, rb, ng, b, r0, t0, y, ldy);
}

/* the ragged edges: the same arithmetic, bounds at run time */
__attribute__((target("avx512vnni"))) static void block_any(int nr, int nt, const uint8_t *base,
                                                           size_t rb, int64_t ng,
                                                           const struct xq8 *b, int64_t r0,
                                                           int t0, float *y, int64_t ldy)
{
    block(nr, nt, base, rb, ng, b, r0, t0, y, ldy);
}

bool moe_quant_gemm_gq4_vnni(const struct moe_weight *w, int64_t r0, int64_t r1, const float *x,
                             int64_t ldx, int n, float *y, int64_t ldy)
{
    static int use = -1; /* racing first calls store the same answer */
    int u = __atomic_load_n(&use, __ATOMIC_RELAXED);
    if (u < 0) {
        /* MOE_NO_VNNI=1: the float kernel, to test it on a VNNI CPU */
        const char *off = getenv("MOE_NO_VNNI");
        u = __builtin_cpu_supports("avx512vnni") && !(off && *off && *off != '0');
        __atomic_store_n(&use, u, __ATOMIC_RELAXED);
    }
    if (!u)
        return false;
    int64_t ng = w->cols / G;
    if (ng > MAXG)
        return false;
    struct xq8 *b = xq_get((size_t)n * (size_t)ng);
    if (!b || !quantise(x, ldx, n, ng, b))
        return false; /* the float kernel: out of memory, or x not finite */
    const uint8_t *base = w->data;
    if (n == 1) { /* row after row: one stream for the prefetchers (8 rows
                   * side by side, 8 streams, ran at 0.75x) */
        for (int64_t r = r0; r < r1; r++)
            block_gemv(base, w->row_bytes, ng, b, r, 0, y, ldy);
        return true;
    }
    for (int64_t r = r0; r < r1; r += GR) {
        int nr = (int)MOE_MIN(GR, r1 - r);
        for (int t = 0; t < n; t += GT) {
            int nt = MOE_MIN(GT, n - t);
            if (nr == GR)
                block_rows(nt, base, w->row_bytes, ng, b, r, t, y, ldy);
            else
                block_any(nr, nt, base, w->row_bytes, ng, b, r, t, y, ldy);
        }
    }
    return true;
}
