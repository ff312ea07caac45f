/* wire.h - byte layouts of everything the tcp backend puts on a socket, and
 * their bounds-checked parsers (pure functions: the fuzz target drives them).
 *
 * All integers little-endian.
 *
 * Handshake, per connection, before anything else:
 *
 *   client                                  server
 *     HELLO(role=1, nonce_c) ---------------->
 *     <---------------------------------------- HELLO(role=2, nonce_s)
 *     PROOF(mac_c) -------------------------->   checks mac_c; wrong: PROOF(verdict=1), close
 *     <---------------------------------------- PROOF(verdict=0, mac_s)
 *   checks mac_s; wrong: close                  (both: READY, data frames from here on)
 *
 *   mac_r = crypto_auth (HMAC-SHA512/256) keyed with the cell key over
 *           "cellm-xfer-auth-v1" NUL, role byte r (1 client, 2 server),
 *           client HELLO bytes, server HELLO bytes
 *   so each proof covers both nonces, both instance ids and names, the link
 *   and socket index, and the prover's role (no reflection, no replay: a
 *   fresh nonce each side). The server proves only after the client did.
 *
 * HELLO, 112 bytes:
 *   0  u8[4] magic "CMXH"        4  u8 version (1)      5  u8 role (1|2)
 *   6  u8 link index             7  u8 socket index     8  u8 n_links
 *   9  u8 sockets per link      10  u16 zero           12  u32 zero
 *  16  u64 instance id          24  u8[32] nonce       56  u8[48] name, NUL-padded
 * 104  u64 zero
 *
 * PROOF, 40 bytes:
 *   0  u8[4] magic "CMXP"        4  u8 verdict (0 ok, 1 refused)   5 u8[3] zero
 *   8  u8[32] mac (zero when refused)
 *
 * Data frame header, 40 bytes, then payload_bytes of payload:
 *   0  u8 magic 'X'              1  u8 type             2  u16 flags (0)
 *   4  u32 payload_bytes         8  u64 id (write id, send sequence)
 *  16  u32 region_id            20  u32 imm
 *  24  u64 dst_off              32  u32 n_segs         36  u32 zero
 * types: 1 WRITE (a segment of write `id`: payload lands in region_id at
 * dst_off; the write has n_segs segments), 2 SEND (payload is one message),
 * 3 HEARTBEAT (no payload), 4 BYE (no payload; the sender is closing).
 * Fields a type does not use must be zero. */
#ifndef CM_XFER_WIRE_H
#define CM_XFER_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "xfer/xfer.h"

#define CM_WIRE_HELLO_BYTES 112
#define CM_WIRE_PROOF_BYTES 40
#define CM_WIRE_HDR_BYTES 40
#define CM_WIRE_NONCE_BYTES 32
#define CM_WIRE_MAC_BYTES 32

enum cm_wire_type { CM_WIRE_WRITE = 1, CM_WIRE_SEND = 2, CM_WIRE_HEARTBEAT = 3, CM_WIRE_BYE = 4 };

typedef struct cm_wire_hello {
    int role;
    int link, sock, n_links, n_socks;
    uint64_t instance;
    uint8_t nonce[CM_WIRE_NONCE_BYTES];
    char name[CM_XFER_NAME_MAX];
} cm_wire_hello;

typedef struct cm_wire_hdr {
    int type;
    uint32_t payload_bytes;
    uint64_t id;
    uint32_t region_id;
    uint32_t imm;
    uint64_t dst_off;
    uint32_t n_segs;
} cm_wire_hdr;

void cm_wire_hello_encode(const cm_wire_hello *h, uint8_t out[CM_WIRE_HELLO_BYTES]);
/* CM_EFORMAT with a message naming the bad field. */
int cm_wire_hello_decode(const uint8_t in[CM_WIRE_HELLO_BYTES], cm_wire_hello *h);

void cm_wire_proof_encode(int verdict, const uint8_t *mac, uint8_t out[CM_WIRE_PROOF_BYTES]);
int cm_wire_proof_decode(const uint8_t in[CM_WIRE_PROOF_BYTES], int *verdict, uint8_t mac[CM_WIRE_MAC_BYTES]);

/* mac over the two hellos for `role` (1 client, 2 server). */
void cm_wire_auth_mac(const cm_xfer_key *key, int role, const uint8_t *client_hello,
                      const uint8_t *server_hello, uint8_t mac[CM_WIRE_MAC_BYTES]);
/* Constant-time check; CM_OK or CM_EAUTH. */
int cm_wire_auth_verify(const cm_xfer_key *key, int role, const uint8_t *client_hello,
                        const uint8_t *server_hello, const uint8_t mac[CM_WIRE_MAC_BYTES]);

void cm_wire_hdr_encode(const cm_wire_hdr *h, uint8_t out[CM_WIRE_HDR_BYTES]);
/* Checks magic, type, zero fields, sizes (WRITE <= CM_XFER_MAX_SEG_BYTES,
 * 1 <= n_segs <= CM_XFER_MAX_SEGS_PER_WRITE, dst_off + payload without
 * overflow; SEND <= CM_XFER_MAX_MSG_BYTES). CM_EFORMAT with the reason. */
int cm_wire_hdr_decode(const uint8_t in[CM_WIRE_HDR_BYTES], cm_wire_hdr *h);

static inline void cm_put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void cm_put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void cm_put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t cm_get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t cm_get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static inline uint64_t cm_get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

#endif
