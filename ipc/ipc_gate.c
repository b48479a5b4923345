/* The gate: accepts every connection itself and hands it to libmicrohttpd
 * only once its request head is complete and well-formed.
 *
 * At accept, before a byte is read: the peer (SO_PEERCRED uid on a Unix
 * socket, the address on TCP) must be allowed, and may hold at most
 * max_conns_per_peer connections; a refused peer holds none (403 or 503,
 * then closed). A new connection over a limit first evicts the oldest
 * connection of the same peer (or, at the gate's total, of anyone) that has
 * not yet sent a whole head, so silent or dripping connections cannot crowd
 * out a client that sends its request at once.
 *
 * While gated, a connection's bytes are only peeked (MSG_PEEK, edge-
 * triggered epoll: one look per arrival), so they stay in the socket for MHD;
 * the head must be complete within header_timeout of the accept, however
 * the bytes trickle in, and must pass moe_ipc_head_check (ipc_head.c), or the
 * client gets 408 / 400 / 431 / 501 / 505 and the connection is closed.
 *
 * Handed over, a connection keeps its record (struct ipc_conn) until MHD
 * closes it: the server sets a deadline for the body, for a reply the client
 * does not read, and for the next request on a kept-alive connection; the
 * gate's thread cuts (shutdown) a connection whose deadline passed, which
 * makes MHD end it and cancel its job. Refusals and cuts are logged at most
 * IPC_LOG_BURST lines per IPC_LOG_WINDOW_S, with a count of those left out. */
#define _GNU_SOURCE /* struct ucred, accept4 */
#include "ipc/ipc_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define GATE_TICK_MS 100       /* deadline checks */
#define GATE_MAX_GATED 1024    /* connections still sending their head, all peers */
#define GATE_ACCEPT_BURST 16   /* accepts per listener per turn: heads get read between */
#define GATE_HEAD_MAX (32u << 10)
#define GATE_SNDBUF (16 << 10) /* the kernel doubles it */
#define IPC_LOG_BURST 10
#define IPC_LOG_WINDOW_S 10.0

struct peer {
    char key[48]; /* "uid 1000" / "tcp 10.0.0.7" */
    int count;    /* gated + handed connections */
    int busy;     /* of those, with a request the server is working on */
};

/* what max_connections_per_peer counts: the connections whose pace the
 * client sets (sending a head or body, idle, reading a reply); those with a
 * request the server works on are bounded by the engine's queue instead */
static int paced(const struct peer *p)
{
    return p->count - p->busy;
}

struct ipc_gate {
    struct ipc_listener ls[MOE_IPC_MAX_LISTEN];
    size_t n_ls;
    ipc_gate_handoff_fn handoff;
    void *arg;
    int epfd, efd;
    pthread_t thread;
    bool running;
    atomic_bool stop, quiesce, quiesced; /* quiesced: the listeners are closed */

    pthread_mutex_t mu; /* everything below; MHD threads come in through it */
    struct moe_ipc_limits lim;
    struct ipc_conn *gated, *handed; /* lists, oldest first */
    struct ipc_conn *graveyard;      /* closed gated ones, freed after the batch */
    size_t n_gated, n_handed;
    size_t max_handed;
    struct peer *peers;
    size_t n_peers, cap_peers;
    char *buf; /* GATE_HEAD_MAX + 1: the peeked head */

    pthread_mutex_t log_mu;
    double log_window;
    int log_lines;
    unsigned long log_dropped;
};

/* ---- rate-limited log ---------------------------------------------------- */

void ipc_gate_log(struct ipc_gate *g, const char *fmt, ...)
{
    char line[400];
    va_list ap;
    double now = moe_now_s();
    unsigned long dropped = 0;
    pthread_mutex_lock(&g->log_mu);
    if (now - g->log_window >= IPC_LOG_WINDOW_S) {
        dropped = g->log_dropped;
        g->log_window = now;
        g->log_lines = 0;
        g->log_dropped = 0;
    }
    bool ok = g->log_lines < IPC_LOG_BURST;
    if (ok)
        g->log_lines++;
    else
        g->log_dropped++;
    pthread_mutex_unlock(&g->log_mu);
    if (dropped)
        moe_log(MOE_LOG_WARN, "ipc: %lu more refusals or cuts not logged in the last %.0f s",
                dropped, IPC_LOG_WINDOW_S);
    if (!ok)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    moe_log(MOE_LOG_WARN, "ipc: %s", line);
}

