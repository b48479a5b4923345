/* The moed pack reader: maps the file, checks its structure, indexes the
 * tensors, experts and blobs; data checksums on demand (verify_*).
 *
 * Format version 1 (the writer is format_pack_write.c):
 *
 *   offset 0      preamble, 64 bytes, little-endian:
 *                   char magic[8] = "MOEPACK\0"
 *                   u32  version  (1)
 *                   u32  flags    (0; any other bit set is refused)
 *                   u64  header_offset
 *                   u64  header_bytes
 *                   u64  header_xxh64   XXH64 seed 0 of the header bytes
 *                   zero padding to 64
 *   4096          data: dense tensors (64-aligned), expert blobs (4096-aligned,
 *                 sizes rounded up to 4096), named blobs (64-aligned)
 *   header_offset the JSON header: at 4096 in room the writer reserved before
 *                 the data (moe-pack does, so a truncated pack keeps its
 *                 directory), else after the data (the writer only knows the
 *                 directory at the end, and writes the preamble last):
 *     {"format": "moed-pack", "version": 1,
 *      "config": {arch config}, "quant": {free-form}, "meta": {free-form},
 *      "tensors": [{"name", "dtype", "shape", "offset", "size", "xxh64"}],
 *      "experts": [{"layer", "expert", "offset", "size", "xxh64",
 *                   "parts": [{"name", "dtype", "shape": [rows, cols],
 *                              "offset" (inside the blob), "size"}]}],
 *      "blobs": [{"name", "offset", "size", "xxh64"}]}
 *   dtype: moed's dtype name (moe_dtype_name); xxh64: 16 lowercase hex digits.
 *   A dense tensor may be in any dtype of fixed-size rows with a kernel:
 *   f32 (norms, biases: always), f16 / bf16 as the source had them, or
 *   q8_0 / gq4 (moe-pack --dense; routers are never quantised); the reader
 *   binds each as its entry says. Expert parts: any expert format.
 *
 * A newer version is refused with a message saying so; unknown header keys
 * are ignored (room for additions that older readers can skip). */
#include "format/format_pack.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/common.h"
#include "format/format_int.h"

#define MOE_PACK_HEADER_MAX (1ull << 30) /* 1 GiB of JSON is no pack we wrote */

struct moe_pack_tensor {
    struct moe_tensor_info info;
    uint64_t offset, xxh64;
};

struct moe_pack {
    struct moe_mapped_file map;
    uint32_t version;
    uint64_t header_offset, header_bytes;
    json_t *root;                 /* names below point into it */
    json_t *config, *quant, *meta; /* borrowed from root, or owned empty objects */
    bool own_config, own_quant, own_meta;
    struct moe_pack_tensor *tensors;
    size_t n_tensors;
    struct moe_pack_blob *blobs;
    size_t n_blobs;
    struct moe_pack_expert *experts;
    size_t n_experts;
    struct moe_format_index tensor_index, blob_index;
};

uint64_t moe_pack_xxh64(const void *data, size_t n)
{
    return (uint64_t)XXH64(data, n, 0);
}

static uint64_t rd_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* ---- accessors ------------------------------------------------------------------ */

const char *moe_pack_path(const struct moe_pack *p) { return p->map.path; }
const void *moe_pack_mapping(const struct moe_pack *p) { return p->map.data; }
uint32_t moe_pack_version(const struct moe_pack *p) { return p->version; }
const json_t *moe_pack_config(const struct moe_pack *p) { return p->config; }
const json_t *moe_pack_quant(const struct moe_pack *p) { return p->quant; }
const json_t *moe_pack_meta(const struct moe_pack *p) { return p->meta; }
size_t moe_pack_tensor_count(const struct moe_pack *p) { return p->n_tensors; }
size_t moe_pack_blob_count(const struct moe_pack *p) { return p->n_blobs; }
size_t moe_pack_expert_count(const struct moe_pack *p) { return p->n_experts; }

const struct moe_tensor_info *moe_pack_tensor_at(const struct moe_pack *p, size_t i)
{
    return i < p->n_tensors ? &p->tensors[i].info : NULL;
}

