/* Metrics registry: exact totals under concurrent updates, histogram
 * buckets/sum/count, the rendered text against golden output, label sets
 * merged into one family, idempotent registration, type conflicts, label
 * and help escaping, bad names and buckets, vLLM's namespace:name names. Every test starts from an empty
 * registry (moe_metrics_reset). */
#include "tests/unit/test.h"

#include "common/common.h"
#include "common/common_metrics.h"

#include <math.h>
#include <pthread.h>

static int reset(void **state)
{
    moe_metrics_reset();
    return 0;
}

static void expect_render(const char *want)
{
    char *got = moe_metrics_render();
    assert_non_null(got);
    if (strcmp(got, want))
        fail_msg("rendered:\n%s\nexpected:\n%s", got, want);
    free(got);
}

/* ---- concurrency ---------------------------------------------------------------- */

#define N_THREADS 4
#define N_ITERS 100000

struct worker {
    struct moe_metric *counter, *gauge, *hist, *fcounter;
    int id;
};

static void *work(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < N_ITERS; i++) {
        moe_metric_inc(w->counter);
        moe_metric_add(w->gauge, (i & 1) ? 2.0 : -1.0); /* net +0.5 per step */
        moe_metric_observe(w->hist, (double)(i % 4));   /* 0 1 2 3 */
        moe_metric_add(w->fcounter, 0.5);               /* fractional: the CAS path */
    }
    return NULL;
}

static void test_concurrent_exact(void **state)
{
    static const double b[] = {0.5, 1.5, 2.5};
    struct worker w = {
        .counter = moe_metric_counter("t_inc_total", "increments", NULL),
        .gauge = moe_metric_gauge("t_gauge", "up and down", NULL),
        .hist = moe_metric_histogram("t_hist", "values", NULL, b, 3),
        .fcounter = moe_metric_counter("t_half_total", "halves", NULL),
    };
    assert_non_null(w.counter);
    assert_non_null(w.gauge);
    assert_non_null(w.hist);
    assert_non_null(w.fcounter);
    pthread_t th[N_THREADS];
    struct worker ws[N_THREADS];
    for (int t = 0; t < N_THREADS; t++) {
        ws[t] = w;
        ws[t].id = t;
        assert_int_equal(pthread_create(&th[t], NULL, work, &ws[t]), 0);
    }
    /* scrapes while the workers count must not disturb anything */
    for (int i = 0; i < 20; i++) {
        char *s = moe_metrics_render();
        assert_non_null(s);
        free(s);
    }
    for (int t = 0; t < N_THREADS; t++)
        pthread_join(th[t], NULL);

    const double total = (double)N_THREADS * N_ITERS;
    assert_true(moe_metric_value(w.counter) == total);
    assert_true(moe_metric_value(w.gauge) == total * 0.5);
    assert_true(moe_metric_value(w.hist) == total);
    assert_true(moe_metric_value(w.fcounter) == total * 0.5);

    char *s = moe_metrics_render();
    assert_non_null(s);
    assert_non_null(strstr(s, "\nt_inc_total 400000\n"));
    assert_non_null(strstr(s, "\nt_gauge 200000\n"));
    assert_non_null(strstr(s, "\nt_hist_bucket{le=\"0.5\"} 100000\n"));
    assert_non_null(strstr(s, "\nt_hist_bucket{le=\"1.5\"} 200000\n"));
    assert_non_null(strstr(s, "\nt_hist_bucket{le=\"2.5\"} 300000\n"));
    assert_non_null(strstr(s, "\nt_hist_bucket{le=\"+Inf\"} 400000\n"));
    assert_non_null(strstr(s, "\nt_hist_sum 600000\n")); /* (0+1+2+3) * 100000 */
    assert_non_null(strstr(s, "\nt_hist_count 400000\n"));
    assert_non_null(strstr(s, "\nt_half_total 200000\n"));
    free(s);
}

/* ---- histograms ------------------------------------------------------------------------ */

