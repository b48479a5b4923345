/* Jinja expressions: Python's arithmetic on Jinja values, comparisons,
 * slices, call arguments, filter chains and tests. */
#include "engine/engine_jinja_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arithmetic --------------------------------------------------------------------- */

static int64_t as_int(struct jv v)
{
    return v.t == JV_INT ? v.u.i : (int64_t)v.u.b;
}

static double as_float(struct jv v)
{
    return v.t == JV_FLOAT ? v.u.f : (double)as_int(v);
}

static const char *op_sym(uint8_t op)
{
    switch (op) {
    case OP_ADD:
        return "+";
    case OP_SUB:
        return "-";
    case OP_MUL:
        return "*";
    case OP_DIV:
        return "/";
    case OP_FLOORDIV:
        return "//";
    case OP_MOD:
        return "%";
    case OP_POW:
        return "** or pow()";
    default:
        return "?";
    }
}

static int repeat(struct jstate *st, const struct jn *at, struct jv seq, int64_t times,
                  struct jv *out)
{
    if (times < 0)
        times = 0;
    if (seq.t == JV_STR) {
        if (seq.u.s->len && (uint64_t)times > st->max_output / seq.u.s->len)
            return jfail(st, at, "string repetition over the output limit");
        struct jbuf b = {0};
        int rc = 0;
        for (int64_t i = 0; !rc && i < times; i++)
            rc = jbuf_put(st, &b, seq.u.s->s, seq.u.s->len);
        if (rc) {
            jbuf_free(&b);
            return rc;
        }
        return jv_str_buf(st, &b, out);
    }
    if (seq.u.l->n && (uint64_t)times > st->max_work / (seq.u.l->n * sizeof(struct jv)))
        return jfail(st, at, "list repetition over the work limit");
    struct jlist *l = jlist_new(st, 0);
    if (!l)
        return -EINVAL;
    l->tuple = seq.u.l->tuple;
    int rc = 0;
    for (int64_t i = 0; !rc && i < times; i++)
        for (size_t j = 0; !rc && j < seq.u.l->n; j++)
            rc = jlist_push(st, l, jv_ref(seq.u.l->v[j]));
    *out = jv_list(l);
    return rc;
}

static int str_format_percent(struct jstate *st, const struct jn *at, struct jv fmt,
                              struct jv args, struct jv *out)
{
    /* str % args: %s %r %d %i %% only */
    struct jv one[1] = {args};
    struct jv *av = args.t == JV_LIST && args.u.l->tuple ? args.u.l->v : one;
    size_t an = args.t == JV_LIST && args.u.l->tuple ? args.u.l->n : 1, ai = 0;
    struct jbuf b = {0};
    int rc = 0;
    const char *s = fmt.u.s->s;
    size_t n = fmt.u.s->len;
    for (size_t i = 0; !rc && i < n; i++) {
        if (s[i] != '%') {
            rc = jbuf_putc(st, &b, s[i]);
            continue;
        }
        char c = i + 1 < n ? s[++i] : 0;
        if (c == '%') {
            rc = jbuf_putc(st, &b, '%');
            continue;
        }
        if (ai >= an) {
            rc = jfail(st, at, "not enough arguments for format string");
            break;
        }
        struct jv a = av[ai++];
        if (c == 's')
            rc = jv_to_buf(st, a, &b);
        else if (c == 'r')
            rc = jv_repr_buf(st, a, &b);
        else if ((c == 'd' || c == 'i') && jv_is_num(a))
            rc = jbuf_printf(st, &b, "%lld",
                             (long long)(a.t == JV_FLOAT ? (int64_t)a.u.f : as_int(a)));
        else
            rc = jfail(st, at, "unsupported format character '%c'", c ? c : '?');
    }
    if (!rc && ai < an)
        rc = jfail(st, at, "not all arguments converted during string formatting");
    if (rc) {
        jbuf_free(&b);
        return rc;
    }
    return jv_str_buf(st, &b, out);
}

