/* GPTQ (Frantar et al.), format-agnostic: the caller's callbacks pick the
 * grid, this file spreads each column's rounding error over the columns not
 * yet quantised (ALGORITHMS.md s.1, s.2).
 *
 * The standard recipe, in fp32:
 *   H <- 2/n H; dead columns (diag 0) get diag 1 and weight 0; diag += damp *
 *   mean(diag); U = the upper Cholesky factor of H^-1. Column c's error
 *   e = (w_c - q_c) / U[c][c] updates columns j > c by -U[c][j] e: at once
 *   inside the current block of 128 columns, lazily (one matrix product) for
 *   the columns past the block.
 * U without forming H^-1: with J the order reversal, J H J = C C^T (lower C)
 * gives H = V V^T with V = J C J upper, so H^-1 = (V^-1)^T V^-1 and
 * U = V^-1 = J C^-1 J: one Cholesky and one triangular inverse.
 *
 * Every O(n^3) step (Hessian, Cholesky trailing updates, triangular inverse,
 * GPTQ's lazy updates) is a product C (+/-)= A . B^T done by the F32 gemm
 * kernel on the pool (prod() below); what is left is O(n^2 * 128). */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "backend/backend.h"
#include "common/common.h"
#include "quant/quant_gptq.h"
#include "quant/quant_int.h"

#define BLOCK 128 /* GPTQ's column block, also the Cholesky/inverse block */
#define JC 64     /* rows of C per product task */
#define HS 512    /* samples per Hessian pass */

/* ---- C[j][r] += sign * sum_k A[j][k] B[r][k] ------------------------------
 * j in [0, nj), r in [0, nr) (r <= j only when tri); A and B rows of K
 * floats, lda / ldb apart. Tasks of JC rows of C taken from a shared counter,
 * biggest first when tri. */
struct prod_task {
    moe_gemm_fn fn;
    const float *A, *B;
    int64_t lda, ldb, K;
    float *C;
    int64_t ldc, nj, nr;
    bool tri;
    float sign;
    float *bufs; /* JC x nr per thread */
    int64_t n_chunks;
    int64_t next;
};

static void prod_part(void *arg, int ith, int nth)
{
    struct prod_task *t = arg;
    float *buf = t->bufs + (size_t)ith * JC * (size_t)t->nr;
    struct moe_weight w = {.dtype = MOE_DTYPE_F32, .rows = t->nr, .cols = t->K,
                           .row_bytes = (size_t)t->ldb * sizeof(float), .data = t->B};
    for (;;) {
        int64_t idx = __atomic_fetch_add(&t->next, 1, __ATOMIC_RELAXED);
        if (idx >= t->n_chunks)
            break;
        int64_t j0 = (t->tri ? t->n_chunks - 1 - idx : idx) * JC;
        int jn = (int)MOE_MIN((int64_t)JC, t->nj - j0);
        int64_t nr = t->tri ? MOE_MIN(t->nr, j0 + jn) : t->nr;
        t->fn(&w, 0, nr, t->A + j0 * t->lda, t->lda, jn, buf, nr);
        for (int i = 0; i < jn; i++) {
            float *c = t->C + (j0 + i) * t->ldc;
            const float *b = buf + (size_t)i * nr;
            int64_t lim = t->tri ? j0 + i + 1 : nr;
            if (t->sign > 0)
                for (int64_t r = 0; r < lim; r++)
                    c[r] += b[r];
            else
                for (int64_t r = 0; r < lim; r++)
                    c[r] -= b[r];
        }
    }
}

/* bufs: JC x nr floats per pool thread */
static void prod(struct moe_pool *pool, float *bufs, const float *A, int64_t lda,
                 const float *B, int64_t ldb, int64_t K, float *C, int64_t ldc, int64_t nj,
                 int64_t nr, bool tri, float sign)
{
    if (nj <= 0 || nr <= 0 || K <= 0)
        return;
    moe_gemm_fn fn = moe_gemm_kernel(MOE_DTYPE_F32, moe_isa_best());
    if (!fn)
        fn = moe_gemm_kernel(MOE_DTYPE_F32, MOE_ISA_REF);
    struct prod_task t = {.fn = fn, .A = A, .B = B, .lda = lda, .ldb = ldb, .K = K, .C = C,
                          .ldc = ldc, .nj = nj, .nr = nr, .tri = tri, .sign = sign,
                          .bufs = bufs, .n_chunks = (nj + JC - 1) / JC};
    if (pool)
        moe_pool_run(pool, prod_part, &t);
    else
        prod_part(&t, 0, 1);
}

