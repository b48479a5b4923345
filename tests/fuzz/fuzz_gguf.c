/* libFuzzer target: the input is a GGUF file, opened through the real reader
 * (from a memfd, so each run costs no disk). Besides "no crash, no leak",
 * it checks the reader's promises: a failed open leaves a one-line message
 * naming the file; an opened file's getters, string arrays and tensor views
 * only touch memory inside the mapping, and its tensors convert to fp32
 * without an unaligned load. moe_config_from_gguf then reads the metadata as
 * a model's (every architecture's keys: the seeds in
 * tests/fuzz/corpus/fuzz_gguf/ are the arch fixtures' headers). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/common.h"
#include "format/format.h"
#include "model/model_int.h"
#include "tests/fuzz/fuzz_convert.h"

static int fuzz_fd = -1;
static char fuzz_path[64];
static volatile uint8_t fuzz_sink;

static void fuzz_touch(const void *p, uint64_t n)
{
    const uint8_t *b = p;
    if (!n)
        return;
    /* one byte per page and the last: an overrun past the mapping faults */
    for (uint64_t i = 0; i < n; i += 4096)
        fuzz_sink ^= b[i];
    fuzz_sink ^= b[n - 1];
}

static void fuzz_check_msg(const char *path)
{
    const char *m = moe_err_msg();
    if (!m[0] || strchr(m, '\n') || !strstr(m, path))
        __builtin_trap();
}

static void fuzz_exercise(struct moe_gguf *g)
{
    for (size_t i = 0; i < moe_gguf_kv_count(g); i++) {
        enum moe_gguf_type type;
        const char *key = moe_gguf_key_at(g, i, &type);
        if (!key || !moe_gguf_has(g, key))
            __builtin_trap();
        uint32_t u;
        float f;
        bool b;
        struct moe_gguf_str s;
        const struct moe_gguf_str *items;
        const void *data;
        enum moe_gguf_type elem;
        uint64_t n;
        (void)moe_gguf_get_u32(g, key, &u);
        (void)moe_gguf_get_f32(g, key, &f);
        (void)moe_gguf_get_bool(g, key, &b);
        if (moe_gguf_get_str(g, key, &s) == 0)
            fuzz_touch(s.ptr, s.len);
        if (moe_gguf_get_str_array(g, key, &items, &n) == 0)
            for (uint64_t k = 0; k < n; k++)
                fuzz_touch(items[k].ptr, items[k].len);
        if (moe_gguf_get_array(g, key, &elem, &data, &n) == 0) {
            size_t esz = elem == MOE_GGUF_U8 || elem == MOE_GGUF_I8 || elem == MOE_GGUF_BOOL ? 1
                         : elem == MOE_GGUF_U16 || elem == MOE_GGUF_I16                      ? 2
                         : elem == MOE_GGUF_U64 || elem == MOE_GGUF_I64 ||
                                 elem == MOE_GGUF_F64                                        ? 8
                                                                                             : 4;
            fuzz_touch(data, n * esz);
        }
    }
    for (size_t i = 0; i < moe_gguf_tensor_count(g); i++) {
        const struct moe_tensor_info *t = moe_gguf_tensor_at(g, i);
        if (moe_gguf_find_tensor(g, t->name) != t || t->n_dims < 0 || t->n_dims > MOE_MAX_DIMS)
            __builtin_trap();
        fuzz_touch(t->data, t->nbytes);
        fuzz_convert(t, &fuzz_sink);
    }
    struct moe_config cfg;
    moe_err_clear();
    if (moe_config_from_gguf(g, &cfg) < 0)
        fuzz_check_msg(moe_gguf_path(g));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fuzz_fd < 0) {
        fuzz_fd = memfd_create("fuzz.gguf", 0);
        if (fuzz_fd < 0)
            abort();
        snprintf(fuzz_path, sizeof(fuzz_path), "/proc/self/fd/%d", fuzz_fd);
    }
    if (ftruncate(fuzz_fd, 0) < 0 || pwrite(fuzz_fd, data, size, 0) != (ssize_t)size)
        abort();

    struct moe_gguf *g = NULL;
    moe_err_clear();
    if (moe_gguf_open(fuzz_path, &g) < 0) {
        if (g)
            __builtin_trap();
        fuzz_check_msg(fuzz_path);
        return 0;
    }
    fuzz_exercise(g);
    moe_gguf_close(g);
    return 0;
}
