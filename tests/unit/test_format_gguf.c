/* GGUF reader: a valid file with metadata of every type and F32/F16/BF16/Q8_0
 * tensors built here, broken variants of it (each failure checked for its
 * message), every truncation, and the bundled llama tokenizer vocabulary. */
#define _GNU_SOURCE /* nftw */
#include "tests/unit/test.h"

#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <sys/stat.h>

#include "common/common.h"
#include "format/format.h"

static const char *tpath(const char *name)
{
    static char buf[4][512];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", moe_test_tmpdir(), name);
    return buf[i];
}

/* ---- a little GGUF writer --------------------------------------------------- */

struct gg {
    uint8_t *b;
    size_t n, cap;
};

static void gg_bytes(struct gg *g, const void *p, size_t n)
{
    if (g->n + n > g->cap) {
        g->cap = (g->n + n) * 2 + 64;
        g->b = realloc(g->b, g->cap);
        assert_non_null(g->b);
    }
    memcpy(g->b + g->n, p, n);
    g->n += n;
}

static void gg_le(struct gg *g, uint64_t v, int n)
{
    uint8_t b[8];
    for (int i = 0; i < n; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    gg_bytes(g, b, (size_t)n);
}

static void gg_u32(struct gg *g, uint32_t v) { gg_le(g, v, 4); }
static void gg_u64(struct gg *g, uint64_t v) { gg_le(g, v, 8); }

static void gg_str(struct gg *g, const char *s)
{
    gg_u64(g, strlen(s));
    gg_bytes(g, s, strlen(s));
}

/* key and value type; the value follows */
static void gg_key(struct gg *g, const char *key, uint32_t type)
{
    gg_str(g, key);
    gg_u32(g, type);
}

struct gt {
    const char *name;
    uint32_t type, n_dims;
    uint64_t ne[4];
    const void *data; /* NULL: not written */
    size_t nbytes;
    int64_t offset; /* -1: the next aligned offset */
};

/* header, kvs written by the callback (it returns how many), tensor infos,
 * padding, data. alignment 0: no general.alignment key (default 32). */
static uint8_t *gg_file(uint32_t version, uint32_t alignment, uint64_t (*kvs)(struct gg *),
                        const struct gt *ts, size_t nt, size_t *len)
{
    struct gg g = {0};
    gg_bytes(&g, "GGUF", 4);
    gg_u32(&g, version);
    gg_u64(&g, nt);
    size_t kv_count_at = g.n;
    gg_u64(&g, 0);
    uint64_t n_kv = kvs ? kvs(&g) : 0;
    if (alignment) {
        gg_key(&g, "general.alignment", MOE_GGUF_U32);
        gg_u32(&g, alignment);
        n_kv++;
    }
    for (int i = 0; i < 8; i++)
        g.b[kv_count_at + i] = (uint8_t)(n_kv >> (8 * i));

    size_t align = alignment ? alignment : 32, off = 0;
    uint64_t *offs = calloc(nt + 1, sizeof(*offs));
    for (size_t i = 0; i < nt; i++) {
        gg_str(&g, ts[i].name);
        gg_u32(&g, ts[i].n_dims);
        for (uint32_t d = 0; d < ts[i].n_dims; d++)
            gg_u64(&g, d < 4 ? ts[i].ne[d] : 1); /* n_dims > 4: broken on purpose */
        gg_u32(&g, ts[i].type);
        offs[i] = ts[i].offset >= 0 ? (uint64_t)ts[i].offset : off;
        gg_u64(&g, offs[i]);
        off = MOE_ALIGN_UP(offs[i] + ts[i].nbytes, align);
    }
    static const uint8_t zero[4096];
    gg_bytes(&g, zero, MOE_ALIGN_UP(g.n, align) - g.n);
    size_t data_start = g.n;
    for (size_t i = 0; i < nt; i++) {
        if (!ts[i].data) /* a tensor whose data is left out */
            continue;
        if (data_start + offs[i] > g.n)
            gg_bytes(&g, zero, data_start + offs[i] - g.n);
        g.n = data_start + offs[i]; /* overlapping offsets overwrite */
        gg_bytes(&g, ts[i].data, ts[i].nbytes);
    }
    free(offs);
    *len = g.n;
    return g.b;
}

/* ---- the valid file ------------------------------------------------------------- */

static const char *const strs3[] = {"<unk>", "", "h\xc3\xa9llo"};

/* metadata of every type, arrays of numbers, strings and arrays */
static uint64_t all_kvs(struct gg *g)
{
    gg_key(g, "general.architecture", MOE_GGUF_STRING);
    gg_str(g, "mixtral");
    gg_key(g, "t.u8", MOE_GGUF_U8);
    gg_le(g, 200, 1);
    gg_key(g, "t.i8", MOE_GGUF_I8);
    gg_le(g, (uint8_t)-5, 1);
    gg_key(g, "t.u16", MOE_GGUF_U16);
    gg_le(g, 60000, 2);
    gg_key(g, "t.i16", MOE_GGUF_I16);
    gg_le(g, 1234, 2);
    gg_key(g, "t.u32", MOE_GGUF_U32);
    gg_u32(g, 4000000000u);
    gg_key(g, "t.i32", MOE_GGUF_I32);
    gg_u32(g, (uint32_t)-7);
    float f = 0.25f;
    uint32_t fu;
    memcpy(&fu, &f, 4);
    gg_key(g, "t.f32", MOE_GGUF_F32);
    gg_u32(g, fu);
    gg_key(g, "t.bool", MOE_GGUF_BOOL);
    gg_le(g, 1, 1);
    gg_key(g, "t.u64", MOE_GGUF_U64);
    gg_u64(g, 1ull << 40);
    gg_key(g, "t.u64small", MOE_GGUF_U64);
    gg_u64(g, 77);
    gg_key(g, "t.i64", MOE_GGUF_I64);
    gg_u64(g, (uint64_t)-3);
    double dv = 1e-5;
    uint64_t du;
    memcpy(&du, &dv, 8);
    gg_key(g, "t.f64", MOE_GGUF_F64);
    gg_u64(g, du);
    gg_key(g, "t.strs", MOE_GGUF_ARRAY);
    gg_u32(g, MOE_GGUF_STRING);
    gg_u64(g, 3);
    for (int i = 0; i < 3; i++)
        gg_str(g, strs3[i]);
    gg_key(g, "t.i32s", MOE_GGUF_ARRAY);
    gg_u32(g, MOE_GGUF_I32);
    gg_u64(g, 3);
    gg_u32(g, 1);
    gg_u32(g, (uint32_t)-2);
    gg_u32(g, 3);
    gg_key(g, "t.empty", MOE_GGUF_ARRAY);
    gg_u32(g, MOE_GGUF_F32);
    gg_u64(g, 0);
    /* [[1, 2], ["a"]]: walked, not kept */
    gg_key(g, "t.nested", MOE_GGUF_ARRAY);
    gg_u32(g, MOE_GGUF_ARRAY);
    gg_u64(g, 2);
    gg_u32(g, MOE_GGUF_U8);
    gg_u64(g, 2);
    gg_le(g, 1, 1);
    gg_le(g, 2, 1);
    gg_u32(g, MOE_GGUF_STRING);
    gg_u64(g, 1);
    gg_str(g, "a");
    gg_key(g, "t.after", MOE_GGUF_U32); /* still in step after the nesting */
    gg_u32(g, 99);
    return 18;
}

static float f32_data[6] = {0, 1, 2, 3, 4, 5};
static uint16_t f16_data[4], bf16_data[8];
static struct moe_block_q8_0 q8_data[4];

static void fill_data(void)
{
    for (int i = 0; i < 4; i++)
        f16_data[i] = moe_f32_to_f16((float)i - 1.5f);
    for (int i = 0; i < 8; i++)
        bf16_data[i] = moe_f32_to_bf16((float)i * 10);
    for (int b = 0; b < 4; b++) {
        q8_data[b].d = moe_f32_to_f16(0.5f * (float)(b + 1));
        for (int i = 0; i < 32; i++)
            q8_data[b].q[i] = (int8_t)(i - 16 + b);
    }
}

/* ne[] innermost first: t.f32 is a 2 x 3 matrix, q8 a 2 x 64 one. */
static struct gt valid_tensors[] = {
    {"t.f32", 0, 2, {3, 2}, f32_data, sizeof(f32_data), -1},
    {"t.f16", 1, 1, {4}, f16_data, sizeof(f16_data), -1},
    {"t.bf16", 30, 3, {2, 2, 2}, bf16_data, sizeof(bf16_data), -1},
    {"blk.0.ffn_down.weight", 8, 2, {64, 2}, q8_data, sizeof(q8_data), -1},
};

static uint8_t *valid_file(uint32_t alignment, size_t *len)
{
    fill_data();
    assert_int_equal(sizeof(q8_data), 4 * 34);
    return gg_file(3, alignment, all_kvs, valid_tensors, MOE_ARRAY_SIZE(valid_tensors), len);
}

static const char *write_buf(const char *name, const uint8_t *b, size_t n)
{
    const char *p = tpath(name);
    moe_test_write_file(p, b, n);
    return p;
}

static void gguf_expect_fail(const char *path, const char *want)
{
    struct moe_gguf *g = (void *)1;
    moe_err_clear();
    int rc = moe_gguf_open(path, &g);
    if (rc >= 0 || !strstr(moe_err_msg(), want) || !strstr(moe_err_msg(), path))
        print_error("open %s: rc %d, message '%s', wanted '%s'\n", path, rc, moe_err_msg(),
                    want);
    assert_true(rc < 0);
    assert_null(g);
    assert_non_null(strstr(moe_err_msg(), want));
    assert_non_null(strstr(moe_err_msg(), path));
    assert_null(strchr(moe_err_msg(), '\n'));
}

static void check_valid(const char *path, uint32_t alignment)
{
    struct moe_gguf *g;
    int rc = moe_gguf_open(path, &g);
    if (rc < 0)
        print_error("%s\n", moe_err_msg());
    assert_int_equal(rc, 0);
    assert_string_equal(moe_gguf_path(g), path);
    assert_int_equal(moe_gguf_kv_count(g), alignment ? 19 : 18);
    enum moe_gguf_type ty;
    assert_string_equal(moe_gguf_key_at(g, 0, &ty), "general.architecture");
    assert_int_equal(ty, MOE_GGUF_STRING);
    assert_null(moe_gguf_key_at(g, 19, &ty));

    /* scalars */
    struct moe_gguf_str s;
    assert_int_equal(moe_gguf_get_str(g, "general.architecture", &s), 0);
    assert_int_equal(s.len, 7);
    assert_memory_equal(s.ptr, "mixtral", 7);
    uint32_t u;
    assert_int_equal(moe_gguf_get_u32(g, "t.u8", &u), 0);
    assert_int_equal(u, 200);
    assert_int_equal(moe_gguf_get_u32(g, "t.u16", &u), 0);
    assert_int_equal(u, 60000);
    assert_int_equal(moe_gguf_get_u32(g, "t.i16", &u), 0);
    assert_int_equal(u, 1234);
    assert_int_equal(moe_gguf_get_u32(g, "t.u32", &u), 0);
    assert_int_equal(u, 4000000000u);
    assert_int_equal(moe_gguf_get_u32(g, "t.u64small", &u), 0);
    assert_int_equal(u, 77);
    assert_int_equal(moe_gguf_get_u32(g, "t.after", &u), 0);
    assert_int_equal(u, 99);
    float f;
    assert_int_equal(moe_gguf_get_f32(g, "t.f32", &f), 0);
    assert_true(f == 0.25f);
    assert_int_equal(moe_gguf_get_f32(g, "t.f64", &f), 0);
    assert_true(fabsf(f - 1e-5f) < 1e-12f);
    bool b = false;
    assert_int_equal(moe_gguf_get_bool(g, "t.bool", &b), 0);
    assert_true(b);
    assert_true(moe_gguf_has(g, "t.nested"));
    assert_false(moe_gguf_has(g, "t.none"));

    /* values that do not convert, and absent keys */
    moe_err_clear();
    assert_int_equal(moe_gguf_get_u32(g, "t.i8", &u), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "key 't.i8': value -5 does not fit in u32"));
    assert_int_equal(moe_gguf_get_u32(g, "t.i32", &u), -EINVAL);
    assert_int_equal(moe_gguf_get_u32(g, "t.i64", &u), -EINVAL);
    assert_int_equal(moe_gguf_get_u32(g, "t.u64", &u), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "value 1099511627776 does not fit in u32"));
    assert_int_equal(moe_gguf_get_u32(g, "general.architecture", &u), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "key 'general.architecture': is string, expected an "
                                          "integer"));
    assert_non_null(strstr(moe_err_msg(), path));
    assert_int_equal(moe_gguf_get_u32(g, "t.bool", &u), -EINVAL);
    assert_int_equal(moe_gguf_get_f32(g, "t.u32", &f), -EINVAL);
    assert_int_equal(moe_gguf_get_bool(g, "t.u8", &b), -EINVAL);
    assert_int_equal(moe_gguf_get_str(g, "t.strs", &s), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "is an array of string, expected string"));
    assert_int_equal(moe_gguf_get_u32(g, "t.none", &u), -ENOENT);
    assert_int_equal(moe_gguf_get_str(g, "t.none", &s), -ENOENT);
    assert_int_equal(moe_gguf_get_f32(g, "t.none", &f), -ENOENT);
    assert_int_equal(moe_gguf_get_bool(g, "t.none", &b), -ENOENT);

    /* arrays */
    const struct moe_gguf_str *items;
    uint64_t n;
    assert_int_equal(moe_gguf_get_str_array(g, "t.strs", &items, &n), 0);
    assert_int_equal(n, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(items[i].len, strlen(strs3[i]));
        assert_memory_equal(items[i].ptr, strs3[i], items[i].len);
    }
    enum moe_gguf_type et;
    const void *data;
    assert_int_equal(moe_gguf_get_array(g, "t.i32s", &et, &data, &n), 0);
    assert_int_equal(et, MOE_GGUF_I32);
    assert_int_equal(n, 3);
    int32_t iv;
    memcpy(&iv, (const uint8_t *)data + 4, 4);
    assert_int_equal(iv, -2);
    assert_int_equal(moe_gguf_get_array(g, "t.empty", &et, &data, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(et, MOE_GGUF_F32);
    assert_int_equal(moe_gguf_get_array(g, "t.strs", &et, &data, &n), -EINVAL);
    assert_int_equal(moe_gguf_get_array(g, "t.nested", &et, &data, &n), -EINVAL);
    assert_int_equal(moe_gguf_get_str_array(g, "t.i32s", &items, &n), -EINVAL);
    assert_int_equal(moe_gguf_get_array(g, "t.u8", &et, &data, &n), -EINVAL);
    assert_int_equal(moe_gguf_get_str_array(g, "t.none", &items, &n), -ENOENT);
    assert_int_equal(moe_gguf_get_array(g, "t.none", &et, &data, &n), -ENOENT);

    /* tensors: dims outermost first, data where written */
    assert_int_equal(moe_gguf_tensor_count(g), 4);
    assert_null(moe_gguf_tensor_at(g, 4));
    assert_null(moe_gguf_find_tensor(g, "t.none"));
    const struct moe_tensor_info *t = moe_gguf_find_tensor(g, "t.f32");
    assert_ptr_equal(t, moe_gguf_tensor_at(g, 0));
    assert_int_equal(t->dtype, MOE_DTYPE_F32);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->dims[0], 2);
    assert_int_equal(t->dims[1], 3);
    assert_int_equal(t->nbytes, 24);
    assert_memory_equal(t->data, f32_data, 24);
    assert_string_equal(t->file, path);

    t = moe_gguf_find_tensor(g, "t.f16");
    assert_int_equal(t->dtype, MOE_DTYPE_F16);
    assert_int_equal(t->n_dims, 1);
    assert_int_equal(t->dims[0], 4);
    assert_memory_equal(t->data, f16_data, 8);

    t = moe_gguf_find_tensor(g, "t.bf16");
    assert_int_equal(t->dtype, MOE_DTYPE_BF16);
    assert_int_equal(t->n_dims, 3);
    assert_int_equal(t->nbytes, 16);
    assert_memory_equal(t->data, bf16_data, 16);

    t = moe_gguf_find_tensor(g, "blk.0.ffn_down.weight");
    assert_int_equal(t->dtype, MOE_DTYPE_Q8_0);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->dims[0], 2);
    assert_int_equal(t->dims[1], 64);
    assert_int_equal(t->nbytes, 4 * 34);
    assert_memory_equal(t->data, q8_data, 4 * 34);

    /* every tensor starts on the alignment, counted from the file start
     * (the data section itself is aligned) */
    const uint8_t *base = (const uint8_t *)moe_gguf_tensor_at(g, 0)->data;
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(((const uint8_t *)moe_gguf_tensor_at(g, i)->data - base) %
                             (alignment ? alignment : 32), 0);
    moe_gguf_close(g);
}

