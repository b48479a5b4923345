"""moed as a new user meets it, and its life under systemd's eyes, against real
processes on the bundled tiny model (no INI unless a test writes one):

- `moed models/tiny-moe` with no INI serves a completion; the socket it picks
  without --socket ($XDG_RUNTIME_DIR/moed.sock) is where moectl looks;
  MOED_* variables and flags set keys (a flag over a variable over the file),
  a bad value exits 1 naming the flag or variable;
- `moed --check-config` names a model path that is not there;
- `moectl chat -i` driven through stdin: two turns, the second sent with the
  first (checked against the same conversation sent by hand, greedy);
- `moectl ps`: the model, its architecture, state, KV use, uptime;
- a test NOTIFY_SOCKET: the unit's ExecReload command (moectl reload) exits
  non-zero on a rejected file and STATUS= names the failure until a good
  reload; WATCHDOG=1 flows every interval while the engine is idle or busy,
  and stops for longer than the watchdog interval while MOED_TEST_ENGINE_STALL
  hangs the engine thread with a request in flight, then resumes."""
import http.client
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_daemon import UnixHTTPConnection  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("BIN", os.path.join(ROOT, "build", "bin"))
if not os.path.isabs(BIN):
    BIN = os.path.join(ROOT, BIN)
MOED = os.path.join(BIN, "moed")
MOECTL = os.path.join(BIN, "moectl")
TINY = os.path.join(ROOT, "models", "tiny-moe")


