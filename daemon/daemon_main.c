/* moed: the serving daemon's process and its life.
 *
 *   start:  config -> ipc (socket up, /health 503) -> model load in a thread
 *           (main loop sends EXTEND_TIMEOUT_USEC meanwhile) -> pool, engine
 *           -> ipc gets the engine -> READY=1
 *   run:    one poll loop on the main thread: signalfd (SIGTERM/SIGINT drain,
 *           SIGHUP reload), a timerfd (watchdog, start-up timeout, status),
 *           an eventfd for POST /admin/reload, which runs here too so that a
 *           reload never races another one
 *   stop:   STOPPING=1 -> ipc stops accepting -> engine drains (in-flight
 *           requests finish or time out) -> ipc stops -> everything freed
 *
 * Exit status: 0 stopped on request; 1 the configuration is invalid;
 * 2 anything else that keeps moed from serving (unreadable config, model,
 * socket, engine) or a bad command line. */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "backend/backend.h"
#include "common/common.h"
#include "common/common_metrics.h"
#include "daemon/daemon.h"
#include "engine/engine.h"
#include "engine/engine_jinja.h"
#include "engine/engine_server.h"
#include "ipc/ipc.h"
#include "model/model.h"
#include "offload/offload.h"
#include "offload/offload_prefetch.h"

#define EXIT_CONFIG 1
#define EXIT_FAIL 2

#define TICK_USEC 5000000ull     /* status, start-up timeout extension */
#define EXTEND_USEC (3 * TICK_USEC)

static const char help_text[] =
    "NAME\n"
    "    moed - serve a Mixture-of-Experts language model over a Unix socket\n"
    "\n"
    "SYNOPSIS\n"
    "    moed [FLAGS] MODEL            (or moed [FLAGS] -m MODEL)\n"
    "    moed [--config FILE] [FLAGS] [MODEL]\n"
    "    moed --check-config FILE [FLAGS] [MODEL]\n"
    "    moed --dump-config [--config FILE] [FLAGS] [MODEL]\n"
    "    moed --help | --version\n"
    "\n"
    "DESCRIPTION\n"
    "    moed loads a model and answers HTTP/1.1 + JSON on a Unix socket:\n"
    "    OpenAI-compatible /v1/completions and /v1/chat/completions (with SSE\n"
    "    streaming), /v1/models, /health, /metrics, /admin/stats and POST\n"
    "    /admin/reload. Concurrent requests are batched: each step decodes every\n"
    "    running sequence together.\n"
    "\n"
    "    A first run needs no INI file: `moed models/tiny-moe` serves that model\n"
    "    (a Hugging Face directory, a GGUF file or a moed pack) with the built-in\n"
    "    defaults, on " MOE_SYSTEM_SOCKET " when this user may create it, else on\n"
    "    $XDG_RUNTIME_DIR/moed.sock (or /tmp/moed-UID.sock without it), which is\n"
    "    where `moectl` looks too. Any INI key can be set by a flag or a MOED_*\n"
    "    variable (listed below). With no model on the command line, moed reads\n"
    "    " MOE_DAEMON_DEFAULT_CONFIG " (or --config FILE), as the service does.\n"
    "\n"
    "    It is meant to run under systemd (moed.service, Type=notify): it reports\n"
    "    READY=1 once the model is loaded, STATUS= lines, EXTEND_TIMEOUT_USEC= while\n"
    "    loading, WATCHDOG=1 when WatchdogSec= is set (only while the engine\n"
    "    thread beats: a stalled engine lets the watchdog expire), and takes its\n"
    "    listening sockets from moed.socket when socket-activated.\n"
    "\n"
    "OPTIONS\n"
    "    MODEL, -m, --model MODEL\n"
    "        The model to serve ([model] path). Without --config, no INI file is\n"
    "        read.\n"
    "    -c, --config FILE\n"
    "        Read the configuration from FILE (default " MOE_DAEMON_DEFAULT_CONFIG ",\n"
    "        none when a model is given on the command line).\n"
    "    --check-config FILE\n"
    "        Check FILE, with any flags and MOED_* variables over it, and that its\n"
    "        [model] path is a directory, a GGUF file or a pack; then exit: prints\n"
    "        \"FILE: OK\" (status 0), or the first error as FILE:LINE: [section]\n"
    "        key: reason, or FILE: [model] path: PATH: reason (status 1; 2 when\n"
    "        FILE cannot be read).\n"
    "    --dump-config\n"
    "        Print the configuration as an INI file, every key with its doc, and\n"
    "        exit: the built-in defaults, or the effective values from --config\n"
    "        FILE, MOED_* variables and flags. etc/moed.ini is the plain output.\n"
    "    -h, --help\n"
    "        This text.\n"
    "    -V, --version\n"
    "        Print \"moed VERSION\".\n"
    "\n"
    "SIGNALS\n"
    "    SIGHUP    Reload the configuration file. Reloadable keys take effect at\n"
    "              once; others are logged as \"needs restart\" and keep their\n"
    "              running value; flags and MOED_* variables are applied over\n"
    "              the file again. A file with an error changes nothing, and the\n"
    "              STATUS= line says so until a reload succeeds. `moectl reload`\n"
    "              (the unit's ExecReload=) does the same and exits non-zero when\n"
    "              the file was rejected.\n"
    "    SIGTERM, SIGINT\n"
    "              Stop accepting connections, let requests in flight finish for\n"
    "              up to [daemon] drain_timeout seconds, cancel the rest, exit 0.\n"
    "\n"
    "ENVIRONMENT\n"
    "    MOED_<KEY>, MOED_<SECTION>_<KEY>\n"
    "        Any INI key (see below), over the file and under the flags.\n"
    "    NOTIFY_SOCKET, WATCHDOG_USEC, LISTEN_FDS, LISTEN_PID\n"
    "        Set by systemd: readiness notification, watchdog, socket activation.\n"
    "    JOURNAL_STREAM\n"
    "        When set, log lines carry <N> priority prefixes for the journal.\n"
    "\n"
    "FILES\n"
    "    " MOE_DAEMON_DEFAULT_CONFIG "    the configuration (see etc/moed.ini)\n"
    "    " MOE_SYSTEM_SOCKET "    the service's socket\n"
    "\n"
    "EXIT STATUS\n"
    "    0  stopped on request (or the option's work is done)\n"
    "    1  the configuration is invalid: the file, a flag's or a MOED_*\n"
    "       variable's value (named in the message), or for --check-config\n"
    "       the model path\n"
    "    2  moed could not start: unreadable configuration, model, socket,\n"
    "       engine, or a bad command line (unknown option, extra argument)\n"
    "\n"
    "SEE ALSO\n"
    "    moectl(1), systemd.service(5), systemd.socket(5), sd_notify(3)\n";

