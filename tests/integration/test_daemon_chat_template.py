"""The model's own chat template through a real moed (issue 18): [model] chat_template_file
names a real template (Qwen2.5's, from llama.cpp's collection), and every conversation of
tests/data/chat/jinja/Qwen-Qwen2.5-7B-Instruct.json (system messages, several turns, tools,
tool calls with their arguments as objects or JSON text, tool results, unicode, text that looks
like Jinja) reaches the engine as exactly the prompt transformers' apply_chat_template renders:
the prompt's token count equals that of transformers' text tokenized alone (tool-call arguments
sent as JSON text reach the template as objects, as vLLM hands them: the cases that give
transformers the text itself are left out). Then an agent's
loop: a tool call, its result in the history, and the next call, with the official openai
client; and the built-in format refusing what it cannot render.
"""
import json
import os
import shutil
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_daemon as td  # noqa: E402
import test_daemon_structured as ts  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TEMPLATE = os.path.join(ROOT, "tests/data/chat/templates/Qwen-Qwen2.5-7B-Instruct.jinja")
CASES = os.path.join(ROOT, "tests/data/chat/jinja/Qwen-Qwen2.5-7B-Instruct.json")


class OwnTemplate(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.model = td.long_context_copy(td.TINY, 4096)
        cls.moed = td.Moed(model=cls.model, max_ctx=4096,
                           chat_template="auto\nchat_template_file = %s" % TEMPLATE)
        cls.moed.wait_notify("READY=1")
        with open(CASES) as f:
            cls.data = json.load(f)

    @classmethod
    def tearDownClass(cls):
        cls.moed.stop()
        shutil.rmtree(cls.model)

    def tokens(self, text):
        st, out = self.moed.json("POST", "/tokenize", {"content": text, "add_special": False})
        self.assertEqual(st, 200, out)
        return out["tokens"]

    def test_prompts_are_what_transformers_renders(self):
        self.assertIn("chat template: the model's own, Jinja ([model] chat_template_file)",
                      self.moed.logtext())
        n = 0
        for case in self.data["cases"]:
            if "error" in case or not case["add_generation_prompt"]:
                continue  # requests always ask for the assistant's turn
            if any(isinstance(c["function"]["arguments"], str)
                   for m in case["messages"] for c in m.get("tool_calls") or []):
                continue  # moed hands templates the arguments as an object, as vLLM does
            body = {"messages": case["messages"], "max_tokens": 1}
            if case["tools"]:
                body["tools"] = self.data["tools"]
                body["tool_choice"] = "none"
            if case["kwargs"]:
                body["chat_template_kwargs"] = case["kwargs"]
            st, out = self.moed.json("POST", "/v1/chat/completions", body)
            self.assertEqual(st, 200, (case["name"], out))
            self.assertEqual(out["usage"]["prompt_tokens"], len(self.tokens(case["expected"])),
                             case["name"])
            n += 1
        self.assertGreaterEqual(n, 12)

    def test_template_refusal_is_a_400(self):
        # Qwen2.5's template raises nothing; an empty list is refused before it
        st, out = self.moed.json("POST", "/v1/chat/completions",
                                 {"messages": [{"role": "tool", "content": 3}], "max_tokens": 1})
        self.assertEqual(st, 400, out)
        self.assertEqual(out["error"]["param"], "messages[0].content")
        st, out = self.moed.json("POST", "/v1/chat/completions", {
            "messages": [{"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "f", "arguments": "{not json"}}]}], "max_tokens": 1})
        self.assertEqual(st, 400, out)
        self.assertIn("not a JSON object", out["error"]["message"])

    def test_agent_loop_with_the_openai_client(self):
        try:
            import openai
        except ImportError:
            self.skipTest("the openai package is not installed")
        client = openai.OpenAI(base_url="http://moed/v1", api_key="none",
                               http_client=ts.Structured.http_client(self))
        history = [{"role": "user", "content": "What is 2 + 3, then the weather in Paris?"}]
        first = client.chat.completions.create(model="tiny-moe", messages=history, tools=ts.TOOLS,
                                               tool_choice={"type": "function",
                                                            "function": {"name": "add"}},
                                               max_tokens=400, temperature=0)
        call = first.choices[0].message.tool_calls[0]
        args = json.loads(call.function.arguments)
        history.append(first.choices[0].message.model_dump(exclude_none=True))
        history.append({"role": "tool", "tool_call_id": call.id,
                        "content": str(args["a"] + args["b"])})
        second = client.chat.completions.create(
            model="tiny-moe", messages=history, tools=ts.TOOLS, max_tokens=400, temperature=0,
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
        self.assertEqual(second.choices[0].finish_reason, "tool_calls")
        self.assertEqual(second.choices[0].message.tool_calls[0].function.name, "get_weather")
        # the history (the call and its result) is in the prompt
        self.assertGreater(second.usage.prompt_tokens, first.usage.prompt_tokens + 10)


    def test_agent_loop_with_the_responses_api(self):
        try:
            import openai
        except ImportError:
            self.skipTest("the openai package is not installed")
        client = openai.OpenAI(base_url="http://moed/v1", api_key="none",
                               http_client=ts.Structured.http_client(self))
        rtools = [dict(t["function"], type="function") for t in ts.TOOLS]
        items = [{"role": "user", "content": "What is 2 + 3, then the weather in Paris?"}]
        first = client.responses.create(model="tiny-moe", input=items, tools=rtools,
                                        tool_choice={"type": "function", "name": "add"},
                                        max_output_tokens=400, temperature=0)
        call = [o for o in first.output if o.type == "function_call"][0]
        args = json.loads(call.arguments)
        items += [call.model_dump(exclude_none=True),
                  {"type": "function_call_output", "call_id": call.call_id,
                   "output": str(args["a"] + args["b"])}]
        second = client.responses.create(model="tiny-moe", input=items, tools=rtools,
                                         tool_choice={"type": "function", "name": "get_weather"},
                                         max_output_tokens=400, temperature=0)
        calls = [o for o in second.output if o.type == "function_call"]
        self.assertEqual([c.name for c in calls], ["get_weather"])
        self.assertGreater(second.usage.input_tokens, first.usage.input_tokens + 10)


class BuiltInFormat(unittest.TestCase):
    """Without the model's template, moed's built-in formats render chat: they cannot render
    tool calls or results, and say so rather than drop them."""

    @classmethod
    def setUpClass(cls):
        cls.moed = td.Moed()
        cls.moed.wait_notify("READY=1")

    @classmethod
    def tearDownClass(cls):
        cls.moed.stop()

    def test_tool_history_refused(self):
        cases = [
            ([{"role": "tool", "content": "5", "tool_call_id": "c1"}], "messages[0].role",
             "need the model's own chat template"),
            ([{"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}]}],
             "messages[0].tool_calls", "needs the model's own chat template"),
        ]
        for msgs, param, msg in cases:
            st, out = self.moed.json("POST", "/v1/chat/completions",
                                     {"messages": msgs, "max_tokens": 1})
            self.assertEqual(st, 400, out)
            self.assertEqual(out["error"]["param"], param)
            self.assertIn(msg, out["error"]["message"])
        st, out = self.moed.json("POST", "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
            "chat_template_kwargs": {"enable_thinking": False}})
        self.assertEqual(st, 400, out)
        self.assertEqual(out["error"]["param"], "chat_template_kwargs")


if __name__ == "__main__":
    unittest.main()
