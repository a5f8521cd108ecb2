#!/usr/bin/python3
"""The docs as the package installs them (`cmake --install` of the `service` component, which
debian/ packages): every relative link in an installed page resolves to an installed file, so
that a reader of /usr/share/doc/vecseal never follows a link into nothing.

    installed_docs_test.py BUILD_DIR
"""
import glob
import os
import re
import subprocess
import sys
import tempfile

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def main():
    build = sys.argv[1]
    with tempfile.TemporaryDirectory() as root:
        result = subprocess.run(["cmake", "--install", build, "--component", "service",
                                 "--prefix", "/usr"], env={**os.environ, "DESTDIR": root},
                                capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stdout + result.stderr)
            print("FAIL: cmake --install failed")
            return 1
        pages = glob.glob(os.path.join(root, "usr/share/doc/vecseal/**/*.md"), recursive=True)
        failures, links = [], 0
        for page in pages:
            with open(page) as f:
                text = f.read()
            for match in LINK.finditer(text):
                target = match.group(1)
                if re.match(r"[a-z]+:", target):
                    continue  # https:, mailto:
                links += 1
                if not os.path.exists(os.path.join(os.path.dirname(page), target)):
                    failures.append(f"{os.path.basename(page)} links {target}, which the package "
                                    "does not install")
        print(f"{len(pages)} pages installed, {links} relative links")
        if len(pages) < 5 or links < 10:
            failures.append("too few pages or links for the check to be working")
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main())
