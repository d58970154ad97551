"""QEMU guest testbed: a cached Debian image and guests with a chosen CPU/NUMA topology.

    from hosttune_testbed import Guest
    with Guest(topology="smt4n") as g:
        g.ssh("lscpu")

CLI: `python -m hosttune_testbed {image,up,down,ssh,list,console}` (or `hosttune testbed ...`).
"""

from hosttune_testbed.errors import GuestCommandError, GuestError, TestbedError
from hosttune_testbed.qemu import NumaNode, Topology
from hosttune_testbed.topologies import TOPOLOGIES, get_topology
from hosttune_testbed.vm import Guest, offline_cpus, online_cpus

__all__ = [
    "Guest", "GuestCommandError", "GuestError", "NumaNode", "TOPOLOGIES", "TestbedError", "Topology",
    "get_topology", "offline_cpus", "online_cpus", "ensure_image",
]


def ensure_image(rebuild: bool = False):
    from hosttune_testbed.image import ensure_image as _ensure

    return _ensure(rebuild=rebuild)
