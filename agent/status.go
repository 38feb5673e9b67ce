package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nodetrust/nodetrust/internal/atomicfile"
)

// StatusFile is the name of the status file in the state folder; `nodetrust
// status` reads it.
const StatusFile = "status.json"

// Status is what the agent reports about itself; it holds no secret.
type Status struct {
	Node        string             `json:"node"`
	Server      string             `json:"server"`
	Updated     time.Time          `json:"updated"`
	Healthy     bool               `json:"healthy"`
	Credentials []CredentialStatus `json:"credentials"`
	// Trust is the cluster trust bundle the agent follows (CA rotation);
	// nil before the first check.
	Trust *TrustStatus `json:"trustBundle,omitempty"`
}

// TrustStatus describes the trust bundle last read from the API.
type TrustStatus struct {
	// Published is false when the API publishes none (a stock
	// kube-apiserver): the agent keeps the roots it has.
	Published  bool      `json:"published"`
	Generation uint64    `json:"generation,omitempty"`
	Phase      string    `json:"phase,omitempty"`
	ActiveCA   string    `json:"activeCA,omitempty"`
	Roots      []string  `json:"roots,omitempty"` // "subject sha256:<pin>", active first
	LastCheck  time.Time `json:"lastCheck,omitzero"`
	LastError  string    `json:"lastError,omitempty"`
}

// CredentialStatus describes one credential.
type CredentialStatus struct {
	Name         string    `json:"name"` // "client" or "serving"
	State        string    `json:"state"`
	Subject      string    `json:"subject,omitempty"`
	Issuer       string    `json:"issuer,omitempty"`
	Serial       string    `json:"serial,omitempty"`
	DNSNames     []string  `json:"dnsNames,omitempty"`
	IPs          []string  `json:"ips,omitempty"`
	NotBefore    time.Time `json:"notBefore,omitzero"`
	NotAfter     time.Time `json:"notAfter,omitzero"`
	NextRotation time.Time `json:"nextRotation,omitzero"`
	Path         string    `json:"path,omitempty"`
	Healthy      bool      `json:"healthy"`
	LastSuccess  time.Time `json:"lastSuccess,omitzero"`
	LastError    string    `json:"lastError,omitempty"`
	LastErrorAt  time.Time `json:"lastErrorAt,omitzero"`
	Failures     int       `json:"consecutiveFailures,omitempty"`
	Rotations    int       `json:"rotations,omitempty"`
}

// WriteStatus replaces the status file atomically. It is rewritten every
// round, so it is not fsynced: losing the last one costs nothing.
func WriteStatus(path string, s *Status) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteVolatile(path, append(b, '\n'), 0o644)
}

// ReadStatus reads a status file.
func ReadStatus(path string) (*Status, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read agent status: %w (is the agent running, and is --state-dir right?)", err)
	}
	var s Status
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("agent status %s: %w", path, err)
	}
	return &s, nil
}

// Describe writes s in words an operator understands.
func (s *Status) Describe(w io.Writer, now time.Time) {
	health := "healthy"
	if !s.Healthy {
		health = "UNHEALTHY"
	}
	fmt.Fprintf(w, "node %s: %s (API %s; status written %s ago)\n", s.Node, health, s.Server, ago(now, s.Updated))
	for _, c := range s.Credentials {
		fmt.Fprintf(w, "\n%s certificate: %s\n", c.Name, c.State)
		if c.Subject != "" {
			fmt.Fprintf(w, "  identity      %s\n", c.Subject)
			fmt.Fprintf(w, "  issued by     %s (serial %s)\n", c.Issuer, c.Serial)
			fmt.Fprintf(w, "  valid         %s to %s (%s)\n", c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339), left(now, c.NotAfter))
		}
		if len(c.DNSNames)+len(c.IPs) > 0 {
			fmt.Fprintf(w, "  names         %s\n", strings.Join(append(append([]string{}, c.DNSNames...), c.IPs...), ", "))
		}
		if !c.NextRotation.IsZero() {
			fmt.Fprintf(w, "  next rotation %s (in %s)\n", c.NextRotation.UTC().Format(time.RFC3339), round(c.NextRotation.Sub(now)))
		}
		if c.Path != "" {
			fmt.Fprintf(w, "  file          %s\n", c.Path)
		}
		if !c.LastSuccess.IsZero() {
			fmt.Fprintf(w, "  last renewed  %s ago (%d rotations since start)\n", ago(now, c.LastSuccess), c.Rotations)
		}
		if c.LastError != "" {
			fmt.Fprintf(w, "  last error    %s ago, %d in a row: %s\n", ago(now, c.LastErrorAt), c.Failures, c.LastError)
		} else {
			fmt.Fprintf(w, "  last error    none\n")
		}
	}
	s.describeTrust(w, now)
}

// describeTrust writes the trust-bundle part of Describe.
func (s *Status) describeTrust(w io.Writer, now time.Time) {
	t := s.Trust
	switch {
	case t == nil:
		return
	case !t.Published && t.LastError == "":
		fmt.Fprintf(w, "\ntrust bundle: none published by the API (checked %s ago); keeping the CA bundle from bootstrap\n", ago(now, t.LastCheck))
		return
	case t.Published:
		fmt.Fprintf(w, "\ntrust bundle: generation %d, rotation phase %s (checked %s ago)\n", t.Generation, t.Phase, ago(now, t.LastCheck))
		fmt.Fprintf(w, "  signing CA    %s\n", t.ActiveCA)
		for _, r := range t.Roots {
			fmt.Fprintf(w, "  trusted root  %s\n", r)
		}
	default:
		fmt.Fprintf(w, "\ntrust bundle: not read yet\n")
	}
	if t.LastError != "" {
		fmt.Fprintf(w, "  last error    %s\n", t.LastError)
	}
}

func left(now, t time.Time) string {
	if d := t.Sub(now); d > 0 {
		return round(d) + " left"
	}
	return "EXPIRED " + round(now.Sub(t)) + " ago"
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return round(now.Sub(t))
}

func round(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d >= 48*time.Hour:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	case d >= time.Hour:
		return d.Round(time.Minute).String()
	}
	return d.Round(time.Second).String()
}
