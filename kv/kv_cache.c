/* The paged KV cache: one pool of fixed-size units, per-sequence block
 * tables, the KIVI residual window and quantisation as tokens leave it, and
 * attention over the result (kernels in kv_attn_*.c). See kv.h. */
#include "kv/kv.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "common/common.h"
#include "kv/kv_int.h"
#include "quant/quant.h"

struct moe_kv_pool {
    int32_t L, Hk, Dk, Dv;
    bool v_in_k;              /* MLA: no V part, values read from the keys */
    int32_t *window;          /* [L] positions a layer attends (0 = all) */
    int32_t max_chunk;        /* tokens one sequence adds per forward, 0 = unbounded */
    int32_t G, R, kb, vb, Gv; /* Gv: channels per value group */
    bool direct;              /* 16/16 or 32/32: tokens go straight into units */
    int32_t esz_k, esz_v;     /* direct: bytes per element (2 fp16, 4 fp32) */
    int32_t W, tpu, nw;       /* window ring tokens, token slots per unit, units per layer */
    size_t kh, vh;            /* bytes of one head's K and V part of a block unit */
    size_t unit_bytes, tok_bytes; /* tok_bytes: one window token, all heads */
    int64_t n_units, n_free, reserved;
    int32_t *free_list;
    int32_t *refs;            /* [n_units] sequences holding a unit (forks share blocks) */
    uint8_t *mem;
    /* recurrent layers: a state of srows rows of srow values, rpu rows per
     * unit, su units per layer of a sequence */
    bool *rec;                /* [L] */
    int32_t srows, srow, sbits, rpu, su;
    size_t row_bytes;
};

struct moe_kv {
    struct moe_kv_pool *pool;
    bool own_pool;
    int32_t max_ctx, nb; /* nb: block slots per layer */
    int32_t *blk;        /* [L][nb] unit ids, -1 = none */
    int32_t *win;        /* [L][nw] window units, -1 = none */
    int32_t *n, *nq;     /* [L] tokens stored, of which quantised (a prefix) */
    int32_t *lo;         /* [L] first position still held (window layers give blocks back) */
    int64_t held, quota; /* units taken; units promised but not yet taken */
    int32_t *st;         /* [L][su] a recurrent layer's state units, -1 = none */
};

/* ---- kernels ------------------------------------------------------------------- */

static const struct moe_kv_ops *kv_ops;

int moe_kv_set_isa(int isa)
{
    if (isa < 0)
        isa = (int)moe_isa_best();
    if (isa > (int)moe_isa_best())
        isa = (int)moe_isa_best();
#ifdef MOE_NO_SIMD
    kv_ops = &moe_kv_ops_ref;
#else
    kv_ops = isa == MOE_ISA_AVX512 ? &moe_kv_ops_avx512
             : isa == MOE_ISA_AVX2 ? &moe_kv_ops_avx2
                                   : &moe_kv_ops_ref;
#endif
    return isa;
}

static const struct moe_kv_ops *ops(void)
{
    if (!kv_ops)
        moe_kv_set_isa(-1);
    return kv_ops;
}

/* ---- parameters and sizes -------------------------------------------------------- */

static bool bits_ok(int32_t b)
{
    return b == 2 || b == 4 || b == 8 || b == 16;
}

int moe_kv_params_check(const struct moe_kv_params *p, const struct moe_kv_shape *sh)
{
    /* MLA: the keys are the values, stored at key_bits whatever value_bits says */
    bool direct = p->key_bits >= 16 && (sh->v_in_k ? p->key_bits : p->value_bits) >= 16;
    if ((!bits_ok(p->key_bits) && p->key_bits != 32) ||
        (!bits_ok(p->value_bits) && p->value_bits != 32))
        return moe_err(-EINVAL, "kv: key_bits and value_bits must be 2, 4, 8, 16 or 32, "
                       "not %d/%d", p->key_bits, p->value_bits);
    if (p->group != 32 && p->group != 64 && p->group != 128)
        return moe_err(-EINVAL, "kv: group must be 32, 64 or 128, not %d", p->group);
    if (p->residual < 0 || p->residual % p->group)
        return moe_err(-EINVAL, "kv: residual (%d) must be a non-negative multiple of group (%d)",
                       p->residual, p->group);
    if (sh->k_dim <= 0 || sh->v_dim <= 0 || sh->k_dim > MOE_KV_MAX_D ||
        sh->v_dim > MOE_KV_MAX_D || (sh->v_in_k && sh->v_dim > sh->k_dim))
        return moe_err(-EINVAL, "kv: key/value dimensions %d/%d outside 1..%d", sh->k_dim,
                       sh->v_dim, MOE_KV_MAX_D);
    if (!direct && (sh->k_dim % 8 || sh->v_dim % 8))
        return moe_err(-EINVAL, "kv: a quantised cache needs key and value dimensions that are "
                       "multiples of 8, not %d/%d", sh->k_dim, sh->v_dim);
    return 0;
}

/* fills the layout fields of P from its shape and parameters (P->window is
 * left to the caller: layout also sizes pools that are never made) */
