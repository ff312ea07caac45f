/* xfer.c - the engine core shared by every backend: peer ids and names,
 * registered regions and their allowlists, completion queues, immediate
 * counters, peer events, posted recvs and buffered unexpected messages, and
 * the splitting of writes into segments.
 *
 * Invariants
 *   - One mutex (x->mu) guards all core state. The core never calls into the
 *     backend while holding it, so backends may call the core while holding
 *     their own locks (backend.h rule 6).
 *   - Every op given to a backend comes back exactly once through
 *     cm_xfer_core_op_done, which pushes exactly one completion.
 *   - Region ids carry a generation (low 12 bits slot+1, high bits a
 *     counter), so a stale descriptor never reaches a reused slot.
 *   - x->version grows on every counter bump and peer change: waiters spin
 *     on it briefly before sleeping, which keeps small round trips short. */
#include "xfer/xfer.h"

#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/log.h"
#include "base/status.h"
#include "base/time.h"
#include "xfer/backend.h"

#define MAX_PEERS 256
#define MAX_REGIONS 4095
#define SPIN_NS 60000

struct cm_xfer_mr {
    uint32_t id;
    uint8_t *base;
    size_t bytes;
    unsigned flags;
    int pins;                    /* writes landing right now */
    int dying;                   /* deregistering: refuse new writes, wait for pins */
    uint8_t allow[MAX_PEERS / 8];
    void *backend_state;
    cm_xfer_mr_desc desc;
};

struct cm_xfer_cq {
    cm_xfer *x; /* its lock guards the queue */
    cm_xfer_completion *items;
    size_t head, n, cap;
    pthread_cond_t cond;
    int dead;
};

typedef struct core_peer {
    int used;
    int up;
    int status;          /* reason when down */
    int dialed;          /* created by connect: addresses kept for reconnect */
    uint64_t epoch;      /* grows on each down */
    uint64_t instance;
    char name[CM_XFER_NAME_MAX];
    char **addrs;
    int n_addrs;
    size_t unexpected_bytes;
} core_peer;

typedef struct posted_recv {
    int peer;
    uint8_t *dst;
    size_t cap;
    cm_xfer_cq *cq;
    uint64_t user_data;
    struct posted_recv *next;
} posted_recv;

typedef struct unexpected_msg {
    int peer;
    uint8_t *bytes;
    size_t n;
    struct unexpected_msg *next;
} unexpected_msg;

typedef struct imm_slot {
    uint32_t imm;
    int used;
    uint64_t count;
} imm_slot;

struct cm_xfer {
    cm_xfer_config cfg;
    char *s_backend, *s_listen, *s_name;
    char name[CM_XFER_NAME_MAX];
    uint64_t instance;
    const cm_xfer_backend_ops *ops;
    void *bstate;

    pthread_mutex_t mu;
    pthread_cond_t changed; /* counters, peers, events */
    _Atomic uint64_t version;
    int closing;

    core_peer peers[MAX_PEERS];
    cm_xfer_mr *regions[MAX_REGIONS];
    uint32_t region_gen;
    imm_slot *imms;
    size_t imm_cap, imm_used;
    posted_recv *recvs, **recvs_tail;
    unexpected_msg *unexp, **unexp_tail;
    cm_xfer_event *events;
    size_t ev_head, ev_n, ev_cap;
    cm_xfer_cq *default_cq;
    _Atomic uint64_t next_write_id;
};

/* ---- small helpers ---- */

static void bump(cm_xfer *x) {
    atomic_fetch_add_explicit(&x->version, 1, memory_order_release);
    pthread_cond_broadcast(&x->changed);
}

static void deadline_after(struct timespec *ts, int timeout_ms) {
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) ts->tv_sec++, ts->tv_nsec -= 1000000000L;
}

static int cq_push_locked(cm_xfer_cq *cq, const cm_xfer_completion *c) {
    if (cq->n == cq->cap) {
        size_t ncap = cq->cap ? cq->cap * 2 : 64;
        cm_xfer_completion *ni = malloc(ncap * sizeof *ni);
        if (!ni) {
            CM_LOGE("xfer: out of memory growing a completion queue; a completion is lost");
            return CM_ENOMEM;
        }
        for (size_t i = 0; i < cq->n; i++) ni[i] = cq->items[(cq->head + i) % cq->cap];
        free(cq->items);
        cq->items = ni;
        cq->head = 0;
        cq->cap = ncap;
    }
    cq->items[(cq->head + cq->n) % cq->cap] = *c;
    cq->n++;
    pthread_cond_broadcast(&cq->cond);
    return CM_OK;
}

static void event_push_locked(cm_xfer *x, int type, int peer, int status) {
    if (x->ev_n == x->ev_cap) {
        size_t ncap = x->ev_cap ? x->ev_cap * 2 : 32;
        cm_xfer_event *ne = malloc(ncap * sizeof *ne);
        if (!ne) return;
        for (size_t i = 0; i < x->ev_n; i++) ne[i] = x->events[(x->ev_head + i) % x->ev_cap];
        free(x->events);
        x->events = ne;
        x->ev_head = 0;
        x->ev_cap = ncap;
    }
    x->events[(x->ev_head + x->ev_n) % x->ev_cap] = (cm_xfer_event){type, peer, status};
    x->ev_n++;
}

