/* simd.h - the meeting point between the dispatcher (kernels.c) and the
 * per-architecture kernels (x86/, arm/).
 *
 * At start-up cm_kernels_init() fills a table indexed by cm_type id
 * (n_types == CM_TYPE_COUNT) with the reference traits, then, unless the
 * reference is forced, hands it to the registration function of the build's
 * architecture. That function detects the CPU's features itself (cpuid,
 * getauxval/sysctl) and may replace any entry's vec_dot, from_float or
 * to_float with a faster one that computes the same thing (within the
 * per-type tolerance the tests check against the reference). It must not
 * change name, block geometry or vec_dot_type, and must skip entries whose
 * name is NULL (types the kernels do not support). It runs once, on one
 * thread, before any kernel is used.
 *
 * Where the definitions live (kernels.c looks for these files with
 * __has_include and calls the function only when the file is present, so
 * the build works before they exist; a weak symbol would not do, because a
 * weak reference does not pull an object out of a static library):
 *   src/kernels/x86/x86.c   cm_kernels_register_x86, cm_kernels_x86_name
 *                           (compiled without ISA flags; it calls into the
 *                           *avx2*.c / *avx512*.c files only after checking
 *                           the CPU has those features)
 *   src/kernels/arm/arm.c   cm_kernels_register_arm, cm_kernels_arm_name
 *
 * The name function returns what registration chose ("avx2",
 * "avx512-vnni", "neon-dotprod", ...), or NULL when it replaced nothing
 * (the dispatcher then reports "ref"). Valid after registration. */
#ifndef CM_KERNELS_SIMD_H
#define CM_KERNELS_SIMD_H

#include "kernels/kernels.h"

#if defined(CM_HAVE_X86)
void cm_kernels_register_x86(cm_type_traits *table, int n_types);
const char *cm_kernels_x86_name(void);
#endif

#if defined(CM_HAVE_ARM)
void cm_kernels_register_arm(cm_type_traits *table, int n_types);
const char *cm_kernels_arm_name(void);
#endif

#endif
