/* GGUF reader (versions 2 and 3), mmapped; tensor views point into the
 * mapping.
 *
 * Layout, all little-endian:
 *   "GGUF" u32 version, u64 n_tensors, u64 n_kv
 *   n_kv x     { string key, u32 type, value }
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
 *   padding to general.alignment (default 32), then the data section;
 *   offsets are relative to its start and multiples of the alignment.
 * string = u64 length + bytes (no NUL); array = u32 elem type, u64 count, elems.
 *
 * Everything read from the file is a claim to check: every length and count
 * is compared with the bytes left in the file before anything is allocated
 * or read, so a corrupt header fails cleanly with a message. */
#include "format/format.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "format/format_int.h"

#define MOE_GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4 /* ggml's GGML_MAX_DIMS */
#define MOE_GGUF_MAX_NESTING 8 /* arrays of arrays; real files use none */
/* smallest possible records, to bound counts by the bytes left */
#define MOE_GGUF_KV_MIN (8 + 1 + 4 + 1)         /* key len, 1-byte key, type, u8 value */
#define MOE_GGUF_TENSOR_MIN (8 + 1 + 4 + 4 + 8) /* name len, name, n_dims=0, type, offset */
#define MOE_GGUF_ARRAY_MIN (4 + 8)              /* a nested empty array */

struct moe_gguf_kv {
    char *key; /* NUL-terminated copy */
    enum moe_gguf_type type;
    enum moe_gguf_type elem;     /* arrays: element type */
    uint64_t count;              /* arrays: element count */
    const uint8_t *raw;          /* scalars: the value; arrays: the first element */
    struct moe_gguf_str str;     /* strings */
    struct moe_gguf_str *strs;   /* arrays of strings: index built at open */
};

struct moe_gguf {
    struct moe_mapped_file map;
    uint32_t version, alignment;
    struct moe_gguf_kv *kvs;
    size_t n_kv;
    struct moe_tensor_info *tensors; /* names malloc'ed, owned here */
    size_t n_tensors;
    struct moe_format_index kv_index, tensor_index;
    bool borrowed;          /* map.data is the caller's memory (open_mem) */
    size_t kv_begin, kv_end; /* the key/value section's bytes */
};

/* ggml's tensor types, by their stable ids, so an unsupported one can be
 * named in the error. bytes == 0: moed cannot read it. align: the alignment
 * its elements (or blocks: Q8_0's fp16 scale) are loaded with. */
static const struct {
    const char *name;
    int block;
    size_t bytes, align;
} moe_ggml_types[] = {
    [0] = {"F32", 1, 4, 4},      [1] = {"F16", 1, 2, 2},      [2] = {"Q4_0"},
    [3] = {"Q4_1"},              [6] = {"Q5_0"},              [7] = {"Q5_1"},
    [8] = {"Q8_0", 32, 34, 2},   [9] = {"Q8_1"},              [10] = {"Q2_K"},
    [11] = {"Q3_K"},             [12] = {"Q4_K"},             [13] = {"Q5_K"},
    [14] = {"Q6_K"},             [15] = {"Q8_K"},             [16] = {"IQ2_XXS"},
    [17] = {"IQ2_XS"},           [18] = {"IQ3_XXS"},          [19] = {"IQ1_S"},
    [20] = {"IQ4_NL"},           [21] = {"IQ3_S"},            [22] = {"IQ2_S"},
    [23] = {"IQ4_XS"},           [24] = {"I8"},               [25] = {"I16"},
    [26] = {"I32"},              [27] = {"I64"},              [28] = {"F64"},
    [29] = {"IQ1_M"},            [30] = {"BF16", 1, 2, 2},    [34] = {"TQ1_0"},
    [35] = {"TQ2_0"},            [39] = {"MXFP4", 32, 17, 1},
};

static const char *const moe_gguf_type_names[] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};

static const char *moe_gguf_type_name(uint32_t t)
{
    return t < MOE_ARRAY_SIZE(moe_gguf_type_names) ? moe_gguf_type_names[t] : "?";
}

/* Bytes of one value of a fixed-size type; 0 for strings, arrays, unknown. */
static size_t moe_gguf_type_size(uint32_t t)
{
    switch (t) {
    case MOE_GGUF_U8: case MOE_GGUF_I8: case MOE_GGUF_BOOL: return 1;
    case MOE_GGUF_U16: case MOE_GGUF_I16: return 2;
    case MOE_GGUF_U32: case MOE_GGUF_I32: case MOE_GGUF_F32: return 4;
    case MOE_GGUF_U64: case MOE_GGUF_I64: case MOE_GGUF_F64: return 8;
    default: return 0;
    }
}

