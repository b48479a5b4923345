/* GBNF text -> the compiled grammar of engine_grammar_int.h. Groups become
 * rules of their own, and a repeated item a GE_REP of its rule, so the
 * matcher only knows sets, rule references, counted repetitions and ends. */
#include "engine/engine_grammar.h"

#include "common/common.h"
#include "engine/engine_grammar_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPEAT_MAX 10000 /* {m,n} bounds: larger ones are refused */
#define RULES_MAX 200000
#define NAME_MAX_LEN 128

#define VEC(T) struct { T *p; size_t n, cap; }
#define VEC_PUSH(v, x)                                                                    \
    do {                                                                                  \
        if ((v).n == (v).cap) {                                                           \
            size_t c_ = (v).cap ? (v).cap * 2 : 8;                                        \
            void *p_ = realloc((v).p, c_ * sizeof(*(v).p));                               \
            if (p_)                                                                       \
                (v).p = p_, (v).cap = c_;                                                 \
        }                                                                                 \
        if ((v).n < (v).cap)                                                              \
            (v).p[(v).n++] = (x);                                                         \
        else                                                                              \
            vec_oom = true; /* checked once, at the end of compiling */                   \
    } while (0)

static _Thread_local bool vec_oom;

typedef VEC(struct gelem) elem_vec;

struct brule {
    char *name; /* NULL for the rules groups and repetitions make */
    int line;   /* where it was first named */
    bool defined;
    VEC(elem_vec) alts;
};

struct bset {
    bool neg;
    VEC(uint32_t) r; /* pairs lo, hi */
};

struct parser {
    const char *s;
    int line;
    int depth; /* inside ( ): newlines do not end the rule */
    VEC(struct brule) rules;
    VEC(struct bset) sets;
    char err[256];
};

static int fail(struct parser *p, const char *fmt, ...) MOE_PRINTF(2, 3);
static int fail(struct parser *p, const char *fmt, ...)
{
    if (p->err[0])
        return -EINVAL;
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(p->err, sizeof(p->err), "grammar line %d: ", p->line);
    vsnprintf(p->err + n, sizeof(p->err) - (size_t)n, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static int32_t new_rule(struct parser *p, const char *name, size_t len)
{
    if (p->rules.n >= RULES_MAX)
        return fail(p, "more than %d rules", RULES_MAX);
    struct brule r = {.line = p->line};
    if (name)
        r.name = strndup(name, len);
    VEC_PUSH(p->rules, r);
    return (int32_t)p->rules.n - 1;
}

static int32_t rule_named(struct parser *p, const char *name, size_t len)
{
    for (size_t i = 0; i < p->rules.n; i++)
        if (p->rules.p[i].name && strlen(p->rules.p[i].name) == len &&
            !memcmp(p->rules.p[i].name, name, len))
            return (int32_t)i;
    return new_rule(p, name, len);
}

static void add_alt(struct parser *p, int32_t r, elem_vec alt)
{
    VEC_PUSH(p->rules.p[r].alts, alt);
}

static elem_vec one(uint8_t type, int32_t arg)
{
    elem_vec v = {0};
    VEC_PUSH(v, ((struct gelem){type, arg, 0, 0}));
    return v;
}

/* ---- lexing ------------------------------------------------------------------ */

/* skips blanks and comments; newlines too inside ( ) or when nl says so */
static void skip(struct parser *p, bool nl)
{
    for (;;) {
        if (*p->s == ' ' || *p->s == '\t' || *p->s == '\r') {
            p->s++;
        } else if (*p->s == '#') {
            while (*p->s && *p->s != '\n')
                p->s++;
        } else if (*p->s == '\n' && (nl || p->depth > 0)) {
            p->s++, p->line++;
        } else {
            return;
        }
    }
}

static bool is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_';
}

static int hex_value(struct parser *p, int digits, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < digits; i++) {
        char c = *p->s;
        int d = c >= '0' && c <= '9' ? c - '0'
              : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return fail(p, "\\x, \\u or \\U needs %d hex digits", digits);
        v = v * 16 + (uint32_t)d;
        p->s++;
    }
    *out = v;
    return 0;
}

