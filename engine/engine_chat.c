/* Chat templates: messages -> one prompt string, byte for byte what the
 * model's own template renders (transformers' apply_chat_template with
 * add_generation_prompt=True and the template's default thinking setting).
 * No Jinja: each format is a few lines of C, one row of the table at the end
 * (name, how its template text is recognised, render function). The real
 * templates and transformers' renderings of them are the test vectors in
 * tests/data/chat/.
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
 * moe_chat_template_detect as the same format.
 *
 * The other formats are described above their render functions. Where a
 * template raises for a conversation, moed refuses it (-EINVAL naming the
 * message); where a template silently drops a message (a later system
 * message in gpt-oss or MiniMax-M2), so does moed, as that is what the model
 * was trained to see. */
#define _GNU_SOURCE /* memmem */
#include "engine/engine.h"

#include "common/common.h"
#include "engine/engine_server.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- text helpers ------------------------------------------------------------------- */

/* The prompt grows in a moe_sbuf: running out of memory is checked once,
 * after rendering. */

/* puts every string up to the NULL */
static void put_all(struct moe_sbuf *b, ...)
{
    va_list ap;
    va_start(ap, b);
    for (const char *s; (s = va_arg(ap, const char *));)
        moe_sbuf_puts(b, s);
    va_end(ap);
}
#define PUT(b, ...) put_all((b), __VA_ARGS__, (const char *)NULL)

/* a piece of a message's text; the Python string operations the templates
 * apply to content, on UTF-8 bytes */
struct sv {
    const char *p;
    size_t n;
};

static struct sv sv_of(const char *s)
{
    return (struct sv){s ? s : "", s ? strlen(s) : 0};
}

static void put_sv(struct moe_sbuf *b, struct sv s)
{
    moe_sbuf_put(b, s.p, s.n);
}

/* offset of the first / last occurrence of needle, or -1 */
static ptrdiff_t sv_find(struct sv s, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= s.n; i++)
        if (!memcmp(s.p + i, needle, k))
            return (ptrdiff_t)i;
    return -1;
}

static ptrdiff_t sv_rfind(struct sv s, const char *needle)
{
    size_t k = strlen(needle);
    if (k > s.n)
        return -1;
    for (size_t i = s.n - k + 1; i-- > 0;)
        if (!memcmp(s.p + i, needle, k))
            return (ptrdiff_t)i;
    return -1;
}

static bool sv_has(struct sv s, const char *needle)
{
    return sv_find(s, needle) >= 0;
}

/* s.split(sep)[0] and s.split(sep)[-1] */
static struct sv sv_before_first(struct sv s, const char *sep)
{
    ptrdiff_t i = sv_find(s, sep);
    return i < 0 ? s : (struct sv){s.p, (size_t)i};
}

static struct sv sv_after_last(struct sv s, const char *sep)
{
    ptrdiff_t i = sv_rfind(s, sep);
    if (i < 0)
        return s;
    size_t at = (size_t)i + strlen(sep);
    return (struct sv){s.p + at, s.n - at};
}

/* s.split(sep, 1)[1] (s holds sep) */
static struct sv sv_after_first(struct sv s, const char *sep)
{
    ptrdiff_t i = sv_find(s, sep);
    if (i < 0)
        return s;
    size_t at = (size_t)i + strlen(sep);
    return (struct sv){s.p + at, s.n - at};
}

/* s.lstrip('\n'), s.rstrip('\n'), s.strip('\n') */
static struct sv sv_lstrip_nl(struct sv s)
{
    while (s.n && s.p[0] == '\n')
        s.p++, s.n--;
    return s;
}

static struct sv sv_rstrip_nl(struct sv s)
{
    while (s.n && s.p[s.n - 1] == '\n')
        s.n--;
    return s;
}

static struct sv sv_strip_nl(struct sv s)
{
    return sv_rstrip_nl(sv_lstrip_nl(s));
}

/* Python's str.isspace() for one code point */


/* s.strip(): Python's whitespace, Unicode included */
static struct sv sv_strip_py(struct sv s)
{
    size_t len;
    while (s.n && moe_py_space(moe_utf8_next(s.p, s.n, &len)))
        s.p += len, s.n -= len;
    while (s.n) {
        size_t start = s.n - 1;
        while (start > 0 && ((unsigned char)s.p[start] & 0xc0) == 0x80 && s.n - start < 4)
            start--;
        uint32_t c = moe_utf8_next(s.p + start, s.n - start, &len);
        if (start + len != s.n) /* not one whole character: the last byte alone */
            start = s.n - 1, c = 0xfffd;
        if (!moe_py_space(c))
            break;
        s.n = start;
    }
    return s;
}

/* ---- messages ------------------------------------------------------------------------ */

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

static struct sv text_of(const struct moe_chat_message *m)
{
    return sv_of(m->content);
}

struct chat_format;

/* what one render call needs besides the messages */
struct ctx {
    const struct moe_chat_message *m;
    size_t n;
    const enum role *r; /* each message's role, checked */
    const char *bos;    /* "" when the tokenizer adds BOS itself */
    const char *date;   /* YYYY-MM-DD */
    const struct chat_format *f;
};

/* 0, or -EINVAL (message set) for a conversation the format cannot take */
typedef int (*render_fn)(const struct ctx *c, struct moe_sbuf *b);

