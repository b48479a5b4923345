/* The gated delta rule's two forms and the recurrent states in the KV pool:
 * the chunked (WY/UT) form against the recurrent one, and both against a
 * plain double-precision loop of the rule as transformers states it, in
 * the plain C build and each vectorised one; chunk boundaries anywhere give
 * the same outputs and state; the pool holds a
 * sequence's state in its units, counts it for admission, zeroes it on
 * restart, refuses to go back, and keeps bf16 states within bf16's error. */
#include "tests/unit/test.h"

#include <errno.h>

#include "common/common.h"
#include "kv/kv.h"
#include "model/model_gdn.h"

MOE_TEST_XORSHIFT(0x9e3779b97f4a7c15ull)

enum { DK = 16, DV = 24, N = 200 };

struct data {
    float q[N][DK], k[N][DK], v[N][DV], g[N], beta[N];
};

static void l2(float *x, int n, float scale)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    for (int i = 0; i < n; i++)
        x[i] = (float)(x[i] / sqrt(s + 1e-6)) * scale;
}

static void fill(struct data *d)
{
    for (int t = 0; t < N; t++) {
        for (int i = 0; i < DK; i++)
            d->q[t][i] = rndf(), d->k[t][i] = rndf();
        l2(d->q[t], DK, 1.0f / sqrtf(DK));
        l2(d->k[t], DK, 1.0f);
        for (int j = 0; j < DV; j++)
            d->v[t][j] = 2 * rndf();
        d->g[t] = -0.3f * (rndf() + 1.0f) - 0.01f; /* decay 0.55 .. 0.99 */
        d->beta[t] = 0.5f * (rndf() + 1.0f);
    }
}

/* S [DK][DV] as the row pointers the kernels take */
static struct moe_gdn_head head(struct data *d, int t0, int n, float *S, float **rows,
                                float *out)
{
    for (int a = 0; a < DK; a++)
        rows[a] = S + (size_t)a * DV;
    return (struct moe_gdn_head){.n = n, .dk = DK, .dv = DV, .q = d->q[t0], .k = d->k[t0],
                                 .v = d->v[t0], .g = d->g + t0, .beta = d->beta + t0,
                                 .qs = DK, .ks = DK, .vs = DV, .gs = 1, .os = DV, .S = rows,
                                 .out = out};
}

/* the rule token by token in double precision */
static void reference(const struct data *d, double S[DK][DV], double out[N][DV])
{
    memset(S, 0, sizeof(double) * DK * DV);
    for (int t = 0; t < N; t++) {
        double dec = exp(d->g[t]), kv[DV] = {0};
        for (int a = 0; a < DK; a++)
            for (int j = 0; j < DV; j++) {
                S[a][j] *= dec;
                kv[j] += S[a][j] * d->k[t][a];
            }
        for (int a = 0; a < DK; a++)
            for (int j = 0; j < DV; j++)
                S[a][j] += d->k[t][a] * d->beta[t] * (d->v[t][j] - kv[j]);
        for (int j = 0; j < DV; j++) {
            out[t][j] = 0;
            for (int a = 0; a < DK; a++)
                out[t][j] += S[a][j] * d->q[t][a];
        }
    }
}

static double rel_err(const float *x, const double *ref, size_t n)
{
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        worst = fmax(worst, fabs(x[i] - ref[i]));
        scale = fmax(scale, fabs(ref[i]));
    }
    return worst / scale;
}

/* the recurrent and chunked forms of one build (0 the plain C reference, 1
 * AVX2, 2 AVX-512, as far as this CPU has them) */
static void forms(int isa)
{
    static struct data d;
    static float S1[DK * DV], S2[DK * DV], o1[N][DV], o2[N][DV];
    static float *r1[DK], *r2[DK];
    static double Sr[DK][DV], orf[N][DV];
    if (moe_gdn_set_isa(isa) != isa)
        return; /* not on this CPU */
    rng = 0x9e3779b97f4a7c15ull;
    fill(&d);
    reference(&d, Sr, orf);
    float *work = malloc(moe_gdn_chunked_work(DK, DV) * sizeof(float));
    assert_non_null(work);
    struct moe_gdn_head h1 = head(&d, 0, N, S1, r1, o1[0]), h2 = head(&d, 0, N, S2, r2, o2[0]);
    memset(S1, 0, sizeof(S1));
    memset(S2, 0, sizeof(S2));
    moe_gdn_recurrent(&h1);
    moe_gdn_chunked(&h2, work); /* 200 tokens: three whole chunks and a ragged one */
    double e_rec = rel_err(o1[0], orf[0], (size_t)N * DV);
    double e_chk = rel_err(o2[0], orf[0], (size_t)N * DV);
    double e_state = rel_err(S2, Sr[0], DK * DV);
    double e_pair = 0, scale = 0;
    for (int t = 0; t < N; t++)
        for (int j = 0; j < DV; j++) {
            e_pair = fmax(e_pair, fabs(o1[t][j] - o2[t][j]));
            scale = fmax(scale, fabs(o1[t][j]));
        }
    printf("isa %d: recurrent %.2e, chunked %.2e, chunked state %.2e, chunked vs recurrent "
           "%.2e\n", isa, e_rec, e_chk, e_state, e_pair / scale);
    assert_true(e_rec < 1e-5 && e_chk < 1e-5 && e_state < 1e-5);
    assert_true(e_pair / scale < 1e-5); /* the bound */
    assert_true(e_pair > 0); /* two computations, not one */

    /* split anywhere (decode after a prefill, chunks of odd sizes): the same */
    memset(S2, 0, sizeof(S2));
    int cuts[] = {0, 1, 70, 71, 133, 199, N};
    for (size_t c = 0; c + 1 < MOE_ARRAY_SIZE(cuts); c++) {
        struct moe_gdn_head h = head(&d, cuts[c], cuts[c + 1] - cuts[c], S2, r2, o2[cuts[c]]);
        if (h.n > 1)
            moe_gdn_chunked(&h, work);
        else
            moe_gdn_recurrent(&h);
    }
    assert_true(rel_err(o2[0], orf[0], (size_t)N * DV) < 1e-5);
    assert_true(rel_err(S2, Sr[0], DK * DV) < 1e-5);
    free(work);
}

