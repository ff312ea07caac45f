/* test_xfer_verbs.c - what of the verbs backend can be checked without an
 * RDMA device: the no-device path (probe and strict create fail with the
 * sentence users see; a non-strict engine falls back to tcp and works), the
 * queue-pair info and two-sided frame encodings with hostile inputs, the
 * immediate encoding, and region descriptors carrying RDMA keys and
 * addresses. Where a device is present the no-device checks skip, saying so. */
#include <arpa/inet.h>
#include <sodium.h>
#include <stdlib.h>

#include "base/status.h"
#include "test.h"
#include "xfer/backend.h"
#include "xfer/verbs_proto.h"
#include "xfer/xfer.h"

static cm_xfer_key g_key;

TEST(no_device_path) {
#ifndef CM_HAVE_VERBS
    TEST_SKIP("built without libibverbs (install libibverbs-dev and re-run cmake)");
#else
    const cm_xfer_backend_ops *ops = cm_xfer_backend_find("verbs");
    CHECK(ops != NULL);
    if (!ops) return;
    char why[256] = "";
    if (ops->probe(why, sizeof why) == CM_OK) TEST_SKIP("an RDMA device is present here; the no-device path cannot be shown");
    CHECK_MSG(strstr(why, "no RDMA device found (ibv_get_device_list is empty") != NULL, "why: %s", why);
    CHECK(strstr(why, "use --backend tcp") != NULL);

    cm_xfer_config cfg;
    cm_xfer_config_init(&cfg);
    cfg.key = g_key;
    cfg.backend = "verbs";
    cfg.backend_strict = 1;
    cm_xfer *x = NULL;
    int rc = cm_xfer_create(&cfg, &x);
    CHECK(rc == CM_EUNSUPPORTED && x == NULL);
    CHECK_MSG(strstr(cm_last_error(rc), "no RDMA device found") != NULL, "message: %s", cm_last_error(rc));
    /* backend's own create refuses too, whoever calls it */
    void *st = NULL;
    CHECK(ops->create(NULL, &cfg, &st) == CM_EUNSUPPORTED);

    /* not strict: falls back to tcp, and the fallback moves bytes */
    cfg.backend_strict = 0;
    cfg.listen = "127.0.0.1:0";
    cm_xfer *a = NULL, *b = NULL;
    CHECK_OK(cm_xfer_create(&cfg, &a));
    cfg.listen = NULL;
    CHECK_OK(cm_xfer_create(&cfg, &b));
    if (!a || !b) {
        cm_xfer_destroy(a);
        cm_xfer_destroy(b);
        return;
    }
    CHECK(!strcmp(cm_xfer_backend_name(a), "tcp"));
    char addr[96];
    CHECK_OK(cm_xfer_listen_addr(a, addr, sizeof addr));
    const char *addrs[1] = {addr};
    int pa = -1, pb = -1;
    CHECK_OK(cm_xfer_connect(b, addrs, 1, 3000, &pa));
    cm_xfer_event ev;
    while (pb < 0 && cm_xfer_event_next(a, &ev, 3000) == CM_OK)
        if (ev.type == CM_XFER_EV_PEER_UP) pb = ev.peer;
    static uint8_t dst[256], src[256];
    for (int i = 0; i < 256; i++) src[i] = (uint8_t)(255 - i);
    cm_xfer_mr *md = NULL, *ms = NULL;
    CHECK_OK(cm_xfer_mr_register(a, dst, sizeof dst, CM_XFER_MR_REMOTE_WRITE, &md));
    cm_xfer_mr_allow(a, md, pb);
    CHECK_OK(cm_xfer_mr_register(b, src, sizeof src, 0, &ms));
    cm_xfer_mr_desc d;
    cm_xfer_mr_desc_get(md, &d);
    CHECK_OK(cm_xfer_write_imm(b, pa, ms, 0, &d, 0, sizeof src, 3, NULL, 0));
    CHECK_OK(cm_xfer_imm_wait(a, pb, 3, 1, 3000));
    CHECK(!memcmp(dst, src, sizeof src));
    cm_xfer_mr_deregister(a, md);
    cm_xfer_mr_deregister(b, ms);
    cm_xfer_destroy(b);
    cm_xfer_destroy(a);
#endif
}

TEST(qp_info_roundtrip_and_hostile) {
    cm_verbs_qp_info q = {.qp_type = CM_VERBS_QPT_RC, .port = 1, .mtu = 5, .qpn = 0x123456, .psn = 0xabcdef,
                          .lid = 0x1234, .gid_index = 3, .rx_depth = 512, .frame_bytes = 4096};
    for (int i = 0; i < 16; i++) q.gid[i] = (uint8_t)(0xf0 + i);
    uint8_t w[CM_VERBS_QP_INFO_BYTES], t[CM_VERBS_QP_INFO_BYTES];
    cm_verbs_qp_info_encode(&q, w);
    cm_verbs_qp_info r;
    CHECK_OK(cm_verbs_qp_info_decode(w, &r));
    CHECK(r.qp_type == q.qp_type && r.port == 1 && r.mtu == 5 && r.qpn == q.qpn && r.psn == q.psn);
    CHECK(r.lid == q.lid && r.gid_index == 3 && !memcmp(r.gid, q.gid, 16) && r.rx_depth == 512 && r.frame_bytes == 4096);
    /* one bad field at a time */
    struct { int off; uint8_t v; } bad[] = {
        {0, 'X'},  /* magic */
        {4, 2},    /* version */
        {5, 4},    /* UD is not spoken */
        {6, 0},    /* port 0 */
        {7, 6},    /* mtu code */
        {11, 1},   /* qpn beyond 24 bits */
        {15, 1},   /* psn beyond 24 bits */
        {19, 1},   /* reserved */
        {50, 1},   /* tail not zero */
        {38, 0x10},/* rx depth 0x100200: too deep */
        {41, 0x11},/* frame size not a power of two */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memcpy(t, w, sizeof t);
        t[bad[i].off] = bad[i].v;
        CHECK_MSG(cm_verbs_qp_info_decode(t, &r) == CM_EFORMAT, "byte %d = %u accepted", bad[i].off, bad[i].v);
    }
    /* random bytes: never accepted by accident (magic), never a crash */
    for (int i = 0; i < 2000; i++) {
        randombytes_buf(t, sizeof t);
        if (i % 2) memcpy(t, "CMVQ\1", 5);
        cm_verbs_qp_info_decode(t, &r);
    }
}

