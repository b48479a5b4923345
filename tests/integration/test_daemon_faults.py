"""Fault isolation in batches, against a real moed: a tiny-moe pack with one
expert's blob corrupted on disk, served from the host tier ([offload] mode =
tiered, so every read of a blob is checksummed). Sixteen requests, some
routed to the bad expert and some not, sent alone and then all at once
(max_seqs = 16, one batch): a request that succeeds alone succeeds in the
batch with the same greedy text (0 bystanders failed), each request routed to
the bad expert fails with a message naming its layer and expert, and the
KV pool is whole again afterwards.

Which requests use the bad expert is known beforehand, from an access trace
of each request run alone on the sound pack ([offload] trace), and confirmed
by running each alone on the corrupt one."""
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_daemon as td  # noqa: E402

BASE_INI = td.INI
N_REQ = 16     # requests in the batch
N_TOK = 8      # tokens each generates (ignore_eos: exactly this many steps alone)

# short prompts: a request routes few enough tokens that some avoid an expert
CANDIDATES = [
    "ROMEO:", "JULIET:", "First Citizen:", "KING HENRY VI:", "To be, or not",
    "What", "O God", "Good my lord", "Come", "Away", "Speak", "Now", "Why",
    "How now", "Nay", "Ay", "My lord", "Sir", "Madam", "Peace", "Hark",
    "Farewell", "Alas", "GLOUCESTER:", "BRUTUS:", "HAMLET:", "MENENIUS:",
    "Second Citizen:", "Well", "Then", "And", "But", "I", "Thou", "He", "She",
    "We", "They", "Let", "Here",
]


def tier_ini(host_bytes, extra=""):
    return BASE_INI + "[offload]\nmode = tiered\nhost_bytes = %d\npolicy = lfru\n%s" % (
        host_bytes, extra)


def serve(pack, ini, env=None):
    td.INI = ini
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        moed = td.Moed(model=pack, max_seqs=N_REQ)
    finally:
        os.environ.clear()
        os.environ.update(old)
        td.INI = BASE_INI
    moed.wait_notify("READY=1")
    return moed


def complete(moed, prompt):
    return moed.json("POST", "/v1/completions", {"model": "tiny-moe", "prompt": prompt,
                                                 "max_tokens": N_TOK, "temperature": 0,
                                                 "ignore_eos": True})


def metric(moed, name):
    st, _, data = moed.request("GET", "/metrics")
    for line in data.decode().splitlines():
        m = re.match(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), line)
        if m:
            return float(m.group(1))
    raise AssertionError("no %s in /metrics" % name)


def corrupt_blob(path, layer, expert):
    """Flips one byte in the middle of the expert's blob, as a bad sector would."""
    with open(path, "r+b") as f:
        pre = f.read(64)
        assert pre[:8] == b"MOEPACK\0"
        hoff, hbytes = struct.unpack_from("<QQ", pre, 16)
        f.seek(hoff)
        header = json.loads(f.read(hbytes))
        ex = [x for x in header["experts"] if x["layer"] == layer and x["expert"] == expert][0]
        at = ex["offset"] + ex["size"] // 2
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x40]))


def read_trace(path):
    """{step: set((layer, expert))} of the access lines (guesses left out)."""
    steps = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#") or line.startswith("p ") or not line.strip():
                continue
            s, layer, *experts = (int(v) for v in line.split())
            steps.setdefault(s, set()).update((layer, e) for e in experts)
    return steps


