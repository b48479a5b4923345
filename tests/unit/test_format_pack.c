/* format: the moed pack. Round trip, alignment, atomic commit, and the
 * reader's refusals (newer version, bad magic, header checksum, truncation,
 * corrupt expert, duplicates), each with the message an operator needs; a
 * range used sparsely leaves the page cache and comes back a page at a time. */
#include "tests/unit/test.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>

#include "common/common.h"
#include "format/format_pack.h"

static char *mkpath(const char *sub, const char *name)
{
    static char buf[4][512];
    static int i;
    i = (i + 1) % 4;
    char dir[300];
    snprintf(dir, sizeof(dir), "%s/%s", moe_test_tmpdir(), sub);
    mkdir(dir, 0755);
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", dir, name);
    return buf[i];
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static void fill(void *p, size_t n, unsigned seed)
{
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        b[i] = (uint8_t)(seed >> 16);
    }
}

static uint16_t gate_d[48 * 32], up_d[48 * 32], down_d[32 * 48];

/* tensors a (f32 [2,3]), b (bf16 [5]), q (q8_0 [2, 64]); blob tok; experts
 * (0,0), (0,1), (1,0) of bf16 [48,32] x2 + [32,48] */
static void write_sample(const char *path)
{
    struct moe_pack_writer *w;
    assert_int_equal(moe_pack_writer_open(path, &w), 0);
    float a[6] = {1, 2, 3, 4, 5, 6};
    uint16_t b[5] = {1, 2, 3, 4, 5};
    uint8_t q[2 * 2 * 34];
    fill(q, sizeof(q), 7);
    int64_t da[2] = {2, 3}, db[1] = {5}, dq[2] = {2, 64};
    assert_int_equal(moe_pack_writer_add_tensor(w, "a", MOE_DTYPE_F32, 2, da, a, sizeof(a)), 0);
    assert_int_equal(moe_pack_writer_add_tensor(w, "b", MOE_DTYPE_BF16, 1, db, b, sizeof(b)), 0);
    assert_int_equal(moe_pack_writer_add_tensor(w, "q", MOE_DTYPE_Q8_0, 2, dq, q, sizeof(q)), 0);
    assert_int_equal(moe_pack_writer_add_blob(w, "tok", "hello", 5), 0);
    for (int l = 0; l < 2; l++)
        for (int e = 0; e < (l ? 1 : 2); e++) {
            fill(gate_d, sizeof(gate_d), 100 * l + e + 50);
            fill(up_d, sizeof(up_d), 200 * l + e);
            fill(down_d, sizeof(down_d), 300 * l + e);
            struct moe_pack_part parts[3] = {
                {"down", MOE_DTYPE_BF16, 32, 48, down_d, sizeof(down_d)},
                {"gate", MOE_DTYPE_BF16, 48, 32, gate_d, sizeof(gate_d)},
                {"up", MOE_DTYPE_BF16, 48, 32, up_d, sizeof(up_d)},
            };
            assert_int_equal(moe_pack_writer_add_expert(w, l, e, parts, 3), 0);
        }
    assert_int_equal(moe_pack_writer_set_json(w, "config", json_pack("{s:i}", "hidden", 32)), 0);
    assert_int_equal(moe_pack_writer_set_json(w, "meta", json_pack("{s:s}", "src", "x")), 0);
    assert_int_equal(moe_pack_writer_commit(w), 0);
}

