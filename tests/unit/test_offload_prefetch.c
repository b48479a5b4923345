/* The prefetch cost model: reads a guess ahead where that should shorten the
 * next layer's wait, holds back where the link is the bottleneck and the
 * guesses are poor, and learns from what it sees. */
#include "tests/unit/test.h"

#include <errno.h>
#include <string.h>

#include "common/common.h"
#include "offload/offload_prefetch.h"

/* 64 samples each: precision p (of 100 guesses), read time, compute gap */
static void learn(struct moe_prefetch_model *m, uint32_t right_of_100, double t_read, double gap)
{
    for (int i = 0; i < 64; i++) {
        moe_prefetch_model_outcome(m, 100, right_of_100);
        moe_prefetch_model_reads(m, 2 * t_read, 2);
        moe_prefetch_model_gap(m, gap);
        moe_prefetch_model_lookups(m, 9, 10);
    }
}

static void test_guesses_are_read_until_the_model_has_seen_enough(void **state)
{
    (void)state;
    struct moe_prefetch_model m;
    moe_prefetch_model_init(&m);
    assert_true(moe_prefetch_model_worth(&m, 2, 0));
    for (int i = 0; i < 4; i++) /* all wrong, but only four guesses */
        moe_prefetch_model_outcome(&m, 2, 0);
    assert_true(moe_prefetch_model_worth(&m, 2, 0));
    assert_false(moe_prefetch_model_worth(&m, 0, 0)); /* nothing to read */
}

static void test_reads_hidden_behind_compute_are_always_worth_it(void **state)
{
    (void)state;
    struct moe_prefetch_model m;
    moe_prefetch_model_init(&m);
    learn(&m, 30, 0.001, 0.005); /* two reads (2 ms) fit in a 5 ms gap */
    assert_true(m.p > 0.29 && m.p < 0.31);
    assert_true(moe_prefetch_model_worth(&m, 2, 0));
}

static void test_poor_guesses_on_a_slow_link_are_not_read(void **state)
{
    (void)state;
    struct moe_prefetch_model m;
    moe_prefetch_model_init(&m);
    /* 5 ms a read, 2 ms of compute to hide behind, 60% right: two reads
     * ahead leave 8 ms of waiting, reading on demand 6 ms */
    learn(&m, 60, 0.005, 0.002);
    assert_false(moe_prefetch_model_worth(&m, 2, 0));
    /* one guess: 3 ms ahead against 3 ms on demand, still no gain */
    assert_false(moe_prefetch_model_worth(&m, 1, 0));
    /* the guesses get good: 95% right, one read ahead now saves time */
    learn(&m, 95, 0.005, 0.002);
    assert_true(moe_prefetch_model_worth(&m, 1, 0));
    assert_true(moe_prefetch_model_worth(&m, 2, 0)); /* 8 ms against 9.5 ms */
}

static void test_a_wrong_guess_that_evicts_a_resident_expert_costs_a_later_read(void **state)
{
    (void)state;
    struct moe_prefetch_model m;
    moe_prefetch_model_init(&m);
    /* reads hide behind compute (1 ms each, 3 ms gap), guesses 20% right,
     * 90% of lookups hit: into free slots the reads cost nothing */
    learn(&m, 20, 0.001, 0.003);
    assert_true(moe_prefetch_model_worth(&m, 2, 0));
    /* evicting for them: 0.8 * 2 * 0.9 * 1 ms = 1.44 ms against 0.4 ms saved */
    assert_false(moe_prefetch_model_worth(&m, 2, 2));
}

static void test_averages_follow_a_change_of_link(void **state)
{
    (void)state;
    struct moe_prefetch_model m;
    moe_prefetch_model_init(&m);
    learn(&m, 50, 0.010, 0.001); /* slow: not worth it */
    assert_false(moe_prefetch_model_worth(&m, 2, 0));
    learn(&m, 50, 0.0002, 0.001); /* the pack moved to a fast device: */
    learn(&m, 50, 0.0002, 0.001); /* within a few tokens' reads */
    assert_true(m.t_read < 0.001);
    assert_true(moe_prefetch_model_worth(&m, 2, 0));
}

static void test_modes_parse_and_bad_ones_are_named(void **state)
{
    (void)state;
    enum moe_prefetch_mode md;
    assert_int_equal(moe_prefetch_mode_parse("auto", &md), 0);
    assert_int_equal(md, MOE_PREFETCH_AUTO);
    assert_string_equal(moe_prefetch_mode_name(MOE_PREFETCH_NO), "no");
    assert_int_equal(moe_prefetch_mode_parse("sometimes", &md), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "sometimes"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_guesses_are_read_until_the_model_has_seen_enough),
        cmocka_unit_test(test_reads_hidden_behind_compute_are_always_worth_it),
        cmocka_unit_test(test_poor_guesses_on_a_slow_link_are_not_read),
        cmocka_unit_test(test_a_wrong_guess_that_evicts_a_resident_expert_costs_a_later_read),
        cmocka_unit_test(test_averages_follow_a_change_of_link),
        cmocka_unit_test(test_modes_parse_and_bad_ones_are_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
