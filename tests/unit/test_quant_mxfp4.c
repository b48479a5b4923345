/* quant MXFP4: the block layout and values (ggml's), the reference
 * quantiser against a plain transcription of ggml's rule (search all 16
 * codes), the converter from the Hugging Face layout against an independent
 * dequantisation of that layout, and every fast kernel against the plain C
 * reference on ragged row ranges, strides and n = 1 .. 16. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <sys/mman.h>

#include "common/common.h"
#include "quant/quant_int.h"
#include "tests/unit/test.h"

MOE_TEST_XORSHIFT(0x7f4a7c159e3779b9ull)

/* the dispatcher's own answer (cpuid, F16C included) */
static bool cpu_has(enum moe_isa isa)
{
    return isa <= moe_isa_best();
}

/* E2M1 by the OCP spec: sign bit 3, magnitude 0, 0.5, 1, 1.5, 2, 3, 4, 6 */
static const float e2m1[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                               -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

static const struct moe_dtype_traits *tr(void)
{
    return moe_dtype_traits(MOE_DTYPE_MXFP4);
}

/* ---- traits, layout, values ------------------------------------------------ */

static void test_traits(void **state)
{
    (void)state;
    assert_int_equal(MOE_DTYPE_MXFP4, 39); /* ggml's GGML_TYPE_MXFP4: written into files */
    assert_int_equal(sizeof(struct moe_block_mxfp4), 17);
    assert_non_null(tr());
    assert_string_equal(moe_dtype_name(MOE_DTYPE_MXFP4), "mxfp4");
    assert_int_equal(tr()->block_size, 32);
    assert_int_equal(tr()->block_bytes, 17);
    assert_null(tr()->view);
    assert_int_equal(moe_dtype_row_bytes(MOE_DTYPE_MXFP4, 2880), 90 * 17);
    assert_int_equal(moe_dtype_row_bytes(MOE_DTYPE_MXFP4, 48), 0);
    for (int isa = MOE_ISA_REF; isa < MOE_ISA_COUNT; isa++)
        if (cpu_has((enum moe_isa)isa))
            assert_non_null(moe_gemm_kernel(MOE_DTYPE_MXFP4, (enum moe_isa)isa));
}

/* value j is the low nibble of qs[j], value j + 16 the high nibble; w =
 * E2M1 * 2^(e - 127) */
static void test_to_f32_known(void **state)
{
    (void)state;
    struct moe_block_mxfp4 b[3];
    for (int j = 0; j < 16; j++)
        b[0].qs[j] = (uint8_t)(j | (15 - j) << 4);
    b[0].e = 127; /* scale 1 */
    b[1] = b[0];
    b[1].e = 130; /* scale 8 */
    b[2] = b[0];
    b[2].e = 0; /* scale 2^-127: subnormal weights */
    float w[96];
    tr()->to_f32(b, w, 96);
    for (int j = 0; j < 16; j++) {
        assert_true(w[j] == e2m1[j]);
        assert_true(w[16 + j] == e2m1[15 - j]);
        assert_true(w[32 + j] == 8.0f * e2m1[j]);
        assert_true(w[64 + j] == ldexpf(e2m1[j], -127));
        assert_true(w[80 + j] == ldexpf(e2m1[15 - j], -127));
    }
    assert_true(w[64 + 1] == 0x1p-128f && w[64 + 1] > 0.0f); /* 0.5 * 2^-127 */
    assert_true(w[64 + 7] == 0x1.8p-125f);                   /* 6 * 2^-127 */
    /* code 8, E2M1 -0, decodes to +0 as in ggml */
    assert_true(w[8] == 0.0f && !signbit(w[8]));
    /* e = 255 (NaN in E8M0) computes as 2^128, as ggml does: 0.5 -> 2^127,
     * 1 and up overflow; e = 254 overflows from 4 up */
    struct moe_block_mxfp4 h = {.e = 255};
    h.qs[0] = 1 | 2 << 4;
    h.qs[1] = 9;
    float hw[32];
    tr()->to_f32(&h, hw, 32);
    assert_true(hw[0] == 0x1p127f);
    assert_true(isinf(hw[16]) && hw[16] > 0);
    assert_true(hw[1] == -0x1p127f);
    assert_true(hw[2] == 0.0f);
    /* e = 253, 254: finite up to 1.5 and 3, inf above (e <= 252 from from_f32) */
    h.e = 254;
    h.qs[0] = 3 | 4 << 4;
    tr()->to_f32(&h, hw, 32);
    assert_true(hw[0] == 0x1.8p127f);
    assert_true(isinf(hw[16]));
    h.e = 253;
    h.qs[0] = 5 | 6 << 4;
    tr()->to_f32(&h, hw, 32);
    assert_true(hw[0] == 0x1.8p127f);
    assert_true(isinf(hw[16]));
    /* the half scales the kernels use are 2^(e - 128) for every e */
    for (int e = 0; e < 256; e++)
        assert_true(moe_mxfp4_half_scale((uint8_t)e) == ldexpf(1.0f, e - 128));
}

/* ggml's quantize_row_mxfp4_ref, transcribed as its rule reads: e from the
 * block's largest magnitude, then for each value the first of the 16 codes
 * (in ggml's order) with the least |2 * E2M1 * 2^(e - 128) - x|. */
static void quant_search(const float *x, struct moe_block_mxfp4 *b)
{
    static const int kv[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
    float amax = 0.0f;
    for (int j = 0; j < 32; j++)
        if (amax < fabsf(x[j]))
            amax = fabsf(x[j]);
    int e = 0;
    if (amax > 0.0f) {
        float fe = floorf(log2f(amax)) - 2 + 127; /* clamped where ggml's cast is undefined */
        e = fe < 0.0f ? 0 : (fe > 254.0f ? 254 : (int)fe);
    }
    float d = ldexpf(1.0f, e - 128);
    b->e = (uint8_t)e;
    uint8_t q[32];
    for (int j = 0; j < 32; j++) {
        int best = 0;
        float best_err = fabsf((float)kv[0] * d - x[j]);
        for (int i = 1; i < 16; i++) {
            float err = fabsf((float)kv[i] * d - x[j]);
            if (err < best_err) {
                best = i;
                best_err = err;
            }
        }
        q[j] = (uint8_t)best;
    }
    for (int j = 0; j < 16; j++)
        b->qs[j] = (uint8_t)(q[j] | q[j + 16] << 4);
}

static void expect_block(const float *x, const struct moe_block_mxfp4 *want, const char *what)
{
    struct moe_block_mxfp4 got;
    tr()->from_f32(x, &got, 32);
    if (memcmp(&got, want, sizeof(got))) {
        for (int j = 0; j < 32; j++)
            fprintf(stderr, "  x[%d] = %a\n", j, (double)x[j]);
        fail_msg("%s: e %d (want %d), qs differ", what, got.e, want->e);
    }
}

/* ties, saturation, signs, zeros and tiny blocks, by hand */
static void test_from_f32_known(void **state)
{
    (void)state;
    float x[32];
    struct moe_block_mxfp4 b;
    /* scale 1 (amax 6): the grid itself, then every midpoint (ties go to the
     * smaller magnitude), then just past the midpoints */
    for (int j = 0; j < 32; j++)
        x[j] = e2m1[j % 16];
    tr()->from_f32(x, &b, 32);
    assert_int_equal(b.e, 127);
    for (int j = 0; j < 16; j++) {
        int code = j == 8 ? 0 : j; /* -0 stores as code 0 */
        assert_int_equal(b.qs[j], code | code << 4);
    }
    static const float mid[8] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 6.0f};
    for (int j = 0; j < 8; j++) {
        x[j] = mid[j];
        x[8 + j] = -mid[j];
        x[16 + j] = nextafterf(mid[j], INFINITY);
        x[24 + j] = -nextafterf(mid[j], INFINITY);
    }
    x[23] = x[31] = 7.99f; /* saturates to 6 */
    x[31] = -7.99f;
    tr()->from_f32(x, &b, 32);
    assert_int_equal(b.e, 127); /* floor(log2(7.99)) - 2 + 127 */
    for (int j = 0; j < 8; j++) {
        int lo = j, lo_neg = j ? (8 | j) : 0; /* midpoint between j and j+1: j */
        int hi = MOE_MIN(j + 1, 7), hi_neg = 8 | hi;
        assert_int_equal(b.qs[j] & 15, lo);
        assert_int_equal(b.qs[8 + j] & 15, lo_neg);
        assert_int_equal(b.qs[j] >> 4, hi);
        assert_int_equal(b.qs[8 + j] >> 4, hi_neg);
    }
    expect_block(x, &b, "by hand");

    /* all zero (and negative zero): e = 0, every code 0 */
    memset(x, 0, sizeof(x));
    x[3] = -0.0f;
    tr()->from_f32(x, &b, 32);
    assert_int_equal(b.e, 0);
    for (int j = 0; j < 16; j++)
        assert_int_equal(b.qs[j], 0);

    /* the e = 0 edge: amax in [2^-125, 2^-124) gives e = 0 exactly (scale
     * 2^-127, weights subnormal) and the values still land on the grid */
    for (int j = 0; j < 32; j++)
        x[j] = ldexpf(e2m1[j % 16], -127);
    x[7] = ldexpf(4.0f, -127); /* amax 4 * 2^-127 = 2^-125 */
    x[23] = ldexpf(-4.0f, -127);
    tr()->from_f32(x, &b, 32);
    assert_int_equal(b.e, 0);
    float back[32];
    tr()->to_f32(&b, back, 32);
    for (int j = 0; j < 32; j++)
        assert_true(back[j] == x[j]);
    /* one step larger: e = 1 */
    x[7] = 0x1p-124f;
    tr()->from_f32(x, &b, 32);
    assert_int_equal(b.e, 1);
    /* below 2^-125 ggml's conversion is undefined (negative to uint8_t);
     * moed clamps e to 0 and still rounds to nearest on that grid */
    for (int j = 0; j < 32; j++)
        x[j] = 0.0f;
    x[0] = 0x1p-130f;             /* 2^-3 of the scale 2^-127: below 0.25, rounds to 0 */
    x[1] = 3.0f * 0x1p-128f;      /* 1.5 * 2^-127 */
    x[2] = -0x1p-149f;            /* the smallest subnormal: 0 */
    tr()->from_f32(x, &b, 32);
    assert_int_equal(b.e, 0);
    assert_int_equal(b.qs[0] & 15, 0);
    assert_int_equal(b.qs[1] & 15, 3);
    assert_int_equal(b.qs[2] & 15, 0);
    /* NaN is skipped by the maximum and gets code 0 */
    for (int j = 0; j < 32; j++)
        x[j] = 1.0f;
    x[5] = NAN;
    x[0] = 4.0f;
    tr()->from_f32(x, &b, 32);
    assert_int_equal(b.e, 127);
    assert_int_equal(b.qs[5] & 15, 0);
    assert_int_equal(b.qs[0] & 15, 6);
    expect_block(x, &b, "nan");
    /* inf: as ggml's search, code 0 (its e is undefined in ggml: clamped) */
    x[6] = -INFINITY;
    tr()->from_f32(x, &b, 32);
    assert_int_equal(b.e, 254);
    assert_int_equal(b.qs[6] & 15, 0);
    struct moe_block_mxfp4 want;
    quant_search(x, &want);
    expect_block(x, &want, "inf");
}

/* from_f32 == ggml's search on millions of values: random scales from
 * subnormal to huge, exact grid points, midpoints and their neighbours */
static void test_from_f32_matches_search(void **state)
{
    (void)state;
    enum { BLOCKS = 100000 };
    float x[32];
    for (int i = 0; i < BLOCKS; i++) {
        int kind = (int)(rnd32() % 4);
        int ex = (int)(rnd32() % 280) - 150; /* 2^-150 .. 2^130: clamped below */
        if (ex > 125)
            ex = 125;
        float s = ldexpf(1.0f, ex);
        for (int j = 0; j < 32; j++) {
            float v;
            if (kind == 0) {
                v = rndf() * 8.0f * s;
            } else {
                static const float pts[] = {0.0f,  0.25f, 0.5f, 0.75f, 1.0f, 1.25f, 1.5f, 1.75f,
                                            2.0f,  2.5f,  3.0f, 3.5f,  4.0f, 5.0f,  6.0f, 7.0f};
                v = pts[rnd32() % 16] * s;
                if (kind == 2)
                    v = nextafterf(v, rnd32() & 1 ? INFINITY : -INFINITY);
                if (rnd32() & 1)
                    v = -v;
            }
            x[j] = v;
        }
        if (kind == 3)
            x[rnd32() % 32] = 4.0f * s; /* the largest value a power of two */
        struct moe_block_mxfp4 want;
        quant_search(x, &want);
        expect_block(x, &want, "random");
    }
}

/* decoding then encoding again: the same values always (a block whose
 * largest code is smaller just gets a smaller scale), the same bits when the
 * largest magnitude is 4 or 6 and no code is -0 */
static void test_roundtrip(void **state)
{
    (void)state;
    enum { NB = 4096 };
    struct moe_block_mxfp4 *b = malloc(NB * sizeof(*b)), *b2 = malloc(NB * sizeof(*b2));
    float *w = malloc(NB * 32 * sizeof(float)), *w2 = malloc(NB * 32 * sizeof(float));
    for (int i = 0; i < NB; i++) {
        b[i].e = (uint8_t)(3 + rnd32() % 250); /* 3 .. 252: a smaller scale still exists */
        for (int j = 0; j < 16; j++) {
            b[i].qs[j] = (uint8_t)(rnd32() & 0xff);
            if (i % 2 == 0) { /* canonical: no -0 */
                if ((b[i].qs[j] & 15) == 8)
                    b[i].qs[j] &= 0xf0;
                if ((b[i].qs[j] >> 4) == 8)
                    b[i].qs[j] &= 0x0f;
            }
        }
        if (i % 2 == 0)
            b[i].qs[rnd32() % 16] = (uint8_t)(6 + (rnd32() & 1) + ((rnd32() & 1) << 3));
    }
    tr()->to_f32(b, w, NB * 32);
    tr()->from_f32(w, b2, NB * 32);
    tr()->to_f32(b2, w2, NB * 32);
    for (int i = 0; i < NB * 32; i++)
        if (w[i] != w2[i])
            fail_msg("value %d: %a -> %a", i, (double)w[i], (double)w2[i]);
    for (int i = 0; i < NB; i += 2)
        assert_memory_equal(&b[i], &b2[i], sizeof(b[i]));
    free(b);
    free(b2);
    free(w);
    free(w2);
}

/* ---- the Hugging Face layout ------------------------------------------------ */

static void test_from_hf(void **state)
{
    (void)state;
    enum { ROWS = 7, COLS = 96, NB = COLS / 32 };
    uint8_t blocks[ROWS * NB * 16], scales[ROWS * NB];
    for (size_t i = 0; i < sizeof(blocks); i++)
        blocks[i] = (uint8_t)rnd32();
    for (size_t i = 0; i < sizeof(scales); i++)
        scales[i] = (uint8_t)(rnd32() % 255); /* 0 .. 254 */
    scales[0] = 0;
    scales[1] = 254;
    scales[2] = 127;
    size_t rb = moe_dtype_row_bytes(MOE_DTYPE_MXFP4, COLS);
    uint8_t *dst = malloc(rb * ROWS);
    assert_int_equal(moe_mxfp4_from_hf(blocks, scales, ROWS, COLS, dst), 0);
    float got[ROWS * COLS];
    for (int r = 0; r < ROWS; r++)
        tr()->to_f32(dst + r * rb, got + r * COLS, COLS);
    /* the HF layout read as transformers' convert_moe_packed_tensors reads it:
     * value 2j of a block from the low nibble of byte j, 2j + 1 from the high
     * nibble, times 2^(scale - 127) */
    for (int r = 0; r < ROWS; r++)
        for (int g = 0; g < NB; g++) {
            const uint8_t *blk = blocks + (r * NB + g) * 16;
            int ex = scales[r * NB + g] - 127;
            for (int j = 0; j < 16; j++) {
                float v0 = ldexpf(e2m1[blk[j] & 15], ex), v1 = ldexpf(e2m1[blk[j] >> 4], ex);
                float g0 = got[r * COLS + g * 32 + 2 * j], g1 = got[r * COLS + g * 32 + 2 * j + 1];
                if (g0 != v0 || g1 != v1)
                    fail_msg("row %d block %d byte %d: %a %a, want %a %a", r, g, j, (double)g0,
                             (double)g1, (double)v0, (double)v1);
            }
            assert_int_equal(dst[r * rb + g * 17], scales[r * NB + g]); /* moved, not recomputed */
        }
    /* a scale of 255 (NaN) is refused, naming where */
    scales[2 * NB + 1] = 255;
    assert_int_equal(moe_mxfp4_from_hf(blocks, scales, ROWS, COLS, dst), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "row 2 block 1"));
    assert_int_equal(moe_mxfp4_from_hf(blocks, scales, 1, 48, dst), -EINVAL);
    free(dst);
}

