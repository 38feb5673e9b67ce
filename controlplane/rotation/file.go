package rotation

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/nodetrust/nodetrust/internal/atomicfile"
)

// ErrNoState is wrapped by Load when the file does not exist yet.
var ErrNoState = fs.ErrNotExist

// Load reads a state file written by Save.
func Load(path string) (State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return State{}, fmt.Errorf("read rotation state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, fmt.Errorf("rotation state %s: %w", path, err)
	}
	if err := s.Check(); err != nil {
		return State{}, fmt.Errorf("rotation state %s: %w", path, err)
	}
	return s, nil
}

// Save writes s to path crash-safely (temp file, fsync, rename).
func Save(path string, s State) error {
	if err := s.Check(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o644)
}

// IsNotExist reports whether err says there is no state file yet.
func IsNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }
