/* test_xfer_verbs_mock.c - runs the verbs backend's device tests (from
 * test_xfer_verbs.c) against a software stand-in for an RDMA device, so the
 * data path runs on machines without one.
 *
 * The stand-in defines the libibverbs entry points the backend calls
 * (ibv_open_device, ibv_create_qp, ibv_modify_qp, ibv_reg_mr, ...; the
 * executable's definitions take precedence over the shared library's) and
 * executes work requests at once, in the poster's thread: an RDMA write
 * copies into the registered memory its rkey names, after checking access
 * and bounds; a SEND or a write with immediate consumes the next posted
 * receive of the destination QP; completions go to the CQs and raise a
 * completion-channel event when the CQ was armed.
 *
 * It is strict where a device is, and stricter where the backend's own
 * promises are concerned, counting what would go wrong on hardware:
 *   - modify_qp attribute masks must be exactly those the verbs man page
 *     lists as required for each RC / UC transition (a UC QP given an
 *     RC-only attribute is refused, as the kernel refuses it); RoCE-style
 *     addressing (lid 0) must use a GRH; each side's SQ PSN must be the
 *     other side's RQ PSN;
 *   - remote write needs IBV_ACCESS_LOCAL_WRITE with it; a write needs the
 *     QP's and the region's remote-write access and must fall inside the
 *     region, else the sender gets IBV_WC_REM_ACCESS_ERR;
 *   - a SEND or write-with-immediate that finds no posted receive is
 *     counted (UC would drop it, RC would stall in RNR retries): flow
 *     control must make that never happen;
 *   - posting beyond max_send_wr (a slot is busy until its completion is
 *     polled) and CQ overflow are counted;
 *   - destroying a PD with MRs or QPs left, or a CQ a QP still uses, fails
 *     and is counted; every object must be gone after the engines are.
 * It does not model timing, reordering across QPs, or packet loss other
 * than the loss it is told to inject (UC). What it shows is that the
 * backend drives the verbs API consistently, not that a NIC agrees. */
#define CM_VERBS_TEST_NO_MAIN 1
#include "test_xfer_verbs.c"

#ifdef CM_HAVE_VERBS
#include <errno.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <pthread.h>
#include <unistd.h>

#undef ibv_get_device_list
#undef ibv_query_port
#undef ibv_reg_mr

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static struct ibv_device g_dev;
static int g_no_rc;            /* the device creates no RC QPs (like Apple's) */
static int g_one_sge;          /* its QPs take one send gather entry only */
static unsigned g_drop_send;   /* drop this SEND (1-based count of all SENDs) on UC */
static unsigned g_sends, g_packed_sends, g_rdma_writes, g_no_receive, g_rq_overrun, g_sq_overrun, g_cq_overflow, g_api_errors;
static int g_live;             /* objects created and not yet destroyed */
static char g_api_msg[256];

static void api_error(const char *fmt, const char *what) {
    g_api_errors++;
    snprintf(g_api_msg, sizeof g_api_msg, fmt, what);
    fprintf(stderr, "mock verbs: %s\n", g_api_msg);
}

typedef struct mcq {
    struct ibv_cq cq;
    struct ibv_wc *wc;
    unsigned char *is_send; /* per entry: a send completion (its SQ slot frees when polled) */
    int cap, head, n, armed;
    struct mchan *chan;
} mcq;

typedef struct mchan {
    struct ibv_comp_channel ch;
    int wfd;
    mcq *cq;
} mchan;

typedef struct rqe {
    uint64_t wr_id, addr;
    uint32_t len, lkey;
    int n_sge;
} rqe;

typedef struct mqp {
    struct ibv_qp qp;
    int access;
    uint32_t dest, rq_psn, sq_psn;
    rqe *rq;
    int rq_cap, rq_head, rq_n;
    int sq_cap, sq_out, max_sge;
} mqp;

typedef struct mmr {
    struct ibv_mr mr;
    int access;
    struct mmr *next;
} mmr;

#define MAX_QPS 4096
static mqp *g_qps[MAX_QPS];
static mmr *g_mrs;
static uint32_t g_next_qpn = 0x100, g_next_key = 0x1000;

static mqp *qp_by_num(uint32_t n) {
    for (int i = 0; i < MAX_QPS; i++)
        if (g_qps[i] && g_qps[i]->qp.qp_num == n) return g_qps[i];
    return NULL;
}

