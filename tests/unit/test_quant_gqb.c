/* quant GQ1/GQ2/GQ3: the code-word packing, the quantisers (clipping search,
 * the 1-bit sign rule), and every fast kernel against the plain C reference
 * on odd shapes, sub-ranges and strides; a GEMV speed print against GQ4 and
 * bf16. */
#include <math.h>

#include "backend/backend.h"
#include "common/common.h"
#include "quant/quant_gq.h"
#include "quant/quant_int.h"
#include "tests/unit/test.h"

MOE_TEST_XORSHIFT(0x2545f4914f6cdd1dull)

static void test_traits(void **state)
{
    (void)state;
    static const char *const names[] = {NULL, "gq1", "gq2", "gq3", "gq4"};
    static const int bytes[] = {0, 20, 36, 52, 68};
    assert_int_equal(MOE_DTYPE_GQ1, 101);
    assert_int_equal(MOE_DTYPE_GQ2, 102);
    assert_int_equal(MOE_DTYPE_GQ3, 103);
    for (int b = 1; b <= 4; b++) {
        int dt = moe_gq_dtype(b);
        assert_int_equal(dt, 100 + b);
        assert_int_equal(moe_gq_bits(dt), b);
        assert_int_equal(moe_gq_group_bytes(b), bytes[b]);
        assert_int_equal(MOE_GQ_GROUP_BYTES(b), bytes[b]);
        const struct moe_dtype_traits *t = moe_dtype_traits(dt);
        assert_non_null(t);
        assert_string_equal(t->name, names[b]);
        assert_int_equal(t->block_size, 128);
        assert_int_equal(t->block_bytes, bytes[b]);
        assert_non_null(t->to_f32);
        assert_non_null(t->from_f32);
        assert_int_equal(moe_dtype_row_bytes(dt, 2048), 16 * bytes[b]);
        assert_int_equal(moe_dtype_row_bytes(dt, 100), 0);
        assert_non_null(moe_gemm_kernel(dt, MOE_ISA_REF));
        assert_non_null(moe_gemm_kernel(dt, moe_isa_best()));
    }
    assert_int_equal(moe_gq_dtype(0), 0);
    assert_int_equal(moe_gq_dtype(5), 0);
    assert_int_equal(moe_gq_bits(MOE_DTYPE_BF16), 0);
    assert_int_equal(moe_gq_bits(MOE_DTYPE_QMOE), 0);
    assert_int_equal(moe_gq_group_bytes(0), 0);
    assert_int_equal(moe_gq_group_bytes(8), 0);
}

/* codes and fp16 scale/zero in, to_f32 gives scale * (q - zero); the bytes
 * are the documented bit planes */
static void test_pack_roundtrip(void **state)
{
    (void)state;
    enum { COLS = 384, NG = COLS / 128 };
    for (int bits = 1; bits <= 4; bits++) {
        uint8_t q[COLS];
        uint16_t s[NG], z[NG];
        for (int i = 0; i < COLS; i++)
            q[i] = (uint8_t)(rnd32() % (1u << bits));
        for (int g = 0; g < NG; g++) {
            s[g] = moe_f32_to_f16(0.01f * (float)(g + 1));
            z[g] = moe_f32_to_f16((float)((1 << bits) - 1) * 0.45f - 0.1f * (float)g);
        }
        size_t gb = moe_gq_group_bytes(bits);
        uint8_t buf[NG * 68];
        memset(buf, 0xa5, sizeof(buf));
        moe_gq_pack_row(bits, q, s, z, COLS, buf);
        for (int g = 0; g < NG; g++) {
            assert_memory_equal(buf + g * gb, &s[g], 2);
            assert_memory_equal(buf + g * gb + 2, &z[g], 2);
            if (bits < 4) /* word j (bytes bits*j..): q[16k + j] at bits*k */
                for (int i = 0; i < 128; i++) {
                    int j = i % 16, k = i / 16;
                    uint32_t word = 0;
                    for (int b = 0; b < bits; b++)
                        word |= (uint32_t)buf[g * gb + 4 + bits * j + b] << (8 * b);
                    assert_int_equal((word >> (bits * k)) & ((1u << bits) - 1), q[128 * g + i]);
                }
        }
        if (bits == 4) { /* the generic packer is the GQ4 one */
            uint8_t ref[NG * 68];
            moe_gq4_pack_row(q, s, z, COLS, ref);
            assert_memory_equal(buf, ref, NG * 68);
        }
        /* codes above the width are ignored */
        uint8_t qh[COLS], buf2[NG * 68];
        for (int i = 0; i < COLS; i++)
            qh[i] = (uint8_t)(q[i] | (0xf0u << bits));
        moe_gq_pack_row(bits, qh, s, z, COLS, buf2);
        assert_memory_equal(buf, buf2, NG * gb);
        float back[COLS];
        moe_dtype_traits(moe_gq_dtype(bits))->to_f32(buf, back, COLS);
        for (int i = 0; i < COLS; i++) {
            int g = i / 128;
            float want = moe_f16_to_f32(s[g]) * ((float)q[i] - moe_f16_to_f32(z[g]));
            assert_true(back[i] == want);
        }
    }
}