static void test_gguf_valid(void **state)
{
    size_t n;
    uint8_t *b = valid_file(0, &n);
    check_valid(write_buf("valid.gguf", b, n), 0);
    free(b);

    /* a custom alignment moves the data section and the offsets */
    b = valid_file(256, &n);
    check_valid(write_buf("valid256.gguf", b, n), 256);
    free(b);

    /* version 2 is read the same */
    b = valid_file(0, &n);
    b[4] = 2;
    check_valid(write_buf("valid-v2.gguf", b, n), 0);
    free(b);
    moe_gguf_close(NULL);
}

static void test_gguf_no_tensors(void **state)
{
    /* vocabulary-only files end right after the metadata, unpadded */
    size_t n;
    uint8_t *b = gg_file(3, 0, all_kvs, NULL, 0, &n);
    const char *p = write_buf("vocab-only.gguf", b, n);
    struct moe_gguf *g;
    assert_int_equal(moe_gguf_open(p, &g), 0);
    assert_int_equal(moe_gguf_tensor_count(g), 0);
    assert_null(moe_gguf_find_tensor(g, "t.f32"));
    moe_gguf_close(g);
    free(b);
}

static void test_gguf_missing_and_empty(void **state)
{
    const char *p = tpath("missing.gguf");
    gguf_expect_fail(p, "cannot open: No such file or directory");
    struct moe_gguf *g;
    assert_int_equal(moe_gguf_open(p, &g), -ENOENT);
    p = write_buf("empty.gguf", (const uint8_t *)"", 0);
    gguf_expect_fail(p, "empty file");
    p = write_buf("short.gguf", (const uint8_t *)"GG", 2);
    gguf_expect_fail(p, "not a GGUF file (magic 'GG'");
}