static imm_slot *imm_find_locked(cm_xfer *x, uint32_t imm, int create) {
    if (create && (x->imm_used + 1) * 2 > x->imm_cap) {
        size_t ncap = x->imm_cap ? x->imm_cap * 2 : 64;
        imm_slot *ns = calloc(ncap, sizeof *ns);
        if (!ns) return NULL;
        for (size_t i = 0; i < x->imm_cap; i++) {
            if (!x->imms[i].used) continue;
            size_t j = (x->imms[i].imm * 2654435761u) & (ncap - 1);
            while (ns[j].used) j = (j + 1) & (ncap - 1);
            ns[j] = x->imms[i];
        }
        free(x->imms);
        x->imms = ns;
        x->imm_cap = ncap;
    }
    if (!x->imm_cap) return NULL;
    size_t j = (imm * 2654435761u) & (x->imm_cap - 1);
    while (x->imms[j].used) {
        if (x->imms[j].imm == imm) return &x->imms[j];
        j = (j + 1) & (x->imm_cap - 1);
    }
    if (!create) return NULL;
    x->imms[j].used = 1;
    x->imms[j].imm = imm;
    x->imms[j].count = 0;
    x->imm_used++;
    return &x->imms[j];
}

static int peer_ok(cm_xfer *x, int peer) { return peer >= 0 && peer < MAX_PEERS && x->peers[peer].used; }

/* ---- config, create, destroy ---- */

void cm_xfer_config_init(cm_xfer_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->backend = "tcp";
    cfg->sockets_per_link = 2;
    cfg->chunk_bytes = 512 << 10;
    cfg->heartbeat_ms = 500;
    cfg->peer_timeout_ms = 4000;
    cfg->max_unexpected_bytes = 64u << 20;
    cfg->busy_poll_us = 50;
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

int cm_xfer_create(const cm_xfer_config *cfg_in, cm_xfer **out) {
    *out = NULL;
    if (sodium_init() < 0) return cm_errorf(CM_EUNSUPPORTED, "libsodium failed to initialise");
    cm_xfer *x = calloc(1, sizeof *x);
    if (!x) return CM_ENOMEM;
    int rc = CM_OK;
    x->cfg = *cfg_in;
    if (!x->cfg.backend) x->cfg.backend = "tcp";
    if (x->cfg.sockets_per_link < 1 || x->cfg.sockets_per_link > CM_XFER_MAX_SOCKS) {
        rc = cm_errorf(CM_EINVAL, "xfer: sockets_per_link %d outside 1..%d", x->cfg.sockets_per_link, CM_XFER_MAX_SOCKS);
        goto fail_early;
    }
    if (x->cfg.chunk_bytes < 4096) x->cfg.chunk_bytes = 4096;
    if (x->cfg.chunk_bytes > CM_XFER_MAX_SEG_BYTES) x->cfg.chunk_bytes = CM_XFER_MAX_SEG_BYTES;
    if (x->cfg.heartbeat_ms <= 0) x->cfg.heartbeat_ms = 500;
    if (x->cfg.peer_timeout_ms <= 0) x->cfg.peer_timeout_ms = 4000;
    if (x->cfg.peer_timeout_ms < 2 * x->cfg.heartbeat_ms) x->cfg.heartbeat_ms = x->cfg.peer_timeout_ms / 3 + 1;
    if (!x->cfg.max_unexpected_bytes) x->cfg.max_unexpected_bytes = 64u << 20;
    if (x->cfg.busy_poll_us < 0) x->cfg.busy_poll_us = 50;
    if (x->cfg.busy_poll_us > 10000) x->cfg.busy_poll_us = 10000;
    x->s_backend = dup_or_null(x->cfg.backend);
    x->s_listen = dup_or_null(x->cfg.listen);
    x->s_name = dup_or_null(x->cfg.name);
    x->cfg.backend = x->s_backend;
    x->cfg.listen = x->s_listen;
    x->cfg.name = x->s_name;
    randombytes_buf(&x->instance, sizeof x->instance);
    if (x->cfg.name && *x->cfg.name) {
        snprintf(x->name, sizeof x->name, "%s", x->cfg.name);
    } else {
        snprintf(x->name, sizeof x->name, "node-%016llx", (unsigned long long)x->instance);
    }
    for (char *p = x->name; *p; p++)
        if (*p < 0x20 || *p > 0x7e) *p = '_';
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->changed, NULL);
    x->recvs_tail = &x->recvs;
    x->unexp_tail = &x->unexp;
    x->region_gen = 1;

    const cm_xfer_backend_ops *ops = cm_xfer_backend_find(x->cfg.backend);
    if (!ops) {
        if (strcmp(x->cfg.backend, "verbs") && strcmp(x->cfg.backend, "fabric")) {
            rc = cm_errorf(CM_EINVAL, "xfer: unknown backend '%s' (tcp, verbs, fabric)", x->cfg.backend);
            goto fail;
        }
        if (x->cfg.backend_strict) {
            rc = cm_errorf(CM_EUNSUPPORTED, "xfer: backend '%s' is not built into this binary", x->cfg.backend);
            goto fail;
        }
        CM_LOGW("xfer: backend '%s' is not built into this binary; using tcp", x->cfg.backend);
        ops = &cm_xfer_tcp_ops;
    } else if (ops->probe) {
        char why[256] = "";
        if (ops->probe(why, sizeof why) != CM_OK) {
            if (x->cfg.backend_strict) {
                rc = cm_errorf(CM_EUNSUPPORTED, "xfer: backend '%s' cannot run here: %s", ops->name, why);
                goto fail;
            }
            CM_LOGW("xfer: backend '%s' cannot run here (%s); using tcp", ops->name, why);
            ops = &cm_xfer_tcp_ops;
        }
    }
    x->ops = ops;
    rc = cm_xfer_cq_create(x, &x->default_cq);
    if (rc) goto fail;
    rc = ops->create(x, &x->cfg, &x->bstate);
    if (rc) goto fail;
    *out = x;
    return CM_OK;
fail:
    if (x->default_cq) cm_xfer_cq_destroy(x, x->default_cq);
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->changed);
fail_early:
    free(x->s_backend);
    free(x->s_listen);
    free(x->s_name);
    free(x);
    return rc;
}

