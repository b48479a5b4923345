/* Jinja filters: the table of jinja2's built-in filters that chat
 * templates use, and those on text and numbers (trim, upper, replace,
 * indent, int, float, round, default, escape, safe ...) with jinja2's
 * semantics (the text filters str() their input), transformers' tojson in
 * place of jinja2's. The sequence filters are in engine_jinja_seq.c. The
 * names jinja2 has but moed does not implement are still known, so that such
 * a template compiles as it does under transformers and fails only if it
 * reaches one. */
#include "engine/engine_jinja_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*filter_fn)(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                         struct jv *out);

/* ---- helpers ------------------------------------------------------------------------ */

static int as_str(struct jstate *st, struct jv in, struct jv *out)
{
    return jv_to_str(st, in, out);
}

/* ---- filters ------------------------------------------------------------------------ */

static int f_abs(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                 struct jv *out)
{
    if (in.t == JV_INT) {
        if (in.u.i == INT64_MIN)
            return jfail(st, at, "integer overflow");
        *out = jv_int(in.u.i < 0 ? -in.u.i : in.u.i);
    } else if (in.t == JV_BOOL) {
        *out = jv_int(in.u.b);
    } else if (in.t == JV_FLOAT) {
        *out = jv_float(fabs(in.u.f));
    } else {
        return jfail(st, at, "bad operand type for abs(): '%s'", jv_type_name_v(in));
    }
    return 0;
}

static int f_attr(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                  struct jv *out)
{
    struct jv *name = jarg(a, 0, "name");
    if (!name || name->t != JV_STR)
        return jfail(st, at, "attr() needs an attribute name");
    if (in.t == JV_DICT) {
        /* attributes only: a dict's keys are items */
        int rc = jmethod_lookup(st, in, name->u.s->s, out);
        if (rc == 1)
            *out = jv_undef();
        return rc < 0 ? rc : 0;
    }
    return jgetattr(st, at, in, name->u.s->s, name->u.s->len, NULL, out);
}

static int f_capitalize(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                        struct jv *out)
{
    struct jv s;
    int rc = as_str(st, in, &s);
    if (!rc)
        rc = jstr_case(st, s, 3, out);
    jv_drop(s);
    return rc;
}

static int f_center(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                    struct jv *out)
{
    struct jv s, w = jv_int(80);
    struct jv *width = jarg(a, 0, "width");
    struct jargs sub = {.pos = width ? width : &w, .npos = 1};
    int rc = as_str(st, in, &s);
    if (!rc)
        rc = jmethod_call(st, at, s, "center", &sub, out);
    jv_drop(s);
    return rc;
}

static int f_length(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                    struct jv *out)
{
    int64_t n;
    int rc = jv_length(st, at, in, &n);
    if (!rc)
        *out = jv_int(n);
    return rc;
}

static int f_default(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                     struct jv *out)
{
    struct jv *def = jarg(a, 0, "default_value");
    bool boolean = jarg_bool(a, 1, "boolean", false);
    if (in.t == JV_UNDEF || (boolean && !jv_truthy(in))) {
        if (def)
            *out = jv_ref(*def);
        else
            return jv_str(st, "", 0, out);
    } else {
        *out = jv_ref(in);
    }
    return 0;
}

static int f_escape(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                    struct jv *out)
{
    if (in.t == JV_STR && in.u.s->markup) {
        *out = jv_ref(in);
        return 0;
    }
    struct jv s;
    int rc = as_str(st, in, &s);
    if (!rc)
        rc = jstr_escape(st, s, out);
    jv_drop(s);
    return rc;
}

static int f_forceescape(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                         struct jv *out)
{
    struct jv s;
    int rc = as_str(st, in, &s);
    if (!rc)
        rc = jstr_escape(st, s, out);
    jv_drop(s);
    return rc;
}

/* Python's float(str): surrounding whitespace, underscores between digits */
static bool parse_float(const struct jstr *s, double *out)
{
    char buf[128];
    size_t n = 0, i = 0, len = s->len;
    while (i < len && moe_py_space((unsigned char)s->s[i]))
        i++;
    while (len > i && moe_py_space((unsigned char)s->s[len - 1]))
        len--;
    for (; i < len; i++) {
        char c = s->s[i];
        if (c == '_' && n && buf[n - 1] >= '0' && buf[n - 1] <= '9' && i + 1 < len &&
            s->s[i + 1] >= '0' && s->s[i + 1] <= '9')
            continue;
        if (n == sizeof(buf) - 1 || c == 'x' || c == 'X' || c == 'p' || c == 'P')
            return false;
        buf[n++] = c;
    }
    buf[n] = 0;
    if (!n)
        return false;
    char *end;
    *out = strtod(buf, &end);
    return *end == 0;
}

