/* test_xfer_sidechan.c - the side channel of the fabric and verbs backends
 * (src/xfer/sidechan.c) on its own, over socket pairs: the cell-key
 * handshake accepts the right key and refuses a wrong one on both sides,
 * refuses hellos and proofs that are cut short, malformed or from the wrong
 * role, and the bytes it sends are wire.h's (checked by a hand-driven peer
 * built from wire.h's encoders, as an engine of an older build would be);
 * then record swaps, reads of an up link, the silence check, and the peer
 * records (link choice, failing a peer that is coming up, goodbyes and link
 * stats) with stand-in links. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/status.h"
#include "base/time.h"
#include "test.h"
#include "xfer/sidechan.h"
#include "xfer/sock.h"
#include "xfer/wire.h"

static cm_xfer_key g_key, g_other_key;

static cm_sidechan side_with(const cm_xfer_key *key, const char *name, uint64_t instance) {
    return (cm_sidechan){.backend = "fabric", .key = key, .instance = instance, .name = name, .peer_timeout_ms = 2000};
}

static void pair(int fd[2]) {
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fd)) abort();
    cm_sock_set_nonblock(fd[0]);
    cm_sock_set_nonblock(fd[1]);
}

static uint64_t in_ms(int ms) { return cm_now_ns() + (uint64_t)ms * 1000000ull; }

/* The accepting side in a thread of its own. */
typedef struct server_arg {
    cm_sidechan sc;
    int fd;
    int rc;
    char err[256];
    cm_wire_hello remote;
} server_arg;

static void *server_main(void *p) {
    server_arg *a = p;
    a->rc = cm_sidechan_auth(&a->sc, a->fd, 2, 0, 0, in_ms(2000), "client", &a->remote);
    snprintf(a->err, sizeof a->err, "%s", a->rc ? cm_last_error(a->rc) : "");
    return NULL;
}

/* Runs a client with client_key against a server with server_key. */
static void handshake(const cm_xfer_key *client_key, const cm_xfer_key *server_key, int *client_rc, char *client_err,
                      cm_wire_hello *client_saw, server_arg *srv) {
    int fd[2];
    pair(fd);
    *srv = (server_arg){.sc = side_with(server_key, "srv", 0x5e5e), .fd = fd[1]};
    pthread_t t;
    pthread_create(&t, NULL, server_main, srv);
    cm_sidechan cli = side_with(client_key, "cli", 0xc1c1);
    *client_rc = cm_sidechan_auth(&cli, fd[0], 1, 1, 3, in_ms(2000), "server", client_saw);
    snprintf(client_err, 256, "%s", *client_rc ? cm_last_error(*client_rc) : "");
    close(fd[0]); /* a server still waiting for a proof sees EOF */
    pthread_join(t, NULL);
    close(fd[1]);
}

TEST(right_key_accepted) {
    int rc;
    char err[256];
    cm_wire_hello saw;
    server_arg srv;
    handshake(&g_key, &g_key, &rc, err, &saw, &srv);
    CHECK_MSG(rc == CM_OK, "%s", err);
    CHECK_MSG(srv.rc == CM_OK, "%s", srv.err);
    /* each side learnt the other's hello; the server echoed the link */
    CHECK(saw.role == 2 && saw.instance == 0x5e5e && !strcmp(saw.name, "srv"));
    CHECK(saw.link == 1 && saw.n_links == 3 && saw.n_socks == 1 && saw.sock == 0);
    CHECK(srv.remote.role == 1 && srv.remote.instance == 0xc1c1 && !strcmp(srv.remote.name, "cli"));
    CHECK(srv.remote.link == 1 && srv.remote.n_links == 3 && srv.remote.n_socks == 1);
}

TEST(wrong_key_refused_both_ways) {
    int rc;
    char err[256];
    cm_wire_hello saw;
    server_arg srv;
    handshake(&g_other_key, &g_key, &rc, err, &saw, &srv);
    CHECK(rc == CM_EAUTH);
    CHECK_MSG(strstr(err, "refused our cell key") != NULL, "%s", err);
    CHECK(srv.rc == CM_EAUTH);
    CHECK_MSG(strstr(srv.err, "does not hold our cell key") != NULL, "%s", srv.err);
}

