/* The server's Prometheus series (ipc/README.md, "Metrics"), kept apart from
 * the connection code in ipc_server.c, which only reports events: a request
 * answered, a first text, a generation done, a scrape.
 *
 * Three sets, all in the process-wide registry (common/common_metrics.h):
 *   moed_*    moed's own; those about the model carry model_name;
 *   vllm:*    the names vLLM exports, which llm-d's inference scheduler (the
 *             Gateway API Inference Extension's endpoint picker) and vLLM
 *             dashboards read: vllm:num_requests_waiting, ..._running and
 *             vllm:kv_cache_usage_perc by default; each with model_name;
 *   process_* the standard process series of Prometheus client libraries,
 *             read from /proc/self at scrape time.
 * Registering a name+labels again returns the same series, so a server
 * started twice in one process (tests) shares its counters. */
#define _GNU_SOURCE
#include "ipc/ipc_int.h"

#include "common/common_metrics.h"

#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static const int known_status[] = {200, 400, 401, 403, 404, 405, 413, 415, 429, 500, 501, 503};
_Static_assert(MOE_ARRAY_SIZE(known_status) == MOE_IPC_METRICS_STATUSES,
               "one cached counter per known status");

/* moed's finish reasons, and the one vLLM's request_success_total uses for
 * each: vLLM knows stop, length, abort (and error in recent versions). */
static const struct {
    const char *moed, *vllm;
} finish_reasons[] = {
    {"stop", "stop"},       {"length", "length"}, {"cancelled", "abort"},
    {"timeout", "abort"},   {"error", "error"},   {"other", "error"},
};
_Static_assert(MOE_ARRAY_SIZE(finish_reasons) == MOE_IPC_METRICS_FINISH,
               "one counter per finish reason");

static const double ttft_buckets[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double tpot_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                      0.05,   0.1,   0.25,   0.5,   1,    2.5};
static const double e2e_buckets[] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
/* vLLM's own buckets, so that its dashboards' quantiles read the same */
static const double vllm_ttft_buckets[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                           0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0,
                                           20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
static const double vllm_tpot_buckets[] = {0.01, 0.025, 0.05, 0.075, 0.1,  0.15, 0.2,
                                           0.3,  0.4,   0.5,  0.75,  1.0,  2.5,  5.0,
                                           7.5,  10.0,  20.0, 40.0,  80.0};
static const double vllm_e2e_buckets[] = {0.3,  0.5,  0.8,  1.0,   1.5,   2.0,   2.5,
                                          5.0,  10.0, 15.0, 20.0,  30.0,  40.0,  50.0,
                                          60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

#define HELP_REQUESTS "HTTP requests answered, by endpoint and status"

/* "model_name=\"...\"" followed by more labels (extra may be NULL). */
static const char *with_model(const struct moe_ipc_metrics *m, char *buf, size_t cap,
                              const char *extra)
{
    snprintf(buf, cap, "model_name=\"%s\"%s%s", m->model_label, extra ? "," : "",
             extra ? extra : "");
    return buf;
}

static struct moe_metric *counter_m(const struct moe_ipc_metrics *m, const char *name,
                                    const char *help, const char *extra)
{
    char l[MOE_IPC_METRICS_LABEL + 160];
    return moe_metric_counter(name, help, with_model(m, l, sizeof(l), extra));
}

static struct moe_metric *gauge_m(const struct moe_ipc_metrics *m, const char *name,
                                  const char *help)
{
    char l[MOE_IPC_METRICS_LABEL + 160];
    return moe_metric_gauge(name, help, with_model(m, l, sizeof(l), NULL));
}

static struct moe_metric *hist_m(const struct moe_ipc_metrics *m, const char *name,
                                 const char *help, const double *b, size_t n)
{
    char l[MOE_IPC_METRICS_LABEL + 160];
    return moe_metric_histogram(name, help, with_model(m, l, sizeof(l), NULL), b, n);
}

/* ---- process_* ------------------------------------------------------------------
 * One set per process, whatever the number of servers: the CPU counter
 * advances by what /proc says was used since the last scrape. */
static pthread_mutex_t proc_lock = PTHREAD_MUTEX_INITIALIZER;
static double proc_cpu_seen;

static int proc_register(struct moe_ipc_proc_metrics *p)
{
    p->cpu = moe_metric_counter("process_cpu_seconds_total",
                                "Total user and system CPU time spent in seconds.", NULL);
    p->rss = moe_metric_gauge("process_resident_memory_bytes", "Resident memory size in bytes.",
                              NULL);
    p->vsize = moe_metric_gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                                NULL);
    p->fds = moe_metric_gauge("process_open_fds", "Number of open file descriptors.", NULL);
    p->max_fds = moe_metric_gauge("process_max_fds", "Maximum number of open file descriptors.",
                                  NULL);
    p->start = moe_metric_gauge("process_start_time_seconds",
                                "Start time of the process since unix epoch in seconds.", NULL);
    return p->cpu && p->rss && p->vsize && p->fds && p->max_fds && p->start ? 0 : -ENOMEM;
}

/* /proc/self/stat fields 22 (starttime, ticks after boot), 23 (vsize,
 * bytes), 24 (rss, pages); the name in field 2 may hold spaces and ')'. */
static int read_self_stat(unsigned long long *start_ticks, unsigned long long *vsize,
                          long long *rss_pages)
{
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "re");
    if (!f)
        return -errno;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return -EIO;
    /* after ")": field 3 (state) ... */
    if (sscanf(p + 1,
               " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d"
               " %llu %llu %lld",
               start_ticks, vsize, rss_pages) != 3)
        return -EIO;
    return 0;
}

