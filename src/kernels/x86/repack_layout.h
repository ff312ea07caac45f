/* repack_layout.h - the byte layouts of the repacked types of repack.h
 * (CM_TYPE_*_R16), shared by the kernels that read them: AVX-512 VNNI
 * (repack_avx512.c, repack_k_avx512.c) and AVX2 (repack_avx2.c).
 *
 * The layouts themselves are described at the top of repack_avx512.c (q4_0,
 * q8_0) and repack_k_avx512.c (q4_K, q6_K, q5_K). Their bytes / pack /
 * unpack_row functions live in repack_layout.c, which is compiled for the
 * baseline x86-64 target: packing runs on any CPU, whichever kernels then
 * read the result, so no ISA-specific file may hold it (the compiler is
 * free to vectorize plain C with every instruction its flags allow).
 *
 * Private to the x86 repack files; the offset macros keep the short names
 * the kernels were written with. */
#ifndef CM_KERNELS_X86_REPACK_LAYOUT_H
#define CM_KERNELS_X86_REPACK_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/quants.h"
#include "kernels/repack.h"

/* q4_0 / q8_0 columns: f16 d[16], then 4 (q4_0) or 8 (q8_0) 64-byte lines */
#define Q4_COL (2 * CM_REPACK_ROWS + 4 * 64)
#define Q8_COL (2 * CM_REPACK_ROWS + 8 * 64)

/* q4_K tile */
#define K4_D 0
#define K4_DMIN (K4_D + 2 * CM_REPACK_ROWS)
#define K4_SC (K4_DMIN + 2 * CM_REPACK_ROWS)
#define K4_MN (K4_SC + 8 * CM_REPACK_ROWS)
#define K4_QS (K4_MN + 8 * CM_REPACK_ROWS)
#define K4_TILE (K4_QS + 128 * CM_REPACK_ROWS)

/* q6_K tile */
#define K6_D 0
#define K6_SC (K6_D + 2 * CM_REPACK_ROWS)
#define K6_QL (K6_SC + 16 * CM_REPACK_ROWS)
#define K6_QH (K6_QL + 128 * CM_REPACK_ROWS)
#define K6_TILE (K6_QH + 64 * CM_REPACK_ROWS)

/* Byte offsets in a q6_K tile of ql[64h + 32c + 4g] and qh[32h + 4g] for
 * row r. */
static inline size_t k6_ql_at(int h, int c, int g, int r) {
    return K6_QL + (size_t)((((h * 2 + c) * 8 + g) * CM_REPACK_ROWS + r) * 4);
}
static inline size_t k6_qh_at(int h, int g, int r) { return K6_QH + (size_t)(((h * 8 + g) * CM_REPACK_ROWS + r) * 4); }

/* q5_K tile: the q4_K tile with u8 qh[8][16][4] between mn and qs */
#define K5_D 0
#define K5_DMIN (K5_D + 2 * CM_REPACK_ROWS)
#define K5_SC (K5_DMIN + 2 * CM_REPACK_ROWS)
#define K5_MN (K5_SC + 8 * CM_REPACK_ROWS)
#define K5_QH (K5_MN + 8 * CM_REPACK_ROWS)
#define K5_QS (K5_QH + 32 * CM_REPACK_ROWS)
#define K5_TILE (K5_QS + 128 * CM_REPACK_ROWS)

/* `static const cm_repack_ops t_ops`: layout t (source type CM_TYPE_T,
 * repacked id CM_TYPE_T_R16) with the including file's t_matmul and the
 * shared bytes / pack / unpack_row below. */
#define CM_REPACK_OPS(t, T)                                                                                      \
    static const cm_repack_ops t##_ops = {.type = CM_TYPE_##T##_R16,                                            \
                                          .src_type = CM_TYPE_##T,                                              \
                                          .name = #t "_r16",                                                    \
                                          .bytes = cm_repack_##t##_bytes,                                       \
                                          .pack = cm_repack_##t##_pack,                                         \
                                          .matmul = t##_matmul,                                                 \
                                          .unpack_row = cm_repack_##t##_unpack_row}

/* bytes / pack / unpack_row of cm_repack_ops for each layout */
#define CM_REPACK_LAYOUT_DECLARE(t)                                                                             \
    size_t cm_repack_##t##_bytes(int64_t n_rows, int64_t n_cols);                                            \
    void cm_repack_##t##_pack(const void *src, size_t src_row_bytes, int64_t n_rows, int64_t n_cols, void *dst); \
    void cm_repack_##t##_unpack_row(const void *w, int64_t n_cols, int64_t row, void *dst_row);
CM_REPACK_LAYOUT_DECLARE(q4_0)
CM_REPACK_LAYOUT_DECLARE(q8_0)
CM_REPACK_LAYOUT_DECLARE(q4_K)
CM_REPACK_LAYOUT_DECLARE(q6_K)
CM_REPACK_LAYOUT_DECLARE(q5_K)
#undef CM_REPACK_LAYOUT_DECLARE

#endif