static void test_gguf_header_errors(void **state)
{
    size_t n;
    uint8_t *b = valid_file(0, &n);
    uint8_t *c = malloc(n);
    const char *p = tpath("bad.gguf");

    memcpy(c, b, n);
    c[0] = 'X';
    moe_test_write_file(p, c, n);
    gguf_expect_fail(p, "not a GGUF file (magic 'XGUF', want 'GGUF')");

    memcpy(c, b, n);
    c[4] = 1;
    moe_test_write_file(p, c, n);
    gguf_expect_fail(p, "unsupported GGUF version 1 (moed reads 2 and 3)");
    c[4] = 4;
    moe_test_write_file(p, c, n);
    gguf_expect_fail(p, "unsupported GGUF version 4");
    c[4] = 0;
    c[7] = 3;
    moe_test_write_file(p, c, n);
    gguf_expect_fail(p, "big-endian GGUF (version 3) is not supported");

    /* counts that cannot fit in the file: refused before any allocation */
    memcpy(c, b, n);
    memset(c + 8, 0xff, 8);
    moe_test_write_file(p, c, n);
    gguf_expect_fail(p, "header: 18 keys and 18446744073709551615 tensors cannot fit");
    memcpy(c, b, n);
    memset(c + 16, 0xff, 8);
    moe_test_write_file(p, c, n);
    gguf_expect_fail(p, "header: 18446744073709551615 keys and 4 tensors cannot fit");
    memcpy(c, b, n);
    c[8 + 5] = 1; /* 2^40 + 4 tensors */
    moe_test_write_file(p, c, n);
    gguf_expect_fail(p, "tensors cannot fit");
    /* a tensor count that fits the file but not what the metadata left */
    memcpy(c, b, n);
    c[8] = 40;
    moe_test_write_file(p, c, n);
    gguf_expect_fail(p, "40 tensors cannot fit in the");

    free(c);
    free(b);
}

