/* moectl: the command-line client of moed.
 *
 * One request per run over the daemon's Unix socket (libcurl with
 * CURLOPT_UNIX_SOCKET_PATH, URL http://localhost/...). Generated text is
 * streamed from the SSE events to stdout as they arrive; stdout carries
 * nothing else, so `moectl generate ... > file` holds exactly the text.
 * Errors, and a status line while waiting when stderr is a terminal, go to
 * stderr. The exit codes are a contract for scripts (see EXIT STATUS in
 * the help text below). */
#include <curl/curl.h>
#include <errno.h>
#include <stdarg.h>
#include <time.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include "common/common.h"

#define MOECTL_VERSION "0.1.0"
#define DEFAULT_SOCKET MOE_SYSTEM_SOCKET
#define HISTORY_FILE ".moectl_history" /* in $HOME, for chat's prompt */
#define HISTORY_MAX 1000
#define DEFAULT_TIMEOUT_S 30.0   /* commands other than generate / chat */
#define MAX_BODY (64u << 20)     /* a non-streamed answer larger than this is refused */
#define MAX_STOPS 64

enum {
    EXIT_OK = 0,
    EXIT_SERVER = 1,      /* 5xx (not 503), error JSON, malformed answer, lost mid-answer */
    EXIT_USAGE = 2,
    EXIT_UNAVAILABLE = 3, /* cannot connect, 503, 429, closed without answer, timeout */
    EXIT_REJECTED = 4,    /* other 4xx */
};

static const char help_text[] =
    "NAME\n"
    "    moectl - talk to the moed daemon over its Unix socket\n"
    "\n"
    "SYNOPSIS\n"
    "    moectl [--socket PATH] [--timeout S] generate [OPTIONS] PROMPT...\n"
    "    moectl [--socket PATH] [--timeout S] chat [OPTIONS] [--system TEXT] MESSAGE...\n"
    "    moectl [--socket PATH] chat [-i] [OPTIONS] [--system TEXT]\n"
    "    moectl [--socket PATH] [--timeout S] models | ps | status | stats | metrics | reload\n"
    "    moectl --help | --version\n"
    "\n"
    "DESCRIPTION\n"
    "    moectl sends one request to moed (HTTP/1.1 and JSON over a Unix socket: the\n"
    "    OpenAI-style API that curl --unix-socket reaches too) and prints the answer.\n"
    "\n"
    "    Generated text is streamed to stdout as it arrives, exactly as generated:\n"
    "    nothing else is written to stdout, and a final newline is added only when\n"
    "    stdout is a terminal. Errors go to stderr, with the daemon's own message.\n"
    "    When stderr is a terminal, a status line (\"waiting for first token...\")\n"
    "    is shown there until text arrives; never on a pipe or a file.\n"
    "\n"
    "COMMANDS\n"
    "    generate PROMPT...\n"
    "        Complete PROMPT (POST /v1/completions). The words are joined with\n"
    "        spaces; with PROMPT \"-\", or none while stdin is not a terminal, the\n"
    "        prompt is read from stdin.\n"
    "    chat MESSAGE...\n"
    "        Send one user message, after the --system message if given (POST\n"
    "        /v1/chat/completions); the daemon applies the model's chat template.\n"
    "        MESSAGE is taken as PROMPT is for generate.\n"
    "    chat (no MESSAGE, on a terminal), chat -i, --interactive\n"
    "        A conversation: each line is a user message, sent with every earlier\n"
    "        turn, and the reply streams back. On a terminal: line editing and\n"
    "        history (GNU readline, kept in ~/" HISTORY_FILE "). With -i, lines\n"
    "        are read from a pipe or a file too, one turn each, every reply ending\n"
    "        with a newline; a MESSAGE given is the first turn. /clear forgets the\n"
    "        conversation, /system TEXT sets the system message, /history shows\n"
    "        it, /help, /exit; end of input (Ctrl-D) leaves. Without a terminal, a\n"
    "        turn that fails ends it with that turn's exit status.\n"
    "    models\n"
    "        List the ids of the models served (GET /v1/models), one per line.\n"
    "    ps\n"
    "        What is loaded and running: the model (name, architecture, layers,\n"
    "        experts, context), state, running / queued / finished requests, KV\n"
    "        cache use, the daemon's resident memory (when its process is visible\n"
    "        here) and uptime (GET /admin/stats, /v1/models and /metrics).\n"
    "    status\n"
    "        Print the daemon's health (GET /health): its status word (\"ok\" when\n"
    "        ready), then any other fields as \"key: value\" lines. Exit status 0\n"
    "        when ready, 3 while the model loads or when the daemon cannot be\n"
    "        reached.\n"
    "    stats\n"
    "        Print the daemon's statistics (GET /admin/stats) as indented JSON.\n"
    "    metrics\n"
    "        Print the Prometheus metrics (GET /metrics) as the daemon sends them.\n"
    "    reload\n"
    "        Make the daemon re-read its configuration file (POST /admin/reload),\n"
    "        as SIGHUP does, and print its answer.\n"
    "\n"
    "OPTIONS\n"
    "    Options may come before or after the command; \"--\" ends them (for a\n"
    "    prompt that starts with \"-\"). Sampling options left out take the\n"
    "    daemon's defaults (its INI file).\n"
    "\n"
    "    --socket PATH\n"
    "        The daemon's socket. Default: $MOED_SOCKET; else the one `moed MODEL`\n"
    "        makes for you when it is there ($XDG_RUNTIME_DIR/moed.sock, or\n"
    "        /tmp/moed-UID.sock without XDG_RUNTIME_DIR; yours or root's); else\n"
    "        " DEFAULT_SOCKET ", the service's.\n"
    "    --timeout S\n"
    "        Give up when the whole request takes more than S seconds (exit 3).\n"
    "        Default: no limit for generate and chat, 30 for the other commands;\n"
    "        0 = no limit.\n"
    "    -n, --max-tokens N\n"
    "        Generate at most N tokens.\n"
    "    -t, --temperature T\n"
    "        Sampling temperature; 0 = greedy.\n"
    "    --top-p P\n"
    "        Nucleus sampling: keep the most likely tokens up to probability P, in (0, 1].\n"
    "    --top-k K\n"
    "        Keep the K most likely tokens (0 = off).\n"
    "    -s, --seed S\n"
    "        Random seed (0 to 2^63-1): the same seed gives the same text.\n"
    "    --stop TEXT\n"
    "        Stop when TEXT is generated (TEXT itself is not printed). Repeatable.\n"
    "    --no-stream\n"
    "        Ask for the whole answer at once instead of a stream.\n"
    "    --system TEXT\n"
    "        chat: a system message before MESSAGE.\n"
    "    -i, --interactive\n"
    "        chat: a conversation read line by line (see chat above).\n"
    "    --model NAME\n"
    "        Send NAME as the request's \"model\" (default: none; moed serves one model).\n"
    "    -q, --quiet\n"
    "        No status line.\n"
    "    -h, --help\n"
    "        Print this text and exit.\n"
    "    -V, --version\n"
    "        Print \"moectl " MOECTL_VERSION "\" and exit.\n"
    "\n"
    "ENVIRONMENT\n"
    "    MOED_SOCKET\n"
    "        The socket path when --socket is not given (moed reads it too).\n"
    "    XDG_RUNTIME_DIR, HOME\n"
    "        Where the default socket and chat's history are.\n"
    "\n"
    "EXIT STATUS\n"
    "    0   Success.\n"
    "    1   The daemon failed the request: a 5xx answer other than 503, an error\n"
    "        reported in the stream or in a JSON answer, a malformed answer, or a\n"
    "        connection lost in the middle of the answer.\n"
    "    2   Usage error: unknown command or option, bad option value, no prompt.\n"
    "    3   The daemon is unavailable: the socket cannot be reached (missing,\n"
    "        refused, permission denied), the connection closed before any answer,\n"
    "        503 (model loading, draining, queue full), 429 (busy), or --timeout\n"
    "        expired. Trying again later may succeed. For status: not ready.\n"
    "    4   The daemon rejected the request: any other 4xx answer (a bad or\n"
    "        out-of-range field, a prompt or body too large, not allowed ...).\n"
    "\n"
    "EXAMPLES\n"
    "    moectl generate -n 32 -t 0 \"The capital of France is\"\n"
    "    echo \"Summarise this: ...\" | moectl chat --system \"Be brief.\"\n"
    "    moectl --socket /tmp/moed.sock status && moectl stats\n"
    "    moectl chat                      # talk to it; Ctrl-D leaves\n"
    "    printf 'Hi\\nAnd then?\\n' | moectl chat -i   # two turns from a script\n"
    "    moectl ps\n";

