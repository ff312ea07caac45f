/* verbs.c - the libibverbs transfer backend (RoCE, InfiniBand, Apple's RDMA
 * over Thunderbolt 5).
 *
 * Status: the data path is written and compiles; its device-free parts
 * (verbs_plan.c, verbs_proto.c) are unit-tested, but it has NOT been run
 * against an RDMA device: the machines it was written on have none and
 * cannot make one. It is used only when asked for (--backend verbs).
 *
 * Shape (mirrors fabric.c)
 *   Every link of a peer is a pair: an authenticated TCP side channel and a
 *   connected queue pair of its own, with its own completion queue (send
 *   and receive) and completion channel. The side channel (sidechan.c,
 *   shared with fabric) runs the cell-key challenge-response of wire.h
 *   first; only then do the two sides create their queue pairs, post their
 *   receive buffers, and swap queue-pair info (verbs_proto.h) over it.
 *
 *     dial/accept TCP -> HELLO/PROOF (cell key) -> QP created (INIT),
 *     receives posted -> QP info swapped -> RTR -> RTS -> 'R' swapped (both
 *     sides can receive) -> link READY -> peer up when all links are READY
 *
 *   After that the side channel carries 5-byte records: heartbeats (with the
 *   count of frames sent), receive credits, goodbye. Its EOF tells at once
 *   that the peer process died.
 *
 * Queue-pair type: RC where the device creates RC queue pairs, else UC
 * (Apple's Thunderbolt RDMA offers UC only); CELLM_VERBS_QP=rc|uc forces
 * one. Both ends must use the same type (the QP info says which).
 *
 * Data path
 *   RC write_imm  one IBV_WR_RDMA_WRITE per segment into the peer's region
 *                 (address and rkey from its descriptor), the last one
 *                 IBV_WR_RDMA_WRITE_WITH_IMM carrying the caller's imm. RC
 *                 executes a QP's requests in order, so the peer's
 *                 IBV_WC_RECV_RDMA_WITH_IMM completion means the whole write
 *                 landed: one cm_xfer_core_write_landed per write. A write
 *                 goes whole over one link (round-robin over links).
 *   UC write_imm  two-sided: the write is cut into frames (40-byte header +
 *                 payload, the peer's frame size) sent as IBV_WR_SEND into
 *                 receive buffers the peer posted; the receiver checks each
 *                 frame through cm_xfer_core_region_target, copies it in,
 *                 and bumps the counter after the write's last frame.
 *   send/recv     the same frames, as message fragments, always on link 0
 *                 (so messages keep their order), on RC and UC alike.
 *   A frame goes out as two gather entries (its header from a registered
 *   slot, its payload from the caller's region); on a device whose QPs take
 *   one entry only, the payload is copied into the slot behind the header.
 *
 * Flow control: each link posts at most sq_cap send work requests (every
 * one signaled, so completions free slots in order), and sends a frame or a
 * write-with-immediate only while it holds a credit for one of the peer's
 * posted receives. Credits come back over the side channel, batched. Ops
 * that cannot be posted wait in the link's FIFO; completions and credits
 * resume it. Nothing is ever posted beyond what the queues hold.
 *
 * Unreliable links (UC): every frame carries the link's frame sequence; a gap
 * fails the peer (UC drops a damaged message and does not retransmit), and
 * a heartbeat's count of frames sent catches a loss at the end of a burst.
 *
 * Security: queue-pair info is only learnt over the authenticated side
 * channel. Regions get IBV_ACCESS_REMOTE_WRITE only when registered with
 * CM_XFER_MR_REMOTE_WRITE and only on RC links (UC copies frames in through
 * the core's checks). On RC the NIC checks rkey and bounds; the per-peer
 * allowlist is enforced only by who was given the descriptor, as in fabric.
 *
 * Failure: side-channel EOF or garbage, peer_timeout_ms without a record, an
 * error completion, a lost frame: the peer fails, its QPs go to the error
 * state at once (the NIC stops touching application memory), every op it
 * owned completes with the error, and the progress thread (which alone frees
 * links) destroys QP, CQ, channel and buffers in that order.
 *
 * Threads: one progress thread polls every link's CQ, completion channel and
 * side channel; one accept thread authenticates incoming connections one at
 * a time; a thread waiting on a peer's counters polls that peer's CQs too
 * (verbs_progress). b->mu (recursive) guards all backend state and may be held across
 * core calls (backend.h rule 6). */
#ifdef CM_HAVE_VERBS
#include <arpa/inet.h>
#include <errno.h>
#include <infiniband/verbs.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/log.h"
#include "base/status.h"
#include "base/time.h"
#include "xfer/backend.h"
#include "xfer/sidechan.h"
#include "xfer/sock.h"
#include "xfer/verbs_plan.h"
#include "xfer/verbs_proto.h"
#include "xfer/wire.h"

#define MAX_PEERS CM_SIDECHAN_MAX_PEERS
#define TICK_MS 1
#define CQ_BATCH 32
#define SQ_DEPTH 256
#define RC_FRAME_BYTES (16u << 10)
#define RC_RX_DEPTH 256
#define UC_FRAME_BYTES 4096u /* what Apple's stack uses: 4 KiB frames */
#define UC_RX_DEPTH 512
#define HDR_SLOT 64 /* bytes per frame-header slot (one per send work request) */
#define SIDE_OUT_CAP 320
#define MAX_GIDS 256
#define WRID_RECV (1ull << 63)

/* link states: sidechan.h's */
enum { L_NEW = CM_SIDECHAN_NEW, L_READY = CM_SIDECHAN_READY, L_DEAD = CM_SIDECHAN_DEAD };
enum { RX_RECV = 1, RX_DISCARD, RX_HEAP };

/* One op in a link's FIFO. */
typedef struct vjob {
    cm_xfer_op *op;  /* NULL once completed to the core */
    int kind;        /* CM_VERBS_JOB_* */
    cm_verbs_cursor cur;
    uint32_t posted, done; /* work requests posted / completed */
    uint32_t lkey;   /* of the source region */
    uint64_t msg_seq;
    struct vjob *next;
} vjob;

typedef struct vlink {
    cm_sidechan_link base; /* first: sidechan.c hands links back as &base */
    struct vb *b;
    int qpt; /* CM_VERBS_QPT_* */
    struct ibv_comp_channel *ch;
    struct ibv_cq *cq;
    struct ibv_qp *qp;
    uint32_t psn;
    int gid_index, global;
    cm_verbs_qp_info remote;
    uint32_t rx_depth, frame_bytes; /* ours */
    uint8_t *rxmem;
    struct ibv_mr *rx_mr;
    uint8_t *hdrs; /* sq_cap slots of slot_bytes: a frame header, or (one_sge) a whole frame */
    uint32_t slot_bytes;
    struct ibv_mr *hdr_mr;
    vjob **ring;   /* job of each posted send work request, by slot */
    uint32_t sq_cap, ring_head, ring_tail;
    cm_verbs_fc fc;
    cm_verbs_owed owed;
    cm_verbs_rx_stream rxs;
    cm_verbs_loss loss;
    uint32_t frames_sent;
    uint64_t msg_seq_tx;
    vjob *jobs, *jobs_last, *post_cur; /* FIFO oldest first; first job not fully posted */
    /* message being received */
    int rx_active, rx_kind;
    uint8_t *rx_dst;
    size_t rx_total;
    void *rx_token;
    cm_verbs_side_rx side_rx;
    uint8_t side_out[SIDE_OUT_CAP];
    size_t side_out_len;
    struct vlink *next; /* b->graveyard */
} vlink;

typedef struct vmr {
    struct ibv_mr *mr;
    const cm_xfer_mr *owner;
    uint8_t *dummy; /* an empty region registers a private scrap instead */
    struct vmr *next;
} vmr;

#define MR_BUCKETS 256

/* The device side, shared by probe (opened and closed at once) and create. */
typedef struct vdev {
    struct ibv_context *ctx;
    struct ibv_pd *pd;
    int port;
    struct ibv_port_attr pa;
    struct ibv_device_attr da;
    int qpt;
    int one_sge; /* QPs take one send gather entry only */
    char name[64];
} vdev;

