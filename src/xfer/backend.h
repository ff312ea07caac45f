/* backend.h - the table of functions every transfer backend implements (tcp,
 * verbs, fabric), and the calls a backend makes back into the engine core.
 *
 * Split of duties
 *   core (xfer.c)     peer ids and names, regions and their allowlists,
 *                     completion queues, immediate counters, peer events,
 *                     posted recvs, splitting a write into segments, keys.
 *   backend           connections and their authentication, moving bytes,
 *                     striping segments over links, heartbeats, detecting a
 *                     dead peer, its own progress thread(s).
 *
 * Rules every backend keeps (the API's promises rest on them)
 *   1. Every op handed to send/write completes exactly once, through
 *      cm_xfer_core_op_done(), with CM_OK or an error - also when the peer
 *      dies, the op is refused, or the backend is destroyed (CM_ECLOSED).
 *   2. Before a peer is reported up (cm_xfer_core_peer_up) every one of its
 *      connections has completed the mutual challenge-response of the cell
 *      key (cm_xfer_auth_* in auth.h, or an equivalent exchange over the
 *      backend's own connection setup). No other frame is accepted earlier.
 *   3. Incoming one-sided data lands only where cm_xfer_core_region_target()
 *      says it may (it checks region id, allowlist and bounds). An RDMA
 *      backend registers regions with remote write access only when their
 *      flags ask for it, and tells the core each landed write through
 *      cm_xfer_core_write_landed(), once per write (not per segment).
 *   4. Anything malformed from the wire closes that peer's connection with a
 *      logged reason (cm_xfer_core_peer_down(..., CM_EFORMAT)); never a crash
 *      or an assert.
 *   5. A peer that stays silent longer than cfg->peer_timeout_ms is reported
 *      down (CM_ETIMEDOUT / CM_EPEER) within about that time.
 *   6. Backend callbacks into the core may be made from any backend thread;
 *      the core never calls a backend function while holding its own lock,
 *      so a backend may call into the core while holding its own locks.
 */
#ifndef CM_XFER_BACKEND_H
#define CM_XFER_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "xfer/xfer.h"

/* One contiguous piece of a write: one frame / one work request. The
 * receiver counts segments per write id and bumps the immediate counter
 * once when all n_segs of a write have landed. */
typedef struct cm_xfer_seg {
    const uint8_t *src; /* local bytes */
    uint64_t dst_off;   /* offset in the destination region */
    uint32_t bytes;     /* <= cfg chunk_bytes (and <= CM_XFER_MAX_SEG_BYTES) */
} cm_xfer_seg;

#define CM_XFER_MAX_SEG_BYTES (16u << 20)
#define CM_XFER_MAX_MSG_BYTES (64u << 20)
#define CM_XFER_MAX_SEGS_PER_WRITE (1u << 20)

/* An operation handed from the core to a backend. Allocated and freed by the
 * core; the backend owns it from send()/write() until it calls
 * cm_xfer_core_op_done(op, status), after which it must not touch it. */
typedef struct cm_xfer_op {
    int kind;                 /* CM_XFER_OP_SEND or CM_XFER_OP_WRITE */
    int peer;
    uint64_t write_id;        /* unique per (sender engine, peer) for writes */
    uint32_t imm;             /* WRITE */
    uint32_t dst_region;      /* WRITE: region id at the peer */
    const cm_xfer_mr_desc *dst; /* WRITE: the full descriptor (rkeys, addr) */
    const cm_xfer_mr *src_mr; /* local region of the source bytes */
    int n_segs;               /* WRITE: >= 1 (a 0-byte write has 1 empty seg) */
    cm_xfer_seg *segs;        /* WRITE: n_segs pieces; SEND: exactly 1 */
    void *backend_data;       /* free for the backend's use */
    /* core-private below */
    cm_xfer_cq *cq;
    uint64_t user_data;
    size_t total_bytes;
    cm_xfer_mr_desc dst_copy;
    cm_xfer_seg seg1;
    struct cm_xfer_op *next;
} cm_xfer_op;

