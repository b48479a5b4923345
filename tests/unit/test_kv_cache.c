/* kv: the quantisation's error bounds, every fast attention kernel against
 * the plain C reference (ragged blocks included), and the pool's block
 * accounting (exhaustion gives -ENOSPC and leaves other sequences intact). */
#include "tests/unit/test.h"

#include <errno.h>
#include <math.h>

#include "backend/backend.h"
#include "common/common.h"
#include "kv/kv.h"
#include "kv/kv_int.h"
#include "quant/quant.h"

static uint64_t rng = 88172645463325252ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) & 0xffffff) / (float)(1 << 23) - 1.0f;
}

/* |a - b| <= tol * (largest |b| of the vector), the vector's own scale */
static void assert_close(const float *a, const float *b, int n, double tol, const char *what)
{
    double scale = 1e-30, worst = 0;
    for (int i = 0; i < n; i++)
        scale = fmax(scale, fabs(b[i]));
    for (int i = 0; i < n; i++)
        worst = fmax(worst, fabs(a[i] - b[i]));
    if (worst > tol * scale) {
        fprintf(stderr, "%s: max diff %g vs scale %g (tol %g)\n", what, worst, scale, tol);
        fail();
    }
}

static const struct moe_kv_ops *fast_ops[2];
static int n_fast;

static void find_fast(void)
{
    n_fast = 0;
    if (moe_isa_best() >= MOE_ISA_AVX2)
        fast_ops[n_fast++] = &moe_kv_ops_avx2;
    if (moe_isa_best() >= MOE_ISA_AVX512)
        fast_ops[n_fast++] = &moe_kv_ops_avx512;
}

/* ---- quantisation ------------------------------------------------------------- */

static void test_quant_row_error_bound(void **state)
{
    (void)state;
    static const int bits[] = {2, 4, 8};
    double prev_err = INFINITY;
    for (size_t b = 0; b < 3; b++) {
        double worst_rel = 0; /* error / (range / levels) */
        for (int rep = 0; rep < 200; rep++) {
            int n = rep % 2 ? 32 : 64;
            float x[64], off = 3.0f * frand(), amp = 0.01f + fabsf(frand()) * 4;
            for (int i = 0; i < n; i++)
                x[i] = off + amp * frand();
            uint8_t codes[64];
            uint16_t s16, m16;
            moe_kv_quant_row(x, n, bits[b], codes, &s16, &m16);
            float s = moe_f16_to_f32(s16), m = moe_f16_to_f32(m16), lo = x[0], hi = x[0];
            for (int i = 0; i < n; i++) {
                lo = fminf(lo, x[i]);
                hi = fmaxf(hi, x[i]);
            }
            int levels = (1 << bits[b]) - 1;
            for (int i = 0; i < n; i++) {
                float d = s * (float)moe_kv_code(codes, n, bits[b], i) + m;
                double err = fabs(d - x[i]);
                /* half a step, plus what fp16 rounding of scale and min adds */
                double bound = 0.5 * (hi - lo) / levels + 1e-3 * (fabs(lo) + (hi - lo));
                assert_true(err <= bound);
                worst_rel = fmax(worst_rel, err / ((hi - lo) / levels));
            }
        }
        double range_err = worst_rel / ((1 << bits[b]) - 1); /* error as a fraction of range */
        assert_true(range_err < prev_err); /* more bits, smaller error */
        prev_err = range_err;
    }
}

/* ---- kernels ------------------------------------------------------------------- */

static void test_k_scores_fast_equals_ref(void **state)
{
    (void)state;
    find_fast();
    if (!n_fast)
        skip();
    static const int bits[] = {2, 4, 8}, Gs[] = {32, 64, 128}, Ds[] = {8, 32, 40, 64, 128};
    uint8_t codes[128 * 128];
    uint16_t sc[128], mn[128];
    float q[128], want[128], got[128];
    for (size_t b = 0; b < 3; b++)
        for (size_t gi = 0; gi < 3; gi++)
            for (size_t di = 0; di < 5; di++) {
                int G = Gs[gi], D = Ds[di];
                for (size_t i = 0; i < sizeof(codes); i++)
                    codes[i] = (uint8_t)(frand() * 256);
                for (int c = 0; c < D; c++) {
                    sc[c] = moe_f32_to_f16(fabsf(frand()) * 0.2f);
                    mn[c] = moe_f32_to_f16(frand());
                    q[c] = frand();
                }
                moe_kv_ops_ref.k_scores(bits[b], G, D, codes, sc, mn, q, want);
                for (int f = 0; f < n_fast; f++) {
                    for (int t = 0; t < G; t++)
                        got[t] = NAN;
                    fast_ops[f]->k_scores(bits[b], G, D, codes, sc, mn, q, got);
                    assert_close(got, want, G, 1e-5, "k_scores");
                }
            }
}

