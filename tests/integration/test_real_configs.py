#!/usr/bin/env python3
"""The config.json of the real published MoE checkpoints, as moed parses them.

tests/data/configs/NAME.json holds the config.json of a published checkpoint (provenance of each
in tests/data/configs/README.md). For every one,

    $BIN/moe-bench config --model tests/data/configs/NAME.json

either prints the parsed config, whose fields that change the logits are checked against the
values below (for the hybrids, also which layers are Gated DeltaNet and the linear attention's
shape), or, where the checkpoint uses something moed does not compute (the FP8 block
quantization of DeepSeek-V3, R1, V3.1, Kimi-K2 and MiniMax-M2), exits 2 naming the key. A copy of
each refused config without its quantization_config (what a bf16 conversion of the checkpoint
holds) must then parse, with the same checks.

The expected values are read off transformers 5.25's code for each model
(transformers/models/<model>/configuration_*.py and modeling_*.py, and modeling_rope_utils.py
for the rotary embedding), not off moed's output; the comments name the code each comes from.
Where transformers has one group holding every expert (n_group 1), moed writes no groups (0):
the same routing.

BIN (default build/bin) names the binaries. Run from the repo root:
    /usr/bin/python3 tests/integration/test_real_configs.py -v
"""

import json
import math
import os
import subprocess
import tempfile
import unittest

ROOT = os.environ.get("MOE_ROOT") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("BIN") or os.path.join(ROOT, "build", "bin")
if not os.path.isabs(BIN):
    BIN = os.path.join(ROOT, BIN)
BENCH = os.path.join(BIN, "moe-bench")
DATA = os.path.join(ROOT, "tests", "data", "configs")


