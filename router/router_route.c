/* The routers of the architectures beyond softmax-top-k: grouped selection,
 * sigmoid scores with a correction bias that picks but does not weigh,
 * softmax over the chosen logits only. Each follows its transformers
 * router line by line (float maths as torch does it in float32). */
#include "router/router.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "router/router_int.h"

/* allowed[e]: e's group is one of the topk_group best, a group ranked by
 * its largest score (max2 false) or the sum of its two largest (true) */
static void group_mask(const float *choice, int32_t n, int32_t n_group, int32_t topk_group,
                       bool max2, bool *allowed)
{
    int32_t per = n / n_group;
    float gs[MOE_ROUTER_MAX_GROUPS];
    for (int32_t g = 0; g < n_group; g++) {
        float a = -INFINITY, b = -INFINITY;
        for (int32_t i = 0; i < per; i++) {
            float v = choice[g * per + i];
            if (v > a) {
                b = a;
                a = v;
            } else if (v > b) {
                b = v;
            }
        }
        gs[g] = max2 ? a + b : a;
    }
    int32_t sel[MOE_ROUTER_MAX_GROUPS];
    int32_t m = moe_router_top_k(gs, NULL, n_group, topk_group, sel);
    memset(allowed, 0, (size_t)n * sizeof(bool));
    for (int32_t j = 0; j < m; j++)
        for (int32_t i = 0; i < per; i++)
            allowed[sel[j] * per + i] = true;
}

static void softmax(const float *x, int32_t n, float *p)
{
    float mx = x[0];
    for (int32_t e = 1; e < n; e++)
        mx = x[e] > mx ? x[e] : mx;
    double sum = 0.0;
    for (int32_t e = 0; e < n; e++)
        sum += exp((double)x[e] - mx);
    for (int32_t e = 0; e < n; e++)
        p[e] = (float)(exp((double)x[e] - mx) / sum);
}

/* out's weights sorted decreasing (ties: lower expert first) */
static void sort_route(struct moe_route *out)
{
    for (int32_t i = 1; i < out->n; i++) {
        float w = out->weight[i];
        int32_t e = out->expert[i], j = i;
        while (j > 0 && (out->weight[j - 1] < w ||
                         (out->weight[j - 1] == w && out->expert[j - 1] > e))) {
            out->weight[j] = out->weight[j - 1];
            out->expert[j] = out->expert[j - 1];
            j--;
        }
        out->weight[j] = w;
        out->expert[j] = e;
    }
}

int32_t moe_router_route(const struct moe_router_cfg *cfg, const float *logits,
                         int32_t n_experts, int32_t k, float beta, struct moe_route *out,
                         struct moe_router_layer_stats *st)
{
    if (k > MOE_ROUTER_MAX_K)
        k = MOE_ROUTER_MAX_K;
    if (k > n_experts)
        k = n_experts;
    if (cfg->kind == MOE_ROUTE_SOFTMAX) {
        int32_t d = moe_router_topk_prune(logits, n_experts, k, cfg->renorm, beta, out, st);
        if (cfg->scale != 1.0f)
            for (int32_t j = 0; j < out->n; j++)
                out->weight[j] *= cfg->scale;
        return d;
    }
    float score[MOE_ROUTER_MAX_EXPERTS], choice[MOE_ROUTER_MAX_EXPERTS];
    bool allowed[MOE_ROUTER_MAX_EXPERTS];
    if (n_experts > MOE_ROUTER_MAX_EXPERTS) /* refused at load: config validation */
        n_experts = MOE_ROUTER_MAX_EXPERTS;
    const bool *mask = NULL;
    int32_t idx[MOE_ROUTER_MAX_K];
    switch (cfg->kind) {
    case MOE_ROUTE_SOFTMAX_GROUP:
        softmax(logits, n_experts, score);
        memcpy(choice, score, (size_t)n_experts * sizeof(float));
        break;
    case MOE_ROUTE_SIGMOID:
        for (int32_t e = 0; e < n_experts; e++) {
            score[e] = 1.0f / (1.0f + expf(-logits[e]));
            choice[e] = score[e] + (cfg->bias ? cfg->bias[e] : 0.0f);
        }
        break;
    case MOE_ROUTE_SOFTMAX_BIAS:
        softmax(logits, n_experts, score);
        for (int32_t e = 0; e < n_experts; e++)
            choice[e] = score[e] + (cfg->bias ? cfg->bias[e] : 0.0f);
        break;
    case MOE_ROUTE_TOPK_SOFTMAX:
    default:
        memcpy(choice, logits, (size_t)n_experts * sizeof(float));
        break;
    }
    if (cfg->n_group > 1 && cfg->kind != MOE_ROUTE_TOPK_SOFTMAX) {
        group_mask(choice, n_experts, cfg->n_group, cfg->topk_group,
                   cfg->kind == MOE_ROUTE_SIGMOID, allowed);
        mask = allowed;
    }
    out->n = moe_router_top_k(choice, mask, n_experts, k, idx);
    double sum = 0.0;
    if (cfg->kind == MOE_ROUTE_TOPK_SOFTMAX) { /* softmax over the k chosen logits */
        float v[MOE_ROUTER_MAX_K], p[MOE_ROUTER_MAX_K];
        for (int32_t j = 0; j < out->n; j++)
            v[j] = logits[idx[j]];
        softmax(v, out->n, p);
        for (int32_t j = 0; j < out->n; j++) {
            out->expert[j] = idx[j];
            out->weight[j] = p[j];
        }
    } else {
        float fsum = 0.0f; /* torch sums the k float32 weights */
        for (int32_t j = 0; j < out->n; j++) {
            out->expert[j] = idx[j];
            out->weight[j] = score[idx[j]];
            fsum += score[idx[j]];
        }
        float div = 1.0f;
        if (cfg->kind == MOE_ROUTE_SOFTMAX_BIAS)
            div = fsum > cfg->norm_min ? fsum : cfg->norm_min;
        else if (cfg->renorm)
            div = fsum + 1e-20f;
        if (cfg->kind == MOE_ROUTE_SOFTMAX_BIAS || cfg->renorm)
            for (int32_t j = 0; j < out->n; j++)
                out->weight[j] /= div;
    }
    for (int32_t j = 0; j < out->n; j++) {
        out->weight[j] *= cfg->scale;
        sum += out->weight[j];
    }
    sort_route(out);
    /* ODP on the final weights: the kept ones keep the k weights' sum */
    int32_t dropped = 0;
    double pruned = 0.0;
    if (beta > 0.0f && out->n > 1) {
        double thr = (double)beta * out->weight[0];
        int32_t keep = 1;
        while (keep < out->n && !(out->weight[keep] < thr))
            keep++;
        for (int32_t j = keep; j < out->n; j++)
            pruned += out->weight[j];
        dropped = out->n - keep;
        out->n = keep;
        if (dropped && sum - pruned > 0.0)
            for (int32_t j = 0; j < out->n; j++)
                out->weight[j] = (float)((double)out->weight[j] * (sum / (sum - pruned)));
    }
    moe_router_stats_add(st, out->n, dropped, sum, pruned);
    return dropped;
}
