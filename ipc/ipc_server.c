/* The HTTP/1.1 server on the Unix socket (libmicrohttpd).
 *
 * One thread per connection: a request that waits for the engine (a
 * non-streaming completion, or an SSE stream whose content reader blocks on
 * moe_job_next) holds only its own thread, so slow generations never delay
 * other clients. Waits are sliced (IPC_POLL_MS) so a thread notices a client
 * that hung up (POLLHUP on its socket: the job is cancelled) and server stop.
 *
 * Checks run in this order, so the cheapest answer that is right wins:
 *   peer credentials (403) -> path (404) -> method (405, with Allow)
 *   -> Content-Length over the limit (413) -> Content-Type (415)
 *   -> body bytes while receiving, chunked bodies included (413 when the
 *      body ends; one that goes on IPC_SWALLOW_BYTES past the limit has
 *      its connection closed instead)
 *   -> JSON and fields (400) -> engine loaded / draining (503)
 *   -> engine queue (429 / 503 / 400) -> generation.
 * So a malformed body gets its 400 even while the model loads. */
#define _GNU_SOURCE /* struct ucred, POLLRDHUP */
#include "ipc/ipc_int.h"

#include "common/common_metrics.h"

#include <errno.h>
#include <math.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define IPC_CONN_LIMIT 256          /* connections (= threads) at once */
#define IPC_IDLE_TIMEOUT_S 60u      /* idle keep-alive / slow clients */
#define IPC_CONN_MEMORY (64u << 10) /* per-connection header/IO pool */
#define IPC_POLL_MS 50              /* wait slice: hang-up and stop checks */
#define IPC_STOP_GRACE_S 3.0        /* at stop: for the last replies to go out */
#define IPC_STREAM_BLOCK (16u << 10)
#define IPC_COALESCE_BYTES (16u << 10) /* text gathered into one SSE chunk ... */
#define IPC_COALESCE_EVENTS 8          /* ... from at most this many events */
#define IPC_SWALLOW_BYTES (1u << 20) /* body past the limit read before hanging up */
#define IPC_RETRY_BUSY "1"          /* Retry-After seconds: queue full */
#define IPC_RETRY_UNAVAILABLE "5"   /* loading or draining */

#define CT_JSON "application/json"
#define CT_SSE "text/event-stream"
#define CT_PROM "text/plain; version=0.0.4; charset=utf-8"

/* ---- routes -------------------------------------------------------------- */

enum route {
    R_COMPLETIONS,
    R_CHAT,
    R_MODELS,
    R_MODEL, /* /v1/models/{id} */
    R_HEALTH,
    R_METRICS,
    R_STATS,
    R_RELOAD,
    R_TOKENIZE,
    R_DETOKENIZE,
    R_RESPONSES,
    R_OTHER, /* unknown paths: one metrics label, whatever the URL */
    R_N
};

/* Over TCP: API routes need the api_key when one is set; OPEN ones never
 * (probes and scrapers, as vLLM's --api-key leaves them); ADMIN ones need a
 * key, and are refused when none is set. Unix peers need none: SO_PEERCRED
 * and the allow lists are their check. */
enum access { ACCESS_API, ACCESS_OPEN, ACCESS_ADMIN };

static const struct {
    const char *path;
    bool post; /* POST only; otherwise GET (and HEAD) */
    const char *label;
    enum access access;
} routes[R_N] = {
    [R_COMPLETIONS] = {"/v1/completions", true, "/v1/completions", ACCESS_API},
    [R_CHAT] = {"/v1/chat/completions", true, "/v1/chat/completions", ACCESS_API},
    [R_MODELS] = {"/v1/models", false, "/v1/models", ACCESS_API},
    [R_MODEL] = {NULL, false, "/v1/models/{id}", ACCESS_API},
    [R_HEALTH] = {"/health", false, "/health", ACCESS_OPEN},
    [R_METRICS] = {"/metrics", false, "/metrics", ACCESS_OPEN},
    [R_STATS] = {"/admin/stats", false, "/admin/stats", ACCESS_ADMIN},
    [R_RELOAD] = {"/admin/reload", true, "/admin/reload", ACCESS_ADMIN},
    [R_TOKENIZE] = {"/tokenize", true, "/tokenize", ACCESS_API},
    [R_DETOKENIZE] = {"/detokenize", true, "/detokenize", ACCESS_API},
    [R_RESPONSES] = {"/v1/responses", true, "/v1/responses", ACCESS_API},
    [R_OTHER] = {NULL, false, "other", ACCESS_API},
};

static enum route route_of(const char *url)
{
    for (int i = 0; i < R_N; i++)
        if (routes[i].path && strcmp(url, routes[i].path) == 0)
            return (enum route)i;
    if (strncmp(url, "/v1/models/", 11) == 0 && url[11])
        return R_MODEL;
    return R_OTHER;
}

/* ---- the server ---------------------------------------------------------- */

struct moe_ipc {
    struct MHD_Daemon *mhd;
    struct ipc_gate *gate; /* accepts, checks peers and heads, hands over to mhd */
    struct ipc_listener ls[MOE_IPC_MAX_LISTEN];
    size_t n_ls;
    char *socket_path; /* for /admin/stats: the first Unix socket we bound, or NULL */
    char *listen_names; /* the listeners, comma-separated */
    char *model_name;
    double started;       /* moe_now_s() */
    int64_t started_unix;

    pthread_mutex_t lock; /* limits, reload hook */
    struct moe_ipc_limits limits;
    moe_ipc_reload_fn reload_fn;
    void *reload_arg;
    pthread_mutex_t reload_lock; /* one reload at a time */

    _Atomic(struct moe_engine *) engine;
    struct moe_ipc_engine_ops ops;
    atomic_bool draining, stopping;
    atomic_int connections, streams;
    atomic_int active; /* requests from their head to NOTIFY_COMPLETED */
    atomic_uint_fast64_t requests;

    struct moe_ipc_metrics metrics;
};

static const struct moe_ipc_engine_ops real_engine = {
    .submit = moe_engine_submit,
    .next = moe_job_next,
    .cancel = moe_job_cancel,
    .release = moe_job_release,
    .get_stats = moe_engine_get_stats,
    .tokenize = moe_engine_tokenize,
    .detokenize = moe_engine_detokenize,
};

/* One HTTP request (MHD's req_cls): lives from its headers to NOTIFY_COMPLETED. */
struct ipc_req {
    enum route route;
    int fd;
    struct ipc_conn *conn; /* the gate's record: deadlines, TCP or not */
    double t0;
    struct moe_ipc_limits lim; /* a snapshot: a reload mid-request does not tear it */
    struct moe_ipc_buf body;
    bool responded;   /* a reply is queued: swallow whatever body still comes */
    bool too_large;   /* the body passed max_body_bytes (reply when it ends) */
    size_t swallowed; /* body bytes in all, once too_large */
    bool no_timeout;  /* idle timeout lifted while generating */
};

/* One request's wait on its job. */
struct waiter {
    struct moe_ipc *ipc;
    struct moe_job *job;
    int fd;
    double next_check; /* moe_now_s() of the next hang-up / stop check */
    double give_up;    /* the server stops: the job was cancelled; its end is awaited until */
};

/* A streaming reply: owned by the MHD response, freed by its free callback. */
/* The jobs of one generation: n > 1 choices are as many requests. */
struct ipc_jobs {
    struct moe_job *job[MOE_IPC_CHOICES_MAX];
    bool done[MOE_IPC_CHOICES_MAX];   /* its DONE or ERROR was read */
    int64_t offset[MOE_IPC_CHOICES_MAX]; /* completions logprobs' text_offset, per choice */
    int n;
};

