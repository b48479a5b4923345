/* The tokenizer's core: vocabulary, merge table, added-token trie, decoding.
 * The loaders (tokenizer_hf.c, tokenizer_gguf.c) fill it; the
 * encoder lives in tokenizer_pretok.c and tokenizer_bpe.c. */
#include "tokenizer/tokenizer_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

/* ---- hashing ---------------------------------------------------------------- */
uint64_t moe_tok_hash(const void *p, size_t n)
{
    const uint8_t *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    h = (h ^ v) * 0x94d049bb133111ebull;
    h ^= h >> 32;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 29;
    return h;
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c *= 2;
    return c;
}

/* ---- UTF-8 and GPT-2's byte mapping ---------------------------------------- */
size_t moe_utf8_len(const uint8_t *s, size_t n)
{
    if (n == 0)
        return 0;
    uint8_t c = s[0];
    if (c < 0x80)
        return 1;
    size_t need;
    uint8_t lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
        need = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (n < need || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < need; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return need;
}

bool moe_utf8_valid(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t l = moe_utf8_len(s + i, n - i);
        if (!l)
            return false;
        i += l;
    }
    return true;
}

size_t moe_utf8_put(uint32_t cp, char *out)
{
    uint8_t *o = (uint8_t *)out;
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xc0 | (cp >> 6));
        o[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xe0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (uint8_t)(0xf0 | (cp >> 18));
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

/* GPT-2: printable bytes stand for themselves; the other 68 bytes map, in
 * order, to U+0100 onwards, so every byte is a visible character. */
static uint16_t byte_cp[256];
static int16_t cp_byte[324]; /* code points 0..323 -> byte, -1 if none */
static pthread_once_t byte_map_once = PTHREAD_ONCE_INIT;

static void byte_map_init(void)
{
    uint16_t next = 256;
    for (int i = 0; i < 324; i++)
        cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
        byte_cp[b] = printable ? (uint16_t)b : next++;
        cp_byte[byte_cp[b]] = (int16_t)b;
    }
}

uint32_t moe_tok_byte_to_cp(uint8_t b)
{
    pthread_once(&byte_map_once, byte_map_init);
    return byte_cp[b];
}

int moe_tok_cp_to_byte(uint32_t cp)
{
    pthread_once(&byte_map_once, byte_map_init);
    return cp < 324 ? cp_byte[cp] : -1;
}

/* ---- building ----------------------------------------------------------------- */
int moe_tok_new(int32_t n_vocab, const char *source, struct moe_tokenizer **out)
{
    *out = NULL;
    if (n_vocab <= 0 || n_vocab > MOE_TOK_MAX_VOCAB)
        return moe_err(-EINVAL, "%s: vocabulary size %d out of range", source, n_vocab);
    struct moe_tokenizer *t = calloc(1, sizeof(*t));
    if (!t)
        return moe_err(-ENOMEM, "out of memory");
    t->n_vocab = n_vocab;
    t->unk_id = t->bos = t->eos = t->eot = t->eom = -1;
    t->text_off = calloc((size_t)n_vocab, sizeof(uint32_t));
    t->text_n = calloc((size_t)n_vocab, sizeof(uint32_t));
    t->type = calloc((size_t)n_vocab, 1);
    t->eog = calloc((size_t)n_vocab, 1);
    t->lstrip = calloc((size_t)n_vocab, 1);
    t->rstrip = calloc((size_t)n_vocab, 1);
    t->source = strdup(source);
    moe_tok_cache_init(&t->cache);
    if (!t->text_off || !t->text_n || !t->type || !t->eog || !t->lstrip || !t->rstrip ||
        !t->source) {
        moe_tokenizer_free(t);
        return moe_err(-ENOMEM, "out of memory");
    }
    for (int i = 0; i < 256; i++)
        t->byte_id[i] = -1;
    *out = t;
    return 0;
}

