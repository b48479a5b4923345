/* A model and the moed pack: writing a model's base (config, tokenizer,
 * dense tensors; moe-pack adds the experts) and opening a model from a pack.
 * The tensor table (model_tensors.c) serves both, so the names written are
 * the names read. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "model/model_int.h"

/* ---- writing ------------------------------------------------------------------------ */

static int write_dense(void *ctx, const struct moe_dense_tensor *t)
{
    struct moe_pack_writer *w = ctx;
    if (!t->mat) {
        int64_t dims[1] = {t->n};
        return moe_pack_writer_add_tensor(w, t->name, MOE_DTYPE_F32, 1, dims, t->vec,
                                          (size_t)t->n * sizeof(float));
    }
    const struct moe_weight *x = t->mat;
    int64_t dims[2] = {x->rows, x->cols};
    return moe_pack_writer_add_tensor(w, t->name, x->dtype, 2, dims, x->data,
                                      moe_weight_bytes(x));
}

static int blob_from_file(struct moe_pack_writer *w, const char *dir, const char *name)
{
    char *path = moe_path_join(dir, name);
    if (!path)
        return moe_err(-ENOMEM, "out of memory");
    int rc = 0;
    if (access(path, F_OK) == 0) {
        char *text;
        size_t len;
        rc = moe_read_text_file(path, &text, &len);
        if (rc == 0) {
            rc = moe_pack_writer_add_blob(w, name, text, len);
            free(text);
        }
    }
    free(path);
    return rc;
}

/* chat_template.jinja: where transformers 5 keeps the chat template (the
 * daemon reads it from the pack as from the directory) */
static const char *const hf_tokenizer_blobs[] = {"tokenizer.json", "tokenizer_config.json",
                                                 "chat_template.jinja", "config.json",
                                                 "generation_config.json"};

/* a GGUF's metadata as a vocabulary-only GGUF: header with 0 tensors, the
 * key/value section byte for byte */
static int gguf_tokenizer_blob(struct moe_pack_writer *w, const struct moe_gguf *g)
{
    uint32_t version;
    uint64_t n_kv;
    const void *kv;
    size_t kv_size;
    moe_gguf_kv_section(g, &version, &n_kv, &kv, &kv_size);
    size_t n = 24 + kv_size;
    uint8_t *b = malloc(n);
    if (!b)
        return moe_err(-ENOMEM, "out of memory");
    memcpy(b, "GGUF", 4);
    for (int i = 0; i < 4; i++)
        b[4 + i] = (uint8_t)(version >> (8 * i));
    memset(b + 8, 0, 8);
    for (int i = 0; i < 8; i++)
        b[16 + i] = (uint8_t)(n_kv >> (8 * i));
    memcpy(b + 24, kv, kv_size);
    int rc = moe_pack_writer_add_blob(w, "tokenizer.gguf", b, n);
    free(b);
    return rc;
}

int moe_model_pack_write_base(const struct moe_model *m, struct moe_pack_writer *w)
{
    json_t *cfg = moe_config_to_json(&m->cfg);
    if (!cfg)
        return moe_err(-ENOMEM, "out of memory");
    int rc = moe_pack_writer_set_json(w, "config", cfg);
    if (rc < 0)
        return rc;

    const struct moe_model_files *f = m->files;
    if (f->st) {
        for (size_t i = 0; i < MOE_ARRAY_SIZE(hf_tokenizer_blobs); i++)
            if ((rc = blob_from_file(w, m->path, hf_tokenizer_blobs[i])) < 0)
                return rc;
    } else if (f->gguf) {
        if (moe_gguf_has(f->gguf, "tokenizer.ggml.model") &&
            (rc = gguf_tokenizer_blob(w, f->gguf)) < 0)
            return rc;
    } else if (f->pack) {
        for (size_t i = 0; i <= MOE_ARRAY_SIZE(hf_tokenizer_blobs); i++) {
            const char *name = i < MOE_ARRAY_SIZE(hf_tokenizer_blobs) ? hf_tokenizer_blobs[i]
                                                                      : "tokenizer.gguf";
            const struct moe_pack_blob *b = moe_pack_find_blob(f->pack, name);
            if (b && (rc = moe_pack_writer_add_blob(w, name, b->data, b->size)) < 0)
                return rc;
        }
    }
    return moe_model_visit_dense(m, write_dense, w);
}

/* ---- reading ------------------------------------------------------------------------ */

struct moe_pack *moe_model_pack(const struct moe_model *m)
{
    return m && m->files ? m->files->pack : NULL;
}

