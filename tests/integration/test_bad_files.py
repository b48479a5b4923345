"""Bad model files as a user meets them: each test copies a checkpoint of
tests/data/arch (the safetensors directory v5/ or model.gguf) into a temporary
directory, breaks it one way and requires moe-run and moe-bench to exit 2 with
one line on stderr naming the file and the tensor (or key) at fault:

- tensor data at a misaligned offset (an unpadded safetensors header, one
  shifted tensor, a GGUF offset off general.alignment or off its type's size);
- NaN or infinity patterns written over a dense matrix, a norm vector (refused
  at load, where vectors are converted to fp32) or an expert stack, in GGUF
  and safetensors (refused when the logits come out non-finite);
- truncated files, headers claiming more bytes than the file has, duplicate
  tensor names, a config.json key that would change the math.

moe-run loads the fixture with its own tokenizer; moe-bench logits takes the
fixture's reference prompt ids. Standard library only (no numpy needed).
"""
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

ROOT = os.environ.get("MOE_ROOT") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
BIN = os.environ.get("BIN") or os.path.join(ROOT, "build", "bin")
if not os.path.isabs(BIN):
    BIN = os.path.join(ROOT, BIN)
ARCH = os.path.join(ROOT, "tests", "data", "arch")
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import gguf_layout  # noqa: E402  (standard library only)

BF16_NAN = b"\xc0\x7f"  # 0x7fc0
BF16_INF = b"\x80\x7f"  # 0x7f80
F32_NAN = struct.pack("<I", 0x7FC00000)
F32_NEG_INF = struct.pack("<f", float("-inf"))


def run(tool, *args, timeout=120):
    p = subprocess.run([os.path.join(BIN, tool)] + [str(a) for a in args], capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def prompt_ids(arch):
    with open(os.path.join(ARCH, arch, "reference.json")) as f:
        return " ".join(str(i) for i in json.load(f)["prompt_ids"])


# ---- safetensors -----------------------------------------------------------------------

class Safetensors:
    """A safetensors file held in memory: header (dict in file order), data section."""

    def __init__(self, path):
        with open(path, "rb") as f:
            raw = f.read()
        n = struct.unpack("<Q", raw[:8])[0]
        self.header = json.loads(raw[8:8 + n])
        self.data = bytearray(raw[8 + n:])

    def span(self, name):
        return self.header[name]["data_offsets"]

    def header_bytes(self, extra_pad=0):
        js = json.dumps(self.header, separators=(",", ":")).encode()
        return js + b" " * ((-len(js) % 8) + extra_pad)

    def write(self, path, extra_pad=0, header=None):
        js = header if header is not None else self.header_bytes(extra_pad)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(js)) + js + bytes(self.data))

    def fill(self, name, pattern, first=0, count=None):
        """Writes pattern over elements [first, first + count) of tensor name."""
        b, e = self.span(name)
        size = len(pattern)
        count = (e - b) // size - first if count is None else count
        for i in range(first, first + count):
            self.data[b + i * size:b + (i + 1) * size] = pattern


# ---- GGUF --------------------------------------------------------------------------------

class Gguf(gguf_layout.Gguf):
    """A GGUF fixture parsed (gguf_layout) far enough to move and overwrite tensors."""

    def __init__(self, path):
        with open(path, "rb") as f:
            super().__init__(f.read())
        assert "general.alignment" not in self.keys  # the fixtures keep the default 32

    def file_offset(self, name):
        return self.data_start + self.tensor(name)["offset"]

    def fill(self, name, pattern, first=0, count=None):
        t = self.tensor(name)
        b, size = self.file_offset(name), len(pattern)
        count = t["nbytes"] // size - first if count is None else count
        for i in range(first, first + count):
            self.raw[b + i * size:b + (i + 1) * size] = pattern

    def write(self, path):
        with open(path, "wb") as f:
            f.write(bytes(self.raw))

    def rebuilt(self, alignment, place):
        """The same file with general.alignment = alignment appended to the metadata and
        each tensor's data moved to place(tensor, next free offset) (relative to the data
        section, which starts at the first multiple of alignment after the infos)."""
        key = b"general.alignment"
        kv = self.kv + struct.pack("<Q", len(key)) + key + struct.pack("<II", 4, alignment)
        offsets, free = [], 0
        for t in self.tensors:
            off = place(t, free)
            offsets.append(off)
            free = off + t["nbytes"]
        moved = [dict(t, offset=off) for t, off in zip(self.tensors, offsets)]
        head = gguf_layout.gguf_bytes(self.version, self.n_kv + 1, kv, moved, alignment)
        head += b"\0" * (-len(head) % alignment)
        data = bytearray(free)
        for t, off in zip(self.tensors, offsets):
            data[off:off + t["nbytes"]] = self.data(t)
        return head, bytes(data)


