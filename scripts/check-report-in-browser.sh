#!/usr/bin/env bash
# Renders a study report in headless Chromium and checks that it displayed with its figures.
#   scripts/check-report-in-browser.sh [RUN_DIR/report.html] [SCREENSHOT.png]
# Without a report, builds one from the test fixtures (fake stages, tests/DetoxSharp.Tests/Study/FakeStudy.cs).
# Needs Debian's chromium (apt-get install -y chromium) and python3 (standard library only).
set -euo pipefail
cd "$(dirname "$0")/.."
report="${1:-}"
shot="${2:-docs/report-screenshot.png}"
if [[ -z "$report" ]]; then
  fixture="$(mktemp -d)/fixture-run"
  DETOX_REPORT_FIXTURE_OUT="$fixture" dotnet test tests/DetoxSharp.Tests \
    --filter "FullyQualifiedName~DetoxSharp.Tests.Study.StudyReportTests.HtmlIsWellFormed" >/dev/null
  report="$fixture/report.html"
fi
[[ -f "$report" ]] || { echo "no report at $report" >&2; exit 2; }
command -v chromium >/dev/null || { echo "chromium not installed (apt-get install -y chromium)" >&2; exit 2; }
url="file://$(realpath "$report")"
flags=(--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update
       --disable-sync --no-first-run --hide-scrollbars)
profile="$(mktemp -d)"
dom="$(mktemp)"
chromium "${flags[@]}" --user-data-dir="$profile" --dump-dom "$url" >"$dom" 2>/dev/null
mkdir -p "$(dirname "$shot")"
chromium "${flags[@]}" --user-data-dir="$profile" --screenshot="$shot" --window-size=1280,4000 "$url" >/dev/null 2>&1
python3 - "$dom" "$shot" "$report" <<'PY'
import re, sys, zlib, struct, os
dom, shot, report = open(sys.argv[1], encoding="utf-8").read(), sys.argv[2], sys.argv[3]
svgs = len(re.findall(r"<svg\b", dom))
files = len([f for f in os.listdir(os.path.join(os.path.dirname(report), "stages", "report", "figures")) if f.endswith(".svg")]) \
    if os.path.isdir(os.path.join(os.path.dirname(report), "stages", "report", "figures")) else None
sections = re.findall(r'<section id="([^"]+)"', dom)
tables = len(re.findall(r"<table\b", dom))
# Decode the screenshot's pixels (8-bit RGB/RGBA PNG) with the standard library and measure how much is not white.
data = open(shot, "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "screenshot is not a PNG"
pos, idat = 8, b""
w = h = ct = None
while pos < len(data):
    n, typ = struct.unpack(">I4s", data[pos:pos + 8]); body = data[pos + 8:pos + 8 + n]; pos += 12 + n
    if typ == b"IHDR": w, h, bd, ct = struct.unpack(">IIBB", body[:10])
    elif typ == b"IDAT": idat += body
raw = zlib.decompress(idat); bpp = 4 if ct == 6 else 3; stride = w * bpp
prev = bytearray(stride); nonwhite = 0; colours = set()
for y in range(h):
    f = raw[y * (stride + 1)]; line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = line[i - bpp] if i >= bpp else 0; b = prev[i]; c = prev[i - bpp] if i >= bpp else 0
        if f == 1: line[i] = (line[i] + a) & 255
        elif f == 2: line[i] = (line[i] + b) & 255
        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    if y % 4 == 0:
        for x in range(0, w, 4):
            px = tuple(line[x * bpp:x * bpp + 3]); colours.add(px)
            if px != (255, 255, 255): nonwhite += 1
    prev = line
share = nonwhite / ((h // 4 + 1) * (w // 4 + 1))
print(f"sections={len(sections)} {sections}\nsvg elements in rendered DOM={svgs} (figure files: {files})\ntables={tables}\n"
      f"screenshot {w}x{h}: {share:.1%} non-white pixels, {len(colours)} distinct colours")
ok = svgs > 0 and (files is None or svgs == files) and len(sections) >= 10 and tables > 0 and share > 0.02 and len(colours) > 20
print("OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
