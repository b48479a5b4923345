/* Chat with the model's own template: the messages as the template is
 * given them (tool calls with their arguments as objects, tool results),
 * and the rendering, in the request's thread, into the prompt text the
 * engine tokenizes as it is. */
#include "ipc/ipc_int.h"

#include "engine/engine_jinja.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T_INVALID "invalid_request_error"

static int bad_field(struct moe_ipc_error *err, size_t i, const char *field, const char *what)
{
    char param[96];
    snprintf(param, sizeof(param), "messages[%zu].%s", i, field);
    return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", param, "'%s' %s", param, what);
}

/* one tool call of a history as the template reads it: arguments an object */
static json_t *template_call(json_t *c, size_t i, size_t j, struct moe_ipc_error *err)
{
    char field[64];
    snprintf(field, sizeof(field), "tool_calls[%zu]", j);
    json_t *fn = json_is_object(c) ? json_object_get(c, "function") : NULL;
    json_t *name = json_is_object(fn) ? json_object_get(fn, "name") : NULL;
    json_t *args = json_is_object(fn) ? json_object_get(fn, "arguments") : NULL;
    if (!json_is_string(name)) {
        bad_field(err, i, field, "must be {\"type\": \"function\", \"function\": {\"name\", "
                                 "\"arguments\"}}");
        return NULL;
    }
    json_t *a = NULL;
    if (json_is_string(args)) { /* OpenAI's: a JSON text */
        json_error_t je;
        a = json_loadb(json_string_value(args), json_string_length(args), 0, &je);
        if (!json_is_object(a)) {
            json_decref(a);
            bad_field(err, i, field, "has arguments that are not a JSON object");
            return NULL;
        }
    } else if (json_is_object(args)) {
        a = json_incref(args);
    } else if (!args || json_is_null(args)) {
        a = json_object();
    } else {
        bad_field(err, i, field, "has arguments that are neither a JSON text nor an object");
        return NULL;
    }
    json_t *out = json_pack("{s:s, s:{s:O, s:o}}", "type", "function", "function", "name", name,
                            "arguments", a);
    json_t *id = json_object_get(c, "id");
    if (out && json_is_string(id))
        json_object_set(out, "id", id);
    return out;
}

int moe_ipc_template_message(json_t *m, size_t i, const char *role, const char *content,
                             json_t *arr, struct moe_ipc_error *err)
{
    json_t *tc = json_object_get(m, "tool_calls");
    bool calls = json_is_array(tc) && json_array_size(tc) > 0;
    json_t *out = json_pack("{s:s, s:o}", "role", role, "content",
                            calls && !content[0] ? json_null() : json_string(content));
    if (!out || json_array_append_new(arr, out))
        return moe_ipc_error_set(err, 500, "server_error", "out_of_memory", "",
                                 "out of memory");
    if (tc && !json_is_null(tc) && !json_is_array(tc))
        return bad_field(err, i, "tool_calls", "must be an array");
    if (calls) {
        if (strcmp(role, "assistant"))
            return bad_field(err, i, "tool_calls", "belong to assistant messages");
        json_t *list = json_array();
        json_object_set_new(out, "tool_calls", list);
        for (size_t j = 0; j < json_array_size(tc); j++) {
            json_t *c = template_call(json_array_get(tc, j), i, j, err);
            if (!c || json_array_append_new(list, c))
                return -EINVAL;
        }
    }
    static const char *const strings[] = {"tool_call_id", "name", "reasoning_content"};
    for (size_t k = 0; k < MOE_ARRAY_SIZE(strings); k++) {
        json_t *v = json_object_get(m, strings[k]);
        if (!v || json_is_null(v))
            continue;
        if (!json_is_string(v))
            return bad_field(err, i, strings[k], "must be a string");
        json_object_set(out, strings[k], v);
    }
    return 0;
}

int moe_ipc_render_chat(const struct moe_ipc_limits *lim, struct moe_ipc_parsed *p,
                        struct moe_ipc_error *err)
{
    json_t *extra = json_object();
    if (!extra)
        return moe_ipc_error_set(err, 500, "server_error", "out_of_memory", "", "out of memory");
    if (lim->chat_bos)
        json_object_set_new(extra, "bos_token", json_string(lim->chat_bos));
    if (lim->chat_eos)
        json_object_set_new(extra, "eos_token", json_string(lim->chat_eos));
    if (p->template_kwargs)
        json_object_update(extra, p->template_kwargs);
    json_t *ctx = moe_jinja_chat_context(p->messages, p->tools, true, extra);
    json_decref(extra);
    char *text = NULL, msg[400] = "";
    int rc = ctx ? moe_jinja_render_compiled(lim->chat_jinja, ctx, NULL, &text, msg, sizeof(msg))
                 : -ENOMEM;
    json_decref(ctx);
    if (rc == -ENOMEM)
        return moe_ipc_error_set(err, 500, "server_error", "out_of_memory", "", "out of memory");
    if (rc)
        return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", "messages",
                                 "the model's chat template refused the conversation: %s", msg);
    if (lim->max_prompt_bytes && strlen(text) > lim->max_prompt_bytes) {
        size_t n = strlen(text);
        free(text);
        return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", "messages",
                                 "the rendered prompt has %zu bytes; this server takes at most %zu",
                                 n, lim->max_prompt_bytes);
    }
    free(p->req->prompt);
    p->req->prompt = text;
    p->req->prompt_raw = true;
    return 0;
}