typedef struct vb {
    cm_xfer *x;
    const cm_xfer_config *cfg;
    pthread_mutex_t mu;
    vdev dev;
    int ethernet;          /* RoCE: addresses are GIDs, GRH always */
    int gid_forced;        /* CELLM_VERBS_GID_INDEX, else -1 */
    uint32_t sq_depth, rx_depth, frame_bytes;
    vmr *mrs[MR_BUCKETS];
    pthread_t thread;
    int thread_started;
    volatile int stop;
    int wake[2];
    cm_sidechan side;      /* the side channel, the peers and their links */
    vlink *graveyard;
    struct pollfd pf[1 + 2 * MAX_PEERS * CM_XFER_MAX_LINKS];
    vlink *who[1 + 2 * MAX_PEERS * CM_XFER_MAX_LINKS];
} vb;

static int link_pump(vb *b, vlink *l);

/* ---- device ---- */

static int env_int(const char *name, int dflt) {
    const char *e = getenv(name);
    if (!e || !*e) return dflt;
    char *end;
    long v = strtol(e, &end, 10);
    return *end || v < 0 || v > 65535 ? dflt : (int)v;
}

/* Whether a QP of this type with n_sge send gather entries can be created
 * (what the device supports; Apple's stack has UC only). Nothing is left
 * behind. */
static int qp_type_works(vdev *d, enum ibv_qp_type t, int n_sge) {
    struct ibv_cq *cq = ibv_create_cq(d->ctx, 4, NULL, NULL, 0);
    if (!cq) return 0;
    struct ibv_qp_init_attr ia = {.send_cq = cq, .recv_cq = cq, .qp_type = t, .sq_sig_all = 1,
                                  .cap = {.max_send_wr = 1, .max_recv_wr = 1, .max_send_sge = (uint32_t)n_sge, .max_recv_sge = 1}};
    struct ibv_qp *qp = ibv_create_qp(d->pd, &ia);
    if (qp) ibv_destroy_qp(qp);
    ibv_destroy_cq(cq);
    return qp != NULL;
}

static void dev_close(vdev *d) {
    if (d->pd) ibv_dealloc_pd(d->pd);
    if (d->ctx) ibv_close_device(d->ctx);
    d->pd = NULL;
    d->ctx = NULL;
}

/* Opens the device ($CELLM_VERBS_DEVICE or the first), checks its port
 * ($CELLM_VERBS_PORT or 1) is active, and picks the queue-pair type. On
 * failure a sentence for the user in why and nothing left open. */
static int dev_open(vdev *d, char *why, size_t cap) {
    memset(d, 0, sizeof *d);
    int n = 0;
    errno = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    int err = errno;
    if (!list || n <= 0) {
        if (list) ibv_free_device_list(list);
        if (!list && err && err != ENODEV)
            snprintf(why, cap, "no RDMA device found (ibv_get_device_list is empty; the system says: %s); use --backend tcp",
                     strerror(err));
        else
            snprintf(why, cap, "no RDMA device found (ibv_get_device_list is empty); use --backend tcp");
        return CM_EUNSUPPORTED;
    }
    const char *want = getenv("CELLM_VERBS_DEVICE");
    struct ibv_device *dev = NULL;
    for (int i = 0; i < n && !dev; i++)
        if (!want || !*want || !strcmp(ibv_get_device_name(list[i]), want)) dev = list[i];
    if (!dev) {
        snprintf(why, cap, "no RDMA device named %s (CELLM_VERBS_DEVICE; this machine has %d, the first is %s)", want, n,
                 ibv_get_device_name(list[0]));
        ibv_free_device_list(list);
        return CM_EUNSUPPORTED;
    }
    snprintf(d->name, sizeof d->name, "%s", ibv_get_device_name(dev));
    d->ctx = ibv_open_device(dev);
    err = errno;
    ibv_free_device_list(list); /* an opened context outlives the list */
    if (!d->ctx) {
        snprintf(why, cap, "cannot open RDMA device %s: %s", d->name, strerror(err));
        return CM_EUNSUPPORTED;
    }
    d->port = env_int("CELLM_VERBS_PORT", 1);
    int r = ibv_query_device(d->ctx, &d->da);
    if (!r) r = ibv_query_port(d->ctx, (uint8_t)d->port, &d->pa);
    if (r) {
        snprintf(why, cap, "cannot query RDMA device %s port %d: %s", d->name, d->port, strerror(r));
        goto fail;
    }
    if (d->pa.state != IBV_PORT_ACTIVE) {
        snprintf(why, cap, "no usable RDMA device: %s port %d is %s (CELLM_VERBS_PORT picks another port)", d->name,
                 d->port, ibv_port_state_str(d->pa.state));
        goto fail;
    }
    if (d->da.max_sge < 1 || d->da.max_qp_wr < 16 || d->da.max_cqe < 32) {
        snprintf(why, cap, "RDMA device %s is too small (max_sge %d, max_qp_wr %d, max_cqe %d)", d->name, d->da.max_sge,
                 d->da.max_qp_wr, d->da.max_cqe);
        goto fail;
    }
    d->pd = ibv_alloc_pd(d->ctx);
    if (!d->pd) {
        snprintf(why, cap, "cannot allocate a protection domain on %s: %s", d->name, strerror(errno));
        goto fail;
    }
    const char *force = getenv("CELLM_VERBS_QP");
    int want_rc = !force || !*force || !strcmp(force, "rc");
    int want_uc = !force || !*force || !strcmp(force, "uc");
    /* two gather entries let a frame go out as header + the caller's bytes;
     * with one, frames are copied into a registered slot first */
    for (int t = 0; t < 2 && !d->qpt; t++) {
        if (!(t == 0 ? want_rc : want_uc)) continue;
        enum ibv_qp_type qt = t == 0 ? IBV_QPT_RC : IBV_QPT_UC;
        if (qp_type_works(d, qt, 2))
            d->qpt = t == 0 ? CM_VERBS_QPT_RC : CM_VERBS_QPT_UC;
        else if (qp_type_works(d, qt, 1))
            d->qpt = t == 0 ? CM_VERBS_QPT_RC : CM_VERBS_QPT_UC, d->one_sge = 1;
    }
    if (!d->qpt) {
        snprintf(why, cap, "RDMA device %s creates no %s queue pairs", d->name,
                 want_rc && want_uc ? "RC or UC" : want_rc ? "RC" : want_uc ? "UC" : "(CELLM_VERBS_QP is neither rc nor uc)");
        goto fail;
    }
    return CM_OK;
fail:
    dev_close(d);
    return CM_EUNSUPPORTED;
}

static int verbs_probe(char *why, size_t cap) {
    vdev d;
    int rc = dev_open(&d, why, cap);
    if (!rc) dev_close(&d);
    return rc;
}

/* RoCE v2 or not, from sysfs where Linux tells (-1: unknown). */
static int gid_is_v2(const char *dev, int port, int index) {
    char path[256], buf[32] = "";
    snprintf(path, sizeof path, "/sys/class/infiniband/%s/ports/%d/gid_attrs/types/%d", dev, port, index);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return strstr(buf, "v2") != NULL;
}

/* The GID index for a link whose side channel's local address is `local`:
 * the GID of that address where there is one (RoCE GIDs are IP addresses),
 * else the best the table has. -1 when the table is empty. */
