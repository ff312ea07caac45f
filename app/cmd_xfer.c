/* cmd_xfer.c - `cellm key generate` and `cellm xfer-bench`.
 *
 *   cellm key generate [--base64] > FILE
 *   cellm xfer-bench --serve HOST:PORT [--key-file F] [--once]
 *   cellm xfer-bench --peer HOST:PORT[,HOST:PORT...] [--backend tcp|verbs|fabric]
 *                    [--sizes 4K,256K,4M,64M] [--iters N] [--rtt-iters N]
 *                    [--sockets N] [--chunk BYTES] [--baseline] [--raw-buffers 4M[,64M...]]
 *                    [--busy-poll US] [--json] [--key-file F]
 *
 * The bench talks to the server through the engine itself: small text
 * messages (send/recv) set up a destination region and say how many writes
 * to expect; the server answers with a 0-byte write_imm once it has counted
 * them all, so a measured write is one whose bytes all landed at the peer.
 *
 *   write throughput: per size S, K = clamp(256 MiB / S, 4, 2048) writes per
 *     repetition (at most 64 in flight), timed from the first write to the
 *     server's acknowledgement; gbit_s = K*S*8 / time; the median of --iters
 *     repetitions (after one untimed warm-up repetition).
 *   rtt: an 8-byte write_imm to the server, which answers with an 8-byte
 *     write_imm; median over --rtt-iters round trips after 200 warm-up ones.
 *   --baseline: the server also listens on PORT+1 for plain TCP: a single
 *     socket streams, for each --raw-buffers size B (default 4M), the same
 *     bytes per repetition as an engine write of size B would (K*B), sent
 *     from a filled B-byte buffer and received walking through a B-byte
 *     buffer, as the engine's writes walk through its regions; then a raw
 *     8-byte ping-pong; in the same run, on the first address. A raw buffer
 *     size equal to a write size runs interleaved with the engine's
 *     repetitions of that size (engine, raw, engine, raw, ...), and the
 *     ping-pong in blocks of 500 alternating with the engine's round trips,
 *     so that both medians see the same load on a shared machine.
 *
 * JSON lines: {"mode":"write","size_bytes":..,"gbit_s":..,...},
 * {"mode":"rtt","size_bytes":8,"rtt_us":..,...}, and with --baseline
 * {"mode":"raw_stream",...,"gbit_s":..,"interleaved":true|false} and
 * {"mode":"raw_pingpong",...,"rtt_us":..,"ratio":..} (ratio: engine rtt / raw).
 * Exit codes: 0 done, 1 runtime failure, 2 bad usage. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/status.h"
#include "base/time.h"
#include "cmd.h"
#include "xfer/xfer.h"

#define IMM_PING 2
#define IMM_ACK 3
#define IMM_DATA 5
#define MAX_SIZES 16
#define MAX_ADDRS 8

/* ---- key ---- */

int cmd_key(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "generate")) {
        fprintf(stderr, "usage: cellm key generate [--base64] > FILE\n"
                        "  makes a new cell key (32 random bytes) and prints it; give the file to every\n"
                        "  node with --key-file FILE or CELLM_KEY_FILE=FILE. Keep it secret.\n");
        return 2;
    }
    int b64 = argc > 2 && !strcmp(argv[2], "--base64");
    if (argc > 2 && !b64) {
        fprintf(stderr, "cellm key generate: unknown option '%s'\n", argv[2]);
        return 2;
    }
    cm_xfer_key k;
    int rc = cm_xfer_key_generate(&k);
    if (rc) {
        fprintf(stderr, "cellm: %s\n", cm_last_error(rc));
        return 1;
    }
    char out[96];
    if (b64) {
        static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        size_t o = 0;
        for (int i = 0; i < 32; i += 3) {
            uint32_t v = (uint32_t)k.bytes[i] << 16 | (i + 1 < 32 ? (uint32_t)k.bytes[i + 1] << 8 : 0) |
                         (i + 2 < 32 ? k.bytes[i + 2] : 0);
            out[o++] = tbl[v >> 18 & 63];
            out[o++] = tbl[v >> 12 & 63];
            out[o++] = i + 1 < 32 ? tbl[v >> 6 & 63] : '=';
            out[o++] = i + 2 < 32 ? tbl[v & 63] : '=';
        }
        out[o] = 0;
    } else {
        cm_xfer_key_to_hex(&k, out, sizeof out);
    }
    printf("%s\n", out);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* ---- shared helpers ---- */

static int parse_size(const char *s, size_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || v <= 0 || errno) return -1;
    double mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1024, end++;
    else if (*end == 'M' || *end == 'm') mul = 1024.0 * 1024, end++;
    else if (*end == 'G' || *end == 'g') mul = 1024.0 * 1024 * 1024, end++;
    if (*end == 'i' || *end == 'B') end++;
    if (*end == 'B') end++;
    if (*end) return -1;
    *out = (size_t)(v * mul);
    return *out ? 0 : -1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int split_port(const char *addr, char *host, size_t hcap, int *port) {
    const char *c = strrchr(addr, ':');
    if (!c || (size_t)(c - addr) >= hcap) return -1;
    memcpy(host, addr, (size_t)(c - addr));
    host[c - addr] = 0;
    if (host[0] == '[') {
        memmove(host, host + 1, strlen(host));
        char *r = strchr(host, ']');
        if (r) *r = 0;
    }
    *port = atoi(c + 1);
    return *port > 0 || !strcmp(c + 1, "0") ? 0 : -1;
}

