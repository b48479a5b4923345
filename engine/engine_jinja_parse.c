/* Jinja parser, expressions: tokens -> syntax tree, following jinja2's
 * parser.py rule for rule (operator precedence, where filters and tests bind,
 * what a tuple is), and the helpers the statement parser
 * (engine_jinja_stmt.c) shares. */
#include "engine/engine_jinja_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const struct jtoken *jp_cur(P *p)
{
    return &p->tk[p->i < p->n ? p->i : p->n - 1];
}

const struct jtoken *jp_look(P *p)
{
    return &p->tk[p->i + 1 < p->n ? p->i + 1 : p->n - 1];
}

const struct jtoken *jp_advance(P *p)
{
    const struct jtoken *k = jp_cur(p);
    if (p->i < p->n - 1)
        p->i++;
    return k;
}

void *jp_fail_at(P *p, const struct jtoken *k, const char *fmt, ...)
{
    if (p->failed)
        return NULL;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(p->err, p->errlen, "line %d, column %d: %s", k->line, k->col, msg);
    p->failed = true;
    return NULL;
}

const char *jp_describe(const struct jtoken *k)
{
    static const char *const opnames[] = {
        [OP_ADD] = "+",      [OP_SUB] = "-",      [OP_DIV] = "/",      [OP_FLOORDIV] = "//",
        [OP_MUL] = "*",      [OP_MOD] = "%",      [OP_POW] = "**",     [OP_TILDE] = "~",
        [OP_LBRACKET] = "[", [OP_RBRACKET] = "]", [OP_LPAREN] = "(",   [OP_RPAREN] = ")",
        [OP_LBRACE] = "{",   [OP_RBRACE] = "}",   [OP_EQ] = "==",      [OP_NE] = "!=",
        [OP_GT] = ">",       [OP_GTEQ] = ">=",    [OP_LT] = "<",       [OP_LTEQ] = "<=",
        [OP_ASSIGN] = "=",   [OP_DOT] = ".",      [OP_COLON] = ":",    [OP_PIPE] = "|",
        [OP_COMMA] = ",",    [OP_SEMICOLON] = ";",
    };
    switch (k->type) {
    case T_EOF:
        return "end of template";
    case T_DATA:
        return "template data";
    case T_VAR_BEGIN:
        return "begin of print statement";
    case T_VAR_END:
        return "end of print statement";
    case T_BLOCK_BEGIN:
        return "begin of statement block";
    case T_BLOCK_END:
        return "end of statement block";
    case T_NAME:
        return k->p;
    case T_STRING:
        return "string";
    case T_INT:
        return "integer";
    case T_FLOAT:
        return "float";
    default:
        return k->op < sizeof(opnames) / sizeof(opnames[0]) && opnames[k->op] ? opnames[k->op]
                                                                              : "operator";
    }
}

void *jp_fail(P *p, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return jp_fail_at(p, jp_cur(p), "%s", msg);
}

bool jp_is_op(P *p, uint8_t op)
{
    return jp_cur(p)->type == T_OP && jp_cur(p)->op == op;
}

bool jp_is_name(const struct jtoken *k, const char *name)
{
    return k->type == T_NAME && !strcmp(k->p, name);
}

bool jp_skip_op(P *p, uint8_t op)
{
    if (!jp_is_op(p, op))
        return false;
    jp_advance(p);
    return true;
}

bool jp_skip_name(P *p, const char *name)
{
    if (!jp_is_name(jp_cur(p), name))
        return false;
    jp_advance(p);
    return true;
}

bool jp_expect_op(P *p, uint8_t op, const char *what)
{
    if (jp_skip_op(p, op))
        return true;
    jp_fail(p, "expected token '%s', got '%s'", what, jp_describe(jp_cur(p)));
    return false;
}

bool jp_expect_type(P *p, uint8_t type, const char *what)
{
    if (jp_cur(p)->type == type) {
        jp_advance(p);
        return true;
    }
    jp_fail(p, "expected token '%s', got '%s'", what, jp_describe(jp_cur(p)));
    return false;
}

