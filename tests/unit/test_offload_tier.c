/* The host tier under a real model: a tiny-moe pack served from a tier of a
 * quarter of its experts gives exactly the logits of the mapped pack; the
 * budget holds; begin/wait hands out the resident experts at once and the
 * others as they land; reads that fail or arrive corrupt fail that forward
 * with a message naming the expert, and the next one works; the trace is
 * written; a pack whose experts differ in size gets a slot class for each
 * size and still gives the mapped pack's logits. */
#include "tests/unit/test.h"

#include <errno.h>
#include <jansson.h>

#include "backend/backend.h"
#include "common/common.h"
#include "format/format_pack.h"
#include "model/model.h"
#include "offload/offload.h"
#include "offload/offload_trace.h"
#include "tests/unit/test_model_to_pack.h"

static char pack_path[512], mixed_path[512];
static const int32_t IDS[] = {1, 15, 27, 3, 40, 8, 11, 52, 9, 30, 2, 44, 17, 5, 60, 23};
#define N_IDS ((int32_t)(sizeof(IDS) / sizeof(IDS[0])))

/* every odd expert's matrices in q8_0: a pack with blobs of two sizes */
static struct moe_weight odd_ones_q8(int32_t l, int32_t e, const struct moe_weight *w,
                                     uint8_t *buf)
{
    (void)l;
    if (e % 2 == 0)
        return *w;
    const struct moe_dtype_traits *from = moe_dtype_traits(w->dtype),
                                  *q8 = moe_dtype_traits(MOE_DTYPE_Q8_0);
    size_t row = moe_dtype_row_bytes(MOE_DTYPE_Q8_0, w->cols);
    float *f = malloc((size_t)w->cols * sizeof(float));
    for (int64_t r = 0; r < w->rows; r++) {
        from->to_f32((const uint8_t *)w->data + (size_t)r * w->row_bytes, f, w->cols);
        q8->from_f32(f, buf + (size_t)r * row, w->cols);
    }
    free(f);
    return (struct moe_weight){MOE_DTYPE_Q8_0, w->rows, w->cols, row, buf};
}

static int setup(void **state)
{
    (void)state;
    snprintf(pack_path, sizeof(pack_path), "%s/tier.pack", moe_test_tmpdir());
    snprintf(mixed_path, sizeof(mixed_path), "%s/mixed.pack", moe_test_tmpdir());
    struct moe_model *m;
    if (moe_model_open(moe_test_path("models/tiny-moe"), &m) < 0)
        return -1;
    int rc = moe_test_write_pack(m, pack_path);
    if (rc == 0)
        rc = moe_test_write_pack_as(m, mixed_path, odd_ones_q8, "mixed");
    moe_model_free(m);
    return rc;
}

static size_t expert_bytes(const struct moe_model *m)
{
    size_t b = 0;
    const struct moe_pack *p = moe_model_pack(m);
    for (size_t i = 0; i < moe_pack_expert_count(p); i++)
        b += moe_pack_expert_at(p, i)->size;
    return b;
}

static struct moe_model *open_tiered_at(const char *path, double fraction,
                                        enum moe_cache_policy_kind pol, bool prefetch,
                                        const char *trace)
{
    struct moe_model *m;
    assert_int_equal(moe_model_open_flags(path, MOE_MODEL_OPEN_EXPERTS_ON_READ, &m), 0);
    struct moe_offload_opts oo = {.host_bytes = (size_t)(fraction * (double)expert_bytes(m)),
                                  .policy = pol, .numa = MOE_NUMA_LOCAL, .hugepages = true,
                                  .trace_path = trace};
    struct moe_offload *o;
    int rc = moe_offload_open(moe_model_pack(m), m->cfg.n_layers, m->cfg.n_experts,
                              m->cfg.top_k, &oo, &o);
    if (rc < 0)
        fprintf(stderr, "%s\n", moe_err_msg());
    assert_int_equal(rc, 0);
    assert_int_equal(moe_model_use_offload(m, o, prefetch), 0);
    return m;
}

static struct moe_model *open_tiered(double fraction, enum moe_cache_policy_kind pol,
                                     bool prefetch, const char *trace)
{
    return open_tiered_at(pack_path, fraction, pol, prefetch, trace);
}

