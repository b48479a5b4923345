/* moe-bench: measurements, each printed as one JSON object on stdout.
 *
 *   moe-bench ppl    --model PATH --text FILE [--window W] [--start-char C] [--max-windows K]
 *   moe-bench decode --model PATH [--tokens N] [--prompt-tokens P]
 *     (both also [--odp-beta B [--odp-layers LIST] [--odp-protect F]] [--top-k K])
 *   moe-bench logits --model PATH --ids "1 2 3" --out FILE     (raw fp32 [n][vocab])
 *   moe-bench greedy --model PATH --ids "1 2 3" [--tokens N]   (greedy continuation ids)
 *   moe-bench gemv   --model PATH [--seconds S]
 *   moe-bench gemv   --rows R --cols C [--formats LIST] [--batch LIST] [--rounds K]
 *                    [--seconds S] [--span-mib M]
 *   moe-bench stats  --model PACK
 *   moe-bench decode-cmp --model A --model B ... [--tokens N] [--rounds R]
 *   moe-bench kv     --model PATH [--text FILE --start-char C] [--window W] [--max-windows K]
 *   moe-bench tier | trace | cache ...   (tiered expert memory: tools/bench/bench_tier.c)
 *   moe-bench io     --model PACK [--queue-depth N] [--seconds S]
 *   moe-bench config --model PATH   (the parsed architecture config, no weights)
 * Common: --threads N. */
#define _GNU_SOURCE /* O_DIRECT */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "common/common.h"
#include "kv/kv.h"
#include "format/format_pack.h"
#include "model/model.h"
#include "offload/offload_host.h"
#include "offload/offload_nvme.h"
#include "quant/quant.h"
#include "quant/quant_qmoe.h"
#include "tools/bench/bench.h"

#define EXIT_USAGE 2

/* The exit status for rc: a bad argument (-EINVAL) or a corrupt model file
 * found while running (-EBADMSG: a tensor holding NaN or inf) is exit 2, as
 * a bad model file at open is; other failures are 1. */
static int bench_exit(int rc)
{
    if (rc >= 0)
        return 0;
    return rc == -EINVAL || rc == -EBADMSG ? EXIT_USAGE : 1;
}

static const char usage[] =
    "usage: moe-bench ppl    --model PATH --text FILE [--window W] [--start-char C] [--max-windows K]\n"
    "       moe-bench decode --model PATH [--tokens N] [--prompt-tokens P]\n"
    "         ppl and decode: [--odp-beta B [--odp-layers LIST] [--odp-protect F]] [--top-k K]\n"
    "       moe-bench logits --model PATH --ids \"ID ...\" --out FILE\n"
    "       moe-bench greedy --model PATH --ids \"ID ...\" [--tokens N]\n"
    "       moe-bench gemv   --model PATH [--seconds S]\n"
    "       moe-bench gemv   --rows R --cols C [--formats LIST] [--batch LIST] [--rounds K]\n"
    "                        [--seconds S] [--span-mib M]\n"
    "       moe-bench stats  --model PACK\n"
    "       moe-bench decode-cmp --model A --model B ... [--tokens N] [--prompt-tokens P] [--rounds R]\n"
    "       moe-bench kv     --model PATH [--text FILE [--start-char C] [--window W] [--max-windows K]] [--long N]\n"
    "       moe-bench tier   --model PACK [--budgets 100,50,25] [--policy lru|lfu|lfru|static|cyclic]\n"
    "                        [--tokens N] [--prompt-tokens P] [--warmup W] [--no-prefetch] [--pread]\n"
    "       moe-bench trace  --model PACK --text FILE [--start-char C] [--tokens N] --out TRACE\n"
    "       moe-bench cache  --trace TRACE [--budgets 10,25,50,75]\n"
    "       moe-bench io     --model PACK [--queue-depth N] [--seconds S]\n"
    "       moe-bench config --model PATH\n"
    "\n"
    "ppl:    perplexity of FILE (from character C on), encoded at once without BOS;\n"
    "        window k feeds tokens [kW, kW+W) with an empty cache and scores\n"
    "        tokens [kW+1, kW+W+1); W defaults to 256.\n"
    "decode: prefill of P tokens (default 64) and batch-1 decode of N tokens\n"
    "        (default 32); reports tokens/s, bytes read per token, the memory\n"
    "        bandwidth measured in the same run and the fraction of that roofline\n"
    "        (median over blocks of 8 tokens, each paired with a bandwidth pass).\n"
    "logits: logits of every position of ID... as raw float32 [n][vocab].\n"
    "greedy: ID... in one pass, then N (default 32) steps through the KV cache,\n"
    "        each the argmax of the last logits (no stop token): {\"ids\": [...]}.\n"
    "gemv:   decode GEMV throughput of each expert format (bf16, q8_0, gq4, qmoe\n"
    "        with random ternary rows at P(0) = 0.85, and the model's own experts)\n"
    "        at the model's expert shapes: weights/s and GB/s of stored bytes.\n"
    "        With --rows/--cols instead of a model: each of --formats (dtype names,\n"
    "        default bf16,q8_0,gq4,mxfp4; random weights through the reference\n"
    "        quantiser) at that shape, for each token count of --batch (default 1;\n"
    "        \"1,8\" also times 8 tokens a matrix, prefill's batched kernel), the\n"
    "        formats interleaved: each of K rounds (--rounds, default 3) times every\n"
    "        format and count for S seconds in turn; the median round of each, in\n"
    "        matrix weights/s and GB/s of stored bytes read (each weight is read once\n"
    "        for all the tokens), and the ratio to the first format. Copies of each\n"
    "        matrix span M MiB (default 256: streamed from memory, as experts are;\n"
    "        0: one copy, cache-resident). A format whose block does not divide C is\n"
    "        timed at C rounded up to it (gq4 at 2880: 2944; \"cols\" says so).\n"
    "stats:  a pack's quantisation record and calibration statistics (MC-MoE:\n"
    "        per layer and expert frequency, routing weight, loss at 1/2/3 bits,\n"
    "        the chosen widths) as JSON.\n"
    "decode-cmp: batch-1 decode of every --model in turn, R rounds (default 3),\n"
    "        (with --odp-beta: each model with pruning off, then on, every round)\n"
    "        so the models share the machine's state; median tok/s of each and\n"
    "        its ratio to the first.\n"
    "kv:     for each KV cache setting (fp32, fp16, KIVI 8/4/2-bit): bytes per token\n"
    "        (--long N: also N tokens through the model with each setting, the last\n"
    "        token's logits against the fp32 cache's: long contexts work)\n"
    "        of one sequence at 4096 tokens, decode attention time (all layers, one\n"
    "        query) at 1k/8k/32k tokens of the model's geometry, timed in one run,\n"
    "        and with --text the perplexity as ppl computes it.\n"
    "tier:   batch-1 decode with the pack's experts in a host tier of each budget\n"
    "        (percent of the expert bytes; O_DIRECT reads, so the page cache plays no\n"
    "        part): tok/s, hit rate, bytes read per token, prefetches used.\n"
    "trace:  records the expert accesses (and prefetch guesses) of decoding TEXT.\n"
    "cache:  replays a trace's second half against lru/lfu/lfru/static and Belady's\n"
    "        optimum at each budget (percent of all experts); static ranks experts by\n"
    "        the first half; plus the prefetch recall of the recorded guesses.\n"
    "odp:    --odp-beta B prunes expert j of a token when p_j < B x p_1 (before\n"
    "        renormalisation) on the layers of --odp-layers (\"2-5,7\"; default the\n"
    "        model's middle layers), protecting the top F (default 0.02) of each\n"
    "        prompt's tokens; --top-k K runs K experts per token (default the\n"
    "        model's). ppl and decode then report the expert activations kept and\n"
    "        removed, and the routing weight removed (\"routing\" object).\n"
    "        --odp-beta pack: the model's own defaults as moed's [router] odp = on\n"
    "        uses them (a pack's fitted per-layer betas, else 0.5 on the middle layers).\n"
    "io:     every expert blob of the pack, in shuffled order (whole passes, for\n"
    "        S seconds, default 1), read through io_uring with O_DIRECT into an\n"
    "        arena at queue depth N (default: 1, 8 and 32 in turn), against a\n"
    "        sequential O_DIRECT pread of the pack's expert range in 4 MiB chunks\n"
    "        timed next to each: GB/s of both and their ratio (target >= 0.8).\n"
    "config: the architecture config as moed parses it (every field, as a pack's\n"
    "        \"config\" object holds it) from PATH: a Hugging Face directory, a\n"
    "        config.json on its own (no weights needed), a GGUF file or a pack.\n"
    "        A config moed refuses exits 2 with a message naming the key.\n"
    "\n"
    "  --threads N   worker threads (default: all cores)\n";

#define MAX_MODELS 8

struct bench_opts {
    const char *model, *text, *ids, *out;
    const char *models[MAX_MODELS];
    int n_models;
    int32_t window, max_windows, tokens, prompt_tokens, threads, rounds, long_ctx;
    int64_t start_char;
    double seconds;
    double odp_beta, odp_protect; /* -1: not given */
    bool odp_pack;                /* --odp-beta pack */
    const char *odp_layers;
    int32_t top_k;                /* 0 = the model's */
    int32_t queue_depth;          /* io; 0 = 1, 8 and 32 */
    int64_t rows, cols;           /* gemv at a shape, without a model */
    const char *formats, *batch;  /* gemv at a shape: dtype names, token counts */
    int64_t span_mib;
};