struct loader {
    pthread_t thread;
    char *path;
    bool prefault;
    bool tiered;                 /* [offload] mode = tiered */
    struct moe_offload_opts tier;
    int prefetch; /* enum moe_prefetch_mode */
    struct moe_model *model;
    int rc;
    char err[1024];
    int efd; /* written once the load is over */
};

struct moed {
    const char *config_path; /* NULL: no file (moed MODEL) */
    const struct moe_daemon_setting *settings; /* environment, then flags: on every reload */
    size_t n_settings;
    struct moe_daemon_config cfg;
    char model_name[256];
    int chat_template;      /* the engine's built-in format (unused with chat_jinja) */
    struct moe_jinja *chat_jinja; /* the model's own template, compiled; NULL: none */
    char *chat_bos, *chat_eos;    /* the texts its bos_token and eos_token stand for */
    int32_t model_ctx;

    struct moe_ipc *ipc;
    struct moe_model *model;
    struct moe_pool *pool;
    struct moe_engine *engine;

    int sfd, tfd;
    uint64_t watchdog_usec;
    double t_start;
    bool loading, ready;
    struct loader ld;
    char last_status[512];
    char reload_failed[256]; /* the last reload's error until one succeeds, for STATUS= */
    bool wd_stalled;         /* WATCHDOG=1 withheld: the engine thread is silent */
    struct moe_metric *m_ready, *m_reload_ok, *m_reload_err, *m_load_s;

    /* POST /admin/reload: the ipc thread hands the work to the main loop */
    int reload_efd;
    pthread_mutex_t hook_serial; /* one admin reload at a time */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool hook_pending, hook_done, stopping;
    int hook_rc;
    char hook_msg[1024];
};

/* ---- reload ------------------------------------------------------------------ */

static int apply_config(void *arg, const struct moe_daemon_config *next, char *msg, size_t cap)
{
    struct moed *d = arg;
    /* the engine may refuse; ipc and the log level cannot, so they go last */
    if (d->engine) {
        struct moe_engine_limits el;
        moe_daemon_engine_limits(next, d->model_ctx, d->chat_template, &el);
        int rc = moe_daemon_prune(next, d->model, &el.prune, &el.prune_on, msg, cap);
        if (rc)
            return rc;
        moe_err_clear();
        rc = moe_engine_set_limits(d->engine, &el);
        if (rc) {
            snprintf(msg, cap, "engine: %s", moe_err_msg()[0] ? moe_err_msg() : strerror(-rc));
            return rc;
        }
    }
    struct moe_ipc_limits il;
    moe_daemon_ipc_limits(next, &il);
    moe_ipc_set_limits(d->ipc, &il);
    moe_log_set_level((enum moe_log_level)next->log_level);
    return 0;
}

static void set_status_serving(struct moed *d, bool force);

static int do_reload(struct moed *d, const char *source, char *msg, size_t cap)
{
    struct moe_daemon_reload_result res;
    if (d->ready)
        moe_daemon_notify_reloading();
    moe_log(MOE_LOG_INFO, "reload (%s): reading %s", source,
            d->config_path ? d->config_path : "no file: the defaults, MOED_* and the flags again");
    int rc = moe_daemon_config_reload_with(&d->cfg, d->config_path, d->settings, d->n_settings,
                                           apply_config, d, &res, msg, cap);
    moe_metric_inc(rc ? d->m_reload_err : d->m_reload_ok);
    /* the status says so until a reload succeeds: `systemctl status` is
     * where an operator looks after `systemctl reload` */
    if (rc)
        snprintf(d->reload_failed, sizeof(d->reload_failed), "%s", msg);
    else
        d->reload_failed[0] = '\0';
    if (d->ready) {
        moe_daemon_notify("READY=1");
        set_status_serving(d, true);
    } else if (rc) {
        moe_daemon_notify("STATUS=Reload failed: %s", d->reload_failed);
    }
    return rc;
}

