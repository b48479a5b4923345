/* A pack model served from the host tier (offload/offload.h): the experts a
 * layer's tokens route to are made resident just before they run, and read
 * through views that are the mapping's views moved onto the resident copy
 * (the blob's layout is the file's, so every part sits at the same offset). */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "common/common.h"
#include "experts/experts.h"
#include "format/format_pack.h"
#include "model/model.h"
#include "model/model_int.h"
#include "offload/offload.h"
#include "router/router.h"

/* hands out an expert whose read was in flight (below; the source set up once) */
static int wait_expert(void *ctx, int32_t x, const struct moe_expert_weights **w);

struct moe_model_offload {
    struct moe_offload *o;
    bool prefetch;
    /* [L * E][part]: where each part (model_tensors.c's expert parts) sits in
     * the blob, and where its pointer sits in struct moe_expert_weights */
    ptrdiff_t (*delta)[MOE_EXPERT_MAX_PARTS];
    size_t part_off[MOE_EXPERT_MAX_PARTS];
    bool part_mat[MOE_EXPERT_MAX_PARTS]; /* a matrix (its data pointer), or a bias */
    int n_parts;
    struct moe_expert_weights *views;   /* [E] this step's experts */
    bool *need, *likely, *ready;        /* [E] */
    const void **blobs;                 /* [E] */
    /* fault isolation (moe_model_offload_layer's isolate): the layer's experts
     * whose reads failed, and each one's message as the tier gave it */
    bool *failed;                       /* [E] */
    char (*fail_msg)[MOE_FORWARD_FAULT_MSG]; /* [E] */
    /* the layer in progress: what its last arriving expert starts the
     * prefetch from (moe_model_offload_layer's arguments) */
    const struct moe_model *model;
    struct moe_pool *pool;
    int32_t layer, n, n_pending;
    const float *x;
    float *tmp, *router_buf;
    struct moe_expert_source src;
};

void moe_model_offload_free(struct moe_model *m)
{
    struct moe_model_offload *mo = m->offload;
    if (!mo)
        return;
    moe_offload_close(mo->o);
    free(mo->delta);
    free(mo->views);
    free(mo->need);
    free(mo->likely);
    free(mo->ready);
    free(mo->blobs);
    free(mo->failed);
    free(mo->fail_msg);
    free(mo);
    m->offload = NULL;
}

struct moe_offload *moe_model_offload(const struct moe_model *m)
{
    return m->offload ? m->offload->o : NULL;
}

int moe_model_use_offload(struct moe_model *m, struct moe_offload *o, bool prefetch)
{
    moe_model_offload_free(m);
    if (!o)
        return 0;
    const struct moe_pack *p = moe_model_pack(m);
    if (!p) {
        moe_offload_close(o);
        return moe_err(-EINVAL, "%s: tiered expert memory needs a moed pack (moe-pack makes one)",
                       m->path);
    }
    int32_t L = m->cfg.n_layers, E = m->cfg.n_experts;
    struct moe_model_offload *mo = calloc(1, sizeof(*mo));
    if (!mo || !(mo->delta = calloc((size_t)L * E, sizeof(*mo->delta))) ||
        !(mo->views = calloc((size_t)E, sizeof(*mo->views))) ||
        !(mo->need = calloc((size_t)E, sizeof(bool))) ||
        !(mo->likely = calloc((size_t)E, sizeof(bool))) ||
        !(mo->ready = calloc((size_t)E, sizeof(bool))) ||
        !(mo->blobs = calloc((size_t)E, sizeof(void *))) ||
        !(mo->failed = calloc((size_t)E, sizeof(bool))) ||
        !(mo->fail_msg = calloc((size_t)E, sizeof(*mo->fail_msg)))) {
        if (mo)
            mo->o = o;
        else
            moe_offload_close(o);
        m->offload = mo;
        moe_model_offload_free(m);
        return moe_err(-ENOMEM, "out of memory");
    }
    for (int32_t l = 0; l < L; l++) {
        if (m->cfg.layer_dense[l])
            continue;
        for (int32_t x = 0; x < E; x++) {
            struct moe_expert_part parts[MOE_EXPERT_MAX_PARTS];
            mo->n_parts = moe_model_expert_parts(m, l, x, parts, MOE_EXPERT_MAX_PARTS);
            const uint8_t *base = moe_pack_find_expert(p, l, x)->data;
            for (int i = 0; i < mo->n_parts; i++) {
                const void *data = parts[i].mat ? parts[i].mat->data : (const void *)parts[i].vec;
                mo->part_off[i] = parts[i].off;
                mo->part_mat[i] = parts[i].mat != NULL;
                mo->delta[(size_t)l * E + x][i] = (const uint8_t *)data - base;
            }
        }
    }
    mo->o = o;
    mo->prefetch = prefetch;
    mo->model = m;
    mo->src = (struct moe_expert_source){.ready = mo->ready, .wait = wait_expert, .ctx = mo};
    m->offload = mo;
    return 0;
}

