/* daemon: the moed process. Its configuration is one table (daemon_config.c)
 * that declares every INI key: section, name, type, default, bounds,
 * whether a reload may change it, a one-line doc, and where it lands in
 * struct moe_daemon_config. Parsing (inih), `--dump-config`, etc/moed.ini
 * and the reload diff are all driven by that table, so they cannot drift.
 *
 * The INI syntax is stricter than inih alone (see etc/moed.ini): keys and
 * sections start at column 1, comments are whole lines, lines are at most
 * MOE_DAEMON_INI_MAX_LINE bytes, unknown sections and keys are errors, a key
 * set twice is an error. Errors read "FILE:LINE: [section] key: reason". */
#ifndef MOE_DAEMON_H
#define MOE_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "common/common.h" /* MOED_VERSION */

#define MOE_DAEMON_DEFAULT_CONFIG "/etc/moed/moed.ini"
/* the extension README.md and moe-pack's docs give packs ("tiny-qmoe.moe"),
 * dropped with ".gguf" from a file's name to make the model's id */
#define MOE_DAEMON_PACK_EXT ".moe"
/* Debian's inih reads lines into 200-byte buffers and splits longer ones
 * silently; with "\r\n\0" that leaves 197 bytes of text. */
#define MOE_DAEMON_INI_MAX_LINE 197
#define MOE_DAEMON_MAX_IDS 32     /* = MOE_IPC_MAX_IDS, checked in daemon_apply.c */
#define MOE_DAEMON_CHAT_AUTO (-1)  /* [model] chat_template = auto */
#define MOE_DAEMON_CHAT_JINJA (-2) /* ... = jinja: the model's own template, required */
enum { MOE_DAEMON_ODP_AUTO, MOE_DAEMON_ODP_ON, MOE_DAEMON_ODP_OFF }; /* [router] odp */
enum { MOE_DAEMON_OFFLOAD_MMAP, MOE_DAEMON_OFFLOAD_TIERED };        /* [offload] mode */
#define MOE_DAEMON_ODP_BETA_DEFAULT 0.5 /* [router] beta = 0 without calibrated betas */

struct moe_ipc_limits;
struct moe_engine_limits;
struct moe_sampling;
struct moe_model;
struct moe_prune;

/* A uid or gid allow list: as written (names or numbers, for the dump) and
 * resolved to numbers. */
struct moe_daemon_ids {
    char *text;
    uint32_t ids[MOE_DAEMON_MAX_IDS];
    size_t n;
};

/* A group given by name or number; gid = (gid_t)-1 when text is empty.
 * "auto" is MOE_DAEMON_GROUP when it exists and this process is in it (or
 * is root), else (gid_t)-1. */
#define MOE_DAEMON_GROUP "moed"
#define MOE_DAEMON_GROUP_AUTO "auto"
struct moe_daemon_group {
    char *text;
    gid_t gid;
};

