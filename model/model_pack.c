/* A model and the moed pack: writing a model's base (config, tokenizer,
 * dense tensors; moe-pack adds the experts) and opening a model from a pack.
 * One list of the dense tensors (for_each_dense) serves both, so the names
 * written are the names read. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "model/model_int.h"

/* one dense tensor of the model: a matrix or an fp32 vector */
struct dense_slot {
    char name[96];
    struct moe_weight *w; /* matrix, or NULL */
    int64_t rows, cols;
    float **v; /* vector, or NULL */
    int64_t n;
};

typedef int (*dense_fn)(struct moe_model *m, const struct dense_slot *s, void *ctx);

#define SLOT_MAT(var, r, c, ...)                                                               \
    do {                                                                                       \
        struct dense_slot s_ = {.w = &(var), .rows = (r), .cols = (c)};                        \
        snprintf(s_.name, sizeof(s_.name), __VA_ARGS__);                                       \
        if ((rc = fn(m, &s_, ctx)) < 0)                                                        \
            return rc;                                                                         \
    } while (0)
#define SLOT_VEC(var, len, ...)                                                                \
    do {                                                                                       \
        struct dense_slot s_ = {.v = &(var), .n = (len)};                                      \
        snprintf(s_.name, sizeof(s_.name), __VA_ARGS__);                                       \
        if ((rc = fn(m, &s_, ctx)) < 0)                                                        \
            return rc;                                                                         \
    } while (0)

static int for_each_dense(struct moe_model *m, dense_fn fn, void *ctx)
{
    const struct moe_config *cfg = &m->cfg;
    int64_t H = cfg->hidden, hd = cfg->head_dim;
    int64_t nq = (int64_t)cfg->n_heads * hd, nkv = (int64_t)cfg->n_kv_heads * hd;
    int rc;
    SLOT_MAT(m->embed, cfg->vocab, H, "embed");
    if (!cfg->tied_embeddings)
        SLOT_MAT(m->lm_head, cfg->vocab, H, "lm_head");
    SLOT_VEC(m->final_norm, H, "final_norm");
    for (int32_t l = 0; l < cfg->n_layers; l++) {
        struct moe_layer *L = &m->layers[l];
        SLOT_VEC(L->attn_norm, H, "layers.%d.attn_norm", l);
        SLOT_VEC(L->ffn_norm, H, "layers.%d.ffn_norm", l);
        SLOT_MAT(L->wq, nq, H, "layers.%d.attn.q", l);
        SLOT_MAT(L->wk, nkv, H, "layers.%d.attn.k", l);
        SLOT_MAT(L->wv, nkv, H, "layers.%d.attn.v", l);
        SLOT_MAT(L->wo, H, nq, "layers.%d.attn.o", l);
        if (cfg->qkv_bias) {
            SLOT_VEC(L->bq, nq, "layers.%d.attn.q_bias", l);
            SLOT_VEC(L->bk, nkv, "layers.%d.attn.k_bias", l);
            SLOT_VEC(L->bv, nkv, "layers.%d.attn.v_bias", l);
        }
        if (cfg->qk_norm != MOE_QK_NORM_NONE) {
            bool full = cfg->qk_norm == MOE_QK_NORM_FULL;
            SLOT_VEC(L->q_norm, full ? nq : hd, "layers.%d.attn.q_norm", l);
            SLOT_VEC(L->k_norm, full ? nkv : hd, "layers.%d.attn.k_norm", l);
        }
        if (cfg->layer_dense[l]) {
            int64_t F = cfg->dense_ffn;
            SLOT_MAT(L->shared.gate, F, H, "layers.%d.mlp.gate", l);
            SLOT_MAT(L->shared.up, F, H, "layers.%d.mlp.up", l);
            SLOT_MAT(L->shared.down, H, F, "layers.%d.mlp.down", l);
            continue;
        }
        SLOT_MAT(L->router, cfg->n_experts, H, "layers.%d.router", l);
        if (cfg->shared_ffn > 0) {
            int64_t F = cfg->shared_ffn;
            SLOT_MAT(L->shared.gate, F, H, "layers.%d.shared_expert.gate", l);
            SLOT_MAT(L->shared.up, F, H, "layers.%d.shared_expert.up", l);
            SLOT_MAT(L->shared.down, H, F, "layers.%d.shared_expert.down", l);
            SLOT_MAT(L->shared_gate, 1, H, "layers.%d.shared_expert_gate", l);
        }
    }
    return 0;
}

