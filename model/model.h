/* model: architecture config, checkpoint loading and the transformer forward
 * pass on the CPU.
 *
 * A model is opened from a Hugging Face directory (config.json + safetensors,
 * single or sharded) or a GGUF file. Large matrices stay in the file mapping;
 * only small vectors (norms, biases) are converted to fp32 copies. */
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "experts/experts.h"
#include "tokenizer/tokenizer.h"
#include "quant/quant.h"

struct moe_pool;
struct moe_pack;
struct moe_pack_writer;
struct json_t; /* jansson's json_t */

/* The architectures moed computes. Each is one row of the table in
 * model/model_arch.c (config keys in both transformers spellings, layer
 * recipe, tensors); the names are written into packs: never rename. */
enum moe_arch {
    MOE_ARCH_MIXTRAL,    /* HF MixtralForCausalLM, GGUF "llama" with experts */
    MOE_ARCH_QWEN2_MOE,  /* shared expert with sigmoid gate, q/k/v bias */
    MOE_ARCH_QWEN3_MOE,  /* per-head q/k RMSNorm, no shared expert */
    MOE_ARCH_OLMOE,      /* q/k RMSNorm over the whole projection */
    MOE_ARCH_DEEPSEEK2,  /* MLA, softmax routing (greedy or group-limited) */
    MOE_ARCH_DEEPSEEK3,  /* MLA, sigmoid + correction bias, grouped top-k (V3, R1, Kimi-K2) */
    MOE_ARCH_GLM4_MOE,   /* GLM-4.5/4.6/4.7: partial rotary, sigmoid routing */
    MOE_ARCH_GPT_OSS,    /* sinks, alternating sliding window, MXFP4 experts */
    MOE_ARCH_MINIMAX_M2, /* full q/k norm, partial rotary, sigmoid routing */
    MOE_ARCH_ERNIE4_5,   /* ERNIE-4.5 MoE: biased softmax routing, MoE layer interval */
    MOE_ARCH_DOTS1,      /* dots.llm1: DeepSeek-V3 routing, per-head q/k norm */
    MOE_ARCH_QWEN3_NEXT, /* Gated DeltaNet layers between gated attention, shared expert */
    MOE_ARCH_QWEN3_5_MOE, /* Qwen3.5/3.6-MoE text model: Qwen3-Next with split projections */
    MOE_ARCH_COUNT
};

enum moe_qk_norm {
    MOE_QK_NORM_NONE,
    MOE_QK_NORM_HEAD, /* weight [head_dim], applied per head (Qwen3-MoE) */
    MOE_QK_NORM_FULL, /* weight [heads*head_dim], over the whole vector (OLMoE) */
};

enum moe_attn_kind {
    MOE_ATTN_GQA, /* grouped-query attention */
    MOE_ATTN_MLA, /* multi-head latent attention (DeepSeek): the cache holds the latent */
};

enum moe_rope_scaling {
    MOE_ROPE_NONE,
    MOE_ROPE_LINEAR,
    MOE_ROPE_YARN,
};

enum moe_ffn_act {
    MOE_ACT_SILU,       /* down(silu(gate x) * up x) */
    MOE_ACT_SWIGLU_OAI, /* gpt-oss: clamped, gate*sigmoid(alpha*gate)*(up+1) */
};

#define MOE_MAX_LAYERS 256

