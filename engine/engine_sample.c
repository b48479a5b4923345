/* Token sampling: penalties, then greedy or top-k -> top-p -> min-p ->
 * temperature -> softmax -> one seeded draw.
 *
 * Semantics, where implementations differ:
 * - Penalties look at the last penalty_last_n tokens of the history (0 = all
 *   of it). Repetition (CTRL / llama.cpp): once per distinct token, a positive
 *   logit is divided by the penalty, a negative one multiplied. Presence and
 *   frequency (OpenAI): logit -= count * frequency + (count > 0) * presence.
 *   Tokens in the history outside [0, vocab) are ignored.
 * - top-p and min-p judge the distribution at temperature 1, after top-k
 *   (renormalised over the top k), as llama.cpp's default sampler chain does;
 *   temperature only shapes the final draw among the survivors.
 * - Ties in logit are ranked by lower token id, so results never depend on
 *   memory layout or sort stability.
 * - NaN logits count as -inf. A +inf logit wins outright (lowest such id).
 *   When no token has a logit above -inf, sampling fails with -EINVAL.
 *   A token more than 87 below the top (after temperature) weighs 0: e^-87
 *   is about float's smallest normal number.
 *
 * Random numbers: xoshiro256** (Blackman & Vigna, 2018), its 256-bit state
 * filled from `seed` by splitmix64 as its authors recommend. Every
 * non-greedy call takes exactly one 64-bit output (top 53 bits -> a double
 * in [0, 1)), whatever the filters left, so the same seed and the same logits
 * give the same token sequence. seed 0 is an ordinary seed. Greedy calls
 * (temperature 0) take no random numbers.
 *
 * Speed (vocabularies up to ~152k): no allocation per token, every scratch
 * buffer is sized at create. exp() is a short polynomial, 4 lanes at a time
 * with SSE2 (baseline x86-64; the scalar fallback does the same arithmetic);
 * sums are in double, per lane then per block of weights, and the draw walks
 * block sums before weights. top-k keeps a heap of k; top-p alone bins the
 * tokens near the top by logit and sorts only the few in the bin the cut
 * falls in. */
#include "engine/engine.h"

#include "common/common.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

#if defined(__SSE2__) && !defined(MOE_NO_SIMD)
#include <emmintrin.h>
#define SAMPLE_SSE2 1
#endif

#define BLOCK 256         /* weights per block sum */
#define TOPP_BINS 2048
#define TOPP_SORT_MAX 16  /* a bin this small is sorted, not binned again */
#define EXP_MIN (-87.0f)  /* below: weight 0 (2^-126 is the smallest normal) */

struct cand_ent {
    float l;
    int32_t id;
};

struct moe_sampler {
    struct moe_sampling p;
    int32_t vocab;
    int32_t top_k;   /* 0 when off or >= vocab */
    bool penalize;
    float log_min_p; /* -inf when min-p is off */
    uint64_t rng[4]; /* xoshiro256** state */

    /* penalties */
    uint32_t *count; /* [vocab], all zero between calls */
    int32_t *seen;   /* distinct tokens in the window, [MIN(vocab, window)] */

    /* weights and candidates */
    float *w;        /* [top_k or vocab] by candidate position */
    double *blk;     /* [w's size / BLOCK + 1] block sums of w */
    int32_t *cand;   /* [top_k or vocab] candidate token ids (top-k, top-p) */
    struct cand_ent *heap; /* [top_k] */

    /* top-p over the whole vocabulary */
    float *e;        /* [vocab] exp(logit - max) by token id */
    int32_t *tmp;    /* [vocab] tokens of the bin being refined */
    uint32_t bin_n[TOPP_BINS];
    double bin_mass[TOPP_BINS];
};

/* ---- random numbers ------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro256ss(uint64_t s[4])
{
    uint64_t r = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

static double rng_uniform(uint64_t s[4]) /* [0, 1) */
{
    return (double)(xoshiro256ss(s) >> 11) * 0x1.0p-53;
}

/* ---- exp(x) for x <= 0 ------------------------------------------------------
 * x = n ln2 + r, |r| <= ln2 / 2; e^r by its Taylor series to r^7 (error
 * < 6e-9 relative, under float's 6e-8); 2^n put into the exponent bits.
 * n is rounded by adding 1.5 * 2^23. ln2 is split so that n * LN2_HI is
 * exact. x < EXP_MIN or NaN gives 0. The SSE2 version performs the same
 * operations in the same order, so both give the same bits. */
