/* 256-bit kernels for attention on the compressed cache, included by
 * kv_attn_avx2.c and kv_attn_avx512.c (which compile them with their own
 * ISA flags). The plane packing (kv_int.h) lets one widening load give 8
 * codes of each plane; a plane's codes are masked in place, not shifted,
 * and the shift is folded into the float multiplier (an exact power of two). */
#ifndef MOE_KV_ATTN_SIMD_H
#define MOE_KV_ATTN_SIMD_H

#include <immintrin.h>

#include "kv/kv_int.h"

#define KV_INLINE static inline __attribute__((always_inline))

KV_INLINE float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* q folded with the scales (qs[c] = q[c]*s[c]) and bias = sum q[c]*m[c] */
KV_INLINE float fold_q256(int D, const float *q, const uint16_t *scale, const uint16_t *min,
                          float *qs)
{
    __m256 b = _mm256_setzero_ps();
    for (int c = 0; c < D; c += 8) {
        __m256 qv = _mm256_loadu_ps(q + c);
        __m256 s = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(scale + c)));
        __m256 m = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(min + c)));
        _mm256_storeu_ps(qs + c, _mm256_mul_ps(qv, s));
        b = _mm256_fmadd_ps(qv, m, b);
    }
    return hsum256(b);
}

/* G tokens of one key block, bits and G compile-time constants */
KV_INLINE void k_scores256_t(const int bits, const int G, int D, const uint8_t *codes,
                             const float *qs, float bias, float *acc)
{
    enum { MAXV = MOE_KV_MAX_G / 8 };
    const int per = 8 / bits, nbytes = G * bits / 8;
    __m256 A[MAXV];
    for (int i = 0; i < G / 8; i++)
        A[i] = _mm256_setzero_ps();
    for (int c = 0; c < D; c++) {
        const uint8_t *r = codes + (size_t)c * nbytes;
        for (int j0 = 0; j0 < nbytes; j0 += 8) {
            __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(r + j0)));
            for (int i = 0; i < per; i++) {
                __m256i mask = _mm256_set1_epi32(((1 << bits) - 1) << (i * bits));
                __m256 f = _mm256_cvtepi32_ps(_mm256_and_si256(x, mask));
                __m256 w = _mm256_set1_ps(qs[c] * (1.0f / (float)(1 << (i * bits))));
                int k = (i * nbytes + j0) / 8;
                A[k] = _mm256_fmadd_ps(w, f, A[k]);
            }
        }
    }
    __m256 bv = _mm256_set1_ps(bias);
    for (int i = 0; i < G / 8; i++)
        _mm256_storeu_ps(acc + 8 * i, _mm256_add_ps(A[i], bv));
}

/* the key block kernel for any supported (bits, G); false: not handled */
KV_INLINE int k_scores256(int bits, int G, int D, const uint8_t *codes, const uint16_t *scale,
                          const uint16_t *min, const float *q, float *acc)
{
    if (D % 8 || (G * bits / 8) % 8)
        return 0;
    float qs[MOE_KV_MAX_D];
    float bias = fold_q256(D, q, scale, min, qs);
#define KS(b, g) \
    if (bits == b && G == g) { k_scores256_t(b, g, D, codes, qs, bias, acc); return 1; }
    KS(2, 32) KS(2, 64) KS(2, 128) KS(4, 32) KS(4, 64) KS(4, 128) KS(8, 32) KS(8, 64) KS(8, 128)
#undef KS
    return 0;
}

