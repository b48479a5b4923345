/* Chat formats against the real templates: each template text in
 * tests/data/chat/templates/ is recognised as its format (from the text, from
 * a tokenizer_config.json holding it, and from a chat_template.jinja beside
 * one), and every conversation that transformers' apply_chat_template
 * rendered over it (tests/data/chat/<format>.json, written by
 * tests/reference/make_chat_cases.py) renders to the same bytes; where the
 * template raised, moed refuses with -EINVAL. And the special tokens these
 * prompts hold become one token id each when tokenised: moed's tokenizer
 * gives the ids the Hugging Face tokenizers library gave (GPT-2 plus every
 * such token as an added token, tests/data/chat/special_tokens.json). */
#include "tests/unit/test.h"
#include "tests/unit/test_data.h"

#include "common/common.h"
#include "engine/engine.h"
#include "engine/engine_server.h"
#include "tokenizer/tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <time.h>

/* every format's vectors; chatml and mistral have theirs in test_engine_chat.c */
static const char *const families[] = {
    "deepseek-v2",         "deepseek-v3",          "deepseek-r1",
    "deepseek-r1-distill", "deepseek-r1-distill-qwen", "deepseek-r1-llamacpp",
    "deepseek-v3.1",       "kimi-k2",              "glm-4.5",
    "gpt-oss",             "minimax-m2",           "ernie-4.5",
    "qwen3",               "qwen3.5",
};

/* the first byte where a and b differ, for the failure message */
static size_t first_diff(const char *a, const char *b)
{
    size_t i = 0;
    while (a[i] && a[i] == b[i])
        i++;
    return i;
}

static void check_family(const char *family)
{
    char rel[256];
    snprintf(rel, sizeof(rel), "tests/data/chat/%s.json", family);
    json_t *root = moe_test_load_json(rel);
    const char *name = moe_test_str(root, "format"), *file = moe_test_str(root, "template");
    assert_non_null(name);
    assert_non_null(file);
    assert_string_equal(name, family);

    enum moe_chat_template t = MOE_CHAT_COUNT, by_name = MOE_CHAT_COUNT;
    assert_int_equal(moe_chat_template_from_name(name, &by_name), 0);
    assert_string_equal(moe_chat_template_name(by_name), name);

    /* recognised from the template's own text */
    snprintf(rel, sizeof(rel), "tests/data/chat/templates/%s", file);
    char *text = moe_test_load_text(rel);
    if (moe_chat_template_classify(text, &t))
        fail_msg("%s: not recognised: %s", file, moe_err_msg());
    if (t != by_name)
        fail_msg("%s: recognised as %s, not %s", file, moe_chat_template_name(t), name);

    /* and through a tokenizer_config.json that holds it, and a
     * chat_template.jinja beside one that does not */
    char dir[400], path[512];
    snprintf(dir, sizeof(dir), "%s/%s", moe_test_tmpdir(), family);
    assert_int_equal(mkdir(dir, 0700), 0);
    json_t *cfg = json_pack("{s:s, s:s}", "chat_template", text, "bos_token", "<s>");
    char *cfg_text = json_dumps(cfg, 0);
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    moe_test_write_file(path, cfg_text, strlen(cfg_text));
    t = MOE_CHAT_COUNT;
    assert_int_equal(moe_chat_template_detect(path, &t), 0);
    assert_int_equal(t, by_name);
    snprintf(path, sizeof(path), "%s/chat_template.jinja", dir);
    moe_test_write_file(path, text, strlen(text));
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    moe_test_write_file(path, "{\"bos_token\": \"<s>\"}", 20);
    t = MOE_CHAT_COUNT;
    assert_int_equal(moe_chat_template_detect(path, &t), 0);
    assert_int_equal(t, by_name);
    free(cfg_text);
    json_decref(cfg);

    struct moe_chat_opts opts = {moe_test_str(root, "bos"), moe_test_str(root, "date")};
    json_t *cases = json_object_get(root, "cases"), *c;
    size_t i;
    assert_true(json_array_size(cases) > 10);
    json_array_foreach(cases, i, c) {
        json_t *msgs = json_object_get(c, "messages"), *m;
        size_t n = json_array_size(msgs), k;
        struct moe_chat_message *cm = calloc(n ? n : 1, sizeof(*cm));
        assert_non_null(cm);
        json_array_foreach(msgs, k, m) {
            cm[k].role = (char *)moe_test_str(m, "role");
            cm[k].content = (char *)moe_test_str(m, "content");
            cm[k].reasoning_content = (char *)moe_test_str(m, "reasoning_content");
        }
        const char *want = moe_test_str(c, "expected"), *error = moe_test_str(c, "error");
        char *out = (char *)0x1;
        moe_err_clear();
        int rc = moe_chat_render(by_name, cm, n, &opts, &out);
        if (want) {
            if (rc)
                fail_msg("%s case %zu: %d %s", family, i, rc, moe_err_msg());
            if (strcmp(out, want)) {
                size_t d = first_diff(out, want);
                fail_msg("%s case %zu differs at byte %zu:\nmoed:         [%s]\ntransformers: "
                         "[%s]", family, i, d, out, want);
            }
            free(out);
        } else {
            assert_non_null(error);
            if (rc != -EINVAL)
                fail_msg("%s case %zu: rendered although the template raised (%s)", family, i,
                         error);
            assert_null(out);
            assert_true(strstr(moe_err_msg(), "messages[") != NULL);
        }
        free(cm);
    }
    free(text);
    json_decref(root);
}