/* What the next MoE layer will likely pick (ALGORITHMS.md s.3, speculative
 * prefetch): its router applied to the residual stream x as it enters this
 * layer's MoE block, normalised with the NEXT layer's FFN norm (the input that
 * router was trained on, short of this layer's MoE output and the next
 * attention). tmp [n][H] is scratch, router_buf [n][E] receives the logits. */
static void prefetch_next(const struct moe_model *m, struct moe_pool *pool, int32_t l,
                          const float *x, int32_t n, float *tmp, float *router_buf)
{
    const struct moe_config *c = &m->cfg;
    struct moe_model_offload *mo = m->offload;
    int32_t next = l + 1;
    while (next < c->n_layers && c->layer_dense[next])
        next++;
    if (next >= c->n_layers)
        return;
    const float *w = m->layers[next].ffn_norm;
    int64_t H = c->hidden;
    for (int32_t t = 0; t < n; t++) {
        const float *xt = x + (size_t)t * H;
        double ss = 0;
        for (int64_t i = 0; i < H; i++)
            ss += (double)xt[i] * xt[i];
        float r = (float)(1.0 / sqrt(ss / (double)H + c->rms_eps));
        for (int64_t i = 0; i < H; i++)
            tmp[(size_t)t * H + i] = xt[i] * r * w[i];
    }
    moe_matmul(pool, &m->layers[next].router, tmp, n, router_buf); /* [n][E] */
    moe_vec_add_rows(router_buf, m->layers[next].router_b, n, c->n_experts);
    memset(mo->likely, 0, (size_t)c->n_experts * sizeof(bool));
    struct moe_router_cfg rc;
    moe_model_router_cfg(m, next, &rc);
    for (int32_t t = 0; t < n; t++) {
        struct moe_route r;
        float *lg = router_buf + (size_t)t * c->n_experts;
        moe_router_route(&rc, lg, c->n_experts, c->top_k, 0.0f, &r, NULL);
        for (int32_t j = 0; j < r.n; j++)
            mo->likely[r.expert[j]] = true;
    }
    moe_offload_prefetch(mo->o, next, mo->likely);
}

/* the views of layer l's expert x moved onto its resident blob b */
static void point_view(struct moe_model_offload *mo, int32_t l, int32_t x, const void *b)
{
    const ptrdiff_t *d = mo->delta[(size_t)l * mo->model->cfg.n_experts + x];
    for (int i = 0; i < mo->n_parts; i++) { /* a matrix's data, or a bias's pointer */
        uint8_t *slot = (uint8_t *)&mo->views[x] + mo->part_off[i];
        const void *at = (const uint8_t *)b + d[i];
        if (mo->part_mat[i])
            ((struct moe_weight *)(void *)slot)->data = at;
        else
            *(const void **)(void *)slot = at;
    }
}

/* all of the layer's experts are in: the link is free for the next layer's */
static void layer_in(struct moe_model_offload *mo)
{
    if (mo->prefetch)
        prefetch_next(mo->model, mo->pool, mo->layer, mo->x, mo->n, mo->tmp, mo->router_buf);
}

