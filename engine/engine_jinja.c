/* Jinja chat templates: compile once, render per request (any thread), and
 * the variables transformers' apply_chat_template hands a template. See
 * engine_jinja.h; the interpreter's parts are engine_jinja_{lex,parse,eval,
 * value,filter,method,json}.c. */
#include "engine/engine_jinja_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- failures ----------------------------------------------------------------------- */

int jfail(struct jstate *st, const struct jn *at, const char *fmt, ...)
{
    if (st->failed)
        return -EINVAL;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (at)
        snprintf(st->err, st->errlen, "line %d: %s", at->line, msg);
    else
        snprintf(st->err, st->errlen, "%s", msg);
    st->failed = true;
    return -EINVAL;
}

int jnomem(struct jstate *st)
{
    jfail(st, NULL, "out of memory");
    return -ENOMEM;
}

/* work counts bytes built and steps taken: it bounds both the time a
 * render takes and what it allocates in all */
int jwork(struct jstate *st, const struct jn *at, uint64_t units)
{
    st->work += units;
    if (st->work > st->max_work)
        return jfail(st, at, "template exceeded its work limit (%llu)",
                     (unsigned long long)st->max_work);
    return 0;
}

/* ---- compile and render ------------------------------------------------------------- */

int moe_jinja_compile(const char *tmpl, struct moe_jinja **out, char *err, size_t errlen)
{
    char dummy[8];
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = 0;
    *out = NULL;
    if (!tmpl) {
        snprintf(err, errlen, "no template");
        return -EINVAL;
    }
    struct moe_jinja *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    struct jtoken *toks = NULL;
    size_t n = 0;
    int rc = jlex(t, tmpl, &toks, &n, err, errlen);
    if (!rc)
        rc = jparse(t, toks, n, err, errlen);
    free(toks);
    if (rc) {
        moe_jinja_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void moe_jinja_free(struct moe_jinja *t)
{
    if (!t)
        return;
    jarena_free(&t->arena);
    free(t->names);
    free(t);
}

int moe_jinja_render_compiled(const struct moe_jinja *t, const json_t *ctx,
                              const struct moe_jinja_opts *opts, char **out, char *err,
                              size_t errlen)
{
    char dummy[8];
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = 0;
    *out = NULL;
    if (!t || (ctx && !json_is_object(ctx))) {
        snprintf(err, errlen, "the template's variables must be a JSON object");
        return -EINVAL;
    }
    struct jbuf buf = {0};
    struct jstate st = {
        .t = t,
        .out = &buf,
        .err = err,
        .errlen = errlen,
        .max_work = opts && opts->max_work ? opts->max_work : MOE_JINJA_MAX_WORK,
        .max_output = opts && opts->max_output ? opts->max_output : MOE_JINJA_MAX_OUTPUT,
    };
    if (opts && opts->now) {
        st.now = *opts->now;
    } else {
        time_t now = time(NULL);
        localtime_r(&now, &st.now);
    }
    struct jv globals = jv_undef();
    int rc = 0;
    if (ctx) {
        rc = jv_from_json(&st, ctx, &globals, 0);
    } else {
        struct jdict *d = jdict_new(&st);
        rc = d ? 0 : -EINVAL;
        if (d)
            globals = jv_dict(d);
    }
    if (!rc) {
        st.globals = globals.u.d;
        rc = jrender_root(&st);
    }
    /* namespaces may hold each other (or themselves): empty them all before
     * letting go, so that nothing is kept alive by a cycle */
    for (size_t i = 0; i < st.n_ns; i++) {
        struct jdict *d = st.nss[i]->attrs;
        st.nss[i]->attrs = NULL;
        if (d)
            jv_drop(jv_dict(d));
    }
    for (size_t i = 0; i < st.n_ns; i++)
        jv_drop((struct jv){.t = JV_NS, .u.ns = st.nss[i]});
    free(st.nss);
    jv_drop(globals);
    if (rc) {
        jbuf_free(&buf);
        if (!st.failed)
            snprintf(err, errlen, "render failed");
        return rc == -ENOMEM ? -ENOMEM : -EINVAL;
    }
    if (!buf.p && !(buf.p = calloc(1, 1))) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    *out = buf.p;
    return 0;
}

int moe_jinja_render(const char *tmpl, const json_t *ctx, char **out, char *err, size_t errlen)
{
    struct moe_jinja *t;
    *out = NULL;
    int rc = moe_jinja_compile(tmpl, &t, err, errlen);
    if (rc)
        return rc;
    rc = moe_jinja_render_compiled(t, ctx, NULL, out, err, errlen);
    moe_jinja_free(t);
    return rc;
}

/* ---- apply_chat_template's variables ------------------------------------------------ */

static const char *const reasoning_keys[] = {"reasoning_content", "thinking", "reasoning"};

json_t *moe_jinja_chat_context(const json_t *messages, const json_t *tools,
                               bool add_generation_prompt, const json_t *extra)
{
    if (!json_is_array(messages) || (extra && !json_is_object(extra)))
        return NULL;
    json_t *ctx = json_object(), *msgs = json_array();
    if (!ctx || !msgs)
        goto fail;
    /* {**special_tokens_map, **kwargs} come first; the named arguments win */
    if (extra && json_object_update(ctx, (json_t *)extra))
        goto fail;
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        if (!json_is_object(m))
            goto fail;
        /* keys whose value is None are dropped (transformers'
         * _normalize_chat_messages), then the reasoning is aliased
         * (_alias_reasoning_fields): {"thinking": r, **message,
         * "reasoning_content": r} */
        json_t *reasoning = NULL;
        for (size_t k = 0; k < 3 && !reasoning; k++) {
            json_t *r = json_object_get(m, reasoning_keys[k]);
            if (r && !json_is_null(r))
                reasoning = r;
        }
        json_t *nm = json_object();
        if (!nm || json_array_append_new(msgs, nm))
            goto fail;
        if (reasoning && json_object_set(nm, "thinking", reasoning))
            goto fail;
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)m, key, v) {
            if (!json_is_null(v) && json_object_set(nm, key, v))
                goto fail;
        }
        if (reasoning && json_object_set(nm, "reasoning_content", reasoning))
            goto fail;
    }
    if (json_object_set_new(ctx, "messages", msgs)) {
        msgs = NULL;
        goto fail;
    }
    msgs = NULL;
    if (json_object_set(ctx, "tools", tools ? (json_t *)tools : json_null()) ||
        json_object_set_new(ctx, "documents", json_null()) ||
        json_object_set_new(ctx, "add_generation_prompt", json_boolean(add_generation_prompt)))
        goto fail;
    return ctx;
fail:
    json_decref(msgs);
    json_decref(ctx);
    return NULL;
}
