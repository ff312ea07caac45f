/* kernels.h - the numeric kernels: dequantize, quantize, dot products and
 * matrix multiplication for every supported tensor type.
 *
 * Each weight type W has a "vec_dot type": the format activations are
 * quantized to before a dot product with W (Q8_0 for the 32-wide formats,
 * Q8_K for the K formats, F16/BF16/F32 for the float types; the table says).
 * ref.c holds the portable reference of every kernel; x86/ and arm/ hold the
 * same functions with intrinsics, chosen once by cm_kernels_init() from the
 * CPU's features. The reference is always available and is the oracle in the
 * tests. */
#ifndef CM_KERNELS_KERNELS_H
#define CM_KERNELS_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/pool.h"
#include "gguf/types.h"

/* s = dot(x[0..n), y[0..n)): x is a row of the weight type, y a row of its
 * vec_dot type. n is a multiple of the weight type's block size. */
typedef void (*cm_vec_dot_fn)(int n, float *s, const void *x, const void *y);
typedef void (*cm_to_float_fn)(const void *x, float *y, int64_t n);
typedef void (*cm_from_float_fn)(const float *x, void *y, int64_t n);

typedef struct cm_type_traits {
    const char *name;
    int block_elems;
    size_t block_bytes;
    bool is_quantized;
    int vec_dot_type;            /* cm_type the activations are converted to */
    cm_to_float_fn to_float;     /* dequantize */
    cm_from_float_fn from_float; /* quantize (the reference quantizer for weights; fast path for activations) */
    cm_vec_dot_fn vec_dot;
} cm_type_traits;

/* Selects the kernels for this CPU (or the reference ones when force_ref is
 * set or the environment has CELLM_KERNELS=ref). Idempotent; call once at
 * start-up before any other function here. Returns the name of what was
 * chosen ("ref", "avx2", "avx512-vnni", "neon-dotprod", ...). */
const char *cm_kernels_init(bool force_ref);
const char *cm_kernels_name(void);

/* Traits of a type that kernels support for inference, or NULL. */
const cm_type_traits *cm_type_traits_get(int type);
/* The reference traits (never SIMD), for tests. */
const cm_type_traits *cm_type_traits_ref(int type);

/* y[r, t] = sum_k W[r, k] * x[t, k]
 *   W: n_rows x n_cols, row-major in its type (`w_type`), rows `w_row_bytes` apart
 *   x: n_tokens x n_cols f32; y: n_tokens x n_rows f32, row t at y + t*n_rows
 * `scratch` holds x converted to W's vec_dot type: at least
 * cm_matmul_scratch_bytes(w_type, n_cols, n_tokens) bytes. Runs on every
 * thread of `pool` (may be NULL for single-threaded). */
size_t cm_matmul_scratch_bytes(int w_type, int64_t n_cols, int64_t n_tokens);
void cm_matmul(cm_pool *pool, int w_type, const void *w, size_t w_row_bytes, int64_t n_rows, int64_t n_cols,
               const float *x, int64_t n_tokens, float *y, void *scratch);

/* The two halves of cm_matmul, for callers that run their own pool jobs (the
 * decode path fuses several matmuls and the element-wise work between them
 * into one job, and hands out rows to threads as they become free).
 *
 * cm_matmul_act_type: the type x is converted to for W (CM_TYPE_F32: none,
 * the rows of x are the activations as they are). cm_matmul_act_convert
 * converts n floats (a multiple of that type's block) to it; converting a
 * row piecewise, block-aligned, gives the same bytes as converting it whole.
 * cm_matmul_row_step: row ranges handed to cm_matmul_rows must start and end
 * on multiples of it (16 for a repacked layout, else 1).
 * cm_matmul_rows: y[t * n_rows + r] for r in [r0, r1) and every token, on
 * the calling thread; activation row t at act + t * act_row_bytes (act_row_bytes
 * = cm_matmul_scratch_bytes(w_type, n_cols, 1), or n_cols floats when the
 * activation type is f32). The results do not depend on how the rows are
 * split: a row's value is the same whichever range computes it. */
int cm_matmul_act_type(int w_type);
void cm_matmul_act_convert(int w_type, const float *x, int64_t n, void *act);
int64_t cm_matmul_row_step(int w_type);
/* Rows of a chunk handed to one thread at a time: about 256 KiB of weights,
 * a multiple of the row step and of `align` (>= 1). */
int64_t cm_matmul_chunk_rows(int w_type, int64_t n_cols, int64_t align);
void cm_matmul_rows(int w_type, const void *w, size_t w_row_bytes, int64_t n_rows, int64_t n_cols, const void *act,
                    size_t act_row_bytes, int64_t n_tokens, float *y, int64_t r0, int64_t r1);

#endif