static int parse_args(int argc, char **argv, struct bench_opts *o)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},       {"text", required_argument, 0, 'x'},
        {"window", required_argument, 0, 'w'},      {"start-char", required_argument, 0, 'c'},
        {"max-windows", required_argument, 0, 'k'}, {"tokens", required_argument, 0, 'n'},
        {"prompt-tokens", required_argument, 0, 'p'}, {"threads", required_argument, 0, 't'},
        {"ids", required_argument, 0, 'i'},         {"out", required_argument, 0, 'o'},
        {"rounds", required_argument, 0, 'r'},      {"seconds", required_argument, 0, 's'},
        {"long", required_argument, 0, 'G'},
        {"odp-beta", required_argument, 0, 'B'},    {"odp-layers", required_argument, 0, 'L'},
        {"odp-protect", required_argument, 0, 'P'}, {"top-k", required_argument, 0, 'K'},
        {"queue-depth", required_argument, 0, 'Q'},
        {"rows", required_argument, 0, 'R'},        {"cols", required_argument, 0, 'C'},
        {"formats", required_argument, 0, 'F'},     {"batch", required_argument, 0, 'N'},
        {"span-mib", required_argument, 0, 'M'},
        {"help", no_argument, 0, 'h'},              {0, 0, 0, 0}};
    memset(o, 0, sizeof(*o));
    o->window = 256;
    o->tokens = 32;
    o->prompt_tokens = 64;
    o->rounds = 3;
    o->seconds = 1.0;
    o->odp_beta = o->odp_protect = -1.0;
    o->span_mib = 256;
    int c;
    int64_t v;
    double d;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        const char *name = moe_cli_opt_name(longopts, c);
        switch (c) {
        case 'm':
            if (o->n_models == MAX_MODELS) {
                fprintf(stderr, "moe-bench: at most %d --model\n", MAX_MODELS);
                return -1;
            }
            o->models[o->n_models++] = optarg;
            o->model = o->models[0];
            break;
        case 'G': if (moe_cli_integer("moe-bench", name, optarg, 2, 1 << 20, &v)) return -1; o->long_ctx = (int32_t)v; break;
        case 'r': if (moe_cli_integer("moe-bench", name, optarg, 1, 100, &v)) return -1; o->rounds = (int32_t)v; break;
        case 's': if (moe_cli_number("moe-bench", name, optarg, 0.01, 600, &d)) return -1; o->seconds = d; break;
        case 'x': o->text = optarg; break;
        case 'i': o->ids = optarg; break;
        case 'o': o->out = optarg; break;
        case 'w': if (moe_cli_integer("moe-bench", name, optarg, 1, 1 << 20, &v)) return -1; o->window = (int32_t)v; break;
        case 'c': if (moe_cli_integer("moe-bench", name, optarg, 0, INT64_MAX, &v)) return -1; o->start_char = v; break;
        case 'k': if (moe_cli_integer("moe-bench", name, optarg, 0, 1 << 30, &v)) return -1; o->max_windows = (int32_t)v; break;
        case 'n': if (moe_cli_integer("moe-bench", name, optarg, 1, 1 << 20, &v)) return -1; o->tokens = (int32_t)v; break;
        case 'p': if (moe_cli_integer("moe-bench", name, optarg, 1, 1 << 20, &v)) return -1; o->prompt_tokens = (int32_t)v; break;
        case 't': if (moe_cli_integer("moe-bench", name, optarg, 0, 1024, &v)) return -1; o->threads = (int32_t)v; break;
        case 'B':
            if (!strcmp(optarg, "pack")) { /* the model's own defaults, as moed uses them */
                o->odp_pack = true;
                o->odp_beta = 0;
                break;
            }
            if (moe_cli_number("moe-bench", name, optarg, 0, 1, &d)) return -1;
            o->odp_beta = d;
            break;
        case 'P': if (moe_cli_number("moe-bench", name, optarg, 0, 1, &d)) return -1; o->odp_protect = d; break;
        case 'L': o->odp_layers = optarg; break;
        case 'K': if (moe_cli_integer("moe-bench", name, optarg, 1, 16, &v)) return -1; o->top_k = (int32_t)v; break;
        case 'Q': if (moe_cli_integer("moe-bench", name, optarg, 1, 4096, &v)) return -1; o->queue_depth = (int32_t)v; break;
        case 'R': if (moe_cli_integer("moe-bench", name, optarg, 1, 1 << 20, &o->rows)) return -1; break;
        case 'C': if (moe_cli_integer("moe-bench", name, optarg, 1, 1 << 20, &o->cols)) return -1; break;
        case 'F': o->formats = optarg; break;
        case 'N': o->batch = optarg; break;
        case 'M': if (moe_cli_integer("moe-bench", name, optarg, 0, 1 << 16, &o->span_mib)) return -1; break;
        case 'h': fputs(usage, stdout); exit(0);
        case ':': fprintf(stderr, "moe-bench: option '%s' needs a value\n", argv[optind - 1]); return -1;
        default: fprintf(stderr, "moe-bench: unknown option '%s'\n%s", argv[optind - 1], usage); return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "moe-bench: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->rows != !o->cols) {
        fprintf(stderr, "moe-bench: --rows and --cols go together\n");
        return -1;
    }
    if (o->rows && o->model) {
        fprintf(stderr, "moe-bench: --rows/--cols time a shape without a model: drop --model\n");
        return -1;
    }
    if (!o->model && !o->rows) {
        fprintf(stderr, "moe-bench: --model is required\n%s", usage);
        return -1;
    }
    return 0;
}

void bench_print_json(json_t *obj)
{
    char *s = json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(10));
    if (s)
        printf("%s\n", s);
    free(s);
    json_decref(obj);
}

