#!/usr/bin/python3
"""Every place outside the tests that points a reader at a section of the docs, as
`docs/operations.md, "What each failure means"` (in an error's hint, a usage text or a comment),
names a heading that exists in that page: compared without case, and up to a colon, so that
"Encrypt" names "## Encrypt: `POST /v1/keys/{name}/encrypt`".

    doc_references_test.py SOURCE_DIR
"""
import os
import re
import sys

REFERENCE = re.compile(r'docs/([a-z-]+\.md),? \\?"([^"\\]+)\\?"')
SOURCES = ["core", "wire", "pkcs11", "policy", "audit", "client", "daemon", "cli", "clients", "scripts",
           "packaging", "tools", "examples"]


def headings(path):
    with open(path) as f:
        return {line.lstrip("#").strip().split(":")[0].strip().lower()
                for line in f if line.startswith("#") and not line.startswith("#include")}


def main():
    source = sys.argv[1]
    found, failures = 0, []
    for top in SOURCES:
        for directory, _, files in os.walk(os.path.join(source, top)):
            for name in files:
                path = os.path.join(directory, name)
                try:
                    with open(path, encoding="utf-8") as f:
                        text = f.read()
                except (UnicodeDecodeError, OSError):
                    continue  # not text
                for match in REFERENCE.finditer(text):
                    found += 1
                    page, heading = match.group(1), match.group(2)
                    doc = os.path.join(source, "docs", page)
                    where = os.path.relpath(path, source)
                    if not os.path.exists(doc):
                        failures.append(f'{where}: names docs/{page}, which does not exist')
                    elif heading.lower() not in headings(doc):
                        failures.append(f'{where}: names "{heading}" in docs/{page}, '
                                        "which has no such heading")
    print(f"{found} references to a section of the docs")
    if found < 5:
        failures.append("too few references found for the scan to be working")
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main())
