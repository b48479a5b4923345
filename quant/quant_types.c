/* The dtype traits table: one row per element format moed can hold, with
 * plain C conversions to fp32 and the reference quantiser from fp32. */
#include <math.h>

#include "common/common.h"
#include "quant/quant.h"
#include "quant/quant_gq.h"
#include "quant/quant_int.h"
#include "quant/quant_qmoe.h"

static void f32_to_f32(const void *src, float *dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static void f32_from_f32(const float *src, void *dst, int64_t n)
{
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static void f16_to_f32(const void *src, float *dst, int64_t n)
{
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = moe_f16_to_f32(s[i]);
}

static void f16_from_f32(const float *src, void *dst, int64_t n)
{
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++)
        d[i] = moe_f32_to_f16(src[i]);
}

static void bf16_to_f32(const void *src, float *dst, int64_t n)
{
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = moe_bf16_to_f32(s[i]);
}

static void bf16_from_f32(const float *src, void *dst, int64_t n)
{
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++)
        d[i] = moe_f32_to_bf16(src[i]);
}

static void q8_0_to_f32(const void *src, float *dst, int64_t n)
{
    const struct moe_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / MOE_Q8_0_BLOCK; i++) {
        float d = moe_f16_to_f32(b[i].d);
        for (int j = 0; j < MOE_Q8_0_BLOCK; j++)
            dst[i * MOE_Q8_0_BLOCK + j] = d * (float)b[i].q[j]; /* exact in fp32 */
    }
}

/* The scale is rounded to fp16 first and q computed against the rounded
 * value, so w = d*q is what the kernels will see: |x - d*q| <= d/2 for every
 * element whose q was not clamped, and the clamp costs at most amax*2^-11. */
static void q8_0_from_f32(const float *src, void *dst, int64_t n)
{
    struct moe_block_q8_0 *b = dst;
    for (int64_t i = 0; i < n / MOE_Q8_0_BLOCK; i++) {
        const float *s = src + i * MOE_Q8_0_BLOCK;
        float amax = 0.0f;
        for (int j = 0; j < MOE_Q8_0_BLOCK; j++)
            amax = fmaxf(amax, fabsf(s[j]));
        float d = amax / 127.0f;
        if (d > 65504.0f)
            d = 65504.0f; /* largest finite fp16: clamp rather than store inf */
        b[i].d = moe_f32_to_f16(d);
        float dd = moe_f16_to_f32(b[i].d);
        float id = dd > 0.0f ? 1.0f / dd : 0.0f;
        for (int j = 0; j < MOE_Q8_0_BLOCK; j++) {
            float q = nearbyintf(s[j] * id);
            q = fminf(fmaxf(q, -127.0f), 127.0f);
            b[i].q[j] = (int8_t)q;
        }
    }
}

/* gemm kernels per ISA: MOE_NO_SIMD builds (the fuzzers) leave the
 * *_avx2.c / *_avx512.c files out, so only the reference is named there */
