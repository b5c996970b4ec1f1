#!/usr/bin/env bash
# The shared limiter over HTTP: the load server (one thread, CPU 0) with every
# key rate limited, loaded by wrk (1 thread, 50 connections, CPU 1) with one
# hot key, under three limiters in turn: the in-process one (local),
# RedisLimiter (redis) and one Redis EVALSHA per request (eval).
#
#   benches/scripts/shared_limit.sh [ROUNDS] [SECONDS]   (defaults: 3 rounds of 10 s)
#   LIMIT=10000/1 benches/scripts/shared_limit.sh ...    (the keys' limit; default
#                                               4000000000/86400, never reached)
#
# Per run: requests/s, p99 latency, Redis commands per request let in (from
# INFO commandstats) and, with a limit that is reached, let in ÷ limit in
# each whole 1 s window. Prints each round and the medians of the ratios.
# Needs Redis at 127.0.0.1:6379 and wrk.
set -euo pipefail
cd "$(dirname "$0")/../.."

rounds=${1:-3}
seconds=${2:-10}
port=18081
addr="127.0.0.1:$port"
export LIMIT=${LIMIT:-4000000000/86400}

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 2; }
redis-cli ping >/dev/null || { echo "Redis must answer on 127.0.0.1:6379" >&2; exit 2; }
server_features=redis
source benches/scripts/server.sh

calls() { # EVALSHA + EVAL calls so far
  redis-cli info commandstats | tr -d '\r' |
    awk -F'[=,:]' '/^cmdstat_(evalsha|eval):/ { n += $3 } END { print n + 0 }'
}

run() { # $1 = local|redis|eval; prints "rps p99_ms commands_per_admitted fill"
  local keyfile log out rps p99 before after non2xx total fill
  keyfile=$(mktemp); log=$(mktemp)
  LIMITER=$1 server_log=$log start_server on "$keyfile" "${pin_server[@]}"
  before=$(calls)
  out=$("${pin_wrk[@]}" wrk -t1 -c50 -d"${seconds}s" --latency \
        -H "Authorization: Bearer $(head -1 "$keyfile")" "http://$addr/")
  after=$(calls)
  stop_server
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us/, "", v); v /= 1000 }
         else if (v ~ /ms$/) { sub(/ms/, "", v) } else if (v ~ /s$/) { sub(/s/, "", v); v *= 1000 }
         print v }' <<<"$out")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out"); non2xx=${non2xx:-0}
  # Let in ÷ limit over whole windows (the limit per second, when reached).
  fill=$(awk -v limit="${LIMIT%%/*}" -v secs="${LIMIT##*/}" '
    /^window/ { n++; f = $4 / (limit / secs); if (min == "" || f < min) min = f }
    END { if (n) printf "%.4f", min; else print "-" }' "$log")
  awk -v r="$rps" -v p="$p99" -v c="$((after - before))" -v t="$total" -v x="$non2xx" -v f="$fill" \
    'BEGIN { printf "%s %s %.5f %s\n", r, p, c / (t - x), f }'
  rm -f "$keyfile" "$log"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "limit $LIMIT; $rounds rounds of $seconds s; columns: req/s, p99 ms, Redis calls per request let in, least-filled window"
tput=(); lat=(); evals=()
for i in $(seq "$rounds"); do
  read -r lr lp _ lf <<<"$(run local)"
  read -r rr rp rc rf <<<"$(run redis)"
  read -r er ep ec ef <<<"$(run eval)"
  echo "round $i: local $lr $lp ms fill $lf | redis $rr $rp ms $rc calls/req fill $rf | eval $er $ep ms $ec calls/req fill $ef"
  tput+=("$(awk -v a="$lr" -v b="$rr" 'BEGIN { printf "%.3f", b / a }')")
  lat+=("$(awk -v a="$lp" -v b="$rp" 'BEGIN { printf "%.3f", b / a }')")
  evals+=("$(awk -v a="$lr" -v b="$er" 'BEGIN { printf "%.3f", b / a }')")
done
echo "median throughput redis ÷ local: $(printf '%s\n' "${tput[@]}" | median)"
echo "median p99 redis ÷ local: $(printf '%s\n' "${lat[@]}" | median)"
echo "median throughput eval ÷ local: $(printf '%s\n' "${evals[@]}" | median)"
