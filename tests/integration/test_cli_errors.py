"""Bad checkpoints and bad arguments: moe-run and moe-bench answer with exit
code 2 and one message naming the file and the tensor or field at fault,
never a crash. Each case breaks a copy of the bundled tiny model."""
import json
import os
import shutil
import struct
import subprocess
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("BIN", os.path.join(ROOT, "build", "bin"))
TINY = os.path.join(ROOT, "models", "tiny-moe")


def run(*args, timeout=60):
    p = subprocess.run([os.path.join(BIN, args[0])] + list(args[1:]), capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    return header, data


def write_safetensors(path, header, data):
    js = json.dumps(header).encode()
    js += b" " * (-len(js) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(js)) + js + data)


class BrokenCheckpoints(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="moe-errors-")
        self.dir = os.path.join(self.tmp, "model")
        os.mkdir(self.dir)
        for name in os.listdir(TINY):
            if name != "model.safetensors":
                shutil.copy(os.path.join(TINY, name), self.dir)
        self.st = os.path.join(self.dir, "model.safetensors")
        self.header, self.data = read_safetensors(os.path.join(TINY, "model.safetensors"))

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def expect_error(self, *needles, args=None):
        rc, out, err = run("moe-run", "--model", self.dir, "--prompt", "hi", "--max-tokens", "2",
                           *(args or []))
        self.assertEqual(rc, 2, "exit code (stderr: %s)" % err)
        self.assertEqual(out, "", "nothing on stdout")
        self.assertEqual(len(err.strip().splitlines()), 1, "one line: %r" % err)
        for n in needles:
            self.assertIn(n, err)
        return err

    def write_header(self):
        write_safetensors(self.st, self.header, self.data)

    def test_missing_directory_is_named(self):
        rc, _, err = run("moe-run", "--model", self.tmp + "/nope", "--prompt", "x")
        self.assertEqual(rc, 2)
        self.assertIn("nope: cannot open: No such file or directory", err)

    def test_missing_config_json(self):
        self.write_header()
        os.remove(os.path.join(self.dir, "config.json"))
        self.expect_error("config.json", "cannot open")

    def test_invalid_config_json(self):
        self.write_header()
        with open(os.path.join(self.dir, "config.json"), "w") as f:
            f.write("{ not json")
        self.expect_error("config.json", "invalid JSON")

    def test_unsupported_architecture(self):
        self.write_header()
        cfg = json.load(open(os.path.join(self.dir, "config.json")))
        cfg["architectures"] = ["LlamaForCausalLM"]
        cfg["model_type"] = "llama"
        json.dump(cfg, open(os.path.join(self.dir, "config.json"), "w"))
        self.expect_error("config.json", "unsupported architecture 'LlamaForCausalLM'")

    def test_config_field_of_wrong_type(self):
        self.write_header()
        cfg = json.load(open(os.path.join(self.dir, "config.json")))
        cfg["hidden_size"] = "256"
        json.dump(cfg, open(os.path.join(self.dir, "config.json"), "w"))
        self.expect_error("config.json", "'hidden_size' must be an integer")

    def test_missing_safetensors(self):
        self.expect_error("model.safetensors")

    def test_missing_tensor(self):
        name = "model.layers.2.self_attn.k_proj.weight"
        self.header["renamed.k_proj.weight"] = self.header.pop(name)
        self.write_header()
        self.expect_error("missing tensor '%s'" % name)

    def test_missing_expert_tensor(self):
        name = "model.layers.3.block_sparse_moe.experts.7.w2.weight"
        del self.header[name]
        self.write_header()
        self.expect_error("missing tensor '%s'" % name)

    def test_wrong_shape(self):
        name = "model.layers.1.self_attn.q_proj.weight"
        self.header[name]["shape"] = [128, 512]  # same bytes, wrong shape
        self.write_header()
        self.expect_error("model.safetensors", name, "expected shape [256, 256], found [128, 512]")

    def test_wrong_dtype(self):
        name = "model.layers.0.block_sparse_moe.gate.weight"
        self.header[name]["dtype"] = "I16"  # same item size
        self.write_header()
        self.expect_error("model.safetensors", name, "unsupported dtype")

    def test_truncated_file(self):
        self.write_header()
        size = os.path.getsize(self.st)
        with open(self.st, "r+b") as f:
            f.truncate(size // 2)
        self.expect_error("model.safetensors")

    def test_corrupt_header(self):
        with open(self.st, "wb") as f:
            f.write(struct.pack("<Q", 40) + b"{\"a\": [1, 2" + b"\x00" * 29 + self.data[:64])
        self.expect_error("model.safetensors")

    def test_huge_header_length(self):
        with open(self.st, "wb") as f:
            f.write(struct.pack("<Q", 1 << 60) + b"{}")
        self.expect_error("model.safetensors")


class BrokenGguf(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="moe-errors-")

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def gguf(self, body):
        path = os.path.join(self.tmp, "m.gguf")
        with open(path, "wb") as f:
            f.write(body)
        return path

    def test_truncated_gguf(self):
        path = self.gguf(b"GGUF" + struct.pack("<IQQ", 3, 5, 100))
        rc, _, err = run("moe-run", "--model", path, "--prompt", "x")
        self.assertEqual(rc, 2)
        self.assertIn("m.gguf", err)

    def test_unsupported_gguf_architecture(self):
        key = b"general.architecture"
        val = b"bert"
        body = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
        body += struct.pack("<Q", len(key)) + key + struct.pack("<I", 8)
        body += struct.pack("<Q", len(val)) + val
        path = self.gguf(body)
        rc, _, err = run("moe-run", "--model", path, "--prompt", "x")
        self.assertEqual(rc, 2)
        self.assertIn("unsupported architecture 'bert'", err)

    def test_not_a_model_file(self):
        path = self.gguf(b"hello, world\n")
        rc, _, err = run("moe-run", "--model", path, "--prompt", "x")
        self.assertEqual(rc, 2)
        self.assertIn("not a model", err)


class BadArguments(unittest.TestCase):
    def test_bad_number_is_named(self):
        rc, _, err = run("moe-run", "--model", TINY, "--prompt", "x", "--max-tokens", "ten")
        self.assertEqual(rc, 2)
        self.assertIn("--max-tokens", err)

    def test_unknown_option(self):
        rc, _, err = run("moe-run", "--model", TINY, "--prompt", "x", "--bogus")
        self.assertEqual(rc, 2)
        self.assertIn("unknown option '--bogus'", err)

    def test_missing_prompt(self):
        rc, _, err = run("moe-run", "--model", TINY)
        self.assertEqual(rc, 2)
        self.assertIn("--prompt", err)

    def test_bench_unknown_command(self):
        rc, _, err = run("moe-bench", "fly", "--model", TINY)
        self.assertEqual(rc, 2)
        self.assertIn("unknown command 'fly'", err)

    def test_bench_token_outside_vocabulary(self):
        out = tempfile.mktemp()
        rc, _, err = run("moe-bench", "logits", "--model", TINY, "--ids", "1 5000", "--out", out)
        self.assertEqual(rc, 2)
        self.assertIn("token id 5000 outside the vocabulary", err)

    def test_bench_greedy_bad_ids(self):
        rc, _, err = run("moe-bench", "greedy", "--model", TINY)
        self.assertEqual(rc, 2)
        self.assertIn("--ids is required", err)
        rc, _, err = run("moe-bench", "greedy", "--model", TINY, "--ids", "1 -3")
        self.assertEqual(rc, 2)
        self.assertIn("not a list of token ids: '1 -3'", err)
        rc, _, err = run("moe-bench", "greedy", "--model", TINY, "--ids", "1 5000", "--tokens", "2")
        self.assertEqual(rc, 2)
        self.assertIn("token id 5000 outside the vocabulary", err)

    def test_bench_greedy_ids(self):
        rc, out, err = run("moe-bench", "greedy", "--model", TINY, "--ids", "1022 812 58", "--tokens", "4")
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out)["ids"], [10, 65, 104, 44])  # models/tiny-moe/reference.json


if __name__ == "__main__":
    unittest.main()