/* log-softmax of the target, in double */
static double nll_of(const float *logits, int32_t vocab, int32_t target)
{
    float mx = logits[0];
    for (int32_t i = 1; i < vocab; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0.0;
    for (int32_t i = 0; i < vocab; i++)
        sum += exp((double)logits[i] - mx);
    return log(sum) - ((double)logits[target] - mx);
}

/* byte offset of the c-th UTF-8 character (Python str index) */
size_t bench_utf8_offset(const char *s, size_t len, int64_t c)
{
    size_t i = 0;
    for (int64_t k = 0; k < c && i < len; k++) {
        i++;
        while (i < len && ((unsigned char)s[i] & 0xc0) == 0x80)
            i++;
    }
    return i;
}

/* ---- routing options of ppl and decode: online dynamic pruning, top-k ------------------ */

struct bench_routing {
    struct moe_prune prune;
    bool prune_on;
    struct moe_router_stats *stats;
};

/* The pruning and top-k of --odp-beta / --odp-layers / --odp-protect / --top-k. */
static int routing_setup(const struct bench_opts *o, const struct moe_model *m,
                         struct bench_routing *r)
{
    const struct moe_config *c = &m->cfg;
    memset(r, 0, sizeof(*r));
    if (!(r->stats = calloc(1, sizeof(*r->stats))))
        return moe_err(-ENOMEM, "out of memory");
    if (o->top_k > c->top_k)
        return moe_err(-EINVAL, "--top-k %d is above the model's top_k (%d)", o->top_k, c->top_k);
    if (o->odp_pack) {
        bool from_pack;
        int rc = moe_model_prune_defaults(m, 0.5f, &r->prune, &from_pack);
        if (rc < 0)
            return rc;
        if (o->odp_protect >= 0)
            r->prune.protect_fraction = (float)o->odp_protect;
        r->prune_on = true;
        return 0;
    }
    if (o->odp_beta < 0) {
        if (o->odp_layers || o->odp_protect >= 0)
            return moe_err(-EINVAL, "--odp-layers and --odp-protect need --odp-beta");
        return 0;
    }
    bool sel[MOE_MAX_LAYERS];
    char why[160];
    if (!o->odp_layers)
        moe_router_prune_auto_layers(c->n_layers, sel);
    else if (moe_router_parse_layers(o->odp_layers, c->n_layers, sel, why, sizeof(why)) < 0)
        return moe_err(-EINVAL, "--odp-layers: %s", why);
    for (int32_t l = 0; l < c->n_layers; l++)
        r->prune.beta[l] = sel[l] && !c->layer_dense[l] ? (float)o->odp_beta : 0.0f;
    r->prune.protect_fraction = o->odp_protect >= 0 ? (float)o->odp_protect
                                                    : MOE_PRUNE_PROTECT_DEFAULT;
    r->prune_on = o->odp_beta > 0;
    return 0;
}

static void routing_attach(const struct bench_opts *o, struct bench_routing *r,
                           struct moe_session *s)
{
    s->prune = r->prune_on ? &r->prune : NULL;
    s->top_k = o->top_k;
    s->stats = r->stats;
}

/* "routing": the settings, then activations against the model's full top-k
 * (expert_activations_full), kept ones, the fraction removed (by ODP and by
 * --top-k together: experts are all the same size, so this is also the
 * fraction of activated expert weights removed), ODP's share, the routing
 * probability mass removed, and per layer the fraction ODP pruned. */
static void routing_report(const struct bench_opts *o, const struct bench_routing *r,
                           const struct moe_model *m, json_t *j)
{
    const struct moe_config *c = &m->cfg;
    json_t *rt = json_object(), *layers = json_array(), *pl = json_array();
    uint64_t full = 0, kept = 0, pruned = 0;
    double mass = 0.0, mass_pruned = 0.0;
    char list[1024] = "";
    size_t len = 0;
    for (int32_t l = 0; l < c->n_layers; l++) {
        const struct moe_router_layer_stats *st = &r->stats->layer[l];
        if (c->layer_dense[l])
            continue;
        full += st->tokens * (uint64_t)c->top_k;
        kept += st->kept;
        pruned += st->pruned;
        mass += st->mass_topk;
        mass_pruned += st->mass_pruned;
        if (r->prune_on && r->prune.beta[l] > 0) {
            json_array_append_new(layers, json_integer(l));
            if (len < sizeof(list) - 8)
                len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%d", len ? "," : "", l);
        }
        json_array_append_new(pl, json_real(st->kept + st->pruned
                                                ? (double)st->pruned / (double)(st->kept + st->pruned)
                                                : 0.0));
    }
    if (o->odp_pack) { /* per-layer betas */
        json_t *bl = json_array();
        for (int32_t l = 0; l < c->n_layers; l++)
            json_array_append_new(bl, json_real(r->prune.beta[l]));
        json_object_set_new(rt, "odp_beta", json_string("pack"));
        json_object_set_new(rt, "odp_beta_per_layer", bl);
    } else {
        json_object_set_new(rt, "odp_beta", json_real(r->prune_on ? o->odp_beta : 0.0));
    }
    json_object_set_new(rt, "odp_layers", layers);
    json_object_set_new(rt, "odp_protect_fraction", json_real(r->prune.protect_fraction));
    json_object_set_new(rt, "top_k", json_integer(o->top_k ? o->top_k : c->top_k));
    json_object_set_new(rt, "expert_activations_full", json_integer((json_int_t)full));
    json_object_set_new(rt, "expert_activations_kept", json_integer((json_int_t)kept));
    json_object_set_new(rt, "expert_activations_pruned", json_integer((json_int_t)pruned));
    json_object_set_new(rt, "activations_removed_fraction",
                        json_real(full ? 1.0 - (double)kept / (double)full : 0.0));
    json_object_set_new(rt, "odp_pruned_fraction",
                        json_real(kept + pruned ? (double)pruned / (double)(kept + pruned) : 0.0));
    json_object_set_new(rt, "routing_mass_removed_fraction",
                        json_real(mass > 0 ? mass_pruned / mass : 0.0));
    json_object_set_new(rt, "odp_pruned_fraction_per_layer", pl);
    json_object_set_new(j, "routing", rt);
}

static void routing_free(struct bench_routing *r)
{
    free(r->stats);
    r->stats = NULL;
}

static int cmd_ppl(const struct bench_opts *o, struct moe_model *m, struct moe_pool *pool)
{
    if (!o->text) {
        fprintf(stderr, "moe-bench ppl: --text FILE is required\n");
        return EXIT_USAGE;
    }
    if (!m->tok) {
        fprintf(stderr, "moe-bench ppl: %s has no tokenizer\n", o->model);
        return EXIT_USAGE;
    }
    char *text;
    size_t len;
    if (moe_read_text_file(o->text, &text, &len) < 0) {
        fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
        return EXIT_USAGE;
    }
    size_t off = bench_utf8_offset(text, len, o->start_char);
    int32_t *ids = NULL;
    size_t n = 0;
    double t0 = moe_now_s();
    int rc = moe_tokenizer_encode(m->tok, text + off, len - off, false, &ids, &n);
    free(text);
    if (rc < 0) {
        fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
        return 1;
    }
    double t_tok = moe_now_s() - t0;
    int32_t W = o->window, V = m->cfg.vocab;
    struct moe_session *s = NULL;
    struct bench_routing rt = {0};
    float *logits = malloc((size_t)W * (size_t)V * sizeof(float));
    if (!logits || (rc = moe_session_create(m, pool, W, &s)) < 0 ||
        (rc = routing_setup(o, m, &rt)) < 0) {
        fprintf(stderr, "moe-bench: %s\n", logits ? moe_err_msg() : "out of memory");
        moe_session_free(s);
        routing_free(&rt);
        free(ids);
        free(logits);
        return rc == -EINVAL ? EXIT_USAGE : 1;
    }
    routing_attach(o, &rt, s);
    double nll = 0.0;
    int64_t scored = 0;
    int32_t windows = 0;
    t0 = moe_now_s();
    for (size_t start = 0; start + 1 < n; start += (size_t)W) {
        if (o->max_windows && windows == o->max_windows)
            break;
        int32_t len_w = (int32_t)MOE_MIN((size_t)W, n - 1 - start); /* feed; targets shift by 1 */
        moe_session_reset(s);
        if ((rc = moe_session_forward(s, ids + start, len_w, logits, true)) < 0) {
            fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
            break;
        }
        for (int32_t t = 0; t < len_w; t++)
            nll += nll_of(logits + (size_t)t * V, V, ids[start + t + 1]);
        scored += len_w;
        windows++;
    }
    double secs = moe_now_s() - t0;
    moe_session_free(s);
    free(logits);
    free(ids);
    if (rc < 0) {
        routing_free(&rt);
        return bench_exit(rc);
    }
    json_t *j = json_object();
    json_object_set_new(j, "ppl", json_real(exp(nll / (double)scored)));
    json_object_set_new(j, "nll", json_real(nll / (double)scored));
    json_object_set_new(j, "tokens", json_integer(scored));
    json_object_set_new(j, "encoded_tokens", json_integer((json_int_t)n));
    json_object_set_new(j, "window", json_integer(W));
    json_object_set_new(j, "windows", json_integer(windows));
    json_object_set_new(j, "tokenize_seconds", json_real(t_tok));
    json_object_set_new(j, "seconds", json_real(secs));
    json_object_set_new(j, "tok_s", json_real((double)scored / secs));
    routing_report(o, &rt, m, j);
    routing_free(&rt);
    bench_print_json(j);
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) /* sorts v */
{
    if (n == 0)
        return 0.0;
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* fixed, varied token ids for speed runs: routing spreads over the experts */
static void bench_ids(int32_t *ids, int32_t n, int32_t vocab)
{
    for (int32_t i = 0; i < n; i++)
        ids[i] = (int32_t)(((int64_t)i * 7919 + 13) % vocab);
}

static int32_t argmax(const float *v, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

static int cmd_decode(const struct bench_opts *o, struct moe_model *m, struct moe_pool *pool)
{
    int32_t P = o->prompt_tokens, N = o->tokens, V = m->cfg.vocab;
    struct moe_session *s = NULL;
    struct bench_routing rt = {0};
    int32_t *prompt = malloc((size_t)P * sizeof(int32_t));
    float *logits = malloc((size_t)V * sizeof(float));
    int rc = !prompt || !logits ? moe_err(-ENOMEM, "out of memory")
                                : moe_session_create(m, pool, P + N + 1, &s);
    if (rc == 0)
        rc = routing_setup(o, m, &rt);
    if (rc < 0)
        goto fail;
    routing_attach(o, &rt, s);
    bench_ids(prompt, P, V);

    /* warm-up: every weight page in memory, every buffer sized */
    moe_model_prefault(m);
    if ((rc = moe_session_forward(s, prompt, P, logits, false)) < 0)
        goto fail;
    int32_t tok = argmax(logits, V);
    if ((rc = moe_session_forward(s, &tok, 1, logits, false)) < 0)
        goto fail;

    moe_session_reset(s);
    double t0 = moe_now_s();
    if ((rc = moe_session_forward(s, prompt, P, logits, false)) < 0)
        goto fail;
    double t_prefill = moe_now_s() - t0;
    memset(rt.stats, 0, sizeof(*rt.stats)); /* the routing report: decode tokens only */

    /* This machine's bandwidth moves from minute to minute, so decode runs in
     * blocks, each right after a bandwidth pass: the roofline fraction is the
     * median over blocks of (bytes read / block time) / (that pass's GB/s). */
    const struct moe_config *c = &m->cfg;
    double w_bytes = (double)moe_model_active_bytes(m);
    double kv_row = 2.0 * c->n_layers * c->n_kv_heads * c->head_dim * sizeof(float);
    enum { BLOCK = 8, MAX_BLOCKS = 256 };
    double frac[MAX_BLOCKS], bws[MAX_BLOCKS], t_decode = 0.0, bytes_total = 0.0;
    int n_blocks = 0;
    for (int32_t done = 0; done < N && n_blocks < MAX_BLOCKS; n_blocks++) {
        int32_t k = MOE_MIN(BLOCK, N - done);
        double bw = moe_mem_read_bandwidth_gbs(pool, (size_t)512 << 20, 1);
        double bytes = 0.0;
        t0 = moe_now_s();
        for (int32_t i = 0; i < k; i++) {
            int32_t tok = argmax(logits, V);
            bytes += w_bytes + kv_row * (double)(P + done + i + 1); /* weights + cache read */
            if ((rc = moe_session_forward(s, &tok, 1, logits, false)) < 0)
                goto fail;
        }
        double dt = moe_now_s() - t0;
        t_decode += dt;
        bytes_total += bytes;
        bws[n_blocks] = bw;
        frac[n_blocks] = bw > 0 ? bytes / dt / 1e9 / bw : 0.0;
        done += k;
    }
    double decode_tok_s = N / t_decode, prefill_tok_s = P / t_prefill;

    json_t *j = json_object();
    json_object_set_new(j, "model", json_string(o->model));
    json_object_set_new(j, "threads", json_integer(moe_pool_threads(pool)));
    json_object_set_new(j, "isa", json_string(moe_isa_name(moe_isa_best())));
    json_object_set_new(j, "prompt_tokens", json_integer(P));
    json_object_set_new(j, "decode_tokens", json_integer(N));
    json_object_set_new(j, "prefill_tok_s", json_real(prefill_tok_s));
    json_object_set_new(j, "decode_tok_s", json_real(decode_tok_s));
    json_object_set_new(j, "prefill_over_decode", json_real(prefill_tok_s / decode_tok_s));
    json_object_set_new(j, "bytes_per_token", json_real(bytes_total / N));
    json_object_set_new(j, "bandwidth_gbs", json_real(median(bws, n_blocks)));
    json_object_set_new(j, "achieved_gbs", json_real(bytes_total / t_decode / 1e9));
    json_object_set_new(j, "roofline_fraction", json_real(median(frac, n_blocks)));
    json_object_set_new(j, "roofline_blocks", json_integer(n_blocks));
    routing_report(o, &rt, m, j);
    bench_print_json(j);
    rc = 0;
fail:
    if (rc < 0)
        fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
    routing_free(&rt);
    moe_session_free(s);
    free(prompt);
    free(logits);
    return bench_exit(rc);
}

/* --ids "1 2 3" (spaces or commas) -> a malloc'd array; 0, or EXIT_USAGE after a message */
static int parse_ids(const char *cmd, const char *text, int32_t **out, size_t *n_out)
{
    size_t cap = strlen(text) / 2 + 1, n = 0;
    int32_t *ids = malloc(cap * sizeof(int32_t));
    const char *p = text;
    while (ids) {
        char *end;
        while (*p == ' ' || *p == ',')
            p++;
        if (!*p)
            break;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || n == cap || errno || v < 0 || v > INT32_MAX) {
            fprintf(stderr, "moe-bench %s: --ids: not a list of token ids: '%s'\n", cmd, text);
            free(ids);
            return EXIT_USAGE;
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    if (!ids || n == 0) {
        fprintf(stderr, "moe-bench %s: %s\n", cmd, ids ? "--ids is empty" : "out of memory");
        free(ids);
        return ids ? EXIT_USAGE : 1;
    }
    *out = ids;
    *n_out = n;
    return 0;
}

static int cmd_logits(const struct bench_opts *o, struct moe_model *m, struct moe_pool *pool)
{
    if (!o->ids || !o->out) {
        fprintf(stderr, "moe-bench logits: --ids and --out are required\n");
        return EXIT_USAGE;
    }
    int32_t *ids;
    size_t n;
    int ret = parse_ids("logits", o->ids, &ids, &n);
    if (ret)
        return ret;
    struct moe_session *s = NULL;
    float *logits = malloc(n * (size_t)m->cfg.vocab * sizeof(float));
    int rc = logits ? moe_session_create(m, pool, (int32_t)n, &s) : moe_err(-ENOMEM, "out of memory");
    if (rc == 0)
        rc = moe_session_forward(s, ids, (int32_t)n, logits, true);
    if (rc == 0) {
        FILE *f = fopen(o->out, "wb");
        size_t want = n * (size_t)m->cfg.vocab;
        if (!f || fwrite(logits, sizeof(float), want, f) != want)
            rc = moe_err(-EIO, "%s: cannot write: %s", o->out, strerror(errno));
        if (f && fclose(f) != 0 && rc == 0)
            rc = moe_err(-EIO, "%s: cannot write", o->out);
    }
    if (rc < 0)
        fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
    moe_session_free(s);
    free(logits);
    free(ids);
    return bench_exit(rc);
}

/* greedy: the prompt in one forward pass, then N single-token steps through
 * the KV cache, each taking the argmax (lowest id on a tie); no stop token */
static int cmd_greedy(const struct bench_opts *o, struct moe_model *m, struct moe_pool *pool)
{
    if (!o->ids) {
        fprintf(stderr, "moe-bench greedy: --ids is required\n");
        return EXIT_USAGE;
    }
    int32_t *ids;
    size_t n;
    int ret = parse_ids("greedy", o->ids, &ids, &n);
    if (ret)
        return ret;
    int32_t N = o->tokens, V = m->cfg.vocab;
    struct moe_session *s = NULL;
    float *logits = malloc((size_t)V * sizeof(float));
    int32_t *gen = malloc((size_t)N * sizeof(int32_t));
    int rc = logits && gen ? moe_session_create(m, pool, (int32_t)n + N, &s)
                           : moe_err(-ENOMEM, "out of memory");
    if (rc == 0)
        rc = moe_session_forward(s, ids, (int32_t)n, logits, false);
    for (int32_t i = 0; rc == 0 && i < N; i++) {
        gen[i] = argmax(logits, V);
        if (i + 1 < N)
            rc = moe_session_forward(s, &gen[i], 1, logits, false);
    }
    if (rc == 0) {
        json_t *j = json_object(), *arr = json_array();
        for (int32_t i = 0; i < N; i++)
            json_array_append_new(arr, json_integer(gen[i]));
        json_object_set_new(j, "model", json_string(o->model));
        json_object_set_new(j, "prompt_tokens", json_integer((json_int_t)n));
        json_object_set_new(j, "ids", arr);
        bench_print_json(j);
    } else {
        fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
    }
    moe_session_free(s);
    free(logits);
    free(gen);
    free(ids);
    return bench_exit(rc);
}

/* ---- gemv: expert-format kernel throughput ------------------------------------------ */

struct gemv_set {
    struct moe_weight *w; /* copies, together well past the last-level cache */
    const struct moe_weight **ptr; /* &w[i], for gemv_rate */
    int n;
    void *mem;
};

/* Copies of one matrix until they span bytes_min (so each pass streams from
 * memory, as experts do), at most 512. */
static int gemv_set_make(const struct moe_weight *proto, size_t bytes_min, struct gemv_set *set)
{
    size_t nb = moe_weight_bytes(proto), stride = MOE_ALIGN_UP(nb, (size_t)4096);
    int n = (int)MOE_MIN((bytes_min + nb - 1) / nb, (size_t)512);
    set->mem = aligned_alloc(4096, stride * (size_t)n);
    set->w = calloc((size_t)n, sizeof(*set->w));
    set->ptr = calloc((size_t)n, sizeof(*set->ptr));
    if (!set->mem || !set->w || !set->ptr)
        return moe_err(-ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        uint8_t *dst = (uint8_t *)set->mem + stride * (size_t)i;
        memcpy(dst, proto->data, nb);
        set->w[i] = *proto;
        set->w[i].data = dst;
        set->ptr[i] = &set->w[i];
    }
    set->n = n;
    return 0;
}

static void gemv_set_free(struct gemv_set *set)
{
    free(set->mem);
    free(set->w);
    free(set->ptr);
}

/* weights/s of moe_matmul(n = 1) over the matrices ws[0..n), best of passes
 * within secs; *gbs the stored bytes read per second in that pass */
static double gemv_rate(struct moe_pool *pool, const struct moe_weight *const *ws, int n,
                        double secs, double *gbs)
{
    int64_t max_cols = 1, max_rows = 1;
    for (int i = 0; i < n; i++) {
        max_cols = MOE_MAX(max_cols, ws[i]->cols);
        max_rows = MOE_MAX(max_rows, ws[i]->rows);
    }
    float *x = malloc((size_t)max_cols * sizeof(float)), *y = malloc((size_t)max_rows * sizeof(float));
    for (int64_t i = 0; x && i < max_cols; i++)
        x[i] = (float)((i * 37) % 17) / 17.0f - 0.5f;
    double best = 0.0, best_gbs = 0.0, t_end = moe_now_s() + secs;
    do {
        double t0 = moe_now_s(), weights = 0.0, bytes = 0.0;
        for (int i = 0; x && y && i < n; i++) {
            moe_matmul(pool, ws[i], x, 1, y);
            weights += (double)ws[i]->rows * (double)ws[i]->cols;
            bytes += (double)moe_weight_bytes(ws[i]);
        }
        double dt = moe_now_s() - t0;
        if (weights / dt > best) {
            best = weights / dt;
            best_gbs = bytes / dt / 1e9;
        }
    } while (moe_now_s() < t_end);
    free(x);
    free(y);
    *gbs = best_gbs;
    return best;
}

static uint64_t bench_rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* A random matrix of one dtype (plain formats through from_f32). */
static int make_plain(int dtype, int64_t rows, int64_t cols, struct moe_weight *w, void **mem)
{
    const struct moe_dtype_traits *t = moe_dtype_traits(dtype);
    size_t rb = moe_dtype_row_bytes(dtype, cols);
    float *row = malloc((size_t)cols * sizeof(float));
    *mem = malloc(rb * (size_t)rows);
    if (!t || !rb || !row || !*mem) {
        free(row);
        return moe_err(-EINVAL, "cannot build a %s matrix of %lld x %lld", moe_dtype_name(dtype),
                       (long long)rows, (long long)cols);
    }
    uint64_t s = 88172645463325252ull;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++)
            row[c] = (float)(bench_rng(&s) % 2001) / 1000.0f - 1.0f;
        t->from_f32(row, (uint8_t *)*mem + (size_t)r * rb, cols);
    }
    free(row);
    *w = (struct moe_weight){dtype, rows, cols, rb, *mem, 0, NULL};
    return 0;
}

/* Random ternary rows with P(0) = p0, in the QMoE format. */
static int make_qmoe(const struct moe_qmoe_encoder *enc, const void *side, int64_t rows,
                     int64_t cols, double p0, struct moe_weight *w, void **mem)
{
    uint8_t *digits = malloc((size_t)rows * (size_t)cols), *levels = malloc((size_t)rows * 2);
    size_t cap = moe_qmoe_matrix_bound(rows, cols);
    *mem = malloc(cap);
    int rc = !digits || !levels || !*mem ? moe_err(-ENOMEM, "out of memory") : 0;
    if (rc == 0) {
        uint64_t s = 0x2545F4914F6CDD1Dull;
        uint64_t zero_cut = (uint64_t)(p0 * 1e6);
        for (size_t i = 0; i < (size_t)rows * (size_t)cols; i++) {
            uint64_t v = bench_rng(&s) % 1000000;
            digits[i] = v < zero_cut ? 0 : (uint8_t)(1 + (v & 1));
        }
        for (int64_t r = 0; r < rows; r++) {
            levels[2 * r] = 200;
            levels[2 * r + 1] = 210;
        }
        size_t nb = moe_qmoe_matrix_encode(enc, digits, levels, 0.05f, rows, cols, *mem, cap);
        rc = moe_qmoe_view(*mem, nb, rows, cols, side, w);
    }
    free(digits);
    free(levels);
    return rc;
}

/* The dictionary every random qmoe matrix here is coded with (QMoE's P(0)),
 * as an encoder and the decode table the kernels read. */
static int qmoe_codec(struct moe_qmoe_encoder **enc, void **side)
{
    uint64_t *table = malloc(MOE_QMOE_DICT_SIZE * sizeof(uint64_t));
    int rc = table ? 0 : moe_err(-ENOMEM, "out of memory");
    *enc = NULL;
    *side = NULL;
    if (rc == 0) {
        moe_qmoe_dict_build(MOE_QMOE_P_ZERO, table);
        rc = moe_qmoe_side_create(table, MOE_QMOE_DICT_SIZE * sizeof(uint64_t), side);
    }
    if (rc == 0)
        rc = moe_qmoe_encoder_create(table, enc);
    free(table);
    return rc;
}

static void qmoe_codec_free(struct moe_qmoe_encoder *enc, void *side)
{
    moe_qmoe_encoder_free(enc);
    if (side)
        moe_qmoe_side_free(side);
}

static int cmd_gemv(const struct bench_opts *o, struct moe_model *m, struct moe_pool *pool)
{
    const struct moe_config *c = &m->cfg;
    int32_t l0 = 0;
    while (l0 < c->n_layers && c->layer_dense[l0])
        l0++;
    if (l0 == c->n_layers) {
        fprintf(stderr, "moe-bench gemv: %s has no MoE layer\n", o->model);
        return EXIT_USAGE;
    }
    const struct moe_expert_weights *e0 = &m->layers[l0].experts[0];
    int64_t shapes[2][2] = {{e0->gate.rows, e0->gate.cols}, {e0->down.rows, e0->down.cols}};
    size_t span = (size_t)256 << 20; /* well past the L3 of any CPU here */
    void *side = NULL;
    struct moe_qmoe_encoder *enc = NULL; /* one dictionary for every qmoe matrix */
    int rc = qmoe_codec(&enc, &side);
    json_t *res = json_array();
    for (int si = 0; si < 2 && rc == 0; si++) {
        int64_t rows = shapes[si][0], cols = shapes[si][1];
        const char *names[] = {"bf16", "q8_0", "gq4", "qmoe-p0.85"};
        for (int f = 0; f < 4 && rc == 0; f++) {
            struct moe_weight w;
            void *mem = NULL;
            if (f < 3) {
                int dt = f == 0 ? MOE_DTYPE_BF16 : (f == 1 ? MOE_DTYPE_Q8_0 : MOE_DTYPE_GQ4);
                rc = make_plain(dt, rows, cols, &w, &mem);
            } else {
                rc = make_qmoe(enc, side, rows, cols, 0.85, &w, &mem);
            }
            struct gemv_set set = {0};
            if (rc == 0 && (rc = gemv_set_make(&w, span, &set)) == 0) {
                double gbs, rate = gemv_rate(pool, set.ptr, set.n, o->seconds, &gbs);
                json_array_append_new(res, json_pack("{s:s, s:[I,I], s:f, s:f, s:f}", "format",
                    names[f], "shape", (json_int_t)rows, (json_int_t)cols, "weights_per_s", rate,
                    "gbs", gbs, "bits_per_weight",
                    8.0 * (double)moe_weight_bytes(&w) / ((double)rows * (double)cols)));
            }
            gemv_set_free(&set);
            free(mem);
        }
    }
    /* the model's own experts as they are stored: all experts of all layers */
    const struct moe_weight **ws = NULL;
    int n_ws = 0;
    if (rc == 0 && !(ws = calloc((size_t)c->n_layers * (size_t)c->n_experts * 3, sizeof(*ws))))
        rc = moe_err(-ENOMEM, "out of memory");
    for (int32_t l = 0; rc == 0 && l < c->n_layers; l++)
        for (int32_t e = 0; !c->layer_dense[l] && e < c->n_experts; e++) {
            ws[n_ws++] = &m->layers[l].experts[e].gate;
            ws[n_ws++] = &m->layers[l].experts[e].up;
            ws[n_ws++] = &m->layers[l].experts[e].down;
        }
    if (rc == 0) {
        moe_model_prefault(m);
        double gbs, rate = gemv_rate(pool, ws, n_ws, o->seconds, &gbs);
        json_array_append_new(res, json_pack("{s:s, s:s, s:f, s:f, s:f}", "format", "model",
            "dtype", moe_dtype_name(e0->gate.dtype), "weights_per_s", rate, "gbs", gbs,
            "bits_per_weight", 8.0 * gbs * 1e9 / rate));
    }
    free(ws);
    qmoe_codec_free(enc, side);
    if (rc < 0) {
        fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
        json_decref(res);
        return 1;
    }
    json_t *j = json_object();
    json_object_set_new(j, "model", json_string(o->model));
    json_object_set_new(j, "threads", json_integer(moe_pool_threads(pool)));
    json_object_set_new(j, "isa", json_string(moe_isa_name(moe_isa_best())));
    json_object_set_new(j, "gemv", res);
    bench_print_json(j);
    return 0;
}

/* ---- gemv at a given shape, no model ------------------------------------------------ */

#define GEMV_MAX_FORMATS 16
#define GEMV_MAX_BATCH 8

/* "bf16,gq4,qmoe-p0.85,..." -> dtype ids (any dtype of fixed-size rows with a
 * quantiser; q8 and q4 as moe-pack names them; qmoe-pP: random ternary rows
 * with P(0) = P, p0[i] = P, else 0) */
static int gemv_parse_formats(const char *list, int *dt, double *p0, int *n)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", list);
    *n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        const char *name = !strcmp(tok, "q8") ? "q8_0" : (!strcmp(tok, "q4") ? "gq4" : tok);
        int found = -1;
        p0[*n < GEMV_MAX_FORMATS ? *n : 0] = 0.0;
        if (!strncmp(tok, "qmoe-p", 6) && *n < GEMV_MAX_FORMATS) {
            char *end;
            double p = strtod(tok + 6, &end);
            if (*end || !(p >= 0.0 && p < 1.0)) {
                fprintf(stderr, "moe-bench gemv: --formats: '%s': want qmoe-pP with P(0) = P in "
                        "[0, 1)\n", tok);
                return -1;
            }
            p0[*n] = p;
            dt[(*n)++] = MOE_DTYPE_QMOE;
            continue;
        }
        char known[160] = "";
        for (int i = 0; i < MOE_DTYPE_N_FORMATS; i++) {
            const struct moe_dtype_traits *t = moe_dtype_at(i);
            if (!t->from_f32 || t->view)
                continue; /* rows of varying length: no random matrix of them here */
            if (!strcmp(t->name, name))
                found = t->dtype;
            snprintf(known + strlen(known), sizeof(known) - strlen(known), "%s%s",
                     known[0] ? ", " : "", t->name);
        }
        if (found < 0 || *n == GEMV_MAX_FORMATS) {
            fprintf(stderr, "moe-bench gemv: --formats: '%s' is not a format of fixed-size rows "
                    "(%s) nor qmoe-pP, or more than %d\n", tok, known, GEMV_MAX_FORMATS);
            return -1;
        }
        dt[(*n)++] = found;
    }
    if (*n == 0) {
        fprintf(stderr, "moe-bench gemv: --formats is empty\n");
        return -1;
    }
    return 0;
}

