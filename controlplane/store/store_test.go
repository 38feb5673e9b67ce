package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Options{History: 8})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func val(v string) func(uint64) ([]byte, error) {
	return func(uint64) ([]byte, error) { return []byte(v), nil }
}

func TestCRUDAndReplay(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	if _, err := s.Create("csr", "a", val("1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create("csr", "a", val("x")); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}
	o, err := s.Update("csr", "a", func(cur Object, rv uint64) ([]byte, error) {
		return []byte(fmt.Sprintf("%s+%d", cur.Data, rv)), nil
	})
	if err != nil || string(o.Data) != "1+2" || o.RV != 2 {
		t.Fatalf("update = %q@%d, %v", o.Data, o.RV, err)
	}
	if _, err := s.Create("token", "b", val("t")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete("token", "b", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update("csr", "zz", nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update missing: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir)
	defer s.Close()
	o, err = s.Get("csr", "a")
	if err != nil || string(o.Data) != "1+2" {
		t.Fatalf("after reopen: %q, %v", o.Data, err)
	}
	if _, err := s.Get("token", "b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted token came back: %v", err)
	}
	if s.RV() != 4 {
		t.Fatalf("rv after reopen = %d, want 4 (deletions count)", s.RV())
	}
}

func TestTornTailIsCut(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	for i := range 3 {
		if _, err := s.Create("csr", fmt.Sprint(i), val("v")); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	// Simulate a crash in the middle of appending a record.
	f, err := os.OpenFile(filepath.Join(dir, "wal"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	full := record{Op: opPut, Kind: "csr", Name: "torn", RV: 99, Data: []byte("zzzz")}.appendTo(nil)
	f.Write(full[:len(full)-2])
	f.Close()

	s = open(t, dir)
	if _, err := s.Get("csr", "torn"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("torn record was applied: %v", err)
	}
	if _, err := s.Create("csr", "after", val("v")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, dir)
	defer s.Close()
	if l, _ := s.List("csr"); len(l) != 4 {
		t.Fatalf("got %d objects after torn tail and new write, want 4", len(l))
	}
}

func TestConcurrentWritersShareFsync(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			if _, err := s.Create("csr", fmt.Sprint(i), val("v")); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	st := s.Stats()
	if st.Records != 200 || st.Syncs < 1 || st.Syncs >= 200 {
		t.Errorf("200 concurrent writes took %d fsyncs for %d records; want them shared", st.Syncs, st.Records)
	}
	s.Close()
	s = open(t, dir)
	defer s.Close()
	if l, rv := s.List("csr"); len(l) != 200 || rv != 200 {
		t.Fatalf("got %d objects at rv %d, want 200 at 200", len(l), rv)
	}
}

func TestWatch(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	s.Create("csr", "a", val("1"))
	w, err := s.Watch("csr", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	s.Create("token", "t", val("1"))
	s.Update("csr", "a", func(Object, uint64) ([]byte, error) { return []byte("2"), nil })
	s.Delete("csr", "a", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got []string
	for range 3 {
		ev, err := w.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %s %d", ev.Type, ev.Name, ev.RV))
	}
	want := []string{"ADDED a 1", "MODIFIED a 3", "DELETED a 4"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	// History holds 8 events; after 10 more, rv 1 is gone.
	for i := range 10 {
		s.Create("csr", fmt.Sprint("n", i), val("v"))
	}
	if _, err := s.Watch("csr", "", 1); !errors.Is(err, ErrGone) {
		t.Fatalf("watch from a forgotten rv: %v, want ErrGone", err)
	}
}

func TestCompactionKeepsData(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{CompactBytes: 1024})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 300 {
		s.Create("csr", "a"+fmt.Sprint(i%3), func(uint64) ([]byte, error) { return nil, nil })
		s.Update("csr", "a"+fmt.Sprint(i%3), func(_ Object, rv uint64) ([]byte, error) { return []byte(fmt.Sprint(rv)), nil })
		s.Delete("csr", "a"+fmt.Sprint(i%3), nil)
	}
	s.Create("csr", "keep", val("k"))
	s.Close()
	fi, _ := os.Stat(filepath.Join(dir, "wal"))
	if fi.Size() > 4096 {
		t.Errorf("log is %d bytes after compaction", fi.Size())
	}
	s = open(t, dir)
	defer s.Close()
	if l, rv := s.List("csr"); len(l) != 1 || rv != 901 {
		t.Fatalf("got %d objects at rv %d, want 1 at 901", len(l), rv)
	}
}

// TestWatchFromEveryVersion starts a watch at every resource version the
// history still holds, after the ring has wrapped, and checks each gets
// exactly the later events of its object or kind.
func TestWatchFromEveryVersion(t *testing.T) {
	s, err := Open(t.TempDir(), Options{History: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 13 { // rv 1..13; the ring keeps 6..13
		s.Create("csr", fmt.Sprint("n", i%2, "-", i), val("v"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for from := uint64(5); from <= 13; from++ {
		for _, name := range []string{"", "n1-11"} {
			w, err := s.Watch("csr", name, from)
			if err != nil {
				t.Fatalf("Watch(%q, %d) = %v", name, from, err)
			}
			var want []uint64
			for rv := from + 1; rv <= 13; rv++ {
				if name == "" || rv == 12 {
					want = append(want, rv)
				}
			}
			var got []uint64
			for range want {
				ev, err := w.Next(ctx)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, ev.RV)
			}
			w.Stop()
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("Watch(%q, %d) events at %v, want %v", name, from, got, want)
			}
		}
	}
	if _, err := s.Watch("csr", "", 4); !errors.Is(err, ErrGone) {
		t.Errorf("Watch from 4 = %v, want ErrGone", err)
	}
}
