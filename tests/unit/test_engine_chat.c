/* Chat templates: ChatML and Mistral/Mixtral [INST] rendered to exact
 * strings (with and without BOS text, with and without a system message,
 * multi-turn), errors naming the message at fault, names, and detection
 * from tokenizer_config.json (string, list of named templates,
 * chat_template.jinja beside it, templates that are neither). */
#include "tests/unit/test.h"

#include "common/common.h"
#include "engine/engine.h"
#include "engine/engine_server.h"

#include <errno.h>
#include <sys/stat.h>

#define MSG(r, c) {(char *)(r), (char *)(c)}

static void expect(enum moe_chat_template t, const struct moe_chat_message *m, size_t n,
                   const char *bos, const char *want)
{
    char *out = (char *)0x1;
    struct moe_chat_opts o = {bos, NULL};
    int rc = moe_chat_render(t, m, n, &o, &out);
    if (rc)
        fail_msg("moe_chat_render: %d %s", rc, moe_err_msg());
    assert_non_null(out);
    if (strcmp(out, want))
        fail_msg("rendered:\n[%s]\nexpected:\n[%s]", out, want);
    free(out);
}

/* fails with -EINVAL, *out left NULL, and a message holding `needle` */
static void expect_einval(enum moe_chat_template t, const struct moe_chat_message *m, size_t n,
                          const char *needle)
{
    char *out = (char *)0x1;
    moe_err_clear();
    struct moe_chat_opts o = {"<s>", NULL};
    assert_int_equal(moe_chat_render(t, m, n, &o, &out), -EINVAL);
    assert_null(out);
    if (!strstr(moe_err_msg(), needle))
        fail_msg("message '%s' lacks '%s'", moe_err_msg(), needle);
}

/* ---- ChatML ----------------------------------------------------------------------- */

static void test_chatml(void **state)
{
    const struct moe_chat_message one[] = {MSG("user", "Hello")};
    expect(MOE_CHAT_CHATML, one, 1, NULL,
           "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n");

    const struct moe_chat_message conv[] = {
        MSG("system", "You are helpful."),
        MSG("user", "Hi"),
        MSG("assistant", "Hello! How can I help?"),
        MSG("user", "Two\nlines"),
    };
    expect(MOE_CHAT_CHATML, conv, 4, NULL,
           "<|im_start|>system\nYou are helpful.<|im_end|>\n"
           "<|im_start|>user\nHi<|im_end|>\n"
           "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
           "<|im_start|>user\nTwo\nlines<|im_end|>\n"
           "<|im_start|>assistant\n");
    /* BOS text first when given; ChatML does not care about role order */
    const struct moe_chat_message odd[] = {MSG("assistant", "a"), MSG("assistant", ""),
                                           MSG("user", NULL)};
    expect(MOE_CHAT_CHATML, odd, 3, "<s>",
           "<s><|im_start|>assistant\na<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n"
           "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n");
}

/* ---- Mistral / Mixtral ----------------------------------------------------------- */

static void test_mistral(void **state)
{
    const struct moe_chat_message one[] = {MSG("user", "What is your favourite condiment?")};
    expect(MOE_CHAT_MISTRAL, one, 1, "<s>", "<s> [INST] What is your favourite condiment? [/INST]");
    expect(MOE_CHAT_MISTRAL, one, 1, NULL, " [INST] What is your favourite condiment? [/INST]");

    const struct moe_chat_message conv[] = {
        MSG("user", "Hello"),
        MSG("assistant", "Hi there"),
        MSG("user", "Who are you"),
        MSG("assistant", "   I am an assistant   "),
        MSG("user", "Another question"),
    };
    expect(MOE_CHAT_MISTRAL, conv, 5, "<s>",
           "<s> [INST] Hello [/INST] Hi there</s> [INST] Who are you [/INST]    I am an "
           "assistant   </s> [INST] Another question [/INST]");
}

static void test_mistral_system(void **state)
{
    /* the system text goes before the first user message, a blank line between */
    const struct moe_chat_message conv[] = {
        MSG("system", "You are a helpful assistant"),
        MSG("user", "Hello"),
        MSG("assistant", "Hi there"),
        MSG("user", "Who are you"),
    };
    expect(MOE_CHAT_MISTRAL, conv, 4, "<s>",
           "<s> [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s>"
           " [INST] Who are you [/INST]");
    expect(MOE_CHAT_MISTRAL, conv, 2, NULL,
           " [INST] You are a helpful assistant\n\nHello [/INST]");
    /* the template does not stop at a final assistant message */
    expect(MOE_CHAT_MISTRAL, conv, 3, NULL,
           " [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s>");
}

