/* Replies in OpenAI's shape: the whole completion at once, or SSE chunks
 * ("data: {json}\n\n" ... "data: [DONE]\n\n") as the engine's events come. */
#include "ipc/ipc_int.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* ---- buffer -------------------------------------------------------------- */

int moe_ipc_buf_append(struct moe_ipc_buf *b, const void *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            return -ENOMEM;
        b->data = d;
        b->cap = cap;
    }
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

void moe_ipc_buf_reset(struct moe_ipc_buf *b)
{
    b->len = b->off = 0;
    if (b->data)
        b->data[0] = '\0';
}

void moe_ipc_buf_free(struct moe_ipc_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* ---- ids ----------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t id_base;
static pthread_once_t id_once = PTHREAD_ONCE_INIT;
static atomic_uint_fast64_t id_counter;

static void id_init(void)
{
    if (getrandom(&id_base, sizeof(id_base), GRND_NONBLOCK) != sizeof(id_base))
        id_base = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
}

void moe_ipc_gen_init(struct moe_ipc_gen *g, bool chat, bool include_usage, const char *model)
{
    pthread_once(&id_once, id_init);
    uint64_t n = atomic_fetch_add(&id_counter, 1);
    memset(g, 0, sizeof(*g));
    /* unique within the process (counter), unguessable across restarts */
    snprintf(g->id, sizeof(g->id), "%s%016" PRIx64 "%08" PRIx64, chat ? "chatcmpl-" : "cmpl-",
             splitmix64(id_base ^ n), n & 0xffffffffu);
    g->chat = chat;
    g->include_usage = include_usage;
    g->created = (int64_t)time(NULL);
    g->model = model ? model : "default";
}

void moe_ipc_gen_init_response(struct moe_ipc_gen *g, const char *model)
{
    moe_ipc_gen_init(g, true, false, model);
    char id[sizeof(g->id)];
    snprintf(id, sizeof(id), "resp_%s", g->id + strlen("chatcmpl-"));
    memcpy(g->id, id, sizeof(id));
    g->responses = true;
}

/* ---- JSON pieces --------------------------------------------------------- */

/* {"id", "object", "created", "model"} shared by every reply of a generation */
static json_t *head(const struct moe_ipc_gen *g, const char *object)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    if (json_object_set_new(o, "id", json_string(g->id)) ||
        json_object_set_new(o, "object", json_string(object)) ||
        json_object_set_new(o, "created", json_integer(g->created)) ||
        json_object_set_new(o, "model", moe_ipc_json_text(g->model, strlen(g->model)))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *usage(int32_t prompt_tokens, int32_t completion_tokens)
{
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", (int)prompt_tokens,
                     "completion_tokens", (int)completion_tokens, "total_tokens",
                     (int)(prompt_tokens + completion_tokens));
}

static json_t *reason(const char *finish_reason)
{
    return finish_reason ? json_string(finish_reason) : json_null();
}

/* choices: [choice] on o; takes the reference to choice */
static int set_choice(json_t *o, json_t *choice)
{
    json_t *arr = json_array();
    if (!arr || !choice || json_array_append_new(arr, choice)) {
        json_decref(arr);
        if (!arr)
            json_decref(choice);
        return -ENOMEM;
    }
    return json_object_set_new(o, "choices", arr) ? -ENOMEM : 0;
}

/* ---- logprobs ------------------------------------------------------------- */

static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xc0) != 0x80;
    return c;
}

/* chat's {"token", "logprob", "bytes"} */
static json_t *token_obj(const struct moe_token_text *t)
{
    json_t *bytes = json_array();
    for (size_t i = 0; bytes && i < t->len; i++)
        json_array_append_new(bytes, json_integer((unsigned char)t->bytes[i]));
    return json_pack("{s:o, s:f, s:o}", "token", moe_ipc_json_text(t->bytes, t->len), "logprob",
                     (double)t->logprob, "bytes", bytes ? bytes : json_null());
}

/* The completions API's top_logprobs entry: {text: logprob}, the first
 * (likeliest) of two alternatives with the same text winning. */