static void test_v_accum_fast_equals_ref(void **state)
{
    (void)state;
    find_fast();
    if (!n_fast)
        skip();
    static const int bits[] = {2, 4, 8}, Gvs[] = {32, 64, 16, 8}, Ds[] = {32, 64, 128, 96};
    static const int cnts[] = {1, 7, 17, 31, 32, 64};
    uint8_t codes[64 * 128];
    uint16_t sm[64 * 16 * 2];
    float p[64], want[128], got[128], init[128];
    for (size_t b = 0; b < 3; b++)
        for (size_t gi = 0; gi < 4; gi++)
            for (size_t di = 0; di < 4; di++)
                for (size_t ci = 0; ci < 6; ci++) {
                    int Gv = Gvs[gi], D = Ds[di], cnt = cnts[ci];
                    if (D % Gv || Gv > D)
                        continue;
                    for (size_t i = 0; i < sizeof(codes); i++)
                        codes[i] = (uint8_t)(frand() * 256);
                    for (size_t i = 0; i < 64 * 16 * 2; i++)
                        sm[i] = moe_f32_to_f16(i % 2 ? frand() : fabsf(frand()) * 0.2f);
                    for (int t = 0; t < cnt; t++)
                        p[t] = fabsf(frand()) / cnt;
                    for (int c = 0; c < D; c++)
                        init[c] = frand();
                    memcpy(want, init, sizeof(init));
                    moe_kv_ops_ref.v_accum(bits[b], Gv, D, codes, sm, p, cnt, want);
                    for (int f = 0; f < n_fast; f++) {
                        memcpy(got, init, sizeof(init));
                        fast_ops[f]->v_accum(bits[b], Gv, D, codes, sm, p, cnt, got);
                        assert_close(got, want, D, 1e-5, "v_accum");
                    }
                }
}

static void test_f16_rows_fast_equal_ref(void **state)
{
    (void)state;
    find_fast();
    if (!n_fast)
        skip();
    static const int Ds[] = {8, 24, 32, 40, 128};
    uint16_t k[128];
    float q[128], want[128], got[128];
    for (size_t di = 0; di < 5; di++) {
        int D = Ds[di];
        for (int c = 0; c < D; c++) {
            k[c] = moe_f32_to_f16(frand());
            q[c] = frand();
            want[c] = got[c] = frand();
        }
        float d0 = moe_kv_ops_ref.dot_f16(q, k, D);
        moe_kv_ops_ref.axpy_f16(want, 0.37f, k, D);
        for (int f = 0; f < n_fast; f++) {
            float d1 = fast_ops[f]->dot_f16(q, k, D);
            assert_true(fabsf(d1 - d0) <= 1e-5f * fmaxf(1.0f, fabsf(d0)));
            float g2[128];
            memcpy(g2, got, sizeof(g2));
            fast_ops[f]->axpy_f16(g2, 0.37f, k, D);
            assert_close(g2, want, D, 1e-5, "axpy_f16");
        }
    }
}

/* ---- whole attention on a paged cache -------------------------------------------- */

enum { L = 2, HK = 2, NH = 4 };

/* L layers of HK heads of d channels, keys and values alike */
#define SH(d) (&(struct moe_kv_shape){L, HK, (d), (d), false, NULL, 0})

static struct moe_kv *fill(struct moe_kv_pool *P, int D, int len, uint64_t seed)
{
    struct moe_kv *kv;
    assert_int_equal(moe_kv_seq_create(P, 1024, &kv), 0);
    uint64_t keep = rng;
    rng = seed;
    float k[HK * 128], v[HK * 128];
    for (int p = 0; p < len; p++)
        for (int l = 0; l < L; l++) {
            for (int i = 0; i < HK * D; i++) {
                k[i] = frand() * 2 + (i % 3 ? 0.5f : -1.0f); /* channels with offsets */
                v[i] = frand();
            }
            assert_int_equal(moe_kv_store(kv, l, p, k, v), 0);
        }
    rng = keep;
    return kv;
}