void cm_xfer_destroy(cm_xfer *x) {
    if (!x) return;
    pthread_mutex_lock(&x->mu);
    x->closing = 1;
    bump(x);
    pthread_mutex_unlock(&x->mu);
    x->ops->destroy(x->bstate); /* completes every op it owned */
    pthread_mutex_lock(&x->mu);
    while (x->recvs) {
        posted_recv *r = x->recvs;
        x->recvs = r->next;
        cm_xfer_completion c = {r->user_data, CM_ECLOSED, CM_XFER_OP_RECV, r->peer, 0};
        cq_push_locked(r->cq, &c);
        free(r);
    }
    while (x->unexp) {
        unexpected_msg *u = x->unexp;
        x->unexp = u->next;
        free(u->bytes);
        free(u);
    }
    for (int i = 0; i < MAX_REGIONS; i++)
        if (x->regions[i]) {
            free(x->regions[i]);
            x->regions[i] = NULL;
        }
    for (int i = 0; i < MAX_PEERS; i++) {
        for (int j = 0; j < x->peers[i].n_addrs; j++) free(x->peers[i].addrs[j]);
        free(x->peers[i].addrs);
    }
    pthread_mutex_unlock(&x->mu);
    cm_xfer_cq_destroy(x, x->default_cq);
    free(x->imms);
    free(x->events);
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->changed);
    free(x->s_backend);
    free(x->s_listen);
    free(x->s_name);
    free(x);
}

const char *cm_xfer_backend_name(const cm_xfer *x) { return x->ops->name; }

int cm_xfer_listen_addr(cm_xfer *x, char *buf, size_t cap) { return x->ops->listen_addr(x->bstate, buf, cap); }

/* ---- peers ---- */

int cm_xfer_connect(cm_xfer *x, const char *const *addrs, int n_addrs, int timeout_ms, int *peer) {
    if (n_addrs < 1 || n_addrs > CM_XFER_MAX_LINKS)
        return cm_errorf(CM_EINVAL, "xfer: %d addresses, expected 1..%d (one per link)", n_addrs, CM_XFER_MAX_LINKS);
    pthread_mutex_lock(&x->mu);
    int id = -1;
    for (int i = 0; i < MAX_PEERS; i++)
        if (!x->peers[i].used) {
            id = i;
            break;
        }
    if (id < 0) {
        pthread_mutex_unlock(&x->mu);
        return cm_errorf(CM_EFULL, "xfer: %d peers already", MAX_PEERS);
    }
    core_peer *p = &x->peers[id];
    memset(p, 0, sizeof *p);
    p->used = 1;
    p->dialed = 1;
    p->status = CM_ECONN;
    p->addrs = calloc((size_t)n_addrs, sizeof *p->addrs);
    for (int i = 0; p->addrs && i < n_addrs; i++) p->addrs[i] = strdup(addrs[i]);
    p->n_addrs = n_addrs;
    pthread_mutex_unlock(&x->mu);
    int rc = x->ops->connect(x->bstate, id, addrs, n_addrs, timeout_ms);
    if (rc) {
        int err = rc;
        const char *msg = cm_last_error(rc);
        char keep[512];
        snprintf(keep, sizeof keep, "%s", msg);
        pthread_mutex_lock(&x->mu);
        for (int j = 0; j < p->n_addrs; j++) free(p->addrs[j]);
        free(p->addrs);
        memset(p, 0, sizeof *p);
        pthread_mutex_unlock(&x->mu);
        return cm_errorf(err, "%s", keep);
    }
    *peer = id;
    return CM_OK;
}

int cm_xfer_reconnect(cm_xfer *x, int peer, int timeout_ms) {
    pthread_mutex_lock(&x->mu);
    if (!peer_ok(x, peer) || !x->peers[peer].dialed || !x->peers[peer].addrs) {
        pthread_mutex_unlock(&x->mu);
        return cm_errorf(CM_EINVAL, "xfer: peer %d was not dialed by this engine; it must dial in", peer);
    }
    if (x->peers[peer].up) {
        pthread_mutex_unlock(&x->mu);
        return CM_OK;
    }
    int n = x->peers[peer].n_addrs;
    char *addrs[CM_XFER_MAX_LINKS];
    for (int i = 0; i < n; i++) addrs[i] = strdup(x->peers[peer].addrs[i]);
    pthread_mutex_unlock(&x->mu);
    int rc = x->ops->connect(x->bstate, peer, (const char *const *)addrs, n, timeout_ms);
    for (int i = 0; i < n; i++) free(addrs[i]);
    return rc;
}

void cm_xfer_disconnect(cm_xfer *x, int peer) {
    if (!peer_ok(x, peer)) return;
    x->ops->disconnect(x->bstate, peer, CM_ECLOSED);
}

int cm_xfer_peer_status(cm_xfer *x, int peer) {
    pthread_mutex_lock(&x->mu);
    int rc = !peer_ok(x, peer) ? CM_EINVAL : x->peers[peer].up ? CM_OK : x->peers[peer].status;
    pthread_mutex_unlock(&x->mu);
    return rc;
}

const char *cm_xfer_peer_name(cm_xfer *x, int peer) {
    if (peer < 0 || peer >= MAX_PEERS) return "";
    return x->peers[peer].name;
}

int cm_xfer_event_next(cm_xfer *x, cm_xfer_event *ev, int timeout_ms) {
    struct timespec ts;
    if (timeout_ms > 0) deadline_after(&ts, timeout_ms);
    pthread_mutex_lock(&x->mu);
    int rc = CM_OK;
    while (!x->ev_n) {
        if (x->closing) {
            rc = CM_ECLOSED;
            break;
        }
        if (timeout_ms == 0) {
            rc = CM_ETIMEDOUT;
            break;
        }
        if (timeout_ms < 0)
            pthread_cond_wait(&x->changed, &x->mu);
        else if (pthread_cond_timedwait(&x->changed, &x->mu, &ts)) {
            if (!x->ev_n) rc = CM_ETIMEDOUT;
            break;
        }
    }
    if (rc == CM_OK && x->ev_n) {
        *ev = x->events[x->ev_head];
        x->ev_head = (x->ev_head + 1) % x->ev_cap;
        x->ev_n--;
    }
    pthread_mutex_unlock(&x->mu);
    return rc;
}

