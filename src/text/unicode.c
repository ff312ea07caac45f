/* unicode.c - UTF-8 decoding/encoding and GPT-2's byte<->code point table.
 *
 * The byte-level table is computed, not stored: bytes '!'..'~', 0xA1..0xAC
 * and 0xAE..0xFF keep their own code point; the remaining 68 bytes (controls,
 * space, DEL, 0x80..0xA0, 0xAD) take U+0100, U+0101, ... in increasing byte
 * order. That is the mapping every byte-level BPE vocabulary is written in. */
#include "text/unicode.h"

#include <string.h>

int cm_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    uint8_t b0 = s[0];
    if (b0 < 0x80) {
        *cp = b0;
        return 1;
    }
    int len;
    uint32_t v, min;
    if ((b0 & 0xE0) == 0xC0) {
        len = 2, v = b0 & 0x1F, min = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
        len = 3, v = b0 & 0x0F, min = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
        len = 4, v = b0 & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if ((size_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    /* Overlong forms, surrogates and values past U+10FFFF are invalid. */
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

int cm_utf8_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static int keeps_own_cp(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

uint32_t cm_bytelevel_cp(uint8_t byte) {
    if (keeps_own_cp(byte)) return byte;
    /* Rank of this byte among the bytes that do not keep their code point. */
    uint32_t n = 0;
    for (unsigned b = 0; b < byte; b++)
        if (!keeps_own_cp(b)) n++;
    return 0x100 + n;
}

int cm_bytelevel_byte(uint32_t cp) {
    if (cp < 0x100) return keeps_own_cp(cp) ? (int)cp : -1;
    if (cp >= 0x100 + 68) return -1;
    uint32_t n = cp - 0x100;
    for (unsigned b = 0; b < 256; b++) {
        if (keeps_own_cp(b)) continue;
        if (n == 0) return (int)b;
        n--;
    }
    return -1;
}

size_t cm_bytelevel_decode(const char *s, size_t n, char *out, size_t n_out) {
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0, o = 0;
    while (i < n) {
        uint32_t cp;
        int len = cm_utf8_decode(u + i, n - i, &cp);
        int b = len > 0 ? cm_bytelevel_byte(cp) : -1;
        if (b >= 0) {
            if (o < n_out) out[o] = (char)b;
            o++;
            i += (size_t)len;
        } else {
            size_t k = len > 0 ? (size_t)len : 1;
            for (size_t j = 0; j < k; j++, o++)
                if (o < n_out) out[o] = s[i + j];
            i += k;
        }
    }
    return o;
}