static void layout(struct moe_kv_pool *P, const struct moe_kv_shape *sh,
                   const struct moe_kv_params *p)
{
    P->L = sh->n_layers, P->Hk = sh->n_kv_heads, P->Dk = sh->k_dim, P->Dv = sh->v_dim;
    P->v_in_k = sh->v_in_k;
    P->max_chunk = sh->max_chunk;
    P->G = p->group, P->kb = p->key_bits;
    P->vb = P->v_in_k ? p->key_bits : p->value_bits; /* the keys are the values: one width */
    P->direct = P->kb >= 16 && P->vb >= 16;
    if (!P->direct) { /* beside a quantised side, a 32-bit side passes the fp16 window: 16 */
        P->kb = MOE_MIN(P->kb, 16);
        P->vb = MOE_MIN(P->vb, 16);
    }
    P->R = P->direct ? 0 : p->residual;
    int32_t Dv = P->Dv;
    P->Gv = MOE_MIN(P->G, Dv);
    while (Dv % P->Gv || (P->Gv * 2) % 8) /* a group divides the head and packs into bytes */
        P->Gv--;
    size_t G = (size_t)P->G, Dk = (size_t)P->Dk, Dvz = P->v_in_k ? 0 : (size_t)Dv;
    if (P->direct) {
        P->esz_k = P->kb / 8;
        P->esz_v = P->vb / 8;
        P->kh = G * Dk * (size_t)P->esz_k;
        P->vh = G * Dvz * (size_t)P->esz_v;
    } else {
        P->kh = P->kb < 16 ? Dk * G * (size_t)P->kb / 8 + Dk * 4 : G * Dk * 2;
        P->vh = !Dvz        ? 0
                : P->vb < 16 ? G * Dvz * (size_t)P->vb / 8 + G * (Dvz / (size_t)P->Gv) * 4
                             : G * Dvz * 2;
    }
    P->unit_bytes = MOE_ALIGN_UP((size_t)P->Hk * (P->kh + P->vh), 64);
    P->tok_bytes = (size_t)P->Hk * (Dk + Dvz) * 2; /* fp16 K and V */
    P->W = P->R + P->G;
    P->tpu = 0;
    P->nw = 0;
    if (!P->direct) {
        if (P->unit_bytes < P->tok_bytes)
            P->unit_bytes = MOE_ALIGN_UP(P->tok_bytes, 64);
        P->tpu = (int32_t)(P->unit_bytes / P->tok_bytes);
        P->nw = (P->W + P->tpu - 1) / P->tpu;
    }
    P->srows = sh->recurrent ? sh->state_rows : 0;
    P->srow = sh->recurrent ? sh->state_row : 0;
    P->sbits = p->state_bits == 16 ? 16 : 32;
    P->row_bytes = (size_t)P->srow * (size_t)P->sbits / 8;
    P->rpu = P->su = 0;
    if (P->srows > 0 && P->row_bytes > 0) {
        if (P->unit_bytes < P->row_bytes)
            P->unit_bytes = MOE_ALIGN_UP(P->row_bytes, 64);
        P->rpu = (int32_t)(P->unit_bytes / P->row_bytes);
        P->su = (P->srows + P->rpu - 1) / P->rpu;
    }
}

static bool is_rec(const struct moe_kv_shape *sh, const bool *rec, int32_t l)
{
    return (rec && rec[l]) || (sh && sh->recurrent && sh->recurrent[l]);
}

static int32_t window_of(const int32_t *window, int32_t l)
{
    return window ? window[l] : 0;
}

/* Blocks a window layer of one sequence holds at most: what its window
 * reaches plus one forward's new tokens (stored before they attend), over
 * one more block boundary; INT64_MAX when unbounded. */
static int64_t window_blocks(const struct moe_kv_pool *P, int32_t win)
{
    if (win <= 0 || P->max_chunk <= 0)
        return INT64_MAX;
    return ((int64_t)win - 1 + P->max_chunk + P->G - 1) / P->G + 1;
}

static bool is_rec(const struct moe_kv_shape *sh, const bool *rec, int32_t l);

static int64_t units_for_win(const struct moe_kv_pool *P, const int32_t *window, const bool *rec,
                             int64_t T)
{
    if (T <= 0)
        return 0;
    int64_t blocks, ring = 0;
    if (P->direct) {
        blocks = (T + P->G - 1) / P->G;
    } else {
        blocks = T >= P->R + P->G ? (T - P->R) / P->G : 0;
        int64_t slots = MOE_MIN(T, (int64_t)P->W);
        ring = (slots + P->tpu - 1) / P->tpu;
    }
    int64_t u = 0;
    for (int32_t l = 0; l < P->L; l++)
        u += is_rec(NULL, rec, l) ? P->su
                                  : MOE_MIN(blocks, window_blocks(P, window_of(window, l))) + ring;
    return u;
}

static int64_t units_for(const struct moe_kv_pool *P, int64_t T)
{
    return units_for_win(P, P->window, P->rec, T);
}

int64_t moe_kv_units_for_params(const struct moe_kv_shape *sh, const struct moe_kv_params *p,
                                int64_t n_tokens)
{
    struct moe_kv_pool P;
    layout(&P, sh, p);
    return units_for_win(&P, sh->window, sh->recurrent, n_tokens);
}

int64_t moe_kv_units_for_tokens(const struct moe_kv_shape *sh, const struct moe_kv_params *p,
                                int64_t n_tokens, int32_t n_seqs)
{
    struct moe_kv_pool P;
    layout(&P, sh, p);
    int64_t blocks = (n_tokens + P.G - 1) / P.G, u = 0;
    for (int32_t l = 0; l < P.L; l++) {
        if (is_rec(sh, NULL, l)) {
            u += (int64_t)n_seqs * P.su;
            continue;
        }
        int64_t per_seq = window_blocks(&P, window_of(sh->window, l));
        int64_t b = per_seq == INT64_MAX ? blocks : MOE_MIN(blocks, per_seq * n_seqs);
        u += b + (int64_t)n_seqs * P.nw;
    }
    return u;
}

size_t moe_kv_unit_bytes_for_params(const struct moe_kv_shape *sh, const struct moe_kv_params *p)
{
    struct moe_kv_pool P;
    layout(&P, sh, p);
    return P.unit_bytes;
}

