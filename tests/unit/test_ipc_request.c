/* The request parser: every field valid and invalid (the error names the
 * field), type errors, defaults, stop strings, n, chat messages, prompt
 * arrays, unicode, malformed JSON with its position; and the reply builders
 * (error objects, completion JSON, SSE chunks). */
#include "tests/unit/test.h"

#include "engine/engine_grammar.h"
#include "ipc/ipc_int.h"

#include <errno.h>
#include <jansson.h>

/* ---- helpers ------------------------------------------------------------- */

static struct moe_ipc_limits test_limits(void)
{
    struct moe_ipc_limits lim = {
        .max_body_bytes = 1 << 20,
        .max_prompt_bytes = 1000,
        .max_tokens_limit = 4096,
        .request_timeout_s = 30,
        .default_max_tokens = 128,
    };
    lim.defaults = (struct moe_sampling){
        .temperature = 0.7f,
        .top_k = 11,
        .top_p = 0.95f,
        .min_p = 0.01f,
        .repetition_penalty = 1.1f,
        .presence_penalty = 0.2f,
        .frequency_penalty = 0.3f,
        .penalty_last_n = 64,
        .seed = 1234,
    };
    return lim;
}

static struct moe_request *parse_ok(const char *body, bool chat, struct moe_ipc_parsed *p)
{
    struct moe_ipc_limits lim = test_limits();
    struct moe_ipc_error err = {0};
    int rc = moe_ipc_parse_completion(body, strlen(body), chat, &lim, p, &err);
    if (rc)
        fail_msg("%s: unexpected error %d %s [%s]: %s", body, err.status, err.code, err.param,
                 err.message);
    assert_non_null(p->req);
    return p->req;
}

/* parses a body that must fail; checks status, code and the field named */
static void expect_err(bool chat, const char *body, int status, const char *code,
                       const char *param, const char *msg_part)
{
    struct moe_ipc_limits lim = test_limits();
    struct moe_ipc_parsed p;
    struct moe_ipc_error err;
    memset(&err, 0, sizeof(err));
    int rc = moe_ipc_parse_completion(body, strlen(body), chat, &lim, &p, &err);
    if (rc == 0) {
        moe_ipc_parsed_free(&p);
        fail_msg("%s: accepted, expected %s", body, code);
    }
    assert_null(p.req);
    if (err.status != status || strcmp(err.code, code) != 0 || strcmp(err.param, param) != 0)
        fail_msg("%s: got %d %s [%s] '%s', expected %d %s [%s]", body, err.status, err.code,
                 err.param, err.message, status, code, param);
    if (msg_part && !strstr(err.message, msg_part))
        fail_msg("%s: message '%s' lacks '%s'", body, err.message, msg_part);
    assert_string_equal(err.type, "invalid_request_error");
    /* the message names the field it is about */
    if (param[0] && !strstr(err.message, param))
        fail_msg("%s: message '%s' does not name '%s'", body, err.message, param);
}

/* a reply of one choice */
static char *one_choice(struct moe_ipc_gen *g, const char *text, size_t len,
                        const struct moe_token_logprob *lp, size_t n_lp, const char *finish,
                        int32_t prompt_tokens, int32_t completion_tokens, size_t *n)
{
    struct moe_ipc_choice c = {text, len, lp, n_lp, finish};
    return moe_ipc_completion_json(g, &c, 1, prompt_tokens, completion_tokens, n);
}

/* ---- valid requests ------------------------------------------------------ */

static void test_defaults(void **state)
{
    struct moe_ipc_parsed p;
    struct moe_ipc_limits lim = test_limits();
    struct moe_request *r = parse_ok("{\"prompt\": \"hello\"}", false, &p);
    assert_int_equal(r->kind, MOE_REQ_COMPLETION);
    assert_string_equal(r->prompt, "hello");
    assert_int_equal(r->max_tokens, 128);
    assert_true(r->sampling.temperature == lim.defaults.temperature);
    assert_int_equal(r->sampling.top_k, 11);
    assert_true(r->sampling.top_p == lim.defaults.top_p);
    assert_true(r->sampling.min_p == lim.defaults.min_p);
    assert_true(r->sampling.repetition_penalty == lim.defaults.repetition_penalty);
    assert_true(r->sampling.presence_penalty == lim.defaults.presence_penalty);
    assert_true(r->sampling.frequency_penalty == lim.defaults.frequency_penalty);
    assert_int_equal(r->sampling.penalty_last_n, 64);
    assert_int_equal(r->sampling.seed, 1234);
    assert_false(p.seed_set);
    assert_false(p.include_usage);
    assert_false(r->stream);
    assert_false(r->ignore_eos);
    assert_false(r->moe_prune_set);
    assert_int_equal(r->moe_top_k, 0);
    assert_int_equal(r->n_stop, 0);
    assert_null(r->messages);
    assert_true(r->timeout_s == 30.0);
    moe_ipc_parsed_free(&p);
    assert_null(p.req);
}

static void test_all_fields(void **state)
{
    struct moe_ipc_parsed p;
    struct moe_request *r = parse_ok(
        "{\"model\": \"anything\", \"prompt\": \"x\", \"max_tokens\": 16, \"temperature\": 0,"
        " \"top_p\": 0.5, \"top_k\": 40, \"min_p\": 0.05, \"seed\": 42, \"stop\": [\"a\", \"bc\"],"
        " \"presence_penalty\": -1.5, \"frequency_penalty\": 2, \"repetition_penalty\": 1.3,"
        " \"n\": 1, \"stream\": true, \"stream_options\": {\"include_usage\": true},"
        " \"user\": {\"whatever\": 1}, \"logprobs\": null, \"echo\": false, \"best_of\": 1,"
        " \"suffix\": null, \"logit_bias\": {}, \"ignore_eos\": true, \"unknown_field\": [1],"
        " \"moe_prune\": 0.4, \"moe_top_k\": 1}",
        false, &p);
    assert_true(r->moe_prune_set);
    assert_true(r->moe_prune == 0.4f);
    assert_int_equal(r->moe_top_k, 1);
    assert_int_equal(r->max_tokens, 16);
    assert_true(r->sampling.temperature == 0.0f);
    assert_true(r->sampling.top_p == 0.5f);
    assert_int_equal(r->sampling.top_k, 40);
    assert_true(r->sampling.min_p == 0.05f);
    assert_int_equal(r->sampling.seed, 42);
    assert_true(p.seed_set);
    assert_true(r->sampling.presence_penalty == -1.5f);
    assert_true(r->sampling.frequency_penalty == 2.0f);
    assert_true(r->sampling.repetition_penalty == 1.3f);
    assert_int_equal(r->n_stop, 2);
    assert_string_equal(r->stop[0], "a");
    assert_string_equal(r->stop[1], "bc");
    assert_true(r->stream);
    assert_true(r->ignore_eos);
    assert_true(p.include_usage);
    moe_ipc_parsed_free(&p);
}