/* runs on an ipc thread */
static int reload_hook(void *arg, char *msg, size_t cap)
{
    struct moed *d = arg;
    uint64_t one = 1;
    int rc;

    pthread_mutex_lock(&d->hook_serial);
    pthread_mutex_lock(&d->mu);
    if (d->stopping) {
        pthread_mutex_unlock(&d->mu);
        pthread_mutex_unlock(&d->hook_serial);
        snprintf(msg, cap, "moed is stopping");
        return -ESHUTDOWN;
    }
    d->hook_pending = true;
    d->hook_done = false;
    pthread_mutex_unlock(&d->mu);

    if (write(d->reload_efd, &one, sizeof(one)) != sizeof(one)) {
        rc = -errno;
        pthread_mutex_lock(&d->mu);
        d->hook_pending = false;
        pthread_mutex_unlock(&d->mu);
        pthread_mutex_unlock(&d->hook_serial);
        snprintf(msg, cap, "cannot wake the main loop: %s", strerror(-rc));
        return rc;
    }

    pthread_mutex_lock(&d->mu);
    while (!d->hook_done && !d->stopping)
        pthread_cond_wait(&d->cond, &d->mu);
    if (d->hook_done) {
        rc = d->hook_rc;
        snprintf(msg, cap, "%s", d->hook_msg);
    } else {
        rc = -ESHUTDOWN;
        snprintf(msg, cap, "moed is stopping");
    }
    d->hook_pending = d->hook_done = false;
    pthread_mutex_unlock(&d->mu);
    pthread_mutex_unlock(&d->hook_serial);
    return rc;
}

static void serve_reload_hook(struct moed *d)
{
    uint64_t n;
    if (read(d->reload_efd, &n, sizeof(n)) != sizeof(n))
        return;
    pthread_mutex_lock(&d->mu);
    bool pending = d->hook_pending && !d->hook_done;
    pthread_mutex_unlock(&d->mu);
    if (!pending)
        return;
    char msg[1024];
    int rc = do_reload(d, "POST /admin/reload", msg, sizeof(msg));
    pthread_mutex_lock(&d->mu);
    d->hook_rc = rc;
    snprintf(d->hook_msg, sizeof(d->hook_msg), "%s", msg);
    d->hook_done = true;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->mu);
}

/* ---- status ------------------------------------------------------------------- */

static void set_status_serving(struct moed *d, bool force)
{
    char st[512];
    struct moe_engine_stats es;
    if (!d->engine)
        return;
    moe_engine_get_stats(d->engine, &es);
    int n = snprintf(st, sizeof(st), "%s %.180s: %d running, %d queued, %llu done",
                     d->wd_stalled ? "Engine stalled, serving" : "Serving", d->model_name,
                     (int)es.running, (int)es.queue_depth, (unsigned long long)es.requests_done);
    if (d->reload_failed[0] && n > 0 && (size_t)n < sizeof(st))
        snprintf(st + n, sizeof(st) - (size_t)n, "; reload failed: %s", d->reload_failed);
    if (force || strcmp(st, d->last_status)) {
        snprintf(d->last_status, sizeof(d->last_status), "%s", st);
        moe_daemon_notify("STATUS=%s", st);
    }
}

/* WATCHDOG=1 proves more than a live main loop: once the engine runs, only
 * while its thread has beaten within the watchdog interval (it beats every
 * step, and every MOE_ENGINE_BEAT_S while idle). A step stuck in a kernel,
 * a deadlock or a hung read then lets WatchdogSec= expire and systemd
 * restarts moed. While the model loads there is no engine thread yet: the
 * main loop alone answers, as the loader has its own start-up timeout. */
static void watchdog_pet(struct moed *d)
{
    if (d->engine) {
        double age = moe_engine_heartbeat_age(d->engine);
        double limit = MOE_MAX((double)d->watchdog_usec / 1e6, 2.0 * MOE_ENGINE_BEAT_S);
        if (age > limit) {
            if (!d->wd_stalled) {
                d->wd_stalled = true;
                moe_log(MOE_LOG_ERR, "watchdog: the engine thread has not beaten for %.1f s "
                        "(limit %.1f s, the watchdog interval): no more WATCHDOG=1, so that "
                        "systemd restarts moed unless it recovers", age, limit);
                set_status_serving(d, true);
            }
            return;
        }
        if (d->wd_stalled) {
            d->wd_stalled = false;
            moe_log(MOE_LOG_WARN, "watchdog: the engine thread beats again; WATCHDOG=1 resumes");
            set_status_serving(d, true);
        }
    }
    moe_daemon_notify("WATCHDOG=1");
}

static void on_tick(struct moed *d)
{
    uint64_t n;
    if (read(d->tfd, &n, sizeof(n)) != sizeof(n))
        return;
    if (d->watchdog_usec)
        watchdog_pet(d);
    if (d->loading)
        moe_daemon_notify("EXTEND_TIMEOUT_USEC=%llu\nSTATUS=Loading model %s (%.0f s)",
                          (unsigned long long)EXTEND_USEC, d->cfg.model_path,
                          moe_now_s() - d->t_start);
    else if (d->ready)
        set_status_serving(d, false);
}

/* ---- start-up ----------------------------------------------------------------- */