static int binop(struct jstate *st, const struct jn *at, uint8_t op, struct jv a, struct jv b,
                 struct jv *out)
{
    if (a.t == JV_UNDEF)
        return jundef_fail(st, at, a);
    if (b.t == JV_UNDEF)
        return jundef_fail(st, at, b);
    bool nums = jv_is_num(a) && jv_is_num(b), ints = nums && a.t != JV_FLOAT && b.t != JV_FLOAT;
    int64_t x = 0, y = 0, r;
    if (ints) {
        x = as_int(a);
        y = as_int(b);
    }
    switch (op) {
    case OP_ADD:
        if (ints) {
            if (__builtin_add_overflow(x, y, &r))
                return jfail(st, at, "integer overflow");
            *out = jv_int(r);
            return 0;
        }
        if (nums) {
            *out = jv_float(as_float(a) + as_float(b));
            return 0;
        }
        if (a.t == JV_STR && b.t == JV_STR) {
            /* Markup + str escapes the str, and the other way round */
            struct jv ea = jv_ref(a), eb = jv_ref(b);
            int rc = 0;
            bool markup = a.u.s->markup || b.u.s->markup;
            if (markup && !a.u.s->markup) {
                jv_drop(ea);
                rc = jstr_escape(st, a, &ea);
            }
            if (!rc && markup && !b.u.s->markup) {
                jv_drop(eb);
                rc = jstr_escape(st, b, &eb);
            }
            struct jstr *s = rc ? NULL : jstr_alloc(st, ea.u.s->len + eb.u.s->len);
            if (s) {
                memcpy(s->s, ea.u.s->s, ea.u.s->len);
                memcpy(s->s + ea.u.s->len, eb.u.s->s, eb.u.s->len);
                s->ascii = ea.u.s->ascii && eb.u.s->ascii;
                s->markup = markup;
                *out = jv_str_static(s);
            }
            jv_drop(ea);
            jv_drop(eb);
            return s ? 0 : -EINVAL;
        }
        if (a.t == JV_LIST && b.t == JV_LIST && a.u.l->tuple == b.u.l->tuple && !a.u.l->view &&
            !b.u.l->view) {
            struct jlist *l = jlist_new(st, a.u.l->n + b.u.l->n);
            if (!l)
                return -EINVAL;
            l->tuple = a.u.l->tuple;
            int rc = 0;
            for (size_t i = 0; !rc && i < a.u.l->n; i++)
                rc = jlist_push(st, l, jv_ref(a.u.l->v[i]));
            for (size_t i = 0; !rc && i < b.u.l->n; i++)
                rc = jlist_push(st, l, jv_ref(b.u.l->v[i]));
            *out = jv_list(l);
            return rc;
        }
        if (a.t == JV_STR)
            return jfail(st, at, "can only concatenate str (not \"%s\") to str",
                         jv_type_name_v(b));
        if (a.t == JV_LIST)
            return jfail(st, at, "can only concatenate %s (not \"%s\") to %s",
                         jv_type_name_v(a), jv_type_name_v(b), jv_type_name_v(a));
        break;
    case OP_SUB:
        if (ints) {
            if (__builtin_sub_overflow(x, y, &r))
                return jfail(st, at, "integer overflow");
            *out = jv_int(r);
            return 0;
        }
        if (nums) {
            *out = jv_float(as_float(a) - as_float(b));
            return 0;
        }
        break;
    case OP_MUL:
        if (ints) {
            if (__builtin_mul_overflow(x, y, &r))
                return jfail(st, at, "integer overflow");
            *out = jv_int(r);
            return 0;
        }
        if (nums) {
            *out = jv_float(as_float(a) * as_float(b));
            return 0;
        }
        if ((a.t == JV_STR || a.t == JV_LIST) && (b.t == JV_INT || b.t == JV_BOOL))
            return repeat(st, at, a, as_int(b), out);
        if ((b.t == JV_STR || b.t == JV_LIST) && (a.t == JV_INT || a.t == JV_BOOL))
            return repeat(st, at, b, as_int(a), out);
        break;
    case OP_DIV:
        if (nums) {
            if (as_float(b) == 0)
                return jfail(st, at, "division by zero");
            *out = jv_float(ints ? (double)x / (double)y : as_float(a) / as_float(b));
            return 0;
        }
        break;
    case OP_FLOORDIV:
    case OP_MOD:
        if (ints) {
            if (y == 0)
                return jfail(st, at, "integer division or modulo by zero");
            if (x == INT64_MIN && y == -1)
                return jfail(st, at, "integer overflow");
            int64_t q = x / y, m = x % y;
            if (m && ((m < 0) != (y < 0))) {
                q--;
                m += y;
            }
            *out = jv_int(op == OP_MOD ? m : q);
            return 0;
        }
        if (nums) {
            double fx = as_float(a), fy = as_float(b);
            if (fy == 0)
                return jfail(st, at, "float division by zero");
            double m = fmod(fx, fy);
            if (m && ((m < 0) != (fy < 0)))
                m += fy;
            *out = jv_float(op == OP_MOD ? m : floor(fx / fy));
            return 0;
        }
        if (op == OP_MOD && a.t == JV_STR)
            return str_format_percent(st, at, a, b, out);
        break;
    case OP_POW:
        if (ints && y >= 0) {
            int64_t acc = 1, base = x;
            for (int64_t e = y; e; e >>= 1) {
                if ((e & 1) && __builtin_mul_overflow(acc, base, &acc))
                    return jfail(st, at, "integer overflow");
                if (e > 1 && __builtin_mul_overflow(base, base, &base))
                    return jfail(st, at, "integer overflow");
            }
            *out = jv_int(acc);
            return 0;
        }
        if (nums) {
            if (as_float(a) == 0 && as_float(b) < 0)
                return jfail(st, at, "0.0 cannot be raised to a negative power");
            *out = jv_float(pow(as_float(a), as_float(b)));
            return 0;
        }
        break;
    default:
        break;
    }
    return jfail(st, at, "unsupported operand type(s) for %s: '%s' and '%s'", op_sym(op),
                 jv_type_name_v(a), jv_type_name_v(b));
}

