/* test_xfer_verbs.c - the verbs backend.
 *
 * Without a device: the no-device path (probe and strict create fail with
 * the sentence users see; a non-strict engine falls back to tcp and works),
 * the queue-pair info, frame and side-channel encodings with hostile
 * inputs, the immediate encoding, region descriptors carrying RDMA keys,
 * and the device-free decisions of verbs_plan.c (registration access, ops
 * as work requests, flow control, receive-stream checks, loss detection,
 * GID choice).
 *
 * With a device (skipped, saying why, where none is present): two engines
 * on the same device over loopback - write_imm of many segments, many
 * concurrent writes, immediate-only writes, send/recv of several sizes,
 * a refused write, a peer that dies. test_xfer_verbs_mock.c runs these same
 * tests against a software stand-in for the device. */
#include <arpa/inet.h>
#include <sodium.h>
#include <stdlib.h>

#include "base/status.h"
#include "test.h"
#include "xfer/backend.h"
#include "xfer/verbs_plan.h"
#include "xfer/verbs_proto.h"
#include "xfer/xfer.h"
#include "xfer_util.h"

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
    xt_config(&cfg, "verbs", &g_key);
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
    int pa = -1;
    CHECK_OK(xt_dial(b, a, 3000, &pa));
    int pb = xt_peer_up(a, 3000);
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

/* ---- verbs_plan.c ---- */

TEST(mr_access) {
    CHECK(cm_verbs_mr_access(CM_XFER_MR_LOCAL, 1) == 0); /* read-only memory can be a source */
    CHECK(cm_verbs_mr_access(CM_XFER_MR_REMOTE_WRITE, 1) == (CM_VERBS_ACC_LOCAL_WRITE | CM_VERBS_ACC_REMOTE_WRITE));
    CHECK(cm_verbs_mr_access(CM_XFER_MR_REMOTE_WRITE | CM_XFER_MR_ANY_PEER, 1) ==
          (CM_VERBS_ACC_LOCAL_WRITE | CM_VERBS_ACC_REMOTE_WRITE));
    CHECK(cm_verbs_mr_access(CM_XFER_MR_ANY_PEER, 1) == 0);
    /* two-sided links copy frames in through the core: no remote access */
    CHECK(cm_verbs_mr_access(CM_XFER_MR_REMOTE_WRITE, 0) == 0);
}

TEST(plan_rdma_write) {
    cm_xfer_seg segs[3] = {{.dst_off = 4096, .bytes = 1000}, {.dst_off = 8192, .bytes = 1500}, {.dst_off = 12288, .bytes = 700}};
    cm_verbs_cursor c;
    CHECK_OK(cm_verbs_plan_init(&c, CM_VERBS_JOB_RDMA_WRITE, segs, 3, 0));
    CHECK(c.total == 3);
    cm_verbs_wr_plan w;
    int n = 0, credits = 0;
    while (cm_verbs_plan_next(&c, segs, 3, &w)) {
        CHECK(w.seg == (uint32_t)n && w.bytes == segs[n].bytes && w.dst_off == segs[n].dst_off && w.seg_off == 0);
        CHECK(w.opcode == (n == 2 ? CM_VERBS_WR_WRITE_IMM : CM_VERBS_WR_WRITE));
        CHECK(w.last == (n == 2));
        credits += w.credit;
        n++;
    }
    CHECK(n == 3 && credits == 1); /* only the immediate uses a receive at the peer */
    /* immediate-only write */
    cm_xfer_seg z = {.dst_off = 64, .bytes = 0};
    CHECK_OK(cm_verbs_plan_init(&c, CM_VERBS_JOB_RDMA_WRITE, &z, 1, 0));
    CHECK(cm_verbs_plan_next(&c, &z, 1, &w) == 1 && w.opcode == CM_VERBS_WR_WRITE_IMM && w.bytes == 0 && w.last);
    CHECK(cm_verbs_plan_next(&c, &z, 1, &w) == 0);
    CHECK(cm_verbs_plan_init(&c, CM_VERBS_JOB_RDMA_WRITE, segs, 0, 0) == CM_EINVAL);
    CHECK(cm_verbs_plan_init(&c, 99, segs, 1, 100) == CM_EINVAL);
}

