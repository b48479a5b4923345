/* router: online dynamic pruning (ALGORITHMS.md section 2): the threshold
 * rule on the probabilities before renormalisation, never the first expert,
 * renormalisation for both kinds of architecture, the statistics, the
 * layer and beta lists, and prefill protection. */
#include "tests/unit/test.h"

#include <errno.h>
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

/* logits of 8 experts; top-2 = experts 3 (p0) and 5 (p1) */
static const float L8[8] = {0.1f, -0.4f, -1.0f, 2.0f, 0.5f, 1.2f, -3.0f, 0.0f};

static void test_beta_zero_is_plain_topk(void **state)
{
    (void)state;
    for (int renorm = 0; renorm < 2; renorm++) {
        struct moe_route a, b;
        memset(&a, 0, sizeof(a));
        memset(&b, 0, sizeof(b));
        moe_router_topk(L8, 8, 2, renorm, &a);
        int32_t d = moe_router_topk_prune(L8, 8, 2, renorm, 0.0f, &b, NULL);
        assert_int_equal(d, 0);
        assert_memory_equal(&a, &b, sizeof(a));
    }
}

static void test_threshold_on_probabilities_before_renorm(void **state)
{
    (void)state;
    double p[8];
    softmax(L8, 8, p);
    double ratio = p[5] / p[3]; /* exp(1.2 - 2.0) = 0.449 */
    struct moe_route r;
    /* just above the ratio: the second expert goes */
    assert_int_equal(moe_router_topk_prune(L8, 8, 2, true, (float)ratio + 0.01f, &r, NULL), 1);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.expert[0], 3);
    assert_float_equal(r.weight[0], 1.0f, 0.0f); /* alone: weight 1 */
    /* just below: both stay, weights as plain top-k */
    assert_int_equal(moe_router_topk_prune(L8, 8, 2, true, (float)ratio - 0.01f, &r, NULL), 0);
    assert_int_equal(r.n, 2);
    assert_float_equal(r.weight[0], p[3] / (p[3] + p[5]), 1e-6);
}

static void test_never_the_first_expert(void **state)
{
    (void)state;
    struct moe_route r;
    for (float beta = 0.5f; beta <= 1.0f; beta += 0.25f) {
        moe_router_topk_prune(L8, 8, 4, false, beta, &r, NULL);
        assert_true(r.n >= 1);
        assert_int_equal(r.expert[0], 3);
    }
    /* equal logits: p_j == beta * p_0 with beta 1 is not "below": kept */
    const float eq[4] = {1.0f, 1.0f, 0.0f, 0.0f};
    assert_int_equal(moe_router_topk_prune(eq, 4, 2, true, 1.0f, &r, NULL), 0);
    assert_int_equal(r.n, 2);
}

static void test_topk_greater_than_two_drops_the_tail(void **state)
{
    (void)state; /* top-4: experts 3, 5, 4, 0 with p ratios 1, .45, .22, .15 */
    double p[8];
    softmax(L8, 8, p);
    struct moe_route r;
    assert_int_equal(moe_router_topk_prune(L8, 8, 4, true, 0.3f, &r, NULL), 2);
    assert_int_equal(r.n, 2);
    assert_int_equal(r.expert[0], 3);
    assert_int_equal(r.expert[1], 5);
    assert_float_equal(r.weight[0] + r.weight[1], 1.0f, 1e-6);
    assert_float_equal(r.weight[1], p[5] / (p[3] + p[5]), 1e-6);
}

static void test_no_renorm_keeps_the_topk_mass(void **state)
{
    (void)state; /* Qwen2-MoE style: the kept weights sum to the top-k mass */
    double p[8];
    softmax(L8, 8, p);
    struct moe_route r;
    moe_router_topk_prune(L8, 8, 4, false, 0.3f, &r, NULL);
    double topk = p[3] + p[5] + p[4] + p[0];
    assert_int_equal(r.n, 2);
    assert_float_equal(r.weight[0] + r.weight[1], topk, 1e-6);
    assert_float_equal(r.weight[0] / r.weight[1], p[3] / p[5], 1e-5);
    /* nothing dropped: raw probabilities, untouched */
    moe_router_topk_prune(L8, 8, 4, false, 0.1f, &r, NULL);
    assert_int_equal(r.n, 4);
    assert_float_equal(r.weight[1], p[5], 1e-7);
}

static void test_topk_override_uses_fewer_experts(void **state)
{
    (void)state; /* a request's moe_top_k is just a smaller k */
    struct moe_route r;
    moe_router_topk_prune(L8, 8, 1, true, 0.0f, &r, NULL);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.expert[0], 3);
    assert_float_equal(r.weight[0], 1.0f, 0.0f);
}

static void test_stats_count_kept_and_pruned(void **state)
{
    (void)state;
    double p[8];
    softmax(L8, 8, p);
    struct moe_router_layer_stats st = {0};
    struct moe_route r;
    moe_router_topk_prune(L8, 8, 2, true, 0.9f, &r, &st); /* prunes one */
    moe_router_topk_prune(L8, 8, 2, true, 0.1f, &r, &st); /* keeps both */
    assert_int_equal(st.tokens, 2);
    assert_int_equal(st.kept, 3);
    assert_int_equal(st.pruned, 1);
    assert_float_equal(st.mass_topk, 2 * (p[3] + p[5]), 1e-9);
    assert_float_equal(st.mass_pruned, p[5], 1e-9);
}

