"""README's promise: `pytest -m "not slow"` skips the sweeps, clusters and servers."""

from __future__ import annotations

import pytest

from .helpers import SLOW_FIXTURES


def test_every_test_that_starts_a_sweep_ray_or_a_server_is_marked_slow(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    if not request.config.getoption("markexpr"):  # `-m "not slow"` leaves none of them, by design
        assert any(SLOW_FIXTURES & set(getattr(i, "fixturenames", ())) for i in items) or len(items) < 50
    unmarked = [i.nodeid for i in items
                if SLOW_FIXTURES & set(getattr(i, "fixturenames", ())) and i.get_closest_marker("slow") is None]
    assert unmarked == []
