#!/usr/bin/env bash
# Runs a command inside the trixie folder built by build-root.sh.
#
# Usage: tools/monado/run-in-root.sh DIR [VAR=VALUE ...] COMMAND [ARGS ...]
# The command gets a clean environment (PATH, HOME, LANG plus the VAR=VALUE given),
# the repository bind-mounted read-only at /src (the venv imports deeproom from there),
# and /proc, /dev, /sys. The mounts live in a private mount namespace: they vanish
# with the command, even when it is killed. unshare, sh, chroot and env each exec
# the next, so the PID of this script's process *is* the command's PID: stop it by
# that PID.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
root=$1; shift
[ -f "$root/.deeproom-venv" ] || { echo "run-in-root: $root is not built (tools/monado/build-root.sh)" >&2; exit 3; }
exec unshare --mount --propagation private -- /bin/sh -ec '
    repo=$1; r=$2; shift 2
    mount -t proc proc "$r/proc"
    mount --rbind /dev "$r/dev"
    mount --rbind /sys "$r/sys"
    mkdir -p "$r/src"; mount --bind -o ro "$repo" "$r/src"
    exec chroot "$r" /usr/bin/env -i PATH=/opt/deeproom-venv/bin:/usr/local/bin:/usr/bin:/bin \
        HOME=/root LANG=C.UTF-8 "$@"
' run-in-root "$repo" "$root" "$@"
