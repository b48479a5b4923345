#!/usr/bin/env python3
"""Seeds for the fuzz targets from the architecture fixtures of tests/data/arch, so the
fuzzers start from every architecture's real keys and tensor names. Run by hand (standard
library only) after a fixture is added or regenerated; the output is checked in:

    python3 tests/fuzz/make_arch_seeds.py

Writes, for each fixture NAME:

  tests/fuzz/corpus/fuzz_config/NAME-v5.json, NAME-v4.json
      the config.json of v5/ and v4/ as they are
  tests/fuzz/corpus/fuzz_gguf/NAME-meta.gguf
      model.gguf's header and metadata, no tensors (opens; without token_embd the config
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

GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
GGML = {0: (1, 4), 1: (1, 2), 8: (32, 34), 30: (1, 2), 39: (32, 17)}  # block, bytes
ST_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
            "I16": 2, "U16": 2, "U8": 1, "I8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def keep(name):
    """layers 0 and 1 and the model's own tensors; per-expert tensors of experts 0 and 1"""
    m = re.search(r"(?:^|\.)(?:layers|blk)\.(\d+)\.", name)
    if m and int(m.group(1)) > 1:
        return False
    m = re.search(r"\.experts\.(\d+)\.", name)
    return not (m and int(m.group(1)) > 1)


def gguf_parse(raw):
    p = 4

    def take(fmt):
        nonlocal p
        v = struct.unpack_from(fmt, raw, p)[0]
        p += struct.calcsize(fmt)
        return v

    def skip(t):
        nonlocal p
        if t in GGUF_SCALAR:
            p += GGUF_SCALAR[t]
        elif t == 8:
            n = take("<Q")
            p += n
        else:
            et, n = take("<I"), take("<Q")
            for _ in range(n):
                skip(et)

    version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
    kv_begin = p
    align = 32
    for _ in range(n_kv):
        n = take("<Q")
        key = raw[p:p + n]
        KEYS.add(key)
        p += n
        t = take("<I")
        if key == b"general.alignment":
            align = struct.unpack_from("<I", raw, p)[0]
        skip(t)
    kv = raw[kv_begin:p]
    tensors = []
    for _ in range(n_tensors):
        n = take("<Q")
        name = raw[p:p + n].decode()
        p += n
        ne = [take("<Q") for _ in range(take("<I"))]
        typ, off = take("<I"), take("<Q")
        tensors.append((name, ne, typ, off))
    data_start = (p + align - 1) // align * align
    return version, n_kv, kv, tensors, data_start, align


def gguf_bytes(version, n_kv, kv, tensors, align, datas=None):
    """tensors: [(name, ne, type, offset)]; datas: bytes per tensor or None (left out)"""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), n_kv) + kv
    for name, ne, typ, off in tensors:
        nm = name.encode()
        out += struct.pack("<Q", len(nm)) + nm + struct.pack("<I", len(ne))
        out += b"".join(struct.pack("<Q", x) for x in ne) + struct.pack("<IQ", typ, off)
    if datas is None:
        return out
    out += b"\0" * (-len(out) % align)
    data = bytearray()
    for (name, ne, typ, off), d in zip(tensors, datas):
        data += b"\0" * (off - len(data))
        data += d
    return out + bytes(data)


def gguf_seeds(name, path):
    with open(path, "rb") as f:
        raw = f.read()
    version, n_kv, kv, tensors, data_start, align = gguf_parse(raw)
    meta = gguf_bytes(version, n_kv, kv, [], align)
    kept = [t for t in tensors if keep(t[0])]
    infos = gguf_bytes(version, n_kv, kv, kept, align)
    small, datas, off = [], [], 0
    for tname, ne, typ, real_off in kept:
        block, nbytes = GGML[typ]
        sne = [block if i == 0 else 1 for i in range(len(ne))]
        if typ in (0, 1, 30) and ne:
            sne[0] = min(ne[0], 2)
        count = 1
        for x in sne:
            count *= x
        size = count // block * nbytes
        small.append((tname, sne, typ, off))
        datas.append(raw[data_start + real_off:data_start + real_off + size])
        off = (off + size + align - 1) // align * align
    small = gguf_bytes(version, n_kv, kv, small, align, datas)
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
