"""A GGUF file taken apart and put back together byte for byte (standard library only), for
the tools that rewrite real files: tests/integration/test_bad_files.py breaks them,
tests/fuzz/make_arch_seeds.py cuts them into fuzz seeds. (moe_ref.read_gguf reads the
values; this keeps the bytes.)"""
import struct

GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # bytes
GGML_SIZE = {0: (1, 4), 1: (1, 2), 8: (32, 34), 30: (1, 2), 39: (32, 17)}  # block, bytes


def tensor_nbytes(ne, typ):
    count = 1
    for x in ne:
        count *= x
    block, nbytes = GGML_SIZE[typ]
    return count // block * nbytes


class Gguf:
    """raw (the whole file, a bytearray to write into), version, n_kv, kv (the key/value
    section's bytes), keys, records (per key: (key, value type, the record's bytes)), alignment, data_start, and per tensor a dict: name, ne, type,
    offset (in the data section), nbytes, info_at (where its info record starts) and
    offset_at (where its offset field sits)."""

    def __init__(self, raw):
        self.raw = bytearray(raw)
        d, p = self.raw, 4

        def take(fmt):
            nonlocal p
            v = struct.unpack_from(fmt, d, p)[0]
            p += struct.calcsize(fmt)
            return v

        def skip(t):
            nonlocal p
            if t in GGUF_SCALAR:
                p += GGUF_SCALAR[t]
            elif t == 8:
                n = take("<Q")  # (not p += take(): that would add to p as it was before)
                p += n
            else:
                et, n = take("<I"), take("<Q")
                for _ in range(n):
                    skip(et)

        self.version, n_tensors, self.n_kv = take("<I"), take("<Q"), take("<Q")
        kv_begin = p
        self.keys, self.records = [], []
        self.alignment = 32
        for _ in range(self.n_kv):
            at = p
            n = take("<Q")
            key = bytes(d[p:p + n]).decode()
            self.keys.append(key)
            p += n
            t = take("<I")
            if key == "general.alignment":
                self.alignment = struct.unpack_from("<I", d, p)[0]
            skip(t)
            self.records.append((key, t, bytes(d[at:p])))
        self.kv = bytes(d[kv_begin:p])
        self.tensors = []
        for _ in range(n_tensors):
            at = p
            n = take("<Q")
            name = bytes(d[p:p + n]).decode()
            p += n
            ne = [take("<Q") for _ in range(take("<I"))]
            typ = take("<I")
            off_at = p
            off = take("<Q")
            self.tensors.append({"name": name, "ne": ne, "type": typ, "offset": off,
                                 "info_at": at, "offset_at": off_at,
                                 "nbytes": tensor_nbytes(ne, typ)})
        self.data_start = (p + self.alignment - 1) // self.alignment * self.alignment

    @classmethod
    def read(cls, path):
        with open(path, "rb") as f:
            return cls(f.read())

    def tensor(self, name):
        return next(t for t in self.tensors if t["name"] == name)

    def data(self, t, nbytes=None):
        """The first nbytes (default: all) of tensor t's data."""
        b = self.data_start + t["offset"]
        return bytes(self.raw[b:b + (t["nbytes"] if nbytes is None else nbytes)])


def gguf_bytes(version, n_kv, kv, tensors, alignment, datas=None):
    """A GGUF file: header, kv (n_kv records, as bytes), the infos of tensors (dicts with
    name, ne, type, offset) and, with datas (bytes per tensor), the padding and the data
    section with each tensor's bytes at its offset; without, it ends after the infos."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), n_kv) + kv
    for t in tensors:
        nm = t["name"].encode()
        out += struct.pack("<Q", len(nm)) + nm + struct.pack("<I", len(t["ne"]))
        out += b"".join(struct.pack("<Q", x) for x in t["ne"])
        out += struct.pack("<IQ", t["type"], t["offset"])
    if datas is None:
        return out
    out += b"\0" * (-len(out) % alignment)
    data = bytearray()
    for t, d in zip(tensors, datas):
        data += b"\0" * (t["offset"] - len(data))
        data += d
    return out + bytes(data)
