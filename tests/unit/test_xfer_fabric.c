/* test_xfer_fabric.c - the fabric (libfabric) backend over loopback with
 * whatever software provider libfabric offers here (FI_PROVIDER picks one):
 * write_imm lands the right bytes and counts once per write (one segment,
 * many segments, zero bytes, many writes in flight), send/recv in order with
 * multi-fragment messages and a too-small buffer, the wire encodings of the
 * backend, a wrong cell key refused, writes outside a region refused by the
 * provider, and a peer process killed mid-transfer failing the waiting side
 * within a bounded time while the engine keeps working; the data-path tests
 * run twice, the second time on the FI_MR_LOCAL path. Skips, saying why,
 * when libfabric is not built in or no provider fits. */
#include <signal.h>
#include <sodium.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/status.h"
#include "base/time.h"
#include "test.h"
#include "xfer/backend.h"
#include "xfer/fabric_proto.h"
#include "xfer/xfer.h"
#include "xfer_util.h"

static cm_xfer_key g_key;
static char g_skip[300];

static cm_xfer *engine(const char *listen, const cm_xfer_key *key, int timeout_ms) {
    cm_xfer_config cfg;
    xt_config(&cfg, "fabric", key ? key : &g_key);
    cfg.listen = listen;
    cfg.chunk_bytes = 64 << 10;
    if (timeout_ms) cfg.peer_timeout_ms = timeout_ms, cfg.heartbeat_ms = timeout_ms / 5;
    cm_xfer *x = NULL;
    int rc = cm_xfer_create(&cfg, &x);
    if (rc) fprintf(stderr, "cm_xfer_create: %s\n", cm_last_error(rc));
    return x;
}

static int dial(cm_xfer *x, cm_xfer *server, int *peer) { return xt_dial(x, server, 5000, peer); }

static int accepted_peer(cm_xfer *x) { return xt_peer_up(x, 5000); }

/* Passes a descriptor the way an application does: through its wire form. */
static cm_xfer_mr_desc desc_through_wire(const cm_xfer_mr *mr) {
    cm_xfer_mr_desc d, back;
    uint8_t wire[CM_XFER_MR_DESC_WIRE_BYTES];
    size_t n = 0;
    cm_xfer_mr_desc_get(mr, &d);
    memset(&back, 0xee, sizeof back);
    if (cm_xfer_mr_desc_encode(&d, wire, sizeof wire, &n) || cm_xfer_mr_desc_decode(wire, n, &back)) memset(&back, 0, sizeof back);
    return back;
}

TEST(wire_encodings) {
    uint8_t buf[CM_FABRIC_FRAG_HDR + 100];
    cm_fabric_frag f;
    cm_fabric_frag_encode(buf, 7, 100, 0);
    memset(buf + CM_FABRIC_FRAG_HDR, 0x5a, 100);
    CHECK_OK(cm_fabric_frag_decode(buf, sizeof buf, 7, 0, 0, 0, &f));
    CHECK(f.total == 100 && f.bytes == 100 && f.offset == 0 && f.payload == buf + CM_FABRIC_FRAG_HDR);
    CHECK(cm_fabric_frag_decode(buf, sizeof buf, 8, 0, 0, 0, &f) == CM_EFORMAT);      /* lost fragment */
    CHECK(cm_fabric_frag_decode(buf, sizeof buf - 1, 7, 0, 0, 0, &f) == CM_EFORMAT);  /* short payload */
    CHECK(cm_fabric_frag_decode(buf, 10, 7, 0, 0, 0, &f) == CM_EFORMAT);              /* short header */
    CHECK(cm_fabric_frag_decode(buf, sizeof buf, 7, 1, 100, 0, &f) == CM_OK);
    CHECK(cm_fabric_frag_decode(buf, sizeof buf, 7, 1, 200, 0, &f) == CM_EFORMAT);    /* other message */
    cm_fabric_frag_encode(buf, 7, CM_XFER_MAX_MSG_BYTES + 1u, 0);
    CHECK(cm_fabric_frag_decode(buf, sizeof buf, 7, 0, 0, 0, &f) == CM_EFORMAT);      /* too large */
    cm_fabric_frag_encode(buf, 7, 3 * CM_FABRIC_FRAG_BYTES, CM_FABRIC_FRAG_BYTES);
    CHECK(cm_fabric_frag_decode(buf, sizeof buf, 7, 0, 0, 0, &f) == CM_EFORMAT);      /* starts mid-message */
    buf[0] = 'X';
    CHECK(cm_fabric_frag_decode(buf, sizeof buf, 7, 0, 0, 0, &f) == CM_EFORMAT);

    uint8_t msg[CM_FABRIC_ADDR_MSG_BYTES], addr[CM_FABRIC_ADDR_MAX], in[16];
    size_t n = 0;
    for (int i = 0; i < 16; i++) in[i] = (uint8_t)(i * 7 + 1);
    cm_fabric_addr_encode(in, 16, msg);
    CHECK_OK(cm_fabric_addr_decode(msg, addr, &n));
    CHECK(n == 16 && !memcmp(addr, in, 16));
    msg[8 + 20] = 1; /* a byte after the address */
    CHECK(cm_fabric_addr_decode(msg, addr, &n) == CM_EFORMAT);
    cm_fabric_addr_encode(in, 16, msg);
    msg[4] = 0xff, msg[5] = 0xff; /* length beyond the buffer */
    CHECK(cm_fabric_addr_decode(msg, addr, &n) == CM_EFORMAT);
}