/* ---- peers --------------------------------------------------------------- */

static struct peer *peer_get(struct ipc_gate *g, const char *key, bool add)
{
    struct peer *free_slot = NULL;
    for (size_t i = 0; i < g->n_peers; i++) {
        if (strcmp(g->peers[i].key, key) == 0)
            return &g->peers[i];
        if (!free_slot && g->peers[i].count == 0)
            free_slot = &g->peers[i];
    }
    if (!add)
        return NULL;
    if (!free_slot) {
        if (g->n_peers == g->cap_peers) {
            size_t cap = g->cap_peers ? 2 * g->cap_peers : 64;
            struct peer *p = realloc(g->peers, cap * sizeof(*p));
            if (!p)
                return NULL;
            g->peers = p;
            g->cap_peers = cap;
        }
        free_slot = &g->peers[g->n_peers++];
    }
    snprintf(free_slot->key, sizeof(free_slot->key), "%s", key);
    free_slot->count = 0;
    free_slot->busy = 0;
    return free_slot;
}

static void peer_put(struct ipc_gate *g, const char *key)
{
    struct peer *p = peer_get(g, key, false);
    if (p && p->count > 0)
        p->count--;
}

/* ---- connection lists ---------------------------------------------------- */

static void list_add(struct ipc_conn **head, struct ipc_conn *c)
{
    c->next = NULL;
    c->prev = NULL;
    if (!*head) {
        *head = c;
        c->prev = c; /* prev of the head is the tail */
        return;
    }
    struct ipc_conn *tail = (*head)->prev;
    tail->next = c;
    c->prev = tail;
    (*head)->prev = c;
}

static void list_del(struct ipc_conn **head, struct ipc_conn *c)
{
    if (c == *head) {
        *head = c->next;
        if (*head)
            (*head)->prev = c->prev;
    } else {
        c->prev->next = c->next;
        if (c->next)
            c->next->prev = c->prev;
        else
            (*head)->prev = c->prev;
    }
    c->next = c->prev = NULL;
}

/* ---- replies the gate writes itself -------------------------------------- */

/* Best effort, never blocks: the answer fits in any socket buffer. */
static void refuse(int fd, const struct moe_ipc_error *e, const char *retry_after)
{
    size_t n = 0;
    char *body = moe_ipc_error_json(e, &n);
    char head[256];
    int hn = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: "
                      "%zu\r\nConnection: close\r\n%s%s%s\r\n",
                      e->status, MHD_get_reason_phrase_for((unsigned)e->status), body ? n : 0,
                      retry_after ? "Retry-After: " : "", retry_after ? retry_after : "",
                      retry_after ? "\r\n" : "");
    if (send(fd, head, (size_t)hn, MSG_DONTWAIT | MSG_NOSIGNAL) == hn && body)
        (void)!send(fd, body, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    free(body);
    shutdown(fd, SHUT_WR);
    /* what the client already sent is read away: closing a socket with
     * unread bytes resets it, and the client would lose the answer */
    char sink[4096];
    for (size_t got = 0; got < (1u << 20);) {
        ssize_t k = recv(fd, sink, sizeof(sink), MSG_DONTWAIT);
        if (k <= 0)
            break;
        got += (size_t)k;
    }
}

/* Closed now, freed after the current epoll batch: an event for it may
 * still wait in that batch (evicted by an accept in the same turn). */
