"""`python -m hosttune.agent`: what `hosttune agent` re-executes as (see hosttune/agent/cli.py)."""

import sys

# The agent speaks plain HTTP on loopback only. http.server imports http.client, which imports ssl
# when it can, and that maps libssl + libcrypto: 5 MB of RSS, a fifth of the agent's budget. With
# this marker `import ssl` raises ImportError, which the standard library handles (HTTPS unused).
sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
# The same for hashlib's OpenSSL backend (_hashlib maps libcrypto, 5 MB), which a module imported on
# the way (the model repository's name rule, for policy validation) brings in: without it hashlib
# uses its built-in implementations, and the agent hashes nothing where speed matters.
sys.modules.setdefault("_hashlib", None)  # type: ignore[arg-type]

from hosttune.agent.daemon import main  # noqa: E402

raise SystemExit(main(sys.argv[1:]))
