#!/bin/sh
# Prints one progress line: the time since EVELET_T0 (unix seconds, set by
# the Makefile's demo target) and a message, as tests/cmd/demo does.
now=$(date +%s)
d=$(( now - ${EVELET_T0:-$now} ))
printf '[%3d:%02d] %s\n' $((d / 60)) $((d % 60)) "$*"
