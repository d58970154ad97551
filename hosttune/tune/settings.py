"""What `hosttune tune` varies, pure (no I/O): a candidate's settings in the keys of
`hosttune_policy.instances` (the overlay's keys), the candidates around the plan's rule-based
default, and what each candidate asks of `hosttune serve` on the instance's cpuset.

Candidates (`candidates`): the performance hint / streams / threads per stream / nireq grid of
the cpuset ("streams"), and one axis at a time around the default: both SMT siblings or one CPU
per core ("smt", where the cpuset has siblings), two instances with half the cores each
("split"), the inference precision f32 against OpenVINO's default where the CPU runs BF16
("precision"), the INT8 model `model prepare` / `model sample` made ("model").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

AXES = ("streams", "smt", "split", "precision", "model")
INT8_SUFFIX = "-int8"  # hosttune.model.repo.INT8_SUFFIX (model is a lower layer, kept import-free here)
MAX_CANDIDATES = 24


@dataclass(frozen=True)
class Settings:
    """One candidate, in the overlay's keys (hosttune_policy.instances)."""
    hint: str  # "latency" | "throughput"
    streams: int | None  # throughput: NUM_STREAMS (None: OpenVINO's THROUGHPUT hint decides)
    threads_per_stream: int | None
    nireq: int | None  # None: OPTIMAL_NUMBER_OF_INFER_REQUESTS
    smt: bool
    per_node: int  # 1 | 2 instances on the node's cpuset
    inference_precision: str | None  # None | f32 | bf16 | f16
    model: str

    def label(self) -> str:
        if self.hint == "latency":
            head = "latency"
        else:
            head = f"throughput {self.streams}x{self.threads_per_stream}" if self.streams else "throughput auto"
        parts = [head, f"nireq {self.nireq if self.nireq else 'auto'}"]
        if self.smt:
            parts.append("smt")
        if self.per_node > 1:
            parts.append(f"{self.per_node} per node")
        if self.inference_precision:
            parts.append(self.inference_precision)
        parts.append(self.model)
        return " ".join(parts)

    def overlay(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Hardware:
    """What the candidates depend on: the instance's CPUs as cores (each core's CPUs of the cpuset,
    SMT siblings together), whether the CPU runs BF16 by default, the models in the repository."""
    cores: tuple[tuple[int, ...], ...]
    bf16: bool
    models: frozenset[str]


def from_instance(instance: dict[str, Any], per_node: int = 1) -> Settings:
    """The plan's rule-based settings of an instance (its `openvino` and `ovms.nireq`)."""
    ov = instance.get("openvino") or {}
    hint = "latency" if str(ov.get("PERFORMANCE_HINT", "")).upper() == "LATENCY" else "throughput"
    streams = ov.get("NUM_STREAMS") if hint == "throughput" else None
    threads = ov.get("INFERENCE_NUM_THREADS")
    tps = threads // streams if isinstance(streams, int) and isinstance(threads, int) and streams else None
    return Settings(hint=hint, streams=streams, threads_per_stream=tps,
                    nireq=(instance.get("ovms") or {}).get("nireq"), smt=bool(ov.get("ENABLE_HYPER_THREADING")),
                    per_node=per_node, inference_precision=ov.get("INFERENCE_PRECISION_HINT"),
                    model=instance.get("model") or "sample")


def cores_of(cpus: list[int], siblings: dict[int, list[int]]) -> tuple[tuple[int, ...], ...]:
    """The cpuset grouped by physical core (a CPU without sibling data is a core of its own)."""
    out, seen = [], set()
    for cpu in sorted(cpus):
        if cpu in seen:
            continue
        core = tuple(c for c in sorted(siblings.get(cpu) or [cpu]) if c in cpus) or (cpu,)
        seen.update(core)
        out.append(core)
    return tuple(out)


def _grid(cores: int, nireq_default: Settings) -> list[tuple[str, int | None, int | None, int | None]]:
    """(hint, streams, threads per stream, nireq) of the streams axis for this many cores."""
    out: list[tuple[str, int | None, int | None, int | None]] = [("latency", None, None, 1)]
    counts = sorted({s for s in (1, 2, 4, 8, 16, 32, 64) if s <= cores} | {cores})
    for s in counts:
        for nireq in (s, 2 * s):
            out.append(("throughput", s, cores // s, nireq))
    return out


def candidates(default: Settings, hw: Hardware, vary: tuple[str, ...] = AXES,
               concurrency: int | None = None) -> tuple[list[Settings], list[str]]:
    """The default first, then every distinct candidate of the axes in `vary` (at most
    MAX_CANDIDATES); and the notes on what was left out and why."""
    notes: list[str] = []
    ncores = len(hw.cores)
    out = [default]

    def add(s: Settings) -> None:
        if s not in out:
            out.append(s)

    if "streams" in vary:
        for hint, streams, tps, nireq in _grid(ncores, default):
            add(replace(default, hint=hint, streams=streams, threads_per_stream=tps, nireq=nireq))
    if "smt" in vary:
        if any(len(c) > 1 for c in hw.cores):
            add(replace(default, smt=not default.smt))
        else:
            notes.append("smt: the cpuset has no SMT siblings")
    if "split" in vary:
        if ncores < 2:
            notes.append("split: one core cannot be split into two instances")
        elif concurrency is not None and concurrency % 2 and default.per_node == 1:
            notes.append(f"split: concurrency {concurrency} does not divide between two instances")
        else:  # the other instance count (a default of two per node is tried as one as well)
            per_node = 1 if default.per_node == 2 else 2
            size = ncores // per_node
            add(replace(default, per_node=per_node, hint="latency", streams=None, threads_per_stream=None, nireq=1))
            if size > 1:
                add(replace(default, per_node=per_node, hint="throughput", streams=size, threads_per_stream=1,
                            nireq=2 * size))
    if "precision" in vary:
        if hw.bf16:
            add(replace(default, inference_precision="f32" if default.inference_precision != "f32" else None))
        else:
            notes.append("precision: the CPU has no BF16 (avx512_bf16 / amx_bf16): FP32 is the only precision")
    if "model" in vary:
        base = default.model[:-len(INT8_SUFFIX)] if default.model.endswith(INT8_SUFFIX) else default.model
        other = base if default.model.endswith(INT8_SUFFIX) else base + INT8_SUFFIX
        if other in hw.models:
            add(replace(default, model=other))
        else:
            notes.append(f"model: no {other} in the repository (hosttune model prepare --int8)")
    if len(out) > MAX_CANDIDATES:
        notes.append(f"{len(out) - MAX_CANDIDATES} candidate(s) beyond {MAX_CANDIDATES} left out")
        out = out[:MAX_CANDIDATES]
    return out, notes


def layout(s: Settings, cores: tuple[tuple[int, ...], ...]) -> list[dict[str, Any]]:
    """What `hosttune serve` runs for a candidate: per instance its CPUs, OpenVINO properties and
    nireq. Without SMT one CPU per core (the first sibling); a split halves the cores."""
    use = [tuple(c) if s.smt else c[:1] for c in cores]
    parts = [use] if s.per_node == 1 else [use[:len(use) // 2], use[len(use) // 2:]]
    out = []
    for part in parts:
        cpus = sorted(c for core in part for c in core)
        threads = len(cpus)
        if s.hint == "latency":
            config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
        elif s.streams:
            streams = max(1, min(s.streams, threads))
            config = {"NUM_STREAMS": streams,
                      "INFERENCE_NUM_THREADS": min(threads, streams * (s.threads_per_stream or threads // streams))}
        else:
            config = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": threads}
        config.update({"ENABLE_CPU_PINNING": True, "ENABLE_HYPER_THREADING": s.smt})
        if s.inference_precision:
            config["INFERENCE_PRECISION_HINT"] = s.inference_precision
        out.append({"cpus": cpus, "openvino": config, "nireq": s.nireq, "model": s.model})
    return out
