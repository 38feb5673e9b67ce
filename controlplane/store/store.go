// Package store is the control plane's embedded, crash-safe object store:
// named JSON objects grouped by kind, a global resource version, a
// write-ahead log made durable by group commit, and watches.
//
// Every change is applied in memory and appended to the log; the call
// returns once the log is fsynced, and watchers see the change only then.
// Many concurrent writers share one fsync. The log is replayed on open; a
// record torn by a crash is cut off, and records are idempotent, so a
// kill -9 at any moment loses nothing that a caller was told is stored.
package store

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
)

// Errors returned by the store.
var (
	ErrNotFound = errors.New("object not found")
	ErrExists   = errors.New("object already exists")
	ErrConflict = errors.New("object was modified")
	ErrGone     = errors.New("resource version is too old")
	ErrClosed   = errors.New("store is closed")
)

// EventType says what happened to an object.
type EventType string

// The event types, as the Kubernetes watch protocol names them.
const (
	Added    EventType = "ADDED"
	Modified EventType = "MODIFIED"
	Deleted  EventType = "DELETED"
)

// Object is a stored value and the resource version of its last change.
type Object struct {
	Name string
	Data []byte // never modified after it is stored
	RV   uint64
	// Value is what the writer said Data decodes to (see CreateValue), so
	// that readers need not decode it again; nil when the writer gave
	// none, and after a restart. It is shared: never modify it.
	Value any
}

// Event is one change.
type Event struct {
	Type EventType
	Kind string
	Object
}

// Options configures Open.
type Options struct {
	// History is how many recent events are kept for watches that start
	// at an older resource version; 0 means 100000.
	History int
	// CompactBytes is the log size above which it is rewritten as a
	// snapshot (when also 4x the live data); 0 means 64 MiB.
	CompactBytes int64
	Logger       *slog.Logger
}

// Store is the object store. It is safe for concurrent use.
type Store struct {
	path string
	opt  Options
	log  *slog.Logger

	mu       sync.Mutex
	objs     map[string]map[string]Object // kind -> name -> object; guarded by mu
	rv       uint64                       // last assigned; guarded by mu
	pending  []byte                       // encoded records not yet written; guarded by mu
	pendEv   []Event                      // their events; guarded by mu
	waiters  []chan error                 // callers waiting for pending; guarded by mu
	kick     chan struct{}                // wakes the committer
	closed   bool                         // guarded by mu
	failed   error                        // sticky write error; guarded by mu
	liveSize int64                        // bytes of live objects; guarded by mu

	f       *os.File     // owned by the committer after Open
	logSize int64        // owned by the committer after Open
	syncs   atomic.Int64 // fsyncs of the log so far
	records atomic.Int64 // records made durable by them

	wmu      sync.Mutex
	history  []Event                        // guarded by wmu; ring of recent committed events
	histLen  int                            // guarded by wmu
	histPos  int                            // guarded by wmu; index of the oldest
	durable  uint64                         // guarded by wmu; highest committed RV
	histBase uint64                         // guarded by wmu; RV when the history began
	watches  map[*Watch]struct{}            // guarded by wmu; watches of a whole kind
	named    map[string]map[*Watch]struct{} // guarded by wmu; "kind/name" -> watches of one object

	done chan struct{}
}

// Open opens or creates the store in dir, replaying its log, and starts
// the committer. Call Close to stop it.
func Open(dir string, opt Options) (*Store, error) {
	if opt.History <= 0 {
		opt.History = 100000
	}
	if opt.CompactBytes <= 0 {
		opt.CompactBytes = 64 << 20
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	s := &Store{
		path:    filepath.Join(dir, "wal"),
		opt:     opt,
		log:     opt.Logger,
		objs:    map[string]map[string]Object{},
		kick:    make(chan struct{}, 1),
		history: make([]Event, opt.History),
		watches: map[*Watch]struct{}{},
		named:   map[string]map[*Watch]struct{}{},
		done:    make(chan struct{}),
	}
	if err := s.replay(); err != nil {
		return nil, err
	}
	s.durable = s.rv
	s.histBase = s.rv
	if err := s.compact(); err != nil {
		return nil, err
	}
	go s.commitLoop()
	return s, nil
}

// Close flushes pending writes, stops the committer and closes the log.
// Watches are stopped.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.signal()
	<-s.done
	s.wmu.Lock()
	for w := range s.watches {
		w.stopLocked(ErrClosed)
	}
	for _, m := range s.named {
		for w := range m {
			w.stopLocked(ErrClosed)
		}
	}
	s.wmu.Unlock()
	return s.f.Close()
}

// Stats are counters of the log's group commit.
type Stats struct {
	Syncs   int64 // fsyncs of the log
	Records int64 // records those fsyncs made durable
}

// Stats returns the counters so far.
func (s *Store) Stats() Stats {
	return Stats{Syncs: s.syncs.Load(), Records: s.records.Load()}
}

// RV returns the last assigned resource version.
func (s *Store) RV() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rv
}

// Get returns the object kind/name.
func (s *Store) Get(kind, name string) (Object, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.objs[kind][name]
	if !ok {
		return Object{}, fmt.Errorf("%s %q: %w", kind, name, ErrNotFound)
	}
	return o, nil
}

