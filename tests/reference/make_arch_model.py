#!/usr/bin/env python3
"""Writes small synthetic MoE checkpoints (random, seeded, deterministic) in Hugging Face
layout, and optionally a GGUF file of the SAME weights in llama.cpp's conventions.

  /usr/bin/python3 tests/reference/make_arch_model.py --arch mixtral|qwen2_moe|qwen3_moe|olmoe \
      --out DIR [--dtype bf16|f16|f32] [--tied] [--shards N] [--seed S] \
      [--gguf FILE [--gguf-type f32|f16|bf16|q8_0]] \
      [--kv-heads N] [--mlp-only-layers "1,2"] [--clip-qkv X] [--norm-topk 0|1]

Also the library behind tests/reference/hf_to_gguf.py (convert_hf_to_gguf()).

=====================================================================================
HF -> GGUF MAPPING TABLE (what llama.cpp's convert_hf_to_gguf.py writes / llama.cpp reads)
=====================================================================================
Verified from (ggml-org/llama.cpp, read via the code index, 2025-26 tree):
  conversion/llama.py   LlamaModel: "MixtralForCausalLM" is registered on it; permute();
                        stacks block_sparse_moe.experts.N.w{1,2,3} -> feed_forward.experts.w*
  conversion/qwen.py    Qwen2MoeModel (expert/shared FF lengths, stacks mlp.experts.N.*),
                        Qwen3MoeModel(Qwen2MoeModel) (adds nothing but vocab handling)
  conversion/olmo.py    OlmoeModel (TextModel, no permute, rms eps forced to 1e-5)
  conversion/base.py    TextModel.set_gguf_parameters (generic keys), prepare_tensors
                        (bf16 -> f32 -> out type; F32 rules; `data = data_torch.numpy()`,
                        i.e. NO squeeze any more; Q8_0 on a bad row size falls back to F16)
  gguf-py/gguf/constants.py  Keys.*, TENSOR_NAMES, GGMLQuantizationType, LlamaFileType,
                        GGUFValueType;  gguf-py/gguf/tensor_mapping.py (HF name -> tensor)
  src/models/{llama,qwen2moe,qwen3moe,olmoe}.cpp  expected ne, required/optional flags,
                        graph (build_moe_ffn norm_w flag, q/k norm placement)
  src/llama-model.cpp llama_model_rope_type(): LLAMA -> NORM; QWEN2MOE, QWEN3MOE, OLMOE -> NEOX
  transformers models/{mixtral,qwen2_moe,qwen3_moe,olmoe}/modeling_*.py (HF side)

Conventions: "ne" = GGUF/ggml dims, ne[0] is the contiguous (fastest) one; the numpy array
written has shape reversed(ne), i.e. an HF [out, in] matrix is written as-is and has
ne = [in, out].  H = hidden_size, V = vocab, nh = heads, nkv = kv heads, hd = head_dim,
E = experts, F = expert FF size, Fs = shared-expert FF size, I = dense FF size, N = layer.

general.architecture:  Mixtral -> "llama"   Qwen2-MoE -> "qwen2moe"
                       Qwen3-MoE -> "qwen3moe"   OLMoE -> "olmoe"

HF tensor (torch shape)                          GGUF tensor                         ne             type
-----------------------------------------------  ----------------------------------  -------------  -----
model.embed_tokens.weight [V,H]                  token_embd.weight                   [H, V]         ftype
lm_head.weight [V,H]  (absent if tied)           output.weight (absent if tied)      [H, V]         ftype
model.norm.weight [H]                            output_norm.weight                  [H]            F32
model.layers.N.input_layernorm.weight            blk.N.attn_norm.weight              [H]            F32
model.layers.N.post_attention_layernorm.weight   blk.N.ffn_norm.weight               [H]            F32
  .self_attn.q_proj.weight [nh*hd,H]             blk.N.attn_q.weight                 [H, nh*hd]     ftype  (*P)
  .self_attn.k_proj.weight [nkv*hd,H]            blk.N.attn_k.weight                 [H, nkv*hd]    ftype  (*P)
  .self_attn.v_proj.weight [nkv*hd,H]            blk.N.attn_v.weight                 [H, nkv*hd]    ftype
  .self_attn.o_proj.weight [H,nh*hd]             blk.N.attn_output.weight            [nh*hd, H]     ftype
  .self_attn.{q,k,v,o}_proj.bias (if present)    blk.N.attn_{q,k,v,output}.bias      [rows]         F32    (*P on q,k)
     (Qwen2-MoE has q/k/v biases; Qwen3-MoE/OLMoE only if attention_bias; Mixtral none)
  .self_attn.q_norm.weight  qwen3_moe [hd]       blk.N.attn_q_norm.weight            [hd]           F32  per-head, before rope
  .self_attn.k_norm.weight  qwen3_moe [hd]       blk.N.attn_k_norm.weight            [hd]           F32  per-head, before rope
  .self_attn.q_norm.weight  olmoe [nh*hd]        blk.N.attn_q_norm.weight            [nh*hd] (=H)   F32  whole q, before split
  .self_attn.k_norm.weight  olmoe [nkv*hd]       blk.N.attn_k_norm.weight            [nkv*hd]       F32  whole k, before split
     (llama.cpp's olmoe loader declares BOTH as {n_embd}: it only loads OLMoE with nkv == nh)
router:
  mixtral  .block_sparse_moe.gate.weight [E,H]   blk.N.ffn_gate_inp.weight           [H, E]         F32 always
  others   .mlp.gate.weight [E,H]                blk.N.ffn_gate_inp.weight           [H, E]         F32 always
experts, torch.stack over e = 0..E-1 (dim 0), i.e. expert e is the slowest index:
  mixtral  .block_sparse_moe.experts.e.w1 [F,H]  blk.N.ffn_gate_exps.weight          [H, F, E]      ftype
  mixtral  .block_sparse_moe.experts.e.w3 [F,H]  blk.N.ffn_up_exps.weight            [H, F, E]      ftype
  mixtral  .block_sparse_moe.experts.e.w2 [H,F]  blk.N.ffn_down_exps.weight          [F, H, E]      ftype
  others   .mlp.experts.e.gate_proj [F,H]        blk.N.ffn_gate_exps.weight          [H, F, E]      ftype
  others   .mlp.experts.e.up_proj   [F,H]        blk.N.ffn_up_exps.weight            [H, F, E]      ftype
  others   .mlp.experts.e.down_proj [H,F]        blk.N.ffn_down_exps.weight          [F, H, E]      ftype
  (F = intermediate_size for mixtral and olmoe, moe_intermediate_size for qwen2/3_moe)
shared expert (qwen2_moe):
  .mlp.shared_expert_gate.weight [1,H]           blk.N.ffn_gate_inp_shexp.weight     [H]            F32 always
     (this file writes ne=[H] like llama.cpp's loader spec {n_embd} and older converters,
      which squeezed; the current converter no longer squeezes and writes ne=[H,1].
      A loader must accept both.  out += sigmoid(dot(w, y)) * shared_expert(y))
  .mlp.shared_expert.gate_proj [Fs,H]            blk.N.ffn_gate_shexp.weight         [H, Fs]        ftype
  .mlp.shared_expert.up_proj   [Fs,H]            blk.N.ffn_up_shexp.weight           [H, Fs]        ftype
  .mlp.shared_expert.down_proj [H,Fs]            blk.N.ffn_down_shexp.weight         [Fs, H]        ftype
dense FFN layers (qwen2/3_moe mlp_only_layers / decoder_sparse_step; llama.cpp's qwen2moe and
qwen3moe loaders do NOT support these -- moed extension, llama-style names):
  .mlp.gate_proj / up_proj [I,H], down_proj [H,I] blk.N.ffn_gate / ffn_up [H, I], ffn_down [I, H]   ftype

(*P) Q/K row permutation: ONLY for general.architecture == "llama" (Mixtral), whose llama.cpp
     rope is "NORM" (rotates adjacent pairs 2i, 2i+1).  conversion/llama.py LlamaModel.permute:
        gguf = hf.reshape(n, 2, rows//n//2, *rest).swapaxes(1, 2).reshape(hf.shape)
     with n = nh for q_proj (weight and bias), n = nkv for k_proj.  Inverse:
        hf = gguf.reshape(n, rows//n//2, 2, *rest).swapaxes(1, 2).reshape(gguf.shape)
     qwen2moe / qwen3moe / olmoe are NOT permuted: llama.cpp uses NEOX rope for them
     (pairs i, i + hd/2), which is exactly HF's rotate_half on the unpermuted rows.

Tensor types: "ftype" = the chosen output type (F32 / F16 / BF16 / Q8_0).  F32 always for
every 1-D tensor, every name ending "_norm.weight", ffn_gate_inp, ffn_gate_inp_shexp.
Q8_0 (ggml type 8): blocks of 32 consecutive values along ne[0]; each block = fp16 d
(2 bytes, d = max|x|/127) + 32 int8 q (q = round-half-away(x / d), 0 if d == 0); 34 bytes.
A tensor with ne[0] % 32 != 0 falls back to F16 (as llama.cpp does).
ggml types: F32 0, F16 1, Q8_0 8, BF16 30.   general.file_type: F32 0, F16 1, Q8_0 7, BF16 32.
BF16 = round-to-nearest-even of the fp32 value (exact for bf16 sources).

Metadata (u32 unless noted; written in this order):
  general.architecture (str) ; general.type (str) "model" ; general.name (str)
  {arch}.block_count                        num_hidden_layers
  {arch}.context_length                     max_position_embeddings
  {arch}.embedding_length                   hidden_size
  {arch}.feed_forward_length                intermediate_size  (llama/olmoe: this IS the expert FF
                                            size F; qwen2moe/qwen3moe: the dense-MLP size, the expert
                                            size is expert_feed_forward_length; llama.cpp falls back to
                                            feed_forward_length / expert_used_count only if it is absent)
  {arch}.attention.head_count               num_attention_heads
  {arch}.attention.head_count_kv            num_key_value_heads
  {arch}.rope.freq_base (f32)               rope_theta
  {arch}.attention.layer_norm_rms_epsilon (f32)  rms_norm_eps   (olmoe: converter forces 1e-5)
  {arch}.expert_count                       num_local_experts (mixtral) / num_experts
  {arch}.expert_used_count                  num_experts_per_tok
  {arch}.attention.key_length / value_length  head_dim -- ONLY if config.json has a non-null
                                            head_dim (qwen3_moe has; else hd = H / nh)
  general.file_type
  llama only:     llama.vocab_size ; llama.rope.dimension_count = head_dim or H/nh
  qwen2moe/qwen3moe: {arch}.expert_feed_forward_length = moe_intermediate_size
  qwen2moe:          qwen2moe.expert_shared_feed_forward_length = shared_expert_intermediate_size
  general.quantization_version = 2
  tokenizer.ggml.model (str) "gpt2"; tokenizer.ggml.pre (str) "gpt-2"; tokenizer.ggml.tokens
  (str array, exactly V entries); tokenizer.ggml.token_type (i32 array: 1 normal, 3 control,
  4 user-defined, 5 unused); tokenizer.ggml.merges (str array "a b"); tokenizer.ggml.bos_token_id,
  tokenizer.ggml.eos_token_id; tokenizer.ggml.add_bos_token / add_eos_token (bool)
norm_topk_prob: llama.cpp writes NO key for these four archs; it is hard-coded in the graph
  (build_moe_ffn norm_w): llama(Mixtral) = true, qwen2moe = false, qwen3moe = true, olmoe = false.
  Gating is softmax over all experts, then top-k, then (norm_w) divide by the sum of the k.
  moed extension: this writer adds `{arch}.expert_weights_norm` (bool; a real llama.cpp key,
  used by e.g. deepseek2) ONLY when the HF config disagrees with that hard-coded default.
  A loader should read it if present, else use the per-arch default above.
clip_qkv (olmoe): llama.cpp writes nothing and does not clamp; this writer adds
  `olmoe.attention.clamp_kqv` (f32, a real llama.cpp key used by olmo/dbrx) only if clip_qkv
  is non-null.  Clamp q, k (after q_norm/k_norm) and v to [-c, c].
Tied embeddings: no output.weight; llama and qwen3moe loaders fall back to token_embd;
  llama.cpp's qwen2moe and olmoe loaders REQUIRE output.weight (tied GGUFs of those two
  archs load in moed only).
File layout (GGUF v3, little endian): "GGUF", u32 version=3, u64 n_tensors, u64 n_kv; KVs
  (str key = u64 len + bytes, u32 type, value; array = u32 elem type, u64 n, elems; bool = 1
  byte); tensor infos (str name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset relative
  to the data section); zero padding to alignment 32 (no general.alignment key); tensor data,
  each tensor starting at a multiple of 32.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moe_ref  # noqa: E402  (safetensors reader shared with the oracle)

ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
GGUF_ARCH = {"mixtral": "llama", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "olmoe": "olmoe"}
HF_CLASS = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
            "qwen3_moe": "Qwen3MoeForCausalLM", "olmoe": "OlmoeForCausalLM"}
NORM_TOPK_LLAMACPP = {"llama": True, "qwen2moe": False, "qwen3moe": True, "olmoe": False}

# ----------------------------------------------------------------------------
# dtype helpers
# ----------------------------------------------------------------------------


def f32_to_bf16_bits(x):
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (uint16); NaN kept quiet."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def round_to_dtype(x, dtype):
    """float32 array -> float32 array holding exactly the values representable in dtype."""
    if dtype == "f32":
        return x.astype(np.float32)
    if dtype == "f16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bf16":
        return moe_ref.bf16_bits_to_f32(f32_to_bf16_bits(x))
    raise ValueError(dtype)


def quantize_q8_0(x):
    """x: float32, shape (..., K) with K % 32 == 0 -> raw bytes (uint8 array) in ggml order."""
    blocks = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 32)
    d = np.max(np.abs(blocks), axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    v = blocks * inv
    a = np.abs(v)
    q = np.sign(v) * (np.floor(a) + np.floor(2 * (a - np.floor(a))))  # round half away from 0
    out = np.empty((blocks.shape[0], 34), dtype=np.uint8)
    out[:, :2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    out[:, 2:] = q.astype(np.int8).view(np.uint8)
    return out.reshape(-1)


# ----------------------------------------------------------------------------
# safetensors writer
# ----------------------------------------------------------------------------

_ST_NAME = {"f32": "F32", "f16": "F16", "bf16": "BF16"}


def _st_bytes(x, dtype):
    if dtype == "f32":
        return np.ascontiguousarray(x, dtype="<f4").tobytes()
    if dtype == "f16":
        return np.ascontiguousarray(x.astype("<f2")).tobytes()
    return f32_to_bf16_bits(x).astype("<u2").tobytes()


def write_safetensors(path, items, dtype):
    """items: list of (name, float32 ndarray) written in order with the given dtype."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, x in items:
        b = _st_bytes(x, dtype)
        header[name] = {"dtype": _ST_NAME[dtype], "shape": list(x.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    return off


def write_hf_weights(out_dir, items, dtype, shards=1):
    """Writes model.safetensors, or N shards + model.safetensors.index.json."""
    if shards <= 1:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), items, dtype)
        return
    shards = min(shards, len(items))
    bounds = np.linspace(0, len(items), shards + 1).round().astype(int)
    wm, total = {}, 0
    for k in range(shards):
        fn = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = items[bounds[k]:bounds[k + 1]]
        total += write_safetensors(os.path.join(out_dir, fn), part, dtype)
        for name, _ in part:
            wm[name] = fn
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)


