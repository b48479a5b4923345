/* JSON Schema -> GBNF, for response_format json_schema and tool arguments.
 *
 * Every text the grammar allows is valid against the schema; the grammar
 * may allow less than the schema does (properties come in the schema's
 * order, an object without additionalProperties gets no others, numbers
 * have at most 16 digits before the point). A keyword that constrains
 * values and is not implemented is refused naming it and where it is, never
 * ignored: an output that fails its schema would be silently wrong.
 * oneOf is generated as anyOf: its branches are assumed disjoint, as real
 * schemas write them (pydantic's tagged unions). Number bounds must be
 * whole numbers; "-0" is not generated. */
#include "engine/engine_grammar.h"

#include "common/common.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEPTH_MAX 64
#define DIGITS_MAX 16

/* the JSON of any value; rules are named without a dash so that schema rules
 * (s12, def-Name) cannot clash with them */
static const char JSON_RULES[] =
    "value ::= object | array | string | number | \"true\" | \"false\" | \"null\"\n"
    "object ::= \"{\" ws ( string ws \":\" ws value ws ( \",\" ws string ws \":\" ws value ws )* )? \"}\"\n"
    "array ::= \"[\" ws ( value ws ( \",\" ws value ws )* )? \"]\"\n"
    "string ::= \"\\\"\" char* \"\\\"\"\n"
    "char ::= [^\"\\\\\\x00-\\x1f] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4} )\n"
    "number ::= integer frac? ( [eE] [-+]? [0-9]{1,3} )?\n"
    "frac ::= \".\" [0-9]{1,16}\n"
    "integer ::= \"-\"? uint\n"
    "uint ::= \"0\" | [1-9] [0-9]{0,15}\n"
    "boolean ::= \"true\" | \"false\"\n"
    "null ::= \"null\"\n"
    "ws ::= ( \" \" | \"\\n\" [ \\t]{0,20} )?\n"
    "pchar ::= [^\"\\\\\\x00-\\x1f]\n"
    /* days per month; 29 February left out (leap years) */
    "date ::= [0-9]{4} \"-\" ( ( \"0\" [13578] | \"1\" [02] ) \"-\" ( \"0\" [1-9] | [12] [0-9] | \"3\" [01] )"
    " | ( \"0\" [469] | \"11\" ) \"-\" ( \"0\" [1-9] | [12] [0-9] | \"30\" )"
    " | \"02-\" ( \"0\" [1-9] | \"1\" [0-9] | \"2\" [0-8] ) )\n"
    "time ::= ( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] \":\" [0-5] [0-9] ( \".\" [0-9]{1,6} )? "
    "( \"Z\" | [+-] ( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] )\n";

struct gen {
    struct moe_sbuf *out; /* the rules */
    const char *tag;      /* rule names are TAG-N */
    const json_t *root;   /* for $ref */
    json_t *defs_done;    /* ref -> its rule name, once generated */
    int next;
    char err[512];
};

static int gfail(struct gen *g, const char *path, const char *fmt, ...) MOE_PRINTF(3, 4);
static int gfail(struct gen *g, const char *path, const char *fmt, ...)
{
    if (g->err[0])
        return -EINVAL;
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(g->err, sizeof(g->err), "schema at %s: ", path);
    vsnprintf(g->err + n, sizeof(g->err) - (size_t)n, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/* a GBNF literal for bytes s[0..n) */
static void put_lit(struct moe_sbuf *b, const char *s, size_t n)
{
    moe_sbuf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            moe_sbuf_putc(b, '\\');
            moe_sbuf_putc(b, (char)c);
        } else if (c < 0x20) {
            snprintf(esc, sizeof(esc), "\\x%02x", c);
            moe_sbuf_puts(b, esc);
        } else {
            moe_sbuf_putc(b, (char)c);
        }
    }
    moe_sbuf_putc(b, '"');
}

/* the literal of a JSON value as it must be written (compact) */
static int put_json_lit(struct gen *g, struct moe_sbuf *e, const json_t *v, const char *path)
{
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    if (!s)
        return gfail(g, path, "value cannot be written as JSON");
    put_lit(e, s, strlen(s));
    free(s);
    return 0;
}

static void new_name(struct gen *g, char *name, size_t cap)
{
    snprintf(name, cap, "%s-%d", g->tag, g->next++);
}

/* a rule for schema s; its name into name */
static int gen_node(struct gen *g, const json_t *s, const char *path, int depth, char *name,
                    size_t cap);

/* ---- integers ------------------------------------------------------------------ */

/* digit strings of equal length k between L and H (inclusive, L <= H) */
static void digits_between(struct moe_sbuf *b, const char *L, const char *H, size_t k)
{
    if (k == 0)
        return;
    if (L[0] == H[0]) {
        char c[2] = {L[0], 0};
        put_lit(b, c, 1);
        moe_sbuf_putc(b, ' ');
        digits_between(b, L + 1, H + 1, k - 1);
        return;
    }
    if (k == 1) {
        char c[16];
        snprintf(c, sizeof(c), "[%c-%c]", L[0], H[0]);
        moe_sbuf_puts(b, c);
        return;
    }
    char nines[DIGITS_MAX + 1], zeros[DIGITS_MAX + 1], c[48];
    memset(nines, '9', k - 1), nines[k - 1] = 0;
    memset(zeros, '0', k - 1), zeros[k - 1] = 0;
    moe_sbuf_puts(b, "( ");
    /* L0 followed by L[1:]..99 */
    snprintf(c, sizeof(c), "\"%c\" ( ", L[0]);
    moe_sbuf_puts(b, c);
    digits_between(b, L + 1, nines, k - 1);
    moe_sbuf_puts(b, " )");
    if (H[0] - L[0] > 1) {
        snprintf(c, sizeof(c), " | [%c-%c] [0-9]{%zu}", L[0] + 1, H[0] - 1, k - 1);
        moe_sbuf_puts(b, c);
    }
    snprintf(c, sizeof(c), " | \"%c\" ( ", H[0]);
    moe_sbuf_puts(b, c);
    digits_between(b, zeros, H + 1, k - 1);
    moe_sbuf_puts(b, " ) )");
}

