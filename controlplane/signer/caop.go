package signer

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/nodetrust/nodetrust/controlplane/csrpolicy"
)

// caOp is the request of a CA operation connection.
type caOp struct {
	Op     string         `json:"op"` // "create", "drop" or "list"
	Create *CreateRequest `json:"create,omitempty"`
	Pin    string         `json:"pin,omitempty"` // for "drop"
}

// caOpTimeout bounds a CA operation on either side.
const caOpTimeout = 30 * time.Second

// serveCAOp answers the one CA operation of a connection.
func (s *Server) serveCAOp(c net.Conn, r *bufio.Reader) {
	c.SetDeadline(time.Now().Add(caOpTimeout))
	f, err := readFrame(r, nil)
	if err != nil {
		s.cfg.Logger.Warn("signer CA operation", "err", err)
		return
	}
	var op caOp
	var out any
	if err = json.Unmarshal(f, &op); err != nil {
		err = fmt.Errorf("%w: decode CA operation: %v", csrpolicy.ErrPolicy, err)
	} else {
		switch op.Op {
		case "create":
			if op.Create == nil {
				err = fmt.Errorf("%w: create without a request", csrpolicy.ErrPolicy)
				break
			}
			out, err = s.CreateCA(*op.Create)
		case "drop":
			err = s.DropCA(op.Pin)
			out = struct{}{}
		case "list":
			out = s.CAs()
		default:
			err = fmt.Errorf("%w: unknown CA operation %q", csrpolicy.ErrPolicy, op.Op)
		}
	}
	code, body := codeSigned, []byte(nil)
	if err != nil {
		s.cfg.Logger.Warn("refused CA operation", "op", op.Op, "err", err)
		code, body = codeError, []byte(err.Error())
		if errors.Is(err, csrpolicy.ErrPolicy) {
			code = codeRejected
		}
	} else {
		body, _ = json.Marshal(out)
	}
	w := bufio.NewWriter(c)
	w.Write(appendFrameHeader(nil, 1+len(body)))
	w.WriteByte(code)
	w.Write(body)
	w.Flush()
}

// caCall runs one CA operation and decodes its answer into out.
func (c *Client) caCall(ctx context.Context, op caOp, out any) error {
	ctx, cancel := context.WithTimeout(ctx, caOpTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return fmt.Errorf("call signer at %s: %w", c.socket, err)
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	b, _ := json.Marshal(op)
	w := bufio.NewWriter(nc)
	w.WriteString(preambleCA)
	w.Write(appendFrameHeader(nil, len(b)))
	w.Write(b)
	if err := w.Flush(); err != nil {
		return fmt.Errorf("call signer at %s: %w", c.socket, err)
	}
	f, err := readFrame(bufio.NewReader(nc), nil)
	if err != nil {
		return fmt.Errorf("call signer at %s: read answer: %w", c.socket, err)
	}
	if len(f) < 1 {
		return fmt.Errorf("call signer at %s: empty answer", c.socket)
	}
	switch f[0] {
	case codeSigned:
		return json.Unmarshal(f[1:], out)
	case codeRejected:
		return fmt.Errorf("%w: %s", ErrRejected, f[1:])
	default:
		return fmt.Errorf("signer at %s: %s", c.socket, f[1:])
	}
}

// CreateCA asks the signer for a new root CA (see Server.CreateCA).
func (c *Client) CreateCA(ctx context.Context, req CreateRequest) (CreateAnswer, error) {
	var a CreateAnswer
	err := c.caCall(ctx, caOp{Op: "create", Create: &req}, &a)
	return a, err
}

// DropCA asks the signer to delete the key of the CA with pin.
func (c *Client) DropCA(ctx context.Context, pin string) error {
	return c.caCall(ctx, caOp{Op: "drop", Pin: pin}, &struct{}{})
}

// CAs lists the CAs the signer holds.
func (c *Client) CAs(ctx context.Context) ([]CAInfo, error) {
	var out []CAInfo
	err := c.caCall(ctx, caOp{Op: "list"}, &out)
	return out, err
}
