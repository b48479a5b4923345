#!/usr/bin/env python3
"""make bench, issue 18: automatic prefix caching on a multi-turn chat load. 8 users, 6 turns
each, all sharing a system prompt (--system-repeats: 24 is about 1k tokens; the bundled tiny-moe
holds 512 tokens of context, so make bench uses 1, about 75, and the histories grow to about
450); each turn's 8 requests are sent at once (streamed). Runs against a moed with [kv]
prefix_cache off, then on, then off and on again, on the same model: the prefill tokens the
engine computed (prompt tokens minus those found in the cache) and the mean time to first
token, one JSON line per run and a summary.

  prefix_bench.py [--model PATH] [--bin DIR] [--system-repeats N] [--max-position N]

--max-position serves a copy of the model (its files linked, config.json rewritten) with that
max_position_embeddings: tiny-moe's weights with room for the 1k-token system prompt
(--system-repeats 24 --max-position 4096). Rotary attention has no table to outgrow, so the
math is the model's own at every position.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import test_daemon as td  # noqa: E402

SYSTEM_LINE = ("You are a careful reader of Shakespeare's Coriolanus; you answer in the play's "
               "own words where you can, and you say so when the text is silent. ")
SYSTEM = SYSTEM_LINE * 6
USERS, TURNS = 8, 6


def ttft(m, body):
    c = m.conn(300)
    t0 = time.monotonic()
    c.request("POST", "/v1/chat/completions", body=json.dumps(dict(body, stream=True)),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit("prefix_bench: HTTP %d: %s" % (r.status, r.read()[:300]))
    first, text = None, []
    for ev in td.sse_events(r):
        if ev == "DONE":
            break
        if ev["choices"] and ev["choices"][0]["delta"].get("content"):
            first = first or time.monotonic() - t0
            text.append(ev["choices"][0]["delta"]["content"])
    c.close()
    return first or time.monotonic() - t0, "".join(text)


def run(on, model):
    td.INI = td.ini_edit(td.INI_BASE, {("batching", "max_batch_tokens"): "512"},
                         "[kv]\nkey_bits = 16\nvalue_bits = 16\nprefix_cache = %s\n"
                         % ("yes" if on else "no"))
    m = td.Moed(model=model, max_ctx=4096)
    m.wait_notify("READY=1")
    try:
        hist = [[{"role": "system", "content": SYSTEM}] for _ in range(USERS)]
        times = []
        for turn in range(TURNS):
            out = [None] * USERS

            def user(u):
                hist[u].append({"role": "user", "content": "User %d, turn %d: who speaks?"
                                % (u, turn)})
                try:
                    out[u] = ttft(m, {"messages": hist[u], "max_tokens": 8, "temperature": 0})
                except BaseException as e:  # a thread's SystemExit would vanish
                    out[u] = e
            ts = [threading.Thread(target=user, args=(u,)) for u in range(USERS)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            for u in range(USERS):
                if isinstance(out[u], BaseException):
                    raise SystemExit("prefix_bench: user %d, turn %d: %s" % (u, turn, out[u]))
                times.append(out[u][0])
                hist[u].append({"role": "assistant", "content": out[u][1]})
        st = m.json("GET", "/admin/stats")[1]["engine"]
    finally:
        m.stop()
    return {"bench": "prefix-cache", "prefix_cache": on, "requests": USERS * TURNS,
            "prompt_tokens": st["prompt_tokens"], "cached_tokens": st["prompt_tokens_cached"],
            "prefill_tokens_computed": st["prompt_tokens"] - st["prompt_tokens_cached"],
            "ttft_mean_s": statistics.mean(times), "ttft_median_s": statistics.median(times)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=td.TINY)
    ap.add_argument("--bin")
    ap.add_argument("--system-repeats", type=int, default=1)
    ap.add_argument("--max-position", type=int)
    a = ap.parse_args()
    tmp = None
    if a.max_position:
        tmp = a.model = td.long_context_copy(a.model, a.max_position)
    global SYSTEM
    SYSTEM = SYSTEM_LINE * a.system_repeats
    if a.bin:
        td.BIN = a.bin
    td.INI_BASE = td.INI
    try:
        rows = [run(on, a.model) for on in (False, True, False, True)]
    finally:
        if tmp:
            shutil.rmtree(tmp)
    for r in rows:
        print(json.dumps(r))
    off = [r for r in rows if not r["prefix_cache"]]
    on = [r for r in rows if r["prefix_cache"]]
    print(json.dumps({
        "bench": "prefix-cache-summary",
        "prefill_tokens_off": off[0]["prefill_tokens_computed"],
        "prefill_tokens_on": on[0]["prefill_tokens_computed"],
        "prefill_ratio": off[0]["prefill_tokens_computed"] / on[0]["prefill_tokens_computed"],
        "ttft_ratio_per_pair": [x["ttft_mean_s"] / y["ttft_mean_s"] for x, y in zip(off, on)]}))


if __name__ == "__main__":
    main()
