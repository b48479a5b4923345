/* The HTTP server over a real Unix socket, driven with raw HTTP from plain
 * AF_UNIX sockets (so requests without Host, with odd Hosts, chunked bodies
 * and hang-ups are all possible).
 *
 *   - no engine (loading): /health 503, generation 503 + Retry-After, and
 *     the checks that come before the engine: 404, 405 + Allow, 413
 *     (Content-Length and chunked), 415, 400 for malformed JSON, /metrics,
 *     /v1/models, /admin/...; Host headers; peer credentials; the socket file
 *     (mode, stale, live, not a socket, too long), socket activation.
 *   - a scripted engine (moe_ipc_set_engine_ops): completions and chat,
 *     streaming and not, 429/503/400 from submit, engine errors, hang-ups
 *     cancel the job, 32 concurrent streams, keep-alive and draining, stop
 *     with a stream in flight.
 *   - the real engine on models/tiny-moe: one non-streaming and one
 *     streaming completion (greedy: the same text) and a chat. */
#define _GNU_SOURCE
#include "tests/unit/test.h"

#include "backend/backend.h"
#include "common/common.h"
#include "engine/engine_server.h"
#include "ipc/ipc.h"
#include "daemon/daemon.h" /* MOED_VERSION */
#include "ipc/ipc_int.h"
#include "model/model.h"

#include <errno.h>
#include <math.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

/* ---- a raw HTTP client --------------------------------------------------- */

struct resp {
    int status;
    char head[8192]; /* status line and headers */
    char *body;      /* de-chunked, NUL-terminated */
    size_t len;
    bool eof;        /* the server closed the connection after it */
};

static void resp_free(struct resp *r)
{
    free(r->body);
    r->body = NULL;
}

static void sun_set(struct sockaddr_un *sa, const char *path)
{
    size_t n = strlen(path);
    assert_true(n < sizeof(sa->sun_path));
    memcpy(sa->sun_path, path, n + 1);
}

static int sock_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    sun_set(&sa, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    struct timeval tv = {.tv_sec = 20}; /* a hung server fails the test, not the run */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

/* false when the server closed early (a reply may still be readable) */
static bool send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        c += k;
        n -= (size_t)k;
    }
    return true;
}

struct rbuf {
    char *d;
    size_t len, cap, pos;
    bool eof;
};

static bool rbuf_fill(int fd, struct rbuf *b)
{
    if (b->eof)
        return false;
    if (b->cap - b->len < 4096) {
        b->cap = b->cap ? b->cap * 2 : 16384;
        b->d = realloc(b->d, b->cap + 1);
        assert_non_null(b->d);
    }
    ssize_t k = recv(fd, b->d + b->len, b->cap - b->len, 0);
    if (k <= 0) {
        b->eof = true;
        return false;
    }
    b->len += (size_t)k;
    b->d[b->len] = '\0';
    return true;
}

static char *find_crlf(struct rbuf *b, size_t from)
{
    for (size_t i = from; i + 1 < b->len; i++)
        if (b->d[i] == '\r' && b->d[i + 1] == '\n')
            return b->d + i;
    return NULL;
}

static const char *header(const struct resp *r, const char *name)
{
    static _Thread_local char val[512]; /* client threads call this at once */
    const char *p = r->head;
    size_t n = strlen(name);
    while ((p = strstr(p, "\r\n"))) {
        p += 2;
        if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
            p += n + 1;
            while (*p == ' ')
                p++;
            size_t l = strcspn(p, "\r\n");
            snprintf(val, sizeof(val), "%.*s", (int)l, p);
            return val;
        }
    }
    return NULL;
}

/* Reads one response from fd; head_only for HEAD requests. */
static bool read_response(int fd, struct resp *r, bool head_only)
{
    struct rbuf b = {0};
    char *end;
    memset(r, 0, sizeof(*r));
    while (!(b.d && (end = strstr(b.d, "\r\n\r\n"))))
        if (!rbuf_fill(fd, &b)) {
            free(b.d);
            return false;
        }
    size_t hl = (size_t)(end - b.d) + 4;
    snprintf(r->head, sizeof(r->head), "%.*s", (int)hl, b.d);
    if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1) {
        free(b.d);
        return false;
    }
    b.pos = hl;
    size_t cap = 4096, len = 0;
    char *body = malloc(cap + 1);
    assert_non_null(body);
    const char *cl = header(r, "Content-Length");
    const char *te = header(r, "Transfer-Encoding");
    if (head_only) {
        /* nothing follows */
    } else if (te && strcasecmp(te, "chunked") == 0) {
        for (;;) {
            char *eol;
            while (!(eol = find_crlf(&b, b.pos)))
                if (!rbuf_fill(fd, &b))
                    goto done;
            size_t n = strtoul(b.d + b.pos, NULL, 16);
            b.pos = (size_t)(eol - b.d) + 2;
            if (n == 0) {
                while (!find_crlf(&b, b.pos)) /* (no trailers) */
                    if (!rbuf_fill(fd, &b))
                        break;
                break;
            }
            while (b.len - b.pos < n + 2)
                if (!rbuf_fill(fd, &b))
                    goto done;
            if (len + n > cap) {
                while (len + n > cap)
                    cap *= 2;
                body = realloc(body, cap + 1);
                assert_non_null(body);
            }
            memcpy(body + len, b.d + b.pos, n);
            len += n;
            b.pos += n + 2;
        }
    } else {
        size_t want = cl ? strtoull(cl, NULL, 10) : SIZE_MAX;
        while (b.len - b.pos < want && rbuf_fill(fd, &b))
            ;
        size_t n = MOE_MIN(want, b.len - b.pos);
        if (n > cap) {
            cap = n;
            body = realloc(body, cap + 1);
            assert_non_null(body);
        }
        memcpy(body + len, b.d + b.pos, n);
        len = n;
    }
done:
    body[len] = '\0';
    r->body = body;
    r->len = len;
    r->eof = b.eof;
    free(b.d);
    return true;
}

/* One request on a fresh connection; raw is sent as is. */
static struct resp raw_request(const char *sock, const char *raw, size_t n)
{
    struct resp r;
    int fd = sock_connect(sock);
    if (fd < 0)
        fail_msg("connect %s: %s", sock, strerror(errno));
    send_all(fd, raw, n);
    if (!read_response(fd, &r, strncmp(raw, "HEAD ", 5) == 0))
        fail_msg("no response to: %.80s", raw);
    close(fd);
    return r;
}

static struct resp request(const char *sock, const char *method, const char *path,
                           const char *body, const char *extra_headers)
{
    size_t bl = body ? strlen(body) : 0;
    size_t cap = bl + 1024;
    char *raw = malloc(cap);
    assert_non_null(raw);
    int n = snprintf(raw, cap,
                     "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n%s%s",
                     method, path, extra_headers ? extra_headers : "",
                     body ? "Content-Type: application/json\r\n" : "");
    if (body)
        n += snprintf(raw + n, cap - (size_t)n, "Content-Length: %zu\r\n\r\n%s", bl, body);
    else
        n += snprintf(raw + n, cap - (size_t)n, "\r\n");
    struct resp r = raw_request(sock, raw, (size_t)n);
    free(raw);
    return r;
}

static json_t *body_json(const struct resp *r)
{
    json_error_t je;
    json_t *j = json_loadb(r->body, r->len, 0, &je);
    if (!j)
        fail_msg("not JSON (%s): %s", je.text, r->body);
    return j;
}

