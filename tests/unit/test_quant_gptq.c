/* quant GPTQ: the solver against a plain double-precision GPTQ, identity H
 * = plain rounding, GPTQ beating plain rounding on correlated inputs with the
 * QMoE ternary rule and the GQ4 group quantiser, the fallback when H is not
 * positive definite, and a timing print at the bench shapes. */
#include <math.h>

#include "backend/backend.h"
#include "common/common.h"
#include "quant/quant_gptq.h"
#include "quant/quant_gq.h"
#include "tests/unit/test.h"

MOE_TEST_XORSHIFT(0x2545f4914f6cdd1dull)
static float rndn(void)
{
    float u = ((float)(rnd32() >> 8) + 0.5f) / 16777216.0f, v = rndf();
    return sqrtf(-2.0f * logf(u)) * cosf(3.14159265f * v);
}

static struct moe_pool *pool;

static int setup(void **state)
{
    (void)state;
    return moe_pool_create(0, &pool);
}

static int teardown(void **state)
{
    (void)state;
    moe_pool_free(pool);
    return 0;
}

/* ---- quantisers ------------------------------------------------------------ */

/* QMoE ternary: per row lo/hi from the ORIGINAL row */
struct ternary {
    float *lo, *hi;
};

static void ternary_init(struct ternary *t, const float *W, int64_t rows, int64_t cols)
{
    t->lo = malloc(sizeof(float) * (size_t)rows);
    t->hi = malloc(sizeof(float) * (size_t)rows);
    for (int64_t r = 0; r < rows; r++) {
        float lo = 0, hi = 0;
        for (int64_t c = 0; c < cols; c++) {
            lo = fminf(lo, W[r * cols + c]);
            hi = fmaxf(hi, W[r * cols + c]);
        }
        if (lo == 0 && hi == 0) {
            lo = -1;
            hi = 1;
        }
        t->lo[r] = lo;
        t->hi[r] = hi;
    }
}

static void ternary_free(struct ternary *t)
{
    free(t->lo);
    free(t->hi);
}

static float ternary_q(const struct ternary *t, int64_t r, float x)
{
    return x > t->hi[r] / 2 ? t->hi[r] : x < t->lo[r] / 2 ? t->lo[r] : 0.0f;
}

static void ternary_col(void *ctx, int64_t c, const float *w, float *q, int64_t rows)
{
    for (int64_t r = 0; r < rows; r++)
        q[r] = ternary_q(ctx, r, w[r]);
}

/* GQ4 groups of 128: parameters from the current weights at each group start */
struct gq {
    float *s, *z, *tmp;
};

static void gq_begin(void *ctx, const float *Wt, int64_t rows, int64_t c0, int64_t c1)
{
    struct gq *g = ctx;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = c0; c < c1; c++)
            g->tmp[c - c0] = Wt[c * rows + r];
        moe_gq_group_params(g->tmp, (int)(c1 - c0), 4, &g->s[r], &g->z[r]);
    }
}

static void gq_col(void *ctx, int64_t c, const float *w, float *q, int64_t rows)
{
    struct gq *g = ctx;
    for (int64_t r = 0; r < rows; r++)
        q[r] = g->s[r] * ((float)moe_gq_quant(w[r], g->s[r], g->z[r], 4) - g->z[r]);
}

static void gq_init(struct gq *g, int64_t rows)
{
    g->s = malloc(sizeof(float) * (size_t)rows);
    g->z = malloc(sizeof(float) * (size_t)rows);
    g->tmp = malloc(sizeof(float) * MOE_GQ_GROUP);
}

static void gq_free(struct gq *g)
{
    free(g->s);
    free(g->z);
    free(g->tmp);
}

/* q = w / 2: continuous, so the solver can be compared with a reference to
 * rounding error */
static void half_col(void *ctx, int64_t c, const float *w, float *q, int64_t rows)
{
    for (int64_t r = 0; r < rows; r++)
        q[r] = 0.5f * w[r];
}

/* ---- helpers ---------------------------------------------------------------- */

/* x [n][cols] with strongly correlated columns: a few latent factors plus
 * a little noise, and a slowly drifting per-column scale */
