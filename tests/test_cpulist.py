import pytest
from hypothesis import given
from hypothesis import strategies as st

from hosttune import cpulist
from hosttune.errors import HosttuneError


@pytest.mark.parametrize("text,ids", [
    ("", []), ("0", [0]), ("0-3", [0, 1, 2, 3]), ("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]),
    (" 1,0 \n", [0, 1]), ("0-7:2", [0, 2, 4, 6]), ("5,5,5", [5]), ("1024-1026", [1024, 1025, 1026]),
])
def test_parse(text, ids):
    assert cpulist.parse(text) == ids


@pytest.mark.parametrize("bad", ["a", "3-1", "-1", "1-", "0-3:0", "1,,2", "0x3"])
def test_parse_rejects_with_field_name(bad):
    with pytest.raises(HosttuneError) as info:
        cpulist.parse(bad, where="housekeeping.cpus")
    assert "housekeeping.cpus" in str(info.value) and repr(bad.strip()) in str(info.value)


def test_format():
    assert cpulist.format([3, 0, 1, 2, 8, 10, 11]) == "0-3,8,10-11"
    assert cpulist.format([]) == ""


@pytest.mark.parametrize("mask,ids", [("3", [0, 1]), ("00000001,00000000", [32]), ("ff", list(range(8))), ("0", [])])
def test_mask(mask, ids):
    assert cpulist.parse_mask(mask) == ids


def test_format_mask_pads_like_the_kernel():
    assert cpulist.format_mask([0], nr_cpus=64) == "00000000,00000001"
    assert cpulist.format_mask([33]) == "00000002,00000000"


@given(st.sets(st.integers(min_value=0, max_value=4096)))
def test_round_trip(ids):
    assert cpulist.parse(cpulist.format(ids)) == sorted(ids)


@given(st.sets(st.integers(min_value=0, max_value=300)))
def test_mask_round_trip(ids):
    assert cpulist.parse_mask(cpulist.format_mask(ids)) == sorted(ids)


@given(st.sets(st.integers(min_value=0, max_value=300), min_size=1))
def test_format_is_minimal(ids):
    text = cpulist.format(ids)
    # no two ranges could be merged: every gap between parts is at least 2
    parts = [cpulist.parse(p) for p in text.split(",")]
    for a, b in zip(parts, parts[1:]):
        assert b[0] - a[-1] >= 2
