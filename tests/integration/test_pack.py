"""moe-pack and the moed pack end to end: packs of the bundled tiny model in
every expert format load wherever a checkpoint does, a bf16 pack reproduces
the checkpoint bit for bit, qmoe stays under one bit per weight, experts the
source already holds in the chosen format are copied bit for bit, and a
damaged or interrupted pack is reported (naming the expert) rather than used."""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("BIN", os.path.join(ROOT, "build", "bin"))
TINY = os.path.join(ROOT, "models", "tiny-moe")
TEXT = os.path.join(ROOT, "data", "tinyshakespeare.txt")
VALID_START = 1003788  # reference.json: validation text starts here; never calibrate on it
PY = os.environ.get("PYTHON", "/usr/bin/python3")
IDS = "1022 396 304 44 528 321 287 304 266"


def run(*args, timeout=300):
    p = subprocess.run([os.path.join(BIN, args[0])] + [str(a) for a in args[1:]],
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def xxh64(data, seed=0):
    """XXH64 (the pack's checksum) from its published specification."""
    m = (1 << 64) - 1
    p1, p2, p3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
    p4, p5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5

    def rotl(x, r):
        return ((x << r) | (x >> (64 - r))) & m

    def rnd(acc, v):
        return rotl((acc + v * p2) & m, 31) * p1 & m

    n, i = len(data), 0
    if n >= 32:
        v = [(seed + p1 + p2) & m, (seed + p2) & m, seed, (seed - p1) & m]
        words = struct.unpack_from("<%dQ" % (n // 32 * 4), data)
        for k in range(0, len(words), 4):
            v = [rnd(v[j], words[k + j]) for j in range(4)]
        i = n // 32 * 32
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & m
        for x in v:
            h = ((h ^ rnd(0, x)) * p1 + p4) & m
    else:
        h = (seed + p5) & m
    h = (h + n) & m
    while i + 8 <= n:
        h = (rotl(h ^ rnd(0, struct.unpack_from("<Q", data, i)[0]), 27) * p1 + p4) & m
        i += 8
    if i + 4 <= n:
        h = (rotl(h ^ (struct.unpack_from("<I", data, i)[0] * p1 & m), 23) * p2 + p3) & m
        i += 4
    while i < n:
        h = rotl(h ^ (data[i] * p5 & m), 11) * p1 & m
        i += 1
    h ^= h >> 33
    h = h * p2 & m
    h ^= h >> 29
    h = h * p3 & m
    return h ^ (h >> 32)


def rewrite_expert_hash(f, expert, new_hash):
    """Puts an expert's new checksum into the header (same length) and the
    header's own checksum into the preamble."""
    f.seek(0)
    magic, version, flags, off, size = struct.unpack("<8sIIQQ", f.read(32))
    f.seek(off)
    hdr = bytearray(f.read(size))
    old = b'"xxh64": "%s"' % expert["xxh64"].encode()
    if hdr.count(old) != 1:  # the writer's spacing, once in the header
        old = b'"xxh64":"%s"' % expert["xxh64"].encode()
    at = hdr.index(old)
    hdr[at:at + len(old)] = old.replace(expert["xxh64"].encode(), b"%016x" % new_hash)
    f.seek(off)
    f.write(hdr)
    f.seek(32)
    f.write(struct.pack("<Q", xxh64(bytes(hdr))))


def pack_header(path):
    with open(path, "rb") as f:
        pre = f.read(64)
        magic, version, flags, off, size = struct.unpack("<8sIIQQ", pre[:32])
        f.seek(off)
        return version, json.loads(f.read(size))


class PackedTiny(unittest.TestCase):
    """What the classes that pack tiny-moe in setUpClass (into cls.tmp) share."""

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def logits(self, model):
        out = os.path.join(self.tmp, "logits.bin")
        rc, _, err = run("moe-bench", "logits", "--model", model, "--ids", IDS, "--out", out)
        self.assertEqual(rc, 0, err)
        return np.fromfile(out, dtype=np.float32).reshape(len(IDS.split()), -1)


class Packs(PackedTiny):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="moe-pack-test-")
        cls.packs, cls.summary = {}, {}
        for fmt in ("bf16", "q8", "q4", "mxfp4", "qmoe-rtn", "qmoe", "mcmoe:2.5"):
            out = os.path.join(cls.tmp, f"tiny-{fmt}.moe")
            # the experts' own error, measured against the checkpoint: dense parts as it has them
            args = ["moe-pack", "--model", TINY, "--out", out, "--experts", fmt, "--dense", "bf16"]
            if fmt in ("qmoe", "mcmoe:2.5"):
                args += ["--calib", TEXT, "--calib-tokens", "4096", "--calib-end-char", VALID_START]
            rc, out_s, err = run(*args)
            if rc != 0:
                raise AssertionError(f"moe-pack {fmt} failed ({rc}): {err}")
            cls.packs[fmt] = out
            cls.summary[fmt] = (json.loads(out_s.strip().splitlines()[-1]), err)


    def test_summary_line_reports_bits_bytes_and_time(self):
        for fmt, (s, err) in self.summary.items():
            for key in ("expert_bits_per_weight", "pack_bytes", "seconds"):
                self.assertIn(key, s, fmt)
            self.assertEqual(s["pack_bytes"], os.path.getsize(self.packs[fmt]))
            self.assertIn("layer 4/4", err, fmt)
            self.assertIn("ETA", err, fmt)
        bits = {f: s["expert_bits_per_weight"] for f, (s, _) in self.summary.items()}
        self.assertAlmostEqual(bits["bf16"], 16.0, places=3)
        self.assertAlmostEqual(bits["q8"], 8.5, places=3)
        self.assertAlmostEqual(bits["q4"], 4.25, places=3)
        self.assertAlmostEqual(bits["mxfp4"], 4.25, places=3)  # 17 bytes a block of 32

    def test_qmoe_is_under_one_bit_per_weight_with_calibration(self):
        s, err = self.summary["qmoe"]
        self.assertLessEqual(s["expert_bits_per_weight"], 1.0)
        self.assertGreater(s["zero_fraction"], 0.5)
        self.assertEqual(s["calib_tokens"], 4096)
        self.assertIn("identity Hessian", err)
        _, header = pack_header(self.packs["qmoe"])
        self.assertTrue(header["quant"]["gptq"])
        self.assertEqual(header["quant"]["experts"], "qmoe")

    def test_bf16_pack_reproduces_the_checkpoint_exactly(self):
        a, b = self.logits(TINY), self.logits(self.packs["bf16"])
        self.assertEqual(np.abs(a - b).max(), 0.0)

    def test_compressed_packs_stay_close_to_the_checkpoint(self):
        ref = self.logits(TINY)
        # max |logit diff| grows as bits shrink; the greedy choice mostly survives
        for fmt, limit in (("q8", 0.1), ("q4", 1.5), ("mxfp4", 3.0), ("mcmoe:2.5", 3.0),
                           ("qmoe", 6.0), ("qmoe-rtn", 8.0)):
            got = self.logits(self.packs[fmt])
            self.assertTrue(np.isfinite(got).all(), fmt)
            self.assertLess(np.abs(got - ref).max(), limit, fmt)

    def test_mxfp4_perplexity_is_close_to_the_checkpoints(self):
        # the checkpoint: 28.90; q4 28.96; mxfp4 (ggml's round to nearest) 29.03
        ppl = {}
        for name, model in (("ref", TINY), ("mxfp4", self.packs["mxfp4"])):
            rc, out, err = run("moe-bench", "ppl", "--model", model, "--text", TEXT,
                               "--start-char", VALID_START, "--max-windows", "40")
            self.assertEqual(rc, 0, err)
            ppl[name] = json.loads(out)["ppl"]
        self.assertLess(ppl["mxfp4"], ppl["ref"] * 1.02)
        self.assertGreater(ppl["mxfp4"], ppl["ref"] * 0.98)
        _, header = pack_header(self.packs["mxfp4"])
        self.assertEqual({p["dtype"] for e in header["experts"] for p in e["parts"]}, {"mxfp4"})

    def test_experts_already_in_the_format_are_copied_bit_for_bit(self):
        """An mxfp4 source packed as mxfp4 keeps its bytes, even ones round to
        nearest never writes: negative-zero codes and a block whose largest
        code is small (RTN would pick a smaller scale)."""
        src = os.path.join(self.tmp, "mxfp4-odd.moe")
        shutil.copy(self.packs["mxfp4"], src)
        _, header = pack_header(src)
        e0 = next(e for e in header["experts"] if e["layer"] == 0 and e["expert"] == 0)
        gate = next(p for p in e0["parts"] if p["name"] == "gate")
        with open(src, "r+b") as f:
            f.seek(e0["offset"])
            blob = bytearray(f.read(e0["size"]))
            self.assertEqual(xxh64(bytes(blob)), int(e0["xxh64"], 16))  # the check checks out
            b0 = gate["offset"]  # block 0 of row 0: e, then 16 code bytes
            blob[b0 + 1:b0 + 17] = bytes([0x88] * 8 + [0x11] * 8)  # -0 codes; 0.5s
            blob[b0 + 17 + 1:b0 + 17 + 17] = bytes(x | 0x88 if x == 0 else x
                                                   for x in blob[b0 + 18:b0 + 34])
            f.seek(e0["offset"])
            f.write(blob)
            rewrite_expert_hash(f, e0, xxh64(bytes(blob)))
        out = os.path.join(self.tmp, "mxfp4-copy.moe")
        rc, out_s, err = run("moe-pack", "--model", src, "--out", out, "--experts", "mxfp4",
                             "--dense", "bf16")
        self.assertEqual(rc, 0, err)
        s = json.loads(out_s.strip().splitlines()[-1])
        self.assertEqual(s["copied_matrices"], 4 * 8 * 3)
        _, h2 = pack_header(out)
        self.assertEqual(h2["quant"]["copied_matrices"], 96)
        for a, b in zip(header["experts"], h2["experts"]):
            if (a["layer"], a["expert"]) != (0, 0):
                self.assertEqual(a["xxh64"], b["xxh64"])
        c0 = next(e for e in h2["experts"] if e["layer"] == 0 and e["expert"] == 0)
        with open(out, "rb") as f:
            f.seek(c0["offset"])
            self.assertEqual(f.read(e0["size"]), bytes(blob))
        self.assertEqual(np.abs(self.logits(src) - self.logits(out)).max(), 0.0)
        # another format: requantised, nothing copied
        rc, out_s, err = run("moe-pack", "--model", src, "--out", out, "--experts", "q4")
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out_s.strip().splitlines()[-1])["copied_matrices"], 0)

    def test_every_pack_generates_text_with_moe_run(self):
        for fmt, path in self.packs.items():
            rc, out, err = run("moe-run", "--model", path, "--prompt", "ROMEO:", "--max-tokens",
                               "16", "--temperature", "0")
            self.assertEqual(rc, 0, f"{fmt}: {err}")
            self.assertGreater(len(out.strip()), 0, fmt)

    def test_mcmoe_widths_meet_the_budget_and_are_recorded(self):
        s, err = self.summary["mcmoe:2.5"]
        self.assertEqual(err.count("widths:"), 4)
        # 2.5 bits on average plus the fp16 scale and zero of each group of 128
        self.assertLessEqual(s["expert_bits_per_weight"], 2.5 + 0.25 + 1e-9)
        rc, out, err = run("moe-bench", "stats", "--model", self.packs["mcmoe:2.5"])
        self.assertEqual(rc, 0, err)
        stats = json.loads(out)
        self.assertEqual(stats["quant"]["experts"], "mcmoe")
        layers = stats["meta"]["mcmoe"]
        self.assertEqual(len(layers), 4)
        # one budget for the model: 2.5 bits x 8 experts x 4 layers in all
        self.assertLessEqual(sum(sum(layer["bits"]) for layer in layers), 80)
        for layer in layers:
            bits = layer["bits"]
            self.assertEqual(len(bits), 8)
            self.assertIn(3, bits)
            self.assertIn(2, bits)
            self.assertAlmostEqual(sum(layer["frequency"]), 1.0, places=6)
            for e, loss in enumerate(layer["loss"]):  # more bits, less loss
                self.assertGreaterEqual(loss[0], loss[1], e)
                self.assertGreaterEqual(loss[1], loss[2], e)
        # calibration also fitted ODP's betas (20% of activations by default)
        # and kept the routing counts the static cache policy ranks by
        odp = stats["meta"]["odp"]
        self.assertEqual(len(odp["beta"]), 4)
        self.assertTrue(all(0 <= b <= 1 for b in odp["beta"]))
        self.assertGreaterEqual(odp["calib_removed_fraction"], 0.2)
        freq = stats["meta"]["calib"]["expert_frequency"]
        self.assertEqual([len(r) for r in freq], [8, 8, 8, 8])
        self.assertTrue(all(sum(r) > 0 for r in freq))

    def test_the_packs_fitted_odp_prunes_validation_text_at_its_level(self):
        text = os.path.join(ROOT, "data", "tinyshakespeare.txt")
        rc, out, err = run("moe-bench", "ppl", "--model", self.packs["mcmoe:2.5"], "--text", text,
                           "--start-char", "1003788", "--max-windows", "8", "--odp-beta", "pack")
        self.assertEqual(rc, 0, err)
        r = json.loads(out)["routing"]
        self.assertEqual(r["odp_beta"], "pack")
        self.assertGreater(r["activations_removed_fraction"], 0.12)
        self.assertLess(r["activations_removed_fraction"], 0.3)

    def test_mcmoe_without_calibration_is_refused(self):
        rc, _, err = run("moe-pack", "--model", TINY, "--out", os.path.join(self.tmp, "x.moe"),
                         "--experts", "mcmoe:2.5")
        self.assertEqual(rc, 1)
        self.assertIn("needs --calib", err)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "x.moe")))

    def damaged_copy(self, name):
        dst = os.path.join(self.tmp, name)
        shutil.copy(self.packs["qmoe"], dst)
        return dst

    def test_flipped_byte_in_an_expert_blob_names_the_expert(self):
        path = self.damaged_copy("flipped.moe")
        _, header = pack_header(path)
        e = next(x for x in header["experts"] if x["layer"] == 1 and x["expert"] == 3)
        with open(path, "r+b") as f:
            f.seek(e["offset"] + 100)
            b = f.read(1)
            f.seek(e["offset"] + 100)
            f.write(bytes([b[0] ^ 0x40]))
        rc, _, err = run("moe-run", "--model", path, "--prompt", "x", "--max-tokens", "1")
        self.assertGreater(rc, 0)  # an exit code, not a signal
        self.assertIn("layer 1 expert 3", err)
        self.assertIn("checksum", err)

    def test_truncated_pack_is_reported_naming_the_expert(self):
        path = self.damaged_copy("truncated.moe")
        _, header = pack_header(path)
        last = max(header["experts"], key=lambda x: x["offset"])
        with open(path, "r+b") as f:
            f.truncate(last["offset"] + 100)
        rc, _, err = run("moe-run", "--model", path, "--prompt", "x", "--max-tokens", "1")
        self.assertGreater(rc, 0)
        self.assertIn(path, err)
        # the directory sits in front of the data, so the loss is named
        self.assertIn("layer %d expert %d: blob ends past the end of the file"
                      % (last["layer"], last["expert"]), err)
        self.assertIn("truncated", err)

    def test_pack_from_a_newer_format_version_is_refused(self):
        path = self.damaged_copy("newer.moe")
        with open(path, "r+b") as f:
            f.seek(8)
            f.write(struct.pack("<I", 99))
        rc, _, err = run("moe-run", "--model", path, "--prompt", "x", "--max-tokens", "1")
        self.assertGreater(rc, 0)
        self.assertIn("version 99", err)
        self.assertIn("newer", err)


    def test_moed_serves_a_qmoe_pack(self):
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from test_daemon import Moed
        d = Moed(model=self.packs["qmoe"])
        try:
            d.wait_notify("READY=1")
            status, body = d.json("POST", "/v1/completions",
                                  {"prompt": "ROMEO:", "max_tokens": 12, "temperature": 0})
            self.assertEqual(status, 200, body)
            self.assertGreater(len(body["choices"][0]["text"]), 0)
            status, body = d.json("POST", "/v1/chat/completions",
                                  {"messages": [{"role": "user", "content": "Who art thou?"}],
                                   "max_tokens": 8})
            self.assertEqual(status, 200, body)
            status, models = d.json("GET", "/v1/models")
            self.assertEqual(status, 200)
        finally:
            d.stop()


