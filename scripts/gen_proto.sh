#!/usr/bin/env bash
# Regenerate the checked-in gRPC code and its type stubs from src/fedloop/net/fedloop.proto (tests check it is
# up to date).
set -euo pipefail
cd "$(dirname "$0")/../src"
python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. fedloop/net/fedloop.proto
