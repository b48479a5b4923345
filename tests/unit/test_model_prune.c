/* model: online dynamic pruning and per-token top-k through the forward
 * pass: beta 0 changes nothing, pruning removes activations where asked,
 * a batch mixing settings gives each sequence what it would get alone. */
#include "tests/unit/test.h"

#include <math.h>

#include "backend/backend.h"
#include "common/common.h"
#include "model/model.h"

static const int32_t A[] = {1022, 812, 58, 10, 65, 104, 44, 396, 304, 44, 528, 321, 287};
static const int32_t B[] = {1022, 396, 304, 44, 528, 321, 287, 304, 266};
enum { NA = sizeof(A) / sizeof(A[0]), NB = sizeof(B) / sizeof(B[0]) };

struct fixture {
    struct moe_model *m;
    struct moe_pool *pool;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    if (moe_model_open(moe_test_path("models/tiny-moe"), &f->m) < 0 ||
        moe_pool_create(2, &f->pool) < 0)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    moe_pool_free(f->pool);
    moe_model_free(f->m);
    free(f);
    return 0;
}

/* all-position logits of toks with the given routing (prune may be NULL) */
static float *run(struct fixture *f, const int32_t *toks, int n, const struct moe_prune *prune,
                  int32_t top_k, struct moe_router_stats *st)
{
    struct moe_session *s;
    float *lg = malloc(sizeof(float) * (size_t)n * (size_t)f->m->cfg.vocab);
    assert_int_equal(moe_session_create(f->m, f->pool, 64, &s), 0);
    s->prune = prune;
    s->top_k = top_k;
    s->stats = st;
    assert_int_equal(moe_session_forward(s, toks, n, lg, true), 0);
    moe_session_free(s);
    return lg;
}

static void test_beta_zero_gives_identical_logits(void **state)
{
    struct fixture *f = *state;
    size_t bytes = sizeof(float) * NA * (size_t)f->m->cfg.vocab;
    struct moe_prune zero = {.protect_fraction = 0.02f};
    struct moe_router_stats *st = calloc(1, sizeof(*st));
    float *plain = run(f, A, NA, NULL, 0, NULL);
    float *z = run(f, A, NA, &zero, 0, st);
    float *k2 = run(f, A, NA, NULL, 2, NULL); /* top_k = the model's */
    assert_memory_equal(plain, z, bytes);
    assert_memory_equal(plain, k2, bytes);
    for (int l = 0; l < f->m->cfg.n_layers; l++) {
        assert_int_equal(st->layer[l].tokens, NA);
        assert_int_equal(st->layer[l].kept, 2 * NA);
        assert_int_equal(st->layer[l].pruned, 0);
    }
    free(plain);
    free(z);
    free(k2);
    free(st);
}

static void test_pruning_removes_activations_where_asked(void **state)
{
    struct fixture *f = *state;
    struct moe_prune p = {.protect_fraction = 0.0f};
    p.beta[1] = p.beta[2] = 0.9f;
    struct moe_router_stats *st = calloc(1, sizeof(*st));
    float *plain = run(f, A, NA, NULL, 0, NULL);
    float *pr = run(f, A, NA, &p, 0, st);
    assert_true(memcmp(plain, pr, sizeof(float) * NA * (size_t)f->m->cfg.vocab) != 0);
    for (int l = 0; l < f->m->cfg.n_layers; l++) {
        const struct moe_router_layer_stats *ls = &st->layer[l];
        assert_int_equal(ls->kept + ls->pruned, 2 * NA);
        if (l == 1 || l == 2)
            assert_true(ls->pruned > 0);
        else
            assert_int_equal(ls->pruned, 0);
    }
    free(plain);
    free(pr);
    free(st);
}

static void test_protection_keeps_every_expert(void **state)
{
    struct fixture *f = *state; /* protect everything: as if unpruned */
    struct moe_prune p = {.protect_fraction = 1.0f};
    for (int l = 0; l < f->m->cfg.n_layers; l++)
        p.beta[l] = 1.0f;
    struct moe_router_stats *st = calloc(1, sizeof(*st));
    float *plain = run(f, A, NA, NULL, 0, NULL);
    float *pr = run(f, A, NA, &p, 0, st);
    assert_memory_equal(plain, pr, sizeof(float) * NA * (size_t)f->m->cfg.vocab);
    assert_int_equal(st->layer[2].pruned, 0);
    /* 50%: about half the tokens keep both experts */
    p.protect_fraction = 0.5f;
    memset(st, 0, sizeof(*st));
    free(run(f, A, NA, &p, 0, st));
    assert_true(st->layer[2].kept >= NA + NA / 2);
    free(plain);
    free(pr);
    free(st);
}

