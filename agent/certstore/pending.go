package certstore

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"github.com/nodetrust/nodetrust/internal/atomicfile"
)

// PendingKey returns the key for the certificate request in flight,
// "<prefix>-pending.key" (mode 0600), creating a new ECDSA P-256 key when
// there is none. Keeping it until the certificate is stored means a
// restart rebuilds the same request and re-attaches to the same CSR
// instead of filing another. A pending key that does not parse, or that
// group or others could read, is replaced with a new one and a warning is
// logged.
func (s *Store) PendingKey() (crypto.Signer, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ensureDir(); err != nil {
		return nil, err
	}
	path := s.pendingPath()
	key, err := loadPendingKey(path)
	switch {
	case err == nil:
		return key, nil
	case errors.Is(err, fs.ErrNotExist):
	case errors.Is(err, ErrCorrupt):
		s.log().Warn("replacing unusable pending key", "path", path, "error", err)
	default:
		return nil, err
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certstore: generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("certstore: encode key: %w", err)
	}
	if err := atomicfile.Write(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("certstore: %w", err)
	}
	s.log().Info("created pending key", "path", path)
	return k, nil
}

func loadPendingKey(path string) (crypto.Signer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("certstore: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("certstore: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("certstore: %s: mode %04o, want 0600: %w: %w", path, perm, ErrInsecureMode, ErrCorrupt)
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("certstore: read %s: %w", path, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("certstore: %s: no PEM block: %w", path, ErrCorrupt)
	}
	k, err := parseKey(blk)
	if err != nil {
		return nil, fmt.Errorf("certstore: %s: %w: %w", path, ErrCorrupt, err)
	}
	return k, nil
}

// DiscardPendingKey removes the pending key, once its certificate is
// stored or its request was denied. No pending key is not an error.
func (s *Store) DiscardPendingKey() error {
	if err := s.check(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err := os.Remove(s.pendingPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("certstore: %w", err)
	}
	return atomicfile.SyncDir(s.Dir)
}
