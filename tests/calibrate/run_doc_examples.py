#!/usr/bin/python3
"""Runs every ```sh block of a document, in order, in a fresh directory, with `vecseal` on PATH.

Fails if a block exits non-zero or if a file named with --expect is missing afterwards. JSON
files named with --expect must parse; SVG files must be well-formed XML.

The numbers of the document's printed `vecseal calibrate` output are checked too: with
--report-file, that output must be the one the committed report holds (every table figure, the
guidance, the header's distances), so that it was printed by the program rather than typed; with
--recommends, the report this run wrote must recommend the β that output does; with
--demo-key-doc, the document describing dev mode must give its `demo` key that same β.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.dom.minidom


def printed_output(doc_text):
    """The fenced block of the document that shows a run's output, table and guidance."""
    # Fences alternate between opening (with or without a language) and closing.
    fences = re.findall(r"^```(\w*)\n(.*?)^```$", doc_text, re.S | re.M)
    for language, block in fences:
        shows_run = block.startswith("vecseal calibrate:") and "Recommended beta = " in block
        if not language and shows_run:
            return block
    sys.exit("no printed `vecseal calibrate` output with a recommendation in the document")


def printed_beta(output):
    return float(re.search(r"^Recommended beta = ([0-9.]+):", output, re.M).group(1))


def check_output_matches_report(output, report):
    """Each figure the output prints must be the committed report's, at the printed precision."""
    failures = []
    rows = {}
    for line in output.splitlines():
        match = re.match(r"^\s*(no noise|[0-9]+\.[0-9]{3})\s+([0-9.|\s-]+?)(\s+<- recommended)?$",
                         line)
        if match:
            rows[match.group(1)] = (match.group(2).replace("|", " ").split(), bool(match.group(3)))

    def figures(utility, plaintext_recall, leakage):
        inversion = leakage["known_plaintext_inversion"]
        values = [plaintext_recall if utility is None else utility["recall_at_k"]["value"]]
        values += [(report["plaintext"] if utility is None else utility)[name]["value"]
                   for name in ("knn_accuracy", "logistic_accuracy")]
        values += [attack["mean_cosine"]["value"] for attack in inversion]
        values += [inversion[-1]["nearest_record_identified"]["value"]]
        aligned = leakage["alignment_dimensions_recovered"]
        values += [aligned[transform]["value"] for transform in ("permute", "rotate")]
        return [f"{value:.3f}" for value in values]

    expected = {"no noise": (figures(None, 1.0, report["no_noise_leakage"]), False)}
    for result in report["results"]:
        recommended = result["beta"] == report["guidance"]["recommended_beta"]
        expected[f"{result['beta']:.3f}"] = (figures(result["utility"], None, result["leakage"]),
                                            recommended)
    for beta in sorted(set(rows) | set(expected)):
        if rows.get(beta) != expected.get(beta):
            failures.append(f"table row {beta}: printed {rows.get(beta)}, "
                            f"report {expected.get(beta)}")
    for line in report["guidance"]["text"].splitlines():
        if line not in output.splitlines():
            failures.append(f"guidance line missing from the output: {line}")
    data = report["data"]
    for text in (f"median distance from a query to its nearest neighbour "
                 f"{data['median_neighbour_distance']:.3f}",
                 f"an inversion cosine means little below {report['prior_cosine']:.3f}"):
        if text not in output:
            failures.append(f"the output does not say '{text}'")
    return failures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--doc", required=True)
    parser.add_argument("--vecseal", required=True, help="the vecseal binary, or a driver")
    parser.add_argument("--driver-for", help="the binary is a stand-in for this subcommand")
    parser.add_argument("--expect", action="append", default=[])
    parser.add_argument("--report-file", help="the committed report of the printed output")
    parser.add_argument("--recommends", help="a report this run writes, to agree with the output")
    parser.add_argument("--demo-key-doc", help="the document giving the dev `demo` key's β")
    args = parser.parse_args()

    with open(args.doc, encoding="utf-8") as doc:
        doc_text = doc.read()
    blocks = re.findall(r"^```sh\n(.*?)^```", doc_text, re.S | re.M)
    if not blocks:
        sys.exit(f"{args.doc}: no ```sh blocks")
    failures = []
    if args.report_file or args.recommends or args.demo_key_doc:
        output = printed_output(doc_text)
        beta = printed_beta(output)
    if args.report_file:
        with open(args.report_file, encoding="utf-8") as f:
            failures += check_output_matches_report(output, json.load(f))
    if args.demo_key_doc:
        with open(args.demo_key_doc, encoding="utf-8") as f:
            demo = re.search(r"model key `demo` \(β ([0-9.]+)", f.read())
        if not demo or float(demo.group(1)) != beta:
            failures.append(f"{args.demo_key_doc}: the `demo` key's β is "
                            f"{demo.group(1) if demo else 'not given'}, not {beta:g}, what "
                            f"calibrate recommends on the demo's digits")

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
        if args.recommends:
            with open(os.path.join(work, args.recommends), encoding="utf-8") as f:
                recommended = json.load(f)["guidance"]["recommended_beta"]
            if recommended != beta:
                failures.append(f"this run recommends beta {recommended}; the document, {beta:g}")
    if failures:
        sys.exit(f"{args.doc}:\n  " + "\n  ".join(failures))
    print(f"{args.doc}: {len(blocks)} sh blocks ran")


if __name__ == "__main__":
    main()
