/* xfer.h - the transfer engine: one API for moving bytes between the nodes of
 * a cell over TCP or RDMA.
 *
 * Objects
 *   cm_xfer     an engine: one per process (or per NIC set). Owns a backend
 *               (tcp, verbs, fabric), a listener, peers, regions, completion
 *               queues and immediate counters.
 *   peer        a connected remote engine, named by a small int that stays the
 *               same across reconnects (peers are matched by the remote's
 *               config name). A peer has one or more links (one per address
 *               given to cm_xfer_connect; a link is a NIC or a cable), and a
 *               backend may open several sockets/queue pairs per link. Large
 *               writes are striped across the links of a peer.
 *   cm_xfer_mr  a registered memory region. Its descriptor (cm_xfer_mr_desc)
 *               is what a peer needs to write into it; it is sent to the
 *               peer by the application (cm_xfer_mr_desc_encode + send).
 *   cm_xfer_cq  a completion queue. Every operation that takes a cq reports
 *               exactly one completion there: success or an error. Nothing
 *               is dropped: the queue grows as needed.
 *
 * Operations
 *   send/recv   two-sided messages into buffers the receiver posted. Sends
 *               to one peer are delivered in the order they were issued.
 *   write_imm   one-sided write of a local range into a peer's region at an
 *               offset, carrying a 32-bit immediate. The receiver learns of
 *               it through the immediate counter of that value: each
 *               write_imm adds exactly 1, once all of its bytes have landed,
 *               however it was split or striped. Writes are NOT ordered
 *               with respect to each other: count them, do not rely on order.
 *               A write of 0 bytes is an immediate-only notification.
 *
 * Failure
 *   A peer that stops answering (killed, cable cut) is declared down after
 *   at most peer_timeout_ms: its pending operations complete with CM_EPEER
 *   (or CM_ETIMEDOUT), waiters on it return CM_EPEER, a CM_XFER_EV_PEER_DOWN
 *   event is queued, and the engine keeps working with its other peers.
 *   The connecting side calls cm_xfer_reconnect(); an accepting side sees the
 *   restarted peer come back under the same peer id (CM_XFER_EV_PEER_UP).
 *
 * Security
 *   Every connection proves knowledge of the cell key (mutual challenge-
 *   response, HMAC-SHA512/256) before any other frame is accepted. A peer may
 *   write only into regions registered for it (allowlist or
 *   CM_XFER_MR_ANY_PEER) and only within their bounds. Frames are not
 *   encrypted and not MACed after the handshake: see docs/xfer.md.
 *
 * Threads: every function may be called from any thread, except that an
 * engine must not be destroyed while other threads use it. Backends run
 * their own progress thread(s). */
#ifndef CM_XFER_XFER_H
#define CM_XFER_XFER_H

#include <stddef.h>
#include <stdint.h>

/* ---- cell key ------------------------------------------------------------ */

#define CM_XFER_KEY_BYTES 32

typedef struct cm_xfer_key {
    uint8_t bytes[CM_XFER_KEY_BYTES];
} cm_xfer_key;

/* 32 random bytes from the system's secure generator. */
int cm_xfer_key_generate(cm_xfer_key *out);

/* 64 lowercase hex digits and a NUL into out (cap >= 65). */
int cm_xfer_key_to_hex(const cm_xfer_key *key, char *out, size_t cap);

/* Parses a key written as 64 hex digits or as base64 (44 characters with
 * padding, or 43 without); surrounding whitespace and a trailing newline are
 * allowed, nothing else. `what` names the source in the error message. */
int cm_xfer_key_parse(const char *text, size_t len, const char *what, cm_xfer_key *out);

/* Reads the key from `path`, or from $CELLM_KEY_FILE when path is NULL or
 * empty. CM_ENOTFOUND when neither is given; CM_EIO when the file cannot be
 * read; CM_EFORMAT (with a message naming the file) when it is not a key. */
int cm_xfer_key_load(const char *path, cm_xfer_key *out);

/* ---- engine -------------------------------------------------------------- */