static int pick_gid(vb *b, const struct sockaddr *local) {
    if (b->gid_forced >= 0) return b->gid_forced;
    int n = b->dev.pa.gid_tbl_len < MAX_GIDS ? b->dev.pa.gid_tbl_len : MAX_GIDS;
    uint8_t(*gids)[16] = calloc((size_t)(n > 0 ? n : 1), 16);
    int *v2 = calloc((size_t)(n > 0 ? n : 1), sizeof *v2);
    int pick = -1;
    if (!gids || !v2) goto out;
    uint8_t v4[4], v6[16];
    int have_v4 = 0, have_v6 = 0;
    if (local->sa_family == AF_INET) {
        memcpy(v4, &((const struct sockaddr_in *)local)->sin_addr, 4);
        have_v4 = 1;
    } else if (local->sa_family == AF_INET6) {
        memcpy(v6, &((const struct sockaddr_in6 *)local)->sin6_addr, 16);
        have_v6 = 1;
    }
    for (int i = 0; i < n; i++) {
        union ibv_gid g;
        if (ibv_query_gid(b->dev.ctx, (uint8_t)b->dev.port, i, &g)) continue;
        memcpy(gids[i], g.raw, 16);
        v2[i] = gid_is_v2(b->dev.name, b->dev.port, i);
    }
    if (have_v6) {
        for (int pass = 0; pass < 2 && pick < 0; pass++)
            for (int i = 0; i < n && pick < 0; i++)
                if (!memcmp(gids[i], v6, 16) && (pass || v2[i] == 1)) pick = i;
    }
    if (pick < 0) pick = cm_verbs_gid_pick((const uint8_t(*)[16])gids, v2, n, have_v4 ? v4 : NULL);
out:
    free(gids);
    free(v2);
    return pick;
}

/* ---- side channel ---- */

static void wake_thread(void *owner) { cm_sock_wake(((vb *)owner)->wake[1]); }

/* Queues a record for the side channel; 0 when the buffer is full (the
 * caller keeps what it wanted to say and tries again later). */
static int side_queue(vlink *l, int type, uint32_t value) {
    if (l->side_out_len + CM_VERBS_SIDE_BYTES > SIDE_OUT_CAP) return 0;
    cm_verbs_side_encode(type, value, l->side_out + l->side_out_len);
    l->side_out_len += CM_VERBS_SIDE_BYTES;
    return 1;
}

/* Writes what the kernel takes now; may fail the link. */
static void side_flush(vb *b, vlink *l) {
    while (l->side_out_len && l->base.state != L_DEAD) {
        size_t w;
        int rc = cm_sidechan_post(l->base.fd, l->side_out, l->side_out_len, &w);
        if (rc) {
            cm_sidechan_link_fail(&b->side, &l->base, rc, cm_last_error(rc));
            return;
        }
        if (!w) return; /* the kernel's buffer is full: the next tick goes on */
        memmove(l->side_out, l->side_out + w, l->side_out_len - w);
        l->side_out_len -= w;
    }
}

/* Credits for n receive buffers the link re-posted: batched. */
static void credits_owed(vb *b, vlink *l, uint32_t n) {
    uint32_t give = cm_verbs_owed_add(&l->owed, n);
    if (!give) return;
    if (!side_queue(l, CM_VERBS_SIDE_CREDIT, give)) {
        l->owed.owed += give;
        return;
    }
    side_flush(b, l);
}

/* ---- links ---- */

static uint8_t *rx_buf(vlink *l, uint32_t i) { return l->rxmem + (size_t)i * l->frame_bytes; }

static int rx_post(vlink *l, uint32_t i) {
    struct ibv_sge sge = {.addr = (uintptr_t)rx_buf(l, i), .length = l->frame_bytes, .lkey = l->rx_mr->lkey};
    struct ibv_recv_wr wr = {.wr_id = WRID_RECV | i, .sg_list = &sge, .num_sge = 1}, *bad = NULL;
    int e = ibv_post_recv(l->qp, &wr, &bad);
    return e ? cm_errorf(CM_EIO, "verbs: ibv_post_recv: %s", strerror(e)) : CM_OK;
}

/* sidechan's link_kill: marks a link dead, stops the QP, fails what it
 * holds; the progress thread frees it. */
static void link_kill(void *owner, cm_sidechan_link *base, int status) {
    vb *b = owner;
    vlink *l = (vlink *)base;
    if (l->base.state == L_DEAD) return;
    l->base.state = L_DEAD;
    if (l->qp) {
        /* the error state flushes outstanding work requests: the NIC stops
         * reading sources before their ops are reported failed below */
        struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
        ibv_modify_qp(l->qp, &a, IBV_QP_STATE);
    }
    if (l->rx_active) {
        if (l->rx_kind == RX_RECV || l->rx_kind == RX_DISCARD)
            cm_xfer_core_recv_end(b->x, l->rx_token, l->base.peer, status, 0);
        else
            free(l->rx_dst);
        l->rx_active = 0;
    }
    for (vjob *j = l->jobs; j; j = j->next)
        if (j->op) {
            cm_xfer_op *op = j->op;
            j->op = NULL;
            cm_xfer_core_op_done(b->x, op, status);
        }
    l->post_cur = NULL;
    l->next = b->graveyard;
    b->graveyard = l;
    wake_thread(b);
}

/* Only the progress thread (or setup code that owns an unattached link, or
 * destroy after the threads stopped) calls this. Order: QP (so nothing
 * references the CQ), CQ (after acknowledging its events), channel, MRs,
 * memory. */
static void link_free(vlink *l) {
    if (l->qp) ibv_destroy_qp(l->qp);
    if (l->ch) {
        struct ibv_cq *cq;
        void *ctx;
        while (ibv_get_cq_event(l->ch, &cq, &ctx) == 0) ibv_ack_cq_events(cq, 1);
    }
    if (l->cq) ibv_destroy_cq(l->cq);
    if (l->ch) ibv_destroy_comp_channel(l->ch);
    if (l->rx_mr) ibv_dereg_mr(l->rx_mr);
    if (l->hdr_mr) ibv_dereg_mr(l->hdr_mr);
    while (l->jobs) {
        vjob *j = l->jobs;
        l->jobs = j->next;
        free(j);
    }
    if (l->rx_active && l->rx_kind == RX_HEAP) free(l->rx_dst);
    if (l->base.fd >= 0) close(l->base.fd);
    free(l->rxmem);
    free(l->hdrs);
    free(l->ring);
    free(l);
}

static vlink *link_new(vb *b, int fd, const char *addr) {
    vlink *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->b = b;
    l->base.fd = fd;
    l->base.peer = -1;
    l->base.last_rx_ns = l->base.last_tx_ns = cm_now_ns();
#ifdef SO_NOSIGPIPE
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#endif
    snprintf(l->base.addr, sizeof l->base.addr, "%s", addr);
    return l;
}

static int verr(int status, const char *what, int e) { return cm_errorf(status, "verbs: %s: %s", what, strerror(e)); }

/* Creates the link's channel, CQ and QP (moved to INIT), registers and
 * posts its receive buffers, and picks its GID from the side channel's local
 * address `local`. */
