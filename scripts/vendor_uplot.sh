#!/usr/bin/env bash
# Refresh the charting library the dashboard ships (app/ui/static/vendor/uplot) from the npm registry.
# The version and the registry's integrity hash are pinned here; the files are committed, so the
# pages work with no internet and no JavaScript build step. Run from anywhere: scripts/vendor_uplot.sh
set -euo pipefail
VERSION=1.6.32
INTEGRITY='sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=='
DEST="$(cd "$(dirname "$0")/.." && pwd)/app/ui/static/vendor/uplot"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
npm pack --silent "uplot@$VERSION" >/dev/null
GOT="sha512-$(openssl dgst -sha512 -binary "uplot-$VERSION.tgz" | base64 -w0)"
if [ "$GOT" != "$INTEGRITY" ]; then
  echo "integrity mismatch for uplot@$VERSION: $GOT" >&2
  exit 1
fi
tar xzf "uplot-$VERSION.tgz"
mkdir -p "$DEST"
cp package/dist/uPlot.esm.js package/dist/uPlot.min.css package/LICENSE "$DEST/"
echo "uplot@$VERSION ($INTEGRITY)" > "$DEST/VERSION"
echo "vendored uplot@$VERSION into $DEST"