/* test data: groups of several magnitudes, some offset, one constant */
static void fill_groups(float *src, int n)
{
    for (int i = 0; i < n; i++) {
        int g = i / 128;
        float mag = g % 4 == 0 ? 1.0f : g % 4 == 1 ? 0.01f : g % 4 == 2 ? 100.0f : 1e-3f;
        src[i] = rndf() * mag + (g % 7 == 3 ? 0.5f * mag : 0.0f);
    }
}

/* from_f32 at 2 and 3 bits: within half a step plus clipping, rms error
 * shrinking with the width, the search no worse than p = 1 in its own
 * measure, constant groups exact */
static void test_from_f32_error(void **state)
{
    (void)state;
    enum { NG = 40, N = 128 * NG };
    float *src = malloc(N * sizeof(float)), *back = malloc(N * sizeof(float));
    uint8_t *buf = malloc(NG * 68);
    fill_groups(src, N);
    for (int i = 0; i < 128; i++)
        src[128 * (NG - 1) + i] = -0.375f; /* a constant group */
    double rel[5] = {0};
    for (int bits = 1; bits <= 4; bits++) {
        const struct moe_dtype_traits *t = moe_dtype_traits(moe_gq_dtype(bits));
        t->from_f32(src, buf, N);
        t->to_f32(buf, back, N);
        double se = 0, sx = 0;
        for (int g = 0; g < NG; g++) {
            const float *x = src + g * 128, *w = back + g * 128;
            float mn = INFINITY, mx = -INFINITY;
            for (int i = 0; i < 128; i++) {
                mn = fminf(mn, x[i]);
                mx = fmaxf(mx, x[i]);
            }
            float step = (mx - mn) / (float)((1 << bits) - 1);
            for (int i = 0; i < 128; i++) {
                float e = fabsf(w[i] - x[i]);
                if (bits > 1) /* p >= 0.9 clips at most 10% of the range off either end */
                    assert_true(e <= 0.5f * step + 0.1f * (mx - mn) + 1e-6f * fabsf(mx) +
                                         1e-6f * fabsf(mn));
                se += (double)e * e;
                sx += (double)x[i] * x[i];
            }
            if (bits == 1 || g == NG - 1)
                continue;
            /* the search never does worse than p = 1 in its own measure */
            float s, z;
            moe_gq_group_params(x, 128, bits, &s, &z);
            assert_true(s > 0);
            assert_true(moe_f16_to_f32(moe_f32_to_f16(s)) == s);
            assert_true(moe_f16_to_f32(moe_f32_to_f16(z)) == z);
            float s1 = moe_f16_to_f32(moe_f32_to_f16((mx - mn) / (float)((1 << bits) - 1)));
            float z1 = moe_f16_to_f32(moe_f32_to_f16(-mn / s1));
            double e_best = 0, e_p1 = 0;
            for (int i = 0; i < 128; i++) {
                e_best += pow(fabs(s * (moe_gq_quant(x[i], s, z, bits) - z) - x[i]), 2.4);
                e_p1 += pow(fabs(s1 * (moe_gq_quant(x[i], s1, z1, bits) - z1) - x[i]), 2.4);
            }
            assert_true(e_best <= e_p1 * 1.001);
        }
        for (int i = 0; i < 128; i++)
            assert_true(back[128 * (NG - 1) + i] == -0.375f);
        rel[bits] = sqrt(se / sx);
        printf("# gq%d from_f32: relative rms error %.4f\n", bits, rel[bits]);
    }
    /* uniform noise: 1 bit about 0.5, then roughly halving per bit */
    assert_true(rel[1] < 0.6);
    assert_true(rel[2] < 0.3);
    assert_true(rel[3] < 0.15);
    for (int b = 2; b <= 4; b++)
        assert_true(rel[b] < 0.65 * rel[b - 1]);
    free(src);
    free(back);
    free(buf);
}

