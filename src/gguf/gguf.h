/* gguf.h - GGUF files (v2 and v3): a bounds-checked reader over mmap and a
 * writer.
 *
 * File layout (little endian):
 *   u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv x { string key | u32 type | value }
 *   n_tensors x { string name | u32 n_dims | u64 dims[n_dims] | u32 ggml_type | u64 offset }
 *   padding to general.alignment (default 32) | tensor data
 * string = u64 len | bytes (not NUL terminated); array = u32 elem_type | u64 n | elems.
 *
 * The reader checks every length, count, offset, type and dimension against
 * the file before using it; a malformed file gives CM_EFORMAT with a message
 * (cm_last_error) that names the file, the field and the byte offset. After a
 * successful open every accessor below is safe: strings are copied out
 * NUL-terminated and tensor data is known to lie inside the mapping. */
#ifndef CM_GGUF_GGUF_H
#define CM_GGUF_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum cm_gguf_type {
    CM_GGUF_UINT8 = 0,
    CM_GGUF_INT8 = 1,
    CM_GGUF_UINT16 = 2,
    CM_GGUF_INT16 = 3,
    CM_GGUF_UINT32 = 4,
    CM_GGUF_INT32 = 5,
    CM_GGUF_FLOAT32 = 6,
    CM_GGUF_BOOL = 7,
    CM_GGUF_STRING = 8,
    CM_GGUF_ARRAY = 9,
    CM_GGUF_UINT64 = 10,
    CM_GGUF_INT64 = 11,
    CM_GGUF_FLOAT64 = 12,
    CM_GGUF_TYPE_COUNT
};

#define CM_GGUF_MAX_DIMS 4

typedef struct cm_gguf cm_gguf;

typedef struct cm_gguf_tensor {
    const char *name;                /* NUL-terminated, owned by the cm_gguf */
    int type;                        /* ggml type id (enum cm_type in kernels/types.h) */
    int n_dims;                      /* 1..4 */
    int64_t ne[CM_GGUF_MAX_DIMS];    /* ne[0] is the contiguous (row) dimension; unused dims are 1 */
    uint64_t offset;                 /* from the start of the data section */
    uint64_t n_bytes;                /* size of its data */
    const void *data;                /* inside the mapping */
} cm_gguf_tensor;

/* Opens and validates `path`. Tensor types are checked with the supplied
 * callback-free rule: known ggml type ids with a known block size (see
 * kernels/types.h mirrored here as a table), anything else is CM_EFORMAT
 * naming the tensor. On failure *out is NULL. */
int cm_gguf_open(const char *path, cm_gguf **out);
/* Same, over a caller-owned buffer (used by the fuzz target and tests); the
 * buffer must outlive the cm_gguf. `name` is used in messages. */
int cm_gguf_open_memory(const void *data, size_t n_bytes, const char *name, cm_gguf **out);
void cm_gguf_close(cm_gguf *g);

const char *cm_gguf_path(const cm_gguf *g);
uint32_t cm_gguf_version(const cm_gguf *g);
uint64_t cm_gguf_file_bytes(const cm_gguf *g);
uint32_t cm_gguf_alignment(const cm_gguf *g);

/* ---- key/value metadata ---- */
int64_t cm_gguf_n_kv(const cm_gguf *g);
const char *cm_gguf_kv_key(const cm_gguf *g, int64_t i);
int cm_gguf_kv_type(const cm_gguf *g, int64_t i);      /* enum cm_gguf_type */
int64_t cm_gguf_find_kv(const cm_gguf *g, const char *key); /* -1 if absent */

/* Typed getters: return CM_ENOTFOUND if the key is absent, CM_EFORMAT (with a
 * message naming key and types) if it has an incompatible type. Integer
 * getters accept any integer type whose value fits; get_f32 accepts f32/f64. */
int cm_gguf_get_u32(const cm_gguf *g, const char *key, uint32_t *out);
int cm_gguf_get_i64(const cm_gguf *g, const char *key, int64_t *out);
int cm_gguf_get_f32(const cm_gguf *g, const char *key, float *out);
int cm_gguf_get_bool(const cm_gguf *g, const char *key, bool *out);
/* The string is owned by g and NUL-terminated; *len excludes the NUL (may be NULL). */
int cm_gguf_get_str(const cm_gguf *g, const char *key, const char **out, size_t *len);

/* Arrays: element type and count; then element access. Strings in arrays are
 * owned by g and NUL-terminated (an embedded NUL in a token is kept; use the
 * length). Numeric elements of an array are read with get_arr_data, which
 * gives a pointer to the packed little-endian elements inside the mapping
 * (possibly unaligned: copy with memcpy). */
int cm_gguf_get_arr_info(const cm_gguf *g, const char *key, int *elem_type, uint64_t *n);
int cm_gguf_get_arr_str(const cm_gguf *g, const char *key, uint64_t i, const char **out, size_t *len);
int cm_gguf_get_arr_data(const cm_gguf *g, const char *key, const void **data, uint64_t *n);

/* ---- tensors ---- */
int64_t cm_gguf_n_tensors(const cm_gguf *g);
const cm_gguf_tensor *cm_gguf_tensor_at(const cm_gguf *g, int64_t i);
const cm_gguf_tensor *cm_gguf_find_tensor(const cm_gguf *g, const char *name); /* NULL if absent */

/* ---- writer ----
 * Collects metadata and tensor descriptions, then streams the file: header,
 * metadata, tensor infos, then each tensor's data through a callback so that
 * a multi-GiB model is never held in memory at once. */
typedef struct cm_gguf_writer cm_gguf_writer;

int cm_gguf_writer_create(cm_gguf_writer **out);
void cm_gguf_writer_destroy(cm_gguf_writer *w);
int cm_gguf_writer_set_u32(cm_gguf_writer *w, const char *key, uint32_t v);
int cm_gguf_writer_set_i32(cm_gguf_writer *w, const char *key, int32_t v);
int cm_gguf_writer_set_u64(cm_gguf_writer *w, const char *key, uint64_t v);
int cm_gguf_writer_set_f32(cm_gguf_writer *w, const char *key, float v);
int cm_gguf_writer_set_bool(cm_gguf_writer *w, const char *key, bool v);
int cm_gguf_writer_set_str(cm_gguf_writer *w, const char *key, const char *v);
/* Numeric array: `data` holds n packed elements of elem_type (copied). */
int cm_gguf_writer_set_arr(cm_gguf_writer *w, const char *key, int elem_type, const void *data, uint64_t n);
/* String array: strs[i] has lens[i] bytes (copied). */
int cm_gguf_writer_set_arr_str(cm_gguf_writer *w, const char *key, const char *const *strs,
                               const size_t *lens, uint64_t n);
/* Copies key i of an opened file (any type, arrays included). */
int cm_gguf_writer_copy_kv(cm_gguf_writer *w, const cm_gguf *src, int64_t i);

/* Declares a tensor; its data is produced later by the fill callback. */
int cm_gguf_writer_add_tensor(cm_gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne);

/* fill(user, tensor_index, name, buf, n_bytes) must write exactly n_bytes of
 * the tensor's data into buf; it returns CM_OK or an error that aborts the write. */
typedef int (*cm_gguf_fill_fn)(void *user, int64_t i, const char *name, void *buf, uint64_t n_bytes);
int cm_gguf_writer_write(cm_gguf_writer *w, const char *path, cm_gguf_fill_fn fill, void *user);

#endif
