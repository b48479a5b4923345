/* From the config to the structs that ipc and the engine take. Pure
 * conversions (no calls into ipc or the engine), so unit tests can check
 * them without a server. */
#include "daemon/daemon.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"
#include "engine/engine.h"
#include "engine/engine_server.h"
#include "format/format.h"
#include "format/format_pack.h"
#include "ipc/ipc.h"
#include "model/model.h"
#include "router/router.h"

_Static_assert(MOE_DAEMON_MAX_IDS == MOE_IPC_MAX_IDS, "allow lists: daemon and ipc disagree");
_Static_assert(sizeof(uid_t) == sizeof(uint32_t) && sizeof(gid_t) == sizeof(uint32_t),
               "uid_t/gid_t are 32-bit");

const char *moe_daemon_model_name(const struct moe_daemon_config *c, char *buf, size_t cap)
{
    if (c->model_name && c->model_name[0]) {
        snprintf(buf, cap, "%s", c->model_name);
        return buf;
    }
    /* the last component of the path, trailing slashes ignored */
    const char *p = c->model_path ? c->model_path : "";
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        n--;
    size_t s = n;
    while (s > 0 && p[s - 1] != '/')
        s--;
    /* a file's name without its extension, as llama-server and ollama list
     * models: "qwen3-30b-a3b-q4.gguf" -> "qwen3-30b-a3b-q4"; directories keep
     * theirs ("Qwen3-30B-A3B-Instruct-2507" has no extension, "v1.5" is one) */
    static const char *const exts[] = {".gguf", MOE_DAEMON_PACK_EXT};
    struct stat st;
    if (!(stat(p, &st) == 0 && S_ISDIR(st.st_mode))) {
        for (size_t i = 0; i < MOE_ARRAY_SIZE(exts); i++) {
            size_t e = strlen(exts[i]);
            if (n - s > e && !strncasecmp(p + n - e, exts[i], e)) {
                n -= e;
                break;
            }
        }
    }
    snprintf(buf, cap, "%.*s", (int)(n - s), p + s);
    if (!buf[0])
        snprintf(buf, cap, "model");
    return buf;
}

int moe_daemon_check_model(const struct moe_daemon_config *c, char *why, size_t cap)
{
    const char *p = c->model_path;
    struct stat st;
    if (stat(p, &st) < 0) {
        int e = errno;
        snprintf(why, cap, "[model] path: %s: %s", p, strerror(e));
        return -e;
    }
    /* not open() on a FIFO or a device: that could block or read forever */
    if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) {
        snprintf(why, cap, "[model] path: %s: neither a directory nor a regular file", p);
        return -EINVAL;
    }
    enum moe_model_file kind;
    int rc = moe_model_file_kind(p, &kind);
    if (rc < 0) {
        snprintf(why, cap, "[model] path: %s", moe_err_msg());
        return rc;
    }
    if (kind == MOE_FILE_DIR) {
        char *cfg = moe_path_join(p, "config.json");
        bool ok = cfg && access(cfg, R_OK) == 0;
        free(cfg);
        if (!ok) {
            snprintf(why, cap, "[model] path: %s: a directory without a readable config.json "
                     "(not a Hugging Face model)", p);
            return -EINVAL;
        }
    } else if (kind == MOE_FILE_OTHER) {
        snprintf(why, cap, "[model] path: %s: not a model: expected a Hugging Face directory, a "
                 "GGUF file or a moed pack (moe-pack makes one)", p);
        return -EINVAL;
    }
    return 0;
}

void moe_daemon_default_socket(char *buf, size_t cap)
{
    /* the system path when its directory is there for us (root, or the
     * service's RuntimeDirectory=), else one of the user's own */
    if (access("/run/moed", W_OK | X_OK) == 0) {
        snprintf(buf, cap, "%s", MOE_SYSTEM_SOCKET);
        return;
    }
    moe_user_socket_path(buf, cap);
}

void moe_daemon_sampling(const struct moe_daemon_config *c, struct moe_sampling *s)
{
    moe_sampling_defaults(s);
    s->temperature = (float)c->temperature;
    s->top_k = c->top_k;
    s->top_p = (float)c->top_p;
    s->min_p = (float)c->min_p;
    s->repetition_penalty = (float)c->repetition_penalty;
    s->presence_penalty = (float)c->presence_penalty;
    s->frequency_penalty = (float)c->frequency_penalty;
    s->penalty_last_n = c->penalty_last_n;
    /* -1 (random per request) has no place in a uint64_t seed: it reaches
     * ipc as UINT64_MAX, which ipc reads as "draw one per request". */
    s->seed = c->seed < 0 ? UINT64_MAX : (uint64_t)c->seed;
}