TEST(write_imm_lands_and_counts) {
    if (g_skip[0]) TEST_SKIP("%s", g_skip);
    cm_xfer *a = engine("127.0.0.1:0", NULL, 0), *b = engine(NULL, NULL, 0);
    CHECK(a && b);
    if (!a || !b) goto out_engines;
    CHECK(!strcmp(cm_xfer_backend_name(a), "fabric"));
    int pa = -1, pb = -1;
    CHECK_OK(dial(b, a, &pa));
    pb = accepted_peer(a);
    CHECK(pb >= 0);
    size_t region_bytes = 4u << 20;
    uint8_t *dst = calloc(1, region_bytes), *src = malloc(region_bytes);
    for (size_t i = 0; i < region_bytes; i++) src[i] = (uint8_t)(i * 131 + (i >> 13));
    cm_xfer_mr *mdst = NULL, *msrc = NULL;
    CHECK_OK(cm_xfer_mr_register(a, dst, region_bytes, CM_XFER_MR_REMOTE_WRITE, &mdst));
    CHECK_OK(cm_xfer_mr_allow(a, mdst, pb));
    CHECK_OK(cm_xfer_mr_register(b, src, region_bytes, 0, &msrc));
    cm_xfer_mr_desc d = desc_through_wire(mdst);
    CHECK(d.n_rkeys == 1);
    cm_xfer_cq *cq = NULL;
    cm_xfer_cq_create(b, &cq);

    /* one segment, many segments (1 MiB in 64 KiB chunks), zero bytes */
    CHECK_OK(cm_xfer_write_imm(b, pa, msrc, 0, &d, 0, 1000, 7, cq, 1));
    CHECK_OK(cm_xfer_write_imm(b, pa, msrc, 4096, &d, 65536, 1u << 20, 7, cq, 2));
    CHECK_OK(cm_xfer_write_imm(b, pa, NULL, 0, &d, 0, 0, 7, cq, 3));
    int errs = 0;
    CHECK(xt_drain(cq, 3, &errs, 5000) == 3);
    CHECK(errs == 0);
    CHECK_OK(cm_xfer_imm_wait(a, pb, 7, 3, 5000));
    CHECK(cm_xfer_imm_poll(a, 7) == 0); /* exactly one per write */
    CHECK(!memcmp(dst, src, 1000));
    CHECK(dst[1000] == 0);
    CHECK(!memcmp(dst + 65536, src + 4096, 1u << 20));
    CHECK(dst[65535] == 0 && dst[65536 + (1u << 20)] == 0);

    /* many writes in flight, two immediates, any order of landing */
    memset(dst, 0, region_bytes);
    const int n = 300;
    for (int i = 0; i < n; i++)
        CHECK_OK(cm_xfer_write_imm(b, pa, msrc, (size_t)i * 8192, &d, (uint64_t)i * 8192, 8192, i % 2 ? 11 : 12, cq, 10));
    errs = 0;
    CHECK(xt_drain(cq, n, &errs, 10000) == n);
    CHECK(errs == 0);
    CHECK_OK(cm_xfer_imm_wait(a, pb, 11, n / 2, 5000));
    CHECK_OK(cm_xfer_imm_wait(a, pb, 12, n / 2, 5000));
    CHECK(!memcmp(dst, src, (size_t)n * 8192));

    /* paged write: pages land where the index says; one count */
    uint32_t sp[3] = {5, 0, 9}, dp[3] = {1, 7, 3};
    memset(dst, 0, region_bytes);
    CHECK_OK(cm_xfer_write_paged(b, pa, msrc, sp, &d, dp, 3, 4096, 13, cq, 20));
    CHECK_OK(cm_xfer_imm_wait(a, pb, 13, 1, 5000));
    for (int i = 0; i < 3; i++) CHECK(!memcmp(dst + dp[i] * 4096, src + sp[i] * 4096, 4096));
    CHECK(xt_drain(cq, 1, NULL, 2000) == 1);

    cm_xfer_cq_destroy(b, cq);
    cm_xfer_mr_deregister(a, mdst);
    cm_xfer_mr_deregister(b, msrc);
    free(dst);
    free(src);
out_engines:
    cm_xfer_destroy(b);
    cm_xfer_destroy(a);
}