const struct moe_tensor_info *moe_pack_find_tensor(const struct moe_pack *p, const char *name)
{
    ptrdiff_t i = moe_format_index_find(&p->tensor_index, name);
    return i < 0 ? NULL : &p->tensors[i].info;
}

const struct moe_pack_blob *moe_pack_blob_at(const struct moe_pack *p, size_t i)
{
    return i < p->n_blobs ? &p->blobs[i] : NULL;
}

const struct moe_pack_blob *moe_pack_find_blob(const struct moe_pack *p, const char *name)
{
    ptrdiff_t i = moe_format_index_find(&p->blob_index, name);
    return i < 0 ? NULL : &p->blobs[i];
}

const struct moe_pack_expert *moe_pack_expert_at(const struct moe_pack *p, size_t i)
{
    return i < p->n_experts ? &p->experts[i] : NULL;
}

static int expert_cmp(const void *a, const void *b)
{
    const struct moe_pack_expert *x = a, *y = b;
    if (x->layer != y->layer)
        return x->layer < y->layer ? -1 : 1;
    return x->expert < y->expert ? -1 : x->expert > y->expert;
}

const struct moe_pack_expert *moe_pack_find_expert(const struct moe_pack *p, int32_t layer,
                                                   int32_t expert)
{
    struct moe_pack_expert key = {.layer = layer, .expert = expert};
    if (!p->n_experts)
        return NULL;
    return bsearch(&key, p->experts, p->n_experts, sizeof(key), expert_cmp);
}

const struct moe_pack_expert_part *moe_pack_expert_part(const struct moe_pack_expert *e,
                                                        const char *name)
{
    for (int i = 0; i < e->n_parts; i++)
        if (!strcmp(e->parts[i].name, name))
            return &e->parts[i];
    return NULL;
}

/* ---- close ------------------------------------------------------------------------ */

void moe_pack_close(struct moe_pack *p)
{
    if (!p)
        return;
    if (p->own_config)
        json_decref(p->config);
    if (p->own_quant)
        json_decref(p->quant);
    if (p->own_meta)
        json_decref(p->meta);
    json_decref(p->root);
    free(p->tensors);
    free(p->blobs);
    free(p->experts);
    moe_format_index_free(&p->tensor_index);
    moe_format_index_free(&p->blob_index);
    moe_file_unmap(&p->map);
    free(p);
}

/* ---- header parsing ------------------------------------------------------------------ */

/* what an entry is called in messages: "tensor 'x'", "layer 3 expert 5" */
struct what {
    char s[MOE_FORMAT_NAME_MAX + 48];
};

static const char *json_name(const json_t *v, char *buf, size_t cap)
{
    return moe_format_printable(buf, cap, json_string_value(v), json_string_length(v));
}

