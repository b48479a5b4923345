#!/usr/bin/env python3
"""Seeds for the fuzz targets from the architecture fixtures of tests/data/arch, so the
fuzzers start from every architecture's real keys and tensor names. Run by hand (standard
library only) after a fixture is added or regenerated; the output is checked in:

    python3 tests/fuzz/make_arch_seeds.py

Writes, for each fixture NAME:

  tests/fuzz/corpus/fuzz_config/NAME-v5.json, NAME-v4.json
      the config.json of v5/ and v4/ as they are
  tests/fuzz/corpus/fuzz_gguf/NAME-meta.gguf
      model.gguf's header and metadata (but the vocabulary's arrays), no tensors (opens; without token_embd the config
      has no vocabulary size, so moe_config_from_gguf stops at its last check)
  tests/fuzz/corpus/fuzz_gguf/NAME-infos.gguf
      header, metadata and the tensor infos of the layers 0 and 1 as they are, the data
      left out (the reader walks every info, then finds the data missing)
  tests/fuzz/corpus/fuzz_gguf/NAME-small.gguf, tests/fuzz/corpus/fuzz_config/NAME-small.gguf
      the same infos with every dimension cut to one block (F32/BF16: 2, MXFP4/Q8_0: 32),
      the data to match, from the start of each real tensor (opens, and its config reads)
  tests/fuzz/corpus/fuzz_safetensors/NAME-small.safetensors
      v5/model.safetensors' tensors of the layers 0 and 1 (experts 0 and 1), their real
      names and dtypes, every dimension cut to 2 (MXFP4 blocks: 16 bytes), aligned as the
      safetensors library writes (opens)
  tests/fuzz/corpus/fuzz_safetensors/NAME-header.safetensors
      the same header with the real shapes, the data left out

and tests/fuzz/corpus/fuzz_config.dict: every key of those configs (quoted, as in JSON)
and of the GGUFs' metadata, for libFuzzer's -dict.

Layers past 1 and experts past 1 repeat the same names with other numbers; leaving them
out keeps every seed well under run_fuzz.sh's -max_len of 16384 bytes.
"""
import json
import os
import re
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARCH = os.path.join(ROOT, "tests", "data", "arch")
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")
MAX_LEN = 16384
KEYS = set()  # config and metadata keys seen, for the dictionary
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
from gguf_layout import GGML_SIZE, Gguf, gguf_bytes, tensor_nbytes  # noqa: E402

ST_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
            "I16": 2, "U16": 2, "U8": 1, "I8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def keep(name):
    """layers 0 and 1 and the model's own tensors; per-expert tensors of experts 0 and 1"""
    m = re.search(r"(?:^|\.)(?:layers|blk)\.(\d+)\.", name)
    if m and int(m.group(1)) > 1:
        return False
    m = re.search(r"\.experts\.(\d+)\.", name)
    return not (m and int(m.group(1)) > 1)


def gguf_seeds(name, path):
    g = Gguf.read(path)
    KEYS.update(k.encode() for k in g.keys)
    # the vocabulary's arrays (tokens, merges, ...) would pass -max_len alone, and no target
    # here reads them (fuzz_tokenizer_* do); its small keys stay
    kv = [r for k, t, r in g.records if not (k.startswith("tokenizer.") and t == 9)]
    head = (g.version, len(kv), b"".join(kv))
    meta = gguf_bytes(*head, [], g.alignment)
    kept = [t for t in g.tensors if keep(t["name"])]
    infos = gguf_bytes(*head, kept, g.alignment)
    small, datas, off = [], [], 0
    for t in kept:
        block = GGML_SIZE[t["type"]][0]
        sne = [block if i == 0 else 1 for i in range(len(t["ne"]))]
        if t["type"] in (0, 1, 30) and t["ne"]:
            sne[0] = min(t["ne"][0], 2)
        size = tensor_nbytes(sne, t["type"])
        small.append({"name": t["name"], "ne": sne, "type": t["type"], "offset": off})
        datas.append(g.data(t, size))
        off = (off + size + g.alignment - 1) // g.alignment * g.alignment
    small = gguf_bytes(*head, small, g.alignment, datas)
    return {("fuzz_gguf", name + "-meta.gguf"): meta,
            ("fuzz_gguf", name + "-infos.gguf"): infos,
            ("fuzz_gguf", name + "-small.gguf"): small,
            ("fuzz_config", name + "-small.gguf"): small}


