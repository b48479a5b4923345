/* Opening a checkpoint: a Hugging Face directory or a GGUF file. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"
#include "model/model_arch.h"
#include "model/model_int.h"

int moe_model_derive(struct moe_model *m)
{
    const struct moe_config *c = &m->cfg;
    m->rope_inv_freq = malloc((size_t)MOE_MAX(c->rope_dim / 2, 1) * sizeof(float));
    m->kv_window = calloc((size_t)c->n_layers, sizeof(int32_t));
    if (!m->rope_inv_freq || !m->kv_window)
        return moe_err(-ENOMEM, "out of memory");
    moe_rope_inv_freq(c, m->rope_inv_freq);
    for (int32_t l = 0; l < c->n_layers; l++)
        m->kv_window[l] = c->layer_swa[l] ? c->sliding_window : 0;
    m->ffn = (struct moe_ffn_kind){
        c->act == MOE_ACT_SWIGLU_OAI ? MOE_FFN_SWIGLU_OAI : MOE_FFN_SILU, c->swiglu_alpha,
        c->swiglu_limit};
    return 0;
}

int moe_model_alloc_layers(struct moe_model *m)
{
    m->layers = calloc((size_t)m->cfg.n_layers, sizeof(*m->layers));
    if (!m->layers)
        return moe_err(-ENOMEM, "out of memory");
    for (int32_t l = 0; l < m->cfg.n_layers; l++) {
        m->layers[l].experts = calloc((size_t)m->cfg.n_experts, sizeof(struct moe_expert_weights));
        if (!m->layers[l].experts)
            return moe_err(-ENOMEM, "out of memory");
    }
    return 0;
}

static bool file_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* dir/tokenizer.json with dir/tokenizer_config.json when present. optional:
 * a directory without tokenizer.json is fine (*out stays NULL). */
static int tokenizer_from_dir(const char *dir, bool optional, struct moe_tokenizer **out)
{
    *out = NULL;
    char *tok_path = moe_path_join(dir, "tokenizer.json");
    char *tcfg_path = moe_path_join(dir, "tokenizer_config.json");
    int rc = 0;
    if (!tok_path || !tcfg_path)
        rc = moe_err(-ENOMEM, "out of memory");
    else if (!optional || file_exists(tok_path))
        rc = moe_tokenizer_from_hf(tok_path, file_exists(tcfg_path) ? tcfg_path : NULL, out);
    free(tok_path);
    free(tcfg_path);
    return rc;
}

int moe_model_file_kind(const char *path, enum moe_model_file *kind)
{
    struct stat st;
    if (stat(path, &st) < 0)
        return moe_err(-errno, "%s: cannot open: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) {
        *kind = MOE_FILE_DIR;
        return 0;
    }
    char magic[8] = {0};
    FILE *f = fopen(path, "rb");
    if (!f)
        return moe_err(-errno, "%s: cannot open: %s", path, strerror(errno));
    size_t got = fread(magic, 1, 8, f);
    fclose(f);
    *kind = got >= 4 && !memcmp(magic, "GGUF", 4)                ? MOE_FILE_GGUF
            : got == 8 && !memcmp(magic, MOE_PACK_MAGIC, 8) ? MOE_FILE_PACK
                                                            : MOE_FILE_OTHER;
    return 0;
}

int moe_model_open_tokenizer(const char *path, struct moe_tokenizer **out)
{
    *out = NULL;
    enum moe_model_file kind;
    int rc = moe_model_file_kind(path, &kind);
    if (rc < 0)
        return rc;
    if (kind == MOE_FILE_DIR)
        return tokenizer_from_dir(path, false, out);
    if (kind == MOE_FILE_PACK) {
        struct moe_pack *p;
        if ((rc = moe_pack_open(path, &p)) < 0)
            return rc;
        static const char *const blobs[] = {"tokenizer.json", "tokenizer_config.json",
                                            "config.json", "generation_config.json",
                                            "tokenizer.gguf"};
        for (size_t i = 0; i < MOE_ARRAY_SIZE(blobs) && rc == 0; i++)
            if (moe_pack_find_blob(p, blobs[i]))
                rc = moe_pack_verify_blob(p, blobs[i]);
        if (rc == 0)
            rc = moe_pack_tokenizer(p, out);
        if (rc == 0 && !*out)
            rc = moe_err(-ENOENT, "%s: the pack holds no tokenizer", path);
        moe_pack_close(p);
        return rc;
    }
    struct moe_gguf *g;
    if ((rc = moe_gguf_open(path, &g)) < 0)
        return rc;
    rc = moe_tokenizer_from_gguf(g, out);
    moe_gguf_close(g);
    return rc;
}

