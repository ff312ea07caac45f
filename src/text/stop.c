/* stop.c - stop strings over streamed text.
 *
 * Generated text arrives a token at a time, and a stop string may span
 * several tokens, so bytes that could still be the start of a stop string
 * are held back until the next bytes decide. Bytes are also held back while
 * they end in an incomplete UTF-8 sequence (a token may carry half of a
 * multi-byte character), so a reader never sees a character cut in two.
 *
 *   pending: bytes received but not yet emitted (a suffix of the stream)
 *   out:     the bytes handed to the caller by the last call
 *
 * Invariant between calls: no stop string occurs in `pending`, and every
 * earlier emitted byte is known not to begin a stop string. Once a stop
 * string is seen the matcher is done: later feeds emit nothing. */
#include "text/stop.h"

#include <stdlib.h>
#include <string.h>

#include "base/status.h"

struct cm_stop {
    char **strs;
    size_t *lens;
    int n;
    char *pending;
    size_t n_pending, cap_pending;
    char *out;
    size_t cap_out;
    bool stopped;
};

int cm_stop_create(const char *const *strs, int n, cm_stop **out) {
    *out = NULL;
    if (n < 0 || (n > 0 && !strs)) return cm_errorf(CM_EINVAL, "stop strings: %d given", n);
    cm_stop *s = calloc(1, sizeof *s);
    if (!s) goto fail;
    if (n > 0) {
        s->strs = calloc((size_t)n, sizeof *s->strs);
        s->lens = calloc((size_t)n, sizeof *s->lens);
        if (!s->strs || !s->lens) goto fail;
    }
    for (int i = 0; i < n; i++) {
        if (!strs[i] || !strs[i][0]) continue; /* an empty stop string would stop at once: ignore it */
        size_t len = strlen(strs[i]);
        s->strs[s->n] = malloc(len + 1);
        if (!s->strs[s->n]) goto fail;
        memcpy(s->strs[s->n], strs[i], len + 1);
        s->lens[s->n] = len;
        s->n++;
    }
    *out = s;
    return CM_OK;
fail:
    cm_stop_destroy(s);
    return cm_errorf(CM_ENOMEM, "stop strings: out of memory");
}

void cm_stop_destroy(cm_stop *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++) free(s->strs[i]);
    free(s->strs);
    free(s->lens);
    free(s->pending);
    free(s->out);
    free(s);
}

void cm_stop_reset(cm_stop *s) {
    s->n_pending = 0;
    s->stopped = false;
}

static bool reserve(char **p, size_t *cap, size_t need) {
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    char *q = realloc(*p, c);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

/* Bytes at the end of b[0..n) that start a UTF-8 character still missing
 * continuation bytes; 0 when the text ends on a character boundary (or in
 * bytes that are not UTF-8 at all, which waiting would not fix). */
static size_t utf8_incomplete_tail(const char *b, size_t n) {
    for (size_t k = 1; k <= 4 && k <= n; k++) {
        unsigned char c = (unsigned char)b[n - k];
        if ((c & 0xC0) == 0x80) continue; /* continuation byte: keep looking for the lead */
        size_t need = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
        return k < need ? k : 0;
    }
    return 0;
}

/* Longest proper prefix of any stop string that b[0..n) ends with. */
static size_t stop_prefix_tail(const cm_stop *s, const char *b, size_t n) {
    size_t best = 0;
    for (int i = 0; i < s->n; i++) {
        size_t max = s->lens[i] - 1 < n ? s->lens[i] - 1 : n;
        for (size_t k = max; k > best; k--)
            if (!memcmp(b + n - k, s->strs[i], k)) {
                best = k;
                break;
            }
    }
    return best;
}

/* Copies b[0..n) to the out buffer; false when memory runs out. */
static bool emit_copy(cm_stop *s, const char *b, size_t n, const char **emit, size_t *n_emit) {
    if (!reserve(&s->out, &s->cap_out, n + 1)) return false;
    memcpy(s->out, b, n);
    s->out[n] = 0;
    *emit = s->out;
    *n_emit = n;
    return true;
}

bool cm_stop_feed(cm_stop *s, const char *text, size_t len, const char **emit, size_t *n_emit) {
    *emit = "";
    *n_emit = 0;
    if (s->stopped) return true;
    if (!reserve(&s->pending, &s->cap_pending, s->n_pending + len + 1)) {
        /* Out of memory: pass the new bytes through unfiltered rather than lose them. */
        *emit = text;
        *n_emit = len;
        return false;
    }
    memcpy(s->pending + s->n_pending, text, len);
    s->n_pending += len;
    s->pending[s->n_pending] = 0;

    /* the earliest complete stop string ends the stream */
    size_t first = s->n_pending;
    for (int i = 0; i < s->n; i++) {
        const char *p = s->pending, *end = s->pending + s->n_pending;
        while ((size_t)(end - p) >= s->lens[i]) {
            const char *q = memchr(p, s->strs[i][0], (size_t)(end - p) - s->lens[i] + 1);
            if (!q) break;
            if (!memcmp(q, s->strs[i], s->lens[i])) {
                if ((size_t)(q - s->pending) < first) first = (size_t)(q - s->pending);
                break;
            }
            p = q + 1;
        }
    }
    if (first < s->n_pending) {
        s->stopped = true;
        emit_copy(s, s->pending, first, emit, n_emit);
        s->n_pending = 0;
        return true;
    }

    size_t hold = stop_prefix_tail(s, s->pending, s->n_pending);
    size_t u = utf8_incomplete_tail(s->pending, s->n_pending);
    if (u > hold) hold = u;
    size_t n_out = s->n_pending - hold;
    if (n_out > 0 && emit_copy(s, s->pending, n_out, emit, n_emit)) {
        memmove(s->pending, s->pending + n_out, hold);
        s->n_pending = hold;
    }
    return false;
}

void cm_stop_flush(cm_stop *s, const char **emit, size_t *n_emit) {
    *emit = "";
    *n_emit = 0;
    if (s->stopped || s->n_pending == 0) return;
    if (emit_copy(s, s->pending, s->n_pending, emit, n_emit)) s->n_pending = 0;
}
