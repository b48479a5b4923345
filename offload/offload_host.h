/* offload: the host tier's memory. One region per call, mapped anonymous,
 * placed on NUMA nodes with libnuma and backed by huge pages where the
 * machine allows; what was actually obtained is reported in the region, so
 * the caller never fails because a machine lacks NUMA or huge pages.
 *
 * Pinning for GPU copies (cudaHostRegister) belongs to CUDA builds: see
 * MOE_HOST_PIN_HOOK in offload_host.c; this file never includes CUDA. */
#ifndef MOE_OFFLOAD_HOST_H
#define MOE_OFFLOAD_HOST_H

#include <stdbool.h>
#include <stddef.h>

enum moe_numa_mode {
    MOE_NUMA_OFF,        /* the kernel's default policy (first touch) */
    MOE_NUMA_LOCAL,      /* bound to the node of the calling thread's CPU */
    MOE_NUMA_INTERLEAVE, /* pages spread round-robin over all nodes */
};

/* "off", "local", "interleave" -> 0; anything else -EINVAL with moe_err set */
int moe_numa_mode_parse(const char *s, enum moe_numa_mode *out);
const char *moe_numa_mode_name(enum moe_numa_mode m);

#define MOE_HOST_PAGE 4096u
#define MOE_HOST_HUGE_PAGE (2u << 20)

struct moe_host_region {
    void *ptr;     /* MOE_HOST_PAGE aligned; MOE_HOST_HUGE_PAGE aligned when huge */
    size_t bytes;  /* as asked, rounded up to the page size used */
    bool huge;     /* 2 MiB pages: hugetlbfs (MAP_HUGETLB) or transparent (madvise) */
    bool hugetlb;  /* huge came from MAP_HUGETLB (reserved pages, never split) */
    int numa_node; /* the node the pages are bound to; -1 = interleaved / unknown */
    bool numa_bound; /* a NUMA policy is in force on the region */
};

/* Maps bytes (rounded up) of zero-filled memory. Pages are not touched here,
 * so the NUMA policy decides where each lands on first write.
 * hugepages: MAP_HUGETLB first, else a 2 MiB-aligned mapping with
 * madvise(MADV_HUGEPAGE), else plain pages. mode: LOCAL/INTERLEAVE need
 * numa_available(); without it (or when mbind is refused) the region is
 * plain, numa_bound false. Fails only for bytes == 0 (-EINVAL) or no memory
 * (-ENOMEM), with moe_err set. */
int moe_host_alloc(size_t bytes, enum moe_numa_mode mode, bool hugepages,
                   struct moe_host_region *out);
/* Unmaps r and zeroes it; a zeroed region (or NULL) is a no-op. */
void moe_host_free(struct moe_host_region *r);

#endif
