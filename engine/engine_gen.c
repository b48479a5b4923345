/* One generation loop for the engine, moe-run and the benchmarks: from a
 * row of logits to the next token and the text to show. In order:
 *   logprobs from the model's distribution as it came (OpenAI reports those),
 *   logit_bias, the sampler (penalties, top-k/p, min-p, temperature) under
 *   the grammar's token mask when the request has one, end of generation,
 *   the grammar taking the token, detokenization into whole characters,
 *   stop strings, and the reasons to end (a stop string, nothing more the
 *   grammar allows, the token limit). */
#define _GNU_SOURCE /* memmem */
#include "engine/engine.h"

#include "common/common.h"
#include "engine/engine_grammar.h"
#include "tokenizer/tokenizer.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct moe_gen_shared {
    const struct moe_tokenizer *tok;
    int32_t vocab;
    float *lp_row;   /* [vocab] a row as the model gave it, for logprobs */
    float *gram_row; /* [vocab] a row kept for sampling again under the mask */
    /* made at the first grammar: the vocabulary as a trie, the mask, the
     * end-of-generation tokens */
    struct moe_vocab_trie *trie;
    uint64_t *gram_mask;
    int32_t mask_vocab;
    int32_t *eog_ids, n_eog;
};

struct moe_gen {
    struct moe_gen_shared *sh;
    struct moe_gen_params p;
    struct moe_sampler *smp;
    struct moe_stop *stop;
    struct moe_detok detok;
    struct moe_grammar_state *gram; /* NULL until the trigger (if any) has come */
    char *tail;        /* with a trigger: the text's last bytes, where it may begin */
    size_t n_tail;
    int32_t generated;
    char *piece; /* one token's text, and what the end flushes */
    size_t piece_cap;
    struct moe_token_logprob lp;
};

int moe_gen_shared_create(const struct moe_tokenizer *tok, int32_t vocab,
                          struct moe_gen_shared **out)
{
    *out = NULL;
    struct moe_gen_shared *sh = calloc(1, sizeof(*sh));
    if (!sh)
        return moe_err(-ENOMEM, "out of memory");
    sh->tok = tok;
    sh->vocab = vocab;
    sh->lp_row = malloc((size_t)vocab * sizeof(float));
    sh->gram_row = malloc((size_t)vocab * sizeof(float));
    if (!sh->lp_row || !sh->gram_row) {
        moe_gen_shared_free(sh);
        return moe_err(-ENOMEM, "out of memory");
    }
    *out = sh;
    return 0;
}

void moe_gen_shared_free(struct moe_gen_shared *sh)
{
    if (!sh)
        return;
    free(sh->lp_row);
    free(sh->gram_row);
    free(sh->gram_mask);
    free(sh->eog_ids);
    moe_vocab_trie_free(sh->trie);
    free(sh);
}

/* the grammar's tools, made once */
static int grammar_tools(struct moe_gen_shared *sh)
{
    if (sh->trie)
        return 0;
    int32_t V = sh->vocab, TV = moe_tokenizer_vocab_size(sh->tok);
    sh->mask_vocab = MOE_MAX(V, TV);
    sh->gram_mask = malloc(((size_t)sh->mask_vocab + 63) / 64 * sizeof(uint64_t));
    sh->eog_ids = malloc((size_t)V * sizeof(int32_t));
    if (!sh->gram_mask || !sh->eog_ids)
        return moe_err(-ENOMEM, "out of memory for structured output");
    sh->n_eog = 0;
    for (int32_t i = 0; i < V; i++)
        if (moe_tokenizer_is_eog(sh->tok, i))
            sh->eog_ids[sh->n_eog++] = i;
    return moe_vocab_trie_build(sh->tok, &sh->trie);
}

int moe_gen_create(struct moe_gen_shared *sh, const struct moe_gen_params *p,
                   struct moe_gen **out)
{
    *out = NULL;
    struct moe_gen *g = calloc(1, sizeof(*g));
    if (!g)
        return moe_err(-ENOMEM, "out of memory");
    g->sh = sh;
    g->p = *p;
    g->piece_cap = moe_tokenizer_max_piece(sh->tok) + 64; /* + U+FFFD for held bytes */
    g->piece = malloc(g->piece_cap);
    int rc = g->piece ? 0 : moe_err(-ENOMEM, "out of memory");
    if (!rc)
        rc = moe_sampler_create(&p->sampling, sh->vocab, &g->smp);
    if (!rc && p->n_stop)
        rc = moe_stop_create(p->stop, p->n_stop, &g->stop);
    if (!rc && p->grammar && (rc = grammar_tools(sh)) == 0 && !p->trigger)
        rc = moe_grammar_state_new(p->grammar, &g->gram);
    if (!rc && p->grammar && p->trigger && !(g->tail = malloc(strlen(p->trigger) + g->piece_cap)))
        rc = moe_err(-ENOMEM, "out of memory");
    if (rc) {
        moe_gen_free(g);
        return rc;
    }
    moe_detok_init(&g->detok, sh->tok);
    *out = g;
    return 0;
}

