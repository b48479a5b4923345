/* moe-run: generate text from a checkpoint on the CPU.
 *
 * Its command line is a contract other tools and tests rely on:
 *   moe-run --model PATH --prompt TEXT [--max-tokens N] [--temperature T] [--seed S]
 *   moe-run --model PATH --tokenize TEXT
 * stdout carries only the generated text (or the token ids). */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "common/common.h"
#include "engine/engine.h"
#include "engine/engine_grammar.h"
#include "model/model.h"

#define EXIT_USAGE 2 /* bad arguments or a bad model file */

static const char usage[] =
    "usage: moe-run --model PATH --prompt TEXT [options]\n"
    "       moe-run --model PATH --tokenize TEXT\n"
    "\n"
    "Generates text from a Mixture-of-Experts checkpoint on the CPU and prints only\n"
    "the generated text on stdout.\n"
    "\n"
    "  -m, --model PATH        Hugging Face directory or GGUF file\n"
    "  -p, --prompt TEXT       the prompt (tokenized as the checkpoint says: BOS if configured)\n"
    "      --tokenize TEXT     print the token ids of TEXT (no special tokens) and exit;\n"
    "                          PATH may be a vocabulary-only GGUF\n"
    "  -n, --max-tokens N      tokens to generate (default 128)\n"
    "  -t, --temperature T     0 = greedy (default 0.8)\n"
    "      --top-k N           keep the N most likely tokens (default 40; 0 = off)\n"
    "      --top-p P           nucleus sampling (default 0.95; 1 = off)\n"
    "      --min-p P           drop tokens below P x the top probability (default 0.05)\n"
    "      --repeat-penalty R  (default 1 = off)\n"
    "      --presence-penalty P, --frequency-penalty F   (default 0)\n"
    "  -s, --seed S            random seed (default: from the clock)\n"
    "      --stop TEXT         stop when TEXT is generated (repeatable)\n"
    "      --ignore-eos        keep generating past end-of-sequence tokens\n"
    "      --grammar-file F    constrain the output to the GBNF grammar in F (start: root)\n"
    "      --json-schema F     constrain the output to JSON valid against the schema in F\n"
    "      --print-ids         print the generated token ids instead of text\n"
    "      --threads N         worker threads (default: all cores)\n"
    "      --ctx N             context length to allocate (default: prompt + max tokens)\n"
    "  -h, --help              this text\n";

struct run_opts {
    const char *model, *prompt, *tokenize;
    int32_t max_tokens, threads, ctx;
    bool ignore_eos, print_ids;
    const char *grammar_file, *schema_file;
    struct moe_sampling smp;
    const char *stops[16];
    size_t n_stops;
};