int moe_tok_set_token(struct moe_tokenizer *tok, int32_t id, const char *s, size_t n, int type)
{
    if (id < 0 || id >= tok->n_vocab)
        return moe_err(-EINVAL, "%s: token id %d out of range", tok->source, id);
    if (n > UINT32_MAX / 4)
        return moe_err(-EINVAL, "%s: token %d too long", tok->source, id);
    if (tok->text_len + n > tok->text_cap) {
        size_t cap = tok->text_cap ? tok->text_cap : 1 << 16;
        while (cap < tok->text_len + n)
            cap *= 2;
        if (cap > UINT32_MAX)
            return moe_err(-EINVAL, "%s: vocabulary text too large", tok->source);
        char *p = realloc(tok->text, cap);
        if (!p)
            return moe_err(-ENOMEM, "out of memory");
        tok->text = p;
        tok->text_cap = cap;
    }
    if (n)
        memcpy(tok->text + tok->text_len, s, n);
    tok->text_off[id] = (uint32_t)tok->text_len;
    tok->text_n[id] = (uint32_t)n;
    tok->text_len += n;
    tok->type[id] = (uint8_t)type;
    return 0;
}

static const char *tok_text(const struct moe_tokenizer *tok, int32_t id)
{
    return tok->text + tok->text_off[id];
}

int moe_tok_build_vocab(struct moe_tokenizer *tok)
{
    size_t n_defined = 0;
    for (int32_t id = 0; id < tok->n_vocab; id++)
        n_defined += tok->type[id] != MOE_TOK_UNDEFINED && tok->text_n[id] > 0;
    size_t cap = pow2_at_least(n_defined * 2);
    free(tok->vocab);
    tok->vocab = malloc(cap * sizeof(*tok->vocab));
    if (!tok->vocab)
        return moe_err(-ENOMEM, "out of memory");
    for (size_t i = 0; i < cap; i++)
        tok->vocab[i].id = -1;
    tok->vocab_mask = cap - 1;
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        if (tok->type[id] == MOE_TOK_UNDEFINED || tok->text_n[id] == 0)
            continue;
        uint64_t h = moe_tok_hash(tok_text(tok, id), tok->text_n[id]);
        size_t i = h & tok->vocab_mask;
        bool dup = false;
        while (tok->vocab[i].id >= 0) {
            int32_t o = tok->vocab[i].id;
            if (tok->vocab[i].hash == h && tok->text_n[o] == tok->text_n[id] &&
                memcmp(tok_text(tok, o), tok_text(tok, id), tok->text_n[id]) == 0) {
                dup = true;
                break;
            }
            i = (i + 1) & tok->vocab_mask;
        }
        if (!dup) {
            tok->vocab[i].hash = h;
            tok->vocab[i].id = id;
        }
    }
    return 0;
}

int32_t moe_tok_lookup(const struct moe_tokenizer *tok, const char *s, size_t n)
{
    if (!tok->vocab || n == 0)
        return -1;
    uint64_t h = moe_tok_hash(s, n);
    for (size_t i = h & tok->vocab_mask;; i = (i + 1) & tok->vocab_mask) {
        int32_t id = tok->vocab[i].id;
        if (id < 0)
            return -1;
        if (tok->vocab[i].hash == h && tok->text_n[id] == n &&
            memcmp(tok_text(tok, id), s, n) == 0)
            return id;
    }
}

static int pairs_resize(struct moe_tokenizer *tok, size_t cap)
{
    struct moe_tok_pair_slot *ns = malloc(cap * sizeof(*ns));
    if (!ns)
        return moe_err(-ENOMEM, "out of memory");
    for (size_t i = 0; i < cap; i++)
        ns[i].key = UINT64_MAX;
    size_t mask = cap - 1;
    if (tok->pairs) {
        for (size_t i = 0; i <= tok->pairs_mask; i++) {
            if (tok->pairs[i].key == UINT64_MAX)
                continue;
            size_t j = moe_tok_pair_hash(tok->pairs[i].key) & mask;
            while (ns[j].key != UINT64_MAX)
                j = (j + 1) & mask;
            ns[j] = tok->pairs[i];
        }
    }
    free(tok->pairs);
    tok->pairs = ns;
    tok->pairs_mask = mask;
    return 0;
}

int moe_tok_reserve_merges(struct moe_tokenizer *tok, size_t n)
{
    size_t cap = pow2_at_least(n * 2);
    if (tok->pairs && cap <= tok->pairs_mask + 1)
        return 0;
    return pairs_resize(tok, cap);
}