void moe_gen_free(struct moe_gen *g)
{
    if (!g)
        return;
    moe_sampler_free(g->smp);
    moe_stop_free(g->stop);
    moe_grammar_state_free(g->gram);
    free(g->tail);
    free(g->piece);
    free(g);
}

/* ---- logprobs ------------------------------------------------------------------ */

/* A token's text for logprobs: its bytes (cut at MOE_TOKEN_BYTES) */
static void token_text(const struct moe_tokenizer *t, int32_t id, float logprob,
                       struct moe_token_text *out)
{
    size_t n = moe_tokenizer_token_bytes(t, id, out->bytes, sizeof(out->bytes));
    out->len = (uint8_t)MOE_MIN(n, sizeof(out->bytes));
    out->logprob = logprob;
}

/* The log-softmax normaliser of row lg and its n_top likeliest tokens into
 * lp->top (n_top < 0: nothing) */
static double row_top(const struct moe_gen_shared *sh, const float *lg, int32_t n_top,
                      struct moe_token_logprob *lp)
{
    int32_t V = sh->vocab, top_id[MOE_LOGPROBS_MAX], k = 0;
    float top_v[MOE_LOGPROBS_MAX], mx = -INFINITY;
    for (int32_t i = 0; i < V; i++) {
        float x = lg[i];
        mx = x > mx ? x : mx;
        if (k < n_top || (n_top > 0 && x > top_v[k - 1])) { /* insertion, kept sorted */
            int32_t j = k < n_top ? k++ : k - 1;
            for (; j > 0 && top_v[j - 1] < x; j--)
                top_v[j] = top_v[j - 1], top_id[j] = top_id[j - 1];
            top_v[j] = x, top_id[j] = i;
        }
    }
    double lse = 0.0;
    for (int32_t i = 0; i < V; i++)
        lse += exp((double)(lg[i] - mx));
    lse = mx + log(lse);
    lp->n_top = k;
    for (int32_t j = 0; j < k; j++)
        token_text(sh->tok, top_id[j], (float)(top_v[j] - lse), &lp->top[j]);
    return lse;
}

void moe_gen_score(struct moe_gen_shared *sh, const float *row, int32_t n_top, int32_t tok,
                   struct moe_token_logprob *out)
{
    if (!row) {
        out->n_top = 0;
        token_text(sh->tok, tok, NAN, &out->tok);
        return;
    }
    double lse = row_top(sh, row, n_top, out);
    token_text(sh->tok, tok, (float)(row[tok] - lse), &out->tok);
}

/* ---- sampling under a grammar ---------------------------------------------------- */

/* whether token tok may come next under g's grammar */
static bool grammar_allows(struct moe_gen *g, int32_t tok)
{
    const struct moe_tokenizer *t = g->sh->tok;
    if (moe_tokenizer_is_eog(t, tok))
        return moe_grammar_can_end(g->gram);
    size_t n = moe_tokenizer_token_bytes(t, tok, g->piece, g->piece_cap);
    return n > 0 && n <= g->piece_cap && moe_grammar_accepts(g->gram, g->piece, n);
}

/* Where the sampler draws from the whole distribution (greedy, or
 * temperature alone), a draw the grammar allows is taken as it is: that is
 * exactly a draw from the masked distribution, and the mask is made only
 * when a draw is refused. Truncating samplers (top-k, top-p, min-p) see the
 * masked row first, as they must. */
static int32_t grammar_sample(struct moe_gen *g, float *lg, const int32_t *hist, size_t n_hist,
                              struct moe_gen_token *out)
{
    struct moe_gen_shared *sh = g->sh;
    const struct moe_sampling *p = &g->p.sampling;
    int32_t V = sh->vocab;
    memcpy(sh->gram_row, lg, (size_t)V * sizeof(float));
    if (p->temperature == 0.0f || (p->top_k == 0 && p->top_p >= 1.0f && p->min_p == 0.0f)) {
        int32_t tok = moe_sampler_sample(g->smp, lg, hist, n_hist);
        if (tok >= 0 && grammar_allows(g, tok))
            return tok;
        memcpy(lg, sh->gram_row, (size_t)V * sizeof(float));
    }
    double t0 = moe_now_s();
    int32_t n = moe_grammar_mask(g->gram, sh->trie, sh->gram_mask, sh->mask_vocab);
    for (int32_t i = 0; i < V; i++)
        if (!((sh->gram_mask[i >> 6] >> (i & 63)) & 1))
            lg[i] = -INFINITY;
    if (moe_grammar_can_end(g->gram)) {
        for (int32_t i = 0; i < sh->n_eog; i++)
            lg[sh->eog_ids[i]] = sh->gram_row[sh->eog_ids[i]];
        n += sh->n_eog;
    }
    out->masked = true;
    out->mask_s = moe_now_s() - t0;
    if (n == 0)
        return moe_err(-EINVAL, "structured output: no token can continue the text so far");
    return moe_sampler_sample(g->smp, lg, hist, n_hist);
}