#define LOG2E 1.44269504f
#define LN2_HI 0.693359375f
#define LN2_LO (-2.12194440e-4f)
#define ROUND_MAGIC 0x1.8p23f
#define ROUND_MAGIC_BITS 0x4b400000

static inline float exp_neg(float x)
{
    if (!(x >= EXP_MIN))
        return 0.0f;
    float t = x * LOG2E + ROUND_MAGIC;
    float n = t - ROUND_MAGIC;
    float r = x - n * LN2_HI;
    r = r - n * LN2_LO;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t ti, si;
    float s;
    memcpy(&ti, &t, 4);
    si = (ti - ROUND_MAGIC_BITS + 127) << 23;
    memcpy(&s, &si, 4);
    return p * s;
}

#ifdef SAMPLE_SSE2
static inline __m128 exp_neg4(__m128 x)
{
    __m128 keep = _mm_cmpge_ps(x, _mm_set1_ps(EXP_MIN)); /* NaN: false */
    x = _mm_and_ps(x, keep);                             /* dropped lanes: 0 */
    __m128 t = _mm_add_ps(_mm_mul_ps(x, _mm_set1_ps(LOG2E)), _mm_set1_ps(ROUND_MAGIC));
    __m128 n = _mm_sub_ps(t, _mm_set1_ps(ROUND_MAGIC));
    __m128 r = _mm_sub_ps(x, _mm_mul_ps(n, _mm_set1_ps(LN2_HI)));
    r = _mm_sub_ps(r, _mm_mul_ps(n, _mm_set1_ps(LN2_LO)));
    __m128 p = _mm_set1_ps(1.0f / 5040);
    p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.0f / 720));
    p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.0f / 120));
    p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.0f / 24));
    p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.0f / 6));
    p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(0.5f));
    p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.0f));
    p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.0f));
    __m128i si = _mm_sub_epi32(_mm_castps_si128(t), _mm_set1_epi32(ROUND_MAGIC_BITS - 127));
    __m128 s = _mm_castsi128_ps(_mm_slli_epi32(si, 23));
    return _mm_and_ps(_mm_mul_ps(p, s), keep);
}
#endif

/* One block of weights: w[i] = exp((l[i] - m) / t) for i in [i0, i1), 0
 * where l[i] - m < lmp (min-p) or l[i] is NaN. Returns their sum, in
 * double: four running sums (the SSE2 lanes), combined in a fixed order, so
 * the scalar build gives the same bits. */
static double weights_block(const float *l, int32_t i0, int32_t i1, float m, float t, float lmp,
                            float *w)
{
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    int32_t i = i0;
#ifdef SAMPLE_SSE2
    const __m128 vm = _mm_set1_ps(m), vt = _mm_set1_ps(t), vlmp = _mm_set1_ps(lmp);
    __m128d s01 = _mm_setzero_pd(), s23 = _mm_setzero_pd();
    for (; i + 4 <= i1; i += 4) {
        __m128 d = _mm_sub_ps(_mm_loadu_ps(l + i), vm);
        __m128 keep = _mm_cmpge_ps(d, vlmp);
        __m128 x = t == 1.0f ? d : _mm_div_ps(d, vt);
        __m128 v = _mm_and_ps(exp_neg4(x), keep);
        _mm_storeu_ps(w + i, v);
        s01 = _mm_add_pd(s01, _mm_cvtps_pd(v));
        s23 = _mm_add_pd(s23, _mm_cvtps_pd(_mm_movehl_ps(v, v)));
    }
    _mm_storeu_pd(s, s01);
    _mm_storeu_pd(s + 2, s23);
#endif
    for (; i < i1; i++) {
        float d = l[i] - m;
        float x = t == 1.0f ? d : d / t;
        w[i] = d >= lmp ? exp_neg(x) : 0.0f;
        s[(i - i0) & 3] += w[i];
    }
    return (s[0] + s[2]) + (s[1] + s[3]);
}

/* Weights of the n logits l (see weights_block) into w (which may be l),
 * block sums into blk; returns the total. */
