/* The host tier's slot classes (offload_slots.h). */
#include "offload/offload_slots.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

static int size_desc(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* sizes sorted largest first into classes: one starts wherever a size falls
 * below num/den of the current class's largest; MAX + 1 when too many */
static int group(const size_t *sorted, size_t n, size_t num, size_t den, size_t *top)
{
    int k = 0;
    for (size_t i = 0; i < n; i++) {
        if (k > 0 && sorted[i] * den >= top[k - 1] * num)
            continue;
        if (k == MOE_SLOT_MAX_CLASSES)
            return MOE_SLOT_MAX_CLASSES + 1;
        top[k++] = sorted[i];
    }
    return k;
}

/* slots for share f of each class's experts (within its bounds); the bytes */
static size_t at_share(struct moe_slot_plan *p, double f)
{
    size_t bytes = 0;
    for (int c = 0; c < p->n_classes; c++) {
        struct moe_slot_class *k = &p->c[c];
        k->n_slots = MOE_MIN(MOE_MAX((uint32_t)(f * k->n_experts), k->min_slots), k->n_experts);
        bytes += (size_t)k->n_slots * k->slot_bytes;
    }
    return bytes;
}

/* the plan with sizes grouped at ratio[from] (the next ones, merging further,
 * when that makes too many classes); -EINVAL with out->bytes the least it
 * needs when the budget cannot hold one layer's experts this way */
static int plan_at(const size_t *size, const size_t *sorted, size_t m, int32_t L, int32_t E,
                   size_t budget, size_t from, uint8_t *class_of, struct moe_slot_plan *out)
{
    static const size_t ratio[][2] = {{7, 8}, {3, 4}, {1, 2}, {1, 4}, {0, 1}};
    size_t top[MOE_SLOT_MAX_CLASSES + 1];
    memset(out, 0, sizeof(*out));
    for (size_t r = from; r < sizeof(ratio) / sizeof(ratio[0]); r++)
        if ((out->n_classes = group(sorted, m, ratio[r][0], ratio[r][1], top)) <=
            MOE_SLOT_MAX_CLASSES)
            break;
    for (int c = 0; c < out->n_classes; c++)
        out->c[c].slot_bytes = (top[c] + 4095) & ~(size_t)4095;
    uint32_t per_layer[MOE_SLOT_MAX_CLASSES];
    for (int32_t l = 0; l < L; l++) {
        memset(per_layer, 0, sizeof(per_layer));
        for (int32_t e = 0; e < E; e++) {
            size_t i = (size_t)l * E + e, s = size[i];
            class_of[i] = 0;
            if (!s)
                continue;
            int c = 0; /* the smallest class whose largest still holds s */
            while (c + 1 < out->n_classes && top[c + 1] >= s)
                c++;
            class_of[i] = (uint8_t)c;
            out->c[c].n_experts++;
            per_layer[c]++;
        }
        for (int c = 0; c < out->n_classes; c++)
            out->c[c].min_slots = MOE_MAX(out->c[c].min_slots, per_layer[c]);
    }
    if ((out->bytes = at_share(out, 0.0)) > budget)
        return -EINVAL;
    double lo = 0.0, hi = 1.0;
    if (at_share(out, 1.0) <= budget)
        lo = 1.0;
    else
        for (int it = 0; it < 50; it++) {
            double mid = 0.5 * (lo + hi);
            *(at_share(out, mid) <= budget ? &lo : &hi) = mid;
        }
    out->bytes = at_share(out, lo);
    for (;;) { /* what is left: a slot more for the class holding the smallest share */
        int best = -1;
        double best_share = 2.0;
        for (int c = 0; c < out->n_classes; c++) {
            const struct moe_slot_class *k = &out->c[c];
            double share = (double)k->n_slots / k->n_experts;
            if (k->n_slots < k->n_experts && k->slot_bytes <= budget - out->bytes &&
                share < best_share) {
                best = c;
                best_share = share;
            }
        }
        if (best < 0)
            break;
        out->c[best].n_slots++;
        out->bytes += out->c[best].slot_bytes;
    }
    return 0;
}

static uint32_t slots_of(const struct moe_slot_plan *p)
{
    uint32_t n = 0;
    for (int c = 0; c < p->n_classes; c++)
        n += p->c[c].n_slots;
    return n;
}

int moe_slot_plan_make(const size_t *size, int32_t L, int32_t E, size_t budget,
                       uint8_t *class_of, struct moe_slot_plan *out)
{
    memset(out, 0, sizeof(*out));
    size_t n = (size_t)L * (size_t)E, m = 0;
    size_t *sorted = malloc((n ? n : 1) * sizeof(*sorted));
    uint8_t *one = malloc(n ? n : 1);
    if (!sorted || !one) {
        free(sorted);
        free(one);
        return moe_err(-ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++)
        if (size[i])
            sorted[m++] = size[i];
    int rc;
    if (m == 0) {
        rc = moe_err(-EINVAL, "the pack has no expert blobs to offload");
        goto out;
    }
    qsort(sorted, m, sizeof(*sorted), size_desc);
    /* classes need a layer's worth of each class's slots; where that leaves
     * no more slots in all than one class of the largest size, one class it is */
    struct moe_slot_plan uniform;
    int rc_u = plan_at(size, sorted, m, L, E, budget, 4, one, &uniform);
    int rc_c = plan_at(size, sorted, m, L, E, budget, 0, class_of, out);
    if (rc_u < 0 && rc_c < 0) {
        const struct moe_slot_plan *p = uniform.bytes < out->bytes ? &uniform : out;
        uint32_t blobs = 0;
        for (int c = 0; c < p->n_classes; c++)
            blobs += p->c[c].min_slots;
        rc = moe_err(-EINVAL, "[offload] host_bytes = %zu is below the %zu bytes of the %u expert "
                     "blobs one layer may need at once (up to %zu bytes each)", budget, p->bytes,
                     blobs, p->c[0].slot_bytes);
        goto out;
    }
    if (rc_c < 0 || (rc_u == 0 && (slots_of(&uniform) > slots_of(out) ||
                                   (slots_of(&uniform) == slots_of(out) &&
                                    uniform.bytes <= out->bytes)))) {
        *out = uniform;
        memcpy(class_of, one, n);
    }
    rc = 0;
out:
    free(sorted);
    free(one);
    return rc;
}
