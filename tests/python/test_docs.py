"""Runs the examples of docs/python.md against the dev daemon named by $VECSEAL_SOCKET, and the
documented offline install into a venv.

A fenced block right after `<!-- example: python -->` runs, in order, in one namespace; a block
after `<!-- example: install -->` is run by sh in a scratch directory holding a copy of
clients/python.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
DOC = os.path.join(ROOT, "docs", "python.md")
README = os.path.join(ROOT, "README.md")
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))


def examples(kind, doc=DOC):
    with open(doc) as f:
        text = f.read()
    return re.findall(r"<!-- example: " + kind + r" -->\n```\w*\n(.*?)```", text, re.DOTALL)


class DocExamplesTest(unittest.TestCase):

    def test_python_examples_run_in_order(self):
        blocks = examples("python")
        self.assertGreaterEqual(len(blocks), 5)
        namespace = {"__name__": "docs_python_md"}
        for i, block in enumerate(blocks):
            with self.subTest(block=i, first_line=block.splitlines()[0]):
                exec(compile(block, f"docs/python.md example {i}", "exec"), namespace)

    def test_readme_python_examples_run(self):
        blocks = examples("python", README)
        self.assertGreaterEqual(len(blocks), 1)
        namespace = {"__name__": "readme_md"}
        for i, block in enumerate(blocks):
            with self.subTest(block=i):
                exec(compile(block, f"README.md example {i}", "exec"), namespace)


class InstallTest(unittest.TestCase):

    def test_offline_pip_install_into_a_venv(self):
        try:
            import setuptools  # noqa: F401
        except ImportError:
            self.skipTest("setuptools is not installed (Debian: python3-setuptools)")
        if subprocess.run([sys.executable, "-c", "import ensurepip"]).returncode != 0:
            self.skipTest("venv cannot bootstrap pip (Debian: python3-venv)")
        (script,) = examples("install")
        with tempfile.TemporaryDirectory() as scratch:
            # A copy, so that the in-tree build leaves nothing behind in the checkout.
            shutil.copytree(os.path.join(ROOT, "clients", "python"),
                            os.path.join(scratch, "clients", "python"),
                            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
            env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1",
                       PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
            result = subprocess.run(["sh", "-e", "-c", script], cwd=scratch, env=env,
                                    capture_output=True, text=True, timeout=300)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            venv_python = os.path.join(scratch, "venv", "bin", "python")
            check = ("import vecseal, os; print(vecseal.__file__); "
                     "print(vecseal.__version__); "
                     "print(vecseal.Client().health()['status'] if os.environ.get('VECSEAL_SOCKET')"
                     " else 'no daemon')")
            result = subprocess.run([venv_python, "-c", check], cwd="/", capture_output=True,
                                    text=True, timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr)
            location, version, health = result.stdout.split()
            self.assertTrue(location.startswith(os.path.join(scratch, "venv")), location)
            self.assertEqual(version, "0.1.0")
            if os.environ.get("VECSEAL_SOCKET"):
                self.assertEqual(health, "ok")


if __name__ == "__main__":
    unittest.main(verbosity=2)
