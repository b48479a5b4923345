/* The model step: one pre-tokenized piece -> token ids.
 *
 * Symbols start as single characters (bytes for byte-level BPE) in a linked
 * list; candidate merges of neighbours wait in a binary heap ordered by merge
 * rank (or by minus the SentencePiece score of the merged token), ties to the
 * leftmost. A popped candidate is stale when either side has changed since it
 * was queued; as symbols only grow, "still neighbours and the same total
 * length" detects that. O(n log n) per piece, so a megabyte piece (a
 * SentencePiece text without pre-tokenizer) is fine too. */
#include "tokenizer/tokenizer_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"

#define CACHE_MAX_PIECE 64       /* longer pieces are not memoised */
#define CACHE_MAX_SLOTS (1 << 17) /* then it starts over */

struct sym {
    int32_t id; /* -1: not in the vocabulary */
    uint32_t off, len;
    int32_t prev, next;
};

struct cand {
    float key; /* lower merges first */
    uint32_t left;
    uint32_t len; /* both sides' length when queued */
    int32_t id;   /* the merged token */
};

struct moe_tok_scratch {
    struct sym *syms;
    size_t cap_syms;
    struct cand *heap;
    size_t n_heap, cap_heap;
    char *map; /* byte-level text of a piece (ignore_merges) */
    size_t cap_map;
    struct moe_tok_ids ids;
};

int moe_tok_ids_push(struct moe_tok_ids *ids, int32_t id)
{
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *v = realloc(ids->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return 0;
}

struct moe_tok_scratch *moe_tok_scratch_new(void)
{
    return calloc(1, sizeof(struct moe_tok_scratch));
}

void moe_tok_scratch_free(struct moe_tok_scratch *s)
{
    if (!s)
        return;
    free(s->syms);
    free(s->heap);
    free(s->map);
    free(s->ids.v);
    free(s);
}

/* ---- heap ------------------------------------------------------------------- */
static bool cand_before(const struct cand *a, const struct cand *b)
{
    return a->key < b->key || (a->key == b->key && a->left < b->left);
}

static int heap_push(struct moe_tok_scratch *s, struct cand c)
{
    if (s->n_heap == s->cap_heap) {
        size_t cap = s->cap_heap ? s->cap_heap * 2 : 64;
        struct cand *h = realloc(s->heap, cap * sizeof(*h));
        if (!h)
            return -ENOMEM;
        s->heap = h;
        s->cap_heap = cap;
    }
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(&c, &s->heap[p]))
            break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = c;
    return 0;
}

static struct cand heap_pop(struct moe_tok_scratch *s)
{
    struct cand top = s->heap[0];
    struct cand last = s->heap[--s->n_heap];
    size_t n = s->n_heap, i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && cand_before(&s->heap[c + 1], &s->heap[c]))
            c++;
        if (!cand_before(&s->heap[c], &last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n > 0)
        s->heap[i] = last;
    return top;
}

/* ---- merge candidates ----------------------------------------------------------- */
static int32_t pair_find(const struct moe_tokenizer *tok, int32_t a, int32_t b, int32_t *rank)
{
    if (!tok->pairs)
        return -1;
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    for (size_t i = moe_tok_pair_hash(k) & tok->pairs_mask;; i = (i + 1) & tok->pairs_mask) {
        const struct moe_tok_pair_slot *sl = &tok->pairs[i];
        if (sl->key == UINT64_MAX)
            return -1;
        if (sl->key == k) {
            *rank = sl->rank;
            return sl->id;
        }
    }
}

static int try_pair(const struct moe_tokenizer *tok, struct moe_tok_scratch *s, const char *p,
                    int32_t l, int32_t r)
{
    if (l < 0 || r < 0)
        return 0;
    const struct sym *a = &s->syms[l], *b = &s->syms[r];
    struct cand c = { 0, (uint32_t)l, a->len + b->len, -1 };
    if (tok->algo == MOE_TOK_ALGO_RANK) {
        if (a->id < 0 || b->id < 0)
            return 0;
        int32_t rank;
        c.id = pair_find(tok, a->id, b->id, &rank);
        c.key = (float)rank;
    } else {
        c.id = moe_tok_lookup(tok, p + a->off, c.len);
        if (c.id >= 0)
            c.key = tok->score ? -tok->score[c.id] : 0.0f;
    }
    if (c.id < 0)
        return 0;
    return heap_push(s, c);
}

/* ---- cache ------------------------------------------------------------------------ */
void moe_tok_cache_init(struct moe_tok_cache *c)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->lock, NULL);
}