static int gemv_parse_batch(const char *list, int *nt, int *n)
{
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", list);
    *n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        int64_t v;
        if (*n == GEMV_MAX_BATCH) {
            fprintf(stderr, "moe-bench gemv: --batch: at most %d counts\n", GEMV_MAX_BATCH);
            return -1;
        }
        if (moe_cli_integer("moe-bench", "batch", tok, 1, 4096, &v))
            return -1;
        nt[(*n)++] = (int)v;
    }
    if (*n == 0)
        fprintf(stderr, "moe-bench gemv: --batch is empty\n");
    return *n ? 0 : -1;
}

/* matrix weights/s of moe_matmul with n tokens, whole passes over the set
 * for at least secs; *gbs the stored bytes read per second */
static double gemv_rate_n(struct moe_pool *pool, const struct gemv_set *set, int n,
                          const float *x, float *y, double secs, double *gbs)
{
    double weights = 0.0, bytes = 0.0, t0 = moe_now_s(), dt;
    do {
        for (int i = 0; i < set->n; i++) {
            moe_matmul(pool, set->ptr[i], x, n, y);
            weights += (double)set->ptr[i]->rows * (double)set->ptr[i]->cols;
            bytes += (double)moe_weight_bytes(set->ptr[i]);
        }
        dt = moe_now_s() - t0;
    } while (dt < secs);
    *gbs = bytes / dt / 1e9;
    return weights / dt;
}

