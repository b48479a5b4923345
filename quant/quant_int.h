/* quant private: the per-ISA kernels behind moe_gemm_kernel() and the vector
 * helpers. The _avx2 / _avx512 ones live in files compiled with those ISA
 * flags and may only be called after moe_isa_best() says the CPU has them;
 * builds with MOE_NO_SIMD do not contain them at all. */
#ifndef MOE_QUANT_INT_H
#define MOE_QUANT_INT_H

#include <string.h>

#include "quant/quant.h"
#include "quant/quant_qmoe.h"

/* plain C, any x86-64 (and any other CPU) */
void moe_quant_gemm_f32_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                            const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_f16_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                            const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_bf16_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_q8_0_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_gq4_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                            const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_gq1_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                            const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_gq2_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                            const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_gq3_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                            const float *x, int64_t ldx, int n, float *y, int64_t ldy);
float moe_quant_vec_dot_f32_ref(const float *a, const float *b, int64_t n);
void moe_quant_vec_axpy_f32_ref(float *y, float a, const float *x, int64_t n);
/* QMoE (quant_qmoe.c): w from moe_qmoe_view (aux = struct moe_qmoe_side) */
void moe_quant_gemm_qmoe_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy);

/* ---- QMoE matrix layout, shared by the codec and the kernels ------------
 * Offsets follow quant_qmoe.h; view() has checked everything, so kernels
 * read through this without further checks. */
struct moe_qmoe_layout {
    uint32_t n_codes;
    float scale;
    const uint8_t *block_start; /* u32 [nb + 1], read with memcpy */
    const uint8_t *level;       /* [rows][2] */
    const uint16_t *code;       /* [n_codes] */
};

static inline size_t moe_qmoe_level_offset(int64_t rows)
{
    return 12 + 4 * ((size_t)(rows + MOE_QMOE_ROW_BLOCK - 1) / MOE_QMOE_ROW_BLOCK + 1);
}

static inline size_t moe_qmoe_code_offset(int64_t rows)
{
    return (moe_qmoe_level_offset(rows) + 2 * (size_t)rows + 3) & ~(size_t)3;
}

static inline void moe_qmoe_layout_get(const struct moe_weight *w, struct moe_qmoe_layout *L)
{
    const uint8_t *d = (const uint8_t *)w->data; /* cast: also included from C++ (CUDA) */
    memcpy(&L->n_codes, d + 4, 4);
    memcpy(&L->scale, d + 8, 4);
    L->block_start = d + 12;
    L->level = d + moe_qmoe_level_offset(w->rows);
    L->code = (const uint16_t *)(d + moe_qmoe_code_offset(w->rows));
}

static inline uint32_t moe_qmoe_block_start(const struct moe_qmoe_layout *L, int64_t b)
{
    uint32_t v;
    memcpy(&v, L->block_start + 4 * b, 4);
    return v;
}

/* index of the first codeword of row r0, walking from r0's block start */
static inline uint32_t moe_qmoe_row_seek(const struct moe_qmoe_layout *L,
                                         const struct moe_qmoe_side *s, int64_t cols, int64_t r0)
{
    int64_t b = r0 / MOE_QMOE_ROW_BLOCK;
    uint32_t idx = moe_qmoe_block_start(L, b);
    int64_t np = (cols + 1) / 2;
    for (int64_t r = b * MOE_QMOE_ROW_BLOCK; r < r0; r++)
        for (int64_t p = 0; p < np;)
            p += MOE_QMOE_SIDE_COUNT(s->e[L->code[idx++]][0]);
    return idx;
}

/* ---- MXFP4 (quant_mxfp4.c) ---------------------------------------------
 * A block's weights are moe_mxfp4_kv2[code] * moe_mxfp4_half_scale(e): the
 * E2M1 value doubled (an integer) times 2^(e - 128), as ggml forms them;
 * every kernel multiplies these two fp32 numbers, so all agree on every
 * weight. */
extern const float moe_mxfp4_kv2[16];
extern const uint32_t moe_mxfp4_half_scale_bits[256]; /* fp32 bits of 2^(e - 128) */

static inline float moe_mxfp4_half_scale(uint8_t e)
{
    float f;
    memcpy(&f, &moe_mxfp4_half_scale_bits[e], 4);
    return f;
}

void moe_mxfp4_to_f32(const void *src, float *dst, int64_t n);
void moe_mxfp4_from_f32(const float *src, void *dst, int64_t n); /* ggml's reference rule */
void moe_quant_gemm_mxfp4_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                              const float *x, int64_t ldx, int n, float *y, int64_t ldy);

/* GQ traits conversions (quant_gq.c): to_f32 and the round-to-nearest
 * quantiser with the clipping search (GQ1: the sign rule); n % MOE_GQ_GROUP
 * == 0 */
void moe_gq4_to_f32(const void *src, float *dst, int64_t n);
void moe_gq4_from_f32(const float *src, void *dst, int64_t n);
void moe_gq1_to_f32(const void *src, float *dst, int64_t n);
void moe_gq1_from_f32(const float *src, void *dst, int64_t n);
void moe_gq2_to_f32(const void *src, float *dst, int64_t n);
void moe_gq2_from_f32(const float *src, void *dst, int64_t n);
void moe_gq3_to_f32(const void *src, float *dst, int64_t n);
void moe_gq3_from_f32(const float *src, void *dst, int64_t n);

#ifndef MOE_NO_SIMD
/* AVX2 + FMA + F16C */
void moe_quant_gemm_f32_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_f16_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_bf16_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                              const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_q8_0_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                              const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_gq4_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_gq1_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_gq2_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_gq3_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy);
float moe_quant_vec_dot_f32_avx2(const float *a, const float *b, int64_t n);
void moe_quant_vec_axpy_f32_avx2(float *y, float a, const float *x, int64_t n);
void moe_quant_gemm_qmoe_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                              const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_mxfp4_avx2(const struct moe_weight *w, int64_t r0, int64_t r1,
                               const float *x, int64_t ldx, int n, float *y, int64_t ldy);

/* AVX-512 F/BW/VL/DQ (+ F16C) */
void moe_quant_gemm_f32_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                               const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_f16_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                               const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_bf16_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                                const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_q8_0_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                                const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_gq4_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                               const float *x, int64_t ldx, int n, float *y, int64_t ldy);
/* GQ4 with int8 activations (quant_gq4_vnni_avx512.c): false, having written
 * nothing, when the CPU lacks VNNI, x is not finite or memory runs out */
bool moe_quant_gemm_gq4_vnni(const struct moe_weight *w, int64_t r0, int64_t r1, const float *x,
                             int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_gq1_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                               const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_gq2_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                               const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_gq3_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                               const float *x, int64_t ldx, int n, float *y, int64_t ldy);
float moe_quant_vec_dot_f32_avx512(const float *a, const float *b, int64_t n);
void moe_quant_vec_axpy_f32_avx512(float *y, float a, const float *x, int64_t n);
void moe_quant_gemm_qmoe_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                                const float *x, int64_t ldx, int n, float *y, int64_t ldy);
void moe_quant_gemm_mxfp4_avx512(const struct moe_weight *w, int64_t r0, int64_t r1,
                                 const float *x, int64_t ldx, int n, float *y, int64_t ldy);
#endif

#endif
