"""The completions features agents and evaluation use (issue 18), through a real moed on the
bundled model: logprobs, top_logprobs, logit_bias, echo, n, best_of, token-array prompts, /tokenize
and /detokenize, context_length_exceeded, the Responses API:

  - the completions API's shape ({"tokens", "token_logprobs", "top_logprobs", "text_offset"})
    and chat's ({"content": [{"token", "logprob", "bytes", "top_logprobs"}]}), the tokens
    spelling the text, greedy picking the likeliest alternative;
  - the values: the first token's logprob is log_softmax of the prompt's last logits as
    moe-bench computes them (the model's distribution, before penalties and temperature);
  - streamed chunks carry the same logprobs as the whole reply;
  - logit_bias moves the choice but not the logprobs (OpenAI and vLLM report the model's);
  - echo with logprobs and max_tokens 0 scores the prompt (lm-eval's loglikelihood request):
    each prompt token's logprob is log_softmax of the previous position's logits;
  - a prompt over the context is a 400 with code context_length_exceeded;
  - n choices: each what its seed gives alone, streamed with their indexes; best_of: the
    likeliest per token of that many;
  - /v1/responses answers what the chat it amounts to answers, as a response object and as
    OpenAI's event stream;
  - /tokenize and /detokenize as llama-server has them agree with moe-run's tokenizer, and a
    prompt given as those tokens gives what its text gives (the text's BOS included);
  - the official openai client reads them (skipped where the package is not installed).
"""
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_daemon as td  # noqa: E402

PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak."
CHAT = [{"role": "user", "content": "Speak, speak."}]


