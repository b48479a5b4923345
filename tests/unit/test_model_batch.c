/* model: a batch mixing tokens of several sequences gives each sequence the
 * logits it would get alone (continuous batching depends on this). */
#include "tests/unit/test.h"

#include <errno.h>
#include <math.h>

#include "backend/backend.h"
#include "common/common.h"
#include "kv/kv.h"
#include "model/model.h"

static const int32_t A[] = {1022, 812, 58, 10, 65, 104, 44};          /* "ROMEO:\nAh," */
static const int32_t B[] = {1022, 396, 304, 44, 528, 321, 287, 304, 266}; /* "To be, or not to be the" */
enum { NA = sizeof(A) / sizeof(A[0]), NB = sizeof(B) / sizeof(B[0]) };

static float max_abs_diff(const float *a, const float *b, int n)
{
    float d = 0;
    for (int i = 0; i < n; i++)
        d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

static void test_mixed_batch_equals_separate_sequences(void **state)
{
    (void)state;
    struct moe_model *m;
    struct moe_pool *pool;
    assert_int_equal(moe_model_open(moe_test_path("models/tiny-moe"), &m), 0);
    assert_int_equal(moe_pool_create(2, &pool), 0);
    int V = m->cfg.vocab;

    /* alone: every position's logits of each sequence */
    float *la = malloc(sizeof(float) * NA * V), *lb = malloc(sizeof(float) * NB * V);
    struct moe_session *s;
    assert_int_equal(moe_session_create(m, pool, 64, &s), 0);
    assert_int_equal(moe_session_forward(s, A, NA, la, true), 0);
    moe_session_reset(s);
    assert_int_equal(moe_session_forward(s, B, NB, lb, true), 0);
    moe_session_free(s);

    /* together: step 1 = A[0..4) and B[0..6) as prompt chunks; step 2 =
     * the rest of A as a chunk and B[6] decoding alone; step 3 = B's last two
     * tokens with nothing of A */
    struct moe_kv *ka, *kb;
    struct moe_scratch *scr;
    assert_int_equal(moe_model_kv_create(m, 64, &ka), 0);
    assert_int_equal(moe_model_kv_create(m, 64, &kb), 0);
    assert_int_equal(moe_scratch_create(&scr), 0);
    float *out = malloc(sizeof(float) * (NA + NB) * V);

    int32_t tok[16], pos[16], idx[16];
    struct moe_kv *kvs[16];
    int n = 0;
    for (int i = 0; i < 4; i++, n++) {
        tok[n] = A[i]; pos[n] = i; kvs[n] = ka; idx[n] = n;
    }
    for (int i = 0; i < 6; i++, n++) {
        tok[n] = B[i]; pos[n] = i; kvs[n] = kb; idx[n] = n;
    }
    assert_int_equal(moe_model_forward(m, pool, scr, n, tok, kvs, pos, idx, n, out), 0);
    for (int i = 0; i < 4; i++)
        assert_true(max_abs_diff(out + i * V, la + i * V, V) < 1e-4f);
    for (int i = 0; i < 6; i++)
        assert_true(max_abs_diff(out + (4 + i) * V, lb + i * V, V) < 1e-4f);

    n = 0;
    tok[n] = B[6]; pos[n] = 6; kvs[n] = kb; n++;
    for (int i = 4; i < NA; i++, n++) {
        tok[n] = A[i]; pos[n] = i; kvs[n] = ka;
    }
    int32_t want[2] = {0, n - 1}; /* B's token and A's last: logits of two rows only */
    assert_int_equal(moe_model_forward(m, pool, scr, n, tok, kvs, pos, want, 2, out), 0);
    assert_true(max_abs_diff(out, lb + 6 * V, V) < 1e-4f);
    assert_true(max_abs_diff(out + V, la + (NA - 1) * V, V) < 1e-4f);

    tok[0] = B[7]; pos[0] = 7; kvs[0] = kb;
    tok[1] = B[8]; pos[1] = 8; kvs[1] = kb;
    int32_t last = 1;
    assert_int_equal(moe_model_forward(m, pool, scr, 2, tok, kvs, pos, &last, 1, out), 0);
    assert_true(max_abs_diff(out, lb + 8 * V, V) < 1e-4f);

    free(out);
    free(la);
    free(lb);
    moe_scratch_free(scr);
    moe_model_kv_free(ka);
    moe_model_kv_free(kb);
    moe_pool_free(pool);
    moe_model_free(m);
}

/* A Gated DeltaNet hybrid (tests/data/arch/qwen3_next): a 70-token prompt
 * in two chunks (the chunked form across its 64-token boundary) batched with
 * another sequence's prompt chunk, then with its decode tokens (the
 * recurrent form): each row the logits of the sequence alone. */
static void test_hybrid_mixed_batch_equals_separate_sequences(void **state)
{
    (void)state;
    enum { LA = 70, LB = 20 };
    struct moe_model *m;
    struct moe_pool *pool;
    assert_int_equal(moe_model_open(moe_test_path("tests/data/arch/qwen3_next/v5"), &m), 0);
    assert_int_equal(moe_pool_create(2, &pool), 0);
    int V = m->cfg.vocab;
    int32_t a[LA], b[LB];
    for (int i = 0; i < LA; i++)
        a[i] = 3 + (i * 37) % 1000;
    for (int i = 0; i < LB; i++)
        b[i] = 5 + (i * 101) % 1000;
    float *la = malloc(sizeof(float) * LA * V), *lb = malloc(sizeof(float) * LB * V);
    struct moe_session *s;
    assert_int_equal(moe_session_create(m, pool, 128, &s), 0);
    assert_int_equal(moe_session_forward(s, a, LA, la, true), 0);
    moe_session_reset(s);
    assert_int_equal(moe_session_forward(s, b, LB, lb, true), 0);
    moe_session_free(s);
    float scale = 0;
    for (int i = 0; i < LA * V; i++)
        scale = fmaxf(scale, fabsf(la[i]));

    struct moe_kv *ka, *kb;
    struct moe_scratch *scr;
    assert_int_equal(moe_model_kv_create(m, 128, &ka), 0);
    assert_int_equal(moe_model_kv_create(m, 128, &kb), 0);
    assert_int_equal(moe_scratch_create(&scr), 0);
    float *out = malloc(sizeof(float) * (LA + LB) * V);
    int32_t tok[LA + LB], pos[LA + LB], idx[LA + LB];
    struct moe_kv *kvs[LA + LB];
    /* steps: A[0,40) + B[0,12); A[40,70) + B[12]; then B's rest one token per step */
    const int steps[][4] = {{0, 40, 0, 12}, {40, 70, 12, 13}};
    for (int st = 0; st < 2; st++) {
        int n = 0;
        for (int i = steps[st][0]; i < steps[st][1]; i++, n++)
            tok[n] = a[i], pos[n] = i, kvs[n] = ka, idx[n] = n;
        for (int i = steps[st][2]; i < steps[st][3]; i++, n++)
            tok[n] = b[i], pos[n] = i, kvs[n] = kb, idx[n] = n;
        assert_int_equal(moe_model_forward(m, pool, scr, n, tok, kvs, pos, idx, n, out), 0);
        int r = 0;
        for (int i = steps[st][0]; i < steps[st][1]; i++, r++)
            assert_true(max_abs_diff(out + (size_t)r * V, la + (size_t)i * V, V) < 1e-4f * scale);
        for (int i = steps[st][2]; i < steps[st][3]; i++, r++)
            assert_true(max_abs_diff(out + (size_t)r * V, lb + (size_t)i * V, V) < 1e-4f * scale);
    }
    for (int i = 13; i < LB; i++) {
        int32_t zero = 0;
        tok[0] = b[i], pos[0] = i, kvs[0] = kb;
        assert_int_equal(moe_model_forward(m, pool, scr, 1, tok, kvs, pos, &zero, 1, out), 0);
        assert_true(max_abs_diff(out, lb + (size_t)i * V, V) < 1e-4f * scale);
    }
    /* a state cannot go back: position 5 of A again is refused, not mixed in */
    tok[0] = a[5], pos[0] = 5, kvs[0] = ka;
    assert_int_equal(moe_model_forward(m, pool, scr, 1, tok, kvs, pos, NULL, 0, out), -EINVAL);
    free(out);
    free(la);
    free(lb);
    moe_scratch_free(scr);
    moe_model_kv_free(ka);
    moe_model_kv_free(kb);
    moe_pool_free(pool);
    moe_model_free(m);
}

/* n > 1 choices fork the first one's prompt KV: a fork, fed its own tokens,
 * gives what a sequence that prefilled the prompt itself gives, and its
 * writes do not reach the sequence it was forked from. For a hybrid (the
 * recurrent states copied) and for a KIVI 4-bit cache (quantised blocks
 * shared, the fp16 window copied). */
static void fork_case(const char *model, struct moe_kv_params kp, int32_t n_prompt)
{
    struct moe_model *m;
    struct moe_pool *pool;
    assert_int_equal(moe_model_open(moe_test_path(model), &m), 0);
    assert_int_equal(moe_pool_create(2, &pool), 0);
    int V = m->cfg.vocab;
    int32_t toks[200], more_a[4], more_b[4], pos[200], idx = 0;
    for (int i = 0; i < n_prompt; i++)
        toks[i] = 3 + (i * 37) % 1000 % V;
    for (int i = 0; i < 4; i++)
        more_a[i] = 5 + i * 11 % V, more_b[i] = 7 + i * 13 % V;
    struct moe_kv_pool *kvp;
    assert_int_equal(moe_model_kv_pool_create(m, &kp, 256, &kvp), 0);
    struct moe_kv *a, *b, *c;
    assert_int_equal(moe_kv_seq_create(kvp, 256, &a), 0);
    assert_int_equal(moe_kv_seq_create(kvp, 256, &b), 0);
    assert_int_equal(moe_kv_seq_create(kvp, 256, &c), 0);
    struct moe_scratch *scr;
    assert_int_equal(moe_scratch_create(&scr), 0);
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V);
    float *lc = malloc(sizeof(float) * V);
    struct moe_kv *kvs[200];
    for (int i = 0; i < n_prompt; i++)
        pos[i] = i, kvs[i] = a;
    assert_int_equal(moe_model_forward(m, pool, scr, n_prompt, toks, kvs, pos, NULL, 0, la), 0);
    assert_int_equal(moe_kv_fork(b, a), 0);
    /* b goes on with its tokens, a with others; c prefills the prompt and b's tokens */
    for (int i = 0; i < n_prompt; i++)
        kvs[i] = c;
    assert_int_equal(moe_model_forward(m, pool, scr, n_prompt, toks, kvs, pos, NULL, 0, lc), 0);
    for (int i = 0; i < 4; i++) {
        int32_t p = n_prompt + i;
        struct moe_kv *one[1];
        one[0] = b;
        assert_int_equal(moe_model_forward(m, pool, scr, 1, &more_b[i], one, &p, &idx, 1, lb), 0);
        one[0] = a;
        assert_int_equal(moe_model_forward(m, pool, scr, 1, &more_a[i], one, &p, &idx, 1, la), 0);
        one[0] = c;
        assert_int_equal(moe_model_forward(m, pool, scr, 1, &more_b[i], one, &p, &idx, 1, lc), 0);
        assert_true(max_abs_diff(lb, lc, V) == 0.0f); /* the same data, the same sums */
        assert_true(max_abs_diff(la, lc, V) > 0.0f);  /* a went its own way */
    }
    struct moe_kv_pool_stats st;
    moe_model_kv_free(a); /* the blocks a shared with b stay for b */
    moe_kv_pool_get_stats(kvp, &st);
    assert_true(st.units_used > 0);
    int32_t p = n_prompt + 4, t = 9;
    struct moe_kv *one[1] = {b};
    assert_int_equal(moe_model_forward(m, pool, scr, 1, &t, one, &p, &idx, 1, lb), 0);
    one[0] = c;
    assert_int_equal(moe_model_forward(m, pool, scr, 1, &t, one, &p, &idx, 1, lc), 0);
    assert_true(max_abs_diff(lb, lc, V) == 0.0f);
    moe_model_kv_free(b);
    moe_model_kv_free(c);
    moe_kv_pool_get_stats(kvp, &st);
    assert_int_equal(st.units_used, 0); /* every shared block back exactly once */
    free(la);
    free(lb);
    free(lc);
    moe_scratch_free(scr);
    moe_kv_pool_free(kvp);
    moe_pool_free(pool);
    moe_model_free(m);
}

