/* The transformer forward pass on the CPU, for a batch of n tokens that may
 * come from several sequences: every weight matrix is read once for all n
 * tokens; only attention looks at each token's own sequence.
 *
 *   x = embed[tokens]
 *   per layer:  x += Wo . attention(rope(q), rope(k), v)      q,k,v from rms(x)
 *               x += moe(rms(x))    (router -> top-k experts [+ shared experts])
 *   logits = lm_head . rms(x)
 *
 * Attention is grouped-query attention or multi-head latent attention
 * (DeepSeek's MLA, in the weight-absorbed form: queries are moved into the
 * latent space, attention runs on the cached latent directly, and the
 * values leave it per head afterwards). The architecture's config says
 * which biases, norms, rotary layout, window, sinks and router it has. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "common/common.h"
#include "kv/kv.h"
#include "model/model.h"
#include "model/model_int.h"
#include "router/router.h"

/* MLA's q and kv LoRA norms use transformers' default epsilon, not the
 * config's rms_norm_eps (DeepseekV2/V3RMSNorm(rank) with no eps) */
#define MLA_NORM_EPS 1e-6f

struct moe_scratch {
    int32_t cap;            /* tokens the buffers hold */
    float *x, *xn;          /* [n][H] residual stream, its normalised copy */
    float *q, *k, *v;       /* [n][nh*hd], [n][kdim], [n][nkv*hd] */
    float *qa;              /* MLA: [n][max(q_lora, nh*(kv_lora+rope))] */
    float *att, *att2;      /* [n][nh*max(vd, kv_lora)], [n][nh*vd] */
    float *tmp;             /* [n][H] projection outputs */
    float *rope_cos, *rope_sin; /* [n][rope_dim/2] */
    float *router;          /* [n][E] */
    struct moe_route *routes; /* [n] */
    float *importance;      /* [n] ODP: prefill token importance */
    bool *protect;          /* [n] ODP: token keeps all its experts on this layer */
    float *sh_gate, *sh_up; /* [n][max(shared, dense ffn)] */
    float *sh_scale;        /* [n] sigmoid gate of the shared expert */
    float *scores;          /* attention scores: [threads][scores_stride] */
    size_t scores_stride, scores_cap;
    float *qgate;           /* [n][nh*hd] the attention's output gate (attn_gate) */
    struct moe_experts_scratch experts;
    struct moe_linear_scratch lin; /* Gated DeltaNet layers */
};

static void scratch_free(struct moe_scratch *s)
{
    if (!s)
        return;
    float *bufs[] = {s->x,        s->xn,       s->q,      s->k,       s->v,
                     s->qa,       s->att,      s->att2,   s->tmp,     s->rope_cos,
                     s->rope_sin, s->router,   s->sh_gate, s->sh_up,  s->sh_scale,
                     s->scores,   s->importance, s->qgate};
    for (size_t i = 0; i < MOE_ARRAY_SIZE(bufs); i++)
        free(bufs[i]);
    free(s->routes);
    free(s->protect);
    moe_experts_scratch_free(&s->experts);
    moe_linear_scratch_free(&s->lin);
    memset(s, 0, sizeof(*s));
}

