package bootstrap

import "errors"

// PermanentError marks a join failure that retrying cannot fix (wrong token,
// CA pin mismatch, malformed join material): the caller must wait for new
// join material instead of hammering the apiserver.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

func permanent(err error) error { return &PermanentError{Err: err} }

// IsPermanent reports whether err (or anything it wraps) is a PermanentError.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}
