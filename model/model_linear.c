/* Gated DeltaNet layers (Qwen3-Next, Qwen3.5): the linear attention that
 * replaces three attention layers in four. For a batch of tokens from
 * several sequences:
 *
 *   qkv = W_qkv x -> causal depthwise conv (kernel K, rolling state) -> silu
 *   q, k L2-normalised per key head (q / sqrt(dk)), v as is
 *   beta = sigmoid(W_b x),  g = -exp(A_log) softplus(W_a x + dt_bias)
 *   o = gated delta rule (model_gdn.h) per value head, with its state
 *   out = rmsnorm(o) * w * silu(W_z x)          per value head
 *
 * (W_out is applied by the caller.) A sequence's conv and delta states live
 * in its KV cache (moe_kv_state_*): rows of dv values, first the conv
 * state [K-1][conv dim] flattened, then each value head's [dk][dv].
 * Value head h reads key head h / (v heads / k heads), or h % k heads in
 * the tiled order of llama.cpp's Qwen3.5 GGUFs (lin_v_tiled). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "common/common.h"
#include "kv/kv.h"
#include "model/model_gdn.h"
#include "model/model_int.h"

/* runs shorter than this take the recurrent form: one or a few decode tokens */
#define CHUNKED_MIN 8

int32_t moe_linear_conv_rows(const struct moe_config *c)
{
    int64_t f = (int64_t)(c->lin_conv - 1) * moe_config_lin_conv_dim(c);
    return (int32_t)((f + c->lin_v_dim - 1) / c->lin_v_dim);
}

void moe_linear_scratch_free(struct moe_linear_scratch *s)
{
    free(s->buf);
    memset(s, 0, sizeof(*s));
}

static int reserve(struct moe_linear_scratch *s, const struct moe_config *c, int32_t n, int nth)
{
    size_t cd = (size_t)moe_config_lin_conv_dim(c), vd = (size_t)c->lin_v_heads * c->lin_v_dim;
    size_t nv = (size_t)c->lin_v_heads, K = (size_t)c->lin_conv, N = (size_t)n;
    /* per thread: a bf16 state widened, its row pointers, the chunked form's work */
    size_t per_thread = (size_t)c->lin_k_dim * c->lin_v_dim + (size_t)c->lin_k_dim * 2 +
                        moe_gdn_chunked_work(c->lin_k_dim, c->lin_v_dim);
    per_thread = MOE_ALIGN_UP(per_thread, 16); /* 64 bytes: the pointers stay aligned */
    size_t need = N * cd * 2 + (N + K) * cd + N * vd * 2 + N * nv * 4 +
                  (size_t)nth * per_thread + 16;
    if (need <= s->cap)
        return 0;
    free(s->buf);
    s->buf = malloc(need * sizeof(float));
    s->cap = s->buf ? need : 0;
    if (!s->buf)
        return moe_err(-ENOMEM, "out of memory for linear attention over %d tokens", n);
    float *p = s->buf;
    s->qkv = p, p += N * cd;
    s->conv = p, p += N * cd;
    s->hist = p, p += (N + K) * cd;
    s->z = p, p += N * vd;
    s->core = p, p += N * vd;
    s->b = p, p += N * nv;
    s->a = p, p += N * nv;
    s->beta = p, p += N * nv;
    s->g = p, p += N * nv;
    s->thread = (float *)MOE_ALIGN_UP((uintptr_t)p, 64);
    s->per_thread = per_thread;
    /* test hook: the recurrent form for every run (the chunked one's reference) */
    s->recurrent_only = getenv("MOE_GDN_RECURRENT") != NULL;
    return 0;
}

/* the conv state's values e = 0 .. (K-1)*cd of a sequence, in or out */
static void conv_state(struct moe_kv *kv, int32_t l, const struct moe_config *c, float *x,
                       bool store)
{
    int64_t n = (int64_t)(c->lin_conv - 1) * moe_config_lin_conv_dim(c), dv = c->lin_v_dim;
    bool bf16 = moe_kv_state_bits(kv) == 16;
    for (int64_t r = 0; r * dv < n; r++) {
        void *row = moe_kv_state_row(kv, l, (int32_t)r);
        int64_t m = MOE_MIN(dv, n - r * dv);
        for (int64_t j = 0; j < m; j++) {
            float *v = &x[r * dv + j];
            if (!bf16 && store)
                ((float *)row)[j] = *v;
            else if (!bf16)
                *v = ((float *)row)[j];
            else if (store)
                ((uint16_t *)row)[j] = moe_f32_to_bf16(*v);
            else
                *v = moe_bf16_to_f32(((uint16_t *)row)[j]);
        }
    }
}