/* One text command (at most 127 bytes) through the engine's send/recv. */
static char g_msg_buf[128];
static cm_xfer_mr *g_msg_mr;
static cm_xfer_cq *g_msg_cq;

/* Call after cm_xfer_destroy: a cq may be freed only when nothing can still
 * report to it, and a send that timed out might (xfer.h). The region goes
 * with the engine. */
static void msg_close(cm_xfer *x) {
    if (g_msg_cq) cm_xfer_cq_destroy(x, g_msg_cq);
    g_msg_mr = NULL;
    g_msg_cq = NULL;
}

static int msg_send(cm_xfer *x, int peer, const char *text) {
    char *buf = g_msg_buf;
    cm_xfer_mr *mr = g_msg_mr;
    cm_xfer_cq *cq = g_msg_cq;
    if (!mr) {
        cm_xfer_mr_register(x, buf, sizeof g_msg_buf, 0, &mr);
        cm_xfer_cq_create(x, &cq);
        g_msg_mr = mr;
        g_msg_cq = cq;
    }
    size_t n = strlen(text);
    memcpy(buf, text, n);
    int rc = cm_xfer_send(x, peer, mr, 0, n, cq, 0);
    cm_xfer_completion c;
    if (!rc) rc = cm_xfer_cq_poll(cq, &c, 1, 10000) == 1 ? c.status : CM_ETIMEDOUT;
    return rc;
}

/* How busy the whole machine's CPUs were (Linux /proc/stat, which is not
 * per network namespace): both ends of a transfer between namespaces and
 * the kernel's packet work show up here, which makes it the measure of how
 * much CPU a transfer costs. Returns 0 when unavailable. */
typedef struct cpu_mark {
    unsigned long long busy, total;
} cpu_mark;

static cpu_mark cpu_now(void) {
    cpu_mark m = {0, 0};
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return m;
    unsigned long long v[10] = {0};
    if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6],
               &v[7]) == 8) {
        for (int i = 0; i < 8; i++) m.total += v[i];
        m.busy = m.total - v[3] - v[4]; /* idle, iowait */
    }
    fclose(f);
    return m;
}

static void cpu_add(cpu_mark *acc, cpu_mark from, cpu_mark to) {
    acc->busy += to.busy - from.busy;
    acc->total += to.total - from.total;
}

static double cpu_busy(cpu_mark acc) { return acc.total ? (double)acc.busy / (double)acc.total : 0; }

/* ---- raw TCP baseline ---- */

static int raw_listen(const char *host, int port) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    if (getaddrinfo(host[0] && strcmp(host, "*") ? host : NULL, ps, &hints, &res)) return -1;
    int fd = socket(res->ai_family, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, res->ai_addr, res->ai_addrlen) || listen(fd, 8)) {
        if (fd >= 0) close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static int raw_dial(const char *host, int port) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    if (getaddrinfo(host, ps, &hints, &res)) return -1;
    int fd = socket(res->ai_family, SOCK_STREAM, 0);
    if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen)) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    int one = 1;
    if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int full_io(int fd, void *p, size_t n, int wr) {
    size_t d = 0;
    while (d < n) {
        ssize_t r = wr ? send(fd, (char *)p + d, n - d, MSG_NOSIGNAL) : recv(fd, (char *)p + d, n - d, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        d += (size_t)r;
    }
    return 0;
}

/* Serves raw baseline sessions: a 32-byte command "S <bytes> <buffer>"
 * (stream: receive <bytes> walking through a <buffer>-byte buffer, the way
 * the engine lands writes at increasing offsets of its region, and answer
 * one byte at the end) or "P <count>" (8-byte ping-pong). The baseline uses
 * no key: it carries nothing but filler and counts. */
#define RAW_CMD_BYTES 32
#define RAW_MAX_BUFFER (1ull << 30)
static void *raw_server_main(void *arg) {
    int lfd = (int)(intptr_t)arg;
    char *buf = NULL;
    size_t cap = 0;
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) break;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char cmd[RAW_CMD_BYTES + 1] = {0};
        if (full_io(fd, cmd, RAW_CMD_BYTES, 0) == 0) {
            char *end;
            unsigned long long n = strtoull(cmd + 2, &end, 10);
            unsigned long long want_buf = strtoull(end, NULL, 10);
            if (cmd[0] == 'S' && want_buf >= 4096 && want_buf <= RAW_MAX_BUFFER) {
                if (want_buf != cap) {
                    free(buf);
                    cap = (size_t)want_buf;
                    buf = malloc(cap);
                    if (buf) memset(buf, 0, cap); /* fault it in before the clock starts */
                    else cap = 0;
                }
                unsigned long long got = 0;
                size_t off = 0;
                while (buf && got < n) {
                    size_t want = cap - off;
                    if (n - got < want) want = (size_t)(n - got);
                    ssize_t r = recv(fd, buf + off, want, 0);
                    if (r <= 0) break;
                    got += (unsigned long long)r;
                    off = (off + (size_t)r) % cap;
                }
                char a = 'k';
                full_io(fd, &a, 1, 1);
            } else if (cmd[0] == 'P') {
                char m[8];
                for (unsigned long long i = 0; i < n; i++)
                    if (full_io(fd, m, 8, 0) || full_io(fd, m, 8, 1)) break;
            }
        }
        close(fd);
    }
    free(buf);
    return NULL;
}

