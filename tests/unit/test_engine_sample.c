/* Sampler: greedy, top-k, top-p, min-p, penalties, seeding, the drawn
 * distribution, parameter checks. */
#include "tests/unit/test.h"

#include "common/common.h"
#include "engine/engine.h"

#include <errno.h>
#include <math.h>

/* ---- helpers ------------------------------------------------------------- */

static struct moe_sampler *mk(const struct moe_sampling *s, int32_t vocab)
{
    struct moe_sampler *smp = NULL;
    int rc = moe_sampler_create(s, vocab, &smp);
    if (rc)
        fail_msg("moe_sampler_create: %s", moe_err_msg());
    return smp;
}

/* deterministic test data, independent of the sampler's own generator */
static uint64_t lcg_state;
static double lcg_uniform(void)
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg_state >> 11) * 0x1.0p-53;
}

static double lcg_normal(void)
{
    double u1 = lcg_uniform(), u2 = lcg_uniform();
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

static void random_logits(float *l, int32_t n, double sd, uint64_t seed)
{
    lcg_state = seed;
    for (int32_t i = 0; i < n; i++)
        l[i] = (float)(lcg_normal() * sd);
}

/* samples with a fresh copy of logits each time (the sampler scribbles) */
static int32_t draw(struct moe_sampler *smp, const float *logits, float *scratch, int32_t n)
{
    memcpy(scratch, logits, (size_t)n * sizeof(*scratch));
    int32_t t = moe_sampler_sample(smp, scratch, NULL, 0);
    assert_true(t >= 0 && t < n);
    return t;
}

static int32_t ref_argmax(const float *l, int32_t n)
{
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[b])
            b = i;
    return b;
}

/* ---- greedy ---------------------------------------------------------------- */

static void test_greedy_max_and_ties(void **state)
{
    struct moe_sampling s;
    moe_sampling_defaults(&s);
    s.temperature = 0.0f;
    struct moe_sampler *smp = mk(&s, 8);

    float a[8] = {0.1f, -3.0f, 2.5f, 2.0f, NAN, -INFINITY, 1.0f, 2.4f};
    assert_int_equal(moe_sampler_sample(smp, a, NULL, 0), 2);

    float b[8] = {1.0f, 5.0f, 3.0f, 5.0f, 5.0f, 0.0f, 4.0f, 5.0f};
    assert_int_equal(moe_sampler_sample(smp, b, NULL, 0), 1); /* lowest id of the tie */

    float c[8] = {-1.0f, -1.0f, -1.0f, -1.0f, -1.0f, -1.0f, -1.0f, -1.0f};
    assert_int_equal(moe_sampler_sample(smp, c, NULL, 0), 0);

    float d[8] = {-INFINITY, NAN, -INFINITY, -INFINITY, NAN, -INFINITY, -INFINITY, -INFINITY};
    assert_true(moe_sampler_sample(smp, d, NULL, 0) < 0);
    moe_sampler_free(smp);

    /* every vocabulary size up to 40, ties placed anywhere (vector lanes,
     * the scalar tail) */
    float l[40], scratch[40];
    for (int32_t v = 1; v <= 40; v++) {
        smp = mk(&s, v);
        for (int rep = 0; rep < 20; rep++) {
            random_logits(l, v, 1.0, (uint64_t)(v * 100 + rep));
            for (int32_t i = 0; i < v; i++)
                l[i] = roundf(l[i] * 2.0f); /* coarse: many ties */
            assert_int_equal(draw(smp, l, scratch, v), ref_argmax(l, v));
        }
        moe_sampler_free(smp);
    }
}

static void test_top_k1_is_greedy(void **state)
{
    enum { V = 1000 };
    static float logits[V], scratch[V];
    const float temps[] = {0.05f, 1.0f, 7.0f, 1000.0f};
    for (size_t ti = 0; ti < MOE_ARRAY_SIZE(temps); ti++) {
        struct moe_sampling s;
        moe_sampling_defaults(&s);
        s.temperature = temps[ti];
        s.top_k = 1;
        s.seed = 42 + ti;
        struct moe_sampler *smp = mk(&s, V);
        for (int rep = 0; rep < 50; rep++) {
            random_logits(logits, V, 2.0, 1000 + (uint64_t)rep);
            assert_int_equal(draw(smp, logits, scratch, V), ref_argmax(logits, V));
        }
        moe_sampler_free(smp);
    }
}

