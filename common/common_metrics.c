/* The process-wide metrics registry.
 *
 * Families (one name, one type, one help text) are kept in registration
 * order; each holds its series (one label set each), also in registration
 * order. Registration and rendering take one mutex; updates only touch
 * atomics, so any thread may count without locking:
 *   counter   an integer part (inc and integral adds: one fetch_add) plus a
 *             double part (fractional adds: CAS on the bit pattern);
 *   gauge     one double, CAS on its bit pattern (set and add must not race);
 *   histogram one integer count per bucket (non-cumulative; +Inf last) and
 *             the sum as a double. _count is the sum of the bucket counts, so
 *             a scrape always sees _count == the +Inf bucket.
 * Nothing registered is ever freed (metrics live as long as the process),
 * except by moe_metrics_reset() in tests. */
#include "common/common_metrics.h"

#include "common/common.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum metric_type { MT_COUNTER, MT_GAUGE, MT_HISTOGRAM };

static const char *const type_names[] = {"counter", "gauge", "histogram"};

struct family;

struct moe_metric {
    struct family *fam;
    char *labels; /* canonical `a="x",b="y"` (values escaped), "" for none */
    struct moe_metric *next;
    /* counter / gauge */
    _Atomic uint64_t ival; /* counter: integral increments */
    _Atomic uint64_t dval; /* double bits: gauge value, counter fractional part */
    /* histogram */
    size_t n_bounds;
    double *bounds;            /* [n_bounds], strictly increasing, finite */
    _Atomic uint64_t *buckets; /* [n_bounds + 1]: the last is (bounds[n-1], +Inf] */
    _Atomic uint64_t sum;      /* double bits */
};

struct family {
    char *name, *help;
    enum metric_type type;
    struct moe_metric *first, *last;
    struct family *next;
};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static struct family *fam_first, *fam_last;

/* ---- doubles in atomics ---------------------------------------------------- */

static inline uint64_t d2u(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

static inline double u2d(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof(d));
    return d;
}

static void atomic_add_double(_Atomic uint64_t *p, double v)
{
    uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(p, &old, d2u(u2d(old) + v),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

/* ---- names and labels ------------------------------------------------------- */

static bool valid_metric_name(const char *s)
{
    if (!s || !*s)
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(p > s && c >= '0' && c <= '9'))
            return false;
    }
    return true;
}

/* Label values and help text: backslash and newline always escaped, the
 * double quote only inside label values (exposition format 0.0.4). */
static void sb_escaped(struct moe_sbuf *b, const char *s, size_t n, bool quote)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\\')
            moe_sbuf_puts(b, "\\\\");
        else if (c == '\n')
            moe_sbuf_puts(b, "\\n");
        else if (c == '"' && quote)
            moe_sbuf_puts(b, "\\\"");
        else
            moe_sbuf_putc(b, c);
    }
}

size_t moe_metric_label_escape(const char *value, char *out, size_t cap)
{
    struct moe_sbuf b = {0};
    sb_escaped(&b, value, strlen(value), true);
    if (b.oom) {
        free(b.p);
        if (cap)
            out[0] = '\0';
        return 0;
    }
    size_t n = b.len;
    if (cap) {
        size_t k = MOE_MIN(n, cap - 1);
        if (k)
            memcpy(out, b.p, k);
        out[k] = '\0';
    }
    free(b.p);
    return n;
}

/* Parses a caller's label list (`a="x", b="y"`) into the canonical form:
 * no spaces, values re-escaped. Escapes the caller already wrote (\\ \" \n)
 * are understood; a backslash before anything else and raw newlines are
 * taken literally and escaped. Returns a malloc'ed string ("" for none) or
 * NULL with *why set. */