/* status, error code and (when given) a part of the message */
static void expect_error(const struct resp *r, int status, const char *code, const char *msg)
{
    if (r->status != status)
        fail_msg("status %d, expected %d: %s", r->status, status, r->body);
    const char *ct = header(r, "Content-Type");
    assert_non_null(ct);
    assert_string_equal(ct, "application/json");
    json_t *j = body_json(r), *e = json_object_get(j, "error");
    assert_non_null(e);
    assert_true(json_is_string(json_object_get(e, "type")));
    assert_true(json_is_string(json_object_get(e, "message")));
    if (strcmp(json_string_value(json_object_get(e, "code")), code) != 0)
        fail_msg("code %s, expected %s", json_string_value(json_object_get(e, "code")), code);
    if (msg && !strstr(json_string_value(json_object_get(e, "message")), msg))
        fail_msg("message '%s' lacks '%s'", json_string_value(json_object_get(e, "message")),
                 msg);
    json_decref(j);
}

static double now_s(void)
{
    return moe_now_s();
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- a scripted engine --------------------------------------------------- */

enum script { S_HELLO, S_SLOW, S_FOREVER, S_ENDLESS, S_FAIL, S_REFUSE, S_UTF8 };

struct fake_job {
    enum script script;
    int i;
    double due;
    atomic_bool cancelled;
    char text[64];
};

static struct {
    pthread_mutex_t mu;
    int submitted, cancelled, released;
    char last_prompt[256];
    int32_t last_max_tokens;
    uint64_t last_seed;
    float last_temperature;
    size_t last_n_messages, last_n_stop;
    bool last_stream;
    double last_timeout;
} fk = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int fake_engine_token;
#define FAKE_ENGINE ((struct moe_engine *)&fake_engine_token)

static int fake_submit(struct moe_engine *e, struct moe_request *req, struct moe_job **out)
{
    const char *p = req->kind == MOE_REQ_CHAT ? req->messages[req->n_messages - 1].content
                                              : req->prompt;
    assert_ptr_equal(e, FAKE_ENGINE);
    if (strcmp(p, "queue-full") == 0)
        return moe_err(-EAGAIN, "queue full");
    if (strcmp(p, "shutdown") == 0)
        return moe_err(-ESHUTDOWN, "draining");
    if (strcmp(p, "invalid") == 0)
        return moe_err(-EINVAL, "the prompt has 9999 tokens; the context holds 64");
    if (strcmp(p, "nomem") == 0)
        return moe_err(-ENOMEM, "out of memory");
    struct fake_job *j = calloc(1, sizeof(*j));
    assert_non_null(j);
    j->script = strcmp(p, "slow") == 0      ? S_SLOW
                : strcmp(p, "forever") == 0 ? S_FOREVER
                : strcmp(p, "endless") == 0 ? S_ENDLESS
                : strcmp(p, "fail") == 0    ? S_FAIL
                : strcmp(p, "refuse") == 0  ? S_REFUSE
                : strcmp(p, "utf8") == 0    ? S_UTF8
                                            : S_HELLO;
    j->due = now_s();
    pthread_mutex_lock(&fk.mu);
    fk.submitted++;
    snprintf(fk.last_prompt, sizeof(fk.last_prompt), "%s", p);
    fk.last_max_tokens = req->max_tokens;
    fk.last_seed = req->sampling.seed;
    fk.last_temperature = req->sampling.temperature;
    fk.last_n_messages = req->n_messages;
    fk.last_n_stop = req->n_stop;
    fk.last_stream = req->stream;
    fk.last_timeout = req->timeout_s;
    pthread_mutex_unlock(&fk.mu);
    moe_request_free(req); /* the engine owns it now */
    *out = (struct moe_job *)j;
    return 0;
}

static int fake_next(struct moe_job *job, struct moe_event *ev, int timeout_ms)
{
    struct fake_job *j = (struct fake_job *)job;
    memset(ev, 0, sizeof(*ev));
    if (atomic_load(&j->cancelled)) {
        ev->kind = MOE_EV_DONE;
        ev->finish_reason = "cancelled";
        return 0;
    }
    switch (j->script) {
    case S_HELLO:
        if (j->i < 2) {
            snprintf(j->text, sizeof(j->text), "%s", j->i ? " world" : "Hello");
            ev->kind = MOE_EV_TEXT;
            ev->text = j->text;
            ev->len = strlen(j->text);
        } else {
            ev->kind = MOE_EV_DONE;
            ev->finish_reason = "stop";
            ev->prompt_tokens = 3;
            ev->completion_tokens = 2;
        }
        j->i++;
        return 0;
    case S_UTF8: /* an invalid byte must not break the JSON */
        if (j->i++ == 0) {
            memcpy(j->text, "ok \xff \xe2\x82\xac", 8);
            ev->kind = MOE_EV_TEXT;
            ev->text = j->text;
            ev->len = 8;
        } else {
            ev->kind = MOE_EV_DONE;
            ev->finish_reason = "length";
            ev->prompt_tokens = 1;
            ev->completion_tokens = 1;
        }
        return 0;
    case S_SLOW: { /* 5 words, 40 ms apart */
        double wait = j->due - now_s();
        if (wait > 0) {
            int ms = (int)(wait * 1000) + 1;
            if (timeout_ms >= 0 && ms > timeout_ms) {
                sleep_ms(timeout_ms);
                return -ETIMEDOUT;
            }
            sleep_ms(ms);
        }
        j->due = now_s() + 0.04;
        if (j->i < 5) {
            snprintf(j->text, sizeof(j->text), "w%d ", j->i);
            ev->kind = MOE_EV_TEXT;
            ev->text = j->text;
            ev->len = strlen(j->text);
        } else {
            ev->kind = MOE_EV_DONE;
            ev->finish_reason = "length";
            ev->prompt_tokens = 1;
            ev->completion_tokens = 5;
        }
        j->i++;
        return 0;
    }
    case S_FOREVER:
        sleep_ms(timeout_ms < 0 || timeout_ms > 10 ? 10 : timeout_ms);
        return -ETIMEDOUT;
    case S_ENDLESS: /* a token every millisecond: next() never times out */
        sleep_ms(1);
        snprintf(j->text, sizeof(j->text), "x");
        ev->kind = MOE_EV_TEXT;
        ev->text = j->text;
        ev->len = 1;
        return 0;
    case S_REFUSE: /* as the engine does for a prompt longer than the context */
        ev->kind = MOE_EV_ERROR;
        ev->status = 400;
        snprintf(ev->message, sizeof(ev->message), "the prompt has 300 tokens; the context "
                                                   "holds 128");
        return 0;
    case S_FAIL:
        if (j->i++ == 0) {
            snprintf(j->text, sizeof(j->text), "partial");
            ev->kind = MOE_EV_TEXT;
            ev->text = j->text;
            ev->len = 7;
        } else {
            ev->kind = MOE_EV_ERROR;
            ev->status = 500;
            snprintf(ev->message, sizeof(ev->message), "engine exploded");
        }
        return 0;
    }
    return -EINVAL;
}

static void fake_cancel(struct moe_job *job)
{
    struct fake_job *j = (struct fake_job *)job;
    atomic_store(&j->cancelled, true);
    pthread_mutex_lock(&fk.mu);
    fk.cancelled++;
    pthread_mutex_unlock(&fk.mu);
}

static void fake_release(struct moe_job *job)
{
    pthread_mutex_lock(&fk.mu);
    fk.released++;
    pthread_mutex_unlock(&fk.mu);
    free(job);
}

static uint64_t fake_kv_waits = 7; /* only grows, as the engine's */

static void fake_stats(struct moe_engine *e, struct moe_engine_stats *st)
{
    memset(st, 0, sizeof(*st));
    st->queue_depth = 2;
    st->running = 3;
    st->steps = 10;
    st->prompt_tokens = 100;
    st->generated_tokens = 50;
    st->kv_blocks_total = 100;
    st->kv_blocks_used = 20;
    st->kv_blocks_reserved = 5;
    st->kv_block_tokens = 16;
    st->kv_block_bytes = 4096;
    st->kv_bytes_per_token = 1024;
    st->kv_waits = fake_kv_waits;
}

static const struct moe_ipc_engine_ops fake_ops = {
    .submit = fake_submit,
    .next = fake_next,
    .cancel = fake_cancel,
    .release = fake_release,
    .get_stats = fake_stats,
};

static void fake_reset(void)
{
    pthread_mutex_lock(&fk.mu);
    fk.submitted = fk.cancelled = fk.released = 0;
    pthread_mutex_unlock(&fk.mu);
}

/* waits until the fake saw `cancelled` cancels and `released` releases */
static void fake_wait(int cancelled, int released)
{
    double until = now_s() + 3;
    for (;;) {
        pthread_mutex_lock(&fk.mu);
        int c = fk.cancelled, r = fk.released;
        pthread_mutex_unlock(&fk.mu);
        if (c == cancelled && r == released)
            return;
        if (now_s() > until)
            fail_msg("cancelled %d released %d, expected %d %d", c, r, cancelled, released);
        sleep_ms(5);
    }
}

/* ---- the server under test ----------------------------------------------- */

static char sock_path[300];

static struct moe_ipc_limits limits(void)
{
    struct moe_ipc_limits lim = {
        .max_body_bytes = 64 << 10,
        .max_prompt_bytes = 16 << 10,
        .max_tokens_limit = 1024,
        .request_timeout_s = 30,
        .default_max_tokens = 64,
    };
    moe_sampling_defaults(&lim.defaults);
    lim.defaults.seed = UINT64_MAX; /* a fresh seed per request */
    return lim;
}

static struct moe_ipc *start_at(const char *path, int listen_fd, mode_t mode, int *rc_out)
{
    struct moe_ipc_config cfg = {
        .socket_path = path,
        .listen_fds = {listen_fd},
        .n_listen_fds = listen_fd >= 0,
        .socket_mode = mode,
        .socket_gid = (gid_t)-1,
        .model_name = "tiny-test",
        .limits = limits(),
    };
    struct moe_ipc *ipc = NULL;
    int rc = moe_ipc_start(&cfg, &ipc);
    if (rc_out)
        *rc_out = rc;
    else if (rc)
        fail_msg("moe_ipc_start: %s", moe_err_msg());
    return ipc;
}

static int setup_loading(void **state)
{
    snprintf(sock_path, sizeof(sock_path), "%s/moed.sock", moe_test_tmpdir());
    *state = start_at(sock_path, -1, 0660, NULL);
    return 0;
}

static int setup_fake(void **state)
{
    setup_loading(state);
    moe_ipc_set_engine_ops(*state, &fake_ops);
    moe_ipc_set_engine(*state, FAKE_ENGINE);
    fake_reset();
    return 0;
}

static int teardown(void **state)
{
    moe_ipc_stop(*state);
    struct stat st;
    assert_int_equal(lstat(sock_path, &st), -1); /* the socket file went with it */
    return 0;
}

#define COMPLETION "{\"prompt\": \"hi\", \"max_tokens\": 4}"

/* ---- without an engine --------------------------------------------------- */

static void test_health_loading(void **state)
{
    struct resp r = request(sock_path, "GET", "/health", NULL, NULL);
    assert_int_equal(r.status, 503);
    assert_non_null(header(&r, "Retry-After"));
    json_t *j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "loading");
    json_decref(j);
    resp_free(&r);

    r = request(sock_path, "HEAD", "/health", NULL, NULL);
    assert_int_equal(r.status, 503);
    assert_int_equal(r.len, 0);
    resp_free(&r);
}