static void test_top_k_ties_lowest_ids(void **state)
{
    struct moe_sampling s;
    moe_sampling_defaults(&s);
    s.temperature = 100.0f;
    s.top_k = 2;
    struct moe_sampler *smp = mk(&s, 6);
    const float l[6] = {0.0f, 1.0f, 1.0f, NAN, 1.0f, 1.0f};
    float scratch[6];
    int seen[6] = {0};
    for (int i = 0; i < 2000; i++)
        seen[draw(smp, l, scratch, 6)]++;
    assert_true(seen[1] > 0 && seen[2] > 0);
    assert_int_equal(seen[0] + seen[3] + seen[4] + seen[5], 0);
    moe_sampler_free(smp);
}

/* ---- top-p --------------------------------------------------------------------- */

static void test_top_p_small_is_argmax(void **state)
{
    enum { V = 5000 };
    static float logits[V], scratch[V];
    const int top_ks[] = {0, 50};
    for (size_t k = 0; k < MOE_ARRAY_SIZE(top_ks); k++) {
        struct moe_sampling s;
        moe_sampling_defaults(&s);
        s.temperature = 3.0f;
        s.top_p = 1e-6f;
        s.top_k = top_ks[k];
        struct moe_sampler *smp = mk(&s, V);
        for (int rep = 0; rep < 30; rep++) {
            random_logits(logits, V, 1.0, 77 + (uint64_t)rep);
            assert_int_equal(draw(smp, logits, scratch, V), ref_argmax(logits, V));
        }
        moe_sampler_free(smp);
    }
}

struct ranked {
    float l;
    int32_t id;
};

static int cmp_ranked(const void *a, const void *b)
{
    const struct ranked *x = a, *y = b;
    if (x->l != y->l)
        return x->l > y->l ? -1 : 1;
    return x->id < y->id ? -1 : 1;
}

/* Reference nucleus by full sort, after top-k (0 = off): marks in[] and
 * returns its size, or -1 when the cut is too close to call in floating
 * point. */
static int32_t ref_nucleus(const float *l, int32_t n, double p, int top_k, bool *in)
{
    struct ranked *r = malloc((size_t)n * sizeof(*r));
    assert_non_null(r);
    for (int32_t i = 0; i < n; i++)
        r[i] = (struct ranked){l[i] == l[i] ? l[i] : -INFINITY, i}; /* NaN: -inf */
    qsort(r, (size_t)n, sizeof(*r), cmp_ranked);
    memset(in, 0, (size_t)n * sizeof(*in));
    if (top_k > 0 && top_k < n)
        n = top_k;
    double z = 0.0;
    for (int32_t i = 0; i < n; i++)
        z += exp((double)r[i].l - r[0].l);
    double acc = 0.0, target = p * z;
    int32_t k = 0;
    while (k < n && (k == 0 || acc < target)) {
        in[r[k].id] = true;
        acc += exp((double)r[k].l - r[0].l);
        k++;
    }
    double prev = acc - exp((double)r[k - 1].l - r[0].l);
    bool close = fabs(prev - target) < 1e-5 * z || fabs(acc - target) < 1e-5 * z;
    free(r);
    return close ? -1 : k;
}

/* The drawn support must be exactly the nucleus: at a high temperature every
 * member is drawn often, and nothing else may be drawn at all. */
static bool check_nucleus(const float *logits, int32_t V, float p, int top_k, uint64_t seed)
{
    bool ran = false;
    bool *in = malloc((size_t)V * sizeof(*in));
    int *hits = calloc((size_t)V, sizeof(*hits));
    float *scratch = malloc((size_t)V * sizeof(*scratch));
    assert_true(in && hits && scratch);
    int32_t k = ref_nucleus(logits, V, p, top_k, in);
    if (k < 0 || k > 400) /* too close to call, or too big to cover */
        goto out;

    struct moe_sampling s;
    moe_sampling_defaults(&s);
    s.temperature = 1e4f; /* nearly uniform over what survives */
    s.top_p = p;
    s.top_k = top_k;
    s.seed = seed;
    struct moe_sampler *smp = mk(&s, V);
    int n_draws = 25 * k + 100; /* each member missed with p ~ e^-25 */
    for (int i = 0; i < n_draws; i++)
        hits[draw(smp, logits, scratch, V)]++;
    for (int32_t i = 0; i < V; i++) {
        if (in[i] != (hits[i] > 0))
            fail_msg("p=%g top_k=%d: token %d (logit %g) in nucleus %d, drawn %d times",
                     (double)p, top_k, (int)i, (double)logits[i], in[i], hits[i]);
    }
    moe_sampler_free(smp);
    ran = true;
out:
    free(in);
    free(hits);
    free(scratch);
    return ran;
}