const struct jtoken *jp_expect_name(P *p)
{
    if (jp_cur(p)->type == T_NAME)
        return jp_advance(p);
    return jp_fail(p, "expected token 'name', got '%s'", jp_describe(jp_cur(p)));
}

struct jn *jp_node(P *p, uint8_t kind, const struct jtoken *at)
{
    struct jn *n = jarena_alloc(&p->t->arena, sizeof(*n));
    if (!n)
        return jp_fail_at(p, at, "out of memory");
    n->kind = kind;
    n->fid = -1;
    n->line = at->line;
    n->col = at->col;
    return n;
}

/* an immortal string, owned by the template */
bool jp_const_str(P *p, struct jn *n, const char *s, size_t len)
{
    struct jstr *js = jarena_alloc(&p->t->arena, sizeof(*js) + len + 1);
    if (!js) {
        jp_fail(p, "out of memory");
        return false;
    }
    js->rc = -1;
    js->len = len;
    memcpy(js->s, s, len);
    js->s[len] = 0;
    jstr_seal(js);
    n->k = jv_str_static(js);
    return true;
}

/* growable child arrays, copied into the arena when done */

bool jp_vec_push(P *p, struct vec *v, struct jn *x, const char *name)
{
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 8;
        struct jn **q = realloc(v->v, (size_t)cap * sizeof(*q));
        const char **r = q ? realloc(v->names, (size_t)cap * sizeof(*r)) : NULL;
        if (q)
            v->v = q;
        if (!r) {
            jp_fail(p, "out of memory");
            return false;
        }
        v->names = r;
        v->cap = cap;
    }
    v->v[v->n] = x;
    v->names[v->n] = name;
    v->n++;
    return true;
}

struct jn **jp_vec_done(P *p, struct vec *v, int *n, const char ***names)
{
    struct jn **out = NULL;
    *n = v->n;
    if (v->n && !p->failed) {
        out = jarena_alloc(&p->t->arena, (size_t)v->n * sizeof(*out));
        const char **nm = names ? jarena_alloc(&p->t->arena, (size_t)v->n * sizeof(*nm)) : NULL;
        if (!out || (names && !nm)) {
            jp_fail(p, "out of memory");
        } else {
            memcpy(out, v->v, (size_t)v->n * sizeof(*out));
            if (names) {
                memcpy(nm, v->names, (size_t)v->n * sizeof(*nm));
                *names = nm;
            }
        }
    }
    free(v->v);
    free(v->names);
    *v = (struct vec){0};
    return out;
}


/* ---- expressions -------------------------------------------------------------------- */

static struct jn *parse_unary(P *p, bool with_filter);
static struct jn *parse_postfix(P *p, struct jn *n);
static struct jn *parse_filter_expr(P *p, struct jn *n);

static bool jp_enter(P *p)
{
    if (++p->depth > 2 * J_MAX_NEST) {
        jp_fail(p, "expression nested too deeply");
        return false;
    }
    return true;
}

static struct jn *jp_leave(P *p, struct jn *n)
{
    p->depth--;
    return p->failed ? NULL : n;
}

/* (args, key=value, *list, **dict) into n's v / kn, kv / dyn_args, dyn_kwargs */
static bool parse_call_args(P *p, struct jn *n)
{
    const struct jtoken *open = jp_cur(p);
    if (!jp_expect_op(p, OP_LPAREN, "("))
        return false;
    struct vec args = {0}, kw = {0};
    bool need_comma = false;
    while (!p->failed && !jp_is_op(p, OP_RPAREN)) {
        if (need_comma) {
            if (!jp_expect_op(p, OP_COMMA, ","))
                break;
            if (jp_is_op(p, OP_RPAREN))
                break;
        }
        if (jp_is_op(p, OP_MUL)) {
            if (n->dyn_args || n->dyn_kwargs)
                jp_fail_at(p, open, "invalid syntax for function call expression");
            jp_advance(p);
            n->dyn_args = jp_expression(p, true);
        } else if (jp_is_op(p, OP_POW)) {
            if (n->dyn_kwargs)
                jp_fail_at(p, open, "invalid syntax for function call expression");
            jp_advance(p);
            n->dyn_kwargs = jp_expression(p, true);
        } else if (jp_cur(p)->type == T_NAME && jp_look(p)->type == T_OP && jp_look(p)->op == OP_ASSIGN) {
            if (n->dyn_kwargs)
                jp_fail_at(p, open, "invalid syntax for function call expression");
            const char *key = jp_advance(p)->p;
            jp_advance(p);
            struct jn *v = jp_expression(p, true);
            if (v)
                jp_vec_push(p, &kw, v, key);
        } else {
            if (n->dyn_args || n->dyn_kwargs || kw.n)
                jp_fail_at(p, open, "invalid syntax for function call expression");
            struct jn *v = jp_expression(p, true);
            if (v)
                jp_vec_push(p, &args, v, NULL);
        }
        need_comma = true;
    }
    if (!p->failed)
        jp_expect_op(p, OP_RPAREN, ")");
    n->v = jp_vec_done(p, &args, &n->nv, NULL);
    n->kv = jp_vec_done(p, &kw, &n->nk, &n->kn);
    return !p->failed;
}