/* ---- one step ------------------------------------------------------------------ */

/* With a trigger: the token's bytes join the tail; once the trigger is in
 * it, the grammar starts there and takes the rest. Text that does not fit
 * (the token went on past the trigger in a way the grammar refuses) leaves
 * generation free, as it was. */
static int watch_trigger(struct moe_gen *g, const char *b, size_t n)
{
    const char *t = g->p.trigger;
    size_t tl = strlen(t);
    memcpy(g->tail + g->n_tail, b, n);
    g->n_tail += n;
    const char *at = memmem(g->tail, g->n_tail, t, tl);
    if (!at) { /* keep what may still begin it */
        size_t keep = MOE_MIN(g->n_tail, tl - 1);
        memmove(g->tail, g->tail + g->n_tail - keep, keep);
        g->n_tail = keep;
        return 0;
    }
    int rc = moe_grammar_state_new(g->p.grammar, &g->gram);
    if (rc < 0)
        return rc;
    if (moe_grammar_advance(g->gram, at, (size_t)(g->tail + g->n_tail - at)) < 0) {
        moe_grammar_state_free(g->gram);
        g->gram = NULL;
        g->p.trigger = NULL, g->p.grammar = NULL; /* free text from here on */
    }
    g->n_tail = 0;
    return 0;
}

int moe_gen_step(struct moe_gen *g, float *lg, const int32_t *hist, size_t n_hist,
                 struct moe_gen_token *out)
{
    struct moe_gen_shared *sh = g->sh;
    const struct moe_tokenizer *t = sh->tok;
    memset(out, 0, sizeof(*out));
    out->id = -1;
    double lse = 0.0;
    if (g->p.logprobs) {
        lse = row_top(sh, lg, g->p.top_logprobs, &g->lp);
        memcpy(sh->lp_row, lg, (size_t)sh->vocab * sizeof(float)); /* the sampler edits lg */
    }
    for (size_t i = 0; i < g->p.n_bias; i++)
        lg[g->p.bias_id[i]] += g->p.bias[i];
    int32_t tok = g->gram ? grammar_sample(g, lg, hist, n_hist, out)
                          : moe_sampler_sample(g->smp, lg, hist, n_hist);
    if (tok < 0)
        return tok;
    out->id = tok;
    if (!g->p.ignore_eos && moe_tokenizer_is_eog(t, tok)) {
        out->eog = true;
        out->finish = "stop";
        out->flush = true;
        return 0;
    }
    if (g->p.logprobs) {
        token_text(t, tok, (float)(sh->lp_row[tok] - lse), &g->lp.tok);
        out->lp = &g->lp;
    }
    if (g->p.grammar && !moe_tokenizer_is_eog(t, tok)) { /* the grammar, or its trigger */
        size_t nb = MOE_MIN(moe_tokenizer_token_bytes(t, tok, g->piece, g->piece_cap),
                            g->piece_cap);
        if (g->gram && moe_grammar_advance(g->gram, g->piece, nb) < 0)
            return -EINVAL; /* sampled under the mask: cannot happen */
        int rc = g->gram ? 0 : watch_trigger(g, g->piece, nb);
        if (rc < 0)
            return rc;
    }
    g->generated++;
    size_t n = moe_detok_push(&g->detok, tok, g->piece, g->piece_cap);
    out->text = g->piece;
    out->len = n;
    if (g->stop && moe_stop_push(g->stop, g->piece, n, &out->text, &out->len)) {
        out->finish = "stop"; /* what follows the stop string is dropped */
    } else if (g->gram && moe_grammar_done(g->gram)) { /* nothing may follow */
        out->finish = "stop", out->flush = true;
    } else if (g->p.max_new >= 0 && g->generated >= g->p.max_new) {
        out->finish = "length", out->flush = true;
    }
    return 0;
}

size_t moe_gen_rest(struct moe_gen *g, const char **text, const char **more, size_t *n_more)
{
    size_t n = moe_detok_flush(&g->detok, g->piece, g->piece_cap);
    const char *out = g->piece;
    size_t n_out = n;
    *more = NULL;
    *n_more = 0;
    if (g->stop && !moe_stop_push(g->stop, g->piece, n, &out, &n_out))
        moe_stop_flush(g->stop, more, n_more); /* no stop string after all: held text is out */
    *text = out;
    return n_out;
}

int32_t moe_gen_count(const struct moe_gen *g)
{
    return g->generated;
}