static void test_histogram_exact(void **state)
{
    static const double b[] = {0.005, 0.01, 0.1, 1, 10};
    struct moe_metric *h = moe_metric_histogram("lat_seconds", "latency", NULL, b, 5);
    assert_non_null(h);
    /* on a bound counts in that bucket (le = less or equal) */
    const double v[] = {0.001, 0.005, 0.0075, 0.01, 0.5, 1, 1, 9.5, 10, 11, 1e9};
    double sum = 0;
    for (size_t i = 0; i < MOE_ARRAY_SIZE(v); i++) {
        moe_metric_observe(h, v[i]);
        sum += v[i];
    }
    assert_true(moe_metric_value(h) == 11);
    char want[2048];
    char sumtxt[64];
    snprintf(sumtxt, sizeof(sumtxt), "%.17g", sum);
    assert_true(strtod(sumtxt, NULL) == sum);
    char *got = moe_metrics_render();
    assert_non_null(got);
    snprintf(want, sizeof(want),
             "# HELP lat_seconds latency\n"
             "# TYPE lat_seconds histogram\n"
             "lat_seconds_bucket{le=\"0.005\"} 2\n"
             "lat_seconds_bucket{le=\"0.01\"} 4\n"
             "lat_seconds_bucket{le=\"0.1\"} 4\n"
             "lat_seconds_bucket{le=\"1\"} 7\n"
             "lat_seconds_bucket{le=\"10\"} 9\n"
             "lat_seconds_bucket{le=\"+Inf\"} 11\n"
             "lat_seconds_sum ");
    assert_memory_equal(got, want, strlen(want));
    /* the sum reads back exactly */
    char *p = got + strlen(want);
    char *end;
    assert_true(strtod(p, &end) == sum);
    assert_string_equal(end, "\nlat_seconds_count 11\n");
    free(got);

    /* no buckets at all: only +Inf */
    moe_metrics_reset();
    h = moe_metric_histogram("only_inf", "h", "a=\"1\"", NULL, 0);
    assert_non_null(h);
    moe_metric_observe(h, 3);
    moe_metric_observe(h, -2);
    expect_render("# HELP only_inf h\n"
                  "# TYPE only_inf histogram\n"
                  "only_inf_bucket{a=\"1\",le=\"+Inf\"} 2\n"
                  "only_inf_sum{a=\"1\"} 1\n"
                  "only_inf_count{a=\"1\"} 2\n");

    /* an explicit trailing +Inf is the implicit one */
    moe_metrics_reset();
    const double b2[] = {1, INFINITY};
    h = moe_metric_histogram("x", "h", NULL, b2, 2);
    assert_non_null(h);
    moe_metric_observe(h, 2);
    expect_render("# HELP x h\n# TYPE x histogram\n"
                  "x_bucket{le=\"1\"} 0\nx_bucket{le=\"+Inf\"} 1\nx_sum 2\nx_count 1\n");
}

static void test_histogram_bad_buckets(void **state)
{
    const double dec[] = {1, 0.5};
    const double dup[] = {1, 1};
    const double nan_[] = {NAN};
    assert_null(moe_metric_histogram("h1", "", NULL, dec, 2));
    assert_null(moe_metric_histogram("h2", "", NULL, dup, 2));
    assert_null(moe_metric_histogram("h3", "", NULL, nan_, 1));
    assert_null(moe_metric_histogram("h4", "", "le=\"1\"", NULL, 0)); /* reserved */
    const double ok[] = {1, 2};
    const double other[] = {1, 3};
    struct moe_metric *h = moe_metric_histogram("h5", "", NULL, ok, 2);
    assert_non_null(h);
    assert_ptr_equal(moe_metric_histogram("h5", "", NULL, ok, 2), h);
    assert_null(moe_metric_histogram("h5", "", NULL, other, 2)); /* same series, other buckets */
    /* nothing half-registered was left behind */
    expect_render("# TYPE h5 histogram\n"
                  "h5_bucket{le=\"1\"} 0\nh5_bucket{le=\"2\"} 0\nh5_bucket{le=\"+Inf\"} 0\n"
                  "h5_sum 0\nh5_count 0\n");
}

/* ---- rendering ------------------------------------------------------------------------ */

