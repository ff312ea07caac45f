/* test_xfer.c - the transfer engine over loopback: keys, write_imm with
 * immediate counters (ordered and unordered), send/recv order, many writer
 * threads, striping over two loopback addresses, authentication refused
 * with a wrong key, garbage / truncated / out-of-bounds frames from a raw
 * socket, and a peer process stopped or killed mid-transfer (bounded error
 * time, engine still usable, reconnect after restart), and a waiter
 * spinning on a socket when its peer goes away. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "base/status.h"
#include "base/time.h"
#include "test.h"
#include "xfer/backend.h"
#include "xfer/wire.h"
#include "xfer/xfer.h"
#include "xfer_util.h"

static cm_xfer_key g_key;

static cm_xfer *engine(const char *listen, const char *name, const cm_xfer_key *key, int timeout_ms) {
    cm_xfer_config cfg;
    cm_xfer_config_init(&cfg);
    cfg.key = key ? *key : g_key;
    cfg.listen = listen;
    cfg.name = name;
    cfg.chunk_bytes = 64 << 10;
    if (timeout_ms) cfg.peer_timeout_ms = timeout_ms;
    cm_xfer *x = NULL;
    int rc = cm_xfer_create(&cfg, &x);
    if (rc) fprintf(stderr, "cm_xfer_create: %s\n", cm_last_error(rc));
    return x;
}

static int port_of(cm_xfer *x) {
    char a[96];
    if (cm_xfer_listen_addr(x, a, sizeof a)) return -1;
    return atoi(strrchr(a, ':') + 1);
}

static int dial(cm_xfer *x, int port, int n_links, int *peer) {
    char a0[64], a1[64];
    snprintf(a0, sizeof a0, "127.0.0.1:%d", port);
    snprintf(a1, sizeof a1, "127.0.0.2:%d", port);
    const char *addrs[2] = {a0, a1};
    return cm_xfer_connect(x, addrs, n_links, 3000, peer);
}

/* The accepting side's id for the peer that just connected. */
static int accepted_peer(cm_xfer *x) { return xt_peer_up(x, 3000); }

TEST(key_text) {
    cm_xfer_key k, k2;
    CHECK_OK(cm_xfer_key_generate(&k));
    char hex[65];
    CHECK_OK(cm_xfer_key_to_hex(&k, hex, sizeof hex));
    char line[80];
    snprintf(line, sizeof line, "  %s\n", hex);
    CHECK_OK(cm_xfer_key_parse(line, strlen(line), "test", &k2));
    CHECK(!memcmp(k.bytes, k2.bytes, 32));
    char b64[64];
    sodium_bin2base64(b64, sizeof b64, k.bytes, 32, sodium_base64_VARIANT_ORIGINAL);
    memset(&k2, 0, sizeof k2);
    CHECK_OK(cm_xfer_key_parse(b64, strlen(b64), "test", &k2));
    CHECK(!memcmp(k.bytes, k2.bytes, 32));
    CHECK(cm_xfer_key_parse("abc", 3, "test", &k2) == CM_EFORMAT);
    hex[10] = 'z';
    CHECK(cm_xfer_key_parse(hex, 64, "test", &k2) == CM_EFORMAT);
    CHECK(strstr(cm_last_error(CM_EFORMAT), "key generate") != NULL);
}

TEST(write_imm_and_counters) {
    cm_xfer *a = engine("127.0.0.1:0", "a", NULL, 0), *b = engine(NULL, "b", NULL, 0);
    CHECK(a && b);
    if (!a || !b) goto out;
    int pb;
    CHECK_OK(dial(b, port_of(a), 1, &pb));
    int pa = accepted_peer(a);
    CHECK(pa >= 0);
    CHECK(!strcmp(cm_xfer_peer_name(a, pa), "b"));
    size_t n = 3u << 20;
    uint8_t *dst = calloc(1, n), *src = malloc(n);
    for (size_t i = 0; i < n; i++) src[i] = (uint8_t)(i * 131 + 7);
    cm_xfer_mr *mdst, *msrc;
    CHECK_OK(cm_xfer_mr_register(a, dst, n, CM_XFER_MR_REMOTE_WRITE, &mdst));
    CHECK_OK(cm_xfer_mr_allow(a, mdst, pa));
    CHECK_OK(cm_xfer_mr_register(b, src, n, CM_XFER_MR_LOCAL, &msrc));
    cm_xfer_mr_desc d;
    cm_xfer_mr_desc_get(mdst, &d);
    uint8_t wire[CM_XFER_MR_DESC_WIRE_BYTES];
    size_t wn;
    CHECK_OK(cm_xfer_mr_desc_encode(&d, wire, sizeof wire, &wn));
    cm_xfer_mr_desc d2;
    CHECK_OK(cm_xfer_mr_desc_decode(wire, wn, &d2));
    CHECK(d2.region_id == d.region_id && d2.bytes == n);
    cm_xfer_cq *cq;
    CHECK_OK(cm_xfer_cq_create(b, &cq));
    /* ordered use: one big write, then a notification-only write */
    CHECK_OK(cm_xfer_write_imm(b, pb, msrc, 0, &d2, 0, n, 11, cq, 1));
    CHECK_OK(cm_xfer_write_imm(b, pb, NULL, 0, &d2, 0, 0, 12, cq, 2));
    CHECK_OK(cm_xfer_imm_wait(a, pa, 11, 1, 5000));
    CHECK_OK(cm_xfer_imm_wait(a, pa, 12, 1, 5000));
    CHECK(!memcmp(dst, src, n));
    CHECK(cm_xfer_imm_poll(a, 11) == 0); /* consumed */
    int err = 0;
    CHECK(xt_drain(cq, 2, &err, 3000) == 2 && err == 0);
    /* unordered: 40 small writes with 4 immediates, counted, not ordered */
    for (int i = 0; i < 40; i++)
        CHECK_OK(cm_xfer_write_imm(b, pb, msrc, (size_t)i * 1000, &d2, (size_t)i * 1000, 1000, 100 + i % 4, cq, 10 + i));
    for (int k = 0; k < 4; k++) CHECK_OK(cm_xfer_imm_wait(a, pa, 100 + k, 10, 5000));
    CHECK(xt_drain(cq, 40, &err, 3000) == 40 && err == 0);
    CHECK(cm_xfer_imm_wait(a, pa, 100, 1, 50) == CM_ETIMEDOUT);
    /* local range checks refuse without a completion */
    CHECK(cm_xfer_write_imm(b, pb, msrc, 0, &d2, n - 10, 11, 1, cq, 0) == CM_ERANGE);
    CHECK(cm_xfer_write_imm(b, pb, msrc, n - 10, &d2, 0, 11, 1, cq, 0) == CM_ERANGE);
    /* paged write: pages 3,1 of src into pages 0,5 of dst */
    uint32_t sp[2] = {3, 1}, dp[2] = {0, 5};
    memset(dst, 0, n);
    CHECK_OK(cm_xfer_write_paged(b, pb, msrc, sp, &d2, dp, 2, 4096, 77, cq, 99));
    CHECK_OK(cm_xfer_imm_wait(a, pa, 77, 1, 5000));
    CHECK(!memcmp(dst, src + 3 * 4096, 4096) && !memcmp(dst + 5 * 4096, src + 4096, 4096));
    CHECK(xt_drain(cq, 1, &err, 3000) == 1 && err == 0);
    cm_xfer_cq_destroy(b, cq);
    cm_xfer_mr_deregister(a, mdst);
    cm_xfer_mr_deregister(b, msrc);
    free(dst);
    free(src);
out:
    cm_xfer_destroy(b);
    cm_xfer_destroy(a);
}