double moe_kv_token_bytes(const struct moe_kv_shape *sh, const struct moe_kv_params *p)
{
    struct moe_kv_pool P;
    layout(&P, sh, p);
    return (double)((size_t)P.Hk * (P.kh + P.vh)) / (double)P.G;
}

size_t moe_kv_pool_unit_bytes(const struct moe_kv_pool *P)
{
    return P->unit_bytes;
}

int64_t moe_kv_pool_units_for(const struct moe_kv_pool *P, int64_t n_tokens)
{
    return units_for(P, n_tokens);
}

size_t moe_kv_pool_bytes_for(const struct moe_kv_pool *P, int64_t n_tokens)
{
    return (size_t)units_for(P, n_tokens) * P->unit_bytes;
}

void moe_kv_pool_get_stats(const struct moe_kv_pool *P, struct moe_kv_pool_stats *st)
{
    st->units_total = P->n_units;
    st->units_used = P->n_units - P->n_free;
    st->units_reserved = P->reserved;
    st->unit_bytes = P->unit_bytes;
    st->group = P->G;
    st->residual = P->R;
    st->key_bits = P->kb;
    st->value_bits = P->vb;
    st->bytes_per_token_4k = (double)moe_kv_pool_bytes_for(P, 4096) / 4096.0;
}

/* ---- the pool ------------------------------------------------------------------- */

int moe_kv_pool_create(const struct moe_kv_shape *sh, const struct moe_kv_params *p,
                       int64_t n_units, struct moe_kv_pool **out)
{
    *out = NULL;
    if (sh->n_layers <= 0 || sh->n_kv_heads <= 0 || n_units <= 0 || n_units > INT32_MAX)
        return moe_err(-EINVAL, "kv pool: bad dimensions or size (%lld units)",
                       (long long)n_units);
    int rc = moe_kv_params_check(p, sh);
    if (rc < 0)
        return rc;
    struct moe_kv_pool *P = calloc(1, sizeof(*P));
    if (!P)
        return moe_err(-ENOMEM, "out of memory");
    layout(P, sh, p);
    P->n_units = P->n_free = n_units;
    P->window = calloc((size_t)sh->n_layers, sizeof(int32_t));
    P->rec = calloc((size_t)sh->n_layers, sizeof(bool));
    P->free_list = malloc((size_t)n_units * sizeof(int32_t));
    P->refs = calloc((size_t)n_units, sizeof(int32_t));
    /* malloc, not calloc: pages are only touched as units are used */
    P->mem = malloc((size_t)n_units * P->unit_bytes);
    if (!P->window || !P->rec || !P->free_list || !P->refs || !P->mem) {
        size_t mib = ((size_t)n_units * P->unit_bytes) >> 20;
        moe_kv_pool_free(P);
        return moe_err(-ENOMEM, "out of memory for a KV pool of %zu MiB", mib);
    }
    for (int32_t l = 0; sh->window && l < sh->n_layers; l++)
        P->window[l] = MOE_MAX(sh->window[l], 0);
    for (int32_t l = 0; sh->recurrent && l < sh->n_layers; l++)
        P->rec[l] = sh->recurrent[l] && P->su > 0;
    for (int64_t i = 0; i < n_units; i++) /* lowest ids handed out first */
        P->free_list[i] = (int32_t)(n_units - 1 - i);
    ops();
    *out = P;
    return 0;
}

void moe_kv_pool_free(struct moe_kv_pool *P)
{
    if (!P)
        return;
    free(P->window);
    free(P->rec);
    free(P->free_list);
    free(P->refs);
    free(P->mem);
    free(P);
}

static uint8_t *unit_ptr(const struct moe_kv_pool *P, int32_t id)
{
    return P->mem + (size_t)id * P->unit_bytes;
}

/* ---- sequences ----------------------------------------------------------------- */

