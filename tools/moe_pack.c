/* moe-pack: converts a checkpoint into a moed pack with its routed experts in
 * one format.
 *
 *   moe-pack --model PATH --out FILE --experts FORMAT [--dense DENSE]
 *            [--calib FILE] [--calib-tokens N] [--calib-end-char C] [--seed S]
 *            [--threads N]
 *
 * FORMAT: bf16 | q8 (q8_0) | q4 (groups of 128, round to nearest) | qmoe
 * (ternary GPTQ + dictionary code) | qmoe-rtn (the same format, rounded to
 * nearest: the baseline GPTQ must beat) | gptq2/3/4 (group-wise GPTQ) |
 * mxfp4 (OCP MX FP4, ggml's rule, round to nearest) | mcmoe:B (MC-MoE mixed
 * 1/2/3-bit widths, B on average). An expert matrix the source already holds
 * in the chosen dtype (gpt-oss's MXFP4 experts packed as mxfp4, a q8_0 GGUF
 * as q8) is copied bit for bit, never requantised.
 *
 * DENSE (default q8): q8 (q8_0) | q4 (gq4, the experts' groups of 128) |
 * bf16 (as the source holds them: bf16, f16, or a GGUF's q8_0). It applies
 * to the dense matrices: attention projections (MLA's included), the token
 * embedding, an untied lm head, shared experts and dense-layer MLPs, which
 * are most of the bytes a token reads once the experts are compressed.
 * Routers and the shared experts' gate keep the source's precision (routing
 * decisions are brittle); norms, biases and sinks stay fp32. A matrix whose
 * rows are not whole blocks of the format (32 for q8, 128 for q4) keeps its
 * dtype; the pack's directory records each tensor's dtype. The dense parts
 * are quantised first, so calibration (--calib) runs through them as
 * they will be served.
 *
 * qmoe, gptq* and mcmoe with --calib run the model over the calibration text layer by layer:
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
 * written to FILE.tmp.PID and renamed at the end: an interrupted run
 * leaves no file under FILE; SIGINT, SIGTERM and SIGHUP remove the temporary
 * file too, and one that a killed run left (SIGKILL) is removed by the next
 * run, once its PID is gone. */
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
#include "model/model.h"
#include "quant/quant_gptq.h"
#include "quant/quant_gq.h"
#include "quant/quant_qmoe.h"
#include "tools/pack/pack.h"

#define EXIT_USAGE 2

