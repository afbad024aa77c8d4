"""The Python server of `cargo xtask bench`'s Python walk rows: testpeer's
churn client against a plain Python 3 server with no flag. Each connection
is read once (the request), answered, read to EOF and closed, in handlers
a few Python frames deep, as a real one would be. Says
`listening pid=PID port=PORT`, and `served count=N` once stdin closes.
"""

import os
import socket
import sys
import threading


def read_request(conn):
    return conn.recv(1024)


def read_to_eof(conn):
    while conn.recv(1024):
        pass


def handle(conn):
    if read_request(conn):
        conn.sendall(b"pong")
        read_to_eof(conn)
    conn.close()


def main():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.settimeout(0.2)
    print(f"listening pid={os.getpid()} port={listener.getsockname()[1]}", flush=True)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    served = 0
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        conn.settimeout(None)
        handle(conn)
        served += 1
    print(f"served count={served}", flush=True)


if __name__ == "__main__":
    main()
