/* QMoE: levels and row grids, the dictionary (size, prefix closure,
 * determinism, bits per weight against ALGORITHMS.md), encode -> view ->
 * decode round trips, view() refusing corrupt matrices, and every fast
 * kernel against the reference on odd shapes, sub-ranges and strides. */
#include <errno.h>
#include <math.h>
#include <sys/mman.h>

#include "common/common.h"
#include "quant/quant.h"
#include "quant/quant_int.h"
#include "quant/quant_qmoe.h"
#include "tests/unit/test.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}
static double rndu(void) /* [0, 1) */
{
    return (double)rnd32() / 4294967296.0;
}
static float rndf(void) /* [-1, 1) */
{
    return (float)(2.0 * rndu() - 1.0);
}

/* the dispatcher's own answer (cpuid, F16C included) */
static bool cpu_has(enum moe_isa isa)
{
    return isa <= moe_isa_best();
}

/* one dictionary (P(0) = 0.885) for the whole test program */
static uint64_t *g_table;
static struct moe_qmoe_side *g_side;
static struct moe_qmoe_encoder *g_enc;

static int setup(void **state)
{
    (void)state;
    g_table = malloc((size_t)MOE_QMOE_DICT_SIZE * 8);
    if (!g_table)
        return -1;
    moe_qmoe_dict_build(MOE_QMOE_P_ZERO, g_table);
    void *side;
    if (moe_qmoe_side_create(g_table, (size_t)MOE_QMOE_DICT_SIZE * 8, &side) < 0)
        return -1;
    g_side = side;
    return moe_qmoe_encoder_create(g_table, &g_enc);
}

static int teardown(void **state)
{
    (void)state;
    moe_qmoe_encoder_free(g_enc);
    moe_qmoe_side_free(g_side);
    free(g_table);
    return 0;
}

static void rand_digits(uint8_t *d, int64_t n, double p0)
{
    for (int64_t i = 0; i < n; i++) {
        double u = rndu();
        d[i] = u < p0 ? 0 : u < p0 + (1 - p0) / 2 ? 1 : 2;
    }
}

/* an encoded, viewed matrix held in a buffer of exactly its size (ASan sees
 * any overread), with its digits and dequantised weights */
struct qm {
    void *buf;
    size_t nbytes;
    struct moe_weight w;
    uint8_t *digits, *levels;
    float scale;
    float *wf;
};

static void qm_make(struct qm *m, int64_t rows, int64_t cols, double p0)
{
    m->digits = malloc((size_t)(rows * cols));
    m->levels = malloc((size_t)rows * 2);
    m->wf = malloc(sizeof(float) * (size_t)(rows * cols));
    assert_non_null(m->digits);
    assert_non_null(m->levels);
    assert_non_null(m->wf);
    rand_digits(m->digits, rows * cols, p0);
    m->scale = 0.37f;
    for (int64_t r = 0; r < 2 * rows; r++)
        m->levels[r] = (uint8_t)(rnd32() % 7 == 0 ? 0 : 1 + rnd32() % 255);
    size_t cap = moe_qmoe_matrix_bound(rows, cols);
    uint8_t *tmp = malloc(cap);
    assert_non_null(tmp);
    m->nbytes = moe_qmoe_matrix_encode(g_enc, m->digits, m->levels, m->scale, rows, cols, tmp,
                                       cap);
    assert_true(m->nbytes > 0 && m->nbytes <= cap);
    m->buf = malloc(m->nbytes);
    memcpy(m->buf, tmp, m->nbytes);
    free(tmp);
    int rc = moe_qmoe_view(m->buf, m->nbytes, rows, cols, g_side, &m->w);
    if (rc < 0)
        fail_msg("view %lldx%lld: %s", (long long)rows, (long long)cols, moe_err_msg());
    for (int64_t r = 0; r < rows; r++) {
        float lo = -moe_qmoe_level_decode(m->scale, m->levels[2 * r]);
        float hi = moe_qmoe_level_decode(m->scale, m->levels[2 * r + 1]);
        for (int64_t c = 0; c < cols; c++) {
            uint8_t d = m->digits[r * cols + c];
            m->wf[r * cols + c] = d == 1 ? lo : d == 2 ? hi : 0.0f;
        }
    }
}

