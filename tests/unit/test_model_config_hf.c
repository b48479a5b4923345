/* The Hugging Face config.json reader (moe_config_from_hf) on every
 * architecture fixture of tests/data/arch, both config flavours, against the
 * GGUF reader (moe_config_from_gguf) of the same model; and broken configs,
 * each failing with a message naming the file, nothing leaked or freed twice
 * (run under ASan: make SANITIZE=address,undefined check-unit). */
#include "tests/unit/test.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>

#include "common/common.h"
#include "model/model_int.h"

static const char *tpath(const char *name)
{
    static char buf[2][512];
    static int i;
    i = (i + 1) % 2;
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", moe_test_tmpdir(), name);
    return buf[i];
}

/* HF v5/ and v4/ and the GGUF of each fixture agree on what the model is */
static void test_config_fixtures(void **state)
{
    (void)state;
    DIR *d = opendir(moe_test_path("tests/data/arch"));
    assert_non_null(d);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char rel[600];
        snprintf(rel, sizeof(rel), "tests/data/arch/%s/model.gguf", e->d_name);
        if (access(moe_test_path(rel), R_OK) != 0)
            continue;
        struct moe_gguf *g;
        int rc = moe_gguf_open(moe_test_path(rel), &g);
        assert_int_equal(rc, 0);
        struct moe_config gc;
        rc = moe_config_from_gguf(g, &gc);
        if (rc < 0)
            print_error("%s\n", moe_err_msg());
        assert_int_equal(rc, 0);
        moe_gguf_close(g);
        static const char *const flavours[] = {"v5", "v4"};
        for (int f = 0; f < 2; f++) {
            snprintf(rel, sizeof(rel), "tests/data/arch/%s/%s/config.json", e->d_name,
                     flavours[f]);
            struct moe_config hc;
            rc = moe_config_from_hf(moe_test_path(rel), &hc);
            if (rc < 0)
                print_error("%s\n", moe_err_msg());
            assert_int_equal(rc, 0);
            if (hc.arch != gc.arch || hc.hidden != gc.hidden || hc.n_layers != gc.n_layers ||
                hc.n_experts != gc.n_experts || hc.top_k != gc.top_k || hc.vocab != gc.vocab ||
                hc.expert_ffn != gc.expert_ffn || hc.attn != gc.attn)
                print_error("%s: HF and GGUF configs differ\n", rel);
            assert_int_equal(hc.arch, gc.arch);
            assert_int_equal(hc.hidden, gc.hidden);
            assert_int_equal(hc.n_layers, gc.n_layers);
            assert_int_equal(hc.n_experts, gc.n_experts);
            assert_int_equal(hc.top_k, gc.top_k);
            assert_int_equal(hc.vocab, gc.vocab);
            assert_int_equal(hc.expert_ffn, gc.expert_ffn);
            assert_int_equal(hc.attn, gc.attn);
            n++;
        }
    }
    closedir(d);
    assert_true(n >= 20); /* 12 fixtures, two flavours each, when this was written */
}

static void expect_fail(const char *text, const char *want)
{
    const char *p = tpath("config.json");
    if (text)
        moe_test_write_file(p, text, strlen(text));
    else
        unlink(p);
    struct moe_config c;
    moe_err_clear();
    int rc = moe_config_from_hf(p, &c);
    if (rc >= 0 || !strstr(moe_err_msg(), want) || !strstr(moe_err_msg(), p))
        print_error("rc %d, message '%s', wanted '%s'\n", rc, moe_err_msg(), want);
    assert_true(rc < 0);
    assert_non_null(strstr(moe_err_msg(), want));
    assert_non_null(strstr(moe_err_msg(), p));
}

/* every early failure leaves the reader's key table in a state it can free */
static void test_config_broken(void **state)
{
    (void)state;
    expect_fail(NULL, "cannot open");
    expect_fail("", "invalid JSON");
    expect_fail("{ not json", "invalid JSON");
    expect_fail("[1, 2]", "not a JSON object");
    expect_fail("{}", "unsupported architecture");
    expect_fail("{\"architectures\": [\"MixtralForCausalLM\"], \"model_type\": \"mixtral\"}",
                "missing required field 'vocab_size'");
    expect_fail("{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": "
                "\"deepseek_v3\", \"vocab_size\": \"64\"}",
                "'vocab_size' must be an integer");
}

/* the fixture's config.json with extra keys appended (a repeated key: the
 * last one counts) must fail with want */
static void fixture_with_fails(const char *fixture, const char *extra, const char *want)
{
    char rel[256], *text;
    size_t len;
    snprintf(rel, sizeof(rel), "tests/data/arch/%s/config.json", fixture);
    assert_int_equal(moe_read_text_file(moe_test_path(rel), &text, &len), 0);
    char *brace = strrchr(text, '}');
    assert_non_null(brace);
    *brace = '\0';
    size_t cap = len + strlen(extra) + 8;
    char *with = malloc(cap);
    assert_non_null(with);
    snprintf(with, cap, "%s, %s}", text, extra);
    expect_fail(with, want);
    free(with);
    free(text);
}

