/* sock.c - shared socket chores of the tcp, fabric and verbs backends. */
#include "xfer/sock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/status.h"
#include "base/time.h"

int cm_sock_split_hostport(const char *s, char *host, size_t hcap, char *port, size_t pcap) {
    const char *colon = strrchr(s, ':');
    if (!colon || !colon[1]) return cm_errorf(CM_EINVAL, "'%s': expected HOST:PORT", s);
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') h++, hl -= 2;
    if (hl >= hcap || strlen(colon + 1) >= pcap) return cm_errorf(CM_EINVAL, "'%s': address too long", s);
    memcpy(host, h, hl);
    host[hl] = 0;
    snprintf(port, pcap, "%s", colon + 1);
    for (const char *p = port; *p; p++)
        if (*p < '0' || *p > '9') return cm_errorf(CM_EINVAL, "'%s': port is not a number", s);
    return CM_OK;
}

int cm_sock_set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL, 0);
    return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? -1 : 0;
}

void cm_sock_addr_string(const struct sockaddr *sa, char *out, size_t cap) {
    char host[64] = "?";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(out, cap, "%s:%d", host, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in->sin6_addr, host, sizeof host);
        snprintf(out, cap, "[%s]:%d", host, ntohs(in->sin6_port));
    } else {
        snprintf(out, cap, "?");
    }
}

int cm_sock_listen(const char *spec, int backlog, char *addr_out, size_t addr_cap, int *fd_out) {
    char host[256], port[16];
    int rc = cm_sock_split_hostport(spec, host, sizeof host, port, sizeof port);
    if (rc) return rc;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res = NULL;
    const char *h = host[0] && strcmp(host, "*") ? host : NULL;
    int gai = getaddrinfo(h, port, &hints, &res);
    if (gai) return cm_errorf(CM_ECONN, "listen %s: %s", spec, gai_strerror(gai));
    rc = cm_errorf(CM_ECONN, "listen %s: no usable address", spec);
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0) continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, backlog) == 0) {
            cm_sock_set_nonblock(fd);
            struct sockaddr_storage ss;
            socklen_t sl = sizeof ss;
            getsockname(fd, (struct sockaddr *)&ss, &sl);
            cm_sock_addr_string((struct sockaddr *)&ss, addr_out, addr_cap);
            *fd_out = fd;
            rc = CM_OK;
            break;
        }
        rc = cm_errorf(CM_ECONN, "listen %s: %s", spec, strerror(errno));
        close(fd);
    }
    freeaddrinfo(res);
    return rc;
}

int cm_sock_connect(const char *addr, uint64_t deadline_ns, int *fd_out) {
    char host[256], port[16];
    int rc = cm_sock_split_hostport(addr, host, sizeof host, port, sizeof port);
    if (rc) return rc;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai) return cm_errorf(CM_ECONN, "%s: cannot resolve: %s", addr, gai_strerror(gai));
    int fd = -1;
    rc = cm_errorf(CM_ECONN, "%s: no usable address", addr);
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0) continue;
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        cm_sock_set_nonblock(fd);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            rc = CM_OK;
            break;
        }
        if (errno == EINPROGRESS) {
            uint64_t now = cm_now_ns();
            struct pollfd pf = {fd, POLLOUT, 0};
            int pr = now < deadline_ns ? poll(&pf, 1, (int)((deadline_ns - now) / 1000000ull) + 1) : 0;
            int err = 0;
            socklen_t el = sizeof err;
            if (pr == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0) {
                rc = CM_OK;
                break;
            }
            rc = pr == 0 ? cm_errorf(CM_ETIMEDOUT, "%s: connect timed out (is cellm listening there?)", addr)
                         : cm_errorf(CM_ECONN, "%s: %s", addr, strerror(err ? err : errno));
        } else {
            rc = cm_errorf(CM_ECONN, "%s: %s", addr, strerror(errno));
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (rc == CM_OK) *fd_out = fd;
    return rc;
}

int cm_sock_wake_open(int fds[2]) {
    if (pipe(fds)) return cm_errorf(CM_EIO, "xfer: pipe: %s", strerror(errno));
    cm_sock_set_nonblock(fds[0]);
    cm_sock_set_nonblock(fds[1]);
    return CM_OK;
}

void cm_sock_wake(int fd) {
    if (fd < 0) return;
    char c = 1;
    ssize_t w = write(fd, &c, 1);
    (void)w; /* EAGAIN: the pipe is full, the reader wakes anyway */
}

void cm_sock_wake_drain(int fd) {
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0) {
    }
}

void cm_sock_wake_close(const int fds[2]) {
    if (fds[0] >= 0) close(fds[0]);
    if (fds[1] >= 0) close(fds[1]);
}
