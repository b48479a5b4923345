/* quant: the traits table round trips, and every fast gemm kernel (each
 * dtype x each ISA this CPU has) against the plain C reference, which is
 * itself checked against a double-precision sum. */
#include <math.h>
#include <sys/mman.h>

#include "common/common.h"
#include "quant/quant.h"
#include "tests/unit/test.h"

/* ---- helpers ------------------------------------------------------------ */

MOE_TEST_XORSHIFT(0x2545f4914f6cdd1dull)

/* cpuid asked directly: this file tests the dispatcher's own answer against it */
static bool cpu_has(enum moe_isa isa)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    switch (isa) {
    case MOE_ISA_REF: return true;
    case MOE_ISA_AVX2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case MOE_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    default: return false;
    }
#else
    return isa == MOE_ISA_REF;
#endif
}

static const enum moe_dtype all_dtypes[] = {MOE_DTYPE_F32, MOE_DTYPE_F16, MOE_DTYPE_BF16,
                                            MOE_DTYPE_Q8_0};

/* a rows x cols matrix of dtype from random values in [-scale, scale];
 * also returns its exact fp32 values (to_f32 of what was stored) */
struct test_mat {
    struct moe_weight w;
    void *mem;
    float *wf; /* rows x cols, the stored weights as fp32 */
};

static void mat_make(struct test_mat *m, enum moe_dtype dt, int64_t rows, int64_t cols,
                     float scale, bool small_ints)
{
    const struct moe_dtype_traits *tr = moe_dtype_traits(dt);
    assert_non_null(tr);
    size_t rb = moe_dtype_row_bytes(dt, cols);
    assert_true(rb > 0);
    m->mem = malloc(rb * (size_t)rows); /* exact size: ASan sees any overread */
    m->wf = malloc(sizeof(float) * (size_t)(rows * cols));
    assert_non_null(m->mem);
    assert_non_null(m->wf);
    float *tmp = malloc(sizeof(float) * (size_t)cols);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++)
            if (!small_ints)
                tmp[c] = rndf() * scale;
            else if (dt != MOE_DTYPE_Q8_0)
                tmp[c] = (float)((int)(rnd32() % 15) - 7);
            else /* amax 127 in every block: scale 1, q = the value */
                tmp[c] = c % 32 == 0 ? 127.0f : (float)((int)(rnd32() % 255) - 127);
        uint8_t *row = (uint8_t *)m->mem + (size_t)r * rb;
        tr->from_f32(tmp, row, cols);
        tr->to_f32(row, m->wf + r * cols, cols);
    }
    free(tmp);
    m->w = (struct moe_weight){.dtype = dt, .rows = rows, .cols = cols, .row_bytes = rb,
                               .data = m->mem};
}

static void mat_free(struct test_mat *m)
{
    free(m->mem);
    free(m->wf);
}

/* ---- traits --------------------------------------------------------------- */

static void test_traits_table(void **state)
{
    (void)state;
    assert_string_equal(moe_dtype_name(MOE_DTYPE_F32), "f32");
    assert_string_equal(moe_dtype_name(MOE_DTYPE_F16), "f16");
    assert_string_equal(moe_dtype_name(MOE_DTYPE_BF16), "bf16");
    assert_string_equal(moe_dtype_name(MOE_DTYPE_Q8_0), "q8_0");
    assert_string_equal(moe_dtype_name(7), "?");
    assert_null(moe_dtype_traits(2));
    assert_null(moe_dtype_traits(-1));
    assert_int_equal(MOE_DTYPE_F16, 1); /* stable ids */
    assert_int_equal(MOE_DTYPE_Q8_0, 8);
    assert_int_equal(MOE_DTYPE_BF16, 30);

    assert_int_equal(moe_dtype_row_bytes(MOE_DTYPE_F32, 17), 68);
    assert_int_equal(moe_dtype_row_bytes(MOE_DTYPE_F16, 17), 34);
    assert_int_equal(moe_dtype_row_bytes(MOE_DTYPE_BF16, 1), 2);
    assert_int_equal(moe_dtype_row_bytes(MOE_DTYPE_Q8_0, 64), 68);
    assert_int_equal(moe_dtype_row_bytes(MOE_DTYPE_Q8_0, 2048), 2048 / 32 * 34);
    assert_int_equal(moe_dtype_row_bytes(MOE_DTYPE_Q8_0, 33), 0);
    assert_int_equal(moe_dtype_row_bytes(5, 32), 0);
    assert_int_equal(moe_dtype_traits(MOE_DTYPE_Q8_0)->block_size, 32);
    assert_int_equal(moe_dtype_traits(MOE_DTYPE_Q8_0)->block_bytes, 34);
    assert_true(moe_dtype_bits(MOE_DTYPE_Q8_0) == 8.5);
    assert_true(moe_dtype_bits(MOE_DTYPE_GQ4) == 4.25);
    assert_true(moe_dtype_bits(MOE_DTYPE_QMOE) == 0.0);
}

