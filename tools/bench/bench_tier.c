/* moe-bench's tiered-memory measurements (offload/):
 *
 *   moe-bench tier  --model PACK [--budgets 100,50,25] [--policy P] [--tokens N]
 *                   [--prompt-tokens P] [--warmup W] [--prefetch auto|yes|no] [--pread]
 *                   [--queue-depth Q] [--rounds R] [--threads T] [--no-mapped]
 *       batch-1 decode with the experts in a host tier of each budget (percent of
 *       the pack's expert bytes), read with O_DIRECT, and of the plainly mapped
 *       pack, in turn for R rounds (medians): tok/s, hit rate, bytes read per
 *       token, prefetch use; each budget's ratio to the mapped pack and to 100%.
 *       --no-mapped leaves the mapped pack out (a process holding only the tiers,
 *       whose memory tier_bench.sh measures).
 *   moe-bench trace --model PACK --text FILE [--start-char C] [--tokens N] --out FILE
 *       decodes the text token by token (the cache reset every 256 tokens) with the
 *       experts tiered, recording every access and prefetch guess (offload_trace.h).
 *   moe-bench cache --trace FILE [--budgets 10,25,50,75]
 *       replays the second half of a trace against every policy and Belady's MIN at
 *       each budget (percent of all experts, in equal slots as the tier keeps them),
 *       each policy on demand alone and with the trace's prefetch guesses fetched
 *       ahead (reads per access counts both); the static policy ranks experts by
 *       their accesses in the first half.
 * Each prints one JSON object on stdout; cache also a table on stderr. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "common/common.h"
#include "format/format_pack.h"
#include "model/model.h"
#include "offload/offload.h"
#include "offload/offload_prefetch.h"
#include "offload/offload_sim.h"
#include "offload/offload_trace.h"
#include "tools/bench/bench.h"

#define MAX_BUDGETS 16
#define EXIT_USAGE 2

struct tier_opts {
    const char *model, *text, *out, *trace;
    double budgets[MAX_BUDGETS];
    int n_budgets;
    enum moe_cache_policy_kind policy;
    int64_t tokens, prompt_tokens, warmup, start_char, queue_depth, threads, rounds;
    enum moe_prefetch_mode prefetch;
    bool pread, no_mapped;
};

static int parse_budgets(const char *s, struct tier_opts *o)
{
    o->n_budgets = 0;
    while (*s && o->n_budgets < MAX_BUDGETS) {
        char *end;
        double v = strtod(s, &end);
        if (end == s || !(v > 0 && v <= 100)) {
            fprintf(stderr, "moe-bench: --budgets: '%s' is not a list of percentages in (0, 100]\n", s);
            return -1;
        }
        o->budgets[o->n_budgets++] = v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') {
            fprintf(stderr, "moe-bench: --budgets: unexpected '%s'\n", end);
            return -1;
        }
    }
    return 0;
}

static int parse(int argc, char **argv, struct tier_opts *o, const char *defaults)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},        {"text", required_argument, 0, 'x'},
        {"out", required_argument, 0, 'o'},          {"trace", required_argument, 0, 'T'},
        {"budgets", required_argument, 0, 'b'},      {"policy", required_argument, 0, 'y'},
        {"tokens", required_argument, 0, 'n'},       {"prompt-tokens", required_argument, 0, 'p'},
        {"warmup", required_argument, 0, 'w'},       {"start-char", required_argument, 0, 'c'},
        {"queue-depth", required_argument, 0, 'q'},  {"threads", required_argument, 0, 't'},
        {"no-prefetch", no_argument, 0, 'N'},        {"pread", no_argument, 0, 'R'},
        {"prefetch", required_argument, 0, 'P'},    {"no-mapped", no_argument, 0, 'M'},
        {"rounds", required_argument, 0, 'r'},
        {0, 0, 0, 0}};
    memset(o, 0, sizeof(*o));
    o->policy = MOE_CACHE_LFRU;
    o->tokens = 32;
    o->prompt_tokens = 16;
    o->warmup = 16;
    o->queue_depth = 32;
    o->rounds = 3;
    o->prefetch = MOE_PREFETCH_AUTO;
    parse_budgets(defaults, o);
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        const char *name = moe_cli_opt_name(longopts, c);
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'x': o->text = optarg; break;
        case 'o': o->out = optarg; break;
        case 'T': o->trace = optarg; break;
        case 'b': if (parse_budgets(optarg, o) < 0) return -1; break;
        case 'y':
            if (moe_cache_policy_parse(optarg, &o->policy) < 0) {
                fprintf(stderr, "moe-bench: --policy: %s\n", moe_err_msg());
                return -1;
            }
            break;
        case 'n': if (moe_cli_integer("moe-bench", name, optarg, 1, 1 << 24, &o->tokens)) return -1; break;
        case 'p': if (moe_cli_integer("moe-bench", name, optarg, 1, 1 << 16, &o->prompt_tokens)) return -1; break;
        case 'w': if (moe_cli_integer("moe-bench", name, optarg, 0, 1 << 16, &o->warmup)) return -1; break;
        case 'c': if (moe_cli_integer("moe-bench", name, optarg, 0, INT64_MAX, &o->start_char)) return -1; break;
        case 'q': if (moe_cli_integer("moe-bench", name, optarg, 1, 4096, &o->queue_depth)) return -1; break;
        case 't': if (moe_cli_integer("moe-bench", name, optarg, 0, 1024, &o->threads)) return -1; break;
        case 'r': if (moe_cli_integer("moe-bench", name, optarg, 1, 64, &o->rounds)) return -1; break;
        case 'N': o->prefetch = MOE_PREFETCH_NO; break;
        case 'P':
            if (moe_prefetch_mode_parse(optarg, &o->prefetch) < 0) {
                fprintf(stderr, "moe-bench: --prefetch: %s\n", moe_err_msg());
                return -1;
            }
            break;
        case 'R': o->pread = true; break;
        case 'M': o->no_mapped = true; break;
        case ':': fprintf(stderr, "moe-bench: option '%s' needs a value\n", argv[optind - 1]); return -1;
        default: fprintf(stderr, "moe-bench: unknown option '%s'\n", argv[optind - 1]); return -1;
        }
    }
    return 0;
}

static size_t pack_expert_bytes(const struct moe_pack *p)
{
    size_t b = 0;
    for (size_t i = 0; i < moe_pack_expert_count(p); i++)
        b += moe_pack_expert_at(p, i)->size;
    return b;
}

/* the pack opened with its experts in a host tier of host_bytes */
static int open_tiered(const struct tier_opts *o, double pct, const char *trace,
                       struct moe_model **out, size_t *budget)
{
    struct moe_model *m;
    int rc = moe_model_open_flags(o->model, MOE_MODEL_OPEN_EXPERTS_ON_READ, &m);
    if (rc < 0)
        return rc;
    if (!moe_model_pack(m)) {
        moe_model_free(m);
        return moe_err(-EINVAL, "%s: not a moed pack (tiering needs one: moe-pack)", o->model);
    }
    size_t total = pack_expert_bytes(moe_model_pack(m));
    *budget = (size_t)ceil(pct / 100.0 * (double)total);
    struct moe_offload_opts oo = {.host_bytes = *budget, .policy = o->policy,
                                  .queue_depth = (unsigned)o->queue_depth, .numa = MOE_NUMA_LOCAL,
                                  .hugepages = true, .force_pread = o->pread, .trace_path = trace,
                                  .prefetch_auto = o->prefetch == MOE_PREFETCH_AUTO};
    double *score = NULL;
    if (o->policy == MOE_CACHE_STATIC) {
        score = malloc((size_t)m->cfg.n_layers * m->cfg.n_experts * sizeof(double));
        if (!score || (rc = moe_model_expert_scores(m, score)) < 0) {
            free(score);
            moe_model_free(m);
            return score ? rc : moe_err(-ENOMEM, "out of memory");
        }
        oo.score = score;
    }
    struct moe_offload *off;
    rc = moe_offload_open(moe_model_pack(m), m->cfg.n_layers, m->cfg.n_experts, m->cfg.top_k,
                          &oo, &off);
    free(score);
    if (rc == 0)
        rc = moe_model_use_offload(m, off, o->prefetch != MOE_PREFETCH_NO);
    if (rc < 0) {
        moe_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

static int argmax(const float *v, int32_t n)
{
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (v[i] > v[b])
            b = i;
    return b;
}

static int decode_tokens(struct moe_session *s, float *logits, int32_t V, int64_t n)
{
    int rc = 0;
    for (int64_t i = 0; rc == 0 && i < n; i++) {
        int32_t tok = argmax(logits, V);
        rc = moe_session_forward(s, &tok, 1, logits, false);
    }
    return rc;
}

/* One decode setting of the tier run: the mapped pack (budget < 0) or a tier. */
struct tier_run {
    double pct;
    struct moe_model *m;
    struct moe_session *s;
    float *logits;
    size_t budget;
    double rate[64];
    struct moe_offload_stats a, z; /* over the timed tokens */
};

static int tier_run_open(const struct tier_opts *o, struct moe_pool *pool, struct tier_run *r)
{
    int rc = r->pct < 0 ? moe_model_open(o->model, &r->m)
                        : open_tiered(o, r->pct, NULL, &r->m, &r->budget);
    if (rc < 0)
        return rc;
    if (r->pct < 0)
        moe_model_prefault(r->m);
    int32_t V = r->m->cfg.vocab;
    int64_t ctx = o->prompt_tokens + o->warmup + o->tokens * o->rounds + 1;
    int32_t *prompt = malloc((size_t)o->prompt_tokens * sizeof(int32_t));
    if (!(r->logits = malloc((size_t)V * sizeof(float))) || !prompt) {
        free(prompt);
        return moe_err(-ENOMEM, "out of memory");
    }
    for (int64_t i = 0; i < o->prompt_tokens; i++)
        prompt[i] = (int32_t)((i * 7919 + 13) % V);
    if ((rc = moe_session_create(r->m, pool, (int32_t)ctx, &r->s)) == 0)
        rc = moe_session_forward(r->s, prompt, (int32_t)o->prompt_tokens, r->logits, false);
    free(prompt);
    if (rc == 0) /* the tier fills (at 100%: every expert ends up resident) */
        rc = decode_tokens(r->s, r->logits, V, o->warmup);
    return rc;
}

static double median_of(const double *v, int n)
{
    double t[64];
    memcpy(t, v, (size_t)n * sizeof(double));
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            double x = t[j];
            t[j] = t[j - 1];
            t[j - 1] = x;
        }
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* The mapped pack and every budget decode in turn, --rounds times, so they
 * share the machine's state (this VM's memory bandwidth drifts by 2x). */
static int cmd_tier(const struct tier_opts *o, struct moe_pool *pool)
{
    int n = o->n_budgets + 1, rc = 0;
    struct tier_run runs[MAX_BUDGETS + 1] = {{0}};
    runs[0].pct = -1;
    for (int i = 1; i < n; i++)
        runs[i].pct = o->budgets[i - 1];
    int first = o->no_mapped; /* runs[0], the mapped pack, left out */
    for (int i = first; i < n && rc == 0; i++)
        rc = tier_run_open(o, pool, &runs[i]);
    for (int i = 1; i < n && rc == 0; i++)
        moe_offload_get_stats(moe_model_offload(runs[i].m), &runs[i].a);
    for (int r = 0; r < o->rounds && rc == 0; r++)
        for (int i = first; i < n && rc == 0; i++) {
            double t0 = moe_now_s();
            rc = decode_tokens(runs[i].s, runs[i].logits, runs[i].m->cfg.vocab, o->tokens);
            runs[i].rate[r] = (double)o->tokens / (moe_now_s() - t0);
        }
    json_t *arr = json_array();
    double mapped = rc == 0 && !first ? median_of(runs[0].rate, (int)o->rounds) : 0;
    for (int i = 1; i < n && rc == 0; i++) {
        struct tier_run *t = &runs[i];
        moe_offload_get_stats(moe_model_offload(t->m), &t->z);
        double tps = median_of(t->rate, (int)o->rounds);
        double to_mapped = mapped > 0 ? tps / mapped : 0.0; /* 0: no mapped run */
        uint64_t hits = t->z.hits - t->a.hits, misses = t->z.misses - t->a.misses;
        double hr = hits + misses ? (double)hits / (double)(hits + misses) : 0.0;
        double ntok = (double)o->tokens * (double)o->rounds;
        json_t *rounds = json_array();
        for (int r = 0; r < o->rounds; r++)
            json_array_append_new(rounds, json_real(t->rate[r]));
        json_array_append_new(arr, json_pack(
            "{s:f, s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:I, s:I, s:I, s:f, s:f, s:f, s:f, s:b, "
            "s:b, s:o}",
            "budget_percent", t->pct, "host_bytes", (json_int_t)t->budget,
            "arena_bytes", (json_int_t)t->z.arena_bytes, "slots", (json_int_t)t->z.slots,
            "slot_classes", (json_int_t)t->z.slot_classes,
            "decode_tok_s", tps, "ratio_to_mapped", to_mapped, "hit_rate", hr,
            "bytes_read_per_token", (double)(t->z.bytes_read - t->a.bytes_read) / ntok,
            "prefetch_issued", (json_int_t)(t->z.prefetch_issued - t->a.prefetch_issued),
            "prefetch_used", (json_int_t)(t->z.prefetch_used - t->a.prefetch_used),
            "prefetch_skipped", (json_int_t)(t->z.prefetch_skipped - t->a.prefetch_skipped),
            "prefetch_precision", t->z.prefetch_precision, "read_s_per_expert",
            t->z.read_s_per_expert, "layer_gap_s", t->z.layer_gap_s,
            "read_wait_s_per_token", (t->z.wait_s - t->a.wait_s) / ntok, "io_uring", t->z.uring,
            "hugepages", t->z.hugepages, "rounds", rounds));
        fprintf(stderr, "moe-bench tier: %5.1f%%: %.2f tok/s (%.2f of mapped), hit rate %.3f\n",
                t->pct, tps, to_mapped, hr);
    }
    for (int i = 0; i < n; i++) {
        moe_session_free(runs[i].s);
        moe_model_free(runs[i].m);
        free(runs[i].logits);
    }
    if (rc < 0) {
        fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
        json_decref(arr);
        return 1;
    }
    /* ratio_to_full: each budget against the tier holding every expert (100%) */
    double full = 0;
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *e = json_array_get(arr, i);
        if (json_real_value(json_object_get(e, "budget_percent")) >= 100.0)
            full = json_real_value(json_object_get(e, "decode_tok_s"));
    }
    for (size_t i = 0; full > 0 && i < json_array_size(arr); i++) {
        json_t *e = json_array_get(arr, i);
        json_object_set_new(e, "ratio_to_full",
                            json_real(json_real_value(json_object_get(e, "decode_tok_s")) / full));
    }
    json_t *j = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:f, s:o}", "model", o->model, "policy",
                          moe_cache_policy_name(o->policy), "prefetch",
                          moe_prefetch_mode_name(o->prefetch),
                          "tokens", (json_int_t)o->tokens, "rounds", (json_int_t)o->rounds,
                          "threads", (json_int_t)moe_pool_threads(pool), "mapped_decode_tok_s",
                          mapped, "budgets", arr);
    bench_print_json(j);
    return 0;
}