static const char usage[] =
    "usage: moe-pack --model PATH --out FILE --experts FORMAT [--dense DENSE]\n"
    "                [--calib FILE] [--calib-tokens N] [--calib-end-char C] [--seed S]\n"
    "                [--threads N]\n"
    "\n"
    "FORMAT: bf16, q8, q4 (groups of 128), qmoe (ternary GPTQ + dictionary code,\n"
    "        under 1 bit per weight), qmoe-rtn (qmoe rounded to nearest, no GPTQ),\n"
    "        gptq1 / gptq2 / gptq3 / gptq4 (GPTQ, groups of 128, fp16 scale and zero),\n"
    "        mxfp4 (OCP microscaling FP4: blocks of 32 E2M1 values and a power-of-two\n"
    "        scale, 4.25 bits per weight, ggml's rounding; gpt-oss's experts),\n"
    "        mcmoe:B (MC-MoE: 1, 2 or 3 bits per expert, B bits on average, chosen\n"
    "        per layer from calibration statistics; needs --calib)\n"
    "        An expert matrix the model already stores in the chosen format (e.g.\n"
    "        gpt-oss's MXFP4 experts with --experts mxfp4) is copied, not requantised.\n"
    "\n"
    "  --dense DENSE        the dense matrices (attention, embeddings, lm head,\n"
    "                       shared experts, dense-layer MLPs): q8 (q8_0, the\n"
    "                       default), q4 (groups of 128, as the experts' q4) or\n"
    "                       bf16 (kept as the source holds them). Routers, norms\n"
    "                       and biases are never quantised; a matrix whose rows\n"
    "                       are not whole blocks (32 for q8, 128 for q4) is kept.\n"
    "                       (No q6: moed has no 6-bit format.)\n"
    "  --calib FILE         calibration text for qmoe, gptq*, mcmoe (needs the model's\n"
    "                       tokenizer);\n"
    "                       without it every expert is rounded to nearest\n"
    "  --calib-tokens N     calibration tokens (default 16384), in windows of 256\n"
    "                       picked at random (--seed) from the text\n"
    "  --calib-end-char C   use only the text before character C (keep validation\n"
    "                       text out of calibration)\n"
    "  --min-tokens N       experts routed fewer tokens get the identity Hessian\n"
    "                       (default 16)\n"
    "  --damp D             GPTQ damping, a fraction of mean(diag H) (default 4 for\n"
    "                       qmoe, 0.01 for gptq* and mcmoe).\n"
    "                       QMoE's 0.1 gives the lowest error, but its error feedback\n"
    "                       lowers the zero fraction (tiny-moe: 85% -> 78%, 1.15\n"
    "                       bits/weight); stronger damping keeps the code under 1 bit\n"
    "  --zero-bin T         round to zero within T*lo .. T*hi (default 0.5, QMoE's)\n"
    "  --dict-p0 P|auto     digit statistics the dictionary is built for (QMoE: 0.885;\n"
    "                       default auto: measured on the first MoE layer)\n"
    "  --odp-target F       with --calib (any format): fit online dynamic pruning's\n"
    "                       per-layer betas to remove the fraction F of expert\n"
    "                       activations at the least output disturbance (default\n"
    "                       0.2; 0 = none); stored in the pack, used by moed's\n"
    "                       [router] odp = auto\n"
    "  --mcmoe-scope S      mcmoe: model (default) gives all layers one budget of\n"
    "                       B bits per expert (each layer still with a 3- and a\n"
    "                       2-bit expert), so insensitive layers give bits to\n"
    "                       others; layer solves each layer's integer programme\n"
    "                       under B bits per expert (the paper's)\n"
    "  --mcmoe-cost C       mcmoe: loss (default): an expert's cost at b bits is\n"
    "                       L[b], the MoE output change over the calibration\n"
    "                       tokens, which already weighs how often and how\n"
    "                       strongly it is routed; paper: F * Wt^1.5 * L[b]\n"
    "  --mcmoe-shuffle S    mcmoe: the optimum's widths shuffled among each layer's\n"
    "                       experts (shuffle seed S): the same bytes without the statistics,\n"
    "                       the baseline that shows what the allocation buys\n"
    "  --seed S             window choice (default 1)\n"
    "  --threads N          worker threads (default: all cores)\n";

const char *const pack_format_names[FMT_COUNT] = {
    "bf16", "q8", "q4", "qmoe", "qmoe-rtn", "gptq1", "gptq2", "gptq3", "gptq4", "mxfp4", "mcmoe"};

static bool needs_calib(enum expert_format f)
{
    return f == FMT_QMOE || f == FMT_GPTQ1 || f == FMT_GPTQ2 || f == FMT_GPTQ3 || f == FMT_GPTQ4 ||
           f == FMT_MCMOE;
}

