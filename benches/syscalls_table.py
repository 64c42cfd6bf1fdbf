#!/usr/bin/env python3
"""syscalls_table.py LABEL... (after benches/syscalls.sh): per-handshake and per-echo syscalls (strace -c) and
context switches (perf stat), each divided by what wsbench reported."""
import json, os, re, sys
labels = sys.argv[1:]
base = os.environ.get('OUT', '/tmp/wsproxy-syscalls')

def strace(path):
    calls, errs = {}, {}
    for line in open(path):
        f = line.split()
        if len(f) >= 5 and re.match(r'^[\d.]+$', f[0]) and f[-1] != 'total':
            calls[f[-1]] = int(f[3])
            errs[f[-1]] = int(f[4]) if len(f) == 6 else 0
    return calls, errs

def units(path, test):
    j = json.loads(open(path).read().strip().splitlines()[-1])
    return j['ok'] if test == 'hs' else j['messages']

def perf(path):
    out = {}
    for line in open(path):
        m = re.match(r'\s*([\d,.]+)\s+(context-switches|cpu-migrations|task-clock)', line)
        if m:
            out[m.group(2)] = float(m.group(1).replace(',', ''))
    return out

for test, unit in (('hs', 'handshake'), ('tp1k', '1 KiB echo')):
    data = {}
    for l in labels:
        c, e = strace(f'{base}/{l}/{test}.strace')
        n = units(f'{base}/{l}/{test}.strace.json', test)
        p = perf(f'{base}/{l}/{test}.perf')
        pn = units(f'{base}/{l}/{test}.perf.json', test)
        try:
            v0, n0 = map(int, open(f'{base}/{l}/{test}.ctx0').read().split())
            v1, n1 = map(int, open(f'{base}/{l}/{test}.ctx1').read().split())
            p['voluntary'] = v1 - v0
            p['involuntary'] = n1 - n0
        except (OSError, ValueError):
            pass
        data[l] = (c, e, n, p, pn)
    names = sorted({k for l in labels for k in data[l][0]},
                   key=lambda k: -max(data[l][0].get(k, 0) / data[l][2] for l in labels))
    print(f'\nPer {unit} ({", ".join(f"{l}: {data[l][2]:,} under strace, {data[l][4]:,} under perf" for l in labels)})\n')
    print('| syscall | ' + ' | '.join(labels) + ' |')
    print('|---|' + '---:|' * len(labels))
    fmt = (lambda v: f'{v:.2f}') if test == 'hs' else (lambda v: f'{v:.3f}')
    for k in names:
        row = []
        for l in labels:
            c, e, n, _, _ = data[l]
            v = c.get(k, 0) / n
            err = e.get(k, 0) / n
            row.append(fmt(v) + (f' ({fmt(err)} err)' if err >= 0.005 else ''))
        print(f'| `{k}` | ' + ' | '.join(row) + ' |')
    print('| **total** | ' + ' | '.join(f'**{fmt(sum(data[l][0].values()) / data[l][2])}**' for l in labels) + ' |')
    print('| context switches | ' + ' | '.join(fmt(data[l][3].get('context-switches', 0) / data[l][4]) for l in labels) + ' |')
    print('| of which voluntary | ' + ' | '.join(fmt(data[l][3]['voluntary'] / data[l][4]) if 'voluntary' in data[l][3] else 'n/a' for l in labels) + ' |')
    print('| CPU migrations | ' + ' | '.join(f"{data[l][3].get('cpu-migrations', 0) / data[l][4]:.4f}" for l in labels) + ' |')