static uint64_t moe_gguf_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* ---- cursor over the mapping --------------------------------------------- */

struct moe_gguf_rd {
    const uint8_t *d;
    size_t size, pos;
    const char *path;
    char what[MOE_FORMAT_NAME_MAX + 32]; /* "key 'x'", "tensor 'y'": for messages */
};

static size_t moe_gguf_left(const struct moe_gguf_rd *r)
{
    return r->size - r->pos;
}

static int moe_gguf_truncated(const struct moe_gguf_rd *r, const char *item, uint64_t need)
{
    return moe_err(-EINVAL, "%s: %s: truncated: %s needs %" PRIu64 " bytes at offset %zu, "
                   "file has %zu", r->path, r->what, item, need, r->pos, r->size);
}

static int moe_gguf_read_u32(struct moe_gguf_rd *r, const char *item, uint32_t *v)
{
    if (moe_gguf_left(r) < 4)
        return moe_gguf_truncated(r, item, 4);
    *v = (uint32_t)moe_gguf_le(r->d + r->pos, 4);
    r->pos += 4;
    return 0;
}

static int moe_gguf_read_u64(struct moe_gguf_rd *r, const char *item, uint64_t *v)
{
    if (moe_gguf_left(r) < 8)
        return moe_gguf_truncated(r, item, 8);
    *v = moe_gguf_le(r->d + r->pos, 8);
    r->pos += 8;
    return 0;
}

static int moe_gguf_read_str(struct moe_gguf_rd *r, const char *item, struct moe_gguf_str *s)
{
    uint64_t len;
    int rc = moe_gguf_read_u64(r, item, &len);
    if (rc < 0)
        return rc;
    if (len > moe_gguf_left(r))
        return moe_err(-EINVAL, "%s: %s: %s length %" PRIu64 " past end of file (offset %zu, "
                       "size %zu)", r->path, r->what, item, len, r->pos, r->size);
    s->ptr = (const char *)r->d + r->pos;
    s->len = len;
    r->pos += len;
    return 0;
}

/* A name (key or tensor) as a NUL-terminated copy; NUL inside is refused
 * since it could never be looked up. */
static int moe_gguf_read_name(struct moe_gguf_rd *r, const char *item, char **out)
{
    struct moe_gguf_str s;
    int rc = moe_gguf_read_str(r, item, &s);
    if (rc < 0)
        return rc;
    if (s.len == 0)
        return moe_err(-EINVAL, "%s: %s: empty %s", r->path, r->what, item);
    if (memchr(s.ptr, '\0', s.len))
        return moe_err(-EINVAL, "%s: %s: %s contains a NUL byte", r->path, r->what, item);
    *out = malloc(s.len + 1);
    if (!*out)
        return moe_err(-ENOMEM, "%s: %s: out of memory", r->path, r->what);
    memcpy(*out, s.ptr, s.len);
    (*out)[s.len] = '\0';
    return 0;
}

/* ---- metadata ------------------------------------------------------------------ */

/* Parses one value of the given type at the cursor. kv: where a top-level
 * value is recorded; NULL while skipping the insides of nested arrays. */
static int moe_gguf_value_parse(struct moe_gguf_rd *r, uint32_t type, int depth,
                                struct moe_gguf_kv *kv)
{
    size_t sz = moe_gguf_type_size(type);
    int rc;
    if (sz) {
        if (moe_gguf_left(r) < sz)
            return moe_gguf_truncated(r, "value", sz);
        if (kv)
            kv->raw = r->d + r->pos;
        r->pos += sz;
        return 0;
    }
    if (type == MOE_GGUF_STRING) {
        struct moe_gguf_str s;
        rc = moe_gguf_read_str(r, "string", &s);
        if (rc == 0 && kv)
            kv->str = s;
        return rc;
    }
    if (type != MOE_GGUF_ARRAY)
        return moe_err(-EINVAL, "%s: %s: unknown value type %" PRIu32, r->path, r->what, type);