/* one code point of a literal or class: UTF-8 or an escape */
static int code_point(struct parser *p, uint32_t *out)
{
    const unsigned char *u = (const unsigned char *)p->s;
    if (!*u || *u == '\n')
        return fail(p, "unterminated literal or class");
    if (*u == '\\') {
        p->s += 2;
        switch (u[1]) {
        case 'n': *out = '\n'; return 0;
        case 'r': *out = '\r'; return 0;
        case 't': *out = '\t'; return 0;
        case '0': *out = 0; return 0;
        case '\\': case '"': case '\'': case '[': case ']': case '-': case '/': case '^':
            *out = u[1];
            return 0;
        case 'x': return hex_value(p, 2, out);
        case 'u': return hex_value(p, 4, out);
        case 'U': return hex_value(p, 8, out);
        default: return fail(p, "unknown escape \\%c", u[1] ? u[1] : ' ');
        }
    }
    int n = *u < 0x80 ? 1 : (*u >> 5) == 6 ? 2 : (*u >> 4) == 14 ? 3 : (*u >> 3) == 30 ? 4 : 0;
    if (!n)
        return fail(p, "invalid UTF-8 in the grammar");
    uint32_t c = n == 1 ? *u : *u & (0x7f >> n);
    for (int i = 1; i < n; i++) {
        if ((u[i] & 0xc0) != 0x80)
            return fail(p, "invalid UTF-8 in the grammar");
        c = c << 6 | (u[i] & 0x3f);
    }
    p->s += n;
    *out = c;
    return 0;
}

static int32_t new_set(struct parser *p, bool neg, const uint32_t *pairs, size_t n_pairs)
{
    struct bset s = {.neg = neg};
    for (size_t i = 0; i < 2 * n_pairs; i++)
        VEC_PUSH(s.r, pairs[i]);
    VEC_PUSH(p->sets, s);
    return (int32_t)p->sets.n - 1;
}

/* ---- parsing ----------------------------------------------------------------- */

static int parse_alts(struct parser *p, int32_t rule);

static int parse_literal(struct parser *p, elem_vec *out)
{
    p->s++; /* " */
    while (*p->s != '"') {
        uint32_t c;
        if (code_point(p, &c) < 0)
            return -EINVAL;
        uint32_t pair[2] = {c, c};
        VEC_PUSH(*out, ((struct gelem){GE_SET, new_set(p, false, pair, 1), 0, 0}));
    }
    p->s++;
    return 0;
}

static int parse_class(struct parser *p, elem_vec *out)
{
    p->s++; /* [ */
    bool neg = *p->s == '^';
    p->s += neg;
    VEC(uint32_t) r = {0};
    while (*p->s != ']') {
        uint32_t lo, hi;
        if (code_point(p, &lo) < 0)
            goto bad;
        hi = lo;
        if (p->s[0] == '-' && p->s[1] != ']') {
            p->s++;
            if (code_point(p, &hi) < 0)
                goto bad;
            if (hi < lo) {
                fail(p, "class range out of order");
                goto bad;
            }
        }
        VEC_PUSH(r, lo);
        VEC_PUSH(r, hi);
    }
    p->s++;
    VEC_PUSH(*out, ((struct gelem){GE_SET, new_set(p, neg, r.p, r.n / 2), 0, 0}));
    free(r.p);
    return 0;
bad:
    free(r.p);
    return -EINVAL;
}

static int parse_count(struct parser *p, long *out)
{
    char *end;
    long v = strtol(p->s, &end, 10);
    if (end == p->s || v < 0 || v > REPEAT_MAX)
        return fail(p, "repetition bound must be 0..%d", REPEAT_MAX);
    p->s = end;
    *out = v;
    return 0;
}

/* x{m,n} (n < 0: no bound) appended to alt: one GE_REP of x's rule (a set
 * gets a rule of its own) */
static int repeat(struct parser *p, elem_vec *alt, struct gelem x, long m, long n)
{
    int32_t r = x.arg;
    if (x.type == GE_SET) {
        if ((r = new_rule(p, NULL, 0)) < 0)
            return r;
        add_alt(p, r, one(GE_SET, x.arg));
    }
    VEC_PUSH(*alt, ((struct gelem){GE_REP, r, (int32_t)m, (int32_t)n}));
    return 0;
}