static void attend(struct moe_pool *tp, struct moe_kv *kv, int D, int pos, const float *q,
                   float *out)
{
    float scores[2048];
    struct moe_kv *kvs[1] = {kv};
    int32_t p[1] = {pos};
    struct moe_kv_attn a = {NH, 1.0f / sqrtf((float)D), NULL};
    moe_kv_attention(tp, kvs, p, 1, 1, &a, q, out, scores, 1024);
}

static void test_attention_fast_equals_ref_ragged(void **state)
{
    (void)state;
    find_fast();
    if (!n_fast)
        skip();
    struct moe_pool *tp;
    assert_int_equal(moe_pool_create(1, &tp), 0);
    static const struct moe_kv_params ps[] = {
        {16, 16, 32, 0}, {8, 8, 32, 64}, {4, 4, 32, 32}, {2, 2, 32, 32}, {2, 2, 64, 64},
        {4, 2, 128, 0}, {16, 2, 32, 32}, {2, 16, 32, 0}, {32, 16, 32, 0}, {16, 32, 64, 0},
        {32, 4, 32, 32},
    };
    static const int Ds[] = {32, 64, 40};
    static const int lens[] = {1, 31, 33, 100, 257};
    for (size_t pi = 0; pi < MOE_ARRAY_SIZE(ps); pi++)
        for (size_t di = 0; di < 3; di++) {
            int D = Ds[di];
            struct moe_kv_pool *P;
            assert_int_equal(moe_kv_pool_create(SH(D), &ps[pi], 4096, &P), 0);
            for (size_t li = 0; li < 5; li++) {
                int len = lens[li];
                struct moe_kv *kv = fill(P, D, len, 1234 + li);
                float q[NH * 128], want[NH * 128], got[NH * 128];
                for (int i = 0; i < NH * D; i++)
                    q[i] = frand() * 2;
                /* the last position, and one inside the quantised part */
                int poss[2] = {len - 1, len / 3};
                for (int w = 0; w < 2; w++) {
                    moe_kv_set_isa(MOE_ISA_REF);
                    attend(tp, kv, D, poss[w], q, want);
                    for (int f = 0; f < n_fast; f++) {
                        moe_kv_set_isa(f == 0 ? MOE_ISA_AVX2 : MOE_ISA_AVX512);
                        attend(tp, kv, D, poss[w], q, got);
                        assert_close(got, want, NH * D, 1e-5, "attention");
                    }
                }
                moe_kv_free(kv);
            }
            moe_kv_pool_free(P);
        }
    moe_kv_set_isa(-1);
    moe_pool_free(tp);
}

/* Each bit width against the exact fp32 cache: close, and closer with more bits. */
static void test_attention_error_shrinks_with_bits(void **state)
{
    (void)state;
    struct moe_pool *tp;
    assert_int_equal(moe_pool_create(1, &tp), 0);
    const int D = 64, len = 300;
    static const struct moe_kv_params ps[] = {{2, 2, 32, 32}, {4, 4, 32, 32}, {8, 8, 32, 32},
                                              {16, 16, 32, 0}};
    static const double limit[] = {1.0, 0.2, 0.02, 2e-3};
    struct moe_kv *exact;
    assert_int_equal(moe_kv_create(SH(D), NULL, 1024, &exact), 0);
    moe_kv_free(exact);
    struct moe_kv_pool *P32;
    struct moe_kv_params p32 = {32, 32, 32, 0};
    assert_int_equal(moe_kv_pool_create(SH(D), &p32, 1024, &P32), 0);
    exact = fill(P32, D, len, 77);
    float q[NH * 128], want[NH * 128], got[NH * 128];
    for (int i = 0; i < NH * D; i++)
        q[i] = frand() * 3;
    attend(tp, exact, D, len - 1, q, want);
    double prev = INFINITY;
    for (size_t pi = 0; pi < MOE_ARRAY_SIZE(ps); pi++) {
        struct moe_kv_pool *P;
        assert_int_equal(moe_kv_pool_create(SH(D), &ps[pi], 1024, &P), 0);
        struct moe_kv *kv = fill(P, D, len, 77);
        attend(tp, kv, D, len - 1, q, got);
        double num = 0, den = 0;
        for (int i = 0; i < NH * D; i++) {
            num += (got[i] - want[i]) * (got[i] - want[i]);
            den += want[i] * want[i];
        }
        double rel = sqrt(num / den);
        print_message("%d/%d-bit: relative error %.4g\n", ps[pi].key_bits, ps[pi].value_bits, rel);
        assert_true(rel < limit[pi]);
        assert_true(rel < prev);
        prev = rel;
        moe_kv_free(kv);
        moe_kv_pool_free(P);
    }
    moe_kv_free(exact);
    moe_kv_pool_free(P32);
    moe_pool_free(tp);
}

