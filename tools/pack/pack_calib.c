/* moe-pack calibration: windows of the calibration text run through the
 * model one layer at a time, recording each MoE layer's normalised inputs
 * and routes; the residual stream is kept between layers so each layer sees
 * the outputs of the already-compressed ones before it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "kv/kv.h"
#include "tools/pack/pack.h"

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Tokenises the calibration text and picks windows of CALIB_SEQ tokens at
 * random (--seed), without overlap. */
int calib_load(const struct moe_model *m, const struct pack_opts *o, struct calib *cb)
{
    memset(cb, 0, sizeof(*cb));
    if (!m->tok)
        return moe_err(-EINVAL, "%s: the model has no tokenizer, so --calib text cannot be "
                       "encoded", o->model);
    char *text;
    size_t len;
    int rc = moe_read_text_file(o->calib, &text, &len);
    if (rc < 0)
        return rc;
    if (o->calib_end_char > 0 && (size_t)o->calib_end_char < len)
        len = (size_t)o->calib_end_char;
    int32_t *ids;
    size_t n_ids;
    rc = moe_tokenizer_encode(m->tok, text, len, false, &ids, &n_ids);
    free(text);
    if (rc < 0)
        return rc;
    size_t n_win = n_ids / CALIB_SEQ;
    size_t want = (size_t)((o->calib_tokens + CALIB_SEQ - 1) / CALIB_SEQ);
    if (n_win == 0) {
        free(ids);
        return moe_err(-EINVAL, "%s: calibration text too short: %zu tokens, at least %d needed",
                       o->calib, n_ids, CALIB_SEQ);
    }
    want = MOE_MIN(want, n_win);
    size_t *order = malloc(n_win * sizeof(*order));
    cb->ids = malloc(want * CALIB_SEQ * sizeof(*cb->ids));
    if (!order || !cb->ids) {
        free(order);
        free(ids);
        return moe_err(-ENOMEM, "out of memory");
    }
    uint64_t s = (uint64_t)o->seed;
    for (size_t i = 0; i < n_win; i++)
        order[i] = i;
    for (size_t i = n_win - 1; i > 0; i--) { /* Fisher-Yates */
        size_t j = (size_t)(splitmix(&s) % (i + 1));
        size_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (size_t w = 0; w < want; w++)
        memcpy(cb->ids + w * CALIB_SEQ, ids + order[w] * CALIB_SEQ, CALIB_SEQ * sizeof(*ids));
    cb->n_seq = (int32_t)want;
    free(order);
    free(ids);

    size_t N = want * CALIB_SEQ, H = (size_t)m->cfg.hidden;
    cb->hidden = m->cfg.hidden;
    cb->x = malloc(N * H * sizeof(float));
    cb->xn = malloc(N * H * sizeof(float));
    cb->routes = malloc(N * sizeof(*cb->routes));
    if (!cb->x || !cb->xn || !cb->routes)
        return moe_err(-ENOMEM, "out of memory for %zu calibration tokens", N);
    if ((rc = moe_scratch_create(&cb->scr)) < 0 ||
        (rc = moe_model_kv_create(m, CALIB_SEQ, &cb->kv)) < 0)
        return rc;
    for (int32_t q = 0; q < cb->n_seq; q++)
        moe_model_embed(m, cb->ids + (size_t)q * CALIB_SEQ, CALIB_SEQ,
                        cb->x + (size_t)q * CALIB_SEQ * H);
    return 0;
}

void calib_free(struct calib *cb)
{
    free(cb->ids);
    free(cb->x);
    free(cb->xn);
    free(cb->routes);
    moe_scratch_free(cb->scr);
    moe_model_kv_free(cb->kv);
    memset(cb, 0, sizeof(*cb));
}

static void observe(void *ctx, int32_t layer, const float *xn, int32_t n,
                    const struct moe_route *routes)
{
    struct calib *cb = ctx;
    (void)layer;
    memcpy(cb->xn + cb->cursor * cb->hidden, xn, (size_t)n * (size_t)cb->hidden * sizeof(float));
    memcpy(cb->routes + cb->cursor, routes, (size_t)n * sizeof(*routes));
    cb->cursor += n;
}

int calib_run_layer(struct moe_model *m, struct moe_pool *pool, struct calib *cb, int32_t l,
                    bool record, bool advance)
{
    int64_t H = cb->hidden;
    int32_t pos[CALIB_SEQ];
    for (int32_t i = 0; i < CALIB_SEQ; i++)
        pos[i] = i;
    float *tmp = NULL;
    if (!advance && !(tmp = malloc(CALIB_SEQ * (size_t)H * sizeof(float))))
        return moe_err(-ENOMEM, "out of memory");
    cb->cursor = 0;
    int rc = 0;
    for (int32_t q = 0; q < cb->n_seq && rc == 0; q++) {
        float *x = cb->x + (size_t)q * CALIB_SEQ * H;
        if (!advance) { /* a scratch copy: the stream stays at this layer's input */
            memcpy(tmp, x, CALIB_SEQ * (size_t)H * sizeof(float));
            x = tmp;
        }
        rc = moe_model_forward_layer(m, pool, cb->scr, l, CALIB_SEQ, x, cb->kv, pos,
                                     record ? observe : NULL, cb);
    }
    free(tmp);
    return rc;
}

int64_t calib_expert_inputs(const struct calib *cb, int32_t e, float *xe, int64_t *idx, float *w)
{
    int64_t ne = 0, N = calib_tokens(cb), H = cb->hidden;
    for (int64_t t = 0; t < N; t++)
        for (int32_t j = 0; j < cb->routes[t].n; j++)
            if (cb->routes[t].expert[j] == e) {
                memcpy(xe + ne * H, cb->xn + t * H, (size_t)H * sizeof(float));
                if (idx)
                    idx[ne] = t;
                if (w)
                    w[ne] = cb->routes[t].weight[j];
                ne++;
            }
    return ne;
}