static void test_top_k_one(void **state)
{
    struct fixture *f = *state;
    struct moe_router_stats *st = calloc(1, sizeof(*st));
    free(run(f, A, NA, NULL, 1, st));
    for (int l = 0; l < f->m->cfg.n_layers; l++)
        assert_int_equal(st->layer[l].kept, NA);
    free(st);
}

/* A pruned and B plain in one batch, each as a prompt chunk: every row as
 * its sequence gets alone. */
static void test_mixed_batch_uses_each_sequences_settings(void **state)
{
    struct fixture *f = *state;
    int V = f->m->cfg.vocab;
    struct moe_prune p = {.protect_fraction = 0.1f};
    p.beta[2] = p.beta[3] = 0.8f;
    float *la = run(f, A, NA, &p, 0, NULL), *lb = run(f, B, NB, NULL, 1, NULL);

    struct moe_kv *ka, *kb;
    struct moe_scratch *scr;
    assert_int_equal(moe_model_kv_create(f->m, 64, &ka), 0);
    assert_int_equal(moe_model_kv_create(f->m, 64, &kb), 0);
    assert_int_equal(moe_scratch_create(&scr), 0);
    int32_t tok[NA + NB], pos[NA + NB], idx[NA + NB], k[NA + NB];
    const struct moe_prune *pp[NA + NB];
    struct moe_kv *kvs[NA + NB];
    int n = 0;
    for (int i = 0; i < NB; i++, n++) {
        tok[n] = B[i]; pos[n] = i; kvs[n] = kb; idx[n] = n; pp[n] = NULL; k[n] = 1;
    }
    for (int i = 0; i < NA; i++, n++) {
        tok[n] = A[i]; pos[n] = i; kvs[n] = ka; idx[n] = n; pp[n] = &p; k[n] = 0;
    }
    float *out = malloc(sizeof(float) * (size_t)n * V);
    struct moe_forward_opts o = {.prune = pp, .top_k = k};
    assert_int_equal(moe_model_forward_opts(f->m, f->pool, scr, n, tok, kvs, pos, idx, n, out, &o),
                     0);
    for (int i = 0; i < NB; i++)
        for (int v = 0; v < V; v++)
            assert_true(fabsf(out[(size_t)i * V + v] - lb[(size_t)i * V + v]) < 1e-4f);
    for (int i = 0; i < NA; i++)
        for (int v = 0; v < V; v++)
            assert_true(fabsf(out[(size_t)(NB + i) * V + v] - la[(size_t)i * V + v]) < 1e-4f);
    free(out);
    free(la);
    free(lb);
    moe_scratch_free(scr);
    moe_model_kv_free(ka);
    moe_model_kv_free(kb);
}

static void test_defaults_are_the_middle_layers(void **state)
{
    struct fixture *f = *state; /* 4 layers: only layer 2 */
    struct moe_prune p;
    bool from_pack = true;
    assert_int_equal(moe_model_prune_defaults(f->m, 0.5f, &p, &from_pack), 0);
    assert_false(from_pack);
    assert_float_equal(p.beta[0], 0.0f, 0);
    assert_float_equal(p.beta[1], 0.0f, 0);
    assert_float_equal(p.beta[2], 0.5f, 0);
    assert_float_equal(p.beta[3], 0.0f, 0);
    assert_float_equal(p.protect_fraction, MOE_PRUNE_PROTECT_DEFAULT, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_beta_zero_gives_identical_logits),
        cmocka_unit_test(test_pruning_removes_activations_where_asked),
        cmocka_unit_test(test_protection_keeps_every_expert),
        cmocka_unit_test(test_top_k_one),
        cmocka_unit_test(test_mixed_batch_uses_each_sequences_settings),
        cmocka_unit_test(test_defaults_are_the_middle_layers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
