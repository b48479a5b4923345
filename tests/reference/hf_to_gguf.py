#!/usr/bin/env python3
"""Converts a Hugging Face MoE checkpoint dir (Mixtral / Qwen2-MoE / Qwen3-MoE / OLMoE) into a
GGUF file the way llama.cpp's convert_hf_to_gguf.py does (names, shapes, Q/K permutation for
Mixtral -> "llama", F32 norms/routers, metadata, gpt2-style tokenizer).  See the mapping table
at the top of make_arch_model.py.

  /usr/bin/python3 tests/reference/hf_to_gguf.py --model models/tiny-moe --out FILE [--type f32|f16|bf16|q8_0]

--type is the type of the 2-D/3-D weight matrices (default f16, as llama.cpp's --outtype).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_arch_model  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description="HF MoE checkpoint -> GGUF (llama.cpp conventions)")
    ap.add_argument("--model", required=True, help="HF checkpoint directory")
    ap.add_argument("--out", required=True, help="output .gguf file")
    ap.add_argument("--type", default="f16", choices=sorted(make_arch_model.GGML_TYPE))
    ap.add_argument("--name", help="general.name (default: the directory name)")
    a = ap.parse_args(argv)
    make_arch_model.convert_hf_to_gguf(a.model, a.out, a.type, a.name)
    print(f"wrote {a.out} ({a.type})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
