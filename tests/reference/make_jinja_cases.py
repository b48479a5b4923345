#!/usr/bin/env python3
"""Writes tests/data/chat/jinja/<template>.json: conversations rendered by
transformers' own apply_chat_template over the real chat templates in
tests/data/chat/templates/, the vectors moed's Jinja interpreter
(engine/engine_jinja_*.c) must reproduce byte for byte; and
tests/data/chat/jinja/features.json: small templates rendered by the same
jinja2 environment transformers builds (_compile_jinja_template), one language
feature each.

Run by hand (never in CI), from the repository root:

    /root/venv5/bin/python tests/reference/make_jinja_cases.py

Each template file holds {"template", "bos_token", "eos_token", "special_tokens",
"date", "tools", "cases": [...]}: "special_tokens" is the tokenizer's
special_tokens_map (what apply_chat_template passes the template besides the
conversation), "date" what datetime.now() returned (strftime_now formats it;
frozen here so the output is deterministic), "tools" the tool list the cases
with "tools": true pass. A case is {"name", "messages", "tools",
"add_generation_prompt", "kwargs", "expected"} or, where the template raised,
the same with "error" (str of the exception) and "error_type" (its class name:
"TemplateError" is the template's own raise_exception()). "messages" are as
passed to apply_chat_template (with their null values: transformers drops
those keys itself). features.json holds {"date", "cases": [{"name",
"template", "context", "expected" or "error"}]}, rendered with the context as
the template's variables.
"""
import copy
import datetime as _dt
import json
import os
import sys

import transformers
import transformers.utils.chat_template_utils as ctu
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATES = os.path.join(ROOT, "tests", "data", "chat", "templates")
OUT = os.path.join(ROOT, "tests", "data", "chat", "jinja")
NOW = _dt.datetime(2026, 3, 14, 12, 0, 0)


class _FixedDatetime(_dt.datetime):
    """transformers' strftime_now calls datetime.now(): make that NOW."""

    @classmethod
    def now(cls, tz=None):
        return cls(NOW.year, NOW.month, NOW.day, NOW.hour, NOW.minute, NOW.second, tzinfo=tz)


ctu.datetime = _FixedDatetime

DS = {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}
KIMI = {"bos_token": "[BOS]", "eos_token": "[EOS]"}
GLM = {"eos_token": "<|endoftext|>"}
QWEN = {"eos_token": "<|im_end|>"}
MISTRAL = {"bos_token": "<s>", "eos_token": "</s>"}

# template file -> special tokens as that model's tokenizer_config.json gives them
TEMPLATE_TOKENS = [
    ("deepseek-ai-DeepSeek-V2-Lite-Chat.jinja", DS),
    ("deepseek-ai-DeepSeek-V3.jinja", DS),
    ("deepseek-ai-DeepSeek-R1.jinja", DS),
    ("deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja", DS),
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", DS),
    ("llama-cpp-deepseek-r1.jinja", DS),
    ("deepseek-ai-DeepSeek-V3.1.jinja", DS),
    ("deepseek-ai-DeepSeek-V3.2.jinja", DS),
    ("moonshotai-Kimi-K2.jinja", KIMI),
    ("Kimi-K2-Instruct.jinja", KIMI),
    ("Kimi-K2-Thinking.jinja", KIMI),
    ("GLM-4.6.jinja", GLM),
    ("GLM-4.7-Flash.jinja", GLM),
    ("openai-gpt-oss-120b.jinja", {"bos_token": "<|startoftext|>", "eos_token": "<|return|>"}),
    ("MiniMax-M2.jinja", {"bos_token": "]~!b[", "eos_token": "[e~["}),
    ("baidu-ERNIE-4.5-PT.jinja",
     {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<|begin_of_sentence|>",
      "sep_token": "<|end_of_sentence|>"}),
    ("Qwen-Qwen2.5-7B-Instruct.jinja", QWEN),
    ("Qwen-Qwen3-0.6B.jinja", QWEN),
    ("Qwen-Qwen3.5.jinja", QWEN),
    ("Qwen3-Coder.jinja", QWEN),
    ("NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja",
     {"bos_token": "<|begin_of_text|>", "eos_token": "<|im_end|>"}),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", MISTRAL),
    ("Mistral-Small-3.2-24B-Instruct-2506.jinja", MISTRAL),
    ("mistralai-Mixtral-8x7B-Instruct-v0.1.jinja", MISTRAL),
    ("allenai-OLMoE-1B-7B-0924-Instruct.jinja",
     {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}),
]

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"],
                         "description": "Temperature unit"},
            },
            "required": ["city"],
        },
    }},
    {"type": "function", "function": {
        "name": "search_flights",
        "description": "Search flights between two airports.",
        "parameters": {
            "type": "object",
            "properties": {
                "route": {"type": "object", "description": "Where from and to",
                          "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
                          "required": ["from", "to"]},
                "passengers": {"type": "integer", "description": "How many travel",
                               "default": 1},
                "max_price": {"type": "number", "description": "Budget in €"},
                "direct": {"type": "boolean", "description": "Direct flights only"},
                "classes": {"type": "array", "description": "Cabins",
                            "items": {"type": "string", "enum": ["economy", "business"]}},
            },
            "required": ["route"],
        },
    }},
]