struct ipc_stream {
    struct moe_ipc *ipc;
    struct ipc_jobs jobs;
    struct ipc_conn *conn;
    struct waiter wait;
    struct moe_ipc_gen gen;
    struct moe_ipc_buf out;  /* formatted, not yet handed to MHD */
    struct moe_ipc_buf text; /* text gathered for the next chunk */
    struct moe_ipc_buf lps;  /* its tokens' logprobs (struct moe_token_logprob) */
    struct moe_ipc_buf full; /* the Responses API's: all the text (its closing events) */
    struct moe_ipc_buf held; /* chat with tools: text held back (a tool call, or its start) */
    double t0, t_first;
    double write_timeout;
    int32_t prompt_tokens, completion_tokens; /* summed over the choices as they end */
    int n_done;
    bool finished; /* every DONE or an ERROR seen: nothing to cancel */
    bool ended;    /* [DONE] is in out */
};

/* ---- metrics (ipc_metrics.c) -------------------------------------------- */

static void count_request(struct moe_ipc *ipc, enum route r, int status)
{
    atomic_fetch_add(&ipc->requests, 1);
    moe_ipc_metrics_request(&ipc->metrics, r, status);
}

static void count_finish(struct moe_ipc *ipc, const char *reason)
{
    moe_ipc_metrics_finish(&ipc->metrics, reason);
}

/* A generation ended (DONE): latency histograms. */
static void observe_done(struct moe_ipc *ipc, double t0, double t_first,
                         const struct moe_event *ev)
{
    moe_ipc_metrics_done(&ipc->metrics, t0, t_first, ev);
}

/* Engine figures read at scrape time. */
static void refresh_engine_metrics(struct moe_ipc *ipc, struct moe_engine_stats *out)
{
    struct moe_engine *e = atomic_load(&ipc->engine);
    struct moe_engine_stats st = {0};
    if (e)
        ipc->ops.get_stats(e, &st);
    moe_ipc_metrics_refresh(&ipc->metrics, e, &st, atomic_load(&ipc->connections),
                            atomic_load(&ipc->streams));
    if (out)
        *out = st;
}

static int metrics_register(struct moe_ipc *ipc)
{
    const char *labels[R_N];
    for (int i = 0; i < R_N; i++)
        labels[i] = routes[i].label;
    return moe_ipc_metrics_init(&ipc->metrics, ipc->model_name, labels, R_N, R_CHAT + 1);
}

/* ---- replies ------------------------------------------------------------- */

/* Queues a reply; body (malloc'ed) is taken. hdrs: name, value, ..., NULL.
 * false when MHD would not take it now (the caller decides). */
static bool reply(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c, int status,
                  const char *ctype, char *body, size_t len, const char *const *hdrs)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, body ? body : (char *)"",
                                        body ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(body);
        return false;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    for (size_t i = 0; hdrs && hdrs[i]; i += 2)
        MHD_add_response_header(resp, hdrs[i], hdrs[i + 1]);
    bool ok = MHD_queue_response(c, (unsigned)status, resp) == MHD_YES;
    MHD_destroy_response(resp);
    if (ok) {
        ipc_conn_deadline(r->conn, r->lim.write_timeout_s,
                          "the client read no reply within write_timeout");
        r->responded = true;
        count_request(ipc, r->route, status);
        moe_log(MOE_LOG_DEBUG, "ipc: %s -> %d (%.1f ms)", routes[r->route].label, status,
                (moe_now_s() - r->t0) * 1e3);
    }
    return ok;
}

static bool reply_json(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c,
                       int status, json_t *o, const char *const *hdrs)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s)
        return false;
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (!t) {
        free(s);
        return false;
    }
    t[n] = '\n';
    t[n + 1] = '\0';
    return reply(ipc, r, c, status, CT_JSON, t, n + 1, hdrs);
}

static bool reply_error(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c,
                        const struct moe_ipc_error *e, const char *const *hdrs)
{
    size_t n;
    char *s = moe_ipc_error_json(e, &n);
    if (!s)
        return false;
    return reply(ipc, r, c, e->status, CT_JSON, s, n, hdrs);
}

/* builds the error and replies in one go */
static bool fail_with(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c,
                      int status, const char *type, const char *code, const char *param,
                      const char *const *hdrs, const char *fmt, ...) MOE_PRINTF(9, 10);

static bool fail_with(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c,
                      int status, const char *type, const char *code, const char *param,
                      const char *const *hdrs, const char *fmt, ...)
{
    struct moe_ipc_error e;
    va_list ap;
    moe_ipc_error_set(&e, status, type, code, param, "%s", "");
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof(e.message), fmt, ap);
    va_end(ap);
    return reply_error(ipc, r, c, &e, hdrs);
}

static const char *const hdr_retry_busy[] = {MHD_HTTP_HEADER_RETRY_AFTER, IPC_RETRY_BUSY, NULL};
static const char *const hdr_retry_unavail[] = {MHD_HTTP_HEADER_RETRY_AFTER,
                                                IPC_RETRY_UNAVAILABLE, NULL};

static bool fail_unavailable(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c,
                             bool loading)
{
    return fail_with(ipc, r, c, 503, "service_unavailable",
                     loading ? "model_loading" : "shutting_down", NULL, hdr_retry_unavail,
                     loading ? "the model is still loading; retry shortly"
                             : "the server is shutting down and takes no new requests");
}

/* The error types OpenAI clients know, by status. */
static const char *type_for_status(int status)
{
    switch (status) {
    case 401:
    case 403: return "permission_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

/* ---- waiting for the engine ---------------------------------------------- */

/* The client closed its end (a half-close after sending is not a hang-up). */
static bool peer_gone(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    if (fd < 0)
        return false;
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLERR | POLLNVAL));
}

/* 0 with *ev, -EPIPE when the client hung up, -ESHUTDOWN when the server
 * stops, or the engine's error. The checks run every IPC_POLL_MS whether
 * or not events keep coming: a client that hangs up on a non-streaming
 * request is noticed while its tokens are still being generated. */
static int wait_event(struct waiter *w, struct moe_event *ev)
{
    for (;;) {
        double now = moe_now_s();
        if (now >= w->next_check) {
            w->next_check = now + IPC_POLL_MS / 1e3;
            if (atomic_load(&w->ipc->stopping)) {
                /* the job is cancelled; its own end (finish_reason
                 * "cancelled", usage) is worth a moment's wait */
                if (w->give_up == 0) {
                    w->give_up = now + IPC_STOP_GRACE_S / 2;
                    w->ipc->ops.cancel(w->job);
                } else if (now >= w->give_up) {
                    return -ESHUTDOWN;
                }
            }
            if (peer_gone(w->fd))
                return -EPIPE;
        }
        int rc = w->ipc->ops.next(w->job, ev, IPC_POLL_MS);
        if (rc != -ETIMEDOUT)
            return rc;
    }
}

static void event_error(const struct moe_event *ev, struct moe_ipc_error *e)
{
    int status = ev->status >= 400 && ev->status <= 599 ? ev->status : 500;
    moe_ipc_error_set(e, status, type_for_status(status),
                      ev->code ? ev->code : status >= 500 ? "engine_error" : "invalid_request",
                      NULL, "%s", ev->message[0] ? ev->message : "generation failed");
}

/* ---- streaming ----------------------------------------------------------- */

/* Formats ev of choice k, and text events of that choice already waiting
 * behind it, into s->out. */
