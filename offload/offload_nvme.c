/* offload: expert blobs from disk through io_uring (see offload_nvme.h).
 *
 * A request's blob is one "read" made of chunks (<= MOE_NVME_CHUNK, and
 * never across a registered buffer's edge); each chunk in flight holds one
 * op slot, and there are queue_depth slots, so the SQ ring can never
 * overflow and the CQ ring (twice the SQ) never drops a completion. When the
 * last chunk of a read is back, the read is judged as a whole (errors,
 * injected faults, checksum) and either completes the request or queues it
 * again at the front. */
#define _GNU_SOURCE
#include "offload/offload_nvme.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "common/common.h"

#define FIXED_SPAN (1ull << 30) /* the kernel's limit on one registered buffer */
#define MAX_QUEUE_DEPTH 4096u
#define FAULT_ITEM_MAX 64

enum { FAIL_NONE, FAIL_IO, FAIL_CSUM, FAIL_EOF };

struct nvme_op {
    struct moe_nvme_req *req; /* NULL: free */
    uint64_t off;             /* in the blob */
    uint32_t len, done;       /* bytes of the chunk, bytes arrived */
    int next_free;
};

struct moe_nvme {
    const struct moe_pack *pack;
    const char *path;
    int fd;
    bool direct, uring, fixed;
    unsigned qd;
    int retries;
    uint8_t *arena;
    size_t arena_bytes;
    struct io_uring ring;
    struct nvme_op *ops;
    int free_op;       /* head of the free list, -1 = none */
    unsigned inflight; /* ops in use */
    struct moe_nvme_req *head, *tail; /* reads with chunks still to issue */
    int completed;                    /* requests done in this poll */
    struct moe_nvme_fault faults[MOE_NVME_MAX_FAULTS];
    int n_faults;
    struct moe_nvme_stats st;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- faults ----------------------------------------------------------------- */

int moe_nvme_inject_fault(struct moe_nvme *nv, int32_t layer, int32_t expert,
                          enum moe_nvme_fault_kind kind, int count)
{
    for (int i = 0; i < nv->n_faults; i++) {
        struct moe_nvme_fault *f = &nv->faults[i];
        if (f->layer == layer && f->expert == expert && f->kind == kind) {
            f->count = count;
            return 0;
        }
    }
    if (count <= 0)
        return 0;
    if (nv->n_faults == MOE_NVME_MAX_FAULTS)
        return moe_err(-ENOSPC, "%s: at most %d injected faults", nv->path, MOE_NVME_MAX_FAULTS);
    nv->faults[nv->n_faults++] = (struct moe_nvme_fault){layer, expert, kind, count};
    return 0;
}

/* consumes one read's worth of a fault on e, if one is armed */
static bool fault_take(struct moe_nvme *nv, const struct moe_pack_expert *e,
                       enum moe_nvme_fault_kind kind)
{
    for (int i = 0; i < nv->n_faults; i++) {
        struct moe_nvme_fault *f = &nv->faults[i];
        if (f->layer == e->layer && f->expert == e->expert && f->kind == kind && f->count > 0) {
            f->count--;
            return true;
        }
    }
    return false;
}

static bool parse_int(const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < 0 || v > INT32_MAX || *s == '-' || *s == '+' || *s == ' ')
        return false;
    *out = (int)v;
    return true;
}

int moe_nvme_fault_parse(const char *s, struct moe_nvme_fault *out, int max, int *n)
{
    *n = 0;
    if (!s || !*s)
        return 0;
    int item = 0;
    for (const char *p = s;; p++) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char buf[FAULT_ITEM_MAX];
        item++;
        if (len >= sizeof(buf))
            return moe_err(-EINVAL, "%s: item %d '%.*s...': too long", MOE_NVME_FAULT_ENV, item,
                           20, p);
        memcpy(buf, p, len);
        buf[len] = 0;
        char *f[5];
        int nf = 0;
        char copy[FAULT_ITEM_MAX];
        memcpy(copy, buf, len + 1);
        /* strsep keeps empty fields, so "eio::1:2" is refused */
        for (char *q = copy, *tok; nf < 5 && (tok = strsep(&q, ":"));)
            f[nf++] = tok;
        if (nf != 4)
            return moe_err(-EINVAL, "%s: item %d '%s': expected KIND:LAYER:EXPERT:COUNT",
                           MOE_NVME_FAULT_ENV, item, buf);
        struct moe_nvme_fault x;
        if (!strcmp(f[0], "eio"))
            x.kind = MOE_NVME_FAULT_EIO;
        else if (!strcmp(f[0], "corrupt"))
            x.kind = MOE_NVME_FAULT_CORRUPT;
        else
            return moe_err(-EINVAL, "%s: item %d '%s': kind must be eio or corrupt",
                           MOE_NVME_FAULT_ENV, item, buf);
        int v[3];
        static const char *const what[3] = {"layer", "expert", "count"};
        for (int k = 0; k < 3; k++)
            if (!parse_int(f[k + 1], &v[k]))
                return moe_err(-EINVAL, "%s: item %d '%s': %s must be an integer >= 0",
                               MOE_NVME_FAULT_ENV, item, buf, what[k]);
        x.layer = v[0];
        x.expert = v[1];
        x.count = v[2];
        if (*n == max)
            return moe_err(-EINVAL, "%s: item %d '%s': at most %d items", MOE_NVME_FAULT_ENV,
                           item, buf, max);
        out[(*n)++] = x;
        if (!end)
            return 0;
        p = end;
    }
}

