"""A stand-in for the get-pip.py bootstrap script ansible-test downloads from
ci-files.testing.ansible.com (not reachable from CI here): ansible-test runs it as
`python get_pip_X_Y.py [pip options] pip==X.Y [--no-setuptools] [--no-wheel]` inside a fresh venv.
This installs the pip bundled with Python (ensurepip), then lets that pip install the requested
packages from the package index. tests/test_collection.py puts it in ansible-test's cache."""

import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True, stdout=subprocess.DEVNULL)
sys.exit(subprocess.run([sys.executable, "-m", "pip", "install", *args]).returncode)