/* the non-negative integers a..b (b < 0: no upper bound) as alternatives */
static void uint_range(struct moe_sbuf *b, int64_t a, int64_t hi)
{
    bool first = true;
    char L[24], H[24];
    int da = snprintf(L, sizeof(L), "%" PRId64, a);
    int db = hi < 0 ? DIGITS_MAX : snprintf(H, sizeof(H), "%" PRId64, hi);
    moe_sbuf_puts(b, "( ");
    for (int d = da; d <= db; d++) {
        int64_t lo = d == 1 ? 0 : (int64_t)pow(10, d - 1), top = (int64_t)pow(10, d) - 1;
        lo = MOE_MAX(lo, a);
        if (hi >= 0)
            top = MOE_MIN(top, hi);
        if (lo > top)
            continue;
        if (!first)
            moe_sbuf_puts(b, " | ");
        first = false;
        if (hi < 0 && d > da) { /* every longer number: one item */
            char c[48];
            snprintf(c, sizeof(c), "[1-9] [0-9]{%d,%d}", d - 1, DIGITS_MAX - 1);
            moe_sbuf_puts(b, c);
            break;
        }
        snprintf(L, sizeof(L), "%" PRId64, lo);
        snprintf(H, sizeof(H), "%" PRId64, top);
        digits_between(b, L, H, (size_t)d);
    }
    moe_sbuf_puts(b, " )");
}

#define BOUND_MAX 999999999999999LL /* 15 digits: exact in a double */

/* integers in [lo, hi]; has_lo / has_hi false: unbounded on that side */
static void int_range(struct moe_sbuf *b, bool has_lo, int64_t lo, bool has_hi, int64_t hi)
{
    moe_sbuf_puts(b, "( ");
    if (has_lo && lo >= 0) {
        uint_range(b, lo, has_hi ? hi : -1);
    } else if (has_hi && hi < 0) {
        moe_sbuf_puts(b, "\"-\" ");
        uint_range(b, -hi, has_lo ? -lo : -1);
    } else {
        moe_sbuf_puts(b, "\"-\" ");
        uint_range(b, 1, has_lo ? -lo : -1);
        moe_sbuf_puts(b, " | ");
        uint_range(b, 0, has_hi ? hi : -1);
    }
    moe_sbuf_puts(b, " )");
}