int cm_xfer_peer_links(cm_xfer *x, int peer, cm_xfer_link_stats *out, int max, int *n) {
    if (!peer_ok(x, peer)) return cm_errorf(CM_EINVAL, "xfer: no peer %d", peer);
    return x->ops->peer_links(x->bstate, peer, out, max, n);
}

/* ---- regions ---- */

int cm_xfer_mr_register(cm_xfer *x, void *base, size_t bytes, unsigned flags, cm_xfer_mr **out) {
    *out = NULL;
    if (!base && bytes) return cm_errorf(CM_EINVAL, "xfer: region with NULL base");
    cm_xfer_mr *mr = calloc(1, sizeof *mr);
    if (!mr) return CM_ENOMEM;
    mr->base = base;
    mr->bytes = bytes;
    mr->flags = flags;
    pthread_mutex_lock(&x->mu);
    int slot = -1;
    for (int i = 0; i < MAX_REGIONS; i++)
        if (!x->regions[i]) {
            slot = i;
            break;
        }
    if (slot < 0) {
        pthread_mutex_unlock(&x->mu);
        free(mr);
        return cm_errorf(CM_EFULL, "xfer: %d regions registered already", MAX_REGIONS);
    }
    x->region_gen = (x->region_gen + 1) & 0xfffff;
    if (!x->region_gen) x->region_gen = 1;
    mr->id = ((uint32_t)x->region_gen << 12) | (uint32_t)(slot + 1);
    mr->desc.region_id = mr->id;
    mr->desc.bytes = bytes;
    pthread_mutex_unlock(&x->mu);
    /* The region is not visible to the wire until it is in the table. */
    if (x->ops->mr_register) {
        int rc = x->ops->mr_register(x->bstate, mr, &mr->desc, &mr->backend_state);
        if (rc) {
            free(mr);
            return rc;
        }
    }
    pthread_mutex_lock(&x->mu);
    x->regions[slot] = mr;
    pthread_mutex_unlock(&x->mu);
    *out = mr;
    return CM_OK;
}

int cm_xfer_mr_allow(cm_xfer *x, cm_xfer_mr *mr, int peer) {
    if (peer < 0 || peer >= MAX_PEERS) return cm_errorf(CM_EINVAL, "xfer: no peer %d", peer);
    pthread_mutex_lock(&x->mu);
    mr->allow[peer / 8] |= (uint8_t)(1u << (peer % 8));
    pthread_mutex_unlock(&x->mu);
    return CM_OK;
}

void cm_xfer_mr_deregister(cm_xfer *x, cm_xfer_mr *mr) {
    if (!mr) return;
    pthread_mutex_lock(&x->mu);
    int slot = (int)(mr->id & 0xfff) - 1;
    mr->dying = 1;
    while (mr->pins > 0) {
        pthread_mutex_unlock(&x->mu);
        cm_sleep_ms(1);
        pthread_mutex_lock(&x->mu);
    }
    if (slot >= 0 && slot < MAX_REGIONS && x->regions[slot] == mr) x->regions[slot] = NULL;
    pthread_mutex_unlock(&x->mu);
    if (x->ops->mr_deregister) x->ops->mr_deregister(x->bstate, mr, mr->backend_state);
    free(mr);
}

void *cm_xfer_mr_base(const cm_xfer_mr *mr) { return mr->base; }
size_t cm_xfer_mr_bytes(const cm_xfer_mr *mr) { return mr->bytes; }
unsigned cm_xfer_mr_flags(const cm_xfer_mr *mr) { return mr->flags; }
void cm_xfer_mr_desc_get(const cm_xfer_mr *mr, cm_xfer_mr_desc *out) { *out = mr->desc; }

/* ---- completion queues ---- */

int cm_xfer_cq_create(cm_xfer *x, cm_xfer_cq **out) {
    cm_xfer_cq *cq = calloc(1, sizeof *cq);
    if (!cq) return CM_ENOMEM;
    pthread_cond_init(&cq->cond, NULL);
    cq->x = x;
    *out = cq;
    return CM_OK;
}

void cm_xfer_cq_destroy(cm_xfer *x, cm_xfer_cq *cq) {
    if (!cq) return;
    pthread_cond_destroy(&cq->cond);
    free(cq->items);
    free(cq);
}

int cm_xfer_cq_poll(cm_xfer_cq *cq, cm_xfer_completion *out, int max, int timeout_ms) {
    cm_xfer *x = cq->x;
    struct timespec ts;
    if (timeout_ms > 0) deadline_after(&ts, timeout_ms);
    pthread_mutex_lock(&x->mu);
    while (!cq->n && timeout_ms != 0 && !x->closing) {
        if (timeout_ms < 0)
            pthread_cond_wait(&cq->cond, &x->mu);
        else if (pthread_cond_timedwait(&cq->cond, &x->mu, &ts))
            break;
    }
    int got = 0;
    while (got < max && cq->n) {
        out[got++] = cq->items[cq->head];
        cq->head = (cq->head + 1) % cq->cap;
        cq->n--;
    }
    int closing = x->closing;
    pthread_mutex_unlock(&x->mu);
    return got || !closing ? got : CM_ECLOSED;
}

/* ---- operations ---- */

