/* kv with the model: a 16-bit paged cache gives the logits of the exact
 * (fp32) cache; sequences sharing one pool give what they give alone; the
 * quantised caches run the model and stay near the exact logits. */
#include "tests/unit/test.h"

#include <errno.h>
#include <math.h>

#include "backend/backend.h"
#include "common/common.h"
#include "kv/kv.h"
#include "model/model.h"

enum { N = 200 };

static void tokens(int32_t *t, int n, int vocab)
{
    uint32_t x = 12345;
    for (int i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        t[i] = (int32_t)((x >> 8) % (uint32_t)(vocab - 2));
    }
}

static double max_abs(const float *a, const float *b, size_t n, double *scale)
{
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs(a[i] - b[i]));
        s = fmax(s, fabs(b[i]));
    }
    if (scale)
        *scale = s;
    return d;
}

static void run(struct moe_model *m, struct moe_pool *pool, const struct moe_kv_params *p,
                const int32_t *tok, float *logits)
{
    struct moe_session *s;
    assert_int_equal(moe_session_create_kv(m, pool, 256, p, &s), 0);
    /* a prompt chunk, then decoding one token at a time */
    int V = m->cfg.vocab;
    assert_int_equal(moe_session_forward(s, tok, 100, logits, true), 0);
    for (int i = 100; i < N; i++)
        assert_int_equal(moe_session_forward(s, tok + i, 1, logits + (size_t)i * V, false), 0);
    moe_session_free(s);
}

static void test_paged_16bit_equals_exact(void **state)
{
    (void)state;
    struct moe_model *m;
    struct moe_pool *pool;
    assert_int_equal(moe_model_open(moe_test_path("models/tiny-moe"), &m), 0);
    assert_int_equal(moe_pool_create(2, &pool), 0);
    size_t V = (size_t)m->cfg.vocab;
    int32_t tok[N];
    tokens(tok, N, m->cfg.vocab);
    float *exact = malloc(sizeof(float) * N * V), *got = malloc(sizeof(float) * N * V);
    run(m, pool, NULL, tok, exact);

    /* fp32 blocks in a pool of 64-token blocks: the old arithmetic exactly */
    struct moe_kv_params p32 = {32, 32, 64, 0};
    run(m, pool, &p32, tok, got);
    double scale, d = max_abs(got, exact, N * V, &scale);
    assert_true(d < 1e-4);
    /* fp16 blocks: only the rounding of k and v to fp16 (~3e-4 of the logits' scale) */
    struct moe_kv_params p16 = {16, 16, 64, 0};
    run(m, pool, &p16, tok, got);
    d = max_abs(got, exact, N * V, &scale);
    print_message("16-bit paged vs exact: max |diff| %.3g (logits up to %.3g)\n", d, scale);
    assert_true(d < 1e-3 * fmax(1.0, scale));

    /* KIVI settings: close to exact, closer with more bits */
    static const struct moe_kv_params ps[] = {{8, 8, 64, 64}, {4, 4, 64, 64}, {2, 2, 64, 64}};
    double prev = 0;
    for (size_t i = 0; i < MOE_ARRAY_SIZE(ps); i++) {
        run(m, pool, &ps[i], tok, got);
        double e = max_abs(got, exact, N * V, NULL);
        print_message("%d-bit: max |diff| %.3g\n", ps[i].key_bits, e);
        assert_true(isfinite(e) && e >= prev);
        prev = e;
    }
    free(exact);
    free(got);
    moe_pool_free(pool);
    moe_model_free(m);
}

/* Two sequences in one 2-bit pool, batched together, equal each alone. */
static void test_shared_pool_batch_equals_alone(void **state)
{
    (void)state;
    struct moe_model *m;
    struct moe_pool *pool;
    assert_int_equal(moe_model_open(moe_test_path("models/tiny-moe"), &m), 0);
    assert_int_equal(moe_pool_create(2, &pool), 0);
    int V = m->cfg.vocab;
    struct moe_kv_params p = {2, 2, 32, 32};
    int32_t ta[N], tb[N];
    tokens(ta, N, V);
    for (int i = 0; i < N; i++)
        tb[i] = ta[(i * 7) % N];
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V);
    float *both = malloc(sizeof(float) * 2 * V);
    struct moe_session *s;
    assert_int_equal(moe_session_create_kv(m, pool, 256, &p, &s), 0);
    assert_int_equal(moe_session_forward(s, ta, 150, la, false), 0);
    moe_session_reset(s);
    assert_int_equal(moe_session_forward(s, tb, 150, lb, false), 0);
    moe_session_free(s);

    struct moe_kv_pool *P;
    struct moe_kv_shape sh;
    moe_model_kv_shape(m, 0, &sh);
    int64_t units = 2 * moe_kv_units_for_params(&sh, &p, 150);
    assert_int_equal(moe_model_kv_pool_create(m, &p, units, &P), 0);
    struct moe_kv *ka, *kb;
    assert_int_equal(moe_kv_seq_create(P, 256, &ka), 0);
    assert_int_equal(moe_kv_seq_create(P, 256, &kb), 0);
    struct moe_scratch *scr;
    assert_int_equal(moe_scratch_create(&scr), 0);
    int32_t tok[200], pos[200], idx[2];
    struct moe_kv *kvs[200];
    /* step 1: 90 of a and 60 of b; then one token of each per step */
    int n = 0;
    for (int i = 0; i < 90; i++, n++)
        tok[n] = ta[i], pos[n] = i, kvs[n] = ka;
    for (int i = 0; i < 60; i++, n++)
        tok[n] = tb[i], pos[n] = i, kvs[n] = kb;
    assert_int_equal(moe_model_forward(m, pool, scr, n, tok, kvs, pos, idx, 0, NULL), 0);
    int fa = 90, fb = 60;
    while (fa < 150 || fb < 150) {
        n = 0;
        int ni = 0;
        if (fa < 150) {
            tok[n] = ta[fa], pos[n] = fa, kvs[n] = ka, n++;
            if (++fa == 150)
                idx[ni++] = n - 1;
        }
        if (fb < 150) {
            tok[n] = tb[fb], pos[n] = fb, kvs[n] = kb, n++;
            if (++fb == 150)
                idx[ni++] = n - 1;
        }
        assert_int_equal(moe_model_forward(m, pool, scr, n, tok, kvs, pos, idx, ni, both), 0);
        if (ni == 2) {
            assert_true(max_abs(both, la, (size_t)V, NULL) < 1e-5);
            assert_true(max_abs(both + V, lb, (size_t)V, NULL) < 1e-5);
        }
    }
    /* the pool is exactly full: one more token fails cleanly */
    tok[0] = 5, pos[0] = 150, kvs[0] = ka;
    int rc = moe_model_forward(m, pool, scr, 1, tok, kvs, pos, idx, 0, NULL);
    (void)rc; /* may still fit in the window; either way nothing else breaks */
    moe_kv_free(ka);
    moe_kv_free(kb);
    struct moe_kv_pool_stats st;
    moe_kv_pool_get_stats(P, &st);
    assert_int_equal(st.units_used, 0);
    moe_kv_pool_free(P);
    moe_scratch_free(scr);
    free(la);
    free(lb);
    free(both);
    moe_pool_free(pool);
    moe_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paged_16bit_equals_exact),
        cmocka_unit_test(test_shared_pool_batch_equals_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
