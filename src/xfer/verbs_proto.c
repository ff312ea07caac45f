/* verbs_proto.c - encoders and checked decoders of verbs_proto.h. No
 * libibverbs here: built everywhere and unit-tested. */
#include "xfer/verbs_proto.h"

#include <arpa/inet.h>
#include <string.h>

#include "base/status.h"
#include "xfer/backend.h"
#include "xfer/wire.h"

void cm_verbs_qp_info_encode(const cm_verbs_qp_info *q, uint8_t out[CM_VERBS_QP_INFO_BYTES]) {
    memset(out, 0, CM_VERBS_QP_INFO_BYTES);
    memcpy(out, "CMVQ", 4);
    out[4] = 1;
    out[5] = (uint8_t)q->qp_type;
    out[6] = (uint8_t)q->port;
    out[7] = (uint8_t)q->mtu;
    cm_put_u32(out + 8, q->qpn);
    cm_put_u32(out + 12, q->psn);
    cm_put_u16(out + 16, q->lid);
    out[18] = (uint8_t)q->gid_index;
    memcpy(out + 20, q->gid, 16);
    cm_put_u32(out + 36, q->rx_depth);
    cm_put_u32(out + 40, q->frame_bytes);
}

int cm_verbs_qp_info_decode(const uint8_t in[CM_VERBS_QP_INFO_BYTES], cm_verbs_qp_info *q) {
    if (memcmp(in, "CMVQ", 4)) return cm_errorf(CM_EFORMAT, "verbs: queue-pair info without its magic");
    if (in[4] != 1) return cm_errorf(CM_EFORMAT, "verbs: queue-pair info version %u (this build speaks 1)", in[4]);
    memset(q, 0, sizeof *q);
    q->qp_type = in[5];
    q->port = in[6];
    q->mtu = in[7];
    q->qpn = cm_get_u32(in + 8);
    q->psn = cm_get_u32(in + 12);
    q->lid = cm_get_u16(in + 16);
    q->gid_index = in[18];
    memcpy(q->gid, in + 20, 16);
    q->rx_depth = cm_get_u32(in + 36);
    q->frame_bytes = cm_get_u32(in + 40);
    if (q->qp_type != CM_VERBS_QPT_RC && q->qp_type != CM_VERBS_QPT_UC)
        return cm_errorf(CM_EFORMAT, "verbs: queue-pair type %d (RC 2 or UC 3)", q->qp_type);
    if (q->port < 1 || q->port > 254) return cm_errorf(CM_EFORMAT, "verbs: port %d", q->port);
    if (q->mtu < 1 || q->mtu > 5) return cm_errorf(CM_EFORMAT, "verbs: path mtu code %d (1..5)", q->mtu);
    if (q->qpn >= 1u << 24 || q->psn >= 1u << 24)
        return cm_errorf(CM_EFORMAT, "verbs: qp number %u / psn %u beyond 24 bits", q->qpn, q->psn);
    if (q->rx_depth < 1 || q->rx_depth > 65536) return cm_errorf(CM_EFORMAT, "verbs: receive depth %u", q->rx_depth);
    if (q->frame_bytes < 1024 || q->frame_bytes > (1u << 20) || (q->frame_bytes & (q->frame_bytes - 1)))
        return cm_errorf(CM_EFORMAT, "verbs: frame size %u (a power of two, 1 KiB..1 MiB)", q->frame_bytes);
    if (in[19]) return cm_errorf(CM_EFORMAT, "verbs: queue-pair info byte 19 is not zero");
    for (int i = 44; i < CM_VERBS_QP_INFO_BYTES; i++)
        if (in[i]) return cm_errorf(CM_EFORMAT, "verbs: queue-pair info byte %d is not zero", i);
    return CM_OK;
}

uint32_t cm_verbs_imm_to_wire(uint32_t imm) { return htonl(imm); }
uint32_t cm_verbs_imm_from_wire(uint32_t imm_data) { return ntohl(imm_data); }

void cm_verbs_frame_encode(const cm_verbs_frame *f, uint8_t out[CM_VERBS_FRAME_HDR_BYTES]) {
    memset(out, 0, CM_VERBS_FRAME_HDR_BYTES);
    out[0] = 'V';
    out[1] = (uint8_t)f->type;
    cm_put_u32(out + 4, f->payload_bytes);
    cm_put_u64(out + 8, f->id);
    cm_put_u32(out + 16, f->region_or_total);
    cm_put_u32(out + 20, f->imm);
    cm_put_u64(out + 24, f->offset);
    cm_put_u32(out + 32, f->n_segs);
    cm_put_u32(out + 36, f->seq);
}

