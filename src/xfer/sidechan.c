/* sidechan.c - the authenticated TCP side channel of the fabric and verbs
 * backends and the peers their links make (see sidechan.h):
 * deadline-bounded socket I/O, the cell-key HELLO/PROOF exchange, dialing
 * and accepting links, attaching them to peers, failing peers, and reading
 * an up link's side channel.
 *
 * The handshake is byte for byte the one these backends always spoke, so
 * engines built before this module was split out still interoperate:
 *
 *   client (role 1)                          server (role 2)
 *     HELLO(link i of n, n_socks 1) ------------>
 *     <------------------------------------------ HELLO(echoes link, n_links)
 *     PROOF(0, mac_1) -------------------------->  wrong: PROOF(1), log, close
 *     <------------------------------------------ PROOF(0, mac_2)
 *
 * The server proves the key only after the client did, so a dialer without
 * the key learns nothing it could replay. */
#include "xfer/sidechan.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/log.h"
#include "base/status.h"
#include "base/time.h"
#include "xfer/backend.h"
#include "xfer/sock.h"

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* systems without it get SO_NOSIGPIPE on the socket instead */
#endif

static int io_full(int fd, uint8_t *p, size_t n, int writing, uint64_t deadline) {
    size_t done = 0;
    while (done < n) {
        ssize_t r = writing ? send(fd, p + done, n - done, MSG_DONTWAIT | MSG_NOSIGNAL)
                            : recv(fd, p + done, n - done, MSG_DONTWAIT);
        if (r > 0) {
            done += (size_t)r;
            continue;
        }
        if (r == 0) return cm_errorf(CM_ECONN, "connection closed by the peer during setup");
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return cm_errorf(CM_ECONN, "%s", strerror(errno));
        uint64_t now = cm_now_ns();
        if (now >= deadline) return cm_errorf(CM_ETIMEDOUT, "connection setup timed out");
        struct pollfd pf = {fd, writing ? POLLOUT : POLLIN, 0};
        poll(&pf, 1, (int)((deadline - now) / 1000000ull) + 1);
    }
    return CM_OK;
}

int cm_sidechan_send(int fd, const void *p, size_t n, uint64_t deadline) {
    return io_full(fd, (uint8_t *)(uintptr_t)p, n, 1, deadline); /* the writing path only reads p */
}

int cm_sidechan_recv(int fd, void *p, size_t n, uint64_t deadline) { return io_full(fd, p, n, 0, deadline); }

int cm_sidechan_swap(int fd, const void *mine, void *theirs, size_t n, uint64_t deadline) {
    int rc = cm_sidechan_send(fd, mine, n, deadline);
    return rc ? rc : cm_sidechan_recv(fd, theirs, n, deadline);
}

/* Role 1: our hello first, then the proofs, ours first. */
static int auth_client(const cm_sidechan *sc, int fd, const cm_wire_hello *me, uint64_t deadline, const char *addr,
                       cm_wire_hello *remote) {
    uint8_t mine[CM_WIRE_HELLO_BYTES], theirs[CM_WIRE_HELLO_BYTES], proof[CM_WIRE_PROOF_BYTES];
    uint8_t mac[CM_WIRE_MAC_BYTES];
    int rc, verdict;
    cm_wire_hello_encode(me, mine);
    if ((rc = cm_sidechan_swap(fd, mine, theirs, sizeof mine, deadline))) return rc;
    if ((rc = cm_wire_hello_decode(theirs, remote))) return rc;
    if (remote->role != 2 || remote->link != me->link)
        return cm_errorf(CM_EFORMAT, "%s: unexpected hello from the peer", addr);
    cm_wire_auth_mac(sc->key, 1, mine, theirs, mac);
    cm_wire_proof_encode(0, mac, proof);
    if ((rc = cm_sidechan_send(fd, proof, sizeof proof, deadline))) return rc;
    /* a server that refuses us may close without a verdict */
    if ((rc = cm_sidechan_recv(fd, proof, sizeof proof, deadline)))
        return rc == CM_ECONN ? cm_errorf(CM_EAUTH, "%s closed the connection during authentication", addr) : rc;
    if ((rc = cm_wire_proof_decode(proof, &verdict, mac))) return rc;
    if (verdict) return cm_errorf(CM_EAUTH, "%s refused our cell key (does it use the same --key-file?)", addr);
    if (cm_wire_auth_verify(sc->key, 2, mine, theirs, mac)) return cm_errorf(CM_EAUTH, "%s does not hold our cell key", addr);
    return CM_OK;
}

/* Role 2: the client's hello first; we prove only after it did. */
static int auth_server(const cm_sidechan *sc, int fd, cm_wire_hello *me, uint64_t deadline, const char *addr,
                       cm_wire_hello *remote) {
    uint8_t mine[CM_WIRE_HELLO_BYTES], theirs[CM_WIRE_HELLO_BYTES], proof[CM_WIRE_PROOF_BYTES];
    uint8_t mac[CM_WIRE_MAC_BYTES];
    int rc, verdict;
    if ((rc = cm_sidechan_recv(fd, theirs, sizeof theirs, deadline))) return rc;
    if ((rc = cm_wire_hello_decode(theirs, remote))) return rc;
    if (remote->role != 1 || remote->n_socks != 1)
        return cm_errorf(CM_EFORMAT, "%s: not a %s client hello", addr, sc->backend);
    me->link = remote->link;
    me->n_links = remote->n_links;
    cm_wire_hello_encode(me, mine);
    if ((rc = cm_sidechan_send(fd, mine, sizeof mine, deadline))) return rc;
    if ((rc = cm_sidechan_recv(fd, proof, sizeof proof, deadline))) return rc;
    if ((rc = cm_wire_proof_decode(proof, &verdict, mac)) || verdict)
        return rc ? rc : cm_errorf(CM_EFORMAT, "%s: bad proof", addr);
    if (cm_wire_auth_verify(sc->key, 1, theirs, mine, mac)) {
        cm_wire_proof_encode(1, NULL, proof);
        cm_sidechan_send(fd, proof, sizeof proof, deadline); /* best effort: we close either way */
        CM_LOGW("xfer: %s connection from %s (%s) refused: it does not hold our cell key", sc->backend, addr,
                remote->name);
        return cm_errorf(CM_EAUTH, "%s does not hold our cell key", addr);
    }
    cm_wire_auth_mac(sc->key, 2, theirs, mine, mac);
    cm_wire_proof_encode(0, mac, proof);
    return cm_sidechan_send(fd, proof, sizeof proof, deadline);
}

int cm_sidechan_auth(const cm_sidechan *sc, int fd, int role, int link, int n_links, uint64_t deadline,
                     const char *addr, cm_wire_hello *remote) {
    cm_wire_hello me = {.role = role, .link = link, .sock = 0, .n_links = n_links, .n_socks = 1,
                        .instance = sc->instance};
    randombytes_buf(me.nonce, sizeof me.nonce);
    snprintf(me.name, sizeof me.name, "%s", sc->name);
    return role == 1 ? auth_client(sc, fd, &me, deadline, addr, remote)
                     : auth_server(sc, fd, &me, deadline, addr, remote);
}