static void test_generation_while_loading(void **state)
{
    struct resp r = request(sock_path, "POST", "/v1/completions", COMPLETION, NULL);
    expect_error(&r, 503, "model_loading", "loading");
    assert_non_null(header(&r, "Retry-After"));
    resp_free(&r);
    r = request(sock_path, "POST", "/v1/chat/completions",
                "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", NULL);
    expect_error(&r, 503, "model_loading", NULL);
    resp_free(&r);
    /* the request is checked before the engine: client mistakes stay 400 */
    r = request(sock_path, "POST", "/v1/completions", "{\"prompt\": ", NULL);
    expect_error(&r, 400, "invalid_json", "line 1, column");
    resp_free(&r);
    r = request(sock_path, "POST", "/v1/completions", "{\"prompt\": \"x\", \"top_p\": \"a\"}",
                NULL);
    expect_error(&r, 400, "invalid_type", "top_p");
    resp_free(&r);
}

static void test_routes(void **state)
{
    struct resp r = request(sock_path, "GET", "/nope", NULL, NULL);
    expect_error(&r, 404, "not_found", "/nope");
    resp_free(&r);
    r = request(sock_path, "POST", "/v1/completions/", COMPLETION, NULL);
    expect_error(&r, 404, "not_found", NULL);
    resp_free(&r);
    r = request(sock_path, "GET", "/v1/completions", NULL, NULL);
    expect_error(&r, 405, "method_not_allowed", NULL);
    assert_string_equal(header(&r, "Allow"), "POST");
    resp_free(&r);
    r = request(sock_path, "DELETE", "/v1/chat/completions", NULL, NULL);
    expect_error(&r, 405, "method_not_allowed", NULL);
    resp_free(&r);
    r = request(sock_path, "POST", "/health", "{}", NULL);
    expect_error(&r, 405, "method_not_allowed", NULL);
    assert_string_equal(header(&r, "Allow"), "GET, HEAD");
    resp_free(&r);
    r = request(sock_path, "GET", "/admin/reload", NULL, NULL);
    expect_error(&r, 405, "method_not_allowed", NULL);
    resp_free(&r);
    /* a query string does not change the route */
    r = request(sock_path, "GET", "/v1/models?x=1", NULL, NULL);
    assert_int_equal(r.status, 200);
    resp_free(&r);
}

static void test_models(void **state)
{
    struct resp r = request(sock_path, "GET", "/v1/models", NULL, NULL);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "list");
    json_t *m = json_array_get(json_object_get(j, "data"), 0);
    assert_string_equal(json_string_value(json_object_get(m, "id")), "tiny-test");
    assert_string_equal(json_string_value(json_object_get(m, "object")), "model");
    json_decref(j);
    resp_free(&r);
    r = request(sock_path, "GET", "/v1/models/tiny-test", NULL, NULL);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    r = request(sock_path, "GET", "/v1/models/gpt-4", NULL, NULL);
    expect_error(&r, 404, "model_not_found", "gpt-4");
    resp_free(&r);
}