enum command { CMD_GENERATE, CMD_CHAT, CMD_MODELS, CMD_STATUS, CMD_STATS, CMD_METRICS,
               CMD_RELOAD, CMD_PS };

static const struct {
    const char *name;
    enum command cmd;
    const char *method, *path;
} commands[] = {
    {"generate", CMD_GENERATE, "POST", "/v1/completions"},
    {"chat", CMD_CHAT, "POST", "/v1/chat/completions"},
    {"models", CMD_MODELS, "GET", "/v1/models"},
    {"status", CMD_STATUS, "GET", "/health"},
    {"stats", CMD_STATS, "GET", "/admin/stats"},
    {"metrics", CMD_METRICS, "GET", "/metrics"},
    {"reload", CMD_RELOAD, "POST", "/admin/reload"},
    {"ps", CMD_PS, "GET", "/admin/stats"}, /* and /v1/models, /metrics */
};

struct buf;

struct opts {
    const char *socket;
    double timeout_s; /* < 0: the command's default */
    const char *model, *system;
    long long max_tokens, top_k, seed; /* -1: not given */
    double temperature, top_p;         /* NAN: not given */
    const char *stops[MAX_STOPS];
    size_t n_stops;
    bool no_stream, quiet;
    bool interactive; /* chat: one turn per line, until EOF */
    int cmd_index; /* into commands[] */
    char *text;    /* prompt / message (malloc'ed) */
    /* chat's conversation: the messages sent instead of system + text */
    json_t *history;
    struct buf *capture; /* the generated text is appended here too */
};

/* ---- small helpers ------------------------------------------------------------ */

struct buf {
    char *p;
    size_t len, cap;
};

static bool buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return false;
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return true;
}

static void buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("moectl: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\nTry 'moectl --help'.\n", stderr);
    return EXIT_USAGE;
}

static bool parse_double(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return false;
    *out = v;
    return true;
}

static bool parse_int(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

/* ---- the status line (stderr, terminals only) ------------------------------------ */

static volatile sig_atomic_t status_shown;

static void status_clear(void)
{
    if (status_shown) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
        status_shown = 0;
    }
}

