/* Jinja text: the growable buffer renders write into, UTF-8 and Python's
 * character classes (Python counts, slices and strips strings in code
 * points), and Python's str() and repr() of every value, floats written as
 * repr(float) writes them. */
#define _GNU_SOURCE /* newlocale, towupper_l */
#include "engine/engine_jinja_int.h"

#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wctype.h>

/* ---- growable text ------------------------------------------------------------------ */

int jbuf_put(struct jstate *st, struct jbuf *b, const char *p, size_t n)
{
    if (!n)
        return 0;
    if (b->n + n > st->max_output || b->n + n < b->n)
        return jfail(st, NULL, "output limit of %zu bytes exceeded", st->max_output);
    int rc = jwork(st, NULL, n);
    if (rc)
        return rc;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q)
            return jnomem(st);
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

int jbuf_putc(struct jstate *st, struct jbuf *b, char c)
{
    return jbuf_put(st, b, &c, 1);
}

int jbuf_puts(struct jstate *st, struct jbuf *b, const char *s)
{
    return jbuf_put(st, b, s, strlen(s));
}

int jbuf_printf(struct jstate *st, struct jbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return jfail(st, NULL, "format error");
    return jbuf_put(st, b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

int jbuf_put_cp(struct jstate *st, struct jbuf *b, uint32_t cp)
{
    char u[4];
    return jbuf_put(st, b, u, jutf8_put(cp, u));
}

void jbuf_free(struct jbuf *b)
{
    free(b->p);
    *b = (struct jbuf){0};
}

/* ---- UTF-8 and Python's character classes ------------------------------------------- */


size_t jutf8_count(const char *p, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)p[i] & 0xc0) != 0x80;
    return c;
}

size_t jutf8_offset(const char *p, size_t n, size_t cps)
{
    size_t i = 0;
    while (i < n && cps) {
        i++;
        while (i < n && ((unsigned char)p[i] & 0xc0) == 0x80)
            i++;
        cps--;
    }
    return i;
}

size_t jutf8_put(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | cp >> 12);
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | cp >> 18);
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}


/* where str.splitlines() breaks */
bool jpy_linebreak(uint32_t c)
{
    return c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || (c >= 0x1c && c <= 0x1e) ||
           c == 0x85 || c == 0x2028 || c == 0x2029;
}

/* Case mapping beyond ASCII through the C.UTF-8 locale's tables (one
 * character to one character: Python's special cases such as 'ß'.upper() ==
 * 'SS' are not reproduced). */
static locale_t utf8_locale;
static pthread_once_t utf8_once = PTHREAD_ONCE_INIT;

static void utf8_locale_init(void)
{
    utf8_locale = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
}

static locale_t loc(void)
{
    pthread_once(&utf8_once, utf8_locale_init);
    return utf8_locale;
}

uint32_t jcp_upper(uint32_t c)
{
    if (c < 0x80)
        return c >= 'a' && c <= 'z' ? c - 32 : c;
    return loc() ? (uint32_t)towupper_l((wint_t)c, loc()) : c;
}

uint32_t jcp_lower(uint32_t c)
{
    if (c < 0x80)
        return c >= 'A' && c <= 'Z' ? c + 32 : c;
    return loc() ? (uint32_t)towlower_l((wint_t)c, loc()) : c;
}

bool jcp_cased(uint32_t c)
{
    return jcp_upper(c) != c || jcp_lower(c) != c;
}

bool jcp_alpha(uint32_t c)
{
    if (c < 0x80)
        return (c | 32) >= 'a' && (c | 32) <= 'z';
    return loc() ? iswalpha_l((wint_t)c, loc()) : false;
}

bool jcp_digit(uint32_t c)
{
    if (c < 0x80)
        return c >= '0' && c <= '9';
    return loc() ? iswdigit_l((wint_t)c, loc()) : false;
}

/* ---- str() and repr() --------------------------------------------------------------- */

