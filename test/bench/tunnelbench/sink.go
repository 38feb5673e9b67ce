package main

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"sync"
)

// The sink's protocol: the client's first byte picks the mode.
const (
	modeDownload = 'D' // the sink writes until the connection fails
	modeUpload   = 'U' // the sink reads to EOF, then answers the count (8 bytes, big endian)
	modeEcho     = 'E' // the sink answers each 64-byte request with 64 bytes
	msgLen       = 64
	bulkBufLen   = 256 << 10
)

// sink is the stand-in kubelet: a TCP (or, with a TLS config, TLS) server
// speaking the protocol above.
type sink struct {
	ln   net.Listener
	addr string
	wg   sync.WaitGroup
	mu   sync.Mutex
	open map[net.Conn]struct{}
}

// source is what downloads send: not all zeros, so nothing can compress it.
var source = func() []byte {
	b := make([]byte, bulkBufLen)
	x := uint64(88172645463325252)
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}()

func startSink(tc *tls.Config) (*sink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	if tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	s := &sink{ln: ln, addr: ln.Addr().String(), open: map[net.Conn]struct{}{}}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.open[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Go(func() {
				serveSink(c)
				c.Close()
				s.mu.Lock()
				delete(s.open, c)
				s.mu.Unlock()
			})
		}
	})
	return s, nil
}

func (s *sink) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.open {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func serveSink(c net.Conn) {
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return
	}
	switch mode[0] {
	case modeDownload:
		for {
			if _, err := c.Write(source); err != nil {
				return
			}
		}
	case modeUpload:
		buf := make([]byte, bulkBufLen)
		var n uint64
		for {
			m, err := c.Read(buf)
			n += uint64(m)
			if err != nil {
				if err == io.EOF {
					c.Write(binary.BigEndian.AppendUint64(nil, n))
				}
				return
			}
		}
	case modeEcho:
		var buf [msgLen]byte
		for {
			if _, err := io.ReadFull(c, buf[:]); err != nil {
				return
			}
			if _, err := c.Write(buf[:]); err != nil {
				return
			}
		}
	}
}
