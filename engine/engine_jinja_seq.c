/* Jinja filters over sequences: first, last, join, list, items, map and
 * the select family, sort, dictsort, unique, min, max, sum, reverse, with
 * jinja2's semantics: sort, unique, dictsort, min and max ignore case unless
 * told not to and keep equal items in order; map, select, reject, items and
 * unique hand out generators (iterable once, no len(), no JSON), as jinja2's
 * do. Attributes are looked up as jinja2's make_attrgetter does, "a.b.0"
 * through getitem. */
#include "engine/engine_jinja_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* jinja2's make_attrgetter: "a.b.0" through getitem, one part at a time */
static int attr_path(struct jstate *st, const struct jn *at, struct jv item, struct jv attr,
                     struct jv *out)
{
    if (attr.t != JV_STR)
        return jgetitem(st, at, item, attr, out);
    struct jv cur = jv_ref(item);
    const char *p = attr.u.s->s, *end = p + attr.u.s->len;
    int rc = 0;
    while (!rc) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        size_t n = dot ? (size_t)(dot - p) : (size_t)(end - p);
        bool digits = n > 0;
        for (size_t i = 0; i < n; i++)
            digits &= p[i] >= '0' && p[i] <= '9';
        struct jv key, next = jv_undef();
        if (digits && n < 18)
            key = jv_int(strtoll(p, NULL, 10));
        else if ((rc = jv_str(st, p, n, &key)))
            break;
        if (cur.t == JV_UNDEF)
            next = jv_undef();
        else
            rc = jgetitem(st, at, cur, key, &next);
        jv_drop(key);
        jv_drop(cur);
        cur = next;
        if (!dot)
            break;
        p = dot + 1;
    }
    if (rc) {
        jv_drop(cur);
        return rc;
    }
    *out = cur;
    return 0;
}

/* the key sort, unique, min and max compare: the attribute, lower-cased
 * unless case_sensitive */
static int sort_key(struct jstate *st, const struct jn *at, struct jv item, struct jv *attr,
                    bool case_sensitive, struct jv *out)
{
    struct jv k;
    int rc = attr && attr->t != JV_NONE ? attr_path(st, at, item, *attr, &k)
                                        : (k = jv_ref(item), 0);
    if (rc)
        return rc;
    if (!case_sensitive && k.t == JV_STR) {
        struct jv low;
        rc = jstr_case(st, k, 0, &low);
        jv_drop(k);
        if (rc)
            return rc;
        k = low;
    }
    *out = k;
    return 0;
}

/* stable merge sort of idx[] by keys[] */
static int merge_sort(struct jstate *st, const struct jn *at, struct jv *keys, size_t *idx,
                      size_t *tmp, size_t n, bool reverse)
{
    if (n < 2)
        return 0;
    size_t h = n / 2;
    int rc = merge_sort(st, at, keys, idx, tmp, h, reverse);
    if (!rc)
        rc = merge_sort(st, at, keys, idx + h, tmp, n - h, reverse);
    if (rc)
        return rc;
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) {
        int c;
        if ((rc = jv_cmp(st, at, keys[idx[j]], keys[idx[i]], &c)))
            return rc;
        /* take the right one only when it must come strictly first */
        bool right = reverse ? c > 0 : c < 0;
        tmp[k++] = right ? idx[j++] : idx[i++];
    }
    while (i < h)
        tmp[k++] = idx[i++];
    while (j < n)
        tmp[k++] = idx[j++];
    memcpy(idx, tmp, n * sizeof(*idx));
    return jwork(st, at, n);
}

