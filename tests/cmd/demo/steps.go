package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"time"
)

// t0 is when the user's command began: `make demo` exports EVELET_T0 (unix
// seconds) so that the times printed here continue the ones the Makefile
// printed before (prerequisites, builds).
var t0 = func() time.Time {
	if s, err := strconv.ParseInt(os.Getenv("EVELET_T0"), 10, 64); err == nil && s > 0 {
		return time.Unix(s, 0)
	}
	return time.Now()
}()

// stepLine formats one progress line: elapsed time since t0, then what is
// happening. hack/step.sh prints the same format.
func stepLine(at time.Time, msg string) string {
	d := at.Sub(t0)
	if d < 0 {
		d = 0
	}
	s := int(d.Round(time.Second) / time.Second)
	return fmt.Sprintf("[%3d:%02d] %s", s/60, s%60, msg)
}

func printStep(w io.Writer, at time.Time, msg string) {
	fmt.Fprintln(w, stepLine(at, msg))
}