static void test_body_limits(void **state)
{
    /* declared too large: refused before the body is read */
    struct resp r = raw_request(sock_path,
                                "POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                "Content-Type: application/json\r\n"
                                "Content-Length: 1000000\r\n\r\n{\"prompt\":",
                                strlen("POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                       "Content-Type: application/json\r\n"
                                       "Content-Length: 1000000\r\n\r\n{\"prompt\":"));
    expect_error(&r, 413, "body_too_large", "1000000");
    resp_free(&r);

    /* chunked: counted as it arrives */
    int fd = sock_connect(sock_path);
    assert_true(fd >= 0);
    const char *h = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n";
    send_all(fd, h, strlen(h));
    char chunk[8192 + 16];
    int n = snprintf(chunk, sizeof(chunk), "2000\r\n");
    memset(chunk + n, ' ', 8192);
    memcpy(chunk + n + 8192, "\r\n", 2);
    for (int i = 0; i < 12; i++) /* 96 KiB > 64 KiB */
        if (!send_all(fd, chunk, (size_t)n + 8194))
            break;
    send_all(fd, "0\r\n\r\n", 5);
    assert_true(read_response(fd, &r, false));
    close(fd);
    expect_error(&r, 413, "body_too_large", NULL);
    resp_free(&r);

    /* one that never ends has its connection closed */
    fd = sock_connect(sock_path);
    send_all(fd, h, strlen(h));
    int sent = 0;
    while (sent < 400 && send_all(fd, chunk, (size_t)n + 8194))
        sent++;
    assert_true(sent < 400); /* 3.2 MiB: the server hung up before */
    assert_false(read_response(fd, &r, false));
    close(fd);

    /* a chunked body under the limit is fine */
    const char *ok = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n"
                     "5\r\n{\"pro\r\n9\r\nmpt\": 5}\r\n0\r\n\r\n";
    r = raw_request(sock_path, ok, strlen(ok));
    expect_error(&r, 400, "invalid_type", "prompt"); /* parsed whole: the body arrived */
    resp_free(&r);
}

static void test_content_type(void **state)
{
    struct resp r;
    const char *raw = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      "Content-Type: multipart/form-data; boundary=x\r\n"
                      "Content-Length: 2\r\n\r\n{}";
    r = raw_request(sock_path, raw, strlen(raw));
    expect_error(&r, 415, "unsupported_media_type", "multipart/form-data");
    resp_free(&r);
    /* lenient: charset parameters, +json, curl -d's default, none at all */
    static const char *const fine[] = {
        "Content-Type: application/json; charset=utf-8\r\n",
        "Content-Type: APPLICATION/JSON\r\n",
        "Content-Type: application/vnd.api+json\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        "",
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(fine); i++) {
        char buf[512];
        int n = snprintf(buf, sizeof(buf),
                         "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s"
                         "Content-Length: %zu\r\n\r\n%s",
                         fine[i], strlen(COMPLETION), COMPLETION);
        r = raw_request(sock_path, buf, (size_t)n);
        expect_error(&r, 503, "model_loading", NULL); /* got past the type check */
        resp_free(&r);
    }
}

static void test_host_headers(void **state)
{
    static const char *const reqs[] = {
        "GET /v1/models HTTP/1.1\r\nConnection: close\r\n\r\n", /* no Host */
        "GET /v1/models HTTP/1.1\r\nHost: moed.sock\r\nConnection: close\r\n\r\n",
        "GET /v1/models HTTP/1.1\r\nHost: /run/moed/moed.sock\r\nConnection: close\r\n\r\n",
        "GET /v1/models HTTP/1.1\r\nHost: localhost:80\r\nConnection: close\r\n\r\n",
        "GET /v1/models HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
        "GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        "GET /v1/models HTTP/1.0\r\n\r\n",
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(reqs); i++) {
        struct resp r = raw_request(sock_path, reqs[i], strlen(reqs[i]));
        if (r.status != 200)
            fail_msg("%d for: %s", r.status, reqs[i]);
        resp_free(&r);
    }
}

/* The value of one series in a Prometheus text body (name plus labels as
 * rendered, e.g. "x{a=\"b\"}"); NAN when absent. */
static double metric_value(const char *body, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return NAN;
}

#define MN "model_name=\"tiny-test\""

static void test_metrics(void **state)
{
    struct resp r = request(sock_path, "GET", "/health", NULL, NULL);
    resp_free(&r);
    r = request(sock_path, "GET", "/metrics", NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(header(&r, "Content-Type"), "text/plain; version=0.0.4"));
    static const char *const want[] = {
        "# TYPE moed_http_requests_total counter",
        "moed_http_requests_total{endpoint=\"/health\",status=\"503\"}",
        "moed_http_requests_total{endpoint=\"/metrics\",status=\"200\"}",
        "# TYPE moed_time_to_first_token_seconds histogram",
        "# TYPE moed_time_per_output_token_seconds histogram",
        "# TYPE moed_prompt_tokens_total counter",
        "# TYPE moed_generation_tokens_total counter",
        "# TYPE moed_queue_depth gauge",
        "# TYPE moed_running_sequences gauge",
        "# TYPE moed_request_duration_seconds histogram",
        "# TYPE moed_kv_admission_waits_total counter",
        "moed_requests_finished_total{" MN ",finish_reason=\"stop\"}",
        "moed_queue_depth{" MN "} 0",
        "moed_http_connections",
        "moed_build_info{version=\"",
        /* vLLM's names, which llm-d's endpoint picker reads */
        "# TYPE vllm:num_requests_running gauge\n",
        "# TYPE vllm:num_requests_waiting gauge\n",
        "# TYPE vllm:kv_cache_usage_perc gauge\n",
        "# TYPE vllm:gpu_cache_usage_perc gauge\n",
        "# TYPE vllm:prompt_tokens_total counter\n",
        "# TYPE vllm:generation_tokens_total counter\n",
        "# TYPE vllm:time_to_first_token_seconds histogram\n",
        "# TYPE vllm:time_per_output_token_seconds histogram\n",
        "# TYPE vllm:e2e_request_latency_seconds histogram\n",
        "# TYPE vllm:request_success_total counter\n",
        "vllm:num_requests_waiting{" MN "} 0\n",
        "vllm:kv_cache_usage_perc{" MN "} 0\n",
        "vllm:request_success_total{" MN ",finished_reason=\"abort\"}",
        "vllm:e2e_request_latency_seconds_bucket{" MN ",le=\"+Inf\"}",
        /* the standard process series */
        "# TYPE process_cpu_seconds_total counter\n",
        "# TYPE process_resident_memory_bytes gauge\n",
        "# TYPE process_virtual_memory_bytes gauge\n",
        "# TYPE process_open_fds gauge\n",
        "# TYPE process_max_fds gauge\n",
        "# TYPE process_start_time_seconds gauge\n",
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(want); i++)
        if (!strstr(r.body, want[i]))
            fail_msg("/metrics lacks %s:\n%s", want[i], r.body);
    /* a counter is a counter: the old gauge name is gone */
    assert_null(strstr(r.body, "moed_kv_admission_waits "));
    assert_null(strstr(r.body, "# TYPE moed_kv_admission_waits gauge"));
    /* no engine yet: no cache configuration to report */
    assert_null(strstr(r.body, "vllm:cache_config_info{"));
    assert_true(metric_value(r.body, "moed_build_info{version=\"" MOED_VERSION "\"}") == 1);
    assert_true(metric_value(r.body, "process_resident_memory_bytes") > 1e6);
    assert_true(metric_value(r.body, "process_virtual_memory_bytes") >=
                metric_value(r.body, "process_resident_memory_bytes"));
    double fds = metric_value(r.body, "process_open_fds");
    assert_true(fds >= 3 && fds <= metric_value(r.body, "process_max_fds"));
    double start = metric_value(r.body, "process_start_time_seconds");
    double now = (double)time(NULL);
    assert_true(start > now - 3600 && start <= now + 1);
    assert_true(metric_value(r.body, "process_cpu_seconds_total") >= 0);
    resp_free(&r);
}