static json_t *top_map(const struct moe_token_logprob *lp)
{
    json_t *top = json_object();
    for (int32_t k = 0; top && k < lp->n_top; k++) {
        json_t *key = moe_ipc_json_text(lp->top[k].bytes, lp->top[k].len);
        if (key && !json_object_get(top, json_string_value(key)))
            json_object_set_new(top, json_string_value(key), json_real(lp->top[k].logprob));
        json_decref(key);
    }
    return top;
}

/* The "logprobs" of a choice: chat's {"content": [...], "refusal": null},
 * or the completions API's {"tokens", "token_logprobs", "top_logprobs",
 * "text_offset"} (offsets in characters of the generated text); null when
 * the request did not ask. */
static json_t *logprobs_obj(struct moe_ipc_gen *g, const struct moe_token_logprob *lp, size_t n)
{
    if (!g->logprobs)
        return json_null();
    if (g->chat) {
        json_t *content = json_array();
        for (size_t i = 0; content && i < n; i++) {
            json_t *t = token_obj(&lp[i].tok), *top = json_array();
            for (int32_t k = 0; top && k < lp[i].n_top; k++)
                json_array_append_new(top, token_obj(&lp[i].top[k]));
            if (t && top)
                json_object_set_new(t, "top_logprobs", top);
            else
                json_decref(top);
            json_array_append_new(content, t);
        }
        return json_pack("{s:o, s:n}", "content", content ? content : json_array(), "refusal");
    }
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    for (size_t i = 0; tokens && lps && tops && offs && i < n; i++) {
        const struct moe_token_text *t = &lp[i].tok;
        json_array_append_new(tokens, moe_ipc_json_text(t->bytes, t->len));
        bool none = isnan(t->logprob); /* an echoed prompt's first token: nothing before it */
        json_array_append_new(lps, none ? json_null() : json_real(t->logprob));
        json_array_append_new(tops, none ? json_null() : top_map(&lp[i]));
        json_array_append_new(offs, json_integer(g->text_offset));
        g->text_offset += (int64_t)utf8_chars(t->bytes, t->len);
    }
    return json_pack("{s:o, s:o, s:o, s:o}", "tokens", tokens ? tokens : json_array(),
                     "token_logprobs", lps ? lps : json_array(), "top_logprobs",
                     tops ? tops : json_array(), "text_offset", offs ? offs : json_array());
}

static char *dump(json_t *o, size_t *len)
{
    char *s = json_dumps(o, JSON_COMPACT);
    if (s && len)
        *len = strlen(s);
    return s;
}

/* ---- the Responses API's objects ------------------------------------------ */

/* tool call ids: call_<the reply's id, less its prefix (cmpl-, chatcmpl-, resp_)>_<i> */
static const char *call_base(const struct moe_ipc_gen *g)
{
    const char *d = strpbrk(g->id, "-_");
    return d ? d + 1 : g->id;
}


/* "msg_" + the response's id: the reply's one message item */
static void item_id(const struct moe_ipc_gen *g, char *id, size_t cap)
{
    snprintf(id, cap, "msg_%s", g->id + strlen("resp_"));
}

static json_t *response_item(const struct moe_ipc_gen *g, const char *status, const char *text,
                             size_t len)
{
    char id[80];
    item_id(g, id, sizeof(id));
    json_t *content = json_array();
    if (content && text)
        json_array_append_new(content, json_pack("{s:s, s:o, s:[]}", "type", "output_text",
                                                 "text", moe_ipc_json_text(text, len),
                                                 "annotations"));
    return json_pack("{s:s, s:s, s:s, s:s, s:o}", "type", "message", "id", id, "status", status,
                     "role", "assistant", "content", content ? content : json_array());
}

/* A tool call (moe_ipc_tool_calls' shape) as the Responses API's
 * function_call item; arguments NULL: the call's own */
static json_t *function_item(const json_t *call, const char *status, const char *arguments)
{
    const json_t *fn = json_object_get(call, "function");
    const char *call_id = json_string_value(json_object_get(call, "id"));
    char id[120];
    snprintf(id, sizeof(id), "fc_%s", call_id ? call_id + strlen("call_") : "");
    return json_pack("{s:s, s:s, s:s, s:O, s:s, s:s}", "type", "function_call", "id", id,
                     "call_id", call_id ? call_id : "", "name", json_object_get(fn, "name"),
                     "arguments", arguments ? arguments
                                            : json_string_value(json_object_get(fn, "arguments")),
                     "status", status);
}

