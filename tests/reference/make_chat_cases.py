#!/usr/bin/env python3
"""Writes tests/data/chat/<format>.json: conversations rendered by transformers'
own apply_chat_template over the real chat templates in tests/data/chat/templates/.

Run by hand (never in CI), from the repository root:

    /root/venv5/bin/python tests/reference/make_chat_cases.py

Each output holds {"format", "template", "bos", "date", "cases": [{"messages",
"expected"} or {"messages", "error"}]}: "format" is moed's name for the template
(what moe_chat_template_classify must say for the template text), "bos" the text
the template's bos_token stands for (null where the template does not use it),
"date" the date the template's strftime_now("%Y-%m-%d") gave (null where unused),
"error" the exception the template raised for that conversation.

Each rendered case also gets "ids": what the Hugging Face tokenizers library
makes of the expected text (add_special_tokens=False) with the GPT-2 tokenizer of
tests/data/tokenizers/ plus every special token these templates write as an
added token (tests/data/chat/special_tokens.json lists them with their ids): each
must come out as its one id, the text around it as plain BPE.

Every render uses add_generation_prompt=True and each template's default thinking
setting (no enable_thinking / thinking / reasoning_effort passed), with the special
tokens as that model's tokenizer_config.json gives them.
"""
import json
import os
import sys

import datetime as _dt

import transformers
import transformers.utils.chat_template_utils as ctu
from tokenizers import Tokenizer  # noqa: F401 (also builds the tokenizer of the ids)
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data", "chat")
DATE = "2026-03-14"  # what the template's strftime_now("%Y-%m-%d") gives


class _FixedDatetime(_dt.datetime):
    """transformers' strftime_now calls datetime.now(): make that DATE (UTC noon)."""

    @classmethod
    def now(cls, tz=None):
        return cls(2026, 3, 14, 12, 0, 0, tzinfo=tz)


ctu.datetime = _FixedDatetime

DS_BOS = "<｜begin▁of▁sentence｜>"
DS_EOS = "<｜end▁of▁sentence｜>"

# format name -> template file, special tokens (as the model's tokenizer_config gives them)
FORMATS = [
    ("deepseek-v2", "deepseek-ai-DeepSeek-V2-Lite-Chat.jinja",
     {"bos_token": DS_BOS, "eos_token": DS_EOS}),
    ("deepseek-v3", "deepseek-ai-DeepSeek-V3.jinja", {"bos_token": DS_BOS, "eos_token": DS_EOS}),
    ("deepseek-r1", "deepseek-ai-DeepSeek-R1.jinja", {"bos_token": DS_BOS, "eos_token": DS_EOS}),
    ("deepseek-r1-distill", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
     {"bos_token": DS_BOS, "eos_token": DS_EOS}),
    ("deepseek-r1-distill-qwen", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
     {"bos_token": DS_BOS, "eos_token": DS_EOS}),
    ("deepseek-r1-llamacpp", "llama-cpp-deepseek-r1.jinja",
     {"bos_token": DS_BOS, "eos_token": DS_EOS}),
    ("deepseek-v3.1", "deepseek-ai-DeepSeek-V3.1.jinja",
     {"bos_token": DS_BOS, "eos_token": DS_EOS}),
    ("kimi-k2", "moonshotai-Kimi-K2.jinja", {"bos_token": "[BOS]", "eos_token": "[EOS]"}),
    ("glm-4.5", "GLM-4.6.jinja", {"eos_token": "<|endoftext|>"}),
    ("gpt-oss", "openai-gpt-oss-120b.jinja",
     {"bos_token": "<|startoftext|>", "eos_token": "<|return|>"}),
    ("minimax-m2", "MiniMax-M2.jinja", {"bos_token": "]~!b[", "eos_token": "[e~["}),
    ("ernie-4.5", "baidu-ERNIE-4.5-PT.jinja",
     {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<|begin_of_sentence|>",
      "sep_token": "<|end_of_sentence|>"}),
    ("qwen3", "Qwen-Qwen3-0.6B.jinja", {"eos_token": "<|im_end|>"}),
    ("qwen3.5", "Qwen-Qwen3.5.jinja", {"eos_token": "<|im_end|>"}),
]


def S(c):
    return {"role": "system", "content": c}


def U(c):
    return {"role": "user", "content": c}


def A(c):
    return {"role": "assistant", "content": c}


