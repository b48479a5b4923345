/* Jinja statements: scopes, assignment, for loops, macros and calls, and
 * the render of the whole template.
 *
 * Scoping follows what jinja2 compiles to: a for loop body gets a fresh
 * scope each iteration (a set inside it is gone by the next iteration and
 * after the loop, hence namespace()), a macro body a fresh scope whose parent
 * is where the macro was defined (names resolve there when it is called), if
 * blocks none. A scope's variables are dropped when it ends, which breaks the
 * cycle a macro makes with the scope that holds it. */
#include "engine/engine_jinja_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JX_BREAK 1
#define JX_CONTINUE 2

static int exec_body(struct jstate *st, const struct jn *body, struct jscope *sc);

/* ---- scopes ------------------------------------------------------------------------- */

static struct jscope *scope_new(struct jstate *st, struct jscope *parent)
{
    if (jwork(st, NULL, 64))
        return NULL;
    struct jscope *s = calloc(1, sizeof(*s));
    if (!s) {
        jnomem(st);
        return NULL;
    }
    s->rc = 1;
    s->parent = parent;
    if (parent)
        parent->rc++;
    return s;
}

static void scope_clear(struct jscope *s)
{
    /* values dropped after the slots are emptied: a dropped macro may come
     * back to this scope */
    size_t n = s->n;
    struct jv *vals = s->vals;
    const char **names = s->names;
    s->n = s->cap = 0;
    s->vals = NULL;
    s->names = NULL;
    for (size_t i = 0; i < n; i++)
        jv_drop(vals[i]);
    free(vals);
    free(names);
}

void jscope_drop(struct jscope *s)
{
    while (s && --s->rc == 0) {
        struct jscope *parent = s->parent;
        scope_clear(s);
        free(s);
        s = parent;
    }
}

static int scope_set(struct jstate *st, struct jscope *s, const char *name, struct jv v)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->names[i] == name) {
            struct jv old = s->vals[i];
            s->vals[i] = v;
            jv_drop(old);
            return 0;
        }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        struct jv *vals = realloc(s->vals, cap * sizeof(*vals));
        if (vals)
            s->vals = vals;
        const char **names = vals ? realloc(s->names, cap * sizeof(*names)) : NULL;
        if (!names) {
            jv_drop(v);
            return jnomem(st);
        }
        s->names = names;
        s->cap = cap;
    }
    s->names[s->n] = name;
    s->vals[s->n] = v;
    s->n++;
    return 0;
}

int jlookup(struct jstate *st, struct jscope *sc, const char *name, struct jv *out)
{
    for (struct jscope *s = sc; s; s = s->parent)
        for (size_t i = 0; i < s->n; i++)
            if (s->names[i] == name) {
                *out = jv_ref(s->vals[i]);
                return 0;
            }
    struct jv *g = jdict_get_str(st->globals, name, strlen(name));
    if (g) {
        *out = jv_ref(*g);
        return 0;
    }
    if (jglobal(st, name, out) == 0)
        return 0;
    *out = jv_undef_hint(JU_NAME, 0, name);
    return 0;
}

/* ---- assignment --------------------------------------------------------------------- */

static int assign(struct jstate *st, const struct jn *target, struct jscope *sc, struct jv v)
{
    if (target->kind == JN_NAME)
        return scope_set(st, sc, target->name, v);
    if (target->kind == JN_GETATTR) {
        struct jv ns;
        jlookup(st, sc, target->a->name, &ns);
        int rc = 0;
        if (ns.t != JV_NS)
            rc = jfail(st, target, "cannot assign attribute on non-namespace object");
        else if (target->name[0] == '_')
            rc = jfail(st, target,
                       "Chat templates cannot store underscore-prefixed attributes on a "
                       "namespace, but got '%s'. Please rename the attribute.",
                       target->name);
        struct jv key;
        if (!rc && !(rc = jv_str(st, target->name, strlen(target->name), &key))) {
            rc = jdict_set(st, ns.u.ns->attrs, key, v);
            v = jv_undef();
        }
        jv_drop(ns);
        jv_drop(v);
        return rc;
    }
    /* a tuple: unpack */
    struct jlist *items;
    int rc = jv_iterate(st, target, v, &items);
    jv_drop(v);
    if (rc)
        return rc;
    if (items->n != (size_t)target->nv)
        rc = items->n > (size_t)target->nv
                 ? jfail(st, target, "too many values to unpack (expected %d)", target->nv)
                 : jfail(st, target, "not enough values to unpack (expected %d, got %zu)",
                         target->nv, items->n);
    for (int i = 0; !rc && i < target->nv; i++)
        rc = assign(st, target->v[i], sc, jv_ref(items->v[i]));
    jv_drop(jv_list(items));
    return rc;
}