static void on_signal(int sig)
{
    if (status_shown) {
        static const char clr[] = "\r\033[K";
        ssize_t r = write(STDERR_FILENO, clr, sizeof(clr) - 1);
        (void)r;
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

/* ---- one request -------------------------------------------------------------------- */

struct req {
    CURL *curl;
    enum command cmd;
    bool stream_asked;
    /* the answer */
    long status;
    bool checked, sse;
    struct buf body;   /* everything but an SSE stream */
    /* SSE parsing */
    struct buf line;   /* bytes not yet split into lines */
    struct buf data;   /* data: lines of the event being read */
    bool has_data;
    bool done, finished; /* [DONE] seen; a finish_reason seen */
    /* output */
    bool printed, last_nl, out_tty;
    /* status line */
    bool status_on;
    double t0;
    long shown_s;
    const char *status_what;
    struct buf *capture; /* opts.capture */
    /* set when the transfer was stopped on purpose */
    int abort_exit;
    char abort_msg[512];
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void status_show(struct req *r, long secs)
{
    if (!r->status_on)
        return;
    if (secs > 0)
        fprintf(stderr, "\r\033[Kmoectl: %s (%ld s)", r->status_what, secs);
    else
        fprintf(stderr, "\r\033[Kmoectl: %s", r->status_what);
    fflush(stderr);
    status_shown = 1;
    r->shown_s = secs;
}

static int on_progress(void *ud, curl_off_t dlt, curl_off_t dln, curl_off_t ult, curl_off_t uln)
{
    struct req *r = ud;
    if (r->status_on && status_shown) {
        long secs = (long)(now_s() - r->t0);
        if (secs != r->shown_s)
            status_show(r, secs);
    }
    return 0;
}

static bool out_write(struct req *r, const char *s, size_t n)
{
    if (!n)
        return true;
    if (r->status_on) { /* the first text ends the waiting */
        status_clear();
        r->status_on = false;
    }
    if (fwrite(s, 1, n, stdout) != n || fflush(stdout) != 0) {
        r->abort_exit = EXIT_SERVER;
        snprintf(r->abort_msg, sizeof(r->abort_msg), "writing to stdout: %s", strerror(errno));
        return false;
    }
    r->printed = true;
    r->last_nl = s[n - 1] == '\n';
    if (r->capture && !buf_add(r->capture, s, n)) {
        r->abort_exit = EXIT_SERVER;
        snprintf(r->abort_msg, sizeof(r->abort_msg), "out of memory");
        return false;
    }
    return true;
}

/* error.code may say what kind of failure an in-stream error is */
static int exit_for_status(long status)
{
    if (status >= 200 && status < 300)
        return EXIT_OK;
    if (status == 503 || status == 429)
        return EXIT_UNAVAILABLE;
    if (status >= 400 && status < 500)
        return EXIT_REJECTED;
    return EXIT_SERVER;
}

/* The message of an {"error": {...}} object (or {"error": "text"}), or NULL. */
static const char *error_message(json_t *root)
{
    json_t *e = json_object_get(root, "error");
    if (json_is_string(e))
        return json_string_value(e);
    const char *m = json_string_value(json_object_get(e, "message"));
    if (m)
        return m;
    return e && !json_is_null(e) ? "(no message)" : NULL;
}

/* One SSE event's data. Returns false to stop the transfer. */
static bool on_event(struct req *r, const char *data)
{
    if (r->done)
        return true; /* nothing counts after [DONE] */
    if (!strcmp(data, "[DONE]")) {
        r->done = true;
        return true;
    }
    json_error_t jerr;
    json_t *root = json_loads(data, 0, &jerr);
    if (!json_is_object(root)) {
        json_decref(root);
        r->abort_exit = EXIT_SERVER;
        snprintf(r->abort_msg, sizeof(r->abort_msg), "malformed event from the daemon: %.200s",
                 data);
        return false;
    }
    const char *err = error_message(root);
    if (err) {
        json_t *code = json_object_get(json_object_get(root, "error"), "code");
        r->abort_exit = json_is_integer(code) ? exit_for_status((long)json_integer_value(code))
                                              : EXIT_SERVER;
        if (r->abort_exit == EXIT_OK)
            r->abort_exit = EXIT_SERVER;
        snprintf(r->abort_msg, sizeof(r->abort_msg), "%s", err);
        json_decref(root);
        return false;
    }
    json_t *choice = json_array_get(json_object_get(root, "choices"), 0);
    const char *text = r->cmd == CMD_CHAT
        ? json_string_value(json_object_get(json_object_get(choice, "delta"), "content"))
        : json_string_value(json_object_get(choice, "text"));
    if (json_is_string(json_object_get(choice, "finish_reason")))
        r->finished = true;
    bool ok = !text || out_write(r, text, strlen(text));
    json_decref(root);
    return ok;
}

/* One line of the stream (without its end of line). */
static bool on_line(struct req *r, const char *s, size_t n)
{
    if (n == 0) { /* a blank line ends the event */
        if (!r->has_data)
            return true;
        if (r->data.len && r->data.p[r->data.len - 1] == '\n')
            r->data.p[--r->data.len] = '\0';
        bool ok = on_event(r, r->data.p ? r->data.p : "");
        r->data.len = 0;
        if (r->data.p)
            r->data.p[0] = '\0';
        r->has_data = false;
        return ok;
    }
    if (s[0] == ':')
        return true; /* comment (keep-alive) */
    const char *colon = memchr(s, ':', n);
    size_t flen = colon ? (size_t)(colon - s) : n;
    if (flen != 4 || memcmp(s, "data", 4))
        return true; /* event:, id:, retry: change nothing here */
    const char *v = colon ? colon + 1 : s + n;
    if (v < s + n && *v == ' ')
        v++;
    if (!buf_add(&r->data, v, (size_t)(s + n - v)) || !buf_add(&r->data, "\n", 1)) {
        r->abort_exit = EXIT_SERVER;
        snprintf(r->abort_msg, sizeof(r->abort_msg), "out of memory");
        return false;
    }
    r->has_data = true;
    return true;
}

/* Splits the buffered bytes into lines (LF, CRLF or CR, as SSE allows); a
 * CR at the very end waits for the next bytes, which may hold its LF. */
static bool sse_lines(struct req *r, bool at_end)
{
    size_t start = 0, i = 0;
    char *p = r->line.p;
    bool ok = true;
    while (ok && i < r->line.len) {
        if (p[i] == '\n' || p[i] == '\r') {
            size_t eol = i;
            if (p[i] == '\r') {
                if (i + 1 == r->line.len && !at_end)
                    break;
                if (i + 1 < r->line.len && p[i + 1] == '\n')
                    i++;
            }
            ok = on_line(r, p + start, eol - start);
            start = ++i;
        } else {
            i++;
        }
    }
    if (at_end && ok && start < r->line.len) { /* a last line with no end of line */
        ok = on_line(r, p + start, r->line.len - start);
        start = r->line.len;
    }
    if (at_end && ok)
        ok = on_line(r, "", 0); /* and an event with no blank line after it */
    if (start) {
        memmove(p, p + start, r->line.len - start);
        r->line.len -= start;
        p[r->line.len] = '\0';
    }
    return ok;
}

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct req *r = ud;
    size_t n = size * nmemb;
    if (!r->checked) {
        r->checked = true;
        curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &r->status);
        char *ct = NULL;
        curl_easy_getinfo(r->curl, CURLINFO_CONTENT_TYPE, &ct);
        r->sse = r->stream_asked && r->status == 200 &&
                 (ct ? !strncasecmp(ct, "text/event-stream", 17) : true);
    }
    if (r->sse) {
        if (!buf_add(&r->line, ptr, n)) {
            r->abort_exit = EXIT_SERVER;
            snprintf(r->abort_msg, sizeof(r->abort_msg), "out of memory");
            return 0;
        }
        return sse_lines(r, false) ? n : 0;
    }
    if (r->body.len + n > MAX_BODY) {
        r->abort_exit = EXIT_SERVER;
        snprintf(r->abort_msg, sizeof(r->abort_msg), "answer larger than %u MiB", MAX_BODY >> 20);
        return 0;
    }
    if (!buf_add(&r->body, ptr, n)) {
        r->abort_exit = EXIT_SERVER;
        snprintf(r->abort_msg, sizeof(r->abort_msg), "out of memory");
        return 0;
    }
    return n;
}

/* Why connect() to the socket fails, for a message better than curl's
 * "Failed to connect to localhost port 80". */
static void explain_connect(const char *path, char *out, size_t cap)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    int e = 0;
    if (fd < 0)
        e = errno;
    else if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        e = errno;
    if (fd >= 0)
        close(fd);
    const char *hint = "";
    if (e == ENOENT)
        hint = " (is moed running? --socket or MOED_SOCKET name its socket; without them "
               "moectl looks for $XDG_RUNTIME_DIR/moed.sock or /tmp/moed-UID.sock, where "
               "`moed MODEL` run by you listens, then " DEFAULT_SOCKET ")";
    else if (e == ECONNREFUSED)
        hint = " (no daemon is listening on it)";
    else if (e == EACCES || e == EPERM)
        hint = " (the socket's mode or group does not admit you)";
    if (e)
        snprintf(out, cap, "cannot connect to %s: %s%s", path, strerror(e), hint);
    else
        snprintf(out, cap, "cannot connect to %s", path);
}

