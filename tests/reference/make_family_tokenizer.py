#!/usr/bin/env python3
"""Tiny tokenizers of the model families moed serves, with the ids Hugging
Face `tokenizers` gives for a mixed test text.

    /root/venv5/bin/python tests/reference/make_family_tokenizer.py [FAMILY ...]

For each family: trains a small byte-level (or SentencePiece-style) BPE with
`tokenizers` (the first 1003788 characters of tinyshakespeare plus the mixed
test text, repeated; on whole words, so that merges cross the family's piece
boundaries and a wrong split shows), sets the family's normalizer,
pre-tokenizer, decoder and BPE options as its real tokenizer.json has them,
adds the family's special tokens, and writes into
tests/data/tokenizers/<family>/:
  tokenizer.json, tokenizer_config.json  (bos / eos; the family's chat
      template where llama.cpp's models/templates/ has it)
  expected.json  the ids of every test string (add_special_tokens False and
      True) and of the chat template rendered on a short conversation, as
      `tokenizers` computes them
  vocab.gguf     (byte-level families) the same vocabulary as a GGUF with the
      tokenizer.ggml.pre name llama.cpp writes for the family, so the GGUF
      path is checked against the same ids
Every id is below 1024: these vocabularies also serve tiny model fixtures of
vocabulary size 1024. Needs tokenizers, transformers (the template) and
llama.cpp's gguf-py (GGUF_PY, default below); CI only reads the outputs.

Where each family's settings come from is noted at its entry: the model's
tokenizer.json as transformers' converters write it (Qwen2Converter,
TikTokenConverter, LlamaConverter), the original patterns quoted in
llama.cpp's src/llama-vocab.cpp, llama.cpp's conversion code (conversion/*.py)
and, where said, memory of the model repositories.
"""
import json
import os
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers
import tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "tokenizers")
LLAMA_CPP = os.environ.get("LLAMA_CPP", "/root/src/llama_cpp_python-0.3.36/vendor/llama.cpp")
CORPUS = os.environ.get("CORPUS", "/work/shared/corpus/tinyshakespeare.txt")
CORPUS_CHARS = 1003788
MAX_ID = 1024

# ---- the patterns, as the families' tokenizer.json files have them ----------------
CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
CL100K = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN35 = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
          r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
O200K = (r"[^\r\n\p{L}\p{N}]?" + UPPER + "*" + LOWER + "+" + CONTRACTIONS + "?"
         r"|[^\r\n\p{L}\p{N}]?" + UPPER + "+" + LOWER + "*" + CONTRACTIONS + "?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
UPPER_NO_HAN = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]"
LOWER_NO_HAN = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]"
KIMI = (r"[\p{Han}]+"
        r"|[^\r\n\p{L}\p{N}]?" + UPPER_NO_HAN + "*" + LOWER_NO_HAN + "+" + CONTRACTIONS + "?"
        r"|[^\r\n\p{L}\p{N}]?" + UPPER_NO_HAN + "+" + LOWER_NO_HAN + "*" + CONTRACTIONS + "?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN = (r"[^\r\n\p{L}\p{N}]?" + UPPER + "*" + LOWER + "+"
          r"|[^\r\n\p{L}\p{N}]?" + UPPER + "+" + LOWER + "*"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DSV3 = ("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+"
        "|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+"
        "|\\s+(?!\\S)|\\s+")
DS_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
DSLLM_LETTERS = (
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293"
    "\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c"
    "\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5"
    "\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59"
    "\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc"
    "\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107"
    "\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee"
    "\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e"
    "\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a"
    "\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+")
DSLLM_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
BAILING = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}"
           r"| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+")
EXAONE_MOE = (CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
              r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+")


def ds(name):
    """A DeepSeek special token: "<｜begin▁of▁sentence｜>" from "begin of sentence"."""
    return "<\uff5c" + name.replace(" ", "\u2581") + "\uff5c>"


def split(pattern, behavior="isolated", invert=False):
    return pre_tokenizers.Split(Regex(pattern), behavior=behavior, invert=invert)


def seq(*steps):
    return pre_tokenizers.Sequence(list(steps))


def byte_level(use_regex=False, prefix=False, trim=True):
    return pre_tokenizers.ByteLevel(add_prefix_space=prefix, trim_offsets=trim,
                                    use_regex=use_regex)


def bos_template(bos):
    return processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                         special_tokens=[(bos, 0)])  # id set after training