static double weights(const float *l, int32_t n, float m, float t, float lmp, float *w,
                      double *blk)
{
    double z = 0.0;
    for (int32_t b = 0; b * BLOCK < n; b++) {
        blk[b] = weights_block(l, b * BLOCK, MOE_MIN(n, b * BLOCK + BLOCK), m, t, lmp, w);
        z += blk[b];
    }
    return z;
}

/* The position drawn from weights w[0..n) with block sums blk (total z),
 * u in [0, 1). Where rounding runs off the end of a block or of the whole,
 * the last positive weight before it is taken. */
static int32_t draw_weighted(const float *w, int32_t n, const double *blk, double z, double u)
{
    const double r = u * z;
    double acc = 0.0;
    int32_t b = 0, nb = (n + BLOCK - 1) / BLOCK;
    for (; b < nb - 1; b++) {
        if (acc + blk[b] > r)
            break;
        acc += blk[b];
    }
    int32_t pick = -1;
    for (int32_t i = b * BLOCK; i < n; i++) {
        if (w[i] > 0.0f)
            pick = i;
        acc += w[i];
        if (acc > r && pick >= 0)
            break;
    }
    for (int32_t i = b * BLOCK - 1; pick < 0 && i >= 0; i--) /* only if all 0 from b on */
        if (w[i] > 0.0f)
            pick = i;
    return pick < 0 ? 0 : pick;
}

/* ---- parameters ------------------------------------------------------------ */

void moe_sampling_defaults(struct moe_sampling *s)
{
    *s = (struct moe_sampling){
        .temperature = 1.0f,
        .top_k = 0,
        .top_p = 1.0f,
        .min_p = 0.0f,
        .repetition_penalty = 1.0f,
        .presence_penalty = 0.0f,
        .frequency_penalty = 0.0f,
        .penalty_last_n = 64,
        .seed = 0, /* a seed like any other; callers set one per request */
    };
}

static int check_params(const struct moe_sampling *s, int32_t vocab)
{
    if (vocab <= 0)
        return moe_err(-EINVAL, "vocab must be > 0, got %d", (int)vocab);
    if (!(s->temperature >= 0.0f) || isinf(s->temperature))
        return moe_err(-EINVAL, "temperature must be a finite number >= 0, got %g",
                       (double)s->temperature);
    if (s->top_k < 0)
        return moe_err(-EINVAL, "top_k must be >= 0 (0 = off), got %d", s->top_k);
    if (!(s->top_p > 0.0f && s->top_p <= 1.0f))
        return moe_err(-EINVAL, "top_p must be in (0, 1], got %g", (double)s->top_p);
    if (!(s->min_p >= 0.0f && s->min_p <= 1.0f))
        return moe_err(-EINVAL, "min_p must be in [0, 1], got %g", (double)s->min_p);
    if (!(s->repetition_penalty > 0.0f) || isinf(s->repetition_penalty))
        return moe_err(-EINVAL, "repetition_penalty must be a finite number > 0, got %g",
                       (double)s->repetition_penalty);
    if (!isfinite(s->presence_penalty))
        return moe_err(-EINVAL, "presence_penalty must be finite, got %g",
                       (double)s->presence_penalty);
    if (!isfinite(s->frequency_penalty))
        return moe_err(-EINVAL, "frequency_penalty must be finite, got %g",
                       (double)s->frequency_penalty);
    if (s->penalty_last_n < 0)
        return moe_err(-EINVAL, "penalty_last_n must be >= 0 (0 = whole history), got %d",
                       s->penalty_last_n);
    return 0;
}

