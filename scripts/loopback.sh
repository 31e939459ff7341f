#!/usr/bin/env sh
# Run a command inside a loopback-only network namespace so that Ray (which binds to the
# machine's routable address otherwise) keeps all traffic on 127.0.0.1. Ray's token auth is
# turned off and its state kept out of the real home. Falls back to running directly, with a
# warning, where unprivileged namespaces are unavailable.
set -eu
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export RAY_USAGE_STATS_ENABLED=0
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
if [ -z "${COPL_IN_NETNS:-}" ] && unshare -n true 2>/dev/null; then
    export COPL_IN_NETNS=1
    exec unshare -n sh -c 'ip link set lo up && exec "$@"' sh "$@"
fi
[ -n "${COPL_IN_NETNS:-}" ] || echo "warning: no network namespace available; running without one" >&2
exec "$@"