static void qm_free(struct qm *m)
{
    free(m->buf);
    free(m->digits);
    free(m->levels);
    free(m->wf);
}

/* ---- levels and grids ------------------------------------------------------ */

static void test_levels(void **state)
{
    (void)state;
    assert_true(moe_qmoe_level_decode(2.0f, 0) == 0.0f);
    assert_true(moe_qmoe_level_decode(2.0f, 255) == 2.0f);
    assert_true(moe_qmoe_level_decode(2.0f, 223) == 1.0f);
    assert_int_equal(moe_qmoe_level_encode(2.0f, 2.0f), 255);
    assert_int_equal(moe_qmoe_level_encode(2.0f, 1.0f), 223);
    assert_int_equal(moe_qmoe_level_encode(2.0f, 0.0f), 0);
    assert_int_equal(moe_qmoe_level_encode(2.0f, 1e-30f), 1); /* nonzero: never code 0 */
    assert_int_equal(moe_qmoe_level_encode(2.0f, 5.0f), 255);
    /* every code decodes and re-encodes to itself; encode is nearest */
    for (int c = 1; c < 256; c++) {
        float v = moe_qmoe_level_decode(0.5f, (uint8_t)c);
        assert_int_equal(moe_qmoe_level_encode(0.5f, v), c);
    }
    for (int i = 0; i < 1000; i++) {
        float mag = (float)(rndu() * 0.5 + 1e-4);
        uint8_t c = moe_qmoe_level_encode(0.5f, mag);
        double e = fabs(log2(mag) - log2(moe_qmoe_level_decode(0.5f, c)));
        for (int d = -1; d <= 1; d += 2)
            if (c + d >= 1 && c + d <= 255)
                assert_true(e <= fabs(log2(mag) - log2(moe_qmoe_level_decode(0.5f, (uint8_t)(c + d)))) + 1e-9);
    }

    float row[4] = {-1.0f, 0.25f, 0.5f, 0.0f}, lo, hi;
    uint8_t code[2];
    assert_true(moe_qmoe_matrix_scale(row, 1, 4) == 1.0f);
    moe_qmoe_row_grid(row, 4, 1.0f, code, &lo, &hi);
    assert_int_equal(code[0], 255);
    assert_int_equal(code[1], 223);
    assert_true(lo == -1.0f && hi == 0.5f);
    assert_int_equal(moe_qmoe_round(-0.6f, lo, hi), 1);
    assert_int_equal(moe_qmoe_round(-0.4f, lo, hi), 0);
    assert_int_equal(moe_qmoe_round(0.3f, lo, hi), 2);
    assert_int_equal(moe_qmoe_round(0.2f, lo, hi), 0);
    float pos[3] = {0.5f, 0.0f, 1.0f}; /* no negatives: lo = 0 */
    moe_qmoe_row_grid(pos, 3, 1.0f, code, &lo, &hi);
    assert_int_equal(code[0], 0);
    assert_true(lo == 0.0f && hi == 1.0f);
    float zeros[5] = {0};
    moe_qmoe_row_grid(zeros, 5, 1.0f, code, &lo, &hi);
    assert_int_equal(code[0], 0);
    assert_int_equal(code[1], 0);
    assert_true(lo == 0.0f && hi == 0.0f);
    for (int i = 0; i < 5; i++)
        assert_int_equal(moe_qmoe_round(zeros[i], lo, hi), 0);
}