/* Round trips with the waiting threads busy-polling (one side) and not
 * (the other), with a large write in between that turns busy-polling off
 * until small frames come again: every reply carries the sequence number
 * of its ping, so a lost, duplicated or stale landing shows; a wait with
 * nothing coming still times out on time. */
typedef struct pong_arg {
    cm_xfer *x;
    int peer, rounds, bad;
    uint8_t *in;             /* where pings land */
    const cm_xfer_mr *out_mr; /* reply source */
    uint8_t *out;
    cm_xfer_mr_desc back;     /* the pinger's region */
} pong_arg;

static void *pong_main(void *p) {
    pong_arg *a = p;
    cm_xfer_cq *cq = NULL;
    if (cm_xfer_cq_create(a->x, &cq)) {
        a->bad = 1;
        return NULL;
    }
    for (int i = 0; i < a->rounds && !a->bad; i++) {
        if (cm_xfer_imm_wait(a->x, a->peer, 1, 1, 5000)) {
            a->bad = 1;
            break;
        }
        uint32_t v;
        memcpy(&v, a->in, 4);
        if (v != (uint32_t)i) a->bad = 2;
        memcpy(a->out, &v, 4);
        if (cm_xfer_write_imm(a->x, a->peer, a->out_mr, 0, &a->back, 0, 4, 2, cq, (uint64_t)i)) a->bad = 3;
        cm_xfer_completion c[8];
        while (cm_xfer_cq_poll(cq, c, 8, 0) > 0) {
        }
    }
    cm_xfer_completion c[8];
    while (cm_xfer_cq_poll(cq, c, 8, 200) > 0) {
    }
    cm_xfer_cq_destroy(a->x, cq);
    return NULL;
}

TEST(round_trips_busy_poll) {
    cm_xfer_config ca, cb;
    cm_xfer_config_init(&ca);
    CHECK(ca.busy_poll_us == 50);
    ca.key = g_key;
    ca.listen = "127.0.0.1:0";
    ca.name = "pong";
    ca.busy_poll_us = 0;
    cb = ca;
    cb.listen = NULL;
    cb.name = "ping";
    cb.busy_poll_us = -1; /* the default */
    cm_xfer *a = NULL, *b = NULL;
    CHECK_OK(cm_xfer_create(&ca, &a));
    CHECK_OK(cm_xfer_create(&cb, &b));
    if (!a || !b) goto out;
    int pb;
    CHECK_OK(dial(b, port_of(a), 1, &pb));
    int pa = accepted_peer(a);
    CHECK(pa >= 0);
    enum { ROUNDS = 600, BIG = 1u << 20 };
    uint8_t *in_a = calloc(1, BIG), *out_a = calloc(1, 64), *in_b = calloc(1, 64), *out_b = calloc(1, BIG);
    cm_xfer_mr *m_in_a, *m_out_a, *m_in_b, *m_out_b;
    CHECK_OK(cm_xfer_mr_register(a, in_a, BIG, CM_XFER_MR_REMOTE_WRITE, &m_in_a));
    CHECK_OK(cm_xfer_mr_allow(a, m_in_a, pa));
    CHECK_OK(cm_xfer_mr_register(a, out_a, 64, 0, &m_out_a));
    CHECK_OK(cm_xfer_mr_register(b, in_b, 64, CM_XFER_MR_REMOTE_WRITE, &m_in_b));
    CHECK_OK(cm_xfer_mr_allow(b, m_in_b, pb));
    CHECK_OK(cm_xfer_mr_register(b, out_b, BIG, 0, &m_out_b));
    cm_xfer_mr_desc to_a, to_b;
    cm_xfer_mr_desc_get(m_in_a, &to_a);
    cm_xfer_mr_desc_get(m_in_b, &to_b);
    pong_arg arg = {.x = a, .peer = pa, .rounds = ROUNDS, .in = in_a, .out_mr = m_out_a, .out = out_a, .back = to_b};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, pong_main, &arg) == 0);
    cm_xfer_cq *cq;
    CHECK_OK(cm_xfer_cq_create(b, &cq));
    int wrong = 0, failed = 0;
    for (int i = 0; i < ROUNDS && !failed; i++) {
        if (i == ROUNDS / 2) {
            /* a large write: the receiver stops spinning until small frames return */
            memset(out_b, 0x5a, BIG);
            CHECK_OK(cm_xfer_write_imm(b, pb, m_out_b, 0, &to_a, 0, BIG, 7, cq, 1));
            CHECK_OK(cm_xfer_imm_wait(a, pa, 7, 1, 5000));
            CHECK(in_a[BIG - 1] == 0x5a && in_a[4096] == 0x5a);
        }
        uint32_t v = (uint32_t)i;
        memcpy(out_b, &v, 4);
        if (cm_xfer_write_imm(b, pb, m_out_b, 0, &to_a, 0, 4, 1, cq, 2) ||
            cm_xfer_imm_wait(b, pb, 2, 1, 5000)) {
            failed = 1;
            break;
        }
        uint32_t got;
        memcpy(&got, in_b, 4);
        wrong += got != v;
        /* the source may be rewritten only once the write completed */
        cm_xfer_completion c;
        if (cm_xfer_cq_poll(cq, &c, 1, 5000) != 1 || c.status) failed = 1;
        if (i == ROUNDS / 2 && !failed && cm_xfer_cq_poll(cq, &c, 1, 5000) != 1) failed = 1;
    }
    pthread_join(th, NULL);
    CHECK(!failed);
    CHECK(wrong == 0);
    CHECK(arg.bad == 0);
    /* nothing is coming: the spinning waiter still gives up on time */
    uint64_t t0 = cm_now_ns();
    CHECK(cm_xfer_imm_wait(b, pb, 2, 1, 100) == CM_ETIMEDOUT);
    uint64_t waited_ms = (cm_now_ns() - t0) / 1000000u;
    CHECK(waited_ms >= 90 && waited_ms < 2000);
    cm_xfer_cq_destroy(b, cq);
    cm_xfer_mr_deregister(a, m_in_a);
    cm_xfer_mr_deregister(a, m_out_a);
    cm_xfer_mr_deregister(b, m_in_b);
    cm_xfer_mr_deregister(b, m_out_b);
    free(in_a);
    free(out_a);
    free(in_b);
    free(out_b);