/* ---- block accounting --------------------------------------------------------------- */

static void test_pool_exhaustion_leaves_others_intact(void **state)
{
    (void)state;
    struct moe_pool *tp;
    assert_int_equal(moe_pool_create(1, &tp), 0);
    const int D = 32;
    struct moe_kv_params p = {2, 2, 32, 32};
    struct moe_kv_pool *P;
    int64_t per100 = moe_kv_units_for_params(SH(D), &p, 100);
    assert_int_equal(moe_kv_pool_create(SH(D), &p, per100 + 2, &P), 0);
    struct moe_kv_pool_stats st;
    moe_kv_pool_get_stats(P, &st);
    assert_int_equal(st.units_used, 0);

    struct moe_kv *a = fill(P, D, 100, 5);
    moe_kv_pool_get_stats(P, &st);
    assert_int_equal(st.units_used, per100);
    float q[NH * 64], before[NH * 64], after[NH * 64];
    for (int i = 0; i < NH * D; i++)
        q[i] = frand();
    attend(tp, a, D, 99, q, before);

    /* b runs out of blocks: -ENOSPC, a untouched */
    struct moe_kv *b;
    assert_int_equal(moe_kv_seq_create(P, 1024, &b), 0);
    float k[HK * 64], v[HK * 64];
    for (int i = 0; i < HK * D; i++)
        k[i] = v[i] = 100.0f + frand();
    int rc = 0, p_fail = -1;
    for (int pos = 0; pos < 200 && rc == 0; pos++)
        for (int l = 0; l < L && rc == 0; l++)
            if ((rc = moe_kv_store(b, l, pos, k, v)) < 0)
                p_fail = pos;
    assert_int_equal(rc, -ENOSPC);
    assert_true(p_fail > 0);
    assert_non_null(strstr(moe_err_msg(), "KV pool full"));
    attend(tp, a, D, 99, q, after);
    assert_memory_equal(before, after, sizeof(float) * NH * D);

    /* a reservation cannot be promised twice */
    assert_int_equal(moe_kv_reserve(b, 1000), -ENOSPC);
    moe_kv_free(b); /* its blocks come back */
    moe_kv_pool_get_stats(P, &st);
    assert_int_equal(st.units_used, per100);

    struct moe_kv *c, *d;
    assert_int_equal(moe_kv_seq_create(P, 1024, &c), 0);
    assert_int_equal(moe_kv_seq_create(P, 1024, &d), 0);
    assert_int_equal(moe_kv_reserve(c, 3), 0); /* the 2 free units, promised to c */
    moe_kv_pool_get_stats(P, &st);
    assert_int_equal(st.units_reserved, moe_kv_units_for_params(SH(D), &p, 3));
    assert_int_equal(moe_kv_reserve(d, 1), -ENOSPC);
    assert_int_equal(moe_kv_store(d, 0, 0, k, v), -ENOSPC); /* d may not take c's */
    for (int l = 0; l < L; l++)
        assert_int_equal(moe_kv_store(c, l, 0, k, v), 0);

    /* a ends: its blocks are reused */
    moe_kv_free(a);
    assert_int_equal(moe_kv_reserve(d, 100), 0);
    moe_kv_free(d);
    moe_kv_free(c);
    moe_kv_pool_get_stats(P, &st);
    assert_int_equal(st.units_used, 0);
    assert_int_equal(st.units_reserved, 0);
    moe_kv_pool_free(P);
    moe_pool_free(tp);
}