static int f_float(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                   struct jv *out)
{
    struct jv *def = jarg(a, 0, "default");
    double f;
    if (in.t == JV_FLOAT)
        *out = in;
    else if (in.t == JV_INT || in.t == JV_BOOL)
        *out = jv_float(in.t == JV_INT ? (double)in.u.i : in.u.b);
    else if (in.t == JV_STR && parse_float(in.u.s, &f))
        *out = jv_float(f);
    else
        *out = def ? jv_ref(*def) : jv_float(0.0);
    return 0;
}

/* Python's int(str, base) */
static bool parse_int(const struct jstr *s, int base, int64_t *out)
{
    size_t i = 0, len = s->len;
    while (i < len && moe_py_space((unsigned char)s->s[i]))
        i++;
    while (len > i && moe_py_space((unsigned char)s->s[len - 1]))
        len--;
    bool neg = false;
    if (i < len && (s->s[i] == '+' || s->s[i] == '-'))
        neg = s->s[i++] == '-';
    if (i + 1 < len && s->s[i] == '0') {
        char p = (char)(s->s[i + 1] | 32);
        int pb = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
        if (pb && (base == pb || base == 0)) {
            base = pb;
            i += 2;
            if (i < len && s->s[i] == '_')
                i++;
        }
    }
    if (base == 0)
        base = 10;
    uint64_t v = 0;
    bool any = false;
    for (; i < len; i++) {
        char c = s->s[i];
        if (c == '_' && any && i + 1 < len && s->s[i + 1] != '_')
            continue;
        int d = c >= '0' && c <= '9' ? c - '0' : (c | 32) >= 'a' && (c | 32) <= 'z' ? (c | 32) - 'a' + 10 : 99;
        if (d >= base)
            return false;
        if (v > (uint64_t)INT64_MAX / (uint64_t)base)
            return false;
        v = v * (uint64_t)base + (uint64_t)d;
        any = true;
    }
    if (!any || v > (uint64_t)INT64_MAX)
        return false;
    *out = neg ? -(int64_t)v : (int64_t)v;
    return true;
}

static int f_int(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                 struct jv *out)
{
    struct jv *def = jarg(a, 0, "default"), *base = jarg(a, 1, "base");
    int b = base && base->t == JV_INT ? (int)base->u.i : 10;
    int64_t i;
    double f;
    if (in.t == JV_INT || in.t == JV_BOOL) {
        *out = jv_int(in.t == JV_INT ? in.u.i : in.u.b);
        return 0;
    }
    if (in.t == JV_STR && parse_int(in.u.s, b, &i)) {
        *out = jv_int(i);
        return 0;
    }
    if (in.t == JV_FLOAT || (in.t == JV_STR && parse_float(in.u.s, &f))) {
        f = in.t == JV_FLOAT ? in.u.f : f;
        if (isfinite(f) && fabs(f) < 9.2e18) {
            *out = jv_int((int64_t)f);
            return 0;
        }
    }
    *out = def ? jv_ref(*def) : jv_int(0);
    return 0;
}

static int f_indent(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                    struct jv *out)
{
    struct jv *w = jarg(a, 0, "width");
    bool first = jarg_bool(a, 1, "first", false), blank = jarg_bool(a, 2, "blank", false);
    struct jbuf ind = {0}, b = {0};
    int rc = 0;
    if (w && w->t == JV_STR)
        rc = jbuf_put(st, &ind, w->u.s->s, w->u.s->len);
    else
        for (int64_t i = 0, n = w && w->t == JV_INT ? w->u.i : 4; !rc && i < n; i++)
            rc = jbuf_putc(st, &ind, ' ');
    struct jv s = jv_undef();
    struct jlist *lines = NULL;
    if (!rc)
        rc = as_str(st, in, &s);
    if (!rc) {
        /* jinja2 appends a newline first so that a trailing one is kept */
        struct jbuf tmp = {0};
        struct jv s2;
        if (!(rc = jbuf_put(st, &tmp, s.u.s->s, s.u.s->len)) && !(rc = jbuf_putc(st, &tmp, '\n')) &&
            !(rc = jv_str_buf(st, &tmp, &s2))) {
            rc = jstr_splitlines(st, s2, false, &lines);
            jv_drop(s2);
        } else {
            jbuf_free(&tmp);
        }
    }
    if (!rc && first)
        rc = jbuf_put(st, &b, ind.p, ind.n);
    for (size_t i = 0; !rc && lines && i < lines->n; i++) {
        const struct jstr *line = lines->v[i].u.s;
        if (i) {
            rc = jbuf_putc(st, &b, '\n');
            if (!rc && (blank || line->len))
                rc = jbuf_put(st, &b, ind.p, ind.n);
        }
        if (!rc)
            rc = jbuf_put(st, &b, line->s, line->len);
    }
    if (lines)
        jv_drop(jv_list(lines));
    jv_drop(s);
    jbuf_free(&ind);
    if (rc) {
        jbuf_free(&b);
        return rc;
    }
    return jv_str_buf(st, &b, out);
}