static void test_layer_lists(void **state)
{
    (void)state;
    bool sel[8];
    char w[128];
    assert_int_equal(moe_router_parse_layers(" 2-4, 6 ", 8, sel, w, sizeof(w)), 0);
    bool want[8] = {false, false, true, true, true, false, true, false};
    assert_memory_equal(sel, want, sizeof(want));
    assert_int_equal(moe_router_parse_layers("", 8, sel, w, sizeof(w)), 0);
    assert_false(sel[2]);
    assert_int_equal(moe_router_parse_layers("2-9", 8, sel, w, sizeof(w)), -EINVAL);
    assert_non_null(strstr(w, "layer 9"));
    assert_int_equal(moe_router_parse_layers("5-3", 8, sel, w, sizeof(w)), -EINVAL);
    assert_int_equal(moe_router_parse_layers("2;3", 8, sel, w, sizeof(w)), -EINVAL);
    assert_int_equal(moe_router_parse_layers("x", 8, sel, w, sizeof(w)), -EINVAL);

    float beta[8] = {0};
    assert_int_equal(moe_router_parse_betas("2-3:0.4, 6:0.55", 8, beta, w, sizeof(w)), 0);
    assert_float_equal(beta[2], 0.4f, 0);
    assert_float_equal(beta[3], 0.4f, 0);
    assert_float_equal(beta[6], 0.55f, 0);
    assert_float_equal(beta[5], 0.0f, 0);
    assert_int_equal(moe_router_parse_betas("2:1.5", 8, beta, w, sizeof(w)), -EINVAL);
    assert_int_equal(moe_router_parse_betas("2", 8, beta, w, sizeof(w)), -EINVAL);
}

static void test_auto_layers_skip_first_two_and_last(void **state)
{
    (void)state;
    for (int32_t n = 1; n <= 64; n++) {
        bool sel[64];
        moe_router_prune_auto_layers(n, sel);
        int32_t count = 0;
        for (int32_t l = 0; l < n; l++)
            count += sel[l];
        if (n >= 4)
            assert_true(count >= 1);
        if (n >= 1)
            assert_false(sel[0] || sel[n - 1]);
        if (n >= 2)
            assert_false(sel[1]);
    }
    bool sel[4];
    moe_router_prune_auto_layers(4, sel);
    assert_true(sel[2]);
}

static void test_protect_keeps_the_most_important_tokens(void **state)
{
    (void)state; /* 100 tokens -> 2 protected: the largest ||h||_1 / (L - i) */
    enum { N = 100, D = 4 };
    float h[N][D], imp[N];
    int32_t pos[N];
    bool prot[N];
    for (int i = 0; i < N; i++) {
        pos[i] = 50 + i; /* a chunk: L = 150 */
        for (int d = 0; d < D; d++)
            h[i][d] = d % 2 ? -0.01f : 0.01f; /* ||h||_1 = 0.04 */
    }
    h[10][0] = 1000.0f; /* big enough to beat 1/(L - i) */
    /* the last token has L - i = 1: its small norm still ranks high */
    moe_router_protect(&h[0][0], D, pos, N, 0.02f, imp, prot);
    int count = 0;
    for (int i = 0; i < N; i++)
        count += prot[i];
    assert_int_equal(count, 2);
    assert_true(prot[10]);
    assert_true(prot[N - 1]);
    assert_float_equal(imp[N - 1], 0.04f, 1e-6);
    assert_float_equal(imp[0], 0.04f / 100, 1e-6);
    /* a decode token (n = 1) or a small chunk protects nobody */
    moe_router_protect(&h[0][0], D, pos, 49, 0.02f, imp, prot);
    for (int i = 0; i < 49; i++)
        assert_false(prot[i]);
}

/* Mixed: the protected tokens are not pruned, the others are (what the
 * model does per layer). */
static void test_protected_tokens_keep_their_experts(void **state)
{
    (void)state;
    enum { N = 50, D = 2 };
    float h[N][D], imp[N];
    int32_t pos[N];
    bool prot[N];
    for (int i = 0; i < N; i++) {
        pos[i] = i;
        h[i][0] = h[i][1] = 1.0f;
    }
    moe_router_protect(&h[0][0], D, pos, N, 0.02f, imp, prot); /* 1 token: the last */
    int32_t kept = 0;
    for (int i = 0; i < N; i++) {
        struct moe_route r;
        moe_router_topk_prune(L8, 8, 2, true, prot[i] ? 0.0f : 0.9f, &r, NULL);
        kept += r.n;
        assert_int_equal(r.n, prot[i] ? 2 : 1);
    }
    assert_true(prot[N - 1]);
    assert_int_equal(kept, N + 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_beta_zero_is_plain_topk),
        cmocka_unit_test(test_threshold_on_probabilities_before_renorm),
        cmocka_unit_test(test_never_the_first_expert),
        cmocka_unit_test(test_topk_greater_than_two_drops_the_tail),
        cmocka_unit_test(test_no_renorm_keeps_the_topk_mass),
        cmocka_unit_test(test_topk_override_uses_fewer_experts),
        cmocka_unit_test(test_stats_count_kept_and_pruned),
        cmocka_unit_test(test_layer_lists),
        cmocka_unit_test(test_auto_layers_skip_first_two_and_last),
        cmocka_unit_test(test_protect_keeps_the_most_important_tokens),
        cmocka_unit_test(test_protected_tokens_keep_their_experts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