static int wait_expert(void *ctx, int32_t x, const struct moe_expert_weights **w)
{
    struct moe_model_offload *mo = ctx;
    const void *b;
    int rc = moe_offload_wait(mo->o, x, &b);
    if (rc < 0) {
        if (mo->src.failed) { /* isolated: the forward fails only x's tokens */
            snprintf(mo->fail_msg[x], sizeof(mo->fail_msg[x]), "%s", moe_err_msg());
            if (--mo->n_pending == 0) /* the others are in: the prefetch may go on */
                layer_in(mo);
        }
        return rc;
    }
    point_view(mo, mo->layer, x, b);
    *w = &mo->views[x];
    if (--mo->n_pending == 0)
        layer_in(mo);
    return 0;
}

int moe_model_offload_layer(const struct moe_model *m, struct moe_pool *pool, int32_t l,
                            const float *x, int32_t n, const struct moe_route *routes, float *tmp,
                            float *router_buf, bool isolate,
                            const struct moe_expert_weights **experts,
                            const struct moe_expert_source **src)
{
    struct moe_model_offload *mo = m->offload;
    int32_t E = m->cfg.n_experts;
    memset(mo->need, 0, (size_t)E * sizeof(bool));
    memset(mo->failed, 0, (size_t)E * sizeof(bool));
    mo->src.failed = isolate ? mo->failed : NULL;
    for (int32_t t = 0; t < n; t++)
        for (int32_t j = 0; j < routes[t].n; j++)
            mo->need[routes[t].expert[j]] = true;
    int rc = moe_offload_begin(mo->o, l, mo->need, mo->blobs);
    if (rc < 0)
        return rc;
    /* every view valid (experts_run sizes buffers from expert 0); only the
     * needed ones move onto the host tier, the others are never read */
    memcpy(mo->views, m->layers[l].experts, (size_t)E * sizeof(*mo->views));
    mo->pool = pool;
    mo->layer = l;
    mo->x = x;
    mo->n = n;
    mo->tmp = tmp;
    mo->router_buf = router_buf;
    mo->n_pending = 0;
    for (int32_t e = 0; e < E; e++) {
        mo->ready[e] = mo->need[e] && mo->blobs[e];
        mo->n_pending += mo->need[e] && !mo->blobs[e];
        if (mo->ready[e])
            point_view(mo, l, e, mo->blobs[e]);
    }
    if (mo->n_pending == 0)
        layer_in(mo);
    *experts = mo->views;
    *src = &mo->src;
    return 0;
}

const char *moe_model_offload_failure(const struct moe_model *m, int32_t e)
{
    const struct moe_model_offload *mo = m->offload;
    return mo && mo->src.failed && mo->failed[e] ? mo->fail_msg[e] : NULL;
}

int moe_model_expert_scores(const struct moe_model *m, double *score)
{
    const struct moe_pack *p = moe_model_pack(m);
    const json_t *meta = p ? moe_pack_meta(p) : NULL;
    const json_t *cal = meta ? json_object_get(meta, "calib") : NULL;
    const json_t *fr = cal ? json_object_get(cal, "expert_frequency") : NULL;
    int32_t L = m->cfg.n_layers, E = m->cfg.n_experts;
    if (!json_is_array(fr) || (int32_t)json_array_size(fr) != L)
        return moe_err(-ENOENT, "%s: no calibration statistics (meta \"calib\".expert_frequency); "
                       "pack it with moe-pack --calib", m->path);
    for (int32_t l = 0; l < L; l++) {
        const json_t *row = json_array_get(fr, (size_t)l);
        for (int32_t e = 0; e < E; e++) {
            const json_t *v = json_is_array(row) ? json_array_get(row, (size_t)e) : NULL;
            score[(size_t)l * E + e] = json_is_number(v) ? json_number_value(v) : 0.0;
        }
    }
    return 0;
}
