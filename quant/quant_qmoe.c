/* QMoE codec (ALGORITHMS.md s.1): row levels, the dictionary, the trie
 * encoder, the matrix layout and its validating view, the runtime decode
 * table, and the plain C reference kernel the fast kernels are tested
 * against. The stored layout is described in quant_qmoe.h. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "common/common.h"
#include "quant/quant_int.h"
#include "quant/quant_qmoe.h"

/* ---- levels ------------------------------------------------------------- */

float moe_qmoe_level_decode(float scale, uint8_t code)
{
    if (!code)
        return 0.0f;
    return scale * exp2f((float)((int)code - 255) / 32.0f);
}

uint8_t moe_qmoe_level_encode(float scale, float magnitude)
{
    if (!(magnitude > 0.0f) || !(scale > 0.0f))
        return 0;
    double c = 255.0 + nearbyint(32.0 * log2((double)magnitude / (double)scale));
    if (!(c >= 1.0)) /* also NaN */
        return 1;    /* nonzero never rounds to code 0 */
    return c > 255.0 ? 255 : (uint8_t)c;
}

float moe_qmoe_matrix_scale(const float *w, int64_t rows, int64_t cols)
{
    float m = 0.0f;
    for (int64_t i = 0; i < rows * cols; i++)
        m = fmaxf(m, fabsf(w[i]));
    return m;
}

void moe_qmoe_row_grid(const float *row, int64_t cols, float scale, uint8_t code[2], float *lo,
                       float *hi)
{
    float mn = 0.0f, mx = 0.0f; /* lo = min(row_min, 0), hi = max(row_max, 0) */
    for (int64_t c = 0; c < cols; c++) {
        mn = fminf(mn, row[c]);
        mx = fmaxf(mx, row[c]);
    }
    code[0] = moe_qmoe_level_encode(scale, -mn);
    code[1] = moe_qmoe_level_encode(scale, mx);
    *lo = -moe_qmoe_level_decode(scale, code[0]);
    *hi = moe_qmoe_level_decode(scale, code[1]);
}

/* ---- dictionary -------------------------------------------------------------
 * Best-first: the 9 single pairs first, then repeatedly the most probable
 * sequence not yet taken whose parent is taken (a max-heap of candidates; a
 * taken sequence pushes its 9 children). A child is never more probable than
 * its parent, so taking in this order is Tunstall's expansion, cut off at
 * exactly 65536 entries (the last expansion partial). Probabilities depend
 * only on (zeros, nonzeros) and are computed from those counts, so equal
 * probabilities are bit-equal and ties fall to the sequence's symbols. */

struct cand {
    double p;
    uint64_t seq; /* symbol i (0..8) at bits 60-4i: integer order = lexicographic */
    uint8_t len, zeros, nonzeros;
};

static bool cand_better(const struct cand *a, const struct cand *b)
{
    if (a->p != b->p)
        return a->p > b->p;
    if (a->seq != b->seq)
        return a->seq < b->seq;
    return a->len < b->len;
}

static void heap_push(struct cand *h, size_t *n, struct cand c)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!cand_better(&c, &h[parent]))
            break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = c;
}

static struct cand heap_pop(struct cand *h, size_t *n)
{
    struct cand top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, best = l;
        if (l >= *n)
            break;
        if (l + 1 < *n && cand_better(&h[l + 1], &h[l]))
            best = l + 1;
        if (!cand_better(&h[best], &last))
            break;
        h[i] = h[best];
        i = best;
    }
    if (*n)
        h[i] = last;
    return top;
}

static uint64_t cand_entry(const struct cand *c)
{
    uint64_t e = c->len;
    for (int i = 0; i < c->len; i++) {
        unsigned r = (unsigned)(c->seq >> (60 - 4 * i)) & 15;
        e |= (uint64_t)(r % 3) << (4 + 4 * i);
        e |= (uint64_t)(r / 3) << (6 + 4 * i);
    }
    return e;
}

