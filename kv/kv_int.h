/* kv internals: the unit layouts and the attention kernels' table.
 *
 * Quantised codes are "plane packed" so SIMD code unpacks 8 (or 16) of them
 * with one widening load and a shift: a row of n codes of b bits takes
 * n*b/8 bytes; byte j holds the codes of elements j + i*(n*b/8) at bits
 * i*b, for i = 0 .. 8/b - 1.
 *
 * KIVI unit, per kv head (one after the other):
 *   K, b < 16:  codes [Dk][G*kb/8] (channel-major: a channel's G tokens in
 *               one row), then scale[Dk], min[Dk] as fp16
 *   K, 16:      fp16 [G][Dk]
 *   V, b < 16:  codes [G][Dv*vb/8] (token-major; each group of Gv channels
 *               a plane-packed row of its own), then [G][Dv/Gv] x (scale, min) fp16
 *   V, 16:      fp16 [G][Dv]
 * Window unit: tpu token slots of [n_kv_heads] x (K fp16 [Dk], V fp16 [Dv]).
 * Direct unit, per kv head: K [G][Dk] then V [G][Dv], fp16 or fp32.
 * With v_in_k (MLA) no V part exists anywhere: values are read from the keys. */
#ifndef MOE_KV_INT_H
#define MOE_KV_INT_H

#include <stddef.h>
#include <stdint.h>

#define MOE_KV_MAX_G 128
#define MOE_KV_MAX_D 1024

/* Kernels one ISA offers. */
struct moe_kv_ops {
    /* acc[t] = sum_c q[c] * (scale[c]*code[c][t] + min[c]) for the G tokens
     * of one quantised key block (one head). */
    void (*k_scores)(int bits, int G, int D, const uint8_t *codes, const uint16_t *scale,
                     const uint16_t *min, const float *q, float *acc);
    /* out[c] += sum_{t<cnt} p[t] * (s[t][g]*code[t][c] + m[t][g]), g = c/Gv. */
    void (*v_accum)(int bits, int Gv, int D, const uint8_t *codes, const uint16_t *sm,
                    const float *p, int cnt, float *out);
    /* Keys used as values (MLA's latent, v_in_k): for c < Dv,
     * out[c] += sum_{t<cnt} p[t] * (scale[c]*code[c][t] + min[c]) over one
     * quantised key block (layout as k_scores reads it). */
    void (*k_accum)(int bits, int G, int Dv, const uint8_t *codes, const uint16_t *scale,
                    const uint16_t *min, const float *p, int cnt, float *out);
    float (*dot_f16)(const float *q, const uint16_t *k, int D);
    void (*axpy_f16)(float *out, float a, const uint16_t *v, int D);
};

extern const struct moe_kv_ops moe_kv_ops_ref;
extern const struct moe_kv_ops moe_kv_ops_avx2;
extern const struct moe_kv_ops moe_kv_ops_avx512;

/* Quantise n values x (stride 1) into plane-packed codes of bits bits,
 * asymmetric: returns scale and min (already rounded to fp16). Reference
 * and used by the store path. */
void moe_kv_quant_row(const float *x, int n, int bits, uint8_t *codes, uint16_t *scale,
                      uint16_t *min);
/* code of element i of a plane-packed row of n codes */
static inline unsigned moe_kv_code(const uint8_t *row, int n, int bits, int i)
{
    int per = 8 / bits, nb = n / per;
    return (row[i % nb] >> ((i / nb) * bits)) & ((1u << bits) - 1);
}

#endif