int moe_pack_tokenizer(const struct moe_pack *p, struct moe_tokenizer **out)
{
    *out = NULL;
    const struct moe_pack_blob *tj = moe_pack_find_blob(p, "tokenizer.json");
    const struct moe_pack_blob *gg = moe_pack_find_blob(p, "tokenizer.gguf");
    char name[4200];
    if (tj) {
        const struct moe_pack_blob *tc = moe_pack_find_blob(p, "tokenizer_config.json");
        const struct moe_pack_blob *sb[2] = {moe_pack_find_blob(p, "config.json"),
                                             moe_pack_find_blob(p, "generation_config.json")};
        const char *st[2];
        size_t sl[2];
        for (int i = 0; i < 2; i++) {
            st[i] = sb[i] ? sb[i]->data : NULL;
            sl[i] = sb[i] ? (size_t)sb[i]->size : 0;
        }
        snprintf(name, sizeof(name), "%s: blob 'tokenizer.json'", moe_pack_path(p));
        return moe_tokenizer_from_hf_mem(name, tj->data, (size_t)tj->size,
                                         tc ? tc->data : NULL, tc ? (size_t)tc->size : 0, st,
                                         sl, 2, out);
    }
    if (gg) {
        struct moe_gguf *g;
        snprintf(name, sizeof(name), "%s: blob 'tokenizer.gguf'", moe_pack_path(p));
        int rc = moe_gguf_open_mem(gg->data, (size_t)gg->size, name, &g);
        if (rc < 0)
            return rc;
        rc = moe_tokenizer_from_gguf(g, out);
        moe_gguf_close(g);
        return rc;
    }
    return 0;
}

void moe_model_pack_free_sides(struct moe_model_files *f)
{
    for (int i = 0; i < f->n_sides; i++)
        if (f->sides[i].traits->side_free)
            f->sides[i].traits->side_free(f->sides[i].side);
    f->n_sides = 0;
}

/* the dtype's shared table, created from its blob on first use */
static int side_for(struct moe_model *m, int dtype, const struct moe_dtype_traits *tr,
                    const void **out)
{
    struct moe_model_files *f = m->files;
    *out = NULL;
    for (int i = 0; i < f->n_sides; i++)
        if (f->sides[i].dtype == dtype) {
            *out = f->sides[i].side;
            return 0;
        }
    if (!tr->side_name || !tr->side_create)
        return 0;
    const struct moe_pack_blob *b = moe_pack_find_blob(f->pack, tr->side_name);
    if (!b)
        return moe_err(-EINVAL, "%s: %s experts need the blob '%s', which the pack lacks",
                       m->path, tr->name, tr->side_name);
    if (f->n_sides >= MOE_PACK_MAX_SIDES)
        return moe_err(-ENOTSUP, "%s: more than %d dtypes with shared tables", m->path,
                       MOE_PACK_MAX_SIDES);
    void *side = NULL;
    int rc = tr->side_create(b->data, (size_t)b->size, &side);
    if (rc < 0) {
        const char *why = moe_err_msg();
        return moe_err(rc, "%s: blob '%s': %s", m->path, tr->side_name,
                       why[0] ? why : "not a valid table");
    }
    f->sides[f->n_sides++] = (struct moe_pack_side){dtype, tr, side};
    *out = side;
    return 0;
}

