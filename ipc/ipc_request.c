/* JSON bodies of /v1/completions and /v1/chat/completions -> struct
 * moe_request. Every field is checked for type and range and an error names
 * the field ("param") and what was expected, so a client can fix its request
 * from the message alone. No engine, no I/O: fuzzed as is. */
#include "ipc/ipc_int.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T_INVALID "invalid_request_error"

/* ---- errors -------------------------------------------------------------- */

int moe_ipc_error_set(struct moe_ipc_error *e, int status, const char *type, const char *code,
                      const char *param, const char *fmt, ...)
{
    va_list ap;
    e->status = status;
    e->type = type;
    e->code = code;
    snprintf(e->param, sizeof(e->param), "%s", param ? param : "");
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/* Decodes one UTF-8 sequence at s[0..n); its length, or 0 when invalid
 * (overlong forms, surrogates and code points past U+10FFFF included). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    uint32_t cp, min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2, cp = c & 0x1f, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, cp = c & 0x0f, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

json_t *moe_ipc_json_text(const char *s, size_t n)
{
    json_t *j = json_stringn(s ? s : "", s ? n : 0);
    if (j)
        return j;
    /* invalid UTF-8: copy with U+FFFD for each bad byte */
    char *fixed = malloc(n * 3 + 1);
    if (!fixed)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_seq((const unsigned char *)s + i, n - i);
        if (l) {
            memcpy(fixed + o, s + i, l);
            o += l;
            i += l;
        } else {
            memcpy(fixed + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    j = json_stringn(fixed, o);
    free(fixed);
    return j;
}

json_t *moe_ipc_error_obj(const struct moe_ipc_error *e)
{
    json_t *inner = json_object();
    json_t *root = json_object();
    if (!inner || !root)
        goto fail;
    if (json_object_set_new(inner, "message", moe_ipc_json_text(e->message, strlen(e->message))) ||
        json_object_set_new(inner, "type", json_string(e->type ? e->type : "server_error")) ||
        json_object_set_new(inner, "code", json_string(e->code ? e->code : "internal_error")) ||
        json_object_set_new(inner, "param",
                            e->param[0] ? moe_ipc_json_text(e->param, strlen(e->param))
                                        : json_null()))
        goto fail;
    if (json_object_set_new(root, "error", inner)) {
        inner = NULL;
        goto fail;
    }
    return root;
fail:
    json_decref(inner);
    json_decref(root);
    return NULL;
}

char *moe_ipc_error_json(const struct moe_ipc_error *e, size_t *len)
{
    json_t *root = moe_ipc_error_obj(e);
    if (!root)
        return NULL;
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!s)
        return NULL;
    size_t n = strlen(s);
    char *out = realloc(s, n + 2);
    if (!out) {
        free(s);
        return NULL;
    }
    out[n] = '\n';
    out[n + 1] = '\0';
    if (len)
        *len = n + 1;
    return out;
}

/* ---- field helpers ------------------------------------------------------- */

static int oom(struct moe_ipc_error *err)
{
    moe_ipc_error_set(err, 500, "server_error", "out_of_memory", NULL, "out of memory");
    return -ENOMEM;
}

/* The field, or NULL when absent or null (OpenAI treats null as "left out"). */
static json_t *opt(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return v && !json_is_null(v) ? v : NULL;
}

static const char *kind_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "?";
}

static int type_error(struct moe_ipc_error *err, const char *param, const char *want,
                      const json_t *got)
{
    return moe_ipc_error_set(err, 400, T_INVALID, "invalid_type", param, "'%s' must be %s, got %s",
                             param, want, kind_name(got));
}

static int missing(struct moe_ipc_error *err, const char *param, const char *want)
{
    return moe_ipc_error_set(err, 400, T_INVALID, "missing_required_parameter", param,
                             "'%s' is required (%s)", param, want);
}

/* An optional number; range is written like "[0, 2]" or "(0, 1]" for the
 * message. */
static int get_number(json_t *root, const char *key, double lo, bool lo_open, double hi,
                      const char *range, float *dst, struct moe_ipc_error *err)
{
    json_t *v = opt(root, key);
    if (!v)
        return 0;
    if (!json_is_number(v))
        return type_error(err, key, "a number", v);
    double x = json_number_value(v);
    if (!(lo_open ? x > lo : x >= lo) || !(x <= hi))
        return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", key,
                                 "'%s' must be a number in %s, got %g", key, range, x);
    *dst = (float)x;
    return 0;
}

/* An optional integer in [lo, hi]; an integral real (16.0) counts. *present
 * says whether the body gave one. */