void moe_qmoe_dict_build(double p_zero, uint64_t *table)
{
    double lz = p_zero > 0 ? log(p_zero) : -INFINITY;
    double ln = p_zero < 1 ? log((1.0 - p_zero) / 2.0) : -INFINITY;
    /* children of everything taken, at most 9 per entry */
    size_t cap = 9 * (size_t)MOE_QMOE_DICT_SIZE + 9, n = 0, taken = 0;
    struct cand *h = malloc(cap * sizeof(*h));
    if (!h)
        abort(); /* 5 MiB at pack time: not worth an error path */
    struct cand singles[9];
    for (int r = 0; r < 9; r++) {
        int z = (r % 3 == 0) + (r / 3 == 0);
        singles[r] = (struct cand){.seq = (uint64_t)r << 60, .len = 1, .zeros = (uint8_t)z,
                                   .nonzeros = (uint8_t)(2 - z)};
    }
    for (int i = 0; i < MOE_QMOE_DICT_SIZE; i++) {
        struct cand c = i < 9 ? singles[i] : heap_pop(h, &n);
        table[taken++] = cand_entry(&c);
        if (c.len == MOE_QMOE_MAX_PAIRS)
            continue;
        for (int r = 0; r < 9; r++) {
            int z = (r % 3 == 0) + (r / 3 == 0);
            struct cand k = {.seq = c.seq | (uint64_t)r << (60 - 4 * c.len),
                             .len = (uint8_t)(c.len + 1), .zeros = (uint8_t)(c.zeros + z),
                             .nonzeros = (uint8_t)(c.nonzeros + 2 - z)};
            k.p = exp((k.zeros ? k.zeros * lz : 0.0) + (k.nonzeros ? k.nonzeros * ln : 0.0));
            heap_push(h, &n, k);
        }
    }
    free(h);
}

int moe_qmoe_dict_check(const uint64_t *table)
{
    bool single[9] = {false};
    for (int i = 0; i < MOE_QMOE_DICT_SIZE; i++) {
        uint64_t e = table[i];
        unsigned cnt = (unsigned)(e & 15);
        if (cnt < 1 || cnt > MOE_QMOE_MAX_PAIRS)
            return moe_err(-EINVAL, "qmoe decode table: entry %d has %u pairs (1..%d)", i, cnt,
                           MOE_QMOE_MAX_PAIRS);
        if (cnt < 30 && (e >> (4 + 4 * cnt)))
            return moe_err(-EINVAL, "qmoe decode table: entry %d has bits past its %u pairs", i,
                           cnt);
        for (unsigned d = 0; d < 2 * cnt; d++)
            if (((e >> (4 + 2 * d)) & 3) == 3)
                return moe_err(-EINVAL, "qmoe decode table: entry %d digit %u is 3", i, d);
        if (cnt == 1)
            single[(e >> 4 & 3) + 3 * (e >> 6 & 3)] = true;
    }
    for (int r = 0; r < 9; r++)
        if (!single[r])
            return moe_err(-EINVAL, "qmoe decode table: single pair %d (digits %d,%d) missing", r,
                           r % 3, r / 3);
    return 0;
}

/* ---- encoder: a trie over the table --------------------------------------- */

struct moe_qmoe_encoder {
    int32_t (*child)[9]; /* node -> child per pair symbol, -1 none; node 0 the root */
    int32_t *code;       /* node -> codeword ending there, -1 none */
    size_t n_nodes;
};

int moe_qmoe_encoder_create(const uint64_t *table, struct moe_qmoe_encoder **out)
{
    *out = NULL;
    int rc = moe_qmoe_dict_check(table);
    if (rc < 0)
        return rc;
    size_t cap = 1;
    for (int i = 0; i < MOE_QMOE_DICT_SIZE; i++)
        cap += table[i] & 15;
    struct moe_qmoe_encoder *e = calloc(1, sizeof(*e));
    if (!e)
        return moe_err(-ENOMEM, "out of memory");
    e->child = malloc(cap * sizeof(*e->child));
    e->code = malloc(cap * sizeof(*e->code));
    if (!e->child || !e->code) {
        moe_qmoe_encoder_free(e);
        return moe_err(-ENOMEM, "out of memory");
    }
    memset(e->child, 0xff, cap * sizeof(*e->child));
    memset(e->code, 0xff, cap * sizeof(*e->code));
    e->n_nodes = 1;
    for (int i = 0; i < MOE_QMOE_DICT_SIZE; i++) {
        uint64_t en = table[i];
        int32_t node = 0;
        for (unsigned k = 0; k < (en & 15); k++) {
            unsigned r = (unsigned)((en >> (4 + 4 * k)) & 3) + 3 * (unsigned)((en >> (6 + 4 * k)) & 3);
            if (e->child[node][r] < 0)
                e->child[node][r] = (int32_t)e->n_nodes++;
            node = e->child[node][r];
        }
        if (e->code[node] < 0) /* a duplicate entry: the first one codes it */
            e->code[node] = i;
    }
    *out = e;
    return 0;
}

