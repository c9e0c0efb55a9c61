#!/usr/bin/env bash
# Rebuilds crates/lowbit-cli/assets/DejaVuSans-subset.ttf, the font lowbit's pictures embed: DejaVu Sans cut to
# printable ASCII, Latin-1 and a few symbols (32 KB instead of 760 KB), hinting dropped (anti-aliased rendering).
# Needs Debian's fonts-dejavu-core (or DEJAVU_SANS=path/to/DejaVuSans.ttf) and fontTools (`pip install fonttools`).
set -euo pipefail
cd "$(dirname "$0")/.."
src=${DEJAVU_SANS:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}
python3 -m fontTools.subset "$src" \
  --unicodes="U+0020-007E,U+00A0-00FF,U+2013,U+2014,U+2026,U+2212,U+2248,U+2264,U+2265,U+2192,U+2190" \
  --no-hinting --output-file=crates/lowbit-cli/assets/DejaVuSans-subset.ttf
