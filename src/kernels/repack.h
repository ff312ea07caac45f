/* repack.h - weight matrices rearranged once at load time into a
 * row-interleaved layout that SIMD kernels read without per-row bookkeeping.
 *
 * In a file's layout each row is a run of blocks, so a dot product per row
 * spends most of its instructions gathering that row's block scales and
 * unpacking its quants one block at a time. A repacked matrix stores
 * CM_REPACK_ROWS rows side by side instead: for each block column, the
 * group's scales together, then the quants in 4-byte groups, one group per
 * row, so that one 512-bit load holds the same 4 weight bytes of 16 rows (one
 * int32 lane per row) and one VPDPBUSD against 4 broadcast activation bytes
 * advances 16 dot products at once (AVX2 reads the same line as two
 * 256-bit loads of 8 rows each, with VPMADDUBSW + VPMADDWD in place of
 * VPDPBUSD: x86/repack_avx2.c). Every kernel for a repacked type is a
 * matrix multiply: matrix-vector (decode) is the one-token case. The
 * layouts' bytes / pack / unpack_row are the same whichever kernels read
 * them (x86/repack_layout.c, compiled for the baseline target).
 *
 * Repacked types have ids of their own (CM_TYPE_*_R16 below): never found in
 * a file and never accepted from one; only cm_repack_find hands them out.
 * A repacked matrix replaces the file's copy (the caller releases the mmap'd
 * pages), so weights are resident once.
 *
 * Invariants:
 *   - n_rows is a multiple of CM_REPACK_ROWS and n_cols a multiple of the
 *     source type's block size (cm_repack_find's callers check n_rows; a
 *     matrix that does not qualify keeps its file layout);
 *   - the activations a repacked kernel reads are rows of the source type's
 *     vec_dot type (q8_0 for q4_0/q8_0, q8_K for the K formats), quantized
 *     by cm_matmul as for the file layout;
 *   - results equal the reference dot products up to float summation order
 *     (integer sums are exact). */
#ifndef CM_KERNELS_REPACK_H
#define CM_KERNELS_REPACK_H

#include <stddef.h>
#include <stdint.h>

#define CM_REPACK_ROWS 16

/* Internal type ids (above every GGUF id in gguf/types.h, below
 * CM_TYPE_COUNT so tables indexed by type still fit). */
enum {
    CM_TYPE_Q4_0_R16 = 32,
    CM_TYPE_Q8_0_R16 = 33,
    CM_TYPE_Q4_K_R16 = 34,
    CM_TYPE_Q6_K_R16 = 35,
    CM_TYPE_Q5_K_R16 = 36,
};

typedef struct cm_repack_ops {
    int type;     /* the repacked type id */
    int src_type; /* the file type it is made from */
    const char *name;
    /* Bytes of an n_rows x n_cols matrix in the repacked layout. */
    size_t (*bytes)(int64_t n_rows, int64_t n_cols);
    /* Rearranges rows [0, n_rows) of `src` (rows src_row_bytes apart) into
     * `dst` (bytes(n_rows, n_cols) of them). Never fails. */
    void (*pack)(const void *src, size_t src_row_bytes, int64_t n_rows, int64_t n_cols, void *dst);
    /* y[t * y_stride + r] = dot(row r of w, activation row t) for r in
     * [r0, r1) (both multiples of CM_REPACK_ROWS) and t in [0, n_tokens);
     * activation row t starts at act + t * act_row_bytes. No allocation. */
    void (*matmul)(const void *w, int64_t n_cols, int64_t r0, int64_t r1, const void *act, size_t act_row_bytes,
                   int64_t n_tokens, float *y, int64_t y_stride);
    /* Row r of w back in the source type's file layout (tests, and any
     * caller that needs one row's values). */
    void (*unpack_row)(const void *w, int64_t n_cols, int64_t r, void *dst_row);
} cm_repack_ops;

/* The repacked layout the selected kernels have for `src_type`, or NULL
 * (no such kernels on this CPU, CELLM_KERNELS=ref, or CELLM_REPACK=off in
 * the environment). Valid after cm_kernels_init. */
const cm_repack_ops *cm_repack_find(int src_type);
/* The ops of a repacked type id, or NULL. */
const cm_repack_ops *cm_repack_ops_of(int repacked_type);

#endif