/* One chat format: a row of the table at the end. A template text is this
 * format when it holds every mark ('\x1f' separates spellings of one mark:
 * the same template can carry "\n" as an escape or as a newline) and none of
 * the absent strings. */
struct chat_format {
    const char *name;
    const char *marks[8];
    const char *absent[4];
    render_fn render;
    const void *style; /* render's parameters, where one function serves several rows */
};

/* ---- ChatML, Mistral ----------------------------------------------------------------- */

/* One turn after another, each its role's head, its content and its
 * role's tail, then the generation prompt: ChatML, DeepSeek-V2, Kimi-K2 and
 * ERNIE-4.5, differing only in these strings. */
struct turns_style {
    const char *start;          /* NULL: the BOS text */
    const char *default_system; /* written when the first message is no system one */
    const char *head[3], *tail[3]; /* by role */
    const char *gen;
};

static int render_turns(const struct ctx *c, struct moe_sbuf *b)
{
    const struct turns_style *st = c->f->style;
    moe_sbuf_puts(b, st->start ? st->start : c->bos);
    if (st->default_system && c->r[0] != R_SYSTEM)
        moe_sbuf_puts(b, st->default_system);
    for (size_t i = 0; i < c->n; i++)
        PUT(b, st->head[c->r[i]], content_of(&c->m[i]), st->tail[c->r[i]]);
    moe_sbuf_puts(b, st->gen);
    return 0;
}

#define IM_START "<|im_start|>"
static const struct turns_style chatml = {
    NULL, NULL, {IM_START "system\n", IM_START "user\n", IM_START "assistant\n"},
    {"<|im_end|>\n", "<|im_end|>\n", "<|im_end|>\n"}, IM_START "assistant\n"};

static int render_mistral(const struct ctx *c, struct moe_sbuf *b)
{
    size_t first = 0, n = c->n;
    const char *system = NULL;
    if (c->r[0] == R_SYSTEM) {
        system = content_of(&c->m[0]);
        first = 1;
        if (n == 1)
            return moe_err(-EINVAL, "messages[0]: a system message needs a user message after "
                           "it (mistral template)");
    }
    /* check everything before writing anything */
    for (size_t i = first; i < n; i++) {
        enum role want = (i - first) % 2 == 0 ? R_USER : R_ASSISTANT;
        if (c->r[i] == R_SYSTEM)
            return moe_err(-EINVAL, "messages[%zu]: the mistral template takes a system message "
                           "only as the first message", i);
        if (c->r[i] != want)
            return moe_err(-EINVAL, "messages[%zu]: role '%s' where '%s' was expected: after "
                           "the optional system message, roles must alternate user/assistant "
                           "(mistral template)", i, c->m[i].role,
                           want == R_USER ? "user" : "assistant");
    }
    moe_sbuf_puts(b, c->bos);
    for (size_t i = first; i < n; i++) {
        if ((i - first) % 2 == 0)
            PUT(b, " [INST] ", i == first && system ? system : "",
                i == first && system ? "\n\n" : "", content_of(&c->m[i]), " [/INST]");
        else
            PUT(b, " ", content_of(&c->m[i]), "</s>");
    }
    return 0;
}

/* ---- Qwen3 ----------------------------------------------------------------------------
 * ChatML, but assistant turns lose their "<think>...</think>" part, except
 * those after the last real user query (a user message that is not a
 * "<tool_response>...</tool_response>"), which keep it as
 * "<think>\n{reasoning}\n</think>\n\n{answer}" (the last message always gets
 * that block, empty if it had none). A reasoning_content field takes the
 * place of the <think> part. The first message, when a system one, opens
 * the prompt; later system messages stay where they are. */

/* the assistant text split the way Qwen3, GLM-4.5 and MiniMax-M2 split it:
 * answer = after the last </think>, reasoning = before the first one, after
 * the last <think> in it; strip_nl: strip('\n') both (MiniMax), else
 * reasoning.rstrip/lstrip and answer.lstrip as Qwen3 and GLM do */
static void split_think(struct sv text, bool strip_nl, struct sv *reasoning, struct sv *answer)
{
    struct sv before = sv_before_first(text, "</think>"), after = sv_after_last(text, "</think>");
    if (strip_nl) {
        *reasoning = sv_strip_nl(sv_after_last(sv_strip_nl(before), "<think>"));
        *answer = sv_strip_nl(after);
    } else {
        *reasoning = sv_lstrip_nl(sv_after_last(sv_rstrip_nl(before), "<think>"));
        *answer = sv_lstrip_nl(after);
    }
}

/* reasoning and answer of an assistant message: reasoning_content when
 * given (the content then stays whole), else split out of the content */
static void reasoning_of(const struct moe_chat_message *m, bool strip_nl, struct sv *reasoning,
                         struct sv *answer)
{
    *answer = text_of(m);
    *reasoning = sv_of("");
    if (m->reasoning_content)
        *reasoning = sv_of(m->reasoning_content);
    else if (sv_has(*answer, "</think>"))
        split_think(*answer, strip_nl, reasoning, answer);
}

/* Qwen3.5: every content trimmed (Jinja's |trim); an answer's reasoning is
 * its reasoning_content or what stands before "</think>"; answers after the
 * last user query carry their (possibly empty) <think> block, earlier ones
 * only the answer; thinking is on, so the prompt ends "<think>\n". */
