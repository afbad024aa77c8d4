// A server whose leak never reads EOF, for tests/origin_paths.rs. Usage:
// java ReadOnce PATTERN PORT (0: any).
//
// Says "listening PORT" once it listens on 127.0.0.1, then serves one
// connection per letter of PATTERN, in order ('L': handleLeaky, anything
// else: handleGood). Both accept, read the request with one read (never to
// EOF) and process it through the same helpers; processRequest throws on a
// request that starts with 'L'. In handleLeaky the exception skips the
// close, the textbook leak; handleGood closes in a finally. After each,
// says "leaked" or "closed"; after the last, keeps what it leaked until it
// is killed.
//
// The handler is picked before accept(), not by the request's first byte as
// in Leak.java: reading that byte would be the socket's first read, in code
// both handlers share, and every stack the probe may take of the socket (at
// accept where fexit works, at its first read) must lie inside the handler
// that leaks it.

import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.HashSet;
import java.util.Set;

public class ReadOnce {
    // Open connections, as a server keeps them to shut them down: what keeps
    // a socket whose close was skipped from being closed by its cleaner.
    static final Set<Socket> OPEN = new HashSet<>();

    static final class BadRequest extends RuntimeException {
        BadRequest() {
            super("bad request");
        }
    }

    static Socket acceptConnection(ServerSocket listener) throws IOException {
        Socket socket = listener.accept();
        OPEN.add(socket);
        return socket;
    }

    static void closeConnection(Socket socket) throws IOException {
        OPEN.remove(socket);
        socket.close();
    }

    static int receive(Socket socket, byte[] buf) throws IOException {
        return socket.getInputStream().read(buf);
    }

    static int readRequest(Socket socket, byte[] buf) throws IOException {
        return receive(socket, buf);
    }

    static int processRequest(byte[] buf, int n) {
        if (n <= 0 || buf[0] == 'L') {
            throw new BadRequest();
        }
        return n;
    }

    static void handleLeaky(ServerSocket listener) throws IOException {
        Socket socket = acceptConnection(listener);
        byte[] buf = new byte[1024];
        int n = readRequest(socket, buf);
        processRequest(buf, n);
        // The bug: skipped when processRequest throws.
        closeConnection(socket);
    }

    static void handleGood(ServerSocket listener) throws IOException {
        Socket socket = acceptConnection(listener);
        try {
            byte[] buf = new byte[1024];
            int n = readRequest(socket, buf);
            processRequest(buf, n);
        } finally {
            closeConnection(socket);
        }
    }

    public static void main(String[] args) throws IOException, InterruptedException {
        if (args.length != 2) {
            System.err.println("usage: java ReadOnce PATTERN PORT");
            System.exit(2);
        }
        ServerSocket listener =
                new ServerSocket(Integer.parseInt(args[1]), 64, InetAddress.getLoopbackAddress());
        System.out.println("listening " + listener.getLocalPort());
        for (char kind : args[0].toCharArray()) {
            int before = OPEN.size();
            try {
                if (kind == 'L') {
                    handleLeaky(listener);
                } else {
                    handleGood(listener);
                }
            } catch (BadRequest e) {
                // What the server's loop does with a bad request: go on.
            }
            System.out.println(OPEN.size() > before ? "leaked" : "closed");
        }
        Thread.sleep(Long.MAX_VALUE);
    }
}
