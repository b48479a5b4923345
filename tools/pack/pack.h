/* moe-pack's private pieces: calibration over the model layer by layer
 * (pack_calib.c), compressing one matrix in any expert format (pack_matrix.c)
 * and MC-MoE's statistics and bit allocation (pack_mcmoe.c). tools/moe_pack.c
 * holds the command line and the walk over layers and experts. */
#ifndef MOE_TOOLS_PACK_H
#define MOE_TOOLS_PACK_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "format/format_pack.h"
#include "model/model.h"
#include "quant/quant_qmoe.h"

struct moe_kv;
struct moe_pool;
struct moe_scratch;

enum expert_format {
    FMT_BF16, FMT_Q8, FMT_Q4, FMT_QMOE, FMT_QMOE_RTN, FMT_GPTQ1, FMT_GPTQ2, FMT_GPTQ3, FMT_GPTQ4,
    FMT_MXFP4, FMT_MCMOE, FMT_COUNT
};
extern const char *const pack_format_names[FMT_COUNT];

struct pack_opts {
    const char *model, *out, *calib;
    enum expert_format fmt;
    const char *dense;            /* --dense: "q8", "q4" or "bf16" (kept as the source has them) */
    int dense_dtype;              /* its dtype, or -1 for bf16 */
    double mcmoe_bits;            /* mcmoe:B */
    int64_t mcmoe_shuffle;        /* > 0: widths placed at random with this seed (the baseline) */
    bool mcmoe_model_scope;       /* one bit budget for all layers instead of one per layer */
    bool mcmoe_cost_paper;        /* cost F * Wt^1.5 * L (the paper's) instead of L alone */
    int64_t calib_tokens, calib_end_char, seed, min_tokens;
    double zero_bin, damp, dict_p0; /* damp < 0: the format's default */
    double odp_target;            /* ODP defaults: fraction of activations to remove, 0 = none */
    int threads;
};

/* ---- calibration ---------------------------------------------------------------- */
#define CALIB_SEQ 256

struct calib {
    int32_t *ids;      /* [n_seq][CALIB_SEQ] */
    int32_t n_seq;
    int64_t hidden;
    float *x;          /* [N][H] residual stream entering the current layer */
    float *xn;         /* [N][H] the current layer's normalised FFN inputs */
    struct moe_route *routes; /* [N] */
    int64_t cursor;    /* observer's write position, in tokens */
    struct moe_scratch *scr;
    struct moe_kv *kv;
};

int calib_load(const struct moe_model *m, const struct pack_opts *o, struct calib *cb);
void calib_free(struct calib *cb);
static inline int64_t calib_tokens(const struct calib *cb)
{
    return cb ? (int64_t)cb->n_seq * CALIB_SEQ : 0;
}
/* Runs layer l over every window. record: keep its FFN inputs and routes;
 * advance: keep its outputs as the next layer's inputs. */
int calib_run_layer(struct moe_model *m, struct moe_pool *pool, struct calib *cb, int32_t l,
                    bool record, bool advance);
/* xe[ne][H] = the recorded inputs of the tokens routed to expert e; idx[ne]
 * their token numbers and w[ne] their routing weights (idx, w may be NULL). */
int64_t calib_expert_inputs(const struct calib *cb, int32_t e, float *xe, int64_t *idx,
                            float *w);

/* ---- one matrix ------------------------------------------------------------------- */
struct matrix_spec {
    int dtype;   /* the stored dtype */
    bool gptq;   /* GPTQ with the Hessian when there is one (qmoe, gq*) */
    int bits;    /* gq widths */
};

struct packer {
    const struct pack_opts *o;
    struct moe_model *m;
    struct moe_pool *pool;
    struct moe_pack_writer *w;
    uint64_t *table;               /* qmoe decode table */
    struct moe_qmoe_encoder *enc;
    void *side;                    /* qmoe runtime table, for in-memory views */
    double dict_p0;                /* digit statistics the dictionary was built for */
    double damp;                   /* GPTQ damping in use */
    json_t *mcmoe;                 /* per-layer statistics and widths (mcmoe) */
    struct odp_fit *odp;           /* pruning curves per layer (with --calib) */
    /* MC-MoE per layer and expert: normalised frequency and routing weight,
     * loss and cost at 1/2/3 bits ([L][E][3]), widths when chosen model-wide */
    double *mc_freq, *mc_wt, *mc_loss, *mc_cost;
    uint8_t *mc_bits;
    bool mcmoe_global;
    /* totals */
    int64_t weights, zeros, identity_experts, calibrated_experts;
    int64_t copied_matrices; /* stored as the source held them (copy_matrix) */
    size_t expert_bytes;
};

struct matrix_out {
    void *data;
    size_t nbytes;
};

void weight_to_f32(const struct moe_weight *w, float *out);
/* QMoE's rounding with a zero bin of zero_bin * lo .. zero_bin * hi (0.5 is
 * QMoE's own): 2 = hi, 1 = lo, 0 = zero */
static inline uint8_t ternary_digit(float x, float lo, float hi, float zero_bin)
{
    return x > zero_bin * hi ? 2 : (x < zero_bin * lo ? 1 : 0);
}
/* Compresses W [rows][cols] as spec says into out (malloc'ed) and replaces W
 * by what the stored bytes decode to. H: summed Hessian of n inputs, or NULL
 * (plain rounding). */
int encode_matrix(struct packer *P, const struct matrix_spec *spec, float *W, int64_t rows,
                  int64_t cols, const float *H, int64_t n, struct matrix_out *out);
/* A source matrix already stored in spec's dtype (one of fixed-size rows:
 * gpt-oss's MXFP4 experts, a q8_0 GGUF, a pack's own experts) is copied into
 * out byte for byte, never requantised: 1. Anything else: 0 (encode it). */
int copy_matrix(struct packer *P, const struct matrix_spec *spec, const struct moe_weight *src,
                struct matrix_out *out);
/* A weight view of an encoded matrix (in-memory calibration of later layers). */
int view_matrix(struct packer *P, int dtype, const struct matrix_out *mo, int64_t rows,
                int64_t cols, struct moe_weight *out);

/* ---- MC-MoE ------------------------------------------------------------------------ */
/* The layer's statistics from the recorded calibration (frequency, routing
 * weight, output loss at 1/2/3 bits with only that expert rounded), the
 * optimal widths for the budget, printed and kept in P->mcmoe. */
int mcmoe_layer_widths(struct packer *P, const struct calib *cb, int32_t l, uint8_t *bits);
/* --mcmoe-scope model: every layer's statistics in a first pass over the
 * calibration text (which it leaves advanced: reload it), then the widths of
 * all layers under one budget; mcmoe_layer_widths then hands them out. */
int mcmoe_model_widths(struct packer *P, struct calib *cb);
int mcmoe_tables_alloc(struct packer *P);
void mcmoe_tables_free(struct packer *P);

/* ---- ODP defaults ------------------------------------------------------------------ */
struct odp_fit;
/* Layer l's pruning curve (activations removed and output disturbance per
 * beta) from its recorded calibration tokens, with the original experts. */
int odp_fit_layer(struct packer *P, const struct calib *cb, int32_t l);
/* The per-layer betas that remove o->odp_target of all activations at the
 * least disturbance, as the pack meta's "odp" object (NULL: nothing fitted). */
json_t *odp_fit_choose(struct packer *P);
void odp_fit_free(struct odp_fit *f);
/* {"expert_frequency": [[tokens routed to each expert] per layer]}: the
 * calibration counts the static cache policy ranks experts by (NULL: none) */
json_t *odp_fit_frequencies(const struct packer *P);

#endif
