/* verbs_proto.h - what the verbs backend exchanges with a peer, as byte
 * layouts with checked decoders (pure functions, no libibverbs: built and
 * unit-tested everywhere). All integers little-endian.
 *
 * Queue-pair info, sent each way over the authenticated side channel right
 * after the cell-key HELLO/PROOF of wire.h (CM_VERBS_QP_INFO_BYTES):
 *   0 u8[4] magic "CMVQ"   4 u8 version (1)   5 u8 qp type (2 RC, 3 UC)
 *   6 u8 port (1..254)     7 u8 path mtu (1..5: 256..4096 bytes, IBV_MTU_*)
 *   8 u32 qp number (< 2^24)     12 u32 first packet sequence number (< 2^24)
 *  16 u16 lid   18 u8 gid index   19 u8 zero   20 u8[16] gid
 *  36 u32 receive depth (posted receives, 1..65536)
 *  40 u32 frame bytes of the two-sided path (power of two, 1 KiB..1 MiB)
 *  44 u8[20] zero
 *
 * Immediate data: on RC a write is all-but-last segments as
 * IBV_WR_RDMA_WRITE and the last as IBV_WR_RDMA_WRITE_WITH_IMM, all on one
 * queue pair; RC executes a QP's writes in order, so the receiver's
 * IBV_WC_RECV_RDMA_WITH_IMM for the last segment means the whole write
 * landed, and the 32 bits carry the caller's immediate unchanged (in
 * network order, as verbs defines imm_data).
 *
 * Two-sided frames (messages on every link type; writes too on UC queue
 * pairs, e.g. Apple's Thunderbolt 5 RDMA, where one-sided writes with
 * immediate are not established): every SEND starts with a 40-byte header,
 * then the payload, at most the receiver's frame bytes in all:
 *   0 u8 magic 'V'   1 u8 type (1 write frame, 2 message fragment)
 *   2 u16 zero       4 u32 payload bytes
 *   8 u64 write id (type 1) or message sequence (type 2)
 *  16 u32 region id (type 1) or total message bytes (type 2)
 *  20 u32 imm (type 1) or zero
 *  24 u64 offset in the region (type 1) or in the message (type 2)
 *  32 u32 frames of the write (type 1) or zero
 *  36 u32 frame sequence: per link and direction, +1 for every frame sent
 * A write is cut into frames; its frames, like a message's fragments, are
 * sent back to back on one queue pair. The receiver checks each write frame
 * against the region through the core (cm_xfer_core_region_target), copies
 * it in, and bumps the counter once, after the last frame. UC drops a lost
 * message silently and does not retransmit: the frame sequence turns a loss
 * into a gap the receiver sees (the peer then fails), and the heartbeat's
 * count of frames sent (below) catches a loss at the end of a burst.
 *
 * Side channel after setup: records of 5 bytes, a type byte and a u32:
 *   'H' heartbeat, u32 = frames sent on this link so far (mod 2^32)
 *   'C' credits: u32 receive buffers the sender of 'C' re-posted since its
 *       last 'C' (each frame and each write-with-immediate uses one)
 *   'R' ready (once, during setup, u32 zero)   'B' goodbye (u32 zero)
 * Anything else closes the link. */
#ifndef CM_XFER_VERBS_PROTO_H
#define CM_XFER_VERBS_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define CM_VERBS_QP_INFO_BYTES 64
#define CM_VERBS_QPT_RC 2
#define CM_VERBS_QPT_UC 3

typedef struct cm_verbs_qp_info {
    int qp_type;     /* CM_VERBS_QPT_RC or _UC */
    int port;
    int mtu;         /* IBV_MTU_256 (1) .. IBV_MTU_4096 (5) */
    uint32_t qpn, psn;
    uint16_t lid;
    int gid_index;
    uint8_t gid[16];
    uint32_t rx_depth;
    uint32_t frame_bytes;
} cm_verbs_qp_info;

void cm_verbs_qp_info_encode(const cm_verbs_qp_info *q, uint8_t out[CM_VERBS_QP_INFO_BYTES]);
/* CM_EFORMAT with the field named. */
int cm_verbs_qp_info_decode(const uint8_t in[CM_VERBS_QP_INFO_BYTES], cm_verbs_qp_info *q);

/* imm_data of a work request / completion (network order) <-> the caller's
 * immediate. */
uint32_t cm_verbs_imm_to_wire(uint32_t imm);
uint32_t cm_verbs_imm_from_wire(uint32_t imm_data);

/* Whether segment i of an n-segment write carries the immediate (RC: only
 * the last one, so the counter grows once per write). */
static inline int cm_verbs_seg_carries_imm(int i, int n_segs) { return i == n_segs - 1; }

#define CM_VERBS_FRAME_HDR_BYTES 40
enum { CM_VERBS_FRAME_WRITE = 1, CM_VERBS_FRAME_MSG = 2 };

typedef struct cm_verbs_frame {
    int type;
    uint32_t payload_bytes;
    uint64_t id;        /* write id / message sequence */
    uint32_t region_or_total;
    uint32_t imm;
    uint64_t offset;
    uint32_t n_segs;    /* WRITE: frames of the write (1..CM_XFER_MAX_SEGS_PER_WRITE) */
    uint32_t seq;       /* frame sequence on the link */
} cm_verbs_frame;

void cm_verbs_frame_encode(const cm_verbs_frame *f, uint8_t out[CM_VERBS_FRAME_HDR_BYTES]);
/* Checks magic, type, zero fields, payload against frame_bytes (the
 * receive buffer size less the header) and, for messages, offset + payload
 * within total <= CM_XFER_MAX_MSG_BYTES; for writes, offset + payload
 * without overflow. `len` is what the receive completion said. */
int cm_verbs_frame_decode(const uint8_t *buf, size_t len, uint32_t frame_bytes, cm_verbs_frame *f);

/* ---- side channel records ---- */

#define CM_VERBS_SIDE_BYTES 5
enum { CM_VERBS_SIDE_HEARTBEAT = 'H', CM_VERBS_SIDE_CREDIT = 'C', CM_VERBS_SIDE_READY = 'R', CM_VERBS_SIDE_BYE = 'B' };

void cm_verbs_side_encode(int type, uint32_t value, uint8_t out[CM_VERBS_SIDE_BYTES]);

/* Reassembles records from a byte stream that arrives in arbitrary pieces. */
typedef struct cm_verbs_side_rx {
    uint8_t buf[CM_VERBS_SIDE_BYTES];
    int have;
} cm_verbs_side_rx;

/* Feeds up to n bytes; stops after one complete record. *used is the bytes
 * consumed; *type is the record's type (0 when more bytes are needed) and
 * *value its u32. CM_EFORMAT for an unknown type or a non-zero value where
 * the type has none. */
int cm_verbs_side_feed(cm_verbs_side_rx *rx, const uint8_t *p, size_t n, size_t *used, int *type, uint32_t *value);

#endif
