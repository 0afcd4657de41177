#!/usr/bin/env bash
# Screenshot an `abstain reproduce` report with headless Chromium (Debian package `chromium`),
# to check that it opens in a browser and every image renders. Not run by the tests.
#   tools/screenshot_report.sh runs/demo/report.html [/tmp/report.png] [HEIGHT]
set -euo pipefail
report=$(realpath "${1:?usage: $0 REPORT.html [OUT.png] [HEIGHT]}")
png=${2:-/tmp/report.png}
height=${3:-4000}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "no chromium found: apt-get install -y chromium" >&2
  exit 1
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --screenshot="$png" \
  --window-size=1200,"$height" "file://$report" 2>/dev/null
echo "$png"
