/* arm.c - chooses the AArch64 kernels for this CPU and puts them in the
 * traits table (see kernels/simd.h for the contract).
 *
 * NEON is part of every AArch64 CPU, so neon.c's kernels always apply. The
 * dot-product extension (SDOT) is optional before ARMv8.4: Linux reports it
 * as HWCAP_ASIMDDP in the auxiliary vector, macOS as the sysctl
 * hw.optional.arm.FEAT_DotProd (every Apple silicon chip has it).
 * CELLM_KERNELS=neon keeps the plain NEON kernels even where SDOT exists
 * (to test them); CELLM_KERNELS=ref is handled by the dispatcher. A kernel
 * replaces an entry only when the entry's vec_dot_type is the activation
 * type the kernel was written for. */
#include <stdlib.h>
#include <string.h>

#if defined(__linux__)
#include <sys/auxv.h>
#endif
#if defined(__APPLE__)
#include <sys/sysctl.h>
#include <sys/types.h>
#endif

#include "base/log.h"
#include "kernels/arm/arm.h"
#include "kernels/simd.h"

#if defined(__linux__) && !defined(HWCAP_ASIMDDP)
#define HWCAP_ASIMDDP (1 << 20)
#endif

static const char *chosen;

const char *cm_kernels_arm_name(void) { return chosen; }

int cm_arm_has_dotprod(void) {
#if defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
    int v = 0;
    size_t len = sizeof v;
    if (sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &len, NULL, 0) != 0) return 0;
    return v != 0;
#else
    return 0;
#endif
}

static void set_dot(cm_type_traits *table, int n_types, int type, int act_type, cm_vec_dot_fn fn) {
    if (type >= n_types || !table[type].name || !table[type].vec_dot) return;
    if (table[type].vec_dot_type != act_type) return;
    table[type].vec_dot = fn;
}

static void set_from_float(cm_type_traits *table, int n_types, int type, cm_from_float_fn fn) {
    if (type >= n_types || !table[type].name) return;
    table[type].from_float = fn;
}

void cm_kernels_register_arm(cm_type_traits *t, int n) {
    const char *want = getenv("CELLM_KERNELS");
    int cap_neon = want && !strcmp(want, "neon");
    if (want && *want && !cap_neon && strcmp(want, "ref") && strcmp(want, "auto") && strcmp(want, "neon-dotprod"))
        CM_LOGW("CELLM_KERNELS=%s is not one of ref, neon, neon-dotprod, auto: choosing from the CPU", want);
    set_dot(t, n, CM_TYPE_F32, CM_TYPE_F32, cm_vec_dot_f32_f32_neon);
    set_dot(t, n, CM_TYPE_F16, CM_TYPE_F16, cm_vec_dot_f16_f16_neon);
    set_dot(t, n, CM_TYPE_Q4_0, CM_TYPE_Q8_0, cm_vec_dot_q4_0_q8_0_neon);
    set_dot(t, n, CM_TYPE_Q8_0, CM_TYPE_Q8_0, cm_vec_dot_q8_0_q8_0_neon);
    set_dot(t, n, CM_TYPE_Q4_K, CM_TYPE_Q8_K, cm_vec_dot_q4_K_q8_K_neon);
    set_dot(t, n, CM_TYPE_Q6_K, CM_TYPE_Q8_K, cm_vec_dot_q6_K_q8_K_neon);
    set_dot(t, n, CM_TYPE_BF16, CM_TYPE_BF16, cm_vec_dot_bf16_bf16_neon);
    set_dot(t, n, CM_TYPE_Q4_1, CM_TYPE_Q8_1, cm_vec_dot_q4_1_q8_1_neon);
    set_dot(t, n, CM_TYPE_Q5_0, CM_TYPE_Q8_0, cm_vec_dot_q5_0_q8_0_neon);
    set_dot(t, n, CM_TYPE_Q5_1, CM_TYPE_Q8_1, cm_vec_dot_q5_1_q8_1_neon);
    set_dot(t, n, CM_TYPE_Q2_K, CM_TYPE_Q8_K, cm_vec_dot_q2_K_q8_K_neon);
    set_dot(t, n, CM_TYPE_Q3_K, CM_TYPE_Q8_K, cm_vec_dot_q3_K_q8_K_neon);
    set_dot(t, n, CM_TYPE_Q5_K, CM_TYPE_Q8_K, cm_vec_dot_q5_K_q8_K_neon);
    set_from_float(t, n, CM_TYPE_Q8_0, cm_quantize_q8_0_neon);
    set_from_float(t, n, CM_TYPE_Q8_1, cm_quantize_q8_1_neon);
    set_from_float(t, n, CM_TYPE_Q8_K, cm_quantize_q8_K_neon);
    chosen = "neon";
    if (cap_neon || !cm_arm_has_dotprod()) return;
    set_dot(t, n, CM_TYPE_Q4_0, CM_TYPE_Q8_0, cm_vec_dot_q4_0_q8_0_dotprod);
    set_dot(t, n, CM_TYPE_Q8_0, CM_TYPE_Q8_0, cm_vec_dot_q8_0_q8_0_dotprod);
    set_dot(t, n, CM_TYPE_Q4_K, CM_TYPE_Q8_K, cm_vec_dot_q4_K_q8_K_dotprod);
    set_dot(t, n, CM_TYPE_Q6_K, CM_TYPE_Q8_K, cm_vec_dot_q6_K_q8_K_dotprod);
    set_dot(t, n, CM_TYPE_Q4_1, CM_TYPE_Q8_1, cm_vec_dot_q4_1_q8_1_dotprod);
    set_dot(t, n, CM_TYPE_Q5_0, CM_TYPE_Q8_0, cm_vec_dot_q5_0_q8_0_dotprod);
    set_dot(t, n, CM_TYPE_Q5_1, CM_TYPE_Q8_1, cm_vec_dot_q5_1_q8_1_dotprod);
    set_dot(t, n, CM_TYPE_Q2_K, CM_TYPE_Q8_K, cm_vec_dot_q2_K_q8_K_dotprod);
    set_dot(t, n, CM_TYPE_Q3_K, CM_TYPE_Q8_K, cm_vec_dot_q3_K_q8_K_dotprod);
    set_dot(t, n, CM_TYPE_Q5_K, CM_TYPE_Q8_K, cm_vec_dot_q5_K_q8_K_dotprod);
    chosen = "neon-dotprod";
}