static int link_open(vb *b, vlink *l, const struct sockaddr *local) {
    l->qpt = b->dev.qpt;
    l->frame_bytes = b->frame_bytes;
    l->rx_depth = b->rx_depth;
    l->sq_cap = b->sq_depth;
    if (!(l->ch = ibv_create_comp_channel(b->dev.ctx))) return verr(CM_EIO, "ibv_create_comp_channel", errno);
    cm_sock_set_nonblock(l->ch->fd); /* ibv_get_cq_event then says EAGAIN instead of blocking */
    if (!(l->cq = ibv_create_cq(b->dev.ctx, (int)(l->sq_cap + l->rx_depth), l, l->ch, 0)))
        return verr(CM_EIO, "ibv_create_cq", errno);
    struct ibv_qp_init_attr ia = {
        .send_cq = l->cq,
        .recv_cq = l->cq,
        .qp_type = l->qpt == CM_VERBS_QPT_RC ? IBV_QPT_RC : IBV_QPT_UC,
        .sq_sig_all = 1, /* every send completes visibly: slots free in order */
        .cap = {.max_send_wr = l->sq_cap, .max_recv_wr = l->rx_depth, .max_send_sge = b->dev.one_sge ? 1 : 2,
                .max_recv_sge = 1},
    };
    if (!(l->qp = ibv_create_qp(b->dev.pd, &ia))) return verr(CM_EIO, "ibv_create_qp", errno);
    struct ibv_qp_attr a = {.qp_state = IBV_QPS_INIT,
                            .pkey_index = 0,
                            .port_num = (uint8_t)b->dev.port,
                            .qp_access_flags = l->qpt == CM_VERBS_QPT_RC ? IBV_ACCESS_REMOTE_WRITE : 0};
    int e = ibv_modify_qp(l->qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS);
    if (e) return verr(CM_EIO, "ibv_modify_qp to INIT", e);
    size_t rx_bytes = (size_t)l->rx_depth * l->frame_bytes;
    void *mem = NULL;
    if (posix_memalign(&mem, 4096, rx_bytes)) return CM_ENOMEM;
    l->rxmem = mem;
    if (!(l->rx_mr = ibv_reg_mr(b->dev.pd, l->rxmem, rx_bytes, IBV_ACCESS_LOCAL_WRITE)))
        return verr(CM_EIO, "ibv_reg_mr (receive buffers)", errno);
    l->slot_bytes = b->dev.one_sge ? l->frame_bytes : HDR_SLOT;
    l->hdrs = calloc(l->sq_cap, l->slot_bytes);
    l->ring = calloc(l->sq_cap, sizeof *l->ring);
    if (!l->hdrs || !l->ring) return CM_ENOMEM;
    if (!(l->hdr_mr = ibv_reg_mr(b->dev.pd, l->hdrs, (size_t)l->sq_cap * l->slot_bytes, 0)))
        return verr(CM_EIO, "ibv_reg_mr (frame headers)", errno);
    /* receives may be posted from INIT on; they are all in place before the
     * peer learns our QP number, so its first frame finds one */
    for (uint32_t i = 0; i < l->rx_depth; i++) {
        int rc = rx_post(l, i);
        if (rc) return rc;
    }
    uint32_t psn;
    randombytes_buf(&psn, sizeof psn);
    l->psn = psn & 0xffffff;
    l->gid_index = pick_gid(b, local);
    if (b->ethernet && l->gid_index < 0)
        return cm_errorf(CM_EUNSUPPORTED, "verbs: %s port %d has no usable GID (RoCE and Thunderbolt RDMA need an IP "
                                          "address on the RDMA interface; CELLM_VERBS_GID_INDEX picks one)",
                         b->dev.name, b->dev.port);
    return CM_OK;
}

/* Swaps QP info over the side channel, connects the QP (RTR, RTS) and
 * swaps 'R' so that neither side sends before the other can receive. */
static int link_connect_qp(vb *b, vlink *l, uint64_t deadline) {
    cm_verbs_qp_info me = {.qp_type = l->qpt,
                           .port = b->dev.port,
                           .mtu = b->dev.pa.active_mtu,
                           .qpn = l->qp->qp_num,
                           .psn = l->psn,
                           .lid = b->dev.pa.lid,
                           .gid_index = l->gid_index >= 0 ? l->gid_index : 0,
                           .rx_depth = l->rx_depth,
                           .frame_bytes = l->frame_bytes};
    if (l->gid_index >= 0) {
        union ibv_gid g;
        if (!ibv_query_gid(b->dev.ctx, (uint8_t)b->dev.port, l->gid_index, &g)) memcpy(me.gid, g.raw, 16);
    }
    uint8_t mine[CM_VERBS_QP_INFO_BYTES], theirs[CM_VERBS_QP_INFO_BYTES];
    cm_verbs_qp_info_encode(&me, mine);
    int rc = cm_sidechan_swap(l->base.fd, mine, theirs, sizeof mine, deadline);
    if (!rc) rc = cm_verbs_qp_info_decode(theirs, &l->remote);
    if (rc) return rc;
    cm_verbs_qp_info *r = &l->remote;
    if (r->qp_type != l->qpt)
        return cm_errorf(CM_EUNSUPPORTED, "verbs: %s uses %s queue pairs, this engine %s (CELLM_VERBS_QP=uc on both "
                                          "ends makes them agree)",
                         l->base.addr, r->qp_type == CM_VERBS_QPT_RC ? "RC" : "UC", l->qpt == CM_VERBS_QPT_RC ? "RC" : "UC");
    static const uint8_t zero[16];
    l->global = b->ethernet || r->lid == 0 || b->dev.pa.lid == 0;
    if (l->global && (l->gid_index < 0 || !memcmp(r->gid, zero, 16)))
        return cm_errorf(CM_EUNSUPPORTED, "verbs: %s: no GID to address the peer with (is_global needs both ends' GIDs)",
                         l->base.addr);

    struct ibv_qp_attr a = {0};
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = (enum ibv_mtu)cm_verbs_mtu_pick(b->dev.pa.active_mtu, r->mtu);
    a.dest_qp_num = r->qpn;
    a.rq_psn = r->psn;
    a.ah_attr.dlid = r->lid;
    a.ah_attr.sl = 0;
    a.ah_attr.src_path_bits = 0;
    a.ah_attr.port_num = (uint8_t)b->dev.port;
    if (l->global) {
        a.ah_attr.is_global = 1;
        memcpy(a.ah_attr.grh.dgid.raw, r->gid, 16);
        a.ah_attr.grh.sgid_index = (uint8_t)l->gid_index;
        a.ah_attr.grh.hop_limit = 64; /* RoCE v2 is routed */
        a.ah_attr.grh.flow_label = 0;
        a.ah_attr.grh.traffic_class = 0;
    }
    int mask = IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN;
    if (l->qpt == CM_VERBS_QPT_RC) {
        a.max_dest_rd_atomic = 1; /* no RDMA reads are issued; 1 is the usual minimum */
        a.min_rnr_timer = 12;     /* 0.64 ms; credits should make RNR never happen */
        mask |= IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
    }
    int e = ibv_modify_qp(l->qp, &a, mask);
    if (e) return verr(CM_ECONN, "ibv_modify_qp to RTR", e);

    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTS;
    a.sq_psn = l->psn;
    mask = IBV_QP_STATE | IBV_QP_SQ_PSN;
    if (l->qpt == CM_VERBS_QPT_RC) {
        a.timeout = 14;  /* 4.096 us * 2^14 = 67 ms per try */
        a.retry_cnt = 7;
        a.rnr_retry = 7; /* 7 = retry without limit; the heartbeat timeout bounds a stuck peer */
        a.max_rd_atomic = 1;
        mask |= IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC;
    }
    if ((e = ibv_modify_qp(l->qp, &a, mask))) return verr(CM_ECONN, "ibv_modify_qp to RTS", e);

    uint8_t ready[CM_VERBS_SIDE_BYTES], rec[CM_VERBS_SIDE_BYTES];
    cm_verbs_side_encode(CM_VERBS_SIDE_READY, 0, ready);
    if ((rc = cm_sidechan_swap(l->base.fd, ready, rec, sizeof rec, deadline))) return rc;
    cm_verbs_side_rx srx = {0};
    size_t used;
    int type;
    uint32_t v;
    if ((rc = cm_verbs_side_feed(&srx, rec, sizeof rec, &used, &type, &v))) return rc;
    if (type != CM_VERBS_SIDE_READY) return cm_errorf(CM_EFORMAT, "verbs: %s: no ready record after the QP info", l->base.addr);
    cm_verbs_fc_init(&l->fc, l->sq_cap, r->rx_depth);
    cm_verbs_owed_init(&l->owed, l->rx_depth);
    if (ibv_req_notify_cq(l->cq, 0)) return cm_errorf(CM_EIO, "verbs: ibv_req_notify_cq failed");
    return CM_OK;
}

/* ---- sending ---- */

static vmr *mr_find(vb *b, const cm_xfer_mr *mr) {
    for (vmr *m = b->mrs[((uintptr_t)mr >> 4) % MR_BUCKETS]; m; m = m->next)
        if (m->owner == mr) return m;
    return NULL;
}

