/* wire.c - encoders and checked decoders for the tcp backend's handshake and
 * frame headers (layouts in wire.h), the handshake MACs, and the cell key's
 * text forms. Decoders trust nothing: every field is checked before use. */
#include "xfer/wire.h"

#include <ctype.h>
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "xfer/backend.h"

static int sodium_ready(void) {
    static int rc = -2;
    if (rc == -2) rc = sodium_init() < 0 ? -1 : 0;
    return rc == 0 ? CM_OK : cm_errorf(CM_EUNSUPPORTED, "libsodium failed to initialise");
}

/* ---- key ---- */

int cm_xfer_key_generate(cm_xfer_key *out) {
    int rc = sodium_ready();
    if (rc) return rc;
    randombytes_buf(out->bytes, sizeof out->bytes);
    return CM_OK;
}

int cm_xfer_key_to_hex(const cm_xfer_key *key, char *out, size_t cap) {
    if (cap < 2 * CM_XFER_KEY_BYTES + 1) return cm_errorf(CM_EINVAL, "key hex buffer too small");
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < CM_XFER_KEY_BYTES; i++) {
        out[2 * i] = hex[key->bytes[i] >> 4];
        out[2 * i + 1] = hex[key->bytes[i] & 15];
    }
    out[2 * CM_XFER_KEY_BYTES] = 0;
    return CM_OK;
}

int cm_xfer_key_parse(const char *text, size_t len, const char *what, cm_xfer_key *out) {
    if (!what) what = "key";
    size_t b = 0, e = len;
    while (b < e && isspace((unsigned char)text[b])) b++;
    while (e > b && isspace((unsigned char)text[e - 1])) e--;
    size_t n = e - b;
    const char *s = text + b;
    if (n == 2 * CM_XFER_KEY_BYTES) {
        for (size_t i = 0; i < n; i++)
            if (!isxdigit((unsigned char)s[i])) goto base64;
        for (int i = 0; i < CM_XFER_KEY_BYTES; i++) {
            char h[3] = {s[2 * i], s[2 * i + 1], 0};
            out->bytes[i] = (uint8_t)strtoul(h, NULL, 16);
        }
        return CM_OK;
    }
base64:
    if (n == 43 || n == 44) {
        int r = sodium_ready();
        if (r) return r;
        size_t got = 0;
        const char *end = NULL;
        int variant = n == 44 ? sodium_base64_VARIANT_ORIGINAL : sodium_base64_VARIANT_ORIGINAL_NO_PADDING;
        if (sodium_base642bin(out->bytes, sizeof out->bytes, s, n, NULL, &got, &end, variant) == 0 &&
            got == CM_XFER_KEY_BYTES && end == s + n)
            return CM_OK;
    }
    return cm_errorf(CM_EFORMAT,
                     "%s: not a cell key: expected 64 hex digits or 44 base64 characters (32 bytes), "
                     "found %zu characters (make one with `cellm key generate > FILE`)",
                     what, n);
}

int cm_xfer_key_load(const char *path, cm_xfer_key *out) {
    if (!path || !*path) path = getenv("CELLM_KEY_FILE");
    if (!path || !*path)
        return cm_errorf(CM_ENOTFOUND, "no cell key: pass --key-file FILE or set CELLM_KEY_FILE "
                                       "(make one with `cellm key generate > FILE`)");
    FILE *f = fopen(path, "rb");
    if (!f) return cm_errorf(CM_EIO, "%s: cannot open key file: %s", path, strerror(errno));
    char buf[256];
    size_t n = fread(buf, 1, sizeof buf, f);
    int more = fgetc(f) != EOF;
    fclose(f);
    if (more) return cm_errorf(CM_EFORMAT, "%s: not a cell key: the file is longer than 256 bytes", path);
    int rc = cm_xfer_key_parse(buf, n, path, out);
    sodium_memzero(buf, sizeof buf);
    return rc;
}

/* ---- handshake ---- */

void cm_wire_hello_encode(const cm_wire_hello *h, uint8_t out[CM_WIRE_HELLO_BYTES]) {
    memset(out, 0, CM_WIRE_HELLO_BYTES);
    memcpy(out, "CMXH", 4);
    out[4] = 1;
    out[5] = (uint8_t)h->role;
    out[6] = (uint8_t)h->link;
    out[7] = (uint8_t)h->sock;
    out[8] = (uint8_t)h->n_links;
    out[9] = (uint8_t)h->n_socks;
    cm_put_u64(out + 16, h->instance);
    memcpy(out + 24, h->nonce, CM_WIRE_NONCE_BYTES);
    size_t nl = strnlen(h->name, CM_XFER_NAME_MAX - 1);
    memcpy(out + 56, h->name, nl);
}

