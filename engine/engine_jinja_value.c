/* Jinja values: allocation and reference counts, lists and dicts, Python's
 * equality, order and truth, and conversion from JSON. */
#define _GNU_SOURCE /* memmem */
#include "engine/engine_jinja_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- reference counts --------------------------------------------------------------- */

static int32_t *rc_of(struct jv v)
{
    switch (v.t) {
    case JV_STR:
        return &v.u.s->rc;
    case JV_LIST:
        return &v.u.l->rc;
    case JV_DICT:
        return &v.u.d->rc;
    case JV_NS:
        return &v.u.ns->rc;
    case JV_MACRO:
        return &v.u.m->rc;
    case JV_FUNC:
        return &v.u.fn->rc;
    case JV_LOOP:
        return &v.u.lp->rc;
    default:
        return NULL;
    }
}

struct jv jv_ref(struct jv v)
{
    int32_t *rc = rc_of(v);
    if (rc && *rc >= 0)
        (*rc)++;
    return v;
}

static void dict_free(struct jdict *d)
{
    for (size_t i = 0; i < d->n; i++) {
        jv_drop(d->k[i]);
        jv_drop(d->v[i]);
    }
    free(d->k);
    free(d->v);
    free(d->idx);
    free(d);
}

void jv_drop(struct jv v)
{
    int32_t *rc = rc_of(v);
    if (!rc || *rc < 0 || --*rc > 0)
        return;
    switch (v.t) {
    case JV_STR:
        free(v.u.s);
        break;
    case JV_LIST:
        for (size_t i = 0; i < v.u.l->n; i++)
            jv_drop(v.u.l->v[i]);
        free(v.u.l->v);
        free(v.u.l);
        break;
    case JV_DICT:
        dict_free(v.u.d);
        break;
    case JV_NS:
        if (v.u.ns->attrs)
            dict_free(v.u.ns->attrs);
        free(v.u.ns);
        break;
    case JV_MACRO:
        jscope_drop(v.u.m->closure);
        free(v.u.m);
        break;
    case JV_FUNC:
        jv_drop(v.u.fn->self);
        free(v.u.fn);
        break;
    case JV_LOOP:
        jv_drop(jv_list(v.u.lp->items));
        jv_drop(v.u.lp->last_changed);
        jscope_drop(v.u.lp->scope);
        free(v.u.lp);
        break;
    default:
        break;
    }
}

/* ---- strings ------------------------------------------------------------------------ */

struct jstr *jstr_alloc(struct jstate *st, size_t len)
{
    if (len > st->max_output) {
        jfail(st, NULL, "string of %zu bytes over the limit", len);
        return NULL;
    }
    if (jwork(st, NULL, len + 16))
        return NULL;
    struct jstr *s = malloc(sizeof(*s) + len + 1);
    if (!s) {
        jnomem(st);
        return NULL;
    }
    s->rc = 1;
    s->ascii = 0;
    s->markup = 0;
    s->len = len;
    s->s[len] = 0;
    return s;
}

void jstr_seal(struct jstr *s)
{
    uint8_t ascii = 1;
    for (size_t i = 0; i < s->len; i++)
        if ((unsigned char)s->s[i] >= 0x80) {
            ascii = 0;
            break;
        }
    s->ascii = ascii;
}

int jv_str(struct jstate *st, const char *p, size_t n, struct jv *out)
{
    struct jstr *s = jstr_alloc(st, n);
    if (!s)
        return -EINVAL;
    if (n)
        memcpy(s->s, p, n);
    jstr_seal(s);
    *out = (struct jv){.t = JV_STR, .u.s = s};
    return 0;
}

int jv_str_buf(struct jstate *st, struct jbuf *b, struct jv *out)
{
    int rc = jv_str(st, b->p ? b->p : "", b->n, out);
    jbuf_free(b);
    return rc;
}

struct jv jv_str_static(struct jstr *s)
{
    return (struct jv){.t = JV_STR, .u.s = s};
}

/* ---- lists and dicts ---------------------------------------------------------------- */

static uint16_t depth_of(struct jv v)
{
    return v.t == JV_LIST ? v.u.l->depth : v.t == JV_DICT ? v.u.d->depth : 0;
}

struct jlist *jlist_new(struct jstate *st, size_t cap)
{
    if (jwork(st, NULL, 32 + cap * sizeof(struct jv)))
        return NULL;
    struct jlist *l = calloc(1, sizeof(*l));
    if (l && cap && !(l->v = malloc(cap * sizeof(struct jv)))) {
        free(l);
        l = NULL;
    }
    if (!l) {
        jnomem(st);
        return NULL;
    }
    l->rc = 1;
    l->cap = cap;
    return l;
}

