/* metrics.h - serving counters and latency histograms, rendered as the
 * Prometheus text format (/metrics) and as JSON for the dashboard
 * (/v1/stats). All functions are thread-safe. */
#ifndef CM_SERVE_METRICS_H
#define CM_SERVE_METRICS_H

#include <stdint.h>

#include "serve/sched.h"

typedef struct cm_metrics cm_metrics;

int cm_metrics_create(cm_metrics **out);
void cm_metrics_destroy(cm_metrics *m);

/* One finished HTTP request with its status code. */
void cm_metrics_request(cm_metrics *m, int http_status);
void cm_metrics_prompt_tokens(cm_metrics *m, uint64_t n);
void cm_metrics_generated_tokens(cm_metrics *m, uint64_t n);
void cm_metrics_ttft(cm_metrics *m, double seconds);        /* submit to first token */
void cm_metrics_itl(cm_metrics *m, double seconds);         /* between tokens of one request */
void cm_metrics_request_time(cm_metrics *m, double seconds); /* submit to last token */

/* Renders the whole exposition into a malloc'd NUL-terminated string
 * (caller frees); NULL when out of memory. */
char *cm_metrics_prometheus(cm_metrics *m, const cm_sched_stats *st, const char *model);
/* The dashboard's JSON: counters, gauges, p50/p90/p99 over recent samples. */
char *cm_metrics_json(cm_metrics *m, const cm_sched_stats *st, const char *model, double uptime_s);

#endif