/* Every prefix of a valid file is refused, cleanly. */
static void test_gguf_truncated_everywhere(void **state)
{
    size_t n;
    uint8_t *b = valid_file(0, &n);
    const char *p = tpath("trunc.gguf");
    for (size_t len = 0; len < n; len++) {
        moe_test_write_file(p, b, len);
        struct moe_gguf *g = (void *)1;
        moe_err_clear();
        int rc = moe_gguf_open(p, &g);
        if (rc >= 0)
            print_error("prefix of %zu bytes opened\n", len);
        assert_true(rc < 0);
        assert_null(g);
        assert_non_null(strstr(moe_err_msg(), p));
        assert_null(strchr(moe_err_msg(), '\n'));
    }
    /* a few cut points and what they must say */
    moe_test_write_file(p, b, 20);
    gguf_expect_fail(p, "header: truncated: key/value count needs 8 bytes at offset 16, file "
                        "has 20");
    moe_test_write_file(p, b, 30);
    gguf_expect_fail(p, "header: 18 keys and 4 tensors cannot fit in the 6 bytes left");
    moe_test_write_file(p, b, n - 1);
    gguf_expect_fail(p, "tensor 'blk.0.ffn_down.weight': data [");
    assert_non_null(strstr(moe_err_msg(), ") past end of file (size "));
    free(b);
}

