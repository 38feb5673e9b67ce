// Package certstore keeps a node's certificate and key on disk so that a
// crash, kill -9 or power cut at any instant leaves either the old or the
// new credential, complete.
//
// Each issued pair is written once to a dated file,
// "<prefix>-YYYY-MM-DD-HH-MM-SS.pem" (certificate chain, then key, mode
// 0600), through a temporary file that is fsynced and renamed into place.
// "<prefix>-current.pem" is a symbolic link to the dated file in use; it is
// switched by renaming a new link over it, so there is never an instant
// without one, and the folder is fsynced. Kubeconfigs name the link, so
// they stay valid across rotations. Old dated files beyond Store.Keep are
// pruned.
//
// This improves on client-go's FileStore, which removes the link before
// renaming the new one into place, never fsyncs, and never prunes.
//
// A Store assumes it is the only writer of its Dir and Prefix: one agent
// per node, which systemd ensures.
package certstore

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/nodetrust/nodetrust/internal/clock"
)

// ErrNoCredential is returned by Current when no credential was ever
// stored: the "<prefix>-current.pem" link does not exist. The caller
// bootstraps.
var ErrNoCredential = errors.New("no stored credential")

// ErrCorrupt is returned, wrapped with the file at fault, by Current when
// the stored credential is unusable: not PEM, truncated, no certificate,
// no key or a key that does not match the certificate, a link pointing at
// a missing file, or a file that group or others may read (see
// ErrInsecureMode). The caller discards it and bootstraps again; a later
// Update replaces it.
var ErrCorrupt = errors.New("stored credential unusable")

// ErrInsecureMode is returned, together with ErrCorrupt, by Current when
// the credential file grants group or others any access: the key may have
// been read, so it is not used.
var ErrInsecureMode = errors.New("credential file readable by group or others")

// ErrBadPair is returned by Update when the certificate and key it was
// given do not parse, do not match, or do not chain to the roots. Nothing
// is written and the current credential stays.
var ErrBadPair = errors.New("invalid certificate and key")

// DefaultKeep is how many dated files Update keeps besides the current
// one when Store.Keep is zero.
const DefaultKeep = 3

// maxFileSize bounds what Current reads.
const maxFileSize = 1 << 20

// Store is a crash-safe on-disk store for one certificate and key, for
// example the kubelet's client credential. Set Dir and Prefix; the other
// fields have working zero values. A Store must not be copied after first
// use; its methods are safe for concurrent use.
type Store struct {
	// Dir is the folder holding the files, e.g. /var/lib/nodetrust/pki.
	// It is created with mode 0700 if missing.
	Dir string
	// Prefix names the files: "kubelet-client" or "kubelet-server".
	// Required.
	Prefix string
	// Keep is how many dated files are kept besides the current one. Zero
	// means DefaultKeep; a negative value keeps none.
	Keep int
	// Clock names dated files, in UTC. Nil means the real clock.
	Clock clock.Clock
	// Logger receives updates, prunes and warnings; never key material.
	// Nil discards.
	Logger *slog.Logger

	mu sync.Mutex // serialises writers
}

// Pair is a loaded, validated certificate and key.
type Pair struct {
	// Cert is the leaf certificate, Chain[0].
	Cert *x509.Certificate
	// Chain is every certificate in the file, leaf first.
	Chain []*x509.Certificate
	// Key is the private key; its public half is Cert's.
	Key crypto.Signer
	// TLS is the pair for tls.Config.GetClientCertificate, Leaf set.
	TLS *tls.Certificate
	// CertPEM is the chain and KeyPEM the key, as PEM.
	CertPEM, KeyPEM []byte
	// Path is the dated file the pair was read from or written to.
	Path string
}

// CurrentPath returns the path of the "<prefix>-current.pem" link, for
// kubeconfigs' client-certificate and client-key.
func (s *Store) CurrentPath() string {
	return filepath.Join(s.Dir, s.Prefix+"-current.pem")
}

func (s *Store) pendingPath() string {
	return filepath.Join(s.Dir, s.Prefix+"-pending.key")
}

func (s *Store) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger.With("store", filepath.Join(s.Dir, s.Prefix))
}

func (s *Store) check() error {
	if s.Dir == "" {
		return errors.New("certstore: Dir is empty")
	}
	if s.Prefix == "" || strings.ContainsAny(s.Prefix, `/\`) || strings.HasPrefix(s.Prefix, ".") {
		return fmt.Errorf("certstore: Prefix %q: want a file name prefix such as kubelet-client", s.Prefix)
	}
	return nil
}

func (s *Store) ensureDir() error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("certstore: create %s: %w", s.Dir, err)
	}
	if fi, err := os.Stat(s.Dir); err == nil && fi.Mode().Perm()&0o077 != 0 {
		s.log().Warn("credential folder is accessible to group or others", "dir", s.Dir, "mode", fi.Mode().Perm().String())
	}
	return nil
}

// Current loads the credential "<prefix>-current.pem" points at. It fails
// with ErrNoCredential when there is none and with ErrCorrupt, naming the
// file, when it is unusable. It does not judge expiry: the caller does,
// with its clock and leeway.
func (s *Store) Current() (*Pair, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	link := s.CurrentPath()
	fi, err := os.Lstat(link)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("certstore: %s: %w", link, ErrNoCredential)
	}
	if err != nil {
		return nil, fmt.Errorf("certstore: %w", err)
	}
	target := link
	if fi.Mode()&fs.ModeSymlink != 0 {
		t, err := os.Readlink(link)
		if err != nil {
			return nil, fmt.Errorf("certstore: %w", err)
		}
		if !filepath.IsAbs(t) {
			t = filepath.Join(s.Dir, t)
		}
		target = t
	}
	f, err := os.Open(target)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("certstore: %s points at %s, which does not exist: %w", link, target, ErrCorrupt)
	}
	if err != nil {
		return nil, fmt.Errorf("certstore: %w", err)
	}
	defer f.Close()
	fi, err = f.Stat()
	if err != nil {
		return nil, fmt.Errorf("certstore: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("certstore: %s is not a regular file: %w", target, ErrCorrupt)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("certstore: %s: mode %04o, want 0600: %w: %w", target, perm, ErrInsecureMode, ErrCorrupt)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("certstore: read %s: %w", target, err)
	}
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("certstore: %s: over %d bytes: %w", target, maxFileSize, ErrCorrupt)
	}
	p, err := parseStored(b)
	if err != nil {
		return nil, fmt.Errorf("certstore: %s: %w: %w", target, ErrCorrupt, err)
	}
	p.Path = target
	return p, nil
}
