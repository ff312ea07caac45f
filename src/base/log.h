/* log.h - leveled logging to stderr. The level comes from cm_log_set_level()
 * or the CELLM_LOG environment variable (error, warn, info, debug). */
#ifndef CM_BASE_LOG_H
#define CM_BASE_LOG_H

enum cm_log_level { CM_LOG_ERROR = 0, CM_LOG_WARN = 1, CM_LOG_INFO = 2, CM_LOG_DEBUG = 3 };

void cm_log_set_level(int level);
int cm_log_level(void);
void cm_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define CM_LOGE(...) cm_log(CM_LOG_ERROR, __VA_ARGS__)
#define CM_LOGW(...) cm_log(CM_LOG_WARN, __VA_ARGS__)
#define CM_LOGI(...) cm_log(CM_LOG_INFO, __VA_ARGS__)
#define CM_LOGD(...) cm_log(CM_LOG_DEBUG, __VA_ARGS__)

#endif
