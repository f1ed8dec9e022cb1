#!/usr/bin/env bash
# Build (once) and cache the local-cluster binaries: see devkit/local/testbin.sh.
exec bash "$(dirname "$0")/../devkit/local/testbin.sh" "$@"