static int sorted(struct jstate *st, const struct jn *at, struct jlist *items, struct jv *keys,
                  bool reverse, struct jv *out)
{
    size_t n = items->n;
    size_t *idx = malloc((n + 1) * sizeof(*idx)), *tmp = malloc((n + 1) * sizeof(*tmp));
    int rc = idx && tmp ? 0 : jnomem(st);
    for (size_t i = 0; !rc && i < n; i++)
        idx[i] = i;
    if (!rc)
        rc = merge_sort(st, at, keys, idx, tmp, n, reverse);
    struct jlist *l = rc ? NULL : jlist_new(st, n);
    if (!rc && !l)
        rc = -EINVAL;
    for (size_t i = 0; !rc && i < n; i++)
        rc = jlist_push(st, l, jv_ref(items->v[idx[i]]));
    free(idx);
    free(tmp);
    if (rc) {
        if (l)
            jv_drop(jv_list(l));
        return rc;
    }
    *out = jv_list(l);
    return 0;
}

int jf_dictsort(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                      struct jv *out)
{
    bool cs = jarg_bool(a, 0, "case_sensitive", false), rev = jarg_bool(a, 2, "reverse", false);
    struct jv *by = jarg(a, 1, "by");
    int pos = 0;
    if (by && by->t == JV_STR && !strcmp(by->u.s->s, "value"))
        pos = 1;
    else if (by && !(by->t == JV_STR && !strcmp(by->u.s->s, "key")))
        return jfail(st, at, "You can only sort by either \"key\" or \"value\"");
    if (in.t != JV_DICT)
        return jfail(st, at, "dictsort needs a mapping");
    struct jargs none = {0};
    struct jv items;
    int rc = jmethod_call(st, at, in, "items", &none, &items);
    if (rc)
        return rc;
    struct jv *keys = calloc(items.u.l->n + 1, sizeof(*keys));
    if (!keys)
        rc = jnomem(st);
    for (size_t i = 0; !rc && i < items.u.l->n; i++)
        rc = sort_key(st, at, items.u.l->v[i].u.l->v[pos], NULL, cs, &keys[i]);
    if (!rc)
        rc = sorted(st, at, items.u.l, keys, rev, out);
    for (size_t i = 0; keys && i < items.u.l->n; i++)
        jv_drop(keys[i]);
    free(keys);
    jv_drop(items);
    return rc;
}

int jf_first(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                   struct jv *out)
{
    struct jlist *l;
    int rc = jv_iterate(st, at, in, &l);
    if (rc)
        return rc;
    *out = l->n ? jv_ref(l->v[0]) : jv_undef_hint(JU_EMPTY, 0, "first");
    jv_drop(jv_list(l));
    return 0;
}

int jf_last(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                  struct jv *out)
{
    if (in.t == JV_LIST && (in.u.l->view == JL_GENERATOR || in.u.l->view == JL_REVERSED))
        return jfail(st, at, "'%s' object is not reversible", jv_type_name_v(in));
    struct jlist *l;
    int rc = jv_iterate(st, at, in, &l);
    if (rc)
        return rc;
    *out = l->n ? jv_ref(l->v[l->n - 1]) : jv_undef_hint(JU_EMPTY, 0, "last");
    jv_drop(jv_list(l));
    return 0;
}

int jf_items(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                   struct jv *out)
{
    if (in.t == JV_UNDEF) {
        struct jlist *l = jlist_new(st, 0);
        if (!l)
            return -EINVAL;
        *out = jv_list(l);
        return 0;
    }
    if (in.t != JV_DICT)
        return jfail(st, at, "Can only get item pairs from a mapping.");
    struct jargs none = {0};
    int rc = jmethod_call(st, at, in, "items", &none, out);
    if (!rc)
        out->u.l->view = JL_GENERATOR;
    return rc;
}

