/* sock.h - the socket chores every socket-using backend shares: HOST:PORT
 * parsing, printing an address, non-blocking mode, a listening socket, and
 * the self-pipe that wakes a thread blocked in poll. */
#ifndef CM_XFER_SOCK_H
#define CM_XFER_SOCK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* "host:port" or "[v6]:port" into host and port (digits only); CM_EINVAL
 * with a message naming the text otherwise. */
int cm_sock_split_hostport(const char *s, char *host, size_t hcap, char *port, size_t pcap);
/* "1.2.3.4:5" or "[::1]:5" ("?" for other families). */
void cm_sock_addr_string(const struct sockaddr *sa, char *out, size_t cap);
/* 0, or -1 with errno set. */
int cm_sock_set_nonblock(int fd);
/* A non-blocking, close-on-exec socket listening on `spec` (HOST:PORT; an
 * empty host or "*" means every address; port 0 picks a free one). Its
 * actual address goes to addr_out. CM_ECONN with a message on failure. */
int cm_sock_listen(const char *spec, int backlog, char *addr_out, size_t addr_cap, int *fd_out);

/* A non-blocking, close-on-exec TCP_NODELAY socket connected to `addr`
 * (HOST:PORT), trying each resolved address until deadline_ns (cm_now_ns
 * clock). CM_ETIMEDOUT or CM_ECONN with a message naming addr on failure. */
int cm_sock_connect(const char *addr, uint64_t deadline_ns, int *fd_out);

/* A self-pipe for waking a thread that sleeps in poll/epoll: fds[0] is
 * polled, fds[1] written; both ends non-blocking, so a waker never blocks
 * on a full pipe (a full pipe wakes the reader anyway). CM_EIO with a
 * message on failure, fds left as they were. */
int cm_sock_wake_open(int fds[2]);
/* Writes one byte to the write end; nothing when fd < 0 (not open yet). */
void cm_sock_wake(int fd);
/* Empties the read end, so the next poll sleeps until the next wake. */
void cm_sock_wake_drain(int fd);
/* Closes the ends that are open (>= 0). */
void cm_sock_wake_close(const int fds[2]);

#endif
