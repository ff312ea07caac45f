/* fuzz_frame.c - fuzz target for the xfer wire parsers: the input is read
 * as a byte stream the way the tcp backend reads a socket - a handshake
 * hello and proof, then frame headers each followed by its payload - and
 * also as region descriptors and cell-key text. Every decoder must either
 * refuse with a message or return fields that respect the limits the
 * receive path relies on (sizes, segment counts, no offset overflow).
 * Seeds: a valid hello, proof, and a stream of valid frames. */
#include <stdint.h>
#include <string.h>

#include "base/status.h"
#include "xfer/backend.h"
#include "xfer/wire.h"
#include "xfer/xfer.h"

static void check_hdr(const cm_wire_hdr *h) {
    switch (h->type) {
    case CM_WIRE_WRITE:
        if (h->payload_bytes > CM_XFER_MAX_SEG_BYTES || h->n_segs < 1 || h->n_segs > CM_XFER_MAX_SEGS_PER_WRITE ||
            h->dst_off > UINT64_MAX - h->payload_bytes)
            __builtin_trap();
        break;
    case CM_WIRE_SEND:
        if (h->payload_bytes > CM_XFER_MAX_MSG_BYTES || h->region_id || h->n_segs) __builtin_trap();
        break;
    case CM_WIRE_HEARTBEAT:
    case CM_WIRE_BYE:
        if (h->payload_bytes) __builtin_trap();
        break;
    default: __builtin_trap(); /* unknown types must be refused */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t pos = 0;
    cm_wire_hello hello;
    if (size >= CM_WIRE_HELLO_BYTES) {
        if (cm_wire_hello_decode(data, &hello) == CM_OK) {
            if (hello.link >= hello.n_links || hello.sock >= hello.n_socks || hello.n_links > CM_XFER_MAX_LINKS ||
                hello.n_socks > CM_XFER_MAX_SOCKS || strlen(hello.name) >= CM_XFER_NAME_MAX)
                __builtin_trap();
            uint8_t again[CM_WIRE_HELLO_BYTES];
            cm_wire_hello_encode(&hello, again);
            if (memcmp(again, data, CM_WIRE_HELLO_BYTES)) __builtin_trap(); /* canonical form */
            pos = CM_WIRE_HELLO_BYTES;
        } else if (!cm_last_error(CM_EFORMAT)[0]) {
            __builtin_trap();
        }
    }
    if (size - pos >= CM_WIRE_PROOF_BYTES) {
        int verdict;
        uint8_t mac[CM_WIRE_MAC_BYTES];
        if (cm_wire_proof_decode(data + pos, &verdict, mac) == CM_OK) {
            if (verdict != 0 && verdict != 1) __builtin_trap();
            pos += CM_WIRE_PROOF_BYTES;
        }
    }
    /* frames: header, then skip payload_bytes (bounded by what is left) */
    while (size - pos >= CM_WIRE_HDR_BYTES) {
        cm_wire_hdr h;
        if (cm_wire_hdr_decode(data + pos, &h) != CM_OK) break;
        check_hdr(&h);
        uint8_t again[CM_WIRE_HDR_BYTES];
        cm_wire_hdr_encode(&h, again);
        if (memcmp(again, data + pos, CM_WIRE_HDR_BYTES)) __builtin_trap();
        pos += CM_WIRE_HDR_BYTES;
        if (h.payload_bytes > size - pos) break; /* truncated payload */
        pos += h.payload_bytes;
    }
    cm_xfer_mr_desc d;
    if (size >= CM_XFER_MR_DESC_WIRE_BYTES && cm_xfer_mr_desc_decode(data, CM_XFER_MR_DESC_WIRE_BYTES, &d) == CM_OK &&
        d.n_rkeys > CM_XFER_MAX_LINKS)
        __builtin_trap();
    cm_xfer_key k;
    cm_xfer_key_parse((const char *)data, size < 200 ? size : 200, "fuzz", &k);
    return 0;
}

size_t cm_fuzz_seed(int i, uint8_t *buf, size_t cap);
size_t cm_fuzz_seed(int i, uint8_t *buf, size_t cap) {
    if (cap < 4096) return 0;
    size_t n = 0;
    cm_wire_hello h = {.role = 1, .link = 1, .sock = 0, .n_links = 2, .n_socks = 2, .instance = 0x1122334455667788ull};
    memset(h.nonce, 0x42, sizeof h.nonce);
    strcpy(h.name, "node-a");
    switch (i) {
    case 0: /* hello + proof + frames */
        cm_wire_hello_encode(&h, buf);
        n = CM_WIRE_HELLO_BYTES;
        {
            uint8_t mac[CM_WIRE_MAC_BYTES];
            memset(mac, 7, sizeof mac);
            cm_wire_proof_encode(0, mac, buf + n);
            n += CM_WIRE_PROOF_BYTES;
        }
        /* fallthrough */
    case 1: { /* frames only */
        cm_wire_hdr f[] = {
            {CM_WIRE_WRITE, 16, 7, 0x2001, 5, 4080, 3},
            {CM_WIRE_SEND, 8, 1, 0, 0, 0, 0},
            {CM_WIRE_HEARTBEAT, 0, 0, 0, 0, 0, 0},
            {CM_WIRE_WRITE, 0, 8, 0x2001, 6, 0, 1},
            {CM_WIRE_BYE, 0, 0, 0, 0, 0, 0},
        };
        for (size_t k = 0; k < sizeof f / sizeof f[0]; k++) {
            cm_wire_hdr_encode(&f[k], buf + n);
            n += CM_WIRE_HDR_BYTES;
            memset(buf + n, (int)k, f[k].payload_bytes);
            n += f[k].payload_bytes;
        }
        return n;
    }
    case 2: { /* a region descriptor */
        cm_xfer_mr_desc d = {.region_id = 0x3001, .n_rkeys = 2, .bytes = 1 << 20, .addr = 0, .rkeys = {1, 2}};
        cm_xfer_mr_desc_encode(&d, buf, cap, &n);
        return n;
    }
    case 3: /* key text */
        memcpy(buf, "9e5e43c1167300e7e30637db497eac9ef48f6990b90f4853d5a287aecdc97843\n", 65);
        return 65;
    default: return 0;
    }
}
