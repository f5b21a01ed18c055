package kubeproxy

import (
	"strings"
	"testing"
)

func TestEnabledFromConfigItems(t *testing.T) {
	for _, c := range []struct {
		items   map[string]string
		flag    bool
		want    bool
		refused bool
	}{
		{nil, false, false, false},
		{nil, true, true, false},
		{map[string]string{ItemEnabled: "true"}, false, true, false},
		{map[string]string{ItemEnabled: " false "}, true, false, false},
		{map[string]string{ItemEnabled: "yes"}, true, true, true},
		{map[string]string{ItemEnabled: "yes"}, false, false, true},
		{map[string]string{ItemEnabled: ""}, true, true, true},
	} {
		got, err := EnabledFromConfigItems(c.items, c.flag)
		if got != c.want || (err != nil) != c.refused {
			t.Errorf("items %v, flag %v: %v, %v; want %v, refused %v", c.items, c.flag, got, err, c.want, c.refused)
		}
		if err != nil && !strings.Contains(err.Error(), ItemEnabled) {
			t.Errorf("error %q does not name the item", err)
		}
	}
}