struct moe_daemon_config {
    /* [daemon] */
    char *socket;
    unsigned socket_mode;
    struct moe_daemon_group socket_group;
    struct moe_daemon_ids allow_uids;
    struct moe_daemon_ids allow_gids;
    char *listen;           /* "unix:PATH, tcp:HOST:PORT"; "" = unix:socket */
    char *api_key;          /* required on TCP; "" = none */
    int max_connections_per_peer;
    double header_timeout, body_timeout, write_timeout; /* seconds */
    int threads;
    int http_threads;
    int log_level;          /* enum moe_log_level */
    double drain_timeout;   /* seconds */
    bool watchdog;
    /* [model] */
    char *model_path;
    char *model_name;       /* "" = basename of model_path (moe_daemon_model_name) */
    int chat_template;      /* enum moe_chat_template or MOE_DAEMON_CHAT_AUTO / _JINJA */
    char *chat_template_file; /* a Jinja template to use instead of the model's; "" = none */
    bool prefault;          /* page every weight in at load */
    /* [batching] */
    int max_seqs;
    int max_batch_tokens;
    int max_ctx;            /* 0 = the model's */
    int max_queue;
    /* [kv] */
    size_t kv_bytes;        /* 0 = sized by kv_tokens */
    int64_t kv_tokens;      /* 0 = max_seqs x max_ctx */
    int kv_key_bits;
    int kv_value_bits;
    int kv_group;
    int kv_residual;
    int kv_state_bits;      /* linear layers' states: 32 (fp32) or 16 (bf16) */
    bool kv_prefix_cache;
    /* [router] */
    int odp;                /* MOE_DAEMON_ODP_* */
    double odp_beta;        /* 0 = the pack's betas, else MOE_DAEMON_ODP_BETA_DEFAULT */
    char *odp_layers;       /* "auto" or a layer list "2-5,7" */
    char *odp_beta_layers;  /* "" or "2-5:0.4,7:0.5" (overrides beta and layers) */
    double odp_protect;     /* protect_fraction */
    /* [offload] */
    int offload_mode;       /* MOE_DAEMON_OFFLOAD_* */
    size_t host_bytes;      /* host tier budget; 0 = every expert */
    int cache_policy;       /* enum moe_cache_policy_kind */
    int io_queue_depth;
    int numa;               /* enum moe_numa_mode */
    bool hugepages;
    int prefetch;           /* enum moe_prefetch_mode */
    bool force_pread;
    char *trace_path;       /* "" = no trace */
    /* [limits] */
    size_t max_body_bytes;
    size_t max_prompt_bytes;
    int max_tokens_limit;
    double request_timeout; /* seconds, 0 = none */
    /* [sampling] */
    double temperature;
    int top_k;
    double top_p;
    double min_p;
    double repetition_penalty;
    double presence_penalty;
    double frequency_penalty;
    int penalty_last_n;
    int max_tokens_default;
    int64_t seed;           /* -1 = random per request */
};

/* ---- the table ------------------------------------------------------------ */
enum moe_daemon_type {
    MOE_CFG_BOOL,   /* bool: yes/no, true/false, on/off, 1/0 */
    MOE_CFG_INT,    /* int, decimal */
    MOE_CFG_INT64,  /* int64_t, decimal */
    MOE_CFG_SIZE,   /* size_t, optional K/M/G/T suffix (1024-based) */
    MOE_CFG_DOUBLE, /* double, finite */
    MOE_CFG_STRING, /* char *, verbatim after trimming blanks */
    MOE_CFG_MODE,   /* unsigned, octal file mode */
    MOE_CFG_ENUM,   /* int, one of the key's names */
    MOE_CFG_UIDS,   /* struct moe_daemon_ids: user names or uids */
    MOE_CFG_GIDS,   /* struct moe_daemon_ids: group names or gids */
    MOE_CFG_GROUP,  /* struct moe_daemon_group */
};

#define MOE_CFG_RELOAD   (1u << 0) /* a reload applies it */
#define MOE_CFG_MIN_EXCL (1u << 1) /* the lower bound itself is not allowed */
#define MOE_CFG_NONEMPTY (1u << 2) /* strings: must not be empty */

struct moe_daemon_enum {
    const char *name;
    int value;
};

struct moe_daemon_key {
    const char *section;
    const char *name;
    enum moe_daemon_type type;
    size_t offset;                       /* in struct moe_daemon_config */
    const char *def;                     /* default, in INI syntax */
    int64_t imin, imax;                  /* INT, INT64, SIZE, MODE */
    double dmin, dmax;                   /* DOUBLE */
    const struct moe_daemon_enum *enums; /* ENUM: {NULL} terminated */
    unsigned flags;
    const char *doc;                     /* one line */
};

const struct moe_daemon_key *moe_daemon_config_table(size_t *n);
const struct moe_daemon_key *moe_daemon_config_find(const char *section, const char *name);
/* "integer 1..1024", "size 1K..1G", "one of auto, chatml, mistral" ... */
void moe_daemon_key_describe(const struct moe_daemon_key *k, char *buf, size_t cap);

/* ---- configs --------------------------------------------------------------- */
/* Defaults from the table. -ENOMEM only. */
int moe_daemon_config_defaults(struct moe_daemon_config *c);
/* Defaults, then the file. On error *c is left zeroed (nothing to free) and
 * moe_err_msg() holds "FILE:LINE: [section] key: reason". -EINVAL: the
 * content is invalid; other errnos: the file cannot be read. */
int moe_daemon_config_load(const char *path, struct moe_daemon_config *c);
/* The same over text in memory; name is used in messages. */
int moe_daemon_config_parse(const char *name, const char *text, size_t len,
                            struct moe_daemon_config *c);
