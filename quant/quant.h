/* quant: tensor element formats (one traits table) and the CPU kernels that
 * multiply them. Numeric ids follow ggml's and are stable: they are written
 * into files, never renumber them. */
#ifndef MOE_QUANT_H
#define MOE_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum moe_dtype {
    MOE_DTYPE_F32 = 0,
    MOE_DTYPE_F16 = 1,
    MOE_DTYPE_Q8_0 = 8,  /* blocks of 32: fp16 scale d, 32 x int8 q; w = d*q */
    MOE_DTYPE_BF16 = 30,
    MOE_DTYPE_MXFP4 = 39, /* OCP MX FP4: blocks of 32 E2M1 codes, E8M0 scale */
    /* moed's own formats (ids past ggml's range) */
    MOE_DTYPE_GQ1 = 101,  /* groups of 128: fp16 scale, fp16 zero, 16/32/48 */
    MOE_DTYPE_GQ2 = 102,  /* bytes of 1/2/3-bit codes; w = scale * (q - zero). */
    MOE_DTYPE_GQ3 = 103,  /* quant_gq.h */
    MOE_DTYPE_GQ4 = 104,  /* groups of 128: fp16 scale, fp16 zero, 64 bytes of
                           * nibbles; w = scale * (q - zero). quant_gq.h */
    MOE_DTYPE_QMOE = 120, /* ternary digits + dictionary code, rows of varying
                           * length. quant_qmoe.h */
};
/* how many formats the enum names: quant_types.c's table must have a row for
 * each (a compile-time check) */
#define MOE_DTYPE_N_FORMATS 10

#define MOE_Q8_0_BLOCK 32
struct moe_block_q8_0 {
    uint16_t d; /* fp16 */
    int8_t q[MOE_Q8_0_BLOCK];
};

/* MXFP4 (OCP microscaling, the format gpt-oss ships its experts in), ggml's
 * block_mxfp4 byte for byte. Value j (0..15) of a block is the low nibble of
 * qs[j], value j + 16 the high nibble. A nibble is an E2M1 code: bit 3 the
 * sign, bits 0-2 the magnitude 0, 0.5, 1, 1.5, 2, 3, 4, 6 (code 8, -0,
 * decodes to +0 as in ggml). The block's scale is 2^(e - 127) (E8M0); as in
 * ggml, e = 0 is 2^-127 (a subnormal fp32) and e = 255, NaN in the OCP spec,
 * is computed as 2^128 (ggml's validator refuses it in files; so does
 * moe_mxfp4_from_hf). w = E2M1(code) * 2^(e - 127), formed in fp32 exactly
 * (it overflows to inf only for e >= 253, which the quantiser never writes
 * for finite values). */
#define MOE_MXFP4_BLOCK 32
struct moe_block_mxfp4 {
    uint8_t e;      /* E8M0 scale */
    uint8_t qs[16]; /* value j: qs[j] & 15; value j + 16: qs[j] >> 4 */
};

/* The Hugging Face checkpoint layout of gpt-oss (`*_blocks` [..., rows,
 * cols/32, 16] and `*_scales` [..., rows, cols/32], both uint8) -> rows x
 * cols of moed MXFP4 blocks at dst (cols / 32 * 17 bytes a row). There value
 * 2j of a block is the LOW nibble of byte j and value 2j + 1 the high one; the
 * codes and scales are moved, never requantised, so dst decodes to exactly
 * what the checkpoint holds. cols must be a multiple of 32. -EINVAL (with the
 * message naming row and block) for a scale of 255, NaN in the OCP spec;
 * dst is then incomplete. */
int moe_mxfp4_from_hf(const uint8_t *blocks, const uint8_t *scales, int64_t rows, int64_t cols,
                      void *dst);

struct moe_weight;

struct moe_weight;
typedef void (*moe_gemm_fn)(const struct moe_weight *w, int64_t r0, int64_t r1,
                            const float *x, int64_t ldx, int n, float *y, int64_t ldy);

enum moe_isa { MOE_ISA_REF = 0, MOE_ISA_AVX2 = 1, MOE_ISA_AVX512 = 2, MOE_ISA_COUNT };

