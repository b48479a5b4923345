/* router: which experts each token uses, and with what weight; online
 * dynamic pruning (ODP) of the weakest of them; routing statistics. */
#ifndef MOE_ROUTER_H
#define MOE_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MOE_ROUTER_MAX_K 16
#define MOE_ROUTER_MAX_EXPERTS 1024 /* experts per layer the routers handle */
#define MOE_ROUTER_MAX_GROUPS 64    /* expert groups (n_group) */
#define MOE_ROUTER_MAX_LAYERS 256 /* = MOE_MAX_LAYERS (model/) */

struct moe_route {
    int32_t n;                          /* experts kept */
    int32_t expert[MOE_ROUTER_MAX_K];   /* in decreasing weight order */
    float weight[MOE_ROUTER_MAX_K];
};

/* Routing counters of one layer. Plain integers: each engine thread (or
 * session) keeps its own and folds them into the process metrics. */
struct moe_router_layer_stats {
    uint64_t tokens;      /* tokens routed */
    uint64_t kept;        /* expert activations computed */
    uint64_t pruned;      /* activations dropped by ODP */
    double mass_topk;     /* sum of the top-k probabilities (before renormalisation) */
    double mass_pruned;   /* the part of it that ODP dropped */
};

struct moe_router_stats {
    struct moe_router_layer_stats layer[MOE_ROUTER_MAX_LAYERS];
};

/* Softmax over all n_experts logits, the k largest kept (lowest index first
 * on ties), their probabilities renormalised to sum 1 when renorm is set
 * (Mixtral, Qwen3-MoE) or kept as they are (Qwen2-MoE, OLMoE). */
void moe_router_topk(const float *logits, int32_t n_experts, int32_t k, bool renorm,
                     struct moe_route *out);

/* ---- the routers of other architectures ----------------------------------------
 * How a layer's router turns its logits into experts and weights. */
enum moe_router_kind {
    MOE_ROUTE_SOFTMAX,       /* softmax over all, top-k, optional renormalisation */
    MOE_ROUTE_SOFTMAX_GROUP, /* DeepSeek-V2 group_limited_greedy: groups ranked by their max */
    MOE_ROUTE_SIGMOID,       /* sigmoid scores; score + correction bias picks; groups
                              * ranked by the sum of their top two (DeepSeek-V3, GLM-4.5,
                              * dots.llm1, MiniMax-M2) */
    MOE_ROUTE_TOPK_SOFTMAX,  /* gpt-oss: top-k of the logits, softmax over those k */
    MOE_ROUTE_SOFTMAX_BIAS,  /* ERNIE-4.5: softmax; prob + correction bias picks */
};

struct moe_router_cfg {
    enum moe_router_kind kind;
    bool renorm;              /* kept weights divided by their sum */
    int32_t n_group, topk_group; /* > 1 groups: only the topk_group best groups compete */
    float scale;              /* weights times this at the end (routed_scaling_factor) */
    float norm_min;           /* SOFTMAX_BIAS: the divisor is at least this */
    const float *bias;        /* [n_experts] correction bias (SIGMOID, SOFTMAX_BIAS) or NULL */
};

/* Routes one token as its architecture does (transformers' routers, ties to
 * the lower index), the kept experts in decreasing weight order. ODP as in
 * moe_router_topk_prune: with beta > 0 every expert j >= 1 whose weight is
 * below beta times the first's is dropped and the kept ones are scaled so
 * their sum stays the sum of the k weights. MOE_ROUTE_SOFTMAX is exactly
 * moe_router_topk_prune (times scale when it is not 1). */
int32_t moe_router_route(const struct moe_router_cfg *cfg, const float *logits,
                         int32_t n_experts, int32_t k, float beta, struct moe_route *out,
                         struct moe_router_layer_stats *st);

/* ---- online dynamic pruning (docs/ALGORITHMS.md section 2) -------------------
 * Top-k as above, then every expert j >= 1 (0-based, so never the first)
 * whose probability p_j (full softmax, BEFORE renormalisation) is below
 * beta * p_0 is dropped: it is absent from the route, so it is neither
 * fetched nor computed. The kept weights are then renormalised as the
 * architecture does:
 *   renorm (Mixtral, Qwen3-MoE): the kept weights sum to 1 (a token keeping
 *     one expert gives it weight 1);
 *   no renorm (Qwen2-MoE, OLMoE): the kept weights are scaled so that their
 *     sum equals the sum of the k original top-k probabilities, so the MoE
 *     output keeps the magnitude the model was trained with.
 * beta <= 0 is exactly moe_router_topk (bit for bit). beta >= 1 keeps only
 * the first expert unless others tie with it. Returns the number of experts
 * dropped; st (may be NULL) accumulates tokens, kept, pruned and masses. */
int32_t moe_router_topk_prune(const float *logits, int32_t n_experts, int32_t k, bool renorm,
                              float beta, struct moe_route *out,
                              struct moe_router_layer_stats *st);

/* A layer's or sequence's pruning: beta per layer (0 = off there) and the
 * fraction of each prefill chunk's tokens, the most important ones, that
 * keep all their experts. */
struct moe_prune {
    float beta[MOE_ROUTER_MAX_LAYERS];
    float protect_fraction;
};

#define MOE_PRUNE_PROTECT_DEFAULT 0.02f

/* The layers ODP runs on when nobody says: the middle ones, never the
 * first two nor the last (ALGORITHMS.md: the least sensitive layers). With
 * fewer than 4 layers there are none. sel[n_layers] is set. */
void moe_router_prune_auto_layers(int32_t n_layers, bool *sel);

/* Parses a layer list "2-5,7" (blanks allowed around items) into
 * sel[n_layers]. Empty -> nothing selected. -EINVAL with why filled for a
 * bad item, a layer >= n_layers or a reversed range. */
int moe_router_parse_layers(const char *s, int32_t n_layers, bool *sel, char *why, size_t cap);
/* Parses per-layer betas "2-5:0.4,7:0.5" into beta[n_layers] (layers not
 * named are left as they are). Betas must lie in [0, 1]. */
int moe_router_parse_betas(const char *s, int32_t n_layers, float *beta, char *why, size_t cap);

/* Prefill protection: of n tokens of one sequence chunk at positions
 * pos[0..n) with hidden states h[n][dim], marks in protect[] the
 * floor(fraction * n) most important ones, importance
 * ||h_i||_1 / (L - pos_i) with L = pos[n-1] + 1 (the chunk's end; the
 * sequence length so far). Others are set false. Ties: earlier first. */
void moe_router_protect(const float *h, int64_t dim, const int32_t *pos, int32_t n,
                        float fraction, float *importance, bool *protect);

#endif
