#!/usr/bin/python3
"""Runs every ```sh block of a document, in order, in a fresh directory, with `vecseal` on PATH.

Fails if a block exits non-zero or if a file named with --expect is missing afterwards. JSON
files named with --expect must parse; SVG files must be well-formed XML.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.dom.minidom


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--doc", required=True)
    parser.add_argument("--vecseal", required=True, help="the vecseal binary, or a driver")
    parser.add_argument("--driver-for", help="the binary is a stand-in for this subcommand")
    parser.add_argument("--expect", action="append", default=[])
    args = parser.parse_args()

    with open(args.doc, encoding="utf-8") as doc:
        blocks = re.findall(r"^```sh\n(.*?)^```", doc.read(), re.S | re.M)
    if not blocks:
        sys.exit(f"{args.doc}: no ```sh blocks")

    with tempfile.TemporaryDirectory(prefix="vecseal-doc-") as work:
        bin_dir = os.path.join(work, ".bin")
        os.mkdir(bin_dir)
        wrapper = os.path.join(bin_dir, "vecseal")
        with open(wrapper, "w", encoding="utf-8") as out:
            if args.driver_for:
                out.write('#!/bin/sh\n[ "$1" = "%s" ] || { echo "only %s is available" >&2; exit 2; }\n'
                          'shift\nexec "%s" "$@"\n' % (args.driver_for, args.driver_for, args.vecseal))
            else:
                out.write('#!/bin/sh\nexec "%s" "$@"\n' % args.vecseal)
        os.chmod(wrapper, 0o755)
        env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
        for number, block in enumerate(blocks, 1):
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env)
            if result.returncode != 0:
                sys.exit(f"{args.doc}: sh block {number} exited {result.returncode}:\n{block}")
        for name in args.expect:
            path = os.path.join(work, name)
            if not os.path.exists(path):
                sys.exit(f"{args.doc}: the examples did not produce {name}")
            if name.endswith(".json"):
                with open(path, encoding="utf-8") as f:
                    json.load(f)
            elif name.endswith(".svg"):
                xml.dom.minidom.parse(path)
    print(f"{args.doc}: {len(blocks)} sh blocks ran")


if __name__ == "__main__":
    main()
