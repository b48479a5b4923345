"""The family tokenizers through the real tool: `moe-run --model DIR --tokenize
TEXT` on a directory that holds only a tokenizer (tokenizer.json and
tokenizer_config.json) and on its GGUF twin must print the ids Hugging Face
tokenizers gave (tests/data/tokenizers/<family>/expected.json, written by
tests/reference/make_family_tokenizer.py); an unknown pre-tokenizer fails
the command with its name. The architecture fixtures (tests/data/arch/NAME) carry their
family's tokenizer: `moe-run --tokenize` on the fixture itself, v5/ and model.gguf, gives the
same ids."""
import json
import os
import shutil
import struct
import subprocess
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("BIN", os.path.join(ROOT, "build", "bin"))
DATA = os.path.join(ROOT, "tests", "data", "tokenizers")
ARCH = os.path.join(ROOT, "tests", "data", "arch")
FAMILIES = sorted(d for d in os.listdir(DATA)
                  if os.path.isfile(os.path.join(DATA, d, "expected.json")))


def tokenize(model, text):
    p = subprocess.run([os.path.join(BIN, "moe-run"), "--model", model, "--tokenize", text],
                       capture_output=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError("moe-run --model %s failed (%d): %s" %
                             (model, p.returncode, p.stderr.decode()))
    return [int(i) for i in p.stdout.decode().split()]


def cases(family):
    with open(os.path.join(DATA, family, "expected.json"), encoding="utf-8") as f:
        exp = json.load(f)
    # a few per family: the argument vector cannot carry every case quickly;
    # the unit test runs them all through the library
    picked = [c for c in exp["cases"] if c.get("chat")] + exp["cases"][2:40:6]
    return exp, [c for c in picked if c["text"]]


class TokenizerFamilies(unittest.TestCase):
    def test_families_found(self):
        self.assertGreaterEqual(len(FAMILIES), 20)

    def test_tokenizer_directory(self):
        for family in FAMILIES:
            exp, picked = cases(family)
            for c in picked:
                self.assertEqual(tokenize(os.path.join(DATA, family), c["text"]), c["ids"],
                                 "%s: %r" % (family, c["text"][:60]))

    def test_gguf_twin(self):
        n = 0
        for family in FAMILIES:
            gguf = os.path.join(DATA, family, "vocab.gguf")
            if not os.path.exists(gguf):
                continue
            exp, picked = cases(family)
            for c in picked:
                self.assertEqual(tokenize(gguf, c["text"]), c["ids"],
                                 "%s (GGUF): %r" % (family, c["text"][:60]))
            n += 1
        self.assertGreaterEqual(n, 15)

    def test_unknown_gguf_pre_tokenizer_fails_naming_it(self):
        src = os.path.join(DATA, "qwen3", "vocab.gguf")
        with open(src, "rb") as f:
            data = f.read()
        old, new = b"tokenizer.ggml.pre", None
        at = data.index(old) + len(old)
        # the value: type (u32 8 = string), length (u64), bytes
        (typ,) = struct.unpack_from("<I", data, at)
        (n,) = struct.unpack_from("<Q", data, at + 4)
        self.assertEqual((typ, data[at + 12:at + 12 + n]), (8, b"qwen2"))
        new = data[:at + 4] + struct.pack("<Q", 10) + b"qwen2-next" + data[at + 12 + n:]
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "vocab.gguf")
            with open(path, "wb") as f:
                f.write(new)
            p = subprocess.run([os.path.join(BIN, "moe-run"), "--model", path, "--tokenize",
                                "hi"], capture_output=True, timeout=60)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn('tokenizer.ggml.pre "qwen2-next"', p.stderr.decode())

    def test_directory_without_config(self):
        # tokenizer.json alone: no BOS / EOS names, the same ids
        with tempfile.TemporaryDirectory() as d:
            shutil.copy(os.path.join(DATA, "deepseek-v3", "tokenizer.json"), d)
            exp, picked = cases("deepseek-v3")
            for c in picked[:3]:
                self.assertEqual(tokenize(d, c["text"]), c["ids"])

    def test_arch_fixtures(self):
        """Each fixture through its checkpoint directory and its GGUF, against the family's
        expected ids (the family found by the tokenizer.json bytes)."""
        def read(p):
            with open(p, "rb") as f:
                return f.read()
        by_bytes = {read(os.path.join(DATA, fam, "tokenizer.json")): fam for fam in FAMILIES}
        checked = 0
        for name in sorted(os.listdir(ARCH)):
            v5 = os.path.join(ARCH, name, "v5")
            if not os.path.isfile(os.path.join(v5, "tokenizer.json")):
                continue
            tok = read(os.path.join(v5, "tokenizer.json"))
            if tok == read(os.path.join(ROOT, "models", "tiny-moe", "tokenizer.json")):
                continue  # the demo model's tokenizer: test_tokenizer covers it
            self.assertIn(tok, by_bytes, "%s: tokenizer.json of no known family" % name)
            exp, _ = cases(by_bytes[tok])
            picked = [c for c in exp["cases"] if c["text"]]  # all: code, CJK, emoji, digits, spaces
            gguf = os.path.join(ARCH, name, "model.gguf")
            forms = [v5] + ([gguf] if b"tokenizer.ggml.model" in read(gguf) else [])
            for form in forms:
                for c in picked:
                    self.assertEqual(tokenize(form, c["text"]), c["ids"],
                                     "%s (%s): %r" % (name, os.path.basename(form), c["text"][:60]))
            checked += 1
        self.assertGreaterEqual(checked, 11)


if __name__ == "__main__":
    unittest.main()