/* ---- writing ------------------------------------------------------------------------ */

static int write_dense(struct moe_model *m, const struct dense_slot *s, void *ctx)
{
    struct moe_pack_writer *w = ctx;
    if (s->v) {
        int64_t dims[1] = {s->n};
        return moe_pack_writer_add_tensor(w, s->name, MOE_DTYPE_F32, 1, dims, *s->v,
                                          (size_t)s->n * sizeof(float));
    }
    const struct moe_weight *x = s->w;
    int64_t dims[2] = {x->rows, x->cols};
    return moe_pack_writer_add_tensor(w, s->name, x->dtype, 2, dims, x->data,
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

static const char *const hf_tokenizer_blobs[] = {"tokenizer.json", "tokenizer_config.json",
                                                 "config.json", "generation_config.json"};

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
    /* the visitor only reads through m here */
    return for_each_dense((struct moe_model *)m, write_dense, w);
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

static int bind_dense(struct moe_model *m, const struct dense_slot *s, void *ctx)
{
    const struct moe_pack *p = ctx;
    const struct moe_tensor_info *t = moe_pack_find_tensor(p, s->name);
    if (s->v)
        return moe_bind_vector(t, moe_pack_path(p), s->name, s->n, s->v);
    return moe_bind_matrix(t, moe_pack_path(p), s->name, s->rows, s->cols, s->w);
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

static int bind_part(struct moe_model *m, const struct moe_pack_expert *e, int k, int64_t rows,
                     int64_t cols, struct moe_weight *out)
{
    const struct moe_pack_expert_part *pt = &e->parts[k];
    const char *path = m->path;
    if (pt->rows != rows || pt->cols != cols)
        return moe_err(-EINVAL, "%s: layer %d expert %d: part '%s': expected shape [%" PRId64
                       ", %" PRId64 "], found [%" PRId64 ", %" PRId64 "]", path, e->layer,
                       e->expert, pt->name, rows, cols, pt->rows, pt->cols);
    const struct moe_dtype_traits *tr = moe_dtype_traits(pt->dtype);
    const uint8_t *data = (const uint8_t *)e->data + pt->offset;
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
    int64_t H = cfg->hidden, F = cfg->expert_ffn;
    int rc;
    for (int32_t l = 0; l < cfg->n_layers; l++) {
        if (cfg->layer_dense[l])
            continue;
        for (int32_t x = 0; x < cfg->n_experts; x++) {
            const struct moe_pack_expert *e = moe_pack_find_expert(m->files->pack, l, x);
            struct moe_expert_weights *ew = &m->layers[l].experts[x];
            if (!e)
                return moe_err(-EINVAL, "%s: layer %d expert %d: missing from the pack",
                               m->path, l, x);
            if ((rc = bind_part(m, e, MOE_PACK_PART_GATE, F, H, &ew->gate)) < 0 ||
                (rc = bind_part(m, e, MOE_PACK_PART_UP, F, H, &ew->up)) < 0 ||
                (rc = bind_part(m, e, MOE_PACK_PART_DOWN, H, F, &ew->down)) < 0)
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
    m->layers = calloc((size_t)m->cfg.n_layers, sizeof(*m->layers));
    if (!m->layers)
        return moe_err(-ENOMEM, "out of memory");
    for (int32_t l = 0; l < m->cfg.n_layers; l++) {
        m->layers[l].experts = calloc((size_t)m->cfg.n_experts, sizeof(struct moe_expert_weights));
        if (!m->layers[l].experts)
            return moe_err(-ENOMEM, "out of memory");
    }
    if ((rc = for_each_dense(m, bind_dense, f->pack)) < 0)
        return rc;
    if (m->cfg.tied_embeddings)
        m->lm_head = m->embed;
    if ((rc = bind_experts(m)) < 0)
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