int jlist_push(struct jstate *st, struct jlist *l, struct jv v)
{
    uint16_t d = depth_of(v);
    if (d >= J_MAX_JSON_DEPTH) {
        jv_drop(v);
        return jfail(st, NULL, "values nested more than %d deep", J_MAX_JSON_DEPTH);
    }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        struct jv *q = realloc(l->v, cap * sizeof(*q));
        if (!q) {
            jv_drop(v);
            return jnomem(st);
        }
        l->v = q;
        l->cap = cap;
    }
    int rc = jwork(st, NULL, sizeof(struct jv));
    if (rc) {
        jv_drop(v);
        return rc;
    }
    if (d + 1 > l->depth)
        l->depth = d + 1;
    l->v[l->n++] = v;
    return 0;
}

struct jv jv_list(struct jlist *l)
{
    return (struct jv){.t = JV_LIST, .u.l = l};
}

struct jdict *jdict_new(struct jstate *st)
{
    if (jwork(st, NULL, 64))
        return NULL;
    struct jdict *d = calloc(1, sizeof(*d));
    if (!d) {
        jnomem(st);
        return NULL;
    }
    d->rc = 1;
    return d;
}

struct jv jv_dict(struct jdict *d)
{
    return (struct jv){.t = JV_DICT, .u.d = d};
}

/* Python hashes 1, 1.0 and True alike: so do keys here */
static uint64_t key_hash(struct jv k)
{
    uint64_t h = 1469598103934665603ull;
    switch (k.t) {
    case JV_STR:
        for (size_t i = 0; i < k.u.s->len; i++)
            h = (h ^ (unsigned char)k.u.s->s[i]) * 1099511628211ull;
        return h;
    case JV_BOOL:
        return (uint64_t)k.u.b * 0x9e3779b97f4a7c15ull;
    case JV_INT:
        return (uint64_t)k.u.i * 0x9e3779b97f4a7c15ull;
    case JV_FLOAT:
        if (k.u.f == floor(k.u.f) && fabs(k.u.f) < 9e18)
            return (uint64_t)(int64_t)k.u.f * 0x9e3779b97f4a7c15ull;
        {
            uint64_t bits;
            memcpy(&bits, &k.u.f, sizeof(bits));
            return bits * 0x9e3779b97f4a7c15ull;
        }
    default:
        return (uint64_t)k.t;
    }
}

static void index_put(struct jdict *d, size_t entry)
{
    size_t mask = d->idx_cap - 1, i = key_hash(d->k[entry]) & mask;
    while (d->idx[i])
        i = (i + 1) & mask;
    d->idx[i] = (uint32_t)(entry + 1);
}

static int index_grow(struct jdict *d)
{
    size_t cap = d->idx_cap ? d->idx_cap * 2 : 32;
    uint32_t *idx = calloc(cap, sizeof(*idx));
    if (!idx)
        return -ENOMEM;
    free(d->idx);
    d->idx = idx;
    d->idx_cap = cap;
    for (size_t i = 0; i < d->n; i++)
        index_put(d, i);
    return 0;
}

static struct jv *dict_find(const struct jdict *d, struct jv k, size_t *at)
{
    if (d->idx) {
        size_t mask = d->idx_cap - 1, i = key_hash(k) & mask;
        for (; d->idx[i]; i = (i + 1) & mask) {
            size_t e = d->idx[i] - 1;
            if (jv_eq(d->k[e], k)) {
                if (at)
                    *at = e;
                return &d->v[e];
            }
        }
        return NULL;
    }
    for (size_t i = 0; i < d->n; i++)
        if (jv_eq(d->k[i], k)) {
            if (at)
                *at = i;
            return &d->v[i];
        }
    return NULL;
}

struct jv *jdict_get(const struct jdict *d, struct jv k)
{
    return d ? dict_find(d, k, NULL) : NULL;
}

struct jv *jdict_get_str(const struct jdict *d, const char *p, size_t n)
{
    if (!d)
        return NULL;
    if (d->idx) {
        uint64_t h = 1469598103934665603ull;
        for (size_t i = 0; i < n; i++)
            h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
        size_t mask = d->idx_cap - 1;
        for (size_t i = h & mask; d->idx[i]; i = (i + 1) & mask) {
            struct jv k = d->k[d->idx[i] - 1];
            if (k.t == JV_STR && k.u.s->len == n && !memcmp(k.u.s->s, p, n))
                return &d->v[d->idx[i] - 1];
        }
        return NULL;
    }
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == JV_STR && d->k[i].u.s->len == n && !memcmp(d->k[i].u.s->s, p, n))
            return &d->v[i];
    return NULL;
}