    uint32_t elem;
    uint64_t count;
    if ((rc = moe_gguf_read_u32(r, "array type", &elem)) < 0 ||
        (rc = moe_gguf_read_u64(r, "array count", &count)) < 0)
        return rc;
    size_t esz = moe_gguf_type_size(elem);
    /* the least each element can take: a count past it is a lie */
    size_t emin = esz ? esz : elem == MOE_GGUF_STRING ? 8 : elem == MOE_GGUF_ARRAY
                                                               ? MOE_GGUF_ARRAY_MIN : 0;
    if (!emin)
        return moe_err(-EINVAL, "%s: %s: array of unknown type %" PRIu32, r->path, r->what,
                       elem);
    if (count > moe_gguf_left(r) / emin)
        return moe_err(-EINVAL, "%s: %s: array of %" PRIu64 " %s past end of file (offset %zu, "
                       "size %zu)", r->path, r->what, count, moe_gguf_type_name(elem), r->pos,
                       r->size);
    if (kv) {
        kv->elem = elem;
        kv->count = count;
        kv->raw = r->d + r->pos;
    }
    if (esz) {
        r->pos += count * esz;
        return 0;
    }
    if (elem == MOE_GGUF_STRING) {
        if (kv && count) {
            kv->strs = malloc(count * sizeof(*kv->strs));
            if (!kv->strs)
                return moe_err(-ENOMEM, "%s: %s: out of memory", r->path, r->what);
        }
        for (uint64_t i = 0; i < count; i++) {
            struct moe_gguf_str s;
            if ((rc = moe_gguf_read_str(r, "array string", &s)) < 0)
                return rc;
            if (kv)
                kv->strs[i] = s;
        }
        return 0;
    }
    /* arrays of arrays: walked (so the file stays in step), not kept */
    if (depth + 1 >= MOE_GGUF_MAX_NESTING)
        return moe_err(-EINVAL, "%s: %s: arrays nested deeper than %d", r->path, r->what,
                       MOE_GGUF_MAX_NESTING);
    for (uint64_t i = 0; i < count; i++)
        if ((rc = moe_gguf_value_parse(r, MOE_GGUF_ARRAY, depth + 1, NULL)) < 0)
            return rc;
    return 0;
}

static int moe_gguf_kv_parse(struct moe_gguf *g, struct moe_gguf_rd *r, size_t i)
{
    struct moe_gguf_kv *kv = &g->kvs[i];
    snprintf(r->what, sizeof(r->what), "key #%zu", i);
    int rc = moe_gguf_read_name(r, "key", &kv->key);
    if (rc < 0)
        return rc;
    char nm[MOE_FORMAT_NAME_MAX];
    snprintf(r->what, sizeof(r->what), "key '%s'",
             moe_format_printable(nm, sizeof(nm), kv->key, strlen(kv->key)));
    uint32_t type;
    if ((rc = moe_gguf_read_u32(r, "value type", &type)) < 0)
        return rc;
    kv->type = (enum moe_gguf_type)type;
    if ((rc = moe_gguf_value_parse(r, type, 0, kv)) < 0)
        return rc;
    size_t prev;
    if (moe_format_index_insert(&g->kv_index, kv->key, i, &prev) < 0)
        return moe_err(-EINVAL, "%s: %s: duplicate key (entries %zu and %zu)", r->path,
                       r->what, prev, i);
    return 0;
}

/* ---- getters ---------------------------------------------------------------- */

static const struct moe_gguf_kv *moe_gguf_kv_get(const struct moe_gguf *g, const char *key)
{
    ptrdiff_t i = moe_format_index_find(&g->kv_index, key);
    if (i < 0) {
        moe_err(-ENOENT, "%s: key '%s': not found", g->map.path, key);
        return NULL;
    }
    return &g->kvs[i];
}

static int moe_gguf_wrong_type(const struct moe_gguf *g, const struct moe_gguf_kv *kv,
                               const char *want)
{
    if (kv->type == MOE_GGUF_ARRAY)
        return moe_err(-EINVAL, "%s: key '%s': is an array of %s, expected %s", g->map.path,
                       kv->key, moe_gguf_type_name(kv->elem), want);
    return moe_err(-EINVAL, "%s: key '%s': is %s, expected %s", g->map.path, kv->key,
                   moe_gguf_type_name(kv->type), want);
}

bool moe_gguf_has(const struct moe_gguf *g, const char *key)
{
    return moe_format_index_find(&g->kv_index, key) >= 0;
}