static double boot_time_s(void)
{
    char line[256];
    double bt = 0;
    FILE *f = fopen("/proc/stat", "re");
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "btime %lf", &bt) == 1)
            break;
    fclose(f);
    return bt;
}

static int count_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* not the directory's own descriptor */
}

static void proc_refresh(const struct moe_ipc_proc_metrics *p)
{
    struct rusage ru;
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    unsigned long long start_ticks, vsize;
    long long rss_pages;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                     (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
        pthread_mutex_lock(&proc_lock);
        if (cpu > proc_cpu_seen) {
            moe_metric_add(p->cpu, cpu - proc_cpu_seen);
            proc_cpu_seen = cpu;
        }
        pthread_mutex_unlock(&proc_lock);
    }
    if (read_self_stat(&start_ticks, &vsize, &rss_pages) == 0) {
        moe_metric_set(p->vsize, (double)vsize);
        moe_metric_set(p->rss, (double)rss_pages * (double)page);
        if (moe_metric_value(p->start) == 0 && tick > 0)
            moe_metric_set(p->start, boot_time_s() + (double)start_ticks / (double)tick);
    }
    int fds = count_open_fds();
    if (fds >= 0)
        moe_metric_set(p->fds, fds);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        moe_metric_set(p->max_fds, rl.rlim_cur == RLIM_INFINITY ? -1 : (double)rl.rlim_cur);
}

/* ---- registration ---------------------------------------------------------------- */