static struct jn *parse_subscribed(P *p)
{
    const struct jtoken *at = jp_cur(p);
    struct jn *parts[3] = {NULL, NULL, NULL};
    if (jp_is_op(p, OP_COLON)) {
        jp_advance(p);
    } else {
        struct jn *e = jp_expression(p, true);
        if (!e || !jp_is_op(p, OP_COLON))
            return e;
        jp_advance(p);
        parts[0] = e;
    }
    if (!jp_is_op(p, OP_COLON) && !jp_is_op(p, OP_RBRACKET) && !jp_is_op(p, OP_COMMA))
        parts[1] = jp_expression(p, true);
    if (jp_skip_op(p, OP_COLON) && !jp_is_op(p, OP_RBRACKET) && !jp_is_op(p, OP_COMMA))
        parts[2] = jp_expression(p, true);
    struct jn *s = jp_node(p, JN_SLICE, at);
    if (s) {
        s->b = parts[0];
        s->c = parts[1];
        s->d = parts[2];
    }
    return p->failed ? NULL : s;
}

static struct jn *parse_postfix(P *p, struct jn *n)
{
    while (n && !p->failed) {
        const struct jtoken *at = jp_cur(p);
        if (jp_is_op(p, OP_DOT)) {
            jp_advance(p);
            const struct jtoken *k = jp_cur(p);
            if (k->type == T_NAME) {
                jp_advance(p);
                struct jn *g = jp_node(p, JN_GETATTR, at);
                if (!g)
                    return NULL;
                g->a = n;
                g->name = k->p;
                n = g;
            } else if (k->type == T_INT) {
                jp_advance(p);
                struct jn *c = jp_node(p, JN_CONST, k), *g = jp_node(p, JN_GETITEM, at);
                if (!c || !g)
                    return NULL;
                c->k = jv_int(k->i);
                g->a = n;
                g->b = c;
                n = g;
            } else {
                return jp_fail(p, "expected name or number");
            }
        } else if (jp_is_op(p, OP_LBRACKET)) {
            jp_advance(p);
            struct vec args = {0};
            while (!p->failed && !jp_is_op(p, OP_RBRACKET)) {
                if (args.n && !jp_expect_op(p, OP_COMMA, ","))
                    break;
                struct jn *x = parse_subscribed(p);
                if (x)
                    jp_vec_push(p, &args, x, NULL);
            }
            if (!p->failed)
                jp_expect_op(p, OP_RBRACKET, "]");
            for (int i = 0; args.n > 1 && i < args.n && !p->failed; i++)
                if (args.v[i]->kind == JN_SLICE) /* x[a, 1:2]: no such index */
                    jp_fail(p, "a slice inside a tuple subscript is not supported");
            if (p->failed) {
                free(args.v);
                free(args.names);
                return NULL;
            }
            struct jn *g;
            if (args.n == 1 && args.v[0]->kind == JN_SLICE) {
                g = args.v[0];
                g->a = n;
                free(args.v);
                free(args.names);
            } else {
                g = jp_node(p, JN_GETITEM, at);
                if (!g)
                    return NULL;
                g->a = n;
                if (args.n == 1) {
                    g->b = args.v[0];
                    free(args.v);
                    free(args.names);
                } else {
                    struct jn *t = jp_node(p, JN_TUPLE, at);
                    if (!t)
                        return NULL;
                    t->v = jp_vec_done(p, &args, &t->nv, NULL);
                    g->b = t;
                }
            }
            n = g;
        } else if (jp_is_op(p, OP_LPAREN)) {
            struct jn *c = jp_node(p, JN_CALL, at);
            if (!c)
                return NULL;
            c->a = n;
            if (!parse_call_args(p, c))
                return NULL;
            n = c;
        } else {
            break;
        }
    }
    return p->failed ? NULL : n;
}