/* Posts one work request of job j as planned in w. */
static int post_wr(vb *b, vlink *l, vjob *j, const cm_verbs_wr_plan *w) {
    cm_xfer_op *op = j->op;
    const cm_xfer_seg *s = &op->segs[w->seg];
    uint32_t slot = l->ring_head % l->sq_cap;
    struct ibv_sge sge[2];
    int n_sge = 0;
    struct ibv_send_wr wr, *bad = NULL;
    memset(&wr, 0, sizeof wr);
    wr.wr_id = slot;
    wr.send_flags = IBV_SEND_SIGNALED;
    if (w->opcode == CM_VERBS_WR_SEND) {
        uint8_t *h = l->hdrs + (size_t)slot * l->slot_bytes;
        cm_verbs_frame f = {.payload_bytes = w->bytes, .offset = w->dst_off, .seq = l->frames_sent};
        if (j->kind == CM_VERBS_JOB_FRAMED_WRITE) {
            f.type = CM_VERBS_FRAME_WRITE;
            f.id = op->write_id;
            f.region_or_total = op->dst_region;
            f.imm = op->imm;
            f.n_segs = j->cur.total;
        } else {
            f.type = CM_VERBS_FRAME_MSG;
            f.id = j->msg_seq;
            f.region_or_total = op->segs[0].bytes;
        }
        cm_verbs_frame_encode(&f, h);
        uint32_t hlen = CM_VERBS_FRAME_HDR_BYTES;
        if (b->dev.one_sge && w->bytes) { /* enqueue sized frames to fit the slot */
            memcpy(h + hlen, s->src + w->seg_off, w->bytes);
            hlen += w->bytes;
        }
        sge[n_sge++] = (struct ibv_sge){.addr = (uintptr_t)h, .length = hlen, .lkey = l->hdr_mr->lkey};
        wr.opcode = IBV_WR_SEND;
    } else {
        wr.opcode = w->opcode == CM_VERBS_WR_WRITE_IMM ? IBV_WR_RDMA_WRITE_WITH_IMM : IBV_WR_RDMA_WRITE;
        if (w->opcode == CM_VERBS_WR_WRITE_IMM) wr.imm_data = cm_verbs_imm_to_wire(op->imm);
        wr.wr.rdma.remote_addr = op->dst->addr + w->dst_off;
        wr.wr.rdma.rkey = (uint32_t)op->dst->rkeys[0];
    }
    if (w->bytes && !(b->dev.one_sge && w->opcode == CM_VERBS_WR_SEND))
        sge[n_sge++] = (struct ibv_sge){.addr = (uintptr_t)(s->src + w->seg_off), .length = w->bytes, .lkey = j->lkey};
    wr.sg_list = n_sge ? sge : NULL;
    wr.num_sge = n_sge;
    int e = ibv_post_send(l->qp, &wr, &bad);
    if (e) return verr(CM_EPEER, "ibv_post_send", e);
    l->ring[slot] = j;
    l->ring_head++;
    cm_verbs_fc_posted(&l->fc, w->credit);
    if (w->opcode == CM_VERBS_WR_SEND) l->frames_sent++;
    l->base.bytes_sent += w->bytes;
    return CM_OK;
}

/* Posts what the queues and credits allow, in FIFO order. An error means
 * the link must fail (the caller does it). */
static int link_pump(vb *b, vlink *l) {
    while (l->base.state == L_READY && l->post_cur) {
        vjob *j = l->post_cur;
        cm_verbs_cursor c = j->cur; /* committed only once posted */
        cm_verbs_wr_plan w;
        if (!j->op || !cm_verbs_plan_next(&c, j->op->segs, j->op->n_segs, &w)) {
            l->post_cur = j->next;
            continue;
        }
        if (!cm_verbs_fc_can_post(&l->fc, w.credit)) return CM_OK; /* resumed by a completion or a credit */
        int rc = post_wr(b, l, j, &w);
        if (rc) return rc;
        j->cur = c;
        j->posted++;
        if (j->cur.index == j->cur.total) l->post_cur = j->next;
    }
    return CM_OK;
}

/* Completes and frees the jobs at the head of the FIFO whose work requests
 * all completed (send completions arrive in posting order). */
static void jobs_reap(vb *b, vlink *l) {
    while (l->jobs && l->jobs != l->post_cur && l->jobs->done == l->jobs->cur.total) {
        vjob *j = l->jobs;
        l->jobs = j->next;
        if (!l->jobs) l->jobs_last = NULL;
        if (j->op) cm_xfer_core_op_done(b->x, j->op, CM_OK);
        free(j);
    }
}

/* ---- receiving ---- */

static int on_frame(vb *b, vlink *l, const uint8_t *buf, size_t len) {
    cm_verbs_frame f;
    int rc = cm_verbs_frame_decode(buf, len, l->frame_bytes, &f);
    if (rc) return rc;
    int first, done;
    if ((rc = cm_verbs_rx_frame(&l->rxs, &f, &first, &done))) return rc;
    const uint8_t *payload = buf + CM_VERBS_FRAME_HDR_BYTES;
    l->base.bytes_received += f.payload_bytes;
    if (f.type == CM_VERBS_FRAME_WRITE) {
        if (l->qpt == CM_VERBS_QPT_RC) return cm_errorf(CM_EFORMAT, "verbs: a framed write on an RC link");
        uint8_t *dst;
        rc = cm_xfer_core_region_target(b->x, l->base.peer, f.region_or_total, f.offset, f.payload_bytes, &dst);
        if (rc) return rc == CM_ENOMEM ? rc : CM_EFORMAT;
        if (f.payload_bytes) memcpy(dst, payload, f.payload_bytes);
        cm_xfer_core_region_release(b->x, f.region_or_total);
        if (done) cm_xfer_core_write_landed(b->x, l->base.peer, f.imm);
        return CM_OK;
    }
    if (first) {
        size_t cap = 0;
        l->rx_total = f.region_or_total;
        if (cm_xfer_core_recv_begin(b->x, l->base.peer, &l->rx_dst, &cap, &l->rx_token) == CM_OK) {
            l->rx_kind = l->rx_total > cap ? RX_DISCARD : RX_RECV;
        } else {
            l->rx_dst = malloc(l->rx_total ? l->rx_total : 1);
            if (!l->rx_dst) return cm_errorf(CM_ENOMEM, "verbs: no memory for a %zu-byte message", l->rx_total);
            l->rx_kind = RX_HEAP;
        }
        l->rx_active = 1;
    }
    if (l->rx_kind != RX_DISCARD && f.payload_bytes) memcpy(l->rx_dst + f.offset, payload, f.payload_bytes);
    if (!done) return CM_OK;
    l->rx_active = 0;
    if (l->rx_kind == RX_RECV) {
        cm_xfer_core_recv_end(b->x, l->rx_token, l->base.peer, CM_OK, l->rx_total);
    } else if (l->rx_kind == RX_DISCARD) {
        cm_xfer_core_recv_end(b->x, l->rx_token, l->base.peer, CM_ERANGE, 0);
    } else {
        return cm_xfer_core_recv_deliver(b->x, l->base.peer, l->rx_dst, l->rx_total);
    }
    return CM_OK;
}