struct moe_config {
    enum moe_arch arch;
    int32_t vocab;
    int32_t hidden;
    int32_t n_layers;
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;       /* q/k head size (GQA) */
    int32_t v_head_dim;     /* value head size: head_dim for GQA, v_head_dim for MLA */
    int32_t n_experts;
    int32_t top_k;
    int32_t expert_ffn;     /* intermediate size of one routed expert */
    int32_t shared_ffn;     /* shared experts' intermediate size (all of them), 0 = none */
    int32_t dense_ffn;      /* dense MLP size for layers listed as MLP-only */
    int32_t max_ctx;
    float rms_eps;
    float rope_theta;
    float clip_qkv;         /* 0 = off (OLMoE option) */
    bool norm_topk_prob;    /* renormalise the top-k routing weights to sum 1 */
    bool qkv_bias;
    bool tied_embeddings;
    bool rope_interleaved;  /* rotate adjacent pairs (2i, 2i+1), not (i, i+rd/2) */
    enum moe_qk_norm qk_norm;
    int32_t bos_id, eos_id; /* -1 if unknown */
    bool layer_dense[MOE_MAX_LAYERS]; /* true: plain MLP instead of MoE */
    /* attention beyond plain GQA */
    enum moe_attn_kind attn;
    int32_t q_lora_rank;    /* MLA: 0 = a plain q projection */
    int32_t kv_lora_rank;   /* MLA: the latent's size */
    int32_t qk_nope_dim;    /* MLA: per-head q/k dims without rope */
    int32_t qk_rope_dim;    /* MLA: the shared rope key's dims */
    bool o_bias;            /* output projection bias */
    bool attn_sinks;        /* a learned per-head logit in the softmax (gpt-oss) */
    int32_t sliding_window; /* window of the layers with layer_swa set */
    bool layer_swa[MOE_MAX_LAYERS];
    float attn_scale;       /* softmax scale of q.k (1/sqrt(qk dims), times YaRN's for MLA) */
    /* rotary embedding */
    int32_t rope_dim;       /* rotated dims per head (partial rotary: fewer than head_dim) */
    enum moe_rope_scaling rope_scaling;
    float rope_factor;      /* scaling factor (linear, YaRN, llama3) */
    int32_t rope_orig_ctx;  /* YaRN / llama3: original_max_position_embeddings */
    float yarn_beta_fast, yarn_beta_slow;
    float rope_attn_factor; /* cos/sin multiplier (YaRN's attention factor), 1 otherwise */
    bool yarn_truncate;     /* round the YaRN correction range to whole dims */
    /* routing */
    enum moe_router_kind router;
    int32_t n_group, topk_group; /* grouped top-k (0 = no groups) */
    float routed_scale;     /* routed experts' weights times this */
    float router_norm_min;  /* ERNIE: the renormalisation's denominator at least this */
    bool router_bias;       /* the router has a bias (gpt-oss) */
    bool score_bias;        /* e_score_correction_bias picks the experts */
    bool shared_gate;       /* the shared expert is scaled by sigmoid(w . x) (Qwen2-MoE) */
    /* feed-forward */
    enum moe_ffn_act act;
    float swiglu_alpha, swiglu_limit;
    bool expert_bias;       /* routed experts have biases (gpt-oss) */
    bool mlp_bias;          /* dense and shared MLPs (and the lm head) have biases */
    /* hybrid linear attention (Qwen3-Next, Qwen3.5): Gated DeltaNet layers */
    bool attn_gate;         /* q_proj also yields a per-channel output gate (sigmoid) */
    int32_t lin_k_heads, lin_v_heads; /* linear layers' key and value heads */
    int32_t lin_k_dim, lin_v_dim;     /* their head sizes */
    int32_t lin_conv;       /* the causal depthwise conv's kernel size */
    bool lin_v_tiled;       /* value head h reads key head h % k heads (llama.cpp's Qwen3.5
                             * order), not h / (v heads / k heads) */
    bool layer_linear[MOE_MAX_LAYERS]; /* true: a Gated DeltaNet layer, no KV cache */
};

/* the width of a linear layer's convolved q, k, v */
static inline int64_t moe_config_lin_conv_dim(const struct moe_config *c)
{
    return 2 * (int64_t)c->lin_k_heads * c->lin_k_dim + (int64_t)c->lin_v_heads * c->lin_v_dim;
}

const char *moe_arch_name(enum moe_arch arch);

struct moe_layer {
    float *attn_norm;                 /* [hidden] */
    struct moe_weight wq, wk, wv, wo; /* [nh*hd, H], [nkv*hd, H] x2, [H, nh*vd] */
    float *bq, *bk, *bv, *bo;         /* biases or NULL */
    float *q_norm, *k_norm;           /* see enum moe_qk_norm, or NULL */
    float *sinks;                     /* [n_heads] attention sinks, or NULL */
    /* MLA (wq is the plain q projection when there is no q LoRA) */
    struct moe_weight wq_a;           /* [q_lora, H] */
    float *q_a_norm;                  /* [q_lora] */
    struct moe_weight wq_b;           /* [nh*(nope+rope), q_lora] */
    struct moe_weight wkv_a;          /* [kv_lora + rope, H] */
    float *bq_a, *bkv_a;              /* their biases (attention_bias) or NULL */
    float *kv_a_norm;                 /* [kv_lora] */
    struct moe_weight wk_b;           /* [nh*kv_lora, nope]: head h's W_UK transposed */
    struct moe_weight wv_b;           /* [nh*v, kv_lora]: head h's W_UV */
    float *ffn_norm;                  /* [hidden] */
    struct moe_weight router;         /* [E, H] */
    float *router_b;                  /* [E] router bias (gpt-oss) or NULL */
    float *score_b;                   /* [E] e_score_correction_bias or NULL */
    struct moe_expert_weights *experts; /* [E] */
    struct moe_expert_weights shared; /* shared experts (or dense MLP), rows 0 if none */
    struct moe_weight shared_gate;    /* [1, H] sigmoid gate of the shared expert */
    /* Gated DeltaNet (layer_linear): kd = k heads * k dim, vd = v heads * v dim */
    struct moe_weight lin_qkv;        /* [2*kd + vd, H] q, k, v before the conv */
    struct moe_weight lin_z;          /* [vd, H] the output gate */
    struct moe_weight lin_b, lin_a;   /* [v heads, H] beta and decay inputs */
    float *lin_conv;                  /* [2*kd + vd][kernel] depthwise conv weights */
    float *lin_dt_bias;               /* [v heads] */
    float *lin_a_log;                 /* [v heads] decay rate A = exp(A_log) */
    float *lin_norm;                  /* [v dim] gated RMSNorm weight */
    struct moe_weight lin_out;        /* [H, vd] */
};