static int render_qwen35(const struct ctx *c, struct moe_sbuf *b)
{
    size_t n = c->n, last_query = SIZE_MAX;
    for (size_t i = n; i-- > 0 && last_query == SIZE_MAX;) {
        struct sv t = sv_strip_py(text_of(&c->m[i]));
        bool tool_response = t.n >= strlen("<tool_response>") + strlen("</tool_response>") &&
                             !memcmp(t.p, "<tool_response>", strlen("<tool_response>")) &&
                             sv_rfind(t, "</tool_response>") ==
                                 (ptrdiff_t)(t.n - strlen("</tool_response>"));
        if (c->r[i] == R_USER && !tool_response)
            last_query = i;
    }
    if (last_query == SIZE_MAX)
        return moe_err(-EINVAL, "messages[%zu]: the qwen3.5 template needs a user query, and "
                       "no message is one", n - 1);
    for (size_t i = 0; i < n; i++) {
        struct sv content = sv_strip_py(text_of(&c->m[i]));
        if (c->r[i] == R_SYSTEM && i > 0)
            return moe_err(-EINVAL, "messages[%zu]: the qwen3.5 template takes a system message "
                           "only at the beginning", i);
        if (c->r[i] != R_ASSISTANT) {
            PUT(b, chatml.head[c->r[i]]);
            put_sv(b, content);
            moe_sbuf_puts(b, chatml.tail[c->r[i]]);
            continue;
        }
        struct sv reasoning = sv_of("");
        if (c->m[i].reasoning_content) {
            reasoning = sv_of(c->m[i].reasoning_content);
        } else if (sv_has(content, "</think>")) {
            reasoning = sv_lstrip_nl(
                sv_after_last(sv_rstrip_nl(sv_before_first(content, "</think>")), "<think>"));
            content = sv_lstrip_nl(sv_after_last(content, "</think>"));
        }
        reasoning = sv_strip_py(reasoning);
        moe_sbuf_puts(b, chatml.head[R_ASSISTANT]);
        if (i > last_query) {
            moe_sbuf_puts(b, "<think>\n");
            put_sv(b, reasoning);
            moe_sbuf_puts(b, "\n</think>\n\n");
        }
        put_sv(b, content);
        moe_sbuf_puts(b, chatml.tail[R_ASSISTANT]);
    }
    PUT(b, chatml.gen, "<think>\n");
    return 0;
}

static int render_qwen3(const struct ctx *c, struct moe_sbuf *b)
{
    size_t n = c->n, last_query = n - 1;
    for (size_t i = n; i-- > 0;) {
        struct sv t = text_of(&c->m[i]);
        bool tool_response = t.n >= strlen("<tool_response>") + strlen("</tool_response>") &&
                             !memcmp(t.p, "<tool_response>", strlen("<tool_response>")) &&
                             sv_rfind(t, "</tool_response>") ==
                                 (ptrdiff_t)(t.n - strlen("</tool_response>"));
        if (c->r[i] == R_USER && !tool_response) {
            last_query = i;
            break;
        }
    }
    if (c->r[0] == R_SYSTEM)
        PUT(b, chatml.head[R_SYSTEM], content_of(&c->m[0]), chatml.tail[R_SYSTEM]);
    for (size_t i = 0; i < n; i++) {
        if (c->r[i] == R_USER || (c->r[i] == R_SYSTEM && i > 0)) {
            PUT(b, chatml.head[c->r[i]], content_of(&c->m[i]), chatml.tail[c->r[i]]);
            continue;
        }
        if (c->r[i] != R_ASSISTANT)
            continue;
        struct sv reasoning, answer;
        reasoning_of(&c->m[i], false, &reasoning, &answer);
        moe_sbuf_puts(b, chatml.head[R_ASSISTANT]);
        if (i > last_query && (i == n - 1 || reasoning.n)) {
            moe_sbuf_puts(b, "<think>\n");
            put_sv(b, sv_strip_nl(reasoning));
            moe_sbuf_puts(b, "\n</think>\n\n");
            answer = sv_lstrip_nl(answer);
        }
        put_sv(b, answer);
        moe_sbuf_puts(b, chatml.tail[R_ASSISTANT]);
    }
    moe_sbuf_puts(b, chatml.gen);
    return 0;
}

/* ---- DeepSeek V3 / R1 / V3.1 ----------------------------------------------------------
 * {bos}{system}<｜User｜>{user}<｜Assistant｜>{answer}<｜end▁of▁sentence｜>...<｜Assistant｜>
 * with the system text first (all system messages joined by "\n\n", or only
 * the last one), and, by template:
 *   V3:          answers kept whole; generation prompt "<｜Assistant｜>"
 *   R1 (first):  answers keep what follows their last "</think>"
 *   R1-Distill:  the last system message only; generation prompt "<｜Assistant｜><think>\n"
 *                (llama.cpp's copy of the Qwen-32B one closes it: "<think>\n</think>")
 *   llama.cpp's R1: also <｜end▁of▁sentence｜> after each user message; an empty
 *                answer is rendered as an empty tool-call block
 *   V3.1:        an answer opens with "<｜Assistant｜><think></think>" only right after
 *                a user message and keeps what follows its first "</think>"; the
 *                generation prompt "<｜Assistant｜><think></think>" only follows a user
 *                message (after an assistant one there is none). */

#define DS_USER "<｜User｜>"
#define DS_ASSISTANT "<｜Assistant｜>"
#define DS_EOS "<｜end▁of▁sentence｜>"

