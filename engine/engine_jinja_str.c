/* Python's string methods as templates call them (strip, split, rsplit,
 * startswith, find, replace, format, splitlines, join, title ...): on UTF-8
 * text, counting and slicing in code points as Python does, whitespace as
 * str.isspace() knows it. */
#define _GNU_SOURCE /* memmem */
#include "engine/engine_jinja_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int str_of(struct jstate *st, const struct jn *at, struct jv *v, const char *what)
{
    if (v->t != JV_STR)
        return jfail(st, at, "%s argument must be str, not %s", what, jv_type_name_v(*v));
    return 0;
}

/* does code point c occur in chars (a UTF-8 string)? */
static bool cp_in(uint32_t c, const struct jstr *chars)
{
    for (size_t i = 0, len; i < chars->len; i += len)
        if (moe_utf8_next(chars->s + i, chars->len - i, &len) == c)
            return true;
    return false;
}

/* which: 1 left, 2 right, 3 both; chars NULL / None: whitespace */
int jstr_strip(struct jstate *st, struct jv s, struct jv *chars, int which, struct jv *out)
{
    const struct jstr *set = chars && chars->t == JV_STR ? chars->u.s : NULL;
    const char *p = s.u.s->s;
    size_t lo = 0, hi = s.u.s->len, len;
    if (which & 1)
        while (lo < hi) {
            uint32_t c = moe_utf8_next(p + lo, hi - lo, &len);
            if (set ? !cp_in(c, set) : !moe_py_space(c))
                break;
            lo += len;
        }
    if (which & 2)
        while (hi > lo) {
            size_t b = hi - 1;
            while (b > lo && ((unsigned char)p[b] & 0xc0) == 0x80 && hi - b < 4)
                b--;
            uint32_t c = moe_utf8_next(p + b, hi - b, &len);
            if (len != hi - b || (set ? !cp_in(c, set) : !moe_py_space(c)))
                break;
            hi = b;
        }
    if (lo == 0 && hi == s.u.s->len) {
        *out = jv_ref(s);
        return 0;
    }
    return jv_str(st, p + lo, hi - lo, out);
}

/* how: 0 lower, 1 upper, 2 title (Python's), 3 capitalize, 4 swapcase */
int jstr_case(struct jstate *st, struct jv s, int how, struct jv *out)
{
    struct jbuf b = {0};
    int rc = 0;
    bool prev_cased = false, first = true;
    for (size_t i = 0, len; !rc && i < s.u.s->len; i += len) {
        uint32_t c = moe_utf8_next(s.u.s->s + i, s.u.s->len - i, &len), r;
        switch (how) {
        case 0:
            r = jcp_lower(c);
            break;
        case 1:
            r = jcp_upper(c);
            break;
        case 2:
            r = prev_cased ? jcp_lower(c) : jcp_upper(c);
            prev_cased = jcp_cased(c);
            break;
        case 3:
            r = first ? jcp_upper(c) : jcp_lower(c);
            break;
        default:
            r = jcp_upper(c) != c ? jcp_upper(c) : jcp_lower(c);
            break;
        }
        first = false;
        if (r == c || c == 0xfffd)
            rc = jbuf_put(st, &b, s.u.s->s + i, len);
        else
            rc = jbuf_put_cp(st, &b, r);
    }
    if (rc) {
        jbuf_free(&b);
        return rc;
    }
    return jv_str_buf(st, &b, out);
}

