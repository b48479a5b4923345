/* Jinja lexer: template text -> tokens, with jinja2's whitespace rules as
 * transformers configures them (trim_blocks: the first newline after a block
 * or comment tag goes; lstrip_blocks: spaces and tabs before a block or
 * comment tag at the start of a line go; "-" strips all whitespace on its
 * side, "+" keeps it) and jinja2's newline handling (\r\n and \r read as \n,
 * one trailing newline dropped). Also the compile-time memory: an arena and
 * the interned identifiers. */
#include "engine/engine_jinja_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena and names ---------------------------------------------------------------- */

struct jchunk {
    struct jchunk *next;
    size_t size;
    _Alignas(16) unsigned char data[];
};

void *jarena_alloc(struct jarena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (!a->head || a->used + n > a->size) {
        size_t size = n > 60000 ? n : 60000;
        struct jchunk *c = malloc(sizeof(*c) + size);
        if (!c)
            return NULL;
        c->next = a->head;
        c->size = size;
        a->head = c;
        a->used = 0;
        a->size = size;
    }
    void *p = a->head->data + a->used;
    a->used += n;
    memset(p, 0, n);
    return p;
}

void jarena_free(struct jarena *a)
{
    for (struct jchunk *c = a->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    *a = (struct jarena){0};
}

/* a linear table: templates name a few hundred identifiers at most */
const char *jintern(struct moe_jinja *t, const char *p, size_t n)
{
    for (size_t i = 0; i < t->n_names; i++)
        if (!strncmp(t->names[i], p, n) && t->names[i][n] == 0)
            return t->names[i];
    if (t->n_names == t->cap_names) {
        size_t cap = t->cap_names ? t->cap_names * 2 : 64;
        const char **q = realloc(t->names, cap * sizeof(*q));
        if (!q)
            return NULL;
        t->names = q;
        t->cap_names = cap;
    }
    char *s = jarena_alloc(&t->arena, n + 1);
    if (!s)
        return NULL;
    memcpy(s, p, n);
    s[n] = 0;
    t->names[t->n_names++] = s;
    return s;
}

/* ---- the lexer ---------------------------------------------------------------------- */

struct lexer {
    struct moe_jinja *t;
    const char *s;
    size_t n, pos;
    /* line of pos, found by walking forward */
    size_t lpos;
    int line;
    size_t line_start;
    bool line_starting; /* the text before pos ended with a newline */
    struct jtoken *toks;
    size_t nt, cap;
    char *err;
    size_t errlen;
    int depth;
};

static void where(struct lexer *lx, size_t pos, int *line, int *col)
{
    for (; lx->lpos < pos && lx->lpos < lx->n; lx->lpos++)
        if (lx->s[lx->lpos] == '\n') {
            lx->line++;
            lx->line_start = lx->lpos + 1;
        }
    *line = lx->line;
    *col = (int)(pos - lx->line_start) + 1;
}

static int lex_fail(struct lexer *lx, size_t pos, const char *fmt, ...) JPRINTF(3, 4);
static int lex_fail(struct lexer *lx, size_t pos, const char *fmt, ...)
{
    int line, col;
    where(lx, pos, &line, &col);
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(lx->err, lx->errlen, "line %d, column %d: %s", line, col, msg);
    return -EINVAL;
}

static struct jtoken *emit(struct lexer *lx, uint8_t type, size_t pos)
{
    if (lx->nt == lx->cap) {
        size_t cap = lx->cap ? lx->cap * 2 : 256;
        struct jtoken *q = realloc(lx->toks, cap * sizeof(*q));
        if (!q)
            return NULL;
        lx->toks = q;
        lx->cap = cap;
    }
    struct jtoken *k = &lx->toks[lx->nt++];
    *k = (struct jtoken){.type = type};
    where(lx, pos, &k->line, &k->col);
    return k;
}

static int emit_data(struct lexer *lx, size_t pos, size_t n)
{
    if (!n)
        return 0;
    struct jtoken *k = emit(lx, T_DATA, pos);
    char *p = k ? jarena_alloc(&lx->t->arena, n + 1) : NULL;
    if (!p)
        return -ENOMEM;
    memcpy(p, lx->s + pos, n);
    k->p = p;
    k->n = n;
    return 0;
}

/* Python's \s at s[i]: its length, 0 if none */
static size_t space_at(const char *s, size_t n, size_t i)
{
    if (i >= n)
        return 0;
    unsigned char c = (unsigned char)s[i];
    if (c < 0x80)
        return moe_py_space(c) ? 1 : 0;
    size_t len;
    return moe_py_space(moe_utf8_next(s + i, n - i, &len)) ? len : 0;
}

static size_t skip_space(const char *s, size_t n, size_t i)
{
    for (size_t k; (k = space_at(s, n, i));)
        i += k;
    return i;
}

/* the length of text[0, len) once trailing Python whitespace is gone */
static size_t rstrip_len(const char *s, size_t start, size_t len)
{
    while (len) {
        size_t b = len - 1;
        while (b > 0 && ((unsigned char)s[start + b] & 0xc0) == 0x80 && len - b < 4)
            b--;
        size_t k = space_at(s + start, len, b);
        if (k != len - b)
            break;
        len = b;
    }
    return len;
}

/* the data before a tag with jinja2's OptionalLStrip: sign '-' strips all
 * whitespace, else lstrip_blocks drops the spaces before a block tag that
 * opens its line */
static size_t data_len(struct lexer *lx, size_t start, size_t len, char sign, bool variable)
{
    if (sign == '-')
        return rstrip_len(lx->s, start, len);
    if (sign == '+' || variable)
        return len;
    size_t l = len;
    while (l && lx->s[start + l - 1] != '\n')
        l--;
    if (l == 0 && !lx->line_starting)
        return len;
    if (l == len)
        return len;
    if (skip_space(lx->s + start, len, l) == len)
        return l;
    return len;
}

static bool at(struct lexer *lx, size_t pos, const char *lit)
{
    size_t k = strlen(lit);
    return pos + k <= lx->n && !memcmp(lx->s + pos, lit, k);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : (c | 32) >= 'a' && (c | 32) <= 'f' ? (c | 32) - 'a' + 10
                                                                            : -1;
}

/* Python's unicode-escape decoding of a string literal's body */
static int lex_string(struct lexer *lx, size_t start, size_t end, struct jtoken *k)
{
    char *o = jarena_alloc(&lx->t->arena, end - start + 1), *p = o;
    if (!o)
        return -ENOMEM;
    for (size_t i = start; i < end;) {
        char c = lx->s[i];
        if (c != '\\' || i + 1 >= end) {
            *p++ = c;
            i++;
            continue;
        }
        char e = lx->s[i + 1];
        i += 2;
        uint32_t cp;
        int digits = 0;
        switch (e) {
        case '\n':
            continue;
        case '\\':
        case '\'':
        case '"':
            *p++ = e;
            continue;
        case 'n':
            *p++ = '\n';
            continue;
        case 't':
            *p++ = '\t';
            continue;
        case 'r':
            *p++ = '\r';
            continue;
        case 'a':
            *p++ = 7;
            continue;
        case 'b':
            *p++ = 8;
            continue;
        case 'f':
            *p++ = 12;
            continue;
        case 'v':
            *p++ = 11;
            continue;
        case 'x':
            digits = 2;
            break;
        case 'u':
            digits = 4;
            break;
        case 'U':
            digits = 8;
            break;
        case 'N':
            return lex_fail(lx, i - 2, "\\N{...} escapes are not supported");
        default:
            if (e >= '0' && e <= '7') {
                cp = (uint32_t)(e - '0');
                for (int j = 0; j < 2 && i < end && lx->s[i] >= '0' && lx->s[i] <= '7'; j++)
                    cp = cp * 8 + (uint32_t)(lx->s[i++] - '0');
                char u[4];
                size_t len = jutf8_put(cp, u);
                memcpy(p, u, len);
                p += len;
                continue;
            }
            *p++ = '\\'; /* an unknown escape stays as written */
            *p++ = e;
            continue;
        }
        cp = 0;
        for (int j = 0; j < digits; j++) {
            int h = i < end ? hexval(lx->s[i]) : -1;
            if (h < 0)
                return lex_fail(lx, i, "truncated \\%c escape", e);
            cp = cp * 16 + (uint32_t)h;
            i++;
        }
        if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return lex_fail(lx, i, "illegal Unicode character in escape");
        char u[4];
        size_t len = jutf8_put(cp, u);
        memcpy(p, u, len);
        p += len;
    }
    *p = 0;
    k->p = o;
    k->n = (size_t)(p - o);
    return 0;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* digits with single underscores between them: (\d+_)*\d+ ; returns the end */
static size_t digits_at(const char *s, size_t n, size_t i)
{
    if (i >= n || !is_digit(s[i]))
        return 0;
    size_t j = i;
    while (j < n && is_digit(s[j])) {
        j++;
        if (j + 1 < n && s[j] == '_' && is_digit(s[j + 1]))
            j++;
    }
    return j;
}

static size_t float_at(struct lexer *lx, size_t i)
{
    const char *s = lx->s;
    size_t n = lx->n;
    if (i > 0 && s[i - 1] == '.')
        return 0;
    size_t j = digits_at(s, n, i);
    if (!j)
        return 0;
    size_t frac = 0;
    if (j < n && s[j] == '.')
        frac = digits_at(s, n, j + 1);
    size_t k = frac ? frac : j;
    if (k < n && (s[k] | 32) == 'e') {
        size_t m = k + 1;
        if (m < n && (s[m] == '+' || s[m] == '-'))
            m++;
        size_t e = digits_at(s, n, m);
        if (e)
            return e;
    }
    return frac;
}

static int lex_number(struct lexer *lx, size_t *pos)
{
    size_t i = *pos, end = float_at(lx, i);
    char buf[64];
    size_t bn = 0;
    if (end) {
        for (size_t j = i; j < end && bn < sizeof(buf) - 1; j++)
            if (lx->s[j] != '_')
                buf[bn++] = lx->s[j];
        buf[bn] = 0;
        struct jtoken *k = emit(lx, T_FLOAT, i);
        if (!k)
            return -ENOMEM;
        k->f = strtod(buf, NULL);
        *pos = end;
        return 0;
    }
    /* 0b / 0o / 0x with digits, [1-9](_?\d)*, or 0(_?0)* */
    int base = 10;
    size_t j = i;
    uint64_t v = 0;
    bool over = false;
    const char *s = lx->s;
    if (s[i] == '0' && i + 1 < lx->n && s[i + 1] && strchr("bBoOxX", s[i + 1])) {
        char b = (char)(s[i + 1] | 32);
        base = b == 'b' ? 2 : b == 'o' ? 8 : 16;
        j = i + 2;
    } else if (s[i] == '0') {
        j = i + 1;
        while (j < lx->n && (s[j] == '0' || (s[j] == '_' && j + 1 < lx->n && s[j + 1] == '0')))
            j += s[j] == '_' ? 2 : 1;
        base = 0;
    }
    size_t first = j;
    while (base && j < lx->n) {
        size_t d = j + (s[j] == '_' && j > first);
        int h = d < lx->n ? hexval(s[d]) : -1;
        if (h < 0 || h >= base)
            break;
        if (v > (UINT64_MAX - (uint64_t)h) / (uint64_t)base)
            over = true;
        v = v * (uint64_t)base + (uint64_t)h;
        j = d + 1;
    }
    if (j == first && base)
        return lex_fail(lx, i, "invalid number literal");
    if (over || v > INT64_MAX)
        return lex_fail(lx, i, "integer literal too large");
    struct jtoken *k = emit(lx, T_INT, i);
    if (!k)
        return -ENOMEM;
    k->i = (int64_t)v;
    *pos = j;
    return 0;
}

static const struct {
    const char *s;
    uint8_t op;
} ops[] = {
    {"//", OP_FLOORDIV}, {"**", OP_POW}, {"==", OP_EQ},      {"!=", OP_NE},
    {">=", OP_GTEQ},     {"<=", OP_LTEQ}, {"+", OP_ADD},     {"-", OP_SUB},
    {"/", OP_DIV},       {"*", OP_MUL},  {"%", OP_MOD},      {"~", OP_TILDE},
    {"[", OP_LBRACKET},  {"]", OP_RBRACKET}, {"(", OP_LPAREN}, {")", OP_RPAREN},
    {"{", OP_LBRACE},    {"}", OP_RBRACE}, {">", OP_GT},     {"<", OP_LT},
    {"=", OP_ASSIGN},    {".", OP_DOT},  {":", OP_COLON},    {"|", OP_PIPE},
    {",", OP_COMMA},     {";", OP_SEMICOLON},
};

static bool name_start(struct lexer *lx, size_t i, size_t *len)
{
    unsigned char c = (unsigned char)lx->s[i];
    *len = 1;
    if (c < 0x80)
        return c == '_' || ((c | 32) >= 'a' && (c | 32) <= 'z');
    return jcp_alpha(moe_utf8_next(lx->s + i, lx->n - i, len));
}

static bool name_char(struct lexer *lx, size_t i, size_t *len)
{
    *len = 1;
    return name_start(lx, i, len) || is_digit(lx->s[i]);
}

/* the inside of {% ... %} or {{ ... }} up to and including its end */
static int lex_tag(struct lexer *lx, bool block)
{
    char stack[J_MAX_NEST];
    int depth = 0;
    size_t i = lx->pos;
    for (;;) {
        if (i >= lx->n)
            return lex_fail(lx, i, "unexpected end of template, expected '%s'",
                            block ? "end of statement block" : "end of print statement");
        if (!depth) {
            size_t end = 0;
            bool trim = false, strip = false;
            if (block && at(lx, i, "+%}"))
                end = i + 3;
            else if (block && at(lx, i, "-%}"))
                end = i + 3, strip = true;
            else if (block && at(lx, i, "%}"))
                end = i + 2, trim = true;
            else if (!block && at(lx, i, "-}}"))
                end = i + 3, strip = true;
            else if (!block && at(lx, i, "}}"))
                end = i + 2;
            if (end) {
                if (!emit(lx, block ? T_BLOCK_END : T_VAR_END, i))
                    return -ENOMEM;
                if (strip)
                    end = skip_space(lx->s, lx->n, end);
                else if (trim && end < lx->n && lx->s[end] == '\n')
                    end++;
                lx->line_starting = end > 0 && lx->s[end - 1] == '\n';
                lx->pos = end;
                return 0;
            }
        }
        size_t k = space_at(lx->s, lx->n, i), len;
        if (k) {
            i += k;
            continue;
        }
        char c = lx->s[i];
        if (is_digit(c)) {
            int rc = lex_number(lx, &i);
            if (rc)
                return rc;
            continue;
        }
        if (name_start(lx, i, &len)) {
            size_t j = i + len;
            while (j < lx->n && name_char(lx, j, &len))
                j += len;
            struct jtoken *t = emit(lx, T_NAME, i);
            if (!t || !(t->p = jintern(lx->t, lx->s + i, j - i)))
                return -ENOMEM;
            t->n = j - i;
            i = j;
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t j = i + 1;
            while (j < lx->n && lx->s[j] != c)
                j += lx->s[j] == '\\' ? 2 : 1;
            if (j >= lx->n)
                return lex_fail(lx, i, "unexpected char %c", c);
            struct jtoken *t = emit(lx, T_STRING, i);
            if (!t)
                return -ENOMEM;
            int rc = lex_string(lx, i + 1, j, t);
            if (rc)
                return rc;
            i = j + 1;
            continue;
        }
        size_t o = 0;
        for (; o < sizeof(ops) / sizeof(ops[0]); o++)
            if (at(lx, i, ops[o].s))
                break;
        if (o == sizeof(ops) / sizeof(ops[0]))
            return lex_fail(lx, i, "unexpected char '%c'", c);
        uint8_t op = ops[o].op;
        if (op == OP_LBRACE || op == OP_LPAREN || op == OP_LBRACKET) {
            if (depth == J_MAX_NEST)
                return lex_fail(lx, i, "brackets nested too deeply");
            stack[depth++] = op == OP_LBRACE ? '}' : op == OP_LPAREN ? ')' : ']';
        } else if (op == OP_RBRACE || op == OP_RPAREN || op == OP_RBRACKET) {
            if (!depth)
                return lex_fail(lx, i, "unexpected '%c'", c);
            if (stack[--depth] != c)
                return lex_fail(lx, i, "unexpected '%c', expected '%c'", c, stack[depth]);
        }
        struct jtoken *t = emit(lx, T_OP, i);
        if (!t)
            return -ENOMEM;
        t->op = op;
        i += strlen(ops[o].s);
    }
}

/* {% raw %}: everything up to {% endraw %} is text */
static int lex_raw(struct lexer *lx, size_t open)
{
    for (size_t i = lx->pos; i + 1 < lx->n; i++) {
        if (lx->s[i] != '{' || lx->s[i + 1] != '%')
            continue;
        size_t j = i + 2;
        char sign = j < lx->n && (lx->s[j] == '-' || lx->s[j] == '+') ? lx->s[j++] : 0;
        j = skip_space(lx->s, lx->n, j);
        if (!at(lx, j, "endraw"))
            continue;
        j = skip_space(lx->s, lx->n, j + 6);
        size_t end;
        if (at(lx, j, "+%}"))
            end = j + 3;
        else if (at(lx, j, "-%}"))
            end = skip_space(lx->s, lx->n, j + 3);
        else if (at(lx, j, "%}"))
            end = j + 2 + (j + 2 < lx->n && lx->s[j + 2] == '\n');
        else
            continue;
        int rc = emit_data(lx, lx->pos, data_len(lx, lx->pos, i - lx->pos, sign, false));
        if (rc)
            return rc;
        lx->line_starting = lx->s[end - 1] == '\n';
        lx->pos = end;
        return 0;
    }
    return lex_fail(lx, open, "Missing end of raw directive");
}

/* after "{%" + sign at i: " raw %}" or " raw -%}"? returns the end or 0 */
static size_t raw_open(struct lexer *lx, size_t i)
{
    i = skip_space(lx->s, lx->n, i);
    if (!at(lx, i, "raw"))
        return 0;
    i = skip_space(lx->s, lx->n, i + 3);
    if (at(lx, i, "-%}"))
        return skip_space(lx->s, lx->n, i + 3);
    if (at(lx, i, "%}"))
        return i + 2;
    return 0;
}

int jlex(struct moe_jinja *t, const char *src, struct jtoken **toks, size_t *n, char *err,
         size_t errlen)
{
    /* newlines as jinja2 reads them: \r\n and \r are \n; one trailing \n goes */
    size_t len = strlen(src);
    char *s = malloc(len + 1);
    if (!s)
        return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[k++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n')
                i++;
        } else {
            s[k++] = src[i];
        }
    }
    if (k && s[k - 1] == '\n')
        k--;
    s[k] = 0;

    struct lexer lx = {.t = t, .s = s, .n = k, .line = 1, .line_starting = true, .err = err,
                       .errlen = errlen};
    int rc = 0;
    while (!rc && lx.pos < lx.n) {
        /* the next tag opener */
        size_t i = lx.pos;
        const char *q = NULL;
        while (i + 1 < lx.n) {
            q = memchr(lx.s + i, '{', lx.n - i - 1);
            if (!q)
                break;
            i = (size_t)(q - lx.s);
            char c = lx.s[i + 1];
            if (c == '%' || c == '{' || c == '#')
                break;
            i++;
            q = NULL;
        }
        if (!q || i + 1 >= lx.n) {
            rc = emit_data(&lx, lx.pos, lx.n - lx.pos);
            break;
        }
        char kind = lx.s[i + 1];
        size_t body = i + 2;
        char sign = body < lx.n && (lx.s[body] == '-' || lx.s[body] == '+') ? lx.s[body++] : 0;
        size_t raw_end = kind == '%' ? raw_open(&lx, body) : 0;
        if ((rc = emit_data(&lx, lx.pos, data_len(&lx, lx.pos, i - lx.pos, sign, kind == '{'))))
            break;
        lx.line_starting = false;
        if (raw_end) {
            lx.pos = raw_end;
            rc = lex_raw(&lx, i);
        } else if (kind == '#') {
            const char *e = NULL;
            for (size_t j = body; j + 1 < lx.n; j++)
                if (lx.s[j] == '#' && lx.s[j + 1] == '}') {
                    e = lx.s + j;
                    break;
                }
            if (!e) {
                rc = lex_fail(&lx, i, "Missing end of comment tag");
                break;
            }
            size_t j = (size_t)(e - lx.s), end = j + 2;
            if (j > body && lx.s[j - 1] == '-')
                end = skip_space(lx.s, lx.n, end);
            else if (!(j > body && lx.s[j - 1] == '+') && end < lx.n && lx.s[end] == '\n')
                end++;
            lx.line_starting = lx.s[end - 1] == '\n';
            lx.pos = end;
        } else {
            if (!emit(&lx, kind == '%' ? T_BLOCK_BEGIN : T_VAR_BEGIN, i)) {
                rc = -ENOMEM;
                break;
            }
            lx.pos = body;
            rc = lex_tag(&lx, kind == '%');
        }
    }
    if (!rc && !emit(&lx, T_EOF, lx.n))
        rc = -ENOMEM;
    if (rc == -ENOMEM)
        snprintf(err, errlen, "out of memory");
    free(s);
    if (rc) {
        free(lx.toks);
        return rc;
    }
    *toks = lx.toks;
    *n = lx.nt;
    return 0;
}
