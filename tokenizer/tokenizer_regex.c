/* Hugging Face tokenizers compiles its regexes with Oniguruma (Ruby syntax,
 * UTF-8, Unicode 16 in tokenizers 0.23); moed runs them with PCRE2 (UTF +
 * UCP; Debian 12's 10.42 has Unicode 14). Where the two read the same pattern
 * differently, the pattern is rewritten so that PCRE2 matches what Oniguruma
 * matches:
 *   \p{X} \P{X}  PCRE2's property plus the code points Unicode 15-16 added
 *                (tokenizer_unicode.h); scripts as Script, not
 *                Script_Extensions (PCRE2's \p{Han} takes "、" too)
 *   \s \S        White_Space (U+0085 in, U+180E out: PCRE2's \s differs)
 *   \w \W \b \B  Oniguruma's Word set (which outside a class also takes
 *                ²³¹¼½¾)
 *   \d \D        \p{Nd}
 *   \h \H        a hex digit (PCRE2: horizontal space)
 *   \v           the VT character (PCRE2: vertical space)
 *   \uHHHH       \x{HHHH}
 *   $ ^          end / start of a line (Ruby), not of the subject
 *   (?m)         dot matches newline (Ruby's m is PCRE2's s)
 *   {,n}         {0,n}
 *   [a&&[^b]]    set intersection; [a[b]] nested classes (PCRE2 10.42 has neither)
 * Constructs without a known equivalent (POSIX brackets, the absent
 * operator, subexpression calls, {n,m}+, properties outside the table,
 * non-ASCII, \w or \p or multi-character case folds under (?i)) are refused by name: a
 * pattern runs exactly or not at all. tests/unit/test_tokenizer_regex.c
 * compares the classes with Oniguruma's code point by code point. */
#include "tokenizer/tokenizer_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

#include "tokenizer/tokenizer_unicode.h" /* moe_tok_uprops[] */

/* Oniguruma's \s: the White_Space property (no code point added since 14) */
static const struct moe_tok_uprop space_set = {
    "White_Space",
    "\\t\\n\\x{0b}\\f\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}"
    "\\x{202f}\\x{205f}\\x{3000}", "", ""
};
static const struct moe_tok_uprop hex_set = { "XDigit", "0-9a-fA-F", "", "" };

#define MAX_DEPTH 64

struct rx {
    const char *start, *p, *end;
    struct moe_sbuf out;
    const char *err; /* what was refused (static text) */
    const char *err_at;
    int depth;
    int class_depth;       /* [ inside [: bounded like groups (each level recurses) */
    bool icase[MAX_DEPTH]; /* (?i) in force, per group level */
    int prev_lit;          /* the last literal, lower-cased ASCII, under (?i); 0 if none */
};

static int fail(struct rx *r, const char *at, const char *why)
{
    if (!r->err) {
        r->err = why;
        r->err_at = at;
    }
    return -1;
}

static bool icase(const struct rx *r)
{
    return r->icase[r->depth];
}

/* Oniguruma folds "ss" to "ß", "ff" to "ﬀ", ... under (?i); PCRE2 folds one
 * character at a time. A literal pair that is such a fold is refused. */
static int check_fold(struct rx *r, const char *at, int c)
{
    if (!icase(r)) {
        r->prev_lit = 0;
        return 0;
    }
    if (c >= 'A' && c <= 'Z')
        c += 'a' - 'A';
    static const char *const folds[] = { "ss", "st", "ff", "fi", "fl" };
    for (size_t i = 0; r->prev_lit && i < MOE_ARRAY_SIZE(folds); i++)
        if (folds[i][0] == r->prev_lit && folds[i][1] == c)
            return fail(r, at, "a multi-character case fold under (?i)");
    r->prev_lit = c;
    return 0;
}

/* One UTF-8 character at r->p, copied (escaped when PCRE2 would read it as
 * syntax: in_class for a class body). */
