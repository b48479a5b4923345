#!/usr/bin/env python3
"""Writes tests/data/arch/<name>/: tiny random checkpoints of the MoE architectures moed loads,
made with transformers itself, with reference logits, and the same weights as GGUF.

    /root/venv5/bin/python tests/reference/make_fixtures.py [--only NAME[,NAME]] [--list]
        [--tokenizers DIR] [--check-llamacpp LLAMA_CPP_DIR] [--no-v4]

Run by hand (never in CI): it needs torch and transformers 5 (/root/venv5) and, for v4/,
transformers 4.57 importable from /root/tf4 (--tf4 DIR). Deterministic: fixed seeds.

For each fixture NAME:
  v5/               config.json + model.safetensors (bf16) + generation_config.json, as
                    transformers 5 save_pretrained writes them; gpt_oss: experts as MXFP4
                    (*_blocks / *_scales, the layout of OpenAI's checkpoints) and the
                    quantization_config those checkpoints carry.
  v4/config.json    the same model's config as transformers 4.57 writes it (minimax_m2: the
                    keys of MiniMax-M2's published remote-code config.json, since 4.57 has no
                    MiniMax-M2); every other file of v4/ is a relative symlink into ../v5/.
                    qwen3_5_moe (4.57 has no Qwen3.5): v4/ is the layout of the published
                    Qwen3.5-MoE checkpoints instead (Qwen3_5MoeForConditionalGeneration, the
                    text keys in text_config, a vision_config; model.safetensors a real file:
                    the text weights as model.language_model.* with the experts fused,
                    lm_head.weight, a tiny vision tower model.visual.*, an MTP head mtp.*),
                    checked with transformers 5's Qwen3_5MoeForConditionalGeneration.
  model.gguf        the same weights in llama.cpp's conventions (tests/reference/
                    make_arch_model.py, the mapping tables at the top of that file), converted
                    from v4/ (the published-style config); for the Gated DeltaNet hybrids
                    (qwen3_next, qwen3_5_moe) llama.cpp's own converter writes it from v5/
                    (no vocabulary), so they need --check-llamacpp.
  reference.safetensors  logits (f32 [T, V], all positions of the prompt; T = 48, but 320 for
                    the Gated DeltaNet hybrids, whose chunked prefill must cross several 64-token
                    chunks), prompt_ids and
                    continuation_ids (i32), from the v5 checkpoint loaded back in float32 with
                    attn_implementation="eager"; the continuation is 16 greedy steps (argmax of
                    the last position, the whole sequence recomputed each step).
  reference.json    the same ids, T, V, versions, the options exercised, the smallest margins.

Robustness: with random weights a near-tie in a top-k choice (experts, expert groups) or in a
greedy argmax would let an exact engine differ from torch by rounding alone. Every routing
decision of every MoE layer (prompt and continuation positions) and every greedy argmax is
recomputed in float64 (the checkpoint loaded with dtype=float64); a relative margin below
1e-4 (the k-th minus the (k+1)-th score, divided by the largest |score| of that token) makes
the generator try the next prompt seed, then the next weight seed. The kept minimum is in
reference.json.

Checks made on every run (a failure stops the run):
  * the checkpoint loaded back by transformers holds exactly the values generated (bf16-rounded
    weights; gpt_oss: the dequantised MXFP4 values);
  * the float64 greedy ids equal the float32 ones;
  * v4/ loads in transformers 4.57 (minimax_m2: in transformers 5) and gives the reference
    logits within 1e-5 (max abs);
  * model.gguf read back (moe_ref.read_gguf, make_arch_model.gguf_to_hf_tensors) holds every
    tensor of the checkpoint, bit for bit, under its llama.cpp name (after undoing the
    permutations / splits / MXFP4 repacking of the mapping tables);
  * --check-llamacpp DIR: llama.cpp's own convert_hf_to_gguf.py (its vocabulary step disabled)
    converts v4/ and v5/; tensor names, shapes, types and bytes and every metadata key (but
    tokenizer.*, and general.name / general.version, which it guesses from the directory name)
    are compared with model.gguf's and the differences listed in reference.json (expected:
    KNOWN_DIFFS only). Needs gguf-py installed from that llama.cpp's gguf-py/.
Tokenizers: with --tokenizers DIR (tests/data/tokenizers), DIR/<FIXTURE_TOKENIZER's folder, or
the fixture or family name>/tokenizer.json (+
tokenizer_config.json) is copied into v5/ and, for byte-level BPE, embedded in model.gguf
(tokenizer.ggml.*); without one the GGUFs carry no vocabulary.
gpt_oss: transformers loads MXFP4 on CPU with Mxfp4Config(dequantize=True) here (5.x: the
experts in the requested dtype; 4.57: always bfloat16, cast to float32 afterwards, lossless).
"""

import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT = os.path.join(ROOT, "tests", "data", "arch")
sys.path.insert(0, HERE)

V = 1024          # every fixture's vocabulary
T = 48            # prompt length (a spec's "T" overrides it)
N_CONT = 16       # greedy continuation
MARGIN_MIN = 1e-4  # smallest relative margin accepted (routing and greedy argmax)
V4_TOL = 1e-5     # v4/ logits (transformers 4.57) against the reference, max abs
TF4_DEFAULT = "/root/tf4"

# ----------------------------------------------------------------------------
# the fixtures: each a published-style config (the keys real config.json files carry;
# passed as they are to the transformers 5 and 4.57 config classes)
# ----------------------------------------------------------------------------

