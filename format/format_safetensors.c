/* Safetensors reader: one file, or the shards named by
 * model.safetensors.index.json, all mmapped; tensor views point into the
 * mappings.
 *
 * File layout: u64 LE header length N, N bytes of JSON
 *   { "name": {"dtype": "BF16", "shape": [r, c], "data_offsets": [b, e]},
 *     "__metadata__": {...} }
 * then the data section; [b, e) is relative to its start. The safetensors
 * library pads the JSON with spaces to 8 bytes and writes tensors largest
 * dtype first, so every tensor starts on a multiple of its element size in
 * the file; moed requires it (views are read with typed loads). */
#include "format/format.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/common.h"
#include "format/format_int.h"

#define MOE_ST_HEADER_MAX 100000000ull /* the format's own cap on the JSON header */
#define MOE_ST_INDEX_NAME "model.safetensors.index.json"
#define MOE_ST_SINGLE_NAME "model.safetensors"

struct moe_safetensors {
    struct moe_mapped_file *files; /* one per shard; files[i].path names it */
    size_t n_files;
    struct moe_tensor_info *tensors; /* names are malloc'ed, owned here */
    size_t n_tensors, cap_tensors;
    struct moe_format_index index; /* name -> tensors[] */
};

/* Every dtype the format defines. The ones moed computes with map to its
 * dtype; the rest are kept (as MOE_DTYPE_OTHER) so a model holding, say, an
 * I64 position table still opens. Sizes in bits: F4/F6 are sub-byte. */
static const struct {
    const char *name;
    int dtype;
    unsigned bits;
} moe_st_dtypes[] = {
    {"F32", MOE_DTYPE_F32, 32},       {"F16", MOE_DTYPE_F16, 16},
    {"BF16", MOE_DTYPE_BF16, 16},     {"F64", MOE_DTYPE_OTHER, 64},
    {"I64", MOE_DTYPE_OTHER, 64},     {"U64", MOE_DTYPE_OTHER, 64},
    {"I32", MOE_DTYPE_OTHER, 32},     {"U32", MOE_DTYPE_OTHER, 32},
    {"I16", MOE_DTYPE_OTHER, 16},     {"U16", MOE_DTYPE_OTHER, 16},
    {"I8", MOE_DTYPE_OTHER, 8},       {"U8", MOE_DTYPE_OTHER, 8},
    {"BOOL", MOE_DTYPE_OTHER, 8},     {"F8_E4M3", MOE_DTYPE_OTHER, 8},
    {"F8_E5M2", MOE_DTYPE_OTHER, 8},  {"F8_E8M0", MOE_DTYPE_OTHER, 8},
    {"F6_E2M3", MOE_DTYPE_OTHER, 6},  {"F6_E3M2", MOE_DTYPE_OTHER, 6},
    {"F4", MOE_DTYPE_OTHER, 4},       {"C64", MOE_DTYPE_OTHER, 64},
};

void moe_safetensors_close(struct moe_safetensors *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->n_tensors; i++)
        free((char *)st->tensors[i].name);
    free(st->tensors);
    for (size_t i = 0; i < st->n_files; i++)
        moe_file_unmap(&st->files[i]);
    free(st->files);
    moe_format_index_free(&st->index);
    free(st);
}

size_t moe_safetensors_count(const struct moe_safetensors *st)
{
    return st->n_tensors;
}

const struct moe_tensor_info *moe_safetensors_at(const struct moe_safetensors *st, size_t i)
{
    return i < st->n_tensors ? &st->tensors[i] : NULL;
}

const struct moe_tensor_info *moe_safetensors_find(const struct moe_safetensors *st,
                                                   const char *name)
{
    ptrdiff_t i = moe_format_index_find(&st->index, name);
    return i < 0 ? NULL : &st->tensors[i];
}

