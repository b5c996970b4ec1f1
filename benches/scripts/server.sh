# Sourced by benches/scripts/http_load.sh and benches/scripts/http_profile.sh, which set
# $server (the built load_server example), $addr and $port.
#
# start_server MODE KEYFILE [PIN...]: starts the server in MODE (AUTH=…),
# pinned by the PIN command if given, writes the key to send as KEYFILE's
# first line, sets $server_pid, and returns once the port answers; fails if
# it does not within 10 s.
start_server() {
  local mode=$1 keyfile=$2
  shift 2
  AUTH=$mode ADDR=$addr "$@" "$server" >"$keyfile" 2>/dev/null &
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