static float *prod_bufs(struct moe_pool *pool, int64_t nr)
{
    int nth = pool ? moe_pool_threads(pool) : 1;
    return malloc(sizeof(float) * JC * (size_t)nr * (size_t)nth);
}

/* ---- Hessian --------------------------------------------------------------- */

void moe_gptq_hessian_add(struct moe_pool *pool, float *H, const float *x, int64_t n,
                          int64_t cols)
{
    if (n <= 0 || cols <= 0)
        return;
    int64_t S = MOE_MIN(n, (int64_t)HS);
    float *xt = malloc(sizeof(float) * (size_t)(cols * S));
    float *bufs = prod_bufs(pool, cols);
    if (!xt || !bufs) { /* no memory for the fast path: the plain sum */
        for (int64_t s = 0; s < n; s++)
            for (int64_t i = 0; i < cols; i++)
                moe_vec_axpy_f32(H + i * cols, x[s * cols + i], x + s * cols, i + 1);
    } else {
        for (int64_t s0 = 0; s0 < n; s0 += S) {
            int64_t sn = MOE_MIN(S, n - s0);
            /* xt[cols][sn]: each column's samples contiguous */
            for (int64_t s = 0; s < sn; s++)
                for (int64_t i = 0; i < cols; i++)
                    xt[i * sn + s] = x[(s0 + s) * cols + i];
            /* lower triangle: H[j][r] += sum_s x[s][j] x[s][r], r <= j */
            prod(pool, bufs, xt, sn, xt, sn, sn, H, cols, cols, cols, true, 1.0f);
        }
    }
    for (int64_t j = 0; j < cols; j++) /* mirror to the upper triangle */
        for (int64_t r = 0; r < j; r++)
            H[r * cols + j] = H[j * cols + r];
    free(xt);
    free(bufs);
}

/* ---- Cholesky and triangular inverse --------------------------------------- */

struct panel_task {
    float *A;
    int64_t n, k0, k1, next;
};

/* rows i of the panel: A[i][k0:k1] <- A[i][k0:k1] L11^-T */
static void panel_part(void *arg, int ith, int nth)
{
    struct panel_task *t = arg;
    int64_t n = t->n;
    for (;;) {
        int64_t i = __atomic_fetch_add(&t->next, 16, __ATOMIC_RELAXED);
        if (i >= n)
            break;
        for (int64_t ie = MOE_MIN(i + 16, n); i < ie; i++) {
            float *ai = t->A + i * n;
            for (int64_t j = t->k0; j < t->k1; j++) {
                const float *aj = t->A + j * n;
                float s = ai[j] - moe_vec_dot_f32(ai + t->k0, aj + t->k0, j - t->k0);
                ai[j] = s / aj[j];
            }
        }
    }
}

/* In place: the lower triangle of A [n][n] becomes L with A = L L^T (the
 * upper triangle is left as it was). -EDOM when A is not positive definite. */
static int cholesky(struct moe_pool *pool, float *A, int64_t n, float *bufs)
{
    for (int64_t k0 = 0; k0 < n; k0 += BLOCK) {
        int64_t k1 = MOE_MIN(k0 + BLOCK, n);
        for (int64_t j = k0; j < k1; j++) {
            float *aj = A + j * n;
            float d = aj[j] - moe_vec_dot_f32(aj + k0, aj + k0, j - k0);
            if (!(d > 0.0f) || !isfinite(d))
                return -EDOM;
            aj[j] = sqrtf(d);
            for (int64_t i = j + 1; i < k1; i++) {
                float *ai = A + i * n;
                ai[j] = (ai[j] - moe_vec_dot_f32(ai + k0, aj + k0, j - k0)) / aj[j];
            }
        }
        if (k1 == n)
            break;
        struct panel_task pt = {.A = A, .n = n, .k0 = k0, .k1 = k1, .next = k1};
        if (pool)
            moe_pool_run(pool, panel_part, &pt);
        else
            panel_part(&pt, 0, 1);
        /* A22 -= L21 L21^T, lower triangle */
        prod(pool, bufs, A + k1 * n + k0, n, A + k1 * n + k0, n, k1 - k0, A + k1 * n + k1, n,
             n - k1, n - k1, true, -1.0f);
    }
    return 0;
}

