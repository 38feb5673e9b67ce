package store

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
)

// ErrSlowWatcher ends a watch whose reader fell too far behind.
var ErrSlowWatcher = errors.New("watcher fell too far behind")

const maxQueued = 200000

// Watch delivers committed events of one kind in resource-version order.
type Watch struct {
	s    *Store
	kind string
	name string // "" for every object of kind

	mu     sync.Mutex
	queue  []Event // guarded by mu
	err    error   // guarded by mu; set when the watch ends
	notify chan struct{}
}

// Watch returns the events of kind (and of the object name, unless name is
// empty) after resource version from. It fails with ErrGone when events
// after from are no longer kept. Call Stop when done.
func (s *Store) Watch(kind, name string, from uint64) (*Watch, error) {
	w := &Watch{s: s, kind: kind, name: name, notify: make(chan struct{}, 1)}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if from < s.availableFromLocked() {
		return nil, fmt.Errorf("watch %s from %d: %w", kind, from, ErrGone)
	}
	n := len(s.history)
	// The ring holds events in resource-version order: find the first one
	// after from instead of walking the whole history for every watch.
	first := sort.Search(s.histLen, func(i int) bool { return s.history[(s.histPos+i)%n].RV > from })
	for i := first; i < s.histLen; i++ {
		ev := s.history[(s.histPos+i)%n]
		if w.matches(ev) {
			w.queue = append(w.queue, ev)
		}
	}
	s.addWatchLocked(w)
	if len(w.queue) > 0 {
		w.notify <- struct{}{}
	}
	return w, nil
}

// availableFromLocked returns the oldest resource version a watch may
// start from.
func (s *Store) availableFromLocked() uint64 {
	if s.histLen < len(s.history) {
		return s.histBase
	}
	return s.history[s.histPos].RV - 1
}

// publish records committed events and hands them to watches.
func (s *Store) publish(evs []Event) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	n := len(s.history)
	for _, ev := range evs {
		if s.histLen < n {
			s.history[(s.histPos+s.histLen)%n] = ev
			s.histLen++
		} else {
			s.history[s.histPos] = ev
			s.histPos = (s.histPos + 1) % n
		}
		if ev.RV > s.durable {
			s.durable = ev.RV
		}
	}
	for w := range s.watches {
		w.push(evs)
	}
	for _, ev := range evs {
		for w := range s.named[ev.Kind+"/"+ev.Name] {
			w.push([]Event{ev})
		}
	}
}

// addWatchLocked indexes w: watches of one object are found by name, so
// that many of them cost nothing per unrelated event.
func (s *Store) addWatchLocked(w *Watch) {
	if w.name == "" {
		s.watches[w] = struct{}{}
		return
	}
	k := w.kind + "/" + w.name
	m := s.named[k]
	if m == nil {
		m = map[*Watch]struct{}{}
		s.named[k] = m
	}
	m[w] = struct{}{}
}

func (s *Store) removeWatchLocked(w *Watch) {
	if w.name == "" {
		delete(s.watches, w)
		return
	}
	k := w.kind + "/" + w.name
	delete(s.named[k], w)
	if len(s.named[k]) == 0 {
		delete(s.named, k)
	}
}

func (w *Watch) push(evs []Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return
	}
	added := false
	for _, ev := range evs {
		if w.matches(ev) {
			w.queue = append(w.queue, ev)
			added = true
		}
	}
	if len(w.queue) > maxQueued {
		w.queue = nil
		w.err = ErrSlowWatcher
		added = true
	}
	if added {
		select {
		case w.notify <- struct{}{}:
		default:
		}
	}
}

// Next returns the next event, blocking until there is one, the watch
// ends or ctx is done.
func (w *Watch) Next(ctx context.Context) (Event, error) {
	for {
		w.mu.Lock()
		if len(w.queue) > 0 {
			ev := w.queue[0]
			w.queue[0] = Event{}
			w.queue = w.queue[1:]
			w.mu.Unlock()
			return ev, nil
		}
		err := w.err
		w.mu.Unlock()
		if err != nil {
			return Event{}, err
		}
		select {
		case <-w.notify:
		case <-ctx.Done():
			return Event{}, ctx.Err()
		}
	}
}

// Stop ends the watch.
func (w *Watch) Stop() {
	w.s.wmu.Lock()
	defer w.s.wmu.Unlock()
	w.stopLocked(context.Canceled)
}

// stopLocked ends the watch with err; the store's wmu is held.
func (w *Watch) stopLocked(err error) {
	w.s.removeWatchLocked(w)
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.queue = nil
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *Watch) matches(ev Event) bool {
	return ev.Kind == w.kind && (w.name == "" || ev.Name == w.name)
}
