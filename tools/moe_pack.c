/* moe-pack: converts a checkpoint into a moed pack with its routed experts in
 * one format.
 *
 *   moe-pack --model PATH --out FILE --experts FORMAT [--calib FILE]
 *            [--calib-tokens N] [--calib-end-char C] [--seed S] [--threads N]
 *
 * FORMAT: bf16 | q8 (q8_0) | q4 (groups of 128, round to nearest) | qmoe
 * (ternary GPTQ + dictionary code) | qmoe-rtn (the same format, rounded to
 * nearest: the baseline GPTQ must beat). Only routed experts change; the
 * dense tensors keep their dtype.
 *
 * qmoe with --calib runs the model over the calibration text layer by layer:
 * each layer sees the outputs of the layers before it as already compressed,
 * each expert's Hessian comes from the tokens routed to it (inputs after the
 * FFN norm for gate/up; the intermediate activations, computed with the
 * compressed gate/up, for down). An expert with fewer than --min-tokens
 * tokens gets the identity Hessian (plain rounding). The dictionary is built
 * for the digit statistics of the model at hand (stored in the pack, so any
 * table decodes), which costs 0.02-0.2 bits/weight less than QMoE's fixed
 * P(0) = 0.885 on experts that are less sparse than Switch's.
 *
 * Progress goes to stderr, one JSON summary line to stdout. The pack is
 * written to a temporary name and renamed at the end: an interrupted run
 * leaves no file under FILE. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "common/common.h"
#include "format/format_pack.h"
#include "kv/kv.h"
#include "model/model.h"
#include "quant/quant_gptq.h"
#include "quant/quant_qmoe.h"

#define EXIT_USAGE 2

static const char usage[] =
    "usage: moe-pack --model PATH --out FILE --experts FORMAT [--calib FILE]\n"
    "                [--calib-tokens N] [--calib-end-char C] [--seed S] [--threads N]\n"
    "\n"
    "FORMAT: bf16, q8, q4 (groups of 128), qmoe (ternary GPTQ + dictionary code,\n"
    "        under 1 bit per weight), qmoe-rtn (qmoe rounded to nearest, no GPTQ)\n"
    "\n"
    "  --calib FILE         calibration text for qmoe (needs the model's tokenizer);\n"
    "                       without it every expert is rounded to nearest\n"
    "  --calib-tokens N     calibration tokens (default 16384), in windows of 256\n"
    "                       picked at random (--seed) from the text\n"
    "  --calib-end-char C   use only the text before character C (keep validation\n"
    "                       text out of calibration)\n"
    "  --min-tokens N       experts routed fewer tokens get the identity Hessian\n"
    "                       (default 16)\n"
    "  --damp D             GPTQ damping, a fraction of mean(diag H) (default 4).\n"
    "                       QMoE's 0.1 gives the lowest error, but its error feedback\n"
    "                       lowers the zero fraction (tiny-moe: 85% -> 78%, 1.15\n"
    "                       bits/weight); stronger damping keeps the code under 1 bit\n"
    "  --zero-bin T         round to zero within T*lo .. T*hi (default 0.5, QMoE's)\n"
    "  --dict-p0 P|auto     digit statistics the dictionary is built for (QMoE: 0.885;\n"
    "                       default auto: measured on the first MoE layer)\n"
    "  --seed S             window choice (default 1)\n"
    "  --threads N          worker threads (default: all cores)\n";

enum expert_format { FMT_BF16, FMT_Q8, FMT_Q4, FMT_QMOE, FMT_QMOE_RTN };
static const char *const format_names[] = {"bf16", "q8", "q4", "qmoe", "qmoe-rtn"};

struct pack_opts {
    const char *model, *out, *calib;
    enum expert_format fmt;
    int64_t calib_tokens, calib_end_char, seed, min_tokens;
    double zero_bin, damp, dict_p0;
    int threads;
};

static int parse_args(int argc, char **argv, struct pack_opts *o)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},        {"out", required_argument, 0, 'o'},
        {"experts", required_argument, 0, 'e'},      {"calib", required_argument, 0, 'c'},
        {"calib-tokens", required_argument, 0, 'n'}, {"calib-end-char", required_argument, 0, 'E'},
        {"seed", required_argument, 0, 's'},         {"threads", required_argument, 0, 't'},
        {"min-tokens", required_argument, 0, 'M'},   {"zero-bin", required_argument, 0, 'Z'},
        {"damp", required_argument, 0, 'D'},         {"dict-p0", required_argument, 0, 'P'},         {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    memset(o, 0, sizeof(*o));
    o->fmt = -1;
    o->calib_tokens = 16384;
    o->calib_end_char = -1;
    o->seed = 1;
    o->min_tokens = 16;
    o->zero_bin = 0.5;
    o->damp = 4.0; /* see the usage text: the paper's 0.1 costs ~1.15 bits here */
    o->dict_p0 = 0; /* auto */
    int c;
    int64_t v;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        const char *name = moe_cli_opt_name(longopts, c);
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'o': o->out = optarg; break;
        case 'c': o->calib = optarg; break;
        case 'e':
            for (size_t i = 0; i < MOE_ARRAY_SIZE(format_names); i++)
                if (!strcmp(optarg, format_names[i]))
                    o->fmt = (enum expert_format)i;
            if ((int)o->fmt < 0) {
                fprintf(stderr, "moe-pack: --experts: unknown format '%s' (bf16, q8, q4, qmoe, "
                        "qmoe-rtn)\n", optarg);
                return -1;
            }
            break;
        case 'n': if (moe_cli_integer("moe-pack", name, optarg, 1, 1 << 26, &o->calib_tokens)) return -1; break;
        case 'E': if (moe_cli_integer("moe-pack", name, optarg, 1, INT64_MAX, &o->calib_end_char)) return -1; break;
        case 's': if (moe_cli_integer("moe-pack", name, optarg, 0, INT64_MAX, &o->seed)) return -1; break;
        case 'M': if (moe_cli_integer("moe-pack", name, optarg, 0, 1 << 30, &o->min_tokens)) return -1; break;
        case 'Z': if (moe_cli_number("moe-pack", name, optarg, 0.5, 1.0, &o->zero_bin)) return -1; break;
        case 'P':
            if (!strcmp(optarg, "auto")) {
                o->dict_p0 = 0;
                break;
            }
            if (moe_cli_number("moe-pack", name, optarg, 0.34, 0.99, &o->dict_p0))
                return -1;
            break;
        case 'D': if (moe_cli_number("moe-pack", name, optarg, 0.0001, 10, &o->damp)) return -1; break;
        case 't': if (moe_cli_integer("moe-pack", name, optarg, 0, 1024, &v)) return -1; o->threads = (int)v; break;
        case 'h': fputs(usage, stdout); exit(0);
        case ':': fprintf(stderr, "moe-pack: option '%s' needs a value\n", argv[optind - 1]); return -1;
        default: fprintf(stderr, "moe-pack: unknown option '%s'\n%s", argv[optind - 1], usage); return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "moe-pack: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->model || !o->out || (int)o->fmt < 0) {
        fprintf(stderr, "moe-pack: --model, --out and --experts are required\n%s", usage);
        return -1;
    }
    return 0;
}

