/* The moed pack writer (format: format_pack.c). Streams data to a temporary
 * file through one buffer, so a pack of any size needs only the directory
 * in memory; the header and preamble go last, then fsync and rename. */
#define _GNU_SOURCE
#include "format/format_pack.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <dirent.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/common.h"
#include "format/format_int.h"

#define MOE_PACK_WBUF (4u << 20)

struct moe_pack_writer {
    char *path, *tmp;
    int fd;
    int slot;          /* in the signal cleanup registry, -1 if none */
    uint8_t *buf;
    size_t buf_len;
    uint64_t pos;      /* file offset of the next byte (buffered ones counted) */
    uint64_t reserved; /* bytes kept for the header at MOE_PACK_DATA_OFFSET, 0 if none */
    int err;           /* first error, sticky */
    json_t *tensors, *experts, *blobs;        /* header lists */
    json_t *tensor_names, *blob_names, *expert_keys; /* sets, for duplicates */
    json_t *config, *quant, *meta;
};

static const uint8_t moe_pack_zeros[MOE_PACK_EXPERT_ALIGN];

/* ---- temporary files to remove on SIGINT/SIGTERM/SIGHUP -------------------------------
 * The handler may only call async-signal-safe functions: the paths live in
 * static buffers, a slot is published by setting used last. */
#define MOE_PACK_REG_SLOTS 8
#define MOE_PACK_REG_PATH 4096
static char moe_pack_reg_path[MOE_PACK_REG_SLOTS][MOE_PACK_REG_PATH];
static volatile sig_atomic_t moe_pack_reg_used[MOE_PACK_REG_SLOTS];

static int reg_add(const char *tmp)
{
    if (strlen(tmp) >= MOE_PACK_REG_PATH)
        return -1;
    for (int i = 0; i < MOE_PACK_REG_SLOTS; i++) {
        if (moe_pack_reg_used[i])
            continue;
        memcpy(moe_pack_reg_path[i], tmp, strlen(tmp) + 1);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        moe_pack_reg_used[i] = 1;
        return i;
    }
    return -1; /* more writers than slots: those just lose the cleanup */
}

static void reg_remove(int slot)
{
    if (slot >= 0)
        moe_pack_reg_used[slot] = 0;
}

static bool reg_has(const char *tmp)
{
    for (int i = 0; i < MOE_PACK_REG_SLOTS; i++)
        if (moe_pack_reg_used[i] && !strcmp(moe_pack_reg_path[i], tmp))
            return true;
    return false;
}

static void moe_pack_on_signal(int sig)
{
    for (int i = 0; i < MOE_PACK_REG_SLOTS; i++)
        if (moe_pack_reg_used[i])
            unlink(moe_pack_reg_path[i]);
    signal(sig, SIG_DFL);
    raise(sig);
}

int moe_pack_writer_cleanup_on_signal(void)
{
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < MOE_ARRAY_SIZE(sigs); i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = moe_pack_on_signal;
        sigemptyset(&sa.sa_mask); /* one handler at a time: the unlinks finish */
        for (size_t k = 0; k < MOE_ARRAY_SIZE(sigs); k++)
            sigaddset(&sa.sa_mask, sigs[k]);
        sa.sa_flags = SA_RESETHAND;
        if (sigaction(sigs[i], &sa, NULL) < 0)
            return moe_err(-errno, "sigaction: %s", strerror(errno));
    }
    return 0;
}

/* ---- temporary files left by earlier runs ---------------------------------------------
 * PATH.tmp.PID whose PID is gone (SIGKILL, a crash, the OOM killer). A file
 * is kept while its PID lives (kill(pid, 0) succeeds or says EPERM) or while
 * someone holds its lock: a writer keeps LOCK_EX on its temporary file, which
 * also covers a writer whose PID we cannot see (another PID namespace on the
 * same kernel, or an NFS client, where flock becomes a POSIX lock). */
