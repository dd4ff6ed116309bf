#!/bin/sh
# Container entrypoint: check that the bundle is there, then become `edgerec serve`.
#
# Why a script: a missing or unmounted bundle is the most common container
# mistake, and it deserves one clear line instead of a Python traceback.
# `exec` makes the server PID 1, so `docker stop` (SIGTERM) drains it
# gracefully. The bundle's checksums are verified by `edgerec serve` itself.
#
# Environment (every EDGEREC_<SETTING> of `edgerec serve --help` also works):
#   EDGEREC_BUNDLE  bundle .tar.gz or folder to serve (default /models/bundle.tar.gz)
#   EDGEREC_HOST    address gRPC binds to. Unset, the server binds 127.0.0.1,
#                   which nothing outside the container can reach: set
#                   EDGEREC_HOST=0.0.0.0 (and EDGEREC_METRICS_HOST=0.0.0.0 for
#                   Prometheus) to publish the ports with `docker run -p`.
# Arguments: extra `edgerec serve` flags (e.g. --max-batch-size 16); a first
# argument that is not a flag is run instead of the server (e.g. `sh`).
set -eu

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
    exec "$@"
fi

bundle="${EDGEREC_BUNDLE:-/models/bundle.tar.gz}"

refuse() {
    echo "edgerec-entrypoint: $1" >&2
    echo "edgerec-entrypoint: mount a bundle (e.g. -v \$PWD/bundle.tar.gz:/models/bundle.tar.gz:ro) or set EDGEREC_BUNDLE to its path" >&2
    exit 66  # EX_NOINPUT
}

if [ -d "$bundle" ]; then
    [ -r "$bundle/manifest.json" ] || refuse "bundle folder $bundle has no readable manifest.json"
elif [ -e "$bundle" ]; then
    if [ ! -f "$bundle" ] || [ ! -r "$bundle" ]; then refuse "bundle $bundle is not a readable file"; fi
    [ -s "$bundle" ] || refuse "bundle $bundle is empty"
else
    refuse "no bundle at $bundle"
fi

host="${EDGEREC_HOST:-127.0.0.1}"
case "$host" in
    127.*|localhost|::1)
        echo "edgerec-entrypoint: gRPC binds $host: reachable only from inside the container (set EDGEREC_HOST=0.0.0.0 to publish it)" >&2
        ;;
esac

exec edgerec serve --bundle "$bundle" "$@"
