// A net/http client that forgets resp.Body.Close(), for tests/origin_paths.rs.
// Usage: http_body (no arguments).
//
// Runs an http.Server on 127.0.0.1 whose every response says "Connection:
// close" and hangs up, says "ready PORT" (that server's port), then makes
// one GET to it per line it reads on stdin ("L": getLeaky, anything else:
// getGood). Both get through the same helper; getGood reads and closes the
// body, getLeaky never closes it, the textbook net/http leak: the
// transport keeps the connection for the unread body, and the server's
// hang-up leaves it in CLOSE_WAIT. After each, says "leaked" or "closed";
// at the end of stdin, keeps what it leaked until it is killed.
//
// The client's socket is dialed and read by the transport's own
// goroutines, so no stack of it holds main's frames: the report can only
// say what the frames suggest.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
)

// The functions are marked noinline, as larger real ones would not be
// inlined: the Go compiler inlines functions this small.

//go:noinline
func get(url string) (*http.Response, error) {
	return http.Get(url)
}

//go:noinline
func getLeaky(url string) error {
	resp, err := get(url)
	if err != nil {
		return err
	}
	// The bug: resp.Body is never closed.
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

//go:noinline
func getGood(url string) error {
	resp, err := get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return err
}

func main() {
	if len(os.Args) != 1 {
		fmt.Fprintf(os.Stderr, "usage: %s\n", os.Args[0])
		os.Exit(2)
	}
	listener, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	server := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Connection", "close")
		fmt.Fprintln(w, "ok")
	})}
	go server.Serve(listener)
	url := fmt.Sprintf("http://%s/", listener.Addr())
	fmt.Printf("ready %d\n", listener.Addr().(*net.TCPAddr).Port)
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		check, answer := getGood, "closed"
		if lines.Text() == "L" {
			check, answer = getLeaky, "leaked"
		}
		if err := check(url); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(answer)
	}
	select {}
}