/* Frames of a plan cover every byte of every segment exactly once, at the
 * right destination, in order, with the last flag on the last only. */
static int check_framed(const cm_xfer_seg *segs, int n_segs, uint32_t payload, int kind) {
    cm_verbs_cursor c;
    if (cm_verbs_plan_init(&c, kind, segs, n_segs, payload)) return 0;
    uint64_t total = 0;
    for (int i = 0; i < n_segs; i++) total += segs[i].bytes;
    uint64_t covered = 0;
    uint32_t frames = 0;
    uint32_t seg = 0;
    uint64_t off = 0;
    cm_verbs_wr_plan w;
    int ok = 1;
    while (cm_verbs_plan_next(&c, segs, n_segs, &w)) {
        frames++;
        ok &= w.opcode == CM_VERBS_WR_SEND && w.credit == 1 && w.bytes <= payload;
        ok &= w.last == (frames == c.total);
        if (total == 0) {
            ok &= w.bytes == 0;
            continue;
        }
        while (seg < (uint32_t)n_segs && off >= segs[seg].bytes) seg++, off = 0;
        ok &= w.seg == seg && w.seg_off == off && w.bytes > 0;
        ok &= w.dst_off == (kind == CM_VERBS_JOB_MSG ? covered : segs[seg].dst_off + off);
        off += w.bytes;
        covered += w.bytes;
    }
    ok &= covered == total && frames == c.total && frames >= 1;
    return ok;
}

TEST(plan_frames) {
    cm_xfer_seg segs[3] = {{.bytes = 10000, .dst_off = 0}, {.bytes = 5000, .dst_off = 1u << 20}, {.bytes = 4056, .dst_off = 77}};
    cm_verbs_cursor c;
    CHECK_OK(cm_verbs_plan_init(&c, CM_VERBS_JOB_FRAMED_WRITE, segs, 3, 4056));
    CHECK(c.total == 3 + 2 + 1);
    CHECK(check_framed(segs, 3, 4056, CM_VERBS_JOB_FRAMED_WRITE));
    cm_xfer_seg empty = {.bytes = 0, .dst_off = 123};
    CHECK(check_framed(&empty, 1, 4056, CM_VERBS_JOB_FRAMED_WRITE));
    CHECK(check_framed(&empty, 1, 4056, CM_VERBS_JOB_MSG));
    cm_verbs_wr_plan w;
    CHECK_OK(cm_verbs_plan_init(&c, CM_VERBS_JOB_FRAMED_WRITE, &empty, 1, 4056));
    CHECK(c.total == 1 && cm_verbs_plan_next(&c, &empty, 1, &w) && w.dst_off == 123 && w.bytes == 0);
    CHECK(check_framed(&segs[0], 1, 1000, CM_VERBS_JOB_MSG));
    CHECK(cm_verbs_plan_init(&c, CM_VERBS_JOB_MSG, segs, 2, 4056) == CM_EINVAL);
    CHECK(cm_verbs_plan_init(&c, CM_VERBS_JOB_MSG, segs, 1, 0) == CM_EINVAL);
    cm_xfer_seg big = {.bytes = CM_XFER_MAX_SEG_BYTES};
    CHECK(cm_verbs_plan_init(&c, CM_VERBS_JOB_FRAMED_WRITE, &big, 1, 8) == CM_ERANGE); /* 2M frames */
    /* random shapes, zero-byte segments among them */
    uint32_t rs = 12345;
    for (int t = 0; t < 300; t++) {
        cm_xfer_seg r[8];
        int n = 1 + (int)((rs = rs * 1103515245u + 12345u) >> 16) % 8;
        for (int i = 0; i < n; i++) {
            rs = rs * 1103515245u + 12345u;
            r[i].src = NULL;
            r[i].bytes = (rs >> 8) % 5 == 0 ? 0 : (rs >> 4) % 20000;
            r[i].dst_off = (uint64_t)i << 20;
        }
        uint32_t payload = 1 + (rs >> 3) % 5000;
        CHECK_MSG(check_framed(r, n, payload, CM_VERBS_JOB_FRAMED_WRITE), "shape %d", t);
        CHECK_MSG(check_framed(r, 1, payload, CM_VERBS_JOB_MSG), "message shape %d", t);
    }
}

