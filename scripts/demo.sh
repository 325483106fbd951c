#!/usr/bin/env bash
# The main job: build the default VM's image, make sure vmsilod runs, and run a command in the
# VM, printing its output. Uses the config at $VMSILO_CONFIG or /etc/vmsilo/vmsilo.toml, else
# the embedded default (one offline VM, "demo"). A daemon started here is stopped again at the
# end, with its VMs; one that was already running is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
VM=${VM:-demo}

echo "==> building the guest image (reused when nothing changed)"
"$BIN/vmsilo" image build "$VM"

started=""
if ! "$BIN/vmsilo" status >/dev/null 2>&1; then
  log=$(mktemp -t vmsilod-demo.XXXXXX.log)
  echo "==> starting vmsilod (log: $log)"
  "$BIN/vmsilo" daemon >"$log" 2>&1 &
  started=$!
  for _ in $(seq 1 100); do
    "$BIN/vmsilo" status >/dev/null 2>&1 && break
    kill -0 "$started" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.2
  done
  grep -m1 "accelerator" "$log" || true
fi

cleanup() {
  if [ -n "$started" ]; then
    "$BIN/vm-stop" --all >/dev/null 2>&1 || true
    kill "$started" 2>/dev/null || true
    wait "$started" 2>/dev/null || true
  fi
}
trap cleanup EXIT

echo "==> vm-run $VM -- uname -a   (starts the VM on demand)"
time "$BIN/vm-run" "$VM" -- uname -a
echo "==> vm-run $VM -- cat /etc/hostname"
"$BIN/vm-run" "$VM" -- cat /etc/hostname
echo "==> vmsilo status"
"$BIN/vmsilo" status
