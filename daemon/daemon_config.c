/* The configuration table and the INI reader around inih.
 *
 * inih is fed through ini_parse_stream() with our own line reader, which
 * gives us what Debian's inih build lacks: line numbers for the handler, and
 * a look at every raw line before inih sees it, so its pitfalls become
 * errors instead of silent surprises:
 *   - lines over ~200 bytes are split by inih: rejected here (with the length);
 *   - an indented line continues the previous value: rejected;
 *   - a "#" after a value stays in it, a " ;" silently ends it: both rejected;
 *   - "key: value" is read as "key = value" by inih: rejected;
 *   - "[section] junk" is accepted by inih: rejected.
 * The first error stops parsing (the reader reports end of file). */
#include "daemon/daemon.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <ini.h>
#include <inttypes.h>
#include <math.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "engine/engine.h"
#include "ipc/ipc.h"
#include "offload/offload.h"
#include "offload/offload_prefetch.h"
#include "router/router.h"

/* offsetof() that fails to compile when the field's type is not T */
#define FIELD(f, T)                                                                      \
    (offsetof(struct moe_daemon_config, f) +                                             \
     0 * sizeof(char[__builtin_types_compatible_p(                                       \
                         __typeof__(((struct moe_daemon_config *)0)->f), T) ? 1 : -1]))

#define K_BOOL(s, n, f, d, fl, doc) \
    {s, n, MOE_CFG_BOOL, FIELD(f, bool), d, 0, 1, 0, 0, NULL, fl, doc}
#define K_INT(s, n, f, d, lo, hi, fl, doc) \
    {s, n, MOE_CFG_INT, FIELD(f, int), d, lo, hi, 0, 0, NULL, fl, doc}
#define K_INT64(s, n, f, d, lo, hi, fl, doc) \
    {s, n, MOE_CFG_INT64, FIELD(f, int64_t), d, lo, hi, 0, 0, NULL, fl, doc}
#define K_SIZE(s, n, f, d, lo, hi, fl, doc) \
    {s, n, MOE_CFG_SIZE, FIELD(f, size_t), d, lo, hi, 0, 0, NULL, fl, doc}
#define K_DOUBLE(s, n, f, d, lo, hi, fl, doc) \
    {s, n, MOE_CFG_DOUBLE, FIELD(f, double), d, 0, 0, lo, hi, NULL, fl, doc}
#define K_STRING(s, n, f, d, fl, doc) \
    {s, n, MOE_CFG_STRING, FIELD(f, char *), d, 0, 0, 0, 0, NULL, fl, doc}
#define K_MODE(s, n, f, d, fl, doc) \
    {s, n, MOE_CFG_MODE, FIELD(f, unsigned), d, 0, 0777, 0, 0, NULL, fl, doc}
#define K_ENUM(s, n, f, d, e, fl, doc) \
    {s, n, MOE_CFG_ENUM, FIELD(f, int), d, 0, 0, 0, 0, e, fl, doc}
#define K_UIDS(s, n, f, d, fl, doc) \
    {s, n, MOE_CFG_UIDS, FIELD(f, struct moe_daemon_ids), d, 0, 0, 0, 0, NULL, fl, doc}
#define K_GIDS(s, n, f, d, fl, doc) \
    {s, n, MOE_CFG_GIDS, FIELD(f, struct moe_daemon_ids), d, 0, 0, 0, 0, NULL, fl, doc}
#define K_GROUP(s, n, f, d, fl, doc) \
    {s, n, MOE_CFG_GROUP, FIELD(f, struct moe_daemon_group), d, 0, 0, 0, 0, NULL, fl, doc}

#define R MOE_CFG_RELOAD
#define KI (1024LL)
#define MI (1024LL * 1024)
#define GI (1024LL * 1024 * 1024)

static const struct moe_daemon_enum log_levels[] = {
    {"err", MOE_LOG_ERR}, {"warning", MOE_LOG_WARN}, {"info", MOE_LOG_INFO},
    {"debug", MOE_LOG_DEBUG}, {NULL, 0},
};

/* the names are moe_chat_template_name()'s */
static const struct moe_daemon_enum chat_templates[] = {
    {"auto", MOE_DAEMON_CHAT_AUTO},
    {"jinja", MOE_DAEMON_CHAT_JINJA},
    {"chatml", MOE_CHAT_CHATML},
    {"mistral", MOE_CHAT_MISTRAL},
    {"qwen3", MOE_CHAT_QWEN3},
    {"deepseek-v2", MOE_CHAT_DEEPSEEK_V2},
    {"deepseek-v3", MOE_CHAT_DEEPSEEK_V3},
    {"deepseek-r1", MOE_CHAT_DEEPSEEK_R1},
    {"deepseek-r1-distill", MOE_CHAT_DEEPSEEK_R1_DISTILL},
    {"deepseek-r1-distill-qwen", MOE_CHAT_DEEPSEEK_R1_DISTILL_QWEN},
    {"deepseek-r1-llamacpp", MOE_CHAT_DEEPSEEK_R1_LLAMACPP},
    {"deepseek-v3.1", MOE_CHAT_DEEPSEEK_V31},
    {"kimi-k2", MOE_CHAT_KIMI_K2},
    {"glm-4.5", MOE_CHAT_GLM45},
    {"gpt-oss", MOE_CHAT_GPT_OSS},
    {"minimax-m2", MOE_CHAT_MINIMAX_M2},
    {"ernie-4.5", MOE_CHAT_ERNIE45},
    {"qwen3.5", MOE_CHAT_QWEN35},
    {NULL, 0},
};

static const struct moe_daemon_enum kv_bits[] = {
    {"2", 2}, {"4", 4}, {"8", 8}, {"16", 16}, {"32", 32}, {NULL, 0},
};

static const struct moe_daemon_enum odp_modes[] = {
    {"auto", MOE_DAEMON_ODP_AUTO}, {"on", MOE_DAEMON_ODP_ON}, {"off", MOE_DAEMON_ODP_OFF},
    {NULL, 0},
};

static const struct moe_daemon_enum offload_modes[] = {
    {"mmap", MOE_DAEMON_OFFLOAD_MMAP}, {"tiered", MOE_DAEMON_OFFLOAD_TIERED}, {NULL, 0},
};

static const struct moe_daemon_enum cache_policies[] = {
    {"lru", MOE_CACHE_LRU}, {"lfu", MOE_CACHE_LFU}, {"lfru", MOE_CACHE_LFRU},
    {"static", MOE_CACHE_STATIC}, {"cyclic", MOE_CACHE_CYCLIC}, {NULL, 0},
};

static const struct moe_daemon_enum prefetch_modes[] = {
    {"auto", MOE_PREFETCH_AUTO}, {"yes", MOE_PREFETCH_YES}, {"no", MOE_PREFETCH_NO},
    {NULL, 0},
};

static const struct moe_daemon_enum numa_modes[] = {
    {"off", MOE_NUMA_OFF}, {"local", MOE_NUMA_LOCAL}, {"interleave", MOE_NUMA_INTERLEAVE},
    {NULL, 0},
};

static const struct moe_daemon_enum state_bits[] = {
    {"32", 32}, {"16", 16}, {NULL, 0},
};

static const struct moe_daemon_enum kv_groups[] = {
    {"32", 32}, {"64", 64}, {"128", 128}, {NULL, 0},
};

