/* offload: how the host tier's arena is cut into slots.
 *
 * One blob per slot, no allocation on the serving path: experts whose blobs
 * are within an eighth of each other's size share a class of equal slots of
 * that class's largest blob (rounded up to whole 4 KiB pages for O_DIRECT).
 * A pack with one width (q4, qmoe) is one class; an mcmoe pack's 1/2/3-bit
 * experts get a class each, so a small expert does not take a slot the size
 * of the largest. Each class gets slots for the same share of its experts,
 * at least as many as one layer has of it (a batch may need every expert of
 * a layer at once), and the bytes left over go to whichever class then holds
 * the smallest share. Those minimums add up over the classes: where the
 * classes would hold no more blobs in all than one class of slots of the
 * largest size (a small budget, layers that mix the widths differently),
 * the plan is that one class. */
#ifndef MOE_OFFLOAD_SLOTS_H
#define MOE_OFFLOAD_SLOTS_H

#include <stddef.h>
#include <stdint.h>

#define MOE_SLOT_MAX_CLASSES 8

struct moe_slot_class {
    size_t slot_bytes;
    uint32_t n_experts;  /* blobs of this class in the pack */
    uint32_t min_slots;  /* the most one layer has */
    uint32_t n_slots;
};

struct moe_slot_plan {
    int n_classes;                 /* largest slots first */
    struct moe_slot_class c[MOE_SLOT_MAX_CLASSES];
    size_t bytes;                  /* sum of n_slots x slot_bytes: the arena */
};

/* Plans the arena for blobs size[l * E + e] (0: no such expert) within
 * budget bytes, setting class_of[l * E + e]. Returns 0, or -EINVAL naming
 * the budget and the least it must be when it cannot hold the slots one
 * layer may need, or when there are no blobs. */
int moe_slot_plan_make(const size_t *size, int32_t L, int32_t E, size_t budget,
                       uint8_t *class_of, struct moe_slot_plan *out);

#endif
