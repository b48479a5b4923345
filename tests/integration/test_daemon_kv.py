"""moed with a compressed KV cache (issue 7): with one pool size, a 2-bit
cache holds at least 4x as many concurrent full-context sequences as a
16-bit one; the rest wait in the queue and complete; no output is corrupted
(with fp16 blocks every request of a prompt gives the same text).

Uses a synthetic long-context model (tests/bench/make_moe_model.py: head_dim
64, 32k positions) written to a temp dir; skipped without numpy."""
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_daemon as td  # noqa: E402

ROOT = td.ROOT
BIN = td.BIN
CTX = 2048
POOL = "4608K"  # 16-bit: 2 full contexts of this model; 2-bit: 10

INI = td.ini_edit(td.INI, {
    ("model", "name"): "long", ("model", "chat_template"): "chatml",
    ("batching", "max_batch_tokens"): "512", ("batching", "max_ctx"): str(CTX),
    ("limits", "max_body_bytes"): "256K", ("limits", "max_tokens"): str(CTX),
    ("limits", "request_timeout"): "300"},
    "[kv]\nbytes = %s\nkey_bits = {bits}\nvalue_bits = {bits}\ngroup = 64\nresidual = 64\n" % POOL)


def have_numpy():
    try:
        import numpy  # noqa: F401
        return True
    except ImportError:
        return False


@unittest.skipUnless(have_numpy(), "numpy is needed to write the synthetic model")
class KvAdmission(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="moed-kv-")
        cls.model = os.path.join(cls.dir, "long.gguf")
        subprocess.run([sys.executable, os.path.join(ROOT, "tests", "bench", "make_moe_model.py"),
                        "--layers", "2", "--hidden", "256", "--heads", "4", "--kv-heads", "2",
                        "--ffn", "256", "--experts", "4", "--top-k", "2", "--vocab", "512",
                        "--ctx", "32768", "--out", cls.model], check=True,
                       stdout=subprocess.DEVNULL)
        # two prompts of ~CTX-60 tokens; max_tokens fills the context
        cls.prompts = []
        for word in ("alpha beta gamma ", "to be or not to be "):
            text = word * 1000
            n = len(cls.tokens(text))
            while n > CTX - 60:
                text = text[: len(text) * (CTX - 60) // n]
                n = len(cls.tokens(text))
            cls.prompts.append((text, n))

    @classmethod
    def tokens(cls, text):
        out = subprocess.run([os.path.join(BIN, "moe-run"), "--model", cls.model, "--tokenize",
                              text], check=True, capture_output=True, text=True).stdout
        return out.split()

    def serve(self, bits, n_requests):
        """Runs n_requests full-context requests at once; returns (texts by
        prompt, the most sequences seen running at once, metrics at the end)."""
        td.INI = INI.replace("{bits}", str(bits)).replace("{model}", self.model)
        moed = td.Moed(max_seqs=16)
        try:
            moed.wait_notify("READY=1")
            bodies = []
            for i in range(n_requests):
                text, n = self.prompts[i % 2]
                bodies.append({"model": "long", "prompt": text, "max_tokens": CTX - n,
                               "ignore_eos": True, "temperature": 0})
            results, peak = td.at_once(moed, bodies)
            metrics = td.kv_metrics(moed)
            texts = {0: set(), 1: set()}
            for i, (st, body) in enumerate(results):
                self.assertEqual(st, 200, body)
                ch = body["choices"][0]
                self.assertEqual(ch["finish_reason"], "length", body)
                texts[i % 2].add(ch["text"])
            return texts, peak, metrics
        finally:
            log = moed.logtext()
            moed.stop()
            self.assertEqual(moed.proc.returncode, 0, log)

    def test_2bit_holds_4x_the_sequences_of_16bit(self):
        t16, peak16, m16 = self.serve(16, 4)
        t2, peak2, m2 = self.serve(2, 12)
        print("\nKV pool %s, context %d: 16-bit %d sequences at once (%d blocks of %d B), "
              "2-bit %d (%d blocks of %d B); admission waits %d / %d"
              % (POOL, CTX, peak16, m16["moed_kv_blocks_total"], m16["moed_kv_block_bytes"],
                 peak2, m2["moed_kv_blocks_total"], m2["moed_kv_block_bytes"],
                 m16["moed_kv_admission_waits_total"], m2["moed_kv_admission_waits_total"]), file=sys.stderr)
        self.assertEqual(peak16, 2)
        self.assertGreaterEqual(peak2, 4 * peak16)
        self.assertGreater(m16["moed_kv_admission_waits_total"], 0)  # the rest queued ...
        self.assertGreater(m2["moed_kv_admission_waits_total"], 0)
        self.assertEqual(m16["moed_kv_blocks_used"], 0)  # ... and every block came back
        self.assertEqual(m2["moed_kv_blocks_used"], 0)
        # fp16 blocks: one text per prompt, so nothing was mixed up between
        # sequences. (With KIVI the fp16/quantised split a prompt token sees
        # depends on where its prefill chunk ends, so texts may differ there.)
        self.assertEqual(len(t16[0]), 1)
        self.assertEqual(len(t16[1]), 1)
        self.assertLess(m2["moed_kv_bytes_per_token"], 0.2 * m16["moed_kv_bytes_per_token"])


if __name__ == "__main__":
    unittest.main()
