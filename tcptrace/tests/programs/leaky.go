// A leaky server for tests/code_paths.rs. Usage: leaky PORT (0: any).
//
// Says "listening PORT" once it listens on 127.0.0.1, then serves each
// connection on a goroutine: the first byte picks the handler ('L':
// handleLegacy, anything else: handleGood). Both read to EOF through
// drain; only handleGood closes. After each, says "leaked" or "closed".
package main

import (
	"fmt"
	"net"
	"os"
	"sync"
)

// Leaked connections stay referenced, so no finalizer closes them.
var (
	heldMu sync.Mutex
	held   []net.Conn
	outMu  sync.Mutex
)

func say(line string) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Println(line)
}

// The handlers and helpers are marked noinline, as larger real ones would
// not be inlined: the Go compiler inlines functions this small.

//go:noinline
func readUntilEOF(c net.Conn) int {
	buf := make([]byte, 4096)
	total := 0
	for {
		n, err := c.Read(buf)
		total += n
		if err != nil {
			return total
		}
	}
}

//go:noinline
func readBody(c net.Conn) int {
	return readUntilEOF(c)
}

//go:noinline
func readRequest(c net.Conn) int {
	return readBody(c)
}

//go:noinline
func drain(c net.Conn) int {
	return readRequest(c)
}

//go:noinline
func handleLegacy(c net.Conn) {
	drain(c)
	// The bug: the connection is kept and never closed.
	heldMu.Lock()
	held = append(held, c)
	heldMu.Unlock()
	say("leaked")
}

//go:noinline
func handleGood(c net.Conn) {
	drain(c)
	c.Close()
	say("closed")
}

func serve(c net.Conn) {
	kind := make([]byte, 1)
	if n, _ := c.Read(kind); n != 1 {
		c.Close()
		return
	}
	if kind[0] == 'L' {
		handleLegacy(c)
	} else {
		handleGood(c)
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintf(os.Stderr, "usage: %s PORT\n", os.Args[0])
		os.Exit(2)
	}
	listener, err := net.Listen("tcp4", "127.0.0.1:"+os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	say(fmt.Sprintf("listening %d", listener.Addr().(*net.TCPAddr).Port))
	for {
		c, err := listener.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go serve(c)
	}
}