/* ---- one read's outcome ------------------------------------------------------ */

/* All chunks of req's current read are back: judge it. Returns true when
 * the read is to be made again (the caller queues it); otherwise req is
 * done, with rc 0 or -EIO. */
static bool finish_read(struct moe_nvme *nv, struct moe_nvme_req *req)
{
    const struct moe_pack_expert *e = req->e;
    int err = req->priv.err;
    int kind = !err ? FAIL_NONE : err == ENODATA ? FAIL_EOF : FAIL_IO;
    nv->st.reads++;
    if (!err && fault_take(nv, e, MOE_NVME_FAULT_EIO)) {
        err = EIO;
        kind = FAIL_IO;
    }
    if (!err) {
        if (fault_take(nv, e, MOE_NVME_FAULT_CORRUPT))
            ((uint8_t *)req->dst)[e->size / 2] ^= 0x40;
        if (moe_pack_verify_expert_data(nv->pack, e, req->dst) < 0) {
            nv->st.checksum_failures++;
            err = EIO;
            kind = FAIL_CSUM;
        }
    }
    if (!err) {
        req->rc = 0;
        req->done = true;
        nv->completed++;
        return false;
    }
    /* a truncated file or a refused read (EINVAL, EBADF) will not mend */
    bool transient = kind == FAIL_CSUM || err == EIO || err == EAGAIN || err == EINTR;
    if (transient && req->priv.reads <= nv->retries) {
        nv->st.retries++;
        req->priv.reads++;
        req->priv.err = 0;
        req->priv.issued = req->priv.arrived = 0;
        return true;
    }
    req->priv.fail_kind = kind;
    req->priv.fail_errno = err;
    req->rc = -EIO;
    req->done = true;
    nv->st.errors++;
    nv->completed++;
    return false;
}

int moe_nvme_req_error(const struct moe_nvme *nv, const struct moe_nvme_req *req)
{
    if (req->rc == 0)
        return 0;
    int L = req->e->layer, E = req->e->expert, n = req->priv.reads;
    const char *s = n == 1 ? "" : "s";
    switch (req->priv.fail_kind) {
    case FAIL_CSUM:
        return moe_err(req->rc,
                       "%s: layer %d expert %d: checksum mismatch after %d read%s, the blob is "
                       "corrupt",
                       nv->path, L, E, n, s);
    case FAIL_EOF:
        return moe_err(req->rc,
                       "%s: layer %d expert %d: read error after %d read%s: unexpected end of "
                       "file (the pack is truncated)",
                       nv->path, L, E, n, s);
    default:
        return moe_err(req->rc, "%s: layer %d expert %d: read error after %d read%s: %s",
                       nv->path, L, E, n, s, strerror(req->priv.fail_errno));
    }
}

/* ---- pread fallback ------------------------------------------------------------ */

static void pread_req(struct moe_nvme *nv, struct moe_nvme_req *req)
{
    const struct moe_pack_expert *e = req->e;
    do {
        uint64_t pos = 0;
        int err = 0;
        while (pos < e->size) {
            size_t want = (size_t)MOE_MIN(e->size - pos, (uint64_t)MOE_NVME_CHUNK);
            ssize_t r = pread(nv->fd, (uint8_t *)req->dst + pos, want, (off_t)(e->offset + pos));
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0) {
                err = r < 0 ? errno : ENODATA;
                break;
            }
            if ((size_t)r < want)
                nv->st.short_reads++;
            pos += (uint64_t)r;
            nv->st.bytes += (uint64_t)r;
        }
        req->priv.err = err;
    } while (finish_read(nv, req));
}

