package certstore

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/nodetrust/nodetrust/internal/atomicfile"
	"github.com/nodetrust/nodetrust/internal/clock"
)

// timeLayout is the dated file's time stamp, as client-go's FileStore
// names them.
const timeLayout = "2006-01-02-15-04-05"

// Update validates certPEM (the certificate, then any intermediates) and
// keyPEM, and, when roots is not nil, that the certificate chains to
// roots; on failure it returns ErrBadPair and changes nothing. It then
// writes them to a new dated file, points "<prefix>-current.pem" at it,
// removes the pending key if it is the stored certificate's key (its
// request is done), and prunes old dated files beyond Keep, never the
// current one. A dated file
// whose name is taken (two updates in one second) gets a "-N" suffix; an
// existing file is never overwritten. Pruning failures are logged, not
// returned: the update has taken effect.
func (s *Store) Update(certPEM, keyPEM []byte, roots *x509.CertPool) (*Pair, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	p, err := parseInput(certPEM, keyPEM)
	if err == nil && roots != nil {
		err = verifyChain(p, roots)
	}
	if err != nil {
		return nil, fmt.Errorf("certstore: update %s: %w: %w", s.Prefix, ErrBadPair, err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ensureDir(); err != nil {
		return nil, err
	}
	name, err := s.freeName()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(s.Dir, name)
	content := slices.Concat(p.CertPEM, p.KeyPEM)
	if err := atomicfile.Write(path, content, 0o600); err != nil {
		return nil, fmt.Errorf("certstore: %w", err)
	}
	// Read back what reached the disk before switching to it.
	back, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("certstore: read back %s: %w", path, err)
	}
	if !bytes.Equal(back, content) {
		return nil, fmt.Errorf("certstore: %s reads back different from what was written", path)
	}
	if err := atomicfile.Symlink(name, s.CurrentPath()); err != nil {
		return nil, fmt.Errorf("certstore: %w", err)
	}
	p.Path = path
	s.log().Info("credential stored", "path", path, "subject", p.Cert.Subject.String(),
		"serial", p.Cert.SerialNumber.String(), "not_after", p.Cert.NotAfter)
	s.dropPendingLocked(p)
	s.pruneLocked(name)
	return p, nil
}

// freeName returns an unused dated file name for now.
func (s *Store) freeName() (string, error) {
	stamp := clock.Or(s.Clock).Now().UTC().Format(timeLayout)
	for n := 0; n < 10000; n++ {
		name := s.Prefix + "-" + stamp + ".pem"
		if n > 0 {
			name = s.Prefix + "-" + stamp + "-" + strconv.Itoa(n) + ".pem"
		}
		_, err := os.Lstat(filepath.Join(s.Dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			return name, nil
		}
		if err != nil {
			return "", fmt.Errorf("certstore: %w", err)
		}
	}
	return "", fmt.Errorf("certstore: no free file name for %s-%s in %s", s.Prefix, stamp, s.Dir)
}

// datedFile is a parsed dated file name.
type datedFile struct {
	name  string
	stamp string
	n     int
}

func (s *Store) datedRE() *regexp.Regexp {
	return regexp.MustCompile(`^` + regexp.QuoteMeta(s.Prefix) + `-(\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d)(?:-(\d+))?\.pem$`)
}

// pruneLocked removes dated files beyond Keep, newest kept, never current
// (the name the link points at), and temporary files a crash left behind.
func (s *Store) pruneLocked(current string) {
	log := s.log()
	keep := s.Keep
	switch {
	case keep == 0:
		keep = DefaultKeep
	case keep < 0:
		keep = 0
	}
	ents, err := os.ReadDir(s.Dir)
	if err != nil {
		log.Warn("list credential folder for pruning", "error", err)
		return
	}
	re := s.datedRE()
	var dated []datedFile
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, "."+s.Prefix+"-") && (strings.Contains(name, ".tmp") || strings.HasSuffix(name, ".new")) {
			// atomicfile's temporary files from a write a crash cut short.
			os.Remove(filepath.Join(s.Dir, name))
			continue
		}
		m := re.FindStringSubmatch(name)
		if m == nil || name == current {
			continue
		}
		n := 0
		if m[2] != "" {
			n, _ = strconv.Atoi(m[2])
		}
		dated = append(dated, datedFile{name: name, stamp: m[1], n: n})
	}
	// Newest first.
	slices.SortFunc(dated, func(a, b datedFile) int {
		if c := strings.Compare(b.stamp, a.stamp); c != 0 {
			return c
		}
		return b.n - a.n
	})
	for _, d := range dated[min(keep, len(dated)):] {
		path := filepath.Join(s.Dir, d.name)
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			log.Warn("prune old credential", "path", path, "error", err)
			continue
		}
		log.Debug("pruned old credential", "path", path)
	}
	// No folder sync after pruning: an old file that a power failure brings
	// back is pruned next time, and costs nothing meanwhile.
}

// dropPendingLocked removes the pending key when p holds it.
func (s *Store) dropPendingLocked(p *Pair) {
	path := s.pendingPath()
	k, err := loadPendingKey(path)
	if err != nil {
		return
	}
	pub, ok := k.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(p.Key.Public()) {
		return
	}
	if err := os.Remove(path); err != nil {
		s.log().Warn("remove pending key", "path", path, "error", err)
		return
	}
	if err := atomicfile.SyncDir(s.Dir); err != nil {
		s.log().Warn("sync credential folder", "error", err)
	}
}