/* ---- the table ----------------------------------------------------------- */

typedef struct cm_xfer_backend_ops {
    const char *name; /* "tcp", "verbs", "fabric" */

    /* Whether this backend can run on this machine (devices present,
     * libraries usable). CM_OK, or CM_EUNSUPPORTED with a sentence in why
     * ("no RDMA device: ibv_get_device_list returned 0 devices"). Called
     * before create; must not keep state. */
    int (*probe)(char *why, size_t why_cap);

    /* Starts the backend for engine x: progress thread(s), and a listener
     * on cfg->listen when it is non-NULL. *state is the backend's handle,
     * passed to every other entry. On failure nothing is left running. */
    int (*create)(cm_xfer *x, const cm_xfer_config *cfg, void **state);

    /* Stops everything: closes connections, completes every op it still
     * owns with CM_ECLOSED, joins its threads, frees state. After it returns
     * the backend makes no more core calls. */
    void (*destroy)(void *state);

    /* Writes "HOST:PORT" of the listener (real port) into buf, or returns
     * CM_ENOTFOUND when there is no listener. */
    int (*listen_addr)(void *state, char *buf, size_t cap);

    /* Dials a peer (the core already allocated the id) through n_addrs
     * addresses, one link each, authenticates every connection, and returns
     * when the peer is up (having called cm_xfer_core_peer_up) or with
     * CM_ECONN / CM_EAUTH / CM_ETIMEDOUT, having left nothing open. Called
     * again with the same id to reconnect a peer that is down. Blocking;
     * called from an application thread, never from a backend thread. */
    int (*connect)(void *state, int peer, const char *const *addrs, int n_addrs, int timeout_ms);

    /* Closes all connections of a peer; ops it owns for that peer complete
     * with CM_ECLOSED; reports the peer down with `status`. No-op when the
     * peer has no connection. */
    void (*disconnect)(void *state, int peer, int status);

    /* Optional (NULL: nothing to do). Called after the core has created a
     * region and before its descriptor is handed out: an RDMA backend
     * registers the memory with each device and fills desc->rkeys/n_rkeys/
     * addr. *mr_state is the backend's handle for it. */
    int (*mr_register)(void *state, cm_xfer_mr *mr, cm_xfer_mr_desc *desc, void **mr_state);

    /* Optional. Undoes mr_register; called after the core stopped handing
     * out the region, and before the memory may be freed. */
    void (*mr_deregister)(void *state, cm_xfer_mr *mr, void *mr_state);

    /* Queues a SEND op (one segment, <= CM_XFER_MAX_MSG_BYTES). Sends to one
     * peer must reach the receiver in the order of these calls. Returns
     * CM_OK when it took the op (it will complete it later), or an error
     * when it did not take it (the core then reports nothing). */
    int (*send)(void *state, cm_xfer_op *op);

    /* Queues a WRITE op: every segment lands in the peer's region, in any
     * order and over any links; the receiver bumps the counter for op->imm
     * once, after the last segment. Local completion once all segments are
     * handed to the transport (or acknowledged). Same return rule as send. */
    int (*write)(void *state, cm_xfer_op *op);

    /* Optional. Tells the backend that a recv was posted (an RDMA backend
     * may post a receive work request). The core keeps the list of posted
     * buffers; backends get the destination through cm_xfer_core_recv_begin. */
    void (*recv_posted)(void *state, int peer);

    /* Optional (NULL: waiters sleep until the backend's thread wakes them).
     * Called by an application thread blocked in cm_xfer_imm_wait on a
     * specific peer, without core locks held: wait at most timeout_us for
     * data from that peer and process what arrived in the calling thread
     * (landing writes, bumping counters through the core). Returns CM_OK
     * (something or nothing arrived) or CM_EUNSUPPORTED to make the core
     * fall back to sleeping. This saves the two thread hand-offs of a round
     * trip (progress thread -> waiter) that dominate small-message latency. */
    int (*progress)(void *state, int peer, int timeout_us);

    /* Fills link statistics of a peer (see cm_xfer_link_stats); *n = links. */
    int (*peer_links)(void *state, int peer, cm_xfer_link_stats *out, int max, int *n);
} cm_xfer_backend_ops;