/* reads minimum/maximum/exclusive*: integer bounds, or -EINVAL */
static int bounds(struct gen *g, const json_t *s, const char *path, bool integer, bool *has_lo,
                  double *lo, bool *has_hi, double *hi, bool *lo_ex, bool *hi_ex)
{
    static const char *const keys[] = {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"};
    *has_lo = *has_hi = *lo_ex = *hi_ex = false;
    for (int i = 0; i < 4; i++) {
        const json_t *v = json_object_get(s, keys[i]);
        if (!v)
            continue;
        if (json_is_boolean(v))
            return gfail(g, path, "'%s' as a boolean (draft 4) is not supported; give a number",
                         keys[i]);
        if (!json_is_number(v))
            return gfail(g, path, "'%s' must be a number", keys[i]);
        double x = json_number_value(v);
        if (fabs(x) > (double)BOUND_MAX)
            return gfail(g, path, "'%s' beyond +-%lld is not supported", keys[i], BOUND_MAX);
        if (i < 2) {
            x = integer ? ceil(x) : x;
            if (!*has_lo || x > *lo || (x == *lo && i == 1))
                *lo = x, *lo_ex = i == 1;
            *has_lo = true;
        } else {
            x = integer ? floor(x) : x;
            if (!*has_hi || x < *hi || (x == *hi && i == 3))
                *hi = x, *hi_ex = i == 3;
            *has_hi = true;
        }
    }
    return 0;
}

static int gen_integer(struct gen *g, struct moe_sbuf *e, const json_t *s, const char *path)
{
    bool has_lo, has_hi, lo_ex, hi_ex;
    double lo, hi;
    if (bounds(g, s, path, true, &has_lo, &lo, &has_hi, &hi, &lo_ex, &hi_ex) < 0)
        return -EINVAL;
    if (!has_lo && !has_hi) {
        moe_sbuf_puts(e, "integer");
        return 0;
    }
    int64_t a = (int64_t)lo + lo_ex, b = (int64_t)hi - hi_ex;
    if (has_lo && has_hi && a > b)
        return gfail(g, path, "no integer lies between minimum and maximum");
    int_range(e, has_lo, a, has_hi, b);
    return 0;
}

/* Decimals m (no sign, no exponent) with a <= m (a < m when a_ex) and
 * m <= b (m < b when b_ex; has_b false: no bound), a and b whole and >= 0,
 * appended as alternatives; *any says whether one was written before */
static void magnitude(struct moe_sbuf *o, int64_t a, bool a_ex, bool has_b, int64_t b, bool b_ex,
                      bool *any)
{
    char c[96];
    /* integer part i with a <= i (a < i) and i < b: any fraction */
    int64_t i0 = a + a_ex, i1 = has_b ? b - 1 : -1;
    if (!has_b || i0 <= i1) {
        moe_sbuf_puts(o, *any ? " | " : "");
        uint_range(o, i0, has_b ? i1 : -1);
        moe_sbuf_puts(o, " frac?");
        *any = true;
    }
    if (a_ex && (!has_b || a < b)) { /* a itself with a fraction that is not zero */
        snprintf(c, sizeof(c), "%s\"%" PRId64 "\" \".\" [0-9]{0,15} [1-9]", *any ? " | " : "", a);
        moe_sbuf_puts(o, c);
        *any = true;
    }
    if (has_b && !b_ex && (b > a || (b == a && !a_ex))) { /* b itself, fraction all zero */
        snprintf(c, sizeof(c), "%s\"%" PRId64 "\" ( \".\" \"0\"{1,16} )?", *any ? " | " : "", b);
        moe_sbuf_puts(o, c);
        *any = true;
    }
}

/* numbers with whole bounds of any sign (latitudes, scores, percentages):
 * the values at or above 0 and the negative ones (a minus sign before
 * their magnitude, which is above 0) each as magnitudes; fractional bounds
 * are refused */
static int gen_number(struct gen *g, struct moe_sbuf *e, const json_t *s, const char *path)
{
    bool has_lo, has_hi, lo_ex, hi_ex;
    double lo, hi;
    if (bounds(g, s, path, false, &has_lo, &lo, &has_hi, &hi, &lo_ex, &hi_ex) < 0)
        return -EINVAL;
    if (!has_lo && !has_hi) {
        moe_sbuf_puts(e, "number");
        return 0;
    }
    if ((has_lo && lo != floor(lo)) || (has_hi && hi != floor(hi)))
        return gfail(g, path, "bounds on a 'number' must be whole numbers (fractional ones are "
                              "not supported)");
    int64_t a = has_lo ? (int64_t)lo : 0, b = has_hi ? (int64_t)hi : 0;
    struct moe_sbuf alts = {0};
    bool any = false;
    /* 0 and above: from max(a, 0) */
    if (!has_hi || b > 0 || (b == 0 && !hi_ex)) {
        bool from_a = has_lo && a >= 0;
        magnitude(&alts, from_a ? a : 0, from_a && lo_ex, has_hi, b, hi_ex, &any);
    }
    /* below 0: magnitudes above |b| (or 0) and up to |a| */
    if (!has_lo || a < 0) {
        bool neg_any = false;
        struct moe_sbuf neg = {0};
        bool from_b = has_hi && b < 0;
        magnitude(&neg, from_b ? -b : 0, from_b ? hi_ex : true, has_lo, -a, lo_ex, &neg_any);
        if (neg_any) {
            moe_sbuf_puts(&alts, any ? " | \"-\" ( " : "\"-\" ( ");
            moe_sbuf_puts(&alts, neg.p);
            moe_sbuf_puts(&alts, " )");
            any = true;
        }
        free(neg.p);
    }
    if (!any) {
        free(alts.p);
        return gfail(g, path, "no number lies between minimum and maximum");
    }
    moe_sbuf_puts(e, "( ");
    moe_sbuf_puts(e, alts.p);
    moe_sbuf_puts(e, " )");
    free(alts.p);
    return 0;
}

/* ---- strings --------------------------------------------------------------------- */

static int gen_pattern(struct gen *g, struct moe_sbuf *e, const char *re, const char *path);

static int gen_string(struct gen *g, struct moe_sbuf *e, const json_t *s, const char *path)
{
    const json_t *fmt = json_object_get(s, "format"), *pat = json_object_get(s, "pattern");
    const json_t *mn = json_object_get(s, "minLength"), *mx = json_object_get(s, "maxLength");
    if ((mn && !json_is_integer(mn)) || (mx && !json_is_integer(mx)))
        return gfail(g, path, "minLength and maxLength must be integers");
    json_int_t lo = mn ? json_integer_value(mn) : 0, hi = mx ? json_integer_value(mx) : -1;
    if (lo < 0 || lo > 10000 || hi > 10000 || (mx && hi < lo))
        return gfail(g, path, "minLength/maxLength must be 0..10000 and in order");
    if ((fmt || pat) && (mn || mx))
        return gfail(g, path, "minLength/maxLength together with format or pattern is not "
                              "supported");
    if (fmt && pat)
        return gfail(g, path, "format together with pattern is not supported");
    struct moe_sbuf *o = e;
    if (pat) {
        if (!json_is_string(pat))
            return gfail(g, path, "'pattern' must be a string");
        return gen_pattern(g, e, json_string_value(pat), path);
    }
    if (fmt) {
        static const char *const formats[][2] = {
            {"date", "\"\\\"\" date \"\\\"\""},
            {"time", "\"\\\"\" time \"\\\"\""},
            {"date-time", "\"\\\"\" date \"T\" time \"\\\"\""},
            {"uuid", "\"\\\"\" [0-9a-f]{8} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{4} \"-\" [0-9a-f]{4} "
                     "\"-\" [0-9a-f]{12} \"\\\"\""},
        };
        const char *f = json_string_value(fmt);
        for (size_t i = 0; f && i < MOE_ARRAY_SIZE(formats); i++) {
            if (!strcmp(f, formats[i][0])) {
                moe_sbuf_puts(o, formats[i][1]);
                return 0;
            }
        }
        return gfail(g, path, "string format '%s' is not supported (date, time, date-time, uuid "
                              "are)", f ? f : "?");
    }
    char c[64];
    if (hi < 0)
        snprintf(c, sizeof(c), "\"\\\"\" char{%lld,} \"\\\"\"", (long long)lo);
    else
        snprintf(c, sizeof(c), "\"\\\"\" char{%lld,%lld} \"\\\"\"", (long long)lo, (long long)hi);
    moe_sbuf_puts(o, c);
    return 0;
}

/* ---- patterns ------------------------------------------------------------------------ */

/* A regular expression (the subset real schemas use) as a GBNF expression
 * over the string's JSON text: literals, classes, \d \w \s, ., groups,
 * alternation, quantifiers, ^ and $ at the ends. A character that JSON must
 * escape is written escaped; classes that would take " \ or a control
 * character are refused. */
struct re {
    const char *s;
    struct moe_sbuf *e;
    struct gen *g;
    const char *path;
    int depth;
};

static int re_fail(struct re *r, const char *what)
{
    return gfail(r->g, r->path, "pattern: %s (at \"%.20s\")", what, r->s);
}

static int re_alts(struct re *r);

/* one class member or escape as GBNF class text; false if JSON needs it escaped */
static bool class_char_ok(unsigned char c)
{
    return c >= 0x20 && c != '"' && c != '\\';
}

static void class_put(struct moe_sbuf *e, unsigned char c)
{
    if (c == ']' || c == '[' || c == '-' || c == '^')
        moe_sbuf_putc(e, '\\');
    moe_sbuf_putc(e, (char)c);
}

static int re_class(struct re *r)
{
    r->s++; /* [ */
    bool neg = *r->s == '^';
    r->s += neg;
    moe_sbuf_puts(r->e, neg ? "[^" : "[");
    for (bool first = true; *r->s && (*r->s != ']' || first); first = false) {
        unsigned char c = (unsigned char)*r->s++;
        if (c == '\\') {
            char x = *r->s++;
            if (x == 'd') {
                moe_sbuf_puts(r->e, "0-9");
                continue;
            }
            if (x == 'w') {
                moe_sbuf_puts(r->e, "a-zA-Z0-9_");
                continue;
            }
            if (x == 's') {
                moe_sbuf_puts(r->e, " ");
                continue;
            }
            if (!x || (x >= 'a' && x <= 'z') || (x >= 'A' && x <= 'Z') || (x >= '0' && x <= '9'))
                return re_fail(r, "this escape inside a class is not supported");
            c = (unsigned char)x;
        }
        if (c >= 0x80) { /* a UTF-8 character: copied whole */
            moe_sbuf_putc(r->e, (char)c);
            while (((unsigned char)*r->s & 0xc0) == 0x80)
                moe_sbuf_putc(r->e, *r->s++);
            continue;
        }
        if (!neg && !class_char_ok(c))
            return re_fail(r, "a class that holds \" \\ or a control character is not supported");
        class_put(r->e, c);
        if (r->s[0] == '-' && r->s[1] && r->s[1] != ']') {
            unsigned char hi = (unsigned char)r->s[1];
            r->s += 2;
            if (hi == '\\' || hi >= 0x80 || hi < c)
                return re_fail(r, "unsupported class range");
            if (!neg && ((c <= '"' && hi >= '"') || (c <= '\\' && hi >= '\\')))
                return re_fail(r, "a class that holds \" \\ or a control character is not "
                                  "supported");
            moe_sbuf_putc(r->e, '-');
            class_put(r->e, hi);
        }
    }
    if (*r->s != ']')
        return re_fail(r, "unterminated class");
    r->s++;
    if (neg)
        moe_sbuf_puts(r->e, "\"\\\\\\x00-\\x1f");
    moe_sbuf_puts(r->e, "] ");
    return 0;
}

static int re_atom(struct re *r)
{
    char c = *r->s;
    if (c == '(') {
        r->s++;
        if (r->s[0] == '?' && r->s[1] == ':')
            r->s += 2;
        else if (r->s[0] == '?')
            return re_fail(r, "lookaround and named groups are not supported");
        if (++r->depth > DEPTH_MAX)
            return re_fail(r, "nested too deep");
        moe_sbuf_puts(r->e, "( ");
        if (re_alts(r) < 0)
            return -EINVAL;
        r->depth--;
        if (*r->s != ')')
            return re_fail(r, "missing )");
        r->s++;
        moe_sbuf_puts(r->e, ") ");
        return 0;
    }
    if (c == '[')
        return re_class(r);
    if (c == '.') {
        r->s++;
        moe_sbuf_puts(r->e, "pchar ");
        return 0;
    }
    if (c == '^' || c == '$')
        return re_fail(r, "^ and $ are supported only at the ends");
    if (c == '\\') {
        char x = r->s[1];
        r->s += 2;
        static const char *const esc[][2] = {
            {"d", "[0-9] "}, {"w", "[a-zA-Z0-9_] "}, {"s", "\" \" "},
            {"D", "[^0-9\"\\\\\\x00-\\x1f] "}, {"W", "[^a-zA-Z0-9_\"\\\\\\x00-\\x1f] "},
            {"S", "[^ \"\\\\\\x00-\\x1f] "},
        };
        for (size_t i = 0; i < MOE_ARRAY_SIZE(esc); i++) {
            if (x == esc[i][0][0]) {
                moe_sbuf_puts(r->e, esc[i][1]);
                return 0;
            }
        }
        if (!x || (x >= 'a' && x <= 'z') || (x >= 'A' && x <= 'Z') || (x >= '0' && x <= '9'))
            return re_fail(r, "this escape is not supported");
        c = x;
        r->s--; /* the literal below takes it */
    }
    /* a literal character (UTF-8 whole), JSON-escaped where it must be */
    const char *p = r->s;
    size_t n = 1;
    while (((unsigned char)p[n] & 0xc0) == 0x80)
        n++;
    r->s += n;
    if (c == '"')
        moe_sbuf_puts(r->e, "\"\\\\\\\"\" ");
    else if (c == '\\')
        moe_sbuf_puts(r->e, "\"\\\\\\\\\" ");
    else if ((unsigned char)c < 0x20)
        return re_fail(r, "a control character must be written escaped in JSON; not supported");
    else {
        put_lit(r->e, p, n);
        moe_sbuf_putc(r->e, ' ');
    }
    return 0;
}

static int re_seq(struct re *r)
{
    while (*r->s && *r->s != '|' && *r->s != ')' && !(r->s[0] == '$' && !r->s[1])) {
        if (re_atom(r) < 0)
            return -EINVAL;
        char q = *r->s;
        if ((q == '*' || q == '+' || q == '?' || q == '{') && r->e->len &&
            r->e->p[r->e->len - 1] == ' ')
            r->e->p[--r->e->len] = 0; /* GBNF: the quantifier right after its item */
        if (q == '*' || q == '+' || q == '?') {
            moe_sbuf_putc(r->e, q);
            r->s++;
        } else if (q == '{') {
            const char *end = strchr(r->s, '}');
            if (!end || end - r->s > 24)
                return re_fail(r, "bad {m,n}");
            moe_sbuf_put(r->e, r->s, (size_t)(end - r->s + 1));
            r->s = end + 1;
        } else {
            continue;
        }
        moe_sbuf_putc(r->e, ' ');
        if (*r->s == '?')
            r->s++; /* lazy: the same language */
        if (*r->s == '*' || *r->s == '+' || *r->s == '{')
            return re_fail(r, "possessive or repeated quantifiers are not supported");
    }
    return 0;
}

static int re_alts(struct re *r)
{
    for (;;) {
        if (re_seq(r) < 0)
            return -EINVAL;
        if (*r->s != '|')
            return 0;
        r->s++;
        moe_sbuf_puts(r->e, "| ");
    }
}

static int gen_pattern(struct gen *g, struct moe_sbuf *e, const char *re, const char *path)
{
    struct re r = {.s = re, .e = e, .g = g, .path = path};
    bool start = *re == '^';
    r.s += start;
    size_t n = strlen(re);
    bool end = n > (size_t)start && re[n - 1] == '$' && (n < 2 || re[n - 2] != '\\');
    moe_sbuf_puts(e, start ? "\"\\\"\" ( " : "\"\\\"\" pchar* ( "); /* unanchored: anywhere */
    if (re_alts(&r) < 0)
        return -EINVAL;
    if (*r.s == ')')
        return re_fail(&r, "unbalanced )");
    if (*r.s == '$')
        r.s++;
    if (*r.s)
        return re_fail(&r, "unexpected character");
    moe_sbuf_puts(e, end ? ") \"\\\"\"" : ") pchar* \"\\\"\"");
    return 0;
}

/* ---- objects and arrays --------------------------------------------------------------- */

static int gen_object(struct gen *g, struct moe_sbuf *e, const json_t *s, const char *path,
                      int depth)
{
    const json_t *props = json_object_get(s, "properties"), *req = json_object_get(s, "required");
    const json_t *add = json_object_get(s, "additionalProperties");
    if (props && !json_is_object(props))
        return gfail(g, path, "'properties' must be an object");
    if (req && !json_is_array(req))
        return gfail(g, path, "'required' must be an array");
    size_t n = props ? json_object_size(props) : 0;
    char (*kv)[32] = calloc(n + 1, sizeof(*kv));
    bool *must = calloc(n + 1, 1);
    const char **keys = calloc(n + 1, sizeof(char *));
    int rc = kv && must && keys ? 0 : gfail(g, path, "out of memory");
    size_t i = 0;
    const char *key;
    json_t *sub;
    /* one rule per property: "key" ws ":" ws value */
    json_object_foreach((json_t *)props, key, sub) {
        char sub_path[512], vname[32];
        if (rc)
            break;
        snprintf(sub_path, sizeof(sub_path), "%s/properties/%s", path, key);
        if ((rc = gen_node(g, sub, sub_path, depth + 1, vname, sizeof(vname))) < 0)
            break;
        new_name(g, kv[i], sizeof(kv[i]));
        struct moe_sbuf line = {0};
        json_t *k = json_string(key);
        rc = k ? put_json_lit(g, &line, k, path) : gfail(g, path, "out of memory");
        json_decref(k);
        moe_sbuf_puts(g->out, kv[i]);
        moe_sbuf_puts(g->out, " ::= ");
        moe_sbuf_puts(g->out, line.p ? line.p : "\"\"");
        moe_sbuf_puts(g->out, " ws \":\" ws ");
        moe_sbuf_puts(g->out, vname);
        moe_sbuf_putc(g->out, '\n');
        free(line.p);
        keys[i++] = key;
    }
    for (size_t r = 0; !rc && req && r < json_array_size(req); r++) {
        const char *name = json_string_value(json_array_get(req, r));
        size_t k = 0;
        while (k < n && (!name || strcmp(keys[k], name)))
            k++;
        if (k == n)
            rc = gfail(g, path, "required property '%s' is not in 'properties'", name ? name : "?");
        else
            must[k] = true;
    }
    /* additional properties: none unless asked (what is generated is valid either way) */
    char extra[32] = "";
    if (!rc && add && !json_is_false(add)) {
        char vname[32], sub_path[512];
        snprintf(sub_path, sizeof(sub_path), "%s/additionalProperties", path);
        rc = gen_node(g, json_is_true(add) ? NULL : add, sub_path, depth + 1, vname, sizeof(vname));
        if (!rc) {
            new_name(g, extra, sizeof(extra));
            moe_sbuf_puts(g->out, extra);
            moe_sbuf_puts(g->out, " ::= string ws \":\" ws ");
            moe_sbuf_puts(g->out, vname);
            moe_sbuf_putc(g->out, '\n');
        }
    }
    /* after(k): properties k.. once one has been written, each with its
     * comma; first(k): the same before any has */
    char after[32], first[32], next_after[32] = "", next_first[32] = "";
    for (size_t k = n + 1; !rc && k-- > 0;) {
        new_name(g, after, sizeof(after));
        new_name(g, first, sizeof(first));
        char line[512];
        if (k == n && extra[0])
            snprintf(line, sizeof(line), "%s ::= ( \",\" ws %s ws )*\n%s ::= ( %s ws %s )?\n",
                     after, extra, first, extra, after);
        else if (k == n)
            snprintf(line, sizeof(line), "%s ::= \"\"\n%s ::= \"\"\n", after, first);
        else if (must[k])
            snprintf(line, sizeof(line), "%s ::= \",\" ws %s ws %s\n%s ::= %s ws %s\n", after,
                     kv[k], next_after, first, kv[k], next_after);
        else
            snprintf(line, sizeof(line), "%s ::= ( \",\" ws %s ws )? %s\n%s ::= %s ws %s | %s\n",
                     after, kv[k], next_after, first, kv[k], next_after, next_first);
        moe_sbuf_puts(g->out, line);
        memcpy(next_after, after, sizeof(after));
        memcpy(next_first, first, sizeof(first));
    }
    if (!rc) {
        moe_sbuf_puts(e, "\"{\" ws ");
        moe_sbuf_puts(e, next_first);
        moe_sbuf_puts(e, " \"}\"");
    }
    free(kv), free(must), free(keys);
    return rc;
}

static int gen_array(struct gen *g, struct moe_sbuf *e, const json_t *s, const char *path,
                     int depth)
{
    const json_t *items = json_object_get(s, "items"), *prefix = json_object_get(s, "prefixItems");
    const json_t *mn = json_object_get(s, "minItems"), *mx = json_object_get(s, "maxItems");
    const json_t *uniq = json_object_get(s, "uniqueItems");
    if (uniq && !json_is_false(uniq))
        return gfail(g, path, "'uniqueItems' is not supported");
    if ((mn && !json_is_integer(mn)) || (mx && !json_is_integer(mx)))
        return gfail(g, path, "minItems and maxItems must be integers");
    json_int_t lo = mn ? json_integer_value(mn) : 0, hi = mx ? json_integer_value(mx) : -1;
    if (lo < 0 || lo > 1000 || hi > 1000 || (mx && hi < lo))
        return gfail(g, path, "minItems/maxItems must be 0..1000 and in order");
    char item[32] = "value", sub_path[512];
    if (prefix) {
        if (!json_is_array(prefix) || (items && !json_is_false(items)) || mn || mx)
            return gfail(g, path, "'prefixItems' is supported as a fixed tuple only (with "
                                  "\"items\": false and no minItems/maxItems)");
        moe_sbuf_puts(e, "\"[\" ws ");
        for (size_t i = 0; i < json_array_size(prefix); i++) {
            snprintf(sub_path, sizeof(sub_path), "%s/prefixItems/%zu", path, i);
            if (gen_node(g, json_array_get(prefix, i), sub_path, depth + 1, item, sizeof(item)) < 0)
                return -EINVAL;
            moe_sbuf_puts(e, i ? "\",\" ws " : "");
            moe_sbuf_puts(e, item);
            moe_sbuf_puts(e, " ws ");
        }
        moe_sbuf_puts(e, "\"]\"");
        return 0;
    }
    if (items && json_is_false(items)) {
        hi = 0;
        if (lo > 0)
            return gfail(g, path, "minItems above 0 with \"items\": false");
    } else if (items) {
        snprintf(sub_path, sizeof(sub_path), "%s/items", path);
        if (gen_node(g, items, sub_path, depth + 1, item, sizeof(item)) < 0)
            return -EINVAL;
    }
    char c[160];
    if (hi == 0) {
        moe_sbuf_puts(e, "\"[\" ws \"]\"");
        return 0;
    }
    /* first item, then ("," item) lo-1 .. hi-1 times */
    long m = lo > 0 ? (long)lo - 1 : 0;
    if (hi < 0)
        snprintf(c, sizeof(c), "%s ws ( \",\" ws %s ws ){%ld,}", item, item, m);
    else
        snprintf(c, sizeof(c), "%s ws ( \",\" ws %s ws ){%ld,%ld}", item, item, m, (long)hi - 1);
    moe_sbuf_puts(e, "\"[\" ws ");
    if (lo == 0)
        moe_sbuf_puts(e, "( ");
    moe_sbuf_puts(e, c);
    moe_sbuf_puts(e, lo == 0 ? " )? \"]\"" : " \"]\"");
    return 0;
}

/* ---- one schema ----------------------------------------------------------------------- */

/* keywords that only describe: they change nothing that is generated */
static const char *const NOTES[] = {
    "title", "description", "default", "examples", "$schema", "$id", "$comment",
    "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "contentMediaType",
    "contentEncoding", "discriminator", "strict",
};
/* keywords implemented, per the type they apply to ("" = any) */
static const char *const KNOWN[][2] = {
    {"type", ""}, {"enum", ""}, {"const", ""}, {"anyOf", ""}, {"oneOf", ""}, {"allOf", ""},
    {"$ref", ""}, {"nullable", ""},
    {"properties", "object"}, {"required", "object"}, {"additionalProperties", "object"},
    {"items", "array"}, {"prefixItems", "array"}, {"minItems", "array"}, {"maxItems", "array"},
    {"uniqueItems", "array"},
    {"minLength", "string"}, {"maxLength", "string"}, {"pattern", "string"}, {"format", "string"},
    {"minimum", "number"}, {"maximum", "number"}, {"exclusiveMinimum", "number"},
    {"exclusiveMaximum", "number"},
};

static int check_keywords(struct gen *g, const json_t *s, const char *path)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)s, key, v) {
        bool ok = false;
        for (size_t i = 0; i < MOE_ARRAY_SIZE(NOTES) && !ok; i++)
            ok = !strcmp(key, NOTES[i]);
        for (size_t i = 0; i < MOE_ARRAY_SIZE(KNOWN) && !ok; i++)
            ok = !strcmp(key, KNOWN[i][0]);
        if (!ok)
            return gfail(g, path, "keyword '%s' is not supported", key);
    }
    return 0;
}

