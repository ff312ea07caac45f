/* ref.h - the portable reference kernels (ref.c), one per type and
 * operation. They are the oracle the tests hold every SIMD kernel to, and
 * the fallback on CPUs without one. Signatures are those of the
 * cm_to_float_fn / cm_from_float_fn / cm_vec_dot_fn pointers of kernels.h;
 * n is always a multiple of the type's block size.
 *
 * Rounding follows ggml so that activations quantize to the same bytes as
 * llama.cpp: q8_0/q8_1 round half away from zero (roundf), q8_K rounds half
 * to even; the 32-wide weight quantizers use ggml's max-abs (q4_0, q5_0,
 * q8_0) or min/max (q4_1, q5_1) formulas. The K weight quantizers are
 * simpler than ggml's search (per-sub-block fit, scales quantized to their
 * stored width) and give slightly larger error; their bytes decode with the
 * same formulas. */
#ifndef CM_KERNELS_REF_H
#define CM_KERNELS_REF_H

#include <stdint.h>

#define CM_REF_TYPES(X) \
    X(q4_0) X(q4_1) X(q5_0) X(q5_1) X(q8_0) X(q8_1) X(q2_K) X(q3_K) X(q4_K) X(q5_K) X(q6_K) X(q8_K) X(f32) X(f16) X(bf16)

#define CM_REF_DECLARE(t)                                                    \
    void cm_dequantize_##t##_ref(const void *x, float *y, int64_t n);        \
    void cm_quantize_##t##_ref(const float *x, void *y, int64_t n);
CM_REF_TYPES(CM_REF_DECLARE)
#undef CM_REF_DECLARE

void cm_vec_dot_f32_f32_ref(int n, float *s, const void *x, const void *y);
void cm_vec_dot_f16_f16_ref(int n, float *s, const void *x, const void *y);
void cm_vec_dot_bf16_bf16_ref(int n, float *s, const void *x, const void *y);
void cm_vec_dot_q4_0_q8_0_ref(int n, float *s, const void *x, const void *y);
void cm_vec_dot_q4_1_q8_1_ref(int n, float *s, const void *x, const void *y);
void cm_vec_dot_q5_0_q8_0_ref(int n, float *s, const void *x, const void *y);
void cm_vec_dot_q5_1_q8_1_ref(int n, float *s, const void *x, const void *y);
void cm_vec_dot_q8_0_q8_0_ref(int n, float *s, const void *x, const void *y);
void cm_vec_dot_q2_K_q8_K_ref(int n, float *s, const void *x, const void *y);
void cm_vec_dot_q3_K_q8_K_ref(int n, float *s, const void *x, const void *y);
void cm_vec_dot_q4_K_q8_K_ref(int n, float *s, const void *x, const void *y);
void cm_vec_dot_q5_K_q8_K_ref(int n, float *s, const void *x, const void *y);
void cm_vec_dot_q6_K_q8_K_ref(int n, float *s, const void *x, const void *y);

#endif