int jstr_replace(struct jstate *st, const struct jn *at, struct jv s, struct jv old,
                 struct jv new_, int64_t count, struct jv *out)
{
    int rc = str_of(st, at, &old, "replace()");
    if (!rc)
        rc = str_of(st, at, &new_, "replace()");
    if (rc)
        return rc;
    const char *p = s.u.s->s;
    size_t n = s.u.s->len, on = old.u.s->len;
    struct jbuf b = {0};
    size_t i = 0;
    int64_t done = 0;
    if (on == 0) {
        /* an empty old: new goes before every character and at the end */
        for (size_t len; !rc && i <= n; i += len) {
            if (count < 0 || done < count) {
                rc = jbuf_put(st, &b, new_.u.s->s, new_.u.s->len);
                done++;
            }
            if (i == n)
                break;
            moe_utf8_next(p + i, n - i, &len);
            if (!rc)
                rc = jbuf_put(st, &b, p + i, len);
        }
    } else {
        while (!rc && i < n) {
            const char *hit =
                count >= 0 && done >= count ? NULL : memmem(p + i, n - i, old.u.s->s, on);
            if (!hit) {
                rc = jbuf_put(st, &b, p + i, n - i);
                break;
            }
            size_t k = (size_t)(hit - p);
            rc = jbuf_put(st, &b, p + i, k - i);
            if (!rc)
                rc = jbuf_put(st, &b, new_.u.s->s, new_.u.s->len);
            i = k + on;
            done++;
        }
    }
    if (rc) {
        jbuf_free(&b);
        return rc;
    }
    rc = jv_str_buf(st, &b, out);
    if (!rc)
        out->u.s->markup = s.u.s->markup;
    return rc;
}

int jstr_splitlines(struct jstate *st, struct jv s, bool keepends, struct jlist **out)
{
    struct jlist *l = jlist_new(st, 0);
    if (!l)
        return -EINVAL;
    const char *p = s.u.s->s;
    size_t n = s.u.s->len, start = 0, i = 0, len;
    int rc = 0;
    while (!rc && i < n) {
        uint32_t c = moe_utf8_next(p + i, n - i, &len);
        if (!jpy_linebreak(c)) {
            i += len;
            continue;
        }
        size_t end = i + len;
        if (c == '\r' && end < n && p[end] == '\n')
            end++;
        struct jv line;
        if (!(rc = jv_str(st, p + start, (keepends ? end : i) - start, &line)))
            rc = jlist_push(st, l, line);
        start = i = end;
    }
    if (!rc && start < n) {
        struct jv line;
        if (!(rc = jv_str(st, p + start, n - start, &line)))
            rc = jlist_push(st, l, line);
    }
    if (rc) {
        jv_drop(jv_list(l));
        return rc;
    }
    *out = l;
    return 0;
}

int jstr_escape(struct jstate *st, struct jv s, struct jv *out)
{
    struct jbuf b = {0};
    int rc = 0;
    for (size_t i = 0; !rc && i < s.u.s->len; i++) {
        char c = s.u.s->s[i];
        const char *e = c == '&' ? "&amp;" : c == '<' ? "&lt;" : c == '>' ? "&gt;"
                      : c == '"' ? "&#34;" : c == '\'' ? "&#39;" : NULL;
        rc = e ? jbuf_puts(st, &b, e) : jbuf_putc(st, &b, c);
    }
    if (!rc)
        rc = jv_str_buf(st, &b, out);
    else
        jbuf_free(&b);
    if (!rc)
        out->u.s->markup = 1;
    return rc;
}

/* byte offset of code point index i (clamped like Python slice bounds) */
static size_t cp_clamp(const struct jstr *s, int64_t i)
{
    int64_t n = (int64_t)(s->ascii ? s->len : jutf8_count(s->s, s->len));
    if (i < 0)
        i += n;
    if (i < 0)
        i = 0;
    if (i > n)
        i = n;
    return s->ascii ? (size_t)i : jutf8_offset(s->s, s->len, (size_t)i);
}

static int int_arg(struct jstate *st, const struct jn *at, struct jv *v, int64_t def,
                   int64_t *out)
{
    if (!v || v->t == JV_NONE) {
        *out = def;
        return 0;
    }
    if (v->t == JV_INT || v->t == JV_BOOL) {
        *out = v->t == JV_INT ? v->u.i : v->u.b;
        return 0;
    }
    return jfail(st, at, "an integer is required, not %s", jv_type_name_v(*v));
}

