/* Stop strings over streamed text.
 *
 * The text not yet shown (held bytes plus the new piece) sits in one buffer.
 * Each push looks for the first stop string to complete in it (see
 * find_stop); without a match, the longest suffix that is a proper prefix
 * of some stop string is held back and the rest is emitted.
 *
 * Held bytes are emitted later exactly as they came. A valid UTF-8 stop
 * string starts with a lead byte, so in valid UTF-8 text both a match and a
 * held suffix start on a character boundary: if the pieces are whole
 * characters, so is every emitted chunk.
 *
 * Emitted text points into the buffer; it must stay valid until the next
 * call, so the held suffix is moved to the front at the start of the next
 * call, not at the end of this one. The buffer grows only when a piece
 * exceeds its capacity (rare; pieces are tokens). */
#include "engine/engine.h"

#include "common/common.h"

#include <errno.h>
#include <stdlib.h>

#define STOP_MAX 16      /* stop strings per request */
#define STOP_MAX_LEN 256 /* bytes per stop string */
#define STOP_BUF_INIT 4096

struct moe_stop {
    size_t n;
    char *str[STOP_MAX];
    size_t len[STOP_MAX];
    char *buf;
    size_t cap;
    size_t start;   /* buf[start..end) is held back */
    size_t end;
    bool matched;   /* a stop string was found; later text is discarded */
};

int moe_stop_create(const char *const *stops, size_t n_stops, struct moe_stop **out)
{
    struct moe_stop *st = NULL;

    *out = NULL;
    if (n_stops > STOP_MAX)
        return moe_err(-EINVAL, "at most %d stop strings, got %zu", STOP_MAX, n_stops);
    if (n_stops && !stops)
        return moe_err(-EINVAL, "stop strings missing");
    for (size_t i = 0; i < n_stops; i++) {
        if (!stops[i] || !stops[i][0])
            return moe_err(-EINVAL, "stop string %zu is empty", i);
        size_t len = strlen(stops[i]);
        if (len > STOP_MAX_LEN)
            return moe_err(-EINVAL, "stop string %zu is %zu bytes, at most %d allowed", i,
                           len, STOP_MAX_LEN);
    }

    st = calloc(1, sizeof(*st));
    if (!st)
        goto oom;
    st->cap = STOP_BUF_INIT;
    st->buf = malloc(st->cap);
    if (!st->buf)
        goto oom;
    for (size_t i = 0; i < n_stops; i++) {
        st->len[i] = strlen(stops[i]);
        st->str[i] = malloc(st->len[i]);
        if (!st->str[i])
            goto oom;
        memcpy(st->str[i], stops[i], st->len[i]);
        st->n++;
    }
    *out = st;
    return 0;

oom:
    moe_stop_free(st);
    return moe_err(-ENOMEM, "stop strings: out of memory");
}

void moe_stop_free(struct moe_stop *st)
{
    if (!st)
        return;
    for (size_t i = 0; i < st->n; i++)
        free(st->str[i]);
    free(st->buf);
    free(st);
}

/* first occurrence of s[0..sl) in h[0..hl) (sl >= 1), or NULL */
static const char *find(const char *h, size_t hl, const char *s, size_t sl)
{
    while (hl >= sl) {
        const char *p = memchr(h, s[0], hl - sl + 1);
        if (!p)
            return NULL;
        if (!memcmp(p + 1, s + 1, sl - 1))
            return p;
        hl -= (size_t)(p - h) + 1;
        h = p + 1;
    }
    return NULL;
}

/* Where the text before the first stop string to complete in buf[0..n)
 * ends, or n when none does. The first to complete is the one ending
 * earliest; of those ending at the same byte, the longest. So the result
 * does not depend on how the text was cut into pieces: it is what pushing
 * one byte at a time would give. */
static size_t find_stop(const struct moe_stop *st, const char *buf, size_t n)
{
    size_t best = n, best_end = n + 1;
    for (size_t i = 0; i < st->n; i++) {
        /* only a match ending no later than best_end can win */
        const char *p = find(buf, MOE_MIN(n, best_end), st->str[i], st->len[i]);
        if (!p)
            continue;
        size_t at = (size_t)(p - buf), end = at + st->len[i];
        if (end < best_end || (end == best_end && at < best)) {
            best = at;
            best_end = end;
        }
    }
    return best;
}

/* length of the longest suffix of buf[0..n) that is a proper prefix of some
 * stop string */
static size_t held_len(const struct moe_stop *st, const char *buf, size_t n)
{
    size_t longest = 0;
    for (size_t i = 0; i < st->n; i++) {
        size_t l = MOE_MIN(n, st->len[i] - 1);
        for (; l > longest; l--) {
            if (buf[n - l] == st->str[i][0] && !memcmp(buf + n - l, st->str[i], l)) {
                longest = l;
                break;
            }
        }
    }
    return longest;
}

bool moe_stop_push(struct moe_stop *st, const char *text, size_t len, const char **emit,
                   size_t *n_emit)
{
    *emit = st->buf;
    *n_emit = 0;
    if (st->matched)
        return true;

    /* the previous call's emitted text may be dropped now */
    size_t held = st->end - st->start;
    if (st->start) {
        memmove(st->buf, st->buf + st->start, held);
        st->start = 0;
        st->end = held;
    }
    if (held + len > st->cap) {
        size_t cap = st->cap;
        while (cap < held + len)
            cap *= 2;
        char *nb = realloc(st->buf, cap);
        if (!nb) {
            /* Cannot look at this piece: end the generation here rather
             * than show text that may contain a stop string. */
            moe_log(MOE_LOG_ERR, "stop strings: out of memory for a %zu-byte piece; "
                    "stopping", len);
            st->matched = true;
            st->start = st->end = 0;
            *n_emit = held; /* what was held is still in buf[0..held) */
            return true;
        }
        st->buf = nb;
        st->cap = cap;
        *emit = st->buf;
    }
    if (len)
        memcpy(st->buf + held, text, len);
    st->end = held + len;

    size_t at = find_stop(st, st->buf, st->end);
    if (at < st->end) {
        st->matched = true;
        *n_emit = at;
        st->start = st->end = 0;
        return true;
    }
    st->start = st->end - held_len(st, st->buf, st->end);
    *n_emit = st->start;
    return false;
}

void moe_stop_flush(struct moe_stop *st, const char **emit, size_t *n_emit)
{
    *emit = st->buf + st->start;
    *n_emit = st->matched ? 0 : st->end - st->start;
    st->start = st->end; /* emitted; dropped at the next call */
}
