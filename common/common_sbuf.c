/* A growing NUL-terminated string (metrics exposition, regex rewriting): on
 * allocation failure it stops growing and remembers it (oom), so callers
 * check once at the end. */
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

void moe_sbuf_put(struct moe_sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void moe_sbuf_puts(struct moe_sbuf *b, const char *s)
{
    moe_sbuf_put(b, s, strlen(s));
}

void moe_sbuf_putc(struct moe_sbuf *b, char c)
{
    moe_sbuf_put(b, &c, 1);
}
