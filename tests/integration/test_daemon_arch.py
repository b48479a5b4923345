"""Every architecture of tests/data/arch served by a real moed through a QMoE pack, chatting in
its family's format.

For each fixture with a tokenizer: moe-pack makes a qmoe pack of v5/ (GPTQ over the training
text), moed serves it with the family's chat format, and
  - POST /v1/chat/completions (greedy) answers 200 with text, and its prompt is the one the
    family's real template renders: the same request as a plain /v1/completions of transformers'
    rendering (tests/data/chat/<format>.json, made by apply_chat_template) gives the same
    prompt tokens and the same text;
  - two concurrent chats (batched in one step) give what each gives alone;
  - served from a host tier holding half of the experts ([offload] mode = tiered; one layer's
    worth at least), the same text (the tier's views carry each expert's biases; prefetch
    routes as the model does).
"""
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_daemon as td  # noqa: E402  (the daemon harness)
from test_daemon import BIN, ROOT, Moed  # noqa: E402

DATA = os.path.join(ROOT, "tests", "data", "arch")
CHAT = os.path.join(ROOT, "tests", "data", "chat")
TEXT = os.path.join(ROOT, "data", "tinyshakespeare.txt")
VALID_START = 1003788  # tinyshakespeare's validation text starts here: calibrate before it

# fixture -> the chat format of its family (dots.llm1's own template is not in the repo: ChatML)
FORMAT = {
    "deepseek_v3": "deepseek-v3", "kimi_k2": "kimi-k2", "deepseek_v2": "deepseek-v2",
    "deepseek_v2_lite": "deepseek-v2", "glm4_moe": "glm-4.5", "glm4_moe_noqk": "glm-4.5",
    "gpt_oss": "gpt-oss", "minimax_m2": "minimax-m2", "ernie4_5_moe": "ernie-4.5",
    "dots1": "chatml", "mixtral_swa": "mistral", "qwen3_moe_v5": "qwen3",
    "qwen3_next": "qwen3", "qwen3_5_moe": "qwen3.5",
}
SYSTEM, USER = "You are a helpful assistant.", "What is 2 + 2?"
BASE_INI = td.INI


def fixtures():
    return sorted(d for d in os.listdir(DATA)
                  if os.path.isfile(os.path.join(DATA, d, "v5", "tokenizer.json")))


def rendered(fmt):
    """transformers' rendering of [system, user] with the generation prompt, and the BOS text
    it starts with (None if none)."""
    path = os.path.join(CHAT, fmt + ".json")
    if os.path.isfile(path):
        with open(path) as f:
            d = json.load(f)
        for case in d["cases"]:
            if case["messages"] == [{"role": "system", "content": SYSTEM},
                                    {"role": "user", "content": USER}]:
                text = case["expected"]
                if d.get("date"):  # the daemon writes today's date (gpt-oss)
                    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
                    text = text.replace(d["date"], today)
                return text, d.get("bos")
        raise AssertionError(f"{path}: no system + user case")
    # the formats moed has had longer, written out as their templates render them
    if fmt == "chatml":
        return ("<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n"
                "<|im_start|>assistant\n" % (SYSTEM, USER)), None
    if fmt == "mistral":
        return "<s> [INST] %s\n\n%s [/INST]" % (SYSTEM, USER), "<s>"
    raise AssertionError(fmt)


class ArchThroughDaemon(unittest.TestCase):
    def pack(self, name):
        tmp = tempfile.mkdtemp(prefix="moed-arch-")
        self.addCleanup(shutil.rmtree, tmp, True)
        pack = os.path.join(tmp, name + ".moe")
        r = subprocess.run([os.path.join(BIN, "moe-pack"), "--model", os.path.join(DATA, name, "v5"),
                            "--out", pack, "--experts", "qmoe", "--calib", TEXT,
                            "--calib-tokens", "512", "--calib-end-char", str(VALID_START)],
                           capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, f"{name}: moe-pack: {r.stderr[-800:]}")
        return pack, json.loads(r.stdout.strip().splitlines()[-1])["expert_bytes"]

    def serve(self, name, pack, tier_bytes=0):
        with open(os.path.join(DATA, name, "v5", "config.json")) as f:
            ctx = json.load(f)["max_position_embeddings"]
        if tier_bytes:
            td.INI = td.INI + "[offload]\nmode = tiered\nhost_bytes = %d\n" % tier_bytes
        try:
            d = Moed(model=pack, name=name, chat_template=FORMAT[name], max_ctx=ctx)
        finally:
            td.INI = BASE_INI
        self.addCleanup(d.stop)
        d.wait_notify("READY=1")
        return d

    def chat(self, d, max_tokens=8):
        st, body = d.json("POST", "/v1/chat/completions", {
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
            "max_tokens": max_tokens, "temperature": 0})
        self.assertEqual(st, 200, body)
        return body

    def check(self, name):
        pack, expert_bytes = self.pack(name)
        d = self.serve(name, pack)
        chat = self.chat(d)
        msg = chat["choices"][0]["message"]
        self.assertEqual(msg["role"], "assistant")
        self.assertIsInstance(msg["content"], str)
        self.assertIn(chat["choices"][0]["finish_reason"], ("stop", "length"))
        self.assertGreater(chat["usage"]["completion_tokens"], 0)
        # the daemon rendered what transformers renders: same tokens, same greedy text
        text, bos = rendered(FORMAT[name])
        with open(os.path.join(DATA, name, "v5", "tokenizer_config.json")) as f:
            add_bos = json.load(f).get("add_bos_token", False)
        if bos and add_bos and text.startswith(bos):
            text = text[len(bos):]  # the tokenizer adds it, as for the chat
        st, comp = d.json("POST", "/v1/completions",
                          {"prompt": text, "max_tokens": 8, "temperature": 0})
        self.assertEqual(st, 200, comp)
        self.assertEqual(comp["usage"]["prompt_tokens"], chat["usage"]["prompt_tokens"],
                         f"{name}: the chat prompt is not {FORMAT[name]}'s rendering")
        self.assertEqual(comp["choices"][0]["text"], msg["content"])
        # batched with another request, each gets what it gets alone
        out = [None, None]

        def one(i):
            out[i] = self.chat(d)["choices"][0]["message"]["content"]
        ts = [threading.Thread(target=one, args=(i,)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(out, [msg["content"], msg["content"]])
        # the experts from a host tier of half their blobs: the same text
        d.stop()
        r = subprocess.run([os.path.join(BIN, "moe-bench"), "config", "--model", pack],
                           capture_output=True, text=True, check=True)
        cfg = json.loads(r.stdout)
        E, moe_layers = cfg["n_experts"], cfg["layer_dense"].count(False)
        blob = 4096 * -(-expert_bytes // (4096 * E * moe_layers))  # blobs are 4 KiB-aligned
        tiered = self.serve(name, pack, tier_bytes=max(E * blob, E * moe_layers * blob // 2))
        self.assertEqual(self.chat(tiered)["choices"][0]["message"]["content"], msg["content"])


def _add_tests():
    for name in fixtures():
        def t(self, name=name):
            self.check(name)
        t.__doc__ = f"{name}: a qmoe pack served by moed, chat in {FORMAT.get(name)}"
        setattr(ArchThroughDaemon, f"test_{name}", t)


_add_tests()

if __name__ == "__main__":
    unittest.main()
