/* engine_server: the one thread that owns a model. It drains a request
 * queue and runs continuous batching: every step decodes all running
 * sequences together (each expert read once for all tokens routed to it),
 * then fills the rest of the batch with prompt chunks of new sequences.
 *
 * ipc threads only submit requests and read events; they never touch model
 * state. A job (one request) is shared by both sides through references. */
#ifndef MOE_ENGINE_SERVER_H
#define MOE_ENGINE_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "kv/kv.h"
#include "router/router.h"

struct moe_model;
struct moe_pool;
struct moe_engine;
struct moe_job;

#define MOE_STOP_MAX 16       /* stop strings per request */
#define MOE_LOGIT_BIAS_MAX 300 /* logit_bias entries per request, as OpenAI */
#define MOE_STOP_MAX_LEN 256  /* bytes per stop string */

struct moe_engine_limits {
    int32_t max_seqs;          /* sequences decoding at once */
    int32_t max_batch_tokens;  /* tokens per step: decode tokens + prompt chunks */
    int32_t max_ctx;           /* context per sequence (prompt + generated) */
    int32_t max_queue;         /* requests waiting beyond max_seqs; more: -EAGAIN */
    int32_t max_tokens_default;/* when a request gives none */
    double request_timeout_s;  /* 0 = none; a request may ask for less */
    enum moe_chat_template chat_template; /* how chat messages become a prompt */
    /* the KV pool every sequence's cache comes from; key_bits 0 = exact
     * fp32 blocks of 64 tokens. Size: kv_bytes, else kv_tokens tokens of
     * cache, else max_seqs x max_ctx tokens. Not reloadable. */
    struct moe_kv_params kv;
    size_t kv_bytes;
    int64_t kv_tokens;
    /* automatic prefix caching: a finished sequence's cache is kept (up to
     * max_seqs of them, least recently used first out, and whenever an
     * admission needs the blocks); a prompt that starts with its tokens forks
     * it and prefills only the rest. For 16/32-bit caches (a KIVI cache's
     * newest tokens would come back quantised) and no window layers; a
     * hybrid's state is reused only where the new prompt extends all of it.
     * Not reloadable. */
    bool prefix_cache;
    /* online dynamic pruning (router/): the layers it may run on are those
     * with prune.beta > 0; requests that do not ask (moe_prune) use these
     * betas when prune_on, none otherwise. Reloadable: applies to
     * requests that start afterwards. */
    struct moe_prune prune;
    bool prune_on;
};

enum moe_req_kind { MOE_REQ_COMPLETION, MOE_REQ_CHAT };

struct moe_chat_message {
    char *role;    /* "system", "user", "assistant" */
    char *content;
    /* an assistant message's reasoning_content, NULL when not given; the
     * templates that know it (Qwen3, GLM-4.5, MiniMax-M2) render it in place
     * of a <think> part of the content, the others ignore it as theirs do */
    char *reasoning_content;
};

/* Built by ipc (all strings malloc'ed); owned by the engine once submitted. */
struct moe_request {
    enum moe_req_kind kind;
    char *prompt;                       /* MOE_REQ_COMPLETION: text, or */
    int32_t *prompt_ids;                /* its tokens as given (no BOS added) */
    size_t n_prompt_ids;
    struct moe_chat_message *messages;  /* MOE_REQ_CHAT */
    size_t n_messages;
    int32_t max_tokens;                 /* 0 = the engine's default */
    struct moe_sampling sampling;
    char *stop[MOE_STOP_MAX];
    size_t n_stop;
    bool stream;
    bool ignore_eos;
    double timeout_s;                   /* 0 = the engine's limit */
    bool moe_prune_set;                 /* false: the engine's ODP setting */
    float moe_prune;                    /* when set: the ODP beta on the engine's ODP
                                         * layers, 0 = off */
    int32_t moe_top_k;                  /* experts per token, 0 = the model's; above the
                                         * model's top_k: refused with 400 */
    bool echo;                          /* completions: the prompt's text first (and with
                                         * logprobs, the prompt tokens' too) */
    bool prompt_only;                   /* echo with max_tokens 0: score, generate nothing */
    uint64_t share_group;               /* n > 1: the choices of one request share one
                                         * number (0: none); the others fork the first's
                                         * prompt KV rather than prefilling it again */
    bool logprobs;                      /* each generated token's log probability, from
                                         * the model's distribution (before logit_bias,
                                         * penalties and temperature) ... */
    int32_t top_logprobs;               /* ... and this many alternatives (0..20) */
    int32_t *bias_id;                   /* logit_bias: added to these tokens' logits */
    float *bias;
    size_t n_bias;
    bool prompt_raw;                    /* prompt is a rendered chat template: tokenized as
                                         * it is (its BOS is in the text), none added */
    char *suffix;                       /* completions: the text after the completion (fill
                                         * in the middle; the model's FIM tokens) or NULL */
    struct moe_grammar *grammar;        /* structured output: the text generated must be a
                                         * sentence of it (a reference; NULL: free text) */
    char *grammar_trigger;              /* ... from where the text first holds this (a tool
                                         * call's opening tag); NULL: from the start */
};
void moe_request_free(struct moe_request *r); /* frees the strings and r itself */
/* A deep copy (n > 1 choices: one request each), or NULL out of memory. */
struct moe_request *moe_request_clone(const struct moe_request *r);

