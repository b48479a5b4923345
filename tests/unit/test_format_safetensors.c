/* Safetensors reader: valid single files and sharded directories built here,
 * every kind of broken file (each failure checked for its message), and the
 * bundled tiny-moe model. */
#define _GNU_SOURCE /* nftw */
#include "tests/unit/test.h"

#include <errno.h>
#include <ftw.h>
#include <sys/stat.h>

#include "common/common.h"
#include "format/format.h"

/* "<tmpdir>/<name>", static (tests are single-threaded) */
static const char *tpath(const char *name)
{
    static char buf[4][512];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", moe_test_tmpdir(), name);
    return buf[i];
}

/* A safetensors file: 8-byte LE header length, JSON, then the data. The
 * JSON is padded with spaces to a multiple of 8 bytes, as the safetensors
 * library writes it (so data offsets that are multiples of the element size
 * are aligned in the file), unless pad is false. *n gets the size. */
static uint8_t *st_bytes(const char *json, const void *data, size_t dlen, bool pad, size_t *n)
{
    size_t jl = strlen(json), hl = pad ? (jl + 7) / 8 * 8 : jl;
    uint8_t *buf = malloc(8 + hl + dlen);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, json, jl);
    memset(buf + 8 + jl, ' ', hl - jl);
    if (dlen)
        memcpy(buf + 8 + hl, data, dlen);
    *n = 8 + hl + dlen;
    return buf;
}

static void st_write_pad(const char *path, const char *json, const void *data, size_t dlen,
                         bool pad)
{
    size_t n;
    uint8_t *buf = st_bytes(json, data, dlen, pad, &n);
    moe_test_write_file(path, buf, n);
    free(buf);
}

static void st_write(const char *path, const char *json, const void *data, size_t dlen)
{
    st_write_pad(path, json, data, dlen, true);
}

/* Expects opening path to fail with a message holding path and want. */
static void st_expect_fail(const char *path, const char *want)
{
    struct moe_safetensors *st = (void *)1;
    moe_err_clear();
    int rc = moe_safetensors_open_file(path, &st);
    if (rc >= 0 || !strstr(moe_err_msg(), want) || !strstr(moe_err_msg(), path))
        print_error("open %s: rc %d, message '%s', wanted '%s'\n", path, rc, moe_err_msg(),
                    want);
    assert_true(rc < 0);
    assert_null(st);
    assert_non_null(strstr(moe_err_msg(), want));
    assert_non_null(strstr(moe_err_msg(), path));
    assert_null(strchr(moe_err_msg(), '\n'));
}

/* The valid file: F32 [2,3] 0..5, F16 [4], BF16 [2,2], I64 [3], an F32
 * scalar and an empty [0,4] tensor, written out of offset order. */
static float valid_f32[6] = {0, 1, 2, 3, 4, 5};
static float valid_f16[4] = {0.5f, -1.0f, 2.0f, 65504.0f};
static float valid_bf16[4] = {1.0f, -2.0f, 3.5f, 1e30f};
static const char valid_json[] =
    "{\"__metadata__\":{\"format\":\"pt\"},"
    "\"b.f16\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
    "\"a.f32\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
    "\"c.bf16\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[32,40]},"
    "\"d.i64\":{\"dtype\":\"I64\",\"shape\":[3],\"data_offsets\":[40,64]},"
    "\"e.scalar\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[64,68]},"
    "\"f.empty\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[68,68]}}";
#define VALID_DATA_BYTES 68

static void valid_data(uint8_t *d)
{
    memcpy(d, valid_f32, 24);
    for (int i = 0; i < 4; i++) {
        uint16_t h = moe_f32_to_f16(valid_f16[i]);
        memcpy(d + 24 + 2 * i, &h, 2);
        h = moe_f32_to_bf16(valid_bf16[i]);
        memcpy(d + 32 + 2 * i, &h, 2);
    }
    int64_t iv[3] = {-1, 0, 1LL << 40};
    memcpy(d + 40, iv, 24);
    float s = 42.0f;
    memcpy(d + 64, &s, 4);
}

static const char *write_valid(const char *name)
{
    uint8_t d[VALID_DATA_BYTES];
    valid_data(d);
    const char *p = tpath(name);
    st_write(p, valid_json, d, sizeof(d));
    return p;
}