int moe_sampler_create(const struct moe_sampling *s, int32_t vocab, struct moe_sampler **out)
{
    struct moe_sampler *smp = NULL;
    int rc;

    *out = NULL;
    if (!s)
        return moe_err(-EINVAL, "sampling parameters missing");
    rc = check_params(s, vocab);
    if (rc)
        return rc;

    smp = calloc(1, sizeof(*smp));
    if (!smp)
        goto oom;
    smp->p = *s;
    smp->vocab = vocab;
    smp->top_k = s->top_k < vocab ? s->top_k : 0;
    smp->penalize = s->repetition_penalty != 1.0f || s->presence_penalty != 0.0f ||
                    s->frequency_penalty != 0.0f;
    smp->log_min_p = s->min_p > 0.0f ? logf(s->min_p) : -INFINITY;

    uint64_t x = s->seed;
    for (int i = 0; i < 4; i++)
        smp->rng[i] = splitmix64(&x);

    if (smp->penalize) {
        size_t seen_cap = (size_t)vocab;
        if (s->penalty_last_n > 0 && (size_t)s->penalty_last_n < seen_cap)
            seen_cap = (size_t)s->penalty_last_n;
        smp->count = calloc((size_t)vocab, sizeof(*smp->count));
        smp->seen = malloc(seen_cap * sizeof(*smp->seen));
        if (!smp->count || !smp->seen)
            goto oom;
    }
    if (s->temperature > 0.0f) {
        size_t n = smp->top_k ? (size_t)smp->top_k : (size_t)vocab;
        smp->w = malloc(n * sizeof(*smp->w));
        smp->blk = malloc((n / BLOCK + 1) * sizeof(*smp->blk));
        if (!smp->w || !smp->blk)
            goto oom;
        if (smp->top_k) {
            smp->cand = malloc(n * sizeof(*smp->cand));
            smp->heap = malloc(n * sizeof(*smp->heap));
            if (!smp->cand || !smp->heap)
                goto oom;
        } else if (s->top_p < 1.0f) {
            smp->cand = malloc(n * sizeof(*smp->cand));
            smp->e = malloc((size_t)vocab * sizeof(*smp->e));
            smp->tmp = malloc((size_t)vocab * sizeof(*smp->tmp));
            if (!smp->cand || !smp->e || !smp->tmp)
                goto oom;
        }
    }
    *out = smp;
    return 0;

oom:
    moe_sampler_free(smp);
    return moe_err(-ENOMEM, "sampler for vocab %d: out of memory", (int)vocab);
}

void moe_sampler_free(struct moe_sampler *smp)
{
    if (!smp)
        return;
    free(smp->count);
    free(smp->seen);
    free(smp->w);
    free(smp->blk);
    free(smp->cand);
    free(smp->heap);
    free(smp->e);
    free(smp->tmp);
    free(smp);
}

/* ---- penalties ------------------------------------------------------------- */

static void apply_penalties(struct moe_sampler *smp, float *logits, const int32_t *history,
                            size_t n_history)
{
    size_t win = n_history;
    if (smp->p.penalty_last_n > 0 && (size_t)smp->p.penalty_last_n < win)
        win = (size_t)smp->p.penalty_last_n;
    const int32_t *h = history + (n_history - win);
    size_t n_seen = 0;

    for (size_t i = 0; i < win; i++) {
        int32_t t = h[i];
        if (t < 0 || t >= smp->vocab)
            continue;
        if (smp->count[t]++ == 0)
            smp->seen[n_seen++] = t; /* n_seen <= MIN(vocab, window) */
    }

    const float rep = smp->p.repetition_penalty;
    const float pres = smp->p.presence_penalty;
    const float freq = smp->p.frequency_penalty;
    for (size_t i = 0; i < n_seen; i++) {
        int32_t t = smp->seen[i];
        float l = logits[t];
        if (rep != 1.0f)
            l = l > 0.0f ? l / rep : l * rep;
        l -= (float)smp->count[t] * freq + pres;
        logits[t] = l;
        smp->count[t] = 0;
    }
}

/* ---- selection ------------------------------------------------------------- */

/* a ranks before b: higher logit, then lower id */
static inline bool ranks_before(float la, int32_t ia, float lb, int32_t ib)
{
    return la > lb || (la == lb && ia < ib);
}

static inline float clean(float l) /* NaN -> -inf */
{
    return l == l ? l : -INFINITY;
}

/* lowest id among the highest logits; -1 when none is above -inf */
static int32_t argmax(const float *logits, int32_t vocab)
{
    float m = -INFINITY;
    int32_t i = 0;
#ifdef SAMPLE_SSE2
    __m128 vm = _mm_set1_ps(-INFINITY);
    for (; i + 4 <= vocab; i += 4)
        vm = _mm_max_ps(_mm_loadu_ps(logits + i), vm); /* NaN in the first: second */
    float lanes[4];
    _mm_storeu_ps(lanes, vm);
    for (int j = 0; j < 4; j++)
        m = lanes[j] > m ? lanes[j] : m;
#endif
    for (; i < vocab; i++)
        m = logits[i] > m ? logits[i] : m;
    if (!(m > -INFINITY))
        return -1;
    i = 0;
#ifdef SAMPLE_SSE2
    for (vm = _mm_set1_ps(m); i + 4 <= vocab; i += 4) {
        int mask = _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(logits + i), vm));
        if (mask)
            return i + __builtin_ctz((unsigned)mask);
    }