static char *canon_labels(const char *in, bool histogram, const char **why)
{
    struct moe_sbuf b = {0};
    moe_sbuf_puts(&b, ""); /* "" rather than NULL for no labels */
    const char *p = in ? in : "";
    size_t n_labels = 0;
    char names[32][64];
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (!*p)
            break;
        const char *name = p;
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_')) {
            *why = "a label name must start with a letter or '_'";
            goto fail;
        }
        while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
               (*p >= '0' && *p <= '9'))
            p++;
        size_t nlen = (size_t)(p - name);
        if (nlen >= sizeof(names[0])) {
            *why = "label name too long";
            goto fail;
        }
        if (nlen >= 2 && name[0] == '_' && name[1] == '_') {
            *why = "label names starting with '__' are reserved";
            goto fail;
        }
        if (histogram && nlen == 2 && !memcmp(name, "le", 2)) {
            *why = "'le' is reserved in histograms";
            goto fail;
        }
        for (size_t i = 0; i < n_labels; i++)
            if (strlen(names[i]) == nlen && !memcmp(names[i], name, nlen)) {
                *why = "a label name appears twice";
                goto fail;
            }
        if (n_labels == MOE_ARRAY_SIZE(names)) {
            *why = "too many labels";
            goto fail;
        }
        memcpy(names[n_labels], name, nlen);
        names[n_labels++][nlen] = '\0';
        while (*p == ' ')
            p++;
        if (*p++ != '=') {
            *why = "expected '=' after a label name";
            goto fail;
        }
        while (*p == ' ')
            p++;
        if (*p++ != '"') {
            *why = "a label value must be in double quotes";
            goto fail;
        }
        if (b.len)
            moe_sbuf_putc(&b, ',');
        moe_sbuf_put(&b, name, nlen);
        moe_sbuf_puts(&b, "=\"");
        for (;;) {
            if (!*p) {
                *why = "unterminated label value";
                goto fail;
            }
            if (*p == '"') {
                p++;
                break;
            }
            if (*p == '\\' && (p[1] == '\\' || p[1] == '"' || p[1] == 'n')) {
                moe_sbuf_put(&b, p, 2); /* already escaped */
                p += 2;
                continue;
            }
            sb_escaped(&b, p, 1, true);
            p++;
        }
        moe_sbuf_putc(&b, '"');
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p && *p != ',') {
            *why = "expected ',' between labels";
            goto fail;
        }
    }
    if (b.oom) {
        *why = "out of memory";
        goto fail;
    }
    return b.p;
fail:
    free(b.p);
    return NULL;
}

/* ---- registration -------------------------------------------------------------- */

static struct moe_metric *reg(enum metric_type type, const char *name, const char *help,
                              const char *labels, const double *bounds, size_t n_bounds)
{
    const char *why = NULL;
    if (!valid_metric_name(name)) {
        moe_log(MOE_LOG_ERR, "metrics: invalid metric name '%s'", name ? name : "(null)");
        return NULL;
    }
    char *canon = canon_labels(labels, type == MT_HISTOGRAM, &why);
    if (!canon) {
        moe_log(MOE_LOG_ERR, "metrics: %s{%s}: %s", name, labels ? labels : "", why);
        return NULL;
    }
    /* +Inf is implicit: a trailing one given explicitly is dropped */
    if (type == MT_HISTOGRAM && n_bounds > 0 && isinf(bounds[n_bounds - 1]) &&
        bounds[n_bounds - 1] > 0)
        n_bounds--;
    for (size_t i = 0; type == MT_HISTOGRAM && i < n_bounds; i++) {
        if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1]))) {
            moe_log(MOE_LOG_ERR, "metrics: %s: histogram buckets must be finite and increasing "
                    "(bucket %zu)", name, i);
            free(canon);
            return NULL;
        }
    }

    struct moe_metric *m = NULL;
    pthread_mutex_lock(&reg_lock);
    struct family *f = fam_first;
    while (f && strcmp(f->name, name))
        f = f->next;
    if (f && f->type != type) {
        moe_log(MOE_LOG_ERR, "metrics: %s registered as a %s, now asked for as a %s", name,
                type_names[f->type], type_names[type]);
        goto out;
    }
    if (f) {
        for (m = f->first; m; m = m->next)
            if (!strcmp(m->labels, canon))
                break;
        if (m) {
            if (type == MT_HISTOGRAM &&
                (m->n_bounds != n_bounds ||
                 (n_bounds && memcmp(m->bounds, bounds, n_bounds * sizeof(double))))) {
                moe_log(MOE_LOG_ERR, "metrics: %s{%s} registered again with other buckets",
                        name, canon);
                m = NULL;
            }
            goto out;
        }
    } else {
        f = calloc(1, sizeof(*f));
        if (!f || !(f->name = strdup(name)) || !(f->help = strdup(help ? help : ""))) {
            if (f) {
                free(f->name);
                free(f);
            }
            goto oom;
        }
        f->type = type;
        /* linked in below, once it has a series: a family is never empty */
    }

    m = calloc(1, sizeof(*m));
    if (!m)
        goto oom_fam;
    m->fam = f;
    m->labels = canon;
    canon = NULL;
    if (type == MT_HISTOGRAM) {
        m->n_bounds = n_bounds;
        m->bounds = malloc((n_bounds ? n_bounds : 1) * sizeof(double));
        m->buckets = calloc(n_bounds + 1, sizeof(m->buckets[0]));
        if (!m->bounds || !m->buckets) {
            free(m->bounds);
            free((void *)m->buckets);
            free(m->labels);
            free(m);
            m = NULL;
            goto oom_fam;
        }
        if (n_bounds)
            memcpy(m->bounds, bounds, n_bounds * sizeof(double));
    }
    if (!f->first) {
        if (fam_last)
            fam_last->next = f;
        else
            fam_first = f;
        fam_last = f;
        f->first = m;
    } else {
        f->last->next = m;
    }
    f->last = m;
    goto out;

