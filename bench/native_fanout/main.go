// A minimal watch fan-out server in Go, the native counterpart of bench/hub_fanout.py's
// bare aiohttp baseline: GET /watch holds a chunked response open and streams each line
// POSTed to /fire to every watcher (one goroutine and one write, one TLS record, per
// watcher and line). It measures what TLS costs a fan-out when the records are not made
// by Python: the floor under the hub's tls_vs_plain ratios on this machine.
//
//	native_fanout [cert.pem key.pem]
//
// It listens on 127.0.0.1 (a free port, printed on the first line of stdout), over HTTPS
// when given a certificate and key.
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
)

type fanout struct {
	mu       sync.Mutex
	watchers []chan []byte
}

func (f *fanout) watch(w http.ResponseWriter, r *http.Request) {
	lines := make(chan []byte, 1024)
	f.mu.Lock()
	f.watchers = append(f.watchers, lines)
	f.mu.Unlock()
	flusher := w.(http.Flusher)
	w.WriteHeader(http.StatusOK)
	flusher.Flush()
	for {
		select {
		case line := <-lines:
			if _, err := w.Write(line); err != nil {
				return
			}
			flusher.Flush()
		case <-r.Context().Done():
			return
		}
	}
}

func (f *fanout) fire(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	line := append(body, '\n')
	f.mu.Lock()
	for _, c := range f.watchers {
		c <- line
	}
	n := len(f.watchers)
	f.mu.Unlock()
	fmt.Fprint(w, n)
}

func main() {
	f := &fanout{}
	mux := http.NewServeMux()
	mux.HandleFunc("/watch", f.watch)
	mux.HandleFunc("/fire", f.fire)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	srv := &http.Server{Handler: mux}
	if len(os.Args) > 2 {
		err = srv.ServeTLS(ln, os.Args[1], os.Args[2])
	} else {
		err = srv.Serve(ln)
	}
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