static int scratch_reserve(struct moe_scratch *s, const struct moe_config *c, int32_t n)
{
    if (n <= s->cap)
        return 0;
    /* the experts' buffers and the scores grow on their own */
    struct moe_experts_scratch keep = s->experts;
    struct moe_linear_scratch keep_lin = s->lin;
    float *scores = s->scores;
    size_t scores_cap = s->scores_cap;
    s->experts = (struct moe_experts_scratch){0};
    s->lin = (struct moe_linear_scratch){0};
    s->scores = NULL;
    scratch_free(s);
    s->experts = keep;
    s->lin = keep_lin;
    s->scores = scores;
    s->scores_cap = scores_cap;
    size_t N = (size_t)n, H = (size_t)c->hidden, nh = (size_t)c->n_heads;
    size_t nq = nh * (size_t)c->head_dim, nkv = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    size_t vd = (size_t)c->v_head_dim, lat = (size_t)c->kv_lora_rank + (size_t)c->qk_rope_dim;
    size_t kdim = c->attn == MOE_ATTN_MLA ? lat : nkv;
    size_t qa = c->attn == MOE_ATTN_MLA ? MOE_MAX((size_t)c->q_lora_rank, nh * lat) : 1;
    size_t att = nh * MOE_MAX(vd, (size_t)c->kv_lora_rank);
    size_t sh = (size_t)MOE_MAX(c->shared_ffn, c->dense_ffn);
    size_t half = (size_t)MOE_MAX(c->rope_dim / 2, 1);
    s->x = malloc(N * H * sizeof(float));
    s->xn = malloc(N * H * sizeof(float));
    s->q = malloc(N * nq * (c->attn_gate ? 2 : 1) * sizeof(float));
    s->qgate = malloc(N * (c->attn_gate ? nq : 1) * sizeof(float));
    s->k = malloc(N * kdim * sizeof(float));
    bool mla = c->attn == MOE_ATTN_MLA; /* MLA has no values of its own, GQA no att2 */
    s->v = malloc(N * (mla ? 1 : nkv) * sizeof(float));
    s->qa = malloc(N * qa * sizeof(float));
    s->att = malloc(N * att * sizeof(float));
    s->att2 = malloc(N * (mla ? nh * vd : 1) * sizeof(float));
    s->tmp = malloc(N * H * sizeof(float));
    s->rope_cos = malloc(N * half * sizeof(float));
    s->rope_sin = malloc(N * half * sizeof(float));
    s->router = malloc(N * (size_t)c->n_experts * sizeof(float));
    s->routes = malloc(N * sizeof(struct moe_route));
    s->importance = malloc(N * sizeof(float));
    s->protect = malloc(N * sizeof(bool));
    s->sh_gate = malloc(N * MOE_MAX(sh, 1) * sizeof(float));
    s->sh_up = malloc(N * MOE_MAX(sh, 1) * sizeof(float));
    s->sh_scale = malloc(N * sizeof(float));
    if (!s->x || !s->xn || !s->q || !s->k || !s->v || !s->qa || !s->att || !s->att2 ||
        !s->tmp || !s->rope_cos || !s->rope_sin || !s->router || !s->routes || !s->sh_gate ||
        !s->sh_up || !s->sh_scale || !s->importance || !s->protect || !s->qgate) {
        scratch_free(s);
        return moe_err(-ENOMEM, "out of memory for activations of %d tokens", n);
    }
    s->cap = n;
    return 0;
}

/* attention scores: one row per thread, as long as the longest context */
static int scores_reserve(struct moe_scratch *s, int nth, int32_t max_pos)
{
    size_t stride = MOE_ALIGN_UP((size_t)max_pos + 1, 16);
    if (stride < s->scores_stride)
        stride = s->scores_stride;
    if ((size_t)nth * stride > s->scores_cap) {
        free(s->scores);
        s->scores_cap = (size_t)nth * stride;
        s->scores = malloc(s->scores_cap * sizeof(float));
        if (!s->scores) {
            s->scores_cap = 0;
            return moe_err(-ENOMEM, "out of memory for attention scores");
        }
    }
    s->scores_stride = stride;
    return 0;
}

int moe_scratch_create(struct moe_scratch **out)
{
    *out = calloc(1, sizeof(**out));
    return *out ? 0 : moe_err(-ENOMEM, "out of memory");
}

void moe_scratch_free(struct moe_scratch *s)
{
    scratch_free(s);
    free(s);
}

void moe_model_kv_shape(const struct moe_model *m, int32_t max_chunk, struct moe_kv_shape *out)
{
    moe_config_kv_shape(&m->cfg, m->kv_window, max_chunk, out);
}

void moe_config_kv_shape(const struct moe_config *c, const int32_t *window, int32_t max_chunk,
                         struct moe_kv_shape *out)
{
    *out = (struct moe_kv_shape){.n_layers = c->n_layers, .window = window,
                                 .max_chunk = max_chunk};
    for (int32_t l = 0; l < c->n_layers; l++)
        if (c->layer_linear[l]) { /* their states: the conv's, then each value head's */
            out->recurrent = c->layer_linear;
            out->state_row = c->lin_v_dim;
            out->state_rows = moe_linear_conv_rows(c) + c->lin_v_heads * c->lin_k_dim;
            break;
        }
    if (c->attn == MOE_ATTN_MLA) { /* one "head": the latent, then the rope key */
        out->n_kv_heads = 1;
        out->k_dim = c->kv_lora_rank + c->qk_rope_dim;
        out->v_dim = c->kv_lora_rank;
        out->v_in_k = true;
    } else {
        out->n_kv_heads = c->n_kv_heads;
        out->k_dim = c->head_dim;
        out->v_dim = c->v_head_dim;
    }
}

int moe_model_kv_create(const struct moe_model *m, int32_t max_ctx, struct moe_kv **out)
{
    struct moe_kv_shape sh;
    moe_model_kv_shape(m, 0, &sh);
    return moe_kv_create(&sh, NULL, max_ctx, out);
}

