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

void moe_metric_inc(struct moe_metric *m);             /* counter += 1 */
void moe_metric_add(struct moe_metric *m, double v);   /* counter / gauge += v */
void moe_metric_set(struct moe_metric *m, double v);   /* gauge = v */
void moe_metric_observe(struct moe_metric *m, double v); /* histogram */
double moe_metric_value(const struct moe_metric *m);   /* counter/gauge value, histogram count */

/* The whole registry in Prometheus text exposition format (malloc'ed). */
char *moe_metrics_render(void);

#endif