/* items up to | ) or the end of the rule, into alt */
static int parse_seq(struct parser *p, elem_vec *alt)
{
    for (;;) {
        skip(p, false);
        char c = *p->s;
        if (!c || c == '|' || c == ')' || c == '\n')
            return 0;
        elem_vec item = {0};
        int rc = 0;
        if (c == '"') {
            rc = parse_literal(p, &item);
        } else if (c == '[') {
            rc = parse_class(p, &item);
        } else if (c == '.') {
            p->s++;
            VEC_PUSH(item, ((struct gelem){GE_SET, new_set(p, true, NULL, 0), 0, 0}));
        } else if (c == '(') {
            p->s++;
            int32_t r = new_rule(p, NULL, 0);
            p->depth++;
            rc = r < 0 ? r : parse_alts(p, r);
            p->depth--;
            if (!rc && *p->s != ')')
                rc = fail(p, "missing )");
            p->s++;
            if (!rc)
                VEC_PUSH(item, ((struct gelem){GE_REF, r, 0, 0}));
        } else if (is_name_char(c)) {
            const char *s = p->s;
            while (is_name_char(*p->s))
                p->s++;
            if ((size_t)(p->s - s) > NAME_MAX_LEN)
                rc = fail(p, "rule name longer than %d", NAME_MAX_LEN);
            int32_t r = rc ? -1 : rule_named(p, s, (size_t)(p->s - s));
            if (r < 0)
                rc = -EINVAL;
            else
                VEC_PUSH(item, ((struct gelem){GE_REF, r, 0, 0}));
        } else {
            rc = fail(p, "unexpected '%c'", c);
        }
        if (rc < 0) {
            free(item.p);
            return rc;
        }
        /* postfix */
        long m = 1, n = 1;
        c = *p->s;
        if (c == '*' || c == '+' || c == '?') {
            p->s++;
            m = c == '+', n = c == '?' ? 1 : -1;
        } else if (c == '{') {
            p->s++;
            if (parse_count(p, &m) < 0)
                goto bad;
            n = m;
            if (*p->s == ',') {
                p->s++;
                n = -1;
                if (*p->s != '}' && parse_count(p, &n) < 0)
                    goto bad;
            }
            if (*p->s != '}' || (n >= 0 && n < m)) {
                fail(p, "bad {m,n} repetition");
                goto bad;
            }
            p->s++;
        }
        if (m == 1 && n == 1) {
            for (size_t i = 0; i < item.n; i++)
                VEC_PUSH(*alt, item.p[i]);
        } else {
            if (item.n == 0) {
                fail(p, "a repetition of the empty literal \"\" (it can match nothing)");
                goto bad;
            }
            struct gelem x = item.p[0];
            if (item.n != 1) { /* a literal of several characters: a rule of its own */
                int32_t r = new_rule(p, NULL, 0);
                if (r < 0)
                    goto bad;
                add_alt(p, r, item);
                item = (elem_vec){0};
                x = (struct gelem){GE_REF, r, 0, 0};
            }
            if (repeat(p, alt, x, m, n) < 0)
                goto bad;
        }
        free(item.p);
        continue;
    bad:
        free(item.p);
        return -EINVAL;
    }
}

static int parse_alts(struct parser *p, int32_t rule)
{
    for (;;) {
        elem_vec alt = {0};
        if (parse_seq(p, &alt) < 0) {
            free(alt.p);
            return -EINVAL;
        }
        add_alt(p, rule, alt);
        if (*p->s == '\n' && p->depth == 0) { /* the next line may go on with | */
            const char *save = p->s;
            int line = p->line;
            skip(p, true);
            if (*p->s != '|')
                p->s = save, p->line = line;
        }
        if (*p->s != '|')
            return 0;
        p->s++;
        skip(p, true);
    }
}

static int parse_grammar(struct parser *p)
{
    for (;;) {
        skip(p, true);
        if (!*p->s)
            return 0;
        const char *s = p->s;
        while (is_name_char(*p->s))
            p->s++;
        if (p->s == s)
            return fail(p, "expected a rule name, found '%c'", *p->s);
        if ((size_t)(p->s - s) > NAME_MAX_LEN)
            return fail(p, "rule name longer than %d", NAME_MAX_LEN);
        int32_t r = rule_named(p, s, (size_t)(p->s - s));
        if (r < 0)
            return r;
        if (p->rules.p[r].defined)
            return fail(p, "rule '%s' defined twice", p->rules.p[r].name);
        p->rules.p[r].defined = true;
        p->rules.p[r].line = p->line;
        skip(p, false);
        if (strncmp(p->s, "::=", 3))
            return fail(p, "expected ::= after '%s'", p->rules.p[r].name);
        p->s += 3;
        skip(p, true);
        if (parse_alts(p, r) < 0)
            return -EINVAL;
        skip(p, false);
        if (*p->s == ')')
            return fail(p, "unbalanced )");
        if (*p->s && *p->s != '\n')
            return fail(p, "unexpected '%c'", *p->s);
    }
}

/* ---- checks and flattening ------------------------------------------------------------- */