#ifdef MOE_NO_SIMD
#define KERNELS(f) {[MOE_ISA_REF] = moe_quant_gemm_##f##_ref}
#else
#define KERNELS(f)                                                                          \
    {[MOE_ISA_REF] = moe_quant_gemm_##f##_ref, [MOE_ISA_AVX2] = moe_quant_gemm_##f##_avx2,  \
     [MOE_ISA_AVX512] = moe_quant_gemm_##f##_avx512}
#endif

/* The formats: one row each (quant.h, struct moe_dtype_traits). */
static const struct moe_dtype_traits formats[] = {
    {.dtype = MOE_DTYPE_F32, .name = "f32", .block_size = 1, .block_bytes = 4,
     .to_f32 = f32_to_f32, .from_f32 = f32_from_f32, .gemm = KERNELS(f32)},
    {.dtype = MOE_DTYPE_F16, .name = "f16", .block_size = 1, .block_bytes = 2,
     .to_f32 = f16_to_f32, .from_f32 = f16_from_f32, .gemm = KERNELS(f16)},
    {.dtype = MOE_DTYPE_BF16, .name = "bf16", .block_size = 1, .block_bytes = 2,
     .to_f32 = bf16_to_f32, .from_f32 = bf16_from_f32, .gemm = KERNELS(bf16)},
    {.dtype = MOE_DTYPE_Q8_0, .name = "q8_0", .block_size = MOE_Q8_0_BLOCK,
     .block_bytes = sizeof(struct moe_block_q8_0), .to_f32 = q8_0_to_f32,
     .from_f32 = q8_0_from_f32, .gemm = KERNELS(q8_0)},
    {.dtype = MOE_DTYPE_MXFP4, .name = "mxfp4", .block_size = MOE_MXFP4_BLOCK,
     .block_bytes = sizeof(struct moe_block_mxfp4), .to_f32 = moe_mxfp4_to_f32,
     .from_f32 = moe_mxfp4_from_f32, .gemm = KERNELS(mxfp4)},
    {.dtype = MOE_DTYPE_GQ1, .name = "gq1", .block_size = MOE_GQ_GROUP,
     .block_bytes = MOE_GQ_GROUP_BYTES(1), .to_f32 = moe_gq1_to_f32,
     .from_f32 = moe_gq1_from_f32, .gemm = KERNELS(gq1)},
    {.dtype = MOE_DTYPE_GQ2, .name = "gq2", .block_size = MOE_GQ_GROUP,
     .block_bytes = MOE_GQ_GROUP_BYTES(2), .to_f32 = moe_gq2_to_f32,
     .from_f32 = moe_gq2_from_f32, .gemm = KERNELS(gq2)},
    {.dtype = MOE_DTYPE_GQ3, .name = "gq3", .block_size = MOE_GQ_GROUP,
     .block_bytes = MOE_GQ_GROUP_BYTES(3), .to_f32 = moe_gq3_to_f32,
     .from_f32 = moe_gq3_from_f32, .gemm = KERNELS(gq3)},
    {.dtype = MOE_DTYPE_GQ4, .name = "gq4", .block_size = MOE_GQ_GROUP,
     .block_bytes = MOE_GQ4_GROUP_BYTES, .to_f32 = moe_gq4_to_f32,
     .from_f32 = moe_gq4_from_f32, .gemm = KERNELS(gq4)},
    /* rows of varying length: no fixed row bytes (block_bytes 0 makes
     * moe_dtype_row_bytes answer 0, so the dense binders refuse it), no
     * element conversions; matrices go through view() */
    {.dtype = MOE_DTYPE_QMOE, .name = "qmoe", .block_size = 1, .block_bytes = 0,
     .view = moe_qmoe_view, .side_name = "qmoe.decode_table",
     .side_create = moe_qmoe_side_create, .side_free = moe_qmoe_side_free,
     .matrix_to_f32 = moe_qmoe_matrix_to_f32, .gemm = KERNELS(qmoe)},
};
_Static_assert(MOE_ARRAY_SIZE(formats) == MOE_DTYPE_N_FORMATS,
               "every enum moe_dtype format has its row in formats[]");
_Static_assert(sizeof(struct moe_block_q8_0) == 34, "q8_0 block is 34 bytes on disk");

const struct moe_dtype_traits *moe_dtype_traits(int dtype)
{
    for (size_t i = 0; i < MOE_ARRAY_SIZE(formats); i++)
        if ((int)formats[i].dtype == dtype)
            return &formats[i];
    return NULL;
}

const struct moe_dtype_traits *moe_dtype_at(int i)
{
    return i >= 0 && i < (int)MOE_ARRAY_SIZE(formats) ? &formats[i] : NULL;
}

double moe_dtype_bits(int dtype)
{
    const struct moe_dtype_traits *t = moe_dtype_traits(dtype);
    return t && t->block_bytes ? 8.0 * (double)t->block_bytes / t->block_size : 0.0;
}

const char *moe_dtype_name(int dtype)
{
    const struct moe_dtype_traits *t = moe_dtype_traits(dtype);
    return t ? t->name : "?";
}

size_t moe_dtype_row_bytes(int dtype, int64_t n)
{
    const struct moe_dtype_traits *t = moe_dtype_traits(dtype);
    if (!t || n < 0 || !t->block_bytes || n % t->block_size)
        return 0;
    return (size_t)(n / t->block_size) * t->block_bytes;
}