int cm_verbs_frame_decode(const uint8_t *buf, size_t len, uint32_t frame_bytes, cm_verbs_frame *f) {
    if (len < CM_VERBS_FRAME_HDR_BYTES) return cm_errorf(CM_EFORMAT, "verbs: frame of %zu bytes, shorter than its header", len);
    if (buf[0] != 'V') return cm_errorf(CM_EFORMAT, "verbs: frame without its magic");
    memset(f, 0, sizeof *f);
    f->type = buf[1];
    f->payload_bytes = cm_get_u32(buf + 4);
    f->id = cm_get_u64(buf + 8);
    f->region_or_total = cm_get_u32(buf + 16);
    f->imm = cm_get_u32(buf + 20);
    f->offset = cm_get_u64(buf + 24);
    f->n_segs = cm_get_u32(buf + 32);
    f->seq = cm_get_u32(buf + 36);
    if (cm_get_u16(buf + 2)) return cm_errorf(CM_EFORMAT, "verbs: frame reserved field not zero");
    if (f->payload_bytes != len - CM_VERBS_FRAME_HDR_BYTES)
        return cm_errorf(CM_EFORMAT, "verbs: frame says %u payload bytes, carries %zu", f->payload_bytes,
                         len - CM_VERBS_FRAME_HDR_BYTES);
    if (frame_bytes < CM_VERBS_FRAME_HDR_BYTES || f->payload_bytes > frame_bytes - CM_VERBS_FRAME_HDR_BYTES)
        return cm_errorf(CM_EFORMAT, "verbs: frame payload of %u bytes exceeds the %u-byte frame", f->payload_bytes,
                         frame_bytes);
    switch (f->type) {
    case CM_VERBS_FRAME_WRITE:
        if (f->n_segs < 1 || f->n_segs > CM_XFER_MAX_SEGS_PER_WRITE)
            return cm_errorf(CM_EFORMAT, "verbs: write of %u segments", f->n_segs);
        if (f->offset > UINT64_MAX - f->payload_bytes) return cm_errorf(CM_EFORMAT, "verbs: write offset overflows");
        return CM_OK;
    case CM_VERBS_FRAME_MSG:
        if (f->imm || f->n_segs) return cm_errorf(CM_EFORMAT, "verbs: message fragment with write fields set");
        if (f->region_or_total > CM_XFER_MAX_MSG_BYTES)
            return cm_errorf(CM_EFORMAT, "verbs: message of %u bytes exceeds %u", f->region_or_total, CM_XFER_MAX_MSG_BYTES);
        if (f->offset > f->region_or_total || f->payload_bytes > f->region_or_total - f->offset)
            return cm_errorf(CM_EFORMAT, "verbs: fragment at %llu of %u bytes outside its %u-byte message",
                             (unsigned long long)f->offset, f->payload_bytes, f->region_or_total);
        return CM_OK;
    default: return cm_errorf(CM_EFORMAT, "verbs: frame type %d", f->type);
    }
}

void cm_verbs_side_encode(int type, uint32_t value, uint8_t out[CM_VERBS_SIDE_BYTES]) {
    out[0] = (uint8_t)type;
    cm_put_u32(out + 1, value);
}

int cm_verbs_side_feed(cm_verbs_side_rx *rx, const uint8_t *p, size_t n, size_t *used, int *type, uint32_t *value) {
    size_t take = (size_t)(CM_VERBS_SIDE_BYTES - rx->have);
    if (take > n) take = n;
    memcpy(rx->buf + rx->have, p, take);
    rx->have += (int)take;
    *used = take;
    *type = 0;
    *value = 0;
    /* the type is checked on its own byte, so garbage fails at once */
    if (rx->have >= 1) {
        int t = rx->buf[0];
        if (t != CM_VERBS_SIDE_HEARTBEAT && t != CM_VERBS_SIDE_CREDIT && t != CM_VERBS_SIDE_READY &&
            t != CM_VERBS_SIDE_BYE)
            return cm_errorf(CM_EFORMAT, "verbs: side channel record of type 0x%02x", t);
    }
    if (rx->have < CM_VERBS_SIDE_BYTES) return CM_OK;
    rx->have = 0;
    uint32_t v = cm_get_u32(rx->buf + 1);
    int t = rx->buf[0];
    if ((t == CM_VERBS_SIDE_READY || t == CM_VERBS_SIDE_BYE) && v)
        return cm_errorf(CM_EFORMAT, "verbs: side channel record '%c' with a value", t);
    *type = t;
    *value = v;
    return CM_OK;
}