int moe_gguf_get_u32(const struct moe_gguf *g, const char *key, uint32_t *out)
{
    const struct moe_gguf_kv *kv = moe_gguf_kv_get(g, key);
    if (!kv)
        return -ENOENT;
    size_t sz = moe_gguf_type_size(kv->type);
    bool is_signed = kv->type == MOE_GGUF_I8 || kv->type == MOE_GGUF_I16 ||
                     kv->type == MOE_GGUF_I32 || kv->type == MOE_GGUF_I64;
    bool is_int = is_signed || kv->type == MOE_GGUF_U8 || kv->type == MOE_GGUF_U16 ||
                  kv->type == MOE_GGUF_U32 || kv->type == MOE_GGUF_U64;
    if (!is_int)
        return moe_gguf_wrong_type(g, kv, "an integer");
    uint64_t u = moe_gguf_le(kv->raw, (int)sz);
    if (is_signed && sz < 8 && (u >> (sz * 8 - 1)) & 1)
        u |= UINT64_MAX << (sz * 8); /* sign-extend */
    if ((is_signed && (int64_t)u < 0) || u > UINT32_MAX) {
        if (is_signed)
            return moe_err(-EINVAL, "%s: key '%s': value %" PRId64 " does not fit in u32",
                           g->map.path, key, (int64_t)u);
        return moe_err(-EINVAL, "%s: key '%s': value %" PRIu64 " does not fit in u32",
                       g->map.path, key, u);
    }
    *out = (uint32_t)u;
    return 0;
}

int moe_gguf_get_f32(const struct moe_gguf *g, const char *key, float *out)
{
    const struct moe_gguf_kv *kv = moe_gguf_kv_get(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type == MOE_GGUF_F32) {
        uint32_t u = (uint32_t)moe_gguf_le(kv->raw, 4);
        memcpy(out, &u, 4);
    } else if (kv->type == MOE_GGUF_F64) {
        uint64_t u = moe_gguf_le(kv->raw, 8);
        double d;
        memcpy(&d, &u, 8);
        *out = (float)d;
    } else {
        return moe_gguf_wrong_type(g, kv, "f32 or f64");
    }
    return 0;
}

int moe_gguf_get_bool(const struct moe_gguf *g, const char *key, bool *out)
{
    const struct moe_gguf_kv *kv = moe_gguf_kv_get(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != MOE_GGUF_BOOL)
        return moe_gguf_wrong_type(g, kv, "bool");
    *out = kv->raw[0] != 0;
    return 0;
}

int moe_gguf_get_str(const struct moe_gguf *g, const char *key, struct moe_gguf_str *out)
{
    const struct moe_gguf_kv *kv = moe_gguf_kv_get(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != MOE_GGUF_STRING)
        return moe_gguf_wrong_type(g, kv, "string");
    *out = kv->str;
    return 0;
}

int moe_gguf_get_str_array(const struct moe_gguf *g, const char *key,
                           const struct moe_gguf_str **items, uint64_t *count)
{
    const struct moe_gguf_kv *kv = moe_gguf_kv_get(g, key);
    if (!kv)
        return -ENOENT;
    if (kv->type != MOE_GGUF_ARRAY || kv->elem != MOE_GGUF_STRING)
        return moe_gguf_wrong_type(g, kv, "an array of strings");
    *items = kv->strs;
    *count = kv->count;
    return 0;
}

int moe_gguf_get_array(const struct moe_gguf *g, const char *key, enum moe_gguf_type *elem,
                       const void **data, uint64_t *count)
{
    const struct moe_gguf_kv *kv = moe_gguf_kv_get(g, key);
    if (!kv)
        return -ENOENT;
    /* only fixed-size elements can be handed out raw */
    if (kv->type != MOE_GGUF_ARRAY || !moe_gguf_type_size(kv->elem))
        return moe_gguf_wrong_type(g, kv, "an array of numbers");
    *elem = kv->elem;
    *data = kv->raw;
    *count = kv->count;
    return 0;
}

size_t moe_gguf_kv_count(const struct moe_gguf *g)
{
    return g->n_kv;
}

const char *moe_gguf_key_at(const struct moe_gguf *g, size_t i, enum moe_gguf_type *type)
{
    if (i >= g->n_kv)
        return NULL;
    if (type)
        *type = g->kvs[i].type;
    return g->kvs[i].key;
}

/* ---- tensors ---------------------------------------------------------------- */