/* Sets one key from its INI text (no file:line in the message). */
int moe_daemon_config_set(struct moe_daemon_config *c, const char *section, const char *name,
                          const char *value);
void moe_daemon_config_free(struct moe_daemon_config *c);
int moe_daemon_config_copy(struct moe_daemon_config *dst, const struct moe_daemon_config *src);
bool moe_daemon_config_equal(const struct moe_daemon_config *a, const struct moe_daemon_config *b);
bool moe_daemon_key_equal(const struct moe_daemon_key *k, const struct moe_daemon_config *a,
                          const struct moe_daemon_config *b);
/* dst's value of k becomes a copy of src's (the old one freed). */
int moe_daemon_key_assign(const struct moe_daemon_key *k, struct moe_daemon_config *dst,
                          const struct moe_daemon_config *src);
/* A key's value in INI syntax (the form the dump prints). */
void moe_daemon_key_format(const struct moe_daemon_key *k, const struct moe_daemon_config *c,
                           char *buf, size_t cap);
/* The whole config as a valid INI file, each key preceded by its doc.
 * source: the file it came from, or NULL for the built-in defaults. */
int moe_daemon_config_dump(const struct moe_daemon_config *c, const char *source, FILE *f);

/* Derived values. */
const char *moe_daemon_model_name(const struct moe_daemon_config *c, char *buf, size_t cap);
void moe_daemon_sampling(const struct moe_daemon_config *c, struct moe_sampling *s);
void moe_daemon_ipc_limits(const struct moe_daemon_config *c, struct moe_ipc_limits *l);
/* model_ctx: the model's context length; [batching] max_ctx is clamped to it.
 * chat_template: the resolved one (moe_daemon_chat_template). */
void moe_daemon_engine_limits(const struct moe_daemon_config *c, int32_t model_ctx,
                              int chat_template, struct moe_engine_limits *l);
/* [router] resolved against the model: the betas per layer (the pack's
 * calibrated ones, the INI's beta on the INI's or the automatic layers, or
 * beta_layers), the protect fraction, and whether requests that do not ask
 * get ODP (*on). -EINVAL with why = "[router] KEY: reason" when a layer is
 * past the model's last. */
int moe_daemon_prune(const struct moe_daemon_config *c, const struct moe_model *m,
                     struct moe_prune *out, bool *on, char *why, size_t cap);
/* [model] path exists and is a directory, a GGUF file or a moed pack.
 * -ENOENT / -EINVAL with why = "[model] path: PATH: reason". */
int moe_daemon_check_model(const struct moe_daemon_config *c, char *why, size_t cap);
/* Where moed listens when nothing says: /run/moed/moed.sock when this
 * process may create it, else the user's own (moe_user_socket_path). */
void moe_daemon_default_socket(char *buf, size_t cap);
/* [model] chat_template, with auto resolved, into *format:
 * MOE_DAEMON_CHAT_JINJA when the model has its own Jinja template (*text then
 * holds it, malloc'ed) or chat_template_file names one; else a built-in
 * format: the one named, or ChatML. *how says which (for the log). 0, or
 * -errno with the message set when jinja or the file is asked for and cannot
 * be had. */
int moe_daemon_chat_template(const struct moe_daemon_config *c, int *format, char **text,
                             const char **how);
/* The built-in format a template that does not compile is recognised as, else ChatML */
int moe_daemon_chat_fallback(const char *text);

/* ---- command-line flags and MOED_* environment variables -------------------
 * Generated from the table, no second list: every key is the flag
 * --SECTION-KEY and the variable MOED_SECTION_KEY ('_' as '-' in flags,
 * upper case in variables); a key whose name no other section uses is also
 * --KEY and MOED_KEY (--threads, MOED_THREADS; but --sampling-max-tokens).
 * Values are written as in the INI file. Precedence: defaults < INI file <
 * environment < flags. */
#define MOE_DAEMON_NAME_MAX 96
enum { MOE_DAEMON_NAME_SHORT, MOE_DAEMON_NAME_LONG };
/* "threads" / "daemon-threads" (without the dashes); false (buf "") for
 * the short form of a name that several sections use */
