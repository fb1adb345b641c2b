#!/usr/bin/env bash
# Start or stop DeepRoom's Janus SFU by hand, inside a network namespace of its own.
#
#   tools/janus/janus-sfu.sh start [NAME] [ADDRESS] [HTTP_PORT]   # prints the Janus URL and PID
#   tools/janus/janus-sfu.sh stop  [NAME]                         # stops Janus by PID, deletes the namespace
#   tools/janus/janus-sfu.sh exec  [NAME] CMD...                  # runs CMD inside the namespace
#
# Janus 1.1.2 never gathers ICE candidates on loopback, so it runs in a namespace
# with a veth pair whose both ends stay inside it (ADDRESS on one end); the
# machine's own interfaces are never touched. Clients of this SFU must run in the
# same namespace (`exec`). The tests and `deeproom bench voice` do all of this
# themselves (deeproom.net.voice.netns / .janus); this script is for trying it by hand.
# Needs root and iproute2; Janus from `apt-get install janus`. The configuration
# templates are the ones the deeproom package ships (net/voice/janus_templates/ in a
# checkout; otherwise found through PYTHON, default python3, importing deeproom).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
templates=$here/../../net/voice/janus_templates
if [ ! -d "$templates" ]; then
    templates=$("${PYTHON:-python3}" -c 'from importlib.resources import files; print(files("deeproom.net.voice").joinpath("janus_templates"))')
fi
cmd=${1:-}
name=${2:-deeproom-sfu}
state=/run/deeproom-janus-$name
case "$cmd" in
start)
    address=${3:-10.213.0.1}
    port=${4:-8088}
    lib=$(dirname "$(ls -d /usr/lib/*/janus/plugins | head -n1)")
    mkdir -p "$state"
    ip netns add "$name"
    ip -n "$name" link set lo up
    ip -n "$name" link add drv0 type veth peer name drv1
    ip -n "$name" addr add "$address/24" dev drv0
    ip -n "$name" link set drv0 up
    ip -n "$name" link set drv1 up
    for f in janus.jcfg janus.transport.http.jcfg janus.plugin.videoroom.jcfg; do
        sed -e "s|@DIR@|$state|g" -e "s|@PLUGINS@|$lib/plugins|g" -e "s|@TRANSPORTS@|$lib/transports|g" \
            -e "s|@EVENTS@|$lib/events|g" -e "s|@LOGGERS@|$lib/loggers|g" -e "s|@DEBUG_LEVEL@|4|g" \
            -e "s|@RTP_PORTS@|20000-40000|g" -e "s|@ADDRESS@|$address|g" -e "s|@HTTP_PORT@|$port|g" \
            "$templates/$f.in" > "$state/$f"
    done
    ip netns exec "$name" janus -F "$state" -C "$state/janus.jcfg" -L "$state/janus.log" -N \
        </dev/null >/dev/null 2>&1 &
    echo $! > "$state/pid"
    echo "janus pid $(cat "$state/pid"), url http://$address:$port/janus (inside namespace $name)"
    ;;
stop)
    if [ -f "$state/pid" ]; then
        pid=$(cat "$state/pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    ip netns del "$name" 2>/dev/null || true
    rm -rf "$state"
    ;;
exec)
    shift 2
    exec ip netns exec "$name" "$@"
    ;;
*)
    sed -n '2,16p' "$0"
    exit 2
    ;;
esac