static float *make_inputs(int64_t n, int64_t cols)
{
    enum { F = 6 };
    float *mix = malloc(sizeof(float) * F * (size_t)cols);
    float *x = malloc(sizeof(float) * (size_t)(n * cols));
    for (int64_t i = 0; i < F * cols; i++)
        mix[i] = rndn();
    for (int64_t s = 0; s < n; s++) {
        float f[F];
        for (int k = 0; k < F; k++)
            f[k] = rndn();
        for (int64_t c = 0; c < cols; c++) {
            float v = 0.1f * rndn();
            for (int k = 0; k < F; k++)
                v += f[k] * mix[k * cols + c];
            x[s * cols + c] = v * (1.0f + 0.5f * sinf((float)c * 0.05f));
        }
    }
    free(mix);
    return x;
}

static float *make_weights(int64_t rows, int64_t cols)
{
    float *w = malloc(sizeof(float) * (size_t)(rows * cols));
    for (int64_t i = 0; i < rows * cols; i++)
        w[i] = 0.05f * rndn();
    return w;
}

/* ||X W^T - X Q^T||_F^2 = sum_r d_r^T H d_r with H = X^T X, d = W - Q */
static double out_err(const float *H, const float *W, const float *Q, int64_t rows,
                      int64_t cols)
{
    double tot = 0;
    double *d = malloc(sizeof(double) * (size_t)cols);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++)
            d[c] = (double)W[r * cols + c] - Q[r * cols + c];
        for (int64_t i = 0; i < cols; i++) {
            double s = 0;
            for (int64_t j = 0; j < cols; j++)
                s += H[i * cols + j] * d[j];
            tot += d[i] * s;
        }
    }
    free(d);
    return tot;
}

static float *copy(const float *a, int64_t n)
{
    float *b = malloc(sizeof(float) * (size_t)n);
    memcpy(b, a, sizeof(float) * (size_t)n);
    return b;
}

/* ---- tests ------------------------------------------------------------------ */

static void test_hessian(void **state)
{
    (void)state;
    int64_t n = 700, cols = 150;
    float *x = make_inputs(n, cols);
    float *H = calloc((size_t)(cols * cols), sizeof(float));
    moe_gptq_hessian_add(pool, H, x, 300, cols);
    moe_gptq_hessian_add(pool, H, x + 300 * cols, n - 300, cols); /* accumulates */
    for (int64_t i = 0; i < cols; i++)
        for (int64_t j = 0; j < cols; j++) {
            double s = 0, m = 0;
            for (int64_t t = 0; t < n; t++) {
                s += (double)x[t * cols + i] * x[t * cols + j];
                m += fabs((double)x[t * cols + i] * x[t * cols + j]);
            }
            if (!(fabs(H[i * cols + j] - s) <= 1e-5 * m + 1e-6))
                fail_msg("H[%lld][%lld] = %g, want %g", (long long)i, (long long)j,
                         (double)H[i * cols + j], s);
        }
    free(x);
    free(H);
}

/* textbook GPTQ in double: explicit inverse, upper Cholesky, every update
 * applied at once; q = w / 2 */