TEST(flow_control) {
    cm_verbs_fc fc;
    cm_verbs_fc_init(&fc, 4, 2);
    CHECK(cm_verbs_fc_can_post(&fc, 1));
    cm_verbs_fc_posted(&fc, 1);
    cm_verbs_fc_posted(&fc, 1);
    CHECK(!cm_verbs_fc_can_post(&fc, 1)); /* no receive left at the peer */
    CHECK(cm_verbs_fc_can_post(&fc, 0));  /* a plain RDMA write needs none */
    cm_verbs_fc_posted(&fc, 0);
    cm_verbs_fc_posted(&fc, 0);
    CHECK(!cm_verbs_fc_can_post(&fc, 0)); /* send queue full */
    CHECK(cm_verbs_fc_sq_done(&fc, 5) == CM_EINVAL);
    CHECK_OK(cm_verbs_fc_sq_done(&fc, 3));
    CHECK(cm_verbs_fc_can_post(&fc, 0) && !cm_verbs_fc_can_post(&fc, 1));
    CHECK(cm_verbs_fc_credit_add(&fc, 3) == CM_EFORMAT); /* only 2 were used */
    CHECK(fc.credits == 0);
    CHECK_OK(cm_verbs_fc_credit_add(&fc, 2));
    CHECK(cm_verbs_fc_can_post(&fc, 1) && fc.credits == 2);
    CHECK(cm_verbs_fc_credit_add(&fc, 1) == CM_EFORMAT);

    cm_verbs_owed o;
    cm_verbs_owed_init(&o, 64);
    uint32_t sent = 0;
    for (int i = 0; i < 7; i++) sent += cm_verbs_owed_add(&o, 1);
    CHECK(sent == 0 && o.owed == 7);
    CHECK(cm_verbs_owed_add(&o, 1) == 8 && o.owed == 0);
    cm_verbs_owed_add(&o, 3);
    CHECK(cm_verbs_owed_take(&o) == 3 && cm_verbs_owed_take(&o) == 0);
    cm_verbs_owed_init(&o, 4);
    CHECK(cm_verbs_owed_add(&o, 1) == 1); /* shallow queues return every credit */

    /* a sender and a receiver in lockstep never use more than they have */
    cm_verbs_fc s;
    cm_verbs_owed r;
    cm_verbs_fc_init(&s, 16, 32);
    cm_verbs_owed_init(&r, 32);
    uint32_t in_flight = 0, delivered = 0;
    for (int step = 0; step < 10000; step++) {
        if (step % 3 != 2 && cm_verbs_fc_can_post(&s, 1)) {
            cm_verbs_fc_posted(&s, 1);
            in_flight++;
        } else if (in_flight) {
            in_flight--;
            delivered++;
            CHECK_OK(cm_verbs_fc_sq_done(&s, 1));
            uint32_t give = cm_verbs_owed_add(&r, 1);
            if (give) CHECK_OK(cm_verbs_fc_credit_add(&s, give));
        }
        CHECK(s.credits_max - s.credits - r.owed == in_flight); /* receives in use = frames in flight */
    }
    CHECK(delivered > 3000);
}

static void mkframe(cm_verbs_frame *f, int type, uint32_t seq, uint64_t id, uint32_t region_or_total, uint32_t imm,
                    uint64_t off, uint32_t payload, uint32_t n) {
    *f = (cm_verbs_frame){.type = type, .payload_bytes = payload, .id = id, .region_or_total = region_or_total,
                          .imm = imm, .offset = off, .n_segs = n, .seq = seq};
}

