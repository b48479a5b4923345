/* Every tensor an architecture may hold, one row each: where it goes in the
 * model, its names in a Hugging Face checkpoint, a GGUF file (llama.cpp's
 * converter's names) and a moed pack, its shape and the condition under
 * which a model has it. The three loaders and the pack writer walk this one
 * table, so the names written are the names read and adding an
 * architecture means adding rows.
 *
 * Names: {L} is the layer, {E} the expert; in Hugging Face names {moe},
 * {sh}, {g}, {u} and {d} are the architecture's module names (model_arch.c:
 * "mlp" or "block_sparse_moe", "shared_expert(s)", the expert matrices'
 * names). A row with no name for a source does not exist there (NULL). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "model/model_arch.h"
#include "model/model_int.h"

/* sizes of a dimension, from the config */
enum dim {
    D_1, D_H, D_V, D_NQ, D_NKV, D_NVO, D_HD, D_NH, D_E, D_F, D_FS, D_FD,
    D_QL, D_KVL, D_KVA, D_KB, D_NOPE, D_VB,
    D_NQW, D_LQKV, D_LVD, D_LVH, D_LCONV, D_LVDIM,
};

static int64_t dim(const struct moe_config *c, enum dim d)
{
    switch (d) {
    case D_1: return 1;
    case D_H: return c->hidden;
    case D_V: return c->vocab;
    case D_NQ: return (int64_t)c->n_heads * c->head_dim;
    case D_NKV: return (int64_t)c->n_kv_heads * c->head_dim;
    case D_NVO: return (int64_t)c->n_heads * c->v_head_dim;
    case D_HD: return c->head_dim;
    case D_NH: return c->n_heads;
    case D_E: return c->n_experts;
    case D_F: return c->expert_ffn;
    case D_FS: return c->shared_ffn;
    case D_FD: return c->dense_ffn;
    case D_QL: return c->q_lora_rank;
    case D_KVL: return c->kv_lora_rank;
    case D_KVA: return (int64_t)c->kv_lora_rank + c->qk_rope_dim;
    case D_KB: return (int64_t)c->n_heads * c->kv_lora_rank;
    case D_NOPE: return c->qk_nope_dim;
    case D_VB: return (int64_t)c->n_heads * c->v_head_dim;
    case D_NQW: return (int64_t)c->n_heads * c->head_dim * (c->attn_gate ? 2 : 1);
    case D_LQKV: return moe_config_lin_conv_dim(c);
    case D_LVD: return (int64_t)c->lin_v_heads * c->lin_v_dim;
    case D_LVH: return c->lin_v_heads;
    case D_LCONV: return moe_config_lin_conv_dim(c) * c->lin_conv;
    case D_LVDIM: return c->lin_v_dim;
    }
    return 0;
}

/* when a model has the tensor */
enum cond {
    C_ALL, C_UNTIED, C_LM_BIAS, C_WQ, C_GQA, C_GQA_BIAS, C_O_BIAS, C_QKN_HEAD, C_QKN_FULL, C_SINKS,
    C_MLA, C_QLORA, C_QA_BIAS, C_KVA_BIAS, C_DENSE, C_DENSE_BIAS, C_MOE, C_SHARED,
    C_SHARED_BIAS, C_SHARED_GATE, C_ROUTER_BIAS, C_SCORE_BIAS, C_EXPERT_BIAS,
    C_ATTN, /* every attention layer (not a linear one) */
    C_LIN,  /* a Gated DeltaNet layer */
};

/* conditions of the attention's own tensors, which linear layers lack */
static bool attn_only(enum cond k)
{
    return (k >= C_WQ && k <= C_KVA_BIAS) || k == C_ATTN;
}

static bool cond_ok(const struct moe_config *c, int32_t l, enum cond k)
{
    bool mla = c->attn == MOE_ATTN_MLA, dense = l >= 0 && c->layer_dense[l];
    bool lin = l >= 0 && c->layer_linear[l];
    if (lin && attn_only(k))
        return false;
    switch (k) {
    case C_ALL: return true;
    case C_UNTIED: return !c->tied_embeddings;
    case C_LM_BIAS: return c->mlp_bias && c->arch == MOE_ARCH_ERNIE4_5;
    case C_WQ: return !mla || c->q_lora_rank == 0;
    case C_GQA: return !mla;
    case C_GQA_BIAS: return !mla && c->qkv_bias;
    case C_O_BIAS: return c->o_bias;
    case C_QKN_HEAD: return c->qk_norm == MOE_QK_NORM_HEAD;
    case C_QKN_FULL: return c->qk_norm == MOE_QK_NORM_FULL;
    case C_SINKS: return c->attn_sinks;
    case C_MLA: return mla;
    case C_QLORA: return mla && c->q_lora_rank > 0;
    case C_QA_BIAS: return mla && c->q_lora_rank > 0 && c->qkv_bias;
    case C_KVA_BIAS: return mla && c->qkv_bias;
    case C_DENSE: return dense;
    case C_DENSE_BIAS: return dense && c->mlp_bias;
    case C_MOE: return !dense;
    case C_SHARED: return !dense && c->shared_ffn > 0;
    case C_SHARED_BIAS: return !dense && c->shared_ffn > 0 && c->mlp_bias;
    case C_SHARED_GATE: return !dense && c->shared_ffn > 0 && c->shared_gate;
    case C_ROUTER_BIAS: return !dense && c->router_bias;
    case C_SCORE_BIAS: return !dense && c->score_bias;
    case C_EXPERT_BIAS: return !dense && c->expert_bias;
    case C_ATTN: return true;
    case C_LIN: return lin;
    }
    return false;
}

/* what a row binds: a matrix, a matrix that routes (a router, the shared
 * experts' gate: kept at the source's precision by moe_model_quantize_dense,
 * since routing decisions are brittle), an fp32 vector, or one of every
 * expert's */
enum kind { K_MAT, K_ROUTE, K_VEC, K_EXP, K_EXPV };
enum scope { S_MODEL, S_LAYER };

/* Hugging Face layouts that need a copy to become moed's */
enum xform {
    X_NONE,
    X_KB,       /* DeepSeek kv_b_proj -> head h's W_UK transposed [kv_lora, nope] */
    X_VB,       /* DeepSeek kv_b_proj -> head h's W_UV [v, kv_lora] */
    X_GU_GATE,  /* gpt-oss gate_up_proj [E, H, 2F] (in x out, gate/up interleaved) -> gate */
    X_GU_UP,    /*   ... -> up */
    X_DOWN_T,   /* gpt-oss down_proj [E, F, H] (in x out) -> [H, F] */
    X_GUB_GATE, /* gpt-oss gate_up_proj_bias [E, 2F] -> gate bias */
    X_GUB_UP,   /*   ... -> up bias */
    X_QKVZ_QKV, /* Qwen3-Next in_proj_qkvz, per key head [q k v z] -> [q.. k.. v..] */
    X_QKVZ_Z,   /*   ... -> [z..] */
    X_BA_B,     /* Qwen3-Next in_proj_ba, per key head [b a] -> [b..] */
    X_BA_A,     /*   ... -> [a..] */
    X_FLAT,     /* a vector stored as a matrix (the conv [C, 1, K] or [C, K]) */
    X_A_LOG,    /* GGUF's ssm_a holds A = -exp(A_log): back to A_log */
};

#define ARCH(a) (1u << MOE_ARCH_##a)
#define ALL_ARCHS 0u

struct tensor_row {
    const char *pack, *hf, *gguf;
    uint8_t kind, scope, rows, cols, cond, xform;
    uint16_t off;  /* in struct moe_model, moe_layer or moe_expert_weights */
    uint32_t archs; /* ALL_ARCHS or a set of ARCH() */
};

#define MOD(field) offsetof(struct moe_model, field)
#define LAY(field) offsetof(struct moe_layer, field)
#define EXW(field) offsetof(struct moe_expert_weights, field)
#define SHARED(field) (offsetof(struct moe_layer, shared) + offsetof(struct moe_expert_weights, field))