int moe_tok_add_merge(struct moe_tokenizer *tok, const char *a, size_t alen, const char *b,
                      size_t blen, int32_t rank)
{
    int32_t ia = moe_tok_lookup(tok, a, alen), ib = moe_tok_lookup(tok, b, blen);
    if (ia < 0 || ib < 0)
        return 0;
    char small[256];
    char *ab = alen + blen <= sizeof(small) ? small : malloc(alen + blen);
    if (!ab)
        return moe_err(-ENOMEM, "out of memory");
    memcpy(ab, a, alen);
    memcpy(ab + alen, b, blen);
    int32_t iab = moe_tok_lookup(tok, ab, alen + blen);
    if (ab != small)
        free(ab);
    if (iab < 0)
        return 0;
    if (!tok->pairs || (tok->n_pairs + 1) * 2 > tok->pairs_mask + 1) {
        int rc = pairs_resize(tok, tok->pairs ? (tok->pairs_mask + 1) * 2 : 1024);
        if (rc)
            return rc;
    }
    uint64_t key = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib;
    size_t i = moe_tok_pair_hash(key) & tok->pairs_mask;
    while (tok->pairs[i].key != UINT64_MAX) {
        if (tok->pairs[i].key == key)
            return 0; /* the first rank stays */
        i = (i + 1) & tok->pairs_mask;
    }
    tok->pairs[i].key = key;
    tok->pairs[i].rank = rank;
    tok->pairs[i].id = iab;
    tok->n_pairs++;
    return 0;
}

/* ---- finishing ---------------------------------------------------------------- */
static size_t lossy_len(const struct moe_tokenizer *tok, const uint8_t *p, size_t n);

static int trie_node(struct moe_tokenizer *tok, uint8_t byte)
{
    if (tok->n_trie == tok->cap_trie) {
        size_t cap = tok->cap_trie ? tok->cap_trie * 2 : 64;
        struct moe_tok_trie_node *p = realloc(tok->trie, cap * sizeof(*p));
        if (!p)
            return -ENOMEM;
        tok->trie = p;
        tok->cap_trie = cap;
    }
    struct moe_tok_trie_node *n = &tok->trie[tok->n_trie];
    n->child = n->sibling = n->id = -1;
    n->byte = byte;
    return (int)tok->n_trie++;
}

static int trie_insert(struct moe_tokenizer *tok, const uint8_t *s, size_t n, int32_t id)
{
    if (tok->n_trie == 0 && trie_node(tok, 0) < 0)
        return moe_err(-ENOMEM, "out of memory");
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = tok->trie[node].child;
        while (c >= 0 && tok->trie[c].byte != s[i])
            c = tok->trie[c].sibling;
        if (c < 0) {
            c = trie_node(tok, s[i]);
            if (c < 0)
                return moe_err(-ENOMEM, "out of memory");
            tok->trie[c].sibling = tok->trie[node].child;
            tok->trie[node].child = c;
        }
        node = c;
    }
    if (tok->trie[node].id < 0)
        tok->trie[node].id = id;
    tok->trie_first[s[0]] = 1;
    return 0;
}

/* What a vocabulary token decodes to, into out (room for the text's length:
 * decoding never makes a token longer). */
static size_t decode_token(const struct moe_tokenizer *tok, int32_t id, char *out)
{
    const char *s = tok_text(tok, id);
    size_t n = tok->text_n[id];
    switch (tok->type[id]) {
    case MOE_TOK_UNDEFINED:
    case MOE_TOK_UNKNOWN:
    case MOE_TOK_CONTROL:
    case MOE_TOK_UNUSED:
        return 0;
    case MOE_TOK_BYTE: {
        unsigned v;
        char tail;
        if (n == 6 && sscanf(s, "<0x%2x%c", &v, &tail) == 2 && tail == '>') {
            out[0] = (char)v;
            return 1;
        }
        break;
    }
    case MOE_TOK_USER_DEFINED:
        memcpy(out, s, n);
        return n;
    default:
        break;
    }
    if (tok->dec_byte_level) {
        /* every character must be one of the 256 byte characters, else the
         * text is taken as it is (Hugging Face's ByteLevel decoder) */
        size_t o = 0;
        for (size_t i = 0; i < n;) {
            size_t l = moe_utf8_len((const uint8_t *)s + i, n - i);
            if (l == 0)
                goto raw;
            uint32_t cp = (uint8_t)s[i] & (0xff >> (l + (l > 1)));
            for (size_t k = 1; k < l; k++)
                cp = cp << 6 | ((uint8_t)s[i + k] & 0x3f);
            int b = moe_tok_cp_to_byte(cp);
            if (b < 0)
                goto raw;
            out[o++] = (char)b;
            i += l;
        }
        return o;
    }
raw:
    memcpy(out, s, n);
    /* Replace decoders ("▁" -> " "), in order; none is longer than its
     * pattern (moe_tok_finish checks), so the text only shrinks */
    for (int r = 0; r < tok->n_dec_repl; r++) {
        const struct moe_tok_norm *rp = &tok->dec_repl[r];
        if (rp->alen == 0 || rp->blen > rp->alen)
            continue;
        size_t o = 0;
        for (size_t i = 0; i < n;) {
            if (i + rp->alen <= n && memcmp(out + i, rp->a, rp->alen) == 0) {
                memcpy(out + o, rp->b, rp->blen);
                o += rp->blen;
                i += rp->alen;
            } else {
                out[o++] = out[i++];
            }
        }
        n = o;
    }
    return n;
}

