/* QMoE kernels on CUDA (ALGORITHMS.md s.1): decode fused with the product.
 *
 * Both kernels give one warp a row. The warp reads the row's codewords 32
 * at a time (coalesced), each lane looks up one of them in the decode table
 * and a warp prefix sum of their pair counts gives every codeword's column;
 * then, codeword by codeword (its masks and column shuffled from the lane
 * that holds it), lanes 0..27 each take one digit.
 *  - gemv (batch 1, the original's kernel): x staged in shared memory when
 *    it fits (else read through the read-only cache); each lane adds x into
 *    S_lo or S_hi for its digit; y = lo*S_lo + hi*S_hi after a shuffle
 *    reduction, as the CPU reference does.
 *  - gemm (batched): the decoded weight (lo, hi or 0) of a lane is applied to
 *    every token of a tile of up to NT tokens (one fp32 accumulator each), so
 *    a codeword is decoded once per tile, not once per token.
 * view() has checked that no codeword crosses its row end and that an odd
 * width's padding digit is 0, so no lane reads x past the row. */
#include <cuda_runtime.h>
#include <errno.h>
#include <stdlib.h>

extern "C" {
#include "common/common.h"
#include "quant/quant_int.h"
#include "quant/quant_qmoe.h"
}
#include "backend/cuda/qmoe_cuda.h"

#define NT 8              /* tokens per tile of the batched kernel */
#define WARPS 8           /* warps per block */
#define SMEM_X_MAX 49152  /* bytes of x staged in shared memory (the default limit) */

struct moe_qmoe_cuda_side {
    uint2 *e; /* [65536]: lo mask | count << 28, hi mask */
};

struct moe_qmoe_cuda_matrix {
    int rows, cols;
    const uint2 *side;
    uint16_t *code;      /* [n_codes] */
    uint32_t *row_start; /* [rows + 1] */
    float2 *lohi;        /* [rows]: lo, hi decoded on the host (moe_qmoe_level_decode) */
};

static int cuda_fail(cudaError_t e, const char *what)
{
    return moe_err(-EIO, "qmoe cuda: %s: %s", what, cudaGetErrorString(e));
}

extern "C" int moe_qmoe_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky "no driver" error */
        return 0;
    }
    return n;
}

extern "C" int moe_qmoe_cuda_side_upload(const void *side, struct moe_qmoe_cuda_side **out)
{
    *out = NULL;
    struct moe_qmoe_cuda_side *s = (struct moe_qmoe_cuda_side *)calloc(1, sizeof(*s));
    if (!s)
        return moe_err(-ENOMEM, "out of memory");
    size_t bytes = sizeof(((const struct moe_qmoe_side *)side)->e); /* d stays on the host */
    cudaError_t e = cudaMalloc((void **)&s->e, bytes);
    if (e == cudaSuccess)
        e = cudaMemcpy(s->e, side, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        moe_qmoe_cuda_side_free(s);
        return cuda_fail(e, "decode table upload");
    }
    *out = s;
    return 0;
}

extern "C" void moe_qmoe_cuda_side_free(struct moe_qmoe_cuda_side *s)
{
    if (!s)
        return;
    cudaFree(s->e);
    free(s);
}

