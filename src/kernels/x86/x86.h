/* x86.h - the x86 kernels of avx2.c and avx512.c, private to x86.c (which
 * registers them) and to the tests. Each function has the signature of a
 * cm_vec_dot_fn / cm_from_float_fn and computes what its _ref twin in
 * ref.c computes, within the per-type tolerance. A function may only be
 * called on a CPU that x86.c found to have its ISA: calling an avx512
 * kernel elsewhere is an illegal instruction. */
#ifndef CM_KERNELS_X86_X86_H
#define CM_KERNELS_X86_X86_H

#include <immintrin.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Whether this CPU and OS can run the avx2.c / avx512.c kernels (x86.c). */
int cm_x86_has_avx2(void);
int cm_x86_has_avx512_vnni(void);

#define CM_X86_DOTS(X, isa)      \
    X(f32_f32, isa)              \
    X(f16_f16, isa)              \
    X(bf16_bf16, isa)            \
    X(q4_0_q8_0, isa)            \
    X(q4_1_q8_1, isa)            \
    X(q5_0_q8_0, isa)            \
    X(q5_1_q8_1, isa)            \
    X(q8_0_q8_0, isa)            \
    X(q2_K_q8_K, isa)            \
    X(q3_K_q8_K, isa)            \
    X(q4_K_q8_K, isa)            \
    X(q5_K_q8_K, isa)            \
    X(q6_K_q8_K, isa)

#define CM_X86_DECLARE_DOT(t, isa) void cm_vec_dot_##t##_##isa(int n, float *s, const void *x, const void *y);
CM_X86_DOTS(CM_X86_DECLARE_DOT, avx2)
#undef CM_X86_DECLARE_DOT

void cm_quantize_q8_0_avx2(const float *x, void *y, int64_t n);
void cm_quantize_q8_1_avx2(const float *x, void *y, int64_t n);
void cm_quantize_q8_K_avx2(const float *x, void *y, int64_t n);
void cm_quantize_f16_avx2(const float *x, void *y, int64_t n);
void cm_dequantize_f16_avx2(const void *x, float *y, int64_t n);

/* AVX-512 F/BW/VL/DQ + VNNI. Types without an entry here keep the AVX2
 * kernel on such CPUs. */
void cm_vec_dot_f32_f32_avx512(int n, float *s, const void *x, const void *y);
void cm_vec_dot_f16_f16_avx512(int n, float *s, const void *x, const void *y);
void cm_vec_dot_bf16_bf16_avx512(int n, float *s, const void *x, const void *y);
void cm_vec_dot_q4_0_q8_0_avx512(int n, float *s, const void *x, const void *y);
void cm_vec_dot_q8_0_q8_0_avx512(int n, float *s, const void *x, const void *y);
void cm_vec_dot_q4_K_q8_K_avx512(int n, float *s, const void *x, const void *y);
void cm_vec_dot_q5_K_q8_K_avx512(int n, float *s, const void *x, const void *y);
void cm_vec_dot_q6_K_q8_K_avx512(int n, float *s, const void *x, const void *y);

/* Blocked matmul for many tokens (gemm_avx512.c, AVX-512 VNNI), for q4_0
 * and q8_0 weights against q8_0 activations:
 *   1. cm_gemm_act_info_avx512 once per matmul: info[t * n_blocks + i]
 *      holds block i of activation row t's scale as f32 and its quants'
 *      sum times -off (the weights' storage offset, which depends on type);
 *   2. per panel of up to CM_GEMM_ROWS weight rows: cm_gemm_pack_avx512
 *      into a cm_gemm_panel_bytes(n_cols) buffer (caller-owned, reused);
 *   3. per up to CM_GEMM_TOKENS activation rows: cm_gemm_q8_0_avx512 writes
 *      y[t * y_stride + r] = dot(weight row r, activation row t) for
 *      r < n_rows, t < n_tok. `info` points at row 0 of those tokens. */
#define CM_GEMM_ROWS 16
#define CM_GEMM_TOKENS 8
size_t cm_gemm_panel_bytes(int64_t n_cols);
void cm_gemm_pack_avx512(int type, const void *w, size_t w_row_bytes, int n_rows, int64_t n_cols, void *panel);
typedef struct cm_gemm_act_info {
    int32_t corr; /* -off * sum of the block's quants */
    float d;      /* the block's scale */
} cm_gemm_act_info;
void cm_gemm_act_info_avx512(int type, const void *act, size_t act_row_bytes, int n_tok, int64_t n_cols,
                             cm_gemm_act_info *info);