static void test_nulls_are_defaults(void **state)
{
    struct moe_ipc_parsed p;
    struct moe_request *r =
        parse_ok("{\"prompt\": \"x\", \"temperature\": null, \"max_tokens\": null, \"stop\": null,"
                 " \"n\": null, \"stream\": null, \"seed\": null, \"stream_options\": null}",
                 false, &p);
    assert_true(r->sampling.temperature == 0.7f);
    assert_int_equal(r->max_tokens, 128);
    assert_int_equal(r->n_stop, 0);
    assert_false(r->stream);
    assert_false(p.seed_set);
    moe_ipc_parsed_free(&p);
}

static void test_numbers_lenient(void **state)
{
    struct moe_ipc_parsed p;
    /* integral reals count as integers; -1 turns top-k off; integers as floats */
    struct moe_request *r;
    r = parse_ok("{\"prompt\": \"x\", \"max_tokens\": 16.0, \"top_k\": -1, \"temperature\": 1,"
                 " \"seed\": -1}",
                 false, &p);
    assert_int_equal(r->max_tokens, 16);
    assert_int_equal(r->sampling.top_k, 0);
    assert_true(r->sampling.temperature == 1.0f);
    assert_int_equal(r->sampling.seed, UINT64_MAX);
    moe_ipc_parsed_free(&p);
    r = parse_ok("{\"prompt\": \"x\", \"max_tokens\": 4096}", false, &p);
    assert_int_equal(r->max_tokens, 4096); /* the limit itself is fine */
    moe_ipc_parsed_free(&p);
}

static void test_prompt_array_and_unicode(void **state)
{
    struct moe_ipc_parsed p;
    struct moe_request *r = parse_ok("{\"prompt\": [\"only one\"]}", false, &p);
    assert_string_equal(r->prompt, "only one");
    moe_ipc_parsed_free(&p);

    r = parse_ok("{\"prompt\": \"h\\u00e9llo \\u6f22\\u5b57 \\ud83d\\ude00 \xce\xbb\"}", false,
                 &p);
    assert_string_equal(r->prompt, "h\xc3\xa9llo \xe6\xbc\xa2\xe5\xad\x97 \xf0\x9f\x98\x80 "
                                   "\xce\xbb");
    moe_ipc_parsed_free(&p);

    r = parse_ok("{\"prompt\": \"\"}", false, &p); /* empty: the engine decides */
    assert_string_equal(r->prompt, "");
    moe_ipc_parsed_free(&p);

    /* exactly max_prompt_bytes is fine */
    char body[1200];
    snprintf(body, sizeof(body), "{\"prompt\": \"%01000d\"}", 0);
    r = parse_ok(body, false, &p);
    assert_int_equal(strlen(r->prompt), 1000);
    moe_ipc_parsed_free(&p);
}

static void test_stop_forms(void **state)
{
    struct moe_ipc_parsed p;
    struct moe_request *r = parse_ok("{\"prompt\": \"x\", \"stop\": \"\\n\\n\"}", false, &p);
    assert_int_equal(r->n_stop, 1);
    assert_string_equal(r->stop[0], "\n\n");
    moe_ipc_parsed_free(&p);

    r = parse_ok("{\"prompt\": \"x\", \"stop\": []}", false, &p);
    assert_int_equal(r->n_stop, 0);
    moe_ipc_parsed_free(&p);

    /* MOE_STOP_MAX strings of MOE_STOP_MAX_LEN bytes: the most allowed */
    char body[8192], *w = body;
    w += sprintf(w, "{\"prompt\": \"x\", \"stop\": [");
    for (int i = 0; i < MOE_STOP_MAX; i++)
        w += sprintf(w, "%s\"%0*d\"", i ? "," : "", MOE_STOP_MAX_LEN, i);
    sprintf(w, "]}");
    r = parse_ok(body, false, &p);
    assert_int_equal(r->n_stop, MOE_STOP_MAX);
    for (int i = 0; i < MOE_STOP_MAX; i++)
        assert_int_equal(strlen(r->stop[i]), MOE_STOP_MAX_LEN);
    moe_ipc_parsed_free(&p);
}