static int reload_calls;
static int reload_hook(void *arg, char *msg, size_t cap)
{
    reload_calls++;
    int rc = *(int *)arg;
    if (rc == -EINVAL)
        snprintf(msg, cap, "moed.ini:3: [limits] max_queue: not a number");
    return rc;
}

static void test_admin(void **state)
{
    struct moe_ipc *ipc = *state;
    struct resp r = request(sock_path, "GET", "/admin/stats", NULL, NULL);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    json_t *srv = json_object_get(j, "server");
    assert_string_equal(json_string_value(json_object_get(srv, "state")), "loading");
    assert_string_equal(json_string_value(json_object_get(srv, "model")), "tiny-test");
    assert_string_equal(json_string_value(json_object_get(srv, "socket")), sock_path);
    assert_true(json_is_null(json_object_get(j, "engine")));
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "limits"), "max_tokens_limit")),
        1024);
    json_decref(j);
    resp_free(&r);

    r = request(sock_path, "POST", "/admin/reload", NULL, NULL);
    expect_error(&r, 501, "reload_unavailable", NULL);
    resp_free(&r);

    int rc = 0;
    moe_ipc_set_reload_hook(ipc, reload_hook, &rc);
    r = request(sock_path, "POST", "/admin/reload", NULL, NULL);
    assert_int_equal(r.status, 200);
    j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "reloaded");
    json_decref(j);
    resp_free(&r);
    rc = -EINVAL;
    r = request(sock_path, "POST", "/admin/reload", "", NULL);
    expect_error(&r, 400, "reload_failed", "moed.ini:3: [limits] max_queue");
    resp_free(&r);
    rc = -EIO;
    r = request(sock_path, "POST", "/admin/reload", NULL, NULL);
    expect_error(&r, 500, "reload_failed", NULL);
    resp_free(&r);
    rc = -ESHUTDOWN;
    r = request(sock_path, "POST", "/admin/reload", NULL, NULL);
    expect_error(&r, 503, "reload_failed", NULL);
    resp_free(&r);
    assert_int_equal(reload_calls, 4);
}

static void test_peer_credentials(void **state)
{
    struct moe_ipc *ipc = *state;
    struct moe_ipc_limits lim = limits();
    /* lists without us: the server's own uid is allowed all the same (its
     * ExecReload runs as it); other uids are refused at accept
     * (tests/integration/test_daemon_attacks.py runs one as nobody) */
    lim.allow_uids[0] = getuid() + 4242;
    lim.n_allow_uids = 1;
    lim.allow_gids[0] = getgid() + 4242;
    lim.n_allow_gids = 1;
    moe_ipc_set_limits(ipc, &lim);
    struct resp r = request(sock_path, "GET", "/v1/models", NULL, NULL);
    assert_int_equal(r.status, 200);
    resp_free(&r);

    lim.allow_uids[1] = getuid(); /* by uid */
    lim.n_allow_uids = 2;
    moe_ipc_set_limits(ipc, &lim);
    r = request(sock_path, "GET", "/v1/models", NULL, NULL);
    assert_int_equal(r.status, 200);
    resp_free(&r);

    lim.n_allow_uids = 1; /* by gid */
    lim.allow_gids[1] = getgid();
    lim.n_allow_gids = 2;
    moe_ipc_set_limits(ipc, &lim);
    r = request(sock_path, "GET", "/v1/models", NULL, NULL);
    assert_int_equal(r.status, 200);
    resp_free(&r);

    lim = limits(); /* empty lists: anyone who can open the socket */
    moe_ipc_set_limits(ipc, &lim);
    r = request(sock_path, "GET", "/v1/models", NULL, NULL);
    assert_int_equal(r.status, 200);
    resp_free(&r);
}

static void test_socket_file(void **state)
{
    char path[300];
    struct stat st;
    int rc;

    /* mode applied; gone after stop */
    snprintf(path, sizeof(path), "%s/mode.sock", moe_test_tmpdir());
    struct moe_ipc *ipc = start_at(path, -1, 0600, NULL);
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);

    /* a live socket is not taken over */
    assert_null(start_at(path, -1, 0600, &rc));
    assert_int_equal(rc, -EADDRINUSE);
    moe_ipc_stop(ipc);
    assert_int_equal(lstat(path, &st), -1);

    /* a stale socket file is replaced */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    sun_set(&sa, path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    assert_int_equal(lstat(path, &st), 0);
    ipc = start_at(path, -1, 0660, NULL);
    struct resp r = request(path, "GET", "/v1/models", NULL, NULL);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    moe_ipc_stop(ipc);

    /* anything else at the path is left alone */
    moe_test_write_file(path, "x", 1);
    assert_null(start_at(path, -1, 0660, &rc));
    assert_int_equal(rc, -EEXIST);
    assert_non_null(strstr(moe_err_msg(), "not a socket"));
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    unlink(path);

    char longp[200];
    memset(longp, 'a', sizeof(longp) - 1);
    longp[0] = '/';
    longp[sizeof(longp) - 1] = '\0';
    assert_null(start_at(longp, -1, 0660, &rc));
    assert_int_equal(rc, -ENAMETOOLONG);
}

static void test_socket_activation(void **state)
{
    char path[300];
    snprintf(path, sizeof(path), "%s/activated.sock", moe_test_tmpdir());
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    sun_set(&sa, path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 16), 0);
    struct moe_ipc *ipc = start_at(NULL, fd, 0660, NULL);
    struct resp r = request(path, "GET", "/v1/models", NULL, NULL);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    moe_ipc_stop(ipc);
    struct stat st;
    assert_int_equal(lstat(path, &st), 0); /* not ours to remove */
    unlink(path);

    /* a datagram socket is refused */
    int rc, udp = socket(AF_INET, SOCK_DGRAM, 0);
    assert_null(start_at(NULL, udp, 0660, &rc));
    assert_int_equal(rc, -EINVAL);
    close(udp);
}

/* ---- with the scripted engine -------------------------------------------- */

/* Parses an SSE body: the JSON of every data line but [DONE], which must come last. */
static size_t sse_events(const struct resp *r, json_t **ev, size_t max)
{
    size_t n = 0;
    const char *p = r->body;
    bool done = false;
    while (*p) {
        assert_false(done);
        assert_memory_equal(p, "data: ", 6);
        const char *end = strstr(p, "\n\n");
        assert_non_null(end);
        if (strncmp(p + 6, "[DONE]", 6) == 0) {
            done = true;
        } else {
            json_error_t je;
            assert_true(n < max);
            ev[n] = json_loadb(p + 6, (size_t)(end - p - 6), 0, &je);
            if (!ev[n])
                fail_msg("bad chunk (%s): %.*s", je.text, (int)(end - p - 6), p + 6);
            n++;
        }
        p = end + 2;
    }
    assert_true(done);
    return n;
}

static void free_events(json_t **ev, size_t n)
{
    for (size_t i = 0; i < n; i++)
        json_decref(ev[i]);
}

