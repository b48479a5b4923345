/* bench_gemm: the CPU compute layer's speed, through moe_matmul on the pool.
 *
 * Build (not part of the Makefile; from the repository root, after `make`
 * has built build/lib/libmoe.a):
 *
 *   cc -std=gnu11 -O2 -I. -pthread tests/bench/bench_gemm.c build/lib/libmoe.a \
 *      -lm -o build/bench_gemm
 *   build/bench_gemm [--threads N] [--quick] [--isa avx512|avx2]
 *
 * Per ISA (avx512, then avx2; each in a child process with MOE_ISA set), all
 * in one run so the ratios are comparable on a shared machine:
 *   - decode GEMV (n=1) over sets of Mixtral-shaped matrices (>= 256 MiB of
 *     weights per set, 8x the 32 MiB L3), in GB/s of weights and as a
 *     fraction of the read bandwidth: N threads (the pool) summing a 1 GiB
 *     fp32 buffer with AVX-512 adds (AVX2 without AVX-512), one such pass
 *     before every GEMV pass;
 *   - GFLOP/s at n = 1, 4, 16, 64 over the 2816x2048 set, and the n=64 : n=1
 *     per-token speed-up.
 * Every figure is the best of REPS passes over the whole set: other work on
 * the machine only ever slows a pass down. The memory bandwidth of this
 * (virtual) machine also drifts on its own, so GEMV is also given as the
 * median, over its passes, of its speed over the bandwidth pass just before
 * ("paired"), and the batched table names the best bandwidth seen among its
 * passes. */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend/backend.h"
#include "common/common.h"
#include "quant/quant.h"

#define SET_BYTES ((size_t)256 << 20) /* per matrix set: 8x a 32 MiB L3 */
#define REPS 12

static int g_threads = 2;
static int g_quick;

/* ---- read bandwidth ------------------------------------------------------ */

struct bw_task {
    const float *buf;
    size_t n;
    float sums[64];
};

__attribute__((target("avx512f"))) static float sum_avx512(const float *p, size_t n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i + 64 <= n; i += 64) {
        s0 = _mm512_add_ps(s0, _mm512_load_ps(p + i));
        s1 = _mm512_add_ps(s1, _mm512_load_ps(p + i + 16));
        s2 = _mm512_add_ps(s2, _mm512_load_ps(p + i + 32));
        s3 = _mm512_add_ps(s3, _mm512_load_ps(p + i + 48));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

__attribute__((target("avx2"))) static float sum_avx2(const float *p, size_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i + 32 <= n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_load_ps(p + i));
        s1 = _mm256_add_ps(s1, _mm256_load_ps(p + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_load_ps(p + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_load_ps(p + i + 24));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    float v[8];
    _mm256_storeu_ps(v, s);
    return v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
}

static int g_have_avx512;

static void bw_part(void *argp, int ith, int nth)
{
    struct bw_task *t = argp;
    size_t per = t->n / (size_t)nth / 64 * 64;
    const float *p = t->buf + per * (size_t)ith;
    t->sums[ith] = g_have_avx512 ? sum_avx512(p, per) : sum_avx2(p, per);
}

struct bw_state {
    float *buf;
    size_t n;
    double best; /* GB/s */
    int passes;
};

static void bw_init(struct bw_state *b)
{
    size_t bytes = (size_t)1 << 30;
    b->buf = aligned_alloc(64, bytes);
    if (!b->buf) {
        perror("bandwidth buffer");
        exit(1);
    }
    for (size_t i = 0; i < bytes / 4; i++)
        b->buf[i] = 1.0f;
    b->n = bytes / 4;
    b->best = 0;
    b->passes = 0;
}

static void bw_free(struct bw_state *b)
{
    free(b->buf);
}

/* one pass over the 1 GiB buffer; returns its GB/s */
static double bw_pass(struct moe_pool *pool, struct bw_state *b)
{
    struct bw_task t = {.buf = b->buf, .n = b->n};
    double t0 = moe_now_s();
    moe_pool_run(pool, bw_part, &t);
    double dt = moe_now_s() - t0;
    size_t per = t.n / (size_t)g_threads / 64 * 64;
    double gbs = (double)(per * (size_t)g_threads * 4) / dt / 1e9;
    b->best = MOE_MAX(b->best, gbs);
    b->passes++;
    return gbs;
}

/* ---- matrix sets ------------------------------------------------------------ */

struct mset {
    struct moe_weight *w;
    int count;
    uint8_t *mem;
    size_t bytes; /* weight bytes in the set */
};

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float frand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

/* enough copies of one random rows x cols matrix to fill SET_BYTES (at
 * least one), each at its own address so every pass streams from DRAM */
static void mset_make(struct mset *s, enum moe_dtype dt, int64_t rows, int64_t cols)
{
    const struct moe_dtype_traits *tr = moe_dtype_traits(dt);
    size_t rb = moe_dtype_row_bytes(dt, cols);
    size_t mb = MOE_ALIGN_UP(rb * (size_t)rows, 4096);
    s->count = (int)MOE_MAX((size_t)1, SET_BYTES / mb);
    s->mem = aligned_alloc(4096, mb * (size_t)s->count);
    s->w = calloc((size_t)s->count, sizeof(*s->w));
    float *row = malloc((size_t)cols * sizeof(float));
    if (!s->mem || !s->w || !row) {
        perror("matrix set");
        exit(1);
    }
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++)
            row[c] = frand() * 0.05f;
        tr->from_f32(row, s->mem + (size_t)r * rb, cols);
    }
    for (int i = 0; i < s->count; i++) {
        if (i)
            memcpy(s->mem + mb * (size_t)i, s->mem, rb * (size_t)rows);
        s->w[i] = (struct moe_weight){.dtype = dt, .rows = rows, .cols = cols, .row_bytes = rb,
                                      .data = s->mem + mb * (size_t)i};
    }
    s->bytes = rb * (size_t)rows * (size_t)s->count;
    free(row);
}