class FaultIsolation(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="moed-faults-")
        cls.pack, cls.expert_bytes = td.pack_tiny(cls.dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def solo_on_sound_pack(self):
        """Each candidate alone, one after the other, on the sound pack with a
        trace: its text and the (layer, expert) pairs its steps used."""
        trace = os.path.join(self.dir, "solo.trace")
        moed = serve(self.pack, tier_ini(self.expert_bytes,
                                         "prefetch = no\ntrace = %s\n" % trace))
        texts = []
        try:
            for p in CANDIDATES:
                st, body = complete(moed, p)
                self.assertEqual(st, 200, body)
                self.assertEqual(body["usage"]["completion_tokens"], N_TOK)
                texts.append(body["choices"][0]["text"])
        finally:
            moed.stop()
        steps = read_trace(trace)
        # alone, each request is N_TOK forwards: its prompt in one, then N_TOK - 1 decodes
        self.assertEqual(sorted(steps), list(range(N_TOK * len(CANDIDATES))))
        used = [set().union(*(steps[s] for s in range(i * N_TOK, (i + 1) * N_TOK)))
                for i in range(len(CANDIDATES))]
        return texts, used

    def test_a_corrupt_blob_fails_only_the_requests_routed_to_it(self):
        texts, used = self.solo_on_sound_pack()
        # the expert that splits the candidates most evenly into users and not
        pairs = sorted(set().union(*used))
        users = {lx: [i for i in range(len(CANDIDATES)) if lx in used[i]] for lx in pairs}
        bad = max(pairs, key=lambda lx: (min(len(users[lx]), len(CANDIDATES) - len(users[lx])),
                                         lx))
        hit = users[bad]
        miss = [i for i in range(len(CANDIDATES)) if i not in hit]
        self.assertGreaterEqual(len(hit), 3, "no expert is used by enough candidates")
        self.assertGreaterEqual(len(miss), 3, "no expert is avoided by enough candidates")
        n_miss = min(len(miss), N_REQ - min(len(hit), N_REQ // 2))
        chosen = miss[:n_miss] + hit[:N_REQ - n_miss]
        self.assertEqual(len(chosen), N_REQ)

        bad_pack = os.path.join(self.dir, "tiny-q4-corrupt.moe")
        shutil.copyfile(self.pack, bad_pack)
        corrupt_blob(bad_pack, *bad)
        name = re.compile(r"\blayer %d expert %d\b" % bad)

        # alone on the corrupt pack: the trace's users fail naming the expert, the
        # others give the sound pack's text
        moed = serve(bad_pack, tier_ini(self.expert_bytes))
        alone_ok = []
        try:
            for i in chosen:
                st, body = complete(moed, CANDIDATES[i])
                if i in hit:
                    self.assertEqual(st, 500, body)
                    self.assertRegex(body["error"]["message"], name)
                    self.assertIn("checksum", body["error"]["message"])
                else:
                    self.assertEqual(st, 200, body)
                    self.assertEqual(body["choices"][0]["text"], texts[i])
                    alone_ok.append(i)
        finally:
            moed.stop()

        # all at once, on a fresh daemon whose first step stalls for a second so
        # that every request is queued before the batch runs: one batch of 16
        moed = serve(bad_pack, tier_ini(self.expert_bytes),
                     env={"MOED_TEST_ENGINE_STALL": "1"})
        results = {}
        try:
            go = threading.Barrier(N_REQ)

            def one(i):
                go.wait()
                results[i] = complete(moed, CANDIDATES[i])

            threads = [threading.Thread(target=one, args=(i,)) for i in chosen]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            # every sequence's cache went back to the pool, the failed ones' included
            deadline = time.time() + 10
            while metric(moed, "moed_kv_blocks_used") != 0 and time.time() < deadline:
                time.sleep(0.1)
            kv_used = metric(moed, "moed_kv_blocks_used")
            log = moed.logtext()
            self.assertEqual(moed.request("GET", "/health")[0], 200)
        finally:
            moed.stop()
        self.assertEqual(moed.proc.returncode, 0, log)
        self.assertEqual(len(results), N_REQ)

        bystanders_failed = [i for i in alone_ok
                             if results[i][0] != 200
                             or results[i][1]["choices"][0]["text"] != texts[i]]
        named = [i for i in hit if i in chosen and results[i][0] == 500
                 and name.search(results[i][1]["error"]["message"])]
        n_hit = len([i for i in chosen if i in hit])
        # the steps that failed rows: "engine: F of N tokens of a step ..."
        shared = [(int(a), int(b)) for a, b in
                  re.findall(r"engine: (\d+) of (\d+) tokens of a step needed an expert", log)]
        print("\nfault isolation: %d concurrent requests (max_seqs %d), layer %d expert %d "
              "corrupt on disk (used by %d of %d candidates alone)"
              % (N_REQ, N_REQ, bad[0], bad[1], len(hit), len(CANDIDATES)), file=sys.stderr)
        print("  bystanders (succeed alone): %d, failed in the batch: %d, text differing: %d"
              % (len(alone_ok), len(bystanders_failed),
                 len([i for i in alone_ok if results[i][0] == 200
                      and results[i][1]["choices"][0]["text"] != texts[i]])), file=sys.stderr)
        print("  routed to the bad expert: %d, failed naming it: %d" % (n_hit, len(named)),
              file=sys.stderr)
        print("  steps with failed rows: %d, tokens failed/in step: %s; KV blocks used after: %d"
              % (len(shared), ", ".join("%d/%d" % x for x in shared), kv_used), file=sys.stderr)
        for i in bystanders_failed:
            print("  bystander %r: %r" % (CANDIDATES[i], results[i]), file=sys.stderr)

        self.assertEqual(bystanders_failed, [])
        self.assertEqual(len(named), n_hit)
        for i in chosen:
            if i in hit:
                self.assertIn("checksum", results[i][1]["error"]["message"])
        # the batch was one: some failed step also computed other requests' tokens
        self.assertTrue(any(n > f for f, n in shared), shared)
        self.assertEqual(kv_used, 0)


if __name__ == "__main__":
    unittest.main()
