/* libFuzzer target: arbitrary bytes as the body of /v1/completions and of
 * /v1/chat/completions. The parser must answer with a request that keeps
 * every promise the engine relies on (limits, ranges, stop strings, roles)
 * or with a 400 whose message and JSON error body are well formed. The
 * bytes also go through the UTF-8 sanitizer the replies use. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ipc/ipc_int.h"

static void check_error(const struct moe_ipc_error *e)
{
    if ((e->status != 400 && e->status != 500) || !e->message[0] || !e->code || !e->type)
        abort();
    size_t n;
    char *s = moe_ipc_error_json(e, &n);
    if (!s)
        return; /* out of memory */
    json_error_t je;
    json_t *j = json_loadb(s, n, 0, &je);
    if (!j || !json_is_string(json_object_get(json_object_get(j, "error"), "message")))
        abort();
    json_decref(j);
    free(s);
}

static void check_request(const struct moe_ipc_parsed *p, bool chat,
                          const struct moe_ipc_limits *lim)
{
    const struct moe_request *r = p->req;
    if (!r || r->kind != (chat ? MOE_REQ_CHAT : MOE_REQ_COMPLETION))
        abort();
    size_t total = 0;
    if (chat) {
        if (r->prompt || r->n_messages == 0 || !r->messages)
            abort();
        for (size_t i = 0; i < r->n_messages; i++) {
            const char *role = r->messages[i].role;
            if (!role || !r->messages[i].content ||
                (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant")))
                abort();
            total += strlen(r->messages[i].content);
        }
    } else {
        if (!r->prompt || r->messages)
            abort();
        total = strlen(r->prompt);
    }
    if (total > lim->max_prompt_bytes)
        abort();
    if (r->max_tokens < 1 || r->max_tokens > lim->max_tokens_limit)
        abort();
    if (r->n_stop > MOE_STOP_MAX)
        abort();
    for (size_t i = 0; i < r->n_stop; i++) {
        size_t n = strlen(r->stop[i]);
        if (n == 0 || n > MOE_STOP_MAX_LEN)
            abort();
    }
    const struct moe_sampling *s = &r->sampling;
    if (!(s->temperature >= 0 && s->temperature <= 2) || !(s->top_p > 0 && s->top_p <= 1) ||
        s->top_k < 0 || !(s->min_p >= 0 && s->min_p <= 1) ||
        !(s->repetition_penalty > 0 && s->repetition_penalty <= 10) ||
        !(s->presence_penalty >= -2 && s->presence_penalty <= 2) ||
        !(s->frequency_penalty >= -2 && s->frequency_penalty <= 2))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct moe_ipc_limits lim = {
        .max_body_bytes = 1 << 20,
        .max_prompt_bytes = 2048,
        .max_tokens_limit = 512,
        .request_timeout_s = 10,
        .default_max_tokens = 16,
        .defaults = {.temperature = 1, .top_p = 1, .repetition_penalty = 1, .seed = 7},
    };
    for (int chat = 0; chat < 2; chat++) {
        struct moe_ipc_parsed p;
        struct moe_ipc_error e;
        memset(&e, 0, sizeof(e));
        if (moe_ipc_parse_completion((const char *)data, size, chat, &lim, &p, &e) == 0) {
            check_request(&p, chat, &lim);
            moe_ipc_parsed_free(&p);
            if (p.req)
                abort();
        } else {
            if (p.req)
                abort();
            check_error(&e);
        }
    }
    /* the reply side: any bytes become a valid JSON string */
    json_t *t = moe_ipc_json_text((const char *)data, size);
    if (t) {
        char *s = json_dumps(t, JSON_ENCODE_ANY);
        if (!s)
            abort();
        free(s);
        json_decref(t);
    }
    return 0;
}
