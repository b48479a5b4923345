/* QMoE matrices on a CUDA device: a C API over backend/cuda/qmoe_cuda.cu,
 * with no CUDA header in sight (STYLE.md), so C code can hold the handles.
 *
 * Upload the runtime decode table once (struct moe_qmoe_side, 512 KiB),
 * then each matrix moe_qmoe_view() accepted. Uploading scans the codes once
 * on the host for every row's first codeword (rows + 1 u32, device only:
 * the stored format keeps one start per 16 rows), so a warp can start at
 * its row directly. x and y are device pointers; stream is a cudaStream_t
 * or NULL for the default stream. Functions return 0 or a negative errno
 * with a moe_err message (-ENODEV: no device, -EIO: a CUDA error). */
#ifndef MOE_QMOE_CUDA_H
#define MOE_QMOE_CUDA_H

#include <stdint.h>

#include "quant/quant.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_qmoe_cuda_side;
struct moe_qmoe_cuda_matrix;

/* CUDA devices visible (0 when none, or no driver) */
int moe_qmoe_cuda_device_count(void);

int moe_qmoe_cuda_side_upload(const void *side, struct moe_qmoe_cuda_side **out);
void moe_qmoe_cuda_side_free(struct moe_qmoe_cuda_side *s);

/* w: from moe_qmoe_view (its aux is the host side table); side must outlive m */
int moe_qmoe_cuda_matrix_upload(const struct moe_weight *w, const struct moe_qmoe_cuda_side *side,
                                struct moe_qmoe_cuda_matrix **out);
void moe_qmoe_cuda_matrix_free(struct moe_qmoe_cuda_matrix *m);

/* y[r] = W[r] . x, all rows: the reference-style kernel (batch 1), one warp
 * per row, lanes 0..27 one digit each of the current codeword */
int moe_qmoe_cuda_gemv(const struct moe_qmoe_cuda_matrix *m, const float *x, float *y,
                       void *stream);
/* y[t*ldy + r] = W[r] . x[t*ldx ...], t < n: each codeword is decoded once
 * and applied to a tile of up to 8 tokens */
int moe_qmoe_cuda_gemm(const struct moe_qmoe_cuda_matrix *m, const float *x, int64_t ldx, int n,
                       float *y, int64_t ldy, void *stream);

#ifdef __cplusplus
}
#endif

#endif