/* Prints the error of a failed answer (status >= 300) and returns its exit code. */
static int report_http_error(struct req *r)
{
    int code = exit_for_status(r->status);
    json_t *root = r->body.p ? json_loadb(r->body.p, r->body.len, 0, NULL) : NULL;
    const char *msg = error_message(root);
    char retry[64] = "";
    curl_off_t ra = -1;
    if (curl_easy_getinfo(r->curl, CURLINFO_RETRY_AFTER, &ra) == CURLE_OK && ra > 0)
        snprintf(retry, sizeof(retry), "; retry after %lld s", (long long)ra);
    if (msg) {
        fprintf(stderr, "moectl: %s (HTTP %ld%s)\n", msg, r->status, retry);
    } else {
        /* not our JSON: the first line of what came */
        const char *b = r->body.p ? r->body.p : "";
        size_t n = strcspn(b, "\r\n");
        fprintf(stderr, "moectl: HTTP %ld from the daemon%s%s%.*s\n", r->status, retry,
                n ? ": " : "", (int)MOE_MIN(n, 200), b);
    }
    json_decref(root);
    return code;
}

/* ---- what each command makes of a successful answer ----------------------------------- */

static json_t *body_json(struct req *r)
{
    json_error_t jerr;
    json_t *root = r->body.p ? json_loadb(r->body.p, r->body.len, 0, &jerr) : NULL;
    if (!root)
        fprintf(stderr, "moectl: malformed answer from the daemon: %s\n",
                r->body.p ? jerr.text : "empty body");
    return root;
}

/* A terminal gets a final newline (the prompt or an error message must not
 * stick to the text); a pipe or a file gets the text exactly. */
static int finish_text(struct req *r)
{
    if (r->printed && !r->last_nl && r->out_tty) {
        fputc('\n', stdout);
        r->last_nl = true;
    }
    return fflush(stdout) ? EXIT_SERVER : EXIT_OK;
}

static int answer_generation(struct req *r)
{
    if (r->sse) {
        if (!r->done && !r->finished) {
            finish_text(r);
            fprintf(stderr, "moectl: the stream ended before it was finished\n");
            return EXIT_SERVER;
        }
        return finish_text(r);
    }
    json_t *root = body_json(r);
    if (!root)
        return EXIT_SERVER;
    const char *err = error_message(root);
    json_t *choice = json_array_get(json_object_get(root, "choices"), 0);
    const char *text = r->cmd == CMD_CHAT
        ? json_string_value(json_object_get(json_object_get(choice, "message"), "content"))
        : json_string_value(json_object_get(choice, "text"));
    int rc = EXIT_OK;
    if (err) {
        fprintf(stderr, "moectl: %s\n", err);
        rc = EXIT_SERVER;
    } else if (!text) {
        fprintf(stderr, "moectl: the answer holds no %s\n",
                r->cmd == CMD_CHAT ? "choices[0].message.content" : "choices[0].text");
        rc = EXIT_SERVER;
    } else if (!out_write(r, text, strlen(text))) {
        rc = EXIT_SERVER;
        fprintf(stderr, "moectl: %s\n", r->abort_msg);
    } else {
        rc = finish_text(r);
    }
    json_decref(root);
    return rc;
}

static int answer_models(struct req *r)
{
    json_t *root = body_json(r);
    if (!root)
        return EXIT_SERVER;
    json_t *data = json_object_get(root, "data");
    if (!json_is_array(data)) {
        fprintf(stderr, "moectl: the answer holds no data list\n");
        json_decref(root);
        return EXIT_SERVER;
    }
    size_t i;
    json_t *m;
    json_array_foreach(data, i, m) {
        const char *id = json_string_value(json_object_get(m, "id"));
        if (id)
            printf("%s\n", id);
    }
    json_decref(root);
    return EXIT_OK;
}

/* /health: 200 = ready (0), 503 = loading / unavailable (3); prints the
 * status word and the other scalar fields */
static int answer_status(struct req *r)
{
    json_t *root = r->body.p ? json_loadb(r->body.p, r->body.len, 0, NULL) : NULL;
    const char *st = json_string_value(json_object_get(root, "status"));
    int rc = r->status == 200 ? EXIT_OK : exit_for_status(r->status);
    if (!st)
        st = r->status == 200 ? "ok" : r->status == 503 ? "unavailable" : "error";
    printf("%s\n", st);
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "status"))
            continue;
        if (json_is_string(v))
            printf("%s: %s\n", key, json_string_value(v));
        else if (json_is_integer(v))
            printf("%s: %lld\n", key, (long long)json_integer_value(v));
        else if (json_is_real(v))
            printf("%s: %g\n", key, json_real_value(v));
        else if (json_is_boolean(v))
            printf("%s: %s\n", key, json_is_true(v) ? "true" : "false");
    }
    const char *err = error_message(root);
    if (rc != EXIT_OK && err)
        fprintf(stderr, "moectl: %s (HTTP %ld)\n", err, r->status);
    json_decref(root);
    return rc;
}

static int answer_stats(struct req *r)
{
    json_t *root = body_json(r);
    if (!root)
        return EXIT_SERVER;
    char *s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!s)
        return EXIT_SERVER;
    printf("%s\n", s);
    free(s);
    return EXIT_OK;
}

static int answer_raw(struct req *r)
{
    if (r->body.len && fwrite(r->body.p, 1, r->body.len, stdout) != r->body.len)
        return EXIT_SERVER;
    return EXIT_OK;
}

static int answer_reload(struct req *r)
{
    json_t *root = r->body.p ? json_loadb(r->body.p, r->body.len, 0, NULL) : NULL;
    const char *err = error_message(root);
    const char *msg = json_string_value(json_object_get(root, "message"));
    if (!msg)
        msg = json_string_value(json_object_get(root, "status"));
    int rc = EXIT_OK;
    if (err) {
        fprintf(stderr, "moectl: %s\n", err);
        rc = EXIT_SERVER;
    } else {
        printf("%s\n", msg ? msg : "reloaded");
    }
    json_decref(root);
    return rc;
}

/* ---- building and sending --------------------------------------------------------------- */

/* jansson refuses strings that are not UTF-8 (json_string -> NULL), which
 * json_object_set_new would then silently leave out: check every one. */
static bool set_str(json_t *obj, const char *key, const char *val, bool *ok)
{
    json_t *s = json_string(val);
    if (!s || json_object_set_new(obj, key, s) < 0)
        *ok = false;
    return *ok;
}

