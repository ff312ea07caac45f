/* fabric_proto.h - byte layouts the fabric backend puts on the wire, and
 * their bounds-checked parsers (pure functions, no libfabric: unit-tested
 * and usable on machines without it). All integers little-endian.
 *
 * Endpoint address message, on the authenticated side channel, once per
 * link, each way (FABRIC_ADDR_MSG_BYTES):
 *   0 u8[4] magic "CMFA"   4 u32 address bytes (1..256)   8 u8[256] address
 *
 * Message fragment header, in front of every two-sided fragment
 * (CM_FABRIC_FRAG_HDR bytes), then min(FRAG_BYTES, total - offset) bytes:
 *   0 u8[4] magic "CMFF"   4 u32 sequence (per link, +1 per fragment)
 *   8 u32 total message bytes (<= CM_XFER_MAX_MSG_BYTES)
 *  12 u32 offset of this fragment in the message (a multiple of FRAG_BYTES)
 *
 * Side channel after setup: single bytes, 'H' heartbeat, 'B' goodbye. */
#ifndef CM_XFER_FABRIC_PROTO_H
#define CM_XFER_FABRIC_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define CM_FABRIC_FRAG_HDR 16
#define CM_FABRIC_FRAG_BYTES (64u << 10)
#define CM_FABRIC_ADDR_MAX 256
#define CM_FABRIC_ADDR_MSG_BYTES (8 + CM_FABRIC_ADDR_MAX)
#define CM_FABRIC_SIDE_HEARTBEAT 'H'
#define CM_FABRIC_SIDE_BYE 'B'

typedef struct cm_fabric_frag {
    uint32_t seq, total, offset, bytes;
    const uint8_t *payload;
} cm_fabric_frag;

void cm_fabric_frag_encode(uint8_t hdr[CM_FABRIC_FRAG_HDR], uint32_t seq, uint32_t total, uint32_t offset);

/* Checks a received fragment of len bytes (header included) against the
 * reassembly state: the sequence must be want_seq; with no message in
 * progress (active 0) the offset must be 0; otherwise total must match and
 * offset must equal got. The payload must be exactly as long as the header
 * implies. CM_EFORMAT with the reason. */
int cm_fabric_frag_decode(const uint8_t *buf, size_t len, uint32_t want_seq, int active, uint32_t total,
                          uint32_t got, cm_fabric_frag *f);

/* len must be 1..CM_FABRIC_ADDR_MAX (asserted: it comes from fi_getname). */
void cm_fabric_addr_encode(const uint8_t *addr, size_t len, uint8_t out[CM_FABRIC_ADDR_MSG_BYTES]);
int cm_fabric_addr_decode(const uint8_t in[CM_FABRIC_ADDR_MSG_BYTES], uint8_t addr[CM_FABRIC_ADDR_MAX], size_t *len);

#endif