/* ---- calibration data ----------------------------------------------------------- */

#define CALIB_SEQ 256

struct calib {
    int32_t *ids;      /* [n_seq][CALIB_SEQ] */
    int32_t n_seq;
    float *x;          /* [n_seq * CALIB_SEQ][H] residual stream at the current layer */
    float *xn;         /* [N][H] the current layer's normalised FFN inputs */
    struct moe_route *routes; /* [N] */
    int64_t cursor;    /* observer's write position, in tokens */
};

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Tokenises the calibration text and picks windows of CALIB_SEQ tokens at
 * random, without overlap. */
static int calib_load(const struct moe_model *m, const struct pack_opts *o, struct calib *cb)
{
    if (!m->tok)
        return moe_err(-EINVAL, "%s: the model has no tokenizer, so --calib text cannot be "
                       "encoded", o->model);
    char *text;
    size_t len;
    int rc = moe_read_text_file(o->calib, &text, &len);
    if (rc < 0)
        return rc;
    if (o->calib_end_char > 0 && (size_t)o->calib_end_char < len)
        len = (size_t)o->calib_end_char;
    int32_t *ids;
    size_t n_ids;
    rc = moe_tokenizer_encode(m->tok, text, len, false, &ids, &n_ids);
    free(text);
    if (rc < 0)
        return rc;
    size_t n_win = n_ids / CALIB_SEQ;
    size_t want = (size_t)((o->calib_tokens + CALIB_SEQ - 1) / CALIB_SEQ);
    if (n_win == 0) {
        free(ids);
        return moe_err(-EINVAL, "%s: calibration text too short: %zu tokens, at least %d needed",
                       o->calib, n_ids, CALIB_SEQ);
    }
    if (want > n_win)
        want = n_win;
    size_t *order = malloc(n_win * sizeof(*order));
    cb->ids = malloc(want * CALIB_SEQ * sizeof(*cb->ids));
    if (!order || !cb->ids) {
        free(order);
        free(ids);
        return moe_err(-ENOMEM, "out of memory");
    }
    uint64_t s = (uint64_t)o->seed;
    for (size_t i = 0; i < n_win; i++)
        order[i] = i;
    for (size_t i = n_win - 1; i > 0; i--) { /* Fisher-Yates */
        size_t j = (size_t)(splitmix(&s) % (i + 1));
        size_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (size_t w = 0; w < want; w++)
        memcpy(cb->ids + w * CALIB_SEQ, ids + order[w] * CALIB_SEQ, CALIB_SEQ * sizeof(*ids));
    cb->n_seq = (int32_t)want;
    free(order);
    free(ids);

    size_t N = want * CALIB_SEQ, H = (size_t)m->cfg.hidden;
    cb->x = malloc(N * H * sizeof(float));
    cb->xn = malloc(N * H * sizeof(float));
    cb->routes = malloc(N * sizeof(*cb->routes));
    if (!cb->x || !cb->xn || !cb->routes)
        return moe_err(-ENOMEM, "out of memory for %zu calibration tokens", N);
    for (int32_t q = 0; q < cb->n_seq; q++)
        moe_model_embed(m, cb->ids + (size_t)q * CALIB_SEQ, CALIB_SEQ, cb->x + (size_t)q * CALIB_SEQ * H);
    return 0;
}

static void calib_free(struct calib *cb)
{
    free(cb->ids);
    free(cb->x);
    free(cb->xn);
    free(cb->routes);
}

struct observe_ctx {
    struct calib *cb;
    int64_t H;
};

static void observe(void *ctxp, int32_t layer, const float *xn, int32_t n,
                    const struct moe_route *routes)
{
    struct observe_ctx *ctx = ctxp;
    struct calib *cb = ctx->cb;
    (void)layer;
    memcpy(cb->xn + cb->cursor * ctx->H, xn, (size_t)n * (size_t)ctx->H * sizeof(float));
    memcpy(cb->routes + cb->cursor, routes, (size_t)n * sizeof(*routes));
    cb->cursor += n;
}

/* Runs layer l over every calibration window. observe: record the FFN inputs
 * and routes; advance: keep the outputs as the next layer's inputs. */
static int calib_run_layer(struct moe_model *m, struct moe_pool *pool, struct moe_scratch *scr,
                           struct moe_kv *kv, struct calib *cb, int32_t l, bool record,
                           bool advance)
{
    int64_t H = m->cfg.hidden;
    int32_t pos[CALIB_SEQ];
    for (int32_t i = 0; i < CALIB_SEQ; i++)
        pos[i] = i;
    float *tmp = NULL;
    if (!advance && !(tmp = malloc(CALIB_SEQ * (size_t)H * sizeof(float))))
        return moe_err(-ENOMEM, "out of memory");
    struct observe_ctx ctx = {cb, H};
    cb->cursor = 0;
    int rc = 0;
    for (int32_t q = 0; q < cb->n_seq && rc == 0; q++) {
        float *x = cb->x + (size_t)q * CALIB_SEQ * H;
        if (!advance) {
            memcpy(tmp, x, CALIB_SEQ * (size_t)H * sizeof(float));
            x = tmp;
        }
        rc = moe_model_forward_layer(m, pool, scr, l, CALIB_SEQ, x, kv, pos,
                                     record ? observe : NULL, &ctx);
    }
    free(tmp);
    return rc;
}

/* ---- one matrix -------------------------------------------------------------------- */

static void weight_to_f32(const struct moe_weight *w, float *out)
{
    const struct moe_dtype_traits *t = moe_dtype_traits(w->dtype);
    for (int64_t r = 0; r < w->rows; r++)
        t->to_f32((const uint8_t *)w->data + (size_t)r * w->row_bytes, out + r * w->cols, w->cols);
}

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
        uint8_t d = w[r] > t->zero_bin * hi ? 2 : (w[r] < t->zero_bin * lo ? 1 : 0);
        t->digits[r * t->cols + c] = d;
        q[r] = d == 2 ? t->hi[r] : (d == 1 ? t->lo[r] : 0.0f);
    }
}