typedef struct cm_xfer cm_xfer;
typedef struct cm_xfer_mr cm_xfer_mr;
typedef struct cm_xfer_cq cm_xfer_cq;

#define CM_XFER_MAX_LINKS 8        /* links per peer */
#define CM_XFER_MAX_SOCKS 8        /* sockets per link (tcp) */
#define CM_XFER_NAME_MAX 48        /* engine name, bytes including NUL */
#define CM_XFER_ANY_PEER (-1)

typedef struct cm_xfer_config {
    const char *backend;     /* "tcp" (default when NULL), "verbs", "fabric";
                              * an RDMA backend with no device falls back to
                              * tcp with a warning unless backend_strict */
    int backend_strict;      /* 1: fail with CM_EUNSUPPORTED instead of falling back */
    cm_xfer_key key;         /* the cell key; required */
    const char *listen;      /* "HOST:PORT" to accept peers on (PORT 0 picks
                              * one, see cm_xfer_listen_addr), or NULL */
    const char *name;        /* this engine's name, sent to peers, which use it
                              * to recognise us after a restart (NULL: random) */
    int sockets_per_link;    /* tcp: parallel sockets per link, 1..8 (default 2) */
    size_t chunk_bytes;      /* writes are split into chunks of this size for
                              * striping (default 512 KiB, min 4 KiB) */
    int heartbeat_ms;        /* idle links send a heartbeat this often (default 500) */
    int peer_timeout_ms;     /* silence after which a peer is down (default 4000) */
    size_t max_unexpected_bytes; /* per peer: sends buffered while no recv is
                                  * posted (default 64 MiB); beyond it the
                                  * peer is dropped as misbehaving */
    int busy_poll_us;        /* a thread waiting on a peer that has been sending
                              * small frames polls its sockets without sleeping
                              * for up to this long before it blocks (default
                              * 50; 0 never spins, -1 the default): a wake-up of
                              * an idle CPU costs more than a small round trip,
                              * notably in virtual machines */
} cm_xfer_config;

/* Fills the defaults above; the key is zero and must be set. */
void cm_xfer_config_init(cm_xfer_config *cfg);

/* Creates the engine and starts its backend (and listener when cfg->listen).
 * The config strings are copied. */
int cm_xfer_create(const cm_xfer_config *cfg, cm_xfer **out);

/* Closes every connection, fails every pending operation with CM_ECLOSED
 * (reported to its cq), and frees the engine. No other thread may be inside
 * an engine call. Regions still registered are released here; cqs made
 * with cm_xfer_cq_create are not: destroy them after the engine. */
void cm_xfer_destroy(cm_xfer *x);

/* The name of the backend in use ("tcp", ...). */
const char *cm_xfer_backend_name(const cm_xfer *x);

/* "HOST:PORT" of the listener with the real port, CM_ENOTFOUND if none. */
int cm_xfer_listen_addr(cm_xfer *x, char *buf, size_t cap);

/* ---- peers --------------------------------------------------------------- */

/* Connects to a remote engine through n_addrs addresses ("HOST:PORT"), one
 * link per address (they must all reach the same remote engine), and
 * authenticates every socket. Returns once the peer is up, or an error:
 * CM_ECONN (refused/unreachable), CM_EAUTH (key mismatch), CM_ETIMEDOUT.
 * On success *peer is the peer id. */
int cm_xfer_connect(cm_xfer *x, const char *const *addrs, int n_addrs, int timeout_ms, int *peer);

/* Re-dials a peer created by cm_xfer_connect, after it went down (a
 * restart, a cable re-plugged). Same peer id; re-authenticated. Pending
 * operations of the old connection have already failed. */
int cm_xfer_reconnect(cm_xfer *x, int peer, int timeout_ms);

/* Closes the connection to a peer; its pending operations fail with
 * CM_ECLOSED. The peer id stays valid (reconnect, or the remote dials in). */
void cm_xfer_disconnect(cm_xfer *x, int peer);

/* CM_OK when the peer is up; CM_EPEER / CM_ETIMEDOUT / CM_ECLOSED / CM_EAUTH
 * with the reason it is down; CM_EINVAL for an unknown id. */
