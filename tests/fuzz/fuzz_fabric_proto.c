/* fuzz_fabric_proto.c - fuzz target for what the fabric backend reads from a
 * peer: the endpoint address message of the side channel and the headers of
 * two-sided message fragments, the latter checked against a reassembly
 * state kept as the backend keeps it (sequence, message in progress, total,
 * bytes so far). Input layout: CM_FABRIC_ADDR_MSG_BYTES of address message
 * (when the input is that long), then fragments each preceded by a u16
 * length; the length 0xffff stands for a full-size fragment (16 header
 * bytes from the input, then CM_FABRIC_FRAG_BYTES of zeros), which a u16
 * cannot frame, so that multi-fragment messages are reached. Every decoder must refuse with a message or return values inside
 * the limits the receive path relies on (a fragment never writes past its
 * message's total); accepted encodings are canonical. Seeds: a valid
 * address message, short messages, and a message of two full fragments and
 * a short one. */
#include <stdint.h>
#include <string.h>

#include "base/status.h"
#include "xfer/backend.h"
#include "xfer/fabric_proto.h"
#include "xfer/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t pos = 0;
    if (size >= CM_FABRIC_ADDR_MSG_BYTES) {
        uint8_t addr[CM_FABRIC_ADDR_MAX];
        size_t len = 0;
        if (cm_fabric_addr_decode(data, addr, &len) == CM_OK) {
            if (len < 1 || len > CM_FABRIC_ADDR_MAX) __builtin_trap();
            uint8_t again[CM_FABRIC_ADDR_MSG_BYTES];
            cm_fabric_addr_encode(addr, len, again);
            if (memcmp(again, data, CM_FABRIC_ADDR_MSG_BYTES)) __builtin_trap();
        }
        pos = CM_FABRIC_ADDR_MSG_BYTES;
    }
    /* the backend's reassembly state; a refused fragment fails the peer */
    uint32_t seq = 0, total = 0, got = 0;
    int active = 0;
    static uint8_t full[CM_FABRIC_FRAG_HDR + CM_FABRIC_FRAG_BYTES];
    while (size - pos >= 2) {
        size_t len = cm_get_u16(data + pos);
        const uint8_t *in = data + pos + 2;
        if (len == 0xffff) {
            if (size - pos - 2 < CM_FABRIC_FRAG_HDR) break;
            memcpy(full, in, CM_FABRIC_FRAG_HDR);
            in = full;
            len = sizeof full;
            pos += 2 + CM_FABRIC_FRAG_HDR;
        } else {
            if (len > size - pos - 2) break;
            pos += 2 + len;
        }
        cm_fabric_frag f;
        if (cm_fabric_frag_decode(in, len, seq, active, total, got, &f) != CM_OK) break;
        if (f.seq != seq || f.bytes != len - CM_FABRIC_FRAG_HDR || f.payload != in + CM_FABRIC_FRAG_HDR) __builtin_trap();
        if (f.total > CM_XFER_MAX_MSG_BYTES || f.offset > f.total || f.bytes > f.total - f.offset) __builtin_trap();
        if (active && (f.total != total || f.offset != got || f.bytes == 0)) __builtin_trap();
        if (!active && f.offset != 0) __builtin_trap();
        uint8_t again[CM_FABRIC_FRAG_HDR];
        cm_fabric_frag_encode(again, f.seq, f.total, f.offset);
        if (memcmp(again, in, CM_FABRIC_FRAG_HDR)) __builtin_trap();
        seq++;
        if (!active) {
            active = 1;
            total = f.total;
            got = 0;
        }
        got += f.bytes;
        if (got > total) __builtin_trap();
        if (got == total) active = 0;
    }
    return 0;
}

static size_t put_frag(uint8_t *buf, uint32_t seq, uint32_t total, uint32_t offset, uint32_t bytes) {
    cm_put_u16(buf, (uint16_t)(CM_FABRIC_FRAG_HDR + bytes));
    cm_fabric_frag_encode(buf + 2, seq, total, offset);
    memset(buf + 2 + CM_FABRIC_FRAG_HDR, 0x5a, bytes);
    return 2 + CM_FABRIC_FRAG_HDR + bytes;
}

size_t cm_fuzz_seed(int i, uint8_t *buf, size_t cap);
size_t cm_fuzz_seed(int i, uint8_t *buf, size_t cap) {
    if (i > 0 || cap < 4096) return 0;
    uint8_t addr[16] = {2, 0, 0x1f, 0x90, 127, 0, 0, 1};
    cm_fabric_addr_encode(addr, sizeof addr, buf);
    size_t n = CM_FABRIC_ADDR_MSG_BYTES;
    /* an empty message, then two short ones (a fragment carries up to
     * CM_FABRIC_FRAG_BYTES, more than a u16 length frames here) */
    n += put_frag(buf + n, 0, 0, 0, 0);
    n += put_frag(buf + n, 1, 100, 0, 100);
    n += put_frag(buf + n, 2, 7, 0, 7);
    uint32_t total = 2 * CM_FABRIC_FRAG_BYTES + 10;
    for (uint32_t k = 0; k < 2; k++) {
        cm_put_u16(buf + n, 0xffff);
        cm_fabric_frag_encode(buf + n + 2, 3 + k, total, k * CM_FABRIC_FRAG_BYTES);
        n += 2 + CM_FABRIC_FRAG_HDR;
    }
    n += put_frag(buf + n, 5, total, 2 * CM_FABRIC_FRAG_BYTES, 10);
    return n;
}