TEST(send_recv_in_order) {
    if (g_skip[0]) TEST_SKIP("%s", g_skip);
    cm_xfer *a = engine("127.0.0.1:0", NULL, 0), *b = engine(NULL, NULL, 0);
    CHECK(a && b);
    if (!a || !b) goto out;
    int pa = -1;
    CHECK_OK(dial(b, a, &pa));
    int pb = accepted_peer(a);
    CHECK(pb >= 0);
    size_t big = 200000 + 13; /* several fragments, a runt at the end */
    uint8_t *sbuf = malloc(big), *rbuf = calloc(1, 3 * big);
    for (size_t i = 0; i < big; i++) sbuf[i] = (uint8_t)(i ^ (i >> 9));
    cm_xfer_mr *ms = NULL, *mr = NULL;
    CHECK_OK(cm_xfer_mr_register(b, sbuf, big, 0, &ms));
    CHECK_OK(cm_xfer_mr_register(a, rbuf, 3 * big, 0, &mr));
    cm_xfer_cq *cqa = NULL, *cqb = NULL;
    cm_xfer_cq_create(a, &cqa);
    cm_xfer_cq_create(b, &cqb);
    /* one recv posted before, the rest after the messages were sent */
    CHECK_OK(cm_xfer_recv_post(a, pb, mr, 0, 64, cqa, 100));
    CHECK_OK(cm_xfer_send(b, pa, ms, 0, 10, cqb, 1));
    CHECK_OK(cm_xfer_send(b, pa, ms, 0, big, cqb, 2));
    CHECK_OK(cm_xfer_send(b, pa, ms, 0, 0, cqb, 3));
    CHECK_OK(cm_xfer_send(b, pa, ms, 0, 100, cqb, 4)); /* lands in a 50-byte buffer */
    int errs = 0;
    CHECK(xt_drain(cqb, 4, &errs, 5000) == 4);
    CHECK(errs == 0);
    cm_xfer_completion c[4];
    CHECK(cm_xfer_cq_poll(cqa, c, 1, 5000) == 1);
    CHECK(c[0].user_data == 100 && c[0].status == CM_OK && c[0].bytes == 10 && c[0].peer == pb);
    CHECK_OK(cm_xfer_recv_post(a, CM_XFER_ANY_PEER, mr, 64, 2 * big, cqa, 101));
    CHECK_OK(cm_xfer_recv_post(a, pb, mr, 64 + 2 * big, 16, cqa, 102));
    CHECK_OK(cm_xfer_recv_post(a, pb, mr, 64 + 2 * big + 16, 50, cqa, 103));
    int got = xt_collect(cqa, c, 3, 5000);
    CHECK_MSG(got == 3, "%d recvs completed (first: %llu, status %d)", got, got ? (unsigned long long)c[0].user_data : 0ull,
              got ? c[0].status : 0);
    if (got == 3) {
        CHECK(c[0].user_data == 101 && c[0].status == CM_OK && c[0].bytes == big);
        CHECK(c[1].user_data == 102 && c[1].status == CM_OK && c[1].bytes == 0);
        CHECK(c[2].user_data == 103 && c[2].status == CM_ERANGE);
    }
    CHECK(!memcmp(rbuf, sbuf, 10));
    CHECK(!memcmp(rbuf + 64, sbuf, big));
    cm_xfer_cq_destroy(a, cqa);
    cm_xfer_cq_destroy(b, cqb);
    cm_xfer_mr_deregister(b, ms);
    cm_xfer_mr_deregister(a, mr);
    free(sbuf);
    free(rbuf);
out:
    cm_xfer_destroy(b);
    cm_xfer_destroy(a);
}

