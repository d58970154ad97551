"""The search of `hosttune tune`, pure: no I/O, the measurement and the clock are passed in (the
tests race synthetic candidates whose best is known; hosttune/tune/measure.py measures real ones).

- **Interleaved rounds**: a round measures every candidate still in the race once, starting at a
  different one each round, so a drift of the machine's load spreads over all of them.
- **Racing**: from MIN_ROUNDS rounds on, a candidate significantly worse than the leader on the
  objective (`hosttune bench compare`'s test, hosttune.bench.stats.compare_values) leaves the race;
  under the throughput objective so does one whose p99 is significantly above the SLO.
- **Successive halving under the budget**: after 3, 6, 12 and 24 rounds, and whenever the time
  left cannot pay a round of everyone, the worse half by mean leaves, so the best few get the most
  rounds (the default never leaves: it is what the winner must beat).
- **Honest choice** (`decide`): the leader must be significantly better than the default, at
  ALPHA divided by the number of candidates it was chosen among (Bonferroni: picking the best of
  m equal candidates would otherwise "win" far more often than ALPHA), and by at least MIN_GAIN;
  otherwise the default is kept and the decision says "no significant difference".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hosttune.bench import stats

MIN_ROUNDS = 3
MAX_ROUNDS = 40
ALPHA = 0.05
MIN_GAIN = 0.02
HALVING_AT = (MIN_ROUNDS, 2 * MIN_ROUNDS, 4 * MIN_ROUNDS, 8 * MIN_ROUNDS)  # rounds after which half leave  # a winner must be at least 2 % better than the default: less is not worth a change


@dataclass
class Objective:
    name: str  # "throughput" | "latency"
    slo_p99_ms: float | None = None

    @property
    def higher_better(self) -> bool:
        return self.name == "throughput"

    def values(self, arm: Arm) -> list[float]:
        return arm.throughput if self.name == "throughput" else arm.p99

    def feasible(self, arm: Arm) -> bool:
        """Whether the arm's mean p99 meets the SLO (always, without one)."""
        return self.slo_p99_ms is None or not arm.p99 or stats.mean(arm.p99) <= self.slo_p99_ms

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "slo_p99_ms": self.slo_p99_ms}


@dataclass
class Arm:
    """One candidate in the race: its per-round throughput and p99."""
    index: int
    label: str
    default: bool = False
    throughput: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    alive: bool = True
    left: str | None = None  # why it left the race

    @property
    def rounds(self) -> int:
        return len(self.throughput)


# (arm, round) -> (throughput, p99 ms), or None when the arm could not be measured (the callback
# takes it out of the race: alive False, left = why)
Measure = Callable[[Arm, int], "tuple[float, float] | None"]


def _score(objective: Objective, arm: Arm) -> tuple[int, float]:
    """The rank of an arm, higher is better: those meeting the SLO by their mean objective value,
    then those over it by their p99 (the nearest to the SLO first), then those without rounds."""
    if not arm.rounds:
        return (0, 0.0)
    if not objective.feasible(arm):
        return (1, -stats.mean(arm.p99))
    m = stats.mean(objective.values(arm))
    return (2, m if objective.higher_better else -m)


def leader(arms: list[Arm], objective: Objective, among: list[Arm] | None = None) -> Arm | None:
    pool = [a for a in (among if among is not None else arms) if a.rounds]
    return max(pool, key=lambda a: (*_score(objective, a), -a.index)) if pool else None


def _race_out(arms: list[Arm], objective: Objective, alpha: float) -> None:
    alive = [a for a in arms if a.alive]
    best = leader(arms, objective, alive)
    for a in alive:
        if a.default or a is best or a.rounds < MIN_ROUNDS:
            continue
        half = ci95(a.p99)
        if objective.slo_p99_ms is not None and half is not None and stats.mean(a.p99) - half > objective.slo_p99_ms:
            a.alive, a.left = False, f"p99 {stats.mean(a.p99):.3f} ms above the SLO (95 % CI)"
            continue
        if best is None or best.rounds < MIN_ROUNDS or not objective.feasible(best):
            continue
        c = stats.compare_values(objective.values(best), objective.values(a), alpha, objective.higher_better)
        if c["significant"] and c["change"] == "worse":
            a.alive, a.left = False, f"raced out: significantly worse than {best.label} (p {c['p']:.3g})"