static void conn_free_gated(struct ipc_gate *g, struct ipc_conn *c)
{
    epoll_ctl(g->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    list_del(&g->gated, c);
    g->n_gated--;
    peer_put(g, c->peer);
    c->dead = true;
    c->next = g->graveyard;
    g->graveyard = c;
}

static void bury(struct ipc_gate *g)
{
    pthread_mutex_lock(&g->mu);
    while (g->graveyard) {
        struct ipc_conn *c = g->graveyard;
        g->graveyard = c->next;
        free(c);
    }
    pthread_mutex_unlock(&g->mu);
}

/* the oldest gated connection, of this peer when peer != NULL */
static struct ipc_conn *oldest_gated(struct ipc_gate *g, const char *peer)
{
    for (struct ipc_conn *c = g->gated; c; c = c->next)
        if (!peer || strcmp(c->peer, peer) == 0)
            return c;
    return NULL;
}

static void evict(struct ipc_gate *g, struct ipc_conn *c, const char *why)
{
    ipc_gate_log(g, "closing a connection from %s that sent no request in %.1f s (%s)",
                 c->peer, moe_now_s() - c->t_accept, why);
    conn_free_gated(g, c);
}

/* ---- peers' identity and the allow lists --------------------------------- */

bool ipc_peer_allowed(const struct moe_ipc_limits *lim, int fd, struct ucred *cr)
{
    socklen_t n = sizeof(*cr);
    memset(cr, 0, sizeof(*cr));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, cr, &n) < 0)
        return lim->n_allow_uids == 0 && lim->n_allow_gids == 0;
    if (lim->n_allow_uids == 0 && lim->n_allow_gids == 0)
        return true;
    /* the server's own user: ExecReload's moectl runs as it */
    if (cr->uid == geteuid())
        return true;
    for (size_t i = 0; i < lim->n_allow_uids && i < MOE_IPC_MAX_IDS; i++)
        if (lim->allow_uids[i] == cr->uid)
            return true;
    for (size_t i = 0; i < lim->n_allow_gids && i < MOE_IPC_MAX_IDS; i++)
        if (lim->allow_gids[i] == cr->gid)
            return true;
#ifdef SO_PEERGROUPS
    /* supplementary groups too: "allow group moed" should mean its members */
    if (lim->n_allow_gids) {
        gid_t groups[256];
        n = sizeof(groups);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &n) == 0)
            for (size_t k = 0; k < n / sizeof(gid_t); k++)
                for (size_t i = 0; i < lim->n_allow_gids && i < MOE_IPC_MAX_IDS; i++)
                    if (lim->allow_gids[i] == groups[k])
                        return true;
    }
#endif
    return false;
}

static void peer_key(const struct sockaddr_storage *ss, const struct ucred *cr, bool tcp,
                     char *key, size_t cap)
{
    char addr[INET6_ADDRSTRLEN] = "?";
    if (!tcp) {
        snprintf(key, cap, "uid %u", (unsigned)cr->uid);
        return;
    }
    if (ss->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, addr, sizeof(addr));
    else if (ss->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, addr, sizeof(addr));
    snprintf(key, cap, "tcp %s", addr);
}

/* ---- accepting ----------------------------------------------------------- */

static void accept_one(struct ipc_gate *g, const struct ipc_listener *l, int fd,
                       const struct sockaddr_storage *ss, socklen_t sslen)
{
    struct moe_ipc_error e;
    struct ucred cr = {0};
    char key[48];

    pthread_mutex_lock(&g->mu);
    struct moe_ipc_limits lim = g->lim;
    pthread_mutex_unlock(&g->mu);

    if (!l->tcp && !ipc_peer_allowed(&lim, fd, &cr)) {
        ipc_gate_log(g, "refused peer pid %d uid %u gid %u on %s: not in allow_uids / "
                        "allow_gids", (int)cr.pid, (unsigned)cr.uid, (unsigned)cr.gid, l->name);
        moe_ipc_error_set(&e, 403, "permission_error", "forbidden", NULL,
                          "uid %u / gid %u may not use this server", (unsigned)cr.uid,
                          (unsigned)cr.gid);
        refuse(fd, &e, NULL);
        close(fd);
        return;
    }
    if (l->tcp) {
        int one = 1; /* SSE chunks go out as they come */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    /* What the kernel holds for a client that does not read is bounded (a
     * few seconds of any token stream), so write_timeout soon sees it stall */
    int sndbuf = GATE_SNDBUF;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    peer_key(ss, &cr, l->tcp, key, sizeof(key));

    pthread_mutex_lock(&g->mu);
    struct peer *p = peer_get(g, key, true);
    if (p && lim.max_conns_per_peer && (uint32_t)paced(p) >= lim.max_conns_per_peer) {
        struct ipc_conn *old = oldest_gated(g, key);
        if (old)
            evict(g, old, "its peer is at max_connections_per_peer");
    }
    if (!p || (lim.max_conns_per_peer && (uint32_t)paced(p) >= lim.max_conns_per_peer)) {
        int held = p ? paced(p) : 0;
        pthread_mutex_unlock(&g->mu);
        ipc_gate_log(g, "refused a connection from %s on %s: it holds %d (max_connections_per_"
                        "peer = %u)", key, l->name, held, (unsigned)lim.max_conns_per_peer);
        moe_ipc_error_set(&e, 503, "service_unavailable", "too_many_connections", NULL,
                          "%s holds %d idle or unfinished connections, the most this server "
                          "allows one peer", key, held);
        refuse(fd, &e, "1");
        close(fd);
        return;
    }
    if (g->n_gated >= GATE_MAX_GATED)
        evict(g, g->gated, "too many connections sent no request yet");
    struct ipc_conn *c = calloc(1, sizeof(*c));
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET};
    if (!c) {
        pthread_mutex_unlock(&g->mu);
        close(fd);
        return;
    }
    c->fd = fd;
    c->tcp = l->tcp;
    c->t_accept = moe_now_s();
    memcpy(&c->addr, ss, sslen);
    c->addrlen = sslen;
    snprintf(c->peer, sizeof(c->peer), "%s", key);
    ev.data.ptr = c;
    if (epoll_ctl(g->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        pthread_mutex_unlock(&g->mu);
        close(fd);
        free(c);
        return;
    }
    p->count++;
    list_add(&g->gated, c);
    g->n_gated++;
    pthread_mutex_unlock(&g->mu);
}

static void accept_burst(struct ipc_gate *g, const struct ipc_listener *l)
{
    for (int k = 0; k < GATE_ACCEPT_BURST; k++) {
        struct sockaddr_storage ss;
        socklen_t n = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &n, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE) {
                /* out of descriptors: make room from the connections sending nothing */
                pthread_mutex_lock(&g->mu);
                if (g->gated)
                    evict(g, g->gated, "out of file descriptors");
                pthread_mutex_unlock(&g->mu);
                if (!g->gated)
                    ipc_gate_log(g, "accept on %s: %s", l->name, strerror(errno));
            }
            return; /* EAGAIN: none left; the rest: retried next turn */
        }
        accept_one(g, l, fd, &ss, n);
    }
}