/* ---- dictionary ------------------------------------------------------------ */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_dict_properties(void **state)
{
    (void)state;
    assert_int_equal(moe_qmoe_dict_check(g_table), 0);
    uint64_t *again = malloc((size_t)MOE_QMOE_DICT_SIZE * 8);
    moe_qmoe_dict_build(MOE_QMOE_P_ZERO, again);
    assert_memory_equal(g_table, again, (size_t)MOE_QMOE_DICT_SIZE * 8); /* deterministic */

    qsort(again, MOE_QMOE_DICT_SIZE, 8, cmp_u64);
    int singles = 0, max_len = 0;
    for (int i = 0; i < MOE_QMOE_DICT_SIZE; i++) {
        uint64_t e = again[i];
        int cnt = (int)(e & 15);
        if (i)
            assert_true(again[i - 1] != e); /* 65536 distinct entries */
        max_len = MOE_MAX(max_len, cnt);
        if (cnt == 1) {
            singles++;
            continue;
        }
        /* prefix-closed: the entry less its last pair is an entry */
        uint64_t pre = (e & ((1ull << (4 + 4 * (cnt - 1))) - 1) & ~15ull) | (uint64_t)(cnt - 1);
        assert_non_null(bsearch(&pre, again, MOE_QMOE_DICT_SIZE, 8, cmp_u64));
    }
    assert_int_equal(singles, 9);
    assert_int_equal(max_len, MOE_QMOE_MAX_PAIRS);

    /* check refuses broken tables */
    memcpy(again, g_table, (size_t)MOE_QMOE_DICT_SIZE * 8);
    again[100] = (again[100] & ~15ull) | 15; /* 15 pairs */
    assert_int_equal(moe_qmoe_dict_check(again), -EINVAL);
    memcpy(again, g_table, (size_t)MOE_QMOE_DICT_SIZE * 8);
    again[200] |= 3ull << 4; /* digit 3 */
    assert_int_equal(moe_qmoe_dict_check(again), -EINVAL);
    memcpy(again, g_table, (size_t)MOE_QMOE_DICT_SIZE * 8);
    for (int i = 0; i < MOE_QMOE_DICT_SIZE; i++)
        if (again[i] == (1 | 2ull << 4 | 2ull << 6)) /* the single pair (2,2) */
            again[i] = again[(i + 1) % MOE_QMOE_DICT_SIZE];
    assert_int_equal(moe_qmoe_dict_check(again), -EINVAL);
    void *side = NULL;
    assert_int_equal(moe_qmoe_side_create(again, (size_t)MOE_QMOE_DICT_SIZE * 8, &side), -EINVAL);
    assert_null(side);
    assert_non_null(strstr(moe_err_msg(), "single pair"));
    assert_int_equal(moe_qmoe_side_create(g_table, 1000, &side), -EINVAL);
    struct moe_qmoe_encoder *e = NULL;
    assert_int_equal(moe_qmoe_encoder_create(again, &e), -EINVAL);
    assert_null(e);
    free(again);
}

/* the code's cost on long iid rows, against ALGORITHMS.md's figures for the
 * 0.885 dictionary */
static void test_dict_bits_per_weight(void **state)
{
    (void)state;
    static const double p0[] = {0.80, 0.85, 0.885, 0.90, 0.95};
    static const double want[] = {1.120, 0.870, 0.737, 0.689, 0.590};
    int64_t rows = 16, cols = 32768;
    uint8_t *d = malloc((size_t)(rows * cols));
    uint8_t *lev = calloc((size_t)rows, 2);
    size_t cap = moe_qmoe_matrix_bound(rows, cols);
    uint8_t *out = malloc(cap);
    for (size_t i = 0; i < MOE_ARRAY_SIZE(p0); i++) {
        rand_digits(d, rows * cols, p0[i]);
        size_t nb = moe_qmoe_matrix_encode(g_enc, d, lev, 1.0f, rows, cols, out, cap);
        assert_true(nb > 0);
        uint32_t nc;
        memcpy(&nc, out + 4, 4);
        double bits = 16.0 * nc / (double)(rows * cols);
        if (fabs(bits - want[i]) > 0.02 * want[i])
            fail_msg("P(0)=%.3f: %.4f bits/weight, ALGORITHMS.md says %.3f", p0[i], bits,
                     want[i]);
    }
    free(d);
    free(lev);
    free(out);
}

