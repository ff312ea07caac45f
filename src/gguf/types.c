/* types.c - block geometry of the ggml tensor types. */
#include "gguf/types.h"

#include <strings.h>

struct type_geom {
    const char *name;
    int block_elems;
    size_t block_bytes;
};

static const struct type_geom g_types[CM_TYPE_COUNT] = {
    [CM_TYPE_F32] = {"f32", 1, 4},
    [CM_TYPE_F16] = {"f16", 1, 2},
    [CM_TYPE_BF16] = {"bf16", 1, 2},
    [CM_TYPE_Q4_0] = {"q4_0", 32, 2 + 16},
    [CM_TYPE_Q4_1] = {"q4_1", 32, 2 + 2 + 16},
    [CM_TYPE_Q5_0] = {"q5_0", 32, 2 + 4 + 16},
    [CM_TYPE_Q5_1] = {"q5_1", 32, 2 + 2 + 4 + 16},
    [CM_TYPE_Q8_0] = {"q8_0", 32, 2 + 32},
    [CM_TYPE_Q8_1] = {"q8_1", 32, 4 + 32},
    [CM_TYPE_Q2_K] = {"q2_K", 256, 16 + 64 + 2 + 2},
    [CM_TYPE_Q3_K] = {"q3_K", 256, 32 + 64 + 12 + 2},
    [CM_TYPE_Q4_K] = {"q4_K", 256, 2 + 2 + 12 + 128},
    [CM_TYPE_Q5_K] = {"q5_K", 256, 2 + 2 + 12 + 32 + 128},
    [CM_TYPE_Q6_K] = {"q6_K", 256, 128 + 64 + 16 + 2},
    [CM_TYPE_Q8_K] = {"q8_K", 256, 4 + 256 + 32},
};

int cm_type_block_elems(int type) {
    return type >= 0 && type < CM_TYPE_COUNT ? g_types[type].block_elems : 0;
}

size_t cm_type_block_bytes(int type) {
    return type >= 0 && type < CM_TYPE_COUNT ? g_types[type].block_bytes : 0;
}

const char *cm_type_name(int type) {
    return type >= 0 && type < CM_TYPE_COUNT ? g_types[type].name : NULL;
}

int cm_type_from_name(const char *name) {
    for (int t = 0; t < CM_TYPE_COUNT; t++)
        if (g_types[t].name && !strcasecmp(g_types[t].name, name)) return t;
    return -1;
}

size_t cm_type_row_bytes(int type, int64_t n) {
    return (size_t)(n / cm_type_block_elems(type)) * cm_type_block_bytes(type);
}
