"""hosttune tune's pure parts: the race over synthetic candidates whose best is known, the honest
choice against the default, the budget, the candidates and their serve layout, the overlay."""

from __future__ import annotations

import random

import pytest

from hosttune import numbers
from hosttune.errors import HosttuneError
from hosttune.tune import search
from hosttune.tune.settings import Hardware, Settings, candidates, cores_of, from_instance, layout


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def synthetic(means, clock, cost=1.0, noise=0.02, seed=1, p99=None):
    """measure(arm, round): the arm's true throughput (and p99) with relative Gaussian noise; each
    measurement costs `cost` seconds of the fake clock."""
    rng = random.Random(seed)

    def measure(arm, _round):
        clock.now += cost
        thr = means[arm.index] * (1 + rng.gauss(0, noise))
        lat = (p99[arm.index] if p99 else 1000.0 / means[arm.index]) * (1 + rng.gauss(0, noise))
        return thr, lat

    return measure


def arms_for(n):
    return [search.Arm(index=i, label=f"c{i}", default=(i == 0)) for i in range(n)]


def test_race_finds_the_known_best_and_races_out_the_worse():
    clock = FakeClock()
    means = [100, 95, 130, 100, 60, 102]
    arms = arms_for(len(means))
    obj = search.Objective("throughput")
    info = search.race(arms, synthetic(means, clock), obj, budget_s=120, clock=clock)
    d = search.decide(arms, obj)
    assert d["decision"] == "tuned" and d["chosen"] == 2, d
    assert d["comparison"]["gain"] > 0.2
    assert not arms[4].alive and arms[4].left.startswith("raced out")  # far worse: out early
    assert arms[4].rounds < arms[2].rounds
    assert info["elapsed_s"] <= 120


@pytest.mark.parametrize("seed", range(12))
def test_all_equal_keeps_the_default_and_says_so(seed):
    clock = FakeClock()
    arms = arms_for(8)
    obj = search.Objective("throughput")
    search.race(arms, synthetic([100] * 8, clock, seed=seed), obj, budget_s=200, clock=clock)
    d = search.decide(arms, obj)
    assert d["decision"] == "default-kept" and d["chosen"] == 0, d
    assert "no significant difference" in d["reason"] or "only" in d["reason"], d["reason"]


def test_a_small_gain_is_not_worth_a_change():
    clock = FakeClock()
    arms = arms_for(2)
    obj = search.Objective("throughput")
    search.race(arms, synthetic([100, 101], clock, noise=0.001), obj, budget_s=60, clock=clock)
    d = search.decide(arms, obj)
    assert d["comparison"]["change"] == "better" and d["decision"] == "default-kept"
    assert "less than 2%" in d["reason"]


@pytest.mark.parametrize("budget, cost", [(10, 1.0), (37, 1.5), (90, 0.7), (15, 4.0)])
def test_the_budget_holds(budget, cost):
    clock = FakeClock()
    arms = arms_for(10)
    obj = search.Objective("latency")
    info = search.race(arms, synthetic([100 + i for i in range(10)], clock, cost=cost), obj, budget_s=budget,
                       clock=clock, first_cost_s=cost)
    assert clock.now <= budget
    assert info["stopped"] in ("budget", "one candidate left", "max rounds")
    # halving made room: the default and at least one other got rounds when the budget allowed two per round
    if budget >= 2 * cost * search.MIN_ROUNDS:
        assert arms[0].rounds >= 1


def test_halving_keeps_the_default_and_the_leader():
    clock = FakeClock()
    means = [100, 90, 80, 120, 70, 85, 95, 60]
    arms = arms_for(len(means))
    obj = search.Objective("throughput")
    search.race(arms, synthetic(means, clock, noise=0.05), obj, budget_s=20, clock=clock)
    assert arms[0].alive  # never leaves
    assert any(a.left and a.left.startswith("halved") for a in arms)
    assert arms[3].alive and search.decide(arms, obj)["best"] == 3


def test_latency_objective_and_the_slo():
    clock = FakeClock()
    # candidate 1: most throughput but p99 above the 10 ms SLO; candidate 2: within it, better than the default
    means, p99 = [100, 200, 150], [8.0, 14.0, 7.0]
    arms = arms_for(3)
    obj = search.Objective("throughput", slo_p99_ms=10.0)
    search.race(arms, synthetic(means, clock, p99=p99), obj, budget_s=60, clock=clock)
    d = search.decide(arms, obj)
    assert d["chosen"] == 2 and d["decision"] == "tuned", d
    assert not arms[1].alive and "SLO" in arms[1].left
    clock = FakeClock()
    arms = arms_for(3)
    obj = search.Objective("latency")
    search.race(arms, synthetic(means, clock, p99=p99), obj, budget_s=60, clock=clock)
    assert search.decide(arms, obj)["chosen"] == 2  # lowest p99


def test_a_default_over_the_slo_is_replaced_by_one_within():
    clock = FakeClock()
    arms = arms_for(2)
    obj = search.Objective("throughput", slo_p99_ms=10.0)
    search.race(arms, synthetic([100, 90], clock, p99=[12.0, 6.0]), obj, budget_s=40, clock=clock)
    d = search.decide(arms, obj)
    assert d["decision"] == "tuned" and d["chosen"] == 1


