#!/usr/bin/python3
"""Builds Hugging Face tokenizer.json files from the vocabulary-only GGUF files
next to this script, so the tokenizer.json loader can be checked against the
same test vectors as the GGUF loader.

    /usr/bin/python3 tests/data/tokenizers/make_tokenizer_json.py

Writes ggml-vocab-gpt-2.tokenizer.json (byte-level BPE: vocab from
tokenizer.ggml.tokens, merges from tokenizer.ggml.merges) and
ggml-vocab-llama-spm.tokenizer.json (BPE with byte_fallback; merges derived
from the vocabulary ordered by score, the way transformers' SentencePiece
converter derives them). GGUF is parsed here with the standard library and
numpy only.
"""

import json
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i",
          F32: "<f", BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}
NUMPY = {U8: "<u1", I8: "<i1", U16: "<u2", I16: "<i2", U32: "<u4", I32: "<i4",
         F32: "<f4", BOOL: "<u1", U64: "<u8", I64: "<i8", F64: "<f8"}

# llama.cpp token types
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = 1, 2, 3, 4, 5, 6


class Reader:
    def __init__(self, data):
        self.d = data
        self.p = 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.d, self.p)[0]
        self.p += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        s = self.d[self.p:self.p + n]
        self.p += n
        return s.decode("utf-8")

    def value(self, t):
        if t == STRING:
            return self.string()
        if t == ARRAY:
            et = self.take("<I")
            n = self.take("<Q")
            if et == STRING:
                return [self.string() for _ in range(n)]
            if et == ARRAY:
                return [self.value(ARRAY) for _ in range(n)]
            a = np.frombuffer(self.d, dtype=NUMPY[et], count=n, offset=self.p)
            self.p += a.nbytes
            return a
        return self.take(SCALAR[t])


def read_gguf_kv(path):
    with open(path, "rb") as f:
        data = f.read()
    r = Reader(data)
    if data[:4] != b"GGUF":
        sys.exit(f"{path}: not a GGUF file")
    r.p = 4
    version = r.take("<I")
    if version not in (2, 3):
        sys.exit(f"{path}: GGUF version {version} not supported")
    r.take("<Q")  # tensor count
    n_kv = r.take("<Q")
    kv = {}
    for _ in range(n_kv):
        key = r.string()
        kv[key] = r.value(r.take("<I"))
    return kv


def added_token(i, content, special=True):
    return {"id": i, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": not special, "special": special}


def gpt2_json(kv):
    tokens = kv["tokenizer.ggml.tokens"]
    types = kv.get("tokenizer.ggml.token_type")
    types = None if types is None else [int(t) for t in types]
    vocab = {t: i for i, t in enumerate(tokens)}
    added = []
    if types is not None:
        for i, t in enumerate(tokens):
            if types[i] in (TT_CONTROL, TT_USER_DEFINED):
                added.append(added_token(i, t, types[i] == TT_CONTROL))
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
          "use_regex": True}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": bl,
        "post_processor": dict(bl, trim_offsets=False),
        "decoder": bl,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": False, "byte_fallback": False,
                  "vocab": vocab,
                  # "a b" strings, the older form of the merges list
                  "merges": list(kv["tokenizer.ggml.merges"])},
    }


def spm_merges(tokens, scores):
    """transformers' SentencePieceExtractor.extract(vocab_scores): every split
    of a piece into two pieces of the vocabulary is a merge; merges are
    ordered by the score of the piece they make, highest first (a stable
    sort, so ties keep vocabulary order, then (left id, right id))."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for piece, score in zip(tokens, scores):
        local = []
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                local.append((left, right, score))
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2], reverse=True)
    return [[m[0], m[1]] for m in merges]


def llama_json(kv):
    tokens = kv["tokenizer.ggml.tokens"]
    scores = [float(s) for s in kv["tokenizer.ggml.scores"]]
    types = [int(t) for t in kv["tokenizer.ggml.token_type"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    bos = int(kv.get("tokenizer.ggml.bos_token_id", 1))
    unk = int(kv.get("tokenizer.ggml.unknown_token_id", 0))
    added = [added_token(i, t, types[i] != TT_USER_DEFINED) for i, t in enumerate(tokens)
             if types[i] in (TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED)]
    sp = "\u2581"
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": sp},
            {"type": "Replace", "pattern": {"String": " "}, "content": sp}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": tokens[bos], "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": tokens[bos], "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": tokens[bos], "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tokens[bos]: {"id": tokens[bos], "ids": [bos],
                                             "tokens": [tokens[bos]]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": sp}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": tokens[unk],
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab,
                  # [a, b] pairs, the newer form of the merges list
                  "merges": spm_merges(tokens, scores)},
    }


def write(name, obj):
    path = os.path.join(HERE, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"{path}: {os.path.getsize(path)} bytes")


def main():
    gpt2 = read_gguf_kv(os.path.join(HERE, "ggml-vocab-gpt-2.gguf"))
    write("ggml-vocab-gpt-2.tokenizer.json", gpt2_json(gpt2))
    llama = read_gguf_kv(os.path.join(HERE, "ggml-vocab-llama-spm.gguf"))
    write("ggml-vocab-llama-spm.tokenizer.json", llama_json(llama))


if __name__ == "__main__":
    main()
