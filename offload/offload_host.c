/* offload: host tier memory (see offload_host.h). */
#define _GNU_SOURCE
#include "offload/offload_host.h"

#include <errno.h>
#include <numa.h>
#include <numaif.h>
#include <sched.h>
#include <stdint.h>
#include <sys/mman.h>

#include "common/common.h"

/* MOE_HOST_PIN_HOOK: a CUDA build pins the region here for DMA, after the
 * NUMA policy is set (cudaHostRegister(ptr, bytes, cudaHostRegisterPortable)),
 * and unpins it in moe_host_free before munmap (cudaHostUnregister). CPU
 * builds have nothing to pin: io_uring pins the pages it reads into when the
 * arena is registered as a fixed buffer (offload_nvme.c). */

int moe_numa_mode_parse(const char *s, enum moe_numa_mode *out)
{
    static const char *const names[] = {"off", "local", "interleave"};
    for (size_t i = 0; s && i < MOE_ARRAY_SIZE(names); i++)
        if (!strcmp(s, names[i])) {
            *out = (enum moe_numa_mode)i;
            return 0;
        }
    return moe_err(-EINVAL, "numa mode '%s': expected off, local or interleave", s ? s : "");
}

const char *moe_numa_mode_name(enum moe_numa_mode m)
{
    return m == MOE_NUMA_LOCAL ? "local" : m == MOE_NUMA_INTERLEAVE ? "interleave" : "off";
}

/* bytes of anonymous memory aligned to align (a power of two >= 4096):
 * over-map, then trim both ends, so munmap(ptr, bytes) frees it exactly */
static void *map_aligned(size_t bytes, size_t align)
{
    size_t span = bytes + align;
    uint8_t *base = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    uint8_t *p = (uint8_t *)MOE_ALIGN_UP((uintptr_t)base, align);
    if (p > base)
        munmap(base, (size_t)(p - base));
    size_t tail = span - (size_t)(p - base) - bytes;
    if (tail)
        munmap(p + bytes, tail);
    return p;
}

/* Sets the NUMA policy on r (before any page is touched). Failures leave
 * the region plain: placement is an optimisation, never a reason to fail. */
static void place(struct moe_host_region *r, enum moe_numa_mode mode)
{
    static bool warned;
    r->numa_node = -1;
    r->numa_bound = false;
    if (mode == MOE_NUMA_OFF)
        return;
    if (numa_available() < 0) {
        if (!warned)
            moe_log(MOE_LOG_INFO, "host memory: no NUMA support, numa mode %s ignored",
                    moe_numa_mode_name(mode));
        warned = true;
        return;
    }
    struct bitmask *mask;
    int node = -1, policy;
    if (mode == MOE_NUMA_LOCAL) {
        int cpu = sched_getcpu();
        node = cpu >= 0 ? numa_node_of_cpu(cpu) : -1;
        if (node < 0)
            return;
        mask = numa_allocate_nodemask();
        numa_bitmask_setbit(mask, (unsigned)node);
        policy = MPOL_BIND;
    } else {
        mask = numa_bitmask_alloc((unsigned)numa_num_possible_nodes());
        copy_bitmask_to_bitmask(numa_all_nodes_ptr, mask);
        policy = MPOL_INTERLEAVE;
    }
    if (!mask)
        return;
    if (mbind(r->ptr, r->bytes, policy, mask->maskp, mask->size + 1, 0) == 0) {
        r->numa_node = node;
        r->numa_bound = true;
    } else if (!warned) {
        moe_log(MOE_LOG_WARN, "host memory: mbind (%s) refused: %s; pages left to the kernel",
                moe_numa_mode_name(mode), strerror(errno));
        warned = true;
    }
    numa_bitmask_free(mask);
}

int moe_host_alloc(size_t bytes, enum moe_numa_mode mode, bool hugepages,
                   struct moe_host_region *out)
{
    memset(out, 0, sizeof(*out));
    out->numa_node = -1;
    if (bytes == 0)
        return moe_err(-EINVAL, "host memory: zero bytes asked");
    if (hugepages) {
        size_t n = MOE_ALIGN_UP(bytes, (size_t)MOE_HOST_HUGE_PAGE);
        /* no MAP_NORESERVE: without reserved pages the mmap must fail here,
         * not SIGBUS on first touch */
        void *p = mmap(NULL, n, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
        if (p != MAP_FAILED) {
            out->ptr = p;
            out->bytes = n;
            out->huge = out->hugetlb = true;
        } else if ((p = map_aligned(n, MOE_HOST_HUGE_PAGE))) {
            out->ptr = p;
            out->bytes = n;
            out->huge = madvise(p, n, MADV_HUGEPAGE) == 0;
        }
    }
    if (!out->ptr) {
        size_t n = MOE_ALIGN_UP(bytes, (size_t)MOE_HOST_PAGE);
        void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return moe_err(-ENOMEM, "host memory: cannot map %zu bytes: %s", n, strerror(errno));
        out->ptr = p;
        out->bytes = n;
    }
    place(out, mode);
    /* MOE_HOST_PIN_HOOK (CUDA builds): pin out->ptr here */
    return 0;
}

void moe_host_free(struct moe_host_region *r)
{
    if (!r || !r->ptr)
        return;
    /* MOE_HOST_PIN_HOOK (CUDA builds): unpin r->ptr here */
    munmap(r->ptr, r->bytes);
    memset(r, 0, sizeof(*r));
    r->numa_node = -1;
}