static void test_sizes_and_params(void **state)
{
    (void)state;
    struct moe_kv_params bad[] = {{3, 4, 32, 32}, {4, 4, 48, 0}, {4, 4, 32, 16},
                                  {4, 4, 32, -32}, {4, 1, 32, 0}};
    for (size_t i = 0; i < MOE_ARRAY_SIZE(bad); i++)
        assert_int_equal(moe_kv_params_check(&bad[i], SH(64)), -EINVAL);
    /* KIVI at 4k tokens, the defaults (G 64, R 64), head_dim 128: the
     * bytes per token the issue asks for */
    struct moe_kv_params p16 = {16, 16, 64, 0}, p4 = {4, 4, 64, 64}, p2 = {2, 2, 64, 64};
    const struct moe_kv_shape *sh = &(struct moe_kv_shape){4, 4, 128, 128, false, NULL, 0};
    double b16 = (double)moe_kv_units_for_params(sh, &p16, 4096) *
                 moe_kv_unit_bytes_for_params(sh, &p16);
    double b4 = (double)moe_kv_units_for_params(sh, &p4, 4096) * moe_kv_unit_bytes_for_params(sh, &p4);
    double b2 = (double)moe_kv_units_for_params(sh, &p2, 4096) * moe_kv_unit_bytes_for_params(sh, &p2);
    assert_true(b16 == 4096.0 * 4 * 4 * 128 * 2 * 2);
    assert_true(b4 <= 0.35 * b16);
    assert_true(b2 <= 0.20 * b16);
}

/* ---- latent caches, windows and sinks against a plain computation ------------------- */

/* What moe_kv_attention must give, from the fp32 keys and values of every
 * position: one kv head per group of nh/hk query heads, values the keys'
 * first dv channels when vals is NULL, the last win positions (0 = all), a
 * sink logit per head in the denominator. */
static void naive_attention(const float *keys, const float *vals, int hk, int dk, int dv, int nh,
                            int len, int win, float scale, const float *sinks, const float *q,
                            float *out)
{
    int first = win > 0 && len > win ? len - win : 0;
    for (int h = 0; h < nh; h++) {
        int g = h / (nh / hk);
        double sc[1024], mx = sinks ? sinks[h] : -INFINITY, sum = 0;
        for (int p = first; p < len; p++) {
            double d = 0;
            for (int c = 0; c < dk; c++)
                d += (double)q[h * dk + c] * keys[((size_t)p * hk + g) * dk + c];
            sc[p] = d * scale;
            mx = fmax(mx, sc[p]);
        }
        for (int p = first; p < len; p++)
            sum += exp(sc[p] - mx);
        if (sinks)
            sum += exp(sinks[h] - mx);
        for (int c = 0; c < dv; c++) {
            double o = 0;
            for (int p = first; p < len; p++) {
                const float *v = vals ? vals + ((size_t)p * hk + g) * dv
                                      : keys + ((size_t)p * hk + g) * dk;
                o += exp(sc[p] - mx) / sum * v[c];
            }
            out[h * dv + c] = (float)o;
        }
    }
}

/* MLA's cache: one kv "head" whose first channels are also the values,
 * nothing else stored; every width, every ISA */
