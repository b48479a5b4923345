/* Expert access traces: writer and reader (offload_trace.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "offload/offload_trace.h"

struct moe_trace_writer {
    FILE *f;
    char *path;
    int32_t experts;
    int err;
};

int moe_trace_writer_open(const char *path, int32_t layers, int32_t experts,
                          struct moe_trace_writer **out)
{
    *out = NULL;
    struct moe_trace_writer *w = calloc(1, sizeof(*w));
    if (!w || !(w->path = strdup(path))) {
        free(w);
        return moe_err(-ENOMEM, "out of memory");
    }
    if (!(w->f = fopen(path, "w"))) {
        int e = errno;
        free(w->path);
        free(w);
        return moe_err(-e, "%s: cannot create the trace: %s", path, strerror(e));
    }
    w->experts = experts;
    fprintf(w->f, "# moed-trace 1 layers=%d experts=%d\n", layers, experts);
    *out = w;
    return 0;
}

static int line(struct moe_trace_writer *w, const char *pre, int64_t step, int32_t layer,
                const int32_t *experts, int32_t n)
{
    if (!w)
        return 0;
    fprintf(w->f, "%s%" PRId64 " %d", pre, step, layer);
    for (int32_t i = 0; i < n; i++)
        fprintf(w->f, " %d", experts[i]);
    if (fputc('\n', w->f) == EOF && !w->err)
        w->err = -EIO;
    return w->err;
}

int moe_trace_writer_access(struct moe_trace_writer *w, int64_t step, int32_t layer,
                            const int32_t *experts, int32_t n)
{
    return line(w, "", step, layer, experts, n);
}

int moe_trace_writer_predict(struct moe_trace_writer *w, int64_t step, int32_t layer,
                             const int32_t *experts, int32_t n)
{
    return line(w, "p ", step, layer, experts, n);
}

int moe_trace_writer_close(struct moe_trace_writer *w)
{
    if (!w)
        return 0;
    int rc = w->err;
    if (fclose(w->f) != 0 && rc == 0)
        rc = moe_err(-EIO, "%s: cannot write the trace: %s", w->path, strerror(errno));
    else if (rc < 0)
        rc = moe_err(rc, "%s: cannot write the trace", w->path);
    free(w->path);
    free(w);
    return rc;
}

void moe_trace_free(struct moe_trace *t)
{
    if (!t)
        return;
    free(t->ev);
    free(t->experts_of);
    memset(t, 0, sizeof(*t));
}

static int grow(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 1024;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * size);
    if (!q)
        return moe_err(-ENOMEM, "out of memory");
    *p = q;
    *cap = c;
    return 0;
}

int moe_trace_read(const char *path, struct moe_trace *out)
{
    memset(out, 0, sizeof(*out));
    FILE *f = fopen(path, "r");
    if (!f)
        return moe_err(-errno, "%s: cannot open the trace: %s", path, strerror(errno));
    char buf[8192];
    size_t lineno = 0, cap_ev = 0, cap_x = 0;
    int rc = 0;
    if (!fgets(buf, sizeof(buf), f) ||
        sscanf(buf, "# moed-trace 1 layers=%d experts=%d", &out->layers, &out->experts) != 2 ||
        out->layers <= 0 || out->experts <= 0) {
        fclose(f);
        return moe_err(-EINVAL, "%s:1: not a moed trace (expected '# moed-trace 1 layers=L "
                       "experts=E')", path);
    }
    lineno = 1;
    while (rc == 0 && fgets(buf, sizeof(buf), f)) {
        lineno++;
        char *s = buf, *end;
        while (*s == ' ' || *s == '\t')
            s++;
        if (*s == '\n' || *s == 0 || *s == '#')
            continue;
        struct moe_trace_event ev = {0};
        if (*s == 'p' && (s[1] == ' ' || s[1] == '\t')) {
            ev.predict = true;
            s += 2;
        }
        long long step = strtoll(s, &end, 10);
        if (end == s || step < 0) {
            rc = moe_err(-EINVAL, "%s:%zu: expected a step number", path, lineno);
            break;
        }
        s = end;
        long layer = strtol(s, &end, 10);
        if (end == s || layer < 0 || layer >= out->layers) {
            rc = moe_err(-EINVAL, "%s:%zu: expected a layer in 0..%d", path, lineno,
                         out->layers - 1);
            break;
        }
        s = end;
        ev.step = step;
        ev.layer = (int32_t)layer;
        ev.first = (uint32_t)out->n_experts_of;
        for (;;) {
            while (*s == ' ' || *s == '\t')
                s++;
            if (*s == '\n' || *s == 0)
                break;
            long e = strtol(s, &end, 10);
            if (end == s || e < 0 || e >= out->experts) {
                rc = moe_err(-EINVAL, "%s:%zu: expected an expert in 0..%d", path, lineno,
                             out->experts - 1);
                break;
            }
            s = end;
            if ((rc = grow((void **)&out->experts_of, &cap_x, out->n_experts_of + 1,
                           sizeof(int32_t))) < 0)
                break;
            out->experts_of[out->n_experts_of++] = (int32_t)e;
            ev.n++;
        }
        if (rc == 0 && (rc = grow((void **)&out->ev, &cap_ev, out->n_ev + 1, sizeof(ev))) == 0)
            out->ev[out->n_ev++] = ev;
    }
    fclose(f);
    if (rc < 0)
        moe_trace_free(out);
    return rc;
}
