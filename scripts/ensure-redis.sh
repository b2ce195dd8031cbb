#!/usr/bin/env bash
# Make sure a Redis server answers at REDIS_URL (default redis://127.0.0.1:6379/0).
# Starts a loopback redis-server when none answers, installing Debian's package when it is missing.
set -euo pipefail
url="${1:-${REDIS_URL:-redis://127.0.0.1:6379/0}}"
case "$url" in
  memory://*) exit 0 ;;
esac
hostport="${url#*://}"; hostport="${hostport##*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"
[ "$port" = "$hostport" ] && port=6379
[ -n "$host" ] || host=127.0.0.1

ping() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h "$host" -p "$port" ping 2>/dev/null)" = "PONG" ]
  else
    (exec 3<>"/dev/tcp/$host/$port" && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3 | grep -q PONG) 2>/dev/null
  fi
}

if ping; then echo "redis: answering at $host:$port"; exit 0; fi
case "$host" in
  127.*|localhost|::1) ;;
  *) echo "redis: nothing answers at $host:$port and it is not a loopback address, so it cannot be started here." >&2; exit 1 ;;
esac
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis: installing redis-server with apt"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
echo "redis: starting redis-server on $host:$port"
redis-server --daemonize yes --bind "$host" --port "$port" --save "" --appendonly no \
  --dir /tmp --logfile "/tmp/redis-$port.log"
for _ in $(seq 1 50); do ping && { echo "redis: answering at $host:$port"; exit 0; }; sleep 0.1; done
echo "redis: redis-server did not answer at $host:$port; see /tmp/redis-$port.log" >&2
exit 1
