/* fabric.c - the libfabric transfer backend (what AWS EFA speaks; runs here
 * over libfabric's software providers, e.g. "tcp;ofi_rxm", for tests).
 *
 * Shape
 *   Every link of a peer is a pair: an authenticated TCP side channel and a
 *   reliable-datagram endpoint (FI_EP_RDM) of its own, with its own
 *   completion queue and a one-entry address vector holding the remote
 *   endpoint. The side channel (sidechan.c, shared with the verbs backend)
 *   runs the cell-key challenge-response of wire.h (the same HELLO/PROOF
 *   exchange as the tcp backend) before anything else; only then do the two sides create their endpoints, swap
 *   endpoint addresses (fi_getname) over it, and insert each other. After
 *   that the side channel carries only heartbeats, and its EOF tells at once
 *   that the peer process died.
 *
 *     dial/accept TCP -> HELLO/PROOF (cell key) -> endpoint created, receive
 *     buffers posted -> ADDR swapped -> av_insert -> link READY -> peer up
 *     when all its links are READY.
 *
 * Data path
 *   write_imm  RMA writes (fi_writemsg) into the peer's region, whose key and
 *              address came in its descriptor. A write goes whole over one
 *              link; its last segment is an fi_writedata carrying the 32-bit
 *              immediate as remote CQ data, so the receiver sees exactly one
 *              FI_REMOTE_CQ_DATA completion per write and bumps the counter
 *              once. That completion must not overtake the other segments:
 *              when the provider orders writes on an endpoint (FI_ORDER_WAW)
 *              all segments are posted at once; otherwise the first n-1 are
 *              posted with FI_DELIVERY_COMPLETE and the last one only after
 *              they all completed (a software fence).
 *   send/recv  two-sided messages in fragments of at most FRAG_BYTES, each
 *              with a 16-byte header (magic, sequence, total, offset), into
 *              receive buffers the backend posts itself (RX_BUFS per link),
 *              copied into the buffer the application posted (or buffered
 *              by the core when none is). All messages of a peer go over
 *              link 0, and the provider must keep sends in order
 *              (FI_ORDER_SAS): a fragment out of sequence fails the peer.
 *
 *   FI_MR_LOCAL providers get the registration descriptor of every local
 *   buffer: sources are looked up by region (b->mrs), receive buffers and
 *   fragment headers are registered by the backend.
 *
 * Security
 *   Endpoint addresses are only learnt through the authenticated side
 *   channel. Regions get FI_REMOTE_WRITE only when registered with
 *   CM_XFER_MR_REMOTE_WRITE, with a random 64-bit key where the provider
 *   lets us choose keys; the provider checks key and bounds on every
 *   write. Unlike the tcp backend, the per-peer allowlist is enforced only
 *   by who was given the descriptor (the key), not per write. Receive
 *   completions from a source other than the link's peer are dropped when
 *   the provider reports sources (FI_SOURCE).
 *
 * Failure: side-channel EOF or error, peer_timeout_ms without a heartbeat,
 * or an error completion fails every link of the peer: its pending ops
 * complete with the error at once, its endpoints are closed by the progress
 * thread (which alone frees links, so nothing it polls disappears under it).
 *
 * Threads: one progress thread polls every link's completion queue (data
 * progress is manual on most software providers) and side channel; one
 * accept thread authenticates incoming connections one at a time. b->mu
 * (recursive) guards all backend state and may be held across core calls. */
#ifdef CM_HAVE_FABRIC
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/log.h"
#include "base/status.h"
#include "base/time.h"
#include "xfer/backend.h"
#include "xfer/sock.h"
#include "xfer/fabric_proto.h"
#include "xfer/sidechan.h"
#include "xfer/wire.h"

#define MAX_PEERS CM_SIDECHAN_MAX_PEERS
#define RX_BUFS 32
#define TICK_MS 1
#define CQ_BATCH 32
#define RXACC (FI_RECV | FI_READ | FI_WRITE)
#define TXACC (FI_SEND | FI_READ | FI_WRITE)

enum { CTX_RX = 1, CTX_TX };
/* link states: sidechan.h's */
enum { L_NEW = CM_SIDECHAN_NEW, L_READY = CM_SIDECHAN_READY, L_DEAD = CM_SIDECHAN_DEAD };
enum { FAB_RX_RECV = 1, FAB_RX_DISCARD, FAB_RX_HEAP };

struct flink;

typedef struct fctx {
    struct fi_context2 fi; /* first: libfabric hands back &fi as op_context */
    int type;
    struct flink *link;
    struct ftrack *track; /* CTX_TX */
    int idx;              /* CTX_RX: buffer index */
} fctx;

/* One op (or one message) in flight on a link. */
typedef struct ftrack {
    cm_xfer_op *op;     /* NULL once completed to the core (peer failed) */
    int outstanding;    /* provider completions still due */
    int pending_last;   /* fence mode: the imm-carrying segment is not posted yet */
    int status;
    uint8_t *hdrs;      /* SEND: one header per fragment */
    struct fid_mr *hdr_mr; /* FI_MR_LOCAL: hdrs registered */
    struct ftrack *prev, *next;
    fctx ctx[];         /* one per posted piece */
} ftrack;

typedef struct parked_rx {
    int idx;
    size_t len;
    uint32_t seq;
} parked_rx;

typedef struct flink {
    cm_sidechan_link base;  /* first: sidechan.c hands links back as &base */
    struct fab_backend *b;
    struct fid_ep *ep;
    struct fid_cq *cq;
    struct fid_av *av;
    int cq_fd;              /* wait fd of the cq, -1 when none */
    fi_addr_t remote;
    uint8_t *rxmem;         /* RX_BUFS * (CM_FABRIC_FRAG_HDR + CM_FABRIC_FRAG_BYTES) */
    struct fid_mr *rx_mr;   /* FI_MR_LOCAL only */
    fctx rxctx[RX_BUFS];
    /* message reassembly */
    uint32_t rx_seq, tx_seq;
    parked_rx parked[RX_BUFS]; /* fragments that completed ahead of their turn */
    int n_parked;
    int rx_active, rx_kind;
    uint8_t *rx_dst;
    size_t rx_cap, rx_total, rx_got;
    void *rx_token;
    ftrack *tracks;
    struct flink *next;     /* b->graveyard */
} flink;

