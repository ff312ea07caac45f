/* log.c - leveled logging to stderr; one fprintf per line so lines from
 * several threads do not interleave. */
#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_level = -1;

static int level_from_env(void) {
    const char *s = getenv("CELLM_LOG");
    if (!s) return CM_LOG_WARN;
    if (!strcmp(s, "error")) return CM_LOG_ERROR;
    if (!strcmp(s, "info")) return CM_LOG_INFO;
    if (!strcmp(s, "debug")) return CM_LOG_DEBUG;
    return CM_LOG_WARN;
}

void cm_log_set_level(int level) { g_level = level; }

int cm_log_level(void) {
    if (g_level < 0) g_level = level_from_env();
    return g_level;
}

void cm_log(int level, const char *fmt, ...) {
    static const char *names[] = {"error", "warn", "info", "debug"};
    if (level > cm_log_level()) return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cellm: %s: %s\n", names[level < 0 ? 0 : level > 3 ? 3 : level], line);
}