static const char *const eog_names[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
    "<EOT>", "<|end_of_text|>", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
    "<|return|>", "<|call|>",
};

int moe_tok_finish(struct moe_tokenizer *tok)
{
    int rc;
    if (!tok->vocab && (rc = moe_tok_build_vocab(tok)))
        return rc;

    /* the token each input byte starts as */
    for (int b = 0; b < 256; b++) {
        char s[8];
        size_t n;
        if (tok->byte_level) {
            n = moe_utf8_put(moe_tok_byte_to_cp((uint8_t)b), s);
        } else {
            snprintf(s, sizeof(s), "<0x%02X>", b);
            n = 6;
        }
        int32_t id = moe_tok_lookup(tok, s, n);
        tok->byte_id[b] = id;
        if (id >= 0 && !tok->byte_level && tok->byte_fallback && tok->type[id] == MOE_TOK_NORMAL)
            tok->type[id] = MOE_TOK_BYTE;
    }

    /* may SentencePiece text be merged word by word? */
    if (!tok->byte_level) {
        static const char sp[] = "\xe2\x96\x81";
        bool safe = moe_tok_lookup(tok, sp, 3) >= 0;
        for (int32_t id = 0; id < tok->n_vocab && safe; id++) {
            const char *s = tok_text(tok, id);
            size_t n = tok->text_n[id];
            for (size_t i = 1; i + 3 <= n && safe; i++)
                if (!memcmp(s + i, sp, 3) && !(i >= 3 && !memcmp(s + i - 3, sp, 3)))
                    safe = false;
        }
        tok->spm_word_split = safe;
    }

    /* decoded bytes */
    size_t total = 0;
    for (int32_t id = 0; id < tok->n_vocab; id++)
        total += tok->text_n[id];
    for (int r = 0; r < tok->n_dec_repl; r++)
        if (tok->dec_repl[r].blen > tok->dec_repl[r].alen)
            return moe_err(-EINVAL, "%s: decoder Replace longer than its pattern is not supported",
                           tok->source);
    free(tok->dec);
    tok->dec = malloc(total + 1);
    tok->dec_off = calloc((size_t)tok->n_vocab, sizeof(uint32_t));
    tok->dec_n = calloc((size_t)tok->n_vocab, sizeof(uint32_t));
    if (!tok->dec || !tok->dec_off || !tok->dec_n)
        return moe_err(-ENOMEM, "out of memory");
    size_t o = 0;
    tok->max_dec = 0;
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        size_t n = decode_token(tok, id, tok->dec + o);
        tok->dec_off[id] = (uint32_t)o;
        tok->dec_n[id] = (uint32_t)n;
        o += n;
        if (n > tok->max_dec)
            tok->max_dec = (uint32_t)n;
    }
    /* What one moe_detok_push() can write: held bytes that turn out invalid
     * (one U+FFFD) and then the token as decoded from a clean state (bytes
     * that complete the held ones write no more than that). */
    tok->max_out = 0;
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        size_t m = 3 + lossy_len(tok, (const uint8_t *)tok->dec + tok->dec_off[id], tok->dec_n[id]);
        tok->max_out = MOE_MAX(tok->max_out, m);
    }

    /* added tokens, matched literally in the input */
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        int t = tok->type[id];
        if ((t == MOE_TOK_CONTROL || t == MOE_TOK_USER_DEFINED || t == MOE_TOK_UNKNOWN) &&
            tok->text_n[id] > 0) {
            rc = trie_insert(tok, (const uint8_t *)tok_text(tok, id), tok->text_n[id], id);
            if (rc)
                return rc;
        }
    }

    /* end of generation: EOS, EOT, EOM and the well-known end-of-turn tokens */
    int32_t ends[] = { tok->eos, tok->eot, tok->eom };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(ends); i++)
        if (ends[i] >= 0 && ends[i] < tok->n_vocab)
            tok->eog[ends[i]] = 1;
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        if (tok->type[id] != MOE_TOK_CONTROL && tok->type[id] != MOE_TOK_USER_DEFINED)
            continue;
        for (size_t k = 0; k < MOE_ARRAY_SIZE(eog_names); k++)
            if (strlen(eog_names[k]) == tok->text_n[id] &&
                memcmp(eog_names[k], tok_text(tok, id), tok->text_n[id]) == 0)
                tok->eog[id] = 1;
    }
    if (tok->bos >= tok->n_vocab)
        tok->bos = -1;
    if (tok->eos >= tok->n_vocab)
        tok->eos = -1;
    if (tok->unk_id >= tok->n_vocab)
        tok->unk_id = -1;
    return 0;
}

