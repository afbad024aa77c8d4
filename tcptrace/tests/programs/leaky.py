"""A leaky server for tests/code_paths.rs. Usage: leaky.py PORT (0: any).

Says "listening PORT" once it listens on 127.0.0.1, then serves one
connection at a time: the first byte picks the handler (b"L": handle_leaky,
anything else: handle_good). Both read to EOF through the same four
helpers; only handle_good closes. After each, says "leaked" or "closed".
"""

import socket
import sys

# Leaked sockets stay referenced, so neither refcounting nor the GC closes
# them.
held = []


def read_helper_4(conn):
    total = 0
    while True:
        data = conn.recv(4096)
        if not data:
            return total
        total += len(data)


def read_helper_3(conn):
    return read_helper_4(conn)


def read_helper_2(conn):
    return read_helper_3(conn)


def read_helper_1(conn):
    return read_helper_2(conn)


def handle_leaky(conn):
    read_helper_1(conn)
    # The bug: the socket is kept and never closed.
    held.append(conn)
    print("leaked", flush=True)


def handle_good(conn):
    read_helper_1(conn)
    conn.close()
    print("closed", flush=True)


def main():
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} PORT", file=sys.stderr)
        sys.exit(2)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen(64)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        kind = conn.recv(1)
        if not kind:
            conn.close()
        elif kind == b"L":
            handle_leaky(conn)
        else:
            handle_good(conn)


if __name__ == "__main__":
    main()