static int f_lower(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                   struct jv *out)
{
    struct jv s;
    int rc = as_str(st, in, &s);
    if (!rc)
        rc = jstr_case(st, s, 0, out);
    jv_drop(s);
    return rc;
}

static int f_upper(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                   struct jv *out)
{
    struct jv s;
    int rc = as_str(st, in, &s);
    if (!rc)
        rc = jstr_case(st, s, 1, out);
    jv_drop(s);
    return rc;
}

static int f_replace(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                     struct jv *out)
{
    struct jv *o = jarg(a, 0, "old"), *nw = jarg(a, 1, "new"), *cnt = jarg(a, 2, "count");
    if (!o || !nw)
        return jfail(st, at, "replace() needs old and new");
    struct jv s, os, ns;
    int rc = as_str(st, in, &s);
    if (rc)
        return rc;
    if ((rc = as_str(st, *o, &os))) {
        jv_drop(s);
        return rc;
    }
    if ((rc = as_str(st, *nw, &ns))) {
        jv_drop(s);
        jv_drop(os);
        return rc;
    }
    int64_t count = cnt && cnt->t == JV_INT ? cnt->u.i : -1;
    rc = jstr_replace(st, at, s, os, ns, count, out);
    jv_drop(s);
    jv_drop(os);
    jv_drop(ns);
    return rc;
}

static int f_round(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                   struct jv *out)
{
    struct jv *prec = jarg(a, 0, "precision"), *method = jarg(a, 1, "method");
    int64_t p = prec && prec->t == JV_INT ? prec->u.i : 0;
    const char *m = method && method->t == JV_STR ? method->u.s->s : "common";
    if (strcmp(m, "common") && strcmp(m, "ceil") && strcmp(m, "floor"))
        return jfail(st, at, "method must be common, ceil or floor");
    if (!jv_is_num(in))
        return jfail(st, at, "type %s doesn't define __round__ method", jv_type_name_v(in));
    if (p < 0 || p > 30)
        return jfail(st, at, "round() precision out of range");
    if (!strcmp(m, "common")) {
        if (in.t != JV_FLOAT) {
            *out = jv_int(in.t == JV_INT ? in.u.i : in.u.b);
            return 0;
        }
        /* printf rounds the exact binary value half to even, as Python's round does */
        char buf[400];
        snprintf(buf, sizeof(buf), "%.*f", (int)p, in.u.f);
        *out = jv_float(isfinite(in.u.f) ? strtod(buf, NULL) : in.u.f);
        return 0;
    }
    double f = in.t == JV_FLOAT ? in.u.f : in.t == JV_INT ? (double)in.u.i : in.u.b;
    double k = pow(10, (double)p);
    *out = jv_float((m[0] == 'c' ? ceil(f * k) : floor(f * k)) / k);
    return 0;
}

static int f_safe(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                  struct jv *out)
{
    struct jv s;
    int rc = as_str(st, in, &s);
    if (rc)
        return rc;
    if (s.u.s->markup) {
        *out = s;
        return 0;
    }
    rc = jv_str(st, s.u.s->s, s.u.s->len, out);
    jv_drop(s);
    if (!rc)
        out->u.s->markup = 1;
    return rc;
}

static int f_string(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                    struct jv *out)
{
    return as_str(st, in, out);
}

/* jinja2's title: capitalize every word, a word beginning after - space ( { [ or < */
static int f_title(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                   struct jv *out)
{
    struct jv s;
    int rc = as_str(st, in, &s);
    if (rc)
        return rc;
    struct jbuf b = {0};
    bool start = true;
    for (size_t i = 0, len; !rc && i < s.u.s->len; i += len) {
        uint32_t c = moe_utf8_next(s.u.s->s + i, s.u.s->len - i, &len);
        bool delim = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || moe_py_space(c);
        uint32_t r = delim ? c : start ? jcp_upper(c) : jcp_lower(c);
        rc = r == c ? jbuf_put(st, &b, s.u.s->s + i, len) : jbuf_put_cp(st, &b, r);
        start = delim;
    }
    jv_drop(s);
    if (rc) {
        jbuf_free(&b);
        return rc;
    }
    return jv_str_buf(st, &b, out);
}

/* transformers' tojson(x, ensure_ascii=False, indent=None, separators=None,
 * sort_keys=False): json.dumps with those */