/* a key moed does not know may change the math: refused, named */
static void test_config_unknown_key(void **state)
{
    (void)state;
    fixture_with_fails("glm4_moe/v5", "\"attn_logit_softcapping\": 50.0",
                       "config key 'attn_logit_softcapping' is not known to moed");
}

/* sizes that multiply or add past int32 are refused before the arithmetic
 * (UBSan: signed overflow) */
static void test_config_overflow(void **state)
{
    (void)state;
    fixture_with_fails("deepseek_v3/v5", "\"n_shared_experts\": 1000000000",
                       "'n_shared_experts' = 1000000000 shared experts of 32 is too large");
    fixture_with_fails("deepseek_v3/v5", "\"qk_nope_head_dim\": 2147483647",
                       "qk_nope_head_dim 2147483647 and qk_rope_head_dim 8: not a head size");
    fixture_with_fails("minimax_m2/v4", "\"rotary_dim\": 2147483647",
                       "partial rotary factor");
    fixture_with_fails("glm4_moe/v4", "\"partial_rotary_factor\": 1e30",
                       "is outside (0, 1]");
}

/* fixture's config.json with key removed, read back into c */
static int fixture_without(const char *fixture, const char *key, struct moe_config *c)
{
    char rel[256];
    snprintf(rel, sizeof(rel), "tests/data/arch/%s/config.json", fixture);
    json_t *root = json_load_file(moe_test_path(rel), 0, NULL);
    assert_non_null(root);
    assert_int_equal(json_object_del(root, key), 0);
    const char *p = tpath("config.json");
    assert_int_equal(json_dump_file(root, p, 0), 0);
    json_decref(root);
    return moe_config_from_hf(p, c);
}

/* a config without rope_scaling gets transformers' default rope for its
 * class: YaRN x32 (untruncated, from 4096) for gpt-oss, attention factor
 * mscale(32) included */
static void test_config_rope_default(void **state)
{
    (void)state;
    struct moe_config with, without;
    assert_int_equal(moe_config_from_hf(moe_test_path("tests/data/arch/gpt_oss/v4/config.json"),
                                        &with), 0);
    assert_int_equal(fixture_without("gpt_oss/v4", "rope_scaling", &without), 0);
    assert_int_equal(without.rope_scaling, MOE_ROPE_YARN);
    assert_true(without.rope_factor == 32.0f);
    assert_int_equal(without.rope_orig_ctx, 4096);
    assert_false(without.yarn_truncate);
    assert_true(without.yarn_beta_fast == 32.0f && without.yarn_beta_slow == 1.0f);
    assert_true(fabsf(without.rope_attn_factor - (float)(0.1 * log(32.0) + 1.0)) < 1e-6f);
    assert_true(without.rope_attn_factor == with.rope_attn_factor); /* the same factor 32 */
    assert_true(without.rope_theta == with.rope_theta);
    /* a class without a YaRN default: plain rope */
    assert_int_equal(fixture_without("mixtral_swa/v4", "rope_theta", &without), 0);
    assert_int_equal(without.rope_scaling, MOE_ROPE_NONE);
    assert_true(without.rope_attn_factor == 1.0f);
}

/* Mixtral has no layer_types: one that says what sliding_window says is
 * harmless, one that says otherwise is refused, naming it */
static void test_config_mixtral_layer_types(void **state)
{
    (void)state;
    const char *slide = "\"layer_types\": [\"sliding_attention\", \"sliding_attention\"]";
    char rel[256], *text;
    size_t len;
    snprintf(rel, sizeof(rel), "tests/data/arch/mixtral_swa/v5/config.json");
    assert_int_equal(moe_read_text_file(moe_test_path(rel), &text, &len), 0);
    char *brace = strrchr(text, '}');
    assert_non_null(brace);
    *brace = '\0';
    char with[8192];
    snprintf(with, sizeof(with), "%s, %s}", text, slide);
    free(text);
    moe_test_write_file(tpath("config.json"), with, strlen(with));
    struct moe_config c;
    assert_int_equal(moe_config_from_hf(tpath("config.json"), &c), 0);
    assert_true(c.sliding_window > 0 && c.layer_swa[0] && c.layer_swa[1]);
    fixture_with_fails("mixtral_swa/v5",
                       "\"layer_types\": [\"sliding_attention\", \"full_attention\"]",
                       "config key 'layer_types'[1] is full_attention");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_fixtures),
        cmocka_unit_test(test_config_broken),
        cmocka_unit_test(test_config_unknown_key),
        cmocka_unit_test(test_config_overflow),
        cmocka_unit_test(test_config_rope_default),
        cmocka_unit_test(test_config_mixtral_layer_types),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
