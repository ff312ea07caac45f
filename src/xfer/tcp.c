/* tcp.c - the tcp transfer backend: the default, on Linux and macOS.
 *
 * Shape
 *   One event-loop thread per engine (epoll on Linux, poll elsewhere) owns
 *   the listener and every socket. A peer has 1..8 links (one per address
 *   dialed) and sockets_per_link sockets on each. Frames (wire.h) carry
 *   write segments, messages and heartbeats. A write is split by the core
 *   into segments; each segment is queued on the link whose queue would
 *   drain first at the link's measured rate (EWMA of bytes handed to the
 *   kernel while backlogged), on its least-loaded socket. Application
 *   threads try to write their frames straight away (under the backend
 *   lock); what the kernel does not take is finished by the loop on EPOLLOUT.
 *
 * Receive path: a 40-byte header (read through a 4 KiB staging buffer so a
 * small frame costs one recv), checked, then the payload of a WRITE is
 * received straight into the registered region at its offset (only what
 * happened to be staged, at most 4 KiB, is copied). Segments are counted per
 * (peer, write id); when all n_segs landed, the counter of the immediate
 * grows by one. An application thread waiting for a counter of one peer
 * receives that peer's frames itself (tcp_progress: the sockets are lent to
 * it), sleeping in a per-peer epoll set, after busy-polling briefly while
 * the peer sends small frames (cfg busy_poll_us, with a back-off when the
 * spin keeps missing). The busy-poll spins on recv() of the socket the last
 * small frame came on (conn.direct) when that waiter is alone and the
 * socket has nothing half-read, so a reply costs one system call.
 *
 * Connection states
 *
 *   accepted --HELLO ok--> HS_PROOF --proof ok--> READY --error/EOF/silence--> DEAD
 *       |                     |                                                 ^
 *       +----bad hello--------+---wrong key (PROOF verdict=1 sent)--------------+
 *
 *   (the dialing side runs the same exchange synchronously in cm_xfer_connect
 *   and hands READY sockets to the loop.)
 *
 * Failure: any socket error, EOF, malformed frame or peer_timeout_ms of
 * silence fails the whole peer: its sockets close, queued ops complete with
 * the error, the core wakes waiters. Heartbeats flow on idle sockets every
 * heartbeat_ms; TCP_USER_TIMEOUT bounds unacknowledged data on Linux.
 *
 * Locking: one recursive mutex (b->mu) guards all backend state; it may be
 * held while calling the core (backend.h rule 6). Sockets killed outside the
 * loop thread go to a graveyard freed by the loop after its event batch, so
 * an event already fetched never points at freed memory. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/epoll.h>
#define USE_EPOLL 1
#endif

#include "base/log.h"
#include "base/status.h"
#include "base/time.h"
#include "xfer/backend.h"
#include "xfer/sidechan.h"
#include "xfer/sock.h"
#include "xfer/wire.h"

#define MAX_PEERS 256
#define STAGE_BYTES 4096
#define MAX_OPEN_WRITES 65536
#define TICK_MS 10
#define RATE_WINDOW_NS 20000000ull
/* Frames up to this size make a waiter busy-poll (cfg busy_poll_us): the
 * next one is likely a reply a few microseconds away. Streams of large
 * segments do not: spinning would take CPU the transfer itself needs. */
#define SMALL_FRAME_BYTES 16384
/* The longest a waiter sleeps in recv() on the one socket the last small
 * frame came on (tcp_progress) before it watches all of the peer's
 * sockets again: the worst extra delay for a frame on another socket. */
#define DIRECT_BLOCK_US 200

enum { CS_HS_HELLO = 1, CS_HS_PROOF, CS_READY, CS_DEAD };
enum { RX_HDR = 0, RX_PAYLOAD };
enum { PK_NONE = 0, PK_REGION, PK_RECV, PK_HEAP, PK_DISCARD };

typedef struct tx_item {
    struct tx_item *next;
    cm_xfer_op *op; /* NULL for heartbeats */
    const uint8_t *payload;
    size_t payload_bytes;
    size_t done; /* bytes of hdr + payload handed to the kernel */
    uint8_t hdr[CM_WIRE_HDR_BYTES];
} tx_item;

typedef struct op_track {
    int remaining; /* items not yet handed over or failed */
    int status;
} op_track;

typedef struct conn {
    int fd;
    int state;
    int peer; /* -1 until authenticated and assigned */
    int link, sock;
    char addr[64];
    uint64_t born_ns, last_rx_ns, last_tx_ns;
    /* handshake (accepting side) */
    uint8_t hs[CM_WIRE_HELLO_BYTES];
    size_t hs_got;
    uint8_t chello[CM_WIRE_HELLO_BYTES], shello[CM_WIRE_HELLO_BYTES];
    cm_wire_hello remote;
    /* receive */
    uint8_t stage[STAGE_BYTES];
    size_t st_off, st_len;
    uint8_t hdr[CM_WIRE_HDR_BYTES];
    size_t hdr_got;
    int rx_mode;
    cm_wire_hdr h;
    int p_kind;
    uint8_t *p_dst;
    size_t p_got;
    void *p_token;
    /* send */
    tx_item *txq, **txq_tail;
    size_t tx_bytes; /* frame bytes queued, not yet handed to the kernel */
    int want_out;
    int lent; /* input watched by application threads (tcp_progress), not the loop */
    int in_wep; /* registered in its peer's wait epoll set (tpeer.wep) */
    int blocking; /* 1: O_NONBLOCK cleared and SO_RCVTIMEO set for the
                   * direct blocking recv (all other I/O passes MSG_DONTWAIT);
                   * -1: that failed, do not retry */
    int direct; /* an application thread receives into stage[] outside the lock
                 * (tcp_progress): nobody else reads the socket or frees this
                 * conn meanwhile, and conn_kill leaves closing the fd to it */
    struct conn *next; /* b->conns or b->graveyard */
} conn;

typedef struct link_state {
    conn *socks[CM_XFER_MAX_SOCKS];
    char addr[64];
    double rate;        /* bytes/s, EWMA; 0 = not measured yet */
    uint64_t win_start, win_bytes;
    int win_backlogged; /* queue never ran dry since win_start */
    uint64_t bytes_sent, bytes_received;
} link_state;

typedef struct open_write {
    uint64_t id;
    uint32_t imm, n_segs, left;
    struct open_write *next;
} open_write;

#define WMAP_BUCKETS 1024

typedef struct tpeer {
    int active; /* has sockets */
    int up;
    int n_links, n_socks, n_ready;
    uint64_t instance;
    char name[CM_XFER_NAME_MAX];
    link_state links[CM_XFER_MAX_LINKS];
    open_write *wmap[WMAP_BUCKETS];
    int n_open;
    uint64_t send_seq;
    uint64_t progress_ns; /* last time an application thread received for itself */
    tx_item *pend, **pend_tail; /* write segments not yet given to a link */
    _Atomic int n_progress; /* application threads receiving in tcp_progress */
    int rx_small; /* the last frame that landed was small: waiters busy-poll */
    conn *rx_last; /* the socket that frame came on (cleared by conn_kill) */
    int spin_skip, spin_misses; /* busy-poll back-off (tcp_progress) */
    int wep; /* Linux: epoll set of this peer's sockets and b->pwake[0], in
              * which waiting application threads sleep (tcp_progress); -1
              * until first needed. A closed socket leaves it by itself. */
} tpeer;

typedef struct tcp_backend {
    cm_xfer *x;
    const cm_xfer_config *cfg;
    pthread_mutex_t mu;
    pthread_t thread;
    int thread_started;
    volatile int stop;
    int listen_fd;
    char listen_addr[96];
    int wake[2];
    int pwake[2];     /* wakes application threads in tcp_progress */
#ifdef USE_EPOLL
    int epfd;
#endif
    conn *conns;
    conn *graveyard;
    int pumping;
    int n_lent; /* sockets lent to application threads */ /* pump() is running: flushes inside it do not re-enter */
    tpeer peers[MAX_PEERS];
} tcp_backend;

static void peer_fail(tcp_backend *b, int pid, int status, const char *why);
static void pump(tcp_backend *b, int pid);

/* ---- addresses and sockets ---- */