void moe_tok_cache_free(struct moe_tok_cache *c)
{
    free(c->slots);
    free(c->arena);
    free(c->ids);
    pthread_mutex_destroy(&c->lock);
    memset(c, 0, sizeof(*c));
}

/* Appends the memoised ids of p to out; false when not there. */
static bool cache_get(struct moe_tok_cache *c, const char *p, size_t n, uint64_t h,
                      struct moe_tok_ids *out, int *rc)
{
    bool found = false;
    pthread_mutex_lock(&c->lock);
    if (c->slots) {
        for (size_t i = h & c->mask; c->slots[i].key_len; i = (i + 1) & c->mask) {
            const struct moe_tok_cache_slot *sl = &c->slots[i];
            if (sl->hash == h && sl->key_len == n && memcmp(c->arena + sl->key_off, p, n) == 0) {
                for (uint32_t k = 0; k < sl->n_ids && !*rc; k++)
                    *rc = moe_tok_ids_push(out, c->ids[sl->ids_off + k]);
                found = true;
                break;
            }
        }
    }
    pthread_mutex_unlock(&c->lock);
    return found;
}

static void cache_reset(struct moe_tok_cache *c, size_t slots)
{
    free(c->slots);
    c->slots = calloc(slots, sizeof(*c->slots));
    c->mask = c->slots ? slots - 1 : 0;
    c->used = 0;
    c->arena_len = 0;
    c->ids_len = 0;
}

/* Best effort: an allocation failure just leaves the piece out. */
static void cache_put(struct moe_tok_cache *c, const char *p, size_t n, uint64_t h,
                      const int32_t *ids, size_t n_ids)
{
    pthread_mutex_lock(&c->lock);
    if (!c->slots || (c->used + 1) * 2 > c->mask + 1) {
        size_t slots = c->slots ? (c->mask + 1) * 2 : 4096;
        if (slots > CACHE_MAX_SLOTS)
            slots = CACHE_MAX_SLOTS; /* full: start over */
        cache_reset(c, slots);
        if (!c->slots)
            goto out;
    }
    if (c->arena_len + n > c->arena_cap) {
        size_t cap = MOE_MAX(c->arena_cap * 2, c->arena_len + n + 4096);
        char *a = realloc(c->arena, cap);
        if (!a)
            goto out;
        c->arena = a;
        c->arena_cap = cap;
    }
    if (c->ids_len + n_ids > c->ids_cap) {
        size_t cap = MOE_MAX(c->ids_cap * 2, c->ids_len + n_ids + 1024);
        int32_t *v = realloc(c->ids, cap * sizeof(*v));
        if (!v)
            goto out;
        c->ids = v;
        c->ids_cap = cap;
    }
    size_t i = h & c->mask;
    while (c->slots[i].key_len) {
        const struct moe_tok_cache_slot *sl = &c->slots[i];
        if (sl->hash == h && sl->key_len == n && memcmp(c->arena + sl->key_off, p, n) == 0)
            goto out; /* another thread was first */
        i = (i + 1) & c->mask;
    }
    struct moe_tok_cache_slot *sl = &c->slots[i];
    sl->hash = h;
    sl->key_off = (uint32_t)c->arena_len;
    sl->key_len = (uint32_t)n;
    sl->ids_off = (uint32_t)c->ids_len;
    sl->n_ids = (uint32_t)n_ids;
    memcpy(c->arena + c->arena_len, p, n);
    c->arena_len += n;
    if (n_ids)
        memcpy(c->ids + c->ids_len, ids, n_ids * sizeof(*ids));
    c->ids_len += n_ids;
    c->used++;
out:
    pthread_mutex_unlock(&c->lock);
}

/* ---- the piece --------------------------------------------------------------------- */
/* Unknown symbol -> <0xNN> tokens, or the unknown token. */
static int emit_unknown(const struct moe_tokenizer *tok, const char *p, const struct sym *y,
                        bool *prev_unk, struct moe_tok_ids *out)
{
    if (tok->byte_fallback) {
        bool all = true;
        for (uint32_t k = 0; k < y->len; k++)
            all = all && tok->byte_id[(uint8_t)p[y->off + k]] >= 0;
        if (all) {
            for (uint32_t k = 0; k < y->len; k++)
                if (moe_tok_ids_push(out, tok->byte_id[(uint8_t)p[y->off + k]]))
                    return -ENOMEM;
            *prev_unk = false;
            return 0;
        }
    }
    if (tok->unk_id < 0)
        return 0; /* Hugging Face drops it */
    if (tok->fuse_unk && *prev_unk)
        return 0;
    *prev_unk = true;
    return moe_tok_ids_push(out, tok->unk_id) ? -ENOMEM : 0;
}

