#!/usr/bin/env python3
"""The C engine's logits against the NumPy oracle (tests/reference/moe_ref.py).

For each architecture (mixtral, qwen2_moe, qwen3_moe, olmoe) synthetic checkpoints are
generated into a temp dir (tests/reference/make_arch_model.py) in several storage variants:
  HF safetensors bf16 / f16 / f32, sharded (3 files + index), tied embeddings;
  GGUF (llama.cpp layout) f32 / f16 / bf16 / q8_0 of the bf16 checkpoint, tied GGUF;
  plus config features: qwen2/qwen3 dense (mlp_only_layers) layers, norm_topk_prob flipped
  (GGUF: {arch}.expert_weights_norm), OLMoE with GQA + clip_qkv (GGUF: attention.clamp_kqv),
  Mixtral with a single kv head.
The engine is run as
    $BIN/moe-bench logits --model PATH --ids "1 2 3 ..." --out FILE
(BIN env var, default build/bin; FILE = raw float32 [n_ids, vocab]) and compared against
the oracle loaded from the SAME path, max |diff| < 2e-3.  For GGUF files the oracle
dequantises exactly what is stored, so f16/bf16/Q8_0 files are held to the same 2e-3 bound
(Q8_0 is compared against the oracle run on the dequantised Q8_0 weights, not against the
unquantised model).  Token ids are chosen so that no router top-k decision is a near-tie
(oracle margin between the k-th and (k+1)-th router probability >= 1e-4).

tiny-moe (models/tiny-moe, real bf16 Mixtral): engine on the HF dir and on its GGUF
conversions (tests/reference/hf_to_gguf.py) against reference_logits.safetensors (< 2e-3;
for f16 / q8_0 GGUF against the oracle on that file), and the 32 greedy ids of each prompt
(teacher-forced: argmax at each position of prompt + greedy_ids[:-1]).

The whole class is skipped while $BIN/moe-bench does not exist.
Run from the repo root:  /usr/bin/python3 tests/integration/test_engine_vs_oracle.py -v
MOE_KEEP_TMP=1 keeps the generated models (path printed).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np

ROOT = os.environ.get("MOE_ROOT") or os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
REF = os.path.join(ROOT, "tests", "reference")
sys.path.insert(0, REF)
import moe_ref  # noqa: E402
import make_arch_model as mk  # noqa: E402

BIN = os.environ.get("BIN") or os.path.join(ROOT, "build", "bin")
if not os.path.isabs(BIN):
    BIN = os.path.join(ROOT, BIN)
ENGINE = os.path.join(BIN, "moe-bench")
TINY = os.path.join(ROOT, "models", "tiny-moe")
TOL = 2e-3
MIN_MARGIN = 1e-4
N_IDS = 16
ENGINE_TIMEOUT = int(os.environ.get("MOE_ENGINE_TIMEOUT", "300"))

# variant name -> how to make it. "hf": make_arch_model.make_model kwargs; "gguf": (base variant, type)
COMMON_VARIANTS = {
    "hf_bf16": ("hf", dict(dtype="bf16")),
    "hf_f16": ("hf", dict(dtype="f16")),
    "hf_f32": ("hf", dict(dtype="f32")),
    "hf_sharded": ("hf", dict(dtype="bf16", shards=3)),
    "hf_tied": ("hf", dict(dtype="bf16", tied=True)),
    "gguf_f32": ("gguf", ("hf_bf16", "f32")),
    "gguf_f16": ("gguf", ("hf_bf16", "f16")),
    "gguf_bf16": ("gguf", ("hf_bf16", "bf16")),
    "gguf_q8_0": ("gguf", ("hf_bf16", "q8_0")),
    "gguf_tied_bf16": ("gguf", ("hf_tied", "bf16")),
}
FEATURE_VARIANTS = {
    "mixtral": {
        "hf_mqa": ("hf", dict(dtype="bf16", kv_heads=1)),
        "gguf_mqa_f32": ("gguf", ("hf_mqa", "f32")),
    },
    "qwen2_moe": {
        "hf_dense_layer": ("hf", dict(dtype="bf16", mlp_only_layers=[1])),
        "gguf_dense_layer_f32": ("gguf", ("hf_dense_layer", "f32")),
        "hf_norm_topk": ("hf", dict(dtype="bf16", norm_topk=1)),
        "gguf_norm_topk_f32": ("gguf", ("hf_norm_topk", "f32")),
    },
    "qwen3_moe": {
        "hf_dense_layer": ("hf", dict(dtype="bf16", mlp_only_layers=[0])),
        "gguf_dense_layer_f32": ("gguf", ("hf_dense_layer", "f32")),
        "hf_no_norm_topk": ("hf", dict(dtype="bf16", norm_topk=0)),
        "gguf_no_norm_topk_f32": ("gguf", ("hf_no_norm_topk", "f32")),
    },
    "olmoe": {
        "hf_gqa_clip": ("hf", dict(dtype="bf16", kv_heads=2, clip_qkv=2.0)),
        "gguf_gqa_clip_f32": ("gguf", ("hf_gqa_clip", "f32")),
        "hf_norm_topk": ("hf", dict(dtype="bf16", norm_topk=1)),
        "gguf_norm_topk_bf16": ("gguf", ("hf_norm_topk", "bf16")),
    },
}


def run_engine(path, ids, out):
    cmd = [ENGINE, "logits", "--model", path, "--ids", " ".join(str(i) for i in ids), "--out", out]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=ENGINE_TIMEOUT)
    if r.returncode != 0:
        raise AssertionError(f"engine failed (rc={r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    raw = np.fromfile(out, dtype="<f4")
    if raw.size == 0 or raw.size % len(ids):
        raise AssertionError(f"engine output {out}: {raw.size} floats, not a multiple of {len(ids)} ids")
    return raw.reshape(len(ids), -1)


def pick_ids(model, vocab, n=N_IDS):
    """Deterministic ids (bos first) whose routing has no near-tie in the oracle."""
    best = None
    for seed in range(40):
        rng = np.random.default_rng([seed, 7])
        ids = [vocab - 2] + [int(i) for i in rng.integers(0, vocab - 2, n - 1)]
        model.logits(ids)
        if model.route_margin >= MIN_MARGIN:
            return ids, model.route_margin
        if best is None or model.route_margin > best[1]:
            best = (ids, model.route_margin)
    return best


@unittest.skipUnless(os.path.isfile(ENGINE) and os.access(ENGINE, os.X_OK),
                     f"C engine not built: {ENGINE} does not exist (set BIN or build moe-bench)")
class EngineVsOracle(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="moe_engine_vs_oracle_")
        cls.paths = {}
        if os.environ.get("MOE_KEEP_TMP"):
            print(f"\n  models in {cls.dir}", file=sys.stderr)

    @classmethod
    def tearDownClass(cls):
        if not os.environ.get("MOE_KEEP_TMP"):
            shutil.rmtree(cls.dir, ignore_errors=True)

    def path_of(self, arch, variant):
        key = (arch, variant)
        if key in self.paths:
            return self.paths[key]
        kind, spec = {**COMMON_VARIANTS, **FEATURE_VARIANTS.get(arch, {})}[variant]
        if kind == "hf":
            p = os.path.join(self.dir, f"{arch}_{variant}")
            mk.make_model(arch, p, **spec)
        else:
            base, qtype = spec
            p = os.path.join(self.dir, f"{arch}_{variant}.gguf")
            mk.convert_hf_to_gguf(self.path_of(arch, base), p, qtype, name=f"synthetic-{arch}")
        self.paths[key] = p
        return p

    def compare(self, path, tag):
        oracle = moe_ref.load(path)
        ids, margin = pick_ids(oracle, oracle.embed.shape[0])
        want = oracle.logits(ids)
        got = run_engine(path, ids, os.path.join(self.dir, tag + ".out"))
        self.assertEqual(got.shape, want.shape, f"{tag}: engine output shape")
        self.assertTrue(np.isfinite(got).all(), f"{tag}: non-finite engine logits")
        d = np.abs(got - want)
        pos = int(np.argmax(d.max(-1)))
        self.assertLess(float(d.max()), TOL,
                        f"{tag}: max |engine - oracle| = {d.max():.4g} (first bad position "
                        f"{int(np.argmax(d.max(-1) >= TOL))}, worst {pos}); ids={ids}; router margin {margin:.3g}")

    # -- tiny-moe ---------------------------------------------------------------

    def tiny_prompts(self):
        if not os.path.isdir(TINY):
            self.skipTest(f"{TINY} missing")
        ref = moe_ref.read_safetensors(os.path.join(TINY, "reference_logits.safetensors"))
        with open(os.path.join(TINY, "reference.json")) as f:
            return json.load(f)["prompts"], ref

    def check_tiny(self, path, tag, against_reference):
        prompts, ref = self.tiny_prompts()
        oracle = None if against_reference else moe_ref.load(path)
        for i, p in enumerate(prompts):
            with self.subTest(prompt=i):
                ids = p["ids"] + p["greedy_ids"][:-1]
                got = run_engine(path, ids, os.path.join(self.dir, f"{tag}_{i}.out"))
                n = len(p["ids"])
                want = ref[f"prompt{i}.logits"] if against_reference else oracle.logits(ids)[:n]
                d = float(np.abs(got[:n] - want).max())
                self.assertLess(d, TOL, f"{tag} prompt {i}: max |engine - reference| = {d:.4g}")
                if against_reference:
                    greedy = np.argmax(got[n - 1:], axis=-1).tolist()
                    self.assertEqual(greedy, p["greedy_ids"], f"{tag} prompt {i}: greedy ids (teacher forced)")

    def tiny_gguf(self, qtype):
        p = os.path.join(self.dir, f"tiny-moe.{qtype}.gguf")
        if not os.path.exists(p):
            if not os.path.isdir(TINY):
                self.skipTest(f"{TINY} missing")
            mk.convert_hf_to_gguf(TINY, p, qtype, name="tiny-moe")
        return p

    def test_tiny_moe_hf(self):
        self.check_tiny(TINY, "tiny_hf", against_reference=True)

    def test_tiny_moe_gguf_bf16(self):
        self.check_tiny(self.tiny_gguf("bf16"), "tiny_gguf_bf16", against_reference=True)

    def test_tiny_moe_gguf_f32(self):
        self.check_tiny(self.tiny_gguf("f32"), "tiny_gguf_f32", against_reference=True)

    def test_tiny_moe_gguf_f16(self):
        self.check_tiny(self.tiny_gguf("f16"), "tiny_gguf_f16", against_reference=False)

    def test_tiny_moe_gguf_q8_0(self):
        self.check_tiny(self.tiny_gguf("q8_0"), "tiny_gguf_q8_0", against_reference=False)


def _add_synthetic_tests():
    for arch in mk.ARCHS:
        for variant in list(COMMON_VARIANTS) + list(FEATURE_VARIANTS.get(arch, {})):
            def t(self, arch=arch, variant=variant):
                self.compare(self.path_of(arch, variant), f"{arch}_{variant}")
            t.__doc__ = f"engine == oracle: {arch} {variant}"
            setattr(EngineVsOracle, f"test_{arch}_{variant}", t)


_add_synthetic_tests()

if __name__ == "__main__":
    unittest.main()