static int parse_args(int argc, char **argv, struct run_opts *o)
{
    enum { O_TOKENIZE = 256, O_TOPK, O_TOPP, O_MINP, O_REP, O_PRES, O_FREQ, O_STOP, O_IGNEOS,
           O_THREADS, O_CTX, O_PRINTIDS, O_GRAMMAR, O_SCHEMA };
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},      {"prompt", required_argument, 0, 'p'},
        {"tokenize", required_argument, 0, O_TOKENIZE},
        {"max-tokens", required_argument, 0, 'n'}, {"temperature", required_argument, 0, 't'},
        {"top-k", required_argument, 0, O_TOPK},   {"top-p", required_argument, 0, O_TOPP},
        {"min-p", required_argument, 0, O_MINP},   {"repeat-penalty", required_argument, 0, O_REP},
        {"presence-penalty", required_argument, 0, O_PRES},
        {"frequency-penalty", required_argument, 0, O_FREQ},
        {"seed", required_argument, 0, 's'},       {"stop", required_argument, 0, O_STOP},
        {"ignore-eos", no_argument, 0, O_IGNEOS},  {"threads", required_argument, 0, O_THREADS},
        {"ctx", required_argument, 0, O_CTX},      {"print-ids", no_argument, 0, O_PRINTIDS},
        {"grammar-file", required_argument, 0, O_GRAMMAR},
        {"json-schema", required_argument, 0, O_SCHEMA},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    memset(o, 0, sizeof(*o));
    o->max_tokens = 128;
    moe_sampling_defaults(&o->smp);
    o->smp.temperature = 0.8f;
    o->smp.top_k = 40;
    o->smp.top_p = 0.95f;
    o->smp.min_p = 0.05f;
    o->smp.seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    int c;
    double v;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:p:n:t:s:h", longopts, NULL)) != -1) {
        const char *name = moe_cli_opt_name(longopts, c);
        switch (c) {
        case 'm': o->model = optarg; break;
        case 'p': o->prompt = optarg; break;
        case O_TOKENIZE: o->tokenize = optarg; break;
        case 'n':
            if (moe_cli_number("moe-run", name, optarg, 0, 1 << 30, &v)) return -1;
            o->max_tokens = (int32_t)v;
            break;
        case 't':
            if (moe_cli_number("moe-run", name, optarg, 0, 100, &v)) return -1;
            o->smp.temperature = (float)v;
            break;
        case O_TOPK:
            if (moe_cli_number("moe-run", name, optarg, 0, 1 << 30, &v)) return -1;
            o->smp.top_k = (int)v;
            break;
        case O_TOPP:
            if (moe_cli_number("moe-run", name, optarg, 1e-6, 1, &v)) return -1;
            o->smp.top_p = (float)v;
            break;
        case O_MINP:
            if (moe_cli_number("moe-run", name, optarg, 0, 1, &v)) return -1;
            o->smp.min_p = (float)v;
            break;
        case O_REP:
            if (moe_cli_number("moe-run", name, optarg, 1e-3, 100, &v)) return -1;
            o->smp.repetition_penalty = (float)v;
            break;
        case O_PRES:
            if (moe_cli_number("moe-run", name, optarg, -100, 100, &v)) return -1;
            o->smp.presence_penalty = (float)v;
            break;
        case O_FREQ:
            if (moe_cli_number("moe-run", name, optarg, -100, 100, &v)) return -1;
            o->smp.frequency_penalty = (float)v;
            break;
        case 's': {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end) {
                fprintf(stderr, "moe-run: --seed: expected a non-negative integer, got '%s'\n", optarg);
                return -1;
            }
            o->smp.seed = s;
            break;
        }
        case O_STOP:
            if (o->n_stops == MOE_ARRAY_SIZE(o->stops)) {
                fprintf(stderr, "moe-run: at most %zu --stop strings\n", MOE_ARRAY_SIZE(o->stops));
                return -1;
            }
            o->stops[o->n_stops++] = optarg;
            break;
        case O_IGNEOS: o->ignore_eos = true; break;
        case O_PRINTIDS: o->print_ids = true; break;
        case O_GRAMMAR: o->grammar_file = optarg; break;
        case O_SCHEMA: o->schema_file = optarg; break;
        case O_THREADS:
            if (moe_cli_number("moe-run", name, optarg, 0, 1024, &v)) return -1;
            o->threads = (int32_t)v;
            break;
        case O_CTX:
            if (moe_cli_number("moe-run", name, optarg, 1, 1 << 24, &v)) return -1;
            o->ctx = (int32_t)v;
            break;
        case 'h': fputs(usage, stdout); exit(0);
        case ':':
            fprintf(stderr, "moe-run: option '%s' needs a value\n", argv[optind - 1]);
            return -1;
        default:
            fprintf(stderr, "moe-run: unknown option '%s'\n%s", argv[optind - 1], usage);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "moe-run: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->model || (!o->prompt && !o->tokenize)) {
        fprintf(stderr, "moe-run: --model and --prompt (or --tokenize) are required\n%s", usage);
        return -1;
    }
    return 0;
}

