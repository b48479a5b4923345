/* A process-wide metrics registry rendered as Prometheus text. Updates are
 * lock-free (atomics) so any thread may count; registration takes a lock
 * and is meant for start-up. */
#ifndef MOE_COMMON_METRICS_H
#define MOE_COMMON_METRICS_H

#include <stddef.h>

struct moe_metric;

/* labels: NULL or a Prometheus label list without braces, e.g.
 * "status=\"200\"". The same name with other labels is the same family
 * (one HELP/TYPE). Registering an identical name+labels twice returns the
 * existing metric. */
struct moe_metric *moe_metric_counter(const char *name, const char *help, const char *labels);
struct moe_metric *moe_metric_gauge(const char *name, const char *help, const char *labels);
/* buckets: upper bounds, increasing; +Inf is implicit */
struct moe_metric *moe_metric_histogram(const char *name, const char *help, const char *labels,
                                        const double *buckets, size_t n_buckets);

/* Updates never lock and never fail: a NULL metric (failed registration)
 * or one of the wrong type is ignored, as is a negative add to a counter.
 * Registration errors (bad name or labels, the same name with another
 * type, the same series with other buckets) return NULL and are logged. */
void moe_metric_inc(struct moe_metric *m);             /* counter += 1 */
void moe_metric_add(struct moe_metric *m, double v);   /* counter / gauge += v */
void moe_metric_set(struct moe_metric *m, double v);   /* gauge = v */
void moe_metric_observe(struct moe_metric *m, double v); /* histogram */
double moe_metric_value(const struct moe_metric *m);   /* counter/gauge value, histogram count */

/* The whole registry in Prometheus text exposition format 0.0.4 (malloc'ed;
 * NULL when out of memory): families in registration order, one HELP (left
 * out when the help text is empty) and one TYPE line each. */
char *moe_metrics_render(void);

/* A label value escaped for a labels string (backslash, double quote,
 * newline), e.g. to build "model=\"<escaped>\"" from a name read from a file.
 * Writes at most cap bytes with the NUL and returns the full length (as
 * snprintf). The registration functions escape a raw backslash or newline
 * in a value themselves, but cannot tell a raw double quote (or a raw
 * backslash followed by '\\', '"' or 'n') from an escape: use this then. */
size_t moe_metric_label_escape(const char *value, char *out, size_t cap);

/* Tests only: frees every metric. No pointer returned before may be used
 * afterwards, and no other thread may be updating metrics. */
void moe_metrics_reset(void);

#endif
