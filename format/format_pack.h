/* format: the moed pack, the daemon's own model file (read, verify, write).
 *
 * Layout, version 1 (all integers little-endian):
 *
 *   [0, 64)        preamble: "MOEPACK\0", u32 version, u32 flags (0),
 *                  u64 header_offset, u64 header_bytes, u64 header_xxh64
 *                  (XXH64, seed 0, of the header bytes), zero padding
 *   [64, 4096)     zero
 *   [4096, ...)    data: dense tensors (64-byte aligned), expert blobs
 *                  (4096-byte aligned, sizes rounded up to 4096), named blobs
 *                  (64-byte aligned)
 *   header_offset  the JSON header (after the data: the writer only knows the
 *                  directory at the end; the preamble is written last)
 *
 * The header:
 *   {"format": "moed-pack", "version": 1,
 *    "config": {...}, "quant": {...}, "meta": {...},      (free-form objects)
 *    "tensors": [{"name", "dtype", "shape": [...], "offset", "size", "xxh64"}],
 *    "experts": [{"layer", "expert", "offset", "size", "xxh64",
 *                 "parts": [{"name", "dtype", "shape": [rows, cols],
 *                            "offset" (inside the blob), "size"}]}],
 *    "blobs":   [{"name", "offset", "size", "xxh64"}]}
 * dtype is moed's dtype name ("bf16", "q8_0", "qmoe", ...): a dense tensor
 * holds f32 (vectors), f16/bf16, q8_0 or gq4 (moe-pack --dense), as its
 * entry says; xxh64 a 16-digit lowercase hex string; offsets are from the start of the file
 * except a part's, which is from the start of its expert's blob.
 *
 * Every expert is ONE contiguous blob holding its matrices ("gate", "up",
 * "down", each 64-byte aligned inside; further named parts allowed, e.g. a
 * lower-precision stand-in), so it can be read with O_DIRECT in one request.
 * Checksums: one XXH64 per tensor, per expert blob (the whole padded blob)
 * and per named blob.
 *
 * Reading maps the file; open checks the structure (magic, version, header
 * checksum, every range inside the file and aligned, sizes matching shapes,
 * no duplicates) but not the data checksums: those are moe_pack_verify_*().
 * Errors: negative errno, moe_err_msg() names the file and the tensor, blob
 * or "layer L expert E" at fault. */
#ifndef MOE_FORMAT_PACK_H
#define MOE_FORMAT_PACK_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "format/format.h"

#define MOE_PACK_MAGIC "MOEPACK" /* 8 bytes with its NUL */
#define MOE_PACK_VERSION 1
#define MOE_PACK_PREAMBLE_BYTES 64
#define MOE_PACK_DATA_OFFSET 4096
#define MOE_PACK_TENSOR_ALIGN 64   /* dense tensors, named blobs, parts in a blob */
#define MOE_PACK_EXPERT_ALIGN 4096 /* expert blobs: offset and size */
#define MOE_PACK_MAX_PARTS 8       /* matrices in one expert blob */
#define MOE_PACK_PART_NAME_MAX 16

/* ---- reading ------------------------------------------------------------------ */

/* One matrix inside an expert blob. */
struct moe_pack_expert_part {
    char name[MOE_PACK_PART_NAME_MAX]; /* "gate", "up", "down", ... */
    int dtype;                         /* enum moe_dtype */
    int64_t rows, cols;
    uint64_t offset; /* from the start of the blob, 64-byte aligned */
    uint64_t size;   /* bytes */
};

/* An expert: everything needed to read and check it by offset, without the
 * mapping (io_uring / O_DIRECT readers), plus a pointer into the mapping. */
struct moe_pack_expert {
    int32_t layer, expert;
    uint64_t offset; /* in the file, multiple of MOE_PACK_EXPERT_ALIGN */
    uint64_t size;   /* multiple of MOE_PACK_EXPERT_ALIGN, padding included */
    uint64_t xxh64;  /* of all size bytes */
    int n_parts;
    /* parts[0..2] are always gate, up, down; further parts follow in file order */
    struct moe_pack_expert_part parts[MOE_PACK_MAX_PARTS];
    const void *data; /* offset bytes into the mapping */
};
enum { MOE_PACK_PART_GATE = 0, MOE_PACK_PART_UP = 1, MOE_PACK_PART_DOWN = 2 };

