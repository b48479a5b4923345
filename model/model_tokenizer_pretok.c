/* Encoding up to the model step: added tokens split out of the raw text,
 * then per segment the normalizers and the pre-tokenizer (PCRE2 regex
 * splits with Hugging Face's delimiter behaviours), then each piece to
 * model_tokenizer_bpe.c. */
#define _GNU_SOURCE /* memmem */
#include "model/model_tokenizer_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

const char moe_tok_gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

int moe_tok_compile(const char *src, const char *pattern, size_t len, bool literal,
                    pcre2_code **out)
{
    int errcode, rc;
    PCRE2_SIZE erroff;
    char *pcre = NULL;
    *out = NULL;
    /* Hugging Face's patterns are Oniguruma's: rewritten where PCRE2 reads
     * them differently (model_tokenizer_regex.c) */
    if (!literal && (rc = moe_tok_regex_translate(src, pattern, len, &pcre)))
        return rc;
    pcre2_compile_context *cc = pcre2_compile_context_create(NULL);
    if (!cc) {
        free(pcre);
        return moe_err(-ENOMEM, "out of memory");
    }
    pcre2_set_newline(cc, PCRE2_NEWLINE_LF); /* '.' excludes \n only, as Oniguruma's */
    uint32_t opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF;
    opts |= literal ? PCRE2_LITERAL : PCRE2_UCP; /* LITERAL refuses UCP */
    *out = literal ? pcre2_compile((PCRE2_SPTR)pattern, len, opts, &errcode, &erroff, cc)
                   : pcre2_compile((PCRE2_SPTR)pcre, PCRE2_ZERO_TERMINATED, opts, &errcode,
                                   &erroff, cc);
    pcre2_compile_context_free(cc);
    if (!*out) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(errcode, msg, sizeof(msg));
        rc = moe_err(-EINVAL, "%s: regex \"%.*s\": %s (at offset %zu of \"%.*s\")", src,
                     (int)MOE_MIN(len, 200), pattern, (const char *)msg, (size_t)erroff,
                     (int)MOE_MIN(literal ? len : strlen(pcre), 300), literal ? pattern : pcre);
        free(pcre);
        return rc;
    }
    free(pcre);
    (void)pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE); /* interpreted if JIT is missing */
    return 0;
}