static int get_integer(json_t *root, const char *key, long long lo, long long hi,
                       long long *dst, bool *present, struct moe_ipc_error *err)
{
    json_t *v = opt(root, key);
    long long x;
    *present = false;
    if (!v)
        return 0;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(fabs(d) <= 9007199254740992.0) || d != floor(d))
            return type_error(err, key, "an integer", v);
        x = (long long)d;
    } else {
        return type_error(err, key, "an integer", v);
    }
    if (x < lo || x > hi)
        return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", key,
                                 "'%s' must be an integer in [%lld, %lld], got %lld", key, lo, hi,
                                 x);
    *dst = x;
    *present = true;
    return 0;
}

static int get_bool(json_t *root, const char *key, bool *dst, struct moe_ipc_error *err)
{
    json_t *v = opt(root, key);
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return type_error(err, key, "a boolean", v);
    *dst = json_is_true(v);
    return 0;
}

/* ---- the request --------------------------------------------------------- */

void moe_ipc_parsed_free(struct moe_ipc_parsed *p)
{
    if (!p)
        return;
    moe_request_free(p->req);
    json_decref(p->tools);
    json_decref(p->messages);
    json_decref(p->template_kwargs);
    memset(p, 0, sizeof(*p));
}

static int add_stop(struct moe_request *r, json_t *s, const char *param,
                    struct moe_ipc_error *err)
{
    size_t n = json_string_length(s);
    if (n == 0)
        return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", param,
                                 "'%s' must not be an empty string", param);
    if (n > MOE_STOP_MAX_LEN)
        return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", param,
                                 "'%s' is %zu bytes long; at most %d are allowed", param, n,
                                 MOE_STOP_MAX_LEN);
    char *copy = strndup(json_string_value(s), n);
    if (!copy)
        return oom(err);
    r->stop[r->n_stop++] = copy;
    return 0;
}

static int parse_stop(json_t *root, struct moe_request *r, struct moe_ipc_error *err)
{
    json_t *v = opt(root, "stop");
    if (!v)
        return 0;
    if (json_is_string(v))
        return add_stop(r, v, "stop", err);
    if (!json_is_array(v))
        return type_error(err, "stop", "a string or an array of strings", v);
    size_t n = json_array_size(v);
    if (n > MOE_STOP_MAX)
        return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", "stop",
                                 "'stop' holds %zu strings; at most %d are allowed", n,
                                 MOE_STOP_MAX);
    for (size_t i = 0; i < n; i++) {
        char param[32];
        json_t *s = json_array_get(v, i);
        snprintf(param, sizeof(param), "stop[%zu]", i);
        if (!json_is_string(s))
            return type_error(err, param, "a string", s);
        int rc = add_stop(r, s, param, err);
        if (rc)
            return rc;
    }
    return 0;
}

static int check_prompt_bytes(size_t n, const struct moe_ipc_limits *lim, const char *param,
                              struct moe_ipc_error *err)
{
    if (lim->max_prompt_bytes && n > lim->max_prompt_bytes)
        return moe_ipc_error_set(err, 400, T_INVALID, "prompt_too_long", param,
                                 "'%s' is %zu bytes long; this server accepts at most %zu", param,
                                 n, lim->max_prompt_bytes);
    return 0;
}

static int parse_prompt(json_t *root, const struct moe_ipc_limits *lim, struct moe_request *r,
                        struct moe_ipc_error *err)
{
    const char *want = "a string, an array of token ids, or an array of one of those";
    json_t *p = opt(root, "prompt");
    if (!p)
        return missing(err, "prompt", want);
    if (json_is_array(p) && json_array_size(p) == 1 && json_is_array(json_array_get(p, 0)))
        p = json_array_get(p, 0); /* [[ids]]: one prompt of tokens */
    if (json_is_array(p) && json_array_size(p) > 0 && json_is_integer(json_array_get(p, 0))) {
        size_t n = json_array_size(p);
        int rc = check_prompt_bytes(n * 4, lim, "prompt", err);
        if (rc)
            return rc;
        r->prompt_ids = malloc(n * sizeof(*r->prompt_ids));
        if (!r->prompt_ids)
            return oom(err);
        for (size_t i = 0; i < n; i++) {
            json_t *v = json_array_get(p, i);
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) > INT32_MAX) {
                char sub[32];
                snprintf(sub, sizeof(sub), "prompt[%zu]", i);
                return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", sub,
                                         "'%s' must be a token id", sub);
            }
            r->prompt_ids[i] = (int32_t)json_integer_value(v);
        }
        r->n_prompt_ids = n;
        return 0;
    }
    if (json_is_array(p)) {
        size_t n = json_array_size(p);
        for (size_t i = 0; i < n; i++)
            if (!json_is_string(json_array_get(p, i)))
                return type_error(err, "prompt", want, p);
        if (n != 1)
            return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", "prompt",
                                     "'prompt' holds %zu prompts; exactly one per request is "
                                     "supported",
                                     n);
        p = json_array_get(p, 0);
    } else if (!json_is_string(p)) {
        return type_error(err, "prompt", want, p);
    }
    size_t n = json_string_length(p);
    int rc = check_prompt_bytes(n, lim, "prompt", err);
    if (rc)
        return rc;
    r->prompt = strndup(json_string_value(p), n);
    return r->prompt ? 0 : oom(err);
}

