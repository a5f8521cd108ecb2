#!/usr/bin/python3
"""README.md's "Using it" section, pasted as a newcomer would: every block of the section, in
order, in one bash session that starts at the top of the checkout with nothing set up but a
plain PATH. The `$PWD/build/bin` it puts on PATH is swapped for the build under test, and a
```python block runs as `python3 -` with the block as its input, as if typed into python3. The
session must succeed and leave nothing new in the checkout.

    readme_session_test.py SOURCE_DIR BIN_DIR
"""
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from with_daemon import clear_append_only  # noqa: E402


def section_blocks(readme):
    text = open(readme).read()
    section = text[text.index("\n## Using it\n"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"^```(sh|python)\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


def untracked(source):
    result = subprocess.run(["git", "-C", source, "status", "--porcelain", "--untracked-files=all"],
                            capture_output=True, text=True)
    return set(result.stdout.splitlines()) if result.returncode == 0 else None


def main():
    source, bin_dir = sys.argv[1], sys.argv[2]
    if not os.access(os.path.join(bin_dir, "vecseald"), os.X_OK):
        print(f"SKIP: {bin_dir}/vecseald is not built")
        return 77
    if subprocess.run(["/usr/bin/python3", "-c", "import numpy"]).returncode != 0:
        print("SKIP: the section's training-set block needs /usr/bin/python3 with numpy")
        return 77
    blocks = section_blocks(os.path.join(source, "README.md"))
    languages = [language for language, _ in blocks]
    if languages.count("python") < 1 or languages.count("sh") < 5:
        print(f"FAIL: the section has too few blocks to be the one expected: {languages}")
        return 1
    script = "set -euo pipefail\n"
    for language, body in blocks:
        if language == "python":
            script += "python3 - <<'VECSEAL_README_PYTHON'\n" + body + "VECSEAL_README_PYTHON\n"
        else:
            script += body
    if '"$PWD/build/bin' not in script:
        print("FAIL: the section no longer puts $PWD/build/bin on PATH; update this test")
        return 1
    script = script.replace('"$PWD/build/bin', '"' + bin_dir)
    # What a newcomer's shell has, not what the build or the test runner set.
    before = untracked(source)
    with tempfile.TemporaryDirectory() as scratch:  # where the section's mktemp -d lands
        environment = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
                       "LANG": "C.UTF-8", "TMPDIR": scratch}
        result = subprocess.run(["/bin/bash", "-c", script], cwd=source, env=environment,
                                capture_output=True, text=True, timeout=120)
        clear_append_only(scratch)
    print(result.stdout + result.stderr, end="")
    failures = []
    if result.returncode != 0:
        failures.append(f"the session exited {result.returncode}")
    if "OK" not in result.stdout:
        failures.append("`vecseal audit verify` did not say OK")
    after = untracked(source)
    if before is not None and after != before:
        failures.append(f"the session wrote into the checkout: {sorted(after - before)}")
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main())
