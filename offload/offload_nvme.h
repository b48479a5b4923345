/* offload: reading expert blobs of a moed pack from disk (the NVMe tier).
 *
 * The pack's file is opened with O_DIRECT (buffered, with a warning, where
 * the filesystem refuses it: tmpfs) and read through io_uring into one
 * caller-owned arena, registered as fixed buffers so each read is an
 * IORING_OP_READ_FIXED (plain IORING_OP_READ when registration is refused,
 * e.g. by RLIMIT_MEMLOCK). Where io_uring is not permitted (ENOSYS, EPERM
 * from kernel.io_uring_disabled or a seccomp filter) reads fall back to
 * pread, with a warning.
 *
 * One expert = one request, whatever the blob's size: the blob is read in
 * chunks of at most MOE_NVME_CHUNK bytes (one SQE each), short reads are
 * continued, and on arrival the whole blob's XXH64 is checked. EIO/EAGAIN
 * and checksum mismatches are retried (opts.retries times); then the
 * request fails with rc = -EIO.
 *
 * Single-threaded: one thread (the engine's) calls submit/poll/wait. A
 * request belongs to moe_nvme from submit until done is true; it must not
 * be freed or resubmitted before that.
 *
 * Fault injection (tests, and integration tests against a real daemon):
 *   MOED_NVME_FAULT="eio:L:E:COUNT,corrupt:L:E:COUNT,..."   read at open
 * eio: the next COUNT reads of layer L expert E complete with -EIO;
 * corrupt: the next COUNT reads of it arrive with one byte flipped (caught
 * by the checksum). COUNT <= retries shows the retry working; COUNT >
 * retries makes the request fail. A malformed value fails open with
 * -EINVAL naming the item. */
#ifndef MOE_OFFLOAD_NVME_H
#define MOE_OFFLOAD_NVME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "format/format_pack.h"

#define MOE_NVME_CHUNK (1u << 20)   /* the most one SQE reads */
#define MOE_NVME_ALIGN 4096u        /* dst alignment (O_DIRECT) */
#define MOE_NVME_MAX_FAULTS 16
#define MOE_NVME_FAULT_ENV "MOED_NVME_FAULT"

struct moe_nvme_opts {
    unsigned queue_depth; /* SQEs in flight at most; 0 = 32 */
    bool force_pread;     /* skip io_uring (tests, benchmarks) */
    bool force_buffered;  /* skip O_DIRECT (tests of the fallback) */
    int retries;          /* further reads after a failed one; 0 = 2, < 0 = none */
};

struct moe_nvme;

/* arena: [arena, arena + arena_bytes), MOE_NVME_ALIGN aligned, where every
 * dst will lie (NULL/0: no fixed buffers, dst anywhere aligned). o may be
 * NULL (defaults). 0, or a negative errno with moe_err naming the file. */
int moe_nvme_open(const struct moe_pack *pack, const struct moe_nvme_opts *o, void *arena,
                  size_t arena_bytes, struct moe_nvme **out);
/* Waits for reads still in flight, then frees nv (NULL: no-op). */
void moe_nvme_close(struct moe_nvme *nv);

bool moe_nvme_uses_uring(const struct moe_nvme *nv);
bool moe_nvme_uses_direct(const struct moe_nvme *nv);    /* O_DIRECT */
bool moe_nvme_uses_fixed(const struct moe_nvme *nv);     /* READ_FIXED into the arena */
unsigned moe_nvme_queue_depth(const struct moe_nvme *nv);

struct moe_nvme_req {
    const struct moe_pack_expert *e; /* what to read (offset, size, xxh64 inside) */
    void *dst;                       /* e->size bytes, MOE_NVME_ALIGN aligned, in the arena */
    /* out: */
    bool done;
    int rc;     /* 0, or -EIO (moe_nvme_req_error() / wait set the message) */
    void *user; /* the caller's */
    /* moe_nvme's own, between submit and done */
    struct {
        struct moe_nvme_req *next; /* in the queue of reads not yet issued */
        uint64_t issued;           /* bytes of this read handed to SQEs */
        uint64_t arrived;          /* bytes of this read completed */
        uint32_t chunks;           /* SQEs in flight */
        int reads;                 /* reads made (1 + retries so far) */
        int err;                   /* this read's errno (0 = none yet) */
        int fail_kind;             /* why it failed, for the message */
        int fail_errno;
    } priv;
};

/* Queues the n reads (e.g. all of a layer's misses) and issues as many as
 * the queue depth allows with ONE io_uring_submit; the rest go out as
 * completions make room (in poll/wait). Does not wait. With the pread
 * fallback the reads are made here, synchronously. 0, or -EINVAL (a dst
 * misaligned / outside the arena, a NULL expert) with nothing queued. */
int moe_nvme_submit(struct moe_nvme *nv, struct moe_nvme_req *const *reqs, int n);
/* Reaps completions and issues queued reads, without blocking; returns how
 * many requests became done, or a negative errno. */
int moe_nvme_poll(struct moe_nvme *nv);
/* Blocks until req is done (reaping and issuing others meanwhile); returns
 * req->rc, with moe_err set when it failed, e.g.
 *   "<pack>: layer 3 expert 5: checksum mismatch after 3 reads, the blob is corrupt"
 *   "<pack>: layer 3 expert 5: read error after 3 reads: Input/output error"
 * -EINVAL when req is neither done nor queued. */
int moe_nvme_wait(struct moe_nvme *nv, struct moe_nvme_req *req);
/* Sets moe_err to why req failed (as wait does) and returns req->rc. */
int moe_nvme_req_error(const struct moe_nvme *nv, const struct moe_nvme_req *req);

struct moe_nvme_stats {
    uint64_t reads;             /* expert reads completed (each try counts) */
    uint64_t bytes;             /* bytes that arrived */
    uint64_t sqes;              /* SQEs issued (chunks, continuations) */
    uint64_t submits;           /* io_uring_submit calls that issued SQEs */
    uint64_t short_reads;       /* continued */
    uint64_t retries;           /* reads made again after EIO/EAGAIN/checksum */
    uint64_t errors;            /* requests that failed */
    uint64_t checksum_failures; /* arrivals whose XXH64 did not match */
    uint64_t wait_ns;           /* time blocked in moe_nvme_wait */
};
void moe_nvme_stats(const struct moe_nvme *nv, struct moe_nvme_stats *out);

/* ---- fault injection --------------------------------------------------------- */
enum moe_nvme_fault_kind { MOE_NVME_FAULT_EIO, MOE_NVME_FAULT_CORRUPT };
struct moe_nvme_fault {
    int32_t layer, expert;
    enum moe_nvme_fault_kind kind;
    int count; /* reads still to affect */
};
/* The next count reads of (layer, expert) fail as kind (count 0 clears).
 * 0, or -ENOSPC past MOE_NVME_MAX_FAULTS (layer, expert, kind) triples. */
int moe_nvme_inject_fault(struct moe_nvme *nv, int32_t layer, int32_t expert,
                          enum moe_nvme_fault_kind kind, int count);
/* Parses the MOED_NVME_FAULT syntax ("" = none) into out[max], *n items.
 * -EINVAL with moe_err naming the item ("MOED_NVME_FAULT: item 2
 * 'corupt:1:2:3': kind must be eio or corrupt"). */
int moe_nvme_fault_parse(const char *s, struct moe_nvme_fault *out, int max, int *n);

#endif