/* The one formats table: every row is found by its id, names are unique,
 * every format has a reference kernel and, in SIMD builds, an AVX2 and an
 * AVX-512 one; a fixed-block format converts both ways. */
static void test_formats_table(void **state)
{
    (void)state;
    assert_null(moe_dtype_at(MOE_DTYPE_N_FORMATS));
    assert_null(moe_dtype_at(-1));
    for (int i = 0; i < MOE_DTYPE_N_FORMATS; i++) {
        const struct moe_dtype_traits *t = moe_dtype_at(i);
        assert_non_null(t);
        assert_ptr_equal(moe_dtype_traits(t->dtype), t);
        assert_string_equal(moe_dtype_name(t->dtype), t->name);
        for (int k = 0; k < i; k++)
            assert_string_not_equal(moe_dtype_at(k)->name, t->name);
        for (int isa = 0; isa < MOE_ISA_COUNT; isa++) {
#ifdef MOE_NO_SIMD
            bool want = isa == MOE_ISA_REF;
#else
            bool want = true;
#endif
            assert_true((t->gemm[isa] != NULL) == want);
            assert_ptr_equal(moe_gemm_kernel(t->dtype, (enum moe_isa)isa), t->gemm[isa]);
        }
        if (t->block_bytes) {
            assert_non_null(t->to_f32);
            assert_non_null(t->from_f32);
        } else {
            assert_non_null(t->view);
            assert_non_null(t->matrix_to_f32); /* a pack of it can be packed again */
        }
    }
}

