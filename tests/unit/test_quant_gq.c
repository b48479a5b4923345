/* quant GQ4: packing, the reference quantiser's error, and the fast kernels
 * against the plain C reference on odd shapes, sub-ranges and strides. */
#include <math.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend/backend.h"
#include "common/common.h"
#include "quant/quant_gq.h"
#include "quant/quant_int.h"
#include "tests/unit/test.h"

MOE_TEST_XORSHIFT(0x9e3779b97f4a7c15ull)

static void test_traits(void **state)
{
    (void)state;
    const struct moe_dtype_traits *t = moe_dtype_traits(MOE_DTYPE_GQ4);
    assert_non_null(t);
    assert_string_equal(t->name, "gq4");
    assert_int_equal(t->block_size, 128);
    assert_int_equal(t->block_bytes, 68);
    assert_int_equal(MOE_DTYPE_GQ4, 104);
    assert_int_equal(moe_dtype_row_bytes(MOE_DTYPE_GQ4, 2048), 16 * 68);
    assert_int_equal(moe_dtype_row_bytes(MOE_DTYPE_GQ4, 100), 0);
    assert_non_null(moe_gemm_kernel(MOE_DTYPE_GQ4, MOE_ISA_REF));
    assert_non_null(moe_gemm_kernel(MOE_DTYPE_GQ4, moe_isa_best()));
}

/* codes and fp16 scale/zero in, to_f32 gives scale * (q - zero) in the
 * documented nibble order */
static void test_pack_roundtrip(void **state)
{
    (void)state;
    enum { COLS = 384 };
    uint8_t q[COLS];
    uint16_t s[3], z[3];
    for (int i = 0; i < COLS; i++)
        q[i] = (uint8_t)(rnd32() % 16);
    for (int g = 0; g < 3; g++) {
        s[g] = moe_f32_to_f16(0.01f * (float)(g + 1));
        z[g] = moe_f32_to_f16(7.3f - (float)g);
    }
    uint8_t buf[3 * MOE_GQ4_GROUP_BYTES];
    moe_gq4_pack_row(q, s, z, COLS, buf);
    /* layout: scale, zero, then byte j of stretch st = q[32st+j] | q[32st+16+j] << 4 */
    assert_memory_equal(buf, &s[0], 2);
    assert_memory_equal(buf + 2, &z[0], 2);
    assert_int_equal(buf[4 + 16 + 3], q[32 + 3] | q[32 + 16 + 3] << 4);
    float back[COLS];
    moe_dtype_traits(MOE_DTYPE_GQ4)->to_f32(buf, back, COLS);
    for (int i = 0; i < COLS; i++) {
        int g = i / 128;
        float want = moe_f16_to_f32(s[g]) * ((float)q[i] - moe_f16_to_f32(z[g]));
        assert_true(back[i] == want);
    }
}

/* from_f32: every weight within half a step (+ what fp16 scale/zero and
 * clipping p < 1 cost), scale and zero fp16-representable, and to_f32 of
 * the result equals scale * (q - zero) with the codes moe_gq_quant picks */
