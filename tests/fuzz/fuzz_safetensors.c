/* libFuzzer target: the input is a safetensors file, opened through the real
 * reader (from a memfd). When the input holds a NUL byte it is also read as
 * a sharded model: the bytes before the first NUL become
 * model.safetensors.index.json, the bytes after it both a.safetensors and
 * b.safetensors, in a scratch directory (seeds name those shards).
 * Checks as in fuzz_gguf.c: failures leave a one-line message naming the
 * file or directory; tensor views stay inside their mappings and convert to
 * fp32 without an unaligned load. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/common.h"
#include "format/format.h"
#include "tests/fuzz/fuzz_convert.h"

static int fuzz_fd = -1;
static char fuzz_path[64];
static char fuzz_dir[128];
static volatile uint8_t fuzz_sink;

static void fuzz_touch(const void *p, uint64_t n)
{
    const uint8_t *b = p;
    if (!n)
        return;
    for (uint64_t i = 0; i < n; i += 4096) /* a page overrun faults */
        fuzz_sink ^= b[i];
    fuzz_sink ^= b[n - 1];
}

static void fuzz_check_msg(const char *name)
{
    const char *m = moe_err_msg();
    if (!m[0] || strchr(m, '\n') || !strstr(m, name))
        __builtin_trap();
}

static void fuzz_exercise(struct moe_safetensors *st)
{
    for (size_t i = 0; i < moe_safetensors_count(st); i++) {
        const struct moe_tensor_info *t = moe_safetensors_at(st, i);
        if (moe_safetensors_find(st, t->name) != t || t->n_dims < 0 ||
            t->n_dims > MOE_MAX_DIMS || !t->file)
            __builtin_trap();
        fuzz_touch(t->data, t->nbytes);
        fuzz_convert(t, &fuzz_sink);
    }
    if (moe_safetensors_at(st, moe_safetensors_count(st)))
        __builtin_trap();
}

static void fuzz_write(const char *name, const uint8_t *data, size_t size)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", fuzz_dir, name);
    FILE *f = fopen(p, "wb");
    if (!f || fwrite(data, 1, size, f) != size)
        abort();
    fclose(f);
}

static void fuzz_cleanup(void)
{
    static const char *const names[] = {"model.safetensors.index.json", "a.safetensors",
                                        "b.safetensors"};
    char p[256];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", fuzz_dir, names[i]);
        unlink(p);
    }
    rmdir(fuzz_dir);
}

static void fuzz_init(void)
{
    fuzz_fd = memfd_create("fuzz.safetensors", 0);
    if (fuzz_fd < 0)
        abort();
    snprintf(fuzz_path, sizeof(fuzz_path), "/proc/self/fd/%d", fuzz_fd);
    /* tmpfs when there is one: the sharded case writes files every run */
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(fuzz_dir, sizeof(fuzz_dir), "%s/fuzz-st-XXXXXX", base);
    if (!mkdtemp(fuzz_dir))
        abort();
    atexit(fuzz_cleanup);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fuzz_fd < 0)
        fuzz_init();
    if (ftruncate(fuzz_fd, 0) < 0 || pwrite(fuzz_fd, data, size, 0) != (ssize_t)size)
        abort();

    struct moe_safetensors *st = NULL;
    moe_err_clear();
    if (moe_safetensors_open_file(fuzz_path, &st) < 0) {
        if (st)
            __builtin_trap();
        fuzz_check_msg(fuzz_path);
    } else {
        fuzz_exercise(st);
        moe_safetensors_close(st);
    }

    const uint8_t *nul = memchr(data, 0, size);
    if (!nul)
        return 0;
    size_t k = (size_t)(nul - data);
    fuzz_write("model.safetensors.index.json", data, k);
    fuzz_write("a.safetensors", nul + 1, size - k - 1);
    fuzz_write("b.safetensors", nul + 1, size - k - 1);
    st = NULL;
    moe_err_clear();
    if (moe_safetensors_open_dir(fuzz_dir, &st) < 0) {
        if (st)
            __builtin_trap();
        fuzz_check_msg(fuzz_dir);
    } else {
        fuzz_exercise(st);
        moe_safetensors_close(st);
    }
    return 0;
}
