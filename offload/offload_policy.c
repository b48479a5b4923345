/* Cache policies of the expert tiers (offload_policy.h).
 *
 * LFRU keeps, per key, an access count that halves every `half_life`
 * accesses of the whole cache (half_life = the number of keys: about one
 * pass over every layer's experts); the victim has the smallest decayed
 * count, i.e. it was used rarely AND not lately. Plain LRU forgets a hot
 * expert after one burst of cold ones; plain LFU never forgets a phase that
 * is over; the decay sits between the two.
 *
 * CYCLIC uses what an MoE forward pass guarantees: every step visits the
 * layers in order, so an expert of the layer just run cannot be needed for
 * L - 1 layer visits, one of the next layer perhaps at once. With p the
 * (decayed) share of its layer's visits that chose the expert, its expected
 * wait until the next use is d + L (1 - p) / p layer visits, d the distance
 * to its layer's next visit; the longest wait leaves first (Belady's rule with
 * the future replaced by its expectation). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "offload/offload_policy.h"

static const char *const names[MOE_CACHE_POLICIES] = {"lru", "lfu", "lfru", "static", "cyclic"};

struct moe_cache_policy {
    enum moe_cache_policy_kind kind;
    uint32_t n;
    uint64_t clock;
    double half_life;
    uint64_t *last;   /* clock of the last access */
    uint64_t *count;  /* accesses */
    double *decayed;  /* LFRU: count decayed to `last` */
    double *score;    /* STATIC */
    bool *resident;
    uint32_t layers, experts; /* layout (CYCLIC) */
    uint32_t cur_layer;       /* layer of the last access */
    double *visits;           /* CYCLIC: decayed visits per layer */
    uint64_t *visit_step;     /* clock of each layer's last counted visit */
};

int moe_cache_policy_parse(const char *name, enum moe_cache_policy_kind *out)
{
    for (int i = 0; i < MOE_CACHE_POLICIES; i++)
        if (!strcmp(name, names[i])) {
            *out = (enum moe_cache_policy_kind)i;
            return 0;
        }
    return moe_err(-EINVAL, "unknown cache policy '%s' (lru, lfu, lfru, static)", name);
}

const char *moe_cache_policy_name(enum moe_cache_policy_kind k)
{
    return (unsigned)k < MOE_CACHE_POLICIES ? names[k] : "?";
}

int moe_cache_policy_create(enum moe_cache_policy_kind kind, uint32_t n_keys,
                            const double *score, struct moe_cache_policy **out)
{
    *out = NULL;
    if ((unsigned)kind >= MOE_CACHE_POLICIES || n_keys == 0)
        return moe_err(-EINVAL, "cache policy: bad kind or no keys");
    if (kind == MOE_CACHE_STATIC && !score)
        return moe_err(-EINVAL, "cache policy static needs calibration scores");
    struct moe_cache_policy *p = calloc(1, sizeof(*p));
    if (!p)
        return moe_err(-ENOMEM, "out of memory");
    p->kind = kind;
    p->n = n_keys;
    p->half_life = n_keys;
    p->last = calloc(n_keys, sizeof(*p->last));
    p->count = calloc(n_keys, sizeof(*p->count));
    p->decayed = calloc(n_keys, sizeof(*p->decayed));
    p->score = calloc(n_keys, sizeof(*p->score));
    p->resident = calloc(n_keys, sizeof(*p->resident));
    p->layers = 1;
    p->experts = n_keys;
    p->visits = calloc(n_keys, sizeof(*p->visits)); /* room for any layout */
    p->visit_step = calloc(n_keys, sizeof(*p->visit_step));
    if (!p->last || !p->count || !p->decayed || !p->score || !p->resident || !p->visits ||
        !p->visit_step) {
        moe_cache_policy_free(p);
        return moe_err(-ENOMEM, "out of memory");
    }
    if (score)
        memcpy(p->score, score, n_keys * sizeof(double));
    *out = p;
    return 0;
}

void moe_cache_policy_free(struct moe_cache_policy *p)
{
    if (!p)
        return;
    free(p->last);
    free(p->count);
    free(p->decayed);
    free(p->score);
    free(p->resident);
    free(p->visits);
    free(p->visit_step);
    free(p);
}

void moe_cache_policy_set_layout(struct moe_cache_policy *p, uint32_t layers, uint32_t experts)
{
    if (layers > 0 && experts > 0 && (uint64_t)layers * experts <= p->n) {
        p->layers = layers;
        p->experts = experts;
    }
}

static double decay(const struct moe_cache_policy *p, uint32_t key)
{
    return p->decayed[key] * exp2(-(double)(p->clock - p->last[key]) / p->half_life);
}

void moe_cache_policy_access(struct moe_cache_policy *p, uint32_t key)
{
    if (key >= p->n)
        return;
    p->clock++;
    uint32_t l = key / p->experts;
    if (l != p->cur_layer || p->visit_step[l] == 0) { /* a new visit of layer l */
        p->visits[l] = p->visits[l] * exp2(-(double)(p->clock - p->visit_step[l]) / p->half_life) + 1.0;
        p->visit_step[l] = p->clock;
    }
    p->cur_layer = l;
    p->decayed[key] = decay(p, key) + 1.0;
    p->last[key] = p->clock;
    p->count[key]++;
}

void moe_cache_policy_insert(struct moe_cache_policy *p, uint32_t key)
{
    if (key < p->n)
        p->resident[key] = true;
}

void moe_cache_policy_remove(struct moe_cache_policy *p, uint32_t key)
{
    if (key < p->n)
        p->resident[key] = false;
}

/* smaller = evict first; ties go to the least recent */
static double rank(const struct moe_cache_policy *p, uint32_t key)
{
    switch (p->kind) {
    case MOE_CACHE_LFU: return (double)p->count[key];
    case MOE_CACHE_LFRU: return decay(p, key);
    case MOE_CACHE_STATIC: return p->score[key];
    case MOE_CACHE_CYCLIC: {
        uint32_t l = key / p->experts, L = p->layers;
        double v = p->visits[l] * exp2(-(double)(p->clock - p->visit_step[l]) / p->half_life);
        double share = (decay(p, key) + 0.1) / (v + 1.0);
        share = share > 1.0 ? 1.0 : share;
        double d = (double)((l + L - p->cur_layer - 1) % L + 1);
        return -(d + (double)L * (1.0 - share) / share); /* longest wait = smallest rank */
    }
    default: return 0.0;
    }
}

int64_t moe_cache_policy_victim(struct moe_cache_policy *p,
                                bool (*evictable)(void *ctx, uint32_t key), void *ctx)
{
    int64_t best = -1;
    double best_rank = 0;
    for (uint32_t k = 0; k < p->n; k++) {
        if (!p->resident[k] || (evictable && !evictable(ctx, k)))
            continue;
        double r = rank(p, k);
        if (best < 0 || r < best_rank || (r == best_rank && p->last[k] < p->last[best])) {
            best = k;
            best_rank = r;
        }
    }
    return best;
}
