/* A leaky server for tests/code_paths.rs. Usage: leaky [--thread] PORT
 * (0: any).
 *
 * Says "listening PORT" once it listens on 127.0.0.1, then serves one
 * connection at a time: the first byte picks the handler ('L': handle_leaky,
 * anything else: handle_good). Both read to EOF through the same four
 * helpers; only handle_good closes. After each, says "leaked" or "closed".
 * With --thread, each connection is served on a thread of its own, whose
 * stack ends in glibc's TCB, as in a thread-per-connection server. */
#include "loopback.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_HELD 1024

/* Leaked sockets stay referenced, as a real leak keeps them in some table
 * (not static: -O2 would drop stores nobody reads). */
int held[MAX_HELD];
int held_count;

/* Each helper does something after its call, so -O2 cannot turn the call
 * into a jump that leaves no frame (a barrier the compiler cannot see past). */
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

__attribute__((noinline, noclone)) static long read_helper_4(int fd) {
    char buf[4096];
    long total = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0)
            return n < 0 ? -1 : total;
        total += n;
    }
}

__attribute__((noinline, noclone)) static long read_helper_3(int fd) {
    long n = read_helper_4(fd);
    KEEP_FRAME();
    return n;
}

__attribute__((noinline, noclone)) static long read_helper_2(int fd) {
    long n = read_helper_3(fd);
    KEEP_FRAME();
    return n;
}

__attribute__((noinline, noclone)) static long read_helper_1(int fd) {
    long n = read_helper_2(fd);
    KEEP_FRAME();
    return n;
}

__attribute__((noinline, noclone)) static void handle_leaky(int fd) {
    read_helper_1(fd);
    /* The bug: the socket is kept and never closed. */
    if (held_count < MAX_HELD)
        held[held_count++] = fd;
    printf("leaked\n");
    fflush(stdout);
}

__attribute__((noinline, noclone)) static void handle_good(int fd) {
    read_helper_1(fd);
    close(fd);
    printf("closed\n");
    fflush(stdout);
}

static void serve(int fd) {
    char kind = 0;
    if (recv(fd, &kind, 1, 0) != 1) {
        close(fd);
        return;
    }
    if (kind == 'L')
        handle_leaky(fd);
    else
        handle_good(fd);
}

static void *serve_on_thread(void *fd) {
    serve((int)(long)fd);
    return NULL;
}

int main(int argc, char **argv) {
    int threaded = argc == 3 && strcmp(argv[1], "--thread") == 0;
    if (argc != 2 + threaded) {
        fprintf(stderr, "usage: %s [--thread] PORT\n", argv[0]);
        return 2;
    }
    int listener = listen_on_loopback(argv[1 + threaded]);
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0) {
            perror("accept");
            return 1;
        }
        if (!threaded) {
            serve(fd);
            continue;
        }
        pthread_t thread;
        if (pthread_create(&thread, NULL, serve_on_thread, (void *)(long)fd) != 0) {
            perror("pthread_create");
            return 1;
        }
        pthread_join(thread, NULL);
    }
}
