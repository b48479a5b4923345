/* The listening sockets: `[daemon] listen` ("unix:PATH, tcp:HOST:PORT"),
 * or the sockets systemd passed (socket activation).
 *
 * A Unix socket ipc binds itself: a stale socket file is removed (one that
 * still accepts connections is -EADDRINUSE: another server runs), a path
 * that exists and is not a socket is -EEXIST and left alone; mode and group
 * are applied before listen(), so nobody connects in between. It is
 * unlinked at stop if it is still the one we bound. */
#define _GNU_SOURCE
#include "ipc/ipc_int.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define LISTEN_BACKLOG 512

/* The next item of a listen list: [*p, *end), separators skipped. */
static bool next_item(const char **p, const char **end)
{
    const char *s = *p;
    while (*s == ',' || *s == ' ' || *s == '\t')
        s++;
    if (!*s)
        return false;
    const char *e = s;
    while (*e && *e != ',' && *e != ' ' && *e != '\t')
        e++;
    *p = s;
    *end = e;
    return true;
}

/* "tcp:HOST:PORT" / "tcp:[V6]:PORT" -> host, port */
static int split_tcp(const char *item, size_t n, char *host, size_t hcap, char *port,
                     size_t pcap)
{
    const char *s = item + 4, *lim = item + n, *colon;
    if (s < lim && *s == '[') {
        const char *rb = memchr(s, ']', (size_t)(lim - s));
        if (!rb || rb + 1 >= lim || rb[1] != ':')
            return -EINVAL;
        if ((size_t)(rb - s - 1) >= hcap)
            return -EINVAL;
        memcpy(host, s + 1, (size_t)(rb - s - 1));
        host[rb - s - 1] = '\0';
        colon = rb + 1;
    } else {
        colon = NULL;
        for (const char *q = s; q < lim; q++)
            if (*q == ':')
                colon = q;
        if (!colon || (size_t)(colon - s) >= hcap)
            return -EINVAL;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
    }
    size_t pn = (size_t)(lim - colon - 1);
    if (pn == 0 || pn >= pcap)
        return -EINVAL;
    memcpy(port, colon + 1, pn);
    port[pn] = '\0';
    char *pe;
    long v = strtol(port, &pe, 10);
    if (*pe || v < 1 || v > 65535)
        return -EINVAL;
    return 0;
}

int moe_ipc_listen_check(const char *spec, const char *socket_path, char *msg, size_t cap)
{
    const char *p = spec && spec[0] ? spec : NULL, *end;
    size_t n = 0;
    if (!p)
        return socket_path && socket_path[0] ? 0 : -EINVAL;
    while (next_item(&p, &end)) {
        size_t len = (size_t)(end - p);
        char host[256], port[16];
        if (++n > MOE_IPC_MAX_LISTEN) {
            snprintf(msg, cap, "more than %d listeners", MOE_IPC_MAX_LISTEN);
            return -EINVAL;
        }
        if (len > 5 && strncmp(p, "unix:", 5) == 0) {
            if (len - 5 >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
                snprintf(msg, cap, "'%.*s': socket path too long", (int)len, p);
                return -ENAMETOOLONG;
            }
        } else if (len > 4 && strncmp(p, "tcp:", 4) == 0) {
            if (split_tcp(p, len, host, sizeof(host), port, sizeof(port))) {
                snprintf(msg, cap, "'%.*s': want tcp:HOST:PORT (port 1..65535)", (int)len, p);
                return -EINVAL;
            }
        } else {
            snprintf(msg, cap, "'%.*s': want unix:PATH or tcp:HOST:PORT", (int)len, p);
            return -EINVAL;
        }
        p = end;
    }
    if (n == 0) {
        snprintf(msg, cap, "no listener given");
        return -EINVAL;
    }
    return 0;
}

static int bind_unix(const char *path, const struct moe_ipc_config *cfg, struct ipc_listener *l)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct stat st;
    int fd, rc;

    if (!path || !path[0])
        return moe_err(-EINVAL, "ipc: no socket path given");
    if (strlen(path) >= sizeof(sa.sun_path))
        return moe_err(-ENAMETOOLONG, "%s: socket path too long (%zu bytes, at most %zu)", path,
                       strlen(path), sizeof(sa.sun_path) - 1);
    memcpy(sa.sun_path, path, strlen(path) + 1);

    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            return moe_err(-EEXIST, "%s: exists and is not a socket; not replacing it", path);
        /* a socket someone still listens on is not stale */
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe >= 0) {
            bool live = connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0;
            close(probe);
            if (live)
                return moe_err(-EADDRINUSE, "%s: another server is listening on this socket",
                               path);
        }
        if (unlink(path) < 0 && errno != ENOENT)
            return moe_err(-errno, "%s: cannot remove the stale socket: %s", path,
                           strerror(errno));
    } else if (errno != ENOENT) {
        return moe_err(-errno, "%s: %s", path, strerror(errno));
    }

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return moe_err(-errno, "ipc: socket(AF_UNIX): %s", strerror(errno));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        rc = moe_err(-errno, "%s: bind: %s", path, strerror(errno));
        goto fail_close;
    }
    /* mode and group before listen(): nobody can connect in between */
    if (chmod(path, cfg->socket_mode) < 0) {
        rc = moe_err(-errno, "%s: chmod %04o: %s", path, (unsigned)cfg->socket_mode,
                     strerror(errno));
        goto fail_unlink;
    }
    if (cfg->socket_gid != (gid_t)-1 && chown(path, (uid_t)-1, cfg->socket_gid) < 0) {
        rc = moe_err(-errno, "%s: chown to group %u: %s", path, (unsigned)cfg->socket_gid,
                     strerror(errno));
        goto fail_unlink;
    }
    if (listen(fd, LISTEN_BACKLOG) < 0) {
        rc = moe_err(-errno, "%s: listen: %s", path, strerror(errno));
        goto fail_unlink;
    }
    if (stat(path, &st) == 0) {
        l->dev = st.st_dev;
        l->ino = st.st_ino;
    }
    l->bound_path = strdup(path);
    if (!l->bound_path) {
        rc = moe_err(-ENOMEM, "ipc: out of memory");
        goto fail_unlink;
    }
    l->fd = fd;
    snprintf(l->name, sizeof(l->name), "unix:%s", path);
    return 0;