/* content: a string, or OpenAI's array of {"type": "text", "text": ...}
 * parts, joined with "\n". */
static int parse_content(json_t *c, const char *param, char **out, size_t *out_len,
                         struct moe_ipc_error *err)
{
    char sub[128];
    if (!c)
        return missing(err, param, "a string");
    if (json_is_string(c)) {
        *out_len = json_string_length(c);
        *out = strndup(json_string_value(c), *out_len);
        return *out ? 0 : oom(err);
    }
    if (!json_is_array(c))
        return type_error(err, param, "a string or an array of text parts", c);
    size_t total = 0, n = json_array_size(c);
    for (size_t i = 0; i < n; i++) {
        json_t *part = json_array_get(c, i), *type, *text;
        snprintf(sub, sizeof(sub), "%s[%zu]", param, i);
        if (!json_is_object(part))
            return type_error(err, sub, "an object", part);
        type = json_object_get(part, "type");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0)
            return moe_ipc_error_set(err, 400, T_INVALID, "unsupported_value", sub,
                                     "'%s.type' must be \"text\" (only text content is "
                                     "supported)",
                                     sub);
        text = json_object_get(part, "text");
        if (!json_is_string(text)) {
            snprintf(sub + strlen(sub), sizeof(sub) - strlen(sub), ".text");
            return text ? type_error(err, sub, "a string", text) : missing(err, sub, "a string");
        }
        total += json_string_length(text) + (i ? 1 : 0);
    }
    char *s = malloc(total + 1), *w = s;
    if (!s)
        return oom(err);
    for (size_t i = 0; i < n; i++) {
        json_t *text = json_object_get(json_array_get(c, i), "text");
        if (i)
            *w++ = '\n';
        memcpy(w, json_string_value(text), json_string_length(text));
        w += json_string_length(text);
    }
    *w = '\0';
    *out = s;
    *out_len = total;
    return 0;
}

/* messages -> r->messages; with the model's own template (lim->chat_jinja)
 * also out->messages, the JSON the template is given, where tool calls and
 * tool results may appear */
static int parse_messages(json_t *root, const struct moe_ipc_limits *lim, struct moe_request *r,
                          struct moe_ipc_parsed *out, struct moe_ipc_error *err)
{
    static const char *const roles[] = {"system", "user", "assistant", "developer", "tool"};
    const size_t n_roles = lim->chat_jinja ? 5 : 4;
    const char *role_list = lim->chat_jinja ? "system, user, assistant, tool"
                                            : "system, user, assistant";
    json_t *v = opt(root, "messages");
    char param[64];
    size_t total = 0;
    if (!v)
        return missing(err, "messages", "an array of {\"role\", \"content\"} objects");
    if (!json_is_array(v))
        return type_error(err, "messages", "an array of {\"role\", \"content\"} objects", v);
    size_t n = json_array_size(v);
    if (n == 0)
        return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", "messages",
                                 "'messages' must hold at least one message");
    r->messages = calloc(n, sizeof(*r->messages));
    if (!r->messages || (lim->chat_jinja && !(out->messages = json_array())))
        return oom(err);
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(v, i), *role;
        size_t k, len = 0;
        snprintf(param, sizeof(param), "messages[%zu]", i);
        if (!json_is_object(m))
            return type_error(err, param, "an object with \"role\" and \"content\"", m);

        snprintf(param, sizeof(param), "messages[%zu].role", i);
        role = opt(m, "role");
        if (!role)
            return missing(err, param, role_list);
        if (!json_is_string(role))
            return type_error(err, param, "a string", role);
        for (k = 0; k < n_roles; k++)
            if (strcmp(json_string_value(role), roles[k]) == 0)
                break;
        if (k == n_roles || json_string_length(role) != strlen(roles[k]))
            return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", param,
                                     "'%s' must be one of %s; got \"%.40s\"%s", param,
                                     role_list, json_string_value(role),
                                     strcmp(json_string_value(role), "tool") ? ""
                                     : " (tool results need the model's own chat template)");
        /* "developer" is OpenAI's newer name for the system role */
        struct moe_chat_message *cm = &r->messages[r->n_messages++];
        cm->role = strdup(k == 3 ? "system" : roles[k]);
        if (!cm->role)
            return oom(err);

        snprintf(param, sizeof(param), "messages[%zu].content", i);
        json_t *tc = opt(m, "tool_calls");
        bool calls = lim->chat_jinja && tc && !(json_is_array(tc) && json_array_size(tc) == 0);
        int rc = 0;
        if (calls && !opt(m, "content")) /* an assistant turn of calls alone */
            cm->content = strdup("");
        else
            rc = parse_content(opt(m, "content"), param, &cm->content, &len, err);
        if (rc)
            return rc;
        if (!cm->content)
            return oom(err);
        total += len;
        if (out->messages) {
            rc = moe_ipc_template_message(m, i, cm->role, cm->content, out->messages, err);
            if (rc)
                return rc;
        }

        /* tool calls cannot be rendered by moed's built-in formats: refused
         * rather than dropped, as dropping them would change the conversation */
        static const char *const tool_keys[] = {"tool_calls", "function_call"};
        for (k = calls; k < MOE_ARRAY_SIZE(tool_keys); k++) {
            json_t *tc = opt(m, tool_keys[k]);
            if (!tc || (json_is_array(tc) && json_array_size(tc) == 0))
                continue;
            snprintf(param, sizeof(param), "messages[%zu].%s", i, tool_keys[k]);
            return moe_ipc_error_set(err, 400, T_INVALID, "unsupported_parameter", param,
                                     "'%s' is not supported %s", param,
                                     k ? "(the legacy function_call: use tool_calls)"
                                       : "with this server's built-in chat format: it needs the "
                                         "model's own chat template");
        }
        json_t *rc_text = opt(m, "reasoning_content");
        if (rc_text) {
            snprintf(param, sizeof(param), "messages[%zu].reasoning_content", i);
            if (!json_is_string(rc_text))
                return type_error(err, param, "a string", rc_text);
            cm->reasoning_content = strndup(json_string_value(rc_text),
                                            json_string_length(rc_text));
            if (!cm->reasoning_content)
                return oom(err);
            total += json_string_length(rc_text);
        }
        rc = check_prompt_bytes(total, lim, "messages", err);
        if (rc)
            return rc;
    }
    return 0;
}

