/* The online dynamic pruning a model comes with: calibrated betas from its
 * pack, else a default beta on the middle layers. */
#include <errno.h>
#include <jansson.h>
#include <math.h>

#include "common/common.h"
#include "format/format_pack.h"
#include "model/model.h"
#include "router/router.h"

_Static_assert(MOE_MAX_LAYERS == MOE_ROUTER_MAX_LAYERS, "model and router layer limits differ");

/* meta "odp": {"beta": [n_layers numbers], "protect_fraction": F} */
static int from_meta(const struct moe_model *m, const json_t *odp, struct moe_prune *out)
{
    const char *file = m->path ? m->path : "pack";
    const json_t *beta = json_object_get(odp, "beta");
    if (!json_is_object(odp) || !json_is_array(beta))
        return moe_err(-EINVAL, "%s: meta \"odp\" must be an object with a \"beta\" array", file);
    if ((int64_t)json_array_size(beta) != m->cfg.n_layers)
        return moe_err(-EINVAL, "%s: meta \"odp.beta\" has %zu values for %d layers", file,
                       json_array_size(beta), m->cfg.n_layers);
    for (int32_t l = 0; l < m->cfg.n_layers; l++) {
        const json_t *v = json_array_get(beta, (size_t)l);
        double b = json_is_number(v) ? json_number_value(v) : -1.0;
        if (!(b >= 0.0 && b <= 1.0))
            return moe_err(-EINVAL, "%s: meta \"odp.beta[%d]\" must be a number in [0, 1]", file,
                           l);
        out->beta[l] = (float)b;
    }
    const json_t *pf = json_object_get(odp, "protect_fraction");
    if (pf) {
        double f = json_is_number(pf) ? json_number_value(pf) : -1.0;
        if (!(f >= 0.0 && f <= 1.0))
            return moe_err(-EINVAL, "%s: meta \"odp.protect_fraction\" must be in [0, 1]", file);
        out->protect_fraction = (float)f;
    }
    return 0;
}

int moe_model_prune_defaults(const struct moe_model *m, float default_beta, struct moe_prune *out,
                             bool *from_pack)
{
    *out = (struct moe_prune){.protect_fraction = MOE_PRUNE_PROTECT_DEFAULT};
    *from_pack = false;
    const struct moe_pack *p = moe_model_pack(m);
    const json_t *meta = p ? moe_pack_meta(p) : NULL;
    const json_t *odp = meta ? json_object_get(meta, "odp") : NULL;
    int rc = 0;
    if (odp) {
        if ((rc = from_meta(m, odp, out)) < 0)
            return rc;
        *from_pack = true;
    } else {
        bool sel[MOE_MAX_LAYERS];
        moe_router_prune_auto_layers(m->cfg.n_layers, sel);
        for (int32_t l = 0; l < m->cfg.n_layers; l++)
            out->beta[l] = sel[l] ? default_beta : 0.0f;
    }
    for (int32_t l = 0; l < m->cfg.n_layers; l++)
        if (m->cfg.layer_dense[l])
            out->beta[l] = 0.0f;
    return 0;
}