int moe_model_kv_pool_create(const struct moe_model *m, const struct moe_kv_params *p,
                             int64_t n_units, struct moe_kv_pool **out)
{
    struct moe_kv_shape sh;
    moe_model_kv_shape(m, 0, &sh);
    return moe_kv_pool_create(&sh, p, n_units, out);
}

void moe_model_kv_free(struct moe_kv *kv)
{
    moe_kv_free(kv);
}

/* ---- small per-token operations ------------------------------------------------ */

static void rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * r * w[i];
}

/* cos/sin of every (token, frequency) pair of this batch, times the rope's
 * attention factor (YaRN) */
static void rope_tables(struct moe_scratch *s, const struct moe_model *m, const int32_t *pos,
                        int32_t n)
{
    const struct moe_config *c = &m->cfg;
    int32_t half = c->rope_dim / 2;
    float af = c->rope_attn_factor;
    for (int32_t t = 0; t < n; t++)
        for (int32_t i = 0; i < half; i++) {
            /* as transformers: angle = pos * inv_freq in fp32 */
            float ang = (float)pos[t] * m->rope_inv_freq[i];
            s->rope_cos[t * half + i] = cosf(ang) * af;
            s->rope_sin[t * half + i] = sinf(ang) * af;
        }
}

/* Rotates the first rd dims of each of n_heads vectors of stride hd in v,
 * starting off dims into each. Rotate-half pairs (i, i+rd/2); interleaved
 * (GGUF "llama", whose Q/K rows are permuted; DeepSeek; ERNIE) pairs
 * (2i, 2i+1). */
static void rope_apply(float *v, int32_t n_heads, int32_t hd, int32_t off, int32_t rd,
                       const float *cs, const float *sn, bool interleaved)
{
    int32_t half = rd / 2;
    for (int32_t h = 0; h < n_heads; h++) {
        float *x = v + (size_t)h * hd + off;
        for (int32_t i = 0; i < half; i++) {
            int32_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
            float x0 = x[a], x1 = x[b];
            x[a] = x0 * cs[i] - x1 * sn[i];
            x[b] = x1 * cs[i] + x0 * sn[i];
        }
    }
}

static void clamp_all(float *v, size_t n, float lim)
{
    for (size_t i = 0; i < n; i++)
        v[i] = v[i] > lim ? lim : (v[i] < -lim ? -lim : v[i]);
}

/* ---- the blocks ------------------------------------------------------------------- */

struct fwd {
    const struct moe_model *model;
    struct moe_pool *pool;
    struct moe_scratch *scratch;
    struct moe_kv *const *kvs;
    const int32_t *pos;
    moe_ffn_observer obs; /* NULL outside calibration */
    void *obs_ctx;
    const struct moe_forward_opts *opts; /* NULL: plain top-k */
};

