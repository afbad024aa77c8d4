// A leaky server for tests/code_paths.rs. Usage: java Leak PORT (0: any).
//
// Says "listening PORT" once it listens on 127.0.0.1, then serves one
// connection at a time: the first byte picks the handler ('L': handleLeaky,
// anything else: handleGood). Both read to EOF through the same four
// helpers; only handleGood closes. After each, says "leaked" or "closed".

import java.io.IOException;
import java.io.InputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.util.ArrayList;
import java.util.List;

public class Leak {
    // Leaked sockets stay referenced, so no cleaner closes them.
    static final List<Socket> HELD = new ArrayList<>();

    static long readHelper4(InputStream in) throws IOException {
        byte[] buf = new byte[4096];
        long total = 0;
        for (;;) {
            int n = in.read(buf);
            if (n < 0) {
                return total;
            }
            total += n;
        }
    }

    static long readHelper3(InputStream in) throws IOException {
        return readHelper4(in);
    }

    static long readHelper2(InputStream in) throws IOException {
        return readHelper3(in);
    }

    static long readHelper1(InputStream in) throws IOException {
        return readHelper2(in);
    }

    static void handleLeaky(Socket socket, InputStream in) throws IOException {
        readHelper1(in);
        // The bug: the socket is kept and never closed.
        HELD.add(socket);
        System.out.println("leaked");
    }

    static void handleGood(Socket socket, InputStream in) throws IOException {
        readHelper1(in);
        socket.close();
        System.out.println("closed");
    }

    public static void main(String[] args) throws IOException {
        if (args.length != 1) {
            System.err.println("usage: java Leak PORT");
            System.exit(2);
        }
        ServerSocket listener =
                new ServerSocket(Integer.parseInt(args[0]), 64, InetAddress.getLoopbackAddress());
        System.out.println("listening " + listener.getLocalPort());
        for (;;) {
            Socket socket = listener.accept();
            InputStream in = socket.getInputStream();
            int kind = in.read();
            if (kind < 0) {
                socket.close();
            } else if (kind == 'L') {
                handleLeaky(socket, in);
            } else {
                handleGood(socket, in);
            }
        }
    }
}