static char *dup_bytes(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        if (n)
            memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

int moe_tok_add_norm(struct moe_tokenizer *tok, enum moe_tok_norm_kind kind, const char *a,
                     size_t alen, const char *b, size_t blen, const char *regex)
{
    struct moe_tok_norm *n = realloc(tok->norms, (size_t)(tok->n_norms + 1) * sizeof(*n));
    if (!n)
        return moe_err(-ENOMEM, "out of memory");
    tok->norms = n;
    struct moe_tok_norm *x = &n[tok->n_norms];
    memset(x, 0, sizeof(*x));
    x->kind = kind;
    x->a = dup_bytes(a, alen);
    x->b = dup_bytes(b, blen);
    x->alen = alen;
    x->blen = blen;
    tok->n_norms++; /* freed with the tokenizer from here on */
    if (!x->a || !x->b)
        return moe_err(-ENOMEM, "out of memory");
    if (regex)
        return moe_tok_compile(tok->source, regex, strlen(regex), false, &x->re);
    return 0;
}

int moe_tok_add_pre(struct moe_tokenizer *tok, const struct moe_tok_pre *pre,
                    const char *pattern, size_t pattern_len, bool literal)
{
    struct moe_tok_pre *p = realloc(tok->pres, (size_t)(tok->n_pres + 1) * sizeof(*p));
    if (!p)
        return moe_err(-ENOMEM, "out of memory");
    tok->pres = p;
    p[tok->n_pres] = *pre;
    p[tok->n_pres].re = NULL;
    tok->n_pres++;
    if (pattern)
        return moe_tok_compile(tok->source, pattern, pattern_len, literal,
                               &p[tok->n_pres - 1].re);
    return 0;
}

int moe_tok_add_dec_replace(struct moe_tokenizer *tok, const char *a, size_t alen,
                            const char *b, size_t blen)
{
    struct moe_tok_norm *n = realloc(tok->dec_repl, (size_t)(tok->n_dec_repl + 1) * sizeof(*n));
    if (!n)
        return moe_err(-ENOMEM, "out of memory");
    tok->dec_repl = n;
    struct moe_tok_norm *x = &n[tok->n_dec_repl];
    memset(x, 0, sizeof(*x));
    x->kind = MOE_TOK_NORM_REPLACE;
    x->a = dup_bytes(a, alen);
    x->b = dup_bytes(b, blen);
    x->alen = alen;
    x->blen = blen;
    tok->n_dec_repl++;
    if (!x->a || !x->b)
        return moe_err(-ENOMEM, "out of memory");
    return 0;
}

/* ---- per-call state ------------------------------------------------------------ */
struct span {
    uint32_t off, len;
};

struct iv {
    uint32_t off, end;
    bool delim;
};

struct enc {
    const struct moe_tokenizer *tok;
    struct moe_tok_scratch *s;
    pcre2_match_data *md;
    pcre2_match_context *mc;
    pcre2_jit_stack *js;
    char *buf, *tmp; /* the segment being normalized */
    size_t n_buf, cap_buf, cap_tmp;
    struct span *pa, *pb; /* pieces before / after a split step */
    size_t n_pa, n_pb, cap_pa, cap_pb;
    struct iv *iv;
    size_t n_iv, cap_iv;
    struct moe_tok_ids *out;
};

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q)
        return moe_err(-ENOMEM, "out of memory");
    *p = q;
    *cap = c;
    return 0;
}

/* The next non-empty match of re in s[0..n) at or after from: 1 found, 0 none. */
static int re_next(struct enc *e, const pcre2_code *re, const char *s, size_t n, size_t from,
                   size_t *ms, size_t *me)
{
    while (from < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, from, 0, e->md, e->mc);
        if (rc == PCRE2_ERROR_NOMATCH)
            return 0;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof(msg));
            return moe_err(-EINVAL, "%s: pre-tokenizer regex failed: %s", e->tok->source,
                           (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        if (ov[1] > ov[0] && ov[1] <= n) {
            *ms = ov[0];
            *me = ov[1];
            return 1;
        }
        /* an empty match: step over one character */
        size_t at = MOE_MAX(ov[0], from);
        if (at >= n)
            return 0;
        size_t l = moe_utf8_len((const uint8_t *)s + at, n - at);
        from = at + (l ? l : 1);
    }
    return 0;
}

static int push_piece(struct enc *e, uint32_t off, uint32_t end)
{
    if (end <= off)
        return 0;
    if (grow((void **)&e->pb, &e->cap_pb, e->n_pb + 1, sizeof(*e->pb)))
        return -ENOMEM;
    e->pb[e->n_pb++] = (struct span){ off, end - off };
    return 0;
}

/* One split step over every piece (Hugging Face's Split with the
 * delimiter behaviours of SplitDelimiterBehavior). */
