package approver

import "sync"

// queue hands out names to workers, at most once at a time per name; a
// name added while it is being handled is handed out again afterwards.
type queue struct {
	mu       sync.Mutex
	cond     *sync.Cond
	order    []string            // guarded by mu
	queued   map[string]struct{} // guarded by mu
	active   map[string]struct{} // guarded by mu
	dirty    map[string]struct{} // guarded by mu; added while active
	shutting bool                // guarded by mu
}

func (q *queue) init() {
	q.cond = sync.NewCond(&q.mu)
	q.queued = map[string]struct{}{}
	q.active = map[string]struct{}{}
	q.dirty = map[string]struct{}{}
}

func (q *queue) add(name string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.active[name]; ok {
		q.dirty[name] = struct{}{}
		return
	}
	if _, ok := q.queued[name]; ok {
		return
	}
	q.queued[name] = struct{}{}
	q.order = append(q.order, name)
	q.cond.Signal()
}

func (q *queue) get() (string, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.order) == 0 && !q.shutting {
		q.cond.Wait()
	}
	if q.shutting {
		return "", false
	}
	name := q.order[0]
	q.order[0] = ""
	q.order = q.order[1:]
	delete(q.queued, name)
	q.active[name] = struct{}{}
	return name, true
}

func (q *queue) done(name string) {
	q.mu.Lock()
	delete(q.active, name)
	_, again := q.dirty[name]
	delete(q.dirty, name)
	q.mu.Unlock()
	if again {
		q.add(name)
	}
}

func (q *queue) shutdown() {
	q.mu.Lock()
	q.shutting = true
	q.cond.Broadcast()
	q.mu.Unlock()
}
