"""Structured output through a real moed on the bundled model (issue 18): response_format
json_object and json_schema, llama-server's grammar and json_schema fields, tools with
tool_choice, and the errors for what cannot be enforced.

  - 200 outputs, from 10 schemas of the shapes real clients send (nested objects, arrays with
    bounds, enums, integer and number ranges, $defs with recursion, anyOf, patterns, formats),
    sampled at temperatures 0.7-1.2 with top_p and min_p, 8 requests at a time: every one
    parses and is valid against its schema by python3-jsonschema, and ends with "stop";
  - tool_choice required / named: one call whose arguments are valid against the function's
    parameters, as OpenAI's tool_calls (finish_reason "tool_calls"), streamed too, where the
    call arrives whole in one delta;
  - tool_choice auto leaves the text free; none ignores the tools;
  - an unsupported keyword, a bad grammar or an unknown function is a 400 naming it;
  - /metrics counts the masks built;
  - the official openai client (pydantic models through chat.completions.parse, a streamed
    tool call) and LangChain (bind_tools with a required call, with_structured_output) read
    them (skipped where those packages are not installed).
The random tiny model writes anything it may, which is what tests a grammar: a trained model
keeps to the schema by itself most of the time.
"""
import concurrent.futures as cf
import json
import os
import sys
import unittest

import jsonschema

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_daemon as td  # noqa: E402

CHAT = [{"role": "user", "content": "Describe one person as JSON."}]

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 130}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 30},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8},
                 "minItems": 1, "maxItems": 3},
        "rating": {"type": "number", "minimum": 0, "maximum": 5}},
     "required": ["title", "tags", "rating"]},
    {"type": "object", "properties": {
        "status": {"enum": ["ok", "error", "pending"]},
        "code": {"type": "integer", "minimum": 100, "exclusiveMaximum": 600},
        "detail": {"anyOf": [{"type": "string", "maxLength": 16}, {"type": "null"}]}},
     "required": ["status", "code", "detail"]},
    {"$defs": {"item": {"type": "object", "properties": {
        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2,3}$"},
        "qty": {"type": "integer", "minimum": 1, "maximum": 99}},
        "required": ["sku", "qty"], "additionalProperties": False}},
     "type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/item"},
                                                "maxItems": 2},
                                      "paid": {"type": "boolean"}},
     "required": ["items", "paid"]},
    {"type": "array", "items": {"type": "integer", "minimum": -50, "maximum": 50},
     "minItems": 2, "maxItems": 6},
    {"type": "object", "properties": {
        "when": {"type": "string", "format": "date"},
        "at": {"type": "string", "format": "date-time"},
        "id": {"type": "string", "format": "uuid"}},
     "required": ["when", "at", "id"]},
    {"$defs": {"node": {"type": "object", "properties": {
        "v": {"type": "integer", "minimum": 0, "maximum": 9},
        "kids": {"type": "array", "items": {"$ref": "#/$defs/leaf"}, "maxItems": 2}},
        "required": ["v"], "additionalProperties": False},
        "leaf": {"type": "object", "properties": {"v": {"type": "integer"}},
                 "required": ["v"], "additionalProperties": False}},
     "$ref": "#/$defs/node"},
    {"type": "object", "properties": {
        "kind": {"const": "point"},
        "x": {"type": "number", "minimum": 0, "maximum": 100},
        "y": {"type": "number", "minimum": 0, "maximum": 100},
        "label": {"type": ["string", "null"], "maxLength": 10}},
     "required": ["kind", "x", "y", "label"], "additionalProperties": False},
    {"type": "object", "properties": {
        "answer": {"oneOf": [{"type": "integer", "minimum": 0, "maximum": 9},
                             {"type": "string", "enum": ["none", "many"]}]},
        "confidence": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}},
     "required": ["answer", "confidence"]},
    {"type": "object", "properties": {
        "word": {"type": "string", "pattern": "^[a-z]{1,12}( [a-z]{1,12})?$",
                 "description": "lowercase"},
        "count": {"type": "integer", "maximum": 10000},
        "extra": {"type": "object", "additionalProperties": False,
                  "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}}},
     "required": ["word", "count"]},
]

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 16},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "add", "description": "a + b",
        "parameters": {"type": "object", "properties": {
            "a": {"type": "integer", "minimum": -99, "maximum": 99},
            "b": {"type": "integer", "minimum": -99, "maximum": 99}},
            "required": ["a", "b"], "additionalProperties": False}}},
]


