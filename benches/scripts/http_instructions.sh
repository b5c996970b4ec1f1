#!/usr/bin/env bash
# Instructions per HTTP request of benches/harness/load_server.rs, counted by
# valgrind's callgrind while wrk loads it: a figure that repeats from run to
# run where requests/s on a shared VM do not.
#
#   benches/scripts/http_instructions.sh [MODE ...]     (default: off noop on)
#
# For each mode (AUTH=off|noop|on, see benches/harness/load_server.rs) the server
# runs under callgrind; wrk warms it for 2 s, the counters are zeroed, wrk
# loads it for 5 s (1 thread, 10 connections), and the counts are dumped.
# Prints the instructions per request; with KEEP=1 the callgrind files are
# kept (their folder is printed) for callgrind_annotate. Note: valgrind does not run SHA-NI,
# so sha2 takes its software path (about 3 550 instructions a key).
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 2; }
modes=("$@"); [ ${#modes[@]} -gt 0 ] || modes=(off noop on)
port=18081
addr="127.0.0.1:$port"

cargo build --release --quiet --example load_server
server=target/release/examples/load_server
work=$(mktemp -d)
if [ -n "${KEEP:-}" ]; then echo "callgrind files: $work"; else trap 'rm -rf "$work"' EXIT; fi

for mode in "${modes[@]}"; do
  AUTH=$mode ADDR=$addr valgrind --tool=callgrind --callgrind-out-file="$work/$mode.out" \
    "$server" >"$work/key" 2>"$work/$mode.err" &
  pid=$!
  for _ in $(seq 600); do
    grep -q listening "$work/$mode.err" 2>/dev/null && break
    sleep 0.1
  done
  grep -q listening "$work/$mode.err" || { echo "the server did not start:" >&2; cat "$work/$mode.err" >&2; exit 1; }
  header="Authorization: Bearer $(head -1 "$work/key")"
  wrk -t1 -c10 -d2s -H "$header" "http://$addr/" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  out=$(wrk -t1 -c10 -d5s -H "$header" "http://$addr/")
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  requests=$(awk '/requests in/ { print $1 }' <<<"$out")
  dump=$(ls "$work/$mode.out".* | head -1)
  total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
  [ -n "$requests" ] && [ -n "$total" ] || { echo "no figure for $mode" >&2; exit 1; }
  echo "$mode: $((total / requests)) instructions a request ($requests requests)"
done
