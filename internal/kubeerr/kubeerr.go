// Package kubeerr classifies errors of apiserver calls.
package kubeerr

import (
	"errors"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Unreachable says whether err means the apiserver did not answer (a
// transport error, a timeout, an overloaded or failing server) rather than
// answered no (not found, forbidden, invalid). Callers that may fall back
// on what they read before do so only for these.
func Unreachable(err error) bool {
	if err == nil {
		return false
	}
	var st apierrors.APIStatus
	if !errors.As(err, &st) {
		return true
	}
	return apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsServiceUnavailable(err) ||
		apierrors.IsTooManyRequests(err) || apierrors.IsInternalError(err) || apierrors.IsUnexpectedServerError(err)
}