static void test_fork_equals_own_prefill(void **state)
{
    (void)state;
    fork_case("tests/data/arch/qwen3_next/v5", (struct moe_kv_params){32, 32, 32, 0, 32}, 70);
    fork_case("tests/data/arch/qwen3_next/v5", (struct moe_kv_params){16, 16, 32, 0, 16}, 45);
    fork_case("models/tiny-moe", (struct moe_kv_params){4, 4, 32, 32, 32}, 100);
    /* window layers give blocks back as they slide: no fork (the choices prefill) */
    struct moe_model *m;
    struct moe_kv_pool *kvp;
    struct moe_kv *a, *b;
    assert_int_equal(moe_model_open(moe_test_path("tests/data/arch/mixtral_swa/v5"), &m), 0);
    assert_int_equal(moe_model_kv_pool_create(m, &(struct moe_kv_params){16, 16, 32, 0, 32}, 64,
                                              &kvp), 0);
    assert_int_equal(moe_kv_seq_create(kvp, 64, &a), 0);
    assert_int_equal(moe_kv_seq_create(kvp, 64, &b), 0);
    assert_int_equal(moe_kv_fork(b, a), -ENOTSUP);
    moe_model_kv_free(a);
    moe_model_kv_free(b);
    moe_kv_pool_free(kvp);
    moe_model_free(m);
}

