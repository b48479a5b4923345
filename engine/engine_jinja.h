/* A Jinja2 interpreter for Hugging Face chat templates: the subset real
 * templates use, rendering byte for byte what transformers'
 * apply_chat_template renders (jinja2's ImmutableSandboxedEnvironment with
 * trim_blocks, lstrip_blocks, loopcontrols, transformers' tojson,
 * raise_exception, strftime_now, dict and namespace).
 *
 * The template text comes from an untrusted checkpoint: every render is
 * bounded (output size, work, recursion depth, loop iterations) and any
 * failure is an error return, never a crash; a render needs at most about
 * 512 KiB of stack. A compiled template is immutable: any number of threads
 * may render it at once. */
#ifndef MOE_ENGINE_JINJA_H
#define MOE_ENGINE_JINJA_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define MOE_JINJA_MAX_OUTPUT (16u << 20) /* bytes of rendered text */
#define MOE_JINJA_MAX_WORK (1ull << 28)  /* bytes built plus steps taken, per render */
#define MOE_JINJA_MAX_DEPTH 64           /* nested macro calls */

struct moe_jinja; /* a compiled template */

struct moe_jinja_opts {
    const struct tm *now; /* what strftime_now() formats; NULL: local time at render */
    size_t max_output;    /* 0: MOE_JINJA_MAX_OUTPUT */
    uint64_t max_work;    /* 0: MOE_JINJA_MAX_WORK */
};

/* Parses a template once. Returns 0 and *out, or -EINVAL with "line L,
 * column C: reason" in err (-ENOMEM when out of memory). */
int moe_jinja_compile(const char *tmpl, struct moe_jinja **out, char *err, size_t errlen);

/* Renders with ctx, a JSON object of the template's variables (messages,
 * tools, add_generation_prompt, bos_token, eos_token, any extra kwargs such as
 * enable_thinking); opts may be NULL. Returns 0 and a malloc'ed string, or
 * -EINVAL with a message in err: the template's own raise_exception() text
 * verbatim, or "line L: reason" for any other failure. */
int moe_jinja_render_compiled(const struct moe_jinja *t, const json_t *ctx,
                              const struct moe_jinja_opts *opts, char **out, char *err,
                              size_t errlen);

void moe_jinja_free(struct moe_jinja *t);

/* compile + render with default opts */
int moe_jinja_render(const char *tmpl, const json_t *ctx, char **out, char *err, size_t errlen);

/* The variables transformers' apply_chat_template(messages, tools=tools,
 * add_generation_prompt=agp, **kwargs) hands the template: each message with
 * its null-valued keys dropped and its reasoning aliased ("reasoning_content",
 * "thinking", "reasoning": the first one set is copied to "thinking" and
 * "reasoning_content"), tools (null when NULL), documents null, and every key
 * of extra (the tokenizer's special tokens such as bos_token, then kwargs such
 * as enable_thinking; extra may be NULL). Returns a new reference or NULL
 * (messages not an array of objects, or out of memory). */
json_t *moe_jinja_chat_context(const json_t *messages, const json_t *tools,
                               bool add_generation_prompt, const json_t *extra);

#endif