static int cmd_trace(const struct tier_opts *o, struct moe_pool *pool)
{
    if (!o->text || !o->out) {
        fprintf(stderr, "moe-bench trace: --text FILE and --out FILE are required\n");
        return EXIT_USAGE;
    }
    struct moe_model *m = NULL;
    struct moe_session *s = NULL;
    size_t budget;
    char *text = NULL;
    size_t len, n = 0;
    int32_t *ids = NULL;
    float *logits = NULL;
    int rc = open_tiered(o, 100.0, o->out, &m, &budget);
    if (rc == 0 && !m->tok)
        rc = moe_err(-EINVAL, "%s has no tokenizer", o->model);
    if (rc == 0)
        rc = moe_read_text_file(o->text, &text, &len);
    if (rc == 0) {
        size_t off = bench_utf8_offset(text, len, o->start_char);
        rc = moe_tokenizer_encode(m->tok, text + off, len - off, false, &ids, &n);
    }
    enum { WINDOW = 256 };
    if (rc == 0 && !(logits = malloc((size_t)m->cfg.vocab * sizeof(float))))
        rc = moe_err(-ENOMEM, "out of memory");
    if (rc == 0)
        rc = moe_session_create(m, pool, WINDOW, &s);
    size_t limit = o->tokens > 0 && (size_t)o->tokens < n ? (size_t)o->tokens : n;
    double t0 = moe_now_s();
    for (size_t i = 0; rc == 0 && i < limit; i++) {
        if (i % WINDOW == 0)
            moe_session_reset(s);
        rc = moe_session_forward(s, &ids[i], 1, logits, false);
    }
    double dt = moe_now_s() - t0;
    moe_session_free(s);
    moe_model_free(m); /* closes the trace */
    free(text);
    free(ids);
    free(logits);
    if (rc < 0) {
        fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
        return 1;
    }
    bench_print_json(json_pack("{s:s, s:s, s:I, s:f}", "model", o->model, "trace", o->out,
                               "tokens", (json_int_t)limit, "seconds", dt));
    return 0;
}