/* [offload] mode = tiered: the host tier under the model */
static int attach_tier(struct loader *ld)
{
    struct moe_model *m = ld->model;
    struct moe_offload *o = NULL;
    double *score = NULL;
    int rc;
    if (!moe_model_pack(m))
        return moe_err(-EINVAL, "[offload] mode = tiered needs a moed pack (moe-pack makes one); "
                       "%s is not one", ld->path);
    struct moe_offload_opts opts = ld->tier;
    if (opts.host_bytes == 0)
        opts.host_bytes = SIZE_MAX; /* every expert */
    if (opts.policy == MOE_CACHE_STATIC) {
        size_t n = (size_t)m->cfg.n_layers * (size_t)m->cfg.n_experts;
        if (!(score = malloc(n * sizeof(double))))
            return moe_err(-ENOMEM, "out of memory");
        if ((rc = moe_model_expert_scores(m, score)) < 0) {
            free(score);
            return moe_err(rc, "[offload] policy = static: %s", moe_err_msg());
        }
        opts.score = score;
    }
    rc = moe_offload_open(moe_model_pack(m), m->cfg.n_layers, m->cfg.n_experts, m->cfg.top_k,
                          &opts, &o);
    free(score);
    if (rc < 0)
        return rc;
    struct moe_offload_stats st;
    moe_offload_get_stats(o, &st);
    moe_log(MOE_LOG_INFO, "host tier: %u expert slots of up to %.1f MiB in %u size class%s "
            "(%.2f GiB, %s pages, NUMA %s), %s reads, policy %s, prefetch %s", st.slots,
            (double)st.slot_bytes / (1 << 20), st.slot_classes, st.slot_classes == 1 ? "" : "es",
            (double)st.arena_bytes / (1 << 30), st.hugepages ? "huge" : "normal",
            st.numa_node >= 0 ? "bound" : "interleaved/off", st.uring ? "io_uring" : "pread",
            moe_cache_policy_name(opts.policy), moe_prefetch_mode_name(ld->prefetch));
    return moe_model_use_offload(m, o, ld->prefetch != MOE_PREFETCH_NO);
}

static void *loader_main(void *arg)
{
    struct loader *ld = arg;
    uint64_t one = 1;
    ld->rc = moe_model_open_flags(ld->path, ld->tiered ? MOE_MODEL_OPEN_EXPERTS_ON_READ : 0,
                                  &ld->model);
    if (ld->rc == 0 && ld->tiered)
        ld->rc = attach_tier(ld);
    if (ld->rc)
        snprintf(ld->err, sizeof(ld->err), "%s",
                 moe_err_msg()[0] ? moe_err_msg() : strerror(-ld->rc));
    else if (ld->prefault) /* mmap is lazy: without this the first requests read the disk */
        moe_log(MOE_LOG_INFO, "paged in %.2f GiB of weights",
                (double)moe_model_prefault(ld->model) / (1 << 30));
    if (write(ld->efd, &one, sizeof(one)) != sizeof(one))
        abort(); /* an eventfd write of 1 cannot fail short of a programming error */
    return NULL;
}

static int start_loader(struct moed *d)
{
    d->ld.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (d->ld.efd < 0)
        return moe_err(-errno, "eventfd: %s", strerror(errno));
    d->ld.path = d->cfg.model_path;
    d->ld.prefault = d->cfg.prefault;
    d->ld.tiered = d->cfg.offload_mode == MOE_DAEMON_OFFLOAD_TIERED;
    d->ld.prefetch = d->cfg.prefetch;
    d->ld.tier = (struct moe_offload_opts){
        .host_bytes = d->cfg.host_bytes, .policy = d->cfg.cache_policy,
        .queue_depth = (unsigned)d->cfg.io_queue_depth, .numa = d->cfg.numa,
        .hugepages = d->cfg.hugepages, .force_pread = d->cfg.force_pread,
        .prefetch_auto = d->cfg.prefetch == MOE_PREFETCH_AUTO,
        .trace_path = d->cfg.trace_path[0] ? d->cfg.trace_path : NULL};
    int rc = pthread_create(&d->ld.thread, NULL, loader_main, &d->ld);
    if (rc)
        return moe_err(-rc, "cannot start the model loader thread: %s", strerror(rc));
    d->loading = true;
    return 0;
}

/* "ODP on, layers 5,6,7 beta 0.5, protect 0.02" */
static void log_prune(const struct moed *d, const struct moe_engine_limits *el)
{
    char buf[512];
    size_t n = 0;
    for (int32_t l = 0; l < d->model->cfg.n_layers && n < sizeof(buf) - 32; l++)
        if (el->prune.beta[l] > 0)
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s%d:%g", n ? "," : "", (int)l,
                                  (double)el->prune.beta[l]);
    moe_log(MOE_LOG_INFO, "online dynamic pruning: %s by default; layer:beta %s; protect %g",
            el->prune_on ? "on" : "off", n ? buf : "none", (double)el->prune.protect_fraction);
}

static char *token_text(const struct moe_tokenizer *t, int32_t id)
{
    size_t n;
    const char *s = t && id >= 0 ? moe_tokenizer_token_text(t, id, &n) : NULL;
    return s ? strndup(s, n) : NULL;
}

/* The model's own chat template, compiled for ipc to render chat with; one
 * that does not compile leaves chat to the built-in format it looks like
 * (returned), with a warning. Returns the format to use otherwise. */
static int use_jinja(struct moed *d, const char *text, const char *how)
{
    char err[300];
    int rc = moe_jinja_compile(text, &d->chat_jinja, err, sizeof(err));
    if (rc == -ENOMEM)
        return moe_err(rc, "out of memory");
    if (rc) {
        int f = moe_daemon_chat_fallback(text);
        if (d->cfg.chat_template == MOE_DAEMON_CHAT_JINJA ||
            (d->cfg.chat_template_file && d->cfg.chat_template_file[0]))
            return moe_err(-EINVAL, "chat template (%s): %s", how, err);
        moe_log(MOE_LOG_WARN, "chat template (%s) cannot be used: %s; chat uses the built-in "
                "format %s instead", how, err, moe_chat_template_name((enum moe_chat_template)f));
        return f;
    }
    const struct moe_tokenizer *t = d->model->tok;
    d->chat_bos = token_text(t, t ? moe_tokenizer_bos(t) : -1);
    d->chat_eos = token_text(t, t ? moe_tokenizer_eos(t) : -1);
    moe_ipc_set_chat_template(d->ipc, d->chat_jinja, d->chat_bos, d->chat_eos);
    moe_log(MOE_LOG_INFO, "chat template: the model's own, Jinja (%s)", how);
    return MOE_CHAT_CHATML; /* the engine's, never used: ipc renders chat */
}

