/* fuzz_verbs_proto.c - fuzz target for what the verbs backend reads from a
 * peer: the queue-pair info, the two-sided frames (each checked against the
 * receive stream of a link, as the backend does), and side-channel records.
 * Input layout: 64 bytes of QP info, then frames each preceded by a u16
 * length, then whatever is left is side-channel bytes. Every decoder must
 * refuse with a message or return values inside the limits the receive
 * path relies on; accepted encodings are canonical (re-encoding gives the
 * same bytes). Seeds: a valid QP info, a write and a message as frames,
 * side records. */
#include <stdint.h>
#include <string.h>

#include "base/status.h"
#include "xfer/backend.h"
#include "xfer/verbs_plan.h"
#include "xfer/verbs_proto.h"
#include "xfer/wire.h"

#define FRAME_BYTES 4096u

static void check_frame(const cm_verbs_frame *f, size_t len, const uint8_t *in) {
    if (f->payload_bytes != len - CM_VERBS_FRAME_HDR_BYTES || f->payload_bytes > FRAME_BYTES - CM_VERBS_FRAME_HDR_BYTES)
        __builtin_trap();
    if (f->type == CM_VERBS_FRAME_WRITE) {
        if (f->n_segs < 1 || f->n_segs > CM_XFER_MAX_SEGS_PER_WRITE || f->offset > UINT64_MAX - f->payload_bytes)
            __builtin_trap();
    } else if (f->type == CM_VERBS_FRAME_MSG) {
        if (f->region_or_total > CM_XFER_MAX_MSG_BYTES || f->offset + f->payload_bytes > f->region_or_total)
            __builtin_trap();
    } else {
        __builtin_trap();
    }
    uint8_t again[CM_VERBS_FRAME_HDR_BYTES];
    cm_verbs_frame_encode(f, again);
    if (memcmp(again, in, CM_VERBS_FRAME_HDR_BYTES)) __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t pos = 0;
    if (size >= CM_VERBS_QP_INFO_BYTES) {
        cm_verbs_qp_info q;
        if (cm_verbs_qp_info_decode(data, &q) == CM_OK) {
            if ((q.qp_type != CM_VERBS_QPT_RC && q.qp_type != CM_VERBS_QPT_UC) || q.port < 1 || q.port > 254 ||
                q.mtu < 1 || q.mtu > 5 || q.qpn >= (1u << 24) || q.psn >= (1u << 24) || q.rx_depth < 1 ||
                q.rx_depth > 65536 || q.frame_bytes < 1024 || q.frame_bytes > (1u << 20) ||
                (q.frame_bytes & (q.frame_bytes - 1)))
                __builtin_trap();
            uint8_t again[CM_VERBS_QP_INFO_BYTES];
            cm_verbs_qp_info_encode(&q, again);
            if (memcmp(again, data, CM_VERBS_QP_INFO_BYTES)) __builtin_trap();
        }
        pos = CM_VERBS_QP_INFO_BYTES;
    }
    cm_verbs_rx_stream s = {0};
    int broken = 0;
    while (size - pos >= 2) {
        size_t len = cm_get_u16(data + pos);
        if (len == 0xffff) { /* ends the frames */
            pos += 2;
            break;
        }
        if (len > size - pos - 2) break;
        const uint8_t *f_in = data + pos + 2;
        pos += 2 + len;
        cm_verbs_frame f;
        if (cm_verbs_frame_decode(f_in, len, FRAME_BYTES, &f) != CM_OK) continue;
        check_frame(&f, len, f_in);
        if (broken) continue;
        int first, done;
        uint32_t before = s.got;
        if (cm_verbs_rx_frame(&s, &f, &first, &done) != CM_OK) {
            broken = 1; /* the backend fails the peer here */
            continue;
        }
        if (f.type == CM_VERBS_FRAME_MSG && !done && (s.got > s.total || s.got < before)) __builtin_trap();
        if (f.type == CM_VERBS_FRAME_WRITE && !done && s.got >= s.total) __builtin_trap();
        if (done && s.active) __builtin_trap();
    }
    cm_verbs_side_rx rx = {0};
    while (pos < size) {
        size_t used;
        int type;
        uint32_t v;
        if (cm_verbs_side_feed(&rx, data + pos, size - pos, &used, &type, &v) != CM_OK) break;
        if (used == 0 || used > size - pos) __builtin_trap();
        pos += used;
        if (type && type != CM_VERBS_SIDE_HEARTBEAT && type != CM_VERBS_SIDE_CREDIT && type != CM_VERBS_SIDE_READY &&
            type != CM_VERBS_SIDE_BYE)
            __builtin_trap();
    }
    return 0;
}

static size_t put_frame(uint8_t *buf, const cm_verbs_frame *f) {
    size_t len = CM_VERBS_FRAME_HDR_BYTES + f->payload_bytes;
    cm_put_u16(buf, (uint16_t)len);
    cm_verbs_frame_encode(f, buf + 2);
    memset(buf + 2 + CM_VERBS_FRAME_HDR_BYTES, 0x33, f->payload_bytes);
    return 2 + len;
}

size_t cm_fuzz_seed(int i, uint8_t *buf, size_t cap);
size_t cm_fuzz_seed(int i, uint8_t *buf, size_t cap) {
    if (i > 0 || cap < 16384) return 0;
    cm_verbs_qp_info q = {.qp_type = CM_VERBS_QPT_UC, .port = 1, .mtu = 3, .qpn = 0x1234, .psn = 0x55,
                          .gid_index = 1, .rx_depth = 512, .frame_bytes = 4096};
    q.gid[10] = q.gid[11] = 0xff, q.gid[12] = 10, q.gid[15] = 1;
    cm_verbs_qp_info_encode(&q, buf);
    size_t n = CM_VERBS_QP_INFO_BYTES;
    uint32_t seq = 0;
    for (uint32_t k = 0; k < 3; k++) {
        cm_verbs_frame w = {.type = CM_VERBS_FRAME_WRITE, .payload_bytes = 100, .id = 9, .region_or_total = 0x2001,
                            .imm = 4, .offset = 100 * k, .n_segs = 3, .seq = seq++};
        n += put_frame(buf + n, &w);
    }
    for (uint32_t k = 0; k < 2; k++) {
        cm_verbs_frame m = {.type = CM_VERBS_FRAME_MSG, .payload_bytes = 60, .id = 0, .region_or_total = 120,
                            .offset = 60 * k, .seq = seq++};
        n += put_frame(buf + n, &m);
    }
    cm_put_u16(buf + n, 0xffff);
    n += 2;
    cm_verbs_side_encode(CM_VERBS_SIDE_HEARTBEAT, 5, buf + n);
    cm_verbs_side_encode(CM_VERBS_SIDE_CREDIT, 3, buf + n + 5);
    cm_verbs_side_encode(CM_VERBS_SIDE_BYE, 0, buf + n + 10);
    return n + 15;
}
