/* moe-pack: one expert matrix in its stored format. Plain formats convert
 * row by row (on every core); qmoe and the group-wise gq widths go through
 * GPTQ, whose callbacks below choose the grid. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "common/common.h"
#include "quant/quant_gptq.h"
#include "quant/quant_gq.h"
#include "tools/pack/pack.h"

void weight_to_f32(const struct moe_weight *w, float *out)
{
    const struct moe_dtype_traits *t = moe_dtype_traits(w->dtype);
    if (t->matrix_to_f32) { /* a qmoe pack packed again */
        t->matrix_to_f32(w, out);
        return;
    }
    for (int64_t r = 0; r < w->rows; r++)
        t->to_f32((const uint8_t *)w->data + (size_t)r * w->row_bytes, out + r * w->cols, w->cols);
}

/* ---- qmoe: ternary digits on a per-row grid from the original row --------------- */

struct ternary_ctx {
    float zero_bin; /* the zero bin reaches zero_bin * lo .. zero_bin * hi */
    const float *lo, *hi;
    uint8_t *digits; /* [rows][cols] */
    int64_t cols;
};

static void ternary_quant_col(void *ctxp, int64_t c, const float *w, float *q, int64_t rows)
{
    struct ternary_ctx *t = ctxp;
    for (int64_t r = 0; r < rows; r++) {
        float hi = t->hi[r], lo = t->lo[r];
        uint8_t d = ternary_digit(w[r], lo, hi, t->zero_bin);
        t->digits[r * t->cols + c] = d;
        q[r] = d == 2 ? hi : (d == 1 ? lo : 0.0f);
    }
}

static int encode_qmoe(struct packer *P, bool gptq, float *W, int64_t rows, int64_t cols,
                       const float *H, int64_t n, struct matrix_out *out)
{
    float scale = moe_qmoe_matrix_scale(W, rows, cols);
    uint8_t *levels = malloc((size_t)rows * 2);
    float *lo = malloc((size_t)rows * sizeof(float)), *hi = malloc((size_t)rows * sizeof(float));
    uint8_t *digits = malloc((size_t)rows * (size_t)cols);
    size_t cap = moe_qmoe_matrix_bound(rows, cols);
    out->data = malloc(cap);
    int rc = 0;
    if (!levels || !lo || !hi || !digits || !out->data) {
        rc = moe_err(-ENOMEM, "out of memory");
        goto done;
    }
    for (int64_t r = 0; r < rows; r++)
        moe_qmoe_row_grid(W + r * cols, cols, scale, levels + 2 * r, &lo[r], &hi[r]);
    struct ternary_ctx tc = {(float)P->o->zero_bin, lo, hi, digits, cols};
    struct moe_gptq_ops ops = {.quant_col = ternary_quant_col, .ctx = &tc};
    rc = moe_gptq_quantize(P->pool, W, rows, cols, gptq ? H : NULL, n, (float)P->damp, 0, &ops);
    if (rc < 0)
        goto done;
    rc = 0;
    out->nbytes = moe_qmoe_matrix_encode(P->enc, digits, levels, scale, rows, cols, out->data, cap);
    for (size_t i = 0; i < (size_t)rows * (size_t)cols; i++)
        P->zeros += digits[i] == 0;
done:
    free(levels);
    free(lo);
    free(hi);
    free(digits);
    return rc;
}

/* ---- gq: b-bit groups of 128, scale and zero from the updated weights ------------- */

struct gq_ctx {
    int bits;
    int64_t cols, groups;
    uint8_t *codes;        /* [rows][cols] */
    uint16_t *scale, *zero; /* [rows][groups], fp16 */
    float *tmp;            /* one group of one row */
};

static void gq_group_begin(void *ctxp, const float *Wt, int64_t rows, int64_t c0, int64_t c1)
{
    struct gq_ctx *g = ctxp;
    int64_t gi = c0 / MOE_GQ_GROUP;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = c0; c < c1; c++)
            g->tmp[c - c0] = Wt[c * rows + r];
        float s, z;
        moe_gq_group_params(g->tmp, (int)(c1 - c0), g->bits, &s, &z);
        g->scale[r * g->groups + gi] = moe_f32_to_f16(s);
        g->zero[r * g->groups + gi] = moe_f32_to_f16(z);
    }
}

static void gq_quant_col(void *ctxp, int64_t c, const float *w, float *q, int64_t rows)
{
    struct gq_ctx *g = ctxp;
    int64_t gi = c / MOE_GQ_GROUP;
    for (int64_t r = 0; r < rows; r++) {
        float s = moe_f16_to_f32(g->scale[r * g->groups + gi]);
        float z = moe_f16_to_f32(g->zero[r * g->groups + gi]);
        int qi = moe_gq_quant(w[r], s, z, g->bits);
        g->codes[r * g->cols + c] = (uint8_t)qi;
        q[r] = s * ((float)qi - z);
    }
}