int moe_ipc_metrics_init(struct moe_ipc_metrics *m, const char *model_name,
                         const char *const *route_labels, size_t n_routes, size_t n_primed)
{
    char labels[128];
    memset(m, 0, sizeof(*m));
    if (n_routes > MOE_IPC_METRICS_ROUTES)
        return moe_err(-EINVAL, "ipc: %zu routes, metrics keep %d", n_routes,
                       MOE_IPC_METRICS_ROUTES);
    for (size_t i = 0; i < n_routes; i++)
        m->route_label[i] = route_labels[i];
    m->n_routes = n_routes;
    /* a name too long for the label is cut (it is a label, not an identity) */
    if (moe_metric_label_escape(model_name ? model_name : "", m->model_label,
                                sizeof(m->model_label)) >= sizeof(m->model_label)) {
        size_t k = strlen(m->model_label);
        while (k > 0 && m->model_label[k - 1] == '\\') /* never end on half an escape */
            m->model_label[--k] = '\0';
    }
    pthread_mutex_init(&m->tok_lock, NULL);

    for (size_t i = 0; i < MOE_IPC_METRICS_FINISH; i++) {
        snprintf(labels, sizeof(labels), "finish_reason=\"%s\"", finish_reasons[i].moed);
        m->finish[i] = counter_m(m, "moed_requests_finished_total",
                                 "Generation requests finished, by finish reason", labels);
        snprintf(labels, sizeof(labels), "finished_reason=\"%s\"", finish_reasons[i].vllm);
        m->v_success[i] = counter_m(m, "vllm:request_success_total",
                                    "Count of finished requests (vLLM's name), by finish reason: "
                                    "stop, length, abort (cancelled, timed out), error",
                                    labels);
    }
    m->prompt = counter_m(m, "moed_prompt_tokens_total", "Prompt tokens processed by the engine",
                          NULL);
    m->gen = counter_m(m, "moed_generation_tokens_total", "Tokens generated by the engine", NULL);
    m->ttft = hist_m(m, "moed_time_to_first_token_seconds",
                     "From request arrival to its first generated text, queueing included",
                     ttft_buckets, MOE_ARRAY_SIZE(ttft_buckets));
    m->tpot = hist_m(m, "moed_time_per_output_token_seconds",
                     "Mean time between generated tokens after the first, one sample per request",
                     tpot_buckets, MOE_ARRAY_SIZE(tpot_buckets));
    m->e2e = hist_m(m, "moed_request_duration_seconds",
                    "Generation requests from arrival to their last token", e2e_buckets,
                    MOE_ARRAY_SIZE(e2e_buckets));
    m->queue = gauge_m(m, "moed_queue_depth", "Requests waiting for a sequence slot");
    m->running = gauge_m(m, "moed_running_sequences", "Sequences being prefilled or decoded");
    m->kv_total = gauge_m(m, "moed_kv_blocks_total",
                          "KV cache pool blocks (one layer, group tokens each)");
    m->kv_used = gauge_m(m, "moed_kv_blocks_used", "KV cache pool blocks holding tokens");
    m->kv_reserved = gauge_m(m, "moed_kv_blocks_reserved",
                             "KV blocks promised to running sequences, not yet filled");
    m->kv_block_bytes = gauge_m(m, "moed_kv_block_bytes", "Bytes of one KV block");
    m->kv_bpt = gauge_m(
        m, "moed_kv_bytes_per_token",
        "KV cache bytes per token of one sequence at 4096 tokens, all layers, window included");
    m->prefix_hit_rate = gauge_m(m, "moed_prefix_cache_hit_rate",
                                 "Prompt tokens found in the prefix cache, of all prompt tokens "
                                 "since start");
    m->prefix_entries = gauge_m(m, "moed_prefix_cache_entries",
                                "Finished sequences' caches kept for later prompts");
    m->kv_waits = counter_m(m, "moed_kv_admission_waits_total",
                            "Times a request waited because the KV pool was full", NULL);
    m->grammar_masks = counter_m(m, "moed_grammar_masks_total",
                                 "Structured output: token masks built (a draw the grammar "
                                 "refused, or a truncating sampler)", NULL);
    m->grammar_mask_s = counter_m(m, "moed_grammar_mask_seconds_total",
                                  "Structured output: seconds spent building token masks", NULL);
    m->conns = moe_metric_gauge("moed_http_connections", "Open client connections", NULL);
    m->streams = moe_metric_gauge("moed_http_streams", "SSE streams in progress", NULL);
    snprintf(labels, sizeof(labels), "version=\"%s\"", MOED_VERSION);
    m->build = moe_metric_gauge("moed_build_info", "1, labelled with moed's version", labels);
    moe_metric_set(m->build, 1);

    m->v_running = gauge_m(m, "vllm:num_requests_running",
                           "Requests being prefilled or decoded (vLLM's name)");
    m->v_waiting = gauge_m(m, "vllm:num_requests_waiting",
                           "Requests waiting to be processed (vLLM's name)");
    m->v_kv_usage = gauge_m(m, "vllm:kv_cache_usage_perc",
                            "KV cache usage, 0 to 1: blocks taken or promised to admitted "
                            "sequences (vLLM's name)");
    m->v_kv_usage_old = gauge_m(m, "vllm:gpu_cache_usage_perc",
                                "The same as vllm:kv_cache_usage_perc (vLLM's older name)");
    m->v_prompt = counter_m(m, "vllm:prompt_tokens_total",
                            "Prompt tokens processed (vLLM's name)", NULL);
    m->v_gen = counter_m(m, "vllm:generation_tokens_total", "Tokens generated (vLLM's name)",
                         NULL);
    m->v_ttft = hist_m(m, "vllm:time_to_first_token_seconds",
                       "Time to the first token, queueing included (vLLM's name)",
                       vllm_ttft_buckets, MOE_ARRAY_SIZE(vllm_ttft_buckets));
    m->v_tpot = hist_m(m, "vllm:time_per_output_token_seconds",
                       "Mean time per output token after the first, one sample per request "
                       "(vLLM's name)",
                       vllm_tpot_buckets, MOE_ARRAY_SIZE(vllm_tpot_buckets));
    m->v_e2e = hist_m(m, "vllm:e2e_request_latency_seconds",
                      "Request latency from arrival to the last token (vLLM's name)",
                      vllm_e2e_buckets, MOE_ARRAY_SIZE(vllm_e2e_buckets));

    /* the common case is there from the first scrape */
    for (size_t r = 0; r < n_primed && r < n_routes; r++) {
        snprintf(labels, sizeof(labels), "endpoint=\"%s\",status=\"200\"", m->route_label[r]);
        atomic_store(&m->req[r][0], moe_metric_counter("moed_http_requests_total", HELP_REQUESTS,
                                                       labels));
    }
    if (!m->prompt || !m->gen || !m->ttft || !m->tpot || !m->e2e || !m->queue || !m->running ||
        !m->conns || !m->streams || !m->kv_total || !m->kv_used || !m->kv_reserved ||
        !m->kv_block_bytes || !m->kv_bpt || !m->kv_waits || !m->build ||
        !m->grammar_masks || !m->grammar_mask_s || !m->v_running ||
        !m->prefix_hit_rate || !m->prefix_entries ||
        !m->v_waiting || !m->v_kv_usage || !m->v_kv_usage_old || !m->v_prompt || !m->v_gen ||
        !m->v_ttft || !m->v_tpot || !m->v_e2e || proc_register(&m->proc)) {
        pthread_mutex_destroy(&m->tok_lock);
        return moe_err(-ENOMEM, "ipc: cannot register metrics");
    }
    m->ready = true;
    return 0;
}

