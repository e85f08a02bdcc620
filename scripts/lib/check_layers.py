#!/usr/bin/env python3
"""Fails when a module of a Rust crate imports a module of a later layer.

Usage: check_layers.py SRC_DIR LAYERS_FILE

LAYERS_FILE lists the crate's layers, lowest first, one per line: `name: module module …`,
where a module is a top-level entry of SRC_DIR (a folder `name/` or a file `name.rs`; the
crate roots are `lib` and `main`). `#` starts a comment. A file belongs to the layer of its
top-level module. It may name (`crate::M…`, `super::M…` up to the crate root, also inside
`{…}`) modules of its own layer and of earlier ones; a later layer is an error, printed with
the file, the line and the path. Names the crate root defines itself (e.g. `pub use`
re-exports) count as the root's layer. Comments and string literals are ignored. A top-level
module that is in no layer, or a listed module that does not exist, is an error too.
"""

import re
import sys
from pathlib import Path

# Comments and string/char literals (replaced by their newlines so line numbers hold).
NOISE_RE = re.compile(
    r"//[^\n]*|/\*.*?\*/|r(#*)\".*?\"\1|b?\"(?:\\.|[^\"\\])*\"|b?'(?:\\.|[^'\\\n])'",
    re.S,
)
ROOT_RE = re.compile(r"\b(crate|(?:super::)*super)::")
IDENT_RE = re.compile(r"\s*(\w+)((?:::\w+)*)")


def strip_noise(text: str) -> str:
    return NOISE_RE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def read_layers(path: Path) -> list:
    layers = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, sep, modules = line.partition(":")
        if not sep or not modules.split():
            sys.exit(f"{path}:{number}: expected `layer: module …`, found {line!r}")
        layers.append((name.strip(), modules.split()))
    return layers


def module_path(src: Path, file: Path) -> tuple:
    """`a/b.rs` is (a, b), `a/mod.rs` is (a,), `lib.rs` is (lib,)."""
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def first_segments(text: str, at: int) -> list:
    """(first name, path) of the path starting at `at`: one, or one per `{…}` element."""
    if text[at:at + 1] != "{":
        m = IDENT_RE.match(text, at)
        return [m.group(1, 2)] if m else []
    depth, start, out = 0, at + 1, []
    for i in range(at, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        if (c == "," and depth == 1) or depth == 0:
            m = IDENT_RE.match(text, start)
            if m:
                out.append(m.group(1, 2))
            start = i + 1
        if depth == 0:
            break
    return out


def main() -> int:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, layers_file = Path(sys.argv[1]), Path(sys.argv[2])
    layers = read_layers(layers_file)
    layer_of = {}
    for index, (name, modules) in enumerate(layers):
        for module in modules:
            if module in layer_of:
                sys.exit(f"{layers_file}: module {module} is in two layers")
            layer_of[module] = (index, name)
    root_layer = layer_of.get("lib")

    errors = []
    present = {(p.stem if p.is_file() else p.name): p
               for p in src.iterdir() if p.is_dir() or p.suffix == ".rs"}
    for module in sorted(present.keys() - layer_of.keys()):
        errors.append(f"{present[module]}: module `{module}` is in no layer of {layers_file}; add it to one")
    for module in sorted(layer_of.keys() - present):
        errors.append(f"{layers_file}: module `{module}` does not exist in {src}")

    for file in sorted(src.rglob("*.rs")):
        me = module_path(src, file)
        mine = layer_of.get(me[0])
        if mine is None:
            continue
        # Where `super` of this file points: a `mod.rs` is the module itself.
        parent = me[:-1]
        text = strip_noise(file.read_text())
        for m in ROOT_RE.finditer(text):
            root = m.group(1)
            if root == "crate":
                base = ()
            else:
                ups = root.count("super")
                if ups > len(parent):
                    continue  # not a path this file can name; rustc says so
                base = parent[: len(parent) - ups]
            if base:
                continue  # inside its own top-level module: its own layer
            for name, rest in first_segments(text, m.end()):
                if name in ("self", "super", "crate"):
                    continue
                target = layer_of.get(name, root_layer) if name in present else root_layer
                if target is None or target[0] <= mine[0]:
                    continue
                line = text.count("\n", 0, m.start()) + 1
                shown = name + rest + ("" if name in present else " (defined in the crate root)")
                errors.append(
                    f"{file}:{line}: `{'::'.join(me)}` (layer {mine[0] + 1}, {mine[1]}) imports "
                    f"`{root}::{shown}` (layer {target[0] + 1}, {target[1]}), a later layer"
                )
    for error in errors:
        print(error)
    if errors:
        print(f"layer order: {' < '.join(name for name, _ in layers)} ({layers_file})")
        return 1
    print(f"modules of {src} import only their own and earlier layers ({layers_file})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
