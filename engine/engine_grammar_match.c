/* Matching text against a compiled grammar, and the token mask.
 *
 * A state is the set of parse stacks the text so far leaves open (several
 * where the grammar is ambiguous so far: "1" may go on as 12 or 1.5). Stacks
 * are chains of nodes in an arena; a node is (position, count, parent).
 * Taking a code point moves every stack whose top set holds it past that set
 * and expands rule references until each top is a set again (a stack emptied
 * is ACCEPT). A reference that ends its alternative continues with the parent
 * directly, and a repetition keeps its count in its frame, so x{0,1000}
 * neither deepens the stack nor grows the grammar.
 *
 * The mask walks the vocabulary trie depth first from the state: a subtree
 * whose prefix the grammar refuses is skipped whole, which is most of the
 * vocabulary outside strings; a subtree that a repetition of one set takes
 * whole (a JSON string's plain characters) is allowed whole without a walk,
 * which is most of it inside. Masks are remembered by parse state, with
 * counts beyond what one token could use written as "many", so the steps
 * inside a long string share one mask. */
#define _GNU_SOURCE /* qsort_r */
#include "engine/engine_grammar.h"

#include "common/common.h"
#include "engine/engine_grammar_int.h"
#include "tokenizer/tokenizer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define ACCEPT (-2)
#define STACKS_MAX 1024  /* open parses per state: more is a grammar too ambiguous */
#define EXPAND_DEPTH 256 /* nested rule references expanded without taking a character */
#define MASK_CACHE 8

struct gnode {
    int32_t pos, count, parent; /* count: a GE_REP frame's repetitions done */
};

/* a set of stacks: scratch[start .. start + n), and a code point's UTF-8
 * bytes still owed (need) with its bits so far (val) */
struct walk {
    size_t start, n;
    uint32_t val;
    uint8_t need, len; /* len: the code point's bytes in all */
};

/* the least code point a sequence of len bytes may encode: below it, an
 * overlong form ("\"" as F0 80 80 A2), which is not UTF-8 */
static const uint32_t UTF8_MIN[5] = {0, 0, 0x80, 0x800, 0x10000};

struct mask_entry {
    int32_t *key; /* the state's stacks written out; NULL: empty slot */
    size_t key_len;
    uint64_t *bits;
};

struct moe_grammar_state {
    struct moe_grammar *g;
    struct gnode *nodes;
    size_t n_nodes, cap_nodes;
    int32_t *scratch;
    size_t n_scratch, cap_scratch;
    int32_t *cur; /* the committed stacks */
    size_t n_cur;
    uint32_t val;
    uint8_t need, len;
    bool overflow; /* ran out of memory, stacks or depth while stepping */
    struct mask_entry cache[MASK_CACHE];
    unsigned cache_next;
    int32_t *key; /* scratch for a state's key */
    size_t key_cap;
};

/* ---- stacks ------------------------------------------------------------------- */

static int32_t node_new(struct moe_grammar_state *st, int32_t pos, int32_t count, int32_t parent)
{
    if (st->n_nodes == st->cap_nodes) {
        size_t cap = st->cap_nodes ? st->cap_nodes * 2 : 1024;
        struct gnode *n = realloc(st->nodes, cap * sizeof(*n));
        if (!n || cap > INT32_MAX) {
            free(n == st->nodes ? NULL : n);
            st->overflow = true;
            return -1;
        }
        st->nodes = n, st->cap_nodes = cap;
    }
    st->nodes[st->n_nodes] = (struct gnode){pos, count, parent};
    return (int32_t)st->n_nodes++;
}

static bool scratch_push(struct moe_grammar_state *st, int32_t v)
{
    if (st->n_scratch == st->cap_scratch) {
        size_t cap = st->cap_scratch ? st->cap_scratch * 2 : 256;
        int32_t *s = realloc(st->scratch, cap * sizeof(*s));
        if (!s) {
            st->overflow = true;
            return false;
        }
        st->scratch = s, st->cap_scratch = cap;
    }
    st->scratch[st->n_scratch++] = v;
    return true;
}

static bool chain_eq(const struct moe_grammar_state *st, int32_t a, int32_t b)
{
    while (a >= 0 && b >= 0 && a != b) {
        if (st->nodes[a].pos != st->nodes[b].pos || st->nodes[a].count != st->nodes[b].count)
            return false;
        a = st->nodes[a].parent, b = st->nodes[b].parent;
    }
    return a == b;
}