static struct jn *parse_primary(P *p)
{
    const struct jtoken *k = jp_cur(p);
    struct jn *n = NULL;
    if (!jp_enter(p))
        return NULL;
    switch (k->type) {
    case T_NAME:
        jp_advance(p);
        if (!strcmp(k->p, "true") || !strcmp(k->p, "True") || !strcmp(k->p, "false") ||
            !strcmp(k->p, "False")) {
            if ((n = jp_node(p, JN_CONST, k)))
                n->k = jv_bool(k->p[0] == 't' || k->p[0] == 'T');
        } else if (!strcmp(k->p, "none") || !strcmp(k->p, "None")) {
            if ((n = jp_node(p, JN_CONST, k)))
                n->k = jv_none();
        } else if ((n = jp_node(p, JN_NAME, k))) {
            n->name = k->p;
        }
        break;
    case T_STRING: {
        /* adjacent literals join, as in Python */
        size_t total = 0;
        size_t first = p->i;
        while (jp_cur(p)->type == T_STRING)
            total += jp_advance(p)->n;
        char *s = jarena_alloc(&p->t->arena, total + 1);
        if (!s)
            return jp_fail(p, "out of memory");
        size_t off = 0;
        for (size_t j = first; j < p->i; j++) {
            memcpy(s + off, p->tk[j].p, p->tk[j].n);
            off += p->tk[j].n;
        }
        if ((n = jp_node(p, JN_CONST, k)))
            jp_const_str(p, n, s, total);
        break;
    }
    case T_INT:
    case T_FLOAT:
        jp_advance(p);
        if ((n = jp_node(p, JN_CONST, k)))
            n->k = k->type == T_INT ? jv_int(k->i) : jv_float(k->f);
        break;
    case T_OP:
        if (k->op == OP_LPAREN) {
            jp_advance(p);
            n = jp_tuple(p, false, true, NULL, true);
            if (n)
                jp_expect_op(p, OP_RPAREN, ")");
        } else if (k->op == OP_LBRACKET) {
            jp_advance(p);
            struct vec items = {0};
            while (!p->failed && !jp_is_op(p, OP_RBRACKET)) {
                if (items.n && !jp_expect_op(p, OP_COMMA, ","))
                    break;
                if (jp_is_op(p, OP_RBRACKET))
                    break;
                struct jn *x = jp_expression(p, true);
                if (x)
                    jp_vec_push(p, &items, x, NULL);
            }
            if (!p->failed)
                jp_expect_op(p, OP_RBRACKET, "]");
            if ((n = jp_node(p, JN_LIST, k)))
                n->v = jp_vec_done(p, &items, &n->nv, NULL);
            else
                jp_vec_done(p, &items, &(int){0}, NULL);
        } else if (k->op == OP_LBRACE) {
            jp_advance(p);
            struct vec items = {0};
            while (!p->failed && !jp_is_op(p, OP_RBRACE)) {
                if (items.n && !jp_expect_op(p, OP_COMMA, ","))
                    break;
                if (jp_is_op(p, OP_RBRACE))
                    break;
                struct jn *key = jp_expression(p, true);
                if (!key || !jp_expect_op(p, OP_COLON, ":"))
                    break;
                struct jn *val = jp_expression(p, true);
                if (val) {
                    jp_vec_push(p, &items, key, NULL);
                    jp_vec_push(p, &items, val, NULL);
                }
            }
            if (!p->failed)
                jp_expect_op(p, OP_RBRACE, "}");
            if ((n = jp_node(p, JN_DICT, k)))
                n->v = jp_vec_done(p, &items, &n->nv, NULL);
            else
                jp_vec_done(p, &items, &(int){0}, NULL);
        } else {
            jp_fail(p, "unexpected '%s'", jp_describe(k));
        }
        break;
    default:
        jp_fail(p, "unexpected '%s'", jp_describe(k));
    }
    return jp_leave(p, n);
}