static char *request_body(const struct opts *o, enum command cmd, bool stream)
{
    bool ok = true;
    json_t *j = json_object();
    if (!j)
        return NULL;
    if (o->model)
        set_str(j, "model", o->model, &ok);
    if (cmd == CMD_GENERATE) {
        set_str(j, "prompt", o->text, &ok);
    } else if (o->history) {
        json_object_set(j, "messages", o->history);
    } else {
        json_t *msgs = json_array();
        if (o->system) {
            json_t *s = json_object();
            set_str(s, "role", "system", &ok);
            set_str(s, "content", o->system, &ok);
            json_array_append_new(msgs, s);
        }
        json_t *u = json_object();
        set_str(u, "role", "user", &ok);
        set_str(u, "content", o->text, &ok);
        json_array_append_new(msgs, u);
        json_object_set_new(j, "messages", msgs);
    }
    json_object_set_new(j, "stream", json_boolean(stream));
    if (o->max_tokens >= 0)
        json_object_set_new(j, "max_tokens", json_integer(o->max_tokens));
    if (!isnan(o->temperature))
        json_object_set_new(j, "temperature", json_real(o->temperature));
    if (!isnan(o->top_p))
        json_object_set_new(j, "top_p", json_real(o->top_p));
    if (o->top_k >= 0)
        json_object_set_new(j, "top_k", json_integer(o->top_k));
    if (o->seed >= 0)
        json_object_set_new(j, "seed", json_integer(o->seed));
    if (o->n_stops) {
        json_t *st = json_array();
        for (size_t i = 0; i < o->n_stops; i++) {
            json_t *v = json_string(o->stops[i]);
            if (!v || json_array_append_new(st, v) < 0)
                ok = false;
        }
        json_object_set_new(j, "stop", st);
    }
    char *s = ok ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    return s;
}

static int run(const struct opts *o)
{
    enum command cmd = commands[o->cmd_index].cmd;
    bool generation = cmd == CMD_GENERATE || cmd == CMD_CHAT;
    struct req r = {.cmd = cmd, .stream_asked = generation && !o->no_stream,
                    .out_tty = isatty(STDOUT_FILENO), .capture = o->capture};
    char *body = NULL;
    char url[256];
    struct curl_slist *hdr = NULL;
    int rc = EXIT_SERVER;

    if (strlen(o->socket) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return usage_error("socket path too long (at most %zu bytes): %s",
                           sizeof(((struct sockaddr_un *)0)->sun_path) - 1, o->socket);
    if (generation && !(body = request_body(o, cmd, r.stream_asked))) {
        fprintf(stderr, "moectl: cannot build the request (is the text valid UTF-8?)\n");
        return EXIT_USAGE;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(r.curl = curl_easy_init())) {
        fprintf(stderr, "moectl: cannot initialise libcurl\n");
        free(body);
        return EXIT_SERVER;
    }
    snprintf(url, sizeof(url), "http://localhost%s", commands[o->cmd_index].path);
    double timeout = o->timeout_s >= 0 ? o->timeout_s : generation ? 0 : DEFAULT_TIMEOUT_S;
    hdr = curl_slist_append(hdr, "Expect:"); /* no 100-continue round trip */
    if (r.stream_asked)
        hdr = curl_slist_append(hdr, "Accept: text/event-stream");
    if (body)
        hdr = curl_slist_append(hdr, "Content-Type: application/json");
    CURL *c = r.curl;
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, o->socket);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "moectl/" MOECTL_VERSION);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    if (timeout > 0)
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)MOE_MIN(timeout * 1000.0, 2e9));
    if (!strcmp(commands[o->cmd_index].method, "POST")) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)(body ? strlen(body) : 0));
    }
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);

    /* the status line: only for generation, only on a terminal */
    if (generation && !o->quiet && isatty(STDERR_FILENO)) {
        r.status_on = true;
        r.status_what = r.stream_asked ? "waiting for first token..." : "generating...";
        r.t0 = now_s();
        curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c, CURLOPT_XFERINFODATA, &r);
        curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
        status_show(&r, 0);
    }

    CURLcode cr = curl_easy_perform(c);
    if (r.sse && cr == CURLE_OK && !r.abort_exit)
        sse_lines(&r, true); /* whatever the last bytes held */
    if (!r.checked)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    status_clear();
    r.status_on = false;
    /* on a terminal, an error after some text starts on a line of its own */
    if (r.abort_exit || cr != CURLE_OK)
        finish_text(&r);

    if (r.abort_exit) { /* stopped on purpose: stream error, stdout error ... */
        fprintf(stderr, "moectl: %s\n", r.abort_msg);
        rc = r.abort_exit;
    } else if (cr != CURLE_OK) {
        char msg[600];
        rc = EXIT_UNAVAILABLE;
        if (cr == CURLE_COULDNT_CONNECT) {
            explain_connect(o->socket, msg, sizeof(msg));
        } else if (cr == CURLE_OPERATION_TIMEDOUT) {
            snprintf(msg, sizeof(msg), "no complete answer from %s within %g s", o->socket,
                     timeout > 0 ? timeout : 10.0);
        } else if (r.status == 0) {
            snprintf(msg, sizeof(msg), "%s: the daemon closed the connection without answering "
                     "(%s)", o->socket, curl_easy_strerror(cr));
        } else {
            snprintf(msg, sizeof(msg), "%s: connection lost in the middle of the answer (%s)",
                     o->socket, curl_easy_strerror(cr));
            rc = EXIT_SERVER;
        }
        fprintf(stderr, "moectl: %s\n", msg);
    } else if (cmd == CMD_STATUS && (r.status == 200 || r.status == 503)) {
        rc = answer_status(&r);
    } else if (r.status < 200 || r.status >= 300) {
        rc = report_http_error(&r);
    } else {
        switch (cmd) {
        case CMD_GENERATE:
        case CMD_CHAT: rc = answer_generation(&r); break;
        case CMD_MODELS: rc = answer_models(&r); break;
        case CMD_STATUS: rc = answer_status(&r); break;
        case CMD_STATS: rc = answer_stats(&r); break;
        case CMD_METRICS: rc = answer_raw(&r); break;
        case CMD_RELOAD: rc = answer_reload(&r); break;
        case CMD_PS: rc = answer_stats(&r); break; /* ps() asks itself; not reached */
        }
    }
    if (fflush(stdout) != 0 && rc == EXIT_OK) {
        fprintf(stderr, "moectl: writing to stdout: %s\n", strerror(errno));
        rc = EXIT_SERVER;
    }
    curl_easy_cleanup(c);
    curl_slist_free_all(hdr);
    curl_global_cleanup();
    buf_free(&r.body);
    buf_free(&r.line);
    buf_free(&r.data);
    free(body);
    return rc;
}

/* ---- ps: what is loaded and running ------------------------------------------------------ */