static void sock_tune(int fd, const cm_xfer_config *cfg) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
#ifdef TCP_USER_TIMEOUT
    unsigned ut = (unsigned)cfg->peer_timeout_ms;
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, sizeof ut);
#endif
#ifdef SO_NOSIGPIPE
    setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#endif
}

/* ---- poller ---- */

static void wake_loop(tcp_backend *b) { cm_sock_wake(b->wake[1]); }

static void poller_add(tcp_backend *b, conn *c) {
#ifdef USE_EPOLL
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(b->epfd, EPOLL_CTL_ADD, c->fd, &ev);
#endif
    wake_loop(b);
}

static void poller_del(tcp_backend *b, conn *c) {
#ifdef USE_EPOLL
    epoll_ctl(b->epfd, EPOLL_CTL_DEL, c->fd, NULL);
#endif
}

static void poller_arm(tcp_backend *b, conn *c) {
#ifdef USE_EPOLL
    struct epoll_event ev = {.events = (c->lent ? 0u : (unsigned)EPOLLIN) | (c->want_out ? (unsigned)EPOLLOUT : 0u),
                             .data.ptr = c};
    epoll_ctl(b->epfd, EPOLL_CTL_MOD, c->fd, &ev);
#else
    wake_loop(b);
#endif
}

static void update_out(tcp_backend *b, conn *c) {
    int want = c->txq != NULL && c->state == CS_READY;
    if (want == c->want_out) return;
    c->want_out = want;
    poller_arm(b, c);
}

/* Lending: while application threads keep waiting on a peer (tcp_progress),
 * its sockets' input is taken out of the loop's epoll set, so an arriving
 * frame wakes only the thread that waits for it (one wake-up per message,
 * as with a plain blocking socket). The loop takes them back when nobody
 * has waited for a millisecond; meanwhile it ticks every millisecond. */
static void lend(tcp_backend *b, conn *c, int on) {
    if (c->lent == on) return;
    c->lent = on;
    b->n_lent += on ? 1 : -1;
    if (c->state == CS_READY) poller_arm(b, c);
}

/* ---- ops and tx queues ---- */

static void item_done(tcp_backend *b, tx_item *it, int status) {
    cm_xfer_op *op = it->op;
    free(it);
    if (!op) return;
    op_track *t = op->backend_data;
    if (status && !t->status) t->status = status;
    if (--t->remaining == 0) {
        int st = t->status;
        free(t);
        cm_xfer_core_op_done(b->x, op, st);
    }
}

static void link_dry_check(tpeer *p, int l) {
    link_state *ls = &p->links[l];
    for (int s = 0; s < p->n_socks; s++)
        if (ls->socks[s] && ls->socks[s]->txq) return;
    ls->win_backlogged = 0;
}

/* Hands queued frames to the kernel until it pushes back. Gathers several
 * small frames into one sendmsg. Returns CM_OK or the socket error (the
 * caller fails the peer). */
static int conn_flush(tcp_backend *b, conn *c) {
    if (c->state != CS_READY) return CM_OK;
    while (c->txq) {
        struct iovec iov[32];
        int n_iov = 0;
        for (tx_item *it = c->txq; it && n_iov < 31; it = it->next) {
            size_t d = it->done;
            if (d < CM_WIRE_HDR_BYTES) {
                iov[n_iov++] = (struct iovec){it->hdr + d, CM_WIRE_HDR_BYTES - d};
                d = CM_WIRE_HDR_BYTES;
            }
            size_t pd = d - CM_WIRE_HDR_BYTES;
            if (pd < it->payload_bytes) iov[n_iov++] = (struct iovec){(void *)(it->payload + pd), it->payload_bytes - pd};
        }
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n_iov};
        ssize_t n = sendmsg(c->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return cm_errorf(CM_EPEER, "send to %s: %s", c->addr, strerror(errno));
        }
        uint64_t now = cm_now_ns();
        c->last_tx_ns = now;
        if (c->peer >= 0) {
            link_state *ls = &b->peers[c->peer].links[c->link];
            ls->win_bytes += (uint64_t)n;
            ls->bytes_sent += (uint64_t)n;
        }
        size_t left = (size_t)n;
        while (left && c->txq) {
            tx_item *it = c->txq;
            size_t total = CM_WIRE_HDR_BYTES + it->payload_bytes;
            size_t take = total - it->done < left ? total - it->done : left;
            it->done += take;
            left -= take;
            c->tx_bytes -= take;
            if (it->done == total) {
                c->txq = it->next;
                if (!c->txq) c->txq_tail = &c->txq;
                item_done(b, it, CM_OK);
            }
        }
    }
    if (!c->txq && c->peer >= 0) link_dry_check(&b->peers[c->peer], c->link);
    update_out(b, c);
    if (c->peer >= 0 && b->peers[c->peer].pend) pump(b, c->peer);
    return CM_OK;
}

static void conn_enqueue(conn *c, tx_item *it) {
    it->next = NULL;
    *c->txq_tail = it;
    c->txq_tail = &it->next;
    c->tx_bytes += CM_WIRE_HDR_BYTES + it->payload_bytes;
}

/* ---- connection teardown ---- */

static void conn_rx_abort(tcp_backend *b, conn *c, int status) {
    if (c->rx_mode != RX_PAYLOAD) return;
    switch (c->p_kind) {
    case PK_REGION: cm_xfer_core_region_release(b->x, c->h.region_id); break;
    case PK_RECV:
    case PK_DISCARD: cm_xfer_core_recv_end(b->x, c->p_token, c->peer, status, 0); break;
    case PK_HEAP: free(c->p_dst); break;
    default: break;
    }
    c->p_kind = PK_NONE;
    c->rx_mode = RX_HDR;
}

/* Stops a socket: fails what it holds, unlinks it and parks it in the
 * graveyard (freed by the loop thread). */
static void conn_kill(tcp_backend *b, conn *c, int status) {
    if (c->state == CS_DEAD) return;
    c->state = CS_DEAD;
    if (c->lent) {
        c->lent = 0;
        b->n_lent--;
    }
    conn_rx_abort(b, c, status);
    while (c->txq) {
        tx_item *it = c->txq;
        c->txq = it->next;
        item_done(b, it, status);
    }
    c->txq_tail = &c->txq;
    c->tx_bytes = 0;
    poller_del(b, c);
    if (c->peer >= 0 && b->peers[c->peer].rx_last == c) b->peers[c->peer].rx_last = NULL;
    /* A thread in a direct recv on it closes the fd when it returns (so the
     * number cannot be reused under it); shutdown ends that recv now. */
    if (c->direct) shutdown(c->fd, SHUT_RDWR);
    else close(c->fd);
    c->fd = -1;
    for (conn **pc = &b->conns; *pc; pc = &(*pc)->next)
        if (*pc == c) {
            *pc = c->next;
            break;
        }
    c->next = b->graveyard;
    b->graveyard = c;
}

static void wmap_clear(tpeer *p) {
    for (int i = 0; i < WMAP_BUCKETS; i++)
        while (p->wmap[i]) {
            open_write *w = p->wmap[i];
            p->wmap[i] = w->next;
            free(w);
        }
    p->n_open = 0;
}

static void peer_fail(tcp_backend *b, int pid, int status, const char *why) {
    tpeer *p = &b->peers[pid];
    if (!p->active) return;
    p->active = 0;
    int was_up = p->up;
    p->up = 0;
    for (int l = 0; l < CM_XFER_MAX_LINKS; l++)
        for (int s = 0; s < CM_XFER_MAX_SOCKS; s++) {
            conn *c = p->links[l].socks[s];
            p->links[l].socks[s] = NULL;
            if (c) conn_kill(b, c, status);
        }
    wmap_clear(p);
    p->n_ready = 0;
    while (p->pend) {
        tx_item *it = p->pend;
        p->pend = it->next;
        item_done(b, it, status);
    }
    p->pend_tail = &p->pend;
    if (was_up)
        cm_xfer_core_peer_down(b->x, pid, status, why);
    else if (why)
        CM_LOGW("xfer: peer %d (%s) failed while connecting: %s", pid, p->name, why);
}