TEST(wrong_key_refused) {
    if (g_skip[0]) TEST_SKIP("%s", g_skip);
    cm_xfer_key other;
    cm_xfer_key_generate(&other);
    cm_xfer *a = engine("127.0.0.1:0", NULL, 0), *b = engine(NULL, &other, 0);
    CHECK(a && b);
    if (a && b) {
        int p = -1;
        CHECK(dial(b, a, &p) == CM_EAUTH);
        cm_xfer_event ev;
        CHECK(cm_xfer_event_next(a, &ev, 300) == CM_ETIMEDOUT); /* no peer came up */
        /* the listener still serves the right key afterwards */
        cm_xfer *c = engine(NULL, NULL, 0);
        CHECK(c && dial(c, a, &p) == CM_OK);
        cm_xfer_destroy(c);
    }
    cm_xfer_destroy(b);
    cm_xfer_destroy(a);
}

/* A descriptor forged to reach past the region, or a key for memory that
 * was registered local-only: the provider must refuse, nothing lands past
 * the region, no counter moves. */
TEST(out_of_bounds_refused) {
    if (g_skip[0]) TEST_SKIP("%s", g_skip);
    cm_xfer *a = engine("127.0.0.1:0", NULL, 2000), *b = engine(NULL, NULL, 2000);
    CHECK(a && b);
    if (!a || !b) goto out;
    int pa = -1;
    CHECK_OK(dial(b, a, &pa));
    int pb = accepted_peer(a);
    uint8_t *mem = calloc(1, 3 * 4096), *src = malloc(8192);
    memset(src, 0x77, 8192);
    cm_xfer_mr *mdst = NULL, *mloc = NULL, *msrc = NULL;
    CHECK_OK(cm_xfer_mr_register(a, mem, 4096, CM_XFER_MR_REMOTE_WRITE | CM_XFER_MR_ANY_PEER, &mdst));
    CHECK_OK(cm_xfer_mr_register(a, mem + 8192, 4096, CM_XFER_MR_LOCAL, &mloc));
    CHECK_OK(cm_xfer_mr_register(b, src, 8192, 0, &msrc));
    cm_xfer_cq *cq = NULL;
    cm_xfer_cq_create(b, &cq);
    cm_xfer_mr_desc d = desc_through_wire(mdst);
    CHECK(cm_xfer_write_imm(b, pa, msrc, 0, &d, 4000, 200, 21, cq, 1) == CM_ERANGE); /* checked locally */
    d.bytes = 8192; /* forged */
    CHECK_OK(cm_xfer_write_imm(b, pa, msrc, 0, &d, 4096, 4096, 21, cq, 2));
    cm_xfer_completion c;
    CHECK(cm_xfer_cq_poll(cq, &c, 1, 5000) == 1);
    CHECK(c.status != CM_OK);
    /* a refused write fails the peer (the provider's connection is gone):
     * it is down by the time the failed completion is seen */
    CHECK_MSG(cm_xfer_peer_status(b, pa) != CM_OK, "completion status %d", c.status);
    CHECK_OK(cm_xfer_reconnect(b, pa, 5000));
    cm_xfer_mr_desc l = desc_through_wire(mloc);
    CHECK_OK(cm_xfer_write_imm(b, pa, msrc, 0, &l, 0, 100, 21, cq, 3));
    CHECK(cm_xfer_cq_poll(cq, &c, 1, 5000) == 1);
    CHECK(c.status != CM_OK);
    cm_sleep_ms(100);
    for (int i = 4096; i < 3 * 4096; i++)
        if (mem[i]) {
            CHECK_MSG(0, "byte %d outside the writable region was written", i);
            break;
        }
    CHECK(cm_xfer_imm_poll(a, 21) == 0);
    (void)pb;
    cm_xfer_cq_destroy(b, cq);
    cm_xfer_mr_deregister(a, mdst);
    cm_xfer_mr_deregister(a, mloc);
    cm_xfer_mr_deregister(b, msrc);
    free(mem);
    free(src);
out:
    cm_xfer_destroy(b);
    cm_xfer_destroy(a);
}

