/* version.c - the library version and the public status messages. */
#include "cellm.h"

#include "base/status.h"

#define CM_STR2(x) #x
#define CM_STR(x) CM_STR2(x)

const char *cellm_version(void) {
    return CM_STR(CELLM_VERSION_MAJOR) "." CM_STR(CELLM_VERSION_MINOR) "." CM_STR(CELLM_VERSION_PATCH);
}

const char *cellm_strerror(int status) { return cm_strerror(status); }