/* ---- io_uring ------------------------------------------------------------------ */

static bool in_arena(const struct moe_nvme *nv, const uint8_t *p, uint64_t n)
{
    return nv->arena && p >= nv->arena && (uint64_t)(p - nv->arena) + n <= nv->arena_bytes;
}

/* one SQE for what op still lacks (a chunk, or the rest of a short read) */
static void prep_op(struct moe_nvme *nv, int i)
{
    struct nvme_op *op = &nv->ops[i];
    const struct moe_pack_expert *e = op->req->e;
    uint8_t *dst = (uint8_t *)op->req->dst + op->off + op->done;
    unsigned len = op->len - op->done;
    off_t foff = (off_t)(e->offset + op->off + op->done);
    struct io_uring_sqe *sqe = io_uring_get_sqe(&nv->ring);
    /* never NULL: at most queue_depth ops, each with at most one SQE */
    if (nv->fixed && in_arena(nv, dst, len))
        io_uring_prep_read_fixed(sqe, nv->fd, dst, len, foff,
                                 (int)((uint64_t)(dst - nv->arena) / FIXED_SPAN));
    else
        io_uring_prep_read(sqe, nv->fd, dst, len, (uint64_t)foff);
    io_uring_sqe_set_data(sqe, (void *)(uintptr_t)(i + 1));
    nv->st.sqes++;
}

static void queue_push(struct moe_nvme *nv, struct moe_nvme_req *req, bool front)
{
    req->priv.next = NULL;
    if (!nv->head) {
        nv->head = nv->tail = req;
    } else if (front) {
        req->priv.next = nv->head;
        nv->head = req;
    } else {
        nv->tail->priv.next = req;
        nv->tail = req;
    }
}

/* hands queued chunks to free op slots */
static void pump(struct moe_nvme *nv)
{
    while (nv->head && nv->free_op >= 0) {
        struct moe_nvme_req *req = nv->head;
        uint64_t pos = req->priv.issued, size = req->e->size;
        uint64_t len = MOE_MIN(size - pos, (uint64_t)MOE_NVME_CHUNK);
        const uint8_t *dst = (const uint8_t *)req->dst + pos;
        if (nv->fixed && in_arena(nv, dst, 1)) {
            uint64_t edge = FIXED_SPAN - (uint64_t)(dst - nv->arena) % FIXED_SPAN;
            len = MOE_MIN(len, edge);
        }
        int i = nv->free_op;
        struct nvme_op *op = &nv->ops[i];
        nv->free_op = op->next_free;
        nv->inflight++;
        *op = (struct nvme_op){req, pos, (uint32_t)len, 0, -1};
        prep_op(nv, i);
        req->priv.issued += len;
        req->priv.chunks++;
        if (req->priv.issued == size) {
            nv->head = req->priv.next;
            if (!nv->head)
                nv->tail = NULL;
        }
    }
}

static int flush(struct moe_nvme *nv)
{
    int r;
    do
        r = io_uring_submit(&nv->ring);
    while (r == -EINTR);
    if (r > 0)
        nv->st.submits++;
    /* -EAGAIN/-EBUSY: the SQEs stay in the ring for the next submit */
    if (r < 0 && r != -EAGAIN && r != -EBUSY)
        return moe_err(r, "%s: io_uring_submit: %s", nv->path, strerror(-r));
    return 0;
}

static void complete(struct moe_nvme *nv, const struct io_uring_cqe *cqe)
{
    int i = (int)(uintptr_t)io_uring_cqe_get_data(cqe) - 1;
    struct nvme_op *op = &nv->ops[i];
    struct moe_nvme_req *req = op->req;
    int res = cqe->res;
    if (res > 0) {
        op->done += (uint32_t)res;
        nv->st.bytes += (uint64_t)res;
        if (op->done < op->len && !req->priv.err) {
            nv->st.short_reads++;
            prep_op(nv, i);
            return;
        }
    } else if (!req->priv.err) {
        req->priv.err = res < 0 ? -res : ENODATA;
    }
    req->priv.arrived += op->done;
    op->req = NULL;
    op->next_free = nv->free_op;
    nv->free_op = i;
    nv->inflight--;
    if (--req->priv.chunks == 0 && req->priv.issued == req->e->size && finish_read(nv, req))
        queue_push(nv, req, true);
}

