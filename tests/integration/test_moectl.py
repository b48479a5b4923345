"""moectl against a fake moed: a small HTTP server on a temporary Unix socket
(socketserver.UnixStreamServer + http.server.BaseHTTPRequestHandler) that
records what moectl sends (method, path, headers, JSON body) and answers with
canned JSON or SSE: streams written a few bytes at a time, error JSON with
4xx/5xx, 503 with Retry-After, connections closed before or during the
answer. Each test asserts moectl's stdout, stderr and exit status (0 ok,
1 server error, 2 usage, 3 unavailable, 4 rejected). Tests against the real
daemon live elsewhere."""
import json
import os
import pty
import socket
import socketserver
import http.server
import subprocess
import tempfile
import threading
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("BIN", os.path.join(ROOT, "build", "bin"))
MOECTL = os.path.join(BIN, "moectl")


# ---- the fake daemon ---------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def address_string(self):  # a Unix socket peer has no address
        return "unix"

    def handle_request(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        req = {"method": self.command, "path": self.path, "headers": dict(self.headers),
               "raw": raw, "body": body}
        self.server.owner.requests.append(req)
        route = self.server.owner.routes.get((self.command, self.path))
        if route is None:
            send_json(self, 404, {"error": {"message": "no route %s %s" % (self.command, self.path),
                                            "type": "not_found", "code": 404}})
        else:
            route(self, req)

    do_GET = handle_request
    do_POST = handle_request


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        pass  # clients that went away (timeouts) are expected here


class FakeMoed:
    def __init__(self, path):
        self.path = path
        self.requests = []
        self.routes = {}
        self.srv = Server(path, Handler)
        self.srv.owner = self
        self.thread = threading.Thread(target=self.srv.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def send_json(h, status, obj, headers=None, raw=None):
    data = raw if raw is not None else json.dumps(obj).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


def sse_bytes(events, done=True, eol="\n"):
    out = ""
    for e in events:
        out += "data: " + (e if isinstance(e, str) else json.dumps(e)) + eol + eol
    if done:
        out += "data: [DONE]" + eol + eol
    return out.encode()


def write_pieces(h, data, chunked, sizes=(1, 2, 3, 1, 5, 2), delay=0.0005):
    """Writes data in tiny pieces, each its own chunk (when chunked) and its own
    send(), with short pauses so that the client sees them separately."""
    i = k = 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        piece = data[i:i + n]
        if chunked:
            h.wfile.write(b"%x\r\n" % len(piece))
            h.wfile.write(piece)
            h.wfile.write(b"\r\n")
        else:
            h.wfile.write(piece)
        i += n
        k += 1
        if k % 3 == 0:
            time.sleep(delay)


def send_sse(h, data, chunked=True, finish=True, first_delay=0.0):
    h.send_response(200)
    h.send_header("Content-Type", "text/event-stream")
    h.send_header("Cache-Control", "no-cache")
    if chunked:
        h.send_header("Transfer-Encoding", "chunked")
    else:
        h.send_header("Connection", "close")
        h.close_connection = True
    h.end_headers()
    h.wfile.flush()
    if first_delay:
        time.sleep(first_delay)
    write_pieces(h, data, chunked)
    if chunked and finish:
        h.wfile.write(b"0\r\n\r\n")
    if not finish:
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_RDWR)


def completion_events(pieces, finish="stop"):
    ev = [{"id": "cmpl-1", "object": "text_completion", "choices": [
        {"index": 0, "text": p, "finish_reason": None}]} for p in pieces]
    ev.append({"id": "cmpl-1", "object": "text_completion",
               "choices": [{"index": 0, "text": "", "finish_reason": finish}],
               "usage": {"prompt_tokens": 3, "completion_tokens": len(pieces),
                         "total_tokens": 3 + len(pieces)}})
    return ev


def chat_events(pieces, finish="stop"):
    ev = [{"id": "chatcmpl-1", "object": "chat.completion.chunk",
           "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}]
    ev += [{"id": "chatcmpl-1", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
           for p in pieces]
    ev.append({"id": "chatcmpl-1", "object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return ev


PIECES = ["Once", " upon", " a", " time,", " h\u00e9llo \u4e16\u754c", "\n", "the end."]
TEXT = "".join(PIECES)


# ---- the tests ----------------------------------------------------------------------------

class MoectlTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="moectl-")
        self.sock = os.path.join(self.tmp, "moed.sock")
        self.srv = FakeMoed(self.sock)

    def tearDown(self):
        self.srv.close()
        for name in os.listdir(self.tmp):
            os.unlink(os.path.join(self.tmp, name))
        os.rmdir(self.tmp)

    def moectl(self, *args, env=None, input=None, socket_arg=True, timeout=30):
        e = {k: v for k, v in os.environ.items() if k != "MOED_SOCKET"}
        e.update(env or {})
        argv = [MOECTL] + (["--socket", self.sock] if socket_arg else []) + list(args)
        p = subprocess.run(argv, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                           capture_output=True, timeout=timeout, env=e)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    def route(self, method, path, fn):
        self.srv.routes[(method, path)] = fn

    def only_request(self):
        self.assertEqual(len(self.srv.requests), 1)
        return self.srv.requests[0]

    # -- generate -------------------------------------------------------------------

    def test_generate_streams_split_sse(self):
        self.route("POST", "/v1/completions",
                   lambda h, r: send_sse(h, sse_bytes(completion_events(PIECES))))
        rc, out, err = self.moectl("generate", "--max-tokens", "16", "--temperature", "0.5",
                                   "--top-p", "0.9", "--top-k", "40", "--seed", "1234",
                                   "--stop", "END", "--stop", "\n\n", "Once upon")
        self.assertEqual((rc, err), (0, ""))
        self.assertEqual(out, TEXT)  # exactly the text: no newline added on a pipe
        req = self.only_request()
        self.assertEqual(req["method"], "POST")
        self.assertEqual(req["path"], "/v1/completions")
        self.assertEqual(req["headers"].get("Content-Type"), "application/json")
        self.assertEqual(req["body"], {"prompt": "Once upon", "stream": True, "max_tokens": 16,
                                       "temperature": 0.5, "top_p": 0.9, "top_k": 40,
                                       "seed": 1234, "stop": ["END", "\n\n"]})

    def test_generate_defaults_left_to_daemon(self):
        self.route("POST", "/v1/completions",
                   lambda h, r: send_sse(h, sse_bytes(completion_events(["x"]))))
        rc, out, err = self.moectl("generate", "several", "words", "joined")
        self.assertEqual((rc, out, err), (0, "x", ""))
        self.assertEqual(self.only_request()["body"],
                         {"prompt": "several words joined", "stream": True})

    def test_generate_sse_variants(self):
        """CRLF line ends, comments, other fields, data split over two lines,
        an event with no blank line before the end of the stream (HTTP/1.0-style
        close, no chunking)."""
        ev = completion_events(["a", "b"])
        js = json.dumps(ev[1])
        cut = js.index(', "object"') + 1  # between two JSON tokens
        data = (": keep-alive\r\n\r\n"
                "event: completion\r\nid: 1\r\ndata: " + json.dumps(ev[0]) + "\r\n\r\n"
                "data: " + js[:cut] + "\r\ndata: " + js[cut:] + "\r\n\r\n"
                "retry: 1000\r\n\r\n"
                "data:" + json.dumps(ev[2]) + "\r\n\r\n"
                "data: [DONE]").encode()
        self.route("POST", "/v1/completions", lambda h, r: send_sse(h, data, chunked=False))
        rc, out, err = self.moectl("generate", "p")
        self.assertEqual((rc, out, err), (0, "ab", ""))

    def test_generate_bare_cr_line_ends(self):
        data = sse_bytes(completion_events(["x", "y"]), eol="\r")
        self.route("POST", "/v1/completions", lambda h, r: send_sse(h, data))
        rc, out, err = self.moectl("generate", "p")
        self.assertEqual((rc, out, err), (0, "xy", ""))

    def test_generate_no_stream(self):
        def answer(h, r):
            send_json(h, 200, {"id": "cmpl-2", "object": "text_completion",
                               "choices": [{"index": 0, "text": "Paris.", "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 5, "completion_tokens": 2}})
        self.route("POST", "/v1/completions", answer)
        rc, out, err = self.moectl("generate", "--no-stream", "-n", "2", "-t", "0",
                                   "The capital of France is")
        self.assertEqual((rc, out, err), (0, "Paris.", ""))
        self.assertEqual(self.only_request()["body"],
                         {"prompt": "The capital of France is", "stream": False,
                          "max_tokens": 2, "temperature": 0.0})

    def test_generate_prompt_from_stdin(self):
        self.route("POST", "/v1/completions",
                   lambda h, r: send_sse(h, sse_bytes(completion_events(["ok"]))))
        rc, out, err = self.moectl("generate", input=b"line one\nline two\n")
        self.assertEqual((rc, out), (0, "ok"))
        rc, out, err = self.moectl("generate", "-", input=b"dash")
        self.assertEqual((rc, out), (0, "ok"))
        self.assertEqual([r["body"]["prompt"] for r in self.srv.requests],
                         ["line one\nline two\n", "dash"])

    def test_generate_options_after_double_dash(self):
        self.route("POST", "/v1/completions",
                   lambda h, r: send_sse(h, sse_bytes(completion_events(["."]))))
        rc, out, err = self.moectl("generate", "-s", "7", "--", "-5 degrees", "--not-an-option")
        self.assertEqual((rc, out, err), (0, ".", ""))
        self.assertEqual(self.only_request()["body"],
                         {"prompt": "-5 degrees --not-an-option", "stream": True, "seed": 7})

    # -- chat ------------------------------------------------------------------------------

    def test_chat_streams_delta_content(self):
        self.route("POST", "/v1/chat/completions",
                   lambda h, r: send_sse(h, sse_bytes(chat_events(PIECES))))
        rc, out, err = self.moectl("chat", "--system", "Be brief.", "-n", "64", "Tell a story")
        self.assertEqual((rc, out, err), (0, TEXT, ""))
        req = self.only_request()
        self.assertEqual((req["method"], req["path"]), ("POST", "/v1/chat/completions"))
        self.assertEqual(req["body"], {
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Tell a story"}],
            "stream": True, "max_tokens": 64})

    def test_chat_no_stream(self):
        def answer(h, r):
            send_json(h, 200, {"id": "c", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "Hi!\n"},
                 "finish_reason": "stop"}]})
        self.route("POST", "/v1/chat/completions", answer)
        rc, out, err = self.moectl("chat", "--no-stream", "--model", "tiny", "hello")
        self.assertEqual((rc, out, err), (0, "Hi!\n", ""))
        self.assertEqual(self.only_request()["body"], {
            "model": "tiny", "messages": [{"role": "user", "content": "hello"}], "stream": False})

    # -- the other commands ----------------------------------------------------------------

    def test_models(self):
        self.route("GET", "/v1/models", lambda h, r: send_json(h, 200, {
            "object": "list", "data": [{"id": "tiny-moe", "object": "model"},
                                       {"id": "other", "object": "model"}]}))
        rc, out, err = self.moectl("models")
        self.assertEqual((rc, out, err), (0, "tiny-moe\nother\n", ""))
        req = self.only_request()
        self.assertEqual((req["method"], req["path"], req["raw"]), ("GET", "/v1/models", b""))

    def test_status_ready_and_loading(self):
        self.route("GET", "/health", lambda h, r: send_json(h, 200, {"status": "ok",
                                                                     "model": "tiny-moe"}))
        rc, out, err = self.moectl("status")
        self.assertEqual((rc, out, err), (0, "ok\nmodel: tiny-moe\n", ""))
        self.route("GET", "/health", lambda h, r: send_json(h, 503, {"status": "loading"},
                                                            {"Retry-After": "5"}))
        rc, out, err = self.moectl("status")
        self.assertEqual((rc, out), (3, "loading\n"))

    def test_status_unreachable(self):
        rc, out, err = self.moectl("--socket", os.path.join(self.tmp, "none.sock"), "status",
                                   socket_arg=False)
        self.assertEqual((rc, out), (3, ""))
        self.assertIn("none.sock", err)

    def test_stats_pretty(self):
        stats = {"queue_depth": 0, "running": 2, "requests": {"done": 10, "failed": 1}}
        self.route("GET", "/admin/stats", lambda h, r: send_json(h, 200, stats))
        rc, out, err = self.moectl("stats")
        self.assertEqual((rc, err), (0, ""))
        self.assertEqual(json.loads(out), stats)
        self.assertIn('\n  "running": 2', out)  # indented, in the daemon's order
        self.assertLess(out.index("queue_depth"), out.index("running"))

    def test_metrics_raw(self):
        text = ('# HELP moed_requests_total Requests.\n# TYPE moed_requests_total counter\n'
                'moed_requests_total{status="200"} 3\n')

        def answer(h, r):
            data = text.encode()
            h.send_response(200)
            h.send_header("Content-Type", "text/plain; version=0.0.4")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        self.route("GET", "/metrics", answer)
        rc, out, err = self.moectl("metrics")
        self.assertEqual((rc, out, err), (0, text, ""))

    def test_reload(self):
        self.route("POST", "/admin/reload",
                   lambda h, r: send_json(h, 200, {"status": "reloaded",
                                                   "message": "applied 2 keys"}))
        rc, out, err = self.moectl("reload")
        self.assertEqual((rc, out, err), (0, "applied 2 keys\n", ""))
        self.assertEqual(self.only_request()["method"], "POST")
        self.route("POST", "/admin/reload", lambda h, r: send_json(h, 400, {"error": {
            "message": "moed.ini:12: [limits] max_seqs: not reloadable",
            "type": "invalid_request_error", "code": 400}}))
        rc, out, err = self.moectl("reload")
        self.assertEqual((rc, out), (4, ""))
        self.assertIn("moed.ini:12: [limits] max_seqs: not reloadable", err)

    # -- errors from the daemon --------------------------------------------------------------

    def test_error_json_400(self):
        self.route("POST", "/v1/completions", lambda h, r: send_json(h, 400, {"error": {
            "message": "max_tokens: must be at most 4096", "type": "invalid_request_error",
            "code": 400}}))
        rc, out, err = self.moectl("generate", "-n", "100000", "hi")
        self.assertEqual((rc, out), (4, ""))
        self.assertEqual(err, "moectl: max_tokens: must be at most 4096 (HTTP 400)\n")

    def test_503_queue_full(self):
        self.route("POST", "/v1/chat/completions", lambda h, r: send_json(h, 503, {"error": {
            "message": "queue full", "type": "server_busy", "code": 503}}, {"Retry-After": "2"}))
        rc, out, err = self.moectl("chat", "hi")
        self.assertEqual((rc, out), (3, ""))
        self.assertIn("queue full", err)
        self.assertIn("retry after 2 s", err)

    def test_429_is_unavailable(self):
        self.route("POST", "/v1/completions", lambda h, r: send_json(h, 429, {"error": {
            "message": "too many requests", "type": "rate_limit", "code": 429}}))
        rc, out, err = self.moectl("generate", "hi")
        self.assertEqual(rc, 3)
        self.assertIn("too many requests", err)

    def test_500_and_non_json_errors(self):
        self.route("POST", "/v1/completions", lambda h, r: send_json(h, 500, {"error": {
            "message": "internal: kv cache", "type": "server_error", "code": 500}}))
        rc, out, err = self.moectl("generate", "hi")
        self.assertEqual((rc, out), (1, ""))
        self.assertIn("internal: kv cache", err)
        self.route("GET", "/v1/models", lambda h, r: send_json(h, 502, None, raw=b"Bad Gateway\n"))
        rc, out, err = self.moectl("models")
        self.assertEqual(rc, 1)
        self.assertIn("HTTP 502", err)
        self.assertIn("Bad Gateway", err)
        rc, out, err = self.moectl("stats")  # no route: the fake answers 404 JSON
        self.assertEqual(rc, 4)
        self.assertIn("no route GET /admin/stats", err)

    def test_error_in_stream(self):
        data = sse_bytes(completion_events(["par", "tial"])[:2] + [
            {"error": {"message": "engine failed: out of memory", "type": "server_error",
                       "code": 500}}], done=False)
        self.route("POST", "/v1/completions", lambda h, r: send_sse(h, data))
        rc, out, err = self.moectl("generate", "hi")
        self.assertEqual(rc, 1)
        self.assertEqual(out, "partial")  # what came before the error stays
        self.assertIn("engine failed: out of memory", err)

    def test_malformed_event(self):
        self.route("POST", "/v1/completions",
                   lambda h, r: send_sse(h, b"data: {not json\n\n"))
        rc, out, err = self.moectl("generate", "hi")
        self.assertEqual(rc, 1)
        self.assertIn("malformed", err)

    def test_stream_ends_early(self):
        # no [DONE] and no finish_reason, then a clean close: incomplete
        data = sse_bytes(completion_events(["a", "b"])[:2], done=False)
        self.route("POST", "/v1/completions", lambda h, r: send_sse(h, data, chunked=False))
        rc, out, err = self.moectl("generate", "hi")
        self.assertEqual((rc, out), (1, "ab"))
        self.assertIn("ended", err)
        # a finish_reason without [DONE] is a finished stream
        data = sse_bytes(completion_events(["a", "b"]), done=False)
        self.route("POST", "/v1/completions", lambda h, r: send_sse(h, data, chunked=False))
        rc, out, err = self.moectl("generate", "hi")
        self.assertEqual((rc, out, err), (0, "ab", ""))

    def test_connection_lost_mid_stream(self):
        data = sse_bytes(completion_events(["one", " two"])[:2], done=False)
        self.route("POST", "/v1/completions", lambda h, r: send_sse(h, data, finish=False))
        rc, out, err = self.moectl("generate", "hi")
        self.assertEqual((rc, out), (1, "one two"))
        self.assertIn("lost", err)

    def test_closed_without_answer(self):
        def slam(h, r):
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
        self.route("POST", "/v1/completions", slam)
        rc, out, err = self.moectl("generate", "hi")
        self.assertEqual((rc, out), (3, ""))
        self.assertIn("closed the connection", err)

    def test_timeout(self):
        self.route("POST", "/v1/completions",
                   lambda h, r: (time.sleep(3), send_json(h, 200, {})))
        t0 = time.monotonic()
        rc, out, err = self.moectl("--timeout", "0.5", "generate", "hi")
        self.assertLess(time.monotonic() - t0, 2.5)
        self.assertEqual((rc, out), (3, ""))
        self.assertIn("0.5 s", err)

    # -- connecting --------------------------------------------------------------------------

    def test_no_socket(self):
        path = os.path.join(self.tmp, "missing.sock")
        rc, out, err = self.moectl("--socket", path, "generate", "hi", socket_arg=False)
        self.assertEqual((rc, out), (3, ""))
        self.assertIn("cannot connect to " + path, err)
        self.assertIn("No such file", err)

    def test_refused(self):
        path = os.path.join(self.tmp, "dead.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)  # bound, never listening: connection refused
        try:
            rc, out, err = self.moectl("--socket", path, "models", socket_arg=False)
        finally:
            s.close()
        self.assertEqual(rc, 3)
        self.assertIn("refused", err)

    def test_socket_from_environment(self):
        self.route("GET", "/v1/models", lambda h, r: send_json(h, 200, {"data": [{"id": "m"}]}))
        rc, out, err = self.moectl("models", env={"MOED_SOCKET": self.sock}, socket_arg=False)
        self.assertEqual((rc, out), (0, "m\n"))
        # --socket wins over the environment, before or after the command
        rc, out, err = self.moectl("models", "--socket", self.sock,
                                   env={"MOED_SOCKET": "/nonexistent/x.sock"}, socket_arg=False)
        self.assertEqual((rc, out), (0, "m\n"))
        rc, out, err = self.moectl("models", env={"MOED_SOCKET": os.path.join(self.tmp, "no")},
                                   socket_arg=False)
        self.assertEqual(rc, 3)
        self.assertIn(os.path.join(self.tmp, "no"), err)

    # -- the command line --------------------------------------------------------------------

    def test_version_and_help(self):
        rc, out, err = self.moectl("--version", socket_arg=False)
        self.assertEqual((rc, out, err), (0, "moectl 0.1.0\n", ""))
        rc, out, err = self.moectl("--help", socket_arg=False)
        self.assertEqual(rc, 0)
        for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "ENVIRONMENT",
                        "EXIT STATUS"):
            self.assertIn("\n" + section + "\n", "\n" + out)
        for word in ("generate", "chat", "models", "status", "stats", "metrics", "reload",
                     "MOED_SOCKET", "--timeout", "--no-stream"):
            self.assertIn(word, out)
        self.assertEqual(self.srv.requests, [])

    def test_usage_errors(self):
        cases = [
            [],
            ["frobnicate"],
            ["generate"],                       # no prompt (stdin is /dev/null: empty)
            ["generate", "-n", "0", "hi"],
            ["generate", "--max-tokens", "abc", "hi"],
            ["generate", "--temperature", "-1", "hi"],
            ["generate", "--top-p", "1.5", "hi"],
            ["generate", "--seed", "-3", "hi"],
            ["generate", "--bogus", "hi"],
            ["generate", "--stop"],
            ["models", "extra"],
            ["models", "--max-tokens", "5"],
            ["generate", "--system", "s", "hi"],  # --system is for chat
            ["--timeout", "soon", "status"],
            ["generate", os.fsdecode(b"bad \xff utf-8")],  # JSON needs UTF-8
        ]
        for args in cases:
            rc, out, err = self.moectl(*args)
            self.assertEqual(rc, 2, "%s: %s" % (args, err))
            self.assertEqual(out, "", args)
            self.assertTrue(err.startswith("moectl: "), err)
        self.assertEqual(self.srv.requests, [])

    def test_status_line_on_a_terminal_only(self):
        self.route("POST", "/v1/completions", lambda h, r: send_sse(
            h, sse_bytes(completion_events(["tok"])), first_delay=0.3))
        master, slave = pty.openpty()
        e = {k: v for k, v in os.environ.items() if k != "MOED_SOCKET"}
        p = subprocess.Popen([MOECTL, "--socket", self.sock, "generate", "hi"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                             env=e)
        os.close(slave)
        out, _ = p.communicate(timeout=30)
        tty = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            tty += chunk
        os.close(master)
        self.assertEqual((p.returncode, out), (0, b"tok"))
        self.assertIn(b"waiting for first token", tty)
        self.assertTrue(tty.endswith(b"\r\x1b[K"), tty)  # cleared once text came
        # --quiet: nothing on the terminal
        master, slave = pty.openpty()
        p = subprocess.Popen([MOECTL, "--socket", self.sock, "-q", "generate", "hi"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                             env=e)
        os.close(slave)
        out, _ = p.communicate(timeout=30)
        try:
            tty = os.read(master, 4096)
        except OSError:
            tty = b""
        os.close(master)
        self.assertEqual((p.returncode, out, tty), (0, b"tok", b""))


if __name__ == "__main__":
    unittest.main()