bool moe_daemon_key_flag(const struct moe_daemon_key *k, int form, char *buf, size_t cap);
/* "MOED_THREADS" / "MOED_DAEMON_THREADS"; false as for flags */
bool moe_daemon_key_env(const struct moe_daemon_key *k, int form, char *buf, size_t cap);
/* the key a flag names (without its leading dashes), either form; NULL if none */
const struct moe_daemon_key *moe_daemon_flag_find(const char *name);

/* One value given outside the file. */
struct moe_daemon_setting {
    const struct moe_daemon_key *key;
    const char *value; /* borrowed: argv or environ, which outlive the daemon's use */
    char origin[MOE_DAEMON_NAME_MAX]; /* "--threads", "MOED_THREADS": errors name it */
};
/* The MOED_* variables of envp that name keys, in envp's order. A MOED_*
 * variable that names no key is logged as a warning (those other moed
 * programs read, MOED_TEST_*, MOED_NVME_FAULT, MOED_DEMO_*, are not). The
 * short and long variable of one key both set is -EINVAL naming both. */
int moe_daemon_env_settings(char *const *envp, struct moe_daemon_setting *out, size_t cap,
                            size_t *n);
/* Sets s[0..n) on c in order (a later one wins), then checks the rules
 * between keys. On error c is unchanged, the return is -EINVAL and
 * moe_err_msg() reads "ORIGIN ([section] key): reason". */
int moe_daemon_config_override(struct moe_daemon_config *c, const struct moe_daemon_setting *s,
                               size_t n);
/* The built-in defaults (path NULL) or the file, then the settings. */
int moe_daemon_config_load_with(const char *path, const struct moe_daemon_setting *s, size_t n,
                                struct moe_daemon_config *c);
/* Every key's flags and variables with its doc, for --help. */
int moe_daemon_config_help(FILE *f);

/* ---- reload ------------------------------------------------------------------
 * Parses path into a new config. On error the running config *cur is left
 * untouched, msg says why, the return is negative. On success the changed
 * reloadable keys are handed to apply(arg, next) (next = *cur with those keys
 * replaced); if apply fails *cur is untouched as well. Otherwise *cur becomes
 * next. Changed keys that need a restart keep their running value and are
 * listed in msg as "needs restart: [section] key". Each change is logged. */
typedef int (*moe_daemon_apply_fn)(void *arg, const struct moe_daemon_config *next,
                                   char *msg, size_t cap);
struct moe_daemon_reload_result {
    int n_applied;  /* reloadable keys changed */
    int n_restart;  /* changed keys that need a restart */
};
int moe_daemon_config_reload(struct moe_daemon_config *cur, const char *path,
                             moe_daemon_apply_fn apply, void *arg,
                             struct moe_daemon_reload_result *res, char *msg, size_t cap);
/* The same with the settings made outside the file (flags, environment),
 * applied again on top of it; path NULL = no file (the defaults). */
int moe_daemon_config_reload_with(struct moe_daemon_config *cur, const char *path,
                                  const struct moe_daemon_setting *s, size_t n,
                                  moe_daemon_apply_fn apply, void *arg,
                                  struct moe_daemon_reload_result *res, char *msg, size_t cap);

/* ---- systemd (daemon_systemd.c) -------------------------------------------- */
/* sd_notify with a printf format; a no-op outside systemd. Returns
 * sd_notify's result (> 0 sent, 0 no NOTIFY_SOCKET, < 0 error). */
int moe_daemon_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* RELOADING=1 with MONOTONIC_USEC= now, as systemd's Type=notify-reload wants. */
int moe_daemon_notify_reloading(void);
/* Socket activation: fds[0..*n) = the listening stream sockets (AF_UNIX or
 * TCP) systemd passed, *n = 0 when none. More than cap, or one that is not a
 * listening stream socket, is -EINVAL with a message (all passed fds closed).
 * LISTEN_* are removed from the environment. */
int moe_daemon_listen_fds(int *fds, size_t cap, size_t *n);
/* The Unix sockets systemd passed get group gid back (systemd's
 * RuntimeDirectory= chown takes them from moed.socket's SocketGroup=); a
 * no-op without socket activation or with gid (gid_t)-1. */
void moe_daemon_regroup_activated(gid_t gid);
/* WATCHDOG_USEC when the watchdog is on for this process, else 0. */
uint64_t moe_daemon_watchdog_usec(void);
uint64_t moe_daemon_monotonic_usec(void);

#endif