COMMON = dict(vocab_size=V, hidden_size=64, hidden_act="silu", initializer_range=0.02,
              attention_dropout=0.0, use_cache=True, tie_word_embeddings=False,
              bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16")

YARN_DSV3 = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "mscale": 1.0,
             "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1}
YARN_KIMI = {"type": "yarn", "factor": 32.0, "original_max_position_embeddings": 16, "mscale": 1.0,
             "mscale_all_dim": 1.0, "beta_fast": 1.0, "beta_slow": 1.0}
YARN_GPTOSS = {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 16,
               "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False}

# the Gated DeltaNet hybrids (Qwen3-Next, Qwen3.5-MoE): the sizes both fixtures share
HYBRID_SIZES = dict(
    num_hidden_layers=4, full_attention_interval=4, num_attention_heads=4, num_key_value_heads=2,
    head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
    linear_value_head_dim=16, linear_conv_kernel_dim=4, num_experts=8, num_experts_per_tok=2,
    moe_intermediate_size=32, shared_expert_intermediate_size=32, max_position_embeddings=1024,
    rms_norm_eps=1e-6, attention_bias=False)
HYBRIDS = ("qwen3_next", "qwen3_5_moe")
HYBRID_NOTES = [
    "layer_types linear_attention x 3 then full_attention (full_attention_interval 4)",
    "Gated DeltaNet (linear_attn): causal depthwise conv1d (kernel 4, no bias) + SiLU over the "
    "q | k | v channels, q and k L2-normalised per head (eps 1e-6), q scaled by 1/sqrt(16), 2 key "
    "heads shared by 4 value heads (value head j uses key head j // 2), beta = sigmoid(b), "
    "g = -exp(A_log) * softplus(a + dt_bias), the state [16 x 16] per value head decayed by exp(g) "
    "then delta-updated each token; gated RMSNorm per value head: weight * norm(o) * SiLU(z) "
    "(a plain weight, initialised near 1), then out_proj",
    "A_log, dt_bias chosen so that exp(g) stays mostly within 0.6..0.99 (transformers' own init, "
    "A up to 16, makes the state vanish after one token); conv1d weights N(0, 0.3)",
    "full attention: q_proj [256, 64] holds per head (query 32 | output gate 32); per-head q/k "
    "RMSNorm before rope; the attention output times sigmoid(gate) before o_proj",
    "input_layernorm, post_attention_layernorm, model.norm, q_norm, k_norm scale by (1 + weight) "
    "(the weights stored zero-centred, here N(0, 0.1))",
    "shared expert (FFN 32) times sigmoid(shared_expert_gate . x), added to the routed experts",
]

GPT_OSS_QUANT = {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                            "model.embed_tokens", "lm_head"],
                 "quant_method": "mxfp4"}


def _spec(name, family, cls, arch, params, notes, v4="tf4", v4_patch=None, seed=0, t=T, gguf=True):
    p = dict(COMMON)
    p.update(params)
    return {"name": name, "family": family, "cls": cls, "arch": arch, "params": p, "notes": notes,
            "v4": v4, "v4_patch": v4_patch or {}, "seed": seed, "T": t, "gguf": gguf}


SPECS = [
    _spec("deepseek_v3", "deepseek_v3", "DeepseekV3Config", "DeepseekV3ForCausalLM", dict(
        intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, n_shared_experts=1, n_routed_experts=16, num_experts_per_tok=4,
        n_group=4, topk_group=2, topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True,
        routed_scaling_factor=2.5, first_k_dense_replace=1, moe_layer_freq=1,
        q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        rope_theta=10000.0, rope_scaling=YARN_DSV3, max_position_embeddings=128,
        rope_interleave=True, rms_norm_eps=1e-6, attention_bias=False, num_nextn_predict_layers=0),
        ["MLA: q_lora_rank 32 (q_a_proj, q_a_layernorm, q_b_proj), kv_lora_rank 32, "
         "qk_nope 16 + qk_rope 8, v_head_dim 16",
         "sigmoid router + e_score_correction_bias (noaux_tc), 16 experts in 4 groups, "
         "top-2 groups by the sum of each group's 2 best biased scores, top-4 experts",
         "norm_topk_prob, routed_scaling_factor 2.5, 1 shared expert, first_k_dense_replace 1",
         "YaRN factor 4 (original_max_position_embeddings 32, mscale 1, mscale_all_dim 1, "
         "beta_fast 32, beta_slow 1): softmax scale * mscale(4, 1)^2",
         "rope_interleave (rotary pairs (2i, 2i+1) of the rope part)"]),
    _spec("kimi_k2", "kimi_k2", "DeepseekV3Config", "DeepseekV3ForCausalLM", dict(
        intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, n_shared_experts=1, n_routed_experts=16, num_experts_per_tok=4,
        n_group=1, topk_group=1, topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True,
        routed_scaling_factor=2.827, first_k_dense_replace=1, moe_layer_freq=1, aux_loss_alpha=0.001,
        seq_aux=True, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
        v_head_dim=16, rope_theta=50000.0, rope_scaling=YARN_KIMI, max_position_embeddings=512,
        rms_norm_eps=1e-6, attention_bias=False, num_nextn_predict_layers=0, pretraining_tp=1),
        ["DeepseekV3ForCausalLM as Kimi-K2 publishes it: model_type 'kimi_k2' in v4/config.json "
         "(transformers 5 writes 'deepseek_v3')",
         "n_group 1 / topk_group 1, 16 experts top-4, routed_scaling_factor 2.827",
         "YaRN factor 32 (original 16, mscale 1, mscale_all_dim 1, beta_fast 1, beta_slow 1), "
         "rope_theta 50000"],
        v4_patch={"model_type": "kimi_k2"}),
    _spec("deepseek_v2_lite", "deepseek_v2", "DeepseekV2Config", "DeepseekV2ForCausalLM", dict(
        intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, n_shared_experts=2, n_routed_experts=8, num_experts_per_tok=2,
        n_group=1, topk_group=1, topk_method="greedy", scoring_func="softmax", norm_topk_prob=False,
        routed_scaling_factor=1.0, first_k_dense_replace=1, moe_layer_freq=1, aux_loss_alpha=0.001,
        seq_aux=True, q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
        v_head_dim=16, rope_theta=10000.0, max_position_embeddings=128, rms_norm_eps=1e-6,
        attention_bias=False),
        ["DeepSeek-V2-Lite: q_lora_rank null (plain q_proj), kv_lora_rank 32",
         "softmax router, topk_method greedy (top-2 of all 8), norm_topk_prob false, "
         "routed_scaling_factor 1.0",
         "2 shared experts (shared FFN = 2 x 32), first_k_dense_replace 1",
         "rotary on the rope part as complex pairs (2i, 2i+1)"]),
    _spec("deepseek_v2", "deepseek_v2", "DeepseekV2Config", "DeepseekV2ForCausalLM", dict(
        intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, n_shared_experts=2, n_routed_experts=16, num_experts_per_tok=4,
        n_group=4, topk_group=2, topk_method="group_limited_greedy", scoring_func="softmax",
        norm_topk_prob=False, routed_scaling_factor=16.0, first_k_dense_replace=1, moe_layer_freq=1,
        aux_loss_alpha=0.001, seq_aux=True, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=16, rope_theta=10000.0, max_position_embeddings=128,
        rms_norm_eps=1e-6, attention_bias=False),
        ["DeepSeek-V2: q_lora_rank 32",
         "softmax router, topk_method group_limited_greedy: 16 experts in 4 groups, a group's "
         "score is its BEST expert's probability (max, not DeepSeek-V3's top-2 sum), top-2 "
         "groups, top-4 experts; norm_topk_prob false; routed_scaling_factor 16",
         "2 shared experts, first_k_dense_replace 1"]),
    _spec("glm4_moe", "glm4_moe", "Glm4MoeConfig", "Glm4MoeForCausalLM", dict(
        intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3, num_attention_heads=8,
        num_key_value_heads=2, head_dim=16, partial_rotary_factor=0.5, attention_bias=True,
        use_qk_norm=True, n_shared_experts=1, n_routed_experts=8, num_experts_per_tok=2, n_group=1,
        topk_group=1, topk_method="noaux_tc", norm_topk_prob=True, routed_scaling_factor=2.5,
        first_k_dense_replace=1, rope_theta=1000000.0, max_position_embeddings=128,
        rms_norm_eps=1e-5, num_nextn_predict_layers=0, pad_token_id=0),
        ["GLM-4.5: head_dim 16 with 8 heads (q width 128 = 2 x hidden), 2 KV heads",
         "partial_rotary_factor 0.5 (rotary on dims 0..7 of each head, pairs (i, i+4))",
         "attention_bias on q/k/v (not o), use_qk_norm (per-head RMSNorm [head_dim], before rope)",
         "sigmoid router + e_score_correction_bias, n_group 1, top-2 of 8, norm_topk_prob, "
         "routed_scaling_factor 2.5, 1 shared expert, first_k_dense_replace 1"]),
    _spec("glm4_moe_noqk", "glm4_moe", "Glm4MoeConfig", "Glm4MoeForCausalLM", dict(
        intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3, num_attention_heads=8,
        num_key_value_heads=2, head_dim=16, partial_rotary_factor=0.5, attention_bias=True,
        use_qk_norm=False, n_shared_experts=1, n_routed_experts=8, num_experts_per_tok=2, n_group=1,
        topk_group=1, topk_method="noaux_tc", norm_topk_prob=True, routed_scaling_factor=1.0,
        first_k_dense_replace=1, rope_theta=10000.0, max_position_embeddings=128,
        rms_norm_eps=1e-5, num_nextn_predict_layers=0, pad_token_id=0),
        ["GLM-4.5-Air style: use_qk_norm false (no q_norm / k_norm), routed_scaling_factor 1.0",
         "otherwise as glm4_moe: partial rotary 0.5, q/k/v biases, sigmoid router + bias"],
        seed=1),
    _spec("gpt_oss", "gpt_oss", "GptOssConfig", "GptOssForCausalLM", dict(
        intermediate_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
        head_dim=16, num_local_experts=8, num_experts_per_tok=2, experts_per_token=2,
        sliding_window=8, layer_types=["sliding_attention", "full_attention"],
        attention_bias=True, rope_theta=150000.0, rope_scaling=YARN_GPTOSS,
        initial_context_length=16, max_position_embeddings=512, rms_norm_eps=1e-5,
        swiglu_limit=7.0, router_aux_loss_coef=0.9, output_router_logits=False, pad_token_id=0,
        quantization_config=GPT_OSS_QUANT),
        ["attention sinks (one logit per head, in the softmax denominator only)",
         "layer_types sliding_attention / full_attention alternating, sliding_window 8 "
         "(keys j with q - 8 < j <= q) with T = 48",
         "q/k/v/o biases; head_dim 16 with 8 heads (q width 128 = 2 x hidden), 2 KV heads",
         "router with bias: top-2 of the 8 logits, softmax over those 2",
         "experts: interleaved gate_up (gate = even columns), biases, clamped SwiGLU "
         "(gate <= 7, -7 <= up <= 7, gate * sigmoid(1.702 gate) * (up + 1))",
         "YaRN factor 32, beta_fast 32, beta_slow 1, truncate false, original 16, "
         "attention_factor 0.1 ln(32) + 1 on cos/sin",
         "experts stored as MXFP4 (*_blocks u8 [E, rows, cols/32, 16], *_scales u8 "
         "[E, rows, cols/32], e8m0 exponent + 127, low nibble first)"]),
    _spec("minimax_m2", "minimax_m2", "MiniMaxM2Config", "MiniMaxM2ForCausalLM", dict(
        intermediate_size=32, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
        head_dim=16, rotary_dim=8, num_local_experts=8, num_experts_per_tok=2,
        scoring_func="sigmoid", use_routing_bias=True, use_qk_norm=True, qk_norm_type="per_layer",
        rope_theta=5000000.0, max_position_embeddings=512, rms_norm_eps=1e-6,
        shared_intermediate_size=0, attn_type_list=[1, 1], router_aux_loss_coef=0.001,
        router_jitter_noise=0.0, output_router_logits=False),
        ["q_norm / k_norm: RMSNorm over the whole q [8 x 16] / k [2 x 16] projection, before the "
         "split into heads (qk_norm_type per_layer)",
         "partial rotary: rotary_dim 8 of head_dim 16 (pairs (i, i+4) on dims 0..7)",
         "sigmoid router + e_score_correction_bias (choice only), top-2 renormalised, "
         "no shared expert; block_sparse_moe.experts.N.w1/w2/w3 as the real checkpoint"],
        v4="published"),
    _spec("ernie4_5_moe", "ernie4_5", "Ernie4_5_MoeConfig", "Ernie4_5_MoeForCausalLM", dict(
        intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, moe_num_experts=8, moe_k=2, moe_num_shared_experts=2,
        moe_layer_start_index=1, moe_layer_end_index=2, moe_layer_interval=1, moe_norm_min=1e-12,
        moe_capacity=[8, 8, 8], moe_gate="topk", moe_use_aux_free=True, use_bias=False,
        tie_word_embeddings=True, rope_theta=500000.0, max_position_embeddings=128,
        rms_norm_eps=1e-5, pad_token_id=0),
        ["ERNIE-4.5-21B-A3B: moe_layer_start_index 1, moe_layer_interval 1, moe_layer_end_index 2 "
         "(= the last layer): layer 0 dense, layers 1-2 MoE",
         "softmax router; the top-k is chosen on softmax + e_score_correction_bias "
         "(moe_statics, [1, E]), the weights are the unbiased probabilities renormalised "
         "(clamped below by moe_norm_min 1e-12)",
         "2 shared experts (FFN 2 x 32 = intermediate_size / num_key_value_heads, the ratio "
         "llama.cpp's converter assumes), use_bias false as the real 21B-A3B",
         "tie_word_embeddings (no lm_head.weight); rotary on interleaved pairs (2i, 2i+1)"]),
    _spec("dots1", "dots1", "Dots1Config", "Dots1ForCausalLM", dict(
        intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, n_shared_experts=2, n_routed_experts=8, num_experts_per_tok=2,
        scoring_func="sigmoid", topk_method="noaux_tc", norm_topk_prob=True,
        routed_scaling_factor=2.5, first_k_dense_replace=1, moe_layer_freq=1,
        rope_theta=10000000.0, max_position_embeddings=128, rms_norm_eps=1e-5,
        sliding_window=None, max_window_layers=3, use_sliding_window=False, attention_bias=False),
        ["dots.llm1: q/k per-head RMSNorm ([head_dim], before rope), MHA (kv heads = heads)",
         "sigmoid router + e_score_correction_bias (DeepSeek-V3's noaux_tc code path; n_group / "
         "topk_group absent as in the published config, so 1 / 1)",
         "norm_topk_prob, routed_scaling_factor 2.5, 2 shared experts (as dots.llm1), "
         "first_k_dense_replace 1"]),
    _spec("mixtral_swa", "mixtral", "MixtralConfig", "MixtralForCausalLM", dict(
        intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        num_local_experts=8, num_experts_per_tok=2, sliding_window=8, rope_theta=1000000.0,
        max_position_embeddings=512, rms_norm_eps=1e-5, router_aux_loss_coef=0.02,
        output_router_logits=False),
        ["Mixtral with sliding_window 8 on every layer (keys j with q - 8 < j <= q), T = 48",
         "rope_theta 1e6; softmax router, top-2 of 8, renormalised"]),
    _spec("qwen3_moe_v5", "qwen3", "Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(
        intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], rope_theta=1000000.0,
        max_position_embeddings=512, rms_norm_eps=1e-6, use_sliding_window=False,
        sliding_window=None, max_window_layers=2, attention_bias=False,
        router_aux_loss_coef=0.001, output_router_logits=False),
        ["Qwen3-MoE as transformers 5 saves it (rope_parameters, num_local_experts for "
         "num_experts, dtype for torch_dtype); rope_theta 1e6; per-head q/k norm"]),
    # Gated DeltaNet hybrids: 3 linear-attention layers then 1 full-attention layer; T = 320 so
    # that the chunked prefill (64-token chunks in transformers) crosses several chunks
    _spec("qwen3_next", "qwen3_next", "Qwen3NextConfig", "Qwen3NextForCausalLM", dict(
        HYBRID_SIZES, intermediate_size=128, norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[], rope_theta=10000000.0, partial_rotary_factor=0.25,
        router_aux_loss_coef=0.001, output_router_logits=False),
        ["Qwen3-Next (every layer MoE: decoder_sparse_step 1; intermediate_size 128 unused)",
         "Gated DeltaNet projections in_proj_qkvz [192, 64] and in_proj_ba [8, 64], grouped by key "
         "head: per key head g, rows q_g 16 | k_g 16 | v 2 x 16 | z 2 x 16, and b 2 | a 2 (the "
         "value heads 2g, 2g + 1)"] + HYBRID_NOTES + [
         "softmax router, top-2 of 8, norm_topk_prob true",
         "full attention: partial_rotary_factor 0.25 (rotary on dims 0..7 of each head, pairs "
         "(i, i+4)), rope_theta 1e7"],
        t=320, gguf=False),
    _spec("qwen3_5_moe", "qwen3_5_moe", "Qwen3_5MoeTextConfig", "Qwen3_5MoeForCausalLM", dict(
        HYBRID_SIZES, rope_parameters={
            "rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
            "mrope_interleaved": True, "mrope_section": [2, 1, 1]},
        router_aux_loss_coef=0.001, output_router_logits=False),
        ["Qwen3.5-MoE text model (every layer MoE)",
         "Gated DeltaNet projections not grouped: in_proj_qkv [128, 64] (q 2 x 16 | k 2 x 16 | "
         "v 4 x 16), in_proj_z [64, 64], in_proj_b [4, 64], in_proj_a [4, 64]"] + HYBRID_NOTES + [
         "softmax router, top-2 of 8, the top-k always renormalised (the config has no "
         "norm_topk_prob)",
         "rope_parameters: partial_rotary_factor 0.25 (rotary on dims 0..7 of each head, pairs "
         "(i, i+4)), mrope_interleaved, mrope_section [2, 1, 1] (sums to rope_dim / 2 = 4; for "
         "text the three sections' position ids are all the token position: plain rope), "
         "rope_theta 1e7",
         "v4/: the published Qwen3.5-MoE checkpoint layout (Qwen3_5MoeForConditionalGeneration, "
         "text_config / vision_config, model.language_model.* with fused experts, model.visual.*, "
         "mtp.*)"],
        v4="published_qwen35", t=320, gguf=False),
]
BY_NAME = {s["name"]: s for s in SPECS}