out:
    cm_xfer_destroy(b);
    cm_xfer_destroy(a);
}

TEST(send_recv_order) {
    cm_xfer *a = engine("127.0.0.1:0", "a", NULL, 0), *b = engine(NULL, "b", NULL, 0);
    if (!a || !b) {
        CHECK(0);
        goto out;
    }
    int pb;
    CHECK_OK(dial(b, port_of(a), 1, &pb));
    int pa = accepted_peer(a);
    enum { N = 200 };
    static uint32_t msgs[N], got[N + 1];
    for (int i = 0; i < N; i++) msgs[i] = 0xabc00000u + (uint32_t)i;
    cm_xfer_mr *ms, *mr;
    CHECK_OK(cm_xfer_mr_register(b, msgs, sizeof msgs, 0, &ms));
    CHECK_OK(cm_xfer_mr_register(a, got, sizeof got, 0, &mr));
    cm_xfer_cq *cqa, *cqb;
    CHECK_OK(cm_xfer_cq_create(a, &cqa));
    CHECK_OK(cm_xfer_cq_create(b, &cqb));
    /* half posted before, half arriving before any recv is posted */
    for (int i = 0; i < N / 2; i++) CHECK_OK(cm_xfer_recv_post(a, pa, mr, (size_t)i * 4, 4, cqa, (uint64_t)i));
    for (int i = 0; i < N; i++) CHECK_OK(cm_xfer_send(b, pb, ms, (size_t)i * 4, 4, cqb, (uint64_t)i));
    int err = 0;
    CHECK(xt_drain(cqb, N, &err, 3000) == N && err == 0);
    cm_sleep_ms(50);
    for (int i = N / 2; i < N; i++) CHECK_OK(cm_xfer_recv_post(a, CM_XFER_ANY_PEER, mr, (size_t)i * 4, 4, cqa, (uint64_t)i));
    cm_xfer_completion c[N];
    int k = xt_collect(cqa, c, N, 3000);
    CHECK(k == N);
    for (int i = 0; i < k; i++) CHECK(c[i].status == CM_OK && c[i].bytes == 4 && c[i].peer == pa);
    int in_order = 1;
    for (int i = 0; i < N; i++) in_order &= got[i] == msgs[i];
    CHECK_MSG(in_order, "messages arrived out of order");
    /* a message larger than the posted buffer completes with CM_ERANGE */
    CHECK_OK(cm_xfer_recv_post(a, pa, mr, N * 4, 2, cqa, 555));
    CHECK_OK(cm_xfer_send(b, pb, ms, 0, 4, cqb, 556));
    CHECK(cm_xfer_cq_poll(cqa, c, 1, 3000) == 1 && c[0].status == CM_ERANGE && c[0].user_data == 555);
    cm_xfer_cq_destroy(a, cqa);
    cm_xfer_cq_destroy(b, cqb);
    cm_xfer_mr_deregister(a, mr);
    cm_xfer_mr_deregister(b, ms);
out:
    cm_xfer_destroy(b);
    cm_xfer_destroy(a);
}

/* The race a backend meets: recv_begin says no recv is posted (CM_EAGAIN),
 * the application posts one, then the backend hands the message over as
 * unexpected. It must reach the waiting recv, not sit beside it. Driven
 * through the backend interface directly so the interleaving is exact. */