/* a rule that may match nothing, by fixpoint */
static bool *nullable_rules(struct parser *p)
{
    bool *nul = calloc(p->rules.n, 1);
    if (!nul)
        return NULL;
    for (bool changed = true; changed;) {
        changed = false;
        for (size_t r = 0; r < p->rules.n; r++) {
            for (size_t a = 0; a < p->rules.p[r].alts.n && !nul[r]; a++) {
                elem_vec *v = &p->rules.p[r].alts.p[a];
                size_t i = 0;
                while (i < v->n && v->p[i].type != GE_SET &&
                       (nul[v->p[i].arg] || (v->p[i].type == GE_REP && v->p[i].lo == 0)))
                    i++;
                if (i == v->n)
                    nul[r] = changed = true;
            }
        }
    }
    return nul;
}

/* depth-first over "r may start with q" edges; a cycle is left recursion,
 * which the matcher would expand forever */
static int left_walk(struct parser *p, const bool *nul, uint8_t *color, int32_t r)
{
    color[r] = 1;
    struct brule *br = &p->rules.p[r];
    for (size_t a = 0; a < br->alts.n; a++) {
        elem_vec *v = &br->alts.p[a];
        for (size_t i = 0; i < v->n && v->p[i].type != GE_SET; i++) {
            int32_t q = v->p[i].arg;
            if (color[q] == 1) {
                const char *name = p->rules.p[q].name ? p->rules.p[q].name : br->name;
                p->line = p->rules.p[q].line;
                return fail(p, "left recursion through rule '%s' (a rule may not start with "
                            "itself, also not by way of rules or repetitions that can be empty)",
                            name ? name : "(a repetition)");
            }
            if (!color[q] && left_walk(p, nul, color, q) < 0)
                return -EINVAL;
            if (!nul[q] && !(v->p[i].type == GE_REP && v->p[i].lo == 0))
                break;
        }
    }
    color[r] = 2;
    return 0;
}

static int check(struct parser *p, int32_t *root)
{
    *root = -1;
    for (size_t r = 0; r < p->rules.n; r++) {
        struct brule *br = &p->rules.p[r];
        if (br->name && !br->defined) {
            p->line = br->line;
            return fail(p, "rule '%s' is used but never defined", br->name);
        }
        if (br->name && !strcmp(br->name, "root"))
            *root = (int32_t)r;
    }
    if (*root < 0) {
        p->line = 1;
        return fail(p, "no rule named 'root'");
    }
    bool *nul = nullable_rules(p);
    uint8_t *color = calloc(p->rules.n, 1);
    int rc = nul && color ? 0 : -ENOMEM;
    /* a repetition of what can match nothing would repeat without end */
    for (size_t r = 0; r < p->rules.n && !rc; r++) {
        for (size_t a = 0; a < p->rules.p[r].alts.n && !rc; a++) {
            elem_vec *v = &p->rules.p[r].alts.p[a];
            for (size_t i = 0; i < v->n && !rc; i++) {
                if (v->p[i].type == GE_REP && nul[v->p[i].arg]) {
                    p->line = p->rules.p[r].line;
                    rc = fail(p, "a repetition of something that can match nothing (in rule "
                              "'%s')", p->rules.p[r].name ? p->rules.p[r].name : "(a group)");
                }
            }
        }
    }
    for (size_t r = 0; r < p->rules.n && !rc; r++)
        if (!color[r])
            rc = left_walk(p, nul, color, (int32_t)r);
    free(nul);
    free(color);
    return rc;
}

