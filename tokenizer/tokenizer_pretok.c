/* Encoding up to the model step: added tokens split out of the raw text,
 * then per segment the normalizers (NFC, Prepend, Replace) and the
 * pre-tokenizer steps in order, with Hugging Face's semantics (its regexes
 * read as Oniguruma reads them: tokenizer_regex.c; its delimiter
 * behaviours; ByteLevel and Metaspace edits per piece; steps after ByteLevel
 * on the byte-mapped text), then each piece to tokenizer_bpe.c. */
#define _GNU_SOURCE /* memmem */
#include "tokenizer/tokenizer_int.h"

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
     * them differently (tokenizer_regex.c) */
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

/* What the built-in pre-tokenizers split at (Oniguruma syntax): Rust's
 * char::is_numeric (general category N); is_ascii_punctuation or general
 * category P; Hugging Face's Whitespace regex; char::is_whitespace. */
static const char digit_pattern[] = "\\p{N}";
static const char digit_run_pattern[] = "\\p{N}+";
static const char punct_pattern[] = "[\\p{P}!-/:-@\\[-`{-~]";
static const char punct_run_pattern[] = "[\\p{P}!-/:-@\\[-`{-~]+";
static const char whitespace_pattern[] = "\\w+|[^\\w\\s]+";
static const char space_pattern[] = "\\s";

int moe_tok_add_step(struct moe_tokenizer *tok, const struct moe_tok_step *st)
{
    struct moe_tok_pre *all = realloc(tok->pres, (size_t)(tok->n_pres + 1) * sizeof(*all));
    if (!all)
        return moe_err(-ENOMEM, "out of memory");
    tok->pres = all;
    struct moe_tok_pre *p = &all[tok->n_pres++]; /* freed with the tokenizer from here on */
    memset(p, 0, sizeof(*p));
    p->step = *st;
    p->step.pattern = NULL;
    p->step.replacement = NULL;
    p->behavior = st->behavior;
    const char *pat = NULL;
    size_t plen = 0;
    bool literal = false;
    switch (st->kind) {
    case MOE_TOK_STEP_SPLIT:
        if (!st->pattern)
            return moe_err(-EINVAL, "%s: Split without a pattern", tok->source);
        pat = st->pattern;
        plen = st->pattern_len ? st->pattern_len : strlen(pat);
        literal = st->literal;
        p->invert = st->invert;
        break;
    case MOE_TOK_STEP_DIGITS: /* each numeric character; or runs of them */
        pat = st->individual ? digit_pattern : digit_run_pattern;
        p->behavior = MOE_TOK_SPLIT_ISOLATED;
        break;
    case MOE_TOK_STEP_PUNCTUATION:
        /* Contiguous over one-character matches is runs of them, isolated */
        pat = p->behavior == MOE_TOK_SPLIT_CONTIGUOUS ? punct_run_pattern : punct_pattern;
        if (p->behavior == MOE_TOK_SPLIT_CONTIGUOUS)
            p->behavior = MOE_TOK_SPLIT_ISOLATED;
        break;
    case MOE_TOK_STEP_WHITESPACE:
        pat = whitespace_pattern;
        p->behavior = MOE_TOK_SPLIT_REMOVED;
        p->invert = true;
        break;
    case MOE_TOK_STEP_WSSPLIT:
        pat = space_pattern;
        p->behavior = MOE_TOK_SPLIT_REMOVED;
        break;
    case MOE_TOK_STEP_BYTELEVEL:
        tok->byte_level = true;
        pat = st->use_regex ? moe_tok_gpt2_pattern : NULL;
        p->behavior = MOE_TOK_SPLIT_ISOLATED;
        break;
    case MOE_TOK_STEP_METASPACE: {
        const char *r = st->replacement ? st->replacement : "\xe2\x96\x81"; /* ▁ */
        size_t rl = strlen(r);
        if (rl == 0 || rl >= sizeof(p->repl) || moe_utf8_len((const uint8_t *)r, rl) != rl)
            return moe_err(-EINVAL, "%s: Metaspace: the replacement must be one character",
                           tok->source);
        memcpy(p->repl, r, rl);
        p->repl_len = rl;
        p->step.replacement = p->repl;
        if (st->split) { /* at each replacement character, which starts the next piece */
            pat = p->repl;
            plen = rl;
            literal = true;
            p->behavior = MOE_TOK_SPLIT_MERGED_NEXT;
        }
        break;
    }
    default:
        return moe_err(-EINVAL, "%s: unknown pre-tokenizer step %d", tok->source, (int)st->kind);
    }
    if (!pat)
        return 0;
    if (!plen)
        plen = strlen(pat);
    if (st->kind == MOE_TOK_STEP_SPLIT) { /* kept: presets are recognised by it */
        if (!(p->pattern_buf = dup_bytes(pat, plen)))
            return moe_err(-ENOMEM, "out of memory");
        p->step.pattern = p->pattern_buf;
        p->step.pattern_len = plen;
    }
    int rc = moe_tok_compile(tok->source, pat, plen, literal, &p->re);
    size_t jit = 0;
    if (rc == 0 && pcre2_pattern_info(p->re, PCRE2_INFO_JITSIZE, &jit) == 0)
        p->jit = jit > 0;
    return rc;
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
    bool start; /* begins where the input text begins (Metaspace's "first") */
};