TEST(recv_posted_between_begin_and_unexpected) {
    cm_xfer *a = engine(NULL, "a", NULL, 0);
    if (!a) {
        CHECK(0);
        return;
    }
    static uint8_t buf[16];
    cm_xfer_mr *mr;
    cm_xfer_cq *cq;
    CHECK_OK(cm_xfer_mr_register(a, buf, sizeof buf, 0, &mr));
    CHECK_OK(cm_xfer_cq_create(a, &cq));
    const int peer = 0;
    uint8_t *dst;
    size_t cap;
    void *token;
    cm_xfer_completion c;
    /* fits: delivered into the posted buffer */
    CHECK(cm_xfer_core_recv_begin(a, peer, &dst, &cap, &token) == CM_EAGAIN);
    CHECK_OK(cm_xfer_recv_post(a, CM_XFER_ANY_PEER, mr, 0, 8, cq, 77));
    uint8_t *msg = malloc(5);
    memcpy(msg, "hello", 5);
    CHECK_OK(cm_xfer_core_recv_unexpected(a, peer, msg, 5));
    CHECK(cm_xfer_cq_poll(cq, &c, 1, 2000) == 1);
    CHECK(c.user_data == 77 && c.status == CM_OK && c.bytes == 5 && c.peer == peer);
    CHECK(memcmp(buf, "hello", 5) == 0);
    /* too large for the posted buffer: that recv completes with CM_ERANGE */
    CHECK(cm_xfer_core_recv_begin(a, peer, &dst, &cap, &token) == CM_EAGAIN);
    CHECK_OK(cm_xfer_recv_post(a, CM_XFER_ANY_PEER, mr, 8, 2, cq, 78));
    msg = malloc(4);
    memcpy(msg, "abcd", 4);
    CHECK_OK(cm_xfer_core_recv_unexpected(a, peer, msg, 4));
    CHECK(cm_xfer_cq_poll(cq, &c, 1, 2000) == 1);
    CHECK(c.user_data == 78 && c.status == CM_ERANGE && c.bytes == 0);
    /* no recv posted: the message is buffered for the next recv_post */
    msg = malloc(3);
    memcpy(msg, "xyz", 3);
    CHECK_OK(cm_xfer_core_recv_unexpected(a, peer, msg, 3));
    CHECK(cm_xfer_cq_poll(cq, &c, 1, 50) == 0);
    CHECK_OK(cm_xfer_recv_post(a, CM_XFER_ANY_PEER, mr, 8, 8, cq, 79));
    CHECK(cm_xfer_cq_poll(cq, &c, 1, 2000) == 1);
    CHECK(c.user_data == 79 && c.status == CM_OK && c.bytes == 3 && memcmp(buf + 8, "xyz", 3) == 0);
    cm_xfer_cq_destroy(a, cq);
    cm_xfer_mr_deregister(a, mr);
    cm_xfer_destroy(a);
}

struct writer_arg {
    cm_xfer *x;
    int peer;
    cm_xfer_mr *src;
    cm_xfer_mr_desc *dst;
    int ith, n_writes;
    int errors;
};

static void *writer_main(void *p) {
    struct writer_arg *w = p;
    cm_xfer_cq *cq;
    if (cm_xfer_cq_create(w->x, &cq)) return NULL;
    for (int i = 0; i < w->n_writes; i++) {
        size_t len = 1 + (size_t)((i * 7919 + w->ith * 104729) % 200000);
        size_t off = (size_t)w->ith * 262144;
        if (cm_xfer_write_imm(w->x, w->peer, w->src, off, w->dst, off, len, 42, cq, (uint64_t)i)) w->errors++;
    }
    int err = 0;
    if (xt_drain(cq, w->n_writes, &err, 20000) != w->n_writes) w->errors++;
    w->errors += err;
    cm_xfer_cq_destroy(w->x, cq);
    return NULL;
}

TEST(concurrent_writers_and_striping) {
    cm_xfer *a = engine("0.0.0.0:0", "a", NULL, 0), *b = engine(NULL, "b", NULL, 0);
    if (!a || !b) {
        CHECK(0);
        goto out;
    }
    int pb;
    int rc = dial(b, port_of(a), 2, &pb);
    CHECK_OK(rc);
    if (rc) goto out;
    int pa = accepted_peer(a);
    CHECK(pa >= 0);
    enum { T = 4, W = 150 };
    uint8_t *dst = calloc(1, 32u << 20), *src = malloc(32u << 20);
    for (size_t i = 0; i < (32u << 20); i++) src[i] = (uint8_t)(i ^ (i >> 9));
    cm_xfer_mr *md, *ms;
    CHECK_OK(cm_xfer_mr_register(a, dst, 32u << 20, CM_XFER_MR_REMOTE_WRITE | CM_XFER_MR_ANY_PEER, &md));
    CHECK_OK(cm_xfer_mr_register(b, src, 32u << 20, 0, &ms));
    cm_xfer_mr_desc d;
    cm_xfer_mr_desc_get(md, &d);
    pthread_t th[T];
    struct writer_arg wa[T];
    for (int i = 0; i < T; i++) {
        wa[i] = (struct writer_arg){b, pb, ms, &d, i, W, 0};
        pthread_create(&th[i], NULL, writer_main, &wa[i]);
    }
    for (int i = 0; i < T; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < T; i++) CHECK(wa[i].errors == 0);
    CHECK_OK(cm_xfer_imm_wait(a, pa, 42, (uint64_t)T * W, 10000));
    CHECK(cm_xfer_imm_poll(a, 42) == 0);
    for (int t = 0; t < T; t++) { /* each thread's longest write covers its prefix */
        size_t longest = 0;
        for (int i = 0; i < W; i++) {
            size_t len = 1 + (size_t)((i * 7919 + t * 104729) % 200000);
            if (len > longest) longest = len;
        }
        CHECK(!memcmp(dst + (size_t)t * 262144, src + (size_t)t * 262144, longest));
    }
    /* striping: a 32 MiB write goes over both links */
    cm_xfer_link_stats before[2], after[2];
    int nl = 0;
    CHECK_OK(cm_xfer_peer_links(b, pb, before, 2, &nl));
    CHECK(nl == 2);
    cm_xfer_cq *cq;
    CHECK_OK(cm_xfer_cq_create(b, &cq));
    memset(dst, 0, 32u << 20);
    for (int r = 0; r < 3; r++) CHECK_OK(cm_xfer_write_imm(b, pb, ms, 0, &d, 0, 32u << 20, 43, cq, 0));
    CHECK_OK(cm_xfer_imm_wait(a, pa, 43, 3, 20000));
    CHECK(!memcmp(dst, src, 32u << 20));
    int err = 0;
    CHECK(xt_drain(cq, 3, &err, 5000) == 3 && err == 0);
    CHECK_OK(cm_xfer_peer_links(b, pb, after, 2, &nl));
    uint64_t s0 = after[0].bytes_sent - before[0].bytes_sent, s1 = after[1].bytes_sent - before[1].bytes_sent;
    CHECK_MSG(s0 > (8u << 20) && s1 > (8u << 20), "link bytes %llu / %llu: not striped", (unsigned long long)s0,
              (unsigned long long)s1);
    fprintf(stderr, "  striping: link0 %.1f MiB link1 %.1f MiB, rate %.2f / %.2f Gbit/s\n", s0 / 1048576.0,
            s1 / 1048576.0, after[0].gbit_s_ewma, after[1].gbit_s_ewma);
    cm_xfer_cq_destroy(b, cq);
    cm_xfer_mr_deregister(a, md);
    cm_xfer_mr_deregister(b, ms);
    free(dst);
    free(src);
out:
    cm_xfer_destroy(b);
    cm_xfer_destroy(a);
}

