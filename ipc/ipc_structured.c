/* Structured output in a request: response_format (json_object,
 * json_schema), llama-server's "grammar" (GBNF text) and "json_schema", and
 * tools with tool_choice, compiled here (in the request's own thread) into
 * the grammar the engine enforces token by token. What cannot be enforced is
 * a 400 naming it.
 *
 * A tool call is written as Hermes / Qwen write it, one per call:
 *     <tool_call>\n{"name": "get_weather", "arguments": {...}}\n</tool_call>
 * tool_choice "required" or a named function constrains the output to
 * exactly that; "auto" leaves the model free until it opens a call, which
 * is then held to the same grammar (a lazy grammar, triggered by the tag),
 * and calls are read out of the text at the end. */
#include "ipc/ipc_int.h"

#include "engine/engine_grammar.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define T_INVALID "invalid_request_error"
#define GRAMMAR_MAX_BYTES (256u << 10)

static int bad(struct moe_ipc_error *err, const char *param, const char *what)
{
    return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", param, "%s: %s", param, what);
}

/* compiles GBNF into r->grammar; errors name param */
static int set_grammar(struct moe_request *r, const char *gbnf, const char *param,
                       struct moe_ipc_error *err)
{
    struct moe_grammar *g;
    if (moe_grammar_compile(gbnf, &g) < 0)
        return bad(err, param, moe_err_msg());
    moe_grammar_unref(r->grammar);
    r->grammar = g;
    return 0;
}

static int schema_grammar(struct moe_request *r, json_t *schema, const char *param,
                          struct moe_ipc_error *err)
{
    char *gbnf;
    if (moe_schema_to_gbnf(schema, NULL, NULL, &gbnf) < 0)
        return bad(err, param, moe_err_msg());
    int rc = set_grammar(r, gbnf, param, err);
    free(gbnf);
    return rc;
}

static int response_format(json_t *rf, struct moe_request *r, struct moe_ipc_error *err)
{
    json_t *t = json_is_object(rf) ? json_object_get(rf, "type") : NULL;
    const char *type = json_string_value(t);
    if (!type)
        return bad(err, "response_format", "must be an object with a string 'type'");
    if (!strcmp(type, "text"))
        return 0;
    if (!strcmp(type, "json_object")) {
        char *gbnf;
        if (moe_gbnf_with_json("root ::= ws object\n", &gbnf) < 0)
            return bad(err, "response_format", moe_err_msg());
        int rc = set_grammar(r, gbnf, "response_format", err);
        free(gbnf);
        return rc;
    }
    if (!strcmp(type, "json_schema")) {
        json_t *js = json_object_get(rf, "json_schema");
        json_t *schema = json_is_object(js) ? json_object_get(js, "schema") : NULL;
        if (!schema)
            return bad(err, "response_format.json_schema.schema", "missing");
        return schema_grammar(r, schema, "response_format.json_schema.schema", err);
    }
    return moe_ipc_error_set(err, 400, T_INVALID, "invalid_value", "response_format.type",
                             "'response_format.type' must be text, json_object or json_schema; "
                             "got \"%.40s\"", type);
}

/* ---- tools --------------------------------------------------------------------------- */

/* the function object of tools[i], checked */
static int tool_function(json_t *tool, size_t i, json_t **fn, const char **name,
                         struct moe_ipc_error *err)
{
    char param[64];
    snprintf(param, sizeof(param), "tools[%zu]", i);
    json_t *type = json_is_object(tool) ? json_object_get(tool, "type") : NULL;
    if (!json_is_string(type) || strcmp(json_string_value(type), "function"))
        return bad(err, param, "each tool must be {\"type\": \"function\", \"function\": {...}}");
    *fn = json_object_get(tool, "function");
    json_t *n = json_is_object(*fn) ? json_object_get(*fn, "name") : NULL;
    if (!json_is_string(n) || !json_string_length(n) || json_string_length(n) > 64)
        return bad(err, param, "function.name must be a string of 1 to 64 characters");
    for (const char *c = json_string_value(n); *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '_' || *c == '-' || *c == '.'))
            return bad(err, param, "function.name may hold only a-z A-Z 0-9 _ - .");
    *name = json_string_value(n);
    return 0;
}

/* GBNF for one call of any of the chosen tools (only = that one name) */
#define CALL_OPEN "<tool_call>"

/* lazy: the grammar starts at the call's opening tag (tool_choice auto) */
static int tools_grammar(json_t *tools, const char *only, bool lazy, struct moe_request *r,
                         struct moe_ipc_error *err)
{
    struct moe_sbuf b = {0};
    moe_sbuf_puts(&b, lazy ? "root ::= " : "root ::= ws ");
    moe_sbuf_puts(&b, "\"" CALL_OPEN "\\n{\\\"name\\\": \" call \"}\\n</tool_call>\"\n"
                      "call ::= ");
    struct moe_sbuf rules = {0};
    int rc = 0, n = 0;
    for (size_t i = 0; i < json_array_size(tools) && !rc; i++) {
        json_t *fn;
        const char *name;
        if ((rc = tool_function(json_array_get(tools, i), i, &fn, &name, err)))
            break;
        if (only && strcmp(name, only))
            continue;
        json_t *params = json_object_get(fn, "parameters");
        char tag[32], top[48], param[80];
        snprintf(tag, sizeof(tag), "t%zu", i);
        snprintf(param, sizeof(param), "tools[%zu].function.parameters", i);
        json_t *empty = params ? NULL : json_pack("{s:s}", "type", "object");
        if (moe_schema_rules(params ? params : empty, tag, &rules, top, sizeof(top)) < 0)
            rc = bad(err, param, moe_err_msg());
        json_decref(empty);
        if (rc)
            break;
        moe_sbuf_puts(&b, n++ ? " | \"\\\"" : "\"\\\"");
        moe_sbuf_puts(&b, name); /* checked above: no character needs escaping */
        moe_sbuf_puts(&b, "\\\", \\\"arguments\\\": \" ");
        moe_sbuf_puts(&b, top);
    }
    if (!rc && !n)
        rc = bad(err, "tool_choice", "names no function given in 'tools'");
    moe_sbuf_putc(&b, '\n');
    moe_sbuf_puts(&b, rules.p ? rules.p : "");
    free(rules.p);
    char *gbnf = NULL;
    if (!rc && (b.oom || moe_gbnf_with_json(b.p, &gbnf) < 0))
        rc = bad(err, "tools", "out of memory");
    if (!rc)
        rc = set_grammar(r, gbnf, "tools", err);
    free(gbnf);
    free(b.p);
    return rc;
}