/* GQ1 is sign(x) * mean|x| per group (mean|x| as fp16 rounds 2 mean|x|) */
/* 1 bit: two levels per group, from the sign rule refined by Lloyd steps:
 * never a larger squared error than sign(x) * mean|x|, the sign rule itself
 * on a symmetric group, an all-zero group stays zero */
static void test_gq1_two_levels_never_worse_than_the_sign_rule(void **state)
{
    (void)state;
    enum { NG = 12, N = 128 * NG };
    float src[N], back[N];
    uint8_t buf[NG * 20];
    fill_groups(src, N);
    for (int i = 0; i < 128; i++)
        src[128 * 5 + i] = 0.0f;                   /* all zero: w = 0 */
    for (int i = 0; i < 128; i++)
        src[128 * 7 + i] = i % 2 ? 0.25f : -0.25f; /* symmetric: +-0.25 */
    for (int i = 0; i < 128; i++)
        src[128 * 8 + i] = 1.0f + 0.01f * (float)(i % 7); /* all positive: asymmetric */
    moe_gq1_from_f32(src, buf, N);
    moe_gq1_to_f32(buf, back, N);
    for (int g = 0; g < NG; g++) {
        const float *x = src + g * 128, *y = back + g * 128;
        double m = 0, err = 0, err_sign = 0;
        for (int i = 0; i < 128; i++)
            m += fabs(x[i]);
        m /= 128;
        float lo = y[0], hi = y[0];
        for (int i = 0; i < 128; i++) {
            err += (y[i] - x[i]) * (y[i] - x[i]);
            double s = x[i] >= 0 ? m : -m;
            err_sign += (s - x[i]) * (s - x[i]);
            lo = fminf(lo, y[i]);
            hi = fmaxf(hi, y[i]);
        }
        for (int i = 0; i < 128; i++) /* two levels, each weight on its nearer one */
            assert_true(y[i] == lo || y[i] == hi);
        assert_true(err <= err_sign * 1.002 + 1e-9); /* fp16 rounding of the levels */
    }
    for (int i = 0; i < 128; i++) {
        assert_true(fabsf(back[128 * 5 + i]) < 1e-6f);
        assert_true(fabsf(back[128 * 7 + i] - src[128 * 7 + i]) < 1e-3f);
    }
    double e8 = 0;
    for (int i = 0; i < 128; i++)
        e8 += fabs(back[128 * 8 + i] - src[128 * 8 + i]);
    assert_true(e8 / 128 < 0.02); /* the sign rule would be off by ~1 everywhere */
}

struct gq_mat {
    struct moe_weight w;
    uint8_t *mem;
    float *wf;
};

static void mat_make(struct gq_mat *m, int bits, int64_t rows, int64_t cols)
{
    int dt = moe_gq_dtype(bits);
    const struct moe_dtype_traits *t = moe_dtype_traits(dt);
    size_t rb = moe_dtype_row_bytes(dt, cols);
    assert_true(rb > 0);
    m->mem = malloc(rb * (size_t)rows); /* exact size: ASan sees any overread */
    m->wf = malloc(sizeof(float) * (size_t)(rows * cols));
    float *tmp = malloc(sizeof(float) * (size_t)cols);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++)
            tmp[c] = rndf() * (1.0f + (float)(r % 3)) + (r % 5 == 1 ? 0.7f : 0.0f);
        t->from_f32(tmp, m->mem + (size_t)r * rb, cols);
        t->to_f32(m->mem + (size_t)r * rb, m->wf + r * cols, cols);
    }
    free(tmp);
    m->w = (struct moe_weight){.dtype = (enum moe_dtype)dt, .rows = rows, .cols = cols,
                               .row_bytes = rb, .data = m->mem};
}

static void mat_free(struct gq_mat *m)
{
    free(m->mem);
    free(m->wf);
}

/* fn vs the reference (and the reference vs a double sum), rows [r0, r1),
 * strides ldx, ldy; nothing outside [r0, r1) written */
