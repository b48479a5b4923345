"""Two moed replicas behind HAProxy (Debian's), as etc/haproxy-moed.cfg sets it
up: real build/bin/moed processes on models/tiny-moe, each with its own INI and
socket, and a real haproxy running the shipped config with only the socket
paths and the bind line replaced.

- balance: 40 requests from 8 concurrent clients; both replicas serve a fair
  share (HAProxy's X-Moed-Replica header, checked against each replica's own
  request counter);
- drain: under continuous load (streaming and not), one replica gets SIGTERM:
  it stops accepting, finishes what it has, exits 0, and no request is lost:
  every one gets a 200 with a whole completion;
- the replicas' /metrics parse as Prometheus text and carry the vLLM names
  that llm-d's endpoint picker reads.

Skips when haproxy is not installed (scripts/install-deps.sh installs it)."""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_daemon as td  # noqa: E402  (the Moed process helper)

ROOT = td.ROOT
CFG = os.path.join(ROOT, "etc", "haproxy-moed.cfg")
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy")
                                      else None)
PROMPTS = ["The quick brown fox", "Once upon a time", "To be or not to be", "It was a dark"]


def proxy_config(front, sock_a, sock_b):
    """The shipped config, pointed at the test's sockets. Under test haproxy
    runs as the invoking user (no user/group switch) and logs nowhere."""
    with open(CFG) as f:
        text = f.read()
    text = text.replace("/run/moed-a/moed.sock", sock_a).replace("/run/moed-b/moed.sock", sock_b)
    text, n = re.subn(r"(?m)^    bind 127\.0\.0\.1:8080$", "    bind unix@%s mode 600" % front,
                      text)
    assert n == 1, "the bind line of etc/haproxy-moed.cfg changed"
    text, n = re.subn(r"(?m)^    (user|group) haproxy\n", "", text)
    assert n == 2, "the user/group lines of etc/haproxy-moed.cfg changed"
    # logs nowhere; a stats socket for the retry and redispatch counts
    text = text.replace("    log /dev/log local0\n",
                        "    stats socket %s mode 600\n" % os.path.join(os.path.dirname(front),
                                                                      "stats.sock"))
    return text