int jdict_set(struct jstate *st, struct jdict *d, struct jv k, struct jv v)
{
    uint16_t dv = depth_of(v), dk = depth_of(k);
    if (dv >= J_MAX_JSON_DEPTH || dk >= J_MAX_JSON_DEPTH) {
        jv_drop(k);
        jv_drop(v);
        return jfail(st, NULL, "values nested more than %d deep", J_MAX_JSON_DEPTH);
    }
    struct jv *old = dict_find(d, k, NULL);
    if (old) {
        jv_drop(*old);
        *old = v;
        jv_drop(k);
        if (dv + 1 > d->depth)
            d->depth = dv + 1;
        return 0;
    }
    int rc = jwork(st, NULL, 2 * sizeof(struct jv));
    if (rc) {
        jv_drop(k);
        jv_drop(v);
        return rc;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        struct jv *nk = realloc(d->k, cap * sizeof(*nk));
        if (nk)
            d->k = nk;
        struct jv *nv = nk ? realloc(d->v, cap * sizeof(*nv)) : NULL;
        if (!nv) {
            jv_drop(k);
            jv_drop(v);
            return jnomem(st);
        }
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n] = v;
    d->n++;
    if (dv + 1 > d->depth)
        d->depth = dv + 1;
    if (d->n > 8) {
        if (d->n * 2 > d->idx_cap) {
            if (index_grow(d))
                return jnomem(st);
        } else {
            index_put(d, d->n - 1);
        }
    }
    return 0;
}

/* ---- from JSON ---------------------------------------------------------------------- */

int jv_from_json(struct jstate *st, const json_t *j, struct jv *out, int depth)
{
    if (depth > J_MAX_JSON_DEPTH)
        return jfail(st, NULL, "JSON nested more than %d deep", J_MAX_JSON_DEPTH);
    int rc = 0;
    switch (json_typeof(j)) {
    case JSON_NULL:
        *out = jv_none();
        return 0;
    case JSON_TRUE:
        *out = jv_bool(true);
        return 0;
    case JSON_FALSE:
        *out = jv_bool(false);
        return 0;
    case JSON_INTEGER:
        *out = jv_int(json_integer_value(j));
        return 0;
    case JSON_REAL:
        *out = jv_float(json_real_value(j));
        return 0;
    case JSON_STRING:
        return jv_str(st, json_string_value(j), json_string_length(j), out);
    case JSON_ARRAY: {
        struct jlist *l = jlist_new(st, json_array_size(j));
        if (!l)
            return -EINVAL;
        size_t i;
        json_t *x;
        json_array_foreach(j, i, x) {
            struct jv v;
            if ((rc = jv_from_json(st, x, &v, depth + 1)) || (rc = jlist_push(st, l, v)))
                break;
        }
        *out = jv_list(l);
        break;
    }
    case JSON_OBJECT: {
        struct jdict *d = jdict_new(st);
        if (!d)
            return -EINVAL;
        const char *key;
        json_t *x;
        *out = jv_dict(d);
        /* jansson keeps insertion order: Python's dict order */
        json_object_foreach((json_t *)j, key, x) {
            struct jv k, v;
            if ((rc = jv_str(st, key, strlen(key), &k)))
                break;
            if ((rc = jv_from_json(st, x, &v, depth + 1))) {
                jv_drop(k);
                break;
            }
            if ((rc = jdict_set(st, d, k, v)))
                break;
        }
        break;
    }
    default:
        return jfail(st, NULL, "unsupported JSON value");
    }
    if (rc) {
        jv_drop(*out);
        *out = jv_undef();
    }
    return rc;
}

/* ---- Python's truth, equality and order --------------------------------------------- */

bool jv_truthy(struct jv v)
{
    switch (v.t) {
    case JV_UNDEF:
    case JV_NONE:
        return false;
    case JV_BOOL:
        return v.u.b;
    case JV_INT:
        return v.u.i != 0;
    case JV_FLOAT:
        return v.u.f != 0;
    case JV_STR:
        return v.u.s->len != 0;
    case JV_LIST:
        return v.u.l->n != 0 || v.u.l->view == JL_GENERATOR || v.u.l->view == JL_REVERSED;
    case JV_DICT:
        return v.u.d->n != 0;
    default:
        return true;
    }
}

static double num_of(struct jv v)
{
    return v.t == JV_FLOAT ? v.u.f : v.t == JV_INT ? (double)v.u.i : (double)v.u.b;
}