struct moe_model_files; /* the open checkpoint files, private to the loader */
struct moe_model_offload;

struct moe_model {
    struct moe_config cfg;
    float *rope_inv_freq;      /* [rope_dim / 2], scaling applied */
    int32_t *kv_window;        /* [n_layers] the cache's window per layer (0 = all) */
    struct moe_ffn_kind ffn;   /* the routed experts' activation */
    /* the first tensor found holding NaN or inf, once non-finite logits
     * made moed look (moe_model_find_nonfinite) */
    int nonfinite_scanned;
    char nonfinite[256];
    struct moe_weight embed;   /* [vocab, hidden] */
    struct moe_weight lm_head; /* [vocab, hidden] (the embedding when tied) */
    float *lm_head_b;          /* [vocab] its bias (ERNIE's use_bias) or NULL */
    float *final_norm;         /* [hidden] */
    struct moe_layer *layers;
    struct moe_tokenizer *tok; /* NULL when the checkpoint has none */
    struct moe_model_files *files;
    char *path;
    unsigned open_flags;                /* MOE_MODEL_OPEN_* */
    struct moe_model_offload *offload;  /* experts from a host tier (model_offload.c), or NULL */
};

/* Opens a checkpoint: a directory (Hugging Face), a .gguf file or a moed pack
 * (recognised by its magic; every checksum is verified at open, so a corrupt
 * pack is refused naming the tensor, blob or "layer L expert E").
 * Errors: negative errno, moe_err_msg() names the file and tensor. */
int moe_model_open(const char *path, struct moe_model **out);
/* With MOE_MODEL_OPEN_EXPERTS_ON_READ a pack's expert blobs are not read at
 * open (their checksums are checked as each blob is read into the host tier
 * instead, moe_model_use_offload): dense tensors and tables still are. */
#define MOE_MODEL_OPEN_EXPERTS_ON_READ 1u
int moe_model_open_flags(const char *path, unsigned flags, struct moe_model **out);

/* Serve a pack's experts from the host tier o (offload/offload.h) rather
 * than the file mapping: each MoE layer acquires the experts its tokens are
 * routed to (pruned ones never), and with prefetch it first applies the next
 * layer's router to its own FFN input and starts reading what that picks.
 * -EINVAL when m is not a pack. m owns o from then on (closed with m or by
 * the next call); NULL detaches. */
struct moe_offload;
int moe_model_use_offload(struct moe_model *m, struct moe_offload *o, bool prefetch);
/* The host tier m serves from, or NULL (file mapping). */
struct moe_offload *moe_model_offload(const struct moe_model *m);
/* score[n_layers * n_experts]: how often calibration routed to each expert
 * (the pack's meta "calib".expert_frequency, from moe-pack --calib): the
 * static hot set's ranking. -ENOENT naming the file when the pack has none. */
int moe_model_expert_scores(const struct moe_model *m, double *score);
/* What path holds, by stat and its first 8 bytes: a directory (Hugging
 * Face), a GGUF file, a moed pack, or another file (a config.json on its
 * own). Errors: negative errno, moe_err_msg() names the file. */
