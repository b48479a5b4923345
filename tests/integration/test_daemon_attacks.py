"""Attacks on a real moed, tried as a hostile local user or a careless client
would: slow-drip headers on 300 connections (from a uid the allow lists take
and from one they refuse), 2000 idle connects, a client that never reads its
stream, malformed heads, and a shutdown past drain_timeout with streams and
plain requests in flight. A well-behaved client must keep being served.

The attacker runs as uid 65534 (nobody) in a child process: the test needs
root to switch to it, and skips otherwise. Figures are printed as FIGURE lines
for the closing notes."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_daemon import BIN, TINY, UnixHTTPConnection, terminate  # noqa: E402

NOBODY = 65534

INI = """[daemon]
socket = {sock}
socket_mode = 0666
threads = 2
drain_timeout = {drain}
watchdog = no
log_level = info
allow_uids = {allow}
max_connections_per_peer = 32
header_timeout = {header_timeout}
write_timeout = {write_timeout}
{extra}[model]
path = {model}
name = tiny-moe
chat_template = chatml
[batching]
max_seqs = 8
max_batch_tokens = 64
max_queue = 64
[limits]
max_body_bytes = 64K
max_tokens = 480
request_timeout = 120
[sampling]
temperature = 0
max_tokens = 8
"""

# The attacker: a child switched to uid nobody. Modes:
#   drip N SECONDS: keep N connections open, each sending one header byte a
#     second; a connection the server closes is opened again at once.
#   idle N SECONDS: open N connections as fast as possible, send nothing.
# Prints one JSON line of counts when done.
ATTACKER = r"""
import json, os, resource, socket, sys, time, errno
path, mode, n, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 256), hard))
HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
st = {"connects": 0, "refused_at_once": 0, "closed_by_server": 0, "max_open": 0, "errors": 0}
def opener():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(path)
    except OSError:
        st["errors"] += 1
        s.close()
        return None
    s.setblocking(False)
    st["connects"] += 1
    return [s, 0]
end = time.time() + secs
conns = []
if mode == "idle":
    while len(conns) < n and time.time() < end:
        c = opener()
        if c: conns.append(c)
    st["max_open"] = len(conns)
    print(json.dumps(st), flush=True)
    time.sleep(max(0, end - time.time()))
    sys.exit(0)
while time.time() < end:
    while len(conns) < n:
        c = opener()
        if not c: break
        conns.append(c)
    alive = []
    for c in conns:
        s, k = c
        try:
            s.recv(4096)  # an answer (403 / 503 / 408) or EOF: the server let go
            st["closed_by_server"] += 1
            if k == 0: st["refused_at_once"] += 1
            s.close(); continue
        except BlockingIOError:
            pass
        except OSError:
            st["closed_by_server"] += 1; s.close(); continue
        try:
            s.send(HEAD[k % len(HEAD):k % len(HEAD) + 1]); c[1] = k + 1
        except BlockingIOError:
            pass
        except OSError:
            st["closed_by_server"] += 1; s.close(); continue
        alive.append(c)
    conns = alive
    st["max_open"] = max(st["max_open"], len(conns))
    time.sleep(1.0)