def S(c):
    return {"role": "system", "content": c}


def U(c):
    return {"role": "user", "content": c}


def A(c, **kw):
    return dict({"role": "assistant", "content": c}, **kw)


def CALL(name, args, id_="call_1"):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": args}}


def TOOL(content, id_="call_1", name="get_weather"):
    return {"role": "tool", "tool_call_id": id_, "name": name, "content": content}


WEATHER = CALL("get_weather", {"city": "Paris", "unit": "celsius"})
CASES = [
    # name, messages, tools?, add_generation_prompt, kwargs
    ("user", [U("Hello")], False, True, {}),
    ("system_user", [S("You are a helpful assistant."), U("What is 2 + 2?")], False, True, {}),
    ("turns", [S("Be terse."), U("Hi"), A("Hello."), U("How are you?"), A("Fine, thanks."),
               U("Bye")], False, True, {}),
    ("turns_no_prompt", [U("Hi"), A("Hello there.")], False, False, {}),
    ("unicode", [U("naïve café 日本語テキスト 😀 é"), A("Grüße, 世界 🌍 — ça va?\nÅngström"),
                 U("Ünïcödé ✓")], False, True, {}),
    ("jinja_text", [U("Keep {{ name }} and {% if x %}y{% endif %} and {# c #} as is"),
                    A("Sure: {{ name }}"), U("{%- raw -%} too")], False, True, {}),
    ("whitespace", [U("  padded  \n"), A("\n\n  spaced answer \n\n"), U("\tTabbed\t")],
     False, True, {}),
    ("tools_declared", [S("You can call tools."), U("Weather in Paris?")], True, True, {}),
    ("tool_call", [U("Weather in Paris?"), A(None, tool_calls=[WEATHER]),
                   TOOL('{"temperature": 21, "sky": "clear"}'), A("It is 21 °C and clear."),
                   U("Thanks")], True, True, {}),
    ("tool_call_pending", [S("Use tools."), U("Weather in Paris?"), A("", tool_calls=[WEATHER]),
                           TOOL("21 °C")], True, True, {}),
    ("tool_call_string_args",
     [U("Weather in Rome?"), A(None, tool_calls=[CALL("get_weather", '{"city": "Rome"}')]),
      TOOL("18 °C")], True, True, {}),
    ("tool_calls_two",
     [U("Weather in Paris and Oslo?"),
      A("Checking both.", tool_calls=[CALL("get_weather", {"city": "Paris"}, "call_1"),
                                      CALL("get_weather", {"city": "Oslo", "unit": "celsius"},
                                           "call_2")]),
      TOOL("21 °C", "call_1"), TOOL("-3 °C", "call_2"), A("Paris 21 °C, Oslo -3 °C.")],
     True, False, {}),
    ("tool_call_nested_args",
     [U("Flights?"),
      A(None, tool_calls=[CALL("search_flights",
                               {"route": {"from": "CDG", "to": "NRT"}, "passengers": 2,
                                "max_price": 899.5, "direct": True,
                                "classes": ["economy"]}, "abc123def")]),
      TOOL('{"flights": []}', "abc123def", "search_flights")], True, True, {}),
    ("reasoning_history", [U("Hi"), A("Hello!", reasoning_content="The user greets me."),
                           U("And again?")], False, True, {}),
    ("reasoning_last", [U("Hi"), A("Hello!", reasoning_content="\nGreeting.\n")], False, False,
     {}),
    ("think_inline", [U("Hi"), A("<think>\nShort.\n</think>\n\nHello!"), U("Next")], False,
     True, {}),
    ("thinking_off", [U("Quick question")], False, True, {"enable_thinking": False}),
    ("thinking_on", [S("Think."), U("Hard question")], False, True, {"enable_thinking": True}),
    ("assistant_first", [A("An assistant opens."), U("Then the user.")], False, True, {}),
    ("system_only", [S("Only a system message.")], False, True, {}),
]