# ---- the tests' common part --------------------------------------------------------------

class BadFileCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="moe-badfiles-")

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def hf_copy(self, arch):
        """v5/ of arch copied but for its weights (config, generation config, tokenizer)."""
        d = os.path.join(self.tmp, arch)
        os.mkdir(d)
        src = os.path.join(ARCH, arch, "v5")
        for name in os.listdir(src):
            if name != "model.safetensors":
                shutil.copy(os.path.join(src, name), d)
        return d, Safetensors(os.path.join(src, "model.safetensors"))

    def gguf_copy(self, arch):
        return os.path.join(self.tmp, arch + ".gguf"), Gguf(os.path.join(ARCH, arch,
                                                                          "model.gguf"))

    def check_message(self, rc, out, err, needles, stdout_empty=True):
        self.assertEqual(rc, 2, "exit code 2 (stderr: %s)" % err)
        if stdout_empty:
            self.assertEqual(out, "", "nothing on stdout")
        self.assertEqual(len(err.strip().splitlines()), 1, "one line: %r" % err)
        for n in needles:
            self.assertIn(n, err)
        return err

    def expect_run(self, model, *needles):
        rc, out, err = run("moe-run", "--model", model, "--prompt", "hello world",
                           "--max-tokens", "3")
        return self.check_message(rc, out, err, needles, stdout_empty=False)

    def expect_bench(self, model, arch, *needles):
        logits = os.path.join(self.tmp, "logits.bin")
        rc, out, err = run("moe-bench", "logits", "--model", model, "--ids", prompt_ids(arch),
                           "--out", logits)
        return self.check_message(rc, out, err, needles)

    def expect_greedy(self, model, arch, *needles):
        rc, out, err = run("moe-bench", "greedy", "--model", model, "--ids", prompt_ids(arch),
                           "--tokens", "2")
        return self.check_message(rc, out, err, needles)


# ---- (a) misaligned tensor data ------------------------------------------------------------

