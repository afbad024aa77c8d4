"""A server whose leak never reads EOF, for tests/origin_paths.rs.
Usage: read_once.py PATTERN PORT (0: any).

Says "listening PORT" once it listens on 127.0.0.1, then serves one
connection per letter of PATTERN, in order ("L": handle_leaky, anything
else: handle_good). Both accept, read the request with one recv (never to
EOF) and process it through the same helpers; process_data raises on a
request that starts with b"L". In handle_leaky the exception skips
conn.close(), the textbook leak; handle_good closes in a finally. After
each, says "leaked" or "closed"; after the last, keeps what it leaked until
it is killed.

The handler is picked before accept(), not by the request's first byte as
in leaky.py: reading that byte would be the socket's first read, in code
both handlers share, and every stack the probe may take of the socket (at
accept where fexit works, at its first read) must lie inside the handler
that leaks it.
"""

import signal
import socket
import sys

# Open connections by fd, as a server keeps them to shut them down: what
# keeps a connection whose close was skipped from being closed by
# refcounting when the exception unwinds the handler.
connections = {}


class BadRequest(Exception):
    pass


def accept_connection(listener):
    conn, _ = listener.accept()
    connections[conn.fileno()] = conn
    return conn


def close_connection(conn):
    del connections[conn.fileno()]
    conn.close()


def receive(conn):
    return conn.recv(1024)


def read_request(conn):
    return receive(conn)


def process_data(data):
    if not data or data.startswith(b"L"):
        raise BadRequest(data)
    return len(data)


def handle_leaky(listener):
    conn = accept_connection(listener)
    data = read_request(conn)
    process_data(data)
    # The bug: skipped when process_data raises.
    close_connection(conn)


def handle_good(listener):
    conn = accept_connection(listener)
    try:
        data = read_request(conn)
        process_data(data)
    finally:
        close_connection(conn)


def main():
    if len(sys.argv) != 3:
        print(f"usage: {sys.argv[0]} PATTERN PORT", file=sys.stderr)
        sys.exit(2)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", int(sys.argv[2])))
    listener.listen(64)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    for kind in sys.argv[1]:
        handler = handle_leaky if kind == "L" else handle_good
        before = len(connections)
        try:
            handler(listener)
        except BadRequest:
            pass
        print("leaked" if len(connections) > before else "closed", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
