/* Reference gemm kernels in plain C: the definition the fast kernels are
 * tested against, and what runs on CPUs without AVX2 (and in MOE_NO_SIMD
 * builds). One straight fp32 sum per output, columns in order; every weight
 * is converted exactly (f16, bf16 and d*q all fit in fp32). */
#include "common/common.h"
#include "quant/quant_int.h"

/* Each row is converted to fp32 in chunks on the stack, then dotted with
 * every token: the conversion is paid once per row, not once per token. The
 * running sum of output (t, r) is kept in y between chunks, which leaves the
 * order of additions exactly that of one loop over all columns. */
#define REF_CHUNK 256 /* a multiple of MOE_Q8_0_BLOCK and MOE_MXFP4_BLOCK */

typedef void (*row_to_f32_fn)(const uint8_t *row, int64_t c0, int64_t nc, float *dst);

static void row_f32(const uint8_t *row, int64_t c0, int64_t nc, float *dst)
{
    memcpy(dst, (const float *)row + c0, (size_t)nc * sizeof(float));
}

static void row_f16(const uint8_t *row, int64_t c0, int64_t nc, float *dst)
{
    const uint16_t *s = (const uint16_t *)row + c0;
    for (int64_t i = 0; i < nc; i++)
        dst[i] = moe_f16_to_f32(s[i]);
}

static void row_bf16(const uint8_t *row, int64_t c0, int64_t nc, float *dst)
{
    const uint16_t *s = (const uint16_t *)row + c0;
    for (int64_t i = 0; i < nc; i++)
        dst[i] = moe_bf16_to_f32(s[i]);
}

static void row_q8_0(const uint8_t *row, int64_t c0, int64_t nc, float *dst)
{
    const struct moe_block_q8_0 *b = (const struct moe_block_q8_0 *)row + c0 / MOE_Q8_0_BLOCK;
    for (int64_t i = 0; i < nc / MOE_Q8_0_BLOCK; i++) {
        float d = moe_f16_to_f32(b[i].d);
        for (int j = 0; j < MOE_Q8_0_BLOCK; j++)
            dst[i * MOE_Q8_0_BLOCK + j] = d * (float)b[i].q[j];
    }
}

static void row_mxfp4(const uint8_t *row, int64_t c0, int64_t nc, float *dst)
{
    moe_mxfp4_to_f32((const struct moe_block_mxfp4 *)row + c0 / MOE_MXFP4_BLOCK, dst, nc);
}

static void gemm_ref(row_to_f32_fn conv, const struct moe_weight *w, int64_t r0, int64_t r1,
                     const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    float wf[REF_CHUNK];
    const uint8_t *base = w->data;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = base + (size_t)r * w->row_bytes;
        for (int t = 0; t < n; t++)
            y[t * ldy + r] = 0.0f;
        for (int64_t c0 = 0; c0 < w->cols; c0 += REF_CHUNK) {
            int64_t nc = MOE_MIN((int64_t)REF_CHUNK, w->cols - c0);
            conv(row, c0, nc, wf);
            for (int t = 0; t < n; t++) {
                const float *xt = x + t * ldx + c0;
                float acc = y[t * ldy + r];
                for (int64_t c = 0; c < nc; c++)
                    acc += wf[c] * xt[c];
                y[t * ldy + r] = acc;
            }
        }
    }
}

void moe_quant_gemm_f32_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                            const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm_ref(row_f32, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_f16_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                            const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm_ref(row_f16, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_bf16_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm_ref(row_bf16, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_q8_0_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm_ref(row_q8_0, w, r0, r1, x, ldx, n, y, ldy);
}

void moe_quant_gemm_mxfp4_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                              const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    gemm_ref(row_mxfp4, w, r0, r1, x, ldx, n, y, ldy);
}

float moe_quant_vec_dot_f32_ref(const float *a, const float *b, int64_t n)
{
    float acc = 0.0f;
    for (int64_t i = 0; i < n; i++)
        acc += a[i] * b[i];
    return acc;
}

void moe_quant_vec_axpy_f32_ref(float *y, float a, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        y[i] += a * x[i];
}