/* the response object: "in_progress" (finish NULL: no output yet),
 * "completed", or "incomplete" (the token limit: finish_reason "length").
 * With tools, calls in the text become function_call items after the
 * message (which a stream has announced, so it stays even when empty). */
static json_t *response_obj(const struct moe_ipc_gen *g, const char *finish, const char *text,
                            size_t len, int32_t in_tokens, int32_t out_tokens)
{
    bool limit = finish && !strcmp(finish, "length");
    const char *status = !finish ? "in_progress" : limit ? "incomplete" : "completed";
    json_t *output = json_array();
    size_t n_content = len;
    json_t *calls = finish && g->tools ? moe_ipc_tool_calls(text, len, call_base(g), &n_content)
                                       : NULL;
    if (output && finish && (!calls || n_content || g->held))
        json_array_append_new(output, response_item(g, "completed", text, n_content));
    size_t i;
    json_t *c;
    json_array_foreach(calls, i, c)
        json_array_append_new(output, function_item(c, "completed", NULL));
    json_decref(calls);
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:o, s:o, s:n, s:o, s:b, s:s, s:[]}", "id",
                          g->id, "object", "response", "created_at", (json_int_t)g->created,
                          "status", status, "model",
                          moe_ipc_json_text(g->model, strlen(g->model)), "output",
                          output ? output : json_array(), "error", "incomplete_details",
                          limit ? json_pack("{s:s}", "reason", "max_output_tokens")
                                : json_null(),
                          "parallel_tool_calls", 0, "tool_choice", g->tools ? "auto" : "none",
                          "tools");
    if (o && finish)
        json_object_set_new(o, "usage", json_pack("{s:i, s:i, s:i}", "input_tokens",
                                                  (int)in_tokens, "output_tokens",
                                                  (int)out_tokens, "total_tokens",
                                                  (int)(in_tokens + out_tokens)));
    return o;
}

/* "event: TYPE\ndata: {...}\n\n" with the next sequence_number; takes o */
static int response_event(struct moe_ipc_buf *b, struct moe_ipc_gen *g, const char *type,
                          json_t *o)
{
    char *s = NULL;
    if (o && !json_object_set_new(o, "type", json_string(type)) &&
        !json_object_set_new(o, "sequence_number", json_integer(g->sequence++)))
        s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    int rc = -ENOMEM;
    if (s && !moe_ipc_buf_append(b, "event: ", 7) &&
        !moe_ipc_buf_append(b, type, strlen(type)) && !moe_ipc_buf_append(b, "\ndata: ", 7) &&
        !moe_ipc_buf_append(b, s, strlen(s)) && !moe_ipc_buf_append(b, "\n\n", 2))
        rc = 0;
    free(s);
    return rc;
}

/* where an event about the message's text points */
static json_t *part_ref(const struct moe_ipc_gen *g)
{
    char id[80];
    item_id(g, id, sizeof(id));
    return json_pack("{s:s, s:i, s:i}", "item_id", id, "output_index", 0, "content_index", 0);
}

static json_t *text_part(const char *text, size_t len)
{
    return json_pack("{s:s, s:o, s:[]}", "type", "output_text", "text",
                     moe_ipc_json_text(text, len), "annotations");
}

/* created, in_progress, the message item and its text part added */
static int response_open(struct moe_ipc_buf *b, struct moe_ipc_gen *g)
{
    json_t *part = part_ref(g);
    if (part)
        json_object_set_new(part, "part", text_part("", 0));
    if (response_event(b, g, "response.created",
                       json_pack("{s:o}", "response", response_obj(g, NULL, NULL, 0, 0, 0))) ||
        response_event(b, g, "response.in_progress",
                       json_pack("{s:o}", "response", response_obj(g, NULL, NULL, 0, 0, 0))) ||
        response_event(b, g, "response.output_item.added",
                       json_pack("{s:i, s:o}", "output_index", 0, "item",
                                 response_item(g, "in_progress", NULL, 0))) ||
        response_event(b, g, "response.content_part.added", part))
        return -ENOMEM;
    return 0;
}

/* the text, part and item done (each repeating the whole text), then the
 * response completed or incomplete, with the usage */