static int copy_char(struct rx *r, struct moe_sbuf *b, bool in_class)
{
    size_t l = moe_utf8_len((const uint8_t *)r->p, (size_t)(r->end - r->p));
    if (l == 0)
        return fail(r, r->p, "invalid UTF-8");
    if (l > 1 && icase(r))
        return fail(r, r->p, "a non-ASCII literal under (?i)");
    char c = r->p[0];
    if (l == 1 && in_class && strchr("\\]^[-", c))
        moe_sbuf_put(b, "\\", 1);
    moe_sbuf_put(b, r->p, l);
    r->p += l;
    return 0;
}

/* \x.. \x{..} \u.... \0.. (r->p at the letter after the backslash): copied
 * as one PCRE2 character escape. */
static int copy_code_escape(struct rx *r, struct moe_sbuf *b)
{
    const char *bs = r->p - 1;
    char c = *r->p++;
    if (c == 'u') {
        char hex[5] = { 0 };
        for (int i = 0; i < 4; i++) {
            if (r->p >= r->end || !strchr("0123456789abcdefABCDEF", *r->p))
                return fail(r, bs, "\\u needs four hex digits");
            hex[i] = *r->p++;
        }
        moe_sbuf_puts(b, "\\x{");
        moe_sbuf_puts(b, hex);
        moe_sbuf_puts(b, "}");
        return 0;
    }
    if (c == 'x' && r->p < r->end && *r->p == '{') {
        const char *close = memchr(r->p, '}', (size_t)(r->end - r->p));
        if (!close)
            return fail(r, bs, "\\x{ without }");
        r->p = close + 1;
    } else if (c == 'x') {
        for (int i = 0; i < 2 && r->p < r->end && strchr("0123456789abcdefABCDEF", *r->p); i++)
            r->p++;
    } else { /* octal */
        for (int i = 0; i < 2 && r->p < r->end && *r->p >= '0' && *r->p <= '7'; i++)
            r->p++;
    }
    moe_sbuf_put(b, bs, (size_t)(r->p - bs));
    return 0;
}

/* ---- sets of characters ------------------------------------------------------------
 * A class is an intersection (&&) of operands; an operand is a union of a
 * plain PCRE2 class body and single-character expressions (what a plain body
 * cannot hold: complements such as \S, sets less some code points, nested
 * negated classes). */
struct operand {
    struct moe_sbuf body, alts;
    int n_alts;
};

static void operand_free(struct operand *o)
{
    free(o->body.p);
    free(o->alts.p);
}

static void add_alt(struct operand *o, const char *expr, size_t n)
{
    if (o->n_alts++)
        moe_sbuf_put(&o->alts, "|", 1);
    moe_sbuf_put(&o->alts, expr, n);
}

/* A property (or its complement) into an operand. */
static void add_set(struct operand *o, const struct moe_tok_uprop *u, bool neg)
{
    if (!neg && !u->removes[0]) {
        moe_sbuf_puts(&o->body, u->pcre);
        moe_sbuf_puts(&o->body, u->adds);
        return;
    }
    struct moe_sbuf e = { 0 };
    if (neg && u->removes[0]) { /* the removed ones, or anything outside the set */
        moe_sbuf_puts(&e, "(?:[");
        moe_sbuf_puts(&e, u->removes);
        moe_sbuf_puts(&e, "]|");
    } else if (!neg) {
        moe_sbuf_puts(&e, "(?:(?![");
        moe_sbuf_puts(&e, u->removes);
        moe_sbuf_puts(&e, "])");
    }
    moe_sbuf_puts(&e, neg ? "[^" : "[");
    moe_sbuf_puts(&e, u->pcre);
    moe_sbuf_puts(&e, u->adds);
    moe_sbuf_puts(&e, "]");
    if (u->removes[0])
        moe_sbuf_puts(&e, ")");
    if (e.oom)
        o->body.oom = true;
    else
        add_alt(o, e.p, e.len);
    free(e.p);
}

/* Oniguruma compares property names ignoring case, spaces, '_' and '-'. */
static bool loose_eq(const char *a, const char *b, size_t bn)
{
    size_t j = 0;
    for (; *a; a++) {
        while (j < bn && strchr(" _-", b[j]))
            j++;
        char x = *a, y = j < bn ? b[j] : 0;
        if (x >= 'A' && x <= 'Z')
            x += 'a' - 'A';
        if (y >= 'A' && y <= 'Z')
            y += 'a' - 'A';
        if (x != y)
            return false;
        j++;
    }
    while (j < bn && strchr(" _-", b[j]))
        j++;
    return j == bn;
}