enum ds_think { THINK_KEEP, THINK_AFTER_LAST, THINK_AFTER_FIRST };

struct ds_style {
    bool all_systems;   /* every system message, joined by "\n\n"; else the last */
    bool user_eos;      /* EOS after each user message */
    enum ds_think think;
    bool after_user;    /* V3.1 */
    bool empty_as_tool; /* an empty answer renders as an empty tool-call block */
    const char *gen;    /* the generation prompt */
};

static const struct ds_style ds_v3 = {true, false, THINK_KEEP, false, false, DS_ASSISTANT};
static const struct ds_style ds_r1 = {true, false, THINK_AFTER_LAST, false, false, DS_ASSISTANT};
static const struct ds_style ds_r1_distill = {false, false, THINK_AFTER_LAST, false, false,
                                              DS_ASSISTANT "<think>\n"};
static const struct ds_style ds_r1_distill_qwen = {false, false, THINK_AFTER_LAST, false, false,
                                                   DS_ASSISTANT "<think>\n</think>"};
static const struct ds_style ds_r1_llamacpp = {false, true, THINK_AFTER_LAST, false, true,
                                               DS_ASSISTANT "<think>\n"};
static const struct ds_style ds_v31 = {true, false, THINK_AFTER_FIRST, true, false,
                                       DS_ASSISTANT "<think></think>"};

static int render_deepseek(const struct ctx *c, struct moe_sbuf *b)
{
    const struct ds_style *st = c->f->style;
    bool last_user = false, first = true;
    moe_sbuf_puts(b, c->bos);
    for (size_t i = 0; i < c->n; i++) /* the system text */
        if (c->r[i] == R_SYSTEM && st->all_systems) {
            PUT(b, first ? "" : "\n\n", content_of(&c->m[i]));
            first = false;
        }
    for (size_t i = c->n; i-- > 0 && !st->all_systems;)
        if (c->r[i] == R_SYSTEM) {
            moe_sbuf_puts(b, content_of(&c->m[i]));
            break;
        }
    for (size_t i = 0; i < c->n; i++) {
        if (c->r[i] == R_USER) {
            PUT(b, DS_USER, content_of(&c->m[i]), st->user_eos ? DS_EOS : "");
            last_user = true;
        } else if (c->r[i] == R_ASSISTANT) {
            struct sv answer = text_of(&c->m[i]);
            if (st->empty_as_tool && answer.n == 0) {
                moe_sbuf_puts(b, DS_ASSISTANT "<｜tool▁calls▁begin｜><｜tool▁calls▁end｜>" DS_EOS);
                continue;
            }
            if (st->think == THINK_AFTER_LAST)
                answer = sv_after_last(answer, "</think>");
            else if (st->think == THINK_AFTER_FIRST)
                answer = sv_after_first(answer, "</think>");
            if (!st->after_user || last_user)
                moe_sbuf_puts(b, st->after_user ? DS_ASSISTANT "<think></think>" : DS_ASSISTANT);
            last_user = false;
            put_sv(b, answer);
            moe_sbuf_puts(b, DS_EOS);
        }
    }
    if (!st->after_user || last_user)
        moe_sbuf_puts(b, st->gen);
    return 0;
}

/* ---- DeepSeek-V2 / V2-Lite ------------------------------------------------------------
 * {bos}{system}\n\nUser: {user}\n\nAssistant: {answer}<｜end▁of▁sentence｜>...Assistant:
 * every message where it stands. */
static const struct turns_style deepseek_v2 = {
    NULL, NULL, {"", "User: ", "Assistant: "}, {"\n\n", "\n\n", DS_EOS}, "Assistant:"};

/* ---- Kimi-K2 ---------------------------------------------------------------------------
 * <|im_system|>system<|im_middle|>{system}<|im_end|><|im_user|>user<|im_middle|>{user}
 * <|im_end|><|im_assistant|>assistant<|im_middle|>{answer}<|im_end|>...
 * <|im_assistant|>assistant<|im_middle|>, with "You are a helpful assistant" as the
 * system text when the first message is not a system one; answers kept whole. */
static const struct turns_style kimi_k2 = {
    "", "<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>",
    {"<|im_system|>system<|im_middle|>", "<|im_user|>user<|im_middle|>",
     "<|im_assistant|>assistant<|im_middle|>"},
    {"<|im_end|>", "<|im_end|>", "<|im_end|>"}, "<|im_assistant|>assistant<|im_middle|>"};

/* ---- GLM-4.5 / 4.6 ---------------------------------------------------------------------
 * [gMASK]<sop><|system|>\n{system}<|user|>\n{user}<|assistant|>\n<think></think>\n{answer}
 * ...<|assistant|>. An answer is stripped of Python whitespace (and written
 * only if something is left) and loses its <think> part, except after the
 * last user message, where "\n<think>{reasoning, stripped}</think>" replaces
 * "\n<think></think>". */