static void test_real_templates(void **state)
{
    for (size_t k = 0; k < MOE_ARRAY_SIZE(families); k++)
        check_family(families[k]);
}

/* every format has a name that maps back to it, and vectors here unless it
 * is one of the two older ones */
static void test_names_cover_formats(void **state)
{
    for (int k = 0; k < MOE_CHAT_COUNT; k++) {
        enum moe_chat_template t = MOE_CHAT_COUNT;
        const char *name = moe_chat_template_name((enum moe_chat_template)k);
        assert_int_equal(moe_chat_template_from_name(name, &t), 0);
        assert_int_equal(t, k);
        bool found = k == MOE_CHAT_CHATML || k == MOE_CHAT_MISTRAL;
        for (size_t j = 0; j < MOE_ARRAY_SIZE(families); j++)
            found = found || !strcmp(families[j], name);
        if (!found)
            fail_msg("format %s has no test vectors", name);
    }
    assert_string_equal(moe_chat_template_name(MOE_CHAT_COUNT), "(unknown)");
    enum moe_chat_template t;
    assert_int_equal(moe_chat_template_from_name("dots1", &t), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "deepseek-v3.1"));
}

/* the date is an input of the renderer: given, checked, else today (UTC) */
static void test_gpt_oss_date(void **state)
{
    struct moe_chat_message one[] = {{(char *)"user", (char *)"Hi", NULL}};
    struct moe_chat_opts opts = {NULL, "2031-12-25"};
    char *out = NULL;
    assert_int_equal(moe_chat_render(MOE_CHAT_GPT_OSS, one, 1, &opts, &out), 0);
    assert_non_null(strstr(out, "\nCurrent date: 2031-12-25\n\n"));
    free(out);

    char today[16];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(today, sizeof(today), "%Y-%m-%d", &tm);
    assert_int_equal(moe_chat_render(MOE_CHAT_GPT_OSS, one, 1, NULL, &out), 0);
    char want[64];
    snprintf(want, sizeof(want), "Current date: %s\n", today);
    if (!strstr(out, want)) { /* midnight UTC may have passed between the two */
        now = time(NULL);
        gmtime_r(&now, &tm);
        strftime(today, sizeof(today), "%Y-%m-%d", &tm);
        snprintf(want, sizeof(want), "Current date: %s\n", today);
        assert_non_null(strstr(out, want));
    }
    free(out);

    static const char *const bad[] = {"2031-1-25", "20311225", "2031-12-25x", "", "yyyy-mm-dd"};
    for (size_t k = 0; k < MOE_ARRAY_SIZE(bad); k++) {
        opts.date = bad[k];
        out = (char *)0x1;
        assert_int_equal(moe_chat_render(MOE_CHAT_GPT_OSS, one, 1, &opts, &out), -EINVAL);
        assert_null(out);
        assert_non_null(strstr(moe_err_msg(), "YYYY-MM-DD"));
    }
}

/* Python's str.strip() (GLM strips answers) takes Unicode whitespace, and
 * only whole characters */
static void test_glm_strip(void **state)
{
    struct moe_chat_message m[] = {
        {(char *)"user", (char *)"q", NULL},
        {(char *)"assistant", (char *)"\xe3\x80\x80\xc2\xa0 answer \xe2\x80\xa9\t\x1f", NULL},
        {(char *)"user", (char *)"r", NULL},
        {(char *)"assistant", (char *)"\xe3\x80\x81tail\xe3\x80\x81", NULL},
        {(char *)"assistant", (char *)"\xe3\x80", NULL}, /* a cut character is no space */
    };
    char *out = NULL;
    assert_int_equal(moe_chat_render(MOE_CHAT_GLM45, m, 5, NULL, &out), 0);
    assert_string_equal(out, "[gMASK]<sop><|user|>\nq<|assistant|>\n<think></think>\nanswer"
                             "<|user|>\nr<|assistant|>\n<think></think>\n\xe3\x80\x81tail"
                             "\xe3\x80\x81<|assistant|>\n<think></think>\n\xe3\x80"
                             "<|assistant|>");
    free(out);
}

