/* model: a model written to a moed pack (dense base + its bf16 experts as
 * they are) opens from the pack and computes exactly the same logits, with
 * the same tokenizer; a corrupt expert is refused by name. */
#include "tests/unit/test.h"

#include <errno.h>
#include <jansson.h>
#include <sys/stat.h>

#include "backend/backend.h"
#include "common/common.h"
#include "format/format_pack.h"
#include "model/model.h"
#include "tests/unit/test_model_to_pack.h"

static const char *TEXT = "ROMEO:\nTo be, or not to be the";

static char pack_path[512];


static int setup(void **state)
{
    (void)state;
    snprintf(pack_path, sizeof(pack_path), "%s/tiny.pack", moe_test_tmpdir());
    struct moe_model *m;
    if (moe_model_open(moe_test_path("models/tiny-moe"), &m) < 0)
        return -1;
    int rc = moe_test_write_pack(m, pack_path);
    if (rc < 0)
        fprintf(stderr, "write_pack: %s\n", moe_err_msg());
    moe_model_free(m);
    return rc;
}

static float *logits_of(const struct moe_model *m, const int32_t *ids, size_t n)
{
    struct moe_pool *pool;
    struct moe_session *s;
    assert_int_equal(moe_pool_create(2, &pool), 0);
    assert_int_equal(moe_session_create(m, pool, 64, &s), 0);
    float *out = malloc(sizeof(float) * n * (size_t)m->cfg.vocab);
    assert_int_equal(moe_session_forward(s, ids, (int32_t)n, out, true), 0);
    moe_session_free(s);
    moe_pool_free(pool);
    return out;
}

static void test_pack_same_logits_and_tokens(void **state)
{
    (void)state;
    struct moe_model *hf, *pk;
    assert_int_equal(moe_model_open(moe_test_path("models/tiny-moe"), &hf), 0);
    if (moe_model_open(pack_path, &pk) < 0)
        fail_msg("%s", moe_err_msg());
    assert_null(moe_model_pack(hf));
    assert_non_null(moe_model_pack(pk));
    assert_string_equal(
        json_string_value(json_object_get(moe_pack_quant(moe_model_pack(pk)), "experts")),
        "bf16");
    assert_memory_equal(&hf->cfg, &pk->cfg, sizeof(hf->cfg));
    assert_int_equal(moe_model_active_bytes(hf), moe_model_active_bytes(pk));

    /* the tokenizer from the pack's blobs */
    assert_non_null(pk->tok);
    int32_t *a, *b;
    size_t na, nb;
    assert_int_equal(moe_tokenizer_encode(hf->tok, TEXT, strlen(TEXT), true, &a, &na), 0);
    assert_int_equal(moe_tokenizer_encode(pk->tok, TEXT, strlen(TEXT), true, &b, &nb), 0);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na * sizeof(*a));
    assert_int_equal(moe_tokenizer_bos(hf->tok), moe_tokenizer_bos(pk->tok));
    assert_int_equal(moe_tokenizer_eos(hf->tok), moe_tokenizer_eos(pk->tok));
    for (int32_t id = 0; id < moe_tokenizer_vocab_size(hf->tok); id++)
        assert_int_equal(moe_tokenizer_is_eog(hf->tok, id), moe_tokenizer_is_eog(pk->tok, id));

    /* identical, not merely close: the same bytes through the same kernels */
    float *la = logits_of(hf, a, na), *lb = logits_of(pk, a, na);
    assert_memory_equal(la, lb, sizeof(float) * na * (size_t)hf->cfg.vocab);
    free(la);
    free(lb);
    free(a);
    free(b);

    /* the tokenizer alone, from the pack */
    struct moe_tokenizer *t;
    assert_int_equal(moe_model_open_tokenizer(pack_path, &t), 0);
    assert_int_equal(moe_tokenizer_vocab_size(t), moe_tokenizer_vocab_size(hf->tok));
    moe_tokenizer_free(t);

    /* a pack re-packed from a pack is the same pack (tokenizer blobs included) */
    char again[600];
    snprintf(again, sizeof(again), "%s.again", pack_path);
    assert_int_equal(moe_test_write_pack(pk, again), 0);
    size_t n1, n2;
    char *d1, *d2;
    assert_int_equal(moe_read_text_file(pack_path, &d1, &n1), 0);
    assert_int_equal(moe_read_text_file(again, &d2, &n2), 0);
    assert_int_equal(n1, n2);
    assert_memory_equal(d1, d2, n1);
    free(d1);
    free(d2);
    unlink(again);
    moe_model_free(hf);
    moe_model_free(pk);
}

