#!/usr/bin/env python3
"""Writes compile_commands.json (for clangd) to standard output.

Asks make for a dry run (-n -B: every command it would run, nothing built) of the host suite and
of each architecture's kernel, and keeps each compiler invocation with its source file. Run from
the repository root: `make compile_commands.json`.
"""
import json
import os
import shlex
import subprocess
import sys

ARCHES = ["aarch64", "riscv64", "x86_64"]
SOURCE_ENDINGS = (".cc", ".c", ".S")


def dry_run(targets):
    out = subprocess.run(["make", "-n", "-B", "--no-print-directory"] + targets,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        sys.exit("compile_commands: make -n failed for %s" % " ".join(targets))
    return out.stdout.splitlines()


def entries(lines, root):
    for line in lines:
        words = shlex.split(line) if line.strip() else []
        if not words or "clang" not in os.path.basename(words[0]) or "-c" not in words:
            continue
        src = words[words.index("-c") + 1]
        if not src.endswith(SOURCE_ENDINGS):
            continue
        yield {"directory": root, "file": os.path.join(root, src), "arguments": words}


def main():
    root = os.getcwd()
    seen = {}
    runs = [["all"]] + [["kernel", "ARCH=" + a] for a in ARCHES]
    for targets in runs:
        for e in entries(dry_run(targets), root):
            seen.setdefault(e["file"], e)  # The host build first: clangd sees the tests' flags.
    json.dump(sorted(seen.values(), key=lambda e: e["file"]), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