def test_too_small_a_budget_keeps_the_default():
    clock = FakeClock()
    arms = arms_for(4)
    obj = search.Objective("throughput")
    search.race(arms, synthetic([100, 200, 300, 400], clock, cost=5.0), obj, budget_s=12, clock=clock, first_cost_s=5.0)
    d = search.decide(arms, obj)
    assert d["decision"] == "default-kept" and "budget" in d["reason"]


def test_pareto_front_and_ci():
    pts = [(100, 5.0), (120, 6.0), (90, 4.0), (80, 7.0), (120, 5.5)]
    assert search.pareto(pts) == [0, 2, 4]
    assert search.ci95([1.0]) is None
    assert search.ci95([1.0, 1.0, 1.0]) == 0.0
    assert 0 < search.ci95([1.0, 2.0, 3.0]) < 3


# -- candidates ---------------------------------------------------------------------------------
LAT2 = {"name": "node0", "model": "sample", "cpus": [0, 1], "ovms": {"nireq": 1},
        "openvino": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2, "ENABLE_CPU_PINNING": True,
                     "ENABLE_HYPER_THREADING": False}}


def test_candidates_on_two_cores():
    default = from_instance(LAT2)
    assert default == Settings("latency", None, None, 1, False, 1, None, "sample")
    hw = Hardware(cores_of([0, 1], {}), bf16=True, models=frozenset({"sample", "sample-int8"}))
    cands, notes = candidates(default, hw, concurrency=2)
    assert cands[0] == default and len(set(cands)) == len(cands)
    labels = [c.label() for c in cands]
    assert "throughput 2x1 nireq 4 sample" in labels and "latency nireq 1 2 per node sample" in labels
    assert "latency nireq 1 f32 sample" in labels and "latency nireq 1 sample-int8" in labels
    assert notes == ["smt: the cpuset has no SMT siblings"]
    _, notes = candidates(default, hw, concurrency=3, vary=("split",))
    assert "does not divide" in notes[0]
    only, _ = candidates(default, hw, vary=("streams",))
    assert all(c.model == "sample" and c.per_node == 1 for c in only) and len(only) == 5


def test_layout_smt_split_precision():
    cores = cores_of([0, 1, 4, 5], {0: [0, 4], 4: [0, 4], 1: [1, 5], 5: [1, 5]})
    assert cores == ((0, 4), (1, 5))
    s = Settings("throughput", 2, 1, 4, False, 1, "f32", "m")
    (inst,) = layout(s, cores)
    assert inst["cpus"] == [0, 1] and inst["nireq"] == 4
    assert inst["openvino"] == {"NUM_STREAMS": 2, "INFERENCE_NUM_THREADS": 2, "ENABLE_CPU_PINNING": True,
                                "ENABLE_HYPER_THREADING": False, "INFERENCE_PRECISION_HINT": "f32"}
    a, b = layout(Settings("latency", None, None, 1, True, 2, None, "m"), cores)
    assert a["cpus"] == [0, 4] and b["cpus"] == [1, 5]
    assert a["openvino"]["INFERENCE_NUM_THREADS"] == 2 and a["openvino"]["ENABLE_HYPER_THREADING"] is True


def test_durations_are_ascii_with_a_unit():
    assert numbers.parse_duration("90s", "--budget") == 90
    assert numbers.parse_duration("15m", "--budget") == 900
    assert numbers.parse_duration("1.5h", "--budget") == 5400
    assert numbers.parse_duration("40", "--budget") == 40
    for bad in ("٣s", "1d", "-5s", "5 s", "", "s", "1e3"):
        with pytest.raises(HosttuneError, match="--budget"):
            numbers.parse_duration(bad, "--budget")


def test_a_split_default_is_tried_whole():
    default = Settings("latency", None, None, 1, False, 2, None, "sample")
    hw = Hardware(cores_of([0, 1, 2, 3], {}), bf16=False, models=frozenset({"sample"}))
    cands, notes = candidates(default, hw, vary=("split",), concurrency=3)
    assert [c.label() for c in cands[1:]] == ["latency nireq 1 sample", "throughput 4x1 nireq 8 sample"]
    assert notes == []
    a, b = layout(default, hw.cores)
    assert a["cpus"] == [0, 1] and b["cpus"] == [2, 3]


def test_over_the_slo_the_nearest_survives_halving():
    arms = arms_for(3)
    for a, p99 in zip(arms, (5.0, 30.0, 12.0)):
        a.throughput, a.p99 = [100.0] * 3, [p99] * 3
    obj = search.Objective("throughput", slo_p99_ms=10.0)
    search._halve(arms, obj)
    assert [a.alive for a in arms] == [True, False, True]


def test_a_candidate_that_cannot_be_measured_leaves_the_race_and_the_rest_goes_on():
    clock = FakeClock()
    arms = arms_for(3)
    inner = synthetic([100, 150, 130], clock)

    def measure(arm, r):
        if arm.index == 1 and r == 1:  # its server died in the second round
            arm.left = "failed: a round completed no inference"
            return None
        return inner(arm, r)

    obj = search.Objective("throughput")
    search.race(arms, measure, obj, budget_s=40, clock=clock)
    assert not arms[1].alive and arms[1].rounds == 1 and arms[1].left.startswith("failed")
    d = search.decide(arms, obj)
    assert d["decision"] == "tuned" and d["chosen"] == 2