/* ---- public: lifetime and accessors ------------------------------------------- */
void moe_tokenizer_free(struct moe_tokenizer *tok)
{
    if (!tok)
        return;
    free(tok->text);
    free(tok->text_off);
    free(tok->text_n);
    free(tok->dec);
    free(tok->dec_off);
    free(tok->dec_n);
    free(tok->type);
    free(tok->score);
    free(tok->eog);
    free(tok->lstrip);
    free(tok->rstrip);
    free(tok->vocab);
    free(tok->pairs);
    for (int i = 0; i < tok->n_norms; i++) {
        free(tok->norms[i].a);
        free(tok->norms[i].b);
        pcre2_code_free(tok->norms[i].re);
    }
    free(tok->norms);
    for (int i = 0; i < tok->n_pres; i++) {
        pcre2_code_free(tok->pres[i].re);
        free(tok->pres[i].pattern_buf);
    }
    free(tok->pres);
    for (int i = 0; i < tok->n_dec_repl; i++) {
        free(tok->dec_repl[i].a);
        free(tok->dec_repl[i].b);
    }
    free(tok->dec_repl);
    free(tok->trie);
    moe_tok_cache_free(&tok->cache);
    free((char *)tok->source);
    free(tok);
}

int32_t moe_tokenizer_vocab_size(const struct moe_tokenizer *tok)
{
    return tok->n_vocab;
}

int32_t moe_tokenizer_bos(const struct moe_tokenizer *tok)
{
    return tok->bos;
}

int32_t moe_tokenizer_eos(const struct moe_tokenizer *tok)
{
    return tok->eos;
}

bool moe_tokenizer_is_eog(const struct moe_tokenizer *tok, int32_t id)
{
    return id >= 0 && id < tok->n_vocab && tok->eog[id];
}

int moe_tokenizer_add_eog(struct moe_tokenizer *tok, int32_t id)
{
    if (id < 0 || id >= tok->n_vocab)
        return moe_err(-EINVAL, "%s: end-of-generation token %d out of range", tok->source, id);
    tok->eog[id] = 1;
    return 0;
}

const char *moe_tokenizer_pretok_name(const struct moe_tokenizer *tok)
{
    return tok->pretok_name ? tok->pretok_name : "none";
}

const char *moe_tokenizer_token_text(const struct moe_tokenizer *tok, int32_t id, size_t *len)
{
    if (id < 0 || id >= tok->n_vocab) {
        *len = 0;
        return NULL;
    }
    *len = tok->text_n[id];
    return tok->text + tok->text_off[id];
}

int32_t moe_tokenizer_find(const struct moe_tokenizer *tok, const char *text)
{
    return moe_tok_lookup(tok, text, strlen(text));
}

size_t moe_tokenizer_max_piece(const struct moe_tokenizer *tok)
{
    return tok->max_out;
}