static void test_from_f32_error(void **state)
{
    (void)state;
    enum { N = 128 * 40 };
    float *src = malloc(N * sizeof(float)), *back = malloc(N * sizeof(float));
    uint8_t *buf = malloc(N / 128 * 68);
    for (int i = 0; i < N; i++) {
        int g = i / 128;
        float mag = g < 10 ? 1.0f : g < 20 ? 0.01f : g < 30 ? 100.0f : 1e-3f;
        src[i] = rndf() * mag + (g % 7 == 3 ? 0.5f * mag : 0.0f);
    }
    for (int i = 0; i < 128; i++)
        src[128 * 39 + i] = 0.25f; /* a constant group is exact */
    const struct moe_dtype_traits *t = moe_dtype_traits(MOE_DTYPE_GQ4);
    t->from_f32(src, buf, N);
    t->to_f32(buf, back, N);
    double se = 0, sx = 0;
    for (int g = 0; g < N / 128; g++) {
        float mn = INFINITY, mx = -INFINITY;
        for (int i = 0; i < 128; i++) {
            mn = fminf(mn, src[g * 128 + i]);
            mx = fmaxf(mx, src[g * 128 + i]);
        }
        float step = (mx - mn) / 15.0f;
        for (int i = 0; i < 128; i++) {
            float e = fabsf(back[g * 128 + i] - src[g * 128 + i]);
            /* p >= 0.9 clips at most 10% of the range off either end */
            assert_true(e <= 0.5f * step + 0.1f * (mx - mn) + 1e-6f * fabsf(mx));
            se += (double)e * e;
            sx += (double)src[g * 128 + i] * src[g * 128 + i];
        }
    }
    for (int i = 0; i < 128; i++)
        assert_true(back[128 * 39 + i] == 0.25f);
    /* uniform noise at 16 levels: relative rms error about 1/15 */
    assert_true(sqrt(se / sx) < 0.08);

    /* the search never does worse than p = 1 in its own measure */
    float s, z;
    moe_gq_group_params(src, 128, 4, &s, &z);
    assert_true(s > 0);
    assert_true(moe_f16_to_f32(moe_f32_to_f16(s)) == s);
    assert_true(moe_f16_to_f32(moe_f32_to_f16(z)) == z);
    float mn = INFINITY, mx = -INFINITY;
    for (int i = 0; i < 128; i++) {
        mn = fminf(mn, src[i]);
        mx = fmaxf(mx, src[i]);
    }
    float s1 = moe_f16_to_f32(moe_f32_to_f16((mx - mn) / 15.0f));
    float z1 = moe_f16_to_f32(moe_f32_to_f16(-mn / s1));
    double e_best = 0, e_p1 = 0;
    for (int i = 0; i < 128; i++) {
        e_best += pow(fabs(s * (moe_gq_quant(src[i], s, z, 4) - z) - src[i]), 2.4);
        e_p1 += pow(fabs(s1 * (moe_gq_quant(src[i], s1, z1, 4) - z1) - src[i]), 2.4);
    }
    assert_true(e_best <= e_p1 * 1.001);
    free(src);
    free(back);
    free(buf);
}

struct gq_mat {
    struct moe_weight w;
    uint8_t *mem;
    float *wf;
};