static mmr *mr_by_key(uint32_t key) {
    for (mmr *m = g_mrs; m; m = m->next)
        if (m->mr.lkey == key) return m;
    return NULL;
}

static void push_wc(mcq *c, const struct ibv_wc *wc, int is_send) {
    if (c->n == c->cap) {
        g_cq_overflow++;
        return;
    }
    c->is_send[(c->head + c->n) % c->cap] = (unsigned char)is_send;
    c->wc[(c->head + c->n) % c->cap] = *wc;
    c->n++;
    if (c->armed && c->chan) {
        c->armed = 0;
        char x = 1;
        ssize_t w = write(c->chan->wfd, &x, 1);
        (void)w;
    }
}

/* ---- context ops ---- */

static int m_poll_cq(struct ibv_cq *cq, int n, struct ibv_wc *wc) {
    mcq *c = (mcq *)cq;
    pthread_mutex_lock(&g_mu);
    int k = 0;
    while (k < n && c->n) {
        wc[k] = c->wc[c->head];
        if (c->is_send[c->head]) {
            mqp *q = qp_by_num(wc[k].qp_num);
            if (q && q->sq_out > 0) q->sq_out--;
        }
        c->head = (c->head + 1) % c->cap;
        c->n--;
        k++;
    }
    pthread_mutex_unlock(&g_mu);
    return k;
}

static int m_req_notify_cq(struct ibv_cq *cq, int solicited_only) {
    (void)solicited_only;
    pthread_mutex_lock(&g_mu);
    ((mcq *)cq)->armed = 1;
    pthread_mutex_unlock(&g_mu);
    return 0;
}

static void qp_to_error(mqp *q) {
    q->qp.state = IBV_QPS_ERR;
    /* outstanding receives are flushed */
    while (q->rq_n) {
        rqe *r = &q->rq[q->rq_head];
        q->rq_head = (q->rq_head + 1) % q->rq_cap;
        q->rq_n--;
        struct ibv_wc wc = {.wr_id = r->wr_id, .status = IBV_WC_WR_FLUSH_ERR, .qp_num = q->qp.qp_num};
        push_wc((mcq *)q->qp.recv_cq, &wc, 0);
    }
}

static int m_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad) {
    mqp *q = (mqp *)qp;
    pthread_mutex_lock(&g_mu);
    int rc = 0;
    for (; wr; wr = wr->next) {
        if (q->qp.state == IBV_QPS_RESET || wr->num_sge > 1) {
            rc = EINVAL;
            break;
        }
        if (q->rq_n == q->rq_cap) {
            g_rq_overrun++;
            rc = ENOMEM;
            break;
        }
        rqe *r = &q->rq[(q->rq_head + q->rq_n) % q->rq_cap];
        *r = (rqe){.wr_id = wr->wr_id, .n_sge = wr->num_sge};
        if (wr->num_sge) r->addr = wr->sg_list[0].addr, r->len = wr->sg_list[0].length, r->lkey = wr->sg_list[0].lkey;
        q->rq_n++;
        if (q->qp.state == IBV_QPS_ERR) qp_to_error(q);
    }
    if (rc) *bad = wr;
    pthread_mutex_unlock(&g_mu);
    return rc;
}

/* Gathers a work request's local bytes into buf; 0 or a protection error. */
static int gather(const struct ibv_send_wr *wr, uint8_t *buf, size_t cap, size_t *len) {
    *len = 0;
    for (int i = 0; i < wr->num_sge; i++) {
        const struct ibv_sge *s = &wr->sg_list[i];
        mmr *m = mr_by_key(s->lkey);
        if (!m || s->addr < (uintptr_t)m->mr.addr || s->addr + s->length > (uintptr_t)m->mr.addr + m->mr.length ||
            *len + s->length > cap)
            return 1;
        memcpy(buf + *len, (const void *)(uintptr_t)s->addr, s->length);
        *len += s->length;
    }
    return 0;
}