static int moe_gguf_tensor_parse(struct moe_gguf *g, struct moe_gguf_rd *r, size_t i,
                                 uint64_t *offset)
{
    struct moe_tensor_info *t = &g->tensors[i];
    char *name = NULL;
    snprintf(r->what, sizeof(r->what), "tensor #%zu", i);
    int rc = moe_gguf_read_name(r, "tensor name", &name);
    if (rc < 0)
        return rc;
    t->name = name;
    t->file = g->map.path;
    char nm[MOE_FORMAT_NAME_MAX];
    snprintf(r->what, sizeof(r->what), "tensor '%s'",
             moe_format_printable(nm, sizeof(nm), name, strlen(name)));

    uint32_t n_dims, type;
    if ((rc = moe_gguf_read_u32(r, "n_dims", &n_dims)) < 0)
        return rc;
    if (n_dims > GGUF_MAX_DIMS)
        return moe_err(-EINVAL, "%s: %s: %" PRIu32 " dimensions, at most %d", r->path, r->what,
                       n_dims, GGUF_MAX_DIMS);
    uint64_t ne[MOE_MAX_DIMS], n = 1;
    bool overflow = false, zero = false; /* a wrapped product can look like 0 */
    for (uint32_t d = 0; d < n_dims; d++) {
        if ((rc = moe_gguf_read_u64(r, "ne", &ne[d])) < 0)
            return rc;
        if (ne[d] > (uint64_t)INT64_MAX)
            return moe_err(-EINVAL, "%s: %s: ne[%" PRIu32 "] = %" PRIu64 " is too large",
                           r->path, r->what, d, ne[d]);
        if (ne[d] == 0)
            zero = true;
        else if (n > (uint64_t)INT64_MAX / ne[d])
            overflow = true;
        n *= ne[d];
    }
    if (zero)
        n = 0;
    else if (overflow)
        return moe_err(-EINVAL, "%s: %s: element count overflows", r->path, r->what);
    if ((rc = moe_gguf_read_u32(r, "type", &type)) < 0 ||
        (rc = moe_gguf_read_u64(r, "offset", offset)) < 0)
        return rc;

    if (type >= MOE_ARRAY_SIZE(moe_ggml_types) || !moe_ggml_types[type].name)
        return moe_err(-EINVAL, "%s: %s: unknown ggml type %" PRIu32, r->path, r->what, type);
    if (!moe_ggml_types[type].bytes)
        return moe_err(-EINVAL, "%s: %s: unsupported type %s (%" PRIu32 "); moed reads F32, "
                       "F16, BF16, Q8_0 and MXFP4", r->path, r->what, moe_ggml_types[type].name, type);
    int block = moe_ggml_types[type].block;
    size_t bbytes = moe_ggml_types[type].bytes;
    uint64_t ne0 = n_dims ? ne[0] : 1;
    if (ne0 % (uint64_t)block)
        return moe_err(-EINVAL, "%s: %s: ne[0] = %" PRIu64 " is not a multiple of %s's block "
                       "of %d", r->path, r->what, ne0, moe_ggml_types[type].name, block);
    if (n / (uint64_t)block > SIZE_MAX / bbytes)
        return moe_err(-EINVAL, "%s: %s: size overflows", r->path, r->what);
    if (*offset % g->alignment)
        return moe_err(-EINVAL, "%s: %s: offset %" PRIu64 " is not a multiple of the "
                       "alignment %" PRIu32, r->path, r->what, *offset, g->alignment);

    t->dtype = (int)type; /* moed's dtype ids are ggml's */
    t->nbytes = (size_t)(n / (uint64_t)block) * bbytes;
    t->n_dims = (int)n_dims;
    for (uint32_t d = 0; d < n_dims; d++)
        t->dims[d] = (int64_t)ne[n_dims - 1 - d]; /* ggml's ne[0] is innermost */
    return 0;
}

/* general.alignment, when present, replaces the default. */
static int moe_gguf_alignment_read(struct moe_gguf *g)
{
    g->alignment = MOE_GGUF_DEFAULT_ALIGNMENT;
    if (!moe_gguf_has(g, "general.alignment"))
        return 0;
    uint32_t a;
    int rc = moe_gguf_get_u32(g, "general.alignment", &a);
    if (rc < 0)
        return rc;
    if (a == 0 || (a & (a - 1)))
        return moe_err(-EINVAL, "%s: key 'general.alignment': %" PRIu32 " is not a nonzero "
                       "power of two", g->map.path, a);
    g->alignment = a;
    return 0;
}

