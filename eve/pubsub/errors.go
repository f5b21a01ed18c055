package pubsub

import (
	"fmt"
	"strings"
)

// FieldError says that a field evelet needs is missing or malformed. Validate
// methods return it; Read wraps it in a FileError.
type FieldError struct {
	Field  string // Go/JSON field path, e.g. "ClusterID.UUID"
	Reason string
}

func (e *FieldError) Error() string { return "field " + e.Field + ": " + e.Reason }

// FileError is what reading a pubsub file returns when the file exists but
// cannot be used: it names the file, and the field or the byte offset.
type FileError struct {
	Path   string
	Field  string // "" when the problem is not tied to one field
	Offset int64  // byte offset of malformed JSON; -1 when not applicable
	Err    error
}

func (e *FileError) Error() string {
	var b strings.Builder
	b.WriteString("eve pubsub file ")
	b.WriteString(e.Path)
	b.WriteString(": ")
	switch {
	case e.Field != "":
		if fe, ok := e.Err.(*FieldError); ok && fe.Field == e.Field {
			b.WriteString(fe.Error())
		} else {
			fmt.Fprintf(&b, "field %s: %v", e.Field, e.Err)
		}
	case e.Offset >= 0:
		fmt.Fprintf(&b, "malformed JSON at byte offset %d: %v", e.Offset, e.Err)
	default:
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *FileError) Unwrap() error { return e.Err }