oom_fam:
    if (!f->first) {
        free(f->name);
        free(f->help);
        free(f);
    }
oom:
    moe_log(MOE_LOG_ERR, "metrics: %s: out of memory", name);
    m = NULL;
out:
    pthread_mutex_unlock(&reg_lock);
    free(canon);
    return m;
}

struct moe_metric *moe_metric_counter(const char *name, const char *help, const char *labels)
{
    return reg(MT_COUNTER, name, help, labels, NULL, 0);
}

struct moe_metric *moe_metric_gauge(const char *name, const char *help, const char *labels)
{
    return reg(MT_GAUGE, name, help, labels, NULL, 0);
}

struct moe_metric *moe_metric_histogram(const char *name, const char *help, const char *labels,
                                        const double *buckets, size_t n_buckets)
{
    if (n_buckets && !buckets) {
        moe_log(MOE_LOG_ERR, "metrics: %s: no bucket array", name ? name : "(null)");
        return NULL;
    }
    return reg(MT_HISTOGRAM, name, help, labels, buckets, n_buckets);
}

/* ---- updates (lock-free; NULL and wrong-type metrics are ignored, so a
 * failed registration never takes the daemon down) ---------------------------- */

void moe_metric_inc(struct moe_metric *m)
{
    if (m && m->fam->type == MT_COUNTER)
        atomic_fetch_add_explicit(&m->ival, 1, memory_order_relaxed);
    else if (m && m->fam->type == MT_GAUGE)
        atomic_add_double(&m->dval, 1.0);
}

void moe_metric_add(struct moe_metric *m, double v)
{
    if (!m)
        return;
    if (m->fam->type == MT_GAUGE) {
        atomic_add_double(&m->dval, v);
    } else if (m->fam->type == MT_COUNTER) {
        if (!(v >= 0)) /* counters only go up; NaN is dropped too */
            return;
        if (v < 0x1p53 && v == floor(v))
            atomic_fetch_add_explicit(&m->ival, (uint64_t)v, memory_order_relaxed);
        else
            atomic_add_double(&m->dval, v);
    }
}

void moe_metric_set(struct moe_metric *m, double v)
{
    if (m && m->fam->type == MT_GAUGE)
        atomic_store_explicit(&m->dval, d2u(v), memory_order_relaxed);
}

void moe_metric_observe(struct moe_metric *m, double v)
{
    if (!m || m->fam->type != MT_HISTOGRAM)
        return;
    /* first bucket whose bound is >= v (le = "less or equal"); NaN lands in +Inf */
    size_t lo = 0, hi = m->n_bounds;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v <= m->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    if (isnan(v))
        lo = m->n_bounds;
    atomic_fetch_add_explicit(&m->buckets[lo], 1, memory_order_relaxed);
    atomic_add_double(&m->sum, v);
}

static uint64_t hist_count(const struct moe_metric *m)
{
    uint64_t c = 0;
    for (size_t i = 0; i <= m->n_bounds; i++)
        c += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
    return c;
}

