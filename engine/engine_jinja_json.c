/* tojson as transformers defines it: Python's json.dumps(x,
 * ensure_ascii=False, indent=None, separators=None, sort_keys=False) unless
 * the template asks otherwise, so ", " and ": " between items and keys, no
 * HTML escaping (jinja2's own tojson escapes <, >, & and '), floats as
 * Python's repr writes them, non-ASCII text as is. */
#include "engine/engine_jinja_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int put_string(struct jstate *st, const char *p, size_t n, bool ensure_ascii,
                      struct jbuf *b)
{
    int rc = jbuf_putc(st, b, '"');
    size_t run = 0; /* bytes copied as they are, flushed in one go */
    for (size_t i = 0; !rc && i < n;) {
        unsigned char c = (unsigned char)p[i];
        const char *esc = NULL;
        char u[16];
        size_t len = 1;
        switch (c) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        case '\b':
            esc = "\\b";
            break;
        case '\f':
            esc = "\\f";
            break;
        default:
            if (c < 0x20) {
                snprintf(u, sizeof(u), "\\u%04x", c);
                esc = u;
            } else if (c >= 0x80 && ensure_ascii) {
                uint32_t cp = moe_utf8_next(p + i, n - i, &len);
                if (cp >= 0x10000) {
                    cp -= 0x10000;
                    snprintf(u, sizeof(u), "\\u%04x\\u%04x", 0xd800 + (cp >> 10),
                             0xdc00 + (cp & 0x3ff));
                } else {
                    snprintf(u, sizeof(u), "\\u%04x", cp);
                }
                esc = u;
            }
        }
        if (!esc) {
            run++;
            i++;
            continue;
        }
        if (run)
            rc = jbuf_put(st, b, p + i - run, run);
        run = 0;
        if (!rc)
            rc = jbuf_puts(st, b, esc);
        i += len;
    }
    if (!rc && run)
        rc = jbuf_put(st, b, p + n - run, run);
    return rc ? rc : jbuf_putc(st, b, '"');
}

static int put_float(struct jstate *st, double f, struct jbuf *b)
{
    if (isnan(f))
        return jbuf_puts(st, b, "NaN");
    if (isinf(f))
        return jbuf_puts(st, b, f < 0 ? "-Infinity" : "Infinity");
    char tmp[40];
    jfmt_float(f, tmp);
    return jbuf_puts(st, b, tmp);
}

static int newline(struct jstate *st, const struct jjson_opts *o, int depth, struct jbuf *b)
{
    int rc = jbuf_putc(st, b, '\n');
    for (int i = 0; !rc && i < depth; i++)
        rc = jbuf_put(st, b, o->indent, o->indent_len);
    return rc;
}

/* a dict key as json.dumps writes it */
static int put_key(struct jstate *st, const struct jn *at, struct jv k,
                   const struct jjson_opts *o, struct jbuf *b)
{
    char tmp[40];
    switch (k.t) {
    case JV_STR:
        return put_string(st, k.u.s->s, k.u.s->len, o->ensure_ascii, b);
    case JV_INT:
        snprintf(tmp, sizeof(tmp), "\"%lld\"", (long long)k.u.i);
        return jbuf_puts(st, b, tmp);
    case JV_BOOL:
        return jbuf_puts(st, b, k.u.b ? "\"true\"" : "\"false\"");
    case JV_NONE:
        return jbuf_puts(st, b, "\"null\"");
    case JV_FLOAT: {
        struct jbuf f = {0};
        int rc = put_float(st, k.u.f, &f);
        if (!rc)
            rc = put_string(st, f.p, f.n, false, b);
        jbuf_free(&f);
        return rc;
    }
    default:
        return jfail(st, at, "keys must be str, int, float, bool or None, not %s",
                     jv_type_name_v(k));
    }
}

static int dump(struct jstate *st, const struct jn *at, struct jv v,
                const struct jjson_opts *o, struct jbuf *b, int depth)
{
    int rc = 0;
    if (depth > J_MAX_JSON_DEPTH)
        return jfail(st, at, "value nested too deeply for tojson");
    switch (v.t) {
    case JV_NONE:
        return jbuf_puts(st, b, "null");
    case JV_BOOL:
        return jbuf_puts(st, b, v.u.b ? "true" : "false");
    case JV_INT:
        return jbuf_printf(st, b, "%lld", (long long)v.u.i);
    case JV_FLOAT:
        return put_float(st, v.u.f, b);
    case JV_STR:
        return put_string(st, v.u.s->s, v.u.s->len, o->ensure_ascii, b);
    case JV_LIST: {
        if (v.u.l->view)
            return jfail(st, at, "Object of type %s is not JSON serializable",
                         jv_type_name_v(v));
        if (!v.u.l->n)
            return jbuf_puts(st, b, "[]");
        rc = jbuf_putc(st, b, '[');
        for (size_t i = 0; !rc && i < v.u.l->n; i++) {
            if (i)
                rc = jbuf_put(st, b, o->item_sep, o->item_sep_len);
            if (!rc && o->indent)
                rc = newline(st, o, depth + 1, b);
            if (!rc)
                rc = dump(st, at, v.u.l->v[i], o, b, depth + 1);
        }
        if (!rc && o->indent)
            rc = newline(st, o, depth, b);
        return rc ? rc : jbuf_putc(st, b, ']');
    }
    case JV_DICT: {
        const struct jdict *d = v.u.d;
        if (!d->n)
            return jbuf_puts(st, b, "{}");
        size_t *order = malloc(d->n * sizeof(*order));
        if (!order)
            return jnomem(st);
        for (size_t i = 0; i < d->n; i++)
            order[i] = i;
        if (o->sort_keys) {
            /* insertion sort: stable, and keys compare as Python compares them */
            for (size_t i = 1; !rc && i < d->n; i++) {
                size_t x = order[i], j = i;
                while (j > 0) {
                    int c;
                    if ((rc = jv_cmp(st, at, d->k[order[j - 1]], d->k[x], &c)))
                        break;
                    if (c <= 0)
                        break;
                    order[j] = order[j - 1];
                    j--;
                }
                order[j] = x;
                if (!rc)
                    rc = jwork(st, at, i);
            }
        }
        if (!rc)
            rc = jbuf_putc(st, b, '{');
        for (size_t i = 0; !rc && i < d->n; i++) {
            size_t e = order[i];
            if (i)
                rc = jbuf_put(st, b, o->item_sep, o->item_sep_len);
            if (!rc && o->indent)
                rc = newline(st, o, depth + 1, b);
            if (!rc)
                rc = put_key(st, at, d->k[e], o, b);
            if (!rc)
                rc = jbuf_put(st, b, o->key_sep, o->key_sep_len);
            if (!rc)
                rc = dump(st, at, d->v[e], o, b, depth + 1);
        }
        free(order);
        if (!rc && o->indent)
            rc = newline(st, o, depth, b);
        return rc ? rc : jbuf_putc(st, b, '}');
    }
    case JV_UNDEF:
        return jfail(st, at, "Object of type Undefined is not JSON serializable");
    default:
        return jfail(st, at, "Object of type %s is not JSON serializable", jv_type_name_v(v));
    }
}

int jv_dump_json(struct jstate *st, const struct jn *at, struct jv v,
                 const struct jjson_opts *o, struct jbuf *b)
{
    return dump(st, at, v, o, b, 0);
}