/* ---- kernels ------------------------------------------------------------------ */

struct test_mat {
    struct moe_weight w;
    uint8_t *mem;
    float *wf; /* rows x cols, the stored weights as fp32 */
};

/* random codes (every one, -0 included) and scales around 1; some blocks at
 * e = 0 (subnormal weights) when tiny; small: integer weights, so every sum
 * of products with small integers is exact */
static void mat_make(struct test_mat *m, int64_t rows, int64_t cols, bool tiny, bool small)
{
    size_t rb = moe_dtype_row_bytes(MOE_DTYPE_MXFP4, cols);
    assert_true(rb > 0);
    m->mem = malloc(rb * (size_t)rows); /* exact size: ASan sees any overread */
    m->wf = malloc(sizeof(float) * (size_t)(rows * cols));
    assert_non_null(m->mem);
    assert_non_null(m->wf);
    for (int64_t r = 0; r < rows; r++) {
        struct moe_block_mxfp4 *b = (struct moe_block_mxfp4 *)(m->mem + (size_t)r * rb);
        for (int64_t i = 0; i < cols / 32; i++) {
            b[i].e = small ? (uint8_t)(128 + rnd32() % 3) : (uint8_t)(120 + rnd32() % 12);
            if (tiny && rnd32() % 4 == 0)
                b[i].e = (uint8_t)(rnd32() % 3);
            for (int j = 0; j < 16; j++)
                b[i].qs[j] = (uint8_t)rnd32();
        }
        tr()->to_f32(b, m->wf + r * cols, cols);
    }
    m->w = (struct moe_weight){.dtype = MOE_DTYPE_MXFP4, .rows = rows, .cols = cols,
                               .row_bytes = rb, .data = m->mem};
}