extern "C" int moe_qmoe_cuda_matrix_upload(const struct moe_weight *w,
                                           const struct moe_qmoe_cuda_side *side,
                                           struct moe_qmoe_cuda_matrix **out)
{
    *out = NULL;
    if (w->dtype != MOE_DTYPE_QMOE || !w->aux || w->rows > INT32_MAX || w->cols > INT32_MAX)
        return moe_err(-EINVAL, "qmoe cuda: not a viewed qmoe matrix");
    struct moe_qmoe_layout L;
    moe_qmoe_layout_get(w, &L);
    const struct moe_qmoe_side *hs = (const struct moe_qmoe_side *)w->aux;
    /* every row's first codeword: the codes were checked by view() */
    uint32_t *starts = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)(w->rows + 1));
    struct moe_qmoe_cuda_matrix *m =
        (struct moe_qmoe_cuda_matrix *)calloc(1, sizeof(struct moe_qmoe_cuda_matrix));
    if (!starts || !m) {
        free(starts);
        free(m);
        return moe_err(-ENOMEM, "out of memory");
    }
    int64_t np = (w->cols + 1) / 2;
    uint32_t idx = 0;
    for (int64_t r = 0; r < w->rows; r++) {
        starts[r] = idx;
        for (int64_t p = 0; p < np;)
            p += MOE_QMOE_SIDE_COUNT(hs->e[L.code[idx++]][0]);
    }
    starts[w->rows] = idx;
    float2 *lohi = (float2 *)malloc(sizeof(float2) * (size_t)w->rows);
    if (!lohi) {
        free(starts);
        free(m);
        return moe_err(-ENOMEM, "out of memory");
    }
    for (int64_t r = 0; r < w->rows; r++)
        lohi[r] = make_float2(-moe_qmoe_level_decode(L.scale, L.level[2 * r]),
                              moe_qmoe_level_decode(L.scale, L.level[2 * r + 1]));
    m->rows = (int)w->rows;
    m->cols = (int)w->cols;
    m->side = side->e;
    cudaError_t e;
    size_t code_bytes = 2 * (size_t)L.n_codes, start_bytes = 4 * (size_t)(w->rows + 1),
           lohi_bytes = sizeof(float2) * (size_t)w->rows;
    if ((e = cudaMalloc((void **)&m->code, code_bytes ? code_bytes : 2)) != cudaSuccess ||
        (e = cudaMalloc((void **)&m->row_start, start_bytes)) != cudaSuccess ||
        (e = cudaMalloc((void **)&m->lohi, lohi_bytes)) != cudaSuccess ||
        (e = cudaMemcpy(m->code, L.code, code_bytes, cudaMemcpyHostToDevice)) != cudaSuccess ||
        (e = cudaMemcpy(m->row_start, starts, start_bytes, cudaMemcpyHostToDevice)) !=
            cudaSuccess ||
        (e = cudaMemcpy(m->lohi, lohi, lohi_bytes, cudaMemcpyHostToDevice)) != cudaSuccess) {
        free(starts);
        free(lohi);
        moe_qmoe_cuda_matrix_free(m);
        return cuda_fail(e, "matrix upload");
    }
    free(starts);
    free(lohi);
    *out = m;
    return 0;
}

extern "C" void moe_qmoe_cuda_matrix_free(struct moe_qmoe_cuda_matrix *m)
{
    if (!m)
        return;
    cudaFree(m->code);
    cudaFree(m->row_start);
    cudaFree(m->lohi);
    free(m);
}

/* The warp's next (up to) 32 codewords of the row from codeword j0 (< end),
 * whose first starts at column p: lane i gets codeword j0+i's entry and its
 * column; returns the columns the batch covers. */
__device__ __forceinline__ int warp_fetch(const uint2 *__restrict__ side,
                                          const uint16_t *__restrict__ code, uint32_t j0,
                                          uint32_t end, int p, int lane, uint2 *e, int *col)
{
    uint32_t j = j0 + (uint32_t)lane;
    *e = j < end ? side[code[j]] : make_uint2(0u, 0u);
    int len = 2 * (int)(e->x >> 28), incl = len;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        int v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o)
            incl += v;
    }
    *col = p + incl - len;
    return __shfl_sync(0xffffffffu, incl, 31);
}

template <bool SMEM>
__global__ void __launch_bounds__(WARPS * 32)
    qmoe_gemv_kernel(const uint2 *__restrict__ side, const uint16_t *__restrict__ code,
                     const uint32_t *__restrict__ row_start, const float2 *__restrict__ lohi,
                     int rows, int cols, const float *__restrict__ x,
                     float *__restrict__ y)
{
    extern __shared__ float xs[];
    const float *xr = x;
    if (SMEM) {
        for (int i = threadIdx.x; i < cols; i += blockDim.x)
            xs[i] = x[i];
        __syncthreads();
        xr = xs;
    }
    int lane = threadIdx.x & 31;
    uint32_t bit = lane < 28 ? 1u << lane : 0u; /* lanes 28..31 take no digit */
    for (int r = blockIdx.x * WARPS + (threadIdx.x >> 5); r < rows; r += gridDim.x * WARPS) {
        uint32_t j0 = row_start[r], end = row_start[r + 1];
        float slo = 0.0f, shi = 0.0f;
        int p = 0;
        for (; j0 < end; j0 += 32) {
            uint2 e;
            int col;
            int covered = warp_fetch(side, code, j0, end, p, lane, &e, &col);
            int m = (int)min(32u, end - j0);
            for (int k = 0; k < m; k++) {
                uint32_t lm = __shfl_sync(0xffffffffu, e.x, k) & MOE_QMOE_SIDE_MASK;
                uint32_t hm = __shfl_sync(0xffffffffu, e.y, k);
                int c = __shfl_sync(0xffffffffu, col, k) + lane;
                if (lm & bit)
                    slo += SMEM ? xr[c] : __ldg(xr + c);
                else if (hm & bit)
                    shi += SMEM ? xr[c] : __ldg(xr + c);
            }
            p += covered;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            slo += __shfl_xor_sync(0xffffffffu, slo, o);
            shi += __shfl_xor_sync(0xffffffffu, shi, o);
        }
        if (lane == 0)
            y[r] = lohi[r].x * slo + lohi[r].y * shi;
    }
}