typedef struct fmr {
    struct fid_mr *mr;
    const cm_xfer_mr *owner;
    struct fmr *next; /* b->mrs bucket */
} fmr;

#define MR_BUCKETS 256

typedef struct fab_backend {
    cm_xfer *x;
    const cm_xfer_config *cfg;
    pthread_mutex_t mu;
    struct fi_info *info; /* the chosen provider */
    struct fid_fabric *fabric;
    struct fid_domain *domain;
    int ordered;          /* provider orders writes (FI_ORDER_WAW) */
    int have_source;      /* FI_SOURCE granted */
    int virt_addr;        /* FI_MR_VIRT_ADDR: remote addresses are virtual */
    int prov_key;         /* FI_MR_PROV_KEY */
    int wait_fd;          /* cqs have FI_WAIT_FD */
    int mr_local;         /* FI_MR_LOCAL: local buffers need registration descriptors */
    fmr *mrs[MR_BUCKETS]; /* registered regions by address, for their descriptors */
    pthread_t thread;
    int thread_started;
    volatile int stop;
    _Atomic int n_progress; /* application threads polling in fab_progress */
    int wake[2];
    cm_sidechan side;     /* the side channel, the peers and their links */
    flink *graveyard;
} fab_backend;

/* ---- errors ---- */

static int fi_err(int status, const char *what, ssize_t ret) {
    return cm_errorf(status, "fabric: %s: %s", what, fi_strerror((int)-ret));
}

/* ---- ops ---- */

static void track_unlink(flink *l, ftrack *t) {
    if (t->prev) t->prev->next = t->next;
    else l->tracks = t->next;
    if (t->next) t->next->prev = t->prev;
}

/* Completes the op of a track to the core (once) and frees the track when
 * the provider owes it nothing more. */
static void track_settle(fab_backend *b, flink *l, ftrack *t) {
    if (t->op && t->outstanding == 0 && !t->pending_last) {
        cm_xfer_op *op = t->op;
        t->op = NULL;
        cm_xfer_core_op_done(b->x, op, t->status);
    }
    if (!t->op && t->outstanding == 0) {
        track_unlink(l, t);
        if (t->hdr_mr) fi_close(&t->hdr_mr->fid);
        free(t->hdrs);
        free(t);
    }
}

static ftrack *track_new(flink *l, cm_xfer_op *op, int n_ctx) {
    ftrack *t = calloc(1, sizeof *t + (size_t)n_ctx * sizeof(fctx));
    if (!t) return NULL;
    t->op = op;
    for (int i = 0; i < n_ctx; i++) t->ctx[i] = (fctx){.type = CTX_TX, .link = l, .track = t, .idx = i};
    t->next = l->tracks;
    if (l->tracks) l->tracks->prev = t;
    l->tracks = t;
    return t;
}

/* A key for a new registration: the provider's when it picks them, else
 * random (keys must differ within a domain; remote ones must be unguessable). */
static uint64_t new_key(const fab_backend *b) {
    uint64_t key = 0;
    if (b->prov_key) return 0;
    randombytes_buf(&key, sizeof key);
    size_t ks = b->info->domain_attr->mr_key_size;
    if (ks < 8) key &= ks ? (1ull << (8 * ks)) - 1 : 0;
    return key;
}

/* ---- links ---- */

static uint8_t *rx_buf(flink *l, int i) { return l->rxmem + (size_t)i * (CM_FABRIC_FRAG_HDR + CM_FABRIC_FRAG_BYTES); }

static int rx_post(flink *l, int i) {
    ssize_t r;
    void *desc = l->rx_mr ? fi_mr_desc(l->rx_mr) : NULL;
    do r = fi_recv(l->ep, rx_buf(l, i), CM_FABRIC_FRAG_HDR + CM_FABRIC_FRAG_BYTES, desc, FI_ADDR_UNSPEC, &l->rxctx[i].fi);
    while (r == -FI_EAGAIN && (fi_cq_read(l->cq, NULL, 0), 1));
    return r ? fi_err(CM_EIO, "fi_recv", r) : CM_OK;
}

static void wake_thread(void *owner) { cm_sock_wake(((fab_backend *)owner)->wake[1]); }

/* sidechan's link_kill: marks a link dead and fails what it holds; the
 * progress thread closes it. */
static void link_kill(void *owner, cm_sidechan_link *base, int status) {
    fab_backend *b = owner;
    flink *l = (flink *)base;
    if (l->base.state == L_DEAD) return;
    l->base.state = L_DEAD;
    if (l->rx_active) {
        if (l->rx_kind == FAB_RX_RECV || l->rx_kind == FAB_RX_DISCARD)
            cm_xfer_core_recv_end(b->x, l->rx_token, l->base.peer, status, 0);
        else if (l->rx_kind == FAB_RX_HEAP)
            free(l->rx_dst);
        l->rx_active = 0;
    }
    for (ftrack *t = l->tracks, *n; t; t = n) {
        n = t->next;
        if (t->op) {
            cm_xfer_op *op = t->op;
            t->op = NULL;
            t->pending_last = 0;
            cm_xfer_core_op_done(b->x, op, status);
        }
    }
    l->next = b->graveyard;
    b->graveyard = l;
    wake_thread(b);
}

/* Only the progress thread (or destroy, after it stopped) calls this. */
static void link_free(flink *l) {
    if (l->ep) fi_close(&l->ep->fid);
    if (l->av) fi_close(&l->av->fid);
    if (l->cq) fi_close(&l->cq->fid);
    if (l->rx_mr) fi_close(&l->rx_mr->fid);
    while (l->tracks) {
        ftrack *t = l->tracks;
        l->tracks = t->next;
        if (t->hdr_mr) fi_close(&t->hdr_mr->fid);
        free(t->hdrs);
        free(t);
    }
    if (l->base.fd >= 0) close(l->base.fd);
    free(l->rxmem);
    free(l);
}

/* Creates the endpoint of a link, its cq and av, and posts its receive
 * buffers. `local` is the side channel's local address: the endpoint binds
 * to the same interface, so it is reachable wherever the side channel is. */
