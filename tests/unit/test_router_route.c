/* router: the routers of the 2026 architectures against plain re-statements
 * of their transformers code (grouped top-k, a correction bias that picks
 * but does not weigh, softmax over the chosen logits), and ODP on them. */
#include "tests/unit/test.h"

#include <math.h>
#include <string.h>

#include "router/router.h"

static uint64_t rng = 0x243f6a8885a308d3ull;
static float frand(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) & 0xffffff) / (float)(1 << 23) - 1.0f;
}

static double sigmoid(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

/* the weight route r gives expert e, 0 when not chosen */
static double weight_of(const struct moe_route *r, int e)
{
    for (int j = 0; j < r->n; j++)
        if (r->expert[j] == e)
            return r->weight[j];
    return 0;
}

/* DeepSeek-V3 / GLM-4.5 / dots.llm1 (noaux_tc), written out: groups ranked by
 * the sum of their two best biased scores, the topk_group best kept, the k
 * best biased scores among them chosen, weighed by the unbiased scores */
static void ref_sigmoid_grouped(const float *l, const float *bias, int E, int G, int TG, int k,
                                bool renorm, double scale, double *w)
{
    double s[256], c[256], gs[64];
    int per = E / G;
    for (int e = 0; e < E; e++) {
        s[e] = sigmoid(l[e]);
        c[e] = s[e] + bias[e];
    }
    for (int g = 0; g < G; g++) {
        double a = -INFINITY, b = -INFINITY;
        for (int i = 0; i < per; i++) {
            double v = c[g * per + i];
            if (v > a) {
                b = a;
                a = v;
            } else if (v > b) {
                b = v;
            }
        }
        gs[g] = a + b;
    }
    bool keep[64] = {0};
    for (int t = 0; t < TG; t++) {
        int best = -1;
        for (int g = 0; g < G; g++)
            if (!keep[g] && (best < 0 || gs[g] > gs[best]))
                best = g;
        keep[best] = true;
    }
    bool chosen[256] = {0};
    double sum = 0;
    for (int t = 0; t < k; t++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (keep[e / per] && !chosen[e] && (best < 0 || c[e] > c[best]))
                best = e;
        chosen[best] = true;
        sum += s[best];
    }
    for (int e = 0; e < E; e++)
        w[e] = chosen[e] ? s[e] / (renorm ? sum + 1e-20 : 1.0) * scale : 0;
}

static void test_sigmoid_grouped_matches_deepseek_v3(void **state)
{
    (void)state;
    enum { E = 64, G = 8, TG = 3, K = 6 };
    float l[E], bias[E];
    for (int round = 0; round < 200; round++) {
        for (int e = 0; e < E; e++) {
            l[e] = 3 * frand();
            bias[e] = 0.3f * frand();
        }
        double want[E];
        ref_sigmoid_grouped(l, bias, E, G, TG, K, true, 2.5, want);
        struct moe_router_cfg cfg = {MOE_ROUTE_SIGMOID, true, G, TG, 2.5f, 0, bias};
        struct moe_route r;
        moe_router_route(&cfg, l, E, K, 0.0f, &r, NULL);
        assert_int_equal(r.n, K);
        double sum = 0;
        for (int e = 0; e < E; e++) {
            assert_float_equal(weight_of(&r, e), want[e], 1e-6);
            sum += weight_of(&r, e);
        }
        assert_float_equal(sum, 2.5, 1e-5); /* renormalised, then scaled */
        for (int j = 1; j < r.n; j++)     /* strongest first, for ODP */
            assert_true(r.weight[j] <= r.weight[j - 1]);
    }
}

/* the bias picks the experts, the weights ignore it: a large bias on one
 * expert brings it in with its own (small) sigmoid score */
static void test_correction_bias_picks_but_does_not_weigh(void **state)
{
    (void)state;
    float l[8] = {2, 1.5f, 1, 0.5f, 0, -0.5f, -1, -4};
    float bias[8] = {0};
    bias[7] = 10.0f;
    struct moe_router_cfg cfg = {MOE_ROUTE_SIGMOID, false, 0, 0, 1.0f, 0, bias};
    struct moe_route r;
    moe_router_route(&cfg, l, 8, 2, 0.0f, &r, NULL);
    assert_int_equal(r.n, 2);
    assert_float_equal(weight_of(&r, 7), sigmoid(-4), 1e-7);
    assert_float_equal(weight_of(&r, 0), sigmoid(2), 1e-7);
    assert_int_equal(r.expert[0], 0); /* sorted by weight, not by the biased score */
}

/* DeepSeek-V2 group_limited_greedy: groups ranked by their best softmax
 * probability (not the top-2 sum), weights the probabilities times scale */
static void test_softmax_group_uses_the_groups_best(void **state)
{
    (void)state;
    /* group 0 has one strong expert, group 1 two good ones: the max rule
     * keeps group 0, the top-2-sum rule would keep group 1 */
    float l[8] = {3.0f, -5, -5, -5, 2.2f, 2.2f, -5, -5};
    struct moe_router_cfg cfg = {MOE_ROUTE_SOFTMAX_GROUP, false, 2, 1, 16.0f, 0, NULL};
    struct moe_route r;
    moe_router_route(&cfg, l, 8, 2, 0.0f, &r, NULL);
    assert_int_equal(r.expert[0], 0);
    assert_true(r.expert[1] >= 1 && r.expert[1] <= 3); /* the second from group 0 */
    double mx = 3.0, sum = 0;
    for (int e = 0; e < 8; e++)
        sum += exp(l[e] - mx);
    assert_float_equal(r.weight[0], 16.0 / sum, 1e-5);
}

/* gpt-oss: the k largest logits, softmax over those k only */
static void test_topk_softmax_over_the_chosen(void **state)
{
    (void)state;
    float l[6] = {0.5f, 2.0f, -1.0f, 1.0f, 1.9f, 0.0f};
    struct moe_router_cfg cfg = {MOE_ROUTE_TOPK_SOFTMAX, false, 0, 0, 1.0f, 0, NULL};
    struct moe_route r;
    moe_router_route(&cfg, l, 6, 3, 0.0f, &r, NULL);
    double z = exp(2.0) + exp(1.9) + exp(1.0);
    assert_int_equal(r.n, 3);
    assert_float_equal(weight_of(&r, 1), exp(2.0) / z, 1e-6);
    assert_float_equal(weight_of(&r, 4), exp(1.9) / z, 1e-6);
    assert_float_equal(weight_of(&r, 3), exp(1.0) / z, 1e-6);
}

/* ERNIE-4.5: softmax over all, bias for the choice, the chosen
 * probabilities divided by max(their sum, norm_min) */
static void test_softmax_bias_renormalises_with_a_floor(void **state)
{
    (void)state;
    float l[5] = {1.0f, 0.0f, 2.0f, -1.0f, 0.5f};
    float bias[5] = {0, 0.9f, 0, 0, 0};
    double p[5], z = 0;
    for (int e = 0; e < 5; e++)
        z += exp(l[e]);
    for (int e = 0; e < 5; e++)
        p[e] = exp(l[e]) / z;
    struct moe_router_cfg cfg = {MOE_ROUTE_SOFTMAX_BIAS, false, 0, 0, 1.0f, 1e-12f, bias};
    struct moe_route r;
    moe_router_route(&cfg, l, 5, 2, 0.0f, &r, NULL);
    /* biased: expert 1 (p + 0.9) beats expert 0 */
    assert_float_equal(weight_of(&r, 2), p[2] / (p[2] + p[1]), 1e-6);
    assert_float_equal(weight_of(&r, 1), p[1] / (p[2] + p[1]), 1e-6);
    cfg.norm_min = 10.0f; /* the floor wins: the weights stay small */
    moe_router_route(&cfg, l, 5, 2, 0.0f, &r, NULL);
    assert_float_equal(weight_of(&r, 2), p[2] / 10.0, 1e-6);
}

/* ODP on the new routers drops the weak ones and keeps the weights' sum;
 * beta 0 changes nothing; the first expert always stays */
static void test_pruning_keeps_the_sum(void **state)
{
    (void)state;
    enum { E = 32, K = 8 };
    float l[E], bias[E];
    for (int e = 0; e < E; e++) {
        l[e] = 2 * frand();
        bias[e] = 0.1f * frand();
    }
    struct moe_router_cfg cfg = {MOE_ROUTE_SIGMOID, true, 4, 2, 2.5f, 0, bias};
    struct moe_route full, pruned;
    struct moe_router_layer_stats st;
    memset(&st, 0, sizeof(st));
    assert_int_equal(moe_router_route(&cfg, l, E, K, 0.0f, &full, NULL), 0);
    int32_t dropped = moe_router_route(&cfg, l, E, K, 0.95f, &pruned, &st);
    assert_true(dropped > 0);
    assert_int_equal(pruned.n + dropped, full.n);
    assert_int_equal(pruned.expert[0], full.expert[0]);
    double a = 0, b = 0;
    for (int j = 0; j < full.n; j++)
        a += full.weight[j];
    for (int j = 0; j < pruned.n; j++) {
        b += pruned.weight[j];
        assert_true(full.weight[j] >= 0.95f * full.weight[0] - 1e-6f); /* the kept were strong */
    }
    assert_float_equal(a, b, 1e-5);
    assert_int_equal(st.tokens, 1);
    assert_int_equal(st.pruned, (uint64_t)dropped);
}

/* MOE_ROUTE_SOFTMAX is the existing softmax router, bit for bit, times scale */
static void test_softmax_kind_is_the_old_router(void **state)
{
    (void)state;
    float l[16];
    for (int e = 0; e < 16; e++)
        l[e] = frand();
    struct moe_route a, b;
    moe_router_topk_prune(l, 16, 4, true, 0.3f, &a, NULL);
    struct moe_router_cfg cfg = {MOE_ROUTE_SOFTMAX, true, 0, 0, 1.0f, 0, NULL};
    moe_router_route(&cfg, l, 16, 4, 0.3f, &b, NULL);
    assert_int_equal(a.n, b.n);
    assert_memory_equal(a.expert, b.expert, (size_t)a.n * sizeof(a.expert[0]));
    assert_memory_equal(a.weight, b.weight, (size_t)a.n * sizeof(a.weight[0]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigmoid_grouped_matches_deepseek_v3),
        cmocka_unit_test(test_correction_bias_picks_but_does_not_weigh),
        cmocka_unit_test(test_softmax_group_uses_the_groups_best),
        cmocka_unit_test(test_topk_softmax_over_the_chosen),
        cmocka_unit_test(test_softmax_bias_renormalises_with_a_floor),
        cmocka_unit_test(test_pruning_keeps_the_sum),
        cmocka_unit_test(test_softmax_kind_is_the_old_router),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
