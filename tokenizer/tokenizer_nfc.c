/* Unicode NFC, as Hugging Face's NFC normalizer composes (Qwen2 / Qwen3 /
 * Qwen3.5, Command-R, GPT-NeoX): canonical decomposition, canonical order,
 * canonical composition, with the tables of tokenizer_nfc.h (generated
 * from Hugging Face's own behaviour). Text that cannot change (the quick
 * check: no character that may, combining classes in order) is left alone,
 * which is nearly all text. Bytes that are not UTF-8 pass through and block
 * composition. */
#include "tokenizer/tokenizer_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tokenizer/tokenizer_nfc.h"

/* Hangul syllables compose and decompose arithmetically */
#define SBASE 0xAC00u
#define LBASE 0x1100u
#define VBASE 0x1161u
#define TBASE 0x11A7u
#define LCOUNT 19u
#define VCOUNT 21u
#define TCOUNT 28u
#define NCOUNT (VCOUNT * TCOUNT)
#define SCOUNT (LCOUNT * NCOUNT)

#define RAW_BYTE 0x80000000u /* a byte that is not UTF-8, kept as it is */

struct pair {
    uint32_t a, b, c;
};

static struct pair *compose_tab; /* the composing pairs, by (a, b) */
static size_t n_compose;
static uint8_t bmp_look[0x10000 / 8]; /* 1: may change, or has a combining class */
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static int pair_cmp(const void *x, const void *y)
{
    const struct pair *p = x, *q = y;
    if (p->a != q->a)
        return p->a < q->a ? -1 : 1;
    return p->b < q->b ? -1 : p->b > q->b;
}

static void tables_init(void)
{
    size_t n = 0;
    for (size_t i = 0; i < MOE_ARRAY_SIZE(nfc_decomp); i++)
        n += nfc_decomp[i][3];
    compose_tab = malloc(n * sizeof(*compose_tab));
    if (compose_tab) { /* without it nothing composes: moe_tok_nfc reports that */
        for (size_t i = 0; i < MOE_ARRAY_SIZE(nfc_decomp); i++)
            if (nfc_decomp[i][3])
                compose_tab[n_compose++] =
                    (struct pair){ nfc_decomp[i][1], nfc_decomp[i][2], nfc_decomp[i][0] };
        qsort(compose_tab, n_compose, sizeof(*compose_tab), pair_cmp);
    }
    for (size_t i = 0; i < MOE_ARRAY_SIZE(nfc_maybe); i++)
        for (uint32_t c = nfc_maybe[i][0]; c <= nfc_maybe[i][1] && c < 0x10000; c++)
            bmp_look[c >> 3] |= (uint8_t)(1u << (c & 7));
    for (size_t i = 0; i < MOE_ARRAY_SIZE(nfc_ccc); i++)
        for (uint32_t c = nfc_ccc[i].lo; c <= nfc_ccc[i].hi && c < 0x10000; c++)
            bmp_look[c >> 3] |= (uint8_t)(1u << (c & 7));
}