static void test_round_trip(void **state)
{
    (void)state;
    const char *path = mkpath("rt", "a.pack");
    write_sample(path);
    assert_int_equal(count_entries(mkpath("rt", "")), 1); /* no temporary left */

    struct moe_pack *p;
    assert_int_equal(moe_pack_open(path, &p), 0);
    assert_int_equal(moe_pack_version(p), 1);
    assert_int_equal(json_integer_value(json_object_get(moe_pack_config(p), "hidden")), 32);
    assert_string_equal(json_string_value(json_object_get(moe_pack_meta(p), "src")), "x");
    assert_int_equal(json_object_size(moe_pack_quant(p)), 0);

    assert_int_equal(moe_pack_tensor_count(p), 3);
    const struct moe_tensor_info *a = moe_pack_find_tensor(p, "a");
    assert_non_null(a);
    assert_int_equal(a->dtype, MOE_DTYPE_F32);
    assert_int_equal(a->n_dims, 2);
    assert_int_equal(a->dims[1], 3);
    assert_int_equal(a->nbytes, 24);
    assert_int_equal(((const float *)a->data)[5], 6);
    const struct moe_tensor_info *q = moe_pack_find_tensor(p, "q");
    assert_int_equal(q->dtype, MOE_DTYPE_Q8_0);
    assert_int_equal(q->nbytes, 2 * 2 * 34);
    for (size_t i = 0; i < moe_pack_tensor_count(p); i++) {
        const struct moe_tensor_info *t = moe_pack_tensor_at(p, i);
        assert_int_equal(((uintptr_t)t->data) % MOE_PACK_TENSOR_ALIGN, 0);
    }
    assert_null(moe_pack_find_tensor(p, "nope"));

    const struct moe_pack_blob *b = moe_pack_find_blob(p, "tok");
    assert_non_null(b);
    assert_int_equal(b->size, 5);
    assert_memory_equal(b->data, "hello", 5);

    assert_int_equal(moe_pack_expert_count(p), 3);
    const struct moe_pack_expert *e = moe_pack_find_expert(p, 0, 1);
    assert_non_null(e);
    assert_int_equal(e->offset % MOE_PACK_EXPERT_ALIGN, 0);
    assert_int_equal(e->size % MOE_PACK_EXPERT_ALIGN, 0);
    assert_int_equal(e->n_parts, 3);
    assert_string_equal(e->parts[MOE_PACK_PART_GATE].name, "gate");
    assert_string_equal(e->parts[MOE_PACK_PART_DOWN].name, "down");
    assert_int_equal(e->parts[MOE_PACK_PART_DOWN].rows, 32);
    assert_int_equal(e->parts[MOE_PACK_PART_DOWN].cols, 48);
    fill(gate_d, sizeof(gate_d), 100 * 0 + 1 + 50);
    fill(down_d, sizeof(down_d), 300 * 0 + 1);
    for (int k = 0; k < 3; k++) {
        assert_int_equal(e->parts[k].offset % MOE_PACK_TENSOR_ALIGN, 0);
        assert_true(e->parts[k].offset + e->parts[k].size <= e->size);
    }
    assert_memory_equal((const uint8_t *)e->data + e->parts[0].offset, gate_d, sizeof(gate_d));
    assert_memory_equal((const uint8_t *)e->data + e->parts[2].offset, down_d, sizeof(down_d));
    assert_ptr_equal(moe_pack_expert_part(e, "up"), &e->parts[1]);
    assert_null(moe_pack_find_expert(p, 1, 1));
    assert_null(moe_pack_find_expert(p, 2, 0));
    assert_int_equal(moe_pack_verify_all(p), 0);
    assert_int_equal(moe_pack_verify_expert(p, 1, 0), 0);
    assert_int_equal(moe_pack_verify_expert(p, 5, 0), -ENOENT);
    moe_pack_close(p);
}

static void test_abort_leaves_nothing(void **state)
{
    (void)state;
    const char *path = mkpath("abort", "a.pack");
    struct moe_pack_writer *w;
    assert_int_equal(moe_pack_writer_open(path, &w), 0);
    assert_int_equal(moe_pack_writer_add_blob(w, "x", "abc", 3), 0);
    assert_int_equal(count_entries(mkpath("abort", "")), 1); /* the temporary only */
    assert_int_not_equal(access(path, F_OK), 0);
    moe_pack_writer_abort(w);
    assert_int_equal(count_entries(mkpath("abort", "")), 0);
}

