/* offload: expert access traces, recorded from real traffic and replayed by
 * the cache simulator (offload_sim.h, moe-bench cache).
 *
 * A trace is text:
 *   # moed-trace 1 layers=L experts=E
 *   <step> <layer> <expert> [<expert> ...]        one layer's needs in one step
 *   p <step> <layer> <expert> [<expert> ...]      a prefetcher's guess for them
 * A step is one forward pass (one decode step of a batch); a prediction line
 * comes before the access line it guessed. */
#ifndef MOE_OFFLOAD_TRACE_H
#define MOE_OFFLOAD_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct moe_trace_writer;
/* Creates (truncates) path and writes the header. */
int moe_trace_writer_open(const char *path, int32_t layers, int32_t experts,
                          struct moe_trace_writer **out);
int moe_trace_writer_access(struct moe_trace_writer *w, int64_t step, int32_t layer,
                            const int32_t *experts, int32_t n);
int moe_trace_writer_predict(struct moe_trace_writer *w, int64_t step, int32_t layer,
                             const int32_t *experts, int32_t n);
/* flushes and closes; NULL: no-op; the first write error, if any */
int moe_trace_writer_close(struct moe_trace_writer *w);

/* A trace in memory: events in file order. */
struct moe_trace_event {
    int64_t step;
    int32_t layer;
    bool predict;
    uint32_t first, n; /* experts[first .. first + n) */
};
struct moe_trace {
    int32_t layers, experts;
    struct moe_trace_event *ev;
    size_t n_ev;
    int32_t *experts_of; /* all events' experts */
    size_t n_experts_of;
};
/* -EINVAL naming "file:line" for a malformed line */
int moe_trace_read(const char *path, struct moe_trace *out);
void moe_trace_free(struct moe_trace *t);

#endif