static void test_render_golden(void **state)
{
    static const double b[] = {0.1, 0.25};
    struct moe_metric *r200 = moe_metric_counter("moed_requests_total", "Requests by status.",
                                                 "status=\"200\"");
    struct moe_metric *depth = moe_metric_gauge("moed_queue_depth", "Waiting requests.", NULL);
    struct moe_metric *r400 = moe_metric_counter("moed_requests_total", "Requests by status.",
                                                 "status=\"400\"");
    struct moe_metric *ttft =
        moe_metric_histogram("moed_ttft_seconds", "Time to first token.", "kind=\"chat\"", b, 2);
    struct moe_metric *tok = moe_metric_counter("moed_tokens_total", "Tokens.",
                                                "kind=\"prompt\", model=\"tiny\"");
    assert_non_null(r200);
    assert_non_null(depth);
    assert_non_null(r400);
    assert_non_null(ttft);
    assert_non_null(tok);
    moe_metric_inc(r200);
    moe_metric_inc(r200);
    moe_metric_add(r200, 3);
    moe_metric_inc(r400);
    moe_metric_set(depth, 7);
    moe_metric_add(depth, -2.5);
    moe_metric_observe(ttft, 0.05);
    moe_metric_observe(ttft, 0.25);
    moe_metric_observe(ttft, 2);
    moe_metric_add(tok, 1e6);
    expect_render("# HELP moed_requests_total Requests by status.\n"
                  "# TYPE moed_requests_total counter\n"
                  "moed_requests_total{status=\"200\"} 5\n"
                  "moed_requests_total{status=\"400\"} 1\n"
                  "# HELP moed_queue_depth Waiting requests.\n"
                  "# TYPE moed_queue_depth gauge\n"
                  "moed_queue_depth 4.5\n"
                  "# HELP moed_ttft_seconds Time to first token.\n"
                  "# TYPE moed_ttft_seconds histogram\n"
                  "moed_ttft_seconds_bucket{kind=\"chat\",le=\"0.1\"} 1\n"
                  "moed_ttft_seconds_bucket{kind=\"chat\",le=\"0.25\"} 2\n"
                  "moed_ttft_seconds_bucket{kind=\"chat\",le=\"+Inf\"} 3\n"
                  "moed_ttft_seconds_sum{kind=\"chat\"} 2.3\n"
                  "moed_ttft_seconds_count{kind=\"chat\"} 3\n"
                  "# HELP moed_tokens_total Tokens.\n"
                  "# TYPE moed_tokens_total counter\n"
                  "moed_tokens_total{kind=\"prompt\",model=\"tiny\"} 1000000\n");
}

static void test_render_values(void **state)
{
    struct moe_metric *g = moe_metric_gauge("g", "", NULL);
    assert_non_null(g);
    struct { double v; const char *txt; } cases[] = {
        {0, "0"}, {-0.0, "-0"}, {0.1, "0.1"}, {1.0 / 3, "0.3333333333333333"},
        {1e21, "1e+21"}, {123456789012, "123456789012"}, {INFINITY, "+Inf"},
        {-INFINITY, "-Inf"}, {NAN, "NaN"}, {-1.5e-7, "-1.5e-07"},
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(cases); i++) {
        moe_metric_set(g, cases[i].v);
        char want[128];
        snprintf(want, sizeof(want), "# TYPE g gauge\ng %s\n", cases[i].txt);
        expect_render(want);
    }
    /* a counter's integral and fractional parts add up */
    struct moe_metric *c = moe_metric_counter("c_total", "", NULL);
    moe_metric_add(c, 0.25);
    moe_metric_inc(c);
    moe_metric_add(c, -5); /* ignored: counters only go up */
    moe_metric_add(c, NAN); /* ignored */
    assert_true(moe_metric_value(c) == 1.25);
}

