/* offload: whether reading the next layer's guessed experts ahead of need
 * pays ([offload] prefetch = auto).
 *
 * A guess read ahead overlaps the compute between this layer's acquire and
 * the next one's (the gap); a wrong guess costs a whole read, and where the
 * link is the bottleneck it also delays the reads the next layer really
 * needs, which queue behind it. With k guessed experts not yet resident, a
 * share p of them right, t_read the time one more read adds to a layer's wait
 * and t_gap the compute the reads can hide behind:
 *   not reading ahead, the next layer waits p * k * t_read for the right ones;
 *   reading ahead, all k reads finish k * t_read after the guess, so the next
 *   layer waits max(0, k * t_read - t_gap), whatever it needs; and each of
 *   the e reads that must evict a resident expert to get a slot costs, when
 *   its guess is wrong, a later read of that expert with the tier's hit rate
 *   h as its chance: (1 - p) * e * h * t_read more.
 * Read ahead when the second is smaller. p, h, t_read and t_gap are running
 * averages measured while serving: p from every guess (read or not) against
 * what the next layer needed, h from the lookups, t_read from the layers whose
 * reads had the link to themselves, t_gap between acquires. Until each has
 * enough samples the guesses are read (p, t_read and t_gap still learn). */
#ifndef MOE_OFFLOAD_PREFETCH_H
#define MOE_OFFLOAD_PREFETCH_H

#include <stdbool.h>
#include <stdint.h>

/* [offload] prefetch: never, every guess, or where the model expects it to pay */
enum moe_prefetch_mode { MOE_PREFETCH_NO, MOE_PREFETCH_YES, MOE_PREFETCH_AUTO };
/* "no", "yes", "auto"; -EINVAL naming the word and the choices */
int moe_prefetch_mode_parse(const char *s, enum moe_prefetch_mode *out);
const char *moe_prefetch_mode_name(enum moe_prefetch_mode m);

struct moe_prefetch_model {
    double p;      /* share of guessed, non-resident experts the next layer needed */
    double t_read; /* seconds one more expert read adds to a layer's wait */
    double t_gap;  /* seconds between one layer's acquire and the next's */
    double h;      /* share of lookups found resident */
    uint64_t n_p, n_read, n_gap, n_h;
};

void moe_prefetch_model_init(struct moe_prefetch_model *m);
/* a guess of `guessed` non-resident experts, `right` of which were needed */
void moe_prefetch_model_outcome(struct moe_prefetch_model *m, uint32_t guessed, uint32_t right);
/* a layer waited wait_s for `reads` reads that had the link to themselves */
void moe_prefetch_model_reads(struct moe_prefetch_model *m, double wait_s, uint32_t reads);
void moe_prefetch_model_gap(struct moe_prefetch_model *m, double gap_s);
/* one layer's lookups: `hits` of `lookups` were resident */
void moe_prefetch_model_lookups(struct moe_prefetch_model *m, uint32_t hits, uint32_t lookups);
/* true: reading these k guesses ahead, `evicting` of them into slots that
 * must first be emptied, should shorten the wait */
bool moe_prefetch_model_worth(const struct moe_prefetch_model *m, uint32_t k, uint32_t evicting);

#endif
