// A server whose leak never reads EOF, for tests/origin_paths.rs. Usage:
// read_once PATTERN PORT (0: any).
//
// Says "listening PORT" once it listens on 127.0.0.1, then serves one
// connection per letter of PATTERN, in order ('L': handleLeaky, anything
// else: handleGood). Both accept, read the request with one Read (never to
// EOF) and process it through the same helpers; processRequest rejects a
// request that starts with 'L'. On that error handleLeaky returns without
// Close, the textbook leak; handleGood closes on every path (defer). After
// each, says "leaked" or "closed"; after the last, keeps what it leaked
// until it is killed.
//
// The handler is picked before Accept, not by the request's first byte as
// in leaky.go: reading that byte would be the connection's first read, in
// code both handlers share, and every stack the probe may take of the
// socket (at accept where fexit works, at its first read) must lie inside
// the handler that leaks it.
package main

import (
	"errors"
	"fmt"
	"net"
	"os"
)

// Open connections, as a server keeps them to shut them down: what keeps a
// connection whose Close was skipped from being closed by its finalizer.
var connections = map[net.Conn]struct{}{}

var errBadRequest = errors.New("bad request")

// The handlers and helpers are marked noinline, as larger real ones would
// not be inlined: the Go compiler inlines functions this small.

//go:noinline
func acceptConnection(listener net.Listener) (net.Conn, error) {
	c, err := listener.Accept()
	if err == nil {
		connections[c] = struct{}{}
	}
	return c, err
}

//go:noinline
func closeConnection(c net.Conn) {
	delete(connections, c)
	c.Close()
}

//go:noinline
func receive(c net.Conn, buf []byte) (int, error) {
	return c.Read(buf)
}

//go:noinline
func readRequest(c net.Conn) ([]byte, error) {
	buf := make([]byte, 1024)
	n, err := receive(c, buf)
	return buf[:n], err
}

//go:noinline
func processRequest(request []byte) error {
	if len(request) == 0 || request[0] == 'L' {
		return errBadRequest
	}
	return nil
}

//go:noinline
func handleLeaky(listener net.Listener) error {
	c, err := acceptConnection(listener)
	if err != nil {
		return err
	}
	request, err := readRequest(c)
	if err != nil {
		return err
	}
	if err := processRequest(request); err != nil {
		// The bug: the error path returns without c.Close().
		return err
	}
	closeConnection(c)
	return nil
}

//go:noinline
func handleGood(listener net.Listener) error {
	c, err := acceptConnection(listener)
	if err != nil {
		return err
	}
	defer closeConnection(c)
	request, err := readRequest(c)
	if err != nil {
		return err
	}
	return processRequest(request)
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintf(os.Stderr, "usage: %s PATTERN PORT\n", os.Args[0])
		os.Exit(2)
	}
	listener, err := net.Listen("tcp4", "127.0.0.1:"+os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening %d\n", listener.Addr().(*net.TCPAddr).Port)
	for _, kind := range os.Args[1] {
		handler := handleGood
		if kind == 'L' {
			handler = handleLeaky
		}
		before := len(connections)
		if err := handler(listener); err != nil && !errors.Is(err, errBadRequest) {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if len(connections) > before {
			fmt.Println("leaked")
		} else {
			fmt.Println("closed")
		}
	}
	select {}
}
