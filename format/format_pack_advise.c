/* Page-cache advice for a pack's expert blobs (format_pack.h). */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/common.h"
#include "format/format_pack.h"

struct run {
    uint64_t off, end;
    const uint8_t *at; /* off in the pack's mapping */
};

static int run_cmp(const void *a, const void *b)
{
    const struct run *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* out of this process's mapping (at) and of the page cache (file offset off) */
static void drop(int fd, const void *at, uint64_t off, uint64_t n)
{
    (void)madvise((void *)at, (size_t)n, MADV_DONTNEED);
    (void)posix_fadvise(fd, (off_t)off, (off_t)n, POSIX_FADV_DONTNEED);
}

void moe_pack_use_sparsely(const struct moe_pack *p, const void *at, size_t n)
{
    uintptr_t page = 4096, lo = ((uintptr_t)at + page - 1) & ~(page - 1),
              hi = ((uintptr_t)at + n) & ~(page - 1);
    int fd;
    if (hi <= lo || (fd = open(moe_pack_path(p), O_RDONLY | O_CLOEXEC)) < 0)
        return;
    drop(fd, (const void *)lo, lo - (uintptr_t)moe_pack_mapping(p), hi - lo);
    close(fd);
    (void)madvise((void *)lo, hi - lo, MADV_RANDOM);
}

/* Advised as whole runs of adjacent blobs (a pack writes them back to back):
 * the kernel keeps a large folio that a range covers only in part, and one
 * blob is smaller than the folios an 8 MiB readahead makes. Blobs start and
 * end on 4 KiB boundaries, as madvise needs. */
void moe_pack_advise_experts(const struct moe_pack *p, enum moe_pack_advice advice)
{
    size_t n = moe_pack_expert_count(p);
    struct run *r = malloc((n ? n : 1) * sizeof(*r));
    int fd = -1;
    if (!r || (advice == MOE_PACK_EXPERTS_DROP &&
               (fd = open(moe_pack_path(p), O_RDONLY | O_CLOEXEC)) < 0)) {
        free(r);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const struct moe_pack_expert *e = moe_pack_expert_at(p, i);
        r[i] = (struct run){e->offset, e->offset + e->size, e->data};
    }
    qsort(r, n, sizeof(*r), run_cmp);
    for (size_t i = 0; i < n;) {
        uint64_t off = r[i].off, end = r[i].end;
        const uint8_t *at = r[i].at;
        for (i++; i < n && r[i].off <= end; i++)
            end = MOE_MAX(end, r[i].end);
        if (advice == MOE_PACK_EXPERTS_RANDOM)
            (void)madvise((void *)at, (size_t)(end - off), MADV_RANDOM);
        else
            drop(fd, at, off, end - off);
    }
    if (fd >= 0)
        close(fd);
    free(r);
}
