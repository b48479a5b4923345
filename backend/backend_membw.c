/* Sustained memory read bandwidth: the roofline decode is measured against.
 * Each thread reads its slice as 8 interleaved streams (many cache misses in
 * flight, as a GEMV over several rows has) and touches every byte. */
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "common/common.h"

#define STREAMS 8

/* 16-byte vectors (baseline SSE2): 4 loads per cache line, so the loop
 * itself is never what limits the reads */
typedef uint64_t u64x2 __attribute__((vector_size(16)));

struct bw_task {
    const uint64_t *buf;
    size_t words; /* per thread */
    uint64_t sink[64];
};

static void bw_worker(void *arg, int ith, int nth)
{
    struct bw_task *b = arg;
    const uint64_t *base = b->buf + (size_t)ith * b->words;
    size_t part = b->words / STREAMS / 8 * 8;
    u64x2 acc[STREAMS] = {{0}};
    for (size_t i = 0; i < part; i += 8)
        for (int s = 0; s < STREAMS; s++) {
            const u64x2 *p = (const u64x2 *)(base + (size_t)s * part + i);
            acc[s] ^= p[0] ^ p[1] ^ p[2] ^ p[3];
        }
    uint64_t x = 0;
    for (int s = 0; s < STREAMS; s++)
        x ^= acc[s][0] ^ acc[s][1];
    b->sink[ith % 64] = x;
}

double moe_mem_read_bandwidth_gbs(struct moe_pool *pool, size_t bytes, int reps)
{
    int nth = moe_pool_threads(pool);
    size_t words = bytes / sizeof(uint64_t) / (size_t)nth / (STREAMS * 8) * (STREAMS * 8);
    uint64_t *buf = malloc(words * (size_t)nth * sizeof(uint64_t));
    if (!buf || words == 0) {
        free(buf);
        return 0.0;
    }
    memset(buf, 1, words * (size_t)nth * sizeof(uint64_t)); /* fault in, not timed */
    struct bw_task b = {buf, words, {0}};
    double best = 0.0;
    for (int r = 0; r < reps; r++) {
        double t0 = moe_now_s();
        moe_pool_run(pool, bw_worker, &b);
        double gbs = (double)(words * (size_t)nth * sizeof(uint64_t)) / (moe_now_s() - t0) / 1e9;
        best = gbs > best ? gbs : best;
    }
    free(buf);
    return best;
}