/* logprobs: chat's boolean with top_logprobs, or the completions API's
 * number of alternatives (0: the chosen tokens' only) */
static int parse_logprobs(json_t *root, bool chat, struct moe_request *r,
                          struct moe_ipc_error *err)
{
    long long x;
    bool present;
    int rc;
    if (!chat) {
        if ((rc = get_integer(root, "logprobs", 0, MOE_LOGPROBS_MAX, &x, &present, err)))
            return rc;
        r->logprobs = present;
        r->top_logprobs = present ? (int32_t)x : 0;
        return 0;
    }
    if ((rc = get_bool(root, "logprobs", &r->logprobs, err)) ||
        (rc = get_integer(root, "top_logprobs", 0, MOE_LOGPROBS_MAX, &x, &present, err)))
        return rc;
    if (present && x > 0 && !r->logprobs)
        return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", "top_logprobs",
                                 "'top_logprobs' needs 'logprobs': true");
    r->top_logprobs = present ? (int32_t)x : 0;
    return 0;
}

/* logit_bias: {"token id": bias in [-100, 100]}; the engine checks the ids
 * against the vocabulary */
static int parse_logit_bias(json_t *root, struct moe_request *r, struct moe_ipc_error *err)
{
    json_t *v = opt(root, "logit_bias"), *b;
    const char *key;
    if (!v)
        return 0;
    if (!json_is_object(v))
        return type_error(err, "logit_bias", "an object of token ids to numbers", v);
    size_t n = json_object_size(v);
    if (n > MOE_LOGIT_BIAS_MAX)
        return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", "logit_bias",
                                 "'logit_bias' holds %zu tokens; at most %d", n,
                                 MOE_LOGIT_BIAS_MAX);
    r->bias_id = malloc(MOE_MAX(n, 1) * sizeof(*r->bias_id));
    r->bias = malloc(MOE_MAX(n, 1) * sizeof(*r->bias));
    if (!r->bias_id || !r->bias)
        return oom(err);
    json_object_foreach(v, key, b) {
        char sub[96], *end;
        snprintf(sub, sizeof(sub), "logit_bias.%.64s", key);
        errno = 0;
        long id = strtol(key, &end, 10);
        if (!*key || *end || errno || id < 0 || id > INT32_MAX)
            return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", sub,
                                     "'%s': logit_bias keys must be token ids", sub);
        if (!json_is_number(b) || !(json_number_value(b) >= -100 && json_number_value(b) <= 100))
            return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", sub,
                                     "'%s' must be a number in [-100, 100]", sub);
        r->bias_id[r->n_bias] = (int32_t)id;
        r->bias[r->n_bias++] = (float)json_number_value(b);
    }
    return 0;
}