static int m_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad) {
    mqp *q = (mqp *)qp;
    static uint8_t buf[32u << 20];
    pthread_mutex_lock(&g_mu);
    int rc = 0;
    for (; wr; wr = wr->next) {
        if (q->qp.state != IBV_QPS_RTS || wr->num_sge > q->max_sge) {
            rc = EINVAL;
            break;
        }
        if (q->sq_out >= q->sq_cap) {
            g_sq_overrun++;
            rc = ENOMEM;
            break;
        }
        q->sq_out++;
        int uc = q->qp.qp_type == IBV_QPT_UC;
        struct ibv_wc mine = {.wr_id = wr->wr_id, .status = IBV_WC_SUCCESS, .qp_num = q->qp.qp_num,
                              .opcode = wr->opcode == IBV_WR_SEND ? IBV_WC_SEND : IBV_WC_RDMA_WRITE};
        size_t len = 0;
        mqp *d = qp_by_num(q->dest);
        if (gather(wr, buf, sizeof buf, &len)) {
            mine.status = IBV_WC_LOC_PROT_ERR;
        } else if (!d || d->qp.state < IBV_QPS_RTR || d->qp.state == IBV_QPS_ERR || d->dest != q->qp.qp_num) {
            if (!uc) mine.status = IBV_WC_RETRY_EXC_ERR; /* UC: nobody notices */
        } else if (d->rq_psn != q->sq_psn) {
            api_error("%s", "a QP's SQ PSN is not its peer's RQ PSN");
            mine.status = IBV_WC_RETRY_EXC_ERR;
        } else if (wr->opcode == IBV_WR_RDMA_WRITE || wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM) {
            g_rdma_writes++;
            mmr *m = len ? mr_by_key(wr->wr.rdma.rkey) : NULL;
            if (uc) api_error("%s", "the backend posted an RDMA write on a UC QP");
            if (len && (!m || !(m->access & IBV_ACCESS_REMOTE_WRITE) || !(d->access & IBV_ACCESS_REMOTE_WRITE) ||
                        m->mr.pd != d->qp.pd || wr->wr.rdma.remote_addr < (uintptr_t)m->mr.addr ||
                        wr->wr.rdma.remote_addr + len > (uintptr_t)m->mr.addr + m->mr.length)) {
                mine.status = IBV_WC_REM_ACCESS_ERR;
            } else {
                if (len) memcpy((void *)(uintptr_t)wr->wr.rdma.remote_addr, buf, len);
                if (wr->opcode == IBV_WR_RDMA_WRITE_WITH_IMM) {
                    if (!d->rq_n) {
                        g_no_receive++;
                        mine.status = IBV_WC_RNR_RETRY_EXC_ERR;
                    } else {
                        rqe *r = &d->rq[d->rq_head];
                        d->rq_head = (d->rq_head + 1) % d->rq_cap;
                        d->rq_n--;
                        struct ibv_wc wc = {.wr_id = r->wr_id, .status = IBV_WC_SUCCESS,
                                            .opcode = IBV_WC_RECV_RDMA_WITH_IMM, .wc_flags = IBV_WC_WITH_IMM,
                                            .imm_data = wr->imm_data, .byte_len = (uint32_t)len,
                                            .qp_num = d->qp.qp_num};
                        push_wc((mcq *)d->qp.recv_cq, &wc, 0);
                    }
                }
            }
        } else if (wr->opcode == IBV_WR_SEND) {
            g_sends++;
            if (wr->num_sge == 1 && len > 40) g_packed_sends++; /* header and payload in one entry */
            if (uc && g_drop_send && g_sends == g_drop_send) {
                /* lost on the wire: UC reports success to the sender */
            } else if (!d->rq_n) {
                g_no_receive++;
                if (!uc) mine.status = IBV_WC_RNR_RETRY_EXC_ERR;
            } else {
                rqe *r = &d->rq[d->rq_head];
                d->rq_head = (d->rq_head + 1) % d->rq_cap;
                d->rq_n--;
                mmr *m = mr_by_key(r->lkey);
                struct ibv_wc wc = {.wr_id = r->wr_id, .status = IBV_WC_SUCCESS, .opcode = IBV_WC_RECV,
                                    .byte_len = (uint32_t)len, .qp_num = d->qp.qp_num};
                if (len > r->len || !m || !(m->access & IBV_ACCESS_LOCAL_WRITE) || r->addr < (uintptr_t)m->mr.addr ||
                    r->addr + len > (uintptr_t)m->mr.addr + m->mr.length) {
                    api_error("%s", "a SEND larger than the receive buffer it landed in");
                    wc.status = IBV_WC_LOC_LEN_ERR;
                    mine.status = IBV_WC_REM_INV_REQ_ERR;
                } else if (len) {
                    memcpy((void *)(uintptr_t)r->addr, buf, len);
                }
                push_wc((mcq *)d->qp.recv_cq, &wc, 0);
            }
        } else {
            api_error("%s", "an opcode the backend should not use");
            mine.status = IBV_WC_REM_INV_REQ_ERR;
        }
        push_wc((mcq *)q->qp.send_cq, &mine, 1);
        if (mine.status != IBV_WC_SUCCESS) qp_to_error(q);
    }
    if (rc) *bad = wr;
    pthread_mutex_unlock(&g_mu);
    return rc;
}

