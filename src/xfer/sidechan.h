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

#include <stddef.h>
#include <stdint.h>

#include "xfer/wire.h"
#include "xfer/xfer.h"

typedef struct cm_sidechan {
    const char *backend;     /* "fabric", "verbs": named in messages and logs */
    const cm_xfer_key *key;  /* the cell key both proofs are made with */
    uint64_t instance;       /* ours, sent in our hello */
    const char *name;        /* ours, sent in our hello */
    int peer_timeout_ms;     /* bounds the setup of an accepted connection */
    cm_xfer *x;              /* for cm_xfer_core_peer_lookup (accepting side) */
    void *owner;             /* the backend, handed to the callbacks */
    /* Turns an authenticated socket into a link of the backend, its own
     * records swapped over fd by deadline. Takes fd: on failure fd is
     * closed and nothing is left. */
    int (*link_setup)(void *owner, int fd, const char *addr, uint64_t deadline, void **link);
    /* Frees a link link_setup made that was never attached. */
    void (*link_free)(void *link);
    /* Adds an accepted link to peer `pid` (takes the backend's lock
     * itself). On failure the link is still the caller's. */
    int (*link_attach)(void *owner, int pid, void *link, const cm_wire_hello *remote);
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

/* Dials every address as one link each (timeout_ms for all, 10 s when <= 0)
 * and sets each up with sc->link_setup; all must reach the same engine.
 * On success links[i] and remote[i] hold link i; on failure nothing is left. */
int cm_sidechan_connect(const cm_sidechan *sc, const char *const *addrs, int n_addrs, int timeout_ms, void **links,
                        cm_wire_hello *remote);

/* Waits up to wait_ms for a connection on listen_fd; authenticates it, sets
 * it up (link_setup), finds its peer and attaches it (link_attach), all
 * within peer_timeout_ms. A connection that fails any step is closed and
 * logged (a wrong key by cm_sidechan_auth); the listener keeps going. */
void cm_sidechan_accept_one(const cm_sidechan *sc, int listen_fd, int wait_ms);

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