static void test_duplicates_rejected_by_writer(void **state)
{
    (void)state;
    const char *path = mkpath("dupw", "a.pack");
    struct moe_pack_writer *w;
    assert_int_equal(moe_pack_writer_open(path, &w), 0);
    float v = 1;
    int64_t d = 1;
    assert_int_equal(moe_pack_writer_add_tensor(w, "t", MOE_DTYPE_F32, 1, &d, &v, 4), 0);
    assert_int_equal(moe_pack_writer_add_tensor(w, "t", MOE_DTYPE_F32, 1, &d, &v, 4), -EEXIST);
    assert_non_null(strstr(moe_err_msg(), "tensor 't': added twice"));
    assert_int_equal(moe_pack_writer_add_blob(w, "b", "x", 1), 0);
    assert_int_equal(moe_pack_writer_add_blob(w, "b", "x", 1), -EEXIST);
    struct moe_pack_part parts[3] = {
        {"gate", MOE_DTYPE_F32, 1, 1, &v, 4},
        {"up", MOE_DTYPE_F32, 1, 1, &v, 4},
        {"down", MOE_DTYPE_F32, 1, 1, &v, 4},
    };
    assert_int_equal(moe_pack_writer_add_expert(w, 0, 0, parts, 3), 0);
    assert_int_equal(moe_pack_writer_add_expert(w, 0, 0, parts, 3), -EEXIST);
    assert_non_null(strstr(moe_err_msg(), "layer 0 expert 0: added twice"));
    /* wrong size for the shape */
    assert_int_equal(moe_pack_writer_add_tensor(w, "u", MOE_DTYPE_F32, 1, &d, &v, 3), -EINVAL);
    moe_pack_writer_abort(w);
}

/* ---- damaged files ------------------------------------------------------------------ */

