#!/usr/bin/env bash
# Renders a study report in headless Chromium and FAILS unless every interactive chart was drawn by plotly.js with no
# script error; also takes a screenshot.
#   scripts/check-report-in-browser.sh [RUN_DIR/report.html] [SCREENSHOT.png] [SECTION]
# The screenshot shows SECTION only (report.html?section=ID; default: training, the interactive curves).
# Without a report, builds one from the test fixtures (fake stage outputs, tests/DetoxSharp.Tests/Study/FakeStudy.cs;
# ≈ 1 min with the tests already built). Installs Debian's chromium when it is missing (apt-get, as root). Needs
# python3 (standard library only). Chromium runs with networking off: the page must work offline.
set -euo pipefail
cd "$(dirname "$0")/.."
report="${1:-}"
shot="${2:-/tmp/report-screenshot-$$.png}"
section="${3:-training}"
if ! command -v chromium >/dev/null; then
  [[ "$(id -u)" == 0 ]] || { echo "chromium is not installed (apt-get install -y chromium)" >&2; exit 2; }
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi
if [[ -z "$report" ]]; then
  fixture="$(mktemp -d)/fixture-run"
  DETOX_REPORT_FIXTURE_OUT="$fixture" dotnet test tests/DetoxSharp.Tests/DetoxSharp.Tests.csproj -c Release \
    --filter "FullyQualifiedName~DetoxSharp.Tests.Study.StudyReportTests.HtmlIsWellFormed" >/dev/null
  report="$fixture/report.html"
fi
[[ -f "$report" ]] || { echo "no report at $report" >&2; exit 2; }
url="file://$(realpath "$report")"
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --hide-scrollbars --virtual-time-budget=30000)
profile="$(mktemp -d)"
dom="$(mktemp)"
trap 'rm -rf "$profile" "$dom"' EXIT
chromium "${flags[@]}" --user-data-dir="$profile" --dump-dom "$url" >"$dom" 2>/dev/null
mkdir -p "$(dirname "$shot")"
chromium "${flags[@]}" --user-data-dir="$profile" --screenshot="$shot" --window-size=1280,2400 "$url?section=$section" >/dev/null 2>&1
python3 - "$dom" "$shot" "$report" <<'PY'
import re, sys, zlib, struct
dom, shot, report = open(sys.argv[1], encoding="utf-8").read(), sys.argv[2], sys.argv[3]
source = open(report, encoding="utf-8").read()
charts = re.findall(r'class="plotly-spec" data-target="([^"]+)"', source)
body = re.search(r"<body([^>]*)>", dom).group(1)
errors = re.search(r'data-js-errors="(\d+)"', body)
rendered = re.search(r'data-charts-rendered="(\d+)"', body)
# every chart div holds plotly's drawing (svg.main-svg) and was marked by the page's script
divs = {m.group(1): m.group(0) for m in re.finditer(r'<div[^>]*\bid="(plot-[^"]+)"[^>]*>', dom)}
missing = [c for c in charts if c not in divs or 'data-rendered="1"' not in divs[c]]
main_svgs = len(re.findall(r'<svg[^>]*class="main-svg"', dom))
scripts_with_src = re.findall(r"<script[^>]*\bsrc=", source)
err_text = re.search(r'<pre id="js-errors"[^>]*>(.*?)</pre>', dom, re.S)
sections = re.findall(r'<section id="([^"]+)"', dom)
# the screenshot: decode its pixels (8-bit RGB/RGBA PNG) with the standard library and measure how much is not white
data = open(shot, "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "screenshot is not a PNG"
pos, idat = 8, b""
w = h = ct = None
while pos < len(data):
    n, typ = struct.unpack(">I4s", data[pos:pos + 8]); chunk = data[pos + 8:pos + 8 + n]; pos += 12 + n
    if typ == b"IHDR": w, h, bd, ct = struct.unpack(">IIBB", chunk[:10])
    elif typ == b"IDAT": idat += chunk
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
print(f"sections={len(sections)}\ncharts in the page={len(charts)}, drawn by plotly={len(charts) - len(missing)} "
      f"(page script says {rendered.group(1) if rendered else 'nothing'}), svg.main-svg elements={main_svgs}\n"
      f"script errors={errors.group(1) if errors else '?'}{(': ' + err_text.group(1).strip()) if err_text and err_text.group(1).strip() else ''}\n"
      f"scripts with src={len(scripts_with_src)}; page size {len(source.encode('utf-8')) / 1e6:.2f} MB\n"
      f"screenshot {w}x{h}: {share:.1%} non-white pixels, {len(colours)} distinct colours")
if missing: print("not drawn: " + ", ".join(missing[:20]))
ok = (len(charts) > 0 and not missing and rendered is not None and int(rendered.group(1)) == len(charts)
      and errors is not None and errors.group(1) == "0" and main_svgs >= len(charts) and not scripts_with_src
      and len(sections) >= 10 and share > 0.02 and len(colours) > 20)
print("OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