static void mset_free(struct mset *s)
{
    free(s->mem);
    free(s->w);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* seconds for one pass of moe_matmul over the whole set at n tokens */
static double mset_pass(struct moe_pool *pool, const struct mset *s, const float *x, int n,
                        float *y)
{
    double t0 = moe_now_s();
    for (int i = 0; i < s->count; i++)
        moe_matmul(pool, &s->w[i], x, n, y);
    return moe_now_s() - t0;
}

/* ---- one ISA ------------------------------------------------------------------ */

static const enum moe_dtype dtypes[] = {MOE_DTYPE_F16, MOE_DTYPE_BF16, MOE_DTYPE_Q8_0, MOE_DTYPE_F32};
static const int64_t shapes[][2] = {{2816, 2048}, {2048, 2816}, {2048, 2048}, {32000, 2048}};
static const int ns[] = {1, 4, 16, 64};
#define N_DT MOE_ARRAY_SIZE(dtypes)
#define N_SH MOE_ARRAY_SIZE(shapes)
#define N_NS MOE_ARRAY_SIZE(ns)

/* The machine's memory bandwidth is shared and drifts (other work, other
 * tenants: 40 to 80 GB/s within a minute here), so every figure is set
 * against the bandwidth measured in the same stretch of time: each GEMV pass
 * directly follows a bandwidth pass, and the batched passes for all n are
 * interleaved with each other and with bandwidth passes. */
static void run_isa(void)
{
    struct moe_pool *pool;
    if (moe_pool_create(g_threads, &pool)) {
        fprintf(stderr, "pool: %s\n", moe_err_msg());
        exit(1);
    }
    const char *isa = moe_isa_name(moe_isa_best());
    int reps = g_quick ? 3 : REPS;
    int64_t maxc = 2816;
    float *x = malloc((size_t)64 * maxc * sizeof(float));
    float *y = malloc((size_t)64 * 32000 * sizeof(float));
    for (int64_t i = 0; i < 64 * maxc; i++)
        x[i] = frand();
    struct bw_state bws;
    bw_init(&bws);

    printf("\n== ISA %s, %d threads ==\n", isa, g_threads);
    printf("decode GEMV (n=1) through moe_matmul, sets of >= %zu MiB. Each of the %d GEMV\n"
           "passes follows a bandwidth pass (%d threads summing 1 GiB, %s). GB/s and bw:\n"
           "best passes; best/bw: their ratio; paired: median over passes of GEMV / the\n"
           "bandwidth pass just before it (the steadier figure on a shared machine):\n",
           SET_BYTES >> 20, reps, g_threads, g_have_avx512 ? "AVX-512" : "AVX2");
    printf("  %-5s %-12s %5s %9s %9s %8s %8s\n", "dtype", "shape", "mats", "GB/s", "bw GB/s",
           "best/bw", "paired");
    for (size_t d = 0; d < N_DT; d++) {
        double tot_b = 0, tot_t = 0, tot_bw = 0, tot_med = 0;
        int shapes_done = 0;
        for (size_t si = 0; si < N_SH; si++) {
            if (g_quick && si > 0 && si < 3)
                continue;
            struct mset s;
            mset_make(&s, dtypes[d], shapes[si][0], shapes[si][1]);
            moe_matmul(pool, &s.w[0], x, 1, y); /* warm the pool and the code */
            double best_t = 1e30, best_bw = 0, ratio[REPS];
            for (int rep = 0; rep < reps; rep++) {
                double b = bw_pass(pool, &bws), t = mset_pass(pool, &s, x, 1, y);
                ratio[rep] = (double)s.bytes / t / 1e9 / b;
                best_bw = MOE_MAX(best_bw, b);
                best_t = MOE_MIN(best_t, t);
            }
            double gbs = (double)s.bytes / best_t / 1e9, med = median(ratio, reps);
            char shp[32];
            snprintf(shp, sizeof(shp), "%lldx%lld", (long long)shapes[si][0],
                     (long long)shapes[si][1]);
            printf("  %-5s %-12s %5d %9.1f %9.1f %7.1f%% %7.1f%%\n", moe_dtype_name(dtypes[d]),
                   shp, s.count, gbs, best_bw, 100 * gbs / best_bw, 100 * med);
            fflush(stdout);
            tot_b += (double)s.bytes;
            tot_t += best_t;
            tot_bw += best_bw;
            tot_med += med;
            shapes_done++;
            mset_free(&s);
        }
        double gbs = tot_b / tot_t / 1e9, bw = tot_bw / shapes_done;
        printf("  %-5s %-12s %5s %9.1f %9.1f %7.1f%% %7.1f%%\n", moe_dtype_name(dtypes[d]), "all",
               "", gbs, bw, 100 * gbs / bw, 100 * tot_med / shapes_done);
    }

    printf("batched through moe_matmul, 2816x2048 set, GFLOP/s (2*rows*cols*n per matmul),\n"
           "passes for all n interleaved:\n");
    printf("  %-5s", "dtype");
    for (size_t i = 0; i < N_NS; i++)
        printf(" %8s%-2d", "n=", ns[i]);
    printf(" %10s %9s\n", "n64/n1", "bw GB/s");
    for (size_t d = 0; d < N_DT; d++) {
        struct mset s;
        mset_make(&s, dtypes[d], 2816, 2048);
        double best_t[N_NS], best_bw = 0;
        for (size_t i = 0; i < N_NS; i++) {
            best_t[i] = 1e30;
            moe_matmul(pool, &s.w[0], x, ns[i], y);
        }
        for (int rep = 0; rep < reps; rep++) {
            best_bw = MOE_MAX(best_bw, bw_pass(pool, &bws));
            for (size_t i = 0; i < N_NS; i++)
                best_t[i] = MOE_MIN(best_t[i], mset_pass(pool, &s, x, ns[i], y));
        }
        printf("  %-5s", moe_dtype_name(dtypes[d]));
        double g[N_NS];
        for (size_t i = 0; i < N_NS; i++) {
            g[i] = 2.0 * 2816 * 2048 * ns[i] * s.count / best_t[i] / 1e9;
            printf(" %10.1f", g[i]);
        }
        printf(" %9.1fx %9.1f\n", g[N_NS - 1] / g[0], best_bw);
        fflush(stdout);
        mset_free(&s);
    }
    printf("(bandwidth over the whole %s run: best %.1f GB/s of %d passes)\n", isa, bws.best,
           bws.passes);
    fflush(stdout);
    bw_free(&bws);
    free(x);
    free(y);
    moe_pool_free(pool);
}

int main(int argc, char **argv)
{
    const char *only_isa = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            g_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            g_quick = 1;
        else if (!strcmp(argv[i], "--isa") && i + 1 < argc &&
                 (!strcmp(argv[i + 1], "avx512") || !strcmp(argv[i + 1], "avx2")))
            only_isa = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--threads N] [--quick] [--isa avx512|avx2]\n", argv[0]);
            return 2;
        }
    }
    __builtin_cpu_init();
    g_have_avx512 = __builtin_cpu_supports("avx512f");
    if (!__builtin_cpu_supports("avx2")) {
        fprintf(stderr, "bench_gemm: needs AVX2\n");
        return 1;
    }
    if (g_threads <= 0)
        g_threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    printf("bench_gemm: %d threads, sets of %zu MiB, best of %d passes%s\n", g_threads,
           SET_BYTES >> 20, g_quick ? 3 : REPS, g_quick ? " (--quick)" : "");
    fflush(stdout);

    const char *isas[] = {"avx512", "avx2"};
    for (size_t i = g_have_avx512 ? 0 : 1; i < MOE_ARRAY_SIZE(isas); i++) {
        if (only_isa && strcmp(only_isa, isas[i]))
            continue;
        pid_t pid = fork();
        if (pid == 0) {
            setenv("MOE_ISA", isas[i], 1);
            run_isa();
            fflush(stdout);
            _exit(0);
        }
        int st;
        waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) {
            fprintf(stderr, "bench_gemm: %s run failed\n", isas[i]);
            return 1;
        }
    }
    return 0;
}