/* One kv, written by kv_writer, in a file with no tensors. */
static void (*kv_writer)(struct gg *);
static uint64_t one_kv(struct gg *g)
{
    kv_writer(g);
    return 1;
}

static const char *kv_file(const char *name, void (*w)(struct gg *))
{
    size_t n;
    kv_writer = w;
    uint8_t *b = gg_file(3, 0, one_kv, NULL, 0, &n);
    const char *p = write_buf(name, b, n);
    free(b);
    return p;
}

static void kv_huge_key(struct gg *g)
{
    gg_u64(g, 1ull << 62);
    gg_bytes(g, "abcd", 4);
}
static void kv_huge_string(struct gg *g)
{
    gg_key(g, "s", MOE_GGUF_STRING);
    gg_u64(g, 1000);
    gg_bytes(g, "abcd", 4);
}
static void kv_huge_array(struct gg *g)
{
    gg_key(g, "a", MOE_GGUF_ARRAY);
    gg_u32(g, MOE_GGUF_U64);
    gg_u64(g, 1ull << 61); /* 2^61 * 8 wraps to 0 */
}
static void kv_huge_str_array(struct gg *g)
{
    gg_key(g, "tokenizer.ggml.tokens", MOE_GGUF_ARRAY);
    gg_u32(g, MOE_GGUF_STRING);
    gg_u64(g, 1ull << 40);
    gg_str(g, "a");
}
static void kv_str_in_array_past_eof(struct gg *g)
{
    gg_key(g, "a", MOE_GGUF_ARRAY);
    gg_u32(g, MOE_GGUF_STRING);
    gg_u64(g, 2);
    gg_str(g, "a");
    gg_u64(g, 5000);
}
static void kv_bad_type(struct gg *g)
{
    gg_key(g, "k", 13);
    gg_u32(g, 0);
}
static void kv_bad_elem(struct gg *g)
{
    gg_key(g, "k", MOE_GGUF_ARRAY);
    gg_u32(g, 77);
    gg_u64(g, 0);
}
static void kv_deep(struct gg *g)
{
    gg_key(g, "deep", MOE_GGUF_ARRAY);
    for (int i = 0; i < 20; i++) {
        gg_u32(g, MOE_GGUF_ARRAY);
        gg_u64(g, 1);
    }
    gg_u32(g, MOE_GGUF_U8);
    gg_u64(g, 0);
}
static void kv_nul_key(struct gg *g)
{
    gg_u64(g, 3);
    gg_bytes(g, "a\0b", 3);
    gg_u32(g, MOE_GGUF_U8);
    gg_le(g, 0, 1);
}
static void kv_empty_key(struct gg *g)
{
    gg_str(g, "");
    gg_u32(g, MOE_GGUF_U8);
    gg_le(g, 0, 1);
}
static void kv_ctrl_key(struct gg *g)
{
    gg_key(g, "bad\nkey", 99);
}