static int split_step(struct enc *e, const struct moe_tok_pre *pre)
{
    e->n_pb = 0;
    for (size_t k = 0; k < e->n_pa; k++) {
        const char *s = e->buf + e->pa[k].off;
        size_t n = e->pa[k].len, prev = 0, ms, me;
        uint32_t base = e->pa[k].off;
        e->n_iv = 0;
        for (;;) {
            int rc = re_next(e, pre->re, s, n, prev, &ms, &me);
            if (rc < 0)
                return rc;
            if (rc == 0)
                break;
            if (grow((void **)&e->iv, &e->cap_iv, e->n_iv + 2, sizeof(*e->iv)))
                return -ENOMEM;
            if (ms > prev)
                e->iv[e->n_iv++] = (struct iv){ base + (uint32_t)prev, base + (uint32_t)ms,
                                                pre->invert };
            e->iv[e->n_iv++] = (struct iv){ base + (uint32_t)ms, base + (uint32_t)me,
                                            !pre->invert };
            prev = me;
        }
        if (prev < n) {
            if (grow((void **)&e->iv, &e->cap_iv, e->n_iv + 1, sizeof(*e->iv)))
                return -ENOMEM;
            e->iv[e->n_iv++] = (struct iv){ base + (uint32_t)prev, base + (uint32_t)n,
                                            pre->invert };
        }

        struct iv *v = e->iv;
        size_t nv = e->n_iv;
        int rc = 0;
        switch (pre->behavior) {
        case MOE_TOK_SPLIT_REMOVED:
            for (size_t i = 0; i < nv && !rc; i++)
                if (!v[i].delim)
                    rc = push_piece(e, v[i].off, v[i].end);
            break;
        case MOE_TOK_SPLIT_ISOLATED:
            for (size_t i = 0; i < nv && !rc; i++)
                rc = push_piece(e, v[i].off, v[i].end);
            break;
        case MOE_TOK_SPLIT_MERGED_PREV: {
            /* a delimiter joins the piece before it (unless that one is a
             * delimiter itself) */
            size_t first = e->n_pb;
            bool prev_delim = false;
            for (size_t i = 0; i < nv && !rc; i++) {
                if (v[i].delim && !prev_delim && e->n_pb > first)
                    e->pb[e->n_pb - 1].len = v[i].end - e->pb[e->n_pb - 1].off;
                else
                    rc = push_piece(e, v[i].off, v[i].end);
                prev_delim = v[i].delim;
            }
            break;
        }
        case MOE_TOK_SPLIT_MERGED_NEXT: {
            /* a delimiter joins the piece after it (unless that one is a
             * delimiter itself): walk backwards, grow starts */
            bool next_delim = false;
            size_t w = nv; /* v[w..nv) holds the merged pieces, in order */
            for (size_t i = nv; i-- > 0;) {
                if (v[i].delim && !next_delim && w < nv) {
                    v[w].off = v[i].off;
                } else {
                    w--;
                    v[w] = v[i];
                }
                next_delim = v[i].delim;
            }
            for (size_t i = w; i < nv && !rc; i++)
                rc = push_piece(e, v[i].off, v[i].end);
            break;
        }
        case MOE_TOK_SPLIT_CONTIGUOUS: {
            size_t first = e->n_pb;
            bool prev_delim = false;
            for (size_t i = 0; i < nv && !rc; i++) {
                if (v[i].delim == prev_delim && e->n_pb > first)
                    e->pb[e->n_pb - 1].len = v[i].end - e->pb[e->n_pb - 1].off;
                else
                    rc = push_piece(e, v[i].off, v[i].end);
                prev_delim = v[i].delim;
            }
            break;
        }
        }
        if (rc)
            return rc;
    }
    struct span *t = e->pa;
    size_t tc = e->cap_pa;
    e->pa = e->pb;
    e->cap_pa = e->cap_pb;
    e->n_pa = e->n_pb;
    e->pb = t;
    e->cap_pb = tc;
    return 0;
}

/* ---- normalizing the segment in e->buf ----------------------------------------- */
static int buf_prepend(struct enc *e, const char *p, size_t n)
{
    if (grow((void **)&e->buf, &e->cap_buf, e->n_buf + n, 1))
        return -ENOMEM;
    memmove(e->buf + n, e->buf, e->n_buf);
    memcpy(e->buf, p, n);
    e->n_buf += n;
    return 0;
}

