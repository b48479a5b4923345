#include "kv/kv.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "common/common.h"

struct moe_kv {
    int32_t n_layers, n_kv_heads, head_dim, max_ctx;
    float *k, *v; /* [layer][kv_head][pos][head_dim]: one head's keys contiguous */
};

static size_t head_stride(const struct moe_kv *kv)
{
    return (size_t)kv->max_ctx * (size_t)kv->head_dim;
}

static float *kv_at(const struct moe_kv *kv, float *base, int32_t layer, int32_t head,
                    int32_t pos)
{
    return base + ((size_t)layer * (size_t)kv->n_kv_heads + (size_t)head) * head_stride(kv) +
           (size_t)pos * (size_t)kv->head_dim;
}

int moe_kv_create(int32_t n_layers, int32_t n_kv_heads, int32_t head_dim, int32_t max_ctx,
                  struct moe_kv **out)
{
    *out = NULL;
    if (n_layers <= 0 || n_kv_heads <= 0 || head_dim <= 0 || max_ctx <= 0)
        return moe_err(-EINVAL, "kv cache: bad dimensions");
    struct moe_kv *kv = calloc(1, sizeof(*kv));
    if (!kv)
        return moe_err(-ENOMEM, "out of memory");
    kv->n_layers = n_layers;
    kv->n_kv_heads = n_kv_heads;
    kv->head_dim = head_dim;
    kv->max_ctx = max_ctx;
    size_t n = (size_t)n_layers * (size_t)n_kv_heads * head_stride(kv);
    kv->k = malloc(n * sizeof(float));
    kv->v = malloc(n * sizeof(float));
    if (!kv->k || !kv->v) {
        moe_kv_free(kv);
        return moe_err(-ENOMEM, "out of memory for a KV cache of %d tokens (%zu MiB)",
                       max_ctx, 2 * n * sizeof(float) >> 20);
    }
    *out = kv;
    return 0;
}

void moe_kv_free(struct moe_kv *kv)
{
    if (!kv)
        return;
    free(kv->k);
    free(kv->v);
    free(kv);
}

int32_t moe_kv_capacity(const struct moe_kv *kv)
{
    return kv->max_ctx;
}

void moe_kv_store(struct moe_kv *kv, int32_t layer, int32_t pos, const float *k, const float *v)
{
    size_t hd = (size_t)kv->head_dim;
    for (int32_t h = 0; h < kv->n_kv_heads; h++) {
        memcpy(kv_at(kv, kv->k, layer, h, pos), k + h * hd, hd * sizeof(float));
        memcpy(kv_at(kv, kv->v, layer, h, pos), v + h * hd, hd * sizeof(float));
    }
}

struct attn_task {
    struct moe_kv *const *kvs;
    const int32_t *pos;
    int32_t layer, n_heads, n;
    const float *q;
    float *out;
    float *scores;
    size_t scores_stride;
};

static void attn_worker(void *arg, int ith, int nth)
{
    struct attn_task *a = arg;
    float *sc = a->scores + (size_t)ith * a->scores_stride;
    int32_t jobs = a->n * a->n_heads;
    for (int32_t job = ith; job < jobs; job += nth) {
        int32_t t = job / a->n_heads, h = job % a->n_heads;
        const struct moe_kv *kv = a->kvs[t];
        int32_t hd = kv->head_dim, g = h / (a->n_heads / kv->n_kv_heads);
        float scale = 1.0f / sqrtf((float)hd);
        int32_t len = a->pos[t] + 1; /* causal: itself and everything before */
        const float *q = a->q + ((size_t)t * a->n_heads + h) * hd;
        const float *K = kv_at(kv, kv->k, a->layer, g, 0);
        const float *V = kv_at(kv, kv->v, a->layer, g, 0);
        float mx = -INFINITY;
        for (int32_t p = 0; p < len; p++) {
            sc[p] = moe_vec_dot_f32(q, K + (size_t)p * hd, hd) * scale;
            mx = sc[p] > mx ? sc[p] : mx;
        }
        double sum = 0.0;
        for (int32_t p = 0; p < len; p++) {
            sc[p] = expf(sc[p] - mx);
            sum += sc[p];
        }
        float inv = (float)(1.0 / sum);
        float *o = a->out + ((size_t)t * a->n_heads + h) * hd;
        memset(o, 0, (size_t)hd * sizeof(float));
        for (int32_t p = 0; p < len; p++)
            moe_vec_axpy_f32(o, sc[p] * inv, V + (size_t)p * hd, hd);
    }
}

void moe_kv_attention(struct moe_pool *pool, struct moe_kv *const *kvs, const int32_t *pos,
                      int32_t n, int32_t layer, int32_t n_heads, const float *q, float *out,
                      float *scores, size_t scores_stride)
{
    struct attn_task a = {kvs, pos, layer, n_heads, n, q, out, scores, scores_stride};
    moe_pool_run(pool, attn_worker, &a);
}