enum moe_model_file { MOE_FILE_DIR, MOE_FILE_GGUF, MOE_FILE_PACK, MOE_FILE_OTHER };
int moe_model_file_kind(const char *path, enum moe_model_file *kind);
/* Only the architecture config of a checkpoint, as moe_model_open would
 * read it, without its weights: a Hugging Face directory's config.json, a
 * config.json file on its own, a GGUF file's metadata or a pack's "config"
 * object. Errors: negative errno, moe_err_msg() names the file and key. */
int moe_model_config_from_path(const char *path, struct moe_config *out);
/* Only the vocabulary of a checkpoint: a directory's tokenizer.json, or a
 * GGUF file (vocabulary-only ones included). */
int moe_model_open_tokenizer(const char *path, struct moe_tokenizer **out);
void moe_model_free(struct moe_model *m);

/* The open pack of a model opened from one (its quant/meta JSON, blobs,
 * expert offsets), NULL for other checkpoints. Owned by the model. */
struct moe_pack *moe_model_pack(const struct moe_model *m);

/* ---- writing a pack (moe-pack) --------------------------------------------------------
 * Writes the "config" object, the tokenizer blobs and every dense tensor
 * (all but the routed experts) of m to w; the caller adds the experts
 * (moe_pack_writer_add_expert) and commits. Tensors keep the dtype they have
 * in the model; vectors (norms, biases) are written as the fp32 copies the
 * model holds. Canonical names (N = layer):
 *   embed, lm_head (absent when tied), final_norm,
 *   layers.N.attn_norm, layers.N.ffn_norm,
 *   layers.N.attn.q, .k, .v, .o, layers.N.attn.q_bias, .k_bias, .v_bias,
 *   layers.N.attn.q_norm, .k_norm,
 *   layers.N.router, layers.N.shared_expert.gate, .up, .down,
 *   layers.N.shared_expert_gate,                      (MoE layers)
 *   layers.N.mlp.gate, .up, .down                     (dense layers)
 * Tokenizer blobs: tokenizer.json, tokenizer_config.json, config.json and
 * generation_config.json as found beside a Hugging Face checkpoint, or
 * tokenizer.gguf: a vocabulary-only GGUF holding a GGUF source's metadata. */
int moe_model_pack_write_base(const struct moe_model *m, struct moe_pack_writer *w);

/* Re-encodes m's dense matrices as dtype (q8_0 or gq4; copies m owns, in
 * place of the ones it had), before moe_model_pack_write_base writes them
 * (moe-pack --dense): the attention projections (MLA's too), the token
 * embedding (and so a tied lm head), an untied lm head, shared experts and
 * dense-layer MLPs. Routers and the shared experts' gate keep the source's
 * precision (routing decisions are brittle), vectors stay fp32; a matrix
 * already in dtype, or whose rows are not whole blocks of it, is left as
 * it is (counted in kept; the first one named). Round to nearest, with the
 * format's reference quantiser. -EINVAL for a dtype dense matrices cannot
 * use; dtype -1 changes nothing and only counts the bytes. */
struct moe_dense_quant {
    size_t bytes; /* of those matrices, after (routers not counted) */
    int quantized, kept;
    char first_kept[128]; /* pack name of the first matrix left as it was */
    int64_t first_kept_cols;
};
int moe_model_quantize_dense(struct moe_model *m, int dtype, struct moe_dense_quant *out);

/* The parts of layer l's expert x as a pack blob holds them ("gate", "up",
 * "down", then the biases where the architecture has them): at most max,
 * returns how many. off: where the part sits in struct moe_expert_weights. */
struct moe_expert_part {
    const char *name;
    size_t off;
    const struct moe_weight *mat; /* a matrix of rows x cols */
    int64_t rows, cols;
    const float *vec;             /* or an fp32 vector of n values */
    int64_t n;
};
#define MOE_EXPERT_MAX_PARTS 6
int moe_model_expert_parts(const struct moe_model *m, int32_t l, int32_t x,
                           struct moe_expert_part *parts, int max);

/* The architecture config as the pack's "config" object: every field, arch
 * and qk_norm by name, layer_dense as an array of n_layers booleans. */
struct json_t *moe_config_to_json(const struct moe_config *cfg); /* new reference, NULL: OOM */
/* Reads it back: missing or unknown keys and wrong types are errors naming
 * the key; the result is validated. file names the source in messages. */
int moe_config_from_json(const struct json_t *o, const char *file, struct moe_config *cfg);