/* The rows of value head h's delta state: fp32 states in place, bf16 ones
 * widened into buf [dk][dv] (and narrowed back by delta_store). */
static void delta_rows(struct moe_kv *kv, int32_t l, const struct moe_config *c, int32_t h,
                       float *buf, float **rows)
{
    int32_t dk = c->lin_k_dim, dv = c->lin_v_dim, r0 = moe_linear_conv_rows(c) + h * dk;
    bool bf16 = moe_kv_state_bits(kv) == 16;
    for (int32_t a = 0; a < dk; a++) {
        void *row = moe_kv_state_row(kv, l, r0 + a);
        if (!bf16) {
            rows[a] = row;
            continue;
        }
        rows[a] = buf + (size_t)a * dv;
        for (int32_t j = 0; j < dv; j++)
            rows[a][j] = moe_bf16_to_f32(((const uint16_t *)row)[j]);
    }
}

static void delta_store(struct moe_kv *kv, int32_t l, const struct moe_config *c, int32_t h,
                        float *const *rows)
{
    int32_t dk = c->lin_k_dim, dv = c->lin_v_dim, r0 = moe_linear_conv_rows(c) + h * dk;
    if (moe_kv_state_bits(kv) != 16)
        return; /* written in place */
    for (int32_t a = 0; a < dk; a++) {
        uint16_t *b = moe_kv_state_row(kv, l, r0 + a);
        for (int32_t j = 0; j < dv; j++)
            b[j] = moe_f32_to_bf16(rows[a][j]);
    }
}

static float silu(float x)
{
    return x / (1.0f + expf(-x));
}

/* one sequence's run of len tokens from t0: conv (with its state), the
 * normalisations and the gates */
static void prepare_run(const struct moe_model *m, int32_t l, struct moe_linear_scratch *s,
                        struct moe_kv *kv, int32_t t0, int32_t len)
{
    const struct moe_config *c = &m->cfg;
    const struct moe_layer *L = &m->layers[l];
    int64_t cd = moe_config_lin_conv_dim(c), K = c->lin_conv, dk = c->lin_k_dim;
    int64_t nv = c->lin_v_heads;
    float *hist = s->hist; /* [K-1 + len][cd]: the state, then the run's inputs */
    conv_state(kv, l, c, hist, false);
    memcpy(hist + (K - 1) * cd, s->qkv + (size_t)t0 * cd, (size_t)len * cd * sizeof(float));
    for (int32_t t = 0; t < len; t++) {
        float *o = s->conv + (size_t)(t0 + t) * cd;
        for (int64_t ch = 0; ch < cd; ch++) {
            float acc = 0.0f;
            for (int64_t j = 0; j < K; j++)
                acc += L->lin_conv[ch * K + j] * hist[(t + j) * cd + ch];
            o[ch] = silu(acc);
        }
        /* q, k: L2-normalised per key head as the FLA kernels do; q / sqrt(dk) */
        for (int64_t h = 0; h < 2 * c->lin_k_heads; h++) {
            float *x = o + h * dk;
            double ss = 0.0;
            for (int64_t i = 0; i < dk; i++)
                ss += (double)x[i] * x[i];
            float r = (float)(1.0 / sqrt(ss + 1e-6));
            if (h < c->lin_k_heads)
                r /= sqrtf((float)dk);
            for (int64_t i = 0; i < dk; i++)
                x[i] *= r;
        }
        for (int64_t h = 0; h < nv; h++) {
            size_t i = (size_t)(t0 + t) * nv + h;
            s->beta[i] = 1.0f / (1.0f + expf(-s->b[i]));
            float u = s->a[i] + L->lin_dt_bias[h];
            float sp = u > 20.0f ? u : log1pf(expf(u)); /* softplus, torch's threshold */
            s->g[i] = -expf(L->lin_a_log[h]) * sp;
        }
    }
    conv_state(kv, l, c, hist + (size_t)len * cd, true);
}

struct lin_task {
    const struct moe_config *c;
    struct moe_linear_scratch *s;
    struct moe_kv *const *kvs;
    const int32_t *run0, *runlen; /* runs of one sequence's tokens */
    int32_t n_runs, l;
};

static void head_worker(void *arg, int ith, int nth)
{
    const struct lin_task *T = arg;
    const struct moe_config *c = T->c;
    struct moe_linear_scratch *s = T->s;
    int32_t nv = c->lin_v_heads, dk = c->lin_k_dim, dv = c->lin_v_dim;
    int32_t ng = nv / c->lin_k_heads;
    int64_t cd = moe_config_lin_conv_dim(c), kd = (int64_t)c->lin_k_heads * dk;
    float *buf = s->thread + (size_t)ith * s->per_thread;
    float **rows = (float **)(void *)(buf + (size_t)dk * dv); /* 2 floats per pointer */
    float *work = buf + (size_t)dk * dv + (size_t)dk * 2;
    for (int32_t task = ith; task < T->n_runs * nv; task += nth) {
        int32_t r = task / nv, h = task % nv, kh = c->lin_v_tiled ? h % c->lin_k_heads : h / ng;
        int32_t t0 = T->run0[r], len = T->runlen[r];
        struct moe_kv *kv = T->kvs[t0];
        const float *x = s->conv + (size_t)t0 * cd;
        struct moe_gdn_head g = {
            .n = len, .dk = dk, .dv = dv,
            .q = x + (size_t)kh * dk, .k = x + kd + (size_t)kh * dk,
            .v = x + 2 * kd + (size_t)h * dv,
            .g = s->g + (size_t)t0 * nv + h, .beta = s->beta + (size_t)t0 * nv + h,
            .qs = (size_t)cd, .ks = (size_t)cd, .vs = (size_t)cd, .gs = (size_t)nv,
            .os = (size_t)nv * dv, .S = rows,
            .out = s->core + (size_t)t0 * nv * dv + (size_t)h * dv};
        delta_rows(kv, T->l, c, h, buf, rows);
        if (len >= CHUNKED_MIN && !s->recurrent_only)
            moe_gdn_chunked(&g, work);
        else
            moe_gdn_recurrent(&g);
        delta_store(kv, T->l, c, h, rows);
    }
}

int moe_model_linear_attn(const struct moe_model *m, struct moe_pool *pool, int32_t l, int32_t n,
                          const float *xn, struct moe_kv *const *kvs, const int32_t *pos,
                          struct moe_linear_scratch *s, const float **out)
{
    const struct moe_config *c = &m->cfg;
    const struct moe_layer *L = &m->layers[l];
    int32_t nv = c->lin_v_heads, dv = c->lin_v_dim;
    int rc = reserve(s, c, n, moe_pool_threads(pool));
    if (rc < 0)
        return rc;
    moe_matmul(pool, &L->lin_qkv, xn, n, s->qkv);
    moe_matmul(pool, &L->lin_z, xn, n, s->z);
    moe_matmul(pool, &L->lin_b, xn, n, s->b);
    moe_matmul(pool, &L->lin_a, xn, n, s->a);

    /* runs: one sequence's consecutive positions (a prompt chunk, a decode token) */
    int32_t *run0 = malloc((size_t)n * 2 * sizeof(int32_t));
    if (!run0)
        return moe_err(-ENOMEM, "out of memory");
    int32_t *runlen = run0 + n, n_runs = 0;
    for (int32_t a = 0, b; a < n; a = b) {
        for (b = a + 1; b < n && kvs[b] == kvs[a] && pos[b] == pos[b - 1] + 1;)
            b++;
        if ((rc = moe_kv_state_begin(kvs[a], l, pos[a])) < 0) {
            free(run0);
            return rc;
        }
        prepare_run(m, l, s, kvs[a], a, b - a);
        run0[n_runs] = a;
        runlen[n_runs++] = b - a;
    }
    struct lin_task T = {c, s, kvs, run0, runlen, n_runs, l};
    moe_pool_run(pool, head_worker, &T);
    for (int32_t r = 0; r < n_runs; r++)
        moe_kv_state_end(kvs[run0[r]], l, pos[run0[r]] + runlen[r]);
    free(run0);

    for (int32_t t = 0; t < n; t++) /* gated RMSNorm per value head */
        for (int32_t h = 0; h < nv; h++) {
            float *o = s->core + ((size_t)t * nv + h) * dv;
            const float *z = s->z + ((size_t)t * nv + h) * dv;
            double ss = 0.0;
            for (int32_t j = 0; j < dv; j++)
                ss += (double)o[j] * o[j];
            float r = (float)(1.0 / sqrt(ss / dv + c->rms_eps));
            for (int32_t j = 0; j < dv; j++)
                o[j] = o[j] * r * L->lin_norm[j] * silu(z[j]);
        }
    *out = s->core;
    return 0;
}
