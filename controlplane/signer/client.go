package signer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	certv1 "k8s.io/api/certificates/v1"
)

// Client calls a signer over its UNIX socket. The API process holds only
// this, never the CA key.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the signer listening at socket.
func NewClient(socket string) *Client {
	var d net.Dialer
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socket)
		},
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     time.Minute,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// Sign asks the signer to sign csr and returns the certificate PEM. A
// refusal on the request's merits wraps ErrRejected.
func (c *Client) Sign(ctx context.Context, csr *certv1.CertificateSigningRequest) ([]byte, error) {
	body, err := json.Marshal(SignRequest{CSR: csr})
	if err != nil {
		return nil, fmt.Errorf("encode sign request: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://signer"+signPath, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("sign request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("call signer at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	var out SignResponse
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxRequest)).Decode(&out); err != nil {
		return nil, fmt.Errorf("signer at %s: decode answer (HTTP %d): %w", c.socket, resp.StatusCode, err)
	}
	switch {
	case resp.StatusCode == http.StatusOK && len(out.Certificate) > 0:
		return out.Certificate, nil
	case resp.StatusCode == http.StatusUnprocessableEntity || resp.StatusCode == http.StatusBadRequest:
		return nil, fmt.Errorf("%w: %s", ErrRejected, out.Error)
	default:
		return nil, fmt.Errorf("signer at %s: HTTP %d: %s", c.socket, resp.StatusCode, out.Error)
	}
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }
