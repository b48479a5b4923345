/* ipc private: the request parser (pure, fuzzed), error replies, response
 * and SSE chunk builders, and the engine seam the server calls through. */
#ifndef MOE_IPC_INT_H
#define MOE_IPC_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <jansson.h>

#include "common/common.h"
#include "engine/engine_server.h"
#include "ipc/ipc.h"

/* ---- errors --------------------------------------------------------------
 * Every error reply is {"error": {"message", "type", "code", "param"}}.
 * type follows OpenAI ("invalid_request_error", ...); code is a stable
 * string scripts may match; param names the request field at fault. */
struct moe_ipc_error {
    int status;         /* HTTP status */
    const char *type;   /* static string */
    const char *code;   /* static string */
    char param[96];     /* "" when no single field is at fault */
    char message[512];
};

/* Fills e and returns -EINVAL (so a parser can `return moe_ipc_error_set(...)`). */
int moe_ipc_error_set(struct moe_ipc_error *e, int status, const char *type, const char *code,
                      const char *param, const char *fmt, ...) MOE_PRINTF(6, 7);
/* The JSON body (malloc'ed, ends with "\n"); NULL only when out of memory. */
char *moe_ipc_error_json(const struct moe_ipc_error *e, size_t *len);
json_t *moe_ipc_error_obj(const struct moe_ipc_error *e); /* {"error": {...}} */

/* A JSON string from bytes that should be UTF-8: invalid sequences become
 * U+FFFD instead of failing (jansson refuses invalid UTF-8). NULL: no memory. */
json_t *moe_ipc_json_text(const char *s, size_t n);

/* ---- request parsing -----------------------------------------------------
 * A completion or chat body (JSON) -> struct moe_request, with every field
 * checked against its type and range and against the limits. Fields the
 * body leaves out (or sets to null) take lim->defaults / default_max_tokens.
 * A pure function of its inputs: no engine, no I/O, no globals.
 *
 * Decisions (documented in ipc/README.md):
 *   - "model" is accepted whatever it names (one model is served; replies
 *     carry the served name); a non-string model is a type error.
 *   - chat roles: system, user, assistant ("developer" is read as system);
 *     anything else is 400 here, naming messages[i].role. content is a
 *     string or an array of {"type":"text","text":...} parts (joined by
 *     "\n"); null or other part types are 400.
 *   - seed: absent -> lim->defaults.seed. A seed of UINT64_MAX (-1 in the
 *     JSON, or the daemon's "seed = -1" default) means "draw a fresh one":
 *     the server does, per request (OpenAI's and llama.cpp's semantics).
 *   - the legacy functions / function_call must be absent or neutral: 400
 *     "unsupported_parameter" otherwise. Unknown fields are ignored.
 *   - structured output and tools: ipc_structured.c; the model's own chat
 *     template: ipc_template.c (ipc/README.md has the details).
 */
struct moe_ipc_parsed {
    struct moe_request *req; /* owned; NULL once handed to the engine */
    bool include_usage;      /* stream_options.include_usage */
    bool seed_set;           /* the body gave a seed (even -1) */
    int n;                   /* choices: as many requests (seeds seed, seed + 1, ...) */
    bool responses;          /* came as the Responses API (moe_ipc_parse_response) */
    int best_of;             /* candidates (>= n): the n likeliest are returned */
    json_t *tools;           /* chat "tools" (a reference), NULL when none */
    json_t *messages;        /* chat with the model's own template: the messages it is given */
    json_t *template_kwargs; /* chat_template_kwargs (vLLM's): more variables for it */
    enum moe_tool_mode { MOE_TOOLS_NONE, MOE_TOOLS_AUTO, MOE_TOOLS_REQUIRED } tool_mode;
};
#define MOE_IPC_CHOICES_MAX 16 /* "n" at most */

/* response_format, grammar, json_schema, tools and tool_choice
 * (ipc_structured.c): r->grammar set where the output is constrained,
 * out->tools / tool_mode for chat. */
int moe_ipc_parse_structured(json_t *root, bool chat, struct moe_request *r,
                             struct moe_ipc_parsed *out, struct moe_ipc_error *err);

/* A chat message as the model's template is given it (ipc_template.c),
 * appended to arr: role, content (text; null for an assistant turn of tool
 * calls alone), tool_calls with each call's arguments as an object (as
 * transformers' templates read them; OpenAI sends a JSON string),
 * tool_call_id, name, reasoning_content. 400 naming messages[i].* at fault. */
int moe_ipc_template_message(json_t *m, size_t i, const char *role, const char *content,
                             json_t *arr, struct moe_ipc_error *err);
/* p's conversation rendered by lim->chat_jinja (tools, bos/eos tokens and
 * chat_template_kwargs given to it) into p->req->prompt (prompt_raw set);
 * a template that refuses is a 400 with its message. */
