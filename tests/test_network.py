import datetime as dt

import pytest

from tio.errors import NetworkError
from tio.network import describe_network, select_pairs

D = [dt.date(2021, 1, 1) + dt.timedelta(days=10 * k) for k in range(8)]


def test_each_date_with_next_four():
    pairs = select_pairs(D, max_next=4)
    assert len(pairs) == 4 * 4 + 3 + 2 + 1
    assert all(0 < p.j - p.i <= 4 for p in pairs)
    assert pairs[0].name == "20210101_20210111"
    assert describe_network(D, pairs).connected


def test_baseline_limits_and_disconnection():
    pairs = select_pairs(D, max_next=4, min_days=20, max_days=20)
    assert {p.days for p in pairs} == {20}
    report = describe_network(D, pairs)
    # only pairs two steps apart: even and odd dates never meet
    assert not report.connected
    assert len(report.components) == 2
    assert report.components[0] == (0, 2, 4, 6)
    assert "component" in "\n".join(report.lines())


def test_errors():
    with pytest.raises(NetworkError):
        select_pairs(D[:1])
    with pytest.raises(NetworkError):
        select_pairs([D[1], D[0]])
    with pytest.raises(NetworkError, match="no pair"):
        select_pairs(D, max_next=1, min_days=100)
