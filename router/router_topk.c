#include "router/router.h"

#include <math.h>

void moe_router_topk(const float *logits, int32_t n_experts, int32_t k, bool renorm,
                     struct moe_route *out)
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

    /* insertion into a sorted list of k: expert counts are small */
    out->n = 0;
    for (int32_t e = 0; e < n_experts; e++) {
        float v = logits[e];
        int32_t pos = out->n;
        while (pos > 0 && logits[out->expert[pos - 1]] < v)
            pos--;
        if (pos >= k)
            continue;
        int32_t last = out->n < k ? out->n : k - 1;
        for (int32_t j = last; j > pos; j--)
            out->expert[j] = out->expert[j - 1];
        out->expert[pos] = e;
        if (out->n < k)
            out->n++;
    }
    double kept = 0.0;
    for (int32_t j = 0; j < out->n; j++) {
        double p = exp((double)logits[out->expert[j]] - mx) / sum;
        out->weight[j] = (float)p;
        kept += p;
    }
    if (renorm && kept > 0.0)
        for (int32_t j = 0; j < out->n; j++)
            out->weight[j] = (float)((double)out->weight[j] / kept);
}