class Proxy:
    def __init__(self, tmp, sock_a, sock_b):
        self.sock = os.path.join(tmp, "haproxy.sock")
        self.cfg = os.path.join(tmp, "haproxy.cfg")
        with open(self.cfg, "w") as f:
            f.write(proxy_config(self.sock, sock_a, sock_b))
        check = subprocess.run([HAPROXY, "-c", "-f", self.cfg], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = open(os.path.join(tmp, "haproxy.log"), "w+")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.cfg], stdout=self.log,
                                     stderr=self.log)
        deadline = time.time() + 20
        while not os.path.exists(self.sock):
            if self.proc.poll() is not None or time.time() > deadline:
                raise AssertionError("haproxy did not start: " + self.logtext())
            time.sleep(0.05)

    def logtext(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def server_stats(self, backend, server):
        """HAProxy's counters for one server (show stat: wretr = retries,
        wredis = redispatches, stot = sessions)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(os.path.join(os.path.dirname(self.sock), "stats.sock"))
        s.sendall(b"show stat\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        lines = data.decode().splitlines()
        head = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(head, line.split(",")))
            if row.get("pxname") == backend and row.get("svname") == server:
                return row
        raise AssertionError("no stats for %s/%s" % (backend, server))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def completion(sock, i, stream, max_tokens=32):
    """One request through the proxy. Returns (ok, replica, why): ok only for a
    200 carrying a whole completion (streams: a closing chunk and [DONE])."""
    body = {"model": "tiny-moe", "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0, "stream": stream}
    c = td.UnixHTTPConnection(sock, timeout=120)
    try:
        c.request("POST", "/v1/completions", body=json.dumps(body),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        replica = r.getheader("X-Moed-Replica")
        if r.status != 200:
            return False, replica, "status %d: %r" % (r.status, r.read()[:200])
        if not stream:
            res = json.loads(r.read())
            ch = res["choices"][0]
            if not isinstance(ch.get("text"), str) or ch.get("finish_reason") != "length" or \
                    res["usage"]["completion_tokens"] != max_tokens:
                return False, replica, "incomplete: %r" % res
            return True, replica, ""
        events = list(td.sse_events(r))
        if not events or events[-1] != "DONE":
            return False, replica, "stream without [DONE]: %r" % events[-2:]
        finish = [e["choices"][0].get("finish_reason") for e in events[:-1] if e["choices"]]
        if finish[-1] != "length":
            return False, replica, "stream closed with %r" % finish[-1:]
        return True, replica, ""
    except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError) as e:
        return False, None, "%s: %s" % (type(e).__name__, e)
    finally:
        c.close()


def served_count(moed):
    """The replica's own count of completions answered 200."""
    st, _, data = moed.request("GET", "/metrics")
    assert st == 200
    m = re.search(r'^moed_http_requests_total\{endpoint="/v1/completions",status="200"\} (\S+)$',
                  data.decode(), re.M)
    return int(float(m.group(1)))


def parse_prometheus(text):
    """A strict reader of the text format 0.0.4 (stdlib only): every sample
    belongs to a family declared by a TYPE line before it, names and labels
    are well formed, values are numbers. Returns {family: (type, [(name,
    labels, value)])}."""
    name_re = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
    label_re = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*"'
    sample_re = re.compile(r"^(%s)(?:\{((?:%s)(?:,%s)*)?\})? (\S+)$" % (name_re, label_re, label_re))
    fams, current = {}, None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        m = re.match(r"^# TYPE (%s) (counter|gauge|histogram|summary|untyped)$" % name_re, line)
        if m:
            assert m.group(1) not in fams, "family declared twice: " + line
            current = m.group(1)
            fams[current] = (m.group(2), [])
            continue
        m = sample_re.match(line)
        assert m, "not a sample line: %r" % line
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        typ = fams[current][0] if current else None
        suffixes = ("_bucket", "_sum", "_count") if typ == "histogram" else ("",)
        assert current and any(name == current + s for s in suffixes), \
            "%s outside its family (%s)" % (name, current)
        fams[current][1].append((name, dict(re.findall(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"',
                                                       labels)), value))
    return fams


@unittest.skipIf(HAPROXY is None, "haproxy is not installed (apt-get install haproxy)")
class Replicas(unittest.TestCase):
    def setUp(self):
        self.a = td.Moed(max_seqs=4, drain=30)
        self.b = td.Moed(max_seqs=4, drain=30)
        self.tmp = tempfile.mkdtemp(prefix="moed-replicas-")
        self.proxy = None
        try:
            self.a.wait_notify("READY=1")
            self.b.wait_notify("READY=1")
            for moed in (self.a, self.b):  # warm: the model's pages faulted in
                st, res = moed.json("POST", "/v1/completions",
                                    {"prompt": PROMPTS[0], "max_tokens": 8})
                assert st == 200, res
            self.proxy = Proxy(self.tmp, self.a.sock, self.b.sock)
        except BaseException:
            self.tearDown()
            raise

    def tearDown(self):
        if self.proxy:
            self.proxy.stop()
        self.a.stop()
        self.b.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run_clients(self, n_clients, work):
        threads = [threading.Thread(target=work, args=(k,)) for k in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)

    def test_both_replicas_serve_a_fair_share(self):
        n_clients, per_client = 8, 5
        before = {"a": served_count(self.a), "b": served_count(self.b)}
        results, lock = [], threading.Lock()

        def client(k):
            for j in range(per_client):
                r = completion(self.proxy.sock, k * per_client + j, stream=(j % 2 == 1),
                               max_tokens=96)
                with lock:
                    results.append(r)

        self.run_clients(n_clients, client)
        sent = n_clients * per_client
        failed = [why for ok, _, why in results if not ok]
        by = {"a": 0, "b": 0}
        for ok, replica, _ in results:
            if ok:
                by[replica] += 1
        own = {"a": served_count(self.a) - before["a"], "b": served_count(self.b) - before["b"]}
        print("\nbalance: %d requests from %d clients: a %d / b %d (the replicas' own counts "
              "%d / %d), failed %d" % (sent, n_clients, by["a"], by["b"], own["a"], own["b"],
                                       len(failed)), file=sys.stderr)
        self.assertEqual(len(results), sent)
        self.assertEqual(failed, [])
        self.assertEqual(by, own)  # the header tells the truth
        # leastconn sends more to the replica that finishes sooner, and on a
        # shared machine one often does (seen here: 20/20 to 11/29), so
        # "fair" is a floor that no starved replica meets, not an even split
        self.assertGreaterEqual(min(by.values()), 0.2 * sent, by)

    def test_a_draining_replica_loses_no_request(self):
        results, lock = [], threading.Lock()
        stop = threading.Event()
        marks = {}

        def client(k):
            i = 0
            while not stop.is_set():
                t0 = time.time()
                ok, replica, why = completion(self.proxy.sock, k + 8 * i, stream=(k % 2 == 1),
                                              max_tokens=256)
                with lock:
                    results.append((ok, replica, why, t0, time.time()))
                i += 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        try:
            def done():
                with lock:
                    return len(results)

            deadline = time.time() + 120
            while done() < 24 and time.time() < deadline:
                time.sleep(0.05)
            marks["term"] = time.time()
            marks["before"] = done()
            self.a.proc.send_signal(signal.SIGTERM)
            rc = self.a.proc.wait(60)
            marks["exit"] = time.time()
            # keep the load on the remaining replica for a while
            n_exit = done()
            while done() < n_exit + 24 and time.time() < deadline + 60:
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(180)

        st = self.proxy.server_stats("moed_replicas", "a")
        lost = [r for r in results if not r[0]]
        in_flight = [r for r in results if r[1] == "a" and r[3] < marks["term"] < r[4]]
        during = [r for r in results if marks["term"] < r[3] < marks["exit"]]
        after_exit_b = [r for r in results if r[1] == "b" and r[3] > marks["exit"]]
        by = {"a": sum(1 for r in results if r[0] and r[1] == "a"),
              "b": sum(1 for r in results if r[0] and r[1] == "b")}
        print("\ndrain: %d requests sent (8 clients, half streaming), SIGTERM to replica a after "
              "%d; a exited %d after %.2f s, finishing the %d requests it had in flight; %d "
              "requests sent while a drained, served by b %d; haproxy retries on a %s, "
              "redispatches %s; served a %d / b %d; lost %d"
              % (len(results), marks["before"], rc, marks["exit"] - marks["term"],
                 len(in_flight), len(during), sum(1 for r in during if r[1] == "b"),
                 st.get("wretr"), st.get("wredis"), by["a"], by["b"], len(lost)),
              file=sys.stderr)
        self.assertEqual([r[2] for r in lost], [])
        self.assertEqual(rc, 0, self.a.logtext()[-2000:])
        self.assertGreater(len(after_exit_b), 0)
        self.assertGreater(len(in_flight), 0)  # the drain had something to finish
        self.assertTrue(all(r[1] == "b" for r in during if r[1]))
        self.assertGreater(by["a"], 0)
        # nothing new went to a once it had exited
        self.assertEqual([r for r in results if r[1] == "a" and r[3] > marks["exit"]], [])

    def test_metrics_parse_and_carry_the_vllm_names(self):
        ok, _, why = completion(self.proxy.sock, 0, stream=False)
        self.assertTrue(ok, why)
        for moed in (self.a, self.b):
            st, hdrs, data = moed.request("GET", "/metrics")
            self.assertEqual(st, 200)
            fams = parse_prometheus(data.decode())
            for name, typ in (("vllm:num_requests_waiting", "gauge"),
                              ("vllm:num_requests_running", "gauge"),
                              ("vllm:kv_cache_usage_perc", "gauge"),
                              ("vllm:cache_config_info", "gauge"),
                              ("vllm:prompt_tokens_total", "counter"),
                              ("vllm:generation_tokens_total", "counter"),
                              ("vllm:time_to_first_token_seconds", "histogram"),
                              ("vllm:e2e_request_latency_seconds", "histogram"),
                              ("vllm:request_success_total", "counter"),
                              ("moed_kv_admission_waits_total", "counter"),
                              ("process_resident_memory_bytes", "gauge")):
                self.assertEqual(fams[name][0], typ, name)
                if name.startswith("vllm:"):
                    for _, labels, _ in fams[name][1]:
                        self.assertEqual(labels.get("model_name"), "tiny-moe", name)
            usage = fams["vllm:kv_cache_usage_perc"][1][0][2]
            self.assertTrue(0 <= usage <= 1)
            info = fams["vllm:cache_config_info"][1][0][1]
            self.assertGreater(int(info["block_size"]), 0)
            self.assertGreater(int(info["num_gpu_blocks"]), 0)


if __name__ == "__main__":
    unittest.main()