struct packer {
    const struct pack_opts *o;
    struct moe_model *m;
    struct moe_pool *pool;
    struct moe_pack_writer *w;
    uint64_t *table;               /* qmoe decode table */
    struct moe_qmoe_encoder *enc;
    void *side;                    /* runtime table for in-memory views */
    double dict_p0;                /* digit statistics the dictionary was built for */
    /* totals */
    int64_t weights, zeros, identity_experts, calibrated_experts;
    size_t expert_bytes, blob_bytes;
};

/* One compressed matrix: bytes in the expert format, and W (in) replaced by
 * what those bytes decode to (out). H: Hessian sum of n inputs, or NULL. */
struct matrix_out {
    void *data;
    size_t nbytes;
};

struct rows_job {
    const struct moe_dtype_traits *t;
    float *W;
    void *dst;
    int64_t rows, cols;
    size_t row_bytes;
};

/* rows ith, ith + nth, ... of a plain format, and W replaced by what they decode to */
static void convert_rows(void *arg, int ith, int nth)
{
    struct rows_job *j = arg;
    for (int64_t r = ith; r < j->rows; r += nth) {
        uint8_t *dst = (uint8_t *)j->dst + (size_t)r * j->row_bytes;
        j->t->from_f32(j->W + r * j->cols, dst, j->cols);
        j->t->to_f32(dst, j->W + r * j->cols, j->cols); /* what the pack will compute with */
    }
}