class Misaligned(BadFileCase):
    def test_fixtures_are_aligned(self):
        """the unbroken fixtures open: the checks below are about the breakage"""
        for arch in ("deepseek_v3", "glm4_moe"):
            d, st = self.hf_copy(arch)
            st.write(os.path.join(d, "model.safetensors"))
            rc, out, err = run("moe-bench", "logits", "--model", d, "--ids", prompt_ids(arch),
                               "--out", os.path.join(self.tmp, "l.bin"))
            self.assertEqual(rc, 0, err)

    def test_unpadded_safetensors_header(self):
        # a header of odd length (a writer that does not pad): every tensor is shifted
        d, st = self.hf_copy("deepseek_v3")
        path = os.path.join(d, "model.safetensors")
        st.write(path, extra_pad=1)
        wide = {k for k, v in st.header.items() if k != "__metadata__" and v["dtype"] != "U8"}
        for err in (self.expect_run(d, path, "the file is misaligned"),
                    self.expect_bench(d, "deepseek_v3", path, "the file is misaligned")):
            m = re.search(r"tensor '([^']+)': data at file offset (\d+) ", err)
            self.assertIsNotNone(m, err)
            self.assertIn(m.group(1), wide)
            self.assertEqual(int(m.group(2)) % 2, 1)

    def test_one_shifted_tensor(self):
        # the last tensor of the data section moved one byte on: only it is misaligned
        d, st = self.hf_copy("glm4_moe")
        name = max((k for k in st.header if k != "__metadata__"), key=lambda k: st.span(k)[0])
        b, e = st.span(name)
        self.assertEqual(e, len(st.data))
        st.data[b:b] = b"\0"
        st.header[name]["data_offsets"] = [b + 1, e + 1]
        st.write(os.path.join(d, "model.safetensors"))
        want = ("model.safetensors: tensor '%s': data at file offset" % name,
                "data_offsets begin %d" % (b + 1), "BF16 element size (2 bytes)")
        self.expect_run(d, *want)
        self.expect_bench(d, "glm4_moe", *want)
        self.expect_greedy(d, "glm4_moe", *want)

    def test_gguf_offset_off_general_alignment(self):
        path, g = self.gguf_copy("minimax_m2")
        t = g.tensors[3]
        struct.pack_into("<Q", g.raw, t["offset_at"], t["offset"] + 2)
        g.write(path)
        self.expect_bench(path, "minimax_m2", path, "tensor '%s': offset %d is not a multiple "
                          "of the alignment 32" % (t["name"], t["offset"] + 2))

    def test_gguf_alignment_too_small_for_the_type(self):
        # general.alignment 1 allows any offset; a BF16 tensor at an odd one is refused
        path, g = self.gguf_copy("ernie4_5_moe")
        victim = next(t for t in g.tensors if t["type"] == 30 and ".1." in t["name"])
        # the data section starts right after the infos: place every tensor on a multiple
        # of 4 bytes of the file, and the victim one byte past it
        probe, _ = g.rebuilt(1, lambda t, free: free)
        start = len(probe)

        def place(t, free):
            off = (start + free + 3) // 4 * 4 - start
            return off + 1 if t is victim else off

        head, data = g.rebuilt(1, place)
        self.assertEqual(len(head), start)
        with open(path, "wb") as f:
            f.write(head + data)
        self.expect_bench(path, "ernie4_5_moe", path, "tensor '%s': data at file offset"
                          % victim["name"], "not a multiple of its BF16 element size (2 "
                          "bytes): general.alignment 1 is too small")
        # the same layout without the odd byte opens and computes as the original
        head, data = g.rebuilt(1, lambda t, free: (start + free + 3) // 4 * 4 - start)
        with open(path, "wb") as f:
            f.write(head + data)
        rc, _, err = run("moe-bench", "logits", "--model", path, "--ids",
                         prompt_ids("ernie4_5_moe"), "--out", os.path.join(self.tmp, "l.bin"))
        self.assertEqual(rc, 0, err)


# ---- (b) NaN and infinity in the weights ---------------------------------------------------

class NonFinite(BadFileCase):
    # safetensors

    def test_st_dense_matrix_nan(self):
        d, st = self.hf_copy("dots1")
        name = "model.layers.1.self_attn.o_proj.weight"
        st.fill(name, BF16_NAN, first=100, count=8)
        st.write(os.path.join(d, "model.safetensors"))
        want = ("tensor '%s' holds NaN or infinite values: the file is corrupt" % name,)
        self.expect_run(d, *want)
        self.expect_bench(d, "dots1", d, *want)

    def test_st_mla_kv_b_inf(self):
        # kv_b_proj is split per head at load: the scan still names the file's tensor
        d, st = self.hf_copy("deepseek_v2")
        name = "model.layers.1.self_attn.kv_b_proj.weight"
        st.fill(name, BF16_INF)
        st.write(os.path.join(d, "model.safetensors"))
        self.expect_bench(d, "deepseek_v2", "tensor '%s' holds NaN or infinite values" % name)

    def test_st_norm_vector_refused_at_load(self):
        d, st = self.hf_copy("glm4_moe")
        name = "model.layers.1.post_attention_layernorm.weight"
        st.fill(name, BF16_INF, first=7, count=1)
        st.write(os.path.join(d, "model.safetensors"))
        want = ("model.safetensors: tensor '%s' holds NaN or infinite values (element 7 is "
                "+inf): the file is corrupt" % name,)
        self.expect_run(d, *want)
        self.expect_bench(d, "glm4_moe", *want)

    def test_st_expert_matrices_nan(self):
        # experts 5.. of layer 1 (at least one of them routed for the 48 prompt tokens)
        d, st = self.hf_copy("minimax_m2")
        with open(os.path.join(d, "config.json")) as f:
            n_experts = json.load(f)["num_local_experts"]
        for e in range(5, n_experts):
            st.fill("model.layers.1.block_sparse_moe.experts.%d.w2.weight" % e, BF16_NAN)
        st.write(os.path.join(d, "model.safetensors"))
        self.expect_bench(d, "minimax_m2", "tensor "
                          "'model.layers.1.block_sparse_moe.experts.5.w2.weight' holds NaN")

    def test_st_expert_bias_stack_refused_at_load(self):
        # gpt-oss's per-expert biases are one [E, 2F] tensor, converted at load
        d, st = self.hf_copy("gpt_oss")
        name = "model.layers.1.mlp.experts.gate_up_proj_bias"
        width = st.header[name]["shape"][1]
        st.fill(name, BF16_NAN, first=3 * width + 5, count=1)  # expert 3
        st.write(os.path.join(d, "model.safetensors"))
        self.expect_bench(d, "gpt_oss", "tensor '%s' (expert 3) holds NaN or infinite values "
                          "(element 5 is NaN)" % name)

    # GGUF (moe-bench only, but for the load-time check: not every fixture's GGUF carries a
    # vocabulary)

    def test_gguf_dense_matrix_nan(self):
        path, g = self.gguf_copy("ernie4_5_moe")
        name = "blk.1.attn_output.weight"
        g.fill(name, BF16_NAN, first=0, count=64)
        g.write(path)
        self.expect_bench(path, "ernie4_5_moe", path, "tensor '%s' holds NaN or infinite "
                          "values: the file is corrupt" % name)

    def test_gguf_norm_vector_refused_at_load(self):
        path, g = self.gguf_copy("deepseek_v3")
        name = "blk.0.attn_norm.weight"
        self.assertEqual(g.tensor(name)["type"], 0)
        g.fill(name, F32_NAN, first=2, count=1)
        g.write(path)
        want = (path, "tensor '%s' holds NaN or infinite values (element 2 is NaN)" % name)
        self.expect_run(path, *want)
        self.expect_bench(path, "deepseek_v3", *want)

    def test_gguf_expert_stack_inf(self):
        path, g = self.gguf_copy("deepseek_v3")
        name = "blk.1.ffn_down_exps.weight"
        t = g.tensor(name)
        per_expert = t["ne"][0] * t["ne"][1]
        g.fill(name, BF16_INF, first=5 * per_expert)  # experts 5..
        g.write(path)
        self.expect_bench(path, "deepseek_v3", "tensor '%s' (expert 5) holds NaN or infinite "
                          "values" % name)

    def test_gguf_expert_bias_stack_refused_at_load(self):
        # gpt-oss's expert biases: an fp32 [E, F] stack, converted per expert at load (its
        # MXFP4 matrices cannot hold NaN: ggml reads an E8M0 scale of 255 as 2^128)
        path, g = self.gguf_copy("gpt_oss")
        name = "blk.1.ffn_down_exps.bias"
        t = g.tensor(name)
        g.fill(name, F32_NEG_INF, first=6 * t["ne"][0] + 1, count=1)  # expert 6
        g.write(path)
        self.expect_bench(path, "gpt_oss", path, "tensor '%s' (expert 6) holds NaN or infinite "
                          "values (element 1 is -inf)" % name)


# ---- (c) truncated, oversized, duplicated, unknown -----------------------------------------

class Broken(BadFileCase):
    def test_st_truncated(self):
        d, st = self.hf_copy("deepseek_v2_lite")
        path = os.path.join(d, "model.safetensors")
        st.write(path)
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size - 1000)
        err = self.expect_run(d, path, "past end of data section")
        self.assertRegex(err, r"tensor '[^']+': data_offsets \[\d+, \d+\) past end")
        self.expect_bench(d, "deepseek_v2_lite", path, "past end of data section")

    def test_st_header_longer_than_file(self):
        d, st = self.hf_copy("dots1")
        path = os.path.join(d, "model.safetensors")
        js = st.header_bytes()
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(js) + len(st.data) + 8) + js + bytes(st.data))
        self.expect_run(d, path, "truncated: header says %d bytes, file has %d"
                        % (len(js) + len(st.data) + 8, 8 + len(js) + len(st.data)))

    def test_st_duplicate_tensor(self):
        d, st = self.hf_copy("glm4_moe")
        js = st.header_bytes().rstrip()
        name = "model.norm.weight"
        entry = json.dumps({name: st.header[name]}, separators=(",", ":"))[1:-1]
        js = js[:-1] + b"," + entry.encode() + b"}"
        st.write(os.path.join(d, "model.safetensors"), header=js + b" " * (-len(js) % 8))
        self.expect_run(d, "model.safetensors: bad JSON header: duplicate object key",
                        "'\"%s\"'" % name)

    def test_st_duplicate_tensor_across_shards(self):
        d, st = self.hf_copy("ernie4_5_moe")
        name = "model.norm.weight"
        b, e = st.span(name)
        one = {"__metadata__": {"format": "pt"},
               name: dict(st.header[name], data_offsets=[0, e - b])}
        js = json.dumps(one).encode()
        js += b" " * (-len(js) % 8)
        with open(os.path.join(d, "extra.safetensors"), "wb") as f:
            f.write(struct.pack("<Q", len(js)) + js + bytes(st.data[b:e]))
        st.write(os.path.join(d, "model-main.safetensors"))
        wm = {k: "model-main.safetensors" for k in st.header if k != "__metadata__"}
        wm[name] = "extra.safetensors"
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": wm}, f)
        self.expect_run(d, "tensor '%s': also in" % name, "model-main.safetensors",
                        "extra.safetensors")

    def test_gguf_truncated(self):
        path, g = self.gguf_copy("glm4_moe")
        last = max(g.tensors, key=lambda t: t["offset"])
        g.raw = g.raw[:-100]
        g.write(path)
        self.expect_bench(path, "glm4_moe", path, "tensor '%s': data [" % last["name"],
                          "past end of file (size %d)" % len(g.raw))

    def test_gguf_header_claims_more_than_the_file(self):
        path, g = self.gguf_copy("dots1")
        struct.pack_into("<Q", g.raw, 16, 1 << 40)  # the key/value count
        g.write(path)
        self.expect_bench(path, "dots1", path, "header: 1099511627776 keys and %d tensors "
                          "cannot fit" % len(g.tensors))
        # a tensor name whose length runs past the end of the file
        path, g = self.gguf_copy("dots1")
        t = g.tensors[-1]
        struct.pack_into("<Q", g.raw, t["info_at"], len(g.raw))
        g.write(path)
        self.expect_bench(path, "dots1", path, "tensor #%d: tensor name length %d past end of "
                          "file" % (len(g.tensors) - 1, len(g.raw)))

    def test_gguf_duplicate_tensor(self):
        path, g = self.gguf_copy("deepseek_v3")
        a, b = g.tensor("blk.0.attn_q_a.weight"), g.tensor("blk.1.attn_q_a.weight")
        i = b["info_at"] + 8 + len("blk.")
        self.assertEqual(g.raw[i:i + 1], b"1")
        g.raw[i:i + 1] = b"0"
        g.write(path)
        self.expect_bench(path, "deepseek_v3", path, "tensor 'blk.0.attn_q_a.weight': "
                          "duplicate name (tensors %d and %d)" % (g.tensors.index(a),
                                                                 g.tensors.index(b)))

    def test_config_key_that_changes_the_math(self):
        # every architecture, both config flavours: an unknown key is refused, named
        for arch in sorted(os.listdir(ARCH)):
            for flavour in ("v5", "v4"):
                src = os.path.join(ARCH, arch, flavour, "config.json")
                if not os.path.isfile(src):
                    continue
                with self.subTest(arch=arch, config=flavour):
                    d = os.path.join(self.tmp, arch + "-" + flavour)
                    os.makedirs(d)
                    with open(src) as f:
                        cfg = json.load(f)
                    cfg["attn_logit_softcapping"] = 30.0
                    with open(os.path.join(d, "config.json"), "w") as f:
                        json.dump(cfg, f)
                    os.symlink(os.path.realpath(os.path.join(ARCH, arch, "v5",
                                                             "model.safetensors")),
                               os.path.join(d, "model.safetensors"))
                    self.expect_run(d, os.path.join(d, "config.json"),
                                    "config key 'attn_logit_softcapping' is not known to moed")
                    self.expect_bench(d, arch, "config key 'attn_logit_softcapping'")


if __name__ == "__main__":
    unittest.main()