TEST(wrong_key_refused) {
    cm_xfer_key other;
    cm_xfer_key_generate(&other);
    cm_xfer *a = engine("127.0.0.1:0", "a", NULL, 0), *b = engine(NULL, "b", &other, 0), *c = engine(NULL, "c", NULL, 0);
    if (!a || !b || !c) {
        CHECK(0);
        goto out;
    }
    int p;
    CHECK(dial(b, port_of(a), 1, &p) == CM_EAUTH);
    /* the right key still gets in afterwards */
    CHECK_OK(dial(c, port_of(a), 1, &p));
    cm_xfer_event ev;
    CHECK(cm_xfer_event_next(a, &ev, 3000) == CM_OK && ev.type == CM_XFER_EV_PEER_UP &&
          !strcmp(cm_xfer_peer_name(a, ev.peer), "c"));
out:
    cm_xfer_destroy(c);
    cm_xfer_destroy(b);
    cm_xfer_destroy(a);
}

/* ---- raw sockets speaking (or mis-speaking) the protocol ---- */

static int raw_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
        close(fd);
        return -1;
    }
    return fd;
}

static int read_n(int fd, uint8_t *p, size_t n) {
    size_t got = 0;
    while (got < n) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 3000) != 1) return -1;
        ssize_t r = recv(fd, p + got, n - got, 0);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

/* Authenticates like a real peer; returns the socket or -1. */
static int raw_auth(int port, const char *name) {
    int fd = raw_connect(port);
    if (fd < 0) return -1;
    cm_wire_hello me = {.role = 1, .link = 0, .sock = 0, .n_links = 1, .n_socks = 1, .instance = 77};
    randombytes_buf(me.nonce, sizeof me.nonce);
    snprintf(me.name, sizeof me.name, "%s", name);
    uint8_t ch[CM_WIRE_HELLO_BYTES], sh[CM_WIRE_HELLO_BYTES], pr[CM_WIRE_PROOF_BYTES], mac[32];
    cm_wire_hello_encode(&me, ch);
    if (send(fd, ch, sizeof ch, 0) != (ssize_t)sizeof ch || read_n(fd, sh, sizeof sh)) goto fail;
    cm_wire_auth_mac(&g_key, 1, ch, sh, mac);
    cm_wire_proof_encode(0, mac, pr);
    if (send(fd, pr, sizeof pr, 0) != (ssize_t)sizeof pr || read_n(fd, pr, sizeof pr)) goto fail;
    int verdict;
    if (cm_wire_proof_decode(pr, &verdict, mac) || verdict || cm_wire_auth_verify(&g_key, 2, ch, sh, mac)) goto fail;
    return fd;
fail:
    close(fd);
    return -1;
}

/* True when the engine closes the socket within 3 s. */
static int closed_by_engine(int fd) {
    uint8_t buf[4096];
    uint64_t end = cm_now_ns() + 3000000000ull;
    while (cm_now_ns() < end) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 100) == 1) {
            ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r <= 0) return 1;
        }
    }
    return 0;
}

static void send_frame(int fd, const cm_wire_hdr *h, const void *payload) {
    uint8_t hb[CM_WIRE_HDR_BYTES];
    cm_wire_hdr_encode(h, hb);
    ssize_t r = send(fd, hb, sizeof hb, MSG_NOSIGNAL);
    if (payload && h->payload_bytes) r = send(fd, payload, h->payload_bytes, MSG_NOSIGNAL);
    (void)r;
}

