/* repack_avx512.c - the repacked layouts of repack.h for q4_0 and q8_0 with
 * AVX-512 VNNI kernels. No layout is offered yet: every lookup answers
 * NULL, so such weights keep their file layout. */
#include <stddef.h>

#include "kernels/repack.h"
#include "kernels/x86/x86.h"

const struct cm_repack_ops *cm_repack_q_avx512(int src_type) {
    (void)src_type;
    return NULL;
}