#endif
    for (; i < vocab; i++)
        if (logits[i] == m)
            return i;
    return -1; /* not reached */
}

/* heap[0] is the entry ranked last (the one to evict) */
static void heap_sift_down(struct cand_ent *h, int32_t n, int32_t i)
{
    struct cand_ent x = h[i];
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && ranks_before(h[c].l, h[c].id, h[c + 1].l, h[c + 1].id))
            c++; /* the child ranked later */
        if (!ranks_before(x.l, x.id, h[c].l, h[c].id))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static inline void heap_offer(struct cand_ent *h, int32_t k, float l, int32_t id)
{
    /* Ids only grow, so an equal logit never displaces the root; NaN never
     * compares greater. */
    if (l > h[0].l) {
        h[0] = (struct cand_ent){l, id};
        heap_sift_down(h, k, 0);
    }
}

/* The k best tokens into smp->cand, best first. Returns k. */
static int32_t select_top_k(struct moe_sampler *smp, const float *logits)
{
    struct cand_ent *h = smp->heap;
    const int32_t k = smp->top_k, vocab = smp->vocab;

    for (int32_t i = 0; i < k; i++)
        h[i] = (struct cand_ent){clean(logits[i]), i};
    for (int32_t i = k / 2 - 1; i >= 0; i--)
        heap_sift_down(h, k, i);
    int32_t i = k;
#ifdef SAMPLE_SSE2
    /* most logits lose to the root: test four at a time */
    for (; i + 4 <= vocab; i += 4) {
        int mask = _mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(logits + i), _mm_set1_ps(h[0].l)));
        for (int j = 0; mask; j++, mask >>= 1)
            if (mask & 1)
                heap_offer(h, k, logits[i + j], i + j);
    }
#endif
    for (; i < vocab; i++)
        heap_offer(h, k, logits[i], i);
    /* heap sort: the last-ranked entry goes to the back each round */
    for (int32_t n = k - 1; n > 0; n--) {
        struct cand_ent t = h[0];
        h[0] = h[n];
        h[n] = t;
        heap_sift_down(h, n, 0);
    }
    for (int32_t j = 0; j < k; j++)
        smp->cand[j] = h[j].id;
    return k;
}

/* Candidates already ranked best first: keep the shortest prefix whose mass
 * reaches top_p of theirs. */
static int32_t top_p_sorted(struct moe_sampler *smp, const float *logits, int32_t n, float m)
{
    double z = 0.0;
    for (int32_t i = 0; i < n; i++) {
        smp->w[i] = exp_neg(logits[smp->cand[i]] - m);
        z += smp->w[i];
    }
    double target = (double)smp->p.top_p * z, acc = 0.0;
    int32_t kept = 0;
    while (kept < n && (kept == 0 || acc < target))
        acc += smp->w[kept++];
    return kept;
}

/* ids ranked best first: insertion sort for the short lists refinement
 * leaves; heap sort for a long one (only when binning cannot split it) */
static void sift_rank(int32_t *ids, int32_t n, int32_t i, const float *logits)
{
    int32_t x = ids[i];
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && ranks_before(logits[ids[c]], ids[c], logits[ids[c + 1]], ids[c + 1]))
            c++;
        if (!ranks_before(logits[x], x, logits[ids[c]], ids[c]))
            break;
        ids[i] = ids[c];
        i = c;
    }
    ids[i] = x;
}

static void sort_by_rank(int32_t *ids, int32_t n, const float *logits)
{
    if (n <= TOPP_SORT_MAX) {
        for (int32_t i = 1; i < n; i++) {
            int32_t x = ids[i], j = i;
            for (; j > 0 && ranks_before(logits[x], x, logits[ids[j - 1]], ids[j - 1]); j--)
                ids[j] = ids[j - 1];
            ids[j] = x;
        }
        return;
    }
    for (int32_t i = n / 2 - 1; i >= 0; i--) /* root = ranked last */
        sift_rank(ids, n, i, logits);
    for (int32_t k = n - 1; k > 0; k--) {
        int32_t t = ids[0];
        ids[0] = ids[k];
        ids[k] = t;
        sift_rank(ids, k, 0, logits);
    }
}

