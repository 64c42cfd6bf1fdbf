#!/usr/bin/env python3
"""CPU per operation from benches/profile.sh runs, kernel and user apart,
and the symbols that differ most between the first run and each other.

    python3 benches/profile_table.py DIR_A DIR_B [...] [--top N]

Each DIR holds perf.data (sampled at a fixed rate, so every sample is the
same slice of CPU time), load.json (wsbench's rate) and seconds (how long
perf sampled). A sample is charged to the operations wsbench reported for
the sampled seconds: handshakes or echoes per second times those seconds.
"""
import json
import subprocess
import sys


def samples(d):
    out = subprocess.run(
        ["perf", "report", "-i", f"{d}/perf.data", "--no-children", "--sort", "dso,sym",
         "-q", "-g", "none", "--stdio", "-F", "period,dso,sym"],
        capture_output=True, text=True, check=True).stdout
    by = {}
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3:
            continue
        try:
            by[(parts[1], parts[2].strip())] = by.get((parts[1], parts[2].strip()), 0) + int(parts[0])
        except ValueError:
            pass
    return by


def ops(d):
    load = json.load(open(f"{d}/load.json"))
    rate = load.get("handshakes_per_s") or load.get("msgs_per_s")
    return rate * float(open(f"{d}/seconds").read())


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    top = 25
    if "--top" in sys.argv:
        top = int(sys.argv[sys.argv.index("--top") + 1])
        args.remove(str(top))
    runs = [(d, samples(d), ops(d)) for d in args]
    # perf's period is in nanoseconds for the cpu-clock event a VM offers.
    print("| run | ns per op | kernel | user | of which in the binary | libc |")
    print("|---|---:|---:|---:|---:|---:|")
    for d, s, n in runs:
        total = sum(s.values()) / n
        kernel = sum(v for k, v in s.items() if k[0].startswith("[kernel")) / n
        libc = sum(v for k, v in s.items() if k[0].startswith("libc")) / n
        user = total - kernel
        print(f"| {d.rstrip('/').split('/')[-1]} | {total:,.0f} | {kernel:,.0f} | {user:,.0f} | {user - libc:,.0f} | {libc:,.0f} |")
    base_d, base, base_n = runs[0]
    for d, s, n in runs[1:]:
        print(f"\n{d} against {base_d}, ns per op (top {top} differences):\n")
        keys = set(base) | set(s)
        rows = sorted(((s.get(k, 0) / n - base.get(k, 0) / base_n, k) for k in keys),
                      key=lambda r: -abs(r[0]))
        for diff, (dso, sym) in rows[:top]:
            print(f"{diff:+8.0f}  {base.get((dso, sym), 0) / base_n:8.0f} {s.get((dso, sym), 0) / n:8.0f}  {dso[:16]:16s} {sym[:90]}")


if __name__ == "__main__":
    main()