static int run_for(struct jstate *st, const struct jn *f, struct jscope *sc, struct jv iter,
                   int depth0);

static int call_macro(struct jstate *st, const struct jn *at, struct jmacro *m,
                      struct jargs *a, struct jv *out)
{
    const struct jn *def = m->def;
    const char *mname = def->kind == JN_MACRO ? def->name : "caller";
    if (st->depth >= MOE_JINJA_MAX_DEPTH)
        return jfail(st, at, "macro calls nested more than %d deep", MOE_JINJA_MAX_DEPTH);
    struct jscope *s = scope_new(st, m->closure);
    if (!s)
        return -EINVAL;
    int rc = 0;
    size_t np = (size_t)def->nv;
    if (a->npos > np && !(def->flags & JNF_VARARGS))
        rc = jfail(st, at, "macro '%s' takes not more than %zu argument(s)", mname, np);
    for (size_t i = 0; !rc && i < np; i++) {
        const char *pname = def->v[i]->name;
        struct jv v;
        struct jv *kw = NULL;
        for (size_t k = 0; k < a->nkw; k++)
            if (a->kname[k] == pname || !strcmp(a->kname[k], pname))
                kw = &a->kval[k];
        if (i < a->npos && kw) {
            rc = jfail(st, at, "macro '%s' got multiple values for argument '%s'", mname, pname);
            break;
        }
        if (i < a->npos)
            v = jv_ref(a->pos[i]);
        else if (kw)
            v = jv_ref(*kw);
        else if (def->kv && def->kv[i]) {
            if ((rc = jeval(st, def->kv[i], s, &v)))
                break;
        } else
            v = jv_undef_hint(JU_NAME, 0, pname);
        rc = scope_set(st, s, pname, v);
    }
    /* keyword arguments that are no parameter */
    struct jdict *extra = NULL;
    for (size_t k = 0; !rc && k < a->nkw; k++) {
        bool param = false;
        for (size_t i = 0; i < np && !param; i++)
            param = !strcmp(a->kname[k], def->v[i]->name);
        if (param)
            continue;
        if (!strcmp(a->kname[k], "caller") && (def->flags & JNF_CALLER)) {
            rc = scope_set(st, s, st->t->n_caller, jv_ref(a->kval[k]));
            continue;
        }
        if (!(def->flags & JNF_KWARGS)) {
            rc = jfail(st, at, "macro '%s' takes no keyword argument '%s'", mname, a->kname[k]);
            break;
        }
        if (!extra && !(extra = jdict_new(st))) {
            rc = -EINVAL;
            break;
        }
        struct jv key;
        if (!(rc = jv_str(st, a->kname[k], strlen(a->kname[k]), &key)))
            rc = jdict_set(st, extra, key, jv_ref(a->kval[k]));
    }
    if (!rc && (def->flags & JNF_KWARGS)) {
        if (!extra && !(extra = jdict_new(st)))
            rc = -EINVAL;
        if (!rc) {
            rc = scope_set(st, s, st->t->n_kwargs, jv_dict(extra));
            extra = NULL;
        }
    }
    if (extra)
        jv_drop(jv_dict(extra));
    if (!rc && (def->flags & JNF_VARARGS)) {
        struct jlist *l = jlist_new(st, 0);
        if (!l)
            rc = -EINVAL;
        else
            l->tuple = 1;
        for (size_t i = np; !rc && i < a->npos; i++)
            rc = jlist_push(st, l, jv_ref(a->pos[i]));
        if (l)
            rc = rc ? (jv_drop(jv_list(l)), rc) : scope_set(st, s, st->t->n_varargs, jv_list(l));
    }
    if (!rc && (def->flags & JNF_CALLER)) {
        bool have = false;
        for (size_t i = 0; i < s->n; i++)
            have |= s->names[i] == st->t->n_caller;
        if (!have)
            rc = scope_set(st, s, st->t->n_caller, jv_undef_hint(JU_NAME, 0, "caller"));
    }
    if (!rc) {
        struct jbuf buf = {0}, *saved = st->out;
        st->out = &buf;
        st->depth++;
        rc = exec_body(st, def->b, s);
        st->depth--;
        st->out = saved;
        if (rc > 0)
            rc = jfail(st, at, "break or continue outside of a loop");
        if (!rc)
            rc = jv_str_buf(st, &buf, out);
        else
            jbuf_free(&buf);
    }
    scope_clear(s);
    jscope_drop(s);
    return rc;
}

