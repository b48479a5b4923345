/* The residency manager: a host tier of equal slots over one arena, filled by
 * io_uring reads of the pack's expert blobs, emptied by the cache policy. See
 * offload.h for the contract. */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "format/format_pack.h"
#include "offload/offload.h"
#include "offload/offload_nvme.h"
#include "offload/offload_prefetch.h"
#include "offload/offload_slots.h"
#include "offload/offload_trace.h"

enum slot_state { SLOT_FREE, SLOT_LOADING, SLOT_READY };

struct slot {
    int64_t key;          /* layer * E + expert, -1 when free */
    uint8_t cls;          /* its class (offload_slots.h) */
    enum slot_state state;
    bool prefetched;      /* filled ahead of need and not used yet */
    struct moe_nvme_req req;
};

struct moe_offload {
    const struct moe_pack *pack;
    int32_t L, E, K;
    struct moe_host_region arena;
    struct moe_slot_plan plan;
    uint32_t n_slots;
    struct slot *slots;    /* the classes' slots one after the other */
    uint32_t *free_list;   /* [n_slots]: class c's free slots from free_at[c] on */
    uint32_t free_at[MOE_SLOT_MAX_CLASSES], n_free[MOE_SLOT_MAX_CLASSES];
    uint8_t evicting;      /* the class slot_take is finding a victim in */
    uint8_t *class_of;     /* [L * E] */
    int64_t *slot_of;      /* [L * E] slot index or -1 */
    uint64_t *pin;         /* [L * E] epoch of the acquire that handed it out */
    uint64_t epoch;
    const struct moe_pack_expert **ex; /* [L * E] */
    struct moe_cache_policy *pol;
    struct moe_nvme *nv;
    struct moe_nvme_req **batch; /* [E] */
    int32_t *list;               /* [E] */
    struct moe_trace_writer *trace;
    int64_t step;
    int32_t last_layer;
    double acquired_at;         /* when the last acquire returned */
    /* the last guess, scored against its layer's acquire */
    bool prefetch_auto;
    struct moe_prefetch_model pm;
    int32_t guess_layer;        /* -1: none pending */
    bool *guess;                /* [E] guessed and not resident when guessed */
    int64_t *ahead;             /* [E] slots the last guess started reading */
    int32_t n_ahead;
    /* the acquire in progress (begin .. its last wait) */
    int32_t layer;
    int32_t n_batch;            /* misses it submitted */
    int32_t n_pending;          /* experts not yet handed out */
    bool link_to_itself;        /* no read ahead shared the link with its misses */
    double waited;              /* seconds its waits blocked */
    struct moe_offload_stats st;
};

static bool evictable(void *ctx, uint32_t key)
{
    struct moe_offload *o = ctx;
    int64_t s = o->slot_of[key];
    /* a finished prefetch nobody waited for yet may go too: it was never used */
    return s >= 0 && o->slots[s].cls == o->evicting && o->pin[key] != o->epoch &&
           (o->slots[s].state == SLOT_READY || o->slots[s].req.done);
}

static void slot_release(struct moe_offload *o, int64_t s)
{
    struct slot *sl = &o->slots[s];
    if (sl->key >= 0) {
        o->slot_of[sl->key] = -1;
        moe_cache_policy_remove(o->pol, (uint32_t)sl->key);
        o->st.resident_bytes -= sl->req.e ? sl->req.e->size : 0;
    }
    sl->key = -1;
    sl->state = SLOT_FREE;
    sl->prefetched = false;
    o->free_list[o->free_at[sl->cls] + o->n_free[sl->cls]++] = (uint32_t)s;
}

/* a prefetch of class cls still in flight that nobody holds: wait for it, so
 * it can go */
static bool settle_one_loading(struct moe_offload *o, uint8_t cls)
{
    for (uint32_t s = 0; s < o->n_slots; s++) {
        struct slot *sl = &o->slots[s];
        if (sl->cls != cls || sl->state != SLOT_LOADING || o->pin[sl->key] == o->epoch)
            continue;
        moe_nvme_wait(o->nv, &sl->req);
        if (sl->req.rc < 0)
            slot_release(o, s);
        else
            sl->state = SLOT_READY;
        return true;
    }
    return false;
}

