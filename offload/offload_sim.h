/* offload: replays an expert access trace against a cache policy with a
 * budget of equal slots (as the host tier keeps them), or against Belady's
 * optimal MIN (evict the resident expert whose next use lies furthest ahead:
 * no online policy can hit more). moe-bench cache drives it. */
#ifndef MOE_OFFLOAD_SIM_H
#define MOE_OFFLOAD_SIM_H

#include <stdbool.h>
#include <stdint.h>

#include "offload/offload_policy.h"
#include "offload/offload_trace.h"

#define MOE_SIM_BELADY MOE_CACHE_POLICIES /* a "policy" only the simulator has */

struct moe_sim_result {
    uint64_t hits, misses, evictions;
    uint64_t prefetched, prefetch_used, prefetch_wasted; /* with prefetch */
    double hit_rate;         /* of the accesses (a prefetched expert found in place is a hit) */
    double reads_per_access; /* experts read (misses and prefetches) per access */
};

/* policy: an enum moe_cache_policy_kind or MOE_SIM_BELADY; slots >= the
 * largest event's expert count; score[layers * experts] for STATIC.
 * prefetch: every one of the trace's guesses is filled ahead of need, as the
 * tier does with prefetch = yes (not for Belady, which needs no guesses). */
int moe_sim_run(const struct moe_trace *t, int policy, uint32_t slots, const double *score,
                bool prefetch, struct moe_sim_result *out);

/* Prefetch quality from the trace's prediction lines: recall = needed experts
 * that were predicted / needed experts (events with a prediction), wasted =
 * predicted experts not needed / predicted experts. */
void moe_sim_prefetch(const struct moe_trace *t, double *recall, double *wasted,
                      uint64_t *events);

#endif
