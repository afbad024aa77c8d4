"""An asyncio leaky server for tests/code_paths.rs. Usage: leaky_asyncio.py
PORT (0: any).

Says "listening PORT" once it listens on 127.0.0.1; the first byte of each
connection picks the handler (b"L": handle_leaky, anything else:
handle_good). Both read to EOF through the same helper; only handle_good
closes its writer. After each, says "leaked" or "closed". The reads happen
in the event loop, which hands the data to the suspended coroutine: no
handler is on the stack at a read.
"""

import asyncio
import sys

held = []


async def read_to_eof(reader):
    total = 0
    while True:
        data = await reader.read(4096)
        if not data:
            return total
        total += len(data)


async def handle_leaky(reader, writer):
    await read_to_eof(reader)
    # The bug: the writer (and its socket) is kept and never closed.
    held.append(writer)
    print("leaked", flush=True)


async def handle_good(reader, writer):
    await read_to_eof(reader)
    writer.close()
    print("closed", flush=True)


async def serve(reader, writer):
    kind = await reader.read(1)
    if kind == b"L":
        await handle_leaky(reader, writer)
    else:
        await handle_good(reader, writer)


async def main():
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} PORT", file=sys.stderr)
        sys.exit(2)
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]))
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