/* Bin of a logit: its gap below hi (the top of the range being binned),
 * scaled. Monotone (a higher logit never lands in a later bin); equal
 * logits share a bin; double, so hi - l cannot overflow. */
static inline int bin_of(float l, float hi, double scale)
{
    double g = ((double)hi - (double)l) * scale;
    return g < TOPP_BINS ? (int)g : TOPP_BINS - 1;
}

/* The ids i < n with l[i] >= thr (never a NaN) into out, in order; returns
 * how many. */
static int32_t collect_at_least(const float *l, int32_t n, float thr, int32_t *out)
{
    int32_t i = 0, k = 0;
#ifdef SAMPLE_SSE2
    const __m128 vthr = _mm_set1_ps(thr);
    for (; i + 4 <= n; i += 4) {
        int mask = _mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(l + i), vthr));
        if (!mask)
            continue;
        for (int j = 0; j < 4; j++) { /* no branch per lane: hits are random */
            out[k] = i + j;
            k += (mask >> j) & 1;
        }
    }
#endif
    for (; i < n; i++)
        if (l[i] >= thr)
            out[k++] = i;
    return k;
}

/* Histogram of list[0..n) by bin_of(., hi, scale): counts and mass. */
static void histogram(struct moe_sampler *smp, const float *logits, const int32_t *list,
                      int32_t n, float hi, double scale)
{
    memset(smp->bin_n, 0, sizeof(smp->bin_n));
    memset(smp->bin_mass, 0, sizeof(smp->bin_mass));
    for (int32_t j = 0; j < n; j++) {
        int b = bin_of(logits[list[j]], hi, scale);
        smp->bin_n[b]++;
        smp->bin_mass[b] += smp->e[list[j]];
    }
}

/* The bin where the running mass first reaches target, *before the mass of
 * the bins ahead of it; -1 if none does, unless must: then (rounding) the
 * last bin that holds anything. */
static int find_cut(const struct moe_sampler *smp, double target, bool must, double *before)
{
    double acc = 0.0;
    int last = -1;
    for (int b = 0; b < TOPP_BINS; b++) {
        if (!smp->bin_n[b])
            continue;
        if (acc + smp->bin_mass[b] >= target) {
            *before = acc;
            return b;
        }
        acc += smp->bin_mass[b];
        last = b;
    }
    if (!must || last < 0)
        return -1;
    *before = acc - smp->bin_mass[last];
    return last;
}

/* Tokens of list[0..n) in bins before cut go to cand; those in the cut bin
 * are compacted in place at the front of list (in order) and counted; *lo
 * and *hi become their lowest and highest logits. No branch on the side of
 * the cut: it is random. */
static int32_t split(struct moe_sampler *smp, const float *logits, int32_t *list, int32_t n,
                     float top, double scale, int cut, int32_t *n_cand, float *lo, float *hi)
{
    int32_t k = 0, c = *n_cand;
    for (int32_t j = 0; j < n; j++) {
        int32_t i = list[j];
        int b = bin_of(logits[i], top, scale);
        smp->cand[c] = i; /* c <= j + n_cand_in < vocab */
        c += b < cut;
        list[k] = i; /* k <= j */
        k += b == cut;
    }
    *n_cand = c;
    *lo = INFINITY;
    *hi = -INFINITY;
    for (int32_t j = 0; j < k; j++) {
        float l = logits[list[j]];
        *lo = l < *lo ? l : *lo;
        *hi = l > *hi ? l : *hi;
    }
    return k;
}

/* top-p over the whole vocabulary, without sorting it. m: the (finite)
 * maximum logit. Writes the nucleus to smp->cand (in no particular but fixed
 * order) and returns its size.
 *
 * Tokens are binned by their gap below the top. At first only the tokens
 * within a window below m: if the window holds top_p of the mass, nothing
 * below it can be in the nucleus (else the window widens). Bins wholly
 * inside the nucleus are taken unsorted; the bin the cut falls in is binned
 * again over its own range, and so on until it is small or all one logit
 * (lists stay in id order, so equal logits are already ranked); then it is
 * sorted and the shortest prefix that reaches the target taken. */
