#!/usr/bin/env bash
# The demo through the full local stack: `sonic-serve up` (Ray, embedded S3, the Serve app), one job submitted
# over HTTP, then a clean shutdown. Usage: scripts/demo.sh [extra `sonic-serve submit` options]
set -euo pipefail
SONIC=${SONIC:-sonic-serve}
mkdir -p out
"$SONIC" up --num-cpus "${DEMO_CPUS:-2}" > out/stack.log 2>&1 &
STACK=$!
stop() { kill -INT "$STACK" 2>/dev/null || true; wait "$STACK" 2>/dev/null || true; }
trap stop EXIT
echo "starting the local stack (log: out/stack.log) ..."
for _ in $(seq 1 300); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" \
       2>/dev/null; then break; fi
  kill -0 "$STACK" 2>/dev/null || { echo "the stack exited; see out/stack.log" >&2; tail -20 out/stack.log >&2; exit 1; }
  sleep 2
done
"$SONIC" submit --image examples/portrait.png --audio examples/speech.wav -o out/demo.mp4 "$@"