# ---- the families -----------------------------------------------------------------
# pre: the pre_tokenizer; norm: the normalizer; post: "bos" (TemplateProcessing
# adding BOS, as Llama 3 / DeepSeek), "bytelevel" or None; specials: added
# special tokens (in the order their ids run); added: non-special added tokens;
# first: special tokens that take ids 0, 1, ... (before the vocabulary);
# gguf: tokenizer.ggml.pre (None: no GGUF twin); template: models/templates/ file.
FAMILIES = {
    # meta-llama/Meta-Llama-3-8B tokenizer.json; llama.cpp "llama-bpe"
    "llama3": dict(
        pre=seq(split(CL100K), byte_level()), ignore_merges=True, post="bos",
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                  "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"],
        bos="<|begin_of_text|>", eos="<|eot_id|>", add_bos=True, gguf="llama-bpe",
        template="meta-llama-Llama-3.1-8B-Instruct.jinja"),
    # Qwen/Qwen3-*: Qwen2Converter (NFC, the Qwen2 split, ByteLevel); llama.cpp "qwen2"
    "qwen3": dict(
        norm=normalizers.NFC(), pre=seq(split(QWEN2), byte_level(trim=False)),
        post="bytelevel",
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                  "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                  "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                  "<|image_pad|>", "<|video_pad|>"],
        added=["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
               "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
               "<tool_response>", "</tool_response>", "<think>", "</think>"],
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", gguf="qwen2",
        template="Qwen-Qwen3-0.6B.jinja"),
    # Qwen/Qwen3.5-*: marks stay with letters, and no NFC (llama.cpp's
    # ggml-vocab-qwen35 vectors keep "e\u0301" apart); llama.cpp "qwen35"
    "qwen35": dict(
        pre=seq(split(QWEN35), byte_level(trim=False)),
        post="bytelevel",
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                  "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                  "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                  "<|image_pad|>", "<|video_pad|>"],
        added=["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
               "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
               "<tool_response>", "</tool_response>", "<think>", "</think>"],
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", gguf="qwen35",
        template="Qwen3.5-4B.jinja"),
    # rednote-hilab/dots.llm1: a Qwen2 tokenizer (llama.cpp converts it as Qwen2MoE);
    # its chat tokens as remembered from the model card, not checked against the repo
    "dots1": dict(
        norm=normalizers.NFC(), pre=seq(split(QWEN2), byte_level(trim=False)),
        post="bytelevel",
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|userprompt|>",
                  "<|endofuserprompt|>", "<|response|>", "<|endofresponse|>", "<|system|>",
                  "<|endofsystem|>", "<|observation|>", "<|endofobservation|>"],
        bos=None, eos="<|endofresponse|>", gguf="qwen2"),
    # deepseek-ai/deepseek-llm-7b-base: five Splits, digits one by one, ByteLevel
    # (patterns as llama-vocab.cpp quotes them; llama.cpp "deepseek-llm")
    "deepseek-llm": dict(
        pre=seq(split("[\r\n]"), split(DSLLM_LETTERS), split(DSLLM_PUNCT), split(r"\s+$"),
                split(DS_CJK), pre_tokenizers.Digits(individual_digits=True), byte_level()),
        post="bos",
        specials=[ds("begin of sentence"), ds("end of sentence")],
        bos=ds("begin of sentence"),
        eos=ds("end of sentence"), add_bos=True, gguf="deepseek-llm"),
    # deepseek-ai/deepseek-coder-6.7b-base; llama.cpp "deepseek-coder"
    "deepseek-coder": dict(
        pre=seq(split("[\r\n]"), split(r"\s?\p{L}+"), split(r"\s?\p{P}+"), split(DS_CJK),
                pre_tokenizers.Digits(individual_digits=True), byte_level()),
        post="bos",
        specials=[ds("begin of sentence"), ds("end of sentence"),
                  ds("fim hole"), ds("fim begin"),
                  ds("fim end"), "<pad>", "<|EOT|>"],
        added=["<|User|>", "<|Assistant|>"],
        bos=ds("begin of sentence"), eos="<|EOT|>", add_bos=True,
        gguf="deepseek-coder"),
    # deepseek-ai/DeepSeek-V3 (and R1, V3.1): BOS, EOS and pad are ids 0-2;
    # llama.cpp "deepseek-v3"
    "deepseek-v3": dict(
        pre=seq(split(r"\p{N}{1,3}"), split("[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"),
                split(DSV3), byte_level()),
        post="bos",
        first=[ds("begin of sentence"), ds("end of sentence"),
               ds(" pad ")],
        specials=[ds("fim hole"), ds("fim begin"),
                  ds("fim end"), ds("User"), ds("Assistant"),
                  "<|EOT|>", ds("tool calls begin"),
                  ds("tool calls end"), ds("tool call begin"),
                  ds("tool call end"), ds("tool outputs begin"),
                  ds("tool outputs end"), ds("tool output begin"),
                  ds("tool output end"), ds("tool sep")],
        added=["<think>", "</think>"],
        bos=ds("begin of sentence"),
        eos=ds("end of sentence"), add_bos=True, gguf="deepseek-v3",
        template="deepseek-ai-DeepSeek-V3.1.jinja"),
    # openai/gpt-oss-*: o200k_harmony through TikTokenConverter (ignore_merges);
    # llama.cpp "gpt-4o"
    "gpt-oss": dict(
        pre=seq(split(O200K), byte_level()), ignore_merges=True, post="bytelevel",
        specials=["<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>",
                  "<|channel|>", "<|start|>", "<|end|>", "<|message|>", "<|call|>"],
        bos="<|startoftext|>", eos="<|return|>", pad="<|endoftext|>", gguf="gpt-4o",
        template="openai-gpt-oss-120b.jinja"),
    # zai-org/GLM-4.5 / 4.6: the cl100k split; llama.cpp "glm4" (which sets ignore_merges)
    "glm45": dict(
        pre=seq(split(CL100K), byte_level()), ignore_merges=True, post="bytelevel",
        specials=["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
                  "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
                  "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
                  "<|end_of_video|>", "<|begin_of_audio|>", "<|end_of_audio|>",
                  "<|begin_of_transcription|>", "<|end_of_transcription|>", "<|code_prefix|>",
                  "<|code_middle|>", "<|code_suffix|>", "<think>", "</think>", "<tool_call>",
                  "</tool_call>", "<tool_response>", "</tool_response>", "<arg_key>",
                  "</arg_key>", "<arg_value>", "</arg_value>", "/nothink", "<|begin_of_box|>",
                  "<|end_of_box|>", "<|image|>", "<|video|>"],
        bos=None, eos="<|endoftext|>", pad="<|endoftext|>", gguf="glm4",
        template="GLM-4.6.jinja"),
    # moonshotai/Kimi-K2-Instruct: tiktoken (tokenization_kimi.py's pat_str) through
    # TikTokenConverter; llama.cpp "kimi-k2"
    "kimi-k2": dict(
        pre=seq(split(KIMI), byte_level()), ignore_merges=True, post="bytelevel",
        specials=["[BOS]", "[EOS]", "<|im_end|>", "<|im_user|>", "<|im_assistant|>",
                  "<|start_header_id|>", "<|end_header_id|>", "[EOT]", "<|im_system|>",
                  "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>",
                  "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>",
                  "<|im_middle|>", "[UNK]", "[PAD]"],
        bos="[BOS]", eos="[EOS]", gguf="kimi-k2", template="moonshotai-Kimi-K2.jinja"),
    # MiniMaxAI/MiniMax-M2: the o200k split; llama.cpp "minimax-m2"
    "minimax-m2": dict(
        pre=seq(split(O200K), byte_level()), post="bytelevel",
        specials=["]!p~[", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
                  "<reponame>", "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>",
                  "<issue_closed>", "<jupyter_start>", "<jupyter_text>", "<jupyter_code>",
                  "<jupyter_output>", "<empty_output>", "<commit_before>", "<commit_msg>",
                  "<commit_after>", "]~b]", "[e~[", "]!d~[", "<function_call>",
                  "<code_interpreter>", "]~!b[", "<think>", "</think>", "<minimax:tool_call>",
                  "</minimax:tool_call>"],
        bos="]~!b[", eos="[e~[", gguf="minimax-m2", template="MiniMax-M2.jinja"),
    # baidu/ERNIE-4.5-*: SentencePiece BPE with byte fallback (llama.cpp converts it
    # as a "llama" vocabulary); as LlamaConverter writes a legacy tokenizer without
    # the dummy prefix (ERNIE's tokenizer_config add_prefix_space, as remembered)
    "ernie45": dict(
        spm=True, norm=normalizers.Replace(" ", "\u2581"),
        first=["<unk>", "<s>", "</s>", "<pad>", "<cls>", "<sep>", "<mask:0>", "<mask:1>",
               "<mask:7>"],
        specials=["<|begin_of_sentence|>", "<|end_of_sentence|>", "<|IMAGE_START|>",
                  "<|IMAGE_END|>", "<think>", "</think>"],
        bos="<s>", eos="</s>", add_bos=False, gguf=None),
    # bigcode/starcoder2-*: Digits, then ByteLevel's own split; llama.cpp "starcoder"
    "starcoder": dict(
        pre=seq(pre_tokenizers.Digits(individual_digits=True), byte_level(use_regex=True)),
        post="bytelevel",
        specials=["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
                  "<repo_name>", "<file_sep>", "<issue_start>", "<issue_comment>",
                  "<issue_closed>", "<jupyter_start>", "<jupyter_text>", "<jupyter_code>",
                  "<jupyter_output>", "<empty_output>", "<commit_before>", "<commit_msg>",
                  "<commit_after>"],
        bos="<|endoftext|>", eos="<|endoftext|>", gguf="starcoder"),
    # tiiuae/falcon-7b: Punctuation (contiguous), ByteLevel, Digits, then thousands
    # split on the byte-mapped text; llama.cpp "falcon"
    "falcon": dict(
        pre=seq(pre_tokenizers.Punctuation(behavior="contiguous"), byte_level(use_regex=True),
                pre_tokenizers.Digits(individual_digits=False), split("[0-9][0-9][0-9]")),
        post="bytelevel",
        specials=[">>TITLE<<", ">>ABSTRACT<<", ">>INTRODUCTION<<", ">>SUMMARY<<",
                  ">>COMMENT<<", ">>ANSWER<<", ">>QUESTION<<", ">>DOMAIN<<", ">>PREFIX<<",
                  ">>SUFFIX<<", ">>MIDDLE<<", "<|endoftext|>"],
        bos=None, eos="<|endoftext|>", gguf="falcon"),
    # CohereForAI/c4ai-command-r-v01: NFC, Digits, ByteLevel; llama.cpp "command-r"
    "command-r": dict(
        norm=normalizers.NFC(),
        pre=seq(pre_tokenizers.Digits(individual_digits=True), byte_level(use_regex=True)),
        post="bos",
        first=["<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>", "<EOS_TOKEN>",
               "<EOP_TOKEN>"],
        specials=["<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>",
                  "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>"],
        bos="<BOS_TOKEN>", eos="<|END_OF_TURN_TOKEN|>", add_bos=True, gguf="command-r"),
    # openai-community/gpt2; llama.cpp "gpt-2"
    "gpt2": dict(
        pre=byte_level(use_regex=True), post="bytelevel", specials=["<|endoftext|>"],
        bos="<|endoftext|>", eos="<|endoftext|>", gguf="gpt-2"),
    # inclusionAI/Ling (Bailing MoE): the pattern llama-vocab.cpp quotes (possessive
    # quantifiers); the special tokens are illustrative; llama.cpp "bailingmoe"
    "bailingmoe": dict(
        pre=seq(split(BAILING), byte_level()), post="bytelevel",
        specials=["<|startoftext|>", "<|endoftext|>", "<role>", "</role>"],
        bos="<|startoftext|>", eos="<|endoftext|>", gguf="bailingmoe"),
    # mistralai/Mistral-Nemo: tekken's split; llama.cpp "tekken" (ignore_merges)
    "tekken": dict(
        pre=seq(split(TEKKEN), byte_level()), ignore_merges=True, post="bos",
        first=["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]"],
        bos="<s>", eos="</s>", add_bos=True, gguf="tekken"),
    # LGAI-EXAONE/K-EXAONE (MoE): the pattern llama-vocab.cpp quotes; illustrative
    # special tokens; llama.cpp "exaone-moe"
    "exaone-moe": dict(
        pre=seq(split(EXAONE_MOE), byte_level()), post="bytelevel",
        specials=["[BOS]", "[EOS]", "[|system|]", "[|user|]", "[|assistant|]", "[|endofturn|]"],
        bos="[BOS]", eos="[|endofturn|]", gguf="exaone-moe"),
    # CohereLabs/tiny-aya, North (Cohere2 MoE): numbers grouped by thousands from the
    # right, then o200k; illustrative special tokens; llama.cpp "tiny_aya"
    "tiny-aya": dict(
        pre=seq(split(r"\d{1,3}(?=(?:\d{3})*\b)"), split(O200K), byte_level()),
        post="bytelevel",
        specials=["<BOS_TOKEN>", "<EOS_TOKEN>", "<|START_OF_TURN_TOKEN|>",
                  "<|END_OF_TURN_TOKEN|>"],
        bos="<BOS_TOKEN>", eos="<|END_OF_TURN_TOKEN|>", gguf="tiny_aya"),
    # UW/OLMo2-8B-SuperBPE: runs of digits, then empty-match splits every three
    # digits from the right (llama.cpp's regexes); llama.cpp "superbpe"
    "superbpe": dict(
        pre=seq(split(r"\p{N}+"), split(r"(?=(\d{3})+(?!\d))"), byte_level()),
        post="bytelevel", specials=["<|endoftext|>", "<|pad|>"],
        bos=None, eos="<|endoftext|>", gguf="superbpe"),
    # not a family: Hugging Face's delimiter behaviours, inverted splits, a
    # prefix space and a split after ByteLevel on every piece, Replace
    # normalizers with a regex (one matching empty: it inserts)
    "hf-behaviors": dict(
        norm=normalizers.Sequence([normalizers.Replace(Regex(r"\t+"), "\t"),
                                   normalizers.Replace(Regex("(?=\u00e9)"), "^")]),
        pre=seq(split(r"\s", "merged_with_previous"), split(r"\p{N}", "contiguous"),
                pre_tokenizers.Split("-", behavior="merged_with_next"),
                split(r"[^~]+", "removed", invert=True),
                pre_tokenizers.Punctuation(), byte_level(prefix=True),
                split(r"\x{0120}", "merged_with_next"), pre_tokenizers.WhitespaceSplit()),
        post="bytelevel", specials=["<|end|>"], bos=None, eos="<|end|>", gguf=None),
    # not a family: SentencePiece-style Metaspace after a Split (its "first"
    # prefix only on the input's first piece), byte fallback, unk
    "hf-metaspace": dict(
        spm=True, norm=None,
        pre=seq(split(r"\p{N}"), pre_tokenizers.Metaspace(replacement="\u2581",
                                                          prepend_scheme="first", split=True)),
        first=["<unk>", "<s>", "</s>"], specials=["<eot>"], post="bos",
        bos="<s>", eos="</s>", add_bos=True, gguf=None),
}