static void test_completion(void **state)
{
    struct resp r = request(sock_path, "POST", "/v1/completions",
                            "{\"prompt\": \"hello\", \"max_tokens\": 7, \"temperature\": 0.5,"
                            " \"stop\": [\"x\", \"y\"], \"model\": \"whatever\"}",
                            NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(header(&r, "Content-Type"), "application/json");
    json_t *j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "text_completion");
    assert_string_equal(json_string_value(json_object_get(j, "model")), "tiny-test");
    assert_memory_equal(json_string_value(json_object_get(j, "id")), "cmpl-", 5);
    json_t *c = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(c, "text")), "Hello world");
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "stop");
    json_t *u = json_object_get(j, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "prompt_tokens")), 3);
    assert_int_equal(json_integer_value(json_object_get(u, "completion_tokens")), 2);
    assert_int_equal(json_integer_value(json_object_get(u, "total_tokens")), 5);
    json_decref(j);
    resp_free(&r);
    fake_wait(0, 1);
    /* what reached the engine */
    assert_string_equal(fk.last_prompt, "hello");
    assert_int_equal(fk.last_max_tokens, 7);
    assert_true(fk.last_temperature == 0.5f);
    assert_int_equal(fk.last_n_stop, 2);
    assert_false(fk.last_stream);
    assert_true(fk.last_timeout == 30.0);
    /* no seed and a "random" default: a fresh one each time */
    assert_true(fk.last_seed != UINT64_MAX);
    uint64_t s1 = fk.last_seed;
    r = request(sock_path, "POST", "/v1/completions", "{\"prompt\": \"a\"}", NULL);
    resp_free(&r);
    assert_true(fk.last_seed != s1 && fk.last_seed != UINT64_MAX);
    assert_int_equal(fk.last_max_tokens, 64); /* default_max_tokens */
    r = request(sock_path, "POST", "/v1/completions", "{\"prompt\": \"a\", \"seed\": 42}", NULL);
    resp_free(&r);
    assert_int_equal(fk.last_seed, 42);
}

static void test_chat(void **state)
{
    struct resp r = request(sock_path, "POST", "/v1/chat/completions",
                            "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"},"
                            " {\"role\": \"user\", \"content\": \"hello\"}]}",
                            NULL);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "chat.completion");
    assert_memory_equal(json_string_value(json_object_get(j, "id")), "chatcmpl-", 9);
    json_t *c = json_array_get(json_object_get(j, "choices"), 0);
    json_t *m = json_object_get(c, "message");
    assert_string_equal(json_string_value(json_object_get(m, "role")), "assistant");
    assert_string_equal(json_string_value(json_object_get(m, "content")), "Hello world");
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "stop");
    json_decref(j);
    resp_free(&r);
    assert_int_equal(fk.last_n_messages, 2);
}

static void test_streaming(void **state)
{
    json_t *ev[32];
    struct resp r = request(sock_path, "POST", "/v1/completions",
                            "{\"prompt\": \"slow\", \"stream\": true}", NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(header(&r, "Content-Type"), "text/event-stream");
    size_t n = sse_events(&r, ev, 32);
    char text[256] = "";
    for (size_t i = 0; i + 1 < n; i++) {
        assert_string_equal(json_string_value(json_object_get(ev[i], "object")),
                            "text_completion");
        json_t *c = json_array_get(json_object_get(ev[i], "choices"), 0);
        assert_true(json_is_null(json_object_get(c, "finish_reason")));
        strcat(text, json_string_value(json_object_get(c, "text")));
    }
    assert_string_equal(text, "w0 w1 w2 w3 w4 ");
    json_t *last = json_array_get(json_object_get(ev[n - 1], "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(last, "finish_reason")), "length");
    assert_null(json_object_get(ev[n - 1], "usage"));
    free_events(ev, n);
    resp_free(&r);
    fake_wait(0, 1);

    /* chat, with usage */
    r = request(sock_path, "POST", "/v1/chat/completions",
                "{\"messages\": [{\"role\": \"user\", \"content\": \"hello\"}], \"stream\": true,"
                " \"stream_options\": {\"include_usage\": true}}",
                NULL);
    assert_int_equal(r.status, 200);
    n = sse_events(&r, ev, 32);
    assert_true(n >= 4);
    json_t *c0 = json_array_get(json_object_get(ev[0], "choices"), 0);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(c0, "delta"), "role")), "assistant");
    text[0] = '\0';
    for (size_t i = 1; i + 2 < n; i++) {
        json_t *c = json_array_get(json_object_get(ev[i], "choices"), 0);
        assert_string_equal(json_string_value(json_object_get(ev[i], "object")),
                            "chat.completion.chunk");
        strcat(text, json_string_value(json_object_get(json_object_get(c, "delta"), "content")));
    }
    assert_string_equal(text, "Hello world");
    json_t *fin = json_array_get(json_object_get(ev[n - 2], "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(fin, "finish_reason")), "stop");
    assert_int_equal(json_object_size(json_object_get(fin, "delta")), 0);
    assert_int_equal(json_array_size(json_object_get(ev[n - 1], "choices")), 0);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(ev[n - 1], "usage"), "total_tokens")),
        5);
    free_events(ev, n);
    resp_free(&r);
    fake_wait(0, 2);
}

static void test_submit_errors(void **state)
{
    struct resp r = request(sock_path, "POST", "/v1/completions", "{\"prompt\": \"queue-full\"}",
                            NULL);
    expect_error(&r, 429, "queue_full", NULL);
    assert_string_equal(header(&r, "Retry-After"), "1");
    resp_free(&r);
    r = request(sock_path, "POST", "/v1/completions", "{\"prompt\": \"shutdown\"}", NULL);
    expect_error(&r, 503, "shutting_down", NULL);
    assert_non_null(header(&r, "Retry-After"));
    resp_free(&r);
    r = request(sock_path, "POST", "/v1/chat/completions",
                "{\"messages\": [{\"role\": \"user\", \"content\": \"invalid\"}]}", NULL);
    expect_error(&r, 400, "invalid_request", "9999 tokens");
    resp_free(&r);
    r = request(sock_path, "POST", "/v1/completions", "{\"prompt\": \"nomem\"}", NULL);
    expect_error(&r, 500, "internal_error", NULL);
    resp_free(&r);
    fake_wait(0, 0); /* nothing was queued, nothing to release */
}

static void test_engine_error(void **state)
{
    struct resp r = request(sock_path, "POST", "/v1/completions", "{\"prompt\": \"fail\"}", NULL);
    expect_error(&r, 500, "engine_error", "engine exploded");
    resp_free(&r);
    json_t *ev[8];
    r = request(sock_path, "POST", "/v1/completions",
                "{\"prompt\": \"fail\", \"stream\": true}", NULL);
    assert_int_equal(r.status, 200); /* the status line went first */
    size_t n = sse_events(&r, ev, 8);
    assert_int_equal(n, 2);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(ev[1], "error"), "message")),
                        "engine exploded");
    free_events(ev, n);
    resp_free(&r);
    fake_wait(0, 2);

    /* refused before the first token: a real status, streaming or not */
    r = request(sock_path, "POST", "/v1/completions", "{\"prompt\": \"refuse\"}", NULL);
    expect_error(&r, 400, "invalid_request", "300 tokens");
    resp_free(&r);
    r = request(sock_path, "POST", "/v1/chat/completions",
                "{\"messages\": [{\"role\": \"user\", \"content\": \"refuse\"}],"
                " \"stream\": true}",
                NULL);
    expect_error(&r, 400, "invalid_request", "300 tokens");
    resp_free(&r);
    fake_wait(0, 4);

    /* invalid UTF-8 from the engine still makes valid JSON */
    r = request(sock_path, "POST", "/v1/completions", "{\"prompt\": \"utf8\"}", NULL);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(j, "choices"), 0),
                                          "text")),
        "ok \xef\xbf\xbd \xe2\x82\xac");
    json_decref(j);
    resp_free(&r);
}

