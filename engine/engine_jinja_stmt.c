/* Jinja parser, statements: which tags exist (jinja2's own plus the
 * loopcontrols extension's break and continue and transformers' generation
 * block) and what each holds, following jinja2's parser.py.
 *
 * jinja2 reports an unknown filter or test when it compiles the template,
 * except inside an if block or an inline if (a "soft" frame), where the
 * failure waits until the expression runs: the pass at the end does the
 * same, and so a template that only uses, say, from_json on a branch it never
 * takes renders as it does under transformers. */
#include "engine/engine_jinja_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- statements --------------------------------------------------------------------- */

static struct jn *subparse(P *p, const char *const *end);

static bool assignable(struct jn *n)
{
    if (n->kind == JN_NAME)
        return true;
    if (n->kind != JN_TUPLE)
        return false;
    for (int i = 0; i < n->nv; i++)
        if (!assignable(n->v[i]))
            return false;
    return true;
}

static struct jn *parse_assign_target(P *p, const char *const *extra_end, bool with_namespace)
{
    if (with_namespace && jp_cur(p)->type == T_NAME && jp_look(p)->type == T_OP &&
        jp_look(p)->op == OP_DOT) {
        const struct jtoken *k = jp_advance(p);
        jp_advance(p);
        const struct jtoken *attr = jp_expect_name(p);
        if (!attr)
            return NULL;
        struct jn *ns = jp_node(p, JN_NAME, k), *g = jp_node(p, JN_GETATTR, k);
        if (!ns || !g)
            return NULL;
        ns->name = k->p;
        g->a = ns;
        g->name = attr->p;
        return g;
    }
    struct jn *t = jp_tuple(p, true, true, extra_end, false);
    if (t && !assignable(t))
        return jp_fail(p, "can't assign to this expression");
    return t;
}

static const char *name_of(P *p)
{
    const struct jtoken *k = jp_expect_name(p);
    return k ? k->p : NULL;
}

/* after the tag's own words: %} then the body up to one of end */
static struct jn *parse_statements(P *p, const char *const *end, bool drop_needle)
{
    jp_skip_op(p, OP_COLON);
    if (!jp_expect_type(p, T_BLOCK_END, "end of statement block"))
        return NULL;
    struct jn *body = subparse(p, end);
    if (!body)
        return NULL;
    if (jp_cur(p)->type == T_EOF)
        return jp_fail(p, "Unexpected end of template. Jinja was looking for the following tags: "
                       "'%s'.",
                    end[0]);
    if (drop_needle)
        jp_advance(p);
    return body;
}

/* macro(a, b=1) and call(a, b=1): names into v, defaults into kv */
static bool parse_signature(P *p, struct jn *n)
{
    struct vec args = {0}, defs = {0};
    bool any_default = false;
    if (!jp_expect_op(p, OP_LPAREN, "("))
        return false;
    while (!p->failed && !jp_is_op(p, OP_RPAREN)) {
        if (args.n && !jp_expect_op(p, OP_COMMA, ","))
            break;
        const struct jtoken *k = jp_expect_name(p);
        if (!k)
            break;
        struct jn *a = jp_node(p, JN_NAME, k);
        if (!a)
            break;
        a->name = k->p;
        struct jn *d = NULL;
        if (jp_skip_op(p, OP_ASSIGN)) {
            d = jp_expression(p, true);
            any_default = true;
        } else if (any_default) {
            jp_fail(p, "non-default argument follows default argument");
        }
        jp_vec_push(p, &args, a, NULL);
        jp_vec_push(p, &defs, d, NULL);
    }
    if (!p->failed)
        jp_expect_op(p, OP_RPAREN, ")");
    n->v = jp_vec_done(p, &args, &n->nv, NULL);
    n->kv = jp_vec_done(p, &defs, &n->nk, NULL);
    return !p->failed;
}

static struct jn *parse_for(P *p, const struct jtoken *at)
{
    static const char *const in_end[] = {"in", NULL}, *const rec_end[] = {"recursive", NULL};
    static const char *const body_end[] = {"endfor", "else", NULL}, *const else_end[] = {
                                                                         "endfor", NULL};
    struct jn *n = jp_node(p, JN_FOR, at);
    if (!n || !(n->a = parse_assign_target(p, in_end, false)))
        return NULL;
    if (!jp_skip_name(p, "in"))
        return jp_fail(p, "expected token 'in', got '%s'", jp_describe(jp_cur(p)));
    if (!(n->b = jp_tuple(p, false, false, rec_end, false)))
        return NULL;
    if (jp_skip_name(p, "if") && !(n->e = jp_expression(p, true)))
        return NULL;
    if (jp_skip_name(p, "recursive"))
        n->flags |= JNF_RECURSIVE;
    p->loops++;
    n->c = parse_statements(p, body_end, false);
    p->loops--;
    if (!n->c)
        return NULL;
    if (jp_is_name(jp_advance(p), "else") && !(n->d = parse_statements(p, else_end, true)))
        return NULL;
    return n;
}