/* str.find / rfind / index / rindex / count over [start, end) */
static int str_search(struct jstate *st, const struct jn *at, struct jv s, const char *m,
                      struct jargs *a, struct jv *out)
{
    struct jv *sub = jarg(a, 0, NULL);
    if (!sub)
        return jfail(st, at, "%s() takes at least 1 argument (0 given)", m);
    int rc = str_of(st, at, sub, m);
    int64_t start = 0, end = 0;
    if (!rc)
        rc = int_arg(st, at, jarg(a, 1, NULL), 0, &start);
    if (!rc)
        rc = int_arg(st, at, jarg(a, 2, NULL), INT64_MAX / 2, &end);
    if (rc)
        return rc;
    const struct jstr *h = s.u.s, *k = sub->u.s;
    size_t lo = cp_clamp(h, start), hi = cp_clamp(h, end);
    if (!strcmp(m, "count")) {
        int64_t c = 0;
        if (k->len == 0) {
            c = hi >= lo ? (int64_t)jutf8_count(h->s + lo, hi - lo) + 1 : 0;
        } else {
            for (size_t i = lo; i + k->len <= hi;) {
                const char *x = memmem(h->s + i, hi - i, k->s, k->len);
                if (!x)
                    break;
                c++;
                i = (size_t)(x - h->s) + k->len;
            }
        }
        *out = jv_int(c);
        return 0;
    }
    bool rev = m[0] == 'r';
    ptrdiff_t found = -1;
    if (hi >= lo && k->len <= hi - lo) {
        if (!rev) {
            const char *x = memmem(h->s + lo, hi - lo, k->s, k->len);
            found = x ? x - h->s : -1;
        } else {
            for (size_t i = hi - k->len + 1; i-- > lo;)
                if (!memcmp(h->s + i, k->s, k->len)) {
                    found = (ptrdiff_t)i;
                    break;
                }
        }
    }
    if (found < 0 && strstr(m, "index"))
        return jfail(st, at, "substring not found");
    *out = jv_int(found < 0 ? -1 : (int64_t)jutf8_count(h->s, (size_t)found));
    return 0;
}

