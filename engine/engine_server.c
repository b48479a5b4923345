/* The engine thread: continuous batching over one model.
 *
 * Each step: admit queued requests into free slots (tokenize, set up their
 * sampler and cache), drop cancelled or timed-out sequences, then build one
 * batch: first the next token of every decoding sequence, then prompt chunks
 * of prefilling ones until max_batch_tokens. One moe_model_forward for all
 * of it; then sample, detokenize, filter stop strings and post events.
 *
 * A fault stays with the sequences it touches: an expert blob that cannot
 * be read fails only the sequences with a token routed to it (the forward
 * isolates their rows, moe_forward_faults); the others' rows are exact and
 * they go on. A failure the forward cannot pin on rows fails every sequence
 * with a row in the step, prompt chunks included: its KV is half written,
 * and a failed sequence gives all of its cache back. */
#include "engine/engine_server.h"
#include "engine/engine_grammar.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/common.h"
#include "common/common_metrics.h"
#include "model/model.h"
#include "offload/offload.h"

/* ---- jobs: the meeting point of an ipc thread and the engine thread ------- */

struct moe_job {
    atomic_int refs;
    atomic_bool cancelled;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *text;        /* generated text not yet read */
    size_t len, cap;
    char *reading;     /* what the last moe_job_next handed out */
    struct moe_token_logprob *lp; /* logprobs of tokens not yet read */
    size_t n_lp, cap_lp;
    struct moe_token_logprob *lp_reading;
    bool finished;     /* the terminal event is set */
    bool terminal_read;
    struct moe_event terminal;
    struct moe_request *req; /* the engine's until the job ends */
    double deadline;   /* monotonic seconds; 0 = none */
    int32_t *ids;      /* the prompt's tokens while the job waits for KV blocks */
    size_t n_ids;
    struct moe_job *next; /* queue link */
};

