"""Serving throughput against a running moed, as one JSON line.

    bench_serve.py --model PATH [--streams 8] [--tokens 64] [--bin build/bin]

Starts moed on PATH (a GGUF file or HF directory with a tokenizer), then:
  single:  one streaming request of --tokens tokens: decode tok/s from the
           first to the last token (prefill excluded);
  batched: --streams concurrent streaming requests: aggregate generated
           tokens/s over the wall time from the first request to the last token;
  decode:  moe-bench decode on the same model in the same run, so the daemon's
           per-token overhead is 1 - single / decode.
Every request sets ignore_eos so each generates exactly --tokens tokens.
This machine's memory bandwidth drifts from minute to minute, so the three
measurements run back to back in each of --rounds rounds, the ratios are
taken within a round, and the medians are reported."""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from test_daemon import UnixHTTPConnection, sse_events  # noqa: E402

INI = """[daemon]
socket = {sock}
threads = 0
watchdog = no
[model]
path = {model}
chat_template = chatml
[batching]
max_seqs = {streams}
max_batch_tokens = 512
max_ctx = 1024
max_queue = 64
[limits]
max_tokens = 1000
request_timeout = 0
"""

PROMPTS = ["Once upon a time", "The quick brown fox", "In the beginning", "It was a dark night",
           "To be or not to be", "A long time ago", "Call me Ishmael", "All happy families"]


def timed_stream(sock, prompt, tokens, out, i):
    c = UnixHTTPConnection(sock, timeout=3600)
    t0 = time.time()
    c.request("POST", "/v1/completions", body=json.dumps({
        "prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
        "stream": True}), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError("status %d: %s" % (r.status, r.read()[:300]))
    stamps = []
    for ev in sse_events(r):
        if ev == "DONE":
            break
        if ev["choices"] and ev["choices"][0].get("text"):
            stamps.append(time.time())
    c.close()
    out[i] = (t0, stamps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "..", "build", "bin"))
    a = ap.parse_args()

    d = tempfile.mkdtemp(prefix="moed-bench-")
    sock = os.path.join(d, "moed.sock")
    ini = os.path.join(d, "moed.ini")
    with open(ini, "w") as f:
        f.write(INI.format(sock=sock, model=os.path.abspath(a.model), streams=a.streams))
    log = open(os.path.join(d, "moed.log"), "w")
    proc = subprocess.Popen([os.path.join(a.bin, "moed"), "--config", ini], stdout=log, stderr=log)
    try:
        deadline = time.time() + 600
        while True:
            try:
                c = UnixHTTPConnection(sock, 5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("moed did not become ready; see " + log.name)
            time.sleep(0.2)

        out = {}
        timed_stream(sock, PROMPTS[0], 8, out, 0)  # warm-up: buffers sized
        rounds = []
        for _ in range(a.rounds):
            out = {}
            timed_stream(sock, PROMPTS[0], a.tokens, out, 0)
            st = out[0][1]
            single = (len(st) - 1) / (st[-1] - st[0])

            dec = json.loads(subprocess.run(
                [os.path.join(a.bin, "moe-bench"), "decode", "--model", a.model, "--tokens",
                 str(a.tokens), "--prompt-tokens", "8"], capture_output=True, text=True,
                check=True).stdout)["decode_tok_s"]

            out = {}
            threads = [threading.Thread(target=timed_stream,
                                        args=(sock, PROMPTS[i % len(PROMPTS)], a.tokens, out, i))
                       for i in range(a.streams)]
            start = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            end = max(s[-1] for _, s in out.values())
            generated = sum(len(s) for _, s in out.values())
            first_all = max(s[0] for _, s in out.values())
            rounds.append({
                "single_stream_tok_s": single, "moe_bench_decode_tok_s": dec,
                "aggregate_tok_s": generated / (end - start),
                "aggregate_decode_phase_tok_s":
                    sum(len(s) - 1 for _, s in out.values()) / (end - first_all)})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        log.close()

    def med(f):
        v = sorted(f(r) for r in rounds)
        return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])

    print(json.dumps({
        "bench": "serve", "model": a.model, "streams": a.streams, "tokens_per_stream": a.tokens,
        "rounds": rounds,
        "single_stream_tok_s": med(lambda r: r["single_stream_tok_s"]),
        "aggregate_tok_s": med(lambda r: r["aggregate_tok_s"]),
        "aggregate_over_single": med(lambda r: r["aggregate_tok_s"] / r["single_stream_tok_s"]),
        "aggregate_decode_phase_over_single":
            med(lambda r: r["aggregate_decode_phase_tok_s"] / r["single_stream_tok_s"]),
        "daemon_overhead": med(lambda r: 1.0 - r["single_stream_tok_s"] / r["moe_bench_decode_tok_s"]),
    }))


if __name__ == "__main__":
    main()
