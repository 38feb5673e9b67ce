package clock

import (
	"sync"
	"time"
)

// Fake is a manually advanced clock for tests. Timers and tickers fire
// when Advance moves the time past their deadline. It is safe for
// concurrent use.
type Fake struct {
	mu      sync.Mutex
	now     time.Time
	waiters []*fakeWaiter
	added   chan struct{} // closed and replaced whenever a timer or ticker is created
}

type fakeWaiter struct {
	c       chan time.Time
	when    time.Time
	period  time.Duration // >0 for tickers
	stopped bool
}

// NewFake returns a fake clock set to start.
func NewFake(start time.Time) *Fake {
	return &Fake{now: start, added: make(chan struct{})}
}

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Advance moves the time forward by d and fires every timer and ticker
// whose deadline has passed. A ticker fires at most once per Advance, as a
// real ticker drops ticks for slow receivers.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	kept := f.waiters[:0]
	for _, w := range f.waiters {
		if w.stopped {
			continue
		}
		if !w.when.After(f.now) {
			select {
			case w.c <- f.now:
			default:
			}
			if w.period <= 0 {
				w.stopped = true
				continue
			}
			for !w.when.After(f.now) {
				w.when = w.when.Add(w.period)
			}
		}
		kept = append(kept, w)
	}
	f.waiters = kept
}

// Set moves the clock to t, forwards or backwards (a clock jump). Timers
// due at or before t fire.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	d := t.Sub(f.now)
	if d < 0 {
		f.now = t
		f.mu.Unlock()
		return
	}
	f.mu.Unlock()
	f.Advance(d)
}

// WaitForWaiters blocks until at least n timers or tickers are pending or
// the timeout passes, and reports whether they are. Tests use it to know
// that the code under test is parked on the clock before advancing it.
func (f *Fake) WaitForWaiters(n int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		f.mu.Lock()
		count := 0
		for _, w := range f.waiters {
			if !w.stopped {
				count++
			}
		}
		added := f.added
		f.mu.Unlock()
		if count >= n {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		t := time.NewTimer(min(left, 10*time.Millisecond))
		select {
		case <-added:
		case <-t.C:
		}
		t.Stop()
	}
}

func (f *Fake) add(w *fakeWaiter) {
	f.waiters = append(f.waiters, w)
	close(f.added)
	f.added = make(chan struct{})
}

// NewTimer returns a timer driven by Advance.
func (f *Fake) NewTimer(d time.Duration) Timer {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := &fakeWaiter{c: make(chan time.Time, 1), when: f.now.Add(d)}
	f.add(w)
	return &fakeTimer{f: f, w: w}
}

// NewTicker returns a ticker driven by Advance.
func (f *Fake) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive interval for NewTicker")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	w := &fakeWaiter{c: make(chan time.Time, 1), when: f.now.Add(d), period: d}
	f.add(w)
	return &fakeTicker{f: f, w: w}
}

type fakeTimer struct {
	f *Fake
	w *fakeWaiter
}

func (t *fakeTimer) C() <-chan time.Time { return t.w.c }

func (t *fakeTimer) Stop() bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	was := !t.w.stopped
	t.w.stopped = true
	return was
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	was := !t.w.stopped
	// Drain a pending tick so the new deadline starts clean, as time.Timer does since Go 1.23.
	select {
	case <-t.w.c:
	default:
	}
	nw := &fakeWaiter{c: t.w.c, when: t.f.now.Add(d)}
	t.w.stopped = true
	t.w = nw
	t.f.add(nw)
	return was
}

type fakeTicker struct {
	f *Fake
	w *fakeWaiter
}

func (t *fakeTicker) C() <-chan time.Time { return t.w.c }

func (t *fakeTicker) Stop() {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	t.w.stopped = true
}