/* One work completion of link l: CM_OK, or why the peer must fail. */
static int on_wc(vb *b, vlink *l, const struct ibv_wc *wc) {
    if (wc->status != IBV_WC_SUCCESS) {
        /* opcode is not valid on an error completion: wr_id tells the kind */
        return cm_errorf(CM_EPEER, "verbs: %s failed: %s (vendor error 0x%x)",
                         (wc->wr_id & WRID_RECV) ? "a receive" : "a transfer", ibv_wc_status_str(wc->status),
                         wc->vendor_err);
    }
    if (wc->wr_id & WRID_RECV) {
        uint64_t idx = wc->wr_id & ~WRID_RECV;
        if (idx >= l->rx_depth) return cm_errorf(CM_EIO, "verbs: receive completion for unknown buffer %llu",
                                                 (unsigned long long)idx);
        l->base.last_rx_ns = cm_now_ns();
        int rc = CM_OK;
        if (wc->opcode == IBV_WC_RECV_RDMA_WITH_IMM) {
            if (l->qpt != CM_VERBS_QPT_RC || !(wc->wc_flags & IBV_WC_WITH_IMM))
                return cm_errorf(CM_EFORMAT, "verbs: unexpected write with immediate");
            l->base.bytes_received += wc->byte_len;
            cm_xfer_core_write_landed(b->x, l->base.peer, cm_verbs_imm_from_wire(wc->imm_data));
        } else if (wc->opcode == IBV_WC_RECV) {
            if (wc->wc_flags & IBV_WC_WITH_IMM) return cm_errorf(CM_EFORMAT, "verbs: a send with immediate data");
            rc = on_frame(b, l, rx_buf(l, (uint32_t)idx), wc->byte_len);
        } else {
            return cm_errorf(CM_EFORMAT, "verbs: receive completion with opcode %d", (int)wc->opcode);
        }
        if (rc || l->base.state == L_DEAD) return rc;
        if ((rc = rx_post(l, (uint32_t)idx))) return rc;
        credits_owed(b, l, 1);
        return CM_OK;
    }
    uint32_t slot = (uint32_t)wc->wr_id;
    if (slot >= l->sq_cap || l->ring_tail == l->ring_head || slot != l->ring_tail % l->sq_cap || !l->ring[slot])
        return cm_errorf(CM_EIO, "verbs: send completion for slot %u out of order", slot);
    vjob *j = l->ring[slot];
    l->ring[slot] = NULL;
    l->ring_tail++;
    int rc = cm_verbs_fc_sq_done(&l->fc, 1);
    if (rc) return rc;
    j->done++;
    jobs_reap(b, l);
    return CM_OK;
}

/* Reads the link's CQ; fails the peer on an error. Returns completions
 * handled. */
static int link_drain(vb *b, vlink *l) {
    struct ibv_wc wc[CQ_BATCH];
    int total = 0;
    while (l->base.state == L_READY) {
        int n = ibv_poll_cq(l->cq, CQ_BATCH, wc);
        if (n < 0) {
            cm_sidechan_link_fail(&b->side, &l->base, CM_EPEER, "ibv_poll_cq failed");
            break;
        }
        for (int i = 0; i < n && l->base.state == L_READY; i++) {
            int rc = on_wc(b, l, &wc[i]);
            if (rc) {
                char why[400];
                snprintf(why, sizeof why, "%s", cm_last_error(rc));
                cm_sidechan_link_fail(&b->side, &l->base, rc == CM_EFORMAT ? CM_EFORMAT : CM_EPEER, why);
            }
        }
        total += n;
        if (n < CQ_BATCH) break;
    }
    if (total && l->base.state == L_READY) {
        int rc = link_pump(b, l);
        if (rc) cm_sidechan_link_fail(&b->side, &l->base, CM_EPEER, cm_last_error(rc));
    }
    return total;
}

/* Drains, re-arms the completion channel, and drains again: a completion
 * that arrived between the two would otherwise raise no event. */
static int link_drain_arm(vb *b, vlink *l) {
    int got = link_drain(b, l);
    if (l->base.state != L_READY) return got;
    if (ibv_req_notify_cq(l->cq, 0)) {
        cm_sidechan_link_fail(&b->side, &l->base, CM_EPEER, "ibv_req_notify_cq failed");
        return got;
    }
    return got + link_drain(b, l);
}

/* Reads the side channel: heartbeats, credits, goodbye, EOF. */
static void link_side_read(vb *b, vlink *l) {
    uint8_t buf[256];
    for (;;) {
        size_t n;
        int rc = cm_sidechan_read(l->base.fd, buf, sizeof buf, &n);
        if (rc) {
            cm_sidechan_link_fail(&b->side, &l->base, rc, cm_last_error(rc));
            return;
        }
        if (!n) return;
        uint64_t now = cm_now_ns();
        l->base.last_rx_ns = now;
        int credited = 0;
        for (size_t pos = 0; pos < n;) {
            size_t used;
            int type;
            uint32_t v;
            if (cm_verbs_side_feed(&l->side_rx, buf + pos, n - pos, &used, &type, &v)) {
                cm_sidechan_link_fail(&b->side, &l->base, CM_EFORMAT, "garbage on the side channel");
                return;
            }
            pos += used;
            if (type == CM_VERBS_SIDE_HEARTBEAT) {
                if (l->qpt == CM_VERBS_QPT_UC)
                    cm_verbs_loss_report(&l->loss, v, l->rxs.next_seq, now,
                                         (uint64_t)b->cfg->peer_timeout_ms * 1000000ull / 2);
            } else if (type == CM_VERBS_SIDE_CREDIT) {
                if (cm_verbs_fc_credit_add(&l->fc, v)) {
                    cm_sidechan_link_fail(&b->side, &l->base, CM_EFORMAT, cm_last_error(CM_EFORMAT));
                    return;
                }
                credited = 1;
            } else if (type == CM_VERBS_SIDE_BYE) {
                cm_sidechan_link_fail(&b->side, &l->base, CM_EPEER, "peer closed the connection");
                return;
            } else if (type == CM_VERBS_SIDE_READY) {
                cm_sidechan_link_fail(&b->side, &l->base, CM_EFORMAT, "a second ready record on the side channel");
                return;
            }
        }
        if (credited) {
            rc = link_pump(b, l);
            if (rc) {
                cm_sidechan_link_fail(&b->side, &l->base, CM_EPEER, cm_last_error(rc));
                return;
            }
        }
    }
}

/* ---- progress thread ---- */

static void tick(vb *b, uint64_t now) {
    const uint64_t hb_ns = (uint64_t)b->cfg->heartbeat_ms * 1000000ull;
    for (int i = 0; i < MAX_PEERS; i++) {
        cm_sidechan_peer *p = &b->side.peers[i];
        for (int k = 0; k < CM_XFER_MAX_LINKS && p->active; k++) {
            vlink *l = (vlink *)p->links[k];
            if (!l || l->base.state != L_READY) continue;
            int rc = cm_sidechan_check_silence(now, l->base.last_rx_ns, b->cfg->peer_timeout_ms);
            if (rc) {
                cm_sidechan_link_fail(&b->side, &l->base, rc, cm_last_error(rc));
                break;
            }
            if (l->qpt == CM_VERBS_QPT_UC && cm_verbs_loss_check(&l->loss, l->rxs.next_seq, now)) {
                cm_sidechan_link_fail(&b->side, &l->base, CM_EPEER, cm_last_error(CM_EPEER));
                break;
            }
            if (now - l->base.last_tx_ns >= hb_ns && side_queue(l, CM_VERBS_SIDE_HEARTBEAT, l->frames_sent))
                l->base.last_tx_ns = now;
            uint32_t owed = cm_verbs_owed_take(&l->owed);
            if (owed && !side_queue(l, CM_VERBS_SIDE_CREDIT, owed)) l->owed.owed += owed;
            side_flush(b, l);
        }
    }
}