static int stream_take(struct ipc_stream *s, int k, struct moe_event *first)
{
    struct moe_ipc *ipc = s->ipc;
    struct moe_job *job = s->jobs.job[k];
    struct moe_event ev = *first;
    bool pending = true;
    int rc;
    moe_ipc_buf_reset(&s->text);
    moe_ipc_buf_reset(&s->lps);
    for (int i = 0; pending && ev.kind == MOE_EV_TEXT; i++) {
        if (s->t_first == 0) {
            s->t_first = moe_now_s();
            moe_ipc_metrics_first_text(&ipc->metrics, s->t_first - s->t0);
        }
        if (moe_ipc_buf_append(&s->text, ev.text, ev.len) ||
            moe_ipc_buf_append(&s->lps, ev.lp, ev.n_lp * sizeof(*ev.lp)))
            return -ENOMEM;
        pending = false;
        if (s->text.len < IPC_COALESCE_BYTES && i + 1 < IPC_COALESCE_EVENTS) {
            rc = ipc->ops.next(job, &ev, 0);
            if (rc == 0)
                pending = true;
            else if (rc != -ETIMEDOUT)
                return rc;
        }
    }
    s->gen.index = k;
    s->gen.text_offset = s->jobs.offset[k];
    size_t n_lp = s->lps.len / sizeof(struct moe_token_logprob);
    if ((s->text.len || n_lp) &&
        moe_ipc_sse_text(&s->out, &s->gen, s->text.data, s->text.len,
                         (const struct moe_token_logprob *)(const void *)s->lps.data, n_lp))
        return -ENOMEM;
    s->jobs.offset[k] = s->gen.text_offset;
    if (pending && ev.kind == MOE_EV_DONE) {
        s->jobs.done[k] = true;
        s->prompt_tokens = ev.prompt_tokens; /* the same prompt for every choice */
        s->completion_tokens += ev.completion_tokens;
        if (moe_ipc_sse_close(&s->out, &s->gen, ev.finish_reason))
            return -ENOMEM;
        if (++s->n_done == s->jobs.n) {
            s->finished = true;
            observe_done(ipc, s->t0, s->t_first, &ev);
            if (moe_ipc_sse_end(&s->out, &s->gen, s->prompt_tokens, s->completion_tokens))
                return -ENOMEM;
            s->ended = true;
        }
    } else if (pending && ev.kind == MOE_EV_ERROR) {
        struct moe_ipc_error e;
        s->finished = true;
        s->jobs.done[k] = true;
        for (int i = 0; i < s->jobs.n; i++) /* one choice failed: the reply has */
            if (!s->jobs.done[i])
                ipc->ops.cancel(s->jobs.job[i]);
        count_finish(ipc, "error");
        event_error(&ev, &e);
        moe_log(MOE_LOG_WARN, "ipc: stream %s failed: %s", s->gen.id, e.message);
        if (moe_ipc_sse_error(&s->out, &s->gen, &e))
            return -ENOMEM;
        s->ended = true;
    }
    return 0;
}

/* The next events: of the first choice still running (waited for), then
 * whatever the others have ready. */
static int stream_fill(struct ipc_stream *s)
{
    struct moe_event ev;
    int k = 0;
    while (s->jobs.done[k])
        k++;
    s->wait.job = s->jobs.job[k];
    int rc = wait_event(&s->wait, &ev);
    if (rc || (rc = stream_take(s, k, &ev)))
        return rc;
    for (int i = 0; i < s->jobs.n && !s->ended; i++) {
        if (i == k || s->jobs.done[i])
            continue;
        rc = s->ipc->ops.next(s->jobs.job[i], &ev, 0);
        if (rc == -ETIMEDOUT)
            continue;
        if (rc || (rc = stream_take(s, i, &ev)))
            return rc;
    }
    return 0;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct ipc_stream *s = cls;
    ipc_conn_deadline(s->conn, 0, NULL); /* MHD wrote what it had: the client reads */
    while (s->out.off == s->out.len) {
        if (s->ended)
            return MHD_CONTENT_READER_END_OF_STREAM;
        moe_ipc_buf_reset(&s->out);
        int rc = stream_fill(s);
        if (rc == -ESHUTDOWN) {
            /* the server stops and the job's end did not come: close the
             * stream properly anyway */
            s->finished = true;
            count_finish(s->ipc, "cancelled");
            if (moe_ipc_sse_finish(&s->out, &s->gen, "cancelled", 0, 0))
                return MHD_CONTENT_READER_END_WITH_ERROR;
            s->ended = true;
        } else if (rc) {
            if (rc != -EPIPE)
                moe_log(MOE_LOG_WARN, "ipc: stream %s: %s", s->gen.id, strerror(-rc));
            return MHD_CONTENT_READER_END_WITH_ERROR; /* closes; free callback cancels */
        }
    }
    size_t n = MOE_MIN(max, s->out.len - s->out.off);
    memcpy(buf, s->out.data + s->out.off, n);
    s->out.off += n;
    ipc_conn_deadline(s->conn, s->write_timeout,
                      "the client read nothing of its stream within write_timeout");
    return (ssize_t)n;
}

static void jobs_end(struct moe_ipc *ipc, struct ipc_jobs *js, bool cancel)
{
    for (int i = 0; i < js->n; i++) {
        if (cancel && !js->done[i])
            ipc->ops.cancel(js->job[i]);
        ipc->ops.release(js->job[i]);
    }
    js->n = 0;
}

/* The response is gone: the stream ended or the client did. */
static void stream_free(void *cls)
{
    struct ipc_stream *s = cls;
    if (!s->finished)
        count_finish(s->ipc, "cancelled");
    jobs_end(s->ipc, &s->jobs, !s->finished);
    atomic_fetch_sub(&s->ipc->streams, 1);
    moe_ipc_buf_free(&s->out);
    moe_ipc_buf_free(&s->text);
    moe_ipc_buf_free(&s->lps);
    moe_ipc_buf_free(&s->full);
    moe_ipc_buf_free(&s->held);
    free(s);
}

static bool start_stream(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c,
                         struct ipc_jobs *jobs, const struct moe_ipc_gen *gen)
{
    static const char *const hdrs[] = {MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache",
                                       "X-Accel-Buffering", "no", NULL};
    struct ipc_stream *s = calloc(1, sizeof(*s));
    struct MHD_Response *resp = NULL;
    if (!s) {
        jobs_end(ipc, jobs, true);
        return false;
    }
    s->ipc = ipc;
    s->jobs = *jobs;
    s->gen = *gen;
    s->gen.full = &s->full;
    s->gen.held = &s->held;
    s->wait = (struct waiter){.ipc = ipc, .job = jobs->job[0], .fd = r->fd};
    s->t0 = r->t0;
    s->conn = r->conn;
    s->write_timeout = r->lim.write_timeout_s;
    atomic_fetch_add(&ipc->streams, 1);

    /* The status line waits for the first event, so that a request the
     * engine refuses after submit (a prompt longer than the context, say)
     * still gets its 4xx rather than a 200 with an error chunk. */
    struct moe_event ev;
    int rc = wait_event(&s->wait, &ev);
    if (rc) {
        stream_free(s); /* cancels */
        if (rc == -EPIPE || rc == -ESHUTDOWN)
            return false;
        return fail_with(ipc, r, c, 500, "server_error", "engine_error", NULL, NULL,
                         "waiting for the engine failed: %s", strerror(-rc));
    }
    if (ev.kind == MOE_EV_ERROR) {
        struct moe_ipc_error e;
        s->jobs.done[0] = true;
        for (int i = 1; i < s->jobs.n; i++)
            ipc->ops.cancel(s->jobs.job[i]);
        s->finished = true;
        count_finish(ipc, "error");
        event_error(&ev, &e);
        stream_free(s);
        return reply_error(ipc, r, c, &e, e.status == 503 ? hdr_retry_unavail : NULL);
    }
    /* chat streams open with the assistant's role, one chunk per choice */
    for (int i = 0; gen->chat && i < s->jobs.n; i++) {
        s->gen.index = i;
        if (moe_ipc_sse_role(&s->out, &s->gen)) {
            stream_free(s);
            return false;
        }
    }
    if (stream_take(s, 0, &ev)) {
        stream_free(s);
        return false;
    }
    resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, IPC_STREAM_BLOCK, stream_read, s,
                                             stream_free);
    if (!resp) {
        stream_free(s);
        return false;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, CT_SSE);
    for (size_t i = 0; hdrs[i]; i += 2)
        MHD_add_response_header(resp, hdrs[i], hdrs[i + 1]);
    bool ok = MHD_queue_response(c, MHD_HTTP_OK, resp) == MHD_YES;
    MHD_destroy_response(resp); /* not queued: this frees s and cancels the job */
    if (ok) {
        r->responded = true;
        count_request(ipc, r->route, 200);
    }
    return ok;
}

/* ---- generation ---------------------------------------------------------- */

