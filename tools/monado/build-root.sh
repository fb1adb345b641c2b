#!/usr/bin/env bash
# Builds (once) a Debian trixie folder holding the Monado OpenXR runtime and a Python
# venv for DeepRoom's XR client, and reuses it afterwards.
#
# Why a folder: no OpenXR runtime is packaged for Debian 12; trixie packages Monado
# with a null compositor and a simulated HMD. The runtime library needs trixie's
# libraries, so the XR client runs inside the same folder (see run-in-root.sh).
#
# Usage: tools/monado/build-root.sh [DIR]     (default: <repo>/.cache/xr-root)
# Exit status 0 when DIR is ready. Two stages, each skipped when its stamp matches:
#   base: debootstrap + apt packages;  venv: /opt/deeproom-venv with DeepRoom's
#   client-side Python dependencies (ranges read from pyproject.toml).
# Mounts happen only inside a private mount namespace (unshare), so nothing stays
# mounted on the host when this script ends, however it ends.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
root=${1:-$repo/.cache/xr-root}
mirror=${DEEPROOM_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    # The mirror this machine's apt uses (deb822 "URIs:" or one-line "deb URL").
    mirror=$(grep -rhoE '^(URIs:\s*|deb\s+)https?://[^ ]+/debian/?(\s|$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | grep -oE 'https?://[^ ]+' | head -1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "build-root: needs root (debootstrap, chroot, mount namespaces); running as uid $(id -u)" >&2
    exit 3
fi
for tool in debootstrap unshare chroot flock; do
    command -v "$tool" >/dev/null 2>&1 || { echo "build-root: '$tool' not found (apt-get install debootstrap util-linux coreutils)" >&2; exit 3; }
done

apt_packages="monado-service libopenxr1-monado libopenxr-loader1 mesa-vulkan-drivers \
python3 python3-venv python3-pip ca-certificates libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri \
libgles2 libx11-6 libportaudio2 procps"
# Dependencies from pyproject.toml the XR client does not need inside the folder
# (the torch engine runs on the host; these have no wheels worth fetching here).
skip_deps="torch onnx scikit-learn opentsne umap-learn captum"

base_key=$(printf '%s\n' "trixie" "$mirror" "$apt_packages" | sha256sum | cut -c1-16)
venv_key=$( { cat "$repo/pyproject.toml"; echo "$skip_deps"; cat "$here/deeproom_src.py"; } | sha256sum | cut -c1-16)

mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9

in_root() {
    # Runs a shell command inside the folder, with /proc, /dev, /sys mounted in a
    # private namespace (gone when the command ends) and the host's pip sources
    # visible read-only.
    local cmd=$1
    unshare --mount --propagation private -- /bin/sh -ec '
        r=$1; shift
        mount -t proc proc "$r/proc"
        mount --rbind /dev "$r/dev"
        mount --rbind /sys "$r/sys"
        for d in /opt/wheels /opt/pypi /opt/pypi-more; do
            if [ -d "$d" ]; then mkdir -p "$r$d"; mount --bind -o ro "$d" "$r$d"; fi
        done
        mkdir -p "$r/src"; mount --bind -o ro "$0" "$r/src"
        exec chroot "$r" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive /bin/sh -ec "$1"
    ' "$repo" "$root" "$cmd"
}

if [ "$(cat "$root/.deeproom-base" 2>/dev/null || true)" != "$base_key" ]; then
    echo "build-root: debootstrap trixie from $mirror into $root (a few minutes, ~2 GB)"
    rm -rf "$root" "$root.partial"
    debootstrap --variant=minbase trixie "$root.partial" "$mirror" >"$root.debootstrap.log" 2>&1 || {
        tail -20 "$root.debootstrap.log" >&2; echo "build-root: debootstrap failed" >&2; exit 1; }
    mv "$root.partial" "$root"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    in_root "apt-get update -qq && apt-get install -y -qq --no-install-recommends $apt_packages >/dev/null && apt-get clean"
    echo "$base_key" >"$root/.deeproom-base"
    rm -f "$root/.deeproom-venv"
fi

if [ "$(cat "$root/.deeproom-venv" 2>/dev/null || true)" != "$venv_key" ]; then
    echo "build-root: Python venv for the XR client in $root/opt/deeproom-venv"
    # pip inside the folder uses the host's CA bundle and the same extra sources.
    cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/host-ca-certificates.crt"
    extra=$(pip config get global.extra-index-url 2>/dev/null || true)
    links=$(pip config get global.find-links 2>/dev/null || true)
    {
        echo "[global]"
        echo "cert = /etc/ssl/certs/host-ca-certificates.crt"
        echo "disable-pip-version-check = true"
        echo "default-timeout = 180"
        [ -n "$extra" ] && echo "extra-index-url = $extra"
        [ -n "$links" ] && echo "find-links = $links"
    } >"$root/etc/pip.conf"
    cp "$here/deeproom_src.py" "$root/opt/deeproom_src.py"
    rm -rf "$root/opt/deeproom-venv"
    in_root "
        python3 -m venv /opt/deeproom-venv
        deps=\$(/opt/deeproom-venv/bin/python /opt/deeproom_src.py deps /src/pyproject.toml $skip_deps)
        echo \"build-root: pip install \$deps\"
        eval /opt/deeproom-venv/bin/pip install -q \$deps
        /opt/deeproom-venv/bin/python /opt/deeproom_src.py install /opt/deeproom-venv
    "
    echo "$venv_key" >"$root/.deeproom-venv"
fi
echo "build-root: ready: $root"
