#!/usr/bin/env python3
"""A synthetic Qwen3.5/3.6-MoE checkpoint for decode benchmarks: the Qwen3.6-35B-A3B layer
pattern and expert count (40 layers, every 4th full attention, the rest Gated DeltaNet; 256
experts, top-8, one shared expert), scaled down to fit this machine (every width / 4).

Writes a Hugging Face directory (config.json as transformers 5 saves Qwen3_5MoeForCausalLM,
model.safetensors in bf16, streamed one tensor at a time so memory stays at one tensor) with the
family tokenizer copied beside it; `tests/bench/run_bench.sh hybrid` converts it with the vendored
llama.cpp's convert_hf_to_gguf.py (Q8_0) and times moed and llama.cpp on that one GGUF file.

  python3 tests/bench/make_hybrid_model.py --out DIR [--seed S] [--layers N] [--experts E]

Weights: normal(0, 0.02) matrices, norms near their neutral values, decay rates A in
[0.02, 0.3] (per-step decay 0.7-0.99, as trained models keep). Deterministic: one numpy
generator per tensor, seeded with (seed, crc32(name)).

--full-attention makes every layer full attention (the same widths): the all-attention twin
that tests/integration/test_daemon_hybrid.py compares the hybrid's memory with. --hidden and
--ctx shrink it further for tests.
"""
import argparse
import json
import os
import shutil
import struct
import sys
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "..", "data", "tokenizers", "qwen3")


def shape(args):
    h = args.hidden
    return dict(
        architectures=["Qwen3_5MoeForCausalLM"], model_type="qwen3_5_moe_text",
        vocab_size=151936, hidden_size=h, num_hidden_layers=args.layers,
        num_attention_heads=16 // 4, num_key_value_heads=2, head_dim=256,
        linear_num_key_heads=16 // 4, linear_num_value_heads=32 // 4, linear_key_head_dim=128,
        linear_value_head_dim=128, linear_conv_kernel_dim=4,
        num_experts=args.experts, num_experts_per_tok=min(8, args.experts), moe_intermediate_size=512 // 4,
        shared_expert_intermediate_size=512 // 4, norm_topk_prob=True,
        layer_types=["full_attention" if (i + 1) % 4 == 0 or args.full_attention
                     else "linear_attention" for i in range(args.layers)],
        rope_parameters={"rope_type": "default", "rope_theta": 10000000.0,
                         "partial_rotary_factor": 0.25, "mrope_section": [11, 11, 10],
                         "mrope_interleaved": True},
        max_position_embeddings=args.ctx, rms_norm_eps=1e-6, hidden_act="silu",
        tie_word_embeddings=False, attention_bias=False, attention_dropout=0.0,
        initializer_range=0.02, use_cache=True, bos_token_id=None, eos_token_id=151645,
        dtype="bfloat16", transformers_version="5.25.0",
        synthetic={"generator": "tests/bench/make_hybrid_model.py", "seed": args.seed})


def tensors(c):
    """(name, shape, kind) in file order"""
    H, V = c["hidden_size"], c["vocab_size"]
    nh, nkv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    nk, nv = c["linear_num_key_heads"], c["linear_num_value_heads"]
    dk, dv, K = c["linear_key_head_dim"], c["linear_value_head_dim"], c["linear_conv_kernel_dim"]
    E, F, Fs = c["num_experts"], c["moe_intermediate_size"], c["shared_expert_intermediate_size"]
    conv = 2 * nk * dk + nv * dv
    out = [("model.embed_tokens.weight", (V, H), "mat"), ("lm_head.weight", (V, H), "mat"),
           ("model.norm.weight", (H,), "znorm")]
    for L, t in enumerate(c["layer_types"]):
        p = f"model.layers.{L}."
        out += [(p + "input_layernorm.weight", (H,), "znorm"),
                (p + "post_attention_layernorm.weight", (H,), "znorm")]
        if t == "linear_attention":
            a = p + "linear_attn."
            out += [(a + "in_proj_qkv.weight", (conv, H), "mat"),
                    (a + "in_proj_z.weight", (nv * dv, H), "mat"),
                    (a + "in_proj_b.weight", (nv, H), "mat"),
                    (a + "in_proj_a.weight", (nv, H), "mat"),
                    (a + "conv1d.weight", (conv, 1, K), "conv"),
                    (a + "dt_bias", (nv,), "dt"), (a + "A_log", (nv,), "alog"),
                    (a + "norm.weight", (dv,), "gnorm"),
                    (a + "out_proj.weight", (H, nv * dv), "mat")]
        else:
            a = p + "self_attn."
            out += [(a + "q_proj.weight", (2 * nh * hd, H), "mat"),
                    (a + "k_proj.weight", (nkv * hd, H), "mat"),
                    (a + "v_proj.weight", (nkv * hd, H), "mat"),
                    (a + "o_proj.weight", (H, nh * hd), "mat"),
                    (a + "q_norm.weight", (hd,), "znorm"), (a + "k_norm.weight", (hd,), "znorm")]
        m = p + "mlp."
        out += [(m + "gate.weight", (E, H), "router"),
                (m + "shared_expert_gate.weight", (1, H), "mat")]
        for s in ("gate_proj", "up_proj"):
            out.append((m + f"shared_expert.{s}.weight", (Fs, H), "mat"))
        out.append((m + "shared_expert.down_proj.weight", (H, Fs), "mat"))
        for e in range(E):
            for s in ("gate_proj", "up_proj"):
                out.append((m + f"experts.{e}.{s}.weight", (F, H), "mat"))
            out.append((m + f"experts.{e}.down_proj.weight", (H, F), "mat"))
    return out


def value(seed, name, shp, kind):
    g = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if kind == "mat":
        return g.normal(0, 0.02, shp).astype(np.float32)
    if kind == "router":
        return g.normal(0, 0.02, shp).astype(np.float32)
    if kind == "znorm":  # zero-centred: the model multiplies by 1 + w
        return g.normal(0, 0.05, shp).astype(np.float32)
    if kind == "gnorm":
        return (1 + g.normal(0, 0.05, shp)).astype(np.float32)
    if kind == "conv":
        return g.normal(0, 0.3, shp).astype(np.float32)
    if kind == "dt":
        return g.uniform(0, 1, shp).astype(np.float32)
    if kind == "alog":
        return np.log(g.uniform(0.02, 0.3, shp)).astype(np.float32)
    raise ValueError(kind)


def bf16_bytes(a):
    u = a.astype(np.float32).view(np.uint32)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16  # round to nearest even
    return u.astype("<u2").tobytes()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=2048 // 4)
    ap.add_argument("--ctx", type=int, default=262144)
    ap.add_argument("--full-attention", action="store_true")
    args = ap.parse_args(argv)
    c = shape(args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
    for fn in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOKENIZER, fn), args.out)
    ts = tensors(c)
    header, off = {}, 0
    for name, shp, _ in ts:
        n = int(np.prod(shp)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shp), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    path = os.path.join(args.out, "model.safetensors")
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        for i, (name, shp, kind) in enumerate(ts):
            f.write(bf16_bytes(value(args.seed, name, shp, kind)))
            if i % 500 == 0:
                print(f"\r{i}/{len(ts)} tensors", end="", file=sys.stderr)
    os.replace(path + ".tmp", path)
    print(f"\n{args.out}: {off / 1e9:.2f} GB of bf16 weights", file=sys.stderr)


if __name__ == "__main__":
    main()
