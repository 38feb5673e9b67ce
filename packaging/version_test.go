package packaging

import (
	"os/exec"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPackageVersion(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"1.2.3", "1.2.3"},
		{"v1.2.3", "1.2.3"},
		{"2", "2"},
		{"v1.2.3-rc1", "1.2.3~rc1"},
		{"v1.2.3-4-gabc1234", "1.2.3+git4.abc1234"},
		{"v1.2.3-4-gabc1234-dirty", "1.2.3+git4.abc1234.dirty"},
		{"e23560a", "0~git.e23560a"},
		{"e23560a-dirty", "0~git.e23560a.dirty"},
		{"dev", "0~git.dev"},
	} {
		got, err := PackageVersion(tc.in)
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
	for _, bad := range []string{"", "  ", "---"} {
		_, err := PackageVersion(bad)
		assert.Error(t, err, "%q", bad)
	}
}

// TestPackageVersionOrder checks with dpkg itself that the mapping keeps
// the order an upgrade needs.
func TestPackageVersionOrder(t *testing.T) {
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("dpkg not installed: version order not checked")
	}
	order := []string{"e23560a", "v1.2.3-rc1", "1.2.3", "v1.2.3-4-gabc1234", "1.2.4", "1.10.0"}
	for i := 0; i+1 < len(order); i++ {
		a, err := PackageVersion(order[i])
		require.NoError(t, err)
		b, err := PackageVersion(order[i+1])
		require.NoError(t, err)
		err = exec.Command("dpkg", "--compare-versions", a+"-1", "lt", b+"-1").Run()
		assert.NoError(t, err, "dpkg: %s should sort before %s", a, b)
	}
}