/* A hand-driven server that does not hold the key but answers anyway with
 * a made-up proof: the client must check the server's proof too. */
TEST(client_checks_server_proof) {
    int fd[2];
    pair(fd);
    uint8_t hello[CM_WIRE_HELLO_BYTES], proof[CM_WIRE_PROOF_BYTES], mac[CM_WIRE_MAC_BYTES];
    cm_wire_hello h = {.role = 2, .link = 0, .n_links = 1, .n_socks = 1, .instance = 7};
    snprintf(h.name, sizeof h.name, "impostor");
    cm_wire_hello_encode(&h, hello);
    CHECK_OK(cm_sidechan_send(fd[1], hello, sizeof hello, in_ms(1000)));
    randombytes_buf(mac, sizeof mac);
    cm_wire_proof_encode(0, mac, proof);
    CHECK_OK(cm_sidechan_send(fd[1], proof, sizeof proof, in_ms(1000)));
    cm_sidechan cli = side_with(&g_key, "cli", 1);
    cm_wire_hello saw;
    int rc = cm_sidechan_auth(&cli, fd[0], 1, 0, 1, in_ms(1000), "impostor:1", &saw);
    CHECK(rc == CM_EAUTH);
    CHECK_MSG(strstr(cm_last_error(rc), "impostor:1 does not hold our cell key") != NULL, "%s", cm_last_error(rc));
    /* what the client sent is wire.h's hello and a proof a key holder can check */
    uint8_t got_hello[CM_WIRE_HELLO_BYTES], got_proof[CM_WIRE_PROOF_BYTES];
    CHECK_OK(cm_sidechan_recv(fd[1], got_hello, sizeof got_hello, in_ms(1000)));
    CHECK_OK(cm_sidechan_recv(fd[1], got_proof, sizeof got_proof, in_ms(1000)));
    cm_wire_hello ch;
    CHECK_OK(cm_wire_hello_decode(got_hello, &ch));
    CHECK(ch.role == 1 && ch.instance == 1 && !strcmp(ch.name, "cli") && ch.n_socks == 1);
    int verdict = -1;
    CHECK_OK(cm_wire_proof_decode(got_proof, &verdict, mac));
    CHECK(verdict == 0);
    CHECK(cm_wire_auth_verify(&g_key, 1, got_hello, hello, mac) == CM_OK);
    CHECK(cm_wire_auth_verify(&g_other_key, 1, got_hello, hello, mac) == CM_EAUTH);
    close(fd[0]);
    close(fd[1]);
}

/* A server that closes instead of sending its verdict refused us. */
TEST(server_closing_is_refusal) {
    int fd[2];
    pair(fd);
    uint8_t hello[CM_WIRE_HELLO_BYTES];
    cm_wire_hello h = {.role = 2, .link = 0, .n_links = 1, .n_socks = 1, .instance = 7};
    cm_wire_hello_encode(&h, hello);
    CHECK_OK(cm_sidechan_send(fd[1], hello, sizeof hello, in_ms(1000)));
    shutdown(fd[1], SHUT_WR);
    cm_sidechan cli = side_with(&g_key, "cli", 1);
    cm_wire_hello saw;
    int rc = cm_sidechan_auth(&cli, fd[0], 1, 0, 1, in_ms(1000), "srv:2", &saw);
    CHECK(rc == CM_EAUTH);
    CHECK_MSG(strstr(cm_last_error(rc), "closed the connection during authentication") != NULL, "%s",
              cm_last_error(rc));
    close(fd[0]);
    close(fd[1]);
}