/* Every key moed reads. Order = order in the dump and in etc/moed.ini. */
static const struct moe_daemon_key table[] = {
    K_STRING("daemon", "socket", socket, "/run/moed/moed.sock", MOE_CFG_NONEMPTY,
             "Unix socket path the API listens on (unused under socket activation)"),
    K_MODE("daemon", "socket_mode", socket_mode, "0660", 0,
           "File mode (octal) of the socket moed creates"),
    K_GROUP("daemon", "socket_group", socket_group, "auto", 0,
            "Group (name or gid) of the socket moed creates; empty = moed's own; auto = moed "
            "when it exists and moed is in it, else moed's own"),
    K_UIDS("daemon", "allow_uids", allow_uids, "", R,
           "Peers (user names or uids) allowed to connect; empty with allow_gids empty = anyone"),
    K_GIDS("daemon", "allow_gids", allow_gids, "", R,
           "Peer groups (names or gids) allowed to connect, besides allow_uids"),
    K_STRING("daemon", "listen", listen, "", 0,
             "Listeners, comma-separated: unix:PATH and tcp:HOST:PORT (TCP is off unless named); "
             "empty = unix:socket"),
    K_STRING("daemon", "api_key", api_key, "", R,
             "Bearer key TCP clients must send (Authorization: Bearer KEY); empty = none"),
    K_INT("daemon", "max_connections_per_peer", max_connections_per_peer, "64", 0, 4096, R,
          "Connections one uid (Unix) or address (TCP) may hold idle or sending; 0 = no limit"),
    K_DOUBLE("daemon", "header_timeout", header_timeout, "10", 0.1, 3600, R,
             "Seconds a client has for a request's whole header block (dripping bytes do not "
             "extend it)"),
    K_DOUBLE("daemon", "body_timeout", body_timeout, "30", 0.1, 3600, R,
             "Seconds a client has for a request's whole body once its headers are in"),
    K_DOUBLE("daemon", "write_timeout", write_timeout, "30", 0.1, 3600, R,
             "Seconds a reply or stream may wait for a client that reads nothing before it is cut"),
    K_INT("daemon", "threads", threads, "0", 0, 1024, 0,
          "Worker threads for the model's kernels; 0 = one per online core"),
    K_INT("daemon", "http_threads", http_threads, "0", 0, 256, 0,
          "HTTP worker threads; 0 = one thread per connection"),
    K_ENUM("daemon", "log_level", log_level, "info", log_levels, R,
           "Most verbose level logged to stderr (the journal)"),
    K_DOUBLE("daemon", "drain_timeout", drain_timeout, "30", 0, 86400, R,
             "Seconds SIGTERM waits for requests in flight before cancelling them"),
    K_BOOL("daemon", "watchdog", watchdog, "yes", 0,
           "Send WATCHDOG=1 when the unit sets WatchdogSec="),

    K_STRING("model", "path", model_path, "/var/lib/moed/models/default", MOE_CFG_NONEMPTY,
             "Model to serve: a Hugging Face directory, a .gguf file or a moed pack"),
    K_STRING("model", "name", model_name, "", 0,
             "Model id listed by /v1/models; empty = the last component of path, without "
             ".gguf or .moe"),
    K_ENUM("model", "chat_template", chat_template, "auto", chat_templates, 0,
           "Chat prompt; auto = the model's own Jinja template (chat_template.jinja, "
           "tokenizer_config.json, GGUF), else chatml; jinja = the model's own or fail; a name = "
           "that built-in format"),
    K_STRING("model", "chat_template_file", chat_template_file, "", 0,
             "A Jinja chat template file to render chat with instead of the model's own "
             "(as llama-server's --chat-template-file); empty = none"),
    K_BOOL("model", "prefault", prefault, "yes", 0,
           "Read every weight page while loading, so early requests never wait on the disk"),

    K_INT("batching", "max_seqs", max_seqs, "16", 1, 4096, 0,
          "Sequences decoded together in one step"),
    K_INT("batching", "max_batch_tokens", max_batch_tokens, "512", 1, 1 << 20, 0,
          "Tokens per step: one per running sequence plus prompt chunks"),
    K_INT("batching", "max_ctx", max_ctx, "4096", 0, 1 << 24, 0,
          "Context per sequence (prompt + output); 0 or above the model's = the model's"),
    K_INT("batching", "max_queue", max_queue, "64", 0, 1 << 20, R,
          "Requests waiting beyond max_seqs; more are refused with 503 and Retry-After"),

    K_SIZE("kv", "bytes", kv_bytes, "0", 0, 1LL << 50, 0,
           "KV cache pool for all sequences (K/M/G/T); 0 = sized by tokens"),
    K_INT64("kv", "tokens", kv_tokens, "0", 0, 1LL << 40, 0,
            "KV pool size in tokens of cache when bytes = 0; 0 = max_seqs x max_ctx"),
    K_ENUM("kv", "key_bits", kv_key_bits, "32", kv_bits, 0,
           "Bits per cached key (and MLA's latent): 32 = fp32, 16 = fp16, 8/4/2 = KIVI per channel"),
    K_ENUM("kv", "value_bits", kv_value_bits, "32", kv_bits, 0,
           "Bits per cached value: 32 = fp32 (exact), 16 = fp16, 8/4/2 = KIVI per token"),
    K_ENUM("kv", "group", kv_group, "64", kv_groups, 0,
           "Tokens per cache block, and the quantisation group (keys: G tokens, values: G channels)"),
    K_INT("kv", "residual", kv_residual, "64", 0, 1 << 20, 0,
          "Newest tokens kept fp16 when quantising; a multiple of group"),
    K_ENUM("kv", "state_bits", kv_state_bits, "32", state_bits, 0,
           "Linear-attention layers' recurrent states (Qwen3-Next, Qwen3.5): 32 = fp32, 16 = bf16"),
    K_BOOL("kv", "prefix_cache", kv_prefix_cache, "no", 0,
           "Keep finished sequences' caches for prompts that start with their tokens (16/32-bit "
           "caches, no sliding windows)"),

    K_ENUM("router", "odp", odp, "auto", odp_modes, R,
           "Online dynamic pruning of weak experts for requests without moe_prune; auto = on when "
           "the pack has calibrated betas"),
    K_DOUBLE("router", "beta", odp_beta, "0", 0, 1, R,
             "ODP level: expert j is dropped when p_j < beta x p_1; 0 = the pack's, else 0.5"),
    K_STRING("router", "layers", odp_layers, "auto", MOE_CFG_NONEMPTY | R,
             "Layers ODP runs on, e.g. 2-5,7; auto = the pack's, else the middle layers"),
    K_STRING("router", "beta_layers", odp_beta_layers, "", R,
             "Per-layer betas, e.g. 2-5:0.4,7:0.5; when set, beta and layers are ignored"),
    K_DOUBLE("router", "protect_fraction", odp_protect, "0.02", 0, 1, R,
             "Share of each prompt's most important tokens that keep all their experts"),

    K_ENUM("offload", "mode", offload_mode, "mmap", offload_modes, 0,
           "Where experts live: mmap = the file mapping, the page cache decides (as llama.cpp); "
           "tiered = a host tier of host_bytes filled by O_DIRECT reads (packs only)"),
    K_SIZE("offload", "host_bytes", host_bytes, "0", 0, 1LL << 50, 0,
           "tiered: host memory for expert blobs (K/M/G/T), a hard limit; 0 = all experts"),
    K_ENUM("offload", "policy", cache_policy, "lfru", cache_policies, 0,
           "tiered: which expert leaves the host tier: lru, lfu, lfru (frequency-aware LRU), "
           "static (the pack's calibration frequencies), cyclic (longest expected wait, layer-aware)"),
    K_INT("offload", "queue_depth", io_queue_depth, "32", 1, 4096, 0,
          "tiered: io_uring submission queue depth for expert reads"),
    K_ENUM("offload", "numa", numa, "local", numa_modes, 0,
           "tiered: host tier placement: local = the engine thread's node, interleave, off"),
    K_BOOL("offload", "hugepages", hugepages, "yes", 0,
           "tiered: back the host tier with huge pages where the kernel gives them"),
    K_ENUM("offload", "prefetch", prefetch, "auto", prefetch_modes, 0,
           "tiered: read the next layer's likely experts ahead: yes, no, or auto = "
           "where measured guess precision, read and compute times say it pays"),
    K_BOOL("offload", "pread", force_pread, "no", 0,
           "tiered: read with pread instead of io_uring (also the fallback where io_uring is refused)"),
    K_STRING("offload", "trace", trace_path, "", 0,
             "tiered: append every expert access here (moe-bench cache --trace replays it)"),

    K_SIZE("limits", "max_body_bytes", max_body_bytes, "1M", 1 * KI, 1 * GI, R,
           "Largest request body; larger ones get 413"),
    K_SIZE("limits", "max_prompt_bytes", max_prompt_bytes, "256K", 1, 1 * GI, R,
           "Largest prompt, or sum of chat message contents; larger ones get 400"),
    K_INT("limits", "max_tokens", max_tokens_limit, "4096", 1, 1 << 24, R,
          "Most tokens a request may ask to generate; more get 400"),
    K_DOUBLE("limits", "request_timeout", request_timeout, "600", 0, 86400 * 7, R,
             "Seconds a request may run before it ends with finish_reason timeout; 0 = none"),

    K_DOUBLE("sampling", "temperature", temperature, "1", 0, 100, R,
             "Default temperature; 0 = greedy"),
    K_INT("sampling", "top_k", top_k, "0", 0, 1 << 24, R,
          "Default top-k; 0 = off"),
    K_DOUBLE("sampling", "top_p", top_p, "1", 0, 1, R | MOE_CFG_MIN_EXCL,
             "Default nucleus (top-p) mass; 1 = off"),
    K_DOUBLE("sampling", "min_p", min_p, "0", 0, 1, R,
             "Default min-p: drop tokens below min_p x the top probability; 0 = off"),
    K_DOUBLE("sampling", "repetition_penalty", repetition_penalty, "1", 0, 100,
             R | MOE_CFG_MIN_EXCL, "Default repetition penalty; 1 = off"),
    K_DOUBLE("sampling", "presence_penalty", presence_penalty, "0", -2, 2, R,
             "Default presence penalty; 0 = off"),
    K_DOUBLE("sampling", "frequency_penalty", frequency_penalty, "0", -2, 2, R,
             "Default frequency penalty; 0 = off"),
    K_INT("sampling", "penalty_last_n", penalty_last_n, "64", 0, 1 << 24, R,
          "Tokens of history the penalties look at; 0 = all"),
    K_INT("sampling", "max_tokens", max_tokens_default, "256", 1, 1 << 24, R,
          "Tokens generated when a request gives no max_tokens"),
    K_INT64("sampling", "seed", seed, "-1", -1, INT64_MAX, R,
            "Default seed; -1 = a fresh random seed per request"),
};