/* ---- calls -------------------------------------------------------------------------- */

struct jv *jarg(struct jargs *a, size_t i, const char *name)
{
    if (i < a->npos)
        return &a->pos[i];
    for (size_t k = 0; name && k < a->nkw; k++)
        if (!strcmp(a->kname[k], name))
            return &a->kval[k];
    return NULL;
}

int jargs_check(struct jstate *st, const struct jn *at, struct jargs *a, const char *fname,
                const char *const *names)
{
    size_t n = 0;
    while (names[n])
        n++;
    if (a->npos > n)
        return jfail(st, at, "%s() takes at most %zu arguments (%zu given)", fname, n, a->npos);
    for (size_t k = 0; k < a->nkw; k++) {
        size_t i = 0;
        while (i < n && strcmp(names[i], a->kname[k]))
            i++;
        if (i == n)
            return jfail(st, at, "%s() got an unexpected keyword argument '%s'", fname,
                         a->kname[k]);
        if (i < a->npos)
            return jfail(st, at, "%s() got multiple values for argument '%s'", fname,
                         a->kname[k]);
    }
    return 0;
}

static void args_free(struct jargs *a)
{
    for (size_t i = 0; i < a->npos; i++)
        jv_drop(a->pos[i]);
    for (size_t i = 0; i < a->nkw; i++)
        jv_drop(a->kval[i]);
    free(a->pos);
    free(a->kval);
    free(a->kname);
    *a = (struct jargs){0};
}

static int args_push(struct jstate *st, struct jargs *a, const char *name, struct jv v)
{
    if (name) {
        const char **kn = realloc(a->kname, (a->nkw + 1) * sizeof(*kn));
        if (kn)
            a->kname = kn;
        struct jv *kv = kn ? realloc(a->kval, (a->nkw + 1) * sizeof(*kv)) : NULL;
        if (!kv) {
            jv_drop(v);
            return jnomem(st);
        }
        a->kval = kv;
        a->kname[a->nkw] = name;
        a->kval[a->nkw++] = v;
        return 0;
    }
    struct jv *pos = realloc(a->pos, (a->npos + 1) * sizeof(*pos));
    if (!pos) {
        jv_drop(v);
        return jnomem(st);
    }
    a->pos = pos;
    a->pos[a->npos++] = v;
    return 0;
}

