/* A server with two leaking handlers, for tests/flamegraph.rs. Usage:
 * two_leaks PORT (0: any).
 *
 * Says "listening PORT" once it listens on 127.0.0.1, then serves one
 * connection at a time: the first byte picks the handler ('U':
 * handle_upload, 'D': handle_download, anything else: handle_good). All
 * three read to EOF through the same helper; only handle_good closes.
 * After each, says "leaked" or "closed". */
#include "loopback.h"
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_HELD 1024

/* Leaked sockets stay referenced, as a real leak keeps them in some table. */
int held[MAX_HELD];
int held_count;
/* Bytes per handler: distinct stores keep the two handlers distinct code,
 * which identical-code folding would otherwise merge into one. */
long uploaded, downloaded;

/* Keeps a call a call (not a jump that leaves no frame) under -O2. */
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")

__attribute__((noinline, noclone)) static long drain(int fd) {
    char buf[4096];
    long total = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0)
            return n < 0 ? -1 : total;
        total += n;
    }
}

__attribute__((noinline, noclone)) static void keep(int fd) {
    if (held_count < MAX_HELD)
        held[held_count++] = fd;
    printf("leaked\n");
    fflush(stdout);
}

__attribute__((noinline, noclone)) static void handle_upload(int fd) {
    uploaded += drain(fd);
    KEEP_FRAME();
    keep(fd);
}

__attribute__((noinline, noclone)) static void handle_download(int fd) {
    downloaded += drain(fd);
    KEEP_FRAME();
    keep(fd);
}

__attribute__((noinline, noclone)) static void handle_good(int fd) {
    drain(fd);
    KEEP_FRAME();
    close(fd);
    printf("closed\n");
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int listener = listen_on_loopback(argv[1]);
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0) {
            perror("accept");
            return 1;
        }
        char kind = 0;
        if (recv(fd, &kind, 1, 0) != 1) {
            close(fd);
            continue;
        }
        if (kind == 'U')
            handle_upload(fd);
        else if (kind == 'D')
            handle_download(fd);
        else
            handle_good(fd);
    }
}