int moe_kv_seq_create(struct moe_kv_pool *P, int32_t max_ctx, struct moe_kv **out)
{
    *out = NULL;
    if (max_ctx <= 0)
        return moe_err(-EINVAL, "kv cache: bad context %d", max_ctx);
    struct moe_kv *kv = calloc(1, sizeof(*kv));
    if (!kv)
        return moe_err(-ENOMEM, "out of memory");
    kv->pool = P;
    kv->max_ctx = max_ctx;
    kv->nb = (max_ctx + P->G - 1) / P->G;
    size_t L = (size_t)P->L;
    kv->blk = malloc(L * (size_t)kv->nb * sizeof(int32_t));
    kv->win = malloc(L * (size_t)MOE_MAX(P->nw, 1) * sizeof(int32_t));
    kv->n = calloc(L, sizeof(int32_t));
    kv->nq = calloc(L, sizeof(int32_t));
    kv->lo = calloc(L, sizeof(int32_t));
    kv->st = malloc(L * (size_t)MOE_MAX(P->su, 1) * sizeof(int32_t));
    if (!kv->blk || !kv->win || !kv->n || !kv->nq || !kv->lo || !kv->st) {
        moe_kv_free(kv);
        return moe_err(-ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < L * (size_t)kv->nb; i++)
        kv->blk[i] = -1;
    for (size_t i = 0; i < L * (size_t)MOE_MAX(P->nw, 1); i++)
        kv->win[i] = -1;
    for (size_t i = 0; i < L * (size_t)MOE_MAX(P->su, 1); i++)
        kv->st[i] = -1;
    *out = kv;
    return 0;
}

static void unit_give(struct moe_kv *kv, int32_t *slot)
{
    if (*slot < 0)
        return;
    if (--kv->pool->refs[*slot] == 0) /* a shared block stays while a fork holds it */
        kv->pool->free_list[kv->pool->n_free++] = *slot;
    kv->held--;
    *slot = -1;
}

/* gives a held unit back but keeps it promised to kv: the layer will need as
 * many again (a window moving on, a window layer starting over) */
static void unit_give_promised(struct moe_kv *kv, int32_t *slot)
{
    if (*slot < 0)
        return;
    unit_give(kv, slot);
    kv->quota++;
    kv->pool->reserved++;
}

/* units kv may still take: its own promise, then what nobody was promised */
static int64_t can_take(const struct moe_kv *kv)
{
    const struct moe_kv_pool *P = kv->pool;
    return kv->quota + (P->n_free - P->reserved);
}

static int32_t unit_take(struct moe_kv *kv) /* only after can_take() said yes */
{
    struct moe_kv_pool *P = kv->pool;
    if (kv->quota > 0) {
        kv->quota--;
        P->reserved--;
    }
    kv->held++;
    int32_t id = P->free_list[--P->n_free];
    P->refs[id] = 1;
    return id;
}

/* a new unit of kv's holding a copy of unit from (only after can_take()) */
static int32_t unit_copy(struct moe_kv *kv, int32_t from)
{
    struct moe_kv_pool *P = kv->pool;
    int32_t id = unit_take(kv);
    memcpy(unit_ptr(P, id), unit_ptr(P, from), P->unit_bytes);
    return id;
}

/* A unit kv is about to write into that a fork shares becomes kv's own
 * copy; -ENOSPC (no message) when there is no unit for it. */
static int unit_own(struct moe_kv *kv, int32_t *slot)
{
    if (*slot < 0 || kv->pool->refs[*slot] <= 1)
        return 0;
    if (can_take(kv) < 1)
        return -ENOSPC;
    int32_t shared = *slot;
    *slot = unit_copy(kv, shared);
    unit_give(kv, &shared); /* the others keep it */
    return 0;
}

void moe_kv_reset(struct moe_kv *kv)
{
    struct moe_kv_pool *P = kv->pool;
    for (size_t i = 0; i < (size_t)P->L * (size_t)kv->nb; i++)
        unit_give(kv, &kv->blk[i]);
    for (size_t i = 0; i < (size_t)P->L * (size_t)P->nw; i++)
        unit_give(kv, &kv->win[i]);
    for (size_t i = 0; i < (size_t)P->L * (size_t)P->su; i++)
        unit_give(kv, &kv->st[i]);
    P->reserved -= kv->quota;
    kv->quota = 0;
    memset(kv->n, 0, (size_t)P->L * sizeof(int32_t));
    memset(kv->nq, 0, (size_t)P->L * sizeof(int32_t));
    memset(kv->lo, 0, (size_t)P->L * sizeof(int32_t));
}

int moe_kv_reserve(struct moe_kv *kv, int32_t n_tokens)
{
    struct moe_kv_pool *P = kv->pool;
    if (n_tokens > kv->max_ctx)
        n_tokens = kv->max_ctx;
    int64_t need = MOE_MAX(units_for(P, n_tokens) - kv->held, 0);
    int64_t avail = P->n_free - (P->reserved - kv->quota);
    if (need > avail)
        return moe_err(-ENOSPC, "KV pool full: %d tokens need %lld more blocks, %lld of %lld "
                       "are free", n_tokens, (long long)need, (long long)avail,
                       (long long)P->n_units);
    P->reserved += need - kv->quota;
    kv->quota = need;
    return 0;
}

/* A window layer's blocks that no later token reaches go back to the pool,
 * still promised to kv: its next blocks take them again (a ring), so what a
 * reservation promised stays enough. */
static void window_trim(struct moe_kv *kv, int32_t l)
{
    struct moe_kv_pool *P = kv->pool;
    int32_t win = P->window[l];
    if (win <= 0)
        return;
    int32_t first = kv->n[l] - win + 1; /* the oldest position the next token attends */
    int32_t nblk = P->direct ? kv->n[l] : kv->nq[l]; /* positions held in blocks */
    int32_t b_end = MOE_MIN(first, nblk) / P->G;     /* blocks wholly before both */
    for (int32_t b = kv->lo[l] / P->G; b < b_end; b++)
        unit_give_promised(kv, &kv->blk[(size_t)l * kv->nb + b]);
    if (b_end * P->G > kv->lo[l])
        kv->lo[l] = b_end * P->G;
}

int moe_kv_create(const struct moe_kv_shape *sh, const struct moe_kv_params *params,
                  int32_t max_ctx, struct moe_kv **out)
{
    *out = NULL;
    if (sh->n_layers <= 0 || sh->n_kv_heads <= 0 || max_ctx <= 0)
        return moe_err(-EINVAL, "kv cache: bad dimensions");
    struct moe_kv_params p = params ? *params : (struct moe_kv_params){32, 32, 32, 0};
    int rc = moe_kv_params_check(&p, sh);
    if (rc < 0)
        return rc;
    struct moe_kv_pool *P;
    rc = moe_kv_pool_create(sh, &p, moe_kv_units_for_params(sh, &p, max_ctx), &P);
    if (rc < 0)
        return rc;
    if ((rc = moe_kv_seq_create(P, max_ctx, out)) < 0) {
        moe_kv_pool_free(P);
        return rc;
    }
    (*out)->own_pool = true;
    return 0;
}

void moe_kv_free(struct moe_kv *kv)
{
    if (!kv)
        return;
    if (kv->blk && kv->win && kv->n && kv->nq && kv->lo && kv->st)
        moe_kv_reset(kv);
    if (kv->own_pool)
        moe_kv_pool_free(kv->pool);
    free(kv->blk);
    free(kv->win);
    free(kv->n);
    free(kv->nq);
    free(kv->lo);
    free(kv->st);
    free(kv);
}

int32_t moe_kv_capacity(const struct moe_kv *kv)
{
    return kv->max_ctx;
}

/* ---- storing ------------------------------------------------------------------- */

static uint16_t *win_tok(const struct moe_kv *kv, int32_t l, int32_t p)
{
    const struct moe_kv_pool *P = kv->pool;
    int32_t slot = p % P->W;
    int32_t id = kv->win[(size_t)l * P->nw + slot / P->tpu];
    return (uint16_t *)(void *)(unit_ptr(P, id) + (size_t)(slot % P->tpu) * P->tok_bytes);
}

/* a window token's K and V of kv head h (V NULL with v_in_k) */
static uint16_t *win_k(const struct moe_kv *kv, int32_t l, int32_t p, int32_t h)
{
    const struct moe_kv_pool *P = kv->pool;
    size_t per = (size_t)P->Dk + (P->v_in_k ? 0 : (size_t)P->Dv);
    return win_tok(kv, l, p) + (size_t)h * per;
}

static uint16_t *win_v(const struct moe_kv *kv, int32_t l, int32_t p, int32_t h)
{
    const struct moe_kv_pool *P = kv->pool;
    return win_k(kv, l, p, h) + (P->v_in_k ? 0 : P->Dk);
}

/* Quantises tokens [b*G, b*G+G) of layer l from the window into unit id. */
static void quantise_group(struct moe_kv *kv, int32_t l, int32_t b, int32_t id)
{
    const struct moe_kv_pool *P = kv->pool;
    int32_t G = P->G, Dk = P->Dk, Dv = P->Dv, Gv = P->Gv;
    float x[MOE_KV_MAX_D > MOE_KV_MAX_G ? MOE_KV_MAX_D : MOE_KV_MAX_G];
    for (int32_t h = 0; h < P->Hk; h++) {
        uint8_t *K = unit_ptr(P, id) + (size_t)h * (P->kh + P->vh), *V = K + P->kh;
        if (P->kb < 16) {
            size_t row = (size_t)G * P->kb / 8;
            uint16_t *sc = (uint16_t *)(void *)(K + (size_t)Dk * row), *mn = sc + Dk;
            for (int32_t c = 0; c < Dk; c++) { /* per channel over the G tokens */
                for (int32_t t = 0; t < G; t++)
                    x[t] = moe_f16_to_f32(win_k(kv, l, b * G + t, h)[c]);
                moe_kv_quant_row(x, G, P->kb, K + c * row, &sc[c], &mn[c]);
            }
        } else {
            for (int32_t t = 0; t < G; t++)
                memcpy(K + (size_t)t * Dk * 2, win_k(kv, l, b * G + t, h), (size_t)Dk * 2);
        }
        if (P->v_in_k)
            continue;
        if (P->vb < 16) {
            size_t row = (size_t)Dv * P->vb / 8, grow = (size_t)Gv * P->vb / 8;
            int32_t ng = Dv / Gv;
            uint16_t *sm = (uint16_t *)(void *)(V + (size_t)G * row);
            for (int32_t t = 0; t < G; t++) { /* per token over groups of Gv channels */
                const uint16_t *src = win_v(kv, l, b * G + t, h);
                for (int32_t g = 0; g < ng; g++) {
                    for (int32_t i = 0; i < Gv; i++)
                        x[i] = moe_f16_to_f32(src[g * Gv + i]);
                    uint16_t *o = sm + ((size_t)t * ng + g) * 2;
                    moe_kv_quant_row(x, Gv, P->vb, V + t * row + g * grow, &o[0], &o[1]);
                }
            }
        } else {
            for (int32_t t = 0; t < G; t++)
                memcpy(V + (size_t)t * Dv * 2, win_v(kv, l, b * G + t, h), (size_t)Dv * 2);
        }
    }
}

static void put_row(uint8_t *dst, const float *src, int32_t D, int32_t esz)
{
    if (esz == 4) {
        memcpy(dst, src, (size_t)D * 4);
    } else {
        uint16_t *d16 = (uint16_t *)(void *)dst;
        for (int32_t c = 0; c < D; c++)
            d16[c] = moe_f32_to_f16(src[c]);
    }
}

int moe_kv_store(struct moe_kv *kv, int32_t l, int32_t pos, const float *k, const float *v)
{
    struct moe_kv_pool *P = kv->pool;
    int32_t Dk = P->Dk, Dv = P->Dv, G = P->G;
    if (l < 0 || l >= P->L || pos < 0)
        return moe_err(-EINVAL, "kv store: layer %d position %d out of range", l, pos);
    if (pos >= kv->max_ctx)
        return moe_err(-ENOSPC, "context full: position %d is past the %d-token cache", pos,
                       kv->max_ctx);
    if (pos > kv->n[l])
        return moe_err(-EINVAL, "kv store: position %d leaves a gap after %d tokens", pos,
                       kv->n[l]);
    if (P->rec[l])
        return moe_err(-EINVAL, "kv store: layer %d is recurrent: it keeps a state, no tokens", l);
    if (pos == 0 && kv->lo[l] > 0) { /* starting over: the layer's blocks are free again */
        for (int32_t b = 0; b < kv->nb; b++)
            unit_give_promised(kv, &kv->blk[(size_t)l * kv->nb + b]);
        kv->lo[l] = kv->nq[l] = 0;
    }
    if (pos < kv->lo[l])
        return moe_err(-EINVAL, "kv store: cannot go back to position %d: layer %d's window "
                       "gave its blocks back", pos, l);
    if (pos < kv->nq[l]) { /* going back into quantised tokens: only to a group's start */
        if (pos % G)
            return moe_err(-EINVAL, "kv store: cannot go back to position %d inside a "
                           "quantised group", pos);
        kv->nq[l] = pos;
    }
    kv->n[l] = pos;
    if (P->direct) {
        int32_t *slot = &kv->blk[(size_t)l * kv->nb + pos / G];
        if (unit_own(kv, slot) < 0) /* a shared block: write into a copy */
            return moe_err(-ENOSPC, "KV pool full: no free block for position %d", pos);
        if (*slot < 0) {
            if (can_take(kv) < 1)
                return moe_err(-ENOSPC, "KV pool full: no free block for position %d", pos);
            *slot = unit_take(kv);
        }
        uint8_t *u = unit_ptr(P, *slot);
        size_t t = (size_t)(pos % G);
        for (int32_t h = 0; h < P->Hk; h++) {
            uint8_t *K = u + (size_t)h * (P->kh + P->vh), *V = K + P->kh;
            put_row(K + t * Dk * P->esz_k, k + (size_t)h * Dk, Dk, P->esz_k);
            if (!P->v_in_k)
                put_row(V + t * Dv * P->esz_v, v + (size_t)h * Dv, Dv, P->esz_v);
        }
        kv->n[l] = pos + 1;
        return 0;
    }
    /* KIVI: into the window; a group that leaves it is quantised */
    int32_t *wslot = &kv->win[(size_t)l * P->nw + (pos % P->W) / P->tpu];
    bool quant = pos + 1 - kv->nq[l] >= P->R + G;
    int32_t *bslot = quant ? &kv->blk[(size_t)l * kv->nb + kv->nq[l] / G] : NULL;
    if (bslot && *bslot >= 0 && P->refs[*bslot] > 1) /* shared: requantise into our own */
        unit_give(kv, bslot);
    int need = (*wslot < 0) + (quant && *bslot < 0);
    if (can_take(kv) < need)
        return moe_err(-ENOSPC, "KV pool full: no free block for position %d", pos);
    if (*wslot < 0)
        *wslot = unit_take(kv);
    for (int32_t h = 0; h < P->Hk; h++) {
        uint16_t *wk = win_k(kv, l, pos, h), *wv = win_v(kv, l, pos, h);
        for (int32_t c = 0; c < Dk; c++)
            wk[c] = moe_f32_to_f16(k[(size_t)h * Dk + c]);
        for (int32_t c = 0; !P->v_in_k && c < Dv; c++)
            wv[c] = moe_f32_to_f16(v[(size_t)h * Dv + c]);
    }
    if (quant) {
        if (*bslot < 0)
            *bslot = unit_take(kv);
        quantise_group(kv, l, kv->nq[l] / G, *bslot);
        kv->nq[l] += G;
    }
    kv->n[l] = pos + 1;
    return 0;
}

/* ---- attention ----------------------------------------------------------------- */

struct attn_task {
    struct moe_kv *const *kvs;
    const int32_t *pos;
    int32_t layer, n;
    const struct moe_kv_attn *a;
    const float *q;
    float *out;
    float *scores;
    size_t scores_stride;
    const struct moe_kv_ops *ops;
};

/* values of tokens [t0, t0+cnt) of a block (kv head offset hoff) with
 * weights p[0..cnt), added into o [Dv] */
static void block_values(const struct moe_kv_pool *P, const struct moe_kv_ops *K,
                         const uint8_t *unit, size_t hoff, const float *p, int32_t t0,
                         int32_t cnt, float *o)
{
    int32_t Dk = P->Dk, Dv = P->Dv, G = P->G;
    const uint8_t *Kb = unit + hoff, *Vb = Kb + P->kh;
    if (P->v_in_k) { /* the keys' first Dv channels */
        if (P->direct && P->esz_k == 4) {
            for (int32_t t = 0; t < cnt; t++)
                moe_vec_axpy_f32(o, p[t], (const float *)(const void *)Kb + (size_t)(t0 + t) * Dk,
                                 Dv);
        } else if (P->kb < 16) {
            size_t row = (size_t)G * P->kb / 8;
            const uint16_t *s = (const uint16_t *)(const void *)(Kb + (size_t)Dk * row);
            float pp[MOE_KV_MAX_G] = {0};
            memcpy(pp + t0, p, (size_t)cnt * sizeof(float));
            K->k_accum(P->kb, G, Dv, Kb, s, s + Dk, pp, G, o);
        } else {
            for (int32_t t = 0; t < cnt; t++)
                K->axpy_f16(o, p[t], (const uint16_t *)(const void *)Kb + (size_t)(t0 + t) * Dk,
                            Dv);
        }
        return;
    }
    if (P->direct && P->esz_v == 4) {
        for (int32_t t = 0; t < cnt; t++)
            moe_vec_axpy_f32(o, p[t], (const float *)(const void *)Vb + (size_t)(t0 + t) * Dv, Dv);
    } else if (P->vb < 16) {
        size_t row = (size_t)Dv * P->vb / 8;
        const uint16_t *sm = (const uint16_t *)(const void *)(Vb + (size_t)G * row);
        size_t ng = (size_t)(Dv / P->Gv);
        K->v_accum(P->vb, P->Gv, Dv, Vb + (size_t)t0 * row, sm + (size_t)t0 * ng * 2, p, cnt, o);
    } else {
        for (int32_t t = 0; t < cnt; t++)
            K->axpy_f16(o, p[t], (const uint16_t *)(const void *)Vb + (size_t)(t0 + t) * Dv, Dv);
    }
}

/* Scores and softmax weights of one query head h (kv head g) over positions
 * [first, len) of kv's layer, then out [Dv]. sc is indexed by position. */
static void attn_one(const struct attn_task *a, const struct moe_kv *kv, int32_t len,
                     const float *q, int32_t h, int32_t g, float *sc, float *o)
{
    const struct moe_kv_pool *P = kv->pool;
    const struct moe_kv_ops *K = a->ops;
    int32_t Dk = P->Dk, Dv = P->Dv, G = P->G, l = a->layer;
    float scale = a->a->scale;
    int32_t win = P->window[l];
    int32_t first = win > 0 ? MOE_MAX(0, len - win) : 0;
    const int32_t *blk = kv->blk + (size_t)l * kv->nb;
    size_t hoff = (size_t)g * (P->kh + P->vh);
    int32_t nq = P->direct ? len : MOE_MIN(kv->nq[l], len); /* tokens read from blocks */
    float qs[MOE_KV_MAX_D], acc[MOE_KV_MAX_G];

    bool exact = P->direct && P->esz_k == 4 && (P->v_in_k || P->esz_v == 4);
    if (P->direct && P->esz_k == 4) { /* fp32: exactly the old contiguous cache's arithmetic */
        for (int32_t p = first; p < nq; p++) {
            const float *Kb = (const float *)(const void *)(unit_ptr(P, blk[p / G]) + hoff);
            sc[p] = moe_vec_dot_f32(q, Kb + (size_t)(p % G) * Dk, Dk) * scale;
        }
    } else {
        for (int32_t c = 0; c < Dk; c++)
            qs[c] = q[c] * scale;
        for (int32_t b = first / G; b * G < nq; b++) {
            const uint8_t *Kb = unit_ptr(P, blk[b]) + hoff;
            int32_t t0 = MOE_MAX(first - b * G, 0), cnt = MOE_MIN(G, nq - b * G);
            if (P->kb < 16) {
                size_t row = (size_t)G * P->kb / 8;
                const uint16_t *s = (const uint16_t *)(const void *)(Kb + (size_t)Dk * row);
                K->k_scores(P->kb, G, Dk, Kb, s, s + Dk, qs, acc);
                memcpy(sc + b * G + t0, acc + t0, (size_t)(cnt - t0) * sizeof(float));
            } else {
                for (int32_t t = t0; t < cnt; t++)
                    sc[b * G + t] =
                        K->dot_f16(qs, (const uint16_t *)(const void *)Kb + (size_t)t * Dk, Dk);
            }
        }
        for (int32_t p = MOE_MAX(nq, first); p < len; p++) /* the fp16 window */
            sc[p] = K->dot_f16(qs, win_k(kv, l, p, g), Dk);
    }
    float mx = a->a->sinks ? a->a->sinks[h] : -INFINITY;
    for (int32_t p = first; p < len; p++)
        mx = sc[p] > mx ? sc[p] : mx;
    double sum = a->a->sinks ? exp((double)a->a->sinks[h] - mx) : 0.0;
    for (int32_t p = first; p < len; p++) {
        sc[p] = expf(sc[p] - mx);
        sum += sc[p];
    }
    float inv = (float)(1.0 / sum);
    memset(o, 0, (size_t)Dv * sizeof(float));
    if (!exact)
        for (int32_t p = first; p < len; p++)
            sc[p] *= inv;
    for (int32_t b = first / G; b * G < nq; b++) {
        int32_t t0 = MOE_MAX(first - b * G, 0), cnt = MOE_MIN(G, nq - b * G);
        if (exact) { /* weights scaled as they are used, as the contiguous cache did */
            float pw[MOE_KV_MAX_G];
            for (int32_t t = t0; t < cnt; t++)
                pw[t - t0] = sc[b * G + t] * inv;
            block_values(P, K, unit_ptr(P, blk[b]), hoff, pw, t0, cnt - t0, o);
        } else {
            block_values(P, K, unit_ptr(P, blk[b]), hoff, sc + b * G + t0, t0, cnt - t0, o);
        }
    }
    for (int32_t p = MOE_MAX(nq, first); p < len; p++)
        K->axpy_f16(o, sc[p], win_v(kv, l, p, g), Dv);
}

static void attn_worker(void *arg, int ith, int nth)
{
    struct attn_task *a = arg;
    float *sc = a->scores + (size_t)ith * a->scores_stride;
    int32_t nh = a->a->n_heads, jobs = a->n * nh;
    for (int32_t job = ith; job < jobs; job += nth) {
        int32_t t = job / nh, h = job % nh;
        const struct moe_kv *kv = a->kvs[t];
        const struct moe_kv_pool *P = kv->pool;
        int32_t g = h / (nh / P->Hk);
        const float *q = a->q + ((size_t)t * nh + h) * P->Dk;
        float *o = a->out + ((size_t)t * nh + h) * P->Dv;
        attn_one(a, kv, a->pos[t] + 1, q, h, g, sc, o);
    }
}

void moe_kv_attention(struct moe_pool *pool, struct moe_kv *const *kvs, const int32_t *pos,
                      int32_t n, int32_t layer, const struct moe_kv_attn *a, const float *q,
                      float *out, float *scores, size_t scores_stride)
{
    struct attn_task t = {kvs, pos, layer, n, a, q, out, scores, scores_stride, ops()};
    moe_pool_run(pool, attn_worker, &t);
    for (int32_t i = 0; i < n; i++)
        if (i == 0 || kvs[i] != kvs[i - 1])
            window_trim(kvs[i], layer);
}

/* ---- recurrent layers' states ---------------------------------------------------- */

size_t moe_kv_pool_state_bytes(const struct moe_kv_pool *P)
{
    int64_t n = 0;
    for (int32_t l = 0; l < P->L; l++)
        n += P->rec[l] ? P->su : 0;
    return (size_t)n * P->unit_bytes;
}

int moe_kv_state_begin(struct moe_kv *kv, int32_t l, int32_t pos)
{
    struct moe_kv_pool *P = kv->pool;
    if (l < 0 || l >= P->L || !P->rec[l])
        return moe_err(-EINVAL, "kv state: layer %d is not recurrent", l);
    if (pos >= kv->max_ctx)
        return moe_err(-ENOSPC, "context full: position %d is past the %d-token cache", pos,
                       kv->max_ctx);
    if (pos != 0 && pos != kv->n[l])
        return moe_err(-EINVAL, "kv state: layer %d has absorbed %d tokens: a recurrent state "
                       "cannot continue at position %d", l, kv->n[l], pos);
    int32_t *ids = kv->st + (size_t)l * P->su;
    if (pos == 0) {
        int64_t missing = 0;
        for (int32_t u = 0; u < P->su; u++)
            missing += ids[u] < 0;
        if (missing > can_take(kv))
            return moe_err(-ENOSPC, "KV pool full: layer %d's recurrent state needs %lld more "
                           "blocks, %lld are free", l, (long long)missing,
                           (long long)can_take(kv));
        for (int32_t u = 0; u < P->su; u++) {
            if (ids[u] < 0)
                ids[u] = unit_take(kv);
            memset(unit_ptr(P, ids[u]), 0, P->unit_bytes);
        }
        kv->n[l] = 0;
    }
    return 0;
}

void moe_kv_state_end(struct moe_kv *kv, int32_t l, int32_t n_tokens)
{
    kv->n[l] = n_tokens;
}

void *moe_kv_state_row(const struct moe_kv *kv, int32_t l, int32_t r)
{
    const struct moe_kv_pool *P = kv->pool;
    int32_t id = kv->st[(size_t)l * P->su + (size_t)(r / P->rpu)];
    return unit_ptr(P, id) + (size_t)(r % P->rpu) * P->row_bytes;
}

int moe_kv_state_bits(const struct moe_kv *kv)
{
    return kv->pool->sbits;
}

/* ---- forks ---------------------------------------------------------------------- */

int moe_kv_fork(struct moe_kv *dst, const struct moe_kv *src)
{
    struct moe_kv_pool *P = src->pool;
    if (dst->pool != P || dst->nb < src->nb)
        return moe_err(-EINVAL, "kv fork: another pool or a shorter context");
    for (int32_t l = 0; l < P->L; l++)
        if (P->window[l] > 0)
            return moe_err(-ENOTSUP, "kv fork: window layers give blocks back as they go");
    moe_kv_reset(dst);
    /* what is copied: recurrent states, the partial block, the fp16 window */
    int64_t copies = 0;
    for (int32_t l = 0; l < P->L; l++) {
        int32_t full = (P->direct ? src->n[l] : src->nq[l]) / P->G;
        for (int32_t u = 0; P->rec[l] && u < P->su; u++)
            copies += src->st[(size_t)l * P->su + u] >= 0;
        for (int32_t b = full; !P->rec[l] && b < src->nb; b++)
            copies += src->blk[(size_t)l * src->nb + b] >= 0;
        for (int32_t w = 0; !P->direct && w < P->nw; w++)
            copies += src->win[(size_t)l * P->nw + w] >= 0;
    }
    if (copies > can_take(dst))
        return moe_err(-ENOSPC, "KV pool full: a fork needs %lld blocks", (long long)copies);
    for (int32_t l = 0; l < P->L; l++) {
        int32_t full = (P->direct ? src->n[l] : src->nq[l]) / P->G;
        for (int32_t u = 0; P->rec[l] && u < P->su; u++) {
            int32_t from = src->st[(size_t)l * P->su + u];
            if (from >= 0)
                dst->st[(size_t)l * P->su + u] = unit_copy(dst, from);
        }
        for (int32_t b = 0; !P->rec[l] && b < src->nb; b++) {
            int32_t from = src->blk[(size_t)l * src->nb + b];
            if (from < 0)
                continue;
            if (b < full) { /* filled for good: shared */
                P->refs[from]++;
                dst->held++;
                dst->blk[(size_t)l * dst->nb + b] = from;
            } else {
                dst->blk[(size_t)l * dst->nb + b] = unit_copy(dst, from);
            }
        }
        for (int32_t w = 0; !P->direct && w < P->nw; w++) {
            int32_t from = src->win[(size_t)l * P->nw + w];
            if (from >= 0)
                dst->win[(size_t)l * P->nw + w] = unit_copy(dst, from);
        }
        dst->n[l] = src->n[l];
        dst->nq[l] = src->nq[l];
        dst->lo[l] = src->lo[l];
    }
    return 0;
}

int moe_kv_truncate(struct moe_kv *kv, int32_t n)
{
    struct moe_kv_pool *P = kv->pool;
    if (!P->direct)
        return moe_err(-ENOTSUP, "kv truncate: a quantised cache keeps its newest tokens in "
                       "fp16 (they would come back quantised)");
    for (int32_t l = 0; l < P->L; l++) {
        if (P->rec[l] || kv->n[l] <= n)
            continue;
        int32_t keep = (n + P->G - 1) / P->G; /* blocks still holding positions < n */
        for (int32_t b = keep; b < kv->nb; b++)
            unit_give(kv, &kv->blk[(size_t)l * kv->nb + b]);
        int32_t *last = keep ? &kv->blk[(size_t)l * kv->nb + keep - 1] : NULL;
        if (n % P->G && last && unit_own(kv, last) < 0) /* to be written: ours */
            return moe_err(-ENOSPC, "KV pool full: no block to copy");
        kv->n[l] = n;
    }
    return 0;
}