static void test_chat_messages(void **state)
{
    struct moe_ipc_parsed p;
    struct moe_request *r = parse_ok(
        "{\"model\": \"m\", \"messages\": ["
        "{\"role\": \"system\", \"content\": \"be brief\"},"
        "{\"role\": \"user\", \"content\": \"hi\", \"name\": \"bob\"},"
        "{\"role\": \"assistant\", \"content\": \"hello\"},"
        "{\"role\": \"developer\", \"content\": \"dev\"},"
        "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"a\"},"
        " {\"type\": \"text\", \"text\": \"b\"}]}],"
        " \"max_completion_tokens\": 7, \"logprobs\": false, \"top_logprobs\": 0,"
        " \"tools\": [], \"response_format\": {\"type\": \"text\"}}",
        true, &p);
    assert_int_equal(r->kind, MOE_REQ_CHAT);
    assert_null(r->prompt);
    assert_int_equal(r->n_messages, 5);
    assert_string_equal(r->messages[0].role, "system");
    assert_string_equal(r->messages[0].content, "be brief");
    assert_string_equal(r->messages[1].role, "user");
    assert_string_equal(r->messages[2].role, "assistant");
    assert_string_equal(r->messages[3].role, "system"); /* developer = system */
    assert_string_equal(r->messages[3].content, "dev");
    assert_string_equal(r->messages[4].content, "a\nb");
    assert_int_equal(r->max_tokens, 7);
    assert_false(r->logprobs);
    moe_ipc_parsed_free(&p);

    /* logprobs in both shapes, and logit_bias */
    r = parse_ok("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}],"
                 " \"logprobs\": true, \"top_logprobs\": 5, \"logit_bias\": {\"7\": -100,"
                 " \"12\": 2.5}}", true, &p);
    assert_true(r->logprobs);
    assert_int_equal(r->top_logprobs, 5);
    assert_int_equal(r->n_bias, 2);
    assert_int_equal(r->bias_id[0] + r->bias_id[1], 19);
    assert_true(r->bias[0] + r->bias[1] == -97.5f);
    moe_ipc_parsed_free(&p);
    r = parse_ok("{\"prompt\": \"x\", \"echo\": true, \"max_tokens\": 0}", false, &p);
    assert_true(r->echo && r->prompt_only); /* scoring: the prompt only */
    moe_ipc_parsed_free(&p);
    r = parse_ok("{\"prompt\": [[5, 6, 7]]}", false, &p); /* token arrays */
    assert_null(r->prompt);
    assert_int_equal(r->n_prompt_ids, 3);
    assert_int_equal(r->prompt_ids[2], 7);
    moe_ipc_parsed_free(&p);
    r = parse_ok("{\"prompt\": \"x\", \"logprobs\": 0}", false, &p);
    assert_true(r->logprobs);
    assert_int_equal(r->top_logprobs, 0);
    moe_ipc_parsed_free(&p);

    /* reasoning_content is kept for the templates that render it; empty tool
     * call lists are no tool calls */
    r = parse_ok("{\"messages\": [{\"role\": \"user\", \"content\": \"q\"},"
                 " {\"role\": \"assistant\", \"content\": \"a\", \"reasoning_content\": \"why\","
                 " \"tool_calls\": []}, {\"role\": \"assistant\", \"content\": \"b\","
                 " \"reasoning_content\": null, \"tool_calls\": null}]}",
                 true, &p);
    assert_null(r->messages[0].reasoning_content);
    assert_string_equal(r->messages[1].reasoning_content, "why");
    assert_null(r->messages[2].reasoning_content);
    moe_ipc_parsed_free(&p);

    /* max_completion_tokens wins over max_tokens */
    r = parse_ok("{\"messages\": [{\"role\": \"user\", \"content\": \"\"}], \"max_tokens\": 5,"
                 " \"max_completion_tokens\": 9}",
                 true, &p);
    assert_int_equal(r->max_tokens, 9);
    assert_string_equal(r->messages[0].content, "");
    moe_ipc_parsed_free(&p);

    /* "prompt" means nothing to chat, "messages" nothing to completions */
    r = parse_ok("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"prompt\": 5}", true,
                 &p);
    moe_ipc_parsed_free(&p);
}

/* ---- invalid requests ---------------------------------------------------- */

