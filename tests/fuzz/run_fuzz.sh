#!/usr/bin/env bash
# Builds the libFuzzer targets (make fuzz) and runs each for SECONDS.
#
#   tests/fuzz/run_fuzz.sh [SECONDS] [TARGET...]     (default 600, every target)
#   e.g. tests/fuzz/run_fuzz.sh 60 fuzz_gguf
#
# Each target starts from build/fuzz/work/corpus_TARGET (kept between runs, so
# coverage accumulates) plus seeds: small valid files generated here for the
# format readers, and tests/fuzz/corpus/TARGET/ when it exists (for the config,
# GGUF and safetensors targets: every arch fixture's configs and file headers,
# made by tests/fuzz/make_arch_seeds.py). New inputs go only to
# build/fuzz/work, never into the repository.
# Crashes, leaks, timeouts, UBSan reports and huge allocations (over 512 MB)
# are failures; the inputs that caused them are saved as
# build/fuzz/work/crash_TARGET-*. Exits non-zero if any target failed.
#
# Targets run one after another (one core each): machines here are shared.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root" || exit 2
secs=${1:-600}
shift || true
PYTHON=${PYTHON:-python3}
work=build/fuzz/work

make -j2 fuzz >/dev/null || { echo "run_fuzz: make fuzz failed" >&2; exit 2; }
mkdir -p "$work"

if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in build/fuzz/fuzz_*; do
        [ -x "$f" ] && targets+=("$(basename "$f")")
    done
fi