TEST(hostile_frames) {
    cm_xfer *a = engine("127.0.0.1:0", "a", NULL, 1500), *b = engine(NULL, "b", NULL, 0);
    if (!a || !b) {
        CHECK(0);
        goto out;
    }
    int port = port_of(a);
    uint8_t region[4096] = {0}, secret[4096] = {0};
    cm_xfer_mr *mr, *ms;
    CHECK_OK(cm_xfer_mr_register(a, region, sizeof region, CM_XFER_MR_REMOTE_WRITE | CM_XFER_MR_ANY_PEER, &mr));
    CHECK_OK(cm_xfer_mr_register(a, secret, sizeof secret, CM_XFER_MR_REMOTE_WRITE, &ms)); /* nobody allowed */
    cm_xfer_mr_desc d, ds;
    cm_xfer_mr_desc_get(mr, &d);
    cm_xfer_mr_desc_get(ms, &ds);

    /* garbage before authentication */
    int fd = raw_connect(port);
    uint8_t junk[300];
    randombytes_buf(junk, sizeof junk);
    CHECK(send(fd, junk, sizeof junk, MSG_NOSIGNAL) > 0);
    CHECK(closed_by_engine(fd));
    close(fd);
    /* a truncated hello, then silence: dropped at the handshake timeout */
    fd = raw_connect(port);
    CHECK(send(fd, "CMXH\x01", 5, MSG_NOSIGNAL) == 5);
    close(fd);
    /* a data frame before authentication is not accepted */
    fd = raw_connect(port);
    cm_wire_hdr wh = {.type = CM_WIRE_WRITE, .payload_bytes = 16, .region_id = d.region_id, .n_segs = 1, .imm = 5};
    send_frame(fd, &wh, junk);
    CHECK(closed_by_engine(fd));
    close(fd);
    CHECK(region[0] == 0 && cm_xfer_imm_poll(a, 5) == 0);

    /* authenticated, then: a valid write lands */
    fd = raw_auth(port, "raw");
    CHECK(fd >= 0);
    send_frame(fd, &wh, junk);
    uint64_t end = cm_now_ns() + 3000000000ull;
    while (cm_xfer_imm_poll(a, 5) == 0 && cm_now_ns() < end) cm_sleep_ms(5);
    CHECK(cm_xfer_imm_poll(a, 5) == 1 && !memcmp(region, junk, 16));
    /* out of bounds: closed, nothing written past the region */
    cm_wire_hdr oob = wh;
    oob.dst_off = 4090;
    send_frame(fd, &oob, junk);
    CHECK(closed_by_engine(fd));
    close(fd);
    struct {
        const char *what;
        cm_wire_hdr h;
        int with_payload;
    } bad[] = {
        {"region not allowed for this peer", {CM_WIRE_WRITE, 16, 1, ds.region_id, 6, 0, 1}, 1},
        {"unregistered region", {CM_WIRE_WRITE, 16, 1, 0x7ffff001u, 6, 0, 1}, 1},
        {"offset overflow", {CM_WIRE_WRITE, 16, 1, 0, 6, UINT64_MAX - 4, 1}, 1},
        {"zero segments", {CM_WIRE_WRITE, 16, 1, 0, 6, 0, 0}, 1},
        {"huge message", {CM_WIRE_SEND, 0x7fffffffu, 1, 0, 0, 0, 0}, 0},
        {"unknown type", {9, 0, 0, 0, 0, 0, 0}, 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        fd = raw_auth(port, "raw");
        CHECK(fd >= 0);
        cm_wire_hdr h = bad[i].h;
        if (i == 2 || i == 3) h.region_id = d.region_id;
        uint8_t hb[CM_WIRE_HDR_BYTES];
        cm_wire_hdr_encode(&h, hb);
        if (i == 5) hb[1] = 9;
        CHECK(send(fd, hb, sizeof hb, MSG_NOSIGNAL) == (ssize_t)sizeof hb);
        if (bad[i].with_payload) send(fd, junk, 16, MSG_NOSIGNAL);
        CHECK_MSG(closed_by_engine(fd), "%s: connection not closed", bad[i].what);
        close(fd);
    }
    /* a truncated frame: half a header then close; and half a payload */
    fd = raw_auth(port, "raw");
    uint8_t hb[CM_WIRE_HDR_BYTES];
    cm_wire_hdr_encode(&wh, hb);
    CHECK(send(fd, hb, 20, MSG_NOSIGNAL) == 20);
    close(fd);
    fd = raw_auth(port, "raw");
    CHECK(send(fd, hb, sizeof hb, MSG_NOSIGNAL) == sizeof hb && send(fd, junk, 5, MSG_NOSIGNAL) == 5);
    close(fd);
    /* a multi-segment write whose segments disagree */
    fd = raw_auth(port, "raw");
    cm_wire_hdr s1 = {.type = CM_WIRE_WRITE, .payload_bytes = 8, .id = 9, .region_id = d.region_id, .imm = 8, .n_segs = 3};
    send_frame(fd, &s1, junk);
    s1.n_segs = 2;
    send_frame(fd, &s1, junk);
    CHECK(closed_by_engine(fd));
    close(fd);
    cm_sleep_ms(100);
    for (size_t i = 0; i < sizeof secret; i++)
        if (secret[i]) {
            CHECK_MSG(0, "protected region was written at %zu", i);
            break;
        }
    CHECK(cm_xfer_imm_poll(a, 6) == 0 && cm_xfer_imm_poll(a, 8) == 0);
    /* after all that the engine still serves a real peer */
    int pb;
    CHECK_OK(dial(b, port, 1, &pb));
    uint8_t src[64];
    memset(src, 0x5a, sizeof src);
    cm_xfer_mr *msrc;
    CHECK_OK(cm_xfer_mr_register(b, src, sizeof src, 0, &msrc));
    CHECK_OK(cm_xfer_write_imm(b, pb, msrc, 0, &d, 100, 64, 9, NULL, 0));
    CHECK_OK(cm_xfer_imm_wait(a, CM_XFER_ANY_PEER, 9, 1, 3000));
    CHECK(region[100] == 0x5a && region[163] == 0x5a);
    cm_xfer_mr_deregister(b, msrc);
    cm_xfer_mr_deregister(a, mr);
    cm_xfer_mr_deregister(a, ms);
out:
    cm_xfer_destroy(b);
    cm_xfer_destroy(a);
}

/* ---- a peer in another process ---- */

/* Child: an engine listening on `port` (0: any) that tells the parent its
 * port through `pfd`, sends its region descriptor to whoever connects, then
 * serves until killed. Never returns. */
static void child_server(int port, int pfd) {
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    cm_xfer *x = engine(listen, "child", NULL, 1000);
    if (!x) _exit(2);
    int p = port_of(x);
    if (write(pfd, &p, sizeof p) != sizeof p) _exit(3);
    size_t n = 64u << 20;
    uint8_t *buf = malloc(n);
    cm_xfer_mr *mr;
    if (cm_xfer_mr_register(x, buf, n, CM_XFER_MR_REMOTE_WRITE | CM_XFER_MR_ANY_PEER, &mr)) _exit(4);
    cm_xfer_mr_desc d;
    cm_xfer_mr_desc_get(mr, &d);
    static uint8_t wire[CM_XFER_MR_DESC_WIRE_BYTES];
    size_t wn;
    cm_xfer_mr_desc_encode(&d, wire, sizeof wire, &wn);
    cm_xfer_mr *mw;
    cm_xfer_mr_register(x, wire, sizeof wire, 0, &mw);
    for (;;) {
        cm_xfer_event ev;
        if (cm_xfer_event_next(x, &ev, -1)) _exit(5);
        if (ev.type == CM_XFER_EV_PEER_UP) cm_xfer_send(x, ev.peer, mw, 0, wn, NULL, 0);
    }
}

static pid_t spawn_server(int port, int *got_port) {
    int pfd[2];
    if (pipe(pfd)) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        child_server(port, pfd[1]);
    }
    close(pfd[1]);
    struct pollfd pf = {pfd[0], POLLIN, 0};
    int p = -1;
    if (poll(&pf, 1, 5000) != 1 || read(pfd[0], &p, sizeof p) != sizeof p) p = -1;
    close(pfd[0]);
    *got_port = p;
    return pid;
}