enum moe_event_kind {
    MOE_EV_TEXT,  /* generated text (whole UTF-8 characters, stop strings removed) */
    MOE_EV_DONE,  /* finished: finish_reason and usage set */
    MOE_EV_ERROR, /* failed: status (HTTP-like) and message set */
};

struct moe_event {
    enum moe_event_kind kind;
    const char *text;          /* MOE_EV_TEXT: valid until the next moe_job_next */
    size_t len;
    const struct moe_token_logprob *lp; /* MOE_EV_TEXT: the tokens generated since the last
                                         * event (logprobs asked), valid as text is */
    size_t n_lp;
    const char *finish_reason; /* "stop", "length", "cancelled", "timeout" */
    int32_t prompt_tokens, completion_tokens;
    int status;                /* MOE_EV_ERROR: 400, 413, 500, 503 ... */
    const char *code;          /* MOE_EV_ERROR: OpenAI's error code, or NULL
                                * ("context_length_exceeded") */
    char message[256];
};

/* Starts the engine thread over an opened model. pool is used by that
 * thread only. */
int moe_engine_create(const struct moe_model *model, struct moe_pool *pool,
                      const struct moe_engine_limits *limits, struct moe_engine **out);
/* Applies new limits between steps (reload); sizes that need reallocation
 * (max_ctx, max_seqs) are not reloadable and return -EINVAL with a message. */
int moe_engine_set_limits(struct moe_engine *e, const struct moe_engine_limits *limits);
/* Stops accepting (submit -> -ESHUTDOWN), lets running and queued jobs finish
 * for at most drain_timeout_s, cancels the rest (finish_reason "cancelled"),
 * joins the thread. */
void moe_engine_drain(struct moe_engine *e, double drain_timeout_s);
void moe_engine_free(struct moe_engine *e); /* drains with timeout 0 first */

/* Queues a request. On success the engine owns req and *job holds the
 * caller's reference. Errors (req still the caller's): -EAGAIN queue full,
 * -ESHUTDOWN draining, -EINVAL no prompt or messages at all. What needs the
 * tokenizer (a prompt longer than the context, a chat the template refuses)
 * comes later as an MOE_EV_ERROR event with status 400. */
int moe_engine_submit(struct moe_engine *e, struct moe_request *req, struct moe_job **job);

/* The model's tokenizer for /tokenize and /detokenize, from any thread: text
 * as a prompt is tokenized (add_special: BOS/EOS as the tokenizer's config
 * says) into *ids (malloc'ed), and ids back into text (*text malloc'ed,
 * NUL-terminated; an id outside the vocabulary is -EINVAL with a message).
 * -ENOENT: the model has no tokenizer. */
int moe_engine_tokenize(struct moe_engine *e, const char *text, size_t len, bool add_special,
                        int32_t **ids, size_t *n);
int moe_engine_detokenize(struct moe_engine *e, const int32_t *ids, size_t n, char **text,
                          size_t *len);

/* Waits for the job's next event, up to timeout_ms (-1 = forever).
 * 0 with *ev filled, or -ETIMEDOUT. After MOE_EV_DONE / MOE_EV_ERROR no more
 * events come. */
int moe_job_next(struct moe_job *job, struct moe_event *ev, int timeout_ms);
/* The client went away: the sequence is cancelled at the next step. */
void moe_job_cancel(struct moe_job *job);
void moe_job_release(struct moe_job *job);

struct moe_engine_stats {
    int32_t queue_depth;       /* waiting requests */
    int32_t running;           /* sequences being prefilled or decoded */
    uint64_t steps;
    uint64_t prompt_tokens, generated_tokens;
    uint64_t requests_done, requests_cancelled, requests_failed;
    /* the KV pool: blocks (of kv_block_tokens tokens of one layer) in all,
     * taken, and promised to admitted sequences; bytes per token of one
     * sequence at 4096 tokens (scales, minimums, fp window included) */
    int64_t kv_blocks_total, kv_blocks_used, kv_blocks_reserved;
    size_t kv_block_bytes;
    int32_t kv_block_tokens;
    double kv_bytes_per_token;
    uint64_t kv_waits; /* admissions deferred because the pool was full */
    uint64_t prompt_tokens_shared; /* prompt tokens of n > 1 choices not prefilled again */
    uint64_t prompt_tokens_cached; /* prompt tokens found in the prefix cache */
    int32_t prefix_entries;        /* finished sequences' caches kept */
    uint64_t grammar_masks;        /* structured output: token masks made ... */
    double grammar_mask_s;         /* ... and the seconds they took */
};
void moe_engine_get_stats(struct moe_engine *e, struct moe_engine_stats *st);
/* Seconds since the engine thread last showed life: it beats at every step
 * and at least every MOE_ENGINE_BEAT_S while idle, so an age well past that
 * means a step is stuck (the daemon's watchdog stops petting systemd).
 * MOED_TEST_ENGINE_STALL=SECONDS (a test hook) makes the thread sleep that
 * long in its first step with work, as a hung kernel would. */
#define MOE_ENGINE_BEAT_S 1.0
double moe_engine_heartbeat_age(struct moe_engine *e);

#endif