TEST(rx_stream) {
    cm_verbs_rx_stream s = {0};
    cm_verbs_frame f;
    int first, done;
    /* a write of 3 frames, then a 2-fragment message, then an empty one */
    for (uint32_t i = 0; i < 3; i++) {
        mkframe(&f, CM_VERBS_FRAME_WRITE, i, 42, 0x1001, 7, 100 * i, 100, 3);
        CHECK_OK(cm_verbs_rx_frame(&s, &f, &first, &done));
        CHECK(first == (i == 0) && done == (i == 2));
    }
    mkframe(&f, CM_VERBS_FRAME_MSG, 3, 0, 150, 0, 0, 100, 0);
    CHECK_OK(cm_verbs_rx_frame(&s, &f, &first, &done));
    CHECK(first && !done);
    mkframe(&f, CM_VERBS_FRAME_MSG, 4, 0, 150, 0, 100, 50, 0);
    CHECK_OK(cm_verbs_rx_frame(&s, &f, &first, &done));
    CHECK(!first && done);
    mkframe(&f, CM_VERBS_FRAME_MSG, 5, 1, 0, 0, 0, 0, 0);
    CHECK_OK(cm_verbs_rx_frame(&s, &f, &first, &done));
    CHECK(first && done && s.next_msg == 2 && s.next_seq == 6);

    struct {
        const char *what;
        cm_verbs_frame pre, bad;
        int has_pre;
    } cases[] = {
        {"sequence gap (a lost frame)", {0}, {CM_VERBS_FRAME_WRITE, 10, 1, 1, 0, 0, 1, 1}, 0},
        {"message id skipped", {0}, {CM_VERBS_FRAME_MSG, 10, 5, 20, 0, 0, 0, 0}, 0},
        {"message not at offset 0", {0}, {CM_VERBS_FRAME_MSG, 10, 0, 20, 0, 10, 0, 0}, 0},
        {"another write inside a write", {CM_VERBS_FRAME_WRITE, 10, 1, 1, 0, 0, 2, 0},
         {CM_VERBS_FRAME_WRITE, 10, 2, 1, 0, 10, 2, 1}, 1},
        {"imm changes inside a write", {CM_VERBS_FRAME_WRITE, 10, 1, 1, 0, 0, 2, 0},
         {CM_VERBS_FRAME_WRITE, 10, 1, 1, 9, 10, 2, 1}, 1},
        {"message inside a write", {CM_VERBS_FRAME_WRITE, 10, 1, 1, 0, 0, 2, 0}, {CM_VERBS_FRAME_MSG, 10, 0, 20, 0, 0, 0, 1},
         1},
        {"fragment out of place", {CM_VERBS_FRAME_MSG, 10, 0, 30, 0, 0, 0, 0}, {CM_VERBS_FRAME_MSG, 10, 0, 30, 0, 20, 0, 1},
         1},
        {"empty fragment of a long message", {CM_VERBS_FRAME_MSG, 10, 0, 30, 0, 0, 0, 0},
         {CM_VERBS_FRAME_MSG, 0, 0, 30, 0, 10, 0, 1}, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cm_verbs_rx_stream t = {0};
        if (cases[i].has_pre) CHECK_OK(cm_verbs_rx_frame(&t, &cases[i].pre, &first, &done));
        CHECK_MSG(cm_verbs_rx_frame(&t, &cases[i].bad, &first, &done) == CM_EFORMAT, "%s accepted", cases[i].what);
    }
}

TEST(loss_detection) {
    cm_verbs_loss l = {0};
    cm_verbs_loss_report(&l, 10, 10, 0, 100);
    CHECK(!l.armed); /* nothing missing */
    cm_verbs_loss_report(&l, 10, 8, 0, 100);
    CHECK(l.armed);
    CHECK_OK(cm_verbs_loss_check(&l, 8, 50));   /* still in flight, maybe */
    CHECK(cm_verbs_loss_check(&l, 9, 150) == CM_EPEER);
    cm_verbs_loss_report(&l, 20, 12, 200, 100);
    CHECK_OK(cm_verbs_loss_check(&l, 20, 250)); /* arrived */
    CHECK(!l.armed);
    CHECK_OK(cm_verbs_loss_check(&l, 20, 10000));
    /* counters wrap */
    cm_verbs_loss_report(&l, 2, 0xfffffffeu, 0, 100);
    CHECK(l.armed && cm_verbs_loss_check(&l, 0xffffffffu, 200) == CM_EPEER);
    cm_verbs_loss_report(&l, 0xfffffff0u, 3, 0, 100); /* heartbeat older than what arrived */
    CHECK(!l.armed);
}

TEST(gid_pick) {
    uint8_t g[6][16] = {{0}};
    g[1][0] = 0xfe, g[1][1] = 0x80, g[1][15] = 1;                /* link-local IPv6 */
    uint8_t v4a[4] = {10, 0, 0, 1}, v4b[4] = {192, 168, 1, 5}, v4c[4] = {172, 16, 0, 9};
    for (int i = 2; i < 5; i++) g[i][10] = g[i][11] = 0xff; /* ::ffff:a.b.c.d */
    memcpy(g[2] + 12, v4a, 4); /* RoCE v1 */
    memcpy(g[3] + 12, v4a, 4); /* RoCE v2 */
    memcpy(g[4] + 12, v4b, 4); /* RoCE v2 */
    int v2[6] = {-1, 0, 0, 1, 1, -1};
    CHECK(cm_verbs_gid_pick((const uint8_t(*)[16])g, v2, 6, v4a) == 3);
    CHECK(cm_verbs_gid_pick((const uint8_t(*)[16])g, v2, 6, v4b) == 4);
    CHECK(cm_verbs_gid_pick((const uint8_t(*)[16])g, v2, 6, v4c) == 3); /* no match: first v2 */
    CHECK(cm_verbs_gid_pick((const uint8_t(*)[16])g, NULL, 6, NULL) == 2);
    CHECK(cm_verbs_gid_pick((const uint8_t(*)[16])g, NULL, 6, v4b) == 4);
    CHECK(cm_verbs_gid_pick((const uint8_t(*)[16])g, NULL, 2, NULL) == 1);
    CHECK(cm_verbs_gid_pick((const uint8_t(*)[16])g, NULL, 1, NULL) == -1);
    CHECK(cm_verbs_mtu_pick(5, 3) == 3 && cm_verbs_mtu_pick(2, 4) == 2);
}

TEST(side_records) {
    uint8_t w[4 * CM_VERBS_SIDE_BYTES];
    cm_verbs_side_encode(CM_VERBS_SIDE_HEARTBEAT, 77, w);
    cm_verbs_side_encode(CM_VERBS_SIDE_CREDIT, 0x01020304u, w + 5);
    cm_verbs_side_encode(CM_VERBS_SIDE_READY, 0, w + 10);
    cm_verbs_side_encode(CM_VERBS_SIDE_BYE, 0, w + 15);
    int want_type[4] = {'H', 'C', 'R', 'B'};
    uint32_t want_val[4] = {77, 0x01020304u, 0, 0};
    for (size_t step = 1; step <= sizeof w; step++) { /* any split of the stream */
        cm_verbs_side_rx rx = {0};
        int got = 0, ok = 1;
        for (size_t pos = 0; pos < sizeof w;) {
            size_t n = sizeof w - pos < step ? sizeof w - pos : step, used;
            int type;
            uint32_t v;
            if (cm_verbs_side_feed(&rx, w + pos, n, &used, &type, &v)) ok = 0;
            if (!ok || used == 0) break;
            pos += used;
            if (type) {
                ok &= got < 4 && type == want_type[got] && v == want_val[got];
                got++;
            }
        }
        CHECK_MSG(ok && got == 4, "split %zu", step);
    }
    cm_verbs_side_rx rx = {0};
    size_t used;
    int type;
    uint32_t v;
    uint8_t junk = 'X';
    CHECK(cm_verbs_side_feed(&rx, &junk, 1, &used, &type, &v) == CM_EFORMAT); /* refused on its first byte */
    uint8_t r[5];
    cm_verbs_side_encode(CM_VERBS_SIDE_BYE, 5, r);
    cm_verbs_side_rx rx2 = {0};
    CHECK(cm_verbs_side_feed(&rx2, r, 5, &used, &type, &v) == CM_EFORMAT);
}

/* ---- with a device: two engines on it, over loopback ---- */

/* Makes a listening engine a and an engine b connected to it, both strictly
 * on verbs. 0 when verbs cannot run here (the test then skips). */
static int verbs_pair(cm_xfer **a, cm_xfer **b, int *pa, int *pb, char *why, size_t cap) {
    *a = *b = NULL;
    cm_xfer_config cfg;
    xt_config(&cfg, "verbs", &g_key);
    cfg.listen = "127.0.0.1:0";
    cfg.chunk_bytes = 64 << 10;
    cfg.peer_timeout_ms = 2000;
    cfg.heartbeat_ms = 100;
    int rc = cm_xfer_create(&cfg, a);
    if (rc) {
        snprintf(why, cap, "verbs cannot run here: %s", cm_last_error(rc));
        return 0;
    }
    cfg.listen = NULL;
    if (cm_xfer_create(&cfg, b)) {
        snprintf(why, cap, "second engine: %s", cm_last_error(CM_EUNSUPPORTED));
        cm_xfer_destroy(*a);
        *a = NULL;
        return 0;
    }
    *pa = *pb = -1;
    if (xt_dial(*b, *a, 5000, pa)) {
        snprintf(why, cap, "connect failed: %s", cm_last_error(CM_ECONN));
        return -1;
    }
    *pb = xt_peer_up(*a, 5000);
    if (*pb < 0) {
        snprintf(why, cap, "the listening engine never saw its peer come up");
        return -1;
    }
    return 1;
}

static void fill(uint8_t *p, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)((i * 2654435761u + seed) >> 13);
}

