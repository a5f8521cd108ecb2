"""The man pages render without groff warnings, and name every option, command and exit code
that the programs' own --help prints, so that a new flag without its man page entry fails here.
Usage: manpages_test.py PACKAGING_DIR VECSEALD VECSEAL"""
import os
import re
import subprocess
import sys

packaging, vecseald, vecseal = sys.argv[1:4]
failures = []


def render(page):
    env = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="80")
    done = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", page],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0 or done.stderr.strip():
        failures.append(f"{page}: groff: {done.stderr.strip() or done.returncode}")
    text = subprocess.run(["man", "-l", page], env=env, capture_output=True, text=True).stdout
    # man hyphenates at line ends and uses U+2010 for hyphens: undo both before searching.
    return re.sub(r"[\u2010\u2011-]\n\s*", "-", text).replace("\u2010", "-").replace("\u2212", "-")


def help_text(*command):
    return subprocess.run(list(command) + ["--help"], capture_output=True, text=True,
                          check=True).stdout


def expect_all(page_text, page, words, what):
    for word in sorted(set(words)):
        if word not in page_text:
            failures.append(f"{page}: no mention of {what} {word}")


vecseald_page = os.path.join(packaging, "man", "vecseald.8")
vecseal_page = os.path.join(packaging, "man", "vecseal.1")
daemon_text = render(vecseald_page)
cli_text = render(vecseal_page)

options = re.compile(r"--[a-z][a-z0-9-]*")
expect_all(daemon_text, vecseald_page, options.findall(help_text(vecseald)), "option")

main_help = help_text(vecseal)
# calibrate's own options are left to `vecseal calibrate --help`, which the page points to.
cli_help = main_help + help_text(vecseal, "audit")
expect_all(cli_text, vecseal_page, options.findall(cli_help), "option")
commands = re.findall(r"^  ([a-z]+(?: (?:list|create|rotate|show|config|delete))?)\b", main_help, re.M)
expect_all(cli_text, vecseal_page, commands, "command")
exit_codes = re.findall(r"\b(\d+) [a-z]", main_help[main_help.index("Exit codes:"):])
for code in exit_codes:
    if not re.search(rf"^\s+{code}\s+\S", cli_text, re.M):
        failures.append(f"{vecseal_page}: exit code {code} is not listed")
if "VECSEAL_SOCKET" in cli_help and "VECSEAL_SOCKET" not in cli_text:
    failures.append(f"{vecseal_page}: VECSEAL_SOCKET is not described")

if failures:
    print("FAIL:\n  " + "\n  ".join(failures))
    sys.exit(1)
print(f"man pages ok: {len(exit_codes)} exit codes, {len(set(commands))} commands checked")
