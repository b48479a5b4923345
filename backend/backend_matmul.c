/* moe_matmul: y[n][rows] = x[n][cols] . W^T on the CPU pool.
 *
 * The rows are cut into chunks of about CHUNK_BYTES of weights and every
 * thread owns an equal, contiguous range of chunks, which it works through
 * front to back: in decode each thread streams one contiguous stretch of the
 * matrix, in prefill each applies its rows to all n tokens, so every weight
 * is read once. A thread that runs out takes chunks from the back of another
 * thread's range, so a thread the OS has descheduled (a shared or busy
 * machine) delays the matmul by at most the chunk it holds, not by its
 * whole share. A matrix too small to repay waking the workers runs on the
 * caller alone. */
#include <assert.h>

#include "backend/backend.h"
#include "common/common.h"

/* weights per chunk: in decode well past the prefetchers' ramp-up; in
 * prefill one L2 panel of the kernels, so packing the tokens is amortised */
#define CHUNK_BYTES_GEMV (128 * 1024)
#define CHUNK_BYTES_GEMM (512 * 1024)
#define CHUNK_ROWS_MIN 16        /* a multiple of every kernel's row block */
#define MAX_RANGES 64            /* more threads than this share ranges */
/* multiply-adds below which the caller works alone: ~32K MACs take a few
 * microseconds, about what handing work to another core costs */
#define SERIAL_MACS (32 * 1024)

/* chunks [lo, hi) not yet taken: the owner takes lo, thieves take hi - 1 */
struct chunk_range {
    _Alignas(64) uint64_t lohi; /* lo in the low 32 bits, hi in the high */
};

struct matmul_task {
    moe_gemm_fn fn;
    const struct moe_weight *w;
    const float *x;
    float *y;
    int n;
    int n_ranges;
    int64_t ldx, xg; /* token stride; input offset of each row group */
    int64_t rows_per_group, chunk_rows, chunks_per_group;
    struct chunk_range ranges[MAX_RANGES];
};

/* Takes one chunk from r (front or back); -1 when r is empty. */
static int64_t range_take(struct chunk_range *r, bool front)
{
    uint64_t v = __atomic_load_n(&r->lohi, __ATOMIC_RELAXED);
    for (;;) {
        uint32_t lo = (uint32_t)v, hi = (uint32_t)(v >> 32);
        if (lo >= hi)
            return -1;
        uint64_t nv = front ? ((uint64_t)hi << 32) | (lo + 1) : ((uint64_t)(hi - 1) << 32) | lo;
        if (__atomic_compare_exchange_n(&r->lohi, &v, nv, true, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
            return front ? lo : hi - 1;
    }
}

/* chunk c: its row group's rows, never past the group's end */
static void run_chunk(const struct matmul_task *t, int64_t c)
{
    int64_t g = c / t->chunks_per_group, k = c % t->chunks_per_group;
    int64_t r0 = g * t->rows_per_group + k * t->chunk_rows;
    int64_t r1 = MOE_MIN((g + 1) * t->rows_per_group, r0 + t->chunk_rows);
    t->fn(t->w, r0, r1, t->x + g * t->xg, t->ldx, t->n, t->y, t->w->rows);
}

static void matmul_part(void *argp, int ith, int nth)
{
    struct matmul_task *t = argp;
    int own = ith % t->n_ranges;
    int64_t c;
    while ((c = range_take(&t->ranges[own], true)) >= 0)
        run_chunk(t, c);
    for (int k = 1; k < t->n_ranges; k++) {
        struct chunk_range *victim = &t->ranges[(own + k) % t->n_ranges];
        while ((c = range_take(victim, false)) >= 0)
            run_chunk(t, c);
    }
}

/* groups equal groups of rows, group g reading x + g * xg (one group: a
 * plain matmul) */
static void matmul_run(struct moe_pool *pool, const struct moe_weight *w, int groups,
                       const float *x, int64_t ldx, int64_t xg, int n, float *y)
{
    if (n <= 0 || w->rows <= 0 || groups <= 0)
        return;
    moe_gemm_fn fn = moe_gemm_kernel(w->dtype, moe_isa_best());
    if (!fn)
        fn = moe_gemm_kernel(w->dtype, MOE_ISA_REF);
    assert(fn && "moe_matmul: weight of unknown dtype");
    assert(w->rows % groups == 0);
    struct matmul_task t = {.fn = fn, .w = w, .x = x, .y = y, .n = n, .ldx = ldx, .xg = xg,
                            .rows_per_group = w->rows / groups};

    int nth = moe_pool_threads(pool);
    int64_t macs = w->rows * w->cols * (int64_t)n;
    if (nth <= 1 || macs < SERIAL_MACS || w->rows < 2 * CHUNK_ROWS_MIN) {
        for (int g = 0; g < groups; g++)
            fn(w, g * t.rows_per_group, (g + 1) * t.rows_per_group, x + g * xg, ldx, n, y,
               w->rows);
        return;
    }

    int64_t rows_per_thread = (w->rows + nth - 1) / nth;
    size_t chunk_bytes = n == 1 ? CHUNK_BYTES_GEMV : CHUNK_BYTES_GEMM;
    /* compressed rows (QMoE) cost compute, not bytes: size their chunks by
     * weights, as if they were bf16, so threads can still balance */
    size_t row_cost = w->nbytes ? (size_t)w->cols * 2 : w->row_bytes;
    int64_t chunk_rows = (int64_t)(chunk_bytes / MOE_MAX(row_cost, (size_t)1));
    chunk_rows = MOE_MIN(chunk_rows, rows_per_thread);
    chunk_rows = MOE_ALIGN_UP(MOE_MAX(chunk_rows, (int64_t)CHUNK_ROWS_MIN), CHUNK_ROWS_MIN);
    t.chunk_rows = MOE_MIN(chunk_rows, t.rows_per_group);
    t.chunks_per_group = (t.rows_per_group + t.chunk_rows - 1) / t.chunk_rows;
    int64_t n_chunks = t.chunks_per_group * groups;
    assert(n_chunks < ((int64_t)1 << 31));
    t.n_ranges = (int)MOE_MIN((int64_t)MOE_MIN(nth, MAX_RANGES), n_chunks);
    for (int i = 0; i < t.n_ranges; i++) {
        uint64_t lo = (uint64_t)(n_chunks * i / t.n_ranges);
        uint64_t hi = (uint64_t)(n_chunks * (i + 1) / t.n_ranges);
        t.ranges[i].lohi = (hi << 32) | lo;
    }
    moe_pool_run(pool, matmul_part, &t);
}

void moe_matmul(struct moe_pool *pool, const struct moe_weight *w, const float *x, int n,
                float *y)
{
    matmul_run(pool, w, 1, x, w->cols, 0, n, y);
}

void moe_matmul_grouped(struct moe_pool *pool, const struct moe_weight *w, int groups,
                        const float *x, int64_t ldx, int64_t xg, int n, float *y)
{
    matmul_run(pool, w, groups, x, ldx, xg, n, y);
}