def clean_env(**extra):
    """The environment without MOED_* (they set keys) and NOTIFY_SOCKET."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith("MOED_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC",
                                                    "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")}
    e.update(extra)
    return e


def request(sock, method, path, body=None, timeout=60):
    c = UnixHTTPConnection(sock, timeout)
    try:
        c.request(method, path, body=json.dumps(body) if body is not None else None,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
    finally:
        c.close()
    return r.status, json.loads(data) if data else None


class Notify:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET; every
    message is kept with the time it came."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s.bind(path)
        self.s.settimeout(0.1)
        self.msgs = []  # (monotonic time, text)
        self.lock = threading.Lock()
        self.stop = False
        self.t = threading.Thread(target=self.loop, daemon=True)
        self.t.start()

    def loop(self):
        while not self.stop:
            try:
                d = self.s.recv(4096).decode()
            except socket.timeout:
                continue
            except OSError:
                break
            with self.lock:
                self.msgs.append((time.monotonic(), d))

    def close(self):
        self.stop = True
        self.t.join(2)
        self.s.close()

    def texts(self):
        with self.lock:
            return [m for _, m in self.msgs]

    def wait(self, pred, timeout=60, after=0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for t, m in self.msgs[after:]:
                    if pred(m):
                        return m
            time.sleep(0.05)
        raise AssertionError("no matching notification within %ss; got %r" % (timeout, self.texts()))

    def count(self):
        with self.lock:
            return len(self.msgs)

    def pets(self, t0, t1):
        with self.lock:
            return [t for t, m in self.msgs if t0 <= t <= t1 and "WATCHDOG=1" in m.split("\n")]


class Daemon:
    def __init__(self, args, env=None, notify=False, watchdog_usec=None, ini=None):
        self.dir = tempfile.mkdtemp(prefix="moed-first-")
        self.sock = os.path.join(self.dir, "moed.sock")
        env = clean_env(**(env or {}))
        self.notify = None
        if notify:
            path = os.path.join(self.dir, "notify.sock")
            self.notify = Notify(path)
            env["NOTIFY_SOCKET"] = path
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.ini = None
        if ini is not None:
            self.ini = os.path.join(self.dir, "moed.ini")
            with open(self.ini, "w") as f:
                f.write(ini.format(sock=self.sock, model=TINY))
            args = ["--config", self.ini] + args
        self.log = open(os.path.join(self.dir, "moed.log"), "w+")
        self.proc = subprocess.Popen([MOED] + args, env=env, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)

    def logtext(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def wait_ready(self, sock=None, timeout=60):
        sock = sock or self.sock
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("moed exited %d: %s" % (self.proc.returncode, self.logtext()))
            try:
                st, body = request(sock, "GET", "/health", timeout=5)
                if st == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.1)
        raise AssertionError("moed not ready: " + self.logtext())

    def stop(self):
        if self.log.closed:
            return  # stopped already (a test stops it before the cleanup does)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.notify:
            self.notify.close()
        self.log.close()
        for root, dirs, files in os.walk(self.dir, topdown=False):
            for n in files:
                os.unlink(os.path.join(root, n))
            for n in dirs:
                os.rmdir(os.path.join(root, n))
        os.rmdir(self.dir)


def moectl(*args, sock=None, input=None, env=None, timeout=120):
    argv = [MOECTL] + (["--socket", sock] if sock else []) + list(args)
    p = subprocess.run(argv, input=input, capture_output=True, timeout=timeout,
                       env=clean_env(**(env or {})),
                       stdin=None if input is not None else subprocess.DEVNULL)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


class FirstRunTest(unittest.TestCase):
    def daemon(self, *a, **kw):
        d = Daemon(*a, **kw)
        self.addCleanup(d.stop)
        return d

    def test_moed_model_without_ini(self):
        # what a new user types: the model, nothing else (threads to spare the CI box)
        run = tempfile.mkdtemp(prefix="moed-xdg-")
        os.chmod(run, 0o700)
        self.addCleanup(os.rmdir, run)
        d = self.daemon([TINY, "--threads", "1"], env={"XDG_RUNTIME_DIR": run})
        system_dir = os.access("/run/moed", os.W_OK | os.X_OK)
        sock = "/run/moed/moed.sock" if system_dir else os.path.join(run, "moed.sock")
        d.wait_ready(sock)
        log = d.logtext()
        self.assertIn("no configuration file", log)
        self.assertIn("default without a file: [daemon] socket = " + sock, log)
        st, body = request(sock, "POST", "/v1/completions",
                           {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0})
        self.assertEqual(st, 200, body)
        self.assertEqual(body["usage"]["completion_tokens"], 4)
        self.assertEqual(body["model"], "tiny-moe")
        # moectl finds the same socket with no --socket and no MOED_SOCKET
        rc, out, err = moectl("models", env={"XDG_RUNTIME_DIR": run})
        self.assertEqual((rc, out), (0, "tiny-moe\n"), err)
        rc, out, err = moectl("generate", "-n", "3", "-t", "0", "Hello",
                              env={"XDG_RUNTIME_DIR": run})
        self.assertEqual(rc, 0, err)
        self.assertTrue(out)
        d.stop()
        self.assertFalse(os.path.exists(os.path.join(run, "moed.sock")))

    def test_env_and_flags_over_keys(self):
        # MOED_SAMPLING_MAX_TOKENS sets [sampling] max_tokens, a flag beats it;
        # -m is the model, --socket the socket, MOED_MODEL_NAME the served id
        sock = os.path.join(tempfile.gettempdir(), "moed-first-%d.sock" % os.getpid())
        d2 = self.daemon(["-m", TINY, "--threads=1", "--socket", sock, "--sampling-max-tokens",
                          "5"],
                         env={"MOED_SAMPLING_MAX_TOKENS": "3", "MOED_TEMPERATURE": "0",
                              "MOED_MODEL_NAME": "from-env"})
        d2.wait_ready(sock)
        st, body = request(sock, "POST", "/v1/completions", {"prompt": "Hello"})
        self.assertEqual(st, 200, body)
        self.assertEqual(body["usage"]["completion_tokens"], 5)  # the flag, not the env's 3
        self.assertEqual(body["model"], "from-env")
        st, models = request(sock, "GET", "/v1/models")
        self.assertEqual([m["id"] for m in models["data"]], ["from-env"])
        self.assertIn("MOED_SAMPLING_MAX_TOKENS: [sampling] max_tokens = 3", d2.logtext())
        self.assertIn("--sampling-max-tokens: [sampling] max_tokens = 5", d2.logtext())
        # env alone (no flag): 3
        d2.stop()
        d3 = self.daemon([TINY, "--threads", "1", "--socket", sock],
                         env={"MOED_SAMPLING_MAX_TOKENS": "3", "MOED_TEMPERATURE": "0"})
        d3.wait_ready(sock)
        st, body = request(sock, "POST", "/v1/completions", {"prompt": "Hello"})
        self.assertEqual(body["usage"]["completion_tokens"], 3)

    def test_bad_values_name_their_source(self):
        cases = [
            ([TINY, "--threads", "many"], {}, 1, "--threads ([daemon] threads): 'many' is not an integer"),
            ([TINY], {"MOED_MAX_SEQS": "0"}, 1, "MOED_MAX_SEQS ([batching] max_seqs): 0 is out of range"),
            ([TINY], {"MOED_THREADS": "1", "MOED_DAEMON_THREADS": "2"}, 1,
             "MOED_THREADS and MOED_DAEMON_THREADS both set"),
            ([TINY, "--sampling-max-tokens", "9000"], {}, 1,
             "--sampling-max-tokens: [sampling] max_tokens: 9000 is above [limits] max_tokens"),
            ([TINY, "--no-such-flag", "1"], {}, 2, "unknown option '--no-such-flag'"),
            ([TINY, "extra"], {}, 2, "unexpected argument 'extra'"),
        ]
        for args, env, code, msg in cases:
            p = subprocess.run([MOED] + args, capture_output=True, timeout=30, env=clean_env(**env),
                               stdin=subprocess.DEVNULL)
            self.assertEqual(p.returncode, code, (args, env, p.stderr))
            self.assertIn(msg, p.stderr.decode(), (args, env))

    def test_no_ini_no_model_is_as_before(self):
        if os.path.exists("/etc/moed/moed.ini"):
            self.skipTest("/etc/moed/moed.ini exists here")
        p = subprocess.run([MOED], capture_output=True, timeout=30, env=clean_env(),
                           stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 2)
        self.assertIn("/etc/moed/moed.ini", p.stderr.decode())

    def test_check_config_names_a_missing_model(self):
        with tempfile.TemporaryDirectory() as tmp:
            ini = os.path.join(tmp, "m.ini")
            with open(ini, "w") as f:
                f.write("[model]\npath = %s/gone.gguf\n" % tmp)
            p = subprocess.run([MOED, "--check-config", ini], capture_output=True, timeout=30,
                               env=clean_env())
            self.assertEqual(p.returncode, 1)
            self.assertEqual(p.stderr.decode(),
                             "%s: [model] path: %s/gone.gguf: No such file or directory\n" % (ini, tmp))
            with open(ini, "w") as f:
                f.write("[model]\npath = %s\n" % TINY)
            p = subprocess.run([MOED, "--check-config", ini], capture_output=True, timeout=30,
                               env=clean_env())
            self.assertEqual((p.returncode, p.stdout.decode()), (0, ini + ": OK\n"), p.stderr)
            # a flag over the file is checked too
            p = subprocess.run([MOED, "--check-config", ini, "-m", tmp], capture_output=True,
                               timeout=30, env=clean_env())
            self.assertEqual(p.returncode, 1)
            self.assertIn("[model] path: %s: a directory without a readable config.json" % tmp,
                          p.stderr.decode())

    def test_chat_two_turns_and_ps(self):
        sock = os.path.join(tempfile.gettempdir(), "moed-chat-%d.sock" % os.getpid())
        d = self.daemon([TINY, "--threads", "1", "--socket", sock, "--temperature", "0"])
        d.wait_ready(sock)
        rc, out, err = moectl("chat", "-i", "-n", "6", sock=sock, input=b"Hello there\nAnd then?\n")
        self.assertEqual(rc, 0, err)
        lines = out.split("\n")
        self.assertEqual(len(lines), 3, out)  # two replies, each ending its line
        self.assertEqual(lines[2], "")
        st, stats = request(sock, "GET", "/admin/stats")
        prompt_tokens = stats["engine"]["prompt_tokens"]
        # the second turn carried the first: the same conversation by hand
        # gives the same reply (greedy) and the same prompt length
        conv = [{"role": "user", "content": "Hello there"}]
        st, a1 = request(sock, "POST", "/v1/chat/completions", {"messages": conv, "max_tokens": 6})
        first = a1["choices"][0]["message"]["content"]
        self.assertEqual(first.replace("\n", " ").strip(), lines[0].strip())
        conv += [{"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}]
        st, a2 = request(sock, "POST", "/v1/chat/completions", {"messages": conv, "max_tokens": 6})
        self.assertEqual(st, 200, a2)
        self.assertEqual(a2["choices"][0]["message"]["content"].replace("\n", " ").strip(),
                         lines[1].strip())
        self.assertEqual(prompt_tokens, a1["usage"]["prompt_tokens"] + a2["usage"]["prompt_tokens"])
        st, alone = request(sock, "POST", "/v1/chat/completions",
                            {"messages": [{"role": "user", "content": "And then?"}], "max_tokens": 1})
        self.assertLess(alone["usage"]["prompt_tokens"], a2["usage"]["prompt_tokens"])
        # /clear forgets: after it the turn is sent alone
        st, before = request(sock, "GET", "/admin/stats")
        rc, out, err = moectl("chat", "-i", "-n", "1", sock=sock,
                              input=b"Hello there\n/clear\nAnd then?\n")
        self.assertEqual(rc, 0, err)
        self.assertIn("cleared", err)
        st, after = request(sock, "GET", "/admin/stats")
        self.assertEqual(after["engine"]["prompt_tokens"] - before["engine"]["prompt_tokens"],
                         a1["usage"]["prompt_tokens"] + alone["usage"]["prompt_tokens"])
        # an unknown command ends a scripted session with a usage error
        rc, out, err = moectl("chat", "-i", sock=sock, input=b"/frobnicate\n")
        self.assertEqual(rc, 2)
        self.assertIn("unknown command /frobnicate", err)

        rc, out, err = moectl("ps", sock=sock)
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"(?m)^model: +tiny-moe \(mixtral, 4 layers, 8 experts, top-2, "
                              r"context 512\)$")
        self.assertRegex(out, r"(?m)^state: +ready$")
        self.assertRegex(out, r"(?m)^requests: +0 running, 0 queued, \d+ done, 0 failed")
        self.assertRegex(out, r"(?m)^kv cache: +.* of 32\.0 MiB used")
        self.assertRegex(out, r"(?m)^memory: +[\d.]+ [KMG]iB resident \(pid %d\)$" % d.proc.pid)
        self.assertRegex(out, r"(?m)^uptime: +")
        d.stop()
        rc, out, err = moectl("ps", sock=sock)
        self.assertEqual(rc, 3)
        self.assertIn("cannot connect", err)


INI = """[daemon]
socket = {sock}
threads = 1
log_level = info
[model]
path = {model}
[sampling]
temperature = 0
"""


class NotifyTest(unittest.TestCase):
    """moed under a stand-in for systemd: a NOTIFY_SOCKET the test reads."""

    def daemon(self, *a, **kw):
        d = Daemon(*a, **kw)
        self.addCleanup(d.stop)
        return d

    def exec_reload(self, d):
        """The unit's ExecReload= line, pointed at the built moectl and the
        test's socket, run as systemd would."""
        with open(os.path.join(ROOT, "etc", "moed.service")) as f:
            line = [l for l in f if l.startswith("ExecReload=")][0]
        argv = shlex.split(line[len("ExecReload="):])
        self.assertEqual(os.path.basename(argv[0]), "moectl")
        argv[0] = MOECTL
        argv[argv.index("--socket") + 1] = d.sock
        return subprocess.run(argv, capture_output=True, timeout=150, env=clean_env())

    def test_reload_rejected_fails_and_says_so(self):
        d = self.daemon([], notify=True, ini=INI)
        d.notify.wait(lambda m: "READY=1" in m)
        # a good reload first: exit 0
        p = self.exec_reload(d)
        self.assertEqual(p.returncode, 0, p.stderr)
        # the file is broken: the reload command fails, naming the error
        with open(d.ini, "a") as f:
            f.write("[sampling]\ntemperature = 0.5\n")  # [sampling] temperature set twice
        n = d.notify.count()
        p = self.exec_reload(d)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("temperature: set twice", p.stderr.decode())
        d.notify.wait(lambda m: "RELOADING=1" in m and "MONOTONIC_USEC=" in m, after=n)
        st = d.notify.wait(lambda m: m.startswith("STATUS=") and "reload failed" in m, after=n)
        self.assertIn("temperature: set twice", st)
        msgs = d.notify.texts()[n:]
        i_rel = next(i for i, m in enumerate(msgs) if "RELOADING=1" in m)
        self.assertTrue(any("READY=1" in m for m in msgs[i_rel:]), msgs)
        # the daemon still serves, on the old configuration
        status, body = request(d.sock, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        self.assertEqual(status, 200, body)
        # fixed: the reload succeeds and the status forgets the failure
        with open(d.ini, "w") as f:
            f.write(INI.format(sock=d.sock, model=TINY))
        n = d.notify.count()
        p = self.exec_reload(d)
        self.assertEqual(p.returncode, 0, p.stderr)
        st = d.notify.wait(lambda m: m.startswith("STATUS=Serving"), after=n)
        self.assertNotIn("reload failed", st)
        # SIGHUP with a bad file: the same STATUS=
        with open(d.ini, "a") as f:
            f.write("[batching]\nmax_seqs = lots\n")
        n = d.notify.count()
        d.proc.send_signal(1)
        st = d.notify.wait(lambda m: m.startswith("STATUS=") and "reload failed" in m, after=n)
        self.assertIn("max_seqs: 'lots' is not an integer", st)

    def pet_gaps(self, d, t0, t1):
        pets = d.notify.pets(t0, t1)
        self.assertGreaterEqual(len(pets), 2, d.notify.texts())
        return [b - a for a, b in zip(pets, pets[1:])], pets

    def test_watchdog_flows_while_the_engine_lives(self):
        d = self.daemon([], notify=True, ini=INI, watchdog_usec=2000000)
        d.notify.wait(lambda m: "READY=1" in m)
        t0 = time.monotonic()
        for _ in range(3):  # busy, then idle
            st, body = request(d.sock, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 8})
            self.assertEqual(st, 200, body)
        time.sleep(max(0.0, 5.0 - (time.monotonic() - t0)))
        gaps, pets = self.pet_gaps(d, t0, time.monotonic())
        self.assertLess(max(gaps), 2.0, gaps)  # WatchdogSec=2 never expires
        self.assertNotIn("watchdog: the engine thread has not beaten", d.logtext())

    def test_watchdog_stops_while_the_engine_stalls(self):
        stall = 6.0
        d = self.daemon([], notify=True, ini=INI, watchdog_usec=2000000,
                        env={"MOED_TEST_ENGINE_STALL": str(stall)})
        d.notify.wait(lambda m: "READY=1" in m)
        time.sleep(2.5)  # pets flow while idle: the heartbeat beats every second
        t0 = time.monotonic()
        idle_gaps, _ = self.pet_gaps(d, t0 - 2.5, t0)
        self.assertLess(max(idle_gaps), 2.0)
        result = {}

        def one():
            result["r"] = request(d.sock, "POST", "/v1/completions",
                                  {"prompt": "Hi", "max_tokens": 4}, timeout=120)

        th = threading.Thread(target=one)
        th.start()
        th.join(60)
        t1 = time.monotonic()
        self.assertEqual(result["r"][0], 200, result)
        self.assertGreater(t1 - t0, stall - 0.5)
        d.notify.wait(lambda m: m == "WATCHDOG=1", after=0, timeout=5)
        time.sleep(2.5)  # and they come back once the engine beats again
        gaps, pets = self.pet_gaps(d, t0 - 2.5, time.monotonic())
        # longer than WatchdogSec=2: systemd would have killed and restarted moed
        self.assertGreater(max(gaps), 2.0 + 0.5, gaps)
        self.assertTrue(any(t > t1 for t in pets), "no WATCHDOG=1 after the stall")
        log = d.logtext()
        self.assertEqual(log.count("watchdog: the engine thread has not beaten"), 1, log)
        self.assertIn("watchdog: the engine thread beats again", log)
        self.assertTrue(any(m.startswith("STATUS=Engine stalled") for m in d.notify.texts()),
                        d.notify.texts())


if __name__ == "__main__":
    unittest.main()