/* ---- a peer in another process, killed mid-transfer ---- */

/* Child mode: listens, writes "PORT DESC-HEX" to fd 1 of the pipe, then
 * writes 64 KiB pieces into the parent's region (whose descriptor it gets
 * in a message) forever, until killed. */
static int child_main(int out_fd) {
    cm_xfer *x = engine("127.0.0.1:0", NULL, 1000);
    if (!x) return 1;
    char a[96];
    cm_xfer_listen_addr(x, a, sizeof a);
    dprintf(out_fd, "%s\n", a);
    cm_xfer_event ev;
    int peer = -1;
    while (peer < 0 && cm_xfer_event_next(x, &ev, 10000) == CM_OK)
        if (ev.type == CM_XFER_EV_PEER_UP) peer = ev.peer;
    if (peer < 0) return 1;
    static uint8_t wire[CM_XFER_MR_DESC_WIRE_BYTES], src[1 << 20];
    cm_xfer_mr *mw, *ms;
    cm_xfer_mr_register(x, wire, sizeof wire, 0, &mw);
    cm_xfer_mr_register(x, src, sizeof src, 0, &ms);
    cm_xfer_cq *cq;
    cm_xfer_cq_create(x, &cq);
    cm_xfer_recv_post(x, peer, mw, 0, sizeof wire, cq, 1);
    cm_xfer_completion c;
    while (cm_xfer_cq_poll(cq, &c, 1, 10000) == 1 && c.kind != CM_XFER_OP_RECV) {
    }
    cm_xfer_mr_desc d;
    if (c.status || cm_xfer_mr_desc_decode(wire, c.bytes, &d)) return 1;
    for (;;) {
        for (int i = 0; i < 16; i++) cm_xfer_write_imm(x, peer, ms, 0, &d, 0, sizeof src, 31, cq, 2);
        cm_xfer_completion junk[64];
        cm_xfer_cq_poll(cq, junk, 64, 50);
    }
}

