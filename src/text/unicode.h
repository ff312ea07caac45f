/* unicode.h - the little UTF-8 and GPT-2 byte-level helpers the tokenizers
 * need. Nothing here allocates; every function accepts arbitrary bytes
 * (invalid UTF-8 included) without reading past the given length. */
#ifndef CM_TEXT_UNICODE_H
#define CM_TEXT_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* Decodes one strictly valid UTF-8 sequence at s[0..n). Returns its length
 * (1..4) and sets *cp, or 0 when the bytes there are not valid UTF-8 (then
 * *cp is untouched). */
int cm_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);

/* Encodes cp (<= 0x10FFFF) into out[0..4); returns the byte count. */
int cm_utf8_encode(uint32_t cp, char out[4]);

/* GPT-2's byte-level mapping: every byte value has a printable code point
 * (printable Latin-1 bytes map to themselves, the other 68 bytes to
 * U+0100.. in order). */
uint32_t cm_bytelevel_cp(uint8_t byte);
/* The byte a code point stands for, or -1 if cp is not one of the 256. */
int cm_bytelevel_byte(uint32_t cp);

/* Decodes a byte-level encoded token text into raw bytes: each mapped code
 * point becomes its byte; anything else (not a mapped code point, invalid
 * UTF-8) is copied unchanged. Writes at most n_out bytes and returns the full
 * decoded length (never more than n, so an n-byte buffer always suffices). */
size_t cm_bytelevel_decode(const char *s, size_t n, char *out, size_t n_out);

#endif
