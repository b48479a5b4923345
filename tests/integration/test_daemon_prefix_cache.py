"""Automatic prefix caching ([kv] prefix_cache, issue 18) through a real moed:

  - multi-turn chats of several users sharing a system prompt, run concurrently: with the cache
    on, every answer is the one the cache-off daemon gives, while most prompt tokens come from
    the cache (/admin/stats, and the hit rate on /metrics);
  - a Gated DeltaNet hybrid (tests/data/arch/qwen3_next): a prompt that extends a finished
    sequence reuses its recurrent state (and its blocks); one that only shares part of it
    cannot, and prefills; the answers equal the cache-off daemon's;
  - a pool too small to keep the entries: they go as admissions need the blocks, and every
    request completes.
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_daemon as td  # noqa: E402

BASE = td.INI
SYSTEM = "You are a careful reader of Shakespeare. " * 12
USERS = ["Who speaks first?", "What do the citizens want?", "Name a Roman.", "Is Caius hated?"]
HYBRID = os.path.join(td.ROOT, "tests", "data", "arch", "qwen3_next", "v5")


def daemon(on, model=td.TINY, name="tiny-moe", kv_bytes=None):
    extra = "[kv]\nkey_bits = 16\nvalue_bits = 16\nprefix_cache = %s\n" % ("yes" if on else "no")
    if kv_bytes:
        extra += "bytes = %s\n" % kv_bytes
    td.INI = td.ini_edit(BASE, {}, extra)
    try:
        m = td.Moed(model=model, name=name, max_ctx=1024)
    finally:
        td.INI = BASE
    m.wait_notify("READY=1")
    return m


def chats(m, turns=3):
    """every user's conversation, turn by turn, the users at once"""
    history = [[{"role": "system", "content": SYSTEM}] for _ in USERS]
    for turn in range(turns):
        for h, q in zip(history, USERS):
            h.append({"role": "user", "content": "%s (%d)" % (q, turn)})
        res, _ = td.at_once(m, [{"messages": h, "max_tokens": 12, "temperature": 0}
                                for h in history], path="/v1/chat/completions")
        for h, (st, out) in zip(history, res):
            assert st == 200, out
            h.append(out["choices"][0]["message"])
    return [[x["content"] for x in h if x["role"] == "assistant"] for h in history]


def metric(m, name):
    _, _, data = m.request("GET", "/metrics")
    for line in data.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.split()[-1])
    return None


class PrefixCache(unittest.TestCase):
    def test_multi_turn_chats_equal_and_mostly_cached(self):
        off = daemon(False)
        want = chats(off)
        off.stop()
        on = daemon(True)
        self.addCleanup(on.stop)
        self.assertEqual(chats(on), want)
        st = on.json("GET", "/admin/stats")[1]["engine"]
        print("\nprefix cache: %d of %d prompt tokens from the cache, %d entries"
              % (st["prompt_tokens_cached"], st["prompt_tokens"], st["prefix_entries"]),
              file=sys.stderr)
        self.assertGreater(st["prompt_tokens_cached"], 0.5 * st["prompt_tokens"])
        self.assertAlmostEqual(metric(on, "moed_prefix_cache_hit_rate"),
                               st["prompt_tokens_cached"] / st["prompt_tokens"], places=3)

    def test_hybrid_reuses_a_state_it_extends(self):
        a = [3 + (i * 37) % 1000 for i in range(100)]
        reqs = [{"prompt": a, "max_tokens": 1},                 # the entry: a, state at 100
                {"prompt": a + [5, 6, 7], "max_tokens": 6},     # extends it: a hit of 100
                {"prompt": a[:50] + [9], "max_tokens": 6}]      # half of it: no state there
        got = {}
        for on in (False, True):
            m = daemon(on, model=HYBRID, name="qwen3-next")
            got[on] = [m.json("POST", "/v1/completions", dict(r, temperature=0))[1]
                       for r in reqs]
            st = m.json("GET", "/admin/stats")[1]["engine"]
            m.stop()
        self.assertEqual([o["choices"][0]["text"] for o in got[True]],
                         [o["choices"][0]["text"] for o in got[False]])
        self.assertEqual(st["prompt_tokens_cached"], 100)

    def test_a_small_pool_gives_entries_up(self):
        on = daemon(True, kv_bytes="3M")  # a few full contexts of tiny-moe
        self.addCleanup(on.stop)
        prompts = ["%d: %s\n" % (i, "Speak, speak. " * 60) for i in range(8)]  # no sharing
        for p in prompts:
            st, out = on.json("POST", "/v1/completions", {"prompt": p, "max_tokens": 4})
            self.assertEqual(st, 200, out)
        res, _ = td.at_once(on, [{"prompt": p, "max_tokens": 4} for p in prompts])
        self.assertEqual([r[0] for r in res], [200] * len(prompts))
        st = on.json("GET", "/admin/stats")[1]["engine"]
        self.assertLess(st["prefix_entries"], len(prompts))  # some went for room


if __name__ == "__main__":
    unittest.main()