/* best_of: the mean logprob of a candidate's tokens (none: -inf) */
static double mean_logprob(const struct moe_ipc_choice *ch)
{
    double sum = 0.0;
    for (size_t i = 0; i < ch->n_lp; i++)
        sum += ch->lp[i].tok.logprob;
    return ch->n_lp ? sum / (double)ch->n_lp : -INFINITY;
}

/* The whole completion in one reply: waits here, in the connection's thread,
 * for each choice in turn (the engine runs them together). */
static bool finish_blocking(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c,
                            struct ipc_jobs *jobs, struct moe_ipc_gen *gen, int n_out)
{
    struct moe_ipc_buf text[MOE_IPC_CHOICES_MAX] = {{0}}, lps[MOE_IPC_CHOICES_MAX] = {{0}};
    struct moe_ipc_choice ch[MOE_IPC_CHOICES_MAX] = {{0}};
    struct moe_event ev;
    struct moe_ipc_error e;
    struct waiter w = {.ipc = ipc, .fd = r->fd};
    double t_first = 0;
    int32_t prompt_tokens = 0, completion_tokens = 0;
    bool ok = false, cancelled = false;
    int k = 0;

    for (k = 0; k < jobs->n; k++) {
        w.job = jobs->job[k];
        for (;;) {
            int rc = wait_event(&w, &ev);
            if (rc == -ESHUTDOWN) {
                /* the server stops and the job's end did not come: answer with
                 * what there is, as the job's own end would have */
                cancelled = true;
                break;
            }
            if (rc) {
                count_finish(ipc, "cancelled");
                if (rc == -EPIPE)
                    goto out; /* nobody to answer: MHD closes the connection */
                moe_ipc_error_set(&e, 500, "server_error", "engine_error", NULL,
                                  "waiting for the engine failed: %s", strerror(-rc));
                ok = reply_error(ipc, r, c, &e, NULL);
                goto out;
            }
            if (ev.kind == MOE_EV_TEXT) {
                if (t_first == 0) {
                    t_first = moe_now_s();
                    moe_ipc_metrics_first_text(&ipc->metrics, t_first - r->t0);
                }
                if (moe_ipc_buf_append(&text[k], ev.text, ev.len) ||
                    moe_ipc_buf_append(&lps[k], ev.lp, ev.n_lp * sizeof(*ev.lp))) {
                    moe_ipc_error_set(&e, 500, "server_error", "out_of_memory", NULL,
                                      "out of memory");
                    ok = reply_error(ipc, r, c, &e, NULL);
                    goto out;
                }
                continue;
            }
            jobs->done[k] = true;
            if (ev.kind == MOE_EV_ERROR) {
                count_finish(ipc, "error");
                event_error(&ev, &e);
                ok = reply_error(ipc, r, c, &e, e.status == 503 ? hdr_retry_unavail : NULL);
                goto out;
            }
            /* MOE_EV_DONE */
            ch[k].finish_reason = ev.finish_reason;
            prompt_tokens = ev.prompt_tokens;
            completion_tokens += ev.completion_tokens;
            break;
        }
        if (cancelled)
            break;
    }
    if (cancelled) {
        count_finish(ipc, "cancelled");
        for (int i = 0; i < jobs->n; i++)
            ch[i].finish_reason = "cancelled";
        prompt_tokens = completion_tokens = 0;
    } else {
        ev.finish_reason = ch[0].finish_reason;
        observe_done(ipc, r->t0, t_first, &ev);
    }
    for (int i = 0; i < jobs->n; i++) {
        ch[i].text = text[i].data ? text[i].data : "";
        ch[i].len = text[i].len;
        ch[i].lp = (const struct moe_token_logprob *)(const void *)lps[i].data;
        ch[i].n_lp = lps[i].len / sizeof(struct moe_token_logprob);
    }
    /* best_of: the n_out candidates likeliest per token, in their order (a stable
     * selection by score); usage counts every candidate, as OpenAI bills them */
    double score[MOE_IPC_CHOICES_MAX];
    for (int i = 0; i < jobs->n; i++)
        score[i] = mean_logprob(&ch[i]);
    for (int k = 0; k < n_out && n_out < jobs->n; k++) {
        int best = k;
        for (int i = k + 1; i < jobs->n; i++)
            if (score[i] > score[best])
                best = i;
        struct moe_ipc_choice t = ch[best];
        double ts = score[best];
        memmove(&ch[k + 1], &ch[k], (size_t)(best - k) * sizeof(ch[0]));
        memmove(&score[k + 1], &score[k], (size_t)(best - k) * sizeof(score[0]));
        ch[k] = t;
        score[k] = ts;
    }
    size_t n;
    char *body = moe_ipc_completion_json(gen, ch, (size_t)MOE_MIN(n_out, jobs->n),
                                         prompt_tokens, completion_tokens, &n);
    ok = body && reply(ipc, r, c, 200, CT_JSON, body, n, NULL);
out:
    jobs_end(ipc, jobs, true);
    for (int i = 0; i < MOE_IPC_CHOICES_MAX; i++) {
        moe_ipc_buf_free(&text[i]);
        moe_ipc_buf_free(&lps[i]);
    }
    return ok;
}

static bool handle_generate(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c)
{
    struct moe_ipc_parsed p;
    struct moe_ipc_error e;
    struct moe_ipc_gen gen;
    struct ipc_jobs jobs = {.n = 0};
    bool chat = r->route == R_CHAT || r->route == R_RESPONSES;

    if (r->route == R_RESPONSES
            ? moe_ipc_parse_response(r->body.data, r->body.len, &r->lim, &p, &e)
            : moe_ipc_parse_completion(r->body.data, r->body.len, chat, &r->lim, &p, &e))
        return reply_error(ipc, r, c, &e, NULL);
    if (p.messages && r->lim.chat_jinja && moe_ipc_render_chat(&r->lim, &p, &e)) {
        moe_ipc_parsed_free(&p);
        return reply_error(ipc, r, c, &e, NULL);
    }

    struct moe_engine *engine = atomic_load(&ipc->engine);
    if (!engine || atomic_load(&ipc->draining)) {
        moe_ipc_parsed_free(&p);
        return fail_unavailable(ipc, r, c, !engine);
    }
    if (p.req->sampling.seed == UINT64_MAX) { /* "random": a fresh draw every time */
        uint64_t seed;
        if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != sizeof(seed))
            seed = (uint64_t)(moe_now_s() * 1e9) ^ (uint64_t)(uintptr_t)r;
        p.req->sampling.seed = seed;
    }
    if (p.responses)
        moe_ipc_gen_init_response(&gen, ipc->model_name);
    else
        moe_ipc_gen_init(&gen, chat, p.include_usage, ipc->model_name);
    gen.logprobs = p.req->logprobs;
    gen.tools = p.tool_mode != MOE_TOOLS_NONE;
    bool stream = p.req->stream;
    if (gen.tools && stream && p.n > 1) {
        moe_ipc_parsed_free(&p);
        e = (struct moe_ipc_error){0};
        moe_ipc_error_set(&e, 400, "invalid_request_error", "unsupported_parameter", "n",
                          "streaming several choices with tools is not supported; give n = 1 "
                          "or stream = false");
        return reply_error(ipc, r, c, &e, NULL);
    }

    /* n choices (best_of candidates): that many requests, seeds seed, seed + 1, ...
     * (the last one is p.req); best_of ranks them by their tokens' logprobs */
    int rc = 0, n_out = p.n;
    static atomic_uint_fast64_t groups;
    if (p.best_of > p.n)
        p.req->logprobs = true; /* the reply shows them only where asked (gen.logprobs) */
    if (p.best_of > 1) /* the choices fork the first one's prompt KV */
        p.req->share_group = atomic_fetch_add(&groups, 1) + 1;
    moe_err_clear();
    for (int i = 0; i < p.best_of && rc == 0; i++) {
        struct moe_request *q = i + 1 < p.best_of ? moe_request_clone(p.req) : p.req;
        if (!q) {
            rc = -ENOMEM;
            break;
        }
        q->sampling.seed = p.req->sampling.seed + (uint64_t)i;
        rc = ipc->ops.submit(engine, q, &jobs.job[jobs.n]);
        if (rc == 0)
            jobs.n++;
        else if (q != p.req)
            moe_request_free(q);
        else
            break;
        if (q == p.req)
            p.req = NULL; /* the engine's now */
    }
    if (rc) {
        moe_ipc_parsed_free(&p);
        jobs_end(ipc, &jobs, true);
        switch (rc) {
        case -EAGAIN:
            return fail_with(ipc, r, c, 429, "rate_limit_error", "queue_full", NULL,
                             hdr_retry_busy, "the request queue is full; retry shortly");
        case -ESHUTDOWN:
            return fail_unavailable(ipc, r, c, false);
        case -EINVAL:
            return fail_with(ipc, r, c, 400, "invalid_request_error", "invalid_request", NULL,
                             NULL, "%s",
                             moe_err_msg()[0] ? moe_err_msg() : "the engine refused the request");
        default:
            moe_log(MOE_LOG_ERR, "ipc: submit failed: %s (%s)", strerror(-rc), moe_err_msg());
            return fail_with(ipc, r, c, 500, "server_error", "internal_error", NULL, NULL,
                             "could not queue the request: %s", strerror(-rc));
        }
    }

    /* the idle timeout must not cut a long generation; hang-ups are seen by
     * wait_event, and the engine enforces the request's own time limit */
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    r->no_timeout = true;
    if (stream)
        return start_stream(ipc, r, c, &jobs, &gen);
    return finish_blocking(ipc, r, c, &jobs, &gen, n_out);
}