TEST(peer_killed_mid_transfer) {
    if (g_skip[0]) TEST_SKIP("%s", g_skip);
    int pfd[2];
    CHECK(pipe(pfd) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(pfd[0]);
        /* a fresh image: libfabric and threads of this process stay here */
        char fd_s[16];
        snprintf(fd_s, sizeof fd_s, "%d", pfd[1]);
        execl("/proc/self/exe", "test_xfer_fabric", "--child", fd_s, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    char line[128] = "";
    FILE *f = fdopen(pfd[0], "r");
    if (!f || !fgets(line, sizeof line, f)) {
        CHECK_MSG(0, "child did not report its address");
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        if (f) fclose(f);
        return;
    }
    fclose(f);
    line[strcspn(line, "\n")] = 0;
    cm_xfer *x = engine(NULL, NULL, 1000);
    CHECK(x != NULL);
    if (!x) goto out_child;
    int peer = -1;
    const char *addrs[1] = {line};
    CHECK_OK(cm_xfer_connect(x, addrs, 1, 5000, &peer));
    static uint8_t region[1 << 20];
    cm_xfer_mr *mr, *mw;
    CHECK_OK(cm_xfer_mr_register(x, region, sizeof region, CM_XFER_MR_REMOTE_WRITE, &mr));
    cm_xfer_mr_allow(x, mr, peer);
    static uint8_t wire[CM_XFER_MR_DESC_WIRE_BYTES];
    cm_xfer_mr_desc d;
    size_t wn;
    cm_xfer_mr_desc_get(mr, &d);
    cm_xfer_mr_desc_encode(&d, wire, sizeof wire, &wn);
    cm_xfer_mr_register(x, wire, sizeof wire, 0, &mw);
    cm_xfer_cq *cq;
    cm_xfer_cq_create(x, &cq);
    CHECK_OK(cm_xfer_send(x, peer, mw, 0, wn, cq, 1));
    /* transfers are flowing ... */
    CHECK_OK(cm_xfer_imm_wait(x, peer, 31, 20, 10000));
    /* ... when the peer dies; the waiter must hear of it well before the
     * 10 s it is prepared to wait, in about the peer timeout at most */
    uint64_t t0 = cm_now_ns();
    kill(pid, SIGKILL);
    int rc = cm_xfer_imm_wait(x, peer, 31, 1u << 30, 10000);
    double ms = (double)(cm_now_ns() - t0) / 1e6;
    CHECK_MSG(rc == CM_EPEER, "imm_wait returned %d (%s)", rc, cm_last_error(rc));
    CHECK_MSG(ms < 2500, "the waiter learnt of the dead peer after %.0f ms", ms);
    CHECK(cm_xfer_peer_status(x, peer) != CM_OK);
    CHECK(cm_xfer_write_imm(x, peer, mw, 0, &d, 0, 8, 1, cq, 2) != CM_OK); /* refused at once */
    /* the engine still works with another peer */
    cm_xfer *y = engine("127.0.0.1:0", NULL, 0);
    int py = -1;
    CHECK(y && dial(x, y, &py) == CM_OK);
    if (y && py >= 0) {
        int px = accepted_peer(y);
        static uint8_t r2[64];
        cm_xfer_mr *m2;
        cm_xfer_mr_register(y, r2, sizeof r2, CM_XFER_MR_REMOTE_WRITE, &m2);
        cm_xfer_mr_allow(y, m2, px);
        cm_xfer_mr_desc d2 = desc_through_wire(m2);
        CHECK_OK(cm_xfer_write_imm(x, py, mw, 0, &d2, 0, 8, 41, cq, 3));
        CHECK_OK(cm_xfer_imm_wait(y, px, 41, 1, 5000));
        CHECK(!memcmp(r2, wire, 8));
        cm_xfer_mr_deregister(y, m2);
    }
    cm_xfer_destroy(y);
    cm_xfer_cq_destroy(x, cq);
    cm_xfer_mr_deregister(x, mr);
    cm_xfer_mr_deregister(x, mw);
    cm_xfer_destroy(x);
out_child:
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0) return 1;
    if (argc == 3 && !strcmp(argv[1], "--child")) {
        /* the key comes through the environment from the parent */
        const char *k = getenv("CELLM_TEST_FABRIC_KEY");
        if (!k || cm_xfer_key_parse(k, strlen(k), "env", &g_key)) return 1;
        return child_main(atoi(argv[2]));
    }
    cm_xfer_key_generate(&g_key);
    char hex[65];
    cm_xfer_key_to_hex(&g_key, hex, sizeof hex);
    setenv("CELLM_TEST_FABRIC_KEY", hex, 1);
#ifdef CM_HAVE_FABRIC
    const cm_xfer_backend_ops *ops = cm_xfer_backend_find("fabric");
    if (!ops)
        snprintf(g_skip, sizeof g_skip, "the fabric backend is not registered in backends.c");
    else if (ops->probe(g_skip, sizeof g_skip) == CM_OK)
        g_skip[0] = 0;
#else
    snprintf(g_skip, sizeof g_skip, "built without libfabric (install libfabric-dev and re-run cmake)");
#endif
    RUN(wire_encodings);
    RUN(write_imm_lands_and_counts);
    RUN(send_recv_in_order);
    RUN(wrong_key_refused);
    RUN(out_of_bounds_refused);
    RUN(peer_killed_mid_transfer);
    /* again with local buffers passed with registration descriptors, the
     * FI_MR_LOCAL path that hardware providers (verbs, EFA) take */
    if (!getenv("CELLM_FABRIC_MR_LOCAL")) {
        setenv("CELLM_FABRIC_MR_LOCAL", "1", 1);
        RUN(write_imm_lands_and_counts);
        RUN(send_recv_in_order);
        RUN(out_of_bounds_refused);
        RUN(peer_killed_mid_transfer);
    }
    return test_summary();
}
