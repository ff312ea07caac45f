/* fabric_proto.c - encoders and checked decoders of fabric_proto.h. No
 * libfabric here: these are built everywhere and unit-tested. */
#include "xfer/fabric_proto.h"

#include <assert.h>
#include <string.h>

#include "base/status.h"
#include "xfer/backend.h"
#include "xfer/wire.h"

void cm_fabric_frag_encode(uint8_t hdr[CM_FABRIC_FRAG_HDR], uint32_t seq, uint32_t total, uint32_t offset) {
    memcpy(hdr, "CMFF", 4);
    cm_put_u32(hdr + 4, seq);
    cm_put_u32(hdr + 8, total);
    cm_put_u32(hdr + 12, offset);
}

int cm_fabric_frag_decode(const uint8_t *buf, size_t len, uint32_t want_seq, int active, uint32_t total,
                          uint32_t got, cm_fabric_frag *f) {
    if (len < CM_FABRIC_FRAG_HDR) return cm_errorf(CM_EFORMAT, "fragment of %zu bytes, shorter than its header", len);
    if (memcmp(buf, "CMFF", 4)) return cm_errorf(CM_EFORMAT, "fragment without its magic");
    f->seq = cm_get_u32(buf + 4);
    f->total = cm_get_u32(buf + 8);
    f->offset = cm_get_u32(buf + 12);
    if (f->seq != want_seq)
        return cm_errorf(CM_EFORMAT, "fragment %u arrived where %u was due (lost or reordered)", f->seq, want_seq);
    if (f->total > CM_XFER_MAX_MSG_BYTES)
        return cm_errorf(CM_EFORMAT, "message of %u bytes exceeds %u", f->total, CM_XFER_MAX_MSG_BYTES);
    if (!active && f->offset != 0) return cm_errorf(CM_EFORMAT, "message starts at offset %u", f->offset);
    if (active && (f->total != total || f->offset != got))
        return cm_errorf(CM_EFORMAT, "fragment of a %u-byte message at %u, expected %u-byte message at %u", f->total,
                         f->offset, total, got);
    if (f->offset % CM_FABRIC_FRAG_BYTES || f->offset > f->total)
        return cm_errorf(CM_EFORMAT, "fragment offset %u", f->offset);
    uint32_t want = f->total - f->offset < CM_FABRIC_FRAG_BYTES ? f->total - f->offset : CM_FABRIC_FRAG_BYTES;
    if (len - CM_FABRIC_FRAG_HDR != want)
        return cm_errorf(CM_EFORMAT, "fragment carries %zu bytes, expected %u", len - CM_FABRIC_FRAG_HDR, want);
    if (active && want == 0) return cm_errorf(CM_EFORMAT, "empty fragment inside a message");
    f->bytes = want;
    f->payload = buf + CM_FABRIC_FRAG_HDR;
    return CM_OK;
}

void cm_fabric_addr_encode(const uint8_t *addr, size_t len, uint8_t out[CM_FABRIC_ADDR_MSG_BYTES]) {
    assert(len >= 1 && len <= CM_FABRIC_ADDR_MAX);
    memset(out, 0, CM_FABRIC_ADDR_MSG_BYTES);
    memcpy(out, "CMFA", 4);
    cm_put_u32(out + 4, (uint32_t)len);
    memcpy(out + 8, addr, len);
}

int cm_fabric_addr_decode(const uint8_t in[CM_FABRIC_ADDR_MSG_BYTES], uint8_t addr[CM_FABRIC_ADDR_MAX], size_t *len) {
    if (memcmp(in, "CMFA", 4)) return cm_errorf(CM_EFORMAT, "fabric: endpoint address message without its magic");
    uint32_t n = cm_get_u32(in + 4);
    if (n < 1 || n > CM_FABRIC_ADDR_MAX)
        return cm_errorf(CM_EFORMAT, "fabric: endpoint address of %u bytes (1..%d)", n, CM_FABRIC_ADDR_MAX);
    for (size_t i = 8 + n; i < CM_FABRIC_ADDR_MSG_BYTES; i++)
        if (in[i]) return cm_errorf(CM_EFORMAT, "fabric: endpoint address message has bytes after the address");
    memcpy(addr, in + 8, n);
    *len = n;
    return CM_OK;
}