int jf_join(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                  struct jv *out)
{
    struct jv *sep = jarg(a, 0, "d"), *attr = jarg(a, 1, "attribute");
    struct jlist *l;
    int rc = jv_iterate(st, at, in, &l);
    if (rc)
        return rc;
    struct jbuf b = {0};
    for (size_t i = 0; !rc && i < l->n; i++) {
        if (i && sep)
            rc = sep->t == JV_STR ? jbuf_put(st, &b, sep->u.s->s, sep->u.s->len)
                                  : jv_to_buf(st, *sep, &b);
        struct jv item = jv_ref(l->v[i]);
        if (!rc && attr && attr->t != JV_NONE) {
            struct jv x;
            rc = attr_path(st, at, l->v[i], *attr, &x);
            jv_drop(item);
            item = rc ? jv_undef() : x;
        }
        if (!rc)
            rc = jv_to_buf(st, item, &b);
        jv_drop(item);
    }
    jv_drop(jv_list(l));
    if (rc) {
        jbuf_free(&b);
        return rc;
    }
    return jv_str_buf(st, &b, out);
}

int jf_list(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                  struct jv *out)
{
    struct jlist *l;
    int rc = jv_iterate(st, at, in, &l);
    if (rc)
        return rc;
    if (l->tuple || l->view || l->rc != 1) {
        /* a new list, not the same (or a tuple) */
        struct jlist *c = jlist_new(st, l->n);
        for (size_t i = 0; c && !rc && i < l->n; i++)
            rc = jlist_push(st, c, jv_ref(l->v[i]));
        jv_drop(jv_list(l));
        if (!c)
            return -EINVAL;
        l = c;
    }
    *out = jv_list(l);
    return rc;
}

/* map, select, reject, selectattr, rejectattr */
static int each(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                struct jv *out, int kind)
{
    enum { MAP, SELECT, REJECT, SELECTATTR, REJECTATTR };
    struct jlist *l, *r = NULL;
    int rc = jv_iterate(st, at, in, &l);
    if (rc)
        return rc;
    struct jv *attr = NULL, *def = NULL;
    int fid = -1;
    size_t first_arg = 0;
    if (kind == MAP) {
        attr = jarg(a, 0x7fffffff, "attribute");
        def = jarg(a, 0x7fffffff, "default");
        if (!attr) {
            struct jv *name = jarg(a, 0, NULL);
            if (!name || name->t != JV_STR || (fid = jfilter_id(name->u.s->s)) < 0)
                rc = jfail(st, at, "map() needs an attribute or a known filter name");
            first_arg = 1;
        }
    } else {
        if (kind == SELECTATTR || kind == REJECTATTR) {
            attr = jarg(a, 0, NULL);
            if (!attr)
                rc = jfail(st, at, "Missing parameter for attribute name");
            first_arg = 1;
        }
        struct jv *tname = jarg(a, first_arg, NULL);
        if (!rc && tname) {
            if (tname->t != JV_STR || (fid = jtest_id(tname->u.s->s)) < 0)
                rc = jfail(st, at, "No test named '%s'.",
                           tname->t == JV_STR ? tname->u.s->s : "?");
            first_arg++;
        }
    }
    if (!rc && !(r = jlist_new(st, l->n)))
        rc = -EINVAL;
    /* the rest of the arguments go to the filter or test */
    struct jargs sub = {.pos = a->npos > first_arg ? a->pos + first_arg : NULL,
                        .npos = a->npos > first_arg ? a->npos - first_arg : 0,
                        .kname = kind == MAP && !attr ? a->kname : NULL,
                        .kval = kind == MAP && !attr ? a->kval : NULL,
                        .nkw = kind == MAP && !attr ? a->nkw : 0};
    for (size_t i = 0; !rc && i < l->n; i++) {
        struct jv item = l->v[i], v;
        if (attr) {
            if ((rc = attr_path(st, at, item, *attr, &v)))
                break;
        } else {
            v = jv_ref(item);
        }
        if (kind == MAP) {
            if (attr) {
                if (v.t == JV_UNDEF && def) {
                    jv_drop(v);
                    v = jv_ref(*def);
                }
                rc = jlist_push(st, r, v);
            } else {
                struct jv m;
                rc = jfilter_apply(st, at, fid, v, &sub, &m);
                jv_drop(v);
                if (!rc)
                    rc = jlist_push(st, r, m);
            }
            continue;
        }
        bool ok;
        if (fid >= 0)
            rc = jtest_apply(st, at, fid, v, &sub, &ok);
        else
            ok = jv_truthy(v);
        jv_drop(v);
        if (!rc && ok == (kind == SELECT || kind == SELECTATTR))
            rc = jlist_push(st, r, jv_ref(item));
    }
    jv_drop(jv_list(l));
    if (rc) {
        if (r)
            jv_drop(jv_list(r));
        return rc;
    }
    r->view = JL_GENERATOR;
    *out = jv_list(r);
    return 0;
}