KV_INLINE void v_accum256_t(const int bits, int Gv, int D, const uint8_t *codes,
                            const uint16_t *sm, const float *p, int cnt, float *out)
{
    const int per = 8 / bits;
    size_t row = (size_t)D * bits / 8, grow = (size_t)Gv * bits / 8;
    int ng = D / Gv;
    for (int g = 0; g < ng; g++) {
        float bsum = 0.0f;
        for (size_t j0 = 0; j0 < grow; j0 += 8) {
            __m256 A[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                           _mm256_setzero_ps()};
            for (int t = 0; t < cnt; t++) {
                const uint16_t *st = sm + ((size_t)t * ng + g) * 2;
                float a = p[t] * _cvtsh_ss(st[0]);
                if (j0 == 0)
                    bsum += p[t] * _cvtsh_ss(st[1]);
                const uint8_t *r = codes + (size_t)t * row + (size_t)g * grow + j0;
                __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)r));
                for (int i = 0; i < per; i++) {
                    __m256i mask = _mm256_set1_epi32(((1 << bits) - 1) << (i * bits));
                    __m256 f = _mm256_cvtepi32_ps(_mm256_and_si256(x, mask));
                    __m256 w = _mm256_set1_ps(a * (1.0f / (float)(1 << (i * bits))));
                    A[i] = _mm256_fmadd_ps(w, f, A[i]);
                }
            }
            for (int i = 0; i < per; i++) {
                float *o = out + (size_t)g * Gv + (size_t)i * grow + j0;
                _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), A[i]));
            }
        }
        __m256 bv = _mm256_set1_ps(bsum);
        for (int c = 0; c < Gv; c += 8) {
            float *o = out + (size_t)g * Gv + c;
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), bv));
        }
    }
}

KV_INLINE int v_accum256(int bits, int Gv, int D, const uint8_t *codes, const uint16_t *sm,
                         const float *p, int cnt, float *out)
{
    if ((Gv * bits / 8) % 8 || Gv % 8)
        return 0;
    switch (bits) {
    case 2: v_accum256_t(2, Gv, D, codes, sm, p, cnt, out); return 1;
    case 4: v_accum256_t(4, Gv, D, codes, sm, p, cnt, out); return 1;
    case 8: v_accum256_t(8, Gv, D, codes, sm, p, cnt, out); return 1;
    }
    return 0;
}

/* keys as values (MLA): per channel, the weights' dot with its G codes */
KV_INLINE int k_accum256(int bits, int G, int Dv, const uint8_t *codes, const uint16_t *scale,
                         const uint16_t *min, const float *p, int cnt, float *out)
{
    const int per = 8 / bits, nbytes = G * bits / 8;
    if (cnt != G || nbytes % 8)
        return 0;
    __m256 ps = _mm256_setzero_ps();
    for (int t = 0; t < G; t += 8)
        ps = _mm256_add_ps(ps, _mm256_loadu_ps(p + t));
    float psum = hsum256(ps);
    for (int c = 0; c < Dv; c++) {
        const uint8_t *r = codes + (size_t)c * nbytes;
        __m256 A = _mm256_setzero_ps();
        for (int j0 = 0; j0 < nbytes; j0 += 8) {
            __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(r + j0)));
            for (int i = 0; i < per; i++) {
                __m256i mask = _mm256_set1_epi32(((1 << bits) - 1) << (i * bits));
                __m256 f = _mm256_cvtepi32_ps(_mm256_and_si256(x, mask));
                __m256 w = _mm256_mul_ps(_mm256_loadu_ps(p + i * nbytes + j0),
                                         _mm256_set1_ps(1.0f / (float)(1 << (i * bits))));
                A = _mm256_fmadd_ps(w, f, A);
            }
        }
        out[c] += _cvtsh_ss(scale[c]) * hsum256(A) + _cvtsh_ss(min[c]) * psum;
    }
    return 1;
}

KV_INLINE int dot_f16_256(const float *q, const uint16_t *k, int D, float *res)
{
    if (D % 8)
        return 0;
    __m256 s = _mm256_setzero_ps();
    for (int c = 0; c < D; c += 8)
        s = _mm256_fmadd_ps(_mm256_loadu_ps(q + c),
                            _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(k + c))),
                            s);
    *res = hsum256(s);
    return 1;
}

KV_INLINE int axpy_f16_256(float *out, float a, const uint16_t *v, int D)
{
    if (D % 8)
        return 0;
    __m256 av = _mm256_set1_ps(a);
    for (int c = 0; c < D; c += 8) {
        __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(v + c)));
        _mm256_storeu_ps(out + c, _mm256_fmadd_ps(av, x, _mm256_loadu_ps(out + c)));
    }
    return 1;
}

#endif