/* A non-negative JSON integer, as uint64. */
static bool moe_st_json_u64(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static int moe_st_json_error(const char *path, const char *what, const json_error_t *je)
{
    char text[MOE_FORMAT_NAME_MAX];
    moe_format_printable(text, sizeof(text), je->text, strlen(je->text));
    return moe_err(-EINVAL, "%s: bad JSON %s: %s (line %d, column %d)", path, what, text,
                   je->line, je->column);
}

/* Checks one header entry and fills t (name not set). The error names the
 * tensor; data/dsize is the data section, which starts at file offset doff. */
static int moe_st_tensor_parse(const char *path, const char *name, const json_t *v,
                               const uint8_t *data, uint64_t doff, uint64_t dsize,
                               struct moe_tensor_info *t)
{
    char nm[MOE_FORMAT_NAME_MAX];
    moe_format_printable(nm, sizeof(nm), name, strlen(name));
    if (!json_is_object(v))
        return moe_err(-EINVAL, "%s: tensor '%s': entry is not an object", path, nm);

    const json_t *jd = json_object_get(v, "dtype");
    if (!json_is_string(jd))
        return moe_err(-EINVAL, "%s: tensor '%s': no \"dtype\" string", path, nm);
    const char *ds = json_string_value(jd);
    unsigned bits = 0;
    for (size_t i = 0; i < MOE_ARRAY_SIZE(moe_st_dtypes); i++) {
        if (strcmp(ds, moe_st_dtypes[i].name) == 0) {
            t->dtype = moe_st_dtypes[i].dtype;
            bits = moe_st_dtypes[i].bits;
            break;
        }
    }
    if (!bits) {
        char dn[MOE_FORMAT_NAME_MAX];
        moe_format_printable(dn, sizeof(dn), ds, json_string_length(jd));
        return moe_err(-EINVAL, "%s: tensor '%s': unknown dtype '%s'", path, nm, dn);
    }

    const json_t *js = json_object_get(v, "shape");
    if (!json_is_array(js))
        return moe_err(-EINVAL, "%s: tensor '%s': no \"shape\" array", path, nm);
    size_t nd = json_array_size(js);
    if (nd > MOE_MAX_DIMS)
        return moe_err(-EINVAL, "%s: tensor '%s': %zu dimensions, moed supports at most %d",
                       path, nm, nd, MOE_MAX_DIMS);
    /* element count; an empty shape is a scalar */
    uint64_t n = 1;
    bool overflow = false, zero = false; /* a wrapped product can look like 0 */
    t->n_dims = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        uint64_t dim;
        if (!moe_st_json_u64(json_array_get(js, i), &dim))
            return moe_err(-EINVAL, "%s: tensor '%s': shape[%zu] is not a non-negative integer",
                           path, nm, i);
        t->dims[i] = (int64_t)dim;
        if (dim == 0)
            zero = true;
        else if (n > UINT64_MAX / dim)
            overflow = true;
        n *= dim;
    }
    if (zero) /* no elements, whatever the other dims */
        n = 0;
    else if (overflow || n > UINT64_MAX / bits || n > (uint64_t)INT64_MAX)
        return moe_err(-EINVAL, "%s: tensor '%s': shape too large (element count overflows)",
                       path, nm);

    const json_t *jo = json_object_get(v, "data_offsets");
    uint64_t b, e;
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        !moe_st_json_u64(json_array_get(jo, 0), &b) || !moe_st_json_u64(json_array_get(jo, 1), &e))
        return moe_err(-EINVAL,
                       "%s: tensor '%s': \"data_offsets\" is not [begin, end] of non-negative "
                       "integers",
                       path, nm);
    if (e < b)
        return moe_err(-EINVAL, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                       "): end before begin", path, nm, b, e);
    if (e > dsize)
        return moe_err(-EINVAL, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                       ") past end of data section (%" PRIu64 " bytes)", path, nm, b, e, dsize);

    uint64_t want_bits = n * bits;
    if (want_bits % 8)
        return moe_err(-EINVAL, "%s: tensor '%s': %" PRIu64 " elements of %s are not a whole "
                       "number of bytes", path, nm, n, ds);
    if (want_bits / 8 != e - b)
        return moe_err(-EINVAL, "%s: tensor '%s': size mismatch: shape needs %" PRIu64
                       " bytes of %s, data_offsets span %" PRIu64, path, nm, want_bits / 8, ds,
                       e - b);
    /* Readers load elements with typed loads straight from the mapping
     * (page-aligned), so each tensor must start on a multiple of its element
     * size in the file. The safetensors library guarantees it: it pads the
     * header to 8 bytes and writes tensors largest dtype first. A file that
     * breaks it was written by something else, or shifted. */
    uint64_t align = bits < 8 ? 1 : MOE_MIN(bits / 8, 8u);
    if ((doff + b) % align)
        return moe_err(-EINVAL, "%s: tensor '%s': data at file offset %" PRIu64 " (data_offsets "
                       "begin %" PRIu64 " after a %" PRIu64 "-byte header) is not a multiple of "
                       "its %s element size (%" PRIu64 " bytes): the file is misaligned",
                       path, nm, doff + b, b, doff, ds, align);
    t->data = data + b;
    t->nbytes = (size_t)(e - b);
    return 0;
}