#define N_KEYS MOE_ARRAY_SIZE(table)

const struct moe_daemon_key *moe_daemon_config_table(size_t *n)
{
    *n = N_KEYS;
    return table;
}

const struct moe_daemon_key *moe_daemon_config_find(const char *section, const char *name)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (!strcmp(table[i].section, section) && !strcmp(table[i].name, name))
            return &table[i];
    return NULL;
}

static bool section_known(const char *s, size_t n)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (strlen(table[i].section) == n && !memcmp(table[i].section, s, n))
            return true;
    return false;
}

#define PTR(c, k, T) ((T *)(void *)((char *)(c) + (k)->offset))
#define CPTR(c, k, T) ((const T *)(const void *)((const char *)(c) + (k)->offset))

/* ---- values ---------------------------------------------------------------- */

static int why(char *buf, size_t cap, const char *fmt, ...) MOE_PRINTF(3, 4);
static int why(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

static int parse_i64(const char *v, int64_t *out)
{
    char *end;
    if (!*v || isspace((unsigned char)*v))
        return -EINVAL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (*end)
        return -EINVAL;
    if (errno)
        return -ERANGE;
    *out = x;
    return 0;
}

static int check_irange(const struct moe_daemon_key *k, int64_t x, const char *v, char *w,
                        size_t cap)
{
    if (x < k->imin || x > k->imax)
        return why(w, cap, "%s is out of range %" PRId64 "..%" PRId64, v, k->imin, k->imax);
    return 0;
}

static void format_size(uint64_t x, char *buf, size_t cap)
{
    static const char sfx[] = "KMGT";
    int s = -1;
    while (x && x % 1024 == 0 && s < 3) {
        x /= 1024;
        s++;
    }
    if (s < 0)
        snprintf(buf, cap, "%" PRIu64, x);
    else
        snprintf(buf, cap, "%" PRIu64 "%c", x, sfx[s]);
}

static int parse_size(const char *v, uint64_t *out)
{
    char *end;
    if (!isdigit((unsigned char)*v))
        return -EINVAL;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno)
        return -EINVAL;
    int shift = 0;
    if (*end) {
        switch (*end) {
        case 'k': case 'K': shift = 10; break;
        case 'm': case 'M': shift = 20; break;
        case 'g': case 'G': shift = 30; break;
        case 't': case 'T': shift = 40; break;
        default: return -EINVAL;
        }
        if (end[1])
            return -EINVAL;
    }
    if (x > (UINT64_MAX >> shift))
        return -EINVAL;
    *out = (uint64_t)x << shift;
    return 0;
}

/* shortest text that reads back as the same double */
static void format_double(double x, char *buf, size_t cap)
{
    if (x == (double)(int64_t)x && fabs(x) < 1e15) { /* integers without exponents */
        snprintf(buf, cap, "%" PRId64, (int64_t)x);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, x);
        if (strtod(buf, NULL) == x)
            return;
    }
}

static bool is_number(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return false;
    return true;
}

static int resolve_id(bool group, const char *tok, uint32_t *out, char *w, size_t cap)
{
    if (is_number(tok)) {
        int64_t x;
        if (parse_i64(tok, &x) || x < 0 || x >= (int64_t)UINT32_MAX)
            return why(w, cap, "'%s' is not a valid %s", tok, group ? "gid" : "uid");
        *out = (uint32_t)x;
        return 0;
    }
    char buf[16384];
    int rc;
    if (group) {
        struct group gr, *res = NULL;
        rc = getgrnam_r(tok, &gr, buf, sizeof(buf), &res);
        if (!rc && res) {
            *out = (uint32_t)res->gr_gid;
            return 0;
        }
    } else {
        struct passwd pw, *res = NULL;
        rc = getpwnam_r(tok, &pw, buf, sizeof(buf), &res);
        if (!rc && res) {
            *out = (uint32_t)res->pw_uid;
            return 0;
        }
    }
    if (rc)
        return why(w, cap, "cannot look up %s '%s': %s", group ? "group" : "user", tok,
                   strerror(rc));
    return why(w, cap, "unknown %s '%s'", group ? "group" : "user", tok);
}

/* socket_group = auto: the group "moed" (which `make install` creates and the
 * unit adds with SupplementaryGroups=) when it exists and this process may
 * give a file to it (root, or a member); otherwise moed's own group, so that
 * a first run by an ordinary user, member or not, never fails on chown. */