static int32_t top_p_full(struct moe_sampler *smp, const float *logits, float m)
{
    static const float windows[] = {8.0f, 24.0f, -EXP_MIN + 1.0f};
    const int32_t vocab = smp->vocab;
    int32_t *list = smp->tmp;
    int32_t n_cand = 0, n = 0;
    int cut = -1;
    double before = 0.0, scale = 0.0;

    /* smp->e: exp(logit - m) by token id */
    const double z = weights(logits, vocab, m, 1.0f, -INFINITY, smp->e, smp->blk);
    double target = (double)smp->p.top_p * z; /* > 0: the max weighs 1 */

    for (size_t wi = 0; wi < MOE_ARRAY_SIZE(windows) && cut < 0; wi++) {
        bool widest = wi + 1 == MOE_ARRAY_SIZE(windows);
        n = collect_at_least(logits, vocab, m - windows[wi], list);
        scale = TOPP_BINS / (double)windows[wi];
        histogram(smp, logits, list, n, m, scale);
        cut = find_cut(smp, target, widest, &before);
    }
    float top = m, lo, hi;
    for (bool own_range = false;; own_range = true) {
        int32_t k = split(smp, logits, list, n, top, scale, cut, &n_cand, &lo, &hi);
        target -= before;
        bool stuck = own_range && k == n; /* not expected: sort it all */
        n = k;
        if (n <= TOPP_SORT_MAX || hi == lo || stuck)
            break;
        top = hi;
        scale = TOPP_BINS / ((double)hi - (double)lo);
        histogram(smp, logits, list, n, top, scale);
        cut = find_cut(smp, target, true, &before);
    }

    if (hi != lo)
        sort_by_rank(list, n, logits);
    double acc = 0.0;
    for (int32_t j = 0; j < n && (j == 0 || acc < target); j++) {
        smp->cand[n_cand++] = list[j];
        acc += smp->e[list[j]];
    }
    return n_cand;
}

/* ---- sampling ---------------------------------------------------------------- */

int32_t moe_sampler_sample(struct moe_sampler *smp, float *logits, const int32_t *history,
                           size_t n_history)
{
    if (!smp || !logits || (n_history && !history))
        return moe_err(-EINVAL, "moe_sampler_sample: missing sampler, logits or history");
    const int32_t vocab = smp->vocab;
    const float t = smp->p.temperature;

    if (smp->penalize && n_history)
        apply_penalties(smp, logits, history, n_history);

    if (t == 0.0f) {
        int32_t best = argmax(logits, vocab);
        return best >= 0 ? best : moe_err(-EINVAL, "no token has a logit above -inf");
    }

    const double u = rng_uniform(smp->rng); /* exactly one draw per call */
    int32_t n;
    float m;

    if (smp->top_k) {
        n = select_top_k(smp, logits);
        m = logits[smp->cand[0]];
        if (!(m > -INFINITY))
            return moe_err(-EINVAL, "no token has a logit above -inf");
        if (m == INFINITY)
            return smp->cand[0];
        if (smp->p.top_p < 1.0f)
            n = top_p_sorted(smp, logits, n, m);
    } else {
        int32_t best = argmax(logits, vocab);
        if (best < 0)
            return moe_err(-EINVAL, "no token has a logit above -inf");
        m = logits[best];
        if (m == INFINITY)
            return best;
        if (smp->p.top_p >= 1.0f) {
            /* every token is a candidate: min-p and temperature in one pass */
            double z = weights(logits, vocab, m, t, smp->log_min_p, smp->w, smp->blk);
            return draw_weighted(smp->w, vocab, smp->blk, z, u);
        }
        n = top_p_full(smp, logits, m);
    }

    /* min-p (the max has gap 0 and always stays), then temperature over
     * the survivors' logits gathered into w */
    const float lmp = smp->log_min_p;
    int32_t kept = 0;
    for (int32_t j = 0; j < n; j++) {
        int32_t i = smp->cand[j];
        if (logits[i] - m >= lmp) { /* NaN compares false: dropped */
            smp->cand[kept] = i;
            smp->w[kept++] = logits[i];
        }
    }
    double z = weights(smp->w, kept, m, t, -INFINITY, smp->w, smp->blk);
    return smp->cand[draw_weighted(smp->w, kept, smp->blk, z, u)];
}