/* Feeds `n` bytes to an accepting side and returns its status. */
static int server_fed(const uint8_t *bytes, size_t n, int then_close, int deadline_ms) {
    int fd[2];
    pair(fd);
    if (n && cm_sidechan_send(fd[1], bytes, n, in_ms(1000))) abort();
    if (then_close) shutdown(fd[1], SHUT_WR);
    cm_sidechan srv = side_with(&g_key, "srv", 2);
    cm_wire_hello saw;
    int rc = cm_sidechan_auth(&srv, fd[0], 2, 0, 0, in_ms(deadline_ms), "peer:9", &saw);
    close(fd[0]);
    close(fd[1]);
    return rc;
}

TEST(truncated_hello_refused) {
    uint8_t hello[CM_WIRE_HELLO_BYTES];
    cm_wire_hello h = {.role = 1, .link = 0, .n_links = 1, .n_socks = 1, .instance = 3};
    cm_wire_hello_encode(&h, hello);
    int rc = server_fed(hello, 50, 1, 1000);
    CHECK(rc == CM_ECONN);
    CHECK_MSG(strstr(cm_last_error(rc), "closed by the peer during setup") != NULL, "%s", cm_last_error(rc));
    /* cut short and then silent: the deadline ends it */
    uint64_t t0 = cm_now_ns();
    rc = server_fed(hello, 50, 0, 100);
    CHECK(rc == CM_ETIMEDOUT);
    CHECK(cm_now_ns() - t0 < 2000000000ull);
}

TEST(malformed_hello_refused) {
    uint8_t hello[CM_WIRE_HELLO_BYTES];
    cm_wire_hello h = {.role = 1, .link = 0, .n_links = 1, .n_socks = 1, .instance = 3};
    cm_wire_hello_encode(&h, hello);
    hello[0] ^= 0xff; /* magic */
    CHECK(server_fed(hello, sizeof hello, 1, 1000) == CM_EFORMAT);
    h.role = 2; /* a server's hello sent to a server */
    cm_wire_hello_encode(&h, hello);
    int rc = server_fed(hello, sizeof hello, 1, 1000);
    CHECK(rc == CM_EFORMAT);
    CHECK_MSG(strstr(cm_last_error(rc), "peer:9: not a fabric client hello") != NULL, "%s", cm_last_error(rc));
    h.role = 1;
    h.n_socks = 2; /* a tcp-backend client with several sockets per link */
    cm_wire_hello_encode(&h, hello);
    CHECK(server_fed(hello, sizeof hello, 1, 1000) == CM_EFORMAT);
}

/* A client hello followed by a proof that is garbage, a refusal, or the
 * right size with a wrong mac. */
TEST(bad_client_proof_refused) {
    uint8_t buf[CM_WIRE_HELLO_BYTES + CM_WIRE_PROOF_BYTES];
    cm_wire_hello h = {.role = 1, .link = 0, .n_links = 1, .n_socks = 1, .instance = 3};
    cm_wire_hello_encode(&h, buf);
    memset(buf + CM_WIRE_HELLO_BYTES, 0x41, CM_WIRE_PROOF_BYTES);
    CHECK(server_fed(buf, sizeof buf, 1, 1000) == CM_EFORMAT);
    cm_wire_proof_encode(1, NULL, buf + CM_WIRE_HELLO_BYTES);
    CHECK(server_fed(buf, sizeof buf, 1, 1000) == CM_EFORMAT);
    uint8_t mac[CM_WIRE_MAC_BYTES];
    randombytes_buf(mac, sizeof mac);
    cm_wire_proof_encode(0, mac, buf + CM_WIRE_HELLO_BYTES);
    int rc = server_fed(buf, sizeof buf, 1, 1000);
    CHECK(rc == CM_EAUTH);
    /* and a proof cut short */
    CHECK(server_fed(buf, CM_WIRE_HELLO_BYTES + 10, 1, 1000) == CM_ECONN);
}