static gid_t auto_group(void)
{
    char buf[16384];
    struct group gr, *res = NULL;
    if (getgrnam_r(MOE_DAEMON_GROUP, &gr, buf, sizeof(buf), &res) || !res)
        return (gid_t)-1;
    gid_t gid = res->gr_gid;
    if (geteuid() == 0 || getegid() == gid)
        return gid;
    gid_t groups[1024];
    int n = getgroups(MOE_ARRAY_SIZE(groups), groups);
    for (int i = 0; i < n; i++)
        if (groups[i] == gid)
            return gid;
    return (gid_t)-1;
}

static int parse_ids(bool group, const char *v, struct moe_daemon_ids *ids, char *w, size_t cap)
{
    memset(ids, 0, sizeof(*ids));
    const char *p = v;
    while (*p) {
        while (*p == ',' || isspace((unsigned char)*p))
            p++;
        if (!*p)
            break;
        const char *q = p;
        while (*q && *q != ',' && !isspace((unsigned char)*q))
            q++;
        char tok[256];
        size_t n = (size_t)(q - p);
        if (n >= sizeof(tok))
            return why(w, cap, "'%.*s...' is too long for a name", 32, p);
        memcpy(tok, p, n);
        tok[n] = '\0';
        if (ids->n == MOE_DAEMON_MAX_IDS)
            return why(w, cap, "more than %d entries", MOE_DAEMON_MAX_IDS);
        int rc = resolve_id(group, tok, &ids->ids[ids->n], w, cap);
        if (rc)
            return rc;
        ids->n++;
        p = q;
    }
    return 0;
}

static int parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (!strcasecmp(v, yes[i])) {
            *out = true;
            return 0;
        }
        if (!strcasecmp(v, no[i])) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