static int open_hf(struct moe_model *m)
{
    char *cfg_path = moe_path_join(m->path, "config.json");
    int rc = -ENOMEM;
    if (!cfg_path)
        goto out;
    if ((rc = moe_config_from_hf(cfg_path, &m->cfg)) < 0)
        goto out;
    if ((rc = moe_safetensors_open_dir(m->path, &m->files->st)) < 0)
        goto out;
    if ((rc = moe_model_alloc_layers(m)) < 0 || (rc = moe_model_bind_tensors(m)) < 0 ||
        (rc = moe_model_derive(m)) < 0)
        goto out;
    rc = tokenizer_from_dir(m->path, true, &m->tok);
out:
    free(cfg_path);
    return rc;
}

static int open_gguf(struct moe_model *m)
{
    int rc;
    if ((rc = moe_gguf_open(m->path, &m->files->gguf)) < 0)
        return rc;
    if ((rc = moe_config_from_gguf(m->files->gguf, &m->cfg)) < 0)
        return rc;
    if ((rc = moe_model_alloc_layers(m)) < 0 || (rc = moe_model_bind_tensors(m)) < 0 ||
        (rc = moe_model_derive(m)) < 0)
        return rc;
    if (moe_gguf_has(m->files->gguf, "tokenizer.ggml.model"))
        return moe_tokenizer_from_gguf(m->files->gguf, &m->tok);
    return 0;
}

int moe_model_open(const char *path, struct moe_model **out)
{
    return moe_model_open_flags(path, 0, out);
}

int moe_model_open_flags(const char *path, unsigned flags, struct moe_model **out)
{
    *out = NULL;
    enum moe_model_file kind;
    int rc = moe_model_file_kind(path, &kind);
    if (rc < 0)
        return rc;
    struct moe_model *m = calloc(1, sizeof(*m));
    if (!m)
        return moe_err(-ENOMEM, "out of memory");
    m->files = calloc(1, sizeof(*m->files));
    m->path = strdup(path);
    m->open_flags = flags;
    rc = -ENOMEM;
    if (!m->files || !m->path)
        goto fail;
    switch (kind) {
    case MOE_FILE_DIR: rc = open_hf(m); break;
    case MOE_FILE_GGUF: rc = open_gguf(m); break;
    case MOE_FILE_PACK: rc = moe_model_open_pack(m); break;
    default:
        rc = moe_err(-EINVAL, "%s: not a model: expected a Hugging Face directory, a GGUF file "
                     "or a moed pack", path);
    }
    if (rc < 0)
        goto fail;
    *out = m;
    return 0;
fail:
    moe_model_free(m);
    return rc;
}

int moe_model_config_from_path(const char *path, struct moe_config *out)
{
    memset(out, 0, sizeof(*out));
    enum moe_model_file kind;
    int rc = moe_model_file_kind(path, &kind);
    if (rc < 0)
        return rc;
    if (kind == MOE_FILE_DIR) {
        char *cfg_path = moe_path_join(path, "config.json");
        if (!cfg_path)
            return moe_err(-ENOMEM, "out of memory");
        rc = moe_config_from_hf(cfg_path, out);
        free(cfg_path);
        return rc;
    }
    if (kind == MOE_FILE_GGUF) {
        struct moe_gguf *g;
        if ((rc = moe_gguf_open(path, &g)) < 0)
            return rc;
        rc = moe_config_from_gguf(g, out);
        moe_gguf_close(g);
        return rc;
    }
    if (kind == MOE_FILE_PACK) {
        struct moe_pack *p;
        if ((rc = moe_pack_open(path, &p)) < 0)
            return rc;
        rc = moe_config_from_json(moe_pack_config(p), path, out);
        moe_pack_close(p);
        return rc;
    }
    return moe_config_from_hf(path, out); /* a config.json on its own */
}

void moe_model_free(struct moe_model *m)
{
    if (!m)
        return;
    if (m->layers) {
        for (int32_t l = 0; l < m->cfg.n_layers; l++) {
            free(m->layers[l].experts); /* the vectors are the model's owned copies */
        }
        free(m->layers);
    }
    free(m->rope_inv_freq);
    free(m->kv_window);
    moe_tokenizer_free(m->tok);
    moe_model_offload_free(m);
    if (m->files) {
        moe_safetensors_close(m->files->st);
        moe_gguf_close(m->files->gguf);
        moe_model_pack_free_sides(m->files); /* tables views point into: before the pack */
        moe_model_free_owned(m->files);
        moe_pack_close(m->files->pack);
        free(m->files);
    }
    free(m->path);
    free(m);
}

/* true when every element of w converts to a finite number (formats with
 * no element conversion are taken as finite: their codes cannot be NaN) */
static bool weight_finite(const struct moe_weight *w)
{
    const struct moe_dtype_traits *tr = moe_dtype_traits(w->dtype);
    if (!w->data || !tr || !tr->to_f32 || w->nbytes)
        return true;
    float *row = malloc((size_t)w->cols * sizeof(float));
    bool ok = row != NULL;
    for (int64_t r = 0; ok && r < w->rows; r++) {
        tr->to_f32((const uint8_t *)w->data + (size_t)r * w->row_bytes, row, w->cols);
        for (int64_t c = 0; c < w->cols && ok; c++)
            ok = isfinite(row[c]);
    }
    bool alloc_failed = row == NULL;
    free(row);
    return ok || alloc_failed;
}

