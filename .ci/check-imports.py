#!/usr/bin/env python3
"""No import cycles between bearward's modules, and the layers in order.

Reads every `crate::` path in src/ (in `use` lines and inline, comments and doc links left
out), maps each file to its top-level module (src/auth/jwks.rs -> auth; lib.rs and main.rs
are the roots and left out), and builds the graph module -> modules it names. Fails on any
cycle (a strongly connected component of more than one module), and on a lower layer naming a
higher one. Prints the graph, so a reviewer sees what depends on what.
"""
import pathlib
import re
import sys

# Lower layers may not name higher ones; within a layer, only the cycle check applies.
LAYERS = [
    {"body", "timer", "headers", "jose", "host", "path", "tls", "egress", "worker"},  # leaves
    {"telemetry", "routes", "resource", "config", "request", "trace", "mcp", "policy", "cors"},  # parsing and policy
    {"store"},  # the store replicas share
    {"auth"},
    {"upstream", "forward", "authzen", "assertion", "token_exchange"},
    {"gateway"},
    {"server", "explain", "demo"},
]
LAYER = {m: i for i, layer in enumerate(LAYERS) for m in layer}

def module_of(path):
    rel = path.relative_to("src")
    if rel.parts[0] in ("lib.rs", "main.rs"):
        return None
    return rel.parts[0].removesuffix(".rs")

def names(text):
    text = re.sub(r"//[^\n]*", "", text)  # comments and doc comments, with their links
    found = set()
    for m in re.finditer(r"\bcrate::(\{[^}]*\}|[a-z_0-9]+)", text):
        group = m.group(1)
        if group.startswith("{"):
            found.update(n.strip().split("::")[0] for n in group[1:-1].split(",") if n.strip())
        else:
            found.add(group)
    return found

graph = {}
for f in sorted(pathlib.Path("src").rglob("*.rs")):
    m = module_of(f)
    if m is None:
        continue
    deps = {d for d in names(f.read_text()) if d != m and d not in ("self",)}
    graph.setdefault(m, set()).update(deps)
mods = sorted(graph)

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
def visit(v):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w in graph.get(v, ()):
        if w not in graph:
            continue
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        sccs.append(sorted(comp))
for v in mods:
    if v not in index:
        visit(v)

problems = []
for comp in sccs:
    if len(comp) > 1:
        problems.append(f"import cycle: {' <-> '.join(comp)}")
for m in mods:
    for d in sorted(graph[m]):
        if d in graph and LAYER.get(d, 0) > LAYER.get(m, 0):
            problems.append(f"layering: {m} (layer {LAYER.get(m)}) names {d} (layer {LAYER.get(d)})")
        if m not in LAYER:
            problems.append(f"module {m} has no layer in .ci/check-imports.py")
for m in mods:
    print(f"{m:<10} -> {', '.join(sorted(d for d in graph[m] if d in graph)) or '-'}")
if problems:
    sys.exit("\n".join(sorted(set(problems))))
print(f"imports: {len(mods)} modules, no cycle, layers respected")
