"""moed on TCP beside its Unix socket, as gateways, IDE plugins and Open WebUI
use it: the bearer api_key on the API (curl, http.client and, when it is
installed, the openai client), /health and /metrics open to probes, /admin
closed on TCP without a key, and socket activation of a Unix and a TCP
socket together."""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from test_daemon import socket_activation  # noqa: E402
from test_daemon_attacks import Daemon, figure  # noqa: E402

KEY = "sk-moed-test-0123456789"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tcp(port, method, path, body=None, key=None, timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    hdrs = {"Content-Type": "application/json"}
    if key:
        hdrs["Authorization"] = "Bearer " + key
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=hdrs)
    r = c.getresponse()
    out = (r.status, dict(r.getheaders()), r.read())
    c.close()
    return out


COMPLETION = {"prompt": "The capital of France is", "max_tokens": 4}


class TcpWithKey(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.port = free_port()
        cls.d = Daemon(extra="listen = unix:{sock}, tcp:127.0.0.1:%d\napi_key = %s\n"
                       % (cls.port, KEY))

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()

    def test_key_required_for_the_api(self):
        st, hdrs, body = tcp(self.port, "POST", "/v1/completions", COMPLETION)
        self.assertEqual(st, 401, body)
        self.assertEqual(hdrs.get("WWW-Authenticate"), "Bearer")
        self.assertEqual(json.loads(body)["error"]["code"], "invalid_api_key")
        st, _, body = tcp(self.port, "POST", "/v1/completions", COMPLETION, key="sk-wrong")
        self.assertEqual(st, 401, body)
        st, _, body = tcp(self.port, "POST", "/v1/completions", COMPLETION, key=KEY)
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body)["choices"][0]["finish_reason"], "length")
        st, _, body = tcp(self.port, "GET", "/v1/models", key=KEY)
        self.assertEqual(json.loads(body)["data"][0]["id"], "tiny-moe")

    def test_probes_open_admin_keyed(self):
        self.assertEqual(tcp(self.port, "GET", "/health")[0], 200)
        self.assertEqual(tcp(self.port, "GET", "/metrics")[0], 200)
        self.assertEqual(tcp(self.port, "GET", "/admin/stats")[0], 401)
        self.assertEqual(tcp(self.port, "GET", "/admin/stats", key=KEY)[0], 200)

    def test_unix_socket_needs_no_key(self):
        self.assertEqual(self.d.request("POST", "/v1/completions", COMPLETION)[0], 200)

    @unittest.skipUnless(shutil.which("curl"), "curl not installed")
    def test_curl_stream(self):
        out = subprocess.run(
            ["curl", "-sS", "-N", "http://127.0.0.1:%d/v1/chat/completions" % self.port,
             "-H", "Authorization: Bearer " + KEY, "-H", "Content-Type: application/json",
             "-d", json.dumps({"messages": [{"role": "user", "content": "Hi"}],
                               "max_tokens": 6, "stream": True})],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        events = [l[6:] for l in out.stdout.splitlines() if l.startswith("data: ")]
        self.assertEqual(events[-1], "[DONE]")
        self.assertEqual(json.loads(events[-2])["choices"][0]["finish_reason"], "length")
        figure("curl over TCP with the API key", "%d SSE events, ends with [DONE]" % len(events))

    def test_openai_client(self):
        try:
            import openai
        except ImportError:
            self.skipTest("the openai package is not installed")
        client = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % self.port, api_key=KEY)
        r = client.chat.completions.create(model="tiny-moe", max_tokens=6,
                                           messages=[{"role": "user", "content": "Hi"}])
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertTrue(r.choices[0].message.content)
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="tiny-moe", max_tokens=6, stream=True,
            messages=[{"role": "user", "content": "Hi"}]) if c.choices)
        self.assertEqual(text, r.choices[0].message.content)
        with self.assertRaises(openai.AuthenticationError):
            openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % self.port,
                          api_key="sk-wrong").models.list()
        figure("openai client over TCP", "chat %r, stream identical, wrong key refused"
               % r.choices[0].message.content)


class TcpWithoutKey(unittest.TestCase):
    def test_admin_closed_api_open(self):
        port = free_port()
        d = Daemon(extra="listen = tcp:127.0.0.1:%d, unix:{sock}\n" % port)
        try:
            self.assertEqual(tcp(port, "POST", "/v1/completions", COMPLETION)[0], 200)
            st, _, body = tcp(port, "GET", "/admin/stats")
            self.assertEqual(st, 403, body)
            self.assertIn(b"api_key", body)
            self.assertEqual(tcp(port, "POST", "/admin/reload")[0], 403)
            self.assertIn("without [daemon] api_key", d.logtext())
        finally:
            d.stop()


class Activation(unittest.TestCase):
    def test_unix_and_tcp_sockets_passed(self):
        port = free_port()
        t = socket.socket()
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind(("127.0.0.1", port))
        t.listen(16)
        import tempfile
        path = os.path.join(tempfile.mkdtemp(prefix="moed-act-"), "act.sock")
        u = socket.socket(socket.AF_UNIX)
        u.bind(path)
        u.listen(16)
        prefix, fds, close = socket_activation([u, t])
        d = Daemon(env={"LISTEN_FDS": "2"}, pass_fds=fds, cmd_prefix=prefix, sock=path)
        close()
        try:
            self.assertEqual(d.request("GET", "/health")[0], 200)
            self.assertEqual(tcp(port, "POST", "/v1/completions", COMPLETION)[0], 200)
            self.assertIn("2 socket(s) systemd passed", d.logtext())
        finally:
            d.stop()
            u.close()
            t.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