static void *progress_main(void *arg) {
    vb *b = arg;
    uint64_t last_tick = cm_now_ns();
    while (!b->stop) {
        pthread_mutex_lock(&b->mu);
        while (b->graveyard) {
            vlink *l = b->graveyard;
            b->graveyard = l->next;
            link_free(l);
        }
        int n = 0, busy = 0;
        b->pf[n] = (struct pollfd){b->wake[0], POLLIN, 0};
        b->who[n++] = NULL;
        for (int i = 0; i < MAX_PEERS; i++) {
            cm_sidechan_peer *p = &b->side.peers[i];
            for (int k = 0; k < CM_XFER_MAX_LINKS && p->active; k++) {
                vlink *l = (vlink *)p->links[k];
                if (!l || l->base.state != L_READY) continue;
                busy += link_drain_arm(b, l);
                if (l->base.state != L_READY) continue;
                b->pf[n] = (struct pollfd){l->base.fd, POLLIN, 0};
                b->who[n++] = l;
                b->pf[n] = (struct pollfd){l->ch->fd, POLLIN, 0};
                b->who[n++] = l;
            }
        }
        uint64_t now = cm_now_ns();
        if (now - last_tick >= TICK_MS * 1000000ull) {
            tick(b, now);
            last_tick = now;
        }
        /* idle engines (no links) wake rarely; links are ticked every ms for
         * heartbeats, credit returns and timeouts */
        int timeout = busy ? 0 : n > 1 ? TICK_MS : 50;
        pthread_mutex_unlock(&b->mu);
        if (poll(b->pf, (nfds_t)n, timeout) <= 0) continue;
        pthread_mutex_lock(&b->mu);
        if (b->pf[0].revents) cm_sock_wake_drain(b->wake[0]);
        for (int i = 1; i < n; i++) {
            vlink *l = b->who[i];
            if (!b->pf[i].revents || l->base.state != L_READY) continue;
            if (b->pf[i].fd == l->base.fd) {
                link_side_read(b, l);
            } else {
                struct ibv_cq *cq;
                void *ctx;
                while (ibv_get_cq_event(l->ch, &cq, &ctx) == 0) ibv_ack_cq_events(cq, 1);
                /* the CQ itself is drained (and re-armed) at the top of the loop */
            }
        }
        pthread_mutex_unlock(&b->mu);
    }
    return NULL;
}

/* ---- connection setup ---- */

/* sidechan's link_setup: an authenticated socket becomes a connected link
 * (not attached). */
static int link_setup(void *owner, int fd, const char *addr, uint64_t deadline, cm_sidechan_link **out) {
    vb *b = owner;
    vlink *l = link_new(b, fd, addr);
    if (!l) {
        close(fd);
        return CM_ENOMEM;
    }
    struct sockaddr_storage loc;
    socklen_t ll = sizeof loc;
    memset(&loc, 0, sizeof loc);
    getsockname(fd, (struct sockaddr *)&loc, &ll);
    pthread_mutex_lock(&b->mu); /* device calls are thread-safe; the lock keeps pick_gid's table reads tidy */
    int rc = link_open(b, l, (struct sockaddr *)&loc);
    pthread_mutex_unlock(&b->mu);
    if (!rc) rc = link_connect_qp(b, l, deadline);
    if (rc) {
        link_free(l);
        return rc;
    }
    *out = &l->base;
    return CM_OK;
}

static void link_free_base(cm_sidechan_link *base) { link_free((vlink *)base); }

static int verbs_connect(void *state, int pid, const char *const *addrs, int n_addrs, int timeout_ms) {
    vb *b = state;
    return cm_sidechan_connect(&b->side, pid, addrs, n_addrs, timeout_ms);
}

/* ---- data path entries ---- */

/* Whole writes round-robin over the links (an RC write's immediate must
 * follow its own segments on the same QP); messages on link 0 (order). */
static int peer_link(vb *b, int pid, int which, vlink **out) {
    cm_sidechan_link *base;
    int rc = cm_sidechan_pick(&b->side, pid, which, &base);
    if (!rc) *out = (vlink *)base;
    return rc;
}

/* Takes an op into link l's FIFO and posts what fits. */
static int enqueue(vb *b, vlink *l, cm_xfer_op *op, int kind) {
    vjob *j = calloc(1, sizeof *j);
    if (!j) return CM_ENOMEM;
    j->op = op;
    j->kind = kind;
    uint32_t frame = l->remote.frame_bytes;
    if (b->dev.one_sge && frame > l->slot_bytes) frame = l->slot_bytes; /* frames are built in our slots */
    uint32_t payload = frame - CM_VERBS_FRAME_HDR_BYTES;
    int rc = cm_verbs_plan_init(&j->cur, kind, op->segs, op->n_segs, payload);
    if (!rc && op->total_bytes) {
        vmr *m = op->src_mr ? mr_find(b, op->src_mr) : NULL;
        if (!m) rc = cm_errorf(CM_EINVAL, "verbs: the source region is not registered with this engine");
        else j->lkey = m->mr->lkey;
    }
    if (rc) {
        free(j);
        return rc;
    }
    if (kind == CM_VERBS_JOB_MSG) j->msg_seq = l->msg_seq_tx++;
    if (l->jobs_last) l->jobs_last->next = j;
    else l->jobs = j;
    l->jobs_last = j;
    if (!l->post_cur) l->post_cur = j;
    /* taken from here: a failure completes the op through link_fail */
    rc = link_pump(b, l);
    if (rc) cm_sidechan_link_fail(&b->side, &l->base, CM_EPEER, cm_last_error(rc));
    return CM_OK;
}

static int verbs_write(void *state, cm_xfer_op *op) {
    vb *b = state;
    pthread_mutex_lock(&b->mu);
    vlink *l = NULL;
    int rc = peer_link(b, op->peer, -1, &l);
    if (!rc && l->qpt == CM_VERBS_QPT_RC) {
        if (op->dst->n_rkeys < 1 || op->dst->rkeys[0] > UINT32_MAX)
            rc = cm_errorf(CM_EINVAL, "xfer: region descriptor without an RDMA key (was it made by a verbs engine?)");
        for (int i = 0; !rc && i < op->n_segs; i++)
            if (op->segs[i].bytes > b->dev.pa.max_msg_sz)
                rc = cm_errorf(CM_ERANGE, "verbs: a %u-byte segment exceeds the port's %u-byte message limit "
                                          "(lower chunk_bytes)",
                               op->segs[i].bytes, b->dev.pa.max_msg_sz);
    }
    if (!rc) rc = enqueue(b, l, op, l->qpt == CM_VERBS_QPT_RC ? CM_VERBS_JOB_RDMA_WRITE : CM_VERBS_JOB_FRAMED_WRITE);
    pthread_mutex_unlock(&b->mu);
    return rc;
}

static int verbs_send(void *state, cm_xfer_op *op) {
    vb *b = state;
    pthread_mutex_lock(&b->mu);
    vlink *l = NULL;
    int rc = peer_link(b, op->peer, 0, &l);
    if (!rc) rc = enqueue(b, l, op, CM_VERBS_JOB_MSG);
    pthread_mutex_unlock(&b->mu);
    return rc;
}

/* A thread waiting on this peer's counters drains its links itself for a
 * short while, saving the hand-off from the progress thread that dominates
 * a round trip's latency. Spinning is budgeted per wait (a thread-local
 * 200 us; a call more than 1 ms after the last one starts a new wait): past
 * it this says CM_EUNSUPPORTED and the core sleeps until the progress
 * thread lands something, so a long wait does not burn a core. */
#define SPIN_CALL_NS 50000ull
#define SPIN_WAIT_NS 200000ull
static _Thread_local uint64_t tl_spun_ns, tl_last_ns;

static int verbs_progress(void *state, int peer, int timeout_us) {
    vb *b = state;
    if (peer < 0 || peer >= MAX_PEERS) return CM_EUNSUPPORTED;
    uint64_t start = cm_now_ns();
    if (start - tl_last_ns > 1000000ull) tl_spun_ns = 0;
    tl_last_ns = start;
    if (tl_spun_ns >= SPIN_WAIT_NS) return CM_EUNSUPPORTED;
    uint64_t span = timeout_us > 0 ? (uint64_t)timeout_us * 1000ull : 0;
    if (span > SPIN_CALL_NS) span = SPIN_CALL_NS;
    int got = 0;
    do {
        pthread_mutex_lock(&b->mu);
        cm_sidechan_peer *p = &b->side.peers[peer];
        if (!p->up) {
            pthread_mutex_unlock(&b->mu);
            return CM_EUNSUPPORTED;
        }
        for (int i = 0; i < p->n_links && p->up; i++)
            if (p->links[i] && p->links[i]->state == L_READY) got += link_drain(b, (vlink *)p->links[i]);
        pthread_mutex_unlock(&b->mu);
        if (!got) sched_yield();
    } while (!got && cm_now_ns() - start < span);
    tl_last_ns = cm_now_ns();
    tl_spun_ns = got ? 0 : tl_spun_ns + (tl_last_ns - start);
    return CM_OK;
}

