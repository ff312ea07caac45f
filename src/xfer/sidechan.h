/* sidechan.h - the authenticated TCP side channel that the fabric and verbs
 * backends set every link up over, and the peers those links make: dial or
 * accept, the cell-key HELLO/PROOF exchange of wire.h, swapping setup
 * records (endpoint address, queue-pair info) under a deadline, attaching
 * the link to its peer, and, once it is up, reading its heartbeats,
 * noticing silence or EOF, and failing the peer.
 *
 * What goes on the socket is exactly wire.h's handshake with one socket per
 * link (n_socks 1, sock 0); the records after it are the backend's own
 * (fabric_proto.h, verbs_proto.h). The module knows nothing of endpoints or
 * queue pairs: the backend's link struct starts with a cm_sidechan_link,
 * and the callbacks of cm_sidechan turn an authenticated socket into such a
 * link and tear one down.
 *
 * Peers: a peer is up once all the links its hello announced are READY.
 * Any link failing fails the whole peer (the core hears first, then every
 * link is killed). Everything here that touches peers or links runs under
 * the backend's lock (*mu), which is recursive.
 *
 * All sockets are non-blocking; setup calls wait with poll() until the
 * deadline (cm_now_ns clock). Errors carry a message (cm_last_error). */
#ifndef CM_XFER_SIDECHAN_H
#define CM_XFER_SIDECHAN_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "xfer/wire.h"
#include "xfer/xfer.h"

#define CM_SIDECHAN_MAX_PEERS 256 /* peer ids the core hands out (xfer.c's MAX_PEERS) */

enum { CM_SIDECHAN_NEW = 0, CM_SIDECHAN_READY, CM_SIDECHAN_DEAD };

/* The part of a link every backend has: the first member of the backend's
 * own link struct, so that a pointer to one converts to the other. */
typedef struct cm_sidechan_link {
    int state;              /* CM_SIDECHAN_NEW, READY (attached), DEAD */
    int peer, index;        /* peer id (-1 until attached), link index */
    int fd;                 /* the side channel */
    char addr[64];          /* the peer's side-channel address, for messages */
    uint64_t last_rx_ns, last_tx_ns;
    uint64_t bytes_sent, bytes_received;
} cm_sidechan_link;

typedef struct cm_sidechan_peer {
    int active, up;         /* active: has links (up or coming up) */
    int n_links, n_ready;   /* as its hello announced / READY so far */
    unsigned next_link;     /* round-robin cursor of cm_sidechan_pick */
    uint64_t instance;
    char name[CM_XFER_NAME_MAX];
    cm_sidechan_link *links[CM_XFER_MAX_LINKS];
} cm_sidechan_peer;

/* One per backend instance: who we are, how the backend makes and tears
 * down links (callbacks), its peers, and the accept thread. The backend
 * fills the fields above `peers` before any other call. */
typedef struct cm_sidechan {
    const char *backend;     /* "fabric", "verbs": named in messages and logs */
    const cm_xfer_key *key;  /* the cell key both proofs are made with */
    uint64_t instance;       /* ours, sent in our hello */
    const char *name;        /* ours, sent in our hello */
    int peer_timeout_ms;     /* bounds the setup of an accepted connection */
    cm_xfer *x;              /* for cm_xfer_core_peer_lookup (accepting side) */
    pthread_mutex_t *mu;     /* the backend's lock (recursive) */
    void *owner;             /* the backend, handed to the callbacks */
    uint8_t bye[8];          /* the backend's goodbye record ... */
    size_t bye_bytes;        /* ... and its length */
    /* Turns an authenticated socket into a link of the backend (state NEW,
     * peer -1), its own records swapped over fd by deadline. Takes fd: on
     * failure fd is closed and nothing is left. Called without *mu. */
    int (*link_setup)(void *owner, int fd, const char *addr, uint64_t deadline, cm_sidechan_link **link);
    /* Frees a link that is not attached, or dead (closes its fd). */
    void (*link_free)(cm_sidechan_link *link);
    /* Marks an attached link DEAD and fails what it holds; the backend
     * frees it later, from a thread that no longer polls it. Under *mu. */
    void (*link_kill)(void *owner, cm_sidechan_link *link, int status);
    /* Wakes the backend's progress thread: a link came up. */
    void (*wake)(void *owner);
    cm_sidechan_peer peers[CM_SIDECHAN_MAX_PEERS];
    /* the listener and its accept thread (zero until cm_sidechan_listen) */
    int listening, listen_fd;
    char listen_addr[96];
    pthread_t accept_thread;
    int accept_started;
    volatile int stop;
} cm_sidechan;

/* Sends / receives exactly n bytes by deadline. CM_ECONN when the peer
 * closes or the socket fails, CM_ETIMEDOUT past the deadline. */
int cm_sidechan_send(int fd, const void *p, size_t n, uint64_t deadline);
int cm_sidechan_recv(int fd, void *p, size_t n, uint64_t deadline);
/* Sends our n-byte record, then receives the peer's n-byte one (both sides
 * send first: records are small enough for the socket buffers). */