static void reap(struct moe_nvme *nv)
{
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&nv->ring, head, cqe)
    {
        complete(nv, cqe);
        n++;
    }
    io_uring_cq_advance(&nv->ring, n);
}

/* ---- the API ---------------------------------------------------------------------- */

int moe_nvme_submit(struct moe_nvme *nv, struct moe_nvme_req *const *reqs, int n)
{
    for (int k = 0; k < n; k++) {
        const struct moe_nvme_req *r = reqs[k];
        if (!r || !r->e)
            return moe_err(-EINVAL, "%s: request %d has no expert", nv->path, k);
        const struct moe_pack_expert *e = r->e;
        if ((uintptr_t)r->dst % MOE_NVME_ALIGN || e->size % MOE_NVME_ALIGN ||
            (nv->arena && !in_arena(nv, r->dst, e->size)))
            return moe_err(-EINVAL,
                           "%s: layer %d expert %d: destination %p (%llu bytes) not %u-aligned "
                           "inside the arena",
                           nv->path, e->layer, e->expert, r->dst, (unsigned long long)e->size,
                           MOE_NVME_ALIGN);
    }
    for (int k = 0; k < n; k++) {
        struct moe_nvme_req *r = reqs[k];
        r->done = false;
        r->rc = 0;
        memset(&r->priv, 0, sizeof(r->priv));
        r->priv.reads = 1;
        if (!nv->uring)
            pread_req(nv, r);
        else
            queue_push(nv, r, false);
    }
    if (!nv->uring)
        return 0;
    pump(nv);
    return flush(nv);
}

int moe_nvme_poll(struct moe_nvme *nv)
{
    nv->completed = 0;
    if (!nv->uring)
        return 0;
    reap(nv);
    pump(nv);
    int r = flush(nv);
    return r < 0 ? r : nv->completed;
}

int moe_nvme_wait(struct moe_nvme *nv, struct moe_nvme_req *req)
{
    uint64_t t0 = now_ns();
    while (!req->done) {
        if (!nv->uring || (nv->inflight == 0 && !nv->head))
            return moe_err(-EINVAL, "%s: layer %d expert %d: waited for a read never submitted",
                           nv->path, req->e->layer, req->e->expert);
        reap(nv);
        pump(nv);
        if (req->done)
            break;
        int r = io_uring_submit_and_wait(&nv->ring, 1);
        if (r > 0)
            nv->st.submits++;
        if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
            return moe_err(r, "%s: io_uring wait: %s", nv->path, strerror(-r));
    }
    nv->st.wait_ns += now_ns() - t0;
    return moe_nvme_req_error(nv, req);
}

void moe_nvme_stats(const struct moe_nvme *nv, struct moe_nvme_stats *out)
{
    *out = nv->st;
}

bool moe_nvme_uses_uring(const struct moe_nvme *nv) { return nv->uring; }
bool moe_nvme_uses_direct(const struct moe_nvme *nv) { return nv->direct; }
bool moe_nvme_uses_fixed(const struct moe_nvme *nv) { return nv->fixed; }
unsigned moe_nvme_queue_depth(const struct moe_nvme *nv) { return nv->qd; }

/* O_DIRECT unless refused: some filesystems refuse it at open (EINVAL),
 * others only at the first read, so one aligned block is read to be sure */
static int open_file(struct moe_nvme *nv, bool try_direct)
{
    if (try_direct) {
        nv->fd = open(nv->path, O_RDONLY | O_CLOEXEC | O_DIRECT);
        if (nv->fd >= 0) {
            void *probe = NULL;
            ssize_t r = -1;
            if (posix_memalign(&probe, MOE_NVME_ALIGN, MOE_NVME_ALIGN) == 0)
                r = pread(nv->fd, probe, MOE_NVME_ALIGN, 0);
            int err = errno;
            free(probe);
            if (r >= 0) {
                nv->direct = true;
                return 0;
            }
            close(nv->fd);
            nv->fd = -1;
            errno = err;
        }
        if (errno != EINVAL && errno != EOPNOTSUPP)
            return moe_err(-errno, "%s: %s", nv->path, strerror(errno));
        moe_log(MOE_LOG_WARN, "%s: O_DIRECT refused by the filesystem: buffered reads",
                nv->path);
    }
    nv->fd = open(nv->path, O_RDONLY | O_CLOEXEC);
    if (nv->fd < 0)
        return moe_err(-errno, "%s: %s", nv->path, strerror(errno));
    return 0;
}

