/* arm.h - the AArch64 kernels of neon.c (plain ARMv8 NEON) and
 * neon_dotprod.c (the same kernels with the ARMv8.2 SDOT instruction),
 * private to arm.c (which registers them) and to the tests. Each function
 * computes what its _ref twin in ref.c computes, within the per-type
 * tolerance. The _dotprod ones may only run on a CPU that arm.c found to
 * have the dot-product extension. */
#ifndef CM_KERNELS_ARM_ARM_H
#define CM_KERNELS_ARM_ARM_H

#include <stdint.h>

#define CM_ARM_DECLARE_INT_DOTS(isa)                                                     \
    void cm_vec_dot_q4_0_q8_0_##isa(int n, float *s, const void *x, const void *y);     \
    void cm_vec_dot_q8_0_q8_0_##isa(int n, float *s, const void *x, const void *y);     \
    void cm_vec_dot_q4_K_q8_K_##isa(int n, float *s, const void *x, const void *y);     \
    void cm_vec_dot_q6_K_q8_K_##isa(int n, float *s, const void *x, const void *y);     \
    void cm_vec_dot_q4_1_q8_1_##isa(int n, float *s, const void *x, const void *y);     \
    void cm_vec_dot_q5_0_q8_0_##isa(int n, float *s, const void *x, const void *y);     \
    void cm_vec_dot_q5_1_q8_1_##isa(int n, float *s, const void *x, const void *y);     \
    void cm_vec_dot_q2_K_q8_K_##isa(int n, float *s, const void *x, const void *y);     \
    void cm_vec_dot_q3_K_q8_K_##isa(int n, float *s, const void *x, const void *y);     \
    void cm_vec_dot_q5_K_q8_K_##isa(int n, float *s, const void *x, const void *y);
CM_ARM_DECLARE_INT_DOTS(neon)
CM_ARM_DECLARE_INT_DOTS(dotprod)
#undef CM_ARM_DECLARE_INT_DOTS

void cm_vec_dot_f32_f32_neon(int n, float *s, const void *x, const void *y);
void cm_vec_dot_f16_f16_neon(int n, float *s, const void *x, const void *y);
void cm_vec_dot_bf16_bf16_neon(int n, float *s, const void *x, const void *y);
void cm_quantize_q8_1_neon(const float *x, void *y, int64_t n);
void cm_quantize_q8_0_neon(const float *x, void *y, int64_t n);
void cm_quantize_q8_K_neon(const float *x, void *y, int64_t n);

/* Whether this CPU has the dot-product extension (arm.c). */
int cm_arm_has_dotprod(void);

#endif