static void test_chunked_equals_recurrent(void **state)
{
    (void)state;
    for (int isa = 0; isa <= 2; isa++)
        forms(isa);
    moe_gdn_set_isa(-1);
}

/* a shape with two recurrent layers around one attention layer */
static const bool REC[3] = {true, false, true};

static struct moe_kv_shape shape(void)
{
    return (struct moe_kv_shape){.n_layers = 3, .n_kv_heads = 2, .k_dim = 16, .v_dim = 16,
                                 .recurrent = REC, .state_rows = 100, .state_row = 24};
}

static void test_states_in_the_pool(void **state)
{
    (void)state;
    struct moe_kv_shape sh = shape();
    struct moe_kv_params p = {16, 16, 32, 0, 32};
    /* a unit: 2 heads x 32 tokens x (16 + 16) fp16 = 4096 bytes: 42 rows of 96 */
    assert_int_equal(moe_kv_unit_bytes_for_params(&sh, &p), 4096);
    int64_t state_units = 2 * 3; /* 100 rows / 42 per unit, two layers */
    assert_int_equal(moe_kv_units_for_params(&sh, &p, 1), 1 + state_units);
    assert_int_equal(moe_kv_units_for_params(&sh, &p, 1000), 32 + state_units);
    assert_int_equal(moe_kv_units_for_tokens(&sh, &p, 1000, 4), 32 + 4 * state_units);

    struct moe_kv_pool *P;
    assert_int_equal(moe_kv_pool_create(&sh, &p, 8, &P), 0);
    assert_int_equal(moe_kv_pool_state_bytes(P), 6 * 4096);
    struct moe_kv *a, *b;
    assert_int_equal(moe_kv_seq_create(P, 64, &a), 0);
    assert_int_equal(moe_kv_seq_create(P, 64, &b), 0);
    assert_int_equal(moe_kv_state_begin(a, 1, 0), -EINVAL); /* an attention layer */
    float k[32] = {0};
    assert_int_equal(moe_kv_store(a, 0, 0, k, k), -EINVAL); /* a recurrent one */
    assert_int_equal(moe_kv_state_begin(a, 0, 0), 0);
    assert_int_equal(moe_kv_state_begin(a, 2, 0), 0);
    for (int r = 0; r < 100; r++) { /* rows are zero, distinct, and hold what is written */
        float *row = moe_kv_state_row(a, 2, r);
        for (int j = 0; j < 24; j++) {
            assert_true(row[j] == 0.0f);
            row[j] = (float)(r * 24 + j);
        }
    }
    for (int r = 0; r < 100; r++)
        assert_true(((float *)moe_kv_state_row(a, 2, r))[23] == (float)(r * 24 + 23));
    moe_kv_state_end(a, 2, 5);
    assert_int_equal(moe_kv_state_begin(a, 2, 3), -EINVAL); /* a state cannot go back */
    assert_int_equal(moe_kv_state_begin(a, 2, 5), 0);       /* it goes on */
    assert_true(((float *)moe_kv_state_row(a, 2, 7))[1] == (float)(7 * 24 + 1));
    /* b finds two units left of eight: its state does not fit, and a's is untouched */
    assert_int_equal(moe_kv_state_begin(b, 0, 0), -ENOSPC);
    assert_true(((float *)moe_kv_state_row(a, 2, 99))[0] == (float)(99 * 24));
    assert_int_equal(moe_kv_state_begin(a, 2, 0), 0); /* a restart zeroes it, in place */
    assert_true(((float *)moe_kv_state_row(a, 2, 99))[0] == 0.0f);
    moe_kv_free(a); /* and an ended sequence gives its states back */
    assert_int_equal(moe_kv_state_begin(b, 0, 0), 0);
    moe_kv_free(b);
    moe_kv_pool_free(P);
}

static void test_bf16_states(void **state)
{
    (void)state;
    struct moe_kv_shape sh = shape();
    struct moe_kv_params p32 = {16, 16, 32, 0, 32}, p16 = {16, 16, 32, 0, 16};
    /* half the bytes per row: 85 rows per unit, two units per layer */
    assert_int_equal(moe_kv_units_for_params(&sh, &p16, 1), 1 + 2 * 2);
    assert_int_equal(moe_kv_units_for_params(&sh, &p32, 1), 1 + 2 * 3);
    struct moe_kv *kv;
    assert_int_equal(moe_kv_create(&sh, &p16, 64, &kv), 0);
    assert_int_equal(moe_kv_state_bits(kv), 16);
    assert_int_equal(moe_kv_state_begin(kv, 0, 0), 0);
    uint16_t *row = moe_kv_state_row(kv, 0, 99);
    assert_int_equal(row[23], 0);
    moe_kv_free(kv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chunked_equals_recurrent),
        cmocka_unit_test(test_states_in_the_pool),
        cmocka_unit_test(test_bf16_states),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