static bool pid_alive(long pid)
{
    return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

int moe_pack_writer_clean_stale(const char *path)
{
    char *dcopy = strdup(path), *bcopy = strdup(path);
    if (!dcopy || !bcopy) {
        free(dcopy);
        free(bcopy);
        return moe_err(-ENOMEM, "%s: out of memory", path);
    }
    const char *dir = dirname(dcopy), *base = basename(bcopy);
    size_t blen = strlen(base);
    int removed = 0;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        if (dfd >= 0)
            close(dfd);
        free(dcopy);
        free(bcopy);
        return 0; /* no directory yet: nothing left in it; open says what is wrong */
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *n = de->d_name;
        if (strncmp(n, base, blen) || strncmp(n + blen, ".tmp.", 5))
            continue;
        const char *digits = n + blen + 5;
        char *end;
        errno = 0;
        long pid = strtol(digits, &end, 10);
        if (!*digits || *end || digits[0] < '1' || digits[0] > '9' || errno)
            continue; /* not a name the writer makes */
        if (pid == (long)getpid() || pid_alive(pid))
            continue; /* ours is open's business; a live one is never touched */
        int fd = openat(dfd, n, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0)
            continue;
        struct stat st, st2;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && flock(fd, LOCK_EX | LOCK_NB) == 0 &&
            fstatat(dfd, n, &st2, AT_SYMLINK_NOFOLLOW) == 0 && st2.st_dev == st.st_dev &&
            st2.st_ino == st.st_ino && unlinkat(dfd, n, 0) == 0) {
            moe_log(MOE_LOG_INFO, "%s/%s: removed, left by an earlier run (pid %ld is gone)",
                    dir, n, pid);
            removed++;
        }
        close(fd);
    }
    closedir(d);
    free(dcopy);
    free(bcopy);
    return removed;
}

/* ---- streaming ------------------------------------------------------------------ */

static int fail_write(struct moe_pack_writer *w, int e)
{
    w->err = moe_err(-e, "%s: write failed: %s", w->tmp, strerror(e));
    return w->err;
}

