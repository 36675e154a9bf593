#!/usr/bin/env python3
"""Prints the crashing thread of every .NET crash report (*.crashreport.json) under the given folders, oldest first.

The .NET runtime writes such a report next to a crash dump when a process dies from a signal or an unhandled
exception and DOTNET_DbgEnableMiniDump=1 with DOTNET_EnableCrashReport=1 are set (.ci/run sets them for the test
runs). One line per frame: native frames as module!symbol+offset (image offset when the symbol is not exported),
managed frames as their method. Usage: crash-reports.py DIR [DIR ...]; prints nothing when there is no report.
"""
import glob
import json
import os
import sys


def frame_text(f):
    if f.get("is_managed") == "true":
        name = f.get("method_name") or "(managed frame without a name)"
        return f"  [managed] {name}  ({f.get('filename', '?')})"
    module = f.get("native_module") or "?"
    symbol = f.get("unmanaged_name")
    where = f"{symbol}" if symbol else f"+{f.get('native_image_offset', '?')}"
    return f"  [native]  {module}!{where}"


def main(dirs):
    reports = sorted({p for d in dirs for p in glob.glob(os.path.join(d, "**", "*.crashreport.json"), recursive=True)},
                     key=os.path.getmtime)
    for path in reports:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                report = json.load(fh)
        except (OSError, ValueError) as e:
            print(f"crash report {path}: unreadable ({e})")
            continue
        payload = report.get("payload", {})
        threads = payload.get("threads", [])
        crashed = [t for t in threads if t.get("crashed") == "true"] or threads[:1]
        params = report.get("parameters", {})
        print(f"crash report {path}: process {payload.get('process_name', '?')}, runtime "
              f"{payload.get('configuration', {}).get('version', '?').strip()}, {len(threads)} threads, parameters {params}")
        for t in crashed:
            exc = t.get("managed_exception_type")
            print(f" crashing thread {t.get('native_thread_id', '?')} (managed: {t.get('is_managed', '?')}"
                  + (f", exception {exc}" if exc else "") + ")")
            for f in t.get("stack_frames", [])[:60]:
                print(frame_text(f))


if __name__ == "__main__":
    main(sys.argv[1:] or ["."])