/* The first weight (dense tensor, or expert matrix or bias) holding a NaN
 * or an infinity, as the file it came from names it ("tensor
 * 'model.layers.3.self_attn.q_proj.weight'", "tensor
 * 'blk.5.ffn_down_exps.weight' (expert 2)", a pack's "tensor
 * 'layers.3.attn.q'" or "layer 5 expert 2 part 'down'"), or NULL when every
 * one is finite. Scans the model once and remembers the answer. */
const char *moe_model_find_nonfinite(struct moe_model *m);

/* Reads every page of every weight once, so later timings measure compute
 * rather than the first read from disk. Returns the bytes touched. */
size_t moe_model_prefault(const struct moe_model *m);

/* Bytes of weights read for one decode token (attention, router, top_k
 * experts, shared expert, lm head) and the total expert parameter count. */
size_t moe_model_active_bytes(const struct moe_model *m);

/* ---- batched forward over several sequences ------------------------------------
 * One call runs n tokens through the model with one pass over the weights:
 * token i belongs to the sequence whose cache is kvs[i], at position pos[i].
 * Tokens of one sequence must appear in position order with no gaps (a
 * prompt chunk); the cache must have room for them. */
struct moe_kv;      /* one sequence's KV cache (kv/) */
struct moe_scratch; /* activation buffers, grown to the largest batch seen */

struct moe_kv_pool;  /* blocks shared by many sequences' caches (kv/) */
struct moe_kv_params;
/* What one token of this model stores in the KV cache (MLA: the latent and
 * the rope key; a window layer's window). max_chunk: most tokens of one
 * sequence in one forward (0 = unbounded), see struct moe_kv_shape. */
struct moe_kv_shape;
void moe_model_kv_shape(const struct moe_model *m, int32_t max_chunk, struct moe_kv_shape *out);
/* The same from a config alone (window: [n_layers] or NULL) */
void moe_config_kv_shape(const struct moe_config *c, const int32_t *window, int32_t max_chunk,
                         struct moe_kv_shape *out);
/* A private exact (fp32) cache of max_ctx tokens. */
int moe_model_kv_create(const struct moe_model *m, int32_t max_ctx, struct moe_kv **out);
/* A pool of n_units blocks for this model's caches (moe_kv_seq_create),
 * forwards of any length (a server bounds them: moe_model_kv_shape). */
int moe_model_kv_pool_create(const struct moe_model *m, const struct moe_kv_params *p,
                             int64_t n_units, struct moe_kv_pool **out);
void moe_model_kv_free(struct moe_kv *kv);
int moe_scratch_create(struct moe_scratch **out);
void moe_scratch_free(struct moe_scratch *s);

/* logits: [n_logits][vocab] for the tokens logit_idx[0..n_logits) (may be 0). */
int moe_model_forward(const struct moe_model *m, struct moe_pool *pool, struct moe_scratch *s,
                      int32_t n, const int32_t *tokens, struct moe_kv *const *kvs,
                      const int32_t *pos, const int32_t *logit_idx, int32_t n_logits,
                      float *logits);

/* Per-token routing choices for one forward call: online dynamic pruning
 * (router/, docs/ALGORITHMS.md section 2) and the number of experts. Each
 * token uses its own sequence's settings, so a batch may mix them.
 *   prune[t]: token t's pruning (NULL entry = off); prune NULL: prune_all
 *     for every token (NULL = off). On a layer where a token's beta is > 0,
 *     each run of consecutive tokens of one sequence (a prompt chunk) first
 *     protects its protect_fraction most important tokens (importance
 *     ||h_i||_1 / (L - i), h_i the residual stream entering the MoE block,
 *     i the position, L the chunk's last position + 1): they keep all
 *     their experts. A decode token (a run of 1) is never protected.
 *   top_k[t]: experts for token t, 1..the model's top_k (0 or more = the
 *     model's); top_k NULL: top_k_all for every token.
 *   stats: per-layer counters accumulated (not reset) when non-NULL.
 *   faults: fault isolation (a server's batch), below; NULL: none. */
struct moe_forward_faults;
struct moe_forward_opts {
    const struct moe_prune *const *prune;
    const struct moe_prune *prune_all;
    const int32_t *top_k;
    int32_t top_k_all;
    struct moe_router_stats *stats;
    struct moe_forward_faults *faults;
};