/* ---- server ---- */

typedef struct bench_opts {
    const char *serve;
    const char *peers;
    const char *backend;
    const char *key_file;
    size_t sizes[MAX_SIZES];
    int n_sizes;
    int iters, rtt_iters, sockets;
    size_t chunk;
    size_t raw_bufs[MAX_SIZES]; /* --raw-buffers: one raw stream per buffer size */
    int n_raw_bufs;
    int busy_poll_us; /* --busy-poll: -1 keeps the engine's default */
    int baseline, json, once;
} bench_opts;

static int make_engine(const bench_opts *o, const char *listen, cm_xfer **x) {
    cm_xfer_config cfg;
    cm_xfer_config_init(&cfg);
    int rc = cm_xfer_key_load(o->key_file, &cfg.key);
    if (rc) return rc;
    cfg.listen = listen;
    cfg.backend = o->backend;
    if (o->sockets) cfg.sockets_per_link = o->sockets;
    if (o->chunk) cfg.chunk_bytes = o->chunk;
    if (o->busy_poll_us >= 0) cfg.busy_poll_us = o->busy_poll_us;
    return cm_xfer_create(&cfg, x);
}

/* `cq` lives as long as the engine: ops of this session (the last ACK write,
 * a recv failed when the peer left) may complete after the session ended,
 * so completions are matched to the session by user_data `sid`. */
static int serve_session(cm_xfer *x, int peer, cm_xfer_cq *cq, uint64_t sid) {
    static char cmd[CM_XFER_MR_DESC_WIRE_BYTES + 64];
    cm_xfer_mr *mcmd, *mregion = NULL, *mecho;
    uint8_t *region = NULL;
    static uint8_t echo[64];
    cm_xfer_mr_register(x, cmd, sizeof cmd, 0, &mcmd);
    cm_xfer_mr_register(x, echo, sizeof echo, 0, &mecho);
    cm_xfer_mr_desc client_desc = {0};
    int rc = CM_OK;
    for (;;) {
        memset(cmd, 0, sizeof cmd);
        rc = cm_xfer_recv_post(x, peer, mcmd, 0, sizeof cmd - 1, cq, sid);
        cm_xfer_completion c;
        while (!rc) {
            int k = cm_xfer_cq_poll(cq, &c, 1, 1000);
            if (k == 1 && c.kind == CM_XFER_OP_RECV && c.user_data == sid) break;
            if (k < 0) rc = k;
            if (!rc && cm_xfer_peer_status(x, peer) != CM_OK) rc = CM_EPEER;
        }
        if (rc) break;
        if (c.status) {
            rc = c.status;
            break;
        }
        if (!strncmp(cmd, "REGION ", 7)) {
            size_t n = strtoull(cmd + 7, NULL, 10);
            if (mregion) cm_xfer_mr_deregister(x, mregion);
            free(region);
            region = malloc(n ? n : 1);
            if (!region || cm_xfer_mr_register(x, region, n, CM_XFER_MR_REMOTE_WRITE, &mregion)) {
                rc = CM_ENOMEM;
                break;
            }
            cm_xfer_mr_allow(x, mregion, peer);
            cm_xfer_mr_desc d;
            cm_xfer_mr_desc_get(mregion, &d);
            static uint8_t wire[CM_XFER_MR_DESC_WIRE_BYTES];
            static cm_xfer_mr *mwire;
            size_t wn;
            cm_xfer_mr_desc_encode(&d, wire, sizeof wire, &wn);
            if (!mwire) cm_xfer_mr_register(x, wire, sizeof wire, 0, &mwire);
            rc = cm_xfer_send(x, peer, mwire, 0, wn, cq, 1);
        } else if (!strncmp(cmd, "DESC ", 5)) {
            rc = cm_xfer_mr_desc_decode((uint8_t *)cmd + 5, c.bytes - 5, &client_desc);
        } else if (!strncmp(cmd, "PING ", 5)) {
            long n = atol(cmd + 5);
            for (long i = 0; i < n && !rc; i++) {
                rc = cm_xfer_imm_wait(x, peer, IMM_PING, 1, 10000);
                if (!rc) rc = cm_xfer_write_imm(x, peer, mecho, 0, &client_desc, 0, 8, IMM_ACK, cq, 2);
            }
        } else if (!strncmp(cmd, "WAIT ", 5)) {
            long n = atol(cmd + 5);
            rc = cm_xfer_imm_wait(x, peer, IMM_DATA, (uint64_t)n, 60000);
            if (!rc) rc = cm_xfer_write_imm(x, peer, NULL, 0, &client_desc, 0, 0, IMM_ACK, cq, 3);
        } else if (!strncmp(cmd, "BYE", 3)) {
            break;
        }
        /* drop completions of our own sends/writes */
        cm_xfer_completion junk[64];
        while (cm_xfer_cq_poll(cq, junk, 64, 0) > 0) {
        }
        if (rc) break;
    }
    if (mregion) cm_xfer_mr_deregister(x, mregion);
    free(region);
    cm_xfer_mr_deregister(x, mcmd);
    cm_xfer_mr_deregister(x, mecho);
    return rc;
}