static int render_glm45(const struct ctx *c, struct moe_sbuf *b)
{
    size_t last_user = SIZE_MAX;
    for (size_t i = 0; i < c->n; i++)
        if (c->r[i] == R_USER)
            last_user = i;
    moe_sbuf_puts(b, "[gMASK]<sop>");
    for (size_t i = 0; i < c->n; i++) {
        if (c->r[i] == R_USER) {
            PUT(b, "<|user|>\n", content_of(&c->m[i]));
        } else if (c->r[i] == R_SYSTEM) {
            PUT(b, "<|system|>\n", content_of(&c->m[i]));
        } else {
            struct sv reasoning, answer;
            reasoning_of(&c->m[i], false, &reasoning, &answer);
            moe_sbuf_puts(b, "<|assistant|>");
            if ((last_user == SIZE_MAX || i > last_user) && reasoning.n) {
                moe_sbuf_puts(b, "\n<think>");
                put_sv(b, sv_strip_py(reasoning));
                moe_sbuf_puts(b, "</think>");
            } else {
                moe_sbuf_puts(b, "\n<think></think>");
            }
            answer = sv_strip_py(answer);
            if (answer.n) {
                moe_sbuf_puts(b, "\n");
                put_sv(b, answer);
            }
        }
    }
    moe_sbuf_puts(b, "<|assistant|>");
    return 0;
}

/* ---- gpt-oss (harmony) -------------------------------------------------------------------
 * <|start|>system<|message|>{the template's system text, dated}<|end|>
 * <|start|>developer<|message|># Instructions\n\n{system}\n\n<|end|>  (a first system message
 *                                                                  that is not empty)
 * <|start|>user<|message|>{user}<|end|>
 * <|start|>assistant<|channel|>final<|message|>{answer}<|end|>
 * ...<|start|>assistant
 * Later system messages are dropped, as the template drops them; an answer
 * that holds a channel header is refused, as the template raises on it. */
static int render_gpt_oss(const struct ctx *c, struct moe_sbuf *b)
{
    size_t first = c->r[0] == R_SYSTEM ? 1 : 0;
    for (size_t i = first; i < c->n; i++) {
        struct sv t = text_of(&c->m[i]);
        if (c->r[i] == R_ASSISTANT && (sv_has(t, "<|channel|>analysis<|message|>") ||
                                       sv_has(t, "<|channel|>final<|message|>")))
            return moe_err(-EINVAL, "messages[%zu]: the content holds a <|channel|> header, "
                           "which the gpt-oss template refuses: give only the final answer's "
                           "text", i);
    }
    PUT(b, "<|start|>system<|message|>You are ChatGPT, a large language model trained "
                 "by OpenAI.\nKnowledge cutoff: 2024-06\nCurrent date: ", c->date,
                 "\n\nReasoning: medium\n\n# Valid channels: analysis, commentary, final. "
                 "Channel must be included for every message.<|end|>");
    if (first && content_of(&c->m[0])[0])
        PUT(b, "<|start|>developer<|message|># Instructions\n\n", content_of(&c->m[0]),
            "\n\n<|end|>");
    for (size_t i = first; i < c->n; i++) {
        if (c->r[i] == R_USER)
            PUT(b, "<|start|>user<|message|>", content_of(&c->m[i]), "<|end|>");
        else if (c->r[i] == R_ASSISTANT)
            PUT(b, "<|start|>assistant<|channel|>final<|message|>", content_of(&c->m[i]),
                "<|end|>");
    }
    moe_sbuf_puts(b, "<|start|>assistant");
    return 0;
}

/* ---- MiniMax-M2 ----------------------------------------------------------------------------
 * ]~!b[]~b]system\n{system, or "You are a helpful assistant."}[e~[\n
 * ]~b]user\n{user}[e~[\n]~b]ai\n{answer}[e~[\n...]~b]ai\n<think>\n
 * The system text is the first message's when that is a system message with
 * content; later system messages are dropped, as the template drops them.
 * Answers lose their <think> part (both parts strip('\n')'d), except after
 * the last user message: "<think>\n{reasoning}\n</think>\n\n{answer}". */
static int render_minimax_m2(const struct ctx *c, struct moe_sbuf *b)
{
    size_t first = c->r[0] == R_SYSTEM ? 1 : 0, last_user = SIZE_MAX;
    for (size_t i = first; i < c->n; i++)
        if (c->r[i] == R_USER)
            last_user = i;
    const char *system = first && content_of(&c->m[0])[0] ? content_of(&c->m[0])
                                                           : "You are a helpful assistant.";
    PUT(b, "]~!b[]~b]system\n", system, "[e~[\n");
    for (size_t i = first; i < c->n; i++) {
        if (c->r[i] == R_USER) {
            PUT(b, "]~b]user\n", content_of(&c->m[i]), "[e~[\n");
        } else if (c->r[i] == R_ASSISTANT) {
            struct sv reasoning, answer;
            reasoning_of(&c->m[i], true, &reasoning, &answer);
            moe_sbuf_puts(b, "]~b]ai\n");
            if (reasoning.n && (last_user == SIZE_MAX || i > last_user)) {
                moe_sbuf_puts(b, "<think>\n");
                put_sv(b, reasoning);
                moe_sbuf_puts(b, "\n</think>\n\n");
            }
            put_sv(b, answer);
            moe_sbuf_puts(b, "[e~[\n");
        }
    }
    moe_sbuf_puts(b, "]~b]ai\n<think>\n");
    return 0;
}

/* ---- ERNIE-4.5 -------------------------------------------------------------------------------
 * <|begin_of_sentence|>{system}\nUser: {user}\nAssistant: {answer}<|end_of_sentence|>
 * ...Assistant: (every message where it stands; answers kept whole) */