/* the model is open: pool, engine, and the ipc gets it */
static int finish_start(struct moed *d)
{
    const char *how;
    int rc;
    d->model_ctx = d->model->cfg.max_ctx;
    moe_daemon_notify("STATUS=Starting the engine");
    rc = moe_pool_create(d->cfg.threads, &d->pool);
    if (rc)
        return rc;
    char *tmpl = NULL;
    int format;
    rc = moe_daemon_chat_template(&d->cfg, &format, &tmpl, &how);
    if (rc < 0)
        return rc;
    if (format == MOE_DAEMON_CHAT_JINJA && (format = use_jinja(d, tmpl, how)) < 0) {
        free(tmpl);
        return format;
    }
    free(tmpl);
    d->chat_template = format;
    struct moe_engine_limits el;
    moe_daemon_engine_limits(&d->cfg, d->model_ctx, d->chat_template, &el);
    if (el.max_ctx != d->cfg.max_ctx)
        moe_log(MOE_LOG_INFO, "context per sequence: %d (the model's is %d, [batching] max_ctx %d)",
                (int)el.max_ctx, (int)d->model_ctx, d->cfg.max_ctx);
    if (!d->chat_jinja)
        moe_log(MOE_LOG_INFO, "chat template: %s (%s)",
                moe_chat_template_name((enum moe_chat_template)d->chat_template), how);
    char why[256];
    if (moe_daemon_prune(&d->cfg, d->model, &el.prune, &el.prune_on, why, sizeof(why)))
        return moe_err(-EINVAL, "%s: %s", d->config_path ? d->config_path : "config", why);
    log_prune(d, &el);
    rc = moe_engine_create(d->model, d->pool, &el, &d->engine);
    if (rc)
        return rc;
    moe_ipc_set_engine(d->ipc, d->engine);
    /* what is loaded, for `moectl ps` and dashboards: an info-style gauge */
    char esc[600], labels[900];
    moe_metric_label_escape(d->model_name, esc, sizeof(esc));
    snprintf(labels, sizeof(labels),
             "model=\"%s\",arch=\"%s\",layers=\"%d\",experts=\"%d\",top_k=\"%d\",ctx=\"%d\"", esc,
             moe_arch_name(d->model->cfg.arch), (int)d->model->cfg.n_layers,
             (int)d->model->cfg.n_experts, (int)d->model->cfg.top_k, (int)el.max_ctx);
    moe_metric_set(moe_metric_gauge("moed_model_info", "The model served (value 1), in labels",
                                    labels), 1);
    d->ready = true;
    moe_metric_set(d->m_ready, 1);
    moe_log(MOE_LOG_INFO, "ready: serving %s (%s, %d layers, %d experts, top-%d) with %d threads "
                          "in %.1f s",
            d->model_name, moe_arch_name(d->model->cfg.arch), (int)d->model->cfg.n_layers,
            (int)d->model->cfg.n_experts, (int)d->model->cfg.top_k, moe_pool_threads(d->pool),
            moe_now_s() - d->t_start);
    moe_daemon_notify("READY=1\nSTATUS=Serving %s", d->model_name);
    return 0;
}

static int on_loaded(struct moed *d)
{
    uint64_t n;
    if (read(d->ld.efd, &n, sizeof(n)) != sizeof(n))
        return 0; /* spurious */
    pthread_join(d->ld.thread, NULL);
    d->loading = false;
    if (d->ld.rc) {
        moe_log(MOE_LOG_ERR, "cannot load the model: %s", d->ld.err);
        moe_daemon_notify("STATUS=Cannot load the model: %s", d->ld.err);
        return EXIT_FAIL;
    }
    d->model = d->ld.model;
    moe_metric_set(d->m_load_s, moe_now_s() - d->t_start);
    moe_log(MOE_LOG_INFO, "model %s loaded in %.1f s", d->cfg.model_path,
            moe_now_s() - d->t_start);
    moe_err_clear();
    if (finish_start(d)) {
        moe_log(MOE_LOG_ERR, "cannot start the engine: %s", moe_err_msg());
        moe_daemon_notify("STATUS=Cannot start the engine: %s", moe_err_msg());
        return EXIT_FAIL;
    }
    return 0;
}

static void register_metrics(struct moed *d)
{
    d->m_ready = moe_metric_gauge("moed_ready", "1 once the model is loaded and serving", NULL);
    d->m_load_s = moe_metric_gauge("moed_model_load_seconds",
                                   "Seconds from start until the model was loaded", NULL);
    d->m_reload_ok = moe_metric_counter("moed_config_reloads_total",
                                        "Configuration reloads (SIGHUP, POST /admin/reload)",
                                        "result=\"ok\"");
    d->m_reload_err = moe_metric_counter("moed_config_reloads_total",
                                         "Configuration reloads (SIGHUP, POST /admin/reload)",
                                         "result=\"error\"");
}