# ----------------------------------------------------------------------------
# minimal byte-level BPE tokenizer (HF tokenizer.json) and its GGUF form
# ----------------------------------------------------------------------------


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode character table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def make_tokenizer_json(vocab_size):
    """Byte-level BPE: ids 0..255 = bytes, then single-level merges, then <s>, </s>."""
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    n_merge = vocab_size - 2 - 256
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    cands = [b2u[0x20] + c for c in letters] + [a + b for a in letters for b in letters]
    merges = []
    for a_b in cands[:n_merge]:
        vocab[a_b] = len(vocab)
        merges.append([a_b[0], a_b[1:]])
    if len(vocab) != vocab_size - 2:
        raise ValueError("vocab too large for the synthetic merge list")
    added = [{"id": vocab_size - 2, "content": "<s>", "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True},
             {"id": vocab_size - 1, "content": "</s>", "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }


def gguf_vocab_from_hf(hf_dir, vocab_size, cfg):
    """tokenizer.json -> (tokens, token types, merges, extra kv list) the way _set_vocab_gpt2 does."""
    path = os.path.join(hf_dir, "tokenizer.json")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [5] * vocab_size  # UNUSED
    merges = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            tj = json.load(f)
        for tok, i in tj["model"]["vocab"].items():
            if i < vocab_size:
                tokens[i], types[i] = tok, 1
        for a in tj.get("added_tokens", []):
            if a["id"] < vocab_size:
                tokens[a["id"]] = a["content"]
                types[a["id"]] = 3 if a.get("special") else 4
        for m in tj["model"].get("merges", []):
            merges.append(m if isinstance(m, str) else " ".join(m))
    else:  # no tokenizer: bytes, then filler
        b2u = bytes_to_unicode()
        for b in range(min(256, vocab_size)):
            tokens[b], types[b] = b2u[b], 1
    kv = []
    tc = {}
    tcp = os.path.join(hf_dir, "tokenizer_config.json")
    if os.path.isfile(tcp):
        with open(tcp, encoding="utf-8") as f:
            tc = json.load(f)
    for key, cfgkey in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        v = cfg.get(cfgkey)
        if isinstance(v, list):
            v = v[0] if v else None
        if v is not None and 0 <= int(v) < vocab_size:
            kv.append(("tokenizer.ggml." + key, "u32", int(v)))
    for key in ("add_bos_token", "add_eos_token"):
        if key in tc and isinstance(tc[key], bool):
            kv.append(("tokenizer.ggml." + key, "bool", tc[key]))
    return tokens, types, merges, kv


# ----------------------------------------------------------------------------
# GGUF writer
# ----------------------------------------------------------------------------

GGML_TYPE = {"f32": 0, "f16": 1, "q8_0": 8, "bf16": 30}
FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
ALIGN = 32


class GGUFWriter:
    def __init__(self):
        self.kv = []       # (key, kind, value)
        self.tensors = []  # (name, ne, ggml_type, bytes)

    def add(self, key, kind, value):
        for i, (k, _, _) in enumerate(self.kv):
            if k == key:  # like gguf-py: a duplicate key overwrites
                self.kv[i] = (key, kind, value)
                return
        self.kv.append((key, kind, value))

    @staticmethod
    def _str(s):
        b = s.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    def _value(self, kind, v):
        if kind == "u32":
            return struct.pack("<I", 4) + struct.pack("<I", v)
        if kind == "i32":
            return struct.pack("<I", 5) + struct.pack("<i", v)
        if kind == "f32":
            return struct.pack("<I", 6) + struct.pack("<f", v)
        if kind == "bool":
            return struct.pack("<I", 7) + struct.pack("<B", 1 if v else 0)
        if kind == "str":
            return struct.pack("<I", 8) + self._str(v)
        if kind == "arr_str":
            return struct.pack("<IIQ", 9, 8, len(v)) + b"".join(self._str(s) for s in v)
        if kind == "arr_i32":
            return struct.pack("<IIQ", 9, 5, len(v)) + np.asarray(v, dtype="<i4").tobytes()
        if kind == "arr_f32":
            return struct.pack("<IIQ", 9, 6, len(v)) + np.asarray(v, dtype="<f4").tobytes()
        raise ValueError(kind)

    def add_tensor(self, name, x, qtype):
        """x: float32 ndarray in numpy order (ne = reversed(shape)); qtype f32|f16|bf16|q8_0."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        ne = list(reversed(x.shape))
        if qtype == "q8_0" and ne[0] % 32 != 0:
            qtype = "f16"  # llama.cpp: QuantError -> falls back to F16
        if qtype == "f32":
            b = x.astype("<f4").tobytes()
        elif qtype == "f16":
            b = x.astype("<f2").tobytes()
        elif qtype == "bf16":
            b = f32_to_bf16_bits(x).astype("<u2").tobytes()
        elif qtype == "q8_0":
            b = quantize_q8_0(x).tobytes()
        else:
            raise ValueError(qtype)
        self.tensors.append((name, ne, GGML_TYPE[qtype], b))

    def write(self, path):
        head = b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(self.kv))
        for k, kind, v in self.kv:
            head += self._str(k) + self._value(kind, v)
        off, infos = 0, b""
        for name, ne, t, b in self.tensors:
            infos += self._str(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
            infos += struct.pack("<IQ", t, off)
            off += (len(b) + ALIGN - 1) // ALIGN * ALIGN
        head += infos
        with open(path, "wb") as f:
            f.write(head)
            f.write(b"\0" * ((ALIGN - len(head) % ALIGN) % ALIGN))
            for _, _, _, b in self.tensors:
                f.write(b)
                f.write(b"\0" * ((ALIGN - len(b) % ALIGN) % ALIGN))


# ----------------------------------------------------------------------------
# HF dir -> GGUF (llama.cpp's way)
# ----------------------------------------------------------------------------


def hf_arch(cfg):
    mt = cfg.get("model_type")
    if mt in ARCHS:
        return mt
    arch = (cfg.get("architectures") or [""])[0]
    for k, v in HF_CLASS.items():
        if v == arch:
            return k
    raise ValueError(f"unsupported HF model (model_type={mt!r}, architectures={arch!r})")


def permute_llama_qk(w, n):
    """conversion/llama.py LlamaModel.permute (n = nh for q, nkv for k)."""
    return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_hf_to_gguf(hf_dir, out_path, qtype="f16", name=None):
    if qtype not in GGML_TYPE:
        raise ValueError(f"--type must be one of {sorted(GGML_TYPE)}")
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    arch = hf_arch(cfg)
    ga = GGUF_ARCH[arch]
    t = moe_ref.read_hf_dir(hf_dir)
    H = int(cfg["hidden_size"])
    nh = int(cfg["num_attention_heads"])
    nkv = int(cfg.get("num_key_value_heads") or nh)
    L = int(cfg["num_hidden_layers"])
    E = int(cfg["num_local_experts"] if arch == "mixtral" else cfg.get("num_experts", 0))
    V = t["model.embed_tokens.weight"].shape[0]
    tied = bool(cfg.get("tie_word_embeddings", False)) or "lm_head.weight" not in t
    probe = moe_ref.Model(cfg, t)  # for the dense/MoE layer rule

    w = GGUFWriter()
    w.add("general.architecture", "str", ga)
    w.add("general.type", "str", "model")
    w.add("general.name", "str", name or os.path.basename(os.path.normpath(hf_dir)))
    w.add(f"{ga}.block_count", "u32", L)
    if cfg.get("max_position_embeddings") is not None:
        w.add(f"{ga}.context_length", "u32", int(cfg["max_position_embeddings"]))
    w.add(f"{ga}.embedding_length", "u32", H)
    if cfg.get("intermediate_size") is not None:
        w.add(f"{ga}.feed_forward_length", "u32", int(cfg["intermediate_size"]))
    w.add(f"{ga}.attention.head_count", "u32", nh)
    w.add(f"{ga}.attention.head_count_kv", "u32", nkv)
    w.add(f"{ga}.rope.freq_base", "f32", float(cfg.get("rope_theta", 10000.0)))
    w.add(f"{ga}.attention.layer_norm_rms_epsilon", "f32", float(cfg.get("rms_norm_eps", 1e-6)))
    w.add(f"{ga}.expert_count", "u32", E)
    w.add(f"{ga}.expert_used_count", "u32", int(cfg["num_experts_per_tok"]))
    if cfg.get("head_dim") is not None:
        w.add(f"{ga}.attention.key_length", "u32", int(cfg["head_dim"]))
        w.add(f"{ga}.attention.value_length", "u32", int(cfg["head_dim"]))
    w.add("general.file_type", "u32", FILE_TYPE[qtype])
    if ga == "llama":
        w.add("llama.vocab_size", "u32", int(cfg.get("vocab_size", V)))
        w.add("llama.rope.dimension_count", "u32", int(cfg.get("head_dim") or H // nh))
    if ga in ("qwen2moe", "qwen3moe") and cfg.get("moe_intermediate_size") is not None:
        w.add(f"{ga}.expert_feed_forward_length", "u32", int(cfg["moe_intermediate_size"]))
    if ga == "qwen2moe" and cfg.get("shared_expert_intermediate_size") is not None:
        w.add(f"{ga}.expert_shared_feed_forward_length", "u32", int(cfg["shared_expert_intermediate_size"]))
    if ga == "olmoe":
        w.add("olmoe.attention.layer_norm_rms_epsilon", "f32", 1e-5)  # OlmoeModel does this
    # moed extensions (real llama.cpp key names), only where the HF config needs them
    if probe.norm_topk != NORM_TOPK_LLAMACPP[ga]:
        w.add(f"{ga}.expert_weights_norm", "bool", probe.norm_topk)
    if arch == "olmoe" and cfg.get("clip_qkv") is not None:
        w.add("olmoe.attention.clamp_kqv", "f32", float(cfg["clip_qkv"]))
    w.add("general.quantization_version", "u32", 2)
    tokens, types, merges, tkv = gguf_vocab_from_hf(hf_dir, V, cfg)
    w.add("tokenizer.ggml.model", "str", "gpt2")
    w.add("tokenizer.ggml.pre", "str", "gpt-2")
    w.add("tokenizer.ggml.tokens", "arr_str", tokens)
    w.add("tokenizer.ggml.token_type", "arr_i32", types)
    w.add("tokenizer.ggml.merges", "arr_str", merges)
    for k, kind, v in tkv:
        w.add(k, kind, v)

    F32 = "f32"
    w.add_tensor("token_embd.weight", t["model.embed_tokens.weight"], qtype)
    for i in range(L):
        p, g = f"model.layers.{i}.", f"blk.{i}."
        w.add_tensor(g + "attn_norm.weight", t[p + "input_layernorm.weight"], F32)
        for hfn, gn in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output")):
            for suf in ("weight", "bias"):
                x = t.get(f"{p}self_attn.{hfn}.{suf}")
                if x is None:
                    continue
                if ga == "llama" and hfn in ("q_proj", "k_proj"):
                    x = permute_llama_qk(x, nh if hfn == "q_proj" else nkv)
                w.add_tensor(f"{g}{gn}.{suf}", x, F32 if x.ndim <= 1 else qtype)
        for hfn, gn in (("q_norm", "attn_q_norm"), ("k_norm", "attn_k_norm")):
            if f"{p}self_attn.{hfn}.weight" in t:
                w.add_tensor(f"{g}{gn}.weight", t[f"{p}self_attn.{hfn}.weight"], F32)
        w.add_tensor(g + "ffn_norm.weight", t[p + "post_attention_layernorm.weight"], F32)
        if probe.is_moe_layer(i):
            moe = "block_sparse_moe" if arch == "mixtral" else "mlp"
            w.add_tensor(g + "ffn_gate_inp.weight", t[f"{p}{moe}.gate.weight"], F32)
            names = (("w1", "ffn_gate_exps"), ("w3", "ffn_up_exps"), ("w2", "ffn_down_exps")) if arch == "mixtral" \
                else (("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps"))
            for hfn, gn in names:
                stack = np.stack([t[f"{p}{moe}.experts.{e}.{hfn}.weight"] for e in range(E)], axis=0)
                w.add_tensor(f"{g}{gn}.weight", stack, qtype)
            if f"{p}mlp.shared_expert_gate.weight" in t:
                w.add_tensor(g + "ffn_gate_inp_shexp.weight", t[f"{p}mlp.shared_expert_gate.weight"].reshape(H), F32)
                for hfn, gn in (("gate_proj", "ffn_gate_shexp"), ("up_proj", "ffn_up_shexp"),
                                ("down_proj", "ffn_down_shexp")):
                    w.add_tensor(f"{g}{gn}.weight", t[f"{p}mlp.shared_expert.{hfn}.weight"], qtype)
        else:
            for hfn, gn in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
                w.add_tensor(f"{g}{gn}.weight", t[f"{p}mlp.{hfn}.weight"], qtype)
    w.add_tensor("output_norm.weight", t["model.norm.weight"], F32)
    if not tied:
        w.add_tensor("output.weight", t["lm_head.weight"], qtype)
    w.write(out_path)
    return out_path


# ----------------------------------------------------------------------------
# synthetic models
# ----------------------------------------------------------------------------


def synthetic_config(arch, tied=False, dtype="bf16", kv_heads=None, mlp_only_layers=None,
                     clip_qkv=None, norm_topk=None):
    base = {"architectures": [HF_CLASS[arch]], "model_type": arch, "hidden_act": "silu",
            "max_position_embeddings": 512, "initializer_range": 0.02, "attention_dropout": 0.0,
            "use_cache": True, "tie_word_embeddings": bool(tied),
            "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype]}
    if arch == "mixtral":
        c = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                 num_experts_per_tok=2, rms_norm_eps=1e-5, rope_theta=10000.0, sliding_window=None,
                 router_aux_loss_coef=0.01, output_router_logits=False)
    elif arch == "qwen2_moe":
        c = dict(vocab_size=768, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                 shared_expert_intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
                 decoder_sparse_step=1, mlp_only_layers=[], rms_norm_eps=1e-6, rope_theta=1000000.0,
                 use_sliding_window=False, sliding_window=None, max_window_layers=3,
                 router_aux_loss_coef=0.001, output_router_logits=False)
    elif arch == "qwen3_moe":
        c = dict(vocab_size=640, hidden_size=64, intermediate_size=128, moe_intermediate_size=64,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                 num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
                 mlp_only_layers=[], attention_bias=False, rms_norm_eps=1e-6, rope_theta=1000000.0,
                 use_sliding_window=False, sliding_window=None, max_window_layers=2,
                 router_aux_loss_coef=0.001, output_router_logits=False)
    elif arch == "olmoe":
        # llama.cpp's olmoe loader wants attn_k_norm of n_embd => n_kv == n_heads by default
        c = dict(vocab_size=512, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, num_experts=8, num_experts_per_tok=2,
                 norm_topk_prob=False, clip_qkv=None, attention_bias=False, rms_norm_eps=1e-5,
                 rope_theta=10000.0, router_aux_loss_coef=0.01, output_router_logits=False)
    else:
        raise ValueError(arch)
    c.update(base)
    V = c["vocab_size"]
    c["bos_token_id"], c["eos_token_id"] = V - 2, V - 1
    if kv_heads is not None:
        c["num_key_value_heads"] = int(kv_heads)
    if mlp_only_layers:
        if arch not in ("qwen2_moe", "qwen3_moe"):
            raise ValueError("--mlp-only-layers is for qwen2_moe / qwen3_moe")
        c["mlp_only_layers"] = sorted(int(i) for i in mlp_only_layers)
    if clip_qkv is not None:
        if arch != "olmoe":
            raise ValueError("--clip-qkv is for olmoe")
        c["clip_qkv"] = float(clip_qkv)
    if norm_topk is not None:
        if arch == "mixtral":
            raise ValueError("Mixtral always renormalises the top-k weights")
        c["norm_topk_prob"] = bool(norm_topk)
    return c


def synthetic_weights(cfg, seed=0):
    """Ordered list of (HF name, float32 array). Scales keep activations O(1) and logits spread."""
    arch = cfg["model_type"]
    salt = {"mixtral": 11, "qwen2_moe": 22, "qwen3_moe": 33, "olmoe": 44}[arch]
    rng = np.random.default_rng([seed, salt])
    H, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    E = cfg["num_local_experts"] if arch == "mixtral" else cfg["num_experts"]
    F = cfg["moe_intermediate_size"] if arch in ("qwen2_moe", "qwen3_moe") else cfg["intermediate_size"]

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_w(n):
        return (1.0 + rng.standard_normal(n) * 0.1).astype(np.float32)

    def lin(out, inp, gain=0.8):
        return normal((out, inp), gain / np.sqrt(inp))

    items = [("model.embed_tokens.weight", normal((V, H), 1.0))]
    probe = None
    for i in range(L):
        p = f"model.layers.{i}."
        items.append((p + "input_layernorm.weight", norm_w(H)))
        items.append((p + "self_attn.q_proj.weight", lin(nh * hd, H, 1.0)))
        items.append((p + "self_attn.k_proj.weight", lin(nkv * hd, H, 1.0)))
        items.append((p + "self_attn.v_proj.weight", lin(nkv * hd, H, 1.0)))
        if arch == "qwen2_moe":
            items.append((p + "self_attn.q_proj.bias", normal(nh * hd, 0.1)))
            items.append((p + "self_attn.k_proj.bias", normal(nkv * hd, 0.1)))
            items.append((p + "self_attn.v_proj.bias", normal(nkv * hd, 0.1)))
        items.append((p + "self_attn.o_proj.weight", lin(H, nh * hd, 0.8)))
        if arch == "qwen3_moe":
            items.append((p + "self_attn.q_norm.weight", norm_w(hd)))
            items.append((p + "self_attn.k_norm.weight", norm_w(hd)))
        if arch == "olmoe":
            items.append((p + "self_attn.q_norm.weight", norm_w(nh * hd)))
            items.append((p + "self_attn.k_norm.weight", norm_w(nkv * hd)))
        items.append((p + "post_attention_layernorm.weight", norm_w(H)))
        if probe is None:
            probe = moe_ref.Model(cfg, {"model.embed_tokens.weight": items[0][1]})
        if not probe.is_moe_layer(i):
            I = cfg["intermediate_size"]
            items.append((p + "mlp.gate_proj.weight", lin(I, H)))
            items.append((p + "mlp.up_proj.weight", lin(I, H)))
            items.append((p + "mlp.down_proj.weight", lin(H, I)))
            continue
        router = lin(E, H, 2.0)
        router[0] *= 2.0          # a few larger rows: routing is clearly non-uniform
        router[E // 2] *= 1.5
        if arch == "mixtral":
            items.append((p + "block_sparse_moe.gate.weight", router))
            for e in range(E):
                q = f"{p}block_sparse_moe.experts.{e}."
                items.append((q + "w1.weight", lin(F, H)))
                items.append((q + "w2.weight", lin(H, F)))
                items.append((q + "w3.weight", lin(F, H)))
        else:
            items.append((p + "mlp.gate.weight", router))
            for e in range(E):
                q = f"{p}mlp.experts.{e}."
                items.append((q + "gate_proj.weight", lin(F, H)))
                items.append((q + "up_proj.weight", lin(F, H)))
                items.append((q + "down_proj.weight", lin(H, F)))
        if arch == "qwen2_moe":
            Fs = cfg["shared_expert_intermediate_size"]
            items.append((p + "mlp.shared_expert.gate_proj.weight", lin(Fs, H)))
            items.append((p + "mlp.shared_expert.up_proj.weight", lin(Fs, H)))
            items.append((p + "mlp.shared_expert.down_proj.weight", lin(H, Fs)))
            items.append((p + "mlp.shared_expert_gate.weight", lin(1, H, 1.5)))
    items.append(("model.norm.weight", norm_w(H)))
    lm = normal((V, H), 1.5 / np.sqrt(H))
    if not cfg.get("tie_word_embeddings"):
        items.append(("lm_head.weight", lm))
    return items


def make_model(arch, out_dir, dtype="bf16", tied=False, shards=1, seed=0, gguf=None,
               gguf_type="f32", kv_heads=None, mlp_only_layers=None, clip_qkv=None, norm_topk=None):
    """Writes the HF checkpoint dir (and the GGUF if asked). Returns the config dict."""
    if arch not in ARCHS:
        raise ValueError(f"--arch must be one of {ARCHS}")
    os.makedirs(out_dir, exist_ok=True)
    cfg = synthetic_config(arch, tied, dtype, kv_heads, mlp_only_layers, clip_qkv, norm_topk)
    items = synthetic_weights(cfg, seed)
    write_hf_weights(out_dir, items, dtype, shards)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}, f, indent=2)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(make_tokenizer_json(cfg["vocab_size"]), f, ensure_ascii=False)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "add_eos_token": False,
                   "model_max_length": cfg["max_position_embeddings"],
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)
    if gguf:
        convert_hf_to_gguf(out_dir, gguf, gguf_type, name=f"synthetic-{arch}")
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write a small synthetic MoE checkpoint (HF, optional GGUF).")
    ap.add_argument("--arch", required=True, choices=ARCHS)
    ap.add_argument("--out", required=True, help="output HF checkpoint directory")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "f16", "f32"))
    ap.add_argument("--tied", action="store_true", help="tie_word_embeddings (no lm_head.weight)")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gguf", help="also write this GGUF file (same weights)")
    ap.add_argument("--gguf-type", default="f32", choices=sorted(GGML_TYPE))
    ap.add_argument("--kv-heads", type=int, help="override num_key_value_heads")
    ap.add_argument("--mlp-only-layers", help='qwen2/3_moe dense layers, e.g. "1"')
    ap.add_argument("--clip-qkv", type=float, help="olmoe clip_qkv")
    ap.add_argument("--norm-topk", type=int, choices=(0, 1), help="override norm_topk_prob")
    a = ap.parse_args(argv)
    mlp_only = [int(s) for s in a.mlp_only_layers.replace(",", " ").split()] if a.mlp_only_layers else None
    make_model(a.arch, a.out, a.dtype, a.tied, a.shards, a.seed, a.gguf, a.gguf_type, a.kv_heads,
               mlp_only, a.clip_qkv, a.norm_topk)
    print(f"wrote {a.out}" + (f" and {a.gguf}" if a.gguf else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