/* part p (name, shape) of expert e's blob into m's expert at its offset */
static int bind_part(struct moe_model *m, const struct moe_pack_expert *e,
                     const struct moe_expert_part *want, struct moe_expert_weights *ew)
{
    const char *path = m->path;
    const struct moe_pack_expert_part *pt = moe_pack_expert_part(e, want->name);
    int64_t rows = want->mat ? want->rows : 1, cols = want->mat ? want->cols : want->n;
    if (!pt)
        return moe_err(-EINVAL, "%s: layer %d expert %d: the blob has no part '%s'", path,
                       e->layer, e->expert, want->name);
    if (pt->rows != rows || pt->cols != cols)
        return moe_err(-EINVAL, "%s: layer %d expert %d: part '%s': expected shape [%" PRId64
                       ", %" PRId64 "], found [%" PRId64 ", %" PRId64 "]", path, e->layer,
                       e->expert, pt->name, rows, cols, pt->rows, pt->cols);
    const struct moe_dtype_traits *tr = moe_dtype_traits(pt->dtype);
    const uint8_t *data = (const uint8_t *)e->data + pt->offset;
    void *slot = (uint8_t *)ew + want->off;
    if (!want->mat) { /* a bias: fp32 in the blob, used in place (64-byte aligned) */
        if (pt->dtype != MOE_DTYPE_F32 || pt->size < (uint64_t)cols * sizeof(float))
            return moe_err(-EINVAL, "%s: layer %d expert %d: part '%s' is not %lld fp32 values",
                           path, e->layer, e->expert, pt->name, (long long)cols);
        *(const float **)slot = (const float *)(const void *)data;
        return 0;
    }
    struct moe_weight *out = slot;
    memset(out, 0, sizeof(*out));
    if (tr->view) {
        const void *side;
        int rc = side_for(m, pt->dtype, tr, &side);
        if (rc < 0)
            return rc;
        rc = tr->view(data, (size_t)pt->size, rows, cols, side, out);
        if (rc < 0) {
            const char *why = moe_err_msg();
            return moe_err(rc, "%s: layer %d expert %d: part '%s': bad %s matrix%s%s", path,
                           e->layer, e->expert, pt->name, tr->name, why[0] ? ": " : "", why);
        }
        return 0;
    }
    if (!moe_gemm_kernel((enum moe_dtype)pt->dtype, MOE_ISA_REF))
        return moe_err(-ENOTSUP, "%s: layer %d expert %d: part '%s': no kernel for dtype %s",
                       path, e->layer, e->expert, pt->name, tr->name);
    out->dtype = (enum moe_dtype)pt->dtype;
    out->rows = rows;
    out->cols = cols;
    out->row_bytes = moe_dtype_row_bytes(pt->dtype, cols);
    out->data = data;
    return 0;
}

static int bind_experts(struct moe_model *m)
{
    const struct moe_config *cfg = &m->cfg;
    int rc;
    for (int32_t l = 0; l < cfg->n_layers; l++) {
        if (cfg->layer_dense[l])
            continue;
        struct moe_expert_part parts[MOE_EXPERT_MAX_PARTS];
        int n = moe_model_expert_parts(m, l, 0, parts, MOE_EXPERT_MAX_PARTS);
        for (int32_t x = 0; x < cfg->n_experts; x++) {
            const struct moe_pack_expert *e = moe_pack_find_expert(m->files->pack, l, x);
            if (!e)
                return moe_err(-EINVAL, "%s: layer %d expert %d: missing from the pack",
                               m->path, l, x);
            for (int i = 0; i < n; i++)
                if ((rc = bind_part(m, e, &parts[i], &m->layers[l].experts[x])) < 0)
                    return rc;
        }
    }
    return 0;
}

int moe_model_open_pack(struct moe_model *m)
{
    struct moe_model_files *f = m->files;
    int rc;
    if ((rc = moe_pack_open(m->path, &f->pack)) < 0)
        return rc;
    /* nothing corrupt is ever used: every checksum before anything is bound
     * (expert blobs read on demand are checked as they arrive instead) */
    if (m->open_flags & MOE_MODEL_OPEN_EXPERTS_ON_READ) {
        /* binding reads each blob's header through the mapping: without
         * this, readahead around those faults caches the experts whole */
        moe_pack_advise_experts(f->pack, MOE_PACK_EXPERTS_RANDOM);
        for (size_t i = 0; i < moe_pack_tensor_count(f->pack); i++)
            if ((rc = moe_pack_verify_tensor(f->pack, moe_pack_tensor_at(f->pack, i)->name)) < 0)
                return rc;
        for (size_t i = 0; i < moe_pack_blob_count(f->pack); i++)
            if ((rc = moe_pack_verify_blob(f->pack, moe_pack_blob_at(f->pack, i)->name)) < 0)
                return rc;
    } else if ((rc = moe_pack_verify_all(f->pack)) < 0) {
        return rc;
    }
    if ((rc = moe_config_from_json(moe_pack_config(f->pack), m->path, &m->cfg)) < 0)
        return rc;
    if ((rc = moe_model_alloc_layers(m)) < 0 || (rc = moe_model_bind_tensors(m)) < 0 ||
        (rc = bind_experts(m)) < 0 || (rc = moe_model_derive(m)) < 0)
        return rc;
    /* the daemon holds what it uses: its checksum read the token embedding
     * whole, decoding reads a row per token (an untied one) */
    if (!m->cfg.tied_embeddings) {
        const struct moe_tensor_info *emb = moe_pack_find_tensor(f->pack, "embed");
        if (emb) /* the pack's bytes (a bound matrix may be a converted copy) */
            moe_pack_use_sparsely(f->pack, emb->data, emb->nbytes);
    }
    return moe_pack_tokenizer(f->pack, &m->tok);
}