static struct jn *parse_if(P *p, const struct jtoken *at)
{
    static const char *const end[] = {"elif", "else", "endif", NULL};
    static const char *const else_end[] = {"endif", NULL};
    struct jn *first = jp_node(p, JN_IF, at), *n = first;
    while (n) {
        if (!(n->a = jp_tuple(p, false, false, NULL, false)) ||
            !(n->b = parse_statements(p, end, false)))
            return NULL;
        const struct jtoken *k = jp_advance(p);
        if (jp_is_name(k, "elif")) {
            struct jn *e = jp_node(p, JN_IF, k);
            n->c = e;
            n = e;
            continue;
        }
        if (jp_is_name(k, "else") && !(n->c = parse_statements(p, else_end, true)))
            return NULL;
        break;
    }
    return p->failed ? NULL : first;
}

static struct jn *parse_set(P *p, const struct jtoken *at)
{
    static const char *const end[] = {"endset", NULL};
    struct jn *target = parse_assign_target(p, NULL, true);
    if (!target)
        return NULL;
    if (jp_skip_op(p, OP_ASSIGN)) {
        struct jn *n = jp_node(p, JN_SET, at);
        if (!n || !(n->b = jp_tuple(p, false, true, NULL, false)))
            return NULL;
        n->a = target;
        return n;
    }
    struct jn *n = jp_node(p, JN_SETBLOCK, at);
    if (!n)
        return NULL;
    n->a = target;
    if (jp_is_op(p, OP_PIPE) && !(n->c = jp_filter(p, NULL, false)))
        return NULL;
    n->b = parse_statements(p, end, true);
    return n->b ? n : NULL;
}

static struct jn *parse_macro(P *p, const struct jtoken *at)
{
    static const char *const end[] = {"endmacro", NULL};
    struct jn *n = jp_node(p, JN_MACRO, at);
    if (!n || !(n->name = name_of(p)) || !parse_signature(p, n))
        return NULL;
    int loops = p->loops;
    p->loops = 0;
    n->b = parse_statements(p, end, true);
    p->loops = loops;
    return n->b ? n : NULL;
}

static struct jn *parse_call_block(P *p, const struct jtoken *at)
{
    static const char *const end[] = {"endcall", NULL};
    struct jn *n = jp_node(p, JN_CALLBLOCK, at);
    if (!n)
        return NULL;
    if (jp_is_op(p, OP_LPAREN) && !parse_signature(p, n))
        return NULL;
    if (!(n->a = jp_expression(p, true)))
        return NULL;
    if (n->a->kind != JN_CALL)
        return jp_fail_at(p, at, "expected call");
    int loops = p->loops;
    p->loops = 0;
    n->b = parse_statements(p, end, true);
    p->loops = loops;
    return n->b ? n : NULL;
}

static struct jn *parse_filter_block(P *p, const struct jtoken *at)
{
    static const char *const end[] = {"endfilter", NULL};
    struct jn *n = jp_node(p, JN_FILTERBLOCK, at);
    if (!n || !(n->a = jp_filter(p, NULL, true)))
        return NULL;
    n->b = parse_statements(p, end, true);
    return n->b ? n : NULL;
}

static struct jn *parse_with(P *p, const struct jtoken *at)
{
    static const char *const end[] = {"endwith", NULL};
    struct jn *n = jp_node(p, JN_WITH, at);
    struct vec targets = {0}, values = {0};
    while (n && !p->failed && jp_cur(p)->type != T_BLOCK_END) {
        if (targets.n && !jp_expect_op(p, OP_COMMA, ","))
            break;
        struct jn *t = parse_assign_target(p, NULL, false);
        if (!t || !jp_expect_op(p, OP_ASSIGN, "="))
            break;
        struct jn *v = jp_expression(p, true);
        if (v) {
            jp_vec_push(p, &targets, t, NULL);
            jp_vec_push(p, &values, v, NULL);
        }
    }
    if (!n)
        return NULL;
    n->v = jp_vec_done(p, &targets, &n->nv, NULL);
    n->kv = jp_vec_done(p, &values, &n->nk, NULL);
    if (p->failed)
        return NULL;
    n->b = parse_statements(p, end, true);
    return n->b ? n : NULL;
}

