"""`python -m hosttune.agent`: what `hosttune agent` re-executes as (see hosttune/agent/cli.py)."""

import sys

# The agent speaks plain HTTP on loopback only. http.server imports http.client, which imports ssl
# when it can, and that maps libssl + libcrypto: 5 MB of RSS, a fifth of the agent's budget. With
# this marker `import ssl` raises ImportError, which the standard library handles (HTTPS unused).
sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

from hosttune.agent.daemon import main  # noqa: E402

raise SystemExit(main(sys.argv[1:]))
