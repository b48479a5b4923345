/* engine server: faults stay with the sequences they touch. A tiny-moe pack
 * served from the host tier, with one expert's reads arriving corrupt: in a
 * batch of requests, those routed to that expert fail naming it, every other
 * one gets exactly the text it gets alone, and the KV pool is whole
 * afterwards. A step that fails as a whole (more failed experts than the
 * forward keeps apart) fails every sequence in it, prompt chunks included,
 * gives their cache back, and the engine serves the next request. */
#include "tests/unit/test.h"

#include <errno.h>
#include <unistd.h>

#include "backend/backend.h"
#include "common/common.h"
#include "engine/engine_server.h"
#include "format/format_pack.h"
#include "model/model.h"
#include "offload/offload.h"
#include "offload/offload_trace.h"
#include "tests/unit/test_model_to_pack.h"

static char pack_path[512];

/* short prompts: few enough tokens that some avoid a given expert; the last
 * one is longer than a step's budget (64), so it is prefilled in chunks */
static const char *const PROMPTS[] = {
    "ROMEO:", "JULIET:", "First Citizen:", "KING HENRY VI:", "To be, or not", "What",
    "O God", "Good my lord", "Come", "Away", "Speak", "Now", "Why", "How now", "Nay",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. "
    "resolved.\n\nFirst Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.",
};
#define N_PROMPTS ((int)(sizeof(PROMPTS) / sizeof(PROMPTS[0])))
#define N_TOK 8

static int setup(void **state)
{
    (void)state;
    snprintf(pack_path, sizeof(pack_path), "%s/faults.pack", moe_test_tmpdir());
    struct moe_model *m;
    if (moe_model_open(moe_test_path("models/tiny-moe"), &m) < 0)
        return -1;
    int rc = moe_test_write_pack(m, pack_path);
    moe_model_free(m);
    return rc;
}

/* the pack with every expert in its host tier's reach (all fit); trace:
 * where to record the tier's accesses, or NULL */
static struct moe_model *open_tiered(const char *trace)
{
    struct moe_model *m;
    assert_int_equal(moe_model_open_flags(pack_path, MOE_MODEL_OPEN_EXPERTS_ON_READ, &m), 0);
    const struct moe_pack *p = moe_model_pack(m);
    size_t bytes = 0;
    for (size_t i = 0; i < moe_pack_expert_count(p); i++)
        bytes += moe_pack_expert_at(p, i)->size;
    struct moe_offload_opts oo = {.host_bytes = bytes, .policy = MOE_CACHE_LRU,
                                  .numa = MOE_NUMA_OFF, .trace_path = trace};
    struct moe_offload *o;
    assert_int_equal(moe_offload_open(p, m->cfg.n_layers, m->cfg.n_experts, m->cfg.top_k, &oo,
                                      &o), 0);
    assert_int_equal(moe_model_use_offload(m, o, false), 0);
    return m;
}

/* stall: the engine's first busy step sleeps that long (MOED_TEST_ENGINE_STALL),
 * so that every request submitted meanwhile is in the batch that follows */
static struct moe_engine *engine(struct moe_model *m, struct moe_pool *pool, const char *stall)
{
    struct moe_engine_limits l = {.max_seqs = N_PROMPTS, .max_batch_tokens = 64,
                                  .max_ctx = 256, .max_queue = 32,
                                  .max_tokens_default = N_TOK, .chat_template = MOE_CHAT_CHATML};
    struct moe_engine *e;
    if (stall)
        setenv("MOED_TEST_ENGINE_STALL", stall, 1);
    assert_int_equal(moe_engine_create(m, pool, &l, &e), 0);
    unsetenv("MOED_TEST_ENGINE_STALL");
    return e;
}

static struct moe_request *completion(const char *prompt)
{
    struct moe_request *r = calloc(1, sizeof(*r));
    r->kind = MOE_REQ_COMPLETION;
    r->prompt = strdup(prompt);
    r->max_tokens = N_TOK;
    r->ignore_eos = true;
    moe_sampling_defaults(&r->sampling);
    r->sampling.temperature = 0;
    return r;
}

/* every event of j; the text, the terminal event in *end; releases j */
static char *collect(struct moe_job *j, struct moe_event *end)
{
    size_t cap = 1 << 14, n = 0;
    char *out = calloc(1, cap);
    for (;;) {
        struct moe_event ev;
        assert_int_equal(moe_job_next(j, &ev, 60000), 0);
        if (ev.kind != MOE_EV_TEXT) {
            *end = ev;
            moe_job_release(j);
            return out;
        }
        assert_true(n + ev.len < cap);
        memcpy(out + n, ev.text, ev.len);
        n += ev.len;
    }
}