void jfmt_float(double f, char out[40])
{
    if (isnan(f)) {
        strcpy(out, "nan");
        return;
    }
    if (isinf(f)) {
        strcpy(out, f < 0 ? "-inf" : "inf");
        return;
    }
    /* the shortest digits that read back as f, as Python's repr finds them */
    char e[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(e, sizeof(e), "%.*e", p - 1, f);
        if (strtod(e, NULL) == f)
            break;
    }
    /* e: [-]d[.ddd]e[+-]XX */
    char digits[24];
    size_t nd = 0;
    const char *q = e;
    bool neg = *q == '-';
    if (neg)
        q++;
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9')
            digits[nd++] = *q;
    int exp10 = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = 0;
    int decpt = exp10 + 1;
    char *o = out;
    if (neg)
        *o++ = '-';
    if (decpt <= -4 || decpt > 16) {
        *o++ = digits[0];
        if (nd > 1) {
            *o++ = '.';
            memcpy(o, digits + 1, nd - 1);
            o += nd - 1;
        }
        sprintf(o, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
        return;
    }
    if (decpt <= 0) {
        *o++ = '0';
        *o++ = '.';
        for (int i = 0; i < -decpt; i++)
            *o++ = '0';
        memcpy(o, digits, nd);
        o += nd;
    } else if ((size_t)decpt >= nd) {
        memcpy(o, digits, nd);
        o += nd;
        for (size_t i = nd; i < (size_t)decpt; i++)
            *o++ = '0';
        *o++ = '.';
        *o++ = '0';
    } else {
        memcpy(o, digits, (size_t)decpt);
        o += decpt;
        *o++ = '.';
        memcpy(o, digits + decpt, nd - (size_t)decpt);
        o += nd - (size_t)decpt;
    }
    *o = 0;
}

/* str.isprintable(), close enough: control, separator, format, private-use
 * and surrogate code points are not */
static bool cp_printable(uint32_t c)
{
    if (c < 0x20 || (c >= 0x7f && c <= 0xa0) || c == 0xad)
        return false;
    if (c < 0x600)
        return true;
    if ((c >= 0x600 && c <= 0x605) || c == 0x61c || c == 0x6dd || c == 0x70f || c == 0x180e ||
        c == 0x1680 || (c >= 0x2000 && c <= 0x200f) || (c >= 0x2028 && c <= 0x202f) ||
        (c >= 0x205f && c <= 0x206f) || c == 0x3000 || (c >= 0xd800 && c <= 0xf8ff) ||
        c == 0xfeff || (c >= 0xfff9 && c <= 0xfffb) || c == 0x110bd ||
        (c >= 0x1bca0 && c <= 0x1bca3) || (c >= 0x1d173 && c <= 0x1d17a) || c == 0xe0001 ||
        (c >= 0xe0020 && c <= 0xe007f) || c >= 0xf0000)
        return false;
    return true;
}

static int repr_str(struct jstate *st, const struct jstr *s, struct jbuf *b)
{
    bool sq = memchr(s->s, '\'', s->len) != NULL, dq = memchr(s->s, '"', s->len) != NULL;
    char quote = sq && !dq ? '"' : '\'';
    int rc = jbuf_putc(st, b, quote);
    for (size_t i = 0, len; !rc && i < s->len; i += len) {
        uint32_t c = moe_utf8_next(s->s + i, s->len - i, &len);
        if (c == (uint32_t)quote || c == '\\') {
            char e[2] = {'\\', (char)c};
            rc = jbuf_put(st, b, e, 2);
        } else if (c == '\n') {
            rc = jbuf_put(st, b, "\\n", 2);
        } else if (c == '\r') {
            rc = jbuf_put(st, b, "\\r", 2);
        } else if (c == '\t') {
            rc = jbuf_put(st, b, "\\t", 2);
        } else if (!cp_printable(c)) {
            rc = c < 0x100     ? jbuf_printf(st, b, "\\x%02x", c)
                 : c < 0x10000 ? jbuf_printf(st, b, "\\u%04x", c)
                               : jbuf_printf(st, b, "\\U%08x", c);
        } else {
            rc = jbuf_put(st, b, s->s + i, len);
        }
    }
    return rc ? rc : jbuf_putc(st, b, quote);
}

static int put_value(struct jstate *st, struct jv v, struct jbuf *b, bool repr)
{
    char tmp[40];
    int rc = 0;
    switch (v.t) {
    case JV_UNDEF:
        return repr ? jbuf_puts(st, b, "Undefined") : 0;
    case JV_NONE:
        return jbuf_puts(st, b, "None");
    case JV_BOOL:
        return jbuf_puts(st, b, v.u.b ? "True" : "False");
    case JV_INT:
        return jbuf_printf(st, b, "%lld", (long long)v.u.i);
    case JV_FLOAT:
        jfmt_float(v.u.f, tmp);
        return jbuf_puts(st, b, tmp);
    case JV_STR:
        return repr ? repr_str(st, v.u.s, b) : jbuf_put(st, b, v.u.s->s, v.u.s->len);
    case JV_LIST:
        if (v.u.l->view == JL_GENERATOR || v.u.l->view == JL_REVERSED)
            return jbuf_printf(st, b, "<%s object>", jv_type_name_v(v));
        if (v.u.l->view) {
            /* dict_items([...]) */
            struct jlist tmp = *v.u.l;
            tmp.view = JL_PLAIN;
            rc = jbuf_printf(st, b, "%s(", jv_type_name_v(v));
            if (!rc)
                rc = put_value(st, jv_list(&tmp), b, true);
            return rc ? rc : jbuf_putc(st, b, ')');
        }
        rc = jbuf_putc(st, b, v.u.l->tuple ? '(' : '[');
        for (size_t i = 0; !rc && i < v.u.l->n; i++) {
            if (i)
                rc = jbuf_put(st, b, ", ", 2);
            if (!rc)
                rc = put_value(st, v.u.l->v[i], b, true);
        }
        if (!rc && v.u.l->tuple && v.u.l->n == 1)
            rc = jbuf_putc(st, b, ',');
        return rc ? rc : jbuf_putc(st, b, v.u.l->tuple ? ')' : ']');
    case JV_DICT:
        rc = jbuf_putc(st, b, '{');
        for (size_t i = 0; !rc && i < v.u.d->n; i++) {
            if (i)
                rc = jbuf_put(st, b, ", ", 2);
            if (!rc)
                rc = put_value(st, v.u.d->k[i], b, true);
            if (!rc)
                rc = jbuf_put(st, b, ": ", 2);
            if (!rc)
                rc = put_value(st, v.u.d->v[i], b, true);
        }
        return rc ? rc : jbuf_putc(st, b, '}');
    case JV_NS:
        /* jinja2: <Namespace {...}>; a namespace inside itself is not followed */
        rc = jbuf_puts(st, b, "<Namespace {");
        for (size_t i = 0; !rc && v.u.ns->attrs && i < v.u.ns->attrs->n; i++) {
            struct jv x = v.u.ns->attrs->v[i];
            if (i)
                rc = jbuf_put(st, b, ", ", 2);
            if (!rc)
                rc = put_value(st, v.u.ns->attrs->k[i], b, true);
            if (!rc)
                rc = jbuf_put(st, b, ": ", 2);
            if (!rc)
                rc = x.t == JV_NS ? jbuf_puts(st, b, "<Namespace>") : put_value(st, x, b, true);
        }
        return rc ? rc : jbuf_puts(st, b, "}>");
    case JV_MACRO:
        return jbuf_printf(st, b, "<Macro '%s'>",
                           v.u.m->def->name ? v.u.m->def->name : "caller");
    case JV_FUNC:
        return jbuf_printf(st, b, "<built-in function %s>", v.u.fn->name);
    case JV_LOOP:
        return jbuf_printf(st, b, "<LoopContext %zu/%zu>", v.u.lp->i + 1, v.u.lp->items->n);
    default:
        return 0;
    }
}

int jv_to_buf(struct jstate *st, struct jv v, struct jbuf *b)
{
    return put_value(st, v, b, false);
}

int jv_repr_buf(struct jstate *st, struct jv v, struct jbuf *b)
{
    return put_value(st, v, b, true);
}

int jv_to_str(struct jstate *st, struct jv v, struct jv *out)
{
    if (v.t == JV_STR) {
        *out = jv_ref(v);
        return 0;
    }
    struct jbuf b = {0};
    int rc = jv_to_buf(st, v, &b);
    if (rc) {
        jbuf_free(&b);
        return rc;
    }
    return jv_str_buf(st, &b, out);
}