/* every non-NaN half pattern survives to_f32 -> from_f32 bit for bit */
static void roundtrip_all_halves(enum moe_dtype dt)
{
    const struct moe_dtype_traits *tr = moe_dtype_traits(dt);
    uint16_t *h = malloc(65536 * 2), *back = malloc(65536 * 2);
    float *f = malloc(65536 * sizeof(float));
    for (int i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;
    tr->to_f32(h, f, 65536);
    tr->from_f32(f, back, 65536);
    for (int i = 0; i < 65536; i++) {
        if (isnan(f[i]))
            assert_true(isnan(f[i]) && ((back[i] & 0x7fff) > (dt == MOE_DTYPE_F16 ? 0x7c00 : 0x7f80)));
        else if (back[i] != h[i])
            fail_msg("%s: 0x%04x -> %g -> 0x%04x", tr->name, i, (double)f[i], back[i]);
    }
    free(h);
    free(back);
    free(f);
}

static void test_traits_f16_bf16_exact(void **state)
{
    (void)state;
    roundtrip_all_halves(MOE_DTYPE_F16);
    roundtrip_all_halves(MOE_DTYPE_BF16);

    /* known values, both directions */
    const struct moe_dtype_traits *f16 = moe_dtype_traits(MOE_DTYPE_F16);
    const float vals[] = {0.0f, 1.0f, -2.0f, 0.5f, 65504.0f, 6.103515625e-05f /* min normal */,
                          5.9604644775390625e-08f /* min subnormal */, 1.0009765625f};
    const uint16_t bits[] = {0x0000, 0x3c00, 0xc000, 0x3800, 0x7bff, 0x0400, 0x0001, 0x3c01};
    uint16_t out[8];
    float back[8];
    f16->from_f32(vals, out, 8);
    f16->to_f32(out, back, 8);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(out[i], bits[i]);
        assert_true(back[i] == vals[i]);
    }
    /* round to nearest even: 1 + 2^-11 is halfway, goes to 1; 1 + 3*2^-11 goes up */
    const float mid[] = {1.00048828125f, 1.00146484375f, 1e6f};
    f16->from_f32(mid, out, 3);
    assert_int_equal(out[0], 0x3c00);
    assert_int_equal(out[1], 0x3c02);
    assert_int_equal(out[2], 0x7c00); /* overflow to inf */

    const struct moe_dtype_traits *bf = moe_dtype_traits(MOE_DTYPE_BF16);
    const float bv[] = {1.0f, -3.0f, 1.00390625f /* 1 + 2^-8: halfway, to even */,
                        1.01171875f /* 1 + 3*2^-8: halfway, up */};
    bf->from_f32(bv, out, 4);
    assert_int_equal(out[0], 0x3f80);
    assert_int_equal(out[1], 0xc040);
    assert_int_equal(out[2], 0x3f80);
    assert_int_equal(out[3], 0x3f82);

    const struct moe_dtype_traits *f32 = moe_dtype_traits(MOE_DTYPE_F32);
    float a[3] = {1.5f, -0.0f, 3e-39f}, b[3];
    f32->from_f32(a, b, 3);
    assert_memory_equal(a, b, sizeof(a));
}

static void test_traits_q8_0(void **state)
{
    (void)state;
    const struct moe_dtype_traits *tr = moe_dtype_traits(MOE_DTYPE_Q8_0);
    enum { NB = 64, N = NB * 32 };
    float *src = malloc(N * sizeof(float)), *back = malloc(N * sizeof(float));
    struct moe_block_q8_0 *q = malloc(NB * sizeof(*q));
    for (int i = 0; i < N; i++)
        src[i] = rndf() * (float)(1 + i / 32) * 0.37f; /* a different range per block */
    for (int i = 0; i < 64; i++)
        src[i] = 0.0f; /* block 0 all zero */
    src[40] = 1e-9f;   /* block 1: its scale underflows fp16 */
    tr->from_f32(src, q, N);
    tr->to_f32(q, back, N);
    for (int b = 0; b < NB; b++) {
        float amax = 0.0f, d = moe_f16_to_f32(q[b].d);
        int qmax = 0;
        for (int j = 0; j < 32; j++) {
            amax = fmaxf(amax, fabsf(src[b * 32 + j]));
            qmax = MOE_MAX(qmax, abs(q[b].q[j]));
        }
        assert_true(d >= 0.0f);
        for (int j = 0; j < 32; j++) {
            float err = fabsf(back[b * 32 + j] - src[b * 32 + j]);
            /* half a step, plus what rounding the scale to fp16 can cost;
             * a scale below fp16's range stores the block as zeros */
            if (d > 0)
                assert_true(err <= 0.5f * d + amax * 1e-3f);
            else
                assert_true(err <= amax && amax < 4e-6f);
            assert_true(back[b * 32 + j] == d * (float)q[b].q[j]);
        }
        if (d > 0)
            assert_true(qmax >= 126); /* the largest element uses the full range */
    }
    for (int j = 0; j < 32; j++)
        assert_int_equal(q[0].q[j], 0);
    free(src);
    free(back);
    free(q);
}

/* ---- kernels ----------------------------------------------------------------- */

