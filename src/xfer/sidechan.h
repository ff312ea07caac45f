/* sidechan.h - the authenticated TCP side channel that the fabric and verbs
 * backends set every link up over: dial or accept, the cell-key HELLO/PROOF
 * exchange of wire.h, swapping setup records (endpoint address, queue-pair
 * info) under a deadline, and, once the link is up, reading its heartbeats
 * and noticing silence or EOF.
 *
 * What goes on the socket is exactly wire.h's handshake with one socket per
 * link (n_socks 1, sock 0); the records after it are the backend's own
 * (fabric_proto.h, verbs_proto.h). The module knows nothing of endpoints or
 * queue pairs: the backend turns an authenticated socket into a link
 * through the callbacks of cm_sidechan, and keeps its peers itself.
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

/* One per backend instance: who we are, how the backend makes and keeps
 * links (callbacks), and the accept thread. Filled by the backend before
 * any other call; only the accept thread's fields are the module's. */
typedef struct cm_sidechan {
    const char *backend;     /* "fabric", "verbs": named in messages and logs */
    const cm_xfer_key *key;  /* the cell key both proofs are made with */
    uint64_t instance;       /* ours, sent in our hello */
    const char *name;        /* ours, sent in our hello */
    int peer_timeout_ms;     /* bounds the setup of an accepted connection */
    cm_xfer *x;              /* for cm_xfer_core_peer_lookup (accepting side) */
    pthread_mutex_t *mu;     /* the backend's lock: held around link_attach and peer_fail */
    void *owner;             /* the backend, handed to the callbacks */
    /* Turns an authenticated socket into a link of the backend, its own
     * records swapped over fd by deadline. Takes fd: on failure fd is
     * closed and nothing is left. Called without *mu. */
    int (*link_setup)(void *owner, int fd, const char *addr, uint64_t deadline, void **link);
    /* Frees a link link_setup made that was never attached. */
    void (*link_free)(void *link);
    /* Adds a link to peer `pid`, as link remote->link of remote->n_links;
     * `dialed` when we dialed it (then it cannot be refused). On failure
     * the link is still the caller's. */
    int (*link_attach)(void *owner, int pid, void *link, const cm_wire_hello *remote, int dialed);
    /* Fails peer `pid` (nothing when it is not active). */
    void (*peer_fail)(void *owner, int pid, int status, const char *why);
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
int cm_sidechan_connect(const cm_sidechan *sc, int pid, const char *const *addrs, int n_addrs, int timeout_ms);

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
/* Stops and joins the accept thread and closes the listener (each only
 * when there is one). */
void cm_sidechan_stop(cm_sidechan *sc);

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
