/* time.h - monotonic clock. */
#ifndef CM_BASE_TIME_H
#define CM_BASE_TIME_H

#include <stdint.h>

/* Nanoseconds on a monotonic clock with an arbitrary origin. */
uint64_t cm_now_ns(void);
double cm_now_s(void);
void cm_sleep_ms(int ms);

#endif