static void test_kernel_table(void **state)
{
    (void)state;
    for (size_t d = 0; d < MOE_ARRAY_SIZE(all_dtypes); d++)
        assert_non_null(moe_gemm_kernel(all_dtypes[d], MOE_ISA_REF));
    assert_null(moe_gemm_kernel((enum moe_dtype)3, MOE_ISA_REF));
    assert_null(moe_gemm_kernel(MOE_DTYPE_F16, MOE_ISA_COUNT));
    assert_string_equal(moe_isa_name(MOE_ISA_REF), "ref");
    assert_string_equal(moe_isa_name(MOE_ISA_AVX2), "avx2");
    assert_string_equal(moe_isa_name(MOE_ISA_AVX512), "avx512");
    assert_string_equal(moe_isa_name(MOE_ISA_COUNT), "?");
    enum moe_isa best = moe_isa_best();
    assert_true(cpu_has(best));
    for (size_t d = 0; d < MOE_ARRAY_SIZE(all_dtypes); d++)
        assert_non_null(moe_gemm_kernel(all_dtypes[d], best));
}

/* MOE_ISA=... in a fresh process (this binary, --isa-probe) */
static void isa_probe(const char *env, char *out, size_t outsz)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "MOE_ISA=%s /proc/%d/exe --isa-probe 2>/dev/null", env,
             (int)getpid());
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    assert_non_null(fgets(out, (int)outsz, f));
    out[strcspn(out, "\n")] = 0;
    assert_int_equal(pclose(f), 0);
}

static void test_isa_env_override(void **state)
{
    (void)state;
    char got[64];
    enum moe_isa cpu = cpu_has(MOE_ISA_AVX512) ? MOE_ISA_AVX512
                       : cpu_has(MOE_ISA_AVX2) ? MOE_ISA_AVX2
                                               : MOE_ISA_REF;
    isa_probe("ref", got, sizeof(got));
    assert_string_equal(got, "ref");
    isa_probe("avx2", got, sizeof(got));
    assert_string_equal(got, moe_isa_name(MOE_MIN(cpu, MOE_ISA_AVX2)));
    isa_probe("AVX512", got, sizeof(got)); /* only ever lowers */
    assert_string_equal(got, moe_isa_name(cpu));
    isa_probe("bogus", got, sizeof(got)); /* unknown: warned about, ignored */
    assert_string_equal(got, moe_isa_name(cpu));
}

/* Runs fn over rows [r0, r1) of m for n tokens with strides, checks every
 * output against a double sum (tolerance scaled by sum |w*x|, since only the
 * order of fp32 additions may differ) and that nothing else was written. */
static void check_gemm(moe_gemm_fn fn, const char *what, const struct test_mat *m, int64_t r0,
                       int64_t r1, int n, int64_t ldx, int64_t ldy, double rel_tol, bool exact)
{
    int64_t rows = m->w.rows, cols = m->w.cols;
    float *x = malloc(sizeof(float) * (size_t)(ldx * n + 1));
    float *y = malloc(sizeof(float) * (size_t)(ldy * n + 1));
    assert_non_null(x);
    assert_non_null(y);
    for (int64_t i = 0; i < ldx * n; i++)
        x[i] = exact ? (float)((int)(rnd32() % 9) - 4) : rndf();
    const float sentinel = -12345.5f;
    for (int64_t i = 0; i < ldy * n; i++)
        y[i] = sentinel;
    fn(&m->w, r0, r1, x, ldx, n, y, ldy);
    for (int t = 0; t < n; t++) {
        for (int64_t r = 0; r < ldy; r++) {
            float got = y[t * ldy + r];
            if (r < r0 || r >= r1 || r >= rows) {
                if (got != sentinel)
                    fail_msg("%s: wrote outside rows [%lld,%lld): t=%d r=%lld", what,
                             (long long)r0, (long long)r1, t, (long long)r);
                continue;
            }
            double want = 0, mag = 0;
            for (int64_t c = 0; c < cols; c++) {
                double p = (double)m->wf[r * cols + c] * (double)x[t * ldx + c];
                want += p;
                mag += fabs(p);
            }
            double tol = exact ? 0.0 : rel_tol * mag + 1e-30;
            if (!(fabs((double)got - want) <= tol))
                fail_msg("%s %s %lldx%lld n=%d t=%d r=%lld: got %.9g want %.9g (tol %.3g)", what,
                         moe_dtype_name(m->w.dtype), (long long)rows, (long long)cols, n, t,
                         (long long)r, (double)got, want, tol);
        }
    }
    free(x);
    free(y);
}