/* every prompt at once (one batch behind the stall): texts[i] and ends[i] */
static void run_batch(struct moe_model *m, struct moe_pool *pool, char **texts,
                      struct moe_event *ends, struct moe_engine_stats *st)
{
    struct moe_engine *e = engine(m, pool, "0.3");
    struct moe_job *jobs[N_PROMPTS];
    for (int i = 0; i < N_PROMPTS; i++)
        assert_int_equal(moe_engine_submit(e, completion(PROMPTS[i]), &jobs[i]), 0);
    for (int i = 0; i < N_PROMPTS; i++)
        texts[i] = collect(jobs[i], &ends[i]);
    /* a sequence's cache goes back just after its last event: wait for it */
    for (int k = 0; k < 300; k++) {
        moe_engine_get_stats(e, st);
        if (st->kv_blocks_used == 0 && st->kv_blocks_reserved == 0)
            break;
        usleep(10000);
    }
    moe_engine_free(e);
}

static void inject(struct moe_model *m, int32_t l, int32_t x, int count)
{
    char spec[64];
    snprintf(spec, sizeof(spec), "corrupt:%d:%d:%d", l, x, count);
    assert_int_equal(moe_offload_inject_faults(moe_model_offload(m), spec), 0);
}

static void test_a_corrupt_expert_fails_only_the_sequences_routed_to_it(void **state)
{
    (void)state;
    struct moe_pool *pool;
    assert_int_equal(moe_pool_create(2, &pool), 0);
    /* alone on the sound pack, with a trace: the texts to match, and the
     * experts each prompt's steps use */
    char trace[600], *want[N_PROMPTS];
    snprintf(trace, sizeof(trace), "%s/faults.trace", moe_test_tmpdir());
    uint64_t from[N_PROMPTS + 1];
    struct moe_model *m = open_tiered(trace);
    struct moe_engine *e = engine(m, pool, NULL);
    struct moe_engine_stats st;
    for (int i = 0; i < N_PROMPTS; i++) {
        struct moe_job *j;
        struct moe_event end;
        moe_engine_get_stats(e, &st);
        from[i] = st.steps;
        assert_int_equal(moe_engine_submit(e, completion(PROMPTS[i]), &j), 0);
        want[i] = collect(j, &end);
        assert_int_equal(end.kind, MOE_EV_DONE);
    }
    moe_engine_get_stats(e, &st);
    from[N_PROMPTS] = st.steps;
    moe_engine_free(e);
    int32_t L = m->cfg.n_layers, X = m->cfg.n_experts;
    moe_model_free(m); /* the trace is complete */
    struct moe_trace t;
    assert_int_equal(moe_trace_read(trace, &t), 0);
    bool *uses = calloc((size_t)N_PROMPTS * L * X, sizeof(bool)); /* [prompt][l][x] */
    for (size_t k = 0; k < t.n_ev; k++) {
        const struct moe_trace_event *ev = &t.ev[k];
        int i = 0;
        while (i < N_PROMPTS && (uint64_t)ev->step >= from[i + 1])
            i++;
        assert_true(i < N_PROMPTS && !ev->predict);
        for (uint32_t a = 0; a < ev->n; a++)
            uses[((size_t)i * L + ev->layer) * X + t.experts_of[ev->first + a]] = true;
    }
    moe_trace_free(&t);
    /* the expert that splits the prompts most evenly, made unreadable for
     * good (every read of it arrives corrupt) */
    int best = -1, best_split = -1;
    for (int lx = 0; lx < L * X; lx++) {
        int n = 0;
        for (int i = 0; i < N_PROMPTS; i++)
            n += uses[(size_t)i * L * X + lx];
        int split = MOE_MIN(n, N_PROMPTS - n);
        if (split > best_split) {
            best = lx;
            best_split = split;
        }
    }
    assert_true(best_split >= 3);
    int bad_l = best / X, bad_x = best % X, n_bad = 0;
    bool bad[N_PROMPTS];
    for (int i = 0; i < N_PROMPTS; i++)
        n_bad += bad[i] = uses[(size_t)i * L * X + best];
    free(uses);
    m = open_tiered(NULL);
    inject(m, bad_l, bad_x, 1 << 30);
    char name[64];
    snprintf(name, sizeof(name), "layer %d expert %d:", bad_l, bad_x);
    /* alone: the trace's users fail naming it, the others give their text */
    e = engine(m, pool, NULL);
    for (int i = 0; i < N_PROMPTS; i++) {
        struct moe_job *j;
        struct moe_event end;
        assert_int_equal(moe_engine_submit(e, completion(PROMPTS[i]), &j), 0);
        char *text = collect(j, &end);
        assert_int_equal(end.kind, bad[i] ? MOE_EV_ERROR : MOE_EV_DONE);
        if (bad[i])
            assert_non_null(strstr(end.message, name));
        else
            assert_string_equal(text, want[i]);
        free(text);
    }
    moe_engine_free(e);

    char *texts[N_PROMPTS];
    struct moe_event ends[N_PROMPTS];
    run_batch(m, pool, texts, ends, &st);
    for (int i = 0; i < N_PROMPTS; i++) {
        if (bad[i]) {
            assert_int_equal(ends[i].kind, MOE_EV_ERROR);
            assert_int_equal(ends[i].status, 500);
            assert_non_null(strstr(ends[i].message, name));
            assert_non_null(strstr(ends[i].message, "checksum"));
        } else { /* a bystander: as alone, to the bit */
            assert_int_equal(ends[i].kind, MOE_EV_DONE);
            assert_int_equal(ends[i].completion_tokens, N_TOK);
            assert_string_equal(texts[i], want[i]);
        }
        free(texts[i]);
        free(want[i]);
    }
    assert_int_equal(st.requests_failed, n_bad);
    assert_int_equal(st.requests_done, N_PROMPTS - n_bad);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_int_equal(st.kv_blocks_reserved, 0);
    moe_pool_free(pool);
    moe_model_free(m);
}