static uint8_t *slurp(const char *path, size_t *n)
{
    char *t;
    assert_int_equal(moe_read_text_file(path, &t, n), 0);
    return (uint8_t *)t;
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void set_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static int open_fails(const char *path, const char *want)
{
    struct moe_pack *p = NULL;
    int rc = moe_pack_open(path, &p);
    assert_true(rc < 0);
    assert_null(p);
    if (!strstr(moe_err_msg(), want))
        fail_msg("message '%s' lacks '%s'", moe_err_msg(), want);
    assert_non_null(strstr(moe_err_msg(), path));
    return rc;
}

static void test_newer_version_refused(void **state)
{
    (void)state;
    const char *path = mkpath("ver", "a.pack");
    write_sample(path);
    size_t n;
    uint8_t *d = slurp(path, &n);
    d[8] = 2;
    moe_test_write_file(path, d, n);
    char want[512];
    snprintf(want, sizeof(want), "%s: pack format version 2 is newer than this moed supports "
             "(1); upgrade moed or re-pack the model", path);
    open_fails(path, want);
    free(d);
}

static void test_bad_magic(void **state)
{
    (void)state;
    const char *path = mkpath("magic", "a.pack");
    write_sample(path);
    size_t n;
    uint8_t *d = slurp(path, &n);
    d[0] = 'X';
    moe_test_write_file(path, d, n);
    open_fails(path, "not a moed pack");
    moe_test_write_file(path, "", 0);
    open_fails(path, "not a moed pack");
    free(d);
}

static void test_header_checksum(void **state)
{
    (void)state;
    const char *path = mkpath("hsum", "a.pack");
    write_sample(path);
    size_t n;
    uint8_t *d = slurp(path, &n);
    uint64_t hoff = le64(d + 16);
    d[hoff + 5] ^= 0x01;
    moe_test_write_file(path, d, n);
    assert_int_equal(open_fails(path, "header checksum mismatch"), -EIO);
    free(d);
}

static void test_truncated_names_expert(void **state)
{
    (void)state;
    const char *path = mkpath("trunc", "a.pack");
    write_sample(path);
    size_t n;
    uint8_t *d = slurp(path, &n);
    /* a plain truncation loses the header (it is at the end) */
    moe_test_write_file(path, d, n - 10);
    open_fails(path, "truncated pack?");

    /* the data cut inside the last expert with the header kept: the reader
     * names the expert */
    struct moe_pack *p;
    moe_test_write_file(path, d, n);
    assert_int_equal(moe_pack_open(path, &p), 0);
    const struct moe_pack_expert *e = moe_pack_find_expert(p, 1, 0);
    size_t cut = (size_t)e->offset + 64;
    moe_pack_close(p);
    uint64_t hoff = le64(d + 16), hlen = le64(d + 24);
    assert_true(hlen < 4000);
    uint8_t *t = malloc(cut + hlen);
    memcpy(t, d, cut);
    memcpy(t + cut, d + hoff, hlen);
    set_le64(t + 16, cut);
    moe_test_write_file(path, t, cut + hlen);
    char want[512];
    snprintf(want, sizeof(want), "%s: layer 1 expert 0: blob ends past the end of the file "
             "(truncated pack?)", path);
    open_fails(path, want);
    free(t);
    free(d);
}

static void test_flipped_byte_names_expert(void **state)
{
    (void)state;
    const char *path = mkpath("flip", "a.pack");
    write_sample(path);
    struct moe_pack *p;
    assert_int_equal(moe_pack_open(path, &p), 0);
    uint64_t off = moe_pack_find_expert(p, 0, 1)->offset;
    moe_pack_close(p);
    size_t n;
    uint8_t *d = slurp(path, &n);
    d[off + 100] ^= 0x40;
    moe_test_write_file(path, d, n);
    assert_int_equal(moe_pack_open(path, &p), 0); /* structure is fine */
    assert_int_equal(moe_pack_verify_expert(p, 0, 0), 0);
    assert_int_equal(moe_pack_verify_expert(p, 0, 1), -EIO);
    char want[512];
    snprintf(want, sizeof(want), "%s: layer 0 expert 1: checksum mismatch, the blob is corrupt",
             path);
    assert_string_equal(moe_err_msg(), want);
    assert_int_equal(moe_pack_verify_all(p), -EIO);
    assert_string_equal(moe_err_msg(), want);
    /* a copy read elsewhere (O_DIRECT) checks the same way */
    const struct moe_pack_expert *e = moe_pack_find_expert(p, 0, 0);
    assert_int_equal(moe_pack_verify_expert_data(p, e, e->data), 0);
    moe_pack_close(p);
    free(d);
}

/* a pack with a hand-written header (data: 4096 zero bytes at 4096) */
static void write_raw(const char *path, const char *header)
{
    size_t hl = strlen(header), n = 8192 + hl;
    uint8_t *d = calloc(1, n);
    memcpy(d, "MOEPACK", 8);
    d[8] = 1;
    set_le64(d + 16, 8192);
    set_le64(d + 24, hl);
    set_le64(d + 32, moe_pack_xxh64(header, hl));
    memcpy(d + 8192, header, hl);
    moe_test_write_file(path, d, n);
    free(d);
}

static void test_reader_refusals(void **state)
{
    (void)state;
    const char *path = mkpath("raw", "a.pack");
    char h[2048];
    const char *z = "0000000000000000";
    snprintf(h, sizeof(h), "{\"format\":\"moed-pack\",\"version\":1,\"tensors\":["
             "{\"name\":\"x\",\"dtype\":\"f32\",\"shape\":[2],\"offset\":4096,\"size\":8,"
             "\"xxh64\":\"%s\"},"
             "{\"name\":\"x\",\"dtype\":\"f32\",\"shape\":[2],\"offset\":4160,\"size\":8,"
             "\"xxh64\":\"%s\"}]}", z, z);
    write_raw(path, h);
    open_fails(path, "tensor 'x': listed twice");

    snprintf(h, sizeof(h), "{\"format\":\"moed-pack\",\"version\":1,\"experts\":["
             "{\"layer\":0,\"expert\":2,\"offset\":4096,\"size\":4096,\"xxh64\":\"%s\","
             "\"parts\":[{\"name\":\"gate\",\"dtype\":\"f32\",\"shape\":[1,1],\"offset\":0,\"size\":4},"
             "{\"name\":\"up\",\"dtype\":\"f32\",\"shape\":[1,1],\"offset\":64,\"size\":4},"
             "{\"name\":\"down\",\"dtype\":\"f32\",\"shape\":[1,1],\"offset\":128,\"size\":4}]},"
             "{\"layer\":0,\"expert\":2,\"offset\":4096,\"size\":4096,\"xxh64\":\"%s\","
             "\"parts\":[{\"name\":\"gate\",\"dtype\":\"f32\",\"shape\":[1,1],\"offset\":0,\"size\":4},"
             "{\"name\":\"up\",\"dtype\":\"f32\",\"shape\":[1,1],\"offset\":64,\"size\":4},"
             "{\"name\":\"down\",\"dtype\":\"f32\",\"shape\":[1,1],\"offset\":128,\"size\":4}]}"
             "]}", z, z);
    write_raw(path, h);
    open_fails(path, "layer 0 expert 2: listed twice");

    snprintf(h, sizeof(h), "{\"format\":\"moed-pack\",\"version\":1,\"blobs\":["
             "{\"name\":\"b\",\"offset\":4096,\"size\":1,\"xxh64\":\"%s\"},"
             "{\"name\":\"b\",\"offset\":4096,\"size\":1,\"xxh64\":\"%s\"}]}", z, z);
    write_raw(path, h);
    open_fails(path, "blob 'b': listed twice");

    /* misaligned expert, part outside its blob, size not matching the shape */
    snprintf(h, sizeof(h), "{\"format\":\"moed-pack\",\"version\":1,\"experts\":["
             "{\"layer\":3,\"expert\":5,\"offset\":4160,\"size\":4032,\"xxh64\":\"%s\","
             "\"parts\":[]}]}", z);
    write_raw(path, h);
    open_fails(path, "layer 3 expert 5: blob [4160, 8192) is not aligned");
    snprintf(h, sizeof(h), "{\"format\":\"moed-pack\",\"version\":1,\"experts\":["
             "{\"layer\":3,\"expert\":5,\"offset\":4096,\"size\":4096,\"xxh64\":\"%s\","
             "\"parts\":[{\"name\":\"gate\",\"dtype\":\"f32\",\"shape\":[1,1],\"offset\":0,\"size\":4},"
             "{\"name\":\"up\",\"dtype\":\"f32\",\"shape\":[1,1],\"offset\":64,\"size\":4},"
             "{\"name\":\"down\",\"dtype\":\"f32\",\"shape\":[1,2000],\"offset\":128,\"size\":8000}]}"
             "]}", z);
    write_raw(path, h);
    open_fails(path, "layer 3 expert 5: part 'down': [128, 8128) is outside the blob");
    snprintf(h, sizeof(h), "{\"format\":\"moed-pack\",\"version\":1,\"tensors\":["
             "{\"name\":\"x\",\"dtype\":\"bf16\",\"shape\":[3],\"offset\":4096,\"size\":8,"
             "\"xxh64\":\"%s\"}]}", z);
    write_raw(path, h);
    open_fails(path, "tensor 'x': size mismatch");
    /* dense tensors, blobs and expert parts start on 64 bytes: their
     * elements are loaded in place with typed loads */
    snprintf(h, sizeof(h), "{\"format\":\"moed-pack\",\"version\":1,\"tensors\":["
             "{\"name\":\"x\",\"dtype\":\"bf16\",\"shape\":[3],\"offset\":4097,\"size\":6,"
             "\"xxh64\":\"%s\"}]}", z);
    write_raw(path, h);
    open_fails(path, "tensor 'x': data [4097, 4103) is not aligned to 64 bytes");
    snprintf(h, sizeof(h), "{\"format\":\"moed-pack\",\"version\":1,\"blobs\":["
             "{\"name\":\"b\",\"offset\":4100,\"size\":1,\"xxh64\":\"%s\"}]}", z);
    write_raw(path, h);
    open_fails(path, "blob 'b': data [4100, 4101) is not aligned to 64 bytes");
    snprintf(h, sizeof(h), "{\"format\":\"moed-pack\",\"version\":1,\"experts\":["
             "{\"layer\":3,\"expert\":5,\"offset\":4096,\"size\":4096,\"xxh64\":\"%s\","
             "\"parts\":[{\"name\":\"gate\",\"dtype\":\"f32\",\"shape\":[1,1],\"offset\":0,\"size\":4},"
             "{\"name\":\"up\",\"dtype\":\"f32\",\"shape\":[1,1],\"offset\":66,\"size\":4},"
             "{\"name\":\"down\",\"dtype\":\"f32\",\"shape\":[1,1],\"offset\":128,\"size\":4}]}"
             "]}", z);
    write_raw(path, h);
    open_fails(path, "layer 3 expert 5: part 'up': offset 66 is not aligned to 64 bytes");
    write_raw(path, "{\"format\":\"moed-pack\",\"version\":1,\"tensors\":[{\"name\":\"x\","
                    "\"dtype\":\"f99\",\"shape\":[1],\"offset\":4096,\"size\":4,\"xxh64\":\"0\"}]}");
    open_fails(path, "unknown dtype 'f99'");
    write_raw(path, "{\"format\":\"moed-pack\",\"version\":1}"); /* empty but valid */
    struct moe_pack *p;
    assert_int_equal(moe_pack_open(path, &p), 0);
    assert_int_equal(moe_pack_expert_count(p), 0);
    assert_int_equal(moe_pack_verify_all(p), 0);
    moe_pack_close(p);
}

/* ---- interruption ------------------------------------------------------------------- */

/* child: open a writer on path, write a few MB, tell the parent, wait to die */
static pid_t writer_child(const char *path, bool cleanup, int *ready_fd)
{
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(pfd[0]);
        if (cleanup)
            moe_pack_writer_cleanup_on_signal();
        struct moe_pack_writer *w;
        if (moe_pack_writer_open(path, &w) < 0)
            _exit(2);
        static uint8_t big[3 << 20];
        if (moe_pack_writer_add_blob(w, "big", big, sizeof(big)) < 0)
            _exit(3);
        if (write(pfd[1], "x", 1) != 1)
            _exit(4);
        for (;;)
            pause();
    }
    close(pfd[1]);
    *ready_fd = pfd[0];
    return pid;
}