/* Fault isolation: with opts->faults, an expert whose blob cannot be read
 * (a host tier's read error or checksum mismatch after its retries) fails
 * only the rows whose tokens were routed to it, not the whole batch. Such a
 * row gets row[t] = 1 + the index of its fault below and runs no expert
 * from then on: its hidden state, the KV it stores and its logits are
 * garbage, which the caller must discard (fail its sequence and drop that
 * cache), never sample. Every other row is computed exactly as it would be
 * without the failure, and the forward returns 0 even when every row
 * failed. Anything that cannot be pinned on rows (a dense tensor, the KV
 * pool, more than MOE_FORWARD_MAX_FAULTS failed experts in one forward)
 * still fails the whole forward with its error. row is the caller's [n]
 * array; the forward clears it and the counts first. */
#define MOE_FORWARD_MAX_FAULTS 8
#define MOE_FORWARD_FAULT_MSG 224
struct moe_forward_faults {
    int32_t *row;     /* [n]: 0 = sound, else 1 + index into fault[] */
    int32_t n_rows;   /* rows with row[t] != 0 */
    int32_t n_faults;
    struct moe_expert_fault {
        int32_t layer, expert;
        char msg[MOE_FORWARD_FAULT_MSG]; /* names the file, layer and expert */
    } fault[MOE_FORWARD_MAX_FAULTS];
};
/* moe_model_forward with routing options (opts NULL = the plain forward). */
int moe_model_forward_opts(const struct moe_model *m, struct moe_pool *pool,
                           struct moe_scratch *s, int32_t n, const int32_t *tokens,
                           struct moe_kv *const *kvs, const int32_t *pos,
                           const int32_t *logit_idx, int32_t n_logits, float *logits,
                           const struct moe_forward_opts *opts);

/* The pruning a model comes with: a pack whose meta JSON has
 * "odp": {"beta": [one number per layer, 0 = off], "protect_fraction": F}
 * gives those (then *from_pack = true); otherwise beta is default_beta on
 * the automatic layers (moe_router_prune_auto_layers) and 0 elsewhere,
 * protect_fraction MOE_PRUNE_PROTECT_DEFAULT. Dense layers are always 0.
 * A malformed "odp" object is -EINVAL naming the key. */
int moe_model_prune_defaults(const struct moe_model *m, float default_beta, struct moe_prune *out,
                             bool *from_pack);

/* ---- one layer at a time (moe-pack calibration) -------------------------------
 * x[n][hidden] = the embeddings of tokens. */
void moe_model_embed(const struct moe_model *m, const int32_t *tokens, int32_t n, float *x);
/* Sees a MoE layer's input after the FFN norm (xn [n][hidden]) and each
 * token's routing, before the experts run. Not called for dense layers. */
typedef void (*moe_ffn_observer)(void *ctx, int32_t layer, const float *xn, int32_t n,
                                 const struct moe_route *routes);
/* Runs layer l (attention, then the FFN) over the residual stream x[n][hidden]
 * in place: n tokens of one sequence at positions pos[], cached in kv. */
int moe_model_forward_layer(const struct moe_model *m, struct moe_pool *pool,
                            struct moe_scratch *S, int32_t l, int32_t n, float *x,
                            struct moe_kv *kv, const int32_t *pos, moe_ffn_observer obs,
                            void *obs_ctx);

/* ---- a single sequence (tools, tests) ------------------------------------------ */
struct moe_session {
    const struct moe_model *model;
    struct moe_pool *pool;
    struct moe_kv *kv;
    struct moe_scratch *scratch;
    int32_t max_ctx;
    int32_t n_past; /* tokens already in the cache */
    int32_t *pos, *logit_idx; /* [max_ctx] arguments for moe_model_forward */
    struct moe_kv **kvs;
    /* routing options for every later forward, set freely by the caller:
     * pruning (NULL = off), experts per token (0 = the model's) and
     * counters to accumulate into (NULL = none) */
    const struct moe_prune *prune;
    int32_t top_k;
    struct moe_router_stats *stats;
};

int moe_session_create(const struct moe_model *m, struct moe_pool *pool, int32_t max_ctx,
                       struct moe_session **out);
/* The same with a private cache of other KV settings (NULL = fp32, exact). */
int moe_session_create_kv(const struct moe_model *m, struct moe_pool *pool, int32_t max_ctx,
                          const struct moe_kv_params *kvp, struct moe_session **out);
void moe_session_free(struct moe_session *s);
void moe_session_reset(struct moe_session *s); /* empties the cache */

/* Feeds tokens[0..n) at positions n_past..n_past+n-1. logits: NULL, or
 * [n][vocab] when all_logits, else [vocab] for the last token only. */
int moe_session_forward(struct moe_session *s, const int32_t *tokens, int32_t n,
                        float *logits, bool all_logits);

#endif