/* adds the stack (pos over parent) to the set starting at out0, once */
static void add_stack(struct moe_grammar_state *st, size_t out0, int32_t pos, int32_t parent)
{
    for (size_t i = out0; i < st->n_scratch; i++) {
        int32_t s = st->scratch[i];
        if (pos == ACCEPT ? s == ACCEPT
                          : s >= 0 && st->nodes[s].pos == pos && chain_eq(st, st->nodes[s].parent, parent))
            return;
    }
    if (st->n_scratch - out0 >= STACKS_MAX) {
        st->overflow = true;
        return;
    }
    int32_t n = pos == ACCEPT ? ACCEPT : node_new(st, pos, 0, parent);
    if (n != -1)
        scratch_push(st, n);
}

/* continues at pos (a repetition's count so far) with parent below, until
 * every branch tops on a set */
static void expand(struct moe_grammar_state *st, int32_t pos, int32_t count, int32_t parent,
                   size_t out0, int depth)
{
    const struct moe_grammar *g = st->g;
    for (;;) {
        struct gelem e = g->elems[pos];
        if (e.type == GE_END) {
            if (parent < 0) {
                add_stack(st, out0, ACCEPT, -1);
                return;
            }
            struct gnode up = st->nodes[parent];
            pos = up.pos, count = up.count, parent = up.parent;
            continue;
        }
        if (e.type == GE_SET) {
            add_stack(st, out0, pos, parent);
            return;
        }
        if (depth >= EXPAND_DEPTH) {
            st->overflow = true;
            return;
        }
        if (e.type == GE_REF || e.hi < 0 || count < e.hi) {
            /* into the rule: a reference goes on after itself (or straight to the
             * parent when it ends its alternative), a repetition comes back here
             * one count higher */
            int32_t cont = e.type == GE_REP ? node_new(st, pos, count + 1, parent)
                         : g->elems[pos + 1].type == GE_END ? parent
                                                           : node_new(st, pos + 1, 0, parent);
            if (cont == -1 && st->overflow)
                return;
            for (int32_t a = 0; a < g->rule_nalt[e.arg]; a++)
                expand(st, g->alt_pos[g->rule_alt0[e.arg] + a], 0, cont, out0, depth + 1);
        }
        if (e.type == GE_REF || count < e.lo)
            return;
        pos++, count = 0; /* enough repetitions: also past them */
    }
}

/* the set after code point c, at the end of scratch */
static void step_cp(struct moe_grammar_state *st, const struct walk *in, uint32_t c,
                    struct walk *out)
{
    const struct moe_grammar *g = st->g;
    out->start = st->n_scratch;
    for (size_t i = 0; i < in->n; i++) {
        int32_t s = st->scratch[in->start + i];
        if (s == ACCEPT)
            continue;
        struct gnode nd = st->nodes[s];
        if (gset_has(g, &g->sets[g->elems[nd.pos].arg], c))
            expand(st, nd.pos + 1, 0, nd.parent, out->start, 0);
    }
    out->n = st->n_scratch - out->start;
    out->val = 0, out->need = 0, out->len = 0;
}

/* whether set s holds some code point in [lo, hi] */
static bool set_meets(const struct moe_grammar *g, const struct gset *s, uint32_t lo, uint32_t hi)
{
    for (int32_t i = s->first; i < s->first + s->n; i++) {
        const uint32_t *r = g->ranges[i];
        if (s->neg && r[0] <= lo && r[1] >= hi)
            return false; /* one merged range covers all of it */
        if (!s->neg && r[0] <= hi && r[1] >= lo)
            return true;
    }
    return s->neg;
}

/* a code point begun: whether any top could take one starting so */
static bool partial_fits(struct moe_grammar_state *st, const struct walk *w)
{
    const struct moe_grammar *g = st->g;
    uint32_t lo = w->val << (6 * w->need), hi = lo | ((1u << (6 * w->need)) - 1);
    lo = MOE_MAX(lo, UTF8_MIN[w->len]);
    hi = MOE_MIN(hi, 0x10ffffu);
    if (lo > hi)
        return false;
    for (size_t i = 0; i < w->n; i++) {
        int32_t s = st->scratch[w->start + i];
        if (s != ACCEPT && set_meets(g, &g->sets[g->elems[st->nodes[s].pos].arg], lo, hi))
            return true;
    }
    return false;
}