void moe_ipc_metrics_free(struct moe_ipc_metrics *m)
{
    if (m->ready) /* the series stay: the registry owns them */
        pthread_mutex_destroy(&m->tok_lock);
    m->ready = false;
}

/* ---- events ------------------------------------------------------------------------ */

void moe_ipc_metrics_request(struct moe_ipc_metrics *m, size_t route, int status)
{
    size_t k;
    struct moe_metric *c = NULL;
    char labels[96];
    if (route >= m->n_routes)
        return;
    for (k = 0; k < MOE_IPC_METRICS_STATUSES; k++)
        if (known_status[k] == status)
            break;
    if (k < MOE_IPC_METRICS_STATUSES)
        c = atomic_load(&m->req[route][k]);
    if (!c) {
        snprintf(labels, sizeof(labels), "endpoint=\"%s\",status=\"%d\"", m->route_label[route],
                 status);
        /* registering an existing name+labels returns the same metric */
        c = moe_metric_counter("moed_http_requests_total", HELP_REQUESTS, labels);
        if (c && k < MOE_IPC_METRICS_STATUSES)
            atomic_store(&m->req[route][k], c);
    }
    if (c)
        moe_metric_inc(c);
}

void moe_ipc_metrics_finish(struct moe_ipc_metrics *m, const char *reason)
{
    size_t k;
    for (k = 0; k < MOE_IPC_METRICS_FINISH - 1; k++)
        if (reason && strcmp(reason, finish_reasons[k].moed) == 0)
            break;
    moe_metric_inc(m->finish[k]);
    moe_metric_inc(m->v_success[k]);
}

void moe_ipc_metrics_first_text(struct moe_ipc_metrics *m, double seconds)
{
    moe_metric_observe(m->ttft, seconds);
    moe_metric_observe(m->v_ttft, seconds);
}

void moe_ipc_metrics_done(struct moe_ipc_metrics *m, double t0, double t_first,
                          const struct moe_event *ev)
{
    double now = moe_now_s();
    moe_metric_observe(m->e2e, now - t0);
    moe_metric_observe(m->v_e2e, now - t0);
    if (t_first > 0 && ev->completion_tokens > 1) {
        double tpot = (now - t_first) / (ev->completion_tokens - 1);
        moe_metric_observe(m->tpot, tpot);
        moe_metric_observe(m->v_tpot, tpot);
    }
    moe_ipc_metrics_finish(m, ev->finish_reason);
}

/* ---- scrape time ------------------------------------------------------------------- */

/* vllm:cache_config_info: 1, with the KV block size in tokens and vLLM's
 * block count (a vLLM block holds block_size tokens of every layer; moed's
 * blocks are per layer, so the count is the pool's token capacity, from its
 * bytes, over block_size). Registered when an engine is first seen; the
 * endpoint picker reads the labels. */