/* str.split / rsplit */
static int str_split(struct jstate *st, const struct jn *at, struct jv s, bool rev,
                     struct jargs *a, struct jv *out)
{
    static const char *const names[] = {"sep", "maxsplit", NULL};
    int rc = jargs_check(st, at, a, rev ? "rsplit" : "split", names);
    struct jv *sep = jarg(a, 0, "sep");
    int64_t max = -1;
    if (!rc)
        rc = int_arg(st, at, jarg(a, 1, "maxsplit"), -1, &max);
    if (!rc && sep && sep->t != JV_NONE && (rc = str_of(st, at, sep, "split()")) == 0 &&
        sep->u.s->len == 0)
        rc = jfail(st, at, "empty separator");
    if (rc)
        return rc;
    struct jlist *l = jlist_new(st, 0);
    if (!l)
        return -EINVAL;
    const char *p = s.u.s->s;
    size_t n = s.u.s->len, len;
    /* pieces as [start, end) pairs, collected in order (rsplit reverses at the end) */
    size_t lo = 0, hi = n;
    int64_t splits = 0;
    bool ws = !sep || sep->t == JV_NONE;
    while (!rc) {
        size_t ps, pe;
        if (ws) {
            if (!rev) {
                while (lo < hi && moe_py_space(moe_utf8_next(p + lo, hi - lo, &len)))
                    lo += len;
                if (lo >= hi)
                    break;
                if (max >= 0 && splits >= max) {
                    ps = lo, pe = hi;
                    /* the rest keeps its trailing whitespace */
                    lo = hi;
                } else {
                    ps = lo;
                    while (lo < hi && !moe_py_space(moe_utf8_next(p + lo, hi - lo, &len)))
                        lo += len;
                    pe = lo;
                }
            } else {
                while (hi > lo) {
                    size_t b = hi - 1;
                    while (b > lo && ((unsigned char)p[b] & 0xc0) == 0x80)
                        b--;
                    if (!moe_py_space(moe_utf8_next(p + b, hi - b, &len)))
                        break;
                    hi = b;
                }
                if (hi <= lo)
                    break;
                if (max >= 0 && splits >= max) {
                    ps = lo, pe = hi;
                    hi = lo;
                } else {
                    pe = hi;
                    while (hi > lo) {
                        size_t b = hi - 1;
                        while (b > lo && ((unsigned char)p[b] & 0xc0) == 0x80)
                            b--;
                        if (moe_py_space(moe_utf8_next(p + b, hi - b, &len)))
                            break;
                        hi = b;
                    }
                    ps = hi;
                }
            }
        } else {
            const struct jstr *k = sep->u.s;
            const char *x = NULL;
            if (max < 0 || splits < max) {
                if (!rev) {
                    x = memmem(p + lo, hi - lo, k->s, k->len);
                } else if (hi - lo >= k->len) {
                    for (size_t i = hi - k->len + 1; i-- > lo;)
                        if (!memcmp(p + i, k->s, k->len)) {
                            x = p + i;
                            break;
                        }
                }
            }
            if (!x) {
                ps = lo, pe = hi;
                struct jv piece;
                if (!(rc = jv_str(st, p + ps, pe - ps, &piece)))
                    rc = jlist_push(st, l, piece);
                break;
            }
            size_t at_ = (size_t)(x - p);
            if (!rev) {
                ps = lo, pe = at_;
                lo = at_ + k->len;
            } else {
                ps = at_ + k->len, pe = hi;
                hi = at_;
            }
        }
        splits++;
        struct jv piece;
        if (!(rc = jv_str(st, p + ps, pe - ps, &piece)))
            rc = jlist_push(st, l, piece);
    }
    if (!rc && rev)
        for (size_t i = 0; i < l->n / 2; i++) {
            struct jv t = l->v[i];
            l->v[i] = l->v[l->n - 1 - i];
            l->v[l->n - 1 - i] = t;
        }
    *out = jv_list(l);
    return rc;
}

static bool affix(struct jv s, struct jv x, bool end)
{
    size_t n = s.u.s->len, k = x.u.s->len;
    return k <= n && !memcmp(s.u.s->s + (end ? n - k : 0), x.u.s->s, k);
}

/* str.startswith / endswith: a string or a tuple of them */
static int str_affix(struct jstate *st, const struct jn *at, struct jv s, bool end,
                     struct jargs *a, struct jv *out)
{
    struct jv *x = jarg(a, 0, NULL);
    if (!x)
        return jfail(st, at, "%s() takes at least 1 argument (0 given)",
                     end ? "endswith" : "startswith");
    int64_t start = 0, stop = 0;
    int rc = int_arg(st, at, jarg(a, 1, NULL), 0, &start);
    if (!rc)
        rc = int_arg(st, at, jarg(a, 2, NULL), INT64_MAX / 2, &stop);
    if (rc)
        return rc;
    size_t lo = cp_clamp(s.u.s, start), hi = cp_clamp(s.u.s, stop);
    bool r = false;
    struct jv one[1] = {*x};
    struct jv *items = one;
    size_t n = 1;
    if (x->t == JV_LIST && x->u.l->tuple) {
        items = x->u.l->v;
        n = x->u.l->n;
    }
    for (size_t i = 0; i < n && !r; i++) {
        if (items[i].t != JV_STR)
            return jfail(st, at, "%s first arg must be str or a tuple of str, not %s",
                         end ? "endswith" : "startswith", jv_type_name_v(items[i]));
        if (hi < lo)
            continue;
        size_t k = items[i].u.s->len;
        r = k <= hi - lo && !memcmp(s.u.s->s + (end ? hi - k : lo), items[i].u.s->s, k);
    }
    *out = jv_bool(r);
    return 0;
}