static int store_kv(const struct fwd *s, int32_t l, int32_t n, const float *k, size_t kst,
                    const float *v, size_t vst)
{
    for (int32_t t = 0; t < n; t++) {
        int rc = moe_kv_store(s->kvs[t], l, s->pos[t], k + (size_t)t * kst,
                              v ? v + (size_t)t * vst : NULL);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* grouped-query attention: S->xn -> *out = S->att [n][nh*vd] */
static int gqa(const struct fwd *s, int32_t l, int32_t n, const float **out)
{
    const struct moe_config *c = &s->model->cfg;
    const struct moe_layer *L = &s->model->layers[l];
    struct moe_scratch *S = s->scratch;
    int64_t hd = c->head_dim;
    int64_t nq = (int64_t)c->n_heads * hd, nkv = (int64_t)c->n_kv_heads * hd;

    moe_matmul(s->pool, &L->wq, S->xn, n, S->q); /* [n][nq], or [n][nh][q, gate] */
    if (c->attn_gate) /* each head's q, then its output gate: split them */
        for (int32_t t = 0; t < n; t++)
            for (int32_t h = 0; h < c->n_heads; h++) {
                const float *src = S->q + ((size_t)t * c->n_heads + h) * 2 * hd;
                memcpy(S->qgate + t * nq + h * hd, src + hd, (size_t)hd * sizeof(float));
                memmove(S->q + t * nq + h * hd, src, (size_t)hd * sizeof(float));
            }
    moe_matmul(s->pool, &L->wk, S->xn, n, S->k); /* [n][nkv] */
    moe_matmul(s->pool, &L->wv, S->xn, n, S->v); /* [n][nkv] */
    moe_vec_add_rows(S->q, L->bq, n, nq);
    moe_vec_add_rows(S->k, L->bk, n, nkv);
    moe_vec_add_rows(S->v, L->bv, n, nkv);

    for (int32_t t = 0; t < n; t++) {
        float *q = S->q + t * nq, *k = S->k + t * nkv;
        if (c->qk_norm == MOE_QK_NORM_FULL) {
            rmsnorm(q, q, L->q_norm, nq, c->rms_eps);
            rmsnorm(k, k, L->k_norm, nkv, c->rms_eps);
        } else if (c->qk_norm == MOE_QK_NORM_HEAD) {
            for (int32_t h = 0; h < c->n_heads; h++)
                rmsnorm(q + h * hd, q + h * hd, L->q_norm, hd, c->rms_eps);
            for (int32_t h = 0; h < c->n_kv_heads; h++)
                rmsnorm(k + h * hd, k + h * hd, L->k_norm, hd, c->rms_eps);
        }
    }
    if (c->clip_qkv > 0) {
        clamp_all(S->q, (size_t)n * nq, c->clip_qkv);
        clamp_all(S->k, (size_t)n * nkv, c->clip_qkv);
        clamp_all(S->v, (size_t)n * nkv, c->clip_qkv);
    }
    int32_t half = c->rope_dim / 2;
    for (int32_t t = 0; t < n; t++) {
        const float *cs = S->rope_cos + t * half, *sn = S->rope_sin + t * half;
        rope_apply(S->q + t * nq, c->n_heads, (int32_t)hd, 0, c->rope_dim, cs, sn,
                   c->rope_interleaved);
        rope_apply(S->k + t * nkv, c->n_kv_heads, (int32_t)hd, 0, c->rope_dim, cs, sn,
                   c->rope_interleaved);
    }
    int rc = store_kv(s, l, n, S->k, (size_t)nkv, S->v, (size_t)nkv);
    if (rc < 0)
        return rc;
    struct moe_kv_attn a = {c->n_heads, c->attn_scale, L->sinks};
    moe_kv_attention(s->pool, s->kvs, s->pos, n, l, &a, S->q, S->att, S->scores,
                     S->scores_stride);
    if (c->attn_gate)
        for (int64_t i = 0; i < (int64_t)n * nq; i++)
            S->att[i] *= 1.0f / (1.0f + expf(-S->qgate[i]));
    *out = S->att;
    return 0;
}

/* multi-head latent attention, weights absorbed: S->xn -> *out = S->att2 [n][nh*vd]
 *   q = Wq_b . rms(Wq_a . x)   (or Wq . x)          [nh][nope + rope]
 *   c = rms(kv_a[:kvl]), k_pe = rope(kv_a[kvl:])     the cache: [c, k_pe]
 *   q_lat_h = W_UK_h^T . q_nope_h                    [kvl]
 *   o_lat_h = softmax(([q_lat_h, q_pe_h] . [c, k_pe]) * scale) . c
 *   att_h = W_UV_h . o_lat_h                          [vd] */
static int mla(const struct fwd *s, int32_t l, int32_t n, const float **out)
{
    const struct moe_config *c = &s->model->cfg;
    const struct moe_layer *L = &s->model->layers[l];
    struct moe_scratch *S = s->scratch;
    int32_t nh = c->n_heads, nope = c->qk_nope_dim, rope = c->qk_rope_dim;
    int32_t kvl = c->kv_lora_rank, ql = c->q_lora_rank, qhd = nope + rope, lat = kvl + rope;
    int64_t nq = (int64_t)nh * qhd;

    if (ql > 0) {
        moe_matmul(s->pool, &L->wq_a, S->xn, n, S->qa); /* [n][ql] */
        moe_vec_add_rows(S->qa, L->bq_a, n, ql);
        for (int32_t t = 0; t < n; t++)
            rmsnorm(S->qa + (size_t)t * ql, S->qa + (size_t)t * ql, L->q_a_norm, ql,
                    MLA_NORM_EPS);
        moe_matmul(s->pool, &L->wq_b, S->qa, n, S->q); /* [n][nh*qhd] */
    } else {
        moe_matmul(s->pool, &L->wq, S->xn, n, S->q);
    }
    moe_matmul(s->pool, &L->wkv_a, S->xn, n, S->k); /* [n][kvl + rope] */
    moe_vec_add_rows(S->k, L->bkv_a, n, lat);
    int32_t half = c->rope_dim / 2;
    for (int32_t t = 0; t < n; t++) {
        float *kv = S->k + (size_t)t * lat;
        const float *cs = S->rope_cos + t * half, *sn = S->rope_sin + t * half;
        rmsnorm(kv, kv, L->kv_a_norm, kvl, MLA_NORM_EPS);
        rope_apply(kv + kvl, 1, rope, 0, c->rope_dim, cs, sn, c->rope_interleaved);
        rope_apply(S->q + (size_t)t * nq, nh, qhd, nope, c->rope_dim, cs, sn,
                   c->rope_interleaved);
    }
    int rc = store_kv(s, l, n, S->k, (size_t)lat, NULL, 0);
    if (rc < 0)
        return rc;
    /* q_lat = W_UK^T q_nope per head, into att as scratch [n][nh*kvl] */
    moe_matmul_grouped(s->pool, &L->wk_b, nh, S->q, nq, qhd, n, S->att);
    for (int32_t t = 0; t < n; t++) /* the attention query: [q_lat_h, q_pe_h] per head */
        for (int32_t h = 0; h < nh; h++) {
            float *dst = S->qa + ((size_t)t * nh + h) * lat;
            memcpy(dst, S->att + ((size_t)t * nh + h) * kvl, (size_t)kvl * sizeof(float));
            memcpy(dst + kvl, S->q + (size_t)t * nq + (size_t)h * qhd + nope,
                   (size_t)rope * sizeof(float));
        }
    struct moe_kv_attn a = {nh, c->attn_scale, L->sinks};
    moe_kv_attention(s->pool, s->kvs, s->pos, n, l, &a, S->qa, S->att, S->scores,
                     S->scores_stride); /* o_lat [n][nh*kvl] */
    moe_matmul_grouped(s->pool, &L->wv_b, nh, S->att, (int64_t)nh * kvl, kvl, n, S->att2);
    *out = S->att2;
    return 0;
}

static int attention_block(const struct fwd *s, int32_t l, int32_t n)
{
    const struct moe_config *c = &s->model->cfg;
    const struct moe_layer *L = &s->model->layers[l];
    struct moe_scratch *S = s->scratch;
    int64_t H = c->hidden;

    for (int32_t t = 0; t < n; t++)
        rmsnorm(S->xn + t * H, S->x + t * H, L->attn_norm, H, c->rms_eps);
    const float *att;
    bool lin = c->layer_linear[l];
    int rc = lin ? moe_model_linear_attn(s->model, s->pool, l, n, S->xn, s->kvs, s->pos, &S->lin,
                                         &att)
             : c->attn == MOE_ATTN_MLA ? mla(s, l, n, &att)
                                       : gqa(s, l, n, &att);
    if (rc < 0)
        return rc;
    moe_matmul(s->pool, lin ? &L->lin_out : &L->wo, att, n, S->tmp); /* [n][H] */
    moe_vec_add_rows(S->tmp, L->bo, n, H);
    for (int64_t i = 0; i < (int64_t)n * H; i++)
        S->x[i] += S->tmp[i];
    return 0;
}

static const struct moe_prune *tok_prune(const struct moe_forward_opts *o, int32_t t)
{
    return !o ? NULL : o->prune ? o->prune[t] : o->prune_all;
}

void moe_model_router_cfg(const struct moe_model *m, int32_t l, struct moe_router_cfg *out)
{
    const struct moe_config *c = &m->cfg;
    *out = (struct moe_router_cfg){.kind = c->router, .renorm = c->norm_topk_prob,
                                   .n_group = c->n_group, .topk_group = c->topk_group,
                                   .scale = c->routed_scale, .norm_min = c->router_norm_min,
                                   .bias = m->layers[l].score_b};
}

/* Top-k (a token's own k) and online dynamic pruning of every token, into
 * S->routes. The hidden state used for prefill protection is the residual
 * stream S->x entering the MoE block: its norm varies from token to token,
 * the normalised S->xn's hardly does. */
static void route_tokens(const struct fwd *s, int32_t l, int32_t n)
{
    const struct moe_config *c = &s->model->cfg;
    const struct moe_forward_opts *o = s->opts;
    struct moe_scratch *S = s->scratch;
    struct moe_router_layer_stats *st = o && o->stats ? &o->stats->layer[l] : NULL;
    struct moe_router_cfg rcfg;
    moe_model_router_cfg(s->model, l, &rcfg);

    bool any = false;
    for (int32_t t = 0; t < n && !any; t++) {
        const struct moe_prune *p = tok_prune(o, t);
        any = p && p->beta[l] > 0.0f && p->protect_fraction > 0.0f;
    }
    if (any) { /* runs of one sequence's consecutive tokens: prompt chunks */
        for (int32_t a = 0, b; a < n; a = b) {
            for (b = a + 1; b < n && s->kvs[b] == s->kvs[a] && s->pos[b] == s->pos[b - 1] + 1;)
                b++;
            const struct moe_prune *p = tok_prune(o, a);
            float frac = p && b - a > 1 ? p->protect_fraction : 0.0f; /* prefill only */
            moe_router_protect(S->x + (size_t)a * c->hidden, c->hidden, s->pos + a, b - a, frac,
                               S->importance + a, S->protect + a);
        }
    }
    const struct moe_forward_faults *fl = o ? o->faults : NULL;
    for (int32_t t = 0; t < n; t++) {
        if (fl && fl->row[t]) { /* failed on an earlier layer: it needs no expert now */
            S->routes[t].n = 0;
            continue;
        }
        const struct moe_prune *p = tok_prune(o, t);
        float beta = p && !(any && S->protect[t]) ? p->beta[l] : 0.0f;
        int32_t k = !o ? 0 : o->top_k ? o->top_k[t] : o->top_k_all;
        if (k <= 0 || k > c->top_k)
            k = c->top_k;
        moe_router_route(&rcfg, S->router + (size_t)t * c->n_experts, c->n_experts, k, beta,
                         &S->routes[t], st);
    }
}

/* After an isolated run of layer l's experts: the rows routed to an expert
 * that could not be read are failed, each with the first such fault. */
static int fault_rows(const struct fwd *s, int32_t l, int32_t n)
{
    const struct moe_model *m = s->model;
    struct moe_forward_faults *fl = s->opts->faults;
    const struct moe_route *routes = s->scratch->routes;
    for (int32_t e = 0; e < m->cfg.n_experts; e++) {
        const char *msg = moe_model_offload_failure(m, e);
        if (!msg)
            continue;
        if (fl->n_faults == MOE_FORWARD_MAX_FAULTS) /* a dying disk: no longer one blob */
            return moe_err(-EIO, "more than %d experts failed in one step; one of them: %s",
                           MOE_FORWARD_MAX_FAULTS, msg);
        int32_t idx = fl->n_faults++;
        struct moe_expert_fault *f = &fl->fault[idx];
        f->layer = l;
        f->expert = e;
        snprintf(f->msg, sizeof(f->msg), "%s", msg);
        for (int32_t t = 0; t < n; t++)
            for (int32_t j = 0; j < routes[t].n && !fl->row[t]; j++)
                if (routes[t].expert[j] == e) {
                    fl->row[t] = idx + 1;
                    fl->n_rows++;
                }
    }
    return 0;
}

static int ffn_block(const struct fwd *s, int32_t l, int32_t n)
{
    const struct moe_model *m = s->model;
    const struct moe_config *c = &m->cfg;
    const struct moe_layer *L = &m->layers[l];
    struct moe_scratch *S = s->scratch;
    int64_t H = c->hidden;

    for (int32_t t = 0; t < n; t++)
        rmsnorm(S->xn + t * H, S->x + t * H, L->ffn_norm, H, c->rms_eps);

    if (c->layer_dense[l]) { /* plain MLP layer */
        moe_expert_ffn(s->pool, &L->shared, NULL, S->xn, n, S->sh_gate, S->sh_up, S->tmp);
        for (int64_t i = 0; i < (int64_t)n * H; i++)
            S->x[i] += S->tmp[i];
        return 0;
    }

    moe_matmul(s->pool, &L->router, S->xn, n, S->router); /* [n][E] */
    moe_vec_add_rows(S->router, L->router_b, n, c->n_experts);
    route_tokens(s, l, n);
    if (s->obs)
        s->obs(s->obs_ctx, l, S->xn, n, S->routes);
    const struct moe_expert_weights *experts = L->experts;
    const struct moe_expert_source *src = NULL;
    bool isolate = s->opts && s->opts->faults;
    int rc = 0;
    if (m->offload && (rc = moe_model_offload_layer(m, s->pool, l, S->x, n, S->routes, S->tmp,
                                                     S->router, isolate, &experts, &src)) < 0)
        return rc;
    rc = moe_experts_run_from(s->pool, experts, src, &m->ffn, c->n_experts, S->xn, n, c->hidden,
                              S->routes, S->x, &S->experts);
    if (rc == 0 && m->offload && isolate)
        rc = fault_rows(s, l, n);
    if (rc < 0)
        return rc;

    if (L->shared.gate.rows > 0) { /* shared experts, sigmoid-gated in Qwen2-MoE */
        moe_expert_ffn(s->pool, &L->shared, NULL, S->xn, n, S->sh_gate, S->sh_up, S->tmp);
        if (c->shared_gate)
            moe_matmul(s->pool, &L->shared_gate, S->xn, n, S->sh_scale); /* [n][1] */
        for (int32_t t = 0; t < n; t++) {
            float g = c->shared_gate ? 1.0f / (1.0f + expf(-S->sh_scale[t])) : 1.0f;
            moe_vec_axpy_f32(S->x + t * H, g, S->tmp + t * H, H);
        }
    }
    return 0;
}

/* NaN or inf logits come from a corrupt file (a flipped exponent, data at
 * the wrong offset) far more often than from overflow: say which tensor.
 * Rows that failed (fl) are garbage by contract and not looked at. */
static int check_logits(const struct moe_model *m, const float *logits, int32_t n_logits,
                        const int32_t *logit_idx, const struct moe_forward_faults *fl)
{
    size_t V = (size_t)m->cfg.vocab;
    for (size_t i = 0; i < (size_t)n_logits * V; i++) {
        if (isfinite(logits[i]) || (fl && fl->row[logit_idx[i / V]]))
            continue;
        /* the scan is the model's one-time diagnosis; the weights are read, not changed */
        const char *bad = moe_model_find_nonfinite((struct moe_model *)m);
        if (bad)
            return moe_err(-EBADMSG, "%s: %s holds NaN or infinite values: the file is "
                           "corrupt", m->path, bad);
        return moe_err(-EBADMSG, "%s: the logits are not finite although every weight is: "
                       "the activations overflowed", m->path);
    }
    return 0;
}

int moe_model_forward(const struct moe_model *m, struct moe_pool *pool, struct moe_scratch *S,
                      int32_t n, const int32_t *tokens, struct moe_kv *const *kvs,
                      const int32_t *pos, const int32_t *logit_idx, int32_t n_logits,
                      float *logits)
{
    return moe_model_forward_opts(m, pool, S, n, tokens, kvs, pos, logit_idx, n_logits, logits,
                                  NULL);
}

int moe_model_forward_opts(const struct moe_model *m, struct moe_pool *pool,
                           struct moe_scratch *S, int32_t n, const int32_t *tokens,
                           struct moe_kv *const *kvs, const int32_t *pos,
                           const int32_t *logit_idx, int32_t n_logits, float *logits,
                           const struct moe_forward_opts *opts)
{
    const struct moe_config *c = &m->cfg;
    if (n <= 0)
        return moe_err(-EINVAL, "no tokens to process");
    int32_t max_pos = 0;
    for (int32_t t = 0; t < n; t++) {
        if (tokens[t] < 0 || tokens[t] >= c->vocab)
            return moe_err(-EINVAL, "token id %d outside the vocabulary (0..%d)", tokens[t],
                           c->vocab - 1);
        if (pos[t] < 0 || pos[t] >= moe_kv_capacity(kvs[t]))
            return moe_err(-ENOSPC, "context full: position %d is past the %d-token cache",
                           pos[t], moe_kv_capacity(kvs[t]));
        max_pos = pos[t] > max_pos ? pos[t] : max_pos;
    }
    int rc = scratch_reserve(S, c, n);
    if (rc == 0)
        rc = scores_reserve(S, moe_pool_threads(pool), max_pos);
    if (rc < 0)
        return rc;
    struct fwd f = {m, pool, S, kvs, pos, NULL, NULL, opts};
    int64_t H = c->hidden;
    if (opts && opts->faults) {
        memset(opts->faults->row, 0, (size_t)n * sizeof(int32_t));
        opts->faults->n_rows = opts->faults->n_faults = 0;
    }

    moe_model_embed(m, tokens, n, S->x);
    rope_tables(S, m, pos, n);

    for (int32_t l = 0; l < c->n_layers; l++) {
        if ((rc = attention_block(&f, l, n)) < 0 || (rc = ffn_block(&f, l, n)) < 0)
            return rc;
    }

    if (n_logits > 0) {
        for (int32_t i = 0; i < n_logits; i++) /* xn [n_logits][H] */
            rmsnorm(S->xn + i * H, S->x + logit_idx[i] * H, m->final_norm, H, c->rms_eps);
        moe_matmul(pool, &m->lm_head, S->xn, n_logits, logits); /* [n_logits][vocab] */
        moe_vec_add_rows(logits, m->lm_head_b, n_logits, c->vocab);
        return check_logits(m, logits, n_logits, logit_idx, opts ? opts->faults : NULL);
    }
    return 0;
}

void moe_model_embed(const struct moe_model *m, const int32_t *tokens, int32_t n, float *x)
{
    const struct moe_dtype_traits *et = moe_dtype_traits(m->embed.dtype);
    int64_t H = m->cfg.hidden;
    for (int32_t t = 0; t < n; t++)
        et->to_f32((const uint8_t *)m->embed.data + (size_t)tokens[t] * m->embed.row_bytes,
                   x + t * H, H);
}

int moe_model_forward_layer(const struct moe_model *m, struct moe_pool *pool,
                            struct moe_scratch *S, int32_t l, int32_t n, float *x,
                            struct moe_kv *kv, const int32_t *pos, moe_ffn_observer obs,
                            void *obs_ctx)
{
    const struct moe_config *c = &m->cfg;
    if (n <= 0 || l < 0 || l >= c->n_layers)
        return moe_err(-EINVAL, "forward_layer: layer %d or %d tokens out of range", l, n);
    int32_t max_pos = 0;
    for (int32_t t = 0; t < n; t++) {
        if (pos[t] < 0 || pos[t] >= moe_kv_capacity(kv))
            return moe_err(-ENOSPC, "context full: position %d is past the %d-token cache",
                           pos[t], moe_kv_capacity(kv));
        max_pos = pos[t] > max_pos ? pos[t] : max_pos;
    }
    struct moe_kv **kvs = malloc((size_t)n * sizeof(*kvs));
    if (!kvs)
        return moe_err(-ENOMEM, "out of memory");
    for (int32_t t = 0; t < n; t++)
        kvs[t] = kv;
    int rc = scratch_reserve(S, c, n);
    if (rc == 0)
        rc = scores_reserve(S, moe_pool_threads(pool), max_pos);
    if (rc == 0) {
        struct fwd f = {m, pool, S, kvs, pos, obs, obs_ctx, NULL};
        size_t bytes = (size_t)n * (size_t)c->hidden * sizeof(float);
        memcpy(S->x, x, bytes);
        rope_tables(S, m, pos, n);
        if ((rc = attention_block(&f, l, n)) == 0 && (rc = ffn_block(&f, l, n)) == 0)
            memcpy(x, S->x, bytes);
    }
    free(kvs);
    return rc;
}

int moe_session_create(const struct moe_model *m, struct moe_pool *pool, int32_t max_ctx,
                       struct moe_session **out)
{
    return moe_session_create_kv(m, pool, max_ctx, NULL, out);
}

int moe_session_create_kv(const struct moe_model *m, struct moe_pool *pool, int32_t max_ctx,
                          const struct moe_kv_params *kvp, struct moe_session **out)
{
    *out = NULL;
    if (max_ctx <= 0 || max_ctx > m->cfg.max_ctx)
        max_ctx = m->cfg.max_ctx;
    struct moe_session *s = calloc(1, sizeof(*s));
    if (!s)
        return moe_err(-ENOMEM, "out of memory");
    s->model = m;
    s->pool = pool;
    s->max_ctx = max_ctx;
    s->pos = malloc((size_t)max_ctx * sizeof(int32_t));
    s->logit_idx = malloc((size_t)max_ctx * sizeof(int32_t));
    s->kvs = malloc((size_t)max_ctx * sizeof(*s->kvs));
    int rc = !s->pos || !s->logit_idx || !s->kvs ? moe_err(-ENOMEM, "out of memory")
                                                 : moe_scratch_create(&s->scratch);
    if (rc == 0) {
        struct moe_kv_shape sh;
        moe_model_kv_shape(m, 0, &sh);
        rc = moe_kv_create(&sh, kvp, max_ctx, &s->kv);
    }
    if (rc < 0) {
        moe_session_free(s);
        return rc;
    }
    for (int32_t i = 0; i < max_ctx; i++) {
        s->kvs[i] = s->kv;
        s->logit_idx[i] = i;
    }
    *out = s;
    return 0;
}

void moe_session_free(struct moe_session *s)
{
    if (!s)
        return;
    moe_kv_free(s->kv);
    moe_scratch_free(s->scratch);
    free(s->pos);
    free(s->logit_idx);
    free(s->kvs);
    free(s);
}

void moe_session_reset(struct moe_session *s)
{
    s->n_past = 0;
}

int moe_session_forward(struct moe_session *s, const int32_t *tokens, int32_t n, float *logits,
                        bool all_logits)
{
    if (n <= 0)
        return moe_err(-EINVAL, "no tokens to process");
    if (s->n_past + n > s->max_ctx)
        return moe_err(-ENOSPC, "context full: %d + %d tokens exceed the %d-token cache",
                       s->n_past, n, s->max_ctx);
    for (int32_t t = 0; t < n; t++)
        s->pos[t] = s->n_past + t;
    int32_t n_logits = !logits ? 0 : all_logits ? n : 1;
    const int32_t *idx = all_logits ? s->logit_idx : s->logit_idx + n - 1;
    struct moe_forward_opts o = {.prune_all = s->prune, .top_k_all = s->top_k,
                                 .stats = s->stats};
    int rc = moe_model_forward_opts(s->model, s->pool, s->scratch, n, tokens, s->kvs, s->pos,
                                    idx, n_logits, logits, &o);
    if (rc == 0)
        s->n_past += n;
    return rc;
}