class CompletionsApi(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.moed = td.Moed()
        cls.moed.wait_notify("READY=1")

    @classmethod
    def tearDownClass(cls):
        cls.moed.stop()

    def post(self, path, body, status=200):
        st, out = self.moed.json("POST", path, dict(body, temperature=0))
        self.assertEqual(st, status, out)
        return out

    def test_completion_logprobs_shape_and_values(self):
        out = self.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 8, "logprobs": 3})
        ch = out["choices"][0]
        lp = ch["logprobs"]
        n = out["usage"]["completion_tokens"]
        self.assertEqual(len(lp["tokens"]), n)
        self.assertEqual(len(lp["token_logprobs"]), n)
        self.assertEqual(len(lp["top_logprobs"]), n)
        self.assertEqual("".join(lp["tokens"]), ch["text"])
        off = 0
        for tok, x, top, o in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                                  lp["text_offset"]):
            self.assertEqual(o, off)
            off += len(tok)
            self.assertLessEqual(x, 0.0)
            self.assertLessEqual(len(top), 3)
            self.assertLessEqual(sum(math.exp(v) for v in top.values()), 1.0 + 1e-5)
            self.assertAlmostEqual(x, max(top.values()), places=5)  # greedy: the likeliest
            self.assertIn(tok, top)
        # the first token's logprob against the model's own logits of the prompt
        ids = subprocess.run([os.path.join(td.BIN, "moe-run"), "--model", td.TINY, "--tokenize",
                              PROMPT], check=True, capture_output=True, text=True).stdout.split()
        with open(os.path.join(td.TINY, "config.json")) as f:  # the daemon adds BOS
            ids = [str(json.load(f)["bos_token_id"])] + ids
        self.assertEqual(len(ids), out["usage"]["prompt_tokens"])
        with tempfile.TemporaryDirectory() as tmp:
            f = os.path.join(tmp, "l.bin")
            subprocess.run([os.path.join(td.BIN, "moe-bench"), "logits", "--model", td.TINY,
                            "--ids", " ".join(ids), "--out", f], check=True, capture_output=True)
            last = np.fromfile(f, dtype="<f4").reshape(len(ids), -1)[-1].astype(np.float64)
        ls = last - last.max() - math.log(np.exp(last - last.max()).sum())
        self.assertAlmostEqual(lp["token_logprobs"][0], float(ls.max()), places=4)
        second = float(np.sort(ls)[-2])
        self.assertAlmostEqual(sorted(lp["top_logprobs"][0].values())[-2], second, places=4)

    def test_chat_logprobs_and_streaming(self):
        body = {"messages": CHAT, "max_tokens": 8, "logprobs": True, "top_logprobs": 2}
        out = self.post("/v1/chat/completions", body)
        msg = out["choices"][0]["message"]["content"]
        content = out["choices"][0]["logprobs"]["content"]
        self.assertEqual(len(content), out["usage"]["completion_tokens"])
        self.assertEqual("".join(t["token"] for t in content), msg)
        for t in content:
            self.assertEqual(bytes(t["bytes"]).decode("utf-8", "replace"), t["token"])
            self.assertEqual(len(t["top_logprobs"]), 2)
            self.assertEqual(t["top_logprobs"][0]["token"], t["token"])
            top = t["top_logprobs"]
            self.assertGreaterEqual(top[0]["logprob"], top[1]["logprob"])
        # streamed: the chunks' logprobs, in order, are the reply's
        _, events = td.stream(self.moed, "/v1/chat/completions", dict(body, temperature=0))
        got = []
        for ev in events:
            if ev != "DONE" and ev["choices"] and ev["choices"][0].get("logprobs"):
                got += ev["choices"][0]["logprobs"]["content"]
        self.assertEqual([(t["token"], round(t["logprob"], 5)) for t in got],
                         [(t["token"], round(t["logprob"], 5)) for t in content])
        # not asked: null, as OpenAI
        out = self.post("/v1/chat/completions", {"messages": CHAT, "max_tokens": 2})
        self.assertIsNone(out["choices"][0]["logprobs"])

    def test_logit_bias_moves_the_choice_not_the_logprobs(self):
        base = self.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 1, "logprobs": 2})
        first = base["choices"][0]["logprobs"]
        ids = subprocess.run([os.path.join(td.BIN, "moe-run"), "--model", td.TINY, "--tokenize",
                              PROMPT + first["tokens"][0]], check=True, capture_output=True,
                             text=True).stdout.split()
        banned = ids[-1]  # the greedy token's id (it ends the prompt + its text)
        out = self.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 1, "logprobs": 2,
                                            "logit_bias": {banned: -100}})
        lp = out["choices"][0]["logprobs"]
        self.assertNotEqual(lp["tokens"][0], first["tokens"][0])
        self.assertEqual(lp["top_logprobs"][0], first["top_logprobs"][0])  # the model's, unbiased
        runner_up = sorted(first["top_logprobs"][0].values())[0]
        self.assertAlmostEqual(lp["token_logprobs"][0], runner_up,
                               places=5)  # the runner-up was taken
        st, err = self.moed.json("POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 1,
                                                            "logit_bias": {"99999999": 5}})
        self.assertEqual(st, 400, err)
        self.assertIn("not in the vocabulary", err["error"]["message"])

    def test_prompt_over_the_context(self):
        st, err = self.moed.json("POST", "/v1/completions", {"prompt": "word " * 2000,
                                                            "max_tokens": 4})
        self.assertEqual(st, 400, err)
        self.assertEqual(err["error"]["code"], "context_length_exceeded")

    def test_echo_scores_the_prompt(self):
        """lm-eval's loglikelihood request: echo, logprobs, max_tokens 0; a long prompt (three
        64-token chunks) batched with a short one and a generating request"""
        long_prompt = (PROMPT + "\n") * 8
        (st0, out), (st1, short), (st2, gen) = td.at_once(self.moed, [
            {"prompt": long_prompt, "max_tokens": 0, "echo": True, "logprobs": 1,
             "temperature": 0},
            {"prompt": PROMPT, "max_tokens": 0, "echo": True, "logprobs": 1, "temperature": 0},
            {"prompt": PROMPT, "max_tokens": 40, "temperature": 0}])[0]
        self.assertEqual((st0, st1, st2), (200, 200, 200))
        self.assertGreater(out["usage"]["prompt_tokens"], 128)
        self.check_echo(long_prompt, out)
        self.check_echo(PROMPT, short)

    def check_echo(self, prompt, out):
        ch, n = out["choices"][0], out["usage"]["prompt_tokens"]
        self.assertEqual(ch["text"], prompt)
        self.assertEqual(out["usage"]["completion_tokens"], 0)
        lp = ch["logprobs"]
        self.assertEqual(len(lp["token_logprobs"]), n)
        self.assertIsNone(lp["token_logprobs"][0])  # BOS: nothing before it
        self.assertIsNone(lp["top_logprobs"][0])
        self.assertEqual("".join(lp["tokens"]), prompt)  # BOS spells nothing
        ids = [int(i) for i in self.post("/tokenize", {"content": prompt,
                                                       "add_special": True})["tokens"]]
        with tempfile.TemporaryDirectory() as tmp:
            f = os.path.join(tmp, "l.bin")
            subprocess.run([os.path.join(td.BIN, "moe-bench"), "logits", "--model", td.TINY,
                            "--ids", " ".join(map(str, ids)), "--out", f], check=True,
                           capture_output=True)
            lg = np.fromfile(f, dtype="<f4").reshape(len(ids), -1).astype(np.float64)
        ls = lg - lg.max(1, keepdims=True)
        ls -= np.log(np.exp(ls).sum(1, keepdims=True))
        want = [float(ls[i - 1][ids[i]]) for i in range(1, n)]
        np.testing.assert_allclose(lp["token_logprobs"][1:], want, atol=1e-4)

    def test_echo_with_generation(self):
        """the prompt, then what the prompt alone gives"""
        plain = self.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 5})
        both = self.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 5, "echo": True})
        self.assertEqual(both["choices"][0]["text"], PROMPT + plain["choices"][0]["text"])
        st, err = self.moed.json("POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 0})
        self.assertEqual((st, err["error"]["param"]), (400, "max_tokens"))

    def test_suffix_needs_fim_tokens(self):
        # the bundled model has no fill-in-the-middle tokens: refused by name, the daemon serves on
        st, out = self.moed.json("POST", "/v1/completions",
                                 {"prompt": PROMPT, "suffix": "end.", "max_tokens": 4})
        self.assertEqual(st, 400, out)
        self.assertIn("no fill-in-the-middle tokens", out["error"]["message"])
        for body, msg in (({"prompt": [1, 2], "suffix": "x"}, "as text"),
                          ({"prompt": "a", "suffix": "x", "echo": True}, "echo"),
                          ({"prompt": "a", "suffix": 3}, "string")):
            st, out = self.moed.json("POST", "/v1/completions", dict(body, max_tokens=2))
            self.assertEqual((st, out["error"]["param"]), (400, "suffix"), out)
            self.assertIn(msg, out["error"]["message"])
        self.post("/v1/completions", {"prompt": PROMPT, "suffix": "", "max_tokens": 2})

    def test_tokenize_detokenize_and_token_prompts(self):
        want = subprocess.run([os.path.join(td.BIN, "moe-run"), "--model", td.TINY, "--tokenize",
                               PROMPT], check=True, capture_output=True, text=True).stdout.split()
        out = self.post("/tokenize", {"content": PROMPT})
        self.assertEqual(out["tokens"], [int(i) for i in want])
        special = self.post("/tokenize", {"content": PROMPT, "add_special": True})["tokens"]
        self.assertEqual(special[1:], out["tokens"])  # tiny-moe adds BOS
        pieces = self.post("/tokenize", {"content": PROMPT, "with_pieces": True})["tokens"]
        self.assertEqual([p["id"] for p in pieces], out["tokens"])
        self.assertEqual("".join(p["piece"] for p in pieces), PROMPT)
        self.assertEqual(self.post("/detokenize", {"tokens": out["tokens"]})["content"], PROMPT)
        # the same prompt as tokens (BOS included): the same completion
        a = self.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 6})
        b = self.post("/v1/completions", {"prompt": special, "max_tokens": 6})
        c = self.post("/v1/completions", {"prompt": [special], "max_tokens": 6})
        self.assertEqual(a["choices"][0]["text"], b["choices"][0]["text"])
        self.assertEqual(b["choices"][0]["text"], c["choices"][0]["text"])
        self.assertEqual(b["usage"]["prompt_tokens"], len(special))
        # bad input: named, 400
        for path, body, param in (("/tokenize", {"content": 5}, "content"),
                                  ("/tokenize", {"content": "x", "add_special": 1}, "add_special"),
                                  ("/detokenize", {"tokens": [1, -1]}, "tokens[1]"),
                                  ("/detokenize", {"tokens": [10 ** 6]}, "tokens"),
                                  ("/v1/completions", {"prompt": [1, 10 ** 6]}, None)):
            st, err = self.moed.json("POST", path, body)
            self.assertEqual(st, 400, (path, body, err))
            self.assertEqual(err["error"]["param"], param, (path, body, err))

    def test_n_choices(self):
        """n choices: choice i is what the same request with seed + i gives alone (the later
        ones forking the first's prompt KV); streamed, each chunk names its choice; usage
        counts the prompt once and every choice's tokens"""
        body = {"prompt": PROMPT * 6, "max_tokens": 12, "temperature": 1.0, "seed": 5, "n": 3,
                "logprobs": 1}
        shared = self.moed.json("GET", "/admin/stats")[1]["engine"]["prompt_tokens_shared"]
        st, out = self.moed.json("POST", "/v1/completions", body)
        self.assertEqual(st, 200, out)
        # choices 1 and 2 forked choice 0's prompt KV rather than prefilling it again: all of
        # it when admitted while it was prefilled, all but the last token (computed again for
        # its logits) when admitted after, as under load
        now = self.moed.json("GET", "/admin/stats")[1]["engine"]["prompt_tokens_shared"]
        self.assertGreaterEqual(now - shared, 2 * (out["usage"]["prompt_tokens"] - 1))
        self.assertLessEqual(now - shared, 2 * out["usage"]["prompt_tokens"])
        self.assertEqual([c["index"] for c in out["choices"]], [0, 1, 2])
        texts = [c["text"] for c in out["choices"]]
        for i in range(3):
            st, one = self.moed.json("POST", "/v1/completions", dict(body, n=1, seed=5 + i))
            self.assertEqual(one["choices"][0]["text"], texts[i])
            self.assertEqual(one["choices"][0]["logprobs"]["tokens"],
                             out["choices"][i]["logprobs"]["tokens"])
        self.assertGreater(len(set(texts)), 1)  # sampled: they differ
        self.assertEqual(out["usage"]["completion_tokens"],
                         sum(len(c["logprobs"]["tokens"]) for c in out["choices"]))
        self.assertEqual(out["usage"]["prompt_tokens"], one["usage"]["prompt_tokens"])
        _, events = td.stream(self.moed, "/v1/completions",
                              dict(body, stream_options={"include_usage": True}))
        got, finished = ["", "", ""], set()
        for ev in events:
            if ev == "DONE" or not ev["choices"]:
                continue
            c = ev["choices"][0]
            got[c["index"]] += c["text"]
            if c["finish_reason"]:
                finished.add(c["index"])
        self.assertEqual(got, texts)
        self.assertEqual(finished, {0, 1, 2})
        self.assertEqual(events[-2]["usage"], out["usage"])  # the usage chunk, then [DONE]
        out = self.post("/v1/chat/completions", {"messages": CHAT, "max_tokens": 4, "n": 2})
        self.assertEqual(len(out["choices"]), 2)  # greedy: the same twice
        self.assertEqual(out["choices"][0]["message"], out["choices"][1]["message"])

    def test_best_of(self):
        """best_of candidates (seeds seed, seed + 1, ...), the likeliest per token returned;
        usage counts them all; not streamable"""
        body = {"prompt": PROMPT, "max_tokens": 10, "temperature": 1.0, "seed": 7}
        cands = []
        for i in range(3):
            st, one = self.moed.json("POST", "/v1/completions",
                                     dict(body, seed=7 + i, logprobs=0))
            lp = one["choices"][0]["logprobs"]["token_logprobs"]
            cands.append((sum(lp) / len(lp), one["choices"][0]["text"], len(lp)))
        st, out = self.moed.json("POST", "/v1/completions", dict(body, best_of=3))
        self.assertEqual(st, 200, out)
        self.assertEqual(len(out["choices"]), 1)
        self.assertIsNone(out["choices"][0]["logprobs"])  # not asked: not shown
        self.assertEqual(out["choices"][0]["text"], max(cands)[1])
        self.assertEqual(out["usage"]["completion_tokens"], sum(c[2] for c in cands))
        st, two = self.moed.json("POST", "/v1/completions", dict(body, best_of=3, n=2))
        self.assertEqual([c["text"] for c in two["choices"]],
                         [c[1] for c in sorted(cands)[::-1][:2]])
        for bad in ({"best_of": 2, "n": 3}, {"best_of": 3, "stream": True}):
            st, err = self.moed.json("POST", "/v1/completions", dict(body, **bad))
            self.assertEqual((st, err["error"]["param"]), (400, "best_of"), err)

    def test_responses_api(self):
        """POST /v1/responses: the chat it amounts to (instructions: the system message), as a
        response object and as its event stream; tools and function-call items refused"""
        sysmsg = "Answer briefly."
        chat = self.post("/v1/chat/completions", {
            "messages": [{"role": "system", "content": sysmsg}] + CHAT, "max_tokens": 8})
        want = chat["choices"][0]["message"]["content"]
        body = {"model": "tiny-moe", "instructions": sysmsg, "max_output_tokens": 8,
                "input": [{"role": "user", "content": [{"type": "input_text",
                                                        "text": CHAT[0]["content"]}]}]}
        out = self.post("/v1/responses", body)
        self.assertEqual(out["object"], "response")
        self.assertTrue(out["id"].startswith("resp_"))
        self.assertEqual(out["status"], "incomplete"
                         if chat["choices"][0]["finish_reason"] == "length" else "completed")
        item = out["output"][0]
        self.assertEqual((item["type"], item["role"]), ("message", "assistant"))
        self.assertEqual(item["content"][0]["text"], want)
        self.assertEqual(out["usage"]["input_tokens"], chat["usage"]["prompt_tokens"])
        self.assertEqual(out["usage"]["output_tokens"], chat["usage"]["completion_tokens"])
        # streamed: the events in OpenAI's order, the deltas spelling the text
        c = self.moed.conn(60)
        c.request("POST", "/v1/responses", body=json.dumps(dict(body, stream=True, temperature=0)),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        text = r.read().decode()  # the body ends with the last event: no [DONE] here
        c.close()
        events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
        names = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
        self.assertEqual(names, [e["type"] for e in events])
        kinds = [e["type"] for e in events]
        self.assertEqual(kinds[:4], ["response.created", "response.in_progress",
                                     "response.output_item.added", "response.content_part.added"])
        self.assertEqual(kinds[-4:-1], ["response.output_text.done", "response.content_part.done",
                                        "response.output_item.done"])
        self.assertEqual(kinds[-1], "response.incomplete" if out["status"] == "incomplete"
                         else "response.completed")
        self.assertEqual([e["sequence_number"] for e in events], list(range(len(events))))
        self.assertEqual("".join(e["delta"] for e in events
                                 if e["type"] == "response.output_text.delta"), want)
        self.assertEqual(events[-1]["response"]["output"][0]["content"][0]["text"], want)
        for bad, param in (({"tools": [{"type": "web_search"}]}, "tools[0]"),
                           ({"input": [{"type": "function_call", "name": "f"}]}, "input[0]"),
                           ({"previous_response_id": "resp_x"}, "previous_response_id")):
            st, err = self.moed.json("POST", "/v1/responses", dict(body, **bad))
            self.assertEqual((st, err["error"]["param"]), (400, param), err)

    def test_openai_client(self):
        try:
            import openai
        except ImportError:
            self.skipTest("the openai package is not installed")
        try:  # openai 3.x is built on httpx2, earlier ones on httpx
            import httpx2 as http
        except ImportError:
            import httpx as http
        client = openai.OpenAI(base_url="http://moed/v1", api_key="none", http_client=http.Client(
            transport=http.HTTPTransport(uds=self.moed.sock)))
        r = client.chat.completions.create(model="tiny-moe", messages=CHAT, max_tokens=6,
                                           temperature=0, logprobs=True, top_logprobs=3)
        content = r.choices[0].logprobs.content
        self.assertEqual("".join(t.token for t in content), r.choices[0].message.content)
        self.assertEqual(len(content[0].top_logprobs), 3)
        c = client.completions.create(model="tiny-moe", prompt=PROMPT, max_tokens=4,
                                      temperature=0, logprobs=2)
        self.assertEqual(len(c.choices[0].logprobs.tokens), c.usage.completion_tokens)
        c = client.completions.create(model="tiny-moe", prompt=PROMPT, max_tokens=4, n=3,
                                      temperature=1.0, seed=1, echo=True)
        self.assertEqual([x.index for x in c.choices], [0, 1, 2])
        self.assertTrue(all(x.text.startswith(PROMPT) for x in c.choices))
        resp = client.responses.create(model="tiny-moe", input=CHAT[0]["content"],
                                       max_output_tokens=6, temperature=0)
        chat = client.chat.completions.create(model="tiny-moe", messages=CHAT, max_tokens=6,
                                              temperature=0)
        self.assertEqual(resp.output_text, chat.choices[0].message.content)
        events = list(client.responses.create(model="tiny-moe", input=CHAT[0]["content"],
                                              max_output_tokens=6, temperature=0, stream=True))
        self.assertEqual("".join(ev.delta for ev in events
                                 if ev.type == "response.output_text.delta"), resp.output_text)
        self.assertEqual(events[-1].type, "response." + resp.status)  # incomplete: the limit
        self.assertEqual(events[-1].response.output_text, resp.output_text)
        with self.assertRaises(openai.BadRequestError) as e:
            client.completions.create(model="tiny-moe", prompt="word " * 2000, max_tokens=4)
        self.assertEqual(e.exception.code, "context_length_exceeded")


if __name__ == "__main__":
    unittest.main()