int jcall(struct jstate *st, const struct jn *at, struct jv callee, struct jargs *a,
          struct jv *out)
{
    switch (callee.t) {
    case JV_MACRO:
        return call_macro(st, at, callee.u.m, a, out);
    case JV_LOOP: {
        /* loop(children) in a recursive for */
        struct jloop *lp = callee.u.lp;
        if (!(lp->node->flags & JNF_RECURSIVE))
            return jfail(st, at, "Tried to call non recursive loop. Maybe you forgot the "
                                 "'recursive' modifier.");
        if (a->npos != 1 || a->nkw)
            return jfail(st, at, "loop() takes exactly one argument");
        struct jbuf buf = {0}, *saved = st->out;
        st->out = &buf;
        st->depth++;
        int rc = st->depth > MOE_JINJA_MAX_DEPTH
                     ? jfail(st, at, "recursive loop nested more than %d deep",
                             MOE_JINJA_MAX_DEPTH)
                     : run_for(st, lp->node, lp->scope, a->pos[0], lp->depth0 + 1);
        st->depth--;
        st->out = saved;
        if (rc) {
            jbuf_free(&buf);
            return rc;
        }
        return jv_str_buf(st, &buf, out);
    }
    case JV_FUNC:
        return jfunc_call(st, at, callee.u.fn, a, out);
    case JV_UNDEF:
        return jundef_fail(st, at, callee);
    default:
        return jfail(st, at, "'%s' object is not callable", jv_type_name_v(callee));
    }
}

/* ---- statements --------------------------------------------------------------------- */

static int run_for(struct jstate *st, const struct jn *f, struct jscope *sc, struct jv iter,
                   int depth0)
{
    struct jlist *items;
    int rc = jv_iterate(st, f->b, iter, &items);
    if (rc)
        return rc;
    if (f->e) {
        /* for x in y if test: the test sees x, not loop */
        struct jlist *kept = jlist_new(st, items->n);
        for (size_t i = 0; !rc && kept && i < items->n; i++) {
            struct jscope *t = scope_new(st, sc);
            if (!t) {
                rc = -EINVAL;
                break;
            }
            struct jv test = jv_undef();
            if (!(rc = assign(st, f->a, t, jv_ref(items->v[i]))) &&
                !(rc = jeval(st, f->e, t, &test)) && jv_truthy(test))
                rc = jlist_push(st, kept, jv_ref(items->v[i]));
            jv_drop(test);
            scope_clear(t);
            jscope_drop(t);
        }
        jv_drop(jv_list(items));
        if (!kept)
            return -EINVAL;
        items = kept;
        if (rc) {
            jv_drop(jv_list(items));
            return rc;
        }
    }
    if (!items->n) {
        jv_drop(jv_list(items));
        if (!f->d)
            return 0;
        struct jscope *t = scope_new(st, sc);
        if (!t)
            return -EINVAL;
        rc = exec_body(st, f->d, t);
        scope_clear(t);
        jscope_drop(t);
        return rc;
    }
    struct jloop *lp = calloc(1, sizeof(*lp));
    if (!lp) {
        jv_drop(jv_list(items));
        return jnomem(st);
    }
    lp->rc = 1;
    lp->items = items;
    lp->depth0 = depth0;
    lp->node = f;
    if (f->flags & JNF_RECURSIVE) {
        lp->scope = sc;
        sc->rc++;
    }
    struct jv loop = {.t = JV_LOOP, .u.lp = lp};
    for (size_t i = 0; i < items->n; i++) {
        if ((rc = jwork(st, f, 16)))
            break;
        lp->i = i;
        struct jscope *t = scope_new(st, sc);
        if (!t) {
            rc = -EINVAL;
            break;
        }
        if (!(rc = scope_set(st, t, st->t->n_loop, jv_ref(loop))) &&
            !(rc = assign(st, f->a, t, jv_ref(items->v[i]))))
            rc = exec_body(st, f->c, t);
        scope_clear(t);
        jscope_drop(t);
        if (rc == JX_CONTINUE)
            rc = 0;
        if (rc)
            break;
    }
    jv_drop(loop);
    return rc == JX_BREAK ? 0 : rc;
}

static int output(struct jstate *st, struct jv v)
{
    if (v.t == JV_STR)
        return jbuf_put(st, st->out, v.u.s->s, v.u.s->len);
    return jv_to_buf(st, v, st->out);
}

/* the body's output as a string */
static int capture(struct jstate *st, const struct jn *body, struct jscope *sc, struct jv *out)
{
    struct jbuf buf = {0}, *saved = st->out;
    st->out = &buf;
    int rc = exec_body(st, body, sc);
    st->out = saved;
    if (rc > 0)
        rc = jfail(st, body, "break or continue outside of a loop");
    if (rc) {
        jbuf_free(&buf);
        return rc;
    }
    return jv_str_buf(st, &buf, out);
}

