"""A long run of mixed requests against moed serving a pack from a host tier,
sampling the daemon's resident memory every second: the figure is the
largest RSS against the tier's budget plus the fixed overhead measured right
after loading (dense weights, KV pool, buffers), and the peaks of the run's
two halves (a leak keeps growing; a settled daemon does not). Mixed: plain and streamed
completions, chat, requests cancelled mid-stream, per-request moe_prune and
moe_top_k, bad requests. One JSON line at the end.

  python3 tests/bench/tier_soak.py PACK --seconds 600 [--budget-percent 25]
"""
import argparse
import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import test_daemon as td  # noqa: E402


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def pack_expert_bytes(path):
    import struct
    with open(path, "rb") as f:
        pre = f.read(64)
        off, n = struct.unpack_from("<QQ", pre, 16)
        f.seek(off)
        h = json.loads(f.read(n))
    return sum(e["size"] for e in h["experts"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pack")
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--budget-percent", type=float, default=25)
    ap.add_argument("--clients", type=int, default=4)
    a = ap.parse_args()
    budget = int(pack_expert_bytes(a.pack) * a.budget_percent / 100)
    td.INI = td.INI + "[offload]\nmode = tiered\nhost_bytes = %d\npolicy = lfru\n" % budget
    moed = td.Moed(model=a.pack, max_seqs=8)
    counts = {"ok": 0, "error": 0, "cancelled": 0, "bad": 0}
    lock = threading.Lock()
    stop = time.time() + a.seconds
    try:
        moed.wait_notify("READY=1", timeout=300)
        st, body = moed.json("POST", "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 8})
        base = rss_bytes(moed.proc.pid)  # after load and one request: the fixed part
        peak = [base]
        words = ["ROMEO:", "JULIET:\nO", "KING HENRY VI:\nWhat", "First Citizen:\n", "To be"]

        def client(seed):
            rnd = random.Random(seed)
            while time.time() < stop:
                kind = rnd.randrange(6)
                p = rnd.choice(words)
                try:
                    if kind == 0:
                        st, b = moed.json("POST", "/v1/completions",
                                          {"prompt": p, "max_tokens": rnd.randrange(1, 64)})
                    elif kind == 1:
                        st, b = moed.json("POST", "/v1/chat/completions", {
                            "messages": [{"role": "user", "content": p}], "max_tokens": 32})
                    elif kind == 2:
                        st, b = moed.json("POST", "/v1/completions", {
                            "prompt": p, "max_tokens": 48, "moe_prune": rnd.choice([0.2, 0.5]),
                            "moe_top_k": rnd.choice([1, 2])})
                    elif kind == 3:  # streamed, hung up after a few events
                        c = moed.conn()
                        c.request("POST", "/v1/completions", body=json.dumps(
                            {"prompt": p, "max_tokens": 200, "stream": True}),
                            headers={"Content-Type": "application/json"})
                        r = c.getresponse()
                        r.read(200)
                        c.close()
                        with lock:
                            counts["cancelled"] += 1
                        continue
                    elif kind == 4:
                        st, b = moed.json("POST", "/v1/completions", {"prompt": p, "max_tokens": -1})
                        with lock:
                            counts["bad" if st == 400 else "error"] += 1
                        continue
                    else:
                        st, b = moed.json("POST", "/v1/completions", {
                            "prompt": p * rnd.randrange(1, 20), "max_tokens": 16, "stream": False})
                    with lock:
                        counts["ok" if st == 200 else "error"] += 1
                except Exception:
                    with lock:
                        counts["error"] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
        for t in threads:
            t.start()
        rss = []
        while time.time() < stop:
            rss.append(rss_bytes(moed.proc.pid))
            peak[0] = max(peak[0], rss[-1])
            time.sleep(1)
        for t in threads:
            t.join(120)
        st, _, data = moed.request("GET", "/metrics")
        tier = {l.split()[0]: float(l.split()[1]) for l in data.decode().splitlines()
                if l.startswith("moed_tier") or l.startswith("moed_nvme")}
        print(json.dumps({"bench": "tier-soak", "pack": a.pack, "seconds": a.seconds,
                          "host_budget_bytes": budget, "rss_after_load_bytes": base,
                          "rss_peak_bytes": peak[0], "rss_growth_bytes": peak[0] - base,
                          # a leak grows to the end; a settled process stops early
                          "rss_peak_first_half_bytes": max(rss[:len(rss) // 2] or [0]),
                          "rss_peak_second_half_bytes": max(rss[len(rss) // 2:] or [0]),
                          "samples": len(rss), "requests": counts, "tier_metrics": tier,
                          "daemon_alive": moed.proc.poll() is None}))
    finally:
        moed.stop()


if __name__ == "__main__":
    main()