/* Parameters we do not implement: accepted only when absent or neutral, so
 * that a client never silently gets something other than it asked for. */
static int check_unsupported(json_t *root, bool chat, struct moe_ipc_error *err)
{
    static const struct {
        const char *key;
        bool completion_only;
        bool one_ok; /* best_of: 1 is the neutral value */
        bool zero_ok;
    } keys[] = {
        {"functions", false, false, false},
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(keys); i++) {
        json_t *v = opt(root, keys[i].key);
        if (!v || (keys[i].completion_only && chat))
            continue;
        bool neutral = json_is_false(v) ||
                       (json_is_string(v) && json_string_length(v) == 0) ||
                       (json_is_object(v) && json_object_size(v) == 0) ||
                       (json_is_array(v) && json_array_size(v) == 0) ||
                       (json_is_integer(v) && json_integer_value(v) == 0 && keys[i].zero_ok) ||
                       (json_is_integer(v) && json_integer_value(v) == 1 && keys[i].one_ok);
        if (!neutral)
            return moe_ipc_error_set(err, 400, T_INVALID, "unsupported_parameter", keys[i].key,
                                     "'%s' is not supported by this server", keys[i].key);
    }
    return 0;
}

static int parse_fields(json_t *root, bool chat, const struct moe_ipc_limits *lim,
                        struct moe_request *r, struct moe_ipc_parsed *out,
                        struct moe_ipc_error *err)
{
    long long x;
    bool present;
    int rc;
    json_t *v;

#define TRY(expr)          \
    do {                   \
        if ((rc = (expr))) \
            return rc;     \
    } while (0)

    if (chat)
        TRY(parse_messages(root, lim, r, out, err));
    else
        TRY(parse_prompt(root, lim, r, err));

    v = opt(root, "model");
    if (v && !json_is_string(v))
        return type_error(err, "model", "a string", v);

    /* echo (completions): the prompt first; with max_tokens 0, only the prompt (scoring) */
    if (!chat)
        TRY(get_bool(root, "echo", &r->echo, err));
    /* suffix (completions): fill in the middle, where the model has FIM tokens */
    v = chat ? NULL : opt(root, "suffix");
    if (v && !json_is_string(v))
        return type_error(err, "suffix", "a string", v);
    if (v && json_string_length(v)) {
        if (!r->prompt)
            return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", "suffix",
                                     "'suffix' needs the prompt as text, not tokens");
        if (r->echo)
            return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", "suffix",
                                     "'suffix' cannot be combined with 'echo'");
        TRY(check_prompt_bytes(strlen(r->prompt) + json_string_length(v), lim, "suffix", err));
        if (!(r->suffix = strndup(json_string_value(v), json_string_length(v))))
            return oom(err);
    }
    /* max_tokens, or chat's newer max_completion_tokens (which wins) */
    long long max_hi = lim->max_tokens_limit > 0 ? lim->max_tokens_limit : INT32_MAX;
    static const char *const mt_keys[] = {"max_tokens", "max_completion_tokens"};
    for (size_t i = 0; i < (chat ? 2u : 1u); i++) {
        TRY(get_integer(root, mt_keys[i], r->echo ? 0 : 1, INT32_MAX, &x, &present, err));
        if (!present)
            continue;
        r->prompt_only = x == 0;
        if (x > max_hi)
            return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", mt_keys[i],
                                     "'%s' must be at most %lld (this server's limit), got %lld",
                                     mt_keys[i], max_hi, x);
        r->max_tokens = (int32_t)x;
    }

    TRY(get_number(root, "temperature", 0, false, 2, "[0, 2]", &r->sampling.temperature, err));
    TRY(get_number(root, "top_p", 0, true, 1, "(0, 1]", &r->sampling.top_p, err));
    TRY(get_integer(root, "top_k", -1, INT32_MAX, &x, &present, err));
    if (present)
        r->sampling.top_k = x < 0 ? 0 : (int)x; /* -1 = off, as vLLM */
    TRY(get_number(root, "min_p", 0, false, 1, "[0, 1]", &r->sampling.min_p, err));
    TRY(get_number(root, "presence_penalty", -2, false, 2, "[-2, 2]",
                   &r->sampling.presence_penalty, err));
    TRY(get_number(root, "frequency_penalty", -2, false, 2, "[-2, 2]",
                   &r->sampling.frequency_penalty, err));
    TRY(get_number(root, "repetition_penalty", 0, true, 10, "(0, 10]",
                   &r->sampling.repetition_penalty, err));
    TRY(get_integer(root, "seed", INT64_MIN, INT64_MAX, &x, &present, err));
    if (present) {
        r->sampling.seed = (uint64_t)x;
        out->seed_set = true;
    }

    TRY(get_integer(root, "n", 1, MOE_IPC_CHOICES_MAX, &x, &present, err));
    out->n = present ? (int)x : 1;
    out->best_of = out->n;
    if (!chat) { /* best_of: that many candidates, the n likeliest per token returned */
        TRY(get_integer(root, "best_of", 1, MOE_IPC_CHOICES_MAX, &x, &present, err));
        if (present && x < out->n)
            return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", "best_of",
                                     "'best_of' (%lld) must be at least 'n' (%d)", x, out->n);
        if (present)
            out->best_of = (int)x;
    }

    TRY(parse_stop(root, r, err));
    TRY(parse_logprobs(root, chat, r, err));
    TRY(parse_logit_bias(root, r, err));
    TRY(get_bool(root, "stream", &r->stream, err));
    TRY(get_bool(root, "ignore_eos", &r->ignore_eos, err));
    /* extensions: online dynamic pruning level and experts per token; the
     * model's own top_k bounds moe_top_k, which the engine checks */
    v = opt(root, "moe_prune");
    if (v) {
        TRY(get_number(root, "moe_prune", 0, false, 1, "[0, 1]", &r->moe_prune, err));
        r->moe_prune_set = true;
    }
    TRY(get_integer(root, "moe_top_k", 1, MOE_ROUTER_MAX_K, &x, &present, err));
    if (present)
        r->moe_top_k = (int32_t)x;
    v = opt(root, "stream_options");
    if (v) {
        if (!json_is_object(v))
            return type_error(err, "stream_options", "an object", v);
        json_t *iu = opt(v, "include_usage");
        if (iu && !json_is_boolean(iu))
            return type_error(err, "stream_options.include_usage", "a boolean", iu);
        out->include_usage = iu && json_is_true(iu);
    }
    if (out->best_of > out->n && r->stream)
        return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", "best_of",
                                 "'best_of' above 'n' cannot be streamed: the best are known "
                                 "only at the end");
    TRY(check_unsupported(root, chat, err));
    TRY(moe_ipc_parse_structured(root, chat, r, out, err));
    return 0;