static int exec(struct jstate *st, const struct jn *s, struct jscope *sc)
{
    struct jv v = jv_undef();
    int rc = 0;
    switch (s->kind) {
    case JN_DATA:
        return jbuf_put(st, st->out, s->k.u.s->s, s->k.u.s->len);
    case JN_OUTPUT:
        if (!(rc = jeval(st, s->a, sc, &v)))
            rc = output(st, v);
        break;
    case JN_BODY:
        return exec_body(st, s, sc);
    case JN_IF:
        for (const struct jn *n = s; n;) {
            if ((rc = jeval(st, n->a, sc, &v)))
                break;
            bool t = jv_truthy(v);
            jv_drop(v);
            v = jv_undef();
            if (t)
                return exec_body(st, n->b, sc);
            if (n->c && n->c->kind == JN_IF) {
                n = n->c;
                continue;
            }
            return n->c ? exec_body(st, n->c, sc) : 0;
        }
        break;
    case JN_FOR:
        if (!(rc = jeval(st, s->b, sc, &v)))
            rc = run_for(st, s, sc, v, 0);
        break;
    case JN_SET:
        if (!(rc = jeval(st, s->b, sc, &v))) {
            rc = assign(st, s->a, sc, v);
            v = jv_undef();
        }
        break;
    case JN_SETBLOCK: {
        struct jscope *t = scope_new(st, sc);
        if (!t)
            return -EINVAL;
        rc = capture(st, s->b, t, &v);
        scope_clear(t);
        jscope_drop(t);
        if (!rc && s->c) {
            struct jv f;
            rc = jfilter_chain(st, s->c, sc, v, &f);
            v = rc ? jv_undef() : f;
        }
        if (!rc) {
            rc = assign(st, s->a, sc, v);
            v = jv_undef();
        }
        break;
    }
    case JN_FILTERBLOCK: {
        struct jscope *t = scope_new(st, sc);
        if (!t)
            return -EINVAL;
        struct jv text;
        rc = capture(st, s->b, t, &text);
        if (!rc)
            rc = jfilter_chain(st, s->a, t, text, &v);
        scope_clear(t);
        jscope_drop(t);
        if (!rc)
            rc = output(st, v);
        break;
    }
    case JN_MACRO: {
        struct jmacro *m = calloc(1, sizeof(*m));
        if (!m)
            return jnomem(st);
        m->rc = 1;
        m->def = s;
        m->closure = sc;
        sc->rc++;
        return scope_set(st, sc, s->name, (struct jv){.t = JV_MACRO, .u.m = m});
    }
    case JN_CALLBLOCK: {
        struct jmacro *m = calloc(1, sizeof(*m));
        if (!m)
            return jnomem(st);
        m->rc = 1;
        m->def = s;
        m->closure = sc;
        sc->rc++;
        struct jv caller = {.t = JV_MACRO, .u.m = m};
        rc = jeval_call(st, s->a, sc, &caller, &v);
        jv_drop(caller);
        if (!rc)
            rc = output(st, v);
        break;
    }
    case JN_WITH: {
        struct jscope *t = scope_new(st, sc);
        if (!t)
            return -EINVAL;
        for (int i = 0; !rc && i < s->nv; i++) {
            struct jv x;
            if (!(rc = jeval(st, s->kv[i], sc, &x)))
                rc = assign(st, s->v[i], t, x);
        }
        if (!rc)
            rc = exec_body(st, s->b, t);
        scope_clear(t);
        jscope_drop(t);
        return rc;
    }
    case JN_BREAK:
        return JX_BREAK;
    case JN_CONTINUE:
        return JX_CONTINUE;
    case JN_ERROR_STMT:
        return jfail(st, s, "%s", s->name);
    default:
        return jfail(st, s, "unsupported statement");
    }
    jv_drop(v);
    return rc;
}

static int exec_body(struct jstate *st, const struct jn *body, struct jscope *sc)
{
    if (++st->recurse > J_MAX_RECURSE) {
        st->recurse--;
        return jfail(st, body, "evaluation nested too deeply");
    }
    int rc = 0;
    for (int i = 0; !rc && i < body->nv; i++)
        rc = exec(st, body->v[i], sc);
    st->recurse--;
    return rc;
}

int jrender_root(struct jstate *st)
{
    struct jscope *top = scope_new(st, NULL);
    if (!top)
        return -EINVAL;
    int rc = exec_body(st, st->t->root, top);
    if (rc > 0)
        rc = jfail(st, st->t->root, "break or continue outside of a loop");
    scope_clear(top);
    jscope_drop(top);
    return rc;
}
