import sys

from hosttune.testbed.cli import main

sys.exit(main())