# ---- the mixed test text -------------------------------------------------------------
TEXTS = [
    "",
    " ",
    "Hello world",
    " Hello world",
    "Hello, y'all! How are you \U0001f601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "class Foo:\n\tdef bar(self, x):\n\t\treturn {'a': [x, x ** 2]}  # tabs\r\n",
    "int main(void) {\n    printf(\"%d\\n\", 42);\n}\n\n\n",
    "\u6211\u60f3\u5728\u5317\u4eac\u5de5\u4f5c\u3002\u4eca\u5929\u5929\u6c14\u5f88\u597d\uff01",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u30ab\u30bf\u30ab\u30ca\u3001"
    "\u3072\u3089\u304c\u306a\u3002",
    "\uc548\ub155\ud558\uc138\uc694 \uc138\uacc4",
    "\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f (multiple emojis concatenated) "
    "\u2705 \U0001f999\U0001f999",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family, \U0001f44d\U0001f3fd "
    "thumbs, \U0001f1eb\U0001f1f7\U0001f1ef\U0001f1f5 flags",
    "1 12 123 1234 12345 123456 1234567 12345678 123456789 1234567890 12345678901 "
    "123456789012",
    "3.14159 and 2,000,000 and 1e10 and 0x1F and v1.2.3",
    "\u0663\u0664\u0665 \u00b2 \u00bd \u216b \u2460 \u0e53",
    "a  b   c    d     e",
    "   leading and trailing   ",
    "\n\n\n",
    " \n \n  \n",
    "\t\tdouble tab\tsingle\n\t",
    "x\u00a0y\u3000z\u2009w\u202fv",
    "a\u180eb\u0085c\u2028d",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some "
    "tea? We'Ve a'lL",
    "don't won't can't it's DON'T",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m Z\u00fcrich",
    "Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u0420\u0443\u0441\u0441\u043a\u0438\u0439 "
    "\u0442\u0435\u043a\u0441\u0442",
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22 \u0939\u093f\u0928\u094d\u0926\u0940 "
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "CamelCaseWordsAndHTTPServer parseJSON iPhone XMLHttpRequest",
    "https://example.com/a/b?c=d&e=f#g and /path/to/file.txt\n./run.sh --flag=1",
    "------======= \u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440"
    "\u0441\u043a\u0438 ''''''```````\"\"\"\"......!!!!!!??????",
    # code points Unicode 15-16 assigned (CJK Ext H / I, Cyrillic, Todhri)
    "\U00031350\U00031351 \U0002ebf0 \u1c89\u1c8a \U000105c0",
    "mixed\u2014dash \u201cquotes\u201d \u2018single\u2019 \u2026 \u00ab\u00bb",
]
# decomposed accents: what an NFC normalizer composes
NFC_TEXTS = ["cafe\u0301 nai\u0308ve A\u030angstro\u0308m", "\u1100\u1161\u11a8 e\u0301\u0323"]