/* ---- gated connections: their heads ------------------------------------- */

/* New bytes on a gated connection: is the head complete now? */
static void look(struct ipc_gate *g, struct ipc_conn *c, uint32_t events)
{
    struct moe_ipc_error e;
    size_t head = 0;
    if (c->dead || c->handed)
        return;
    ssize_t n = recv(c->fd, g->buf, GATE_HEAD_MAX + 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    pthread_mutex_lock(&g->mu);
    if (n <= 0) { /* gone before asking anything */
        conn_free_gated(g, c);
        pthread_mutex_unlock(&g->mu);
        return;
    }
    int rc = moe_ipc_head_check(g->buf, (size_t)n, GATE_HEAD_MAX, &head, &e);
    if (rc == -EAGAIN) {
        if (events & (EPOLLRDHUP | EPOLLHUP)) /* the head can never complete */
            conn_free_gated(g, c);
        pthread_mutex_unlock(&g->mu);
        return;
    }
    if (rc) {
        pthread_mutex_unlock(&g->mu);
        ipc_gate_log(g, "%d to %s: %s", e.status, c->peer, e.message);
        refuse(c->fd, &e, NULL);
        pthread_mutex_lock(&g->mu);
        conn_free_gated(g, c);
        pthread_mutex_unlock(&g->mu);
        return;
    }
    if (g->n_handed >= g->max_handed || atomic_load(&g->stop)) {
        pthread_mutex_unlock(&g->mu);
        moe_ipc_error_set(&e, 503, "service_unavailable", "too_many_connections", NULL,
                          "the server has %zu connections open, its most", g->max_handed);
        ipc_gate_log(g, "503 to %s: %s", c->peer, e.message);
        refuse(c->fd, &e, "1");
        pthread_mutex_lock(&g->mu);
        conn_free_gated(g, c);
        pthread_mutex_unlock(&g->mu);
        return;
    }
    /* hand it over: MHD reads the head we only peeked at */
    epoll_ctl(g->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    list_del(&g->gated, c);
    g->n_gated--;
    list_add(&g->handed, c);
    g->n_handed++;
    c->handed = true;
    atomic_store(&c->deadline, 0.0);
    pthread_mutex_unlock(&g->mu);
    if (!g->handoff(g->arg, c)) {
        /* MHD closed the socket; it may or may not have said so (closed) */
        pthread_mutex_lock(&g->mu);
        if (!c->started) {
            list_del(&g->handed, c);
            g->n_handed--;
            peer_put(g, c->peer);
            free(c);
        }
        pthread_mutex_unlock(&g->mu);
    }
}

/* ---- deadlines ----------------------------------------------------------- */

static void reap(struct ipc_gate *g)
{
    double now = moe_now_s();
    pthread_mutex_lock(&g->mu);
    double header_to = g->lim.header_timeout_s > 0 ? g->lim.header_timeout_s : 10;
    for (struct ipc_conn *c = g->gated, *next; c; c = next) {
        next = c->next;
        if (now - c->t_accept < header_to)
            break; /* oldest first */
        struct moe_ipc_error e;
        moe_ipc_error_set(&e, 408, "invalid_request_error", "request_timeout", NULL,
                          "the request head did not arrive within %g s (header_timeout)",
                          header_to);
        ipc_gate_log(g, "408 to %s: no complete request head in %.1f s", c->peer,
                     now - c->t_accept);
        refuse(c->fd, &e, NULL);
        conn_free_gated(g, c);
    }
    for (struct ipc_conn *c = g->handed, *next; c; c = next) {
        next = c->next;
        if (c->closed) { /* MHD is done with it */
            list_del(&g->handed, c);
            g->n_handed--;
            free(c);
            continue;
        }
        double d = atomic_load(&c->deadline);
        if (d > 0 && now > d && !c->cut) {
            c->cut = true;
            ipc_gate_log(g, "cutting a connection from %s: %s", c->peer,
                         c->why ? c->why : "deadline passed");
            shutdown(c->fd, SHUT_RDWR); /* MHD's thread sees it and ends the connection */
        }
    }
    pthread_mutex_unlock(&g->mu);
}

/* ---- the thread ---------------------------------------------------------- */

static void *gate_main(void *arg)
{
    struct ipc_gate *g = arg;
    struct epoll_event evs[64];
    double next_reap = 0;
    while (!atomic_load(&g->stop)) {
        int n = epoll_wait(g->epfd, evs, 64, GATE_TICK_MS);
        for (int i = 0; i < n; i++) {
            void *p = evs[i].data.ptr;
            if (p == (void *)&g->efd) { /* eventfd: stop or quiesce */
                uint64_t v;
                (void)!read(g->efd, &v, sizeof(v));
                continue;
            }
            if (p >= (void *)g->ls && p < (void *)(g->ls + g->n_ls)) {
                if (!atomic_load(&g->quiesce))
                    accept_burst(g, p);
                continue;
            }
            look(g, p, evs[i].events);
        }
        bury(g);
        if (atomic_load(&g->quiesce) && !atomic_load(&g->quiesced)) {
            for (size_t i = 0; i < g->n_ls; i++)
                if (g->ls[i].fd >= 0) {
                    epoll_ctl(g->epfd, EPOLL_CTL_DEL, g->ls[i].fd, NULL);
                    ipc_listener_close(&g->ls[i]);
                }
            atomic_store(&g->quiesced, true);
        }
        double now = moe_now_s();
        if (now >= next_reap) {
            next_reap = now + GATE_TICK_MS / 1e3;
            reap(g);
        }
    }
    return NULL;
}

/* ---- API ----------------------------------------------------------------- */

int ipc_gate_start(struct ipc_gate **out, struct ipc_listener *ls, size_t n_ls,
                   size_t max_handed, const struct moe_ipc_limits *lim,
                   ipc_gate_handoff_fn handoff, void *arg)
{
    struct ipc_gate *g = calloc(1, sizeof(*g));
    int rc;
    *out = NULL;
    if (!g || !(g->buf = malloc(GATE_HEAD_MAX + 1))) {
        free(g);
        return moe_err(-ENOMEM, "ipc: out of memory");
    }
    pthread_mutex_init(&g->mu, NULL);
    pthread_mutex_init(&g->log_mu, NULL);
    g->handoff = handoff;
    g->arg = arg;
    g->lim = *lim;
    g->max_handed = max_handed;
    g->n_ls = n_ls;
    memcpy(g->ls, ls, n_ls * sizeof(*ls));
    g->epfd = epoll_create1(EPOLL_CLOEXEC);
    g->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (g->epfd < 0 || g->efd < 0) {
        rc = moe_err(-errno, "ipc: epoll / eventfd: %s", strerror(errno));
        goto fail;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &g->efd};
    epoll_ctl(g->epfd, EPOLL_CTL_ADD, g->efd, &ev);
    for (size_t i = 0; i < n_ls; i++) {
        ev = (struct epoll_event){.events = EPOLLIN, .data.ptr = &g->ls[i]};
        if (epoll_ctl(g->epfd, EPOLL_CTL_ADD, g->ls[i].fd, &ev) < 0) {
            rc = moe_err(-errno, "ipc: epoll %s: %s", g->ls[i].name, strerror(errno));
            goto fail;
        }
    }
    /* Many connections at once is what the gate is for: let it hold them.
     * (Under systemd, LimitNOFILE= already raised the soft limit.) */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (pthread_create(&g->thread, NULL, gate_main, g)) {
        rc = moe_err(-EAGAIN, "ipc: cannot start the accepting thread");
        goto fail;
    }
    g->running = true;
    *out = g;
    return 0;
fail:
    if (g->epfd >= 0)
        close(g->epfd);
    if (g->efd >= 0)
        close(g->efd);
    free(g->buf);
    free(g);
    return rc;
}

void ipc_gate_set_limits(struct ipc_gate *g, const struct moe_ipc_limits *lim)
{
    pthread_mutex_lock(&g->mu);
    g->lim = *lim;
    pthread_mutex_unlock(&g->mu);
}

void ipc_gate_quiesce(struct ipc_gate *g)
{
    uint64_t one = 1;
    atomic_store(&g->quiesce, true);
    (void)!write(g->efd, &one, sizeof(one));
    /* the thread closes the listeners; wait for it (a second at most) so
     * the socket files are gone when this returns */
    for (int i = 0; i < 200 && !atomic_load(&g->quiesced); i++)
        usleep(5000);
}

void ipc_gate_stop(struct ipc_gate *g)
{
    uint64_t one = 1;
    if (!g)
        return;
    atomic_store(&g->stop, true);
    (void)!write(g->efd, &one, sizeof(one));
    if (g->running)
        pthread_join(g->thread, NULL);
    pthread_mutex_lock(&g->mu);
    while (g->gated)
        conn_free_gated(g, g->gated);
    pthread_mutex_unlock(&g->mu);
    bury(g);
    for (size_t i = 0; i < g->n_ls; i++)
        ipc_listener_close(&g->ls[i]);
}

/* After MHD stopped: every handed record is closed now. */
void ipc_gate_free(struct ipc_gate *g)
{
    if (!g)
        return;
    while (g->handed) {
        struct ipc_conn *c = g->handed;
        list_del(&g->handed, c);
        free(c);
    }
    close(g->epfd);
    close(g->efd);
    free(g->peers);
    free(g->buf);
    pthread_mutex_destroy(&g->mu);
    pthread_mutex_destroy(&g->log_mu);
    free(g);
}

/* MHD's NOTIFY_CONNECTION: the record of the connection MHD just took (by
 * its fd; the gate's thread is the one adding, so no other record has it). */
struct ipc_conn *ipc_gate_started(struct ipc_gate *g, int fd)
{
    struct ipc_conn *found = NULL;
    pthread_mutex_lock(&g->mu);
    for (struct ipc_conn *c = g->handed; c; c = c->next)
        if (c->fd == fd && !c->started && !c->closed) {
            c->started = true;
            found = c;
            break;
        }
    pthread_mutex_unlock(&g->mu);
    return found;
}

void ipc_gate_closed(struct ipc_gate *g, struct ipc_conn *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&g->mu);
    if (!c->closed) {
        c->closed = true; /* the gate's thread frees it */
        if (c->busy) {
            struct peer *p = peer_get(g, c->peer, false);
            if (p && p->busy > 0)
                p->busy--;
            c->busy = false;
        }
        peer_put(g, c->peer);
    }
    pthread_mutex_unlock(&g->mu);
}

void ipc_gate_busy(struct ipc_gate *g, struct ipc_conn *c, bool busy)
{
    if (!c)
        return;
    pthread_mutex_lock(&g->mu);
    if (!c->closed && c->busy != busy) {
        struct peer *p = peer_get(g, c->peer, false);
        if (p)
            p->busy += busy ? 1 : -1;
        c->busy = busy;
    }
    pthread_mutex_unlock(&g->mu);
}

void ipc_conn_deadline(struct ipc_conn *c, double seconds, const char *why)
{
    if (!c)
        return;
    c->why = why;
    atomic_store(&c->deadline, seconds > 0 ? moe_now_s() + seconds : 0.0);
}

void ipc_gate_counts(struct ipc_gate *g, size_t *gated, size_t *handed)
{
    pthread_mutex_lock(&g->mu);
    *gated = g->n_gated;
    *handed = g->n_handed;
    pthread_mutex_unlock(&g->mu);
}
