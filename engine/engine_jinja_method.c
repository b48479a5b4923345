/* Jinja attribute and item access, the Python methods templates call on
 * lists and dicts (strings' are in engine_jinja_str.c), and the globals
 * transformers provides (range, dict, namespace, raise_exception,
 * strftime_now).
 *
 * Access follows jinja2's sandbox: x.name is the attribute first (a dict's
 * items, a string's strip) and the item second; x[key] the other way round;
 * what neither finds is Undefined. Methods that would change a list or dict
 * are found but refuse to run, as ImmutableSandboxedEnvironment's are.
 * Strings index and count in code points, as Python's do. */
#define _GNU_SOURCE /* memmem */
#include "engine/engine_jinja_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const str_methods[] = {
    "capitalize", "casefold",   "center",     "count",     "endswith",   "find",
    "format",     "index",      "isalnum",    "isalpha",   "isdigit",    "islower",
    "isnumeric",  "isspace",    "isupper",    "join",      "ljust",      "lower",
    "lstrip",     "partition",  "removeprefix", "removesuffix", "replace", "rfind",
    "rindex",     "rjust",      "rpartition", "rsplit",    "rstrip",     "split",
    "splitlines", "startswith", "strip",      "swapcase",  "title",      "upper",
    "zfill",      "isdecimal",  "istitle",    NULL,
};
static const char *const dict_methods[] = {"keys", "values", "items", "get", "copy", NULL};
static const char *const dict_unsafe[] = {"pop", "popitem", "setdefault", "update", "clear",
                                          NULL};
static const char *const list_methods[] = {"index", "count", "copy", NULL};
static const char *const list_unsafe[] = {"append", "extend", "insert", "pop", "remove",
                                          "reverse", "sort", "clear", NULL};

static const char *find_name(const char *const *names, const char *p, size_t n)
{
    for (; *names; names++)
        if (!strncmp(*names, p, n) && (*names)[n] == 0)
            return *names;
    return NULL;
}

static int bound(struct jstate *st, struct jv self, const char *name, bool unsafe,
                 struct jv *out)
{
    if (jwork(st, NULL, 64))
        return -EINVAL;
    struct jfunc *f = calloc(1, sizeof(*f));
    if (!f)
        return jnomem(st);
    f->rc = 1;
    f->id = JF_METHOD;
    f->unsafe = unsafe;
    f->name = name;
    f->self = jv_ref(self);
    *out = (struct jv){.t = JV_FUNC, .u.fn = f};
    return 0;
}

/* self's method called name, if it has one: 0 found, 1 not */
int jmethod_lookup(struct jstate *st, struct jv self, const char *name, struct jv *out)
{
    size_t n = strlen(name);
    const char *m = NULL;
    bool unsafe = false;
    switch (self.t) {
    case JV_STR:
        m = find_name(str_methods, name, n);
        break;
    case JV_DICT:
        if (!(m = find_name(dict_methods, name, n)))
            unsafe = (m = find_name(dict_unsafe, name, n)) != NULL;
        break;
    case JV_LIST:
        if (!(m = find_name(list_methods, name, n)))
            unsafe = (m = find_name(list_unsafe, name, n)) != NULL;
        break;
    default:
        break;
    }
    if (!m)
        return 1;
    return bound(st, self, m, unsafe, out);
}

