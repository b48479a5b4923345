/* Chat templates: messages -> one prompt string, for the two formats the
 * daemon knows. No Jinja: each format is a few lines of C that reproduce
 * what the model's own template renders.
 *
 * ChatML (Qwen, OLMoE-Instruct, OpenHermes ...), with add_generation_prompt:
 *     <|im_start|>{role}\n{content}<|im_end|>\n      for every message
 *     <|im_start|>assistant\n
 *
 * Mistral / Mixtral [INST]: the "v1" template that
 * mistralai/Mixtral-8x7B-Instruct-v0.1 (and Mistral-7B-Instruct-v0.1/v0.2)
 * ship in tokenizer_config.json since their 2024 template revision:
 *
 *     {%- if messages[0]['role'] == 'system' %}
 *         {%- set system_message = messages[0]['content'] %}
 *         {%- set loop_messages = messages[1:] %}
 *     {%- else %} {%- set loop_messages = messages %} {%- endif %}
 *     {{- bos_token }}
 *     {%- for message in loop_messages %}
 *         (user at even positions, assistant at odd ones, else raise_exception)
 *         user:      ' [INST] ' + (system_message + '\n\n' on the first) + content + ' [/INST]'
 *         assistant: ' ' + content + eos_token
 *
 * so [system, user, assistant, user] renders as
 *     {bos} [INST] {system}\n\n{user} [/INST] {assistant}</s> [INST] {user} [/INST]
 * The spaces before [INST] and before an answer are what the model was
 * trained on: Mistral's reference tokenizer encodes every piece ("[INST]",
 * the message, "[/INST]", the answer) separately with a prefix space, which
 * one-pass tokenization of this string reproduces. The first revision of
 * the template (Dec 2023) wrote '[INST] ' and content + eos_token without
 * those spaces and raised on any system message; it is recognised by
 * moe_chat_template_detect as the same format. */
#include "engine/engine.h"

#include "common/common.h"
#include "engine/engine_server.h"

#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

int moe_chat_template_from_name(const char *name, enum moe_chat_template *out)
{
    if (name && !strcmp(name, "chatml")) {
        *out = MOE_CHAT_CHATML;
        return 0;
    }
    if (name && (!strcmp(name, "mistral") || !strcmp(name, "mixtral"))) {
        *out = MOE_CHAT_MISTRAL;
        return 0;
    }
    return moe_err(-EINVAL, "unknown chat template '%s' (known: chatml, mistral)",
                   name ? name : "(null)");
}

/* ---- detection ------------------------------------------------------------------ */

/* What a template's source text says about its format. The Mistral check is
 * narrow on purpose: Llama-2 ("<<SYS>>") also writes [INST], and Mistral's
 * later tokenizers (v3, Tekken: "[INST]" + content + "[/INST]" with no space
 * before [/INST], [SYSTEM_PROMPT] ...) render differently from ours. */
static int classify(const char *t, enum moe_chat_template *out)
{
    if (strstr(t, "<|im_start|>")) {
        *out = MOE_CHAT_CHATML;
        return 0;
    }
    if (strstr(t, "[INST]") && strstr(t, " [/INST]") && !strstr(t, "<<SYS>>") &&
        !strstr(t, "[SYSTEM_PROMPT]")) {
        *out = MOE_CHAT_MISTRAL;
        return 0;
    }
    return -ENOENT;
}

/* chat_template: a string, or a list of {"name", "template"} (the one named
 * "default", else the first) */
static const char *template_text(json_t *ct)
{
    if (json_is_string(ct))
        return json_string_value(ct);
    if (!json_is_array(ct))
        return NULL;
    const char *first = NULL;
    size_t i;
    json_t *e;
    json_array_foreach(ct, i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        const char *text = json_string_value(json_object_get(e, "template"));
        if (!text)
            continue;
        if (name && !strcmp(name, "default"))
            return text;
        if (!first)
            first = text;
    }
    return first;
}

int moe_chat_template_detect(const char *tokenizer_config_path, enum moe_chat_template *out)
{
    char *text = NULL, *jinja_path = NULL, *dir = NULL;
    size_t len;
    json_t *root = NULL;
    int rc = moe_read_text_file(tokenizer_config_path, &text, &len);
    if (rc < 0) {
        if (rc != -ENOENT)
            return rc;
        return moe_err(-ENOENT, "%s: no such file", tokenizer_config_path);
    }
    json_error_t jerr;
    root = json_loadb(text, len, 0, &jerr);
    if (!root) {
        rc = moe_err(-EINVAL, "%s:%d: %s", tokenizer_config_path, jerr.line, jerr.text);
        goto out;
    }
    const char *t = template_text(json_object_get(root, "chat_template"));
    if (t) {
        rc = classify(t, out);
        if (rc < 0)
            moe_err(rc, "%s: chat_template is neither ChatML nor Mistral [INST]",
                    tokenizer_config_path);
        goto out;
    }
    /* transformers >= 4.43 keeps the template beside the config instead */
    dir = strdup(tokenizer_config_path);
    if (!dir) {
        rc = moe_err(-ENOMEM, "out of memory");
        goto out;
    }
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[1] = '\0';
    jinja_path = moe_path_join(slash ? dir : ".", "chat_template.jinja");
    free(text);
    text = NULL;
    if (!jinja_path || moe_read_text_file(jinja_path, &text, &len) < 0) {
        rc = moe_err(-ENOENT, "%s: no chat_template", tokenizer_config_path);
        goto out;
    }
    rc = classify(text, out);
    if (rc < 0)
        moe_err(rc, "%s: neither ChatML nor Mistral [INST]", jinja_path);
out:
    json_decref(root);
    free(text);
    free(dir);
    free(jinja_path);
    return rc;
}