static int write_all(struct moe_pack_writer *w, const void *data, size_t n)
{
    const uint8_t *p = data;
    while (n > 0) {
        ssize_t k = write(w->fd, p, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return fail_write(w, errno);
        }
        if (k == 0)
            return fail_write(w, EIO);
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static int flush(struct moe_pack_writer *w)
{
    if (w->err)
        return w->err;
    int rc = write_all(w, w->buf, w->buf_len);
    w->buf_len = 0;
    return rc;
}

static int put(struct moe_pack_writer *w, const void *data, size_t n)
{
    if (w->err)
        return w->err;
    w->pos += n;
    if (w->buf_len + n <= MOE_PACK_WBUF) {
        if (n)
            memcpy(w->buf + w->buf_len, data, n);
        w->buf_len += n;
        return 0;
    }
    int rc = flush(w);
    if (rc < 0)
        return rc;
    if (n >= MOE_PACK_WBUF / 2) /* large: straight to the file */
        return write_all(w, data, n);
    memcpy(w->buf, data, n);
    w->buf_len = n;
    return 0;
}

/* zeros up to the next multiple of align; st (may be NULL) hashes them */
static int pad(struct moe_pack_writer *w, uint64_t align, XXH64_state_t *st)
{
    uint64_t n = MOE_ALIGN_UP(w->pos, align) - w->pos;
    while (n > 0) {
        size_t k = (size_t)MOE_MIN(n, sizeof(moe_pack_zeros));
        int rc = put(w, moe_pack_zeros, k);
        if (rc < 0)
            return rc;
        if (st)
            XXH64_update(st, moe_pack_zeros, k);
        n -= k;
    }
    return 0;
}

/* ---- entries ------------------------------------------------------------------------ */

static json_t *hash_str(uint64_t h)
{
    char s[17];
    snprintf(s, sizeof(s), "%016" PRIx64, h);
    return json_string(s);
}

static int oom(struct moe_pack_writer *w)
{
    w->err = moe_err(-ENOMEM, "%s: out of memory", w->tmp);
    return w->err;
}

static int usable(struct moe_pack_writer *w)
{
    if (!w)
        return moe_err(-EINVAL, "moe_pack_writer: no writer");
    if (w->err)
        return moe_err(w->err, "%s: an earlier write failed; abort this pack", w->tmp);
    return 0;
}

/* the checks the reader will apply, so a writer cannot produce a pack that
 * does not open */
static int check_matrix(struct moe_pack_writer *w, const char *what, int dtype, int64_t rows,
                        int64_t cols, size_t nbytes)
{
    const struct moe_dtype_traits *tr = moe_dtype_traits(dtype);
    if (!tr)
        return moe_err(-EINVAL, "%s: %s: unknown dtype %d", w->path, what, dtype);
    if (rows < 0 || cols < 0)
        return moe_err(-EINVAL, "%s: %s: negative dimension", w->path, what);
    if (tr->view) {
        if (!nbytes || !rows || !cols)
            return moe_err(-EINVAL, "%s: %s: empty %s matrix", w->path, what, tr->name);
        return 0;
    }
    if (cols % tr->block_size)
        return moe_err(-EINVAL, "%s: %s: %" PRId64 " columns are not whole %s blocks", w->path,
                       what, cols, tr->name);
    uint64_t want;
    if (__builtin_mul_overflow((uint64_t)(cols / tr->block_size) * tr->block_bytes,
                               (uint64_t)rows, &want) || want != nbytes)
        return moe_err(-EINVAL, "%s: %s: %zu bytes given, the shape [%" PRId64 ", %" PRId64
                       "] of %s needs %" PRIu64, w->path, what, nbytes, rows, cols, tr->name,
                       want);
    return 0;
}

int moe_pack_writer_add_tensor(struct moe_pack_writer *w, const char *name, int dtype,
                               int n_dims, const int64_t *dims, const void *data, size_t nbytes)
{
    int rc = usable(w);
    if (rc < 0)
        return rc;
    if (!name || !*name)
        return moe_err(-EINVAL, "%s: tensor with no name", w->path);
    char what[MOE_FORMAT_NAME_MAX + 16];
    snprintf(what, sizeof(what), "tensor '%s'", name);
    if (json_object_get(w->tensor_names, name))
        return moe_err(-EEXIST, "%s: %s: added twice", w->path, what);
    if (n_dims < 0 || n_dims > MOE_MAX_DIMS)
        return moe_err(-EINVAL, "%s: %s: %d dimensions", w->path, what, n_dims);
    int64_t rows = 1, cols = n_dims ? dims[n_dims - 1] : 1;
    for (int i = 0; i < n_dims; i++)
        if (dims[i] < 0)
            return moe_err(-EINVAL, "%s: %s: negative dimension", w->path, what);
    for (int i = 0; i + 1 < n_dims; i++)
        if (__builtin_mul_overflow(rows, dims[i], &rows))
            return moe_err(-EINVAL, "%s: %s: shape too large", w->path, what);
    const struct moe_dtype_traits *tr = moe_dtype_traits(dtype);
    if (tr && tr->view && n_dims != 2)
        return moe_err(-EINVAL, "%s: %s: a %s tensor must be a matrix", w->path, what, tr->name);
    if ((rc = check_matrix(w, what, dtype, rows, cols, nbytes)) < 0)
        return rc;

    if ((rc = pad(w, MOE_PACK_TENSOR_ALIGN, NULL)) < 0)
        return rc;
    uint64_t off = w->pos;
    if ((rc = put(w, data, nbytes)) < 0)
        return rc;
    json_t *shape = json_array();
    for (int i = 0; shape && i < n_dims; i++)
        json_array_append_new(shape, json_integer(dims[i]));
    json_t *e = json_pack("{s:s, s:s, s:o, s:I, s:I, s:o}", "name", name, "dtype", tr->name,
                          "shape", shape, "offset", (json_int_t)off, "size", (json_int_t)nbytes,
                          "xxh64", hash_str(moe_pack_xxh64(data, nbytes)));
    if (!e || json_array_append_new(w->tensors, e) < 0 ||
        json_object_set_new(w->tensor_names, name, json_true()) < 0)
        return oom(w);
    return 0;
}

int moe_pack_writer_add_blob(struct moe_pack_writer *w, const char *name, const void *data,
                             size_t nbytes)
{
    int rc = usable(w);
    if (rc < 0)
        return rc;
    if (!name || !*name)
        return moe_err(-EINVAL, "%s: blob with no name", w->path);
    if (json_object_get(w->blob_names, name))
        return moe_err(-EEXIST, "%s: blob '%s': added twice", w->path, name);
    if ((rc = pad(w, MOE_PACK_TENSOR_ALIGN, NULL)) < 0)
        return rc;
    uint64_t off = w->pos;
    if ((rc = put(w, data, nbytes)) < 0)
        return rc;
    json_t *e = json_pack("{s:s, s:I, s:I, s:o}", "name", name, "offset", (json_int_t)off,
                          "size", (json_int_t)nbytes, "xxh64",
                          hash_str(moe_pack_xxh64(data, nbytes)));
    if (!e || json_array_append_new(w->blobs, e) < 0 ||
        json_object_set_new(w->blob_names, name, json_true()) < 0)
        return oom(w);
    return 0;
}

int moe_pack_writer_add_expert(struct moe_pack_writer *w, int32_t layer, int32_t expert,
                               const struct moe_pack_part *parts, size_t n_parts)
{
    int rc = usable(w);
    if (rc < 0)
        return rc;
    char what[64], key[32];
    snprintf(what, sizeof(what), "layer %d expert %d", layer, expert);
    if (layer < 0 || expert < 0)
        return moe_err(-EINVAL, "%s: %s: negative index", w->path, what);
    snprintf(key, sizeof(key), "%d.%d", layer, expert);
    if (json_object_get(w->expert_keys, key))
        return moe_err(-EEXIST, "%s: %s: added twice", w->path, what);
    if (n_parts < 3 || n_parts > MOE_PACK_MAX_PARTS)
        return moe_err(-EINVAL, "%s: %s: %zu parts, want 3 to %d", w->path, what, n_parts,
                       MOE_PACK_MAX_PARTS);
    int fixed = 0;
    for (size_t i = 0; i < n_parts; i++) {
        const char *nm = parts[i].name;
        char pw[128];
        snprintf(pw, sizeof(pw), "%s: part '%s'", what, nm ? nm : "");
        if (!nm || !*nm || strlen(nm) >= MOE_PACK_PART_NAME_MAX)
            return moe_err(-EINVAL, "%s: %s: part names are 1 to %d bytes", w->path, what,
                           MOE_PACK_PART_NAME_MAX - 1);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(parts[j].name, nm))
                return moe_err(-EINVAL, "%s: %s: twice", w->path, pw);
        if (!strcmp(nm, "gate") || !strcmp(nm, "up") || !strcmp(nm, "down"))
            fixed++;
        if ((rc = check_matrix(w, pw, parts[i].dtype, parts[i].rows, parts[i].cols,
                               parts[i].nbytes)) < 0)
            return rc;
    }
    if (fixed != 3)
        return moe_err(-EINVAL, "%s: %s: parts must include \"gate\", \"up\" and \"down\"",
                       w->path, what);

    if ((rc = pad(w, MOE_PACK_EXPERT_ALIGN, NULL)) < 0)
        return rc;
    uint64_t off = w->pos;
    XXH64_state_t *st = XXH64_createState();
    json_t *jparts = json_array();
    if (!st || !jparts) {
        XXH64_freeState(st);
        json_decref(jparts);
        return oom(w);
    }
    XXH64_reset(st, 0);
    for (size_t i = 0; i < n_parts && rc == 0; i++) {
        const struct moe_pack_part *pt = &parts[i];
        if ((rc = pad(w, MOE_PACK_TENSOR_ALIGN, st)) < 0)
            break;
        uint64_t poff = w->pos - off;
        if ((rc = put(w, pt->data, pt->nbytes)) < 0)
            break;
        XXH64_update(st, pt->data, pt->nbytes);
        json_t *jp = json_pack("{s:s, s:s, s:[I, I], s:I, s:I}", "name", pt->name, "dtype",
                               moe_dtype_name(pt->dtype), "shape", (json_int_t)pt->rows,
                               (json_int_t)pt->cols, "offset", (json_int_t)poff, "size",
                               (json_int_t)pt->nbytes);
        if (!jp || json_array_append_new(jparts, jp) < 0)
            rc = oom(w);
    }
    if (rc == 0)
        rc = pad(w, MOE_PACK_EXPERT_ALIGN, st);
    uint64_t h = XXH64_digest(st);
    XXH64_freeState(st);
    if (rc < 0) {
        json_decref(jparts);
        return rc;
    }
    json_t *e = json_pack("{s:i, s:i, s:I, s:I, s:o, s:o}", "layer", layer, "expert", expert,
                          "offset", (json_int_t)off, "size", (json_int_t)(w->pos - off),
                          "xxh64", hash_str(h), "parts", jparts);
    if (!e || json_array_append_new(w->experts, e) < 0 ||
        json_object_set_new(w->expert_keys, key, json_true()) < 0)
        return oom(w);
    return 0;
}

int moe_pack_writer_set_json(struct moe_pack_writer *w, const char *key, json_t *value)
{
    int rc = usable(w);
    if (rc < 0) {
        json_decref(value);
        return rc;
    }
    json_t **slot = !strcmp(key, "config") ? &w->config
                    : !strcmp(key, "quant") ? &w->quant
                    : !strcmp(key, "meta")  ? &w->meta
                                            : NULL;
    if (!slot || !json_is_object(value)) {
        json_decref(value);
        return moe_err(-EINVAL, "%s: header key '%s': want \"config\", \"quant\" or \"meta\" "
                       "with an object", w->path, key);
    }
    json_decref(*slot);
    *slot = value;
    return 0;
}

/* ---- open / commit / abort ----------------------------------------------------------- */

static void writer_free(struct moe_pack_writer *w)
{
    if (w->fd >= 0)
        close(w->fd);
    reg_remove(w->slot);
    json_decref(w->tensors);
    json_decref(w->experts);
    json_decref(w->blobs);
    json_decref(w->tensor_names);
    json_decref(w->blob_names);
    json_decref(w->expert_keys);
    json_decref(w->config);
    json_decref(w->quant);
    json_decref(w->meta);
    free(w->buf);
    free(w->path);
    free(w->tmp);
    free(w);
}

void moe_pack_writer_abort(struct moe_pack_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
        unlink(w->tmp);
    }
    writer_free(w);
}

