/* The one header every unit test includes: cmocka plus small helpers. */
#ifndef MOE_TEST_H
#define MOE_TEST_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka must come after the headers above */
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A test file's own xorshift64 stream, seeded per file so its data stays
 * what the file was written against: the state rng, rnd32() and rndf() in
 * [-1, 1). */
#define MOE_TEST_XORSHIFT(seed)                                                               \
    static uint64_t rng = (seed);                                                             \
    static __attribute__((unused)) uint32_t rnd32(void)                                       \
    {                                                                                         \
        rng ^= rng << 13;                                                                     \
        rng ^= rng >> 7;                                                                      \
        rng ^= rng << 17;                                                                     \
        return (uint32_t)(rng >> 32);                                                         \
    }                                                                                         \
    static __attribute__((unused)) float rndf(void)                                           \
    {                                                                                         \
        return (float)(rnd32() >> 8) / 8388608.0f - 1.0f;                                     \
    }

/* The repository root, so tests find models/ and data/ wherever they run. */
#ifndef MOE_SOURCE_ROOT
#define MOE_SOURCE_ROOT "."
#endif

static inline const char *moe_test_root(void)
{
    const char *r = getenv("MOE_ROOT");
    return r ? r : MOE_SOURCE_ROOT;
}

/* "<root>/<rel>" in a static buffer (tests are single-threaded) */
static inline const char *moe_test_path(const char *rel)
{
    static char buf[4][4096];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", moe_test_root(), rel);
    return buf[i];
}

/* A fresh temporary directory for this test process. */
static inline const char *moe_test_tmpdir(void)
{
    static char dir[256];
    if (!dir[0]) {
        snprintf(dir, sizeof(dir), "/tmp/moe-test-XXXXXX");
        if (!mkdtemp(dir))
            abort();
    }
    return dir;
}

/* How far a GQ4 kernel with int8 activations (quant_gq4_vnni_avx512.c) may
 * be from float sums for one row w and token x: each x moves by at most
 * max|x| / 254 within its group of 128 columns. */
static inline double moe_test_q8_act_bound(const float *w, const float *x, int64_t cols)
{
    double bound = 0;
    for (int64_t g = 0; g + 128 <= cols; g += 128) {
        double xmax = 0, wsum = 0;
        for (int64_t c = g; c < g + 128; c++) {
            xmax = fmax(xmax, fabs((double)x[c]));
            wsum += fabs((double)w[c]);
        }
        bound += 1.001 * wsum * xmax / 254.0;
    }
    return bound;
}

static inline void moe_test_write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

#endif
