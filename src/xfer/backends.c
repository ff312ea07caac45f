/* backends.c - the list of transfer backends built into this binary. A new
 * backend adds one line here, under the build flag that says its library is
 * present (CMakeLists.txt defines CM_HAVE_VERBS / CM_HAVE_FABRIC). */
#include <string.h>

#include "xfer/backend.h"

#ifdef CM_HAVE_VERBS
extern const cm_xfer_backend_ops cm_xfer_verbs_ops;
#endif
#ifdef CM_HAVE_FABRIC
extern const cm_xfer_backend_ops cm_xfer_fabric_ops;
#endif

static const cm_xfer_backend_ops *const g_backends[] = {
    &cm_xfer_tcp_ops,
#ifdef CM_HAVE_VERBS
    &cm_xfer_verbs_ops,
#endif
#ifdef CM_HAVE_FABRIC
    &cm_xfer_fabric_ops,
#endif
};

const cm_xfer_backend_ops *cm_xfer_backend_find(const char *name) {
    if (!name || !*name) name = "tcp";
    for (size_t i = 0; i < sizeof g_backends / sizeof g_backends[0]; i++)
        if (!strcmp(g_backends[i]->name, name)) return g_backends[i];
    return NULL;
}
