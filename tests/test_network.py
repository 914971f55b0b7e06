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


def test_seasonal_pairs_join_years_and_obey_min_days():
    # three years, one date a month: next-2 pairs within 70 days, plus same-season pairs
    dates = [dt.date(2019 + k // 12, 1 + k % 12, 10) for k in range(36)]
    plain = select_pairs(dates, max_next=2, max_days=70)
    seasonal = select_pairs(dates, max_next=2, max_days=70, seasonal_days=15)
    extra = set(seasonal) - set(plain)
    assert extra and all(p.days >= 300 for p in extra)
    assert all(abs(p.date1.month - p.date2.month) in (0, 11) for p in extra)
    # 2019-01-10 with 2020-01-10 and 2021-01-10
    assert {p.name for p in extra if p.i == 0} == {"20190110_20200110", "20190110_20210110"}
    assert all(
        p.days >= 400 for p in select_pairs(dates, max_next=1, min_days=400, seasonal_days=15)
    )


def test_cap_of_pairs_per_date_keeps_short_baselines_first():
    pairs = select_pairs(D, max_next=4, max_per_date=3)
    report = describe_network(D, pairs)
    assert max(report.pairs_per_date) <= 3
    assert report.connected  # consecutive dates come first
    assert all(any(p.i == k and p.j == k + 1 for p in pairs) for k in range(len(D) - 1))


def test_disconnected_report_names_dates_tied_only_by_smoothing(tmp_path):
    from tio.network import plot_network

    dates = D[:4] + [D[3] + dt.timedelta(days=200 + 10 * k) for k in range(3)]
    pairs = select_pairs(dates, max_next=4, max_days=60)
    report = describe_network(dates, pairs)
    assert not report.connected
    assert report.components == ((0, 1, 2, 3), (4, 5, 6))
    assert report.smoothing_only == (4, 5, 6)
    text = "\n".join(report.lines())
    assert "tied only by smoothing" in text and "disconnected" in report.warning()
    assert describe_network(D, select_pairs(D)).warning() is None
    png = plot_network(report, tmp_path / "network.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