int cm_sidechan_dial(const cm_sidechan *sc, const char *addr, int link, int n_links, uint64_t deadline, int *fd_out,
                     cm_wire_hello *remote) {
    int fd = -1;
    int rc = cm_sock_connect(addr, deadline, &fd);
    if (rc) return rc;
    if ((rc = cm_sidechan_auth(sc, fd, 1, link, n_links, deadline, addr, remote))) {
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return CM_OK;
}

/* Adds a set-up link to peer pid as link r->link of r->n_links; reports the
 * peer up when it has all its links. A dialed link is never refused (the
 * numbering is ours); an accepted one must fit what the peer announced.
 * On failure the link is still the caller's. Under *mu. */
static int attach(cm_sidechan *sc, int pid, cm_sidechan_link *l, const cm_wire_hello *r, int dialed) {
    cm_sidechan_peer *p = &sc->peers[pid];
    if (p->active && p->instance != r->instance) cm_sidechan_peer_fail(sc, pid, CM_EPEER, "peer restarted");
    if (!p->active) {
        memset(p->links, 0, sizeof p->links);
        p->active = 1;
        p->up = 0;
        p->n_links = r->n_links;
        p->n_ready = 0;
        p->instance = r->instance;
        snprintf(p->name, sizeof p->name, "%s", r->name);
    }
    if (!dialed && (r->link < 0 || r->link >= p->n_links || p->links[r->link] || p->n_links != r->n_links))
        return cm_errorf(CM_EFORMAT, "link does not fit the peer's announced links");
    l->peer = pid;
    l->index = r->link;
    l->state = CM_SIDECHAN_READY;
    l->last_rx_ns = l->last_tx_ns = cm_now_ns();
    p->links[r->link] = l;
    if (++p->n_ready == p->n_links) {
        p->up = 1;
        cm_xfer_core_peer_up(sc->x, pid, p->name, p->instance);
    }
    sc->wake(sc->owner);
    return CM_OK;
}

int cm_sidechan_connect(cm_sidechan *sc, int pid, const char *const *addrs, int n_addrs, int timeout_ms) {
    uint64_t deadline = cm_now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 10000) * 1000000ull;
    cm_sidechan_link *links[CM_XFER_MAX_LINKS] = {0};
    cm_wire_hello r[CM_XFER_MAX_LINKS];
    int rc = n_addrs >= 1 && n_addrs <= CM_XFER_MAX_LINKS
                 ? CM_OK
                 : cm_errorf(CM_EINVAL, "xfer: %d addresses for one peer (1..%d)", n_addrs, CM_XFER_MAX_LINKS);
    for (int i = 0; i < n_addrs && !rc; i++) {
        int fd = -1;
        rc = cm_sidechan_dial(sc, addrs[i], i, n_addrs, deadline, &fd, &r[i]);
        if (!rc) rc = sc->link_setup(sc->owner, fd, addrs[i], deadline, &links[i]);
        if (!rc && i > 0 && r[i].instance != r[0].instance)
            rc = cm_errorf(CM_EINVAL, "%s reaches another engine (%s) than %s", addrs[i], r[i].name, addrs[0]);
    }
    if (rc) {
        for (int i = 0; i < n_addrs && i < CM_XFER_MAX_LINKS; i++)
            if (links[i]) sc->link_free(links[i]);
        return rc;
    }
    pthread_mutex_lock(sc->mu);
    cm_sidechan_peer_fail(sc, pid, CM_EPEER, "replaced by a new connection");
    for (int i = 0; i < n_addrs; i++) {
        /* the link numbering is the dialer's: our own order of addresses */
        r[i].link = i;
        r[i].n_links = n_addrs;
        attach(sc, pid, links[i], &r[i], 1);
    }
    pthread_mutex_unlock(sc->mu);
    return CM_OK;
}