/* ---- round trip ------------------------------------------------------------- */

static void test_roundtrip(void **state)
{
    (void)state;
    static const int64_t shapes[][2] = {{1, 1}, {1, 2}, {3, 27}, {16, 29}, {17, 255},
                                        {33, 257}, {5, 1023}, {40, 64}, {2, 28}, {7, 3}};
    static const double p0s[] = {0.0, 0.5, 0.85, 0.99, 1.0};
    for (size_t s = 0; s < MOE_ARRAY_SIZE(shapes); s++)
        for (size_t pi = 0; pi < MOE_ARRAY_SIZE(p0s); pi++) {
            int64_t rows = shapes[s][0], cols = shapes[s][1];
            struct qm m;
            qm_make(&m, rows, cols, p0s[pi]);
            assert_int_equal(m.w.dtype, MOE_DTYPE_QMOE);
            assert_int_equal(m.w.rows, rows);
            assert_int_equal(m.w.cols, cols);
            assert_int_equal(m.w.nbytes, m.nbytes);
            assert_int_equal(m.w.row_bytes, m.nbytes / (size_t)rows);
            assert_ptr_equal(m.w.aux, g_side);
            assert_int_equal(moe_weight_bytes(&m.w), m.nbytes);
            float *back = malloc(sizeof(float) * (size_t)(rows * cols));
            moe_qmoe_matrix_to_f32(&m.w, back);
            assert_memory_equal(back, m.wf, sizeof(float) * (size_t)(rows * cols));
            int64_t zeros = 0;
            for (int64_t i = 0; i < rows * cols; i++)
                zeros += m.digits[i] == 0;
            assert_int_equal(moe_qmoe_matrix_zeros(&m.w), zeros);
            free(back);
            qm_free(&m);
        }
    /* a too-small buffer and a bad digit are refused */
    uint8_t d[8] = {0, 1, 2, 0, 1, 2, 1, 1}, lev[2] = {1, 1}, out[64];
    assert_int_equal(moe_qmoe_matrix_encode(g_enc, d, lev, 1.0f, 1, 8, out, 20), 0);
    d[3] = 3;
    assert_int_equal(moe_qmoe_matrix_encode(g_enc, d, lev, 1.0f, 1, 8, out, sizeof(out)), 0);
}

static void test_traits(void **state)
{
    (void)state;
    const struct moe_dtype_traits *t = moe_dtype_traits(MOE_DTYPE_QMOE);
    assert_non_null(t);
    assert_string_equal(t->name, "qmoe");
    assert_string_equal(moe_dtype_name(MOE_DTYPE_QMOE), "qmoe");
    assert_string_equal(t->side_name, "qmoe.decode_table");
    assert_null(t->to_f32);
    assert_null(t->from_f32);
    assert_int_equal(moe_dtype_row_bytes(MOE_DTYPE_QMOE, 64), 0); /* no fixed rows */
    void *side = NULL;
    assert_int_equal(t->side_create(g_table, (size_t)MOE_QMOE_DICT_SIZE * 8, &side), 0);
    assert_memory_equal(side, g_side, sizeof(struct moe_qmoe_side));
    struct qm m;
    qm_make(&m, 20, 45, 0.85);
    struct moe_weight w;
    assert_int_equal(t->view(m.buf, m.nbytes, 20, 45, side, &w), 0);
    assert_int_equal(w.dtype, MOE_DTYPE_QMOE);
    assert_true(w.rows == 20 && w.cols == 45 && w.data == m.buf && w.nbytes == m.nbytes);
    assert_ptr_equal(w.aux, side);
    t->side_free(side);
    t->side_free(NULL);
    qm_free(&m);
    assert_non_null(moe_gemm_kernel(MOE_DTYPE_QMOE, MOE_ISA_REF));
}