static int encode_gq(struct packer *P, int bits, float *W, int64_t rows, int64_t cols,
                     const float *H, int64_t n, struct matrix_out *out)
{
    int dtype = moe_gq_dtype(bits);
    size_t rb = moe_dtype_row_bytes(dtype, cols);
    if (!rb)
        return moe_err(-EINVAL, "%s: a %lld-wide expert matrix is not a whole number of groups "
                       "of %d", P->o->model, (long long)cols, MOE_GQ_GROUP);
    struct gq_ctx g = {bits, cols, cols / MOE_GQ_GROUP, NULL, NULL, NULL, NULL};
    g.codes = malloc((size_t)rows * (size_t)cols);
    g.scale = malloc((size_t)rows * (size_t)g.groups * sizeof(uint16_t));
    g.zero = malloc((size_t)rows * (size_t)g.groups * sizeof(uint16_t));
    g.tmp = malloc(MOE_GQ_GROUP * sizeof(float));
    out->nbytes = rb * (size_t)rows;
    out->data = malloc(out->nbytes);
    int rc = 0;
    if (!g.codes || !g.scale || !g.zero || !g.tmp || !out->data) {
        rc = moe_err(-ENOMEM, "out of memory");
        goto done;
    }
    struct moe_gptq_ops ops = {.group_begin = gq_group_begin, .quant_col = gq_quant_col, .ctx = &g};
    rc = moe_gptq_quantize(P->pool, W, rows, cols, H, n, (float)P->damp, MOE_GQ_GROUP, &ops);
    if (rc < 0)
        goto done;
    rc = 0;
    for (int64_t r = 0; r < rows; r++)
        moe_gq_pack_row(bits, g.codes + r * cols, g.scale + r * g.groups, g.zero + r * g.groups,
                        cols, (uint8_t *)out->data + (size_t)r * rb);
done:
    free(g.codes);
    free(g.scale);
    free(g.zero);
    free(g.tmp);
    return rc;
}

/* ---- plain formats: the traits' own conversion ------------------------------------- */

struct rows_job {
    const struct moe_dtype_traits *t;
    float *W;
    void *dst;
    int64_t rows, cols;
    size_t row_bytes;
};

/* rows ith, ith + nth, ... and W replaced by what they decode to */
static void convert_rows(void *arg, int ith, int nth)
{
    struct rows_job *j = arg;
    for (int64_t r = ith; r < j->rows; r += nth) {
        uint8_t *dst = (uint8_t *)j->dst + (size_t)r * j->row_bytes;
        j->t->from_f32(j->W + r * j->cols, dst, j->cols);
        j->t->to_f32(dst, j->W + r * j->cols, j->cols); /* what the pack will compute with */
    }
}

static int encode_plain(struct packer *P, int dtype, float *W, int64_t rows, int64_t cols,
                        struct matrix_out *out)
{
    const struct moe_dtype_traits *t = moe_dtype_traits(dtype);
    size_t rb = moe_dtype_row_bytes(dtype, cols);
    if (!rb)
        return moe_err(-EINVAL, "%s: a %lld-wide expert matrix is not a whole number of %s "
                       "blocks (%d)", P->o->model, (long long)cols, t->name, t->block_size);
    out->nbytes = rb * (size_t)rows;
    if (!(out->data = malloc(out->nbytes)))
        return moe_err(-ENOMEM, "out of memory");
    struct rows_job job = {t, W, out->data, rows, cols, rb};
    moe_pool_run(P->pool, convert_rows, &job); /* q4's clipping search is slow: use every core */
    return 0;
}

int encode_matrix(struct packer *P, const struct matrix_spec *spec, float *W, int64_t rows,
                  int64_t cols, const float *H, int64_t n, struct matrix_out *out)
{
    if (spec->dtype == MOE_DTYPE_QMOE)
        return encode_qmoe(P, spec->gptq, W, rows, cols, H, n, out);
    if (spec->gptq)
        return encode_gq(P, spec->bits, W, rows, cols, H, n, out);
    return encode_plain(P, spec->dtype, W, rows, cols, out);
}

int copy_matrix(struct packer *P, const struct matrix_spec *spec, const struct moe_weight *src,
                struct matrix_out *out)
{
    const struct moe_dtype_traits *t = moe_dtype_traits(src->dtype);
    /* formats with a view (QMoE) depend on a table the new pack writes anew */
    if ((int)src->dtype != spec->dtype || !t || t->view)
        return 0;
    size_t rb = moe_dtype_row_bytes(src->dtype, src->cols);
    if (!rb)
        return 0;
    out->nbytes = rb * (size_t)src->rows;
    if (!(out->data = malloc(out->nbytes)))
        return moe_err(-ENOMEM, "out of memory");
    for (int64_t r = 0; r < src->rows; r++) /* rows may lie further apart in the source */
        memcpy((uint8_t *)out->data + (size_t)r * rb,
               (const uint8_t *)src->data + (size_t)r * src->row_bytes, rb);
    P->copied_matrices++;
    return 1;
}

int view_matrix(struct packer *P, int dtype, const struct matrix_out *mo, int64_t rows,
                int64_t cols, struct moe_weight *out)
{
    const struct moe_dtype_traits *t = moe_dtype_traits(dtype);
    if (t->view)
        return t->view(mo->data, mo->nbytes, rows, cols, P->side, out);
    *out = (struct moe_weight){dtype, rows, cols, moe_dtype_row_bytes(dtype, cols), mo->data, 0, NULL};
    return 0;
}
