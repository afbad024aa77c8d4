"""A client that leaks its connections into a pool, for tests/origin_paths.rs.
Usage: client_pool.py PORT (a server on 127.0.0.1 that replies and hangs up).

Says "ready PORT", then makes one query per line it reads on stdin ("L":
query, anything else: query_good). Both connect, send the line's letter and
read the reply once through the same helpers. query keeps the connection in
a pool for reuse, and nothing ever takes it out or closes it: when the
server hangs up, it sits in CLOSE_WAIT, the textbook client-side leak.
query_good closes. After each, says "leaked" or "closed"; at the end of
stdin, keeps what it leaked until it is killed.
"""

import signal
import socket
import sys

# Connections kept for reuse. The leak: no one checks whether the server
# has hung up on them, and no one closes them.
pool = []


def open_connection(port):
    return socket.create_connection(("127.0.0.1", port))


def exchange(sock, request):
    sock.sendall(request)
    return sock.recv(1024)


def query(port, request):
    sock = open_connection(port)
    reply = exchange(sock, request)
    pool.append(sock)
    return reply


def query_good(port, request):
    sock = open_connection(port)
    try:
        return exchange(sock, request)
    finally:
        sock.close()


def main():
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} PORT", file=sys.stderr)
        sys.exit(2)
    port = int(sys.argv[1])
    print(f"ready {port}", flush=True)
    for line in sys.stdin:
        kind = line.strip()
        if kind == "L":
            query(port, b"L")
            print("leaked", flush=True)
        else:
            query_good(port, kind.encode())
            print("closed", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