/* One GET into out; returns 0, or the exit status after printing why. */
static int http_get(const struct opts *o, const char *path, struct buf *out)
{
    char url[256];
    long status = 0;
    CURL *c = curl_easy_init();
    if (!c) {
        fprintf(stderr, "moectl: cannot initialise libcurl\n");
        return EXIT_SERVER;
    }
    struct req r = {.curl = c, .cmd = CMD_STATS};
    snprintf(url, sizeof(url), "http://localhost%s", path);
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, o->socket);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "moectl/" MOECTL_VERSION);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    double t = o->timeout_s >= 0 ? o->timeout_s : DEFAULT_TIMEOUT_S;
    if (t > 0)
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)MOE_MIN(t * 1000.0, 2e9));
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    CURLcode cr = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    r.status = status;
    int rc = EXIT_OK;
    if (r.abort_exit) {
        fprintf(stderr, "moectl: %s\n", r.abort_msg);
        rc = r.abort_exit;
    } else if (cr != CURLE_OK) {
        char msg[600];
        if (cr == CURLE_COULDNT_CONNECT)
            explain_connect(o->socket, msg, sizeof(msg));
        else
            snprintf(msg, sizeof(msg), "%s: GET %s: %s", o->socket, path, curl_easy_strerror(cr));
        fprintf(stderr, "moectl: %s\n", msg);
        rc = EXIT_UNAVAILABLE;
    } else if (status != 200) {
        rc = report_http_error(&r);
    }
    if (!rc) {
        *out = r.body;
        r.body = (struct buf){0};
    }
    curl_easy_cleanup(c);
    buf_free(&r.body);
    return rc;
}

/* the value of a sample line "NAME VALUE" or "NAME{...} VALUE" in Prometheus text; NAN if none */
static double metric_value(const char *text, const char *name, char *labels, size_t cap)
{
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, name, n) || (p[n] != ' ' && p[n] != '{'))
            continue;
        const char *v = p + n;
        if (*v == '{') {
            const char *close = strchr(v, '}');
            if (!close)
                return NAN;
            if (labels)
                snprintf(labels, cap, "%.*s", (int)(close - v - 1), v + 1);
            v = close + 1;
        }
        return strtod(v, NULL);
    }
    return NAN;
}

/* label="value" out of a label list (values without escapes are enough here) */
static void label_value(const char *labels, const char *key, char *out, size_t cap)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "%s=\"", key);
    out[0] = '\0';
    for (const char *p = strstr(labels, pat); p; p = strstr(p + 1, pat)) {
        if (p != labels && p[-1] != ',')
            continue;
        p += strlen(pat);
        const char *q = strchr(p, '"');
        snprintf(out, cap, "%.*s", q ? (int)(q - p) : 0, p);
        return;
    }
}

static void human_bytes(double b, char *out, size_t cap)
{
    static const char *const u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (b >= 1024 && i < 4) {
        b /= 1024;
        i++;
    }
    snprintf(out, cap, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

/* the daemon's resident memory, when it is a process this user can see */
static double process_rss(long long pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%lld/status", pid);
    FILE *f = fopen(path, "r");
    double kib = NAN;
    bool moed = false;
    while (f && fgets(line, sizeof(line), f)) {
        if (!strncmp(line, "Name:", 5))
            moed = strstr(line, "moed") != NULL; /* not another process of that pid */
        else if (!strncmp(line, "VmRSS:", 6))
            kib = strtod(line + 6, NULL);
    }
    if (f)
        fclose(f);
    return moed ? kib * 1024 : NAN;
}

static int ps(const struct opts *o)
{
    struct buf stats = {0}, models = {0}, metrics = {0};
    int rc;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "moectl: cannot initialise libcurl\n");
        return EXIT_SERVER;
    }
    if ((rc = http_get(o, "/admin/stats", &stats)) || (rc = http_get(o, "/v1/models", &models)) ||
        (rc = http_get(o, "/metrics", &metrics)))
        goto out;
    json_t *st = json_loadb(stats.p, stats.len, 0, NULL);
    json_t *ml = json_loadb(models.p, models.len, 0, NULL);
    json_t *srv = json_object_get(st, "server"), *eng = json_object_get(st, "engine");
    const char *name =
        json_string_value(json_object_get(json_array_get(json_object_get(ml, "data"), 0), "id"));
    if (!srv) {
        fprintf(stderr, "moectl: malformed /admin/stats answer\n");
        rc = EXIT_SERVER;
    } else {
        char labels[512] = "", arch[64], layers[16], experts[16], topk[16], ctx[16];
        double info = metric_value(metrics.p, "moed_model_info", labels, sizeof(labels));
        label_value(labels, "arch", arch, sizeof(arch));
        label_value(labels, "layers", layers, sizeof(layers));
        label_value(labels, "experts", experts, sizeof(experts));
        label_value(labels, "top_k", topk, sizeof(topk));
        label_value(labels, "ctx", ctx, sizeof(ctx));
        const char *state = json_string_value(json_object_get(srv, "state"));
        printf("model:     %s", name ? name : json_string_value(json_object_get(srv, "model")));
        if (!isnan(info))
            printf(" (%s, %s layers, %s experts, top-%s, context %s)", arch, layers, experts,
                   topk, ctx);
        printf("\nstate:     %s\n", state ? state : "?");
        if (json_is_object(eng))
            printf("requests:  %lld running, %lld queued, %lld done, %lld failed, %lld "
                   "cancelled\n",
                   (long long)json_integer_value(json_object_get(eng, "running")),
                   (long long)json_integer_value(json_object_get(eng, "queue_depth")),
                   (long long)json_integer_value(json_object_get(eng, "requests_done")),
                   (long long)json_integer_value(json_object_get(eng, "requests_failed")),
                   (long long)json_integer_value(json_object_get(eng, "requests_cancelled")));
        double kt = metric_value(metrics.p, "moed_kv_blocks_total", NULL, 0);
        double ku = metric_value(metrics.p, "moed_kv_blocks_used", NULL, 0);
        double kb = metric_value(metrics.p, "moed_kv_block_bytes", NULL, 0);
        if (!isnan(kt) && !isnan(ku) && !isnan(kb) && kt > 0) {
            char used[32], all[32];
            human_bytes(ku * kb, used, sizeof(used));
            human_bytes(kt * kb, all, sizeof(all));
            printf("kv cache:  %s of %s used (%.0f%%, %.0f of %.0f blocks)\n", used, all,
                   100.0 * ku / kt, ku, kt);
        }
        long long pid = (long long)json_integer_value(json_object_get(srv, "pid"));
        double rss = pid > 0 ? process_rss(pid) : NAN;
        char mem[32];
        if (!isnan(rss)) {
            human_bytes(rss, mem, sizeof(mem));
            printf("memory:    %s resident (pid %lld)\n", mem, pid);
        } else if (pid > 0) {
            printf("memory:    not visible from here (pid %lld)\n", pid);
        }
        double up = json_number_value(json_object_get(srv, "uptime_s"));
        long u = (long)up;
        printf("uptime:    ");
        if (u >= 86400)
            printf("%ldd ", u / 86400);
        if (u >= 3600)
            printf("%ldh ", u / 3600 % 24);
        if (u >= 60)
            printf("%ldm ", u / 60 % 60);
        printf("%lds\n", u % 60);
        printf("socket:    %s\n", o->socket);
    }
    json_decref(st);
    json_decref(ml);
out:
    buf_free(&stats);
    buf_free(&models);
    buf_free(&metrics);
    curl_global_cleanup();
    if (fflush(stdout) && !rc)
        rc = EXIT_SERVER;
    return rc;
}