void moe_qmoe_encoder_free(struct moe_qmoe_encoder *e)
{
    if (!e)
        return;
    free(e->child);
    free(e->code);
    free(e);
}

size_t moe_qmoe_matrix_bound(int64_t rows, int64_t cols)
{
    /* every codeword covers at least one pair */
    return moe_qmoe_code_offset(rows) + 2 * (size_t)rows * (size_t)((cols + 1) / 2);
}

static unsigned pair_at(const uint8_t *d, int64_t cols, int64_t i)
{
    return d[2 * i] + 3u * (2 * i + 1 < cols ? d[2 * i + 1] : 0u);
}

size_t moe_qmoe_matrix_encode(const struct moe_qmoe_encoder *e, const uint8_t *digits,
                              const uint8_t *levels, float scale, int64_t rows, int64_t cols,
                              void *out, size_t cap)
{
    if (rows <= 0 || cols <= 0 || cap < moe_qmoe_code_offset(rows))
        return 0;
    for (int64_t i = 0; i < rows * cols; i++)
        if (digits[i] > 2)
            return 0;
    uint8_t *o = out;
    size_t code_off = moe_qmoe_code_offset(rows), lev_off = moe_qmoe_level_offset(rows);
    int64_t np = (cols + 1) / 2;
    uint64_t nc = 0;
    for (int64_t r = 0; r < rows; r++) {
        if (r % MOE_QMOE_ROW_BLOCK == 0) {
            uint32_t v = (uint32_t)nc;
            memcpy(o + 12 + 4 * (size_t)(r / MOE_QMOE_ROW_BLOCK), &v, 4);
        }
        const uint8_t *d = digits + r * cols;
        for (int64_t i = 0; i < np;) {
            int32_t node = 0, best = -1;
            int len = 0;
            for (int64_t j = i; j < np && j - i < MOE_QMOE_MAX_PAIRS; j++) {
                node = e->child[node][pair_at(d, cols, j)];
                if (node < 0)
                    break;
                if (e->code[node] >= 0) {
                    best = e->code[node];
                    len = (int)(j - i + 1);
                }
            }
            /* best >= 0: every single pair is a codeword (dict_check) */
            if (nc >= UINT32_MAX || code_off + 2 * (nc + 1) > cap)
                return 0;
            uint16_t cw = (uint16_t)best;
            memcpy(o + code_off + 2 * nc, &cw, 2);
            nc++;
            i += len;
        }
    }
    uint32_t magic = MOE_QMOE_MAGIC, n32 = (uint32_t)nc;
    memcpy(o, &magic, 4);
    memcpy(o + 4, &n32, 4);
    memcpy(o + 8, &scale, 4);
    memcpy(o + 12 + 4 * (size_t)((rows + MOE_QMOE_ROW_BLOCK - 1) / MOE_QMOE_ROW_BLOCK), &n32, 4);
    memcpy(o + lev_off, levels, 2 * (size_t)rows);
    memset(o + lev_off + 2 * (size_t)rows, 0, code_off - lev_off - 2 * (size_t)rows);
    return code_off + 2 * (size_t)nc;
}

/* ---- runtime decode table ------------------------------------------------ */

int moe_qmoe_side_create(const void *table, size_t nbytes, void **side)
{
    *side = NULL;
    if (!table || nbytes != (size_t)MOE_QMOE_DICT_SIZE * 8)
        return moe_err(-EINVAL, "qmoe decode table: %zu bytes, expected %d", nbytes,
                       MOE_QMOE_DICT_SIZE * 8);
    uint64_t *t = malloc((size_t)MOE_QMOE_DICT_SIZE * 8);
    struct moe_qmoe_side *s = aligned_alloc(64, sizeof(*s));
    if (!t || !s) {
        free(t);
        free(s);
        return moe_err(-ENOMEM, "out of memory");
    }
    memcpy(t, table, nbytes); /* the pack's bytes may be unaligned; little-endian host */
    int rc = moe_qmoe_dict_check(t);
    if (rc < 0) {
        free(t);
        free(s);
        return rc;
    }
    for (int i = 0; i < MOE_QMOE_DICT_SIZE; i++) {
        uint64_t e = t[i];
        uint32_t cnt = (uint32_t)(e & 15), lo = 0, hi = 0;
        for (uint32_t d = 0; d < 2 * cnt; d++) {
            unsigned v = (unsigned)(e >> (4 + 2 * d)) & 3;
            lo |= (uint32_t)(v == 1) << d;
            hi |= (uint32_t)(v == 2) << d;
        }
        s->e[i][0] = lo | cnt << 28;
        s->e[i][1] = hi;
        s->d[i] = (e >> 4) << 8 | 2 * cnt; /* dict_check: e has no bits past 4 + 4*cnt */
    }
    free(t);
    *side = s;
    return 0;
}

