"""Comparing runs: the runs list's checkboxes send the chosen runs to /runs/compare/, whose page
embeds every point of each run (its chart overlays them, one colour per run); another user's run is
a 404 there as on its own page."""

from __future__ import annotations

import json
import re

from .conftest import add_points, make_run


def _series(page: str) -> list[dict]:
    return json.loads(re.search(r'<script id="compare-series" type="application/json">(.*?)</script>', page, re.S)[1])


def test_the_runs_list_offers_to_compare_what_is_ticked(browser, alice):
    first, second = make_run(alice), make_run(alice)
    page = browser.get("/runs/").content.decode()
    assert 'action="/runs/compare/"' in page
    assert f'name="run" value="{first.id}"' in page and f'name="run" value="{second.id}"' in page


def test_each_runs_points_are_embedded_in_the_order_asked(browser, alice):
    first, second = make_run(alice), make_run(alice)
    first.session.display_name = "baseline"
    first.session.save(update_fields=["display_name"])
    add_points(first, 0, {"loss:per_token": 2.0})
    add_points(second, 0, {"loss:per_token": 3.0, "grad_norm:mean": 1.0})

    answer = browser.get(f"/runs/compare/?run={second.id}&run={first.id}&run={second.id}")

    assert answer.status_code == 200
    series = _series(answer.content.decode())
    assert [(s["model_id"], s["label"]) for s in series] == [(second.id, second.id), (first.id, "baseline")]
    assert [p[2:] for p in series[0]["points"]] == [["loss:per_token", 3.0], ["grad_norm:mean", 1.0]]
    assert [p[2:] for p in series[1]["points"]] == [["loss:per_token", 2.0]]
    assert 'id="compare-legend"' in answer.content.decode()


def test_none_chosen_says_how_and_anothers_run_is_404(browser, alice, bob):
    assert "Compare selected" in browser.get("/runs/compare/").content.decode()
    mine, theirs = make_run(alice), make_run(bob)
    assert browser.get(f"/runs/compare/?run={mine.id}&run={theirs.id}").status_code == 404
    assert browser.get("/runs/compare/?run=no-such-run").status_code == 404