static void enum_names(const struct moe_daemon_enum *e, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    for (; e->name && n < cap; e++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", e->name);
}

/* Parses v into the field of c that k names. w gets the reason on error;
 * the field is unchanged then. */
static int parse_value(const struct moe_daemon_key *k, const char *v, struct moe_daemon_config *c,
                       char *w, size_t cap)
{
    int64_t i;
    uint64_t u;
    int rc;

    switch (k->type) {
    case MOE_CFG_BOOL: {
        bool b;
        if (parse_bool(v, &b))
            return why(w, cap, "'%s' is not a boolean (yes/no, true/false, on/off, 1/0)", v);
        *PTR(c, k, bool) = b;
        return 0;
    }
    case MOE_CFG_INT:
    case MOE_CFG_INT64:
        if ((rc = parse_i64(v, &i)) == -ERANGE)
            return why(w, cap, "%s is out of range %" PRId64 "..%" PRId64, v, k->imin, k->imax);
        if (rc)
            return why(w, cap, "'%s' is not an integer", v);
        if ((rc = check_irange(k, i, v, w, cap)))
            return rc;
        if (k->type == MOE_CFG_INT)
            *PTR(c, k, int) = (int)i;
        else
            *PTR(c, k, int64_t) = i;
        return 0;
    case MOE_CFG_SIZE: {
        if (parse_size(v, &u))
            return why(w, cap, "'%s' is not a size (a number with an optional K, M, G or T)", v);
        if (u < (uint64_t)k->imin || u > (uint64_t)k->imax) {
            char lo[32], hi[32];
            format_size((uint64_t)k->imin, lo, sizeof(lo));
            format_size((uint64_t)k->imax, hi, sizeof(hi));
            return why(w, cap, "%s is out of range %s..%s", v, lo, hi);
        }
        *PTR(c, k, size_t) = (size_t)u;
        return 0;
    }
    case MOE_CFG_DOUBLE: {
        char *end;
        if (!*v || isspace((unsigned char)*v))
            return why(w, cap, "'%s' is not a number", v);
        errno = 0;
        double d = strtod(v, &end);
        if (*end || errno || !isfinite(d))
            return why(w, cap, "'%s' is not a finite number", v);
        bool low = (k->flags & MOE_CFG_MIN_EXCL) ? d <= k->dmin : d < k->dmin;
        if (low || d > k->dmax)
            return why(w, cap, "%s is out of range %c%g, %g]", v,
                       (k->flags & MOE_CFG_MIN_EXCL) ? '(' : '[', k->dmin, k->dmax);
        *PTR(c, k, double) = d;
        return 0;
    }
    case MOE_CFG_STRING: {
        if ((k->flags & MOE_CFG_NONEMPTY) && !*v)
            return why(w, cap, "must not be empty");
        char *s = strdup(v);
        if (!s)
            return why(w, cap, "out of memory");
        free(*PTR(c, k, char *));
        *PTR(c, k, char *) = s;
        return 0;
    }
    case MOE_CFG_MODE: {
        char *end;
        if (!*v || !isdigit((unsigned char)*v))
            return why(w, cap, "'%s' is not an octal mode", v);
        errno = 0;
        unsigned long m = strtoul(v, &end, 8);
        if (*end || errno)
            return why(w, cap, "'%s' is not an octal mode (digits 0-7)", v);
        if (m > (unsigned long)k->imax)
            return why(w, cap, "%s is out of range 0..%04o", v, (unsigned)k->imax);
        *PTR(c, k, unsigned) = (unsigned)m;
        return 0;
    }
    case MOE_CFG_ENUM:
        for (const struct moe_daemon_enum *e = k->enums; e->name; e++) {
            if (!strcmp(v, e->name)) {
                *PTR(c, k, int) = e->value;
                return 0;
            }
        }
        {
            char names[512];
            enum_names(k->enums, names, sizeof(names));
            return why(w, cap, "'%s' is not one of %s", v, names);
        }
    case MOE_CFG_UIDS:
    case MOE_CFG_GIDS: {
        struct moe_daemon_ids ids;
        if ((rc = parse_ids(k->type == MOE_CFG_GIDS, v, &ids, w, cap)))
            return rc;
        if (!(ids.text = strdup(v)))
            return why(w, cap, "out of memory");
        struct moe_daemon_ids *dst = PTR(c, k, struct moe_daemon_ids);
        free(dst->text);
        *dst = ids;
        return 0;
    }
    case MOE_CFG_GROUP: {
        struct moe_daemon_group g = {NULL, (gid_t)-1};
        if (!strcmp(v, MOE_DAEMON_GROUP_AUTO)) {
            g.gid = auto_group();
        } else if (*v) {
            uint32_t id;
            if ((rc = resolve_id(true, v, &id, w, cap)))
                return rc;
            g.gid = (gid_t)id;
        }
        if (!(g.text = strdup(v)))
            return why(w, cap, "out of memory");
        struct moe_daemon_group *dst = PTR(c, k, struct moe_daemon_group);
        free(dst->text);
        *dst = g;
        return 0;
    }
    }
    return why(w, cap, "unsupported type");
}

void moe_daemon_key_format(const struct moe_daemon_key *k, const struct moe_daemon_config *c,
                           char *buf, size_t cap)
{
    const char *s;
    switch (k->type) {
    case MOE_CFG_BOOL:
        snprintf(buf, cap, "%s", *CPTR(c, k, bool) ? "yes" : "no");
        return;
    case MOE_CFG_INT:
        snprintf(buf, cap, "%d", *CPTR(c, k, int));
        return;
    case MOE_CFG_INT64:
        snprintf(buf, cap, "%" PRId64, *CPTR(c, k, int64_t));
        return;
    case MOE_CFG_SIZE:
        format_size((uint64_t)*CPTR(c, k, size_t), buf, cap);
        return;
    case MOE_CFG_DOUBLE:
        format_double(*CPTR(c, k, double), buf, cap);
        return;
    case MOE_CFG_STRING:
        s = *CPTR(c, k, char *);
        snprintf(buf, cap, "%s", s ? s : "");
        return;
    case MOE_CFG_MODE:
        snprintf(buf, cap, "%04o", *CPTR(c, k, unsigned));
        return;
    case MOE_CFG_ENUM:
        for (const struct moe_daemon_enum *e = k->enums; e->name; e++) {
            if (e->value == *CPTR(c, k, int)) {
                snprintf(buf, cap, "%s", e->name);
                return;
            }
        }
        snprintf(buf, cap, "%d", *CPTR(c, k, int));
        return;
    case MOE_CFG_UIDS:
    case MOE_CFG_GIDS:
        s = CPTR(c, k, struct moe_daemon_ids)->text;
        snprintf(buf, cap, "%s", s ? s : "");
        return;
    case MOE_CFG_GROUP:
        s = CPTR(c, k, struct moe_daemon_group)->text;
        snprintf(buf, cap, "%s", s ? s : "");
        return;
    }
    buf[0] = '\0';
}

void moe_daemon_key_describe(const struct moe_daemon_key *k, char *buf, size_t cap)
{
    char lo[32], hi[32], names[512];
    switch (k->type) {
    case MOE_CFG_BOOL:
        snprintf(buf, cap, "boolean");
        return;
    case MOE_CFG_INT:
    case MOE_CFG_INT64:
        if (k->imax == INT64_MAX)
            snprintf(buf, cap, "integer >= %" PRId64, k->imin);
        else
            snprintf(buf, cap, "integer %" PRId64 "..%" PRId64, k->imin, k->imax);
        return;
    case MOE_CFG_SIZE:
        format_size((uint64_t)k->imin, lo, sizeof(lo));
        format_size((uint64_t)k->imax, hi, sizeof(hi));
        snprintf(buf, cap, "size %s..%s", lo, hi);
        return;
    case MOE_CFG_DOUBLE:
        format_double(k->dmin, lo, sizeof(lo));
        format_double(k->dmax, hi, sizeof(hi));
        snprintf(buf, cap, "number in %c%s, %s]", (k->flags & MOE_CFG_MIN_EXCL) ? '(' : '[', lo,
                 hi);
        return;
    case MOE_CFG_STRING:
        snprintf(buf, cap, "%s", (k->flags & MOE_CFG_NONEMPTY) ? "string, not empty" : "string");
        return;
    case MOE_CFG_MODE:
        snprintf(buf, cap, "octal mode");
        return;
    case MOE_CFG_ENUM:
        enum_names(k->enums, names, sizeof(names));
        snprintf(buf, cap, "one of %s", names);
        return;
    case MOE_CFG_UIDS:
        snprintf(buf, cap, "list of users or uids (at most %d)", MOE_DAEMON_MAX_IDS);
        return;
    case MOE_CFG_GIDS:
        snprintf(buf, cap, "list of groups or gids (at most %d)", MOE_DAEMON_MAX_IDS);
        return;
    case MOE_CFG_GROUP:
        snprintf(buf, cap, "group name or gid");
        return;
    }
    buf[0] = '\0';
}

/* ---- whole configs ---------------------------------------------------------- */

static void free_field(const struct moe_daemon_key *k, struct moe_daemon_config *c)
{
    switch (k->type) {
    case MOE_CFG_STRING:
        free(*PTR(c, k, char *));
        *PTR(c, k, char *) = NULL;
        break;
    case MOE_CFG_UIDS:
    case MOE_CFG_GIDS:
        free(PTR(c, k, struct moe_daemon_ids)->text);
        PTR(c, k, struct moe_daemon_ids)->text = NULL;
        break;
    case MOE_CFG_GROUP:
        free(PTR(c, k, struct moe_daemon_group)->text);
        PTR(c, k, struct moe_daemon_group)->text = NULL;
        break;
    default:
        break;
    }
}

/* dst's field (already freed or never set) becomes a copy of src's */
static int copy_field(const struct moe_daemon_key *k, struct moe_daemon_config *dst,
                      const struct moe_daemon_config *src)
{
    switch (k->type) {
    case MOE_CFG_BOOL: *PTR(dst, k, bool) = *CPTR(src, k, bool); return 0;
    case MOE_CFG_INT:
    case MOE_CFG_ENUM: *PTR(dst, k, int) = *CPTR(src, k, int); return 0;
    case MOE_CFG_INT64: *PTR(dst, k, int64_t) = *CPTR(src, k, int64_t); return 0;
    case MOE_CFG_SIZE: *PTR(dst, k, size_t) = *CPTR(src, k, size_t); return 0;
    case MOE_CFG_DOUBLE: *PTR(dst, k, double) = *CPTR(src, k, double); return 0;
    case MOE_CFG_MODE: *PTR(dst, k, unsigned) = *CPTR(src, k, unsigned); return 0;
    case MOE_CFG_STRING: {
        const char *s = *CPTR(src, k, char *);
        *PTR(dst, k, char *) = s ? strdup(s) : NULL;
        return s && !*PTR(dst, k, char *) ? -ENOMEM : 0;
    }
    case MOE_CFG_UIDS:
    case MOE_CFG_GIDS: {
        struct moe_daemon_ids v = *CPTR(src, k, struct moe_daemon_ids);
        const char *s = v.text;
        v.text = s ? strdup(s) : NULL;
        *PTR(dst, k, struct moe_daemon_ids) = v;
        return s && !v.text ? -ENOMEM : 0;
    }
    case MOE_CFG_GROUP: {
        struct moe_daemon_group v = *CPTR(src, k, struct moe_daemon_group);
        const char *s = v.text;
        v.text = s ? strdup(s) : NULL;
        *PTR(dst, k, struct moe_daemon_group) = v;
        return s && !v.text ? -ENOMEM : 0;
    }
    }
    return 0;
}

int moe_daemon_key_assign(const struct moe_daemon_key *k, struct moe_daemon_config *dst,
                          const struct moe_daemon_config *src)
{
    free_field(k, dst);
    if (copy_field(k, dst, src))
        return moe_err(-ENOMEM, "config: out of memory");
    return 0;
}

void moe_daemon_config_free(struct moe_daemon_config *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < N_KEYS; i++)
        free_field(&table[i], c);
}

int moe_daemon_config_copy(struct moe_daemon_config *dst, const struct moe_daemon_config *src)
{
    memset(dst, 0, sizeof(*dst));
    for (size_t i = 0; i < N_KEYS; i++) {
        if (copy_field(&table[i], dst, src)) {
            moe_daemon_config_free(dst);
            memset(dst, 0, sizeof(*dst));
            return moe_err(-ENOMEM, "config: out of memory");
        }
    }
    return 0;
}

static bool str_eq(const char *a, const char *b)
{
    return !strcmp(a ? a : "", b ? b : "");
}