static const struct moe_tok_uprop *find_set(const char *name, size_t n)
{
    for (size_t i = 0; i < MOE_ARRAY_SIZE(moe_tok_uprops); i++)
        if (loose_eq(moe_tok_uprops[i].name, name, n))
            return &moe_tok_uprops[i];
    return NULL;
}

/* \p{Name} \p{^Name} \P{Name} \pL (r->p at the p after the backslash). */
static int property(struct rx *r, struct operand *o)
{
    const char *bs = r->p - 1;
    bool neg = *r->p++ == 'P';
    const char *name = r->p;
    size_t n = 1;
    if (r->p < r->end && *r->p == '{') {
        const char *close = memchr(r->p, '}', (size_t)(r->end - r->p));
        if (!close)
            return fail(r, bs, "\\p{ without }");
        name = r->p + 1;
        n = (size_t)(close - name);
        r->p = close + 1;
        if (n && *name == '^') {
            neg = !neg;
            name++;
            n--;
        }
    } else if (r->p < r->end) {
        r->p++;
    } else {
        return fail(r, bs, "\\p at the end");
    }
    if (icase(r))
        return fail(r, bs, "a Unicode property under (?i)");
    const struct moe_tok_uprop *u = find_set(name, n);
    if (!u)
        return fail(r, bs, "a Unicode property moed has no table for "
                    "(tokenizer/tokenizer_unicode.h)");
    add_set(o, u, neg);
    return 0;
}

/* The operand as one single-character expression. */
static int operand_expr(struct rx *r, const struct operand *o, struct moe_sbuf *e)
{
    int parts = (o->body.len > 0) + o->n_alts;
    if (parts == 0)
        return fail(r, r->p, "an empty character class");
    if (parts > 1)
        moe_sbuf_puts(e, "(?:");
    if (o->body.len) {
        moe_sbuf_puts(e, "[");
        moe_sbuf_put(e, o->body.p, o->body.len);
        moe_sbuf_puts(e, "]");
        if (o->n_alts)
            moe_sbuf_puts(e, "|");
    }
    if (o->n_alts)
        moe_sbuf_put(e, o->alts.p, o->alts.len);
    if (parts > 1)
        moe_sbuf_puts(e, ")");
    if (o->body.oom || o->alts.oom)
        e->oom = true;
    return 0;
}

/* A class: the intersection of ops[0..n), complemented when neg, as one
 * single-character expression into e. */
static int emit_class(struct rx *r, struct operand *ops, int n_ops, bool neg, struct moe_sbuf *e)
{
    int rc = 0;
    if (n_ops == 1 && ops[0].n_alts == 0) {
        if (ops[0].body.len == 0)
            return fail(r, r->p, "an empty character class");
        moe_sbuf_puts(e, neg ? "[^" : "[");
        moe_sbuf_put(e, ops[0].body.p, ops[0].body.len);
        moe_sbuf_puts(e, "]");
        return 0;
    }
    /* (?=A)(?=B)C: a character in A, B and C; (?!X)(?s:.): one not in X */
    if (neg)
        moe_sbuf_puts(e, "(?:(?!");
    if (n_ops > 1)
        moe_sbuf_puts(e, "(?:");
    for (int i = 0; i < n_ops && !rc; i++) {
        if (i + 1 < n_ops)
            moe_sbuf_puts(e, "(?=");
        rc = operand_expr(r, &ops[i], e);
        if (i + 1 < n_ops)
            moe_sbuf_puts(e, ")");
    }
    if (n_ops > 1)
        moe_sbuf_puts(e, ")");
    if (neg)
        moe_sbuf_puts(e, ")(?s:.))");
    return rc;
}