/* Shard tensors in file order: loaders then read each mapping front to back. */
static int moe_st_tensor_cmp(const void *a, const void *b)
{
    const struct moe_tensor_info *x = a, *y = b;
    uintptr_t px = (uintptr_t)x->data, py = (uintptr_t)y->data;
    if (px != py)
        return px < py ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Maps path and appends its tensors to st (names not yet indexed). */
static int moe_st_file_load(struct moe_safetensors *st, const char *path)
{
    json_t *root = NULL;
    int rc;

    struct moe_mapped_file *nf = realloc(st->files, (st->n_files + 1) * sizeof(*nf));
    if (!nf)
        return moe_err(-ENOMEM, "%s: out of memory", path);
    st->files = nf;
    struct moe_mapped_file *f = &st->files[st->n_files];
    rc = moe_file_map(path, f);
    if (rc < 0)
        return rc;
    st->n_files++;
    path = f->path; /* the mapping's own copy outlives the caller's */

    if (f->size < 8) {
        if (f->size == 0)
            return moe_err(-EINVAL, "%s: empty file", path);
        return moe_err(-EINVAL, "%s: truncated: file has %zu bytes, the header length alone "
                       "needs 8", path, f->size);
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | f->data[i];
    if (hlen > f->size - 8)
        return moe_err(-EINVAL, "%s: truncated: header says %" PRIu64 " bytes, file has %zu",
                       path, hlen, f->size);
    if (hlen > MOE_ST_HEADER_MAX)
        return moe_err(-EINVAL, "%s: header of %" PRIu64 " bytes exceeds the format's limit "
                       "of %llu", path, hlen, MOE_ST_HEADER_MAX);

    json_error_t je;
    root = json_loadb((const char *)f->data + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return moe_st_json_error(path, "header", &je);
    if (!json_is_object(root)) {
        rc = moe_err(-EINVAL, "%s: bad header: JSON is not an object", path);
        goto fail;
    }

    size_t want = st->n_tensors + json_object_size(root);
    if (want > st->cap_tensors) {
        struct moe_tensor_info *nt = realloc(st->tensors, want * sizeof(*nt));
        if (!nt) {
            rc = moe_err(-ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        st->tensors = nt;
        st->cap_tensors = want;
    }

    const uint8_t *data = f->data + 8 + hlen;
    uint64_t dsize = f->size - 8 - hlen;
    size_t first = st->n_tensors;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        struct moe_tensor_info *t = &st->tensors[st->n_tensors];
        memset(t, 0, sizeof(*t));
        rc = moe_st_tensor_parse(path, key, v, data, 8 + hlen, dsize, t);
        if (rc < 0)
            goto fail;
        t->file = path;
        t->name = strdup(key);
        if (!t->name) {
            rc = moe_err(-ENOMEM, "%s: out of memory", path);
            goto fail;
        }
        st->n_tensors++;
    }
    qsort(st->tensors + first, st->n_tensors - first, sizeof(*st->tensors), moe_st_tensor_cmp);
    json_decref(root);
    return 0;

fail:
    json_decref(root);
    return rc;
}

/* Indexes every tensor by name; a name in two shards is an error. */
static int moe_st_index_build(struct moe_safetensors *st, const char *what)
{
    if (moe_format_index_init(&st->index, st->n_tensors) < 0)
        return moe_err(-ENOMEM, "%s: out of memory indexing %zu tensors", what, st->n_tensors);
    for (size_t i = 0; i < st->n_tensors; i++) {
        size_t prev;
        if (moe_format_index_insert(&st->index, st->tensors[i].name, i, &prev) < 0) {
            char nm[MOE_FORMAT_NAME_MAX];
            moe_format_printable(nm, sizeof(nm), st->tensors[i].name,
                                 strlen(st->tensors[i].name));
            return moe_err(-EINVAL, "%s: tensor '%s': also in %s", st->tensors[i].file, nm,
                           st->tensors[prev].file);
        }
    }
    return 0;
}

int moe_safetensors_open_file(const char *path, struct moe_safetensors **out)
{
    *out = NULL;
    struct moe_safetensors *st = calloc(1, sizeof(*st));
    if (!st)
        return moe_err(-ENOMEM, "%s: out of memory", path);
    int rc = moe_st_file_load(st, path);
    if (rc < 0)
        goto fail;
    rc = moe_st_index_build(st, path);
    if (rc < 0)
        goto fail;
    *out = st;
    return 0;

fail:
    moe_safetensors_close(st);
    return rc;
}

static int moe_st_strcmp_p(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Shard names come from a file: keep them inside the model directory, and
 * printable, since they end up in error messages. */
static bool moe_st_shard_name_ok(const char *s)
{
    if (!*s || *s == '/')
        return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return false;
    for (const char *p = s; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return false;
        p += n;
        if (*p == '/')
            p++;
    }
    return true;
}

/* The shards named by the index at ipath, their tensors in one table. */
static int moe_st_open_index(const char *dir, const char *ipath, struct moe_safetensors **out)
{
    struct moe_safetensors *st = NULL;
    char *text = NULL, *spath = NULL;
    const char **shards = NULL;
    json_t *root = NULL;
    size_t len, n_shards = 0;
    int rc;

    rc = moe_read_text_file(ipath, &text, &len);
    if (rc < 0)
        return rc;
    json_error_t je;
    root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        rc = moe_st_json_error(ipath, "index", &je);
        goto fail;
    }
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm) || json_object_size(wm) == 0) {
        rc = moe_err(-EINVAL, "%s: no \"weight_map\" object with tensors in it", ipath);
        goto fail;
    }

    /* distinct shard names, sorted so shards open in their numbered order */
    shards = malloc(json_object_size(wm) * sizeof(*shards));
    if (!shards) {
        rc = moe_err(-ENOMEM, "%s: out of memory", ipath);
        goto fail;
    }
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v) {
        char nm[MOE_FORMAT_NAME_MAX];
        if (!json_is_string(v) || !moe_st_shard_name_ok(json_string_value(v))) {
            rc = moe_err(-EINVAL, "%s: tensor '%s': shard is not a file name inside %s", ipath,
                         moe_format_printable(nm, sizeof(nm), key, strlen(key)), dir);
            goto fail;
        }
        shards[n_shards++] = json_string_value(v);
    }
    qsort(shards, n_shards, sizeof(*shards), moe_st_strcmp_p);
    size_t u = 0;
    for (size_t i = 0; i < n_shards; i++)
        if (u == 0 || strcmp(shards[u - 1], shards[i]) != 0)
            shards[u++] = shards[i];
    n_shards = u;

    st = calloc(1, sizeof(*st));
    if (!st) {
        rc = moe_err(-ENOMEM, "%s: out of memory", ipath);
        goto fail;
    }
    for (size_t i = 0; i < n_shards; i++) {
        spath = moe_path_join(dir, shards[i]);
        if (!spath) {
            rc = moe_err(-ENOMEM, "%s: out of memory", ipath);
            goto fail;
        }
        rc = moe_st_file_load(st, spath);
        if (rc < 0)
            goto fail;
        free(spath);
        spath = NULL;
    }
    rc = moe_st_index_build(st, ipath);
    if (rc < 0)
        goto fail;

    /* files[i] is shards[i]: each listed tensor must be in the shard named */
    json_object_foreach(wm, key, v) {
        const char *sname = json_string_value(v);
        const char **sp = bsearch(&sname, shards, n_shards, sizeof(*shards), moe_st_strcmp_p);
        const struct moe_tensor_info *t = moe_safetensors_find(st, key);
        const char *shard_path = st->files[sp - shards].path;
        if (!t || t->file != shard_path) {
            char nm[MOE_FORMAT_NAME_MAX];
            rc = moe_err(-EINVAL, "%s: tensor '%s': listed in %s but missing from that shard",
                         shard_path, moe_format_printable(nm, sizeof(nm), key, strlen(key)),
                         ipath);
            goto fail;
        }
    }

    json_decref(root);
    free(shards);
    free(text);
    *out = st;
    return 0;

fail:
    moe_safetensors_close(st);
    free(spath);
    free(shards);
    json_decref(root);
    free(text);
    return rc;
}

int moe_safetensors_open_dir(const char *dir, struct moe_safetensors **out)
{
    *out = NULL;
    struct stat sb;
    if (stat(dir, &sb) < 0)
        return moe_err(-errno, "%s: cannot open: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return moe_err(-ENOTDIR, "%s: not a directory", dir);

    char *ipath = moe_path_join(dir, MOE_ST_INDEX_NAME);
    char *fpath = moe_path_join(dir, MOE_ST_SINGLE_NAME);
    int rc;
    if (!ipath || !fpath) {
        rc = moe_err(-ENOMEM, "%s: out of memory", dir);
    } else if (stat(ipath, &sb) == 0 || errno != ENOENT) {
        rc = moe_st_open_index(dir, ipath, out);
    } else if (stat(fpath, &sb) == 0 || errno != ENOENT) {
        rc = moe_safetensors_open_file(fpath, out);
    } else {
        rc = moe_err(-ENOENT, "%s: no %s or %s in this directory", dir, MOE_ST_SINGLE_NAME,
                     MOE_ST_INDEX_NAME);
    }
    free(ipath);
    free(fpath);
    return rc;
}