# kwargs some templates read instead
EXTRA_CASES = {
    "openai-gpt-oss-120b.jinja": [
        ("reasoning_high", [U("Plan a trip")], False, True,
         {"reasoning_effort": "high", "model_identity": "You are a test model."}),
        ("builtin_tools", [U("Search")], False, True, {"builtin_tools": ["browser", "python"]}),
        ("thinking_field", [U("Hi"), A("Hello!", thinking="Greeting."), U("More")], False,
         True, {}),
    ],
    "deepseek-ai-DeepSeek-V3.1.jinja": [
        ("thinking_kwarg", [U("Hi")], False, True, {"thinking": True}),
    ],
    "deepseek-ai-DeepSeek-V3.2.jinja": [
        ("thinking_kwarg", [U("Hi"), A("Hello!", reasoning_content="Because."), U("More")],
         False, True, {"thinking": True}),
    ],
    "GLM-4.7-Flash.jinja": [
        ("clear_thinking_off", [U("Hi"), A("Hello!", reasoning_content="Why."), U("More")],
         False, True, {"clear_thinking": False}),
    ],
    "Qwen-Qwen3.5.jinja": [
        ("content_parts", [U([{"type": "text", "text": "Part one. "},
                              {"type": "text", "text": "Part two."}])], False, True, {}),
    ],
}


def tokenizer(special):
    tok = Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def render_case(tok, template, case):
    name, messages, with_tools, agp, kwargs = case
    out = {"name": name, "messages": messages, "tools": with_tools,
           "add_generation_prompt": agp, "kwargs": kwargs}
    try:
        out["expected"] = tok.apply_chat_template(
            copy.deepcopy(messages), tools=copy.deepcopy(TOOLS) if with_tools else None,
            chat_template=template, tokenize=False, add_generation_prompt=agp, **kwargs)
    except Exception as e:  # the template raised: moed must refuse too
        out["error"] = str(e)
        out["error_type"] = type(e).__name__
    return out