static int src_range(const cm_xfer_mr *mr, size_t off, size_t bytes, const char *what) {
    if (!mr) return bytes ? cm_errorf(CM_EINVAL, "xfer: %s without a source region", what) : CM_OK;
    if (off > mr->bytes || bytes > mr->bytes - off)
        return cm_errorf(CM_ERANGE, "xfer: %s of %zu bytes at offset %zu outside a %zu-byte region", what, bytes, off,
                         mr->bytes);
    return CM_OK;
}

static int peer_up_check(cm_xfer *x, int peer) {
    pthread_mutex_lock(&x->mu);
    int rc = !peer_ok(x, peer) ? cm_errorf(CM_EINVAL, "xfer: no peer %d", peer)
             : x->peers[peer].up ? CM_OK
                                 : cm_errorf(x->peers[peer].status ? x->peers[peer].status : CM_EPEER,
                                             "xfer: peer %d (%s) is down", peer, x->peers[peer].name);
    pthread_mutex_unlock(&x->mu);
    return rc;
}

int cm_xfer_send(cm_xfer *x, int peer, const cm_xfer_mr *mr, size_t off, size_t bytes, cm_xfer_cq *cq,
                 uint64_t user_data) {
    int rc = src_range(mr, off, bytes, "send");
    if (rc) return rc;
    if (bytes > CM_XFER_MAX_MSG_BYTES)
        return cm_errorf(CM_ERANGE, "xfer: message of %zu bytes exceeds %u", bytes, CM_XFER_MAX_MSG_BYTES);
    if ((rc = peer_up_check(x, peer))) return rc;
    cm_xfer_op *op = calloc(1, sizeof *op);
    if (!op) return CM_ENOMEM;
    op->kind = CM_XFER_OP_SEND;
    op->peer = peer;
    op->src_mr = mr;
    op->seg1.src = mr ? mr->base + off : NULL;
    op->seg1.bytes = (uint32_t)bytes;
    op->segs = &op->seg1;
    op->n_segs = 1;
    op->cq = cq ? cq : x->default_cq;
    op->user_data = user_data;
    op->total_bytes = bytes;
    rc = x->ops->send(x->bstate, op);
    if (rc) free(op);
    return rc;
}

int cm_xfer_recv_post(cm_xfer *x, int peer, cm_xfer_mr *mr, size_t off, size_t cap, cm_xfer_cq *cq,
                      uint64_t user_data) {
    int rc = src_range(mr, off, cap, "recv");
    if (rc) return rc;
    if (peer != CM_XFER_ANY_PEER && (peer < 0 || peer >= MAX_PEERS)) return cm_errorf(CM_EINVAL, "xfer: no peer %d", peer);
    if (!cq) cq = x->default_cq;
    uint8_t *dst = mr ? mr->base + off : NULL;
    pthread_mutex_lock(&x->mu);
    /* A message that arrived before this recv was posted is taken first. */
    for (unexpected_msg **pu = &x->unexp; *pu; pu = &(*pu)->next) {
        unexpected_msg *u = *pu;
        if (peer != CM_XFER_ANY_PEER && u->peer != peer) continue;
        *pu = u->next;
        if (x->unexp_tail == &u->next) x->unexp_tail = pu;
        x->peers[u->peer].unexpected_bytes -= u->n;
        cm_xfer_completion c = {user_data, CM_OK, CM_XFER_OP_RECV, u->peer, u->n};
        if (u->n > cap)
            c.status = CM_ERANGE, c.bytes = 0;
        else if (u->n)
            memcpy(dst, u->bytes, u->n);
        cq_push_locked(cq, &c);
        pthread_mutex_unlock(&x->mu);
        free(u->bytes);
        free(u);
        return CM_OK;
    }
    if (peer != CM_XFER_ANY_PEER && (!x->peers[peer].used || !x->peers[peer].up)) {
        rc = cm_errorf(CM_EPEER, "xfer: peer %d is down", peer);
        pthread_mutex_unlock(&x->mu);
        return rc;
    }
    posted_recv *r = calloc(1, sizeof *r);
    if (!r) {
        pthread_mutex_unlock(&x->mu);
        return CM_ENOMEM;
    }
    *r = (posted_recv){peer, dst, cap, cq, user_data, NULL};
    *x->recvs_tail = r;
    x->recvs_tail = &r->next;
    pthread_mutex_unlock(&x->mu);
    if (x->ops->recv_posted) x->ops->recv_posted(x->bstate, peer);
    return CM_OK;
}

static int write_common(cm_xfer *x, int peer, const cm_xfer_mr *src, const cm_xfer_mr_desc *dst, uint32_t imm,
                        cm_xfer_cq *cq, uint64_t user_data, cm_xfer_op *op) {
    op->kind = CM_XFER_OP_WRITE;
    op->peer = peer;
    op->imm = imm;
    op->dst_copy = *dst;
    op->dst = &op->dst_copy;
    op->dst_region = dst->region_id;
    op->src_mr = src;
    op->cq = cq ? cq : x->default_cq;
    op->user_data = user_data;
    op->write_id = atomic_fetch_add_explicit(&x->next_write_id, 1, memory_order_relaxed) + 1;
    int rc = x->ops->write(x->bstate, op);
    if (rc) {
        if (op->segs != &op->seg1) free(op->segs);
        free(op);
    }
    return rc;
}

