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


@pytest.mark.parametrize("bad", ["0-100000000000", "65536", "0-65536", "1" * 5000, "0-3,99999999999999999999"])
def test_parse_bounds_cpu_ids(bad):
    # issue 13 case 2: "0-100000000000" was a MemoryError; now one error naming the field and the bound
    with pytest.raises(HosttuneError) as info:
        cpulist.parse(bad, where="housekeeping.cpus")
    message = str(info.value)
    assert message.startswith("housekeeping.cpus: invalid cpulist") and "65535" in message
    assert len(message) < 200  # the value is cut, never echoed whole


def test_parse_max_cpu_argument():
    assert cpulist.parse("0-7", max_cpu=7) == list(range(8))
    with pytest.raises(HosttuneError, match="up to 7"):
        cpulist.parse("0-8", max_cpu=7)
    assert cpulist.parse(f"{cpulist.MAX_CPUS - 1}") == [cpulist.MAX_CPUS - 1]


@pytest.mark.parametrize("bad", ["٣", "1_0", "+1", "0-٣", " 1 0", "0-3:٢"])
def test_parse_takes_ascii_digits_only(bad):
    # issue 13 case 6: Python's int() reads Unicode digits and underscores; a cpulist does not
    with pytest.raises(HosttuneError):
        cpulist.parse(bad)


@pytest.mark.parametrize("bad", ["0x3", "g", "ff,,00", "f" * (cpulist.MAX_CPUS // 4 + 1)])
def test_parse_mask_rejects(bad):
    with pytest.raises(HosttuneError) as info:
        cpulist.parse_mask(bad, where="/proc/irq/default_smp_affinity")
    assert len(str(info.value)) < 200


def test_parse_mask_accepts_leading_zero_words():
    assert cpulist.parse_mask("0" * 20000 + ",00000003") == [0, 1]


# what the mutation run (scripts/mutation hosttune/cpulist.py=tests/test_cpulist.py) found untested
def test_stride_and_the_upper_bound_exactly():
    assert cpulist.parse("0-8:2") == [0, 2, 4, 6, 8] and cpulist.parse("1-9:4") == [1, 5, 9]
    assert cpulist.parse("7", max_cpu=7) == [7]
    with pytest.raises(HosttuneError, match="CPU ids go up to 7"):
        cpulist.parse("8", max_cpu=7)
    assert cpulist.parse(str(cpulist.MAX_CPUS - 1)) == [cpulist.MAX_CPUS - 1]
    with pytest.raises(HosttuneError):
        cpulist.parse(str(cpulist.MAX_CPUS))


def test_mask_errors_name_the_file_and_the_length_limit_is_exact():
    with pytest.raises(HosttuneError) as info:
        cpulist.parse_mask("zz", where="/proc/irq/default_smp_affinity")
    assert "/proc/irq/default_smp_affinity" in str(info.value)
    top = "8" + "0" * (cpulist.MAX_CPUS // 4 - 1)  # highest bit = CPU MAX_CPUS - 1: accepted
    assert cpulist.parse_mask(top) == [cpulist.MAX_CPUS - 1]
    with pytest.raises(HosttuneError, match=f"more than {cpulist.MAX_CPUS} CPUs"):
        cpulist.parse_mask("1" + "0" * (cpulist.MAX_CPUS // 4))


def test_error_messages_cut_long_values_to_80_characters():
    with pytest.raises(HosttuneError) as info:
        cpulist.parse("x" * 10_000, where="isolation.cpus")
    shown = str(info.value)
    assert "x" * 77 + "..." in shown and "x" * 78 not in shown and len(shown) < 250