int moe_ipc_render_chat(const struct moe_ipc_limits *lim, struct moe_ipc_parsed *p,
                        struct moe_ipc_error *err);
/* Tool calls (ipc_tools.c): the OpenAI tool_calls array read out of text
 * (ids "call_<id_base>_<i>"), with the length of the content before them;
 * NULL when the text holds none, or one that does not parse. */
json_t *moe_ipc_tool_calls(const char *text, size_t len, const char *id_base,
                           size_t *content_len);
/* Streaming: how much of text may be sent now; the rest is a call, may
 * begin one, or is the blanks before one. */
size_t moe_ipc_tool_hold(const char *text, size_t len);

/* POST /v1/responses (OpenAI's Responses API), read as the chat request it
 * amounts to: instructions -> a system message, input (a string or message
 * items with text) -> messages, max_output_tokens -> max_completion_tokens.
 * Tools, structured output, stored conversations and reasoning settings are
 * 400 unsupported_parameter. Errors as moe_ipc_parse_completion's. */
int moe_ipc_parse_response(const char *body, size_t len, const struct moe_ipc_limits *lim,
                           struct moe_ipc_parsed *out, struct moe_ipc_error *err);

/* 0 with *out filled, or -EINVAL with *err filled (status 400) and *out
 * empty. Out of memory: -ENOMEM with err status 500. */
int moe_ipc_parse_completion(const char *body, size_t len, bool chat,
                             const struct moe_ipc_limits *lim, struct moe_ipc_parsed *out,
                             struct moe_ipc_error *err);
/* Frees out->req (when still owned) and clears *out. */
void moe_ipc_parsed_free(struct moe_ipc_parsed *p);

/* ---- growing byte buffer ---------------------------------------------------- */
struct moe_ipc_buf {
    char *data;
    size_t len, cap;
    size_t off; /* how much of data a reader has consumed */
};
int moe_ipc_buf_append(struct moe_ipc_buf *b, const void *p, size_t n);
void moe_ipc_buf_reset(struct moe_ipc_buf *b); /* len = off = 0, keeps memory */
void moe_ipc_buf_free(struct moe_ipc_buf *b);

/* ---- responses ----------------------------------------------------------------
 * One generation's identity, shared by all of its chunks. */
struct moe_ipc_gen {
    char id[48];       /* "cmpl-..." / "chatcmpl-..." */
    bool chat;
    bool include_usage;
    bool logprobs;     /* replies carry each token's logprobs (else "logprobs": null) */
    int index;         /* the choice the next chunk is about (n > 1) */
    bool responses;    /* the Responses API's objects and events (chat underneath) */
    int64_t sequence;  /* its events' sequence_number */
    bool incomplete;   /* its generation hit the token limit */
    struct moe_ipc_buf *full; /* its stream: the text so far (the closing events repeat it) */
    int64_t text_offset; /* completions' logprobs: characters of text before the next token
                          * (of choice index; the caller keeps one per choice) */
    int64_t created;   /* unix seconds */
    const char *model; /* the served model's name */
    bool tools;        /* chat with tools: tool calls are read out of the text */
    struct moe_ipc_buf *held; /* streaming with tools: text not sent yet (a call, or what may
                               * begin one) */
};
void moe_ipc_gen_init(struct moe_ipc_gen *g, bool chat, bool include_usage, const char *model);
/* The same for a Responses API reply ("resp_..." ids) */
void moe_ipc_gen_init_response(struct moe_ipc_gen *g, const char *model);

/* The non-streaming reply (malloc'ed, ends with "\n"). text need not be
 * valid UTF-8: invalid bytes become U+FFFD. */
struct moe_ipc_choice {
    const char *text;
    size_t len;
    const struct moe_token_logprob *lp;
    size_t n_lp;
    const char *finish_reason;
};
char *moe_ipc_completion_json(struct moe_ipc_gen *g, const struct moe_ipc_choice *choices,
                              size_t n_choices, int32_t prompt_tokens,
                              int32_t completion_tokens, size_t *out_len);
/* SSE pieces, appended to b as "data: {...}\n\n". Return 0 or -ENOMEM. */
int moe_ipc_sse_role(struct moe_ipc_buf *b, struct moe_ipc_gen *g); /* chat only */
int moe_ipc_sse_text(struct moe_ipc_buf *b, struct moe_ipc_gen *g, const char *text,
                     size_t len, const struct moe_token_logprob *lp, size_t n_lp);
/* The closing chunk of choice g->index with its finish_reason; then, once
 * every choice closed, the usage chunk when asked for and "data: [DONE]"
 * (moe_ipc_sse_end). moe_ipc_sse_finish: both, for one choice. */