def st_seeds(name, path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    kept = {k: v for k, v in header.items() if k == "__metadata__" or keep(k)}

    def pack(h, body):
        js = json.dumps(h, separators=(",", ":")).encode()
        js += b" " * (-len(js) % 8)
        return struct.pack("<Q", len(js)) + js + body

    # small: every dimension cut to 2, written largest dtype first as the library does
    names = sorted((k for k in kept if k != "__metadata__"),
                   key=lambda k: (-ST_BYTES[kept[k]["dtype"]], k))
    small, body = {}, bytearray()
    if "__metadata__" in kept:
        small["__metadata__"] = kept["__metadata__"]
    for k in names:
        v = kept[k]
        es = ST_BYTES[v["dtype"]]
        shape = [min(d, 2) for d in v["shape"]]
        if k.endswith("_blocks"):  # MXFP4 blocks: the last dimension is a block's 16 bytes
            shape[-1] = v["shape"][-1]
        count = 1
        for d in shape:
            count *= d
        b = v["data_offsets"][0]
        small[k] = {"dtype": v["dtype"], "shape": shape,
                    "data_offsets": [len(body), len(body) + count * es]}
        body += data[b:b + count * es]
    return {("fuzz_safetensors", name + "-small.safetensors"): pack(small, bytes(body)),
            ("fuzz_safetensors", name + "-header.safetensors"): pack(kept, b"")}


def walk_keys(v):
    if isinstance(v, dict):
        for k, x in v.items():
            KEYS.add(json.dumps(k).encode())
            walk_keys(x)
    elif isinstance(v, list):
        for x in v:
            walk_keys(x)


def write_dict(path, words):
    esc = lambda w: "".join(chr(c) if 32 <= c < 127 and c not in b'"\\' else "\\x%02x" % c
                            for c in w)
    with open(path, "w") as f:
        f.writelines('"%s"\n' % esc(w) for w in sorted(words))


def main():
    seeds = {}
    for name in sorted(os.listdir(ARCH)):
        d = os.path.join(ARCH, name)
        if not os.path.isdir(d):
            continue
        for flavour in ("v5", "v4"):
            cfg = os.path.join(d, flavour, "config.json")
            if os.path.isfile(cfg):
                with open(cfg, "rb") as f:
                    seeds[("fuzz_config", "%s-%s.json" % (name, flavour))] = f.read()
                with open(cfg) as f:
                    walk_keys(json.load(f))
        if os.path.isfile(os.path.join(d, "model.gguf")):
            seeds.update(gguf_seeds(name, os.path.join(d, "model.gguf")))
        if os.path.isfile(os.path.join(d, "v5", "model.safetensors")):
            seeds.update(st_seeds(name, os.path.join(d, "v5", "model.safetensors")))
    total = 0
    for (target, fname), b in sorted(seeds.items()):
        if len(b) > MAX_LEN:
            sys.exit("%s/%s: %d bytes, over run_fuzz.sh's -max_len" % (target, fname, len(b)))
        os.makedirs(os.path.join(OUT, target), exist_ok=True)
        with open(os.path.join(OUT, target, fname), "wb") as f:
            f.write(b)
        total += len(b)
    write_dict(os.path.join(OUT, "fuzz_config.dict"), KEYS)
    print("%d seeds, %d bytes, %d dictionary words" % (len(seeds), total, len(KEYS)))


if __name__ == "__main__":
    main()