/* the client sends its request and hangs up without reading */
static void hang_up_after(const char *body, int ms)
{
    char raw[512];
    int n = snprintf(raw, sizeof(raw),
                     "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s",
                     strlen(body), body);
    int fd = sock_connect(sock_path);
    assert_true(fd >= 0);
    assert_true(send_all(fd, raw, (size_t)n));
    sleep_ms(ms);
    close(fd);
}

static void test_disconnect_cancels(void **state)
{
    double t0 = now_s();
    hang_up_after("{\"prompt\": \"forever\", \"stream\": true}", 100);
    fake_wait(1, 1);
    hang_up_after("{\"prompt\": \"forever\"}", 100);
    fake_wait(2, 2);
    /* tokens keep coming: the hang-up is still noticed between them */
    hang_up_after("{\"prompt\": \"endless\"}", 100);
    fake_wait(3, 3);
    hang_up_after("{\"prompt\": \"endless\", \"stream\": true}", 100);
    fake_wait(4, 4);
    assert_true(now_s() - t0 < 3.0);
    /* a chat stream that is well under way */
    char raw[512];
    const char *body = "{\"messages\": [{\"role\": \"user\", \"content\": \"endless\"}],"
                       " \"stream\": true}";
    int n = snprintf(raw, sizeof(raw),
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     strlen(body), body);
    int fd = sock_connect(sock_path);
    assert_true(send_all(fd, raw, (size_t)n));
    char buf[256];
    for (int i = 0; i < 4; i++) /* headers, the role chunk, some text */
        assert_true(recv(fd, buf, sizeof(buf), 0) > 0);
    close(fd);
    fake_wait(5, 5);
}

struct stream_client {
    pthread_t th;
    bool chat;
    int status;
    char text[128];
    bool done;
};

static void *stream_client(void *arg)
{
    struct stream_client *c = arg;
    const char *body = c->chat ? "{\"messages\": [{\"role\": \"user\", \"content\": \"slow\"}],"
                                 " \"stream\": true}"
                               : "{\"prompt\": \"slow\", \"stream\": true}";
    char raw[512];
    int n = snprintf(raw, sizeof(raw),
                     "POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     c->chat ? "/v1/chat/completions" : "/v1/completions", strlen(body), body);
    int fd = sock_connect(sock_path);
    struct resp r;
    if (fd < 0)
        return NULL;
    send_all(fd, raw, (size_t)n);
    if (read_response(fd, &r, false)) {
        c->status = r.status;
        /* gather the text without cmocka (not thread-safe) */
        const char *p = r.body;
        while ((p = strstr(p, "data: "))) {
            p += 6;
            if (strncmp(p, "[DONE]", 6) == 0) {
                c->done = true;
                break;
            }
            json_t *j = json_loadb(p, strcspn(p, "\n"), 0, NULL);
            json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
            const char *t = c->chat ? json_string_value(json_object_get(
                                          json_object_get(ch, "delta"), "content"))
                                    : json_string_value(json_object_get(ch, "text"));
            if (t && strlen(c->text) + strlen(t) < sizeof(c->text))
                strcat(c->text, t);
            json_decref(j);
        }
        resp_free(&r);
    }
    close(fd);
    return NULL;
}

static void test_concurrent_streams(void **state)
{
    enum { N = 32 };
    struct stream_client c[N];
    memset(c, 0, sizeof(c));
    double t0 = now_s();
    for (int i = 0; i < N; i++) {
        c[i].chat = i % 2;
        assert_int_equal(pthread_create(&c[i].th, NULL, stream_client, &c[i]), 0);
    }
    for (int i = 0; i < N; i++)
        pthread_join(c[i].th, NULL);
    double dt = now_s() - t0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(c[i].status, 200);
        assert_true(c[i].done);
        assert_string_equal(c[i].text, "w0 w1 w2 w3 w4 ");
    }
    /* each takes ~0.2 s; one after another would be 6.4 s */
    if (dt > 3.0)
        fail_msg("32 streams took %.2f s: not concurrent", dt);
    fake_wait(0, N);
}

static void test_keepalive_and_drain(void **state)
{
    struct moe_ipc *ipc = *state;
    int fd = sock_connect(sock_path);
    assert_true(fd >= 0);
    struct resp r;
    char raw[512];
    int n = snprintf(raw, sizeof(raw),
                     "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s",
                     strlen(COMPLETION), COMPLETION);
    for (int i = 0; i < 2; i++) { /* two generations on one connection */
        assert_true(send_all(fd, raw, (size_t)n));
        assert_true(read_response(fd, &r, false));
        assert_int_equal(r.status, 200);
        assert_false(r.eof);
        resp_free(&r);
    }
    const char *health = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_true(send_all(fd, health, strlen(health)));
    assert_true(read_response(fd, &r, false));
    assert_int_equal(r.status, 200);
    resp_free(&r);

    moe_ipc_stop_accepting(ipc);
    assert_int_equal(sock_connect(sock_path), -1); /* no new connections */
    /* the open connection is still served, and told we are draining */
    assert_true(send_all(fd, health, strlen(health)));
    assert_true(read_response(fd, &r, false));
    assert_int_equal(r.status, 503);
    json_t *j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "draining");
    json_decref(j);
    resp_free(&r);
    assert_true(send_all(fd, raw, (size_t)n));
    assert_true(read_response(fd, &r, false));
    expect_error(&r, 503, "shutting_down", NULL);
    resp_free(&r);
    close(fd);
}

struct bg_stream {
    pthread_t th;
    int fd;
    bool got_eof;
};

static void *bg_read(void *arg)
{
    struct bg_stream *b = arg;
    char buf[4096];
    while (recv(b->fd, buf, sizeof(buf), 0) > 0)
        ;
    b->got_eof = true;
    return NULL;
}

static void test_stop_with_stream(void **state)
{
    struct moe_ipc *ipc = *state;
    const char *body = "{\"prompt\": \"forever\", \"stream\": true}";
    char raw[512];
    int n = snprintf(raw, sizeof(raw),
                     "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n%s",
                     strlen(body), body);
    struct bg_stream b = {.fd = sock_connect(sock_path)};
    assert_true(b.fd >= 0);
    assert_true(send_all(b.fd, raw, (size_t)n));
    assert_int_equal(pthread_create(&b.th, NULL, bg_read, &b), 0);
    sleep_ms(100);
    double t0 = now_s();
    moe_ipc_stop(ipc);
    *state = NULL;
    assert_true(now_s() - t0 < 2.0);
    pthread_join(b.th, NULL);
    assert_true(b.got_eof);
    close(b.fd);
    fake_wait(1, 1);
}

static int teardown_maybe_stopped(void **state)
{
    if (*state)
        return teardown(state);
    return 0;
}