size_t moe_tokenizer_token_bytes(const struct moe_tokenizer *tok, int32_t id, char *buf,
                                 size_t cap)
{
    if (id < 0 || id >= tok->n_vocab)
        return 0;
    size_t n = tok->dec_n[id];
    if (buf && cap)
        memcpy(buf, tok->dec + tok->dec_off[id], MOE_MIN(n, cap));
    return n;
}

/* ---- streaming decode ---------------------------------------------------------- */
struct out_buf {
    char *p;
    size_t n, cap;
};

static void out_put(struct out_buf *o, const void *s, size_t n)
{
    if (!o->p) { /* only counting */
        o->n += n;
        return;
    }
    if (o->n + n > o->cap)
        return; /* caller gave less room than moe_tokenizer_max_piece() */
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static const char replacement_char[3] = { (char)0xef, (char)0xbf, (char)0xbd };

/* Expected length of a sequence led by c (0: c cannot lead). */
static int utf8_need(uint8_t c)
{
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return 2;
    if (c >= 0xe0 && c <= 0xef)
        return 3;
    if (c >= 0xf0 && c <= 0xf4)
        return 4;
    return 0;
}

/* May byte c follow the bytes held so far? (the second byte's range depends
 * on the lead, which rules out overlongs and surrogates) */
static bool utf8_continues(const char *held, int n_held, uint8_t c)
{
    if ((c & 0xc0) != 0x80)
        return false;
    if (n_held == 1) {
        uint8_t l = (uint8_t)held[0];
        if (l == 0xe0)
            return c >= 0xa0;
        if (l == 0xed)
            return c <= 0x9f;
        if (l == 0xf0)
            return c >= 0x90;
        if (l == 0xf4)
            return c <= 0x8f;
    }
    return true;
}

/* Feeds bytes; whole characters out, invalid bytes as U+FFFD (one per
 * maximal invalid subsequence, as Rust's from_utf8_lossy does). */
static void detok_feed(struct moe_detok *d, const uint8_t *p, size_t n, struct out_buf *o)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = p[i];
        if (d->n_pending == 0) {
            int need = utf8_need(c);
            if (need == 1)
                out_put(o, &c, 1);
            else if (need == 0)
                out_put(o, replacement_char, 3);
            else
                d->pending[d->n_pending++] = (char)c;
            i++;
            continue;
        }
        if (!utf8_continues(d->pending, d->n_pending, c)) {
            out_put(o, replacement_char, 3); /* the held prefix; c is looked at again */
            d->n_pending = 0;
            continue;
        }
        d->pending[d->n_pending++] = (char)c;
        i++;
        if (d->n_pending == utf8_need((uint8_t)d->pending[0])) {
            out_put(o, d->pending, (size_t)d->n_pending);
            d->n_pending = 0;
        }
    }
}

static size_t lossy_len(const struct moe_tokenizer *tok, const uint8_t *p, size_t n)
{
    struct moe_detok d;
    struct out_buf o = { NULL, 0, 0 };
    moe_detok_init(&d, tok);
    detok_feed(&d, p, n, &o);
    return o.n;
}

void moe_detok_init(struct moe_detok *d, const struct moe_tokenizer *tok)
{
    memset(d, 0, sizeof(*d));
    d->tok = tok;
    d->at_start = true;
}

size_t moe_detok_push(struct moe_detok *d, int32_t id, char *out, size_t cap)
{
    const struct moe_tokenizer *tok = d->tok;
    if (id < 0 || id >= tok->n_vocab)
        return 0;
    const uint8_t *p = (const uint8_t *)tok->dec + tok->dec_off[id];
    size_t n = tok->dec_n[id];
    if (n == 0)
        return 0;
    if (d->at_start) {
        d->at_start = false;
        if (tok->strip_first_space && p[0] == ' ') {
            p++;
            n--;
        }
    }
    struct out_buf o = { out, 0, cap };
    detok_feed(d, p, n, &o);
    return o.n;
}

size_t moe_detok_flush(struct moe_detok *d, char *out, size_t cap)
{
    struct out_buf o = { out, 0, cap };
    if (d->n_pending > 0)
        out_put(&o, replacement_char, 3);
    d->n_pending = 0;
    return o.n;
}
