/* format: helpers shared by the safetensors and GGUF readers (private). */
#ifndef MOE_FORMAT_INT_H
#define MOE_FORMAT_INT_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- name index ------------------------------------------------------------
 * Open-addressing hash from a NUL-terminated name to an item number. Models
 * have thousands of tensors and tokenizers hundreds of keys; lookups happen
 * while loading layers, so they must not be linear scans. The index keeps
 * pointers to the names, which the reader owns and keeps alive. */
struct moe_format_index {
    struct moe_format_slot {
        const char *name; /* NULL: empty slot */
        size_t item;
    } *slots;
    size_t mask; /* capacity - 1; capacity is a power of two */
};

static inline uint64_t moe_format_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (uint8_t)*s;
        h *= 1099511628211ull;
    }
    return h;
}

/* Room for n names at most half full, so probe chains stay short. */
static inline int moe_format_index_init(struct moe_format_index *ix, size_t n)
{
    size_t cap = 16;
    while (cap < n * 2) {
        if (cap > SIZE_MAX / 4 / sizeof(*ix->slots))
            return -ENOMEM;
        cap *= 2;
    }
    ix->slots = calloc(cap, sizeof(*ix->slots));
    if (!ix->slots)
        return -ENOMEM;
    ix->mask = cap - 1;
    return 0;
}

static inline void moe_format_index_free(struct moe_format_index *ix)
{
    free(ix->slots);
    ix->slots = NULL;
    ix->mask = 0;
}

/* 0, or -EEXIST with *prev set to the item already holding that name. */
static inline int moe_format_index_insert(struct moe_format_index *ix, const char *name,
                                          size_t item, size_t *prev)
{
    size_t i = (size_t)moe_format_hash(name) & ix->mask;
    while (ix->slots[i].name) {
        if (strcmp(ix->slots[i].name, name) == 0) {
            *prev = ix->slots[i].item;
            return -EEXIST;
        }
        i = (i + 1) & ix->mask;
    }
    ix->slots[i].name = name;
    ix->slots[i].item = item;
    return 0;
}

/* The item named name, or -1. */
static inline ptrdiff_t moe_format_index_find(const struct moe_format_index *ix,
                                              const char *name)
{
    if (!ix->slots || !name)
        return -1;
    size_t i = (size_t)moe_format_hash(name) & ix->mask;
    while (ix->slots[i].name) {
        if (strcmp(ix->slots[i].name, name) == 0)
            return (ptrdiff_t)ix->slots[i].item;
        i = (i + 1) & ix->mask;
    }
    return -1;
}

/* ---- messages -----------------------------------------------------------------
 * Names from a corrupt file may hold control bytes or be very long; error
 * messages are one line, so names are quoted through this. */
static inline const char *moe_format_printable(char *dst, size_t cap, const char *s, size_t n)
{
    size_t i = 0, o = 0;
    for (; i < n && o + 4 < cap; i++) { /* keep room for "..." and NUL */
        unsigned char c = (unsigned char)s[i];
        dst[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (i < n) {
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o] = '\0';
    return dst;
}

#define MOE_FORMAT_NAME_MAX 128 /* buffer for a quoted name in a message */

/* a + b, saturating: only for printing ranges that overflowed */
static inline uint64_t moe_format_sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

#endif