TEST(swap_and_read) {
    int fd[2];
    pair(fd);
    uint8_t a[300], b[300], got_a[300], got_b[300];
    for (int i = 0; i < 300; i++) a[i] = (uint8_t)i, b[i] = (uint8_t)(255 - i);
    /* one thread plays both ends: b's side sends first, receives last */
    CHECK_OK(cm_sidechan_send(fd[1], b, sizeof b, in_ms(1000)));
    CHECK_OK(cm_sidechan_swap(fd[0], a, got_b, sizeof a, in_ms(1000)));
    CHECK_OK(cm_sidechan_recv(fd[1], got_a, sizeof got_a, in_ms(1000)));
    CHECK(!memcmp(got_a, a, sizeof a) && !memcmp(got_b, b, sizeof b));
    /* an up link: nothing there, then bytes, then EOF */
    uint8_t buf[64];
    size_t n = 99;
    CHECK_OK(cm_sidechan_read(fd[0], buf, sizeof buf, &n));
    CHECK(n == 0);
    size_t sent = 0;
    CHECK_OK(cm_sidechan_post(fd[1], "HHB", 3, &sent));
    CHECK(sent == 3);
    CHECK_OK(cm_sidechan_read(fd[0], buf, sizeof buf, &n));
    CHECK(n == 3 && !memcmp(buf, "HHB", 3));
    close(fd[1]);
    int rc = cm_sidechan_read(fd[0], buf, sizeof buf, &n);
    CHECK(rc == CM_EPEER);
    CHECK_MSG(!strcmp(cm_last_error(rc), "side channel closed by the peer"), "%s", cm_last_error(rc));
    rc = cm_sidechan_post(fd[0], "H", 1, &sent);
    CHECK(rc == CM_EPEER && sent == 0);
    /* a receive cut short by EOF */
    CHECK(cm_sidechan_recv(fd[0], buf, 1, in_ms(100)) == CM_ECONN);
    close(fd[0]);
}

TEST(silence_check) {
    uint64_t now = 10000000000ull;
    CHECK(cm_sidechan_check_silence(now, now - 400000000ull, 500) == CM_OK);
    CHECK(cm_sidechan_check_silence(now, now - 500000000ull, 500) == CM_OK);
    int rc = cm_sidechan_check_silence(now, now - 500000001ull, 500);
    CHECK(rc == CM_ETIMEDOUT);
    CHECK_MSG(!strcmp(cm_last_error(rc), "nothing received for 500 ms (peer dead or link cut)"), "%s",
              cm_last_error(rc));
}

/* Stand-in links: link_kill records what it was told. */
typedef struct fake_link {
    cm_sidechan_link base;
    int killed_status;
} fake_link;

static void fake_kill(void *owner, cm_sidechan_link *base, int status) {
    (void)owner;
    fake_link *l = (fake_link *)base;
    l->base.state = CM_SIDECHAN_DEAD;
    l->killed_status = status;
}

static void fake_wake(void *owner) { (void)owner; }