/* the type a schema without "type" has by its keywords, or NULL (any) */
static const char *implied_type(const json_t *s)
{
    for (size_t i = 0; i < MOE_ARRAY_SIZE(KNOWN); i++)
        if (KNOWN[i][1][0] && json_object_get(s, KNOWN[i][0]))
            return KNOWN[i][1];
    return NULL;
}

static int gen_typed(struct gen *g, struct moe_sbuf *e, const json_t *s, const char *type,
                     const char *path, int depth)
{
    if (!strcmp(type, "string"))
        return gen_string(g, e, s, path);
    if (!strcmp(type, "integer"))
        return gen_integer(g, e, s, path);
    if (!strcmp(type, "number"))
        return gen_number(g, e, s, path);
    if (!strcmp(type, "object"))
        return gen_object(g, e, s, path, depth);
    if (!strcmp(type, "array"))
        return gen_array(g, e, s, path, depth);
    if (!strcmp(type, "boolean") || !strcmp(type, "null")) {
        moe_sbuf_puts(e, type);
        return 0;
    }
    return gfail(g, path, "unknown type '%s'", type);
}

static int gen_ref(struct gen *g, struct moe_sbuf *e, const char *ref, const char *path,
                   int depth)
{
    const json_t *done = json_object_get(g->defs_done, ref);
    if (done) {
        moe_sbuf_puts(e, json_string_value(done));
        return 0;
    }
    const json_t *target = NULL;
    if (!strcmp(ref, "#")) {
        target = g->root;
    } else if (!strncmp(ref, "#/$defs/", 8)) {
        target = json_object_get(json_object_get(g->root, "$defs"), ref + 8);
    } else if (!strncmp(ref, "#/definitions/", 14)) {
        target = json_object_get(json_object_get(g->root, "definitions"), ref + 14);
    } else {
        return gfail(g, path, "$ref '%s': only local references (#, #/$defs/..., "
                              "#/definitions/...) are supported", ref);
    }
    if (!target)
        return gfail(g, path, "$ref '%s' names no definition", ref);
    /* named before generating, so that a recursive schema refers to itself */
    char name[32];
    new_name(g, name, sizeof(name));
    json_object_set_new(g->defs_done, ref, json_string(name));
    char body[32];
    if (gen_node(g, target, ref, depth + 1, body, sizeof(body)) < 0)
        return -EINVAL;
    moe_sbuf_puts(g->out, name);
    moe_sbuf_puts(g->out, " ::= ");
    moe_sbuf_puts(g->out, body);
    moe_sbuf_putc(g->out, '\n');
    moe_sbuf_puts(e, name);
    return 0;
}

