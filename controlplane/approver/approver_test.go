package approver

import "testing"

func TestIssuedWithoutDecoding(t *testing.T) {
	for _, tc := range []struct {
		json string
		want bool
	}{
		{`{"metadata":{"name":"a"},"spec":{},"status":{}}`, false},
		{`{"metadata":{"labels":{"certificate":"x"}},"spec":{},"status":{"conditions":[{"type":"Approved"}]}}`, false},
		{`{"metadata":{"name":"a"},"spec":{},"status":{"conditions":[{"type":"Approved","message":"\"certificate\":\""}]}}`, false},
		{`{"metadata":{"name":"a"},"spec":{},"status":{"conditions":[{"type":"Approved"}],"certificate":"LS0t"}}`, true},
	} {
		if got := issued([]byte(tc.json)); got != tc.want {
			t.Errorf("issued(%s) = %v, want %v", tc.json, got, tc.want)
		}
	}
}