/* The escapes that stand for a set, in and out of classes. */
static const struct {
    char c;
    bool neg;
    const char *set; /* a moe_tok_uprops name; NULL: space_set / hex_set */
    bool icase_ok;   /* unaffected by (?i) */
} set_escapes[] = {
    { 's', false, NULL, true }, { 'S', true, NULL, true },
    { 'h', false, NULL, true }, { 'H', true, NULL, true },
    { 'w', false, "\\w", false }, { 'W', true, "\\w", false }, /* "Word" in a class */
    { 'd', false, "Nd", true }, { 'D', true, "Nd", true },
};

/* r->p at the letter after a backslash: 1 and the set added to o when it is
 * one of set_escapes, 0 when not, -1 on error. */
static int set_escape(struct rx *r, struct operand *o, bool in_class)
{
    char c = *r->p;
    for (size_t i = 0; i < MOE_ARRAY_SIZE(set_escapes); i++) {
        if (set_escapes[i].c != c)
            continue;
        if (!set_escapes[i].icase_ok && icase(r))
            return fail(r, r->p - 1, "\\w or \\W under (?i)");
        /* Oniguruma's \w takes U+00B2 ... U+00BE outside a class only */
        const char *name = set_escapes[i].set && in_class && (c == 'w' || c == 'W')
                               ? "Word" : set_escapes[i].set;
        const struct moe_tok_uprop *u = name ? find_set(name, strlen(name))
                                        : c == 's' || c == 'S' ? &space_set : &hex_set;
        r->p++;
        add_set(o, u, set_escapes[i].neg);
        return 1;
    }
    return 0;
}

static int parse_class(struct rx *r, struct moe_sbuf *expr, bool *simple, struct moe_sbuf *simple_body);

/* One escape inside a class (r->p after the backslash). */
static int class_escape(struct rx *r, struct operand *o, bool *prev_char)
{
    if (r->p >= r->end)
        return fail(r, r->p - 1, "a backslash at the end");
    const char *bs = r->p - 1;
    int rc = set_escape(r, o, true);
    if (rc) {
        *prev_char = false;
        return rc < 0 ? rc : 0;
    }
    char c = *r->p;
    *prev_char = true;
    switch (c) {
    case 'p':
    case 'P':
        *prev_char = false;
        return property(r, o);
    case 'x':
    case 'u':
    case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7':
        return copy_code_escape(r, &o->body);
    case 'v':
        r->p++;
        moe_sbuf_puts(&o->body, "\\x{0b}");
        return 0;
    case 'b':
        r->p++;
        moe_sbuf_puts(&o->body, "\\x{08}");
        return 0;
    case 't': case 'n': case 'r': case 'f': case 'a': case 'e':
        moe_sbuf_put(&o->body, bs, 2);
        r->p++;
        return 0;
    default:
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
            return fail(r, bs, "an unknown escape in a character class");
        return copy_char(r, &o->body, true);
    }
}

/* r->p at '['. expr gets the class as one single-character expression; when
 * it is a plain positive class, *simple is set and simple_body holds its
 * body (so an enclosing class can take it in whole). */
