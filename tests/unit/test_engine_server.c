/* engine server: continuous batching over the real tiny model. Concurrent
 * greedy requests get exactly what each would get alone; cancellation,
 * limits, timeouts and draining behave. */
#include "tests/unit/test.h"

#include <errno.h>
#include <jansson.h>

#include "backend/backend.h"
#include "common/common.h"
#include "engine/engine_server.h"
#include "model/model.h"

struct fixture {
    struct moe_model *m;
    struct moe_pool *pool;
    struct moe_engine *e;
    json_t *ref; /* reference.json */
};

static struct moe_engine_limits limits(void)
{
    struct moe_engine_limits l = {.max_seqs = 3, .max_batch_tokens = 16, .max_ctx = 256,
                                  .max_queue = 8, .max_tokens_default = 16,
                                  .chat_template = MOE_CHAT_CHATML};
    return l;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_int_equal(moe_model_open(moe_test_path("models/tiny-moe"), &f->m), 0);
    assert_int_equal(moe_pool_create(2, &f->pool), 0);
    struct moe_engine_limits l = limits();
    assert_int_equal(moe_engine_create(f->m, f->pool, &l, &f->e), 0);
    f->ref = json_load_file(moe_test_path("models/tiny-moe/reference.json"), 0, NULL);
    assert_non_null(f->ref);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    moe_engine_free(f->e);
    moe_pool_free(f->pool);
    moe_model_free(f->m);
    json_decref(f->ref);
    free(f);
    return 0;
}

static struct moe_request *completion(const char *prompt, int max_tokens)
{
    struct moe_request *r = calloc(1, sizeof(*r));
    r->kind = MOE_REQ_COMPLETION;
    r->prompt = strdup(prompt);
    r->max_tokens = max_tokens;
    moe_sampling_defaults(&r->sampling);
    r->sampling.temperature = 0;
    return r;
}

/* Reads every event; returns the text, fills the terminal event. */
static char *collect(struct moe_job *j, struct moe_event *end)
{
    size_t cap = 1 << 16, n = 0;
    char *out = calloc(1, cap);
    for (;;) {
        struct moe_event ev;
        assert_int_equal(moe_job_next(j, &ev, 30000), 0);
        if (ev.kind == MOE_EV_TEXT) {
            assert_true(n + ev.len < cap);
            memcpy(out + n, ev.text, ev.len);
            n += ev.len;
            continue;
        }
        *end = ev;
        return out;
    }
}

static void test_concurrent_greedy_requests_match_reference(void **state)
{
    struct fixture *f = *state;
    json_t *prompts = json_object_get(f->ref, "prompts");
    size_t np = json_array_size(prompts);
    /* 2 x 4 requests, 3 slots: queueing, chunked prefill (16-token budget)
     * and mixed decode/prefill steps all happen */
    struct moe_job *jobs[8];
    for (size_t i = 0; i < 8; i++) {
        json_t *p = json_array_get(prompts, i % np);
        int n = (int)json_array_size(json_object_get(p, "greedy_ids"));
        struct moe_request *r = completion(json_string_value(json_object_get(p, "text")), n);
        assert_int_equal(moe_engine_submit(f->e, r, &jobs[i]), 0);
    }
    for (size_t i = 0; i < 8; i++) {
        json_t *p = json_array_get(prompts, i % np);
        struct moe_event end;
        char *text = collect(jobs[i], &end);
        assert_int_equal(end.kind, MOE_EV_DONE);
        assert_string_equal(end.finish_reason, "length");
        assert_int_equal(end.completion_tokens, json_array_size(json_object_get(p, "greedy_ids")));
        assert_int_equal(end.prompt_tokens, json_array_size(json_object_get(p, "ids")));
        assert_string_equal(text, json_string_value(json_object_get(p, "greedy_text")));
        free(text);
        moe_job_release(jobs[i]);
    }
    struct moe_engine_stats st;
    moe_engine_get_stats(f->e, &st);
    assert_int_equal(st.requests_done, 8);
    assert_int_equal(st.running, 0);
    assert_int_equal(st.queue_depth, 0);
}

static void test_stop_string_and_eos(void **state)
{
    struct fixture *f = *state;
    struct moe_request *r = completion("ROMEO:", 32);
    r->stop[0] = strdup("boot");
    r->n_stop = 1;
    struct moe_job *j;
    assert_int_equal(moe_engine_submit(f->e, r, &j), 0);
    struct moe_event end;
    char *text = collect(j, &end);
    assert_string_equal(end.finish_reason, "stop");
    assert_string_equal(text, "\nAh, I'll not be a ");
    free(text);
    moe_job_release(j);
}

static void test_cancelled_job_frees_its_slot(void **state)
{
    struct fixture *f = *state;
    struct moe_request *r = completion("First Citizen:", 200);
    struct moe_job *j;
    assert_int_equal(moe_engine_submit(f->e, r, &j), 0);
    struct moe_event ev;
    assert_int_equal(moe_job_next(j, &ev, 30000), 0);
    assert_int_equal(ev.kind, MOE_EV_TEXT);
    moe_job_cancel(j);
    do
        assert_int_equal(moe_job_next(j, &ev, 30000), 0);
    while (ev.kind == MOE_EV_TEXT);
    assert_int_equal(ev.kind, MOE_EV_DONE);
    assert_string_equal(ev.finish_reason, "cancelled");
    assert_true(ev.completion_tokens < 200);
    moe_job_release(j);
    struct moe_engine_stats st;
    moe_engine_get_stats(f->e, &st);
    assert_int_equal(st.running, 0);
}

