/* Group-wise integer weights: groups of MOE_GQ_GROUP consecutive weights of
 * a row share an fp16 scale and an unrounded fp16 zero, w = scale * (q - zero)
 * (the MC-MoE convention, ALGORITHMS.md s.2). GQ4 is the 4-bit member, the
 * reference point for QMoE; 1/2/3 bits come with MC-MoE.
 *
 * GQ4 group layout (68 bytes, no padding or alignment): fp16 scale, fp16
 * zero, then 64 code bytes in 4 stretches of 16, one per 32 weights: byte j
 * of stretch s holds q[32s + j] in its low nibble and q[32s + 16 + j] in its
 * high nibble. (16 bytes zero-extended to 16 dwords are then weights j and,
 * after one shift, j + 16; AVX-512's vpermps ignores the bits above the
 * nibble, so a per-group table lookup needs no mask: quant_gq_avx512.c.)
 * cols must be a multiple of MOE_GQ_GROUP. */
#ifndef MOE_QUANT_GQ_H
#define MOE_QUANT_GQ_H

#include <stddef.h>
#include <stdint.h>

#include "quant/quant.h"

#define MOE_GQ_GROUP 128
#define MOE_GQ4_GROUP_BYTES 68

/* Round-to-nearest asymmetric quantisation of one group: scale and zero
 * from the group's min and max (the clipping search: p in [0.9, 1.1], 101
 * values, minimising sum |q(x) - x|^2.4, scale = p (max - min) / (2^bits - 1),
 * zero = -p min / scale, not rounded to an integer). Both come back already
 * rounded to fp16, and the search measured the error with those values. A
 * constant group gets q = 0 and w = -scale * zero = its value. */
void moe_gq_group_params(const float *x, int n, int bits, float *scale, float *zero);
/* q = clamp(round(x / scale + zero), 0, 2^bits - 1) with the fp16-rounded
 * scale and zero as they are stored */
static inline int moe_gq_quant(float x, float scale, float zero, int bits)
{
    float q = x / scale + zero;
    int qi = (int)(q + (q >= 0 ? 0.5f : -0.5f));
    int qmax = (1 << bits) - 1;
    return qi < 0 ? 0 : (qi > qmax ? qmax : qi);
}
/* Packs one row of GQ4 from its codes q[cols] (0..15) and per-group fp16
 * scale/zero into dst (row bytes = cols / 128 * 68). */
void moe_gq4_pack_row(const uint8_t *q, const uint16_t *scale, const uint16_t *zero,
                      int64_t cols, void *dst);

#endif