static bool tuple_end(P *p, const char *const *extra_end)
{
    const struct jtoken *k = jp_cur(p);
    if (k->type == T_VAR_END || k->type == T_BLOCK_END || k->type == T_EOF ||
        (k->type == T_OP && k->op == OP_RPAREN))
        return true;
    for (; extra_end && *extra_end; extra_end++)
        if (jp_is_name(k, *extra_end))
            return true;
    return false;
}

struct jn *jp_tuple(P *p, bool simplified, bool with_condexpr,
                              const char *const *extra_end, bool explicit_parens)
{
    const struct jtoken *at = jp_cur(p);
    struct vec items = {0};
    bool is_tuple = false;
    for (;;) {
        if (items.n && !jp_expect_op(p, OP_COMMA, ","))
            break;
        if (tuple_end(p, extra_end))
            break;
        struct jn *x = simplified ? parse_primary(p) : jp_expression(p, with_condexpr);
        if (!x)
            break;
        jp_vec_push(p, &items, x, NULL);
        if (jp_is_op(p, OP_COMMA))
            is_tuple = true;
        else
            break;
    }
    if (p->failed) {
        jp_vec_done(p, &items, &(int){0}, NULL);
        return NULL;
    }
    if (!is_tuple) {
        if (items.n) {
            struct jn *x = items.v[0];
            jp_vec_done(p, &items, &(int){0}, NULL);
            return x;
        }
        if (!explicit_parens) {
            jp_vec_done(p, &items, &(int){0}, NULL);
            return jp_fail(p, "Expected an expression, got '%s'", jp_describe(jp_cur(p)));
        }
    }
    struct jn *t = jp_node(p, JN_TUPLE, at);
    if (t)
        t->v = jp_vec_done(p, &items, &t->nv, NULL);
    return p->failed ? NULL : t;
}

static struct jn *parse_test(P *p, struct jn *n)
{
    const struct jtoken *at = jp_advance(p); /* is */
    bool negated = jp_skip_name(p, "not");
    const struct jtoken *k = jp_expect_name(p);
    if (!k)
        return NULL;
    struct jn *t = jp_node(p, JN_TEST, at);
    if (!t)
        return NULL;
    t->a = n;
    t->name = k->p;
    t->flags = negated ? JNF_NEGATE : 0;
    if (jp_is_op(p, OP_DOT))
        return jp_fail(p, "dotted test names are not supported");
    const struct jtoken *c = jp_cur(p);
    if (jp_is_op(p, OP_LPAREN)) {
        if (!parse_call_args(p, t))
            return NULL;
    } else if ((c->type == T_NAME || c->type == T_STRING || c->type == T_INT ||
                c->type == T_FLOAT ||
                (c->type == T_OP &&
                 (c->op == OP_LPAREN || c->op == OP_LBRACKET || c->op == OP_LBRACE))) &&
               !jp_is_name(c, "else") && !jp_is_name(c, "or") && !jp_is_name(c, "and")) {
        if (jp_is_name(c, "is"))
            return jp_fail(p, "You cannot chain multiple tests with is");
        struct jn *arg = parse_postfix(p, parse_primary(p));
        if (!arg)
            return NULL;
        t->v = jarena_alloc(&p->t->arena, sizeof(*t->v));
        if (!t->v)
            return jp_fail(p, "out of memory");
        t->v[0] = arg;
        t->nv = 1;
    }
    return t;
}