#define P "model.layers.{L}."
static const struct tensor_row table[] = {
    /* pack name, Hugging Face, GGUF, kind, scope, rows, cols, condition, xform, where, archs */
    {"embed", "model.embed_tokens.weight", "token_embd.weight", K_MAT, S_MODEL, D_V, D_H, C_ALL,
     X_NONE, MOD(embed), ALL_ARCHS},
    {"lm_head", "lm_head.weight", "output.weight", K_MAT, S_MODEL, D_V, D_H, C_UNTIED, X_NONE,
     MOD(lm_head), ALL_ARCHS},
    {"lm_head_bias", "lm_head.bias", "output.bias", K_VEC, S_MODEL, D_V, 0, C_LM_BIAS, X_NONE,
     MOD(lm_head_b), ALL_ARCHS},
    {"final_norm", "model.norm.weight", "output_norm.weight", K_VEC, S_MODEL, D_H, 0, C_ALL,
     X_NONE, MOD(final_norm), ALL_ARCHS},
    /* attention */
    {"layers.{L}.attn_norm", P "input_layernorm.weight", "blk.{L}.attn_norm.weight", K_VEC,
     S_LAYER, D_H, 0, C_ALL, X_NONE, LAY(attn_norm), ALL_ARCHS},
    {"layers.{L}.attn.q", P "self_attn.q_proj.weight", "blk.{L}.attn_q.weight", K_MAT, S_LAYER,
     D_NQW, D_H, C_WQ, X_NONE, LAY(wq), ALL_ARCHS},
    {"layers.{L}.attn.k", P "self_attn.k_proj.weight", "blk.{L}.attn_k.weight", K_MAT, S_LAYER,
     D_NKV, D_H, C_GQA, X_NONE, LAY(wk), ALL_ARCHS},
    {"layers.{L}.attn.v", P "self_attn.v_proj.weight", "blk.{L}.attn_v.weight", K_MAT, S_LAYER,
     D_NKV, D_H, C_GQA, X_NONE, LAY(wv), ALL_ARCHS},
    {"layers.{L}.attn.o", P "self_attn.o_proj.weight", "blk.{L}.attn_output.weight", K_MAT,
     S_LAYER, D_H, D_NVO, C_ATTN, X_NONE, LAY(wo), ALL_ARCHS},
    {"layers.{L}.attn.q_bias", P "self_attn.q_proj.bias", "blk.{L}.attn_q.bias", K_VEC, S_LAYER,
     D_NQ, 0, C_GQA_BIAS, X_NONE, LAY(bq), ALL_ARCHS},
    {"layers.{L}.attn.k_bias", P "self_attn.k_proj.bias", "blk.{L}.attn_k.bias", K_VEC, S_LAYER,
     D_NKV, 0, C_GQA_BIAS, X_NONE, LAY(bk), ALL_ARCHS},
    {"layers.{L}.attn.v_bias", P "self_attn.v_proj.bias", "blk.{L}.attn_v.bias", K_VEC, S_LAYER,
     D_NKV, 0, C_GQA_BIAS, X_NONE, LAY(bv), ALL_ARCHS},
    {"layers.{L}.attn.o_bias", P "self_attn.o_proj.bias", "blk.{L}.attn_output.bias", K_VEC,
     S_LAYER, D_H, 0, C_O_BIAS, X_NONE, LAY(bo), ALL_ARCHS},
    {"layers.{L}.attn.q_norm", P "self_attn.q_norm.weight", "blk.{L}.attn_q_norm.weight", K_VEC,
     S_LAYER, D_HD, 0, C_QKN_HEAD, X_NONE, LAY(q_norm), ALL_ARCHS},
    {"layers.{L}.attn.k_norm", P "self_attn.k_norm.weight", "blk.{L}.attn_k_norm.weight", K_VEC,
     S_LAYER, D_HD, 0, C_QKN_HEAD, X_NONE, LAY(k_norm), ALL_ARCHS},
    {"layers.{L}.attn.q_norm", P "self_attn.q_norm.weight", "blk.{L}.attn_q_norm.weight", K_VEC,
     S_LAYER, D_NQ, 0, C_QKN_FULL, X_NONE, LAY(q_norm), ALL_ARCHS},
    {"layers.{L}.attn.k_norm", P "self_attn.k_norm.weight", "blk.{L}.attn_k_norm.weight", K_VEC,
     S_LAYER, D_NKV, 0, C_QKN_FULL, X_NONE, LAY(k_norm), ALL_ARCHS},
    {"layers.{L}.attn.sinks", P "self_attn.sinks", "blk.{L}.attn_sinks.weight", K_VEC, S_LAYER,
     D_NH, 0, C_SINKS, X_NONE, LAY(sinks), ALL_ARCHS},
    /* multi-head latent attention */
    {"layers.{L}.attn.q_a", P "self_attn.q_a_proj.weight", "blk.{L}.attn_q_a.weight", K_MAT,
     S_LAYER, D_QL, D_H, C_QLORA, X_NONE, LAY(wq_a), ALL_ARCHS},
    {"layers.{L}.attn.q_a_bias", P "self_attn.q_a_proj.bias", "blk.{L}.attn_q_a.bias", K_VEC,
     S_LAYER, D_QL, 0, C_QA_BIAS, X_NONE, LAY(bq_a), ALL_ARCHS},
    {"layers.{L}.attn.q_a_norm", P "self_attn.q_a_layernorm.weight",
     "blk.{L}.attn_q_a_norm.weight", K_VEC, S_LAYER, D_QL, 0, C_QLORA, X_NONE, LAY(q_a_norm),
     ALL_ARCHS},
    {"layers.{L}.attn.q_b", P "self_attn.q_b_proj.weight", "blk.{L}.attn_q_b.weight", K_MAT,
     S_LAYER, D_NQ, D_QL, C_QLORA, X_NONE, LAY(wq_b), ALL_ARCHS},
    {"layers.{L}.attn.kv_a", P "self_attn.kv_a_proj_with_mqa.weight",
     "blk.{L}.attn_kv_a_mqa.weight", K_MAT, S_LAYER, D_KVA, D_H, C_MLA, X_NONE, LAY(wkv_a),
     ALL_ARCHS},
    {"layers.{L}.attn.kv_a_bias", P "self_attn.kv_a_proj_with_mqa.bias",
     "blk.{L}.attn_kv_a_mqa.bias", K_VEC, S_LAYER, D_KVA, 0, C_KVA_BIAS, X_NONE, LAY(bkv_a),
     ALL_ARCHS},
    {"layers.{L}.attn.kv_a_norm", P "self_attn.kv_a_layernorm.weight",
     "blk.{L}.attn_kv_a_norm.weight", K_VEC, S_LAYER, D_KVL, 0, C_MLA, X_NONE, LAY(kv_a_norm),
     ALL_ARCHS},
    {"layers.{L}.attn.k_b", P "self_attn.kv_b_proj.weight", "blk.{L}.attn_k_b.weight", K_MAT,
     S_LAYER, D_KB, D_NOPE, C_MLA, X_KB, LAY(wk_b), ALL_ARCHS},
    {"layers.{L}.attn.v_b", P "self_attn.kv_b_proj.weight", "blk.{L}.attn_v_b.weight", K_MAT,
     S_LAYER, D_VB, D_KVL, C_MLA, X_VB, LAY(wv_b), ALL_ARCHS},
    /* Gated DeltaNet (linear attention) layers */
    {"layers.{L}.lin.qkv", P "linear_attn.in_proj_qkv.weight", "blk.{L}.attn_qkv.weight", K_MAT,
     S_LAYER, D_LQKV, D_H, C_LIN, X_NONE, LAY(lin_qkv), ARCH(QWEN3_5_MOE)},
    {"layers.{L}.lin.z", P "linear_attn.in_proj_z.weight", "blk.{L}.attn_gate.weight", K_MAT,
     S_LAYER, D_LVD, D_H, C_LIN, X_NONE, LAY(lin_z), ARCH(QWEN3_5_MOE)},
    {"layers.{L}.lin.b", P "linear_attn.in_proj_b.weight", "blk.{L}.ssm_beta.weight", K_MAT,
     S_LAYER, D_LVH, D_H, C_LIN, X_NONE, LAY(lin_b), ARCH(QWEN3_5_MOE)},
    {"layers.{L}.lin.a", P "linear_attn.in_proj_a.weight", "blk.{L}.ssm_alpha.weight", K_MAT,
     S_LAYER, D_LVH, D_H, C_LIN, X_NONE, LAY(lin_a), ARCH(QWEN3_5_MOE)},
    {"layers.{L}.lin.qkv", P "linear_attn.in_proj_qkvz.weight", "blk.{L}.attn_qkv.weight",
     K_MAT, S_LAYER, D_LQKV, D_H, C_LIN, X_QKVZ_QKV, LAY(lin_qkv), ARCH(QWEN3_NEXT)},
    {"layers.{L}.lin.z", P "linear_attn.in_proj_qkvz.weight", "blk.{L}.attn_gate.weight", K_MAT,
     S_LAYER, D_LVD, D_H, C_LIN, X_QKVZ_Z, LAY(lin_z), ARCH(QWEN3_NEXT)},
    {"layers.{L}.lin.b", P "linear_attn.in_proj_ba.weight", "blk.{L}.ssm_ba.weight", K_MAT,
     S_LAYER, D_LVH, D_H, C_LIN, X_BA_B, LAY(lin_b), ARCH(QWEN3_NEXT)},
    {"layers.{L}.lin.a", P "linear_attn.in_proj_ba.weight", "blk.{L}.ssm_ba.weight", K_MAT,
     S_LAYER, D_LVH, D_H, C_LIN, X_BA_A, LAY(lin_a), ARCH(QWEN3_NEXT)},
    {"layers.{L}.lin.conv", P "linear_attn.conv1d.weight", "blk.{L}.ssm_conv1d.weight", K_VEC,
     S_LAYER, D_LCONV, 0, C_LIN, X_FLAT, LAY(lin_conv), ALL_ARCHS},
    {"layers.{L}.lin.dt_bias", P "linear_attn.dt_bias", "blk.{L}.ssm_dt.bias", K_VEC, S_LAYER,
     D_LVH, 0, C_LIN, X_NONE, LAY(lin_dt_bias), ALL_ARCHS},
    {"layers.{L}.lin.a_log", P "linear_attn.A_log", "blk.{L}.ssm_a", K_VEC, S_LAYER, D_LVH, 0,
     C_LIN, X_A_LOG, LAY(lin_a_log), ALL_ARCHS},
    {"layers.{L}.lin.norm", P "linear_attn.norm.weight", "blk.{L}.ssm_norm.weight", K_VEC,
     S_LAYER, D_LVDIM, 0, C_LIN, X_NONE, LAY(lin_norm), ALL_ARCHS},
    {"layers.{L}.lin.out", P "linear_attn.out_proj.weight", "blk.{L}.ssm_out.weight", K_MAT,
     S_LAYER, D_H, D_LVD, C_LIN, X_NONE, LAY(lin_out), ALL_ARCHS},
    /* feed-forward: a dense MLP, or router, experts and shared experts */
    {"layers.{L}.ffn_norm", P "post_attention_layernorm.weight", "blk.{L}.ffn_norm.weight",
     K_VEC, S_LAYER, D_H, 0, C_ALL, X_NONE, LAY(ffn_norm),
     ~(ARCH(GPT_OSS) | ARCH(GLM4_MOE) | ARCH(QWEN3_NEXT) | ARCH(QWEN3_5_MOE))},
    {"layers.{L}.ffn_norm", P "post_attention_layernorm.weight",
     "blk.{L}.post_attention_norm.weight", K_VEC, S_LAYER, D_H, 0, C_ALL, X_NONE, LAY(ffn_norm),
     ARCH(GPT_OSS) | ARCH(GLM4_MOE) | ARCH(QWEN3_NEXT) | ARCH(QWEN3_5_MOE)},
    {"layers.{L}.mlp.gate", P "mlp.gate_proj.weight", "blk.{L}.ffn_gate.weight", K_MAT, S_LAYER,
     D_FD, D_H, C_DENSE, X_NONE, SHARED(gate), ALL_ARCHS},
    {"layers.{L}.mlp.up", P "mlp.up_proj.weight", "blk.{L}.ffn_up.weight", K_MAT, S_LAYER, D_FD,
     D_H, C_DENSE, X_NONE, SHARED(up), ALL_ARCHS},
    {"layers.{L}.mlp.down", P "mlp.down_proj.weight", "blk.{L}.ffn_down.weight", K_MAT, S_LAYER,
     D_H, D_FD, C_DENSE, X_NONE, SHARED(down), ALL_ARCHS},
    {"layers.{L}.mlp.gate_bias", P "mlp.gate_proj.bias", "blk.{L}.ffn_gate.bias", K_VEC, S_LAYER,
     D_FD, 0, C_DENSE_BIAS, X_NONE, SHARED(b_gate), ALL_ARCHS},
    {"layers.{L}.mlp.up_bias", P "mlp.up_proj.bias", "blk.{L}.ffn_up.bias", K_VEC, S_LAYER, D_FD,
     0, C_DENSE_BIAS, X_NONE, SHARED(b_up), ALL_ARCHS},
    {"layers.{L}.mlp.down_bias", P "mlp.down_proj.bias", "blk.{L}.ffn_down.bias", K_VEC, S_LAYER,
     D_H, 0, C_DENSE_BIAS, X_NONE, SHARED(b_down), ALL_ARCHS},
    {"layers.{L}.router", P "{moe}.gate.weight", "blk.{L}.ffn_gate_inp.weight", K_ROUTE, S_LAYER,
     D_E, D_H, C_MOE, X_NONE, LAY(router), ~ARCH(GPT_OSS)},
    {"layers.{L}.router", P "mlp.router.weight", "blk.{L}.ffn_gate_inp.weight", K_ROUTE, S_LAYER,
     D_E, D_H, C_MOE, X_NONE, LAY(router), ARCH(GPT_OSS)},
    {"layers.{L}.router_bias", P "mlp.router.bias", "blk.{L}.ffn_gate_inp.bias", K_VEC, S_LAYER,
     D_E, 0, C_ROUTER_BIAS, X_NONE, LAY(router_b), ALL_ARCHS},
    {"layers.{L}.score_bias", P "mlp.gate.e_score_correction_bias", "blk.{L}.exp_probs_b.bias",
     K_VEC, S_LAYER, D_E, 0, C_SCORE_BIAS, X_NONE, LAY(score_b),
     ARCH(DEEPSEEK3) | ARCH(GLM4_MOE) | ARCH(DOTS1)},
    {"layers.{L}.score_bias", P "block_sparse_moe.e_score_correction_bias",
     "blk.{L}.exp_probs_b.bias", K_VEC, S_LAYER, D_E, 0, C_SCORE_BIAS, X_NONE, LAY(score_b),
     ARCH(MINIMAX_M2)},
    {"layers.{L}.score_bias", P "mlp.moe_statics.e_score_correction_bias",
     "blk.{L}.exp_probs_b.bias", K_VEC, S_LAYER, D_E, 0, C_SCORE_BIAS, X_NONE, LAY(score_b),
     ARCH(ERNIE4_5)},
    {"layers.{L}.shared_expert.gate", P "mlp.{sh}.gate_proj.weight",
     "blk.{L}.ffn_gate_shexp.weight", K_MAT, S_LAYER, D_FS, D_H, C_SHARED, X_NONE, SHARED(gate),
     ALL_ARCHS},
    {"layers.{L}.shared_expert.up", P "mlp.{sh}.up_proj.weight", "blk.{L}.ffn_up_shexp.weight",
     K_MAT, S_LAYER, D_FS, D_H, C_SHARED, X_NONE, SHARED(up), ALL_ARCHS},
    {"layers.{L}.shared_expert.down", P "mlp.{sh}.down_proj.weight",
     "blk.{L}.ffn_down_shexp.weight", K_MAT, S_LAYER, D_H, D_FS, C_SHARED, X_NONE, SHARED(down),
     ALL_ARCHS},
    {"layers.{L}.shared_expert.gate_bias", P "mlp.{sh}.gate_proj.bias",
     "blk.{L}.ffn_gate_shexp.bias", K_VEC, S_LAYER, D_FS, 0, C_SHARED_BIAS, X_NONE,
     SHARED(b_gate), ALL_ARCHS},
    {"layers.{L}.shared_expert.up_bias", P "mlp.{sh}.up_proj.bias", "blk.{L}.ffn_up_shexp.bias",
     K_VEC, S_LAYER, D_FS, 0, C_SHARED_BIAS, X_NONE, SHARED(b_up), ALL_ARCHS},
    {"layers.{L}.shared_expert.down_bias", P "mlp.{sh}.down_proj.bias",
     "blk.{L}.ffn_down_shexp.bias", K_VEC, S_LAYER, D_H, 0, C_SHARED_BIAS, X_NONE,
     SHARED(b_down), ALL_ARCHS},
    {"layers.{L}.shared_expert_gate", P "mlp.shared_expert_gate.weight",
     "blk.{L}.ffn_gate_inp_shexp.weight", K_ROUTE, S_LAYER, D_1, D_H, C_SHARED_GATE, X_NONE,
     LAY(shared_gate), ALL_ARCHS},
    /* routed experts: pack blob parts, HF per-expert (or fused) tensors, GGUF stacks */
    {"gate", P "{moe}.experts.{E}.{g}.weight", "blk.{L}.ffn_gate_exps.weight", K_EXP, S_LAYER,
     D_F, D_H, C_MOE, X_NONE, EXW(gate), ~ARCH(GPT_OSS)},
    {"up", P "{moe}.experts.{E}.{u}.weight", "blk.{L}.ffn_up_exps.weight", K_EXP, S_LAYER, D_F,
     D_H, C_MOE, X_NONE, EXW(up), ~ARCH(GPT_OSS)},
    {"down", P "{moe}.experts.{E}.{d}.weight", "blk.{L}.ffn_down_exps.weight", K_EXP, S_LAYER,
     D_H, D_F, C_MOE, X_NONE, EXW(down), ~ARCH(GPT_OSS)},
    {"gate", P "mlp.experts.gate_up_proj", "blk.{L}.ffn_gate_exps.weight", K_EXP, S_LAYER, D_F,
     D_H, C_MOE, X_GU_GATE, EXW(gate), ARCH(GPT_OSS)},
    {"up", P "mlp.experts.gate_up_proj", "blk.{L}.ffn_up_exps.weight", K_EXP, S_LAYER, D_F, D_H,
     C_MOE, X_GU_UP, EXW(up), ARCH(GPT_OSS)},
    {"down", P "mlp.experts.down_proj", "blk.{L}.ffn_down_exps.weight", K_EXP, S_LAYER, D_H, D_F,
     C_MOE, X_DOWN_T, EXW(down), ARCH(GPT_OSS)},
    {"gate_bias", P "mlp.experts.gate_up_proj_bias", "blk.{L}.ffn_gate_exps.bias", K_EXPV,
     S_LAYER, D_F, 0, C_EXPERT_BIAS, X_GUB_GATE, EXW(b_gate), ALL_ARCHS},
    {"up_bias", P "mlp.experts.gate_up_proj_bias", "blk.{L}.ffn_up_exps.bias", K_EXPV, S_LAYER,
     D_F, 0, C_EXPERT_BIAS, X_GUB_UP, EXW(b_up), ALL_ARCHS},
    {"down_bias", P "mlp.experts.down_proj_bias", "blk.{L}.ffn_down_exps.bias", K_EXPV, S_LAYER,
     D_H, 0, C_EXPERT_BIAS, X_NONE, EXW(b_down), ALL_ARCHS},
};
#undef P