static int link_open(fab_backend *b, flink *l, const struct sockaddr *local) {
    struct fi_info *hints = fi_dupinfo(b->info), *info = NULL;
    if (!hints) return CM_ENOMEM;
    char host[64] = "";
    if (local->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)local)->sin_addr, host, sizeof host);
    else if (local->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)local)->sin6_addr, host, sizeof host);
    free(hints->src_addr);
    hints->src_addr = NULL;
    hints->src_addrlen = 0;
    free(hints->dest_addr);
    hints->dest_addr = NULL;
    hints->dest_addrlen = 0;
    hints->addr_format = FI_FORMAT_UNSPEC;
    int r = host[0] ? fi_getinfo(FI_VERSION(1, 9), host, NULL, FI_SOURCE, hints, &info) : -FI_ENODATA;
    if (r) {
        info = NULL; /* not an IP provider (or no match): its default address */
    }
    fi_freeinfo(hints);
    struct fi_info *use = info ? info : b->info;
    int rc = CM_OK;
    struct fi_cq_attr cqa = {.format = FI_CQ_FORMAT_DATA, .size = 4096,
                             .wait_obj = b->wait_fd ? FI_WAIT_FD : FI_WAIT_NONE};
    if ((r = fi_cq_open(b->domain, &cqa, &l->cq, NULL))) {
        rc = fi_err(CM_EIO, "fi_cq_open", r);
        goto out;
    }
    l->cq_fd = -1;
    if (b->wait_fd && fi_control(&l->cq->fid, FI_GETWAIT, &l->cq_fd)) l->cq_fd = -1;
    struct fi_av_attr ava = {.type = FI_AV_TABLE, .count = 1};
    if ((r = fi_av_open(b->domain, &ava, &l->av, NULL))) {
        rc = fi_err(CM_EIO, "fi_av_open", r);
        goto out;
    }
    if ((r = fi_endpoint(b->domain, use, &l->ep, NULL))) {
        rc = fi_err(CM_EIO, "fi_endpoint", r);
        goto out;
    }
    if ((r = fi_ep_bind(l->ep, &l->cq->fid, FI_TRANSMIT | FI_RECV)) || (r = fi_ep_bind(l->ep, &l->av->fid, 0)) ||
        (r = fi_enable(l->ep))) {
        rc = fi_err(CM_EIO, "endpoint setup", r);
        goto out;
    }
    l->rxmem = malloc((size_t)RX_BUFS * (CM_FABRIC_FRAG_HDR + CM_FABRIC_FRAG_BYTES));
    if (!l->rxmem) {
        rc = CM_ENOMEM;
        goto out;
    }
    if (b->mr_local && (r = fi_mr_reg(b->domain, l->rxmem, (size_t)RX_BUFS * (CM_FABRIC_FRAG_HDR + CM_FABRIC_FRAG_BYTES),
                                      RXACC, 0, new_key(b), 0, &l->rx_mr, NULL))) {
        l->rx_mr = NULL;
        rc = fi_err(CM_EIO, "fi_mr_reg (receive buffers)", r);
        goto out;
    }
    for (int i = 0; i < RX_BUFS && !rc; i++) {
        l->rxctx[i] = (fctx){.type = CTX_RX, .link = l, .idx = i};
        rc = rx_post(l, i);
    }
out:
    if (info) fi_freeinfo(info);
    return rc;
}

/* Swaps endpoint addresses over the authenticated side channel. */
static int link_exchange(fab_backend *b, flink *l, uint64_t deadline) {
    uint8_t mine[CM_FABRIC_ADDR_MSG_BYTES], theirs[CM_FABRIC_ADDR_MSG_BYTES];
    uint8_t name[CM_FABRIC_ADDR_MAX];
    size_t len = sizeof name;
    int r = fi_getname(&l->ep->fid, name, &len);
    if (r) return fi_err(CM_EIO, "fi_getname", r);
    cm_fabric_addr_encode(name, len, mine);
    int rc = cm_sidechan_swap(l->base.fd, mine, theirs, sizeof mine, deadline);
    if (rc) return rc;
    size_t rlen;
    if ((rc = cm_fabric_addr_decode(theirs, name, &rlen))) return rc;
    (void)b;
    if (fi_av_insert(l->av, name, 1, &l->remote, 0, NULL) != 1)
        return cm_errorf(CM_ECONN, "fabric: %s: the peer's endpoint address is not usable here", l->base.addr);
    return CM_OK;
}

static flink *link_new(fab_backend *b, int fd, const char *addr) {
    flink *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->b = b;
    l->base.fd = fd;
    l->base.peer = -1;
    l->cq_fd = -1;
    l->base.last_rx_ns = l->base.last_tx_ns = cm_now_ns();
    snprintf(l->base.addr, sizeof l->base.addr, "%s", addr);
    return l;
}

/* ---- receive ---- */

static int on_fragment(fab_backend *b, flink *l, const uint8_t *buf, size_t len) {
    cm_fabric_frag f;
    int rc = cm_fabric_frag_decode(buf, len, l->rx_seq, l->rx_active, (uint32_t)l->rx_total, (uint32_t)l->rx_got, &f);
    if (rc) return rc;
    l->rx_seq++;
    if (!l->rx_active) {
        size_t cap = 0;
        l->rx_total = f.total;
        l->rx_got = 0;
        rc = cm_xfer_core_recv_begin(b->x, l->base.peer, &l->rx_dst, &cap, &l->rx_token);
        if (rc == CM_OK) {
            l->rx_kind = f.total > cap ? FAB_RX_DISCARD : FAB_RX_RECV;
        } else {
            l->rx_dst = malloc(f.total ? f.total : 1);
            if (!l->rx_dst) return cm_errorf(CM_ENOMEM, "no memory for a %u-byte message", f.total);
            l->rx_kind = FAB_RX_HEAP;
        }
        l->rx_active = 1;
    }
    if (l->rx_kind != FAB_RX_DISCARD && f.bytes) memcpy(l->rx_dst + f.offset, f.payload, f.bytes);
    l->rx_got += f.bytes;
    if (l->rx_got < l->rx_total) return CM_OK;
    l->rx_active = 0;
    switch (l->rx_kind) {
    case FAB_RX_RECV: cm_xfer_core_recv_end(b->x, l->rx_token, l->base.peer, CM_OK, l->rx_total); break;
    case FAB_RX_DISCARD: cm_xfer_core_recv_end(b->x, l->rx_token, l->base.peer, CM_ERANGE, 0); break;
    default: return cm_xfer_core_recv_deliver(b->x, l->base.peer, l->rx_dst, l->rx_total);
    }
    return CM_OK;
}

