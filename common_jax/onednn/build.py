"""Compiles the oneDNN convolution custom calls (onednn_conv.cc) into a shared library.

    python -m common_jax.onednn.build          # what `make onednn` runs after installing oneDNN

Needs a C++17 compiler ($CXX, else g++ or c++), oneDNN 3.x's headers and library (the PyPI
packages onednn-cpu-gomp and onednn-devel-cpu-gomp install them into the venv's include/ and
lib/; $ONEDNN_ROOT points elsewhere) and XLA's FFI headers (from jaxlib). When one is missing
it says which and exits 0 without building: the extension is optional, and the convolutions
then stay XLA's. The library goes to `library_path()` (build/onednn/ in the source tree, which
git ignores), with oneDNN's folder as its run path.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from common_jax.onednn import SOURCE, library_path

ROOT_ENV = "ONEDNN_ROOT"


def find_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def find_onednn() -> tuple[Path, Path] | None:
    """(include dir, lib dir) of an installed oneDNN 3.x, or None."""
    roots = [Path(os.environ[ROOT_ENV])] if os.environ.get(ROOT_ENV) else []
    roots.append(Path(sys.prefix))
    for root in roots:
        include, lib = root / "include", root / "lib"
        version = include / "oneapi" / "dnnl" / "dnnl_version.h"
        if version.exists() and (lib / "libdnnl.so").exists() and _major(version) >= 3:
            return include, lib
    return None


def _major(header: Path) -> int:
    match = re.search(r"#define DNNL_VERSION_MAJOR (\d+)", header.read_text())
    return int(match.group(1)) if match else 0


def compile_command(compiler: str, include: Path, lib: Path, output: Path) -> list[str]:
    import jax.ffi  # only here: `make onednn` reports a missing compiler without importing jax

    return [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden",
            "-fopenmp",  # omp_set_num_threads: oneDNN's thread count per call
            # XLA's FFI headers leave some switch functions without a return; not ours to fix
            "-Wno-return-type",
            f"-I{include}", f"-I{jax.ffi.include_dir()}", str(SOURCE),
            f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}", "-o", str(output)]


def up_to_date(output: Path, lib: Path) -> bool:
    """The library exists and is newer than its source and the oneDNN it links."""
    if not output.exists():
        return False
    built = output.stat().st_mtime
    inputs = (SOURCE, Path(__file__), lib / "libdnnl.so")
    return all(built > path.stat().st_mtime for path in inputs)


def build(output: Path | None = None, *, quiet: bool = False, force: bool = False) -> Path | None:
    """Builds the library; returns its path, or None (with the reason printed) if it cannot."""
    output = output or library_path()
    compiler = find_compiler()
    if compiler is None:
        print("onednn: no C++ compiler (set CXX or install g++); convolutions stay XLA's")
        return None
    found = find_onednn()
    if found is None:
        print(f"onednn: oneDNN 3.x not found under {os.environ.get(ROOT_ENV) or sys.prefix} "
              "(pip install onednn-cpu-gomp onednn-devel-cpu-gomp, or set "
              f"{ROOT_ENV}); convolutions stay XLA's")
        return None
    if not force and up_to_date(output, found[1]):
        print(f"onednn: {output} is up to date")
        return output
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".partial.so")  # never leave a half-written library behind
    command = compile_command(compiler, *found, partial)
    if not quiet:
        print(" ".join(command))
    subprocess.run(command, check=True)
    partial.replace(output)
    print(f"onednn: built {output}")
    return output


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="default: build/onednn/ in the source tree")
    parser.add_argument("--quiet", action="store_true", help="do not print the compile command")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    build(args.output, quiet=args.quiet, force=args.force)


if __name__ == "__main__":
    main()