/* a tag with a body that renders as if the tag were not there */
static struct jn *parse_plain_block(P *p, const char *endname)
{
    const char *const end[] = {endname, NULL};
    return parse_statements(p, end, true);
}

/* tags jinja2 knows but transformers' environment cannot run (no loader) */
static struct jn *parse_unsupported(P *p, const struct jtoken *at, const char *msg)
{
    struct jn *n = jp_node(p, JN_ERROR_STMT, at);
    if (!n)
        return NULL;
    n->name = msg;
    while (jp_cur(p)->type != T_BLOCK_END && jp_cur(p)->type != T_EOF)
        jp_advance(p);
    return n;
}

static struct jn *parse_statement(P *p)
{
    const struct jtoken *k = jp_cur(p);
    if (k->type != T_NAME)
        return jp_fail(p, "tag name expected");
    jp_advance(p);
    const char *w = k->p;
    if (!strcmp(w, "for"))
        return parse_for(p, k);
    if (!strcmp(w, "if"))
        return parse_if(p, k);
    if (!strcmp(w, "set"))
        return parse_set(p, k);
    if (!strcmp(w, "macro"))
        return parse_macro(p, k);
    if (!strcmp(w, "call"))
        return parse_call_block(p, k);
    if (!strcmp(w, "filter"))
        return parse_filter_block(p, k);
    if (!strcmp(w, "with"))
        return parse_with(p, k);
    if (!strcmp(w, "break") || !strcmp(w, "continue")) {
        if (!p->loops)
            return jp_fail_at(p, k, "'%s' outside of a loop", w);
        return jp_node(p, w[0] == 'b' ? JN_BREAK : JN_CONTINUE, k);
    }
    if (!strcmp(w, "generation")) /* transformers' assistant-mask tag */
        return parse_plain_block(p, "endgeneration");
    if (!strcmp(w, "block")) {
        const char *name = name_of(p);
        if (!name)
            return NULL;
        jp_skip_name(p, "scoped");
        jp_skip_name(p, "required");
        struct jn *body = parse_plain_block(p, "endblock");
        if (body)
            jp_skip_name(p, name);
        return body;
    }
    if (!strcmp(w, "print")) {
        struct jn *n = jp_node(p, JN_OUTPUT, k);
        if (n && !(n->a = jp_tuple(p, false, true, NULL, false)))
            return NULL;
        return n;
    }
    if (!strcmp(w, "extends") || !strcmp(w, "include") || !strcmp(w, "import") ||
        !strcmp(w, "from"))
        return parse_unsupported(p, k, "no loader for this environment specified");
    if (!strcmp(w, "autoescape"))
        return parse_unsupported(p, k, "autoescape blocks are not supported");
    return jp_fail_at(p, k, "Encountered unknown tag '%s'.", w);
}

static struct jn *subparse(P *p, const char *const *end)
{
    const struct jtoken *at = jp_cur(p);
    struct jn *body = jp_node(p, JN_BODY, at);
    struct vec stmts = {0};
    if (!body || ++p->depth > J_MAX_NEST)
        return jp_fail(p, "blocks nested too deeply");
    while (!p->failed) {
        const struct jtoken *k = jp_cur(p);
        if (k->type == T_EOF)
            break;
        if (k->type == T_DATA) {
            jp_advance(p);
            struct jn *d = jp_node(p, JN_DATA, k);
            if (d && jp_const_str(p, d, k->p, k->n))
                jp_vec_push(p, &stmts, d, NULL);
        } else if (k->type == T_VAR_BEGIN) {
            jp_advance(p);
            struct jn *o = jp_node(p, JN_OUTPUT, k);
            if (o && (o->a = jp_tuple(p, false, true, NULL, false)) &&
                jp_expect_type(p, T_VAR_END, "end of print statement"))
                jp_vec_push(p, &stmts, o, NULL);
        } else if (k->type == T_BLOCK_BEGIN) {
            jp_advance(p);
            bool stop = false;
            for (const char *const *e = end; e && *e; e++)
                if (jp_is_name(jp_cur(p), *e))
                    stop = true;
            if (stop)
                break;
            struct jn *s = parse_statement(p);
            if (s && jp_expect_type(p, T_BLOCK_END, "end of statement block"))
                jp_vec_push(p, &stmts, s, NULL);
        } else {
            jp_fail(p, "unexpected '%s'", jp_describe(k));
        }
    }
    p->depth--;
    body->v = jp_vec_done(p, &stmts, &body->nv, NULL);
    if (!p->failed && end && jp_cur(p)->type == T_EOF)
        jp_fail(p, "Unexpected end of template. Jinja was looking for the following tags: '%s'.",
             end[0]);
    return p->failed ? NULL : body;
}

