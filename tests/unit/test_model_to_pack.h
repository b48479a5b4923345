/* Tests that need a pack of a real model: the model's dense base and every
 * expert's gate/up/down copied as they are (their own dtype). */
#ifndef MOE_TEST_MODEL_TO_PACK_H
#define MOE_TEST_MODEL_TO_PACK_H

#include <jansson.h>

#include "format/format_pack.h"
#include "model/model.h"

static inline int moe_test_write_pack(const struct moe_model *m, const char *path)
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
            for (int k = 0; k < 3; k++)
                parts[k] = (struct moe_pack_part){names[k], ws[k]->dtype, ws[k]->rows,
                                                  ws[k]->cols, ws[k]->data,
                                                  moe_weight_bytes(ws[k])};
            if ((rc = moe_pack_writer_add_expert(w, l, e, parts, 3)) < 0)
                goto fail;
        }
    }
    json_t *q = json_pack("{s:s}", "experts", "bf16");
    if ((rc = moe_pack_writer_set_json(w, "quant", q)) < 0)
        goto fail;
    return moe_pack_writer_commit(w);
fail:
    moe_pack_writer_abort(w);
    return rc;
}

#endif