static void test_mistral_errors(void **state)
{
    const struct moe_chat_message two_users[] = {MSG("user", "a"), MSG("user", "b")};
    expect_einval(MOE_CHAT_MISTRAL, two_users, 2, "messages[1]");
    expect_einval(MOE_CHAT_MISTRAL, two_users, 2, "alternate");

    const struct moe_chat_message starts_assistant[] = {MSG("assistant", "a"), MSG("user", "b")};
    expect_einval(MOE_CHAT_MISTRAL, starts_assistant, 2, "messages[0]");

    const struct moe_chat_message sys_then_assistant[] = {MSG("system", "s"),
                                                          MSG("assistant", "a")};
    expect_einval(MOE_CHAT_MISTRAL, sys_then_assistant, 2, "messages[1]: role 'assistant' where "
                  "'user' was expected");

    const struct moe_chat_message late_system[] = {MSG("user", "a"), MSG("assistant", "b"),
                                                   MSG("system", "c"), MSG("user", "d")};
    expect_einval(MOE_CHAT_MISTRAL, late_system, 4, "messages[2]");

    const struct moe_chat_message only_system[] = {MSG("system", "s")};
    expect_einval(MOE_CHAT_MISTRAL, only_system, 1, "messages[0]");

    const struct moe_chat_message two_systems[] = {MSG("system", "s"), MSG("system", "t"),
                                                   MSG("user", "u")};
    expect_einval(MOE_CHAT_MISTRAL, two_systems, 3, "messages[1]");
}

static void test_common_errors(void **state)
{
    const enum moe_chat_template all[] = {MOE_CHAT_CHATML, MOE_CHAT_MISTRAL};
    for (size_t k = 0; k < MOE_ARRAY_SIZE(all); k++) {
        const struct moe_chat_message unknown[] = {MSG("user", "a"), MSG("assistant", "b"),
                                                   MSG("tool", "c")};
        expect_einval(all[k], unknown, 3, "messages[2]: unknown role 'tool'");
        const struct moe_chat_message norole[] = {MSG(NULL, "a")};
        expect_einval(all[k], norole, 1, "messages[0]: no role");
        const struct moe_chat_message one[] = {MSG("user", "a")};
        expect_einval(all[k], one, 0, "empty");
        expect_einval(all[k], NULL, 0, "empty");
    }
    const struct moe_chat_message one[] = {MSG("user", "a")};
    char *out = NULL;
    assert_int_equal(moe_chat_render((enum moe_chat_template)42, one, 1, NULL, &out), -EINVAL);
    assert_null(out);
}

static void test_names(void **state)
{
    enum moe_chat_template t = (enum moe_chat_template)-1;
    assert_int_equal(moe_chat_template_from_name("chatml", &t), 0);
    assert_int_equal(t, MOE_CHAT_CHATML);
    assert_int_equal(moe_chat_template_from_name("mistral", &t), 0);
    assert_int_equal(t, MOE_CHAT_MISTRAL);
    assert_int_equal(moe_chat_template_from_name("mixtral", &t), 0);
    assert_int_equal(t, MOE_CHAT_MISTRAL);
    assert_int_equal(moe_chat_template_from_name("llama2", &t), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "llama2"));
    assert_int_equal(moe_chat_template_from_name("", &t), -EINVAL);
    assert_int_equal(moe_chat_template_from_name(NULL, &t), -EINVAL);
}

/* ---- detection -------------------------------------------------------------------- */

/* writes DIR/tokenizer_config.json (and chat_template.jinja when jinja) in
 * a fresh subdirectory; returns the config's path */
static const char *write_cfg(const char *json, const char *jinja)
{
    static int n;
    static char path[512];
    char dir[400];
    snprintf(dir, sizeof(dir), "%s/cfg%d", moe_test_tmpdir(), n++);
    assert_int_equal(mkdir(dir, 0700), 0);
    if (jinja) {
        snprintf(path, sizeof(path), "%s/chat_template.jinja", dir);
        moe_test_write_file(path, jinja, strlen(jinja));
    }
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    moe_test_write_file(path, json, strlen(json));
    return path;
}

static int detect(const char *json, const char *jinja, enum moe_chat_template *t)
{
    *t = (enum moe_chat_template)-1;
    return moe_chat_template_detect(write_cfg(json, jinja), t);
}

/* the templates as shipped (JSON-escaped as in the files) */
#define QWEN_CHATML                                                                       \
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}" \
    "{{ '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' }}{% endif %}"      \
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "    \
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"    \
    "{% endif %}"
#define MIXTRAL_2023                                                                       \
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "    \
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "      \
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"  \
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "         \
    "'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only " \
    "user and assistant roles are supported!') }}{% endif %}{% endfor %}"
#define MISTRAL_V1                                                                          \
    "{%- if messages[0]['role'] == 'system' %}\\n    {%- set system_message = "            \
    "messages[0]['content'] %}\\n    {%- set loop_messages = messages[1:] %}\\n{%- else "   \
    "%}\\n    {%- set loop_messages = messages %}\\n{%- endif %}\\n\\n{{- bos_token }}\\n"  \
    "{%- for message in loop_messages %}\\n    {%- if message['role'] == 'user' %}\\n"      \
    "        {%- if loop.first and system_message is defined %}\\n            {{- ' [INST] " \
    "' + system_message + '\\\\n\\\\n' + message['content'] + ' [/INST]' }}\\n        "     \
    "{%- else %}\\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\\n"      \
    "        {%- endif %}\\n    {%- elif message['role'] == 'assistant' %}\\n        "      \
    "{{- ' ' + message['content'] + eos_token}}\\n    {%- endif %}\\n{%- endfor %}\\n"
