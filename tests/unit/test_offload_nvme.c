/* offload: expert blobs read from disk. io_uring (fixed buffers, O_DIRECT),
 * pread and buffered fallbacks all give the mapping's bytes; batches past
 * the queue depth complete; injected EIO and corruption are retried, then
 * reported naming the layer and expert; MOED_NVME_FAULT is parsed strictly. */
#include "tests/unit/test.h"

#include <errno.h>
#include <sys/stat.h>

#include "common/common.h"
#include "format/format_pack.h"
#include "offload/offload_host.h"
#include "offload/offload_nvme.h"

#define N_LAYERS 2
#define N_EXPERTS 24
#define BIG_LAYER 2 /* one expert of 3 MiB: several chunks */

static char dir[512];  /* on the real disk when possible: O_DIRECT works there */
static char path[600];
static struct moe_pack *pack;
static struct moe_host_region arena;
static size_t n_experts;

static void fill(void *p, size_t n, unsigned seed)
{
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        b[i] = (uint8_t)(seed >> 16);
    }
}

static void write_pack(const char *file)
{
    static uint16_t g[48 * 32], u[48 * 32], d[32 * 48];
    struct moe_pack_writer *w;
    assert_int_equal(moe_pack_writer_open(file, &w), 0);
    for (int l = 0; l < N_LAYERS; l++)
        for (int e = 0; e < N_EXPERTS; e++) {
            fill(g, sizeof(g), 100 * l + e + 1);
            fill(u, sizeof(u), 300 * l + e + 2);
            fill(d, sizeof(d), 500 * l + e + 3);
            struct moe_pack_part parts[3] = {
                {"gate", MOE_DTYPE_BF16, 48, 32, g, sizeof(g)},
                {"up", MOE_DTYPE_BF16, 48, 32, u, sizeof(u)},
                {"down", MOE_DTYPE_BF16, 32, 48, d, sizeof(d)},
            };
            assert_int_equal(moe_pack_writer_add_expert(w, l, e, parts, 3), 0);
        }
    size_t big = (size_t)512 * 1024 * 2;
    uint8_t *b = malloc(3 * big);
    assert_non_null(b);
    fill(b, 3 * big, 77);
    struct moe_pack_part parts[3] = {
        {"gate", MOE_DTYPE_BF16, 512, 1024, b, big},
        {"up", MOE_DTYPE_BF16, 512, 1024, b + big, big},
        {"down", MOE_DTYPE_BF16, 1024, 512, b + 2 * big, big},
    };
    assert_int_equal(moe_pack_writer_add_expert(w, BIG_LAYER, 0, parts, 3), 0);
    free(b);
    assert_int_equal(moe_pack_writer_set_json(w, "config", json_pack("{s:i}", "hidden", 32)), 0);
    assert_int_equal(moe_pack_writer_commit(w), 0);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "%s/build/tmp-nvme-XXXXXX", moe_test_root());
    if (!mkdtemp(dir))
        snprintf(dir, sizeof(dir), "%s", moe_test_tmpdir());
    snprintf(path, sizeof(path), "%s/t.pack", dir);
    write_pack(path);
    if (moe_pack_open(path, &pack) < 0)
        return -1;
    n_experts = moe_pack_expert_count(pack);
    size_t total = 0;
    for (size_t i = 0; i < n_experts; i++)
        total += moe_pack_expert_at(pack, i)->size;
    return moe_host_alloc(total, MOE_NUMA_OFF, false, &arena);
}

static int teardown(void **state)
{
    (void)state;
    moe_host_free(&arena);
    moe_pack_close(pack);
    unlink(path);
    rmdir(dir);
    return 0;
}

/* one request per expert, each at its own place in the arena */
static struct moe_nvme_req reqs[N_LAYERS * N_EXPERTS + 1];
static struct moe_nvme_req *preqs[N_LAYERS * N_EXPERTS + 1];

static int make_reqs(void)
{
    size_t off = 0;
    memset(arena.ptr, 0, arena.bytes);
    for (size_t i = 0; i < n_experts; i++) {
        const struct moe_pack_expert *e = moe_pack_expert_at(pack, i);
        reqs[i] = (struct moe_nvme_req){.e = e, .dst = (uint8_t *)arena.ptr + off};
        preqs[i] = &reqs[i];
        off += e->size;
    }
    return (int)n_experts;
}

static void check_bytes(int n)
{
    for (int i = 0; i < n; i++) {
        assert_true(reqs[i].done);
        assert_int_equal(reqs[i].rc, 0);
        assert_memory_equal(reqs[i].dst, reqs[i].e->data, reqs[i].e->size);
    }
}

