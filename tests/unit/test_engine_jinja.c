/* The Jinja interpreter (engine/engine_jinja_*.c): language pieces, error
 * messages, whitespace control, limits on hostile templates, concurrent
 * renders of one compiled template; and byte equality with transformers'
 * apply_chat_template over every real template in tests/data/chat/templates/
 * (tests/data/chat/jinja/<template>.json) and with transformers' jinja2
 * environment over one small template per feature
 * (tests/data/chat/jinja/features.json), both written by
 * tests/reference/make_jinja_cases.py. MOE_JINJA_VERBOSE=1 lists every
 * mismatch instead of stopping at the first. */
#define _GNU_SOURCE /* strptime, timegm */
#include "tests/unit/test.h"
#include "tests/unit/test_data.h"

#include "common/common.h"
#include "engine/engine_jinja.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <time.h>

/* "2026-03-14T12:00:00" as a struct tm, weekday included */
static struct tm parse_date(const char *iso)
{
    struct tm tm = {0};
    assert_non_null(iso);
    assert_non_null(strptime(iso, "%Y-%m-%dT%H:%M:%S", &tm));
    time_t t = timegm(&tm);
    gmtime_r(&t, &tm);
    return tm;
}

static struct tm fixed_now;

/* renders tmpl with ctx (JSON text); returns the rc, the text in *out */
static int render(const char *tmpl, const char *ctx_json, char **out, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *ctx = json_loads(ctx_json ? ctx_json : "{}", 0, &jerr);
    if (!ctx)
        fail_msg("bad test JSON: %s", jerr.text);
    struct moe_jinja *t;
    int rc = moe_jinja_compile(tmpl, &t, err, errlen);
    if (!rc) {
        struct moe_jinja_opts o = {.now = &fixed_now};
        rc = moe_jinja_render_compiled(t, ctx, &o, out, err, errlen);
        moe_jinja_free(t);
    }
    json_decref(ctx);
    return rc;
}

static void expect(const char *tmpl, const char *ctx, const char *want)
{
    char err[512], *out = NULL;
    int rc = render(tmpl, ctx, &out, err, sizeof(err));
    if (rc)
        fail_msg("%s: failed: %s", tmpl, err);
    if (strcmp(out, want))
        fail_msg("%s:\n got [%s]\nwant [%s]", tmpl, out, want);
    free(out);
}

/* fails, with want inside the message */
static void expect_error(const char *tmpl, const char *ctx, const char *want)
{
    char err[512], *out = NULL;
    int rc = render(tmpl, ctx, &out, err, sizeof(err));
    if (!rc)
        fail_msg("%s: rendered [%s], expected an error", tmpl, out);
    assert_null(out);
    if (!strstr(err, want))
        fail_msg("%s: error [%s] lacks [%s]", tmpl, err, want);
}

/* ---- language pieces ---------------------------------------------------------------- */

static void test_expressions(void **state)
{
    (void)state;
    expect("{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 3 ** 2 }} {{ 7 % 3 }}", NULL,
           "7 9 64 1");
    expect("{{ 'a' ~ 1 ~ none ~ true }}", NULL, "a1NoneTrue");
    expect("{{ [1, 2] + [3] }} {{ {'a': 1}['a'] }} {{ ('x', 'y')[1] }}", NULL, "[1, 2, 3] 1 y");
    expect("{{ x.y.z }}", "{\"x\": {\"y\": {\"z\": \"deep\"}}}", "deep");
    expect("{{ 'yes' if a and not b else 'no' }}", "{\"a\": 1, \"b\": 0}", "yes");
    expect("{{ -x|abs }} {{ not x is defined }}", "{\"x\": 3}", "3 False");
    expect("{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }}", NULL, "True False");
    expect("{{ 'é' * 2 }}{{ 'ab'[::-1] }}{{ 'héllo'[1:3] }}", NULL, "éébaél");
}