THINK = "<think>\nThe user greets me; answer briefly.\n</think>\n\nHello! How can I help?"
CONVERSATIONS = [
    [S("You are a helpful assistant."), U("What is 2 + 2?")],
    [U("Hello")],
    [S("Be terse."), U("Hi"), A("Hello."), U("How are you?"), A("Fine, thanks."), U("Bye")],
    [U("Line one\nLine two\n\n  indented\tand tabbed  "), A("Grüße, 世界 🌍 — ça va?\nÅngström"),
     U("naïve café 日本語テキスト 😀")],
    [U("Hi"), A(THINK), U("And again?")],
    [U("Hi"), A("<think>only reasoning</think>")],
    [U("Hi"), A(THINK)],
    [U("Hi"), A("first</think>middle</think>\n\nlast  ")],
    [S("First system."), S("Second system."), U("Hi")],
    [U("Hi"), S("A late system message."), U("Still there?")],
    [U("Hi"), A("")],
    [U("  padded  \n"), A("\n\n  spaced answer \n\n"), U("\n")],
    [A("An assistant opens."), U("Then the user.")],
    [S("")],
    [S("Only a system message.")],
    [U("a"), U("b")],
    [U("Hi"), A("a"), A("b")],
    [U("<tool_response>\nresult\n</tool_response>")],
    [U("Hi"), A("<|channel|>final<|message|>sneaky")],
    [U("Hi"), {"role": "assistant", "content": "Shown.", "reasoning_content": "Hidden chain.\n"},
     U("Next")],
    [U("Hi"), {"role": "assistant", "content": "Last.", "reasoning_content": "\nWhy.\n"}],
]


# the special tokens the templates write, added to GPT-2's vocabulary in this order
SPECIAL = [
    DS_BOS, DS_EOS, "<｜User｜>", "<｜Assistant｜>", "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>",
    "<think>", "</think>",
    "<|im_start|>", "<|im_end|>", "<|im_system|>", "<|im_user|>", "<|im_assistant|>",
    "<|im_middle|>",
    "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>",
    "<|start|>", "<|message|>", "<|end|>", "<|channel|>", "<|return|>",
    "]~!b[", "]~b]", "[e~[",
    "<|begin_of_sentence|>", "<|end_of_sentence|>",
]
BASE_TOKENIZER = "tests/data/tokenizers/ggml-vocab-gpt-2.tokenizer.json"


def id_tokenizer():
    with open(os.path.join(ROOT, BASE_TOKENIZER), encoding="utf-8") as f:
        d = json.load(f)
    first = 1 + max(max(d["model"]["vocab"].values()), *(a["id"] for a in d["added_tokens"]))
    added = [{"id": first + i, "content": s} for i, s in enumerate(SPECIAL)]
    for a in added:
        d["added_tokens"].append(dict(a, single_word=False, lstrip=False, rstrip=False,
                                      normalized=False, special=True))
    tok = Tokenizer.from_str(json.dumps(d))
    for a in added:  # each is the one token its id stands for
        assert tok.encode(a["content"], add_special_tokens=False).ids == [a["id"]], a
    return tok, added


def tokenizer(special):
    tok = Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def render(tok, template, messages):
    return tok.apply_chat_template(messages, chat_template=template, tokenize=False,
                                   add_generation_prompt=True)


def main():
    print("transformers", transformers.__version__, file=sys.stderr)
    idtok, added = id_tokenizer()
    with open(os.path.join(DATA, "special_tokens.json"), "w", encoding="utf-8") as f:
        json.dump({"base": BASE_TOKENIZER, "added": added}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    for name, fname, special in FORMATS:
        with open(os.path.join(DATA, "templates", fname), encoding="utf-8") as f:
            template = f.read()
        tok = tokenizer(special)
        cases = []
        for conv in CONVERSATIONS:
            try:
                text = render(tok, template, conv)
                ids = idtok.encode(text, add_special_tokens=False).ids
                cases.append({"messages": conv, "expected": text,
                              "ids": " ".join(str(i) for i in ids)})
            except Exception as e:  # the template raised: moed must refuse too
                cases.append({"messages": conv, "error": f"{type(e).__name__}: {e}"})
        bos = special.get("bos_token") if "bos_token" in template else None
        out = {"format": name, "template": fname, "bos": bos,
               "date": DATE if "strftime_now" in template else None, "cases": cases}
        path = os.path.join(DATA, name + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(out, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print(f"{path}: {len(cases)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