static int run_server(const bench_opts *o) {
    cm_xfer *x = NULL;
    int rc = make_engine(o, o->serve, &x);
    if (rc) {
        fprintf(stderr, "cellm xfer-bench: %s\n", cm_last_error(rc));
        return 1;
    }
    char la[96], lhost[256], host[256];
    int rport = 0, port = 0;
    cm_xfer_listen_addr(x, la, sizeof la);
    split_port(la, lhost, sizeof lhost, &rport);
    split_port(o->serve, host, sizeof host, &port);
    int lfd = raw_listen(host, rport + 1);
    if (lfd < 0)
        fprintf(stderr, "cellm xfer-bench: raw baseline listener on port %d failed; --baseline will not work\n",
                rport + 1);
    else {
        pthread_t th;
        pthread_create(&th, NULL, raw_server_main, (void *)(intptr_t)lfd);
        pthread_detach(th);
    }
    printf("listening on %s (backend %s; raw baseline on port %d)\n", la, cm_xfer_backend_name(x), rport + 1);
    fflush(stdout);
    cm_xfer_cq *cq = NULL;
    if ((rc = cm_xfer_cq_create(x, &cq))) {
        fprintf(stderr, "cellm xfer-bench: %s\n", cm_last_error(rc));
        cm_xfer_destroy(x);
        return 1;
    }
    for (uint64_t sid = 1;; sid++) {
        cm_xfer_event ev;
        if (cm_xfer_event_next(x, &ev, -1)) break;
        if (ev.type != CM_XFER_EV_PEER_UP) continue;
        rc = serve_session(x, ev.peer, cq, sid);
        if (rc && rc != CM_EPEER)
            fprintf(stderr, "cellm xfer-bench: session with %s ended: %s\n", cm_xfer_peer_name(x, ev.peer),
                    cm_last_error(rc));
        if (o->once) break;
    }
    cm_xfer_destroy(x);
    cm_xfer_cq_destroy(x, cq); /* after the engine: see serve_session */
    return 0;
}

/* ---- client ---- */

/* "backend" is the one running (the engine may have fallen back to tcp, e.g.
 * verbs with no RDMA device); "requested" is what --backend asked for. */
static void emit_write(const bench_opts *o, const char *running, int n_links, size_t size, int k, double *g, int n,
                       double cpu) {
    double lo = g[0], hi = g[0];
    for (int i = 1; i < n; i++) lo = g[i] < lo ? g[i] : lo, hi = g[i] > hi ? g[i] : hi;
    double med = median(g, n);
    if (o->json)
        printf("{\"mode\":\"write\",\"backend\":\"%s\",\"requested\":\"%s\",\"links\":%d,\"size_bytes\":%zu,\"writes\":%d,\"reps\":%d,"
               "\"gbit_s\":%.3f,\"gbit_s_min\":%.3f,\"gbit_s_max\":%.3f,\"cpu_busy\":%.3f}\n",
               running, o->backend ? o->backend : "tcp", n_links, size, k, n, med, lo, hi, cpu);
    else
        printf("write %10zu B  x%-5d  %8.2f Gbit/s  (min %.2f, max %.2f, %d reps; cpu %.0f%%)\n", size, k, med, lo, hi,
               n, cpu * 100);
    fflush(stdout);
}

/* One timed engine repetition: K writes of `size` (at most 64 in flight),
 * timed until the server acknowledges that it counted all of them. */
static int engine_write_rep(cm_xfer *x, int peer, cm_xfer_mr *msrc, const cm_xfer_mr_desc *dst, cm_xfer_cq *cq,
                            size_t size, long k, double *gbit, cpu_mark *cpu) {
    char cmd[64];
    snprintf(cmd, sizeof cmd, "WAIT %ld", k);
    int rc = msg_send(x, peer, cmd);
    if (rc) return rc;
    cpu_mark c0 = cpu_now();
    uint64_t t0 = cm_now_ns();
    long issued = 0, done = 0;
    while (done < k) {
        while (issued < k && issued - done < 64) {
            if ((rc = cm_xfer_write_imm(x, peer, msrc, 0, dst, 0, size, IMM_DATA, cq, 1))) return rc;
            issued++;
        }
        cm_xfer_completion c[64];
        int got = cm_xfer_cq_poll(cq, c, 64, 10000);
        if (got <= 0) return got < 0 ? got : cm_errorf(CM_ETIMEDOUT, "no write completion in 10 s (is the --serve side still running?)");
        for (int i = 0; i < got; i++) {
            if (c[i].status) return c[i].status;
            done++;
        }
    }
    if ((rc = cm_xfer_imm_wait(x, peer, IMM_ACK, 1, 60000))) return rc;
    double s = (double)(cm_now_ns() - t0) / 1e9;
    *gbit = (double)k * (double)size * 8 / s / 1e9;
    cpu_add(cpu, c0, cpu_now());
    return CM_OK;
}