def specials_text(fam):
    """A line with the family's special tokens written inline."""
    toks = (fam.get("first") or []) + (fam.get("specials") or []) + (fam.get("added") or [])
    toks = [t for t in toks if t]
    parts = []
    for i, t in enumerate(toks[:8]):
        parts.append(t + ["Hello", " world", "\n", "1234", "\u4f60\u597d", " ", "x", "!"][i % 8])
    return "".join(parts) + " " + toks[-1] + toks[0] + toks[-1]


def corpus_text():
    with open(CORPUS, encoding="utf-8") as f:
        text = f.read()[:CORPUS_CHARS]
    return [text[i:i + 4096] for i in range(0, len(text), 4096)] + TEXTS * 400 + NFC_TEXTS * 50


def train(name, fam):
    spm = fam.get("spm", False)
    first = fam.get("first") or []
    specials = fam.get("specials") or []
    added = fam.get("added") or []
    n_added = len(first) + len(specials) + len(added)
    target = fam.get("vocab", 880) - n_added - (256 if spm else 0)  # spm: + <0x00>..<0xFF>
    if spm:
        bpe = models.BPE(unk_token="<unk>" if "<unk>" in first else None, byte_fallback=True,
                         fuse_unk=True)
    else:
        bpe = models.BPE(ignore_merges=fam.get("ignore_merges", False))
    tok = Tokenizer(bpe)
    if fam.get("norm") is not None:
        tok.normalizer = fam["norm"]
    if spm:
        # train with a Metaspace split (words), then run as the family does
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        alphabet = []
    else:
        # trained on words (a space starts one; newlines and tabs apart), not
        # on the family's pieces: the vocabulary then holds merges across the
        # family's piece boundaries ("Ġ1234", "'s", CJK runs, "):\n"), so a
        # pre-tokenizer that splits differently gives different ids
        tok.pre_tokenizer = seq(split(r" ?[^\s]+|\s", "isolated"), byte_level())
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    # (no limit_alphabet: its ties make the vocabulary differ from run to run)
    trainer = trainers.BpeTrainer(vocab_size=target + len(first), special_tokens=first,
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(corpus_text(), trainer=trainer)
    if spm:
        tok = with_byte_tokens(tok, first, fam)
    if specials:
        tok.add_special_tokens(specials)
    if added:
        tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in added])
    if fam.get("pre") is not None:
        tok.pre_tokenizer = fam["pre"]
    if spm:
        if fam.get("pre") is None:
            tok.pre_tokenizer = None
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                         decoders.Fuse()])
    else:
        tok.decoder = decoders.ByteLevel()
    post = fam.get("post")
    if post == "bos":
        bos = fam["bos"]
        bid = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bid)])
    elif post == "bytelevel":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def with_byte_tokens(tok, first, fam):
    """The trained SentencePiece-style vocabulary with <0x00>..<0xFF> after the
    leading special tokens, as Llama's (byte fallback needs them)."""
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    order = sorted(vocab, key=vocab.get)
    lead = [t for t in order if t in first]
    rest = [t for t in order if t not in first]
    new = lead + ["<0x%02X>" % b for b in range(256)] + [t for t in rest if not (
        len(t) == 6 and t.startswith("<0x") and t.endswith(">"))]
    j["model"]["vocab"] = {t: i for i, t in enumerate(new)}
    for a in j["added_tokens"]:
        a["id"] = j["model"]["vocab"][a["content"]]
    return Tokenizer.from_str(json.dumps(j))