static int post_last_segment(fab_backend *b, flink *l, ftrack *t);

/* Handles one completion of link l; CM_OK or why the peer must fail. */
static int on_completion(fab_backend *b, flink *l, const struct fi_cq_data_entry *e, fi_addr_t src) {
    fctx *c = e->op_context;
    if ((e->flags & FI_REMOTE_CQ_DATA) && (e->flags & (FI_REMOTE_WRITE | FI_RMA))) {
        if (b->have_source && src != l->remote && src != FI_ADDR_NOTAVAIL)
            return cm_errorf(CM_EFORMAT, "remote write from an unknown source");
        l->base.last_rx_ns = cm_now_ns();
        cm_xfer_core_write_landed(b->x, l->base.peer, (uint32_t)e->data);
        if (c && c->type == CTX_RX) return rx_post(l, c->idx); /* FI_RX_CQ_DATA mode used a buffer */
        return CM_OK;
    }
    if (!c) return CM_OK;
    if (c->type == CTX_RX) {
        if (b->have_source && src != l->remote) {
            CM_LOGW("xfer: fabric: dropped a message from a source that is not this link's peer");
            return rx_post(l, c->idx);
        }
        l->base.last_rx_ns = cm_now_ns();
        l->base.bytes_received += e->len;
        const uint8_t *buf = rx_buf(l, c->idx);
        /* Buffers are matched in order, but a large fragment (a rendezvous
         * inside the provider) may complete after later small ones: park
         * early arrivals until their turn. */
        uint32_t seq = e->len >= CM_FABRIC_FRAG_HDR ? cm_get_u32(buf + 4) : l->rx_seq;
        if (seq != l->rx_seq) {
            if ((int32_t)(seq - l->rx_seq) < 0 || l->n_parked == RX_BUFS)
                return cm_errorf(CM_EFORMAT, "fragment %u arrived where %u was due (lost or repeated)", seq, l->rx_seq);
            l->parked[l->n_parked++] = (parked_rx){c->idx, e->len, seq};
            return CM_OK;
        }
        int rc = on_fragment(b, l, buf, e->len);
        if (!rc && l->base.state != L_DEAD) rc = rx_post(l, c->idx);
        for (int i = 0; !rc && i < l->n_parked && l->base.state != L_DEAD;) {
            if (l->parked[i].seq != l->rx_seq) {
                i++;
                continue;
            }
            parked_rx pr = l->parked[i];
            l->parked[i] = l->parked[--l->n_parked];
            rc = on_fragment(b, l, rx_buf(l, pr.idx), pr.len);
            if (!rc && l->base.state != L_DEAD) rc = rx_post(l, pr.idx);
            i = 0;
        }
        return rc;
    }
    ftrack *t = c->track;
    t->outstanding--;
    int rc = CM_OK;
    if (t->pending_last && t->outstanding == 0 && t->op && !t->status) {
        rc = post_last_segment(b, l, t);
        if (rc) t->status = rc, t->pending_last = 0;
    }
    if (rc) cm_sidechan_link_fail(&b->side, &l->base, CM_EPEER, cm_last_error(rc));
    track_settle(b, l, t);
    return CM_OK;
}

/* Reads what the link's cq holds; fails the peer on an error. Returns the
 * number of completions handled. */
static int link_drain(fab_backend *b, flink *l) {
    struct fi_cq_data_entry e[CQ_BATCH];
    fi_addr_t src[CQ_BATCH];
    int total = 0;
    while (l->base.state != L_DEAD) {
        ssize_t n = b->have_source ? fi_cq_readfrom(l->cq, e, CQ_BATCH, src) : fi_cq_read(l->cq, e, CQ_BATCH);
        if (n == -FI_EAGAIN) break;
        if (n == -FI_EAVAIL) {
            struct fi_cq_err_entry err = {0};
            if (fi_cq_readerr(l->cq, &err, 0) != 1) break;
            fctx *c = err.op_context;
            char why[256];
            snprintf(why, sizeof why, "%s failed: %s", c && c->type == CTX_TX ? "a transfer" : "a receive",
                     fi_strerror(err.err));
            /* The peer goes down first, so whoever sees the failed
             * completion also sees the peer down. */
            cm_sidechan_link_fail(&b->side, &l->base, CM_EPEER, why);
            if (c && c->type == CTX_TX) {
                ftrack *t = c->track;
                t->outstanding--;
                t->pending_last = 0;
                if (!t->status) t->status = CM_EPEER;
                track_settle(b, l, t);
            }
            break;
        }
        if (n < 0) {
            cm_sidechan_link_fail(&b->side, &l->base, CM_EPEER, fi_strerror((int)-n));
            break;
        }
        for (ssize_t i = 0; i < n && l->base.state != L_DEAD; i++) {
            int rc = on_completion(b, l, &e[i], b->have_source ? src[i] : FI_ADDR_NOTAVAIL);
            if (rc) {
                char why[400];
                snprintf(why, sizeof why, "bad message from peer: %s", cm_last_error(rc));
                cm_sidechan_link_fail(&b->side, &l->base, rc == CM_EFORMAT ? CM_EFORMAT : CM_EPEER, why);
            }
        }
        total += (int)n;
        if (n < CQ_BATCH) break;
    }
    return total;
}

/* Reads the side channel: heartbeats, BYE, EOF. */
static void link_side_read(fab_backend *b, flink *l) {
    uint8_t buf[64];
    for (;;) {
        size_t n;
        int rc = cm_sidechan_read(l->base.fd, buf, sizeof buf, &n);
        if (rc) {
            cm_sidechan_link_fail(&b->side, &l->base, rc, cm_last_error(rc));
            return;
        }
        if (!n) return;
        for (size_t i = 0; i < n; i++) {
            if (buf[i] == CM_FABRIC_SIDE_BYE) {
                cm_sidechan_link_fail(&b->side, &l->base, CM_EPEER, "peer closed the connection");
                return;
            }
            if (buf[i] != CM_FABRIC_SIDE_HEARTBEAT) {
                cm_sidechan_link_fail(&b->side, &l->base, CM_EFORMAT, "garbage on the side channel");
                return;
            }
        }
        l->base.last_rx_ns = cm_now_ns();
    }
}