bool moe_daemon_key_equal(const struct moe_daemon_key *k, const struct moe_daemon_config *a,
                          const struct moe_daemon_config *b)
{
    switch (k->type) {
    case MOE_CFG_BOOL: return *CPTR(a, k, bool) == *CPTR(b, k, bool);
    case MOE_CFG_INT:
    case MOE_CFG_ENUM: return *CPTR(a, k, int) == *CPTR(b, k, int);
    case MOE_CFG_INT64: return *CPTR(a, k, int64_t) == *CPTR(b, k, int64_t);
    case MOE_CFG_SIZE: return *CPTR(a, k, size_t) == *CPTR(b, k, size_t);
    case MOE_CFG_DOUBLE: return *CPTR(a, k, double) == *CPTR(b, k, double);
    case MOE_CFG_MODE: return *CPTR(a, k, unsigned) == *CPTR(b, k, unsigned);
    case MOE_CFG_STRING: return str_eq(*CPTR(a, k, char *), *CPTR(b, k, char *));
    case MOE_CFG_UIDS:
    case MOE_CFG_GIDS: {
        /* the resolved ids decide: "root" and "0" are the same list */
        const struct moe_daemon_ids *x = CPTR(a, k, struct moe_daemon_ids);
        const struct moe_daemon_ids *y = CPTR(b, k, struct moe_daemon_ids);
        return x->n == y->n && !memcmp(x->ids, y->ids, x->n * sizeof(x->ids[0]));
    }
    case MOE_CFG_GROUP:
        return CPTR(a, k, struct moe_daemon_group)->gid == CPTR(b, k, struct moe_daemon_group)->gid;
    }
    return false;
}

bool moe_daemon_config_equal(const struct moe_daemon_config *a, const struct moe_daemon_config *b)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (!moe_daemon_key_equal(&table[i], a, b))
            return false;
    return true;
}

int moe_daemon_config_defaults(struct moe_daemon_config *c)
{
    char w[256];
    memset(c, 0, sizeof(*c));
    c->socket_group.gid = (gid_t)-1;
    for (size_t i = 0; i < N_KEYS; i++) {
        int rc = parse_value(&table[i], table[i].def, c, w, sizeof(w));
        if (rc) {
            moe_daemon_config_free(c);
            memset(c, 0, sizeof(*c));
            /* a bad default is a programming error; ENOMEM is not */
            return moe_err(rc, "default of [%s] %s: %s", table[i].section, table[i].name, w);
        }
    }
    return 0;
}

int moe_daemon_config_set(struct moe_daemon_config *c, const char *section, const char *name,
                          const char *value)
{
    char w[512];
    const struct moe_daemon_key *k = moe_daemon_config_find(section, name);
    if (!k)
        return moe_err(-EINVAL, "[%s] %s: unknown key", section, name);
    if (parse_value(k, value, c, w, sizeof(w)))
        return moe_err(-EINVAL, "[%s] %s: %s", section, name, w);
    return 0;
}

/* ---- the INI reader --------------------------------------------------------- */

struct parse_state {
    const char *name; /* file name for messages */
    const char *text;
    size_t len, pos;
    int line;
    char section[64]; /* the current section, from our own look at the lines */
    bool failed;
    struct moe_daemon_config *cfg;
    int line_of[MOE_ARRAY_SIZE(table)]; /* where each key was set, 0 = default */
};

static int fail(struct parse_state *st, int line, const char *fmt, ...) MOE_PRINTF(3, 4);
static int fail(struct parse_state *st, int line, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (!st->failed)
        moe_err(-EINVAL, "%s:%d: %s", st->name, line, msg);
    st->failed = true;
    return -EINVAL;
}

static bool blank(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\v' || ch == '\f' || ch == '\r';
}

/* Checks one raw line (without its line end) before inih sees it. */
static int check_line(struct parse_state *st, const char *p, size_t n)
{
    const char *end = p + n;

    if (n > MOE_DAEMON_INI_MAX_LINE)
        return fail(st, st->line,
                    "line is %zu bytes long, more than %d (inih would split it); shorten the value "
                    "or the comment",
                    n, MOE_DAEMON_INI_MAX_LINE);
    if (memchr(p, '\0', n))
        return fail(st, st->line, "NUL byte in the line");
    if (st->line == 1 && n >= 3 && !memcmp(p, "\xEF\xBB\xBF", 3)) {
        p += 3; /* UTF-8 BOM, which inih skips too */
        n -= 3;
    }

    const char *q = p;
    while (q < end && blank(*q))
        q++;
    if (q == end || *q == '#' || *q == ';')
        return 0; /* blank line or comment (indented comments are harmless) */
    if (q != p)
        return fail(st, st->line,
                    "line starts with blanks; inih would append it to the previous value: start "
                    "keys and sections at column 1");

    if (*p == '[') {
        const char *close = memchr(p, ']', n);
        if (!close)
            return fail(st, st->line, "section header without ']'");
        for (const char *t = close + 1; t < end; t++)
            if (!blank(*t))
                return fail(st, st->line, "text after the section header");
        const char *s = p + 1, *e = close;
        while (s < e && blank(*s))
            s++;
        while (e > s && blank(e[-1]))
            e--;
        if (!section_known(s, (size_t)(e - s)))
            return fail(st, st->line, "unknown section [%.*s]", (int)(e - s), s);
        snprintf(st->section, sizeof(st->section), "%.*s", (int)(e - s), s);
        return 0;
    }

    const char *eq = memchr(p, '=', n);
    if (!eq)
        return fail(st, st->line, "expected 'key = value', a [section] or a comment");
    const char *ke = eq;
    while (ke > p && blank(ke[-1]))
        ke--;
    for (const char *t = p; t < ke; t++)
        if (!(islower((unsigned char)*t) || isdigit((unsigned char)*t) || *t == '_'))
            return fail(st, st->line, "'%.*s' is not a key name (lower-case letters, digits, _)",
                        (int)(ke - p), p);
    if (!st->section[0])
        return fail(st, st->line, "key '%.*s' before any [section]", (int)(ke - p), p);
    const char *v = eq + 1;
    while (v < end && blank(*v))
        v++;
    for (const char *t = v; t < end; t++) {
        if ((*t == '#' || *t == ';') && (t == v || blank(t[-1])))
            return fail(st, st->line,
                        "[%s] %.*s: '%c' after the value; comments must be on their own line",
                        st->section, (int)(ke - p), p, *t);
    }
    return 0;
}

/* inih's line source: one line per call, so st->line is the line the
 * handler is about to see. Returning NULL ends the parse. */
static char *reader(char *str, int num, void *stream)
{
    struct parse_state *st = stream;
    if (st->failed || st->pos >= st->len)
        return NULL;
    const char *p = st->text + st->pos;
    size_t left = st->len - st->pos;
    const char *nl = memchr(p, '\n', left);
    size_t n = nl ? (size_t)(nl - p) + 1 : left; /* with its '\n' */
    size_t body = n - (nl ? 1 : 0);
    if (body && p[body - 1] == '\r')
        body--;
    st->pos += n;
    st->line++;
    if (check_line(st, p, body))
        return NULL;
    if (n + 1 > (size_t)num) { /* an inih built with a smaller buffer */
        fail(st, st->line, "line is %zu bytes long, more than this inih reads (%d)", body,
             num - 3);
        return NULL;
    }
    memcpy(str, p, n);
    str[n] = '\0';
    return str;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
    struct parse_state *st = user;
    char w[512];

    if (st->failed)
        return 1;
    const struct moe_daemon_key *k = moe_daemon_config_find(section, name);
    if (!k) {
        fail(st, st->line, "[%s] %s: unknown key", section, name);
        return 0;
    }
    size_t i = (size_t)(k - table);
    if (st->line_of[i]) {
        fail(st, st->line, "[%s] %s: set twice (first on line %d)", section, name, st->line_of[i]);
        return 0;
    }
    if (parse_value(k, value ? value : "", st->cfg, w, sizeof(w))) {
        fail(st, st->line, "[%s] %s: %s", section, name, w);
        return 0;
    }
    st->line_of[i] = st->line;
    return 1;
}

/* Rules between keys. The first one broken is reported through report(ctx,
 * a, b, msg), a and b being the keys involved (b = a for a rule on one key). */
typedef int (*rule_report_fn)(void *ctx, const struct moe_daemon_key *a,
                              const struct moe_daemon_key *b, const char *msg);