def yarn_get_mscale(scale, mscale=1.0):
    """modeling_rope_utils.yarn_get_mscale: 0.1 * mscale * log(scale) + 1 (1 when scale <= 1)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def expect(**kw):
    """What every architecture has unless its entry says otherwise: a plain GQA decoder with
    SiLU experts, softmax routing over all experts, no biases, no groups, no shared experts, no
    sliding window, no linear-attention layers, no output gate, rotary embedding over the whole
    head without scaling."""
    e = dict(attn="gqa", shared_ffn=0, dense=[], swa=[], linear=[], attn_gate=False,
             sliding_window=0, qkv_bias=False,
             o_bias=False, mlp_bias=False, expert_bias=False, router_bias=False,
             score_bias=False, shared_gate=False, attn_sinks=False, qk_norm="none", act="silu",
             tied_embeddings=False, rope_scaling="none", rope_interleaved=False,
             rope_attn_factor=1.0, routed_scale=1.0, n_group=0, topk_group=0)
    e.update(kw)
    if "rope_dim" not in e and e["attn"] == "gqa":
        e["rope_dim"] = e["head_dim"]
    if "attn_scale" not in e and e["attn"] == "gqa":
        e["attn_scale"] = e["head_dim"] ** -0.5  # every GQA model here: scaling = head_dim**-0.5
    return e


# ---- Mixtral (mixtral/modeling_mixtral.py) --------------------------------------------------
# MixtralTopKRouter: softmax over all experts, top-k, then always divided by their sum.
# MixtralExperts: intermediate_size per expert. sliding_window null: create_causal_mask.
def mixtral(**kw):
    return expect(arch="mixtral", router="softmax", norm_topk_prob=True, n_experts=8, top_k=2,
                  vocab=32000, n_kv_heads=8, head_dim=128, rms_eps=1e-5, rope_theta=1e6, **kw)


# ---- Qwen2-MoE (qwen2_moe/) ----------------------------------------------------------------
# Qwen2MoeSparseMoeBlock: softmax, top-k, renormalised only with norm_topk_prob; a shared expert
# of shared_expert_intermediate_size scaled by sigmoid(shared_expert_gate x). q/k/v projections
# have bias=config.qkv_bias (default True), o_proj none. use_sliding_window false: layer_types
# all full_attention (Qwen2MoeConfig.__post_init__). Every layer sparse: decoder_sparse_step 1,
# mlp_only_layers empty.
def qwen2(**kw):
    return expect(arch="qwen2_moe", router="softmax", norm_topk_prob=False, shared_gate=True,
                  qkv_bias=True, vocab=151936, head_dim=128, rms_eps=1e-6, rope_theta=1e6, **kw)


# ---- Qwen3-MoE (qwen3_moe/) ----------------------------------------------------------------
# q_norm / k_norm = Qwen3MoeRMSNorm(head_dim): per head. attention_bias false. use_sliding_window
# false: Qwen3MoeConfig.__post_init__ sets sliding_window None, so no window.
def qwen3(**kw):
    return expect(arch="qwen3_moe", router="softmax", norm_topk_prob=True, qk_norm="head",
                  n_experts=128, top_k=8, vocab=151936, n_kv_heads=4, head_dim=128, rms_eps=1e-6,
                  rope_theta=1e6, max_ctx=40960, **kw)


# ---- DeepSeek-V2 (deepseek_v2/) ------------------------------------------------------------
# DeepseekV2Config: head_dim = qk_rope_head_dim (what the rope sees), qk_head_dim = nope + rope.
# DeepseekV2TopkRouter: softmax; greedy = top-k of all, group_limited_greedy = top-k inside the
# topk_group groups of highest max; weights * routed_scaling_factor, never renormalised.
# DeepseekV2Moe: shared experts of moe_intermediate_size * n_shared_experts. Dense MLP below
# first_k_dense_replace. apply_rotary_emb: view_as_complex of adjacent pairs (interleaved).
# Attention scaling = yarn_apply_mscale(rope_parameters, qk_head_dim ** -0.5), which multiplies
# by yarn_get_mscale(factor, mscale_all_dim) ** 2. _compute_yarn_parameters: attention_factor =
# yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim); truncate defaults True.
def mla(factor, mscale, mscale_all_dim, orig, beta_fast=32, beta_slow=1, q_lora=1536, **kw):
    return dict(attn="mla", head_dim=192, v_head_dim=128, qk_nope_dim=128, qk_rope_dim=64,
                kv_lora_rank=512, q_lora_rank=q_lora, rope_dim=64, rope_interleaved=True,
                rope_scaling="yarn", rope_factor=factor, rope_orig_ctx=orig,
                yarn_beta_fast=beta_fast, yarn_beta_slow=beta_slow, yarn_truncate=True,
                rope_attn_factor=yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim),
                attn_scale=192 ** -0.5 * yarn_get_mscale(factor, mscale_all_dim) ** 2, **kw)


def deepseek_v2(**kw):
    return expect(arch="deepseek2", norm_topk_prob=False, vocab=102400, rms_eps=1e-6,
                  rope_theta=1e4, max_ctx=163840, dense=[0], **kw)


# ---- DeepSeek-V3 (deepseek_v3/) -------------------------------------------------------------
# DeepseekV3TopkRouter / DeepseekV3MoE.route_tokens_to_experts: sigmoid scores, choice by scores +
# e_score_correction_bias inside the topk_group of n_group groups (a group's score: its best two),
# weights the unbiased scores, renormalised with norm_topk_prob, times routed_scaling_factor.
# rope_interleave defaults True (apply_rotary_pos_emb_interleave). The rest as DeepSeek-V2.
def deepseek_v3(**kw):
    kw.setdefault("rope_theta", 1e4)
    return expect(arch="deepseek3", router="sigmoid", score_bias=True, norm_topk_prob=True,
                  rms_eps=1e-6, **kw)


V3_SHAPE = dict(vocab=129280, hidden=7168, n_layers=61, n_heads=128, n_kv_heads=128, n_experts=256,
                top_k=8, expert_ffn=2048, shared_ffn=2048, dense_ffn=18432, dense=[0, 1, 2],
                n_group=8, topk_group=4, routed_scale=2.5, max_ctx=163840,
                **mla(40, 1.0, 1.0, 4096))
KIMI_SHAPE = dict(vocab=163840, hidden=7168, n_layers=61, n_heads=64, n_kv_heads=64, n_experts=384,
                  top_k=8, expert_ffn=2048, shared_ffn=2048, dense_ffn=18432, dense=[0],
                  n_group=0, topk_group=0, routed_scale=2.827, max_ctx=131072, rope_theta=50000.0,
                  **mla(32.0, 1.0, 1.0, 4096, beta_fast=1.0, beta_slow=1.0))


# ---- GLM-4.5 / 4.6 (glm4_moe/) -------------------------------------------------------------
# Glm4MoeAttention: q/k/v bias=config.attention_bias, o_proj bias=False; q_norm/k_norm over
# head_dim when use_qk_norm. Glm4MoeRotaryEmbedding: dim = head_dim * partial_rotary_factor,
# apply_rotary_pos_emb with rotate_half on the first rotary_dim (not interleaved). Router as
# DeepSeek-V3 (sigmoid + e_score_correction_bias, n_group, norm_topk_prob, routed_scaling_factor);
# shared experts moe_intermediate_size * n_shared_experts; dense below first_k_dense_replace.
def glm(**kw):
    return expect(arch="glm4_moe", router="sigmoid", score_bias=True, norm_topk_prob=True,
                  qkv_bias=True, o_bias=False, vocab=151552, n_heads=96, n_kv_heads=8,
                  head_dim=128, rope_dim=64, rms_eps=1e-5, rope_theta=1e6, top_k=8, **kw)


GLM45 = dict(hidden=5120, n_layers=92, n_experts=160, expert_ffn=1536, shared_ffn=1536,
             dense_ffn=12288, dense=[0, 1, 2], routed_scale=2.5, qk_norm="head")


# ---- gpt-oss (gpt_oss/) ---------------------------------------------------------------------
# GptOssTopKRouter: linear with bias, top-k of the logits, softmax over those k. GptOssExperts:
# gate_up/down biases, gate clamped above at swiglu_limit, up to [-limit, limit],
# gate * sigmoid(alpha * gate) * (up + 1), alpha = swiglu_alpha (default 1.702: the config has
# none). GptOssAttention: q/k/v/o bias (attention_bias true), sinks per head, sliding_window on
# the layers layer_types calls sliding_attention (here the even ones), scaling head_dim ** -0.5.
# YaRN from rope_scaling: no mscale keys, so attention_factor = yarn_get_mscale(factor);
# truncate false.
def gpt_oss(n_layers, n_experts):
    return expect(arch="gpt_oss", router="topk_softmax", router_bias=True, expert_bias=True,
                  qkv_bias=True, o_bias=True, attn_sinks=True, act="swiglu_oai",
                  swiglu_alpha=1.702, swiglu_limit=7.0, vocab=201088, hidden=2880,
                  n_layers=n_layers, n_heads=64, n_kv_heads=8, head_dim=64, n_experts=n_experts,
                  top_k=4, expert_ffn=2880, max_ctx=131072, rms_eps=1e-5, rope_theta=150000.0,
                  sliding_window=128, swa=list(range(0, n_layers, 2)), rope_scaling="yarn",
                  rope_factor=32.0, rope_orig_ctx=4096, yarn_beta_fast=32.0, yarn_beta_slow=1.0,
                  yarn_truncate=False, rope_attn_factor=yarn_get_mscale(32.0))


# ---- MiniMax-M2 (minimax_m2/) ---------------------------------------------------------------
# MiniMaxM2Config.convert_rope_params_to_dict: partial_rotary_factor = rotary_dim / head_dim.
# MiniMaxM2Attention: q_norm over num_attention_heads * head_dim, k_norm over
# num_key_value_heads * head_dim (the whole projection). MiniMaxM2TopKRouter: sigmoid, choice by
# scores + e_score_correction_bias, weights the unbiased scores divided by their sum; no scaling,
# no groups, no shared experts. Experts of intermediate_size.
MINIMAX = dict(arch="minimax_m2", router="sigmoid", score_bias=True, norm_topk_prob=True,
               qk_norm="full", vocab=200064, hidden=3072, n_layers=62, n_heads=48, n_kv_heads=8,
               head_dim=128, rope_dim=64, n_experts=256, top_k=8, expert_ffn=1536, max_ctx=196608,
               rms_eps=1e-6, rope_theta=5e6)


# ---- ERNIE-4.5 MoE (ernie4_5_moe/) ----------------------------------------------------------
# Ernie4_5_MoeSparseMoeBlock: softmax, choice by softmax + moe_statics.e_score_correction_bias,
# weights the unbiased softmax divided by max(sum, moe_norm_min). Sparse layers: (l + 1) %
# moe_layer_interval == 0 and moe_layer_start_index <= l <= moe_layer_end_index (-1: the last,
# Ernie4_5_MoeConfig.__post_init__). Shared experts moe_intermediate_size * moe_num_shared_experts.
# q/k/v/o, MLPs and lm_head bias=config.use_bias. apply_rotary_pos_emb: cos/sin
# repeat_interleave(2) with the 0::2 / 1::2 rotate_half (adjacent pairs).
def ernie(**kw):
    return expect(arch="ernie4_5_moe", router="softmax_bias", score_bias=True,
                  router_norm_min=1e-12, rope_interleaved=True, vocab=103424, head_dim=128,
                  n_experts=64, max_ctx=131072, rms_eps=1e-5, rope_theta=500000.0, **kw)


# ---- dots.llm1 (dots1/) ---------------------------------------------------------------------
# Dots1Attention: q_norm/k_norm over head_dim, bias=config.attention_bias. Dots1TopkRouter as
# DeepSeek-V3's. Dots1Config.__post_init__: sliding_window null, so layer_types all full.
DOTS = dict(arch="dots1", router="sigmoid", score_bias=True, norm_topk_prob=True, qk_norm="head",
            vocab=152064, hidden=4096, n_layers=62, n_heads=32, n_kv_heads=32, head_dim=128,
            n_experts=128, top_k=6, expert_ffn=1408, shared_ffn=2 * 1408, dense_ffn=10944,
            dense=[0], routed_scale=2.5, max_ctx=32768, rms_eps=1e-5, rope_theta=1e7)


# ---- Qwen3-Next (qwen3_next/) and Qwen3.5 / 3.6 MoE (qwen3_5_moe/) ----------------------------
# Hybrids: layer_types, or, without it, full_attention_interval (4): layer l is full attention
# when (l + 1) % 4 == 0 and Gated DeltaNet otherwise (Qwen3NextConfig / Qwen3_5MoeTextConfig
# __post_init__). The DeltaNet: linear_num_key_heads / linear_num_value_heads of
# linear_key_head_dim / linear_value_head_dim, a causal conv of linear_conv_kernel_dim, value head
# h reading key head h // (v / k) (repeat_interleave: not llama.cpp's tiled order).
# Qwen3NextAttention: q_proj twice as wide, the second half a sigmoid gate on the output (the
# Qwen3.5 config says so with attn_output_gate true); q_norm / k_norm over head_dim;
# scaling head_dim ** -0.5. Rotary over head_dim * partial_rotary_factor (0.25) with rotate_half;
# Qwen3.5's interleaved MRoPE (mrope_section [11, 11, 10]) is that same rotary when the three
# position ids are equal, as they are for text. The MoE block: softmax over all experts, top-k,
# renormalised (Qwen3-Next: norm_topk_prob true; Qwen3_5MoeTopKRouter: always), plus a shared
# expert of shared_expert_intermediate_size scaled by sigmoid(shared_expert_gate x); every layer
# sparse (decoder_sparse_step 1, mlp_only_layers empty). The Qwen3.5 wrapper's text_config is
# what is served; tie_word_embeddings false at both levels.
def qwen_hybrid(arch, n_layers, **kw):
    return expect(arch=arch, router="softmax", norm_topk_prob=True, shared_gate=True,
                  qk_norm="head", attn_gate=True, n_layers=n_layers,
                  linear=[l for l in range(n_layers) if (l + 1) % 4], n_kv_heads=2,
                  head_dim=256, rope_dim=64, lin_k_heads=16, lin_k_dim=128, lin_v_dim=128,
                  lin_conv=4, lin_v_tiled=False, max_ctx=262144, rms_eps=1e-6, rope_theta=1e7,
                  **kw)


def qwen35(**kw):
    return qwen_hybrid("qwen3_5_moe", vocab=248320, **kw)


PARSED = {
    "Mixtral-8x7B-Instruct-v0.1": mixtral(hidden=4096, n_layers=32, n_heads=32, expert_ffn=14336,
                                          max_ctx=32768),
    "Mixtral-8x22B-v0.1": mixtral(hidden=6144, n_layers=56, n_heads=48, expert_ffn=16384,
                                  max_ctx=65536),
    "Qwen1.5-MoE-A2.7B": qwen2(hidden=2048, n_layers=24, n_heads=16, n_kv_heads=16, n_experts=60,
                               top_k=4, expert_ffn=1408, shared_ffn=5632, max_ctx=8192),
    # sliding_window 131072 in the file, but use_sliding_window false: no window anywhere
    "Qwen2-57B-A14B": qwen2(hidden=3584, n_layers=28, n_heads=28, n_kv_heads=4, n_experts=64,
                            top_k=8, expert_ffn=2560, shared_ffn=20480, max_ctx=131072),
    "Qwen3-30B-A3B": qwen3(hidden=2048, n_layers=48, n_heads=32, expert_ffn=768),
    "Qwen3-235B-A22B": qwen3(hidden=4096, n_layers=94, n_heads=64, expert_ffn=1536),
    # OlmoeAttention: q_norm = OlmoeRMSNorm(hidden_size) over the whole projection; clip_qkv null;
    # OlmoeSparseMoeBlock as Qwen's, norm_topk_prob false; experts of intermediate_size.
    "OLMoE-1B-7B-0924": expect(arch="olmoe", router="softmax", norm_topk_prob=False,
                               qk_norm="full", clip_qkv=0.0, vocab=50304, hidden=2048,
                               n_layers=16, n_heads=16, n_kv_heads=16, head_dim=128,
                               n_experts=64, top_k=8, expert_ffn=1024, max_ctx=4096,
                               rms_eps=1e-5, rope_theta=1e4),
    "DeepSeek-V2-Lite-Chat": deepseek_v2(router="softmax", hidden=2048, n_layers=27, n_heads=16,
                                         n_kv_heads=16, n_experts=64, top_k=6, expert_ffn=1408,
                                         shared_ffn=2 * 1408, dense_ffn=10944,
                                         # q_lora_rank null: a plain q_proj (moed writes 0)
                                         **mla(40, 0.707, 0.707, 4096, q_lora=0)),
    "DeepSeek-V2-Chat": deepseek_v2(router="softmax_group", n_group=8, topk_group=3,
                                    routed_scale=16.0, hidden=5120, n_layers=60, n_heads=128,
                                    n_kv_heads=128, n_experts=160, top_k=6, expert_ffn=1536,
                                    shared_ffn=2 * 1536, dense_ffn=12288,
                                    **mla(40, 0.707, 0.707, 4096)),
    "DeepSeek-V2.5": deepseek_v2(router="softmax_group", n_group=8, topk_group=3,
                                 routed_scale=16.0, hidden=5120, n_layers=60, n_heads=128,
                                 n_kv_heads=128, n_experts=160, top_k=6, expert_ffn=1536,
                                 shared_ffn=2 * 1536, dense_ffn=12288, **mla(40, 1.0, 1.0, 4096)),
    "GLM-4.5": glm(max_ctx=131072, **GLM45),
    "GLM-4.6": glm(max_ctx=202752, **GLM45),
    "GLM-4.5-Air": glm(hidden=4096, n_layers=46, n_experts=128, expert_ffn=1408, shared_ffn=1408,
                       dense_ffn=10944, dense=[0], routed_scale=1.0, qk_norm="none",
                       max_ctx=131072),
    "gpt-oss-20b": gpt_oss(24, 32),
    "gpt-oss-120b": gpt_oss(36, 128),
    "ERNIE-4.5-21B-A3B-PT": ernie(hidden=2560, n_layers=28, n_heads=20, n_kv_heads=4, top_k=6,
                                  expert_ffn=1536, shared_ffn=2 * 1536, dense_ffn=12288,
                                  dense=[0], tied_embeddings=True),
    "ERNIE-4.5-300B-A47B-PT": ernie(hidden=8192, n_layers=54, n_heads=64, n_kv_heads=8, top_k=8,
                                    expert_ffn=3584, shared_ffn=0, dense_ffn=28672,
                                    dense=[0, 1, 2]),
    "dots.llm1.inst": expect(**DOTS),
    # The file's use_sliding_window false: Qwen3NextConfig has no such field and
    # Qwen3NextAttention deletes its sliding_window, so transformers never reads it.
    "Qwen3-Next-80B-A3B-Instruct": qwen_hybrid("qwen3_next", 48, vocab=151936, hidden=2048,
                                               n_heads=16, n_experts=512, top_k=10,
                                               expert_ffn=512, shared_ffn=512, lin_v_heads=32),
    "Qwen3.5-35B-A3B": qwen35(n_layers=40, hidden=2048, n_heads=16, n_experts=256, top_k=8,
                              expert_ffn=512, shared_ffn=512, lin_v_heads=32),
    "Qwen3.5-122B-A10B": qwen35(n_layers=48, hidden=3072, n_heads=32, n_experts=256, top_k=8,
                                expert_ffn=1024, shared_ffn=1024, lin_v_heads=64),
    "Qwen3.5-397B-A17B": qwen35(n_layers=60, hidden=4096, n_heads=32, n_experts=512, top_k=10,
                                expert_ffn=1024, shared_ffn=1024, lin_v_heads=64),
    "Qwen3.6-35B-A3B": qwen35(n_layers=40, hidden=2048, n_heads=16, n_experts=256, top_k=8,
                              expert_ffn=512, shared_ffn=512, lin_v_heads=32),
}

# The FP8 block-quantized checkpoints: moed reads bf16/f16/f32 and MXFP4 experts, so the
# weights' quantization_config is refused; the same config without it (a bf16 conversion)
# parses as transformers reads it.
REFUSED = {
    "DeepSeek-V3": deepseek_v3(**V3_SHAPE),
    "DeepSeek-R1": deepseek_v3(**V3_SHAPE),
    "DeepSeek-V3.1": deepseek_v3(**V3_SHAPE),
    "Kimi-K2-Instruct": deepseek_v3(**KIMI_SHAPE),
    "MiniMax-M2": expect(**MINIMAX),
}

PER_LAYER = ("layer_dense", "layer_swa", "layer_linear")
FLOAT_TOL = 1e-6  # moed holds these as float32


def config_files():
    return sorted(f[:-5] for f in os.listdir(DATA) if f.endswith(".json"))


def parse(path):
    r = subprocess.run([BENCH, "config", "--model", path], capture_output=True, text=True,
                       timeout=60)
    return r.returncode, r.stdout, r.stderr


class RealConfigs(unittest.TestCase):
    def check_fields(self, name, got, want):
        n = got["n_layers"]
        for key, value in want.items():
            if key == "dense":
                self.assertEqual([l for l in range(n) if got["layer_dense"][l]], value,
                                 f"{name}: dense layers")
            elif key == "swa":
                self.assertEqual([l for l in range(n) if got["layer_swa"][l]], value,
                                 f"{name}: sliding-window layers")
            elif key == "linear":
                self.assertEqual([l for l in range(n) if got["layer_linear"][l]], value,
                                 f"{name}: linear-attention (Gated DeltaNet) layers")
            elif isinstance(value, float):
                self.assertTrue(math.isclose(got[key], value, rel_tol=FLOAT_TOL, abs_tol=1e-12),
                                f"{name}: {key} = {got[key]}, transformers: {value}")
            else:
                self.assertEqual(got[key], value, f"{name}: {key}")
        for per_layer in PER_LAYER:
            self.assertEqual(len(got[per_layer]), n, f"{name}: {per_layer} length")
        # a dense layer needs the dense MLP's size, a shared expert its size
        if want["dense"]:
            self.assertGreater(got["dense_ffn"], 0)

    def parse_ok(self, name, path):
        rc, out, err = parse(path)
        self.assertEqual(rc, 0, f"{name}: moe-bench config failed: {err}")
        return json.loads(out)

    def test_every_file_has_an_expectation(self):
        files = set(config_files())
        known = set(PARSED) | set(REFUSED)
        self.assertEqual(files - known, set(), "configs without expectations")
        self.assertEqual(known - files, set(), "expectations without configs")
        with open(os.path.join(DATA, "README.md")) as f:
            readme = f.read()
        for name in files:
            self.assertIn(f"`{name}.json`", readme, f"{name}.json has no provenance in README.md")

    def test_parsed(self):
        for name, want in PARSED.items():
            with self.subTest(config=name):
                got = self.parse_ok(name, os.path.join(DATA, name + ".json"))
                self.check_fields(name, got, want)

    def test_refused_naming_the_key(self):
        for name in REFUSED:
            with self.subTest(config=name):
                path = os.path.join(DATA, name + ".json")
                with open(path) as f:
                    self.assertEqual(json.load(f)["quantization_config"]["quant_method"], "fp8")
                rc, out, err = parse(path)
                self.assertEqual(rc, 2, f"{name}: {err}")
                self.assertEqual(out, "")
                self.assertIn("'quantization_config'", err)
                self.assertIn("'fp8'", err)
                self.assertIn(path, err)

    def test_bf16_conversions_parse(self):
        with tempfile.TemporaryDirectory(prefix="moe-realcfg-") as tmp:
            for name, want in REFUSED.items():
                with self.subTest(config=name):
                    with open(os.path.join(DATA, name + ".json")) as f:
                        cfg = json.load(f)
                    del cfg["quantization_config"]
                    path = os.path.join(tmp, name + ".json")
                    with open(path, "w") as f:
                        json.dump(cfg, f)
                    self.check_fields(name, self.parse_ok(name, path), want)


class ConfigCommand(unittest.TestCase):
    """moe-bench config reads a directory, a bare config.json, a GGUF and a pack alike."""

    def test_directory_equals_file(self):
        src = os.path.join(DATA, "Qwen3-30B-A3B.json")
        with tempfile.TemporaryDirectory(prefix="moe-realcfg-") as tmp:
            with open(src) as f, open(os.path.join(tmp, "config.json"), "w") as g:
                g.write(f.read())
            a, b = parse(src), parse(tmp)
        self.assertEqual(a[0], 0, a[2])
        self.assertEqual(a, b)

    def test_gguf_and_pack_match_their_source(self):
        fixture = os.path.join(ROOT, "tests", "data", "arch", "qwen3_moe_v5")
        rc, hf, err = parse(os.path.join(fixture, "v5"))
        self.assertEqual(rc, 0, err)
        rc, gg, err = parse(os.path.join(fixture, "model.gguf"))
        self.assertEqual(rc, 0, err)
        hf, gg = json.loads(hf), json.loads(gg)
        for key in ("arch", "vocab", "hidden", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                    "n_experts", "top_k", "expert_ffn", "rope_theta", "rope_dim", "qk_norm",
                    "norm_topk_prob", "layer_dense"):
            self.assertEqual(hf[key], gg[key], key)
        tiny = os.path.join(ROOT, "models", "tiny-moe")
        with tempfile.TemporaryDirectory(prefix="moe-realcfg-") as tmp:
            pack = os.path.join(tmp, "tiny.moe")
            r = subprocess.run([os.path.join(BIN, "moe-pack"), "--model", tiny, "--out", pack,
                                "--experts", "bf16"], capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            a, b = parse(tiny), parse(pack)
        self.assertEqual(a[0], 0, a[2])
        self.assertEqual(b[0], 0, b[2])
        self.assertEqual(json.loads(a[1]), json.loads(b[1]))

    def test_bad_input_is_exit_2_naming_it(self):
        with tempfile.TemporaryDirectory(prefix="moe-realcfg-") as tmp:
            missing = os.path.join(tmp, "nothing.json")
            rc, out, err = parse(missing)
            self.assertEqual((rc, out), (2, ""))
            self.assertIn(missing, err)
            with open(os.path.join(DATA, "Mixtral-8x7B-Instruct-v0.1.json")) as f:
                cfg = json.load(f)
            cfg["some_new_key"] = 3
            path = os.path.join(tmp, "config.json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            rc, out, err = parse(path)
            self.assertEqual((rc, out), (2, ""))
            self.assertIn("'some_new_key'", err)
            self.assertEqual(parse(tmp)[0], 2)  # the directory holding it: the same refusal
        r = subprocess.run([BENCH, "--help"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0)
        self.assertIn("moe-bench config --model PATH", r.stdout)


if __name__ == "__main__":
    unittest.main()