/* Every a -> b (literal), or every match of re -> b. */
static int buf_replace(struct enc *e, const char *a, size_t alen, const pcre2_code *re,
                       const char *b, size_t blen)
{
    size_t o = 0, i = 0;
    if (!re && alen == 0)
        return 0;
    for (;;) {
        size_t ms, me;
        if (re) {
            int rc = re_next(e, re, e->buf, e->n_buf, i, &ms, &me);
            if (rc < 0)
                return rc;
            if (rc == 0)
                ms = me = e->n_buf;
        } else {
            const char *f = e->n_buf >= i + alen ? memmem(e->buf + i, e->n_buf - i, a, alen) : NULL;
            ms = f ? (size_t)(f - e->buf) : e->n_buf;
            me = f ? ms + alen : ms;
        }
        size_t keep = ms - i;
        if (grow((void **)&e->tmp, &e->cap_tmp, o + keep + blen, 1))
            return -ENOMEM;
        memcpy(e->tmp + o, e->buf + i, keep);
        o += keep;
        if (ms == e->n_buf)
            break;
        memcpy(e->tmp + o, b, blen);
        o += blen;
        i = me;
    }
    char *t = e->buf;
    size_t tc = e->cap_buf;
    e->buf = e->tmp;
    e->cap_buf = e->cap_tmp;
    e->n_buf = o;
    e->tmp = t;
    e->cap_tmp = tc;
    return 0;
}

static int encode_segment(struct enc *e, const char *s, size_t n, bool first)
{
    const struct moe_tokenizer *tok = e->tok;
    int rc;
    if (grow((void **)&e->buf, &e->cap_buf, n, 1))
        return -ENOMEM;
    memcpy(e->buf, s, n);
    e->n_buf = n;

    for (int i = 0; i < tok->n_norms; i++) {
        const struct moe_tok_norm *x = &tok->norms[i];
        if (x->kind == MOE_TOK_NORM_PREPEND)
            rc = e->n_buf ? buf_prepend(e, x->a, x->alen) : 0;
        else
            rc = buf_replace(e, x->a, x->alen, x->re, x->b, x->blen);
        if (rc)
            return rc;
    }
    /* the pre-tokenizers' edits of the text, before any split */
    for (int i = 0; i < tok->n_pres && e->n_buf; i++) {
        const struct moe_tok_pre *p = &tok->pres[i];
        if (p->kind == MOE_TOK_PRE_METASPACE) {
            if ((rc = buf_replace(e, " ", 1, NULL, p->repl, p->repl_len)))
                return rc;
            bool want = p->prepend == MOE_TOK_PREPEND_ALWAYS ||
                        (p->prepend == MOE_TOK_PREPEND_FIRST && first);
            if (want && !(e->n_buf >= p->repl_len && memcmp(e->buf, p->repl, p->repl_len) == 0) &&
                (rc = buf_prepend(e, p->repl, p->repl_len)))
                return rc;
        } else if (p->kind == MOE_TOK_PRE_BYTELEVEL && p->add_prefix_space && e->buf[0] != ' ') {
            if ((rc = buf_prepend(e, " ", 1)))
                return rc;
        }
    }
    if (e->n_buf == 0)
        return 0;
    if (e->n_buf > UINT32_MAX)
        return moe_err(-EINVAL, "%s: text too long", tok->source);

    e->n_pa = 0;
    if (grow((void **)&e->pa, &e->cap_pa, 1, sizeof(*e->pa)))
        return -ENOMEM;
    e->pa[e->n_pa++] = (struct span){ 0, (uint32_t)e->n_buf };
    for (int i = 0; i < tok->n_pres; i++)
        if (tok->pres[i].re && (rc = split_step(e, &tok->pres[i])))
            return rc;
    for (size_t k = 0; k < e->n_pa; k++) {
        const char *p = e->buf + e->pa[k].off;
        size_t n = e->pa[k].len, start = 0;
        if (tok->spm_word_split) {
            /* cut before every "▁" that follows another character */
            static const char sp[] = "\xe2\x96\x81";
            for (size_t i = 1; i + 3 <= n;) {
                const char *f = memmem(p + i, n - i, sp, 3);
                if (!f)
                    break;
                i = (size_t)(f - p);
                if (!(i >= 3 && !memcmp(p + i - 3, sp, 3))) {
                    if ((rc = moe_tok_encode_piece(tok, e->s, p + start, i - start, e->out)))
                        return rc;
                    start = i;
                }
                i += 3;
            }
        }
        if ((rc = moe_tok_encode_piece(tok, e->s, p + start, n - start, e->out)))
            return rc;
    }
    return 0;
}

