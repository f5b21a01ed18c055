package main

import (
	"fmt"

	"github.com/lf-edge/evelet/version"
)

func runVersion(args []string) int {
	fmt.Println(version.String())
	return 0
}
