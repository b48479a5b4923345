"""moed as a real process on a temporary Unix socket, serving the bundled
tiny model: readiness through a test NOTIFY_SOCKET, completions and chat
(streaming or not), concurrency, disconnects, bad requests, reload and
drain, socket activation."""
import fcntl
import http.client
import json
import re
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("BIN", os.path.join(ROOT, "build", "bin"))
TINY = os.path.join(ROOT, "models", "tiny-moe")
REF = json.load(open(os.path.join(TINY, "reference.json")))

INI = """[daemon]
socket = {sock}
socket_mode = 0600
threads = 2
drain_timeout = {drain}
watchdog = no
log_level = info
[model]
path = {model}
name = {name}
chat_template = {chat_template}
[batching]
max_seqs = {max_seqs}
max_batch_tokens = 64
max_ctx = {max_ctx}
max_queue = 64
[limits]
max_body_bytes = 64K
max_tokens = 480
request_timeout = 120
[sampling]
temperature = 0
max_tokens = 32
"""


def ini_edit(text, values, extra=""):
    """An INI of this harness (INI above) with values {(section, key): value} put in place of
    the ones it has, and extra (more sections) appended."""
    out, sec = [], None
    for line in text.splitlines():
        if line.startswith("["):
            sec = line.strip("[]")
        elif "=" in line and (sec, line.split("=")[0].strip()) in values:
            key = line.split("=")[0].strip()
            line = "%s = %s" % (key, values[sec, key])
        out.append(line)
    return "\n".join(out) + "\n" + extra


def long_context_copy(model, positions):
    """The model's files linked into a temporary directory (the caller removes it), its
    config given a longer max_position_embeddings: tiny-moe's weights with room for long
    prompts (tool declarations, a 1k-token system prompt). Rotary attention has no table to
    outgrow, so the math is the model's own at every position."""
    tmp = tempfile.mkdtemp(prefix="moed-long-")
    for f in os.listdir(model):
        if f != "config.json":
            os.symlink(os.path.abspath(os.path.join(model, f)), os.path.join(tmp, f))
    with open(os.path.join(model, "config.json")) as f:
        cfg = json.load(f)
    cfg["max_position_embeddings"] = positions
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg, f)
    return tmp


def at_once(moed, bodies, path="/v1/completions"):
    """POSTs every body at once, each from its own thread: ([(status, body)] in order, the most
    sequences /metrics reported running at one time meanwhile)."""
    results, peak, done = [None] * len(bodies), [0], threading.Event()

    def watch():
        while not done.is_set():
            _, _, data = moed.request("GET", "/metrics")
            for line in data.decode().splitlines():
                if line.startswith(("moed_running_sequences ", "moed_running_sequences{")):
                    peak[0] = max(peak[0], int(float(line.split()[1])))
            time.sleep(0.01)

    def client(i):
        results[i] = moed.json("POST", path, bodies[i])

    w = threading.Thread(target=watch)
    w.start()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    done.set()
    w.join()
    return results, peak[0]


def kv_metrics(moed):
    """The moed_kv_* series of /metrics, by name without labels."""
    _, _, data = moed.request("GET", "/metrics")
    out = {}
    for line in data.decode().splitlines():
        if line.startswith("moed_kv_"):
            k, v = line.split()
            out[k.split("{")[0]] = float(v)
    return out


def pack_tiny(dir, experts="q4"):
    """The bundled model packed into dir with moe-pack; (path, the bytes of
    all its experts, from moe-pack's report)."""
    path = os.path.join(dir, "tiny-%s.moe" % experts)
    out = subprocess.run([os.path.join(BIN, "moe-pack"), "--model", TINY, "--out", path,
                          "--experts", experts], check=True, capture_output=True,
                         text=True).stdout
    return path, json.loads(out)["expert_bytes"]


