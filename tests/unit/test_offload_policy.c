/* Cache policies, the trace format and the simulator: each policy's victim
 * on hand-made sequences, LFRU keeping a hot key through a scan that flushes
 * LRU, Belady never beaten on random traces, traces read back as written, and
 * malformed lines named by file:line. */
#include "tests/unit/test.h"

#include <errno.h>

#include "common/common.h"
#include "offload/offload_policy.h"
#include "offload/offload_sim.h"
#include "offload/offload_trace.h"

static struct moe_cache_policy *make(enum moe_cache_policy_kind k, uint32_t n, const double *sc)
{
    struct moe_cache_policy *p;
    assert_int_equal(moe_cache_policy_create(k, n, sc, &p), 0);
    return p;
}

static void use(struct moe_cache_policy *p, uint32_t key, bool insert)
{
    moe_cache_policy_access(p, key);
    if (insert)
        moe_cache_policy_insert(p, key);
}

static void test_lru_evicts_the_least_recent_and_lfu_the_least_used(void **state)
{
    (void)state;
    struct moe_cache_policy *lru = make(MOE_CACHE_LRU, 8, NULL), *lfu = make(MOE_CACHE_LFU, 8, NULL);
    const uint32_t seq[] = {0, 1, 2, 0, 0, 1}; /* 0 thrice, 1 twice, 2 once, 2 least... */
    bool in[8] = {0};
    for (size_t i = 0; i < sizeof(seq) / sizeof(seq[0]); i++) {
        use(lru, seq[i], !in[seq[i]]);
        use(lfu, seq[i], !in[seq[i]]);
        in[seq[i]] = true;
    }
    assert_int_equal(moe_cache_policy_victim(lru, NULL, NULL), 2); /* last used first */
    assert_int_equal(moe_cache_policy_victim(lfu, NULL, NULL), 2); /* used once */
    use(lru, 2, false);
    assert_int_equal(moe_cache_policy_victim(lru, NULL, NULL), 0);
    use(lfu, 2, false);
    use(lfu, 2, false); /* 2: three uses, 1: two */
    assert_int_equal(moe_cache_policy_victim(lfu, NULL, NULL), 1);
    moe_cache_policy_remove(lfu, 1);
    assert_int_not_equal(moe_cache_policy_victim(lfu, NULL, NULL), 1);
    moe_cache_policy_free(lru);
    moe_cache_policy_free(lfu);
}

static bool not_zero(void *ctx, uint32_t key)
{
    (void)ctx;
    return key != 0;
}

static void test_victims_respect_what_the_caller_pins(void **state)
{
    (void)state;
    struct moe_cache_policy *p = make(MOE_CACHE_LRU, 4, NULL);
    use(p, 0, true);
    use(p, 1, true);
    assert_int_equal(moe_cache_policy_victim(p, not_zero, NULL), 1);
    moe_cache_policy_remove(p, 1);
    assert_int_equal(moe_cache_policy_victim(p, not_zero, NULL), -1);
    moe_cache_policy_free(p);
}

static void test_static_keeps_the_calibration_hot_set(void **state)
{
    (void)state;
    const double score[4] = {5, 1, 9, 3};
    struct moe_cache_policy *p = make(MOE_CACHE_STATIC, 4, score);
    for (uint32_t k = 0; k < 4; k++)
        use(p, k, true);
    use(p, 1, false); /* recency does not save it */
    assert_int_equal(moe_cache_policy_victim(p, NULL, NULL), 1);
    struct moe_cache_policy *q;
    assert_int_equal(moe_cache_policy_create(MOE_CACHE_STATIC, 4, NULL, &q), -EINVAL);
    moe_cache_policy_free(p);
}

static void test_policy_names_round_trip_and_bad_ones_are_named(void **state)
{
    (void)state;
    for (int k = 0; k < MOE_CACHE_POLICIES; k++) {
        enum moe_cache_policy_kind got;
        assert_int_equal(moe_cache_policy_parse(moe_cache_policy_name(k), &got), 0);
        assert_int_equal(got, k);
    }
    enum moe_cache_policy_kind got;
    assert_int_equal(moe_cache_policy_parse("arc", &got), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "arc"));
}