/* Runs a device test's body on a fresh pair of engines (verbs_pair) and
 * destroys what the body left (a body that destroys an engine itself sets
 * its pointer to NULL). Returns verbs_pair's answer: 1 the body ran, 0
 * verbs cannot run here (why says why: the test skips), -1 the pair failed
 * (a failed check). */
typedef void device_body(cm_xfer **ap, cm_xfer **bp, int pa, int pb);
static int on_verbs_pair(device_body *body, char *why, size_t cap) {
    cm_xfer *a, *b;
    int pa, pb;
    int ok = verbs_pair(&a, &b, &pa, &pb, why, cap);
    if (ok != 0) CHECK_MSG(ok == 1, "%s", why);
    if (ok == 1) body(&a, &b, pa, pb);
    cm_xfer_destroy(b);
    cm_xfer_destroy(a);
    return ok;
}

static void write_imm_body(cm_xfer **ap, cm_xfer **bp, int pa, int pb) {
    cm_xfer *a = *ap, *b = *bp;
    size_t n = 3u << 20;
    uint8_t *dst = calloc(1, n), *src = malloc(n);
    fill(src, n, 1);
    cm_xfer_mr *md = NULL, *ms = NULL;
    CHECK_OK(cm_xfer_mr_register(a, dst, n, CM_XFER_MR_REMOTE_WRITE, &md));
    CHECK_OK(cm_xfer_mr_allow(a, md, pb));
    CHECK_OK(cm_xfer_mr_register(b, src, n, 0, &ms));
    cm_xfer_cq *cq = NULL;
    CHECK_OK(cm_xfer_cq_create(b, &cq));
    cm_xfer_mr_desc d;
    cm_xfer_mr_desc_get(md, &d);
    CHECK(d.n_rkeys == 1 && d.addr == (uint64_t)(uintptr_t)dst);
    /* one big write of 48 segments: the counter grows once */
    CHECK_OK(cm_xfer_write_imm(b, pa, ms, 0, &d, 0, n, 7, cq, 1));
    CHECK_OK(cm_xfer_imm_wait(a, pb, 7, 1, 5000));
    CHECK(!memcmp(dst, src, n));
    CHECK(cm_xfer_imm_poll(a, 7) == 0);
    /* many small writes in flight at once (more than the send queue and
     * the peer's receives hold): every one counted once */
    fill(src, n, 2);
    int k = 600;
    for (int i = 0; i < k; i++) CHECK_OK(cm_xfer_write_imm(b, pa, ms, (size_t)i * 4096, &d, (size_t)i * 4096, 4096, 9, cq, 2));
    CHECK_OK(cm_xfer_imm_wait(a, pb, 9, (uint64_t)k, 10000));
    CHECK(!memcmp(dst, src, (size_t)k * 4096));
    /* immediate-only */
    CHECK_OK(cm_xfer_write_imm(b, pa, NULL, 0, &d, 0, 0, 11, cq, 3));
    CHECK_OK(cm_xfer_imm_wait(a, pb, 11, 1, 5000));
    /* every local completion arrives, each OK */
    int got = 0, bad = 0;
    cm_xfer_completion c[64];
    while (got < k + 2) {
        int m = cm_xfer_cq_poll(cq, c, 64, 5000);
        if (m <= 0) break;
        for (int i = 0; i < m; i++) bad += c[i].status != CM_OK;
        got += m;
    }
    CHECK_MSG(got == k + 2 && bad == 0, "%d completions, %d failed", got, bad);
    cm_xfer_mr_deregister(a, md);
    cm_xfer_mr_deregister(b, ms);
    cm_xfer_destroy(b);
    *bp = NULL;
    cm_xfer_cq_destroy(NULL, cq);
    free(dst);
    free(src);
}