/* grid.y: token tiles of NT */
__global__ void __launch_bounds__(WARPS * 32)
    qmoe_gemm_kernel(const uint2 *__restrict__ side, const uint16_t *__restrict__ code,
                     const uint32_t *__restrict__ row_start, const float2 *__restrict__ lohi,
                     int rows, int cols, const float *__restrict__ x, int64_t ldx,
                     int n, float *__restrict__ y, int64_t ldy)
{
    int lane = threadIdx.x & 31;
    uint32_t bit = lane < 28 ? 1u << lane : 0u;
    int t0 = blockIdx.y * NT, T = min(NT, n - t0);
    const float *xt = x + (int64_t)t0 * ldx;
    for (int r = blockIdx.x * WARPS + (threadIdx.x >> 5); r < rows; r += gridDim.x * WARPS) {
        float lo = lohi[r].x, hi = lohi[r].y;
        uint32_t j0 = row_start[r], end = row_start[r + 1];
        float acc[NT];
#pragma unroll
        for (int t = 0; t < NT; t++)
            acc[t] = 0.0f;
        int p = 0;
        for (; j0 < end; j0 += 32) {
            uint2 e;
            int col;
            int covered = warp_fetch(side, code, j0, end, p, lane, &e, &col);
            int m = (int)min(32u, end - j0);
            for (int k = 0; k < m; k++) {
                uint32_t lm = __shfl_sync(0xffffffffu, e.x, k) & MOE_QMOE_SIDE_MASK;
                uint32_t hm = __shfl_sync(0xffffffffu, e.y, k);
                int c = __shfl_sync(0xffffffffu, col, k) + lane;
                if ((lm | hm) & bit) { /* decoded once, applied to the tile */
                    float wv = (lm & bit) ? lo : hi;
#pragma unroll
                    for (int t = 0; t < NT; t++)
                        if (t < T)
                            acc[t] = fmaf(wv, __ldg(xt + (int64_t)t * ldx + c), acc[t]);
                }
            }
            p += covered;
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
#pragma unroll
            for (int o = 16; o > 0; o >>= 1)
                acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
            if (lane == 0 && t < T)
                y[(int64_t)(t0 + t) * ldy + r] = acc[t];
        }
    }
}

static int grid_blocks(int rows)
{
    static int sms;
    if (!sms) {
        int dev = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
            sms = 80;
    }
    int need = (rows + WARPS - 1) / WARPS;
    return need < 4 * sms ? need : 4 * sms;
}

extern "C" int moe_qmoe_cuda_gemv(const struct moe_qmoe_cuda_matrix *m, const float *x, float *y,
                                  void *stream)
{
    cudaStream_t st = (cudaStream_t)stream;
    size_t smem = sizeof(float) * (size_t)m->cols;
    int blocks = grid_blocks(m->rows);
    if (smem <= SMEM_X_MAX)
        qmoe_gemv_kernel<true><<<blocks, WARPS * 32, smem, st>>>(
            m->side, m->code, m->row_start, m->lohi, m->rows, m->cols, x, y);
    else
        qmoe_gemv_kernel<false><<<blocks, WARPS * 32, 0, st>>>(
            m->side, m->code, m->row_start, m->lohi, m->rows, m->cols, x, y);
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? 0 : cuda_fail(e, "gemv launch");
}

extern "C" int moe_qmoe_cuda_gemm(const struct moe_qmoe_cuda_matrix *m, const float *x,
                                  int64_t ldx, int n, float *y, int64_t ldy, void *stream)
{
    if (n <= 0)
        return 0;
    cudaStream_t st = (cudaStream_t)stream;
    dim3 grid((unsigned)grid_blocks(m->rows), (unsigned)((n + NT - 1) / NT));
    qmoe_gemm_kernel<<<grid, WARPS * 32, 0, st>>>(m->side, m->code, m->row_start, m->lohi,
                                                   m->rows, m->cols, x, ldx, n, y, ldy);
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? 0 : cuda_fail(e, "gemm launch");
}