const char *moe_pack_writer_tmp_path(const struct moe_pack_writer *w)
{
    return w->tmp;
}

int moe_pack_writer_open(const char *path, struct moe_pack_writer **out)
{
    *out = NULL;
    struct moe_pack_writer *w = calloc(1, sizeof(*w));
    if (!w)
        return moe_err(-ENOMEM, "%s: out of memory", path);
    w->fd = -1;
    w->slot = -1;
    int rc;
    size_t n = strlen(path) + 32;
    w->path = strdup(path);
    w->tmp = malloc(n);
    w->buf = malloc(MOE_PACK_WBUF);
    w->tensors = json_array();
    w->experts = json_array();
    w->blobs = json_array();
    w->tensor_names = json_object();
    w->blob_names = json_object();
    w->expert_keys = json_object();
    if (!w->path || !w->tmp || !w->buf || !w->tensors || !w->experts || !w->blobs ||
        !w->tensor_names || !w->blob_names || !w->expert_keys) {
        rc = moe_err(-ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    snprintf(w->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    /* registered before it exists, so that no signal finds it unregistered
     * (unlinking a name not yet created is harmless) */
    bool ours = reg_has(w->tmp); /* another writer of this process has the name */
    if (!ours)
        w->slot = reg_add(w->tmp);
    for (int attempt = 0; attempt < 2; attempt++) {
        w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (w->fd >= 0 || errno != EEXIST || attempt > 0 || ours)
            break;
        /* left by a killed process that had our pid: nobody alive writes it */
        unlink(w->tmp);
    }
    if (w->fd < 0) {
        int e = errno;
        rc = moe_err(-e, "%s: cannot create: %s", w->tmp, strerror(e));
        goto fail;
    }
    /* held until the file is renamed or removed: moe_pack_writer_clean_stale
     * in another process leaves a locked file alone */
    if (flock(w->fd, LOCK_EX | LOCK_NB) < 0)
        moe_log(MOE_LOG_DEBUG, "%s: flock: %s", w->tmp, strerror(errno));
    /* the preamble's place; written for real by commit */
    if ((rc = put(w, moe_pack_zeros, MOE_PACK_DATA_OFFSET)) < 0) {
        moe_pack_writer_abort(w);
        return rc;
    }
    *out = w;
    return 0;
fail:
    writer_free(w);
    return rc;
}

static int fsync_dir(const char *path)
{
    char *dup = strdup(path);
    if (!dup)
        return moe_err(-ENOMEM, "out of memory");
    const char *dir = dirname(dup);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = 0;
    if (fd < 0 || fsync(fd) < 0)
        rc = moe_err(-errno, "%s: cannot sync the directory: %s", dir, strerror(errno));
    if (fd >= 0)
        close(fd);
    free(dup);
    return rc;
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

int moe_pack_writer_reserve_header(struct moe_pack_writer *w, size_t bytes)
{
    int rc = usable(w);
    if (rc < 0)
        return rc;
    if (w->pos != MOE_PACK_DATA_OFFSET || w->reserved)
        return moe_err(-EINVAL, "%s: the header must be reserved before any data", w->tmp);
    uint64_t n = MOE_ALIGN_UP((uint64_t)bytes, (uint64_t)MOE_PACK_EXPERT_ALIGN);
    for (uint64_t done = 0; done < n && rc == 0; done += MOE_PACK_EXPERT_ALIGN)
        rc = put(w, moe_pack_zeros, MOE_PACK_EXPERT_ALIGN);
    if (rc == 0)
        w->reserved = n;
    return rc;
}

int moe_pack_writer_commit(struct moe_pack_writer *w)
{
    int rc = usable(w);
    char *text = NULL;
    if (rc < 0)
        goto fail;
    if ((rc = pad(w, MOE_PACK_TENSOR_ALIGN, NULL)) < 0)
        goto fail;
    uint64_t hoff = w->pos;
    json_t *root = json_pack("{s:s, s:i, s:O?, s:O?, s:O?, s:O, s:O, s:O}", "format",
                             "moed-pack", "version", MOE_PACK_VERSION, "config", w->config,
                             "quant", w->quant, "meta", w->meta, "tensors", w->tensors,
                             "experts", w->experts, "blobs", w->blobs);
    if (root) {
        /* absent objects read as empty ones; write them so */
        static const char *const objs[] = {"config", "quant", "meta"};
        for (size_t i = 0; i < 3; i++)
            if (json_is_null(json_object_get(root, objs[i])))
                json_object_set_new(root, objs[i], json_object());
        text = json_dumps(root, JSON_COMPACT);
    }
    json_decref(root);
    if (!text) {
        rc = oom(w);
        goto fail;
    }
    size_t hlen = strlen(text);
    if (hlen <= w->reserved) { /* in front of the data: a truncated pack keeps its directory */
        if ((rc = flush(w)) < 0)
            goto fail;
        hoff = MOE_PACK_DATA_OFFSET;
        ssize_t k = pwrite(w->fd, text, hlen, (off_t)hoff);
        if (k != (ssize_t)hlen) {
            rc = fail_write(w, k < 0 ? errno : EIO);
            goto fail;
        }
    } else if ((rc = put(w, text, hlen)) < 0 || (rc = flush(w)) < 0) {
        goto fail;
    }

    uint8_t pre[MOE_PACK_PREAMBLE_BYTES] = {0};
    memcpy(pre, MOE_PACK_MAGIC, 8);
    put_le(pre + 8, MOE_PACK_VERSION, 4);
    put_le(pre + 12, 0, 4);
    put_le(pre + 16, hoff, 8);
    put_le(pre + 24, hlen, 8);
    put_le(pre + 32, moe_pack_xxh64(text, hlen), 8);
    ssize_t k = pwrite(w->fd, pre, sizeof(pre), 0);
    if (k != (ssize_t)sizeof(pre)) {
        rc = fail_write(w, k < 0 ? errno : EIO);
        goto fail;
    }
    if (fsync(w->fd) < 0) {
        rc = moe_err(-errno, "%s: fsync failed: %s", w->tmp, strerror(errno));
        goto fail;
    }
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) < 0) {
        rc = moe_err(-errno, "%s: close failed: %s", w->tmp, strerror(errno));
        unlink(w->tmp);
        goto fail;
    }
    if (rename(w->tmp, w->path) < 0) {
        rc = moe_err(-errno, "%s: cannot rename to %s: %s", w->tmp, w->path, strerror(errno));
        unlink(w->tmp);
        goto fail;
    }
    rc = fsync_dir(w->path);
    free(text);
    writer_free(w);
    return rc;
fail:
    free(text);
    moe_pack_writer_abort(w);
    return rc;
}
