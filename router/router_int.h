/* router: pieces the softmax top-k router and the other routers share.
 * Private to router/. */
#ifndef MOE_ROUTER_INT_H
#define MOE_ROUTER_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "router/router.h"

/* The k largest of v[] among allowed ones (NULL = all) into idx, in
 * decreasing order, ties to the lower index; returns how many (<= k). */
int32_t moe_router_top_k(const float *v, const bool *allowed, int32_t n, int32_t k,
                         int32_t *idx);
/* One token's routing into st (NULL: nothing): kept and dropped
 * activations, the top-k mass and the part of it ODP dropped. */
void moe_router_stats_add(struct moe_router_layer_stats *st, int32_t kept, int32_t dropped,
                          double mass, double pruned);

#endif
