#!/bin/sh
# Prints the k8s.io/kubernetes version pinned in go.mod (e.g. v1.35.4).
awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$(dirname "$0")/../go.mod"