static int encode_matrix(struct packer *P, float *W, int64_t rows, int64_t cols, const float *H,
                         int64_t n, struct matrix_out *out)
{
    enum expert_format fmt = P->o->fmt;
    if (fmt == FMT_QMOE || fmt == FMT_QMOE_RTN) {
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
        rc = moe_gptq_quantize(P->pool, W, rows, cols, fmt == FMT_QMOE ? H : NULL, n,
                               (float)P->o->damp, 0, &ops);
        if (rc < 0)
            goto done;
        rc = 0;
        out->nbytes = moe_qmoe_matrix_encode(P->enc, digits, levels, scale, rows, cols,
                                             out->data, cap);
        for (size_t i = 0; i < (size_t)rows * (size_t)cols; i++)
            P->zeros += digits[i] == 0;
    done:
        free(levels);
        free(lo);
        free(hi);
        free(digits);
        return rc;
    }
    int dtype = fmt == FMT_BF16 ? MOE_DTYPE_BF16 : (fmt == FMT_Q8 ? MOE_DTYPE_Q8_0 : MOE_DTYPE_GQ4);
    const struct moe_dtype_traits *t = moe_dtype_traits(dtype);
    size_t rb = moe_dtype_row_bytes(dtype, cols);
    if (!rb)
        return moe_err(-EINVAL, "%s: a %lld-wide expert matrix is not a whole number of %s "
                       "blocks (%d)", P->o->model, (long long)cols, format_names[fmt],
                       t->block_size);
    out->nbytes = rb * (size_t)rows;
    if (!(out->data = malloc(out->nbytes)))
        return moe_err(-ENOMEM, "out of memory");
    struct rows_job job = {t, W, out->data, rows, cols, rb};
    moe_pool_run(P->pool, convert_rows, &job); /* q4's clipping search is slow: use every core */
    return 0;
}

static int matrix_dtype(enum expert_format fmt)
{
    switch (fmt) {
    case FMT_BF16: return MOE_DTYPE_BF16;
    case FMT_Q8: return MOE_DTYPE_Q8_0;
    case FMT_Q4: return MOE_DTYPE_GQ4;
    default: return MOE_DTYPE_QMOE;
    }
}

/* ---- one expert ---------------------------------------------------------------------- */

static float silu(float v)
{
    return v / (1.0f + expf(-v));
}

