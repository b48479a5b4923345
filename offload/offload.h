/* offload: where each expert of a pack lives while moed serves.
 *
 * Every (layer, expert) blob has its home in the pack file. In tiered mode a
 * host tier of at most host_bytes holds copies of some of them, read with
 * O_DIRECT through io_uring (offload_nvme.h) into one arena allocated on the
 * chosen NUMA placement (offload_host.h); which blobs stay is the cache
 * policy's choice (offload_policy.h). The model asks for the experts a layer
 * needs just before running them (moe_offload_begin: hits are handed out at
 * once, all misses are read together, and moe_offload_wait hands out each as
 * it lands, so the hits run meanwhile), and may announce the next layer's
 * likely experts ahead of time (moe_offload_prefetch), whose reads then run
 * while the current layer computes. The arena is the tier: its size never changes, so the
 * daemon's memory stays inside host_bytes plus the fixed overhead of the
 * dense weights and the tables here.
 *
 * The arena is cut into slots, one blob each, no fragmentation, no
 * allocation on the serving path: equal slots within a class of blobs of
 * about one size (offload_slots.h), so an mcmoe pack's 1-bit experts do not
 * take 3-bit slots; a miss evicts within its class.
 *
 * With no GPU, a resident expert is computed on the CPU where it lies; the GPU
 * tier and the compute-or-fetch cost model sit on top of this one (CUDA
 * builds). One thread (the engine's) uses a moe_offload at a time. */
#ifndef MOE_OFFLOAD_H
#define MOE_OFFLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "offload/offload_host.h"
#include "offload/offload_policy.h"

struct moe_pack;
struct moe_offload;

struct moe_offload_opts {
    size_t host_bytes;                 /* host tier budget (blob bytes resident at most) */
    enum moe_cache_policy_kind policy; /* which blob leaves when room is needed */
    unsigned queue_depth;              /* io_uring submission queue (0: 32) */
    enum moe_numa_mode numa;           /* arena placement */
    bool hugepages;
    bool force_pread;                  /* no io_uring (also the fallback where it is refused) */
    bool prefetch_auto;                /* read a guess ahead only where the cost model
                                          (offload_prefetch.h) expects it to pay */
    const char *trace_path;            /* record every access here (NULL: no trace) */
    const double *score;               /* [L * E] calibration frequency: STATIC needs it */
};

struct moe_offload_stats {
    uint64_t hits, misses, evictions;  /* per expert and acquire */
    uint64_t prefetch_issued;          /* reads started ahead of need */
    uint64_t prefetch_used;            /* of those, needed by the layer they were for */
    uint64_t prefetch_wasted;          /* read, then evicted or skipped by the next step */
    uint64_t prefetch_skipped;         /* guessed, not resident, not read: auto judged waiting cheaper */
    double prefetch_precision;         /* running share of guessed, non-resident experts needed */
    double read_s_per_expert;          /* running time one more read adds to a layer's wait */
    double layer_gap_s;                /* running compute time between two layers' acquires */
    uint64_t reads, bytes_read, read_errors, retries;
    double wait_s;                     /* time acquire spent waiting for reads */
    size_t resident_bytes;             /* blob bytes in the host tier now */
    size_t arena_bytes;                /* the tier's memory (every class's slots) */
    size_t slot_bytes;                 /* the largest class's slot */
    uint32_t slots, slot_classes;
    bool uring, hugepages;
    int numa_node;                     /* -1: interleaved or unknown */
};

/* The host tier for pack's experts. -EINVAL when host_bytes cannot hold all
 * experts of one layer (a batch may route to every one), naming the sizes. */
int moe_offload_open(const struct moe_pack *pack, int32_t n_layers, int32_t n_experts,
                     int32_t top_k, const struct moe_offload_opts *opts,
                     struct moe_offload **out);
void moe_offload_close(struct moe_offload *o); /* NULL: no-op */

/* An acquire of layer l's experts with need[e] set, in two halves so that
 * the resident ones can run while the misses are still being read: begin pins
 * them (they stay put until the next begin), submits the misses together and
 * sets blobs[e] to the bytes (the pack's blob layout) of those resident now,
 * NULL for the others; moe_offload_wait then hands out each of the others, in
 * any order, blocking until its read (or a prefetched read in flight) lands.
 * wait returns 0, or -EIO naming the layer and expert whose blob could not be
 * read or failed its checksum after the retries (the slot is freed; the next
 * request tries again). A begin not followed by every wait leaves nothing
 * inconsistent: the next begin waits for what is still in flight. */
int moe_offload_begin(struct moe_offload *o, int32_t layer, const bool *need,
                      const void **blobs);
int moe_offload_wait(struct moe_offload *o, int32_t expert, const void **blob);

/* Starts reads of layer l's experts with likely[e] set that are not resident,
 * into slots no current expert holds; never blocks, never evicts what the
 * last begin handed out. With prefetch_auto, only when the cost model
 * expects the reads to shorten layer l's wait; the guess is scored against
 * layer l's acquire either way. */
void moe_offload_prefetch(struct moe_offload *o, int32_t layer, const bool *likely);

void moe_offload_get_stats(const struct moe_offload *o, struct moe_offload_stats *out);

/* The fault hooks of offload_nvme.h for tests ("eio:L:E:N,corrupt:L:E:N"). */
int moe_offload_inject_faults(struct moe_offload *o, const char *spec);

#endif