static void mat_make(struct gq_mat *m, int64_t rows, int64_t cols)
{
    size_t rb = moe_dtype_row_bytes(MOE_DTYPE_GQ4, cols);
    assert_true(rb > 0);
    m->mem = malloc(rb * (size_t)rows); /* exact size: ASan sees any overread */
    m->wf = malloc(sizeof(float) * (size_t)(rows * cols));
    float *tmp = malloc(sizeof(float) * (size_t)cols);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++)
            tmp[c] = rndf() * (1.0f + (float)(r % 3));
        moe_gq4_from_f32(tmp, m->mem + (size_t)r * rb, cols);
        moe_gq4_to_f32(m->mem + (size_t)r * rb, m->wf + r * cols, cols);
    }
    free(tmp);
    m->w = (struct moe_weight){.dtype = MOE_DTYPE_GQ4, .rows = rows, .cols = cols,
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
    moe_gemm_fn ref = moe_gemm_kernel(MOE_DTYPE_GQ4, MOE_ISA_REF);
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
                    fail_msg("%s: wrote outside rows [%lld,%lld): t=%d r=%lld", what,
                             (long long)r0, (long long)r1, t, (long long)r);
                continue;
            }
            double want = 0, mag = 0;
            for (int64_t c = 0; c < cols; c++) {
                double p = (double)m->wf[r * cols + c] * x[t * ldx + c];
                want += p;
                mag += fabs(p);
            }
            double qerr = moe_test_q8_act_bound(m->wf + r * cols, x + t * ldx, cols);
            if (!(fabs((double)a - want) <= 1e-5 * mag + 1e-30))
                fail_msg("ref %lldx%lld n=%d t=%d r=%lld: %.9g want %.9g", (long long)m->w.rows,
                         (long long)cols, n, t, (long long)r, (double)a, want);
            if (!(fabs((double)a - (double)b) <= 1e-5 * mag + qerr + 1e-30))
                fail_msg("%s vs ref %lldx%lld n=%d t=%d r=%lld: %.9g vs %.9g", what,
                         (long long)m->w.rows, (long long)cols, n, t, (long long)r, (double)b,
                         (double)a);
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
    for (int isa = MOE_ISA_REF; isa <= (int)best; isa++) {
        moe_gemm_fn fn = moe_gemm_kernel(MOE_DTYPE_GQ4, (enum moe_isa)isa);
        if (!fn)
            continue; /* a MOE_NO_SIMD build */
        const char *what = moe_isa_name((enum moe_isa)isa);
        for (size_t ri = 0; ri < MOE_ARRAY_SIZE(rows_list); ri++)
            for (size_t ci = 0; ci < MOE_ARRAY_SIZE(cols_list); ci++) {
                int64_t rows = rows_list[ri], cols = cols_list[ci];
                struct gq_mat m;
                mat_make(&m, rows, cols);
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

/* The VNNI kernel's outputs for a token are the same bits alone, at any
 * place in any batch and through any row range; x that is not finite goes
 * through the float kernel (NaN stays NaN). */
static void test_batch_invariant(void **state)
{
    (void)state;
    moe_gemm_fn fn = moe_gemm_kernel(MOE_DTYPE_GQ4, MOE_ISA_AVX512);
    if (moe_isa_best() < MOE_ISA_AVX512 || !fn)
        skip();
    static const int64_t shapes[][2] = {{17, 128}, {100, 1152}};
    for (size_t si = 0; si < MOE_ARRAY_SIZE(shapes); si++) {
        int64_t rows = shapes[si][0], cols = shapes[si][1];
        struct gq_mat m;
        mat_make(&m, rows, cols);
        const int n = 13;
        float *x = malloc(sizeof(float) * (size_t)(cols * n));
        float *yb = malloc(sizeof(float) * (size_t)(rows * n));
        float *y1 = malloc(sizeof(float) * (size_t)rows);
        for (int64_t i = 0; i < cols * n; i++)
            x[i] = rndf() * (i % 97 == 0 ? 40.0f : 1.0f); /* a few outliers */
        fn(&m.w, 0, rows, x, cols, n, yb, rows);
        for (int t = 0; t < n; t++) {
            fn(&m.w, 0, rows, x + t * cols, cols, 1, y1, rows);
            assert_memory_equal(y1, yb + t * rows, sizeof(float) * (size_t)rows);
            for (int64_t r0 = 0; r0 < rows; r0 += 16) /* moe_matmul's chunks */
                fn(&m.w, r0, MOE_MIN(rows, r0 + 16), x + t * cols, cols, 1, y1, rows);
            assert_memory_equal(y1, yb + t * rows, sizeof(float) * (size_t)rows);
        }
        x[5] = NAN;
        fn(&m.w, 0, rows, x, cols, 1, y1, rows);
        for (int64_t r = 0; r < rows; r++)
            assert_true(isnan(y1[r]));
        free(x);
        free(yb);
        free(y1);
        mat_free(&m);
    }
}

/* decode GEMV through the pool against bf16 on the bench shape: a print,
 * not an assertion (shared machines) */
static void test_gemv_speed(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    enum { ROWS = 2816, COLS = 2048, SETS = 1, REPS = 1 }; /* only that it runs */
#else
    enum { ROWS = 2816, COLS = 2048, SETS = 16, REPS = 8 };
#endif
    struct moe_pool *pool;
    assert_int_equal(moe_pool_create(0, &pool), 0);
    size_t rb4 = moe_dtype_row_bytes(MOE_DTYPE_GQ4, COLS), rb16 = COLS * 2;
    /* SETS matrices, so the whole set is well past the L3 */
    uint8_t *q = malloc(rb4 * ROWS * SETS), *b = malloc(rb16 * ROWS * SETS);
    assert_non_null(q);
    assert_non_null(b);
    float *tmp = malloc(COLS * sizeof(float)), x[COLS], y[ROWS];
    for (int r = 0; r < ROWS; r++) {
        for (int c = 0; c < COLS; c++)
            tmp[c] = rndf();
        moe_gq4_from_f32(tmp, q + (size_t)r * rb4, COLS);
        for (int c = 0; c < COLS; c++)
            ((uint16_t *)(b + (size_t)r * rb16))[c] = moe_f32_to_bf16(tmp[c]);
    }
    for (int s = 1; s < SETS; s++) {
        memcpy(q + (size_t)s * rb4 * ROWS, q, rb4 * ROWS);
        memcpy(b + (size_t)s * rb16 * ROWS, b, rb16 * ROWS);
    }
    for (int c = 0; c < COLS; c++)
        x[c] = rndf();
    /* the two formats take turns, so drifting machine load hits both */
    double best[2] = {1e9, 1e9};
    for (int rep = 0; rep < REPS; rep++)
        for (int k = 0; k < 2; k++) {
            enum moe_dtype dt = k ? MOE_DTYPE_BF16 : MOE_DTYPE_GQ4;
            uint8_t *base = k ? b : q;
            size_t rb = k ? rb16 : rb4;
            double t0 = moe_now_s();
            for (int s = 0; s < SETS; s++) {
                struct moe_weight w = {.dtype = dt, .rows = ROWS, .cols = COLS, .row_bytes = rb,
                                       .data = base + (size_t)s * rb * ROWS};
                moe_matmul(pool, &w, x, 1, y);
            }
            best[k] = MOE_MIN(best[k], moe_now_s() - t0);
        }
    for (int k = 0; k < 2; k++) {
        size_t rb = k ? rb16 : rb4;
        double wts = (double)ROWS * COLS * SETS / best[k];
        printf("# gemv %s %dx%d, %d threads, %s: %.2f Gweights/s, %.1f GB/s\n",
               moe_dtype_name(k ? MOE_DTYPE_BF16 : MOE_DTYPE_GQ4), ROWS, COLS,
               moe_pool_threads(pool), moe_isa_name(moe_isa_best()), wts * 1e-9,
               (double)rb * ROWS * SETS / best[k] * 1e-9);
    }
    printf("# read bandwidth: %.1f GB/s\n", moe_mem_read_bandwidth_gbs(pool, 256 << 20, 3));
    free(q);
    free(b);
    free(tmp);
    moe_pool_free(pool);
}

int main(int argc, char **argv)
{
    (void)argc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traits),
        cmocka_unit_test(test_pack_roundtrip),
        cmocka_unit_test(test_from_f32_error),
        cmocka_unit_test(test_kernels_vs_ref),
        cmocka_unit_test(test_batch_invariant),
        cmocka_unit_test(test_gemv_speed),
    };
    /* the AVX-512 gq4 kernel takes its VNNI path when the CPU has it: the
     * float path (CPUs without VNNI) is tested by a second run */
    const char *no_vnni = getenv("MOE_NO_VNNI");
    if (no_vnni)
        cmocka_set_test_filter("test_kernels_vs_ref");
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    if (!no_vnni && __builtin_cpu_supports("avx512vnni")) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            setenv("MOE_NO_VNNI", "1", 1);
            execv("/proc/self/exe", argv);
            _exit(127);
        }
        int st = 0;
        if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st))
            rc = rc ? rc : 1;
    }
    return rc;
}