# one jinja2 feature each, rendered in transformers' environment
FEATURES = [
    ("trim_blocks", "{% if true %}\nA\n{% endif %}\nB", {}),
    ("lstrip_blocks", "x\n    {% if true %}\n    y\n    {% endif %}\nz", {}),
    ("lstrip_not_var", "x\n    {{ 'v' }}\n", {}),
    ("lstrip_plus", "x\n    {%+ if true %}y{% endif %}", {}),
    ("minus_both", "a  \n {%- if true -%} \n b \n {%- endif -%}  \n c", {}),
    ("var_minus", "a  {{- 'b' -}}  c", {}),
    ("comment", "a {# note #} b\n  {# line #}\nc {#- x -#} d", {}),
    ("trailing_newline", "line\n", {}),
    ("crlf", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\n", {}),
    ("raw", "{% raw %}{{ x }} {% if %}{% endraw %}", {}),
    ("strings", "{{ 'a\\tb\\n' ~ \"q\\\"uote\" ~ '\\u00e9\\x41' ~ 'x' 'y' }}", {}),
    ("numbers", "{{ 1 }} {{ 1.0 }} {{ 1e20 }} {{ 1.5e-7 }} {{ 0.1 + 0.2 }} {{ 2 ** 10 }} "
                "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 / 2 }} {{ -7 % 3 }} {{ 1_000 }} {{ 0x1f }}", {}),
    ("python_str", "{{ [1, 'a', none, true, 1.5, {'k': [false]}] }} {{ (1,) }} {{ ('a', 2) }} "
                   "{{ {'q': \"it's\"} }} {{ none }} {{ True }}", {}),
    ("compare", "{{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ [1, 2] == [1, 2] }} {{ 1 < 2 < 3 }} "
                "{{ 'a' in 'cat' }} {{ 1 not in [2] }} {{ 'k' in {'k': 1} }}", {}),
    ("logic", "{{ none or 'x' }} {{ 0 and 'y' }} {{ not [] }} {{ 'a' if false }}|"
              "{{ 'a' if false else 'b' }}", {}),
    ("undefined", "[{{ nope }}] {{ nope is defined }} {{ nope|default('d') }} "
                  "{{ nope|length }} {{ none.x }}|{{ d.missing }}|{{ nope is sequence }} "
                  "{{ nope is iterable }} {{ {} is sequence }}", {"d": {"a": 1}}),
    ("undefined_attr", "{{ nope.x }}", {}),
    ("undefined_add", "{{ nope + 'a' }}", {}),
    ("concat_undefined", "{{ nope ~ 'a' }}", {}),
    ("str_add_int", "{{ 'a' + 1 }}", {}),
    ("getattr_item", "{{ d.a }} {{ d['a'] }} {{ d.items()|list }} {{ d['items'] }} "
                     "{{ l[0] }} {{ l[-1] }} {{ l.0 }} {{ l[5] is defined }} {{ 'héllo'[1] }}",
     {"d": {"a": 1, "items": 2}, "l": [10, 20]}),
    ("slices", "{{ 'abcdef'[1:3] }} {{ 'abcdef'[::-1] }} {{ l[1:] }} {{ l[:-1] }} "
               "{{ l[::2] }} {{ 'héllo wörld'[-5:] }}", {"l": [1, 2, 3, 4]}),
    ("for_loop", "{% for x in l %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/"
                 "{{ loop.first }}/{{ loop.last }}/{{ loop.length }}/{{ loop.previtem }}/"
                 "{{ loop.nextitem }};{% endfor %}", {"l": ["a", "b", "c"]}),
    ("for_else", "{% for x in [] %}x{% else %}empty{% endfor %}", {}),
    ("for_filter", "{% for x in range(10) if x is odd %}{{ x }}{{ loop.last }} {% endfor %}", {}),
    ("for_unpack", "{% for k, v in d.items() %}{{ k }}={{ v }},{% endfor %}"
                   "{% for k in d %}{{ k }}{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("for_scope", "{% set x = 5 %}{% for i in [1, 2] %}[{{ x }}]{% set x = i %}{% endfor %}"
                  "[{{ x }}]", {}),
    ("loop_controls", "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}"
                      "{% if i == 5 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}),
    ("loop_cycle", "{% for i in range(4) %}{{ loop.cycle('a', 'b') }}"
                   "{{ loop.changed(i // 2) }}{% endfor %}", {}),
    ("namespace", "{% set ns = namespace(n=0, s='') %}{% for i in range(3) %}"
                  "{% set ns.n = ns.n + i %}{% set ns.s = ns.s ~ i %}{% endfor %}"
                  "{{ ns.n }} {{ ns.s }}", {}),
    ("set_block", "{% set x %}  inner {{ 1 + 1 }} {% endset %}[{{ x }}]"
                  "{% set y | upper %}abc{% endset %}{{ y }}", {}),
    ("set_tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t = 1, %}{{ t }}", {}),
    ("macro", "{% macro m(a, b='B', c=none) %}{{ a }}{{ b }}{{ c }}{{ varargs }}{{ kwargs }}"
              "{% endmacro %}{{ m(1) }}|{{ m(1, 2, 3, 4) }}|{{ m(1, c=3, z=9) }}", {}),
    ("macro_scope", "{% set y = 1 %}{% macro m() %}{{ y }}{% endmacro %}{% set y = 2 %}"
                    "{{ m() }}", {}),
    ("macro_recursive", "{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}"
                        "{% endmacro %}{{ f(4) }}", {}),
    ("call_block", "{% macro wrap() %}<{{ caller() }}>{% endmacro %}"
                   "{% call wrap() %}inside{% endcall %}", {}),
    ("filter_block", "{% filter upper %}shout {{ 'it' }}{% endfilter %}", {}),
    ("with_block", "{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}", {}),
    ("filters_text", "{{ '  x  '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ 'hello world'|title }}|"
                     "{{ 'hELLO'|capitalize }}|{{ 'a-b c(d'|title }}|{{ 'abc'|upper }}|"
                     "{{ 'ABC'|lower }}|{{ 'aXa'|replace('a', 'b') }}|{{ 'ab'|center(6) }}|"
                     "{{ 'é'|length }}|{{ 'abc'|reverse }}|{{ '<a & b>'|e }}", {}),
    ("filters_list", "{{ [3, 1, 2]|sort }} {{ ['b', 'A', 'c']|sort }} "
                     "{{ [3, 1, 2]|sort(reverse=true) }} {{ ['a', 'A', 'b']|unique|list }} "
                     "{{ [1, 2]|first }} {{ [1, 2]|last }} {{ [1, 2]|join(', ') }} "
                     "{{ [1, 2]|join }} {{ 'abc'|list }} {{ {'a': 1}|list }} {{ [1, 2, 3]|sum }} "
                     "{{ [4, 9, 2]|max }} {{ [4, 9, 2]|min }} {{ [1, 2]|count }} "
                     "{{ [1, 2, 3]|reverse|list }}", {}),
    ("filters_dict", "{{ {'b': 1, 'a': 2}|dictsort }} {{ {'b': 1, 'a': 2}|items|list }} "
                     "{{ d|dictsort(by='value') }}", {"d": {"x": 3, "y": 1}}),
    ("filters_select", "{{ l|map(attribute='n')|list }} {{ l|selectattr('ok')|list }} "
                       "{{ l|rejectattr('ok')|map(attribute='n')|list }} "
                       "{{ l|selectattr('n', 'equalto', 2)|list }} "
                       "{{ ['A', 'b']|map('lower')|list }} {{ [1, 2, 3]|select('odd')|list }} "
                       "{{ ['a', 'b']|reject('equalto', 'a')|list }} "
                       "{{ l|map(attribute='m', default='-')|join }}",
     {"l": [{"n": 1, "ok": True}, {"n": 2, "ok": False}, {"n": 3}]}),
    ("filters_numbers", "{{ -3|abs }} {{ 3.7|int }} {{ '12'|int }} {{ 'x'|int }} "
                        "{{ '1.5'|int }} {{ '1.5'|float }} {{ 1|float }} {{ 2.5|round }} "
                        "{{ 3.14159|round(2) }} {{ 2.1|round(0, 'ceil') }} {{ 3|string }} "
                        "{{ 1.0|string }} {{ x|default(7) }} {{ ''|default('e', true) }}", {}),
    ("filter_indent", "[{{ 'a\nb\n\nc'|indent(2) }}][{{ 'a\nb'|indent(2, true) }}]"
                      "[{{ 'a\n\nb'|indent('> ', blank=true) }}]", {}),
    ("tojson", "{{ d|tojson }} {{ 'é\"\\n'|tojson }} {{ d|tojson(indent=2) }} "
               "{{ d|tojson(ensure_ascii=true) }} {{ d|tojson(separators=(',', ':')) }} "
               "{{ d|tojson(sort_keys=true) }} {{ 1.0|tojson }} {{ none|tojson }} {{ [] |tojson }}",
     {"d": {"z": [1, 2.5, None, True], "a": "ü 😀", "n": {}}}),
    ("tojson_undefined", "{{ nope|tojson }}", {}),
    ("str_methods", "{{ ' a b  c '.split() }} {{ 'a,b,c'.split(',', 1) }} "
                    "{{ 'a,b,c'.rsplit(',', 1) }} {{ '  a b '.rsplit(None, 1) }} "
                    "{{ 'xxaxx'.strip('x') }} {{ ' x '.lstrip() }}| {{ 'abc'.startswith(('x', 'a')) }} "
                    "{{ 'abc'.endswith('bc') }} {{ 'aaa'.replace('a', 'b', 2) }} "
                    "{{ 'héllo'.find('l') }} {{ 'abc'.rfind('z') }} {{ 'a\\nb\\r\\nc'.splitlines() }} "
                    "{{ '{} {name}'.format(1, name='n') }} {{ 'Hello World'.title() }} "
                    "{{ \"they're\".title() }} {{ '-'.join(['a', 'b']) }} {{ 'abcab'.count('ab') }} "
                    "{{ 'ab'.upper() }} {{ 'AB'.lower() }} {{ 'abc'.capitalize() }} "
                    "{{ '12'.isdigit() }} {{ 'a=b'.partition('=') }}", {}),
    ("dict_methods", "{{ d.get('a') }} {{ d.get('z', 'dflt') }} {{ d.get('z') }} "
                     "{{ d.keys()|list }} {{ d.values()|list }} {{ d.items()|list }}",
     {"d": {"a": 1, "b": [2]}}),
    ("tests", "{{ 'a' is string }} {{ 1 is number }} {{ true is number }} {{ [] is sequence }} "
              "{{ 'a' is iterable }} {{ {} is mapping }} {{ none is none }} {{ true is boolean }} "
              "{{ 1 is integer }} {{ 1.0 is float }} {{ 1 is true }} {{ true is true }} "
              "{{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 2 is in [1, 2] }} "
              "{{ 'abc' is lower }} {{ 'a' is eq 'a' }} {{ 1 is ge 2 }} {{ x is not defined }}",
     {}),
    ("builtins", "{{ range(3)|list }} {{ range(1, 6, 2)|list }} {{ dict(a=1) }} "
                 "{{ dict({'a': 1}, b=2) }} {{ strftime_now('%Y-%m-%d %H:%M %A %B') }}", {}),
    ("raise", "{% if true %}{{ raise_exception('Refused: ' ~ why) }}{% endif %}",
     {"why": "no"}),
    ("sandbox_append", "{% set l = [] %}{% set _ = l.append(1) %}{{ l }}", {}),
    ("namespace_underscore", "{% set ns = namespace() %}{% set ns._x = 1 %}", {}),
    ("unknown_filter_soft", "{% if false %}{{ x|from_json }}{% endif %}ok", {}),
    ("unknown_filter", "{{ x|from_json }}", {}),
    ("unknown_filter_reached", "{% if true %}{{ x|from_json }}{% endif %}", {}),
    ("unknown_tag", "{% do x %}", {}),
    ("syntax_error", "{% if x %}unclosed", {}),
    ("generation", "a{% generation %}b{% endgeneration %}c", {}),
    ("markup", "{{ ('<b>'|safe) + '<i>' }} {{ '<i>' ~ ('<b>'|safe) }}", {}),
    ("percent", "{{ '%s-%d' % ('a', 3) }}", {}),
    ("none_iter", "{% for x in none %}{% endfor %}", {}),
    ("str_mul", "{{ 'ab' * 3 }} {{ [0] * 2 }} {{ 3 * 'x' }}", {}),
    ("bool_arith", "{{ true + 1 }} {{ -true }} {{ 10 / 4 }} {{ 2 ** -1 }}", {}),
    ("float_repr", "{{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }} {{ -0.0 }} "
                   "{{ 123456789.123 }} {{ 1/3 }} {{ 2.5e-310 }} {{ 1.7976931348623157e308 }}",
     {}),
    ("repr_escapes", "{{ ['a\\nb', \"it's\", 'q\"', 'both\\'\"', 'tab\\t', '\\x01', 'é\\xa0'] }}",
     {}),
    ("views", "{{ d.items() }} {{ d.keys() }} {{ d.values() }} {{ d.items()|length }} "
              "{{ 'a' in d.keys() }} {{ d|items|list }} {{ nope|items|list }}", {"d": {"a": 1}}),
    ("generator_truth", "{{ 'y' if []|select('odd') else 'n' }} {{ ([]|select)|list }}", {}),
    ("generator_length", "{{ [1]|map('string')|length }}", {}),
    ("generator_json", "{{ [1]|map('string')|tojson }}", {}),
    ("call_args", "{% macro m() %}[{{ caller(1, 2) }}]{% endmacro %}"
                  "{% call(a, b) m() %}{{ a + b }}{% endcall %}", {}),
    ("recursive_depth", "{% for x in t recursive %}{{ loop.depth }}{{ loop.depth0 }}{{ x.n }}"
                        "{% if x.c %}[{{ loop(x.c) }}]{% endif %}{% endfor %}",
     {"t": [{"n": "a", "c": [{"n": "b", "c": [{"n": "c"}]}]}, {"n": "d"}]}),
    ("loop_rev", "{% for x in 'abc' %}{{ loop.revindex0 }}{{ x }}{% endfor %} "
                 "{% for k, v in d.items() %}{{ loop.previtem }}{% endfor %}"
                 "{{ range(5, 0, -2)|list }}", {"d": {"a": 1, "b": 2}}),
    ("ws_combos", "a\n  {%- if true %}\n  b\n  {%- endif %}\n  c\n  {# note #}\n  d"
                  "\n  {{- 'e' }}\n{%- for i in [1] -%}\n  {{ i }}\n{%- endfor -%}\nz", {}),
    ("ws_comment_lstrip", "x\n    {# c #}\ny\n  {#- d #}  \nw", {}),
    ("ws_tabs", "\t{% if true %}\t{{ 'a' }}\t{% endif %}\t\n", {}),
    ("scoping", "{% if true %}{% set a = 1 %}{% endif %}{{ a }}"
                "{% macro m() %}{% set b = 2 %}{{ b }}{% endmacro %}{{ m() }}[{{ b }}]"
                "{% for i in [1] %}{% for j in [2] %}{% set i = 9 %}{{ i }}{{ j }}{% endfor %}"
                "{{ i }}{% endfor %}", {}),
    ("none_strings", "{{ none|string }} {{ none|lower }} {{ none|default('x') }} "
                     "{{ none is none }} {{ nope is none }} {{ none ~ '' }}", {}),
    ("int_float", "{{ '0x1A'|int(base=16) }} {{ '  42  '|int }} {{ '1e3'|float }} "
                  "{{ 3|round }} {{ 2.675|round(2) }} {{ 0.5|round }} {{ 1.5|round }} "
                  "{{ -2.5|round }} {{ 'x'|float(1.5) }} {{ true|int }}", {}),
    ("filters_more", "{{ l|join(', ', attribute='n') }} {{ l|selectattr('n', 'defined')|list|length }} "
                     "{{ l|sort(attribute='n')|map(attribute='n')|list }} "
                     "{{ l|unique(attribute='g')|map(attribute='n')|list }} "
                     "{{ l|min(attribute='n') }} {{ l|sum(attribute='n') }} "
                     "{{ {'b': 1, 'a': 2}|dictsort(reverse=true) }} [{{ 'abc'|center(9) }}] "
                     "{{ ['B', 'a', 'C']|sort(case_sensitive=true) }} {{ ['b', 'B', 'a']|max }}",
     {"l": [{"n": 3, "g": "x"}, {"n": 1, "g": "y"}, {"n": 2, "g": "x"}]}),
    ("str_methods2", "{{ '{0}-{0}'.format('x') }} {{ 'a  b'.split(' ') }} "
                     "{{ 'x'.join(('a', 'b')) }} {{ 'Abc Def'.istitle() }} {{ 'ABC'.isupper() }} "
                     "{{ 'abc'.zfill(5) }} {{ '-3'.zfill(4) }} {{ 'ab'.ljust(4, '*') }} "
                     "{{ 'ab'.rjust(4) }} {{ 'a.b.c'.rpartition('.') }} {{ 'xyz'.removeprefix('x') }} "
                     "{{ 'hello'.index('l') }} {{ 'a\\tb'.split() }} {{ ''.split(',') }} "
                     "{{ 'a,,b'.split(',') }} {{ ' a '.split(None) }} {{ 'éa'.upper() }} "
                     "{{ 'ÉCOLE'.lower() }} {{ 'élan vital'|title }} {{ 'x'.center(4, '-') }}", {}),
    ("tojson_more", "{{ d|tojson(indent='\\t') }} {{ d|tojson(indent=0) }} {{ [[], {}]|tojson(indent=1) }} "
                    "{{ 'a\\u0001\\u007f\\u2028'|tojson }} {{ 'é'|tojson(ensure_ascii=true) }} "
                    "{{ {1: 'int', 2.5: 'float', true: 'bool', none: 'none'}|tojson }}",
     {"d": {"k": [1, {"x": None}]}}),
    ("namespace_repr", "{% set ns = namespace(a=1) %}{{ ns }} {{ ns.a }} {{ ns['a'] }} {{ ns.b is defined }}",
     {}),
    ("dict_literal", "{{ {'a': 1, 'b': {'c': [1, 2]}}['b']['c'][1] }} {{ {}|length }} "
                     "{{ {'a': 1} == {'a': 1} }} {{ {'x': 1, 'x': 2} }}", {}),
    ("cond_chain", "{{ 'a' if x == 1 else 'b' if x == 2 else 'c' }}", {"x": 2}),
    ("test_args", "{{ 3 is divisibleby(3) }} {{ 'a' is in('abc') }} {{ 5 is gt 3 }} "
                  "{{ 2 is lessthan 1 }} {{ none is sameas none }} {{ x is sameas false }} "
                  "{{ 'x' is filter }} {{ 'upper' is filter }} {{ 'odd' is test }}", {"x": False}),
    ("in_none", "{{ 'a' in none }}", {}),
    ("big_int", "{{ 2 ** 40 }} {{ 9223372036854775807 }}", {}),
    ("macro_kwargs_error", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(b=1) }}", {}),
    ("macro_caller_kwarg", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, 2) }}", {}),
    ("set_in_loop_ns", "{% set ns = namespace(found=false) %}{% for m in msgs %}"
                       "{% if m.role == 'tool' %}{% set ns.found = true %}{% endif %}{% endfor %}"
                       "{{ ns.found }}", {"msgs": [{"role": "user"}, {"role": "tool"}]}),
    ("string_compare", "{{ 'abc' < 'abd' }} {{ 'B' < 'a' }} {{ 'é' > 'z' }} {{ [1, 2] < [1, 3] }} "
                       "{{ (1, 'a') < (1, 'b') }}", {}),
    ("attr_filter", "{{ d|attr('a') }}|{{ d|attr('items') is defined }}", {"d": {"a": 1}}),
    ("slice_steps", "{{ 'abcdefgh'[1:7:2] }} {{ 'abcdefgh'[-2:1:-2] }} {{ l[10:] }} {{ l[-10:2] }} "
                    "{{ 'héllo'[::-1] }} {{ l[::-1][0] }}", {"l": [1, 2, 3]}),
]