int cm_wire_hello_decode(const uint8_t in[CM_WIRE_HELLO_BYTES], cm_wire_hello *h) {
    if (memcmp(in, "CMXH", 4)) return cm_errorf(CM_EFORMAT, "handshake: bad hello magic (not a cellm xfer peer?)");
    if (in[4] != 1) return cm_errorf(CM_EFORMAT, "handshake: protocol version %u, expected 1", in[4]);
    if (in[5] != 1 && in[5] != 2) return cm_errorf(CM_EFORMAT, "handshake: bad role %u", in[5]);
    if (in[8] < 1 || in[8] > CM_XFER_MAX_LINKS || in[9] < 1 || in[9] > CM_XFER_MAX_SOCKS)
        return cm_errorf(CM_EFORMAT, "handshake: %u links x %u sockets out of range", in[8], in[9]);
    if (in[6] >= in[8] || in[7] >= in[9])
        return cm_errorf(CM_EFORMAT, "handshake: link %u socket %u outside %u x %u", in[6], in[7], in[8], in[9]);
    if (cm_get_u16(in + 10) || cm_get_u32(in + 12) || cm_get_u64(in + 104))
        return cm_errorf(CM_EFORMAT, "handshake: reserved hello fields are not zero");
    const uint8_t *name = in + 56;
    size_t nl = 0;
    while (nl < CM_XFER_NAME_MAX && name[nl]) nl++;
    if (nl == CM_XFER_NAME_MAX) return cm_errorf(CM_EFORMAT, "handshake: peer name is not terminated");
    for (size_t i = nl; i < CM_XFER_NAME_MAX; i++)
        if (name[i]) return cm_errorf(CM_EFORMAT, "handshake: bytes after the peer name");
    for (size_t i = 0; i < nl; i++)
        if (name[i] < 0x20 || name[i] > 0x7e) return cm_errorf(CM_EFORMAT, "handshake: peer name is not printable");
    h->role = in[5];
    h->link = in[6];
    h->sock = in[7];
    h->n_links = in[8];
    h->n_socks = in[9];
    h->instance = cm_get_u64(in + 16);
    memcpy(h->nonce, in + 24, CM_WIRE_NONCE_BYTES);
    memcpy(h->name, name, nl);
    h->name[nl] = 0;
    return CM_OK;
}

void cm_wire_proof_encode(int verdict, const uint8_t *mac, uint8_t out[CM_WIRE_PROOF_BYTES]) {
    memset(out, 0, CM_WIRE_PROOF_BYTES);
    memcpy(out, "CMXP", 4);
    out[4] = (uint8_t)verdict;
    if (mac && verdict == 0) memcpy(out + 8, mac, CM_WIRE_MAC_BYTES);
}

int cm_wire_proof_decode(const uint8_t in[CM_WIRE_PROOF_BYTES], int *verdict, uint8_t mac[CM_WIRE_MAC_BYTES]) {
    if (memcmp(in, "CMXP", 4)) return cm_errorf(CM_EFORMAT, "handshake: bad proof magic");
    if (in[4] > 1 || in[5] || in[6] || in[7]) return cm_errorf(CM_EFORMAT, "handshake: bad proof verdict");
    *verdict = in[4];
    memcpy(mac, in + 8, CM_WIRE_MAC_BYTES);
    return CM_OK;
}

static const char k_auth_label[] = "cellm-xfer-auth-v1";

void cm_wire_auth_mac(const cm_xfer_key *key, int role, const uint8_t *client_hello,
                      const uint8_t *server_hello, uint8_t mac[CM_WIRE_MAC_BYTES]) {
    uint8_t msg[sizeof k_auth_label + 1 + 2 * CM_WIRE_HELLO_BYTES];
    memcpy(msg, k_auth_label, sizeof k_auth_label); /* with its NUL */
    msg[sizeof k_auth_label] = (uint8_t)role;
    memcpy(msg + sizeof k_auth_label + 1, client_hello, CM_WIRE_HELLO_BYTES);
    memcpy(msg + sizeof k_auth_label + 1 + CM_WIRE_HELLO_BYTES, server_hello, CM_WIRE_HELLO_BYTES);
    _Static_assert(crypto_auth_BYTES == CM_WIRE_MAC_BYTES, "HMAC-SHA512/256 is 32 bytes");
    _Static_assert(crypto_auth_KEYBYTES == CM_XFER_KEY_BYTES, "cell key is a crypto_auth key");
    crypto_auth(mac, msg, sizeof msg, key->bytes);
}

int cm_wire_auth_verify(const cm_xfer_key *key, int role, const uint8_t *client_hello,
                        const uint8_t *server_hello, const uint8_t mac[CM_WIRE_MAC_BYTES]) {
    uint8_t msg[sizeof k_auth_label + 1 + 2 * CM_WIRE_HELLO_BYTES];
    memcpy(msg, k_auth_label, sizeof k_auth_label);
    msg[sizeof k_auth_label] = (uint8_t)role;
    memcpy(msg + sizeof k_auth_label + 1, client_hello, CM_WIRE_HELLO_BYTES);
    memcpy(msg + sizeof k_auth_label + 1 + CM_WIRE_HELLO_BYTES, server_hello, CM_WIRE_HELLO_BYTES);
    return crypto_auth_verify(mac, msg, sizeof msg, key->bytes) == 0 ? CM_OK : CM_EAUTH;
}

/* ---- data frames ---- */

