/* Group-wise integer weights: groups of MOE_GQ_GROUP consecutive weights of
 * a row share an fp16 scale and an unrounded fp16 zero, w = scale * (q - zero)
 * (the MC-MoE convention, ALGORITHMS.md s.2). GQ4 is the 4-bit member, the
 * reference point for QMoE; GQ1/GQ2/GQ3 are MC-MoE's 1/2/3-bit widths
 * (1.25 / 2.25 / 3.25 bits per weight with the scale and zero).
 *
 * GQ1/2/3 group layout (4 + 16*bits = 20 / 36 / 52 bytes, no padding or
 * alignment): fp16 scale, fp16 zero, then 16 little-endian words of `bits`
 * bytes each (8 codes of `bits` bits): word j (bytes bits*j ..
 * bits*j + bits - 1 of the codes) holds q[16k + j] at bits bits*k ..
 * bits*k + bits - 1, k = 0..7. Zero-extending the 16 words to 16 dwords
 * (one vpmovzx for 1 and 2 bits; a masked load, vpermd and vpshufb for 3)
 * gives weights 16k .. 16k + 15 after one shift by bits*k, and a per-group
 * table {scale * ((i mod 2^bits) - zero)} of 16 entries (AVX-512) or 8
 * (AVX2) maps them with vpermps, which reads only the low 4 (3) bits: the
 * bits of the next code above them select the same entry, so no masking
 * (quant_gq_avx512.c, quant_gq_avx2.c).
 * GQ1 is the MC-MoE 1-bit rule, sign(x) * mean|x|, in the common formula:
 * q = (x >= 0), scale = 2 mean|x| (fp16), zero = 0.5.
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
#define MOE_GQ_GROUP_BYTES(bits) (4 + 16 * (bits)) /* 20, 36, 52, 68 */

/* bytes of one group of `bits` (1..4), 0 for other widths */
size_t moe_gq_group_bytes(int bits);
/* MOE_DTYPE_GQ<bits> for bits 1..4, 0 for other widths */
int moe_gq_dtype(int bits);
/* the width of a GQ dtype, 0 for any other dtype */
int moe_gq_bits(int dtype);

/* Round-to-nearest asymmetric quantisation of one group: scale and zero
 * from the group's min and max (the clipping search: p in [0.9, 1.1], 101
 * values, minimising sum |q(x) - x|^2.4, scale = p (max - min) / (2^bits - 1),
 * zero = -p min / scale, not rounded to an integer). Both come back already
 * rounded to fp16, and the search measured the error with those values. A
 * constant group gets q = 0 and w = -scale * zero = its value (bits >= 2).
 * bits == 1 starts from MC-MoE's sign rule (levels -mean|x|, +mean|x|) and
 * refines the two levels by Lloyd steps (each level the mean of the weights
 * it stands for, the threshold midway), which never raises the error; the
 * levels a < b are stored as scale = b - a, zero = -a / scale. */
void moe_gq_group_params(const float *x, int n, int bits, float *scale, float *zero);
/* q = clamp(round(x / scale + zero), 0, 2^bits - 1) with the fp16-rounded
 * scale and zero as they are stored. 1 bit: the nearer of the two levels,
 * q = (x / scale + zero >= 0.5); for scale 0 (no level apart), q = (x >= 0). */
static inline int moe_gq_quant(float x, float scale, float zero, int bits)
{
    if (bits == 1)
        return scale > 0.0f ? x / scale + zero >= 0.5f : x >= 0.0f;
    float q = x / scale + zero;
    int qi = (int)(q + (q >= 0 ? 0.5f : -0.5f));
    int qmax = (1 << bits) - 1;
    return qi < 0 ? 0 : (qi > qmax ? qmax : qi);
}
/* Packs one row of GQ4 from its codes q[cols] (0..15) and per-group fp16
 * scale/zero into dst (row bytes = cols / 128 * 68). */
void moe_gq4_pack_row(const uint8_t *q, const uint16_t *scale, const uint16_t *zero,
                      int64_t cols, void *dst);
/* Packs one row of GQ<bits> (1..4) from its codes q[cols] (0..2^bits - 1;
 * higher bits ignored) and per-group fp16 scale/zero into dst (row bytes =
 * cols / 128 * moe_gq_group_bytes(bits)). 4 bits is moe_gq4_pack_row. */
void moe_gq_pack_row(int bits, const uint8_t *q, const uint16_t *scale, const uint16_t *zero,
                     int64_t cols, void *dst);

#endif