# MiniMax-M2's published config.json keys (remote code, transformers_version 4.46.1); values
# scaled down to this fixture. 4.57 has no MiniMax-M2 class, so v4/config.json is written
# from this list instead of by a config class.
MINIMAX_PUBLISHED_KEYS = [
    "architectures", "attn_type_list", "auto_map", "head_dim", "hidden_act", "hidden_size",
    "intermediate_size", "max_position_embeddings", "model_type", "mtp_transformer_layers",
    "num_attention_heads", "num_experts_per_tok", "num_hidden_layers", "num_key_value_heads",
    "num_local_experts", "num_mtp_modules", "qk_norm_type", "rms_norm_eps", "rope_theta",
    "rotary_dim", "scoring_func", "shared_intermediate_size", "tie_word_embeddings",
    "transformers_version", "use_cache", "use_mtp", "use_qk_norm", "use_routing_bias",
    "vocab_size", "torch_dtype", "bos_token_id", "eos_token_id"]

# The published Qwen3.5-MoE checkpoints (Qwen/Qwen3.5-35B-A3B: Qwen3_5MoeForConditionalGeneration,
# transformers_version 4.57.0.dev0): config.json keys, values scaled down to this fixture.
# 4.57 has no Qwen3.5, so qwen3_5_moe's v4/ is written in that layout (write_v4_qwen35).
QWEN35_PUBLISHED = {
    "architectures": ["Qwen3_5MoeForConditionalGeneration"], "model_type": "qwen3_5_moe",
    "image_token_id": 248056, "video_token_id": 248057, "vision_start_token_id": 248053,
    "vision_end_token_id": 248054, "tie_word_embeddings": False,
    "transformers_version": "4.57.0.dev0",
}
# text_config: these keys, from the transformers 5 config of v5/ but for the ones set here
QWEN35_PUBLISHED_TEXT_KEYS = [
    "attention_bias", "attention_dropout", "attn_output_gate", "dtype", "eos_token_id",
    "full_attention_interval", "head_dim", "hidden_act", "hidden_size", "initializer_range",
    "layer_types", "linear_conv_kernel_dim", "linear_key_head_dim", "linear_num_key_heads",
    "linear_num_value_heads", "linear_value_head_dim", "mamba_ssm_dtype", "max_position_embeddings",
    "model_type", "moe_intermediate_size", "mtp_num_hidden_layers", "mtp_use_dedicated_embeddings",
    "num_attention_heads", "num_experts", "num_experts_per_tok", "num_hidden_layers",
    "num_key_value_heads", "partial_rotary_factor", "rms_norm_eps", "rope_parameters",
    "router_aux_loss_coef", "shared_expert_intermediate_size", "use_cache", "vocab_size"]
QWEN35_PUBLISHED_TEXT_SET = {
    "attn_output_gate": True, "dtype": "bfloat16", "full_attention_interval": 4,
    "mamba_ssm_dtype": "float32", "model_type": "qwen3_5_moe_text", "mtp_num_hidden_layers": 1,
    "mtp_use_dedicated_embeddings": False, "partial_rotary_factor": 0.25,
}
# vision_config: the published keys (model_type "qwen3_5_moe" as published; transformers 5 reads
# it as qwen3_5_moe_vision), sizes shrunk to a one-block tower of width 16
QWEN35_PUBLISHED_VISION = {
    "deepstack_visual_indexes": [], "depth": 1, "hidden_act": "gelu_pytorch_tanh",
    "hidden_size": 16, "in_channels": 3, "initializer_range": 0.02, "intermediate_size": 32,
    "model_type": "qwen3_5_moe", "num_heads": 2, "num_position_embeddings": 16,
    "out_hidden_size": 64, "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2,
}

# ----------------------------------------------------------------------------
# MXFP4 (OCP microscaling FP4, gpt-oss's expert format)
# ----------------------------------------------------------------------------

FP4_MAG = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float64)


