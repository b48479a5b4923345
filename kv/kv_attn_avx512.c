/* AVX-512 kernels for attention on the compressed cache: 16 codes per
 * widening load where a block row is long enough, else the 256-bit code
 * (kv_attn_simd.h) compiled for this ISA; the reference for the rest. */
#include "kv/kv_attn_simd.h"

KV_INLINE void k_scores512_t(const int bits, const int G, int D, const uint8_t *codes,
                             const float *qs, float bias, float *acc)
{
    enum { MAXV = MOE_KV_MAX_G / 16 };
    const int per = 8 / bits, nbytes = G * bits / 8;
    __m512 A[MAXV];
    for (int i = 0; i < G / 16; i++)
        A[i] = _mm512_setzero_ps();
    for (int c = 0; c < D; c++) {
        const uint8_t *r = codes + (size_t)c * nbytes;
        for (int j0 = 0; j0 < nbytes; j0 += 16) {
            __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(r + j0)));
            for (int i = 0; i < per; i++) {
                __m512i mask = _mm512_set1_epi32(((1 << bits) - 1) << (i * bits));
                __m512 f = _mm512_cvtepi32_ps(_mm512_and_si512(x, mask));
                __m512 w = _mm512_set1_ps(qs[c] * (1.0f / (float)(1 << (i * bits))));
                int k = (i * nbytes + j0) / 16;
                A[k] = _mm512_fmadd_ps(w, f, A[k]);
            }
        }
    }
    __m512 bv = _mm512_set1_ps(bias);
    for (int i = 0; i < G / 16; i++)
        _mm512_storeu_ps(acc + 16 * i, _mm512_add_ps(A[i], bv));
}

static void k_scores_avx512(int bits, int G, int D, const uint8_t *codes, const uint16_t *scale,
                            const uint16_t *min, const float *q, float *acc)
{
    if (D % 8 == 0 && (G * bits / 8) % 16 == 0) {
        float qs[MOE_KV_MAX_D];
        float bias = fold_q256(D, q, scale, min, qs);
#define KS(b, g) \
        if (bits == b && G == g) { k_scores512_t(b, g, D, codes, qs, bias, acc); return; }
        KS(2, 64) KS(2, 128) KS(4, 32) KS(4, 64) KS(4, 128) KS(8, 32) KS(8, 64) KS(8, 128)
#undef KS
    }
    if (!k_scores256(bits, G, D, codes, scale, min, q, acc))
        moe_kv_ops_ref.k_scores(bits, G, D, codes, scale, min, q, acc);
}

KV_INLINE void v_accum512_t(const int bits, int Gv, int D, const uint8_t *codes,
                            const uint16_t *sm, const float *p, int cnt, float *out)
{
    const int per = 8 / bits;
    size_t row = (size_t)D * bits / 8, grow = (size_t)Gv * bits / 8;
    int ng = D / Gv;
    for (int g = 0; g < ng; g++) {
        float bsum = 0.0f;
        for (size_t j0 = 0; j0 < grow; j0 += 16) {
            __m512 A[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                           _mm512_setzero_ps()};
            for (int t = 0; t < cnt; t++) {
                const uint16_t *st = sm + ((size_t)t * ng + g) * 2;
                float a = p[t] * _cvtsh_ss(st[0]);
                if (j0 == 0)
                    bsum += p[t] * _cvtsh_ss(st[1]);
                const uint8_t *r = codes + (size_t)t * row + (size_t)g * grow + j0;
                __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)r));
                for (int i = 0; i < per; i++) {
                    __m512i mask = _mm512_set1_epi32(((1 << bits) - 1) << (i * bits));
                    __m512 f = _mm512_cvtepi32_ps(_mm512_and_si512(x, mask));
                    __m512 w = _mm512_set1_ps(a * (1.0f / (float)(1 << (i * bits))));
                    A[i] = _mm512_fmadd_ps(w, f, A[i]);
                }
            }
            for (int i = 0; i < per; i++) {
                float *o = out + (size_t)g * Gv + (size_t)i * grow + j0;
                _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), A[i]));
            }
        }
        __m256 bv = _mm256_set1_ps(bsum);
        for (int c = 0; c < Gv; c += 8) {
            float *o = out + (size_t)g * Gv + c;
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), bv));
        }
    }
}

static void v_accum_avx512(int bits, int Gv, int D, const uint8_t *codes, const uint16_t *sm,
                           const float *p, int cnt, float *out)
{
    if (Gv % 8 == 0 && (Gv * bits / 8) % 16 == 0) {
        switch (bits) {
        case 2: v_accum512_t(2, Gv, D, codes, sm, p, cnt, out); return;
        case 4: v_accum512_t(4, Gv, D, codes, sm, p, cnt, out); return;
        case 8: v_accum512_t(8, Gv, D, codes, sm, p, cnt, out); return;
        }
    }
    if (!v_accum256(bits, Gv, D, codes, sm, p, cnt, out))
        moe_kv_ops_ref.v_accum(bits, Gv, D, codes, sm, p, cnt, out);
}

static void k_accum_avx512(int bits, int G, int Dv, const uint8_t *codes, const uint16_t *scale,
                         const uint16_t *min, const float *p, int cnt, float *out)
{
    if (!k_accum256(bits, G, Dv, codes, scale, min, p, cnt, out))
        moe_kv_ops_ref.k_accum(bits, G, Dv, codes, scale, min, p, cnt, out);
}

static float dot_f16_avx512(const float *q, const uint16_t *k, int D)
{
    if (D % 16 == 0) {
        __m512 s = _mm512_setzero_ps();
        for (int c = 0; c < D; c += 16)
            s = _mm512_fmadd_ps(
                _mm512_loadu_ps(q + c),
                _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(k + c))), s);
        return _mm512_reduce_add_ps(s);
    }
    float r;
    return dot_f16_256(q, k, D, &r) ? r : moe_kv_ops_ref.dot_f16(q, k, D);
}

static void axpy_f16_avx512(float *out, float a, const uint16_t *v, int D)
{
    if (D % 16 == 0) {
        __m512 av = _mm512_set1_ps(a);
        for (int c = 0; c < D; c += 16) {
            __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(v + c)));
            _mm512_storeu_ps(out + c, _mm512_fmadd_ps(av, x, _mm512_loadu_ps(out + c)));
        }
        return;
    }
    if (!axpy_f16_256(out, a, v, D))
        moe_kv_ops_ref.axpy_f16(out, a, v, D);
}

const struct moe_kv_ops moe_kv_ops_avx512 = {k_scores_avx512, v_accum_avx512, k_accum_avx512, dot_f16_avx512,
                                             axpy_f16_avx512};