#undef TRY
}

/* A request already parsed as a JSON object into out (cleared on failure) */
static int parse_object(json_t *root, bool chat, const struct moe_ipc_limits *lim,
                        struct moe_ipc_parsed *out, struct moe_ipc_error *err)
{
    struct moe_request *r = calloc(1, sizeof(*r));
    if (!r)
        return oom(err);
    r->kind = chat ? MOE_REQ_CHAT : MOE_REQ_COMPLETION;
    r->sampling = lim->defaults;
    r->max_tokens = lim->default_max_tokens;
    r->timeout_s = lim->request_timeout_s;

    int rc = parse_fields(root, chat, lim, r, out, err);
    if (rc) {
        moe_request_free(r);
        memset(out, 0, sizeof(*out));
        return rc;
    }
    out->req = r;
    return 0;
}

int moe_ipc_parse_completion(const char *body, size_t len, bool chat,
                             const struct moe_ipc_limits *lim, struct moe_ipc_parsed *out,
                             struct moe_ipc_error *err)
{
    json_error_t jerr;
    int rc;

    memset(out, 0, sizeof(*out));
    /* duplicate keys are refused: which one wins is not portable */
    json_t *root = json_loadb(body ? body : "", body ? len : 0,
                              JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root)
        return moe_ipc_error_set(err, 400, T_INVALID, "invalid_json", NULL,
                                 "malformed JSON at line %d, column %d (byte %d): %s", jerr.line,
                                 jerr.column, jerr.position, jerr.text);
    if (!json_is_object(root))
        rc = moe_ipc_error_set(err, 400, T_INVALID, "invalid_json", NULL,
                               "the request body must be a JSON object, got %s",
                               kind_name(root));
    else
        rc = parse_object(root, chat, lim, out, err);
    json_decref(root);
    return rc;
}

/* ---- the Responses API ---------------------------------------------------- */

/* One input item's content: a string, or [{"type": "input_text" / "output_text" /
 * "text", "text": ...}] parts, into chat's text parts */
static int response_content(json_t *c, const char *param, json_t **out,
                            struct moe_ipc_error *err)
{
    char sub[96];
    if (json_is_string(c)) {
        *out = json_incref(c);
        return 0;
    }
    if (!json_is_array(c))
        return type_error(err, param, "a string or an array of text parts", c);
    json_t *parts = json_array();
    size_t i;
    json_t *part;
    if (!parts)
        return oom(err);
    json_array_foreach(c, i, part) {
        snprintf(sub, sizeof(sub), "%s[%zu]", param, i);
        const char *t = json_string_value(json_object_get(part, "type"));
        json_t *text = json_object_get(part, "text");
        if (!t || (strcmp(t, "input_text") && strcmp(t, "output_text") && strcmp(t, "text"))) {
            json_decref(parts);
            return moe_ipc_error_set(err, 400, T_INVALID, "unsupported_value", sub,
                                     "'%s.type' must be \"input_text\" (only text is "
                                     "supported)", sub);
        }
        if (!json_is_string(text)) {
            json_decref(parts);
            snprintf(sub + strlen(sub), sizeof(sub) - strlen(sub), ".text");
            return type_error(err, sub, "a string", text ? text : json_null());
        }
        json_array_append_new(parts, json_pack("{s:s, s:O}", "type", "text", "text", text));
    }
    *out = parts;
    return 0;
}