static int fetch_desc(cm_xfer *x, int peer, cm_xfer_mr_desc *d) {
    static uint8_t wire[CM_XFER_MR_DESC_WIRE_BYTES];
    cm_xfer_mr *mw;
    cm_xfer_cq *cq;
    cm_xfer_mr_register(x, wire, sizeof wire, 0, &mw);
    cm_xfer_cq_create(x, &cq);
    int rc = cm_xfer_recv_post(x, peer, mw, 0, sizeof wire, cq, 0);
    cm_xfer_completion c;
    if (!rc) rc = cm_xfer_cq_poll(cq, &c, 1, 5000) == 1 ? c.status : CM_ETIMEDOUT;
    if (!rc) rc = cm_xfer_mr_desc_decode(wire, c.bytes, d);
    cm_xfer_cq_destroy(x, cq);
    cm_xfer_mr_deregister(x, mw);
    return rc;
}

/* Writes keep 4 MiB frames in flight to a child process that is stopped
 * (a link going silent), then restarted and killed; every write completes,
 * with an error after the failure, within a bounded time. */
TEST(peer_killed_mid_transfer_and_reconnect) {
    int port;
    pid_t child = spawn_server(0, &port);
    CHECK(child > 0 && port > 0);
    if (child <= 0 || port <= 0) return;
    cm_xfer *x = engine(NULL, "parent", NULL, 1000);
    cm_xfer *other = engine("127.0.0.1:0", "other", NULL, 1000);
    int peer = -1;
    CHECK_OK(dial(x, port, 1, &peer));
    cm_xfer_mr_desc d;
    CHECK_OK(fetch_desc(x, peer, &d));
    size_t n = 4u << 20;
    uint8_t *src = calloc(1, n);
    cm_xfer_mr *ms;
    CHECK_OK(cm_xfer_mr_register(x, src, n, 0, &ms));
    cm_xfer_cq *cq;
    CHECK_OK(cm_xfer_cq_create(x, &cq));

    /* 1. the child stops answering (like a cut link): error within the timeout */
    int issued = 0, done = 0, errs = 0;
    for (int i = 0; i < 8; i++) issued += cm_xfer_write_imm(x, peer, ms, 0, &d, 0, n, 1, cq, 0) == CM_OK;
    kill(child, SIGSTOP);
    uint64_t t0 = cm_now_ns();
    for (int i = 0; i < 200 && cm_xfer_peer_status(x, peer) == CM_OK; i++) {
        if (cm_xfer_write_imm(x, peer, ms, 0, &d, 0, n, 1, cq, 0) == CM_OK) issued++;
        cm_xfer_completion c[16];
        int k = cm_xfer_cq_poll(cq, c, 16, 20);
        for (int j = 0; j < k; j++) done++, errs += c[j].status != CM_OK;
    }
    double stall_ms = (double)(cm_now_ns() - t0) / 1e6;
    CHECK(cm_xfer_peer_status(x, peer) != CM_OK);
    CHECK_MSG(stall_ms < 3000, "stopped peer noticed after %.0f ms (timeout 1000)", stall_ms);
    fprintf(stderr, "  stopped peer detected after %.0f ms\n", stall_ms);
    CHECK(cm_xfer_imm_wait(x, peer, 3, 1, 5000) == CM_EPEER);
    done += xt_drain(cq, issued - done, &errs, 5000);
    CHECK_MSG(done == issued, "%d of %d writes completed", done, issued);
    CHECK(errs > 0);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);

    /* 2. restart on the same port, reconnect, then kill mid-transfer */
    int port2;
    child = spawn_server(port, &port2);
    CHECK(port2 == port);
    CHECK_OK(cm_xfer_reconnect(x, peer, 3000));
    CHECK_OK(fetch_desc(x, peer, &d));
    CHECK(cm_xfer_peer_status(x, peer) == CM_OK);
    issued = done = errs = 0;
    for (int i = 0; i < 8; i++) issued += cm_xfer_write_imm(x, peer, ms, 0, &d, 0, n, 1, cq, 0) == CM_OK;
    kill(child, SIGKILL);
    t0 = cm_now_ns();
    while (cm_xfer_peer_status(x, peer) == CM_OK && cm_now_ns() - t0 < 5000000000ull) {
        if (cm_xfer_write_imm(x, peer, ms, 0, &d, 0, n, 1, cq, 0) == CM_OK) issued++;
        cm_xfer_completion c[16];
        int k = cm_xfer_cq_poll(cq, c, 16, 10);
        for (int j = 0; j < k; j++) done++, errs += c[j].status != CM_OK;
    }
    double kill_ms = (double)(cm_now_ns() - t0) / 1e6;
    CHECK_MSG(kill_ms < 2000, "killed peer noticed after %.0f ms", kill_ms);
    fprintf(stderr, "  killed peer detected after %.0f ms\n", kill_ms);
    done += xt_drain(cq, issued - done, &errs, 5000);
    CHECK(done == issued);
    waitpid(child, NULL, 0);
    cm_xfer_event ev;
    int downs = 0;
    while (cm_xfer_event_next(x, &ev, 0) == CM_OK) downs += ev.type == CM_XFER_EV_PEER_DOWN && ev.peer == peer;
    CHECK(downs == 2);

    /* 3. the engine still works with another peer */
    int p2;
    CHECK_OK(dial(x, port_of(other), 1, &p2));
    uint8_t r[16] = {0};
    cm_xfer_mr *mo;
    CHECK_OK(cm_xfer_mr_register(other, r, sizeof r, CM_XFER_MR_REMOTE_WRITE | CM_XFER_MR_ANY_PEER, &mo));
    cm_xfer_mr_desc od;
    cm_xfer_mr_desc_get(mo, &od);
    src[0] = 0x33;
    CHECK_OK(cm_xfer_write_imm(x, p2, ms, 0, &od, 0, 16, 2, cq, 0));
    CHECK_OK(cm_xfer_imm_wait(other, CM_XFER_ANY_PEER, 2, 1, 3000));
    CHECK(r[0] == 0x33);
    xt_drain(cq, 1, NULL, 2000);
    cm_xfer_mr_deregister(other, mo);
    cm_xfer_cq_destroy(x, cq);
    cm_xfer_mr_deregister(x, ms);
    cm_xfer_destroy(x);
    cm_xfer_destroy(other);
    free(src);
}