static void conn_fail(tcp_backend *b, conn *c, int status, const char *why) {
    if (c->peer >= 0 && b->peers[c->peer].active) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s: %s", c->addr, why);
        peer_fail(b, c->peer, status, msg);
    } else {
        if (why) CM_LOGW("xfer: connection %s closed: %s", c->addr, why);
        conn_kill(b, c, status);
    }
}

/* ---- receive ---- */

static int frame_landed(tcp_backend *b, conn *c) {
    cm_wire_hdr *h = &c->h;
    tpeer *p = &b->peers[c->peer];
    switch (h->type) {
    case CM_WIRE_WRITE: {
        if (c->p_kind == PK_REGION) cm_xfer_core_region_release(b->x, h->region_id);
        c->p_kind = PK_NONE;
        if (h->n_segs == 1) {
            cm_xfer_core_write_landed(b->x, c->peer, h->imm);
            return CM_OK;
        }
        open_write **pw = &p->wmap[h->id % WMAP_BUCKETS], *w = *pw;
        while (w && w->id != h->id) w = w->next;
        if (!w) {
            if (p->n_open >= MAX_OPEN_WRITES)
                return cm_errorf(CM_EFORMAT, "more than %d writes in flight", MAX_OPEN_WRITES);
            w = calloc(1, sizeof *w);
            if (!w) return CM_ENOMEM;
            *w = (open_write){h->id, h->imm, h->n_segs, h->n_segs, *pw};
            *pw = w;
            p->n_open++;
        } else if (w->n_segs != h->n_segs || w->imm != h->imm) {
            return cm_errorf(CM_EFORMAT, "write %llu: segment says %u segments / imm %u, earlier ones %u / %u",
                             (unsigned long long)h->id, h->n_segs, h->imm, w->n_segs, w->imm);
        }
        if (--w->left == 0) {
            for (open_write **q = pw; *q; q = &(*q)->next)
                if (*q == w) {
                    *q = w->next;
                    break;
                }
            p->n_open--;
            uint32_t imm = w->imm;
            free(w);
            cm_xfer_core_write_landed(b->x, c->peer, imm);
        }
        return CM_OK;
    }
    case CM_WIRE_SEND: {
        int kind = c->p_kind;
        c->p_kind = PK_NONE;
        if (kind == PK_RECV) cm_xfer_core_recv_end(b->x, c->p_token, c->peer, CM_OK, h->payload_bytes);
        if (kind == PK_DISCARD) cm_xfer_core_recv_end(b->x, c->p_token, c->peer, CM_ERANGE, 0);
        if (kind == PK_HEAP) {
            int rc = cm_xfer_core_recv_unexpected(b->x, c->peer, c->p_dst, h->payload_bytes);
            if (rc) {
                free(c->p_dst);
                return rc;
            }
        }
        return CM_OK;
    }
    default: return CM_OK;
    }
}

/* A frame landed; an application thread waiting in tcp_progress may be
 * blocked in poll on a socket whose data this thread just took. */
static void notify_progress(tcp_backend *b, conn *c) {
    if (atomic_load(&b->peers[c->peer].n_progress) > 0) cm_sock_wake(b->pwake[1]);
}

/* Sets up where the payload of the frame in c->h goes. */
static int frame_begin(tcp_backend *b, conn *c) {
    cm_wire_hdr *h = &c->h;
    c->p_got = 0;
    c->p_kind = PK_NONE;
    switch (h->type) {
    case CM_WIRE_WRITE: {
        int rc = cm_xfer_core_region_target(b->x, c->peer, h->region_id, h->dst_off, h->payload_bytes, &c->p_dst);
        if (rc) return rc;
        c->p_kind = PK_REGION;
        return CM_OK;
    }
    case CM_WIRE_SEND: {
        size_t cap = 0;
        int rc = cm_xfer_core_recv_begin(b->x, c->peer, &c->p_dst, &cap, &c->p_token);
        if (rc == CM_OK) {
            c->p_kind = h->payload_bytes > cap ? PK_DISCARD : PK_RECV;
        } else {
            c->p_dst = malloc(h->payload_bytes ? h->payload_bytes : 1);
            if (!c->p_dst) return cm_errorf(CM_ENOMEM, "no memory for a %u-byte message", h->payload_bytes);
            c->p_kind = PK_HEAP;
        }
        return CM_OK;
    }
    case CM_WIRE_HEARTBEAT: return CM_OK;
    case CM_WIRE_BYE: return cm_errorf(CM_EPEER, "peer closed the connection");
    default: return cm_errorf(CM_EFORMAT, "unknown frame type %d", h->type);
    }
}

/* Reads what the socket has (bounded per call for fairness). one_pass: stop
 * once a frame has landed and nothing is staged (a waiting application
 * thread reading for itself leaves the rest to the loop). */
static void conn_read_ready(tcp_backend *b, conn *c, int one_pass) {
    size_t budget = 16u << 20;
    link_state *ls = &b->peers[c->peer].links[c->link];
    while (c->state == CS_READY && budget) {
        if (c->rx_mode == RX_HDR) {
            if (c->st_off == c->st_len) {
                ssize_t n = recv(c->fd, c->stage, STAGE_BYTES, MSG_DONTWAIT);
                if (n < 0 && errno == EINTR) continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
                if (n <= 0) {
                    conn_fail(b, c, CM_EPEER, n == 0 ? "connection closed by peer" : strerror(errno));
                    return;
                }
                c->st_off = 0;
                c->st_len = (size_t)n;
                c->last_rx_ns = cm_now_ns();
                ls->bytes_received += (uint64_t)n;
                budget = budget > (size_t)n ? budget - (size_t)n : 0;
            }
            size_t take = CM_WIRE_HDR_BYTES - c->hdr_got;
            if (take > c->st_len - c->st_off) take = c->st_len - c->st_off;
            memcpy(c->hdr + c->hdr_got, c->stage + c->st_off, take);
            c->hdr_got += take;
            c->st_off += take;
            if (c->hdr_got < CM_WIRE_HDR_BYTES) continue;
            c->hdr_got = 0;
            int rc = cm_wire_hdr_decode(c->hdr, &c->h);
            if (!rc) rc = frame_begin(b, c);
            if (rc) {
                char why[400];
                snprintf(why, sizeof why, "bad frame from peer: %s", cm_last_error(rc));
                conn_fail(b, c, rc == CM_EPEER ? CM_EPEER : CM_EFORMAT, why);
                return;
            }
            c->rx_mode = RX_PAYLOAD;
        }
        /* payload */
        size_t need = c->h.payload_bytes - c->p_got;
        if (need) {
            size_t avail = c->st_len - c->st_off;
            if (avail) {
                size_t take = need < avail ? need : avail;
                if (c->p_kind != PK_DISCARD && c->p_kind != PK_NONE) memcpy(c->p_dst + c->p_got, c->stage + c->st_off, take);
                c->st_off += take;
                c->p_got += take;
            } else {
                uint8_t *dst = c->p_kind == PK_DISCARD ? c->stage : c->p_dst + c->p_got;
                size_t want = c->p_kind == PK_DISCARD && need > STAGE_BYTES ? STAGE_BYTES : need;
                ssize_t n = recv(c->fd, dst, want, MSG_DONTWAIT);
                if (n < 0 && errno == EINTR) continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
                if (n <= 0) {
                    conn_fail(b, c, CM_EPEER, n == 0 ? "connection closed by peer mid-frame" : strerror(errno));
                    return;
                }
                c->p_got += (size_t)n;
                c->last_rx_ns = cm_now_ns();
                ls->bytes_received += (uint64_t)n;
                budget = budget > (size_t)n ? budget - (size_t)n : 0;
            }
            if (c->p_got < c->h.payload_bytes) continue;
        }
        c->rx_mode = RX_HDR;
        if (c->h.type != CM_WIRE_HEARTBEAT) {
            b->peers[c->peer].rx_small = c->h.payload_bytes <= SMALL_FRAME_BYTES;
            b->peers[c->peer].rx_last = c;
        }
        int rc = frame_landed(b, c);
        if (!one_pass && c->h.type != CM_WIRE_HEARTBEAT) notify_progress(b, c);
        if (rc) {
            char why[400];
            snprintf(why, sizeof why, "bad frame from peer: %s", cm_last_error(rc));
            conn_fail(b, c, CM_EFORMAT, why);
            return;
        }
        if (one_pass && c->st_off == c->st_len) return;
    }
}