static struct moe_nvme *open_nv(unsigned qd, bool force_pread, bool force_buffered, int retries)
{
    struct moe_nvme_opts o = {.queue_depth = qd, .force_pread = force_pread,
                              .force_buffered = force_buffered, .retries = retries};
    struct moe_nvme *nv;
    int r = moe_nvme_open(pack, &o, arena.ptr, arena.bytes, &nv);
    if (r < 0)
        fprintf(stderr, "moe_nvme_open: %s\n", moe_err_msg());
    assert_int_equal(r, 0);
    return nv;
}

static void test_uring_reads_match(void **state)
{
    (void)state;
    struct moe_nvme *nv = open_nv(32, false, false, 0);
    if (!moe_nvme_uses_uring(nv))
        fprintf(stderr, "note: io_uring not permitted here, the pread fallback was tested\n");
    fprintf(stderr, "note: %s: O_DIRECT %s, fixed buffers %s\n", dir,
            moe_nvme_uses_direct(nv) ? "yes" : "no", moe_nvme_uses_fixed(nv) ? "yes" : "no");
    assert_int_equal(moe_nvme_queue_depth(nv), 32);
    int n = make_reqs();
    assert_int_equal(moe_nvme_submit(nv, preqs, n), 0);
    for (int i = n - 1; i >= 0; i--) /* waiting out of order reaps the others */
        assert_int_equal(moe_nvme_wait(nv, &reqs[i]), 0);
    check_bytes(n);
    struct moe_nvme_stats st;
    moe_nvme_stats(nv, &st);
    assert_int_equal(st.reads, (uint64_t)n);
    assert_int_equal(st.retries, 0);
    assert_int_equal(st.errors, 0);
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += reqs[i].e->size;
    assert_int_equal(st.bytes, total);
    if (moe_nvme_uses_uring(nv))
        assert_true(st.sqes >= (uint64_t)n + 2); /* the 3 MiB blob took 3 chunks */
    /* the same requests again: a request can be reused once done */
    assert_int_equal(moe_nvme_submit(nv, preqs, 1), 0);
    assert_int_equal(moe_nvme_wait(nv, &reqs[0]), 0);
    moe_nvme_close(nv);
}

static void test_batch_past_queue_depth(void **state)
{
    (void)state;
    struct moe_nvme *nv = open_nv(4, false, false, 0);
    int n = make_reqs();
    assert_int_equal(moe_nvme_submit(nv, preqs, n), 0);
    int done = 0;
    for (int spins = 0; done < n && spins < 10000000; spins++) {
        int r = moe_nvme_poll(nv);
        assert_true(r >= 0);
        done += r;
    }
    if (moe_nvme_uses_uring(nv)) {
        assert_int_equal(done, n);
        struct moe_nvme_stats st;
        moe_nvme_stats(nv, &st);
        assert_true(st.submits > 1);
    }
    check_bytes(n);
    moe_nvme_close(nv);
}

static void test_pread_fallback(void **state)
{
    (void)state;
    struct moe_nvme *nv = open_nv(8, true, false, 0);
    assert_false(moe_nvme_uses_uring(nv));
    int n = make_reqs();
    assert_int_equal(moe_nvme_submit(nv, preqs, n), 0);
    for (int i = 0; i < n; i++)
        assert_int_equal(moe_nvme_wait(nv, &reqs[i]), 0);
    assert_int_equal(moe_nvme_poll(nv), 0);
    check_bytes(n);
    moe_nvme_close(nv);
}

static void test_buffered_fallback(void **state)
{
    (void)state;
    for (int pr = 0; pr < 2; pr++) {
        struct moe_nvme *nv = open_nv(8, pr, true, 0);
        assert_false(moe_nvme_uses_direct(nv));
        int n = make_reqs();
        assert_int_equal(moe_nvme_submit(nv, preqs, n), 0);
        for (int i = 0; i < n; i++)
            assert_int_equal(moe_nvme_wait(nv, &reqs[i]), 0);
        check_bytes(n);
        moe_nvme_close(nv);
    }
    /* a pack on tmpfs, where O_DIRECT may be refused: still read */
    struct stat sb;
    if (stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode)) {
        char shm[64];
        snprintf(shm, sizeof(shm), "/dev/shm/moe-test-nvme-%d.pack", (int)getpid());
        write_pack(shm);
        struct moe_pack *p2;
        assert_int_equal(moe_pack_open(shm, &p2), 0);
        struct moe_nvme *nv;
        assert_int_equal(moe_nvme_open(p2, NULL, arena.ptr, arena.bytes, &nv), 0);
        const struct moe_pack_expert *e = moe_pack_find_expert(p2, BIG_LAYER, 0);
        struct moe_nvme_req r = {.e = e, .dst = arena.ptr}, *pr = &r;
        assert_int_equal(moe_nvme_submit(nv, &pr, 1), 0);
        assert_int_equal(moe_nvme_wait(nv, &r), 0);
        assert_memory_equal(arena.ptr, e->data, e->size);
        moe_nvme_close(nv);
        moe_pack_close(p2);
        unlink(shm);
    }
}