int jf_map(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                 struct jv *out)
{
    return each(st, at, in, a, out, 0);
}
int jf_select(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                    struct jv *out)
{
    return each(st, at, in, a, out, 1);
}
int jf_reject(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                    struct jv *out)
{
    return each(st, at, in, a, out, 2);
}
int jf_selectattr(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                        struct jv *out)
{
    return each(st, at, in, a, out, 3);
}
int jf_rejectattr(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                        struct jv *out)
{
    return each(st, at, in, a, out, 4);
}

/* min / max: the item whose key is least / greatest, the first among equals */
static int min_max(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                   struct jv *out, bool max)
{
    bool cs = jarg_bool(a, 0, "case_sensitive", false);
    struct jv *attr = jarg(a, 1, "attribute");
    struct jlist *l;
    int rc = jv_iterate(st, at, in, &l);
    if (rc)
        return rc;
    if (!l->n) {
        jv_drop(jv_list(l));
        *out = jv_undef();
        return 0;
    }
    struct jv best = jv_undef(), best_key = jv_undef();
    for (size_t i = 0; !rc && i < l->n; i++) {
        struct jv k;
        if ((rc = sort_key(st, at, l->v[i], attr, cs, &k)))
            break;
        int c = 1;
        if (i && (rc = jv_cmp(st, at, k, best_key, &c))) {
            jv_drop(k);
            break;
        }
        if (!i || (max ? c > 0 : c < 0)) {
            jv_drop(best_key);
            jv_drop(best);
            best_key = k;
            best = jv_ref(l->v[i]);
        } else {
            jv_drop(k);
        }
    }
    jv_drop(best_key);
    jv_drop(jv_list(l));
    if (rc) {
        jv_drop(best);
        return rc;
    }
    *out = best;
    return 0;
}

int jf_max(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                 struct jv *out)
{
    return min_max(st, at, in, a, out, true);
}
int jf_min(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                 struct jv *out)
{
    return min_max(st, at, in, a, out, false);
}

int jf_reverse(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                     struct jv *out)
{
    struct jlist *l;
    int rc = jv_iterate(st, at, in, &l);
    if (rc)
        return rc;
    struct jbuf b = {0};
    struct jlist *r = in.t == JV_STR ? NULL : jlist_new(st, l->n);
    if (in.t != JV_STR && !r)
        rc = -EINVAL;
    for (size_t i = l->n; !rc && i-- > 0;)
        rc = r ? jlist_push(st, r, jv_ref(l->v[i]))
               : jbuf_put(st, &b, l->v[i].u.s->s, l->v[i].u.s->len);
    jv_drop(jv_list(l));
    if (rc) {
        if (r)
            jv_drop(jv_list(r));
        jbuf_free(&b);
        return rc;
    }
    if (r) {
        /* reversed(list) is an iterator; reversed(dict) too */
        r->view = in.t == JV_LIST && (in.u.l->view == JL_GENERATOR) ? JL_PLAIN : JL_REVERSED;
        *out = jv_list(r);
        return 0;
    }
    return jv_str_buf(st, &b, out);
}