static int check_rules(const struct moe_daemon_config *c, rule_report_fn report, void *ctx)
{
    char msg[512], w[256];
    const struct moe_daemon_key *a, *b;

    a = moe_daemon_config_find("sampling", "max_tokens");
    b = moe_daemon_config_find("limits", "max_tokens");
    if (c->max_tokens_default > c->max_tokens_limit) {
        snprintf(msg, sizeof(msg), "[sampling] max_tokens: %d is above [limits] max_tokens (%d)",
                 c->max_tokens_default, c->max_tokens_limit);
        return report(ctx, a, b, msg);
    }
    a = moe_daemon_config_find("batching", "max_batch_tokens");
    b = moe_daemon_config_find("batching", "max_seqs");
    if (c->max_batch_tokens < c->max_seqs) {
        snprintf(msg, sizeof(msg),
                 "[batching] max_batch_tokens: %d is below [batching] max_seqs (%d); every "
                 "running sequence needs a token in each step",
                 c->max_batch_tokens, c->max_seqs);
        return report(ctx, a, b, msg);
    }
    bool sel[MOE_ROUTER_MAX_LAYERS];
    float beta[MOE_ROUTER_MAX_LAYERS];
    a = moe_daemon_config_find("router", "layers");
    if (strcmp(c->odp_layers, "auto") &&
        moe_router_parse_layers(c->odp_layers, MOE_ROUTER_MAX_LAYERS, sel, w, sizeof(w))) {
        snprintf(msg, sizeof(msg), "[router] layers: %s", w);
        return report(ctx, a, a, msg);
    }
    a = moe_daemon_config_find("router", "beta_layers");
    if (moe_router_parse_betas(c->odp_beta_layers, MOE_ROUTER_MAX_LAYERS, beta, w, sizeof(w))) {
        snprintf(msg, sizeof(msg), "[router] beta_layers: %s", w);
        return report(ctx, a, a, msg);
    }
    a = moe_daemon_config_find("daemon", "listen");
    if (c->listen && c->listen[0] && moe_ipc_listen_check(c->listen, c->socket, w, sizeof(w))) {
        snprintf(msg, sizeof(msg), "[daemon] listen: %s", w);
        return report(ctx, a, a, msg);
    }
    a = moe_daemon_config_find("kv", "residual");
    b = moe_daemon_config_find("kv", "group");
    if (c->kv_residual % c->kv_group) {
        snprintf(msg, sizeof(msg), "[kv] residual: %d is not a multiple of [kv] group (%d)",
                 c->kv_residual, c->kv_group);
        return report(ctx, a, b, msg);
    }
    return 0;
}

/* in a file: the error goes on the later of the two keys' lines */
static int report_in_file(void *ctx, const struct moe_daemon_key *a,
                          const struct moe_daemon_key *b, const char *msg)
{
    struct parse_state *st = ctx;
    return fail(st, MOE_MAX(st->line_of[a - table], st->line_of[b - table]), "%s", msg);
}

static int cross_check(struct parse_state *st)
{
    return check_rules(st->cfg, report_in_file, st);
}

int moe_daemon_config_parse(const char *name, const char *text, size_t len,
                            struct moe_daemon_config *c)
{
    struct moe_daemon_config tmp;
    int rc = moe_daemon_config_defaults(&tmp);
    if (rc) {
        memset(c, 0, sizeof(*c));
        return rc;
    }
    struct parse_state st = {.name = name, .text = text, .len = len, .cfg = &tmp};
    int ret = ini_parse_stream(reader, &st, handler, &st);
    if (st.failed)
        rc = -EINVAL;
    else if (ret == -2)
        rc = moe_err(-ENOMEM, "%s: out of memory", name);
    else if (ret)
        rc = fail(&st, ret, "cannot parse the line");
    else
        rc = cross_check(&st);
    if (rc) {
        moe_daemon_config_free(&tmp);
        memset(c, 0, sizeof(*c));
        return rc;
    }
    *c = tmp;
    return 0;
}

int moe_daemon_config_load(const char *path, struct moe_daemon_config *c)
{
    char *text = NULL;
    size_t len = 0;
    memset(c, 0, sizeof(*c));
    int rc = moe_read_text_file(path, &text, &len);
    if (rc)
        return rc;
    rc = moe_daemon_config_parse(path, text, len, c);
    free(text);
    return rc;
}

/* ---- the dump ------------------------------------------------------------------ */

/* "# text\n"; a text that would make the line longer than an INI line may
 * be (a long list of names) goes on several, broken after ", " or " " */
static void put_comment(FILE *f, const char *text)
{
    const size_t width = 100;
    size_t n = strlen(text);
    bool wrap = n + 2 > MOE_DAEMON_INI_MAX_LINE;
    while (wrap && n + 2 > width) {
        size_t cut = width - 2;
        while (cut > 0 && text[cut - 1] != ' ')
            cut--;
        if (cut == 0)
            break;
        fprintf(f, "# %.*s\n", (int)(cut - 1), text);
        text += cut;
        n -= cut;
    }
    fprintf(f, "# %s\n", text);
}

int moe_daemon_config_dump(const struct moe_daemon_config *c, const char *source, FILE *f)
{
    fprintf(f,
            "# moed configuration, written by `moed --dump-config`%s%s.\n"
            "#\n"
            "# Every key is listed with a line saying what it does, then its type, its\n"
            "# default and whether `systemctl reload moed` (SIGHUP, POST /admin/reload)\n"
            "# applies it; keys that need a restart keep their running value on reload.\n"
            "#\n"
            "# Syntax, stricter than most INI readers so that mistakes are caught:\n"
            "#  - \"key = value\" under a [section]; unknown sections and keys are errors,\n"
            "#    and so is a key set twice.\n"
            "#  - Keys and section headers start at column 1: an indented line is an error.\n"
            "#  - Comments are whole lines starting with '#' or ';'. A value must not start\n"
            "#    with '#' or ';' nor have one after a blank (\"1 # note\" is an error);\n"
            "#    values are never quoted and keep inner blanks.\n"
            "#  - A line holds at most %d bytes.\n"
            "#  - Sizes take K, M, G or T (powers of 1024); booleans are yes/no, true/false,\n"
            "#    on/off or 1/0; modes are octal; id lists are separated by commas or blanks.\n"
            "# Check a file with `moed --check-config FILE`.\n",
            source ? " from " : " (built-in defaults)", source ? source : "",
            MOE_DAEMON_INI_MAX_LINE);
    const char *section = "";
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct moe_daemon_key *k = &table[i];
        char val[1024], desc[384], line[512];
        if (strcmp(section, k->section)) {
            section = k->section;
            fprintf(f, "\n[%s]\n", section);
        }
        moe_daemon_key_format(k, c, val, sizeof(val));
        moe_daemon_key_describe(k, desc, sizeof(desc));
        /* "key = value", or "key=value" when the blanks would push a long
         * value over the line limit (it fitted in the file it came from) */
        bool tight = strlen(k->name) + 3 + strlen(val) > MOE_DAEMON_INI_MAX_LINE;
        snprintf(line, sizeof(line), "%s; default %s; %s", desc, k->def[0] ? k->def : "empty",
                 (k->flags & MOE_CFG_RELOAD) ? "reloadable" : "needs restart");
        fprintf(f, "\n# %s\n", k->doc);
        put_comment(f, line);
        fprintf(f, "%s%s=%s%s\n", k->name, tight ? "" : " ", (tight || !val[0]) ? "" : " ", val);
    }
    return ferror(f) ? moe_err(-EIO, "writing the configuration failed") : 0;
}