static void gptq_double(float *W, int64_t rows, int64_t cols, const float *H, int64_t ns,
                        float damp)
{
    int64_t n = cols;
    double *A = malloc(sizeof(double) * (size_t)(n * n));
    double *I = calloc((size_t)(n * n), sizeof(double));
    double mean = 0;
    for (int64_t i = 0; i < n * n; i++)
        A[i] = H[i] * 2.0 / (double)ns;
    for (int64_t i = 0; i < n; i++)
        mean += A[i * n + i] / (double)n;
    for (int64_t i = 0; i < n; i++) {
        A[i * n + i] += damp * mean;
        I[i * n + i] = 1;
    }
    for (int64_t c = 0; c < n; c++) { /* Gauss-Jordan, SPD: no pivoting */
        double p = A[c * n + c];
        for (int64_t j = 0; j < n; j++) {
            A[c * n + j] /= p;
            I[c * n + j] /= p;
        }
        for (int64_t i = 0; i < n; i++)
            if (i != c) {
                double f = A[i * n + c];
                for (int64_t j = 0; j < n; j++) {
                    A[i * n + j] -= f * A[c * n + j];
                    I[i * n + j] -= f * I[c * n + j];
                }
            }
    }
    /* upper Cholesky of I: I = U^T U */
    double *U = calloc((size_t)(n * n), sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        double s = I[i * n + i];
        for (int64_t k = 0; k < i; k++)
            s -= U[k * n + i] * U[k * n + i];
        U[i * n + i] = sqrt(s);
        for (int64_t j = i + 1; j < n; j++) {
            double t = I[i * n + j];
            for (int64_t k = 0; k < i; k++)
                t -= U[k * n + i] * U[k * n + j];
            U[i * n + j] = t / U[i * n + i];
        }
    }
    for (int64_t r = 0; r < rows; r++) {
        double *w = malloc(sizeof(double) * (size_t)n);
        for (int64_t c = 0; c < n; c++)
            w[c] = W[r * n + c];
        for (int64_t c = 0; c < n; c++) {
            double q = 0.5 * w[c], e = (w[c] - q) / U[c * n + c];
            w[c] = q;
            for (int64_t j = c + 1; j < n; j++)
                w[j] -= e * U[c * n + j];
        }
        for (int64_t c = 0; c < n; c++)
            W[r * n + c] = (float)w[c];
        free(w);
    }
    free(A);
    free(I);
    free(U);
}

static void test_against_double(void **state)
{
    (void)state;
    static const int64_t shapes[][3] = {{5, 300, 0}, {9, 257, 64}, {3, 128, 0}, {40, 70, 0}};
    for (size_t k = 0; k < MOE_ARRAY_SIZE(shapes); k++) {
        int64_t rows = shapes[k][0], cols = shapes[k][1], group = shapes[k][2];
        int64_t ns = 4 * cols;
        float *x = make_inputs(ns, cols);
        float *H = calloc((size_t)(cols * cols), sizeof(float));
        moe_gptq_hessian_add(pool, H, x, ns, cols);
        float *W = make_weights(rows, cols), *Wd = copy(W, rows * cols);
        struct moe_gptq_ops ops = {.quant_col = half_col};
        assert_int_equal(moe_gptq_quantize(pool, W, rows, cols, H, ns, 0.01f, group, &ops), 0);
        gptq_double(Wd, rows, cols, H, ns, 0.01f);
        double num = 0, den = 0;
        for (int64_t i = 0; i < rows * cols; i++) {
            num += ((double)W[i] - Wd[i]) * ((double)W[i] - Wd[i]);
            den += (double)Wd[i] * Wd[i];
        }
        if (!(sqrt(num / den) < 1e-3))
            fail_msg("%lldx%lld: relative difference %g", (long long)rows, (long long)cols,
                     sqrt(num / den));
        free(x);
        free(H);
        free(W);
        free(Wd);
    }
}