/* the expression for s into e */
static int gen_expr(struct gen *g, struct moe_sbuf *e, const json_t *s, const char *path,
                    int depth)
{
    if (depth > DEPTH_MAX)
        return gfail(g, path, "nested deeper than %d", DEPTH_MAX);
    if (!s || json_is_true(s)) {
        moe_sbuf_puts(e, "value");
        return 0;
    }
    if (json_is_false(s))
        return gfail(g, path, "the schema false allows no value");
    if (!json_is_object(s))
        return gfail(g, path, "a schema must be an object or a boolean");
    if (check_keywords(g, s, path) < 0)
        return -EINVAL;
    const json_t *v;
    if ((v = json_object_get(s, "nullable")) && json_is_true(v)) {
        json_t *copy = json_copy((json_t *)s);
        if (!copy)
            return gfail(g, path, "out of memory");
        json_object_del(copy, "nullable");
        moe_sbuf_puts(e, "( null | ");
        int rc = gen_expr(g, e, copy, path, depth + 1);
        json_decref(copy);
        moe_sbuf_puts(e, " )");
        return rc;
    }
    if ((v = json_object_get(s, "$ref"))) {
        if (!json_is_string(v))
            return gfail(g, path, "$ref must be a string");
        const char *key;
        json_t *x;
        json_object_foreach((json_t *)s, key, x) {
            bool note = !strcmp(key, "$ref");
            for (size_t i = 0; i < MOE_ARRAY_SIZE(NOTES) && !note; i++)
                note = !strcmp(key, NOTES[i]);
            if (!note)
                return gfail(g, path, "'%s' beside $ref is not supported", key);
        }
        return gen_ref(g, e, json_string_value(v), path, depth);
    }
    if ((v = json_object_get(s, "const")))
        return put_json_lit(g, e, v, path);
    if ((v = json_object_get(s, "enum"))) {
        if (!json_is_array(v) || !json_array_size(v))
            return gfail(g, path, "'enum' must be a non-empty array");
        moe_sbuf_puts(e, "( ");
        for (size_t i = 0; i < json_array_size(v); i++) {
            moe_sbuf_puts(e, i ? " | " : "");
            if (put_json_lit(g, e, json_array_get(v, i), path) < 0)
                return -EINVAL;
        }
        moe_sbuf_puts(e, " )");
        return 0;
    }
    static const char *const unions[] = {"anyOf", "oneOf", "allOf"};
    for (int u = 0; u < 3; u++) {
        if (!(v = json_object_get(s, unions[u])))
            continue;
        if (!json_is_array(v) || !json_array_size(v))
            return gfail(g, path, "'%s' must be a non-empty array", unions[u]);
        if (u == 2 && json_array_size(v) > 1)
            return gfail(g, path, "'allOf' with more than one schema is not supported");
        if (json_object_get(s, "type") || implied_type(s))
            return gfail(g, path, "'%s' beside type keywords is not supported; move them into "
                                  "its branches", unions[u]);
        moe_sbuf_puts(e, "( ");
        for (size_t i = 0; i < json_array_size(v); i++) {
            char sub_path[512], name[32];
            snprintf(sub_path, sizeof(sub_path), "%s/%s/%zu", path, unions[u], i);
            if (gen_node(g, json_array_get(v, i), sub_path, depth + 1, name, sizeof(name)) < 0)
                return -EINVAL;
            moe_sbuf_puts(e, i ? " | " : "");
            moe_sbuf_puts(e, name);
        }
        moe_sbuf_puts(e, " )");
        return 0;
    }
    const json_t *type = json_object_get(s, "type");
    if (json_is_array(type)) {
        moe_sbuf_puts(e, "( ");
        for (size_t i = 0; i < json_array_size(type); i++) {
            const char *t = json_string_value(json_array_get(type, i));
            if (!t)
                return gfail(g, path, "'type' entries must be strings");
            moe_sbuf_puts(e, i ? " | " : "");
            if (gen_typed(g, e, s, t, path, depth) < 0)
                return -EINVAL;
        }
        moe_sbuf_puts(e, " )");
        return 0;
    }
    if (type && !json_is_string(type))
        return gfail(g, path, "'type' must be a string or an array of strings");
    const char *t = type ? json_string_value(type) : implied_type(s);
    if (!t) {
        moe_sbuf_puts(e, "value");
        return 0;
    }
    /* keywords of another type are an error: the user meant something else */
    for (size_t i = 0; i < MOE_ARRAY_SIZE(KNOWN); i++) {
        const char *kt = KNOWN[i][1];
        bool fits = !kt[0] || !strcmp(kt, t) || (!strcmp(kt, "number") && !strcmp(t, "integer"));
        if (!fits && json_object_get(s, KNOWN[i][0]))
            return gfail(g, path, "keyword '%s' does not apply to type '%s'", KNOWN[i][0], t);
    }
    return gen_typed(g, e, s, t, path, depth);
}