static void test_field_errors(void **state)
{
    static const struct {
        const char *body, *code, *param, *msg;
    } cases[] = {
        {"{}", "missing_required_parameter", "prompt", NULL},
        {"{\"prompt\": null}", "missing_required_parameter", "prompt", NULL},
        {"{\"prompt\": 1}", "invalid_type", "prompt", "got an integer"},
        {"{\"prompt\": {\"a\": 1}}", "invalid_type", "prompt", "got an object"},
        {"{\"prompt\": []}", "invalid_value", "prompt", "0 prompts"},
        {"{\"prompt\": [\"a\", \"b\"]}", "invalid_value", "prompt", "2 prompts"},
        {"{\"prompt\": [1, -2, 3]}", "invalid_value", "prompt[1]", "token id"},
        {"{\"prompt\": [1, \"a\"]}", "invalid_value", "prompt[1]", "token id"},
        {"{\"prompt\": [[1], [2]]}", "invalid_type", "prompt", "array of one"},
        {"{\"prompt\": [\"a\", 42]}", "invalid_type", "prompt", NULL},
        {"{\"prompt\": \"x\", \"model\": 3}", "invalid_type", "model", "a string"},
        {"{\"prompt\": \"x\", \"max_tokens\": 0}", "invalid_value", "max_tokens", NULL},
        {"{\"prompt\": \"x\", \"max_tokens\": -5}", "invalid_value", "max_tokens", NULL},
        {"{\"prompt\": \"x\", \"max_tokens\": 4097}", "invalid_value", "max_tokens",
         "at most 4096"},
        {"{\"prompt\": \"x\", \"max_tokens\": 99999999999}", "invalid_value", "max_tokens", NULL},
        {"{\"prompt\": \"x\", \"max_tokens\": \"10\"}", "invalid_type", "max_tokens", "a string"},
        {"{\"prompt\": \"x\", \"max_tokens\": true}", "invalid_type", "max_tokens", "a boolean"},
        {"{\"prompt\": \"x\", \"max_tokens\": 1.5}", "invalid_type", "max_tokens", "an integer"},
        {"{\"prompt\": \"x\", \"temperature\": \"hot\"}", "invalid_type", "temperature", "number"},
        {"{\"prompt\": \"x\", \"temperature\": 2.5}", "invalid_value", "temperature", "[0, 2]"},
        {"{\"prompt\": \"x\", \"temperature\": -0.1}", "invalid_value", "temperature", NULL},
        {"{\"prompt\": \"x\", \"temperature\": [1]}", "invalid_type", "temperature", "an array"},
        {"{\"prompt\": \"x\", \"top_p\": 0}", "invalid_value", "top_p", "(0, 1]"},
        {"{\"prompt\": \"x\", \"top_p\": 1.01}", "invalid_value", "top_p", NULL},
        {"{\"prompt\": \"x\", \"top_p\": false}", "invalid_type", "top_p", NULL},
        {"{\"prompt\": \"x\", \"top_k\": \"5\"}", "invalid_type", "top_k", NULL},
        {"{\"prompt\": \"x\", \"top_k\": 2.5}", "invalid_type", "top_k", NULL},
        {"{\"prompt\": \"x\", \"top_k\": -2}", "invalid_value", "top_k", NULL},
        {"{\"prompt\": \"x\", \"top_k\": 3000000000}", "invalid_value", "top_k", NULL},
        {"{\"prompt\": \"x\", \"min_p\": 1.5}", "invalid_value", "min_p", NULL},
        {"{\"prompt\": \"x\", \"min_p\": -1}", "invalid_value", "min_p", NULL},
        {"{\"prompt\": \"x\", \"seed\": \"7\"}", "invalid_type", "seed", NULL},
        {"{\"prompt\": \"x\", \"seed\": 0.5}", "invalid_type", "seed", NULL},
        {"{\"prompt\": \"x\", \"seed\": 1e300}", "invalid_type", "seed", NULL},
        {"{\"prompt\": \"x\", \"presence_penalty\": 2.5}", "invalid_value", "presence_penalty",
         NULL},
        {"{\"prompt\": \"x\", \"frequency_penalty\": -3}", "invalid_value", "frequency_penalty",
         NULL},
        {"{\"prompt\": \"x\", \"frequency_penalty\": \"1\"}", "invalid_type", "frequency_penalty",
         NULL},
        {"{\"prompt\": \"x\", \"repetition_penalty\": 0}", "invalid_value", "repetition_penalty",
         NULL},
        {"{\"prompt\": \"x\", \"repetition_penalty\": 11}", "invalid_value",
         "repetition_penalty", NULL},
        {"{\"prompt\": \"x\", \"n\": 17}", "invalid_value", "n", "[1, 16]"},
        {"{\"prompt\": \"x\", \"n\": 0}", "invalid_value", "n", NULL},
        {"{\"prompt\": \"x\", \"n\": \"1\"}", "invalid_type", "n", NULL},
        {"{\"prompt\": \"x\", \"stream\": \"yes\"}", "invalid_type", "stream", "a boolean"},
        {"{\"prompt\": \"x\", \"stream\": 1}", "invalid_type", "stream", NULL},
        {"{\"prompt\": \"x\", \"ignore_eos\": 1}", "invalid_type", "ignore_eos", NULL},
        {"{\"prompt\": \"x\", \"moe_prune\": 1.5}", "invalid_value", "moe_prune", "[0, 1]"},
        {"{\"prompt\": \"x\", \"moe_prune\": -0.1}", "invalid_value", "moe_prune", NULL},
        {"{\"prompt\": \"x\", \"moe_prune\": \"0.4\"}", "invalid_type", "moe_prune", NULL},
        {"{\"prompt\": \"x\", \"moe_top_k\": 0}", "invalid_value", "moe_top_k", "[1, 16]"},
        {"{\"prompt\": \"x\", \"moe_top_k\": 17}", "invalid_value", "moe_top_k", NULL},
        {"{\"prompt\": \"x\", \"moe_top_k\": 1.5}", "invalid_type", "moe_top_k", NULL},
        {"{\"prompt\": \"x\", \"stream_options\": true}", "invalid_type", "stream_options", NULL},
        {"{\"prompt\": \"x\", \"stream_options\": {\"include_usage\": 1}}", "invalid_type",
         "stream_options.include_usage", NULL},
        {"{\"prompt\": \"x\", \"stop\": 5}", "invalid_type", "stop", "a string or an array"},
        {"{\"prompt\": \"x\", \"stop\": \"\"}", "invalid_value", "stop", "empty"},
        {"{\"prompt\": \"x\", \"stop\": [\"a\", \"\"]}", "invalid_value", "stop[1]", "empty"},
        {"{\"prompt\": \"x\", \"stop\": [\"a\", 7]}", "invalid_type", "stop[1]", NULL},
        {"{\"prompt\": \"x\", \"stop\": [null]}", "invalid_type", "stop[0]", NULL},
        {"{\"prompt\": \"x\", \"logprobs\": true}", "invalid_type", "logprobs", "an integer"},
        {"{\"prompt\": \"x\", \"logprobs\": 21}", "invalid_value", "logprobs", "[0, 20]"},
        {"{\"prompt\": \"x\", \"logprobs\": -1}", "invalid_value", "logprobs", NULL},
        {"{\"prompt\": \"x\", \"echo\": 1}", "invalid_type", "echo", "a boolean"},
        {"{\"prompt\": \"x\", \"echo\": true, \"max_tokens\": -1}", "invalid_value",
         "max_tokens", "[0, "},
        {"{\"prompt\": \"x\", \"best_of\": 3, \"n\": 4}", "invalid_value", "best_of",
         "at least 'n'"},
        {"{\"prompt\": \"x\", \"best_of\": 2, \"stream\": true}", "invalid_value", "best_of",
         "streamed"},
        {"{\"prompt\": \"x\", \"best_of\": 17}", "invalid_value", "best_of", NULL},
        {"{\"prompt\": \"x\", \"suffix\": 3}", "invalid_type", "suffix", NULL},
        {"{\"prompt\": [1, 2], \"suffix\": \"end\"}", "invalid_value", "suffix", "as text"},
        {"{\"prompt\": \"x\", \"logit_bias\": {\"five\": 10}}", "invalid_value",
         "logit_bias.five", "token ids"},
        {"{\"prompt\": \"x\", \"logit_bias\": {\"5\": 101}}", "invalid_value", "logit_bias.5",
         "[-100, 100]"},
        {"{\"prompt\": \"x\", \"logit_bias\": [5]}", "invalid_type", "logit_bias", NULL},
        {"{\"prompt\": \"x\", \"response_format\": {\"type\": \"yaml\"}}",
         "invalid_value", "response_format.type", "json_schema"},
        {"{\"prompt\": \"x\", \"response_format\": {\"type\": \"json_schema\", \"json_schema\":"
         " {\"schema\": {\"type\": \"string\", \"format\": \"email\"}}}}",
         "invalid_value", "response_format.json_schema.schema", "format 'email'"},
        {"{\"prompt\": \"x\", \"grammar\": \"root ::= (\"}", "invalid_value", "grammar",
         "missing )"},
        {"{\"prompt\": \"x\", \"tools\": [{\"type\": \"function\", \"function\":"
         " {\"name\": \"f\"}}]}", "unsupported_parameter", "tools", "/v1/chat/completions"},
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(cases); i++)
        expect_err(false, cases[i].body, 400, cases[i].code, cases[i].param, cases[i].msg);
}

static void test_stop_limits(void **state)
{
    char body[8192], *w = body;
    /* one string too many */
    w += sprintf(w, "{\"prompt\": \"x\", \"stop\": [");
    for (int i = 0; i <= MOE_STOP_MAX; i++)
        w += sprintf(w, "%s\"s%d\"", i ? "," : "", i);
    sprintf(w, "]}");
    expect_err(false, body, 400, "invalid_value", "stop", "at most 16");
    /* one byte too long, alone and in an array */
    snprintf(body, sizeof(body), "{\"prompt\": \"x\", \"stop\": \"%0*d\"}", MOE_STOP_MAX_LEN + 1,
             0);
    expect_err(false, body, 400, "invalid_value", "stop", "257 bytes");
    snprintf(body, sizeof(body), "{\"prompt\": \"x\", \"stop\": [\"ok\", \"%0*d\"]}",
             MOE_STOP_MAX_LEN + 1, 0);
    expect_err(false, body, 400, "invalid_value", "stop[1]", NULL);
}