static int cmd_gemv_shape(const struct bench_opts *o, struct moe_pool *pool)
{
    int dts[GEMV_MAX_FORMATS], nf, ns[GEMV_MAX_BATCH], nn;
    double p0[GEMV_MAX_FORMATS], bits[GEMV_MAX_FORMATS];
    char names[GEMV_MAX_FORMATS][32];
    if (gemv_parse_formats(o->formats ? o->formats : "bf16,q8_0,gq4,mxfp4", dts, p0, &nf) < 0 ||
        gemv_parse_batch(o->batch ? o->batch : "1", ns, &nn) < 0)
        return EXIT_USAGE;
    /* a format whose block does not divide cols gets them rounded up (gq4 at
     * gpt-oss's 2880: 2944), as a checkpoint would have to be padded for it */
    int64_t rows = o->rows, cols[GEMV_MAX_FORMATS], cols_max = 0;
    for (int f = 0; f < nf; f++) {
        int64_t bs = moe_dtype_traits(dts[f])->block_size;
        cols[f] = (o->cols + bs - 1) / bs * bs;
        cols_max = MOE_MAX(cols_max, cols[f]);
        if (cols[f] != o->cols)
            fprintf(stderr, "moe-bench gemv: %s: %lld columns are not whole blocks of %lld: "
                    "timed at %lld\n", moe_dtype_name(dts[f]), (long long)o->cols,
                    (long long)bs, (long long)cols[f]);
    }
    int n_max = 1;
    for (int k = 0; k < nn; k++)
        n_max = MOE_MAX(n_max, ns[k]);
    size_t cells = (size_t)nf * (size_t)nn * (size_t)o->rounds;
    struct gemv_set sets[GEMV_MAX_FORMATS] = {0};
    void *mem[GEMV_MAX_FORMATS] = {0};
    float *x = malloc((size_t)n_max * (size_t)cols_max * sizeof(float));
    float *y = malloc((size_t)n_max * (size_t)rows * sizeof(float));
    double *rate = calloc(cells, sizeof(double)), *gbs = calloc(cells, sizeof(double));
    int rc = x && y && rate && gbs ? 0 : moe_err(-ENOMEM, "out of memory");
    for (int64_t i = 0; rc == 0 && i < n_max * cols_max; i++)
        x[i] = (float)((i * 37) % 17) / 17.0f - 0.5f;
    size_t span = (size_t)o->span_mib << 20;
    void *side = NULL;
    struct moe_qmoe_encoder *enc = NULL;
    for (int f = 0; f < nf && rc == 0 && !enc; f++)
        if (dts[f] == MOE_DTYPE_QMOE)
            rc = qmoe_codec(&enc, &side);
    for (int f = 0; f < nf && rc == 0; f++) {
        struct moe_weight w;
        if (dts[f] == MOE_DTYPE_QMOE) {
            snprintf(names[f], sizeof(names[f]), "qmoe-p%g", p0[f]);
            rc = make_qmoe(enc, side, rows, cols[f], p0[f], &w, &mem[f]);
        } else {
            snprintf(names[f], sizeof(names[f]), "%s", moe_dtype_name(dts[f]));
            rc = make_plain(dts[f], rows, cols[f], &w, &mem[f]);
        }
        if (rc == 0) {
            bits[f] = 8.0 * (double)moe_weight_bytes(&w) / ((double)rows * (double)cols[f]);
            rc = gemv_set_make(&w, MOE_MAX(span, (size_t)1), &sets[f]);
        }
    }
    /* one untimed pass of each: page faults, the pool's first runs */
    for (int f = 0; f < nf && rc == 0; f++)
        for (int k = 0; k < nn; k++) {
            double g;
            gemv_rate_n(pool, &sets[f], ns[k], x, y, 0.0, &g);
        }
    /* rounds outermost: every format and count sees the machine as the others do */
    for (int r = 0; r < o->rounds && rc == 0; r++)
        for (int f = 0; f < nf; f++)
            for (int k = 0; k < nn; k++) {
                size_t i = ((size_t)f * nn + k) * o->rounds + r;
                rate[i] = gemv_rate_n(pool, &sets[f], ns[k], x, y, o->seconds, &gbs[i]);
            }
    if (rc == 0) {
        json_t *res = json_array();
        for (int k = 0; k < nn; k++) {
            double first = 0.0;
            for (int f = 0; f < nf; f++) {
                size_t i0 = ((size_t)f * nn + k) * o->rounds;
                json_t *rounds = json_array();
                for (int r = 0; r < o->rounds; r++)
                    json_array_append_new(rounds, json_real(rate[i0 + r]));
                double med = median(&rate[i0], o->rounds), med_gbs = median(&gbs[i0], o->rounds);
                if (f == 0)
                    first = med;
                json_array_append_new(res, json_pack(
                    "{s:s, s:i, s:I, s:f, s:f, s:f, s:f, s:I, s:o}", "format", names[f], "n",
                    ns[k], "cols", (json_int_t)cols[f], "weights_per_s", med, "gbs", med_gbs,
                    "ratio_to_first", med / first, "bits_per_weight", bits[f], "copies",
                    (json_int_t)sets[f].n, "rounds", rounds));
            }
        }
        bench_print_json(json_pack("{s:[I,I], s:i, s:s, s:I, s:i, s:f, s:o}", "shape",
                                   (json_int_t)rows, (json_int_t)o->cols, "threads",
                                   moe_pool_threads(pool), "isa", moe_isa_name(moe_isa_best()),
                                   "span_bytes", (json_int_t)span, "rounds", o->rounds,
                                   "seconds", o->seconds, "gemv", res));
    }
    for (int f = 0; f < nf; f++) {
        gemv_set_free(&sets[f]);
        free(mem[f]);
    }
    qmoe_codec_free(enc, side);
    free(x);
    free(y);
    free(rate);
    free(gbs);
    if (rc < 0) {
        fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
        return 1;
    }
    return 0;
}

/* ---- stats: what moe-pack recorded in a pack ---------------------------------------- */

static int cmd_stats(const struct bench_opts *o, struct moe_model *m, struct moe_pool *pool)
{
    (void)pool;
    const struct moe_pack *p = moe_model_pack(m);
    if (!p) {
        fprintf(stderr, "moe-bench stats: %s is not a moed pack\n", o->model);
        return EXIT_USAGE;
    }
    json_t *j = json_pack("{s:s, s:O, s:O}", "model", o->model, "quant", moe_pack_quant(p),
                          "meta", moe_pack_meta(p));
    bench_print_json(j);
    return 0;
}

/* ---- decode-cmp: several models decoded in turn ------------------------------------- */