/* ---- view refuses corrupt matrices -------------------------------------------- */

static void expect_bad(const void *data, size_t nbytes, int64_t rows, int64_t cols,
                       const char *what, const char *msg_part)
{
    /* exact-size copy: any overread is ASan's */
    void *copy = malloc(nbytes ? nbytes : 1);
    memcpy(copy, data, nbytes);
    struct moe_weight w = {0};
    moe_err_clear();
    int rc = moe_qmoe_view(copy, nbytes, rows, cols, g_side, &w);
    if (rc != -EINVAL)
        fail_msg("%s: view returned %d", what, rc);
    if (msg_part && !strstr(moe_err_msg(), msg_part))
        fail_msg("%s: message '%s' lacks '%s'", what, moe_err_msg(), msg_part);
    assert_int_equal(w.dtype, 0);
    free(copy);
}

/* index of a codeword of `pairs` pairs whose digits are all 0 */
static uint16_t zero_code(int pairs)
{
    for (int i = 0; i < MOE_QMOE_DICT_SIZE; i++)
        if (g_table[i] == (uint64_t)pairs)
            return (uint16_t)i;
    fail_msg("no all-zero codeword of %d pairs", pairs);
    return 0;
}

static void test_view_corrupt(void **state)
{
    (void)state;
    int64_t rows = 37, cols = 29;
    struct qm m;
    qm_make(&m, rows, cols, 0.85);
    uint8_t *b = malloc(m.nbytes + 64);
    size_t code_off = moe_qmoe_code_offset(rows);
    size_t bs_off = 12;
    uint32_t nc;
    memcpy(&nc, (uint8_t *)m.buf + 4, 4);

#define FRESH() memcpy(b, m.buf, m.nbytes)
    FRESH();
    b[0] ^= 1;
    expect_bad(b, m.nbytes, rows, cols, "magic", "magic");
    FRESH();
    uint32_t v = nc + 1;
    memcpy(b + 4, &v, 4);
    expect_bad(b, m.nbytes, rows, cols, "n_codes + 1", NULL);
    v = nc - 1;
    memcpy(b + 4, &v, 4);
    expect_bad(b, m.nbytes, rows, cols, "n_codes - 1", NULL);
    v = 0xffffffffu;
    memcpy(b + 4, &v, 4);
    expect_bad(b, m.nbytes, rows, cols, "n_codes huge", NULL);
    FRESH();
    float nan = NAN;
    memcpy(b + 8, &nan, 4);
    expect_bad(b, m.nbytes, rows, cols, "scale NaN", "scale");
    /* block_start: out of order, past n_codes, not where the block starts */
    FRESH();
    v = nc + 5;
    memcpy(b + bs_off + 4, &v, 4);
    expect_bad(b, m.nbytes, rows, cols, "block_start past n_codes", "block_start");
    FRESH();
    memcpy(&v, b + bs_off + 8, 4);
    v++;
    memcpy(b + bs_off + 4, &v, 4);
    expect_bad(b, m.nbytes, rows, cols, "block_start out of order", "block_start");
    FRESH();
    memcpy(&v, b + bs_off + 4, 4);
    v--;
    memcpy(b + bs_off + 4, &v, 4);
    expect_bad(b, m.nbytes, rows, cols, "block_start off by one", "block_start");
    FRESH();
    v = 1;
    memcpy(b + bs_off, &v, 4);
    expect_bad(b, m.nbytes, rows, cols, "block_start[0] != 0", "block_start");
    /* sizes */
    FRESH();
    for (size_t cut = 1; cut < 40; cut += 3)
        expect_bad(b, m.nbytes - cut, rows, cols, "truncated", NULL);
    expect_bad(b, m.nbytes + 2, rows, cols, "trailing bytes", NULL);
    expect_bad(b, 8, rows, cols, "header only", NULL);
    expect_bad(b, 0, rows, cols, "empty", NULL);
    expect_bad(b, m.nbytes, rows + 1, cols, "wrong rows", NULL);
    expect_bad(b, m.nbytes, rows, cols + 2, "wrong cols", NULL);
    expect_bad(b, m.nbytes, 0, cols, "zero rows", NULL);
    expect_bad(b, m.nbytes, rows, -1, "negative cols", NULL);
    /* a codeword overrunning the row end: row 0's last codeword replaced by
     * a 14-pair one (the row has 15 pairs) */
    FRESH();
    {
        const uint16_t *code = (const uint16_t *)(b + code_off);
        int64_t p = 0;
        uint32_t j = 0;
        while (p + MOE_QMOE_SIDE_COUNT(g_side->e[code[j]][0]) < (cols + 1) / 2)
            p += MOE_QMOE_SIDE_COUNT(g_side->e[code[j++]][0]);
        uint16_t z = zero_code(MOE_QMOE_MAX_PAIRS);
        memcpy(b + code_off + 2 * j, &z, 2);
        expect_bad(b, m.nbytes, rows, cols, "codeword past row end", "crosses the row end");
    }
    /* every codeword replaced by a long one: rows overrun, counts run out */
    FRESH();
    {
        uint16_t z = zero_code(MOE_QMOE_MAX_PAIRS);
        for (uint32_t j = 0; j < nc; j++)
            memcpy(b + code_off + 2 * j, &z, 2);
        expect_bad(b, m.nbytes, rows, cols, "all long codewords", NULL);
        /* every codeword one pair: the rows run out of codewords */
        z = zero_code(1);
        for (uint32_t j = 0; j < nc; j++)
            memcpy(b + code_off + 2 * j, &z, 2);
        expect_bad(b, m.nbytes, rows, cols, "all single codewords", NULL);
    }
    /* an odd width whose padding digit is set: row of 1 column coded by the
     * single pair (0, 1) */
    {
        uint8_t d[1] = {0}, lev[2] = {1, 1}, out[64];
        size_t n1 = moe_qmoe_matrix_encode(g_enc, d, lev, 1.0f, 1, 1, out, sizeof(out));
        assert_true(n1 > 0);
        uint16_t c = 0;
        for (int i = 0; i < MOE_QMOE_DICT_SIZE; i++)
            if (g_table[i] == (1 | 1ull << 6))
                c = (uint16_t)i;
        memcpy(out + moe_qmoe_code_offset(1), &c, 2);
        expect_bad(out, n1, 1, 1, "padding digit", "padding");
    }
    /* no side table, misaligned data */
    struct moe_weight w;
    assert_int_equal(moe_qmoe_view(m.buf, m.nbytes, rows, cols, NULL, &w), -EINVAL);
    memcpy(b + 1, m.buf, m.nbytes);
    assert_int_equal(moe_qmoe_view(b + 1, m.nbytes, rows, cols, g_side, &w), -EINVAL);
    /* random byte flips: never a crash, and a flip the view accepts still
     * decodes (ASan checks the decode stays inside) */
    for (int it = 0; it < 2000; it++) {
        FRESH();
        int flips = 1 + (int)(rnd32() % 3);
        for (int f = 0; f < flips; f++)
            b[rnd32() % m.nbytes] ^= (uint8_t)(1u << (rnd32() % 8));
        void *copy = malloc(m.nbytes);
        memcpy(copy, b, m.nbytes);
        if (moe_qmoe_view(copy, m.nbytes, rows, cols, g_side, &w) == 0) {
            float *out = malloc(sizeof(float) * (size_t)(rows * cols));
            moe_qmoe_matrix_to_f32(&w, out);
            free(out);
        }
        free(copy);
    }
#undef FRESH
    free(b);
    qm_free(&m);
}

