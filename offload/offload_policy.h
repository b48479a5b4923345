/* offload: which expert blob leaves a tier when another needs the room.
 *
 * Keys are (layer * n_experts + expert). The residency manager reports every
 * access, insertion and removal; victim() names the resident key to evict
 * among those the caller allows (not pinned, not in flight). A linear scan
 * over the keys: thousands at most, and a victim is only sought on a miss,
 * next to a read of megabytes. Nothing here allocates after create. */
#ifndef MOE_OFFLOAD_POLICY_H
#define MOE_OFFLOAD_POLICY_H

#include <stdbool.h>
#include <stdint.h>

enum moe_cache_policy_kind {
    MOE_CACHE_LRU,    /* least recently used */
    MOE_CACHE_LFU,    /* fewest accesses, ties by recency */
    MOE_CACHE_LFRU,   /* frequency-aware LRU: accesses decayed by age (see the .c) */
    MOE_CACHE_STATIC, /* a static hot set: the lowest calibration score leaves first */
    MOE_CACHE_CYCLIC, /* layer-aware: the longest expected wait until the next use leaves */
};
#define MOE_CACHE_POLICIES 5

/* "lru", "lfu", "lfru", "static", "cyclic"; -EINVAL naming the value otherwise */
int moe_cache_policy_parse(const char *name, enum moe_cache_policy_kind *out);
const char *moe_cache_policy_name(enum moe_cache_policy_kind k);

struct moe_cache_policy;
/* keys 0..n_keys-1. score[n_keys]: calibration hotness (higher = hotter),
 * required by STATIC (-EINVAL without), ignored by the others. */
int moe_cache_policy_create(enum moe_cache_policy_kind kind, uint32_t n_keys,
                            const double *score, struct moe_cache_policy **out);
void moe_cache_policy_free(struct moe_cache_policy *p); /* NULL: no-op */
/* keys as layer * experts + expert over `layers` layers visited in order each
 * step (CYCLIC needs it; the default is one layer of n_keys experts) */
void moe_cache_policy_set_layout(struct moe_cache_policy *p, uint32_t layers, uint32_t experts);
/* every access, hit or miss; advances the policy's clock */
void moe_cache_policy_access(struct moe_cache_policy *p, uint32_t key);
void moe_cache_policy_insert(struct moe_cache_policy *p, uint32_t key); /* became resident */
void moe_cache_policy_remove(struct moe_cache_policy *p, uint32_t key); /* left */
/* the resident key to evict among those evictable(ctx, key) allows (NULL:
 * all); -1 when there is none */
int64_t moe_cache_policy_victim(struct moe_cache_policy *p,
                                bool (*evictable)(void *ctx, uint32_t key), void *ctx);

#endif
