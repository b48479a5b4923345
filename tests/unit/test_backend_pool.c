/* backend: the thread pool (every thread index once per run, back-to-back
 * runs, waking sleeping workers) and moe_matmul on it against the
 * single-threaded reference kernel. */
#include <math.h>
#include <pthread.h>
#include <time.h>

#include "backend/backend.h"
#include "common/common.h"
#include "tests/unit/test.h"

#define MAX_T 64

struct count_task {
    int counts[MAX_T];
    int bad_nth;
    int nth_expected;
    pthread_t caller;
    int caller_not_zero;
};

static void count_fn(void *argp, int ith, int nth)
{
    struct count_task *t = argp;
    if (nth != t->nth_expected || ith < 0 || ith >= nth || ith >= MAX_T) {
        __atomic_add_fetch(&t->bad_nth, 1, __ATOMIC_RELAXED);
        return;
    }
    if (ith == 0 && !pthread_equal(pthread_self(), t->caller))
        t->caller_not_zero = 1;
    __atomic_add_fetch(&t->counts[ith], 1, __ATOMIC_RELAXED);
}

static void run_counted(int n_threads, int runs, int sleep_every_us)
{
    struct moe_pool *pool = NULL;
    assert_int_equal(moe_pool_create(n_threads, &pool), 0);
    assert_non_null(pool);
    int nth = moe_pool_threads(pool);
    assert_int_equal(nth, n_threads);
    struct count_task t = {.nth_expected = nth, .caller = pthread_self()};
    for (int r = 0; r < runs; r++) {
        moe_pool_run(pool, count_fn, &t);
        /* after each run, every index has run exactly r+1 times: the
         * run returns only when all have finished */
        for (int i = 0; i < nth; i++)
            if (t.counts[i] != r + 1)
                fail_msg("run %d: thread %d ran %d times", r, i, t.counts[i]);
        if (sleep_every_us > 0) {
            struct timespec ts = {0, (long)sleep_every_us * 1000};
            nanosleep(&ts, NULL);
        }
    }
    assert_int_equal(t.bad_nth, 0);
    assert_int_equal(t.caller_not_zero, 0);
    moe_pool_free(pool);
}

static void test_pool_one_thread(void **state)
{
    (void)state;
    run_counted(1, 100, 0);
    moe_pool_free(NULL); /* no-op */
    assert_int_equal(moe_pool_threads(NULL), 1);
}

static void test_pool_default_size(void **state)
{
    (void)state;
    struct moe_pool *pool;
    assert_int_equal(moe_pool_create(0, &pool), 0);
    assert_int_equal(moe_pool_threads(pool), (int)sysconf(_SC_NPROCESSORS_ONLN));
    moe_pool_free(pool);
    assert_int_equal(moe_pool_create(-3, &pool), 0);
    assert_int_equal(moe_pool_threads(pool), (int)sysconf(_SC_NPROCESSORS_ONLN));
    moe_pool_free(pool);
}

static void test_pool_10000_runs(void **state)
{
    (void)state;
    run_counted(2, 10000, 0);
    run_counted(4, 10000, 0); /* more threads than this machine may have cores */
}

/* workers asleep on the futex must be woken by the next run */
static void test_pool_wakes_sleepers(void **state)
{
    (void)state;
    run_counted(3, 20, 2000); /* 2 ms apart: past the spin, so workers sleep */
}

static void test_pool_create_free_repeatedly(void **state)
{
    (void)state;
    for (int i = 0; i < 50; i++) {
        struct moe_pool *pool;
        assert_int_equal(moe_pool_create(3, &pool), 0);
        if (i % 2) {
            struct count_task t = {.nth_expected = 3, .caller = pthread_self()};
            moe_pool_run(pool, count_fn, &t);
            assert_int_equal(t.counts[2], 1);
        }
        moe_pool_free(pool);
    }
}

/* ---- moe_matmul --------------------------------------------------------------- */

