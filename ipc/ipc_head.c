/* The request head, checked before libmicrohttpd sees a byte of it.
 *
 * The gate (ipc_gate.c) peeks at a new connection's bytes (MSG_PEEK: they
 * stay in the socket for MHD) until the head is complete, and hands the
 * connection over only when this check passes. So a client that drips bytes
 * never holds a server thread, and what MHD would drop without a word (a
 * request line of one token, binary junk) or read wrongly (two
 * Content-Lengths, a transfer coding it does not know) gets an answer.
 *
 * RFC 9112: request-line = method SP request-target SP HTTP-version (§3),
 * field-line = field-name ":" OWS field-value OWS (§5) with no whitespace
 * before the colon and no obsolete line folding (§5.1, §5.2), and §6.3 for
 * the body length: Transfer-Encoding other than chunked is 501, both
 * Transfer-Encoding and Content-Length, or a Content-Length that is not one
 * number, is 400. Lines may end in CRLF or a bare LF (§2.2). */
#include "ipc/ipc_int.h"

#include <errno.h>
#include <string.h>
#include <strings.h>

/* RFC 9110 §5.6.2 tchar */
static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int bad(struct moe_ipc_error *e, int status, const char *code, const char *what,
               const char *p, size_t n)
{
    char shown[64];
    size_t k = 0;
    for (size_t i = 0; i < n && k + 4 < sizeof(shown); i++) /* printable, for the message */
        shown[k++] = (p[i] >= 0x20 && p[i] < 0x7f) ? p[i] : '?';
    shown[k] = '\0';
    moe_ipc_error_set(e, status, status >= 500 ? "server_error" : "invalid_request_error", code,
                      NULL, "%s%s%s%s", what, n ? ": '" : "", shown, n ? "'" : "");
    return status;
}

/* one line: [p, *end) without its CR LF / LF; NULL when no LF yet */
static const char *line_end(const char *p, const char *lim, const char **next)
{
    const char *lf = memchr(p, '\n', (size_t)(lim - p));
    if (!lf)
        return NULL;
    *next = lf + 1;
    return lf > p && lf[-1] == '\r' ? lf - 1 : lf;
}

static int check_request_line(const char *p, const char *end, struct moe_ipc_error *e)
{
    const char *sp1 = memchr(p, ' ', (size_t)(end - p));
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(end - sp1 - 1)) : NULL;
    if (!sp1 || !sp2 || sp1 == p || sp2 == sp1 + 1 || memchr(sp2 + 1, ' ', (size_t)(end - sp2 - 1)))
        return bad(e, 400, "bad_request",
                   "malformed request line (want METHOD SP TARGET SP HTTP/1.x)", p,
                   (size_t)(end - p));
    for (const char *q = p; q < sp1; q++)
        if (!is_tchar((unsigned char)*q))
            return bad(e, 400, "bad_request", "malformed method", p, (size_t)(sp1 - p));
    for (const char *q = sp1 + 1; q < sp2; q++)
        if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f)
            return bad(e, 400, "bad_request", "malformed request target", sp1 + 1,
                       (size_t)(sp2 - sp1 - 1));
    size_t vn = (size_t)(end - sp2 - 1);
    const char *v = sp2 + 1;
    if (vn != 8 || memcmp(v, "HTTP/", 5) || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
        v[7] < '0' || v[7] > '9')
        return bad(e, 400, "bad_request", "malformed HTTP version", v, vn);
    if (v[5] != '1')
        return bad(e, 505, "http_version_not_supported", "this server speaks HTTP/1.0 and 1.1",
                   v, vn);
    return 0;
}

/* a field value's [*v, *vend), optional whitespace trimmed */
static void trim(const char **v, const char **vend)
{
    while (*v < *vend && (**v == ' ' || **v == '\t'))
        (*v)++;
    while (*vend > *v && ((*vend)[-1] == ' ' || (*vend)[-1] == '\t'))
        (*vend)--;
}

static bool field_is(const char *name, size_t n, const char *want)
{
    return n == strlen(want) && strncasecmp(name, want, n) == 0;
}

int moe_ipc_head_check(const char *buf, size_t len, size_t max_head, size_t *head_len,
                       struct moe_ipc_error *e)
{
    const char *p = buf, *lim = buf + len, *next, *end;
    int n_cl = 0, n_te = 0, rc;

    *head_len = 0;
    /* RFC 9112 §2.2: empty lines before the request line are skipped */
    while (p < lim && (*p == '\r' || *p == '\n'))
        p++;
    if (!(end = line_end(p, lim, &next))) {
        if (len > max_head)
            return bad(e, 431, "header_too_large", "request line too long", NULL, 0);
        /* junk shows before its line ends: a request line starts with a token */
        for (const char *q = p; q < lim && *q != ' '; q++)
            if (!is_tchar((unsigned char)*q))
                return bad(e, 400, "bad_request", "this is not an HTTP request", p,
                           (size_t)(lim - p));
        return -EAGAIN;
    }
    if ((rc = check_request_line(p, end, e)))
        return rc;
    for (p = next;;) {
        if (!(end = line_end(p, lim, &next))) {
            if (len > max_head)
                return bad(e, 431, "header_too_large", "request header block too large", NULL,
                           0);
            return -EAGAIN;
        }
        if (end == p)
            break; /* the empty line: the head is complete */
        if (*p == ' ' || *p == '\t')
            return bad(e, 400, "bad_request", "obsolete line folding in a header field", p,
                       (size_t)(end - p));
        const char *colon = memchr(p, ':', (size_t)(end - p));
        if (!colon || colon == p)
            return bad(e, 400, "bad_request", "malformed header field", p, (size_t)(end - p));
        for (const char *q = p; q < colon; q++)
            if (!is_tchar((unsigned char)*q))
                return bad(e, 400, "bad_request", "malformed header field name", p,
                           (size_t)(colon - p));
        const char *v = colon + 1, *vend = end;
        trim(&v, &vend);
        for (const char *q = v; q < vend; q++)
            if (*q == '\0' || *q == '\r' || *q == '\n')
                return bad(e, 400, "bad_request", "control character in a header field", p,
                           (size_t)(colon - p));
        size_t nn = (size_t)(colon - p);
        if (field_is(p, nn, "Content-Length")) {
            if (++n_cl > 1)
                return bad(e, 400, "bad_request", "Content-Length given more than once", NULL, 0);
            if (v == vend || vend - v > 19)
                return bad(e, 400, "bad_request", "Content-Length is not a number", v,
                           (size_t)(vend - v));
            for (const char *q = v; q < vend; q++)
                if (*q < '0' || *q > '9')
                    return bad(e, 400, "bad_request", "Content-Length is not a number", v,
                               (size_t)(vend - v));
        } else if (field_is(p, nn, "Transfer-Encoding")) {
            if (++n_te > 1 || (size_t)(vend - v) != 7 || strncasecmp(v, "chunked", 7) != 0)
                return bad(e, 501, "not_implemented",
                           "Transfer-Encoding other than 'chunked' is not supported", v,
                           (size_t)(vend - v));
        }
        p = next;
    }
    if (n_cl && n_te)
        return bad(e, 400, "bad_request", "both Content-Length and Transfer-Encoding given", NULL,
                   0);
    *head_len = (size_t)(next - buf);
    if (*head_len > max_head)
        return bad(e, 431, "header_too_large", "request header block too large", NULL, 0);
    return 0;
}