static int cmd_cache(const struct tier_opts *o)
{
    if (!o->trace) {
        fprintf(stderr, "moe-bench cache: --trace FILE is required\n");
        return EXIT_USAGE;
    }
    struct moe_trace t, replay;
    if (moe_trace_read(o->trace, &t) < 0) {
        fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
        return EXIT_USAGE;
    }
    /* the first half ranks experts for the static hot set; all policies
     * replay the second half */
    size_t K = (size_t)t.layers * t.experts, half = t.n_ev / 2;
    while (half < t.n_ev && t.ev[half].predict)
        half++;
    double *score = calloc(K, sizeof(double));
    replay = t;
    replay.ev = t.ev + half;
    replay.n_ev = t.n_ev - half;
    for (size_t i = 0; score && i < half; i++)
        for (uint32_t j = 0; !t.ev[i].predict && j < t.ev[i].n; j++)
            score[(size_t)t.ev[i].layer * t.experts + t.experts_of[t.ev[i].first + j]] += 1;
    uint32_t need = 0;
    for (size_t i = 0; i < replay.n_ev; i++)
        if (!replay.ev[i].predict)
            need = MOE_MAX(need, replay.ev[i].n);
    json_t *rows = json_array();
    int rc = score ? 0 : moe_err(-ENOMEM, "out of memory");
    fprintf(stderr, "budget   slots  prefetch      lru      lfu     lfru   static   cyclic   belady\n");
    for (int b = 0; b < o->n_budgets && rc == 0; b++) {
        uint32_t slots = (uint32_t)MOE_MAX((double)need, round(o->budgets[b] / 100.0 * (double)K));
        json_t *row = json_pack("{s:f, s:I}", "budget_percent", o->budgets[b], "slots",
                                (json_int_t)slots);
        struct moe_sim_result r[2][MOE_SIM_BELADY + 1];
        /* each policy on demand alone, then with the trace's guesses fetched
         * ahead (as prefetch = yes runs); Belady's MIN, the bound, on demand alone */
        for (int pf = 0; pf < 2 && rc == 0; pf++) {
            fprintf(stderr, "%5.1f%% %7u %9s", o->budgets[b], slots, pf ? "yes" : "no");
            for (int p = 0; p <= MOE_SIM_BELADY && rc == 0; p++) {
                if (pf && p == MOE_SIM_BELADY) {
                    r[1][p] = r[0][p];
                    fprintf(stderr, " %8s", "");
                    continue;
                }
                if ((rc = moe_sim_run(&replay, p, slots, score, pf, &r[pf][p])) < 0)
                    break;
                fprintf(stderr, " %8.3f", r[pf][p].hit_rate);
            }
            fprintf(stderr, "\n");
        }
        if (rc < 0) {
            json_decref(row);
            break;
        }
        double opt = r[0][MOE_SIM_BELADY].hit_rate;
        json_object_set_new(row, "belady", json_real(opt));
        for (int p = 0; p < MOE_SIM_BELADY; p++) {
            const char *name = moe_cache_policy_name(p);
            json_object_set_new(
                row, name,
                json_pack("{s:f, s:f, s:f, s:f, s:f}", "hit_rate", r[0][p].hit_rate,
                          "gap_points", 100.0 * (opt - r[0][p].hit_rate), "prefetch_hit_rate",
                          r[1][p].hit_rate, "prefetch_gap_points",
                          100.0 * (opt - r[1][p].hit_rate), "prefetch_reads_per_access",
                          r[1][p].reads_per_access));
        }
        json_array_append_new(rows, row);
    }
    double recall, wasted;
    uint64_t events;
    moe_sim_prefetch(&t, &recall, &wasted, &events);
    free(score);
    moe_trace_free(&t);
    if (rc < 0) {
        fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
        json_decref(rows);
        return 1;
    }
    fprintf(stderr, "prefetch recall %.3f, wasted %.3f of predicted (%llu layer steps)\n", recall,
            wasted, (unsigned long long)events);
    bench_print_json(json_pack("{s:s, s:I, s:s, s:o, s:{s:f, s:f, s:I}}", "trace", o->trace,
                               "replayed_events", (json_int_t)(replay.n_ev),
                               "static_scores", "access counts of the trace's first half",
                               "budgets", rows, "prefetch", "recall", recall,
                               "wasted_fraction", wasted, "layer_steps", (json_int_t)events));
    return 0;
}

int bench_tier_main(const char *cmd, int argc, char **argv)
{
    struct tier_opts o;
    bool cache = !strcmp(cmd, "cache");
    if (parse(argc, argv, &o, cache ? "10,25,50,75" : "100,50,25") < 0)
        return EXIT_USAGE;
    if (cache)
        return cmd_cache(&o);
    bool given = false; /* trace: the whole text unless --tokens says */
    for (int i = 1; i < argc; i++)
        given |= !strncmp(argv[i], "--tokens", 8);
    if (!strcmp(cmd, "trace") && !given)
        o.tokens = 0;
    if (!o.model) {
        fprintf(stderr, "moe-bench %s: --model PACK is required\n", cmd);
        return EXIT_USAGE;
    }
    struct moe_pool *pool;
    if (moe_pool_create((int)o.threads, &pool) < 0) {
        fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
        return 1;
    }
    int ret = !strcmp(cmd, "trace") ? cmd_trace(&o, pool) : cmd_tier(&o, pool);
    moe_pool_free(pool);
    return ret;
}