/* The Responses API's keys that a chat request has no counterpart for and
 * that would change the answer: refused unless neutral. */
static const char *const response_refused[] = {
    "previous_response_id", "reasoning", "include", "conversation", "prompt", "background",
    "truncation", "max_tool_calls", "top_logprobs"};

/* tools, tool_choice and text.format in chat's shapes: a function tool's
 * name, description and parameters move into "function"; text.format
 * becomes response_format */
static int response_tools(json_t *root, json_t *chat, struct moe_ipc_error *err)
{
    json_t *tools = opt(root, "tools"), *choice = opt(root, "tool_choice");
    json_t *text = opt(root, "text"), *v;
    if (tools && !json_is_array(tools))
        return type_error(err, "tools", "an array", tools);
    if (tools && json_array_size(tools)) {
        json_t *list = json_array();
        json_object_set_new(chat, "tools", list);
        for (size_t i = 0; i < json_array_size(tools); i++) {
            json_t *t = json_array_get(tools, i), *fn = json_object();
            char param[32];
            snprintf(param, sizeof(param), "tools[%zu]", i);
            const char *type = json_string_value(json_object_get(t, "type"));
            if (!type || strcmp(type, "function")) {
                json_decref(fn);
                return moe_ipc_error_set(err, 400, T_INVALID, "unsupported_value", param,
                                         "'%s': only function tools are supported (no built-in "
                                         "tools such as web search)", param);
            }
            static const char *const keys[] = {"name", "description", "parameters", "strict"};
            for (size_t k = 0; k < MOE_ARRAY_SIZE(keys); k++)
                if ((v = json_object_get(t, keys[k])))
                    json_object_set(fn, keys[k], v);
            json_array_append_new(list, json_pack("{s:s, s:o}", "type", "function", "function",
                                                  fn));
        }
    }
    if (json_is_object(choice)) { /* {"type": "function", "name"} */
        json_t *name = json_object_get(choice, "name");
        if (!json_is_string(name))
            return type_error(err, "tool_choice", "auto, none, required or {\"type\": "
                              "\"function\", \"name\": ...}", choice);
        json_object_set_new(chat, "tool_choice", json_pack("{s:s, s:{s:O}}", "type", "function",
                                                           "function", "name", name));
    } else if (choice) {
        json_object_set(chat, "tool_choice", choice);
    }
    json_t *fmt = json_is_object(text) ? json_object_get(text, "format") : NULL;
    if (text && !json_is_object(text))
        return type_error(err, "text", "an object", text);
    if (fmt) { /* {"type": "json_schema", "name", "schema", "strict"} */
        const char *type = json_string_value(json_object_get(fmt, "type"));
        json_t *rf = json_pack("{s:s}", "type", type ? type : "");
        if (type && !strcmp(type, "json_schema"))
            json_object_set_new(rf, "json_schema", json_pack("{s:O*, s:O*}", "name",
                                                            json_object_get(fmt, "name"),
                                                            "schema",
                                                            json_object_get(fmt, "schema")));
        json_object_set_new(chat, "response_format", rf);
    }
    return 0;
}

/* input items of a tool loop as chat messages: function_call items (one
 * after another: one assistant turn) and function_call_output items */
static int response_tool_item(json_t *item, const char *type, const char *param, json_t *msgs,
                              struct moe_ipc_error *err)
{
    json_t *call_id = json_object_get(item, "call_id");
    if (!json_is_string(call_id))
        return missing(err, param, "a call_id");
    if (!strcmp(type, "function_call_output")) {
        json_t *out = json_object_get(item, "output");
        if (!json_is_string(out))
            return type_error(err, param, "an item whose output is a string",
                              out ? out : json_null());
        json_array_append_new(msgs, json_pack("{s:s, s:O, s:O}", "role", "tool", "tool_call_id",
                                               call_id, "content", out));
        return 0;
    }
    json_t *name = json_object_get(item, "name"), *args = json_object_get(item, "arguments");
    if (!json_is_string(name) || !json_is_string(args))
        return missing(err, param, "a function_call with name and arguments");
    json_t *call = json_pack("{s:O, s:s, s:{s:O, s:O}}", "id", call_id, "type", "function",
                             "function", "name", name, "arguments", args);
    json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
    json_t *calls = json_object_get(last, "tool_calls");
    if (json_is_array(calls) && !json_object_get(last, "content")) /* the same turn */
        return json_array_append_new(calls, call) ? oom(err) : 0;
    json_array_append_new(msgs, json_pack("{s:s, s:n, s:[o]}", "role", "assistant", "content",
                                           "tool_calls", call));
    return 0;
}

