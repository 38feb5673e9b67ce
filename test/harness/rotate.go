package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nodetrust/nodetrust/controlplane"
	"github.com/nodetrust/nodetrust/controlplane/apiserver"
)

// Rotate runs a cluster-CA rotation action ("start", "complete",
// "rollback") through the admin API, as `nodetrust controlplane rotate`
// does, and returns the status it answers.
func (e *Env) Rotate(action string) (apiserver.RotationStatus, error) {
	return e.rotation(http.MethodPost, "/"+action)
}

// RotationStatus returns the cluster-CA rotation status.
func (e *Env) RotationStatus() (apiserver.RotationStatus, error) {
	return e.rotation(http.MethodGet, "")
}

// rotation calls the admin rotation endpoint with the admin kubeconfig
// (read again each time: a rotation replaces it).
func (e *Env) rotation(method, suffix string) (apiserver.RotationStatus, error) {
	var st apiserver.RotationStatus
	rc, err := clientcmd.BuildConfigFromFlags("", controlplane.Paths{DataDir: e.Dir}.AdminKubeconfig())
	if err != nil {
		return st, err
	}
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		return st, err
	}
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, rc.Host+"/apis/"+apiserver.AdminGroup+"/v1/rotation"+suffix, nil)
	if err != nil {
		return st, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return st, err
	}
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("rotation %s%s: HTTP %d: %s", method, suffix, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("rotation status: %w", err)
	}
	return st, nil
}