int jf_sort(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                  struct jv *out)
{
    bool rev = jarg_bool(a, 0, "reverse", false), cs = jarg_bool(a, 1, "case_sensitive", false);
    struct jv *attr = jarg(a, 2, "attribute");
    struct jlist *l;
    int rc = jv_iterate(st, at, in, &l);
    if (rc)
        return rc;
    struct jv *keys = calloc(l->n + 1, sizeof(*keys));
    if (!keys)
        rc = jnomem(st);
    for (size_t i = 0; !rc && i < l->n; i++)
        rc = sort_key(st, at, l->v[i], attr, cs, &keys[i]);
    if (!rc)
        rc = sorted(st, at, l, keys, rev, out);
    for (size_t i = 0; keys && i < l->n; i++)
        jv_drop(keys[i]);
    free(keys);
    jv_drop(jv_list(l));
    return rc;
}

int jf_sum(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                 struct jv *out)
{
    struct jv *attr = jarg(a, 0, "attribute"), *start = jarg(a, 1, "start");
    struct jlist *l;
    int rc = jv_iterate(st, at, in, &l);
    if (rc)
        return rc;
    struct jv acc = start ? jv_ref(*start) : jv_int(0);
    for (size_t i = 0; !rc && i < l->n; i++) {
        struct jv x, r;
        if (attr && attr->t != JV_NONE)
            rc = attr_path(st, at, l->v[i], *attr, &x);
        else
            x = jv_ref(l->v[i]);
        if (rc)
            break;
        if (!jv_is_num(acc) || !jv_is_num(x)) {
            rc = jfail(st, at, "unsupported operand type(s) for +: '%s' and '%s'",
                       jv_type_name_v(acc), jv_type_name_v(x));
        } else if (acc.t != JV_FLOAT && x.t != JV_FLOAT) {
            int64_t s;
            int64_t xa = acc.t == JV_INT ? acc.u.i : acc.u.b, xb = x.t == JV_INT ? x.u.i : x.u.b;
            if (__builtin_add_overflow(xa, xb, &s))
                rc = jfail(st, at, "integer overflow");
            r = jv_int(s);
        } else {
            double fa = acc.t == JV_FLOAT ? acc.u.f : acc.t == JV_INT ? (double)acc.u.i : acc.u.b;
            double fb = x.t == JV_FLOAT ? x.u.f : x.t == JV_INT ? (double)x.u.i : x.u.b;
            r = jv_float(fa + fb);
        }
        jv_drop(x);
        if (!rc) {
            jv_drop(acc);
            acc = r;
        }
    }
    jv_drop(jv_list(l));
    if (rc) {
        jv_drop(acc);
        return rc;
    }
    *out = acc;
    return 0;
}

int jf_unique(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                    struct jv *out)
{
    bool cs = jarg_bool(a, 0, "case_sensitive", false);
    struct jv *attr = jarg(a, 1, "attribute");
    struct jlist *l, *seen = NULL, *r = NULL;
    int rc = jv_iterate(st, at, in, &l);
    if (rc)
        return rc;
    if (!(seen = jlist_new(st, l->n)) || !(r = jlist_new(st, l->n)))
        rc = -EINVAL;
    for (size_t i = 0; !rc && i < l->n; i++) {
        struct jv k;
        bool dup;
        if ((rc = sort_key(st, at, l->v[i], attr, cs, &k)))
            break;
        if ((rc = jv_contains(st, at, jv_list(seen), k, &dup))) {
            jv_drop(k);
            break;
        }
        if (dup) {
            jv_drop(k);
            continue;
        }
        if (!(rc = jlist_push(st, seen, k)))
            rc = jlist_push(st, r, jv_ref(l->v[i]));
    }
    jv_drop(jv_list(l));
    if (seen)
        jv_drop(jv_list(seen));
    if (rc) {
        if (r)
            jv_drop(jv_list(r));
        return rc;
    }
    r->view = JL_GENERATOR;
    *out = jv_list(r);
    return 0;
}