/* ---- open / close -------------------------------------------------------------- */

void moe_gguf_close(struct moe_gguf *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->n_kv; i++) {
        free(g->kvs[i].key);
        free(g->kvs[i].strs);
    }
    free(g->kvs);
    for (size_t i = 0; i < g->n_tensors; i++)
        free((char *)g->tensors[i].name);
    free(g->tensors);
    moe_format_index_free(&g->kv_index);
    moe_format_index_free(&g->tensor_index);
    if (g->borrowed)
        free(g->map.path);
    else
        moe_file_unmap(&g->map);
    free(g);
}

static int moe_gguf_header_parse(struct moe_gguf *g, struct moe_gguf_rd *r, uint64_t *n_kv,
                                 uint64_t *n_tensors)
{
    const char *path = r->path;
    if (r->size == 0)
        return moe_err(-EINVAL, "%s: empty file", path);
    if (r->size < 4 || memcmp(r->d, "GGUF", 4) != 0) {
        char m[16];
        moe_format_printable(m, sizeof(m), (const char *)r->d, MOE_MIN(r->size, 4));
        return moe_err(-EINVAL, "%s: not a GGUF file (magic '%s', want 'GGUF')", path, m);
    }
    r->pos = 4;
    int rc;
    if ((rc = moe_gguf_read_u32(r, "version", &g->version)) < 0)
        return rc;
    if (g->version != 2 && g->version != 3) {
        uint32_t v = g->version, sw = __builtin_bswap32(v);
        if (sw == 2 || sw == 3)
            return moe_err(-EINVAL, "%s: big-endian GGUF (version %" PRIu32 ") is not "
                           "supported", path, sw);
        return moe_err(-EINVAL, "%s: unsupported GGUF version %" PRIu32 " (moed reads 2 and "
                       "3)", path, v);
    }
    if ((rc = moe_gguf_read_u64(r, "tensor count", n_tensors)) < 0 ||
        (rc = moe_gguf_read_u64(r, "key/value count", n_kv)) < 0)
        return rc;
    size_t left = moe_gguf_left(r);
    if (*n_kv > left / MOE_GGUF_KV_MIN || *n_tensors > left / MOE_GGUF_TENSOR_MIN ||
        *n_kv * MOE_GGUF_KV_MIN + *n_tensors * MOE_GGUF_TENSOR_MIN > left)
        return moe_err(-EINVAL, "%s: header: %" PRIu64 " keys and %" PRIu64 " tensors cannot "
                       "fit in the %zu bytes left in the file", path, *n_kv, *n_tensors, left);
    return 0;
}