/* tok/s of N decode tokens after a P-token prompt, from an empty cache */
static int decode_once(struct moe_model *m, struct moe_pool *pool, int32_t P, int32_t N,
                       struct bench_routing *rt, double *tok_s)
{
    int32_t V = m->cfg.vocab;
    struct moe_session *s = NULL;
    int32_t *prompt = malloc((size_t)P * sizeof(int32_t));
    float *logits = malloc((size_t)V * sizeof(float));
    int rc = !prompt || !logits ? moe_err(-ENOMEM, "out of memory")
                                : moe_session_create(m, pool, P + N + 1, &s);
    if (rc == 0 && rt) { /* ODP and its counters: decode tokens only */
        s->prune = rt->prune_on ? &rt->prune : NULL;
        s->stats = rt->stats;
    }
    if (rc == 0)
        bench_ids(prompt, P, V);
    if (rc == 0)
        rc = moe_session_forward(s, prompt, P, logits, false);
    if (rt)
        memset(rt->stats, 0, sizeof(*rt->stats));
    double t0 = moe_now_s();
    for (int32_t i = 0; rc == 0 && i < N; i++) {
        int32_t tok = argmax(logits, V);
        rc = moe_session_forward(s, &tok, 1, logits, false);
    }
    *tok_s = N / (moe_now_s() - t0);
    moe_session_free(s);
    free(prompt);
    free(logits);
    return rc;
}

static int cmd_decode_cmp(const struct bench_opts *o, struct moe_pool *pool)
{
    /* with --odp-beta every model runs twice a round: pruning off, then on */
    bool odp = o->odp_beta >= 0 || o->odp_pack;
    int runs = odp ? 2 : 1, n = o->n_models * runs;
    struct moe_model *ms[MAX_MODELS] = {0};
    struct bench_routing rt[MAX_MODELS] = {0};
    double rates[2 * MAX_MODELS][100];
    int rc = 0;
    bool bad_model = false; /* a model that does not open: exit 2, as for one --model */
    for (int i = 0; i < o->n_models && rc == 0; i++)
        if (!(bad_model = (rc = moe_model_open(o->models[i], &ms[i])) < 0) &&
            (rc = routing_setup(o, ms[i], &rt[i])) == 0) {
            moe_model_prefault(ms[i]);
            double warm;
            rc = decode_once(ms[i], pool, o->prompt_tokens, 2, NULL, &warm);
        }
    for (int r = 0; r < o->rounds && rc == 0; r++)
        for (int k = 0; k < n && rc == 0; k++)
            rc = decode_once(ms[k / runs], pool, o->prompt_tokens, o->tokens,
                             k % runs ? &rt[k / runs] : NULL, &rates[k][r]);
    if (rc == 0) {
        json_t *arr = json_array();
        double base = 0.0, off = 0.0;
        for (int k = 0; k < n; k++) {
            int i = k / runs;
            json_t *rounds = json_array();
            for (int r = 0; r < o->rounds; r++)
                json_array_append_new(rounds, json_real(rates[k][r]));
            double med = median(rates[k], o->rounds);
            if (k == 0)
                base = med;
            if (k % runs == 0)
                off = med;
            json_t *e = json_pack("{s:s, s:f, s:f, s:I, s:o}", "model", o->models[i],
                                  "decode_tok_s", med, "ratio_to_first", med / base,
                                  "active_bytes", (json_int_t)moe_model_active_bytes(ms[i]),
                                  "rounds", rounds);
            if (odp) {
                json_object_set_new(e, "odp", json_boolean(k % runs));
                if (k % runs) { /* the pruned run's routing, and its speed against off */
                    json_object_set_new(e, "ratio_to_odp_off", json_real(med / off));
                    routing_report(o, &rt[i], ms[i], e);
                }
            }
            json_array_append_new(arr, e);
        }
        json_t *j = json_object();
        json_object_set_new(j, "threads", json_integer(moe_pool_threads(pool)));
        json_object_set_new(j, "tokens", json_integer(o->tokens));
        json_object_set_new(j, "models", arr);
        bench_print_json(j);
    } else {
        fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
    }
    for (int i = 0; i < o->n_models; i++) {
        routing_free(&rt[i]);
        moe_model_free(ms[i]);
    }
    return bad_model ? EXIT_USAGE : bench_exit(rc);
}
/* ==== kv: the compressed KV cache (bytes, attention time, perplexity) ==========
 * Attention is timed on caches of the model's geometry filled with random
 * keys and values (the kernels' cost does not depend on the values), every
 * setting's cache built first and the settings then timed in turns, so all
 * figures come from one run on one machine state. */

static const struct moe_kv_params kv_settings[] = {
    {32, 32, 64, 0}, {16, 16, 64, 0}, {8, 8, 64, 64}, {4, 4, 64, 64}, {2, 2, 64, 64},
};
enum { KV_N = sizeof(kv_settings) / sizeof(kv_settings[0]), KV_CTX_N = 3, KV_ROUNDS = 7 };
static const int32_t kv_ctx[KV_CTX_N] = {1024, 8192, 32768};

static float kv_rand(uint64_t *r)
{
    *r ^= *r << 13;
    *r ^= *r >> 7;
    *r ^= *r << 17;
    return (float)((*r >> 40) & 0xffffff) / (float)(1 << 23) - 1.0f;
}

/* one sequence of ctx random tokens in a pool just big enough */
static int kv_fill(const struct moe_model *m, const struct moe_kv_params *p, int32_t ctx,
                   struct moe_kv_pool **P, struct moe_kv **kv)
{
    struct moe_kv_shape sh;
    moe_model_kv_shape(m, 0, &sh);
    int64_t units = moe_kv_units_for_params(&sh, p, ctx);
    int rc = moe_kv_pool_create(&sh, p, units, P);
    if (rc == 0 && (rc = moe_kv_seq_create(*P, ctx, kv)) < 0)
        moe_kv_pool_free(*P);
    if (rc < 0)
        return rc;
    const struct moe_config *c = &m->cfg;
    size_t nkv = (size_t)sh.n_kv_heads * (size_t)MOE_MAX(sh.k_dim, sh.v_dim);
    float *k = malloc(nkv * sizeof(float)), *v = malloc(nkv * sizeof(float));
    uint64_t r = 0x9e3779b97f4a7c15ull;
    for (int32_t pos = 0; pos < ctx && rc == 0 && k && v; pos++)
        for (int32_t l = 0; l < c->n_layers && rc == 0; l++) {
            for (size_t i = 0; i < nkv; i++) {
                k[i] = kv_rand(&r) * 2.0f + (i % 3 ? 0.5f : -1.0f);
                v[i] = kv_rand(&r);
            }
            rc = moe_kv_store(*kv, l, pos, k, sh.v_in_k ? NULL : v);
        }
    if (!k || !v)
        rc = moe_err(-ENOMEM, "out of memory");
    free(k);
    free(v);
    if (rc < 0) {
        moe_kv_free(*kv);
        moe_kv_pool_free(*P);
    }
    return rc;
}

/* seconds of one decode step's attention: every layer, one query at ctx-1 */
static double kv_time_step(struct moe_pool *pool, const struct moe_config *c, struct moe_kv *kv,
                           int32_t ctx, const float *q, float *out, float *scores, size_t stride)
{
    int32_t pos = ctx - 1;
    struct moe_kv_attn a = {c->n_heads, c->attn_scale, NULL};
    double t0 = moe_now_s();
    for (int32_t l = 0; l < c->n_layers; l++)
        moe_kv_attention(pool, &kv, &pos, 1, l, &a, q, out, scores, stride);
    return moe_now_s() - t0;
}

static double kv_ppl(const struct bench_opts *o, struct moe_model *m, struct moe_pool *pool,
                     const int32_t *ids, size_t n, const struct moe_kv_params *p,
                     int64_t *scored_out)
{
    int32_t W = o->window, V = m->cfg.vocab;
    struct moe_session *s;
    float *logits = malloc((size_t)W * (size_t)V * sizeof(float));
    if (!logits || moe_session_create_kv(m, pool, W, p, &s) < 0) {
        free(logits);
        return NAN;
    }
    double nll = 0.0;
    int64_t scored = 0;
    int32_t windows = 0;
    for (size_t start = 0; start + 1 < n; start += (size_t)W) {
        if (o->max_windows && windows == o->max_windows)
            break;
        int32_t len_w = (int32_t)MOE_MIN((size_t)W, n - 1 - start);
        moe_session_reset(s);
        if (moe_session_forward(s, ids + start, len_w, logits, true) < 0) {
            nll = NAN;
            break;
        }
        for (int32_t t = 0; t < len_w; t++)
            nll += nll_of(logits + (size_t)t * V, V, ids[start + t + 1]);
        scored += len_w;
        windows++;
    }
    moe_session_free(s);
    free(logits);
    *scored_out = scored;
    return exp(nll / (double)scored);
}

static int kv_long_check(const struct bench_opts *o, struct moe_model *m, struct moe_pool *pool,
                         json_t *rows);