/* ---- names -------------------------------------------------------------------------- */

enum source { SRC_HF, SRC_GGUF, SRC_PACK };

static const char *pattern(const struct tensor_row *r, enum source s)
{
    return s == SRC_HF ? r->hf : s == SRC_GGUF ? r->gguf : r->pack;
}

/* the pattern with {L}, {E} and the architecture's module names filled in */
static void expand(const char *pat, const struct moe_arch_row *a, int32_t l, int32_t e,
                   char *out, size_t cap)
{
    size_t n = 0;
    for (const char *p = pat; *p && n + 1 < cap;) {
        if (*p != '{') {
            out[n++] = *p++;
            continue;
        }
        const char *end = strchr(p, '}');
        size_t k = end ? (size_t)(end - p - 1) : 0;
        char buf[32] = "";
        if (k == 1 && p[1] == 'L')
            snprintf(buf, sizeof(buf), "%d", l);
        else if (k == 1 && p[1] == 'E')
            snprintf(buf, sizeof(buf), "%d", e);
        else if (k == 3 && !strncmp(p + 1, "moe", 3))
            snprintf(buf, sizeof(buf), "%s", a->hf_moe);
        else if (k == 2 && !strncmp(p + 1, "sh", 2))
            snprintf(buf, sizeof(buf), "%s", a->hf_shared);
        else if (k == 1 && (p[1] == 'g' || p[1] == 'u' || p[1] == 'd'))
            snprintf(buf, sizeof(buf), "%s", a->hf_expert[p[1] == 'g' ? 0 : p[1] == 'u' ? 1 : 2]);
        n += (size_t)snprintf(out + n, cap - n, "%s", buf);
        p = end ? end + 1 : p + strlen(p);
    }
    out[n < cap ? n : cap - 1] = '\0';
}

static bool row_applies(const struct tensor_row *r, const struct moe_config *c, int32_t l)
{
    if (r->archs && !(r->archs & (1u << c->arch)))
        return false;
    return cond_ok(c, l, (enum cond)r->cond);
}

/* ---- owned copies (layouts that need one) ------------------------------------------ */

/* p now belongs to the model (freed with it); false, p freed, when the
 * list cannot grow */
static bool keep(struct moe_model_files *f, void *p)
{
    if (f->n_owned == f->cap_owned) {
        size_t cap = f->cap_owned ? 2 * f->cap_owned : 64;
        void **o = realloc(f->owned, cap * sizeof(void *));
        if (!o) {
            free(p);
            return false;
        }
        f->owned = o;
        f->cap_owned = cap;
    }
    f->owned[f->n_owned++] = p;
    return true;
}

static void *own(struct moe_model_files *f, size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    return p && keep(f, p) ? p : NULL;
}

void moe_model_free_owned(struct moe_model_files *f)
{
    for (size_t i = 0; i < f->n_owned; i++)
        free(f->owned[i]);
    free(f->owned);
    f->owned = NULL;
    f->n_owned = f->cap_owned = 0;
}

/* element size of a plain dtype whose elements can be moved one by one */
static size_t plain_size(int dtype)
{
    return dtype == MOE_DTYPE_F32 ? 4 : dtype == MOE_DTYPE_F16 || dtype == MOE_DTYPE_BF16 ? 2 : 0;
}

static int need_plain(const struct moe_tensor_info *t, const char *name)
{
    if (plain_size(t->dtype))
        return 0;
    return moe_err(-ENOTSUP, "%s: tensor '%s': dtype %s cannot be rearranged into moed's "
                   "layout (f32, f16 or bf16 needed)", t->file, name, moe_dtype_name(t->dtype));
}

static int shape_error(const struct moe_tensor_info *t, const char *name, const char *want)
{
    char have[96];
    size_t n = (size_t)snprintf(have, sizeof(have), "[");
    for (int i = 0; i < t->n_dims && n < sizeof(have); i++)
        n += (size_t)snprintf(have + n, sizeof(have) - n, "%s%lld", i ? ", " : "",
                              (long long)t->dims[i]);
    if (n < sizeof(have))
        snprintf(have + n, sizeof(have) - n, "]");
    return moe_err(-EINVAL, "%s: tensor '%s': expected shape %s, found %s", t->file, name, want,
                   have);
}

/* DeepSeek's kv_b_proj [nh*(nope+v), kv_lora] split per head into W_UK^T
 * (X_KB: [nh*kv_lora, nope]) or W_UV (X_VB: [nh*v, kv_lora]) */
static int split_kv_b(struct moe_model *m, const struct moe_tensor_info *t, const char *name,
                      enum xform x, struct moe_weight *out)
{
    const struct moe_config *c = &m->cfg;
    int64_t nh = c->n_heads, nope = c->qk_nope_dim, v = c->v_head_dim, kvl = c->kv_lora_rank;
    if (t->n_dims != 2 || t->dims[0] != nh * (nope + v) || t->dims[1] != kvl) {
        char want[64];
        snprintf(want, sizeof(want), "[%lld, %lld]", (long long)(nh * (nope + v)),
                 (long long)kvl);
        return shape_error(t, name, want);
    }
    int rc = need_plain(t, name);
    if (rc < 0)
        return rc;
    size_t es = plain_size(t->dtype);
    int64_t rows = x == X_KB ? nh * kvl : nh * v, cols = x == X_KB ? nope : kvl;
    uint8_t *dst = own(m->files, (size_t)rows * (size_t)cols * es);
    if (!dst)
        return moe_err(-ENOMEM, "out of memory");
    const uint8_t *src = t->data;
    for (int64_t h = 0; h < nh; h++) {
        const uint8_t *hb = src + (size_t)(h * (nope + v)) * (size_t)kvl * es;
        if (x == X_VB) { /* rows nope.. of the head, as they are */
            memcpy(dst + (size_t)(h * v) * (size_t)kvl * es, hb + (size_t)nope * (size_t)kvl * es,
                   (size_t)(v * kvl) * es);
            continue;
        }
        for (int64_t r = 0; r < kvl; r++) /* transposed: [kv_lora][nope] */
            for (int64_t k = 0; k < nope; k++)
                memcpy(dst + ((size_t)(h * kvl + r) * (size_t)nope + (size_t)k) * es,
                       hb + ((size_t)k * (size_t)kvl + (size_t)r) * es, es);
    }
    *out = (struct moe_weight){.dtype = (enum moe_dtype)t->dtype, .rows = rows, .cols = cols,
                               .row_bytes = (size_t)cols * es, .data = dst};
    return 0;
}