TEST(device_write_imm) {
    char why[512];
    if (!on_verbs_pair(write_imm_body, why, sizeof why)) TEST_SKIP("%s", why);
}

static void send_recv_body(cm_xfer **ap, cm_xfer **bp, int pa, int pb) {
    cm_xfer *a = *ap, *b = *bp;
    size_t sizes[] = {0, 1, 100, 5000, 70000, 1u << 20};
    int ns = (int)(sizeof sizes / sizeof sizes[0]);
    size_t cap = 1u << 20;
    uint8_t *src = malloc(cap), *dst = calloc((size_t)ns, cap);
    cm_xfer_mr *ms = NULL, *md = NULL;
    CHECK_OK(cm_xfer_mr_register(b, src, cap, 0, &ms));
    CHECK_OK(cm_xfer_mr_register(a, dst, (size_t)ns * cap, 0, &md));
    cm_xfer_cq *rq = NULL;
    CHECK_OK(cm_xfer_cq_create(a, &rq));
    fill(src, cap, 5);
    /* half the recvs posted before, half after the sends (unexpected path) */
    for (int i = 0; i < ns / 2; i++) CHECK_OK(cm_xfer_recv_post(a, pb, md, (size_t)i * cap, cap, rq, (uint64_t)i));
    for (int i = 0; i < ns; i++) CHECK_OK(cm_xfer_send(b, pa, ms, 0, sizes[i], NULL, 0));
    for (int i = ns / 2; i < ns; i++) CHECK_OK(cm_xfer_recv_post(a, pb, md, (size_t)i * cap, cap, rq, (uint64_t)i));
    int got = 0;
    cm_xfer_completion c[8];
    while (got < ns) {
        int m = cm_xfer_cq_poll(rq, c, 8, 5000);
        if (m <= 0) break;
        for (int i = 0; i < m; i++) {
            int k = (int)c[i].user_data;
            CHECK_MSG(c[i].status == CM_OK && c[i].bytes == sizes[k], "recv %d: status %d, %zu bytes", k, c[i].status,
                      c[i].bytes);
            CHECK(k == got + i); /* in order */
            CHECK(!memcmp(dst + (size_t)k * cap, src, sizes[k]));
        }
        got += m;
    }
    CHECK(got == ns);
    /* a message larger than the posted buffer: CM_ERANGE, the link lives on */
    CHECK_OK(cm_xfer_recv_post(a, pb, md, 0, 10, rq, 100));
    CHECK_OK(cm_xfer_send(b, pa, ms, 0, 11, NULL, 0));
    CHECK(cm_xfer_cq_poll(rq, c, 1, 5000) == 1 && c[0].status == CM_ERANGE && c[0].user_data == 100);
    CHECK_OK(cm_xfer_recv_post(a, pb, md, 0, 10, rq, 101));
    CHECK_OK(cm_xfer_send(b, pa, ms, 0, 10, NULL, 0));
    CHECK(cm_xfer_cq_poll(rq, c, 1, 5000) == 1 && c[0].status == CM_OK && c[0].bytes == 10);
    CHECK_OK(cm_xfer_peer_status(b, pa));
    cm_xfer_mr_deregister(a, md);
    cm_xfer_mr_deregister(b, ms);
    cm_xfer_destroy(a);
    *ap = NULL;
    cm_xfer_cq_destroy(NULL, rq);
    free(src);
    free(dst);
}