static int parse_class(struct rx *r, struct moe_sbuf *expr, bool *simple, struct moe_sbuf *simple_body)
{
    const char *open = r->p++;
    struct operand ops[8];
    int n_ops = 1, rc = 0;
    bool neg = false, first = true, prev_char = false, after_dash = false;
    memset(ops, 0, sizeof(ops));
    *simple = false; /* under (?i) only ASCII and case-free sets get here (both fold alike) */
    if (r->p < r->end && *r->p == '^') {
        neg = true;
        r->p++;
    }
    for (;;) {
        struct operand *o = &ops[n_ops - 1];
        if (r->p >= r->end) {
            rc = fail(r, open, "an unterminated [");
            goto out;
        }
        char c = *r->p;
        if (c == ']' && !first) {
            r->p++;
            break;
        }
        first = false;
        bool was_dash = after_dash;
        after_dash = false;
        if (c == '&' && r->p + 1 < r->end && r->p[1] == '&') {
            if (n_ops == (int)MOE_ARRAY_SIZE(ops)) {
                rc = fail(r, r->p, "too many && in one class");
                goto out;
            }
            r->p += 2;
            n_ops++;
            prev_char = false;
            continue;
        }
        if (c == '[') {
            if (r->p + 1 < r->end && r->p[1] == ':') {
                rc = fail(r, r->p, "a POSIX bracket expression");
                goto out;
            }
            if (r->class_depth + 1 >= MAX_DEPTH) {
                rc = fail(r, r->p, "classes nested too deep");
                goto out;
            }
            struct moe_sbuf sub = { 0 }, sub_body = { 0 };
            bool sub_simple;
            r->class_depth++;
            rc = parse_class(r, &sub, &sub_simple, &sub_body);
            r->class_depth--;
            if (rc == 0 && sub_simple)
                moe_sbuf_put(&o->body, sub_body.p, sub_body.len);
            else if (rc == 0)
                add_alt(o, sub.p, sub.len);
            free(sub.p);
            free(sub_body.p);
            if (rc)
                goto out;
            prev_char = false;
            continue;
        }
        if (c == '\\') {
            r->p++;
            if ((rc = class_escape(r, o, &prev_char)))
                goto out;
            if (was_dash)
                prev_char = false;
            continue;
        }
        if (c == '-') {
            r->p++;
            bool range = prev_char && r->p < r->end && *r->p != ']' && *r->p != '[' &&
                         !(*r->p == '&' && r->p + 1 < r->end && r->p[1] == '&');
            moe_sbuf_puts(&o->body, range ? "-" : "\\-");
            after_dash = range;
            prev_char = false;
            continue;
        }
        if ((rc = copy_char(r, &o->body, true)))
            goto out;
        prev_char = !was_dash;
    }
    *simple = !neg && n_ops == 1 && ops[0].n_alts == 0 && ops[0].body.len > 0;
    if (*simple)
        moe_sbuf_put(simple_body, ops[0].body.p, ops[0].body.len);
    rc = emit_class(r, ops, n_ops, neg, expr);
out:
    for (int i = 0; i < n_ops; i++) {
        if (ops[i].body.oom || ops[i].alts.oom)
            expr->oom = true;
        operand_free(&ops[i]);
    }
    return rc;
}

/* ---- outside classes ------------------------------------------------------------ */
/* A set outside a class: as a one-item class. */
static int put_set_item(struct rx *r, struct operand *o)
{
    int rc = emit_class(r, o, 1, false, &r->out);
    if (o->body.oom || o->alts.oom)
        r->out.oom = true;
    operand_free(o);
    return rc;
}

/* \b \B by Oniguruma's Word set */
static int boundary(struct rx *r, bool at)
{
    const struct moe_tok_uprop *w = find_set("\\w", 2);
    struct moe_sbuf cls = { 0 };
    moe_sbuf_puts(&cls, "[");
    moe_sbuf_puts(&cls, w->pcre);
    moe_sbuf_puts(&cls, w->adds);
    moe_sbuf_puts(&cls, "]");
    /* at a boundary: a word character on exactly one side */
    const char *fmt = at ? "(?:(?<=%s)(?!%s)|(?<!%s)(?=%s))" : "(?:(?<=%s)(?=%s)|(?<!%s)(?!%s))";
    for (const char *f = fmt; *f && !cls.oom; f++) {
        if (f[0] == '%' && f[1] == 's') {
            moe_sbuf_put(&r->out, cls.p, cls.len);
            f++;
        } else {
            moe_sbuf_put(&r->out, f, 1);
        }
    }
    if (cls.oom)
        r->out.oom = true;
    free(cls.p);
    return 0;
}