/* ---- chat: a conversation, one turn per line --------------------------------------------- */

static const char chat_help[] =
    "Type a message and Enter to send it; the reply streams back. Commands:\n"
    "  /clear          forget the conversation (the system message stays)\n"
    "  /system TEXT    set the system message and start over (/system alone: none)\n"
    "  /history        show the conversation so far\n"
    "  /help           this text\n"
    "  /exit, /quit    leave (so does Ctrl-D)\n";

static json_t *message(const char *role, const char *content)
{
    json_t *m = json_object();
    json_t *c = json_string(content);
    if (!m || !c) { /* not UTF-8 */
        json_decref(m);
        json_decref(c);
        return NULL;
    }
    json_object_set_new(m, "role", json_string(role));
    json_object_set_new(m, "content", c);
    return m;
}

static void chat_reset(json_t *hist, const char *system)
{
    json_array_clear(hist);
    if (system && *system)
        json_array_append_new(hist, message("system", system));
}

static char *history_path(void)
{
    const char *home = getenv("HOME");
    return home && *home ? moe_path_join(home, HISTORY_FILE) : NULL;
}

/* One line from stdin: readline (editing, history) on a terminal, else a
 * plain read; NULL at EOF. The line has no '\n'. */
static char *read_line(bool tty, const char *prompt)
{
    if (tty)
        return readline(prompt);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0) {
        free(line);
        return NULL;
    }
    if (n && line[n - 1] == '\n')
        line[--n] = '\0';
    if (n && line[n - 1] == '\r')
        line[--n] = '\0';
    return line;
}

/* Returns the exit status: 0 at EOF or /exit; without a terminal, a turn
 * that fails ends the session with its status (a script should see it). */
static int chat_repl(struct opts *o)
{
    bool tty = isatty(STDIN_FILENO);
    char *system = o->system ? strdup(o->system) : NULL;
    char *hpath = tty ? history_path() : NULL;
    json_t *hist = json_array();
    int rc = EXIT_OK;
    if (!hist)
        return EXIT_SERVER;
    chat_reset(hist, system);
    if (tty) {
        using_history();
        stifle_history(HISTORY_MAX);
        if (hpath)
            read_history(hpath);
        fprintf(stderr, "moectl chat on %s: /help for commands, Ctrl-D to leave\n", o->socket);
    }
    char *first = o->text; /* a MESSAGE on the command line is the first turn */
    o->text = NULL;
    for (;;) {
        char *line = first ? first : read_line(tty, ">>> ");
        first = NULL;
        if (!line) {
            if (tty)
                fputc('\n', stdout);
            break;
        }
        const char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p) {
            free(line);
            continue;
        }
        if (tty)
            add_history(line);
        if (*p == '/') {
            const char *arg = p + strcspn(p, " \t");
            size_t cl = (size_t)(arg - p);
            while (*arg == ' ' || *arg == '\t')
                arg++;
            bool quit = false;
            if ((cl == 5 && !strncmp(p, "/exit", 5)) || (cl == 5 && !strncmp(p, "/quit", 5)) ||
                (cl == 4 && !strncmp(p, "/bye", 4))) {
                quit = true;
            } else if (cl == 6 && !strncmp(p, "/clear", 6)) {
                chat_reset(hist, system);
                fprintf(stderr, "(conversation cleared)\n");
            } else if (cl == 7 && !strncmp(p, "/system", 7)) {
                free(system);
                system = *arg ? strdup(arg) : NULL;
                chat_reset(hist, system);
                fprintf(stderr, "(system message %s; conversation cleared)\n",
                        system ? "set" : "removed");
            } else if (cl == 8 && !strncmp(p, "/history", 8)) {
                size_t i;
                json_t *m;
                json_array_foreach(hist, i, m)
                    printf("%s: %s\n", json_string_value(json_object_get(m, "role")),
                           json_string_value(json_object_get(m, "content")));
                fflush(stdout);
            } else if (cl == 5 && !strncmp(p, "/help", 5)) {
                fputs(chat_help, stderr);
            } else {
                fprintf(stderr, "moectl: unknown command %.*s (/help lists them)\n", (int)cl, p);
                if (!tty) {
                    rc = EXIT_USAGE;
                    quit = true;
                }
            }
            free(line);
            if (quit)
                break;
            continue;
        }
        json_t *m = message("user", line);
        free(line);
        if (!m) {
            fprintf(stderr, "moectl: the message is not valid UTF-8\n");
            if (!tty) {
                rc = EXIT_USAGE;
                break;
            }
            continue;
        }
        json_array_append_new(hist, m);
        struct buf reply = {0};
        o->history = hist;
        o->capture = &reply;
        rc = run(o);
        o->history = NULL;
        o->capture = NULL;
        if (rc == EXIT_OK) {
            json_t *a = message("assistant", reply.p ? reply.p : "");
            if (a)
                json_array_append_new(hist, a);
            /* each reply on lines of its own, even on a pipe */
            if (reply.len && reply.p[reply.len - 1] != '\n' && !isatty(STDOUT_FILENO))
                fputc('\n', stdout);
            fflush(stdout);
        } else {
            /* the turn did not happen: the next message follows the last answer */
            json_array_remove(hist, json_array_size(hist) - 1);
        }
        buf_free(&reply);
        if (rc != EXIT_OK && !tty)
            break;
        if (tty)
            rc = EXIT_OK;
    }
    if (tty && hpath)
        write_history(hpath);
    free(hpath);
    free(system);
    json_decref(hist);
    return rc;
}

/* ---- arguments ---------------------------------------------------------------------------- */

static char *read_stdin(void)
{
    struct buf b = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), stdin)) > 0)
        if (!buf_add(&b, chunk, n)) {
            buf_free(&b);
            return NULL;
        }
    if (ferror(stdin)) {
        buf_free(&b);
        return NULL;
    }
    if (!b.p)
        buf_add(&b, "", 0);
    return b.p;
}

static char *join_args(char **args, int n)
{
    struct buf b = {0};
    for (int i = 0; i < n; i++)
        if ((i && !buf_add(&b, " ", 1)) || !buf_add(&b, args[i], strlen(args[i]))) {
            buf_free(&b);
            return NULL;
        }
    return b.p;
}

/* No --socket, no MOED_SOCKET: the socket `moed MODEL` makes for this user
 * (moe_user_socket_path) when it is there and this user's or root's (not
 * one another user planted in /tmp), else the system daemon's. */
static const char *default_socket(void)
{
    static char user[256];
    struct stat st;
    moe_user_socket_path(user, sizeof(user));
    if (!lstat(user, &st) && S_ISSOCK(st.st_mode) && (st.st_uid == geteuid() || st.st_uid == 0))
        return user;
    return DEFAULT_SOCKET;
}