static void test_st_valid_single(void **state)
{
    const char *path = write_valid("valid.safetensors");
    struct moe_safetensors *st;
    assert_int_equal(moe_safetensors_open_file(path, &st), 0);
    assert_int_equal(moe_safetensors_count(st), 6);

    /* file order (by offset), not header order */
    assert_string_equal(moe_safetensors_at(st, 0)->name, "a.f32");
    assert_string_equal(moe_safetensors_at(st, 1)->name, "b.f16");
    assert_null(moe_safetensors_at(st, 6));

    const struct moe_tensor_info *t = moe_safetensors_find(st, "a.f32");
    assert_non_null(t);
    assert_int_equal(t->dtype, MOE_DTYPE_F32);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->dims[0], 2);
    assert_int_equal(t->dims[1], 3);
    assert_int_equal(t->nbytes, 24);
    assert_string_equal(t->file, path);
    float f[6];
    memcpy(f, t->data, 24);
    for (int i = 0; i < 6; i++)
        assert_true(f[i] == valid_f32[i]);

    t = moe_safetensors_find(st, "b.f16");
    assert_non_null(t);
    assert_int_equal(t->dtype, MOE_DTYPE_F16);
    assert_int_equal(t->n_dims, 1);
    assert_int_equal(t->dims[0], 4);
    for (int i = 0; i < 4; i++) {
        uint16_t h;
        memcpy(&h, (const uint8_t *)t->data + 2 * i, 2);
        assert_true(moe_f16_to_f32(h) == valid_f16[i]);
    }

    t = moe_safetensors_find(st, "c.bf16");
    assert_non_null(t);
    assert_int_equal(t->dtype, MOE_DTYPE_BF16);
    for (int i = 0; i < 4; i++) {
        uint16_t h;
        memcpy(&h, (const uint8_t *)t->data + 2 * i, 2);
        assert_true(moe_bf16_to_f32(h) == moe_bf16_to_f32(moe_f32_to_bf16(valid_bf16[i])));
    }

    t = moe_safetensors_find(st, "d.i64");
    assert_non_null(t);
    assert_int_equal(t->dtype, MOE_DTYPE_OTHER);
    assert_int_equal(t->nbytes, 24);
    int64_t iv;
    memcpy(&iv, (const uint8_t *)t->data + 16, 8);
    assert_true(iv == 1LL << 40);

    t = moe_safetensors_find(st, "e.scalar");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 0);
    assert_int_equal(t->nbytes, 4);

    t = moe_safetensors_find(st, "f.empty");
    assert_non_null(t);
    assert_int_equal(t->nbytes, 0);
    assert_int_equal(t->dims[0], 0);
    assert_int_equal(t->dims[1], 4);

    assert_null(moe_safetensors_find(st, "__metadata__"));
    assert_null(moe_safetensors_find(st, "nope"));
    moe_safetensors_close(st);
    moe_safetensors_close(NULL);
}

static void test_st_other_dtypes(void **state)
{
    /* every non-compute dtype keeps its size; F4 packs two per byte */
    static const char json[] =
        "{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]},"
        "\"j\":{\"dtype\":\"U64\",\"shape\":[1],\"data_offsets\":[8,16]},"
        "\"b\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[16,20]},"
        "\"k\":{\"dtype\":\"U32\",\"shape\":[1],\"data_offsets\":[20,24]},"
        "\"c\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[24,26]},"
        "\"d\":{\"dtype\":\"U16\",\"shape\":[1],\"data_offsets\":[26,28]},"
        "\"e\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[28,30]},"
        "\"f\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[30,32]},"
        "\"g\":{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[32,34]},"
        "\"h\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[34,36]},"
        "\"i\":{\"dtype\":\"F8_E5M2\",\"shape\":[2],\"data_offsets\":[36,38]},"
        "\"l\":{\"dtype\":\"F4\",\"shape\":[2,2],\"data_offsets\":[38,40]}}";
    uint8_t d[40] = {0};
    const char *path = tpath("other.safetensors");
    st_write(path, json, d, sizeof(d));
    struct moe_safetensors *st;
    assert_int_equal(moe_safetensors_open_file(path, &st), 0);
    assert_int_equal(moe_safetensors_count(st), 12);
    for (size_t i = 0; i < moe_safetensors_count(st); i++)
        assert_int_equal(moe_safetensors_at(st, i)->dtype, MOE_DTYPE_OTHER);
    assert_int_equal(moe_safetensors_find(st, "l")->nbytes, 2);
    moe_safetensors_close(st);
}

static void test_st_missing_file(void **state)
{
    const char *p = tpath("does-not-exist.safetensors");
    st_expect_fail(p, "cannot open: No such file or directory");
    struct moe_safetensors *st;
    assert_int_equal(moe_safetensors_open_file(p, &st), -ENOENT);
}

