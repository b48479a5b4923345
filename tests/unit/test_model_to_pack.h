/* Tests that need a pack of a real model: the model's dense base and every
 * expert's gate/up/down copied as they are (their own dtype). */
#ifndef MOE_TEST_MODEL_TO_PACK_H
#define MOE_TEST_MODEL_TO_PACK_H

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>

#include "format/format_pack.h"
#include "model/model.h"

/* What a pack gets for expert (l, e)'s matrix w: w itself, or w rewritten
 * (another dtype) into buf, which has room for w's own bytes. */
typedef struct moe_weight (*moe_test_expert_fn)(int32_t l, int32_t e, const struct moe_weight *w,
                                                uint8_t *buf);

/* The pack with every expert matrix through fn (NULL: as it is); the quant
 * record names the experts `experts`. */
static inline int moe_test_write_pack_as(const struct moe_model *m, const char *path,
                                         moe_test_expert_fn fn, const char *experts)
{
    struct moe_pack_writer *w;
    int rc = moe_pack_writer_open(path, &w);
    if (rc < 0)
        return rc;
    if ((rc = moe_model_pack_write_base(m, w)) < 0)
        goto fail;
    for (int32_t l = 0; l < m->cfg.n_layers; l++) {
        if (m->cfg.layer_dense[l])
            continue;
        for (int32_t e = 0; e < m->cfg.n_experts; e++) {
            const struct moe_expert_weights *x = &m->layers[l].experts[e];
            const struct moe_weight *ws[3] = {&x->gate, &x->up, &x->down};
            static const char *const names[3] = {"gate", "up", "down"};
            struct moe_pack_part parts[3];
            uint8_t *bufs[3] = {0};
            for (int k = 0; k < 3; k++) {
                struct moe_weight q = *ws[k];
                if (fn && (bufs[k] = malloc(moe_weight_bytes(ws[k]))))
                    q = fn(l, e, ws[k], bufs[k]);
                parts[k] = (struct moe_pack_part){names[k], q.dtype, q.rows, q.cols, q.data,
                                                  moe_weight_bytes(&q)};
            }
            rc = fn && (!bufs[0] || !bufs[1] || !bufs[2])
                     ? -ENOMEM
                     : moe_pack_writer_add_expert(w, l, e, parts, 3);
            for (int k = 0; k < 3; k++)
                free(bufs[k]);
            if (rc < 0)
                goto fail;
        }
    }
    json_t *q = json_pack("{s:s}", "experts", experts);
    if ((rc = moe_pack_writer_set_json(w, "quant", q)) < 0)
        goto fail;
    return moe_pack_writer_commit(w);
fail:
    moe_pack_writer_abort(w);
    return rc;
}

static inline int moe_test_write_pack(const struct moe_model *m, const char *path)
{
    return moe_test_write_pack_as(m, path, NULL, "bf16");
}

#endif