/* A named byte string (tokenizer.json, qmoe.decode_table, ...). */
struct moe_pack_blob {
    const char *name;
    uint64_t offset, size, xxh64;
    const void *data; /* into the mapping */
};

struct moe_pack;

int moe_pack_open(const char *path, struct moe_pack **out);
void moe_pack_close(struct moe_pack *p);
const char *moe_pack_path(const struct moe_pack *p);
uint32_t moe_pack_version(const struct moe_pack *p);

/* The header's objects, borrowed (valid until close); never NULL (an empty
 * object when the pack has none). */
const json_t *moe_pack_config(const struct moe_pack *p);
const json_t *moe_pack_quant(const struct moe_pack *p);
const json_t *moe_pack_meta(const struct moe_pack *p);

/* Dense tensors, in file order; info->data points into the mapping and
 * info->file is the pack's path. */
size_t moe_pack_tensor_count(const struct moe_pack *p);
const struct moe_tensor_info *moe_pack_tensor_at(const struct moe_pack *p, size_t i);
const struct moe_tensor_info *moe_pack_find_tensor(const struct moe_pack *p, const char *name);

size_t moe_pack_blob_count(const struct moe_pack *p);
const struct moe_pack_blob *moe_pack_blob_at(const struct moe_pack *p, size_t i);
const struct moe_pack_blob *moe_pack_find_blob(const struct moe_pack *p, const char *name);

/* Experts sorted by (layer, expert). */
size_t moe_pack_expert_count(const struct moe_pack *p);
const struct moe_pack_expert *moe_pack_expert_at(const struct moe_pack *p, size_t i);
const struct moe_pack_expert *moe_pack_find_expert(const struct moe_pack *p, int32_t layer,
                                                   int32_t expert); /* NULL if absent */
/* The part named name ("gate", ...) of e, or NULL. */
const struct moe_pack_expert_part *moe_pack_expert_part(const struct moe_pack_expert *e,
                                                        const char *name);

/* Checksums. 0, -ENOENT (no such expert / tensor / blob) or -EIO with
 * "<file>: layer 2 expert 7: checksum mismatch, the blob is corrupt" (and
 * the like for "tensor 'x'" and "blob 'x'"). */
int moe_pack_verify_expert(const struct moe_pack *p, int32_t layer, int32_t expert);
/* The same check on a copy of e's blob read elsewhere (e->size bytes at blob). */
int moe_pack_verify_expert_data(const struct moe_pack *p, const struct moe_pack_expert *e,
                                const void *blob);
int moe_pack_verify_tensor(const struct moe_pack *p, const char *name);
int moe_pack_verify_blob(const struct moe_pack *p, const char *name);
/* every tensor, expert and blob; the first mismatch is the error */
int moe_pack_verify_all(const struct moe_pack *p);

/* For a reader that copies expert blobs elsewhere (the host tier, offload/)
 * instead of using them through the mapping (format_pack_advise.c):
 * RANDOM: no readahead around faults in them (binding reads their headers;
 * an 8 MiB read-around would cache the experts next to each); DROP: out of
 * this process's mapping (never written: a later access reads the file
 * again) and out of the page cache (pages another process maps stay).
 * Advice: failures are ignored. */
enum moe_pack_advice { MOE_PACK_EXPERTS_RANDOM, MOE_PACK_EXPERTS_DROP };
void moe_pack_advise_experts(const struct moe_pack *p, enum moe_pack_advice advice);
/* DROP, then RANDOM, for n bytes at `at` in the mapping (whole pages inside
 * the range): for data used a few pages at a time after a full read, such as
 * an untied token embedding after its checksum (one row per token; the
 * read-around of each fault would bring the rows around it back) */