/* One row per element format (quant_types.c): its id, name, block shape,
 * element conversions and its gemm kernel per ISA (NULL: none on that ISA;
 * MOE_NO_SIMD builds have only the reference). Adding a format is one row
 * plus its kernels. */
struct moe_dtype_traits {
    enum moe_dtype dtype;
    const char *name;
    int block_size;     /* elements per block (1 for plain types) */
    size_t block_bytes; /* bytes per block */
    void (*to_f32)(const void *src, float *dst, int64_t n);       /* n % block_size == 0 */
    void (*from_f32)(const float *src, void *dst, int64_t n);     /* reference quantiser */
    /* Formats whose matrices are not rows of fixed-size blocks (QMoE) set
     * these; NULL for the others. view checks a stored matrix of nbytes
     * (structure, never trusting offsets) and fills *out; side is the
     * format's shared table (side_create's result) or NULL. */
    int (*view)(const void *data, size_t nbytes, int64_t rows, int64_t cols, const void *side,
                struct moe_weight *out);
    const char *side_name; /* the shared table's name in a pack, NULL if none */
    int (*side_create)(const void *blob, size_t nbytes, void **side);
    void (*side_free)(void *side);
    /* a whole matrix to fp32 where rows are not blocks (QMoE), else NULL */
    void (*matrix_to_f32)(const struct moe_weight *w, float *out);
    moe_gemm_fn gemm[MOE_ISA_COUNT];
};

/* NULL for an id moed does not know. */
const struct moe_dtype_traits *moe_dtype_traits(int dtype);
/* the i-th row of the table (i < MOE_DTYPE_N_FORMATS), for listing formats */
const struct moe_dtype_traits *moe_dtype_at(int i);
/* bits per weight of a fixed-size-block format (0 for QMoE's varying rows) */
double moe_dtype_bits(int dtype);
const char *moe_dtype_name(int dtype); /* "?" when unknown */
/* bytes of n elements; 0 if n is not a whole number of blocks or dtype unknown */
size_t moe_dtype_row_bytes(int dtype, int64_t n);

/* A 2-D weight matrix in any dtype: rows x cols, rows contiguous. Row r holds
 * the weights of output r (the Hugging Face [out, in] layout). */
struct moe_weight {
    enum moe_dtype dtype;
    int64_t rows, cols;
    size_t row_bytes;  /* bytes per row; the mean for formats with varying rows */
    const void *data;
    size_t nbytes;     /* whole matrix where rows vary in length (QMoE), else 0 */
    const void *aux;   /* the format's shared table (QMoE decode table), or NULL */
};

/* bytes the matrix occupies */
static inline size_t moe_weight_bytes(const struct moe_weight *w)
{
    return w->nbytes ? w->nbytes : (size_t)w->rows * w->row_bytes;
}

/* ---- kernels ------------------------------------------------------------
 * gemm: for r in [r0, r1) and t in [0, n):
 *     y[t*ldy + r] = sum_c W[r][c] * x[t*ldx + c]       (fp32 accumulation)
 * n = 1 is the decode GEMV; larger n is batched prefill, where a fast kernel
 * converts each stretch of weights once and applies it to every token. */
/* The kernel for dtype on isa, or NULL where there is none (the traits
 * table's gemm[isa]). */
moe_gemm_fn moe_gemm_kernel(enum moe_dtype dtype, enum moe_isa isa);
/* The best ISA this CPU supports (cpuid), lowered by MOE_ISA=ref|avx2|avx512
 * in the environment; builds with MOE_NO_SIMD always answer MOE_ISA_REF. */
enum moe_isa moe_isa_best(void);
const char *moe_isa_name(enum moe_isa isa);

/* fp32 vector helpers used by attention and norms (best ISA chosen inside) */
float moe_vec_dot_f32(const float *a, const float *b, int64_t n);
void moe_vec_axpy_f32(float *y, float a, const float *x, int64_t n); /* y += a*x */
/* y[t][i] += b[i] for each of n rows of dim (a bias; b NULL: nothing) */
void moe_vec_add_rows(float *y, const float *b, int32_t n, int64_t dim);

#endif
