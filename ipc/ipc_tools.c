/* Tool calls read out of a chat reply's text, in the Hermes / Qwen form
 * that ipc_structured.c's grammar enforces (and that such models write
 * unprompted under tool_choice "auto"):
 *     <tool_call>\n{"name": "f", "arguments": {...}}\n</tool_call>
 * The text before the first call stays the message's content. A call that
 * does not parse leaves the whole text as content: nothing is dropped. */
#define _GNU_SOURCE /* memmem */
#include "ipc/ipc_int.h"

#include <stdio.h>
#include <string.h>

#define OPEN "<tool_call>"
#define CLOSE "</tool_call>"

static bool blank(char c)
{
    return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

json_t *moe_ipc_tool_calls(const char *text, size_t len, const char *id_base,
                           size_t *content_len)
{
    const char *p = memmem(text, len, OPEN, strlen(OPEN)), *end = text + len;
    if (!p)
        return NULL;
    size_t before = (size_t)(p - text);
    while (before > 0 && blank(text[before - 1]))
        before--;
    json_t *calls = json_array();
    while (calls && p) {
        p += strlen(OPEN);
        const char *q = memmem(p, (size_t)(end - p), CLOSE, strlen(CLOSE));
        if (!q)
            goto bad;
        json_error_t je;
        json_t *c = json_loadb(p, (size_t)(q - p), JSON_DECODE_ANY, &je);
        json_t *name = json_object_get(c, "name"), *args = json_object_get(c, "arguments");
        if (!json_is_string(name) || !json_is_object(args)) {
            json_decref(c);
            goto bad;
        }
        char *a = json_dumps(args, JSON_COMPACT | JSON_PRESERVE_ORDER);
        char id[96];
        snprintf(id, sizeof(id), "call_%s_%zu", id_base, json_array_size(calls));
        json_t *call = a ? json_pack("{s:s, s:s, s:{s:O, s:s}}", "id", id, "type", "function",
                                     "function", "name", name, "arguments", a)
                         : NULL;
        free(a);
        json_decref(c);
        if (!call || json_array_append_new(calls, call))
            goto bad;
        p = q + strlen(CLOSE);
        while (p < end && blank(*p))
            p++;
        if (p < end && (size_t)(end - p) < strlen(OPEN))
            goto bad; /* something after the last call that is not a call */
        const char *next = memmem(p, (size_t)(end - p), OPEN, strlen(OPEN));
        if (p < end && next != p)
            goto bad;
        p = next;
    }
    if (calls)
        *content_len = before;
    return calls;
bad:
    json_decref(calls);
    return NULL;
}

size_t moe_ipc_tool_hold(const char *text, size_t len)
{
    const char *p = memmem(text, len, OPEN, strlen(OPEN));
    size_t k = len;
    if (p) {
        k = (size_t)(p - text);
    } else { /* the longest tail that could be the start of OPEN */
        for (size_t t = MOE_MIN(len, strlen(OPEN) - 1); t > 0; t--) {
            if (!memcmp(text + len - t, OPEN, t)) {
                k = len - t;
                break;
            }
        }
    }
    while (k > 0 && blank(text[k - 1])) /* blanks before a call are not content */
        k--;
    return k;
}

