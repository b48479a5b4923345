#!/usr/bin/env python3
"""Independent NumPy reference ("oracle") of the forward pass of four Hugging Face
Mixture-of-Experts decoder architectures, used to check moed's C engine.

    Mixtral    MixtralForCausalLM    (model_type "mixtral")
    Qwen2-MoE  Qwen2MoeForCausalLM   (model_type "qwen2_moe")
    Qwen3-MoE  Qwen3MoeForCausalLM   (model_type "qwen3_moe")
    OLMoE      OlmoeForCausalLM      (model_type "olmoe")

It reads Hugging Face checkpoint directories (config.json + model.safetensors, or
model-0000k-of-0000N.safetensors + model.safetensors.index.json; BF16/F16/F32) and
also GGUF files in llama.cpp's layout (F32/F16/BF16/Q8_0, dequantised on load), so
that the engine can be compared on exactly the weights it reads.

API:      m = load(path);  m.logits(ids) -> np.ndarray float32 [n, vocab]
          (all positions, empty cache, positions 0..n-1)
CLI:      /usr/bin/python3 tests/reference/moe_ref.py --model DIR_OR_GGUF --ids "1 2 3" --out FILE
          writes raw little-endian float32 [n, vocab].

Semantics, checked against transformers' modeling_{mixtral,qwen2_moe,qwen3_moe,olmoe}.py:
  * RMSNorm: x * rsqrt(mean(x^2) + eps) * w  (HF computes it in fp32, casts back, then * w).
  * RoPE "rotate half": pairs (i, i + hd/2); inv_freq = theta^(-2i/hd); cos/sin in fp32.
  * Attention: causal softmax(q.k / sqrt(head_dim)) in fp32, GQA by repeating kv heads.
  * Router: logits = gate(y); softmax over ALL experts in fp32 (dtype=torch.float) FIRST,
    then top-k of the probabilities; then renormalise the k weights to sum 1
      - Mixtral: always;  Qwen2-MoE / Qwen3-MoE / OLMoE: only if config.norm_topk_prob.
    The k weights are cast back to the hidden dtype before scaling the expert outputs.
  * Expert: down(silu(gate(y)) * up(y))  (Mixtral names: w2(silu(w1 y) * w3 y)).
  * Qwen2-MoE: q/k/v biases; + sigmoid(shared_expert_gate(y)) * shared_expert(y);
    dense mlp on layers in mlp_only_layers or where (i+1) % decoder_sparse_step != 0.
  * Qwen3-MoE: per-head RMSNorm q_norm/k_norm (weight [head_dim]) before RoPE; head_dim
    from config (may differ from hidden/heads); same dense-layer rule as Qwen2-MoE.
  * OLMoE: q_norm over the whole projected q [n_heads*hd], k_norm over k [n_kv*hd],
    before splitting into heads; then optional clamp of q, k, v to +-clip_qkv.
  * Any bias tensor present in the checkpoint (q/k/v/o_proj.bias) is applied.
  * tie_word_embeddings / missing lm_head.weight -> lm_head = embed_tokens.
Dtype flow in transformers (for a bf16 run): RMSNorm upcasts to fp32, normalises, casts
back to bf16, then multiplies by the weight; RoPE cos/sin are computed in fp32 and cast to
the activation dtype; attention probabilities are softmaxed in fp32 and cast back; the
router softmax is fp32 (dtype=torch.float) and the selected (renormalised) weights are cast
back to the hidden dtype before scaling the expert outputs.  This oracle computes everything
in float32 (weights upcast, like a transformers fp32 run; that is how tiny-moe's reference
logits were made) with the softmaxes in float64.
Not implemented (raises): rope_scaling other than default, sliding-window attention with a
sequence longer than the window.
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

# ----------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------

_ST_DTYPES = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "F64": np.dtype("<f8"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("u1"),
}


def bf16_bits_to_f32(u16):
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (np.asarray(u16, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path, as_float32=True):
    """Returns {name: ndarray}; floating tensors converted to float32 if as_float32."""
    with open(path, "rb") as f:
        data = f.read()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen].decode("utf-8"))
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dt}")
        b, e = info["data_offsets"]
        arr = np.frombuffer(data, dtype=_ST_DTYPES[dt], count=(e - b) // _ST_DTYPES[dt].itemsize,
                            offset=base + b).reshape(info["shape"])
        if as_float32 and dt == "BF16":
            arr = bf16_bits_to_f32(arr)
        elif as_float32 and dt in ("F16", "F32", "F64"):
            arr = arr.astype(np.float32)
        else:
            arr = arr.copy()
        out[name] = arr
    return out


def read_hf_dir(d):
    """All tensors of an HF checkpoint dir (single file or sharded with index)."""
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.isfile(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        tensors = {}
        for part in sorted(set(wm.values())):
            tensors.update(read_safetensors(os.path.join(d, part)))
        missing = set(wm) - set(tensors)
        if missing:
            raise ValueError(f"{d}: tensors in index but not in shards: {sorted(missing)[:5]}")
        return tensors
    single = os.path.join(d, "model.safetensors")
    if os.path.isfile(single):
        return read_safetensors(single)
    parts = sorted(p for p in os.listdir(d) if p.startswith("model") and p.endswith(".safetensors"))
    if not parts:
        raise FileNotFoundError(f"{d}: no model*.safetensors")
    tensors = {}
    for p in parts:
        tensors.update(read_safetensors(os.path.join(d, p)))
    return tensors


# ----------------------------------------------------------------------------
# GGUF reader (llama.cpp layout) -> HF names + HF-like config
# ----------------------------------------------------------------------------

GGML_F32, GGML_F16, GGML_Q8_0, GGML_BF16, GGML_MXFP4 = 0, 1, 8, 30, 39

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                 10: "<Q", 11: "<q", 12: "<d"}


class _Buf:
    def __init__(self, data):
        self.d, self.p = data, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.d, self.p)
        self.p += struct.calcsize(fmt)
        return v[0]

    def string(self):
        n = self.take("<Q")
        s = self.d[self.p:self.p + n].decode("utf-8", errors="replace")
        self.p += n
        return s

    def value(self, t):
        if t in _GGUF_SCALARS:
            return self.take(_GGUF_SCALARS[t])
        if t == 8:
            return self.string()
        if t == 9:
            et = self.take("<I")
            n = self.take("<Q")
            return [self.value(et) for _ in range(n)]
        raise ValueError(f"GGUF: bad value type {t}")


def read_gguf(path):
    """Returns (metadata dict, {gguf_name: float32 ndarray in numpy order = reversed(ne)}).
    MXFP4 tensors come back undecoded: uint8 [..., ne[0] / 32, 17] (ggml's blocks: the e8m0
    exponent byte, then 16 bytes of 4-bit codes, element j in the low nibble of byte j and
    element j + 16 in its high nibble)."""
    with open(path, "rb") as f:
        data = f.read()
    b = _Buf(data)
    if data[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    b.p = 4
    version = b.take("<I")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} unsupported")
    n_tensors = b.take("<Q")
    n_kv = b.take("<Q")
    meta = {}
    for _ in range(n_kv):
        k = b.string()
        t = b.take("<I")
        meta[k] = b.value(t)
    infos = []
    for _ in range(n_tensors):
        name = b.string()
        nd = b.take("<I")
        ne = [b.take("<Q") for _ in range(nd)]
        typ = b.take("<I")
        off = b.take("<Q")
        infos.append((name, ne, typ, off))
    align = int(meta.get("general.alignment", 32))
    start = (b.p + align - 1) // align * align
    tensors = {}
    for name, ne, typ, off in infos:
        n = int(np.prod(ne)) if ne else 1
        shape = tuple(reversed(ne))
        o = start + off
        if typ == GGML_F32:
            arr = np.frombuffer(data, "<f4", n, o).astype(np.float32)
        elif typ == GGML_F16:
            arr = np.frombuffer(data, "<f2", n, o).astype(np.float32)
        elif typ == GGML_BF16:
            arr = bf16_bits_to_f32(np.frombuffer(data, "<u2", n, o))
        elif typ == GGML_Q8_0:
            if ne[0] % 32:
                raise ValueError(f"{name}: Q8_0 row {ne[0]} not a multiple of 32")
            nb = n // 32
            raw = np.frombuffer(data, np.uint8, nb * 34, o).reshape(nb, 34)
            d = raw[:, :2].copy().view("<f2").astype(np.float32)  # [nb, 1]
            q = raw[:, 2:].copy().view(np.int8).astype(np.float32)
            arr = (q * d).reshape(-1)
        elif typ == GGML_MXFP4:
            if ne[0] % 32:
                raise ValueError(f"{name}: MXFP4 row {ne[0]} not a multiple of 32")
            raw = np.frombuffer(data, np.uint8, n // 32 * 17, o)
            tensors[name] = raw.reshape(*shape[:-1], ne[0] // 32, 17).copy()
            continue
        else:
            raise ValueError(f"{name}: ggml type {typ} unsupported by the oracle")
        tensors[name] = arr.reshape(shape)
    return meta, tensors


# llama.cpp's HF->GGUF permutation of Q/K rows for LLAMA ("normal" rope, adjacent pairs):
#   gguf = hf.reshape(n, 2, hd//2, ...).swapaxes(1, 2).reshape(hf.shape)
def unpermute_llama_qk(w, n_head):
    shp = w.shape
    hd = shp[0] // n_head
    return w.reshape(n_head, hd // 2, 2, *shp[1:]).swapaxes(1, 2).reshape(shp)


_GGUF_ARCH_TO_HF = {"llama": "mixtral", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe",
                    "olmoe": "olmoe"}
# llama.cpp hard-codes the top-k renormalisation per architecture (build_moe_ffn norm_w):
# llama (Mixtral) true, qwen2moe false, qwen3moe true, olmoe false.
_GGUF_NORM_TOPK_DEFAULT = {"llama": True, "qwen2moe": False, "qwen3moe": True, "olmoe": False}


def gguf_to_hf(meta, gt):
    """Maps a GGUF (metadata, tensors) to an (HF-style config dict, {HF name: tensor})."""
    arch = meta["general.architecture"]
    if arch not in _GGUF_ARCH_TO_HF:
        raise ValueError(f"GGUF architecture {arch!r} not supported by the oracle")
    A = lambda k, d=None: meta.get(f"{arch}.{k}", d)  # noqa: E731
    H = int(A("embedding_length"))
    n_head = int(A("attention.head_count"))
    n_kv = int(A("attention.head_count_kv", n_head))
    hd = int(A("attention.key_length", 0)) or (H // n_head)
    n_layer = int(A("block_count"))
    vocab = gt["token_embd.weight"].shape[0]
    cfg = {
        "model_type": _GGUF_ARCH_TO_HF[arch],
        "vocab_size": vocab,
        "hidden_size": H,
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": hd,
        "rms_norm_eps": float(A("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(A("rope.freq_base", 10000.0)),
        "num_experts_per_tok": int(A("expert_used_count", 0)),
        "norm_topk_prob": bool(A("expert_weights_norm", _GGUF_NORM_TOPK_DEFAULT[arch])),
        "tie_word_embeddings": "output.weight" not in gt,
        "clip_qkv": A("attention.clamp_kqv"),
        "mlp_only_layers": [],
        "decoder_sparse_step": 1,
    }
    n_exp = int(A("expert_count", 0))
    cfg["num_local_experts" if arch == "llama" else "num_experts"] = n_exp
    t = {"model.embed_tokens.weight": gt["token_embd.weight"],
         "model.norm.weight": gt["output_norm.weight"]}
    if "output.weight" in gt:
        t["lm_head.weight"] = gt["output.weight"]
    moe = "block_sparse_moe" if arch == "llama" else "mlp"
    for i in range(n_layer):
        p, g = f"model.layers.{i}.", f"blk.{i}."
        t[p + "input_layernorm.weight"] = gt[g + "attn_norm.weight"]
        t[p + "post_attention_layernorm.weight"] = gt[g + "ffn_norm.weight"]
        for hfn, gn in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"),
                        ("o_proj", "attn_output")):
            for suf in ("weight", "bias"):
                if f"{g}{gn}.{suf}" in gt:
                    w = gt[f"{g}{gn}.{suf}"]
                    if arch == "llama" and hfn in ("q_proj", "k_proj"):
                        w = unpermute_llama_qk(w, n_head if hfn == "q_proj" else n_kv)
                    t[f"{p}self_attn.{hfn}.{suf}"] = w
        for hfn, gn in (("q_norm", "attn_q_norm"), ("k_norm", "attn_k_norm")):
            if g + gn + ".weight" in gt:
                t[f"{p}self_attn.{hfn}.weight"] = gt[g + gn + ".weight"].reshape(-1)
        if g + "ffn_gate_inp.weight" in gt:
            t[f"{p}{moe}.gate.weight"] = gt[g + "ffn_gate_inp.weight"]
            ge, ue, de = (gt[g + "ffn_gate_exps.weight"], gt[g + "ffn_up_exps.weight"],
                          gt[g + "ffn_down_exps.weight"])
            for x in range(n_exp):
                if arch == "llama":
                    t[f"{p}block_sparse_moe.experts.{x}.w1.weight"] = ge[x]
                    t[f"{p}block_sparse_moe.experts.{x}.w3.weight"] = ue[x]
                    t[f"{p}block_sparse_moe.experts.{x}.w2.weight"] = de[x]
                else:
                    t[f"{p}mlp.experts.{x}.gate_proj.weight"] = ge[x]
                    t[f"{p}mlp.experts.{x}.up_proj.weight"] = ue[x]
                    t[f"{p}mlp.experts.{x}.down_proj.weight"] = de[x]
            if g + "ffn_gate_inp_shexp.weight" in gt:
                t[f"{p}mlp.shared_expert_gate.weight"] = gt[g + "ffn_gate_inp_shexp.weight"].reshape(1, H)
                t[f"{p}mlp.shared_expert.gate_proj.weight"] = gt[g + "ffn_gate_shexp.weight"]
                t[f"{p}mlp.shared_expert.up_proj.weight"] = gt[g + "ffn_up_shexp.weight"]
                t[f"{p}mlp.shared_expert.down_proj.weight"] = gt[g + "ffn_down_shexp.weight"]
        elif g + "ffn_gate.weight" in gt:  # dense layer (our extension; not in llama.cpp qwen2moe)
            cfg["mlp_only_layers"].append(i)
            for hfn, gn in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
                t[f"{p}mlp.{hfn}.weight"] = gt[g + gn + ".weight"]
    return cfg, t


# ----------------------------------------------------------------------------
# forward pass
# ----------------------------------------------------------------------------

SUPPORTED = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")


def _rms(x, w, eps):
    x = x.astype(np.float32)
    ms = np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True)
    return (x * (1.0 / np.sqrt(ms + eps)).astype(np.float32)) * w


def _softmax64(z, axis=-1):
    z = z.astype(np.float64)
    z = z - np.max(z, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def _silu(x):
    return x / (1.0 + np.exp(-x.astype(np.float64))).astype(np.float32)


def _linear(x, w, b=None):
    y = x @ w.T
    if b is not None:
        y = y + b
    return y.astype(np.float32)


class Model:
    """Holds an HF-style config dict and {HF tensor name: float32 ndarray}."""

    def __init__(self, cfg, tensors):
        self.cfg = dict(cfg)
        self.t = tensors
        mt = self.cfg.get("model_type")
        if mt not in SUPPORTED:
            arch = (self.cfg.get("architectures") or [""])[0]
            mt = {"MixtralForCausalLM": "mixtral", "Qwen2MoeForCausalLM": "qwen2_moe",
                  "Qwen3MoeForCausalLM": "qwen3_moe", "OlmoeForCausalLM": "olmoe"}.get(arch)
            if mt is None:
                raise ValueError(f"unsupported model_type {self.cfg.get('model_type')!r}")
        self.arch = mt
        c = self.cfg
        self.H = int(c["hidden_size"])
        self.n_layer = int(c["num_hidden_layers"])
        self.n_head = int(c["num_attention_heads"])
        self.n_kv = int(c.get("num_key_value_heads") or self.n_head)
        self.hd = int(c.get("head_dim") or (self.H // self.n_head))
        self.eps = float(c.get("rms_norm_eps", 1e-6))
        self.theta = float(c.get("rope_theta", 10000.0))
        if mt == "mixtral":
            self.n_exp = int(c["num_local_experts"])
            self.norm_topk = True
        else:
            self.n_exp = int(c.get("num_experts", 0))
            self.norm_topk = bool(c.get("norm_topk_prob", False))
        self.top_k = int(c["num_experts_per_tok"])
        self.clip = c.get("clip_qkv") if mt == "olmoe" else None
        self.mlp_only = set(int(i) for i in (c.get("mlp_only_layers") or []))
        self.sparse_step = int(c.get("decoder_sparse_step", 1) or 1)
        self.embed = self.t["model.embed_tokens.weight"]
        if "lm_head.weight" in self.t and not c.get("tie_word_embeddings", False):
            self.lm_head = self.t["lm_head.weight"]
        else:
            self.lm_head = self.embed
        self.vocab = self.lm_head.shape[0]
        rs = c.get("rope_scaling")
        if rs and (rs.get("rope_type") or rs.get("type")) not in (None, "default"):
            raise NotImplementedError(f"rope_scaling {rs} not supported by the oracle")
        self.window = c.get("sliding_window")
        if mt in ("qwen2_moe", "qwen3_moe") and not c.get("use_sliding_window", False):
            self.window = None
        # smallest gap, over all tokens and MoE layers of the last forward pass, between the
        # k-th and (k+1)-th router probability: tiny values mean top-k selection is fragile
        self.route_margin = float("inf")

    # -- pieces -------------------------------------------------------------

    def is_moe_layer(self, i):
        if self.arch in ("mixtral", "olmoe"):
            return True
        return (i not in self.mlp_only) and self.n_exp > 0 and (i + 1) % self.sparse_step == 0

    def _rope(self, x, n):
        """x: [n, heads, hd]; rotate-half RoPE at positions 0..n-1."""
        hd = x.shape[-1]
        inv = 1.0 / (self.theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
        ang = np.arange(n, dtype=np.float64)[:, None] * inv[None, :]
        cos = np.concatenate([np.cos(ang)] * 2, axis=-1).astype(np.float32)[:, None, :]
        sin = np.concatenate([np.sin(ang)] * 2, axis=-1).astype(np.float32)[:, None, :]
        h = hd // 2
        rot = np.concatenate([-x[..., h:], x[..., :h]], axis=-1)
        return (x * cos + rot * sin).astype(np.float32)

    def attention(self, i, y):
        t, p = self.t, f"model.layers.{i}.self_attn."
        n = y.shape[0]
        q = _linear(y, t[p + "q_proj.weight"], t.get(p + "q_proj.bias"))
        k = _linear(y, t[p + "k_proj.weight"], t.get(p + "k_proj.bias"))
        v = _linear(y, t[p + "v_proj.weight"], t.get(p + "v_proj.bias"))
        if self.arch == "olmoe":
            q = _rms(q, t[p + "q_norm.weight"], self.eps)
            k = _rms(k, t[p + "k_norm.weight"], self.eps)
            if self.clip is not None:
                c = float(self.clip)
                q, k, v = np.clip(q, -c, c), np.clip(k, -c, c), np.clip(v, -c, c)
        q = q.reshape(n, self.n_head, self.hd)
        k = k.reshape(n, self.n_kv, self.hd)
        v = v.reshape(n, self.n_kv, self.hd)
        if self.arch == "qwen3_moe":
            q = _rms(q, t[p + "q_norm.weight"], self.eps)
            k = _rms(k, t[p + "k_norm.weight"], self.eps)
        q, k = self._rope(q, n), self._rope(k, n)
        rep = self.n_head // self.n_kv
        k = np.repeat(k, rep, axis=1)  # head h uses kv head h // rep
        v = np.repeat(v, rep, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k).astype(np.float64) / np.sqrt(self.hd)
        s = s + np.triu(np.full((n, n), -np.inf), 1)[None]
        pr = _softmax64(s).astype(np.float32)
        o = np.einsum("hqk,khd->qhd", pr, v).reshape(n, self.n_head * self.hd)
        return _linear(o, t[p + "o_proj.weight"], t.get(p + "o_proj.bias"))

    def _mlp(self, x, wg, wu, wd):
        return _linear(_silu(_linear(x, wg)) * _linear(x, wu), wd)

    def route(self, i, y):
        """Returns (router logits [n,E], top-k expert ids [n,k], weights [n,k])."""
        pre = "block_sparse_moe" if self.arch == "mixtral" else "mlp"
        logits = _linear(y, self.t[f"model.layers.{i}.{pre}.gate.weight"])
        probs = _softmax64(logits)
        order = np.argsort(-probs, axis=-1, kind="stable")
        idx = order[:, :self.top_k]
        w = np.take_along_axis(probs, idx, axis=-1)
        if self.top_k < self.n_exp:  # gap between the k-th and (k+1)-th probability
            srt = np.take_along_axis(probs, order[:, self.top_k - 1:self.top_k + 1], axis=-1)
            self.route_margin = min(self.route_margin, float(np.min(srt[:, 0] - srt[:, 1])))
        if self.norm_topk:
            w = w / np.sum(w, axis=-1, keepdims=True)
        return logits, idx, w.astype(np.float32)

    def ffn(self, i, y):
        t, p = self.t, f"model.layers.{i}."
        if not self.is_moe_layer(i):
            return self._mlp(y, t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"],
                             t[p + "mlp.down_proj.weight"])
        _, idx, w = self.route(i, y)
        out = np.zeros_like(y)
        for e in range(self.n_exp):
            rows, slot = np.nonzero(idx == e)
            if rows.size == 0:
                continue
            if self.arch == "mixtral":
                q = f"{p}block_sparse_moe.experts.{e}."
                ye = self._mlp(y[rows], t[q + "w1.weight"], t[q + "w3.weight"], t[q + "w2.weight"])
            else:
                q = f"{p}mlp.experts.{e}."
                ye = self._mlp(y[rows], t[q + "gate_proj.weight"], t[q + "up_proj.weight"],
                               t[q + "down_proj.weight"])
            np.add.at(out, rows, ye * w[rows, slot][:, None])
        if p + "mlp.shared_expert_gate.weight" in t:
            s = self._mlp(y, t[p + "mlp.shared_expert.gate_proj.weight"],
                          t[p + "mlp.shared_expert.up_proj.weight"],
                          t[p + "mlp.shared_expert.down_proj.weight"])
            g = _linear(y, t[p + "mlp.shared_expert_gate.weight"])  # [n, 1]
            out = out + (1.0 / (1.0 + np.exp(-g.astype(np.float64)))).astype(np.float32) * s
        return out.astype(np.float32)

    # -- whole model ----------------------------------------------------------

    def hidden(self, ids):
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("empty ids")
        if ids.min() < 0 or ids.max() >= self.embed.shape[0]:
            raise ValueError("token id out of range")
        if self.window is not None and ids.size > int(self.window):
            raise NotImplementedError("sliding-window attention not supported by the oracle")
        x = self.embed[ids].astype(np.float32)
        self.route_margin = float("inf")
        for i in range(self.n_layer):
            p = f"model.layers.{i}."
            x = x + self.attention(i, _rms(x, self.t[p + "input_layernorm.weight"], self.eps))
            x = x + self.ffn(i, _rms(x, self.t[p + "post_attention_layernorm.weight"], self.eps))
        return _rms(x, self.t["model.norm.weight"], self.eps)

    def logits(self, ids):
        return _linear(self.hidden(ids), self.lm_head)

    def greedy(self, ids, n_new):
        """Greedy continuation, recomputing from scratch each step."""
        seq, out = list(ids), []
        for _ in range(n_new):
            nxt = int(np.argmax(self.logits(seq)[-1]))
            out.append(nxt)
            seq.append(nxt)
        return out


def load(path):
    """Loads an HF checkpoint directory or a .gguf file."""
    if os.path.isdir(path):
        with open(os.path.join(path, "config.json")) as f:
            cfg = json.load(f)
        return Model(cfg, read_hf_dir(path))
    meta, gt = read_gguf(path)
    cfg, t = gguf_to_hf(meta, gt)
    return Model(cfg, t)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="HF checkpoint dir or .gguf file")
    ap.add_argument("--ids", required=True, help='token ids, e.g. "1 2 3"')
    ap.add_argument("--out", required=True, help="output: raw float32 [n, vocab]")
    a = ap.parse_args(argv)
    ids = [int(s) for s in a.ids.replace(",", " ").split()]
    lg = load(a.model).logits(ids)
    lg.astype("<f4").tofile(a.out)
    print(f"wrote {a.out}: [{lg.shape[0]}, {lg.shape[1]}] float32", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