struct jn *jp_filter(P *p, struct jn *n, bool start_inline)
{
    while (!p->failed && (jp_is_op(p, OP_PIPE) || start_inline)) {
        if (!start_inline)
            jp_advance(p);
        start_inline = false;
        const struct jtoken *k = jp_expect_name(p);
        if (!k)
            return NULL;
        if (jp_is_op(p, OP_DOT))
            return jp_fail(p, "dotted filter names are not supported");
        struct jn *f = jp_node(p, JN_FILTER, k);
        if (!f)
            return NULL;
        f->a = n;
        f->name = k->p;
        if (jp_is_op(p, OP_LPAREN) && !parse_call_args(p, f))
            return NULL;
        n = f;
    }
    return p->failed ? NULL : n;
}

static struct jn *parse_filter_expr(P *p, struct jn *n)
{
    while (n && !p->failed) {
        if (jp_is_op(p, OP_PIPE)) {
            n = jp_filter(p, n, false);
        } else if (jp_is_name(jp_cur(p), "is")) {
            n = parse_test(p, n);
        } else if (jp_is_op(p, OP_LPAREN)) {
            struct jn *c = jp_node(p, JN_CALL, jp_cur(p));
            if (!c)
                return NULL;
            c->a = n;
            if (!parse_call_args(p, c))
                return NULL;
            n = c;
        } else {
            break;
        }
    }
    return p->failed ? NULL : n;
}

static struct jn *parse_unary(P *p, bool with_filter)
{
    const struct jtoken *k = jp_cur(p);
    struct jn *n;
    if (!jp_enter(p))
        return NULL;
    if (jp_is_op(p, OP_SUB) || jp_is_op(p, OP_ADD)) {
        jp_advance(p);
        struct jn *x = parse_unary(p, false);
        n = x ? jp_node(p, JN_UNARY, k) : NULL;
        if (n) {
            n->op = k->op == OP_SUB ? OP_NEG : OP_POS;
            n->a = x;
        }
    } else {
        n = parse_primary(p);
    }
    n = parse_postfix(p, n);
    if (with_filter)
        n = parse_filter_expr(p, n);
    return jp_leave(p, n);
}

static struct jn *binary(P *p, const struct jtoken *at, uint8_t op, struct jn *l, struct jn *r)
{
    if (!l || !r)
        return NULL;
    struct jn *n = jp_node(p, JN_BINARY, at);
    if (n) {
        n->op = op;
        n->a = l;
        n->b = r;
    }
    return n;
}

static struct jn *parse_pow(P *p)
{
    struct jn *l = parse_unary(p, true);
    while (l && jp_is_op(p, OP_POW)) {
        const struct jtoken *at = jp_advance(p);
        l = binary(p, at, OP_POW, l, parse_unary(p, true));
    }
    return l;
}

static struct jn *parse_math2(P *p)
{
    struct jn *l = parse_pow(p);
    while (l && (jp_is_op(p, OP_MUL) || jp_is_op(p, OP_DIV) || jp_is_op(p, OP_FLOORDIV) ||
                 jp_is_op(p, OP_MOD))) {
        const struct jtoken *at = jp_advance(p);
        l = binary(p, at, at->op, l, parse_pow(p));
    }
    return l;
}

static struct jn *parse_concat(P *p)
{
    const struct jtoken *at = jp_cur(p);
    struct jn *first = parse_math2(p);
    if (!first || !jp_is_op(p, OP_TILDE))
        return first;
    struct vec items = {0};
    jp_vec_push(p, &items, first, NULL);
    while (!p->failed && jp_skip_op(p, OP_TILDE)) {
        struct jn *x = parse_math2(p);
        if (x)
            jp_vec_push(p, &items, x, NULL);
    }
    struct jn *n = jp_node(p, JN_CONCAT, at);
    if (n)
        n->v = jp_vec_done(p, &items, &n->nv, NULL);
    else
        jp_vec_done(p, &items, &(int){0}, NULL);
    return p->failed ? NULL : n;
}

static struct jn *parse_math1(P *p)
{
    struct jn *l = parse_concat(p);
    while (l && (jp_is_op(p, OP_ADD) || jp_is_op(p, OP_SUB))) {
        const struct jtoken *at = jp_advance(p);
        l = binary(p, at, at->op, l, parse_concat(p));
    }
    return l;
}