static void check(moe_gemm_fn fn, const char *what, const struct gq_mat *m, int64_t r0,
                  int64_t r1, int n, int64_t ldx, int64_t ldy)
{
    moe_gemm_fn ref = moe_gemm_kernel(m->w.dtype, MOE_ISA_REF);
    int64_t cols = m->w.cols;
    float *x = malloc(sizeof(float) * (size_t)(ldx * n));
    float *y0 = malloc(sizeof(float) * (size_t)(ldy * n));
    float *y1 = malloc(sizeof(float) * (size_t)(ldy * n));
    for (int64_t i = 0; i < ldx * n; i++)
        x[i] = rndf();
    const float sentinel = -12345.5f;
    for (int64_t i = 0; i < ldy * n; i++)
        y0[i] = y1[i] = sentinel;
    ref(&m->w, r0, r1, x, ldx, n, y0, ldy);
    fn(&m->w, r0, r1, x, ldx, n, y1, ldy);
    for (int t = 0; t < n; t++)
        for (int64_t r = 0; r < ldy; r++) {
            float a = y0[t * ldy + r], b = y1[t * ldy + r];
            if (r < r0 || r >= r1) {
                if (a != sentinel || b != sentinel)
                    fail_msg("%s %s: wrote outside rows [%lld,%lld): t=%d r=%lld", what,
                             moe_dtype_name(m->w.dtype), (long long)r0, (long long)r1, t,
                             (long long)r);
                continue;
            }
            double want = 0, mag = 0;
            for (int64_t c = 0; c < cols; c++) {
                double p = (double)m->wf[r * cols + c] * x[t * ldx + c];
                want += p;
                mag += fabs(p);
            }
            if (!(fabs((double)a - want) <= 1e-5 * mag + 1e-30))
                fail_msg("ref %s %lldx%lld n=%d t=%d r=%lld: %.9g want %.9g",
                         moe_dtype_name(m->w.dtype), (long long)m->w.rows, (long long)cols, n, t,
                         (long long)r, (double)a, want);
            if (!(fabs((double)a - (double)b) <= 1e-5 * mag + 1e-30))
                fail_msg("%s %s vs ref %lldx%lld n=%d t=%d r=%lld: %.9g vs %.9g", what,
                         moe_dtype_name(m->w.dtype), (long long)m->w.rows, (long long)cols, n, t,
                         (long long)r, (double)b, (double)a);
        }
    free(x);
    free(y0);
    free(y1);
}

static void test_kernels_vs_ref(void **state)
{
    (void)state;
    static const int64_t rows_list[] = {1, 17, 33, 100};
    static const int64_t cols_list[] = {128, 384, 1152};
    static const int ns[] = {1, 2, 5, 16, 33};
    enum moe_isa best = moe_isa_best();
    for (int bits = 1; bits <= 3; bits++)
        for (int isa = MOE_ISA_REF; isa <= (int)best; isa++) {
            moe_gemm_fn fn = moe_gemm_kernel((enum moe_dtype)moe_gq_dtype(bits), (enum moe_isa)isa);
            if (!fn)
                continue; /* a MOE_NO_SIMD build */
            const char *what = moe_isa_name((enum moe_isa)isa);
            for (size_t ri = 0; ri < MOE_ARRAY_SIZE(rows_list); ri++)
                for (size_t ci = 0; ci < MOE_ARRAY_SIZE(cols_list); ci++) {
                    int64_t rows = rows_list[ri], cols = cols_list[ci];
                    struct gq_mat m;
                    mat_make(&m, bits, rows, cols);
                    for (size_t ni = 0; ni < MOE_ARRAY_SIZE(ns); ni++) {
                        int n = ns[ni];
                        check(fn, what, &m, 0, rows, n, cols, rows);
                        check(fn, what, &m, 0, rows, n, cols + 7, rows + 3);
                        if (rows > 32) /* sub-ranges as moe_matmul cuts them */
                            check(fn, what, &m, 16, 32, n, cols + 16, rows + 1);
                        if (rows > 48)
                            check(fn, what, &m, 32, rows, n, cols, rows);
                    }
                    mat_free(&m);
                }
        }
    if (best == MOE_ISA_REF)
        skip();
}