static void check_against_ref(moe_gemm_fn fast, const char *what, const struct test_mat *m,
                              int64_t r0, int64_t r1, int n, int64_t ldx, int64_t ldy)
{
    moe_gemm_fn ref = moe_gemm_kernel(m->w.dtype, MOE_ISA_REF);
    int64_t cols = m->w.cols;
    float *x = malloc(sizeof(float) * (size_t)(ldx * n + 1));
    float *y0 = calloc((size_t)(ldy * n + 1), sizeof(float));
    float *y1 = calloc((size_t)(ldy * n + 1), sizeof(float));
    for (int64_t i = 0; i < ldx * n; i++)
        x[i] = rndf();
    ref(&m->w, r0, r1, x, ldx, n, y0, ldy);
    fast(&m->w, r0, r1, x, ldx, n, y1, ldy);
    for (int t = 0; t < n; t++)
        for (int64_t r = r0; r < r1; r++) {
            double mag = 0;
            for (int64_t c = 0; c < cols; c++)
                mag += fabs((double)m->wf[r * cols + c] * (double)x[t * ldx + c]);
            float a = y0[t * ldy + r], b = y1[t * ldy + r];
            if (!(fabs((double)a - (double)b) <= 1e-5 * mag + 1e-30))
                fail_msg("%s vs ref %s %lldx%lld n=%d t=%d r=%lld: %.9g vs %.9g", what,
                         moe_dtype_name(m->w.dtype), (long long)m->w.rows, (long long)cols, n,
                         t, (long long)r, (double)b, (double)a);
        }
    free(x);
    free(y0);
    free(y1);
}

static void test_gemm_ref_vs_double(void **state)
{
    (void)state;
    static const int64_t cols_plain[] = {1, 3, 17, 100, 257};
    static const int64_t cols_q8[] = {32, 96, 256};
    for (size_t d = 0; d < MOE_ARRAY_SIZE(all_dtypes); d++) {
        enum moe_dtype dt = all_dtypes[d];
        moe_gemm_fn ref = moe_gemm_kernel(dt, MOE_ISA_REF);
        bool q8 = dt == MOE_DTYPE_Q8_0;
        size_t nc = q8 ? MOE_ARRAY_SIZE(cols_q8) : MOE_ARRAY_SIZE(cols_plain);
        for (size_t ci = 0; ci < nc; ci++) {
            int64_t cols = q8 ? cols_q8[ci] : cols_plain[ci];
            struct test_mat m;
            mat_make(&m, dt, 7, cols, 1.0f, false);
            check_gemm(ref, "ref", &m, 0, 7, 3, cols, 7, 1e-5, false);
            check_gemm(ref, "ref", &m, 2, 5, 2, cols + 3, 11, 1e-5, false);
            mat_free(&m);
            mat_make(&m, dt, 5, cols, 1.0f, true);
            check_gemm(ref, "ref exact", &m, 0, 5, 2, cols, 5, 0, true);
            mat_free(&m);
        }
    }
}