/* a trace file of lines; returns its path */
static const char *trace_file(const char *name, const char *body)
{
    static char path[600];
    snprintf(path, sizeof(path), "%s/%s", moe_test_tmpdir(), name);
    moe_test_write_file(path, body, strlen(body));
    return path;
}

static void test_lfru_keeps_a_hot_expert_through_a_scan_that_flushes_lru(void **state)
{
    (void)state;
    /* one layer, 8 experts, 3 slots: expert 0 every step, then a scan of
     * cold ones in pairs; LRU loses 0 to the scan, LFRU does not */
    char body[8192] = "# moed-trace 1 layers=1 experts=8\n";
    int step = 0;
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < 4; i++, step++)
            snprintf(body + strlen(body), sizeof(body) - strlen(body), "%d 0 0\n", step);
        for (int c = 1; c < 8; c += 2, step++)
            snprintf(body + strlen(body), sizeof(body) - strlen(body), "%d 0 %d %d\n", step, c,
                     c + 1 < 8 ? c + 1 : 1);
    }
    struct moe_trace t;
    assert_int_equal(moe_trace_read(trace_file("scan.trace", body), &t), 0);
    struct moe_sim_result lru, lfru, opt;
    assert_int_equal(moe_sim_run(&t, MOE_CACHE_LRU, 3, NULL, false, &lru), 0);
    assert_int_equal(moe_sim_run(&t, MOE_CACHE_LFRU, 3, NULL, false, &lfru), 0);
    assert_int_equal(moe_sim_run(&t, MOE_SIM_BELADY, 3, NULL, false, &opt), 0);
    assert_true(lfru.hit_rate > lru.hit_rate);
    assert_true(opt.hit_rate >= lfru.hit_rate);
    moe_trace_free(&t);
}

static uint64_t rng = 88172645463325252ull;
static uint32_t next_rand(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)rng;
}

static void test_belady_is_never_beaten_and_the_budget_never_exceeded(void **state)
{
    (void)state;
    for (int trial = 0; trial < 20; trial++) {
        char *body = malloc(1 << 16);
        strcpy(body, "# moed-trace 1 layers=3 experts=6\n");
        for (int step = 0; step < 150; step++)
            for (int l = 0; l < 3; l++) {
                uint32_t a = next_rand() % 6, b = (a + 1 + next_rand() % 5) % 6;
                if (next_rand() % 3 == 0) /* skewed: expert 0 is hot */
                    a = 0, b = b == 0 ? 1 : b;
                snprintf(body + strlen(body), (1 << 16) - strlen(body), "%d %d %u %u\n", step,
                         l, a, b);
            }
        struct moe_trace t;
        assert_int_equal(moe_trace_read(trace_file("rand.trace", body), &t), 0);
        free(body);
        double score[18];
        for (int k = 0; k < 18; k++)
            score[k] = k % 6 == 0 ? 10 : 1;
        for (uint32_t slots = 2; slots <= 12; slots += 5) {
            struct moe_sim_result opt, r;
            assert_int_equal(moe_sim_run(&t, MOE_SIM_BELADY, slots, NULL, false, &opt), 0);
            for (int p = 0; p < MOE_CACHE_POLICIES; p++) {
                assert_int_equal(moe_sim_run(&t, p, slots, score, false, &r), 0);
                assert_true(r.hit_rate <= opt.hit_rate + 1e-12);
                /* never more resident than slots: misses - evictions <= slots */
                assert_true(r.misses - r.evictions <= slots);
            }
        }
        moe_trace_free(&t);
    }
}