static int escape(struct rx *r)
{
    const char *bs = r->p++;
    if (r->p >= r->end)
        return fail(r, bs, "a backslash at the end");
    char c = *r->p;
    struct operand o = { 0 };
    r->prev_lit = 0;
    int rc = set_escape(r, &o, false);
    if (rc) {
        if (rc > 0)
            return put_set_item(r, &o);
        operand_free(&o);
        return rc;
    }
    switch (c) {
    case 'p':
    case 'P':
        if ((rc = property(r, &o))) {
            operand_free(&o);
            return rc;
        }
        return put_set_item(r, &o);
    case 'b':
    case 'B':
        if (icase(r))
            return fail(r, bs, "\\b or \\B under (?i)");
        r->p++;
        return boundary(r, c == 'b');
    case 'v':
        r->p++;
        moe_sbuf_puts(&r->out, "\\x{0b}");
        return 0;
    case 'O':
        r->p++;
        moe_sbuf_puts(&r->out, "(?s:.)");
        return 0;
    case 'x':
    case 'u':
    case '0':
        return copy_code_escape(r, &r->out);
    case 'k': /* \k<name> */
        if (r->p + 1 < r->end && r->p[1] == '<') {
            const char *close = memchr(r->p, '>', (size_t)(r->end - r->p));
            if (!close)
                return fail(r, bs, "\\k< without >");
            moe_sbuf_put(&r->out, bs, (size_t)(close + 1 - bs));
            r->p = close + 1;
            return 0;
        }
        return fail(r, bs, "\\k without <name>");
    case '1': case '2': case '3': case '4': case '5': case '6': case '7': case '8': case '9':
        moe_sbuf_put(&r->out, bs, 2);
        r->p++;
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
            moe_sbuf_put(&r->out, r->p++, 1);
        return 0;
    case 'A': case 'z': case 'Z': case 'G': case 'K': case 'R': case 'N':
    case 't': case 'n': case 'r': case 'f': case 'a': case 'e':
        moe_sbuf_put(&r->out, bs, 2);
        r->p++;
        return 0;
    default:
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
            return fail(r, bs, "an escape with no PCRE2 equivalent");
        if ((rc = check_fold(r, bs, c)))
            return rc;
        moe_sbuf_put(&r->out, "\\", 1);
        return copy_char(r, &r->out, false);
    }
}

/* "(?" forms; r->p at '('. */
static int group(struct rx *r)
{
    const char *at = r->p;
    if (r->depth + 1 >= MAX_DEPTH)
        return fail(r, at, "groups nested too deep");
    bool inherit = icase(r);
    r->prev_lit = 0;
    if (r->p + 1 >= r->end || r->p[1] != '?') {
        r->p++;
        moe_sbuf_puts(&r->out, "(");
        r->icase[++r->depth] = inherit;
        return 0;
    }
    const char *q = r->p + 2;
    char c = q < r->end ? *q : 0;
    if (c == ':' || c == '=' || c == '!' || c == '>' ||
        (c == '<' && q + 1 < r->end && (q[1] == '=' || q[1] == '!'))) {
        size_t n = c == '<' ? 4 : 3;
        moe_sbuf_put(&r->out, r->p, n);
        r->p += n;
        r->icase[++r->depth] = inherit;
        return 0;
    }
    if (c == '<' || c == '\'') { /* a named group */
        char close = c == '<' ? '>' : '\'';
        const char *e = memchr(q + 1, close, (size_t)(r->end - q - 1));
        if (!e)
            return fail(r, at, "an unterminated group name");
        moe_sbuf_puts(&r->out, "(?<");
        moe_sbuf_put(&r->out, q + 1, (size_t)(e - q - 1));
        moe_sbuf_puts(&r->out, ">");
        r->p = e + 1;
        r->icase[++r->depth] = inherit;
        return 0;
    }
    if (c == '#') {
        const char *e = memchr(q, ')', (size_t)(r->end - q));
        if (!e)
            return fail(r, at, "an unterminated (?# comment");
        r->p = e + 1;
        return 0;
    }
    /* inline options: (?imx-imx) or (?imx-imx:...) */
    bool on = true, ci = inherit;
    struct moe_sbuf opts = { 0 };
    for (; q < r->end && *q != ')' && *q != ':'; q++) {
        switch (*q) {
        case '-': on = false; moe_sbuf_put(&opts, "-", 1); break;
        case 'i': ci = on; moe_sbuf_put(&opts, "i", 1); break;
        case 'x': moe_sbuf_put(&opts, "x", 1); break;
        case 'm': moe_sbuf_put(&opts, "s", 1); break; /* Ruby's m: dot matches newline */
        default:
            free(opts.p);
            return fail(r, at, "an unknown group or option");
        }
    }
    if (q >= r->end) {
        free(opts.p);
        return fail(r, at, "an unterminated group");
    }
    moe_sbuf_puts(&r->out, "(?");
    if (opts.len)
        moe_sbuf_put(&r->out, opts.p, opts.len);
    free(opts.p);
    moe_sbuf_put(&r->out, q, 1);
    r->p = q + 1;
    if (*q == ':')
        r->icase[++r->depth] = ci;
    else
        r->icase[r->depth] = ci; /* to the end of the enclosing group */
    return 0;
}