static int response_close(struct moe_ipc_buf *b, struct moe_ipc_gen *g, const char *finish,
                          int32_t in_tokens, int32_t out_tokens)
{
    const char *text = g->full && g->full->data ? g->full->data : "";
    size_t len = g->full ? g->full->len : 0, n_content = len;
    json_t *calls = g->tools ? moe_ipc_tool_calls(text, len, call_base(g), &n_content) : NULL;
    if (!calls && g->held && g->held->len) { /* held text that was no call after all */
        json_t *o = part_ref(g);
        if (o)
            json_object_set_new(o, "delta", moe_ipc_json_text(g->held->data, g->held->len));
        if (response_event(b, g, "response.output_text.delta", o))
            return -ENOMEM;
    }
    if (g->held)
        g->held->len = 0;
    json_t *done = part_ref(g), *part = part_ref(g);
    if (done)
        json_object_set_new(done, "text", moe_ipc_json_text(text, n_content));
    if (part)
        json_object_set_new(part, "part", text_part(text, n_content));
    bool limit = !strcmp(finish, "length");
    int rc = response_event(b, g, "response.output_text.done", done) ||
             response_event(b, g, "response.content_part.done", part) ||
             response_event(b, g, "response.output_item.done",
                            json_pack("{s:i, s:o}", "output_index", 0, "item",
                                      response_item(g, "completed", text, n_content)));
    size_t i;
    json_t *c;
    json_array_foreach(calls, i, c) { /* each call: added, its arguments whole, done */
        const char *args = json_string_value(json_object_get(json_object_get(c, "function"),
                                                             "arguments"));
        json_t *d = function_item(c, "in_progress", "");
        json_t *ref = json_pack("{s:O, s:i}", "item_id", json_object_get(d, "id"),
                                "output_index", (int)i + 1);
        json_t *delta = json_deep_copy(ref), *argd = json_deep_copy(ref);
        json_object_set_new(delta, "delta", json_string(args));
        json_object_set_new(argd, "arguments", json_string(args));
        rc = rc || response_event(b, g, "response.output_item.added",
                                  json_pack("{s:i, s:o}", "output_index", (int)i + 1, "item", d)) ||
             response_event(b, g, "response.function_call_arguments.delta", delta) ||
             response_event(b, g, "response.function_call_arguments.done", argd) ||
             response_event(b, g, "response.output_item.done",
                            json_pack("{s:i, s:o}", "output_index", (int)i + 1, "item",
                                      function_item(c, "completed", NULL)));
        json_decref(ref);
    }
    json_decref(calls);
    if (rc ||
        response_event(b, g, limit ? "response.incomplete" : "response.completed",
                       json_pack("{s:o}", "response",
                                 response_obj(g, finish, text, len, in_tokens, out_tokens))))
        return -ENOMEM;
    return 0;
}

char *moe_ipc_completion_json(struct moe_ipc_gen *g, const struct moe_ipc_choice *choices,
                              size_t n_choices, int32_t prompt_tokens,
                              int32_t completion_tokens, size_t *out_len)
{
    if (g->responses) {
        json_t *o = response_obj(g, choices[0].finish_reason ? choices[0].finish_reason : "stop",
                                 choices[0].text, choices[0].len, prompt_tokens,
                                 completion_tokens);
        char *s = o ? dump(o, out_len) : NULL;
        json_decref(o);
        char *t = s ? realloc(s, *out_len + 2) : NULL;
        if (!t) {
            free(s);
            return NULL;
        }
        t[(*out_len)++] = '\n';
        t[*out_len] = '\0';
        return t;
    }
    json_t *o = head(g, g->chat ? "chat.completion" : "text_completion");
    json_t *arr = json_array();
    char *s = NULL;
    if (!o || !arr) {
        json_decref(arr);
        json_decref(o);
        return NULL;
    }
    for (size_t i = 0; i < n_choices; i++) {
        const struct moe_ipc_choice *c = &choices[i];
        json_t *choice;
        g->text_offset = 0;
        if (g->chat) {
            size_t n_content = c->len;
            json_t *calls = g->tools ? moe_ipc_tool_calls(c->text, c->len, call_base(g),
                                                          &n_content)
                                     : NULL;
            json_t *msg = json_pack("{s:s, s:o}", "role", "assistant", "content",
                                    calls && !n_content ? json_null()
                                                        : moe_ipc_json_text(c->text, n_content));
            const char *fr = c->finish_reason;
            if (calls) {
                json_object_set_new(msg, "tool_calls", calls);
                fr = !fr || !strcmp(fr, "stop") ? "tool_calls" : fr;
            }
            choice = json_pack("{s:i, s:o, s:o, s:o}", "index", (int)i, "message", msg,
                               "logprobs", logprobs_obj(g, c->lp, c->n_lp), "finish_reason",
                               reason(fr));
        } else {
            choice = json_pack("{s:i, s:o, s:o, s:o}", "index", (int)i, "text",
                               moe_ipc_json_text(c->text, c->len), "logprobs",
                               logprobs_obj(g, c->lp, c->n_lp), "finish_reason",
                               reason(c->finish_reason));
        }
        if (!choice || json_array_append_new(arr, choice)) {
            json_decref(arr);
            goto out;
        }
    }
    if (json_object_set_new(o, "choices", arr) ||
        json_object_set_new(o, "usage", usage(prompt_tokens, completion_tokens)))
        goto out;
    s = dump(o, out_len);
    if (s) {
        char *t = realloc(s, *out_len + 2);
        if (!t) {
            free(s);
            s = NULL;
            goto out;
        }
        s = t;
        s[(*out_len)++] = '\n';
        s[*out_len] = '\0';
    }
out:
    json_decref(o);
    return s;
}

