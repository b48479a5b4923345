#include "experts/experts.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "common/common.h"

void moe_experts_scratch_free(struct moe_experts_scratch *s)
{
    if (!s)
        return;
    free(s->xin);
    free(s->gate);
    free(s->up);
    free(s->out);
    free(s->order);
    free(s->count);
    memset(s, 0, sizeof(*s));
}

static int scratch_reserve(struct moe_experts_scratch *s, size_t rows, size_t hidden, size_t ffn,
                           int32_t n_experts)
{
    if (rows <= s->cap_rows && hidden <= s->cap_hidden && ffn <= s->cap_ffn &&
        n_experts <= s->cap_experts)
        return 0;
    rows = MOE_MAX(rows, s->cap_rows);
    hidden = MOE_MAX(hidden, s->cap_hidden);
    ffn = MOE_MAX(ffn, s->cap_ffn);
    n_experts = MOE_MAX(n_experts, s->cap_experts);
    moe_experts_scratch_free(s);
    s->xin = malloc(rows * hidden * sizeof(float));
    s->out = malloc(rows * hidden * sizeof(float));
    s->gate = malloc(rows * ffn * sizeof(float));
    s->up = malloc(rows * ffn * sizeof(float));
    s->order = malloc(rows * sizeof(int32_t));
    s->count = malloc((size_t)(2 * n_experts + 1) * sizeof(int32_t)); /* counts + cursors */
    if (!s->xin || !s->out || !s->gate || !s->up || !s->order || !s->count) {
        moe_experts_scratch_free(s);
        return moe_err(-ENOMEM, "out of memory for expert activations (%zu rows)", rows);
    }
    s->cap_rows = rows;
    s->cap_hidden = hidden;
    s->cap_ffn = ffn;
    s->cap_experts = n_experts;
    return 0;
}

static inline float silu(float v)
{
    return v / (1.0f + expf(-v));
}

void moe_expert_ffn_hidden(struct moe_pool *pool, const struct moe_expert_weights *w,
                           const struct moe_ffn_kind *kind, const float *x, int32_t n,
                           float *gate, float *up)
{
    int64_t ffn = w->gate.rows;
    moe_matmul(pool, &w->gate, x, n, gate);
    moe_matmul(pool, &w->up, x, n, up);
    moe_vec_add_rows(gate, w->b_gate, n, ffn);
    moe_vec_add_rows(up, w->b_up, n, ffn);
    if (!kind || kind->act == MOE_FFN_SILU) {
        for (int64_t i = 0; i < (int64_t)n * ffn; i++)
            gate[i] = silu(gate[i]) * up[i];
    } else { /* gpt-oss: the clamps first, then a sigmoid with a slope, and up + 1 */
        float lim = kind->limit, a = kind->alpha;
        for (int64_t i = 0; i < (int64_t)n * ffn; i++) {
            float g = fminf(gate[i], lim), u = fminf(fmaxf(up[i], -lim), lim);
            gate[i] = g / (1.0f + expf(-a * g)) * (u + 1.0f);
        }
    }
}

void moe_expert_ffn(struct moe_pool *pool, const struct moe_expert_weights *w,
                    const struct moe_ffn_kind *kind, const float *x, int32_t n, float *gate,
                    float *up, float *out)
{
    moe_expert_ffn_hidden(pool, w, kind, x, n, gate, up);
    moe_matmul(pool, &w->down, gate, n, out);
    moe_vec_add_rows(out, w->b_down, n, w->down.rows);
}

/* expert e over its m gathered tokens (order[begin..begin+m)), outputs into
 * s->out rows [begin, begin+m) */
