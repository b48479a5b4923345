#!/usr/bin/env python3
"""The C engine against transformers on the architecture fixtures of tests/data/arch.

Every directory tests/data/arch/NAME (listed from disk) holds a tiny random checkpoint made by
tests/reference/make_fixtures.py with transformers itself: v5/ (as transformers 5 saves it),
v4/ (the config as transformers 4.57 or the published remote code writes it; the weights are
symlinks into v5/), model.gguf (the same weights in llama.cpp's conventions), and the reference
of transformers 5 in float32: reference.safetensors (logits [T, V] of the T prompt positions,
prompt_ids, continuation_ids) and reference.json (the same ids and what the fixture exercises).

For each fixture and each of v5/, v4/ and model.gguf, one test runs
    $BIN/moe-bench logits --model PATH --ids "..." --out FILE
and requires max |logit - ref| <= 1e-4 * max |ref| over all positions, then
    $BIN/moe-bench greedy --model PATH --ids "..." --tokens 16
and requires its ids to equal the 16 reference ids (every routing decision and greedy argmax of
the fixtures has a relative margin >= 1e-4 in float64, so an exact engine cannot differ by
rounding alone). An architecture the engine does not support yet fails here: that is intended.

BIN (default build/bin) names the binaries. Run from the repo root:
    /usr/bin/python3 tests/integration/test_arch_fixtures.py -v
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

ROOT = os.environ.get("MOE_ROOT") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import moe_ref  # noqa: E402  (safetensors reader, numpy only)

BIN = os.environ.get("BIN") or os.path.join(ROOT, "build", "bin")
if not os.path.isabs(BIN):
    BIN = os.path.join(ROOT, BIN)
ENGINE = os.path.join(BIN, "moe-bench")
DATA = os.path.join(ROOT, "tests", "data", "arch")
REL_TOL = 1e-4
TIMEOUT = int(os.environ.get("MOE_ENGINE_TIMEOUT", "300"))
FORMATS = ("v5", "v4", "model.gguf", "pack")
PACK = os.path.join(BIN, "moe-pack")


def fixtures():
    if not os.path.isdir(DATA):
        return []
    return sorted(d for d in os.listdir(DATA) if os.path.isfile(os.path.join(DATA, d, "reference.json")))


def load_reference(name):
    d = os.path.join(DATA, name)
    with open(os.path.join(d, "reference.json")) as f:
        meta = json.load(f)
    ref = moe_ref.read_safetensors(os.path.join(d, "reference.safetensors"))
    return meta, ref


def run_engine(*args):
    r = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=TIMEOUT)
    return r.returncode, r.stdout, r.stderr


class FixtureLayout(unittest.TestCase):
    """What make_fixtures.py promises about every fixture directory."""

    def test_fixtures_present(self):
        self.assertTrue(fixtures(), f"no fixtures under {DATA}")

    def test_layout(self):
        for name in fixtures():
            with self.subTest(fixture=name):
                d = os.path.join(DATA, name)
                meta, ref = load_reference(name)
                T, V = meta["T"], meta["V"]
                self.assertEqual(ref["logits"].shape, (T, V))
                self.assertEqual([int(i) for i in ref["prompt_ids"]], meta["prompt_ids"])
                self.assertEqual([int(i) for i in ref["continuation_ids"]], meta["continuation_ids"])
                self.assertEqual(len(meta["continuation_ids"]), 16)
                self.assertTrue(all(3 <= i < V for i in meta["prompt_ids"]))
                self.assertTrue(np.isfinite(ref["logits"]).all())
                self.assertGreater(float(np.abs(ref["logits"]).max()), 0.5)
                for fmt in FORMATS[:3]:
                    self.assertTrue(os.path.exists(os.path.join(d, fmt)), f"{name}/{fmt} missing")
                v4 = os.path.join(d, "v4")
                self.assertFalse(os.path.islink(os.path.join(v4, "config.json")))
                # v4/ links to v5/'s weights, except where it is a published layout of its
                # own (Qwen3.5's: the vision-language wrapper's names, fused experts)
                own = bool(meta["v4"].get("layout"))
                for fn in os.listdir(v4):
                    if fn != "config.json" and not own:
                        p = os.path.join(v4, fn)
                        self.assertTrue(os.path.islink(p), f"{name}/v4/{fn} is not a symlink")
                        self.assertEqual(os.readlink(p), os.path.join("..", "v5", fn))
                        self.assertTrue(os.path.exists(p), f"{name}/v4/{fn}: dangling link")
                self.assertGreaterEqual(min(m for m in (meta["margins"]["routing_min"], meta["margins"]["greedy_min"],
                                                         meta["margins"]["group_min"] or 1.0)), 1e-4)


class ArchFixtures(unittest.TestCase):
    """One test per fixture and format (added below from the directory listing)."""

    def pack(self, name, tmp):
        """A moed pack of the fixture with its experts as they are: bf16, or gpt-oss's MXFP4
        blocks copied (served as trained, never requantised), and its dense parts as they are
        (--dense bf16; moe-pack's default q8 is not what the reference logits were made from)."""
        out = os.path.join(tmp, "model.moe")
        mxfp4 = name.startswith("gpt_oss")
        r = subprocess.run([PACK, "--model", os.path.join(DATA, name, "v5"), "--out", out,
                            "--experts", "mxfp4" if mxfp4 else "bf16", "--dense", "bf16"],
                           capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(r.returncode, 0, f"{name}: moe-pack failed: {r.stderr.strip()[-600:]}")
        if mxfp4:
            summary = json.loads(r.stdout.strip().splitlines()[-1])
            with open(os.path.join(DATA, name, "v5", "config.json")) as f:
                cfg = json.load(f)
            self.assertEqual(summary["copied_matrices"],
                             3 * cfg["num_local_experts"] * cfg["num_hidden_layers"])
        return out

    def check(self, name, fmt):
        if not os.path.isfile(ENGINE):
            self.fail(f"{ENGINE} missing: build it first (make all)")
        meta, ref = load_reference(name)
        ids = " ".join(str(i) for i in meta["prompt_ids"])
        want = ref["logits"]
        with tempfile.TemporaryDirectory() as tmp:
            path = self.pack(name, tmp) if fmt == "pack" else os.path.join(DATA, name, fmt)
            self.run_checks(name, fmt, path, ids, want, meta)

    def run_checks(self, name, fmt, path, ids, want, meta):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "logits.bin")
            rc, _, err = run_engine("logits", "--model", path, "--ids", ids, "--out", out)
            self.assertEqual(rc, 0, f"{name}/{fmt}: moe-bench logits failed: {err.strip()[-600:]}")
            got = np.fromfile(out, dtype="<f4")
        self.assertEqual(got.size, want.size, f"{name}/{fmt}: {got.size} logits, want {want.shape}")
        got = got.reshape(want.shape)
        scale = float(np.abs(want).max())
        diff = np.abs(got.astype(np.float64) - want)
        worst = float(diff.max())
        pos = int(np.unravel_index(np.argmax(diff), diff.shape)[0])
        # the figure itself, for closing notes: `... test_arch_fixtures.py 2>&1 | grep max`
        print(f"\n{name}/{fmt}: max |logit - ref| / max |ref| = {worst / scale:.2e}",
              end=" ", file=sys.stderr)
        self.assertLessEqual(worst, REL_TOL * scale,
                             f"{name}/{fmt}: max |logit - ref| = {worst:.3g} at position {pos} "
                             f"(bound {REL_TOL * scale:.3g} = 1e-4 x {scale:.3g})")
        rc, outs, err = run_engine("greedy", "--model", path, "--ids", ids, "--tokens", "16")
        self.assertEqual(rc, 0, f"{name}/{fmt}: moe-bench greedy failed: {err.strip()[-600:]}")
        gen = json.loads(outs.strip().splitlines()[-1])["ids"]
        self.assertEqual(gen, meta["continuation_ids"], f"{name}/{fmt}: greedy continuation")


class QuantisedDense(unittest.TestCase):
    """DeepSeek-V3's MLA through moe-pack --dense q8 / q4: q_a/q_b/kv_a, the per-head v_b
    (the grouped matmul), the shared expert and the dense layer's MLP quantised where their
    rows are whole blocks, k_b (16 columns) and the router kept; logits near the bf16-dense
    pack's. Measured max |diff| (logits up to 4.27): q8 0.109 (26 matrices quantised), q4
    1.71 (only the dense MLP's down projection has 128 columns). Bounds: 3x and 2x that."""
    BOUND = {"q8": 0.33, "q4": 3.5}
    DTYPE = {"q8": "q8_0", "q4": "gq4"}

    def test_deepseek_v3_mla_with_quantised_dense_parts(self):
        name = "deepseek_v3"
        meta, _ = load_reference(name)
        ids = " ".join(str(i) for i in meta["prompt_ids"])
        logits, heads = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for dense in ("bf16", "q8", "q4"):
                pk, lo = os.path.join(tmp, f"{dense}.moe"), os.path.join(tmp, f"{dense}.bin")
                r = subprocess.run([PACK, "--model", os.path.join(DATA, name, "v5"), "--out", pk,
                                    "--experts", "bf16", "--dense", dense],
                                   capture_output=True, text=True, timeout=TIMEOUT)
                self.assertEqual(r.returncode, 0, f"--dense {dense}: {r.stderr.strip()[-600:]}")
                rc, _, err = run_engine("logits", "--model", pk, "--ids", ids, "--out", lo)
                self.assertEqual(rc, 0, f"--dense {dense}: {err.strip()[-600:]}")
                logits[dense] = np.fromfile(lo, dtype="<f4")
                with open(pk, "rb") as f:
                    pre = f.read(64)
                    off, size = int.from_bytes(pre[16:24], "little"), int.from_bytes(pre[24:32], "little")
                    f.seek(off)
                    heads[dense] = {t["name"]: t["dtype"] for t in json.loads(f.read(size))["tensors"]}
        for dense, bound in self.BOUND.items():
            h, want = heads[dense], self.DTYPE[dense]
            self.assertEqual(h["layers.1.attn.k_b"], heads["bf16"]["layers.1.attn.k_b"])  # 16 cols
            self.assertEqual(h["layers.1.router"], heads["bf16"]["layers.1.router"])
            self.assertEqual(h["layers.0.mlp.down"], want)  # 128 columns: whole blocks of both
            if dense == "q8":
                for t in ("attn.q_a", "attn.q_b", "attn.kv_a", "attn.v_b", "attn.o",
                          "shared_expert.gate", "shared_expert.down"):
                    self.assertEqual(h["layers.1." + t], want, t)
            worst = float(np.abs(logits[dense] - logits["bf16"]).max())
            print(f"\n{name} --dense {dense}: max |logit - bf16-dense logit| = {worst:.3g}",
                  end=" ", file=sys.stderr)
            self.assertTrue(np.isfinite(logits[dense]).all())
            self.assertGreater(worst, 0.0)
            self.assertLess(worst, bound)


class HybridForms(unittest.TestCase):
    """The Gated DeltaNet hybrids' 320-token prompt through moed's chunked form (five 64-token
    chunks per linear layer) against the same prompt through the recurrent form only
    (MOE_GDN_RECURRENT=1): equal within 1e-5 of the largest logit."""

    def test_chunked_equals_recurrent(self):
        names = [n for n in fixtures() if "linear_attention" in json.dumps(
            json.load(open(os.path.join(DATA, n, "v5", "config.json"))))]
        self.assertEqual(sorted(names), ["qwen3_5_moe", "qwen3_next"])
        for name in names:
            meta, _ = load_reference(name)
            ids = " ".join(str(i) for i in meta["prompt_ids"])
            got = {}
            with tempfile.TemporaryDirectory() as tmp:
                for form, env in (("chunked", {}), ("recurrent", {"MOE_GDN_RECURRENT": "1"})):
                    out = os.path.join(tmp, form + ".bin")
                    r = subprocess.run([ENGINE, "logits", "--model", os.path.join(DATA, name, "v5"),
                                        "--ids", ids, "--out", out], capture_output=True,
                                       text=True, timeout=TIMEOUT, env=dict(os.environ, **env))
                    self.assertEqual(r.returncode, 0, r.stderr[-600:])
                    got[form] = np.fromfile(out, dtype="<f4").astype(np.float64)
            diff = float(np.abs(got["chunked"] - got["recurrent"]).max())
            scale = float(np.abs(got["recurrent"]).max())
            print(f"\n{name}: chunked vs recurrent max |diff| / max |logit| = {diff / scale:.2e}",
                  end=" ", file=sys.stderr)
            self.assertLessEqual(diff, 1e-5 * scale)
            self.assertGreater(diff, 0.0)  # two computations, not one


def _add_tests():
    for name in fixtures():
        for fmt in FORMATS:
            tag = "gguf" if fmt.endswith(".gguf") else fmt

            def t(self, name=name, fmt=fmt):
                self.check(name, fmt)
            t.__doc__ = f"{name}/{fmt}: logits and greedy ids against transformers" + \
                (" (through a moed pack of v5)" if fmt == "pack" else "")
            setattr(ArchFixtures, f"test_{name}_{tag}", t)


_add_tests()

if __name__ == "__main__":
    unittest.main()