int cm_xfer_peer_status(cm_xfer *x, int peer);

/* The remote engine's name, "" if unknown. */
const char *cm_xfer_peer_name(cm_xfer *x, int peer);

enum cm_xfer_event_type {
    CM_XFER_EV_PEER_UP = 1,   /* a peer connected (either direction) and authenticated */
    CM_XFER_EV_PEER_DOWN = 2, /* a peer failed or was disconnected; status says why */
};

typedef struct cm_xfer_event {
    int type;   /* enum cm_xfer_event_type */
    int peer;
    int status; /* CM_OK for UP; the reason for DOWN */
} cm_xfer_event;

/* Takes the oldest peer event, waiting up to timeout_ms (0: poll, <0:
 * forever). CM_ETIMEDOUT when none came; CM_ECLOSED when the engine stops. */
int cm_xfer_event_next(cm_xfer *x, cm_xfer_event *ev, int timeout_ms);

/* Per-link measurements (for link probing and the bench). */
typedef struct cm_xfer_link_stats {
    char addr[64];
    double gbit_s_ewma;     /* measured send rate while backlogged, EWMA */
    uint64_t bytes_sent;
    uint64_t bytes_received;
} cm_xfer_link_stats;

/* Fills up to max entries; *n gets the number of links of the peer. */
int cm_xfer_peer_links(cm_xfer *x, int peer, cm_xfer_link_stats *out, int max, int *n);

/* ---- memory regions ------------------------------------------------------ */

enum cm_xfer_mr_flags {
    CM_XFER_MR_LOCAL = 0,            /* a source / recv buffer only */
    CM_XFER_MR_REMOTE_WRITE = 1 << 0,/* peers on the allowlist may write_imm into it */
    CM_XFER_MR_ANY_PEER = 1 << 1,    /* with REMOTE_WRITE: every authenticated peer may */
};

/* The part of a region a peer needs to write into it. Plain data: send it
 * with cm_xfer_mr_desc_encode. rkeys are per link, backend-defined (tcp
 * leaves them 0; verbs puts the ibv_mr rkey of each device there). */
typedef struct cm_xfer_mr_desc {
    uint32_t region_id;
    uint32_t n_rkeys;
    uint64_t bytes;
    uint64_t addr;                       /* remote virtual address (RDMA), 0 on tcp */
    uint64_t rkeys[CM_XFER_MAX_LINKS];
} cm_xfer_mr_desc;

#define CM_XFER_MR_DESC_WIRE_BYTES (4 + 4 + 4 + 8 + 8 + 8 * CM_XFER_MAX_LINKS)

/* Registers [base, base + bytes). The memory stays owned by the caller and
 * must outlive the registration. flags: enum cm_xfer_mr_flags. */
int cm_xfer_mr_register(cm_xfer *x, void *base, size_t bytes, unsigned flags, cm_xfer_mr **out);

/* Allows one more peer to write into a REMOTE_WRITE region. */
int cm_xfer_mr_allow(cm_xfer *x, cm_xfer_mr *mr, int peer);

/* Releases a region: afterwards frames that target it are refused (the
 * sender's peer connection is closed as misbehaving). Waits for any write
 * landing in it right now to finish. */
void cm_xfer_mr_deregister(cm_xfer *x, cm_xfer_mr *mr);

void *cm_xfer_mr_base(const cm_xfer_mr *mr);
size_t cm_xfer_mr_bytes(const cm_xfer_mr *mr);
/* The flags given to cm_xfer_mr_register (RDMA backends register remote
 * write access only when they ask for it). */
unsigned cm_xfer_mr_flags(const cm_xfer_mr *mr);
void cm_xfer_mr_desc_get(const cm_xfer_mr *mr, cm_xfer_mr_desc *out);

/* Little-endian wire form: u32 magic "XMRD", u32 region_id, u32 n_rkeys,
 * u64 bytes, u64 addr, u64 rkeys[8]. Decode checks magic and n_rkeys. */
int cm_xfer_mr_desc_encode(const cm_xfer_mr_desc *d, uint8_t *buf, size_t cap, size_t *n);
int cm_xfer_mr_desc_decode(const uint8_t *buf, size_t n, cm_xfer_mr_desc *out);