int cm_xfer_write_imm(cm_xfer *x, int peer, const cm_xfer_mr *src, size_t src_off, const cm_xfer_mr_desc *dst,
                      uint64_t dst_off, size_t bytes, uint32_t imm, cm_xfer_cq *cq, uint64_t user_data) {
    int rc = src_range(src, src_off, bytes, "write");
    if (rc) return rc;
    if (dst_off > dst->bytes || bytes > dst->bytes - dst_off)
        return cm_errorf(CM_ERANGE, "xfer: write of %zu bytes at offset %llu outside the peer's %llu-byte region",
                         bytes, (unsigned long long)dst_off, (unsigned long long)dst->bytes);
    if ((rc = peer_up_check(x, peer))) return rc;
    size_t chunk = x->cfg.chunk_bytes;
    size_t n = bytes ? (bytes + chunk - 1) / chunk : 1;
    if (n > CM_XFER_MAX_SEGS_PER_WRITE) return cm_errorf(CM_ERANGE, "xfer: write of %zu bytes has too many chunks", bytes);
    cm_xfer_op *op = calloc(1, sizeof *op);
    if (!op) return CM_ENOMEM;
    op->segs = n == 1 ? &op->seg1 : calloc(n, sizeof *op->segs);
    if (!op->segs) {
        free(op);
        return CM_ENOMEM;
    }
    /* Equal-sized pieces rather than full chunks and a runt: a striped
     * write then finishes on every link at about the same time. */
    size_t per = bytes / n, extra = bytes % n, pos = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = per + (i < extra);
        op->segs[i].src = src ? src->base + src_off + pos : NULL;
        op->segs[i].dst_off = dst_off + pos;
        op->segs[i].bytes = (uint32_t)len;
        pos += len;
    }
    op->n_segs = (int)n;
    op->total_bytes = bytes;
    return write_common(x, peer, src, dst, imm, cq, user_data, op);
}

int cm_xfer_write_paged(cm_xfer *x, int peer, const cm_xfer_mr *src, const uint32_t *src_pages,
                        const cm_xfer_mr_desc *dst, const uint32_t *dst_pages, int n_pages, size_t page_bytes,
                        uint32_t imm, cm_xfer_cq *cq, uint64_t user_data) {
    if (n_pages < 1 || page_bytes < 1 || page_bytes > CM_XFER_MAX_SEG_BYTES ||
        (size_t)n_pages > CM_XFER_MAX_SEGS_PER_WRITE)
        return cm_errorf(CM_EINVAL, "xfer: paged write of %d pages of %zu bytes", n_pages, page_bytes);
    for (int i = 0; i < n_pages; i++) {
        int rc = src_range(src, (size_t)src_pages[i] * page_bytes, page_bytes, "paged write");
        if (rc) return rc;
        uint64_t off = (uint64_t)dst_pages[i] * page_bytes;
        if (off > dst->bytes || page_bytes > dst->bytes - off)
            return cm_errorf(CM_ERANGE, "xfer: paged write: page %u outside the peer's %llu-byte region", dst_pages[i],
                             (unsigned long long)dst->bytes);
    }
    int rc = peer_up_check(x, peer);
    if (rc) return rc;
    cm_xfer_op *op = calloc(1, sizeof *op);
    if (!op) return CM_ENOMEM;
    op->segs = calloc((size_t)n_pages, sizeof *op->segs);
    if (!op->segs) {
        free(op);
        return CM_ENOMEM;
    }
    for (int i = 0; i < n_pages; i++) {
        op->segs[i].src = src->base + (size_t)src_pages[i] * page_bytes;
        op->segs[i].dst_off = (uint64_t)dst_pages[i] * page_bytes;
        op->segs[i].bytes = (uint32_t)page_bytes;
    }
    op->n_segs = n_pages;
    op->total_bytes = (size_t)n_pages * page_bytes;
    return write_common(x, peer, src, dst, imm, cq, user_data, op);
}

/* ---- immediate counters ---- */

int cm_xfer_imm_wait(cm_xfer *x, int peer, uint32_t imm, uint64_t expected, int timeout_ms) {
    uint64_t start = cm_now_ns();
    uint64_t limit = timeout_ms < 0 ? UINT64_MAX : start + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        uint64_t seen = atomic_load_explicit(&x->version, memory_order_acquire);
        pthread_mutex_lock(&x->mu);
        imm_slot *s = imm_find_locked(x, imm, 0);
        if (s && s->count >= expected) {
            s->count -= expected;
            pthread_mutex_unlock(&x->mu);
            return CM_OK;
        }
        int rc = CM_OK;
        if (x->closing)
            rc = CM_ECLOSED;
        else if (peer != CM_XFER_ANY_PEER && (!peer_ok(x, peer) || !x->peers[peer].up))
            rc = cm_errorf(CM_EPEER, "xfer: peer %d (%s) went down while waiting for immediate %u", peer,
                           peer_ok(x, peer) ? x->peers[peer].name : "?", imm);
        uint64_t now = cm_now_ns();
        if (!rc && now >= limit)
            rc = cm_errorf(CM_ETIMEDOUT, "xfer: immediate %u reached %llu of %llu in %d ms", imm,
                           (unsigned long long)(s ? s->count : 0), (unsigned long long)expected, timeout_ms);
        if (rc) {
            pthread_mutex_unlock(&x->mu);
            return rc;
        }
        if (x->ops->progress && peer != CM_XFER_ANY_PEER) {
            /* Let this thread receive for itself: no hand-off through the
             * backend's thread on the latency-critical path. */
            pthread_mutex_unlock(&x->mu);
            uint64_t left_us = limit == UINT64_MAX ? 100000 : (limit - now) / 1000 + 1;
            if (x->ops->progress(x->bstate, peer, (int)(left_us > 100000 ? 100000 : left_us)) == CM_OK) continue;
            pthread_mutex_lock(&x->mu);
        }
        if (now - start < SPIN_NS) {
            /* Spin a little first: a round trip is often shorter than a
             * sleep-and-wake through the scheduler. */
            pthread_mutex_unlock(&x->mu);
            while (atomic_load_explicit(&x->version, memory_order_acquire) == seen && cm_now_ns() - start < SPIN_NS) {
            }
            continue;
        }
        if (atomic_load_explicit(&x->version, memory_order_acquire) == seen) {
            struct timespec ts;
            uint64_t left_ms = limit == UINT64_MAX ? 1000 : (limit - now) / 1000000ull + 1;
            deadline_after(&ts, (int)(left_ms > 1000 ? 1000 : left_ms));
            pthread_cond_timedwait(&x->changed, &x->mu, &ts);
        }
        pthread_mutex_unlock(&x->mu);
    }
}