/* gpt-oss's fused expert tensors (bf16 checkpoints): gate_up_proj
 * [E, H, 2F] in x out with gate and up interleaved, down_proj [E, F, H] */
static int gpt_oss_matrix(struct moe_model *m, const struct moe_tensor_info *t,
                          const char *name, enum xform x, int32_t e, int64_t rows, int64_t cols,
                          struct moe_weight *out)
{
    int64_t E = m->cfg.n_experts;
    int64_t in = cols, outd = x == X_DOWN_T ? rows : 2 * rows;
    if (t->n_dims != 3 || t->dims[0] != E || t->dims[1] != in || t->dims[2] != outd) {
        char want[64];
        snprintf(want, sizeof(want), "[%lld, %lld, %lld]", (long long)E, (long long)in,
                 (long long)outd);
        return shape_error(t, name, want);
    }
    int rc = need_plain(t, name);
    if (rc < 0)
        return rc;
    size_t es = plain_size(t->dtype);
    uint8_t *dst = own(m->files, (size_t)rows * (size_t)cols * es);
    if (!dst)
        return moe_err(-ENOMEM, "out of memory");
    const uint8_t *src = (const uint8_t *)t->data + (size_t)e * (size_t)(in * outd) * es;
    int64_t step = x == X_DOWN_T ? 1 : 2, first = x == X_GU_UP ? 1 : 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < cols; k++)
            memcpy(dst + ((size_t)r * (size_t)cols + (size_t)k) * es,
                   src + ((size_t)k * (size_t)outd + (size_t)(first + step * r)) * es, es);
    *out = (struct moe_weight){.dtype = (enum moe_dtype)t->dtype, .rows = rows, .cols = cols,
                               .row_bytes = (size_t)cols * es, .data = dst};
    return 0;
}

/* gpt-oss's fused expert biases: gate_up_proj_bias [E, 2F] interleaved */
static int gpt_oss_bias(struct moe_model *m, const struct moe_tensor_info *t, const char *name,
                        enum xform x, int32_t e, int64_t n, const float **out)
{
    int64_t E = m->cfg.n_experts, w = x == X_NONE ? n : 2 * n;
    if (t->n_dims != 2 || t->dims[0] != E || t->dims[1] != w) {
        char want[64];
        snprintf(want, sizeof(want), "[%lld, %lld]", (long long)E, (long long)w);
        return shape_error(t, name, want);
    }
    const struct moe_dtype_traits *tr = moe_dtype_traits(t->dtype);
    if (!tr || !tr->to_f32 || tr->block_size != 1)
        return moe_err(-ENOTSUP, "%s: tensor '%s': unsupported dtype %s", t->file, name,
                       moe_dtype_name(t->dtype));
    float *row = malloc((size_t)w * sizeof(float));
    float *v = own(m->files, (size_t)n * sizeof(float));
    if (!row || !v) {
        free(row);
        return moe_err(-ENOMEM, "out of memory");
    }
    tr->to_f32((const uint8_t *)t->data + (size_t)(e * w) * tr->block_bytes, row, w);
    char what[32];
    snprintf(what, sizeof(what), " (expert %d)", e);
    int rc = moe_bind_check_finite(row, w, t->file, name, what);
    if (rc < 0) {
        free(row);
        return rc;
    }
    int64_t step = x == X_NONE ? 1 : 2, first = x == X_GUB_UP ? 1 : 0;
    for (int64_t i = 0; i < n; i++)
        v[i] = row[first + step * i];
    free(row);
    *out = v;
    return 0;
}

/* Qwen3-Next's fused linear-attention projections: the source row of
 * canonical row r. in_proj_qkvz holds, per key head g, [q_g k_g v_g z_g]
 * (v_g and z_g: the g-th key head's value heads); in_proj_ba, per key
 * head, [b_g a_g]. */
static int64_t fused_row(const struct moe_config *c, enum xform x, int64_t r)
{
    int64_t hk = c->lin_k_dim, hv = c->lin_v_dim, ng = c->lin_v_heads / c->lin_k_heads;
    int64_t kd = (int64_t)c->lin_k_heads * hk, blk = 2 * hk + 2 * ng * hv;
    switch (x) {
    case X_QKVZ_QKV:
        if (r < 2 * kd) /* q, then k */
            return (r % kd) / hk * blk + (r >= kd ? hk : 0) + r % hk;
        r -= 2 * kd;
        return r / (ng * hv) * blk + 2 * hk + r % (ng * hv);
    case X_QKVZ_Z: return r / (ng * hv) * blk + 2 * hk + ng * hv + r % (ng * hv);
    case X_BA_B: return r / ng * 2 * ng + r % ng;
    case X_BA_A: return r / ng * 2 * ng + ng + r % ng;
    default: return r;
    }
}

static int split_fused(struct moe_model *m, const struct moe_tensor_info *t, const char *name,
                       enum xform x, int64_t rows, int64_t cols, struct moe_weight *out)
{
    const struct moe_config *c = &m->cfg;
    int64_t ng = c->lin_v_heads / c->lin_k_heads;
    int64_t src_rows = x == X_BA_B || x == X_BA_A
                           ? 2 * (int64_t)c->lin_v_heads
                           : (int64_t)c->lin_k_heads * (2 * c->lin_k_dim + 2 * ng * c->lin_v_dim);
    if (t->n_dims != 2 || t->dims[0] != src_rows || t->dims[1] != cols) {
        char want[64];
        snprintf(want, sizeof(want), "[%lld, %lld]", (long long)src_rows, (long long)cols);
        return shape_error(t, name, want);
    }
    int rc = need_plain(t, name);
    if (rc < 0)
        return rc;
    size_t rb = (size_t)cols * plain_size(t->dtype);
    uint8_t *dst = own(m->files, (size_t)rows * rb);
    if (!dst)
        return moe_err(-ENOMEM, "out of memory");
    for (int64_t r = 0; r < rows; r++)
        memcpy(dst + (size_t)r * rb, (const uint8_t *)t->data + (size_t)fused_row(c, x, r) * rb,
               rb);
    *out = (struct moe_weight){.dtype = (enum moe_dtype)t->dtype, .rows = rows, .cols = cols,
                               .row_bytes = rb, .data = dst};
    return 0;
}

/* ---- binding ------------------------------------------------------------------------ */

struct binder {
    struct moe_model *m;
    enum source src;
    const struct moe_arch_row *arch;
    const char *file;
    const struct moe_tensor_info **used; /* every tensor bound, to find those that were not */
    size_t n_used, cap_used;
};

static const struct moe_tensor_info *lookup(struct binder *b, const char *name)
{
    const struct moe_model_files *f = b->m->files;
    const struct moe_tensor_info *t = NULL;
    switch (b->src) {
    case SRC_HF:
        t = moe_safetensors_find(f->st, name);
        if (!t && !strncmp(name, "model.", 6)) { /* a VL checkpoint's text model */
            char vl[300];
            snprintf(vl, sizeof(vl), "model.language_model.%s", name + 6);
            t = moe_safetensors_find(f->st, vl);
        }
        break;
    case SRC_GGUF: t = moe_gguf_find_tensor(f->gguf, name); break;
    case SRC_PACK: t = moe_pack_find_tensor(f->pack, name); break;
    }
    if (t && b->n_used == b->cap_used) {
        size_t cap = b->cap_used ? 2 * b->cap_used : 1024;
        const struct moe_tensor_info **u = realloc(b->used, cap * sizeof(*u));
        if (!u)
            return t; /* the check afterwards then fails on memory, not here */
        b->used = u;
        b->cap_used = cap;
    }
    if (t)
        b->used[b->n_used++] = t;
    return t;
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)*(const void *const *)a, y = (uintptr_t)*(const void *const *)b;
    return x < y ? -1 : x > y;
}