/* A quantifier {n}, {n,}, {n,m} or {,m}; r->p at '{'. Not one: a literal. */
static int interval(struct rx *r)
{
    const char *q = r->p + 1;
    const char *digits1 = q;
    while (q < r->end && *q >= '0' && *q <= '9')
        q++;
    bool has1 = q > digits1, comma = q < r->end && *q == ',', has2 = false;
    if (comma) {
        const char *d2 = ++q;
        while (q < r->end && *q >= '0' && *q <= '9')
            q++;
        has2 = q > d2;
    }
    if (q >= r->end || *q != '}' || (!has1 && !has2)) { /* not an interval: literal { */
        moe_sbuf_puts(&r->out, "\\{");
        r->p++;
        return check_fold(r, r->p - 1, '{');
    }
    if (has1) {
        moe_sbuf_put(&r->out, r->p, (size_t)(q + 1 - r->p));
    } else { /* {,m}: Oniguruma's {0,m} */
        moe_sbuf_puts(&r->out, "{0");
        moe_sbuf_put(&r->out, digits1, (size_t)(q + 1 - digits1));
    }
    r->p = q + 1;
    r->prev_lit = 0;
    if (r->p < r->end && *r->p == '+')
        return fail(r, r->p, "{n,m}+ (a repeated interval in Ruby syntax)");
    return 0;
}

int moe_tok_regex_translate(const char *src, const char *pattern, size_t len, char **out)
{
    struct rx r = { .start = pattern, .p = pattern, .end = pattern + len };
    *out = NULL;
    int rc = memchr(pattern, 0, len) ? fail(&r, memchr(pattern, 0, len), "a NUL character") : 0;
    while (r.p < r.end && rc == 0) {
        char c = *r.p;
        switch (c) {
        case '\\':
            rc = escape(&r);
            break;
        case '[': {
            bool simple;
            struct moe_sbuf body = { 0 };
            r.prev_lit = 0;
            rc = parse_class(&r, &r.out, &simple, &body);
            free(body.p);
            break;
        }
        case '(':
            rc = group(&r);
            break;
        case ')':
            if (r.depth == 0) {
                rc = fail(&r, r.p, "an unmatched )");
                break;
            }
            r.depth--;
            r.prev_lit = 0;
            moe_sbuf_puts(&r.out, ")");
            r.p++;
            break;
        case '$':
            moe_sbuf_puts(&r.out, "(?![^\\n])"); /* Ruby: the end of a line */
            r.p++;
            r.prev_lit = 0;
            break;
        case '^':
            moe_sbuf_puts(&r.out, "(?<![^\\n])");
            r.p++;
            r.prev_lit = 0;
            break;
        case '{':
            rc = interval(&r);
            break;
        case '|':
        case '.':
        case '*':
        case '+':
        case '?':
            moe_sbuf_put(&r.out, r.p++, 1);
            r.prev_lit = 0;
            break;
        default:
            rc = check_fold(&r, r.p, (unsigned char)c < 0x80 ? c : 0);
            if (rc == 0)
                rc = copy_char(&r, &r.out, false);
            break;
        }
    }
    if (rc == 0 && r.depth != 0)
        rc = fail(&r, r.end, "an unterminated (");
    if (r.out.oom) {
        free(r.out.p);
        return moe_err(-ENOMEM, "out of memory");
    }
    if (rc) {
        free(r.out.p);
        return moe_err(-EINVAL, "%s: regex \"%.*s\": %s at offset %zu (Oniguruma syntax, as "
                       "Hugging Face tokenizers reads it)", src, (int)MOE_MIN(len, 200), pattern,
                       r.err, (size_t)(r.err_at - pattern));
    }
    if (!r.out.p) {
        r.out.p = strdup("");
        if (!r.out.p)
            return moe_err(-ENOMEM, "out of memory");
    }
    *out = r.out.p;
    return 0;
}