/* ---- added tokens --------------------------------------------------------------- */
static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* The leftmost, then longest, added token in text[from..len). */
static bool find_added(const struct moe_tokenizer *tok, const char *text, size_t len,
                       size_t from, size_t *ms, size_t *me, int32_t *id)
{
    if (tok->n_trie == 0)
        return false;
    const struct moe_tok_trie_node *t = tok->trie;
    for (size_t i = from; i < len; i++) {
        if (!tok->trie_first[(uint8_t)text[i]])
            continue;
        int32_t node = 0, best = -1;
        size_t best_end = 0;
        for (size_t j = i; j < len; j++) {
            int32_t c = t[node].child;
            while (c >= 0 && t[c].byte != (uint8_t)text[j])
                c = t[c].sibling;
            if (c < 0)
                break;
            node = c;
            if (t[node].id >= 0) {
                best = t[node].id;
                best_end = j + 1;
            }
        }
        if (best < 0)
            continue;
        size_t s = i, e = best_end;
        if (tok->lstrip[best])
            while (s > from && is_space(text[s - 1]))
                s--;
        if (tok->rstrip[best])
            while (e < len && is_space(text[e]))
                e++;
        *ms = s;
        *me = e;
        *id = best;
        return true;
    }
    return false;
}

int moe_tokenizer_encode(const struct moe_tokenizer *tok, const char *text, size_t len,
                         bool add_special, int32_t **ids, size_t *n_ids)
{
    *ids = NULL;
    *n_ids = 0;
    if (!text && len)
        return moe_err(-EINVAL, "tokenizer: NULL text");
    struct moe_tok_ids out = { 0 };
    struct enc e = { .tok = tok, .out = &out };
    int rc = -ENOMEM;
    e.s = moe_tok_scratch_new();
    e.md = pcre2_match_data_create(8, NULL);
    e.mc = pcre2_match_context_create(NULL);
    e.js = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, NULL);
    if (!e.s || !e.md || !e.mc || !e.js)
        goto fail;
    pcre2_jit_stack_assign(e.mc, NULL, e.js);

    if (add_special && tok->add_bos && tok->bos >= 0 && moe_tok_ids_push(&out, tok->bos))
        goto fail;
    for (size_t pos = 0; pos < len;) {
        size_t ms = len, me = len;
        int32_t id = -1;
        find_added(tok, text, len, pos, &ms, &me, &id);
        if (ms > pos && (rc = encode_segment(&e, text + pos, ms - pos, pos == 0)))
            goto fail;
        rc = -ENOMEM;
        if (id >= 0 && moe_tok_ids_push(&out, id))
            goto fail;
        pos = me;
    }
    if (add_special && tok->add_eos && tok->eos >= 0 && moe_tok_ids_push(&out, tok->eos))
        goto fail;
    if (!out.v && !(out.v = malloc(sizeof(int32_t))))
        goto fail;
    *ids = out.v;
    *n_ids = out.n;
    out.v = NULL;
    rc = 0;
fail:
    if (rc == -ENOMEM)
        moe_err(rc, "%s: out of memory while encoding", tok->source);
    free(out.v);
    moe_tok_scratch_free(e.s);
    pcre2_match_data_free(e.md);
    pcre2_match_context_free(e.mc);
    pcre2_jit_stack_free(e.js);
    free(e.buf);
    free(e.tmp);
    free(e.pa);
    free(e.pb);
    free(e.iv);
    return rc;
}