#define LLAMA2                                                                              \
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"        \
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = "    \
    "messages %}{% endif %}{% for message in loop_messages %}{% if loop.index0 == 0 and "   \
    "system_message != false %}{% set content = '<<SYS>>\\\\n' + system_message + "         \
    "'\\\\n<</SYS>>\\\\n\\\\n' + message['content'] %}{% else %}{% set content = "          \
    "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + "     \
    "'[INST] ' + content.strip() + ' [/INST]' }}{% endif %}{% endfor %}"
#define MISTRAL_V3                                                                          \
    "{{- bos_token }}{%- for message in loop_messages %}{%- if message[\\\"role\\\"] == "   \
    "\\\"user\\\" %}{{- \\\"[INST] \\\" + message[\\\"content\\\"] + \\\"[/INST]\\\" }}"    \
    "{%- endif %}{%- endfor %}"

static void test_detect(void **state)
{
    enum moe_chat_template t;
    assert_int_equal(detect("{\"chat_template\": \"" QWEN_CHATML "\"}", NULL, &t), 0);
    assert_int_equal(t, MOE_CHAT_CHATML);
    assert_int_equal(detect("{\"bos_token\": \"<s>\", \"chat_template\": \"" MIXTRAL_2023 "\"}",
                            NULL, &t), 0);
    assert_int_equal(t, MOE_CHAT_MISTRAL);
    assert_int_equal(detect("{\"chat_template\": \"" MISTRAL_V1 "\"}", NULL, &t), 0);
    assert_int_equal(t, MOE_CHAT_MISTRAL);
    /* a list of named templates: "default" wins, else the first */
    assert_int_equal(detect("{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"x\"},"
                            " {\"name\": \"default\", \"template\": \"" MIXTRAL_2023 "\"}]}",
                            NULL, &t), 0);
    assert_int_equal(t, MOE_CHAT_MISTRAL);
    assert_int_equal(detect("{\"chat_template\": [{\"name\": \"a\", \"template\": \""
                            QWEN_CHATML "\"}, {\"name\": \"b\", \"template\": \"x\"}]}",
                            NULL, &t), 0);
    assert_int_equal(t, MOE_CHAT_CHATML);
    /* the template in chat_template.jinja (newer transformers) */
    assert_int_equal(detect("{\"bos_token\": \"<s>\"}", "{{ '<|im_start|>' }}", &t), 0);
    assert_int_equal(t, MOE_CHAT_CHATML);
}

static void test_detect_none(void **state)
{
    enum moe_chat_template t;
    /* no template at all */
    assert_int_equal(detect("{\"bos_token\": \"<s>\"}", NULL, &t), -ENOENT);
    assert_int_equal(detect("{\"chat_template\": 42}", NULL, &t), -ENOENT);
    assert_int_equal(detect("{\"chat_template\": []}", NULL, &t), -ENOENT);
    /* a template, but not one of ours: Llama 2 and Mistral v3 also say [INST] */
    assert_int_equal(detect("{\"chat_template\": \"" LLAMA2 "\"}", NULL, &t), -ENOENT);
    assert_non_null(strstr(moe_err_msg(), "neither"));
    assert_int_equal(detect("{\"chat_template\": \"" MISTRAL_V3 "\"}", NULL, &t), -ENOENT);
    assert_int_equal(detect("{\"chat_template\": \"{{ messages }}\"}", NULL, &t), -ENOENT);
    /* no file */
    char path[512];
    snprintf(path, sizeof(path), "%s/nowhere/tokenizer_config.json", moe_test_tmpdir());
    assert_int_equal(moe_chat_template_detect(path, &t), -ENOENT);
    /* a file that is not JSON is an error of its own, naming the file */
    const char *bad = write_cfg("{\"chat_template\": ", NULL);
    assert_int_equal(moe_chat_template_detect(bad, &t), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "tokenizer_config.json"));
}

/* the bundled model has no template: the INI decides */
static void test_detect_tiny(void **state)
{
    enum moe_chat_template t;
    assert_int_equal(
        moe_chat_template_detect(moe_test_path("models/tiny-moe/tokenizer_config.json"), &t),
        -ENOENT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chatml),
        cmocka_unit_test(test_mistral),
        cmocka_unit_test(test_mistral_system),
        cmocka_unit_test(test_mistral_errors),
        cmocka_unit_test(test_common_errors),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_detect),
        cmocka_unit_test(test_detect_none),
        cmocka_unit_test(test_detect_tiny),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
