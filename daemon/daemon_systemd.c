/* systemd glue through libsystemd: notifications, socket activation and the
 * watchdog interval. All of it is a no-op when moed runs outside systemd. */
#include "daemon/daemon.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "common/common.h"

int moe_daemon_notify(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    int rc = sd_notify(0, buf);
    static atomic_bool warned; /* once: a broken NOTIFY_SOCKET would log every tick */
    if (rc < 0 && !atomic_exchange(&warned, true))
        moe_log(MOE_LOG_WARN, "sd_notify(%s): %s (not reported again)", buf, strerror(-rc));
    return rc;
}

uint64_t moe_daemon_monotonic_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int moe_daemon_notify_reloading(void)
{
    return moe_daemon_notify("RELOADING=1\nSTATUS=Reloading the configuration\nMONOTONIC_USEC=%llu",
                             (unsigned long long)moe_daemon_monotonic_usec());
}

int moe_daemon_listen_fds(int *fds, size_t cap, size_t *n_out)
{
    *n_out = 0;
    int n = sd_listen_fds(1);
    if (n < 0)
        return moe_err(n, "socket activation: %s", strerror(-n));
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        const char *why = NULL;
        if ((size_t)n > cap)
            why = "too many";
        else if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0)
            why = "not a listening stream socket";
        else if (sd_is_socket(fd, AF_UNIX, 0, -1) <= 0 && sd_is_socket_inet(fd, 0, 0, -1, 0) <= 0)
            why = "neither AF_UNIX nor TCP";
        if (why) {
            /* not ours to keep: close them so nothing leaks into workers */
            for (int k = 0; k < n; k++)
                close(SD_LISTEN_FDS_START + k);
            return moe_err(-EINVAL, "socket activation passed %d sockets; fd %d: %s (moed takes "
                           "up to %zu ListenStream= paths or TCP ports)", n, fd, why, cap);
        }
        fds[i] = fd;
    }
    *n_out = (size_t)n;
    return 0;
}

uint64_t moe_daemon_watchdog_usec(void)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0)
        return usec;
    return 0;
}

/* Socket activation under RuntimeDirectory= and DynamicUser=: systemd chowns
 * /run/moed and everything in it, the socket that moed.socket made with
 * SocketGroup=moed included, to the service's dynamic user and group when
 * moed starts. Give the Unix sockets back to gid (moed is in it through
 * SupplementaryGroups=). LISTEN_* stay for moe_daemon_listen_fds. */
void moe_daemon_regroup_activated(gid_t gid)
{
    if (gid == (gid_t)-1)
        return;
    int n = sd_listen_fds(0);
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        struct sockaddr_un a;
        socklen_t len = sizeof(a);
        struct stat st;
        memset(&a, 0, sizeof(a));
        if (getsockname(fd, (struct sockaddr *)&a, &len) < 0 || a.sun_family != AF_UNIX ||
            len <= offsetof(struct sockaddr_un, sun_path) || a.sun_path[0] != '/')
            continue; /* TCP, unnamed or abstract */
        a.sun_path[sizeof(a.sun_path) - 1] = '\0';
        if (stat(a.sun_path, &st) < 0 || !S_ISSOCK(st.st_mode) || st.st_gid == gid)
            continue;
        if (chown(a.sun_path, (uid_t)-1, gid) < 0)
            moe_log(MOE_LOG_WARN, "socket activation: cannot give %s to group %u: %s (add "
                    "SupplementaryGroups= for it)", a.sun_path, (unsigned)gid, strerror(errno));
        else
            moe_log(MOE_LOG_INFO, "socket activation: %s given back to group %u", a.sun_path,
                    (unsigned)gid);
    }
}
