/* Binding tensors from a checkpoint to the model's weights, with the shape
 * and dtype checks that turn a wrong file into one clear message. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "model/model_int.h"

static void dims_str(const struct moe_tensor_info *t, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < t->n_dims && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)t->dims[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

/* Any dtype of fixed-size rows that has a kernel (formats with varying rows
 * need their traits' view and are bound elsewhere). */
static int check_dtype(const struct moe_tensor_info *t, const char *file, const char *name)
{
    const struct moe_dtype_traits *tr = moe_dtype_traits(t->dtype);
    if (tr && !tr->view && tr->to_f32 && moe_gemm_kernel((enum moe_dtype)t->dtype, MOE_ISA_REF))
        return 0;
    return moe_err(-ENOTSUP, "%s: tensor '%s': unsupported dtype %s", file, name,
                   moe_dtype_name(t->dtype));
}

static int missing(const char *file, const char *name)
{
    return moe_err(-ENOENT, "%s: missing tensor '%s'", file, name);
}

static int wrong_shape(const struct moe_tensor_info *t, const char *file, const char *name,
                       const char *want)
{
    char have[96];
    dims_str(t, have, sizeof(have));
    return moe_err(-EINVAL, "%s: tensor '%s': expected shape %s, found %s", file, name, want, have);
}

static int fill_weight(const struct moe_tensor_info *t, const char *file, const char *name,
                       const uint8_t *data, int64_t rows, int64_t cols, struct moe_weight *out)
{
    size_t rb = moe_dtype_row_bytes(t->dtype, cols);
    if (rb == 0)
        return moe_err(-EINVAL, "%s: tensor '%s': %lld columns do not fit dtype %s", file, name,
                       (long long)cols, moe_dtype_name(t->dtype));
    out->dtype = (enum moe_dtype)t->dtype;
    out->rows = rows;
    out->cols = cols;
    out->row_bytes = rb;
    out->data = data;
    return 0;
}

int moe_bind_matrix(const struct moe_tensor_info *t, const char *file, const char *name,
                    int64_t rows, int64_t cols, struct moe_weight *out)
{
    if (!t)
        return missing(file, name);
    int rc = check_dtype(t, file, name);
    if (rc < 0)
        return rc;
    /* a single-row matrix may be stored as a vector (GGUF's shared-expert gate) */
    bool ok = (t->n_dims == 2 && t->dims[0] == rows && t->dims[1] == cols) ||
              (rows == 1 && t->n_dims == 1 && t->dims[0] == cols);
    if (!ok) {
        char want[64];
        snprintf(want, sizeof(want), "[%lld, %lld]", (long long)rows, (long long)cols);
        return wrong_shape(t, file, name, want);
    }
    return fill_weight(t, file, name, t->data, rows, cols, out);
}

int moe_bind_matrix_slice(const struct moe_tensor_info *t, const char *file, const char *name,
                          int64_t n, int64_t e, int64_t rows, int64_t cols, struct moe_weight *out)
{
    if (!t)
        return missing(file, name);
    int rc = check_dtype(t, file, name);
    if (rc < 0)
        return rc;
    if (t->n_dims != 3 || t->dims[0] != n || t->dims[1] != rows || t->dims[2] != cols) {
        char want[96];
        snprintf(want, sizeof(want), "[%lld, %lld, %lld]", (long long)n, (long long)rows,
                 (long long)cols);
        return wrong_shape(t, file, name, want);
    }
    size_t rb = moe_dtype_row_bytes(t->dtype, cols);
    return fill_weight(t, file, name, (const uint8_t *)t->data + (size_t)e * (size_t)rows * rb,
                       rows, cols, out);
}

int moe_bind_vector(const struct moe_tensor_info *t, const char *file, const char *name,
                    int64_t n, float **out)
{
    *out = NULL;
    if (!t)
        return missing(file, name);
    int rc = check_dtype(t, file, name);
    if (rc < 0)
        return rc;
    bool ok = (t->n_dims == 1 && t->dims[0] == n) ||
              (t->n_dims == 2 && t->dims[0] == 1 && t->dims[1] == n);
    if (!ok) {
        char want[32];
        snprintf(want, sizeof(want), "[%lld]", (long long)n);
        return wrong_shape(t, file, name, want);
    }
    const struct moe_dtype_traits *tr = moe_dtype_traits(t->dtype);
    if (n % tr->block_size)
        return moe_err(-EINVAL, "%s: tensor '%s': %lld elements do not fit dtype %s", file, name,
                       (long long)n, tr->name);
    float *v = malloc((size_t)n * sizeof(float));
    if (!v)
        return moe_err(-ENOMEM, "out of memory");
    tr->to_f32(t->data, v, n);
    /* the copy is read here anyway: a corrupt norm or bias is named now
     * rather than as NaN logits later */
    if ((rc = moe_bind_check_finite(v, n, file, name, "")) < 0) {
        free(v);
        return rc;
    }
    *out = v;
    return 0;
}

int moe_bind_check_finite(const float *v, int64_t n, const char *file, const char *name,
                          const char *what)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return moe_err(-EBADMSG, "%s: tensor '%s'%s holds NaN or infinite values (element "
                           "%lld is %s): the file is corrupt", file, name, what, (long long)i,
                           isnan(v[i]) ? "NaN" : v[i] > 0 ? "+inf" : "-inf");
    return 0;
}