static void test_statements(void **state)
{
    (void)state;
    expect("{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %}", NULL, "37");
    expect("{% if x %}a{% elif y %}b{% else %}c{% endif %}", "{\"y\": true}", "b");
    expect("{% set ns = namespace(v=[]) %}{% for i in range(3) %}{% set ns.v = ns.v + [i] %}"
           "{% endfor %}{{ ns.v }}",
           NULL, "[0, 1, 2]");
    expect("{% macro m(x, y=x * 2) %}{{ x }},{{ y }}{% endmacro %}{{ m(2) }} {{ m(y=1, x=5) }}",
           NULL, "2,4 5,1");
    expect("{% for i in [3, 1, 2] | sort %}{{ i }}{% if not loop.last %},{% endif %}"
           "{% endfor %}",
           NULL, "1,2,3");
    expect("{% for x in t recursive %}{{ x.n }}{% if x.c %}({{ loop(x.c) }}){% endif %}"
           "{% endfor %}",
           "{\"t\": [{\"n\": 1, \"c\": [{\"n\": 2}, {\"n\": 3}]}, {\"n\": 4}]}", "1(23)4");
}

static void test_whitespace(void **state)
{
    (void)state;
    /* trim_blocks and lstrip_blocks, as transformers sets them */
    expect("<{% if true %}\n  x\n{% endif %}\n>", NULL, "<  x\n>");
    expect("a\n  {% if true %}b{% endif %}", NULL, "a\nb");
    expect("a\n  {{ 'b' }}", NULL, "a\n  b");
    expect("a \n {{- 'b' -}} \n c", NULL, "abc");
    expect("a\n  {%+ if true %}b{% endif %}", NULL, "a\n  b");
    expect("{# c #}\nx{#- c -#}  y", NULL, "xy");
    expect("keep\n\n", NULL, "keep\n");
    expect("a\r\nb\rc", NULL, "a\nb\nc");
    expect("{% raw %}{{ not }}{% endraw %}", NULL, "{{ not }}");
}

/* ---- errors ------------------------------------------------------------------------- */

static void test_errors(void **state)
{
    (void)state;
    expect_error("line one\n{% if x %}", NULL, "line 2");
    expect_error("{{ 1 + }}", NULL, "line 1, column");
    expect_error("{% for x in y %}{% endif %}", NULL, "endif");
    expect_error("{% frobnicate %}", NULL, "unknown tag 'frobnicate'");
    expect_error("{{ x|nosuchfilter }}", NULL, "No filter named 'nosuchfilter'");
    expect_error("{{ 'a' }}\n{{ raise_exception('The template says no.') }}", NULL,
                 "The template says no.");
    expect_error("{{ x.y }}", NULL, "'x' is undefined");
    expect_error("{{ d.a.b }}", "{\"d\": {}}", "has no attribute 'a'");
    expect_error("{{ 'a' + 1 }}", NULL, "can only concatenate str");
    expect_error("{{ 1 / 0 }}", NULL, "division by zero");
    expect_error("{% set l = [1] %}{{ l.append(2) }}", NULL, "unsafe");
    expect_error("{{ 'unterminated }}", NULL, "line 1");
    expect_error("{# never closed", NULL, "Missing end of comment tag");
    expect_error("{{ (((1 }}", NULL, "line 1");
    /* found by tests/fuzz/fuzz_jinja.c: a tuple subscript holding a slice */
    expect_error("{% set h = s[_, :] %}", NULL, "slice inside a tuple subscript");
    char err[64], *out = NULL;
    assert_int_equal(moe_jinja_render("{{", NULL, &out, err, sizeof(err)), -EINVAL);
    assert_null(out);
}

/* ---- limits ------------------------------------------------------------------------- */