enum { O_SOCKET = 256, O_TIMEOUT, O_TOPP, O_TOPK, O_STOP, O_NOSTREAM, O_SYSTEM, O_MODEL };

/* options that only generation takes, for the "does not take" message */
static bool generation_only(int c)
{
    return c == 'n' || c == 't' || c == 's' || c == O_TOPP || c == O_TOPK || c == O_STOP ||
           c == O_NOSTREAM || c == O_SYSTEM || c == O_MODEL;
}

/* Returns -1 to go on, else the exit status. */
static int parse_args(int argc, char **argv, struct opts *o)
{
    static const struct option longopts[] = {
        {"socket", required_argument, 0, O_SOCKET},
        {"timeout", required_argument, 0, O_TIMEOUT},
        {"max-tokens", required_argument, 0, 'n'},
        {"temperature", required_argument, 0, 't'},
        {"top-p", required_argument, 0, O_TOPP},
        {"top-k", required_argument, 0, O_TOPK},
        {"seed", required_argument, 0, 's'},
        {"stop", required_argument, 0, O_STOP},
        {"no-stream", no_argument, 0, O_NOSTREAM},
        {"system", required_argument, 0, O_SYSTEM},
        {"interactive", no_argument, 0, 'i'},
        {"model", required_argument, 0, O_MODEL},
        {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},
        {0, 0, 0, 0}};
    memset(o, 0, sizeof(*o));
    o->timeout_s = -1;
    o->max_tokens = o->top_k = o->seed = -1;
    o->temperature = o->top_p = NAN;
    o->cmd_index = -1;
    const char *env = getenv("MOED_SOCKET");
    o->socket = env && *env ? env : default_socket();

    int seen[512] = {0}; /* which options were given, to check them against the command */
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":n:t:s:iqhV", longopts, NULL)) != -1) {
        double v;
        if (c >= 0 && c < 512)
            seen[c] = 1;
        switch (c) {
        case O_SOCKET:
            if (!*optarg)
                return usage_error("--socket: empty path");
            o->socket = optarg;
            break;
        case O_TIMEOUT:
            if (!parse_double(optarg, &v) || v < 0)
                return usage_error("--timeout: expected seconds >= 0, got '%s'", optarg);
            o->timeout_s = v;
            break;
        case 'n':
            if (!parse_int(optarg, 1, INT32_MAX, &o->max_tokens))
                return usage_error("--max-tokens: expected an integer >= 1, got '%s'", optarg);
            break;
        case 't':
            if (!parse_double(optarg, &o->temperature) || o->temperature < 0)
                return usage_error("--temperature: expected a number >= 0, got '%s'", optarg);
            break;
        case O_TOPP:
            if (!parse_double(optarg, &o->top_p) || o->top_p <= 0 || o->top_p > 1)
                return usage_error("--top-p: expected a number in (0, 1], got '%s'", optarg);
            break;
        case O_TOPK:
            if (!parse_int(optarg, 0, INT32_MAX, &o->top_k))
                return usage_error("--top-k: expected an integer >= 0, got '%s'", optarg);
            break;
        case 's':
            if (!parse_int(optarg, 0, INT64_MAX, &o->seed))
                return usage_error("--seed: expected an integer in [0, 2^63-1], got '%s'",
                                   optarg);
            break;
        case O_STOP:
            if (!*optarg)
                return usage_error("--stop: empty text");
            if (o->n_stops == MAX_STOPS)
                return usage_error("--stop: at most %d", MAX_STOPS);
            o->stops[o->n_stops++] = optarg;
            break;
        case O_NOSTREAM: o->no_stream = true; break;
        case O_SYSTEM: o->system = optarg; break;
        case 'i': o->interactive = true; break;
        case O_MODEL: o->model = optarg; break;
        case 'q': o->quiet = true; break;
        case 'h':
            fputs(help_text, stdout);
            return EXIT_OK;
        case 'V':
            printf("moectl %s\n", MOECTL_VERSION);
            return EXIT_OK;
        case ':':
            return usage_error("option '%s' needs a value", argv[optind - 1]);
        default:
            return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        return usage_error("no command (generate, chat, models, ps, status, stats, metrics, "
                           "reload)");
    const char *name = argv[optind++];
    if (!strcmp(name, "help")) {
        fputs(help_text, stdout);
        return EXIT_OK;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(name, commands[i].name))
            o->cmd_index = (int)i;
    if (o->cmd_index < 0)
        return usage_error("unknown command '%s'", name);
    enum command cmd = commands[o->cmd_index].cmd;
    bool generation = cmd == CMD_GENERATE || cmd == CMD_CHAT;
    for (int k = 0; k < 512; k++)
        if (seen[k] && ((generation_only(k) && !generation) ||
                        ((k == O_SYSTEM || k == 'i') && cmd != CMD_CHAT))) {
            for (const struct option *lo = longopts; lo->name; lo++)
                if (lo->val == k)
                    return usage_error("%s does not take --%s", name, lo->name);
        }
    int nargs = argc - optind;
    if (!generation) {
        if (nargs)
            return usage_error("%s takes no arguments (got '%s')", name, argv[optind]);
        return -1;
    }
    /* chat with no MESSAGE on a terminal, or -i: a conversation (the
     * MESSAGE, if any, is its first turn) */
    if (cmd == CMD_CHAT && (o->interactive || (nargs == 0 && isatty(STDIN_FILENO)))) {
        o->interactive = true;
        if (nargs && !(o->text = join_args(argv + optind, nargs)))
            return usage_error("out of memory");
        return -1;
    }
    bool from_stdin = (nargs == 1 && !strcmp(argv[optind], "-")) ||
                      (nargs == 0 && !isatty(STDIN_FILENO));
    if (nargs == 0 && !from_stdin)
        return usage_error("%s needs a %s", name, cmd == CMD_CHAT ? "MESSAGE" : "PROMPT");
    o->text = from_stdin ? read_stdin() : join_args(argv + optind, nargs);
    if (!o->text) {
        fprintf(stderr, "moectl: cannot read the %s: %s\n",
                cmd == CMD_CHAT ? "message" : "prompt", strerror(errno));
        return EXIT_USAGE;
    }
    if (!*o->text) {
        free(o->text);
        o->text = NULL;
        return usage_error("empty %s", cmd == CMD_CHAT ? "message" : "prompt");
    }
    return -1;
}

int main(int argc, char **argv)
{
    struct opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc < 0 && commands[o.cmd_index].cmd == CMD_PS)
        rc = ps(&o);
    else if (rc < 0 && o.interactive)
        rc = chat_repl(&o);
    else if (rc < 0)
        rc = run(&o);
    free(o.text);
    return rc;
}