static void test_escaping(void **state)
{
    /* help: backslash and newline escaped, quotes kept */
    struct moe_metric *a = moe_metric_counter("esc_total", "a \"quoted\" back\\slash\nnewline",
                                              "path=\"C:\\dir\", q=\"say \\\"hi\\\"\"");
    assert_non_null(a);
    /* raw newline in a value; an already escaped one is kept as it is */
    struct moe_metric *b = moe_metric_counter("esc_total", "ignored: first help wins",
                                              "path=\"two\nlines\",q=\"x\\ny\"");
    assert_non_null(b);
    expect_render("# HELP esc_total a \"quoted\" back\\\\slash\\nnewline\n"
                  "# TYPE esc_total counter\n"
                  "esc_total{path=\"C:\\\\dir\",q=\"say \\\"hi\\\"\"} 0\n"
                  "esc_total{path=\"two\\nlines\",q=\"x\\ny\"} 0\n");

    char buf[64];
    assert_int_equal(moe_metric_label_escape("a\"b\\c\nd", buf, sizeof(buf)), 10);
    assert_string_equal(buf, "a\\\"b\\\\c\\nd");
    /* truncation as snprintf */
    assert_int_equal(moe_metric_label_escape("a\"b", buf, 3), 4);
    assert_string_equal(buf, "a\\");
    /* an escaped value makes a label that registers and renders as written */
    char labels[128];
    moe_metric_label_escape("we\"ird\\", buf, sizeof(buf));
    snprintf(labels, sizeof(labels), "model=\"%s\"", buf);
    moe_metrics_reset();
    assert_non_null(moe_metric_gauge("m", "", labels));
    expect_render("# TYPE m gauge\nm{model=\"we\\\"ird\\\\\"} 0\n");
}

/* ---- registration ---------------------------------------------------------------------- */

static void test_idempotent(void **state)
{
    struct moe_metric *a = moe_metric_counter("req_total", "h", "status=\"200\"");
    assert_non_null(a);
    /* same series, spelled with spaces: the same metric */
    assert_ptr_equal(moe_metric_counter("req_total", "h", "status = \"200\""), a);
    assert_ptr_equal(moe_metric_counter("req_total", "h", "status=\"200\""), a);
    struct moe_metric *b = moe_metric_counter("req_total", "h", "status=\"500\"");
    assert_non_null(b);
    assert_ptr_not_equal(a, b);
    struct moe_metric *n1 = moe_metric_gauge("plain", "h", NULL);
    assert_ptr_equal(moe_metric_gauge("plain", "h", ""), n1); /* NULL and "" are the same */
    moe_metric_inc(a);
    moe_metric_inc(moe_metric_counter("req_total", "h", "status=\"200\""));
    assert_true(moe_metric_value(a) == 2);
    expect_render("# HELP req_total h\n# TYPE req_total counter\n"
                  "req_total{status=\"200\"} 2\nreq_total{status=\"500\"} 0\n"
                  "# HELP plain h\n# TYPE plain gauge\nplain 0\n");
}

static void test_type_conflict(void **state)
{
    struct moe_metric *c = moe_metric_counter("thing", "h", NULL);
    assert_non_null(c);
    assert_null(moe_metric_gauge("thing", "h", NULL));
    assert_null(moe_metric_gauge("thing", "h", "other=\"labels\""));
    const double b[] = {1};
    assert_null(moe_metric_histogram("thing", "h", NULL, b, 1));
    /* wrong-type and NULL updates are ignored, never a crash */
    moe_metric_set(c, 100);
    moe_metric_observe(c, 1);
    moe_metric_inc(NULL);
    moe_metric_add(NULL, 1);
    moe_metric_set(NULL, 1);
    moe_metric_observe(NULL, 1);
    assert_true(moe_metric_value(NULL) == 0);
    assert_true(moe_metric_value(c) == 0);
    expect_render("# HELP thing h\n# TYPE thing counter\nthing 0\n");
}