static void test_prompt_longer_than_context_is_an_error(void **state)
{
    struct fixture *f = *state;
    char *long_prompt = malloc(4096);
    memset(long_prompt, 'x', 4095); /* one token per x: 4095 > 256 */
    long_prompt[4095] = 0;
    struct moe_job *j;
    assert_int_equal(moe_engine_submit(f->e, completion(long_prompt, 4), &j), 0);
    free(long_prompt);
    struct moe_event end;
    char *text = collect(j, &end);
    assert_int_equal(end.kind, MOE_EV_ERROR);
    assert_int_equal(end.status, 400);
    assert_non_null(strstr(end.message, "the context holds 256"));
    free(text);
    moe_job_release(j);
}

static void test_full_queue_refuses(void **state)
{
    struct fixture *f = *state;
    struct moe_job *jobs[32];
    int ok = 0, again = 0;
    for (int i = 0; i < 32; i++) {
        struct moe_request *r = completion("KING HENRY VI:", 64);
        int rc = moe_engine_submit(f->e, r, &jobs[ok]);
        if (rc == 0) {
            ok++;
        } else {
            assert_int_equal(rc, -EAGAIN);
            assert_non_null(strstr(moe_err_msg(), "queue is full"));
            moe_request_free(r);
            again++;
        }
    }
    assert_true(ok <= 3 + 8); /* slots + queue */
    assert_true(again >= 32 - 11);
    for (int i = 0; i < ok; i++) {
        moe_job_cancel(jobs[i]);
        struct moe_event end;
        free(collect(jobs[i], &end));
        assert_int_equal(end.kind, MOE_EV_DONE);
        moe_job_release(jobs[i]);
    }
}

static void test_request_timeout(void **state)
{
    struct fixture *f = *state;
    struct moe_request *r = completion("ROMEO:", 200);
    r->timeout_s = 0.02;
    struct moe_job *j;
    assert_int_equal(moe_engine_submit(f->e, r, &j), 0);
    struct moe_event end;
    free(collect(j, &end));
    assert_int_equal(end.kind, MOE_EV_DONE);
    assert_string_equal(end.finish_reason, "timeout");
    moe_job_release(j);
}

static void test_drain_finishes_work_then_refuses(void **state)
{
    struct fixture *f = *state;
    struct moe_job *j;
    assert_int_equal(moe_engine_submit(f->e, completion("To be, or not to be", 8), &j), 0);
    moe_engine_drain(f->e, 30);
    struct moe_event end;
    char *text = collect(j, &end);
    assert_string_equal(end.finish_reason, "length"); /* finished, not cancelled */
    assert_int_equal(end.completion_tokens, 8);
    free(text);
    moe_job_release(j);
    struct moe_request *r = completion("x", 1);
    assert_int_equal(moe_engine_submit(f->e, r, &j), -ESHUTDOWN);
    moe_request_free(r);
}

/* A later choice of an n > 1 request admitted after the first one's prompt
 * is in forks that cache, cut before the last prompt token, and gives what
 * it gives alone (as under load, when the choices' submissions straggle) */
static void test_late_choice_forks_the_prompt(void **state)
{
    struct fixture *f = *state;
    const char *prompt = "First Citizen:\nBefore we proceed any further, hear me speak. "
                         "All: Speak, speak. First Citizen: You are all resolved rather to die "
                         "than to famish?";
    struct moe_request *lead = completion(prompt, 48), *late = completion(prompt, 12);
    lead->sampling.temperature = late->sampling.temperature = 1.0f;
    lead->sampling.seed = 5, late->sampling.seed = 6;
    lead->share_group = late->share_group = 7;
    struct moe_request *alone = moe_request_clone(late);
    alone->share_group = 0;
    struct moe_job *jl, *jf, *ja;
    assert_int_equal(moe_engine_submit(f->e, lead, &jl), 0);
    struct moe_event ev;
    do /* the first text: its prompt is in */
        assert_int_equal(moe_job_next(jl, &ev, 30000), 0);
    while (ev.kind == MOE_EV_TEXT && ev.len == 0);
    assert_int_equal(ev.kind, MOE_EV_TEXT);
    struct moe_engine_stats before, after;
    moe_engine_get_stats(f->e, &before);
    assert_int_equal(moe_engine_submit(f->e, late, &jf), 0);
    struct moe_event end;
    char *forked = collect(jf, &end);
    moe_engine_get_stats(f->e, &after);
    assert_int_equal(after.prompt_tokens_shared - before.prompt_tokens_shared,
                     (uint64_t)end.prompt_tokens - 1);
    assert_int_equal(moe_engine_submit(f->e, alone, &ja), 0);
    char *solo = collect(ja, &end);
    assert_string_equal(forked, solo);
    free(forked);
    free(solo);
    free(collect(jl, &end));
    moe_job_release(jl);
    moe_job_release(jf);
    moe_job_release(ja);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_concurrent_greedy_requests_match_reference, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_stop_string_and_eos, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancelled_job_frees_its_slot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prompt_longer_than_context_is_an_error, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_full_queue_refuses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain_finishes_work_then_refuses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_late_choice_forks_the_prompt, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