static int loop_attr(struct jstate *st, struct jloop *lp, const char *name, struct jv *out)
{
    size_t n = lp->items->n, i = lp->i;
    if (!strcmp(name, "index"))
        *out = jv_int((int64_t)i + 1);
    else if (!strcmp(name, "index0"))
        *out = jv_int((int64_t)i);
    else if (!strcmp(name, "revindex"))
        *out = jv_int((int64_t)(n - i));
    else if (!strcmp(name, "revindex0"))
        *out = jv_int((int64_t)(n - i - 1));
    else if (!strcmp(name, "first"))
        *out = jv_bool(i == 0);
    else if (!strcmp(name, "last"))
        *out = jv_bool(i + 1 == n);
    else if (!strcmp(name, "length"))
        *out = jv_int((int64_t)n);
    else if (!strcmp(name, "depth"))
        *out = jv_int(lp->depth0 + 1);
    else if (!strcmp(name, "depth0"))
        *out = jv_int(lp->depth0);
    else if (!strcmp(name, "previtem"))
        *out = i ? jv_ref(lp->items->v[i - 1]) : jv_undef_hint(JU_PLAIN, 0, NULL);
    else if (!strcmp(name, "nextitem"))
        *out = i + 1 < n ? jv_ref(lp->items->v[i + 1]) : jv_undef_hint(JU_PLAIN, 0, NULL);
    else if (!strcmp(name, "cycle") || !strcmp(name, "changed")) {
        struct jv self = {.t = JV_LOOP, .u.lp = lp};
        int rc = bound(st, self, name[1] == 'y' ? "cycle" : "changed", false, out);
        if (!rc)
            out->u.fn->id = name[1] == 'y' ? JF_LOOP_CYCLE : JF_LOOP_CHANGED;
        return rc;
    } else
        return 1;
    return 0;
}

int jgetattr(struct jstate *st, const struct jn *at, struct jv obj, const char *name,
             size_t len, const char *static_name, struct jv *out)
{
    (void)at;
    *out = jv_undef_hint(JU_ATTR, obj.t, static_name);
    if (obj.t == JV_UNDEF)
        return jundef_fail(st, at, obj);
    /* Python's private names stay hidden, as the sandbox hides them */
    if (len && name[0] == '_')
        return 0;
    int rc;
    switch (obj.t) {
    case JV_DICT: {
        if ((rc = jmethod_lookup(st, obj, name, out)) <= 0)
            return rc;
        struct jv *v = jdict_get_str(obj.u.d, name, len);
        if (v)
            *out = jv_ref(*v);
        return 0;
    }
    case JV_STR:
    case JV_LIST:
        rc = jmethod_lookup(st, obj, name, out);
        return rc < 0 ? rc : 0;
    case JV_NS: {
        struct jv *v = jdict_get_str(obj.u.ns->attrs, name, len);
        if (v)
            *out = jv_ref(*v);
        return 0;
    }
    case JV_LOOP:
        rc = loop_attr(st, obj.u.lp, name, out);
        return rc < 0 ? rc : 0;
    default:
        return 0;
    }
}

int jgetitem(struct jstate *st, const struct jn *at, struct jv obj, struct jv key,
             struct jv *out)
{
    *out = jv_undef_hint(JU_ATTR, obj.t, NULL);
    if (obj.t == JV_UNDEF)
        return jundef_fail(st, at, obj);
    bool intkey = key.t == JV_INT || key.t == JV_BOOL;
    int64_t i = key.t == JV_INT ? key.u.i : key.t == JV_BOOL ? key.u.b : 0;
    switch (obj.t) {
    case JV_DICT: {
        struct jv *v = jdict_get(obj.u.d, key);
        if (v) {
            *out = jv_ref(*v);
            return 0;
        }
        break;
    }
    case JV_LIST:
        if (intkey && !obj.u.l->view) {
            int64_t n = (int64_t)obj.u.l->n;
            if (i < 0)
                i += n;
            if (i >= 0 && i < n)
                *out = jv_ref(obj.u.l->v[i]);
            return 0;
        }
        break;
    case JV_STR:
        if (intkey) {
            int64_t n;
            int rc = jv_length(st, at, obj, &n);
            if (rc)
                return rc;
            if (i < 0)
                i += n;
            if (i < 0 || i >= n)
                return 0;
            const struct jstr *s = obj.u.s;
            size_t off = s->ascii ? (size_t)i : jutf8_offset(s->s, s->len, (size_t)i), len = 1;
            moe_utf8_next(s->s + off, s->len - off, &len);
            return jv_str(st, s->s + off, len, out);
        }
        break;
    default:
        break;
    }
    /* a string key falls back to the attribute */
    if (key.t == JV_STR)
        return jgetattr(st, at, obj, key.u.s->s, key.u.s->len, NULL, out);
    return 0;
}