TEST(device_send_recv) {
    char why[512];
    if (!on_verbs_pair(send_recv_body, why, sizeof why)) TEST_SKIP("%s", why);
}

/* A write into a region that is not remotely writable fails the peer (the
 * NIC refuses it on RC; the core's check refuses the frame on UC) instead
 * of landing; a peer that dies wakes its waiters with an error. */
static void refused_write_body(cm_xfer **ap, cm_xfer **bp, int pa, int pb) {
    cm_xfer *a = *ap, *b = *bp;
    (void)pb;
    static uint8_t dst[8192], src[8192];
    memset(dst, 0, sizeof dst);
    memset(src, 0x5a, sizeof src);
    cm_xfer_mr *md = NULL, *ms = NULL;
    CHECK_OK(cm_xfer_mr_register(a, dst, sizeof dst, CM_XFER_MR_LOCAL, &md));
    CHECK_OK(cm_xfer_mr_register(b, src, sizeof src, 0, &ms));
    cm_xfer_mr_desc d;
    cm_xfer_mr_desc_get(md, &d);
    CHECK_OK(cm_xfer_write_imm(b, pa, ms, 0, &d, 0, sizeof src, 3, NULL, 0));
    int rc = cm_xfer_imm_wait(b, pa, 12345, 1, 5000); /* returns when b sees the peer fail */
    CHECK_MSG(rc != CM_OK && rc != CM_ETIMEDOUT, "wait returned %d", rc);
    CHECK(cm_xfer_peer_status(b, pa) != CM_OK);
    CHECK(cm_xfer_imm_poll(a, 3) == 0);
    for (size_t i = 0; i < sizeof dst; i++)
        if (dst[i]) {
            CHECK_MSG(0, "byte %zu of a read-only region was written", i);
            break;
        }
    cm_xfer_mr_deregister(a, md);
    cm_xfer_mr_deregister(b, ms);
}

