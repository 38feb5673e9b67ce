package tunnelwire

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"sync"
	"testing"
)

// Several connections reading through BatchConns at once must each get
// their own bytes back intact: buffers go back to a shared pool.
func TestBatchConnReadsIntactUnderConcurrency(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const conns, size = 4, 4 << 20
	payloads := make([][]byte, conns)
	for i := range payloads {
		payloads[i] = make([]byte, size)
		rand.Read(payloads[i])
	}
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			w := NewBatchConn(c)
			w.start()
			w.Write(payloads[i])
			if err := w.end(); err != nil {
				t.Error(err)
			}
		})
	}
	got := make(chan []byte, conns)
	for range conns {
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer c.Close()
			r := NewBatchConn(c)
			var out bytes.Buffer
			buf := make([]byte, 16<<10+5) // about one TLS record per read
			for {
				n, err := r.Read(buf)
				out.Write(buf[:n])
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
			got <- out.Bytes()
		})
	}
	wg.Wait()
	close(got)
	for b := range got {
		found := false
		for _, p := range payloads {
			if bytes.Equal(b, p) {
				found = true
			}
		}
		if !found {
			t.Fatalf("a connection read %d bytes that match no payload", len(b))
		}
	}
}

func TestHello(t *testing.T) {
	id, n, err := ParseHello(Hello("cp-a1", 3))
	if err != nil || id != "cp-a1" || n != 3 {
		t.Fatalf("round trip: %q %d %v", id, n, err)
	}
	for _, bad := range []string{"", "PRI * HTTP/2.0\r\n", "NODETRUST-TUNNEL id= count=1\n", "NODETRUST-TUNNEL id=x count=0\n", "NODETRUST-TUNNEL id=x count=2"} {
		if _, _, err := ParseHello(bad); err == nil {
			t.Errorf("ParseHello(%q) accepted", bad)
		}
	}
}
