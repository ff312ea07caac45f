/* cellm.h - the public interface of cellm.
 *
 * Small and opaque: a program that embeds cellm opens a model, asks for
 * completions and gets text back through a callback. Everything else is
 * internal (src/). Status codes are the negative values of the CM_E* list in
 * src/base/status.h; cellm_strerror() describes any of them. */
#ifndef CELLM_H
#define CELLM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CELLM_VERSION_MAJOR 0
#define CELLM_VERSION_MINOR 1
#define CELLM_VERSION_PATCH 0

/* "0.1.0" */
const char *cellm_version(void);

/* A description of a status code returned by any cellm_* function. */
const char *cellm_strerror(int status);

#ifdef __cplusplus
}
#endif

#endif
