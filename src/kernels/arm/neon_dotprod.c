/* neon_dotprod.c - the integer dots of neon_impl.h with SDOT (ARMv8.2 dot
 * product: four int8 products summed into each i32 lane in one
 * instruction). Compiled with -march=armv8.2-a+dotprod+fp16 (CMakeLists.txt
 * matches "dotprod" in the name); arm.c registers these only on CPUs that
 * report the extension. */
#define CM_ARM_ISA dotprod
#define DOT16(acc, a, b) vdotq_s32((acc), (a), (b))
#include "kernels/arm/neon_impl.h"