# ---- seeds and dictionaries --------------------------------------------------
seed_formats() { # $1 safetensors dir, $2 gguf dir, $3 work dir (dicts)
    "$PYTHON" - "$1" "$2" "$3" <<'EOF'
import json, os, struct, sys
st_dir, gg_dir, work = sys.argv[1:4]
os.makedirs(st_dir, exist_ok=True)
os.makedirs(gg_dir, exist_ok=True)

def st_file(tensors, meta=True):
    """tensors: [(name, dtype, shape, data bytes)] -> safetensors bytes, the header
    padded to 8 bytes as the safetensors library pads it (tensors listed largest
    dtype first stay aligned, as moed requires)"""
    hdr, data = {}, b""
    if meta:
        hdr["__metadata__"] = {"format": "pt"}
    for name, dtype, shape, raw in tensors:
        hdr[name] = {"dtype": dtype, "shape": shape,
                     "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data

def put(d, name, b):
    with open(os.path.join(d, name), "wb") as f:
        f.write(b)

f32 = struct.pack("<6f", 0, 1, 2, 3, 4, 5)
put(st_dir, "valid", st_file([
    ("a.weight", "F32", [2, 3], f32),
    ("b.weight", "F16", [4], struct.pack("<4e", 0.5, -1, 2, 3)),
    ("c.weight", "BF16", [2, 2], b"\x80\x3f" * 4),
    ("d.pos", "I64", [2], struct.pack("<2q", -1, 7)),
    ("e.scalar", "F32", [], struct.pack("<f", 1)),
    ("f.empty", "U8", [0, 3], b""),
]))
put(st_dir, "other-dtypes", st_file([
    (t, t, [2], b"\0" * (2 * n)) for t, n in
    [("F64", 8), ("U64", 8), ("I32", 4), ("U16", 2), ("I8", 1), ("BOOL", 1), ("F8_E4M3", 1),
     ("F8_E5M2", 1)]], meta=False))
# sharded: index, NUL, shard (the target writes the shard as a. and b.)
shard = st_file([("x.weight", "F32", [2], struct.pack("<2f", 1, 2)),
                 ("y.weight", "BF16", [1, 2], b"\0\0\0\0")], meta=False)
idx = {"metadata": {"total_size": 12},
       "weight_map": {"x.weight": "a.safetensors", "y.weight": "a.safetensors"}}
put(st_dir, "sharded", json.dumps(idx).encode() + b"\0" + shard)
idx2 = {"weight_map": {"x.weight": "a.safetensors", "y.weight": "b.safetensors"}}
put(st_dir, "sharded-dup", json.dumps(idx2).encode() + b"\0" + shard)

def gs(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b

def gkv(key, typ, payload):
    return gs(key) + struct.pack("<I", typ) + payload

def gguf(kvs, tensors, align=32, version=3):
    """tensors: [(name, ggml type, ne list, data bytes)]"""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)) + b"".join(kvs)
    infos, data = b"", b""
    for name, typ, ne, raw in tensors:
        off = (len(data) + align - 1) // align * align
        data = data.ljust(off, b"\0") + raw
        infos += gs(name) + struct.pack("<I", len(ne)) + b"".join(
            struct.pack("<Q", n) for n in ne) + struct.pack("<IQ", typ, off)
    out += infos
    out = out.ljust((len(out) + align - 1) // align * align, b"\0")
    return out + data

arr = lambda et, items: struct.pack("<IQ", et, len(items)) + b"".join(items)
kvs = [
    gkv("general.architecture", 8, gs("llama")),
    gkv("a.u8", 0, b"\x07"), gkv("a.i8", 1, b"\xfb"), gkv("a.u16", 2, b"\x01\x02"),
    gkv("a.i16", 3, b"\xff\xff"), gkv("a.u32", 4, struct.pack("<I", 7)),
    gkv("a.i32", 5, struct.pack("<i", -7)), gkv("a.f32", 6, struct.pack("<f", 0.5)),
    gkv("a.bool", 7, b"\x01"), gkv("a.u64", 10, struct.pack("<Q", 1 << 40)),
    gkv("a.i64", 11, struct.pack("<q", -1)), gkv("a.f64", 12, struct.pack("<d", 1e-5)),
    gkv("tokenizer.ggml.tokens", 9, arr(8, [gs(t) for t in ["<unk>", "<s>", "</s>", "a"]])),
    gkv("tokenizer.ggml.scores", 9, arr(6, [struct.pack("<f", -i) for i in range(4)])),
    gkv("a.nested", 9, arr(9, [arr(0, [b"\x01"]), arr(8, [gs("x")])])),
]
f32 = struct.pack("<6f", *range(6))
q8 = (struct.pack("<e", 0.5) + bytes(range(32))) * 2
tensors = [
    ("t.f32", 0, [3, 2], f32),
    ("t.f16", 1, [4], struct.pack("<4e", 1, 2, 3, 4)),
    ("t.bf16", 30, [2, 2], b"\x80\x3f" * 4),
    ("t.q8", 8, [32, 2], q8),
]
put(gg_dir, "valid", gguf(kvs, tensors))
put(gg_dir, "valid-align64", gguf(kvs + [gkv("general.alignment", 4, struct.pack("<I", 64))],
                                  tensors, align=64))
put(gg_dir, "v2", gguf(kvs[:3], tensors[:1], version=2))
put(gg_dir, "vocab-only", gguf(kvs, []))

def write_dict(name, words):
    esc = lambda w: "".join(chr(c) if 32 <= c < 127 and c not in b'"\\' else "\\x%02x" % c
                            for c in w)
    with open(os.path.join(work, name), "w") as f:
        f.writelines('"%s"\n' % esc(w) for w in words)

write_dict("safetensors.dict", [b'"%s"' % w.encode() for w in [
    "dtype", "shape", "data_offsets", "__metadata__", "weight_map", "F32", "F16", "BF16",
    "I64", "F4", "U8", "BOOL", "C64", "F8_E8M0", "F6_E2M3", "a.safetensors", "b.safetensors",
    "../a.safetensors"]] +
    [b"{", b"}", b"[", b"]", b":", b",", b"\0"])
write_dict("gguf.dict", [b"GGUF", b"general.alignment", b"general.architecture",
                         b"\x01\x00\x00\x00", b"\x03\x00\x00\x00",
                         b"\x08\x00\x00\x00", b"\x09\x00\x00\x00", b"\x1e\x00\x00\x00",
                         b"\x27\x00\x00\x00", b"\x40\x00\x00\x00"])
EOF
}

seed_formats "$work/seed_fuzz_safetensors" "$work/seed_fuzz_gguf" "$work" ||
    { echo "run_fuzz: seed generation failed" >&2; exit 2; }

# ---- run ----------------------------------------------------------------------
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
failed=()
for t in "${targets[@]}"; do
    bin=build/fuzz/$t
    [ -x "$bin" ] || { echo "run_fuzz: no $bin" >&2; failed+=("$t"); continue; }
    corpus=$work/corpus_$t
    mkdir -p "$corpus"
    dirs=("$corpus")
    [ -d "$work/seed_$t" ] && dirs+=("$work/seed_$t")
    [ -d "tests/fuzz/corpus/$t" ] && dirs+=("tests/fuzz/corpus/$t")
    opts=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512
          -max_len=16384 -print_final_stats=1 -artifact_prefix="$work/crash_$t-")
    dict=$work/${t#fuzz_}.dict                      # generated above
    [ -f "$dict" ] || dict=tests/fuzz/corpus/$t.dict  # or checked in
    [ -f "$dict" ] && opts+=(-dict="$dict")
    echo "== $t: ${secs}s, corpus ${dirs[*]}"
    "$bin" "${opts[@]}" "${dirs[@]}" >"$work/$t.log" 2>&1
    rc=$?
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+.*DONE' "$work/$t.log" | tail -3
    if [ $rc -ne 0 ]; then
        echo "!! $t failed (rc $rc): see $work/$t.log"
        grep -E 'ERROR|runtime error|SUMMARY' "$work/$t.log" | head -5
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "run_fuzz: FAILED: ${failed[*]}"
    exit 1
fi
echo "run_fuzz: ${#targets[@]} target(s), ${secs}s each, no crashes"