static int dict_method(struct jstate *st, const struct jn *at, struct jv d, const char *m,
                       struct jargs *a, struct jv *out)
{
    const struct jdict *dd = d.u.d;
    int rc = 0;
    if (!strcmp(m, "get")) {
        struct jv *k = jarg(a, 0, NULL), *def = jarg(a, 1, NULL);
        if (!k)
            return jfail(st, at, "get expected at least 1 argument, got 0");
        struct jv *v = jdict_get(dd, *k);
        *out = v ? jv_ref(*v) : def ? jv_ref(*def) : jv_none();
        return 0;
    }
    if (!strcmp(m, "copy")) {
        *out = jv_ref(d); /* immutable: the same dict will do */
        return 0;
    }
    struct jlist *l = jlist_new(st, dd->n);
    if (!l)
        return -EINVAL;
    l->view = m[0] == 'k' ? JL_KEYS : m[0] == 'v' ? JL_VALUES : JL_ITEMS;
    for (size_t i = 0; !rc && i < dd->n; i++) {
        if (m[0] == 'k') {
            rc = jlist_push(st, l, jv_ref(dd->k[i]));
        } else if (m[0] == 'v') {
            rc = jlist_push(st, l, jv_ref(dd->v[i]));
        } else {
            struct jlist *pair = jlist_new(st, 2);
            if (!pair) {
                rc = -EINVAL;
                break;
            }
            pair->tuple = 1;
            jlist_push(st, pair, jv_ref(dd->k[i]));
            jlist_push(st, pair, jv_ref(dd->v[i]));
            rc = jlist_push(st, l, jv_list(pair));
        }
    }
    *out = jv_list(l);
    return rc;
}

int jmethod_call(struct jstate *st, const struct jn *at, struct jv self, const char *name,
                 struct jargs *a, struct jv *out)
{
    switch (self.t) {
    case JV_STR:
        return jstr_method(st, at, self, name, a, out);
    case JV_DICT:
        return dict_method(st, at, self, name, a, out);
    case JV_LIST:
        if (!strcmp(name, "copy")) {
            *out = jv_ref(self);
            return 0;
        }
        if (!strcmp(name, "count") || !strcmp(name, "index")) {
            struct jv *x = jarg(a, 0, NULL);
            if (!x)
                return jfail(st, at, "%s() takes exactly one argument (0 given)", name);
            int64_t c = 0, first = -1;
            for (size_t i = 0; i < self.u.l->n; i++)
                if (jv_eq(self.u.l->v[i], *x)) {
                    c++;
                    if (first < 0)
                        first = (int64_t)i;
                }
            if (name[0] == 'i' && first < 0)
                return jfail(st, at, "value is not in list");
            *out = jv_int(name[0] == 'c' ? c : first);
            return 0;
        }
        break;
    default:
        break;
    }
    return jfail(st, at, "'%s' object has no attribute '%s'", jv_type_name_v(self), name);
}

/* ---- globals ------------------------------------------------------------------------ */

static struct jfunc g_range = {.rc = -1, .id = JF_RANGE, .name = "range"};
static struct jfunc g_dict = {.rc = -1, .id = JF_DICT, .name = "dict"};
static struct jfunc g_namespace = {.rc = -1, .id = JF_NAMESPACE, .name = "namespace"};
static struct jfunc g_raise = {.rc = -1, .id = JF_RAISE, .name = "raise_exception"};
static struct jfunc g_strftime = {.rc = -1, .id = JF_STRFTIME, .name = "strftime_now"};
static struct jfunc g_lipsum = {.rc = -1, .id = JF_UNSUPPORTED, .name = "lipsum"};
static struct jfunc g_cycler = {.rc = -1, .id = JF_UNSUPPORTED, .name = "cycler"};
static struct jfunc g_joiner = {.rc = -1, .id = JF_UNSUPPORTED, .name = "joiner"};