/* tensors a checkpoint may hold that do not change the model's logits: the
 * multi-token-prediction layers past the last one, rotary caches */
static bool unused_is_harmless(const char *name, enum source src, int32_t n_layers)
{
    const char *p = src == SRC_GGUF ? "blk." : "model.layers.";
    if (!strncmp(name, p, strlen(p))) {
        char *end;
        long l = strtol(name + strlen(p), &end, 10);
        if (end != name + strlen(p) && *end == '.' && l >= n_layers)
            return true;
    }
    /* a vision-language checkpoint's vision tower (its text model is served) */
    if (src == SRC_HF && !strncmp(name, "model.visual.", 13))
        return true;
    return strstr(name, "rotary_emb.inv_freq") || strstr(name, ".mtp") || !strncmp(name, "mtp", 3);
}

/* every tensor of the file was bound, or is harmless: a tensor moed does not
 * compute with (a bias it does not know, a new norm) must not be dropped */
static int check_all_used(struct binder *b)
{
    const struct moe_model_files *f = b->m->files;
    size_t n = b->src == SRC_HF     ? moe_safetensors_count(f->st)
               : b->src == SRC_GGUF ? moe_gguf_tensor_count(f->gguf)
                                    : moe_pack_tensor_count(f->pack);
    if (b->n_used < n && !b->used)
        return moe_err(-ENOMEM, "out of memory");
    qsort(b->used, b->n_used, sizeof(*b->used), cmp_ptr);
    for (size_t i = 0; i < n; i++) {
        const struct moe_tensor_info *t = b->src == SRC_HF     ? moe_safetensors_at(f->st, i)
                                          : b->src == SRC_GGUF ? moe_gguf_tensor_at(f->gguf, i)
                                                               : moe_pack_tensor_at(f->pack, i);
        if (bsearch(&t, b->used, b->n_used, sizeof(*b->used), cmp_ptr) ||
            unused_is_harmless(t->name, b->src, b->m->cfg.n_layers))
            continue;
        return moe_err(-ENOTSUP, "%s: tensor '%s' is not used by moed's %s; it may change the "
                       "model's math, so the model is not loaded", t->file, t->name,
                       b->arch->name);
    }
    return 0;
}

/* a vector that must be an fp32 copy owned by the model (moe_bind_vector's) */
static int bind_vec(struct binder *b, const struct moe_tensor_info *t, const char *name,
                    int64_t n, float **slot)
{
    float *v;
    int rc = moe_bind_vector(t, t ? t->file : b->file, name, n, &v);
    if (rc < 0)
        return rc;
    if (!keep(b->m->files, v))
        return moe_err(-ENOMEM, "out of memory");
    *slot = v;
    return 0;
}

/* gpt-oss's MXFP4 experts: *_blocks [E, out, in/32, 16] and *_scales
 * [E, out, in/32], out = 2F interleaved for gate_up */
static int gpt_oss_mxfp4(struct binder *bd, const char *base, enum xform x, int32_t e,
                         int64_t rows, int64_t cols, struct moe_weight *out)
{
    struct moe_model *m = bd->m;
    char bn[300], sn[300];
    snprintf(bn, sizeof(bn), "%.256s_blocks", base);
    snprintf(sn, sizeof(sn), "%.256s_scales", base);
    const struct moe_tensor_info *b = lookup(bd, bn);
    const struct moe_tensor_info *s = lookup(bd, sn);
    if (!b || !s)
        return moe_err(-ENOENT, "%s: missing tensor '%s' (or its MXFP4 '%s' and '%s')", m->path,
                       base, bn, sn);
    int64_t E = m->cfg.n_experts, outd = x == X_DOWN_T ? rows : 2 * rows, nb = cols / 32;
    if (cols % 32 || b->n_dims != 4 || b->dims[0] != E || b->dims[1] != outd ||
        b->dims[2] != nb || b->dims[3] != 16 || s->n_dims != 3 || s->dims[0] != E ||
        s->dims[1] != outd || s->dims[2] != nb || b->nbytes < (size_t)(E * outd * nb * 16) ||
        s->nbytes < (size_t)(E * outd * nb)) {
        char want[160];
        snprintf(want, sizeof(want), "[%lld, %lld, %lld, 16] uint8 with scales [%lld, %lld, %lld]",
                 (long long)E, (long long)outd, (long long)nb, (long long)E, (long long)outd,
                 (long long)nb);
        return shape_error(b, bn, want);
    }
    size_t rb = moe_dtype_row_bytes(MOE_DTYPE_MXFP4, cols);
    uint8_t *dst = own(m->files, (size_t)rows * rb);
    if (!dst)
        return moe_err(-ENOMEM, "out of memory");
    const uint8_t *bb = (const uint8_t *)b->data + (size_t)(e * outd * nb) * 16;
    const uint8_t *sb = (const uint8_t *)s->data + (size_t)(e * outd * nb);
    int64_t step = x == X_DOWN_T ? 1 : 2, first = x == X_GU_UP ? 1 : 0;
    for (int64_t r = 0; r < rows; r++) {
        int64_t src_row = first + step * r;
        int rc = moe_mxfp4_from_hf(bb + (size_t)(src_row * nb) * 16, sb + (size_t)(src_row * nb),
                                   1, cols, dst + (size_t)r * rb);
        if (rc < 0)
            return moe_err(rc, "%s: tensor '%s': expert %d: %s", m->path, bn, e, moe_err_msg());
    }
    *out = (struct moe_weight){.dtype = MOE_DTYPE_MXFP4, .rows = rows, .cols = cols,
                               .row_bytes = rb, .data = dst};
    return 0;
}

static int bind_dense_row(struct binder *b, const struct tensor_row *r, int32_t l)
{
    struct moe_model *m = b->m;
    const struct moe_config *c = &m->cfg;
    char name[256];
    const char *pat = pattern(r, b->src);
    if (!pat)
        return 0;
    expand(pat, b->arch, l, 0, name, sizeof(name));
    uint8_t *base = r->scope == S_MODEL ? (uint8_t *)m : (uint8_t *)&m->layers[l];
    const struct moe_tensor_info *t = lookup(b, name);
    int64_t rows = dim(c, (enum dim)r->rows), cols = dim(c, (enum dim)r->cols);
    if (r->kind == K_VEC) {
        float **v = (float **)(void *)(base + r->off);
        struct moe_tensor_info flat;
        if (r->xform == X_FLAT && t) { /* any shape of the right size */
            int64_t n = 1;
            for (int i = 0; i < t->n_dims; i++)
                n *= t->dims[i];
            flat = *t;
            flat.n_dims = 1;
            flat.dims[0] = n;
            t = &flat;
        }
        int rc = bind_vec(b, t, name, rows, v);
        if (rc == 0 && r->xform == X_A_LOG && b->src == SRC_GGUF)
            for (int64_t i = 0; i < rows; i++) {
                if (!((*v)[i] < 0))
                    return moe_err(-EINVAL, "%s: tensor '%s': A = %g is not negative", b->file,
                                   name, (double)(*v)[i]);
                (*v)[i] = logf(-(*v)[i]);
            }
        return rc;
    }
    struct moe_weight *w = (struct moe_weight *)(void *)(base + r->off);
    bool fused = (r->xform == X_QKVZ_QKV || r->xform == X_QKVZ_Z) ? b->src == SRC_HF
                 : (r->xform == X_BA_B || r->xform == X_BA_A) ? b->src != SRC_PACK
                                                               : false;
    if (fused) {
        if (!t)
            return moe_err(-ENOENT, "%s: missing tensor '%s'", b->file, name);
        return split_fused(m, t, name, (enum xform)r->xform, rows, cols, w);
    }
    if (r->xform == X_KB || r->xform == X_VB) {
        if (b->src == SRC_HF) {
            if (!t)
                return moe_err(-ENOENT, "%s: missing tensor '%s'", b->file, name);
            return split_kv_b(m, t, name, (enum xform)r->xform, w);
        }
        /* GGUF stores them split, k_b as [nh, kv_lora, nope]: one matrix of
         * nh*kv_lora rows */
        if (t && t->n_dims == 3 && t->dims[0] == c->n_heads &&
            t->dims[0] * t->dims[1] == rows && t->dims[2] == cols) {
            struct moe_tensor_info flat = *t;
            flat.n_dims = 2;
            flat.dims[0] = rows;
            flat.dims[1] = cols;
            return moe_bind_matrix(&flat, t->file, name, rows, cols, w);
        }
    }
    return moe_bind_matrix(t, t ? t->file : b->file, name, rows, cols, w);
}