/* One timed raw repetition: a fresh plain TCP connection streams `total`
 * bytes from `buf` (bufsz bytes, sent over and over) to the server's
 * baseline port and waits for its one-byte answer. */
static int raw_stream_rep(const char *host, int port, const char *buf, size_t bufsz, size_t total, double *gbit,
                          cpu_mark *cpu) {
    int fd = raw_dial(host, port);
    if (fd < 0) return cm_errorf(CM_ECONN, "baseline: cannot connect to %s:%d (--baseline needs the server's PORT+1 reachable too)", host, port);
    char c32[64]; /* the command is the first RAW_CMD_BYTES: at most 2+13+1+10 digits here */
    snprintf(c32, sizeof c32, "S %-14zu %-14zu", total, bufsz);
    cpu_mark c0 = cpu_now();
    uint64_t t0 = cm_now_ns();
    int bad = full_io(fd, c32, RAW_CMD_BYTES, 1);
    for (size_t s = 0; !bad && s < total; s += bufsz) bad = full_io(fd, (void *)buf, bufsz, 1);
    char a;
    if (!bad) bad = full_io(fd, &a, 1, 0);
    double sec = (double)(cm_now_ns() - t0) / 1e9;
    close(fd);
    if (bad) return cm_errorf(CM_ECONN, "baseline stream to %s:%d failed", host, port);
    *gbit = (double)total * 8 / sec / 1e9;
    cpu_add(cpu, c0, cpu_now());
    return CM_OK;
}

/* K for a size: the same bytes per repetition for the engine and the raw
 * stream (at least 256 MiB, at least 4 and at most 2048 writes). */
static long writes_for(size_t size) {
    long k = (long)((256u << 20) / size);
    return k < 4 ? 4 : k > 2048 ? 2048 : k;
}

static void emit_raw(const bench_opts *o, size_t total, size_t bufsz, double *g, int n, double cpu, int interleaved) {
    double med = median(g, n);
    if (o->json)
        printf("{\"mode\":\"raw_stream\",\"size_bytes\":%zu,\"buffer_bytes\":%zu,\"reps\":%d,\"gbit_s\":%.3f,"
               "\"cpu_busy\":%.3f,\"interleaved\":%s}\n",
               total, bufsz, n, med, cpu, interleaved ? "true" : "false");
    else
        printf("raw   single TCP stream, %zu MiB in %zu KiB buffers: %8.2f Gbit/s median (cpu %.0f%%%s)\n", total >> 20,
               bufsz >> 10, med, cpu * 100, interleaved ? "; interleaved with the engine's reps" : "");
    fflush(stdout);
}