int jglobal(struct jstate *st, const char *name, struct jv *out)
{
    static struct jfunc *const all[] = {&g_range,    &g_dict,   &g_namespace, &g_raise,
                                        &g_strftime, &g_lipsum, &g_cycler,    &g_joiner};
    (void)st;
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (!strcmp(all[i]->name, name)) {
            *out = (struct jv){.t = JV_FUNC, .u.fn = all[i]};
            return 0;
        }
    return 1;
}

/* dict(*args, **kwargs) into d */
static int dict_fill(struct jstate *st, const struct jn *at, struct jdict *d, struct jargs *a)
{
    int rc = 0;
    if (a->npos > 1)
        return jfail(st, at, "dict expected at most 1 argument, got %zu", a->npos);
    if (a->npos) {
        struct jv src = a->pos[0];
        if (src.t == JV_DICT) {
            for (size_t i = 0; !rc && i < src.u.d->n; i++)
                rc = jdict_set(st, d, jv_ref(src.u.d->k[i]), jv_ref(src.u.d->v[i]));
        } else if (src.t == JV_NS) {
            for (size_t i = 0; !rc && i < src.u.ns->attrs->n; i++)
                rc = jdict_set(st, d, jv_ref(src.u.ns->attrs->k[i]),
                               jv_ref(src.u.ns->attrs->v[i]));
        } else {
            struct jlist *l;
            if ((rc = jv_iterate(st, at, src, &l)))
                return rc;
            for (size_t i = 0; !rc && i < l->n; i++) {
                struct jv p = l->v[i];
                if (p.t != JV_LIST || p.u.l->n != 2)
                    rc = jfail(st, at, "dictionary update sequence element #%zu has the wrong "
                                       "length", i);
                else
                    rc = jdict_set(st, d, jv_ref(p.u.l->v[0]), jv_ref(p.u.l->v[1]));
            }
            jv_drop(jv_list(l));
        }
    }
    for (size_t i = 0; !rc && i < a->nkw; i++) {
        struct jv k;
        if (!(rc = jv_str(st, a->kname[i], strlen(a->kname[i]), &k)))
            rc = jdict_set(st, d, k, jv_ref(a->kval[i]));
    }
    return rc;
}

static int make_range(struct jstate *st, const struct jn *at, struct jargs *a, struct jv *out)
{
    int64_t v[3] = {0, 0, 1};
    if (a->nkw || a->npos < 1 || a->npos > 3)
        return jfail(st, at, "range expected 1 to 3 integer arguments");
    for (size_t i = 0; i < a->npos; i++) {
        struct jv x = a->pos[i];
        if (x.t != JV_INT && x.t != JV_BOOL)
            return jfail(st, at, "'%s' object cannot be interpreted as an integer",
                         jv_type_name_v(x));
        v[a->npos == 1 ? 1 : i] = x.t == JV_INT ? x.u.i : x.u.b;
    }
    if (v[2] == 0)
        return jfail(st, at, "range() arg 3 must not be zero");
    /* how many, without overflow */
    double count = v[2] > 0 ? ((double)v[1] - (double)v[0]) / (double)v[2]
                            : ((double)v[0] - (double)v[1]) / (double)-v[2];
    if (count > J_MAX_RANGE)
        return jfail(st, at, "Range too big. The sandbox blocks ranges larger than MAX_RANGE "
                             "(%d).", J_MAX_RANGE);
    struct jlist *l = jlist_new(st, 0);
    if (!l)
        return -EINVAL;
    int rc = 0;
    for (int64_t i = v[0]; !rc && (v[2] > 0 ? i < v[1] : i > v[1]); i += v[2])
        rc = jlist_push(st, l, jv_int(i));
    *out = jv_list(l);
    return rc;
}