/* ---- rendering ------------------------------------------------------------------- */

struct buf {
    char *p;
    size_t len, cap;
};

static int put(struct buf *b, const char *s)
{
    size_t n = strlen(s);
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return moe_err(-ENOMEM, "out of memory rendering the chat prompt");
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n + 1);
    b->len += n;
    return 0;
}

enum role { R_SYSTEM, R_USER, R_ASSISTANT };

static int role_of(const struct moe_chat_message *m, size_t i, enum role *r)
{
    if (!m->role)
        return moe_err(-EINVAL, "messages[%zu]: no role", i);
    if (!strcmp(m->role, "system"))
        *r = R_SYSTEM;
    else if (!strcmp(m->role, "user"))
        *r = R_USER;
    else if (!strcmp(m->role, "assistant"))
        *r = R_ASSISTANT;
    else
        return moe_err(-EINVAL, "messages[%zu]: unknown role '%s' (system, user or assistant)",
                       i, m->role);
    return 0;
}

static const char *content_of(const struct moe_chat_message *m)
{
    return m->content ? m->content : "";
}

static int render_chatml(const struct moe_chat_message *msgs, size_t n, struct buf *b)
{
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        enum role r;
        if ((rc = role_of(&msgs[i], i, &r)) < 0)
            return rc;
        rc = put(b, "<|im_start|>");
        rc = rc ? rc : put(b, msgs[i].role);
        rc = rc ? rc : put(b, "\n");
        rc = rc ? rc : put(b, content_of(&msgs[i]));
        rc = rc ? rc : put(b, "<|im_end|>\n");
    }
    return rc ? rc : put(b, "<|im_start|>assistant\n");
}

static int render_mistral(const struct moe_chat_message *msgs, size_t n, struct buf *b)
{
    enum role r;
    int rc;
    size_t first = 0;
    const char *system = NULL;
    if ((rc = role_of(&msgs[0], 0, &r)) < 0)
        return rc;
    if (r == R_SYSTEM) {
        system = content_of(&msgs[0]);
        first = 1;
        if (n == 1)
            return moe_err(-EINVAL, "messages[0]: a system message needs a user message after "
                           "it (mistral template)");
    }
    /* check everything before writing anything */
    for (size_t i = first; i < n; i++) {
        if ((rc = role_of(&msgs[i], i, &r)) < 0)
            return rc;
        enum role want = (i - first) % 2 == 0 ? R_USER : R_ASSISTANT;
        if (r == R_SYSTEM)
            return moe_err(-EINVAL, "messages[%zu]: the mistral template takes a system message "
                           "only as the first message", i);
        if (r != want)
            return moe_err(-EINVAL, "messages[%zu]: role '%s' where '%s' was expected: after "
                           "the optional system message, roles must alternate user/assistant "
                           "(mistral template)", i, msgs[i].role,
                           want == R_USER ? "user" : "assistant");
    }
    for (size_t i = first; i < n && !rc; i++) {
        if ((i - first) % 2 == 0) {
            rc = put(b, " [INST] ");
            if (!rc && i == first && system) {
                rc = put(b, system);
                rc = rc ? rc : put(b, "\n\n");
            }
            rc = rc ? rc : put(b, content_of(&msgs[i]));
            rc = rc ? rc : put(b, " [/INST]");
        } else {
            rc = put(b, " ");
            rc = rc ? rc : put(b, content_of(&msgs[i]));
            rc = rc ? rc : put(b, "</s>");
        }
    }
    return rc;
}

int moe_chat_render(enum moe_chat_template t, const struct moe_chat_message *msgs, size_t n,
                    const char *bos, char **out)
{
    *out = NULL;
    if (!msgs || n == 0)
        return moe_err(-EINVAL, "messages: empty list");
    struct buf b = {0};
    int rc = put(&b, bos ? bos : "");
    if (rc < 0)
        return rc;
    switch (t) {
    case MOE_CHAT_CHATML:
        rc = render_chatml(msgs, n, &b);
        break;
    case MOE_CHAT_MISTRAL:
        rc = render_mistral(msgs, n, &b);
        break;
    default:
        rc = moe_err(-EINVAL, "unknown chat template %d", (int)t);
        break;
    }
    if (rc < 0) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    return 0;
}
