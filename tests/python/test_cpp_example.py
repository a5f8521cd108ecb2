"""Runs examples/cpp/ticket_scorer against the dev daemon named by $VECSEAL_SOCKET.

    test_cpp_example.py PATH_TO_TICKET_SCORER
"""

import os
import re
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))
import vecseal  # noqa: E402

SOURCE = os.path.join(HERE, "..", "..", "examples", "cpp", "ticket_scorer.cc")
BINARY = None  # from argv


def history():
    """The (team, text) pairs the example trains on, read from its source to stay in sync."""
    with open(SOURCE) as f:
        return re.findall(r'Example\{"([^"]+)", "([^"]+)"\}', f.read())


def run(*args):
    return subprocess.run([BINARY, *args], capture_output=True, text=True, timeout=60)


class TicketScorerTest(unittest.TestCase):

    def test_routes_the_tickets_it_learned_from(self):
        # β-DCP: with β far below the gap between a ticket's own centroid and the others, an
        # encrypted ticket lands on the same centroid as in plaintext: its own team's.
        with vecseal.Client() as client:
            try:
                client.create_key("tickets", approximation_factor=0.05)
            except vecseal.KeyExists:
                pass
        examples = history()
        self.assertEqual(len(examples), 9)
        result = run("--key", "tickets", *[text for _, text in examples])
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines, [f"{team}\t{text}" for team, text in examples])

    def test_serves_with_the_dev_key(self):
        result = run("my invoice is wrong", "the service is down")
        self.assertEqual(result.returncode, 0, result.stderr)
        teams = [line.split("\t")[0] for line in result.stdout.splitlines()]
        self.assertEqual(len(teams), 2)
        self.assertTrue(set(teams) <= {"billing", "access", "outage"}, teams)

    def test_reports_the_daemons_reason_for_an_unknown_key(self):
        result = run("--key", "no-such-key", "hello")
        self.assertEqual(result.returncode, 1)
        self.assertTrue(result.stderr.startswith("ticket_scorer: key_not_found: "), result.stderr)
        self.assertEqual(result.stdout, "")

    def test_reports_a_missing_daemon(self):
        result = run("--socket", "/nonexistent/vecseald.sock", "hello")
        self.assertEqual(result.returncode, 1)
        self.assertTrue(result.stderr.startswith("ticket_scorer: connect_failed: "), result.stderr)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    BINARY = sys.argv.pop(1)
    unittest.main(verbosity=2)
