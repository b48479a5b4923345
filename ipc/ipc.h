/* ipc: the HTTP/1.1 + JSON API on a Unix socket (libmicrohttpd + jansson).
 * OpenAI-compatible completions and chat (SSE streaming), /v1/models,
 * /health, /metrics, /admin/stats, /admin/reload. Knows nothing of models:
 * it turns requests into struct moe_request, hands them to the engine and
 * streams the engine's events back. */
#ifndef MOE_IPC_H
#define MOE_IPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "engine/engine.h"

struct moe_engine;
struct moe_ipc;
struct moe_jinja;

#define MOE_IPC_MAX_IDS 32

/* Limits that a reload may change. */
struct moe_ipc_limits {
    size_t max_body_bytes;        /* larger bodies: 413 */
    size_t max_prompt_bytes;      /* larger prompts / message totals: 400 */
    int32_t max_tokens_limit;     /* a request's max_tokens above this: 400 */
    double request_timeout_s;     /* default per-request time limit (0 = none) */
    struct moe_sampling defaults; /* sampling fields a request leaves out */
    int32_t default_max_tokens;
    uid_t allow_uids[MOE_IPC_MAX_IDS]; /* peers allowed (SO_PEERCRED); both lists */
    size_t n_allow_uids;               /* empty = anyone who can open the socket */
    gid_t allow_gids[MOE_IPC_MAX_IDS];
    size_t n_allow_gids;
    /* Connections (checked at accept, before a byte is read) */
    uint32_t max_conns_per_peer; /* open connections per uid (Unix) / address (TCP); 0 = none */
    double header_timeout_s;     /* the whole header block, from accept or the previous reply */
    double body_timeout_s;       /* the whole body, once the headers are in */
    double write_timeout_s;      /* a reply the client does not read for this long is cut */
    char api_key[256];           /* TCP requests need "Authorization: Bearer KEY"; "" = none */
    /* The model's own chat template (moe_ipc_set_chat_template; NULL: the
     * engine's built-in format renders chat): with it, chat requests are
     * rendered here and may hold tool calls and tool results. */
    const struct moe_jinja *chat_jinja;
    const char *chat_bos, *chat_eos; /* what its bos_token and eos_token stand for */
};

#define MOE_IPC_MAX_LISTEN 8

struct moe_ipc_config {
    const char *socket_path; /* the Unix socket when `listen` is empty */
    /* "unix:PATH, tcp:HOST:PORT, ...": what ipc binds; NULL or "" = unix:socket_path */
    const char *listen;
    int listen_fds[MOE_IPC_MAX_LISTEN]; /* socket activation: listening Unix / TCP sockets */
    size_t n_listen_fds;                /* > 0: serve these, bind nothing */
    mode_t socket_mode;      /* e.g. 0660, applied to Unix sockets ipc binds */
    gid_t socket_gid;        /* (gid_t)-1: leave the group */
    const char *model_name;  /* the id /v1/models lists */
    int threads;             /* unused: one thread per connection (streams block) */
    struct moe_ipc_limits limits;
};

int moe_ipc_start(const struct moe_ipc_config *cfg, struct moe_ipc **out);
/* Checks a `[daemon] listen` value without binding: 0, or -errno with msg. */
int moe_ipc_listen_check(const char *spec, const char *socket_path, char *msg, size_t cap);
/* NULL while the model loads: /health answers 503, generation 503. */
void moe_ipc_set_engine(struct moe_ipc *ipc, struct moe_engine *engine);
/* (its chat_* fields are ipc's own: moe_ipc_set_chat_template sets them) */
void moe_ipc_set_limits(struct moe_ipc *ipc, const struct moe_ipc_limits *limits);
/* The model's chat template, compiled, and the texts its bos_token and
 * eos_token stand for (all borrowed: they outlive the ipc's use of them, the
 * model's lifetime). NULL: chat is rendered by the engine's format. */
void moe_ipc_set_chat_template(struct moe_ipc *ipc, const struct moe_jinja *t, const char *bos,
                               const char *eos);
/* POST /admin/reload calls fn(arg); it returns 0 or -errno with msg filled. */
typedef int (*moe_ipc_reload_fn)(void *arg, char *msg, size_t cap);
void moe_ipc_set_reload_hook(struct moe_ipc *ipc, moe_ipc_reload_fn fn, void *arg);
/* Draining: stop accepting new connections; open ones are served. */
void moe_ipc_stop_accepting(struct moe_ipc *ipc);
/* Ends the server (after the engine drained); unlinks the socket it bound. */
void moe_ipc_stop(struct moe_ipc *ipc);

#endif