static void test_limits(void **state)
{
    (void)state;
    char err[256], *out = NULL;
    struct moe_jinja *t;
    /* output past the limit */
    assert_int_equal(moe_jinja_compile("{% for i in range(100000) %}xxxxxxxxxx{% endfor %}", &t,
                                       err, sizeof(err)),
                     0);
    struct moe_jinja_opts o = {.max_output = 1000};
    assert_int_equal(moe_jinja_render_compiled(t, NULL, &o, &out, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "output limit"));
    moe_jinja_free(t);
    /* endless recursion */
    expect_error("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", NULL, "nested");
    /* too much work: nested loops building strings */
    assert_int_equal(moe_jinja_compile("{% set ns = namespace(s='x') %}{% for i in range(60) %}"
                                       "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                                       &t, err, sizeof(err)),
                     0);
    assert_int_equal(moe_jinja_render_compiled(t, NULL, NULL, &out, err, sizeof(err)), -EINVAL);
    moe_jinja_free(t);
    expect_error("{% for i in range(1000000) %}{% endfor %}", NULL, "Range too big");
    /* deep nesting in the template text itself */
    char deep[4000] = "{{ ";
    size_t n = 3;
    for (int i = 0; i < 1000; i++)
        deep[n++] = '(';
    memcpy(deep + n, " }}", 4);
    expect_error(deep, NULL, "line 1");
    memset(deep, 0, sizeof(deep));
    n = 0;
    for (int i = 0; i < 300 && n + 20 < sizeof(deep); i++)
        n += (size_t)snprintf(deep + n, sizeof(deep) - n, "{%% if 1 %%}");
    expect_error(deep, NULL, "nested");
    /* a value that holds itself */
    expect("{% set ns = namespace() %}{% set ns.me = ns %}{% set ns.l = [ns, ns] %}ok", NULL,
           "ok");
}

MOE_TEST_XORSHIFT(0x6a696e6a61ull)

/* garbage and mutations of a real template: an error or output, never a crash */
static void test_robust(void **state)
{
    (void)state;
    char *base = moe_test_load_text("tests/data/chat/templates/openai-gpt-oss-120b.jinja");
    json_t *ctx = json_loads("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], "
                             "\"tools\": null, \"add_generation_prompt\": true}",
                             0, NULL);
    size_t len = strlen(base);
    char *m = malloc(len + 1);
    assert_non_null(m);
    static const char pieces[] = "{}%#-+()[]|.,'\"~ \n=!<>*";
    for (int round = 0; round < 300; round++) {
        memcpy(m, base, len + 1);
        int edits = 1 + (int)(rnd32() % 6);
        for (int e = 0; e < edits; e++)
            m[rnd32() % len] = pieces[rnd32() % (sizeof(pieces) - 1)];
        struct moe_jinja *t;
        char err[256], *out = NULL;
        if (moe_jinja_compile(m, &t, err, sizeof(err)))
            continue;
        struct moe_jinja_opts o = {.now = &fixed_now, .max_work = 1u << 24};
        if (!moe_jinja_render_compiled(t, ctx, &o, &out, err, sizeof(err)))
            free(out);
        moe_jinja_free(t);
    }
    free(m);
    free(base);
    json_decref(ctx);
}

/* ---- threads ------------------------------------------------------------------------ */

struct thread_arg {
    const struct moe_jinja *t;
    json_t *ctx;
    const char *want;
    int bad;
};

static void *render_thread(void *p)
{
    struct thread_arg *a = p;
    for (int i = 0; i < 50; i++) {
        char err[256], *out = NULL;
        struct moe_jinja_opts o = {.now = &fixed_now};
        if (moe_jinja_render_compiled(a->t, a->ctx, &o, &out, err, sizeof(err)) ||
            strcmp(out, a->want))
            a->bad++;
        free(out);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    char *text = moe_test_load_text("tests/data/chat/templates/Qwen-Qwen3.5.jinja");
    struct moe_jinja *t;
    char err[256], *want = NULL;
    assert_int_equal(moe_jinja_compile(text, &t, err, sizeof(err)), 0);
    json_t *ctx = json_loads("{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief\"},"
                             "{\"role\": \"user\", \"content\": \"héllo\"}],"
                             "\"tools\": null, \"add_generation_prompt\": true}",
                             0, NULL);
    assert_int_equal(moe_jinja_render_compiled(t, ctx, NULL, &want, err, sizeof(err)), 0);
    pthread_t th[4];
    struct thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (struct thread_arg){t, ctx, want, 0};
        assert_int_equal(pthread_create(&th[i], NULL, render_thread, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].bad, 0);
    }
    free(want);
    json_decref(ctx);
    moe_jinja_free(t);
    free(text);
}

/* ---- transformers' renderings ------------------------------------------------------- */

static bool verbose(void)
{
    const char *v = getenv("MOE_JINJA_VERBOSE");
    return v && *v && strcmp(v, "0");
}

static size_t first_diff(const char *a, const char *b)
{
    size_t i = 0;
    while (a[i] && a[i] == b[i])
        i++;
    return i;
}

/* one case: 0 when moed agrees with transformers */
static size_t n_equal, n_refused; /* cases that render the same bytes / refuse alike */

static int check_case(const char *label, const struct moe_jinja *t, json_t *ctx, json_t *c)
{
    char err[1024], *out = NULL;
    struct moe_jinja_opts o = {.now = &fixed_now};
    int rc = moe_jinja_render_compiled(t, ctx, &o, &out, err, sizeof(err));
    const char *want = moe_test_str(c, "expected"), *werr = moe_test_str(c, "error"), *wtype = moe_test_str(c, "error_type");
    int bad = 0;
    if (want) {
        if (rc) {
            fprintf(stderr, "%s: moed failed: %s\n", label, err);
            bad = 1;
        } else if (strcmp(out, want)) {
            size_t d = first_diff(out, want);
            fprintf(stderr, "%s: differs at byte %zu\n  moed: [%.80s]\n  want: [%.80s]\n",
                    label, d, out + (d > 20 ? d - 20 : 0), want + (d > 20 ? d - 20 : 0));
            bad = 1;
        }
    } else {
        assert_non_null(werr);
        if (!rc) {
            fprintf(stderr, "%s: rendered, transformers raised %s: %s\n", label, wtype, werr);
            bad = 1;
        } else if (wtype && !strcmp(wtype, "TemplateError") && !strstr(err, werr)) {
            /* the template's raise_exception(): the same words */
            fprintf(stderr, "%s: error [%s], transformers [%s]\n", label, err, werr);
            bad = 1;
        }
    }
    free(out);
    if (!bad)
        *(want ? &n_equal : &n_refused) += 1;
    return bad;
}

static void test_features(void **state)
{
    (void)state;
    json_t *root = moe_test_load_json("tests/data/chat/jinja/features.json");
    fixed_now = parse_date(moe_test_str(root, "date"));
    json_t *cases = json_object_get(root, "cases"), *c;
    size_t i, bad = 0;
    assert_true(json_array_size(cases) > 50);
    json_array_foreach(cases, i, c) {
        char label[128], err[512];
        snprintf(label, sizeof(label), "features/%s", moe_test_str(c, "name"));
        struct moe_jinja *t;
        int rc = moe_jinja_compile(moe_test_str(c, "template"), &t, err, sizeof(err));
        if (rc) {
            if (!moe_test_str(c, "error")) {
                fprintf(stderr, "%s: compile failed: %s\n", label, err);
                bad++;
            }
        } else {
            bad += (size_t)check_case(label, t, json_object_get(c, "context"), c);
            moe_jinja_free(t);
        }
        if (bad && !verbose())
            break;
    }
    printf("jinja features: %zu of %zu agree with jinja2\n", json_array_size(cases) - bad,
           json_array_size(cases));
    json_decref(root);
    assert_int_equal(bad, 0);
}

static int check_template(const char *file, size_t *ncases)
{
    char rel[512];
    snprintf(rel, sizeof(rel), "tests/data/chat/jinja/%s", file);
    json_t *root = moe_test_load_json(rel);
    snprintf(rel, sizeof(rel), "tests/data/chat/templates/%s", moe_test_str(root, "template"));
    char *text = moe_test_load_text(rel), err[512];
    fixed_now = parse_date(moe_test_str(root, "date"));
    struct moe_jinja *t;
    if (moe_jinja_compile(text, &t, err, sizeof(err)))
        fail_msg("%s: %s", rel, err);
    json_t *cases = json_object_get(root, "cases"), *c;
    json_t *special = json_object_get(root, "special_tokens");
    json_t *tools = json_object_get(root, "tools");
    size_t i;
    int bad = 0;
    assert_true(json_array_size(cases) >= 10);
    json_array_foreach(cases, i, c) {
        json_t *extra = json_deep_copy(special);
        json_object_update(extra, json_object_get(c, "kwargs"));
        json_t *ctx = moe_jinja_chat_context(
            json_object_get(c, "messages"),
            json_is_true(json_object_get(c, "tools")) ? tools : NULL,
            json_is_true(json_object_get(c, "add_generation_prompt")), extra);
        assert_non_null(ctx);
        char label[256];
        snprintf(label, sizeof(label), "%s/%s", file, moe_test_str(c, "name"));
        bad += check_case(label, t, ctx, c);
        json_decref(ctx);
        json_decref(extra);
        if (bad && !verbose())
            break;
    }
    *ncases = json_array_size(cases);
    moe_jinja_free(t);
    free(text);
    json_decref(root);
    return bad;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_templates(void **state)
{
    (void)state;
    DIR *d = opendir(moe_test_path("tests/data/chat/jinja"));
    assert_non_null(d);
    char *names[256];
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d)) && n < 256;) {
        size_t len = strlen(e->d_name);
        if (len > 5 && !strcmp(e->d_name + len - 5, ".json") && strcmp(e->d_name, "features.json"))
            names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof(names[0]), by_name);
    assert_true(n >= 20);
    size_t cases = 0, bad_templates = 0;
    int bad = 0;
    n_equal = n_refused = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = 0;
        int b = check_template(names[i], &k);
        cases += k;
        bad += b;
        bad_templates += b != 0;
        free(names[i]);
        if (bad && !verbose()) {
            for (size_t j = i + 1; j < n; j++)
                free(names[j]);
            break;
        }
    }
    printf("jinja templates: %zu of %zu templates, %zu of %zu cases agree with transformers "
           "(%zu byte-equal renders, %zu refusals where the template raised)\n",
           n - bad_templates, n, cases - (size_t)bad, cases, n_equal, n_refused);
    assert_int_equal(bad, 0);
}