static const struct turns_style ernie45 = {
    "<|begin_of_sentence|>", NULL, {"", "User: ", "Assistant: "},
    {"\n", "\n", "<|end_of_sentence|>"}, "Assistant: "};

/* ---- the formats ------------------------------------------------------------------------ */

#define OR "\x1f"

static const struct chat_format formats[MOE_CHAT_COUNT] = {
    [MOE_CHAT_CHATML] = {"chatml", {"<|im_start|>"}, {NULL}, render_turns, &chatml},
    /* narrow on purpose: Llama-2 ("<<SYS>>") also writes [INST], and Mistral's
     * later tokenizers (v3, Tekken: "[INST]" + content + "[/INST]" with no space
     * before [/INST], [SYSTEM_PROMPT] ...) render differently from ours */
    [MOE_CHAT_MISTRAL] = {"mistral", {"[INST]", " [/INST]"}, {"<<SYS>>", "[SYSTEM_PROMPT]"},
                          render_mistral, NULL},
    [MOE_CHAT_QWEN3] = {"qwen3",
                        {"<|im_start|>", "last_query_index",
                         "'\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + "
                         "content.lstrip('\\n')",
                         "{%- if loop.last or (not loop.last and reasoning_content) %}",
                         "message.content.startswith('<tool_response>') and "
                         "message.content.endswith('</tool_response>')"},
                        {"bos_token"}, render_qwen3, NULL},
    [MOE_CHAT_DEEPSEEK_V2] = {"deepseek-v2",
                              {"{{ 'User: ' + message['content'] + '\\n\\n' }}" OR
                               "{{ 'User: ' + message['content'] + '\n\n' }}",
                               "{{ 'Assistant: ' + message['content'] + eos_token }}",
                               "{{ message['content'] + '\\n\\n' }}" OR
                               "{{ message['content'] + '\n\n' }}",
                               "{{ 'Assistant:' }}", "bos_token"},
                              {NULL}, render_turns, &deepseek_v2},
    [MOE_CHAT_DEEPSEEK_V3] = {"deepseek-v3",
                              {DS_USER, "is_first_sp",
                               "{{'" DS_ASSISTANT "' + message['content'] + '" DS_EOS "'}}",
                               "{{'" DS_ASSISTANT "'}}{% endif %}", "bos_token"},
                              {"</think>", "is_last_user"}, render_deepseek, &ds_v3},
    [MOE_CHAT_DEEPSEEK_R1] = {"deepseek-r1",
                              {DS_USER, "is_first_sp", "content.split('</think>')[-1]",
                               "{{'" DS_ASSISTANT "' + content + '" DS_EOS "'}}",
                               "{{'" DS_ASSISTANT "'}}{% endif %}", "bos_token"},
                              {"is_last_user"}, render_deepseek, &ds_r1},
    [MOE_CHAT_DEEPSEEK_R1_DISTILL] = {"deepseek-r1-distill",
                                      {DS_USER, "ns.system_prompt = message['content']",
                                       "content.split('</think>')[-1]",
                                       "{{'" DS_ASSISTANT "' + content + '" DS_EOS "'}}",
                                       "{{'" DS_ASSISTANT "<think>\\n'}}" OR
                                       "{{'" DS_ASSISTANT "<think>\n'}}",
                                       "bos_token"},
                                      {"is_first_sp", "enable_thinking",
                                       "'" DS_USER "' + message['content'] + '" DS_EOS "'"},
                                      render_deepseek, &ds_r1_distill},
    [MOE_CHAT_DEEPSEEK_R1_DISTILL_QWEN] = {
        "deepseek-r1-distill-qwen",
        {DS_USER, "ns.system_prompt = message['content']", "content.split('</think>')[-1]",
         "{{'" DS_ASSISTANT "' + content + '" DS_EOS "'}}",
         "{{'" DS_ASSISTANT "<think>\\n'}}{% if not enable_thinking %}{{- '</think>' -}}"
         "{% endif %}",
         "bos_token"},
        {"is_first_sp", "'" DS_USER "' + message['content'] + '" DS_EOS "'"},
        render_deepseek, &ds_r1_distill_qwen},
    [MOE_CHAT_DEEPSEEK_R1_LLAMACPP] = {
        "deepseek-r1-llamacpp",
        {"'" DS_USER "' + message['content'] + '" DS_EOS "'",
         "ns.system_prompt = message['content']", "content.split('</think>')[-1]",
         "not message['content']", "'" DS_ASSISTANT "' + content + '" DS_EOS "'",
         "'" DS_ASSISTANT "<think>\\n'" OR "'" DS_ASSISTANT "<think>\n'", "bos_token"},
        {"is_first_sp", "enable_thinking"},
        render_deepseek, &ds_r1_llamacpp},
    [MOE_CHAT_DEEPSEEK_V31] = {"deepseek-v3.1",
                               {DS_USER, "is_first_sp", "is_last_user",
                                "content.split('</think>', 1)[1]",
                                "{{'" DS_ASSISTANT "'}}", "{{'<think></think>'}}",
                                "{%- if not thinking -%}{{'<think></think>'}}", "bos_token"},
                               {NULL}, render_deepseek, &ds_v31},
    [MOE_CHAT_KIMI_K2] = {"kimi-k2",
                          {"<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>",
                           "<|im_user|>user<|im_middle|>",
                           "<|im_assistant|>assistant<|im_middle|>",
                           "{{ message['content'] }}"},
                          {"role_name", "<think>", "reasoning_content"}, render_turns, &kimi_k2},
    [MOE_CHAT_GLM45] = {"glm-4.5",
                        {"[gMASK]<sop>", "<|assistant|>", "last_user_index",
                         "'\\n<think>' + reasoning_content.strip() +  '</think>'",
                         "'\\n<think></think>'", "'\\n' + content.strip()",
                         "enable_thinking is defined and not enable_thinking"},
                        {NULL}, render_glm45, NULL},
    [MOE_CHAT_GPT_OSS] = {"gpt-oss",
                          {"\"You are ChatGPT, a large language model trained by OpenAI.\"",
                           "\"Knowledge cutoff: 2024-06\\n\"",
                           "\"Current date: \" + strftime_now(\"%Y-%m-%d\") + \"\\n\\n\"",
                           "{%- set reasoning_effort = \"medium\" %}",
                           "\"# Valid channels: analysis, commentary, final. Channel must be "
                           "included for every message.\"",
                           "\"# Instructions\\n\\n\"",
                           "\"<|start|>assistant<|channel|>final<|message|>\" + message.content "
                           "+ \"<|end|>\"",
                           "<|start|>user<|message|>\" + message.content + \"<|end|>\""},
                          {NULL}, render_gpt_oss, NULL},
    [MOE_CHAT_MINIMAX_M2] = {"minimax-m2",
                             {"']~!b[' ~ ']~b]system' ~ '\\n'",
                              "\"You are a helpful assistant.\"", "last_user_index",
                              "'<think>' ~ '\\n' ~ reasoning_content ~ '\\n' ~ '</think>' ~ "
                              "'\\n\\n'",
                              "content.split('</think>')[-1].strip('\\n')",
                              "']~b]ai' ~ '\\n' ~ '<think>' ~ '\\n'",
                              "']~b]user' ~ '\\n'"},
                             {NULL}, render_minimax_m2, NULL},
    [MOE_CHAT_ERNIE45] = {"ernie-4.5",
                          {"{%- set cls_token = \"<|begin_of_sentence|>\" -%}",
                           "{%- set sep_token = \"<|end_of_sentence|>\" -%}",
                           "\"User: \" + message[\"content\"] + \"\n\"" OR
                           "\"User: \" + message[\"content\"] + \"\\n\"",
                           "\"Assistant: \" + message[\"content\"] + sep_token",
                           "{{- \"Assistant: \" -}}"},
                          {"<think>", "image"}, render_turns, &ernie45},
    [MOE_CHAT_QWEN35] = {"qwen3.5",
                         {"<|im_start|>", "ns.last_query_index", "<|vision_start|>",
                          "render_content(message.content, true)|trim",
                          "'\\n<think>\\n' + reasoning_content + '\\n</think>\\n\\n' + content",
                          "{{- '<think>\\n' }}"},
                         {"bos_token"}, render_qwen35, NULL},
};