static int cmd_kv(const struct bench_opts *o, struct moe_model *m, struct moe_pool *pool)
{
    const struct moe_config *c = &m->cfg;
    struct moe_kv_shape sh;
    moe_model_kv_shape(m, 0, &sh);
    int32_t *ids = NULL;
    size_t n = 0;
    if (o->text) {
        char *text;
        size_t len;
        if (!m->tok || moe_read_text_file(o->text, &text, &len) < 0) {
            fprintf(stderr, "moe-bench kv: %s\n", m->tok ? moe_err_msg() : "no tokenizer");
            return EXIT_USAGE;
        }
        size_t off = bench_utf8_offset(text, len, o->start_char);
        int rc = moe_tokenizer_encode(m->tok, text + off, len - off, false, &ids, &n);
        free(text);
        if (rc < 0) {
            fprintf(stderr, "moe-bench kv: %s\n", moe_err_msg());
            return 1;
        }
    }
    json_t *root = json_object(), *rows = json_array();
    json_object_set_new(root, "isa", json_string(moe_isa_name(moe_isa_best())));
    json_object_set_new(root, "threads", json_integer(moe_pool_threads(pool)));
    json_object_set_new(root, "geometry",
                        json_pack("{s:i,s:i,s:i,s:i}", "layers", c->n_layers, "heads", c->n_heads,
                                  "kv_heads", c->n_kv_heads, "head_dim", c->head_dim));
    double bytes16 = 0;
    json_t *row[KV_N];
    for (int i = 0; i < KV_N; i++) {
        const struct moe_kv_params *p = &kv_settings[i];
        double bytes = (double)moe_kv_units_for_params(&sh, p, 4096) *
                       (double)moe_kv_unit_bytes_for_params(&sh, p) / 4096.0;
        if (p->key_bits == 16 && p->value_bits == 16)
            bytes16 = bytes;
        row[i] = json_pack("{s:i,s:i,s:i,s:i,s:f}", "key_bits", p->key_bits, "value_bits",
                           p->value_bits, "group", p->group, "residual", p->residual,
                           "bytes_per_token_4k", bytes);
        json_array_append(rows, row[i]);
    }
    for (int i = 0; i < KV_N; i++) {
        double b = json_real_value(json_object_get(row[i], "bytes_per_token_4k"));
        json_object_set_new(row[i], "bytes_vs_fp16", json_real(b / bytes16));
        json_object_set_new(row[i], "attention_ms", json_object());
    }

    /* attention: per context, every setting's cache, then timed in turns (MLA: queries in
     * the latent space, k_dim wide per head) */
    size_t nq = (size_t)c->n_heads * (size_t)MOE_MAX(sh.k_dim, sh.v_dim);
    int nth = moe_pool_threads(pool);
    size_t stride = MOE_ALIGN_UP((size_t)kv_ctx[KV_CTX_N - 1] + 1, 16);
    float *q = malloc(nq * sizeof(float)), *out = malloc(nq * sizeof(float));
    float *scores = malloc((size_t)nth * stride * sizeof(float));
    int rc = q && out && scores ? 0 : moe_err(-ENOMEM, "out of memory");
    uint64_t r = 12345;
    for (size_t i = 0; q && i < nq; i++)
        q[i] = kv_rand(&r) * 2.0f;
    for (int ci = 0; ci < KV_CTX_N && rc == 0; ci++) {
        struct moe_kv_pool *P[KV_N] = {0};
        struct moe_kv *kv[KV_N] = {0};
        double t[KV_N][KV_ROUNDS];
        for (int i = 0; i < KV_N && rc == 0; i++)
            rc = kv_fill(m, &kv_settings[i], kv_ctx[ci], &P[i], &kv[i]);
        for (int i = 0; i < KV_N && rc == 0; i++) /* warm up */
            kv_time_step(pool, c, kv[i], kv_ctx[ci], q, out, scores, stride);
        for (int k = 0; k < KV_ROUNDS && rc == 0; k++)
            for (int i = 0; i < KV_N; i++)
                t[i][k] = kv_time_step(pool, c, kv[i], kv_ctx[ci], q, out, scores, stride);
        for (int i = 0; i < KV_N; i++) {
            if (rc == 0) {
                char key[16];
                snprintf(key, sizeof(key), "%d", kv_ctx[ci]);
                json_object_set_new(json_object_get(row[i], "attention_ms"), key,
                                    json_real(median(t[i], KV_ROUNDS) * 1e3));
            }
            moe_kv_free(kv[i]);
            moe_kv_pool_free(P[i]);
        }
    }
    free(q);
    free(out);
    free(scores);

    for (int i = 0; i < KV_N && rc == 0 && ids; i++) {
        int64_t scored = 0;
        double ppl = kv_ppl(o, m, pool, ids, n, &kv_settings[i], &scored);
        json_object_set_new(row[i], "ppl", json_real(ppl));
        json_object_set_new(row[i], "ppl_tokens", json_integer(scored));
        if (isnan(ppl))
            rc = -EIO;
    }
    for (int i = 0; i < KV_N; i++)
        json_decref(row[i]);
    free(ids);
    if (rc < 0) {
        fprintf(stderr, "moe-bench kv: %s\n", moe_err_msg());
        json_decref(root);
        json_decref(rows);
        return 1;
    }
    if (o->long_ctx && kv_long_check(o, m, pool, rows) < 0) {
        fprintf(stderr, "moe-bench kv: %s\n", moe_err_msg());
        json_decref(root);
        json_decref(rows);
        return 1;
    }
    json_object_set_new(root, "window", json_integer(o->window));
    json_object_set_new(root, "settings", rows);
    bench_print_json(root);
    return 0;
}
/* --long N: N tokens (fixed pseudo-random ids) through the model with each
 * setting; the last token's logits against the exact fp32 cache's. */
static int kv_long_check(const struct bench_opts *o, struct moe_model *m, struct moe_pool *pool,
                         json_t *rows)
{
    int32_t N = o->long_ctx, V = m->cfg.vocab, chunk = 512;
    int32_t *ids = malloc((size_t)N * sizeof(int32_t));
    float *ref = malloc((size_t)V * sizeof(float)), *lg = malloc((size_t)V * sizeof(float));
    int rc = ids && ref && lg ? 0 : moe_err(-ENOMEM, "out of memory");
    if (rc == 0)
        bench_ids(ids, N, V);
    for (int i = 0; i < KV_N && rc == 0; i++) {
        struct moe_session *s = NULL;
        double t0 = moe_now_s();
        if ((rc = moe_session_create_kv(m, pool, N, &kv_settings[i], &s)) < 0)
            break;
        for (int32_t k = 0; k < N && rc == 0; k += chunk)
            rc = moe_session_forward(s, ids + k, MOE_MIN(chunk, N - k), i == 0 ? ref : lg, false);
        moe_session_free(s);
        if (rc < 0 || i == 0)
            continue;
        double diff = 0, top = 0;
        for (int32_t v = 0; v < V; v++) {
            diff = fmax(diff, fabs((double)lg[v] - ref[v]));
            top = fmax(top, fabs((double)ref[v]));
        }
        json_object_set_new(json_array_get(rows, (size_t)i), "long_context",
                            json_pack("{s:i, s:f, s:f, s:b, s:f}", "tokens", N,
                                      "max_abs_logit_diff", diff, "relative", diff / top,
                                      "argmax_same", argmax(lg, V) == argmax(ref, V), "seconds",
                                      moe_now_s() - t0));
    }
    free(ids);
    free(ref);
    free(lg);
    return rc;
}
/* ==== end of kv =============================================================== */

/* ---- io: expert reads from disk against a sequential read --------------------------- */

#define IO_SEQ_CHUNK ((size_t)4 << 20)

/* GB/s of a plain sequential pread of [start, end) in 4 MiB chunks, O_DIRECT
 * where the filesystem allows, whole passes for at least seconds */
static double io_seq_gbps(const char *path, uint64_t start, uint64_t end, double seconds,
                          bool *direct)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_DIRECT);
    *direct = fd >= 0;
    if (fd < 0)
        fd = open(path, O_RDONLY | O_CLOEXEC);
    void *buf = NULL;
    if (fd < 0 || posix_memalign(&buf, 4096, IO_SEQ_CHUNK)) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    uint64_t bytes = 0;
    double t0 = moe_now_s(), t;
    do {
        for (uint64_t pos = start; pos < end;) {
            ssize_t r = pread(fd, buf, (size_t)MOE_MIN((uint64_t)IO_SEQ_CHUNK, end - pos),
                              (off_t)pos);
            if (r <= 0)
                goto out;
            pos += (uint64_t)r;
            bytes += (uint64_t)r;
        }
    } while ((t = moe_now_s() - t0) < seconds);
out:
    t = moe_now_s() - t0;
    free(buf);
    close(fd);
    return t > 0 ? (double)bytes / t / 1e9 : 0;
}

/* Every expert of the pack, shuffled each pass, at most qd reads in flight
 * (one slot of the arena each); whole passes for at least seconds. Each
 * round waits for the oldest read, then refills every finished slot with
 * one submit. */
static int io_run(const struct moe_pack *p, unsigned qd, double seconds, uint8_t *arena,
                  size_t slot_bytes, json_t **run, struct moe_nvme **probe)
{
    size_t n = moe_pack_expert_count(p);
    struct moe_nvme_opts opts = {.queue_depth = qd};
    struct moe_nvme *nv;
    if (moe_nvme_open(p, &opts, arena, slot_bytes * qd, &nv) < 0)
        return -1;
    size_t *order = malloc(n * sizeof(*order));
    struct moe_nvme_req *reqs = calloc(qd, sizeof(*reqs));
    struct moe_nvme_req **batch = calloc(qd, sizeof(*batch));
    uint64_t *seq = calloc(qd, sizeof(*seq));
    int ret = -1;
    if (!order || !reqs || !batch || !seq) {
        moe_err(-ENOMEM, "out of memory");
        goto out;
    }
    uint64_t rng = 0x9e3779b97f4a7c15ull, issued = 0, passes = 0, bytes = 0;
    size_t next = n; /* n: reshuffle */
    bool stop = false;
    unsigned busy = 0;
    double t0 = moe_now_s();
    for (;;) {
        int nb = 0;
        for (unsigned k = 0; k < qd && !stop; k++) {
            if (reqs[k].e) /* NULL: a free slot */
                continue;
            if (next == n) {
                if (passes && moe_now_s() - t0 >= seconds) {
                    stop = true;
                    break;
                }
                for (size_t i = 0; i < n; i++)
                    order[i] = i;
                for (size_t i = n - 1; i > 0; i--) {
                    size_t j = (size_t)(bench_rng(&rng) % (i + 1)), x = order[i];
                    order[i] = order[j];
                    order[j] = x;
                }
                next = 0;
                passes++;
            }
            reqs[k] = (struct moe_nvme_req){.e = moe_pack_expert_at(p, order[next++]),
                                            .dst = arena + k * slot_bytes};
            seq[k] = issued++;
            batch[nb++] = &reqs[k];
            busy++;
        }
        if (nb && moe_nvme_submit(nv, batch, nb) < 0)
            goto out;
        if (!busy)
            break;
        unsigned oldest = qd;
        for (unsigned k = 0; k < qd; k++)
            if (reqs[k].e && !reqs[k].done &&
                (oldest == qd || seq[k] < seq[oldest]))
                oldest = k;
        if (oldest < qd && moe_nvme_wait(nv, &reqs[oldest]) < 0)
            goto out;
        if (moe_nvme_poll(nv) < 0)
            goto out;
        for (unsigned k = 0; k < qd; k++)
            if (reqs[k].e && reqs[k].done) {
                if (reqs[k].rc < 0) {
                    moe_nvme_req_error(nv, &reqs[k]);
                    goto out;
                }
                bytes += reqs[k].e->size;
                reqs[k].e = NULL;
                busy--;
            }
    }
    double t = moe_now_s() - t0;
    struct moe_nvme_stats st;
    moe_nvme_stats(nv, &st);
    *run = json_pack("{s:i, s:f, s:I, s:I, s:I, s:f, s:I, s:I, s:I, s:I}", "queue_depth",
                     (int)qd, "expert_gbps", (double)bytes / t / 1e9, "reads",
                     (json_int_t)st.reads, "bytes", (json_int_t)bytes, "passes",
                     (json_int_t)passes, "seconds", t, "submits", (json_int_t)st.submits, "sqes",
                     (json_int_t)st.sqes, "retries", (json_int_t)st.retries, "errors",
                     (json_int_t)st.errors);
    ret = 0;
out:
    if (ret == 0 && probe) {
        *probe = nv;
        nv = NULL;
    }
    moe_nvme_close(nv);
    free(order);
    free(reqs);
    free(batch);
    free(seq);
    return ret;
}