/* ---- progress thread ---- */

static void tick(fab_backend *b, uint64_t now) {
    const uint64_t hb_ns = (uint64_t)b->cfg->heartbeat_ms * 1000000ull;
    for (int i = 0; i < MAX_PEERS; i++) {
        cm_sidechan_peer *p = &b->side.peers[i];
        if (!p->active) continue;
        for (int k = 0; k < CM_XFER_MAX_LINKS && p->active; k++) {
            flink *l = (flink *)p->links[k];
            if (!l || l->base.state != L_READY) continue;
            int rc = cm_sidechan_check_silence(now, l->base.last_rx_ns, b->cfg->peer_timeout_ms);
            if (!rc && now - l->base.last_tx_ns >= hb_ns) {
                uint8_t hb = CM_FABRIC_SIDE_HEARTBEAT;
                size_t sent;
                rc = cm_sidechan_post(l->base.fd, &hb, 1, &sent);
                l->base.last_tx_ns = now; /* a full socket buffer is no failure: the next tick tries again */
            }
            if (rc) {
                cm_sidechan_link_fail(&b->side, &l->base, rc, cm_last_error(rc));
                break;
            }
        }
    }
}

static void *progress_main(void *arg) {
    fab_backend *b = arg;
    struct pollfd pf[1 + 2 * MAX_PEERS * 2];
    flink *who[1 + 2 * MAX_PEERS * 2];
    uint64_t last_tick = cm_now_ns();
    while (!b->stop) {
        pthread_mutex_lock(&b->mu);
        while (b->graveyard) {
            flink *l = b->graveyard;
            b->graveyard = l->next;
            link_free(l);
        }
        int n = 0, busy = 0, need_spin = !b->wait_fd;
        pf[n] = (struct pollfd){b->wake[0], POLLIN, 0};
        who[n++] = NULL;
        struct fid *cqs[MAX_PEERS];
        int n_cq = 0;
        for (int i = 0; i < MAX_PEERS; i++) {
            cm_sidechan_peer *p = &b->side.peers[i];
            if (!p->active) continue;
            for (int k = 0; k < CM_XFER_MAX_LINKS; k++) {
                flink *l = (flink *)p->links[k];
                if (!l || l->base.state == L_DEAD) continue;
                busy += link_drain(b, l);
                if (!p->active) break;
                if (l->base.state == L_DEAD || n + 2 > (int)(sizeof pf / sizeof pf[0])) continue;
                pf[n] = (struct pollfd){l->base.fd, POLLIN, 0};
                who[n++] = l;
                if (l->cq_fd >= 0) {
                    pf[n] = (struct pollfd){l->cq_fd, POLLIN, 0};
                    who[n++] = NULL;
                    if (n_cq < MAX_PEERS) cqs[n_cq++] = &l->cq->fid;
                } else {
                    need_spin = 1;
                }
            }
        }
        uint64_t now = cm_now_ns();
        if (now - last_tick >= TICK_MS * 1000000ull) {
            tick(b, now);
            last_tick = now;
        }
        /* fi_trywait says whether sleeping on the wait fds is safe (nothing
         * left that only a cq read would progress). */
        int timeout = n > 1 ? TICK_MS : 50; /* idle engines (no links) wake rarely */
        if (atomic_load(&b->n_progress) > 0) timeout = TICK_MS; /* a waiter polls: do not fight it for the cores */
        else if (busy) timeout = 0;
        else if (need_spin) timeout = 1;
        else if (n_cq && fi_trywait(b->fabric, cqs, n_cq) != FI_SUCCESS) timeout = 0;
        pthread_mutex_unlock(&b->mu);
        int r = poll(pf, (nfds_t)n, timeout);
        if (r <= 0) continue;
        pthread_mutex_lock(&b->mu);
        if (pf[0].revents) cm_sock_wake_drain(b->wake[0]);
        for (int i = 1; i < n; i++)
            if (who[i] && pf[i].revents && who[i]->base.state != L_DEAD) link_side_read(b, who[i]);
        pthread_mutex_unlock(&b->mu);
    }
    return NULL;
}

/* ---- connection setup ---- */

/* sidechan's link_setup: an authenticated socket becomes a link with its
 * endpoint open and addresses swapped. */
static int link_setup(void *owner, int fd, const char *addr, uint64_t deadline, cm_sidechan_link **out) {
    fab_backend *b = owner;
    flink *l = link_new(b, fd, addr);
    if (!l) {
        close(fd);
        return CM_ENOMEM;
    }
    struct sockaddr_storage loc;
    socklen_t ll = sizeof loc;
    getsockname(fd, (struct sockaddr *)&loc, &ll);
    int rc = link_open(b, l, (struct sockaddr *)&loc);
    if (!rc) rc = link_exchange(b, l, deadline);
    if (rc) {
        link_free(l);
        return rc;
    }
    *out = &l->base;
    return CM_OK;
}

static void link_free_base(cm_sidechan_link *base) { link_free((flink *)base); }

static int fab_connect(void *state, int pid, const char *const *addrs, int n_addrs, int timeout_ms) {
    fab_backend *b = state;
    return cm_sidechan_connect(&b->side, pid, addrs, n_addrs, timeout_ms);
}

/* ---- data path ---- */

/* A READY link of an up peer: `which`, or with which < 0 the next one
 * round-robin. Whole writes go round-robin: the imm-carrying last segment
 * may only follow its own write's segments on the same endpoint (see the
 * top of the file). */
static int peer_link(fab_backend *b, int pid, int which, flink **out) {
    cm_sidechan_link *base;
    int rc = cm_sidechan_pick(&b->side, pid, which, &base);
    if (!rc) *out = (flink *)base;
    return rc;
}

/* Retries a post while the provider's queue is full, draining this link's
 * completions meanwhile; gives up after the peer timeout. */
#define POST_RETRY(l, call)                                                              \
    do {                                                                                 \
        uint64_t until_ = cm_now_ns() + (uint64_t)b->cfg->peer_timeout_ms * 1000000ull; \
        for (;;) {                                                                       \
            r = (call);                                                                  \
            if (r != -FI_EAGAIN) break;                                                  \
            link_drain(b, (l));                                                          \
            if ((l)->base.state == L_DEAD || cm_now_ns() > until_) break;                \
        }                                                                                \
    } while (0)

