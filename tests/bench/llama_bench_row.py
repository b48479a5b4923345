#!/usr/bin/env python3
"""One JSON row of the engine benchmarks from llama-bench's `-o json` on stdin (a pp and a tg
test): {"bench", "round", "engine", "model", "build_commit", "build_number", "prefill_tok_s",
"decode_tok_s"}. Shared by engines.sh and hybrid_bench.sh.

  llama-bench ... -o json | llama_bench_row.py BENCH ROUND ENGINE MODEL
"""
import json
import sys

bench, rnd, engine, model = sys.argv[1:5]
rows = json.load(sys.stdin)
out = {"bench": bench, "round": int(rnd), "engine": engine, "model": model,
       "build_commit": rows[0].get("build_commit"), "build_number": rows[0].get("build_number")}
for x in rows:
    out["prefill_tok_s" if x["n_prompt"] else "decode_tok_s"] = x["avg_ts"]
print(json.dumps(out))
