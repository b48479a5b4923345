/* router: which experts each token uses, and with what weight. */
#ifndef MOE_ROUTER_H
#define MOE_ROUTER_H

#include <stdbool.h>
#include <stdint.h>

#define MOE_ROUTER_MAX_K 16

struct moe_route {
    int32_t n;                          /* experts kept */
    int32_t expert[MOE_ROUTER_MAX_K];   /* in decreasing weight order */
    float weight[MOE_ROUTER_MAX_K];
};

/* Softmax over all n_experts logits, the k largest kept (lowest index first
 * on ties), their probabilities renormalised to sum 1 when renorm is set
 * (Mixtral, Qwen3-MoE) or kept as they are (Qwen2-MoE, OLMoE). */
void moe_router_topk(const float *logits, int32_t n_experts, int32_t k, bool renorm,
                     struct moe_route *out);

#endif