/* transformers 5's fused experts, as Qwen3.5's checkpoints store them:
 * {moe}.experts.gate_up_proj [E, 2F, H] (expert e's gate rows, then its up
 * rows) and {moe}.experts.down_proj [E, H, F]: slices, no copy */
static int bind_expert_fused(struct binder *b, const struct tensor_row *r, int32_t l, int32_t x,
                             const char *per_expert, struct moe_weight *out)
{
    const struct moe_config *c = &b->m->cfg;
    bool down = r->off == EXW(down);
    char name[256];
    expand(down ? "model.layers.{L}.{moe}.experts.down_proj"
                : "model.layers.{L}.{moe}.experts.gate_up_proj",
           b->arch, l, 0, name, sizeof(name));
    const struct moe_tensor_info *t = lookup(b, name);
    if (!t) /* neither form: name the per-expert one */
        return moe_err(-ENOENT, "%s: missing tensor '%s' (or the fused '%s')", b->file,
                       per_expert, name);
    int64_t rows = dim(c, (enum dim)r->rows), cols = dim(c, (enum dim)r->cols);
    if (down)
        return moe_bind_matrix_slice(t, t->file, name, c->n_experts, x, rows, cols, out);
    struct moe_tensor_info halves = *t; /* [E, 2F, H] as [2E, F, H] */
    if (t->n_dims == 3 && t->dims[1] == 2 * rows) {
        halves.dims[0] = 2 * t->dims[0];
        halves.dims[1] = rows;
    }
    return moe_bind_matrix_slice(&halves, t->file, name, 2 * (int64_t)c->n_experts,
                                 2 * (int64_t)x + (r->off == EXW(up)), rows, cols, out);
}

/* expert x's matrix or vector of row r, from a Hugging Face checkpoint */
static int bind_expert_hf(struct binder *b, const struct tensor_row *r, int32_t l, int32_t x,
                          void *slot)
{
    struct moe_model *m = b->m;
    char name[256];
    expand(r->hf, b->arch, l, x, name, sizeof(name));
    int64_t rows = dim(&m->cfg, (enum dim)r->rows), cols = dim(&m->cfg, (enum dim)r->cols);
    const struct moe_tensor_info *t = lookup(b, name);
    switch ((enum xform)r->xform) {
    case X_NONE:
        if (r->kind == K_EXPV) { /* a per-expert bias stacked [E, n] */
            if (!t)
                return moe_err(-ENOENT, "%s: missing tensor '%s'", b->file, name);
            return gpt_oss_bias(m, t, name, X_NONE, x, rows, (const float **)slot);
        }
        if (!t && r->kind == K_EXP)
            return bind_expert_fused(b, r, l, x, name, slot);
        return moe_bind_matrix(t, t ? t->file : b->file, name, rows, cols, slot);
    case X_GU_GATE:
    case X_GU_UP:
    case X_DOWN_T:
        if (!t)
            return gpt_oss_mxfp4(b, name, (enum xform)r->xform, x, rows, cols, slot);
        return gpt_oss_matrix(m, t, name, (enum xform)r->xform, x, rows, cols, slot);
    case X_GUB_GATE:
    case X_GUB_UP:
        if (!t)
            return moe_err(-ENOENT, "%s: missing tensor '%s'", b->file, name);
        return gpt_oss_bias(m, t, name, (enum xform)r->xform, x, rows, (const float **)slot);
    default:
        return moe_err(-EINVAL, "%s: tensor '%s': bad layout", b->file, name);
    }
}

/* every expert's matrix or vector of row r, from a GGUF stack [E, rows, cols]
 * (or the per-expert blk.L.ffn_gate.E.weight of early Mixtral GGUFs) */