/* str.format with {} {0} {name} fields and no format spec */
static int str_format(struct jstate *st, const struct jn *at, struct jv s, struct jargs *a,
                      struct jv *out)
{
    struct jbuf b = {0};
    const char *p = s.u.s->s;
    size_t n = s.u.s->len, auto_i = 0;
    int rc = 0;
    for (size_t i = 0; !rc && i < n; i++) {
        char c = p[i];
        if ((c == '{' || c == '}') && i + 1 < n && p[i + 1] == c) {
            rc = jbuf_putc(st, &b, c);
            i++;
            continue;
        }
        if (c == '}') {
            rc = jfail(st, at, "Single '}' encountered in format string");
            break;
        }
        if (c != '{') {
            rc = jbuf_putc(st, &b, c);
            continue;
        }
        const char *e = memchr(p + i, '}', n - i);
        if (!e) {
            rc = jfail(st, at, "Single '{' encountered in format string");
            break;
        }
        size_t fs = i + 1, fe = (size_t)(e - p);
        char conv = 0;
        for (size_t j = fs; j < fe; j++)
            if (p[j] == ':' || p[j] == '!') {
                if (p[j] == '!' && j + 1 < fe && (p[j + 1] == 'r' || p[j + 1] == 's') &&
                    j + 2 == fe) {
                    conv = p[j + 1];
                    fe = j;
                    break;
                }
                rc = jfail(st, at, "format specs are not supported");
                break;
            }
        if (rc)
            break;
        struct jv *v = NULL;
        if (fe == fs) {
            v = jarg(a, auto_i++, NULL);
        } else if (p[fs] >= '0' && p[fs] <= '9') {
            v = jarg(a, (size_t)strtoul(p + fs, NULL, 10), NULL);
        } else {
            for (size_t k = 0; k < a->nkw && !v; k++)
                if (strlen(a->kname[k]) == fe - fs && !memcmp(a->kname[k], p + fs, fe - fs))
                    v = &a->kval[k];
        }
        if (!v) {
            rc = jfail(st, at, "format field out of range");
            break;
        }
        rc = conv == 'r' ? jv_repr_buf(st, *v, &b) : jv_to_buf(st, *v, &b);
        i = (size_t)(e - p);
    }
    if (rc) {
        jbuf_free(&b);
        return rc;
    }
    return jv_str_buf(st, &b, out);
}

static int str_pad(struct jstate *st, const struct jn *at, struct jv s, const char *m,
                   struct jargs *a, struct jv *out)
{
    int64_t width = 0, len = 0;
    int rc = int_arg(st, at, jarg(a, 0, NULL), 0, &width);
    struct jv *fill = jarg(a, 1, NULL);
    const char *f = " ";
    size_t fl = 1;
    if (!rc && fill) {
        if (fill->t != JV_STR || jutf8_count(fill->u.s->s, fill->u.s->len) != 1)
            return jfail(st, at, "The fill character must be exactly one character long");
        f = fill->u.s->s;
        fl = fill->u.s->len;
    }
    if (!rc)
        rc = jv_length(st, at, s, &len);
    if (rc)
        return rc;
    if (width > (int64_t)st->max_output)
        return jfail(st, at, "width over the output limit");
    int64_t pad = width > len ? width - len : 0, left = 0;
    if (!strcmp(m, "center"))
        left = pad / 2 + (pad & width & 1);
    else if (!strcmp(m, "rjust") || !strcmp(m, "zfill"))
        left = pad;
    if (!strcmp(m, "zfill"))
        f = "0", fl = 1;
    struct jbuf b = {0};
    const char *p = s.u.s->s;
    size_t n = s.u.s->len;
    if (!strcmp(m, "zfill") && n && (p[0] == '-' || p[0] == '+') && pad) {
        rc = jbuf_putc(st, &b, p[0]);
        p++, n--;
    }
    for (int64_t i = 0; !rc && i < left; i++)
        rc = jbuf_put(st, &b, f, fl);
    if (!rc)
        rc = jbuf_put(st, &b, p, n);
    for (int64_t i = left; !rc && i < pad; i++)
        rc = jbuf_put(st, &b, f, fl);
    if (rc) {
        jbuf_free(&b);
        return rc;
    }
    return jv_str_buf(st, &b, out);
}