static struct jn *parse_compare(P *p)
{
    const struct jtoken *at = jp_cur(p);
    struct jn *e = parse_math1(p);
    if (!e)
        return NULL;
    struct vec ops = {0};
    uint8_t opcodes[64];
    for (;;) {
        const struct jtoken *k = jp_cur(p);
        uint8_t op;
        if (k->type == T_OP && (k->op == OP_EQ || k->op == OP_NE || k->op == OP_LT ||
                                k->op == OP_LTEQ || k->op == OP_GT || k->op == OP_GTEQ)) {
            jp_advance(p);
            op = k->op;
        } else if (jp_is_name(k, "in")) {
            jp_advance(p);
            op = OP_IN;
        } else if (jp_is_name(k, "not") && jp_is_name(jp_look(p), "in")) {
            jp_advance(p);
            jp_advance(p);
            op = OP_NOTIN;
        } else {
            break;
        }
        if (ops.n == (int)sizeof(opcodes)) {
            jp_fail(p, "comparison chain too long");
            break;
        }
        struct jn *r = parse_math1(p);
        if (!r)
            break;
        opcodes[ops.n] = op;
        jp_vec_push(p, &ops, r, NULL);
    }
    if (!ops.n || p->failed) {
        jp_vec_done(p, &ops, &(int){0}, NULL);
        return p->failed ? NULL : e;
    }
    struct jn *n = jp_node(p, JN_COMPARE, at);
    if (!n)
        return NULL;
    n->a = e;
    n->ops = jarena_alloc(&p->t->arena, (size_t)ops.n);
    if (!n->ops)
        return jp_fail(p, "out of memory");
    memcpy(n->ops, opcodes, (size_t)ops.n);
    n->v = jp_vec_done(p, &ops, &n->nv, NULL);
    return p->failed ? NULL : n;
}

static struct jn *parse_not(P *p)
{
    if (jp_is_name(jp_cur(p), "not")) {
        const struct jtoken *at = jp_advance(p);
        if (!jp_enter(p))
            return NULL;
        struct jn *x = parse_not(p);
        struct jn *n = x ? jp_node(p, JN_UNARY, at) : NULL;
        if (n) {
            n->op = OP_NOT;
            n->a = x;
        }
        return jp_leave(p, n);
    }
    return parse_compare(p);
}

/* a left-associative chain of the keyword op over operands of the next
 * tighter level: a and b and c, a or b or c */
static struct jn *parse_chain(P *p, const char *op, uint8_t kind, struct jn *(*operand)(P *))
{
    struct jn *l = operand(p);
    while (l && jp_is_name(jp_cur(p), op)) {
        const struct jtoken *at = jp_advance(p);
        struct jn *r = operand(p), *n = r ? jp_node(p, kind, at) : NULL;
        if (!n)
            return NULL;
        n->a = l;
        n->b = r;
        l = n;
    }
    return l;
}

static struct jn *parse_and(P *p)
{
    return parse_chain(p, "and", JN_AND, parse_not);
}

static struct jn *parse_or(P *p)
{
    return parse_chain(p, "or", JN_OR, parse_and);
}

static struct jn *parse_condexpr(P *p)
{
    struct jn *e1 = parse_or(p);
    while (e1 && jp_is_name(jp_cur(p), "if")) {
        const struct jtoken *at = jp_advance(p);
        struct jn *e2 = parse_or(p), *e3 = NULL;
        if (!e2)
            return NULL;
        if (jp_skip_name(p, "else") && !(e3 = parse_condexpr(p)))
            return NULL;
        struct jn *n = jp_node(p, JN_COND, at);
        if (!n)
            return NULL;
        n->a = e1; /* value when true */
        n->b = e2; /* test */
        n->c = e3; /* value when false, or NULL */
        e1 = n;
    }
    return e1;
}

struct jn *jp_expression(P *p, bool with_condexpr)
{
    if (!jp_enter(p))
        return NULL;
    return jp_leave(p, with_condexpr ? parse_condexpr(p) : parse_or(p));
}