TEST(peer_records) {
    static cm_sidechan sc; /* large: its peer table */
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    sc = (cm_sidechan){.backend = "fabric", .mu = &mu, .bye = {'B'}, .bye_bytes = 1, .link_kill = fake_kill,
                       .wake = fake_wake};
    int fd0[2], fd1[2];
    pair(fd0);
    pair(fd1);
    fake_link l0 = {.base = {.state = CM_SIDECHAN_READY, .peer = 3, .index = 0, .fd = fd0[0], .bytes_sent = 11}};
    fake_link l1 = {.base = {.state = CM_SIDECHAN_READY, .peer = 3, .index = 1, .fd = fd1[0], .bytes_received = 22}};
    snprintf(l0.base.addr, sizeof l0.base.addr, "10.0.0.1:7");
    snprintf(l1.base.addr, sizeof l1.base.addr, "10.0.0.2:7");
    cm_sidechan_peer *p = &sc.peers[3];
    *p = (cm_sidechan_peer){.active = 1, .up = 1, .n_links = 2, .n_ready = 2, .links = {&l0.base, &l1.base}};
    /* writes take the links in turn; a named link is that link */
    cm_sidechan_link *got[4];
    for (int i = 0; i < 4; i++) CHECK_OK(cm_sidechan_pick(&sc, 3, -1, &got[i]));
    CHECK(got[0] != got[1] && got[0] == got[2] && got[1] == got[3]);
    CHECK_OK(cm_sidechan_pick(&sc, 3, 1, &got[0]));
    CHECK(got[0] == &l1.base);
    l1.base.state = CM_SIDECHAN_DEAD;
    int rc = cm_sidechan_pick(&sc, 3, 1, &got[0]);
    CHECK(rc == CM_EPEER);
    CHECK_MSG(!strcmp(cm_last_error(rc), "xfer: peer 3 is down"), "%s", cm_last_error(rc));
    CHECK(cm_sidechan_pick(&sc, 4, 0, &got[0]) == CM_EPEER);
    CHECK(cm_sidechan_pick(&sc, -1, 0, &got[0]) == CM_EPEER);
    CHECK(cm_sidechan_pick(&sc, CM_SIDECHAN_MAX_PEERS, 0, &got[0]) == CM_EPEER);
    l1.base.state = CM_SIDECHAN_READY;
    cm_xfer_link_stats st[2];
    int n = 0;
    CHECK_OK(cm_sidechan_peer_links(&sc, 3, st, 2, &n));
    CHECK(n == 2 && !strcmp(st[0].addr, "10.0.0.1:7") && st[0].bytes_sent == 11 && st[1].bytes_received == 22);
    /* a peer still coming up (the core never heard of it) fails quietly:
     * every link is killed with the status, the record is cleared */
    p->up = 0;
    cm_sidechan_link_fail(&sc, &l0.base, CM_ETIMEDOUT, "nothing received");
    CHECK(!p->active && !p->links[0] && !p->links[1] && p->n_ready == 0);
    CHECK(l0.killed_status == CM_ETIMEDOUT && l1.killed_status == CM_ETIMEDOUT);
    CHECK_OK(cm_sidechan_peer_links(&sc, 3, st, 2, &n));
    CHECK(n == 0);
    /* a dead link fails nothing; a link without a peer is killed alone */
    l0.killed_status = 0;
    cm_sidechan_link_fail(&sc, &l0.base, CM_EPEER, "again");
    CHECK(l0.killed_status == 0);
    fake_link lone = {.base = {.state = CM_SIDECHAN_NEW, .peer = -1, .fd = -1}};
    cm_sidechan_link_fail(&sc, &lone.base, CM_EPEER, "alone");
    CHECK(lone.killed_status == CM_EPEER);
    /* closing says goodbye on the READY links only, then fails the peer */
    l0.base.state = l1.base.state = CM_SIDECHAN_READY;
    l1.base.state = CM_SIDECHAN_NEW;
    l0.killed_status = l1.killed_status = 0;
    *p = (cm_sidechan_peer){.active = 1, .up = 0, .n_links = 2, .n_ready = 1, .links = {&l0.base, &l1.base}};
    cm_sidechan_close_peers(&sc);
    uint8_t b[4];
    size_t nb = 0;
    CHECK_OK(cm_sidechan_read(fd0[1], b, sizeof b, &nb));
    CHECK(nb == 1 && b[0] == 'B');
    CHECK_OK(cm_sidechan_read(fd1[1], b, sizeof b, &nb));
    CHECK(nb == 0);
    CHECK(!p->active && l0.killed_status == CM_ECLOSED && l1.killed_status == CM_ECLOSED);
    close(fd0[0]);
    close(fd0[1]);
    close(fd1[0]);
    close(fd1[1]);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0) return 1;
    cm_xfer_key_generate(&g_key);
    cm_xfer_key_generate(&g_other_key);
    RUN(right_key_accepted);
    RUN(wrong_key_refused_both_ways);
    RUN(client_checks_server_proof);
    RUN(server_closing_is_refusal);
    RUN(truncated_hello_refused);
    RUN(malformed_hello_refused);
    RUN(bad_client_proof_refused);
    RUN(swap_and_read);
    RUN(silence_check);
    RUN(peer_records);
    return test_summary();
}