static void cache_info(struct moe_ipc_metrics *m, const struct moe_engine_stats *st)
{
    if (atomic_load(&m->v_cache_info) || st->kv_block_tokens <= 0)
        return;
    long long blocks = 0;
    if (st->kv_bytes_per_token > 0)
        blocks = (long long)((double)st->kv_blocks_total * (double)st->kv_block_bytes /
                             st->kv_bytes_per_token / st->kv_block_tokens);
    char extra[96], l[MOE_IPC_METRICS_LABEL + 160];
    snprintf(extra, sizeof(extra), "block_size=\"%d\",num_gpu_blocks=\"%lld\"",
             (int)st->kv_block_tokens, blocks);
    struct moe_metric *g = moe_metric_gauge(
        "vllm:cache_config_info", "1, labelled with the KV cache's block_size (tokens) and "
        "num_gpu_blocks (vLLM's name; moed's blocks may sit in host memory)",
        with_model(m, l, sizeof(l), extra));
    moe_metric_set(g, 1);
    atomic_store(&m->v_cache_info, g);
}

void moe_ipc_metrics_refresh(struct moe_ipc_metrics *m, struct moe_engine *e,
                             const struct moe_engine_stats *st, int connections, int streams)
{
    moe_metric_set(m->queue, st->queue_depth);
    moe_metric_set(m->running, st->running);
    moe_metric_set(m->v_waiting, st->queue_depth);
    moe_metric_set(m->v_running, st->running);
    moe_metric_set(m->kv_total, (double)st->kv_blocks_total);
    moe_metric_set(m->kv_used, (double)st->kv_blocks_used);
    moe_metric_set(m->kv_reserved, (double)st->kv_blocks_reserved);
    moe_metric_set(m->kv_block_bytes, (double)st->kv_block_bytes);
    moe_metric_set(m->kv_bpt, st->kv_bytes_per_token);
    moe_metric_set(m->prefix_hit_rate, st->prompt_tokens ? (double)st->prompt_tokens_cached /
                                                               (double)st->prompt_tokens
                                                         : 0.0);
    moe_metric_set(m->prefix_entries, st->prefix_entries);
    /* what a new request cannot have: blocks taken plus blocks promised */
    double usage = 0;
    if (st->kv_blocks_total > 0)
        usage = (double)(st->kv_blocks_used + st->kv_blocks_reserved) /
                (double)st->kv_blocks_total;
    usage = usage < 0 ? 0 : usage > 1 ? 1 : usage;
    moe_metric_set(m->v_kv_usage, usage);
    moe_metric_set(m->v_kv_usage_old, usage);
    moe_metric_set(m->conns, connections);
    moe_metric_set(m->streams, streams);
    if (e) {
        cache_info(m, st);
        /* the engine's monotonic counts turned into our counters (they
         * include cancelled requests, which never report usage to us) */
        pthread_mutex_lock(&m->tok_lock);
        if (e != m->tok_engine || st->prompt_tokens < m->tok_prompt ||
            st->generated_tokens < m->tok_gen || st->kv_waits < m->tok_waits ||
            st->grammar_masks < m->tok_masks) {
            m->tok_engine = e; /* a new engine counts from 0 */
            m->tok_prompt = m->tok_gen = m->tok_waits = m->tok_masks = 0;
            m->tok_mask_s = 0;
        }
        double dp = (double)(st->prompt_tokens - m->tok_prompt);
        double dg = (double)(st->generated_tokens - m->tok_gen);
        moe_metric_add(m->prompt, dp);
        moe_metric_add(m->v_prompt, dp);
        moe_metric_add(m->gen, dg);
        moe_metric_add(m->v_gen, dg);
        moe_metric_add(m->kv_waits, (double)(st->kv_waits - m->tok_waits));
        m->tok_prompt = st->prompt_tokens;
        m->tok_gen = st->generated_tokens;
        m->tok_waits = st->kv_waits;
        moe_metric_add(m->grammar_masks, (double)(st->grammar_masks - m->tok_masks));
        moe_metric_add(m->grammar_mask_s, st->grammar_mask_s - m->tok_mask_s);
        m->tok_masks = st->grammar_masks;
        m->tok_mask_s = st->grammar_mask_s;
        pthread_mutex_unlock(&m->tok_lock);
    }
    proc_refresh(&m->proc);
}