void cm_gemm_q8_0_avx512(int type, const void *panel, int n_rows, int64_t n_cols, const void *act,
                         size_t act_row_bytes, const cm_gemm_act_info *info, int n_tok, float *y, size_t y_stride);

/* q4_K and q6_K weights against q8_K activations, the same scheme per
 * 256-wide super-block (no activation sums needed: q8_K carries them). */
size_t cm_gemm_panel_bytes_k(int64_t n_cols);
void cm_gemm_pack_q4_K_avx512(const void *w, size_t w_row_bytes, int n_rows, int64_t n_cols, void *panel);
void cm_gemm_q4_K_avx512(const void *panel, int n_rows, int64_t n_cols, const void *act, size_t act_row_bytes,
                         int n_tok, float *y, size_t y_stride);
size_t cm_gemm_panel_bytes_k6(int64_t n_cols);
void cm_gemm_pack_q6_K_avx512(const void *w, size_t w_row_bytes, int n_rows, int64_t n_cols, void *panel);
void cm_gemm_q6_K_avx512(const void *panel, int n_rows, int64_t n_cols, const void *act, size_t act_row_bytes,
                         int n_tok, float *y, size_t y_stride);

/* The hook for cm_matmul (x86.c): output rows [r0, r1) of every token with
 * the blocked kernel, from activations already quantized to q8_0 (`act`,
 * rows act_row_bytes apart); y[t * y_row_stride + r]. Returns false, doing
 * nothing, when no blocked kernel applies (type, CPU, CELLM_KERNELS cap,
 * fewer tokens than cm_gemm_x86_min_tokens, below which the per-row dots
 * are faster) or a per-thread buffer cannot grow; the caller then uses
 * vec_dot. Callable from every pool thread at once. */
int cm_gemm_x86_min_tokens(int w_type); /* 0: no blocked kernel for the type */
bool cm_gemm_x86_applies(int w_type, int64_t n_tokens);
bool cm_gemm_x86(int w_type, const void *w, size_t w_row_bytes, int64_t r0, int64_t r1, int64_t n_cols,
                 const void *act, size_t act_row_bytes, int64_t n_tokens, float *y, int64_t y_row_stride);

/* Decode (one or two tokens) reads each weight byte once, and the kernels
 * spend enough instructions per cache line that the out-of-order window
 * alone keeps too few lines in flight to saturate memory from one core:
 * the repacked kernels touch the lines CM_X86_PF_AHEAD bytes further along
 * their stream as they go (a thread's rows are contiguous, so the lines
 * ahead are its own next ones). Measured by bench_kernels and cellm bench;
 * see docs/performance.md. */
#ifndef CM_X86_PF_AHEAD
#define CM_X86_PF_AHEAD 4096
#endif
#ifndef CM_X86_PF_HINT
#define CM_X86_PF_HINT _MM_HINT_T0
#endif
/* The lines of [p + AHEAD, p + AHEAD + bytes): called per column or tile
 * as the kernel reaches p, with `bytes` a constant. Inlined and unrolled:
 * as a plain loop, gcc 12 deleted it from the kernels as a loop without
 * side effects (no prefetch instruction was left in the objects; `objdump
 * -d repack_avx512.c.o | grep -c prefetch` checks). */
__attribute__((always_inline)) static inline void cm_x86_prefetch_ahead(const void *p, const int bytes) {
    const char *q = (const char *)p + CM_X86_PF_AHEAD;
    _Pragma("GCC unroll 64") for (int o = 0; o < bytes; o += 64) _mm_prefetch(q + o, CM_X86_PF_HINT);
}

/* Repacked (row-interleaved) layouts of repack.h with AVX-512 VNNI
 * kernels: the ops for src_type, or NULL. Call only when
 * cm_x86_has_avx512_vnni(). repack_avx512.c: q4_0, q8_0;
 * repack_k_avx512.c: q4_K, q5_K, q6_K. */
struct cm_repack_ops;
const struct cm_repack_ops *cm_repack_q_avx512(int src_type);
const struct cm_repack_ops *cm_repack_k_avx512(int src_type);

/* The same layouts (same type ids, same pack / unpack_row) with AVX2 + FMA +
 * F16C kernels (repack_avx2.c): the ops for src_type, or NULL. Call only
 * when cm_x86_has_avx2(). cm_repack_q_avx2: q4_0, q8_0; cm_repack_k_avx2:
 * q4_K, q5_K, q6_K. */
const struct cm_repack_ops *cm_repack_q_avx2(int src_type);
const struct cm_repack_ops *cm_repack_k_avx2(int src_type);

#endif
