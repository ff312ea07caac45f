/* xfer_util.h - what the transfer-engine tests (tests/unit/test_xfer*.c)
 * share: a strict backend config, dialing an engine's listener, waiting for
 * a peer to come up, and collecting completions. Header-only (static
 * inline), like test.h, so every test program stays one source file. */
#ifndef CM_TESTS_XFER_UTIL_H
#define CM_TESTS_XFER_UTIL_H

#include <stdint.h>

#include "base/status.h"
#include "base/time.h"
#include "xfer/xfer.h"

/* Defaults, the cell key, and `backend` with no fallback to tcp: a test of
 * a backend must not pass by quietly running on another. */
static inline void xt_config(cm_xfer_config *cfg, const char *backend, const cm_xfer_key *key) {
    cm_xfer_config_init(cfg);
    cfg->key = *key;
    cfg->backend = backend;
    cfg->backend_strict = 1;
}

/* Connects x over one link to the listener of `server`: cm_xfer_connect's
 * result, or the error of cm_xfer_listen_addr when server has no listener. */
static inline int xt_dial(cm_xfer *x, cm_xfer *server, int timeout_ms, int *peer) {
    char addr[96];
    int rc = cm_xfer_listen_addr(server, addr, sizeof addr);
    if (rc) return rc;
    const char *addrs[1] = {addr};
    return cm_xfer_connect(x, addrs, 1, timeout_ms, peer);
}

/* The accepting side's id for the next peer that comes up, or -1 when no
 * event arrives for timeout_ms. */
static inline int xt_peer_up(cm_xfer *x, int timeout_ms) {
    cm_xfer_event ev;
    while (cm_xfer_event_next(x, &ev, timeout_ms) == CM_OK)
        if (ev.type == CM_XFER_EV_PEER_UP) return ev.peer;
    return -1;
}

/* Waits up to timeout_ms for n completions and drops them; counts the
 * failed ones into *n_err (when not NULL). Returns how many came. */
static inline int xt_drain(cm_xfer_cq *cq, int n, int *n_err, int timeout_ms) {
    cm_xfer_completion c[64];
    int got = 0;
    uint64_t end = cm_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (got < n && cm_now_ns() < end) {
        int k = cm_xfer_cq_poll(cq, c, 64, 100);
        for (int i = 0; i < k; i++)
            if (c[i].status && n_err) (*n_err)++;
        if (k > 0) got += k;
    }
    return got;
}

/* Like xt_drain, but keeps the completions: up to n into c, in the order
 * they came. */
static inline int xt_collect(cm_xfer_cq *cq, cm_xfer_completion *c, int n, int timeout_ms) {
    int got = 0;
    uint64_t end = cm_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (got < n && cm_now_ns() < end) {
        int k = cm_xfer_cq_poll(cq, c + got, n - got, 100);
        if (k > 0) got += k;
    }
    return got;
}

#endif