/* X = L^-1 (lower; X's upper triangle zero) and XT = X^T, L lower [n][n].
 * Block row [i0, i1): X[i0:i1][0:i0] = -Xd (L[i0:i1][0:i0] X[0:i0][0:i0]),
 * Xd the inverse of the diagonal block; the product runs on the pool
 * against XT. P: BLOCK x n scratch. */
static void tri_inverse(struct moe_pool *pool, const float *L, int64_t n, float *X, float *XT,
                        float *P, float *bufs)
{
    memset(X, 0, sizeof(float) * (size_t)(n * n));
    memset(XT, 0, sizeof(float) * (size_t)(n * n));
    for (int64_t i0 = 0; i0 < n; i0 += BLOCK) {
        int64_t i1 = MOE_MIN(i0 + BLOCK, n), ib = i1 - i0;
        /* diagonal block, column by column: X[a][b] for b <= a in the block */
        for (int64_t a = i0; a < i1; a++) {
            const float *la = L + a * n;
            X[a * n + a] = 1.0f / la[a];
            for (int64_t b = i0; b < a; b++) {
                float s = 0.0f;
                for (int64_t k = b; k < a; k++)
                    s += la[k] * X[k * n + b];
                X[a * n + b] = -s / la[a];
            }
        }
        if (i0 > 0) {
            /* P[a][col] = sum_{k < i0} L[a][k] X[k][col] */
            memset(P, 0, sizeof(float) * (size_t)(ib * i0));
            prod(pool, bufs, L + i0 * n, n, XT, n, i0, P, i0, ib, i0, false, 1.0f);
            /* X[a][0:i0] = -sum_{b <= a} Xd[a][b] P[b][:] */
            for (int64_t a = i0; a < i1; a++) {
                float *xa = X + a * n;
                for (int64_t b = i0; b <= a; b++)
                    moe_vec_axpy_f32(xa, -X[a * n + b], P + (b - i0) * i0, i0);
            }
        }
        for (int64_t a = i0; a < i1; a++)
            for (int64_t c = 0; c <= a; c++)
                XT[c * n + a] = X[a * n + c];
    }
}

/* U [n][n] (upper) with U^T U = H^-1 and UT = U^T, from the damped H [n][n].
 * All three buffers n x n; H is destroyed. -EDOM when H is not positive
 * definite. */
static int inverse_factor(struct moe_pool *pool, float *H, int64_t n, float *U, float *UT,
                          float *P, float *bufs)
{
    /* H <- J H J in place (reverse rows and columns) */
    for (int64_t i = 0; i < n * n / 2; i++) {
        float tmp = H[i];
        H[i] = H[n * n - 1 - i];
        H[n * n - 1 - i] = tmp;
    }
    int rc = cholesky(pool, H, n, bufs);
    if (rc)
        return rc;
    /* X = C^-1 into U, X^T into UT */
    tri_inverse(pool, H, n, U, UT, P, bufs);
    /* U = J X J, UT = J X^T J: the same reversal, in place */
    for (int64_t i = 0; i < n * n / 2; i++) {
        float tmp = U[i];
        U[i] = U[n * n - 1 - i];
        U[n * n - 1 - i] = tmp;
        tmp = UT[i];
        UT[i] = UT[n * n - 1 - i];
        UT[n * n - 1 - i] = tmp;
    }
    return 0;
}

/* ---- GPTQ ---------------------------------------------------------------- */

/* plain rounding of Wt [cols][rows], column by column */
static void round_plain(float *Wt, float *q, int64_t rows, int64_t cols, int64_t group,
                        const struct moe_gptq_ops *ops)
{
    for (int64_t c = 0; c < cols; c++) {
        if (group > 0 && c % group == 0 && ops->group_begin)
            ops->group_begin(ops->ctx, Wt, rows, c, MOE_MIN(c + group, cols));
        ops->quant_col(ops->ctx, c, Wt + c * rows, q, rows);
        memcpy(Wt + c * rows, q, sizeof(float) * (size_t)rows);
    }
}

static void transpose(const float *src, int64_t rows, int64_t cols, float *dst)
{
    /* dst[c][r] = src[r][c], in tiles that stay in L1 */
    for (int64_t r0 = 0; r0 < rows; r0 += 32)
        for (int64_t c0 = 0; c0 < cols; c0 += 32)
            for (int64_t r = r0; r < MOE_MIN(r0 + 32, rows); r++)
                for (int64_t c = c0; c < MOE_MIN(c0 + 32, cols); c++)
                    dst[c * rows + r] = src[r * cols + c];
}