void cm_wire_hdr_encode(const cm_wire_hdr *h, uint8_t out[CM_WIRE_HDR_BYTES]) {
    out[0] = 'X';
    out[1] = (uint8_t)h->type;
    cm_put_u16(out + 2, 0);
    cm_put_u32(out + 4, h->payload_bytes);
    cm_put_u64(out + 8, h->id);
    cm_put_u32(out + 16, h->region_id);
    cm_put_u32(out + 20, h->imm);
    cm_put_u64(out + 24, h->dst_off);
    cm_put_u32(out + 32, h->n_segs);
    cm_put_u32(out + 36, 0);
}

int cm_wire_hdr_decode(const uint8_t in[CM_WIRE_HDR_BYTES], cm_wire_hdr *h) {
    if (in[0] != 'X') return cm_errorf(CM_EFORMAT, "frame: bad magic byte 0x%02x", in[0]);
    if (cm_get_u16(in + 2) || cm_get_u32(in + 36)) return cm_errorf(CM_EFORMAT, "frame: reserved fields are not zero");
    h->type = in[1];
    h->payload_bytes = cm_get_u32(in + 4);
    h->id = cm_get_u64(in + 8);
    h->region_id = cm_get_u32(in + 16);
    h->imm = cm_get_u32(in + 20);
    h->dst_off = cm_get_u64(in + 24);
    h->n_segs = cm_get_u32(in + 32);
    switch (h->type) {
    case CM_WIRE_WRITE:
        if (h->payload_bytes > CM_XFER_MAX_SEG_BYTES)
            return cm_errorf(CM_EFORMAT, "frame: write segment of %u bytes exceeds %u", h->payload_bytes,
                             CM_XFER_MAX_SEG_BYTES);
        if (h->n_segs < 1 || h->n_segs > CM_XFER_MAX_SEGS_PER_WRITE)
            return cm_errorf(CM_EFORMAT, "frame: write with %u segments", h->n_segs);
        if (h->dst_off > UINT64_MAX - h->payload_bytes)
            return cm_errorf(CM_EFORMAT, "frame: write offset %llu overflows", (unsigned long long)h->dst_off);
        return CM_OK;
    case CM_WIRE_SEND:
        if (h->payload_bytes > CM_XFER_MAX_MSG_BYTES)
            return cm_errorf(CM_EFORMAT, "frame: message of %u bytes exceeds %u", h->payload_bytes, CM_XFER_MAX_MSG_BYTES);
        if (h->region_id || h->imm || h->dst_off || h->n_segs)
            return cm_errorf(CM_EFORMAT, "frame: send with write fields set");
        return CM_OK;
    case CM_WIRE_HEARTBEAT:
    case CM_WIRE_BYE:
        if (h->payload_bytes || h->id || h->region_id || h->imm || h->dst_off || h->n_segs)
            return cm_errorf(CM_EFORMAT, "frame: control frame type %d with fields set", h->type);
        return CM_OK;
    default:
        return cm_errorf(CM_EFORMAT, "frame: unknown type %d", h->type);
    }
}

/* ---- region descriptors ---- */

int cm_xfer_mr_desc_encode(const cm_xfer_mr_desc *d, uint8_t *buf, size_t cap, size_t *n) {
    if (cap < CM_XFER_MR_DESC_WIRE_BYTES) return cm_errorf(CM_EINVAL, "region descriptor buffer too small");
    if (d->n_rkeys > CM_XFER_MAX_LINKS) return cm_errorf(CM_EINVAL, "region descriptor with %u rkeys", d->n_rkeys);
    memcpy(buf, "XMRD", 4);
    cm_put_u32(buf + 4, d->region_id);
    cm_put_u32(buf + 8, d->n_rkeys);
    cm_put_u64(buf + 12, d->bytes);
    cm_put_u64(buf + 20, d->addr);
    for (int i = 0; i < CM_XFER_MAX_LINKS; i++) cm_put_u64(buf + 28 + 8 * i, i < (int)d->n_rkeys ? d->rkeys[i] : 0);
    *n = CM_XFER_MR_DESC_WIRE_BYTES;
    return CM_OK;
}

int cm_xfer_mr_desc_decode(const uint8_t *buf, size_t n, cm_xfer_mr_desc *out) {
    if (n != CM_XFER_MR_DESC_WIRE_BYTES)
        return cm_errorf(CM_EFORMAT, "region descriptor: %zu bytes, expected %d", n, CM_XFER_MR_DESC_WIRE_BYTES);
    if (memcmp(buf, "XMRD", 4)) return cm_errorf(CM_EFORMAT, "region descriptor: bad magic");
    memset(out, 0, sizeof *out);
    out->region_id = cm_get_u32(buf + 4);
    out->n_rkeys = cm_get_u32(buf + 8);
    if (out->n_rkeys > CM_XFER_MAX_LINKS)
        return cm_errorf(CM_EFORMAT, "region descriptor: %u rkeys, at most %d", out->n_rkeys, CM_XFER_MAX_LINKS);
    out->bytes = cm_get_u64(buf + 12);
    out->addr = cm_get_u64(buf + 20);
    for (int i = 0; i < (int)out->n_rkeys; i++) out->rkeys[i] = cm_get_u64(buf + 28 + 8 * i);
    return CM_OK;
}