void moe_daemon_ipc_limits(const struct moe_daemon_config *c, struct moe_ipc_limits *l)
{
    memset(l, 0, sizeof(*l));
    l->max_body_bytes = c->max_body_bytes;
    l->max_prompt_bytes = c->max_prompt_bytes;
    l->max_tokens_limit = c->max_tokens_limit;
    l->request_timeout_s = c->request_timeout;
    moe_daemon_sampling(c, &l->defaults);
    l->default_max_tokens = c->max_tokens_default;
    for (size_t i = 0; i < c->allow_uids.n; i++)
        l->allow_uids[i] = (uid_t)c->allow_uids.ids[i];
    l->n_allow_uids = c->allow_uids.n;
    for (size_t i = 0; i < c->allow_gids.n; i++)
        l->allow_gids[i] = (gid_t)c->allow_gids.ids[i];
    l->n_allow_gids = c->allow_gids.n;
    l->max_conns_per_peer = (uint32_t)c->max_connections_per_peer;
    l->header_timeout_s = c->header_timeout;
    l->body_timeout_s = c->body_timeout;
    l->write_timeout_s = c->write_timeout;
    snprintf(l->api_key, sizeof(l->api_key), "%s", c->api_key ? c->api_key : "");
}

void moe_daemon_engine_limits(const struct moe_daemon_config *c, int32_t model_ctx,
                              int chat_template, struct moe_engine_limits *l)
{
    memset(l, 0, sizeof(*l));
    l->max_seqs = c->max_seqs;
    l->max_batch_tokens = c->max_batch_tokens;
    l->max_ctx = c->max_ctx;
    if (model_ctx > 0 && (l->max_ctx == 0 || l->max_ctx > model_ctx))
        l->max_ctx = model_ctx;
    if (l->max_ctx == 0) /* neither the INI nor the model says */
        l->max_ctx = 4096;
    l->max_queue = c->max_queue;
    l->max_tokens_default = c->max_tokens_default;
    l->request_timeout_s = c->request_timeout;
    l->chat_template = (enum moe_chat_template)chat_template;
    l->kv = (struct moe_kv_params){c->kv_key_bits, c->kv_value_bits, c->kv_group, c->kv_residual,
                                   c->kv_state_bits};
    l->kv_bytes = c->kv_bytes;
    l->kv_tokens = c->kv_tokens;
    l->prefix_cache = c->kv_prefix_cache;
}

int moe_daemon_prune(const struct moe_daemon_config *c, const struct moe_model *m,
                     struct moe_prune *out, bool *on, char *why, size_t cap)
{
    const struct moe_config *mc = &m->cfg;
    struct moe_prune def;
    bool from_pack;
    char w[200];
    float dflt = c->odp_beta > 0 ? (float)c->odp_beta : (float)MOE_DAEMON_ODP_BETA_DEFAULT;
    if (moe_model_prune_defaults(m, dflt, &def, &from_pack) < 0) {
        snprintf(why, cap, "[router]: %s", moe_err_msg());
        return -EINVAL;
    }
    *out = def;
    out->protect_fraction = (float)c->odp_protect;
    if (from_pack && c->odp_beta > 0) /* the INI's level on the pack's layers */
        for (int32_t l = 0; l < mc->n_layers; l++)
            out->beta[l] = def.beta[l] > 0 ? (float)c->odp_beta : 0.0f;
    if (c->odp_layers && strcmp(c->odp_layers, "auto")) {
        bool sel[MOE_ROUTER_MAX_LAYERS];
        if (moe_router_parse_layers(c->odp_layers, mc->n_layers, sel, w, sizeof(w))) {
            snprintf(why, cap, "[router] layers: %s", w);
            return -EINVAL;
        }
        for (int32_t l = 0; l < mc->n_layers; l++) /* a pack's calibrated beta where it has one */
            out->beta[l] = !sel[l] ? 0.0f
                           : c->odp_beta > 0 || !(from_pack && def.beta[l] > 0) ? dflt
                                                                                : def.beta[l];
    }
    if (c->odp_beta_layers && c->odp_beta_layers[0]) {
        for (int32_t l = 0; l < mc->n_layers; l++)
            out->beta[l] = 0.0f;
        if (moe_router_parse_betas(c->odp_beta_layers, mc->n_layers, out->beta, w, sizeof(w))) {
            snprintf(why, cap, "[router] beta_layers: %s", w);
            return -EINVAL;
        }
    }
    for (int32_t l = 0; l < mc->n_layers; l++)
        if (mc->layer_dense[l])
            out->beta[l] = 0.0f;
    *on = c->odp == MOE_DAEMON_ODP_ON || (c->odp == MOE_DAEMON_ODP_AUTO && from_pack);
    return 0;
}