static void run_expert(struct moe_pool *pool, const struct moe_expert_weights *w,
                       const struct moe_ffn_kind *kind, const float *x, int32_t n, int32_t hidden,
                       struct moe_experts_scratch *s, int32_t begin, int32_t m)
{
    const float *xin = x;
    if (m > 1 || n > 1) {
        for (int32_t i = 0; i < m; i++) {
            int32_t t = s->order[begin + i] / MOE_ROUTER_MAX_K;
            memcpy(s->xin + (size_t)i * hidden, x + (size_t)t * hidden,
                   (size_t)hidden * sizeof(float));
        }
        xin = s->xin;
    }
    moe_expert_ffn(pool, w, kind, xin, m, s->gate, s->up, s->out + (size_t)begin * hidden);
}

int moe_experts_run(struct moe_pool *pool, const struct moe_expert_weights *experts,
                    int32_t n_experts, const float *x, int32_t n, int32_t hidden,
                    const struct moe_route *routes, float *y,
                    struct moe_experts_scratch *s)
{
    return moe_experts_run_from(pool, experts, NULL, NULL, n_experts, x, n, hidden, routes, y, s);
}

int moe_experts_run_from(struct moe_pool *pool, const struct moe_expert_weights *experts,
                         const struct moe_expert_source *src, const struct moe_ffn_kind *kind,
                         int32_t n_experts, const float *x, int32_t n, int32_t hidden,
                         const struct moe_route *routes, float *y, struct moe_experts_scratch *s)
{
    size_t slots = 0;
    for (int32_t t = 0; t < n; t++)
        slots += (size_t)routes[t].n;
    int64_t ffn = experts[0].gate.rows;
    int rc = scratch_reserve(s, slots, (size_t)hidden, (size_t)ffn, n_experts);
    if (rc < 0)
        return rc;

    /* counting sort of (token, slot) pairs by expert: order[] holds token*K+j */
    memset(s->count, 0, (size_t)(n_experts + 1) * sizeof(int32_t));
    for (int32_t t = 0; t < n; t++)
        for (int32_t j = 0; j < routes[t].n; j++)
            s->count[routes[t].expert[j] + 1]++;
    for (int32_t e = 0; e < n_experts; e++)
        s->count[e + 1] += s->count[e];
    int32_t *fill = s->count + n_experts + 1; /* per-expert write cursors */
    memcpy(fill, s->count, (size_t)n_experts * sizeof(int32_t));
    for (int32_t t = 0; t < n; t++)
        for (int32_t j = 0; j < routes[t].n; j++)
            s->order[fill[routes[t].expert[j]]++] = t * MOE_ROUTER_MAX_K + j;

    /* the experts at hand first (pass 0), then the others as they arrive; after
     * a failure the rest are still waited for, so that nothing is left in flight */
    for (int pass = 0; pass < (src ? 2 : 1); pass++) {
        for (int32_t e = 0; e < n_experts; e++) {
            int32_t begin = s->count[e], m = s->count[e + 1] - begin;
            if (m == 0 || (src && src->ready[e] != (pass == 0)))
                continue;
            const struct moe_expert_weights *w = &experts[e];
            if (pass == 1) {
                int r = src->wait(src->ctx, e, &w);
                if (r < 0 && src->failed) { /* isolated: only e's tokens go without */
                    src->failed[e] = true;
                    continue;
                }
                rc = rc < 0 ? rc : r;
            }
            if (rc == 0)
                run_expert(pool, w, kind, x, n, hidden, s, begin, m);
        }
    }
    if (rc < 0)
        return rc;
    const bool *failed = src ? src->failed : NULL;
    /* summed in expert order whatever the order they ran in: the same bits */
    for (int32_t i = 0; i < (int32_t)slots; i++) {
        int32_t t = s->order[i] / MOE_ROUTER_MAX_K, j = s->order[i] % MOE_ROUTER_MAX_K;
        if (failed && failed[routes[t].expert[j]])
            continue; /* its outputs were never computed */
        moe_vec_axpy_f32(y + (size_t)t * hidden, routes[t].weight[j], s->out + (size_t)i * hidden,
                         hidden);
    }
    return 0;
}