def dead_pid():
    """A PID no process has now (from the top of the PID space down)."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid = int(f.read()) - 1
    while pid > 1:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1
    raise AssertionError("no free PID")


class Interrupted(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="moe-pack-int-")

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def interrupt(self, sig):
        """Kills a moe-pack with sig while it writes experts; returns what is
        left in its directory (and self.rc, self.pid)."""
        out = os.path.join(self.tmp, "never.moe")
        p = subprocess.Popen([os.path.join(BIN, "moe-pack"), "--model", TINY, "--out", out,
                              "--experts", "qmoe", "--calib", TEXT, "--calib-tokens", "16384",
                              "--calib-end-char", str(VALID_START)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # wait until it is writing experts, then interrupt it
        line = ""
        while "layer 1/4" not in line:
            line = p.stderr.readline()
            self.assertNotEqual(line, "", "moe-pack ended before its first layer")
        self.assertTrue(os.path.exists("%s.tmp.%d" % (out, p.pid)), "no temporary file yet")
        p.send_signal(sig)
        p.wait(timeout=60)
        p.stdout.close()
        p.stderr.close()
        self.rc, self.pid = p.returncode, p.pid
        self.assertFalse(os.path.exists(out), "an interrupted moe-pack left a file under the name")
        return sorted(os.listdir(self.tmp))

    def test_sigint_leaves_no_file_at_all(self):
        self.assertEqual(self.interrupt(signal.SIGINT), [])
        self.assertEqual(self.rc, -signal.SIGINT)  # it died of the signal, as before

    def test_sigterm_leaves_no_file_at_all(self):
        self.assertEqual(self.interrupt(signal.SIGTERM), [])
        self.assertEqual(self.rc, -signal.SIGTERM)

    def test_sigkill_leaves_a_temporary_file_that_the_next_run_removes(self):
        left = self.interrupt(signal.SIGKILL)
        self.assertEqual(self.rc, -signal.SIGKILL)
        self.assertEqual(left, ["never.moe.tmp.%d" % self.pid])  # SIGKILL cannot be caught
        out = os.path.join(self.tmp, "never.moe")
        rc, _, err = run("moe-pack", "--model", TINY, "--out", out, "--experts", "bf16")
        self.assertEqual(rc, 0, err)
        self.assertIn("removed 1 stale temporary file", err)
        self.assertEqual(os.listdir(self.tmp), ["never.moe"])

    def test_stale_temporary_files_of_live_processes_are_kept(self):
        import fcntl
        out = os.path.join(self.tmp, "x.moe")
        live = subprocess.Popen(["sleep", "120"])
        try:
            dead = dead_pid()
            names = {
                "dead": "x.moe.tmp.%d" % dead,                 # removed
                "live": "x.moe.tmp.%d" % live.pid,             # a live PID: kept
                "other_target": "y.moe.tmp.%d" % dead,         # another pack's: kept
                "not_a_pid": "x.moe.tmp.%dz" % dead,           # not a name moe-pack makes
                "zero": "x.moe.tmp.0%d" % dead,                # likewise
            }
            for n in names.values():
                with open(os.path.join(self.tmp, n), "wb") as f:
                    f.write(b"partial pack" * 100)
            # a PID we cannot see as alive (another PID namespace) but a writer
            # holds its lock: kept
            locked_name = "x.moe.tmp.%d" % (dead - 1 if dead > 2 else dead + 1)
            locked = open(os.path.join(self.tmp, locked_name), "wb")
            fcntl.flock(locked, fcntl.LOCK_EX)
            rc, _, err = run("moe-pack", "--model", TINY, "--out", out, "--experts", "bf16")
            locked.close()
            self.assertEqual(rc, 0, err)
            left = set(os.listdir(self.tmp))
            self.assertNotIn(names["dead"], left, err)
            for k in ("live", "other_target", "not_a_pid", "zero"):
                self.assertIn(names[k], left, k)
            self.assertIn(locked_name, left)
            self.assertIn("x.moe", left)
            self.assertEqual(len(left), 6, sorted(left))
        finally:
            live.kill()
            live.wait()


class DenseParts(PackedTiny):
    """moe-pack --dense: the attention projections, embeddings and lm head quantised (q8_0 or
    gq4); routers and vectors kept; the pack loads, generates, and stays near the pack with
    the dense parts as the checkpoint has them. Experts stay bf16, so the difference is the
    dense parts' alone."""

    # max |logit - bf16-dense logit| over IDS, measured on tiny-moe: q8 0.062, q4 2.11 (at a
    # -19 logit; the largest change of any top-2 logit is far smaller). Bounds: ~3x and ~2x.
    LOGIT_BOUND = {"q8": 0.2, "q4": 4.0}
    # validation perplexity (all of it) measured: bf16 28.9039, q8 28.9061, q4 28.9095
    PPL_RATIO_BOUND = 1.01

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="moe-pack-dense-")
        cls.packs, cls.summary = {}, {}
        for dense in ("bf16", "q8", "q4"):
            out = os.path.join(cls.tmp, f"tiny-dense-{dense}.moe")
            rc, out_s, err = run("moe-pack", "--model", TINY, "--out", out, "--experts", "bf16",
                                 "--dense", dense)
            if rc != 0:
                raise AssertionError(f"moe-pack --dense {dense} failed ({rc}): {err}")
            cls.packs[dense] = out
            cls.summary[dense] = (json.loads(out_s.strip().splitlines()[-1]), err)


    def test_a_qmoe_pack_packs_again(self):
        """A qmoe pack as the source of another (here to quantise its dense parts): its
        experts are decoded and coded again; the model stays what it was. Crashed before:
        the qmoe matrix had no fp32 conversion."""
        a = os.path.join(self.tmp, "tiny-qmoe.moe")
        b = os.path.join(self.tmp, "tiny-qmoe-again.moe")
        rc, _, err = run("moe-pack", "--model", TINY, "--out", a, "--experts", "qmoe-rtn",
                         "--dense", "bf16")
        self.assertEqual(rc, 0, err)
        rc, out_s, err = run("moe-pack", "--model", a, "--out", b, "--experts", "qmoe",
                             "--dense", "q8")
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out_s.strip().splitlines()[-1])["dense"], "q8")
        # the same ternary weights, coded again; the q8 dense parts move logits as above
        diff = np.abs(self.logits(a) - self.logits(b)).max()
        self.assertLess(diff, self.LOGIT_BOUND["q8"] * 2)

    def test_the_pack_holds_the_dtypes_asked_for(self):
        _, src = pack_header(self.packs["bf16"])
        src_dtype = {t["name"]: t["dtype"] for t in src["tensors"]}
        for dense, dtype in (("q8", "q8_0"), ("q4", "gq4")):
            s, err = self.summary[dense]
            _, h = pack_header(self.packs[dense])
            self.assertEqual(h["quant"]["dense"], dense)
            got = {t["name"]: t["dtype"] for t in h["tensors"]}
            self.assertEqual(set(got), set(src_dtype))
            quantised = 0
            for name, dt in got.items():
                if len(next(t for t in h["tensors"] if t["name"] == name)["shape"]) == 1:
                    self.assertEqual(dt, "f32", f"{dense}: {name}")  # norms stay fp32
                elif name.endswith(".router"):
                    self.assertEqual(dt, src_dtype[name], f"{dense}: {name}")  # routing exact
                else:  # embed, lm_head, attention q/k/v/o: 256 or 128 columns, whole blocks
                    self.assertEqual(dt, dtype, f"{dense}: {name}")
                    quantised += 1
            self.assertEqual(quantised, 2 + 4 * 4)
            self.assertEqual((s["dense_quantized"], s["dense_kept"]), (18, 0))
            self.assertIn(f"dense: 18 matrices as {dtype}", err)
            # experts untouched
            self.assertEqual({p["dtype"] for e in h["experts"] for p in e["parts"]}, {"bf16"})
        sizes = {d: s["dense_bytes"] for d, (s, _) in self.summary.items()}
        self.assertEqual(sizes["q8"] * 32, sizes["bf16"] * 17)  # 34 bytes per 32 weights
        self.assertEqual(sizes["q4"] * 128, sizes["bf16"] * 34)  # 68 bytes per 128

    def test_logits_stay_within_the_measured_bound_of_bf16_dense(self):
        ref = self.logits(self.packs["bf16"])
        for dense, bound in self.LOGIT_BOUND.items():
            got = self.logits(self.packs[dense])
            self.assertTrue(np.isfinite(got).all(), dense)
            worst = float(np.abs(got - ref).max())
            self.assertLess(worst, bound, dense)
            self.assertGreater(worst, 0.0, f"{dense}: nothing was quantised")

    def test_perplexity_stays_within_one_percent(self):
        ppl = {}
        for dense, model in self.packs.items():
            rc, out, err = run("moe-bench", "ppl", "--model", model, "--text", TEXT,
                               "--start-char", VALID_START, "--max-windows", "40")
            self.assertEqual(rc, 0, err)
            ppl[dense] = json.loads(out)["ppl"]
        for dense in ("q8", "q4"):
            self.assertLess(ppl[dense], ppl["bf16"] * self.PPL_RATIO_BOUND, ppl)
            self.assertGreater(ppl[dense], ppl["bf16"] / self.PPL_RATIO_BOUND, ppl)

    def test_quantised_dense_packs_generate(self):
        for dense in ("q8", "q4"):
            rc, out, err = run("moe-run", "--model", self.packs[dense], "--prompt", "ROMEO:",
                               "--max-tokens", "16", "--temperature", "0")
            self.assertEqual(rc, 0, f"{dense}: {err}")
            self.assertGreater(len(out.strip()), 0, dense)

    def test_a_pack_of_a_pack_copies_dense_parts_already_in_the_format(self):
        out = os.path.join(self.tmp, "again.moe")
        rc, _, err = run("moe-pack", "--model", self.packs["q8"], "--out", out, "--experts",
                         "bf16", "--dense", "q8")
        self.assertEqual(rc, 0, err)
        _, a = pack_header(self.packs["q8"])
        _, b = pack_header(out)
        self.assertEqual([(t["name"], t["dtype"], t["xxh64"]) for t in a["tensors"]],
                         [(t["name"], t["dtype"], t["xxh64"]) for t in b["tensors"]])

    def test_default_is_q8(self):
        out = os.path.join(self.tmp, "default.moe")
        rc, out_s, err = run("moe-pack", "--model", TINY, "--out", out, "--experts", "bf16")
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out_s.strip().splitlines()[-1])["dense"], "q8")
        self.assertEqual(pack_header(out)[1]["quant"]["dense"], "q8")

    def test_an_unknown_dense_format_is_a_usage_error_naming_it(self):
        for bad in ("q6", "Q8", "", "q8_0"):
            out = os.path.join(self.tmp, "bad.moe")
            rc, out_s, err = run("moe-pack", "--model", TINY, "--out", out, "--experts", "bf16",
                                 "--dense", bad)
            self.assertEqual(rc, 2, bad)
            self.assertIn(f"--dense: unknown format '{bad}'", err)
            self.assertFalse(os.path.exists(out))