static char *gguf_template(const struct moe_gguf *g)
{
    struct moe_gguf_str s;
    return moe_gguf_get_str(g, "tokenizer.chat_template", &s) == 0 ? strndup(s.ptr, s.len) : NULL;
}

/* The model's own template text, or NULL: a directory's chat_template.jinja
 * (transformers 5 writes it there) or tokenizer_config.json; a pack's blobs of
 * the same names, or of its GGUF tokenizer; a GGUF's tokenizer.chat_template */
static char *model_template(const char *path, const char **where)
{
    enum moe_model_file kind = MOE_FILE_OTHER;
    char *text = NULL;
    if (!path || moe_model_file_kind(path, &kind) < 0)
        return NULL;
    if (kind == MOE_FILE_DIR) {
        char *p = moe_path_join(path, "tokenizer_config.json");
        const char *file = NULL;
        int rc = p ? moe_chat_template_read(p, &text, &file) : -ENOMEM;
        if (rc == 0)
            *where = strcmp(file, "chat_template.jinja") ? "the model's tokenizer_config.json"
                                                         : "the model's chat_template.jinja";
        else if (rc != -ENOENT) /* a config that is not JSON: said, then the default */
            moe_log(MOE_LOG_WARN, "chat template: %s", moe_err_msg());
        free(p);
    } else if (kind == MOE_FILE_GGUF) {
        struct moe_gguf *g = NULL;
        if (moe_gguf_open(path, &g) == 0 && (text = gguf_template(g)))
            *where = "the GGUF's tokenizer.chat_template";
        moe_gguf_close(g);
    } else if (kind == MOE_FILE_PACK) {
        struct moe_pack *pk = NULL;
        if (moe_pack_open(path, &pk) == 0) {
            const struct moe_pack_blob *b = moe_pack_find_blob(pk, "chat_template.jinja");
            const struct moe_pack_blob *c = moe_pack_find_blob(pk, "tokenizer_config.json");
            const struct moe_pack_blob *gg = moe_pack_find_blob(pk, "tokenizer.gguf");
            struct moe_gguf *g = NULL;
            if (b && (text = strndup((const char *)b->data, b->size)))
                *where = "the pack's chat_template.jinja";
            else if (c && (text = moe_chat_template_of_config((const char *)c->data, c->size)))
                *where = "the pack's tokenizer_config.json";
            else if (gg && moe_gguf_open_mem(gg->data, gg->size, "tokenizer.gguf", &g) == 0 && (text = gguf_template(g)))
                *where = "the pack's GGUF tokenizer";
            moe_gguf_close(g);
        }
        moe_pack_close(pk);
    }
    return text;
}

int moe_daemon_chat_template(const struct moe_daemon_config *c, int *format, char **text,
                             const char **how)
{
    *text = NULL;
    *format = MOE_DAEMON_CHAT_JINJA;
    if (c->chat_template_file && c->chat_template_file[0]) {
        size_t len;
        if (moe_read_text_file(c->chat_template_file, text, &len) < 0)
            return moe_err(-EINVAL, "[model] chat_template_file: %s", moe_err_msg());
        *how = "[model] chat_template_file";
        return 0;
    }
    if (c->chat_template >= 0) {
        *how = "set by [model] chat_template";
        *format = c->chat_template;
        return 0;
    }
    const char *where = NULL;
    char *own = model_template(c->model_path, &where);
    if (own) {
        *text = own;
        *how = where;
        return 0;
    }
    if (c->chat_template == MOE_DAEMON_CHAT_JINJA)
        return moe_err(-ENOENT, "[model] chat_template = jinja: %s has no chat template "
                                "(chat_template.jinja, tokenizer_config.json's chat_template or "
                                "a GGUF's tokenizer.chat_template)", c->model_path);
    *how = "the default: the model has no chat template";
    *format = MOE_CHAT_CHATML;
    return 0;
}

/* When the model's own template cannot be used (it fails to compile): the
 * built-in format it is recognised as, else ChatML */
int moe_daemon_chat_fallback(const char *text)
{
    enum moe_chat_template t;
    return moe_chat_template_classify(text, &t) == 0 ? (int)t : MOE_CHAT_CHATML;
}