/* reads of (1, 3) and the big expert through nv, with faults of kind armed */
static void fault_case(bool force_pread, enum moe_nvme_fault_kind kind)
{
    const char *why = kind == MOE_NVME_FAULT_EIO ? "read error after 3 reads: Input/output error"
                                                 : "checksum mismatch after 3 reads, the blob is corrupt";
    /* count <= retries: the retry mends it */
    struct moe_nvme *nv = open_nv(8, force_pread, false, 0);
    int n = make_reqs();
    assert_int_equal(moe_nvme_inject_fault(nv, 1, 3, kind, 2), 0);
    assert_int_equal(moe_nvme_inject_fault(nv, BIG_LAYER, 0, kind, 1), 0);
    assert_int_equal(moe_nvme_submit(nv, preqs, n), 0);
    for (int i = 0; i < n; i++)
        assert_int_equal(moe_nvme_wait(nv, &reqs[i]), 0);
    check_bytes(n);
    struct moe_nvme_stats st;
    moe_nvme_stats(nv, &st);
    assert_int_equal(st.retries, 3);
    assert_int_equal(st.errors, 0);
    assert_int_equal(st.reads, (uint64_t)n + 3);
    assert_int_equal(st.checksum_failures, kind == MOE_NVME_FAULT_CORRUPT ? 3 : 0);

    /* count > retries: the request fails, naming the expert; the others are fine */
    make_reqs();
    assert_int_equal(moe_nvme_inject_fault(nv, 1, 3, kind, 5), 0);
    assert_int_equal(moe_nvme_submit(nv, preqs, n), 0);
    int bad = -1;
    for (int i = 0; i < n; i++) {
        if (reqs[i].e->layer == 1 && reqs[i].e->expert == 3) {
            bad = i;
            continue;
        }
        assert_int_equal(moe_nvme_wait(nv, &reqs[i]), 0);
    }
    assert_int_equal(moe_nvme_wait(nv, &reqs[bad]), -EIO);
    assert_true(reqs[bad].done);
    assert_int_equal(reqs[bad].rc, -EIO);
    assert_non_null(strstr(moe_err_msg(), "layer 1 expert 3"));
    assert_non_null(strstr(moe_err_msg(), why));
    assert_non_null(strstr(moe_err_msg(), path));
    moe_err_clear();
    assert_int_equal(moe_nvme_req_error(nv, &reqs[bad]), -EIO);
    assert_non_null(strstr(moe_err_msg(), "layer 1 expert 3"));
    moe_nvme_stats(nv, &st);
    assert_int_equal(st.errors, 1);
    moe_nvme_close(nv);

    /* retries < 0: no retry at all */
    nv = open_nv(8, force_pread, false, -1);
    make_reqs();
    assert_int_equal(moe_nvme_inject_fault(nv, 0, 0, kind, 1), 0);
    assert_int_equal(moe_nvme_submit(nv, preqs, 1), 0);
    assert_int_equal(moe_nvme_wait(nv, &reqs[0]), -EIO);
    assert_non_null(strstr(moe_err_msg(), "layer 0 expert 0"));
    assert_non_null(strstr(moe_err_msg(), "after 1 read"));
    moe_nvme_close(nv);
}

static void test_eio_retried_then_reported(void **state)
{
    (void)state;
    fault_case(false, MOE_NVME_FAULT_EIO);
    fault_case(true, MOE_NVME_FAULT_EIO);
}

static void test_corrupt_retried_then_reported(void **state)
{
    (void)state;
    fault_case(false, MOE_NVME_FAULT_CORRUPT);
    fault_case(true, MOE_NVME_FAULT_CORRUPT);
}