static int run_client(const bench_opts *o) {
    char *list = strdup(o->peers);
    const char *addrs[MAX_ADDRS];
    int n_addrs = 0;
    for (char *t = strtok(list, ","); t && n_addrs < MAX_ADDRS; t = strtok(NULL, ",")) addrs[n_addrs++] = t;
    cm_xfer *x = NULL;
    int rc = make_engine(o, NULL, &x);
    int peer = -1;
    cm_xfer_cq *cq = NULL;
    uint8_t *src = NULL;
    cm_xfer_mr *msrc = NULL, *mmine = NULL, *mdesc = NULL;
    static uint8_t mine[64], descbuf[CM_XFER_MR_DESC_WIRE_BYTES];
    if (rc) goto fail;
    if ((rc = cm_xfer_connect(x, addrs, n_addrs, 10000, &peer))) goto fail;
    cm_xfer_cq_create(x, &cq);
    size_t max_size = 8;
    for (int i = 0; i < o->n_sizes; i++) max_size = o->sizes[i] > max_size ? o->sizes[i] : max_size;
    src = malloc(max_size);
    if (!src) {
        rc = cm_errorf(CM_ENOMEM, "no memory for a %zu-byte source buffer", max_size);
        goto fail;
    }
    memset(src, 0xa5, max_size);
    cm_xfer_mr_register(x, src, max_size, 0, &msrc);
    cm_xfer_mr_register(x, mine, sizeof mine, CM_XFER_MR_REMOTE_WRITE, &mmine);
    cm_xfer_mr_allow(x, mmine, peer);
    cm_xfer_mr_register(x, descbuf, sizeof descbuf, 0, &mdesc);
    /* our echo region to the server */
    {
        cm_xfer_mr_desc d;
        cm_xfer_mr_desc_get(mmine, &d);
        static char m[5 + CM_XFER_MR_DESC_WIRE_BYTES];
        size_t wn;
        memcpy(m, "DESC ", 5);
        cm_xfer_mr_desc_encode(&d, (uint8_t *)m + 5, CM_XFER_MR_DESC_WIRE_BYTES, &wn);
        cm_xfer_mr *mm;
        cm_xfer_mr_register(x, m, sizeof m, 0, &mm);
        rc = cm_xfer_send(x, peer, mm, 0, sizeof m, cq, 0);
        cm_xfer_completion c;
        if (!rc) rc = cm_xfer_cq_poll(cq, &c, 1, 10000) == 1 ? c.status : CM_ETIMEDOUT;
        cm_xfer_mr_deregister(x, mm);
        if (rc) goto fail;
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "REGION %zu", max_size);
    cm_xfer_mr_desc dst;
    if ((rc = cm_xfer_recv_post(x, peer, mdesc, 0, sizeof descbuf, cq, 7))) goto fail;
    if ((rc = msg_send(x, peer, cmd))) goto fail;
    {
        cm_xfer_completion c;
        int k;
        do k = cm_xfer_cq_poll(cq, &c, 1, 10000);
        while (k == 1 && c.kind != CM_XFER_OP_RECV);
        if (k != 1 || c.status) {
            rc = k == 1 ? c.status : CM_ETIMEDOUT;
            goto fail;
        }
        if ((rc = cm_xfer_mr_desc_decode(descbuf, c.bytes, &dst))) goto fail;
    }
    if (!o->json)
        printf("cellm xfer-bench: backend %s, %d link(s) to %s, %d socket(s) per link\n", cm_xfer_backend_name(x),
               n_addrs, o->peers, o->sockets ? o->sockets : 2);

    /* The baseline's address: the raw listener is on the first address's PORT+1. */
    char host[256] = "";
    int port = 0;
    if (o->baseline) split_port(addrs[0], host, sizeof host, &port);
    int raw_done[MAX_SIZES] = {0};

    /* write throughput per size. With --baseline, a raw buffer size equal
     * to a write size runs its repetitions interleaved with the engine's
     * (engine, raw, engine, raw, ...), so both medians come from the same
     * stretch of time: on a shared machine the load changes within seconds,
     * and repetitions taken ~10 s apart compared the load, not the engine. */
    for (int si = 0; si < o->n_sizes; si++) {
        size_t size = o->sizes[si];
        long k = writes_for(size);
        int bi = -1;
        for (int j = 0; o->baseline && j < o->n_raw_bufs && bi < 0; j++)
            if (o->raw_bufs[j] == size && !raw_done[j]) bi = j;
        char *rbuf = NULL;
        if (bi >= 0) {
            rbuf = malloc(size);
            if (!rbuf) {
                rc = cm_errorf(CM_ENOMEM, "baseline: no memory for a %zu-byte buffer", size);
                goto fail;
            }
            memset(rbuf, 0xa5, size); /* filled like the engine's source, not calloc's shared zero page */
        }
        double g[64], rg[64];
        int n = 0, rn = 0;
        cpu_mark cpu = {0, 0}, rcpu = {0, 0}, junk = {0, 0};
        for (int rep = -1; rep < o->iters && n < 64 && !rc; rep++) {
            double v;
            rc = engine_write_rep(x, peer, msrc, &dst, cq, size, k, &v, rep >= 0 ? &cpu : &junk);
            if (!rc && rep >= 0) g[n++] = v;
            if (!rc && rbuf) {
                rc = raw_stream_rep(host, port + 1, rbuf, size, (size_t)k * size, &v, rep >= 0 ? &rcpu : &junk);
                if (!rc && rep >= 0) rg[rn++] = v;
            }
        }
        if (rc) {
            free(rbuf);
            goto fail;
        }
        emit_write(o, cm_xfer_backend_name(x), n_addrs, size, (int)k, g, n, cpu_busy(cpu));
        if (rbuf) {
            emit_raw(o, (size_t)k * size, size, rg, rn, cpu_busy(rcpu), 1);
            raw_done[bi] = 1;
            free(rbuf);
        }
    }

    /* raw buffer sizes that match no write size: on their own, after */
    for (int bi = 0; o->baseline && bi < o->n_raw_bufs; bi++) {
        if (raw_done[bi]) continue;
        size_t bufsz = o->raw_bufs[bi];
        size_t total = (size_t)writes_for(bufsz) * bufsz;
        double g[64];
        int n = 0;
        cpu_mark cpu = {0, 0}, junk = {0, 0};
        char *buf = malloc(bufsz);
        if (!buf) {
            rc = cm_errorf(CM_ENOMEM, "baseline: no memory for a %zu-byte buffer", bufsz);
            goto fail;
        }
        memset(buf, 0xa5, bufsz);
        for (int rep = -1; rep < o->iters && n < 64 && !rc; rep++) {
            double v;
            rc = raw_stream_rep(host, port + 1, buf, bufsz, total, &v, rep >= 0 ? &cpu : &junk);
            if (!rc && rep >= 0) g[n++] = v;
        }
        free(buf);
        if (rc) goto fail;
        emit_raw(o, total, bufsz, g, n, cpu_busy(cpu), 0);
    }

    /* Round trip: 8-byte write_imm answered by an 8-byte write_imm; with
     * --baseline, in blocks alternating with blocks of a raw 8-byte
     * ping-pong on one plain TCP_NODELAY socket (same reason as above). */
    {
        const int warm = 200, block = 500;
        int n = o->rtt_iters;
        double *us = malloc((size_t)n * sizeof *us), *rus = malloc((size_t)n * sizeof *rus);
        int fd = -1;
        if (!us || !rus) {
            free(us);
            free(rus);
            rc = cm_errorf(CM_ENOMEM, "no memory for %d round-trip times", n);
            goto fail;
        }
        if (o->baseline) {
            char c32[64];
            fd = raw_dial(host, port + 1);
            snprintf(c32, sizeof c32, "P %-29d", warm + n);
            if (fd < 0 || full_io(fd, c32, RAW_CMD_BYTES, 1))
                rc = cm_errorf(CM_ECONN, "baseline ping-pong: cannot connect to %s:%d (--baseline needs the server's PORT+1 reachable too)", host, port + 1);
        }
        /* i counts engine round trips, ri raw ones, warm-ups included */
        for (int i = 0, ri = 0; !rc && (i < warm + n || (fd >= 0 && ri < warm + n));) {
            int m = i < warm ? warm : block;
            if (i + m > warm + n) m = warm + n - i;
            if (m > 0) {
                snprintf(cmd, sizeof cmd, "PING %d", m);
                if ((rc = msg_send(x, peer, cmd))) break;
            }
            for (int j = 0; j < m && !rc; j++, i++) {
                uint64_t t0 = cm_now_ns();
                if ((rc = cm_xfer_write_imm(x, peer, msrc, 0, &dst, 0, 8, IMM_PING, cq, 2))) break;
                if ((rc = cm_xfer_imm_wait(x, peer, IMM_ACK, 1, 10000))) break;
                if (i >= warm) us[i - warm] = (double)(cm_now_ns() - t0) / 1e3;
                cm_xfer_completion c[8];
                cm_xfer_cq_poll(cq, c, 8, 0);
            }
            if (fd < 0 || rc) continue;
            m = ri < warm ? warm : block;
            if (ri + m > warm + n) m = warm + n - ri;
            char msg[8] = {0};
            for (int j = 0; j < m; j++, ri++) {
                uint64_t t0 = cm_now_ns();
                if (full_io(fd, msg, 8, 1) || full_io(fd, msg, 8, 0)) {
                    rc = cm_errorf(CM_ECONN, "baseline ping-pong failed");
                    break;
                }
                if (ri >= warm) rus[ri - warm] = (double)(cm_now_ns() - t0) / 1e3;
            }
        }
        if (fd >= 0) close(fd);
        if (rc) {
            free(us);
            free(rus);
            goto fail;
        }
        double med = median(us, n), p99 = us[(int)(0.99 * (n - 1))];
        if (o->json)
            printf("{\"mode\":\"rtt\",\"backend\":\"%s\",\"requested\":\"%s\",\"links\":%d,\"size_bytes\":8,\"iters\":%d,\"rtt_us\":%.2f,"
                   "\"rtt_us_p99\":%.2f}\n",
                   cm_xfer_backend_name(x), o->backend ? o->backend : "tcp", n_addrs, n, med, p99);
        else
            printf("rtt   %10d B  x%-5d  %8.1f us median  (p99 %.1f us)\n", 8, n, med, p99);
        if (fd >= 0) {
            double rm = median(rus, n);
            if (o->json)
                printf("{\"mode\":\"raw_pingpong\",\"size_bytes\":8,\"iters\":%d,\"rtt_us\":%.2f,\"ratio\":%.3f}\n", n, rm,
                       rm > 0 ? med / rm : 0);
            else
                printf("raw   8-byte TCP ping-pong: %8.1f us median (engine/raw %.2fx; blocks of %d alternating)\n", rm,
                       rm > 0 ? med / rm : 0, block);
        }
        fflush(stdout);
        free(us);
        free(rus);
    }
    if (!o->json && n_addrs > 1) {
        cm_xfer_link_stats ls[MAX_ADDRS];
        int nl = 0;
        cm_xfer_peer_links(x, peer, ls, MAX_ADDRS, &nl);
        for (int i = 0; i < nl && i < MAX_ADDRS; i++)
            printf("  link %d %s: %.1f MiB sent, measured %.2f Gbit/s\n", i, ls[i].addr, ls[i].bytes_sent / 1048576.0,
                   ls[i].gbit_s_ewma);
    }
    msg_send(x, peer, "BYE"); /* after the baseline: a --once server stays up for it */
    /* cqs after the engine: the completion of the last ping's write may not
     * have been reported yet (the ACK can overtake it on another socket) */
    cm_xfer_destroy(x);
    msg_close(x);
    cm_xfer_cq_destroy(x, cq);
    free(src);
    free(list);
    return 0;
fail:
    fprintf(stderr, "cellm xfer-bench: %s\n", cm_last_error(rc));
    if (x) {
        cm_xfer_destroy(x);
        msg_close(x);
        if (cq) cm_xfer_cq_destroy(x, cq);
    }
    free(src);
    free(list);
    return 1;
}