static void test_prompt_too_long(void **state)
{
    char body[2400];
    snprintf(body, sizeof(body), "{\"prompt\": \"%01001d\"}", 0);
    expect_err(false, body, 400, "prompt_too_long", "prompt", "1001 bytes");
    snprintf(body, sizeof(body), "{\"prompt\": [\"%01001d\"]}", 0);
    expect_err(false, body, 400, "prompt_too_long", "prompt", NULL);
    /* chat: the total over all messages counts */
    snprintf(body, sizeof(body),
             "{\"messages\": [{\"role\": \"user\", \"content\": \"%0600d\"},"
             " {\"role\": \"user\", \"content\": \"%0600d\"}]}",
             0, 0);
    expect_err(true, body, 400, "prompt_too_long", "messages", NULL);
}

static void test_chat_errors(void **state)
{
    static const struct {
        const char *body, *code, *param, *msg;
    } cases[] = {
        {"{}", "missing_required_parameter", "messages", NULL},
        {"{\"prompt\": \"x\"}", "missing_required_parameter", "messages", NULL},
        {"{\"messages\": \"hi\"}", "invalid_type", "messages", NULL},
        {"{\"messages\": []}", "invalid_value", "messages", "at least one"},
        {"{\"messages\": [1]}", "invalid_type", "messages[0]", NULL},
        {"{\"messages\": [{\"content\": \"x\"}]}", "missing_required_parameter",
         "messages[0].role", NULL},
        {"{\"messages\": [{\"role\": 5, \"content\": \"x\"}]}", "invalid_type",
         "messages[0].role", NULL},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"tool\","
         " \"content\": \"x\"}]}",
         "invalid_value", "messages[1].role", "\"tool\""},
        {"{\"messages\": [{\"role\": \"User\", \"content\": \"x\"}]}", "invalid_value",
         "messages[0].role", NULL},
        {"{\"messages\": [{\"role\": \"user\"}]}", "missing_required_parameter",
         "messages[0].content", NULL},
        {"{\"messages\": [{\"role\": \"user\", \"content\": null}]}",
         "missing_required_parameter", "messages[0].content", NULL},
        {"{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", "invalid_type",
         "messages[0].content", NULL},
        {"{\"messages\": [{\"role\": \"user\", \"content\": [5]}]}", "invalid_type",
         "messages[0].content[0]", NULL},
        {"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
         "unsupported_value", "messages[0].content[0]", NULL},
        {"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]}",
         "missing_required_parameter", "messages[0].content[0].text", NULL},
        {"{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": 1}]}]}",
         "invalid_type", "messages[0].content[0].text", NULL},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"n\": 30}",
         "invalid_value", "n", NULL},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logprobs\": 3}",
         "invalid_type", "logprobs", "a boolean"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_logprobs\": 2}",
         "invalid_value", "top_logprobs", "needs 'logprobs': true"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logprobs\": true,"
         " \"top_logprobs\": 21}", "invalid_value", "top_logprobs", NULL},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{}]}",
         "invalid_value", "tools[0]", "type\": \"function"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tool_choice\":"
         " \"required\"}", "invalid_value", "tool_choice", "needs 'tools'"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_completion_tokens\":"
         " 5000}",
         "invalid_value", "max_completion_tokens", "at most 4096"},
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temperature\": \"0\"}",
         "invalid_type", "temperature", NULL},
        /* tool calls in the history: the built-in formats do not render them (the
         * model's own template does: test_daemon_chat_template.py) */
        {"{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\","
         " \"content\": \"\", \"tool_calls\": [{\"type\": \"function\", \"function\": {\"name\":"
         " \"f\", \"arguments\": \"{}\"}}]}]}",
         "unsupported_parameter", "messages[1].tool_calls", "model's own chat template"},
        {"{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\", \"function_call\":"
         " {\"name\": \"f\"}}]}",
         "unsupported_parameter", "messages[0].function_call", NULL},
        {"{\"messages\": [{\"role\": \"assistant\", \"content\": \"x\", \"reasoning_content\":"
         " 5}]}",
         "invalid_type", "messages[0].reasoning_content", "a string"},
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(cases); i++)
        expect_err(true, cases[i].body, 400, cases[i].code, cases[i].param, cases[i].msg);
}

static void test_malformed_json(void **state)
{
    static const struct {
        const char *body, *msg;
    } cases[] = {
        {"{\"prompt\": }", "line 1, column 12"},
        {"{\"prompt\": \"x\",\n \"max_tokens\": 5,\n}", "line 3, column 1"},
        {"", "line 1"},
        {"{\"prompt\": \"x\"} trailing", "end of file expected"},
        {"{\"prompt\": \"x\", \"prompt\": \"y\"}", "duplicate"},
        {"{\"prompt\": \"\xff\xfe\"}", "malformed JSON"},
        {"{\"prompt\": \"a\\u0000b\"}", "malformed JSON"},
        {"{\"prompt\": \"x\"", "malformed JSON"},
        {"nul", "malformed JSON"},
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(cases); i++) {
        expect_err(false, cases[i].body, 400, "invalid_json", "", cases[i].msg);
        expect_err(true, cases[i].body, 400, "invalid_json", "", NULL);
    }
    expect_err(false, "[1, 2]", 400, "invalid_json", "", "must be a JSON object, got an array");
    expect_err(false, "\"prompt\"", 400, "invalid_json", "", "got a string");
    expect_err(true, "null", 400, "invalid_json", "", NULL);

    /* not NUL-terminated: only len bytes are read */
    struct moe_ipc_limits lim = test_limits();
    struct moe_ipc_parsed p;
    struct moe_ipc_error err;
    const char buf[] = "{\"prompt\": \"x\"}GARBAGE";
    assert_int_equal(moe_ipc_parse_completion(buf, 15, false, &lim, &p, &err), 0);
    assert_string_equal(p.req->prompt, "x");
    moe_ipc_parsed_free(&p);
    assert_int_equal(moe_ipc_parse_completion(NULL, 0, false, &lim, &p, &err), -EINVAL);
    assert_string_equal(err.code, "invalid_json");
}

static void test_no_limits(void **state)
{
    /* zero limits mean "none" */
    struct moe_ipc_limits lim = test_limits();
    struct moe_ipc_parsed p;
    struct moe_ipc_error err;
    lim.max_prompt_bytes = 0;
    lim.max_tokens_limit = 0;
    char *body = malloc(100100);
    assert_non_null(body);
    int n = snprintf(body, 100100, "{\"prompt\": \"%0100000d\", \"max_tokens\": 1000000}", 0);
    assert_int_equal(moe_ipc_parse_completion(body, (size_t)n, false, &lim, &p, &err), 0);
    assert_int_equal(p.req->max_tokens, 1000000);
    moe_ipc_parsed_free(&p);
    free(body);
}