/* the order detection tries them in: the specific ones before plain ChatML */
static const enum moe_chat_template detect_order[] = {
    MOE_CHAT_QWEN3,           MOE_CHAT_DEEPSEEK_V2,          MOE_CHAT_DEEPSEEK_V3,
    MOE_CHAT_DEEPSEEK_R1,     MOE_CHAT_DEEPSEEK_R1_DISTILL,  MOE_CHAT_DEEPSEEK_R1_DISTILL_QWEN,
    MOE_CHAT_DEEPSEEK_R1_LLAMACPP, MOE_CHAT_DEEPSEEK_V31,    MOE_CHAT_KIMI_K2,
    MOE_CHAT_GLM45,           MOE_CHAT_GPT_OSS,              MOE_CHAT_MINIMAX_M2,
    MOE_CHAT_ERNIE45,         MOE_CHAT_QWEN35,               MOE_CHAT_CHATML,
    MOE_CHAT_MISTRAL,
};
_Static_assert(MOE_ARRAY_SIZE(detect_order) == MOE_CHAT_COUNT, "every format is tried");

const char *moe_chat_template_name(enum moe_chat_template t)
{
    return (unsigned)t < MOE_CHAT_COUNT ? formats[t].name : "(unknown)";
}

/* "chatml, mistral, ..." into buf (a buffer of each caller's: threads may ask at once) */
static const char *known_names(char *buf, size_t cap)
{
    buf[0] = '\0';
    for (size_t k = 0; k < MOE_CHAT_COUNT; k++)
        snprintf(buf + strlen(buf), cap - strlen(buf), "%s%s", k ? ", " : "", formats[k].name);
    return buf;
}

int moe_chat_template_from_name(const char *name, enum moe_chat_template *out)
{
    for (size_t k = 0; name && k < MOE_CHAT_COUNT; k++)
        if (!strcmp(name, formats[k].name)) {
            *out = (enum moe_chat_template)k;
            return 0;
        }
    if (name && !strcmp(name, "mixtral")) {
        *out = MOE_CHAT_MISTRAL;
        return 0;
    }
    char names[512];
    return moe_err(-EINVAL, "unknown chat template '%s' (known: %s)", name ? name : "(null)",
                   known_names(names, sizeof(names)));
}

/* ---- detection ------------------------------------------------------------------ */