fail_unlink:
    unlink(path);
fail_close:
    close(fd);
    return rc;
}

static int bind_tcp(const char *item, size_t n, struct ipc_listener *l)
{
    char host[256], port[16];
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                    *res = NULL, *ai;
    int fd = -1, rc, one = 1;

    if (split_tcp(item, n, host, sizeof(host), port, sizeof(port)))
        return moe_err(-EINVAL, "[daemon] listen: '%.*s': want tcp:HOST:PORT", (int)n, item);
    rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (rc)
        return moe_err(-EINVAL, "[daemon] listen: '%.*s': %s", (int)n, item, gai_strerror(rc));
    rc = -EADDRNOTAVAIL;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            rc = -errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ai->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, LISTEN_BACKLOG) == 0)
            break;
        rc = -errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return moe_err(rc, "[daemon] listen: '%.*s': %s", (int)n, item, strerror(-rc));
    l->fd = fd;
    l->tcp = true;
    snprintf(l->name, sizeof(l->name), "%.*s", (int)n, item);
    return 0;
}

/* A socket handed over by systemd must be a listening stream, Unix or TCP. */
static int adopt_fd(int fd, struct ipc_listener *l)
{
    struct sockaddr_storage ss;
    socklen_t n = sizeof(ss);
    int type = 0, acc = 0;
    socklen_t tn = sizeof(type), an = sizeof(acc);
    if (getsockname(fd, (struct sockaddr *)&ss, &n) < 0)
        return moe_err(-errno, "ipc: listen fd %d: %s", fd, strerror(errno));
    if (ss.ss_family != AF_UNIX && ss.ss_family != AF_INET && ss.ss_family != AF_INET6)
        return moe_err(-EINVAL, "ipc: listen fd %d is neither AF_UNIX nor TCP", fd);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tn) < 0 || type != SOCK_STREAM)
        return moe_err(-EINVAL, "ipc: listen fd %d is not a stream socket", fd);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &an) == 0 && !acc &&
        listen(fd, LISTEN_BACKLOG) < 0)
        return moe_err(-errno, "ipc: listen fd %d: listen: %s", fd, strerror(errno));
    /* the gate accepts in bursts until EAGAIN */
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return moe_err(-errno, "ipc: listen fd %d: O_NONBLOCK: %s", fd, strerror(errno));
    l->fd = fd;
    l->tcp = ss.ss_family != AF_UNIX;
    l->inherited = true;
    snprintf(l->name, sizeof(l->name), "inherited fd %d (%s)", fd, l->tcp ? "tcp" : "unix");
    return 0;
}

int ipc_listeners_open(const struct moe_ipc_config *cfg, struct ipc_listener *ls, size_t *n_out)
{
    char msg[256];
    size_t n = 0;
    int rc = 0;

    *n_out = 0;
    if (cfg->n_listen_fds) {
        for (size_t i = 0; i < cfg->n_listen_fds && i < MOE_IPC_MAX_LISTEN; i++) {
            ls[n] = (struct ipc_listener){.fd = -1};
            if ((rc = adopt_fd(cfg->listen_fds[i], &ls[n])))
                goto fail;
            n++;
        }
        *n_out = n;
        return 0;
    }
    if (!cfg->listen || !cfg->listen[0]) {
        ls[0] = (struct ipc_listener){.fd = -1};
        if ((rc = bind_unix(cfg->socket_path, cfg, &ls[0])))
            return rc;
        *n_out = 1;
        return 0;
    }
    if ((rc = moe_ipc_listen_check(cfg->listen, cfg->socket_path, msg, sizeof(msg))))
        return moe_err(rc, "[daemon] listen: %s", msg);
    const char *p = cfg->listen, *end;
    while (next_item(&p, &end)) {
        char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
        size_t len = (size_t)(end - p);
        ls[n] = (struct ipc_listener){.fd = -1};
        if (strncmp(p, "unix:", 5) == 0) {
            snprintf(path, sizeof(path), "%.*s", (int)(len - 5), p + 5);
            rc = bind_unix(path, cfg, &ls[n]);
        } else {
            rc = bind_tcp(p, len, &ls[n]);
        }
        if (rc)
            goto fail;
        n++;
        p = end;
    }
    *n_out = n;
    return 0;
fail:
    for (size_t i = 0; i < n; i++)
        ipc_listener_close(&ls[i]);
    return rc;
}

void ipc_listener_unlink(struct ipc_listener *l)
{
    struct stat st;
    char *path = l->bound_path;
    if (!path)
        return;
    if (lstat(path, &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino)
        unlink(path);
    l->bound_path = NULL;
    free(path);
}

void ipc_listener_close(struct ipc_listener *l)
{
    ipc_listener_unlink(l);
    /* an inherited socket stays open: systemd's, and a restart finds it again */
    if (l->fd >= 0 && !l->inherited)
        close(l->fd);
    l->fd = -1;
}