int moe_ipc_parse_response(const char *body, size_t len, const struct moe_ipc_limits *lim,
                           struct moe_ipc_parsed *out, struct moe_ipc_error *err)
{
    json_error_t jerr;
    int rc = 0;
    memset(out, 0, sizeof(*out));
    json_t *root = json_loadb(body ? body : "", body ? len : 0, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(root)) {
        rc = moe_ipc_error_set(err, 400, T_INVALID, "invalid_json", NULL,
                               root ? "the request body must be a JSON object"
                                    : "malformed JSON at line %d, column %d: %s",
                               jerr.line, jerr.column, jerr.text);
        json_decref(root);
        return rc;
    }
    json_t *chat = json_object(), *msgs = json_array(), *v;
    if (!chat || !msgs) {
        rc = oom(err);
        goto out;
    }
    json_object_set(chat, "messages", msgs);
    for (size_t i = 0; i < MOE_ARRAY_SIZE(response_refused); i++) {
        v = opt(root, response_refused[i]);
        bool neutral = !v || (json_is_array(v) && json_array_size(v) == 0) ||
                       (json_is_string(v) && !strcmp(json_string_value(v), "auto")) ||
                       (json_is_object(v) && !strcmp(response_refused[i], "text") &&
                        json_is_object(json_object_get(v, "format")) &&
                        !strcmp(json_string_value(json_object_get(
                                    json_object_get(v, "format"), "type")) ?: "", "text"));
        if (!neutral) {
            rc = moe_ipc_error_set(err, 400, T_INVALID, "unsupported_parameter",
                                   response_refused[i], "'%s' is not supported by this server",
                                   response_refused[i]);
            goto out;
        }
    }
    v = opt(root, "instructions"); /* the system message */
    if (v && !json_is_string(v)) {
        rc = type_error(err, "instructions", "a string", v);
        goto out;
    }
    if (v)
        json_array_append_new(msgs, json_pack("{s:s, s:O}", "role", "system", "content", v));
    json_t *input = opt(root, "input");
    if (!input) {
        rc = missing(err, "input", "a string or an array of messages");
        goto out;
    }
    if (json_is_string(input)) {
        json_array_append_new(msgs, json_pack("{s:s, s:O}", "role", "user", "content", input));
    } else if (json_is_array(input)) {
        size_t i;
        json_t *item;
        json_array_foreach(input, i, item) {
            char param[64];
            snprintf(param, sizeof(param), "input[%zu]", i);
            const char *type = json_string_value(json_object_get(item, "type"));
            json_t *role = json_object_get(item, "role"), *content = NULL;
            if (type && (!strcmp(type, "function_call") || !strcmp(type, "function_call_output"))) {
                if ((rc = response_tool_item(item, type, param, msgs, err)))
                    goto out;
                continue;
            }
            if (!json_is_object(item) || (type && strcmp(type, "message")) ||
                !json_is_string(role)) {
                rc = moe_ipc_error_set(err, 400, T_INVALID, "unsupported_value", param,
                                       "'%s' must be a message with a role, a function_call "
                                       "or a function_call_output", param);
                goto out;
            }
            snprintf(param + strlen(param), sizeof(param) - strlen(param), ".content");
            if ((rc = response_content(json_object_get(item, "content"), param, &content, err)))
                goto out;
            json_array_append_new(msgs, json_pack("{s:O, s:o}", "role", role, "content",
                                                  content));
        }
    } else {
        rc = type_error(err, "input", "a string or an array of messages", input);
        goto out;
    }
    /* the rest as chat has them */
    static const char *const same[] = {"model", "temperature", "top_p", "stream", "seed",
                                       "top_k", "min_p", "stop", "presence_penalty",
                                       "frequency_penalty", "repetition_penalty"};
    for (size_t i = 0; i < MOE_ARRAY_SIZE(same); i++)
        if ((v = json_object_get(root, same[i])))
            json_object_set(chat, same[i], v);
    if ((v = json_object_get(root, "max_output_tokens")))
        json_object_set(chat, "max_completion_tokens", v);
    if ((rc = response_tools(root, chat, err)))
        goto out;
    rc = parse_object(chat, true, lim, out, err);
    out->responses = rc == 0;
out:
    json_decref(msgs);
    json_decref(chat);
    json_decref(root);
    return rc;
}