static void test_latent_values_are_the_keys(void **state)
{
    (void)state;
    struct moe_pool *tp;
    assert_int_equal(moe_pool_create(1, &tp), 0);
    enum { DK = 40, DV = 32, NQ = 4, LEN = 150 };
    const struct moe_kv_shape sh = {2, 1, DK, DV, true, NULL, 0};
    static const struct moe_kv_params ps[] = {{32, 32, 32, 0}, {16, 16, 32, 0}, {8, 8, 32, 32},
                                              {4, 4, 32, 32}, {2, 2, 32, 32}};
    static const double tol[] = {1e-5, 2e-3, 0.03, 0.2, 1.0};
    static float keys[LEN * DK];
    float q[NQ * DK], want[NQ * DV], got[NQ * DV], ref[NQ * DV], scores[2048];
    for (int i = 0; i < LEN * DK; i++)
        keys[i] = frand() * 2 + (i % 5 ? 0.3f : -0.8f);
    for (int i = 0; i < NQ * DK; i++)
        q[i] = frand();
    float scale = 1.0f / sqrtf((float)DK);
    naive_attention(keys, NULL, 1, DK, DV, NQ, LEN, 0, scale, NULL, q, want);
    double prev = 0;
    for (size_t pi = 0; pi < MOE_ARRAY_SIZE(ps); pi++) {
        struct moe_kv *kv;
        assert_int_equal(moe_kv_create(&sh, &ps[pi], 256, &kv), 0);
        for (int p = 0; p < LEN; p++)
            for (int l = 0; l < 2; l++)
                assert_int_equal(moe_kv_store(kv, l, p, keys + p * DK, NULL), 0);
        struct moe_kv *kvs[1] = {kv};
        int32_t pos[1] = {LEN - 1};
        struct moe_kv_attn a = {NQ, scale, NULL};
        moe_kv_set_isa(MOE_ISA_REF);
        moe_kv_attention(tp, kvs, pos, 1, 1, &a, q, ref, scores, 1024);
        double num = 0, den = 0;
        for (int i = 0; i < NQ * DV; i++) {
            num += (ref[i] - want[i]) * (ref[i] - want[i]);
            den += want[i] * want[i];
        }
        double rel = sqrt(num / den);
        print_message("latent %d-bit: relative error %.3g\n", ps[pi].key_bits, rel);
        assert_true(rel < tol[pi]);
        assert_true(pi < 2 || rel > prev); /* fewer bits, more error */
        prev = rel;
        find_fast();
        for (int f = 0; f < n_fast; f++) {
            moe_kv_set_isa(f == 0 ? MOE_ISA_AVX2 : MOE_ISA_AVX512);
            moe_kv_attention(tp, kvs, pos, 1, 1, &a, q, got, scores, 1024);
            assert_close(got, ref, NQ * DV, 1e-5, "latent attention");
        }
        moe_kv_free(kv);
    }
    /* value_bits does not apply: the latent is stored at key_bits, so 32/8
     * is the exact 32-bit cache, not fp16 (nor a KIVI window) */
    static const struct moe_kv_params mixed[][2] = {{{32, 8, 32, 32}, {32, 32, 32, 0}},
                                                    {{16, 2, 32, 32}, {16, 16, 32, 0}},
                                                    {{4, 32, 32, 32}, {4, 4, 32, 32}}};
    for (size_t i = 0; i < MOE_ARRAY_SIZE(mixed); i++) {
        assert_int_equal(moe_kv_params_check(&mixed[i][0], &sh), 0);
        assert_int_equal(moe_kv_unit_bytes_for_params(&sh, &mixed[i][0]),
                         moe_kv_unit_bytes_for_params(&sh, &mixed[i][1]));
        float out[2][NQ * DV];
        for (int k = 0; k < 2; k++) {
            struct moe_kv *kv;
            assert_int_equal(moe_kv_create(&sh, &mixed[i][k], 256, &kv), 0);
            for (int p = 0; p < LEN; p++)
                for (int l = 0; l < 2; l++)
                    assert_int_equal(moe_kv_store(kv, l, p, keys + p * DK, NULL), 0);
            struct moe_kv *kvs[1] = {kv};
            int32_t pos[1] = {LEN - 1};
            struct moe_kv_attn a = {NQ, scale, NULL};
            moe_kv_set_isa(MOE_ISA_REF);
            moe_kv_attention(tp, kvs, pos, 1, 1, &a, q, out[k], scores, 1024);
            moe_kv_free(kv);
        }
        assert_memory_equal(out[0], out[1], sizeof(out[0]));
    }
    moe_kv_set_isa(-1);
    moe_pool_free(tp);
}

/* A window layer attends to its last W positions, gives older blocks back
 * as it goes (a reservation made for the bound suffices however long the
 * sequence), and refuses to go back past them; a full layer beside it keeps
 * everything. Prefill chunks, then decode, as the engine feeds them. */
