package eve

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"
)

func TestNodeName(t *testing.T) {
	for in, want := range map[string]string{
		"edge-17":                 "edge-17",
		"Edge Device 7":           "edge-device-7",
		"  --Plant_A.Line#3--  ":  "plant-a-line-3",
		"Überwachung":             "berwachung",
		"":                        "eve-6ba7b810-9dad-11d1-80b4-00c04fd430c8",
		"!!!":                     "eve-6ba7b810-9dad-11d1-80b4-00c04fd430c8",
		strings.Repeat("ab-", 40): strings.TrimRight(strings.Repeat("ab-", 21), "-"),
	} {
		got := NodeName(in, "6BA7B810-9DAD-11D1-80B4-00C04FD430C8")
		if got != want {
			t.Errorf("NodeName(%q) = %q, want %q", in, got, want)
		}
		if errs := validation.IsDNS1123Label(got); len(errs) > 0 {
			t.Errorf("NodeName(%q) = %q is not an RFC 1123 label: %v", in, got, errs)
		}
		if NodeName(in, "6BA7B810-9DAD-11D1-80B4-00C04FD430C8") != got {
			t.Errorf("NodeName(%q) not stable", in)
		}
	}
}