static void test_st_empty_file(void **state)
{
    const char *p = tpath("empty.safetensors");
    moe_test_write_file(p, "", 0);
    st_expect_fail(p, "empty file");
}

static void test_st_short_file(void **state)
{
    const char *p = tpath("short.safetensors");
    moe_test_write_file(p, "\x10\0\0\0", 4);
    st_expect_fail(p, "truncated: file has 4 bytes");
}

static void test_st_header_past_eof(void **state)
{
    uint8_t buf[100] = {0};
    buf[0] = 1234 & 0xff;
    buf[1] = 1234 >> 8;
    const char *p = tpath("hdrlen.safetensors");
    moe_test_write_file(p, buf, sizeof(buf));
    st_expect_fail(p, "truncated: header says 1234 bytes, file has 100");

    /* a length near 2^64 must not wrap */
    memset(buf, 0xff, 8);
    moe_test_write_file(p, buf, sizeof(buf));
    st_expect_fail(p, "truncated: header says 18446744073709551615 bytes");
}

/* Every prefix of a valid file is refused, cleanly. */
static void test_st_truncated_everywhere(void **state)
{
    uint8_t d[VALID_DATA_BYTES];
    valid_data(d);
    size_t n;
    uint8_t *full = st_bytes(valid_json, d, sizeof(d), true, &n);
    const char *p = tpath("trunc.safetensors");
    for (size_t len = 0; len < n; len++) {
        moe_test_write_file(p, full, len);
        struct moe_safetensors *st = (void *)1;
        moe_err_clear();
        int rc = moe_safetensors_open_file(p, &st);
        if (rc >= 0)
            print_error("prefix of %zu bytes opened\n", len);
        assert_true(rc < 0);
        assert_null(st);
        assert_non_null(strstr(moe_err_msg(), p));
    }
    moe_test_write_file(p, full, n);
    struct moe_safetensors *st;
    assert_int_equal(moe_safetensors_open_file(p, &st), 0);
    moe_safetensors_close(st);
    free(full);
}

/* Broken headers over 16 zero data bytes, each with the words its message
 * must hold. */
static const struct {
    const char *json, *want;
} bad_headers[] = {
    {"{\"a\":", "bad JSON header"},
    {"", "bad JSON header"},
    {"[1,2]", "JSON is not an object"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
     "duplicate"},
    {"{\"w\":1}", "tensor 'w': entry is not an object"},
    {"{\"w\":{\"shape\":[4],\"data_offsets\":[0,16]}}", "tensor 'w': no \"dtype\""},
    {"{\"w\":{\"dtype\":\"F7\",\"shape\":[4],\"data_offsets\":[0,16]}}",
     "tensor 'w': unknown dtype 'F7'"},
    {"{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,16]}}", "tensor 'w': no \"shape\""},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}",
     "tensor 'w': shape[0] is not a non-negative integer"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4.0],\"data_offsets\":[0,16]}}",
     "shape[0] is not a non-negative integer"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,4],\"data_offsets\":[0,16]}}",
     "tensor 'w': 6 dimensions"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,16]}}",
     "tensor 'w': shape too large"},
    {"{\"w\":{\"dtype\":\"U8\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,16]}}",
     "tensor 'w': shape too large"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4]}}", "tensor 'w': \"data_offsets\""},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0]}}",
     "tensor 'w': \"data_offsets\""},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[-8,8]}}",
     "tensor 'w': \"data_offsets\""},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,20]}}",
     "tensor 'w': data_offsets [0, 20) past end of data section (16 bytes)"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,0]}}",
     "tensor 'w': data_offsets [16, 0): end before begin"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}",
     "tensor 'w': size mismatch: shape needs 12 bytes of F32, data_offsets span 16"},
    {"{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,4],\"data_offsets\":[0,8]}}",
     "tensor 'w': size mismatch: shape needs 16 bytes of BF16, data_offsets span 8"},
    {"{\"w\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}",
     "tensor 'w': 3 elements of F4 are not a whole number of bytes"},
    {"{\"bad\\nname\":{\"dtype\":\"F9\",\"shape\":[4],\"data_offsets\":[0,16]}}",
     "tensor 'bad?name': unknown dtype"},
};

static void test_st_bad_headers(void **state)
{
    uint8_t d[16] = {0};
    const char *p = tpath("bad.safetensors");
    for (size_t i = 0; i < MOE_ARRAY_SIZE(bad_headers); i++) {
        st_write(p, bad_headers[i].json, d, sizeof(d));
        st_expect_fail(p, bad_headers[i].want);
    }
}