int cm_sidechan_swap(int fd, const void *mine, void *theirs, size_t n, uint64_t deadline);

/* The mutual challenge-response of wire.h on a fresh socket: role 1 dials
 * (announcing link `link` of n_links), role 2 accepts (and echoes the
 * client's link and n_links). On success *remote is the other side's hello.
 * CM_EAUTH when either side lacks the key (the accepting side logs the
 * refusal), CM_EFORMAT for a hello or proof that is not what this exchange
 * expects. */
int cm_sidechan_auth(const cm_sidechan *sc, int fd, int role, int link, int n_links, uint64_t deadline,
                     const char *addr, cm_wire_hello *remote);

/* Connects to addr and authenticates as link `link` of n_links. On success
 * *fd_out is the socket (the caller's). */
int cm_sidechan_dial(const cm_sidechan *sc, const char *addr, int link, int n_links, uint64_t deadline, int *fd_out,
                     cm_wire_hello *remote);

/* The backend's connect: dials every address (1..CM_XFER_MAX_LINKS) as one
 * link each (timeout_ms for all, 10 s when <= 0), sets each up with
 * link_setup, checks they all reach the same engine, then under *mu fails
 * what peer `pid` had ("replaced by a new connection") and attaches the
 * links to it. On failure nothing is left and the peer is untouched. */
int cm_sidechan_connect(cm_sidechan *sc, int pid, const char *const *addrs, int n_addrs, int timeout_ms);

/* Opens the listening socket on spec (HOST:PORT, as cm_sock_listen). */
int cm_sidechan_listen(cm_sidechan *sc, const char *spec);
/* The listener's actual address; CM_ENOTFOUND when there is none. */
int cm_sidechan_listen_addr(const cm_sidechan *sc, char *buf, size_t cap);
/* Starts the accept thread when listening (nothing otherwise): one
 * connection at a time, each authenticated, set up (link_setup), matched to
 * its peer and attached (link_attach, not dialed) within peer_timeout_ms. A
 * connection that fails any step is closed and logged (a wrong key by
 * cm_sidechan_auth). */
int cm_sidechan_accept_start(cm_sidechan *sc);
/* A backend's start, in the order that keeps it safe: the listener (when
 * listen is not NULL), then the backend's progress thread (thread_main(arg)
 * in *thread, *started set once it runs), then the accept thread, so that
 * no link is accepted before the thread that serves it runs. On failure
 * (with a message) the backend's destroy undoes what was started. */
int cm_sidechan_start(cm_sidechan *sc, const char *listen, pthread_t *thread, int *started,
                      void *(*thread_main)(void *), void *arg);
/* Stops and joins the accept thread and closes the listener (each only
 * when there is one). */
void cm_sidechan_stop(cm_sidechan *sc);

/* Fails peer `pid` and kills its links (nothing when it is not active):
 * the core hears `why` first when the peer was up; a peer still coming up
 * is only logged. Under *mu. */
void cm_sidechan_peer_fail(cm_sidechan *sc, int pid, int status, const char *why);
/* Fails a link's peer, or only the link when it has none; `why` is
 * prefixed with the link's address. Nothing for a dead link. Under *mu. */
void cm_sidechan_link_fail(cm_sidechan *sc, cm_sidechan_link *l, int status, const char *why);
/* A READY link of an up peer: link `which`, or with which < 0 the next one
 * round-robin. CM_EPEER when the peer or that link is down. Under *mu. */
int cm_sidechan_pick(cm_sidechan *sc, int pid, int which, cm_sidechan_link **out);
/* Says goodbye on every READY link of peer pid and fails it with status
 * ("disconnected" for CM_ECLOSED, else "dropped"). Takes *mu. */
void cm_sidechan_disconnect(cm_sidechan *sc, int pid, int status);
/* Says goodbye to every peer and fails it with CM_ECLOSED, quietly (the
 * engine is going away). Under *mu, with the accept thread stopped. */
void cm_sidechan_close_peers(cm_sidechan *sc);
/* The backend's peer_links: address and byte counts of each link. Takes *mu. */
int cm_sidechan_peer_links(cm_sidechan *sc, int pid, cm_xfer_link_stats *out, int max, int *n);

/* Reads what the side channel of an up link holds into buf. CM_OK with
 * *n 0 when nothing is there now; CM_EPEER with the reason on EOF or error. */
int cm_sidechan_read(int fd, uint8_t *buf, size_t cap, size_t *n);
/* Sends what the kernel takes now of n bytes (*sent, maybe 0). CM_EPEER with
 * the reason when the socket failed. */
int cm_sidechan_post(int fd, const void *p, size_t n, size_t *sent);
/* CM_OK, or CM_ETIMEDOUT with the reason when nothing came for longer than
 * timeout_ms since last_rx_ns. */
int cm_sidechan_check_silence(uint64_t now_ns, uint64_t last_rx_ns, int timeout_ms);

#endif