static int parse_args(int argc, char **argv, struct pack_opts *o)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},        {"out", required_argument, 0, 'o'},
        {"experts", required_argument, 0, 'e'},      {"calib", required_argument, 0, 'c'},
        {"calib-tokens", required_argument, 0, 'n'}, {"calib-end-char", required_argument, 0, 'E'},
        {"seed", required_argument, 0, 's'},         {"threads", required_argument, 0, 't'},
        {"min-tokens", required_argument, 0, 'M'},   {"zero-bin", required_argument, 0, 'Z'},
        {"damp", required_argument, 0, 'D'},         {"dict-p0", required_argument, 0, 'P'},
        {"odp-target", required_argument, 0, 'O'},   {"mcmoe-shuffle", required_argument, 0, 'S'},
        {"mcmoe-scope", required_argument, 0, 'G'}, {"mcmoe-cost", required_argument, 0, 'C'},
        {"dense", required_argument, 0, 'd'},       {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    memset(o, 0, sizeof(*o));
    o->fmt = -1;
    o->dense = "q8";
    o->dense_dtype = MOE_DTYPE_Q8_0;
    o->calib_tokens = 16384;
    o->calib_end_char = -1;
    o->seed = 1;
    o->min_tokens = 16;
    o->zero_bin = 0.5;
    o->damp = -1; /* the format's default: qmoe 4 (see the usage text), gptq/mcmoe 0.01 */
    o->dict_p0 = 0; /* auto */
    o->odp_target = 0.2;
    o->mcmoe_model_scope = true;
    int c;
    int64_t v;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        const char *name = moe_cli_opt_name(longopts, c);
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'o': o->out = optarg; break;
        case 'c': o->calib = optarg; break;
        case 'd':
            if (!strcmp(optarg, "q8") || !strcmp(optarg, "q4") || !strcmp(optarg, "bf16")) {
                o->dense = optarg;
                o->dense_dtype = optarg[1] == '8' ? MOE_DTYPE_Q8_0
                                 : optarg[1] == '4' ? MOE_DTYPE_GQ4 : -1;
                break;
            }
            fprintf(stderr, "moe-pack: --dense: unknown format '%s' (q8, q4 or bf16)\n", optarg);
            return -1;
        case 'e':
            for (int i = 0; i < FMT_MCMOE; i++)
                if (!strcmp(optarg, pack_format_names[i]))
                    o->fmt = (enum expert_format)i;
            if (!strncmp(optarg, "mcmoe:", 6)) {
                if (moe_cli_number("moe-pack", "experts mcmoe:B", optarg + 6, 1.0, 3.0,
                                   &o->mcmoe_bits))
                    return -1;
                o->fmt = FMT_MCMOE;
            }
            if ((int)o->fmt < 0) {
                fprintf(stderr, "moe-pack: --experts: unknown format '%s' (bf16, q8, q4, qmoe, "
                        "qmoe-rtn, gptq1, gptq2, gptq3, gptq4, mxfp4, mcmoe:B)\n", optarg);
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
        case 'G':
            if (strcmp(optarg, "layer") && strcmp(optarg, "model")) {
                fprintf(stderr, "moe-pack: --mcmoe-scope: '%s' is neither layer nor model\n", optarg);
                return -1;
            }
            o->mcmoe_model_scope = !strcmp(optarg, "model");
            break;
        case 'C':
            if (strcmp(optarg, "loss") && strcmp(optarg, "paper")) {
                fprintf(stderr, "moe-pack: --mcmoe-cost: '%s' is neither loss nor paper\n", optarg);
                return -1;
            }
            o->mcmoe_cost_paper = !strcmp(optarg, "paper");
            break;
        case 'S': if (moe_cli_integer("moe-pack", name, optarg, 1, INT64_MAX, &o->mcmoe_shuffle)) return -1; break;
        case 'O': if (moe_cli_number("moe-pack", name, optarg, 0, 0.9, &o->odp_target)) return -1; break;
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

/* ---- one expert ---------------------------------------------------------------------- */

/* How expert e of a layer is stored: the format's one spec, or the width
 * MC-MoE chose for it. */
static struct matrix_spec expert_spec(const struct pack_opts *o, const uint8_t *widths, int32_t e)
{
    switch (o->fmt) {
    case FMT_BF16: return (struct matrix_spec){MOE_DTYPE_BF16, false, 16};
    case FMT_Q8: return (struct matrix_spec){MOE_DTYPE_Q8_0, false, 8};
    case FMT_Q4: return (struct matrix_spec){MOE_DTYPE_GQ4, false, 4};
    case FMT_QMOE: return (struct matrix_spec){MOE_DTYPE_QMOE, true, 0};
    case FMT_QMOE_RTN: return (struct matrix_spec){MOE_DTYPE_QMOE, false, 0};
    case FMT_GPTQ1: return (struct matrix_spec){MOE_DTYPE_GQ1, true, 1};
    case FMT_GPTQ2: return (struct matrix_spec){MOE_DTYPE_GQ2, true, 2};
    case FMT_GPTQ3: return (struct matrix_spec){MOE_DTYPE_GQ3, true, 3};
    case FMT_GPTQ4: return (struct matrix_spec){MOE_DTYPE_GQ4, true, 4};
    case FMT_MXFP4: return (struct matrix_spec){MOE_DTYPE_MXFP4, false, 4};
    default: return (struct matrix_spec){moe_gq_dtype(widths[e]), true, widths[e]};
    }
}

/* src as it is stored when it already is in spec's dtype (W, its decoded
 * values, is then exactly what the copy holds), else W encoded */
static int copy_or_encode(struct packer *P, const struct matrix_spec *spec,
                          const struct moe_weight *src, float *W, bool need_w, const float *Hs,
                          int64_t ne, struct matrix_out *out)
{
    int rc = copy_matrix(P, spec, src, out);
    if (rc < 0)
        return rc;
    /* decoded only to encode, or for the calibration after (as stored) */
    if (rc == 0 || need_w)
        weight_to_f32(src, W);
    return rc ? 0 : encode_matrix(P, spec, W, src->rows, src->cols, Hs, ne, out);
}

/* Compresses one expert. xe: its calibration inputs [ne][H] (NULL without
 * calibration). parts[] get the stored matrices. */
static int pack_expert(struct packer *P, const struct matrix_spec *spec,
                       const struct moe_expert_weights *ew, const float *xe, int64_t ne,
                       struct matrix_out parts[3])
{
    int64_t H = ew->gate.cols, F = ew->gate.rows;
    bool calibrated = spec->gptq && xe && ne >= P->o->min_tokens && P->o->min_tokens > 0;
    if (spec->gptq && xe) {
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
    if ((rc = copy_or_encode(P, spec, &ew->gate, Wg, calibrated, H1, ne, &parts[0])) < 0 ||
        (rc = copy_or_encode(P, spec, &ew->up, Wu, calibrated, H1, ne, &parts[1])) < 0)
        goto out;
    if (calibrated) { /* the down projection sees the compressed gate/up's output */
        struct moe_expert_weights cw = {
            .gate = {MOE_DTYPE_F32, F, H, (size_t)H * 4, Wg, 0, NULL},
            .up = {MOE_DTYPE_F32, F, H, (size_t)H * 4, Wu, 0, NULL},
            .b_gate = ew->b_gate, .b_up = ew->b_up};
        moe_expert_ffn_hidden(P->pool, &cw, &P->m->ffn, xe, (int32_t)ne, a, u);
        moe_gptq_hessian_add(P->pool, H2, a, ne, F);
    }
    rc = copy_or_encode(P, spec, &ew->down, Wd, false, H2, ne, &parts[2]);
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

/* ---- the whole model --------------------------------------------------------------------- */

/* The next layer's inputs come through this layer's compressed experts. */
static int advance_compressed(struct packer *P, struct calib *cb, int32_t l,
                              const struct matrix_spec *specs, struct matrix_out (*parts)[3])
{
    struct moe_model *m = P->m;
    int32_t E = m->cfg.n_experts;
    struct moe_expert_weights *keep = m->layers[l].experts;
    struct moe_expert_weights *q = calloc((size_t)E, sizeof(*q));
    int rc = q ? 0 : moe_err(-ENOMEM, "out of memory");
    for (int32_t e = 0; e < E && rc == 0; e++) {
        const struct moe_expert_weights *ew = &keep[e];
        int dt = specs[e].dtype;
        q[e].b_gate = ew->b_gate; /* biases stay fp32 */
        q[e].b_up = ew->b_up;
        q[e].b_down = ew->b_down;
        if ((rc = view_matrix(P, dt, &parts[e][0], ew->gate.rows, ew->gate.cols, &q[e].gate)) < 0 ||
            (rc = view_matrix(P, dt, &parts[e][1], ew->up.rows, ew->up.cols, &q[e].up)) < 0 ||
            (rc = view_matrix(P, dt, &parts[e][2], ew->down.rows, ew->down.cols, &q[e].down)) < 0)
            break;
    }
    if (rc == 0) {
        m->layers[l].experts = q;
        rc = calib_run_layer(m, P->pool, cb, l, false, true);
        m->layers[l].experts = keep;
    }
    free(q);
    return rc;
}

static int pack_layer(struct packer *P, struct calib *cb, int32_t l)
{
    struct moe_model *m = P->m;
    const struct moe_config *c = &m->cfg;
    int32_t E = c->n_experts;
    int64_t H = c->hidden, N = calib_tokens(cb);
    int rc = 0;
    if (cb && (rc = calib_run_layer(m, P->pool, cb, l, true, false)) < 0)
        return rc;
    float *xe = cb ? malloc((size_t)N * H * sizeof(float)) : NULL;
    struct matrix_out(*parts)[3] = calloc((size_t)E, sizeof(*parts));
    struct matrix_spec *specs = calloc((size_t)E, sizeof(*specs));
    uint8_t *widths = calloc((size_t)E, 1);
    if ((cb && !xe) || !parts || !specs || !widths) {
        rc = moe_err(-ENOMEM, "out of memory");
        goto out;
    }
    if (P->o->fmt == FMT_MCMOE && (rc = mcmoe_layer_widths(P, cb, l, widths)) < 0)
        goto out;
    if (cb && (rc = odp_fit_layer(P, cb, l)) < 0) /* ODP curves, routing counts */
        goto out;
    for (int32_t e = 0; e < E && rc == 0; e++) {
        const struct moe_expert_weights *ew = &m->layers[l].experts[e];
        int64_t ne = cb ? calib_expert_inputs(cb, e, xe, NULL, NULL) : 0;
        specs[e] = expert_spec(P->o, widths, e);
        if ((rc = pack_expert(P, &specs[e], ew, cb ? xe : NULL, ne, parts[e])) < 0)
            break;
        static const char *const names[3] = {"gate", "up", "down"};
        const struct moe_weight *src[3] = {&ew->gate, &ew->up, &ew->down};
        struct moe_pack_part pp[MOE_EXPERT_MAX_PARTS];
        for (int i = 0; i < 3; i++) {
            pp[i] = (struct moe_pack_part){names[i], specs[e].dtype, src[i]->rows, src[i]->cols,
                                           parts[e][i].data, parts[e][i].nbytes};
            P->expert_bytes += parts[e][i].nbytes;
            P->weights += src[i]->rows * src[i]->cols;
        }
        /* the architecture's expert biases (gpt-oss), fp32 beside the matrices */
        struct moe_expert_part xp[MOE_EXPERT_MAX_PARTS];
        int nxp = moe_model_expert_parts(m, l, e, xp, MOE_EXPERT_MAX_PARTS), np = 3;
        for (int i = 0; i < nxp; i++)
            if (xp[i].vec)
                pp[np++] = (struct moe_pack_part){xp[i].name, MOE_DTYPE_F32, 1, xp[i].n,
                                                  xp[i].vec, (size_t)xp[i].n * sizeof(float)};
        rc = moe_pack_writer_add_expert(P->w, l, e, pp, (size_t)np);
    }
    if (rc == 0 && cb && l + 1 < c->n_layers)
        rc = advance_compressed(P, cb, l, specs, parts);
out:
    for (int32_t e = 0; parts && e < E; e++)
        for (int i = 0; i < 3; i++)
            free(parts[e][i].data);
    free(parts);
    free(specs);
    free(widths);
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
                for (int64_t k = 0; k < cols; k++)
                    zeros += ternary_digit(W[r * cols + k], lo, hi, (float)P->o->zero_bin) == 0;
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

static bool is_qmoe(enum expert_format f)
{
    return f == FMT_QMOE || f == FMT_QMOE_RTN;
}

static json_t *quant_json(const struct packer *P, const struct calib *cb)
{
    const struct pack_opts *o = P->o;
    json_t *j = json_pack("{s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:I}", "experts",
                          pack_format_names[o->fmt], "dense", o->dense, "gptq",
                          needs_calib(o->fmt) && cb,
                          "calib_tokens", (json_int_t)calib_tokens(cb), "seed",
                          (json_int_t)o->seed, "identity_hessian_experts",
                          (json_int_t)P->identity_experts, "calibrated_experts",
                          (json_int_t)P->calibrated_experts, "copied_matrices",
                          (json_int_t)P->copied_matrices);
    if (needs_calib(o->fmt))
        json_object_set_new(j, "damp", json_real(P->damp));
    if (is_qmoe(o->fmt)) {
        json_object_set_new(j, "zero_bin", json_real(o->zero_bin));
        json_object_set_new(j, "dict_p_zero", json_real(P->dict_p0));
    }
    if (o->fmt == FMT_MCMOE)
        json_object_set_new(j, "mcmoe_bits", json_real(o->mcmoe_bits));
    return j;
}

static int run(const struct pack_opts *o)
{
    double t0 = moe_now_s();
    struct packer P = {.o = o};
    struct calib cb = {0}, *cbp = NULL;
    int rc;
    if ((rc = moe_model_open(o->model, &P.m)) < 0)
        return rc;
    const struct moe_config *c = &P.m->cfg;
    /* first: calibration then sees the dense parts as they will be served */
    struct moe_dense_quant dq;
    if ((rc = moe_model_quantize_dense(P.m, o->dense_dtype, &dq)) < 0)
        goto out;
    if (o->dense_dtype >= 0) {
        fprintf(stderr, "moe-pack: dense: %d matrices as %s", dq.quantized,
                moe_dtype_name(o->dense_dtype));
        if (dq.kept)
            fprintf(stderr, ", %d kept as they were (rows not whole %s blocks: first %s, "
                    "%lld columns)", dq.kept, moe_dtype_name(o->dense_dtype), dq.first_kept,
                    (long long)dq.first_kept_cols);
        fputc('\n', stderr);
    }
    P.damp = o->damp >= 0 ? o->damp : (is_qmoe(o->fmt) ? 4.0 : 0.01);
    if ((P.mcmoe = json_array()) == NULL || (rc = moe_pool_create(o->threads, &P.pool)) < 0)
        goto out;
    if (o->fmt == FMT_MCMOE && !o->calib) {
        rc = moe_err(-EINVAL, "--experts mcmoe:B needs --calib: the bit allocation comes from "
                     "calibration statistics");
        goto out;
    }
    if (o->calib && !needs_calib(o->fmt))
        fprintf(stderr, "moe-pack: note: %s rounds to nearest; --calib gives the ODP defaults "
                "and routing statistics only\n", pack_format_names[o->fmt]);
    if (o->calib) {
        if ((rc = calib_load(P.m, o, &cb)) < 0)
            goto out;
        cbp = &cb;
        fprintf(stderr, "moe-pack: calibration: %d windows of %d tokens from %s\n", cb.n_seq,
                CALIB_SEQ, o->calib);
        if (o->fmt == FMT_MCMOE && (rc = mcmoe_tables_alloc(&P)) < 0)
            goto out;
        if (o->fmt == FMT_MCMOE && o->mcmoe_model_scope) {
            if ((rc = mcmoe_model_widths(&P, &cb)) < 0)
                goto out;
            calib_free(&cb); /* the pass left it at the last layer: start over */
            memset(&cb, 0, sizeof(cb));
            if ((rc = calib_load(P.m, o, &cb)) < 0)
                goto out;
        }
    } else if (needs_calib(o->fmt)) {
        fprintf(stderr, "moe-pack: note: no --calib: every expert gets the identity Hessian "
                "(plain rounding)\n");
    }
    if ((rc = moe_pack_writer_open(o->out, &P.w)) < 0)
        goto out;
    /* the directory in front of the data (about 300 bytes an expert, some per
     * tensor): a truncated pack can still say which expert it lost */
    size_t header_room = ((size_t)64 << 10) + (size_t)1024 * (size_t)c->n_layers *
                                                   (size_t)(c->n_experts + 16);
    if ((rc = moe_pack_writer_reserve_header(P.w, header_room)) < 0 ||
        (rc = moe_model_pack_write_base(P.m, P.w)) < 0)
        goto out;
    if (is_qmoe(o->fmt) && (rc = qmoe_setup(&P)) < 0)
        goto out;

    int32_t moe_layers = 0, done = 0;
    for (int32_t l = 0; l < c->n_layers; l++)
        moe_layers += !c->layer_dense[l];
    for (int32_t l = 0; l < c->n_layers; l++) {
        if (c->layer_dense[l]) { /* a plain MLP: no experts; calibration passes through */
            if (cbp && (rc = calib_run_layer(P.m, P.pool, cbp, l, false, true)) < 0)
                goto out;
            continue;
        }
        if ((rc = pack_layer(&P, cbp, l)) < 0)
            goto out;
        done++;
        double el = moe_now_s() - t0;
        fprintf(stderr, "moe-pack: layer %d/%d: %d experts as %s, %.3f bits/weight so far, "
                "%.1f s, ETA %.0f s\n", l + 1, c->n_layers, c->n_experts,
                pack_format_names[o->fmt], 8.0 * (double)P.expert_bytes / (double)P.weights, el,
                el / done * (moe_layers - done));
    }
    if ((rc = moe_pack_writer_set_json(P.w, "quant", quant_json(&P, cbp))) < 0)
        goto out;
    json_t *meta = json_object(), *odp = odp_fit_choose(&P);
    if (o->fmt == FMT_MCMOE)
        json_object_set(meta, "mcmoe", P.mcmoe);
    if (odp)
        json_object_set_new(meta, "odp", odp);
    json_t *freq = odp_fit_frequencies(&P);
    if (freq)
        json_object_set_new(meta, "calib", freq);
    if (json_object_size(meta) && (rc = moe_pack_writer_set_json(P.w, "meta", meta)) < 0)
        goto out;
    if (!json_object_size(meta))
        json_decref(meta);
    rc = moe_pack_writer_commit(P.w); /* frees the writer, success or not */
    P.w = NULL;
    if (rc < 0)
        goto out;

    size_t pack_bytes = 0;
    FILE *f = fopen(o->out, "rb");
    if (f) {
        fseek(f, 0, SEEK_END);
        pack_bytes = (size_t)ftell(f);
        fclose(f);
    }
    json_t *j = json_pack("{s:s, s:s, s:I, s:i, s:i, s:f, s:I, s:I, s:I, s:I, s:f}", "experts",
                          pack_format_names[o->fmt], "dense", o->dense, "dense_bytes",
                          (json_int_t)dq.bytes, "dense_quantized", dq.quantized, "dense_kept",
                          dq.kept, "expert_bits_per_weight",
                          8.0 * (double)P.expert_bytes / (double)P.weights, "expert_bytes",
                          (json_int_t)P.expert_bytes, "expert_weights", (json_int_t)P.weights,
                          "copied_matrices", (json_int_t)P.copied_matrices, "pack_bytes",
                          (json_int_t)pack_bytes, "seconds", moe_now_s() - t0);
    if (is_qmoe(o->fmt)) {
        json_object_set_new(j, "zero_fraction", json_real((double)P.zeros / (double)P.weights));
        json_object_set_new(j, "dict_p_zero", json_real(P.dict_p0));
        json_object_set_new(j, "decode_table_bytes",
                            json_integer(MOE_QMOE_DICT_SIZE * sizeof(uint64_t)));
    }
    if (o->fmt == FMT_MCMOE)
        json_object_set_new(j, "mcmoe_bits", json_real(o->mcmoe_bits));
    if (needs_calib(o->fmt)) {
        json_object_set_new(j, "calib_tokens", json_integer(calib_tokens(cbp)));
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
    if (cbp)
        calib_free(&cb);
    json_decref(P.mcmoe);
    odp_fit_free(P.odp);
    mcmoe_tables_free(&P);
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
    /* before any temporary file exists: SIGINT/SIGTERM/SIGHUP remove it */
    int rc = moe_pack_writer_cleanup_on_signal();
    if (rc == 0) {
        /* what killed runs (SIGKILL, OOM) left: never a live process's */
        int n = moe_pack_writer_clean_stale(o.out);
        if (n > 0)
            fprintf(stderr, "moe-pack: removed %d stale temporary file%s of %s\n", n,
                    n == 1 ? "" : "s", o.out);
        rc = run(&o);
    }
    if (rc < 0) {
        fprintf(stderr, "moe-pack: %s\n", moe_err_msg());
        return 1;
    }
    return 0;
}