/* long rows: many groups per row, sub-ranges, strides */
static void test_gemv_long_rows(void **state)
{
    (void)state;
    enum { COLS = 128 * 300 };
    enum moe_isa best = moe_isa_best();
    for (int bits = 1; bits <= 3; bits++)
        for (int isa = MOE_ISA_AVX2; isa <= (int)best; isa++) {
            moe_gemm_fn fn = moe_gemm_kernel((enum moe_dtype)moe_gq_dtype(bits), (enum moe_isa)isa);
            if (!fn)
                continue;
            struct gq_mat m;
            mat_make(&m, bits, 5, COLS);
            check(fn, moe_isa_name((enum moe_isa)isa), &m, 0, 5, 1, COLS, 5);
            check(fn, moe_isa_name((enum moe_isa)isa), &m, 1, 4, 1, COLS + 3, 6);
            mat_free(&m);
        }
    if (best == MOE_ISA_REF)
        skip();
}

/* decode GEMV through the pool, every GQ width against bf16 on the bench
 * shape: a print, not an assertion (shared machines) */
static void test_gemv_speed(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    enum { ROWS = 2816, COLS = 2048, SETS = 1, REPS = 1 }; /* only that it runs */
#else
    enum { ROWS = 2816, COLS = 2048, SETS = 16, REPS = 8 };
#endif
    enum { NF = 5 };
    static const enum moe_dtype fmts[NF] = {MOE_DTYPE_GQ1, MOE_DTYPE_GQ2, MOE_DTYPE_GQ3,
                                            MOE_DTYPE_GQ4, MOE_DTYPE_BF16};
    struct moe_pool *pool;
    assert_int_equal(moe_pool_create(0, &pool), 0);
    uint8_t *mem[NF];
    size_t rb[NF];
    for (int f = 0; f < NF; f++) {
        rb[f] = moe_dtype_row_bytes(fmts[f], COLS);
        mem[f] = malloc(rb[f] * ROWS * SETS); /* SETS copies: the set is well past the L3 */
        assert_non_null(mem[f]);
    }
    float *tmp = malloc(COLS * sizeof(float)), x[COLS], y[ROWS];
    for (int r = 0; r < ROWS; r++) {
        for (int c = 0; c < COLS; c++)
            tmp[c] = rndf();
        for (int f = 0; f < NF; f++)
            moe_dtype_traits(fmts[f])->from_f32(tmp, mem[f] + (size_t)r * rb[f], COLS);
    }
    for (int f = 0; f < NF; f++)
        for (int s = 1; s < SETS; s++)
            memcpy(mem[f] + (size_t)s * rb[f] * ROWS, mem[f], rb[f] * ROWS);
    for (int c = 0; c < COLS; c++)
        x[c] = rndf();
    /* the formats take turns, so drifting machine load hits all of them */
    double best[NF];
    for (int f = 0; f < NF; f++)
        best[f] = 1e9;
    for (int rep = 0; rep < REPS; rep++)
        for (int f = 0; f < NF; f++) {
            double t0 = moe_now_s();
            for (int s = 0; s < SETS; s++) {
                struct moe_weight w = {.dtype = fmts[f], .rows = ROWS, .cols = COLS,
                                       .row_bytes = rb[f],
                                       .data = mem[f] + (size_t)s * rb[f] * ROWS};
                moe_matmul(pool, &w, x, 1, y);
            }
            best[f] = MOE_MIN(best[f], moe_now_s() - t0);
        }
    for (int f = 0; f < NF; f++) {
        double wts = (double)ROWS * COLS * SETS / best[f];
        printf("# gemv %s %dx%d, %d threads, %s: %.2f Gweights/s, %.1f GB/s\n",
               moe_dtype_name(fmts[f]), ROWS, COLS, moe_pool_threads(pool),
               moe_isa_name(moe_isa_best()), wts * 1e-9,
               (double)rb[f] * ROWS * SETS / best[f] * 1e-9);
    }
    for (int f = 0; f < NF; f++)
        free(mem[f]);
    free(tmp);
    moe_pool_free(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traits),
        cmocka_unit_test(test_pack_roundtrip),
        cmocka_unit_test(test_from_f32_error),
        cmocka_unit_test(test_gq1_two_levels_never_worse_than_the_sign_rule),
        cmocka_unit_test(test_kernels_vs_ref),
        cmocka_unit_test(test_gemv_long_rows),
        cmocka_unit_test(test_gemv_speed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
