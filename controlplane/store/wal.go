package store

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"time"
)

const (
	opPut    byte = 1
	opDelete byte = 2
)

const maxRecord = 64 << 20

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// record is one log entry: "kind/name is data at rv" or "kind/name is gone
// at rv". Replaying a record twice has the effect of replaying it once.
type record struct {
	Op   byte
	RV   uint64
	Kind string
	Name string
	Data []byte
}

// appendTo encodes r as: length (4), CRC-32C of the payload (4), payload
// = op (1), rv (8), len(kind) (2), kind, len(name) (2), name, data.
func (r record) appendTo(b []byte) []byte {
	n := 1 + 8 + 2 + len(r.Kind) + 2 + len(r.Name) + len(r.Data)
	start := len(b)
	b = binary.LittleEndian.AppendUint32(b, uint32(n))
	b = binary.LittleEndian.AppendUint32(b, 0)
	p := len(b)
	b = append(b, r.Op)
	b = binary.LittleEndian.AppendUint64(b, r.RV)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(r.Kind)))
	b = append(b, r.Kind...)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(r.Name)))
	b = append(b, r.Name...)
	b = append(b, r.Data...)
	binary.LittleEndian.PutUint32(b[start+4:], crc32.Checksum(b[p:], crcTable))
	return b
}

var errTorn = errors.New("torn record")

func readRecord(r *bufio.Reader) (record, int, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if err == io.EOF {
			return record{}, 0, io.EOF
		}
		return record{}, 0, errTorn
	}
	n := binary.LittleEndian.Uint32(hdr[:4])
	if n < 13 || n > maxRecord {
		return record{}, 0, errTorn
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return record{}, 0, errTorn
	}
	if crc32.Checksum(p, crcTable) != binary.LittleEndian.Uint32(hdr[4:]) {
		return record{}, 0, errTorn
	}
	var rec record
	rec.Op = p[0]
	rec.RV = binary.LittleEndian.Uint64(p[1:9])
	kl := int(binary.LittleEndian.Uint16(p[9:11]))
	if 11+kl+2 > len(p) {
		return record{}, 0, errTorn
	}
	rec.Kind = string(p[11 : 11+kl])
	q := p[11+kl:]
	nl := int(binary.LittleEndian.Uint16(q[:2]))
	if 2+nl > len(q) {
		return record{}, 0, errTorn
	}
	rec.Name = string(q[2 : 2+nl])
	if d := q[2+nl:]; len(d) > 0 {
		rec.Data = d
	}
	if rec.Op != opPut && rec.Op != opDelete {
		return record{}, 0, errTorn
	}
	return rec, 8 + int(n), nil
}

// replay loads the log into memory. A torn tail (a crash mid-write) is
// cut off so that new records follow the last good one.
func (s *Store) replay() error {
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open store log: %w", err)
	}
	br := bufio.NewReaderSize(f, 1<<20)
	var off int64
	var n int
	for {
		rec, size, err := readRecord(br)
		if err == io.EOF {
			break
		}
		if err != nil {
			s.log.Warn("store log has a torn tail; cutting it off", "file", s.path, "offset", off)
			if err := f.Truncate(off); err != nil {
				f.Close()
				return fmt.Errorf("cut torn tail of %s: %w", s.path, err)
			}
			break
		}
		s.applyLocked(rec)
		off += int64(size)
		n++
	}
	f.Close()
	s.logSize = off
	s.log.Info("store loaded", "file", s.path, "records", n, "resource_version", s.rv)
	return nil
}

// compact rewrites the log as one record per live object, crash-safely
// (temporary file, fsync, rename, folder fsync), and leaves s.f open for
// appending to it. It runs at Open and from the committer.
func (s *Store) compact() error {
	s.mu.Lock()
	var recs []byte
	for kind, m := range s.objs {
		for name, o := range m {
			recs = record{Op: opPut, Kind: kind, Name: name, RV: o.RV, Data: o.Data}.appendTo(recs)
		}
	}
	// Keep the highest resource version even when its object is deleted.
	recs = record{Op: opDelete, Kind: "\x00rv", Name: "", RV: s.rv}.appendTo(recs)
	s.mu.Unlock()

	dir := filepath.Dir(s.path)
	tmp := s.path + ".compact"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("compact store log: %w", err)
	}
	if _, err := f.Write(recs); err != nil {
		f.Close()
		return fmt.Errorf("compact store log: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("compact store log: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		f.Close()
		return fmt.Errorf("compact store log: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			f.Close()
			return fmt.Errorf("compact store log: sync folder %s: %w", dir, err)
		}
	}
	if s.f != nil {
		s.f.Close()
	}
	s.f = f
	s.logSize = int64(len(recs))
	return nil
}

// commitDelay is how long the committer lets a batch gather while
// writers keep it busy (the last batch had more than one record), as
// PostgreSQL's commit_delay does: each fsync costs the same however many
// records it makes durable, and while it runs the committer's thread holds
// one of the process's Ps, idle. A lone writer is not delayed.
const commitDelay = time.Millisecond

// commitLoop writes pending records in batches, one fsync per batch, then
// wakes their writers and publishes their events.
func (s *Store) commitLoop() {
	defer close(s.done)
	busy := false
	for {
		<-s.kick
		if busy {
			time.Sleep(commitDelay)
		}
		s.mu.Lock()
		buf, evs, ws := s.pending, s.pendEv, s.waiters
		s.pending, s.pendEv, s.waiters = nil, nil, nil
		closed := s.closed
		s.mu.Unlock()
		busy = len(ws) > 1
		if len(buf) > 0 {
			err := s.writeBatch(buf)
			if err == nil {
				s.records.Add(int64(len(evs)))
			}
			if err != nil {
				s.mu.Lock()
				s.failed = fmt.Errorf("store log %s: %w", s.path, err)
				s.mu.Unlock()
				s.log.Error("store write failed; refusing further writes", "file", s.path, "err", err)
			} else {
				s.publish(evs)
			}
			for _, w := range ws {
				w <- err
			}
			s.maybeCompact()
		}
		if closed {
			s.mu.Lock()
			rest := len(s.waiters)
			s.mu.Unlock()
			if rest == 0 {
				return
			}
			s.signal()
		}
	}
}

func (s *Store) writeBatch(buf []byte) error {
	if _, err := s.f.Write(buf); err != nil {
		return err
	}
	if err := s.f.Sync(); err != nil {
		return err
	}
	s.syncs.Add(1)
	s.logSize += int64(len(buf))
	return nil
}

func (s *Store) maybeCompact() {
	s.mu.Lock()
	live := s.liveSize
	s.mu.Unlock()
	if s.logSize < s.opt.CompactBytes || s.logSize < 4*live {
		return
	}
	// Records enqueued meanwhile are in memory (so in the snapshot) and
	// still pending; writing them again after it is harmless.
	if err := s.compact(); err != nil {
		s.log.Error("store compaction failed", "file", s.path, "err", err)
	}
}