/* ---- the other endpoints ------------------------------------------------- */

static json_t *model_obj(struct moe_ipc *ipc)
{
    return json_pack("{s:o, s:s, s:I, s:s}", "id",
                     moe_ipc_json_text(ipc->model_name, strlen(ipc->model_name)), "object",
                     "model", "created", (json_int_t)ipc->started_unix, "owned_by", "moed");
}

static bool handle_models(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c,
                          const char *url)
{
    if (r->route == R_MODEL) {
        if (strcmp(url + 11, ipc->model_name) != 0)
            return fail_with(ipc, r, c, 404, "invalid_request_error", "model_not_found", "model",
                             NULL, "the model '%.200s' does not exist; this server serves '%s'",
                             url + 11, ipc->model_name);
        return reply_json(ipc, r, c, 200, model_obj(ipc), NULL);
    }
    json_t *data = json_array();
    if (data)
        json_array_append_new(data, model_obj(ipc));
    return reply_json(ipc, r, c, 200, json_pack("{s:s, s:o}", "object", "list", "data", data),
                      NULL);
}

static bool handle_health(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c)
{
    if (!atomic_load(&ipc->engine))
        return reply_json(ipc, r, c, 503, json_pack("{s:s}", "status", "loading"),
                          hdr_retry_unavail);
    if (atomic_load(&ipc->draining))
        return reply_json(ipc, r, c, 503, json_pack("{s:s}", "status", "draining"),
                          hdr_retry_unavail);
    return reply_json(ipc, r, c, 200, json_pack("{s:s}", "status", "ok"), NULL);
}

static bool handle_metrics(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c)
{
    refresh_engine_metrics(ipc, NULL);
    /* counted before rendering, so a scrape sees itself like any request */
    count_request(ipc, r->route, 200);
    char *text = moe_metrics_render();
    if (!text)
        return false;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return false;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, CT_PROM);
    bool ok = MHD_queue_response(c, MHD_HTTP_OK, resp) == MHD_YES;
    MHD_destroy_response(resp);
    r->responded = ok;
    return ok;
}

static bool handle_stats(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c)
{
    struct moe_engine_stats st;
    struct moe_ipc_limits lim = r->lim;
    bool have_engine = atomic_load(&ipc->engine) != NULL;
    refresh_engine_metrics(ipc, &st);
    const char *state = !have_engine ? "loading"
                        : atomic_load(&ipc->draining) ? "draining"
                                                      : "ready";
    json_t *engine = have_engine
                         ? json_pack("{s:i, s:i, s:I, s:I, s:I, s:i, s:I, s:I, s:I, s:I, s:I}",
                                     "queue_depth", (int)st.queue_depth, "running",
                                     (int)st.running, "steps", (json_int_t)st.steps,
                                     "prompt_tokens", (json_int_t)st.prompt_tokens,
                                     "prompt_tokens_cached",
                                     (json_int_t)st.prompt_tokens_cached, "prefix_entries",
                                     (int)st.prefix_entries,
                                     "prompt_tokens_shared",
                                     (json_int_t)st.prompt_tokens_shared, "generated_tokens",
                                     (json_int_t)st.generated_tokens, "requests_done",
                                     (json_int_t)st.requests_done, "requests_cancelled",
                                     (json_int_t)st.requests_cancelled, "requests_failed",
                                     (json_int_t)st.requests_failed)
                         : json_null();
    size_t gated = 0, handed = 0;
    ipc_gate_counts(ipc->gate, &gated, &handed);
    json_t *server = json_pack(
        "{s:s, s:o, s:s?, s:s, s:f, s:i, s:I, s:i, s:I, s:i}", "state", state, "model",
        moe_ipc_json_text(ipc->model_name, strlen(ipc->model_name)), "socket", ipc->socket_path,
        "listen", ipc->listen_names, "uptime_s", moe_now_s() - ipc->started, "connections",
        (int)atomic_load(&ipc->connections), "connections_waiting", (json_int_t)gated,
        "streams", (int)atomic_load(&ipc->streams), "requests",
        (json_int_t)atomic_load(&ipc->requests), "pid", (int)getpid());
    json_t *limits = json_pack("{s:I, s:I, s:i, s:i, s:f, s:i, s:i}", "max_body_bytes",
                               (json_int_t)lim.max_body_bytes, "max_prompt_bytes",
                               (json_int_t)lim.max_prompt_bytes, "max_tokens_limit",
                               (int)lim.max_tokens_limit, "default_max_tokens",
                               (int)lim.default_max_tokens, "request_timeout_s",
                               lim.request_timeout_s, "allow_uids", (int)lim.n_allow_uids,
                               "allow_gids", (int)lim.n_allow_gids);
    return reply_json(ipc, r, c, 200,
                      json_pack("{s:o, s:o, s:o}", "server", server, "engine", engine, "limits",
                                limits),
                      NULL);
}

/* ---- /tokenize and /detokenize, as llama-server has them ------------------- */

/* the body as a JSON object, or a 400 reply sent (NULL) */
static json_t *json_body(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c,
                         bool *ok)
{
    json_error_t jerr;
    json_t *o = json_loadb(r->body.data ? r->body.data : "", r->body.len,
                           JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(o)) {
        json_decref(o);
        *ok = fail_with(ipc, r, c, 400, "invalid_request_error", "invalid_json", NULL, NULL,
                        "the body must be a JSON object%s%s", o ? "" : ": ",
                        o ? "" : jerr.text);
        return NULL;
    }
    return o;
}

/* the engine, or a 503 reply sent (NULL) */
static struct moe_engine *engine_or_503(struct moe_ipc *ipc, struct ipc_req *r,
                                        struct MHD_Connection *c, bool *ok)
{
    struct moe_engine *engine = atomic_load(&ipc->engine);
    if (!engine || !ipc->ops.tokenize)
        *ok = fail_unavailable(ipc, r, c, true);
    return engine && ipc->ops.tokenize ? engine : NULL;
}

static bool engine_refused(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c,
                           int rc, const char *param)
{
    if (rc == -EINVAL)
        return fail_with(ipc, r, c, 400, "invalid_request_error", "invalid_value", param, NULL,
                         "%s", moe_err_msg());
    return fail_with(ipc, r, c, rc == -ENOENT ? 501 : 500, "server_error", "engine_error", NULL,
                     NULL, "%s", moe_err_msg());
}

/* {"content": TEXT, "add_special": false, "with_pieces": false} ->
 * {"tokens": [ID, ...]} or {"tokens": [{"id": ID, "piece": TEXT}, ...]} */