/* ---- replies ------------------------------------------------------------- */

static json_t *load(const char *s, size_t n)
{
    json_error_t je;
    json_t *j = json_loadb(s, n, 0, &je);
    if (!j)
        fail_msg("not JSON (%s): %.*s", je.text, (int)n, s);
    return j;
}

static void test_error_json(void **state)
{
    struct moe_ipc_error e;
    size_t n;
    moe_ipc_error_set(&e, 400, "invalid_request_error", "invalid_type", "temperature",
                      "'temperature' must be a number, got %s", "a string");
    char *s = moe_ipc_error_json(&e, &n);
    assert_non_null(s);
    assert_int_equal(s[n - 1], '\n');
    json_t *j = load(s, n), *err = json_object_get(j, "error");
    assert_string_equal(json_string_value(json_object_get(err, "message")),
                        "'temperature' must be a number, got a string");
    assert_string_equal(json_string_value(json_object_get(err, "type")),
                        "invalid_request_error");
    assert_string_equal(json_string_value(json_object_get(err, "code")), "invalid_type");
    assert_string_equal(json_string_value(json_object_get(err, "param")), "temperature");
    json_decref(j);
    free(s);

    /* no field: param null; invalid UTF-8 in a message does not break JSON */
    moe_ipc_error_set(&e, 404, "invalid_request_error", "not_found", NULL, "no %s", "\xc3(");
    s = moe_ipc_error_json(&e, &n);
    j = load(s, n);
    err = json_object_get(j, "error");
    assert_true(json_is_null(json_object_get(err, "param")));
    assert_string_equal(json_string_value(json_object_get(err, "message")),
                        "no \xef\xbf\xbd(");
    json_decref(j);
    free(s);
}

static void test_json_text_sanitizes(void **state)
{
    static const struct {
        const char *in;
        size_t n;
        const char *out;
    } cases[] = {
        {"plain", 5, "plain"},
        {"\xe2\x82\xac", 3, "\xe2\x82\xac"},
        {"\xe2\x82", 2, "\xef\xbf\xbd\xef\xbf\xbd"},        /* truncated */
        {"\xc0\xaf", 2, "\xef\xbf\xbd\xef\xbf\xbd"},        /* overlong */
        {"\xed\xa0\x80", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* surrogate */
        {"a\xf4\x90\x80\x80z", 6, "a\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdz"},
        {"\xf0\x9f\x98\x80", 4, "\xf0\x9f\x98\x80"},
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(cases); i++) {
        json_t *j = moe_ipc_json_text(cases[i].in, cases[i].n);
        assert_non_null(j);
        assert_string_equal(json_string_value(j), cases[i].out);
        json_decref(j);
    }
}

static void test_completion_json(void **state)
{
    struct moe_ipc_gen g;
    size_t n;
    moe_ipc_gen_init(&g, false, false, "tiny");
    assert_memory_equal(g.id, "cmpl-", 5);
    char *s = one_choice(&g, "Hello", 5, NULL, 0, "length", 3, 5, &n);
    json_t *j = load(s, n);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "text_completion");
    assert_string_equal(json_string_value(json_object_get(j, "model")), "tiny");
    assert_string_equal(json_string_value(json_object_get(j, "id")), g.id);
    assert_true(json_is_integer(json_object_get(j, "created")));
    json_t *c = json_array_get(json_object_get(j, "choices"), 0);
    assert_int_equal(json_integer_value(json_object_get(c, "index")), 0);
    assert_string_equal(json_string_value(json_object_get(c, "text")), "Hello");
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "length");
    assert_true(json_is_null(json_object_get(c, "logprobs")));
    json_t *u = json_object_get(j, "usage");
    assert_int_equal(json_integer_value(json_object_get(u, "prompt_tokens")), 3);
    assert_int_equal(json_integer_value(json_object_get(u, "completion_tokens")), 5);
    assert_int_equal(json_integer_value(json_object_get(u, "total_tokens")), 8);
    json_decref(j);
    free(s);

    struct moe_ipc_gen g2;
    moe_ipc_gen_init(&g2, true, false, "tiny");
    assert_memory_equal(g2.id, "chatcmpl-", 9);
    assert_string_not_equal(g.id + 5, g2.id + 9);
    s = one_choice(&g2, "Hi \xf0\x9f\x98\x80", 7, NULL, 0, "stop", 1, 2, &n);
    j = load(s, n);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "chat.completion");
    c = json_array_get(json_object_get(j, "choices"), 0);
    json_t *m = json_object_get(c, "message");
    assert_string_equal(json_string_value(json_object_get(m, "role")), "assistant");
    assert_string_equal(json_string_value(json_object_get(m, "content")), "Hi \xf0\x9f\x98\x80");
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "stop");
    json_decref(j);
    free(s);
}

/* splits "data: X\n\n" events; returns how many, fills ev[] (pointers into a copy) */
static size_t sse_split(const char *text, char *copy, size_t cap, char **ev, size_t max)
{
    size_t n = 0;
    snprintf(copy, cap, "%s", text);
    char *p = copy;
    while (*p) {
        assert_memory_equal(p, "data: ", 6);
        char *end = strstr(p, "\n\n");
        assert_non_null(end);
        *end = '\0';
        assert_true(n < max);
        ev[n++] = p + 6;
        p = end + 2;
    }
    return n;
}