/* every fast kernel this CPU can run, against the reference */
static void test_gemm_fast_vs_ref(void **state)
{
    (void)state;
    static const int64_t cols_plain[] = {1, 3, 15, 16, 17, 31, 33, 63, 64, 65, 100, 257, 1000};
    static const int64_t cols_q8[] = {32, 64, 96, 160, 1024};
    static const int64_t rows_list[] = {1, 2, 3, 4, 5, 7, 13, 37};
    static const int ns[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 64};
    int kernels_tested = 0;
    for (int isa = MOE_ISA_AVX2; isa < MOE_ISA_COUNT; isa++) {
        if (!cpu_has((enum moe_isa)isa))
            continue;
        for (size_t d = 0; d < MOE_ARRAY_SIZE(all_dtypes); d++) {
            enum moe_dtype dt = all_dtypes[d];
            moe_gemm_fn fast = moe_gemm_kernel(dt, (enum moe_isa)isa);
            if (!fast)
                continue; /* a MOE_NO_SIMD build */
            kernels_tested++;
            const char *what = moe_isa_name((enum moe_isa)isa);
            bool q8 = dt == MOE_DTYPE_Q8_0;
            size_t nc = q8 ? MOE_ARRAY_SIZE(cols_q8) : MOE_ARRAY_SIZE(cols_plain);
            for (size_t ci = 0; ci < nc; ci++) {
                int64_t cols = q8 ? cols_q8[ci] : cols_plain[ci];
                for (size_t ri = 0; ri < MOE_ARRAY_SIZE(rows_list); ri++) {
                    int64_t rows = rows_list[ri];
                    struct test_mat m;
                    mat_make(&m, dt, rows, cols, 1.0f, false);
                    for (size_t ni = 0; ni < MOE_ARRAY_SIZE(ns); ni++) {
                        int n = ns[ni];
                        if (n > 9 && rows > 13 && cols > 300)
                            continue; /* keep the test quick */
                        /* contiguous, full range */
                        check_against_ref(fast, what, &m, 0, rows, n, cols, rows);
                        /* strided, sub-range */
                        int64_t r0 = rows > 2 ? 1 : 0, r1 = rows > 3 ? rows - 1 : rows;
                        check_against_ref(fast, what, &m, r0, r1, n, cols + 5, rows + 3);
                        check_gemm(fast, what, &m, r0, r1, n, cols + 1, rows + 2, 2e-5, false);
                    }
                    mat_free(&m);
                    /* small integers: every sum is exact, so any order agrees */
                    mat_make(&m, dt, rows, cols, 1.0f, true);
                    check_gemm(fast, what, &m, 0, rows, 1, cols, rows, 0, true);
                    check_gemm(fast, what, &m, 0, rows, 7, cols + 2, rows, 0, true);
                    mat_free(&m);
                }
            }
        }
    }
    if (!kernels_tested)
        skip();
}

/* shapes past the fast kernels' blocking: more columns than one pass
 * (1024), more rows than one L2 panel, odd widths, a strided sub-range */
static void test_gemm_fast_blocking(void **state)
{
    (void)state;
    int kernels_tested = 0;
    for (int isa = MOE_ISA_AVX2; isa < MOE_ISA_COUNT; isa++) {
        if (!cpu_has((enum moe_isa)isa))
            continue;
        for (size_t d = 0; d < MOE_ARRAY_SIZE(all_dtypes); d++) {
            enum moe_dtype dt = all_dtypes[d];
            moe_gemm_fn fast = moe_gemm_kernel(dt, (enum moe_isa)isa);
            if (!fast)
                continue;
            kernels_tested++;
            const char *what = moe_isa_name((enum moe_isa)isa);
            int64_t cols = dt == MOE_DTYPE_Q8_0 ? 2080 : 2093, rows = 301;
            struct test_mat m;
            mat_make(&m, dt, rows, cols, 1.0f, false);
            check_against_ref(fast, what, &m, 0, rows, 64, cols, rows);
            check_against_ref(fast, what, &m, 5, rows - 2, 7, cols + 16, rows + 1);
            check_against_ref(fast, what, &m, 3, rows, 1, cols, rows);
            check_against_ref(fast, what, &m, 0, rows, 2, cols + 1, rows);
            check_against_ref(fast, what, &m, 0, rows, 3, cols, rows + 5);
            check_against_ref(fast, what, &m, 7, rows, 4, cols, rows);
            mat_free(&m);
            mat_make(&m, dt, 133, cols, 1.0f, true);
            check_gemm(fast, what, &m, 1, 130, 9, cols, 133, 0, true);
            mat_free(&m);
        }
    }
    if (!kernels_tested)
        skip();
}