static bool handle_tokenize(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c)
{
    bool ok = false;
    json_t *o = json_body(ipc, r, c, &ok), *content, *v;
    if (!o)
        return ok;
    struct moe_engine *engine = engine_or_503(ipc, r, c, &ok);
    bool special = false, pieces = false;
    content = json_object_get(o, "content");
    if (!engine)
        goto out;
    if (!json_is_string(content)) {
        ok = fail_with(ipc, r, c, 400, "invalid_request_error",
                       content ? "invalid_type" : "missing_required_parameter", "content", NULL,
                       "'content' must be a string");
        goto out;
    }
    static const char *const flags[] = {"add_special", "with_pieces"};
    for (int i = 0; i < 2; i++) {
        if ((v = json_object_get(o, flags[i])) && !json_is_boolean(v)) {
            ok = fail_with(ipc, r, c, 400, "invalid_request_error", "invalid_type", flags[i],
                           NULL, "'%s' must be a boolean", flags[i]);
            goto out;
        }
        *(i ? &pieces : &special) = json_is_true(v);
    }
    int32_t *ids = NULL;
    size_t n = 0;
    moe_err_clear();
    int rc = ipc->ops.tokenize(engine, json_string_value(content), json_string_length(content),
                               special, &ids, &n);
    if (rc < 0) {
        ok = engine_refused(ipc, r, c, rc, "content");
        goto out;
    }
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++) {
        char *text = NULL;
        size_t len = 0;
        if (!pieces) {
            json_array_append_new(arr, json_integer(ids[i]));
        } else if (ipc->ops.detokenize(engine, &ids[i], 1, &text, &len) == 0) {
            json_array_append_new(arr, json_pack("{s:i, s:o}", "id", ids[i], "piece",
                                                 moe_ipc_json_text(text, len)));
        }
        free(text);
    }
    free(ids);
    ok = reply_json(ipc, r, c, 200, json_pack("{s:o}", "tokens", arr ? arr : json_array()), NULL);
out:
    json_decref(o);
    return ok;
}

/* {"tokens": [ID, ...]} -> {"content": TEXT} */
static bool handle_detokenize(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c)
{
    bool ok = false;
    json_t *o = json_body(ipc, r, c, &ok), *t, *v;
    if (!o)
        return ok;
    struct moe_engine *engine = engine_or_503(ipc, r, c, &ok);
    int32_t *ids = NULL;
    size_t i;
    if (!engine)
        goto out;
    t = json_object_get(o, "tokens");
    if (!json_is_array(t)) {
        ok = fail_with(ipc, r, c, 400, "invalid_request_error",
                       t ? "invalid_type" : "missing_required_parameter", "tokens", NULL,
                       "'tokens' must be an array of token ids");
        goto out;
    }
    ids = malloc((json_array_size(t) + 1) * sizeof(*ids));
    if (!ids)
        goto out;
    json_array_foreach(t, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > INT32_MAX) {
            char param[32];
            snprintf(param, sizeof(param), "tokens[%zu]", i);
            ok = fail_with(ipc, r, c, 400, "invalid_request_error", "invalid_value", param, NULL,
                           "'%s' must be a token id", param);
            goto out;
        }
        ids[i] = (int32_t)json_integer_value(v);
    }
    char *text = NULL;
    size_t len = 0;
    moe_err_clear();
    int rc = ipc->ops.detokenize(engine, ids, json_array_size(t), &text, &len);
    if (rc < 0) {
        ok = engine_refused(ipc, r, c, rc, "tokens");
        goto out;
    }
    ok = reply_json(ipc, r, c, 200, json_pack("{s:o}", "content", moe_ipc_json_text(text, len)),
                    NULL);
    free(text);
out:
    free(ids);
    json_decref(o);
    return ok;
}

static bool handle_reload(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c)
{
    char msg[512] = "";
    pthread_mutex_lock(&ipc->lock);
    moe_ipc_reload_fn fn = ipc->reload_fn;
    void *arg = ipc->reload_arg;
    pthread_mutex_unlock(&ipc->lock);
    if (!fn)
        return fail_with(ipc, r, c, 501, "server_error", "reload_unavailable", NULL, NULL,
                         "this server has no reload handler");
    /* outside ipc->lock: the hook will want moe_ipc_set_limits */
    pthread_mutex_lock(&ipc->reload_lock);
    int rc = fn(arg, msg, sizeof(msg));
    pthread_mutex_unlock(&ipc->reload_lock);
    if (rc == 0)
        return reply_json(ipc, r, c, 200, json_pack("{s:s}", "status", "reloaded"), NULL);
    if (!msg[0])
        snprintf(msg, sizeof(msg), "reload failed: %s", strerror(-rc));
    moe_log(MOE_LOG_WARN, "ipc: reload: %s", msg);
    if (rc == -ESHUTDOWN)
        return fail_with(ipc, r, c, 503, "service_unavailable", "reload_failed", NULL,
                         hdr_retry_unavail, "%s", msg);
    if (rc == -EINVAL) /* the configuration is wrong, not the server */
        return fail_with(ipc, r, c, 400, "invalid_request_error", "reload_failed", NULL, NULL,
                         "%s", msg);
    return fail_with(ipc, r, c, 500, "server_error", "reload_failed", NULL, NULL, "%s", msg);
}

/* ---- MHD callbacks ------------------------------------------------------- */

/* "Authorization: Bearer KEY", compared in constant time */
static bool key_ok(struct MHD_Connection *c, const char *key)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    h += 7;
    while (*h == ' ')
        h++;
    size_t n = strlen(key), m = strlen(h);
    unsigned char diff = n != m;
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)key[i] ^ (unsigned char)(i < m ? h[i] : 0);
    return diff == 0;
}

struct field_count {
    const char *name;
    int n;
    const char *last;
};

static enum MHD_Result count_field(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    struct field_count *f = cls;
    if (strcasecmp(key, f->name) == 0) {
        f->n++;
        f->last = value;
    }
    return MHD_YES;
}

/* RFC 9112 6.3 on a kept-alive connection (the gate checked the first
 * request's head before MHD saw it): one Content-Length, and no transfer
 * coding but chunked. 0, or the status to answer. */
static int body_framing(struct MHD_Connection *c, const char **what)
{
    struct field_count cl = {"Content-Length", 0, NULL}, te = {"Transfer-Encoding", 0, NULL};
    MHD_get_connection_values(c, MHD_HEADER_KIND, count_field, &cl);
    MHD_get_connection_values(c, MHD_HEADER_KIND, count_field, &te);
    if (te.n && (te.n > 1 || strcasecmp(te.last, "chunked") != 0)) {
        *what = "Transfer-Encoding other than 'chunked' is not supported";
        return 501;
    }
    if (cl.n > 1) {
        *what = "Content-Length given more than once";
        return 400;
    }
    if (cl.n && te.n) {
        *what = "both Content-Length and Transfer-Encoding given";
        return 400;
    }
    return 0;
}

/* Lenient: no type, JSON of any flavour, and what curl -d sends by default. */
static bool content_type_ok(const char *ct)
{
    static const char *const ok[] = {"application/json", "application/x-www-form-urlencoded",
                                     "text/plain"};
    if (!ct)
        return true;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t n = strcspn(ct, ";");
    while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    if (n == 0)
        return true;
    for (size_t i = 0; i < MOE_ARRAY_SIZE(ok); i++)
        if (n == strlen(ok[i]) && strncasecmp(ct, ok[i], n) == 0)
            return true;
    return n > 5 && strncasecmp(ct + n - 5, "+json", 5) == 0;
}

static bool fail_too_large(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c,
                           size_t got, bool declared)
{
    return fail_with(ipc, r, c, 413, "invalid_request_error", "body_too_large", NULL, NULL,
                     "the request body %s %zu bytes; this server accepts at most %zu",
                     declared ? "declares" : "exceeds", got, r->lim.max_body_bytes);
}