/* ---- command-line flags and MOED_* variables ---------------------------------- */

static bool name_unique(const struct moe_daemon_key *k)
{
    for (size_t i = 0; i < N_KEYS; i++)
        if (&table[i] != k && !strcmp(table[i].name, k->name))
            return false;
    return true;
}

/* "section_name" or "name" with sep for '_' and each letter through conv */
static bool key_word(const struct moe_daemon_key *k, int form, char sep, bool upper,
                     const char *prefix, char *buf, size_t cap)
{
    char raw[160];
    if (form == MOE_DAEMON_NAME_SHORT && !name_unique(k)) {
        if (cap)
            buf[0] = '\0';
        return false;
    }
    if (form == MOE_DAEMON_NAME_SHORT)
        snprintf(raw, sizeof(raw), "%s", k->name);
    else
        snprintf(raw, sizeof(raw), "%s_%s", k->section, k->name);
    size_t n = (size_t)snprintf(buf, cap, "%s", prefix);
    for (const char *p = raw; *p && n + 1 < cap; p++)
        buf[n++] = *p == '_' ? sep : upper ? (char)toupper((unsigned char)*p) : *p;
    if (n < cap)
        buf[n] = '\0';
    return true;
}

bool moe_daemon_key_flag(const struct moe_daemon_key *k, int form, char *buf, size_t cap)
{
    return key_word(k, form, '-', false, "", buf, cap);
}

bool moe_daemon_key_env(const struct moe_daemon_key *k, int form, char *buf, size_t cap)
{
    return key_word(k, form, '_', true, "MOED_", buf, cap);
}

const struct moe_daemon_key *moe_daemon_flag_find(const char *name)
{
    char w[MOE_DAEMON_NAME_MAX];
    for (size_t i = 0; i < N_KEYS; i++) {
        for (int form = MOE_DAEMON_NAME_SHORT; form <= MOE_DAEMON_NAME_LONG; form++)
            if (moe_daemon_key_flag(&table[i], form, w, sizeof(w)) && !strcmp(w, name))
                return &table[i];
    }
    return NULL;
}

/* MOED_* variables that are not configuration keys but are read elsewhere:
 * not worth a warning */
static bool env_known_other(const char *name, size_t n)
{
    static const char *const others[] = {"MOED_TEST_", "MOED_NVME_FAULT", "MOED_DEMO_"};
    for (size_t i = 0; i < MOE_ARRAY_SIZE(others); i++) {
        size_t m = strlen(others[i]);
        if (n >= m && !memcmp(name, others[i], m))
            return true;
    }
    return false;
}

int moe_daemon_env_settings(char *const *envp, struct moe_daemon_setting *out, size_t cap,
                            size_t *n_out)
{
    size_t n = 0;
    char w[MOE_DAEMON_NAME_MAX];
    *n_out = 0;
    for (char *const *e = envp; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (strncmp(*e, "MOED_", 5) || !eq)
            continue;
        size_t len = (size_t)(eq - *e);
        const struct moe_daemon_key *k = NULL;
        int form = 0;
        for (size_t i = 0; i < N_KEYS && !k; i++)
            for (form = MOE_DAEMON_NAME_SHORT; form <= MOE_DAEMON_NAME_LONG; form++)
                if (moe_daemon_key_env(&table[i], form, w, sizeof(w)) && strlen(w) == len &&
                    !memcmp(w, *e, len)) {
                    k = &table[i];
                    break;
                }
        if (!k) {
            if (!env_known_other(*e, len))
                moe_log(MOE_LOG_WARN, "%.*s names no configuration key; ignored (moed --help "
                        "lists the variables)", (int)MOE_MIN(len, 100), *e);
            continue;
        }
        for (size_t j = 0; j < n; j++)
            if (out[j].key == k)
                return moe_err(-EINVAL, "%s and %.*s both set [%s] %s; unset one", out[j].origin,
                               (int)len, *e, k->section, k->name);
        if (n == cap)
            return moe_err(-E2BIG, "too many MOED_* variables");
        out[n].key = k;
        out[n].value = eq + 1;
        snprintf(out[n].origin, sizeof(out[n].origin), "%.*s", (int)len, *e);
        n++;
    }
    *n_out = n;
    return 0;
}

struct override_ctx {
    const struct moe_daemon_setting *s;
    size_t n;
};

/* a rule broken after the overrides: name the last setting that touched it */
static int report_override(void *arg, const struct moe_daemon_key *a,
                           const struct moe_daemon_key *b, const char *msg)
{
    const struct override_ctx *o = arg;
    for (size_t i = o->n; i-- > 0;)
        if (o->s[i].key == a || o->s[i].key == b)
            return moe_err(-EINVAL, "%s: %s", o->s[i].origin, msg);
    return moe_err(-EINVAL, "%s", msg);
}

int moe_daemon_config_override(struct moe_daemon_config *c, const struct moe_daemon_setting *s,
                               size_t n)
{
    struct moe_daemon_config tmp;
    char w[512];
    if (!n)
        return 0;
    int rc = moe_daemon_config_copy(&tmp, c);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++) {
        if (parse_value(s[i].key, s[i].value, &tmp, w, sizeof(w))) {
            rc = moe_err(-EINVAL, "%s ([%s] %s): %s", s[i].origin, s[i].key->section,
                         s[i].key->name, w);
            goto fail;
        }
    }
    struct override_ctx ctx = {s, n};
    if ((rc = check_rules(&tmp, report_override, &ctx)))
        goto fail;
    moe_daemon_config_free(c);
    *c = tmp;
    return 0;
fail:
    moe_daemon_config_free(&tmp);
    return rc;
}

int moe_daemon_config_load_with(const char *path, const struct moe_daemon_setting *s, size_t n,
                                struct moe_daemon_config *c)
{
    int rc = path ? moe_daemon_config_load(path, c) : moe_daemon_config_defaults(c);
    if (rc)
        return rc;
    if ((rc = moe_daemon_config_override(c, s, n))) {
        moe_daemon_config_free(c);
        memset(c, 0, sizeof(*c));
    }
    return rc;
}

int moe_daemon_config_help(FILE *f)
{
    char fl[MOE_DAEMON_NAME_MAX], fs[MOE_DAEMON_NAME_MAX], el[MOE_DAEMON_NAME_MAX],
        es[MOE_DAEMON_NAME_MAX], desc[384], line[512];
    const char *section = "";
    for (size_t i = 0; i < N_KEYS; i++) {
        const struct moe_daemon_key *k = &table[i];
        if (strcmp(section, k->section)) {
            section = k->section;
            fprintf(f, "\n  [%s]\n", section);
        }
        bool s = moe_daemon_key_flag(k, MOE_DAEMON_NAME_SHORT, fs, sizeof(fs));
        moe_daemon_key_flag(k, MOE_DAEMON_NAME_LONG, fl, sizeof(fl));
        moe_daemon_key_env(k, MOE_DAEMON_NAME_SHORT, es, sizeof(es));
        moe_daemon_key_env(k, MOE_DAEMON_NAME_LONG, el, sizeof(el));
        moe_daemon_key_describe(k, desc, sizeof(desc));
        if (s)
            snprintf(line, sizeof(line), "--%s, --%s VALUE  (%s, %s)", fs, fl, es, el);
        else
            snprintf(line, sizeof(line), "--%s VALUE  (%s)", fl, el);
        fprintf(f, "    %s\n        %s; %s; default %s\n", line, k->doc, desc,
                k->def[0] ? k->def : "empty");
    }
    return ferror(f) ? -EIO : 0;
}