def chat_text(name, fam, tok_path):
    """The family's chat template on a short conversation (transformers renders it)."""
    tmpl = fam.get("template")
    if not tmpl:
        return None
    path = os.path.join(LLAMA_CPP, "models", "templates", tmpl)
    with open(path, encoding="utf-8") as f:
        template = f.read()
    from transformers import PreTrainedTokenizerFast
    t = PreTrainedTokenizerFast(tokenizer_file=tok_path, bos_token=fam.get("bos"),
                                eos_token=fam.get("eos"))
    t.chat_template = template
    conv = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is 12345 + 678? \u8bf7\u56de\u7b54\u3002"},
            {"role": "assistant", "content": "13023."},
            {"role": "user", "content": "And\tin code?\n```py\nprint(12345 + 678)\n```"}]
    try:
        return template, t.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # pragma: no cover - reported, the family goes on
        print(f"{name}: chat template {tmpl} not rendered: {e}")
        return template, None


def write_gguf(path, tok, fam):
    sys.path.insert(0, os.path.join(LLAMA_CPP, "gguf-py"))
    import gguf
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    n = 1 + max(list(vocab.values()) + [a["id"] for a in j["added_tokens"]])
    tokens = ["[PAD%d]" % i for i in range(n)]
    types = [gguf.TokenType.UNUSED] * n
    for t, i in vocab.items():
        tokens[i], types[i] = t, gguf.TokenType.NORMAL
    for a in j["added_tokens"]:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = gguf.TokenType.CONTROL if a["special"] else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(fam["gguf"])
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if fam.get("bos"):
        w.add_bos_token_id(tok.token_to_id(fam["bos"]))
    w.add_eos_token_id(tok.token_to_id(fam["eos"]))
    w.add_add_bos_token(bool(fam.get("add_bos")))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()