static int get_u64(const struct moe_pack *p, const struct what *w, const json_t *o,
                   const char *key, uint64_t *out)
{
    const json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return moe_err(-EINVAL, "%s: %s: \"%s\" is not a non-negative integer", p->map.path,
                       w->s, key);
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int get_hash(const struct moe_pack *p, const struct what *w, const json_t *o,
                    uint64_t *out)
{
    const json_t *v = json_object_get(o, "xxh64");
    const char *s = json_string_value(v);
    bool ok = s && json_string_length(v) == 16;
    uint64_t h = 0;
    for (int i = 0; ok && i < 16; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            ok = false;
        h = h << 4 | (uint64_t)(d & 15);
    }
    if (!ok)
        return moe_err(-EINVAL, "%s: %s: \"xxh64\" is not 16 lowercase hex digits",
                       p->map.path, w->s);
    *out = h;
    return 0;
}

/* A name string without NUL bytes; *out borrowed from the JSON. */
static int get_name(const struct moe_pack *p, const char *kind, size_t i, const json_t *o,
                    const char **out)
{
    const json_t *v = json_object_get(o, "name");
    if (!json_is_string(v) || json_string_length(v) == 0)
        return moe_err(-EINVAL, "%s: %s %zu: no \"name\" string", p->map.path, kind, i);
    if (strlen(json_string_value(v)) != json_string_length(v)) {
        char nm[MOE_FORMAT_NAME_MAX];
        return moe_err(-EINVAL, "%s: %s '%s': name contains a NUL byte", p->map.path, kind,
                       json_name(v, nm, sizeof(nm)));
    }
    *out = json_string_value(v);
    return 0;
}

static int get_dtype(const struct moe_pack *p, const struct what *w, const json_t *o,
                     const struct moe_dtype_traits **tr, int *dtype)
{
    const json_t *v = json_object_get(o, "dtype");
    if (!json_is_string(v))
        return moe_err(-EINVAL, "%s: %s: no \"dtype\" string", p->map.path, w->s);
    for (int id = 0; id < 256; id++) {
        const struct moe_dtype_traits *t = moe_dtype_traits(id);
        if (t && strlen(t->name) == json_string_length(v) &&
            !strcmp(t->name, json_string_value(v))) {
            *tr = t;
            *dtype = id;
            return 0;
        }
    }
    char nm[MOE_FORMAT_NAME_MAX];
    return moe_err(-EINVAL, "%s: %s: unknown dtype '%s' (a newer moed may read it)",
                   p->map.path, w->s, json_name(v, nm, sizeof(nm)));
}

/* shape array -> dims; n_dims in [min_dims, max_dims] */
static int get_shape(const struct moe_pack *p, const struct what *w, const json_t *o,
                     int min_dims, int max_dims, int64_t *dims, int *n_dims)
{
    const json_t *v = json_object_get(o, "shape");
    if (!json_is_array(v) || json_array_size(v) < (size_t)min_dims ||
        json_array_size(v) > (size_t)max_dims)
        return moe_err(-EINVAL, "%s: %s: \"shape\" is not an array of %d to %d dimensions",
                       p->map.path, w->s, min_dims, max_dims);
    *n_dims = (int)json_array_size(v);
    for (int i = 0; i < *n_dims; i++) {
        const json_t *d = json_array_get(v, (size_t)i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return moe_err(-EINVAL, "%s: %s: shape[%d] is not a non-negative integer",
                           p->map.path, w->s, i);
        dims[i] = (int64_t)json_integer_value(d);
    }
    return 0;
}

/* The bytes a fixed-size dtype needs for rows x cols, or an error. For
 * dtypes with a view (rows of varying size) any non-zero size is taken
 * here; the view checks the structure when the matrix is bound. */
static int check_size(const struct moe_pack *p, const struct what *w,
                      const struct moe_dtype_traits *tr, int64_t rows, int64_t cols,
                      uint64_t size)
{
    if (tr->view) {
        if (size == 0 || rows == 0 || cols == 0)
            return moe_err(-EINVAL, "%s: %s: empty %s matrix", p->map.path, w->s, tr->name);
        return 0;
    }
    if (cols % tr->block_size)
        return moe_err(-EINVAL, "%s: %s: %" PRId64 " columns are not a whole number of %s "
                       "blocks of %d", p->map.path, w->s, cols, tr->name, tr->block_size);
    uint64_t row = (uint64_t)(cols / tr->block_size) * tr->block_bytes, want;
    if (__builtin_mul_overflow(row, (uint64_t)rows, &want))
        return moe_err(-EINVAL, "%s: %s: shape too large", p->map.path, w->s);
    if (want != size)
        return moe_err(-EINVAL, "%s: %s: size mismatch: the shape needs %" PRIu64 " bytes of "
                       "%s, the entry says %" PRIu64, p->map.path, w->s, want, tr->name, size);
    return 0;
}

/* [off, off+size) inside the file's data area, aligned. noun: "data" or "blob". */
static int check_range(const struct moe_pack *p, const struct what *w, const char *noun,
                       uint64_t off, uint64_t size, uint64_t align, bool size_aligned)
{
    uint64_t end = moe_format_sat_add(off, size);
    if (end > p->map.size)
        return moe_err(-EINVAL, "%s: %s: %s ends past the end of the file (truncated pack?): "
                       "[%" PRIu64 ", %" PRIu64 "), file has %zu bytes", p->map.path, w->s,
                       noun, off, end, p->map.size);
    if (off < MOE_PACK_DATA_OFFSET)
        return moe_err(-EINVAL, "%s: %s: %s at offset %" PRIu64 " is inside the preamble "
                       "(data starts at %d)", p->map.path, w->s, noun, off,
                       MOE_PACK_DATA_OFFSET);
    if (off < p->header_offset + p->header_bytes && end > p->header_offset && size > 0)
        return moe_err(-EINVAL, "%s: %s: %s [%" PRIu64 ", %" PRIu64 ") overlaps the header",
                       p->map.path, w->s, noun, off, end);
    if (off % align || (size_aligned && size % align))
        return moe_err(-EINVAL, "%s: %s: %s [%" PRIu64 ", %" PRIu64 ") is not aligned to %"
                       PRIu64 " bytes", p->map.path, w->s, noun, off, end, align);
    return 0;
}

static int parse_tensors(struct moe_pack *p, const json_t *arr)
{
    size_t n = json_array_size(arr);
    p->tensors = calloc(n ? n : 1, sizeof(*p->tensors));
    if (!p->tensors || moe_format_index_init(&p->tensor_index, n) < 0)
        return moe_err(-ENOMEM, "%s: out of memory for %zu tensors", p->map.path, n);
    for (size_t i = 0; i < n; i++) {
        const json_t *o = json_array_get(arr, i);
        struct moe_pack_tensor *t = &p->tensors[i];
        struct what w;
        int rc;
        if (!json_is_object(o))
            return moe_err(-EINVAL, "%s: tensor %zu: entry is not an object", p->map.path, i);
        if ((rc = get_name(p, "tensor", i, o, &t->info.name)) < 0)
            return rc;
        char nm[MOE_FORMAT_NAME_MAX];
        snprintf(w.s, sizeof(w.s), "tensor '%s'",
                 moe_format_printable(nm, sizeof(nm), t->info.name, strlen(t->info.name)));
        const struct moe_dtype_traits *tr;
        uint64_t size;
        if ((rc = get_dtype(p, &w, o, &tr, &t->info.dtype)) < 0 ||
            (rc = get_shape(p, &w, o, 0, MOE_MAX_DIMS, t->info.dims, &t->info.n_dims)) < 0 ||
            (rc = get_u64(p, &w, o, "offset", &t->offset)) < 0 ||
            (rc = get_u64(p, &w, o, "size", &size)) < 0 || (rc = get_hash(p, &w, o, &t->xxh64)) < 0)
            return rc;
        int64_t cols = t->info.n_dims ? t->info.dims[t->info.n_dims - 1] : 1;
        uint64_t rows = 1;
        bool zero = cols == 0, ovf = false;
        for (int d = 0; d + 1 < t->info.n_dims; d++) {
            zero |= t->info.dims[d] == 0;
            ovf |= __builtin_mul_overflow(rows, (uint64_t)t->info.dims[d], &rows);
        }
        if (zero)
            rows = 0;
        else if (ovf || rows > INT64_MAX)
            return moe_err(-EINVAL, "%s: %s: shape too large", p->map.path, w.s);
        if (tr->view && t->info.n_dims != 2)
            return moe_err(-EINVAL, "%s: %s: a %s tensor must be a matrix", p->map.path, w.s,
                           tr->name);
        if ((rc = check_size(p, &w, tr, (int64_t)rows, cols, size)) < 0 ||
            (rc = check_range(p, &w, "data", t->offset, size, MOE_PACK_TENSOR_ALIGN, false)) < 0)
            return rc;
        t->info.data = p->map.data + t->offset;
        t->info.nbytes = (size_t)size;
        t->info.file = p->map.path;
        size_t prev;
        if (moe_format_index_insert(&p->tensor_index, t->info.name, i, &prev) < 0)
            return moe_err(-EINVAL, "%s: %s: listed twice (entries %zu and %zu)", p->map.path,
                           w.s, prev, i);
        p->n_tensors = i + 1;
    }
    return 0;
}

static int parse_blobs(struct moe_pack *p, const json_t *arr)
{
    size_t n = json_array_size(arr);
    p->blobs = calloc(n ? n : 1, sizeof(*p->blobs));
    if (!p->blobs || moe_format_index_init(&p->blob_index, n) < 0)
        return moe_err(-ENOMEM, "%s: out of memory for %zu blobs", p->map.path, n);
    for (size_t i = 0; i < n; i++) {
        const json_t *o = json_array_get(arr, i);
        struct moe_pack_blob *b = &p->blobs[i];
        struct what w;
        int rc;
        if (!json_is_object(o))
            return moe_err(-EINVAL, "%s: blob %zu: entry is not an object", p->map.path, i);
        if ((rc = get_name(p, "blob", i, o, &b->name)) < 0)
            return rc;
        char nm[MOE_FORMAT_NAME_MAX];
        snprintf(w.s, sizeof(w.s), "blob '%s'",
                 moe_format_printable(nm, sizeof(nm), b->name, strlen(b->name)));
        if ((rc = get_u64(p, &w, o, "offset", &b->offset)) < 0 ||
            (rc = get_u64(p, &w, o, "size", &b->size)) < 0 ||
            (rc = get_hash(p, &w, o, &b->xxh64)) < 0 ||
            (rc = check_range(p, &w, "data", b->offset, b->size, MOE_PACK_TENSOR_ALIGN, false)) < 0)
            return rc;
        b->data = p->map.data + b->offset;
        size_t prev;
        if (moe_format_index_insert(&p->blob_index, b->name, i, &prev) < 0)
            return moe_err(-EINVAL, "%s: %s: listed twice (entries %zu and %zu)", p->map.path,
                           w.s, prev, i);
        p->n_blobs = i + 1;
    }
    return 0;
}

static int parse_part(struct moe_pack *p, const struct what *ew, const json_t *o, size_t k,
                      const struct moe_pack_expert *e, struct moe_pack_expert_part *part)
{
    const json_t *nv = json_object_get(o, "name");
    if (!json_is_object(o) || !json_is_string(nv) || json_string_length(nv) == 0 ||
        json_string_length(nv) >= MOE_PACK_PART_NAME_MAX ||
        strlen(json_string_value(nv)) != json_string_length(nv))
        return moe_err(-EINVAL, "%s: %s: part %zu: not an object with a \"name\" of 1 to %d "
                       "bytes", p->map.path, ew->s, k, MOE_PACK_PART_NAME_MAX - 1);
    memcpy(part->name, json_string_value(nv), json_string_length(nv) + 1);
    struct what w;
    char nm[MOE_FORMAT_NAME_MAX];
    snprintf(w.s, sizeof(w.s), "%.48s: part '%.32s'", ew->s,
             moe_format_printable(nm, sizeof(nm), part->name, strlen(part->name)));
    const struct moe_dtype_traits *tr;
    int64_t dims[2];
    int nd, rc;
    if ((rc = get_dtype(p, &w, o, &tr, &part->dtype)) < 0 ||
        (rc = get_shape(p, &w, o, 2, 2, dims, &nd)) < 0 ||
        (rc = get_u64(p, &w, o, "offset", &part->offset)) < 0 ||
        (rc = get_u64(p, &w, o, "size", &part->size)) < 0)
        return rc;
    part->rows = dims[0];
    part->cols = dims[1];
    if ((rc = check_size(p, &w, tr, part->rows, part->cols, part->size)) < 0)
        return rc;
    if (part->offset % MOE_PACK_TENSOR_ALIGN)
        return moe_err(-EINVAL, "%s: %s: offset %" PRIu64 " is not aligned to %d bytes",
                       p->map.path, w.s, part->offset, MOE_PACK_TENSOR_ALIGN);
    if (moe_format_sat_add(part->offset, part->size) > e->size)
        return moe_err(-EINVAL, "%s: %s: [%" PRIu64 ", %" PRIu64 ") is outside the blob of %"
                       PRIu64 " bytes", p->map.path, w.s, part->offset,
                       moe_format_sat_add(part->offset, part->size), e->size);
    return 0;
}

static int parse_expert(struct moe_pack *p, const json_t *o, size_t i, struct moe_pack_expert *e)
{
    struct what w;
    int rc;
    uint64_t layer, expert;
    snprintf(w.s, sizeof(w.s), "expert entry %zu", i);
    if (!json_is_object(o))
        return moe_err(-EINVAL, "%s: %s: not an object", p->map.path, w.s);
    if ((rc = get_u64(p, &w, o, "layer", &layer)) < 0 ||
        (rc = get_u64(p, &w, o, "expert", &expert)) < 0)
        return rc;
    if (layer > INT32_MAX || expert > INT32_MAX)
        return moe_err(-EINVAL, "%s: %s: layer %" PRIu64 " expert %" PRIu64 " out of range",
                       p->map.path, w.s, layer, expert);
    e->layer = (int32_t)layer;
    e->expert = (int32_t)expert;
    snprintf(w.s, sizeof(w.s), "layer %d expert %d", e->layer, e->expert);
    if ((rc = get_u64(p, &w, o, "offset", &e->offset)) < 0 ||
        (rc = get_u64(p, &w, o, "size", &e->size)) < 0 ||
        (rc = get_hash(p, &w, o, &e->xxh64)) < 0 ||
        (rc = check_range(p, &w, "blob", e->offset, e->size, MOE_PACK_EXPERT_ALIGN, true)) < 0)
        return rc;
    e->data = p->map.data + e->offset;

    const json_t *parts = json_object_get(o, "parts");
    size_t np = json_array_size(parts);
    if (!json_is_array(parts) || np < 3 || np > MOE_PACK_MAX_PARTS)
        return moe_err(-EINVAL, "%s: %s: \"parts\" is not an array of 3 to %d matrices",
                       p->map.path, w.s, MOE_PACK_MAX_PARTS);
    /* gate, up, down go to slots 0..2; the rest follow in file order */
    static const char *const fixed[3] = {"gate", "up", "down"};
    bool have[3] = {false, false, false};
    int next = 3;
    for (size_t k = 0; k < np; k++) {
        struct moe_pack_expert_part part;
        if ((rc = parse_part(p, &w, json_array_get(parts, k), k, e, &part)) < 0)
            return rc;
        int slot = -1;
        for (int f = 0; f < 3; f++)
            if (!strcmp(part.name, fixed[f]))
                slot = f;
        if (slot < 0) {
            for (int q = 3; q < next; q++)
                if (!strcmp(e->parts[q].name, part.name))
                    slot = q;
            if (slot < 0) {
                if (next >= MOE_PACK_MAX_PARTS) /* only when a fixed one is missing */
                    return moe_err(-EINVAL, "%s: %s: no \"gate\", \"up\" and \"down\" parts",
                                   p->map.path, w.s);
                e->parts[next++] = part;
                continue;
            }
        }
        if (slot < 3 ? have[slot] : true)
            return moe_err(-EINVAL, "%s: %s: part '%s' listed twice", p->map.path, w.s,
                           part.name);
        have[slot] = true;
        e->parts[slot] = part;
    }
    for (int f = 0; f < 3; f++)
        if (!have[f])
            return moe_err(-EINVAL, "%s: %s: no \"%s\" part", p->map.path, w.s, fixed[f]);
    e->n_parts = next;
    return 0;
}

static int parse_experts(struct moe_pack *p, const json_t *arr)
{
    size_t n = json_array_size(arr);
    p->experts = calloc(n ? n : 1, sizeof(*p->experts));
    if (!p->experts)
        return moe_err(-ENOMEM, "%s: out of memory for %zu experts", p->map.path, n);
    for (size_t i = 0; i < n; i++) {
        int rc = parse_expert(p, json_array_get(arr, i), i, &p->experts[i]);
        if (rc < 0)
            return rc;
    }
    p->n_experts = n;
    qsort(p->experts, n, sizeof(*p->experts), expert_cmp);
    for (size_t i = 1; i < n; i++)
        if (expert_cmp(&p->experts[i - 1], &p->experts[i]) == 0)
            return moe_err(-EINVAL, "%s: layer %d expert %d: listed twice", p->map.path,
                           p->experts[i].layer, p->experts[i].expert);
    return 0;
}

/* "config" etc.: an object, or an empty one when absent */
static int get_object(struct moe_pack *p, const char *key, json_t **out, bool *own)
{
    json_t *v = json_object_get(p->root, key);
    if (!v) {
        *out = json_object();
        *own = true;
        return *out ? 0 : moe_err(-ENOMEM, "%s: out of memory", p->map.path);
    }
    if (!json_is_object(v))
        return moe_err(-EINVAL, "%s: header: \"%s\" is not an object", p->map.path, key);
    *out = v;
    return 0;
}

static int parse_preamble(struct moe_pack *p)
{
    const char *path = p->map.path;
    const uint8_t *d = p->map.data;
    if (p->map.size < 8 || memcmp(d, MOE_PACK_MAGIC, 8) != 0)
        return moe_err(-EINVAL, "%s: not a moed pack (no \"MOEPACK\" magic)", path);
    if (p->map.size < MOE_PACK_DATA_OFFSET)
        return moe_err(-EINVAL, "%s: truncated pack: %zu bytes, the preamble alone takes %d",
                       path, p->map.size, MOE_PACK_DATA_OFFSET);
    p->version = (uint32_t)rd_le(d + 8, 4);
    uint32_t flags = (uint32_t)rd_le(d + 12, 4);
    if (p->version > MOE_PACK_VERSION)
        return moe_err(-ENOTSUP, "%s: pack format version %" PRIu32 " is newer than this moed "
                       "supports (%d); upgrade moed or re-pack the model", path, p->version,
                       MOE_PACK_VERSION);
    if (p->version == 0)
        return moe_err(-EINVAL, "%s: pack format version 0 is not valid", path);
    if (flags)
        return moe_err(-ENOTSUP, "%s: pack flags 0x%" PRIx32 " unknown to this moed", path, flags);
    p->header_offset = rd_le(d + 16, 8);
    p->header_bytes = rd_le(d + 24, 8);
    uint64_t hx = rd_le(d + 32, 8);
    if (p->header_offset < MOE_PACK_DATA_OFFSET)
        return moe_err(-EINVAL, "%s: header offset %" PRIu64 " is inside the preamble", path,
                       p->header_offset);
    if (p->header_bytes == 0 || p->header_bytes > MOE_PACK_HEADER_MAX)
        return moe_err(-EINVAL, "%s: header size %" PRIu64 " outside 1..%llu", path,
                       p->header_bytes, MOE_PACK_HEADER_MAX);
    uint64_t end = moe_format_sat_add(p->header_offset, p->header_bytes);
    if (end > p->map.size)
        return moe_err(-EINVAL, "%s: header [%" PRIu64 ", %" PRIu64 ") ends past the end of "
                       "the file (%zu bytes; truncated pack?)", path, p->header_offset, end,
                       p->map.size);
    if (moe_pack_xxh64(d + p->header_offset, p->header_bytes) != hx)
        return moe_err(-EIO, "%s: header checksum mismatch, the pack is corrupt", path);
    return 0;
}

int moe_pack_open(const char *path, struct moe_pack **out)
{
    *out = NULL;
    struct moe_pack *p = calloc(1, sizeof(*p));
    if (!p)
        return moe_err(-ENOMEM, "%s: out of memory", path);
    int rc = moe_file_map(path, &p->map);
    if (rc < 0)
        goto fail;
    path = p->map.path;
    if ((rc = parse_preamble(p)) < 0)
        goto fail;

    json_error_t je;
    p->root = json_loadb((const char *)p->map.data + p->header_offset, p->header_bytes,
                         JSON_REJECT_DUPLICATES, &je);
    if (!p->root) {
        char text[MOE_FORMAT_NAME_MAX];
        rc = moe_err(-EINVAL, "%s: bad JSON header: %s (line %d, column %d)", path,
                     moe_format_printable(text, sizeof(text), je.text, strlen(je.text)),
                     je.line, je.column);
        goto fail;
    }
    const json_t *fmt = json_object_get(p->root, "format");
    const json_t *ver = json_object_get(p->root, "version");
    if (!json_is_object(p->root) || !json_is_string(fmt) ||
        strcmp(json_string_value(fmt), "moed-pack") != 0) {
        rc = moe_err(-EINVAL, "%s: header is not a moed-pack object", path);
        goto fail;
    }
    if (!json_is_integer(ver) || json_integer_value(ver) != p->version) {
        rc = moe_err(-EINVAL, "%s: header version does not match the preamble's (%" PRIu32 ")",
                     path, p->version);
        goto fail;
    }
    if ((rc = get_object(p, "config", &p->config, &p->own_config)) < 0 ||
        (rc = get_object(p, "quant", &p->quant, &p->own_quant)) < 0 ||
        (rc = get_object(p, "meta", &p->meta, &p->own_meta)) < 0)
        goto fail;
    static const char *const lists[3] = {"tensors", "experts", "blobs"};
    for (int i = 0; i < 3; i++) {
        const json_t *a = json_object_get(p->root, lists[i]);
        if (a && !json_is_array(a)) {
            rc = moe_err(-EINVAL, "%s: header: \"%s\" is not an array", path, lists[i]);
            goto fail;
        }
    }
    /* absent lists read as empty: json_array_size(NULL) is 0 */
    if ((rc = parse_tensors(p, json_object_get(p->root, "tensors"))) < 0 ||
        (rc = parse_experts(p, json_object_get(p->root, "experts"))) < 0 ||
        (rc = parse_blobs(p, json_object_get(p->root, "blobs"))) < 0)
        goto fail;
    *out = p;
    return 0;
fail:
    moe_pack_close(p);
    return rc;
}

/* ---- checksums -------------------------------------------------------------------- */

int moe_pack_verify_expert_data(const struct moe_pack *p, const struct moe_pack_expert *e,
                                const void *blob)
{
    if (moe_pack_xxh64(blob, e->size) != e->xxh64)
        return moe_err(-EIO, "%s: layer %d expert %d: checksum mismatch, the blob is corrupt",
                       p->map.path, e->layer, e->expert);
    return 0;
}

int moe_pack_verify_expert(const struct moe_pack *p, int32_t layer, int32_t expert)
{
    const struct moe_pack_expert *e = moe_pack_find_expert(p, layer, expert);
    if (!e)
        return moe_err(-ENOENT, "%s: layer %d expert %d: not in the pack", p->map.path, layer,
                       expert);
    return moe_pack_verify_expert_data(p, e, e->data);
}

static int verify_tensor_at(const struct moe_pack *p, const struct moe_pack_tensor *t)
{
    if (moe_pack_xxh64(t->info.data, t->info.nbytes) != t->xxh64) {
        char nm[MOE_FORMAT_NAME_MAX];
        return moe_err(-EIO, "%s: tensor '%s': checksum mismatch, the data is corrupt",
                       p->map.path,
                       moe_format_printable(nm, sizeof(nm), t->info.name, strlen(t->info.name)));
    }
    return 0;
}

static int verify_blob_at(const struct moe_pack *p, const struct moe_pack_blob *b)
{
    if (moe_pack_xxh64(b->data, b->size) != b->xxh64) {
        char nm[MOE_FORMAT_NAME_MAX];
        return moe_err(-EIO, "%s: blob '%s': checksum mismatch, the data is corrupt",
                       p->map.path, moe_format_printable(nm, sizeof(nm), b->name, strlen(b->name)));
    }
    return 0;
}

int moe_pack_verify_tensor(const struct moe_pack *p, const char *name)
{
    ptrdiff_t i = moe_format_index_find(&p->tensor_index, name);
    if (i < 0)
        return moe_err(-ENOENT, "%s: no tensor '%s'", p->map.path, name);
    return verify_tensor_at(p, &p->tensors[i]);
}

int moe_pack_verify_blob(const struct moe_pack *p, const char *name)
{
    ptrdiff_t i = moe_format_index_find(&p->blob_index, name);
    if (i < 0)
        return moe_err(-ENOENT, "%s: no blob '%s'", p->map.path, name);
    return verify_blob_at(p, &p->blobs[i]);
}

int moe_pack_verify_all(const struct moe_pack *p)
{
    int rc;
    for (size_t i = 0; i < p->n_tensors; i++)
        if ((rc = verify_tensor_at(p, &p->tensors[i])) < 0)
            return rc;
    for (size_t i = 0; i < p->n_blobs; i++)
        if ((rc = verify_blob_at(p, &p->blobs[i])) < 0)
            return rc;
    for (size_t i = 0; i < p->n_experts; i++)
        if ((rc = moe_pack_verify_expert_data(p, &p->experts[i], p->experts[i].data)) < 0)
            return rc;
    return 0;
}
