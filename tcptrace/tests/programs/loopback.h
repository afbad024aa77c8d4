/* What the C servers in tests/programs share: a listener on 127.0.0.1 that
 * says "listening PORT" once it listens (the tests' Server waits for it),
 * and the loop of the servers that pick each connection's handler from a
 * pattern before accept(). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* Listens on 127.0.0.1:PORT (0: any) and says so; exits 1 if it cannot. */
static int listen_on_loopback(const char *port) {
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        listen(listener, 64) < 0) {
        perror("listen");
        exit(1);
    }
    socklen_t len = sizeof addr;
    getsockname(listener, (struct sockaddr *)&addr, &len);
    printf("listening %d\n", ntohs(addr.sin_port));
    fflush(stdout);
    return listener;
}

/* One connection per letter of `pattern`, each taken by `leaky` ('L') or
 * `good`, which accept it themselves and return 1 when they left it open;
 * says "leaked" or "closed" after each. Then keeps the leaked sockets open
 * while the test reads the report. */
__attribute__((unused)) static void serve_pattern(int listener, const char *pattern,
                                                  int (*leaky)(int), int (*good)(int)) {
    for (const char *kind = pattern; *kind; kind++) {
        int leaked = *kind == 'L' ? leaky(listener) : good(listener);
        puts(leaked ? "leaked" : "closed");
        fflush(stdout);
    }
    for (;;)
        pause();
}

/* main() of such a server: `PROGRAM PATTERN PORT`. */
__attribute__((unused)) static int pattern_server_main(int argc, char **argv, int (*leaky)(int),
                                                       int (*good)(int)) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s PATTERN PORT\n", argv[0]);
        return 2;
    }
    serve_pattern(listen_on_loopback(argv[2]), argv[1], leaky, good);
    return 0;
}