def make(name, fam):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    tok = train(name, fam)
    tok_path = os.path.join(d, "tokenizer.json")
    tok.save(tok_path)
    ids_all = [tok.encode(t, add_special_tokens=False).ids for t in TEXTS + NFC_TEXTS]
    top = max(max(ids) for ids in ids_all if ids)
    assert tok.get_vocab_size() <= MAX_ID, (name, tok.get_vocab_size())
    rendered = chat_text(name, fam, tok_path)
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096,
           "add_bos_token": bool(fam.get("add_bos")), "add_eos_token": False,
           "bos_token": fam.get("bos"), "eos_token": fam.get("eos")}
    if fam.get("pad"):
        cfg["pad_token"] = fam["pad"]
    if rendered:
        cfg["chat_template"] = rendered[0]
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)
        f.write("\n")
    cases = []
    nfc = isinstance(fam.get("norm"), normalizers.NFC)
    for t in TEXTS + NFC_TEXTS + [specials_text(fam)]:
        e = tok.encode(t, add_special_tokens=False)
        s = tok.encode(t, add_special_tokens=True)
        case = {"text": t, "ids": e.ids, "ids_special": s.ids,
                "decoded": tok.decode(e.ids, skip_special_tokens=True)}
        if t in NFC_TEXTS:
            case["nfc"] = True  # composed by an NFC normalizer
        cases.append(case)
    if rendered and rendered[1]:
        e = tok.encode(rendered[1], add_special_tokens=False)
        cases.append({"text": rendered[1], "ids": e.ids,
                      "ids_special": tok.encode(rendered[1], add_special_tokens=True).ids,
                      "decoded": tok.decode(e.ids, skip_special_tokens=True), "chat": True})
    for c in cases:
        assert all(i < MAX_ID for i in c["ids_special"]), name
    exp = {"family": name, "tokenizers": tokenizers.__version__, "gguf_pre": fam.get("gguf"),
           "vocab_size": tok.get_vocab_size(), "nfc": nfc, "cases": cases}
    with open(os.path.join(d, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(exp, f, ensure_ascii=False, indent=0)
        f.write("\n")
    if fam.get("gguf"):
        write_gguf(os.path.join(d, "vocab.gguf"), tok, fam)
    sizes = {fn: os.path.getsize(os.path.join(d, fn)) for fn in sorted(os.listdir(d))}
    assert all(v <= 100 * 1024 for v in sizes.values()), sizes
    print(f"{name}: vocab {tok.get_vocab_size()}, top id {top}, {len(cases)} cases, {sizes}")


def main():
    names = sys.argv[1:] or list(FAMILIES)
    for n in names:
        make(n, FAMILIES[n])


if __name__ == "__main__":
    main()
