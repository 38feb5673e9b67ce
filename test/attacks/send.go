package attacks

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// MethodOf is a's method: GET when a names none.
func (a Attack) MethodOf() string {
	if a.Method == "" {
		return http.MethodGet
	}
	return a.Method
}

// Request is a's request head as written on the wire: the request line
// with the target as written, Host: metadata.google.internal,
// Metadata-Flavor: Google, the extra lines and Connection: close.
func (a Attack) Request() string {
	var b strings.Builder
	b.WriteString(a.MethodOf() + " " + a.Target + " HTTP/1.1\r\n")
	b.WriteString("Host: metadata.google.internal\r\n")
	b.WriteString("Metadata-Flavor: Google\r\n")
	for _, e := range a.Extra {
		b.WriteString(e + "\r\n")
	}
	b.WriteString("Connection: close\r\n\r\n")
	return b.String()
}

// Response is what the server answered one attack.
type Response struct {
	Status int
	Header http.Header
	Body   string
}

// HeaderText flattens the response headers ("Name: value" lines) for leak
// checks.
func (r *Response) HeaderText() string {
	var b strings.Builder
	for k, vs := range r.Header {
		for _, v := range vs {
			b.WriteString(k + ": " + v + "\n")
		}
	}
	return b.String()
}

// DialFunc dials a connection, as net.Dialer.DialContext does.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// maxBody bounds the body read: the largest dump is far smaller.
const maxBody = 4 << 20

// Send dials addr over TCP with dial, writes a's request and reads one
// response, all within timeout.
func Send(dial DialFunc, addr string, a Attack, timeout time.Duration) (*Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	if _, err := io.WriteString(conn, a.Request()); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: a.MethodOf()})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, err
	}
	return &Response{Status: resp.StatusCode, Header: resp.Header, Body: string(b)}, nil
}

// Leaks returns what in s would reveal concealed data: each of values
// found in s, and each of keys (concealed key names) found without regard
// to case.
func Leaks(s string, values, keys []string) []string {
	var out []string
	for _, v := range values {
		if v != "" && strings.Contains(s, v) {
			out = append(out, v)
		}
	}
	low := strings.ToLower(s)
	for _, k := range keys {
		if k != "" && strings.Contains(low, strings.ToLower(k)) {
			out = append(out, k)
		}
	}
	return out
}