static bool vec_finite(const float *v, int64_t n)
{
    for (int64_t i = 0; v && i < n; i++)
        if (!isfinite(v[i]))
            return false;
    return true;
}

static int check_dense(void *ctx, const struct moe_dense_tensor *t)
{
    struct moe_model *m = ctx;
    if (t->mat ? weight_finite(t->mat) : vec_finite(t->vec, t->n))
        return 0;
    snprintf(m->nonfinite, sizeof(m->nonfinite), "tensor '%s'", t->file_name);
    return 1; /* found: stop */
}

const char *moe_model_find_nonfinite(struct moe_model *m)
{
    if (m->nonfinite_scanned)
        return m->nonfinite[0] ? m->nonfinite : NULL;
    m->nonfinite_scanned = 1;
    m->nonfinite[0] = '\0';
    if (moe_model_visit_dense(m, check_dense, m) > 0)
        return m->nonfinite;
    for (int32_t l = 0; l < m->cfg.n_layers; l++) {
        if (m->cfg.layer_dense[l])
            continue;
        for (int32_t e = 0; e < m->cfg.n_experts; e++) {
            struct moe_expert_part parts[MOE_EXPERT_MAX_PARTS];
            int n = moe_model_expert_parts(m, l, e, parts, MOE_EXPERT_MAX_PARTS);
            for (int i = 0; i < n; i++)
                if (parts[i].mat ? !weight_finite(parts[i].mat) : !vec_finite(parts[i].vec,
                                                                               parts[i].n)) {
                    moe_model_expert_where(m, l, e, parts[i].name, m->nonfinite,
                                           sizeof(m->nonfinite));
                    return m->nonfinite;
                }
        }
    }
    return NULL;
}

static size_t touch(const struct moe_weight *w, volatile uint8_t *sink)
{
    const uint8_t *p = w->data;
    size_t n = moe_weight_bytes(w);
    for (size_t i = 0; i < n; i += 4096)
        *sink ^= p[i];
    return n;
}

static size_t touch_ffn(const struct moe_expert_weights *e, volatile uint8_t *sink)
{
    return touch(&e->gate, sink) + touch(&e->up, sink) + touch(&e->down, sink);
}

size_t moe_model_prefault(const struct moe_model *m)
{
    volatile uint8_t sink = 0;
    size_t b = touch(&m->embed, &sink) + touch(&m->lm_head, &sink);
    for (int32_t l = 0; l < m->cfg.n_layers; l++) {
        const struct moe_layer *L = &m->layers[l];
        b += touch(&L->wq, &sink) + touch(&L->wk, &sink) + touch(&L->wv, &sink) +
             touch(&L->wo, &sink) + touch(&L->router, &sink) + touch(&L->shared_gate, &sink) +
             touch_ffn(&L->shared, &sink) + touch(&L->wq_a, &sink) + touch(&L->wq_b, &sink) +
             touch(&L->wkv_a, &sink) + touch(&L->wk_b, &sink) + touch(&L->wv_b, &sink);
        /* experts read into a host tier on demand stay out of the page cache */
        if (!m->cfg.layer_dense[l] && !(m->open_flags & MOE_MODEL_OPEN_EXPERTS_ON_READ))
            for (int32_t e = 0; e < m->cfg.n_experts; e++)
                b += touch_ffn(&L->experts[e], &sink);
    }
    return b;
}

size_t moe_model_active_bytes(const struct moe_model *m)
{
    size_t b = moe_weight_bytes(&m->lm_head) + m->embed.row_bytes;
    for (int32_t l = 0; l < m->cfg.n_layers; l++) {
        const struct moe_layer *L = &m->layers[l];
        b += moe_weight_bytes(&L->wq) + moe_weight_bytes(&L->wk) + moe_weight_bytes(&L->wv) +
             moe_weight_bytes(&L->wo) + moe_weight_bytes(&L->wq_a) + moe_weight_bytes(&L->wq_b) +
             moe_weight_bytes(&L->wkv_a) + moe_weight_bytes(&L->wk_b) +
             moe_weight_bytes(&L->wv_b);
        b += moe_weight_bytes(&L->shared.gate) + moe_weight_bytes(&L->shared.up) +
             moe_weight_bytes(&L->shared.down) + moe_weight_bytes(&L->shared_gate);
        if (m->cfg.layer_dense[l])
            continue;
        b += moe_weight_bytes(&L->router);
        size_t all = 0; /* compressed experts differ in size: count the mean one */
        for (int32_t i = 0; i < m->cfg.n_experts; i++) {
            const struct moe_expert_weights *e = &L->experts[i];
            all += moe_weight_bytes(&e->gate) + moe_weight_bytes(&e->up) +
                   moe_weight_bytes(&e->down);
        }
        b += (size_t)m->cfg.top_k * all / (size_t)m->cfg.n_experts;
    }
    return b;
}