/* ---- handshake, accepting side (loop thread) ---- */

static int send_all_now(int fd, const uint8_t *p, size_t n) {
    /* Handshake messages are a few dozen bytes into an empty socket buffer:
     * a short write means the connection is unusable. */
    ssize_t w = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    return w == (ssize_t)n ? CM_OK : CM_ECONN;
}

static void server_assign(tcp_backend *b, conn *c) {
    cm_wire_hello *r = &c->remote;
    int pid;
    if (cm_xfer_core_peer_lookup(b->x, r->name, r->instance, &pid)) {
        conn_fail(b, c, CM_EFULL, cm_last_error(CM_EFULL));
        return;
    }
    tpeer *p = &b->peers[pid];
    if (p->active && p->instance != r->instance) peer_fail(b, pid, CM_EPEER, "peer restarted");
    if (!p->active) {
        for (int l = 0; l < CM_XFER_MAX_LINKS; l++) {
            link_state *ls = &p->links[l];
            memset(ls, 0, sizeof *ls);
        }
        p->active = 1;
        p->up = 0;
        p->n_links = r->n_links;
        p->n_socks = r->n_socks;
        p->n_ready = 0;
        p->instance = r->instance;
        p->send_seq = 0;
        snprintf(p->name, sizeof p->name, "%s", r->name);
    }
    if (p->n_links != r->n_links || p->n_socks != r->n_socks || p->links[r->link].socks[r->sock]) {
        conn_fail(b, c, CM_EFORMAT, "socket does not fit the peer's announced links (duplicate or mismatch)");
        return;
    }
    c->peer = pid;
    c->link = r->link;
    c->sock = r->sock;
    p->links[r->link].socks[r->sock] = c;
    if (!p->links[r->link].addr[0]) snprintf(p->links[r->link].addr, sizeof p->links[r->link].addr, "%s", c->addr);
    c->state = CS_READY;
    c->last_rx_ns = c->last_tx_ns = cm_now_ns();
    if (++p->n_ready == p->n_links * p->n_socks) {
        p->up = 1;
        cm_xfer_core_peer_up(b->x, pid, p->name, p->instance);
    }
}

static void conn_read_handshake(tcp_backend *b, conn *c) {
    size_t need = c->state == CS_HS_HELLO ? CM_WIRE_HELLO_BYTES : CM_WIRE_PROOF_BYTES;
    while (c->hs_got < need) {
        ssize_t n = recv(c->fd, c->hs + c->hs_got, need - c->hs_got, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n <= 0) {
            conn_fail(b, c, CM_ECONN, n == 0 ? "closed during authentication" : strerror(errno));
            return;
        }
        c->hs_got += (size_t)n;
    }
    c->hs_got = 0;
    if (c->state == CS_HS_HELLO) {
        if (cm_wire_hello_decode(c->hs, &c->remote) || c->remote.role != 1) {
            char why[300];
            snprintf(why, sizeof why, "bad handshake: %s", c->remote.role != 1 ? "not a client hello" : cm_last_error(CM_EFORMAT));
            conn_fail(b, c, CM_EFORMAT, why);
            return;
        }
        memcpy(c->chello, c->hs, CM_WIRE_HELLO_BYTES);
        cm_wire_hello me = {.role = 2, .link = c->remote.link, .sock = c->remote.sock,
                            .n_links = c->remote.n_links, .n_socks = c->remote.n_socks,
                            .instance = cm_xfer_core_instance(b->x)};
        randombytes_buf(me.nonce, sizeof me.nonce);
        snprintf(me.name, sizeof me.name, "%s", cm_xfer_core_name(b->x));
        cm_wire_hello_encode(&me, c->shello);
        if (send_all_now(c->fd, c->shello, CM_WIRE_HELLO_BYTES)) {
            conn_fail(b, c, CM_ECONN, "could not send hello");
            return;
        }
        c->state = CS_HS_PROOF;
        return;
    }
    int verdict;
    uint8_t mac[CM_WIRE_MAC_BYTES], out[CM_WIRE_PROOF_BYTES];
    if (cm_wire_proof_decode(c->hs, &verdict, mac) || verdict != 0) {
        conn_fail(b, c, CM_EFORMAT, "bad handshake proof");
        return;
    }
    if (cm_wire_auth_verify(&b->cfg->key, 1, c->chello, c->shello, mac)) {
        CM_LOGW("xfer: connection from %s (%s) refused: it does not hold our cell key (authentication failed)",
                c->addr, c->remote.name);
        cm_wire_proof_encode(1, NULL, out);
        send_all_now(c->fd, out, sizeof out);
        conn_kill(b, c, CM_EAUTH);
        return;
    }
    cm_wire_auth_mac(&b->cfg->key, 2, c->chello, c->shello, mac);
    cm_wire_proof_encode(0, mac, out);
    if (send_all_now(c->fd, out, sizeof out)) {
        conn_fail(b, c, CM_ECONN, "could not send proof");
        return;
    }
    server_assign(b, c);
}

static conn *conn_new(int fd, const char *addr) {
    conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->fd = fd;
    c->peer = -1;
    c->txq_tail = &c->txq;
    c->born_ns = c->last_rx_ns = c->last_tx_ns = cm_now_ns();
    snprintf(c->addr, sizeof c->addr, "%s", addr);
    return c;
}

static void do_accept(tcp_backend *b) {
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept(b->listen_fd, (struct sockaddr *)&ss, &sl);
        if (fd < 0) return;
        char addr[64];
        cm_sock_addr_string((struct sockaddr *)&ss, addr, sizeof addr);
        cm_sock_set_nonblock(fd);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        sock_tune(fd, b->cfg);
        conn *c = conn_new(fd, addr);
        if (!c) {
            close(fd);
            continue;
        }
        c->state = CS_HS_HELLO;
        c->next = b->conns;
        b->conns = c;
        poller_add(b, c);
    }
}

/* ---- periodic work ---- */

/* Frees the graveyard's conns except those a thread still receives on
 * directly (conn.direct); returns how many are left. */
static int graveyard_reap(tcp_backend *b) {
    int left = 0;
    for (conn **pc = &b->graveyard; *pc;) {
        conn *c = *pc;
        if (c->direct) {
            left++;
            pc = &c->next;
            continue;
        }
        *pc = c->next;
        free(c);
    }
    return left;
}

static void take_back(tcp_backend *b, uint64_t now) {
    for (int i = 0; i < MAX_PEERS && b->n_lent; i++) {
        tpeer *p = &b->peers[i];
        if (!p->active || atomic_load(&p->n_progress) > 0 || now - p->progress_ns < 1000000ull) continue;
        for (int l = 0; l < p->n_links; l++)
            for (int s = 0; s < p->n_socks; s++)
                if (p->links[l].socks[s]) lend(b, p->links[l].socks[s], 0);
    }
}

static void tick(tcp_backend *b, uint64_t now) {
    const uint64_t timeout_ns = (uint64_t)b->cfg->peer_timeout_ms * 1000000ull;
    const uint64_t hb_ns = (uint64_t)b->cfg->heartbeat_ms * 1000000ull;
    for (conn *c = b->conns, *next; c; c = next) {
        next = c->next;
        if (c->state == CS_HS_HELLO || c->state == CS_HS_PROOF) {
            if (now - c->born_ns > timeout_ns) conn_fail(b, c, CM_ETIMEDOUT, "no handshake within the peer timeout");
            continue;
        }
        if (c->state != CS_READY) continue;
        if (now - c->last_rx_ns > timeout_ns) {
            char why[128];
            snprintf(why, sizeof why, "nothing received for %d ms (peer dead or link cut)", b->cfg->peer_timeout_ms);
            conn_fail(b, c, CM_ETIMEDOUT, why);
            /* the peer's other sockets are gone too: restart the walk */
            next = b->conns;
            continue;
        }
        if (!c->txq && now - c->last_tx_ns >= hb_ns) {
            tx_item *it = calloc(1, sizeof *it);
            if (!it) continue;
            cm_wire_hdr h = {.type = CM_WIRE_HEARTBEAT};
            cm_wire_hdr_encode(&h, it->hdr);
            conn_enqueue(c, it);
            c->last_tx_ns = now; /* do not queue another before this one goes */
            if (conn_flush(b, c)) {
                conn_fail(b, c, CM_EPEER, cm_last_error(CM_EPEER));
                next = b->conns;
            }
        }
    }
    for (int i = 0; i < MAX_PEERS; i++) {
        tpeer *p = &b->peers[i];
        if (!p->up) continue;
        for (int l = 0; l < p->n_links; l++) {
            link_state *ls = &p->links[l];
            uint64_t dt = now - ls->win_start;
            if (dt < RATE_WINDOW_NS) continue;
            if (ls->win_backlogged && ls->win_bytes > 0) {
                double sample = (double)ls->win_bytes * 1e9 / (double)dt;
                ls->rate = ls->rate > 0 ? 0.7 * ls->rate + 0.3 * sample : sample;
            }
            ls->win_start = now;
            ls->win_bytes = 0;
            int backlog = 0;
            for (int s = 0; s < p->n_socks; s++)
                if (ls->socks[s] && ls->socks[s]->txq) backlog = 1;
            ls->win_backlogged = backlog;
        }
    }
}