/* texts close to a known template but not it are not taken for it */
static void test_near_misses(void **state)
{
    char *v31 = moe_test_load_text("tests/data/chat/templates/deepseek-ai-DeepSeek-V3.1.jinja");
    enum moe_chat_template t;
    /* the thinking prompt spelled another way: not a template we reproduce */
    char *p = strstr(v31, "{%- if not thinking -%}{{'<think></think>'}}");
    assert_non_null(p);
    memcpy(p, "{%- if not thinking -%}{{'</think>'       }}", 44);
    assert_int_equal(moe_chat_template_classify(v31, &t), -ENOENT);
    free(v31);

    char *kimi = moe_test_load_text("tests/data/chat/templates/moonshotai-Kimi-K2.jinja");
    p = strstr(kimi, "You are a helpful assistant<|im_end|>");
    assert_non_null(p);
    p[0] = 'Y', p[8] = 'A'; /* another default system text */
    assert_int_equal(moe_chat_template_classify(kimi, &t), -ENOENT);
    free(kimi);
    assert_int_equal(moe_chat_template_classify(NULL, &t), -ENOENT);
    assert_int_equal(moe_chat_template_classify("", &t), -ENOENT);
}

/* the GPT-2 tokenizer.json with the templates' special tokens added */
static struct moe_tokenizer *special_tokenizer(json_t **added)
{
    json_t *spec = moe_test_load_json("tests/data/chat/special_tokens.json");
    json_t *base = moe_test_load_json(moe_test_str(spec, "base"));
    json_t *list = json_object_get(base, "added_tokens"), *a;
    size_t i;
    *added = json_incref(json_object_get(spec, "added"));
    assert_true(json_array_size(*added) > 20);
    json_array_foreach(*added, i, a)
        json_array_append_new(list, json_pack("{s:O, s:O, s:b, s:b, s:b, s:b, s:b}", "id",
                                              json_object_get(a, "id"), "content",
                                              json_object_get(a, "content"), "single_word", 0,
                                              "lstrip", 0, "rstrip", 0, "normalized", 0,
                                              "special", 1));
    char path[512];
    snprintf(path, sizeof(path), "%s/special", moe_test_tmpdir());
    assert_int_equal(mkdir(path, 0700), 0);
    snprintf(path, sizeof(path), "%s/special/tokenizer.json", moe_test_tmpdir());
    assert_int_equal(json_dump_file(base, path, 0), 0);
    struct moe_tokenizer *tok = NULL;
    if (moe_tokenizer_from_hf(path, NULL, &tok))
        fail_msg("%s", moe_err_msg());
    json_decref(base);
    json_decref(spec);
    return tok;
}

/* occurrences of s in text, left to right, not overlapping */
static size_t count(const char *text, const char *s)
{
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, s)); p += strlen(s))
        n++;
    return n;
}

static void test_special_tokens(void **state)
{
    json_t *added, *a;
    struct moe_tokenizer *tok = special_tokenizer(&added);
    size_t i, checked = 0;
    for (size_t k = 0; k < MOE_ARRAY_SIZE(families); k++) {
        char rel[256];
        snprintf(rel, sizeof(rel), "tests/data/chat/%s.json", families[k]);
        json_t *root = moe_test_load_json(rel), *cases = json_object_get(root, "cases"), *c;
        json_array_foreach(cases, i, c) {
            const char *text = moe_test_str(c, "expected"), *want = moe_test_str(c, "ids");
            if (!text)
                continue;
            assert_non_null(want);
            int32_t *ids = NULL;
            size_t n = 0;
            assert_int_equal(moe_tokenizer_encode(tok, text, strlen(text), false, &ids, &n), 0);
            char got[8192] = "";
            for (size_t j = 0; j < n; j++)
                snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%d", j ? " " : "",
                         (int)ids[j]);
            if (strcmp(got, want))
                fail_msg("%s case %zu: ids\nmoed:       %s\ntokenizers: %s", families[k], i, got,
                         want);
            /* and each special token written is its one id, no more, no less */
            size_t j;
            json_array_foreach(added, j, a) {
                const char *s = moe_test_str(a, "content");
                int32_t id = (int32_t)json_integer_value(json_object_get(a, "id"));
                size_t seen = 0;
                for (size_t t = 0; t < n; t++)
                    seen += ids[t] == id;
                if (seen != count(text, s))
                    fail_msg("%s case %zu: %s %zu times in the text, id %d %zu times",
                             families[k], i, s, count(text, s), (int)id, seen);
                checked += seen;
            }
            free(ids);
        }
        json_decref(root);
    }
    assert_true(checked > 1000);
    json_decref(added);
    moe_tokenizer_free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_templates),
        cmocka_unit_test(test_names_cover_formats),
        cmocka_unit_test(test_gpt_oss_date),
        cmocka_unit_test(test_glm_strip),
        cmocka_unit_test(test_near_misses),
        cmocka_unit_test(test_special_tokens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
