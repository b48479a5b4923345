"""moed serving a pack from a host tier ([offload] mode = tiered): the same
greedy text as the mapped pack with a quarter of the experts resident, the
tier's counters on /metrics, a read error injected into the NVMe path
failing only the requests that needed the expert (named in the message)
while the daemon keeps serving, and bad settings refused at start."""
import os
import re
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_daemon as td  # noqa: E402

BASE_INI = td.INI


def tier_ini(mode, host_bytes=0, extra=""):
    return BASE_INI + "[offload]\nmode = %s\nhost_bytes = %d\npolicy = lfru\n%s" % (
        mode, host_bytes, extra)


class Tiered(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="moed-tier-")
        cls.pack, cls.expert_bytes = td.pack_tiny(cls.dir)

    def serve(self, ini, env=None):
        td.INI = ini
        old = dict(os.environ)
        os.environ.update(env or {})
        try:
            moed = td.Moed(model=self.pack)
        finally:
            os.environ.clear()
            os.environ.update(old)
            td.INI = BASE_INI
        return moed

    def complete(self, moed, prompt, n=24):
        return moed.json("POST", "/v1/completions", {"model": "tiny-moe", "prompt": prompt,
                                                     "max_tokens": n, "temperature": 0})

    def metrics(self, moed):
        st, _, data = moed.request("GET", "/metrics")
        out = {}
        for line in data.decode().splitlines():
            m = re.match(r'^(moed_(?:tier|nvme|prefetch)\w*)(\{[^}]*\})? (\S+)$', line)
            if m:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
        return out

    def test_a_quarter_tier_serves_the_mapped_packs_text(self):
        prompts = ["ROMEO:", "KING HENRY VI:\nWhat", "To be, or not"]
        moed = self.serve(tier_ini("mmap"))
        try:
            moed.wait_notify("READY=1")
            want = [self.complete(moed, p)[1]["choices"][0]["text"] for p in prompts]
        finally:
            moed.stop()
        budget = self.expert_bytes // 4
        moed = self.serve(tier_ini("tiered", budget))
        try:
            moed.wait_notify("READY=1")
            for p, w in zip(prompts, want):
                st, body = self.complete(moed, p)
                self.assertEqual(st, 200, body)
                self.assertEqual(body["choices"][0]["text"], w)
            m = self.metrics(moed)
            self.assertGreater(m['moed_tier_lookups_total{tier="host",result="miss"}'], 0)
            self.assertGreater(m['moed_tier_lookups_total{tier="host",result="hit"}'], 0)
            self.assertGreater(m['moed_tier_evictions_total{tier="host"}'], 0)
            self.assertLessEqual(m['moed_tier_budget_bytes{tier="host"}'], budget)
            self.assertLessEqual(m['moed_tier_resident_bytes{tier="host"}'],
                                 m['moed_tier_budget_bytes{tier="host"}'])
            self.assertIn("host tier:", moed.logtext())
        finally:
            moed.stop()
        self.assertEqual(moed.proc.returncode, 0)

    def test_every_prefetch_mode_gives_the_same_text_and_counts_what_it_did(self):
        budget = self.expert_bytes // 4
        texts, counts = {}, {}
        for mode in ("no", "yes", "auto"):
            moed = self.serve(tier_ini("tiered", budget, "prefetch = %s\n" % mode))
            try:
                moed.wait_notify("READY=1")
                st, body = self.complete(moed, "ROMEO:", n=32)
                self.assertEqual(st, 200, body)
                texts[mode] = body["choices"][0]["text"]
                m = self.metrics(moed)
                counts[mode] = (m['moed_prefetch_total{result="issued"}'],
                                m['moed_prefetch_total{result="skipped"}'])
                self.assertIn("prefetch %s" % mode, moed.logtext())
            finally:
                moed.stop()
        self.assertEqual(texts["no"], texts["yes"])
        self.assertEqual(texts["no"], texts["auto"])
        self.assertEqual(counts["no"], (0, 0))
        self.assertGreater(counts["yes"][0], 0)
        self.assertEqual(counts["yes"][1], 0)
        self.assertGreater(sum(counts["auto"]), 0)  # every guess either read or skipped

    def test_a_read_error_fails_only_the_requests_that_needed_the_expert(self):
        # every expert of layer 0 fails its next 3 reads: more than the 2 retries
        faults = ",".join("eio:0:%d:3" % e for e in range(8))
        moed = self.serve(tier_ini("tiered", self.expert_bytes // 4),
                          env={"MOED_NVME_FAULT": faults})
        try:
            moed.wait_notify("READY=1")
            st, body = self.complete(moed, "ROMEO:", 4)
            self.assertEqual(st, 500, body)
            msg = body["error"]["message"]
            self.assertRegex(msg, r"layer 0 expert \d")
            self.assertIn("read error", msg)
            self.assertEqual(moed.request("GET", "/health")[0], 200)
            # each failed request used up its experts' faults: the disk "heals"
            ok = False
            for _ in range(12):
                st, body = self.complete(moed, "ROMEO:", 4)
                if st == 200:
                    ok = True
                    break
                self.assertIn("layer 0 expert", body["error"]["message"])
            self.assertTrue(ok, "moed never recovered from the injected read errors")
        finally:
            moed.stop()
        self.assertEqual(moed.proc.returncode, 0)

    def refused(self, ini, model, pattern):
        td.INI = ini
        try:
            moed = td.Moed(model=model)
        finally:
            td.INI = BASE_INI
        try:
            moed.proc.wait(60)
            self.assertEqual(moed.proc.returncode, 2, moed.logtext())
            self.assertRegex(moed.logtext(), pattern)
        finally:
            moed.stop()

    def test_tiered_without_a_pack_is_refused_at_start(self):
        self.refused(tier_ini("tiered"), td.TINY, r"needs a moed pack")

    def test_a_host_budget_below_one_layers_experts_is_refused_at_start(self):
        self.refused(tier_ini("tiered", self.expert_bytes // 16), self.pack, r"host_bytes")


if __name__ == "__main__":
    unittest.main()