/* Parses g->map (filled by the caller); frees g on failure. */
static int moe_gguf_parse(struct moe_gguf *g, struct moe_gguf **out)
{
    uint64_t *offsets = NULL;
    int rc;
    const char *path = g->map.path;
    struct moe_gguf_rd r = {.d = g->map.data, .size = g->map.size, .path = path};
    snprintf(r.what, sizeof(r.what), "header");

    uint64_t n_kv, n_tensors;
    if ((rc = moe_gguf_header_parse(g, &r, &n_kv, &n_tensors)) < 0)
        goto fail;
    g->kv_begin = r.pos;

    /* counts are bounded by the file size now, so these allocations are too */
    g->kvs = calloc(n_kv ? n_kv : 1, sizeof(*g->kvs));
    if (!g->kvs || moe_format_index_init(&g->kv_index, n_kv) < 0) {
        rc = moe_err(-ENOMEM, "%s: out of memory for %" PRIu64 " keys", path, n_kv);
        goto fail;
    }
    for (size_t i = 0; i < n_kv; i++) {
        g->n_kv = i + 1; /* so close frees a half-parsed entry */
        if ((rc = moe_gguf_kv_parse(g, &r, i)) < 0)
            goto fail;
    }
    g->kv_end = r.pos;
    if ((rc = moe_gguf_alignment_read(g)) < 0)
        goto fail;

    /* the metadata may have used up the room the tensor count needs */
    if (n_tensors > moe_gguf_left(&r) / MOE_GGUF_TENSOR_MIN) {
        rc = moe_err(-EINVAL, "%s: header: %" PRIu64 " tensors cannot fit in the %zu bytes "
                     "left after the metadata", path, n_tensors, moe_gguf_left(&r));
        goto fail;
    }
    g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof(*g->tensors));
    offsets = calloc(n_tensors ? n_tensors : 1, sizeof(*offsets));
    if (!g->tensors || !offsets || moe_format_index_init(&g->tensor_index, n_tensors) < 0) {
        rc = moe_err(-ENOMEM, "%s: out of memory for %" PRIu64 " tensors", path, n_tensors);
        goto fail;
    }
    for (size_t i = 0; i < n_tensors; i++) {
        g->n_tensors = i + 1;
        if ((rc = moe_gguf_tensor_parse(g, &r, i, &offsets[i])) < 0)
            goto fail;
        size_t prev;
        if (moe_format_index_insert(&g->tensor_index, g->tensors[i].name, i, &prev) < 0) {
            rc = moe_err(-EINVAL, "%s: %s: duplicate name (tensors %zu and %zu)", path, r.what,
                         prev, i);
            goto fail;
        }
    }

    /* the data section starts at the aligned end of the header */
    size_t data_off = MOE_ALIGN_UP(r.pos, (size_t)g->alignment);
    for (size_t i = 0; i < n_tensors; i++) {
        struct moe_tensor_info *t = &g->tensors[i];
        uint64_t b = moe_format_sat_add(data_off, offsets[i]);
        uint64_t e = moe_format_sat_add(b, t->nbytes);
        if (e > g->map.size) {
            char nm[MOE_FORMAT_NAME_MAX];
            rc = moe_err(-EINVAL, "%s: tensor '%s': data [%" PRIu64 ", %" PRIu64 ") past end "
                         "of file (size %zu)", path,
                         moe_format_printable(nm, sizeof(nm), t->name, strlen(t->name)), b, e,
                         g->map.size);
            goto fail;
        }
        /* offsets are multiples of general.alignment, which may be as small
         * as 1: the elements must still be aligned for typed loads */
        size_t align = moe_ggml_types[t->dtype].align;
        if (((uintptr_t)g->map.data + b) % align) {
            char nm[MOE_FORMAT_NAME_MAX];
            rc = moe_err(-EINVAL, "%s: tensor '%s': data at file offset %" PRIu64 " is not a "
                         "multiple of its %s element size (%zu bytes): general.alignment %"
                         PRIu32 " is too small for it", path,
                         moe_format_printable(nm, sizeof(nm), t->name, strlen(t->name)), b,
                         moe_ggml_types[t->dtype].name, align, g->alignment);
            goto fail;
        }
        t->data = g->map.data + b;
    }

    free(offsets);
    *out = g;
    return 0;

fail:
    free(offsets);
    moe_gguf_close(g);
    return rc;
}

int moe_gguf_open(const char *path, struct moe_gguf **out)
{
    *out = NULL;
    struct moe_gguf *g = calloc(1, sizeof(*g));
    if (!g)
        return moe_err(-ENOMEM, "%s: out of memory", path);
    int rc = moe_file_map(path, &g->map);
    if (rc < 0) {
        free(g);
        return rc;
    }
    return moe_gguf_parse(g, out);
}

int moe_gguf_open_mem(const void *data, size_t size, const char *name, struct moe_gguf **out)
{
    *out = NULL;
    struct moe_gguf *g = calloc(1, sizeof(*g));
    if (!g || !(g->map.path = strdup(name))) {
        free(g);
        return moe_err(-ENOMEM, "%s: out of memory", name);
    }
    g->borrowed = true;
    g->map.data = data;
    g->map.size = size;
    return moe_gguf_parse(g, out);
}

int moe_gguf_kv_section(const struct moe_gguf *g, uint32_t *version, uint64_t *n_kv,
                        const void **data, size_t *size)
{
    *version = g->version;
    *n_kv = g->n_kv;
    *data = g->map.data + g->kv_begin;
    *size = g->kv_end - g->kv_begin;
    return 0;
}

const char *moe_gguf_path(const struct moe_gguf *g)
{
    return g->map.path;
}

size_t moe_gguf_tensor_count(const struct moe_gguf *g)
{
    return g->n_tensors;
}

const struct moe_tensor_info *moe_gguf_tensor_at(const struct moe_gguf *g, size_t i)
{
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const struct moe_tensor_info *moe_gguf_find_tensor(const struct moe_gguf *g, const char *name)
{
    ptrdiff_t i = moe_format_index_find(&g->tensor_index, name);
    return i < 0 ? NULL : &g->tensors[i];
}