int moe_ipc_sse_close(struct moe_ipc_buf *b, struct moe_ipc_gen *g,
                      const char *finish_reason);
int moe_ipc_sse_end(struct moe_ipc_buf *b, struct moe_ipc_gen *g, int32_t prompt_tokens,
                    int32_t completion_tokens);
int moe_ipc_sse_finish(struct moe_ipc_buf *b, struct moe_ipc_gen *g,
                       const char *finish_reason, int32_t prompt_tokens,
                       int32_t completion_tokens);
/* An error in the middle of a stream (the status line went out already):
 * the error object as a data chunk, then "data: [DONE]". */
int moe_ipc_sse_error(struct moe_ipc_buf *b, struct moe_ipc_gen *g,
                      const struct moe_ipc_error *e); /* g: NULL or the stream's */

/* ---- the engine seam ----------------------------------------------------------
 * The server calls the engine only through this table, so its tests can
 * drive it with a scripted engine. Defaults: the real moe_engine_* and
 * moe_job_* functions. */
struct moe_ipc_engine_ops {
    int (*submit)(struct moe_engine *e, struct moe_request *req, struct moe_job **job);
    int (*next)(struct moe_job *job, struct moe_event *ev, int timeout_ms);
    void (*cancel)(struct moe_job *job);
    void (*release)(struct moe_job *job);
    void (*get_stats)(struct moe_engine *e, struct moe_engine_stats *st);
    int (*tokenize)(struct moe_engine *e, const char *text, size_t len, bool add_special,
                    int32_t **ids, size_t *n);
    int (*detokenize)(struct moe_engine *e, const int32_t *ids, size_t n, char **text,
                      size_t *len);
};
/* Before any request arrives (tests). NULL restores the real engine. */
void moe_ipc_set_engine_ops(struct moe_ipc *ipc, const struct moe_ipc_engine_ops *ops);

/* ---- the request head (ipc_head.c) ---------------------------------------- */
/* Checks a request head (request line and header fields, RFC 9112) in
 * buf[0, len): 0 with *head_len when it is complete and sound, -EAGAIN when
 * more bytes are needed, else the HTTP status to answer (400, 431, 501, 505)
 * with e filled. */
int moe_ipc_head_check(const char *buf, size_t len, size_t max_head, size_t *head_len,
                       struct moe_ipc_error *e);

/* ---- listening sockets (ipc_listen.c) ------------------------------------- */
struct ipc_listener {
    int fd;
    bool tcp;
    bool inherited;   /* socket activation: never closed or unlinked by us */
    char *bound_path; /* a Unix socket we bound: unlinked when we stop */
    dev_t dev;
    ino_t ino;
    char name[160];   /* for logs: "unix:/run/moed/moed.sock", "tcp:127.0.0.1:8080" */
};
int ipc_listeners_open(const struct moe_ipc_config *cfg, struct ipc_listener *ls, size_t *n);
void ipc_listener_unlink(struct ipc_listener *l);
void ipc_listener_close(struct ipc_listener *l);

/* ---- the gate: accept, peers, heads, deadlines (ipc_gate.c) --------------- */
struct ucred;
struct ipc_gate;
/* One accepted connection, from accept until MHD closes it. */
struct ipc_conn {
    int fd;
    bool tcp;
    char peer[48]; /* "uid 1000" / "tcp 10.0.0.7": what the per-peer limit counts */
    double t_accept;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    _Atomic double deadline; /* moe_now_s() past which the gate cuts it; 0 = none */
    const char *why;         /* what the deadline is for (a static string) */
    bool handed, started, closed, cut, dead, busy; /* under the gate's lock */
    struct ipc_conn *prev, *next;
};
typedef bool (*ipc_gate_handoff_fn)(void *arg, struct ipc_conn *c);
int ipc_gate_start(struct ipc_gate **out, struct ipc_listener *ls, size_t n_ls,
                   size_t max_handed, const struct moe_ipc_limits *lim,
                   ipc_gate_handoff_fn handoff, void *arg);
void ipc_gate_set_limits(struct ipc_gate *g, const struct moe_ipc_limits *lim);
void ipc_gate_quiesce(struct ipc_gate *g); /* no new connections; listeners closed */
void ipc_gate_stop(struct ipc_gate *g);    /* the thread ends; gated connections closed */
void ipc_gate_free(struct ipc_gate *g);    /* after MHD stopped */
struct ipc_conn *ipc_gate_started(struct ipc_gate *g, int fd);
void ipc_gate_closed(struct ipc_gate *g, struct ipc_conn *c);
/* The server works on the connection's request (busy) or waits for the
 * client again: max_connections_per_peer counts only the waiting ones. */