static void test_gguf_kv_errors(void **state)
{
    gguf_expect_fail(kv_file("k1.gguf", kv_huge_key),
                     "key #0: key length 4611686018427387904 past end of file");
    gguf_expect_fail(kv_file("k2.gguf", kv_huge_string),
                     "key 's': string length 1000 past end of file");
    gguf_expect_fail(kv_file("k3.gguf", kv_huge_array),
                     "key 'a': array of 2305843009213693952 u64 past end of file");
    gguf_expect_fail(kv_file("k4.gguf", kv_huge_str_array),
                     "key 'tokenizer.ggml.tokens': array of 1099511627776 string past end");
    gguf_expect_fail(kv_file("k5.gguf", kv_str_in_array_past_eof),
                     "key 'a': array string length 5000 past end of file");
    gguf_expect_fail(kv_file("k6.gguf", kv_bad_type), "key 'k': unknown value type 13");
    gguf_expect_fail(kv_file("k7.gguf", kv_bad_elem), "key 'k': array of unknown type 77");
    gguf_expect_fail(kv_file("k8.gguf", kv_deep), "key 'deep': arrays nested deeper than 8");
    gguf_expect_fail(kv_file("k9.gguf", kv_nul_key), "key #0: key contains a NUL byte");
    gguf_expect_fail(kv_file("k10.gguf", kv_empty_key), "key #0: empty key");
    gguf_expect_fail(kv_file("k11.gguf", kv_ctrl_key), "key 'bad?key': unknown value type 99");
}

static uint64_t dup_kvs(struct gg *g)
{
    gg_key(g, "general.name", MOE_GGUF_STRING);
    gg_str(g, "a");
    gg_key(g, "x", MOE_GGUF_U8);
    gg_le(g, 0, 1);
    gg_key(g, "general.name", MOE_GGUF_STRING);
    gg_str(g, "b");
    return 3;
}

static uint64_t align_str_kv(struct gg *g)
{
    gg_key(g, "general.alignment", MOE_GGUF_STRING);
    gg_str(g, "32");
    return 1;
}

/* Writes a file of the given tensors and expects open to fail with want. */
static void tensors_expect_fail(const char *name, uint32_t alignment, const struct gt *ts,
                                size_t nt, const char *want)
{
    size_t n;
    uint8_t *b = gg_file(3, alignment, NULL, ts, nt, &n);
    gguf_expect_fail(write_buf(name, b, n), want);
    free(b);
}

