// A leaky server for tests/code_paths.rs. Usage: node leaky.js PORT (0: any).
//
// Says "listening PORT" once it listens on 127.0.0.1. The first byte of a
// connection picks the handler ("L": handleLeaky, anything else:
// handleGood). Both read to EOF through the same helpers; only handleGood
// closes at 'end'. handleLeaky's 'end' listener only says "leaked": with
// allowHalfOpen, Node does not close the socket for it. After each, says
// "leaked" or "closed".
"use strict";

const net = require("net");

// Leaked sockets stay referenced, so nothing collects them.
const held = [];

function readHelper4(socket, done) {
  let total = 0;
  socket.on("data", (chunk) => {
    total += chunk.length;
  });
  socket.on("end", () => done(total));
}

function readHelper3(socket, done) {
  readHelper4(socket, done);
}

function readHelper2(socket, done) {
  readHelper3(socket, done);
}

function readHelper1(socket, done) {
  readHelper2(socket, done);
}

function handleLeaky(socket) {
  readHelper1(socket, () => {
    // The bug: the socket is kept and never closed.
    held.push(socket);
    console.log("leaked");
  });
}

function handleGood(socket) {
  readHelper1(socket, () => {
    socket.end();
    console.log("closed");
  });
}

if (process.argv.length !== 3) {
  console.error("usage: node leaky.js PORT");
  process.exit(2);
}

const server = net.createServer({ allowHalfOpen: true }, (socket) => {
  socket.once("readable", function pick() {
    const kind = socket.read(1);
    if (kind === null) {
      socket.once("readable", pick);
      return;
    }
    if (kind.toString() === "L") {
      handleLeaky(socket);
    } else {
      handleGood(socket);
    }
  });
});
server.listen(Number(process.argv[2]), "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});
