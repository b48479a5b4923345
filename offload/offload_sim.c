/* Cache simulation over a recorded trace (offload_sim.h). */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "offload/offload_sim.h"

struct pin_ctx {
    const uint64_t *pinned;
    uint64_t now;
};

static bool not_pinned(void *ctx, uint32_t key)
{
    const struct pin_ctx *p = ctx;
    return p->pinned[key] != p->now;
}

/* Takes resident key v out (pol: NULL for Belady), counting a prefetched
 * blob never used as waste. */
static void evict(uint32_t v, struct moe_cache_policy *pol, bool *res, bool *fetched,
                  uint32_t *used, struct moe_sim_result *out)
{
    if (fetched[v])
        out->prefetch_wasted++;
    res[v] = fetched[v] = false;
    if (pol)
        moe_cache_policy_remove(pol, v);
    out->evictions++;
    (*used)--;
}

/* Fills the trace's guess for the next layer ahead of need, as
 * moe_offload_prefetch does: slots of the layer being computed (stamp) and of
 * the guess itself stay; when nothing else can go, the rest of the guess is
 * dropped. */
static void prefetch_guess(const struct moe_trace *t, const struct moe_trace_event *ev,
                           uint64_t stamp, struct moe_cache_policy *pol, uint32_t slots,
                           uint64_t *pinned, bool *res, bool *fetched, uint32_t *used,
                           struct moe_sim_result *out)
{
    for (uint32_t j = 0; j < ev->n; j++)
        pinned[(size_t)ev->layer * t->experts + t->experts_of[ev->first + j]] = stamp;
    for (uint32_t j = 0; j < ev->n; j++) {
        size_t key = (size_t)ev->layer * t->experts + t->experts_of[ev->first + j];
        if (res[key])
            continue;
        if (*used == slots) {
            struct pin_ctx pc = {pinned, stamp};
            int64_t v = moe_cache_policy_victim(pol, not_pinned, &pc);
            if (v < 0)
                return;
            evict((uint32_t)v, pol, res, fetched, used, out);
        }
        res[key] = fetched[key] = true;
        (*used)++;
        moe_cache_policy_insert(pol, (uint32_t)key);
        out->prefetched++;
    }
}