print(json.dumps(st), flush=True)
"""


def figure(name, value):
    print("FIGURE %s: %s" % (name, value), flush=True)


def as_nobody():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


class Daemon:
    def __init__(self, allow="", drain=30, header_timeout=5, write_timeout=30, extra="",
                 env=None, pass_fds=(), cmd_prefix=(), sock=None):
        self.dir = tempfile.mkdtemp(prefix="moed-attack-")
        os.chmod(self.dir, 0o755)  # the attacker (nobody) reaches the socket
        self.sock = sock or os.path.join(self.dir, "moed.sock")
        self.ini = os.path.join(self.dir, "moed.ini")
        self.params = dict(sock=self.sock, model=TINY, allow=allow, drain=drain,
                           header_timeout=header_timeout, write_timeout=write_timeout,
                           extra=extra.format(sock=self.sock))
        self.write_ini()
        self.log = open(os.path.join(self.dir, "moed.log"), "w+")
        self.proc = subprocess.Popen(list(cmd_prefix) + [os.path.join(BIN, "moed"), "--config",
                                                         self.ini],
                                     stdout=self.log, stderr=self.log,
                                     env=dict(os.environ, **(env or {})), pass_fds=pass_fds)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if self.request("GET", "/health", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError("moed exited: " + self.logtext())
            time.sleep(0.1)
        raise AssertionError("moed did not come up: " + self.logtext())

    def write_ini(self):
        with open(self.ini, "w") as f:
            f.write(INI.format(**self.params))

    def logtext(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def request(self, method, path, body=None, timeout=10):
        c = UnixHTTPConnection(self.sock, timeout)
        try:
            c.request(method, path, body=json.dumps(body) if body is not None else None,
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def stats(self):
        return json.loads(self.request("GET", "/admin/stats")[1])

    def stop(self):
        terminate(self.proc, 30)
        self.log.close()


def attacker(sock, mode, n, secs):
    return subprocess.Popen([sys.executable, "-c", ATTACKER, sock, mode, str(n), str(secs)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_nobody)


def good_client(d, seconds, out, timeout=5.0):
    """Sequential completions, each with `timeout`; counts what was served."""
    end = time.time() + seconds
    while time.time() < end:
        t = time.time()
        try:
            st, body = d.request("POST", "/v1/completions",
                                 {"prompt": "The capital of France is", "max_tokens": 4},
                                 timeout=timeout)
            ok = st == 200 and json.loads(body)["choices"][0]["finish_reason"] == "length"
        except (OSError, ValueError):
            ok = False
        out.append((ok, time.time() - t))
        time.sleep(0.05)


@unittest.skipUnless(os.geteuid() == 0, "needs root to run the attacker as another uid")
class SlowDrip(unittest.TestCase):
    def drip(self, allow, label):
        d = Daemon(allow=allow, header_timeout=5)
        try:
            a = attacker(d.sock, "drip", 300, 20)
            time.sleep(2)  # the attacker's connections are open
            held = d.stats()["server"]["connections_waiting"]
            served = []
            good_client(d, 14, served)
            out, err = a.communicate(timeout=60)
            st = json.loads(out.strip().splitlines()[-1])
            ok = sum(1 for s, _ in served if s)
            frac = ok / len(served)
            figure("slow-drip 300 connections, %s: well-behaved served" % label,
                   "%d/%d (%.1f%%), worst latency %.2f s; attacker %s; gate held %d of its "
                   "connections" % (ok, len(served), 100 * frac, max(t for _, t in served), st,
                                    held))
            self.assertGreaterEqual(frac, 0.95)
            self.assertLessEqual(held, 32)  # max_connections_per_peer
            if allow:
                self.assertEqual(held, 0)  # a refused uid holds nothing
                probe = subprocess.run(
                    [sys.executable, "-c", "import socket,sys; s=socket.socket(socket.AF_UNIX);"
                     "s.connect(sys.argv[1]);"
                     "print(b''.join(iter(lambda: s.recv(4096), b'')).decode())", d.sock],
                    capture_output=True, text=True, timeout=10, preexec_fn=as_nobody)
                # refused at accept, before it sends a byte
                self.assertIn("403 Forbidden", probe.stdout, probe.stderr)
                self.assertIn("uid 65534", probe.stdout)
            self.assertIn("refus", d.logtext())
            # the refusal lines are rate-limited: the journal's volume is ours
            lines = [l for l in d.logtext().splitlines() if "refused" in l or "408 to" in l]
            self.assertLess(len(lines), 60, "refusals not rate-limited: %d lines" % len(lines))
        finally:
            d.stop()

    def test_drip_allowed_uid(self):
        self.drip("", "dripping uid allowed")

    def test_drip_refused_uid(self):
        self.drip("0", "dripping uid not in allow_uids")


@unittest.skipUnless(os.geteuid() == 0, "needs root to run the attacker as another uid")
class IdleFlood(unittest.TestCase):
    def test_2000_idle_connects(self):
        d = Daemon(header_timeout=10)
        try:
            a = attacker(d.sock, "idle", 2000, 12)
            line = a.stdout.readline()  # all 2000 connects made
            st = json.loads(line)
            lat = []
            for _ in range(10):
                t = time.time()
                s, body = d.request("POST", "/v1/completions",
                                    {"prompt": "Hello", "max_tokens": 2}, timeout=5)
                lat.append(time.time() - t)
                self.assertEqual(s, 200, body)
            a.wait(30)
            figure("2000 idle connects: well-behaved latency",
                   "max %.3f s, mean %.3f s over %d requests; attacker %s"
                   % (max(lat), sum(lat) / len(lat), len(lat), st))
            self.assertEqual(st["connects"], 2000)
            self.assertLess(max(lat), 1.0)
        finally:
            d.stop()

    def test_same_uid_flood_does_not_starve(self):
        """Idle connects from the client's own uid: the silent ones are evicted first."""
        d = Daemon(header_timeout=10)
        try:
            conns = []
            for _ in range(300):
                s = socket.socket(socket.AF_UNIX)
                s.connect(d.sock)
                conns.append(s)
            t = time.time()
            s, body = d.request("POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 2},
                                timeout=5)
            lat = time.time() - t
            self.assertEqual(s, 200, body)
            figure("300 idle connects from the client's own uid: its request", "%.3f s" % lat)
            self.assertLess(lat, 1.0)
            for c in conns:
                c.close()
        finally:
            d.stop()


