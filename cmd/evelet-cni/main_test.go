package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

func TestFlatKeepsContextAndCode(t *testing.T) {
	inner := &types.Error{Code: 7, Msg: `EVE network instance "x" does not exist`}
	f := flat(func(*skel.CmdArgs) error {
		return fmt.Errorf("evelet-cni: network 1 (default/eve, interface net1): %w", inner)
	})
	err := f(&skel.CmdArgs{})
	te, ok := err.(*types.Error)
	if !ok || te.Code != 7 || !strings.Contains(te.Msg, "network 1 (default/eve, interface net1)") || !strings.Contains(te.Msg, `"x" does not exist`) {
		t.Fatalf("%#v", err)
	}
	if f := flat(func(*skel.CmdArgs) error { return fmt.Errorf("plain") }); f(nil).(*types.Error).Code != types.ErrInternal {
		t.Fatal("plain error code")
	}
	if f := flat(func(*skel.CmdArgs) error { return nil }); f(nil) != nil {
		t.Fatal("nil")
	}
}