/* ---- kernels ------------------------------------------------------------------- */

/* fast (or ref) against ref, and ref against a double sum over wf; outputs
 * outside [r0, r1) must stay untouched */
static void check_kernel(moe_gemm_fn fn, const char *what, const struct qm *m, int64_t r0,
                         int64_t r1, int n, int64_t ldx, int64_t ldy)
{
    int64_t rows = m->w.rows, cols = m->w.cols;
    moe_gemm_fn ref = moe_quant_gemm_qmoe_ref;
    /* x exactly ldx * n floats: the last token's tail is the buffer's end */
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
                double p = (double)m->wf[r * cols + c] * (double)x[t * ldx + c];
                want += p;
                mag += fabs(p);
            }
            double tol = 1e-5 * mag + 1e-30;
            if (!(fabs((double)a - want) <= tol))
                fail_msg("ref %lldx%lld n=%d t=%d r=%lld: %.9g, double sum %.9g",
                         (long long)rows, (long long)cols, n, t, (long long)r, (double)a, want);
            if (!(fabs((double)a - (double)b) <= tol))
                fail_msg("%s vs ref %lldx%lld [%lld,%lld) n=%d ldx=%lld t=%d r=%lld: %.9g vs "
                         "%.9g", what, (long long)rows, (long long)cols, (long long)r0,
                         (long long)r1, n, (long long)ldx, t, (long long)r, (double)b,
                         (double)a);
        }
    free(x);
    free(y0);
    free(y1);
}

