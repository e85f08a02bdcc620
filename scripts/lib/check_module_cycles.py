#!/usr/bin/env python3
"""Fails when the modules of a Rust crate import each other in a circle.

Usage: check_module_cycles.py SRC_DIR [SRC_DIR ...]

Each .rs file under SRC_DIR is a module (`a/mod.rs` is module `a`, `a/b.rs` is `a::b`).
A file imports module M when its code names `crate::M…` or `super::M…` (also inside one
level of `{…}`); an import of a module's own ancestors or descendants is the ordinary
parent/child relation and does not count. Any circle among the remaining edges is printed
with the names that make each edge, and the exit status is 1.
"""

import re
import sys
from pathlib import Path

PATH_RE = re.compile(r"\b(crate|super)::((?:\w+::)*)(\{[^}]*\}|\w+)")


def module_of(src: Path, file: Path) -> tuple:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def resolve(modules: set, base: tuple, segments: list) -> tuple:
    """The longest module path `base + segments[:n]` that is a module file."""
    best = None
    for n in range(1, len(segments) + 1):
        candidate = base + tuple(segments[:n])
        if candidate in modules:
            best = candidate
    return best


def edges_of(src: Path, modules: set, file: Path) -> dict:
    me = module_of(src, file)
    # A `mod.rs` is the module itself; `super` of a file `a/b.rs` is `a`.
    is_dir_module = file.name == "mod.rs"
    parent = me if is_dir_module else me[:-1]
    found = {}
    for m in PATH_RE.finditer(strip_comments(file.read_text())):
        root, middle, last = m.group(1), m.group(2), m.group(3)
        base = () if root == "crate" else (parent[:-1] if is_dir_module else parent)
        prefix = [s for s in middle.split("::") if s]
        tails = [t.strip().split("::")[0] for t in last.strip("{}").split(",")] if last.startswith("{") else [last]
        for tail in tails:
            if not tail or tail in ("self", "*"):
                tail_segments = prefix
            else:
                tail_segments = prefix + [tail]
            target = resolve(modules, base, tail_segments)
            if target is None or target == me:
                continue
            related = target[: len(me)] == me or me[: len(target)] == target
            if related:
                continue
            found.setdefault(target, set()).add(tail or "self")
    return found


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    failed = False
    for arg in sys.argv[1:]:
        src = Path(arg)
        files = sorted(src.rglob("*.rs"))
        modules = {module_of(src, f) for f in files}
        graph = {module_of(src, f): edges_of(src, modules, f) for f in files}
        for component in cycles(graph):
            failed = True
            names = ["::".join(m) or "crate" for m in component]
            print(f"{src}: modules import each other in a circle: {', '.join(names)}")
            for a in component:
                for b, what in sorted(graph[a].items()):
                    if b in component:
                        print(f"  {'::'.join(a)} -> {'::'.join(b)}: {', '.join(sorted(what))}")
    if not failed:
        print(f"no module import circles in {', '.join(sys.argv[1:])}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
