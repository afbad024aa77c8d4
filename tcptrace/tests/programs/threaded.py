"""A thread-per-connection leaky server for tests/code_paths.rs.
Usage: threaded.py PORT (0: any).

Says "listening PORT" once it listens on 127.0.0.1, then starts a thread
per connection: the first byte picks the handler (b"L": handle_leaky,
anything else: handle_good). Both read to EOF through the same helpers;
only handle_good closes. After each, the thread says "leaked" or "closed"
and then waits, alive, until the server is killed: every thread state the
interpreter lists has a frame chain of its own, and the probe must pick
the one of the thread that reads.
"""

import socket
import sys
import threading

held = []
forever = threading.Event()


def read_to_eof(conn):
    total = 0
    while True:
        data = conn.recv(4096)
        if not data:
            return total
        total += len(data)


def read_body(conn):
    return read_to_eof(conn)


def handle_leaky(conn):
    read_body(conn)
    # The bug: the socket is kept and never closed.
    held.append(conn)
    print("leaked", flush=True)
    forever.wait()


def handle_good(conn):
    read_body(conn)
    conn.close()
    print("closed", flush=True)
    forever.wait()


def serve(conn):
    kind = conn.recv(1)
    if kind == b"L":
        handle_leaky(conn)
    else:
        handle_good(conn)


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
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