/* ---- the pass after parsing: filters, tests, macro flags ---------------------------- */

/* does the tree read name? (deeper than the check below allows: say yes,
 * the check fails the template anyway) */
static bool reads_name(const struct jn *n, const char *name, int depth)
{
    if (!n)
        return false;
    if (depth > 4 * J_MAX_NEST || (n->kind == JN_NAME && n->name == name))
        return true;
    const struct jn *kids[] = {n->a, n->b, n->c, n->d, n->e, n->dyn_args, n->dyn_kwargs};
    for (size_t i = 0; i < sizeof(kids) / sizeof(kids[0]); i++)
        if (reads_name(kids[i], name, depth + 1))
            return true;
    for (int i = 0; i < n->nv; i++)
        if (reads_name(n->v[i], name, depth + 1))
            return true;
    for (int i = 0; i < n->nk; i++)
        if (reads_name(n->kv[i], name, depth + 1))
            return true;
    return false;
}

static bool check(P *p, struct jn *n, bool soft, int depth)
{
    if (!n)
        return true;
    if (depth > 4 * J_MAX_NEST) {
        jp_fail_at(p, &(struct jtoken){.line = n->line, .col = n->col}, "nested too deeply");
        return false;
    }
    const struct jtoken at = {.line = n->line, .col = n->col};
    if (n->kind == JN_FILTER) {
        n->fid = (int16_t)jfilter_id(n->name);
        if (n->fid < 0 && !soft && !jfilter_known(n->name)) {
            jp_fail_at(p, &at, "No filter named '%s'.", n->name);
            return false;
        }
    } else if (n->kind == JN_TEST) {
        n->fid = (int16_t)jtest_id(n->name);
        if (n->fid < 0 && !soft && !jtest_known(n->name)) {
            jp_fail_at(p, &at, "No test named '%s'.", n->name);
            return false;
        }
    } else if (n->kind == JN_MACRO) {
        if (reads_name(n->b, p->t->n_varargs, depth))
            n->flags |= JNF_VARARGS;
        if (reads_name(n->b, p->t->n_kwargs, depth))
            n->flags |= JNF_KWARGS;
        if (reads_name(n->b, p->t->n_caller, depth))
            n->flags |= JNF_CALLER;
    } else if (n->kind == JN_CALLBLOCK) {
        n->flags |= JNF_VARARGS | JNF_KWARGS;
    }
    /* which parts jinja2 compiles in a soft frame (if, inline if) and which in
     * a fresh one (loops, macros, blocks) */
    bool s_a = soft, s_b = soft, s_c = soft, s_d = soft, s_e = soft, s_v = soft, s_k = soft;
    switch (n->kind) {
    case JN_IF:
    case JN_COND:
        s_a = s_b = s_c = true;
        break;
    case JN_FOR:
        s_c = s_d = s_e = false;
        break;
    case JN_MACRO:
    case JN_CALLBLOCK:
    case JN_SETBLOCK:
        s_b = s_c = s_k = false;
        break;
    case JN_FILTERBLOCK:
        s_a = s_b = false;
        break;
    case JN_WITH:
        s_b = false;
        break;
    default:
        break;
    }
    bool ok = check(p, n->a, s_a, depth + 1) && check(p, n->b, s_b, depth + 1) &&
              check(p, n->c, s_c, depth + 1) && check(p, n->d, s_d, depth + 1) &&
              check(p, n->e, s_e, depth + 1) && check(p, n->dyn_args, soft, depth + 1) &&
              check(p, n->dyn_kwargs, soft, depth + 1);
    for (int i = 0; ok && i < n->nv; i++)
        ok = check(p, n->v[i], s_v, depth + 1);
    for (int i = 0; ok && i < n->nk; i++)
        ok = check(p, n->kv[i], s_k, depth + 1);
    return ok;
}

int jparse(struct moe_jinja *t, const struct jtoken *toks, size_t n, char *err, size_t errlen)
{
    P p = {.t = t, .tk = toks, .n = n, .err = err, .errlen = errlen};
    t->n_loop = jintern(t, "loop", 4);
    t->n_varargs = jintern(t, "varargs", 7);
    t->n_kwargs = jintern(t, "kwargs", 6);
    t->n_caller = jintern(t, "caller", 6);
    if (!t->n_loop || !t->n_varargs || !t->n_kwargs || !t->n_caller) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    t->root = subparse(&p, NULL);
    if (!p.failed && jp_cur(&p)->type != T_EOF)
        jp_fail(&p, "unexpected '%s'", jp_describe(jp_cur(&p)));
    if (!p.failed)
        check(&p, t->root, false, 0);
    return p.failed ? -EINVAL : 0;
}