static void test_top_p_exact_set(void **state)
{
    /* probabilities 0.5, 0.3, 0.15, 0.05: p = 0.75 keeps {0, 1}; 0.85 adds 2 */
    const float l[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    assert_true(check_nucleus(l, 4, 0.75f, 0, 1));
    assert_true(check_nucleus(l, 4, 0.85f, 0, 2));
    assert_true(check_nucleus(l, 4, 0.4f, 0, 3));
    assert_true(check_nucleus(l, 4, 0.85f, 3, 4));

    /* random vocabularies: some cuts are too close to call or the nucleus
     * too big to cover, but most must be checked */
    enum { V = 2000 };
    static float logits[V];
    const float ps[] = {0.1f, 0.3f, 0.5f, 0.7f, 0.9f, 0.95f, 0.99f};
    int checked = 0, tried = 0;
    for (int rep = 0; rep < 6; rep++) {
        random_logits(logits, V, rep < 2 ? 3.0 : rep < 4 ? 4.5 : 6.0, 500 + (uint64_t)rep);
        for (size_t i = 0; i < MOE_ARRAY_SIZE(ps); i++) {
            checked += check_nucleus(logits, V, ps[i], 0, 10 + i);
            checked += check_nucleus(logits, V, ps[i], 300, 20 + i); /* after top-k */
            tried += 2;
        }
    }
    if (checked < tried * 2 / 3)
        fail_msg("only %d of %d nucleus checks ran", checked, tried);
}

/* Values the first binning pass cannot separate: many tokens crowd one bin,
 * which must be refined; and exact ties, ranked by id. */
static void test_top_p_crowded_and_ties(void **state)
{
    enum { V = 5000 };
    static float logits[V];
    lcg_state = 9;
    for (int32_t i = 0; i < V; i++)
        logits[i] = (float)(lcg_uniform() * 1e-3); /* one bin at level 0 */
    logits[V / 2] = 8.0f;
    logits[7] = -30.0f;
    /* token V/2 weighs e^8 ~ 2981 of ~7981: the cut lands in the crowd */
    assert_true(check_nucleus(logits, V, 0.40f, 0, 1));
    assert_true(check_nucleus(logits, V, 0.395f, 0, 2));

    /* most of the mass far below the top: the window of tokens binned at
     * first (8 below the max) must widen to take in the crowd */
    for (int32_t i = 0; i < V; i++)
        logits[i] -= 10.0f;
    logits[V / 2] = 0.0f;
    logits[7] = -30.0f;
    assert_true(check_nucleus(logits, V, 0.82f, 0, 11));

    /* all equal: the lowest ids; 0.1055 of 1000 needs 106 tokens */
    for (int32_t i = 0; i < V; i++)
        logits[i] = 0.5f;
    static bool in[V];
    assert_int_equal(ref_nucleus(logits, 1000, 0.1055f, 0, in), 106);
    assert_true(in[105] && !in[106]);
    assert_true(check_nucleus(logits, 1000, 0.1055f, 0, 3));

    /* -inf and NaN never count; ties ranked by id */
    for (int32_t i = 0; i < V; i++)
        logits[i] = i % 3 ? 1.0f : -INFINITY;
    logits[5] = NAN;
    assert_true(check_nucleus(logits, 600, 0.05f, 0, 4));
    assert_true(check_nucleus(logits, 600, 0.05f, 50, 5));
}

/* ---- min-p --------------------------------------------------------------------- */

static void test_min_p(void **state)
{
    /* relative to the max: 1, 0.5, 0.2, 0.05, 0.02 */
    const float l[5] = {logf(0.02f), 0.0f, logf(0.5f), logf(0.2f), logf(0.05f)};
    float scratch[5];
    const int top_ks[] = {0, 4};
    const float top_ps[] = {1.0f, 0.999f};
    for (size_t a = 0; a < 2; a++) {
        for (size_t b = 0; b < 2; b++) {
            struct moe_sampling s;
            moe_sampling_defaults(&s);
            s.temperature = 50.0f;
            s.min_p = 0.1f;
            s.top_k = top_ks[a];
            s.top_p = top_ps[b];
            struct moe_sampler *smp = mk(&s, 5);
            int hits[5] = {0};
            for (int i = 0; i < 3000; i++)
                hits[draw(smp, l, scratch, 5)]++;
            assert_true(hits[1] > 0 && hits[2] > 0 && hits[3] > 0);
            assert_int_equal(hits[0] + hits[4], 0);
            moe_sampler_free(smp);
        }
    }

    /* min_p = 1 keeps only the max */
    struct moe_sampling s;
    moe_sampling_defaults(&s);
    s.min_p = 1.0f;
    s.temperature = 10.0f;
    struct moe_sampler *smp = mk(&s, 5);
    for (int i = 0; i < 100; i++)
        assert_int_equal(draw(smp, l, scratch, 5), 1);
    moe_sampler_free(smp);
}

/* ---- penalties ---------------------------------------------------------------- */

/* Greedy sampling leaves the penalised logits in the scratch array: check
 * every value, touched or not. */
static void run_penalty(const struct moe_sampling *s, const int32_t *hist, size_t n_hist,
                        const float *expect)
{
    const float in[8] = {2.0f, -2.0f, 1.0f, 0.5f, -1.0f, 3.0f, 0.0f, 4.0f};
    float l[8];
    memcpy(l, in, sizeof(l));
    struct moe_sampler *smp = mk(s, 8);
    assert_true(moe_sampler_sample(smp, l, hist, n_hist) >= 0);
    for (int i = 0; i < 8; i++) {
        if (fabsf(l[i] - expect[i]) > 1e-6f)
            fail_msg("logit %d: got %g, want %g", i, (double)l[i], (double)expect[i]);
    }
    /* a second call sees the same history the same way (counts were reset) */
    memcpy(l, in, sizeof(l));
    assert_true(moe_sampler_sample(smp, l, hist, n_hist) >= 0);
    for (int i = 0; i < 8; i++)
        assert_float_equal(l[i], expect[i], 1e-6f);
    moe_sampler_free(smp);
}

static void test_penalties(void **state)
{
    /* token 0 once, 1 twice, 2 once, 6 once, 7 three times; 99 and -1 ignored */
    const int32_t hist[] = {0, 1, 99, 1, 2, 6, -1, 7, 7, 7};
    const size_t nh = MOE_ARRAY_SIZE(hist);
    struct moe_sampling s;
    moe_sampling_defaults(&s);
    s.temperature = 0.0f;
    s.penalty_last_n = 0;

    s.repetition_penalty = 2.0f; /* once per distinct token: 7 is 4 / 2, not 4 / 8 */
    run_penalty(&s, hist, nh, (const float[8]){1.0f, -4.0f, 0.5f, 0.5f, -1.0f, 3.0f, 0.0f, 2.0f});

    s.repetition_penalty = 1.0f;
    s.presence_penalty = 0.5f;
    run_penalty(&s, hist, nh, (const float[8]){1.5f, -2.5f, 0.5f, 0.5f, -1.0f, 3.0f, -0.5f, 3.5f});

    s.presence_penalty = 0.0f;
    s.frequency_penalty = 0.25f;
    run_penalty(&s, hist, nh, (const float[8]){1.75f, -2.5f, 0.75f, 0.5f, -1.0f, 3.0f, -0.25f, 3.25f});

    /* all three: repetition first, then the OpenAI subtraction */
    s.repetition_penalty = 2.0f;
    s.presence_penalty = 0.5f;
    s.frequency_penalty = 0.25f;
    run_penalty(&s, hist, nh, (const float[8]){0.25f, -5.0f, -0.25f, 0.5f, -1.0f, 3.0f, -0.75f, 0.75f});

    /* window: the last 4 entries are {-1, 7, 7, 7} */
    s.penalty_last_n = 4;
    run_penalty(&s, hist, nh, (const float[8]){2.0f, -2.0f, 1.0f, 0.5f, -1.0f, 3.0f, 0.0f, 0.75f});

    /* a window longer than the history covers all of it */
    s.penalty_last_n = 1000;
    run_penalty(&s, hist, nh, (const float[8]){0.25f, -5.0f, -0.25f, 0.5f, -1.0f, 3.0f, -0.75f, 0.75f});

    /* penalties off: nothing changes */
    moe_sampling_defaults(&s);
    s.temperature = 0.0f;
    run_penalty(&s, hist, nh, (const float[8]){2.0f, -2.0f, 1.0f, 0.5f, -1.0f, 3.0f, 0.0f, 4.0f});
}

static void test_penalty_changes_choice(void **state)
{
    struct moe_sampling s;
    moe_sampling_defaults(&s);
    s.temperature = 0.0f;
    s.repetition_penalty = 1.5f;
    struct moe_sampler *smp = mk(&s, 4);
    float l[4] = {1.0f, 1.4f, 0.2f, -1.0f};
    const int32_t hist[] = {1};
    assert_int_equal(moe_sampler_sample(smp, l, hist, 1), 0); /* 1.4 / 1.5 < 1 */
    moe_sampler_free(smp);
}

/* ---- seeding ------------------------------------------------------------------- */

static void sequence(const struct moe_sampling *s, const float *logits, int32_t V, int32_t *out,
                     int n)
{
    float *scratch = malloc((size_t)V * sizeof(*scratch));
    struct moe_sampler *smp = mk(s, V);
    for (int i = 0; i < n; i++) {
        memcpy(scratch, logits, (size_t)V * sizeof(*scratch));
        out[i] = moe_sampler_sample(smp, scratch, out, (size_t)i); /* history: own output */
        assert_true(out[i] >= 0);
    }
    moe_sampler_free(smp);
    free(scratch);
}

static void test_seed_reproducible(void **state)
{
    enum { V = 3000, N = 200 };
    static float logits[V];
    random_logits(logits, V, 2.0, 31337);
    struct moe_sampling cfg[4];
    for (int i = 0; i < 4; i++)
        moe_sampling_defaults(&cfg[i]);
    cfg[1].top_k = 40;
    cfg[1].temperature = 0.8f;
    cfg[2].top_p = 0.9f;
    cfg[2].frequency_penalty = 0.1f;
    cfg[3].min_p = 0.05f;
    cfg[3].repetition_penalty = 1.1f;
    cfg[3].top_k = 100;
    cfg[3].top_p = 0.95f;

    for (int c = 0; c < 4; c++) {
        int32_t a[N], b[N], d[N];
        cfg[c].seed = 1234;
        sequence(&cfg[c], logits, V, a, N);
        sequence(&cfg[c], logits, V, b, N);
        assert_memory_equal(a, b, sizeof(a));
        cfg[c].seed = 1235;
        sequence(&cfg[c], logits, V, d, N);
        int same = 0;
        for (int i = 0; i < N; i++)
            same += a[i] == d[i];
        assert_true(same < N / 2);
    }

    /* seed 0 is an ordinary seed */
    int32_t a[N], b[N];
    cfg[0].seed = 0;
    sequence(&cfg[0], logits, V, a, N);
    sequence(&cfg[0], logits, V, b, N);
    assert_memory_equal(a, b, sizeof(a));
}

/* ---- the drawn distribution -------------------------------------------------- */

/* 20000 draws against the softmax; chi-square with k-1 degrees of freedom.
 * The seed is fixed, so this cannot flake; a wrong distribution (temperature
 * misapplied, off-by-one in the walk, no renormalisation after top-k) lands
 * far above the bound. */
static void check_distribution(const float *l, int32_t V, float temp, int top_k, double *p)
{
    enum { N = 20000 };
    struct moe_sampling s;
    moe_sampling_defaults(&s);
    s.temperature = temp;
    s.top_k = top_k;
    s.seed = 2024;
    struct moe_sampler *smp = mk(&s, V);
    int *hits = calloc((size_t)V, sizeof(*hits));
    float *scratch = malloc((size_t)V * sizeof(*scratch));
    assert_true(hits && scratch);
    for (int i = 0; i < N; i++)
        hits[draw(smp, l, scratch, V)]++;
    moe_sampler_free(smp);

    double chi2 = 0.0;
    int df = -1;
    for (int32_t i = 0; i < V; i++) {
        double expect = p[i] * N;
        if (expect == 0.0) {
            assert_int_equal(hits[i], 0);
            continue;
        }
        chi2 += (hits[i] - expect) * (hits[i] - expect) / expect;
        df++;
        /* and each within a few percent of the total */
        assert_true(fabs(hits[i] / (double)N - p[i]) < 0.02);
    }
    free(hits);
    free(scratch);
    /* 99.9th percentile of chi-square for df <= 9 is <= 27.9 */
    assert_true(df <= 9);
    if (chi2 > 27.9)
        fail_msg("chi-square %.2f with %d degrees of freedom", chi2, df);
}

static void test_distribution(void **state)
{
    enum { V = 10 };
    const float l[V] = {0.0f, 1.0f, -0.5f, 2.0f, 0.3f, -1.0f, 1.5f, 0.8f, -2.0f, 0.1f};
    double p[V], z;

    const float temps[] = {1.0f, 2.0f, 0.5f};
    for (size_t t = 0; t < MOE_ARRAY_SIZE(temps); t++) {
        z = 0.0;
        for (int i = 0; i < V; i++)
            z += p[i] = exp(l[i] / temps[t]);
        for (int i = 0; i < V; i++)
            p[i] /= z;
        check_distribution(l, V, temps[t], 0, p);
    }

    /* top_k = 4 renormalises over ids 3, 6, 1, 7 */
    z = 0.0;
    for (int i = 0; i < V; i++)
        z += p[i] = (i == 3 || i == 6 || i == 1 || i == 7) ? exp(l[i]) : 0.0;
    for (int i = 0; i < V; i++)
        p[i] /= z;
    check_distribution(l, V, 1.0f, 4, p);

    /* a large vocabulary: the draw walks block sums first; the tokens sit
     * at block edges and in blocks that are otherwise empty */
    enum { BIG = 3001 };
    static float lb[BIG];
    static double pb[BIG];
    const int32_t ids[] = {0, 255, 256, 1000, 2047, 2048, 3000};
    for (int32_t i = 0; i < BIG; i++)
        lb[i] = -INFINITY;
    z = 0.0;
    for (size_t j = 0; j < MOE_ARRAY_SIZE(ids); j++) {
        lb[ids[j]] = 0.3f * (float)j;
        z += exp(lb[ids[j]]);
    }
    for (int32_t i = 0; i < BIG; i++)
        pb[i] = exp(lb[i]) / z;
    check_distribution(lb, BIG, 1.0f, 0, pb);
}

/* ---- validation ------------------------------------------------------------------ */

static void expect_einval(const struct moe_sampling *s, int32_t vocab, const char *msg)
{
    struct moe_sampler *smp = (struct moe_sampler *)&smp;
    moe_err_clear();
    assert_int_equal(moe_sampler_create(s, vocab, &smp), -EINVAL);
    assert_null(smp);
    if (!strstr(moe_err_msg(), msg))
        fail_msg("message \"%s\" lacks \"%s\"", moe_err_msg(), msg);
}

static void test_validation(void **state)
{
    struct moe_sampling s;
#define BAD(field, value, msg) \
    do { \
        moe_sampling_defaults(&s); \
        s.field = value; \
        expect_einval(&s, 100, msg); \
    } while (0)
    BAD(top_p, 1.5f, "top_p must be in (0, 1], got 1.5");
    BAD(top_p, 0.0f, "top_p must be in (0, 1], got 0");
    BAD(top_p, NAN, "top_p");
    BAD(temperature, -0.5f, "temperature must be a finite number >= 0, got -0.5");
    BAD(temperature, INFINITY, "temperature");
    BAD(top_k, -1, "top_k must be >= 0 (0 = off), got -1");
    BAD(min_p, -0.1f, "min_p must be in [0, 1], got -0.1");
    BAD(min_p, 1.5f, "min_p must be in [0, 1], got 1.5");
    BAD(repetition_penalty, 0.0f, "repetition_penalty must be a finite number > 0, got 0");
    BAD(repetition_penalty, -1.0f, "repetition_penalty");
    BAD(presence_penalty, NAN, "presence_penalty");
    BAD(frequency_penalty, INFINITY, "frequency_penalty");
    BAD(penalty_last_n, -1, "penalty_last_n must be >= 0");
#undef BAD
    moe_sampling_defaults(&s);
    expect_einval(&s, 0, "vocab must be > 0, got 0");
    expect_einval(NULL, 10, "sampling parameters");

    /* the defaults, and the edges that are allowed */
    moe_sampling_defaults(&s);
    assert_float_equal(s.temperature, 1.0f, 0.0f);
    assert_int_equal(s.top_k, 0);
    assert_float_equal(s.top_p, 1.0f, 0.0f);
    assert_float_equal(s.min_p, 0.0f, 0.0f);
    assert_float_equal(s.repetition_penalty, 1.0f, 0.0f);
    assert_float_equal(s.presence_penalty, 0.0f, 0.0f);
    assert_float_equal(s.frequency_penalty, 0.0f, 0.0f);
    assert_int_equal(s.penalty_last_n, 64);
    assert_int_equal(s.seed, 0);
    s.top_k = 1000; /* more than the vocabulary: off */
    s.min_p = 1.0f;
    s.presence_penalty = -2.0f;
    struct moe_sampler *smp = mk(&s, 100);
    moe_sampler_free(smp);
    moe_sampler_free(NULL);
}

static void test_bad_logits(void **state)
{
    const int top_ks[] = {0, 3};
    const float top_ps[] = {1.0f, 0.5f};
    for (int a = 0; a < 2; a++) {
        for (int b = 0; b < 2; b++) {
            struct moe_sampling s;
            moe_sampling_defaults(&s);
            s.top_k = top_ks[a];
            s.top_p = top_ps[b];
            struct moe_sampler *smp = mk(&s, 6);
            float none[6] = {-INFINITY, NAN, -INFINITY, NAN, -INFINITY, -INFINITY};
            assert_int_equal(moe_sampler_sample(smp, none, NULL, 0), -EINVAL);
            float inf[6] = {0.0f, INFINITY, 3.0f, INFINITY, NAN, 1.0f};
            assert_int_equal(moe_sampler_sample(smp, inf, NULL, 0), 1);
            for (int i = 0; i < 200; i++) { /* NaN and -inf are never drawn */
                float l[6] = {NAN, 0.0f, -INFINITY, 0.0f, NAN, -INFINITY};
                int32_t t = moe_sampler_sample(smp, l, NULL, 0);
                assert_true(t == 1 || t == 3);
            }
            moe_sampler_free(smp);
        }
    }
}

static void test_tiny_vocab(void **state)
{
    /* vocabularies of 1 to 9: every path, SIMD tails included */
    for (int32_t v = 1; v <= 9; v++) {
        float l[9], scratch[9];
        for (int32_t i = 0; i < v; i++)
            l[i] = (float)((i * 7) % 11); /* distinct */
        int32_t best = ref_argmax(l, v);
        for (int mode = 0; mode < 5; mode++) {
            struct moe_sampling s;
            moe_sampling_defaults(&s);
            s.temperature = mode == 0 ? 0.0f : 0.001f; /* near greedy */
            s.top_k = mode == 2 ? 2 : 0;
            s.top_p = mode == 3 ? 0.5f : 1.0f;
            s.min_p = mode == 4 ? 0.5f : 0.0f;
            struct moe_sampler *smp = mk(&s, v);
            for (int rep = 0; rep < 20; rep++)
                assert_int_equal(draw(smp, l, scratch, v), best);
            moe_sampler_free(smp);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_max_and_ties),
        cmocka_unit_test(test_top_k1_is_greedy),
        cmocka_unit_test(test_top_k_ties_lowest_ids),
        cmocka_unit_test(test_top_p_small_is_argmax),
        cmocka_unit_test(test_top_p_exact_set),
        cmocka_unit_test(test_top_p_crowded_and_ties),
        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_penalties),
        cmocka_unit_test(test_penalty_changes_choice),
        cmocka_unit_test(test_seed_reproducible),
        cmocka_unit_test(test_distribution),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_bad_logits),
        cmocka_unit_test(test_tiny_vocab),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