struct iv {
    uint32_t off, end;
    bool match;
};

struct enc {
    const struct moe_tokenizer *tok;
    struct moe_tok_scratch *s;
    pcre2_match_data *md;
    pcre2_match_context *mc;
    pcre2_jit_stack *js;
    char *buf, *tmp; /* the segment being normalized */
    size_t n_buf, cap_buf, cap_tmp;
    bool mapped; /* buf holds byte-level characters (a step ran after ByteLevel) */
    char *raw;   /* a piece mapped back to bytes */
    size_t cap_raw;
    uint32_t *cps; /* NFC's code points */
    size_t cap_cps;
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

static int push_iv(struct enc *e, size_t off, size_t end, bool match)
{
    if (grow((void **)&e->iv, &e->cap_iv, e->n_iv + 1, sizeof(*e->iv)))
        return -ENOMEM;
    e->iv[e->n_iv++] = (struct iv){ (uint32_t)off, (uint32_t)end, match };
    return 0;
}

/* The matches of re in s[0..n) and the text between them, in order, as
 * Hugging Face's Pattern::find_matches gives them (Oniguruma's find_iter:
 * an empty match counts, except one right where the previous match ended;
 * then the search moves on by a character). */
static int find_matches(struct enc *e, const pcre2_code *re, bool jit, const char *s, size_t n,
                        bool invert)
{
    e->n_iv = 0;
    if (n == 0)
        return push_iv(e, 0, 0, invert);
    size_t prev = 0, from = 0, last_match_end = SIZE_MAX;
    while (from <= n) {
        /* pcre2_jit_match skips pcre2_match's checks: a match is a call here */
        int rc = jit ? pcre2_jit_match(re, (PCRE2_SPTR)s, n, from, 0, e->md, e->mc)
                     : pcre2_match(re, (PCRE2_SPTR)s, n, from, 0, e->md, e->mc);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof(msg));
            return moe_err(-EINVAL, "%s: pre-tokenizer regex failed: %s", e->tok->source,
                           (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        size_t ms = ov[0], me = ov[1];
        if (me < ms || me > n) /* \K can do that; Oniguruma has none of it */
            return moe_err(-EINVAL, "%s: pre-tokenizer regex matched backwards", e->tok->source);
        if (ms == me && me == last_match_end) {
            if (from >= n)
                break;
            size_t l = moe_utf8_len((const uint8_t *)s + from, n - from);
            from += l ? l : 1;
            continue;
        }
        from = last_match_end = me;
        if (ms > prev && push_iv(e, prev, ms, invert))
            return -ENOMEM;
        if (push_iv(e, ms, me, !invert))
            return -ENOMEM;
        prev = me;
    }
    if (prev < n && push_iv(e, prev, n, invert))
        return -ENOMEM;
    return 0;
}

static int push_span(struct enc *e, uint32_t off, uint32_t end)
{
    if (grow((void **)&e->pb, &e->cap_pb, e->n_pb + 1, sizeof(*e->pb)))
        return -ENOMEM;
    e->pb[e->n_pb++] = (struct span){ off, end - off, false };
    return 0;
}

/* One splitting step over every piece: Hugging Face's NormalizedString::split
 * with the delimiter behaviours of SplitDelimiterBehavior, empty pieces
 * dropped at the end. */
static int split_step(struct enc *e, const struct moe_tok_pre *pre)
{
    e->n_pb = 0;
    for (size_t k = 0; k < e->n_pa; k++) {
        const struct span in = e->pa[k];
        int rc = find_matches(e, pre->re, pre->jit, e->buf + in.off, in.len, pre->invert);
        if (rc)
            return rc;
        const struct iv *v = e->iv;
        size_t nv = e->n_iv, first = e->n_pb;
        uint32_t b = in.off;
        bool prev_match = false;
        if (pre->behavior == MOE_TOK_SPLIT_ISOLATED || pre->behavior == MOE_TOK_SPLIT_REMOVED) {
            /* no piece joins another: the non-empty ones go straight out */
            if (grow((void **)&e->pb, &e->cap_pb, e->n_pb + nv, sizeof(*e->pb)))
                return -ENOMEM;
            bool keep_matches = pre->behavior == MOE_TOK_SPLIT_ISOLATED;
            for (size_t i = 0; i < nv; i++)
                if (v[i].end > v[i].off && (keep_matches || !v[i].match))
                    e->pb[e->n_pb++] = (struct span){ b + v[i].off, v[i].end - v[i].off,
                                                      in.start && v[i].off == 0 };
            continue;
        }
        switch (pre->behavior) {
        case MOE_TOK_SPLIT_REMOVED:
        case MOE_TOK_SPLIT_ISOLATED:
            break;
        case MOE_TOK_SPLIT_MERGED_PREV: /* a match joins the piece before it */
            for (size_t i = 0; i < nv && !rc; i++) {
                if (v[i].match && !prev_match && e->n_pb > first)
                    e->pb[e->n_pb - 1].len = b + v[i].end - e->pb[e->n_pb - 1].off;
                else
                    rc = push_span(e, b + v[i].off, b + v[i].end);
                prev_match = v[i].match;
            }
            break;
        case MOE_TOK_SPLIT_MERGED_NEXT: /* a match joins the piece after it: backwards */
            for (size_t i = nv; i-- > 0 && !rc;) {
                if (v[i].match && !prev_match && e->n_pb > first) {
                    struct span *x = &e->pb[e->n_pb - 1];
                    x->len = x->off + x->len - (b + v[i].off);
                    x->off = b + v[i].off;
                } else {
                    rc = push_span(e, b + v[i].off, b + v[i].end);
                }
                prev_match = v[i].match;
            }
            for (size_t i = first, j = e->n_pb; !rc && i + 1 < j; i++, j--) {
                struct span t = e->pb[i];
                e->pb[i] = e->pb[j - 1];
                e->pb[j - 1] = t;
            }
            break;
        case MOE_TOK_SPLIT_CONTIGUOUS: /* neighbours of the same kind join */
            for (size_t i = 0; i < nv && !rc; i++) {
                if (v[i].match == prev_match && e->n_pb > first)
                    e->pb[e->n_pb - 1].len = b + v[i].end - e->pb[e->n_pb - 1].off;
                else
                    rc = push_span(e, b + v[i].off, b + v[i].end);
                prev_match = v[i].match;
            }
            break;
        }
        if (rc)
            return rc;
        size_t w = first; /* drop the empty pieces; the first one keeps "start" */
        for (size_t i = first; i < e->n_pb; i++) {
            if (e->pb[i].len == 0)
                continue;
            e->pb[i].start = in.start && e->pb[i].off == in.off;
            e->pb[w++] = e->pb[i];
        }
        e->n_pb = w;
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

/* ---- the steps that edit pieces ------------------------------------------------- */
enum edit { EDIT_PREFIX_SPACE, EDIT_METASPACE, EDIT_MAP_BYTES };

/* Rewrites every piece into a fresh buffer: ByteLevel's prefix space,
 * Metaspace's replacement and prefix, or the byte -> character mapping. */
static int edit_pieces(struct enc *e, enum edit op, const struct moe_tok_pre *p)
{
    size_t o = 0;
    for (size_t k = 0; k < e->n_pa; k++) {
        struct span *x = &e->pa[k];
        size_t worst = op == EDIT_MAP_BYTES ? 2 * (size_t)x->len
                       : op == EDIT_PREFIX_SPACE ? (size_t)x->len + 1
                                                 : ((size_t)x->len + 1) * p->repl_len;
        if (grow((void **)&e->tmp, &e->cap_tmp, o + worst, 1))
            return -ENOMEM;
        const char *src = e->buf + x->off;
        char *dst = e->tmp;
        size_t start = o;
        switch (op) {
        case EDIT_PREFIX_SPACE:
            if (src[0] != ' ')
                dst[o++] = ' ';
            memcpy(dst + o, src, x->len);
            o += x->len;
            break;
        case EDIT_METASPACE: {
            const struct moe_tok_step *st = &p->step;
            bool want = st->prepend == MOE_TOK_PREPEND_ALWAYS ||
                        (st->prepend == MOE_TOK_PREPEND_FIRST && x->start);
            if (want && src[0] != ' ' &&
                !(x->len >= p->repl_len && !memcmp(src, p->repl, p->repl_len))) {
                memcpy(dst + o, p->repl, p->repl_len);
                o += p->repl_len;
            }
            for (uint32_t i = 0; i < x->len; i++) {
                if (src[i] == ' ') {
                    memcpy(dst + o, p->repl, p->repl_len);
                    o += p->repl_len;
                } else {
                    dst[o++] = src[i];
                }
            }
            break;
        }
        case EDIT_MAP_BYTES:
            for (uint32_t i = 0; i < x->len; i++)
                o += moe_utf8_put(moe_tok_byte_to_cp((uint8_t)src[i]), dst + o);
            break;
        }
        if (o > UINT32_MAX)
            return moe_err(-EINVAL, "%s: text too long", e->tok->source);
        x->off = (uint32_t)start;
        x->len = (uint32_t)(o - start);
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

/* Does a step after pres[i] look at the text (so it must see it mapped)? */
static bool text_steps_after(const struct moe_tokenizer *tok, int i)
{
    for (int k = i + 1; k < tok->n_pres; k++)
        if (tok->pres[k].re || tok->pres[k].step.kind == MOE_TOK_STEP_METASPACE ||
            tok->pres[k].step.kind == MOE_TOK_STEP_BYTELEVEL)
            return true;
    return false;
}

/* A mapped piece back to the bytes its characters stand for. */
static int unmap_piece(struct enc *e, const char *p, size_t n, size_t *out_n)
{
    if (grow((void **)&e->raw, &e->cap_raw, n, 1))
        return -ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t l = moe_utf8_len((const uint8_t *)p + i, n - i);
        uint32_t cp = l ? (uint8_t)p[i] & (0xff >> (l + (l > 1))) : 0;
        for (size_t k = 1; k < l; k++)
            cp = cp << 6 | ((uint8_t)p[i + k] & 0x3f);
        int b = l ? moe_tok_cp_to_byte(cp) : -1;
        if (b < 0) /* only mapped characters are there; cannot happen */
            return moe_err(-EINVAL, "%s: byte-level text holds U+%04X", e->tok->source, cp);
        e->raw[o++] = (char)b;
        i += l;
    }
    *out_n = o;
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

/* Every a -> b (literal), or every match of re -> b (as Hugging Face's
 * Replace: an empty match inserts b too). */
static int buf_replace(struct enc *e, const char *a, size_t alen, const pcre2_code *re,
                       const char *b, size_t blen)
{
    size_t o = 0;
    if (re) {
        int rc = find_matches(e, re, false, e->buf, e->n_buf, false);
        if (rc)
            return rc;
        for (size_t k = 0; k < e->n_iv; k++) {
            const struct iv *v = &e->iv[k];
            size_t n = v->match ? blen : v->end - v->off;
            if (grow((void **)&e->tmp, &e->cap_tmp, o + n, 1))
                return -ENOMEM;
            memcpy(e->tmp + o, v->match ? b : e->buf + v->off, n);
            o += n;
        }
    } else {
        if (alen == 0)
            return 0;
        for (size_t i = 0;;) {
            const char *f = e->n_buf >= i + alen ? memmem(e->buf + i, e->n_buf - i, a, alen)
                                                 : NULL;
            size_t ms = f ? (size_t)(f - e->buf) : e->n_buf, keep = ms - i;
            if (grow((void **)&e->tmp, &e->cap_tmp, o + keep + blen, 1))
                return -ENOMEM;
            memcpy(e->tmp + o, e->buf + i, keep);
            o += keep;
            if (!f)
                break;
            memcpy(e->tmp + o, b, blen);
            o += blen;
            i = ms + alen;
        }
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

static int buf_nfc(struct enc *e)
{
    size_t n;
    int rc = moe_tok_nfc(e->buf, e->n_buf, &e->tmp, &e->cap_tmp, &n, &e->cps, &e->cap_cps);
    if (rc)
        return rc;
    char *t = e->buf;
    size_t tc = e->cap_buf;
    e->buf = e->tmp;
    e->cap_buf = e->cap_tmp;
    e->n_buf = n;
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
        else if (x->kind == MOE_TOK_NORM_NFC)
            rc = moe_tok_is_nfc(e->buf, e->n_buf) ? 0 : buf_nfc(e);
        else
            rc = buf_replace(e, x->a, x->alen, x->re, x->b, x->blen);
        if (rc)
            return rc;
    }
    if (e->n_buf == 0)
        return 0;
    if (e->n_buf > UINT32_MAX / 4)
        return moe_err(-EINVAL, "%s: text too long", tok->source);

    /* the pre-tokenizer steps, in order, over the pieces */
    e->n_pa = 0;
    e->mapped = false;
    if (grow((void **)&e->pa, &e->cap_pa, 1, sizeof(*e->pa)))
        return -ENOMEM;
    e->pa[e->n_pa++] = (struct span){ 0, (uint32_t)e->n_buf, first };
    for (int i = 0; i < tok->n_pres && e->n_pa; i++) {
        const struct moe_tok_pre *p = &tok->pres[i];
        rc = 0;
        switch (p->step.kind) {
        case MOE_TOK_STEP_BYTELEVEL:
            if (p->step.add_prefix_space)
                rc = edit_pieces(e, EDIT_PREFIX_SPACE, p);
            if (!rc && p->re)
                rc = split_step(e, p);
            if (!rc && !e->mapped && text_steps_after(tok, i)) {
                rc = edit_pieces(e, EDIT_MAP_BYTES, p);
                e->mapped = true;
            }
            break;
        case MOE_TOK_STEP_METASPACE:
            rc = edit_pieces(e, EDIT_METASPACE, p);
            if (!rc && p->re)
                rc = split_step(e, p);
            break;
        default:
            rc = split_step(e, p);
            break;
        }
        if (rc)
            return rc;
    }

    for (size_t k = 0; k < e->n_pa; k++) {
        const char *p = e->buf + e->pa[k].off;
        size_t n = e->pa[k].len, start = 0;
        if (e->mapped) {
            if ((rc = unmap_piece(e, p, n, &n)))
                return rc;
            p = e->raw;
        }
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
    free(e.raw);
    free(e.cps);
    return rc;
}