/* ---- the entry points ---- */

/* Counts a verbs object made (+1) or freed (-1): check_clean wants none left. */
static void live_add(int d) {
    pthread_mutex_lock(&g_mu);
    g_live += d;
    pthread_mutex_unlock(&g_mu);
}

struct ibv_device **ibv_get_device_list(int *num_devices) {
    struct ibv_device **l = calloc(2, sizeof *l);
    l[0] = &g_dev;
    if (num_devices) *num_devices = 1;
    return l;
}

void ibv_free_device_list(struct ibv_device **list) { free(list); }

const char *ibv_get_device_name(struct ibv_device *device) { return device == &g_dev ? "mock0" : "?"; }

struct ibv_context *ibv_open_device(struct ibv_device *device) {
    struct ibv_context *c = calloc(1, sizeof *c);
    c->device = device;
    c->ops.poll_cq = m_poll_cq;
    c->ops.req_notify_cq = m_req_notify_cq;
    c->ops.post_send = m_post_send;
    c->ops.post_recv = m_post_recv;
    live_add(1);
    return c;
}

int ibv_close_device(struct ibv_context *context) {
    live_add(-1);
    free(context);
    return 0;
}

int ibv_query_device(struct ibv_context *context, struct ibv_device_attr *a) {
    (void)context;
    memset(a, 0, sizeof *a);
    a->max_qp = MAX_QPS;
    a->max_qp_wr = 1024;
    a->max_sge = 4;
    a->max_cqe = 4096;
    a->max_cq = 4096;
    a->max_mr = 1 << 16;
    a->max_pd = 64;
    a->phys_port_cnt = 1;
    return 0;
}

int ibv_query_port(struct ibv_context *context, uint8_t port_num, struct _compat_ibv_port_attr *compat) {
    (void)context;
    if (port_num != 1) return EINVAL;
    /* the inline wrapper hands over a whole struct ibv_port_attr */
    struct ibv_port_attr *a = (struct ibv_port_attr *)(void *)compat;
    a->state = IBV_PORT_ACTIVE;
    a->max_mtu = IBV_MTU_4096;
    a->active_mtu = IBV_MTU_1024;
    a->gid_tbl_len = 4;
    a->max_msg_sz = 1u << 30;
    a->lid = 0; /* as on RoCE: addressed by GID */
    a->link_layer = IBV_LINK_LAYER_ETHERNET;
    return 0;
}

int ibv_query_gid(struct ibv_context *context, uint8_t port_num, int index, union ibv_gid *gid) {
    (void)context;
    memset(gid, 0, sizeof *gid);
    if (port_num != 1 || index < 0 || index >= 4) return EINVAL;
    if (index == 1) { /* ::ffff:127.0.0.1, what RoCE lists for an IPv4 address */
        gid->raw[10] = gid->raw[11] = 0xff;
        gid->raw[12] = 127;
        gid->raw[15] = 1;
    }
    return 0;
}

struct ibv_pd *ibv_alloc_pd(struct ibv_context *context) {
    struct ibv_pd *pd = calloc(1, sizeof *pd);
    pd->context = context;
    live_add(1);
    return pd;
}

int ibv_dealloc_pd(struct ibv_pd *pd) {
    pthread_mutex_lock(&g_mu);
    int busy = 0;
    for (mmr *m = g_mrs; m; m = m->next) busy |= m->mr.pd == pd;
    for (int i = 0; i < MAX_QPS; i++) busy |= g_qps[i] && g_qps[i]->qp.pd == pd;
    if (busy) {
        api_error("%s", "ibv_dealloc_pd with memory regions or QPs still in the PD");
        pthread_mutex_unlock(&g_mu);
        return EBUSY;
    }
    g_live--;
    pthread_mutex_unlock(&g_mu);
    free(pd);
    return 0;
}

