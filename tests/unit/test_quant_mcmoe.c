/* MC-MoE bit allocation: the solver's optimum is the brute-force optimum,
 * the constraints hold, and a 64-expert layer solves well within a second. */
#include "tests/unit/test.h"

#include <errno.h>
#include <math.h>
#include <time.h>

#include "common/common.h"
#include "quant/quant_mcmoe.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

/* costs shaped like MC-MoE's: loss falls with bits, scaled by importance */
static void random_costs(int n, double *cost)
{
    for (int e = 0; e < n; e++) {
        double imp = pow(rnd(), 3.0) + 1e-6, l1 = 1.0 + rnd(), l2 = l1 * (0.2 + 0.5 * rnd());
        double l3 = l2 * (0.1 + 0.5 * rnd());
        cost[e * 3] = imp * l1;
        cost[e * 3 + 1] = imp * l2;
        cost[e * 3 + 2] = imp * l3;
    }
}

static double brute(int n, const double *cost, int budget)
{
    double best = INFINITY;
    int total = 1;
    for (int i = 0; i < n; i++)
        total *= 3;
    for (int code = 0; code < total; code++) {
        int c = code, sum = 0, has3 = 0, has2 = 0;
        double v = 0;
        for (int e = 0; e < n; e++, c /= 3) {
            int b = c % 3 + 1;
            sum += b;
            has3 |= b == 3;
            has2 |= b == 2;
            v += cost[e * 3 + b - 1];
        }
        if (sum <= budget && has3 && has2 && v < best)
            best = v;
    }
    return best;
}

static void check_solution(int n, const double *cost, int budget, const uint8_t *bits, double got)
{
    int sum = 0, has3 = 0, has2 = 0;
    double v = 0;
    for (int e = 0; e < n; e++) {
        assert_in_range(bits[e], 1, 3);
        sum += bits[e];
        has3 |= bits[e] == 3;
        has2 |= bits[e] == 2;
        v += cost[e * 3 + bits[e] - 1];
    }
    assert_true(sum <= budget);
    assert_true(has3 && has2);
    assert_true(fabs(v - got) <= 1e-12 * fmax(1.0, fabs(v)));
}

static void test_solver_optimum_equals_brute_force_on_random_layers(void **state)
{
    (void)state;
    double cost[10 * 3];
    uint8_t bits[10];
    for (int trial = 0; trial < 300; trial++) {
        int n = 2 + trial % 9;                              /* 2..10 experts */
        int budget = 5 + (n - 2) + (int)(rnd() * (2 * n)); /* feasible, tight to loose */
        random_costs(n, cost);
        double want = brute(n, cost, budget), got, got_dp;
        assert_int_equal(moe_mcmoe_allocate(n, cost, budget, bits, &got), 0);
        check_solution(n, cost, budget, bits, got);
        assert_true(fabs(got - want) <= 1e-12 * fmax(1.0, want));
        assert_int_equal(moe_mcmoe_allocate_dp(n, cost, budget, bits, &got_dp), 0);
        check_solution(n, cost, budget, bits, got_dp);
        assert_true(fabs(got_dp - want) <= 1e-12 * fmax(1.0, want));
    }
}

static void test_64_and_256_experts_solve_within_a_second(void **state)
{
    (void)state;
    enum { N = 256 };
    static double cost[N * 3];
    static uint8_t bits[N];
    for (int n = 64; n <= N; n *= 4) {
        random_costs(n, cost);
        double t0 = moe_now_s(), got;
        assert_int_equal(moe_mcmoe_allocate(n, cost, (int)(2.5 * n), bits, &got), 0);
        double dt = moe_now_s() - t0;
        check_solution(n, cost, (int)(2.5 * n), bits, got);
        print_message("  %d experts: %.4f s\n", n, dt);
        assert_true(dt < 1.0);
    }
}

static void test_a_budget_too_small_for_the_constraints_is_refused(void **state)
{
    (void)state;
    double cost[8 * 3] = {0};
    uint8_t bits[8];
    assert_int_equal(moe_mcmoe_allocate(8, cost, 10, bits, NULL), -EINVAL); /* needs 11 */
    assert_non_null(strstr(moe_err_msg(), "needs 11"));
    assert_int_equal(moe_mcmoe_allocate(8, cost, 11, bits, NULL), 0);
    assert_int_equal(moe_mcmoe_allocate(1, cost, 3, bits, NULL), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_solver_optimum_equals_brute_force_on_random_layers),
        cmocka_unit_test(test_64_and_256_experts_solve_within_a_second),
        cmocka_unit_test(test_a_budget_too_small_for_the_constraints_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