/* What the poller does for a connection its epoll or poll reported:
 * readable (or hung up, or failed: the read finds out which), writable. */
static void conn_events(tcp_backend *b, conn *c, int readable, int writable) {
    if (readable) {
        if (c->state == CS_READY)
            conn_read_ready(b, c, 0);
        else
            conn_read_handshake(b, c);
    }
    if (writable && c->state == CS_READY && conn_flush(b, c)) conn_fail(b, c, CM_EPEER, cm_last_error(CM_EPEER));
}

static void *loop_main(void *arg) {
    tcp_backend *b = arg;
    uint64_t last_tick = cm_now_ns();
#ifdef USE_EPOLL
    struct epoll_event evs[64];
#else
    struct pollfd *pfds = NULL;
    conn **pconns = NULL;
    size_t pcap = 0;
#endif
    while (!b->stop) {
#ifdef USE_EPOLL
        int n = epoll_wait(b->epfd, evs, 64, b->n_lent ? 1 : TICK_MS);
        /* An application thread receiving for itself (tcp_progress) holds
         * the lock only briefly: do not sleep on it, and leave the sockets
         * of the peer it waits on to it (they stay readable, so we see them
         * again if it does not take the data). */
        int skipped = 0;
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (c == (void *)&b->listen_fd || c == (void *)&b->wake) continue;
            if (!(evs[i].events & EPOLLOUT) && c->state == CS_READY && atomic_load(&b->peers[c->peer].n_progress) > 0) {
                evs[i].data.ptr = NULL;
                skipped++;
            }
        }
        if (skipped == n && n > 0) {
            sched_yield();
            continue;
        }
        /* Woken only by the clock (the periodic work: take_back, tick):
         * if an application thread is inside the backend right now, come
         * back at the next tick rather than block on it, which would make
         * that thread pay a futex wake-up on its latency path. */
        if (n == 0) {
            if (pthread_mutex_trylock(&b->mu)) continue;
        } else {
            pthread_mutex_lock(&b->mu);
        }
        for (int i = 0; i < n; i++) {
            void *ptr = evs[i].data.ptr;
            unsigned e = evs[i].events;
            if (!ptr) continue;
            if (ptr == &b->listen_fd) {
                do_accept(b);
                continue;
            }
            if (ptr == &b->wake) {
                cm_sock_wake_drain(b->wake[0]);
                continue;
            }
            conn *c = ptr;
            if (c->state == CS_DEAD) continue;
            conn_events(b, c, (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0, (e & EPOLLOUT) != 0);
        }
#else
        pthread_mutex_lock(&b->mu);
        size_t cnt = 2;
        for (conn *c = b->conns; c; c = c->next) cnt++;
        if (cnt > pcap) {
            pcap = cnt * 2;
            pfds = realloc(pfds, pcap * sizeof *pfds);
            pconns = realloc(pconns, pcap * sizeof *pconns);
        }
        size_t k = 0;
        pfds[k++] = (struct pollfd){b->wake[0], POLLIN, 0};
        pfds[k++] = (struct pollfd){b->listen_fd, b->listen_fd >= 0 ? POLLIN : 0, 0};
        for (conn *c = b->conns; c; c = c->next) {
            pconns[k] = c;
            pfds[k++] = (struct pollfd){c->fd, (short)(POLLIN | (c->txq && c->state == CS_READY ? POLLOUT : 0)), 0};
        }
        pthread_mutex_unlock(&b->mu);
        int n = poll(pfds, (nfds_t)k, TICK_MS);
        pthread_mutex_lock(&b->mu);
        if (n > 0) {
            if (pfds[0].revents) cm_sock_wake_drain(b->wake[0]);
            if (pfds[1].revents & POLLIN) do_accept(b);
            for (size_t i = 2; i < k; i++) {
                conn *c = pconns[i];
                short e = pfds[i].revents;
                if (!e || c->state == CS_DEAD) continue;
                conn_events(b, c, (e & (POLLIN | POLLHUP | POLLERR)) != 0, (e & POLLOUT) != 0);
            }
        }
#endif
        uint64_t now = cm_now_ns();
        if (b->n_lent) take_back(b, now);
        if (now - last_tick >= TICK_MS * 1000000ull) {
            tick(b, now);
            last_tick = now;
        }
        graveyard_reap(b);
        pthread_mutex_unlock(&b->mu);
    }
#ifndef USE_EPOLL
    free(pfds);
    free(pconns);
#endif
    return NULL;
}

/* ---- dialing side ---- */

static int dial_one(tcp_backend *b, const char *addr, int link, int sock, int n_links, uint64_t deadline,
                    cm_wire_hello *server, int *fd_out) {
    int fd = -1;
    int rc = cm_sock_connect(addr, deadline, &fd);
    if (rc) return rc;
    sock_tune(fd, b->cfg);

    uint8_t chello[CM_WIRE_HELLO_BYTES], shello[CM_WIRE_HELLO_BYTES], proof[CM_WIRE_PROOF_BYTES];
    uint8_t mac[CM_WIRE_MAC_BYTES];
    cm_wire_hello me = {.role = 1, .link = link, .sock = sock, .n_links = n_links,
                        .n_socks = b->cfg->sockets_per_link, .instance = cm_xfer_core_instance(b->x)};
    randombytes_buf(me.nonce, sizeof me.nonce);
    snprintf(me.name, sizeof me.name, "%s", cm_xfer_core_name(b->x));
    cm_wire_hello_encode(&me, chello);
    if ((rc = cm_sidechan_send(fd, chello, sizeof chello, deadline))) goto fail;
    if ((rc = cm_sidechan_recv(fd, shello, sizeof shello, deadline))) goto fail;
    if ((rc = cm_wire_hello_decode(shello, server))) goto fail;
    if (server->role != 2 || server->link != link || server->sock != sock) {
        rc = cm_errorf(CM_EFORMAT, "%s: unexpected hello from the peer", addr);
        goto fail;
    }
    cm_wire_auth_mac(&b->cfg->key, 1, chello, shello, mac);
    cm_wire_proof_encode(0, mac, proof);
    if ((rc = cm_sidechan_send(fd, proof, sizeof proof, deadline))) goto fail;
    if ((rc = cm_sidechan_recv(fd, proof, sizeof proof, deadline))) {
        if (rc == CM_ECONN) rc = cm_errorf(CM_EAUTH, "%s: the peer closed the connection during authentication", addr);
        goto fail;
    }
    int verdict;
    if ((rc = cm_wire_proof_decode(proof, &verdict, mac))) goto fail;
    if (verdict) {
        CM_LOGW("xfer: %s refused our cell key (authentication failed: the peer uses another key)", addr);
        rc = cm_errorf(CM_EAUTH, "%s refused our cell key (does it use the same --key-file?)", addr);
        goto fail;
    }
    if (cm_wire_auth_verify(&b->cfg->key, 2, chello, shello, mac)) {
        CM_LOGW("xfer: %s failed to prove the cell key; connection refused (authentication failed)", addr);
        rc = cm_errorf(CM_EAUTH, "%s does not hold our cell key", addr);
        goto fail;
    }
    *fd_out = fd;
    return CM_OK;
fail:
    close(fd);
    return rc;
}