static uint64_t rng = 0x853c49e6748fea9bull;
static float rndf(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static void matmul_case(struct moe_pool *pool, enum moe_dtype dt, int64_t rows, int64_t cols,
                        int n)
{
    const struct moe_dtype_traits *tr = moe_dtype_traits(dt);
    size_t rb = moe_dtype_row_bytes(dt, cols);
    uint8_t *mem = malloc(rb * (size_t)rows);
    float *wf = malloc(sizeof(float) * (size_t)(rows * cols));
    float *x = malloc(sizeof(float) * (size_t)(cols * n));
    float *y = malloc(sizeof(float) * (size_t)(rows * n));
    float *yref = malloc(sizeof(float) * (size_t)(rows * n));
    assert_true(mem && wf && x && y && yref);
    for (int64_t i = 0; i < rows * cols; i++)
        wf[i] = rndf();
    for (int64_t r = 0; r < rows; r++)
        tr->from_f32(wf + r * cols, mem + (size_t)r * rb, cols);
    for (int64_t r = 0; r < rows; r++)
        tr->to_f32(mem + (size_t)r * rb, wf + r * cols, cols);
    for (int64_t i = 0; i < cols * n; i++)
        x[i] = rndf();
    for (int64_t i = 0; i < rows * n; i++)
        y[i] = NAN;
    struct moe_weight w = {.dtype = dt, .rows = rows, .cols = cols, .row_bytes = rb, .data = mem};
    moe_gemm_kernel(dt, MOE_ISA_REF)(&w, 0, rows, x, cols, n, yref, rows);
    moe_matmul(pool, &w, x, n, y);
    for (int t = 0; t < n; t++)
        for (int64_t r = 0; r < rows; r++) {
            double mag = 0;
            for (int64_t c = 0; c < cols; c++)
                mag += fabs((double)wf[r * cols + c] * x[t * cols + c]);
            float a = yref[t * rows + r], b = y[t * rows + r];
            if (!(fabs((double)a - b) <= 1e-5 * mag + 1e-30))
                fail_msg("matmul %s %lldx%lld n=%d t=%d r=%lld: %.9g vs ref %.9g",
                         moe_dtype_name(dt), (long long)rows, (long long)cols, n, t,
                         (long long)r, (double)b, (double)a);
        }
    free(mem);
    free(wf);
    free(x);
    free(y);
    free(yref);
}

static void test_matmul_vs_ref(void **state)
{
    (void)state;
    static const enum moe_dtype dts[] = {MOE_DTYPE_F32, MOE_DTYPE_F16, MOE_DTYPE_BF16,
                                         MOE_DTYPE_Q8_0};
    /* rows x cols: tiny (caller only), odd, and big enough to split */
    static const int64_t shapes[][2] = {{1, 32}, {5, 64}, {33, 96}, {100, 160},
                                        {257, 320}, {1000, 256}, {3, 2048}};
    static const int ns[] = {1, 2, 5, 7, 64};
    static const int threads[] = {1, 2, 3, 4};
    for (size_t ti = 0; ti < MOE_ARRAY_SIZE(threads); ti++) {
        struct moe_pool *pool;
        assert_int_equal(moe_pool_create(threads[ti], &pool), 0);
        for (size_t d = 0; d < MOE_ARRAY_SIZE(dts); d++)
            for (size_t s = 0; s < MOE_ARRAY_SIZE(shapes); s++)
                for (size_t ni = 0; ni < MOE_ARRAY_SIZE(ns); ni++) {
                    int64_t cols = shapes[s][1];
                    if (dts[d] != MOE_DTYPE_Q8_0 && s % 2)
                        cols += 3; /* odd widths for the plain types */
                    matmul_case(pool, dts[d], shapes[s][0], cols, ns[ni]);
                }
        moe_pool_free(pool);
    }
    matmul_case(NULL, MOE_DTYPE_F16, 77, 99, 3); /* no pool: the caller alone */
}

/* moe_matmul_grouped: each group of rows on its own slice of the input,
 * against the reference kernel group by group; groups whose rows are no
 * multiple of the chunk size, so a chunk must stop at its group's end. In
 * every dtype a pack may give MLA's per-head k_b / v_b (moe-pack --dense). */
static void grouped_case(struct moe_pool *pool, enum moe_dtype dt, int64_t G, int64_t R,
                         int64_t C, int n, int th)
{
    const struct moe_dtype_traits *tr = moe_dtype_traits(dt);
    int64_t rows = G * R, xg = C + 5, ldx = G * xg + 3;
    size_t rb = moe_dtype_row_bytes(dt, C);
    uint8_t *mem = malloc(rb * (size_t)rows);
    float *wm = malloc(sizeof(float) * (size_t)(rows * C));
    float *x = malloc(sizeof(float) * (size_t)(ldx * n));
    float *y = malloc(sizeof(float) * (size_t)(rows * n));
    float *yref = malloc(sizeof(float) * (size_t)(rows * n));
    assert_true(mem && wm && x && y && yref);
    for (int64_t i = 0; i < rows * C; i++)
        wm[i] = rndf();
    for (int64_t r = 0; r < rows; r++) { /* wm: what the stored rows decode to */
        tr->from_f32(wm + r * C, mem + (size_t)r * rb, C);
        tr->to_f32(mem + (size_t)r * rb, wm + r * C, C);
    }
    for (int64_t i = 0; i < ldx * n; i++)
        x[i] = rndf();
    for (int64_t i = 0; i < rows * n; i++)
        y[i] = NAN;
    struct moe_weight w = {.dtype = dt, .rows = rows, .cols = C, .row_bytes = rb, .data = mem};
    for (int64_t g = 0; g < G; g++)
        moe_gemm_kernel(dt, MOE_ISA_REF)(&w, g * R, (g + 1) * R, x + g * xg, ldx, n, yref, rows);
    moe_matmul_grouped(pool, &w, (int)G, x, ldx, xg, n, y);
    for (int t = 0; t < n; t++) /* fast kernels sum in another order */
        for (int64_t r = 0; r < rows; r++) {
            double mag = 0;
            for (int64_t c = 0; c < C; c++)
                mag += fabs((double)wm[r * C + c] * x[t * ldx + r / R * xg + c]);
            if (dt == MOE_DTYPE_GQ4) /* int8 activations on VNNI CPUs */
                mag += 1e5 * moe_test_q8_act_bound(wm + r * C, x + t * ldx + r / R * xg, C);
            float a = yref[t * rows + r], b = y[t * rows + r];
            if (!(fabs((double)a - b) <= 1e-5 * mag + 1e-30))
                fail_msg("grouped %s %lldx%lldx%lld n=%d threads=%d t=%d r=%lld: %.9g vs ref "
                         "%.9g", tr->name, (long long)G, (long long)R, (long long)C, n, th, t,
                         (long long)r, (double)b, (double)a);
        }
    free(mem);
    free(wm);
    free(x);
    free(y);
    free(yref);
}

static void test_matmul_grouped(void **state)
{
    (void)state;
    static const int64_t shapes[][3] = {{4, 40, 64}, {16, 24, 128}, {8, 128, 512}, {3, 7, 32}};
    static const enum moe_dtype dts[] = {MOE_DTYPE_F32, MOE_DTYPE_Q8_0, MOE_DTYPE_GQ4};
    static const int ns[] = {1, 3, 17};
    for (int th = 1; th <= 3; th++) {
        struct moe_pool *pool;
        assert_int_equal(moe_pool_create(th, &pool), 0);
        for (size_t d = 0; d < MOE_ARRAY_SIZE(dts); d++)
            for (size_t s = 0; s < MOE_ARRAY_SIZE(shapes); s++)
                for (size_t ni = 0; ni < MOE_ARRAY_SIZE(ns); ni++)
                    if (shapes[s][2] % moe_dtype_traits(dts[d])->block_size == 0)
                        grouped_case(pool, dts[d], shapes[s][0], shapes[s][1], shapes[s][2],
                                     ns[ni], th);
        moe_pool_free(pool);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_one_thread),
        cmocka_unit_test(test_pool_default_size),
        cmocka_unit_test(test_pool_10000_runs),
        cmocka_unit_test(test_pool_wakes_sleepers),
        cmocka_unit_test(test_pool_create_free_repeatedly),
        cmocka_unit_test(test_matmul_vs_ref),
        cmocka_unit_test(test_matmul_grouped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