static int f_tojson(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                    struct jv *out)
{
    static const char *const names[] = {"ensure_ascii", "indent", "separators", "sort_keys",
                                        NULL};
    int rc = jargs_check(st, at, a, "tojson", names);
    if (rc)
        return rc;
    struct jv *ind = jarg(a, 1, "indent"), *sep = jarg(a, 2, "separators");
    struct jjson_opts o = {.ensure_ascii = jarg_bool(a, 0, "ensure_ascii", false),
                           .sort_keys = jarg_bool(a, 3, "sort_keys", false)};
    char spaces[256];
    if (ind && ind->t == JV_STR) {
        o.indent = ind->u.s->s;
        o.indent_len = ind->u.s->len;
    } else if (ind && (ind->t == JV_INT || ind->t == JV_BOOL)) {
        int64_t n = ind->t == JV_INT ? ind->u.i : ind->u.b;
        if (n > (int64_t)sizeof(spaces))
            return jfail(st, at, "tojson indent too large");
        if (n < 0)
            n = 0;
        memset(spaces, ' ', (size_t)n);
        o.indent = spaces;
        o.indent_len = (size_t)n;
    } else if (ind && ind->t != JV_NONE) {
        return jfail(st, at, "tojson indent must be an int or a string");
    }
    o.item_sep = o.indent ? "," : ", ";
    o.key_sep = ": ";
    if (sep && sep->t != JV_NONE) {
        if (sep->t != JV_LIST || sep->u.l->n != 2 || sep->u.l->v[0].t != JV_STR ||
            sep->u.l->v[1].t != JV_STR)
            return jfail(st, at, "tojson separators must be two strings");
        o.item_sep = sep->u.l->v[0].u.s->s;
        o.key_sep = sep->u.l->v[1].u.s->s;
        o.item_sep_len = sep->u.l->v[0].u.s->len;
        o.key_sep_len = sep->u.l->v[1].u.s->len;
    } else {
        o.item_sep_len = strlen(o.item_sep);
        o.key_sep_len = strlen(o.key_sep);
    }
    struct jbuf b = {0};
    if ((rc = jv_dump_json(st, at, in, &o, &b))) {
        jbuf_free(&b);
        return rc;
    }
    return jv_str_buf(st, &b, out);
}

static int f_trim(struct jstate *st, const struct jn *at, struct jv in, struct jargs *a,
                  struct jv *out)
{
    struct jv *chars = jarg(a, 0, "chars");
    struct jv s;
    int rc = as_str(st, in, &s);
    if (!rc)
        rc = jstr_strip(st, s, chars, 3, out);
    jv_drop(s);
    return rc;
}

static const struct {
    const char *name;
    filter_fn fn;
} filters[] = {
    {"abs", f_abs},           {"attr", f_attr},           {"capitalize", f_capitalize},
    {"center", f_center},     {"count", f_length},        {"d", f_default},
    {"default", f_default},   {"dictsort", jf_dictsort},   {"e", f_escape},
    {"escape", f_escape},     {"first", jf_first},         {"float", f_float},
    {"forceescape", f_forceescape}, {"indent", f_indent}, {"int", f_int},
    {"items", jf_items},       {"join", jf_join},           {"last", jf_last},
    {"length", f_length},     {"list", jf_list},           {"lower", f_lower},
    {"map", jf_map},           {"max", jf_max},             {"min", jf_min},
    {"reject", jf_reject},     {"rejectattr", jf_rejectattr}, {"replace", f_replace},
    {"reverse", jf_reverse},   {"round", f_round},         {"safe", f_safe},
    {"select", jf_select},     {"selectattr", jf_selectattr}, {"sort", jf_sort},
    {"string", f_string},     {"sum", jf_sum},             {"title", f_title},
    {"tojson", f_tojson},     {"trim", f_trim},           {"unique", jf_unique},
    {"upper", f_upper},
};

/* jinja2's built-in filters moed leaves out: known names, failing when run */
static const char *const filters_other[] = {
    "batch",    "filesizeformat", "format", "groupby",  "pprint",   "random", "slice",
    "striptags", "truncate",      "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr",
    NULL,
};

int jfilter_id(const char *name)
{
    for (size_t i = 0; i < sizeof(filters) / sizeof(filters[0]); i++)
        if (!strcmp(filters[i].name, name))
            return (int)i;
    return -1;
}

bool jfilter_known(const char *name)
{
    if (jfilter_id(name) >= 0)
        return true;
    for (const char *const *n = filters_other; *n; n++)
        if (!strcmp(*n, name))
            return true;
    return false;
}

int jfilter_apply(struct jstate *st, const struct jn *at, int id, struct jv in,
                  struct jargs *a, struct jv *out)
{
    if (id < 0 || (size_t)id >= sizeof(filters) / sizeof(filters[0]))
        return jfail(st, at, "unknown filter");
    *out = jv_undef();
    /* Undefined fails as soon as a filter looks inside it, except where
     * jinja2's Undefined has an answer (iterating, length, str()) */
    return filters[id].fn(st, at, in, a, out);
}
