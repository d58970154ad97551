import sys

from hosttune_testbed.cli import main

sys.exit(main())