/* a free slot of class cls, evicting the policy's choice among the class
 * when there is none; -1 if every slot of it is held by the current acquire
 * (prefetch: or loading) */
static int64_t slot_take(struct moe_offload *o, uint8_t cls, bool may_wait)
{
    for (;;) {
        if (o->n_free[cls] > 0)
            return o->free_list[o->free_at[cls] + --o->n_free[cls]];
        o->evicting = cls;
        int64_t victim = moe_cache_policy_victim(o->pol, evictable, o);
        if (victim >= 0) {
            int64_t s = o->slot_of[victim];
            if (o->slots[s].prefetched)
                o->st.prefetch_wasted++;
            o->st.evictions++;
            slot_release(o, s);
            continue;
        }
        if (!may_wait || !settle_one_loading(o, cls))
            return -1;
    }
}

static int64_t slot_of_req(const struct moe_offload *o, const struct moe_nvme_req *r)
{
    return (const struct slot *)((const uint8_t *)r - offsetof(struct slot, req)) - o->slots;
}

static void slot_fill(struct moe_offload *o, int64_t s, int64_t key)
{
    struct slot *sl = &o->slots[s];
    sl->key = key;
    sl->state = SLOT_LOADING;
    sl->prefetched = false;
    sl->req = (struct moe_nvme_req){.e = o->ex[key], .dst = sl->req.dst};
    o->slot_of[key] = s;
    o->st.resident_bytes += o->ex[key]->size;
    moe_cache_policy_insert(o->pol, (uint32_t)key);
}

