/* The prefetch cost model (offload_prefetch.h). */
#include <errno.h>
#include <string.h>

#include "common/common.h"
#include "offload/offload_prefetch.h"

/* averages over roughly the last 32 samples: a few tokens of a model's
 * layers, quick to follow a change of traffic or of the link */
#define ALPHA (1.0 / 32.0)
/* samples each average needs before it is trusted */
#define WARM 8

static const char *const mode_names[] = {"no", "yes", "auto"};

int moe_prefetch_mode_parse(const char *s, enum moe_prefetch_mode *out)
{
    for (int i = 0; i < 3; i++)
        if (!strcmp(s, mode_names[i])) {
            *out = (enum moe_prefetch_mode)i;
            return 0;
        }
    return moe_err(-EINVAL, "prefetch '%s': expected no, yes or auto", s);
}

const char *moe_prefetch_mode_name(enum moe_prefetch_mode m)
{
    return (unsigned)m < 3 ? mode_names[m] : "?";
}

static void ewma(double *avg, uint64_t *n, double x)
{
    /* a plain mean for the first samples, then exponential */
    (*n)++;
    double a = *n < 32 ? 1.0 / (double)*n : ALPHA;
    *avg += a * (x - *avg);
}

void moe_prefetch_model_init(struct moe_prefetch_model *m)
{
    *m = (struct moe_prefetch_model){0};
}

void moe_prefetch_model_outcome(struct moe_prefetch_model *m, uint32_t guessed, uint32_t right)
{
    if (guessed > 0) /* one sample per guess: its share right, in no order */
        ewma(&m->p, &m->n_p, (double)right / (double)guessed);
}

void moe_prefetch_model_reads(struct moe_prefetch_model *m, double wait_s, uint32_t reads)
{
    if (reads > 0)
        ewma(&m->t_read, &m->n_read, wait_s / (double)reads);
}

void moe_prefetch_model_gap(struct moe_prefetch_model *m, double gap_s)
{
    ewma(&m->t_gap, &m->n_gap, gap_s);
}

void moe_prefetch_model_lookups(struct moe_prefetch_model *m, uint32_t hits, uint32_t lookups)
{
    if (lookups > 0)
        ewma(&m->h, &m->n_h, (double)hits / (double)lookups);
}

bool moe_prefetch_model_worth(const struct moe_prefetch_model *m, uint32_t k, uint32_t evicting)
{
    if (k == 0)
        return false;
    if (m->n_p < WARM || m->n_read < WARM || m->n_gap < WARM)
        return true;
    double wait_without = m->p * (double)k * m->t_read;
    double wait_with = (double)k * m->t_read - m->t_gap;
    if (wait_with < 0)
        wait_with = 0;
    wait_with += (1.0 - m->p) * (double)evicting * m->h * m->t_read;
    return wait_with < wait_without;
}