struct ibv_comp_channel *ibv_create_comp_channel(struct ibv_context *context) {
    mchan *c = calloc(1, sizeof *c);
    int p[2];
    if (pipe(p)) {
        free(c);
        return NULL;
    }
    fcntl(p[1], F_SETFL, O_NONBLOCK);
    c->ch.context = context;
    c->ch.fd = p[0];
    c->wfd = p[1];
    live_add(1);
    return &c->ch;
}

int ibv_destroy_comp_channel(struct ibv_comp_channel *channel) {
    mchan *c = (mchan *)channel;
    pthread_mutex_lock(&g_mu);
    if (c->cq) api_error("%s", "ibv_destroy_comp_channel while a CQ uses it");
    g_live--;
    pthread_mutex_unlock(&g_mu);
    close(c->ch.fd);
    close(c->wfd);
    free(c);
    return 0;
}

struct ibv_cq *ibv_create_cq(struct ibv_context *context, int cqe, void *cq_context, struct ibv_comp_channel *channel,
                             int comp_vector) {
    (void)comp_vector;
    if (cqe < 1 || cqe > 4096) {
        errno = EINVAL;
        return NULL;
    }
    mcq *c = calloc(1, sizeof *c);
    c->wc = calloc((size_t)cqe, sizeof *c->wc);
    c->is_send = calloc((size_t)cqe, 1);
    c->cap = cqe;
    c->cq.context = context;
    c->cq.channel = channel;
    c->cq.cq_context = cq_context;
    c->cq.cqe = cqe;
    pthread_mutex_lock(&g_mu);
    c->chan = (mchan *)channel;
    if (channel) c->chan->cq = c;
    g_live++;
    pthread_mutex_unlock(&g_mu);
    return &c->cq;
}

int ibv_destroy_cq(struct ibv_cq *cq) {
    mcq *c = (mcq *)cq;
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < MAX_QPS; i++)
        if (g_qps[i] && ((mcq *)g_qps[i]->qp.send_cq == c || (mcq *)g_qps[i]->qp.recv_cq == c)) {
            api_error("%s", "ibv_destroy_cq while a QP uses it");
            pthread_mutex_unlock(&g_mu);
            return EBUSY;
        }
    if (c->chan) c->chan->cq = NULL;
    g_live--;
    pthread_mutex_unlock(&g_mu);
    free(c->wc);
    free(c->is_send);
    free(c);
    return 0;
}

int ibv_get_cq_event(struct ibv_comp_channel *channel, struct ibv_cq **cq, void **cq_context) {
    mchan *c = (mchan *)channel;
    char x;
    if (read(c->ch.fd, &x, 1) != 1) return -1;
    pthread_mutex_lock(&g_mu);
    mcq *q = c->cq;
    pthread_mutex_unlock(&g_mu);
    if (!q) return -1;
    *cq = &q->cq;
    *cq_context = q->cq.cq_context;
    return 0;
}

void ibv_ack_cq_events(struct ibv_cq *cq, unsigned int nevents) {
    (void)cq;
    (void)nevents;
}

struct ibv_qp *ibv_create_qp(struct ibv_pd *pd, struct ibv_qp_init_attr *a) {
    if ((a->qp_type != IBV_QPT_RC && a->qp_type != IBV_QPT_UC) || (g_no_rc && a->qp_type == IBV_QPT_RC)) {
        errno = EOPNOTSUPP;
        return NULL;
    }
    if (!a->send_cq || !a->recv_cq || a->cap.max_send_wr > 1024 || a->cap.max_recv_wr > 1024 ||
        a->cap.max_send_sge > (g_one_sge ? 1u : 4u) ||
        a->cap.max_recv_sge > 4 || a->srq) {
        errno = EINVAL;
        return NULL;
    }
    mqp *q = calloc(1, sizeof *q);
    q->rq_cap = (int)a->cap.max_recv_wr;
    q->rq = calloc((size_t)q->rq_cap + 1, sizeof *q->rq);
    q->sq_cap = (int)a->cap.max_send_wr;
    q->max_sge = (int)a->cap.max_send_sge;
    q->qp.context = pd->context;
    q->qp.pd = pd;
    q->qp.send_cq = a->send_cq;
    q->qp.recv_cq = a->recv_cq;
    q->qp.qp_type = a->qp_type;
    q->qp.state = IBV_QPS_RESET;
    pthread_mutex_lock(&g_mu);
    q->qp.qp_num = g_next_qpn++;
    int slot = -1;
    for (int i = 0; i < MAX_QPS && slot < 0; i++)
        if (!g_qps[i]) slot = i;
    if (slot >= 0) g_qps[slot] = q, g_live++;
    pthread_mutex_unlock(&g_mu);
    if (slot < 0) {
        free(q->rq);
        free(q);
        errno = ENOMEM;
        return NULL;
    }
    return &q->qp;
}

