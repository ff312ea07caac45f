/* verbs.c - the libibverbs transfer backend (RoCE, InfiniBand, Apple's RDMA
 * over Thunderbolt 5).
 *
 * State of this file: device discovery and the no-device path are done and
 * tested; the data path is NOT implemented yet, so create() refuses with
 * CM_EUNSUPPORTED even where a device exists, and the engine falls back to
 * tcp unless the backend was asked for strictly. The machines this was
 * written on have no RDMA device and no way to make one (no Soft-RoCE), so
 * nothing here could be run against a real device; see docs/xfer.md.
 *
 * Planned shape (the wire pieces exist in verbs_proto.h and are tested):
 * the same authenticated TCP side channel as the fabric backend (cell-key
 * HELLO/PROOF of wire.h), then an exchange of queue-pair info
 * (cm_verbs_qp_info) over it; RC queue pairs where the device has them,
 * IBV_WR_RDMA_WRITE for all but the last segment of a write and
 * IBV_WR_RDMA_WRITE_WITH_IMM for the last one, posted on one QP (RC
 * executes a QP's writes in order, so the immediate's receive completion,
 * IBV_WC_RECV_RDMA_WITH_IMM, means the whole write landed: one counter bump
 * per write); UC queue pairs and two-sided SEND/RECV into posted 4 KiB
 * buffers on Apple's rdma_en* devices. */
#ifdef CM_HAVE_VERBS
#include <errno.h>
#include <infiniband/verbs.h>
#include <stdio.h>
#include <string.h>

#include "base/status.h"
#include "xfer/backend.h"

/* CM_OK when at least one device is listed; else the sentence users see. */
static int verbs_probe(char *why, size_t cap) {
    int n = 0;
    errno = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    int err = errno;
    if (list) ibv_free_device_list(list);
    if (list && n > 0) return CM_OK;
    if (!list && err && err != ENODEV)
        snprintf(why, cap, "no RDMA device found (ibv_get_device_list is empty; the system says: %s); use --backend tcp", strerror(err));
    else
        snprintf(why, cap, "no RDMA device found (ibv_get_device_list is empty); use --backend tcp");
    return CM_EUNSUPPORTED;
}

static int verbs_create(cm_xfer *x, const cm_xfer_config *cfg, void **state) {
    (void)x;
    (void)cfg;
    *state = NULL;
    char why[256];
    if (verbs_probe(why, sizeof why)) return cm_errorf(CM_EUNSUPPORTED, "verbs: %s", why);
    return cm_errorf(CM_EUNSUPPORTED, "verbs: an RDMA device is present, but this build's verbs backend has no data "
                                      "path yet; use --backend tcp (or fabric with its verbs provider)");
}

static void verbs_destroy(void *state) { (void)state; }

static int verbs_listen_addr(void *state, char *buf, size_t cap) {
    (void)state;
    (void)buf;
    (void)cap;
    return cm_errorf(CM_ENOTFOUND, "xfer: no listener");
}

static int verbs_connect(void *state, int peer, const char *const *addrs, int n_addrs, int timeout_ms) {
    (void)state, (void)peer, (void)addrs, (void)n_addrs, (void)timeout_ms;
    return cm_errorf(CM_EUNSUPPORTED, "verbs: not implemented");
}

static void verbs_disconnect(void *state, int peer, int status) { (void)state, (void)peer, (void)status; }

static int verbs_refuse(void *state, cm_xfer_op *op) {
    (void)state, (void)op;
    return cm_errorf(CM_EUNSUPPORTED, "verbs: not implemented");
}

static int verbs_peer_links(void *state, int peer, cm_xfer_link_stats *out, int max, int *n) {
    (void)state, (void)peer, (void)out, (void)max;
    *n = 0;
    return CM_OK;
}

const cm_xfer_backend_ops cm_xfer_verbs_ops = {
    .name = "verbs",
    .probe = verbs_probe,
    .create = verbs_create,
    .destroy = verbs_destroy,
    .listen_addr = verbs_listen_addr,
    .connect = verbs_connect,
    .disconnect = verbs_disconnect,
    .send = verbs_refuse,
    .write = verbs_refuse,
    .peer_links = verbs_peer_links,
};

#else
/* Built without libibverbs: the backend is absent from backends.c. */
typedef int cm_verbs_not_built;
#endif