def terminate(proc, timeout=60):
    """SIGTERM (moed drains), then SIGKILL when it takes longer than timeout."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def socket_activation(socks):
    """What systemd does for a service with sockets: the sockets as fds 3,
    4, ... and LISTEN_PID = the service's own pid. Returns (command prefix,
    pass_fds, close): copies at 10 and up first, then dup2 to 3, 4, ...:
    straight from the originals, a socket already at 3 or 4 could be
    overwritten before it is copied (CI met that layout)."""
    high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 10) for s in socks]
    moves = "; ".join("os.dup2(%d, %d); os.close(%d)" % (fd, 3 + i, fd)
                      for i, fd in enumerate(high))
    prefix = [sys.executable, "-c", "import os, sys\n" + moves + "\n"
              "os.environ['LISTEN_PID'] = str(os.getpid())\n"
              "os.execv(sys.argv[1], sys.argv[1:])"]

    def close():
        for fd in high:
            os.close(fd)
    return prefix, tuple(high), close


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Moed:
    """A moed process with its own config, socket and notify socket."""

    def __init__(self, max_seqs=8, drain=30, listen_sock=None, model=TINY, name="tiny-moe",
                 chat_template="chatml", max_ctx=512):
        self.dir = tempfile.mkdtemp(prefix="moed-test-")
        self.sock = os.path.join(self.dir, "moed.sock")
        self.ini = os.path.join(self.dir, "moed.ini")
        with open(self.ini, "w") as f:
            f.write(INI.format(sock=self.sock, model=model, max_seqs=max_seqs, drain=drain,
                               name=name, chat_template=chat_template, max_ctx=max_ctx))
        self.notify_path = os.path.join(self.dir, "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(0.2)
        self.messages = []
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path)
        self.log = open(os.path.join(self.dir, "moed.log"), "w+")
        cmd = [os.path.join(BIN, "moed"), "--config", self.ini]
        if listen_sock is not None:
            env.update(LISTEN_FDS="1", LISTEN_FDNAMES="moed.socket")
            prefix, fds, close = socket_activation([listen_sock])
            self.proc = subprocess.Popen(prefix + cmd, env=env, stdout=self.log,
                                         stderr=self.log, pass_fds=fds)
            close()
        else:
            self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=self.log)

    def wait_notify(self, what, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(what in m for m in self.messages):
                return True
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except socket.timeout:
                if self.proc.poll() is not None:
                    raise AssertionError("moed exited (%d): %s" % (self.proc.returncode, self.logtext()))
        raise AssertionError("no %s from moed within %ss; got %r" % (what, timeout, self.messages))

    def logtext(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def conn(self, timeout=60):
        return UnixHTTPConnection(self.sock, timeout)

    def request(self, method, path, body=None, headers=None):
        c = self.conn()
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        c.request(method, path, body=body, headers=hdrs)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, dict(r.getheaders()), data

    def raw_request(self, method, path, body):
        """For a body the server may refuse before reading it all: the reply is
        read even when sending the rest fails with a broken pipe."""
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body.encode()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(self.sock)
        head = ("%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                "Content-Length: %d\r\nConnection: close\r\n\r\n" % (method, path, len(data)))
        try:
            s.sendall(head.encode() + data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        except ConnectionResetError:
            pass
        s.close()
        head, _, payload = reply.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        return status, {}, payload

    def json(self, method, path, body=None):
        status, hdrs, data = self.request(method, path, body)
        return status, json.loads(data) if data else None

    def stop(self):
        terminate(self.proc)
        self.notify.close()
        self.log.close()


def sse_events(resp):
    """Yields the JSON of each data: event of a streaming response; 'DONE' last."""
    while True:
        line = resp.fp.readline()
        if not line:
            return
        line = line.rstrip(b"\r\n")
        if line.startswith(b"data: "):
            payload = line[6:]
            if payload == b"[DONE]":
                yield "DONE"
                return
            yield json.loads(payload)


def stream(moed, path, body, on_first=None):
    """Streams a request; returns (text, events). on_first(conn) after the first chunk."""
    c = moed.conn(120)
    c.request("POST", path, body=json.dumps(dict(body, stream=True)),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, (r.status, r.read())
    assert r.getheader("Content-Type").startswith("text/event-stream")
    text, events = [], []
    for ev in sse_events(r):
        events.append(ev)
        if ev == "DONE":
            break
        if not ev["choices"]:  # the usage chunk of stream_options.include_usage
            continue
        ch = ev["choices"][0]
        piece = ch.get("text") if "text" in ch else ch.get("delta", {}).get("content")
        if piece:
            text.append(piece)
            if on_first is not None and len(text) == 1:
                if on_first(c) is False:
                    return "".join(text), events
    c.close()
    return "".join(text), events


class Serving(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.moed = Moed(max_seqs=8)
        cls.moed.wait_notify("READY=1")

    @classmethod
    def tearDownClass(cls):
        cls.moed.stop()
        assert cls.moed.proc.returncode == 0, cls.moed.logtext()

    def test_readiness_and_status_were_notified(self):
        self.assertTrue(any("READY=1" in m for m in self.moed.messages))
        self.assertTrue(any("STATUS=" in m for m in self.moed.messages))

    def test_health_and_models(self):
        self.assertEqual(self.moed.json("GET", "/health"), (200, {"status": "ok"}))
        status, models = self.moed.json("GET", "/v1/models")
        self.assertEqual(status, 200)
        self.assertEqual(models["data"][0]["id"], "tiny-moe")

    def test_greedy_completion_equals_moe_run_and_reference(self):
        for pr in REF["prompts"]:
            n = len(pr["greedy_ids"])
            status, res = self.moed.json("POST", "/v1/completions",
                                         {"prompt": pr["text"], "max_tokens": n, "temperature": 0})
            self.assertEqual(status, 200, res)
            text = res["choices"][0]["text"]
            self.assertEqual(text, pr["greedy_text"])
            self.assertEqual(res["choices"][0]["finish_reason"], "length")
            self.assertEqual(res["usage"]["completion_tokens"], n)
            self.assertEqual(res["usage"]["prompt_tokens"], len(pr["ids"]))
        pr = REF["prompts"][0]
        ran = subprocess.run([os.path.join(BIN, "moe-run"), "--model", TINY, "--prompt", pr["text"],
                              "--max-tokens", "32", "--temperature", "0"], capture_output=True,
                             text=True, check=True).stdout
        self.assertEqual(ran, pr["greedy_text"])

    def test_streaming_completion_gives_the_same_text(self):
        pr = REF["prompts"][1]
        text, events = stream(self.moed, "/v1/completions",
                              {"prompt": pr["text"], "max_tokens": 32, "temperature": 0,
                               "stream_options": {"include_usage": True}})
        self.assertEqual(text, pr["greedy_text"])
        self.assertEqual(events[-1], "DONE")
        usage = events[-2]  # as OpenAI: a last chunk with no choices carries the usage
        self.assertEqual(usage["choices"], [])
        self.assertEqual(usage["usage"]["completion_tokens"], 32)
        self.assertEqual(events[-3]["choices"][0]["finish_reason"], "length")

    def test_chat_non_streaming_and_streaming(self):
        body = {"messages": [{"role": "system", "content": "You speak as Shakespeare."},
                             {"role": "user", "content": "ROMEO:"}],
                "max_tokens": 16, "temperature": 0}
        status, res = self.moed.json("POST", "/v1/chat/completions", body)
        self.assertEqual(status, 200, res)
        self.assertEqual(res["object"], "chat.completion")
        msg = res["choices"][0]["message"]
        self.assertEqual(msg["role"], "assistant")
        self.assertGreater(len(msg["content"]), 0)
        text, events = stream(self.moed, "/v1/chat/completions", body)
        self.assertEqual(text, msg["content"])
        self.assertEqual(events[0]["choices"][0]["delta"].get("role"), "assistant")
        self.assertEqual(events[-1], "DONE")

    def test_32_concurrent_streams_all_complete_correctly(self):
        results = [None] * 32

        def client(i):
            pr = REF["prompts"][i % len(REF["prompts"])]
            try:
                results[i] = stream(self.moed, "/v1/completions",
                                    {"prompt": pr["text"], "max_tokens": 32, "temperature": 0})[0]
            except Exception as e:  # reported below
                results[i] = e
        threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        for i, r in enumerate(results):
            self.assertEqual(r, REF["prompts"][i % len(REF["prompts"])]["greedy_text"], "client %d" % i)

    def engine_stats(self):
        return self.moed.json("GET", "/admin/stats")[1]["engine"]

    def test_killed_client_frees_its_slot(self):
        before = self.engine_stats()["requests_cancelled"]

        def kill(conn):
            conn.sock.shutdown(socket.SHUT_RDWR)
            conn.sock.close()
            return False
        stream(self.moed, "/v1/completions",
               {"prompt": "First Citizen:", "max_tokens": 400, "temperature": 0}, on_first=kill)
        deadline = time.time() + 10
        while time.time() < deadline:
            st = self.engine_stats()
            if st["requests_cancelled"] > before and st["running"] == 0:
                break
            time.sleep(0.02)
        st = self.engine_stats()
        self.assertGreater(st["requests_cancelled"], before)
        self.assertEqual(st["running"], 0)

    def test_bad_requests_get_their_status_while_others_stream(self):
        out = {}
        pr = REF["prompts"][2]
        t = threading.Thread(target=lambda: out.update(text=stream(
            self.moed, "/v1/completions", {"prompt": pr["text"], "max_tokens": 32,
                                           "temperature": 0})[0]))
        t.start()
        cases = [
            ("POST", "/v1/completions", '{"prompt": "x", ', 400, None),
            ("POST", "/v1/completions", {"prompt": "x", "max_tokens": "ten"}, 400, "max_tokens"),
            ("POST", "/v1/completions", {"prompt": "x", "temperature": -1}, 400, "temperature"),
            ("POST", "/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
            # a tool call in the history is refused, not dropped from the prompt
            ("POST", "/v1/chat/completions",
             {"messages": [{"role": "user", "content": "x"},
                           {"role": "assistant", "content": "",
                            "tool_calls": [{"id": "c1", "type": "function",
                                            "function": {"name": "f", "arguments": "{}"}}]}]},
             400, "messages[1].tool_calls"),
            ("POST", "/v1/completions", {"prompt": "x" * 70000}, 413, None),
            ("GET", "/v1/nothing", None, 404, None),
            ("GET", "/v1/completions", None, 405, None),
            ("DELETE", "/health", None, 405, None),
        ]
        for method, path, body, want, field in cases:
            send = self.moed.raw_request if want == 413 else self.moed.request
            status, hdrs, data = send(method, path, body)
            self.assertEqual(status, want, (method, path, data[:200]))
            err = json.loads(data)["error"]
            self.assertTrue(err["message"])
            self.assertIn("type", err)
            if field:
                self.assertIn(field, err["message"] + str(err.get("param")))
        t.join(120)
        self.assertEqual(out.get("text"), pr["greedy_text"])

    def metric_sum(self, name):
        status, _, data = self.moed.request("GET", "/metrics")
        self.assertEqual(status, 200)
        total, layers = 0.0, set()
        for line in data.decode().splitlines():
            m = re.match(r'^%s\{layer="(\d+)"\} (\S+)$' % name, line)
            if m:
                layers.add(int(m.group(1)))
                total += float(m.group(2))
        return total, layers

    def test_moe_prune_and_top_k_per_request(self):
        pruned0, layers = self.metric_sum("moed_expert_activations_pruned_total")
        self.assertEqual(layers, {0, 1, 2, 3})
        act0, _ = self.metric_sum("moed_expert_activations_total")
        body = {"prompt": REF["prompts"][0]["text"], "max_tokens": 8, "temperature": 0,
                "moe_prune": 0.9}
        status, res = self.moed.json("POST", "/v1/completions", body)
        self.assertEqual(status, 200, res)
        self.assertEqual(res["usage"]["completion_tokens"], 8)
        pruned1, _ = self.metric_sum("moed_expert_activations_pruned_total")
        act1, _ = self.metric_sum("moed_expert_activations_total")
        self.assertGreater(pruned1, pruned0)
        self.assertGreater(act1, act0)
        # one expert per token: no pruning counted, half the activations
        status, res = self.moed.json("POST", "/v1/chat/completions",
                                     {"messages": [{"role": "user", "content": "hi"}],
                                      "max_tokens": 4, "moe_top_k": 1, "moe_prune": 0})
        self.assertEqual(status, 200, res)
        self.assertEqual(self.metric_sum("moed_expert_activations_pruned_total")[0], pruned1)
        for bad, field in (({"moe_prune": 1.5}, "moe_prune"), ({"moe_prune": "high"}, "moe_prune"),
                           ({"moe_top_k": 0}, "moe_top_k"), ({"moe_top_k": 3}, "moe_top_k")):
            status, _, data = self.moed.request("POST", "/v1/completions",
                                                dict({"prompt": "x", "max_tokens": 1}, **bad))
            self.assertEqual(status, 400, (bad, data))
            err = json.loads(data)["error"]
            self.assertIn(field, err["message"] + str(err.get("param")))

    def test_any_host_header_is_accepted(self):
        for host in ("localhost", "moed", "weird:host", "[::1]:9"):
            status, _, _ = self.moed.request("GET", "/health", headers={"Host": host})
            self.assertEqual(status, 200, host)


class Lifecycle(unittest.TestCase):
    def test_sighup_with_a_bad_file_keeps_serving(self):
        moed = Moed()
        try:
            moed.wait_notify("READY=1")
            with open(moed.ini) as f:
                good = f.read()
            with open(moed.ini, "w") as f:
                f.write(good + "\n[batching]\nmax_seqs = lots\n")
            moed.messages.clear()
            moed.proc.send_signal(signal.SIGHUP)
            moed.wait_notify("RELOADING=1")
            moed.wait_notify("READY=1")
            self.assertEqual(moed.json("GET", "/health")[0], 200)
            status, res = moed.json("POST", "/v1/completions", {"prompt": "ROMEO:", "max_tokens": 4})
            self.assertEqual(status, 200, res)
            time.sleep(0.2)
            self.assertIn("max_seqs", moed.logtext())
            # a good reload applies reloadable keys
            with open(moed.ini, "w") as f:
                f.write(good.replace("max_tokens = 32", "max_tokens = 3"))
            moed.messages.clear()
            moed.proc.send_signal(signal.SIGHUP)
            moed.wait_notify("READY=1")
            status, res = moed.json("POST", "/v1/completions", {"prompt": "ROMEO:"})
            self.assertEqual(res["usage"]["completion_tokens"], 3)
        finally:
            moed.stop()
        self.assertEqual(moed.proc.returncode, 0)

    def test_sigterm_lets_requests_in_flight_finish(self):
        moed = Moed(drain=60)
        moed.wait_notify("READY=1")
        out = {}
        pr = REF["prompts"][3]

        def term(conn):
            moed.proc.send_signal(signal.SIGTERM)
        t = threading.Thread(target=lambda: out.update(r=stream(
            moed, "/v1/completions", {"prompt": pr["text"], "max_tokens": 32, "temperature": 0},
            on_first=term)))
        t.start()
        t.join(120)
        self.assertEqual(moed.proc.wait(60), 0, moed.logtext())
        text, events = out["r"]
        self.assertEqual(text, pr["greedy_text"])
        self.assertEqual(events[-1], "DONE")
        self.assertTrue(any("STOPPING=1" in m for m in moed.messages) or
                        moed.wait_notify("STOPPING=1", 1))
        moed.stop()

    def test_socket_activated_start_serves(self):
        d = tempfile.mkdtemp(prefix="moed-act-")
        path = os.path.join(d, "activated.sock")
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(path)
        ls.listen(16)
        moed = Moed(listen_sock=ls)
        moed.sock = path  # the daemon must serve the passed socket, not its INI path
        try:
            moed.wait_notify("READY=1")
            status, res = moed.json("POST", "/v1/completions",
                                    {"prompt": "ROMEO:", "max_tokens": 8, "temperature": 0})
            self.assertEqual(status, 200, res)
            self.assertEqual(res["choices"][0]["text"], REF["prompts"][0]["greedy_text"][:len(
                res["choices"][0]["text"])])
            self.assertFalse(os.path.exists(os.path.join(moed.dir, "moed.sock")))
        finally:
            ls.close()
            moed.stop()
        self.assertEqual(moed.proc.returncode, 0)


if __name__ == "__main__":
    unittest.main()