static int setup_uring(struct moe_nvme *nv)
{
    int r = io_uring_queue_init(nv->qd, &nv->ring, 0);
    if (r < 0) {
        moe_log(MOE_LOG_WARN, "%s: io_uring unavailable (%s): reading experts with pread",
                nv->path, strerror(-r));
        return 0;
    }
    nv->uring = true;
    if (!nv->arena)
        return 0;
    size_t nbuf = (nv->arena_bytes + FIXED_SPAN - 1) / FIXED_SPAN;
    struct iovec *iov = calloc(nbuf, sizeof(*iov));
    if (!iov)
        return moe_err(-ENOMEM, "%s: out of memory", nv->path);
    for (size_t i = 0; i < nbuf; i++) {
        iov[i].iov_base = nv->arena + i * FIXED_SPAN;
        iov[i].iov_len = (size_t)MOE_MIN((uint64_t)FIXED_SPAN, nv->arena_bytes - i * FIXED_SPAN);
    }
    r = io_uring_register_buffers(&nv->ring, iov, (unsigned)nbuf);
    free(iov);
    if (r < 0)
        moe_log(MOE_LOG_WARN,
                "%s: io_uring refused the arena as fixed buffers (%s%s): plain reads", nv->path,
                strerror(-r), r == -ENOMEM ? "; raise RLIMIT_MEMLOCK (LimitMEMLOCK=)" : "");
    else
        nv->fixed = true;
    return 0;
}

int moe_nvme_open(const struct moe_pack *pack, const struct moe_nvme_opts *o, void *arena,
                  size_t arena_bytes, struct moe_nvme **out)
{
    static const struct moe_nvme_opts defaults = {0};
    *out = NULL;
    if (!o)
        o = &defaults;
    const char *path = moe_pack_path(pack);
    if ((uintptr_t)arena % MOE_NVME_ALIGN || (!arena) != (!arena_bytes))
        return moe_err(-EINVAL, "%s: the arena must be %u-aligned and not empty", path,
                       MOE_NVME_ALIGN);
    struct moe_nvme *nv = calloc(1, sizeof(*nv));
    if (!nv)
        return moe_err(-ENOMEM, "%s: out of memory", path);
    nv->pack = pack;
    nv->path = path;
    nv->fd = -1;
    nv->arena = arena;
    nv->arena_bytes = arena_bytes;
    nv->qd = o->queue_depth ? MOE_MIN(o->queue_depth, MAX_QUEUE_DEPTH) : 32;
    nv->retries = o->retries == 0 ? 2 : MOE_MAX(o->retries, 0);
    int r;
    const char *env = getenv(MOE_NVME_FAULT_ENV);
    if (env) {
        struct moe_nvme_fault f[MOE_NVME_MAX_FAULTS];
        int n;
        if ((r = moe_nvme_fault_parse(env, f, MOE_NVME_MAX_FAULTS, &n)) < 0)
            goto fail;
        for (int i = 0; i < n; i++)
            moe_nvme_inject_fault(nv, f[i].layer, f[i].expert, f[i].kind, f[i].count);
        if (n)
            moe_log(MOE_LOG_WARN, "%s: %s=\"%s\": injecting read faults", path,
                    MOE_NVME_FAULT_ENV, env);
    }
    nv->ops = calloc(nv->qd, sizeof(*nv->ops));
    if (!nv->ops) {
        r = moe_err(-ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    for (unsigned i = 0; i < nv->qd; i++)
        nv->ops[i].next_free = i + 1 < nv->qd ? (int)i + 1 : -1;
    nv->free_op = 0;
    if ((r = open_file(nv, !o->force_buffered)) < 0)
        goto fail;
    if (!o->force_pread && (r = setup_uring(nv)) < 0)
        goto fail;
    *out = nv;
    return 0;
fail:
    moe_nvme_close(nv);
    return r;
}

void moe_nvme_close(struct moe_nvme *nv)
{
    if (!nv)
        return;
    if (nv->uring) {
        /* the kernel may still be writing into the caller's memory */
        nv->head = nv->tail = NULL;
        while (nv->inflight) {
            int r = io_uring_submit_and_wait(&nv->ring, 1);
            if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
                break;
            reap(nv);
            nv->head = nv->tail = NULL;
        }
        io_uring_queue_exit(&nv->ring);
    }
    if (nv->fd >= 0)
        close(nv->fd);
    free(nv->ops);
    free(nv);
}