static int gen_node(struct gen *g, const json_t *s, const char *path, int depth, char *name,
                    size_t cap)
{
    struct moe_sbuf e = {0};
    int rc = gen_expr(g, &e, s, path, depth);
    if (!rc && e.oom)
        rc = gfail(g, path, "out of memory");
    if (!rc) {
        new_name(g, name, cap);
        moe_sbuf_puts(g->out, name);
        moe_sbuf_puts(g->out, " ::= ");
        moe_sbuf_puts(g->out, e.p);
        moe_sbuf_putc(g->out, '\n');
    }
    free(e.p);
    return rc;
}

int moe_schema_rules(const struct json_t *schema, const char *tag, struct moe_sbuf *out,
                     char *name, size_t cap)
{
    struct gen g = {.out = out, .tag = tag, .root = schema, .defs_done = json_object()};
    int rc = g.defs_done ? gen_node(&g, schema, "#", 0, name, cap) : -ENOMEM;
    json_decref(g.defs_done);
    if (!rc && out->oom)
        rc = -ENOMEM;
    return rc == -ENOMEM ? moe_err(rc, "schema: out of memory")
           : rc          ? moe_err(rc, "%s", g.err) : 0;
}

int moe_schema_to_gbnf(const struct json_t *schema, const char *prefix, const char *suffix,
                       char **out)
{
    *out = NULL;
    struct moe_sbuf rules = {0}, b = {0};
    char name[32];
    int rc = moe_schema_rules(schema, "s", &rules, name, sizeof(name));
    if (rc) {
        free(rules.p);
        return rc;
    }
    moe_sbuf_puts(&b, "root ::= ");
    moe_sbuf_puts(&b, prefix ? prefix : "ws ");
    moe_sbuf_puts(&b, name);
    moe_sbuf_puts(&b, suffix ? suffix : "");
    moe_sbuf_putc(&b, '\n');
    moe_sbuf_puts(&b, rules.p);
    moe_sbuf_puts(&b, JSON_RULES);
    free(rules.p);
    if (b.oom) {
        free(b.p);
        return moe_err(-ENOMEM, "schema: out of memory");
    }
    *out = b.p;
    return 0;
}

int moe_gbnf_with_json(const char *rules, char **out)
{
    struct moe_sbuf b = {0};
    moe_sbuf_puts(&b, rules);
    moe_sbuf_puts(&b, JSON_RULES);
    if (b.oom) {
        free(b.p);
        return moe_err(-ENOMEM, "grammar: out of memory");
    }
    *out = b.p;
    return 0;
}