static int tcp_connect(void *state, int pid, const char *const *addrs, int n_addrs, int timeout_ms) {
    tcp_backend *b = state;
    const int n_socks = b->cfg->sockets_per_link;
    int fds[CM_XFER_MAX_LINKS][CM_XFER_MAX_SOCKS];
    memset(fds, -1, sizeof fds);
    uint64_t deadline = cm_now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 10000) * 1000000ull;
    cm_wire_hello server = {0};
    uint64_t instance = 0;
    int rc = CM_OK;
    for (int l = 0; l < n_addrs && !rc; l++)
        for (int s = 0; s < n_socks && !rc; s++) {
            rc = dial_one(b, addrs[l], l, s, n_addrs, deadline, &server, &fds[l][s]);
            if (!rc && l + s > 0 && server.instance != instance)
                rc = cm_errorf(CM_EINVAL, "%s reaches another engine (%s) than %s", addrs[l], server.name, addrs[0]);
            instance = server.instance;
        }
    if (rc) goto fail;
    pthread_mutex_lock(&b->mu);
    tpeer *p = &b->peers[pid];
    if (p->active) peer_fail(b, pid, CM_EPEER, "replaced by a new connection");
    memset(p->links, 0, sizeof p->links);
    p->active = 1;
    p->n_links = n_addrs;
    p->n_socks = n_socks;
    p->n_ready = n_addrs * n_socks;
    p->instance = server.instance;
    p->send_seq = 0;
    snprintf(p->name, sizeof p->name, "%s", server.name);
    uint64_t now = cm_now_ns();
    for (int l = 0; l < n_addrs; l++) {
        snprintf(p->links[l].addr, sizeof p->links[l].addr, "%s", addrs[l]);
        p->links[l].win_start = now;
        for (int s = 0; s < n_socks; s++) {
            conn *c = conn_new(fds[l][s], addrs[l]);
            if (!c) {
                pthread_mutex_unlock(&b->mu);
                rc = CM_ENOMEM;
                peer_fail(b, pid, CM_ENOMEM, NULL);
                goto fail;
            }
            fds[l][s] = -1;
            c->state = CS_READY;
            c->peer = pid;
            c->link = l;
            c->sock = s;
            c->next = b->conns;
            b->conns = c;
            p->links[l].socks[s] = c;
            poller_add(b, c);
        }
    }
    p->up = 1;
    cm_xfer_core_peer_up(b->x, pid, p->name, p->instance);
    pthread_mutex_unlock(&b->mu);
    return CM_OK;
fail:
    for (int l = 0; l < CM_XFER_MAX_LINKS; l++)
        for (int s = 0; s < CM_XFER_MAX_SOCKS; s++)
            if (fds[l][s] >= 0) close(fds[l][s]);
    return rc;
}

/* ---- the table ---- */

static int tcp_listen(tcp_backend *b, const char *spec) {
    return cm_sock_listen(spec, 128, b->listen_addr, sizeof b->listen_addr, &b->listen_fd);
}

static void tcp_destroy(void *state);

static int tcp_create(cm_xfer *x, const cm_xfer_config *cfg, void **state) {
    tcp_backend *b = calloc(1, sizeof *b);
    if (!b) return CM_ENOMEM;
    b->x = x;
    b->cfg = cfg;
    b->listen_fd = -1;
    b->wake[0] = b->wake[1] = -1;
    b->pwake[0] = b->pwake[1] = -1;
    for (int i = 0; i < MAX_PEERS; i++) b->peers[i].wep = -1;
#ifdef USE_EPOLL
    b->epfd = -1;
#endif
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&b->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    int rc = CM_OK;
    if ((rc = cm_sock_wake_open(b->wake)) || (rc = cm_sock_wake_open(b->pwake))) goto fail;
#ifdef USE_EPOLL
    b->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (b->epfd < 0) {
        rc = cm_errorf(CM_EIO, "xfer: epoll_create1: %s", strerror(errno));
        goto fail;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &b->wake};
    epoll_ctl(b->epfd, EPOLL_CTL_ADD, b->wake[0], &ev);
#endif
    if (cfg->listen) {
        if ((rc = tcp_listen(b, cfg->listen))) goto fail;
#ifdef USE_EPOLL
        struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &b->listen_fd};
        epoll_ctl(b->epfd, EPOLL_CTL_ADD, b->listen_fd, &lev);
#endif
    }
    if (pthread_create(&b->thread, NULL, loop_main, b)) {
        rc = cm_errorf(CM_EIO, "xfer: cannot start the event loop thread");
        goto fail;
    }
    b->thread_started = 1;
    *state = b;
    return CM_OK;
fail:
    tcp_destroy(b);
    return rc;
}

static void tcp_destroy(void *state) {
    tcp_backend *b = state;
    if (!b) return;
    b->stop = 1;
    if (b->thread_started) {
        wake_loop(b);
        pthread_join(b->thread, NULL);
    }
    pthread_mutex_lock(&b->mu);
    for (int i = 0; i < MAX_PEERS; i++) peer_fail(b, i, CM_ECLOSED, NULL);
    while (b->conns) conn_kill(b, b->conns, CM_ECLOSED);
    /* a thread still in a direct recv returns within busy_poll_us (its
     * socket was shut down by conn_kill) */
    while (graveyard_reap(b)) {
        pthread_mutex_unlock(&b->mu);
        sched_yield();
        pthread_mutex_lock(&b->mu);
    }
    pthread_mutex_unlock(&b->mu);
    if (b->listen_fd >= 0) close(b->listen_fd);
    cm_sock_wake_close(b->wake);
    cm_sock_wake_close(b->pwake);
    for (int i = 0; i < MAX_PEERS; i++)
        if (b->peers[i].wep >= 0) close(b->peers[i].wep);
#ifdef USE_EPOLL
    if (b->epfd >= 0) close(b->epfd);
#endif
    pthread_mutex_destroy(&b->mu);
    free(b);
}

static int tcp_listen_addr(void *state, char *buf, size_t cap) {
    tcp_backend *b = state;
    if (b->listen_fd < 0) return cm_errorf(CM_ENOTFOUND, "xfer: no listener");
    snprintf(buf, cap, "%s", b->listen_addr);
    return CM_OK;
}

static void tcp_disconnect(void *state, int peer, int status) {
    tcp_backend *b = state;
    pthread_mutex_lock(&b->mu);
    peer_fail(b, peer, status, status == CM_ECLOSED ? "disconnected" : "dropped");
    pthread_mutex_unlock(&b->mu);
}

static int peer_ready_locked(tcp_backend *b, int pid) {
    if (pid < 0 || pid >= MAX_PEERS || !b->peers[pid].up) return cm_errorf(CM_EPEER, "xfer: peer %d is down", pid);
    return CM_OK;
}

static tx_item *frame_item(cm_xfer_op *op, const cm_wire_hdr *h, const uint8_t *payload, size_t n) {
    tx_item *it = calloc(1, sizeof *it);
    if (!it) return NULL;
    it->op = op;
    it->payload = payload;
    it->payload_bytes = n;
    cm_wire_hdr_encode(h, it->hdr);
    return it;
}

static int tcp_send(void *state, cm_xfer_op *op) {
    tcp_backend *b = state;
    pthread_mutex_lock(&b->mu);
    int rc = peer_ready_locked(b, op->peer);
    if (rc) goto out;
    tpeer *p = &b->peers[op->peer];
    op_track *t = calloc(1, sizeof *t);
    cm_wire_hdr h = {.type = CM_WIRE_SEND, .payload_bytes = op->segs[0].bytes, .id = ++p->send_seq};
    tx_item *it = t ? frame_item(op, &h, op->segs[0].src, op->segs[0].bytes) : NULL;
    if (!it) {
        free(t);
        rc = CM_ENOMEM;
        goto out;
    }
    t->remaining = 1;
    op->backend_data = t;
    /* All messages of a peer go through one socket: that keeps them in order. */
    conn *c = p->links[0].socks[0];
    conn_enqueue(c, it);
    if (conn_flush(b, c)) conn_fail(b, c, CM_EPEER, cm_last_error(CM_EPEER));
out:
    pthread_mutex_unlock(&b->mu);
    return rc;
}