static void *local_desc(fab_backend *b, const cm_xfer_mr *mr) {
    if (!b->mr_local || !mr) return NULL;
    for (fmr *m = b->mrs[((uintptr_t)mr >> 4) % MR_BUCKETS]; m; m = m->next)
        if (m->owner == mr) return fi_mr_desc(m->mr);
    return NULL;
}

static uint64_t remote_addr(fab_backend *b, const cm_xfer_mr_desc *d, uint64_t off) {
    return b->virt_addr ? d->addr + off : off;
}

static int post_segment(fab_backend *b, flink *l, ftrack *t, int i, int last) {
    cm_xfer_op *op = t->op;
    const cm_xfer_seg *s = &op->segs[i];
    struct iovec iov = {(void *)s->src, s->bytes};
    struct fi_rma_iov rma = {remote_addr(b, op->dst, s->dst_off), s->bytes, op->dst->rkeys[0]};
    void *desc = local_desc(b, op->src_mr);
    struct fi_msg_rma m = {.msg_iov = &iov, .desc = desc ? &desc : NULL, .iov_count = s->bytes ? 1 : 0, .addr = l->remote,
                           .rma_iov = &rma, .rma_iov_count = 1, .context = &t->ctx[i].fi, .data = op->imm};
    /* The imm-carrying segment asks for delivery completion: the op then
     * completes once the peer placed it (a refused write comes back as an
     * error instead of a silent success). */
    uint64_t flags = last ? FI_REMOTE_CQ_DATA | FI_COMPLETION | FI_DELIVERY_COMPLETE
                          : FI_COMPLETION | (b->ordered ? 0 : FI_DELIVERY_COMPLETE);
    ssize_t r;
    t->outstanding++;
    POST_RETRY(l, fi_writemsg(l->ep, &m, flags));
    if (r) {
        t->outstanding--;
        return l->base.state == L_DEAD ? CM_EPEER : fi_err(CM_EPEER, "fi_writemsg", r);
    }
    l->base.bytes_sent += s->bytes;
    return CM_OK;
}

static int post_last_segment(fab_backend *b, flink *l, ftrack *t) {
    t->pending_last = 0;
    return post_segment(b, l, t, t->op->n_segs - 1, 1);
}

static int fab_write(void *state, cm_xfer_op *op) {
    fab_backend *b = state;
    pthread_mutex_lock(&b->mu);
    flink *l = NULL;
    int rc = peer_link(b, op->peer, -1, &l);
    if (rc) goto out;
    if (op->dst->n_rkeys < 1) {
        rc = cm_errorf(CM_EINVAL, "xfer: region descriptor without a key (was it made by a fabric engine?)");
        goto out;
    }
    ftrack *t = track_new(l, op, op->n_segs);
    if (!t) {
        rc = CM_ENOMEM;
        goto out;
    }
    /* Taken from here: failures complete the op through the track. */
    for (int i = 0; i < op->n_segs - 1 && !t->status; i++) {
        int e = post_segment(b, l, t, i, 0);
        if (e) t->status = e;
    }
    if (!t->status && l->base.state != L_DEAD) {
        if (b->ordered || t->outstanding == 0) {
            int e = post_segment(b, l, t, op->n_segs - 1, 1);
            if (e) t->status = e;
        } else {
            t->pending_last = 1;
        }
    }
    if (t->status && l->base.state != L_DEAD) {
        /* peer down first (it completes the op), so the failed completion
         * is never seen with the peer still up */
        t->pending_last = 0;
        int st = t->status;
        cm_sidechan_link_fail(&b->side, &l->base, st, cm_last_error(st));
    }
    track_settle(b, l, t);
out:
    pthread_mutex_unlock(&b->mu);
    return rc;
}

static int fab_send(void *state, cm_xfer_op *op) {
    fab_backend *b = state;
    pthread_mutex_lock(&b->mu);
    flink *l = NULL;
    int rc = peer_link(b, op->peer, 0, &l);
    if (rc) goto out;
    const cm_xfer_seg *s = &op->segs[0];
    int n_frags = s->bytes ? (int)((s->bytes + CM_FABRIC_FRAG_BYTES - 1) / CM_FABRIC_FRAG_BYTES) : 1;
    ftrack *t = track_new(l, op, n_frags);
    if (!t || !(t->hdrs = malloc((size_t)n_frags * CM_FABRIC_FRAG_HDR))) {
        if (t) {
            t->op = NULL;
            track_settle(b, l, t);
        }
        rc = CM_ENOMEM;
        goto out;
    }
    void *descs[2] = {NULL, local_desc(b, op->src_mr)};
    if (b->mr_local) {
        int e = fi_mr_reg(b->domain, t->hdrs, (size_t)n_frags * CM_FABRIC_FRAG_HDR, TXACC, 0, new_key(b), 0, &t->hdr_mr, NULL);
        if (e) t->hdr_mr = NULL, t->status = fi_err(CM_EIO, "fi_mr_reg (headers)", e);
        else descs[0] = fi_mr_desc(t->hdr_mr);
    }
    for (int i = 0; i < n_frags && !t->status && l->base.state != L_DEAD; i++) {
        uint32_t off = (uint32_t)i * CM_FABRIC_FRAG_BYTES;
        uint32_t len = s->bytes - off < CM_FABRIC_FRAG_BYTES ? s->bytes - off : CM_FABRIC_FRAG_BYTES;
        uint8_t *h = t->hdrs + (size_t)i * CM_FABRIC_FRAG_HDR;
        cm_fabric_frag_encode(h, l->tx_seq++, s->bytes, off);
        struct iovec iov[2] = {{h, CM_FABRIC_FRAG_HDR}, {(void *)(s->src + off), len}};
        ssize_t r;
        t->outstanding++;
        POST_RETRY(l, fi_sendv(l->ep, iov, b->mr_local ? descs : NULL, len ? 2 : 1, l->remote, &t->ctx[i].fi));
        if (r) {
            t->outstanding--;
            t->status = l->base.state == L_DEAD ? CM_EPEER : fi_err(CM_EPEER, "fi_sendv", r);
        } else {
            l->base.bytes_sent += len;
        }
    }
    if (t->status && l->base.state != L_DEAD) {
        int st = t->status;
        cm_sidechan_link_fail(&b->side, &l->base, st, cm_last_error(st)); /* the message stream is broken */
    }
    track_settle(b, l, t);
out:
    pthread_mutex_unlock(&b->mu);
    return rc;
}

