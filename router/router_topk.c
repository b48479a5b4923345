#include "router/router.h"

#include <math.h>

#include "router/router_int.h"

int32_t moe_router_top_k(const float *v, const bool *allowed, int32_t n, int32_t k, int32_t *idx)
{
    /* insertion into a sorted list of k: expert counts are small */
    int32_t m = 0;
    for (int32_t e = 0; e < n; e++) {
        if (allowed && !allowed[e])
            continue;
        int32_t pos = m;
        while (pos > 0 && v[idx[pos - 1]] < v[e])
            pos--;
        if (pos >= k)
            continue;
        int32_t last = m < k ? m : k - 1;
        for (int32_t j = last; j > pos; j--)
            idx[j] = idx[j - 1];
        idx[pos] = e;
        if (m < k)
            m++;
    }
    return m;
}

void moe_router_stats_add(struct moe_router_layer_stats *st, int32_t kept, int32_t dropped,
                          double mass, double pruned)
{
    if (!st)
        return;
    st->tokens++;
    st->kept += (uint64_t)kept;
    st->pruned += (uint64_t)dropped;
    st->mass_topk += mass;
    st->mass_pruned += pruned;
}

void moe_router_topk(const float *logits, int32_t n_experts, int32_t k, bool renorm,
                     struct moe_route *out)
{
    moe_router_topk_prune(logits, n_experts, k, renorm, 0.0f, out, NULL);
}

int32_t moe_router_topk_prune(const float *logits, int32_t n_experts, int32_t k, bool renorm,
                              float beta, struct moe_route *out,
                              struct moe_router_layer_stats *st)
{
    if (k > MOE_ROUTER_MAX_K)
        k = MOE_ROUTER_MAX_K;
    if (k > n_experts)
        k = n_experts;
    /* softmax denominator over ALL experts (the top-k weights without
     * renormalisation are these full-softmax probabilities) */
    float mx = logits[0];
    for (int32_t e = 1; e < n_experts; e++)
        mx = logits[e] > mx ? logits[e] : mx;
    double sum = 0.0;
    for (int32_t e = 0; e < n_experts; e++)
        sum += exp((double)logits[e] - mx);

    out->n = moe_router_top_k(logits, NULL, n_experts, k, out->expert);
    double p[MOE_ROUTER_MAX_K];
    double topk = 0.0;
    for (int32_t j = 0; j < out->n; j++) {
        p[j] = exp((double)logits[out->expert[j]] - mx) / sum;
        topk += p[j];
    }
    /* ODP: compare the probabilities before any renormalisation; the list
     * is sorted, so the first one below the threshold ends it */
    int32_t dropped = 0;
    double pruned = 0.0;
    if (beta > 0.0f) {
        double thr = (double)beta * p[0];
        int32_t keep = 1;
        while (keep < out->n && !(p[keep] < thr))
            keep++;
        for (int32_t j = keep; j < out->n; j++)
            pruned += p[j];
        dropped = out->n - keep;
        out->n = keep;
    }
    double kept = topk - pruned;
    /* renorm: the kept weights sum to 1 (the float-rounded probability over
     * the kept mass, as before ODP existed); otherwise, only when something
     * was dropped, they are scaled back up to the top-k mass */
    for (int32_t j = 0; j < out->n; j++) {
        out->weight[j] = (float)p[j];
        if (renorm && kept > 0.0)
            out->weight[j] = (float)((double)out->weight[j] / kept);
        else if (!renorm && dropped && kept > 0.0)
            out->weight[j] = (float)((double)out->weight[j] * (topk / kept));
    }
    moe_router_stats_add(st, out->n, dropped, topk, pruned);
    return dropped;
}