int ibv_destroy_qp(struct ibv_qp *qp) {
    pthread_mutex_lock(&g_mu);
    for (int i = 0; i < MAX_QPS; i++)
        if (g_qps[i] == (mqp *)qp) g_qps[i] = NULL;
    g_live--;
    pthread_mutex_unlock(&g_mu);
    free(((mqp *)qp)->rq);
    free(qp);
    return 0;
}

/* The transitions and attribute masks of the ibv_modify_qp man page for RC
 * and UC; anything else is refused. */
int ibv_modify_qp(struct ibv_qp *qp, struct ibv_qp_attr *a, int mask) {
    mqp *q = (mqp *)qp;
    int rc_qp = qp->qp_type == IBV_QPT_RC;
    pthread_mutex_lock(&g_mu);
    int want = -1, ok = 1;
    if (a->qp_state == IBV_QPS_ERR) {
        want = IBV_QP_STATE;
    } else if (qp->state == IBV_QPS_RESET && a->qp_state == IBV_QPS_INIT) {
        want = IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS;
        ok = a->port_num == 1 && (rc_qp || !(a->qp_access_flags & ~IBV_ACCESS_REMOTE_WRITE));
    } else if (qp->state == IBV_QPS_INIT && a->qp_state == IBV_QPS_RTR) {
        want = IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN;
        if (rc_qp) want |= IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER;
        static const uint8_t zero[16];
        ok = a->path_mtu >= IBV_MTU_256 && a->path_mtu <= IBV_MTU_1024 && a->ah_attr.is_global &&
             a->ah_attr.grh.sgid_index == 1 && memcmp(a->ah_attr.grh.dgid.raw, zero, 16) && a->ah_attr.port_num == 1 &&
             a->dest_qp_num < (1u << 24) && a->rq_psn < (1u << 24);
    } else if (qp->state == IBV_QPS_RTR && a->qp_state == IBV_QPS_RTS) {
        want = IBV_QP_STATE | IBV_QP_SQ_PSN;
        if (rc_qp) want |= IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_MAX_QP_RD_ATOMIC;
        ok = a->sq_psn < (1u << 24);
    }
    if (want < 0 || mask != want || !ok) {
        char what[128];
        snprintf(what, sizeof what, "%s QP %d -> %d with mask 0x%x (want 0x%x)%s", rc_qp ? "RC" : "UC", (int)qp->state,
                 (int)a->qp_state, mask, want, ok ? "" : ", bad attribute values");
        api_error("ibv_modify_qp: %s", what);
        pthread_mutex_unlock(&g_mu);
        return EINVAL;
    }
    if (a->qp_state == IBV_QPS_ERR) {
        qp_to_error(q);
    } else {
        if (a->qp_state == IBV_QPS_INIT) q->access = a->qp_access_flags;
        if (a->qp_state == IBV_QPS_RTR) q->dest = a->dest_qp_num, q->rq_psn = a->rq_psn;
        if (a->qp_state == IBV_QPS_RTS) q->sq_psn = a->sq_psn;
        qp->state = a->qp_state;
    }
    pthread_mutex_unlock(&g_mu);
    return 0;
}

