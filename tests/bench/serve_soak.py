"""A long many-client run against a real moed, as one JSON line.

    serve_soak.py [--model models/tiny-moe] [--clients 64] [--seconds 300] [--bin build/bin]

Starts moed on MODEL and runs --clients threads for --seconds, each sending,
one after another, a mix of what clients do: completions and chats, streamed
or not, some hung up on halfway, some malformed (those must get a 4xx). A
failure is any answer other than the one expected (a 5xx, a reset, a stream
without [DONE], a malformed request not refused). moed's RSS is sampled
every 5 s; "rss_growth_mib" compares the mean of the last quarter of the run
with the mean of the second quarter (the first is warm-up).

Exit status 0 when there were no failures and the RSS stayed flat (growth
under --max-growth-mib)."""
import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from test_daemon import UnixHTTPConnection  # noqa: E402

INI = """[daemon]
socket = {sock}
threads = 2
watchdog = no
log_level = warning
[model]
path = {model}
chat_template = chatml
[batching]
max_seqs = 16
max_batch_tokens = 128
max_queue = 128
[limits]
max_tokens = 256
request_timeout = 120
[sampling]
max_tokens = 16
"""

MALFORMED = [
    b'{"prompt": ',
    b'{"prompt": "x", "temperature": 9}',
    b'{"messages": []}',
    b'[1, 2, 3]',
    b'{"prompt": "x", "max_tokens": -4}',
]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.kinds = {}
        self.failures = []

    def add(self, kind, ok, why=""):
        with self.lock:
            k = self.kinds.setdefault(kind, [0, 0])
            k[0] += 1
            if not ok:
                k[1] += 1
                if len(self.failures) < 20:
                    self.failures.append("%s: %s" % (kind, why))


def one(sock, rng, st):
    kind = rng.choice(["completion", "chat", "stream", "chat_stream", "hangup", "malformed"])
    c = UnixHTTPConnection(sock, timeout=120)
    hdrs = {"Content-Type": "application/json"}
    try:
        if kind == "malformed":
            c.request("POST", "/v1/completions", body=rng.choice(MALFORMED), headers=hdrs)
            r = c.getresponse()
            r.read()
            st.add(kind, r.status == 400, "status %d" % r.status)
            return
        chat = kind in ("chat", "chat_stream")
        stream = kind in ("stream", "chat_stream", "hangup")
        n = rng.randint(1, 48)
        body = {"max_tokens": n, "stream": stream, "ignore_eos": rng.random() < 0.5,
                "temperature": rng.choice([0, 0.7])}
        if chat:
            body["messages"] = [{"role": "user", "content": "Tell me about %d" % rng.randint(0, 999)}]
        else:
            body["prompt"] = "Once upon a time %d" % rng.randint(0, 999)
        c.request("POST", "/v1/chat/completions" if chat else "/v1/completions",
                  body=json.dumps(body), headers=hdrs)
        r = c.getresponse()
        if r.status != 200:
            st.add(kind, False, "status %d %s" % (r.status, r.read()[:200]))
            return
        if kind == "hangup":
            r.read(64)  # a little of the stream, then gone
            c.sock.shutdown(socket.SHUT_RDWR)
            st.add(kind, True)
            return
        data = r.read().decode()
        if stream:
            ok = data.rstrip().endswith("data: [DONE]")
            st.add(kind, ok, "no [DONE]: %r" % data[-200:])
        else:
            fr = json.loads(data)["choices"][0]["finish_reason"]
            st.add(kind, fr in ("stop", "length"), "finish_reason %s" % fr)
    except Exception as e:  # noqa: BLE001 - every exception is a finding
        st.add(kind, False, repr(e))
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/tiny-moe")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--bin", default=os.environ.get("BIN", "build/bin"))
    ap.add_argument("--max-growth-mib", type=float, default=16)
    a = ap.parse_args()

    d = tempfile.mkdtemp(prefix="moed-soak-")
    sock = os.path.join(d, "moed.sock")
    ini = os.path.join(d, "moed.ini")
    with open(ini, "w") as f:
        f.write(INI.format(sock=sock, model=os.path.abspath(a.model)))
    log = open(os.path.join(d, "moed.log"), "w")
    proc = subprocess.Popen([os.path.join(a.bin, "moed"), "--config", ini], stdout=log, stderr=log)
    for _ in range(600):
        try:
            c = UnixHTTPConnection(sock, 2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                break
        except OSError:
            time.sleep(0.1)
    st = Stats()
    end = time.time() + a.seconds

    def client(i):
        rng = random.Random(i)
        while time.time() < end:
            one(sock, rng, st)

    ts = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in ts:
        t.start()
    samples = []
    t0 = time.time()
    while any(t.is_alive() for t in ts):
        samples.append((time.time() - t0, rss_kib(proc.pid)))
        time.sleep(5)
    for t in ts:
        t.join()
    alive = proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(60)
    q = max(1, len(samples) // 4)
    second = [r for _, r in samples[q:2 * q]] or [samples[0][1]]
    last = [r for _, r in samples[-q:]]
    growth = (sum(last) / len(last) - sum(second) / len(second)) / 1024
    total = sum(k[0] for k in st.kinds.values())
    failed = sum(k[1] for k in st.kinds.values())
    out = {"bench": "serve-soak", "clients": a.clients, "seconds": a.seconds,
           "requests": total, "failures": failed, "by_kind": st.kinds,
           "rss_mib_first": samples[0][1] / 1024, "rss_mib_max": max(r for _, r in samples) / 1024,
           "rss_mib_last": samples[-1][1] / 1024, "rss_growth_mib": round(growth, 2),
           "daemon_alive_at_end": alive, "exit_status": rc, "failure_examples": st.failures}
    print(json.dumps(out))
    sys.exit(0 if failed == 0 and alive and rc == 0 and growth < a.max_growth_mib else 1)


if __name__ == "__main__":
    main()
