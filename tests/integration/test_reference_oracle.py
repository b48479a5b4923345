#!/usr/bin/env python3
"""Checks the NumPy oracle (tests/reference/moe_ref.py) itself, and the synthetic-checkpoint /
GGUF writers (tests/reference/make_arch_model.py), without the C engine.

Run from the repo root:  /usr/bin/python3 tests/integration/test_reference_oracle.py -v
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

TINY = os.path.join(ROOT, "models", "tiny-moe")
PYTHON = os.environ.get("PYTHON", "/usr/bin/python3")
TOL = 2e-3


def ids_for(vocab, n=12, seed=0):
    rng = np.random.default_rng(seed)
    return [vocab - 2] + [int(i) for i in rng.integers(0, vocab - 2, n - 1)]


def assert_close_robust(tc, a, b):
    """For logits of slightly different weights (dtype rounding, Q8_0): mean |diff| small and
    highly correlated; max |diff| is not used since one token's top-k choice may flip."""
    tc.assertLess(float(np.abs(a - b).mean()), 0.05)
    tc.assertGreater(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]), 0.995)


class TinyMoeReference(unittest.TestCase):
    """The oracle reproduces the fp32 reference logits and greedy ids of models/tiny-moe."""

    @classmethod
    def setUpClass(cls):
        if not os.path.isdir(TINY):
            raise unittest.SkipTest(f"{TINY} missing")
        cls.model = moe_ref.load(TINY)
        cls.ref = moe_ref.read_safetensors(os.path.join(TINY, "reference_logits.safetensors"))
        with open(os.path.join(TINY, "reference.json")) as f:
            cls.prompts = json.load(f)["prompts"]

    def test_reference_logits(self):
        worst = 0.0
        for i, p in enumerate(self.prompts):
            with self.subTest(prompt=i):
                self.assertEqual([int(x) for x in self.ref[f"prompt{i}.ids"]], p["ids"])
                lg = self.model.logits(p["ids"])
                want = self.ref[f"prompt{i}.logits"]
                self.assertEqual(lg.shape, want.shape)
                d = float(np.abs(lg - want).max())
                worst = max(worst, d)
                self.assertLess(d, TOL)
        print(f"\n  tiny-moe oracle max |logit - reference| = {worst:.3g}", file=sys.stderr)

    def test_greedy_ids(self):
        for i, p in enumerate(self.prompts):
            with self.subTest(prompt=i):
                self.assertEqual(self.model.greedy(p["ids"], len(p["greedy_ids"])), p["greedy_ids"])

    def test_gguf_conversion_roundtrip(self):
        d = tempfile.mkdtemp()
        try:
            ids = self.prompts[1]["ids"]
            want = self.model.logits(ids)
            for qt, tol in (("bf16", 1e-5), ("f32", 1e-5), ("q8_0", None)):
                path = os.path.join(d, f"tiny.{qt}.gguf")
                r = subprocess.run([PYTHON, os.path.join(REF, "hf_to_gguf.py"), "--model", TINY,
                                    "--out", path, "--type", qt], capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
                meta, gt = moe_ref.read_gguf(path)
                self.assertEqual(meta["general.architecture"], "llama")
                self.assertEqual(gt["blk.0.ffn_gate_exps.weight"].shape, (8, 512, 256))  # ne [256,512,8]
                self.assertEqual(len(meta["tokenizer.ggml.tokens"]), 1024)
                got = moe_ref.load(path).logits(ids)
                with self.subTest(type=qt):
                    if tol is None:
                        assert_close_robust(self, got, want)
                    else:
                        self.assertLess(float(np.abs(got - want).max()), tol)
        finally:
            shutil.rmtree(d, ignore_errors=True)


class SyntheticArchitectures(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="moe_oracle_")
        cls.models, cls.cfgs = {}, {}
        for arch in mk.ARCHS:
            p = os.path.join(cls.dir, arch)
            cls.cfgs[arch] = mk.make_model(arch, p, dtype="bf16")
            cls.models[arch] = moe_ref.load(p)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def ids(self, arch, n=12):
        return ids_for(self.cfgs[arch]["vocab_size"], n)

    def logits(self, arch, model=None):
        return (model or self.models[arch]).logits(self.ids(arch))

    def fresh(self, arch, **cfg_over):
        """A Model with copied tensors (safe to modify) and an edited config."""
        m = self.models[arch]
        c = dict(m.cfg)
        c.update(cfg_over)
        return moe_ref.Model(c, {k: v.copy() for k, v in m.t.items()})

    def assertDiffers(self, a, b, msg, at_least=1e-3):
        self.assertGreater(float(np.abs(a - b).max()), at_least, msg)

    # -- basic sanity -------------------------------------------------------

    def test_finite_and_spread(self):
        for arch in mk.ARCHS:
            with self.subTest(arch=arch):
                lg = self.logits(arch)
                self.assertEqual(lg.shape, (12, self.cfgs[arch]["vocab_size"]))
                self.assertTrue(np.isfinite(lg).all())
                self.assertGreater(float(lg.std()), 0.5)
                self.assertGreater(len(set(np.argmax(lg, -1).tolist())), 3)

    def test_routing_is_non_uniform(self):
        for arch in mk.ARCHS:
            with self.subTest(arch=arch):
                m = self.models[arch]
                x = m.embed[self.ids(arch)]
                y = moe_ref._rms(x, m.t["model.layers.0.post_attention_layernorm.weight"], m.eps)
                logits, idx, w = m.route(0, y)
                probs = moe_ref._softmax64(logits)
                self.assertGreater(float(probs.max(-1).mean()), 2.0 / m.n_exp)
                self.assertGreater(len(set(idx.ravel().tolist())), 2)

    def test_architectures_differ(self):
        outs = [self.logits(a)[:, :512] for a in mk.ARCHS]
        for i in range(len(outs)):
            for j in range(i + 1, len(outs)):
                self.assertDiffers(outs[i], outs[j], f"{mk.ARCHS[i]} vs {mk.ARCHS[j]}")

    def test_causal(self):
        for arch in mk.ARCHS:
            with self.subTest(arch=arch):
                ids = self.ids(arch)
                full = self.models[arch].logits(ids)
                part = self.models[arch].logits(ids[:5])
                self.assertLess(float(np.abs(full[:5] - part).max()), 1e-4)

    # -- distinctive features --------------------------------------------------

    def test_mixtral_topk_renormalisation_matters(self):
        m = self.fresh("mixtral")
        m.norm_topk = False
        self.assertDiffers(self.logits("mixtral"), self.logits("mixtral", m), "renorm has no effect")

    def test_qwen2_shared_expert_and_gate(self):
        base = self.logits("qwen2_moe")
        m = self.fresh("qwen2_moe")
        for i in range(m.n_layer):
            m.t[f"model.layers.{i}.mlp.shared_expert_gate.weight"][:] = 0  # sigmoid(0) = 0.5
        self.assertDiffers(base, self.logits("qwen2_moe", m), "shared_expert_gate unused")
        m = self.fresh("qwen2_moe")
        for i in range(m.n_layer):
            m.t[f"model.layers.{i}.mlp.shared_expert.down_proj.weight"][:] = 0
        self.assertDiffers(base, self.logits("qwen2_moe", m), "shared expert unused")

    def test_qwen2_biases_and_no_renorm(self):
        base = self.logits("qwen2_moe")
        self.assertFalse(self.models["qwen2_moe"].norm_topk)
        m = self.fresh("qwen2_moe")
        for k in [k for k in m.t if k.endswith("_proj.bias")]:
            m.t[k][:] = 0
        self.assertDiffers(base, self.logits("qwen2_moe", m), "q/k/v biases unused")
        m = self.fresh("qwen2_moe", norm_topk_prob=True)
        self.assertDiffers(base, self.logits("qwen2_moe", m), "norm_topk_prob ignored")

    def test_qwen2_dense_layers(self):
        d = os.path.join(self.dir, "qwen2_dense")
        mk.make_model("qwen2_moe", d, dtype="bf16", mlp_only_layers=[1], gguf=d + ".gguf", gguf_type="f32")
        m = moe_ref.load(d)
        self.assertFalse(m.is_moe_layer(1))
        self.assertIn("model.layers.1.mlp.gate_proj.weight", m.t)
        lg = m.logits(self.ids("qwen2_moe"))
        self.assertTrue(np.isfinite(lg).all())
        self.assertDiffers(self.logits("qwen2_moe"), lg, "dense layer = moe layer?")
        self.assertLess(float(np.abs(moe_ref.load(d + ".gguf").logits(self.ids("qwen2_moe")) - lg).max()), 1e-5)

    def test_qwen3_head_dim_and_qk_norm(self):
        c = self.cfgs["qwen3_moe"]
        self.assertNotEqual(c["head_dim"], c["hidden_size"] // c["num_attention_heads"])
        self.assertEqual(self.models["qwen3_moe"].t["model.layers.0.self_attn.q_norm.weight"].shape, (c["head_dim"],))
        base = self.logits("qwen3_moe")
        m = self.fresh("qwen3_moe")
        for i in range(m.n_layer):
            m.t[f"model.layers.{i}.self_attn.k_norm.weight"][:] = 1
        self.assertDiffers(base, self.logits("qwen3_moe", m), "k_norm unused")
        m = self.fresh("qwen3_moe", norm_topk_prob=False)
        self.assertDiffers(base, self.logits("qwen3_moe", m), "norm_topk_prob ignored")

    def test_olmoe_qk_norm_clip_and_renorm(self):
        base = self.logits("olmoe")
        m = self.models["olmoe"]
        self.assertEqual(m.t["model.layers.0.self_attn.q_norm.weight"].shape, (m.n_head * m.hd,))
        m2 = self.fresh("olmoe")
        for i in range(m2.n_layer):
            m2.t[f"model.layers.{i}.self_attn.q_norm.weight"][:] = 1
        self.assertDiffers(base, self.logits("olmoe", m2), "q_norm unused")
        self.assertDiffers(base, self.logits("olmoe", self.fresh("olmoe", clip_qkv=0.3)), "clip_qkv ignored")
        self.assertDiffers(base, self.logits("olmoe", self.fresh("olmoe", norm_topk_prob=True)), "renorm ignored")

    def test_olmoe_gqa_and_clip_variant(self):
        d = os.path.join(self.dir, "olmoe_gqa")
        mk.make_model("olmoe", d, dtype="f32", kv_heads=2, clip_qkv=2.0, gguf=d + ".gguf", gguf_type="f32")
        m = moe_ref.load(d)
        self.assertEqual((m.n_kv, m.clip), (2, 2.0))
        self.assertEqual(m.t["model.layers.0.self_attn.k_norm.weight"].shape, (2 * m.hd,))
        ids = self.ids("olmoe")
        g = moe_ref.load(d + ".gguf")
        self.assertEqual(g.clip, 2.0)
        self.assertLess(float(np.abs(g.logits(ids) - m.logits(ids)).max()), 1e-5)

    # -- storage variants ------------------------------------------------------

    def test_sharded_equals_unsharded(self):
        for arch in mk.ARCHS:
            with self.subTest(arch=arch):
                d = os.path.join(self.dir, arch + "_sharded")
                mk.make_model(arch, d, dtype="bf16", shards=3)
                self.assertTrue(os.path.isfile(os.path.join(d, "model.safetensors.index.json")))
                self.assertTrue(os.path.isfile(os.path.join(d, "model-00003-of-00003.safetensors")))
                self.assertFalse(os.path.exists(os.path.join(d, "model.safetensors")))
                np.testing.assert_array_equal(moe_ref.load(d).logits(self.ids(arch)), self.logits(arch))

    def test_tied_variant(self):
        for arch in mk.ARCHS:
            with self.subTest(arch=arch):
                d = os.path.join(self.dir, arch + "_tied")
                mk.make_model(arch, d, dtype="bf16", tied=True, gguf=d + ".gguf", gguf_type="bf16")
                m = moe_ref.load(d)
                self.assertNotIn("lm_head.weight", m.t)
                self.assertIs(m.lm_head, m.embed)
                ids = self.ids(arch)
                lg = m.logits(ids)
                self.assertTrue(np.isfinite(lg).all())
                self.assertDiffers(lg, self.logits(arch), "tied == untied?")
                meta, gt = moe_ref.read_gguf(d + ".gguf")
                self.assertNotIn("output.weight", gt)
                self.assertLess(float(np.abs(moe_ref.load(d + ".gguf").logits(ids) - lg).max()), 1e-5)

    def test_dtypes(self):
        for arch in mk.ARCHS:
            for dt in ("f32", "f16"):
                with self.subTest(arch=arch, dtype=dt):
                    d = os.path.join(self.dir, f"{arch}_{dt}")
                    mk.make_model(arch, d, dtype=dt)
                    lg = moe_ref.load(d).logits(self.ids(arch))
                    # same underlying values, different rounding: close but not identical
                    # (a rounding change can flip one token's top-k choice: robust metrics)
                    assert_close_robust(self, lg, self.logits(arch))

    def test_gguf_roundtrip(self):
        """GGUF (llama.cpp layout) read back by the oracle gives the same model."""
        for arch in mk.ARCHS:
            want = self.logits(arch)
            hf = os.path.join(self.dir, arch)
            for qt, tol in (("f32", 1e-5), ("bf16", 1e-5), ("f16", 1e-3), ("q8_0", None)):
                with self.subTest(arch=arch, type=qt):
                    path = os.path.join(self.dir, f"{arch}.{qt}.gguf")
                    mk.convert_hf_to_gguf(hf, path, qt)
                    meta, gt = moe_ref.read_gguf(path)
                    self.assertEqual(meta["general.architecture"], mk.GGUF_ARCH[arch])
                    self.assertEqual(meta["general.file_type"], mk.FILE_TYPE[qt])
                    self.assertEqual(len(meta["tokenizer.ggml.tokens"]), self.cfgs[arch]["vocab_size"])
                    got = moe_ref.load(path).logits(self.ids(arch))
                    self.assertTrue(np.isfinite(got).all())
                    if tol is None:
                        assert_close_robust(self, got, want)
                    else:
                        self.assertLess(float(np.abs(got - want).max()), tol)

    def test_gguf_layout(self):
        """Spot checks of the mapping table (names, ne, F32 rules, permutation)."""
        path = os.path.join(self.dir, "layout_mixtral.gguf")
        mk.convert_hf_to_gguf(os.path.join(self.dir, "mixtral"), path, "bf16")
        meta, gt = moe_ref.read_gguf(path)
        t = self.models["mixtral"].t
        c = self.cfgs["mixtral"]
        E, F, H = c["num_local_experts"], c["intermediate_size"], c["hidden_size"]
        self.assertEqual(gt["blk.0.ffn_gate_exps.weight"].shape, (E, F, H))
        self.assertEqual(gt["blk.0.ffn_down_exps.weight"].shape, (E, H, F))
        np.testing.assert_array_equal(gt["blk.1.ffn_up_exps.weight"][2], t["model.layers.1.block_sparse_moe.experts.2.w3.weight"])
        q = t["model.layers.0.self_attn.q_proj.weight"]
        self.assertFalse(np.array_equal(gt["blk.0.attn_q.weight"], q))  # permuted
        np.testing.assert_array_equal(gt["blk.0.attn_q.weight"], mk.permute_llama_qk(q, c["num_attention_heads"]))
        self.assertEqual(meta["llama.rope.dimension_count"], H // c["num_attention_heads"])
        self.assertNotIn("llama.expert_weights_norm", meta)
        path = os.path.join(self.dir, "layout_qwen2.gguf")
        mk.convert_hf_to_gguf(os.path.join(self.dir, "qwen2_moe"), path, "q8_0")
        meta, gt = moe_ref.read_gguf(path)
        t = self.models["qwen2_moe"].t
        np.testing.assert_array_equal(gt["blk.0.attn_q.weight"].shape, t["model.layers.0.self_attn.q_proj.weight"].shape)
        self.assertLess(float(np.abs(gt["blk.0.attn_q.weight"] - t["model.layers.0.self_attn.q_proj.weight"]).max()), 0.02)
        self.assertEqual(gt["blk.0.ffn_gate_inp_shexp.weight"].shape, (64,))
        np.testing.assert_array_equal(gt["blk.0.ffn_gate_inp.weight"], t["model.layers.0.mlp.gate.weight"])  # F32
        self.assertEqual(meta["qwen2moe.expert_feed_forward_length"], 32)
        self.assertEqual(meta["qwen2moe.expert_shared_feed_forward_length"], 64)
        self.assertNotIn("qwen2moe.expert_weights_norm", meta)

    def test_cli(self):
        d = tempfile.mkdtemp()
        try:
            hf = os.path.join(d, "m")
            r = subprocess.run([PYTHON, os.path.join(REF, "make_arch_model.py"), "--arch", "qwen3_moe", "--out", hf,
                                "--gguf", hf + ".gguf", "--gguf-type", "q8_0"], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            ids = self.ids("qwen3_moe", 5)
            for path in (hf, hf + ".gguf"):
                out = os.path.join(d, "out.bin")
                r = subprocess.run([PYTHON, os.path.join(REF, "moe_ref.py"), "--model", path,
                                    "--ids", " ".join(map(str, ids)), "--out", out], capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
                got = np.fromfile(out, "<f4").reshape(len(ids), -1)
                np.testing.assert_allclose(got, moe_ref.load(path).logits(ids), atol=1e-6)
            # deterministic: same seed -> same bytes
            r = subprocess.run([PYTHON, os.path.join(REF, "make_arch_model.py"), "--arch", "qwen3_moe", "--out",
                                hf + "2"], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(hf, "model.safetensors"), "rb") as a, \
                    open(os.path.join(hf + "2", "model.safetensors"), "rb") as b:
                self.assertEqual(a.read(), b.read())
        finally:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
