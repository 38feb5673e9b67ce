package rotation

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var (
	caOld = CA{ID: 0, Pin: "sha256:00", Cert: []byte("old\n")}
	caNew = CA{ID: 1, Pin: "sha256:11", Cert: []byte("new\n")}
)

// states reachable from idle, by name.
func states(t *testing.T) map[Phase]State {
	t.Helper()
	idle := Initial(caOld)
	uc, err := Start(idle, caNew)
	require.NoError(t, err)
	us, err := UpdateServersNow(uc)
	require.NoError(t, err)
	rb, err := Rollback(us)
	require.NoError(t, err)
	return map[Phase]State{Idle: idle, UpdateClients: uc, UpdateServers: us, RolledBack: rb}
}

func TestTransitions(t *testing.T) {
	st := states(t)
	type step func(State) (State, error)
	start := func(s State) (State, error) { return Start(s, caNew) }
	tests := []struct {
		name    string
		from    Phase
		do      step
		want    Phase
		active  string
		cas     int
		serving string
		err     string
	}{
		{"start from idle", Idle, start, UpdateClients, caNew.Pin, 2, caOld.Pin, ""},
		{"start twice", UpdateClients, start, "", "", 0, "", "rotate start: a rotation is already in progress (phase update-clients)"},
		{"start in rollback", RolledBack, start, "", "", 0, "", "rotate start: a rotation is already in progress (phase rollback)"},
		{"servers move", UpdateClients, UpdateServersNow, UpdateServers, caNew.Pin, 2, caNew.Pin, ""},
		{"servers move when idle", Idle, UpdateServersNow, "", "", 0, "", "rotate update-servers: clients are not being updated (phase idle)"},
		{"complete forces servers", UpdateClients, Complete, UpdateServers, caNew.Pin, 2, caNew.Pin, ""},
		{"complete drops old", UpdateServers, Complete, Idle, caNew.Pin, 1, caNew.Pin, ""},
		{"complete after rollback drops new", RolledBack, Complete, Idle, caOld.Pin, 1, caOld.Pin, ""},
		{"complete when idle", Idle, Complete, "", "", 0, "", "rotate complete: no rotation in progress (phase idle)"},
		{"rollback in update-clients", UpdateClients, Rollback, RolledBack, caOld.Pin, 2, caOld.Pin, ""},
		{"rollback in update-servers", UpdateServers, Rollback, RolledBack, caOld.Pin, 2, caOld.Pin, ""},
		{"rollback when idle", Idle, Rollback, "", "", 0, "", "rotate rollback: no rotation in progress (phase idle)"},
		{"rollback twice", RolledBack, Rollback, "", "", 0, "", "rotate rollback: already rolled back; run 'rotate complete' to drop the new CA (phase rollback)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			from := st[tt.from]
			got, err := tt.do(from)
			if tt.err != "" {
				require.Error(t, err)
				assert.Equal(t, tt.err, err.Error())
				assert.True(t, errors.Is(err, ErrPhase))
				assert.Equal(t, from, got, "a refused step changes nothing")
				return
			}
			require.NoError(t, err)
			require.NoError(t, got.Check())
			assert.Equal(t, tt.want, got.Phase)
			assert.Equal(t, tt.active, got.Active)
			assert.Len(t, got.CAs, tt.cas)
			assert.Equal(t, tt.serving, got.ServingCA().Pin)
			assert.Equal(t, from.Generation+1, got.Generation)
			assert.Equal(t, tt.active, got.Bundle()[0].Pin, "active CA first in the bundle")
			assert.Equal(t, tt.active, got.ActiveCA().Pin)
		})
	}
}

func TestStartRefusesStaleCA(t *testing.T) {
	idle := Initial(caOld)
	for _, ca := range []CA{{}, caOld, {ID: 7, Pin: "sha256:77"}} {
		_, err := Start(idle, ca)
		assert.Error(t, err, "%+v", ca)
	}
	assert.Equal(t, 1, idle.NextID())
	st := states(t)
	again, err := Complete(st[UpdateServers])
	require.NoError(t, err)
	assert.Equal(t, 2, again.NextID(), "CA numbers are never reused")
}

func TestBundlePEM(t *testing.T) {
	st := states(t)
	assert.Equal(t, "new\nold\n", string(st[UpdateClients].BundlePEM()))
	assert.Equal(t, "old\nnew\n", string(st[RolledBack].BundlePEM()))
	assert.Equal(t, "old\n", string(st[Idle].BundlePEM()))
}

func TestSaveLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rotation.json")
	_, err := Load(path)
	assert.True(t, IsNotExist(err))
	s := states(t)[UpdateServers]
	require.NoError(t, Save(path, s))
	got, err := Load(path)
	require.NoError(t, err)
	assert.Equal(t, s, got)

	bad := s
	bad.CAs = nil
	assert.Error(t, Save(path, bad), "an impossible state is not saved")
	bad = s
	bad.Phase = "sideways"
	assert.ErrorContains(t, bad.Check(), `unknown phase "sideways"`)
}
