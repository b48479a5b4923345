#!/usr/bin/env python3
"""make bench, issue 18: what constrained decoding costs. One moed, one sequence at a time,
the same prompt and token count, interleaved rounds of:

  plain    free text (ignore_eos), the baseline of schema;
  plain-top-p  the same with top_p 0.9, the baseline of the two masked modes (top-p's own
           sorting is not the grammar's cost);
  schema   a JSON schema whose long string keeps the grammar open for every token, sampled at
           temperature 0.8: the draw is checked against the grammar and a mask is built only
           when the draw is refused;
  masked   the same with top_p 0.9: a truncating sampler must see the masked row, so a mask is
           built at every step, and minLength makes every step's parse state new (the worst
           case: no mask comes from the cache);
  masked-free  top_p 0.9 with a plain string: the state inside the string repeats, and its mask
           comes from the cache.

Decode time is from the first streamed token to the last, per token. Prints one JSON line per
run and a summary with each mode's median decode ms/token, its slowdown against plain, and the
masks built and their mean cost from /metrics.

  structured_bench.py [--model PATH] [--bin DIR] [--tokens N] [--rounds R]   (default: tiny-moe)
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import test_daemon as td  # noqa: E402

PROMPT = "Write a long answer about the weather in Paris in the spring."
SCHEMA = {"type": "object", "properties": {"text": {"type": "string", "minLength": 2000}},
          "required": ["text"]}
MODES = {
    "plain": {"temperature": 0.8, "ignore_eos": True},
    "plain-top-p": {"temperature": 0.8, "top_p": 0.9, "ignore_eos": True},
    "schema": {"temperature": 0.8, "response_format": {
        "type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}}},
    "masked": {"temperature": 0.8, "top_p": 0.9, "response_format": {
        "type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}}},
    "masked-free": {"temperature": 0.8, "top_p": 0.9, "response_format": {
        "type": "json_schema", "json_schema": {"name": "t", "schema": {
            "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}},
}


def metric(m, name):
    st, _, raw = m.request("GET", "/metrics")
    for line in raw.decode().split("\n"):
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0


def run(m, mode, tokens, seed):
    body = dict(MODES[mode], messages=[{"role": "user", "content": PROMPT}], max_tokens=tokens,
                seed=seed, stream=True, stream_options={"include_usage": True})
    masks0, mask_s0 = metric(m, "moed_grammar_masks_total"), metric(m, "moed_grammar_mask_seconds_total")
    c = m.conn(600)
    c.request("POST", "/v1/chat/completions", body=json.dumps(body),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit("structured_bench: HTTP %d: %s" % (r.status, r.read()[:300]))
    stamps, text, generated = [], [], 0
    for ev in td.sse_events(r):
        if ev == "DONE":
            break
        if ev.get("usage"):
            generated = ev["usage"]["completion_tokens"]
        if not ev["choices"]:
            continue
        d = ev["choices"][0]["delta"].get("content")
        if d:
            stamps.append(time.monotonic())
            text.append(d)
    c.close()
    masks = metric(m, "moed_grammar_masks_total") - masks0
    mask_s = metric(m, "moed_grammar_mask_seconds_total") - mask_s0
    n = len(stamps)
    # from the first text to the last: the tokens after the first one's chunk (a chunk may
    # carry several tokens' text, or wait for a character's last byte)
    return {"mode": mode, "chunks": n, "tokens": generated, "chars": len("".join(text)),
            "decode_ms_per_token": 1e3 * (stamps[-1] - stamps[0]) / max(generated - 1, 1),
            "masks": masks, "mask_ms_mean": 1e3 * mask_s / masks if masks else 0.0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=td.TINY)
    ap.add_argument("--bin", default=td.BIN)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    td.BIN = a.bin
    m = td.Moed(max_seqs=1, model=a.model, max_ctx=1024)
    rows = {k: [] for k in MODES}
    try:
        m.wait_notify("READY=1", timeout=600)
        run(m, "schema", 8, 0)  # warm: the vocabulary trie is built once
        for rnd in range(a.rounds):
            for mode in MODES:
                row = run(m, mode, a.tokens, rnd)
                row["round"] = rnd
                rows[mode].append(row)
                print(json.dumps(row), flush=True)
    finally:
        m.stop()
    def med(mode):
        return statistics.median(r["decode_ms_per_token"] for r in rows[mode])
    summary = {"model": os.path.basename(a.model.rstrip("/")), "tokens": a.tokens,
               "rounds": a.rounds, "plain_ms_per_token": round(med("plain"), 3),
               "plain_top_p_ms_per_token": round(med("plain-top-p"), 3)}
    for mode in ("schema", "masked", "masked-free"):
        base = med("plain" if mode == "schema" else "plain-top-p")
        m_ = med(mode)
        masks = sum(r["masks"] for r in rows[mode])
        summary[mode] = {"ms_per_token": round(m_, 3), "slowdown": round(m_ / base - 1, 4),
                         "masks_per_token": round(masks / (a.rounds * a.tokens), 3),
                         "mask_ms_mean": round(statistics.mean(r["mask_ms_mean"] for r in rows[mode]), 3)}
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