static int setup_fds(struct moed *d)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    /* blocked before any thread exists, so every thread inherits the mask
     * and the signals arrive only through the signalfd */
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    d->sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (d->sfd < 0)
        return moe_err(-errno, "signalfd: %s", strerror(errno));

    d->watchdog_usec = moe_daemon_watchdog_usec();
    if (d->watchdog_usec && !d->cfg.watchdog) {
        moe_log(MOE_LOG_WARN, "WatchdogSec= is set but [daemon] watchdog = no: systemd will "
                              "stop moed when the watchdog expires");
        d->watchdog_usec = 0;
    }
    uint64_t tick = TICK_USEC;
    if (d->watchdog_usec)
        tick = MOE_MIN(tick, d->watchdog_usec / 2);
    if (tick < 1000)
        tick = 1000;
    d->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (d->tfd < 0)
        return moe_err(-errno, "timerfd: %s", strerror(errno));
    struct itimerspec its = {
        .it_interval = {(time_t)(tick / 1000000), (long)(tick % 1000000) * 1000},
        .it_value = {(time_t)(tick / 1000000), (long)(tick % 1000000) * 1000},
    };
    if (timerfd_settime(d->tfd, 0, &its, NULL))
        return moe_err(-errno, "timerfd_settime: %s", strerror(errno));
    if (d->watchdog_usec)
        moe_log(MOE_LOG_INFO, "watchdog: WATCHDOG=1 every %.1f s (WatchdogSec=%.1f s)",
                (double)tick / 1e6, (double)d->watchdog_usec / 1e6);

    d->reload_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (d->reload_efd < 0)
        return moe_err(-errno, "eventfd: %s", strerror(errno));
    return 0;
}

static int start_ipc(struct moed *d)
{
    struct moe_ipc_config ic;
    int rc;

    memset(&ic, 0, sizeof(ic));
    rc = moe_daemon_listen_fds(ic.listen_fds, MOE_IPC_MAX_LISTEN, &ic.n_listen_fds);
    if (rc)
        return rc;
    ic.socket_path = d->cfg.socket;
    ic.listen = d->cfg.listen;
    ic.socket_mode = (mode_t)d->cfg.socket_mode;
    ic.socket_gid = d->cfg.socket_group.gid;
    ic.model_name = d->model_name;
    ic.threads = d->cfg.http_threads;
    moe_daemon_ipc_limits(&d->cfg, &ic.limits);
    if (ic.n_listen_fds)
        moe_log(MOE_LOG_INFO, "socket activation: serving on the %zu socket(s) systemd passed "
                              "(modes and groups come from moed.socket; [daemon] listen, socket, "
                              "socket_mode and socket_group are not used)", ic.n_listen_fds);
    moe_err_clear();
    rc = moe_ipc_start(&ic, &d->ipc);
    if (rc)
        return rc;
    moe_ipc_set_reload_hook(d->ipc, reload_hook, d);
    return 0;
}

/* ---- stop ----------------------------------------------------------------------- */

static void shutdown_all(struct moed *d)
{
    pthread_mutex_lock(&d->mu);
    d->stopping = true;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->mu);

    if (d->engine) {
        struct moe_engine_stats es;
        moe_engine_get_stats(d->engine, &es);
        moe_daemon_notify("STOPPING=1\nSTATUS=Draining %d running and %d queued requests (up to "
                          "%.0f s)\nEXTEND_TIMEOUT_USEC=%llu",
                          (int)es.running, (int)es.queue_depth, d->cfg.drain_timeout,
                          (unsigned long long)((d->cfg.drain_timeout + 15) * 1e6));
        moe_log(MOE_LOG_INFO, "stopping: draining %d running and %d queued requests (up to %g s)",
                (int)es.running, (int)es.queue_depth, d->cfg.drain_timeout);
    } else {
        moe_daemon_notify("STOPPING=1\nSTATUS=Stopping");
    }
    if (d->ipc)
        moe_ipc_stop_accepting(d->ipc);
    if (d->engine) {
        double t0 = moe_now_s();
        struct moe_engine_stats es;
        moe_engine_drain(d->engine, d->cfg.drain_timeout);
        moe_engine_get_stats(d->engine, &es);
        moe_log(MOE_LOG_INFO, "drained in %.1f s: %llu requests done, %llu cancelled, %llu failed",
                moe_now_s() - t0, (unsigned long long)es.requests_done,
                (unsigned long long)es.requests_cancelled, (unsigned long long)es.requests_failed);
    }
    if (d->ipc)
        moe_ipc_stop(d->ipc);
    d->ipc = NULL;
    moe_engine_free(d->engine);
    d->engine = NULL;
    moe_jinja_free(d->chat_jinja); /* the ipc that rendered with it has stopped */
    free(d->chat_bos);
    free(d->chat_eos);
    d->chat_jinja = NULL, d->chat_bos = d->chat_eos = NULL;
    moe_pool_free(d->pool);
    d->pool = NULL;
    if (d->loading) {
        /* moe_model_open cannot be interrupted; the process ends under it */
        moe_log(MOE_LOG_INFO, "stopping while the model loads");
        pthread_detach(d->ld.thread);
    } else {
        moe_model_free(d->model);
        d->model = NULL;
    }
}

/* ---- the daemon --------------------------------------------------------------------- */