static int ccc_of(uint32_t c)
{
    size_t lo = 0, hi = MOE_ARRAY_SIZE(nfc_ccc);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (nfc_ccc[mid].hi < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < MOE_ARRAY_SIZE(nfc_ccc) && nfc_ccc[lo].lo <= c ? nfc_ccc[lo].ccc : 0;
}

static bool maybe(uint32_t c)
{
    size_t lo = 0, hi = MOE_ARRAY_SIZE(nfc_maybe);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (nfc_maybe[mid][1] < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < MOE_ARRAY_SIZE(nfc_maybe) && nfc_maybe[lo][0] <= c;
}

static const uint32_t *decomp_of(uint32_t c)
{
    size_t lo = 0, hi = MOE_ARRAY_SIZE(nfc_decomp);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (nfc_decomp[mid][0] < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < MOE_ARRAY_SIZE(nfc_decomp) && nfc_decomp[lo][0] == c ? nfc_decomp[lo] : NULL;
}

/* The composite of a + b, or 0. */
static uint32_t compose(uint32_t a, uint32_t b)
{
    if (a - LBASE < LCOUNT && b - VBASE < VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a - SBASE < SCOUNT && (a - SBASE) % TCOUNT == 0 && b - TBASE - 1 < TCOUNT - 1)
        return a + (b - TBASE);
    struct pair key = { a, b, 0 };
    const struct pair *p = bsearch(&key, compose_tab, n_compose, sizeof(*compose_tab), pair_cmp);
    return p ? p->c : 0;
}

/* The code point at s[0..n) (*len bytes), or RAW_BYTE | byte. */
static uint32_t next_cp(const char *s, size_t n, size_t *len)
{
    size_t l = moe_utf8_len((const uint8_t *)s, n);
    if (l == 0) {
        *len = 1;
        return RAW_BYTE | (uint8_t)s[0];
    }
    uint32_t cp = (uint8_t)s[0] & (0xffu >> (l + (l > 1)));
    for (size_t k = 1; k < l; k++)
        cp = cp << 6 | ((uint8_t)s[k] & 0x3f);
    *len = l;
    return cp;
}

bool moe_tok_is_nfc(const char *s, size_t n)
{
    pthread_once(&tables_once, tables_init);
    int last = 0;
    for (size_t i = 0; i < n;) {
        if ((uint8_t)s[i] < 0x80) {
            last = 0;
            i++;
            continue;
        }
        size_t l;
        uint32_t c = next_cp(s + i, n - i, &l);
        i += l;
        if (c & RAW_BYTE || (c < 0x10000 && !(bmp_look[c >> 3] & (1u << (c & 7))))) {
            last = 0;
            continue;
        }
        if (maybe(c))
            return false;
        int k = ccc_of(c);
        if (k && last > k)
            return false;
        last = k;
    }
    return true;
}

static void decompose(uint32_t c, uint32_t *out, size_t *n)
{
    if (c - SBASE < SCOUNT) {
        uint32_t i = c - SBASE;
        out[(*n)++] = LBASE + i / NCOUNT;
        out[(*n)++] = VBASE + (i % NCOUNT) / TCOUNT;
        if (i % TCOUNT)
            out[(*n)++] = TBASE + i % TCOUNT;
        return;
    }
    const uint32_t *d = c & RAW_BYTE ? NULL : decomp_of(c);
    if (!d) {
        out[(*n)++] = c;
        return;
    }
    decompose(d[1], out, n);
    if (d[2])
        decompose(d[2], out, n);
}

int moe_tok_nfc(const char *s, size_t n, char **out, size_t *cap, size_t *out_n,
                uint32_t **cps, size_t *cps_cap)
{
    pthread_once(&tables_once, tables_init);
    if (!compose_tab)
        return moe_err(-ENOMEM, "out of memory (NFC tables)");
    /* a character decomposes to at most 4 code points, from at least 2 bytes
     * when more than one: 2 per byte suffice, + 4 of slack */
    size_t need = 2 * n + 4;
    if (*cps_cap < need) {
        uint32_t *p = realloc(*cps, need * sizeof(*p));
        if (!p)
            return moe_err(-ENOMEM, "out of memory");
        *cps = p;
        *cps_cap = need;
    }
    uint32_t *v = *cps;
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        size_t l;
        decompose(next_cp(s + i, n - i, &l), v, &m);
        i += l;
    }
    /* canonical order: each run of non-starters sorted, stably, by class */
    for (size_t i = 1; i < m; i++) {
        uint32_t c = v[i];
        int k = c & RAW_BYTE ? 0 : ccc_of(c);
        if (k == 0)
            continue;
        size_t j = i;
        while (j > 0 && !(v[j - 1] & RAW_BYTE) && ccc_of(v[j - 1]) > k) {
            v[j] = v[j - 1];
            j--;
        }
        v[j] = c;
    }
    /* canonical composition */
    size_t w = 0, starter = SIZE_MAX;
    int last = 0;
    for (size_t i = 0; i < m; i++) {
        uint32_t c = v[i];
        int k = c & RAW_BYTE ? 0 : ccc_of(c);
        if (starter != SIZE_MAX && !(c & RAW_BYTE) && !(v[starter] & RAW_BYTE)) {
            bool adjacent = w - 1 == starter;
            if (adjacent || (last != 0 && last < k)) { /* not blocked */
                uint32_t x = compose(v[starter], c);
                if (x) {
                    v[starter] = x;
                    continue;
                }
            }
        }
        if (k == 0)
            starter = w;
        last = k;
        v[w++] = c;
    }
    if (*cap < 4 * w + 1) {
        char *p = realloc(*out, 4 * w + 1);
        if (!p)
            return moe_err(-ENOMEM, "out of memory");
        *out = p;
        *cap = 4 * w + 1;
    }
    size_t o = 0;
    for (size_t i = 0; i < w; i++) {
        if (v[i] & RAW_BYTE)
            (*out)[o++] = (char)(v[i] & 0xff);
        else
            o += moe_utf8_put(v[i], *out + o);
    }
    *out_n = o;
    return 0;
}