static void test_position_past_cache_is_refused(void **state)
{
    (void)state;
    struct moe_model *m;
    struct moe_pool *pool;
    struct moe_kv *kv;
    struct moe_scratch *scr;
    assert_int_equal(moe_model_open(moe_test_path("models/tiny-moe"), &m), 0);
    assert_int_equal(moe_pool_create(1, &pool), 0);
    assert_int_equal(moe_model_kv_create(m, 4, &kv), 0);
    assert_int_equal(moe_scratch_create(&scr), 0);
    int32_t tok = 5, pos = 4;
    assert_int_equal(moe_model_forward(m, pool, scr, 1, &tok, &kv, &pos, NULL, 0, NULL), -ENOSPC);
    assert_non_null(strstr(moe_err_msg(), "context full"));
    moe_scratch_free(scr);
    moe_model_kv_free(kv);
    moe_pool_free(pool);
    moe_model_free(m);
}

struct observed {
    int calls[8];
    int tokens;
};

static void observe(void *ctx, int32_t layer, const float *xn, int32_t n,
                    const struct moe_route *routes)
{
    struct observed *o = ctx;
    o->calls[layer]++;
    o->tokens += n;
    assert_true(routes[0].n >= 1 && isfinite(xn[0]));
}

/* moe-pack calibrates layer by layer: running the layers one at a time on
 * the residual stream must give the full forward pass's final state. */