/* the variables apply_chat_template builds */
static void test_chat_context(void **state)
{
    (void)state;
    json_t *msgs = json_loads("[{\"role\": \"assistant\", \"content\": null, \"reasoning\": \"r\","
                              " \"tool_calls\": null}]",
                              0, NULL);
    json_t *extra = json_loads("{\"bos_token\": \"<s>\", \"enable_thinking\": false}", 0, NULL);
    json_t *ctx = moe_jinja_chat_context(msgs, NULL, true, extra);
    assert_non_null(ctx);
    char *s = json_dumps(ctx, JSON_SORT_KEYS);
    assert_string_equal(s, "{\"add_generation_prompt\": true, \"bos_token\": \"<s>\", "
                           "\"documents\": null, \"enable_thinking\": false, \"messages\": "
                           "[{\"reasoning\": \"r\", \"reasoning_content\": \"r\", \"role\": "
                           "\"assistant\", \"thinking\": \"r\"}], \"tools\": null}");
    free(s);
    json_decref(ctx);
    assert_null(moe_jinja_chat_context(extra, NULL, true, NULL));
    json_decref(msgs);
    json_decref(extra);
}

int main(void)
{
    fixed_now = parse_date("2026-03-14T12:00:00");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_expressions), cmocka_unit_test(test_statements),
        cmocka_unit_test(test_whitespace),  cmocka_unit_test(test_errors),
        cmocka_unit_test(test_limits),      cmocka_unit_test(test_robust),
        cmocka_unit_test(test_threads),     cmocka_unit_test(test_chat_context),
        cmocka_unit_test(test_features),    cmocka_unit_test(test_templates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