static int fab_progress(void *state, int peer, int timeout_us) {
    fab_backend *b = state;
    uint64_t until = cm_now_ns() + (uint64_t)(timeout_us > 2000 ? 2000 : timeout_us) * 1000ull;
    atomic_fetch_add(&b->n_progress, 1);
    do {
        pthread_mutex_lock(&b->mu);
        cm_sidechan_peer *p = &b->side.peers[peer];
        if (!p->up) {
            pthread_mutex_unlock(&b->mu);
            atomic_fetch_sub(&b->n_progress, 1);
            return CM_EUNSUPPORTED;
        }
        int got = 0, n_fd = 0;
        struct pollfd pf[CM_XFER_MAX_LINKS];
        struct fid *cqs[CM_XFER_MAX_LINKS];
        for (int i = 0; i < p->n_links && p->up; i++) {
            flink *l = (flink *)p->links[i];
            if (!l || l->base.state != L_READY) continue;
            got += link_drain(b, l);
            if (l->base.state == L_READY && l->cq_fd >= 0) {
                pf[n_fd] = (struct pollfd){l->cq_fd, POLLIN, 0};
                cqs[n_fd++] = &l->cq->fid;
            }
        }
        /* Sleep on the cq's wait fd when the provider says that is safe: on
         * a loaded machine a sleeper is woken sooner than a spinner is
         * scheduled again. */
        int can_sleep = !got && n_fd && fi_trywait(b->fabric, cqs, n_fd) == FI_SUCCESS;
        pthread_mutex_unlock(&b->mu);
        if (got) break;
        if (can_sleep) {
            uint64_t now = cm_now_ns();
            int ms = now < until ? (int)((until - now) / 1000000ull) + 1 : 0;
            poll(pf, (nfds_t)n_fd, ms);
        } else {
            sched_yield();
        }
    } while (cm_now_ns() < until);
    atomic_fetch_sub(&b->n_progress, 1);
    return CM_OK;
}

/* ---- regions ---- */

static int fab_mr_register(void *state, cm_xfer_mr *mr, cm_xfer_mr_desc *desc, void **mr_state) {
    fab_backend *b = state;
    fmr *m = calloc(1, sizeof *m);
    if (!m) return CM_ENOMEM;
    unsigned flags = cm_xfer_mr_flags(mr);
    uint64_t access = FI_SEND | FI_RECV | FI_WRITE | FI_READ;
    if (flags & CM_XFER_MR_REMOTE_WRITE) access |= FI_REMOTE_WRITE;
    uint64_t key = new_key(b);
    void *base = cm_xfer_mr_base(mr);
    size_t bytes = cm_xfer_mr_bytes(mr);
    static uint8_t dummy[8];
    int r = fi_mr_reg(b->domain, bytes ? base : dummy, bytes ? bytes : 1, access, 0, key, 0, &m->mr, NULL);
    if (r) {
        free(m);
        return fi_err(CM_EIO, "fi_mr_reg", r);
    }
    m->owner = mr;
    pthread_mutex_lock(&b->mu);
    fmr **bucket = &b->mrs[((uintptr_t)mr >> 4) % MR_BUCKETS];
    m->next = *bucket;
    *bucket = m;
    pthread_mutex_unlock(&b->mu);
    desc->n_rkeys = 1;
    desc->rkeys[0] = fi_mr_key(m->mr);
    desc->addr = b->virt_addr ? (uint64_t)(uintptr_t)(bytes ? base : dummy) : 0;
    *mr_state = m;
    return CM_OK;
}

static void fab_mr_deregister(void *state, cm_xfer_mr *mr, void *mr_state) {
    fab_backend *b = state;
    fmr *m = mr_state;
    if (!m) return;
    pthread_mutex_lock(&b->mu);
    for (fmr **pm = &b->mrs[((uintptr_t)mr >> 4) % MR_BUCKETS]; *pm; pm = &(*pm)->next)
        if (*pm == m) {
            *pm = m->next;
            break;
        }
    pthread_mutex_unlock(&b->mu);
    if (m->mr) fi_close(&m->mr->fid);
    free(m);
}

/* ---- create / destroy ---- */

/* Providers that can only reach this host, or are too slow to be useful,
 * are taken only when FI_PROVIDER names them. */
static int provider_forced(void) {
    const char *e = getenv("FI_PROVIDER");
    return e && *e;
}

static int provider_usable(const struct fi_info *fi) {
    const char *name = fi->fabric_attr->prov_name;
    if (provider_forced()) return 1;
    return !strstr(name, "shm") && strcmp(name, "sockets") && !strstr(name, "udp") && !strstr(name, "ofi_rxd") &&
           !strstr(name, "mrail");
}

static struct fi_info *make_hints(void) {
    struct fi_info *h = fi_allocinfo();
    if (!h) return NULL;
    h->caps = FI_MSG | FI_RMA | FI_WRITE | FI_REMOTE_WRITE | FI_SEND | FI_RECV;
    h->mode = FI_CONTEXT | FI_CONTEXT2 | FI_RX_CQ_DATA;
    h->ep_attr->type = FI_EP_RDM;
    h->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
    h->domain_attr->threading = FI_THREAD_SAFE;
    h->tx_attr->msg_order = FI_ORDER_SAS;
    h->rx_attr->msg_order = FI_ORDER_SAS;
    return h;
}