/* First call for a request: only its headers are known. */
static enum MHD_Result on_headers(struct moe_ipc *ipc, struct ipc_req *r,
                                  struct MHD_Connection *c, const char *url, const char *method)
{
    struct ucred cr;
    bool is_get = strcmp(method, MHD_HTTP_METHOD_GET) == 0 ||
                  strcmp(method, MHD_HTTP_METHOD_HEAD) == 0;
    bool is_post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;

    bool tcp = r->conn && r->conn->tcp;
    if (!tcp && !ipc_peer_allowed(&r->lim, r->fd, &cr)) {
        ipc_gate_log(ipc->gate, "refused peer pid %d uid %u gid %u", (int)cr.pid,
                     (unsigned)cr.uid, (unsigned)cr.gid);
        return fail_with(ipc, r, c, 403, "permission_error", "forbidden", NULL, NULL,
                         "uid %u / gid %u may not use this server", (unsigned)cr.uid,
                         (unsigned)cr.gid)
                   ? MHD_YES
                   : MHD_NO;
    }
    r->route = route_of(url);
    if (tcp && routes[r->route].access != ACCESS_OPEN) {
        static const char *const www[] = {MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer", NULL};
        if (routes[r->route].access == ACCESS_ADMIN && !r->lim.api_key[0])
            return fail_with(ipc, r, c, 403, "permission_error", "forbidden", NULL, NULL,
                             "%s is not served over TCP unless [daemon] api_key is set",
                             routes[r->route].label)
                       ? MHD_YES
                       : MHD_NO;
        if (r->lim.api_key[0] && !key_ok(c, r->lim.api_key)) {
            ipc_gate_log(ipc->gate, "401 to %s: missing or wrong API key", r->conn->peer);
            return fail_with(ipc, r, c, 401, "invalid_request_error", "invalid_api_key", NULL,
                             www, "a valid API key is required (Authorization: Bearer KEY)")
                       ? MHD_YES
                       : MHD_NO;
        }
    }
    const char *framing_why = NULL;
    int framing = body_framing(c, &framing_why);
    if (framing)
        return fail_with(ipc, r, c, framing, framing >= 500 ? "server_error" :
                         "invalid_request_error", framing >= 500 ? "not_implemented" :
                         "bad_request", NULL, NULL, "%s", framing_why)
                   ? MHD_YES
                   : MHD_NO;
    if (r->route == R_OTHER)
        return fail_with(ipc, r, c, 404, "invalid_request_error", "not_found", NULL, NULL,
                         "no such endpoint: %s %.200s", method, url)
                   ? MHD_YES
                   : MHD_NO;
    if (routes[r->route].post ? !is_post : !is_get) {
        const char *const allow[] = {MHD_HTTP_HEADER_ALLOW,
                                     routes[r->route].post ? "POST" : "GET, HEAD", NULL};
        return fail_with(ipc, r, c, 405, "invalid_request_error", "method_not_allowed", NULL,
                         allow, "%s does not take %s; use %s", routes[r->route].label, method,
                         allow[1])
                   ? MHD_YES
                   : MHD_NO;
    }
    if (is_post) {
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && r->lim.max_body_bytes) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(cl, &end, 10);
            if (end != cl && (errno == ERANGE || n > r->lim.max_body_bytes))
                return fail_too_large(ipc, r, c, errno == ERANGE ? SIZE_MAX : (size_t)n, true)
                           ? MHD_YES
                           : MHD_NO;
            if (end != cl && n > 0 && moe_ipc_buf_append(&r->body, "", 0) == 0 &&
                r->body.cap < n + 1) { /* one allocation for the whole body */
                char *d = realloc(r->body.data, n + 1);
                if (d) {
                    r->body.data = d;
                    r->body.cap = n + 1;
                }
            }
        }
        const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_TYPE);
        if (!content_type_ok(ct))
            return fail_with(ipc, r, c, 415, "invalid_request_error", "unsupported_media_type",
                             NULL, NULL, "the body must be JSON (Content-Type: %s), got '%.100s'",
                             CT_JSON, ct)
                       ? MHD_YES
                       : MHD_NO;
        return MHD_YES; /* the body comes next */
    }
    return MHD_YES;
}

/* Last call: the whole body is in r->body. */
static bool on_complete(struct moe_ipc *ipc, struct ipc_req *r, struct MHD_Connection *c,
                        const char *url)
{
    if (r->too_large)
        return fail_too_large(ipc, r, c, r->swallowed, false);
    switch (r->route) {
    case R_COMPLETIONS:
    case R_CHAT:
    case R_RESPONSES: return handle_generate(ipc, r, c);
    case R_MODELS:
    case R_MODEL: return handle_models(ipc, r, c, url);
    case R_HEALTH: return handle_health(ipc, r, c);
    case R_METRICS: return handle_metrics(ipc, r, c);
    case R_STATS: return handle_stats(ipc, r, c);
    case R_RELOAD: return handle_reload(ipc, r, c);
    case R_TOKENIZE: return handle_tokenize(ipc, r, c);
    case R_DETOKENIZE: return handle_detokenize(ipc, r, c);
    default: break;
    }
    return false;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_size, void **req_cls)
{
    struct moe_ipc *ipc = cls;
    struct ipc_req *r = *req_cls;

    if (!r) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        const union MHD_ConnectionInfo *sc =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        r = calloc(1, sizeof(*r));
        if (!r)
            return MHD_NO;
        *req_cls = r;
        atomic_fetch_add(&ipc->active, 1);
        r->t0 = moe_now_s();
        r->fd = ci ? ci->connect_fd : -1;
        r->conn = sc ? sc->socket_context : NULL;
        r->route = R_OTHER;
        pthread_mutex_lock(&ipc->lock);
        r->lim = ipc->limits;
        pthread_mutex_unlock(&ipc->lock);
        /* the body, however it trickles in, has body_timeout in all */
        ipc_conn_deadline(r->conn, strcmp(method, MHD_HTTP_METHOD_POST) == 0
                                       ? r->lim.body_timeout_s : 0,
                          "the request body did not arrive within body_timeout");
        return on_headers(ipc, r, c, url, method);
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (r->responded)
            return MHD_YES; /* swallowed */
        if (r->too_large) {
            /* MHD takes no reply before the body ends: read on, a little */
            r->swallowed += n;
            if (r->swallowed <= IPC_SWALLOW_BYTES)
                return MHD_YES;
            moe_log(MOE_LOG_WARN, "ipc: %s: body still coming %zu bytes past the limit; "
                    "closing the connection", routes[r->route].label, r->swallowed);
            count_request(ipc, r->route, 413);
            return MHD_NO;
        }
        if (r->lim.max_body_bytes && n > r->lim.max_body_bytes - r->body.len) {
            /* chunked (or lying) bodies are counted as they come; the 413
             * goes out when the body ends (MHD 0.9.75 refuses a reply in
             * the middle of an upload) */
            r->too_large = true;
            r->swallowed = r->body.len + n;
            moe_ipc_buf_free(&r->body);
            return MHD_YES;
        }
        if (moe_ipc_buf_append(&r->body, upload_data, n))
            return MHD_NO;
        return MHD_YES;
    }
    if (r->responded)
        return MHD_YES;
    ipc_conn_deadline(r->conn, 0, NULL); /* the body is in: generation takes its time */
    ipc_gate_busy(ipc->gate, r->conn, true);
    return on_complete(ipc, r, c, url) ? MHD_YES : MHD_NO;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct moe_ipc *ipc = cls;
    struct ipc_req *r = *req_cls;
    if (!r)
        return;
    if (r->no_timeout && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
        MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, IPC_IDLE_TIMEOUT_S);
    /* kept alive: the next request's head has the idle timeout in all */
    ipc_conn_deadline(r->conn, IPC_IDLE_TIMEOUT_S, "kept-alive connection idle too long");
    ipc_gate_busy(ipc->gate, r->conn, false);
    atomic_fetch_sub(&ipc->active, 1);
    moe_ipc_buf_free(&r->body);
    free(r);
    *req_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct moe_ipc *ipc = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        *socket_ctx = ci ? ipc_gate_started(ipc->gate, ci->connect_fd) : NULL;
        atomic_fetch_add(&ipc->connections, 1);
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        ipc_gate_closed(ipc->gate, *socket_ctx);
        *socket_ctx = NULL;
        atomic_fetch_sub(&ipc->connections, 1);
    }
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n')
        line[--n] = '\0';
    /* MHD takes every connection the gate hands it for TCP and tries TCP
     * socket options on Unix ones too: harmless there, and not worth a line
     * per request */
    static const char *const noise[] = {"TCP_NODELAY", "TCP_CORK", "Failed to push the data"};
    for (size_t i = 0; i < MOE_ARRAY_SIZE(noise); i++)
        if (strstr(line, noise[i])) {
            moe_log(MOE_LOG_DEBUG, "ipc: microhttpd: %s", line);
            return;
        }
    /* mostly clients that went away: not worth a warning each */
    moe_log(MOE_LOG_INFO, "ipc: microhttpd: %s", line);
}

