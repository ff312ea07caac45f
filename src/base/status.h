/* status.h - the one status enum of cellm, its messages, and the per-thread
 * detail message that says what exactly went wrong.
 *
 * Fallible functions return int: CM_OK (0) or a negative CM_E* value. Where the
 * code alone is not enough (a file, a field, a byte offset), the failing
 * function records a sentence with cm_errorf(); the caller that reports to the
 * user prints cm_last_error(). */
#ifndef CM_BASE_STATUS_H
#define CM_BASE_STATUS_H

#include <stdarg.h>

/* X(name, value, message) */
#define CM_STATUS_MAP(X)                                              \
    X(CM_OK, 0, "ok")                                                 \
    X(CM_EINVAL, -1, "invalid argument")                              \
    X(CM_ENOMEM, -2, "out of memory")                                 \
    X(CM_EIO, -3, "input/output error")                               \
    X(CM_EFORMAT, -4, "malformed input")                              \
    X(CM_EUNSUPPORTED, -5, "not supported")                           \
    X(CM_ERANGE, -6, "value out of range")                            \
    X(CM_ENOTFOUND, -7, "not found")                                  \
    X(CM_ETIMEDOUT, -8, "timed out")                                  \
    X(CM_ECONN, -9, "connection failed")                              \
    X(CM_EAUTH, -10, "authentication failed")                         \
    X(CM_EPEER, -11, "peer failed")                                   \
    X(CM_EBUSY, -12, "resource busy")                                 \
    X(CM_ECANCELED, -13, "canceled")                                  \
    X(CM_EAGAIN, -14, "try again")                                    \
    X(CM_ECLOSED, -15, "closed")                                      \
    X(CM_EFULL, -16, "full")

typedef enum cm_status {
#define CM_STATUS_ENUM(name, value, msg) name = value,
    CM_STATUS_MAP(CM_STATUS_ENUM)
#undef CM_STATUS_ENUM
} cm_status;

/* Short fixed description of a status code; never NULL. */
const char *cm_strerror(int status);

/* Records a detail message for this thread and returns `status`, so that
 * `return cm_errorf(CM_EFORMAT, "%s: ...", path);` both explains and fails. */
int cm_errorf(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cm_verrorf(int status, const char *fmt, va_list ap);

/* The detail message recorded last on this thread, or the status text of
 * `status` when none was recorded since cm_error_clear(). */
const char *cm_last_error(int status);
void cm_error_clear(void);

#endif