class OtherArchitectures(unittest.TestCase):
    def test_qwen2_moe_packs_load_and_bf16_is_exact(self):
        tmp = tempfile.mkdtemp(prefix="moe-pack-qwen2-")
        try:
            src = os.path.join(tmp, "qwen2")
            subprocess.run([PY, os.path.join(ROOT, "tests", "reference", "make_arch_model.py"),
                            "--arch", "qwen2_moe", "--out", src, "--seed", "5"], check=True,
                           capture_output=True)
            ids = "1 5 9 200 31"
            outs = {}
            for fmt in ("bf16", "q4", "qmoe-rtn"):
                pk = os.path.join(tmp, f"{fmt}.moe")
                rc, _, err = run("moe-pack", "--model", src, "--out", pk, "--experts", fmt,
                                 "--dense", "bf16")
                if fmt == "q4" and rc != 0:
                    # the synthetic model's 32-wide experts are not whole groups of 128
                    self.assertIn("128", err)
                    continue
                self.assertEqual(rc, 0, err)
                lo = os.path.join(tmp, f"{fmt}.bin")
                rc, _, err = run("moe-bench", "logits", "--model", pk, "--ids", ids, "--out", lo)
                self.assertEqual(rc, 0, err)
                outs[fmt] = np.fromfile(lo, dtype=np.float32)
            lo = os.path.join(tmp, "src.bin")
            rc, _, err = run("moe-bench", "logits", "--model", src, "--ids", ids, "--out", lo)
            self.assertEqual(rc, 0, err)
            ref = np.fromfile(lo, dtype=np.float32)
            self.assertEqual(np.abs(outs["bf16"] - ref).max(), 0.0)
            self.assertTrue(np.isfinite(outs["qmoe-rtn"]).all())
        finally:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    unittest.main()