/* Tensors must start on a multiple of their element size in the file (the
 * readers load elements with typed loads): an unpadded header shifts every
 * tensor, a data offset can shift one; byte and sub-byte dtypes go anywhere. */
static void test_st_misaligned(void **state)
{
    uint8_t d[VALID_DATA_BYTES];
    valid_data(d);
    const char *p = tpath("misaligned.safetensors");
    /* unpadded, the data section starts at 8 + 397: every tensor is shifted */
    assert_true(strlen(valid_json) % 8 != 0);
    st_write_pad(p, valid_json, d, sizeof(d), false);
    st_expect_fail(p, "is not a multiple of its");
    st_expect_fail(p, "the file is misaligned");

    uint8_t z[20] = {0};
    st_write(p, "{\"w\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[1,5]}}", z, 8);
    st_expect_fail(p, "tensor 'w': data at file offset");
    st_expect_fail(p, "BF16 element size (2 bytes)");
    st_write(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[2,10]}}", z, 12);
    st_expect_fail(p, "tensor 'w': data at file offset");
    st_write(p, "{\"w\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[4,12]}}", z, 12);
    st_expect_fail(p, "I64 element size (8 bytes)");
    st_write(p, "{\"w\":{\"dtype\":\"C64\",\"shape\":[1],\"data_offsets\":[4,12]}}", z, 12);
    st_expect_fail(p, "C64 element size (8 bytes)");

    /* U8, BOOL, F8 and F4 data may start on any byte */
    st_write(p,
             "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
             "\"b\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[3,4]},"
             "\"c\":{\"dtype\":\"F4\",\"shape\":[2],\"data_offsets\":[5,6]},"
             "\"e\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[6,8]},"
             "\"f\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
             z, 12);
    struct moe_safetensors *st;
    int rc = moe_safetensors_open_file(p, &st);
    if (rc < 0)
        print_error("%s\n", moe_err_msg());
    assert_int_equal(rc, 0);
    for (size_t i = 0; i < moe_safetensors_count(st); i++) {
        const struct moe_tensor_info *t = moe_safetensors_at(st, i);
        size_t es = t->dtype == MOE_DTYPE_F32 ? 4 : t->dtype == MOE_DTYPE_F16 ? 2 : 1;
        assert_int_equal((uintptr_t)t->data % es, 0);
    }
    moe_safetensors_close(st);
}

static void mkdir_p(const char *path)
{
    assert_true(mkdir(path, 0755) == 0 || errno == EEXIST);
}

/* Two shards and an index naming them; the second shard holds two tensors. */
static const char *make_sharded(const char *name, const char *index_json)
{
    static char dir[512];
    snprintf(dir, sizeof(dir), "%s", tpath(name));
    mkdir_p(dir);
    char p[600];
    float a[2] = {1, 2}, b[3] = {3, 4, 5};
    snprintf(p, sizeof(p), "%s/model-00001-of-00002.safetensors", dir);
    st_write(p, "{\"x.weight\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", a,
             sizeof(a));
    snprintf(p, sizeof(p), "%s/model-00002-of-00002.safetensors", dir);
    st_write(p,
             "{\"y.weight\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]},"
             "\"z.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
             b, sizeof(b));
    snprintf(p, sizeof(p), "%s/model.safetensors.index.json", dir);
    moe_test_write_file(p, index_json, strlen(index_json));
    return dir;
}

static const char good_index[] =
    "{\"metadata\":{\"total_size\":20},\"weight_map\":{"
    "\"z.weight\":\"model-00002-of-00002.safetensors\","
    "\"x.weight\":\"model-00001-of-00002.safetensors\","
    "\"y.weight\":\"model-00002-of-00002.safetensors\"}}";

static void test_st_sharded(void **state)
{
    const char *dir = make_sharded("sharded", good_index);
    struct moe_safetensors *st;
    int rc = moe_safetensors_open_dir(dir, &st);
    if (rc < 0)
        print_error("%s\n", moe_err_msg());
    assert_int_equal(rc, 0);
    assert_int_equal(moe_safetensors_count(st), 3);
    /* shards open in name order */
    assert_string_equal(moe_safetensors_at(st, 0)->name, "x.weight");
    const struct moe_tensor_info *t = moe_safetensors_find(st, "z.weight");
    assert_non_null(t);
    assert_non_null(strstr(t->file, "model-00002-of-00002.safetensors"));
    float f;
    memcpy(&f, t->data, 4);
    assert_true(f == 5.0f);
    t = moe_safetensors_find(st, "x.weight");
    assert_non_null(t);
    assert_non_null(strstr(t->file, "model-00001-of-00002.safetensors"));
    memcpy(&f, (const uint8_t *)t->data + 4, 4);
    assert_true(f == 2.0f);
    t = moe_safetensors_find(st, "y.weight");
    assert_int_equal(t->dims[0], 1);
    assert_int_equal(t->dims[1], 2);
    moe_safetensors_close(st);
}

