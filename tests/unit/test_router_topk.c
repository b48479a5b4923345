/* router: top-k selection and weights as each architecture defines them. */
#include "tests/unit/test.h"

#include <math.h>

#include "router/router.h"

static void softmax(const float *l, int n, double *p)
{
    double mx = l[0], s = 0;
    for (int i = 1; i < n; i++)
        mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < n; i++)
        s += (p[i] = exp(l[i] - mx));
    for (int i = 0; i < n; i++)
        p[i] /= s;
}

static void test_topk_picks_largest_in_order(void **state)
{
    (void)state;
    const float l[8] = {0.1f, 2.0f, -1.0f, 3.0f, 0.5f, 2.5f, -3.0f, 0.0f};
    struct moe_route r;
    moe_router_topk(l, 8, 3, false, &r);
    assert_int_equal(r.n, 3);
    assert_int_equal(r.expert[0], 3);
    assert_int_equal(r.expert[1], 5);
    assert_int_equal(r.expert[2], 1);
}

static void test_without_renorm_weights_are_full_softmax(void **state)
{
    (void)state; /* Qwen2-MoE / OLMoE: norm_topk_prob false */
    const float l[6] = {1.0f, 0.2f, -0.5f, 1.5f, 0.0f, 0.3f};
    double p[6];
    softmax(l, 6, p);
    struct moe_route r;
    moe_router_topk(l, 6, 2, false, &r);
    assert_float_equal(r.weight[0], p[3], 1e-6);
    assert_float_equal(r.weight[1], p[0], 1e-6);
    assert_true(r.weight[0] + r.weight[1] < 0.99f);
}

static void test_renorm_weights_sum_to_one(void **state)
{
    (void)state; /* Mixtral / Qwen3-MoE */
    const float l[6] = {1.0f, 0.2f, -0.5f, 1.5f, 0.0f, 0.3f};
    double p[6];
    softmax(l, 6, p);
    struct moe_route r;
    moe_router_topk(l, 6, 2, true, &r);
    assert_float_equal(r.weight[0] + r.weight[1], 1.0f, 1e-6);
    assert_float_equal(r.weight[0], p[3] / (p[3] + p[0]), 1e-6);
}

static void test_ties_prefer_lower_index(void **state)
{
    (void)state;
    const float l[5] = {1.0f, 2.0f, 2.0f, 1.0f, 2.0f};
    struct moe_route r;
    moe_router_topk(l, 5, 2, true, &r);
    assert_int_equal(r.expert[0], 1);
    assert_int_equal(r.expert[1], 2);
}

static void test_k_larger_than_experts_is_clamped(void **state)
{
    (void)state;
    const float l[3] = {0.0f, 1.0f, 2.0f};
    struct moe_route r;
    moe_router_topk(l, 3, 8, true, &r);
    assert_int_equal(r.n, 3);
    assert_int_equal(r.expert[2], 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topk_picks_largest_in_order),
        cmocka_unit_test(test_without_renorm_weights_are_full_softmax),
        cmocka_unit_test(test_renorm_weights_sum_to_one),
        cmocka_unit_test(test_ties_prefer_lower_index),
        cmocka_unit_test(test_k_larger_than_experts_is_clamped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