static void test_window_layers_stay_bounded(void **state)
{
    (void)state;
    struct moe_pool *tp;
    assert_int_equal(moe_pool_create(1, &tp), 0);
    enum { D = 32, W = 40, LEN = 400, CHUNK = 50 };
    const int32_t window[L] = {0, W};
    static const struct moe_kv_params ps[] = {{32, 32, 32, 0}, {8, 8, 32, 32}};
    static float keys[LEN * HK * D], vals[LEN * HK * D];
    for (int i = 0; i < LEN * HK * D; i++) {
        keys[i] = frand();
        vals[i] = frand();
    }
    float scale = 1.0f / sqrtf((float)D);
    const float sinks[NH] = {0.5f, -1.0f, 2.0f, 0.0f};
    for (size_t pi = 0; pi < MOE_ARRAY_SIZE(ps); pi++) {
        const struct moe_kv_shape sh = {L, HK, D, D, false, window, CHUNK};
        int64_t bound = moe_kv_units_for_params(&sh, &ps[pi], LEN);
        const struct moe_kv_shape full = {L, HK, D, D, false, NULL, 0};
        assert_true(bound < moe_kv_units_for_params(&full, &ps[pi], LEN));
        struct moe_kv_pool *P;
        assert_int_equal(moe_kv_pool_create(&sh, &ps[pi], bound, &P), 0);
        struct moe_kv *kv;
        assert_int_equal(moe_kv_seq_create(P, 1024, &kv), 0);
        assert_int_equal(moe_kv_reserve(kv, LEN), 0);
        float q[NH * D], want[NH * D], got[CHUNK][NH * D], scores[2048];
        for (int i = 0; i < NH * D; i++)
            q[i] = frand();
        struct moe_kv_attn a = {NH, scale, sinks};
        for (int p0 = 0; p0 < LEN;) {
            int n = p0 < 200 ? CHUNK : 1;
            struct moe_kv *kvs[CHUNK];
            int32_t pos[CHUNK];
            float qs[CHUNK * NH * D];
            for (int t = 0; t < n; t++) {
                for (int l = 0; l < L; l++)
                    assert_int_equal(moe_kv_store(kv, l, p0 + t, keys + (p0 + t) * HK * D,
                                                  vals + (p0 + t) * HK * D), 0);
                kvs[t] = kv;
                pos[t] = p0 + t;
                memcpy(qs + t * NH * D, q, sizeof(q));
            }
            for (int l = 0; l < L; l++) {
                moe_kv_attention(tp, kvs, pos, n, l, &a, qs, &got[0][0], scores, 1024);
                for (int t = 0; t < n; t++) {
                    naive_attention(keys, vals, HK, D, D, NH, p0 + t + 1, window[l], scale,
                                    sinks, q, want);
                    assert_close(got[t], want, NH * D, ps[pi].key_bits == 32 ? 1e-5 : 0.05,
                                 "windowed attention");
                }
            }
            p0 += n;
        }
        struct moe_kv_pool_stats st;
        moe_kv_pool_get_stats(P, &st);
        assert_true(st.units_used <= bound);
        /* layer 1 cannot go back before its window; layer 0 can */
        assert_int_equal(moe_kv_store(kv, 1, 10, keys, vals), -EINVAL);
        assert_non_null(strstr(moe_err_msg(), "window"));
        assert_int_equal(moe_kv_store(kv, 0, ps[pi].key_bits == 32 ? 10 : 32, keys, vals), 0);
        /* starting over at 0 is always possible: the window layer's blocks are free,
         * and still promised to the sequence (it will need as many again) */
        moe_kv_pool_get_stats(P, &st);
        int64_t promised = st.units_used + st.units_reserved;
        assert_int_equal(moe_kv_store(kv, 1, 0, keys, vals), 0);
        moe_kv_pool_get_stats(P, &st);
        assert_int_equal(st.units_used + st.units_reserved, promised);
        float one[NH * D];
        struct moe_kv *k1[1] = {kv};
        int32_t p0[1] = {0};
        moe_kv_attention(tp, k1, p0, 1, 1, &a, q, one, scores, 1024);
        naive_attention(keys, vals, HK, D, D, NH, 1, W, scale, sinks, q, want);
        assert_close(one, want, NH * D, ps[pi].key_bits == 32 ? 1e-5 : 0.05, "restarted window");
        moe_kv_free(kv);
        moe_kv_pool_get_stats(P, &st);
        assert_int_equal(st.units_used, 0);
        assert_int_equal(st.units_reserved, 0);
        moe_kv_pool_free(P);
    }
    moe_pool_free(tp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quant_row_error_bound),
        cmocka_unit_test(test_k_scores_fast_equals_ref),
        cmocka_unit_test(test_v_accum_fast_equals_ref),
        cmocka_unit_test(test_f16_rows_fast_equal_ref),
        cmocka_unit_test(test_attention_fast_equals_ref_ragged),
        cmocka_unit_test(test_attention_error_shrinks_with_bits),
        cmocka_unit_test(test_pool_exhaustion_leaves_others_intact),
        cmocka_unit_test(test_sizes_and_params),
        cmocka_unit_test(test_latent_values_are_the_keys),
        cmocka_unit_test(test_window_layers_stay_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
