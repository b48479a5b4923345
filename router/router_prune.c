/* Online dynamic pruning around the top-k: which layers, which betas, which
 * prefill tokens are protected (docs/ALGORITHMS.md section 2). The rule
 * itself lives in moe_router_topk_prune. */
#include "router/router.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void moe_router_prune_auto_layers(int32_t n_layers, bool *sel)
{
    /* never the first two nor the last; of the rest, the middle ones: drop
     * one more layer from each end while more than half the model is left
     * (32 layers -> 9..23, 16 -> 5..11, 8 -> 3..5, 4 -> 2) */
    for (int32_t l = 0; l < n_layers; l++)
        sel[l] = false;
    int32_t lo = 2, hi = n_layers - 2; /* inclusive */
    while (hi - lo + 1 > n_layers / 2 && hi - lo >= 2) {
        lo++;
        hi--;
    }
    for (int32_t l = lo; l <= hi; l++)
        sel[l] = true;
}

static int why(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int why(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (buf && cap)
        vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static const char *skip_blanks(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* "A" or "A-B" at *p; advances *p */
static int parse_range(const char **pp, int32_t n_layers, int32_t *a, int32_t *b, char *w,
                       size_t cap)
{
    const char *p = skip_blanks(*pp);
    char *end;
    if (!isdigit((unsigned char)*p))
        return why(w, cap, "'%.20s' is not a layer number or range", p);
    long x = strtol(p, &end, 10), y = x;
    p = skip_blanks(end);
    if (*p == '-') {
        p = skip_blanks(p + 1);
        if (!isdigit((unsigned char)*p))
            return why(w, cap, "'%.20s' does not end a layer range", p);
        y = strtol(p, &end, 10);
        p = skip_blanks(end);
    }
    if (y < x)
        return why(w, cap, "layer range %ld-%ld is reversed", x, y);
    if (y >= n_layers)
        return why(w, cap, "layer %ld is past the model's last layer (%d)", y, n_layers - 1);
    *a = (int32_t)x;
    *b = (int32_t)y;
    *pp = p;
    return 0;
}

int moe_router_parse_layers(const char *s, int32_t n_layers, bool *sel, char *w, size_t cap)
{
    for (int32_t l = 0; l < n_layers; l++)
        sel[l] = false;
    const char *p = skip_blanks(s ? s : "");
    while (*p) {
        int32_t a, b;
        int rc = parse_range(&p, n_layers, &a, &b, w, cap);
        if (rc)
            return rc;
        for (int32_t l = a; l <= b; l++)
            sel[l] = true;
        if (*p == ',')
            p = skip_blanks(p + 1);
        else if (*p)
            return why(w, cap, "unexpected '%.20s' after a layer (items are separated by commas)",
                       p);
    }
    return 0;
}

int moe_router_parse_betas(const char *s, int32_t n_layers, float *beta, char *w, size_t cap)
{
    const char *p = skip_blanks(s ? s : "");
    while (*p) {
        int32_t a, b;
        int rc = parse_range(&p, n_layers, &a, &b, w, cap);
        if (rc)
            return rc;
        if (*p != ':')
            return why(w, cap, "layers %d-%d: expected ':BETA' after the layers", a, b);
        p = skip_blanks(p + 1);
        char *end;
        double x = strtod(p, &end);
        if (end == p || !(x >= 0.0 && x <= 1.0))
            return why(w, cap, "layers %d-%d: beta '%.20s' is not a number in [0, 1]", a, b, p);
        for (int32_t l = a; l <= b; l++)
            beta[l] = (float)x;
        p = skip_blanks(end);
        if (*p == ',')
            p = skip_blanks(p + 1);
        else if (*p)
            return why(w, cap, "unexpected '%.20s' after a beta (items are separated by commas)",
                       p);
    }
    return 0;
}

void moe_router_protect(const float *h, int64_t dim, const int32_t *pos, int32_t n,
                        float fraction, float *importance, bool *protect)
{
    /* 0.02f is a hair below 0.02: without the slack 100 tokens would protect 1 */
    int32_t n_protect = fraction > 0.0f ? (int32_t)floor((double)fraction * n + 1e-6) : 0;
    for (int32_t i = 0; i < n; i++)
        protect[i] = false;
    if (n_protect <= 0)
        return;
    double L = (double)pos[n - 1] + 1.0;
    for (int32_t i = 0; i < n; i++) {
        const float *x = h + (size_t)i * (size_t)dim;
        double l1 = 0.0;
        for (int64_t d = 0; d < dim; d++)
            l1 += fabs((double)x[d]);
        importance[i] = (float)(l1 / (L - pos[i]));
    }
    /* a few picks out of at most a chunk: repeated selection is enough */
    for (int32_t k = 0; k < n_protect && k < n; k++) {
        int32_t best = -1;
        for (int32_t i = 0; i < n; i++)
            if (!protect[i] && (best < 0 || importance[i] > importance[best]))
                best = i;
        protect[best] = true;
    }
}
