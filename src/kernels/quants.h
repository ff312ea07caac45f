/* quants.h - block layouts of the quantized tensor types, byte for byte as
 * GGUF files store them (ggml's layouts). Every struct is packed by
 * construction (only u8/i8/u16 members in an order with no padding, checked
 * by the static asserts), so a pointer into an mmap'd file can be read as an
 * array of blocks. f16 fields are raw IEEE half bits (base/fp16.h).
 *
 * 32-wide formats, one scale per 32 weights:
 *   q4_0  d | qs[16]: w = d * (nibble - 8); low nibbles are weights 0..15, high 16..31
 *   q4_1  d, m | qs[16]: w = d * nibble + m
 *   q5_0  d | qh[4] | qs[16]: 5th bit of weight j is bit j of qh; w = d * (q - 16)
 *   q5_1  d, m | qh[4] | qs[16]: w = d * q + m
 *   q8_0  d | qs[32] (int8): w = d * q
 *   q8_1  d, s | qs[32]: s = d * sum(qs) (activations only)
 * K formats, super-blocks of 256 in sub-blocks of 16 or 32 with quantized scales:
 *   q2_K  scales[16] (lo nibble scale, hi nibble min) | qs[64] | d | dmin
 *   q3_K  hmask[32] | qs[64] | scales[12] (16 x 6-bit) | d
 *   q4_K  d | dmin | scales[12] (8 x 6-bit scale + 8 x 6-bit min) | qs[128]
 *   q5_K  d | dmin | scales[12] | qh[32] | qs[128]
 *   q6_K  ql[128] | qh[64] | scales[16] (int8) | d
 *   q8_K  d (f32) | qs[256] (int8) | bsums[16] (int16 sums of 16) (activations only) */
#ifndef CM_KERNELS_QUANTS_H
#define CM_KERNELS_QUANTS_H

#include <assert.h>
#include <stdint.h>

#include "base/fp16.h"
#include "gguf/types.h"

#define CM_K_SCALE_SIZE 12

typedef struct { cm_f16 d; uint8_t qs[CM_QK / 2]; } cm_block_q4_0;
typedef struct { cm_f16 d, m; uint8_t qs[CM_QK / 2]; } cm_block_q4_1;
typedef struct { cm_f16 d; uint8_t qh[4]; uint8_t qs[CM_QK / 2]; } cm_block_q5_0;
typedef struct { cm_f16 d, m; uint8_t qh[4]; uint8_t qs[CM_QK / 2]; } cm_block_q5_1;
typedef struct { cm_f16 d; int8_t qs[CM_QK]; } cm_block_q8_0;
typedef struct { cm_f16 d, s; int8_t qs[CM_QK]; } cm_block_q8_1;

typedef struct { uint8_t scales[CM_QK_K / 16]; uint8_t qs[CM_QK_K / 4]; cm_f16 d, dmin; } cm_block_q2_K;
typedef struct { uint8_t hmask[CM_QK_K / 8]; uint8_t qs[CM_QK_K / 4]; uint8_t scales[12]; cm_f16 d; } cm_block_q3_K;
typedef struct { cm_f16 d, dmin; uint8_t scales[CM_K_SCALE_SIZE]; uint8_t qs[CM_QK_K / 2]; } cm_block_q4_K;
typedef struct { cm_f16 d, dmin; uint8_t scales[CM_K_SCALE_SIZE]; uint8_t qh[CM_QK_K / 8]; uint8_t qs[CM_QK_K / 2]; } cm_block_q5_K;
typedef struct { uint8_t ql[CM_QK_K / 2]; uint8_t qh[CM_QK_K / 4]; int8_t scales[CM_QK_K / 16]; cm_f16 d; } cm_block_q6_K;
typedef struct { float d; int8_t qs[CM_QK_K]; int16_t bsums[CM_QK_K / 16]; } cm_block_q8_K;

static_assert(sizeof(cm_block_q4_0) == 18, "q4_0 layout");
static_assert(sizeof(cm_block_q4_1) == 20, "q4_1 layout");
static_assert(sizeof(cm_block_q5_0) == 22, "q5_0 layout");
static_assert(sizeof(cm_block_q5_1) == 24, "q5_1 layout");
static_assert(sizeof(cm_block_q8_0) == 34, "q8_0 layout");
static_assert(sizeof(cm_block_q8_1) == 36, "q8_1 layout");
static_assert(sizeof(cm_block_q2_K) == 84, "q2_K layout");
static_assert(sizeof(cm_block_q3_K) == 110, "q3_K layout");
static_assert(sizeof(cm_block_q4_K) == 144, "q4_K layout");
static_assert(sizeof(cm_block_q5_K) == 176, "q5_K layout");
static_assert(sizeof(cm_block_q6_K) == 210, "q6_K layout");
static_assert(sizeof(cm_block_q8_K) == 292, "q8_K layout");

#endif