static void st_dir_expect_fail(const char *dir, const char *want1, const char *want2)
{
    struct moe_safetensors *st = (void *)1;
    moe_err_clear();
    int rc = moe_safetensors_open_dir(dir, &st);
    if (rc >= 0 || !strstr(moe_err_msg(), want1) || (want2 && !strstr(moe_err_msg(), want2)))
        print_error("open_dir %s: rc %d, message '%s'\n", dir, rc, moe_err_msg());
    assert_true(rc < 0);
    assert_null(st);
    assert_non_null(strstr(moe_err_msg(), want1));
    if (want2)
        assert_non_null(strstr(moe_err_msg(), want2));
}

static void test_st_sharded_errors(void **state)
{
    /* a shard the index names is not there */
    const char *dir = make_sharded(
        "shard-missing", "{\"weight_map\":{\"x.weight\":\"model-00001-of-00002.safetensors\","
                         "\"q.weight\":\"model-00003-of-00003.safetensors\"}}");
    st_dir_expect_fail(dir, "model-00003-of-00003.safetensors: cannot open: No such file", NULL);

    /* the index names a tensor its shard lacks: both are named */
    dir = make_sharded("tensor-missing",
                       "{\"weight_map\":{\"x.weight\":\"model-00001-of-00002.safetensors\","
                       "\"w.weight\":\"model-00002-of-00002.safetensors\"}}");
    st_dir_expect_fail(dir, "model-00002-of-00002.safetensors: tensor 'w.weight': listed in",
                       "model.safetensors.index.json but missing from that shard");

    /* ... or places it in the wrong shard */
    dir = make_sharded("tensor-elsewhere",
                       "{\"weight_map\":{\"x.weight\":\"model-00002-of-00002.safetensors\"}}");
    st_dir_expect_fail(dir, "tensor 'x.weight': listed in", "missing from that shard");

    dir = make_sharded("index-bad-json", "{\"weight_map\":");
    st_dir_expect_fail(dir, "model.safetensors.index.json: bad JSON index", NULL);

    dir = make_sharded("index-no-map", "{\"metadata\":{}}");
    st_dir_expect_fail(dir, "index.json: no \"weight_map\"", NULL);

    dir = make_sharded("index-escape",
                       "{\"weight_map\":{\"x.weight\":\"../valid.safetensors\"}}");
    st_dir_expect_fail(dir, "tensor 'x.weight': shard is not a file name inside", NULL);

    dir = make_sharded("index-absolute", "{\"weight_map\":{\"x.weight\":\"/etc/passwd\"}}");
    st_dir_expect_fail(dir, "shard is not a file name inside", NULL);

    /* shard names end up in messages, which must stay one line */
    dir = make_sharded("index-newline",
                       "{\"weight_map\":{\"x.weight\":\"a\\nb.safetensors\"}}");
    st_dir_expect_fail(dir, "shard is not a file name inside", NULL);

    dir = make_sharded("index-number", "{\"weight_map\":{\"x.weight\":7}}");
    st_dir_expect_fail(dir, "shard is not a file name inside", NULL);

    /* the same tensor in two shards */
    dir = make_sharded("dup-across", good_index);
    char p[600];
    float a[2] = {0};
    snprintf(p, sizeof(p), "%s/model-00002-of-00002.safetensors", dir);
    st_write(p,
             "{\"y.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"z.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
             "\"x.weight\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]}}",
             a, sizeof(a));
    st_dir_expect_fail(dir, "tensor 'x.weight': also in", "model-00001-of-00002.safetensors");

    /* a broken shard names itself */
    dir = make_sharded("bad-shard", good_index);
    snprintf(p, sizeof(p), "%s/model-00001-of-00002.safetensors", dir);
    moe_test_write_file(p, "\x05\0\0\0\0\0\0\0{\"a\":", 13);
    st_dir_expect_fail(dir, "model-00001-of-00002.safetensors: bad JSON header", NULL);
}

