"""moe-bench gemv at a shape, without a model: every format asked for is
timed at every token count, interleaved over rounds, with the figures the
README quotes (weights/s, GB/s of stored bytes), and bad lists are refused."""
import json
import os
import subprocess
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("BIN", os.path.join(ROOT, "build", "bin"))


def run(*args, timeout=120):
    p = subprocess.run([os.path.join(BIN, "moe-bench")] + [str(a) for a in args],
                       capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


class GemvAtAShape(unittest.TestCase):
    def test_formats_and_token_counts(self):
        rc, out, err = run("gemv", "--rows", 96, "--cols", 320, "--formats", "mxfp4,gq4,q8,bf16",
                           "--batch", "1,3", "--rounds", 3, "--seconds", 0.01, "--span-mib", 0,
                           "--threads", 1)
        self.assertEqual(rc, 0, err)
        j = json.loads(out)
        self.assertEqual(j["shape"], [96, 320])
        self.assertEqual(j["rounds"], 3)
        got = {(r["format"], r["n"]): r for r in j["gemv"]}
        self.assertEqual(set(got), {(f, n) for f in ("mxfp4", "gq4", "q8_0", "bf16")
                                    for n in (1, 3)})
        for (f, n), r in got.items():
            self.assertEqual(len(r["rounds"]), 3)
            self.assertGreater(r["weights_per_s"], 0)
            # GB/s is the stored bytes of the weights read, once for all n tokens
            self.assertAlmostEqual(r["gbs"] * 1e9 * 8 / r["weights_per_s"], r["bits_per_weight"],
                                   delta=0.05 * r["bits_per_weight"])
        self.assertEqual(got[("mxfp4", 1)]["bits_per_weight"], 4.25)
        self.assertEqual(got[("mxfp4", 1)]["ratio_to_first"], 1.0)
        # 320 columns are not whole groups of 128: gq4 is timed at 384, and says so
        self.assertEqual(got[("gq4", 1)]["cols"], 384)
        self.assertEqual(got[("mxfp4", 1)]["cols"], 320)
        self.assertIn("gq4: 320 columns", err)

    def test_bad_arguments(self):
        for args, needle in ((["--rows", 64, "--cols", 48, "--formats", "mxfp4"], None),
                             (["--rows", 64, "--cols", 64, "--formats", "qmoe"], "'qmoe'"),
                             (["--rows", 64, "--cols", 64, "--formats", "bogus"], "'bogus'"),
                             (["--rows", 64], "--rows and --cols go together"),
                             (["--rows", 64, "--cols", 64, "--batch", "0"], "batch"),
                             (["--rows", 64, "--cols", 64, "--model", "x"], "drop --model")):
            rc, out, err = run("gemv", *args, "--span-mib", 0, "--seconds", 0.01, "--rounds", 1)
            if needle is None:  # 48 columns: mxfp4 is timed at 64
                self.assertEqual(rc, 0, err)
                self.assertEqual(json.loads(out)["gemv"][0]["cols"], 64)
                continue
            self.assertEqual(rc, 2, args)
            self.assertEqual(out, "")
            self.assertIn(needle, err)
        rc, _, err = run("ppl", "--rows", 64, "--cols", 64)
        self.assertEqual(rc, 2)
        self.assertIn("for gemv", err)


if __name__ == "__main__":
    unittest.main()