static int sse_append(struct moe_ipc_buf *b, json_t *o)
{
    size_t n;
    char *s = o ? dump(o, &n) : NULL;
    int rc = -ENOMEM;
    json_decref(o);
    if (s && !moe_ipc_buf_append(b, "data: ", 6) && !moe_ipc_buf_append(b, s, n) &&
        !moe_ipc_buf_append(b, "\n\n", 2))
        rc = 0;
    free(s);
    return rc;
}

/* One chunk: completions carry "text", chat a "delta". delta_or_text is
 * taken (its reference). With include_usage, OpenAI puts "usage": null on
 * every chunk but the last. */
static json_t *chunk(const struct moe_ipc_gen *g, json_t *delta_or_text, json_t *logprobs,
                     const char *finish)
{
    json_t *o = head(g, g->chat ? "chat.completion.chunk" : "text_completion");
    json_t *choice;
    if (!logprobs)
        logprobs = json_null();
    if (!o) {
        json_decref(delta_or_text);
        json_decref(logprobs);
        return NULL;
    }
    choice = json_pack("{s:i, s:o, s:o, s:o}", "index", g->index, g->chat ? "delta" : "text",
                       delta_or_text, "logprobs", logprobs, "finish_reason", reason(finish));
    if (set_choice(o, choice) ||
        (g->include_usage && json_object_set_new(o, "usage", json_null()))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int moe_ipc_sse_role(struct moe_ipc_buf *b, struct moe_ipc_gen *g)
{
    if (g->responses)
        return response_open(b, g);
    return sse_append(b, chunk(g, json_pack("{s:s, s:s}", "role", "assistant", "content", ""),
                               NULL, NULL));
}

/* With tools (streaming), text joins what is held, and *out / *n_out is
 * what may go out now (drop_held after sending it): a call, its start, or the
 * blanks before one stay held. Without, the text itself. */
static int releasable(struct moe_ipc_gen *g, const char *text, size_t len, const char **out,
                      size_t *n_out)
{
    if (!g->tools || !g->held) {
        *out = text, *n_out = len;
        return 0;
    }
    if (moe_ipc_buf_append(g->held, text, len))
        return -ENOMEM;
    *out = g->held->data;
    *n_out = moe_ipc_tool_hold(g->held->data, g->held->len);
    return 0;
}

static void drop_held(struct moe_ipc_gen *g, size_t n)
{
    if (g->tools && g->held) {
        memmove(g->held->data, g->held->data + n, g->held->len - n);
        g->held->len -= n;
    }
}

int moe_ipc_sse_text(struct moe_ipc_buf *b, struct moe_ipc_gen *g, const char *text,
                     size_t len, const struct moe_token_logprob *lp, size_t n_lp)
{
    if (g->responses && g->full && moe_ipc_buf_append(g->full, text, len))
        return -ENOMEM;
    const char *out;
    size_t n;
    if (releasable(g, text, len, &out, &n))
        return -ENOMEM;
    int rc = 0;
    if (g->responses) {
        if (n) {
            json_t *o = part_ref(g);
            if (o)
                json_object_set_new(o, "delta", moe_ipc_json_text(out, n));
            rc = response_event(b, g, "response.output_text.delta", o);
        }
    } else if (n || lp || !g->tools || !g->held) { /* held back: nothing to say yet */
        json_t *t = moe_ipc_json_text(out, n);
        if (g->chat)
            t = json_pack("{s:o}", "content", t);
        rc = sse_append(b, chunk(g, t, g->logprobs ? logprobs_obj(g, lp, n_lp) : NULL, NULL));
    }
    drop_held(g, n);
    return rc;
}

/* streaming with tools, at the end: the held text as tool_calls when it is
 * calls (finish_reason then "tool_calls"), else as content */
static int release_held(struct moe_ipc_buf *b, struct moe_ipc_gen *g, const char **finish)
{
    struct moe_ipc_buf *h = g->held;
    if (!g->chat || !g->tools || !h || !h->len)
        return 0;
    size_t n_content = 0;
    json_t *calls = moe_ipc_tool_calls(h->data, h->len, call_base(g), &n_content);
    int rc;
    if (calls) {
        size_t i;
        json_t *c;
        json_array_foreach(calls, i, c)
            json_object_set_new(c, "index", json_integer((json_int_t)i));
        rc = sse_append(b, chunk(g, json_pack("{s:o}", "tool_calls", calls), NULL, NULL));
        if (!*finish || !strcmp(*finish, "stop"))
            *finish = "tool_calls";
    } else {
        rc = sse_append(b, chunk(g, json_pack("{s:o}", "content", moe_ipc_json_text(h->data, h->len)),
                                 NULL, NULL));
    }
    h->len = 0;
    return rc;
}

int moe_ipc_sse_close(struct moe_ipc_buf *b, struct moe_ipc_gen *g,
                      const char *finish_reason)
{
    if (g->responses) { /* the closing events carry the usage: sse_end writes them */
        g->incomplete = finish_reason && !strcmp(finish_reason, "length");
        return 0;
    }
    if (release_held(b, g, &finish_reason))
        return -ENOMEM;
    return sse_append(b, chunk(g, g->chat ? json_object() : json_string(""), NULL,
                               finish_reason ? finish_reason : "stop"));
}

int moe_ipc_sse_finish(struct moe_ipc_buf *b, struct moe_ipc_gen *g,
                       const char *finish_reason, int32_t prompt_tokens,
                       int32_t completion_tokens)
{
    int rc = moe_ipc_sse_close(b, g, finish_reason);
    return rc ? rc : moe_ipc_sse_end(b, g, prompt_tokens, completion_tokens);
}

int moe_ipc_sse_end(struct moe_ipc_buf *b, struct moe_ipc_gen *g, int32_t prompt_tokens,
                    int32_t completion_tokens)
{
    int rc;
    if (g->responses) /* no [DONE]: the completed (or incomplete) event ends the stream */
        return response_close(b, g, g->incomplete ? "length" : "stop", prompt_tokens,
                              completion_tokens);
    if (g->include_usage) {
        /* as OpenAI: one more chunk, empty choices, the usage */
        json_t *o = head(g, g->chat ? "chat.completion.chunk" : "text_completion");
        if (!o || json_object_set_new(o, "choices", json_array()) ||
            json_object_set_new(o, "usage", usage(prompt_tokens, completion_tokens))) {
            json_decref(o);
            return -ENOMEM;
        }
        if ((rc = sse_append(b, o)))
            return rc;
    }
    return moe_ipc_buf_append(b, "data: [DONE]\n\n", 14);
}

int moe_ipc_sse_error(struct moe_ipc_buf *b, struct moe_ipc_gen *g,
                      const struct moe_ipc_error *e)
{
    if (g && g->responses)
        return response_event(b, g, "error",
                              json_pack("{s:s, s:s, s:o}", "code", e->code, "message",
                                        e->message, "param",
                                        e->param[0] ? json_string(e->param) : json_null()));
    int rc = sse_append(b, moe_ipc_error_obj(e));
    return rc ? rc : moe_ipc_buf_append(b, "data: [DONE]\n\n", 14);
}