/* ---- regions ---- */

static int verbs_mr_register(void *state, cm_xfer_mr *mr, cm_xfer_mr_desc *desc, void **mr_state) {
    vb *b = state;
    vmr *m = calloc(1, sizeof *m);
    if (!m) return CM_ENOMEM;
    unsigned acc = cm_verbs_mr_access(cm_xfer_mr_flags(mr), b->dev.qpt == CM_VERBS_QPT_RC);
    int access = ((acc & CM_VERBS_ACC_LOCAL_WRITE) ? IBV_ACCESS_LOCAL_WRITE : 0) |
                 ((acc & CM_VERBS_ACC_REMOTE_WRITE) ? IBV_ACCESS_REMOTE_WRITE : 0);
    uint8_t *base = cm_xfer_mr_base(mr);
    size_t bytes = cm_xfer_mr_bytes(mr);
    if (!bytes) {
        /* an empty region (immediate-only writes) still needs keys; it gets
         * scrap memory of its own, never shared */
        if (!(m->dummy = calloc(1, 64))) {
            free(m);
            return CM_ENOMEM;
        }
        base = m->dummy;
    }
    m->mr = ibv_reg_mr(b->dev.pd, base, bytes ? bytes : 64, access);
    if (!m->mr) {
        int e = errno;
        free(m->dummy);
        free(m);
        return cm_errorf(CM_EIO, "verbs: ibv_reg_mr of %zu bytes: %s%s", bytes, strerror(e),
                         e == ENOMEM ? " (the locked-memory limit, ulimit -l, may be too low)" : "");
    }
    m->owner = mr;
    pthread_mutex_lock(&b->mu);
    vmr **bucket = &b->mrs[((uintptr_t)mr >> 4) % MR_BUCKETS];
    m->next = *bucket;
    *bucket = m;
    pthread_mutex_unlock(&b->mu);
    /* one protection domain serves every link: one rkey covers them all */
    desc->n_rkeys = 1;
    desc->rkeys[0] = m->mr->rkey;
    desc->addr = (uint64_t)(uintptr_t)base;
    *mr_state = m;
    return CM_OK;
}

static void verbs_mr_deregister(void *state, cm_xfer_mr *mr, void *mr_state) {
    vb *b = state;
    vmr *m = mr_state;
    if (!m) return;
    pthread_mutex_lock(&b->mu);
    for (vmr **pm = &b->mrs[((uintptr_t)mr >> 4) % MR_BUCKETS]; *pm; pm = &(*pm)->next)
        if (*pm == m) {
            *pm = m->next;
            break;
        }
    pthread_mutex_unlock(&b->mu);
    if (m->mr) ibv_dereg_mr(m->mr);
    free(m->dummy);
    free(m);
}

/* ---- create / destroy ---- */

static void verbs_destroy(void *state);

static int verbs_create(cm_xfer *x, const cm_xfer_config *cfg, void **state) {
    *state = NULL;
    char why[256] = "";
    vdev d;
    int rc = dev_open(&d, why, sizeof why);
    if (rc) return cm_errorf(rc, "verbs: %s", why);
    vb *b = calloc(1, sizeof *b);
    if (!b) {
        dev_close(&d);
        return CM_ENOMEM;
    }
    b->x = x;
    b->cfg = cfg;
    b->dev = d;
    b->wake[0] = b->wake[1] = -1;
    b->side = (cm_sidechan){.backend = "verbs", .key = &cfg->key, .instance = cm_xfer_core_instance(x),
                            .name = cm_xfer_core_name(x), .peer_timeout_ms = cfg->peer_timeout_ms, .x = x, .owner = b,
                            .mu = &b->mu, .bye_bytes = CM_VERBS_SIDE_BYTES, .link_setup = link_setup,
                            .link_free = link_free_base, .link_kill = link_kill, .wake = wake_thread};
    cm_verbs_side_encode(CM_VERBS_SIDE_BYE, 0, b->side.bye);
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&b->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    b->ethernet = b->dev.pa.link_layer == IBV_LINK_LAYER_ETHERNET;
    b->gid_forced = env_int("CELLM_VERBS_GID_INDEX", -1);
    int uc = b->dev.qpt == CM_VERBS_QPT_UC;
    uint32_t max_wr = (uint32_t)b->dev.da.max_qp_wr;
    uint32_t max_cqe = (uint32_t)b->dev.da.max_cqe; /* >= 32 (dev_open): one CQ holds both queues */
    b->sq_depth = SQ_DEPTH < max_wr ? SQ_DEPTH : max_wr;
    if (b->sq_depth > max_cqe / 2) b->sq_depth = max_cqe / 2;
    b->rx_depth = uc ? UC_RX_DEPTH : RC_RX_DEPTH;
    if (b->rx_depth > max_wr) b->rx_depth = max_wr;
    if (b->rx_depth > max_cqe - b->sq_depth) b->rx_depth = max_cqe - b->sq_depth;
    if (b->gid_forced >= b->dev.pa.gid_tbl_len || b->gid_forced > 255) {
        rc = cm_errorf(CM_EINVAL, "verbs: CELLM_VERBS_GID_INDEX=%d, but %s port %d has %d GIDs", b->gid_forced,
                       b->dev.name, b->dev.port, b->dev.pa.gid_tbl_len);
        goto fail;
    }
    b->frame_bytes = uc ? UC_FRAME_BYTES : RC_FRAME_BYTES;
    CM_LOGW("xfer: verbs backend on %s port %d (%s, %s link layer); note: this backend has been tested only "
            "against a software stand-in, not yet on RDMA hardware",
            b->dev.name, b->dev.port, uc ? "UC queue pairs, two-sided frames" : "RC queue pairs, one-sided writes",
            b->ethernet ? "Ethernet" : "InfiniBand");
    if ((rc = cm_sock_wake_open(b->wake))) goto fail;
    if ((rc = cm_sidechan_start(&b->side, cfg->listen, &b->thread, &b->thread_started, progress_main, b))) goto fail;
    *state = b;
    return CM_OK;
fail:
    verbs_destroy(b);
    return rc;
}

static void verbs_destroy(void *state) {
    vb *b = state;
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
        vlink *l = b->graveyard;
        b->graveyard = l->next;
        link_free(l);
    }
    /* the core frees regions still registered without deregistering them
     * after destroy: their MRs go here, before the PD they belong to */
    for (int i = 0; i < MR_BUCKETS; i++)
        while (b->mrs[i]) {
            vmr *m = b->mrs[i];
            b->mrs[i] = m->next;
            if (m->mr) ibv_dereg_mr(m->mr);
            free(m->dummy);
            free(m);
        }
    pthread_mutex_unlock(&b->mu);
    dev_close(&b->dev);
    cm_sock_wake_close(b->wake);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

static int verbs_listen_addr(void *state, char *buf, size_t cap) {
    return cm_sidechan_listen_addr(&((vb *)state)->side, buf, cap);
}

static void verbs_disconnect(void *state, int peer, int status) {
    cm_sidechan_disconnect(&((vb *)state)->side, peer, status);
}

static int verbs_peer_links(void *state, int peer, cm_xfer_link_stats *out, int max, int *n) {
    return cm_sidechan_peer_links(&((vb *)state)->side, peer, out, max, n);
}

const cm_xfer_backend_ops cm_xfer_verbs_ops = {
    .name = "verbs",
    .probe = verbs_probe,
    .create = verbs_create,
    .destroy = verbs_destroy,
    .listen_addr = verbs_listen_addr,
    .connect = verbs_connect,
    .disconnect = verbs_disconnect,
    .mr_register = verbs_mr_register,
    .mr_deregister = verbs_mr_deregister,
    .send = verbs_send,
    .write = verbs_write,
    .recv_posted = NULL,
    .progress = verbs_progress,
    .peer_links = verbs_peer_links,
};

#else
/* Built without libibverbs: the backend is absent from backends.c. */
typedef int cm_verbs_not_built;
#endif