static int cmd_tokenize(const struct run_opts *o)
{
    struct moe_tokenizer *tok;
    int rc = moe_model_open_tokenizer(o->model, &tok); /* --tokenize runs no model */
    if (rc < 0) {
        fprintf(stderr, "moe-run: %s\n", moe_err_msg());
        return EXIT_USAGE;
    }
    int32_t *ids;
    size_t n;
    rc = moe_tokenizer_encode(tok, o->tokenize, strlen(o->tokenize), false, &ids, &n);
    if (rc < 0) {
        fprintf(stderr, "moe-run: %s\n", moe_err_msg());
        moe_tokenizer_free(tok);
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        printf("%s%d", i ? " " : "", ids[i]);
    printf("\n");
    free(ids);
    moe_tokenizer_free(tok);
    return 0;
}

/* --grammar-file / --json-schema: the grammar, or NULL; 0 or -errno (message set) */
static int load_grammar(const struct run_opts *o, struct moe_grammar **out)
{
    *out = NULL;
    if (o->grammar_file && o->schema_file)
        return moe_err(-EINVAL, "give --grammar-file or --json-schema, not both");
    const char *path = o->grammar_file ? o->grammar_file : o->schema_file;
    if (!path)
        return 0;
    char *text = NULL, *gbnf = NULL;
    size_t len;
    int rc = moe_read_text_file(path, &text, &len);
    if (!rc && o->schema_file) {
        json_error_t je;
        json_t *schema = json_loadb(text, len, 0, &je);
        rc = schema ? moe_schema_to_gbnf(schema, NULL, NULL, &gbnf)
                    : moe_err(-EINVAL, "%s: line %d: %s", path, je.line, je.text);
        json_decref(schema);
    }
    if (!rc)
        rc = moe_grammar_compile(gbnf ? gbnf : text, out);
    if (rc && !strstr(moe_err_msg(), path))
        moe_err(rc, "%s: %s", path, moe_err_msg());
    free(gbnf);
    free(text);
    return rc;
}

static int cmd_generate(const struct run_opts *o)
{
    struct moe_model *m = NULL;
    struct moe_pool *pool = NULL;
    struct moe_session *sess = NULL;
    struct moe_gen_shared *gsh = NULL;
    struct moe_gen *gen = NULL;
    struct moe_grammar *grammar = NULL;
    int32_t *ids = NULL, *hist = NULL;
    float *logits = NULL;
    int ret = 1, rc;

    if ((rc = load_grammar(o, &grammar)) < 0) {
        fprintf(stderr, "moe-run: %s\n", moe_err_msg());
        return EXIT_USAGE;
    }
    if ((rc = moe_model_open(o->model, &m)) < 0) {
        fprintf(stderr, "moe-run: %s\n", moe_err_msg());
        moe_grammar_unref(grammar);
        return EXIT_USAGE;
    }
    if (!m->tok) {
        fprintf(stderr, "moe-run: %s: the checkpoint has no tokenizer (tokenizer.json or GGUF "
                "vocabulary); text prompts need one\n", o->model);
        ret = EXIT_USAGE;
        goto out;
    }
    size_t n_ids;
    if ((rc = moe_tokenizer_encode(m->tok, o->prompt, strlen(o->prompt), true, &ids, &n_ids)) < 0)
        goto fail;
    if (n_ids == 0) {
        fprintf(stderr, "moe-run: the prompt is empty after tokenization\n");
        ret = EXIT_USAGE;
        goto out;
    }
    int64_t want = (int64_t)n_ids + o->max_tokens;
    int32_t ctx = o->ctx ? o->ctx : (int32_t)MOE_MIN(want, (int64_t)m->cfg.max_ctx);
    if ((int64_t)n_ids >= ctx) {
        fprintf(stderr, "moe-run: the prompt has %zu tokens, the context only %d\n", n_ids, ctx);
        ret = EXIT_USAGE;
        goto out;
    }
    struct moe_gen_params gp = {.sampling = o->smp, .stop = o->stops, .n_stop = o->n_stops,
                                .ignore_eos = o->ignore_eos, .max_new = o->max_tokens,
                                .grammar = grammar};
    if ((rc = moe_pool_create(o->threads, &pool)) < 0 ||
        (rc = moe_session_create(m, pool, ctx, &sess)) < 0 ||
        (rc = moe_gen_shared_create(m->tok, m->cfg.vocab, &gsh)) < 0 ||
        (rc = moe_gen_create(gsh, &gp, &gen)) < 0)
        goto fail;
    logits = malloc((size_t)m->cfg.vocab * sizeof(float));
    hist = malloc((size_t)ctx * sizeof(int32_t));
    if (!logits || !hist) {
        rc = moe_err(-ENOMEM, "out of memory");
        goto fail;
    }
    memcpy(hist, ids, n_ids * sizeof(int32_t));
    size_t n_hist = n_ids;

    if ((rc = moe_session_forward(sess, ids, (int32_t)n_ids, logits, false)) < 0)
        goto fail;
    bool flush = o->max_tokens == 0;
    for (int32_t i = 0; i < o->max_tokens; i++) {
        struct moe_gen_token t;
        if ((rc = moe_gen_step(gen, logits, hist, n_hist, &t)) < 0)
            goto fail;
        if (t.eog) {
            flush = true;
            break;
        }
        hist[n_hist++] = t.id;
        if (o->print_ids)
            printf("%s%d", i ? " " : "", t.id);
        else
            fwrite(t.text, 1, t.len, stdout);
        fflush(stdout);
        if (t.finish) {
            flush = t.flush;
            break;
        }
        if (sess->n_past >= ctx) {
            fprintf(stderr, "\nmoe-run: context of %d tokens is full\n", ctx);
            flush = true;
            break;
        }
        if ((rc = moe_session_forward(sess, &t.id, 1, logits, false)) < 0)
            goto fail;
    }
    if (o->print_ids) {
        printf("\n");
    } else if (flush) {
        const char *text, *more;
        size_t n_more, n = moe_gen_rest(gen, &text, &more, &n_more);
        fwrite(text, 1, n, stdout);
        fwrite(more, 1, n_more, stdout);
    }
    fflush(stdout);
    ret = 0;
    goto out;
fail:
    fprintf(stderr, "moe-run: %s\n", moe_err_msg());
    if (rc == -EBADMSG) /* corrupt weights: a bad model file, as at open */
        ret = EXIT_USAGE;
out:
    free(logits);
    free(hist);
    free(ids);
    moe_gen_free(gen);
    moe_gen_shared_free(gsh);
    moe_grammar_unref(grammar);
    moe_session_free(sess);
    moe_pool_free(pool);
    moe_model_free(m);
    return ret;
}

int main(int argc, char **argv)
{
    struct run_opts o;
    if (parse_args(argc, argv, &o) < 0)
        return EXIT_USAGE;
    return o.tokenize ? cmd_tokenize(&o) : cmd_generate(&o);
}