static struct ibv_mr *reg(struct ibv_pd *pd, void *addr, size_t length, int access) {
    if ((access & IBV_ACCESS_REMOTE_WRITE) && !(access & IBV_ACCESS_LOCAL_WRITE)) {
        pthread_mutex_lock(&g_mu);
        api_error("%s", "ibv_reg_mr: remote write without local write");
        pthread_mutex_unlock(&g_mu);
        errno = EINVAL;
        return NULL;
    }
    if (!addr || !length) {
        errno = EINVAL;
        return NULL;
    }
    mmr *m = calloc(1, sizeof *m);
    m->mr.context = pd->context;
    m->mr.pd = pd;
    m->mr.addr = addr;
    m->mr.length = length;
    m->access = access;
    pthread_mutex_lock(&g_mu);
    m->mr.lkey = m->mr.rkey = g_next_key++;
    m->next = g_mrs;
    g_mrs = m;
    g_live++;
    pthread_mutex_unlock(&g_mu);
    return &m->mr;
}

struct ibv_mr *ibv_reg_mr(struct ibv_pd *pd, void *addr, size_t length, int access) {
    return reg(pd, addr, length, access);
}

struct ibv_mr *ibv_reg_mr_iova2(struct ibv_pd *pd, void *addr, size_t length, uint64_t iova, unsigned int access) {
    if (iova != (uintptr_t)addr) {
        errno = EINVAL;
        return NULL;
    }
    return reg(pd, addr, length, (int)access);
}

int ibv_dereg_mr(struct ibv_mr *mr) {
    pthread_mutex_lock(&g_mu);
    for (mmr **pm = &g_mrs; *pm; pm = &(*pm)->next)
        if (&(*pm)->mr == mr) {
            mmr *m = *pm;
            *pm = m->next;
            g_live--;
            pthread_mutex_unlock(&g_mu);
            free(m);
            return 0;
        }
    api_error("%s", "ibv_dereg_mr of an unknown region");
    pthread_mutex_unlock(&g_mu);
    return EINVAL;
}

/* ---- tests on top of the shared device tests ---- */

static void check_clean(const char *when) {
    pthread_mutex_lock(&g_mu);
    CHECK_MSG(g_api_errors == 0, "%s: %u verbs API misuses, last: %s", when, g_api_errors, g_api_msg);
    CHECK_MSG(g_no_receive == 0, "%s: %u sends found no posted receive (flow control)", when, g_no_receive);
    CHECK_MSG(g_sq_overrun == 0 && g_rq_overrun == 0, "%s: queue overrun (send %u, receive %u)", when, g_sq_overrun,
              g_rq_overrun);
    CHECK_MSG(g_cq_overflow == 0, "%s: %u completions lost to a full CQ", when, g_cq_overflow);
    CHECK_MSG(g_live == 0, "%s: %d verbs objects left behind", when, g_live);
    g_api_errors = g_no_receive = g_sq_overrun = g_rq_overrun = g_cq_overflow = 0;
    pthread_mutex_unlock(&g_mu);
}

TEST(mock_rc_used_one_sided) {
    CHECK(g_rdma_writes > 600); /* the RC run wrote one-sided */
    check_clean("after the RC runs");
}

TEST(mock_uc_is_two_sided) {
    unsigned w0 = g_rdma_writes, s0 = g_sends;
    run_device_tests();
    CHECK_MSG(g_rdma_writes == w0, "%u RDMA writes on UC", g_rdma_writes - w0);
    CHECK(g_sends - s0 > 1000);
    check_clean("after the UC runs");
}

/* UC drops a frame: in the middle of a write (the next frame shows the
 * gap) and at the very end of one (only the heartbeat's count shows it).
 * Either way the receiving side fails the peer instead of waiting. */