def sse_events(body):
    out = []
    for line in body.decode().split("\n"):
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[6:]))
    return out


class Structured(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.moed = td.Moed(max_seqs=8)
        cls.moed.wait_notify("READY=1")

    @classmethod
    def tearDownClass(cls):
        cls.moed.stop()

    def chat(self, body, status=200):
        st, out = self.moed.json("POST", "/v1/chat/completions",
                                 dict({"messages": CHAT, "max_tokens": 450}, **body))
        self.assertEqual(st, status, out)
        return out

    def test_200_outputs_valid_against_their_schemas(self):
        jobs = []
        for i in range(200):
            schema = SCHEMAS[i % len(SCHEMAS)]
            body = {"temperature": [0.7, 1.0, 1.2][i % 3], "seed": i,
                    "response_format": {"type": "json_schema",
                                        "json_schema": {"name": "s%d" % (i % len(SCHEMAS)),
                                                        "schema": schema, "strict": True}}}
            if i % 4 == 1:
                body["top_p"] = 0.9
            if i % 4 == 2:
                body["min_p"] = 0.05
            jobs.append((schema, body))
        with cf.ThreadPoolExecutor(8) as ex:
            outs = list(ex.map(lambda jb: self.chat(jb[1]), jobs))
        for (schema, body), out in zip(jobs, outs):
            ch = out["choices"][0]
            self.assertEqual(ch["finish_reason"], "stop", (body, ch))
            value = json.loads(ch["message"]["content"])
            jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())

    def test_n_choices_each_held_to_the_schema(self):
        # the later choices fork the first one's prompt; each has its own parse state
        for schema in SCHEMAS[:4]:
            out = self.chat({"n": 3, "temperature": 1.0, "seed": 9, "response_format": {
                "type": "json_schema", "json_schema": {"name": "s", "schema": schema}}})
            self.assertEqual(len(out["choices"]), 3)
            for c in out["choices"]:
                self.assertEqual(c["finish_reason"], "stop", c)
                jsonschema.validate(json.loads(c["message"]["content"]), schema)
            self.assertGreater(len({c["message"]["content"] for c in out["choices"]}), 1)

    def test_json_object_and_llama_server_fields(self):
        out = self.chat({"temperature": 0, "response_format": {"type": "json_object"}})
        self.assertIsInstance(json.loads(out["choices"][0]["message"]["content"]), dict)
        st, out = self.moed.json("POST", "/v1/completions", {
            "prompt": "Numbers:", "max_tokens": 64, "temperature": 0.8, "seed": 1,
            "grammar": 'root ::= "[" [0-9]{1,3} ("," [0-9]{1,3}){2} "]"'})
        self.assertEqual(st, 200, out)
        self.assertRegex(out["choices"][0]["text"], r"^\[[0-9]{1,3}(,[0-9]{1,3}){2}\]$")
        self.assertEqual(out["choices"][0]["finish_reason"], "stop")
        st, out = self.moed.json("POST", "/v1/completions", {
            "prompt": "x", "max_tokens": 400, "temperature": 1, "seed": 2,
            "json_schema": SCHEMAS[4]})
        self.assertEqual(st, 200, out)
        jsonschema.validate(json.loads(out["choices"][0]["text"]), SCHEMAS[4])

    def test_schema_streamed_equals_whole(self):
        body = {"temperature": 0, "response_format": {"type": "json_schema", "json_schema": {
            "name": "p", "schema": SCHEMAS[0]}}}
        whole = self.chat(body)["choices"][0]["message"]["content"]
        st, _, raw = self.moed.request("POST", "/v1/chat/completions",
                                       dict({"messages": CHAT, "max_tokens": 450, "stream": True},
                                            **body))
        self.assertEqual(st, 200)
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in sse_events(raw))
        self.assertEqual(text, whole)

    def check_call(self, call, names=("get_weather", "add")):
        self.assertEqual(call["type"], "function")
        self.assertTrue(call["id"].startswith("call_"))
        fn = call["function"]
        self.assertIn(fn["name"], names)
        params = next(t["function"]["parameters"] for t in TOOLS
                      if t["function"]["name"] == fn["name"])
        jsonschema.validate(json.loads(fn["arguments"]), params)  # arguments: a JSON string

    def test_tool_choice_required_and_named(self):
        for seed in range(6):
            out = self.chat({"tools": TOOLS, "tool_choice": "required", "temperature": 1.0,
                             "seed": seed})
            ch = out["choices"][0]
            self.assertEqual(ch["finish_reason"], "tool_calls", ch)
            self.assertIsNone(ch["message"]["content"])
            self.assertEqual(len(ch["message"]["tool_calls"]), 1)
            self.check_call(ch["message"]["tool_calls"][0])
        out = self.chat({"tools": TOOLS, "temperature": 0.9, "seed": 5,
                         "tool_choice": {"type": "function", "function": {"name": "add"}}})
        self.check_call(out["choices"][0]["message"]["tool_calls"][0], names=("add",))

    def test_tool_call_streamed(self):
        body = {"messages": CHAT, "max_tokens": 450, "stream": True, "temperature": 0,
                "tools": TOOLS, "tool_choice": "required"}
        whole = self.chat(dict(body, stream=False))["choices"][0]["message"]["tool_calls"][0]
        st, _, raw = self.moed.request("POST", "/v1/chat/completions", body)
        self.assertEqual(st, 200)
        events = sse_events(raw)
        deltas = [e["choices"][0]["delta"] for e in events]
        calls = [d["tool_calls"] for d in deltas if d.get("tool_calls")]
        self.assertEqual(len(calls), 1)  # the call comes whole
        call = calls[0][0]
        self.assertEqual(call["index"], 0)
        self.assertEqual(call["function"], whole["function"])
        self.check_call(call)
        self.assertEqual(events[-1]["choices"][0]["finish_reason"], "tool_calls")
        self.assertFalse(any("<tool_call>" in (d.get("content") or "") for d in deltas))

    def test_responses_api(self):
        rtools = [dict(t["function"], type="function") for t in TOOLS]  # its flat shape
        body = {"input": "What is 2 + 3?", "tools": rtools, "max_output_tokens": 450,
                "temperature": 0, "tool_choice": {"type": "function", "name": "add"}}
        st, whole = self.moed.json("POST", "/v1/responses", body)
        self.assertEqual(st, 200, whole)
        self.assertEqual(whole["status"], "completed")
        calls = [o for o in whole["output"] if o["type"] == "function_call"]
        self.assertEqual(len(calls), 1)
        self.assertEqual(calls[0]["name"], "add")
        self.assertTrue(calls[0]["call_id"].startswith("call_"))
        jsonschema.validate(json.loads(calls[0]["arguments"]), TOOLS[1]["function"]["parameters"])
        st, _, raw = self.moed.request("POST", "/v1/responses", dict(body, stream=True))
        self.assertEqual(st, 200)
        events = [json.loads(l[6:]) for l in raw.decode().split("\n") if l.startswith("data: ")]
        types = [e["type"] for e in events]
        self.assertNotIn("response.output_text.delta", types)  # nothing but the call
        i = types.index("response.function_call_arguments.done")
        self.assertEqual(events[i]["arguments"], calls[0]["arguments"])
        self.assertEqual(types[i - 2:i + 2], ["response.output_item.added",
                                              "response.function_call_arguments.delta",
                                              "response.function_call_arguments.done",
                                              "response.output_item.done"])
        final = events[-1]["response"]
        self.assertEqual([o for o in final["output"] if o["type"] == "function_call"][0]["arguments"],
                         calls[0]["arguments"])
        # structured output through text.format
        st, out = self.moed.json("POST", "/v1/responses", {
            "input": "A person.", "max_output_tokens": 450, "temperature": 0.9, "seed": 4,
            "text": {"format": {"type": "json_schema", "name": "p", "schema": SCHEMAS[0],
                                "strict": True}}})
        self.assertEqual(st, 200, out)
        text = out["output"][0]["content"][0]["text"]
        jsonschema.validate(json.loads(text), SCHEMAS[0])

    def test_tool_choice_auto_and_none(self):
        for choice in ("auto", "none"):
            out = self.chat({"tools": TOOLS, "tool_choice": choice, "temperature": 0,
                             "max_tokens": 24})
            ch = out["choices"][0]
            self.assertEqual(ch["finish_reason"], "length")
            self.assertNotIn("tool_calls", ch["message"])  # the random model writes no call
            self.assertTrue(ch["message"]["content"])

    def test_refusals_name_what_is_wrong(self):
        cases = [
            ({"response_format": {"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "string", "format": "email"}}}},
             "response_format.json_schema.schema", "format 'email'"),
            ({"response_format": {"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "object", "properties": {
                    "n": {"type": "integer", "multipleOf": 3}}}}}},
             "response_format.json_schema.schema", "#/properties/n: keyword 'multipleOf'"),
            ({"response_format": {"type": "yaml"}}, "response_format.type", "yaml"),
            ({"grammar": "root ::= x"}, "grammar", "rule 'x' is used but never defined"),
            ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
             "tool_choice", "names no function"),
            ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
            ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0]",
             "may hold only"),
            ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "tools",
             "cannot be combined"),
        ]
        for body, param, msg in cases:
            out = self.chat(body, status=400)
            self.assertEqual(out["error"]["param"], param, out)
            self.assertIn(msg, out["error"]["message"])
        # the daemon keeps serving
        self.assertEqual(self.chat({"max_tokens": 2})["choices"][0]["finish_reason"], "length")

    def test_metrics_count_masks(self):
        self.chat({"temperature": 0.8, "top_p": 0.9, "seed": 1, "max_tokens": 200,
                   "response_format": {"type": "json_object"}})
        st, _, raw = self.moed.request("GET", "/metrics")
        lines = [l for l in raw.decode().split("\n") if l.startswith("moed_grammar_masks_total")]
        self.assertEqual(len(lines), 1)
        self.assertGreater(float(lines[0].split()[-1]), 0)  # top_p: a mask every step

    def http_client(self):
        try:  # openai 3.x is built on httpx2, earlier ones on httpx
            import httpx2 as http
        except ImportError:
            import httpx as http
        return http.Client(transport=http.HTTPTransport(uds=self.moed.sock))

    def test_openai_client(self):
        try:
            import openai
            import pydantic
        except ImportError:
            self.skipTest("the openai package is not installed")

        class Person(pydantic.BaseModel):
            name: str = pydantic.Field(max_length=12)
            age: int = pydantic.Field(ge=0, le=120)
            city: str | None = pydantic.Field(max_length=12)

        client = openai.OpenAI(base_url="http://moed/v1", api_key="none",
                               http_client=self.http_client())
        for seed in range(3):
            r = client.chat.completions.parse(model="tiny-moe", messages=CHAT, max_tokens=450,
                                              temperature=1.0, seed=seed, response_format=Person)
            self.assertIsInstance(r.choices[0].message.parsed, Person)  # the client validated it
        stream = client.chat.completions.create(model="tiny-moe", messages=CHAT, max_tokens=450,
                                                temperature=0, tools=TOOLS, stream=True,
                                                tool_choice="required",
                                                stream_options={"include_usage": True})
        calls, finish, usage = {}, None, None
        for ch in stream:
            if not ch.choices:  # include_usage: the last chunk, choices empty
                usage = ch.usage
                continue
            for tc in ch.choices[0].delta.tool_calls or []:
                c = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                c["name"] += tc.function.name or ""
                c["arguments"] += tc.function.arguments or ""
            finish = ch.choices[0].finish_reason or finish
        self.assertEqual(finish, "tool_calls")
        self.assertGreater(usage.completion_tokens, 10)
        self.assertEqual(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens)
        self.assertEqual(len(calls), 1)
        self.check_call({"type": "function", "id": "call_x", "function": calls[0]})

    def test_langchain(self):
        try:
            import pydantic
            from langchain_core.tools import tool
            from langchain_openai import ChatOpenAI
        except ImportError:
            self.skipTest("langchain-openai is not installed")

        @tool
        def add(a: int, b: int) -> int:
            """Adds a and b."""
            return a + b

        llm = ChatOpenAI(model="tiny-moe", base_url="http://moed/v1", api_key="none",
                         temperature=0.7, max_tokens=450, seed=3, http_client=self.http_client())
        msg = llm.bind_tools([add], tool_choice="add").invoke("What is 2 + 3?")
        self.assertEqual(len(msg.tool_calls), 1)
        call = msg.tool_calls[0]
        self.assertEqual(call["name"], "add")
        self.assertEqual(set(call["args"]), {"a", "b"})
        self.assertEqual(add.invoke(call["args"]), call["args"]["a"] + call["args"]["b"])

        class Answer(pydantic.BaseModel):
            """An answer."""
            word: str = pydantic.Field(max_length=10)
            score: int = pydantic.Field(ge=1, le=5)

        out = llm.with_structured_output(Answer, method="json_schema").invoke("Rate it.")
        self.assertIsInstance(out, Answer)


if __name__ == "__main__":
    unittest.main()