static void test_prefetched_guesses_turn_misses_into_hits_and_wrong_ones_count_as_waste(void **state)
{
    (void)state;
    /* two layers of 4 experts, 2 slots: layer 0 always needs expert 0; layer
     * 1 needs 1, 2, 3 in turn, each guessed while layer 0 runs, every third
     * guess wrong */
    char body[8192] = "# moed-trace 1 layers=2 experts=4\n";
    int right = 0, wrong = 0;
    for (int step = 0; step < 30; step++) {
        int need = 1 + step % 3, guess = step % 3 == 2 ? 1 : need;
        right += guess == need, wrong += guess != need;
        snprintf(body + strlen(body), sizeof(body) - strlen(body), "%d 0 0\np %d 1 %d\n%d 1 %d\n",
                 step, step, guess, step, need);
    }
    struct moe_trace t;
    assert_int_equal(moe_trace_read(trace_file("guess.trace", body), &t), 0);
    struct moe_sim_result plain, ahead;
    assert_int_equal(moe_sim_run(&t, MOE_CACHE_LRU, 2, NULL, false, &plain), 0);
    assert_int_equal(moe_sim_run(&t, MOE_CACHE_LRU, 2, NULL, true, &ahead), 0);
    assert_int_equal(plain.prefetched, 0);
    /* layer 1 never repeats back to back, so on demand alone it always misses */
    assert_int_equal(plain.misses, 30 + 1);
    assert_int_equal(ahead.prefetch_used, right);
    assert_int_equal(ahead.prefetched, right + wrong);
    assert_true(ahead.prefetch_wasted >= (uint64_t)wrong - 1); /* the last may stay */
    assert_int_equal(ahead.misses, 1 + wrong);
    assert_true(ahead.hit_rate > plain.hit_rate);
    /* reads count the prefetches too: one per access either way here */
    assert_true(ahead.reads_per_access > plain.reads_per_access - 1e-12);
    /* Belady needs no guesses */
    assert_int_equal(moe_sim_run(&t, MOE_SIM_BELADY, 2, NULL, true, &plain), -EINVAL);
    moe_trace_free(&t);
}

static void test_a_trace_reads_back_as_written_with_its_predictions(void **state)
{
    (void)state;
    char path[600];
    snprintf(path, sizeof(path), "%s/rt.trace", moe_test_tmpdir());
    struct moe_trace_writer *w;
    assert_int_equal(moe_trace_writer_open(path, 2, 4, &w), 0);
    const int32_t a[2] = {1, 3}, b[1] = {2};
    assert_int_equal(moe_trace_writer_access(w, 0, 0, a, 2), 0);
    assert_int_equal(moe_trace_writer_predict(w, 0, 1, a, 2), 0);
    assert_int_equal(moe_trace_writer_access(w, 0, 1, b, 1), 0);
    assert_int_equal(moe_trace_writer_close(w), 0);
    struct moe_trace t;
    assert_int_equal(moe_trace_read(path, &t), 0);
    assert_int_equal(t.layers, 2);
    assert_int_equal(t.experts, 4);
    assert_int_equal(t.n_ev, 3);
    assert_true(t.ev[1].predict);
    assert_int_equal(t.ev[2].layer, 1);
    assert_int_equal(t.experts_of[t.ev[2].first], 2);
    double recall, wasted;
    uint64_t n;
    moe_sim_prefetch(&t, &recall, &wasted, &n);
    assert_int_equal(n, 1);
    assert_true(recall == 0.0 && wasted == 1.0); /* predicted 1,3; needed 2 */
    moe_trace_free(&t);
}

static void test_malformed_trace_lines_are_named_by_file_and_line(void **state)
{
    (void)state;
    struct moe_trace t;
    const char *cases[][2] = {
        {"# moed-trace 1 layers=2 experts=4\n0 0 1\n0 5 1\n", ":3:"},
        {"# moed-trace 1 layers=2 experts=4\n0 0 9\n", ":2:"},
        {"# moed-trace 1 layers=2 experts=4\nx 0 1\n", ":2:"},
        {"not a trace\n", ":1:"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(moe_trace_read(trace_file("bad.trace", cases[i][0]), &t), -EINVAL);
        assert_non_null(strstr(moe_err_msg(), cases[i][1]));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lru_evicts_the_least_recent_and_lfu_the_least_used),
        cmocka_unit_test(test_victims_respect_what_the_caller_pins),
        cmocka_unit_test(test_static_keeps_the_calibration_hot_set),
        cmocka_unit_test(test_policy_names_round_trip_and_bad_ones_are_named),
        cmocka_unit_test(test_lfru_keeps_a_hot_expert_through_a_scan_that_flushes_lru),
        cmocka_unit_test(test_belady_is_never_beaten_and_the_budget_never_exceeded),
        cmocka_unit_test(test_prefetched_guesses_turn_misses_into_hits_and_wrong_ones_count_as_waste),
        cmocka_unit_test(test_a_trace_reads_back_as_written_with_its_predictions),
        cmocka_unit_test(test_malformed_trace_lines_are_named_by_file_and_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