int moe_offload_open(const struct moe_pack *pack, int32_t n_layers, int32_t n_experts,
                     int32_t top_k, const struct moe_offload_opts *opts,
                     struct moe_offload **out)
{
    *out = NULL;
    struct moe_offload *o = calloc(1, sizeof(*o));
    if (!o)
        return moe_err(-ENOMEM, "out of memory");
    o->pack = pack;
    o->L = n_layers;
    o->E = n_experts;
    o->K = top_k;
    o->last_layer = -1;
    o->guess_layer = -1;
    o->prefetch_auto = opts->prefetch_auto;
    moe_prefetch_model_init(&o->pm);
    size_t n = (size_t)n_layers * (size_t)n_experts;
    int rc = 0;
    o->slot_of = malloc(n * sizeof(*o->slot_of));
    o->pin = calloc(n, sizeof(*o->pin));
    o->ex = calloc(n, sizeof(*o->ex));
    o->batch = calloc((size_t)n_experts, sizeof(*o->batch));
    o->list = calloc((size_t)n_experts, sizeof(*o->list));
    o->guess = calloc((size_t)n_experts, sizeof(*o->guess));
    o->ahead = calloc((size_t)n_experts, sizeof(*o->ahead));
    if (!o->slot_of || !o->pin || !o->ex || !o->batch || !o->list || !o->guess || !o->ahead) {
        rc = moe_err(-ENOMEM, "out of memory");
        goto fail;
    }
    size_t *size = calloc(n, sizeof(*size));
    if (!size || !(o->class_of = calloc(n, 1))) {
        free(size);
        rc = moe_err(-ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < moe_pack_expert_count(pack); i++) {
        const struct moe_pack_expert *e = moe_pack_expert_at(pack, i);
        if (e->layer < 0 || e->layer >= n_layers || e->expert < 0 || e->expert >= n_experts)
            continue;
        o->ex[(size_t)e->layer * n_experts + e->expert] = e;
        size[(size_t)e->layer * n_experts + e->expert] = e->size;
    }
    for (size_t i = 0; i < n; i++)
        o->slot_of[i] = -1;
    rc = moe_slot_plan_make(size, n_layers, n_experts, opts->host_bytes, o->class_of, &o->plan);
    free(size);
    if (rc < 0) {
        char why[320];
        snprintf(why, sizeof(why), "%s", moe_err_msg());
        rc = moe_err(rc, "%s: %s", moe_pack_path(pack), why);
        goto fail;
    }
    for (int c = 0; c < o->plan.n_classes; c++)
        o->n_slots += o->plan.c[c].n_slots;
    o->slots = calloc(o->n_slots, sizeof(*o->slots));
    o->free_list = malloc(o->n_slots * sizeof(*o->free_list));
    if (!o->slots || !o->free_list) {
        rc = moe_err(-ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = moe_host_alloc(o->plan.bytes, opts->numa, opts->hugepages, &o->arena)) < 0)
        goto fail;
    size_t at = 0;
    for (uint32_t c = 0, s = 0; c < (uint32_t)o->plan.n_classes; c++) {
        const struct moe_slot_class *k = &o->plan.c[c];
        o->free_at[c] = s;
        for (uint32_t j = 0; j < k->n_slots; j++, s++, at += k->slot_bytes) {
            o->slots[s] = (struct slot){.key = -1, .cls = (uint8_t)c};
            o->slots[s].req.dst = (uint8_t *)o->arena.ptr + at;
            /* the class's first slot is taken first */
            o->free_list[o->free_at[c] + k->n_slots - 1 - j] = s;
        }
        o->n_free[c] = k->n_slots;
    }
    struct moe_nvme_opts no = {.queue_depth = opts->queue_depth ? opts->queue_depth : 32,
                               .force_pread = opts->force_pread, .retries = 2};
    if ((rc = moe_nvme_open(pack, &no, o->arena.ptr, o->arena.bytes, &o->nv)) < 0)
        goto fail;
    /* whatever of the blobs the page cache holds would be charged to this
     * process's memory for nothing: the tier reads around it */
    moe_pack_advise_experts(pack, MOE_PACK_EXPERTS_DROP);
    if ((rc = moe_cache_policy_create(opts->policy, (uint32_t)n, opts->score, &o->pol)) < 0)
        goto fail;
    moe_cache_policy_set_layout(o->pol, (uint32_t)n_layers, (uint32_t)n_experts);
    if (opts->trace_path &&
        (rc = moe_trace_writer_open(opts->trace_path, n_layers, n_experts, &o->trace)) < 0)
        goto fail;
    o->st.arena_bytes = o->plan.bytes;
    o->st.slot_bytes = o->plan.c[0].slot_bytes;
    o->st.slot_classes = (uint32_t)o->plan.n_classes;
    o->st.slots = o->n_slots;
    o->st.uring = moe_nvme_uses_uring(o->nv);
    o->st.hugepages = o->arena.huge;
    o->st.numa_node = o->arena.numa_node;
    *out = o;
    return 0;
fail:
    moe_offload_close(o);
    return rc;
}

void moe_offload_close(struct moe_offload *o)
{
    if (!o)
        return;
    if (o->nv) { /* nothing may land in the arena once it is gone */
        for (uint32_t s = 0; o->slots && s < o->n_slots; s++)
            if (o->slots[s].state == SLOT_LOADING)
                moe_nvme_wait(o->nv, &o->slots[s].req);
        moe_nvme_close(o->nv);
    }
    moe_trace_writer_close(o->trace);
    moe_cache_policy_free(o->pol);
    if (o->arena.ptr)
        moe_host_free(&o->arena);
    free(o->slots);
    free(o->free_list);
    free(o->class_of);
    free(o->slot_of);
    free(o->pin);
    free(o->ex);
    free(o->batch);
    free(o->list);
    free(o->guess);
    free(o->ahead);
    free(o);
}

/* every expert of the current acquire is in: what its wait says about reads */
static void layer_in(struct moe_offload *o)
{
    o->st.wait_s += o->waited;
    if (o->link_to_itself && o->n_batch > 0)
        moe_prefetch_model_reads(&o->pm, o->waited, (uint32_t)o->n_batch);
    o->acquired_at = moe_now_s();
}

int moe_offload_begin(struct moe_offload *o, int32_t layer, const bool *need,
                      const void **blobs)
{
    o->epoch++;
    moe_nvme_poll(o->nv); /* reap finished prefetches */
    if (layer == o->last_layer + 1 && o->acquired_at > 0)
        moe_prefetch_model_gap(&o->pm, moe_now_s() - o->acquired_at);
    if (layer <= o->last_layer)
        o->step++;
    o->last_layer = layer;
    if (o->guess_layer == layer) {
        uint32_t guessed = 0, right = 0;
        for (int32_t e = 0; e < o->E; e++)
            if (o->guess[e])
                guessed++, right += need[e];
        moe_prefetch_model_outcome(&o->pm, guessed, right);
    }
    o->guess_layer = -1;
    /* the wait measures one read's cost only if no read ahead shares the link */
    o->link_to_itself = true;
    for (int32_t i = 0; i < o->n_ahead; i++) {
        const struct slot *sl = &o->slots[o->ahead[i]];
        o->link_to_itself &= sl->state != SLOT_LOADING || sl->req.done;
    }
    o->n_ahead = 0;
    o->layer = layer;
    o->waited = 0;
    o->n_pending = 0;
    int32_t n_list = 0, n_batch = 0;
    uint32_t n_hit = 0;
    int rc = 0;
    for (int32_t e = 0; e < o->E; e++) { /* pin first: nothing needed now may be evicted */
        if (!need[e])
            continue;
        int64_t key = (int64_t)layer * o->E + e;
        o->pin[key] = o->epoch;
        o->list[n_list++] = e;
    }
    for (int32_t i = 0; i < n_list; i++) {
        int64_t key = (int64_t)layer * o->E + o->list[i];
        if (!o->ex[key])
            return moe_err(-EINVAL, "%s: layer %d expert %d: missing from the pack",
                           moe_pack_path(o->pack), layer, o->list[i]);
        int64_t s = o->slot_of[key];
        if (s >= 0 && o->slots[s].state == SLOT_LOADING && o->slots[s].req.done &&
            o->slots[s].req.rc < 0) { /* a read ahead that failed: read it again now */
            slot_release(o, s);
            s = -1;
        }
        moe_cache_policy_access(o->pol, (uint32_t)key);
        if (s >= 0) {
            o->st.hits++;
            n_hit++;
            if (o->slots[s].prefetched) {
                o->st.prefetch_used++;
                o->slots[s].prefetched = false;
            }
            continue;
        }
        o->st.misses++;
        if ((s = slot_take(o, o->class_of[key], true)) < 0) {
            rc = moe_err(-ENOSPC, "host tier: no slot free for layer %d expert %d", layer,
                         o->list[i]);
            break;
        }
        slot_fill(o, s, key);
        o->batch[n_batch++] = &o->slots[s].req;
    }
    moe_prefetch_model_lookups(&o->pm, n_hit, (uint32_t)n_list);
    if (rc == 0 && n_batch > 0)
        rc = moe_nvme_submit(o->nv, o->batch, n_batch);
    if (rc < 0) { /* nothing of this batch went out: its slots are free again */
        for (int32_t i = 0; i < n_batch; i++)
            slot_release(o, slot_of_req(o, o->batch[i]));
        return rc;
    }
    o->n_batch = n_batch;
    for (int32_t i = 0; i < n_list; i++) {
        int32_t e = o->list[i];
        struct slot *sl = &o->slots[o->slot_of[(int64_t)layer * o->E + e]];
        if (sl->state == SLOT_LOADING && sl->req.done && sl->req.rc == 0)
            sl->state = SLOT_READY; /* a read ahead that has landed */
        bool here = sl->state == SLOT_READY;
        blobs[e] = here ? sl->req.dst : NULL;
        o->n_pending += !here;
    }
    if (o->trace)
        moe_trace_writer_access(o->trace, o->step, layer, o->list, n_list);
    if (o->n_pending == 0)
        layer_in(o);
    return 0;
}

int moe_offload_wait(struct moe_offload *o, int32_t e, const void **blob)
{
    int64_t key = (int64_t)o->layer * o->E + e, s = e >= 0 && e < o->E ? o->slot_of[key] : -1;
    *blob = NULL;
    if (s < 0 || o->pin[key] != o->epoch)
        return moe_err(-EINVAL, "layer %d expert %d was not asked for by this acquire", o->layer,
                       e);
    struct slot *sl = &o->slots[s];
    if (sl->state == SLOT_READY) {
        *blob = sl->req.dst;
        return 0;
    }
    double t0 = moe_now_s();
    moe_nvme_wait(o->nv, &sl->req);
    o->waited += moe_now_s() - t0;
    o->n_pending--;
    if (sl->req.rc < 0) {
        o->st.read_errors++;
        int rc = moe_nvme_req_error(o->nv, &sl->req); /* sets the message */
        slot_release(o, s);
        return rc;
    }
    sl->state = SLOT_READY;
    *blob = sl->req.dst;
    if (o->n_pending == 0)
        layer_in(o);
    return 0;
}

void moe_offload_prefetch(struct moe_offload *o, int32_t layer, const bool *likely)
{
    int32_t n_batch = 0, n_list = 0;
    uint32_t k = 0;
    o->n_ahead = 0;
    for (int32_t e = 0; e < o->E; e++) {
        int64_t key = (int64_t)layer * o->E + e;
        o->guess[e] = likely[e] && o->ex[key] && o->slot_of[key] < 0;
        k += o->guess[e];
        if (likely[e])
            o->list[n_list++] = e;
    }
    o->guess_layer = layer;
    if (o->trace)
        moe_trace_writer_predict(o->trace, o->step, layer, o->list, n_list);
    uint32_t want[MOE_SLOT_MAX_CLASSES] = {0}, evicting = 0;
    for (int32_t e = 0; e < o->E; e++)
        want[o->class_of[(int64_t)layer * o->E + e]] += o->guess[e];
    for (int c = 0; c < o->plan.n_classes; c++)
        evicting += want[c] > o->n_free[c] ? want[c] - o->n_free[c] : 0;
    if (o->prefetch_auto && k > 0 && !moe_prefetch_model_worth(&o->pm, k, evicting)) {
        o->st.prefetch_skipped += k;
        return;
    }
    for (int32_t e = 0; e < o->E; e++) {
        if (!o->guess[e])
            continue;
        int64_t key = (int64_t)layer * o->E + e;
        int64_t s = slot_take(o, o->class_of[key], false);
        if (s < 0)
            continue; /* another class may still have room */
        slot_fill(o, s, key);
        o->slots[s].prefetched = true;
        o->batch[n_batch++] = &o->slots[s].req;
        o->ahead[o->n_ahead++] = s;
        o->st.prefetch_issued++;
    }
    if (n_batch > 0 && moe_nvme_submit(o->nv, o->batch, n_batch) < 0) {
        for (int32_t i = 0; i < n_batch; i++) /* nothing went out: give the slots back */
            slot_release(o, slot_of_req(o, o->batch[i]));
        o->n_ahead = 0;
    }
}

void moe_offload_get_stats(const struct moe_offload *o, struct moe_offload_stats *out)
{
    *out = o->st;
    out->prefetch_precision = o->pm.p;
    out->read_s_per_expert = o->pm.t_read;
    out->layer_gap_s = o->pm.t_gap;
    struct moe_nvme_stats ns;
    moe_nvme_stats(o->nv, &ns);
    out->reads = ns.reads;
    out->bytes_read = ns.bytes;
    out->retries = ns.retries;
}

int moe_offload_inject_faults(struct moe_offload *o, const char *spec)
{
    struct moe_nvme_fault f[MOE_NVME_MAX_FAULTS];
    int n = 0, rc = moe_nvme_fault_parse(spec, f, MOE_NVME_MAX_FAULTS, &n);
    for (int i = 0; i < n && rc == 0; i++)
        rc = moe_nvme_inject_fault(o->nv, f[i].layer, f[i].expert, f[i].kind, f[i].count);
    return rc;
}