double moe_metric_value(const struct moe_metric *m)
{
    if (!m)
        return 0;
    switch (m->fam->type) {
    case MT_COUNTER:
        return (double)atomic_load_explicit(&m->ival, memory_order_relaxed) +
               u2d(atomic_load_explicit(&m->dval, memory_order_relaxed));
    case MT_GAUGE:
        return u2d(atomic_load_explicit(&m->dval, memory_order_relaxed));
    case MT_HISTOGRAM:
        return (double)hist_count(m);
    }
    return 0;
}

/* ---- rendering ------------------------------------------------------------------- */

/* Integral values as integers (counts stay readable: 1000000, not 1e+06);
 * the rest as the shortest text that reads back as the same double; the
 * format's own spellings of the special values. */
static void fmt_double(char *buf, size_t cap, double v)
{
    if (isnan(v)) {
        snprintf(buf, cap, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, cap, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == floor(v) && fabs(v) < 0x1p53) {
        snprintf(buf, cap, "%.0f", v); /* keeps the sign of -0 */
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

static void put_series(struct moe_sbuf *b, const char *name, const char *suffix, const char *labels,
                       const char *extra_label, const char *value)
{
    moe_sbuf_puts(b, name);
    moe_sbuf_puts(b, suffix);
    bool any = labels[0] || extra_label;
    if (any) {
        moe_sbuf_putc(b, '{');
        moe_sbuf_puts(b, labels);
        if (extra_label) {
            if (labels[0])
                moe_sbuf_putc(b, ',');
            moe_sbuf_puts(b, extra_label);
        }
        moe_sbuf_putc(b, '}');
    }
    moe_sbuf_putc(b, ' ');
    moe_sbuf_puts(b, value);
    moe_sbuf_putc(b, '\n');
}

char *moe_metrics_render(void)
{
    struct moe_sbuf b = {0};
    moe_sbuf_puts(&b, "");
    char num[64], le[96];
    pthread_mutex_lock(&reg_lock);
    for (struct family *f = fam_first; f; f = f->next) {
        if (f->help[0]) {
            moe_sbuf_puts(&b, "# HELP ");
            moe_sbuf_puts(&b, f->name);
            moe_sbuf_putc(&b, ' ');
            sb_escaped(&b, f->help, strlen(f->help), false);
            moe_sbuf_putc(&b, '\n');
        }
        moe_sbuf_puts(&b, "# TYPE ");
        moe_sbuf_puts(&b, f->name);
        moe_sbuf_putc(&b, ' ');
        moe_sbuf_puts(&b, type_names[f->type]);
        moe_sbuf_putc(&b, '\n');
        for (struct moe_metric *m = f->first; m; m = m->next) {
            if (f->type != MT_HISTOGRAM) {
                fmt_double(num, sizeof(num), moe_metric_value(m));
                put_series(&b, f->name, "", m->labels, NULL, num);
                continue;
            }
            /* one snapshot of the buckets, so _count equals the +Inf bucket */
            uint64_t cum = 0;
            for (size_t i = 0; i <= m->n_bounds; i++) {
                cum += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
                if (i < m->n_bounds)
                    fmt_double(num, sizeof(num), m->bounds[i]);
                snprintf(le, sizeof(le), "le=\"%s\"", i < m->n_bounds ? num : "+Inf");
                char cnt[32];
                snprintf(cnt, sizeof(cnt), "%llu", (unsigned long long)cum);
                put_series(&b, f->name, "_bucket", m->labels, le, cnt);
            }
            fmt_double(num, sizeof(num), u2d(atomic_load_explicit(&m->sum, memory_order_relaxed)));
            put_series(&b, f->name, "_sum", m->labels, NULL, num);
            snprintf(num, sizeof(num), "%llu", (unsigned long long)cum);
            put_series(&b, f->name, "_count", m->labels, NULL, num);
        }
    }
    pthread_mutex_unlock(&reg_lock);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

void moe_metrics_reset(void)
{
    pthread_mutex_lock(&reg_lock);
    struct family *f = fam_first;
    while (f) {
        struct family *fn = f->next;
        struct moe_metric *m = f->first;
        while (m) {
            struct moe_metric *mn = m->next;
            free(m->labels);
            free(m->bounds);
            free((void *)m->buckets);
            free(m);
            m = mn;
        }
        free(f->name);
        free(f->help);
        free(f);
        f = fn;
    }
    fam_first = fam_last = NULL;
    pthread_mutex_unlock(&reg_lock);
}