/* one mark: any of its '\x1f'-separated spellings occurs in t */
static bool has_mark(const char *t, const char *mark)
{
    size_t tn = strlen(t);
    for (const char *s = mark;;) {
        const char *e = strchr(s, '\x1f');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (memmem(t, tn, s, n))
            return true;
        if (!e)
            return false;
        s = e + 1;
    }
}

int moe_chat_template_classify(const char *text, enum moe_chat_template *out)
{
    for (size_t k = 0; text && k < MOE_ARRAY_SIZE(detect_order); k++) {
        const struct chat_format *f = &formats[detect_order[k]];
        bool ok = true;
        for (size_t j = 0; ok && j < MOE_ARRAY_SIZE(f->marks) && f->marks[j]; j++)
            ok = has_mark(text, f->marks[j]);
        for (size_t j = 0; ok && j < MOE_ARRAY_SIZE(f->absent) && f->absent[j]; j++)
            ok = !strstr(text, f->absent[j]);
        if (ok) {
            *out = detect_order[k];
            return 0;
        }
    }
    char names[512];
    return moe_err(-ENOENT, "the chat template is none of moed's chat formats (%s)",
                   known_names(names, sizeof(names)));
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

char *moe_chat_template_of_config(const char *json, size_t len)
{
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    const char *t = template_text(json_object_get(root, "chat_template"));
    char *out = t ? strdup(t) : NULL;
    json_decref(root);
    return out;
}

int moe_chat_template_read(const char *tokenizer_config_path, char **text, const char **where)
{
    *text = NULL;
    /* transformers >= 4.43 may keep it beside the config, and 5 writes it there */
    char *dir = strdup(tokenizer_config_path), *jinja_path = NULL, *cfg = NULL;
    if (!dir)
        return moe_err(-ENOMEM, "out of memory");
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[1] = '\0';
    jinja_path = moe_path_join(slash ? dir : ".", "chat_template.jinja");
    size_t len;
    int rc = 0;
    if (jinja_path && moe_read_text_file(jinja_path, text, &len) == 0) {
        *where = "chat_template.jinja";
        goto out;
    }
    rc = moe_read_text_file(tokenizer_config_path, &cfg, &len);
    if (rc < 0) {
        rc = rc == -ENOENT ? moe_err(-ENOENT, "%s: no such file", tokenizer_config_path) : rc;
        goto out;
    }
    json_error_t jerr;
    json_t *root = json_loadb(cfg, len, 0, &jerr);
    if (!root) {
        rc = moe_err(-EINVAL, "%s:%d: %s", tokenizer_config_path, jerr.line, jerr.text);
        goto out;
    }
    json_decref(root);
    *text = moe_chat_template_of_config(cfg, len);
    *where = "tokenizer_config.json";
    if (!*text)
        rc = moe_err(-ENOENT, "%s: no chat_template", tokenizer_config_path);
out:
    free(cfg);
    free(dir);
    free(jinja_path);
    return rc;
}

int moe_chat_template_detect(const char *tokenizer_config_path, enum moe_chat_template *out)
{
    char *text, names[512];
    const char *where = NULL;
    int rc = moe_chat_template_read(tokenizer_config_path, &text, &where);
    if (rc < 0)
        return rc;
    rc = moe_chat_template_classify(text, out);
    if (rc < 0)
        moe_err(rc, "%s (%s): neither ChatML nor Mistral [INST] nor another chat format moed "
                "knows (%s)", tokenizer_config_path, where, known_names(names, sizeof(names)));
    free(text);
    return rc;
}

/* ---- rendering --------------------------------------------------------------------- */

static bool is_date(const char *d)
{
    for (int i = 0; i < 10; i++)
        if (i == 4 || i == 7 ? d[i] != '-' : (d[i] < '0' || d[i] > '9'))
            return false;
    return d[10] == '\0';
}

int moe_chat_render(enum moe_chat_template t, const struct moe_chat_message *msgs, size_t n,
                    const struct moe_chat_opts *opts, char **out)
{
    *out = NULL;
    if ((unsigned)t >= MOE_CHAT_COUNT)
        return moe_err(-EINVAL, "unknown chat template %d", (int)t);
    if (!msgs || n == 0)
        return moe_err(-EINVAL, "messages: empty list");
    char today[16];
    struct ctx c = {.m = msgs, .n = n, .f = &formats[t], .bos = "", .date = today};
    if (opts && opts->bos)
        c.bos = opts->bos;
    if (opts && opts->date) {
        if (!is_date(opts->date))
            return moe_err(-EINVAL, "chat date '%s' is not YYYY-MM-DD", opts->date);
        c.date = opts->date;
    } else {
        time_t now = time(NULL);
        struct tm tm;
        if (!gmtime_r(&now, &tm) || !strftime(today, sizeof(today), "%Y-%m-%d", &tm))
            return moe_err(-EINVAL, "cannot tell today's date");
    }
    enum role *r = malloc(n * sizeof(*r));
    if (!r)
        return moe_err(-ENOMEM, "out of memory rendering the chat prompt");
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++)
        rc = role_of(&msgs[i], i, &r[i]);
    c.r = r;
    struct moe_sbuf b = {0};
    moe_sbuf_put(&b, "", 0); /* an empty prompt is "", not NULL */
    rc = rc ? rc : c.f->render(&c, &b);
    free(r);
    if (rc == 0 && b.oom)
        rc = moe_err(-ENOMEM, "out of memory rendering the chat prompt");
    if (rc < 0) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    return 0;
}