/* H = I (scaled any way) spreads nothing: exactly plain rounding, = H NULL */
static void test_identity_is_rounding(void **state)
{
    (void)state;
    int64_t rows = 33, cols = 384;
    float *W = make_weights(rows, cols);
    float *H = calloc((size_t)(cols * cols), sizeof(float));
    for (int64_t i = 0; i < cols; i++)
        H[i * cols + i] = 3.0f;
    /* ternary */
    struct ternary t;
    ternary_init(&t, W, rows, cols);
    struct moe_gptq_ops ops = {.quant_col = ternary_col, .ctx = &t};
    float *A = copy(W, rows * cols), *B = copy(W, rows * cols);
    assert_int_equal(moe_gptq_quantize(pool, A, rows, cols, H, 6, 0.1f, 0, &ops), 0);
    assert_int_equal(moe_gptq_quantize(pool, B, rows, cols, NULL, 0, 0.1f, 0, &ops), 0);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            float want = ternary_q(&t, r, W[r * cols + c]);
            assert_true(A[r * cols + c] == want);
            assert_true(B[r * cols + c] == want);
        }
    ternary_free(&t);
    free(A);
    free(B);
    /* GQ4: the same as the traits' round-to-nearest quantiser */
    struct gq g;
    gq_init(&g, rows);
    ops = (struct moe_gptq_ops){.group_begin = gq_begin, .quant_col = gq_col, .ctx = &g};
    A = copy(W, rows * cols);
    B = copy(W, rows * cols);
    assert_int_equal(moe_gptq_quantize(pool, A, rows, cols, H, 6, 0.01f, 128, &ops), 0);
    assert_int_equal(moe_gptq_quantize(pool, B, rows, cols, NULL, 0, 0.01f, 128, &ops), 0);
    const struct moe_dtype_traits *tr = moe_dtype_traits(MOE_DTYPE_GQ4);
    uint8_t *packed = malloc(moe_dtype_row_bytes(MOE_DTYPE_GQ4, cols));
    float *back = malloc(sizeof(float) * (size_t)cols);
    for (int64_t r = 0; r < rows; r++) {
        tr->from_f32(W + r * cols, packed, cols);
        tr->to_f32(packed, back, cols);
        for (int64_t c = 0; c < cols; c++) {
            assert_true(A[r * cols + c] == back[c]);
            assert_true(B[r * cols + c] == back[c]);
        }
    }
    gq_free(&g);
    free(packed);
    free(back);
    free(A);
    free(B);
    free(W);
    free(H);
}

/* correlated inputs: GPTQ's output error clearly below plain rounding's */
static void test_beats_rounding(void **state)
{
    (void)state;
    int64_t rows = 48, cols = 256, ns = 1024;
    float *x = make_inputs(ns, cols);
    float *H = calloc((size_t)(cols * cols), sizeof(float));
    moe_gptq_hessian_add(pool, H, x, ns, cols);
    float *W = make_weights(rows, cols);
    for (int k = 0; k < 2; k++) {
        struct ternary t;
        struct gq g;
        struct moe_gptq_ops ops;
        float damp;
        int64_t group;
        if (k == 0) {
            ternary_init(&t, W, rows, cols);
            ops = (struct moe_gptq_ops){.quant_col = ternary_col, .ctx = &t};
            damp = 0.1f;
            group = 0;
        } else {
            gq_init(&g, rows);
            ops = (struct moe_gptq_ops){.group_begin = gq_begin, .quant_col = gq_col, .ctx = &g};
            damp = 0.01f;
            group = 128;
        }
        float *A = copy(W, rows * cols), *B = copy(W, rows * cols);
        assert_int_equal(moe_gptq_quantize(pool, A, rows, cols, H, ns, damp, group, &ops), 0);
        assert_int_equal(moe_gptq_quantize(pool, B, rows, cols, NULL, 0, damp, group, &ops), 0);
        double eg = out_err(H, W, A, rows, cols), er = out_err(H, W, B, rows, cols);
        printf("# %s: output error GPTQ / rounding = %.3f\n", k ? "gq4" : "ternary", eg / er);
        assert_true(eg < 0.9 * er);
        if (k == 0) /* every output is still on the row's ternary grid */
            for (int64_t r = 0; r < rows; r++)
                for (int64_t c = 0; c < cols; c++) {
                    float v = A[r * cols + c];
                    assert_true(v == 0.0f || v == t.lo[r] || v == t.hi[r]);
                }
        if (k == 0)
            ternary_free(&t);
        else
            gq_free(&g);
        free(A);
        free(B);
    }
    free(x);
    free(H);
    free(W);
}

