#!/usr/bin/env bash
# HTTP requests/s of the axum hello-world with ApiKeyLayer (B) and without (A),
# loaded by wrk on 127.0.0.1, alternating A B A B.
#
#   benches/scripts/http_load.sh [PAIRS] [SECONDS]      (defaults: 3 pairs of 10 s)
#   NOOP=1 benches/scripts/http_load.sh ...             (each pair also runs a layer that
#                                              does nothing: what axum's
#                                              Router::layer charges any layer)
#   FLOOR=1 benches/scripts/http_load.sh ...            (each pair also runs a layer that
#                                              does only SHA-256 of the key and
#                                              one HashMap lookup: what any
#                                              layer that hashes keys pays)
#
# The server runs on one thread pinned to CPU 0 and wrk (1 thread, 50
# connections) on CPU 1, where taskset exists. Prints each pair's ratio B/A
# and the median, and exits non-zero only if a run fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

pairs=${1:-3}
seconds=${2:-10}
port=18080
addr="127.0.0.1:$port"

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 2; }
source benches/scripts/server.sh

run() { # $1 = on|off|noop|floor; prints requests/s
  local keyfile rps
  keyfile=$(mktemp)
  start_server "$1" "$keyfile" "${pin_server[@]}"
  rps=$("${pin_wrk[@]}" wrk -t1 -c50 -d"${seconds}s" -H "Authorization: Bearer $(head -1 "$keyfile")" \
        "http://$addr/" | awk '/Requests\/sec/ {print $2}')
  stop_server
  rm -f "$keyfile"
  [ -n "$rps" ] || { echo "wrk reported nothing" >&2; exit 1; }
  echo "$rps"
}

# Check once that the layer really refuses a request without the key.
keyfile=$(mktemp)
start_server on "$keyfile"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/" || true)
ok=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(head -1 "$keyfile")" "http://$addr/" || true)
stop_server; rm -f "$keyfile"
[ "$code" = 401 ] && [ "$ok" = 200 ] || { echo "sanity check failed: $code/$ok" >&2; exit 1; }

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

ratios=(); noops=(); floors=()
for i in $(seq "$pairs"); do
  a=$(run off); b=$(run on)
  ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b / a }')
  ratios+=("$ratio")
  line="pair $i: without layer $a req/s, with layer $b req/s, ratio $ratio"
  if [ -n "${NOOP:-}" ]; then
    c=$(run noop)
    noop=$(awk -v a="$a" -v c="$c" 'BEGIN { printf "%.3f", c / a }')
    noops+=("$noop")
    line="$line; do-nothing layer $c req/s, ratio $noop"
  fi
  if [ -n "${FLOOR:-}" ]; then
    d=$(run floor)
    floor=$(awk -v a="$a" -v d="$d" 'BEGIN { printf "%.3f", d / a }')
    floors+=("$floor")
    line="$line; floor layer $d req/s, ratio $floor"
  fi
  echo "$line"
done
echo "median ratio (with / without): $(printf '%s\n' "${ratios[@]}" | median)"
if [ -n "${NOOP:-}" ]; then
  echo "median ratio (do-nothing layer / without): $(printf '%s\n' "${noops[@]}" | median)"
fi
if [ -n "${FLOOR:-}" ]; then
  echo "median ratio (floor layer / without): $(printf '%s\n' "${floors[@]}" | median)"
fi