static void test_gguf_tensor_errors(void **state)
{
    uint8_t d[256] = {0};
    struct gt ok = {"w", 0, 1, {4}, d, 16, -1};

    struct gt t = ok;
    t.type = 12;
    tensors_expect_fail("t1.gguf", 0, &t, 1, "tensor 'w': unsupported type Q4_K (12)");
    t.type = 2;
    tensors_expect_fail("t1.gguf", 0, &t, 1, "tensor 'w': unsupported type Q4_0 (2)");
    t.type = 4; /* a retired id */
    tensors_expect_fail("t2.gguf", 0, &t, 1, "tensor 'w': unknown ggml type 4");
    t.type = 1000;
    tensors_expect_fail("t2.gguf", 0, &t, 1, "tensor 'w': unknown ggml type 1000");

    t = ok;
    t.offset = 8;
    tensors_expect_fail("t3.gguf", 0, &t, 1,
                        "tensor 'w': offset 8 is not a multiple of the alignment 32");
    t.offset = 32;
    tensors_expect_fail("t3.gguf", 64, &t, 1,
                        "tensor 'w': offset 32 is not a multiple of the alignment 64");

    /* an aligned offset far past the end (no data written for it) */
    t = ok;
    t.data = NULL;
    t.offset = 1ll << 62;
    tensors_expect_fail("t4.gguf", 0, &t, 1, "tensor 'w': data [4611686018427387968, "
                                             "4611686018427387984) past end of file");
    t.offset = INT64_MAX - 31; /* data start + offset wraps */
    tensors_expect_fail("t4.gguf", 0, &t, 1, "tensor 'w': data [");

    struct gt two[2] = {ok, ok};
    two[1] = ok;
    tensors_expect_fail("t5.gguf", 0, two, 2, "tensor 'w': duplicate name (tensors 0 and 1)");

    t = ok;
    t.n_dims = 5;
    tensors_expect_fail("t6.gguf", 0, &t, 1, "tensor 'w': 5 dimensions, at most 4");

    t = ok;
    t.type = 8;
    t.ne[0] = 33;
    tensors_expect_fail("t7.gguf", 0, &t, 1,
                        "tensor 'w': ne[0] = 33 is not a multiple of Q8_0's block of 32");

    t = ok;
    t.n_dims = 2;
    t.ne[0] = 1ull << 32;
    t.ne[1] = 1ull << 32; /* the product wraps to 0 */
    tensors_expect_fail("t8.gguf", 0, &t, 1, "tensor 'w': element count overflows");
    t.n_dims = 1;
    t.ne[0] = 1ull << 63;
    tensors_expect_fail("t8.gguf", 0, &t, 1, "tensor 'w': ne[0] = 9223372036854775808 is too");
    t.ne[0] = 1ull << 62; /* F32: 2^64 bytes */
    tensors_expect_fail("t8.gguf", 0, &t, 1, "tensor 'w': size overflows");

    t = ok;
    t.name = "";
    tensors_expect_fail("t9.gguf", 0, &t, 1, "tensor #0: empty tensor name");

    /* data in the file, but running past its end */
    t = ok;
    t.nbytes = 8; /* writes 8 of the 16 bytes the shape needs */
    tensors_expect_fail("t10.gguf", 0, &t, 1, "tensor 'w': data [");

    tensors_expect_fail("t11.gguf", 3, &ok, 1,
                        "key 'general.alignment': 3 is not a nonzero power of two");
    size_t n2;
    uint8_t *b;
    b = gg_file(3, 0, align_str_kv, &ok, 1, &n2);
    gguf_expect_fail(write_buf("t12.gguf", b, n2),
                     "key 'general.alignment': is string, expected an integer");
    free(b);
    b = gg_file(3, 0, dup_kvs, NULL, 0, &n2);
    gguf_expect_fail(write_buf("t13.gguf", b, n2),
                     "key 'general.name': duplicate key (entries 0 and 2)");
    free(b);

    /* a zero alignment cannot be written through gg_file (0 means "none"):
     * patch it, after the header (24), key (8 + 17) and type (4) */
    b = gg_file(3, 64, NULL, &ok, 1, &n2);
    assert_int_equal(b[24 + 8 + 17 + 4], 64);
    b[24 + 8 + 17 + 4] = 0;
    gguf_expect_fail(write_buf("t14.gguf", b, n2),
                     "key 'general.alignment': 0 is not a nonzero power of two");
    free(b);

    /* general.alignment 1 allows any offset, but elements are still loaded
     * with typed loads: a BF16 tensor at an odd file offset is refused */
    t = ok;
    t.type = 30;
    t.nbytes = 8;
    t.offset = 0;
    b = gg_file(3, 1, NULL, &t, 1, &n2);
    size_t data_start = n2 - t.nbytes;
    free(b);
    t.offset = data_start % 2 ? 0 : 1;
    tensors_expect_fail("t15.gguf", 1, &t, 1, "tensor 'w': data at file offset");
    tensors_expect_fail("t15.gguf", 1, &t, 1,
                        "not a multiple of its BF16 element size (2 bytes): general.alignment 1");
    t.type = 0;
    t.nbytes = 16;
    t.offset = (int64_t)((4 - data_start % 4) % 4 + 2); /* 2 past a multiple of 4 */
    tensors_expect_fail("t15.gguf", 1, &t, 1, "its F32 element size (4 bytes)");
    /* MXFP4 blocks are bytes: any offset will do */
    uint8_t mx[17] = {127};
    struct gt m = {"m", 39, 1, {32}, mx, 17, (int64_t)(data_start % 2 ? 0 : 1)};
    b = gg_file(3, 1, NULL, &m, 1, &n2);
    struct moe_gguf *g;
    int rc = moe_gguf_open(write_buf("t16.gguf", b, n2), &g);
    if (rc < 0)
        print_error("%s\n", moe_err_msg());
    assert_int_equal(rc, 0);
    assert_int_equal((uintptr_t)moe_gguf_find_tensor(g, "m")->data % 2, 1); /* odd, as meant */
    moe_gguf_close(g);
    free(b);
}