static int eval_args(struct jstate *st, const struct jn *n, struct jscope *sc, struct jargs *a)
{
    *a = (struct jargs){0};
    int rc = 0;
    for (int i = 0; !rc && i < n->nv; i++) {
        struct jv v;
        if (!(rc = jeval(st, n->v[i], sc, &v)))
            rc = args_push(st, a, NULL, v);
    }
    if (!rc && n->dyn_args) {
        struct jv v;
        struct jlist *l = NULL;
        if (!(rc = jeval(st, n->dyn_args, sc, &v))) {
            rc = jv_iterate(st, n, v, &l);
            jv_drop(v);
        }
        for (size_t i = 0; !rc && i < l->n; i++)
            rc = args_push(st, a, NULL, jv_ref(l->v[i]));
        if (l)
            jv_drop(jv_list(l));
    }
    for (int i = 0; !rc && i < n->nk; i++) {
        struct jv v;
        if (!(rc = jeval(st, n->kv[i], sc, &v)))
            rc = args_push(st, a, n->kn[i], v);
    }
    if (!rc && n->dyn_kwargs) {
        struct jv v;
        if (!(rc = jeval(st, n->dyn_kwargs, sc, &v))) {
            if (v.t != JV_DICT)
                rc = jfail(st, n, "argument after ** must be a mapping, not %s",
                           jv_type_name_v(v));
            for (size_t i = 0; !rc && i < v.u.d->n; i++) {
                struct jv k = v.u.d->k[i];
                if (k.t != JV_STR) {
                    rc = jfail(st, n, "keywords must be strings");
                    break;
                }
                /* the name must outlive the call: keep it in the template's
                 * interned names only if it is one; else compare by text */
                const char *name = NULL;
                for (size_t j = 0; j < st->t->n_names && !name; j++)
                    if (!strcmp(st->t->names[j], k.u.s->s))
                        name = st->t->names[j];
                if (!name)
                    rc = jfail(st, n, "unexpected keyword argument '%s'", k.u.s->s);
                else
                    rc = args_push(st, a, name, jv_ref(v.u.d->v[i]));
            }
            jv_drop(v);
        }
    }
    if (rc)
        args_free(a);
    return rc;
}

int jeval_call(struct jstate *st, const struct jn *c, struct jscope *sc,
                     struct jv *caller, struct jv *out)
{
    struct jargs a;
    int rc = eval_args(st, c, sc, &a);
    if (rc)
        return rc;
    if (caller && (rc = args_push(st, &a, "caller", jv_ref(*caller)))) {
        args_free(&a);
        return rc;
    }
    const struct jn *f = c->a;
    struct jv callee = jv_undef();
    if (f->kind == JN_GETATTR) {
        /* obj.method(...): Python's str / list / dict methods */
        struct jv obj;
        if (!(rc = jeval(st, f->a, sc, &obj))) {
            if (obj.t == JV_UNDEF)
                rc = jundef_fail(st, f, obj);
            else if (!(rc = jgetattr(st, f, obj, f->name, strlen(f->name), f->name, &callee)))
                rc = jcall(st, c, callee, &a, out);
            jv_drop(obj);
        }
    } else if (!(rc = jeval(st, f, sc, &callee))) {
        rc = jcall(st, c, callee, &a, out);
    }
    jv_drop(callee);
    args_free(&a);
    return rc;
}

/* ---- filters and tests -------------------------------------------------------------- */