static void accept_one(cm_sidechan *sc, int wait_ms) {
    struct pollfd pf = {sc->listen_fd, POLLIN, 0};
    if (poll(&pf, 1, wait_ms) <= 0) return;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int fd = accept(sc->listen_fd, (struct sockaddr *)&ss, &sl);
    if (fd < 0) return;
    char addr[64];
    cm_sock_addr_string((struct sockaddr *)&ss, addr, sizeof addr);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    cm_sock_set_nonblock(fd);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    uint64_t deadline = cm_now_ns() + (uint64_t)sc->peer_timeout_ms * 1000000ull;
    cm_wire_hello r;
    int rc = cm_sidechan_auth(sc, fd, 2, 0, 0, deadline, addr, &r);
    if (rc) {
        /* a wrong key was logged where it was found */
        if (rc != CM_EAUTH) CM_LOGW("xfer: %s connection from %s dropped: %s", sc->backend, addr, cm_last_error(rc));
        close(fd);
        return;
    }
    cm_sidechan_link *link = NULL;
    rc = sc->link_setup(sc->owner, fd, addr, deadline, &link);
    int pid = -1;
    if (!rc) rc = cm_xfer_core_peer_lookup(sc->x, r.name, r.instance, &pid);
    if (!rc && (pid < 0 || pid >= CM_SIDECHAN_MAX_PEERS)) rc = cm_errorf(CM_EINVAL, "xfer: peer id %d out of range", pid);
    if (!rc) {
        pthread_mutex_lock(sc->mu);
        rc = attach(sc, pid, link, &r, 0);
        pthread_mutex_unlock(sc->mu);
    }
    if (rc) {
        CM_LOGW("xfer: %s connection from %s dropped: %s", sc->backend, addr, cm_last_error(rc));
        if (link) sc->link_free(link);
    }
}

static void *accept_main(void *arg) {
    cm_sidechan *sc = arg;
    while (!sc->stop) accept_one(sc, 50);
    return NULL;
}

int cm_sidechan_listen(cm_sidechan *sc, const char *spec) {
    int rc = cm_sock_listen(spec, 64, sc->listen_addr, sizeof sc->listen_addr, &sc->listen_fd);
    if (!rc) sc->listening = 1;
    return rc;
}

int cm_sidechan_listen_addr(const cm_sidechan *sc, char *buf, size_t cap) {
    if (!sc->listening) return cm_errorf(CM_ENOTFOUND, "xfer: no listener");
    snprintf(buf, cap, "%s", sc->listen_addr);
    return CM_OK;
}

int cm_sidechan_accept_start(cm_sidechan *sc) {
    if (!sc->listening) return CM_OK;
    sc->stop = 0;
    if (pthread_create(&sc->accept_thread, NULL, accept_main, sc))
        return cm_errorf(CM_EIO, "xfer: cannot start the %s accept thread", sc->backend);
    sc->accept_started = 1;
    return CM_OK;
}

int cm_sidechan_start(cm_sidechan *sc, const char *listen, pthread_t *thread, int *started,
                      void *(*thread_main)(void *), void *arg) {
    int rc;
    if (listen && (rc = cm_sidechan_listen(sc, listen))) return rc;
    if (pthread_create(thread, NULL, thread_main, arg))
        return cm_errorf(CM_EIO, "xfer: cannot start the %s progress thread", sc->backend);
    *started = 1;
    return cm_sidechan_accept_start(sc);
}

void cm_sidechan_stop(cm_sidechan *sc) {
    if (sc->accept_started) {
        sc->stop = 1;
        pthread_join(sc->accept_thread, NULL);
        sc->accept_started = 0;
    }
    if (sc->listening) close(sc->listen_fd);
    sc->listening = 0;
}

void cm_sidechan_peer_fail(cm_sidechan *sc, int pid, int status, const char *why) {
    cm_sidechan_peer *p = &sc->peers[pid];
    if (!p->active) return;
    p->active = 0;
    int was_up = p->up;
    p->up = 0;
    /* The core hears first: whoever sees a failed completion while the
     * links are killed below finds the peer already down. */
    if (was_up)
        cm_xfer_core_peer_down(sc->x, pid, status, why);
    else if (why)
        CM_LOGW("xfer: %s peer %d (%s) failed while connecting: %s", sc->backend, pid, p->name, why);
    for (int i = 0; i < CM_XFER_MAX_LINKS; i++) {
        cm_sidechan_link *l = p->links[i];
        p->links[i] = NULL;
        if (l) sc->link_kill(sc->owner, l, status);
    }
    p->n_ready = 0;
}

void cm_sidechan_link_fail(cm_sidechan *sc, cm_sidechan_link *l, int status, const char *why) {
    if (l->state == CM_SIDECHAN_DEAD) return;
    if (l->peer >= 0 && sc->peers[l->peer].active) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s: %s", l->addr, why);
        cm_sidechan_peer_fail(sc, l->peer, status, msg);
    } else {
        sc->link_kill(sc->owner, l, status);
    }
}