int moe_sim_run(const struct moe_trace *t, int policy, uint32_t slots, const double *score,
                bool prefetch, struct moe_sim_result *out)
{
    memset(out, 0, sizeof(*out));
    size_t n_keys = (size_t)t->layers * (size_t)t->experts;
    uint64_t *pinned = calloc(n_keys, sizeof(uint64_t));
    bool *res = calloc(n_keys, sizeof(bool));
    bool *fetched = calloc(n_keys, sizeof(bool)); /* prefetched, not used yet */
    size_t *next = NULL, *next_of_occ = NULL; /* Belady */
    struct moe_cache_policy *pol = NULL;
    int rc = 0;
    if (!pinned || !res || !fetched) {
        rc = moe_err(-ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < t->n_ev; i++)
        if (!t->ev[i].predict && t->ev[i].n > slots) {
            rc = moe_err(-EINVAL, "%u slots cannot hold the %u experts one layer needs at once",
                         slots, t->ev[i].n);
            goto out;
        }
    if (policy == MOE_SIM_BELADY) {
        /* next_of_occ[j]: the event index of the next access of experts_of[j]'s key */
        next = malloc(n_keys * sizeof(size_t));
        next_of_occ = malloc((t->n_experts_of + 1) * sizeof(size_t));
        if (!next || !next_of_occ) {
            rc = moe_err(-ENOMEM, "out of memory");
            goto out;
        }
        for (size_t k = 0; k < n_keys; k++)
            next[k] = SIZE_MAX;
        for (size_t i = t->n_ev; i-- > 0;) {
            const struct moe_trace_event *ev = &t->ev[i];
            if (ev->predict)
                continue;
            for (uint32_t j = 0; j < ev->n; j++) {
                size_t key = (size_t)ev->layer * t->experts + t->experts_of[ev->first + j];
                next_of_occ[ev->first + j] = next[key];
                next[key] = i;
            }
        }
    } else if ((rc = moe_cache_policy_create((enum moe_cache_policy_kind)policy,
                                             (uint32_t)n_keys, score, &pol)) < 0) {
        goto out;
    } else {
        moe_cache_policy_set_layout(pol, (uint32_t)t->layers, (uint32_t)t->experts);
    }
    if (prefetch && !pol) {
        rc = moe_err(-EINVAL, "Belady's MIN is replayed without prefetch");
        goto out;
    }
    uint32_t used = 0;
    uint64_t stamp = 0; /* pins of the last layer computed */
    for (size_t i = 0; i < t->n_ev; i++) {
        const struct moe_trace_event *ev = &t->ev[i];
        if (ev->predict) {
            if (prefetch)
                prefetch_guess(t, ev, stamp, pol, slots, pinned, res, fetched, &used, out);
            continue;
        }
        stamp = i + 1;
        for (uint32_t j = 0; j < ev->n; j++)
            pinned[(size_t)ev->layer * t->experts + t->experts_of[ev->first + j]] = i + 1;
        for (uint32_t j = 0; j < ev->n; j++) {
            size_t key = (size_t)ev->layer * t->experts + t->experts_of[ev->first + j];
            if (pol)
                moe_cache_policy_access(pol, (uint32_t)key);
            else
                next[key] = next_of_occ[ev->first + j];
            if (res[key]) {
                out->hits++;
                if (fetched[key]) {
                    out->prefetch_used++;
                    fetched[key] = false;
                }
                continue;
            }
            out->misses++;
            if (used == slots) {
                int64_t v = -1;
                if (pol) {
                    struct pin_ctx pc = {pinned, i + 1};
                    v = moe_cache_policy_victim(pol, not_pinned, &pc);
                } else {
                    size_t far = 0;
                    for (size_t k = 0; k < n_keys; k++)
                        if (res[k] && pinned[k] != i + 1 && (v < 0 || next[k] > far)) {
                            v = (int64_t)k;
                            far = next[k];
                        }
                }
                if (v < 0) {
                    rc = moe_err(-EINVAL, "no slot to evict (slots %u)", slots);
                    goto out;
                }
                evict((uint32_t)v, pol, res, fetched, &used, out);
            }
            res[key] = true;
            used++;
            if (pol)
                moe_cache_policy_insert(pol, (uint32_t)key);
        }
    }
    uint64_t all = out->hits + out->misses;
    out->hit_rate = all ? (double)out->hits / (double)all : 0.0;
    out->reads_per_access = all ? (double)(out->misses + out->prefetched) / (double)all : 0.0;
out:
    moe_cache_policy_free(pol);
    free(pinned);
    free(res);
    free(fetched);
    free(next);
    free(next_of_occ);
    return rc;
}

void moe_sim_prefetch(const struct moe_trace *t, double *recall, double *wasted,
                      uint64_t *events)
{
    uint64_t needed = 0, hit = 0, predicted = 0, waste = 0, n = 0;
    for (size_t i = 1; i < t->n_ev; i++) {
        const struct moe_trace_event *a = &t->ev[i], *p = &t->ev[i - 1];
        if (a->predict || !p->predict || p->step != a->step || p->layer != a->layer)
            continue;
        n++;
        needed += a->n;
        predicted += p->n;
        for (uint32_t j = 0; j < a->n; j++)
            for (uint32_t k = 0; k < p->n; k++)
                if (t->experts_of[a->first + j] == t->experts_of[p->first + k]) {
                    hit++;
                    break;
                }
        waste += p->n;
    }
    *recall = needed ? (double)hit / (double)needed : 0.0;
    *wasted = predicted ? (double)(predicted - hit) / (double)predicted : 0.0;
    *events = n;
}