uint64_t cm_xfer_imm_poll(cm_xfer *x, uint32_t imm) {
    pthread_mutex_lock(&x->mu);
    imm_slot *s = imm_find_locked(x, imm, 0);
    uint64_t v = s ? s->count : 0;
    pthread_mutex_unlock(&x->mu);
    return v;
}

/* ---- calls from backends ---- */

const cm_xfer_config *cm_xfer_core_config(cm_xfer *x) { return &x->cfg; }
const char *cm_xfer_core_name(cm_xfer *x) { return x->name; }
uint64_t cm_xfer_core_instance(cm_xfer *x) { return x->instance; }

int cm_xfer_core_peer_lookup(cm_xfer *x, const char *name, uint64_t instance, int *peer) {
    pthread_mutex_lock(&x->mu);
    int id = -1, free_id = -1;
    for (int i = 0; i < MAX_PEERS; i++) {
        if (x->peers[i].used && !strcmp(x->peers[i].name, name)) {
            id = i;
            break;
        }
        if (!x->peers[i].used && free_id < 0) free_id = i;
    }
    int stale = 0;
    if (id >= 0) {
        stale = x->peers[id].up && x->peers[id].instance != instance;
    } else if (free_id >= 0) {
        id = free_id;
        core_peer *p = &x->peers[id];
        memset(p, 0, sizeof *p);
        p->used = 1;
        p->status = CM_ECONN;
        p->instance = instance;
        snprintf(p->name, sizeof p->name, "%s", name);
    }
    pthread_mutex_unlock(&x->mu);
    if (id < 0) return cm_errorf(CM_EFULL, "xfer: %d peers already", MAX_PEERS);
    if (stale) {
        CM_LOGW("xfer: peer %s came back as a new instance; dropping its old connections", name);
        x->ops->disconnect(x->bstate, id, CM_EPEER);
    }
    *peer = id;
    return CM_OK;
}

void cm_xfer_core_peer_up(cm_xfer *x, int peer, const char *name, uint64_t instance) {
    pthread_mutex_lock(&x->mu);
    core_peer *p = &x->peers[peer];
    p->up = 1;
    p->status = CM_OK;
    p->instance = instance;
    snprintf(p->name, sizeof p->name, "%s", name);
    event_push_locked(x, CM_XFER_EV_PEER_UP, peer, CM_OK);
    bump(x);
    pthread_mutex_unlock(&x->mu);
    CM_LOGI("xfer: peer %d (%s) is up", peer, name);
}

void cm_xfer_core_peer_down(cm_xfer *x, int peer, int status, const char *why) {
    pthread_mutex_lock(&x->mu);
    core_peer *p = &x->peers[peer];
    if (!p->used || !p->up) {
        pthread_mutex_unlock(&x->mu);
        return;
    }
    p->up = 0;
    p->status = status ? status : CM_EPEER;
    p->epoch++;
    for (posted_recv **pr = &x->recvs; *pr;) {
        posted_recv *r = *pr;
        if (r->peer != peer) {
            pr = &r->next;
            continue;
        }
        *pr = r->next;
        if (x->recvs_tail == &r->next) x->recvs_tail = pr;
        cm_xfer_completion c = {r->user_data, p->status, CM_XFER_OP_RECV, peer, 0};
        cq_push_locked(r->cq, &c);
        free(r);
    }
    event_push_locked(x, CM_XFER_EV_PEER_DOWN, peer, p->status);
    bump(x);
    pthread_mutex_unlock(&x->mu);
    if (status == CM_ECLOSED)
        CM_LOGI("xfer: peer %d (%s) disconnected", peer, p->name);
    else
        CM_LOGW("xfer: peer %d (%s) is down: %s", peer, p->name, why ? why : cm_strerror(status));
}

void cm_xfer_core_op_done(cm_xfer *x, cm_xfer_op *op, int status) {
    cm_xfer_completion c = {op->user_data, status, op->kind, op->peer, status ? 0 : op->total_bytes};
    pthread_mutex_lock(&x->mu);
    cq_push_locked(op->cq, &c);
    pthread_mutex_unlock(&x->mu);
    if (op->segs && op->segs != &op->seg1) free(op->segs);
    free(op);
}

int cm_xfer_core_region_target(cm_xfer *x, int peer, uint32_t region_id, uint64_t off, uint64_t bytes,
                               uint8_t **dst) {
    int slot = (int)(region_id & 0xfff) - 1;
    pthread_mutex_lock(&x->mu);
    cm_xfer_mr *mr = slot >= 0 && slot < MAX_REGIONS ? x->regions[slot] : NULL;
    int rc = CM_OK;
    if (!mr || mr->id != region_id || mr->dying)
        rc = cm_errorf(CM_ENOTFOUND, "write into region %08x, which is not registered", region_id);
    else if (!(mr->flags & CM_XFER_MR_REMOTE_WRITE))
        rc = cm_errorf(CM_EFORMAT, "write into region %08x, which is not remotely writable", region_id);
    else if (!(mr->flags & CM_XFER_MR_ANY_PEER) &&
             (peer < 0 || peer >= MAX_PEERS || !(mr->allow[peer / 8] & (1u << (peer % 8)))))
        rc = cm_errorf(CM_EFORMAT, "write into region %08x, which is not registered for this peer", region_id);
    else if (off > mr->bytes || bytes > mr->bytes - off)
        rc = cm_errorf(CM_ERANGE, "write of %llu bytes at offset %llu outside region %08x of %zu bytes",
                       (unsigned long long)bytes, (unsigned long long)off, region_id, mr->bytes);
    if (!rc) {
        mr->pins++;
        *dst = mr->base + off;
    }
    pthread_mutex_unlock(&x->mu);
    return rc;
}