static void run_kernel_suite(enum moe_isa isa)
{
    moe_gemm_fn fn = moe_gemm_kernel(MOE_DTYPE_QMOE, isa);
    if (!fn)
        skip(); /* a MOE_NO_SIMD build */
    const char *what = moe_isa_name(isa);
    static const int64_t cols_list[] = {1, 2, 3, 27, 28, 29, 31, 32, 33, 255, 257, 1023};
    static const int64_t rows_list[] = {1, 5, 16, 37, 53};
    static const double p0s[] = {0.5, 0.85, 0.99};
    static const int ns[] = {1, 2, 5, 16, 33};
    for (size_t ci = 0; ci < MOE_ARRAY_SIZE(cols_list); ci++)
        for (size_t ri = 0; ri < MOE_ARRAY_SIZE(rows_list); ri++)
            for (size_t pi = 0; pi < MOE_ARRAY_SIZE(p0s); pi++) {
                int64_t rows = rows_list[ri], cols = cols_list[ci];
                struct qm m;
                qm_make(&m, rows, cols, p0s[pi]);
                for (size_t ni = 0; ni < MOE_ARRAY_SIZE(ns); ni++) {
                    int n = ns[ni];
                    if (n > 5 && cols > 300 && rows > 16)
                        continue; /* keep the test quick */
                    check_kernel(fn, what, &m, 0, rows, n, cols, rows);
                    check_kernel(fn, what, &m, 0, rows, n, cols + 7, rows + 3);
                    /* ranges as moe_matmul cuts them: 16-row chunks */
                    for (int64_t r0 = 16; r0 < rows; r0 += 16)
                        check_kernel(fn, what, &m, r0, MOE_MIN(rows, r0 + 16), n, cols + 1,
                                     rows + 2);
                    if (rows > 20)
                        check_kernel(fn, what, &m, 16, rows, n, cols, rows);
                    /* an unaligned start (row skipping inside a block) */
                    if (rows > 3)
                        check_kernel(fn, what, &m, 3, rows - 1, n, cols + 3, rows);
                }
                qm_free(&m);
            }
}

static void test_kernel_ref(void **state)
{
    (void)state;
    run_kernel_suite(MOE_ISA_REF);
}

static void test_kernel_avx2(void **state)
{
    (void)state;
    if (!cpu_has(MOE_ISA_AVX2))
        skip();
    run_kernel_suite(MOE_ISA_AVX2);
}

static void test_kernel_avx512(void **state)
{
    (void)state;
    if (!cpu_has(MOE_ISA_AVX512))
        skip();
    run_kernel_suite(MOE_ISA_AVX512);
}

