"""The bundled tiny-moe model end to end through the real tools: greedy
continuations token for token, validation perplexity, and the tokenizer
cases of models/tiny-moe/reference.json."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("BIN", os.path.join(ROOT, "build", "bin"))
TINY = os.path.join(ROOT, "models", "tiny-moe")
REF = json.load(open(os.path.join(TINY, "reference.json")))
CORPUS = os.path.join(ROOT, "data", "tinyshakespeare.txt")


def tool(*args, timeout=600):
    p = subprocess.run([os.path.join(BIN, args[0])] + list(args[1:]), capture_output=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise AssertionError("%s failed (%d): %s" % (args, p.returncode, p.stderr.decode()))
    return p.stdout.decode("utf-8")


class TinyMoe(unittest.TestCase):
    def test_greedy_continuations_match_token_for_token(self):
        for pr in REF["prompts"]:
            n = len(pr["greedy_ids"])
            ids = tool("moe-run", "--model", TINY, "--prompt", pr["text"], "--max-tokens", str(n),
                       "--temperature", "0", "--print-ids").split()
            self.assertEqual([int(i) for i in ids], pr["greedy_ids"], pr["text"])

    def test_greedy_text_matches(self):
        for pr in REF["prompts"]:
            n = len(pr["greedy_ids"])
            out = tool("moe-run", "--model", TINY, "--prompt", pr["text"], "--max-tokens", str(n),
                       "--temperature", "0")
            self.assertEqual(out, pr["greedy_text"])

    def test_same_seed_same_text(self):
        args = ["moe-run", "--model", TINY, "--prompt", "ROMEO:", "--max-tokens", "24",
                "--temperature", "0.9", "--seed"]
        a, b, c = tool(*args, "7"), tool(*args, "7"), tool(*args, "8")
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)

    def test_stop_string_ends_generation(self):
        out = tool("moe-run", "--model", TINY, "--prompt", "ROMEO:", "--max-tokens", "32",
                   "--temperature", "0", "--stop", "boot")
        self.assertEqual(out, "\nAh, I'll not be a ")

    def test_prompt_tokens_match_reference(self):
        for pr in REF["prompts"]:
            ids = tool("moe-run", "--model", TINY, "--tokenize", pr["text"]).split()
            self.assertEqual([int(i) for i in ids], pr["ids"][1:])  # without the BOS

    def test_tokenizer_cases_through_cli(self):
        for case in REF["tokenizer_cases"]:
            ids = tool("moe-run", "--model", TINY, "--tokenize", case["text"]).split()
            self.assertEqual([int(i) for i in ids], case["ids"], repr(case["text"]))

    def test_validation_perplexity_within_0_1_percent(self):
        out = tool("moe-bench", "ppl", "--model", TINY, "--text", CORPUS, "--start-char",
                   str(REF["valid_start_char"]), "--window", str(REF["valid_ppl_window"]))
        res = json.loads(out)
        want = REF["valid_ppl"]
        print("\nvalidation ppl %.6f (reference %.6f, %.4f%%), %d tokens, %.1f tok/s" % (
            res["ppl"], want, 100 * abs(res["ppl"] - want) / want, res["tokens"], res["tok_s"]))
        self.assertLess(abs(res["ppl"] - want) / want, 1e-3)
        self.assertIn(res["tokens"], (REF["valid_tokens"], REF["valid_tokens"] - 1))

    def test_gguf_and_safetensors_of_the_same_weights_agree(self):
        import numpy as np
        ids = " ".join(map(str, REF["prompts"][2]["ids"]))
        with tempfile.TemporaryDirectory() as d:
            tool("moe-bench", "logits", "--model", TINY, "--ids", ids, "--out", d + "/hf.bin")
            hf = np.fromfile(d + "/hf.bin", np.float32)
            for t in ("bf16", "f32"):
                subprocess.run([sys.executable, os.path.join(ROOT, "tests/reference/hf_to_gguf.py"),
                                "--model", TINY, "--out", d + "/m.gguf", "--type", t],
                               check=True, capture_output=True)
                tool("moe-bench", "logits", "--model", d + "/m.gguf", "--ids", ids, "--out",
                     d + "/g.bin")
                diff = float(np.abs(np.fromfile(d + "/g.bin", np.float32) - hf).max())
                print("\nsafetensors vs GGUF %s: max abs logit difference %.3g" % (t, diff))
                self.assertLess(diff, 2e-3)


if __name__ == "__main__":
    unittest.main()