class Heads(unittest.TestCase):
    """RFC 9112 answers through the real daemon, and a dripped request is still served."""

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(header_timeout=3)

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def raw(self, data, wait=5):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(wait)
        s.connect(self.d.sock)
        s.sendall(data)
        out = b""
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                out += b
        except socket.timeout:
            pass
        s.close()
        return out

    def status(self, data, wait=5):
        out = self.raw(data, wait)
        m = re.match(rb"HTTP/1\.1 (\d+)", out)
        return int(m.group(1)) if m else None, out

    def test_garbage_is_400(self):
        for junk in (b"GARBAGE\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00", b"GET /health\r\n\r\n"):
            st, out = self.status(junk)
            self.assertEqual(st, 400, out)
            self.assertIn(b'"code":"bad_request"', out)

    def test_duplicate_content_length_is_400(self):
        st, out = self.status(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                              b"Content-Length: 20\r\n\r\n{}")
        self.assertEqual(st, 400, out)
        self.assertIn(b"more than once", out)

    def test_unknown_transfer_coding_is_501(self):
        t = time.time()
        st, out = self.status(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                              b"Transfer-Encoding: gzip\r\n\r\nabc")
        self.assertEqual(st, 501, out)
        self.assertLess(time.time() - t, 1.0)

    def test_incomplete_head_gets_408(self):
        t = time.time()
        st, out = self.status(b"GET /health HTTP/1.1\r\nHost: x\r\n", wait=10)
        self.assertEqual(st, 408, out)
        self.assertGreater(time.time() - t, 2.5)

    def test_dripped_request_within_the_deadline_is_served(self):
        req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(self.d.sock)
        for i in range(0, len(req), 4):
            s.send(req[i:i + 4])
            time.sleep(0.05)
        self.assertTrue(s.recv(4096).startswith(b"HTTP/1.1 200"))
        s.close()

    def test_keep_alive_still_checked(self):
        """A second request on a kept-alive connection: framing checked by the server."""
        st, out = self.status(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                              b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                              b"Content-Length: 2\r\n\r\n{}", wait=3)
        self.assertEqual(st, 200, out)
        self.assertIn(b"HTTP/1.1 400", out)


class NeverReads(unittest.TestCase):
    def test_stream_nobody_reads_is_cut(self):
        d = Daemon(write_timeout=2)
        try:
            socks = []
            body = json.dumps({"messages": [{"role": "user", "content": "Tell me a story"}],
                               "max_tokens": 480, "ignore_eos": True, "stream": True,
                               "stream_options": {"include_usage": True}}).encode()
            for _ in range(8):
                s = socket.socket(socket.AF_UNIX)
                s.connect(d.sock)
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                          b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                socks.append(s)  # and never read
            t0 = time.time()
            while time.time() - t0 < 30:
                srv = d.stats()["server"]
                if srv["streams"] == 0 and srv["connections"] <= 1:
                    break
                time.sleep(0.25)
            took = time.time() - t0
            srv = d.stats()
            figure("8 streams nobody reads (write_timeout 2 s)",
                   "all cut after %.1f s; engine running %d" % (took, srv["engine"]["running"]))
            self.assertEqual(srv["server"]["streams"], 0)
            self.assertEqual(srv["engine"]["running"], 0)
            self.assertIn("within write_timeout", d.logtext())
            for s in socks:
                s.close()
        finally:
            d.stop()


class ShutdownPastDrain(unittest.TestCase):
    def test_every_request_answered(self):
        d = Daemon(drain=0.5)
        streams, plains = [], []

        def stream(i):
            c = UnixHTTPConnection(d.sock, 60)
            try:
                c.request("POST", "/v1/completions", headers={"Content-Type": "application/json"},
                          body=json.dumps({"prompt": "Once upon a time %d" % i, "max_tokens": 480,
                                           "ignore_eos": True, "stream": True}))
                r = c.getresponse()
                streams.append((r.status, r.read().decode()))
            except Exception as e:  # noqa: BLE001 - what went wrong is the finding
                streams.append((None, repr(e)))

        def plain(i):
            c = UnixHTTPConnection(d.sock, 60)
            try:
                c.request("POST", "/v1/completions", headers={"Content-Type": "application/json"},
                          body=json.dumps({"prompt": "Long ago %d" % i, "max_tokens": 480,
                                           "ignore_eos": True}))
                r = c.getresponse()
                plains.append((r.status, r.read().decode()))
            except Exception as e:  # noqa: BLE001
                plains.append((None, repr(e)))

        ts = [threading.Thread(target=stream, args=(i,)) for i in range(16)]
        ts += [threading.Thread(target=plain, args=(i,)) for i in range(20)]
        for t in ts:
            t.start()
        time.sleep(1.5)  # 8 run, the rest wait in the queue
        d.proc.send_signal(signal.SIGTERM)
        for t in ts:
            t.join(60)
        rc = d.proc.wait(30)
        d.stop()
        good_streams = 0
        for st, text in streams:
            events = [l[6:] for l in text.split("\n") if l.startswith("data: ")]
            if st == 200 and events and events[-1] == "[DONE]":
                last = json.loads(events[-2])
                if last["choices"][0]["finish_reason"] in ("cancelled", "length"):
                    good_streams += 1
        answered = sum(1 for st, body in plains
                       if st == 200 and json.loads(body)["choices"][0]["finish_reason"])
        figure("shutdown at drain_timeout 0.5 s",
               "%d/16 streams closed with finish_reason and [DONE], %d/20 plain requests "
               "answered, exit %d" % (good_streams, answered, rc))
        self.assertEqual(good_streams, 16, streams)
        self.assertEqual(answered, 20, plains)
        self.assertEqual(rc, 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