/* ---- completions --------------------------------------------------------- */

enum cm_xfer_op_kind { CM_XFER_OP_SEND = 1, CM_XFER_OP_RECV = 2, CM_XFER_OP_WRITE = 3 };

typedef struct cm_xfer_completion {
    uint64_t user_data; /* as given to the operation */
    int status;         /* CM_OK, or why it failed */
    int kind;           /* enum cm_xfer_op_kind */
    int peer;           /* for RECV posted to ANY_PEER: the sender */
    size_t bytes;       /* RECV: bytes received; SEND/WRITE: bytes sent */
} cm_xfer_completion;

int cm_xfer_cq_create(cm_xfer *x, cm_xfer_cq **out);
/* Frees a cq and the completions still in it. Destroy it only when no
 * operation that reports to it is pending (or after cm_xfer_destroy). */
void cm_xfer_cq_destroy(cm_xfer *x, cm_xfer_cq *cq);

/* Takes up to max completions, waiting up to timeout_ms for the first
 * (0: poll, <0: forever). Returns the number taken (>= 0), or CM_ECLOSED. */
int cm_xfer_cq_poll(cm_xfer_cq *cq, cm_xfer_completion *out, int max, int timeout_ms);

/* ---- operations ---------------------------------------------------------- */

/* Sends mr[off, off + bytes) to a peer's next posted recv. Completes (OK)
 * once every byte is handed to the transport; the buffer may then be reused.
 * Returns CM_OK when queued, or an error (bad range, peer down) with nothing
 * queued and no completion. Max message size 64 MiB. */
int cm_xfer_send(cm_xfer *x, int peer, const cm_xfer_mr *mr, size_t off, size_t bytes,
                 cm_xfer_cq *cq, uint64_t user_data);

/* Posts mr[off, off + cap) for the next message from `peer` (or any peer).
 * Posted buffers are filled in posting order. A message larger than cap
 * completes the recv with CM_ERANGE (its bytes are discarded). */
int cm_xfer_recv_post(cm_xfer *x, int peer, cm_xfer_mr *mr, size_t off, size_t cap,
                      cm_xfer_cq *cq, uint64_t user_data);

/* Writes src[src_off, src_off + bytes) into the peer's region `dst` at
 * dst_off, then adds 1 to the peer's immediate counter for `imm`. Local
 * completion (to cq) once every byte is handed to the transport. The range
 * is checked here against dst->bytes and again by the receiver. */
int cm_xfer_write_imm(cm_xfer *x, int peer, const cm_xfer_mr *src, size_t src_off,
                      const cm_xfer_mr_desc *dst, uint64_t dst_off, size_t bytes, uint32_t imm,
                      cm_xfer_cq *cq, uint64_t user_data);

/* Paged write: n_pages pages of page_bytes each, from src page src_pages[i]
 * to dst page dst_pages[i] (page index times page_bytes = offset). One
 * completion, and the immediate counter grows by exactly 1 when all pages
 * have landed. */
int cm_xfer_write_paged(cm_xfer *x, int peer, const cm_xfer_mr *src, const uint32_t *src_pages,
                        const cm_xfer_mr_desc *dst, const uint32_t *dst_pages, int n_pages,
                        size_t page_bytes, uint32_t imm, cm_xfer_cq *cq, uint64_t user_data);

/* ---- immediate counters -------------------------------------------------- */

/* Waits until the counter for `imm` reaches `expected`, then subtracts
 * `expected` from it (so a counter is reused round after round). `peer` is
 * the peer the writes come from: if it goes down first, returns CM_EPEER
 * (the counter is left alone). CM_ANY_PEER waits for whoever writes.
 * CM_ETIMEDOUT after timeout_ms (<0: no limit). */
int cm_xfer_imm_wait(cm_xfer *x, int peer, uint32_t imm, uint64_t expected, int timeout_ms);

/* The current value of the counter for imm (not consumed). */
uint64_t cm_xfer_imm_poll(cm_xfer *x, uint32_t imm);

#endif