static int str_is(struct jstate *st, struct jv s, const char *m, struct jv *out)
{
    bool r = s.u.s->len > 0, any_cased = false, prev_cased = false, title_ok = true;
    for (size_t i = 0, len; i < s.u.s->len; i += len) {
        uint32_t c = moe_utf8_next(s.u.s->s + i, s.u.s->len - i, &len);
        bool up = jcp_lower(c) != c, lo = jcp_upper(c) != c;
        if (!strcmp(m, "isalnum"))
            r &= jcp_alpha(c) || jcp_digit(c);
        else if (!strcmp(m, "isalpha"))
            r &= jcp_alpha(c);
        else if (!strcmp(m, "isdigit") || !strcmp(m, "isnumeric") || !strcmp(m, "isdecimal"))
            r &= jcp_digit(c);
        else if (!strcmp(m, "isspace"))
            r &= moe_py_space(c);
        else if (!strcmp(m, "islower"))
            r &= !up, any_cased |= lo;
        else if (!strcmp(m, "isupper"))
            r &= !lo, any_cased |= up;
        else if (!strcmp(m, "istitle")) {
            if (up && prev_cased)
                title_ok = false;
            if (lo && !prev_cased)
                title_ok = false;
            any_cased |= up || lo;
            prev_cased = up || lo;
        }
    }
    if (!strcmp(m, "islower") || !strcmp(m, "isupper"))
        r = r && any_cased;
    if (!strcmp(m, "istitle"))
        r = title_ok && any_cased;
    (void)st;
    *out = jv_bool(r);
    return 0;
}

static int str_partition(struct jstate *st, const struct jn *at, struct jv s, bool rev,
                         struct jargs *a, struct jv *out)
{
    struct jv *sep = jarg(a, 0, NULL);
    if (!sep || sep->t != JV_STR || !sep->u.s->len)
        return jfail(st, at, "partition() needs a non-empty separator");
    const char *p = s.u.s->s, *x = NULL;
    size_t n = s.u.s->len, k = sep->u.s->len;
    if (!rev) {
        x = memmem(p, n, sep->u.s->s, k);
    } else if (n >= k) {
        for (size_t i = n - k + 1; i-- > 0;)
            if (!memcmp(p + i, sep->u.s->s, k)) {
                x = p + i;
                break;
            }
    }
    struct jlist *l = jlist_new(st, 3);
    if (!l)
        return -EINVAL;
    l->tuple = 1;
    size_t i = x ? (size_t)(x - p) : 0;
    struct jv parts[3];
    int rc = 0;
    if (x) {
        rc = jv_str(st, p, i, &parts[0]);
        parts[1] = jv_ref(*sep);
        if (!rc && (rc = jv_str(st, p + i + k, n - i - k, &parts[2])))
            jv_drop(parts[0]), jv_drop(parts[1]);
    } else {
        struct jv e;
        if (!(rc = jv_str(st, "", 0, &e))) {
            parts[rev ? 2 : 0] = jv_ref(s);
            parts[1] = e;
            parts[rev ? 0 : 2] = jv_ref(e);
        }
    }
    for (int j = 0; !rc && j < 3; j++)
        rc = jlist_push(st, l, parts[j]);
    *out = jv_list(l);
    return rc;
}

