/* util.c - string buffer and UTF-8 clean-up (see util.h). */
#include "serve/util.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool sbuf_reserve(cm_sbuf *b, size_t extra) {
    if (b->oom) return false;
    if (b->n + extra + 1 <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + extra + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void cm_sbuf_put(cm_sbuf *b, const char *s, size_t n) {
    if (!sbuf_reserve(b, n)) return;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void cm_sbuf_puts(cm_sbuf *b, const char *s) { cm_sbuf_put(b, s, strlen(s)); }

void cm_sbuf_printf(cm_sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char tmp[512];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        cm_sbuf_put(b, tmp, (size_t)n);
        return;
    }
    if (!sbuf_reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

void cm_sbuf_free(cm_sbuf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* Length of a sequence from its lead byte, 0 if it cannot lead. */
static int utf8_len(uint8_t c) {
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) return 2;
    if (c >= 0xe0 && c <= 0xef) return 3;
    if (c >= 0xf0 && c <= 0xf4) return 4;
    return 0;
}

/* Whether byte i (1-based) of a sequence led by c may be `d`: the second
 * byte is range-limited for E0, ED, F0, F4 (overlongs, surrogates, > U+10FFFF). */
static bool utf8_cont_ok(uint8_t c, int i, uint8_t d) {
    if ((d & 0xc0) != 0x80) return false;
    if (i != 1) return true;
    if (c == 0xe0) return d >= 0xa0;
    if (c == 0xed) return d <= 0x9f;
    if (c == 0xf0) return d >= 0x90;
    if (c == 0xf4) return d <= 0x8f;
    return true;
}

size_t cm_utf8_clean(cm_sbuf *b, const char *src, size_t n, bool final) {
    const uint8_t *s = (const uint8_t *)src;
    size_t i = 0;
    while (i < n) {
        int len = utf8_len(s[i]);
        if (len == 1) {
            cm_sbuf_put(b, src + i, 1);
            i++;
            continue;
        }
        if (len == 0) {
            cm_sbuf_puts(b, "\xef\xbf\xbd");
            i++;
            continue;
        }
        int k = 1;
        while (k < len && i + (size_t)k < n && utf8_cont_ok(s[i], k, s[i + (size_t)k])) k++;
        if (k == len) {
            cm_sbuf_put(b, src + i, (size_t)len);
            i += (size_t)len;
        } else if (i + (size_t)k == n && !final) {
            break; /* may still complete */
        } else {
            cm_sbuf_puts(b, "\xef\xbf\xbd");
            i++;
        }
    }
    return i;
}