void moe_pack_use_sparsely(const struct moe_pack *p, const void *at, size_t n);
/* the pack's mapping: file offset 0 */
const void *moe_pack_mapping(const struct moe_pack *p);

/* XXH64 (seed 0), the pack's checksum */
uint64_t moe_pack_xxh64(const void *data, size_t n);

/* ---- writing --------------------------------------------------------------------
 * Everything is streamed to "<path>.tmp.<pid>" in the target's directory
 * (O_EXCL, 0644); the target name is only created by commit's rename, so an
 * interrupted writer never leaves a half pack under it. Every function
 * returns 0 or a negative errno with moe_err_msg() set (a failed write names
 * the temporary file and strerror, e.g. "No space left on device"); after
 * the first error the writer refuses further work: abort it. */
struct moe_pack_writer;

/* One matrix of an expert, as given to the writer. nbytes must equal
 * moe_dtype_row_bytes(dtype, cols) * rows for fixed-size dtypes; for dtypes
 * whose traits have view != NULL (QMoE) it is the stored matrix's size. */
struct moe_pack_part {
    const char *name; /* "gate", "up", "down" or another (< 16 bytes) */
    int dtype;        /* enum moe_dtype */
    int64_t rows, cols;
    const void *data;
    size_t nbytes;
};

int moe_pack_writer_open(const char *path, struct moe_pack_writer **out);
/* The temporary file's name (valid until commit/abort). */
const char *moe_pack_writer_tmp_path(const struct moe_pack_writer *w);

/* A dense tensor: n_dims 0..MOE_MAX_DIMS, dims outermost first. Names are
 * unique among tensors. data is copied to the file before returning. */
int moe_pack_writer_add_tensor(struct moe_pack_writer *w, const char *name, int dtype,
                               int n_dims, const int64_t *dims, const void *data, size_t nbytes);
/* A named byte string; names unique among blobs. */
int moe_pack_writer_add_blob(struct moe_pack_writer *w, const char *name, const void *data,
                             size_t nbytes);
/* One expert's blob: parts must hold "gate", "up" and "down" (any order,
 * each once) and at most MOE_PACK_MAX_PARTS in all; (layer, expert) unique,
 * both >= 0. Written to the file before returning: nothing is kept. */
int moe_pack_writer_add_expert(struct moe_pack_writer *w, int32_t layer, int32_t expert,
                               const struct moe_pack_part *parts, size_t n_parts);
/* Sets the header object key ("config", "quant" or "meta"). STEALS the
 * reference to value (also on error), as json_object_set_new does; value
 * must be a JSON object. Setting a key twice replaces it. */
int moe_pack_writer_set_json(struct moe_pack_writer *w, const char *key, json_t *value);

/* Keeps room for the JSON header right after the preamble (call before any
 * data; bytes rounded up to 4096). If the header fits there at commit it is
 * written in front of the data, so a pack cut short still has its directory
 * and the reader can name the expert that is missing; otherwise it goes
 * after the data as usual. */
int moe_pack_writer_reserve_header(struct moe_pack_writer *w, size_t bytes);

/* Writes the header and the preamble, fsyncs the file, renames it to path
 * and fsyncs the directory. Always frees w: on failure the temporary file
 * is removed and path is left as it was. */
int moe_pack_writer_commit(struct moe_pack_writer *w);
/* Removes the temporary file and frees w (NULL: no-op). */
void moe_pack_writer_abort(struct moe_pack_writer *w);

/* Installs SIGINT/SIGTERM/SIGHUP handlers that unlink the temporary files
 * of writers still open, then die of the signal as before (for moe-pack:
 * Ctrl-C leaves nothing behind). Call once, from main. SIGKILL cannot be
 * caught: the temporary file then stays, the target name is never touched. */
int moe_pack_writer_cleanup_on_signal(void);
/* Removes the temporary files PATH.tmp.PID that earlier writers of path left
 * (killed by SIGKILL, crashed) whose PID is no longer alive and which nobody
 * holds locked; never one of a live process. Returns how many it removed
 * (each one logged), or -ENOMEM. */
int moe_pack_writer_clean_stale(const char *path);

#endif