void cm_xfer_core_region_release(cm_xfer *x, uint32_t region_id) {
    int slot = (int)(region_id & 0xfff) - 1;
    pthread_mutex_lock(&x->mu);
    /* A pinned region stays in the table: deregister waits for its pins. */
    cm_xfer_mr *mr = slot >= 0 && slot < MAX_REGIONS ? x->regions[slot] : NULL;
    if (mr && mr->id == region_id && mr->pins > 0) mr->pins--;
    pthread_mutex_unlock(&x->mu);
}

void cm_xfer_core_write_landed(cm_xfer *x, int peer, uint32_t imm) {
    pthread_mutex_lock(&x->mu);
    imm_slot *s = imm_find_locked(x, imm, 1);
    if (s)
        s->count++;
    else
        CM_LOGE("xfer: out of memory for immediate counter %u; a write from peer %d is not counted", imm, peer);
    bump(x);
    pthread_mutex_unlock(&x->mu);
}

int cm_xfer_core_recv_begin(cm_xfer *x, int peer, uint8_t **dst, size_t *cap, void **token) {
    pthread_mutex_lock(&x->mu);
    /* Messages already buffered from this peer go first, to keep order. */
    for (unexpected_msg *u = x->unexp; u; u = u->next)
        if (u->peer == peer) {
            pthread_mutex_unlock(&x->mu);
            return CM_EAGAIN;
        }
    for (posted_recv **pr = &x->recvs; *pr; pr = &(*pr)->next) {
        posted_recv *r = *pr;
        if (r->peer != CM_XFER_ANY_PEER && r->peer != peer) continue;
        *pr = r->next;
        if (x->recvs_tail == &r->next) x->recvs_tail = pr;
        pthread_mutex_unlock(&x->mu);
        *dst = r->dst;
        *cap = r->cap;
        *token = r;
        return CM_OK;
    }
    pthread_mutex_unlock(&x->mu);
    return CM_EAGAIN;
}

void cm_xfer_core_recv_end(cm_xfer *x, void *token, int peer, int status, size_t bytes) {
    posted_recv *r = token;
    cm_xfer_completion c = {r->user_data, status, CM_XFER_OP_RECV, peer, status ? 0 : bytes};
    pthread_mutex_lock(&x->mu);
    cq_push_locked(r->cq, &c);
    pthread_mutex_unlock(&x->mu);
    free(r);
}

int cm_xfer_core_recv_unexpected(cm_xfer *x, int peer, uint8_t *msg, size_t bytes) {
    pthread_mutex_lock(&x->mu);
    core_peer *p = &x->peers[peer];
    /* The backend's recv_begin found no recv, but the lock was dropped since:
     * a recv posted in between is already queued and would never look at the
     * unexpected list again, so deliver to it here. Only when nothing from
     * this peer is buffered ahead of this message, to keep order. */
    int queued = 0;
    for (unexpected_msg *u = x->unexp; u && !queued; u = u->next) queued = u->peer == peer;
    for (posted_recv **pr = &x->recvs; !queued && *pr; pr = &(*pr)->next) {
        posted_recv *r = *pr;
        if (r->peer != CM_XFER_ANY_PEER && r->peer != peer) continue;
        *pr = r->next;
        if (x->recvs_tail == &r->next) x->recvs_tail = pr;
        cm_xfer_completion c = {r->user_data, CM_OK, CM_XFER_OP_RECV, peer, bytes};
        if (bytes > r->cap)
            c.status = CM_ERANGE, c.bytes = 0;
        else if (bytes)
            memcpy(r->dst, msg, bytes);
        cq_push_locked(r->cq, &c);
        pthread_mutex_unlock(&x->mu);
        free(msg);
        free(r);
        return CM_OK;
    }
    if (p->unexpected_bytes + bytes > x->cfg.max_unexpected_bytes) {
        pthread_mutex_unlock(&x->mu);
        return cm_errorf(CM_EFULL, "peer sent %zu bytes of messages nobody posted a recv for (limit %zu)",
                         p->unexpected_bytes + bytes, x->cfg.max_unexpected_bytes);
    }
    unexpected_msg *u = malloc(sizeof *u);
    if (!u) {
        pthread_mutex_unlock(&x->mu);
        return CM_ENOMEM;
    }
    *u = (unexpected_msg){peer, msg, bytes, NULL};
    *x->unexp_tail = u;
    x->unexp_tail = &u->next;
    p->unexpected_bytes += bytes;
    pthread_mutex_unlock(&x->mu);
    return CM_OK;
}

int cm_xfer_core_recv_deliver(cm_xfer *x, int peer, uint8_t *msg, size_t bytes) {
    /* The application may have posted a recv while the pieces of this
     * message were arriving: hand it over now rather than park it as
     * unexpected next to a waiting recv. The copy happens outside the core
     * lock (recv_begin took the recv off the list). */
    uint8_t *dst;
    size_t cap;
    void *token;
    if (cm_xfer_core_recv_begin(x, peer, &dst, &cap, &token) == CM_OK) {
        int fits = bytes <= cap;
        if (fits && bytes) memcpy(dst, msg, bytes);
        free(msg);
        cm_xfer_core_recv_end(x, token, peer, fits ? CM_OK : CM_ERANGE, fits ? bytes : 0);
        return CM_OK;
    }
    int rc = cm_xfer_core_recv_unexpected(x, peer, msg, bytes);
    if (rc) free(msg);
    return rc;
}