static void test_layer_by_layer_equals_full_forward(void **state)
{
    (void)state;
    struct moe_model *m;
    struct moe_pool *pool;
    assert_int_equal(moe_model_open(moe_test_path("models/tiny-moe"), &m), 0);
    assert_int_equal(moe_pool_create(2, &pool), 0);
    int V = m->cfg.vocab, H = m->cfg.hidden;

    float *want = malloc(sizeof(float) * NB * V);
    struct moe_session *s;
    assert_int_equal(moe_session_create(m, pool, 64, &s), 0);
    assert_int_equal(moe_session_forward(s, B, NB, want, true), 0);
    moe_session_free(s);

    struct moe_kv *kv;
    struct moe_scratch *scr;
    assert_int_equal(moe_model_kv_create(m, 64, &kv), 0);
    assert_int_equal(moe_scratch_create(&scr), 0);
    float *x = malloc(sizeof(float) * NB * H), *xn = malloc(sizeof(float) * NB * H);
    int32_t pos[NB];
    for (int i = 0; i < NB; i++)
        pos[i] = i;
    struct observed o = {0};
    moe_model_embed(m, B, NB, x);
    for (int l = 0; l < m->cfg.n_layers; l++)
        assert_int_equal(moe_model_forward_layer(m, pool, scr, l, NB, x, kv, pos, observe, &o), 0);
    for (int l = 0; l < m->cfg.n_layers; l++)
        assert_int_equal(o.calls[l], 1);
    assert_int_equal(o.tokens, NB * m->cfg.n_layers);

    /* final norm and lm head by hand */
    for (int t = 0; t < NB; t++) {
        double ss = 0;
        for (int i = 0; i < H; i++)
            ss += (double)x[t * H + i] * x[t * H + i];
        float r = 1.0f / sqrtf((float)(ss / H) + m->cfg.rms_eps);
        for (int i = 0; i < H; i++)
            xn[t * H + i] = x[t * H + i] * r * m->final_norm[i];
    }
    float *got = malloc(sizeof(float) * NB * V);
    moe_matmul(pool, &m->lm_head, xn, NB, got);
    assert_true(max_abs_diff(got, want, NB * V) < 1e-4f);

    free(got);
    free(x);
    free(xn);
    free(want);
    moe_scratch_free(scr);
    moe_model_kv_free(kv);
    moe_pool_free(pool);
    moe_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixed_batch_equals_separate_sequences),
        cmocka_unit_test(test_hybrid_mixed_batch_equals_separate_sequences),
        cmocka_unit_test(test_fork_equals_own_prefill),
        cmocka_unit_test(test_position_past_cache_is_refused),
        cmocka_unit_test(test_layer_by_layer_equals_full_forward),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
