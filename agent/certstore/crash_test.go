package certstore_test

import (
	"bufio"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/nodetrust/nodetrust/agent/certstore"
	"github.com/nodetrust/nodetrust/internal/clock"
)

// Environment of the writer child process.
const (
	envHelperDir    = "CERTSTORE_HELPER_DIR"    // the store's folder
	envHelperCA     = "CERTSTORE_HELPER_CA"     // CA certificate then key, PEM
	envHelperSerial = "CERTSTORE_HELPER_SERIAL" // first serial number to issue
)

// TestHelperWriter is the child process of TestUpdateSurvivesKill, not a
// test: it calls Update in a loop with fresh pairs, printing "done
// <serial>" after each returns, until it is killed.
func TestHelperWriter(t *testing.T) {
	dir := os.Getenv(envHelperDir)
	if dir == "" {
		t.Skip("helper process for TestUpdateSurvivesKill")
	}
	ca := loadCA(t, os.Getenv(envHelperCA))
	serial, err := strconv.ParseInt(os.Getenv(envHelperSerial), 10, 64)
	require.NoError(t, err)
	// Every child starts at the same fake time and moves half a second
	// per update, so names collide within a run and with earlier runs'.
	clk := clock.NewFake(epoch)
	s := &certstore.Store{Dir: dir, Prefix: "kubelet-client", Keep: 2, Clock: clk}
	fmt.Println("start")
	deadline := time.Now().Add(20 * time.Second) // never outlive a dead parent for long
	for ; time.Now().Before(deadline); serial++ {
		cert, key := ca.issue(t, serial)
		if _, err := s.Update(cert, key, nil); err != nil {
			fmt.Println("error", err)
			os.Exit(3)
		}
		fmt.Println("done", serial)
		clk.Advance(500 * time.Millisecond)
	}
	os.Exit(4)
}

func loadCA(t *testing.T, path string) *testCA {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	cblk, rest := pem.Decode(b)
	kblk, _ := pem.Decode(rest)
	require.NotNil(t, kblk)
	cert, err := x509.ParseCertificate(cblk.Bytes)
	require.NoError(t, err)
	key, err := x509.ParseECPrivateKey(kblk.Bytes)
	require.NoError(t, err)
	return &testCA{cert: cert, key: key}
}

// TestUpdateSurvivesKill SIGKILLs a process calling Update at random
// moments and checks after each kill that the store holds a complete,
// valid pair, no older than the last Update that returned.
func TestUpdateSurvivesKill(t *testing.T) {
	rounds := 100
	if testing.Short() {
		rounds = 15
	}
	ca := newCA(t, "ca")
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(caFile, append(append([]byte{}, ca.certPEM...), ca.keyPEM...), 0o600))
	dir := filepath.Join(t.TempDir(), "pki")

	var (
		lastAck  int64 = -1 // serial of the newest Update known to have returned
		acked    int        // Updates known to have returned
		killedAt = map[string]int{}
	)
	for round := range rounds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWriter$", "-test.count=1")
		cmd.Env = append(os.Environ(),
			envHelperDir+"="+dir,
			envHelperCA+"="+caFile,
			envHelperSerial+"="+strconv.Itoa((round+1)*1_000_000),
		)
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		cmd.Stderr = os.Stderr
		require.NoError(t, cmd.Start())

		lines := make(chan string, 1024)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		// Wait for the loop to start, then kill at a random moment.
		for l := range lines {
			if l == "start" {
				break
			}
		}
		time.Sleep(rand.N(20 * time.Millisecond))
		require.NoError(t, cmd.Process.Kill())
		n := 0
		for l := range lines {
			if v, ok := strings.CutPrefix(l, "done "); ok {
				serial, err := strconv.ParseInt(v, 10, 64)
				require.NoError(t, err)
				lastAck = max(lastAck, serial)
				acked++
				n++
			}
			require.False(t, strings.HasPrefix(l, "error"), "writer failed: %s", l)
		}
		err = cmd.Wait()
		var ee *exec.ExitError
		require.True(t, errors.As(err, &ee) && strings.Contains(ee.Error(), "killed"), "writer not killed: %v", err)
		killedAt[fmt.Sprintf("after %d updates", min(n, 3))]++

		s := &certstore.Store{Dir: dir, Prefix: "kubelet-client"}
		p, err := s.Current()
		if acked == 0 && errors.Is(err, certstore.ErrNoCredential) {
			continue
		}
		require.NoError(t, err, "round %d: store unusable after kill (%d updates acknowledged)", round, acked)
		require.True(t, keyMatches(p.Cert, p.Key), "round %d: key does not match", round)
		require.NoError(t, p.Cert.CheckSignatureFrom(ca.cert), "round %d", round)
		require.GreaterOrEqual(t, p.Cert.SerialNumber.Int64(), lastAck,
			"round %d: an acknowledged update was lost", round)
	}
	require.Positive(t, acked, "no Update ever completed: the kills came too early")
	t.Logf("%d kills, %d acknowledged updates, %v", rounds, acked, killedAt)

	// One more update tidies up what the kills left: Keep dated files
	// besides the current one, no temporary files.
	s := &certstore.Store{Dir: dir, Prefix: "kubelet-client", Keep: 2, Clock: clock.NewFake(epoch.Add(time.Hour))}
	cert, key := ca.issue(t, 1)
	_, err := s.Update(cert, key, nil)
	require.NoError(t, err)
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	require.Len(t, names, 4, "current link and 3 dated files: %v", names)
}
