package csr

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	certv1 "k8s.io/api/certificates/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const csrPath = "/apis/certificates.k8s.io/v1/certificatesigningrequests"

// APIError is an error answer of the API: its HTTP status and the
// metav1.Status it sent. errors.Is matches a 401 to ErrUnauthorized and a
// 403 to ErrForbidden.
type APIError struct {
	Method  string
	URL     string // includes the server
	Code    int
	Reason  metav1.StatusReason
	Message string
}

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Code)
	}
	reason := string(e.Reason)
	if reason == "" {
		reason = http.StatusText(e.Code)
	}
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.URL, e.Code, reason, msg)
}

// Unwrap returns ErrUnauthorized or ErrForbidden for a 401 or a 403.
func (e *APIError) Unwrap() error {
	switch e.Code {
	case http.StatusUnauthorized:
		return ErrUnauthorized
	case http.StatusForbidden:
		return ErrForbidden
	}
	return nil
}

// statusCode returns the HTTP status of an *APIError in err's chain, or 0.
func statusCode(err error) int {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Code
	}
	return 0
}

func (c *Client) httpClient() *http.Client {
	if c.HTTPClient != nil {
		return c.HTTPClient
	}
	return http.DefaultClient
}

func (c *Client) url(name string, q url.Values) string {
	u := strings.TrimRight(c.Server, "/") + csrPath
	if name != "" {
		u += "/" + url.PathEscape(name)
	}
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

// send sends one call. The caller closes the body of a returned response.
func (c *Client) send(ctx context.Context, method, u string, body []byte) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "nodetrust-agent")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		// *url.Error names the method and URL, never the headers.
		return nil, err
	}
	return resp, nil
}

// readAll reads a body of at most MaxResponse bytes.
func readAll(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, MaxResponse+1))
	if err != nil {
		return nil, fmt.Errorf("read response: %w", err)
	}
	if len(b) > MaxResponse {
		return nil, fmt.Errorf("response is over %d bytes", MaxResponse)
	}
	return b, nil
}

// apiError turns an error answer into an *APIError, with the message of
// its metav1.Status when it sent one.
func apiError(method, u string, code int, body []byte) *APIError {
	e := &APIError{Method: method, URL: u, Code: code}
	var st metav1.Status
	if json.Unmarshal(body, &st) == nil && (st.Kind == "Status" || st.Message != "") {
		e.Reason, e.Message = st.Reason, st.Message
		return e
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > 512 {
		msg = msg[:512] + "…"
	}
	e.Message = strings.ToValidUTF8(msg, "?")
	return e
}

// call sends one call and decodes a 200 or 201 answer into out.
func (c *Client) call(ctx context.Context, method, u string, body []byte, out any) error {
	resp, err := c.send(ctx, method, u, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := readAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, u, err)
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		return apiError(method, u, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, u, err)
	}
	return nil
}

func (c *Client) create(ctx context.Context, obj *certv1.CertificateSigningRequest) (*certv1.CertificateSigningRequest, error) {
	body, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encode request: %w", err)
	}
	var out certv1.CertificateSigningRequest
	if err := c.call(ctx, http.MethodPost, c.url("", nil), body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

func (c *Client) get(ctx context.Context, name string) (*certv1.CertificateSigningRequest, error) {
	var out certv1.CertificateSigningRequest
	if err := c.call(ctx, http.MethodGet, c.url(name, nil), nil, &out); err != nil {
		return nil, err
	}
	if out.Name != name {
		return nil, fmt.Errorf("GET %s: answer is for %q", c.url(name, nil), out.Name)
	}
	return &out, nil
}
