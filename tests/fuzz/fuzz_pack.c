/* libFuzzer target: the input is a moed pack, opened through the real reader
 * (from a memfd). Checks the reader's promises: a failed open leaves a
 * one-line message naming the file; an opened pack's tensors, experts (and
 * every part inside its blob) and blobs lie inside the mapping, lookups
 * find what iteration lists, and verify_all runs over all of it.
 *
 * The header checksum would stop almost every mutation of the JSON at the
 * door, so when the preamble's padding byte 40 is 0 the target writes the
 * right checksum in before opening (inputs with it non-zero test the check
 * itself). Seeds: tests/fuzz/corpus/fuzz_pack/, made by
 * tests/fuzz/gen_pack_seeds.c (see there). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/common.h"
#include "format/format_pack.h"
#include "tests/fuzz/fuzz_convert.h"

static int fuzz_fd = -1;
static char fuzz_path[64];
static volatile uint8_t fuzz_sink;

static void fuzz_touch(const void *p, uint64_t n)
{
    const uint8_t *b = p;
    if (!n)
        return;
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

static void fuzz_exercise(const struct moe_pack *p, size_t size)
{
    for (size_t i = 0; i < moe_pack_tensor_count(p); i++) {
        const struct moe_tensor_info *t = moe_pack_tensor_at(p, i);
        if (moe_pack_find_tensor(p, t->name) != t || t->n_dims < 0 || t->n_dims > MOE_MAX_DIMS)
            __builtin_trap();
        fuzz_touch(t->data, t->nbytes);
        fuzz_convert(t, &fuzz_sink);
    }
    for (size_t i = 0; i < moe_pack_blob_count(p); i++) {
        const struct moe_pack_blob *b = moe_pack_blob_at(p, i);
        if (moe_pack_find_blob(p, b->name) != b || b->offset + b->size > size)
            __builtin_trap();
        fuzz_touch(b->data, b->size);
    }
    for (size_t i = 0; i < moe_pack_expert_count(p); i++) {
        const struct moe_pack_expert *e = moe_pack_expert_at(p, i);
        if (moe_pack_find_expert(p, e->layer, e->expert) != e || e->offset + e->size > size ||
            e->offset % MOE_PACK_EXPERT_ALIGN || e->n_parts < 3 ||
            e->n_parts > MOE_PACK_MAX_PARTS)
            __builtin_trap();
        fuzz_touch(e->data, e->size);
        for (int k = 0; k < e->n_parts; k++) {
            const struct moe_pack_expert_part *pt = &e->parts[k];
            if (pt->offset + pt->size > e->size || moe_pack_expert_part(e, pt->name) != pt)
                __builtin_trap();
            fuzz_touch((const uint8_t *)e->data + pt->offset, pt->size);
        }
        if (strcmp(e->parts[0].name, "gate") || strcmp(e->parts[1].name, "up") ||
            strcmp(e->parts[2].name, "down"))
            __builtin_trap();
        (void)moe_pack_verify_expert(p, e->layer, e->expert);
    }
    if (!moe_pack_config(p) || !moe_pack_quant(p) || !moe_pack_meta(p))
        __builtin_trap();
    moe_err_clear();
    if (moe_pack_verify_all(p) < 0)
        fuzz_check_msg(fuzz_path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fuzz_fd < 0) {
        fuzz_fd = memfd_create("fuzz.pack", 0);
        if (fuzz_fd < 0)
            abort();
        snprintf(fuzz_path, sizeof(fuzz_path), "/proc/self/fd/%d", fuzz_fd);
    }
    if (ftruncate(fuzz_fd, 0) < 0 || pwrite(fuzz_fd, data, size, 0) != (ssize_t)size)
        abort();
    if (size >= MOE_PACK_PREAMBLE_BYTES && data[40] == 0) {
        uint64_t off = 0, len = 0;
        for (int i = 7; i >= 0; i--) {
            off = off << 8 | data[16 + i];
            len = len << 8 | data[24 + i];
        }
        if (off <= size && len <= size - off) {
            uint64_t h = moe_pack_xxh64(data + off, len);
            uint8_t le[8];
            for (int i = 0; i < 8; i++)
                le[i] = (uint8_t)(h >> (8 * i));
            if (pwrite(fuzz_fd, le, 8, 32) != 8)
                abort();
        }
    }

    struct moe_pack *p = NULL;
    moe_err_clear();
    if (moe_pack_open(fuzz_path, &p) < 0) {
        if (p)
            __builtin_trap();
        fuzz_check_msg(fuzz_path);
        return 0;
    }
    fuzz_exercise(p, size);
    moe_pack_close(p);
    return 0;
}