/* Hands pending write segments to links. Each segment goes to the link
 * whose queue would drain first at its measured rate (on its least-loaded
 * socket), but a link is only given about 10 ms of work (at its rate, at
 * least two chunks) beyond what it is sending: the rest waits here and is
 * handed out as links drain, so a misjudged rate costs at most ~10 ms of
 * imbalance at the end of a transfer. */
static void pump(tcp_backend *b, int pid) {
    tpeer *p = &b->peers[pid];
    if (b->pumping) return;
    b->pumping = 1;
    while (p->pend && p->active && p->up) {
        double queued[CM_XFER_MAX_LINKS] = {0}, rate[CM_XFER_MAX_LINKS], horizon[CM_XFER_MAX_LINKS];
        double known = 0;
        for (int l = 0; l < p->n_links; l++) {
            if (p->links[l].rate > known) known = p->links[l].rate;
            for (int s = 0; s < p->n_socks; s++) queued[l] += (double)p->links[l].socks[s]->tx_bytes;
        }
        for (int l = 0; l < p->n_links; l++) {
            rate[l] = p->links[l].rate > 0 ? p->links[l].rate : known > 0 ? known : 1e9;
            horizon[l] = rate[l] * 0.010;
            if (horizon[l] < 2.0 * (double)b->cfg->chunk_bytes) horizon[l] = 2.0 * (double)b->cfg->chunk_bytes;
        }
        conn *used[CM_XFER_MAX_LINKS * CM_XFER_MAX_SOCKS];
        int n_used = 0;
        uint64_t touched = 0;
        while (p->pend) {
            tx_item *it = p->pend;
            int best = -1;
            double best_t = 0;
            for (int l = 0; l < p->n_links; l++) {
                if (queued[l] >= horizon[l]) continue;
                double tl = (queued[l] + (double)it->payload_bytes) / rate[l];
                if (best < 0 || tl < best_t) best = l, best_t = tl;
            }
            if (best < 0) break; /* every link has enough to do */
            p->pend = it->next;
            if (!p->pend) p->pend_tail = &p->pend;
            link_state *ls = &p->links[best];
            conn *c = ls->socks[0];
            for (int s = 1; s < p->n_socks; s++)
                if (ls->socks[s]->tx_bytes < c->tx_bytes) c = ls->socks[s];
            if (!ls->win_backlogged && !queued[best]) {
                ls->win_start = cm_now_ns();
                ls->win_bytes = 0;
                ls->win_backlogged = 1;
            }
            queued[best] += (double)(CM_WIRE_HDR_BYTES + it->payload_bytes);
            conn_enqueue(c, it);
            uint64_t bit = 1ull << (best * CM_XFER_MAX_SOCKS + c->sock);
            if (!(touched & bit)) used[n_used++] = c;
            touched |= bit;
        }
        if (!n_used) break;
        int failed = 0;
        for (int i = 0; i < n_used && !failed; i++) {
            if (used[i]->state != CS_READY) continue;
            if (conn_flush(b, used[i])) {
                conn_fail(b, used[i], CM_EPEER, cm_last_error(CM_EPEER));
                failed = 1;
            }
        }
        if (failed) break;
        /* again only if the flushes made room somewhere */
        int room = 0;
        for (int l = 0; l < p->n_links && !room; l++) {
            double q = 0;
            for (int s = 0; s < p->n_socks; s++) q += (double)p->links[l].socks[s]->tx_bytes;
            room = q < horizon[l];
        }
        if (!room) break;
    }
    b->pumping = 0;
}

static int tcp_write(void *state, cm_xfer_op *op) {

    tcp_backend *b = state;
    pthread_mutex_lock(&b->mu);
    int rc = peer_ready_locked(b, op->peer);
    if (rc) goto out;
    tpeer *p = &b->peers[op->peer];
    op_track *t = calloc(1, sizeof *t);
    tx_item *few[4];
    tx_item **items = op->n_segs <= 4 ? few : calloc((size_t)op->n_segs, sizeof *items);
    if (items == few) memset(few, 0, sizeof few);
    int ok = t && items;
    for (int i = 0; ok && i < op->n_segs; i++) {
        cm_wire_hdr h = {.type = CM_WIRE_WRITE, .payload_bytes = op->segs[i].bytes, .id = op->write_id,
                         .region_id = op->dst_region, .imm = op->imm, .dst_off = op->segs[i].dst_off,
                         .n_segs = (uint32_t)op->n_segs};
        items[i] = frame_item(op, &h, op->segs[i].src, op->segs[i].bytes);
        ok = items[i] != NULL;
    }
    if (!ok) {
        for (int i = 0; items && i < op->n_segs; i++) free(items[i]);
        if (items != few) free(items);
        free(t);
        rc = CM_ENOMEM;
        goto out;
    }
    t->remaining = op->n_segs;
    op->backend_data = t;
    if (!p->pend_tail) p->pend_tail = &p->pend;
    for (int i = 0; i < op->n_segs; i++) {
        items[i]->next = NULL;
        *p->pend_tail = items[i];
        p->pend_tail = &items[i]->next;
    }
    if (items != few) free(items);
    pump(b, op->peer);
out:
    pthread_mutex_unlock(&b->mu);
    return rc;
}

/* Waits until one of fds (n of them, all also in the epoll set `wep` when
 * wep >= 0) is readable: first busy-polling for up to spin_us without
 * sleeping, then sleeping up to timeout_us. Busy-polling keeps this CPU
 * from going idle, so a reply from a thread on another CPU is seen without
 * the sleep and wake-up (an inter-processor interrupt, and in a virtual
 * machine an exit to the hypervisor) that dominate a small round trip; it
 * only pays while the sender runs on another CPU, hence the caller's
 * back-off. Fills ready[] with the readable fds. Returns 1 when something
 * was found while spinning, 2 when found after sleeping, 0 when nothing. */
static int wait_ready(int wep, const int *fds, int n, int spin_us, int timeout_us, int *ready, int *n_ready) {
    *n_ready = 0;
    uint64_t end = spin_us > 0 ? cm_now_ns() + (uint64_t)spin_us * 1000u : 0;
#ifdef USE_EPOLL
    if (wep >= 0) {
        struct epoll_event evs[CM_XFER_MAX_LINKS * CM_XFER_MAX_SOCKS + 1];
        int k = 0;
        if (end)
            while ((k = epoll_wait(wep, evs, n, 0)) == 0 && cm_now_ns() < end) {
            }
        int spun = k > 0;
        if (k == 0) k = epoll_wait(wep, evs, n, (timeout_us + 999) / 1000);
        for (int i = 0; i < k; i++) ready[(*n_ready)++] = evs[i].data.fd;
        return k > 0 ? (spun ? 1 : 2) : 0;
    }
#endif
    struct pollfd pf[CM_XFER_MAX_LINKS * CM_XFER_MAX_SOCKS + 1];
    for (int i = 0; i < n; i++) pf[i] = (struct pollfd){fds[i], POLLIN, 0};
    int r = 0;
    if (end)
        while ((r = poll(pf, (nfds_t)n, 0)) == 0 && cm_now_ns() < end) {
        }
    int spun = r > 0;
    if (r == 0) {
#ifdef __linux__
        struct timespec ts = {timeout_us / 1000000, (long)(timeout_us % 1000000) * 1000};
        r = ppoll(pf, (nfds_t)n, &ts, NULL);
#else
        r = poll(pf, (nfds_t)n, timeout_us / 1000 + 1);
#endif
    }
    for (int i = 0; r > 0 && i < n; i++)
        if (pf[i].revents) ready[(*n_ready)++] = pf[i].fd;
    return r > 0 ? (spun ? 1 : 2) : 0;
}

/* An application thread waiting on `peer` receives for itself. It waits
 * on the peer's sockets (lent: the loop leaves their input alone) and on
 * b->pwake (the loop landed a frame for this peer meanwhile). On Linux
 * that wait is an epoll set kept per peer, so a wait costs one epoll_wait
 * rather than a poll that registers and unregisters every socket. */