// List returns every object of kind sorted by name, and the resource
// version the list is current at.
func (s *Store) List(kind string) ([]Object, uint64) {
	s.mu.Lock()
	m := s.objs[kind]
	out := make([]Object, 0, len(m))
	for _, o := range m {
		out = append(out, o)
	}
	rv := s.rv
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, rv
}

// Create stores a new object. build gets the resource version the object
// will have, so that it can embed it.
func (s *Store) Create(kind, name string, build func(rv uint64) ([]byte, error)) (Object, error) {
	return s.CreateValue(kind, name, func(rv uint64) ([]byte, any, error) {
		b, err := build(rv)
		return b, nil, err
	})
}

// CreateValue is Create for a build that also returns the decoded form of
// its data, kept as the object's Value.
func (s *Store) CreateValue(kind, name string, build func(rv uint64) ([]byte, any, error)) (Object, error) {
	return s.change(kind, name, func(_ Object, exists bool, rv uint64) ([]byte, any, error) {
		if exists {
			return nil, nil, fmt.Errorf("%s %q: %w", kind, name, ErrExists)
		}
		return build(rv)
	})
}

// Update replaces an existing object with what fn returns from the current
// one. fn runs under the store's lock and must be quick; an error from it
// is returned and nothing is stored.
func (s *Store) Update(kind, name string, fn func(cur Object, rv uint64) ([]byte, error)) (Object, error) {
	return s.UpdateValue(kind, name, func(cur Object, rv uint64) ([]byte, any, error) {
		b, err := fn(cur, rv)
		return b, nil, err
	})
}

// UpdateValue is Update for an fn that also returns the decoded form of
// its data, kept as the object's Value.
func (s *Store) UpdateValue(kind, name string, fn func(cur Object, rv uint64) ([]byte, any, error)) (Object, error) {
	return s.change(kind, name, func(cur Object, exists bool, rv uint64) ([]byte, any, error) {
		if !exists {
			return nil, nil, fmt.Errorf("%s %q: %w", kind, name, ErrNotFound)
		}
		return fn(cur, rv)
	})
}

// Delete removes an object; check, when not nil, may veto it by returning
// an error.
func (s *Store) Delete(kind, name string, check func(cur Object) error) (Object, error) {
	s.mu.Lock()
	cur, ok := s.objs[kind][name]
	if !ok {
		s.mu.Unlock()
		return Object{}, fmt.Errorf("%s %q: %w", kind, name, ErrNotFound)
	}
	if check != nil {
		if err := check(cur); err != nil {
			s.mu.Unlock()
			return Object{}, err
		}
	}
	if err := s.usableLocked(); err != nil {
		s.mu.Unlock()
		return Object{}, err
	}
	s.rv++
	rec := record{Op: opDelete, Kind: kind, Name: name, RV: s.rv}
	s.applyLocked(rec)
	last := Object{Name: name, Data: cur.Data, RV: s.rv, Value: cur.Value}
	ch := s.enqueueLocked(rec, Event{Type: Deleted, Kind: kind, Object: last})
	s.mu.Unlock()
	return last, s.wait(ch)
}

func (s *Store) change(kind, name string, fn func(cur Object, exists bool, rv uint64) ([]byte, any, error)) (Object, error) {
	s.mu.Lock()
	if err := s.usableLocked(); err != nil {
		s.mu.Unlock()
		return Object{}, err
	}
	cur, exists := s.objs[kind][name]
	data, value, err := fn(cur, exists, s.rv+1)
	if err != nil {
		s.mu.Unlock()
		return Object{}, err
	}
	s.rv++
	rec := record{Op: opPut, Kind: kind, Name: name, RV: s.rv, Data: data}
	s.applyLocked(rec)
	o := Object{Name: name, Data: data, RV: s.rv, Value: value}
	if value != nil {
		s.objs[kind][name] = o
	}
	typ := Added
	if exists {
		typ = Modified
	}
	ch := s.enqueueLocked(rec, Event{Type: typ, Kind: kind, Object: o})
	s.mu.Unlock()
	return o, s.wait(ch)
}

func (s *Store) usableLocked() error {
	if s.closed {
		return ErrClosed
	}
	return s.failed
}

// applyLocked applies a record to memory; replay uses it too.
func (s *Store) applyLocked(r record) {
	m := s.objs[r.Kind]
	if m == nil {
		m = map[string]Object{}
		s.objs[r.Kind] = m
	}
	if old, ok := m[r.Name]; ok {
		s.liveSize -= int64(len(old.Data) + len(r.Name) + 64)
	}
	switch r.Op {
	case opPut:
		m[r.Name] = Object{Name: r.Name, Data: r.Data, RV: r.RV}
		s.liveSize += int64(len(r.Data) + len(r.Name) + 64)
	case opDelete:
		delete(m, r.Name)
	}
	if r.RV > s.rv {
		s.rv = r.RV
	}
}

func (s *Store) enqueueLocked(r record, ev Event) chan error {
	s.pending = r.appendTo(s.pending)
	s.pendEv = append(s.pendEv, ev)
	ch := make(chan error, 1)
	s.waiters = append(s.waiters, ch)
	s.signal()
	return ch
}

func (s *Store) signal() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *Store) wait(ch chan error) error {
	return <-ch
}
