/* gguf_internal.h - what the GGUF reader shares with the writer (copy_kv)
 * and with tests: raw access to a kv and a few helpers. Not for other layers. */
#ifndef CM_GGUF_GGUF_INTERNAL_H
#define CM_GGUF_GGUF_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "gguf/gguf.h"

/* One kv of an opened file as stored: pointers stay valid while it is open. */
struct cm_gguf_kv_raw {
    const char *key;
    int type;               /* enum cm_gguf_type */
    int elem_type;          /* arrays */
    uint64_t n;             /* arrays: element count */
    const char *str;        /* strings */
    uint64_t str_len;
    const void *arr;        /* numeric arrays: n packed little-endian elements */
    const void *scalar;     /* scalars: the little-endian value bytes */
};

/* "u32", "string", ...; "unknown" outside the enum. */
const char *cm_gguf_type_name(int type);
/* Bytes of one scalar of `type`; 0 for string, array and unknown types. */
size_t cm_gguf_type_size(int type);
/* Byte offset in the file where the data section starts. */
uint64_t cm_gguf_data_offset(const cm_gguf *g);

int cm_gguf__kv_raw(const cm_gguf *g, int64_t i, struct cm_gguf_kv_raw *out);
/* Element j of string-array kv i (j < n, asserted). */
int cm_gguf__kv_arr_str(const cm_gguf *g, int64_t i, uint64_t j, const char **s, uint64_t *len);

#endif
