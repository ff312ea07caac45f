/* cmd_serve.c - `cellm serve`: parses flags, starts the server, waits for
 * SIGINT or SIGTERM and shuts down gracefully.
 *
 * The two signals are blocked before any thread starts, so every thread
 * inherits the mask and the main thread alone receives them with sigwait():
 * no handler runs in an arbitrary thread. A second signal during the drain
 * exits at once (status 130).
 *
 * Exit codes: 0 after a clean shutdown, 1 when the server cannot start, 2
 * bad usage. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"
#include "base/status.h"
#include "cmd.h"
#include "model/model.h"
#include "serve/server.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: cellm serve -m MODEL.gguf [options]\n"
            "\n"
            "Serves an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions,\n"
            "/v1/models), /health, /metrics (Prometheus) and a dashboard at /.\n"
            "SIGINT/SIGTERM: stop accepting, let running requests finish (--grace), exit 0;\n"
            "a second signal exits at once.\n"
            "\n"
            "  -m, --model FILE       GGUF model (required)\n"
            "      --host ADDR        address to listen on (default 127.0.0.1)\n"
            "      --port N           TCP port; 0 picks a free one (default 8080)\n"
            "  -c, --ctx N            context per request in tokens (default: the model's, at most 4096)\n"
            "      --parallel N       requests decoded together, one sequence slot each (default 4)\n"
            "  -t, --threads N        threads for the forward pass (default: all cores)\n"
            "      --kv-type T        KV cache element type: f16 (default) or q8_0 (about half the\n"
            "                         memory per slot, values rounded to 8 bits)\n"
            "      --max-queue N      requests waiting for a slot before 429 (default 64)\n"
            "      --timeout S        seconds a request may take, queued and running (default 600)\n"
            "      --max-body BYTES   largest request body before 413 (default 1048576)\n"
            "      --api-key KEY      require 'Authorization: Bearer KEY' on /v1/* (default: none;\n"
            "                         also read from CELLM_API_KEY)\n"
            "      --model-name NAME  the model id clients use (default: file name without .gguf)\n"
            "      --chat-template F  llama3|chatml|mistral|gemma|phi3|deepseek (default: from the\n"
            "                         model; ChatML when unrecognised)\n"
            "      --prefill-chunk N  prompt tokens per batch step, all requests together (default 256)\n"
            "      --grace S          seconds running requests may finish at shutdown (default 10)\n");
}

static int parse_long(const char *flag, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "cellm serve: %s %s: expected an integer from %ld to %ld\n", flag, s, lo, hi);
        return 2;
    }
    *out = v;
    return 0;
}

static int parse_double(const char *flag, const char *s, double lo, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo)) {
        fprintf(stderr, "cellm serve: %s %s: expected a number of at least %g\n", flag, s, lo);
        return 2;
    }
    *out = v;
    return 0;
}

/* During the graceful drain a second SIGINT/SIGTERM ends the process at
 * once, as users expect from a second Ctrl-C. */
static void *second_signal(void *arg) {
    int sig;
    while (sigwait((const sigset_t *)arg, &sig) != 0) {
    }
    fprintf(stderr, "cellm serve: second signal: stopping now\n");
    _exit(130);
}

int cmd_serve(int argc, char **argv) {
    cm_server_params p;
    cm_server_params_default(&p);
    p.api_key = getenv("CELLM_API_KEY");
    if (p.api_key && !*p.api_key) p.api_key = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "cellm serve: %s: unknown option or missing value (see cellm serve --help)\n", a);
            return 2;
        }
        const char *v = argv[++i];
        long n = 0;
        int bad = 0;
        if (!strcmp(a, "-m") || !strcmp(a, "--model"))
            p.model_path = v;
        else if (!strcmp(a, "--host"))
            p.host = v;
        else if (!strcmp(a, "--port")) {
            if (!(bad = parse_long(a, v, 0, 65535, &n))) p.port = (int)n;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) {
            if (!(bad = parse_long(a, v, 8, 1 << 24, &n))) p.n_ctx = (int)n;
        } else if (!strcmp(a, "--parallel") || !strcmp(a, "-np")) {
            if (!(bad = parse_long(a, v, 1, 1024, &n))) p.n_parallel = (int)n;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!(bad = parse_long(a, v, 1, 4096, &n))) p.n_threads = (int)n;
        } else if (!strcmp(a, "--kv-type")) {
            if ((p.kv_type = cm_kv_type_from_name(v)) < 0) {
                fprintf(stderr, "cellm serve: --kv-type %s: expected f16 or q8_0\n", v);
                bad = 2;
            }
        } else if (!strcmp(a, "--max-queue")) {
            if (!(bad = parse_long(a, v, 0, 1 << 20, &n))) p.max_queue = (int)n;
        } else if (!strcmp(a, "--timeout")) {
            bad = parse_double(a, v, 0, &p.timeout_s);
        } else if (!strcmp(a, "--max-body")) {
            if (!(bad = parse_long(a, v, 64, 1L << 30, &n))) p.max_body = (size_t)n;
        } else if (!strcmp(a, "--api-key"))
            p.api_key = v;
        else if (!strcmp(a, "--model-name"))
            p.model_name = v;
        else if (!strcmp(a, "--chat-template"))
            p.chat_template = v;
        else if (!strcmp(a, "--prefill-chunk")) {
            if (!(bad = parse_long(a, v, 1, 1 << 16, &n))) p.prefill_chunk = (int)n;
        } else if (!strcmp(a, "--grace")) {
            bad = parse_double(a, v, 0, &p.grace_s);
        } else {
            fprintf(stderr, "cellm serve: unknown option %s (see cellm serve --help)\n", a);
            return 2;
        }
        if (bad) return 2;
    }
    if (!p.model_path) {
        fprintf(stderr, "cellm serve: -m MODEL.gguf is required (see cellm serve --help)\n");
        return 2;
    }

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    /* A client that vanishes mid-write must not kill the process. */
    signal(SIGPIPE, SIG_IGN);

    cm_server *srv;
    int rc = cm_server_start(&p, &srv);
    if (rc != CM_OK) {
        fprintf(stderr, "cellm serve: %s\n", cm_last_error(rc));
        return 1;
    }
    bool v6 = strchr(p.host, ':') != NULL;
    printf("cellm serve: model %s, listening on http://%s%s%s:%d (%d slots; Ctrl-C to stop)\n",
           cm_server_model_name(srv), v6 ? "[" : "", p.host, v6 ? "]" : "", cm_server_port(srv), p.n_parallel);
    fflush(stdout);
    int sig = 0;
    while (sigwait(&set, &sig) != 0) {
    }
    fprintf(stderr, "cellm serve: %s: finishing running requests (up to %g s), then exiting; "
                    "signal again to stop at once\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM", p.grace_s);
    pthread_t impatient;
    bool watching = pthread_create(&impatient, NULL, second_signal, &set) == 0;
    cm_server_stop(srv);
    if (watching) {
        pthread_cancel(impatient); /* sigwait is a cancellation point */
        pthread_join(impatient, NULL);
    }
    fprintf(stderr, "cellm serve: stopped\n");
    return 0;
}