static void test_metrics_with_engine(void **state)
{
    struct resp r = request(sock_path, "POST", "/v1/completions", COMPLETION, NULL);
    resp_free(&r);
    r = request(sock_path, "GET", "/metrics", NULL, NULL);
    assert_int_equal(r.status, 200);
    static const char *const want[] = {
        "moed_http_requests_total{endpoint=\"/v1/completions\",status=\"200\"}",
        "moed_queue_depth{" MN "} 2\n",
        "moed_running_sequences{" MN "} 3\n",
        "moed_time_to_first_token_seconds_count{" MN "}",
        "vllm:num_requests_waiting{" MN "} 2\n",
        "vllm:num_requests_running{" MN "} 3\n",
        /* (20 used + 5 promised) / 100 */
        "vllm:kv_cache_usage_perc{" MN "} 0.25\n",
        "vllm:gpu_cache_usage_perc{" MN "} 0.25\n",
        /* 100 blocks x 4096 B / 1024 B per token / 16 tokens per block */
        "vllm:cache_config_info{" MN ",block_size=\"16\",num_gpu_blocks=\"25\"} 1\n",
        "vllm:time_to_first_token_seconds_count{" MN "}",
        "vllm:e2e_request_latency_seconds_count{" MN "}",
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(want); i++)
        if (!strstr(r.body, want[i]))
            fail_msg("/metrics lacks %s:\n%s", want[i], r.body);
    /* the vLLM counters count what moed's count */
    assert_true(metric_value(r.body, "vllm:prompt_tokens_total{" MN "}") ==
                metric_value(r.body, "moed_prompt_tokens_total{" MN "}"));
    assert_true(metric_value(r.body, "vllm:generation_tokens_total{" MN "}") ==
                metric_value(r.body, "moed_generation_tokens_total{" MN "}"));
    assert_true(metric_value(r.body, "moed_prompt_tokens_total{" MN "}") >= 100);
    double stop = metric_value(r.body, "vllm:request_success_total{" MN ",finished_reason=\"stop\"}") +
                  metric_value(r.body, "vllm:request_success_total{" MN ",finished_reason=\"length\"}");
    assert_true(stop >= 1);
    assert_true(metric_value(r.body, "vllm:e2e_request_latency_seconds_count{" MN "}") >= 1);
    double waits = metric_value(r.body, "moed_kv_admission_waits_total{" MN "}");
    assert_true(waits >= 7);
    resp_free(&r);
    /* the engine's counts go on from where they were: the counters follow */
    fake_kv_waits += 3;
    r = request(sock_path, "GET", "/metrics", NULL, NULL);
    assert_true(metric_value(r.body, "moed_kv_admission_waits_total{" MN "}") == waits + 3);
    resp_free(&r);

    r = request(sock_path, "GET", "/admin/stats", NULL, NULL);
    json_t *j = body_json(&r);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "server"), "state")), "ready");
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "engine"), "queue_depth")), 2);
    json_decref(j);
    resp_free(&r);
    r = request(sock_path, "GET", "/health", NULL, NULL);
    assert_int_equal(r.status, 200);
    resp_free(&r);
}

/* ---- the real engine ----------------------------------------------------- */

static void test_real_engine(void **state)
{
    struct moe_model *m = NULL;
    struct moe_pool *pool = NULL;
    struct moe_engine *e = NULL;
    if (moe_model_open(moe_test_path("models/tiny-moe"), &m) < 0)
        fail_msg("moe_model_open: %s", moe_err_msg());
    assert_int_equal(moe_pool_create(1, &pool), 0);
    struct moe_engine_limits el = {
        .max_seqs = 4,
        .max_batch_tokens = 64,
        .max_ctx = 128,
        .max_queue = 8,
        .max_tokens_default = 8,
        .request_timeout_s = 60,
        .chat_template = MOE_CHAT_CHATML,
    };
    if (moe_engine_create(m, pool, &el, &e) < 0)
        fail_msg("moe_engine_create: %s", moe_err_msg());
    struct moe_ipc *ipc = *state;
    moe_ipc_set_engine(ipc, e);

    const char *body = "{\"prompt\": \"The quick brown fox\", \"max_tokens\": 8,"
                       " \"temperature\": 0}";
    struct resp r = request(sock_path, "POST", "/v1/completions", body, NULL);
    if (r.status != 200)
        fail_msg("%d: %s", r.status, r.body);
    json_t *j = body_json(&r);
    json_t *c = json_array_get(json_object_get(j, "choices"), 0);
    char text[1024];
    snprintf(text, sizeof(text), "%s", json_string_value(json_object_get(c, "text")));
    const char *fr = json_string_value(json_object_get(c, "finish_reason"));
    assert_true(strcmp(fr, "length") == 0 || strcmp(fr, "stop") == 0);
    json_t *u = json_object_get(j, "usage");
    int ct = (int)json_integer_value(json_object_get(u, "completion_tokens"));
    assert_true(ct >= 1 && ct <= 8);
    assert_true(json_integer_value(json_object_get(u, "prompt_tokens")) > 0);
    json_decref(j);
    resp_free(&r);

    /* the same, streamed: greedy decoding gives the same text */
    r = request(sock_path, "POST", "/v1/completions",
                "{\"prompt\": \"The quick brown fox\", \"max_tokens\": 8, \"temperature\": 0,"
                " \"stream\": true, \"stream_options\": {\"include_usage\": true}}",
                NULL);
    assert_int_equal(r.status, 200);
    json_t *ev[64];
    size_t n = sse_events(&r, ev, 64);
    char streamed[1024] = "";
    for (size_t i = 0; i + 1 < n; i++) {
        json_t *ch = json_array_get(json_object_get(ev[i], "choices"), 0);
        if (ch)
            strncat(streamed, json_string_value(json_object_get(ch, "text")),
                    sizeof(streamed) - strlen(streamed) - 1);
    }
    assert_string_equal(streamed, text);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(ev[n - 1], "usage"),
                                           "completion_tokens")),
        ct);
    free_events(ev, n);
    resp_free(&r);

    r = request(sock_path, "POST", "/v1/chat/completions",
                "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 4,"
                " \"temperature\": 0}",
                NULL);
    if (r.status != 200)
        fail_msg("%d: %s", r.status, r.body);
    resp_free(&r);

    moe_ipc_stop_accepting(ipc);
    moe_engine_drain(e, 5);
    moe_ipc_stop(ipc);
    *state = NULL;
    moe_engine_free(e);
    moe_pool_free(pool);
    moe_model_free(m);
}

int main(void)
{
    moe_log_set_level(MOE_LOG_ERR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_health_loading, setup_loading, teardown),
        cmocka_unit_test_setup_teardown(test_generation_while_loading, setup_loading, teardown),
        cmocka_unit_test_setup_teardown(test_routes, setup_loading, teardown),
        cmocka_unit_test_setup_teardown(test_models, setup_loading, teardown),
        cmocka_unit_test_setup_teardown(test_body_limits, setup_loading, teardown),
        cmocka_unit_test_setup_teardown(test_content_type, setup_loading, teardown),
        cmocka_unit_test_setup_teardown(test_host_headers, setup_loading, teardown),
        cmocka_unit_test_setup_teardown(test_metrics, setup_loading, teardown),
        cmocka_unit_test_setup_teardown(test_admin, setup_loading, teardown),
        cmocka_unit_test_setup_teardown(test_peer_credentials, setup_loading, teardown),
        cmocka_unit_test(test_socket_file),
        cmocka_unit_test(test_socket_activation),
        cmocka_unit_test_setup_teardown(test_completion, setup_fake, teardown),
        cmocka_unit_test_setup_teardown(test_chat, setup_fake, teardown),
        cmocka_unit_test_setup_teardown(test_streaming, setup_fake, teardown),
        cmocka_unit_test_setup_teardown(test_submit_errors, setup_fake, teardown),
        cmocka_unit_test_setup_teardown(test_engine_error, setup_fake, teardown),
        cmocka_unit_test_setup_teardown(test_disconnect_cancels, setup_fake, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_streams, setup_fake, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_and_drain, setup_fake, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_with_engine, setup_fake, teardown),
        cmocka_unit_test_setup_teardown(test_stop_with_stream, setup_fake,
                                        teardown_maybe_stopped),
        cmocka_unit_test_setup_teardown(test_real_engine, setup_loading, teardown_maybe_stopped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