def render_feature(template, context):
    try:
        return {"expected": ctu._compile_jinja_template(template).render(**context)}
    except Exception as e:
        return {"error": str(e), "error_type": type(e).__name__}


def main():
    print("transformers", transformers.__version__, file=sys.stderr)
    os.makedirs(OUT, exist_ok=True)
    total = 0
    for fname, special in TEMPLATE_TOKENS:
        with open(os.path.join(TEMPLATES, fname), encoding="utf-8") as f:
            template = f.read()
        tok = tokenizer(special)
        cases = [render_case(tok, template, c) for c in CASES + EXTRA_CASES.get(fname, [])]
        out = {"template": fname, "bos_token": special.get("bos_token"),
               "eos_token": special.get("eos_token"), "special_tokens": tok.special_tokens_map,
               "date": NOW.isoformat(), "tools": TOOLS, "cases": cases}
        name = fname[:-len(".jinja")]
        path = os.path.join(OUT, name + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(out, f, ensure_ascii=False, indent=1)
            f.write("\n")
        errors = sum("error" in c for c in cases)
        print(f"{path}: {len(cases)} cases, {errors} raise", file=sys.stderr)
        total += len(cases)
    feats = [dict({"name": n, "template": t, "context": c}, **render_feature(t, c))
             for n, t, c in FEATURES]
    with open(os.path.join(OUT, "features.json"), "w", encoding="utf-8") as f:
        json.dump({"date": NOW.isoformat(), "cases": feats}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"{total} conversation cases, {len(feats)} feature cases", file=sys.stderr)


if __name__ == "__main__":
    main()