bool jv_eq(struct jv a, struct jv b)
{
    if (jv_is_num(a) && jv_is_num(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT)
            return (a.t == JV_INT ? a.u.i : a.u.b) == (b.t == JV_INT ? b.u.i : b.u.b);
        return num_of(a) == num_of(b);
    }
    if (a.t != b.t)
        return false;
    switch (a.t) {
    case JV_UNDEF:
    case JV_NONE:
        return true;
    case JV_STR:
        return a.u.s->len == b.u.s->len && !memcmp(a.u.s->s, b.u.s->s, a.u.s->len);
    case JV_LIST:
        if (a.u.l->view || b.u.l->view)
            return a.u.l == b.u.l;
        if (a.u.l->tuple != b.u.l->tuple || a.u.l->n != b.u.l->n)
            return false;
        for (size_t i = 0; i < a.u.l->n; i++)
            if (!jv_eq(a.u.l->v[i], b.u.l->v[i]))
                return false;
        return true;
    case JV_DICT:
        if (a.u.d->n != b.u.d->n)
            return false;
        for (size_t i = 0; i < a.u.d->n; i++) {
            struct jv *o = jdict_get(b.u.d, a.u.d->k[i]);
            if (!o || !jv_eq(a.u.d->v[i], *o))
                return false;
        }
        return true;
    case JV_NS:
        return a.u.ns == b.u.ns;
    case JV_MACRO:
        return a.u.m == b.u.m;
    case JV_FUNC:
        return a.u.fn == b.u.fn;
    case JV_LOOP:
        return a.u.lp == b.u.lp;
    default:
        return false;
    }
}

const char *jv_type_name(uint8_t t)
{
    static const char *const names[] = {
        [JV_UNDEF] = "Undefined", [JV_NONE] = "NoneType", [JV_BOOL] = "bool",
        [JV_INT] = "int",         [JV_FLOAT] = "float",   [JV_STR] = "str",
        [JV_LIST] = "list",       [JV_DICT] = "dict",     [JV_NS] = "Namespace",
        [JV_MACRO] = "Macro",     [JV_FUNC] = "builtin_function_or_method",
        [JV_LOOP] = "LoopContext",
    };
    return t < sizeof(names) / sizeof(names[0]) ? names[t] : "object";
}

const char *jv_type_name_v(struct jv v)
{
    static const char *const views[] = {
        [JL_GENERATOR] = "generator", [JL_ITEMS] = "dict_items",  [JL_KEYS] = "dict_keys",
        [JL_VALUES] = "dict_values",  [JL_REVERSED] = "list_reverseiterator",
    };
    if (v.t == JV_LIST && v.u.l->view)
        return views[v.u.l->view];
    return v.t == JV_LIST && v.u.l->tuple ? "tuple" : jv_type_name(v.t);
}

int jundef_fail(struct jstate *st, const struct jn *at, struct jv u)
{
    switch (u.hint) {
    case JU_NAME:
        return jfail(st, at, "'%s' is undefined", u.u.name);
    case JU_ATTR:
        if (u.u.name)
            return jfail(st, at, "'%s object' has no attribute '%s'", jv_type_name(u.owner),
                         u.u.name);
        return jfail(st, at, "'%s object' has no such element", jv_type_name(u.owner));
    case JU_UNSAFE:
        return jfail(st, at, "access to attribute '%s' of '%s' object is unsafe.", u.u.name,
                     jv_type_name(u.owner));
    case JU_EMPTY:
        return jfail(st, at, "No %s item, sequence was empty.", u.u.name);
    default:
        return jfail(st, at, "value is undefined");
    }
}

int jv_cmp(struct jstate *st, const struct jn *at, struct jv a, struct jv b, int *res)
{
    if (a.t == JV_UNDEF)
        return jundef_fail(st, at, a);
    if (b.t == JV_UNDEF)
        return jundef_fail(st, at, b);
    if (jv_is_num(a) && jv_is_num(b)) {
        if (a.t != JV_FLOAT && b.t != JV_FLOAT) {
            int64_t x = a.t == JV_INT ? a.u.i : a.u.b, y = b.t == JV_INT ? b.u.i : b.u.b;
            *res = (x > y) - (x < y);
        } else {
            double x = num_of(a), y = num_of(b);
            *res = (x > y) - (x < y); /* NaN compares equal here; Python's < is false */
        }
        return 0;
    }
    if (a.t == JV_STR && b.t == JV_STR) {
        /* byte order of UTF-8 is code point order */
        size_t n = a.u.s->len < b.u.s->len ? a.u.s->len : b.u.s->len;
        int c = memcmp(a.u.s->s, b.u.s->s, n);
        *res = c ? (c > 0) - (c < 0) : (a.u.s->len > b.u.s->len) - (a.u.s->len < b.u.s->len);
        return 0;
    }
    if (a.t == JV_LIST && b.t == JV_LIST && a.u.l->tuple == b.u.l->tuple && !a.u.l->view &&
        !b.u.l->view) {
        for (size_t i = 0; i < a.u.l->n && i < b.u.l->n; i++) {
            if (jv_eq(a.u.l->v[i], b.u.l->v[i]))
                continue;
            return jv_cmp(st, at, a.u.l->v[i], b.u.l->v[i], res);
        }
        *res = (a.u.l->n > b.u.l->n) - (a.u.l->n < b.u.l->n);
        return 0;
    }
    return jfail(st, at, "'<' not supported between instances of '%s' and '%s'",
                 jv_type_name_v(a), jv_type_name_v(b));
}