static int bind_experts_gguf(struct binder *b, const struct tensor_row *r, int32_t l)
{
    struct moe_model *m = b->m;
    const struct moe_config *c = &m->cfg;
    char name[256];
    expand(r->gguf, b->arch, l, 0, name, sizeof(name));
    const struct moe_tensor_info *t = lookup(b, name);
    int64_t rows = dim(c, (enum dim)r->rows), cols = dim(c, (enum dim)r->cols);
    int64_t E = c->n_experts;
    for (int64_t e = 0; e < E; e++) {
        void *slot = (uint8_t *)&m->layers[l].experts[e] + r->off;
        int rc;
        if (r->kind == K_EXPV) {
            if (!t)
                return moe_err(-ENOENT, "%s: missing tensor '%s'", b->file, name);
            rc = gpt_oss_bias(m, t, name, X_NONE, (int32_t)e, rows, (const float **)slot);
        } else if (t) {
            rc = moe_bind_matrix_slice(t, b->file, t->name, E, e, rows, cols, slot);
        } else {
            static const char *const single[] = {"ffn_gate", "ffn_up", "ffn_down"};
            int which = r->off == EXW(gate) ? 0 : r->off == EXW(up) ? 1 : 2;
            char old[128];
            snprintf(old, sizeof(old), "blk.%d.%s.%lld.weight", l, single[which], (long long)e);
            const struct moe_tensor_info *s = lookup(b, old);
            rc = moe_bind_matrix(s, b->file, s ? old : name, rows, cols, slot);
        }
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Qwen3-Next's and Qwen3.5's RMSNorms multiply by (1 + w): their Hugging
 * Face weights are stored zero-centred. moed's copies hold 1 + w, as GGUF
 * and packs store them (the gated norm of the linear layers is plain). */
static void zero_centred_norms(struct moe_model *m)
{
    const struct moe_config *c = &m->cfg;
    if (c->arch != MOE_ARCH_QWEN3_NEXT && c->arch != MOE_ARCH_QWEN3_5_MOE)
        return;
    for (int64_t i = 0; i < c->hidden; i++)
        m->final_norm[i] += 1.0f;
    for (int32_t l = 0; l < c->n_layers; l++) {
        struct moe_layer *L = &m->layers[l];
        float *v[] = {L->attn_norm, L->ffn_norm, L->q_norm, L->k_norm};
        int64_t n[] = {c->hidden, c->hidden, c->head_dim, c->head_dim};
        for (size_t j = 0; j < MOE_ARRAY_SIZE(v); j++)
            for (int64_t i = 0; v[j] && i < n[j]; i++)
                v[j][i] += 1.0f;
    }
}

int moe_model_bind_tensors(struct moe_model *m)
{
    const struct moe_config *c = &m->cfg;
    struct binder b = {.m = m, .arch = moe_arch_row(c->arch)};
    if (m->files->st) {
        b.src = SRC_HF;
        b.file = m->path;
    } else if (m->files->gguf) {
        b.src = SRC_GGUF;
        b.file = moe_gguf_path(m->files->gguf);
    } else {
        b.src = SRC_PACK;
        b.file = moe_pack_path(m->files->pack);
    }
    int rc = 0;
    for (size_t i = 0; i < MOE_ARRAY_SIZE(table); i++) {
        const struct tensor_row *r = &table[i];
        if (r->scope != S_MODEL || !row_applies(r, c, -1))
            continue;
        if ((rc = bind_dense_row(&b, r, -1)) < 0)
            goto out;
    }
    if (c->tied_embeddings)
        m->lm_head = m->embed;
    for (int32_t l = 0; l < c->n_layers; l++)
        for (size_t i = 0; i < MOE_ARRAY_SIZE(table); i++) {
            const struct tensor_row *r = &table[i];
            if (r->scope != S_LAYER || !row_applies(r, c, l))
                continue;
            if (r->kind == K_MAT || r->kind == K_ROUTE || r->kind == K_VEC) {
                rc = bind_dense_row(&b, r, l);
            } else if (b.src == SRC_PACK) {
                continue; /* expert blobs: moe_model_bind_pack_experts */
            } else if (b.src == SRC_GGUF) {
                rc = bind_experts_gguf(&b, r, l);
            } else {
                rc = 0;
                for (int32_t x = 0; x < c->n_experts && rc == 0; x++)
                    rc = bind_expert_hf(&b, r, l, x, (uint8_t *)&m->layers[l].experts[x] + r->off);
            }
            if (rc < 0)
                goto out;
        }
    rc = check_all_used(&b);
    if (rc == 0 && b.src == SRC_HF)
        zero_centred_norms(m);
out:
    free(b.used);
    return rc;
}

int moe_model_visit_dense(const struct moe_model *m, moe_dense_visit fn, void *ctx)
{
    const struct moe_config *c = &m->cfg;
    const struct moe_arch_row *a = moe_arch_row(c->arch);
    enum source src = m->files->st ? SRC_HF : m->files->gguf ? SRC_GGUF : SRC_PACK;
    int rc;
    for (int32_t l = -1; l < c->n_layers; l++)
        for (size_t i = 0; i < MOE_ARRAY_SIZE(table); i++) {
            const struct tensor_row *r = &table[i];
            if ((l < 0) != (r->scope == S_MODEL) || r->kind == K_EXP || r->kind == K_EXPV ||
                !row_applies(r, c, l))
                continue;
            char name[256], file_name[256];
            expand(r->pack, a, l, 0, name, sizeof(name));
            expand(pattern(r, src) ? pattern(r, src) : r->pack, a, l, 0, file_name,
                   sizeof(file_name));
            const uint8_t *base = l < 0 ? (const uint8_t *)m : (const uint8_t *)&m->layers[l];
            struct moe_dense_tensor d = {.name = name, .file_name = file_name};
            if (r->kind == K_VEC) {
                d.vec = *(float *const *)(const void *)(base + r->off);
                d.n = dim(c, (enum dim)r->rows);
            } else {
                d.mat = (const struct moe_weight *)(const void *)(base + r->off);
            }
            if ((rc = fn(ctx, &d)) != 0)
                return rc;
        }
    return 0;
}

/* One matrix re-encoded as dtype into a copy the model owns; w then points
 * at it. A matrix already in dtype, or whose rows are not whole blocks of
 * it, is left as it is (false). */
static int quantize_matrix(struct moe_model *m, struct moe_weight *w, int dtype, bool *done)
{
    const struct moe_dtype_traits *to = moe_dtype_traits(dtype);
    const struct moe_dtype_traits *from = moe_dtype_traits(w->dtype);
    *done = false;
    if ((int)w->dtype == dtype || !w->data || w->rows <= 0 || w->nbytes || !from ||
        !from->to_f32 || w->cols % to->block_size)
        return 0;
    size_t rb = moe_dtype_row_bytes(dtype, w->cols);
    uint8_t *dst = own(m->files, (size_t)w->rows * rb);
    float *row = malloc((size_t)w->cols * sizeof(float));
    if (!dst || !row) {
        free(row);
        return moe_err(-ENOMEM, "out of memory");
    }
    for (int64_t r = 0; r < w->rows; r++) {
        from->to_f32((const uint8_t *)w->data + (size_t)r * w->row_bytes, row, w->cols);
        to->from_f32(row, dst + (size_t)r * rb, w->cols);
    }
    free(row);
    *w = (struct moe_weight){.dtype = (enum moe_dtype)dtype, .rows = w->rows, .cols = w->cols,
                             .row_bytes = rb, .data = dst};
    *done = true;
    return 0;
}

int moe_model_quantize_dense(struct moe_model *m, int dtype, struct moe_dense_quant *out)
{
    const struct moe_config *c = &m->cfg;
    const struct moe_arch_row *a = moe_arch_row(c->arch);
    const struct moe_dtype_traits *to = moe_dtype_traits(dtype);
    memset(out, 0, sizeof(*out));
    if (dtype >= 0 && (!to || to->view || !to->from_f32 || !moe_gemm_kernel((enum moe_dtype)dtype, MOE_ISA_REF)))
        return moe_err(-EINVAL, "%s: dense matrices cannot be stored as %s", m->path,
                       moe_dtype_name(dtype));
    for (int32_t l = -1; l < c->n_layers; l++)
        for (size_t i = 0; i < MOE_ARRAY_SIZE(table); i++) {
            const struct tensor_row *r = &table[i];
            if ((l < 0) != (r->scope == S_MODEL) || r->kind != K_MAT || !row_applies(r, c, l))
                continue;
            uint8_t *base = l < 0 ? (uint8_t *)m : (uint8_t *)&m->layers[l];
            struct moe_weight *w = (struct moe_weight *)(void *)(base + r->off);
            bool done = false;
            int rc = dtype >= 0 ? quantize_matrix(m, w, dtype, &done) : 0;
            if (rc < 0)
                return rc;
            if (!(l < 0 && r->off == MOD(lm_head) && c->tied_embeddings))
                out->bytes += moe_weight_bytes(w);
            if (dtype < 0) {
                continue;
            } else if (done) {
                out->quantized++;
            } else if ((int)w->dtype != dtype) {
                out->kept++;
                if (out->kept == 1) {
                    expand(r->pack, a, l, 0, out->first_kept, sizeof(out->first_kept));
                    out->first_kept_cols = w->cols;
                }
            }
        }
    if (c->tied_embeddings)
        m->lm_head = m->embed; /* the same matrix, now in dtype */
    return 0;
}

void moe_model_expert_where(const struct moe_model *m, int32_t l, int32_t x, const char *part,
                            char *out, size_t cap)
{
    const struct moe_config *c = &m->cfg;
    const struct moe_arch_row *a = moe_arch_row(c->arch);
    enum source src = m->files->st ? SRC_HF : m->files->gguf ? SRC_GGUF : SRC_PACK;
    const struct tensor_row *r = NULL;
    for (size_t i = 0; i < MOE_ARRAY_SIZE(table) && !r; i++)
        if ((table[i].kind == K_EXP || table[i].kind == K_EXPV) && row_applies(&table[i], c, l) &&
            !strcmp(table[i].pack, part))
            r = &table[i];
    if (!r || src == SRC_PACK) {
        snprintf(out, cap, "layer %d expert %d part '%s'", l, x, part);
        return;
    }
    char name[256];
    expand(pattern(r, src), a, l, x, name, sizeof(name));
    /* stacks: every GGUF expert tensor, and gpt-oss's fused ones */
    bool stack = src == SRC_GGUF || r->kind == K_EXPV || r->xform != X_NONE;
    if (src == SRC_GGUF && !moe_gguf_find_tensor(m->files->gguf, name)) {
        static const char *const single[] = {"ffn_gate", "ffn_up", "ffn_down"};
        int which = r->off == EXW(gate) ? 0 : r->off == EXW(up) ? 1 : 2;
        snprintf(name, sizeof(name), "blk.%d.%s.%d.weight", l, single[which], x);
        stack = false; /* early Mixtral GGUFs: one tensor per expert */
    } else if (src == SRC_HF && r->kind == K_EXP && r->xform != X_NONE &&
               !moe_safetensors_find(m->files->st, name)) {
        size_t n = strlen(name);
        snprintf(name + n, sizeof(name) - n, "_blocks"); /* MXFP4 */
    }
    if (stack)
        snprintf(out, cap, "tensor '%s' (expert %d)", name, x);
    else
        snprintf(out, cap, "tensor '%s'", name);
}

int moe_model_expert_parts(const struct moe_model *m, int32_t l, int32_t x,
                           struct moe_expert_part *parts, int max)
{
    const struct moe_config *c = &m->cfg;
    int n = 0;
    for (size_t i = 0; i < MOE_ARRAY_SIZE(table) && n < max; i++) {
        const struct tensor_row *r = &table[i];
        if ((r->kind != K_EXP && r->kind != K_EXPV) || !row_applies(r, c, l))
            continue;
        const uint8_t *base = (const uint8_t *)&m->layers[l].experts[x];
        struct moe_expert_part *p = &parts[n++];
        memset(p, 0, sizeof(*p));
        p->name = r->pack;
        p->off = r->off;
        if (r->kind == K_EXPV) {
            p->vec = *(const float *const *)(const void *)(base + r->off);
            p->n = dim(c, (enum dim)r->rows);
        } else {
            p->mat = (const struct moe_weight *)(const void *)(base + r->off);
            p->rows = dim(c, (enum dim)r->rows);
            p->cols = dim(c, (enum dim)r->cols);
        }
    }
    return n;
}