TEST(mock_uc_loss) {
    for (int where = 0; where < 2; where++) {
        cm_xfer *a, *b;
        int pa, pb;
        char why[512];
        int ok = verbs_pair(&a, &b, &pa, &pb, why, sizeof why);
        CHECK_MSG(ok == 1, "%s", why);
        if (ok != 1) {
            cm_xfer_destroy(b);
            cm_xfer_destroy(a);
            continue;
        }
        static uint8_t dst[64 << 10], src[64 << 10];
        cm_xfer_mr *md = NULL, *ms = NULL;
        CHECK_OK(cm_xfer_mr_register(a, dst, sizeof dst, CM_XFER_MR_REMOTE_WRITE, &md));
        CHECK_OK(cm_xfer_mr_allow(a, md, pb));
        CHECK_OK(cm_xfer_mr_register(b, src, sizeof src, 0, &ms));
        cm_xfer_mr_desc d;
        cm_xfer_mr_desc_get(md, &d);
        size_t bytes = where == 0 ? sizeof src : 1000; /* 17 frames, or one */
        pthread_mutex_lock(&g_mu);
        g_drop_send = g_sends + (where == 0 ? 3 : 1);
        pthread_mutex_unlock(&g_mu);
        CHECK_OK(cm_xfer_write_imm(b, pa, ms, 0, &d, 0, bytes, 5, NULL, 0));
        int rc = cm_xfer_imm_wait(a, pb, 5, 1, 6000);
        CHECK_MSG(rc == CM_EPEER, "where %d: wait returned %d (%s)", where, rc, cm_last_error(rc));
        CHECK(cm_xfer_imm_poll(a, 5) == 0);
        g_drop_send = 0;
        cm_xfer_mr_deregister(a, md);
        cm_xfer_mr_deregister(b, ms);
        cm_xfer_destroy(b);
        cm_xfer_destroy(a);
    }
    check_clean("after the loss runs");
}

TEST(mock_one_sge_packed) {
    CHECK(g_packed_sends > 1000);
    check_clean("after the one-entry runs");
}

/* One end RC, the other UC: refused at connect with a sentence saying so. */
TEST(mock_type_mismatch) {
    cm_xfer_config cfg;
    xt_config(&cfg, "verbs", &g_key);
    cfg.listen = "127.0.0.1:0";
    cfg.peer_timeout_ms = 2000;
    unsetenv("CELLM_VERBS_QP");
    cm_xfer *a = NULL, *b = NULL;
    CHECK_OK(cm_xfer_create(&cfg, &a));
    setenv("CELLM_VERBS_QP", "uc", 1);
    cfg.listen = NULL;
    CHECK_OK(cm_xfer_create(&cfg, &b));
    unsetenv("CELLM_VERBS_QP");
    if (a && b) {
        int p = -1;
        int rc = xt_dial(b, a, 3000, &p);
        CHECK(rc != CM_OK);
        CHECK_MSG(strstr(cm_last_error(rc), "queue pairs") != NULL, "message: %s", cm_last_error(rc));
    }
    cm_xfer_destroy(b);
    cm_xfer_destroy(a);
    check_clean("after the mismatch");
}

/* Wrong cell key: refused before any queue-pair info is exchanged. */
TEST(mock_wrong_key) {
    cm_xfer_config cfg;
    xt_config(&cfg, "verbs", &g_key);
    cfg.listen = "127.0.0.1:0";
    cm_xfer *a = NULL, *b = NULL;
    CHECK_OK(cm_xfer_create(&cfg, &a));
    cfg.listen = NULL;
    cfg.key.bytes[0] ^= 1;
    CHECK_OK(cm_xfer_create(&cfg, &b));
    if (a && b) {
        int p = -1;
        CHECK(xt_dial(b, a, 3000, &p) == CM_EAUTH);
    }
    cm_xfer_destroy(b);
    cm_xfer_destroy(a);
    check_clean("after the wrong key");
}
#endif

int main(void) {
    if (sodium_init() < 0) return 1;
    cm_xfer_key_generate(&g_key);
#ifndef CM_HAVE_VERBS
    run_unit_tests(); /* the stand-in needs the headers: the device tests skip */
    run_device_tests();
    return test_summary();
#else
    unsetenv("CELLM_VERBS_QP");
    unsetenv("CELLM_VERBS_DEVICE");
    unsetenv("CELLM_VERBS_GID_INDEX");
    run_unit_tests(); /* no_device_path skips: the stand-in is a device */
    /* RC, as a RoCE NIC */
    run_device_tests();
    RUN(mock_rc_used_one_sided);
    RUN(mock_wrong_key);
    RUN(mock_type_mismatch);
    /* a device with no RC queue pairs (as Apple's): the backend falls back to UC */
    g_no_rc = 1;
    RUN(mock_uc_is_two_sided);
    RUN(mock_uc_loss);
    /* and whose QPs take one gather entry: frames are copied into slots */
    g_one_sge = 1;
    RUN(device_write_imm);
    RUN(device_send_recv);
    RUN(mock_one_sge_packed);
    g_one_sge = 0;
    g_no_rc = 0;
    return test_summary();
#endif
}