/* The gate hands a connection whose head is complete to MHD. */
static bool handoff(void *arg, struct ipc_conn *conn)
{
    struct moe_ipc *ipc = arg;
    return MHD_add_connection(ipc->mhd, conn->fd, (const struct sockaddr *)&conn->addr,
                              conn->addrlen) == MHD_YES;
}

/* ---- API ----------------------------------------------------------------- */

static void ipc_free(struct moe_ipc *ipc)
{
    for (size_t i = 0; i < ipc->n_ls; i++)
        ipc_listener_close(&ipc->ls[i]);
    free(ipc->model_name);
    free(ipc->socket_path);
    free(ipc->listen_names);
    pthread_mutex_destroy(&ipc->lock);
    pthread_mutex_destroy(&ipc->reload_lock);
    moe_ipc_metrics_free(&ipc->metrics);
    free(ipc);
}

int moe_ipc_start(const struct moe_ipc_config *cfg, struct moe_ipc **out)
{
    struct moe_ipc *ipc;
    int rc;

    *out = NULL;
    ipc = calloc(1, sizeof(*ipc));
    if (!ipc)
        return moe_err(-ENOMEM, "ipc: out of memory");
    pthread_mutex_init(&ipc->lock, NULL);
    pthread_mutex_init(&ipc->reload_lock, NULL);
    ipc->ops = real_engine;
    ipc->limits = cfg->limits;
    ipc->started = moe_now_s();
    ipc->started_unix = (int64_t)time(NULL);
    ipc->model_name = strdup(cfg->model_name && cfg->model_name[0] ? cfg->model_name : "default");
    if (!ipc->model_name) {
        rc = moe_err(-ENOMEM, "ipc: out of memory");
        goto fail;
    }
    if ((rc = metrics_register(ipc)))
        goto fail;
    if ((rc = ipc_listeners_open(cfg, ipc->ls, &ipc->n_ls)))
        goto fail;
    struct moe_ipc_buf names = {0};
    for (size_t i = 0; i < ipc->n_ls; i++) {
        if (i && moe_ipc_buf_append(&names, ", ", 2))
            break;
        if (moe_ipc_buf_append(&names, ipc->ls[i].name, strlen(ipc->ls[i].name) + 1))
            break;
        names.len--; /* the NUL stays past len */
    }
    ipc->listen_names = names.data;
    for (size_t i = 0; i < ipc->n_ls && !ipc->socket_path; i++)
        if (ipc->ls[i].bound_path && !(ipc->socket_path = strdup(ipc->ls[i].bound_path)))
            names.data = NULL;
    if (!ipc->listen_names || !names.data) {
        rc = moe_err(-ENOMEM, "ipc: out of memory");
        goto fail;
    }

    /* thread per connection: see the top of this file. No listening socket
     * of its own: the gate (ipc_gate.c) accepts and hands connections over. */
    ipc->mhd = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
            MHD_USE_ITC | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ERROR_LOG,
        0, NULL, NULL, on_access, ipc, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, ipc,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)IPC_CONN_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT,
        IPC_IDLE_TIMEOUT_S, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)IPC_CONN_MEMORY,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, ipc, MHD_OPTION_NOTIFY_CONNECTION,
        on_connection, ipc, MHD_OPTION_STRICT_FOR_CLIENT, 0, MHD_OPTION_END);
    if (!ipc->mhd) {
        rc = moe_err(-EIO, "ipc: cannot start the HTTP server");
        goto fail;
    }
    rc = ipc_gate_start(&ipc->gate, ipc->ls, ipc->n_ls, IPC_CONN_LIMIT, &cfg->limits, handoff,
                        ipc);
    if (rc) {
        MHD_stop_daemon(ipc->mhd);
        goto fail;
    }
    ipc->n_ls = 0; /* the gate owns them now */
    if (cfg->threads > 0)
        moe_log(MOE_LOG_DEBUG, "ipc: threads=%d ignored: one thread per connection",
                cfg->threads);
    moe_log(MOE_LOG_INFO, "ipc: listening on %s", ipc->listen_names);
    if (strstr(ipc->listen_names, "tcp") && !cfg->limits.api_key[0])
        moe_log(MOE_LOG_WARN, "ipc: listening on TCP without [daemon] api_key: anyone who "
                              "reaches the port may generate (admin routes stay closed on TCP)");
    *out = ipc;
    return 0;

fail:
    ipc_free(ipc);
    return rc;
}

void moe_ipc_set_engine(struct moe_ipc *ipc, struct moe_engine *engine)
{
    atomic_store(&ipc->engine, engine);
}

void moe_ipc_set_engine_ops(struct moe_ipc *ipc, const struct moe_ipc_engine_ops *ops)
{
    ipc->ops = ops ? *ops : real_engine;
}

void moe_ipc_set_limits(struct moe_ipc *ipc, const struct moe_ipc_limits *limits)
{
    pthread_mutex_lock(&ipc->lock);
    const struct moe_jinja *t = ipc->limits.chat_jinja;
    const char *bos = ipc->limits.chat_bos, *eos = ipc->limits.chat_eos;
    ipc->limits = *limits;
    ipc->limits.chat_jinja = t, ipc->limits.chat_bos = bos, ipc->limits.chat_eos = eos;
    pthread_mutex_unlock(&ipc->lock);
    ipc_gate_set_limits(ipc->gate, limits);
}

void moe_ipc_set_chat_template(struct moe_ipc *ipc, const struct moe_jinja *t, const char *bos,
                               const char *eos)
{
    pthread_mutex_lock(&ipc->lock);
    ipc->limits.chat_jinja = t, ipc->limits.chat_bos = bos, ipc->limits.chat_eos = eos;
    pthread_mutex_unlock(&ipc->lock);
}

void moe_ipc_set_reload_hook(struct moe_ipc *ipc, moe_ipc_reload_fn fn, void *arg)
{
    pthread_mutex_lock(&ipc->lock);
    ipc->reload_fn = fn;
    ipc->reload_arg = arg;
    pthread_mutex_unlock(&ipc->lock);
}

void moe_ipc_stop_accepting(struct moe_ipc *ipc)
{
    if (!ipc || atomic_exchange(&ipc->draining, true))
        return;
    /* new clients find no socket instead of a backlog nobody accepts */
    ipc_gate_quiesce(ipc->gate);
}

void moe_ipc_stop(struct moe_ipc *ipc)
{
    if (!ipc)
        return;
    atomic_store(&ipc->draining, true);
    /* waiting threads cancel their jobs and give up within IPC_STOP_GRACE_S / 2;
     * the replies they then queue (a stream's closing chunk and [DONE], a
     * completion with finish_reason "cancelled") get the rest to go out */
    atomic_store(&ipc->stopping, true);
    for (double t0 = moe_now_s(); atomic_load(&ipc->active) > 0 &&
                                  moe_now_s() - t0 < IPC_STOP_GRACE_S;)
        usleep(10000);
    ipc_gate_stop(ipc->gate);
    MHD_stop_daemon(ipc->mhd); /* joins every connection thread */
    ipc_gate_free(ipc->gate);
    ipc_free(ipc);
}