static void mat_free(struct test_mat *m)
{
    free(m->mem);
    free(m->wf);
}

/* fn over rows [r0, r1) for n tokens with strides: every output against a
 * double sum (tol relative to sum |w*x|; 0 = exact) and nothing written
 * outside the rows */
static void check_gemm(moe_gemm_fn fn, const char *what, const struct test_mat *m, int64_t r0,
                       int64_t r1, int n, int64_t ldx, int64_t ldy, double rel_tol, bool ints)
{
    int64_t cols = m->w.cols;
    float *x = malloc(sizeof(float) * (size_t)(ldx * n + 1));
    float *y = malloc(sizeof(float) * (size_t)(ldy * n + 1));
    for (int64_t i = 0; i < ldx * n; i++)
        x[i] = ints ? (float)((int)(rnd32() % 9) - 4) : rndf();
    const float sentinel = -12345.5f;
    for (int64_t i = 0; i < ldy * n; i++)
        y[i] = sentinel;
    fn(&m->w, r0, r1, x, ldx, n, y, ldy);
    for (int t = 0; t < n; t++)
        for (int64_t r = 0; r < ldy; r++) {
            float got = y[t * ldy + r];
            if (r < r0 || r >= r1) {
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
            if (!(fabs((double)got - want) <= rel_tol * mag + 1e-300))
                fail_msg("%s %lldx%lld n=%d t=%d r=%lld: got %.9g want %.9g", what,
                         (long long)m->w.rows, (long long)cols, n, t, (long long)r, (double)got,
                         want);
        }
    free(x);
    free(y);
}

/* fast against the reference, |a - b| <= 1e-5 * sum |w*x| */
static void check_against_ref(moe_gemm_fn fast, const char *what, const struct test_mat *m,
                              int64_t r0, int64_t r1, int n, int64_t ldx, int64_t ldy)
{
    moe_gemm_fn ref = moe_gemm_kernel(MOE_DTYPE_MXFP4, MOE_ISA_REF);
    int64_t cols = m->w.cols;
    float *x = malloc(sizeof(float) * (size_t)(ldx * n + 1));
    float *y0 = calloc((size_t)(ldy * n + 1), sizeof(float));
    float *y1 = calloc((size_t)(ldy * n + 1), sizeof(float));
    for (int64_t i = 0; i < ldx * n; i++)
        x[i] = rndf();
    ref(&m->w, r0, r1, x, ldx, n, y0, ldy);
    fast(&m->w, r0, r1, x, ldx, n, y1, ldy);
    for (int t = 0; t < n; t++)
        for (int64_t r = 0; r < ldy; r++) {
            float a = y0[t * ldy + r], b = y1[t * ldy + r];
            if (r < r0 || r >= r1) {
                assert_true(b == 0.0f);
                continue;
            }
            double mag = 0;
            for (int64_t c = 0; c < cols; c++)
                mag += fabs((double)m->wf[r * cols + c] * (double)x[t * ldx + c]);
            if (!(fabs((double)a - (double)b) <= 1e-5 * mag + 1e-300))
                fail_msg("%s vs ref %lldx%lld rows [%lld,%lld) n=%d t=%d r=%lld: %.9g vs %.9g",
                         what, (long long)m->w.rows, (long long)cols, (long long)r0,
                         (long long)r1, n, t, (long long)r, (double)b, (double)a);
        }
    free(x);
    free(y0);
    free(y1);
}

static void test_gemm_ref_vs_double(void **state)
{
    (void)state;
    moe_gemm_fn ref = moe_gemm_kernel(MOE_DTYPE_MXFP4, MOE_ISA_REF);
    static const int64_t cols_list[] = {32, 96, 256, 288, 2880};
    for (size_t ci = 0; ci < MOE_ARRAY_SIZE(cols_list); ci++) {
        struct test_mat m;
        mat_make(&m, 9, cols_list[ci], true, false);
        check_gemm(ref, "ref", &m, 0, 9, 3, cols_list[ci], 9, 1e-5, false);
        check_gemm(ref, "ref", &m, 2, 7, 2, cols_list[ci] + 3, 11, 1e-5, false);
        mat_free(&m);
        mat_make(&m, 5, cols_list[ci], false, true);
        check_gemm(ref, "ref exact", &m, 0, 5, 2, cols_list[ci], 5, 0, true);
        mat_free(&m);
    }
}

static const int test_ns[] = {1, 2, 3, 7, 16};

/* every fast kernel this CPU can run: random shapes, ragged row ranges,
 * strides, n = 1, 2, 3, 7, 16 */
static void test_gemm_fast_vs_ref(void **state)
{
    (void)state;
    static const int64_t cols_list[] = {32, 64, 96, 160, 1024, 1056, 2080, 2880};
    static const int64_t rows_list[] = {1, 2, 3, 5, 7, 13, 37, 70};
    int tested = 0;
    for (int isa = MOE_ISA_AVX2; isa < MOE_ISA_COUNT; isa++) {
        if (!cpu_has((enum moe_isa)isa))
            continue;
        moe_gemm_fn fast = moe_gemm_kernel(MOE_DTYPE_MXFP4, (enum moe_isa)isa);
        if (!fast)
            continue; /* a MOE_NO_SIMD build */
        tested++;
        const char *what = moe_isa_name((enum moe_isa)isa);
        for (size_t ci = 0; ci < MOE_ARRAY_SIZE(cols_list); ci++)
            for (size_t ri = 0; ri < MOE_ARRAY_SIZE(rows_list); ri++) {
                int64_t cols = cols_list[ci], rows = rows_list[ri];
                struct test_mat m;
                mat_make(&m, rows, cols, ri % 2 == 1, false);
                for (size_t ni = 0; ni < MOE_ARRAY_SIZE(test_ns); ni++) {
                    int n = test_ns[ni];
                    check_against_ref(fast, what, &m, 0, rows, n, cols, rows);
                    /* a ragged sub-range, strided */
                    int64_t r0 = (int64_t)(rnd32() % (uint32_t)rows);
                    int64_t r1 = r0 + 1 + (int64_t)(rnd32() % (uint32_t)(rows - r0));
                    check_against_ref(fast, what, &m, r0, r1, n, cols + 5, rows + 3);
                    check_gemm(fast, what, &m, r0, r1, n, cols + 1, rows + 2, 2e-5, false);
                }
                mat_free(&m);
                /* integers: every sum exact, so any order agrees exactly */
                mat_make(&m, rows, cols, false, true);
                check_gemm(fast, what, &m, 0, rows, 1, cols, rows, 0, true);
                check_gemm(fast, what, &m, 0, rows, 7, cols + 2, rows, 0, true);
                mat_free(&m);
            }
    }
    if (!tested)
        skip();
}

/* past the batched kernels' blocking: more columns than one pass (1024),
 * more rows than one panel, sub-ranges that start and end mid-panel, token
 * counts past the small-batch kernel (AVX-512: n > 16) */
static void test_gemm_fast_blocking(void **state)
{
    (void)state;
    int tested = 0;
    for (int isa = MOE_ISA_AVX2; isa < MOE_ISA_COUNT; isa++) {
        if (!cpu_has((enum moe_isa)isa))
            continue;
        moe_gemm_fn fast = moe_gemm_kernel(MOE_DTYPE_MXFP4, (enum moe_isa)isa);
        if (!fast)
            continue;
        tested++;
        const char *what = moe_isa_name((enum moe_isa)isa);
        struct test_mat m;
        mat_make(&m, 301, 2112, true, false);
        check_against_ref(fast, what, &m, 0, 301, 16, 2112, 301);
        check_against_ref(fast, what, &m, 5, 299, 7, 2112 + 16, 302);
        check_against_ref(fast, what, &m, 3, 301, 1, 2112, 301);
        check_against_ref(fast, what, &m, 31, 97, 2, 2113, 301);
        check_against_ref(fast, what, &m, 33, 34, 3, 2112, 301);
        check_against_ref(fast, what, &m, 2, 299, 24, 2112, 301); /* past the direct kernel */
        check_against_ref(fast, what, &m, 0, 301, 17, 2112 + 32, 303);
        mat_free(&m);
        mat_make(&m, 133, 2112, false, true);
        check_gemm(fast, what, &m, 1, 130, 9, 2112, 133, 0, true);
        mat_free(&m);
    }
    if (!tested)
        skip();
}

/* the kernels read only their rows' bytes: a matrix ending at a page end
 * must not fault */
static void test_gemm_no_overread(void **state)
{
    (void)state;
    long page = sysconf(_SC_PAGESIZE);
    for (int isa = MOE_ISA_REF; isa < MOE_ISA_COUNT; isa++) {
        if (!cpu_has((enum moe_isa)isa))
            continue;
        moe_gemm_fn fn = moe_gemm_kernel(MOE_DTYPE_MXFP4, (enum moe_isa)isa);
        if (!fn)
            continue;
        int64_t cols = 96, rows = 5;
        size_t rb = moe_dtype_row_bytes(MOE_DTYPE_MXFP4, cols), bytes = rb * (size_t)rows;
        uint8_t *mem = mmap(NULL, 2 * (size_t)page, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        assert_true(mem != MAP_FAILED);
        assert_int_equal(mprotect(mem + page, (size_t)page, PROT_NONE), 0);
        uint8_t *data = mem + page - bytes;
        memset(data, 0, bytes);
        for (int64_t r = 0; r < rows; r++) /* the last byte: row r's last weight is 1 */
            data[(size_t)(r + 1) * rb - 1] = 2 << 4;
        for (int64_t r = 0; r < rows; r++)
            data[(size_t)(r + 1) * rb - 17] = 127;
        struct moe_weight w = {.dtype = MOE_DTYPE_MXFP4, .rows = rows, .cols = cols,
                               .row_bytes = rb, .data = data};
        float x[3 * 96], y[3 * 5];
        for (size_t i = 0; i < MOE_ARRAY_SIZE(x); i++)
            x[i] = 1.0f;
        fn(&w, 0, rows, x, cols, 3, y, rows);
        for (int i = 0; i < 15; i++)
            assert_true(y[i] == 1.0f);
        fn(&w, 0, rows, x, cols, 1, y, rows);
        for (int i = 0; i < 5; i++)
            assert_true(y[i] == 1.0f);
        munmap(mem, 2 * (size_t)page);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traits),
        cmocka_unit_test(test_to_f32_known),
        cmocka_unit_test(test_from_f32_known),
        cmocka_unit_test(test_from_f32_matches_search),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_from_hf),
        cmocka_unit_test(test_gemm_ref_vs_double),
        cmocka_unit_test(test_gemm_fast_vs_ref),
        cmocka_unit_test(test_gemm_fast_blocking),
        cmocka_unit_test(test_gemm_no_overread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
