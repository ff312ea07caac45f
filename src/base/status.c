/* status.c - status messages and the per-thread detail message. */
#include "base/status.h"

#include <stdio.h>

static _Thread_local char g_detail[1024];

const char *cm_strerror(int status) {
    switch (status) {
#define CM_STATUS_CASE(name, value, msg) \
    case value:                          \
        return msg;
        CM_STATUS_MAP(CM_STATUS_CASE)
#undef CM_STATUS_CASE
    }
    return "unknown status";
}

int cm_verrorf(int status, const char *fmt, va_list ap) {
    vsnprintf(g_detail, sizeof g_detail, fmt, ap);
    return status;
}

int cm_errorf(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    cm_verrorf(status, fmt, ap);
    va_end(ap);
    return status;
}

const char *cm_last_error(int status) {
    return g_detail[0] ? g_detail : cm_strerror(status);
}

void cm_error_clear(void) { g_detail[0] = 0; }
