/* A server that leaks sockets it never reads or writes, for
 * tests/origin_paths.rs. Usage: accept_hold PATTERN PORT (0: any).
 *
 * Says "listening PORT" once it listens on 127.0.0.1, then takes one
 * connection per letter of PATTERN, in order ('L': accept_and_hold,
 * anything else: accept_and_serve). Both accept through the same helpers;
 * accept_and_hold files the socket away for later and never touches it
 * again, accept_and_serve reads the request once and closes. After each,
 * says "leaked" or "closed"; after the last, keeps what it leaked until it
 * is killed.
 *
 * The function is picked before accept(): the only syscall of a held
 * socket is its accept, so only a stack taken there can name the code that
 * leaked it. */
#include "loopback.h"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_HELD 1024

/* Held sockets stay referenced, as a real leak keeps them in some table
 * (not static: -O2 would drop stores nobody reads). */
int held[MAX_HELD];
int held_count;

/* Each helper does something after its call, so -O2 cannot turn the call
 * into a jump that leaves no frame (a barrier the compiler cannot see past). */
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

__attribute__((noinline, noclone)) static int accept_helper_2(int listener) {
    int fd = accept(listener, NULL, NULL);
    KEEP_FRAME();
    return fd;
}

__attribute__((noinline, noclone)) static int accept_helper_1(int listener) {
    int fd = accept_helper_2(listener);
    KEEP_FRAME();
    return fd;
}

/* 1 when the connection is left open. */
__attribute__((noinline, noclone)) static int accept_and_hold(int listener) {
    int fd = accept_helper_1(listener);
    if (fd < 0)
        return 0;
    /* The bug: kept for a reply that never comes, never closed. */
    if (held_count < MAX_HELD)
        held[held_count++] = fd;
    return 1;
}

__attribute__((noinline, noclone)) static int accept_and_serve(int listener) {
    char buf[1024];
    int fd = accept_helper_1(listener);
    if (fd < 0)
        return 0;
    recv(fd, buf, sizeof buf, 0);
    KEEP_FRAME();
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    return pattern_server_main(argc, argv, accept_and_hold, accept_and_serve);
}