/* A waiter spinning in recv() on its peer's socket (tcp: the direct
 * busy-poll after small frames, or the blocking recv() without busy
 * polling) when the peer goes away: it returns
 * CM_EPEER at once, not at its timeout, and the socket's teardown while it
 * spins is clean (the ASan build checks the memory side). Then the same
 * with the waiter's own engine failing the peer from another thread. */
typedef struct waiter_arg {
    cm_xfer *x;
    int peer, rc;
    double ms;
} waiter_arg;

static void *waiter_main(void *p) {
    waiter_arg *w = p;
    uint64_t t0 = cm_now_ns();
    w->rc = cm_xfer_imm_wait(w->x, w->peer, 9, 1, 5000);
    w->ms = (double)(cm_now_ns() - t0) / 1e6;
    return NULL;
}

TEST(spinning_waiter_peer_gone) {
    for (int round = 0; round < 8; round++) {
        cm_xfer_config ca, cb;
        cm_xfer_config_init(&ca);
        ca.key = g_key;
        ca.listen = "127.0.0.1:0";
        ca.name = "gone";
        cb = ca;
        cb.listen = NULL;
        cb.name = "waiter";
        /* long spins, the peer leaves during one; then no spinning: the
         * waiter sleeps in recv() on that socket instead (tcp, Linux) */
        cb.busy_poll_us = round < 4 ? 10000 : 0;
        cm_xfer *a = NULL, *b = NULL;
        CHECK_OK(cm_xfer_create(&ca, &a));
        CHECK_OK(cm_xfer_create(&cb, &b));
        if (!a || !b) {
            cm_xfer_destroy(b);
            cm_xfer_destroy(a);
            return;
        }
        int pb = -1;
        CHECK_OK(dial(b, port_of(a), 1, &pb));
        int pa = accepted_peer(a);
        CHECK(pa >= 0);
        static uint8_t in_b[64], out_a[64];
        cm_xfer_mr *m_in_b, *m_out_a;
        CHECK_OK(cm_xfer_mr_register(b, in_b, sizeof in_b, CM_XFER_MR_REMOTE_WRITE, &m_in_b));
        CHECK_OK(cm_xfer_mr_allow(b, m_in_b, pb));
        CHECK_OK(cm_xfer_mr_register(a, out_a, sizeof out_a, 0, &m_out_a));
        cm_xfer_mr_desc to_b;
        cm_xfer_mr_desc_get(m_in_b, &to_b);
        cm_xfer_cq *cq;
        CHECK_OK(cm_xfer_cq_create(a, &cq));
        /* small frames first, so b's waiter takes the direct path */
        for (int i = 0; i < 20; i++) {
            CHECK_OK(cm_xfer_write_imm(a, pa, m_out_a, 0, &to_b, 0, 8, 8, cq, 0));
            CHECK_OK(cm_xfer_imm_wait(b, pb, 8, 1, 5000));
        }
        CHECK(xt_drain(cq, 20, NULL, 5000) == 20);
        waiter_arg w = {.x = b, .peer = pb, .rc = 1};
        pthread_t th;
        CHECK(pthread_create(&th, NULL, waiter_main, &w) == 0);
        struct timespec ts = {0, 2000000 + (round % 4) * 1500000};
        nanosleep(&ts, NULL);
        if (round % 2 == 0) {
            cm_xfer_destroy(a); /* the peer leaves: EOF on the spun socket */
            cm_xfer_cq_destroy(a, cq); /* after its engine (xfer.h) */
            a = NULL;
        } else {
            cm_xfer_disconnect(b, pb); /* b fails the peer itself, from this thread */
        }
        pthread_join(th, NULL);
        CHECK_MSG(w.rc == CM_EPEER || w.rc == CM_ECLOSED, "round %d: waiter got %d", round, w.rc);
        CHECK_MSG(w.ms < 2000, "round %d: waiter returned after %.0f ms", round, w.ms);
        cm_xfer_mr_deregister(b, m_in_b);
        cm_xfer_destroy(b);
        if (a) {
            cm_xfer_destroy(a);
            cm_xfer_cq_destroy(a, cq);
        }
    }
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0) return 1;
    cm_xfer_key_generate(&g_key);
    RUN(key_text);
    RUN(write_imm_and_counters);
    RUN(round_trips_busy_poll);
    RUN(send_recv_order);
    RUN(recv_posted_between_begin_and_unexpected);
    RUN(concurrent_writers_and_striping);
    RUN(wrong_key_refused);
    RUN(hostile_frames);
    RUN(peer_killed_mid_transfer_and_reconnect);
    RUN(spinning_waiter_peer_gone);
    return test_summary();
}
