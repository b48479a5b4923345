/* experts: grouping tokens by expert gives exactly what running every
 * token's experts one by one gives; running the experts at hand first and the
 * others as they arrive gives the same bits; an expert that cannot be had
 * fails the run, or (isolated) only its own tokens. */
#include "tests/unit/test.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>

#include "backend/backend.h"
#include "experts/experts.h"

enum { H = 24, F = 40, E = 5, N = 13, K = 2 };

static float rnd(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return ((float)((*s >> 8) & 0xffff) / 65536.0f - 0.5f);
}

static void naive_ffn(const float *w1, const float *w3, const float *w2, const float *x, float *out)
{
    float act[F];
    for (int f = 0; f < F; f++) {
        double g = 0, u = 0;
        for (int h = 0; h < H; h++) {
            g += (double)w1[f * H + h] * x[h];
            u += (double)w3[f * H + h] * x[h];
        }
        act[f] = (float)(g / (1.0 + exp(-g)) * u);
    }
    for (int h = 0; h < H; h++) {
        double o = 0;
        for (int f = 0; f < F; f++)
            o += (double)w2[h * F + f] * act[f];
        out[h] = (float)o;
    }
}

static float w1[E][F * H], w3[E][F * H], w2[E][H * F], x[N][H];
static struct moe_expert_weights ex[E];
static struct moe_route routes[N];

static void fixture(void)
{
    unsigned s = 42;
    for (int e = 0; e < E; e++)
        for (int i = 0; i < F * H; i++) {
            w1[e][i] = rnd(&s);
            w3[e][i] = rnd(&s);
            w2[e][i] = rnd(&s);
        }
    for (int t = 0; t < N; t++)
        for (int h = 0; h < H; h++)
            x[t][h] = rnd(&s) * 4;
    for (int e = 0; e < E; e++) {
        ex[e].gate = (struct moe_weight){MOE_DTYPE_F32, F, H, H * 4, w1[e]};
        ex[e].up = (struct moe_weight){MOE_DTYPE_F32, F, H, H * 4, w3[e]};
        ex[e].down = (struct moe_weight){MOE_DTYPE_F32, H, F, F * 4, w2[e]};
    }
    /* expert 4 gets nobody; expert 0 gets most tokens; token 5 has one expert */
    for (int t = 0; t < N; t++) {
        routes[t].n = t == 5 ? 1 : K;
        routes[t].expert[0] = t % 3 == 0 ? 0 : t % 4;
        routes[t].expert[1] = routes[t].expert[0] == 0 ? 1 + t % 3 : 0;
        routes[t].weight[0] = 0.25f + 0.05f * t;
        routes[t].weight[1] = 0.1f;
    }
}

static void residual(float y[N][H])
{
    for (int t = 0; t < N; t++)
        for (int h = 0; h < H; h++)
            y[t][h] = (float)t; /* the residual is added to, not replaced */
}

/* want: the residual plus the layer's output with every expert ready */
static void all_ready(struct moe_pool *pool, float want[N][H], struct moe_experts_scratch *scratch)
{
    residual(want);
    assert_int_equal(moe_experts_run(pool, ex, E, &x[0][0], N, H, routes, &want[0][0], scratch),
                     0);
}

static void test_grouped_dispatch_equals_per_token(void **state)
{
    (void)state;
    fixture();
    struct moe_pool *pool;
    assert_int_equal(moe_pool_create(2, &pool), 0);
    static float y[N][H], want[N][H];
    residual(y);
    residual(want);
    struct moe_experts_scratch scratch = {0};
    assert_int_equal(moe_experts_run(pool, ex, E, &x[0][0], N, H, routes, &y[0][0], &scratch), 0);
    for (int t = 0; t < N; t++)
        for (int j = 0; j < routes[t].n; j++) {
            int e = routes[t].expert[j];
            float o[H];
            naive_ffn(w1[e], w3[e], w2[e], x[t], o);
            for (int h = 0; h < H; h++)
                want[t][h] += routes[t].weight[j] * o[h];
        }
    for (int t = 0; t < N; t++)
        for (int h = 0; h < H; h++)
            assert_float_equal(y[t][h], want[t][h], 1e-4 * (1 + fabsf(want[t][h])));
    moe_experts_scratch_free(&scratch);
    moe_pool_free(pool);
}

/* a source whose odd experts are "still being read": their weights live
 * elsewhere (a copy) until wait hands them out; fail_e's wait fails */
struct late {
    struct moe_expert_weights copy[E];
    int waited[E], n_waits, fail_e;
};

static int late_wait(void *ctx, int32_t e, const struct moe_expert_weights **w)
{
    struct late *l = ctx;
    l->waited[l->n_waits++] = e;
    *w = &l->copy[e];
    return e == l->fail_e ? -EIO : 0;
}

