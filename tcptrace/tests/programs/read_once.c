/* A server whose leak never reads EOF, for tests/origin_paths.rs. Usage:
 * read_once PATTERN PORT (0: any).
 *
 * Says "listening PORT" once it listens on 127.0.0.1, then serves one
 * connection per letter of PATTERN, in order ('L': handle_leaky, anything
 * else: handle_good). Both accept, read the request with one recv (never
 * to EOF) and process it through the same helpers; a request that starts
 * with 'L' is rejected. On that error
 * handle_leaky returns without close(), the textbook leak; handle_good
 * closes on every path. After each, says "leaked" or "closed"; after the
 * last, keeps what it leaked until it is killed.
 *
 * The handler is picked before accept(), not by the request's first byte
 * as in leaky.c: reading that byte would be the socket's first read, in
 * code both handlers share, and every stack the probe may take of the
 * socket (at accept where fexit works, at its first read) must lie inside
 * the handler that leaks it. */
#include "loopback.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Each helper does something after its call, so -O2 cannot turn the call
 * into a jump that leaves no frame (a barrier the compiler cannot see past). */
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

/* Not static: -O2 would drop stores nobody reads, and with them the work
 * that keeps process_request a call. */
long processed;

__attribute__((noinline, noclone)) static int accept_connection(int listener) {
    int fd = accept(listener, NULL, NULL);
    KEEP_FRAME();
    return fd;
}

__attribute__((noinline, noclone)) static long receive(int fd, char *buf, size_t size) {
    long n = recv(fd, buf, size, 0);
    KEEP_FRAME();
    return n;
}

__attribute__((noinline, noclone)) static long read_request(int fd, char *buf, size_t size) {
    long n = receive(fd, buf, size);
    KEEP_FRAME();
    return n;
}

/* -1 for a request the server rejects: empty, or one that starts with 'L'. */
__attribute__((noinline, noclone)) static int process_request(const char *buf, long n) {
    if (n <= 0 || buf[0] == 'L')
        return -1;
    processed++;
    return 0;
}

/* 1 when the connection is left open. */
__attribute__((noinline, noclone)) static int handle_leaky(int listener) {
    char buf[1024];
    int fd = accept_connection(listener);
    if (fd < 0)
        return 0;
    long n = read_request(fd, buf, sizeof buf);
    if (process_request(buf, n) < 0)
        return 1; /* The bug: the error path returns without close(). */
    close(fd);
    return 0;
}

__attribute__((noinline, noclone)) static int handle_good(int listener) {
    char buf[1024];
    int fd = accept_connection(listener);
    if (fd < 0)
        return 0;
    long n = read_request(fd, buf, sizeof buf);
    process_request(buf, n);
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    return pattern_server_main(argc, argv, handle_leaky, handle_good);
}
