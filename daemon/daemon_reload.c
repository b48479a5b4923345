/* Reload: a new file becomes the running config only as a whole. A file
 * that does not parse, or changes that the running parts refuse, leave
 * everything as it was; keys that need a restart are reported and keep
 * their running value (so a later reload reports them again). */
#include "daemon/daemon.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/common.h"

struct msgbuf {
    char *p;
    size_t cap, n;
};

static void put(struct msgbuf *m, const char *fmt, ...) MOE_PRINTF(2, 3);
static void put(struct msgbuf *m, const char *fmt, ...)
{
    if (!m->cap || m->n >= m->cap - 1)
        return;
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(m->p + m->n, m->cap - m->n, fmt, ap);
    va_end(ap);
    if (r > 0)
        m->n = MOE_MIN(m->n + (size_t)r, m->cap - 1);
}

int moe_daemon_config_reload(struct moe_daemon_config *cur, const char *path,
                             moe_daemon_apply_fn apply, void *arg,
                             struct moe_daemon_reload_result *res, char *msg, size_t cap)
{
    return moe_daemon_config_reload_with(cur, path, NULL, 0, apply, arg, res, msg, cap);
}

int moe_daemon_config_reload_with(struct moe_daemon_config *cur, const char *path,
                                  const struct moe_daemon_setting *s, size_t n_set,
                                  moe_daemon_apply_fn apply, void *arg,
                                  struct moe_daemon_reload_result *res, char *msg, size_t cap)
{
    const char *what = path ? path : "(no configuration file)";
    struct moe_daemon_config next, merged;
    struct moe_daemon_reload_result r = {0, 0};
    char local[1024];
    if (!msg || !cap) {
        msg = local;
        cap = sizeof(local);
    }
    struct msgbuf m = {msg, cap, 0};
    size_t n_keys;
    const struct moe_daemon_key *table = moe_daemon_config_table(&n_keys);
    char was[1024], now[1024];
    int rc;

    msg[0] = '\0';
    if (res)
        *res = r;
    rc = moe_daemon_config_load_with(path, s, n_set, &next);
    if (rc) {
        put(&m, "%s; the running configuration is unchanged", moe_err_msg());
        moe_log(MOE_LOG_ERR, "reload: %s; the running configuration is unchanged", moe_err_msg());
        return rc;
    }
    rc = moe_daemon_config_copy(&merged, cur);
    for (size_t i = 0; i < n_keys && !rc; i++) {
        const struct moe_daemon_key *k = &table[i];
        if ((k->flags & MOE_CFG_RELOAD) && !moe_daemon_key_equal(k, cur, &next)) {
            rc = moe_daemon_key_assign(k, &merged, &next);
            r.n_applied++;
        }
    }
    if (rc) {
        put(&m, "%s: %s; the running configuration is unchanged", what, moe_err_msg());
        goto fail;
    }
    if (r.n_applied && apply) {
        char why[512] = "";
        rc = apply(arg, &merged, why, sizeof(why));
        if (rc) {
            put(&m, "%s: %s; the running configuration is unchanged", what,
                why[0] ? why : "the new values were refused");
            moe_log(MOE_LOG_ERR, "reload: %s", msg);
            goto fail;
        }
    }

    /* it is in effect: say what changed */
    put(&m, "%s: ", what);
    for (int pass = 0; pass < 2; pass++) {
        int n = 0;
        for (size_t i = 0; i < n_keys; i++) {
            const struct moe_daemon_key *k = &table[i];
            bool reloadable = k->flags & MOE_CFG_RELOAD;
            if (reloadable != (pass == 0) || moe_daemon_key_equal(k, cur, &next))
                continue;
            moe_daemon_key_format(k, cur, was, sizeof(was));
            moe_daemon_key_format(k, &next, now, sizeof(now));
            if (reloadable) {
                put(&m, "%s[%s] %s", n++ ? ", " : "applied ", k->section, k->name);
                moe_log(MOE_LOG_INFO, "reload: [%s] %s = %s (was %s)", k->section, k->name, now,
                        was);
            } else {
                put(&m, "%sneeds restart: [%s] %s", (n++ || r.n_applied) ? "; " : "", k->section,
                    k->name);
                moe_log(MOE_LOG_WARN,
                        "reload: needs restart: [%s] %s = %s (still running with %s)",
                        k->section, k->name, now, was);
                r.n_restart++;
            }
        }
    }
    if (!r.n_applied && !r.n_restart)
        put(&m, "no changes");
    moe_log(MOE_LOG_INFO, "reload: %s", msg);

    moe_daemon_config_free(cur);
    *cur = merged;
    moe_daemon_config_free(&next);
    if (res)
        *res = r;
    return 0;

fail:
    moe_daemon_config_free(&merged);
    moe_daemon_config_free(&next);
    return rc;
}
