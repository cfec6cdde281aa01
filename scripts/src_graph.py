#!/usr/bin/env python3
"""src_graph.py: the file-level dependency graph of src/ and its cycles.

    python3 scripts/src_graph.py [src] [both|include|call] [-v]
    WHY=<file> ...   also list the names <file>.c takes from other files
    DROP=a>b,c>d ... also the cycles with these edges taken away

An edge A -> B when A.c #includes "B.h" and B.c exists (include), or when
A.c names a function or variable defined, not static, in B.c (call; found
with regular expressions over the comment- and string-free text: no
compiler, no ctags). Prints the files and edges counted, then every strongly
connected component of more than one file (a dependency cycle), largest
first. A measure, not a check: the numbers are in the README's Source layout.
"""
import collections
import os
import re
import sys

args = [a for a in sys.argv[1:] if a != '-v']
src = args[0] if args else 'src'
mode = args[1] if len(args) > 1 else 'both'
files = sorted(f for f in os.listdir(src) if f.endswith('.c'))
text = {}
for f in files:
    t = open(os.path.join(src, f)).read()
    t = re.sub(r'/\*.*?\*/', '', t, flags=re.S)
    t = re.sub(r'//[^\n]*', '', t)
    t = re.sub(r'"(\\.|[^"\\\n])*"', '""', t)
    text[f] = t

defs = {}  # name -> the .c file that defines it (not static)
for f, t in text.items():
    for m in re.finditer(r'^(?!static\b)(?!typedef\b)[A-Za-z_][\w \*]*?\b(\w+)\s*\(', t, re.M):
        rest = t[m.start():]
        semi, brace = rest.find(';'), rest.find('{')
        if brace != -1 and (semi == -1 or brace < semi):  # a body follows: a definition
            defs.setdefault(m.group(1), f)
    for m in re.finditer(r'^(?!static\b)(?!extern\b)(?!typedef\b)(?:_Thread_local\s+)?(?:const\s+)?'
                         r'[A-Za-z_]\w*[\s\*]+(?:const\s+)?(\w+)\s*(?:\[[^\]]*\])*\s*(?:=|;)', t, re.M):
        defs.setdefault(m.group(1), f)

edges = collections.defaultdict(set)
for f in files:
    a = f[:-2]
    if mode in ('both', 'include'):
        for h in re.findall(r'^#include "(\w+)\.h"', open(os.path.join(src, f)).read(), re.M):
            if h != a and os.path.exists(os.path.join(src, h + '.c')):
                edges[a].add(h)
    if mode in ('both', 'call'):
        for name in set(re.findall(r'\b[A-Za-z_]\w*\b', text[f])):
            d = defs.get(name)
            if d and d != f:
                edges[a].add(d[:-2])
for pair in filter(None, os.environ.get('DROP', '').split(',')):
    a, b = pair.split('>')
    edges[a].discard(b)

nodes = [f[:-2] for f in files]
index, low, on, stack, sccs = {}, {}, set(), [], []
sys.setrecursionlimit(10000)


def tarjan(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            tarjan(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        sccs.append(sorted(comp))


for v in nodes:
    if v not in index:
        tarjan(v)
print('files', len(nodes), 'edges', sum(len(e) for e in edges.values()))
for s in sorted((s for s in sccs if len(s) > 1), key=len, reverse=True):
    print('cycle of', len(s), ':', ' '.join(s))
if '-v' in sys.argv:
    for a in sorted(edges):
        print(a, '->', ' '.join(sorted(edges[a])))
why = os.environ.get('WHY')
if why:
    for name in sorted(set(re.findall(r'\b[A-Za-z_]\w*\b', text[why + '.c']))):
        d = defs.get(name)
        if d and d != why + '.c':
            print('  ', name, '->', d)