static void test_sse_chunks(void **state)
{
    struct moe_ipc_buf b = {0};
    struct moe_ipc_gen g;
    char copy[8192], *ev[16];
    json_t *j, *c;

    /* chat: role, content, finish, usage, [DONE] */
    moe_ipc_gen_init(&g, true, true, "tiny");
    assert_int_equal(moe_ipc_sse_role(&b, &g), 0);
    assert_int_equal(moe_ipc_sse_text(&b, &g, "Hel", 3, NULL, 0), 0);
    assert_int_equal(moe_ipc_sse_text(&b, &g, "lo", 2, NULL, 0), 0);
    assert_int_equal(moe_ipc_sse_finish(&b, &g, "stop", 4, 2), 0);
    size_t n = sse_split(b.data, copy, sizeof(copy), ev, 16);
    assert_int_equal(n, 6);
    assert_string_equal(ev[5], "[DONE]");
    j = load(ev[0], strlen(ev[0]));
    assert_string_equal(json_string_value(json_object_get(j, "object")),
                        "chat.completion.chunk");
    c = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(c, "delta"), "role")), "assistant");
    assert_true(json_is_null(json_object_get(c, "finish_reason")));
    assert_true(json_is_null(json_object_get(j, "usage")));
    json_decref(j);
    j = load(ev[1], strlen(ev[1]));
    c = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(c, "delta"), "content")), "Hel");
    json_decref(j);
    j = load(ev[3], strlen(ev[3]));
    c = json_array_get(json_object_get(j, "choices"), 0);
    assert_int_equal(json_object_size(json_object_get(c, "delta")), 0);
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "stop");
    json_decref(j);
    j = load(ev[4], strlen(ev[4]));
    assert_int_equal(json_array_size(json_object_get(j, "choices")), 0);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "usage"), "total_tokens")), 6);
    json_decref(j);

    /* completions without usage: text chunks, finish, [DONE] */
    moe_ipc_buf_reset(&b);
    moe_ipc_gen_init(&g, false, false, "tiny");
    assert_int_equal(moe_ipc_sse_text(&b, &g, "a\"\n", 3, NULL, 0), 0);
    assert_int_equal(moe_ipc_sse_finish(&b, &g, "length", 1, 1), 0);
    n = sse_split(b.data, copy, sizeof(copy), ev, 16);
    assert_int_equal(n, 3);
    j = load(ev[0], strlen(ev[0]));
    assert_string_equal(json_string_value(json_object_get(j, "object")), "text_completion");
    assert_null(json_object_get(j, "usage"));
    c = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(c, "text")), "a\"\n");
    json_decref(j);
    j = load(ev[1], strlen(ev[1]));
    c = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(c, "text")), "");
    assert_string_equal(json_string_value(json_object_get(c, "finish_reason")), "length");
    json_decref(j);
    assert_string_equal(ev[2], "[DONE]");

    /* an error mid-stream */
    struct moe_ipc_error e;
    moe_ipc_buf_reset(&b);
    moe_ipc_error_set(&e, 500, "server_error", "engine_error", NULL, "boom");
    assert_int_equal(moe_ipc_sse_error(&b, NULL, &e), 0);
    n = sse_split(b.data, copy, sizeof(copy), ev, 16);
    assert_int_equal(n, 2);
    j = load(ev[0], strlen(ev[0]));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(j, "error"), "message")), "boom");
    json_decref(j);
    moe_ipc_buf_free(&b);
}

/* logprobs in the two shapes: chat's content list with bytes and
 * alternatives, the completions API's parallel lists with character offsets
 * that run on from one reply (or chunk) to the next */
static void test_logprobs_json(void **state)
{
    (void)state;
    struct moe_token_logprob lp[2] = {0};
    lp[0].tok = (struct moe_token_text){-0.5f, 2, "Hi"};
    lp[0].n_top = 2;
    lp[0].top[0] = (struct moe_token_text){-0.5f, 2, "Hi"};
    lp[0].top[1] = (struct moe_token_text){-1.5f, 3, "Hey"};
    lp[1].tok = (struct moe_token_text){-0.25f, 3, " \xc3\xa9"}; /* " é": 3 bytes, 2 chars */
    struct moe_ipc_gen g;
    size_t n;
    moe_ipc_gen_init(&g, true, false, "tiny");
    g.logprobs = true;
    char *s = one_choice(&g, "Hi \xc3\xa9", 5, lp, 2, "length", 1, 2, &n);
    json_t *j = load(s, n);
    json_t *ch = json_array_get(json_object_get(j, "choices"), 0);
    json_t *c = json_object_get(json_object_get(ch, "logprobs"), "content");
    assert_int_equal(json_array_size(c), 2);
    json_t *t0 = json_array_get(c, 0), *t1 = json_array_get(c, 1);
    assert_string_equal(json_string_value(json_object_get(t0, "token")), "Hi");
    assert_true(json_real_value(json_object_get(t0, "logprob")) == -0.5);
    assert_int_equal(json_array_size(json_object_get(t0, "top_logprobs")), 2);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(t0, "top_logprobs"), 1), "token")),
                        "Hey");
    assert_int_equal(json_array_size(json_object_get(t1, "bytes")), 3);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(t1, "bytes"), 1)), 0xc3);
    assert_int_equal(json_array_size(json_object_get(t1, "top_logprobs")), 0);
    json_decref(j);
    free(s);

    moe_ipc_gen_init(&g, false, false, "tiny");
    g.logprobs = true;
    struct moe_ipc_buf b = {0};
    assert_int_equal(moe_ipc_sse_text(&b, &g, "Hi", 2, lp, 1), 0);
    assert_int_equal(g.text_offset, 2); /* the next chunk's offsets go on from here */
    assert_int_equal(moe_ipc_sse_text(&b, &g, " \xc3\xa9", 3, lp + 1, 1), 0);
    assert_int_equal(g.text_offset, 4); /* characters, not bytes */
    assert_non_null(strstr(b.data, "\"text_offset\":[2]"));
    s = one_choice(&g, "Hi \xc3\xa9", 5, lp, 2, "length", 1, 2, &n); /* a reply: from 0 */
    j = load(s, n);
    json_t *l = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs");
    assert_string_equal(json_string_value(json_array_get(json_object_get(l, "tokens"), 1)),
                        " \xc3\xa9");
    assert_int_equal(json_integer_value(json_array_get(json_object_get(l, "text_offset"), 1)), 2);
    assert_int_equal(json_object_size(json_array_get(json_object_get(l, "top_logprobs"), 1)), 0);
    json_decref(j);
    free(s);
    moe_ipc_buf_free(&b);

    /* n choices: one entry each, indexed, each with its own offsets */
    moe_ipc_gen_init(&g, false, false, "tiny");
    g.logprobs = true;
    struct moe_ipc_choice two[2] = {{"Hi", 2, lp, 1, "length"}, {"Hi", 2, lp, 1, "stop"}};
    s = moe_ipc_completion_json(&g, two, 2, 1, 2, &n);
    j = load(s, n);
    json_t *chs = json_object_get(j, "choices");
    assert_int_equal(json_array_size(chs), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(chs, 1), "index")), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(chs, 1),
                                                          "finish_reason")), "stop");
    l = json_object_get(json_array_get(chs, 1), "logprobs");
    assert_int_equal(json_integer_value(json_array_get(json_object_get(l, "text_offset"), 0)), 0);
    json_decref(j);
    free(s);

    moe_ipc_gen_init(&g, false, false, "tiny"); /* not asked: null */
    s = one_choice(&g, "x", 1, NULL, 0, "stop", 1, 1, &n);
    j = load(s, n);
    assert_true(json_is_null(
        json_object_get(json_array_get(json_object_get(j, "choices"), 0), "logprobs")));
    json_decref(j);
    free(s);
}

