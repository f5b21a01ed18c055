package vmguest

import "sync"

var (
	imagesOnce  sync.Once
	builtImages *Images
	imagesErr   error
)