void moe_qmoe_side_free(void *side)
{
    free(side);
}

/* ---- view: trust nothing --------------------------------------------------- */

int moe_qmoe_view(const void *data, size_t nbytes, int64_t rows, int64_t cols, const void *side,
                  struct moe_weight *out)
{
    const uint8_t *d = data;
    const struct moe_qmoe_side *s = side;
    if (!s)
        return moe_err(-EINVAL, "qmoe matrix: no decode table (qmoe.decode_table) loaded");
    if (rows <= 0 || cols <= 0 || rows > INT32_MAX || cols > INT32_MAX)
        return moe_err(-EINVAL, "qmoe matrix: bad shape %lldx%lld", (long long)rows,
                       (long long)cols);
    if (!d || ((uintptr_t)d & 3))
        return moe_err(-EINVAL, "qmoe matrix: data not 4-byte aligned");
    size_t code_off = moe_qmoe_code_offset(rows);
    if (nbytes < code_off)
        return moe_err(-EINVAL, "qmoe matrix: %zu bytes, shorter than its %zu-byte header",
                       nbytes, code_off);
    uint32_t magic, n_codes;
    float scale;
    memcpy(&magic, d, 4);
    memcpy(&n_codes, d + 4, 4);
    memcpy(&scale, d + 8, 4);
    if (magic != MOE_QMOE_MAGIC)
        return moe_err(-EINVAL, "qmoe matrix: bad magic 0x%08x", magic);
    if (!isfinite(scale) || scale < 0.0f)
        return moe_err(-EINVAL, "qmoe matrix: bad scale %g", (double)scale);
    if (nbytes != code_off + 2 * (size_t)n_codes)
        return moe_err(-EINVAL, "qmoe matrix: %zu bytes, but %u codewords need %zu", nbytes,
                       n_codes, code_off + 2 * (size_t)n_codes);
    int64_t nb = (rows + MOE_QMOE_ROW_BLOCK - 1) / MOE_QMOE_ROW_BLOCK;
    uint32_t prev = 0;
    for (int64_t b = 0; b <= nb; b++) {
        uint32_t v;
        memcpy(&v, d + 12 + 4 * b, 4);
        if ((b == 0 && v != 0) || v < prev || v > n_codes || (b == nb && v != n_codes))
            return moe_err(-EINVAL, "qmoe matrix: block_start[%lld] = %u out of order or range "
                           "(n_codes %u)", (long long)b, v, n_codes);
        prev = v;
    }
    /* full decode pass: each block starts where block_start says, each row
     * covers exactly its pairs, no codeword crosses a row end */
    const uint16_t *code = (const uint16_t *)(d + code_off);
    uint64_t np = (uint64_t)(cols + 1) / 2;
    uint32_t idx = 0;
    for (int64_t r = 0; r < rows; r++) {
        if (r % MOE_QMOE_ROW_BLOCK == 0) {
            uint32_t v;
            memcpy(&v, d + 12 + 4 * (r / MOE_QMOE_ROW_BLOCK), 4);
            if (v != idx)
                return moe_err(-EINVAL, "qmoe matrix: block_start[%lld] = %u, but the block "
                               "starts at codeword %u", (long long)(r / MOE_QMOE_ROW_BLOCK), v,
                               idx);
        }
        uint64_t p = 0;
        uint32_t last = 0;
        while (p < np) {
            if (idx >= n_codes)
                return moe_err(-EINVAL, "qmoe matrix: row %lld runs past the last codeword",
                               (long long)r);
            last = s->e[code[idx++]][0];
            p += MOE_QMOE_SIDE_COUNT(last);
        }
        if (p != np)
            return moe_err(-EINVAL, "qmoe matrix: row %lld: codeword %u crosses the row end "
                           "(%llu pairs, row has %llu)", (long long)r, idx - 1,
                           (unsigned long long)p, (unsigned long long)np);
        if (cols & 1) {
            uint32_t cnt = MOE_QMOE_SIDE_COUNT(last);
            uint32_t nz = (last | s->e[code[idx - 1]][1]) & MOE_QMOE_SIDE_MASK;
            if (nz >> (2 * cnt - 1) & 1)
                return moe_err(-EINVAL, "qmoe matrix: row %lld: padding digit not zero",
                               (long long)r);
        }
    }
    if (idx != n_codes)
        return moe_err(-EINVAL, "qmoe matrix: %u codewords decoded, header says %u", idx,
                       n_codes);
    *out = (struct moe_weight){.dtype = MOE_DTYPE_QMOE, .rows = rows, .cols = cols,
                               .row_bytes = nbytes / (size_t)rows, .data = data,
                               .nbytes = nbytes, .aux = side};
    return 0;
}

