package kubeproxy

import (
	"fmt"
	"strings"
)

// ItemEnabled is the device owner's EVE config item that turns kube-proxy
// on or off ("true"/"false"); unset, the agent's --kube-proxy flag decides.
// The owner decides what runs on the device, so the item, which comes with
// the cluster from the controller, outranks the image's flag.
const ItemEnabled = "evelet.kube-proxy"

// EnabledFromConfigItems says whether kube-proxy runs: the item when it
// is set to a valid value, else flag. A value that does not parse is
// refused (the error says so) and flag applies.
func EnabledFromConfigItems(items map[string]string, flag bool) (bool, error) {
	v, ok := items[ItemEnabled]
	if !ok {
		return flag, nil
	}
	switch v = strings.TrimSpace(v); v {
	case "true", "false":
		return v == "true", nil
	}
	return flag, fmt.Errorf("config item %s=%q refused: want \"true\" or \"false\"", ItemEnabled, v)
}