/* one byte: false when the grammar refuses it */
static bool step_byte(struct moe_grammar_state *st, const struct walk *in, uint8_t b,
                      struct walk *out)
{
    if (in->need == 0 && b < 0x80) {
        step_cp(st, in, b, out);
        return out->n > 0;
    }
    *out = *in;
    if (in->need == 0) {
        if (b < 0xc2 || b > 0xf4) /* a continuation byte first, or never valid */
            return false;
        out->need = b < 0xe0 ? 1 : b < 0xf0 ? 2 : 3;
        out->len = out->need + 1;
        out->val = b & (0x3f >> out->need);
    } else {
        if ((b & 0xc0) != 0x80)
            return false;
        out->val = in->val << 6 | (b & 0x3f);
        out->need = in->need - 1;
        if (out->need == 0) {
            uint32_t c = out->val;
            if (c < UTF8_MIN[in->len] || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
                return false; /* overlong, beyond Unicode, or a surrogate */
            struct walk w = *in;
            step_cp(st, &w, out->val, out);
            return out->n > 0;
        }
    }
    return partial_fits(st, out);
}

/* ---- the committed state ---------------------------------------------------------- */

static struct walk committed(struct moe_grammar_state *st)
{
    st->n_scratch = 0;
    for (size_t i = 0; i < st->n_cur; i++)
        scratch_push(st, st->cur[i]);
    return (struct walk){0, st->overflow ? 0 : st->n_cur, st->val, st->need, st->len};
}

static int32_t copy_chain(struct moe_grammar_state *st, const struct gnode *old, int32_t s)
{
    if (s < 0)
        return s;
    int32_t parent = copy_chain(st, old, old[s].parent);
    return node_new(st, old[s].pos, old[s].count, parent);
}

/* makes w the committed state, its nodes copied into a fresh arena so that
 * the garbage of earlier steps goes */
static int commit(struct moe_grammar_state *st, const struct walk *w)
{
    struct gnode *old = st->nodes;
    int32_t *stacks = malloc((w->n + 1) * sizeof(int32_t));
    if (!stacks)
        return -ENOMEM;
    memcpy(stacks, st->scratch + w->start, w->n * sizeof(int32_t));
    st->nodes = NULL, st->n_nodes = 0, st->cap_nodes = 0;
    for (size_t i = 0; i < w->n; i++)
        stacks[i] = copy_chain(st, old, stacks[i]);
    free(old);
    free(st->cur);
    st->cur = stacks;
    st->n_cur = w->n;
    st->val = w->val, st->need = w->need, st->len = w->len;
    return st->overflow ? -ENOMEM : 0;
}

int moe_grammar_state_new(struct moe_grammar *g, struct moe_grammar_state **out)
{
    *out = NULL;
    struct moe_grammar_state *st = calloc(1, sizeof(*st));
    if (!st)
        return moe_err(-ENOMEM, "grammar: out of memory");
    st->g = moe_grammar_ref(g);
    int32_t r = g->root;
    for (int32_t a = 0; a < g->rule_nalt[r]; a++)
        expand(st, g->alt_pos[g->rule_alt0[r] + a], 0, -1, 0, 0);
    struct walk w = {0, st->n_scratch, 0, 0, 0};
    if (st->overflow || commit(st, &w) < 0) {
        moe_grammar_state_free(st);
        return moe_err(-EINVAL, "grammar: the root rule expands to too many parses");
    }
    *out = st;
    return 0;
}

void moe_grammar_state_free(struct moe_grammar_state *st)
{
    if (!st)
        return;
    for (int i = 0; i < MASK_CACHE; i++) {
        free(st->cache[i].key);
        free(st->cache[i].bits);
    }
    moe_grammar_unref(st->g);
    free(st->nodes);
    free(st->scratch);
    free(st->cur);
    free(st->key);
    free(st);
}

static bool run_bytes(struct moe_grammar_state *st, const char *b, size_t n, struct walk *w)
{
    *w = committed(st);
    for (size_t i = 0; i < n && w->n; i++) {
        struct walk next;
        if (!step_byte(st, w, (uint8_t)b[i], &next) || st->overflow)
            return false;
        *w = next;
    }
    return w->n > 0 && !st->overflow;
}

bool moe_grammar_accepts(struct moe_grammar_state *st, const char *b, size_t n)
{
    size_t mark = st->n_nodes;
    struct walk w;
    bool ok = run_bytes(st, b, n, &w);
    st->n_nodes = mark;
    st->overflow = false;
    return ok;
}

int moe_grammar_advance(struct moe_grammar_state *st, const char *b, size_t n)
{
    size_t mark = st->n_nodes;
    struct walk w;
    if (!run_bytes(st, b, n, &w)) {
        bool over = st->overflow;
        st->n_nodes = mark;
        st->overflow = false;
        return over ? moe_err(-EINVAL, "grammar: too many open parses (an ambiguous grammar)")
                    : moe_err(-EINVAL, "grammar: the text does not fit");
    }
    return commit(st, &w) < 0 ? moe_err(-ENOMEM, "grammar: out of memory") : 0;
}

bool moe_grammar_can_end(const struct moe_grammar_state *st)
{
    for (size_t i = 0; i < st->n_cur && st->need == 0; i++)
        if (st->cur[i] == ACCEPT)
            return true;
    return false;
}

bool moe_grammar_done(const struct moe_grammar_state *st)
{
    return st->need == 0 && st->n_cur == 1 && st->cur[0] == ACCEPT;
}

/* ---- the vocabulary trie ------------------------------------------------------------- */

struct tnode {
    int32_t child0, n_child; /* children are contiguous */
    int32_t tok0, n_tok;     /* tokens ending here: ids[tok0 .. tok0 + n_tok) */
    int32_t tok_end;         /* the subtree's tokens: ids[tok0 .. tok_end) */
    uint64_t ascii[2];       /* the bytes below 128 in the subtree, this node's own included */
    uint16_t height;         /* the subtree's longest token: bytes after this node's */
    uint8_t byte;
    bool high;               /* a byte of 128 or more in the subtree */
};

struct moe_vocab_trie {
    struct tnode *nodes;
    int32_t n_nodes;
    int32_t *ids;        /* tokens sorted by their bytes */
    int32_t max_len;     /* the longest token's bytes */
    char **bytes;        /* per token id, NULL for control tokens */
    uint16_t *len;
    int32_t vocab;
};

static int cmp_tok(const void *a, const void *b, void *ctx)
{
    const struct moe_vocab_trie *sort_trie = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint16_t lx = sort_trie->len[x], ly = sort_trie->len[y];
    int c = memcmp(sort_trie->bytes[x], sort_trie->bytes[y], MOE_MIN(lx, ly));
    return c ? c : (lx > ly) - (lx < ly);
}

/* fills node k (prefix of d bytes shared by ids[i..j)) and its subtree */
static void trie_fill(struct moe_vocab_trie *t, int32_t k, int32_t i, int32_t j, int d)
{
    int32_t e = i;
    while (e < j && t->len[t->ids[e]] == d)
        e++;
    t->nodes[k].tok0 = i, t->nodes[k].n_tok = e - i, t->nodes[k].tok_end = j;
    int32_t n_child = 0;
    for (int32_t a = e; a < j; a++)
        if (a == e || t->bytes[t->ids[a]][d] != t->bytes[t->ids[a - 1]][d])
            n_child++;
    t->nodes[k].child0 = t->n_nodes, t->nodes[k].n_child = n_child;
    int32_t c = t->n_nodes;
    t->n_nodes += n_child;
    for (int32_t a = e; a < j; c++) {
        uint8_t b = (uint8_t)t->bytes[t->ids[a]][d];
        int32_t z = a;
        while (z < j && (uint8_t)t->bytes[t->ids[z]][d] == b)
            z++;
        struct tnode *ch = &t->nodes[c];
        ch->byte = b;
        trie_fill(t, c, a, z, d + 1);
        if (b < 128)
            ch->ascii[b >> 6] |= 1ull << (b & 63);
        else
            ch->high = true;
        struct tnode *nd = &t->nodes[k];
        nd->ascii[0] |= ch->ascii[0], nd->ascii[1] |= ch->ascii[1];
        nd->high |= ch->high;
        nd->height = (uint16_t)MOE_MAX(nd->height, ch->height + 1);
        a = z;
    }
}

void moe_vocab_trie_free(struct moe_vocab_trie *t)
{
    if (!t)
        return;
    for (int32_t i = 0; t->bytes && i < t->vocab; i++)
        free(t->bytes[i]);
    free(t->bytes);
    free(t->len);
    free(t->ids);
    free(t->nodes);
    free(t);
}

int moe_vocab_trie_build(const struct moe_tokenizer *tok, struct moe_vocab_trie **out)
{
    *out = NULL;
    int32_t V = moe_tokenizer_vocab_size(tok);
    struct moe_vocab_trie *t = calloc(1, sizeof(*t));
    if (!t)
        return moe_err(-ENOMEM, "grammar: out of memory");
    t->vocab = V;
    t->bytes = calloc((size_t)V, sizeof(char *));
    t->len = calloc((size_t)V, sizeof(uint16_t));
    t->ids = malloc((size_t)V * sizeof(int32_t));
    if (!t->bytes || !t->len || !t->ids)
        goto oom;
    int32_t n = 0;
    size_t total = 0;
    char buf[1024];
    for (int32_t id = 0; id < V; id++) {
        size_t len = moe_tokenizer_token_bytes(tok, id, buf, sizeof(buf));
        if (!len || len > sizeof(buf))
            continue; /* control tokens, and none is this long */
        if (!(t->bytes[id] = malloc(len)))
            goto oom;
        memcpy(t->bytes[id], buf, len);
        t->len[id] = (uint16_t)len;
        t->ids[n++] = id;
        total += len;
        t->max_len = MOE_MAX(t->max_len, (int32_t)len);
    }
    qsort_r(t->ids, (size_t)n, sizeof(int32_t), cmp_tok, t);
    t->nodes = calloc(total + 1, sizeof(*t->nodes)); /* at most a node per byte */
    if (!t->nodes)
        goto oom;
    t->n_nodes = 1;
    trie_fill(t, 0, 0, n, 0);
    *out = t;
    return 0;
oom:
    moe_vocab_trie_free(t);
    return moe_err(-ENOMEM, "grammar: out of memory for the vocabulary trie");
}

/* ---- the mask ------------------------------------------------------------------------- */

/* A stack that takes every string of one set's characters, up to room of
 * them: its top is a set that is a whole alternative of a rule repeated by
 * its parent frame (a JSON string's plain characters) */
struct run {
    const struct gset *set;
    int64_t room; /* repetitions after the current one */
};

static int runs_of(struct moe_grammar_state *st, const struct walk *w, struct run *out, int cap)
{
    const struct moe_grammar *g = st->g;
    int n = 0;
    for (size_t i = 0; i < w->n && n < cap && w->need == 0; i++) {
        int32_t s = st->scratch[w->start + i];
        if (s == ACCEPT)
            continue;
        struct gnode nd = st->nodes[s];
        if (g->elems[nd.pos + 1].type != GE_END || nd.parent < 0)
            continue;
        struct gnode up = st->nodes[nd.parent];
        struct gelem rp = g->elems[up.pos];
        if (rp.type != GE_REP)
            continue;
        bool alt_of = false;
        for (int32_t a = 0; a < g->rule_nalt[rp.arg] && !alt_of; a++)
            alt_of = g->alt_pos[g->rule_alt0[rp.arg] + a] == nd.pos;
        if (alt_of)
            out[n++] = (struct run){&g->sets[g->elems[nd.pos].arg],
                                    rp.hi < 0 ? INT64_MAX : (int64_t)rp.hi - up.count};
    }
    return n;
}

static void allow_range(const struct moe_vocab_trie *t, int32_t a, int32_t b, uint64_t *allowed)
{
    for (int32_t k = a; k < b; k++) {
        int32_t id = t->ids[k];
        allowed[id >> 6] |= 1ull << (id & 63);
    }
}

static void walk_trie(struct moe_grammar_state *st, const struct moe_vocab_trie *t,
                      const struct tnode *nd, const struct walk *w, uint64_t *allowed,
                      int32_t *count)
{
    struct run runs[4];
    int n_runs = runs_of(st, w, runs, 4);
    for (int32_t c = 0; c < nd->n_child; c++) {
        const struct tnode *ch = &t->nodes[nd->child0 + c];
        bool whole = false;
        for (int r = 0; r < n_runs && !whole; r++)
            whole = !ch->high && !(ch->ascii[0] & ~runs[r].set->ascii[0]) &&
                    !(ch->ascii[1] & ~runs[r].set->ascii[1]) && runs[r].room >= ch->height;
        if (whole) { /* every token below is plain characters the run takes */
            allow_range(t, ch->tok0, ch->tok_end, allowed);
            *count += ch->tok_end - ch->tok0;
            continue;
        }
        size_t mark = st->n_scratch;
        struct walk next;
        if (step_byte(st, w, ch->byte, &next) && !st->overflow) {
            allow_range(t, ch->tok0, ch->tok0 + ch->n_tok, allowed);
            *count += ch->n_tok;
            walk_trie(st, t, ch, &next, allowed, count);
        }
        st->n_scratch = mark;
    }
}

/* the committed state written out (stack chains by position, then the
 * code point owed): equal keys, equal masks */
static size_t state_key(struct moe_grammar_state *st, int32_t max_len)
{
    const struct moe_grammar *g = st->g;
    size_t n = 0;
    for (int pass = 0; pass < 2; pass++) {
        n = 0;
        for (size_t i = 0; i < st->n_cur; i++) {
            for (int32_t s = st->cur[i]; s >= 0; s = st->nodes[s].parent, n++) {
                struct gnode nd = st->nodes[s];
                struct gelem e = g->elems[nd.pos];
                if (e.type == GE_REP) { /* one token takes at most max_len more */
                    int64_t need = MOE_MIN(MOE_MAX((int64_t)e.lo - nd.count, 0), max_len + 1);
                    int64_t room = e.hi < 0 ? max_len + 1
                                            : MOE_MIN((int64_t)e.hi - nd.count, max_len + 1);
                    if (pass)
                        st->key[n] = -3 - (int32_t)(need * (max_len + 2) + room);
                    n++;
                }
                if (pass)
                    st->key[n] = nd.pos;
            }
            if (pass)
                st->key[n] = st->cur[i] == ACCEPT ? -2 : -1;
            n++;
        }
        if (pass) {
            st->key[n++] = (int32_t)st->val;
            st->key[n++] = st->need | st->len << 8;
        } else {
            n += 2;
            if (n > st->key_cap) {
                int32_t *k = realloc(st->key, n * sizeof(int32_t));
                if (!k)
                    return 0;
                st->key = k, st->key_cap = n;
            }
        }
    }
    return n;
}

int32_t moe_grammar_mask(struct moe_grammar_state *st, const struct moe_vocab_trie *t,
                         uint64_t *allowed, int32_t vocab)
{
    size_t words = ((size_t)vocab + 63) / 64;
    size_t klen = state_key(st, t->max_len);
    for (int i = 0; klen && i < MASK_CACHE; i++) {
        struct mask_entry *c = &st->cache[i];
        if (c->key && c->key_len == klen && !memcmp(c->key, st->key, klen * sizeof(int32_t))) {
            memcpy(allowed, c->bits, words * sizeof(uint64_t));
            int32_t n = 0;
            for (size_t w = 0; w < words; w++)
                n += __builtin_popcountll(allowed[w]);
            return n;
        }
    }
    memset(allowed, 0, words * sizeof(uint64_t));
    int32_t count = 0;
    if (t->vocab <= vocab) {
        size_t mark = st->n_nodes;
        struct walk w = committed(st);
        walk_trie(st, t, &t->nodes[0], &w, allowed, &count);
        st->n_nodes = mark;
        st->overflow = false;
    }
    struct mask_entry *c = &st->cache[st->cache_next++ % MASK_CACHE];
    free(c->key);
    c->key = klen ? malloc(klen * sizeof(int32_t)) : NULL;
    c->key_len = 0;
    if (c->key && !c->bits)
        c->bits = malloc(words * sizeof(uint64_t));
    if (c->key && c->bits) {
        memcpy(c->key, st->key, klen * sizeof(int32_t));
        memcpy(c->bits, allowed, words * sizeof(uint64_t));
        c->key_len = klen;
    }
    return count;
}
