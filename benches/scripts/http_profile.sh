#!/usr/bin/env bash
# Where an HTTP request's time goes, symbol by symbol, for two servers side
# by side: benches/harness/load_server.rs in modes A and B (AUTH=off|noop|floor|on),
# each on one thread pinned to CPU 0 under wrk (1 thread, 50 connections) on
# CPU 1, sampled by perf for 10 s.
#
#   benches/scripts/http_profile.sh [A] [B] [ROWS]      (defaults: floor on 40)
#
# Prints, for the symbols whose cost differs most, nanoseconds a request in
# B, in A, and B - A; then the totals and the kernel's share. Nanoseconds a
# request are a symbol's share of the 10 s sampled divided by the requests
# served in them (wrk's rate times 10 s), so they come from one run each and
# move with the machine: compare within one run of this script.
set -euo pipefail
cd "$(dirname "$0")/../.."

a=${1:-floor}
b=${2:-on}
rows=${3:-40}
port=18084
addr="127.0.0.1:$port"

for tool in wrk perf python3; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install wrk linux-perf python3)" >&2; exit 2; }
done
source benches/scripts/server.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

profile() { # $1 = mode; leaves $work/$1.data and $work/$1.rps
  local mode=$1
  start_server "$mode" "$work/key" "${pin_server[@]}"
  "${pin_wrk[@]}" wrk -t1 -c50 -d12s -H "Authorization: Bearer $(head -1 "$work/key")" \
    "http://$addr/" >"$work/$mode.wrk" &
  local wrk_pid=$!
  sleep 1
  perf record -q -F 4999 -p "$server_pid" -o "$work/$mode.data" -- sleep 10 >/dev/null 2>&1
  wait "$wrk_pid"
  stop_server
  awk '/Requests\/sec/ { print $2 }' "$work/$mode.wrk" >"$work/$mode.rps"
  [ -s "$work/$mode.rps" ] || { echo "wrk reported nothing for $mode" >&2; exit 1; }
  echo "$mode: $(cat "$work/$mode.rps") requests/s"
}

profile "$a"
profile "$b"

for mode in "$a" "$b"; do
  perf report -i "$work/$mode.data" --no-children -g none --stdio --sort dso,sym \
    >"$work/$mode.txt" 2>/dev/null
done

python3 - "$work" "$a" "$b" "$rows" <<'PY'
import re, sys
work, a, b, rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

def per_request(mode):
    requests = float(open(f"{work}/{mode}.rps").read()) * 10
    costs = {}
    for line in open(f"{work}/{mode}.txt"):
        m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*)", line)
        if m:
            name = f"{m.group(2)} {m.group(3).strip()[:110]}"
            costs[name] = costs.get(name, 0) + float(m.group(1)) / 100 * 10e9 / requests
    return costs

ca, cb = per_request(a), per_request(b)
names = sorted(set(ca) | set(cb), key=lambda n: -abs(cb.get(n, 0) - ca.get(n, 0)))
print(f"{'ns ' + b:>10} {'ns ' + a:>10} {'diff':>8}  symbol")
for n in names[:rows]:
    print(f"{cb.get(n, 0):10.1f} {ca.get(n, 0):10.1f} {cb.get(n, 0) - ca.get(n, 0):+8.1f}  {n}")
kernel = lambda c: sum(v for k, v in c.items() if k.startswith("[kernel"))
print(f"total: {b} {sum(cb.values()):.0f} ns, {a} {sum(ca.values()):.0f} ns a request; "
      f"kernel {kernel(cb):.0f} and {kernel(ca):.0f}")
PY