/* Compresses expert e of layer l. xe: its calibration inputs [ne][H] (ne may
 * be 0). On return parts[] hold the compressed matrices. */
static int pack_expert(struct packer *P, const struct moe_expert_weights *ew, const float *xe,
                       int64_t ne, struct matrix_out parts[3])
{
    int64_t H = ew->gate.cols, F = ew->gate.rows;
    bool calibrated = P->o->fmt == FMT_QMOE && ne >= P->o->min_tokens && P->o->min_tokens > 0;
    if (P->o->fmt == FMT_QMOE && xe) {
        if (calibrated)
            P->calibrated_experts++;
        else
            P->identity_experts++;
    }
    float *Wg = malloc((size_t)F * H * sizeof(float)), *Wu = malloc((size_t)F * H * sizeof(float));
    float *Wd = malloc((size_t)H * F * sizeof(float));
    float *H1 = NULL, *H2 = NULL, *a = NULL, *u = NULL;
    int rc = 0;
    if (!Wg || !Wu || !Wd) {
        rc = moe_err(-ENOMEM, "out of memory");
        goto out;
    }
    weight_to_f32(&ew->gate, Wg);
    weight_to_f32(&ew->up, Wu);
    weight_to_f32(&ew->down, Wd);
    if (calibrated) {
        H1 = calloc((size_t)H * H, sizeof(float));
        H2 = calloc((size_t)F * F, sizeof(float));
        a = malloc((size_t)ne * F * sizeof(float));
        u = malloc((size_t)ne * F * sizeof(float));
        if (!H1 || !H2 || !a || !u) {
            rc = moe_err(-ENOMEM, "out of memory");
            goto out;
        }
        moe_gptq_hessian_add(P->pool, H1, xe, ne, H);
    }
    if ((rc = encode_matrix(P, Wg, F, H, H1, ne, &parts[0])) < 0 ||
        (rc = encode_matrix(P, Wu, F, H, H1, ne, &parts[1])) < 0)
        goto out;
    if (calibrated) { /* the down projection sees the compressed gate/up's output */
        struct moe_weight g = {MOE_DTYPE_F32, F, H, (size_t)H * 4, Wg, 0, NULL};
        struct moe_weight up = {MOE_DTYPE_F32, F, H, (size_t)H * 4, Wu, 0, NULL};
        moe_matmul(P->pool, &g, xe, (int)ne, a);
        moe_matmul(P->pool, &up, xe, (int)ne, u);
        for (int64_t i = 0; i < ne * F; i++)
            a[i] = silu(a[i]) * u[i];
        moe_gptq_hessian_add(P->pool, H2, a, ne, F);
    }
    rc = encode_matrix(P, Wd, H, F, H2, ne, &parts[2]);
out:
    free(Wg);
    free(Wu);
    free(Wd);
    free(H1);
    free(H2);
    free(a);
    free(u);
    return rc;
}

/* A view of an in-memory compressed matrix (for the next layers' calibration). */
static int view_matrix(struct packer *P, const struct matrix_out *mo, int64_t rows, int64_t cols,
                       struct moe_weight *out)
{
    int dtype = matrix_dtype(P->o->fmt);
    const struct moe_dtype_traits *t = moe_dtype_traits(dtype);
    if (t->view)
        return t->view(mo->data, mo->nbytes, rows, cols, P->side, out);
    *out = (struct moe_weight){dtype, rows, cols, moe_dtype_row_bytes(dtype, cols), mo->data, 0, NULL};
    return 0;
}

/* ---- the whole model --------------------------------------------------------------------- */

static int gather_expert_inputs(const struct calib *cb, int64_t N, int64_t H, int32_t e, float *xe)
{
    int64_t ne = 0;
    for (int64_t t = 0; t < N; t++)
        for (int32_t j = 0; j < cb->routes[t].n; j++)
            if (cb->routes[t].expert[j] == e) {
                memcpy(xe + ne * H, cb->xn + t * H, (size_t)H * sizeof(float));
                ne++;
            }
    return (int)ne;
}