static int run(const char *config_path, struct moe_daemon_setting *set, size_t n_set)
{
    static struct moed d; /* static: a detached loader may outlive run() */
    int code = 0, rc;

    d.config_path = config_path;
    d.settings = set;
    d.n_settings = n_set;
    d.sfd = d.tfd = d.reload_efd = d.ld.efd = -1;
    pthread_mutex_init(&d.hook_serial, NULL);
    pthread_mutex_init(&d.mu, NULL);
    pthread_cond_init(&d.cond, NULL);
    d.t_start = moe_now_s();

    rc = moe_daemon_config_load_with(config_path, set, n_set, &d.cfg);
    if (rc) {
        moe_log(MOE_LOG_ERR, "%s", moe_err_msg());
        moe_daemon_notify("STATUS=Configuration error: %s", moe_err_msg());
        return rc == -EINVAL ? EXIT_CONFIG : EXIT_FAIL;
    }
    moe_log_set_level((enum moe_log_level)d.cfg.log_level);
    moe_daemon_model_name(&d.cfg, d.model_name, sizeof(d.model_name));
    moe_log(MOE_LOG_INFO, "moed %s starting (%s%s, pid %d)", MOED_VERSION,
            config_path ? "config " : "no configuration file", config_path ? config_path : "",
            (int)getpid());
    for (size_t i = 0; i < n_set; i++)
        moe_log(MOE_LOG_INFO, "%s: [%s] %s = %s", set[i].origin, set[i].key->section,
                set[i].key->name, set[i].key == moe_daemon_config_find("daemon", "api_key")
                                      ? "(hidden)" : set[i].value);
    moe_daemon_notify("STATUS=Starting (moed %s)", MOED_VERSION);
    register_metrics(&d);

    if ((rc = setup_fds(&d))) {
        moe_log(MOE_LOG_ERR, "%s", moe_err_msg());
        code = EXIT_FAIL;
        goto out;
    }
    moe_daemon_regroup_activated(d.cfg.socket_group.gid);
    if ((rc = start_ipc(&d))) {
        moe_log(MOE_LOG_ERR, "cannot start the API server: %s",
                moe_err_msg()[0] ? moe_err_msg() : strerror(-rc));
        moe_daemon_notify("STATUS=Cannot start the API server: %s", moe_err_msg());
        code = EXIT_FAIL;
        goto out;
    }
    moe_log(MOE_LOG_INFO, "loading model %s", d.cfg.model_path);
    moe_daemon_notify("STATUS=Loading model %s\nEXTEND_TIMEOUT_USEC=%llu", d.cfg.model_path,
                      (unsigned long long)EXTEND_USEC);
    if ((rc = start_loader(&d))) {
        moe_log(MOE_LOG_ERR, "%s", moe_err_msg());
        code = EXIT_FAIL;
        goto out;
    }

    for (;;) {
        struct pollfd pfd[4] = {
            {.fd = d.sfd, .events = POLLIN},
            {.fd = d.tfd, .events = POLLIN},
            {.fd = d.reload_efd, .events = POLLIN},
            {.fd = d.loading ? d.ld.efd : -1, .events = POLLIN},
        };
        if (poll(pfd, 4, -1) < 0) {
            if (errno == EINTR)
                continue;
            moe_log(MOE_LOG_ERR, "poll: %s", strerror(errno));
            code = EXIT_FAIL;
            break;
        }
        if (pfd[3].revents & POLLIN) {
            if ((code = on_loaded(&d)))
                break;
        }
        if (pfd[1].revents & POLLIN)
            on_tick(&d);
        if (pfd[2].revents & POLLIN)
            serve_reload_hook(&d);
        if (pfd[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            bool stop = false;
            while (read(d.sfd, &si, sizeof(si)) == sizeof(si)) {
                if (si.ssi_signo == SIGHUP) {
                    char msg[1024];
                    do_reload(&d, "SIGHUP", msg, sizeof(msg));
                } else {
                    moe_log(MOE_LOG_INFO, "%s from pid %u: stopping",
                            si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM", si.ssi_pid);
                    stop = true;
                }
            }
            if (stop)
                break;
        }
    }

out:
    shutdown_all(&d);
    if (d.sfd >= 0)
        close(d.sfd);
    if (d.tfd >= 0)
        close(d.tfd);
    if (d.reload_efd >= 0)
        close(d.reload_efd);
    if (!d.loading) {
        if (d.ld.efd >= 0)
            close(d.ld.efd);
        moe_daemon_config_free(&d.cfg);
    }
    moe_log(MOE_LOG_INFO, "moed stopped (exit status %d)", code);
    return code;
}

/* ---- command line --------------------------------------------------------------------- */

static int check_config(const char *path, const struct moe_daemon_setting *set, size_t n)
{
    struct moe_daemon_config c;
    char why[1200];
    int rc = moe_daemon_config_load_with(path, set, n, &c);
    if (rc) {
        fprintf(stderr, "%s\n", moe_err_msg());
        return rc == -EINVAL ? EXIT_CONFIG : EXIT_FAIL;
    }
    /* a file that parses but names no model would only fail once started */
    rc = moe_daemon_check_model(&c, why, sizeof(why));
    moe_daemon_config_free(&c);
    if (rc) {
        fprintf(stderr, "%s: %s\n", path, why);
        return EXIT_CONFIG;
    }
    printf("%s: OK\n", path);
    return 0;
}

static int dump_config(const char *path, const struct moe_daemon_setting *set, size_t n)
{
    struct moe_daemon_config c;
    int rc = moe_daemon_config_load_with(path, set, n, &c);
    if (rc) {
        fprintf(stderr, "%s\n", moe_err_msg());
        return rc == -EINVAL ? EXIT_CONFIG : EXIT_FAIL;
    }
    rc = moe_daemon_config_dump(&c, path, stdout);
    moe_daemon_config_free(&c);
    if (!rc && fflush(stdout))
        rc = moe_err(-EIO, "stdout: %s", strerror(errno));
    if (rc) {
        fprintf(stderr, "moed: %s\n", moe_err_msg());
        return EXIT_FAIL;
    }
    return 0;
}

static void help(void)
{
    fputs(help_text, stdout);
    fputs("\nCONFIGURATION FLAGS AND VARIABLES\n"
          "    Every INI key is also a flag and an environment variable, written as\n"
          "    in the file (--KEY VALUE or --KEY=VALUE; booleans yes/no). A key whose\n"
          "    name only one section has is --KEY and MOED_KEY; every key is also\n"
          "    --SECTION-KEY and MOED_SECTION_KEY. Precedence, lowest first: the\n"
          "    built-in defaults, the INI file, MOED_* variables, flags (the last of\n"
          "    a repeated flag wins). A bad value exits 1 naming the flag or variable.\n",
          stdout);
    moe_daemon_config_help(stdout);
    fflush(stdout);
}

enum { O_CHECK = 256, O_DUMP, O_MODEL, O_KEY = 1024 };

extern char **environ;

int main(int argc, char **argv)
{
    static const struct option fixed[] = {
        {"config", required_argument, 0, 'c'},
        {"check-config", required_argument, 0, O_CHECK},
        {"dump-config", no_argument, 0, O_DUMP},
        {"model", required_argument, 0, 'm'},
        {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},
    };
    size_t n_keys;
    const struct moe_daemon_key *table = moe_daemon_config_table(&n_keys);
    const struct moe_daemon_key *k_path = moe_daemon_config_find("model", "path");
    const struct moe_daemon_key *k_socket = moe_daemon_config_find("daemon", "socket");
    /* the fixed options, then every key's flags, generated from the table */
    size_t n_fixed = MOE_ARRAY_SIZE(fixed), n_opt = n_fixed;
    struct option *longopts = calloc(n_fixed + 2 * n_keys + 1, sizeof(*longopts));
    char (*names)[MOE_DAEMON_NAME_MAX] = calloc(2 * n_keys, sizeof(*names));
    size_t cap = 2 * n_keys + (size_t)argc + 2; /* environment (one per key), flags, socket */
    struct moe_daemon_setting *set = calloc(cap, sizeof(*set));
    if (!longopts || !names || !set) {
        fprintf(stderr, "moed: out of memory\n");
        return EXIT_FAIL;
    }
    memcpy(longopts, fixed, sizeof(fixed));
    for (size_t i = 0; i < n_keys; i++)
        for (int form = MOE_DAEMON_NAME_SHORT; form <= MOE_DAEMON_NAME_LONG; form++)
            if (moe_daemon_key_flag(&table[i], form, names[2 * i + form], MOE_DAEMON_NAME_MAX))
                longopts[n_opt++] = (struct option){names[2 * i + form], required_argument, 0,
                                                    O_KEY + (int)i};

    /* the environment first: flags come after it and win */
    size_t n_env = 0, n_set;
    if (moe_daemon_env_settings(environ, set, n_keys * 2, &n_env)) {
        fprintf(stderr, "moed: %s\n", moe_err_msg());
        return EXIT_CONFIG;
    }
    n_set = n_env;
    const char *config = NULL, *check = NULL, *model = NULL;
    bool dump = false;
    int opt, li;

    opterr = 0;
    while ((li = -1, opt = getopt_long(argc, argv, ":c:m:hV", longopts, &li)) != -1) {
        switch (opt) {
        case 'c': config = optarg; break;
        case O_CHECK: check = optarg; break;
        case O_DUMP: dump = true; break;
        case 'm':
            model = optarg;
            set[n_set++] = (struct moe_daemon_setting){k_path, optarg, ""};
            snprintf(set[n_set - 1].origin, MOE_DAEMON_NAME_MAX, "%s",
                     li >= 0 ? "--model" : "-m");
            break;
        case 'h': help(); return 0;
        case 'V': printf("moed %s\n", MOED_VERSION); return 0;
        case ':':
            fprintf(stderr, "moed: %s needs an argument (moed --help)\n", argv[optind - 1]);
            return EXIT_FAIL;
        case '?':
            fprintf(stderr, "moed: unknown option '%s' (moed --help)\n", argv[optind - 1]);
            return EXIT_FAIL;
        default: {
            const struct moe_daemon_key *k = &table[opt - O_KEY];
            set[n_set] = (struct moe_daemon_setting){k, optarg, ""};
            snprintf(set[n_set].origin, MOE_DAEMON_NAME_MAX, "--%s", longopts[li].name);
            if (k == k_path)
                model = optarg;
            n_set++;
        }
        }
    }
    if (optind < argc) { /* moed MODEL, as llama-server -m MODEL */
        if (optind + 1 < argc) {
            fprintf(stderr, "moed: unexpected argument '%s' after the model (moed --help)\n",
                    argv[optind + 1]);
            return EXIT_FAIL;
        }
        model = argv[optind];
        set[n_set] = (struct moe_daemon_setting){k_path, model, "MODEL (argument)"};
        n_set++;
    }
    if (check && (dump || config)) {
        fprintf(stderr, "moed: --check-config takes the file itself, without --config or "
                        "--dump-config (moed --help)\n");
        return EXIT_FAIL;
    }
    if (check)
        return check_config(check, set, n_set);
    /* a model on the command line and no --config: no file at all, as
     * llama-server; else the file (the system one by default) */
    const char *path = config ? config : model ? NULL : MOE_DAEMON_DEFAULT_CONFIG;
    if (dump)
        return dump_config(config, set, n_set);
    bool socket_set = false;
    for (size_t i = 0; i < n_set; i++)
        socket_set |= set[i].key == k_socket;
    static char sock[256];
    if (!path && !socket_set) { /* a first run by an ordinary user: no root needed */
        moe_daemon_default_socket(sock, sizeof(sock));
        set[n_set++] = (struct moe_daemon_setting){k_socket, sock, "default without a file"};
    }
    int rc = run(path, set, n_set);
    free(set);
    free(names);
    free(longopts);
    return rc;
}
