#!/usr/bin/env bash
# Packs DetoxSharp (library) and DetoxSharp.Tool (the `detox` dotnet tool) into a local folder feed and uses them as a
# user would, outside the repository (issue #20 part 1):
#   1. a console app in a temporary folder references the DetoxSharp package (+ the libtorch flavour it chooses),
#      builds, creates a tiny GPT-2, runs a forward pass, saves and reloads it (scripts/package-check/Consumer.cs);
#   2. `dotnet tool install DetoxSharp.Tool --tool-path TMP` from the feed, then `detox info` on the model from 1.
# The packages get a unique prerelease version, so nothing stale from NuGet's global cache is used; that version's
# folder is removed from the cache afterwards. NuGet reaches only the local feed and the configured registry.
# Prints the package sizes and the time taken. Exit code non-zero on any failure.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
start=$(date +%s)
work="$(mktemp -d /tmp/detox-package-check.XXXXXX)"
version="0.1.0-check.$(date -u +%Y%m%d%H%M%S).$$"
cache="${NUGET_PACKAGES:-$HOME/.nuget/packages}"
cleanup() {
  rm -rf "$work" "$cache/detoxsharp/$version" "$cache/detoxsharp.tool/$version"
  rmdir "$cache/detoxsharp" "$cache/detoxsharp.tool" 2>/dev/null || true
}
trap cleanup EXIT
feed="$work/feed"
mkdir -p "$feed"
libtorch="${DETOX_CHECK_LIBTORCH:-libtorch-cpu-linux-x64}"

echo "== pack $version into $feed"
dotnet pack "$repo/src/DetoxSharp/DetoxSharp.csproj" -c Release -o "$feed" -p:Version="$version" -nologo -v:q -clp:NoSummary
dotnet pack "$repo/src/DetoxSharp.Cli/DetoxSharp.Cli.csproj" -c Release -o "$feed" -p:Version="$version" -nologo -v:q -clp:NoSummary
# sizes, and what each package must (not) hold: the library depends on no libtorch flavour and ships the load fix and
# its XML docs; the tool bundles one flavour (python3's zipfile: no unzip needed)
python3 - "$feed" "$version" <<'PY'
import sys, os, zipfile
feed, v = sys.argv[1], sys.argv[2]
for f in sorted(os.listdir(feed)):
    print(f"   {f:<55} {os.path.getsize(os.path.join(feed, f)) / 2**20:8.1f} MB")
lib = zipfile.ZipFile(os.path.join(feed, f"DetoxSharp.{v}.nupkg"))
tool = zipfile.ZipFile(os.path.join(feed, f"DetoxSharp.Tool.{v}.nupkg"))
nuspec = lib.read("DetoxSharp.nuspec").decode().lower()
problems = []
if 'id="libtorch' in nuspec or 'id="torchsharp-c' in nuspec: problems.append("the DetoxSharp package depends on a libtorch flavour")
for need in ["buildTransitive/DetoxSharp.targets", "buildTransitive/LibTorchSharpLoadFix.targets", "lib/net10.0/DetoxSharp.xml", "README.md"]:
    if need not in lib.namelist(): problems.append(f"{need} missing from the DetoxSharp package")
if not any(n.endswith("runtimes/linux-x64/native/libtorch_cpu.so") for n in tool.namelist()): problems.append("the tool package does not bundle libtorch")
print(f"   tool package unpacked: {sum(i.file_size for i in tool.infolist()) / 2**20:.0f} MB")
for p in problems: print("check-packages: " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY

cat > "$work/nuget.config" <<XML
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <clear />
    <add key="local" value="$feed" />
    <add key="nuget.org" value="https://api.nuget.org/v3/index.json" />
  </packageSources>
</configuration>
XML

echo "== consumer app from the packed library ($libtorch)"
app="$work/consumer"
mkdir -p "$app"
cp "$work/nuget.config" "$app/"
cp "$repo/scripts/package-check/Consumer.cs" "$app/Program.cs"
cat > "$app/Consumer.csproj" <<XML
<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Exe</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <Nullable>enable</Nullable>
    <ImplicitUsings>enable</ImplicitUsings>
    <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
  </PropertyGroup>
  <ItemGroup>
    <PackageReference Include="DetoxSharp" Version="$version" />
    <PackageReference Include="$libtorch" Version="2.10.0" />
  </ItemGroup>
</Project>
XML
(cd "$app" && dotnet build -c Release -nologo -v:q -clp:NoSummary && dotnet bin/Release/net10.0/Consumer.dll "$work/model")
rm -rf "$app" # its libtorch copy (≈ 650 MB) before the tool brings another: CI machines can have little free disk

echo "== dotnet tool install DetoxSharp.Tool --tool-path"
(cd "$work" && dotnet tool install DetoxSharp.Tool --version "$version" --tool-path "$work/tools" --configfile "$work/nuget.config")
"$work/tools/detox" info --model "$work/model" | tee "$work/info.txt"
grep -q '^family *gpt2' "$work/info.txt" || { echo "check-packages: detox info did not report the gpt2 model" >&2; exit 1; }
echo "   installed tool: $(du -sh "$work/tools" | cut -f1)"
echo "check-packages: OK in $(( $(date +%s) - start )) s"