/* token-by-token logits of IDS */
static float *decode_logits(const struct moe_model *m, int *rc_out)
{
    struct moe_pool *pool;
    struct moe_session *s;
    int32_t V = m->cfg.vocab;
    assert_int_equal(moe_pool_create(2, &pool), 0);
    assert_int_equal(moe_session_create(m, pool, 64, &s), 0);
    float *out = calloc((size_t)N_IDS * V, sizeof(float));
    int rc = 0;
    for (int32_t i = 0; i < N_IDS && rc == 0; i++)
        rc = moe_session_forward(s, &IDS[i], 1, out + (size_t)i * V, false);
    *rc_out = rc;
    moe_session_free(s);
    moe_pool_free(pool);
    return out;
}

/* decode_logits of the pack at path served from its mapping */
static float *mapped_logits(const char *path)
{
    struct moe_model *mapped;
    assert_int_equal(moe_model_open(path, &mapped), 0);
    int rc;
    float *want = decode_logits(mapped, &rc);
    assert_int_equal(rc, 0);
    moe_model_free(mapped);
    return want;
}

static void test_a_quarter_tier_gives_the_mapped_packs_logits_exactly(void **state)
{
    (void)state;
    float *want = mapped_logits(pack_path);
    int rc;
    for (int pol = MOE_CACHE_LRU; pol <= MOE_CACHE_LFRU; pol++)
        for (int pf = 0; pf <= 1; pf++) {
            struct moe_model *m = open_tiered(0.25, (enum moe_cache_policy_kind)pol, pf, NULL);
            float *got = decode_logits(m, &rc);
            assert_int_equal(rc, 0);
            assert_memory_equal(got, want, (size_t)N_IDS * m->cfg.vocab * sizeof(float));
            struct moe_offload_stats st;
            moe_offload_get_stats(moe_model_offload(m), &st);
            assert_true(st.misses > 0);    /* the tier really was too small for all */
            assert_true(st.evictions > 0);
            assert_true(st.arena_bytes <= (size_t)(0.25 * (double)expert_bytes(m)));
            assert_true(st.resident_bytes <= st.arena_bytes);
            if (pf)
                assert_true(st.prefetch_issued > 0);
            free(got);
            moe_model_free(m);
        }
    free(want);
}

static void test_experts_of_two_sizes_get_a_slot_class_each_and_the_same_logits(void **state)
{
    (void)state;
    float *want = mapped_logits(mixed_path);
    struct moe_model *m = open_tiered_at(mixed_path, 0.25, MOE_CACHE_LFRU, true, NULL);
    int rc;
    float *got = decode_logits(m, &rc);
    assert_int_equal(rc, 0);
    assert_memory_equal(got, want, (size_t)N_IDS * m->cfg.vocab * sizeof(float));
    struct moe_offload_stats st;
    moe_offload_get_stats(moe_model_offload(m), &st);
    size_t budget = (size_t)(0.25 * (double)expert_bytes(m));
    assert_int_equal(st.slot_classes, 2);
    assert_true(st.arena_bytes <= budget);
    assert_true(st.slots > budget / st.slot_bytes); /* more than slots all of the largest size */
    assert_true(st.misses > 0);
    free(got);
    free(want);
    moe_model_free(m);
}

static void test_a_budget_below_one_layers_experts_is_refused_naming_host_bytes(void **state)
{
    (void)state;
    struct moe_model *m;
    assert_int_equal(moe_model_open_flags(pack_path, MOE_MODEL_OPEN_EXPERTS_ON_READ, &m), 0);
    struct moe_offload_opts oo = {.host_bytes = expert_bytes(m) / 8, .policy = MOE_CACHE_LRU};
    struct moe_offload *o = NULL;
    assert_int_equal(moe_offload_open(moe_model_pack(m), m->cfg.n_layers, m->cfg.n_experts,
                                      m->cfg.top_k, &oo, &o), -EINVAL);
    assert_null(o);
    assert_non_null(strstr(moe_err_msg(), "host_bytes"));
    moe_model_free(m);
}

static void test_begin_hands_out_residents_at_once_and_wait_the_misses(void **state)
{
    (void)state;
    struct moe_model *m = open_tiered(0.25, MOE_CACHE_LRU, false, NULL);
    struct moe_offload *o = moe_model_offload(m);
    int32_t E = m->cfg.n_experts;
    bool need[64] = {0};
    const void *blobs[64], *b;
    assert_true(E <= 64 && E >= 3);
    need[0] = need[2] = true;
    assert_int_equal(moe_offload_begin(o, 1, need, blobs), 0); /* a cold tier: both on the way */
    assert_null(blobs[0]);
    assert_null(blobs[2]);
    assert_int_equal(moe_offload_wait(o, 1, &b), -EINVAL); /* not asked for */
    assert_non_null(strstr(moe_err_msg(), "layer 1 expert 1"));
    assert_int_equal(moe_offload_wait(o, 2, &b), 0);
    const void *second = b;
    assert_int_equal(moe_offload_wait(o, 0, &b), 0);
    const void *first = b;
    const struct moe_pack_expert *pe = moe_pack_find_expert(moe_model_pack(m), 1, 0);
    assert_memory_equal(first, pe->data, pe->size); /* the blob, read from the pack */
    assert_int_equal(moe_offload_begin(o, 1, need, blobs), 0); /* now both at hand */
    assert_ptr_equal(blobs[0], first);
    assert_ptr_equal(blobs[2], second);
    struct moe_offload_stats st;
    moe_offload_get_stats(o, &st);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.hits, 2);
    moe_model_free(m);
}