void ipc_gate_busy(struct ipc_gate *g, struct ipc_conn *c, bool busy);
void ipc_gate_counts(struct ipc_gate *g, size_t *gated, size_t *handed);
/* The connection is cut `seconds` from now unless set again (0 = never). */
void ipc_conn_deadline(struct ipc_conn *c, double seconds, const char *why);
/* a warning, at most a few per 10 s: peers must not control the journal's volume */
void ipc_gate_log(struct ipc_gate *g, const char *fmt, ...) MOE_PRINTF(2, 3);
bool ipc_peer_allowed(const struct moe_ipc_limits *lim, int fd, struct ucred *cr);

/* ---- metrics (ipc_metrics.c) ---------------------------------------------------
 * The server's Prometheus series (ipc/README.md lists them). ipc_server.c
 * reports events; these turn them into counters, histograms and gauges.
 * Updates never lock (the engine-counter refresh takes tok_lock). */
#define MOE_IPC_METRICS_ROUTES 16  /* routes with cached request counters */
#define MOE_IPC_METRICS_STATUSES 12 /* statuses cached per route; others register on the spot */
#define MOE_IPC_METRICS_FINISH 6    /* stop, length, cancelled, timeout, error, other */
#define MOE_IPC_METRICS_LABEL 256   /* the model_name label value, escaped */

struct moe_metric;
struct moe_ipc_proc_metrics { /* process_*: one set per process */
    struct moe_metric *cpu, *rss, *vsize, *fds, *max_fds, *start;
};
struct moe_ipc_metrics {
    const char *route_label[MOE_IPC_METRICS_ROUTES]; /* the endpoint label; static strings */
    size_t n_routes;
    char model_label[MOE_IPC_METRICS_LABEL]; /* the served name, escaped for a label */
    /* moed_* */
    _Atomic(struct moe_metric *) req[MOE_IPC_METRICS_ROUTES][MOE_IPC_METRICS_STATUSES];
    struct moe_metric *finish[MOE_IPC_METRICS_FINISH];
    struct moe_metric *prompt, *gen, *ttft, *tpot, *e2e;
    struct moe_metric *queue, *running, *conns, *streams, *build;
    struct moe_metric *kv_total, *kv_used, *kv_reserved, *kv_block_bytes, *kv_bpt, *kv_waits;
    struct moe_metric *prefix_hit_rate, *prefix_entries;
    struct moe_metric *grammar_masks, *grammar_mask_s;
    /* vllm:* */
    struct moe_metric *v_success[MOE_IPC_METRICS_FINISH];
    struct moe_metric *v_running, *v_waiting, *v_kv_usage, *v_kv_usage_old;
    struct moe_metric *v_prompt, *v_gen, *v_ttft, *v_tpot, *v_e2e;
    _Atomic(struct moe_metric *) v_cache_info; /* once an engine is seen */
    struct moe_ipc_proc_metrics proc;
    pthread_mutex_t tok_lock; /* engine counters -> ours at scrape time */
    struct moe_engine *tok_engine;
    uint64_t tok_prompt, tok_gen, tok_waits, tok_masks;
    double tok_mask_s;
    bool ready; /* init succeeded: free has a mutex to destroy */
};

/* Registers the series; model_name is the served name (the model_name label).
 * route_labels[i] names route i (kept, not copied);
 * the first n_primed routes get their status-200 counter at once, so the
 * common case is there from the first scrape. 0 or -ENOMEM / -EINVAL. */
int moe_ipc_metrics_init(struct moe_ipc_metrics *m, const char *model_name,
                         const char *const *route_labels,
                         size_t n_routes, size_t n_primed);
void moe_ipc_metrics_free(struct moe_ipc_metrics *m); /* also after a failed or no init (zeroed) */
/* A reply went out on route with status. */
void moe_ipc_metrics_request(struct moe_ipc_metrics *m, size_t route, int status);
/* A generation ended without DONE (reason "error", "cancelled"). */
void moe_ipc_metrics_finish(struct moe_ipc_metrics *m, const char *reason);
/* A generation's first text, seconds after its request arrived. */
void moe_ipc_metrics_first_text(struct moe_ipc_metrics *m, double seconds);
/* A generation's DONE: latency histograms and its finish reason. t0: its
 * arrival, t_first: its first text (0: none), both moe_now_s(). */
void moe_ipc_metrics_done(struct moe_ipc_metrics *m, double t0, double t_first,
                          const struct moe_event *ev);
/* At scrape time: the engine's figures (st; all zero and e NULL while no
 * engine is attached), the server's open connections and streams, and the
 * process_* series from /proc/self. */
void moe_ipc_metrics_refresh(struct moe_ipc_metrics *m, struct moe_engine *e,
                             const struct moe_engine_stats *st, int connections, int streams);

#endif