static void test_fault_env(void **state)
{
    (void)state;
    struct moe_nvme_fault f[4];
    int n;
    assert_int_equal(moe_nvme_fault_parse("eio:1:2:3,corrupt:0:10:1", f, 4, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(f[0].kind, MOE_NVME_FAULT_EIO);
    assert_int_equal(f[0].layer, 1);
    assert_int_equal(f[0].expert, 2);
    assert_int_equal(f[0].count, 3);
    assert_int_equal(f[1].kind, MOE_NVME_FAULT_CORRUPT);
    assert_int_equal(f[1].expert, 10);
    assert_int_equal(moe_nvme_fault_parse("", f, 4, &n), 0);
    assert_int_equal(n, 0);

    static const struct { const char *s, *msg; } bad[] = {
        {"bogus", "item 1 'bogus': expected KIND:LAYER:EXPERT:COUNT"},
        {"eio:1:2", "item 1 'eio:1:2': expected"},
        {"eio:1:2:3:4", "item 1 'eio:1:2:3:4': expected"},
        {"eio:1:2:3,corupt:1:2:3", "item 2 'corupt:1:2:3': kind must be eio or corrupt"},
        {"eio:x:2:3", "item 1 'eio:x:2:3': layer must be an integer >= 0"},
        {"eio:1:-2:3", "item 1 'eio:1:-2:3': expert must be"},
        {"eio:1:2:", "item 1 'eio:1:2:': count must be"},
        {"eio::2:3", "layer must be"},
        {"eio:1:2:3,", "item 2 '': expected"},
        {"eio:0:0:1,eio:0:1:1,eio:0:2:1,eio:0:3:1,eio:0:4:1", "item 5 'eio:0:4:1': at most 4"},
    };
    for (size_t i = 0; i < MOE_ARRAY_SIZE(bad); i++) {
        assert_int_equal(moe_nvme_fault_parse(bad[i].s, f, 4, &n), -EINVAL);
        if (!strstr(moe_err_msg(), bad[i].msg))
            fail_msg("'%s': got \"%s\"", bad[i].s, moe_err_msg());
        assert_non_null(strstr(moe_err_msg(), "MOED_NVME_FAULT"));
    }

    /* at open: a good value arms the faults, a bad one refuses to open */
    setenv("MOED_NVME_FAULT", "corrupt:0:1:1,eio:0:2:1", 1);
    struct moe_nvme *nv = open_nv(8, false, false, 0);
    make_reqs();
    assert_int_equal(moe_nvme_submit(nv, preqs, 4), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(moe_nvme_wait(nv, &reqs[i]), 0);
    check_bytes(4);
    struct moe_nvme_stats st;
    moe_nvme_stats(nv, &st);
    assert_int_equal(st.retries, 2);
    assert_int_equal(st.checksum_failures, 1);
    moe_nvme_close(nv);
    setenv("MOED_NVME_FAULT", "eio:0:1", 1);
    assert_int_equal(moe_nvme_open(pack, NULL, arena.ptr, arena.bytes, &nv), -EINVAL);
    assert_null(nv);
    assert_non_null(strstr(moe_err_msg(), "item 1 'eio:0:1'"));
    unsetenv("MOED_NVME_FAULT");
}

static void test_refusals(void **state)
{
    (void)state;
    struct moe_nvme *nv = open_nv(8, false, false, 0);
    make_reqs();
    struct moe_nvme_req r = reqs[0], *pr = &r;
    r.dst = (uint8_t *)arena.ptr + 512; /* misaligned */
    assert_int_equal(moe_nvme_submit(nv, &pr, 1), -EINVAL);
    assert_non_null(strstr(moe_err_msg(), "layer 0 expert 0"));
    r.dst = (uint8_t *)arena.ptr + arena.bytes; /* outside the arena */
    assert_int_equal(moe_nvme_submit(nv, &pr, 1), -EINVAL);
    r.dst = arena.ptr;
    assert_int_equal(moe_nvme_wait(nv, &r), -EINVAL); /* never submitted */
    assert_int_equal(moe_nvme_submit(nv, preqs, 0), 0);
    moe_nvme_close(nv);
    moe_nvme_close(NULL);
    /* a misaligned arena */
    assert_int_equal(moe_nvme_open(pack, NULL, (uint8_t *)arena.ptr + 8, 4096, &nv), -EINVAL);
    /* closing with reads in flight waits for them */
    nv = open_nv(8, false, false, 0);
    int n = make_reqs();
    assert_int_equal(moe_nvme_submit(nv, preqs, n), 0);
    moe_nvme_close(nv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uring_reads_match),
        cmocka_unit_test(test_batch_past_queue_depth),
        cmocka_unit_test(test_pread_fallback),
        cmocka_unit_test(test_buffered_fallback),
        cmocka_unit_test(test_eio_retried_then_reported),
        cmocka_unit_test(test_corrupt_retried_then_reported),
        cmocka_unit_test(test_fault_env),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