static void usage(FILE *f) {
    fprintf(f, "usage: cellm xfer-bench --serve HOST:PORT [--key-file F] [--once]\n"
               "       cellm xfer-bench --peer HOST:PORT[,HOST:PORT...] [--backend tcp|verbs|fabric]\n"
               "                        [--sizes 4K,256K,4M,64M] [--iters N] [--rtt-iters N] [--sockets N]\n"
               "                        [--chunk BYTES] [--baseline] [--raw-buffers 4M,64M] [--json]\n"
               "                        [--busy-poll US] [--key-file F]\n"
               "\n"
               "Measures write throughput per size (median Gbit/s) and the 8-byte round trip (median us)\n"
               "between two nodes; one address per link, several are striped as one peer. --baseline adds a\n"
               "plain single-socket TCP stream (one per --raw-buffers size, default 4M) and a raw TCP\n"
               "ping-pong (the server's PORT+1) in the same run, interleaved with the engine's repetitions\n"
               "where the sizes match (and the ping-pong in alternating blocks). --busy-poll sets how long a waiting\n"
               "thread polls before it sleeps (engine default 50 us; 0 never spins).\n"
               "The key comes from --key-file or CELLM_KEY_FILE (make one with `cellm key generate > FILE`).\n");
}

int cmd_xfer_bench(int argc, char **argv) {
    bench_opts o = {.iters = 5, .rtt_iters = 2000, .busy_poll_us = -1};
    const char *sizes = "4K,256K,4M,64M", *raw_bufs = "4M";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) o.json = 1;
        else if (!strcmp(a, "--baseline")) o.baseline = 1;
        else if (!strcmp(a, "--once")) o.once = 1;
        else if (!v) {
            fprintf(stderr, "cellm xfer-bench: %s needs a value (see --help)\n", a);
            return 2;
        } else if (!strcmp(a, "--serve")) o.serve = v, i++;
        else if (!strcmp(a, "--peer")) o.peers = v, i++;
        else if (!strcmp(a, "--backend")) o.backend = v, i++;
        else if (!strcmp(a, "--key-file")) o.key_file = v, i++;
        else if (!strcmp(a, "--sizes")) sizes = v, i++;
        else if (!strcmp(a, "--raw-buffers")) raw_bufs = v, i++;
        else if (!strcmp(a, "--iters")) o.iters = atoi(v), i++;
        else if (!strcmp(a, "--rtt-iters")) o.rtt_iters = atoi(v), i++;
        else if (!strcmp(a, "--sockets")) o.sockets = atoi(v), i++;
        else if (!strcmp(a, "--busy-poll")) o.busy_poll_us = atoi(v), i++;
        else if (!strcmp(a, "--chunk")) {
            if (parse_size(v, &o.chunk)) {
                fprintf(stderr, "cellm xfer-bench: bad --chunk '%s'\n", v);
                return 2;
            }
            i++;
        } else {
            fprintf(stderr, "cellm xfer-bench: unknown option '%s' (see --help)\n", a);
            return 2;
        }
    }
    if (!o.serve == !o.peers) {
        usage(stderr);
        return 2;
    }
    if (o.iters < 1 || o.iters > 63 || o.rtt_iters < 1 || o.sockets < 0 || o.sockets > 8 || o.busy_poll_us < -1 ||
        o.busy_poll_us > 10000) {
        fprintf(stderr, "cellm xfer-bench: --iters 1..63, --rtt-iters >= 1, --sockets 1..8, --busy-poll 0..10000\n");
        return 2;
    }
    char *sz = strdup(sizes);
    for (char *t = strtok(sz, ","); t; t = strtok(NULL, ",")) {
        if (o.n_sizes == MAX_SIZES || parse_size(t, &o.sizes[o.n_sizes]) || o.sizes[o.n_sizes] > (1ull << 30)) {
            fprintf(stderr, "cellm xfer-bench: bad size '%s' in --sizes (e.g. 4K,256K,4M,64M; at most 1G, 16 sizes)\n", t);
            free(sz);
            return 2;
        }
        o.n_sizes++;
    }
    free(sz);
    sz = strdup(raw_bufs);
    for (char *t = strtok(sz, ","); t; t = strtok(NULL, ",")) {
        if (o.n_raw_bufs == MAX_SIZES || parse_size(t, &o.raw_bufs[o.n_raw_bufs]) ||
            o.raw_bufs[o.n_raw_bufs] < 4096 || o.raw_bufs[o.n_raw_bufs] > RAW_MAX_BUFFER) {
            fprintf(stderr, "cellm xfer-bench: bad size '%s' in --raw-buffers (4K..1G, e.g. 4M,64M)\n", t);
            free(sz);
            return 2;
        }
        o.n_raw_bufs++;
    }
    free(sz);
    signal(SIGPIPE, SIG_IGN);
    return o.serve ? run_server(&o) : run_client(&o);
}