int jv_contains(struct jstate *st, const struct jn *at, struct jv hay, struct jv needle,
                bool *res)
{
    switch (hay.t) {
    case JV_UNDEF: /* iterates as empty */
        *res = false;
        return 0;
    case JV_STR:
        if (needle.t != JV_STR) {
            if (needle.t == JV_UNDEF)
                return jundef_fail(st, at, needle);
            return jfail(st, at, "'in <string>' requires string as left operand, not %s",
                         jv_type_name_v(needle));
        }
        *res = needle.u.s->len == 0 ||
               memmem(hay.u.s->s, hay.u.s->len, needle.u.s->s, needle.u.s->len) != NULL;
        return 0;
    case JV_LIST:
        *res = false;
        for (size_t i = 0; i < hay.u.l->n && !*res; i++)
            *res = jv_eq(hay.u.l->v[i], needle);
        return jwork(st, at, hay.u.l->n);
    case JV_DICT:
        *res = jdict_get(hay.u.d, needle) != NULL;
        return 0;
    case JV_NS:
        *res = needle.t == JV_STR && jdict_get(hay.u.ns->attrs, needle) != NULL;
        return 0;
    default:
        return jfail(st, at, "argument of type '%s' is not iterable", jv_type_name_v(hay));
    }
}

int jv_length(struct jstate *st, const struct jn *at, struct jv v, int64_t *n)
{
    switch (v.t) {
    case JV_UNDEF:
        *n = 0;
        return 0;
    case JV_STR:
        *n = (int64_t)(v.u.s->ascii ? v.u.s->len : jutf8_count(v.u.s->s, v.u.s->len));
        return 0;
    case JV_LIST:
        if (v.u.l->view == JL_GENERATOR || v.u.l->view == JL_REVERSED)
            break;
        *n = (int64_t)v.u.l->n;
        return 0;
    case JV_DICT:
        *n = (int64_t)v.u.d->n;
        return 0;
    case JV_LOOP:
        *n = (int64_t)v.u.lp->items->n;
        return 0;
    default:
        break;
    }
    return jfail(st, at, "object of type '%s' has no len()", jv_type_name_v(v));
}

int jv_iterate(struct jstate *st, const struct jn *at, struct jv v, struct jlist **out)
{
    switch (v.t) {
    case JV_UNDEF:
        *out = jlist_new(st, 0);
        return *out ? 0 : -EINVAL;
    case JV_LIST:
        *out = (struct jlist *)jv_ref(v).u.l;
        return 0;
    case JV_DICT: {
        struct jlist *l = jlist_new(st, v.u.d->n);
        if (!l)
            return -EINVAL;
        for (size_t i = 0; i < v.u.d->n; i++) {
            int rc = jlist_push(st, l, jv_ref(v.u.d->k[i]));
            if (rc) {
                jv_drop(jv_list(l));
                return rc;
            }
        }
        *out = l;
        return 0;
    }
    case JV_STR: {
        struct jlist *l = jlist_new(st, v.u.s->len);
        if (!l)
            return -EINVAL;
        for (size_t i = 0, len; i < v.u.s->len; i += len) {
            moe_utf8_next(v.u.s->s + i, v.u.s->len - i, &len);
            struct jv c;
            int rc = jv_str(st, v.u.s->s + i, len, &c);
            if (!rc)
                rc = jlist_push(st, l, c);
            if (rc) {
                jv_drop(jv_list(l));
                return rc;
            }
        }
        *out = l;
        return 0;
    }
    case JV_NS:
        return jfail(st, at, "'Namespace' object is not iterable");
    default:
        return jfail(st, at, "'%s' object is not iterable", jv_type_name_v(v));
    }
}
