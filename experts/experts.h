/* experts: the feed-forward experts of a MoE layer, run over a dispatch plan. */
#ifndef MOE_EXPERTS_H
#define MOE_EXPERTS_H

#include <stdbool.h>
#include <stdint.h>

#include "quant/quant.h"
#include "router/router.h"

struct moe_pool;

/* One gated FFN: down(act(gate x + bg, up x + bu)) + bd, biases optional. */
struct moe_expert_weights {
    struct moe_weight gate; /* w1 [ffn, hidden] */
    struct moe_weight up;   /* w3 [ffn, hidden] */
    struct moe_weight down; /* w2 [hidden, ffn] */
    const float *b_gate, *b_up, *b_down; /* [ffn], [ffn], [hidden] or NULL */
};

/* The activation of an FFN:
 *   silu:       silu(g) * u
 *   swiglu_oai: g' = min(g, limit), u' = clamp(u, -limit, limit),
 *               g' * sigmoid(alpha * g') * (u' + 1)          (gpt-oss) */
enum moe_ffn_act_kind { MOE_FFN_SILU, MOE_FFN_SWIGLU_OAI };
struct moe_ffn_kind {
    enum moe_ffn_act_kind act;
    float alpha, limit;
};

/* Reusable buffers; grown on demand, never shrunk. */
struct moe_experts_scratch {
    float *xin, *gate, *up, *out; /* gathered inputs, activations, outputs */
    int32_t *order;               /* token slots grouped by expert */
    int32_t *count;               /* prefix sums of tokens per expert, then cursors */
    size_t cap_rows, cap_hidden, cap_ffn;
    int32_t cap_experts;
};
void moe_experts_scratch_free(struct moe_experts_scratch *s);

/* y[t] += sum_j routes[t].weight[j] * expert[routes[t].expert[j]](x[t]) for
 * t < n. Tokens are grouped by expert first, so each expert's weights are read
 * once for all the tokens routed to it. */
int moe_experts_run(struct moe_pool *pool, const struct moe_expert_weights *experts,
                    int32_t n_experts, const float *x, int32_t n, int32_t hidden,
                    const struct moe_route *routes, float *y,
                    struct moe_experts_scratch *scratch);
/* The same with another activation (kind NULL = silu) and an expert source:
 * moe_experts_run_from below. */

/* Where moe_experts_run_from's weights come from when some are still on their
 * way (offload: being read from the pack): the experts with ready[e] run
 * first, as experts[e] has them; for each other one the routes pick,
 * wait(ctx, e, &w) blocks until it is in and points w at its weights. A
 * negative errno fails the run (the others are still waited for, not run,
 * and y is left as it was), unless failed is set: then the failure is
 * marked in failed[e] (cleared by the caller) and the run goes on without
 * e, so that one unreadable expert costs only the tokens routed to it: their
 * y lacks e's term (the caller must discard them), every other token's is
 * exact, and the run returns 0. The result is bit for bit moe_experts_run's. */
struct moe_expert_source {
    const bool *ready; /* [n_experts] */
    int (*wait)(void *ctx, int32_t e, const struct moe_expert_weights **w);
    void *ctx;
    bool *failed;      /* [n_experts] or NULL */
};
int moe_experts_run_from(struct moe_pool *pool, const struct moe_expert_weights *experts,
                         const struct moe_expert_source *src, const struct moe_ffn_kind *kind,
                         int32_t n_experts, const float *x, int32_t n, int32_t hidden,
                         const struct moe_route *routes, float *y,
                         struct moe_experts_scratch *scratch);

/* gate[n][ffn] = act(gate x + b_gate, up x + b_up): what the expert's down
 * projection sees (kind NULL = silu); up is scratch of [n][ffn]. */
void moe_expert_ffn_hidden(struct moe_pool *pool, const struct moe_expert_weights *w,
                           const struct moe_ffn_kind *kind, const float *x, int32_t n,
                           float *gate, float *up);
/* out[n][hidden] = ffn(x[n][hidden]) for one expert (shared experts, dense
 * MLPs; kind NULL = silu). gate/up are scratch of [n][ffn]. */
void moe_expert_ffn(struct moe_pool *pool, const struct moe_expert_weights *w,
                    const struct moe_ffn_kind *kind, const float *x, int32_t n, float *gate,
                    float *up, float *out);

#endif
