/* QMoE CUDA kernels against the CPU reference: random ternary matrices from
 * the C encoder (odd widths, odd row counts, several sparsities), the gemv
 * and the batched gemm (n = 1, 2, 5, 16, 33, strided), every output within
 * 1e-5 of sum |w||x|. Exits 77 ("SKIP: no CUDA device") where there is no
 * device, which make check counts as a pass. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "common/common.h"
#include "quant/quant_int.h"
#include "quant/quant_qmoe.h"
}
#include "backend/cuda/qmoe_cuda.h"

/* ASan (SANITIZE builds) and the CUDA driver: STYLE.md */
extern "C" const char *__asan_default_options(void)
{
    return "protect_shadow_gap=0";
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double rndu(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

static int failures;

#define CK(call)                                                                              \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess) {                                                              \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                     \
                    cudaGetErrorString(e_));                                                  \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)

static void check_one(const struct moe_qmoe_encoder *enc, const void *side,
                      const struct moe_qmoe_cuda_side *dside, int64_t rows, int64_t cols,
                      double p0)
{
    uint8_t *d = (uint8_t *)malloc((size_t)(rows * cols)), *lev = (uint8_t *)malloc(2 * rows);
    for (int64_t i = 0; i < rows * cols; i++) {
        double u = rndu();
        d[i] = u < p0 ? 0 : u < p0 + (1 - p0) / 2 ? 1 : 2;
    }
    for (int64_t i = 0; i < 2 * rows; i++)
        lev[i] = (uint8_t)(rndu() * 256);
    size_t cap = moe_qmoe_matrix_bound(rows, cols);
    void *buf = malloc(cap);
    size_t nb = moe_qmoe_matrix_encode(enc, d, lev, 0.37f, rows, cols, buf, cap);
    struct moe_weight w;
    if (!nb || moe_qmoe_view(buf, nb, rows, cols, side, &w) < 0) {
        fprintf(stderr, "encode/view %lldx%lld: %s\n", (long long)rows, (long long)cols,
                moe_err_msg());
        exit(1);
    }
    float *wf = (float *)malloc(sizeof(float) * (size_t)(rows * cols));
    moe_qmoe_matrix_to_f32(&w, wf);
    struct moe_qmoe_cuda_matrix *dm;
    if (moe_qmoe_cuda_matrix_upload(&w, dside, &dm) < 0) {
        fprintf(stderr, "upload: %s\n", moe_err_msg());
        exit(1);
    }

    static const int ns[] = {1, 2, 5, 16, 33};
    for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++) {
        int n = ns[ni];
        for (int strided = 0; strided < 2; strided++) {
            int64_t ldx = cols + (strided ? 5 : 0), ldy = rows + (strided ? 3 : 0);
            float *x = (float *)malloc(sizeof(float) * (size_t)(ldx * n));
            float *y0 = (float *)malloc(sizeof(float) * (size_t)(ldy * n));
            float *y1 = (float *)malloc(sizeof(float) * (size_t)(ldy * n));
            for (int64_t i = 0; i < ldx * n; i++)
                x[i] = (float)(2 * rndu() - 1);
            moe_quant_gemm_qmoe_ref(&w, 0, rows, x, ldx, n, y0, ldy);
            float *dx, *dy;
            CK(cudaMalloc((void **)&dx, sizeof(float) * (size_t)(ldx * n)));
            CK(cudaMalloc((void **)&dy, sizeof(float) * (size_t)(ldy * n)));
            CK(cudaMemcpy(dx, x, sizeof(float) * (size_t)(ldx * n), cudaMemcpyHostToDevice));
            for (int kernel = 0; kernel < 2; kernel++) {
                if (kernel == 0 && n != 1)
                    continue; /* the gemv is batch 1 */
                CK(cudaMemset(dy, 0xff, sizeof(float) * (size_t)(ldy * n)));
                int rc = kernel == 0 ? moe_qmoe_cuda_gemv(dm, dx, dy, NULL)
                                     : moe_qmoe_cuda_gemm(dm, dx, ldx, n, dy, ldy, NULL);
                if (rc < 0) {
                    fprintf(stderr, "launch: %s\n", moe_err_msg());
                    exit(1);
                }
                CK(cudaDeviceSynchronize());
                CK(cudaMemcpy(y1, dy, sizeof(float) * (size_t)(ldy * n), cudaMemcpyDeviceToHost));
                int bad = 0;
                for (int t = 0; t < n; t++)
                    for (int64_t r = 0; r < rows; r++) {
                        double mag = 0;
                        for (int64_t c = 0; c < cols; c++)
                            mag += fabs((double)wf[r * cols + c] * x[t * ldx + c]);
                        float a = y0[t * ldy + r], b = y1[t * ldy + r];
                        if (!(fabs((double)a - (double)b) <= 1e-5 * mag + 1e-30) && bad++ < 3)
                            fprintf(stderr,
                                    "FAIL %s %lldx%lld p0=%.2f n=%d ldx=%lld t=%d r=%lld: %.9g vs "
                                    "ref %.9g\n",
                                    kernel ? "gemm" : "gemv", (long long)rows, (long long)cols,
                                    p0, n, (long long)ldx, t, (long long)r, (double)b, (double)a);
                    }
                failures += bad;
            }
            CK(cudaFree(dx));
            CK(cudaFree(dy));
            free(x);
            free(y0);
            free(y1);
        }
    }
    moe_qmoe_cuda_matrix_free(dm);
    free(wf);
    free(buf);
    free(d);
    free(lev);
}

int main(void)
{
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    uint64_t *table = (uint64_t *)malloc((size_t)MOE_QMOE_DICT_SIZE * 8);
    moe_qmoe_dict_build(MOE_QMOE_P_ZERO, table);
    void *side;
    struct moe_qmoe_encoder *enc;
    struct moe_qmoe_cuda_side *dside;
    if (moe_qmoe_side_create(table, (size_t)MOE_QMOE_DICT_SIZE * 8, &side) < 0 ||
        moe_qmoe_encoder_create(table, &enc) < 0 || moe_qmoe_cuda_side_upload(side, &dside) < 0) {
        fprintf(stderr, "setup: %s\n", moe_err_msg());
        return 1;
    }
    static const int64_t shapes[][2] = {{1, 1},   {5, 3},    {16, 27},  {17, 29},
                                        {37, 255}, {33, 257}, {70, 1023}, {300, 2048},
                                        {9, 13000}};
    static const double p0s[] = {0.5, 0.85, 0.99};
    int cases = 0;
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
        for (size_t p = 0; p < sizeof(p0s) / sizeof(p0s[0]); p++, cases++)
            check_one(enc, side, dside, shapes[s][0], shapes[s][1], p0s[p]);
    moe_qmoe_cuda_side_free(dside);
    moe_qmoe_encoder_free(enc);
    moe_qmoe_side_free(side);
    free(table);
    if (failures) {
        printf("FAIL: %d outputs differ from the reference\n", failures);
        return 1;
    }
    printf("PASS: %d matrices, gemv and gemm match the reference\n", cases);
    return 0;
}