/* the source over l: even experts ready, odd ones late */
static struct moe_expert_source late_source(struct late *l, bool *ready, int fail_e)
{
    *l = (struct late){.fail_e = fail_e};
    for (int e = 0; e < E; e++) {
        l->copy[e] = ex[e];
        ready[e] = e % 2 == 0;
    }
    return (struct moe_expert_source){.ready = ready, .wait = late_wait, .ctx = l};
}

static void test_running_ready_experts_first_gives_the_same_bits(void **state)
{
    (void)state;
    fixture();
    struct moe_pool *pool;
    assert_int_equal(moe_pool_create(2, &pool), 0);
    static float y[N][H], want[N][H];
    residual(y);
    struct moe_experts_scratch scratch = {0};
    all_ready(pool, want, &scratch);
    /* the views handed in for late experts point nowhere: only wait's count */
    struct late l;
    bool ready[E];
    struct moe_expert_source src = late_source(&l, ready, -1);
    struct moe_expert_weights views[E];
    for (int e = 0; e < E; e++) {
        views[e] = ex[e];
        if (!ready[e])
            views[e].gate.data = views[e].up.data = views[e].down.data = NULL;
    }
    assert_int_equal(moe_experts_run_from(pool, views, &src, NULL, E, &x[0][0], N, H, routes, &y[0][0],
                                          &scratch),
                     0);
    assert_memory_equal(y, want, sizeof(y));
    /* waited for once each: the routed late experts (1 and 3; 4 is routed to nobody) */
    assert_int_equal(l.n_waits, 2);
    assert_int_equal(l.waited[0], 1);
    assert_int_equal(l.waited[1], 3);
    moe_experts_scratch_free(&scratch);
    moe_pool_free(pool);
}

static void test_a_failed_wait_fails_the_run_leaving_y_and_waiting_for_the_rest(void **state)
{
    (void)state;
    fixture();
    struct moe_pool *pool;
    assert_int_equal(moe_pool_create(2, &pool), 0);
    static float y[N][H], before[N][H];
    residual(y);
    residual(before);
    struct late l;
    bool ready[E];
    struct moe_expert_source src = late_source(&l, ready, 1);
    struct moe_experts_scratch scratch = {0};
    assert_int_equal(moe_experts_run_from(pool, ex, &src, NULL, E, &x[0][0], N, H, routes, &y[0][0],
                                          &scratch),
                     -EIO);
    assert_memory_equal(y, before, sizeof(y));
    assert_int_equal(l.n_waits, 2); /* expert 3 still waited for: nothing left in flight */
    assert_int_equal(l.waited[1], 3);
    moe_experts_scratch_free(&scratch);
    moe_pool_free(pool);
}

static void test_an_isolated_failed_wait_costs_only_that_experts_tokens(void **state)
{
    (void)state;
    fixture();
    struct moe_pool *pool;
    assert_int_equal(moe_pool_create(2, &pool), 0);
    static float y[N][H], want[N][H];
    residual(y);
    struct moe_experts_scratch scratch = {0};
    all_ready(pool, want, &scratch);
    struct late l;
    bool ready[E], failed[E] = {0};
    struct moe_expert_source src = late_source(&l, ready, 1);
    src.failed = failed;
    assert_int_equal(moe_experts_run_from(pool, ex, &src, NULL, E, &x[0][0], N, H, routes,
                                          &y[0][0], &scratch),
                     0);
    for (int e = 0; e < E; e++)
        assert_int_equal(failed[e], e == 1);
    assert_int_equal(l.n_waits, 2); /* expert 3 after it: waited for and run */
    int n_hit = 0;
    for (int t = 0; t < N; t++) {
        bool to_1 = false;
        for (int j = 0; j < routes[t].n; j++)
            to_1 |= routes[t].expert[j] == 1;
        n_hit += to_1;
        if (!to_1) /* the others: exactly as with every expert there */
            assert_memory_equal(y[t], want[t], sizeof(y[t]));
        else /* finite: only expert 1's term is missing */
            for (int h = 0; h < H; h++)
                assert_true(isfinite(y[t][h]));
    }
    assert_true(n_hit > 0 && n_hit < N);
    moe_experts_scratch_free(&scratch);
    moe_pool_free(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grouped_dispatch_equals_per_token),
        cmocka_unit_test(test_running_ready_experts_first_gives_the_same_bits),
        cmocka_unit_test(test_a_failed_wait_fails_the_run_leaving_y_and_waiting_for_the_rest),
        cmocka_unit_test(test_an_isolated_failed_wait_costs_only_that_experts_tokens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