def _halve(arms: list[Arm], objective: Objective, why: str = "halved: the budget left no time for it") -> None:
    """The worse half (by mean) of the arms in the race leaves; the default and the leader stay."""
    alive = sorted((a for a in arms if a.alive and not a.default), key=lambda a: _score(objective, a), reverse=True)
    for a in alive[max(1, (len(alive) + 1) // 2):]:
        a.alive, a.left = False, why


def race(arms: list[Arm], measure: Measure, objective: Objective, budget_s: float, clock: Callable[[], float],
         start: float | None = None, alpha: float = ALPHA, max_rounds: int = MAX_ROUNDS,
         first_cost_s: float = 1.0, on_round: Callable[[int, float], None] | None = None,
         on_left: Callable[[list[Arm]], None] | None = None) -> dict[str, Any]:
    """Race the arms until the budget (seconds since `start`) is spent; returns what happened.
    A measurement is started only when the costs so far say it ends within the budget; `on_left`
    hears after each round which arms are out of the race (their servers can stop)."""
    start = clock() if start is None else start
    costs: list[float] = []
    rounds = 0

    def cost() -> float:
        """What the next measurement may cost: the dearest of the last few (a busy host's
        measurements vary; the budget is a promise)."""
        return max(costs[-5:]) if costs else first_cost_s

    def left_s() -> float:
        return budget_s - (clock() - start)

    stop = "max rounds"
    for r in range(max_rounds):
        alive = [a for a in arms if a.alive]
        if len(alive) < 2:
            stop = "one candidate left"
            break
        while len(alive) > 2 and left_s() < cost() * len(alive):
            _halve(arms, objective)
            alive = [a for a in arms if a.alive]
        if left_s() < cost() * len(alive):
            stop = "budget"
            break
        if on_round is not None:
            on_round(r, max(0.0, left_s()))
        order = alive[r % len(alive):] + alive[:r % len(alive)]
        for a in order:
            if left_s() < cost():  # this round cannot end in time: what it measured so far counts
                stop = "budget"
                break
            t0 = clock()
            got = measure(a, r)
            costs.append(clock() - t0)
            if got is None:
                a.alive = False
                continue
            a.throughput.append(got[0])
            a.p99.append(got[1])
        if stop == "budget":
            break
        rounds = r + 1
        if rounds >= MIN_ROUNDS:
            _race_out(arms, objective, alpha)
        if rounds in HALVING_AT:  # successive halving: the better half gets the rounds that follow
            _halve(arms, objective, f"halved after {rounds} rounds")
        if on_left is not None:
            on_left([a for a in arms if not a.alive])
    return {"rounds": rounds, "stopped": stop, "elapsed_s": clock() - start,
            "mean_measurement_s": stats.mean(costs) if costs else None}


def decide(arms: list[Arm], objective: Objective, alpha: float = ALPHA, min_gain: float = MIN_GAIN) -> dict[str, Any]:
    """The winner, or the default kept: see the module docstring."""
    default = next(a for a in arms if a.default)
    raced_out = [a for a in arms if a.left and a.left.startswith("raced out")]
    among = [a for a in arms if not a.default and a.rounds >= MIN_ROUNDS and a not in raced_out]
    # the best of the finalists (most rounds, most evidence); of all when none is left in the race
    finalists = [a for a in among if a.alive and objective.feasible(a)]
    best = leader(arms, objective, finalists or [a for a in among if objective.feasible(a)])
    out: dict[str, Any] = {"decision": "default-kept", "chosen": default.index, "best": None, "comparison": None,
                           "alpha": alpha, "compared_among": len(among), "min_gain": min_gain}
    if default.rounds < MIN_ROUNDS:
        out["reason"] = f"the budget allowed {default.rounds} round(s) of the default, {MIN_ROUNDS} are needed"
        return out
    if best is None:
        out["reason"] = ("no other candidate meets the SLO" if among else
                         f"no other candidate was measured {MIN_ROUNDS} times (budget)")
        return out
    out["best"] = best.index
    level = alpha / max(1, len(among))
    if objective.feasible(default):
        c = stats.compare_values(objective.values(default), objective.values(best), level, objective.higher_better)
        gain = (c["b"] - c["a"]) / c["a"] if c["a"] else 0.0
        gain = gain if objective.higher_better else -gain
    else:  # the default misses the SLO: the winner must have a significantly lower p99
        c = stats.compare_values(default.p99, best.p99, level, higher_better=False)
        gain = (c["a"] - c["b"]) / c["a"] if c["a"] else 0.0
    out["comparison"] = {**c, "alpha_corrected": level, "gain": gain}
    if c["change"] == "better" and gain >= min_gain:
        out.update(decision="tuned", chosen=best.index,
                   reason=f"{best.label}: {gain:+.1%} on {objective.name} against the default, p {c['p']:.3g} "
                          f"< {level:.3g} ({c['test']})")
    elif c["change"] == "better":
        out["reason"] = f"{best.label} is better by {gain:.1%} only (less than {min_gain:.0%}): the default is kept"
    else:
        out["reason"] = (f"no significant difference: the best, {best.label}, against the default p {c['p']:.3g} "
                         f"(needs < {level:.3g}, {c['test']}); the default is kept")
    return out


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (throughput, p99) no other point beats on both (more or equal
    throughput and less or equal p99, one of them strictly)."""
    front = []
    for i, (t, p) in enumerate(points):
        if not any((t2 >= t and p2 <= p) and (t2 > t or p2 < p) for j, (t2, p2) in enumerate(points) if j != i):
            front.append(i)
    return front


def ci95(values: list[float]) -> float | None:
    """Half-width of the 95 % confidence interval of the mean (None for fewer than two values)."""
    if len(values) < 2:
        return None
    return stats.t_quantile(0.975, len(values) - 1) * stats.stdev(values) / math.sqrt(len(values))
