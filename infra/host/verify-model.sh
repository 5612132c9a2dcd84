#!/bin/bash
# Refuse to serve a model whose bytes are not the ones that were shipped.
# Usage: verify-model.sh MODEL_PATH EXPECTED_SHA256
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 MODEL_PATH EXPECTED_SHA256" >&2
    exit 2
fi
model=$1
expected=$2

if [[ ! "$expected" =~ ^[0-9a-f]{64}$ ]]; then
    echo "verify-model: expected hash is not a SHA-256: $expected" >&2
    exit 2
fi
if [[ ! -r "$model" ]]; then
    echo "verify-model: model not readable: $model" >&2
    exit 1
fi
actual=$(sha256sum -- "$model" | cut -d' ' -f1)
if [[ "$actual" != "$expected" ]]; then
    echo "verify-model: SHA-256 mismatch for $model: expected $expected, got $actual" >&2
    exit 1
fi
echo "verify-model: $model matches $expected"