static int pack_layer(struct packer *P, struct calib *cb, struct moe_scratch *scr,
                      struct moe_kv *kv, int32_t l)
{
    struct moe_model *m = P->m;
    const struct moe_config *c = &m->cfg;
    int32_t E = c->n_experts;
    int64_t H = c->hidden, N = cb ? (int64_t)cb->n_seq * CALIB_SEQ : 0;
    int rc = 0;
    if (cb && (rc = calib_run_layer(m, P->pool, scr, kv, cb, l, true, false)) < 0)
        return rc;
    float *xe = cb ? malloc((size_t)N * H * sizeof(float)) : NULL;
    struct matrix_out(*parts)[3] = calloc((size_t)E, sizeof(*parts));
    if ((cb && !xe) || !parts) {
        free(xe);
        free(parts);
        return moe_err(-ENOMEM, "out of memory");
    }
    for (int32_t e = 0; e < E && rc == 0; e++) {
        const struct moe_expert_weights *ew = &m->layers[l].experts[e];
        int64_t ne = cb ? gather_expert_inputs(cb, N, H, e, xe) : 0;
        if ((rc = pack_expert(P, ew, xe, ne, parts[e])) < 0)
            break;
        static const char *const names[3] = {"gate", "up", "down"};
        const struct moe_weight *src[3] = {&ew->gate, &ew->up, &ew->down};
        struct moe_pack_part pp[3];
        for (int i = 0; i < 3; i++) {
            pp[i] = (struct moe_pack_part){names[i], matrix_dtype(P->o->fmt), src[i]->rows,
                                           src[i]->cols, parts[e][i].data, parts[e][i].nbytes};
            P->expert_bytes += parts[e][i].nbytes;
            P->weights += src[i]->rows * src[i]->cols;
        }
        rc = moe_pack_writer_add_expert(P->w, l, e, pp, 3);
    }
    if (rc == 0 && cb && l + 1 < c->n_layers) {
        /* the next layer's inputs come through this layer's compressed experts */
        struct moe_expert_weights *keep = m->layers[l].experts;
        struct moe_expert_weights *q = calloc((size_t)E, sizeof(*q));
        if (!q)
            rc = moe_err(-ENOMEM, "out of memory");
        for (int32_t e = 0; e < E && rc == 0; e++) {
            const struct moe_expert_weights *ew = &keep[e];
            if ((rc = view_matrix(P, &parts[e][0], ew->gate.rows, ew->gate.cols, &q[e].gate)) < 0 ||
                (rc = view_matrix(P, &parts[e][1], ew->up.rows, ew->up.cols, &q[e].up)) < 0 ||
                (rc = view_matrix(P, &parts[e][2], ew->down.rows, ew->down.cols, &q[e].down)) < 0)
                break;
        }
        if (rc == 0) {
            m->layers[l].experts = q;
            rc = calib_run_layer(m, P->pool, scr, kv, cb, l, false, true);
            m->layers[l].experts = keep;
        }
        free(q);
    } else if (rc == 0 && cb) {
        cb->cursor = 0;
    }
    for (int32_t e = 0; e < E; e++)
        for (int i = 0; i < 3; i++)
            free(parts[e][i].data);
    free(parts);
    free(xe);
    return rc;
}

/* Fraction of zero digits when the first MoE layer's experts are rounded to
 * nearest: the digit statistics the dictionary is built for ("auto"). GPTQ
 * moves it by a few points; the code stays near its best over that range. */
static double rtn_zero_fraction(const struct packer *P)
{
    const struct moe_config *c = &P->m->cfg;
    int32_t l = 0;
    while (l < c->n_layers && c->layer_dense[l])
        l++;
    int64_t zeros = 0, total = 0;
    for (int32_t e = 0; l < c->n_layers && e < c->n_experts; e++) {
        const struct moe_weight *ws[3] = {&P->m->layers[l].experts[e].gate,
                                          &P->m->layers[l].experts[e].up,
                                          &P->m->layers[l].experts[e].down};
        for (int i = 0; i < 3; i++) {
            int64_t rows = ws[i]->rows, cols = ws[i]->cols;
            float *W = malloc((size_t)rows * (size_t)cols * sizeof(float));
            if (!W)
                return MOE_QMOE_P_ZERO;
            weight_to_f32(ws[i], W);
            float scale = moe_qmoe_matrix_scale(W, rows, cols);
            for (int64_t r = 0; r < rows; r++) {
                uint8_t code[2];
                float lo, hi;
                moe_qmoe_row_grid(W + r * cols, cols, scale, code, &lo, &hi);
                for (int64_t k = 0; k < cols; k++) {
                    float x = W[r * cols + k];
                    zeros += !(x > (float)P->o->zero_bin * hi || x < (float)P->o->zero_bin * lo);
                }
            }
            total += rows * cols;
            free(W);
        }
    }
    double f = total ? (double)zeros / (double)total : MOE_QMOE_P_ZERO;
    return f < 0.5 ? 0.5 : (f > 0.97 ? 0.97 : f);
}

