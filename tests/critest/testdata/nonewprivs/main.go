// Command nonewprivs prints its effective uid. Installed set-uid root in
// critest's nonewprivs image: a container started as uid 1000 reports 0
// unless no_new_privs stops the set-uid bit (what upstream's image checks).
package main

import (
	"fmt"
	"os"
)

func main() { fmt.Printf("Effective uid: %d\n", os.Geteuid()) }