static void test_bad_names(void **state)
{
    assert_null(moe_metric_counter(NULL, "h", NULL));
    assert_null(moe_metric_counter("", "h", NULL));
    assert_null(moe_metric_counter("1abc", "h", NULL));
    assert_null(moe_metric_counter("a-b", "h", NULL));
    assert_non_null(moe_metric_counter("ns:sub_name_total", "h", NULL));
    assert_null(moe_metric_counter("l", "h", "1x=\"a\""));
    assert_null(moe_metric_counter("l", "h", "__x=\"a\""));
    assert_null(moe_metric_counter("l", "h", "x=a"));
    assert_null(moe_metric_counter("l", "h", "x=\"a"));
    assert_null(moe_metric_counter("l", "h", "x=\"a\" y=\"b\""));
    assert_null(moe_metric_counter("l", "h", "x=\"a\",x=\"b\""));
    assert_null(moe_metric_counter("l", "h", "x=\"a\"b\""));
    assert_non_null(moe_metric_counter("l", "h", "x=\"\",y_2=\"b\","));
    expect_render("# HELP ns:sub_name_total h\n# TYPE ns:sub_name_total counter\n"
                  "ns:sub_name_total 0\n"
                  "# HELP l h\n# TYPE l counter\nl{x=\"\",y_2=\"b\"} 0\n");
}

/* vLLM's names (namespace:name) in every type, as the endpoint picker of
 * llm-d reads them; a model name with a slash and a colon in a label; a
 * counter's _total and a histogram's suffixes after the colon name. */
static void test_colon_names(void **state)
{
    static const double b[] = {0.5};
    const char *l = "model_name=\"org/Model-1:v2\"";
    struct moe_metric *g = moe_metric_gauge("vllm:kv_cache_usage_perc", "usage", l);
    struct moe_metric *c = moe_metric_counter("vllm:prompt_tokens_total", "tokens", l);
    struct moe_metric *h = moe_metric_histogram("vllm:e2e_request_latency_seconds", "", l, b, 1);
    assert_non_null(g);
    assert_non_null(c);
    assert_non_null(h);
    moe_metric_set(g, 0.25);
    moe_metric_add(c, 3);
    moe_metric_observe(h, 1);
    expect_render("# HELP vllm:kv_cache_usage_perc usage\n"
                  "# TYPE vllm:kv_cache_usage_perc gauge\n"
                  "vllm:kv_cache_usage_perc{model_name=\"org/Model-1:v2\"} 0.25\n"
                  "# HELP vllm:prompt_tokens_total tokens\n"
                  "# TYPE vllm:prompt_tokens_total counter\n"
                  "vllm:prompt_tokens_total{model_name=\"org/Model-1:v2\"} 3\n"
                  "# TYPE vllm:e2e_request_latency_seconds histogram\n"
                  "vllm:e2e_request_latency_seconds_bucket{model_name=\"org/Model-1:v2\",le=\"0.5\"} 0\n"
                  "vllm:e2e_request_latency_seconds_bucket{model_name=\"org/Model-1:v2\",le=\"+Inf\"} 1\n"
                  "vllm:e2e_request_latency_seconds_sum{model_name=\"org/Model-1:v2\"} 1\n"
                  "vllm:e2e_request_latency_seconds_count{model_name=\"org/Model-1:v2\"} 1\n");
    /* a leading colon is a valid name too; a colon is not valid in a label name */
    assert_non_null(moe_metric_gauge(":x", "", NULL));
    assert_null(moe_metric_gauge("y", "", "a:b=\"1\""));
}

static void test_empty_registry(void **state)
{
    expect_render("");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_concurrent_exact, reset),
        cmocka_unit_test_setup(test_histogram_exact, reset),
        cmocka_unit_test_setup(test_histogram_bad_buckets, reset),
        cmocka_unit_test_setup(test_render_golden, reset),
        cmocka_unit_test_setup(test_render_values, reset),
        cmocka_unit_test_setup(test_escaping, reset),
        cmocka_unit_test_setup(test_idempotent, reset),
        cmocka_unit_test_setup(test_type_conflict, reset),
        cmocka_unit_test_setup(test_bad_names, reset),
        cmocka_unit_test_setup(test_colon_names, reset),
        cmocka_unit_test_setup(test_empty_registry, reset),
    };
    /* registration errors are logged; keep the test output readable */
    moe_log_set_level(MOE_LOG_ERR - 1);
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    moe_metrics_reset();
    return rc;
}