/* the kernels read only their rows' bytes: a matrix ending at a page end
 * with odd widths (masked and buffered tails) must not fault */
static void test_gemm_no_overread(void **state)
{
    (void)state;
    long page = sysconf(_SC_PAGESIZE);
    for (int isa = MOE_ISA_REF; isa < MOE_ISA_COUNT; isa++) {
        if (!cpu_has((enum moe_isa)isa))
            continue;
        for (size_t d = 0; d < MOE_ARRAY_SIZE(all_dtypes); d++) {
            enum moe_dtype dt = all_dtypes[d];
            moe_gemm_fn fn = moe_gemm_kernel(dt, (enum moe_isa)isa);
            if (!fn)
                continue;
            int64_t cols = dt == MOE_DTYPE_Q8_0 ? 96 : 37, rows = 5;
            size_t rb = moe_dtype_row_bytes(dt, cols), bytes = rb * (size_t)rows;
            /* two pages of which the second is inaccessible */
            uint8_t *mem = mmap(NULL, 2 * (size_t)page, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            assert_true(mem != MAP_FAILED);
            assert_int_equal(mprotect(mem + page, (size_t)page, PROT_NONE), 0);
            uint8_t *data = mem + page - bytes;
            memset(data, 0, bytes);
            struct moe_weight w = {.dtype = dt, .rows = rows, .cols = cols, .row_bytes = rb,
                                   .data = data};
            float x[3 * 96], y[3 * 5];
            for (size_t i = 0; i < MOE_ARRAY_SIZE(x); i++)
                x[i] = 1.0f;
            fn(&w, 0, rows, x, cols, 3, y, rows);
            fn(&w, 0, rows, x, cols, 1, y, rows);
            for (int i = 0; i < 15; i++)
                assert_true(y[i] == 0.0f);
            munmap(mem, 2 * (size_t)page);
        }
    }
}

static void test_vec_helpers(void **state)
{
    (void)state;
    static const int64_t lens[] = {0, 1, 7, 8, 15, 16, 17, 33, 64, 100, 1023};
    float a[1024], b[1024], y[1024], y0[1024];
    for (int i = 0; i < 1024; i++) {
        a[i] = rndf();
        b[i] = rndf();
        y0[i] = rndf();
    }
    for (size_t li = 0; li < MOE_ARRAY_SIZE(lens); li++) {
        int64_t n = lens[li];
        double want = 0, mag = 0;
        for (int64_t i = 0; i < n; i++) {
            want += (double)a[i] * b[i];
            mag += fabs((double)a[i] * b[i]);
        }
        float got = moe_vec_dot_f32(a, b, n);
        assert_true(fabs(got - want) <= 1e-5 * mag + 1e-30);

        memcpy(y, y0, sizeof(y));
        moe_vec_axpy_f32(y, 0.75f, a, n);
        for (int64_t i = 0; i < 1024; i++) {
            double w = i < n ? (double)y0[i] + 0.75 * a[i] : y0[i];
            assert_true(fabs(y[i] - w) <= 1e-6 * (fabs(y0[i]) + fabs(a[i])) + 1e-30);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "--isa-probe")) { /* for test_isa_env_override */
        printf("%s\n", moe_isa_name(moe_isa_best()));
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traits_table),
        cmocka_unit_test(test_formats_table),
        cmocka_unit_test(test_traits_f16_bf16_exact),
        cmocka_unit_test(test_traits_q8_0),
        cmocka_unit_test(test_kernel_table),
        cmocka_unit_test(test_isa_env_override),
        cmocka_unit_test(test_gemm_ref_vs_double),
        cmocka_unit_test(test_gemm_fast_vs_ref),
        cmocka_unit_test(test_gemm_fast_blocking),
        cmocka_unit_test(test_gemm_no_overread),
        cmocka_unit_test(test_vec_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
