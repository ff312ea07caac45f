/* backends.c - the list of transfer backends built into this binary. A new
 * backend adds one line here, under the build flag that says its library is
 * present (CMakeLists.txt defines CM_HAVE_VERBS / CM_HAVE_FABRIC). */
#include <string.h>

#include "xfer/backend.h"

static const cm_xfer_backend_ops *const g_backends[] = {
    &cm_xfer_tcp_ops,
    /* verbs: &cm_xfer_verbs_ops (CM_HAVE_VERBS), fabric: &cm_xfer_fabric_ops
     * (CM_HAVE_FABRIC) - added with their files. */
};

const cm_xfer_backend_ops *cm_xfer_backend_find(const char *name) {
    if (!name || !*name) name = "tcp";
    for (size_t i = 0; i < sizeof g_backends / sizeof g_backends[0]; i++)
        if (!strcmp(g_backends[i]->name, name)) return g_backends[i];
    return NULL;
}