static void test_st_dir_single_and_missing(void **state)
{
    const char *dir = tpath("single-dir");
    mkdir_p(dir);
    st_dir_expect_fail(dir, dir, "no model.safetensors or model.safetensors.index.json");

    char p[600];
    snprintf(p, sizeof(p), "%s/model.safetensors", dir);
    float a[2] = {7, 8};
    st_write(p, "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", a, 8);
    struct moe_safetensors *st;
    assert_int_equal(moe_safetensors_open_dir(dir, &st), 0);
    assert_int_equal(moe_safetensors_count(st), 1);
    assert_non_null(strstr(moe_safetensors_find(st, "t")->file, "single-dir/model.safetensors"));
    moe_safetensors_close(st);

    const char *gone = tpath("no-such-dir");
    st_dir_expect_fail(gone, gone, "cannot open: No such file or directory");
    const char *file = write_valid("not-a-dir.safetensors");
    st_dir_expect_fail(file, file, "not a directory");
}

/* The bundled model: a 4-layer, 8-expert Mixtral in BF16. */
static void test_st_tiny_moe(void **state)
{
    struct moe_safetensors *st;
    const char *path = moe_test_path("models/tiny-moe/model.safetensors");
    int rc = moe_safetensors_open_file(path, &st);
    if (rc < 0)
        print_error("%s\n", moe_err_msg());
    assert_int_equal(rc, 0);
    /* 3 global + 4 layers x (4 attention + 2 norms + gate + 8 experts x 3) */
    assert_int_equal(moe_safetensors_count(st), 3 + 4 * (7 + 8 * 3));

    const struct moe_tensor_info *t = moe_safetensors_find(st, "model.embed_tokens.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, MOE_DTYPE_BF16);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->dims[0], 1024);
    assert_int_equal(t->dims[1], 256);
    assert_int_equal(t->nbytes, 1024 * 256 * 2);

    for (int l = 0; l < 4; l++) {
        for (int e = 0; e < 8; e++) {
            char name[128];
            snprintf(name, sizeof(name),
                     "model.layers.%d.block_sparse_moe.experts.%d.w1.weight", l, e);
            t = moe_safetensors_find(st, name);
            assert_non_null(t);
            assert_int_equal(t->dims[0], 512);
            assert_int_equal(t->dims[1], 256);
            snprintf(name, sizeof(name),
                     "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", l, e);
            t = moe_safetensors_find(st, name);
            assert_non_null(t);
            assert_int_equal(t->dims[0], 256);
            assert_int_equal(t->dims[1], 512);
        }
        char name[128];
        snprintf(name, sizeof(name), "model.layers.%d.block_sparse_moe.gate.weight", l);
        t = moe_safetensors_find(st, name);
        assert_non_null(t);
        assert_int_equal(t->dims[0], 8); /* one router row per expert */
        assert_int_equal(t->dims[1], 256);
        snprintf(name, sizeof(name), "model.layers.%d.block_sparse_moe.experts.8.w1.weight", l);
        assert_null(moe_safetensors_find(st, name));
    }
    /* tensors tile the data section in offset order */
    for (size_t i = 1; i < moe_safetensors_count(st); i++) {
        const struct moe_tensor_info *a = moe_safetensors_at(st, i - 1);
        const struct moe_tensor_info *b = moe_safetensors_at(st, i);
        assert_ptr_equal((const uint8_t *)a->data + a->nbytes, b->data);
    }
    moe_safetensors_close(st);

    /* and through the directory entry point */
    assert_int_equal(moe_safetensors_open_dir(moe_test_path("models/tiny-moe"), &st), 0);
    assert_int_equal(moe_safetensors_count(st), 127);
    moe_safetensors_close(st);
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
        cmocka_unit_test(test_st_valid_single),
        cmocka_unit_test(test_st_other_dtypes),
        cmocka_unit_test(test_st_missing_file),
        cmocka_unit_test(test_st_empty_file),
        cmocka_unit_test(test_st_short_file),
        cmocka_unit_test(test_st_header_past_eof),
        cmocka_unit_test(test_st_truncated_everywhere),
        cmocka_unit_test(test_st_bad_headers),
        cmocka_unit_test(test_st_misaligned),
        cmocka_unit_test(test_st_sharded),
        cmocka_unit_test(test_st_sharded_errors),
        cmocka_unit_test(test_st_dir_single_and_missing),
        cmocka_unit_test(test_st_tiny_moe),
    };
    return cmocka_run_group_tests(tests, NULL, cleanup);
}