int jstr_method(struct jstate *st, const struct jn *at, struct jv s, const char *m,
                      struct jargs *a, struct jv *out)
{
    if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
        struct jv *chars = jarg(a, 0, "chars");
        if (chars && chars->t != JV_STR && chars->t != JV_NONE)
            return jfail(st, at, "%s arg must be None or str", m);
        return jstr_strip(st, s, chars, m[0] == 'l' ? 1 : m[0] == 'r' ? 2 : 3, out);
    }
    if (!strcmp(m, "lower") || !strcmp(m, "casefold"))
        return jstr_case(st, s, 0, out);
    if (!strcmp(m, "upper"))
        return jstr_case(st, s, 1, out);
    if (!strcmp(m, "title"))
        return jstr_case(st, s, 2, out);
    if (!strcmp(m, "capitalize"))
        return jstr_case(st, s, 3, out);
    if (!strcmp(m, "swapcase"))
        return jstr_case(st, s, 4, out);
    if (!strcmp(m, "split") || !strcmp(m, "rsplit"))
        return str_split(st, at, s, m[0] == 'r', a, out);
    if (!strcmp(m, "startswith") || !strcmp(m, "endswith"))
        return str_affix(st, at, s, m[0] == 'e', a, out);
    if (!strcmp(m, "find") || !strcmp(m, "rfind") || !strcmp(m, "index") ||
        !strcmp(m, "rindex") || !strcmp(m, "count"))
        return str_search(st, at, s, m, a, out);
    if (!strcmp(m, "replace")) {
        struct jv *o = jarg(a, 0, NULL), *nw = jarg(a, 1, NULL);
        int64_t count = -1;
        if (!o || !nw)
            return jfail(st, at, "replace() takes at least 2 arguments");
        int rc = int_arg(st, at, jarg(a, 2, "count"), -1, &count);
        return rc ? rc : jstr_replace(st, at, s, *o, *nw, count, out);
    }
    if (!strcmp(m, "splitlines")) {
        struct jv *k = jarg(a, 0, "keepends");
        struct jlist *l;
        int rc = jstr_splitlines(st, s, k && jv_truthy(*k), &l);
        if (!rc)
            *out = jv_list(l);
        return rc;
    }
    if (!strcmp(m, "join")) {
        struct jv *it = jarg(a, 0, NULL);
        if (!it)
            return jfail(st, at, "join() takes exactly one argument (0 given)");
        struct jlist *l;
        int rc = jv_iterate(st, at, *it, &l);
        if (rc)
            return rc;
        struct jbuf b = {0};
        for (size_t i = 0; !rc && i < l->n; i++) {
            if (l->v[i].t != JV_STR) {
                rc = jfail(st, at, "sequence item %zu: expected str instance, %s found", i,
                           jv_type_name_v(l->v[i]));
                break;
            }
            if (i)
                rc = jbuf_put(st, &b, s.u.s->s, s.u.s->len);
            if (!rc)
                rc = jbuf_put(st, &b, l->v[i].u.s->s, l->v[i].u.s->len);
        }
        jv_drop(jv_list(l));
        if (rc) {
            jbuf_free(&b);
            return rc;
        }
        return jv_str_buf(st, &b, out);
    }
    if (!strcmp(m, "format"))
        return str_format(st, at, s, a, out);
    if (!strcmp(m, "center") || !strcmp(m, "ljust") || !strcmp(m, "rjust") ||
        !strcmp(m, "zfill"))
        return str_pad(st, at, s, m, a, out);
    if (!strncmp(m, "is", 2))
        return str_is(st, s, m, out);
    if (!strcmp(m, "partition") || !strcmp(m, "rpartition"))
        return str_partition(st, at, s, m[0] == 'r', a, out);
    if (!strcmp(m, "removeprefix") || !strcmp(m, "removesuffix")) {
        struct jv *x = jarg(a, 0, NULL);
        if (!x || x->t != JV_STR)
            return jfail(st, at, "%s() argument must be str", m);
        bool end = m[6] == 's';
        if (!affix(s, *x, end)) {
            *out = jv_ref(s);
            return 0;
        }
        size_t k = x->u.s->len;
        return jv_str(st, s.u.s->s + (end ? 0 : k), s.u.s->len - k, out);
    }
    return jfail(st, at, "str.%s() is not supported", m);
}
