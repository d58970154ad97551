"""The small interface every runtime of `hosttune bench --runtime` implements.

A runtime module has `NAME`, `EXTRA` (the pip extra that installs it) and
`load(model_path, cpus, options, cache_dir) -> Loaded`. `load` runs in the benchmark's worker
process, after the process was pinned to the instance's CPUs and bound to its memory node, so
every thread the runtime starts inherits that placement unless the runtime pins it itself.
Light on purpose: a future `hosttune tune` varies the runtime like any other setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# inputs by name -> outputs in the model's output order
Infer = Callable[[dict[str, Any]], list[Any]]


@dataclass
class Loaded:
    new_caller: Callable[[], Infer]  # one per concurrent caller (an infer request, a VM, a session)
    load_s: float  # reading the model and building the runtime's session / compiled model
    compile_s: float | None = None  # TVM: the compile alone (None: cached or not separate)
    settings: dict[str, Any] = field(default_factory=dict)  # what was applied (threads, affinity, target)
    threads_expected: int | None = None  # threads the runtime itself should start beside the caller
    notes: list[str] = field(default_factory=list)


class MissingExtra(Exception):
    """The runtime's package is not installed: one line naming the extra."""