static int qmoe_setup(struct packer *P)
{
    P->table = malloc(MOE_QMOE_DICT_SIZE * sizeof(uint64_t));
    if (!P->table)
        return moe_err(-ENOMEM, "out of memory");
    P->dict_p0 = P->o->dict_p0 > 0 ? P->o->dict_p0 : rtn_zero_fraction(P);
    fprintf(stderr, "moe-pack: dictionary built for P(zero digit) = %.3f%s\n", P->dict_p0,
            P->o->dict_p0 > 0 ? "" : " (measured on the first MoE layer)");
    moe_qmoe_dict_build(P->dict_p0, P->table);
    int rc = moe_qmoe_encoder_create(P->table, &P->enc);
    if (rc == 0)
        rc = moe_qmoe_side_create(P->table, MOE_QMOE_DICT_SIZE * sizeof(uint64_t), &P->side);
    if (rc == 0)
        rc = moe_pack_writer_add_blob(P->w, "qmoe.decode_table", P->table,
                                      MOE_QMOE_DICT_SIZE * sizeof(uint64_t));
    return rc;
}

static json_t *quant_json(const struct packer *P, const struct calib *cb)
{
    const struct pack_opts *o = P->o;
    json_t *j = json_pack("{s:s, s:b, s:I, s:I, s:I, s:I}", "experts", format_names[o->fmt],
                          "gptq", o->fmt == FMT_QMOE && cb, "calib_tokens",
                          (json_int_t)(cb ? (int64_t)cb->n_seq * CALIB_SEQ : 0), "seed",
                          (json_int_t)o->seed, "identity_hessian_experts",
                          (json_int_t)P->identity_experts, "calibrated_experts",
                          (json_int_t)P->calibrated_experts);
    if (P->table) {
        json_object_set_new(j, "damp", json_real(o->damp));
        json_object_set_new(j, "zero_bin", json_real(o->zero_bin));
        json_object_set_new(j, "dict_p_zero", json_real(P->dict_p0));
    }
    return j;
}