/* the Responses API as the chat request it amounts to */
static void test_responses_request(void **state)
{
    (void)state;
    struct moe_ipc_parsed p;
    struct moe_ipc_error err;
    struct moe_ipc_limits lim = test_limits();
    const char *ok = "{\"model\": \"m\", \"instructions\": \"be brief\", \"input\": ["
                     "{\"role\": \"user\", \"content\": [{\"type\": \"input_text\", "
                     "\"text\": \"a\"}, {\"type\": \"input_text\", \"text\": \"b\"}]},"
                     "{\"type\": \"message\", \"role\": \"assistant\", \"content\": \"c\"},"
                     "{\"role\": \"developer\", \"content\": \"d\"}],"
                     " \"max_output_tokens\": 9, \"temperature\": 0.5, \"store\": false,"
                     " \"tools\": [], \"text\": {\"format\": {\"type\": \"text\"}}}";
    assert_int_equal(moe_ipc_parse_response(ok, strlen(ok), &lim, &p, &err), 0);
    assert_true(p.responses);
    struct moe_request *r = p.req;
    assert_int_equal(r->kind, MOE_REQ_CHAT);
    assert_int_equal(r->n_messages, 4);
    assert_string_equal(r->messages[0].role, "system");
    assert_string_equal(r->messages[0].content, "be brief");
    assert_string_equal(r->messages[1].content, "a\nb");
    assert_string_equal(r->messages[2].role, "assistant");
    assert_string_equal(r->messages[3].role, "system"); /* developer */
    assert_int_equal(r->max_tokens, 9);
    assert_true(r->sampling.temperature == 0.5f);
    moe_ipc_parsed_free(&p);
    static const struct {
        const char *body, *code, *param;
    } bad[] = {
        {"{\"input\": \"x\", \"tools\": [{\"type\": \"function\"}]}", "invalid_value",
         "tools[0]"},
        {"{\"input\": \"x\", \"tools\": [{\"type\": \"web_search\"}]}", "unsupported_value",
         "tools[0]"},
        {"{\"input\": \"x\", \"text\": {\"format\": {\"type\": \"json_schema\"}}}",
         "invalid_value", "response_format.json_schema.schema"},
        {"{\"input\": \"x\", \"previous_response_id\": \"resp_1\"}", "unsupported_parameter",
         "previous_response_id"},
        {"{\"input\": [{\"type\": \"function_call_output\", \"output\": \"1\"}]}",
         "missing_required_parameter", "input[0]"}, /* no call_id */
        {"{\"input\": [{\"type\": \"reasoning\"}]}", "unsupported_value", "input[0]"},
        {"{\"input\": [{\"role\": \"user\", \"content\": [{\"type\": \"input_image\"}]}]}",
         "unsupported_value", "input[0].content[0]"},
        {"{\"input\": 5}", "invalid_type", "input"},
        {"{\"instructions\": \"x\"}", "missing_required_parameter", "input"},
        {"{\"input\": \"x\", \"max_output_tokens\": 0}", "invalid_value",
         "max_completion_tokens"},
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(bad); i++) {
        int rc = moe_ipc_parse_response(bad[i].body, strlen(bad[i].body), &lim, &p, &err);
        if (rc == 0 || strcmp(err.code, bad[i].code) || strcmp(err.param, bad[i].param))
            fail_msg("%s: got %d %s [%s], expected %s [%s]", bad[i].body, rc,
                     rc ? err.code : "", rc ? err.param : "", bad[i].code, bad[i].param);
        assert_null(p.req);
    }
}

/* tools: required and a named function constrain from the start; auto holds
 * the same grammar only from the call's opening tag on */
static void test_tool_grammars(void **state)
{
    (void)state;
    static const char *const modes[] = {"\"required\"", "\"auto\"",
                                        "{\"type\": \"function\", \"function\": {\"name\": \"f\"}}"};
    const char *call = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"n\": 3}}\n</tool_call>";
    for (size_t i = 0; i < MOE_ARRAY_SIZE(modes); i++) {
        char body[512];
        snprintf(body, sizeof(body),
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": "
                 "[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": "
                 "{\"type\": \"object\", \"properties\": {\"n\": {\"type\": \"integer\"}}, "
                 "\"required\": [\"n\"]}}}], \"tool_choice\": %s}", modes[i]);
        struct moe_ipc_parsed p;
        struct moe_request *r = parse_ok(body, true, &p);
        assert_non_null(r->grammar);
        if (i == 1)
            assert_string_equal(r->grammar_trigger, "<tool_call>");
        else
            assert_null(r->grammar_trigger);
        struct moe_grammar_state *st;
        assert_int_equal(moe_grammar_state_new(r->grammar, &st), 0);
        assert_int_equal(moe_grammar_advance(st, call, strlen(call)), 0);
        assert_true(moe_grammar_done(st));
        moe_grammar_state_free(st);
        assert_int_equal(moe_grammar_state_new(r->grammar, &st), 0);
        assert_false(moe_grammar_accepts(st, "<tool_call>\n{\"name\": \"g\"", 27));
        moe_grammar_state_free(st);
        moe_ipc_parsed_free(&p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logprobs_json),
        cmocka_unit_test(test_responses_request),
        cmocka_unit_test(test_tool_grammars),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_all_fields),
        cmocka_unit_test(test_nulls_are_defaults),
        cmocka_unit_test(test_numbers_lenient),
        cmocka_unit_test(test_prompt_array_and_unicode),
        cmocka_unit_test(test_stop_forms),
        cmocka_unit_test(test_chat_messages),
        cmocka_unit_test(test_field_errors),
        cmocka_unit_test(test_stop_limits),
        cmocka_unit_test(test_prompt_too_long),
        cmocka_unit_test(test_chat_errors),
        cmocka_unit_test(test_malformed_json),
        cmocka_unit_test(test_no_limits),
        cmocka_unit_test(test_error_json),
        cmocka_unit_test(test_json_text_sanitizes),
        cmocka_unit_test(test_completion_json),
        cmocka_unit_test(test_sse_chunks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