TEST(imm_encoding) {
    uint32_t vals[] = {0, 1, 7, 0x01020304u, 0xfffffffeu, 0xffffffffu};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        uint32_t w = cm_verbs_imm_to_wire(vals[i]);
        CHECK(w == htonl(vals[i])); /* verbs defines imm_data in network order */
        CHECK(cm_verbs_imm_from_wire(w) == vals[i]);
    }
    /* exactly one segment of a write carries the immediate: the last */
    for (int n = 1; n <= 9; n++) {
        int carriers = 0, last = -1;
        for (int i = 0; i < n; i++)
            if (cm_verbs_seg_carries_imm(i, n)) carriers++, last = i;
        CHECK(carriers == 1 && last == n - 1);
    }
}

TEST(frames) {
    uint8_t buf[CM_VERBS_FRAME_HDR_BYTES + 100];
    cm_verbs_frame f = {.type = CM_VERBS_FRAME_WRITE, .payload_bytes = 100, .id = 99, .region_or_total = 0x1002,
                        .imm = 5, .offset = 4096, .n_segs = 3}, g;
    cm_verbs_frame_encode(&f, buf);
    CHECK_OK(cm_verbs_frame_decode(buf, sizeof buf, 4096, &g));
    CHECK(g.type == f.type && g.payload_bytes == 100 && g.id == 99 && g.region_or_total == 0x1002 && g.imm == 5 &&
          g.offset == 4096 && g.n_segs == 3);
    CHECK(cm_verbs_frame_decode(buf, sizeof buf - 1, 4096, &g) == CM_EFORMAT); /* length mismatch */
    CHECK(cm_verbs_frame_decode(buf, sizeof buf, 128, &g) == CM_EFORMAT);      /* bigger than a frame */
    CHECK(cm_verbs_frame_decode(buf, 20, 4096, &g) == CM_EFORMAT);             /* truncated header */
    f.n_segs = 0;
    cm_verbs_frame_encode(&f, buf);
    CHECK(cm_verbs_frame_decode(buf, sizeof buf, 4096, &g) == CM_EFORMAT);
    f.n_segs = 1;
    f.offset = UINT64_MAX - 10;
    cm_verbs_frame_encode(&f, buf);
    CHECK(cm_verbs_frame_decode(buf, sizeof buf, 4096, &g) == CM_EFORMAT);     /* offset overflow */
    cm_verbs_frame m = {.type = CM_VERBS_FRAME_MSG, .payload_bytes = 100, .id = 1, .region_or_total = 150, .offset = 100};
    cm_verbs_frame_encode(&m, buf);
    CHECK(cm_verbs_frame_decode(buf, sizeof buf, 4096, &g) == CM_EFORMAT);     /* past the message end */
    m.offset = 50;
    cm_verbs_frame_encode(&m, buf);
    CHECK_OK(cm_verbs_frame_decode(buf, sizeof buf, 4096, &g));
    m.imm = 1;
    cm_verbs_frame_encode(&m, buf);
    CHECK(cm_verbs_frame_decode(buf, sizeof buf, 4096, &g) == CM_EFORMAT);
    buf[1] = 9;
    CHECK(cm_verbs_frame_decode(buf, sizeof buf, 4096, &g) == CM_EFORMAT);
    for (int i = 0; i < 2000; i++) {
        randombytes_buf(buf, sizeof buf);
        buf[0] = 'V';
        cm_verbs_frame_decode(buf, (size_t)(i % (int)sizeof buf), 4096, &g);
    }
}

/* A verbs region descriptor carries one rkey per link and the virtual
 * address; both must survive the wire form exactly. */
TEST(descriptor_with_rdma_keys) {
    cm_xfer_mr_desc d = {.region_id = 0x5003, .n_rkeys = 3, .bytes = 1ull << 33, .addr = 0x7f12345678a0ull};
    d.rkeys[0] = 0x11223344, d.rkeys[1] = 0xdeadbeef, d.rkeys[2] = 0xffffffffffull;
    uint8_t w[CM_XFER_MR_DESC_WIRE_BYTES];
    size_t n = 0;
    CHECK_OK(cm_xfer_mr_desc_encode(&d, w, sizeof w, &n));
    cm_xfer_mr_desc r;
    CHECK_OK(cm_xfer_mr_desc_decode(w, n, &r));
    CHECK(r.region_id == d.region_id && r.n_rkeys == 3 && r.bytes == d.bytes && r.addr == d.addr);
    CHECK(r.rkeys[0] == d.rkeys[0] && r.rkeys[1] == d.rkeys[1] && r.rkeys[2] == d.rkeys[2]);
    CHECK(cm_xfer_mr_desc_decode(w, n - 1, &r) != CM_OK);
}

int main(void) {
    if (sodium_init() < 0) return 1;
    cm_xfer_key_generate(&g_key);
    RUN(no_device_path);
    RUN(qp_info_roundtrip_and_hostile);
    RUN(imm_encoding);
    RUN(frames);
    RUN(descriptor_with_rdma_keys);
    return test_summary();
}