static void test_a_step_that_fails_whole_fails_its_sequences_and_frees_their_cache(void **state)
{
    (void)state;
    struct moe_model *m = open_tiered(NULL);
    struct moe_pool *pool;
    assert_int_equal(moe_pool_create(2, &pool), 0);
    /* half of layer 0's experts and all of layer 1's: a row that gets past
     * layer 0 fails at layer 1, and together they fail more experts in one
     * step than the forward keeps apart (MOE_FORWARD_MAX_FAULTS) */
    for (int32_t x = 0; x < m->cfg.n_experts; x++) {
        if (x < m->cfg.n_experts / 2)
            inject(m, 0, x, 1 << 30);
        inject(m, 1, x, 1 << 30);
    }
    char *texts[N_PROMPTS];
    struct moe_event ends[N_PROMPTS];
    struct moe_engine_stats st;
    run_batch(m, pool, texts, ends, &st);
    int whole = 0;
    for (int i = 0; i < N_PROMPTS; i++) {
        assert_int_equal(ends[i].kind, MOE_EV_ERROR);
        assert_int_equal(ends[i].status, 500);
        assert_non_null(strstr(ends[i].message, "expert"));
        whole += strstr(ends[i].message, "experts failed in one step") != NULL;
        assert_string_equal(texts[i], ""); /* not a token from a failed row */
        free(texts[i]);
    }
    assert_true(whole > 0);
    assert_int_equal(st.requests_failed, N_PROMPTS);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_int_equal(st.kv_blocks_reserved, 0);
    /* the disk heals: the long prompt, chunked, gives what the mapped pack gives */
    for (int32_t x = 0; x < m->cfg.n_experts; x++) {
        inject(m, 0, x, 0);
        inject(m, 1, x, 0);
    }
    struct moe_engine *e = engine(m, pool, NULL);
    struct moe_job *j;
    struct moe_event end;
    assert_int_equal(moe_engine_submit(e, completion(PROMPTS[N_PROMPTS - 1]), &j), 0);
    char *text = collect(j, &end);
    assert_int_equal(end.kind, MOE_EV_DONE);
    moe_engine_free(e);
    struct moe_model *mapped;
    assert_int_equal(moe_model_open(pack_path, &mapped), 0);
    e = engine(mapped, pool, NULL);
    assert_int_equal(moe_engine_submit(e, completion(PROMPTS[N_PROMPTS - 1]), &j), 0);
    char *want = collect(j, &end);
    assert_int_equal(end.kind, MOE_EV_DONE);
    assert_string_equal(text, want);
    moe_engine_free(e);
    moe_model_free(mapped);
    free(text);
    free(want);
    moe_pool_free(pool);
    moe_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_corrupt_expert_fails_only_the_sequences_routed_to_it),
        cmocka_unit_test(test_a_step_that_fails_whole_fails_its_sequences_and_frees_their_cache),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