/* H not positive definite even after damping: plain rounding, return 1 */
static void test_indefinite_falls_back(void **state)
{
    (void)state;
    int64_t rows = 17, cols = 200;
    float *W = make_weights(rows, cols);
    float *H = calloc((size_t)(cols * cols), sizeof(float));
    struct ternary t;
    ternary_init(&t, W, rows, cols);
    struct moe_gptq_ops ops = {.quant_col = ternary_col, .ctx = &t};
    float *B = copy(W, rows * cols);
    assert_int_equal(moe_gptq_quantize(pool, B, rows, cols, NULL, 0, 0.1f, 0, &ops), 0);
    for (int k = 0; k < 2; k++) {
        /* k = 0: a negative diagonal, Cholesky fails at once; k = 1: ones + I
         * (positive definite) up to column 150, then negative diagonal entries
         * with mean(diag) still positive: it fails in the second block */
        for (int64_t i = 0; i < cols; i++)
            for (int64_t j = 0; j < cols; j++)
                H[i * cols + j] = k == 0 ? (i == j ? -1.0f : 0.0f)
                                  : i < 150 && j < 150 ? 1.0f + (i == j)
                                  : i == j ? -5.0f : 0.0f;
        float *A = copy(W, rows * cols);
        assert_int_equal(moe_gptq_quantize(pool, A, rows, cols, H, 10, 0.1f, 0, &ops), 1);
        assert_memory_equal(A, B, sizeof(float) * (size_t)(rows * cols));
        free(A);
    }
    ternary_free(&t);
    free(B);
    free(W);
    free(H);
}

/* a column no input touches: weight 0, and the rest still solved */
static void test_dead_column(void **state)
{
    (void)state;
    int64_t rows = 8, cols = 130, ns = 600;
    float *x = make_inputs(ns, cols);
    for (int64_t s = 0; s < ns; s++)
        x[s * cols + 7] = 0.0f;
    float *H = calloc((size_t)(cols * cols), sizeof(float));
    moe_gptq_hessian_add(pool, H, x, ns, cols);
    float *W = make_weights(rows, cols);
    struct moe_gptq_ops ops = {.quant_col = half_col};
    assert_int_equal(moe_gptq_quantize(pool, W, rows, cols, H, ns, 0.01f, 0, &ops), 0);
    for (int64_t r = 0; r < rows; r++) {
        assert_true(W[r * cols + 7] == 0.0f);
        for (int64_t c = 0; c < cols; c++)
            assert_true(isfinite(W[r * cols + c]));
    }
    free(x);
    free(H);
    free(W);
}

static void time_one(int64_t rows, int64_t cols, int64_t ns)
{
    float *x = make_inputs(ns, cols);
    float *H = calloc((size_t)(cols * cols), sizeof(float));
    double t0 = moe_now_s();
    moe_gptq_hessian_add(pool, H, x, ns, cols);
    double t1 = moe_now_s();
    float *W = make_weights(rows, cols);
    struct ternary t;
    ternary_init(&t, W, rows, cols);
    struct moe_gptq_ops ops = {.quant_col = ternary_col, .ctx = &t};
    double t2 = moe_now_s();
    int rc = moe_gptq_quantize(pool, W, rows, cols, H, ns, 0.1f, 0, &ops);
    double t3 = moe_now_s();
    assert_int_equal(rc, 0);
    struct gq g;
    gq_init(&g, rows);
    ops = (struct moe_gptq_ops){.group_begin = gq_begin, .quant_col = gq_col, .ctx = &g};
    double t4 = moe_now_s();
    rc = moe_gptq_quantize(pool, W, rows, cols, H, ns, 0.01f, 128, &ops);
    double t5 = moe_now_s();
    assert_int_equal(rc, 0);
    printf("# %lldx%lld, %d threads: hessian of %lld inputs %.3f s; gptq ternary %.3f s, "
           "gptq gq4 %.3f s\n",
           (long long)rows, (long long)cols, moe_pool_threads(pool), (long long)ns, t1 - t0,
           t3 - t2, t5 - t4);
    ternary_free(&t);
    gq_free(&g);
    free(x);
    free(H);
    free(W);
}

/* a print, not an assertion: shared machines */
static void test_timing(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    time_one(281, 512, 1024); /* the sanitiser build only runs the shape */
#else
    time_one(2816, 2048, 4096);
    time_one(2048, 2816, 4096);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hessian),
        cmocka_unit_test(test_against_double),
        cmocka_unit_test(test_identity_is_rounding),
        cmocka_unit_test(test_beats_rounding),
        cmocka_unit_test(test_indefinite_falls_back),
        cmocka_unit_test(test_dead_column),
        cmocka_unit_test(test_timing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