/* x ending right before an inaccessible page: no kernel reads past cols */
static void test_kernel_no_overread(void **state)
{
    (void)state;
    long page = sysconf(_SC_PAGESIZE);
    static const int64_t cols_list[] = {1, 3, 29, 33, 257};
    for (int isa = MOE_ISA_REF; isa < MOE_ISA_COUNT; isa++) {
        moe_gemm_fn fn = moe_gemm_kernel(MOE_DTYPE_QMOE, (enum moe_isa)isa);
        if (!cpu_has((enum moe_isa)isa) || !fn)
            continue;
        for (size_t ci = 0; ci < MOE_ARRAY_SIZE(cols_list); ci++) {
            int64_t cols = cols_list[ci], rows = 19;
            struct qm m;
            qm_make(&m, rows, cols, 0.3); /* dense: codewords reach the row end */
            for (int n = 1; n <= 3; n += 2) {
                size_t xb = sizeof(float) * (size_t)(cols * n);
                uint8_t *mem = mmap(NULL, 3 * (size_t)page, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                assert_true(mem != MAP_FAILED);
                assert_int_equal(mprotect(mem + 2 * page, (size_t)page, PROT_NONE), 0);
                float *x = (float *)(mem + 2 * page - xb);
                for (int64_t i = 0; i < cols * n; i++)
                    x[i] = 1.0f;
                float y[3 * 19], y0[3 * 19];
                fn(&m.w, 0, rows, x, cols, n, y, rows);
                moe_quant_gemm_qmoe_ref(&m.w, 0, rows, x, cols, n, y0, rows);
                for (int i = 0; i < n * rows; i++)
                    assert_true(fabsf(y[i] - y0[i]) <= 1e-5f * (1.0f + fabsf(y0[i])) * (float)cols);
                munmap(mem, 3 * (size_t)page);
            }
            qm_free(&m);
        }
    }
}

/* a matrix wide and tall enough for the kernels' tiles and many blocks,
 * through moe_matmul's own chunking is covered by backend tests; here the
 * direct call on 16-row chunks of a wide matrix */
static void test_kernel_wide(void **state)
{
    (void)state;
    struct qm m;
    qm_make(&m, 70, 2093, 0.85);
    for (int isa = MOE_ISA_REF; isa < MOE_ISA_COUNT; isa++) {
        moe_gemm_fn fn = moe_gemm_kernel(MOE_DTYPE_QMOE, (enum moe_isa)isa);
        if (!cpu_has((enum moe_isa)isa) || !fn)
            continue;
        const char *what = moe_isa_name((enum moe_isa)isa);
        check_kernel(fn, what, &m, 0, 70, 1, 2093, 70);
        check_kernel(fn, what, &m, 32, 48, 9, 2100, 71);
        check_kernel(fn, what, &m, 64, 70, 17, 2093, 70);
    }
    qm_free(&m);
    /* rows wider than the AVX-512 kernel's 4096-column segments: decoding
     * resumes mid-row, a codeword carried across a segment boundary */
    qm_make(&m, 70, 9001, 0.85);
    for (int isa = MOE_ISA_REF; isa < MOE_ISA_COUNT; isa++) {
        moe_gemm_fn fn = moe_gemm_kernel(MOE_DTYPE_QMOE, (enum moe_isa)isa);
        if (!cpu_has((enum moe_isa)isa) || !fn)
            continue;
        const char *what = moe_isa_name((enum moe_isa)isa);
        check_kernel(fn, what, &m, 0, 70, 1, 9001, 70);
        check_kernel(fn, what, &m, 19, 53, 3, 9004, 70);
    }
    qm_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_levels),
        cmocka_unit_test(test_dict_properties),
        cmocka_unit_test(test_dict_bits_per_weight),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_traits),
        cmocka_unit_test(test_view_corrupt),
        cmocka_unit_test(test_kernel_ref),
        cmocka_unit_test(test_kernel_avx2),
        cmocka_unit_test(test_kernel_avx512),
        cmocka_unit_test(test_kernel_no_overread),
        cmocka_unit_test(test_kernel_wide),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
