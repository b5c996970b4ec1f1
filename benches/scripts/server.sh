# Sourced by benches/scripts/http_load.sh, http_profile.sh and shared_limit.sh,
# which set $addr and $port (and $server_features, cargo features to build
# with, if any). Builds the load_server example ($server) and sets
# $pin_server and $pin_wrk: the server on CPU 0 and wrk on CPU 1, where
# taskset exists and there are two CPUs (empty otherwise).
#
# start_server MODE KEYFILE [PIN...]: starts the server in MODE (AUTH=…),
# pinned by the PIN command if given, writes the key to send as KEYFILE's
# first line (its stderr to $server_log, /dev/null unless set), sets
# $server_pid, and returns once the port answers; fails if it does not
# within 10 s. Other settings (LIMIT, LIMITER) reach it through the
# environment.
pin_server=(); pin_wrk=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  pin_server=(taskset -c 0); pin_wrk=(taskset -c 1)
fi

cargo build --release --quiet ${server_features:+--features "$server_features"} --example load_server
server=target/release/examples/load_server

start_server() {
  local mode=$1 keyfile=$2
  shift 2
  AUTH=$mode ADDR=$addr "$@" "$server" >"$keyfile" 2>"${server_log:-/dev/null}" &
  server_pid=$!
  for _ in $(seq 100); do
    [ -s "$keyfile" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "the load server (AUTH=$mode) did not start on $addr" >&2
  return 1
}

stop_server() {
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
}