static void fault_fails_the_forward_then_recovers(const char *kind, const char *why)
{
    struct moe_model *m = open_tiered(0.25, MOE_CACHE_LRU, false, NULL);
    struct moe_offload *o = moe_model_offload(m);
    char spec[512] = "";
    for (int e = 0; e < m->cfg.n_experts; e++) /* more than the retries: every read fails */
        snprintf(spec + strlen(spec), sizeof(spec) - strlen(spec), "%s%s:0:%d:5", e ? "," : "",
                 kind, e);
    assert_int_equal(moe_offload_inject_faults(o, spec), 0);
    struct moe_pool *pool;
    struct moe_session *s;
    float *logits = malloc((size_t)m->cfg.vocab * sizeof(float));
    assert_int_equal(moe_pool_create(2, &pool), 0);
    assert_int_equal(moe_session_create(m, pool, 64, &s), 0);
    assert_int_equal(moe_session_forward(s, IDS, 1, logits, false), -EIO);
    assert_non_null(strstr(moe_err_msg(), "layer 0 expert"));
    assert_non_null(strstr(moe_err_msg(), why));
    spec[0] = 0; /* the disk heals */
    for (int e = 0; e < m->cfg.n_experts; e++)
        snprintf(spec + strlen(spec), sizeof(spec) - strlen(spec), "%s%s:0:%d:0", e ? "," : "",
                 kind, e);
    assert_int_equal(moe_offload_inject_faults(o, spec), 0);
    moe_session_reset(s);
    assert_int_equal(moe_session_forward(s, IDS, 1, logits, false), 0);
    moe_session_free(s);
    moe_pool_free(pool);
    free(logits);
    moe_model_free(m);
}

static void test_a_read_error_fails_that_forward_naming_the_expert(void **state)
{
    (void)state;
    fault_fails_the_forward_then_recovers("eio", "read error");
}

static void test_a_corrupt_blob_fails_that_forward_naming_the_expert(void **state)
{
    (void)state;
    fault_fails_the_forward_then_recovers("corrupt", "checksum");
}

static void test_the_trace_records_every_layers_access(void **state)
{
    (void)state;
    char path[600];
    snprintf(path, sizeof(path), "%s/t.trace", moe_test_tmpdir());
    struct moe_model *m = open_tiered(0.5, MOE_CACHE_LFRU, true, path);
    int rc;
    free(decode_logits(m, &rc));
    assert_int_equal(rc, 0);
    int32_t L = m->cfg.n_layers;
    moe_model_free(m); /* closes the trace */
    struct moe_trace t;
    assert_int_equal(moe_trace_read(path, &t), 0);
    size_t access = 0, predict = 0;
    for (size_t i = 0; i < t.n_ev; i++) {
        if (t.ev[i].predict)
            predict++;
        else
            access++;
        assert_true(t.ev[i].n >= 1 && t.ev[i].n <= 2); /* batch 1, top-2 */
    }
    assert_int_equal(access, (size_t)N_IDS * L);
    assert_int_equal(predict, (size_t)N_IDS * (L - 1)); /* no layer after the last */
    moe_trace_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_quarter_tier_gives_the_mapped_packs_logits_exactly),
        cmocka_unit_test(test_a_budget_below_one_layers_experts_is_refused_naming_host_bytes),
        cmocka_unit_test(test_experts_of_two_sizes_get_a_slot_class_each_and_the_same_logits),
        cmocka_unit_test(test_begin_hands_out_residents_at_once_and_wait_the_misses),
        cmocka_unit_test(test_a_read_error_fails_that_forward_naming_the_expert),
        cmocka_unit_test(test_a_corrupt_blob_fails_that_forward_naming_the_expert),
        cmocka_unit_test(test_the_trace_records_every_layers_access),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