int cm_sidechan_pick(cm_sidechan *sc, int pid, int which, cm_sidechan_link **out) {
    if (pid < 0 || pid >= CM_SIDECHAN_MAX_PEERS || !sc->peers[pid].up)
        return cm_errorf(CM_EPEER, "xfer: peer %d is down", pid);
    cm_sidechan_peer *p = &sc->peers[pid];
    cm_sidechan_link *l = which >= 0 ? p->links[which] : p->links[p->next_link++ % (unsigned)p->n_links];
    if (!l || l->state != CM_SIDECHAN_READY) return cm_errorf(CM_EPEER, "xfer: peer %d is down", pid);
    *out = l;
    return CM_OK;
}

/* Best effort: the peer is dropped whether or not the goodbye gets out. */
static void say_bye(cm_sidechan *sc, const cm_sidechan_peer *p) {
    for (int k = 0; p->active && k < CM_XFER_MAX_LINKS; k++)
        if (p->links[k] && p->links[k]->state == CM_SIDECHAN_READY) {
            size_t sent;
            cm_sidechan_post(p->links[k]->fd, sc->bye, sc->bye_bytes, &sent);
        }
}

void cm_sidechan_disconnect(cm_sidechan *sc, int pid, int status) {
    pthread_mutex_lock(sc->mu);
    say_bye(sc, &sc->peers[pid]);
    cm_sidechan_peer_fail(sc, pid, status, status == CM_ECLOSED ? "disconnected" : "dropped");
    pthread_mutex_unlock(sc->mu);
}

void cm_sidechan_close_peers(cm_sidechan *sc) {
    for (int i = 0; i < CM_SIDECHAN_MAX_PEERS; i++) {
        say_bye(sc, &sc->peers[i]);
        cm_sidechan_peer_fail(sc, i, CM_ECLOSED, NULL);
    }
}

int cm_sidechan_peer_links(cm_sidechan *sc, int pid, cm_xfer_link_stats *out, int max, int *n) {
    pthread_mutex_lock(sc->mu);
    const cm_sidechan_peer *p = &sc->peers[pid];
    *n = p->active ? p->n_links : 0;
    for (int i = 0; i < *n && i < max; i++) {
        memset(&out[i], 0, sizeof out[i]);
        const cm_sidechan_link *l = p->links[i];
        if (!l) continue;
        snprintf(out[i].addr, sizeof out[i].addr, "%s", l->addr);
        out[i].bytes_sent = l->bytes_sent;
        out[i].bytes_received = l->bytes_received;
    }
    pthread_mutex_unlock(sc->mu);
    return CM_OK;
}

int cm_sidechan_read(int fd, uint8_t *buf, size_t cap, size_t *n) {
    *n = 0;
    for (;;) {
        ssize_t r = recv(fd, buf, cap, MSG_DONTWAIT);
        if (r > 0) {
            *n = (size_t)r;
            return CM_OK;
        }
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return CM_OK;
        return cm_errorf(CM_EPEER, "%s", r == 0 ? "side channel closed by the peer" : strerror(errno));
    }
}

int cm_sidechan_post(int fd, const void *p, size_t n, size_t *sent) {
    *sent = 0;
    for (;;) {
        ssize_t w = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            *sent = (size_t)w;
            return CM_OK;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return CM_OK;
        return cm_errorf(CM_EPEER, "%s", w < 0 ? strerror(errno) : "side channel closed");
    }
}

int cm_sidechan_check_silence(uint64_t now_ns, uint64_t last_rx_ns, int timeout_ms) {
    if (now_ns - last_rx_ns <= (uint64_t)timeout_ms * 1000000ull) return CM_OK;
    return cm_errorf(CM_ETIMEDOUT, "nothing received for %d ms (peer dead or link cut)", timeout_ms);
}
