/* ipc private: the request parser (pure, fuzzed), error replies, response
 * and SSE chunk builders, and the engine seam the server calls through. */
#ifndef MOE_IPC_INT_H
#define MOE_IPC_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
 *   - n must be 1, logprobs/top_logprobs/echo/best_of/suffix/logit_bias/
 *     tools/functions/response_format must be absent or neutral: 400
 *     "unsupported_parameter" otherwise. Unknown fields are ignored.
 */
struct moe_ipc_parsed {
    struct moe_request *req; /* owned; NULL once handed to the engine */
    bool include_usage;      /* stream_options.include_usage */
    bool seed_set;           /* the body gave a seed (even -1) */
};

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
    int64_t created;   /* unix seconds */
    const char *model; /* the served model's name */
};
void moe_ipc_gen_init(struct moe_ipc_gen *g, bool chat, bool include_usage, const char *model);

/* The non-streaming reply (malloc'ed, ends with "\n"). text need not be
 * valid UTF-8: invalid bytes become U+FFFD. */
char *moe_ipc_completion_json(const struct moe_ipc_gen *g, const char *text, size_t len,
                              const char *finish_reason, int32_t prompt_tokens,
                              int32_t completion_tokens, size_t *out_len);
/* SSE pieces, appended to b as "data: {...}\n\n". Return 0 or -ENOMEM. */
int moe_ipc_sse_role(struct moe_ipc_buf *b, const struct moe_ipc_gen *g); /* chat only */
int moe_ipc_sse_text(struct moe_ipc_buf *b, const struct moe_ipc_gen *g, const char *text,
                     size_t len);
/* The closing chunk with finish_reason, the usage chunk when asked for, and
 * "data: [DONE]". */
int moe_ipc_sse_finish(struct moe_ipc_buf *b, const struct moe_ipc_gen *g,
                       const char *finish_reason, int32_t prompt_tokens,
                       int32_t completion_tokens);
/* An error in the middle of a stream (the status line went out already):
 * the error object as a data chunk, then "data: [DONE]". */
int moe_ipc_sse_error(struct moe_ipc_buf *b, const struct moe_ipc_error *e);

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
};
/* Before any request arrives (tests). NULL restores the real engine. */
void moe_ipc_set_engine_ops(struct moe_ipc *ipc, const struct moe_ipc_engine_ops *ops);

#endif