static void test_killed_writer_leaves_no_pack(void **state)
{
    (void)state;
    const char *path = mkpath("kill", "a.pack");
    int fd;
    pid_t pid = writer_child(path, false, &fd);
    char c;
    assert_int_equal(read(fd, &c, 1), 1);
    close(fd);
    kill(pid, SIGKILL);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    assert_int_not_equal(access(path, F_OK), 0); /* never under the real name */
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)pid);
    assert_int_equal(access(tmp, F_OK), 0); /* SIGKILL leaves the temporary */
    unlink(tmp);

    /* SIGTERM with the cleanup handler: nothing at all */
    pid = writer_child(path, true, &fd);
    assert_int_equal(read(fd, &c, 1), 1);
    close(fd);
    kill(pid, SIGTERM);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM);
    assert_int_equal(count_entries(mkpath("kill", "")), 0);
}

/* a write error (here the file size limit, as ENOSPC would be) is reported
 * naming the file, and commit leaves nothing */
static void test_write_error_reported(void **state)
{
    (void)state;
    const char *path = mkpath("efbig", "a.pack");
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {1 << 20, 1 << 20};
        setrlimit(RLIMIT_FSIZE, &rl);
        struct moe_pack_writer *w;
        if (moe_pack_writer_open(path, &w) < 0)
            _exit(2);
        static uint8_t big[3 << 20];
        int rc = moe_pack_writer_add_blob(w, "big", big, sizeof(big));
        if (rc == 0)
            rc = moe_pack_writer_commit(w);
        else
            moe_pack_writer_abort(w);
        const char *m = moe_err_msg();
        if (write(pfd[1], m, strlen(m)) < 0)
            _exit(5);
        _exit(rc < 0 ? 0 : 1);
    }
    close(pfd[1]);
    char msg[1024] = {0};
    ssize_t k = read(pfd[0], msg, sizeof(msg) - 1);
    (void)k;
    close(pfd[0]);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    if (!strstr(msg, "write failed: File too large") || !strstr(msg, ".tmp."))
        fail_msg("message: %s", msg);
    assert_int_equal(count_entries(mkpath("efbig", "")), 0);
}