/* a peer that dies mid-wait */
static void peer_dies_body(cm_xfer **ap, cm_xfer **bp, int pa, int pb) {
    cm_xfer *b = *bp;
    (void)pb;
    cm_xfer_destroy(*ap);
    *ap = NULL;
    int rc = cm_xfer_imm_wait(b, pa, 1, 1, 8000);
    CHECK_MSG(rc == CM_EPEER || rc == CM_ECLOSED || rc == CM_ETIMEDOUT, "wait returned %d", rc);
    CHECK(cm_xfer_peer_status(b, pa) != CM_OK);
}

TEST(device_faults) {
    char why[512];
    int ok = on_verbs_pair(refused_write_body, why, sizeof why);
    if (ok == 0) TEST_SKIP("%s", why);
    if (ok != 1) return;
    ok = on_verbs_pair(peer_dies_body, why, sizeof why);
    if (ok == 0) CHECK_MSG(ok == 1, "%s", why);
}

static void run_device_tests(void) {
    RUN(device_write_imm);
    RUN(device_send_recv);
    RUN(device_faults);
}

/* Everything that needs no device (no_device_path skips where one is). */
static void run_unit_tests(void) {
    RUN(no_device_path);
    RUN(qp_info_roundtrip_and_hostile);
    RUN(imm_encoding);
    RUN(frames);
    RUN(descriptor_with_rdma_keys);
    RUN(mr_access);
    RUN(plan_rdma_write);
    RUN(plan_frames);
    RUN(flow_control);
    RUN(rx_stream);
    RUN(loss_detection);
    RUN(gid_pick);
    RUN(side_records);
}

#ifndef CM_VERBS_TEST_NO_MAIN
int main(void) {
    if (sodium_init() < 0) return 1;
    cm_xfer_key_generate(&g_key);
    run_unit_tests();
    run_device_tests();
    return test_summary();
}
#endif
