#!/usr/bin/env python3
"""Writes tiny-moe's trained weights as a Qwen2-MoE checkpoint, so compression
can be judged on the Qwen2-MoE layout with a perplexity that means something
(a random synthetic model has no perplexity worth comparing).

  /usr/bin/python3 tests/quality/tiny_as_qwen2_moe.py --out DIR [--model models/tiny-moe]

What changes against tiny-moe: the Qwen2-MoE names (mlp.experts.N.{gate,up,down}_proj,
mlp.gate), zero q/k/v biases, norm_topk_prob = true (Mixtral renormalises its
top-2), and a small random shared expert with its sigmoid gate (weights scaled
so it perturbs the model slightly rather than breaking it). The shared expert is
dense: packs keep it as it is and compress only the routed experts."""
import argparse
import json
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import make_arch_model as mam  # noqa: E402
import moe_ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(HERE, "..", "..", "models", "tiny-moe"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--shared-ffn", type=int, default=128)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()

    with open(os.path.join(a.model, "config.json")) as f:
        src = json.load(f)
    t = moe_ref.read_hf_dir(a.model)
    H, F, E, L = (src["hidden_size"], src["intermediate_size"], src["num_local_experts"],
                  src["num_hidden_layers"])
    nh, nkv = src["num_attention_heads"], src["num_key_value_heads"]
    hd = H // nh
    Fs = a.shared_ffn
    rng = np.random.default_rng(a.seed)

    items = [("model.embed_tokens.weight", t["model.embed_tokens.weight"])]
    for l in range(L):
        p, q = f"model.layers.{l}.", f"model.layers.{l}."
        items += [(q + "input_layernorm.weight", t[p + "input_layernorm.weight"]),
                  (q + "post_attention_layernorm.weight", t[p + "post_attention_layernorm.weight"])]
        for n, rows in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
            items.append((q + f"self_attn.{n}_proj.weight", t[p + f"self_attn.{n}_proj.weight"]))
            items.append((q + f"self_attn.{n}_proj.bias", np.zeros(rows, np.float32)))
        items.append((q + "self_attn.o_proj.weight", t[p + "self_attn.o_proj.weight"]))
        items.append((q + "mlp.gate.weight", t[p + "block_sparse_moe.gate.weight"]))
        for e in range(E):
            s = p + f"block_sparse_moe.experts.{e}."
            d = q + f"mlp.experts.{e}."
            items += [(d + "gate_proj.weight", t[s + "w1.weight"]),
                      (d + "up_proj.weight", t[s + "w3.weight"]),
                      (d + "down_proj.weight", t[s + "w2.weight"])]
        items += [
            (q + "mlp.shared_expert.gate_proj.weight", rng.normal(0, 0.05, (Fs, H)).astype(np.float32)),
            (q + "mlp.shared_expert.up_proj.weight", rng.normal(0, 0.05, (Fs, H)).astype(np.float32)),
            (q + "mlp.shared_expert.down_proj.weight", rng.normal(0, 0.002, (H, Fs)).astype(np.float32)),
            (q + "mlp.shared_expert_gate.weight", rng.normal(0, 0.01, (1, H)).astype(np.float32)),
        ]
    items += [("model.norm.weight", t["model.norm.weight"]), ("lm_head.weight", t["lm_head.weight"])]

    cfg = {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_act": "silu",
           "vocab_size": src["vocab_size"], "hidden_size": H, "intermediate_size": F,
           "moe_intermediate_size": F, "shared_expert_intermediate_size": Fs,
           "num_hidden_layers": L, "num_attention_heads": nh, "num_key_value_heads": nkv,
           "num_experts": E, "num_experts_per_tok": src["num_experts_per_tok"],
           "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
           "rms_norm_eps": src["rms_norm_eps"], "rope_theta": src["rope_theta"],
           "max_position_embeddings": src["max_position_embeddings"], "use_sliding_window": False,
           "sliding_window": None, "max_window_layers": L, "tie_word_embeddings": False,
           "bos_token_id": src["bos_token_id"], "eos_token_id": src["eos_token_id"],
           "torch_dtype": "bfloat16"}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    mam.write_hf_weights(a.out, items, "bf16")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(a.model, name)):
            shutil.copy(os.path.join(a.model, name), os.path.join(a.out, name))


if __name__ == "__main__":
    main()