static int parse_tools(json_t *root, struct moe_request *r, struct moe_ipc_parsed *out,
                       struct moe_ipc_error *err)
{
    json_t *tools = json_object_get(root, "tools"), *choice = json_object_get(root, "tool_choice");
    if (json_is_null(tools))
        tools = NULL;
    if (tools && !json_is_array(tools))
        return bad(err, "tools", "must be an array");
    if (tools && json_array_size(tools) == 0)
        tools = NULL;
    if (json_is_null(choice))
        choice = NULL;
    const char *mode = tools ? "auto" : "none", *only = NULL;
    if (json_is_string(choice)) {
        mode = json_string_value(choice);
        if (strcmp(mode, "auto") && strcmp(mode, "none") && strcmp(mode, "required"))
            return bad(err, "tool_choice", "must be auto, none, required or "
                                           "{\"type\": \"function\", \"function\": {\"name\": ...}}");
    } else if (choice) {
        json_t *fn = json_is_object(choice) ? json_object_get(choice, "function") : NULL;
        only = json_string_value(json_is_object(fn) ? json_object_get(fn, "name") : NULL);
        if (!only)
            return bad(err, "tool_choice", "a named choice is {\"type\": \"function\", "
                                           "\"function\": {\"name\": ...}}");
        mode = "required";
    }
    if (!tools && strcmp(mode, "none"))
        return bad(err, "tool_choice", "needs 'tools'");
    if (!tools)
        return 0;
    /* every tool is checked whatever the choice: a bad one is the client's bug */
    for (size_t i = 0; i < json_array_size(tools); i++) {
        json_t *fn;
        const char *name;
        if (tool_function(json_array_get(tools, i), i, &fn, &name, err))
            return -EINVAL;
    }
    if (r->grammar)
        return bad(err, "tools", "cannot be combined with response_format or grammar");
    out->tools = json_incref(tools);
    out->tool_mode = !strcmp(mode, "none") ? MOE_TOOLS_NONE
                     : !strcmp(mode, "auto") ? MOE_TOOLS_AUTO : MOE_TOOLS_REQUIRED;
    if (out->tool_mode == MOE_TOOLS_NONE)
        return 0;
    bool lazy = out->tool_mode == MOE_TOOLS_AUTO;
    if (lazy && !(r->grammar_trigger = strdup(CALL_OPEN)))
        return moe_ipc_error_set(err, 500, "server_error", "out_of_memory", "", "out of memory");
    return tools_grammar(tools, only, lazy, r, err);
}

int moe_ipc_parse_structured(json_t *root, bool chat, struct moe_request *r,
                             struct moe_ipc_parsed *out, struct moe_ipc_error *err)
{
    json_t *v;
    int set = 0;
    if ((v = json_object_get(root, "response_format")) && !json_is_null(v)) {
        if (response_format(v, r, err))
            return -EINVAL;
        set += r->grammar != NULL;
    }
    if ((v = json_object_get(root, "json_schema")) && !json_is_null(v)) { /* llama-server */
        if (schema_grammar(r, v, "json_schema", err))
            return -EINVAL;
        set++;
    }
    if ((v = json_object_get(root, "grammar")) && !json_is_null(v)) { /* llama-server: GBNF */
        if (!json_is_string(v) || json_string_length(v) > GRAMMAR_MAX_BYTES)
            return bad(err, "grammar", "must be GBNF text of at most 256 KiB");
        if (json_string_length(v) && set_grammar(r, json_string_value(v), "grammar", err))
            return -EINVAL;
        set += json_string_length(v) > 0;
    }
    if (set > 1)
        return bad(err, "response_format", "give one of response_format, json_schema and "
                                           "grammar");
    if (chat && (v = json_object_get(root, "chat_template_kwargs")) && !json_is_null(v)) {
        if (!json_is_object(v))
            return bad(err, "chat_template_kwargs", "must be an object");
        if (json_object_size(v) && !out->messages)
            return moe_ipc_error_set(err, 400, T_INVALID, "unsupported_parameter",
                                     "chat_template_kwargs", "'chat_template_kwargs' needs the "
                                     "model's own chat template; this server renders chat with "
                                     "a built-in format");
        out->template_kwargs = json_incref(v);
    }
    if (!chat) {
        if ((v = json_object_get(root, "tools")) && !json_is_null(v))
            return moe_ipc_error_set(err, 400, T_INVALID, "unsupported_parameter", "tools",
                                     "'tools' is for /v1/chat/completions");
        return 0;
    }
    return parse_tools(root, r, out, err);
}
