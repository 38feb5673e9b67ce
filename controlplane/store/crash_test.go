package store

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestKill9LosesNothingAcknowledged runs writers in a child process,
// kills it with SIGKILL mid-stream, and checks that every write the child
// saw acknowledged is in the reopened store.
func TestKill9LosesNothingAcknowledged(t *testing.T) {
	if dir := os.Getenv("NODETRUST_STORE_CRASH_CHILD"); dir != "" {
		crashChild(dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9LosesNothingAcknowledged$")
	cmd.Env = append(os.Environ(), "NODETRUST_STORE_CRASH_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if name, ok := strings.CutPrefix(sc.Text(), "ACK "); ok {
			acked[name] = true
			if len(acked) == 3000 {
				cmd.Process.Signal(syscall.SIGKILL)
				break
			}
		}
	}
	for sc.Scan() { // drain what was already written
		if name, ok := strings.CutPrefix(sc.Text(), "ACK "); ok {
			acked[name] = true
		}
	}
	cmd.Wait()
	if len(acked) < 3000 {
		t.Fatalf("child acknowledged only %d writes", len(acked))
	}
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for name := range acked {
		if _, err := s.Get("token", name); err != nil {
			t.Fatalf("acknowledged write %s lost after kill -9: %v", name, err)
		}
	}
}

func crashChild(dir string) {
	s, err := Open(dir, Options{})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	w := bufio.NewWriter(os.Stdout)
	acks := make(chan string, 1024)
	for g := range 16 {
		go func() {
			for i := 0; ; i++ {
				name := fmt.Sprintf("w%d-%d", g, i)
				if _, err := s.Create("token", name, func(uint64) ([]byte, error) { return []byte(strings.Repeat("x", 300)), nil }); err == nil {
					acks <- name
				}
			}
		}()
	}
	for name := range acks {
		fmt.Fprintln(w, "ACK "+name)
		w.Flush()
	}
}