/* The known backends; a new backend adds its table to the list in
 * backends.c (one line, under its CM_HAVE_* build flag). NULL if unknown. */
const cm_xfer_backend_ops *cm_xfer_backend_find(const char *name);
extern const cm_xfer_backend_ops cm_xfer_tcp_ops;

/* ---- calls a backend makes into the core --------------------------------- */

const cm_xfer_config *cm_xfer_core_config(cm_xfer *x);
/* This engine's name and a random 64-bit instance id (new per create). */
const char *cm_xfer_core_name(cm_xfer *x);
uint64_t cm_xfer_core_instance(cm_xfer *x);

/* An accepting backend calls this when a remote engine authenticated: it
 * returns the peer id for that remote (same name -> same id as before, so
 * allowlists survive restarts), or an error when the table is full. If that
 * name is currently up with another instance id, the old connection is
 * stale: the core calls backend disconnect on it first (status CM_EPEER). */
int cm_xfer_core_peer_lookup(cm_xfer *x, const char *name, uint64_t instance, int *peer);

/* The peer's connections are all authenticated: it is up. */
void cm_xfer_core_peer_up(cm_xfer *x, int peer, const char *name, uint64_t instance);

/* The peer is down: waiters on it wake with `status`, posted recvs that
 * named it complete with `status`, a PEER_DOWN event is queued. The
 * backend must also complete the ops it owns for the peer. Idempotent. */
void cm_xfer_core_peer_down(cm_xfer *x, int peer, int status, const char *why);

/* Completes an op the backend owned (rule 1). */
void cm_xfer_core_op_done(cm_xfer *x, cm_xfer_op *op, int status);

/* Where a write segment from `peer` may land: checks that region_id is
 * registered, writable by this peer and that [off, off + bytes) fits.
 * On success *dst points into the region and the region is pinned
 * (deregister waits) until cm_xfer_core_region_release(). CM_EFORMAT /
 * CM_ERANGE / CM_ENOTFOUND with a message otherwise. */
int cm_xfer_core_region_target(cm_xfer *x, int peer, uint32_t region_id, uint64_t off,
                               uint64_t bytes, uint8_t **dst);
void cm_xfer_core_region_release(cm_xfer *x, uint32_t region_id);

/* A whole write (all its segments) from `peer` landed: counter[imm] += 1. */
void cm_xfer_core_write_landed(cm_xfer *x, int peer, uint32_t imm);

/* Message delivery. recv_begin finds the first recv posted for this peer or
 * any peer: on CM_OK *dst and *cap say where the message goes and *token
 * identifies the recv; CM_EAGAIN when none is posted (the backend buffers
 * the message with cm_xfer_core_recv_unexpected). recv_end completes it:
 * status CM_OK with `bytes`, or CM_ERANGE when the message was larger than
 * cap (the backend discarded it). */
int cm_xfer_core_recv_begin(cm_xfer *x, int peer, uint8_t **dst, size_t *cap, void **token);
void cm_xfer_core_recv_end(cm_xfer *x, void *token, int peer, int status, size_t bytes);
/* Takes ownership of a malloc'd message that arrived with no recv posted;
 * the core hands it to the next matching recv_post. CM_EFULL when the
 * peer's buffered bytes would exceed max_unexpected_bytes. */
int cm_xfer_core_recv_unexpected(cm_xfer *x, int peer, uint8_t *msg, size_t bytes);
/* A whole message that the backend assembled in a malloc'd buffer (no recv
 * was posted when its first piece came): hands it to a recv posted while
 * the rest arrived (CM_ERANGE completion when it does not fit), or else
 * buffers it with cm_xfer_core_recv_unexpected. Always takes msg (frees it
 * on failure); returns that function's error (CM_EFULL) for the backend to
 * fail the peer with. */
int cm_xfer_core_recv_deliver(cm_xfer *x, int peer, uint8_t *msg, size_t bytes);

#endif