static int loop_cycle(struct jstate *st, const struct jn *at, struct jloop *lp, bool changed,
                      struct jargs *a, struct jv *out)
{
    if (!changed) {
        if (!a->npos)
            return jfail(st, at, "no items for cycling given");
        *out = jv_ref(a->pos[lp->i % a->npos]);
        return 0;
    }
    /* loop.changed(*values): true when the values differ from the last call's */
    struct jlist *l = jlist_new(st, a->npos);
    if (!l)
        return -EINVAL;
    l->tuple = 1;
    int rc = 0;
    for (size_t i = 0; !rc && i < a->npos; i++)
        rc = jlist_push(st, l, jv_ref(a->pos[i]));
    if (rc) {
        jv_drop(jv_list(l));
        return rc;
    }
    struct jv now = jv_list(l);
    bool diff = !lp->have_changed || !jv_eq(lp->last_changed, now);
    if (diff) {
        jv_drop(lp->last_changed);
        lp->last_changed = now;
        lp->have_changed = true;
    } else {
        jv_drop(now);
    }
    *out = jv_bool(diff);
    return 0;
}

int jfunc_call(struct jstate *st, const struct jn *at, struct jfunc *f, struct jargs *a,
               struct jv *out)
{
    int rc;
    switch (f->id) {
    case JF_METHOD:
        if (f->unsafe)
            return jfail(st, at, "access to attribute '%s' of '%s' object is unsafe.", f->name,
                         jv_type_name_v(f->self));
        return jmethod_call(st, at, f->self, f->name, a, out);
    case JF_LOOP_CYCLE:
    case JF_LOOP_CHANGED:
        return loop_cycle(st, at, f->self.u.lp, f->id == JF_LOOP_CHANGED, a, out);
    case JF_RANGE:
        return make_range(st, at, a, out);
    case JF_DICT: {
        struct jdict *d = jdict_new(st);
        if (!d)
            return -EINVAL;
        *out = jv_dict(d);
        return dict_fill(st, at, d, a);
    }
    case JF_NAMESPACE: {
        struct jdict *d = jdict_new(st);
        if (!d)
            return -EINVAL;
        if ((rc = dict_fill(st, at, d, a))) {
            jv_drop(jv_dict(d));
            return rc;
        }
        for (size_t i = 0; i < d->n; i++)
            if (d->k[i].t == JV_STR && d->k[i].u.s->s[0] == '_') {
                rc = jfail(st, at,
                           "Chat templates cannot store underscore-prefixed attributes on a "
                           "namespace, but got '%s'. Please rename the attribute.",
                           d->k[i].u.s->s);
                jv_drop(jv_dict(d));
                return rc;
            }
        struct jns *ns = calloc(1, sizeof(*ns));
        if (!ns || st->n_ns == SIZE_MAX) {
            free(ns);
            jv_drop(jv_dict(d));
            return jnomem(st);
        }
        if (st->n_ns == st->cap_ns) {
            size_t cap = st->cap_ns ? st->cap_ns * 2 : 16;
            struct jns **q = realloc(st->nss, cap * sizeof(*q));
            if (!q) {
                free(ns);
                jv_drop(jv_dict(d));
                return jnomem(st);
            }
            st->nss = q;
            st->cap_ns = cap;
        }
        ns->rc = 2; /* the value, and the list of every namespace of this render */
        ns->attrs = d;
        st->nss[st->n_ns++] = ns;
        *out = (struct jv){.t = JV_NS, .u.ns = ns};
        return 0;
    }
    case JF_RAISE: {
        struct jv *m = jarg(a, 0, "message");
        struct jbuf b = {0};
        if (m && (rc = jv_to_buf(st, *m, &b))) {
            jbuf_free(&b);
            return rc;
        }
        if (!st->failed) {
            snprintf(st->err, st->errlen, "%s", b.p ? b.p : "");
            st->failed = st->raised = true;
        }
        jbuf_free(&b);
        return -EINVAL;
    }
    case JF_STRFTIME: {
        struct jv *fmt = jarg(a, 0, "format");
        if (!fmt || fmt->t != JV_STR)
            return jfail(st, at, "strftime_now() needs a format string");
        char buf[512];
        if (!fmt->u.s->len)
            return jv_str(st, "", 0, out);
        size_t n = strftime(buf, sizeof(buf), fmt->u.s->s, &st->now);
        if (!n)
            return jfail(st, at, "strftime_now(): format too long or empty result");
        return jv_str(st, buf, n, out);
    }
    default:
        return jfail(st, at, "'%s' is not supported", f->name);
    }
}