static int choose_provider(struct fi_info **out, char *why, size_t cap) {
    struct fi_info *hints = make_hints(), *list = NULL;
    if (!hints) return CM_ENOMEM;
    int r = fi_getinfo(FI_VERSION(1, 9), NULL, NULL, 0, hints, &list);
    fi_freeinfo(hints);
    if (r) {
        snprintf(why, cap, "no libfabric provider offers reliable datagrams with RMA and ordered sends (%s)%s",
                 fi_strerror(-r), provider_forced() ? "; check FI_PROVIDER" : "");
        return CM_EUNSUPPORTED;
    }
    /* libfabric lists hardware providers first; among the software ones
     * "tcp;ofi_rxm" had steadier latency here than "net". */
    struct fi_info *pick = NULL;
    for (int pass = 0; pass < 2 && !pick; pass++)
        for (struct fi_info *fi = list; fi && !pick; fi = fi->next)
            if (fi->domain_attr->cq_data_size >= 4 && provider_usable(fi) &&
                (pass || strncmp(fi->fabric_attr->prov_name, "net", 3)))
                pick = fi;
    if (!pick) {
        snprintf(why, cap, "no libfabric provider here carries 4 bytes of remote CQ data between hosts%s",
                 provider_forced() ? " (FI_PROVIDER is set)" : "");
        fi_freeinfo(list);
        return CM_EUNSUPPORTED;
    }
    if (out) *out = fi_dupinfo(pick);
    fi_freeinfo(list);
    return out && !*out ? CM_ENOMEM : CM_OK;
}

static int fab_probe(char *why, size_t cap) { return choose_provider(NULL, why, cap); }

static void fab_destroy(void *state);

static int fab_create(cm_xfer *x, const cm_xfer_config *cfg, void **state) {
    fab_backend *b = calloc(1, sizeof *b);
    if (!b) return CM_ENOMEM;
    b->x = x;
    b->cfg = cfg;
    b->wake[0] = b->wake[1] = -1;
    b->side = (cm_sidechan){.backend = "fabric", .key = &cfg->key, .instance = cm_xfer_core_instance(x),
                            .name = cm_xfer_core_name(x), .peer_timeout_ms = cfg->peer_timeout_ms, .x = x, .owner = b,
                            .mu = &b->mu, .bye = {CM_FABRIC_SIDE_BYE}, .bye_bytes = 1, .link_setup = link_setup,
                            .link_free = link_free_base, .link_kill = link_kill, .wake = wake_thread};
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&b->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    char why[256] = "";
    int rc = choose_provider(&b->info, why, sizeof why);
    if (rc) {
        rc = cm_errorf(rc, "fabric: %s; use --backend tcp", why);
        goto fail;
    }
    int r = fi_fabric(b->info->fabric_attr, &b->fabric, NULL);
    if (!r) r = fi_domain(b->fabric, b->info, &b->domain, NULL);
    if (r) {
        rc = fi_err(CM_EUNSUPPORTED, "opening the fabric/domain", r);
        goto fail;
    }
    uint64_t order = b->info->tx_attr->msg_order;
    b->ordered = (order & FI_ORDER_WAW) != 0;
    b->have_source = (b->info->caps & FI_SOURCE) != 0;
    b->virt_addr = (b->info->domain_attr->mr_mode & (FI_MR_VIRT_ADDR | FI_MR_BASIC)) != 0;
    b->prov_key = (b->info->domain_attr->mr_mode & (FI_MR_PROV_KEY | FI_MR_BASIC)) != 0;
    /* CELLM_FABRIC_MR_LOCAL=1 takes the FI_MR_LOCAL path on providers that do
     * not need it (the tests use it to run that path here). */
    const char *force_local = getenv("CELLM_FABRIC_MR_LOCAL");
    b->mr_local = (b->info->domain_attr->mr_mode & (FI_MR_LOCAL | FI_MR_BASIC)) != 0 ||
                  (force_local && !strcmp(force_local, "1"));
    {
        /* Whether cqs can sleep on a file descriptor (else the progress
         * thread polls every millisecond while links exist). */
        struct fi_cq_attr cqa = {.format = FI_CQ_FORMAT_DATA, .size = 16, .wait_obj = FI_WAIT_FD};
        struct fid_cq *cq;
        if (fi_cq_open(b->domain, &cqa, &cq, NULL) == 0) {
            int fd = -1;
            b->wait_fd = fi_control(&cq->fid, FI_GETWAIT, &fd) == 0 && fd >= 0;
            fi_close(&cq->fid);
        }
    }
    CM_LOGI("xfer: fabric backend on provider %s (%s writes%s)", b->info->fabric_attr->prov_name,
            b->ordered ? "ordered" : "fenced", b->wait_fd ? "" : ", polling");
    if ((rc = cm_sock_wake_open(b->wake))) goto fail;
    if ((rc = cm_sidechan_start(&b->side, cfg->listen, &b->thread, &b->thread_started, progress_main, b))) goto fail;
    *state = b;
    return CM_OK;
fail:
    fab_destroy(b);
    return rc;
}

static void fab_destroy(void *state) {
    fab_backend *b = state;
    if (!b) return;
    b->stop = 1;
    cm_sidechan_stop(&b->side); /* no new links from here on */
    if (b->thread_started) {
        wake_thread(b);
        pthread_join(b->thread, NULL);
    }
    pthread_mutex_lock(&b->mu);
    cm_sidechan_close_peers(&b->side);
    while (b->graveyard) {
        flink *l = b->graveyard;
        b->graveyard = l->next;
        link_free(l);
    }
    pthread_mutex_unlock(&b->mu);
    if (b->domain) fi_close(&b->domain->fid);
    if (b->fabric) fi_close(&b->fabric->fid);
    if (b->info) fi_freeinfo(b->info);
    cm_sock_wake_close(b->wake);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

static int fab_listen_addr(void *state, char *buf, size_t cap) {
    return cm_sidechan_listen_addr(&((fab_backend *)state)->side, buf, cap);
}

static void fab_disconnect(void *state, int peer, int status) {
    cm_sidechan_disconnect(&((fab_backend *)state)->side, peer, status);
}

static int fab_peer_links(void *state, int peer, cm_xfer_link_stats *out, int max, int *n) {
    return cm_sidechan_peer_links(&((fab_backend *)state)->side, peer, out, max, n);
}

const cm_xfer_backend_ops cm_xfer_fabric_ops = {
    .name = "fabric",
    .probe = fab_probe,
    .create = fab_create,
    .destroy = fab_destroy,
    .listen_addr = fab_listen_addr,
    .connect = fab_connect,
    .disconnect = fab_disconnect,
    .mr_register = fab_mr_register,
    .mr_deregister = fab_mr_deregister,
    .send = fab_send,
    .write = fab_write,
    .recv_posted = NULL,
    .progress = fab_progress,
    .peer_links = fab_peer_links,
};

#else
/* Built without libfabric: the backend is absent from backends.c. */
typedef int cm_fabric_not_built;
#endif