/* ---- decoding for tools and tests ------------------------------------------ */

void moe_qmoe_matrix_to_f32(const struct moe_weight *w, float *out)
{
    struct moe_qmoe_layout L;
    moe_qmoe_layout_get(w, &L);
    const struct moe_qmoe_side *s = w->aux;
    uint32_t idx = 0;
    for (int64_t r = 0; r < w->rows; r++) {
        float lo = -moe_qmoe_level_decode(L.scale, L.level[2 * r]);
        float hi = moe_qmoe_level_decode(L.scale, L.level[2 * r + 1]);
        float *o = out + r * w->cols;
        for (int64_t p = 0; p < w->cols;) {
            const uint32_t *e = s->e[L.code[idx++]];
            uint32_t cnt = MOE_QMOE_SIDE_COUNT(e[0]);
            for (uint32_t k = 0; k < 2 * cnt && p + k < w->cols; k++)
                o[p + k] = (e[0] >> k & 1) ? lo : (e[1] >> k & 1) ? hi : 0.0f;
            p += 2 * cnt;
        }
    }
}

int64_t moe_qmoe_matrix_zeros(const struct moe_weight *w)
{
    struct moe_qmoe_layout L;
    moe_qmoe_layout_get(w, &L);
    const struct moe_qmoe_side *s = w->aux;
    int64_t nonzero = 0;
    for (uint32_t i = 0; i < L.n_codes; i++) {
        const uint32_t *e = s->e[L.code[i]];
        nonzero += __builtin_popcount((e[0] | e[1]) & MOE_QMOE_SIDE_MASK);
    }
    return w->rows * w->cols - nonzero; /* padding digits are 0 and not counted */
}

/* ---- reference kernel ----------------------------------------------------------
 * Per row and token: S_lo and S_hi, the sums of x over the row's lo and hi
 * positions, in codeword order; y = lo*S_lo + hi*S_hi. The row's codewords
 * are re-walked for every token: the definition, not the fast path. */
void moe_quant_gemm_qmoe_ref(const struct moe_weight *w, int64_t r0, int64_t r1,
                             const float *x, int64_t ldx, int n, float *y, int64_t ldy)
{
    if (r1 <= r0 || n <= 0)
        return;
    struct moe_qmoe_layout L;
    moe_qmoe_layout_get(w, &L);
    const struct moe_qmoe_side *s = w->aux;
    int64_t cols = w->cols;
    uint32_t idx = moe_qmoe_row_seek(&L, s, cols, r0);
    for (int64_t r = r0; r < r1; r++) {
        float lo = -moe_qmoe_level_decode(L.scale, L.level[2 * r]);
        float hi = moe_qmoe_level_decode(L.scale, L.level[2 * r + 1]);
        uint32_t j = idx;
        for (int t = 0; t < n; t++) {
            const float *xt = x + t * ldx;
            float slo = 0.0f, shi = 0.0f;
            j = idx;
            for (int64_t p = 0; p < cols;) {
                const uint32_t *e = s->e[L.code[j++]];
                for (uint32_t m = e[0] & MOE_QMOE_SIDE_MASK; m; m &= m - 1)
                    slo += xt[p + __builtin_ctz(m)];
                for (uint32_t m = e[1]; m; m &= m - 1)
                    shi += xt[p + __builtin_ctz(m)];
                p += 2 * MOE_QMOE_SIDE_COUNT(e[0]);
            }
            y[t * ldy + r] = lo * slo + hi * shi;
        }
        idx = j;
    }
}
