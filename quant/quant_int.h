/* quant private: the per-ISA kernels behind moe_gemm_kernel() and the vector
 * helpers. The _avx2 / _avx512 ones live in files compiled with those ISA
 * flags and may only be called after moe_isa_best() says the CPU has them;
 * builds with MOE_NO_SIMD do not contain them at all. */
#ifndef MOE_QUANT_INT_H
#define MOE_QUANT_INT_H

#include "quant/quant.h"

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
float moe_quant_vec_dot_f32_ref(const float *a, const float *b, int64_t n);
void moe_quant_vec_axpy_f32_ref(float *y, float a, const float *x, int64_t n);

/* GQ4 traits conversions (quant_gq.c): to_f32 and the round-to-nearest
 * quantiser with the clipping search; n % MOE_GQ_GROUP == 0 */
void moe_gq4_to_f32(const void *src, float *dst, int64_t n);
void moe_gq4_from_f32(const float *src, void *dst, int64_t n);

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
float moe_quant_vec_dot_f32_avx2(const float *a, const float *b, int64_t n);
void moe_quant_vec_axpy_f32_avx2(float *y, float a, const float *x, int64_t n);

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
float moe_quant_vec_dot_f32_avx512(const float *a, const float *b, int64_t n);
void moe_quant_vec_axpy_f32_avx512(float *y, float a, const float *x, int64_t n);
#endif

#endif
