/* common: the few things every module needs: error messages, logging,
 * half-precision conversions, read-only file mapping. */
#ifndef MOE_COMMON_H
#define MOE_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* the project's version: moed --version, /metrics moed_build_info, moectl */
#define MOED_VERSION "0.1.0"

#define MOE_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MOE_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MOE_MAX(a, b) ((a) > (b) ? (a) : (b))
#define MOE_ALIGN_UP(x, a) (((x) + ((a) - 1)) / (a) * (a))
#define MOE_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* ---- errors ------------------------------------------------------------
 * Functions return 0 or a negative errno. The human-readable reason (naming
 * the file, tensor or key at fault) is kept per thread, so a caller several
 * layers up can print exactly what went wrong. */
int moe_err(int code, const char *fmt, ...) MOE_PRINTF(2, 3); /* sets, returns code */
const char *moe_err_msg(void);  /* last message set on this thread ("" if none) */
void moe_err_clear(void);

/* ---- logging (stderr; "<N>" priority prefixes when under systemd) ------- */
enum moe_log_level { MOE_LOG_ERR = 3, MOE_LOG_WARN = 4, MOE_LOG_INFO = 6, MOE_LOG_DEBUG = 7 };
void moe_log(enum moe_log_level lvl, const char *fmt, ...) MOE_PRINTF(2, 3);
void moe_log_set_level(enum moe_log_level max_level);

/* ---- half precision ------------------------------------------------------ */
static inline float moe_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t moe_f32_to_bf16(float f) /* round to nearest even */
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float moe_f16_to_f32(uint16_t h);
uint16_t moe_f32_to_f16(float f);

/* ---- read-only file mapping ---------------------------------------------- */
struct moe_mapped_file {
    const uint8_t *data;
    size_t size;
    char *path; /* owned copy, for error messages */
};

int moe_file_map(const char *path, struct moe_mapped_file *out);
void moe_file_unmap(struct moe_mapped_file *f);

/* ---- small helpers -------------------------------------------------------- */
double moe_now_s(void);            /* monotonic seconds */

/* A growing NUL-terminated string; oom set (and nothing more added) when
 * memory ran out. Zero-initialise; free(p) when done. */
struct moe_sbuf {
    char *p;
    size_t len, cap;
    bool oom;
};
void moe_sbuf_put(struct moe_sbuf *b, const char *s, size_t n);
void moe_sbuf_puts(struct moe_sbuf *b, const char *s);
void moe_sbuf_putc(struct moe_sbuf *b, char c);
char *moe_path_join(const char *dir, const char *name); /* malloc'ed */
int moe_read_text_file(const char *path, char **out, size_t *len); /* NUL-terminated */
/* moed's socket when nothing names one: the system daemon's, and a user's
 * own, which moed takes when it may not create the system one and moectl
 * tries first: $XDG_RUNTIME_DIR/moed.sock when that is a directory of this
 * user's, else /tmp/moed-UID.sock. */
#define MOE_SYSTEM_SOCKET "/run/moed/moed.sock"
void moe_user_socket_path(char *buf, size_t cap);

/* ---- UTF-8 (common_utf8.c) ----------------------------------------------------
 * The code point at p[0..n) and its length *len; a byte that begins no
 * valid sequence (or one cut short) is U+FFFD of length 1. */
uint32_t moe_utf8_next(const char *p, size_t n, size_t *len);
bool moe_py_space(uint32_t c); /* Python's str.isspace() */

/* ---- command-line tools ------------------------------------------------------ */
struct option;
/* the long name of the option whose getopt value is val ("?" if none) */
const char *moe_cli_opt_name(const struct option *opts, int val);
/* parse s as a number in [lo, hi]; on failure print "PROG: --OPT: ..." and return -1 */
int moe_cli_number(const char *prog, const char *opt, const char *s, double lo, double hi,
                   double *out);
int moe_cli_integer(const char *prog, const char *opt, const char *s, int64_t lo, int64_t hi,
                    int64_t *out);

#endif