/* n's filter (chain) applied to in (taken) */
static int apply_filter(struct jstate *st, const struct jn *n, struct jscope *sc, struct jv in,
                        struct jv *out)
{
    int rc;
    if (n->a) {
        /* the chain below first: in goes to the innermost filter */
        struct jv mid;
        if ((rc = apply_filter(st, n->a, sc, in, &mid)))
            return rc;
        in = mid;
    }
    if (n->fid < 0) {
        jv_drop(in);
        return jfilter_known(n->name) ? jfail(st, n, "filter '%s' is not supported", n->name)
                                      : jfail(st, n, "No filter named '%s'.", n->name);
    }
    struct jargs a;
    if ((rc = eval_args(st, n, sc, &a))) {
        jv_drop(in);
        return rc;
    }
    rc = jfilter_apply(st, n, n->fid, in, &a, out);
    jv_drop(in);
    args_free(&a);
    return rc;
}

/* x|f(args): x first (itself maybe a filter, through jeval), then f */
static int __attribute__((noinline)) eval_filter(struct jstate *st, const struct jn *f,
                                                 struct jscope *sc, struct jv *out)
{
    struct jv v = jv_undef();
    int rc = f->a ? jeval(st, f->a, sc, &v) : 0;
    if (rc)
        return rc;
    if (f->fid < 0) {
        jv_drop(v);
        return jfilter_known(f->name) ? jfail(st, f, "filter '%s' is not supported", f->name)
                                      : jfail(st, f, "No filter named '%s'.", f->name);
    }
    struct jargs a;
    if (!(rc = eval_args(st, f, sc, &a))) {
        rc = jfilter_apply(st, f, f->fid, v, &a, out);
        args_free(&a);
    }
    jv_drop(v);
    return rc;
}

/* a filter chain written without input ({% filter %}, {% set x | f %}) */
int jfilter_chain(struct jstate *st, const struct jn *n, struct jscope *sc, struct jv in,
                  struct jv *out)
{
    return apply_filter(st, n, sc, in, out);
}

/* ---- expressions -------------------------------------------------------------------- */

static int slice(struct jstate *st, const struct jn *e, struct jscope *sc, struct jv obj,
                 struct jv *out)
{
    int64_t idx[3] = {0, 0, 1};
    bool given[3] = {false, false, false};
    const struct jn *parts[3] = {e->b, e->c, e->d};
    for (int i = 0; i < 3; i++) {
        if (!parts[i])
            continue;
        struct jv v;
        int rc = jeval(st, parts[i], sc, &v);
        if (rc)
            return rc;
        if (v.t == JV_INT || v.t == JV_BOOL) {
            idx[i] = as_int(v);
            given[i] = true;
        } else if (v.t != JV_NONE) {
            jv_drop(v);
            return jfail(st, e, "slice indices must be integers or None");
        }
    }
    if (idx[2] == 0)
        return jfail(st, e, "slice step cannot be zero");
    if (obj.t == JV_UNDEF)
        return jundef_fail(st, e, obj);
    if ((obj.t != JV_STR && obj.t != JV_LIST) || (obj.t == JV_LIST && obj.u.l->view))
        return jfail(st, e, "'%s' object is not subscriptable", jv_type_name_v(obj));
    int64_t len;
    int rc = jv_length(st, e, obj, &len);
    if (rc)
        return rc;
    /* Python's slice.indices() */
    int64_t step = idx[2], lo, hi;
    for (int i = 0; i < 2; i++) {
        if (!given[i]) {
            idx[i] = i == 0 ? (step > 0 ? 0 : len - 1) : (step > 0 ? len : -1);
            continue;
        }
        if (idx[i] < 0) {
            idx[i] += len;
            if (idx[i] < 0)
                idx[i] = step < 0 ? -1 : 0;
        } else if (idx[i] >= len) {
            idx[i] = step < 0 ? len - 1 : len;
        }
    }
    lo = idx[0];
    hi = idx[1];
    if (obj.t == JV_LIST) {
        struct jlist *l = jlist_new(st, 0);
        if (!l)
            return -EINVAL;
        l->tuple = obj.u.l->tuple;
        for (int64_t i = lo; !rc && (step > 0 ? i < hi : i > hi); i += step)
            rc = jlist_push(st, l, jv_ref(obj.u.l->v[i]));
        *out = jv_list(l);
        return rc;
    }
    const struct jstr *s = obj.u.s;
    struct jbuf b = {0};
    if (s->ascii) {
        for (int64_t i = lo; !rc && (step > 0 ? i < hi : i > hi); i += step)
            rc = jbuf_putc(st, &b, s->s[i]);
    } else {
        /* code point offsets once, then the picks */
        size_t *off = malloc(((size_t)len + 1) * sizeof(*off));
        if (!off)
            return jnomem(st);
        size_t k = 0;
        for (size_t i = 0, l1; i < s->len; i += l1) {
            moe_utf8_next(s->s + i, s->len - i, &l1);
            off[k++] = i;
        }
        off[k] = s->len;
        for (int64_t i = lo; !rc && (step > 0 ? i < hi : i > hi); i += step)
            rc = jbuf_put(st, &b, s->s + off[i], off[i + 1] - off[i]);
        free(off);
    }
    if (rc) {
        jbuf_free(&b);
        return rc;
    }
    return jv_str_buf(st, &b, out);
}