static void test_gguf_zero_sized(void **state)
{
    /* empty and scalar tensors are fine */
    float one = 1.0f;
    struct gt ts[2] = {
        {"empty", 0, 2, {0, 5}, NULL, 0, -1},
        {"scalar", 0, 0, {0}, &one, 4, -1},
    };
    size_t n;
    uint8_t *b = gg_file(3, 0, NULL, ts, 2, &n);
    const char *p = write_buf("zero.gguf", b, n);
    struct moe_gguf *g;
    assert_int_equal(moe_gguf_open(p, &g), 0);
    const struct moe_tensor_info *t = moe_gguf_find_tensor(g, "empty");
    assert_int_equal(t->nbytes, 0);
    assert_int_equal(t->dims[0], 5);
    assert_int_equal(t->dims[1], 0);
    t = moe_gguf_find_tensor(g, "scalar");
    assert_int_equal(t->n_dims, 0);
    assert_int_equal(t->nbytes, 4);
    assert_memory_equal(t->data, &one, 4);
    moe_gguf_close(g);
    free(b);
}

/* The llama SentencePiece vocabulary that the tokenizer tests use. */
static void test_gguf_llama_vocab(void **state)
{
    const char *p = moe_test_path("tests/data/tokenizers/ggml-vocab-llama-spm.gguf");
    struct moe_gguf *g;
    int rc = moe_gguf_open(p, &g);
    if (rc < 0)
        print_error("%s\n", moe_err_msg());
    assert_int_equal(rc, 0);
    struct moe_gguf_str s;
    assert_int_equal(moe_gguf_get_str(g, "tokenizer.ggml.model", &s), 0);
    assert_int_equal(s.len, 5);
    assert_memory_equal(s.ptr, "llama", 5);

    const struct moe_gguf_str *toks;
    uint64_t n;
    assert_int_equal(moe_gguf_get_str_array(g, "tokenizer.ggml.tokens", &toks, &n), 0);
    assert_int_equal(n, 32000);
    assert_int_equal(toks[0].len, 5);
    assert_memory_equal(toks[0].ptr, "<unk>", 5);
    assert_int_equal(toks[1].len, 3);
    assert_memory_equal(toks[1].ptr, "<s>", 3);

    enum moe_gguf_type et;
    const void *data;
    assert_int_equal(moe_gguf_get_array(g, "tokenizer.ggml.scores", &et, &data, &n), 0);
    assert_int_equal(et, MOE_GGUF_F32);
    assert_int_equal(n, 32000);
    uint32_t u;
    assert_int_equal(moe_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &u), 0);
    assert_int_equal(u, 1);
    assert_int_equal(moe_gguf_tensor_count(g), 0);
    moe_gguf_close(g);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int cleanup(void **state)
{
    return nftw(moe_test_tmpdir(), rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gguf_valid),
        cmocka_unit_test(test_gguf_no_tensors),
        cmocka_unit_test(test_gguf_missing_and_empty),
        cmocka_unit_test(test_gguf_header_errors),
        cmocka_unit_test(test_gguf_truncated_everywhere),
        cmocka_unit_test(test_gguf_kv_errors),
        cmocka_unit_test(test_gguf_tensor_errors),
        cmocka_unit_test(test_gguf_zero_sized),
        cmocka_unit_test(test_gguf_llama_vocab),
    };
    return cmocka_run_group_tests(tests, NULL, cleanup);
}