static int cmp_pair(const void *a, const void *b)
{
    const uint32_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

static int flatten(struct parser *p, int32_t root, struct moe_grammar *g)
{
    size_t n_alts = 0, n_elems = 0, n_ranges = 0;
    for (size_t r = 0; r < p->rules.n; r++) {
        n_alts += p->rules.p[r].alts.n;
        for (size_t a = 0; a < p->rules.p[r].alts.n; a++)
            n_elems += p->rules.p[r].alts.p[a].n + 1;
    }
    for (size_t s = 0; s < p->sets.n; s++)
        n_ranges += p->sets.p[s].r.n / 2;
    g->n_rules = (int32_t)p->rules.n;
    g->n_elems = (int32_t)n_elems;
    g->n_sets = (int32_t)p->sets.n;
    g->elems = malloc(n_elems * sizeof(*g->elems));
    g->alt_pos = malloc((n_alts + 1) * sizeof(int32_t));
    g->rule_alt0 = malloc(p->rules.n * sizeof(int32_t));
    g->rule_nalt = malloc(p->rules.n * sizeof(int32_t));
    g->sets = calloc(p->sets.n + 1, sizeof(*g->sets));
    g->ranges = malloc((n_ranges + 1) * sizeof(*g->ranges));
    if (!g->elems || !g->alt_pos || !g->rule_alt0 || !g->rule_nalt || !g->sets || !g->ranges)
        return -ENOMEM;
    size_t e = 0, alt = 0;
    for (size_t r = 0; r < p->rules.n; r++) {
        g->rule_alt0[r] = (int32_t)alt;
        g->rule_nalt[r] = (int32_t)p->rules.p[r].alts.n;
        for (size_t a = 0; a < p->rules.p[r].alts.n; a++) {
            elem_vec *v = &p->rules.p[r].alts.p[a];
            g->alt_pos[alt++] = (int32_t)e;
            for (size_t i = 0; i < v->n; i++)
                g->elems[e++] = v->p[i];
            g->elems[e++] = (struct gelem){GE_END, 0, 0, 0};
        }
    }
    size_t k = 0;
    for (size_t s = 0; s < p->sets.n; s++) {
        struct bset *b = &p->sets.p[s];
        struct gset *gs = &g->sets[s];
        size_t n = b->r.n / 2;
        if (n) /* qsort wants a pointer even for nothing */
            qsort(b->r.p, n, 2 * sizeof(uint32_t), cmp_pair);
        gs->first = (int32_t)k;
        gs->neg = b->neg;
        for (size_t i = 0; i < n; i++) { /* merged: neighbours and overlaps joined */
            uint32_t lo = b->r.p[2 * i], hi = b->r.p[2 * i + 1];
            if (k > (size_t)gs->first && lo <= g->ranges[k - 1][1] + 1) {
                if (hi > g->ranges[k - 1][1])
                    g->ranges[k - 1][1] = hi;
            } else {
                g->ranges[k][0] = lo, g->ranges[k][1] = hi, k++;
            }
        }
        gs->n = (int32_t)(k - (size_t)gs->first);
        for (uint32_t c = 0; c < 128; c++) {
            bool in = false;
            for (int32_t i = gs->first; i < gs->first + gs->n; i++)
                in |= c >= g->ranges[i][0] && c <= g->ranges[i][1];
            if (in != gs->neg)
                gs->ascii[c >> 6] |= 1ull << (c & 63);
        }
    }
    g->root = root;
    return 0;
}

static void grammar_free(struct moe_grammar *g)
{
    free(g->elems);
    free(g->alt_pos);
    free(g->rule_alt0);
    free(g->rule_nalt);
    free(g->sets);
    free(g->ranges);
    free(g);
}

int moe_grammar_compile(const char *gbnf, struct moe_grammar **out)
{
    *out = NULL;
    if (!gbnf)
        return moe_err(-EINVAL, "grammar: none given");
    struct parser p = {.s = gbnf, .line = 1};
    int32_t root = -1;
    vec_oom = false;
    int rc = parse_grammar(&p);
    if (vec_oom)
        rc = -ENOMEM;
    if (!rc)
        rc = check(&p, &root);
    struct moe_grammar *g = NULL;
    if (!rc) {
        g = calloc(1, sizeof(*g));
        rc = g ? flatten(&p, root, g) : -ENOMEM;
    }
    if (vec_oom)
        rc = -ENOMEM;
    for (size_t r = 0; r < p.rules.n; r++) {
        for (size_t a = 0; a < p.rules.p[r].alts.n; a++)
            free(p.rules.p[r].alts.p[a].p);
        free(p.rules.p[r].alts.p);
        free(p.rules.p[r].name);
    }
    free(p.rules.p);
    for (size_t s = 0; s < p.sets.n; s++)
        free(p.sets.p[s].r.p);
    free(p.sets.p);
    if (rc) {
        if (g)
            grammar_free(g);
        return rc == -ENOMEM ? moe_err(rc, "grammar: out of memory")
                             : moe_err(rc, "%s", p.err);
    }
    atomic_init(&g->refs, 1);
    *out = g;
    return 0;
}

struct moe_grammar *moe_grammar_ref(struct moe_grammar *g)
{
    if (g)
        atomic_fetch_add(&g->refs, 1);
    return g;
}

void moe_grammar_unref(struct moe_grammar *g)
{
    if (g && atomic_fetch_sub(&g->refs, 1) == 1)
        grammar_free(g);
}