int moe_gptq_quantize(struct moe_pool *pool, float *W, int64_t rows, int64_t cols,
                      const float *H, int64_t n_samples, float damp, int64_t group,
                      const struct moe_gptq_ops *ops)
{
    if (rows <= 0 || cols <= 0)
        return 0;
    int ret = -ENOMEM;
    int64_t nn = cols * cols;
    float *Wt = malloc(sizeof(float) * (size_t)(rows * cols));
    float *q = malloc(sizeof(float) * (size_t)rows);
    float *Hs = NULL, *U = NULL, *UT = NULL, *P = NULL, *bufs = NULL, *err = NULL, *errT = NULL;
    if (!Wt || !q)
        goto out;
    transpose(W, rows, cols, Wt);

    if (!H) {
        round_plain(Wt, q, rows, cols, group, ops);
        ret = 0;
        goto done;
    }

    Hs = malloc(sizeof(float) * (size_t)nn);
    U = malloc(sizeof(float) * (size_t)nn);
    UT = malloc(sizeof(float) * (size_t)nn);
    P = malloc(sizeof(float) * (size_t)(BLOCK * cols));
    bufs = prod_bufs(pool, MOE_MAX(rows, cols));
    err = malloc(sizeof(float) * (size_t)(BLOCK * rows));
    errT = malloc(sizeof(float) * (size_t)(BLOCK * rows));
    if (!Hs || !U || !UT || !P || !bufs || !err || !errT)
        goto out;

    float scale = 2.0f / (float)MOE_MAX(n_samples, (int64_t)1);
    double mean = 0;
    for (int64_t i = 0; i < nn; i++)
        Hs[i] = H[i] * scale;
    for (int64_t c = 0; c < cols; c++) {
        float *d = &Hs[c * cols + c];
        if (*d == 0.0f) { /* a column no input ever touched: weight 0 */
            *d = 1.0f;
            memset(Wt + c * rows, 0, sizeof(float) * (size_t)rows);
        }
        mean += *d;
    }
    float add = damp * (float)(mean / (double)cols);
    for (int64_t c = 0; c < cols; c++)
        Hs[c * cols + c] += add;

    if (inverse_factor(pool, Hs, cols, U, UT, P, bufs)) {
        transpose(W, rows, cols, Wt); /* undo the dead-column zeroing */
        round_plain(Wt, q, rows, cols, group, ops);
        ret = 1;
        goto done;
    }

    for (int64_t i1 = 0; i1 < cols;) {
        int64_t i2 = MOE_MIN(i1 + BLOCK, cols);
        if (group > 0) /* a group starts a block: group_begin sees every update */
            i2 = MOE_MIN(i2, (i1 / group + 1) * group);
        int64_t K = i2 - i1;
        for (int64_t c = i1; c < i2; c++) {
            if (group > 0 && c % group == 0 && ops->group_begin)
                ops->group_begin(ops->ctx, Wt, rows, c, MOE_MIN(c + group, cols));
            float *w = Wt + c * rows;
            ops->quant_col(ops->ctx, c, w, q, rows);
            const float *u = U + c * cols;
            float inv_d = 1.0f / u[c];
            float *e = err + (c - i1) * rows;
            for (int64_t r = 0; r < rows; r++) {
                e[r] = (w[r] - q[r]) * inv_d;
                w[r] = q[r];
            }
            for (int64_t j = c + 1; j < i2; j++)
                moe_vec_axpy_f32(Wt + j * rows, -u[j], e, rows);
        }
        if (i2 < cols) {
            /* Wt[j][r] -= sum_k U[k][j] err[k][r] for j >= i2, k in the block */
            transpose(err, K, rows, errT);
            prod(pool, bufs, UT + i2 * cols + i1, cols, errT, K, K, Wt + i2 * rows, rows,
                 cols - i2, rows, false, -1.0f);
        }
        i1 = i2;
    }
    ret = 0;

done:
    transpose(Wt, cols, rows, W);
out:
    free(Wt);
    free(q);
    free(Hs);
    free(U);
    free(UT);
    free(P);
    free(bufs);
    free(err);
    free(errT);
    return ret;
}