static int run(const struct pack_opts *o)
{
    double t0 = moe_now_s();
    struct packer P = {.o = o};
    struct calib cb = {0}, *cbp = NULL;
    struct moe_scratch *scr = NULL;
    struct moe_kv *kv = NULL;
    int rc;
    if ((rc = moe_model_open(o->model, &P.m)) < 0)
        return rc;
    const struct moe_config *c = &P.m->cfg;
    if ((rc = moe_pool_create(o->threads, &P.pool)) < 0)
        goto out;
    if (o->calib && o->fmt != FMT_QMOE)
        fprintf(stderr, "moe-pack: note: --calib is used by qmoe only; %s rounds to nearest\n",
                format_names[o->fmt]);
    if (o->calib && o->fmt == FMT_QMOE) {
        if ((rc = calib_load(P.m, o, &cb)) < 0 || (rc = moe_scratch_create(&scr)) < 0 ||
            (rc = moe_model_kv_create(P.m, CALIB_SEQ, &kv)) < 0)
            goto out;
        cbp = &cb;
        fprintf(stderr, "moe-pack: calibration: %d windows of %d tokens from %s\n", cb.n_seq,
                CALIB_SEQ, o->calib);
    } else if (o->fmt == FMT_QMOE) {
        fprintf(stderr, "moe-pack: note: no --calib: every expert gets the identity Hessian "
                "(plain rounding)\n");
    }
    if ((rc = moe_pack_writer_open(o->out, &P.w)) < 0)
        goto out;
    moe_pack_writer_cleanup_on_signal();
    /* the directory in front of the data (about 300 bytes an expert, some per
     * tensor): a truncated pack can still say which expert it lost */
    size_t header_room = ((size_t)64 << 10) + (size_t)1024 * (size_t)c->n_layers *
                                                   (size_t)(c->n_experts + 16);
    if ((rc = moe_pack_writer_reserve_header(P.w, header_room)) < 0 ||
        (rc = moe_model_pack_write_base(P.m, P.w)) < 0)
        goto out;
    if ((o->fmt == FMT_QMOE || o->fmt == FMT_QMOE_RTN) && (rc = qmoe_setup(&P)) < 0)
        goto out;

    int32_t moe_layers = 0, done = 0;
    for (int32_t l = 0; l < c->n_layers; l++)
        moe_layers += !c->layer_dense[l];
    for (int32_t l = 0; l < c->n_layers; l++) {
        if (c->layer_dense[l]) { /* a plain MLP: no experts; calibration passes through */
            if (cbp && (rc = calib_run_layer(P.m, P.pool, scr, kv, cbp, l, false, true)) < 0)
                goto out;
            continue;
        }
        if ((rc = pack_layer(&P, cbp, scr, kv, l)) < 0)
            goto out;
        done++;
        double el = moe_now_s() - t0;
        fprintf(stderr, "moe-pack: layer %d/%d: %d experts as %s, %.3f bits/weight so far, "
                "%.1f s, ETA %.0f s\n", l + 1, c->n_layers, c->n_experts, format_names[o->fmt],
                8.0 * (double)P.expert_bytes / (double)P.weights, el,
                el / done * (moe_layers - done));
    }
    json_t *q = quant_json(&P, cbp);
    if ((rc = moe_pack_writer_set_json(P.w, "quant", q)) < 0)
        goto out;
    if ((rc = moe_pack_writer_commit(P.w)) < 0) {
        P.w = NULL; /* commit frees the writer on failure too */
        goto out;
    }
    P.w = NULL;

    size_t pack_bytes = 0;
    FILE *f = fopen(o->out, "rb");
    if (f) {
        fseek(f, 0, SEEK_END);
        pack_bytes = (size_t)ftell(f);
        fclose(f);
    }
    json_t *j = json_pack("{s:s, s:f, s:I, s:I, s:I, s:f}", "experts", format_names[o->fmt],
                          "expert_bits_per_weight", 8.0 * (double)P.expert_bytes / (double)P.weights,
                          "expert_bytes", (json_int_t)P.expert_bytes, "expert_weights",
                          (json_int_t)P.weights, "pack_bytes", (json_int_t)pack_bytes, "seconds",
                          moe_now_s() - t0);
    if (o->fmt == FMT_QMOE || o->fmt == FMT_QMOE_RTN) {
        json_object_set_new(j, "zero_fraction", json_real((double)P.zeros / (double)P.weights));
        json_object_set_new(j, "dict_p_zero", json_real(P.dict_p0));
        json_object_set_new(j, "decode_table_bytes",
                            json_integer(MOE_QMOE_DICT_SIZE * sizeof(uint64_t)));
    }
    if (o->fmt == FMT_QMOE) {
        json_object_set_new(j, "calib_tokens", json_integer(cbp ? (json_int_t)cb.n_seq * CALIB_SEQ : 0));
        json_object_set_new(j, "identity_hessian_experts", json_integer(P.identity_experts));
        if (cbp)
            fprintf(stderr, "moe-pack: %lld of %lld experts had fewer than %lld calibration "
                    "tokens and used the identity Hessian\n", (long long)P.identity_experts,
                    (long long)(P.identity_experts + P.calibrated_experts),
                    (long long)o->min_tokens);
    }
    char *s = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(6));
    puts(s);
    free(s);
    json_decref(j);
out:
    if (P.w)
        moe_pack_writer_abort(P.w);
    calib_free(&cb);
    moe_scratch_free(scr);
    moe_model_kv_free(kv);
    moe_qmoe_encoder_free(P.enc);
    if (P.side)
        moe_qmoe_side_free(P.side);
    free(P.table);
    moe_pool_free(P.pool);
    moe_model_free(P.m);
    return rc;
}

int main(int argc, char **argv)
{
    struct pack_opts o;
    if (parse_args(argc, argv, &o) < 0)
        return EXIT_USAGE;
    int rc = run(&o);
    if (rc < 0) {
        fprintf(stderr, "moe-pack: %s\n", moe_err_msg());
        return 1;
    }
    return 0;
}