/* pages of [at, at+n) in the page cache */
static size_t pages_cached(const void *at, size_t n)
{
    uintptr_t lo = (uintptr_t)at & ~(uintptr_t)4095;
    uintptr_t hi = ((uintptr_t)at + n + 4095) & ~(uintptr_t)4095;
    size_t np = (hi - lo) / 4096, got = 0;
    unsigned char *v = malloc(np);
    assert_int_equal(mincore((void *)lo, hi - lo, v), 0);
    for (size_t i = 0; i < np; i++)
        got += v[i] & 1;
    free(v);
    return got;
}

static void test_a_range_used_sparsely_is_dropped_then_read_a_page_at_a_time(void **state)
{
    (void)state;
    const char *path = mkpath("sparse", "big.pack");
    struct statfs fs;
    assert_int_equal(statfs(moe_test_tmpdir(), &fs), 0);
    if (fs.f_type == 0x01021994) /* tmpfs: its pages have no file to go back to */
        skip();
    enum { N = 4 << 20 }; /* 16 MiB of f32: far more than the kernel's largest folio */
    float *big = malloc(N * sizeof(float));
    fill(big, N * sizeof(float), 7);
    struct moe_pack_writer *w;
    int64_t d[1] = {N};
    assert_int_equal(moe_pack_writer_open(path, &w), 0);
    assert_int_equal(moe_pack_writer_add_tensor(w, "embed", MOE_DTYPE_F32, 1, d, big,
                                                N * sizeof(float)),
                     0);
    assert_int_equal(moe_pack_writer_set_json(w, "config", json_pack("{s:i}", "hidden", 32)), 0);
    assert_int_equal(moe_pack_writer_commit(w), 0);
    free(big);
    int fd = open(path, O_RDONLY); /* written just now: dirty pages cannot be dropped */
    assert_true(fd >= 0);
    assert_int_equal(fsync(fd), 0);
    close(fd);
    struct moe_pack *p;
    assert_int_equal(moe_pack_open(path, &p), 0);
    const struct moe_tensor_info *t = moe_pack_find_tensor(p, "embed");
    assert_non_null(t);
    const volatile uint8_t *b = t->data;
    unsigned sum = 0;
    for (size_t i = 0; i < t->nbytes; i += 4096) /* a checksum's full read */
        sum += b[i];
    size_t all = t->nbytes / 4096;
    assert_true(pages_cached(t->data, t->nbytes) >= all * 9 / 10);
    moe_pack_use_sparsely(p, t->data, t->nbytes);
    /* what stays: at most a large folio the range shares at either edge */
    size_t left = pages_cached(t->data, t->nbytes);
    assert_true(left <= 1024);
    sum += b[t->nbytes / 2]; /* one row in the middle */
    assert_true(pages_cached(t->data, t->nbytes) <= left + 4); /* not a read-around of 32+ */
    assert_true(pages_cached(t->data, t->nbytes) > left);
    (void)sum;
    moe_pack_close(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_abort_leaves_nothing),
        cmocka_unit_test(test_duplicates_rejected_by_writer),
        cmocka_unit_test(test_newer_version_refused),
        cmocka_unit_test(test_bad_magic),
        cmocka_unit_test(test_header_checksum),
        cmocka_unit_test(test_truncated_names_expert),
        cmocka_unit_test(test_flipped_byte_names_expert),
        cmocka_unit_test(test_reader_refusals),
        cmocka_unit_test(test_killed_writer_leaves_no_pack),
        cmocka_unit_test(test_write_error_reported),
        cmocka_unit_test(test_a_range_used_sparsely_is_dropped_then_read_a_page_at_a_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