static int cmd_io(const struct bench_opts *o)
{
    struct moe_pack *p;
    if (moe_pack_open(o->model, &p) < 0) {
        fprintf(stderr, "moe-bench io: %s\n", moe_err_msg());
        return EXIT_USAGE;
    }
    size_t n = moe_pack_expert_count(p);
    if (!n) {
        fprintf(stderr, "moe-bench io: %s has no experts\n", o->model);
        moe_pack_close(p);
        return EXIT_USAGE;
    }
    uint64_t start = UINT64_MAX, end = 0, total = 0, slot = 0;
    for (size_t i = 0; i < n; i++) {
        const struct moe_pack_expert *e = moe_pack_expert_at(p, i);
        start = MOE_MIN(start, e->offset);
        end = MOE_MAX(end, e->offset + e->size);
        total += e->size;
        slot = MOE_MAX(slot, e->size);
    }
    unsigned qds[3] = {1, 8, 32}, nq = 3, qmax = 32;
    if (o->queue_depth) {
        qds[0] = qmax = (unsigned)o->queue_depth;
        nq = 1;
    }
    struct moe_host_region arena;
    if (moe_host_alloc(slot * qmax, MOE_NUMA_LOCAL, true, &arena) < 0) {
        fprintf(stderr, "moe-bench io: %s\n", moe_err_msg());
        moe_pack_close(p);
        return 1;
    }
    memset(arena.ptr, 0, arena.bytes); /* fault the pages in before timing */
    json_t *runs = json_array();
    bool uring = false, direct = false, fixed = false, seq_direct = false;
    double best = 0;
    int ret = 0;
    for (unsigned q = 0; q < nq; q++) {
        double seq = io_seq_gbps(o->model, start, end, o->seconds, &seq_direct);
        json_t *run;
        struct moe_nvme *nv = NULL;
        if (io_run(p, qds[q], o->seconds, arena.ptr, slot, &run, &nv) < 0) {
            fprintf(stderr, "moe-bench io: %s\n", moe_err_msg());
            ret = 1;
            break;
        }
        uring = moe_nvme_uses_uring(nv);
        direct = moe_nvme_uses_direct(nv);
        fixed = moe_nvme_uses_fixed(nv);
        moe_nvme_close(nv);
        double gbps = json_real_value(json_object_get(run, "expert_gbps"));
        double ratio = seq > 0 ? gbps / seq : 0;
        best = MOE_MAX(best, ratio);
        json_object_set_new(run, "seq_gbps", json_real(seq));
        json_object_set_new(run, "ratio", json_real(ratio));
        json_array_append_new(runs, run);
    }
    if (ret == 0)
        bench_print_json(json_pack(
            "{s:s, s:I, s:I, s:I, s:I, s:b, s:b, s:b, s:b, s:I, s:b, s:b, s:f, s:o}", "model",
            o->model, "experts", (json_int_t)n, "expert_bytes", (json_int_t)total,
            "max_expert_bytes", (json_int_t)slot, "expert_range_bytes", (json_int_t)(end - start),
            "io_uring", uring, "o_direct", direct, "fixed_buffers", fixed, "seq_o_direct",
            seq_direct, "seq_chunk_bytes", (json_int_t)IO_SEQ_CHUNK, "arena_huge", arena.huge,
            "arena_numa_bound", arena.numa_bound, "best_ratio", best, "runs", runs));
    else
        json_decref(runs);
    moe_host_free(&arena);
    moe_pack_close(p);
    return ret;
}

/* ---- config: the parsed architecture config, no weights ---------------------------- */

/* A hybrid's memory per sequence (fp16 KV, group 64, fp32 states): at 1k,
 * 8k and 32k tokens, the linear layers' share (their states: flat), and
 * the same config with every layer full attention, as the pool counts
 * them (whole blocks, the states in whole units). */
static json_t *hybrid_memory(const struct moe_config *c, const struct moe_kv_shape *sh,
                             int32_t n_attn)
{
    const struct moe_kv_params p = {16, 16, 64, 0, 32};
    struct moe_kv_shape attn_only = *sh;
    attn_only.state_rows = 0; /* the recurrent layers then take nothing */
    struct moe_config full = *c;
    memset(full.layer_linear, 0, sizeof(full.layer_linear));
    struct moe_kv_shape fsh;
    moe_config_kv_shape(&full, NULL, 0, &fsh);
    size_t ub = moe_kv_unit_bytes_for_params(sh, &p), fub = moe_kv_unit_bytes_for_params(&fsh, &p);
    json_t *per = json_array();
    const int64_t lens[] = {1024, 8192, 32768};
    double ratio = 0;
    for (size_t i = 0; i < MOE_ARRAY_SIZE(lens); i++) {
        double all = (double)moe_kv_units_for_params(sh, &p, lens[i]) * (double)ub;
        double kv = (double)moe_kv_units_for_params(&attn_only, &p, lens[i]) * (double)ub;
        double fa = (double)moe_kv_units_for_params(&fsh, &p, lens[i]) * (double)fub;
        ratio = fa / all;
        json_array_append_new(per, json_pack("{s:I,s:f,s:f,s:f,s:f,s:f}", "tokens",
                                             (json_int_t)lens[i], "bytes", all, "kv_bytes", kv,
                                             "state_bytes", all - kv, "state_share",
                                             (all - kv) / all, "all_full_attention_bytes", fa));
    }
    const struct moe_kv_params pb = {16, 16, 64, 0, 16};
    double bf = (double)moe_kv_units_for_params(sh, &pb, 32768) *
                (double)moe_kv_unit_bytes_for_params(sh, &pb);
    double fa32k = (double)moe_kv_units_for_params(&fsh, &p, 32768) * (double)fub;
    return json_pack("{s:i,s:i,s:s,s:o,s:f,s:f}", "attention_layers", n_attn, "linear_layers",
                     c->n_layers - n_attn, "setting", "fp16 KV, group 64, fp32 states",
                     "per_sequence", per, "sequences_in_one_pool_vs_all_full_attention_32k",
                     ratio, "same_with_bf16_states_32k", fa32k / bf);
}

static int cmd_config(int argc, char **argv)
{
    struct bench_opts o;
    if (parse_args(argc, argv, &o) < 0)
        return EXIT_USAGE;
    if (o.n_models != 1) {
        fprintf(stderr, "moe-bench config: give one --model\n");
        return EXIT_USAGE;
    }
    struct moe_config c;
    if (moe_model_config_from_path(o.model, &c) < 0) {
        fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
        return EXIT_USAGE;
    }
    json_t *j = moe_config_to_json(&c);
    if (!j) {
        fprintf(stderr, "moe-bench: out of memory\n");
        return 1;
    }
    /* the KV cache a token costs at each setting (all layers, the quantised
     * share: no fp16 window, no block rounding); for MLA, beside what
     * grouped-query attention with the same heads would hold */
    struct moe_kv_shape sh;
    moe_config_kv_shape(&c, NULL, 0, &sh);
    int32_t n_attn = 0; /* layers that cache tokens (not linear-attention ones) */
    for (int32_t l = 0; l < c.n_layers; l++)
        n_attn += !c.layer_linear[l];
    json_t *kvj = json_array();
    for (int i = 0; i < KV_N; i++) {
        double b = moe_kv_token_bytes(&sh, &kv_settings[i]) * n_attn;
        json_array_append_new(kvj, json_pack("{s:i,s:i,s:f}", "key_bits", kv_settings[i].key_bits,
                                             "value_bits", kv_settings[i].value_bits,
                                             "bytes_per_token", b));
    }
    json_object_set_new(j, "kv_cache", kvj);
    if (sh.recurrent)
        json_object_set_new(j, "hybrid", hybrid_memory(&c, &sh, n_attn));
    if (c.attn == MOE_ATTN_MLA) {
        struct moe_kv_shape gqa = {.n_layers = c.n_layers, .n_kv_heads = c.n_heads,
                                   .k_dim = c.qk_nope_dim + c.qk_rope_dim,
                                   .v_dim = c.v_head_dim};
        const struct moe_kv_params f16 = {16, 16, 64, 0};
        double mla = moe_kv_token_bytes(&sh, &f16) * c.n_layers;
        double full = moe_kv_token_bytes(&gqa, &f16) * c.n_layers;
        json_object_set_new(j, "mla_vs_gqa_fp16",
                            json_pack("{s:i,s:f,s:f,s:f}", "values_per_token_layer",
                                      sh.k_dim, "mla_bytes_per_token", mla,
                                      "gqa_same_heads_bytes_per_token", full, "ratio",
                                      full / mla));
    }
    bench_print_json(j);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "tier") || !strcmp(cmd, "trace") || !strcmp(cmd, "cache"))
        return bench_tier_main(cmd, argc - 1, argv + 1);
    if (!strcmp(cmd, "config"))
        return cmd_config(argc - 1, argv + 1);
    int (*fn)(const struct bench_opts *, struct moe_model *, struct moe_pool *) =
        !strcmp(cmd, "ppl") ? cmd_ppl : !strcmp(cmd, "decode") ? cmd_decode
        : !strcmp(cmd, "logits") ? cmd_logits : !strcmp(cmd, "greedy") ? cmd_greedy
        : !strcmp(cmd, "gemv") ? cmd_gemv
        : !strcmp(cmd, "stats") ? cmd_stats
        : !strcmp(cmd, "kv") ? cmd_kv : NULL;
    bool cmp = !strcmp(cmd, "decode-cmp"), io = !strcmp(cmd, "io");
    if (!fn && !cmp && !io) {
        fprintf(stderr, "moe-bench: unknown command '%s'\n%s", cmd, usage);
        return EXIT_USAGE;
    }
    struct bench_opts o;
    if (parse_args(argc - 1, argv + 1, &o) < 0)
        return EXIT_USAGE;
    if (o.rows && fn != cmd_gemv) {
        fprintf(stderr, "moe-bench: --rows/--cols are for gemv\n");
        return EXIT_USAGE;
    }
    if (io)
        return cmd_io(&o);
    if (o.rows) {
        struct moe_pool *pool;
        if (moe_pool_create(o.threads, &pool) < 0) {
            fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
            return 1;
        }
        int ret = cmd_gemv_shape(&o, pool);
        moe_pool_free(pool);
        return ret;
    }
    if (cmp) {
        struct moe_pool *pool;
        if (moe_pool_create(o.threads, &pool) < 0) {
            fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
            return 1;
        }
        int ret = cmd_decode_cmp(&o, pool);
        moe_pool_free(pool);
        return ret;
    }
    struct moe_model *m;
    if (moe_model_open(o.model, &m) < 0) {
        fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
        return EXIT_USAGE;
    }
    struct moe_pool *pool;
    if (moe_pool_create(o.threads, &pool) < 0) {
        fprintf(stderr, "moe-bench: %s\n", moe_err_msg());
        moe_model_free(m);
        return 1;
    }
    int ret = fn(&o, m, pool);
    moe_pool_free(pool);
    moe_model_free(m);
    return ret;
}
