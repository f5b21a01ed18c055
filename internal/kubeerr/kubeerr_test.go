package kubeerr

import (
	"errors"
	"fmt"
	"net"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

func TestUnreachable(t *testing.T) {
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}
	for name, c := range map[string]struct {
		err  error
		want bool
	}{
		"nil":                {nil, false},
		"connection refused": {fmt.Errorf(`Get "https://10.0.0.1:6443/api/v1/pods": %w`, dial), true},
		"server timeout":     {apierrors.NewServerTimeout(corev1.Resource("pods"), "get", 1), true},
		"timeout":            {apierrors.NewTimeoutError("slow", 1), true},
		"unavailable":        {apierrors.NewServiceUnavailable("etcd down"), true},
		"too many requests":  {apierrors.NewTooManyRequests("slow down", 1), true},
		"internal":           {apierrors.NewInternalError(errors.New("boom")), true},
		"not found":          {apierrors.NewNotFound(corev1.Resource("pods"), "x"), false},
		"forbidden":          {apierrors.NewForbidden(corev1.Resource("pods"), "x", errors.New("no")), false},
		"unauthorized":       {apierrors.NewUnauthorized("bad token"), false},
		"wrapped not found":  {fmt.Errorf("reading: %w", apierrors.NewNotFound(corev1.Resource("pods"), "x")), false},
	} {
		if got := Unreachable(c.err); got != c.want {
			t.Errorf("%s: Unreachable(%v) = %v, want %v", name, c.err, got, c.want)
		}
	}
}