static int whole_piece(const struct moe_tokenizer *tok, struct moe_tok_scratch *s,
                       const char *p, size_t n, int32_t *id)
{
    *id = -1;
    if (!tok->byte_level) {
        *id = moe_tok_lookup(tok, p, n);
        return 0;
    }
    if (s->cap_map < 2 * n) {
        char *m = realloc(s->map, 2 * n);
        if (!m)
            return -ENOMEM;
        s->map = m;
        s->cap_map = 2 * n;
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++) /* byte-level characters are 1 or 2 bytes */
        o += moe_utf8_put(moe_tok_byte_to_cp((uint8_t)p[i]), s->map + o);
    *id = moe_tok_lookup(tok, s->map, o);
    return 0;
}

static int merge_piece(const struct moe_tokenizer *tok, struct moe_tok_scratch *s,
                       const char *p, size_t n, struct moe_tok_ids *out)
{
    if (n > UINT32_MAX / 2)
        return moe_err(-EINVAL, "%s: text piece too long", tok->source);
    if (tok->ignore_merges) {
        int32_t id;
        int rc = whole_piece(tok, s, p, n, &id);
        if (rc)
            return rc;
        if (id >= 0)
            return moe_tok_ids_push(out, id);
    }
    if (s->cap_syms < n) {
        struct sym *y = realloc(s->syms, n * sizeof(*y));
        if (!y)
            return -ENOMEM;
        s->syms = y;
        s->cap_syms = n;
    }
    size_t ns = 0;
    for (size_t i = 0; i < n;) {
        size_t l = 1;
        int32_t id;
        if (tok->byte_level) {
            id = tok->byte_id[(uint8_t)p[i]];
        } else {
            l = moe_utf8_len((const uint8_t *)p + i, n - i);
            if (l == 0)
                l = 1; /* an invalid byte stands alone (byte fallback) */
            id = moe_tok_lookup(tok, p + i, l);
        }
        struct sym *y = &s->syms[ns];
        y->id = id;
        y->off = (uint32_t)i;
        y->len = (uint32_t)l;
        y->prev = (int32_t)ns - 1;
        y->next = (int32_t)ns + 1;
        ns++;
        i += l;
    }
    s->syms[ns - 1].next = -1;

    s->n_heap = 0;
    for (size_t i = 0; i + 1 < ns; i++)
        if (try_pair(tok, s, p, (int32_t)i, (int32_t)i + 1))
            return -ENOMEM;
    while (s->n_heap > 0) {
        struct cand c = heap_pop(s);
        struct sym *a = &s->syms[c.left];
        if (a->len == 0 || a->next < 0)
            continue;
        struct sym *b = &s->syms[a->next];
        if (a->len + b->len != c.len)
            continue; /* stale */
        a->id = c.id;
        a->len += b->len;
        b->len = 0;
        a->next = b->next;
        if (b->next >= 0)
            s->syms[b->next].prev = (int32_t)c.left;
        if (try_pair(tok, s, p, a->prev, (int32_t)c.left) ||
            try_pair(tok, s, p, (int32_t)c.left, a->next))
            return -ENOMEM;
    }

    bool prev_unk = false;
    for (int32_t i = 0; i >= 0; i = s->syms[i].next) {
        const struct sym *y = &s->syms[i];
        int rc;
        if (y->id >= 0) {
            prev_unk = false;
            rc = moe_tok_ids_push(out, y->id) ? -ENOMEM : 0;
        } else {
            rc = emit_unknown(tok, p, y, &prev_unk, out);
        }
        if (rc)
            return rc;
    }
    return 0;
}

int moe_tok_encode_piece(const struct moe_tokenizer *tok, struct moe_tok_scratch *s,
                         const char *p, size_t n, struct moe_tok_ids *out)
{
    if (n == 0)
        return 0;
    struct moe_tok_cache *cache = (struct moe_tok_cache *)&tok->cache; /* has its own lock */
    bool cacheable = n <= CACHE_MAX_PIECE;
    uint64_t h = 0;
    int rc = 0;
    if (cacheable) {
        h = moe_tok_hash(p, n);
        if (cache_get(cache, p, n, h, out, &rc))
            return rc ? -ENOMEM : 0;
    }
    size_t start = out->n;
    rc = merge_piece(tok, s, p, n, out);
    if (rc)
        return rc;
    if (cacheable)
        cache_put(cache, p, n, h, out->n > start ? out->v + start : NULL, out->n - start);
    return 0;
}
