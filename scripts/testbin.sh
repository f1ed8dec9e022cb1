#!/usr/bin/env bash
# Build (once) and cache the local-cluster binaries: see fluidfed/local/testbin.sh.
exec bash "$(dirname "$0")/../fluidfed/local/testbin.sh" "$@"