static void job_unref(struct moe_job *j)
{
    if (atomic_fetch_sub(&j->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j->text);
    free(j->reading);
    free(j->lp);
    free(j->lp_reading);
    free(j->ids);
    moe_request_free(j->req);
    free(j);
}

static void job_post_text(struct moe_job *j, const char *s, size_t n)
{
    if (n == 0)
        return;
    pthread_mutex_lock(&j->mu);
    if (j->len + n > j->cap) {
        size_t cap = MOE_MAX(j->cap * 2, j->len + n + 256);
        char *t = realloc(j->text, cap);
        if (!t) { /* drop the text rather than the daemon; the client sees a gap */
            pthread_mutex_unlock(&j->mu);
            moe_log(MOE_LOG_ERR, "engine: out of memory for generated text");
            return;
        }
        j->text = t;
        j->cap = cap;
    }
    memcpy(j->text + j->len, s, n);
    j->len += n;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

static void job_post_logprob(struct moe_job *j, const struct moe_token_logprob *lp)
{
    pthread_mutex_lock(&j->mu);
    if (j->n_lp == j->cap_lp) {
        size_t cap = MOE_MAX(j->cap_lp * 2, 16);
        struct moe_token_logprob *t = realloc(j->lp, cap * sizeof(*t));
        if (!t) { /* as for text: a gap, not a dead daemon */
            pthread_mutex_unlock(&j->mu);
            moe_log(MOE_LOG_ERR, "engine: out of memory for logprobs");
            return;
        }
        j->lp = t;
        j->cap_lp = cap;
    }
    j->lp[j->n_lp++] = *lp;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

static void job_post_end(struct moe_job *j, const struct moe_event *ev)
{
    pthread_mutex_lock(&j->mu);
    j->terminal = *ev;
    j->finished = true;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

static void job_post_error(struct moe_job *j, int status, const char *code, const char *msg)
{
    struct moe_event ev = {.kind = MOE_EV_ERROR, .status = status, .code = code};
    snprintf(ev.message, sizeof(ev.message), "%s", msg);
    job_post_end(j, &ev);
}

int moe_job_next(struct moe_job *j, struct moe_event *ev, int timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    if (timeout_ms >= 0) {
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&j->mu);
    while (j->len == 0 && j->n_lp == 0 && !j->finished) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&j->cv, &j->mu);
        } else if (pthread_cond_timedwait(&j->cv, &j->mu, &until) == ETIMEDOUT) {
            pthread_mutex_unlock(&j->mu);
            return -ETIMEDOUT;
        }
    }
    if (j->len > 0 || j->n_lp > 0) { /* text first, even when the end has come too */
        free(j->reading);
        free(j->lp_reading);
        j->reading = j->text;
        j->lp_reading = j->lp;
        memset(ev, 0, sizeof(*ev));
        ev->kind = MOE_EV_TEXT;
        ev->text = j->reading ? j->reading : "";
        ev->len = j->len;
        ev->lp = j->lp_reading;
        ev->n_lp = j->n_lp;
        j->text = NULL;
        j->len = j->cap = 0;
        j->lp = NULL;
        j->n_lp = j->cap_lp = 0;
    } else {
        *ev = j->terminal;
        j->terminal_read = true;
    }
    pthread_mutex_unlock(&j->mu);
    return 0;
}

void moe_job_cancel(struct moe_job *j)
{
    atomic_store(&j->cancelled, true);
}

void moe_job_release(struct moe_job *j)
{
    if (j)
        job_unref(j);
}

void moe_request_free(struct moe_request *r)
{
    if (!r)
        return;
    free(r->prompt);
    free(r->suffix);
    free(r->prompt_ids);
    for (size_t i = 0; i < r->n_messages; i++) {
        free(r->messages[i].role);
        free(r->messages[i].content);
        free(r->messages[i].reasoning_content);
    }
    free(r->messages);
    for (size_t i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->bias_id);
    free(r->bias);
    moe_grammar_unref(r->grammar);
    free(r->grammar_trigger);
    free(r);
}

static void *dup_mem(const void *p, size_t n, bool *ok)
{
    if (!p)
        return NULL;
    void *q = malloc(n ? n : 1);
    if (q)
        memcpy(q, p, n);
    else
        *ok = false;
    return q;
}

static char *dup_str(const char *s, bool *ok)
{
    return s ? dup_mem(s, strlen(s) + 1, ok) : NULL;
}

struct moe_request *moe_request_clone(const struct moe_request *r)
{
    struct moe_request *c = malloc(sizeof(*c));
    bool ok = true;
    if (!c)
        return NULL;
    *c = *r;
    moe_grammar_ref(c->grammar);
    c->prompt = dup_str(r->prompt, &ok);
    c->suffix = dup_str(r->suffix, &ok);
    c->grammar_trigger = dup_str(r->grammar_trigger, &ok);
    c->prompt_ids = dup_mem(r->prompt_ids, r->n_prompt_ids * sizeof(int32_t), &ok);
    c->bias_id = dup_mem(r->bias_id, r->n_bias * sizeof(int32_t), &ok);
    c->bias = dup_mem(r->bias, r->n_bias * sizeof(float), &ok);
    c->messages = r->messages ? calloc(r->n_messages, sizeof(*c->messages)) : NULL;
    ok = ok && (!r->messages || c->messages);
    for (size_t i = 0; c->messages && i < r->n_messages; i++) {
        c->messages[i].role = dup_str(r->messages[i].role, &ok);
        c->messages[i].content = dup_str(r->messages[i].content, &ok);
        c->messages[i].reasoning_content = dup_str(r->messages[i].reasoning_content, &ok);
    }
    if (!c->messages)
        c->n_messages = 0;
    for (size_t i = 0; i < r->n_stop; i++)
        c->stop[i] = dup_str(r->stop[i], &ok);
    if (!ok) {
        moe_request_free(c);
        return NULL;
    }
    return c;
}

/* ---- sequences: the engine thread's own state of a running job ----------- */

struct seq {
    struct moe_job *job;
    struct moe_kv *kv;
    struct moe_gen *gen;  /* sampling, grammar, detokenization, stop strings */
    int32_t *ids;       /* prompt then generated tokens */
    int32_t n_prompt, n_ids, n_fed; /* n_fed: tokens already in the cache */
    int32_t max_new;    /* generated tokens allowed */
    int32_t logit_row;  /* row of this step's logits, -1 if none */
    int32_t row0, n_rows; /* its rows of this step's batch (n_rows 0: none) */
    int32_t echo_row0, echo_pos0, echo_rows; /* echo with logprobs: this step's logit rows
                                              * of its prompt chunk, from position pos0 */
    int32_t wait_for;   /* 1 + the slot of a choice of the same request whose prompt KV
                         * it will fork (0: prefills its own) */
    int32_t need;       /* tokens of cache it reserved */
    bool keep;          /* finished whole: its cache may serve later prompts */
    struct moe_prune prune; /* this request's ODP */
    bool prune_on;
    int32_t top_k;      /* experts per token, 0 = the model's */
};

/* the host tier's metrics, by index into moe_engine.m_tier */
enum { TIER_HITS, TIER_MISSES, TIER_EVICTIONS, TIER_BYTES_READ, TIER_PREFETCH, TIER_PREFETCH_USED,
       TIER_PREFETCH_SKIPPED, TIER_RESIDENT, TIER_BUDGET, TIER_METRICS };

struct moe_engine {
    const struct moe_model *model;
    struct moe_pool *pool;
    struct moe_scratch *scratch;
    struct moe_engine_limits lim;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_mutex_t tok_mu; /* the tokenizer's BPE cache: the engine and /tokenize */
    struct moe_job *queue_head, *queue_tail;
    int32_t queue_len;
    bool draining, stopping;
    _Atomic double beat;    /* moe_now_s() of the thread's last sign of life */
    double test_stall_s;    /* MOED_TEST_ENGINE_STALL: sleep once, in the first busy step */
    struct seq *seqs;       /* [max_seqs]; job == NULL: free slot */
    struct moe_kv_pool *kv_pool; /* every sequence's blocks */
    struct moe_kv **free_kv; /* caches of finished sequences (empty), reused */
    int32_t n_free_kv;
    struct prefix_entry {    /* the prefix cache: a finished sequence's cache and tokens */
        struct moe_kv *kv;
        int32_t *ids, n;
        uint64_t used;       /* clock of its last use */
    } *cache;
    int32_t n_cache;
    uint64_t clock;
    bool prefix_ok;          /* lim.prefix_cache, and the cache can be forked and cut */
    bool cut_ok;             /* a sequence's cache can be forked and cut anywhere */
    bool hybrid;             /* linear-attention layers: their states are not cut */
    /* per-step batch arguments */
    int32_t *b_tok, *b_pos, *b_idx, *b_topk, *b_fault;
    struct moe_kv **b_kv;
    const struct moe_prune **b_prune;
    struct moe_router_stats *rstats; /* this step's routing counters */
    struct moe_forward_faults *faults; /* this step's failed rows */
    struct moe_metric *m_act[MOE_MAX_LAYERS], *m_pruned[MOE_MAX_LAYERS];
    /* host tier (tiered packs): counters as deltas of the last stats seen */
    struct moe_metric *m_tier[TIER_METRICS];
    struct moe_offload_stats tier_seen;
    float *logits;          /* [logit_rows][vocab] */
    int32_t logit_rows;     /* max_seqs, or more once a request echoes with logprobs */
    struct moe_gen_shared *gsh; /* what the sequences' generation loops share */
    float *fork_row;        /* [vocab] the row a forked choice samples from */
    struct moe_token_logprob lp_rec; /* echo: a prompt token's */
    struct moe_engine_stats stats;
    /* 1 while admit() starts a dequeued job outside the lock: it holds a slot
     * (stats.running counts it, for the queue limit) but is not running yet */
    int32_t starting;
};

static double now_s(void)
{
    return moe_now_s();
}

/* Ends a sequence that did not hit a stop string: the bytes the detokenizer
 * and the stop filter still hold are real output. */
static void seq_emit_rest(struct seq *s)
{
    if (!s->gen)
        return;
    const char *text, *more;
    size_t n_more, n = moe_gen_rest(s->gen, &text, &more, &n_more);
    job_post_text(s->job, text, n);
    job_post_text(s->job, more, n_more);
}

/* Returns a finished sequence's cache to the free list and frees the rest;
 * the slot becomes free. */
/* ---- the prefix cache ------------------------------------------------------- */

static void cache_drop(struct moe_engine *e, int32_t i)
{
    struct prefix_entry *c = &e->cache[i];
    moe_kv_reset(c->kv);
    e->free_kv[e->n_free_kv++] = c->kv;
    free(c->ids);
    e->cache[i] = e->cache[--e->n_cache];
}

/* drops the least recently used entry; false when there is none */
static bool cache_evict(struct moe_engine *e)
{
    int32_t lru = -1;
    for (int32_t i = 0; i < e->n_cache; i++)
        if (lru < 0 || e->cache[i].used < e->cache[lru].used)
            lru = i;
    if (lru >= 0)
        cache_drop(e, lru);
    return lru >= 0;
}

/* keeps a finished sequence's cache: its tokens fed so far */
static bool cache_put(struct moe_engine *e, struct seq *s)
{
    if (!e->prefix_ok || s->n_fed <= 0)
        return false;
    int32_t *ids = malloc((size_t)s->n_fed * sizeof(int32_t));
    if (!ids)
        return false;
    memcpy(ids, s->ids, (size_t)s->n_fed * sizeof(int32_t));
    moe_kv_reserve(s->kv, 0); /* it keeps its blocks, not its promise of more */
    /* an entry this one extends is superseded (a hybrid's are states at their
     * ends: each one counts) */
    for (int32_t i = e->n_cache; !e->hybrid && i-- > 0;)
        if (e->cache[i].n <= s->n_fed &&
            !memcmp(e->cache[i].ids, ids, (size_t)e->cache[i].n * sizeof(int32_t)))
            cache_drop(e, i);
    if (e->n_cache == e->lim.max_seqs)
        cache_evict(e);
    e->cache[e->n_cache++] = (struct prefix_entry){s->kv, ids, s->n_fed, ++e->clock};
    s->kv = NULL;
    return true;
}

/* The entry sharing the longest usable prefix with ids[0, n): attention
 * caches are cut to the common prefix (at most n - 1 tokens: the last one's
 * logits are needed); a recurrent state is usable only whole. */
static int32_t cache_find(struct moe_engine *e, const int32_t *ids, int32_t n, int32_t *usable)
{
    int32_t best = -1;
    *usable = 0;
    for (int32_t i = 0; i < e->n_cache; i++) {
        const struct prefix_entry *c = &e->cache[i];
        int32_t L = 0, lim = MOE_MIN(c->n, n - 1);
        while (L < lim && c->ids[L] == ids[L])
            L++;
        int32_t u = e->hybrid ? (L == c->n ? L : 0) : L;
        if (u > *usable) {
            *usable = u;
            best = i;
        }
    }
    return best;
}

static void seq_release(struct moe_engine *e, struct seq *s)
{
    for (int32_t i = 0; i < e->lim.max_seqs; i++) /* its waiting siblings prefill instead */
        if (e->seqs[i].wait_for == (int32_t)(s - e->seqs) + 1)
            e->seqs[i].wait_for = 0;
    if (s->kv && !(s->keep && cache_put(e, s))) { /* its blocks and promise go back now */
        moe_kv_reset(s->kv);
        e->free_kv[e->n_free_kv++] = s->kv;
    }
    moe_gen_free(s->gen);
    free(s->ids);
    job_unref(s->job);
    memset(s, 0, sizeof(*s));
}

static void seq_finish(struct moe_engine *e, struct seq *s, const char *reason)
{
    struct moe_event ev = {.kind = MOE_EV_DONE, .finish_reason = reason,
                           .prompt_tokens = s->n_prompt,
                           .completion_tokens = s->n_ids - s->n_prompt};
    s->keep = strcmp(reason, "cancelled") != 0;
    pthread_mutex_lock(&e->mu); /* stats before the event: a reader sees them settled */
    if (!strcmp(reason, "cancelled"))
        e->stats.requests_cancelled++;
    else
        e->stats.requests_done++;
    e->stats.running--;
    pthread_mutex_unlock(&e->mu);
    job_post_end(s->job, &ev);
    seq_release(e, s);
}

static void seq_fail_code(struct moe_engine *e, struct seq *s, int status, const char *code,
                          const char *msg)
{
    pthread_mutex_lock(&e->mu);
    e->stats.requests_failed++;
    e->stats.running--;
    pthread_mutex_unlock(&e->mu);
    job_post_error(s->job, status, code, msg);
    seq_release(e, s);
}

static void seq_fail(struct moe_engine *e, struct seq *s, int status, const char *msg)
{
    seq_fail_code(e, s, status, NULL, msg);
}

static void echo_logprob(struct moe_engine *e, struct seq *s, const float *lg, int32_t p);

enum { SEQ_STARTED, SEQ_FAILED, SEQ_WAIT };

/* Turns a queued job into a running sequence. SEQ_FAILED: the job got its
 * error; SEQ_WAIT: the KV pool cannot promise its blocks yet (its tokens
 * are kept in the job for the next try). The slot is free unless started. */
static int seq_start(struct moe_engine *e, struct seq *s, struct moe_job *j)
{
    const struct moe_model *m = e->model;
    struct moe_request *r = j->req;
    char *text = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    memset(s, 0, sizeof(*s));
    s->job = j;
    int rc = 0;
    if (!m->tok) {
        seq_fail(e, s, 500, "the model has no tokenizer");
        return SEQ_FAILED;
    }
    if (j->ids) { /* tokenized on an earlier try */
        ids = j->ids;
        n_ids = j->n_ids;
        j->ids = NULL;
    } else if (r->prompt_ids) { /* tokens as given */
        for (size_t i = 0; i < r->n_prompt_ids; i++)
            if (r->prompt_ids[i] < 0 || r->prompt_ids[i] >= m->cfg.vocab) {
                char msg[160];
                snprintf(msg, sizeof(msg), "prompt[%zu]: token %d is not in the vocabulary "
                         "(0..%d)", i, r->prompt_ids[i], m->cfg.vocab - 1);
                seq_fail(e, s, 400, msg);
                return SEQ_FAILED;
            }
        ids = malloc(MOE_MAX(r->n_prompt_ids, 1) * sizeof(*ids));
        if (!ids) {
            seq_fail(e, s, 500, "out of memory");
            return SEQ_FAILED;
        }
        memcpy(ids, r->prompt_ids, r->n_prompt_ids * sizeof(*ids));
        n_ids = r->n_prompt_ids;
    } else {
        if (r->kind == MOE_REQ_CHAT && !r->prompt) /* else ipc rendered the model's own */
            rc = moe_chat_render(e->lim.chat_template, r->messages, r->n_messages, NULL, &text);
        if (rc < 0) {
            seq_fail(e, s, 400, moe_err_msg());
            return SEQ_FAILED;
        }
        const char *prompt = text ? text : (r->prompt ? r->prompt : "");
        pthread_mutex_lock(&e->tok_mu);
        if (r->suffix)
            rc = moe_fim_prompt(m->tok, prompt, r->suffix, &ids, &n_ids);
        else
            rc = moe_tokenizer_encode(m->tok, prompt, strlen(prompt), !r->prompt_raw, &ids, &n_ids);
        pthread_mutex_unlock(&e->tok_mu);
        free(text);
        if (rc < 0) {
            seq_fail(e, s, 400, moe_err_msg());
            return SEQ_FAILED;
        }
    }
    int32_t ctx = e->lim.max_ctx;
    if (n_ids == 0 || (int64_t)n_ids >= ctx) {
        char msg[160] = "the prompt is empty";
        if (n_ids)
            snprintf(msg, sizeof(msg), "the prompt has %zu tokens; the context holds %d", n_ids,
                     ctx);
        free(ids);
        seq_fail_code(e, s, 400, n_ids ? "context_length_exceeded" : NULL, msg);
        return SEQ_FAILED;
    }
    for (size_t i = 0; i < r->n_bias; i++)
        if (r->bias_id[i] < 0 || r->bias_id[i] >= m->cfg.vocab) {
            char msg[160];
            snprintf(msg, sizeof(msg), "logit_bias: token %d is not in the vocabulary (0..%d)",
                     r->bias_id[i], m->cfg.vocab - 1);
            free(ids);
            seq_fail(e, s, 400, msg);
            return SEQ_FAILED;
        }
    int32_t max_new = r->max_tokens > 0 ? r->max_tokens : e->lim.max_tokens_default;
    max_new = r->prompt_only ? 0 : max_new > 0 ? max_new : ctx;
    /* the cache this sequence can reach: prompt + output, at most the context */
    int32_t need = (int32_t)MOE_MIN((int64_t)n_ids + max_new, (int64_t)ctx);
    int64_t need_units = moe_kv_pool_units_for(e->kv_pool, need);
    struct moe_kv_pool_stats ps;
    moe_kv_pool_get_stats(e->kv_pool, &ps);
    if (need_units > ps.units_total) {
        char msg[200];
        snprintf(msg, sizeof(msg), "the request needs a KV cache of %d tokens (%lld blocks); "
                 "the whole pool holds %lld blocks", need, (long long)need_units,
                 (long long)ps.units_total);
        free(ids);
        seq_fail(e, s, 400, msg);
        return SEQ_FAILED;
    }
    if (e->n_free_kv > 0) {
        s->kv = e->free_kv[--e->n_free_kv];
    } else if (moe_kv_seq_create(e->kv_pool, ctx, &s->kv) < 0) {
        free(ids);
        seq_fail(e, s, 503, moe_err_msg());
        return SEQ_FAILED;
    }
    /* the prefix cache: fork the entry sharing the longest prefix, cut to it */
    int32_t usable = 0, hit = e->prefix_ok ? cache_find(e, ids, (int32_t)n_ids, &usable) : -1;
    if (hit >= 0 && (moe_kv_fork(s->kv, e->cache[hit].kv) < 0 ||
                     moe_kv_truncate(s->kv, usable) < 0)) {
        moe_kv_reset(s->kv);
        hit = -1;
    }
    if (hit >= 0)
        e->cache[hit].used = ++e->clock;
    else
        usable = 0;
    /* a later choice of an n > 1 request admitted after the first one's prompt
     * is in: fork that cache, cut before the prompt's last token (whose logits
     * this choice computes again) */
    bool shared = false;
    for (int32_t i = 0; !usable && e->cut_ok && r->share_group && !r->echo && n_ids > 1 &&
                        i < e->lim.max_seqs; i++) {
        struct seq *o = &e->seqs[i];
        if (o != s && o->job && o->job->req->share_group == r->share_group &&
            o->n_fed >= o->n_prompt && o->n_prompt == (int32_t)n_ids &&
            !memcmp(o->ids, ids, n_ids * sizeof(int32_t))) {
            if (moe_kv_fork(s->kv, o->kv) == 0 && moe_kv_truncate(s->kv, (int32_t)n_ids - 1) == 0)
                usable = (int32_t)n_ids - 1, shared = true;
            else
                moe_kv_reset(s->kv);
            break;
        }
    }
    int rs;
    while ((rs = moe_kv_reserve(s->kv, need)) < 0 && cache_evict(e)) /* room: the LRU go */
        ;
    if (rs < 0) { /* full for now: wait for blocks to come back */
        moe_kv_reset(s->kv);
        e->free_kv[e->n_free_kv++] = s->kv;
        j->ids = ids;
        j->n_ids = n_ids;
        memset(s, 0, sizeof(*s));
        return SEQ_WAIT;
    }
    s->ids = realloc(ids, (size_t)ctx * sizeof(int32_t));
    if (!s->ids) {
        free(ids);
        seq_fail(e, s, 500, "out of memory");
        return SEQ_FAILED;
    }
    s->n_prompt = s->n_ids = (int32_t)n_ids;
    s->n_fed = usable; /* what the prefix cache held is in already */
    s->max_new = max_new;
    s->need = need;
    if (usable > 0) {
        pthread_mutex_lock(&e->mu);
        if (shared)
            e->stats.prompt_tokens_shared += (uint64_t)usable;
        else
            e->stats.prompt_tokens_cached += (uint64_t)usable;
        pthread_mutex_unlock(&e->mu);
    }
    /* a later choice of an n > 1 request: fork the first one's prompt once it is in */
    for (int32_t i = 0; r->share_group && !r->echo && !shared && i < e->lim.max_seqs; i++) {
        struct seq *o = &e->seqs[i];
        if (o != s && o->job && o->job->req->share_group == r->share_group && !o->wait_for &&
            o->n_fed < o->n_prompt && o->n_prompt == s->n_prompt &&
            !memcmp(o->ids, s->ids, (size_t)s->n_prompt * sizeof(int32_t))) {
            s->wait_for = i + 1;
            break;
        }
    }
    if (r->moe_top_k > m->cfg.top_k) {
        char msg[160];
        snprintf(msg, sizeof(msg), "'moe_top_k' must be at most %d (the model's experts per "
                 "token), got %d", m->cfg.top_k, r->moe_top_k);
        seq_fail(e, s, 400, msg);
        return SEQ_FAILED;
    }
    s->top_k = r->moe_top_k;
    pthread_mutex_lock(&e->mu); /* a reload may be changing the limits */
    s->prune = e->lim.prune;
    s->prune_on = e->lim.prune_on;
    pthread_mutex_unlock(&e->mu);
    if (r->moe_prune_set) { /* the request's beta on the engine's ODP layers */
        for (int32_t l = 0; l < m->cfg.n_layers; l++)
            s->prune.beta[l] = s->prune.beta[l] > 0 ? r->moe_prune : 0.0f;
        s->prune_on = r->moe_prune > 0;
    }
    struct moe_gen_params gp = {
        .sampling = r->sampling, .stop = (const char *const *)r->stop, .n_stop = r->n_stop,
        .ignore_eos = r->ignore_eos, .max_new = s->max_new, .logprobs = r->logprobs,
        .top_logprobs = r->top_logprobs, .bias_id = r->bias_id, .bias = r->bias,
        .n_bias = r->n_bias, .grammar = r->grammar, .trigger = r->grammar_trigger};
    if (moe_gen_create(e->gsh, &gp, &s->gen) < 0) {
        seq_fail(e, s, 400, moe_err_msg());
        return SEQ_FAILED;
    }
    pthread_mutex_lock(&e->mu);
    e->stats.prompt_tokens += (uint64_t)n_ids;
    pthread_mutex_unlock(&e->mu);
    if (r->echo) { /* the prompt first: its text as given (tokens: theirs) */
        char *t = NULL;
        size_t n = 0;
        if (r->prompt)
            job_post_text(j, r->prompt, strlen(r->prompt));
        else if (moe_engine_detokenize(e, s->ids, (size_t)s->n_prompt, &t, &n) == 0)
            job_post_text(j, t, n);
        free(t);
        if (r->logprobs)
            echo_logprob(e, s, NULL, -1);
    }
    return SEQ_STARTED;
}

/* echo with logprobs: prompt token p + 1's logprob from the row of position
 * p (the first prompt token has none: NaN, null in the reply) */
static void echo_logprob(struct moe_engine *e, struct seq *s, const float *lg, int32_t p)
{
    moe_gen_score(e->gsh, lg, s->job->req->top_logprobs, s->ids[p + 1], &e->lp_rec);
    job_post_logprob(s->job, &e->lp_rec);
}

/* Samples s's next token from row lg and takes it: its text and logprobs go
 * out, and the sequence ends where the generation loop or the context says. */
static void seq_step(struct moe_engine *e, struct seq *s, float *lg)
{
    struct moe_gen_token t;
    if (moe_gen_step(s->gen, lg, s->ids, (size_t)s->n_ids, &t) < 0) {
        seq_fail(e, s, 500, moe_err_msg());
        return;
    }
    pthread_mutex_lock(&e->mu); /* ipc threads read the stats */
    if (t.masked) {
        e->stats.grammar_masks++;
        e->stats.grammar_mask_s += t.mask_s;
    }
    if (!t.eog)
        e->stats.generated_tokens++;
    pthread_mutex_unlock(&e->mu);
    if (t.eog) {
        seq_emit_rest(s);
        seq_finish(e, s, "stop");
        return;
    }
    if (t.lp)
        job_post_logprob(s->job, t.lp);
    s->ids[s->n_ids++] = t.id;
    job_post_text(s->job, t.text, t.len);
    if (!t.finish && s->n_ids >= e->lim.max_ctx)
        t.finish = "length", t.flush = true;
    if (t.finish) {
        if (t.flush)
            seq_emit_rest(s);
        seq_finish(e, s, t.finish);
    }
}

/* ---- the loop ---------------------------------------------------------------- */

/* The choices waiting for leader's prompt take a fork of its KV and sample
 * their first token from the same logits (lg, as the model gave them: the
 * leader's own sampler edits it afterwards); a fork that cannot be made
 * leaves its choice to prefill the prompt itself. */
static void forks(struct moe_engine *e, struct seq *leader, const float *lg)
{
    size_t V = (size_t)e->model->cfg.vocab;
    int32_t me = (int32_t)(leader - e->seqs) + 1;
    for (int32_t i = 0; i < e->lim.max_seqs; i++) {
        struct seq *s = &e->seqs[i];
        if (!s->job || s->wait_for != me)
            continue;
        s->wait_for = 0;
        if (moe_kv_fork(s->kv, leader->kv) < 0 || moe_kv_reserve(s->kv, s->need) < 0) {
            moe_kv_reset(s->kv); /* prefill it then; its promise comes back */
            if (moe_kv_reserve(s->kv, s->need) < 0)
                seq_fail(e, s, 503, moe_err_msg());
            continue;
        }
        s->n_fed = s->n_prompt;
        pthread_mutex_lock(&e->mu);
        e->stats.prompt_tokens_shared += (uint64_t)s->n_prompt;
        pthread_mutex_unlock(&e->mu);
        memcpy(e->fork_row, lg, V * sizeof(float));
        seq_step(e, s, e->fork_row);
    }
}

/* Room for rows logit rows (echo with logprobs wants one per prompt token):
 * the buffer grows once to max_seqs + max_batch_tokens rows. */
static bool logit_room(struct moe_engine *e, int32_t rows)
{
    if (rows <= e->logit_rows)
        return true;
    int32_t want = e->lim.max_seqs + e->lim.max_batch_tokens;
    float *l = realloc(e->logits, (size_t)want * (size_t)e->model->cfg.vocab * sizeof(float));
    if (!l)
        return false;
    e->logits = l;
    e->logit_rows = want;
    return rows <= want;
}

static bool any_running(const struct moe_engine *e)
{
    for (int32_t i = 0; i < e->lim.max_seqs; i++)
        if (e->seqs[i].job)
            return true;
    return false;
}

/* The pool is the engine thread's; others see its figures through the
 * stats, copied under e->mu (the caller holds it). */
static void kv_stats_locked(struct moe_engine *e)
{
    e->stats.prefix_entries = e->n_cache;
    struct moe_kv_pool_stats ps;
    moe_kv_pool_get_stats(e->kv_pool, &ps);
    e->stats.kv_blocks_total = ps.units_total;
    e->stats.kv_blocks_used = ps.units_used;
    e->stats.kv_blocks_reserved = ps.units_reserved;
    e->stats.kv_block_bytes = ps.unit_bytes;
    e->stats.kv_block_tokens = ps.group;
    e->stats.kv_bytes_per_token = ps.bytes_per_token_4k;
}

/* Moves queued jobs into free slots; returns false when the thread should end. */
static bool admit(struct moe_engine *e)
{
    pthread_mutex_lock(&e->mu);
    for (;;) {
        bool running = any_running(e);
        if (e->stopping && !running && !e->queue_head) {
            pthread_mutex_unlock(&e->mu);
            return false;
        }
        for (int32_t i = 0; i < e->lim.max_seqs && e->queue_head; i++) {
            if (e->seqs[i].job)
                continue;
            struct moe_job *j = e->queue_head;
            e->queue_head = j->next;
            if (!e->queue_head)
                e->queue_tail = NULL;
            e->queue_len--;
            e->stats.running++;
            e->starting = 1;
            pthread_mutex_unlock(&e->mu);
            int st = seq_start(e, &e->seqs[i], j); /* tokenizing outside the lock */
            pthread_mutex_lock(&e->mu);
            e->starting = 0;
            if (st == SEQ_WAIT) { /* back to the head of the queue, in order */
                e->stats.running--;
                e->stats.kv_waits++;
                j->next = e->queue_head;
                e->queue_head = j;
                if (!e->queue_tail)
                    e->queue_tail = j;
                e->queue_len++;
                break;
            }
        }
        kv_stats_locked(e);
        atomic_store(&e->beat, moe_now_s());
        if (any_running(e) || e->stopping)
            break;
        /* idle: nothing to run; wake to beat */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += (time_t)MOE_ENGINE_BEAT_S;
        pthread_cond_timedwait(&e->cv, &e->mu, &until);
    }
    pthread_mutex_unlock(&e->mu);
    return true;
}

/* this step's routing counters into the process metrics */
static void routing_metrics(struct moe_engine *e)
{
    for (int32_t l = 0; l < e->model->cfg.n_layers; l++) {
        const struct moe_router_layer_stats *st = &e->rstats->layer[l];
        if (st->kept)
            moe_metric_add(e->m_act[l], (double)st->kept);
        if (st->pruned)
            moe_metric_add(e->m_pruned[l], (double)st->pruned);
    }
}

static void tier_metrics_register(struct moe_engine *e)
{
    if (!moe_model_offload(e->model))
        return;
    const char *h = "Expert lookups in the host tier, by result";
    e->m_tier[TIER_HITS] = moe_metric_counter("moed_tier_lookups_total", h, "tier=\"host\",result=\"hit\"");
    e->m_tier[TIER_MISSES] = moe_metric_counter("moed_tier_lookups_total", h, "tier=\"host\",result=\"miss\"");
    e->m_tier[TIER_EVICTIONS] = moe_metric_counter("moed_tier_evictions_total",
                                                   "Expert blobs evicted from a tier", "tier=\"host\"");
    e->m_tier[TIER_BYTES_READ] = moe_metric_counter("moed_nvme_read_bytes_total",
                                                    "Expert bytes read from the pack file", NULL);
    e->m_tier[TIER_PREFETCH] = moe_metric_counter("moed_prefetch_total",
                                                  "Expert reads started ahead of need", "result=\"issued\"");
    e->m_tier[TIER_PREFETCH_USED] = moe_metric_counter("moed_prefetch_total",
                                                       "Expert reads started ahead of need", "result=\"used\"");
    e->m_tier[TIER_PREFETCH_SKIPPED] = moe_metric_counter(
        "moed_prefetch_total", "Expert reads started ahead of need",
        "result=\"skipped\""); /* guessed, not read: prefetch = auto judged waiting cheaper */
    e->m_tier[TIER_RESIDENT] = moe_metric_gauge("moed_tier_resident_bytes",
                                                "Expert bytes resident in a tier", "tier=\"host\"");
    e->m_tier[TIER_BUDGET] = moe_metric_gauge("moed_tier_budget_bytes",
                                              "Memory a tier holds expert blobs in (its budget)",
                                              "tier=\"host\"");
}

/* the host tier's counters since the last step into the process metrics */
static void tier_metrics(struct moe_engine *e)
{
    struct moe_offload *o = moe_model_offload(e->model);
    if (!o)
        return;
    struct moe_offload_stats st, *was = &e->tier_seen;
    moe_offload_get_stats(o, &st);
    moe_metric_add(e->m_tier[TIER_HITS], (double)(st.hits - was->hits));
    moe_metric_add(e->m_tier[TIER_MISSES], (double)(st.misses - was->misses));
    moe_metric_add(e->m_tier[TIER_EVICTIONS], (double)(st.evictions - was->evictions));
    moe_metric_add(e->m_tier[TIER_BYTES_READ], (double)(st.bytes_read - was->bytes_read));
    moe_metric_add(e->m_tier[TIER_PREFETCH], (double)(st.prefetch_issued - was->prefetch_issued));
    moe_metric_add(e->m_tier[TIER_PREFETCH_USED], (double)(st.prefetch_used - was->prefetch_used));
    moe_metric_add(e->m_tier[TIER_PREFETCH_SKIPPED],
                   (double)(st.prefetch_skipped - was->prefetch_skipped));
    moe_metric_set(e->m_tier[TIER_RESIDENT], (double)st.resident_bytes);
    moe_metric_set(e->m_tier[TIER_BUDGET], (double)st.arena_bytes);
    *was = st;
}

static void step(struct moe_engine *e)
{
    const struct moe_model *m = e->model;
    double t = now_s();
    bool stopping;
    pthread_mutex_lock(&e->mu);
    stopping = e->stopping;
    pthread_mutex_unlock(&e->mu);

    int32_t n = 0, n_logits = 0, budget = e->lim.max_batch_tokens;
    for (int32_t i = 0; i < e->lim.max_seqs; i++) { /* decode tokens first */
        struct seq *s = &e->seqs[i];
        if (!s->job)
            continue;
        if (atomic_load(&s->job->cancelled) || stopping) {
            seq_finish(e, s, "cancelled");
            continue;
        }
        if (s->job->deadline > 0 && t > s->job->deadline) {
            seq_emit_rest(s);
            seq_finish(e, s, "timeout");
            continue;
        }
        s->logit_row = -1;
        s->n_rows = 0;
        s->echo_rows = 0;
        if (s->n_fed < s->n_prompt || budget == 0)
            continue;
        e->b_tok[n] = s->ids[s->n_fed];
        e->b_pos[n] = s->n_fed;
        e->b_kv[n] = s->kv;
        e->b_prune[n] = s->prune_on ? &s->prune : NULL;
        e->b_topk[n] = s->top_k;
        e->b_idx[n_logits] = n;
        s->logit_row = n_logits++;
        s->row0 = n;
        s->n_rows = 1;
        s->n_fed++;
        n++;
        budget--;
    }
    for (int32_t i = 0; i < e->lim.max_seqs && budget > 0; i++) { /* then prompt chunks */
        struct seq *s = &e->seqs[i];
        if (!s->job || s->n_fed >= s->n_prompt || s->wait_for)
            continue;
        int32_t chunk = MOE_MIN(budget, s->n_prompt - s->n_fed);
        s->row0 = n;
        s->n_rows = chunk;
        bool echo_lp = s->job->req->echo && s->job->req->logprobs;
        if (echo_lp && !logit_room(e, n_logits + chunk)) {
            seq_fail(e, s, 500, "out of memory for the prompt's logprobs");
            continue;
        }
        if (echo_lp) { /* every position's row: the next prompt token's logprob */
            s->echo_row0 = n_logits;
            s->echo_pos0 = s->n_fed;
            s->echo_rows = chunk;
            for (int32_t k = 0; k < chunk; k++)
                e->b_idx[n_logits++] = n + k;
        }
        for (int32_t k = 0; k < chunk; k++, n++) {
            e->b_tok[n] = s->ids[s->n_fed + k];
            e->b_pos[n] = s->n_fed + k;
            e->b_kv[n] = s->kv;
            e->b_prune[n] = s->prune_on ? &s->prune : NULL;
            e->b_topk[n] = s->top_k;
        }
        s->n_fed += chunk;
        budget -= chunk;
        if (s->n_fed == s->n_prompt && echo_lp) { /* the prompt is in: its last logits */
            s->logit_row = s->echo_row0 + chunk - 1; /* pick token 1 */
        } else if (s->n_fed == s->n_prompt) {
            e->b_idx[n_logits] = n - 1;
            s->logit_row = n_logits++;
        }
    }
    if (n == 0)
        return;

    struct moe_forward_opts fo = {.prune = e->b_prune, .top_k = e->b_topk, .stats = e->rstats,
                                  .faults = e->faults};
    memset(e->rstats, 0, sizeof(*e->rstats));
    int rc = moe_model_forward_opts(m, e->pool, e->scratch, n, e->b_tok, e->b_kv, e->b_pos,
                                    e->b_idx, n_logits, e->logits, &fo);
    char why[256] = "";
    if (rc < 0)
        snprintf(why, sizeof(why), "%s", moe_err_msg());
    else
        routing_metrics(e);
    tier_metrics(e);
    pthread_mutex_lock(&e->mu);
    e->stats.steps++;
    kv_stats_locked(e);
    pthread_mutex_unlock(&e->mu);
    if (rc == 0 && e->faults->n_rows > 0)
        moe_log(MOE_LOG_WARN, "engine: %d of %d tokens of a step needed an expert that could "
                "not be read (%s%s): their requests fail, the rest of the step goes on",
                e->faults->n_rows, n, e->faults->fault[0].msg,
                e->faults->n_faults > 1 ? ", and more" : "");
    for (int32_t i = 0; i < e->lim.max_seqs; i++) {
        struct seq *s = &e->seqs[i];
        if (!s->job || s->n_rows == 0)
            continue;
        if (rc < 0) { /* its KV of this step is half written: it cannot go on */
            seq_fail(e, s, 500, why);
            continue;
        }
        int32_t f = 0;
        for (int32_t r = s->row0; r < s->row0 + s->n_rows && !f; r++)
            f = e->b_fault[r];
        if (f) { /* a token of it went to the failed expert: its rows are garbage */
            seq_fail(e, s, 500, e->faults->fault[f - 1].msg);
            continue;
        }
        for (int32_t k = 0; k < s->echo_rows; k++) /* echo: the prompt tokens' logprobs */
            if (s->echo_pos0 + k + 1 < s->n_prompt)
                echo_logprob(e, s, e->logits + (size_t)(s->echo_row0 + k) * m->cfg.vocab,
                             s->echo_pos0 + k);
        if (s->logit_row < 0) /* a prompt chunk short of the prompt's end */
            continue;
        if (s->max_new == 0) { /* echo with max_tokens 0: the prompt was all */
            seq_finish(e, s, "length");
            continue;
        }
        float *lg = e->logits + (size_t)s->logit_row * (size_t)m->cfg.vocab;
        if (s->n_ids == s->n_prompt) /* its prompt is in: the choices waiting for it fork */
            forks(e, s, lg);
        seq_step(e, s, lg);
    }
}

static void *engine_main(void *arg)
{
    struct moe_engine *e = arg;
    while (admit(e)) {
        if (e->test_stall_s > 0) { /* the test hook: a step that hangs */
            moe_log(MOE_LOG_WARN, "engine: MOED_TEST_ENGINE_STALL: stalling %.1f s",
                    e->test_stall_s);
            struct timespec ts = {(time_t)e->test_stall_s,
                                  (long)((e->test_stall_s - (time_t)e->test_stall_s) * 1e9)};
            e->test_stall_s = 0;
            nanosleep(&ts, NULL);
        }
        step(e);
        atomic_store(&e->beat, moe_now_s());
    }
    return NULL;
}

double moe_engine_heartbeat_age(struct moe_engine *e)
{
    return moe_now_s() - atomic_load(&e->beat);
}

/* ---- public ------------------------------------------------------------------- */

/* frees what moe_engine_create allocated; the thread must not be running */
static void engine_release(struct moe_engine *e)
{
    while (e->cache && e->n_cache > 0)
        cache_drop(e, e->n_cache - 1);
    free(e->cache);
    for (int32_t i = 0; i < e->n_free_kv; i++)
        moe_kv_free(e->free_kv[i]);
    moe_kv_pool_free(e->kv_pool);
    moe_scratch_free(e->scratch);
    free(e->seqs);
    free(e->free_kv);
    free(e->b_tok);
    free(e->b_pos);
    free(e->b_idx);
    free(e->b_kv);
    free(e->b_topk);
    free(e->b_prune);
    free(e->rstats);
    free(e->faults);
    free(e->b_fault);
    free(e->logits);
    moe_gen_shared_free(e->gsh);
    free(e->fork_row);
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->tok_mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

static int check_limits(const struct moe_engine_limits *l, const struct moe_model *m)
{
    if (l->max_seqs <= 0 || l->max_batch_tokens <= 0 || l->max_ctx <= 1 || l->max_queue < 0)
        return moe_err(-EINVAL, "engine limits: max_seqs, max_batch_tokens and max_ctx must be "
                       "positive and max_queue non-negative");
    if (l->max_ctx > m->cfg.max_ctx)
        return moe_err(-EINVAL, "engine limits: max_ctx %d exceeds the model's context of %d",
                       l->max_ctx, m->cfg.max_ctx);
    if (l->max_batch_tokens < l->max_seqs)
        return moe_err(-EINVAL, "engine limits: max_batch_tokens (%d) must hold one token of "
                       "each of max_seqs (%d) sequences", l->max_batch_tokens, l->max_seqs);
    return 0;
}

/* The pool from the limits: kv_bytes, else kv_tokens, else max_seqs full
 * contexts. */
static int kv_pool_create(struct moe_engine *e)
{
    const struct moe_config *c = &e->model->cfg;
    struct moe_kv_params p = e->lim.kv;
    if (p.key_bits == 0)
        p = (struct moe_kv_params){32, 32, 64, 0};
    struct moe_kv_shape sh; /* a sequence adds at most a step's tokens per forward */
    moe_model_kv_shape(e->model, e->lim.max_batch_tokens, &sh);
    int rc = moe_kv_params_check(&p, &sh);
    if (rc < 0)
        return rc;
    if (sh.v_in_k && p.value_bits != p.key_bits)
        moe_log(MOE_LOG_WARN, "[kv] value_bits = %d does not apply to %s: its cache holds one "
                "latent per token, stored at key_bits = %d", p.value_bits,
                moe_arch_name(e->model->cfg.arch), p.key_bits);
    int64_t units;
    if (e->lim.kv_bytes > 0) {
        units = (int64_t)(e->lim.kv_bytes / moe_kv_unit_bytes_for_params(&sh, &p));
    } else {
        int64_t tokens = e->lim.kv_tokens > 0 ? e->lim.kv_tokens
                                              : (int64_t)e->lim.max_seqs * e->lim.max_ctx;
        units = moe_kv_units_for_tokens(&sh, &p, tokens, e->lim.max_seqs);
    }
    if (units < c->n_layers)
        return moe_err(-EINVAL, "[kv] pool too small: not one block per layer");
    rc = moe_kv_pool_create(&sh, &p, units, &e->kv_pool);
    if (rc == 0) {
        struct moe_kv_pool_stats st;
        moe_kv_pool_get_stats(e->kv_pool, &st);
        moe_log(MOE_LOG_INFO, "KV pool: %lld blocks of %d tokens, %zu bytes each (%.1f MiB), "
                "keys %d-bit, values %d-bit, residual %d, %.1f bytes/token at 4k",
                (long long)st.units_total, st.group, st.unit_bytes,
                (double)st.units_total * (double)st.unit_bytes / 1048576.0, st.key_bits,
                st.value_bits, st.residual, st.bytes_per_token_4k);
        size_t sb = moe_kv_pool_state_bytes(e->kv_pool);
        if (sb > 0)
            moe_log(MOE_LOG_INFO, "KV pool: linear layers hold a %.2f MiB recurrent state per "
                    "sequence (%d-bit), whatever its length", (double)sb / 1048576.0,
                    p.state_bits == 16 ? 16 : 32);
    }
    return rc;
}

/* One counter pair per MoE layer; registering again (another engine in the
 * same process) returns the same series. */
static void routing_metrics_register(struct moe_engine *e)
{
    const struct moe_config *c = &e->model->cfg;
    for (int32_t l = 0; l < c->n_layers; l++) {
        char lab[32];
        if (c->layer_dense[l])
            continue;
        snprintf(lab, sizeof(lab), "layer=\"%d\"", l);
        e->m_act[l] = moe_metric_counter("moed_expert_activations_total",
                                         "Expert activations computed (token x expert), per "
                                         "MoE layer", lab);
        e->m_pruned[l] = moe_metric_counter("moed_expert_activations_pruned_total",
                                            "Expert activations dropped by online dynamic "
                                            "pruning, per MoE layer", lab);
    }
}

int moe_engine_create(const struct moe_model *model, struct moe_pool *pool,
                      const struct moe_engine_limits *limits, struct moe_engine **out)
{
    *out = NULL;
    int rc = check_limits(limits, model);
    if (rc < 0)
        return rc;
    struct moe_engine *e = calloc(1, sizeof(*e));
    if (!e)
        return moe_err(-ENOMEM, "out of memory");
    e->model = model;
    e->pool = pool;
    e->lim = *limits;
    pthread_mutex_init(&e->mu, NULL);
    pthread_mutex_init(&e->tok_mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    size_t B = (size_t)limits->max_batch_tokens, S = (size_t)limits->max_seqs;
    e->seqs = calloc(S, sizeof(*e->seqs));
    e->free_kv = calloc(2 * S, sizeof(*e->free_kv)); /* the sequences' and the cache's */
    e->cache = calloc(S, sizeof(*e->cache));
    e->b_tok = malloc(B * sizeof(int32_t));
    e->b_pos = malloc(B * sizeof(int32_t));
    e->b_idx = malloc(B * sizeof(int32_t));
    e->b_kv = malloc(B * sizeof(*e->b_kv));
    e->b_topk = malloc(B * sizeof(int32_t));
    e->b_prune = malloc(B * sizeof(*e->b_prune));
    e->rstats = calloc(1, sizeof(*e->rstats));
    e->faults = calloc(1, sizeof(*e->faults));
    e->b_fault = calloc(B, sizeof(int32_t));
    e->logits = malloc(S * (size_t)model->cfg.vocab * sizeof(float));
    e->logit_rows = (int32_t)S;
    e->fork_row = malloc((size_t)model->cfg.vocab * sizeof(float));
    if (!e->seqs || !e->free_kv || !e->cache || !e->b_tok || !e->b_pos || !e->b_idx || !e->b_kv ||
        !e->b_topk || !e->b_prune || !e->rstats || !e->faults || !e->b_fault || !e->logits ||
        !e->fork_row || (model->tok && moe_gen_shared_create(model->tok, model->cfg.vocab,
                                                             &e->gsh) < 0) ||
        moe_scratch_create(&e->scratch) < 0) {
        rc = moe_err(-ENOMEM, "out of memory for the engine");
        goto fail;
    }
    e->faults->row = e->b_fault;
    if ((rc = kv_pool_create(e)) < 0)
        goto fail;
    /* a cache can be forked and cut anywhere: 16/32-bit blocks, no window
     * layers; the prefix cache also takes hybrids, at an entry's end only */
    bool windows = false;
    for (int32_t l = 0; l < model->cfg.n_layers; l++) {
        windows |= model->kv_window[l] != 0;
        e->hybrid |= model->cfg.layer_linear[l];
    }
    bool cut = !windows && (limits->kv.key_bits == 0 ||
                            (limits->kv.key_bits >= 16 && limits->kv.value_bits >= 16));
    e->prefix_ok = limits->prefix_cache && cut;
    e->cut_ok = cut && !e->hybrid;
    if (limits->prefix_cache && !e->prefix_ok)
        moe_log(MOE_LOG_WARN, "[kv] prefix_cache is off: it needs 16/32-bit keys and values "
                "and no sliding-window layers");
    routing_metrics_register(e);
    tier_metrics_register(e);
    tier_metrics(e); /* the gauges from the start */
    kv_stats_locked(e); /* no other thread yet */
    atomic_store(&e->beat, moe_now_s());
    const char *stall = getenv("MOED_TEST_ENGINE_STALL");
    e->test_stall_s = stall ? atof(stall) : 0;
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        rc = moe_err(-EAGAIN, "cannot start the engine thread");
        goto fail;
    }
    *out = e;
    return 0;
fail:
    engine_release(e);
    return rc;
}

int moe_engine_set_limits(struct moe_engine *e, const struct moe_engine_limits *l)
{
    pthread_mutex_lock(&e->mu);
    int rc = 0;
    if (l->max_ctx != e->lim.max_ctx || l->max_seqs != e->lim.max_seqs ||
        l->max_batch_tokens != e->lim.max_batch_tokens)
        rc = moe_err(-EINVAL, "max_ctx, max_seqs and max_batch_tokens need a restart");
    else if (l->max_queue < 0)
        rc = moe_err(-EINVAL, "max_queue must be non-negative");
    if (rc == 0) {
        e->lim.max_queue = l->max_queue;
        e->lim.max_tokens_default = l->max_tokens_default;
        e->lim.request_timeout_s = l->request_timeout_s;
        e->lim.chat_template = l->chat_template;
        e->lim.prune = l->prune;
        e->lim.prune_on = l->prune_on;
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

int moe_engine_tokenize(struct moe_engine *e, const char *text, size_t len, bool add_special,
                        int32_t **ids, size_t *n)
{
    if (!e->model->tok)
        return moe_err(-ENOENT, "the model has no tokenizer");
    pthread_mutex_lock(&e->tok_mu);
    int rc = moe_tokenizer_encode(e->model->tok, text, len, add_special, ids, n);
    pthread_mutex_unlock(&e->tok_mu);
    return rc;
}

int moe_engine_detokenize(struct moe_engine *e, const int32_t *ids, size_t n, char **text,
                          size_t *len)
{
    const struct moe_tokenizer *t = e->model->tok;
    *text = NULL;
    *len = 0;
    if (!t)
        return moe_err(-ENOENT, "the model has no tokenizer");
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= e->model->cfg.vocab)
            return moe_err(-EINVAL, "tokens[%zu]: %d is not in the vocabulary (0..%d)", i,
                           ids[i], e->model->cfg.vocab - 1);
    size_t piece = moe_tokenizer_max_piece(t) + 8, cap = n * piece + piece + 1;
    char *out = malloc(cap);
    if (!out)
        return moe_err(-ENOMEM, "out of memory");
    struct moe_detok d;
    moe_detok_init(&d, t);
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        o += moe_detok_push(&d, ids[i], out + o, cap - o);
    o += moe_detok_flush(&d, out + o, cap - o);
    out[o] = '\0';
    *text = out;
    *len = o;
    return 0;
}

int moe_engine_submit(struct moe_engine *e, struct moe_request *req, struct moe_job **out)
{
    *out = NULL;
    if (req->kind == MOE_REQ_CHAT ? req->n_messages == 0 : !req->prompt && !req->prompt_ids)
        return moe_err(-EINVAL, req->kind == MOE_REQ_CHAT ? "no messages" : "no prompt");
    struct moe_job *j = calloc(1, sizeof(*j));
    if (!j)
        return moe_err(-ENOMEM, "out of memory");
    atomic_init(&j->refs, 2); /* the caller's and the engine's */
    atomic_init(&j->cancelled, false);
    pthread_mutex_init(&j->mu, NULL);
    pthread_condattr_t ca; /* moe_job_next's deadlines are on the monotonic clock */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_lock(&e->mu);
    int rc = 0;
    if (e->draining || e->stopping)
        rc = moe_err(-ESHUTDOWN, "the server is shutting down");
    else if (e->queue_len >= e->lim.max_queue + (e->lim.max_seqs - e->stats.running))
        rc = moe_err(-EAGAIN, "the request queue is full (%d waiting)", e->queue_len);
    if (rc < 0) {
        pthread_mutex_unlock(&e->mu);
        pthread_mutex_destroy(&j->mu);
        pthread_cond_destroy(&j->cv);
        free(j);
        return rc;
    }
    double timeout = req->timeout_s > 0 ? req->timeout_s : e->lim.request_timeout_s;
    if (e->lim.request_timeout_s > 0 && timeout > e->lim.request_timeout_s)
        timeout = e->lim.request_timeout_s;
    j->deadline = timeout > 0 ? now_s() + timeout : 0;
    j->req = req;
    if (e->queue_tail)
        e->queue_tail->next = j;
    else
        e->queue_head = j;
    e->queue_tail = j;
    e->queue_len++;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    *out = j;
    return 0;
}

void moe_engine_drain(struct moe_engine *e, double timeout_s)
{
    pthread_mutex_lock(&e->mu);
    if (!e->thread) { /* already drained */
        pthread_mutex_unlock(&e->mu);
        return;
    }
    e->draining = true;
    pthread_mutex_unlock(&e->mu);
    double until = now_s() + timeout_s;
    for (;;) { /* let running and queued work finish, up to the timeout */
        pthread_mutex_lock(&e->mu);
        bool idle = e->stats.running == 0 && e->queue_len == 0;
        pthread_mutex_unlock(&e->mu);
        if (idle || now_s() >= until)
            break;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    pthread_mutex_lock(&e->mu);
    e->stopping = true; /* what is left is cancelled at the next step */
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->thread, NULL);
    e->thread = 0;
}

void moe_engine_free(struct moe_engine *e)
{
    if (!e)
        return;
    moe_engine_drain(e, 0);
    engine_release(e);
}

void moe_engine_get_stats(struct moe_engine *e, struct moe_engine_stats *st)
{
    pthread_mutex_lock(&e->mu);
    *st = e->stats;
    st->queue_depth = e->queue_len;
    /* a job being started may yet go back to the queue (no KV room): it is
     * queued until it runs, so the running gauge never shows one more than
     * the KV pool admitted */
    st->running -= e->starting;
    st->queue_depth += e->starting;
    pthread_mutex_unlock(&e->mu);
}