static int compare(struct jstate *st, const struct jn *at, uint8_t op, struct jv a, struct jv b,
                   bool *res)
{
    int c, rc;
    switch (op) {
    case OP_EQ:
        *res = jv_eq(a, b);
        return 0;
    case OP_NE:
        *res = !jv_eq(a, b);
        return 0;
    case OP_IN:
    case OP_NOTIN:
        rc = jv_contains(st, at, b, a, res);
        if (op == OP_NOTIN)
            *res = !*res;
        return rc;
    default:
        if ((rc = jv_cmp(st, at, a, b, &c)))
            return rc;
        *res = op == OP_LT ? c < 0 : op == OP_LTEQ ? c <= 0 : op == OP_GT ? c > 0 : c >= 0;
        return 0;
    }
}

int jeval(struct jstate *st, const struct jn *e, struct jscope *sc, struct jv *out)
{
    int rc = 0;
    if (++st->recurse > J_MAX_RECURSE) {
        st->recurse--;
        return jfail(st, e, "evaluation nested too deeply");
    }
    if ((rc = jwork(st, e, 1))) {
        st->recurse--;
        return rc;
    }
    struct jv a = jv_undef(), b = jv_undef();
    *out = jv_undef();
    switch (e->kind) {
    case JN_CONST:
        *out = jv_ref(e->k);
        break;
    case JN_NAME:
        rc = jlookup(st, sc, e->name, out);
        break;
    case JN_GETATTR:
        if (!(rc = jeval(st, e->a, sc, &a))) {
            if (a.t == JV_UNDEF)
                rc = jundef_fail(st, e, a);
            else
                rc = jgetattr(st, e, a, e->name, strlen(e->name), e->name, out);
        }
        break;
    case JN_GETITEM:
        if (!(rc = jeval(st, e->a, sc, &a)) && !(rc = jeval(st, e->b, sc, &b)))
            rc = jgetitem(st, e, a, b, out);
        break;
    case JN_SLICE:
        if (!(rc = jeval(st, e->a, sc, &a)))
            rc = slice(st, e, sc, a, out);
        break;
    case JN_CALL:
        rc = jeval_call(st, e, sc, NULL, out);
        break;
    case JN_FILTER:
        rc = eval_filter(st, e, sc, out);
        break;
    case JN_TEST: {
        if (e->fid < 0) {
            rc = jtest_known(e->name) ? jfail(st, e, "test '%s' is not supported", e->name)
                                      : jfail(st, e, "No test named '%s'.", e->name);
            break;
        }
        struct jargs args;
        bool r = false;
        if (!(rc = jeval(st, e->a, sc, &a)) && !(rc = eval_args(st, e, sc, &args))) {
            rc = jtest_apply(st, e, e->fid, a, &args, &r);
            args_free(&args);
        }
        *out = jv_bool((e->flags & JNF_NEGATE) ? !r : r);
        break;
    }
    case JN_UNARY:
        if ((rc = jeval(st, e->a, sc, &a)))
            break;
        if (e->op == OP_NOT) {
            *out = jv_bool(!jv_truthy(a));
        } else if (a.t == JV_UNDEF) {
            rc = jundef_fail(st, e, a);
        } else if (!jv_is_num(a)) {
            rc = jfail(st, e, "bad operand type for unary %c: '%s'", e->op == OP_NEG ? '-' : '+',
                       jv_type_name_v(a));
        } else if (e->op == OP_POS) {
            *out = a.t == JV_FLOAT ? a : jv_int(as_int(a));
        } else if (a.t == JV_FLOAT) {
            *out = jv_float(-a.u.f);
        } else if (as_int(a) == INT64_MIN) {
            rc = jfail(st, e, "integer overflow");
        } else {
            *out = jv_int(-as_int(a));
        }
        break;
    case JN_BINARY:
        if (!(rc = jeval(st, e->a, sc, &a)) && !(rc = jeval(st, e->b, sc, &b)))
            rc = binop(st, e, e->op, a, b, out);
        break;
    case JN_COMPARE: {
        if ((rc = jeval(st, e->a, sc, &a)))
            break;
        bool r = true;
        for (int i = 0; r && i < e->nv; i++) {
            if ((rc = jeval(st, e->v[i], sc, &b)))
                break;
            rc = compare(st, e, e->ops[i], a, b, &r);
            jv_drop(a);
            a = b;
            b = jv_undef();
            if (rc)
                break;
        }
        *out = jv_bool(r);
        break;
    }
    case JN_AND:
    case JN_OR:
        if ((rc = jeval(st, e->a, sc, &a)))
            break;
        if (jv_truthy(a) == (e->kind == JN_OR)) {
            *out = a;
            a = jv_undef();
        } else {
            rc = jeval(st, e->b, sc, out);
        }
        break;
    case JN_CONCAT: {
        struct jbuf buf = {0};
        for (int i = 0; !rc && i < e->nv; i++) {
            struct jv v;
            if (!(rc = jeval(st, e->v[i], sc, &v))) {
                rc = jv_to_buf(st, v, &buf);
                jv_drop(v);
            }
        }
        if (!rc)
            rc = jv_str_buf(st, &buf, out);
        else
            jbuf_free(&buf);
        break;
    }
    case JN_COND:
        if ((rc = jeval(st, e->b, sc, &a)))
            break;
        if (jv_truthy(a))
            rc = jeval(st, e->a, sc, out);
        else if (e->c)
            rc = jeval(st, e->c, sc, out);
        break;
    case JN_LIST:
    case JN_TUPLE: {
        struct jlist *l = jlist_new(st, (size_t)e->nv);
        if (!l) {
            rc = -EINVAL;
            break;
        }
        l->tuple = e->kind == JN_TUPLE;
        for (int i = 0; !rc && i < e->nv; i++) {
            struct jv v;
            if (!(rc = jeval(st, e->v[i], sc, &v)))
                rc = jlist_push(st, l, v);
        }
        *out = jv_list(l);
        break;
    }
    case JN_DICT: {
        struct jdict *d = jdict_new(st);
        if (!d) {
            rc = -EINVAL;
            break;
        }
        *out = jv_dict(d);
        for (int i = 0; !rc && i + 1 < e->nv; i += 2) {
            struct jv k, v;
            if ((rc = jeval(st, e->v[i], sc, &k)))
                break;
            if (k.t == JV_LIST && !k.u.l->tuple) {
                jv_drop(k);
                rc = jfail(st, e, "unhashable type: 'list'");
                break;
            }
            if (k.t == JV_DICT) {
                jv_drop(k);
                rc = jfail(st, e, "unhashable type: 'dict'");
                break;
            }
            if ((rc = jeval(st, e->v[i + 1], sc, &v))) {
                jv_drop(k);
                break;
            }
            rc = jdict_set(st, d, k, v);
        }
        break;
    }
    default:
        rc = jfail(st, e, "unsupported expression");
    }
    jv_drop(a);
    jv_drop(b);
    if (rc) {
        jv_drop(*out);
        *out = jv_undef();
    }
    st->recurse--;
    return rc;
}