def mxfp4_quantize(w):
    """w [..., K] (K % 32 == 0) -> (blocks u8 [..., K/32, 16], scales u8 [..., K/32]).
    Each block of 32 shares 2^e with e = floor(log2(max|x|)) - 2 (so max|x| / 2^e is in [4, 8));
    each element is the nearest of +-{0, .5, 1, 1.5, 2, 3, 4, 6} (clamped at 6); code = sign << 3
    | magnitude index; two codes a byte, the even element in the low nibble."""
    w = np.asarray(w, dtype=np.float64)
    K = w.shape[-1]
    g = w.reshape(*w.shape[:-1], K // 32, 32)
    amax = np.abs(g).max(axis=-1)
    with np.errstate(divide="ignore"):
        e = np.where(amax > 0, np.floor(np.log2(np.where(amax > 0, amax, 1.0))) - 2, -127)
    e = np.clip(e, -127, 127)
    x = g / np.exp2(e)[..., None]
    mag = np.abs(np.argmin(np.abs(np.abs(x)[..., None] - FP4_MAG), axis=-1))
    code = ((x < 0) & (mag > 0)).astype(np.uint8) << 3 | mag.astype(np.uint8)
    blocks = (code[..., 0::2] | (code[..., 1::2] << 4)).astype(np.uint8)
    return blocks, (e + 127).astype(np.uint8)


def mxfp4_dequantize(blocks, scales):
    """The inverse layout: [..., G, 16] u8 + [..., G] u8 -> float64 [..., G * 32]."""
    lut = np.concatenate([FP4_MAG, -FP4_MAG])
    lo, hi = blocks & 0x0F, blocks >> 4
    v = np.stack([lut[lo], lut[hi]], axis=-1).reshape(*blocks.shape[:-1], 32)
    v = v * np.exp2(scales.astype(np.float64) - 127)[..., None]
    return v.reshape(*blocks.shape[:-2], blocks.shape[-2] * 32)


# ----------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def bf16_round(x):
    """float -> float32 holding the nearest bfloat16 (round to nearest even)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32) << 16
    return r.astype(np.uint32).view(np.float32)


def rng_for(seed, name):
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def dir_size(path):
    total = 0
    for dp, _, fns in os.walk(path):
        for fn in fns:
            p = os.path.join(dp, fn)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


# ----------------------------------------------------------------------------
# weights: every parameter and buffer of the transformers 5 model, by name
# ----------------------------------------------------------------------------


def init_value(spec, name, shape, rng):
    """float64 array for the model's tensor `name` (transformers 5 in-memory names)."""
    gpt = spec["name"] == "gpt_oss"
    leaf = name.rsplit(".", 1)[-1]

    def normal(std):
        return rng.standard_normal(shape) * std

    if spec["name"] in HYBRIDS:
        # Gated DeltaNet: transformers' own A_log init (A up to 16) makes the state decay to
        # nothing in one token; A in [0.02, 0.3] with dt_bias in [0, 1] and a small `a`
        # projection keeps exp(g) = exp(-A softplus(a + dt_bias)) mostly in 0.6..0.99
        if leaf == "A_log":
            return np.log(rng.uniform(0.02, 0.3, shape))
        if leaf == "dt_bias":
            return rng.uniform(0.0, 1.0, shape)
        if name.endswith("linear_attn.conv1d.weight"):
            return normal(0.3)
        if name.endswith("linear_attn.norm.weight"):   # gated RMSNorm: plain weight (init 1)
            return 1.0 + normal(0.1)
        if name.endswith("linear_attn.in_proj_a.weight"):
            return normal(0.3 / math.sqrt(shape[1]))
        if name.endswith("linear_attn.in_proj_ba.weight"):
            # rows grouped by key head: per group (b x nv/nk, a x nv/nk); the a rows smaller
            p = spec["params"]
            per = 2 * p["linear_num_value_heads"] // p["linear_num_key_heads"]
            is_a = (np.arange(shape[0]) % per) >= per // 2
            return normal(1.0) * np.where(is_a, 0.3, 0.8)[:, None] / math.sqrt(shape[1])
        if "norm" in name.rsplit(".", 2)[-2]:
            # input_layernorm, post_attention_layernorm, model.norm, q_norm, k_norm: the
            # output is multiplied by (1 + weight), the weight stored zero-centred
            return normal(0.1)
    if "norm" in name.rsplit(".", 2)[-2] or leaf in ("q_norm", "k_norm"):  # any RMSNorm weight
        return 1.0 + normal(0.1)
    if leaf == "sinks":
        return normal(1.0)
    if leaf == "e_score_correction_bias":
        # sigmoid scores are spread over (0, 1); ERNIE's are softmax probabilities (~1/E)
        return normal(0.03 if spec["arch"].startswith("Ernie") else 0.08)
    if name.endswith("embed_tokens.weight"):
        # tied (ERNIE): the embedding is also the output head; a large one would dominate the
        # residual stream and make every greedy step repeat the last token
        return normal(0.08 if spec["params"].get("tie_word_embeddings") else 0.5)
    if name == "lm_head.weight":
        return normal(1.0 / math.sqrt(shape[1]))
    if name.endswith(("mlp.gate.weight", "mlp.router.weight")):  # routers: far from uniform
        # T = 320 (hybrids): 7x the routing decisions; logits of std ~1 rather than ~2 keep
        # the top-2 / top-3 probability gap relative to the top-1 above 1e-4 more often
        w = normal((1.0 if spec["name"] in HYBRIDS else 2.0) / math.sqrt(shape[1]))
        w[0] *= 1.6
        w[shape[0] // 2] *= 1.3
        return w
    if leaf == "bias" and "router" in name:
        return normal(0.5)
    if leaf == "gate_up_proj_bias":  # gpt-oss: a few units past the clamp of 7
        b = normal(0.5)
        b[:, 0::7] += 8.0 * np.sign(rng.standard_normal(b[:, 0::7].shape))
        return b
    if leaf in ("bias", "down_proj_bias"):
        return normal(0.1)
    if leaf == "gate_up_proj" and gpt:   # [E, H, 2F]: in = H
        return normal(1.0 / math.sqrt(shape[1]))
    if leaf == "down_proj" and gpt:      # [E, F, H]: in = F
        return normal(0.8 / math.sqrt(shape[1]))
    if leaf in ("gate_up_proj", "down_proj"):  # [E, out, in]
        return normal(0.8 / math.sqrt(shape[-1]))
    if len(shape) == 2:
        return normal(0.8 / math.sqrt(shape[1]))
    raise ValueError(f"{spec['name']}: no init rule for {name} {shape}")


def fill_model(spec, model, seed):
    """Sets every parameter / persistent buffer to its bf16-rounded random value (gpt-oss experts:
    MXFP4 values). Returns {name: float32 array} of what the checkpoint must hold (in-memory
    names) and, for gpt-oss, {checkpoint name: u8 array} of the MXFP4 blocks / scales."""
    import torch
    want, mx = {}, {}
    sd = model.state_dict()
    seen = {}
    for name, t in sd.items():
        if not t.is_floating_point():
            continue
        if t.data_ptr() in seen:              # tied (lm_head = embed_tokens): one value
            want[name] = want[seen[t.data_ptr()]]
            continue
        seen[t.data_ptr()] = name
        rng = rng_for(seed, name)
        val = init_value(spec, name, tuple(t.shape), rng)
        leaf = name.rsplit(".", 1)[-1]
        if spec["name"] == "gpt_oss" and leaf in ("gate_up_proj", "down_proj"):
            rows = np.swapaxes(val, 1, 2)                     # [E, out, in], as OpenAI stores them
            blocks, scales = mxfp4_quantize(rows)
            mx[f"{name}_blocks"], mx[f"{name}_scales"] = blocks, scales
            val = np.swapaxes(mxfp4_dequantize(blocks, scales), 1, 2)
            val32 = val.astype(np.float32)
            if not np.array_equal(val32.astype(np.float64), val) or not np.array_equal(bf16_round(val32), val32):
                raise AssertionError("MXFP4 values must be exact in bf16")
        else:
            val32 = bf16_round(val.astype(np.float32))
        with torch.no_grad():
            t.copy_(torch.from_numpy(val32).to(t.dtype))
        want[name] = val32
    return want, mx


# ----------------------------------------------------------------------------
# transformers 5: build, save, load back
# ----------------------------------------------------------------------------


def v5_config(spec):
    import transformers
    cls = getattr(transformers, spec["cls"])
    p = {k: v for k, v in spec["params"].items() if k not in ("quantization_config",)}
    cfg = cls(**p)
    cfg.architectures = [spec["arch"]]
    return cfg


def build_v5(spec, vdir, seed):
    """Writes v5/ (and returns (want, mx))."""
    import torch
    import transformers
    torch.manual_seed(seed)
    cfg = v5_config(spec)
    cfg._attn_implementation = "eager"
    model = getattr(transformers, spec["arch"])(cfg).to(torch.float32).eval()
    want, mx = fill_model(spec, model, seed)
    if os.path.isdir(vdir):
        shutil.rmtree(vdir)
    model.to(torch.bfloat16).save_pretrained(vdir)
    if mx:
        rewrite_mxfp4(vdir, mx, spec["params"]["quantization_config"])
    return want, mx


def rewrite_mxfp4(vdir, mx, qcfg):
    """gpt-oss: the bf16 experts of model.safetensors replaced by their MXFP4 blocks / scales
    (checkpoint names model.layers.N.mlp.experts.{gate_up,down}_proj_{blocks,scales}), and the
    quantization_config of the published checkpoints added to config.json."""
    import torch
    from safetensors.torch import load_file, save_file
    path = os.path.join(vdir, "model.safetensors")
    sd = load_file(path)
    for k in list(sd):
        if k.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            del sd[k]
    for k, a in mx.items():
        sd[k] = torch.from_numpy(np.ascontiguousarray(a))
    save_file(sd, path, metadata={"format": "pt"})
    cp = os.path.join(vdir, "config.json")
    with open(cp) as f:
        c = json.load(f)
    c["quantization_config"] = qcfg
    with open(cp, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")


def load_v5(spec, vdir, dtype):
    import transformers
    kw = {}
    if spec["name"] == "gpt_oss":
        # on CPU transformers would otherwise try the triton/kernels path (and here fail for want
        # of accelerate); dequantize=True is the documented CPU path: experts -> `dtype`
        kw["quantization_config"] = transformers.Mxfp4Config(dequantize=True)
    m = getattr(transformers, spec["arch"]).from_pretrained(
        vdir, dtype=dtype, attn_implementation="eager", experts_implementation="eager", **kw)
    return m.eval()


def check_loaded(spec, model, want):
    """The checkpoint read back by transformers holds exactly what was generated."""
    sd = model.state_dict()
    bad = []
    for name, w in want.items():
        if name not in sd:
            bad.append(f"{name}: missing after load")
            continue
        got = sd[name].detach().to("cpu").double().numpy()
        if got.shape != w.shape or not np.array_equal(got, w.astype(np.float64)):
            d = np.abs(got - w).max() if got.shape == w.shape else "shape"
            bad.append(f"{name}: differs after load ({d})")
    extra = [k for k, t in sd.items() if k not in want and t.is_floating_point()]
    if bad or extra:
        raise AssertionError(f"{spec['name']}: checkpoint round trip: {bad[:6]} extra={extra[:6]}")


def forward_logits(model, ids):
    import torch
    with torch.no_grad():
        out = model(torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].double().numpy()


def greedy(model, ids, n):
    seq = list(ids)
    for _ in range(n):
        seq.append(int(np.argmax(forward_logits(model, seq)[-1])))
    return seq[len(ids):]


# ----------------------------------------------------------------------------
# routing margins (float64)
# ----------------------------------------------------------------------------


def moe_modules(model):
    """(layer index, moe module) of every MoE block."""
    out = []
    for i, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        if hasattr(mlp, "experts"):
            out.append((i, mlp))
    return out


def _topk_margin(scores, k):
    """scores [N, n] (-inf = excluded): (k-th - (k+1)-th) / max|finite score| per row; inf when
    fewer than k + 1 candidates."""
    s = -np.sort(-scores, axis=1)
    finite = np.where(np.isfinite(scores), np.abs(scores), 0.0).max(axis=1)
    if s.shape[1] <= k:
        return np.full(s.shape[0], np.inf)
    a, b = s[:, k - 1], s[:, k]
    m = np.where(np.isfinite(b), (a - b) / np.maximum(finite, 1e-300), np.inf)
    return m


def route_decisions(spec, cfg, mlp, x):
    """x [N, H] float64 (the MoE block's input). Returns (expert margins, group margins,
    selected experts [N, k]) recomputed in float64 from the router's weights."""
    name = spec["name"]

    def p(t):
        return t.detach().double().numpy()

    groups = np.array([])
    if name == "gpt_oss":
        logits = x @ p(mlp.router.weight).T + p(mlp.router.bias)
        k = cfg.num_experts_per_tok
        return _topk_margin(logits, k), groups, np.argsort(-logits, axis=1)[:, :k]
    logits = x @ p(mlp.gate.weight).T
    E = logits.shape[1]
    if name in ("deepseek_v3", "kimi_k2", "glm4_moe", "glm4_moe_noqk", "dots1", "minimax_m2"):
        s = 1.0 / (1.0 + np.exp(-logits))
        bias = p(mlp.e_score_correction_bias) if name == "minimax_m2" else p(mlp.gate.e_score_correction_bias)
        sc = s + bias
        k = cfg.num_experts_per_tok
        G = getattr(cfg, "n_group", 1) or 1
        TG = getattr(cfg, "topk_group", 1) or 1
        if G > 1:
            gs = -np.sort(-sc.reshape(-1, G, E // G), axis=2)[:, :, :2].sum(axis=2)
            groups = _topk_margin(gs, TG)
            keep = np.argsort(-gs, axis=1)[:, :TG]
            mask = np.full((sc.shape[0], G), False)
            np.put_along_axis(mask, keep, True, axis=1)
            sc = np.where(np.repeat(mask, E // G, axis=1), sc, -np.inf)
        return _topk_margin(sc, k), groups, np.argsort(-sc, axis=1)[:, :k]
    z = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    if name in ("deepseek_v2", "deepseek_v2_lite"):
        k = cfg.num_experts_per_tok
        if cfg.topk_method == "group_limited_greedy":
            G, TG = cfg.n_group, cfg.topk_group
            gs = prob.reshape(-1, G, E // G).max(axis=2)
            groups = _topk_margin(gs, TG)
            keep = np.argsort(-gs, axis=1)[:, :TG]
            mask = np.full((prob.shape[0], G), False)
            np.put_along_axis(mask, keep, True, axis=1)
            prob = np.where(np.repeat(mask, E // G, axis=1), prob, -np.inf)
        return _topk_margin(prob, k), groups, np.argsort(-prob, axis=1)[:, :k]
    if name == "ernie4_5_moe":
        sc = prob + p(mlp.gate.moe_statics.e_score_correction_bias).reshape(-1)
        k = cfg.num_experts_per_tok
        return _topk_margin(sc, k), groups, np.argsort(-sc, axis=1)[:, :k]
    k = cfg.num_experts_per_tok   # mixtral, qwen3_moe, qwen3_next, qwen3_5_moe: softmax, top-k
    return _topk_margin(prob, k), groups, np.argsort(-prob, axis=1)[:, :k]


def delta_rule_checks(model, ids):
    """Gated DeltaNet hybrids: the (q, k, v, g, beta) of every linear-attention layer on the prompt,
    captured by wrapping the modeling module's torch_chunk_gated_delta_rule during one forward.
    Returns the ranges of the per-token decay exp(g) and of beta, and (recurrent_check) for the
    first linear-attention layer the max |difference| between transformers' chunked kernel
    (torch_chunk_gated_delta_rule, 64-token chunks) and its token-by-token one
    (torch_recurrent_gated_delta_rule) on the same inputs, and how far the logits move when
    every layer's state is dropped at each 64-token boundary (that the prompt exercises the carry)."""
    import torch
    import transformers
    lin = [layer.linear_attn for layer in model.model.layers if hasattr(layer, "linear_attn")]
    mod = sys.modules[type(lin[0]).__module__]
    chunk, recur = mod.torch_chunk_gated_delta_rule, mod.torch_recurrent_gated_delta_rule
    calls = []

    def capture(query, key, value, **kw):
        calls.append((query, key, value, kw["g"], kw["beta"]))
        return chunk(query, key, value, **kw)
    mod.torch_chunk_gated_delta_rule = capture
    try:
        ref = forward_logits(model, ids)
    finally:
        mod.torch_chunk_gated_delta_rule = chunk

    def no_carry(query, key, value, **kw):      # the state dropped at every 64-token boundary
        out = [chunk(query[:, s:s + 64], key[:, s:s + 64], value[:, s:s + 64],
                     **dict(kw, g=kw["g"][:, s:s + 64], beta=kw["beta"][:, s:s + 64]))[0]
               for s in range(0, query.shape[1], 64)]
        return torch.cat(out, 1), None
    mod.torch_chunk_gated_delta_rule = no_carry
    try:
        dropped = float(np.abs(forward_logits(model, ids) - ref).max())
    finally:
        mod.torch_chunk_gated_delta_rule = chunk
    if len(calls) != len(lin):
        raise AssertionError(f"captured {len(calls)} delta-rule calls, want {len(lin)}")
    decay = np.concatenate([c[3].exp().double().numpy().ravel() for c in calls])
    beta = np.concatenate([c[4].double().numpy().ravel() for c in calls])
    q, k, v, g, b = calls[0]
    with torch.no_grad():
        oc, sc = chunk(q, k, v, g=g, beta=b, initial_state=None, output_final_state=True,
                       use_qk_l2norm_in_kernel=True)
        orr, sr = recur(q, k, v, g=g, beta=b, initial_state=None, output_final_state=True,
                        use_qk_l2norm_in_kernel=True)
    d_out = float((oc - orr).abs().max())
    d_state = float((sc - sr).abs().max())
    return {
        "layers": len(lin), "decay_min": float(decay.min()), "decay_max": float(decay.max()),
        "decay_median": float(np.median(decay)), "beta_min": float(beta.min()),
        "beta_max": float(beta.max()),
        "recurrent_check": {
            "what": "first linear-attention layer (model.layers.0.linear_attn), the fixture's own "
                    "prompt (T = %d): transformers' torch_chunk_gated_delta_rule (chunk_size 64) "
                    "against torch_recurrent_gated_delta_rule on the same q, k, v, g, beta "
                    "(float32, use_qk_l2norm_in_kernel); informative. "
                    "max_abs_logit_change_if_state_dropped_every_64_tokens: the logits with every "
                    "linear-attention layer's state dropped at each 64-token chunk boundary against "
                    "the reference (what a lost chunk-to-chunk carry costs)" % len(ids),
            "transformers_version": transformers.__version__,
            "max_abs_diff_output": d_out, "max_abs_output": float(orr.abs().max()),
            "max_abs_diff_final_state": d_state, "max_abs_final_state": float(sr.abs().max()),
            "max_abs_logit_change_if_state_dropped_every_64_tokens": dropped,
            "max_abs_logit": float(np.abs(ref).max()),
        },
    }


def margins_f64(spec, vdir, seq, n_prompt):
    """float64 run of the whole sequence: routing margins of every MoE layer and position, the
    greedy argmax margins, the float64 greedy ids, and counts of what was exercised."""
    import torch
    model = load_v5(spec, vdir, torch.float64)
    cfg = model.config
    captured = {}
    hooks = []
    for i, mlp in moe_modules(model):
        hooks.append(mlp.register_forward_pre_hook(
            lambda mod, args, i=i: captured.__setitem__(i, args[0].detach().reshape(-1, args[0].shape[-1]))))
    clamps = [0, 0]
    if spec["name"] == "gpt_oss":
        exp_cls = type(moe_modules(model)[0][1].experts)
        orig = exp_cls._apply_gate

        def counting(self, gate_up):
            clamps[0] += int((gate_up[..., ::2] > self.limit).sum())
            clamps[1] += int((gate_up[..., 1::2].abs() > self.limit).sum())
            return orig(self, gate_up)
        exp_cls._apply_gate = counting
    try:
        logits = forward_logits(model, seq)
    finally:
        for h in hooks:
            h.remove()
        if spec["name"] == "gpt_oss":
            exp_cls._apply_gate = orig
    emin, gmin, used = np.inf, np.inf, set()
    worst = None
    for i, mlp in moe_modules(model):
        em, gm, sel = route_decisions(spec, cfg, mlp, captured[i].numpy())
        used.update((i, int(e)) for e in sel.ravel())
        if em.min() < emin:
            emin, worst = float(em.min()), (i, int(np.argmin(em)))
        if gm.size:
            gmin = min(gmin, float(gm.min()))
    pos = list(range(n_prompt - 1, len(seq)))
    am = []
    ids64 = []
    for p in pos:
        row = np.sort(logits[p])[::-1]
        am.append((row[0] - row[1]) / np.abs(logits[p]).max())
        ids64.append(int(np.argmax(logits[p])))
    n_moe = len(moe_modules(model))
    E = getattr(model.config, "num_local_experts", None) or getattr(model.config, "num_experts", None)
    return {
        "routing_min": emin, "group_min": gmin if np.isfinite(gmin) else None,
        "greedy_min": float(min(am[:-1])), "worst_routing": worst,
        "ids64": ids64[:-1], "experts_used": len(used), "moe_layers": n_moe,
        "experts_total": n_moe * (E or 0), "clamps": clamps,
    }


# ----------------------------------------------------------------------------
# transformers 4.57 (a subprocess with PYTHONPATH=tf4)
# ----------------------------------------------------------------------------


def v4_worker(job):
    """Runs under transformers 4.57: 'save' writes v4/config.json, 'check' loads a dir and
    prints its logits' max |diff| against the reference."""
    import torch
    import transformers
    if job["op"] == "save":
        cls = getattr(transformers, job["cls"])
        cfg = cls(**job["params"])
        cfg.architectures = [job["arch"]]
        cfg.save_pretrained(job["out"])
        if job.get("patch"):
            cp = os.path.join(job["out"], "config.json")
            with open(cp) as f:
                c = json.load(f)
            c.update(job["patch"])
            with open(cp, "w") as f:
                json.dump(c, f, indent=2, sort_keys=True)
                f.write("\n")
        print(json.dumps({"version": transformers.__version__}))
        return
    cls = getattr(transformers, job["arch"])
    kw = {}
    if job.get("mxfp4"):
        kw["quantization_config"] = transformers.Mxfp4Config(dequantize=True)
    if job.get("config_cls"):
        kw["config"] = getattr(transformers, job["config_cls"]).from_pretrained(job["dir"])
    m = cls.from_pretrained(job["dir"], dtype=torch.float32, attn_implementation="eager", **kw).eval()
    dtypes = sorted({str(t.dtype) for t in m.state_dict().values() if t.is_floating_point()})
    if job.get("mxfp4"):
        # 4.57 dequantises the MXFP4 experts to bfloat16 whatever dtype= says (and then fails
        # on float32 activations); MXFP4 values are exact in bf16, so float32 loses nothing
        m = m.float()
    with torch.no_grad():
        lg = m(torch.tensor([job["ids"]]), use_cache=False).logits[0].double().numpy()
    from safetensors.numpy import load_file
    ref = load_file(job["ref"])["logits"].astype(np.float64)
    print(json.dumps({"version": transformers.__version__, "max_abs": float(np.abs(lg - ref).max()),
                      "model_type": m.config.model_type, "loaded_dtypes": dtypes}))


def run_tf4(tf4, job):
    env = dict(os.environ, PYTHONPATH=tf4)
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--v4-worker", "-"],
                       input=json.dumps(job), capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"transformers 4.57 worker failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def v4_params(spec):
    p = dict(spec["params"])
    p.pop("quantization_config", None)
    return p


def write_v4(spec, fdir, tf4, v5_files, seed=0):
    vdir = os.path.join(fdir, "v4")
    if os.path.isdir(vdir):
        shutil.rmtree(vdir)
    os.makedirs(vdir)
    if spec["v4"] == "published_qwen35":
        version = write_v4_qwen35(spec, fdir, seed)
        v5_files = [fn for fn in v5_files if fn != "model.safetensors"]
    elif spec["v4"] == "published":
        p = spec["params"]
        c = {"architectures": [spec["arch"]], "auto_map": {
                 "AutoConfig": "configuration_minimax_m2.MiniMaxM2Config",
                 "AutoModelForCausalLM": "modeling_minimax_m2.MiniMaxM2ForCausalLM"},
             "model_type": "minimax_m2", "mtp_transformer_layers": 1, "num_mtp_modules": 3,
             "use_mtp": False, "transformers_version": "4.46.1"}
        for k in MINIMAX_PUBLISHED_KEYS:
            if k not in c and k in p:
                c[k] = p[k]
        c["torch_dtype"] = "bfloat16"
        c["max_position_embeddings"] = p["max_position_embeddings"]
        missing = [k for k in MINIMAX_PUBLISHED_KEYS if k not in c]
        if missing:
            raise AssertionError(f"minimax v4 config lacks {missing}")
        with open(os.path.join(vdir, "config.json"), "w") as f:
            json.dump(c, f, indent=2, sort_keys=True)
            f.write("\n")
        version = "published (MiniMax-M2 remote code, transformers 4.46.1)"
    else:
        r = run_tf4(tf4, {"op": "save", "cls": spec["cls"], "arch": spec["arch"],
                          "params": v4_params(spec), "out": vdir, "patch": spec["v4_patch"]})
        version = r["version"]
        if spec["name"] == "gpt_oss":   # the published checkpoint's quantization_config
            cp = os.path.join(vdir, "config.json")
            c = json.load(open(cp))
            c["quantization_config"] = spec["params"]["quantization_config"]
            with open(cp, "w") as f:
                json.dump(c, f, indent=2, sort_keys=True)
                f.write("\n")
    for fn in v5_files:
        if fn != "config.json":
            os.symlink(os.path.join("..", "v5", fn), os.path.join(vdir, fn))
    return version


QWEN35_LAYOUT = (
    "published Qwen3.5-MoE checkpoint layout (Qwen/Qwen3.5-35B-A3B; transformers 4.57 has no Qwen3.5): "
    "config.json of Qwen3_5MoeForConditionalGeneration (model_type qwen3_5_moe, the text keys in "
    "text_config with model_type qwen3_5_moe_text, a vision_config, image/video token ids as "
    "published, outside this vocabulary); model.safetensors a real file (not a link): the text "
    "weights of v5/ renamed model.layers.* -> model.language_model.layers.* (likewise embed_tokens, "
    "norm) with each layer's experts fused as the published checkpoint stores them: "
    "mlp.experts.gate_up_proj [E, 2F, H] (the gate_proj rows of each expert, then its up_proj rows) "
    "and mlp.experts.down_proj [E, H, F], no .weight suffix; lm_head.weight top-level; a one-block "
    "vision tower model.visual.* and a one-layer MTP head mtp.* (mtp.fc, mtp.pre_fc_norm_embedding, "
    "mtp.pre_fc_norm_hidden, mtp.norm, mtp.layers.0.* with per-expert experts), both random and "
    "used by no reference; the other files link to ../v5/")


def _aux_value(name, shape, rng):
    """Random values of the vision tower / MTP head tensors of qwen3_5_moe's v4/ (no reference
    uses them: a loader must meet and skip them)."""
    leaf = name.rsplit(".", 1)[-1]
    parent = name.rsplit(".", 2)[-2]
    if leaf == "bias":
        return rng.standard_normal(shape) * 0.02
    if "norm" in parent:
        if name.startswith("model.visual."):            # LayerNorm: plain weight
            return 1.0 + rng.standard_normal(shape) * 0.1
        return rng.standard_normal(shape) * 0.1         # Qwen RMSNorm: 1 + weight
    if name.endswith("pos_embed.weight"):
        return rng.standard_normal(shape) * 0.5
    if leaf == "A_log":
        return np.log(rng.uniform(0.02, 0.3, shape))
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return rng.standard_normal(shape) * (0.8 / math.sqrt(fan_in))


def write_v4_qwen35(spec, fdir, seed):
    """qwen3_5_moe's v4/: config.json and model.safetensors in the published Qwen3.5-MoE layout
    (QWEN35_LAYOUT), from v5/."""
    import re
    import torch
    import transformers
    from safetensors.torch import load_file, save_file
    v5, vdir = os.path.join(fdir, "v5"), os.path.join(fdir, "v4")
    with open(os.path.join(v5, "config.json")) as f:
        cfg5 = json.load(f)
    text = {}
    for k in QWEN35_PUBLISHED_TEXT_KEYS:
        if k in QWEN35_PUBLISHED_TEXT_SET:
            text[k] = QWEN35_PUBLISHED_TEXT_SET[k]
        elif k in cfg5:
            text[k] = cfg5[k]
        else:
            raise AssertionError(f"qwen3_5_moe: v5 config lacks {k}")
    if text["partial_rotary_factor"] != text["rope_parameters"]["partial_rotary_factor"]:
        raise AssertionError("qwen3_5_moe: partial_rotary_factor differs from rope_parameters'")
    c = dict(QWEN35_PUBLISHED, text_config=text, vision_config=dict(QWEN35_PUBLISHED_VISION))
    with open(os.path.join(vdir, "config.json"), "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")

    sd5 = load_file(os.path.join(v5, "model.safetensors"))
    E, L = cfg5["num_experts"], cfg5["num_hidden_layers"]
    per_expert = re.compile(r"model\.layers\.\d+\.mlp\.experts\.\d+\.(gate|up|down)_proj\.weight$")
    out = {}
    for k, t in sd5.items():
        if per_expert.match(k):
            continue
        out["model.language_model." + k[len("model."):] if k.startswith("model.") else k] = t
    for i in range(L):
        pre = f"model.layers.{i}.mlp.experts"
        w = {p: torch.stack([sd5[f"{pre}.{e}.{p}_proj.weight"] for e in range(E)])
             for p in ("gate", "up", "down")}
        fused = f"model.language_model.layers.{i}.mlp.experts"
        out[f"{fused}.gate_up_proj"] = torch.cat([w["gate"], w["up"]], 1).contiguous()
        out[f"{fused}.down_proj"] = w["down"].contiguous()
    if len(out) != len(sd5) - 3 * E * L + 2 * L:
        raise AssertionError("qwen3_5_moe: v4 renaming lost tensors")

    # the vision tower: names and shapes of transformers 5's model of this config
    cfg = transformers.Qwen3_5MoeConfig.from_pretrained(vdir)
    full = transformers.Qwen3_5MoeForConditionalGeneration(cfg)
    aux = {k: tuple(t.shape) for k, t in full.state_dict().items() if k.startswith("model.visual.")}
    del full
    # the MTP head: fc [H, 2H], three norms, and one decoder layer shaped as the last
    # full-attention layer (its experts per expert)
    H = cfg5["hidden_size"]
    last_full = max(i for i, t in enumerate(cfg5["layer_types"]) if t == "full_attention")
    aux.update({"mtp.fc.weight": (H, 2 * H), "mtp.pre_fc_norm_embedding.weight": (H,),
                "mtp.pre_fc_norm_hidden.weight": (H,), "mtp.norm.weight": (H,)})
    for k, t in sd5.items():
        if k.startswith(f"model.layers.{last_full}."):
            aux["mtp.layers.0." + k[len(f"model.layers.{last_full}."):]] = tuple(t.shape)
    for k in sorted(aux):
        val = bf16_round(_aux_value(k, aux[k], rng_for(seed, k)).astype(np.float32))
        out[k] = torch.from_numpy(val).to(torch.bfloat16)
    save_file(out, os.path.join(vdir, "model.safetensors"), metadata={"format": "pt"})
    return "published (Qwen3.5-MoE, transformers 4.57.0.dev0 config; written by hand)"


def check_v4_qwen35(vdir, ids, ref_logits):
    """qwen3_5_moe's v4/ through transformers 5 (4.57 has no Qwen3.5): the whole published layout in
    Qwen3_5MoeForConditionalGeneration (every tensor but mtp.* loaded, none missing), and the text
    weights alone in Qwen3_5MoeForCausalLM; max |logits - reference| of each."""
    import torch
    import transformers
    res = {"version": f"{transformers.__version__} (4.57 has no Qwen3.5)"}
    worst = 0.0
    for cls in ("Qwen3_5MoeForConditionalGeneration", "Qwen3_5MoeForCausalLM"):
        m, info = getattr(transformers, cls).from_pretrained(
            vdir, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager",
            output_loading_info=True)
        m.eval()
        missing = sorted(info.get("missing_keys") or [])
        mismatched = list(info.get("mismatched_keys") or [])
        if missing or mismatched:
            raise AssertionError(f"qwen3_5_moe v4/ in {cls}: missing {missing[:5]} "
                                 f"mismatched {mismatched[:5]}")
        with torch.no_grad():
            lg = m(input_ids=torch.tensor([ids]), use_cache=False).logits[0].double().numpy()
        d = float(np.abs(lg - ref_logits).max())
        worst = max(worst, d)
        res[cls] = {"max_abs": d, "model_type": m.config.model_type,
                    "unexpected_keys": len(info.get("unexpected_keys") or []),
                    "loaded_tensors": len(m.state_dict())}
        del m
    res["max_abs"] = worst
    return res


def check_v4(spec, fdir, tf4, ids, ref_logits):
    """v4/ through transformers 4.57 (minimax_m2: 5): max |logits - reference| (reference.safetensors
    must be written already)."""
    vdir = os.path.join(fdir, "v4")
    if spec["v4"] == "published_qwen35":
        return check_v4_qwen35(vdir, ids, ref_logits)
    if spec["v4"] == "published":   # 4.57 has no MiniMax-M2: transformers 5 reads the published keys
        import torch
        import transformers
        cfg = transformers.AutoConfig.from_pretrained(vdir)
        m = transformers.AutoModelForCausalLM.from_pretrained(
            vdir, config=cfg, dtype=torch.float32, attn_implementation="eager",
            experts_implementation="eager").eval()
        lg = forward_logits(m, ids)
        return {"version": f"{transformers.__version__} (4.57 has no MiniMaxM2)",
                "max_abs": float(np.abs(lg - ref_logits).max()), "model_type": cfg.model_type}
    job = {"op": "check", "arch": spec["arch"], "dir": vdir, "ids": ids,
           "ref": os.path.join(fdir, "reference.safetensors"),
           "mxfp4": spec["name"] == "gpt_oss"}
    if spec["v4_patch"].get("model_type"):
        job["config_cls"] = spec["cls"]
    return run_tf4(tf4, job)


# ----------------------------------------------------------------------------
# tokenizers (optional: per-family files from --tokenizers DIR)
# ----------------------------------------------------------------------------


# fixture -> its family's folder under tests/data/tokenizers ("../../../models/tiny-moe": the
# demo model's byte-level BPE, for Mixtral, whose real tokenizer is SentencePiece)
FIXTURE_TOKENIZER = {
    "deepseek_v2": "deepseek-llm", "deepseek_v2_lite": "deepseek-llm",
    "deepseek_v3": "deepseek-v3", "kimi_k2": "kimi-k2", "dots1": "dots1",
    "ernie4_5_moe": "ernie45", "glm4_moe": "glm45", "glm4_moe_noqk": "glm45",
    "gpt_oss": "gpt-oss", "minimax_m2": "minimax-m2", "qwen3_moe_v5": "qwen3",
    "mixtral_swa": "../../../models/tiny-moe", "qwen3_next": "qwen3", "qwen3_5_moe": "qwen35",
}


def find_tokenizer(spec, tokdir):
    if not tokdir:
        return None
    for cand in (FIXTURE_TOKENIZER.get(spec["name"]), spec["name"], spec["family"],
                 spec["params"].get("model_type", "")):
        d = os.path.join(tokdir, cand)
        if cand and os.path.isfile(os.path.join(d, "tokenizer.json")):
            return d
    return None


def tokenizer_pre(tok):
    """tokenizer.ggml.pre of a family tokenizer's GGUF twin (vocab.gguf beside it, written by
    tests/reference/make_family_tokenizer.py as llama.cpp names it), or None."""
    import moe_ref
    p = os.path.join(tok, "vocab.gguf") if tok else None
    if not p or not os.path.isfile(p):
        return None
    meta, _ = moe_ref.read_gguf(p)
    return meta.get("tokenizer.ggml.pre")


def copy_tokenizer(src, vdir):
    for fn in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.isfile(os.path.join(src, fn)):
            shutil.copyfile(os.path.join(src, fn), os.path.join(vdir, fn))
    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    ids = list(tj["model"]["vocab"].values()) + [a["id"] for a in tj.get("added_tokens", [])]
    if max(ids) >= V:
        raise ValueError(f"{src}/tokenizer.json: token id {max(ids)} >= vocab {V}")


# ----------------------------------------------------------------------------
# llama.cpp's converter, for comparison (--check-llamacpp)
# ----------------------------------------------------------------------------

# what the real converter writes differently from model.gguf, on purpose (see the mapping
# tables in make_arch_model.py): key -> reason
KNOWN_DIFFS = {
    "llama.attention.sliding_window": "moed extension: Mixtral's sliding_window (llama.cpp drops it)",
}

_CONVERT_SHIM = r"""
import inspect, runpy, sys
L = sys.argv[1]
sys.path.insert(0, L)
import conversion, conversion.base as base
if hasattr(conversion, "load_all_models"):
    conversion.load_all_models()
def _no_vocab(self):
    pass
for mod in list(sys.modules.values()):
    if getattr(mod, "__name__", "").startswith("conversion"):
        for _, c in inspect.getmembers(mod, inspect.isclass):
            if isinstance(c, type) and issubclass(c, base.ModelBase) and "set_vocab" in c.__dict__:
                c.set_vocab = _no_vocab
base.TextModel.set_vocab = _no_vocab
sys.argv = ["convert_hf_to_gguf.py"] + sys.argv[2:]
runpy.run_path(L + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def run_llamacpp(llama_dir, src, out, name, extra=()):
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(_CONVERT_SHIM)
        shim = f.name
    try:
        r = subprocess.run([sys.executable, shim, llama_dir, src, "--outfile", out, "--outtype", "bf16",
                            "--model-name", name, *extra], capture_output=True, text=True)
    finally:
        os.unlink(shim)
    if r.returncode != 0:
        return None, r.stderr[-1500:]
    return out, ""


def gguf_contents(path):
    from gguf import GGUFReader
    r = GGUFReader(path)
    kv = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k.startswith("tokenizer."):
            continue
        v = f.contents()
        kv[k] = (f.types[0].name if f.types else "", v)
    ts = {t.name: (list(int(x) for x in t.shape), t.tensor_type.name, bytes(t.data.tobytes())) for t in r.tensors}
    return kv, ts


def compare_gguf(mine, theirs, ignore=("general.name", "general.version")):
    """Differences between two GGUF files (metadata except tokenizer.*, tensors). general.name
    and general.version are the converter's guesses from the directory name (v4, v5)."""
    a_kv, a_t = gguf_contents(mine)
    b_kv, b_t = gguf_contents(theirs)
    diffs = []
    for k in sorted(set(a_kv) | set(b_kv)):
        if k in ignore:
            continue
        if k not in b_kv:
            diffs.append(f"key {k} only in model.gguf" + (f" ({KNOWN_DIFFS[k]})" if k in KNOWN_DIFFS else ""))
        elif k not in a_kv:
            diffs.append(f"key {k} = {b_kv[k][1]!r} only in llama.cpp's")
        else:
            va, vb = a_kv[k], b_kv[k]
            same = va[0] == vb[0] and (
                np.allclose(va[1], vb[1], rtol=0, atol=0) if isinstance(va[1], float) else va[1] == vb[1])
            if not same:
                diffs.append(f"key {k}: model.gguf {va} vs llama.cpp {vb}")
    for n in sorted(set(a_t) | set(b_t)):
        if n not in b_t:
            diffs.append(f"tensor {n} only in model.gguf")
        elif n not in a_t:
            diffs.append(f"tensor {n} {b_t[n][:2]} only in llama.cpp's")
        elif a_t[n][:2] != b_t[n][:2]:
            diffs.append(f"tensor {n}: model.gguf {a_t[n][:2]} vs llama.cpp {b_t[n][:2]}")
        elif a_t[n][2] != b_t[n][2]:
            diffs.append(f"tensor {n}: bytes differ")
    return diffs


# ----------------------------------------------------------------------------
# one fixture
# ----------------------------------------------------------------------------


def prompt_for(seed, n=T):
    rng = np.random.default_rng([1234, seed])
    return [int(i) for i in rng.integers(3, V, n)]


def write_reference(fdir, ids, cont, logits, meta):
    from safetensors.numpy import save_file
    save_file({"logits": np.ascontiguousarray(logits, dtype=np.float32),
               "prompt_ids": np.asarray(ids, dtype=np.int32),
               "continuation_ids": np.asarray(cont, dtype=np.int32)},
              os.path.join(fdir, "reference.safetensors"), metadata={"format": "np"})
    with open(os.path.join(fdir, "reference.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def make_fixture(spec, args):
    import torch
    import transformers
    import make_arch_model as mk
    name = spec["name"]
    fdir = os.path.join(args.out, name)
    os.makedirs(fdir, exist_ok=True)
    vdir = os.path.join(fdir, "v5")
    tok = find_tokenizer(spec, args.tokenizers)
    tries = []
    for attempt in range(args.max_tries):
        wseed = spec["seed"] + 100 * (attempt // 4)     # every 4th failure: new weights
        pseed = attempt
        want, _ = build_v5(spec, vdir, wseed)
        if tok:
            copy_tokenizer(tok, vdir)
        m32 = load_v5(spec, vdir, torch.float32)
        check_loaded(spec, m32, want)
        ids = prompt_for(pseed, spec["T"])
        logits = forward_logits(m32, ids)
        cont = greedy(m32, ids, N_CONT)
        mg = margins_f64(spec, vdir, ids + cont, spec["T"])
        worst = min(mg["routing_min"], mg["group_min"] if mg["group_min"] is not None else np.inf,
                    mg["greedy_min"])
        tries.append({"weights_seed": wseed, "prompt_seed": pseed, "smallest_margin": worst})
        if mg["ids64"] != cont:
            log(f"  {name}: float64 greedy ids differ from float32's; next seed")
            continue
        if worst >= MARGIN_MIN:
            break
        log(f"  {name}: smallest margin {worst:.2e} < {MARGIN_MIN}; next seed")
    else:
        raise RuntimeError(f"{name}: no seed with all margins >= {MARGIN_MIN} in {args.max_tries} tries")
    v5_files = sorted(os.listdir(vdir))
    cfg5 = json.load(open(os.path.join(vdir, "config.json")))
    options = list(spec["notes"])
    options.append(f"MoE layers {mg['moe_layers']}; experts chosen at least once: {mg['experts_used']} "
                   f"of {mg['experts_total'] or 'n/a'} (layer x expert pairs)")
    if name in HYBRIDS:
        dn = delta_rule_checks(m32, ids)
        options.append(f"Gated DeltaNet on the prompt (all {dn['layers']} linear-attention layers): "
                       f"exp(g) in [{dn['decay_min']:.3f}, {dn['decay_max']:.3f}] (median "
                       f"{dn['decay_median']:.3f}), beta in [{dn['beta_min']:.3f}, {dn['beta_max']:.3f}]")
    if name == "gpt_oss":
        options.append(f"SwiGLU clamps hit (prompt + continuation, all chosen experts): gate > 7: "
                       f"{mg['clamps'][0]}, |up| > 7: {mg['clamps'][1]}")
        if min(mg["clamps"]) == 0:
            raise AssertionError("gpt_oss: the SwiGLU clamps are never exercised")
    meta = {
        "name": name, "architecture": spec["arch"], "model_type_v5": cfg5.get("model_type"),
        "T": spec["T"], "V": V, "prompt_ids": ids, "continuation_ids": cont,
        "reference": "transformers %s, torch %s, float32, attn_implementation eager, "
                     "experts_implementation eager, the v5/ "
                     "checkpoint loaded back; logits of every prompt position; the continuation "
                     "is %d argmax steps, each recomputing the whole sequence" %
                     (transformers.__version__, torch.__version__, N_CONT),
        "transformers_version": transformers.__version__, "torch_version": torch.__version__,
        "options": options,
        "margins": {"rule": "relative: (k-th - (k+1)-th score) / max |score| of that token; "
                            "greedy: (top1 - top2) / max |logit|; float64",
                    "routing_min": mg["routing_min"], "group_min": mg["group_min"],
                    "greedy_min": mg["greedy_min"], "threshold": MARGIN_MIN},
        "seeds": {"weights": wseed, "prompt": pseed, "tries": tries},
        "tokenizer": os.path.normpath(os.path.relpath(tok, args.tokenizers)) if tok else None,
    }
    if name in HYBRIDS:
        meta["margins"]["rule"] += (
            "; the float64 run is float32 where transformers casts: the RMSNorms, the gated norm, "
            "the delta-rule kernels, the router softmax (the routing margins are recomputed in "
            "float64 from the captured inputs)")
        meta["recurrent_check"] = dn["recurrent_check"]
    if not args.no_v4:
        meta["v4"] = {"writer": write_v4(spec, fdir, args.tf4, v5_files, wseed)}
        if spec["v4"] == "published_qwen35":
            meta["v4"]["layout"] = QWEN35_LAYOUT
    write_reference(fdir, ids, cont, logits, meta)
    if not args.no_v4:
        r = check_v4(spec, fdir, args.tf4, ids, logits.astype(np.float32))
        meta["v4"]["check"] = r
        if r["max_abs"] > V4_TOL:
            raise AssertionError(f"{name}: v4/ logits differ from the reference by {r['max_abs']:.3g}")
    if not args.no_gguf and not spec["gguf"]:
        # the hybrids: model.gguf is llama.cpp's own converter's output (its vocabulary step
        # disabled, no MTP layers), as make_arch_model.py has no mapping for them
        gguf_path = os.path.join(fdir, "model.gguf")
        if not args.check_llamacpp:
            raise SystemExit(f"{name}: its model.gguf comes from llama.cpp's converter: give "
                             "--check-llamacpp LLAMA_CPP_DIR")
        path, err = run_llamacpp(args.check_llamacpp, vdir, gguf_path, name, ["--no-mtp"])
        if path is None:
            raise SystemExit(f"{name}: convert_hf_to_gguf.py failed: {err}")
        meta["gguf"] = {"from": "v5/config.json", "type": "bf16 matrices, f32 norms",
                        "writer": "llama.cpp's convert_hf_to_gguf.py --no-mtp (vocabulary "
                                  "step disabled)", "vocab": False}
    if args.no_gguf or not spec["gguf"]:
        meta["size_bytes"] = dir_size(fdir)
        write_reference(fdir, ids, cont, logits, meta)
        fix_modes(fdir)
        return meta
    src = os.path.join(fdir, "v4") if not args.no_v4 else vdir
    gguf_path = os.path.join(fdir, "model.gguf")
    mk.convert_hf_to_gguf(src, gguf_path, "bf16", name=name, vocab="auto", pre=tokenizer_pre(tok))
    meta["gguf"] = {"from": os.path.basename(src) + "/config.json", "type": "bf16 matrices, f32 norms"
                    + (", MXFP4 experts" if name == "gpt_oss" else ""),
                    "vocab": bool(tok)}
    n_checked = check_gguf(spec, gguf_path, vdir)
    meta["gguf"]["tensors_checked"] = n_checked
    if args.check_llamacpp:
        meta["gguf"]["llamacpp"] = {}
        for which in ("v4", "v5"):
            d = os.path.join(fdir, which)
            if not os.path.isdir(d):
                continue
            out = os.path.join(tempfile.mkdtemp(prefix="fx_llcpp_"), "ref.gguf")
            path, err = run_llamacpp(args.check_llamacpp, d, out, name)
            if path is None:
                meta["gguf"]["llamacpp"][which] = ["convert_hf_to_gguf.py failed: " + err.strip().splitlines()[-1]]
            else:
                meta["gguf"]["llamacpp"][which] = compare_gguf(gguf_path, path) or ["identical"]
            shutil.rmtree(os.path.dirname(out), ignore_errors=True)
    write_reference(fdir, ids, cont, logits, meta)
    meta["size_bytes"] = dir_size(fdir)
    write_reference(fdir, ids, cont, logits, meta)
    fix_modes(fdir)
    return meta


def fix_modes(fdir):
    for dp, _, fns in os.walk(fdir):       # safetensors' writer leaves 0600
        for fn in fns:
            if not os.path.islink(os.path.join(dp, fn)):
                os.chmod(os.path.join(dp, fn), 0o644)


def check_gguf(spec, gguf_path, vdir):
    """Every checkpoint tensor is in the GGUF (mapped back with make_arch_model's inverse)."""
    import make_arch_model as mk
    import moe_ref
    hf = moe_ref.read_hf_dir(vdir)
    back = mk.gguf_to_hf_tensors(gguf_path)
    bad = []
    for k, a in hf.items():
        if k not in back:
            bad.append(f"{k}: not in the GGUF")
        elif back[k].shape != a.shape or not np.array_equal(back[k], a):
            bad.append(f"{k}: differs {back[k].shape} vs {a.shape}")
    extra = sorted(set(back) - set(hf))
    if bad or extra:
        raise AssertionError(f"{spec['name']}: GGUF round trip: {bad[:5]} extra {extra[:5]}")
    return len(hf)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="comma-separated fixture names")
    ap.add_argument("--list", action="store_true", help="list the fixtures and exit")
    ap.add_argument("--out", default=OUT, help="output root (default tests/data/arch)")
    ap.add_argument("--tokenizers", help="directory of per-family tokenizers "
                    "(DIR/<family>/tokenizer.json [+ tokenizer_config.json], ids < 1024); "
                    "copied into v5/ and embedded in model.gguf")
    ap.add_argument("--tf4", default=TF4_DEFAULT, help="PYTHONPATH of transformers 4.57")
    ap.add_argument("--no-v4", action="store_true", help="skip v4/ (no transformers 4.57 at hand)")
    ap.add_argument("--no-gguf", action="store_true", help="skip model.gguf")
    ap.add_argument("--check-llamacpp", metavar="LLAMA_CPP_DIR",
                    help="also convert with llama.cpp's convert_hf_to_gguf.py and compare")
    ap.add_argument("--max-tries", type=int, default=16)
    ap.add_argument("--v4-worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.v4_worker:
        v4_worker(json.loads(sys.stdin.read() if a.v4_worker == "-" else a.v4_worker))
        return 0
    if a.list:
        for s in SPECS:
            print(f"{s['name']:18s} {s['arch']}")
        return 0
    names = a.only.split(",") if a.only else [s["name"] for s in SPECS]
    for n in names:
        if n not in BY_NAME:
            ap.error(f"unknown fixture '{n}'; known: {', '.join(BY_NAME)}")
    summary = {}
    for n in names:
        log(f"{n} ...")
        meta = make_fixture(BY_NAME[n], a)
        summary[n] = {"size_bytes": meta["size_bytes"], "margins": meta["margins"],
                      "v4": meta.get("v4", {}).get("check"),
                      "llamacpp": meta["gguf"].get("llamacpp") if isinstance(meta.get("gguf"), dict)
                      else meta.get("gguf")}
        log(json.dumps(summary[n], indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