static int tcp_progress(void *state, int peer, int timeout_us) {
    tcp_backend *b = state;
    enum { MAXW = CM_XFER_MAX_LINKS * CM_XFER_MAX_SOCKS + 1 };
    int fds[MAXW], ready[MAXW];
    int n = 0, n_ready = 0;
    if (timeout_us > 10000) timeout_us = 10000; /* bounds a missed wake-up */
    pthread_mutex_lock(&b->mu);
    tpeer *p = &b->peers[peer];
#ifdef USE_EPOLL
    if (p->up && p->wep < 0) {
        p->wep = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = b->pwake[0]};
        if (p->wep >= 0 && epoll_ctl(p->wep, EPOLL_CTL_ADD, b->pwake[0], &ev)) {
            close(p->wep);
            p->wep = -1;
        }
    }
#endif
    if (p->up)
        for (int l = 0; l < p->n_links; l++)
            for (int s = 0; s < p->n_socks; s++) {
                conn *c = p->links[l].socks[s];
                if (!c || c->state != CS_READY) continue;
#ifdef USE_EPOLL
                if (!c->in_wep && p->wep >= 0) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.fd = c->fd};
                    c->in_wep = epoll_ctl(p->wep, EPOLL_CTL_ADD, c->fd, &ev) == 0;
                }
#endif
                fds[n++] = c->fd;
                lend(b, c, 1);
            }
    if (!n) {
        pthread_mutex_unlock(&b->mu);
        return CM_EUNSUPPORTED;
    }
    fds[n++] = b->pwake[0];
    atomic_fetch_add(&p->n_progress, 1);
    int spin_us = p->rx_small && b->cfg->busy_poll_us > 0 && p->spin_skip-- <= 0 ? b->cfg->busy_poll_us : 0;
#ifdef USE_EPOLL
    int wep = p->wep;
#else
    int wep = -1;
#endif
    /* Direct busy-poll: when the last small frame came on socket dc, this
     * is the only waiter and dc has nothing staged or half-read, spin on
     * recv() into dc's staging buffer itself instead of on epoll_wait: the
     * reply is then taken by the call that finds it, one system call per
     * direction fewer than epoll_wait + recv. Frames on the peer's other
     * sockets wait at most spin_us (then the ordinary wait below sees
     * them). When not spinning (back-off, or busy_poll_us 0) the same
     * waiter sleeps in a blocking recv() on dc for at most DIRECT_BLOCK_US
     * instead of in epoll_wait, for the same saving; Linux only, where the
     * socket can be made blocking once (every other call on it passes
     * MSG_DONTWAIT) with SO_RCVTIMEO as the bound. */
    conn *dc = p->rx_last;
    int dfd = -1, block_us = 0;
    if ((spin_us > 0 || p->rx_small) && dc && dc->state == CS_READY && dc->lent && !dc->direct &&
        dc->rx_mode == RX_HDR && dc->hdr_got == 0 && dc->st_off == dc->st_len && atomic_load(&p->n_progress) == 1) {
#ifdef __linux__
        if (!spin_us && !dc->blocking) {
            struct timeval tv = {0, DIRECT_BLOCK_US};
            int fl = fcntl(dc->fd, F_GETFL);
            dc->blocking = fl >= 0 && !setsockopt(dc->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) &&
                                   !fcntl(dc->fd, F_SETFL, fl & ~O_NONBLOCK)
                               ? 1
                               : -1;
        }
        block_us = !spin_us && dc->blocking == 1 && timeout_us >= DIRECT_BLOCK_US ? DIRECT_BLOCK_US : 0;
#endif
        if (spin_us > 0 || block_us > 0) {
            dc->direct = 1;
            dfd = dc->fd;
        }
    }
    if (dfd < 0) dc = NULL;
    pthread_mutex_unlock(&b->mu);
    int r = 0;
    if (dc) {
        uint64_t end = cm_now_ns() + (uint64_t)spin_us * 1000u;
        ssize_t got;
        int err = 0;
        for (;;) {
            got = recv(dfd, dc->stage, STAGE_BYTES, block_us ? 0 : MSG_DONTWAIT);
            err = got < 0 ? errno : 0;
            if (block_us || got >= 0 || (err != EAGAIN && err != EWOULDBLOCK && err != EINTR) || cm_now_ns() >= end)
                break;
        }
        pthread_mutex_lock(&b->mu);
        dc->direct = 0;
        if (dc->state != CS_READY) {
            close(dfd); /* conn_kill left it to us */
            got = -1, err = EAGAIN; /* the conn is gone: wait as usual */
        } else if (got > 0) {
            dc->st_off = 0;
            dc->st_len = (size_t)got;
            dc->last_rx_ns = cm_now_ns();
            p->links[dc->link].bytes_received += (uint64_t)got;
            conn_read_ready(b, dc, 1);
        } else if (got == 0 || (err != EAGAIN && err != EWOULDBLOCK && err != EINTR)) {
            conn_fail(b, dc, CM_EPEER, got == 0 ? "connection closed by peer" : strerror(err));
        }
        if (got >= 0 || (err != EAGAIN && err != EWOULDBLOCK && err != EINTR)) {
            if (spin_us > 0) {
                p->spin_misses = 0;
                p->spin_skip = 0;
            }
            atomic_fetch_sub(&p->n_progress, 1);
            p->progress_ns = cm_now_ns();
            pthread_mutex_unlock(&b->mu);
            return CM_OK;
        }
        pthread_mutex_unlock(&b->mu);
        /* nothing came on dc: count a miss (when spinning) and sleep below */
        r = 0;
    } else {
        /* An fd closed (and even reused) meanwhile only causes a spurious
         * wake-up: sockets are looked up again under the lock below. The
         * epoll set is closed only by tcp_destroy, when no thread waits. */
        r = wait_ready(wep, fds, n, spin_us, timeout_us, ready, &n_ready);
    }
    if (dc) r = wait_ready(wep, fds, n, 0, timeout_us, ready, &n_ready) ? 3 : 0;
    if (spin_us > 0) {
        /* Busy-poll back-off (wait_ready): a spin that ended empty-handed
         * turns spinning off for the next 64, 128, ... 1024 waits; a
         * success resets that. */
        pthread_mutex_lock(&b->mu);
        if (r == 1) {
            p->spin_misses = 0;
            p->spin_skip = 0;
        } else {
            p->spin_misses += p->spin_misses < 4;
            p->spin_skip = 64 << p->spin_misses >> 1;
        }
        pthread_mutex_unlock(&b->mu);
    }
    pthread_mutex_lock(&b->mu);
    for (int i = 0; i < n_ready; i++) {
        if (ready[i] == b->pwake[0]) {
            cm_sock_wake_drain(b->pwake[0]);
            continue;
        }
        if (!p->up) continue;
        for (int l = 0; l < p->n_links; l++)
            for (int s = 0; s < p->n_socks; s++) {
                conn *c = p->links[l].socks[s];
                if (c && c->fd == ready[i] && c->state == CS_READY && !c->direct) conn_read_ready(b, c, 1);
            }
    }
    atomic_fetch_sub(&p->n_progress, 1);
    p->progress_ns = cm_now_ns();
    pthread_mutex_unlock(&b->mu);
    return CM_OK;
}

static int tcp_peer_links(void *state, int peer, cm_xfer_link_stats *out, int max, int *n) {
    tcp_backend *b = state;
    pthread_mutex_lock(&b->mu);
    tpeer *p = &b->peers[peer];
    *n = p->n_links;
    for (int l = 0; l < p->n_links && l < max; l++) {
        memset(&out[l], 0, sizeof out[l]);
        snprintf(out[l].addr, sizeof out[l].addr, "%s", p->links[l].addr);
        out[l].gbit_s_ewma = p->links[l].rate * 8 / 1e9;
        out[l].bytes_sent = p->links[l].bytes_sent;
        out[l].bytes_received = p->links[l].bytes_received;
    }
    pthread_mutex_unlock(&b->mu);
    return CM_OK;
}

const cm_xfer_backend_ops cm_xfer_tcp_ops = {
    .name = "tcp",
    .probe = NULL,
    .create = tcp_create,
    .destroy = tcp_destroy,
    .listen_addr = tcp_listen_addr,
    .connect = tcp_connect,
    .disconnect = tcp_disconnect,
    .mr_register = NULL,
    .mr_deregister = NULL,
    .send = tcp_send,
    .write = tcp_write,
    .recv_posted = NULL,
    .progress = tcp_progress,
    .peer_links = tcp_peer_links,
};
