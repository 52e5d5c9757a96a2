#!/usr/bin/env bash
# Starts the services pentrace's tests use, installing them from Debian's
# packages when missing. Idempotent: a running service is left alone.
set -euo pipefail
echo "no external services needed yet"
