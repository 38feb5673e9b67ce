package pki

import (
	"crypto"
	"fmt"
	"os"

	"github.com/nodetrust/nodetrust/internal/atomicfile"
)

// WriteFile writes data to path crash-safely (see atomicfile.Write): after
// a crash path holds either the old or the new content, never a mix.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	return atomicfile.Write(path, data, perm)
}

// SyncDir fsyncs a folder so that renames and creations in it are durable.
func SyncDir(dir string) error { return atomicfile.SyncDir(dir) }

// CheckKeyFileMode returns an error naming path when the file can be read
// or written by anyone but its owner.
func CheckKeyFileMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return fmt.Errorf("key file %s has mode %04o; it must be 0600 or stricter (chmod 600 %s)", path, m, path)
	}
	return nil
}

// ReadKeyFile reads a private key from path after checking its mode.
func ReadKeyFile(path string) (crypto.Signer, error) {
	if err := CheckKeyFileMode(path); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	k, err := ParseKey(b)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}

// ReadCertFile reads the first certificate of a PEM file.
func ReadCertFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	if _, err := ParseCerts(b); err != nil {
		return nil, fmt.Errorf("certificate file %s: %w", path, err)
	}
	return b, nil
}