static void test_corrupt_expert_refused(void **state)
{
    (void)state;
    struct moe_pack *p;
    assert_int_equal(moe_pack_open(pack_path, &p), 0);
    const struct moe_pack_expert *e = moe_pack_find_expert(p, 1, 3);
    assert_non_null(e);
    uint64_t off = e->offset + e->parts[MOE_PACK_PART_UP].offset + 17;
    moe_pack_close(p);

    char bad[600];
    snprintf(bad, sizeof(bad), "%s.bad", pack_path);
    size_t n;
    char *d;
    assert_int_equal(moe_read_text_file(pack_path, &d, &n), 0);
    d[off] ^= 0x10;
    moe_test_write_file(bad, d, n);
    free(d);
    struct moe_model *m = NULL;
    assert_int_equal(moe_model_open(bad, &m), -EIO);
    assert_null(m);
    assert_non_null(strstr(moe_err_msg(), "layer 1 expert 3"));
    assert_non_null(strstr(moe_err_msg(), "checksum mismatch"));
    unlink(bad);
}

static void test_config_json(void **state)
{
    (void)state;
    struct moe_model *m;
    assert_int_equal(moe_model_open(moe_test_path("models/tiny-moe"), &m), 0);
    struct moe_config c = m->cfg;
    c.layer_dense[2] = true; /* every field exercised */
    c.dense_ffn = 64;
    c.qk_norm = MOE_QK_NORM_FULL;
    c.clip_qkv = 8.5f;
    c.arch = MOE_ARCH_OLMOE;
    json_t *j = moe_config_to_json(&c);
    assert_non_null(j);
    struct moe_config back;
    assert_int_equal(moe_config_from_json(j, "x.pack", &back), 0);
    assert_memory_equal(&c, &back, sizeof(c));

    json_object_set_new(j, "mrope_section", json_string("[16, 24, 24]"));
    assert_int_equal(moe_config_from_json(j, "x.pack", &back), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "x.pack: config: unknown key 'mrope_section'"));
    json_object_del(j, "mrope_section");
    json_object_del(j, "top_k");
    assert_int_equal(moe_config_from_json(j, "x.pack", &back), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "x.pack: config: missing key 'top_k'"));
    json_object_set_new(j, "top_k", json_string("2"));
    assert_int_equal(moe_config_from_json(j, "x.pack", &back), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "key 'top_k'"));
    json_decref(j);
    moe_model_free(m);
}

/* A GGUF's metadata re-wrapped with no tensors (the pack's tokenizer.gguf)
 * gives the same tokenizer. */
static void test_gguf_vocab_blob(void **state)
{
    (void)state;
    struct moe_gguf *g, *g2;
    assert_int_equal(moe_gguf_open(moe_test_path("tests/data/tokenizers/ggml-vocab-llama-spm.gguf"),
                                   &g), 0);
    uint32_t ver;
    uint64_t n_kv;
    const void *kv;
    size_t kvn;
    assert_int_equal(moe_gguf_kv_section(g, &ver, &n_kv, &kv, &kvn), 0);
    uint8_t *b = malloc(24 + kvn);
    memcpy(b, "GGUF", 4);
    memcpy(b + 4, &ver, 4); /* little-endian host */
    memset(b + 8, 0, 8);
    memcpy(b + 16, &n_kv, 8);
    memcpy(b + 24, kv, kvn);
    assert_int_equal(moe_gguf_open_mem(b, 24 + kvn, "blob", &g2), 0);
    assert_int_equal(moe_gguf_kv_count(g2), moe_gguf_kv_count(g));
    struct moe_tokenizer *t1, *t2;
    assert_int_equal(moe_tokenizer_from_gguf(g, &t1), 0);
    assert_int_equal(moe_tokenizer_from_gguf(g2, &t2), 0);
    int32_t *a, *c;
    size_t na, nc;
    assert_int_equal(moe_tokenizer_encode(t1, TEXT, strlen(TEXT), true, &a, &na), 0);
    assert_int_equal(moe_tokenizer_encode(t2, TEXT, strlen(TEXT), true, &c, &nc), 0);
    assert_int_equal(na, nc);
    assert_memory_equal(a, c, na * sizeof(*a));
    free(a);
    free(c);
    moe_tokenizer_free(t1);
    moe_tokenizer_free(t2);
    moe_gguf_close(g2);
    moe_gguf_close(g);
    free(b);
}

static int teardown(void **state)
{
    (void)state;
    unlink(pack_path);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pack_same_logits_and_tokens),
        cmocka_unit_test(test_corrupt_expert_refused),
        cmocka_unit_test(test_config_json),
        cmocka_unit_test(test_gguf_vocab_blob),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
