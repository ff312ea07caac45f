/* types.h - ggml tensor type ids and their block geometry: what a GGUF file
 * needs to know to size a tensor. The block layouts themselves live in
 * kernels/quants.h. */
#ifndef CM_GGUF_TYPES_H
#define CM_GGUF_TYPES_H

#include <stddef.h>
#include <stdint.h>

/* Values are the ggml type ids stored in GGUF files. */
typedef enum cm_type {
    CM_TYPE_F32 = 0,
    CM_TYPE_F16 = 1,
    CM_TYPE_Q4_0 = 2,
    CM_TYPE_Q4_1 = 3,
    CM_TYPE_Q5_0 = 6,
    CM_TYPE_Q5_1 = 7,
    CM_TYPE_Q8_0 = 8,
    CM_TYPE_Q8_1 = 9,
    CM_TYPE_Q2_K = 10,
    CM_TYPE_Q3_K = 11,
    CM_TYPE_Q4_K = 12,
    CM_TYPE_Q5_K = 13,
    CM_TYPE_Q6_K = 14,
    CM_TYPE_Q8_K = 15,
    CM_TYPE_BF16 = 30,
    CM_TYPE_COUNT = 40 /* bound for tables indexed by type id */
} cm_type;

#define CM_QK 32   /* elements per block of the 32-wide formats */
#define CM_QK_K 256 /* elements per super-block of the K formats */

/* Elements per block and bytes per block; 0 for ids cellm does not know. */
int cm_type_block_elems(int type);
size_t cm_type_block_bytes(int type);
/* Lower-case name ("q4_K" style as ggml spells it: "q4_0", "q4_K", "f16"), or NULL. */
const char *cm_type_name(int type);
/* Parses a name case-insensitively ("q4_k", "Q4_K", "f16"); -1 if unknown. */
int cm_type_from_name(const char *name);
/* Bytes of a row of n elements (n must be a multiple of the block size). */
size_t cm_type_row_bytes(int type, int64_t n);

#endif
