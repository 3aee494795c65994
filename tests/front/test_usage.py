"""The usage page: the signed-in user's counts only, totals, per day (chart data and table), per run
and per key; a period choice; an empty state that says how to start."""

from __future__ import annotations

import json
import re
from datetime import timedelta

from django.utils import timezone

from accounts.models import ApiKey
from accounts.services import issue_api_key
from training.models import UsageRecord

from .conftest import make_run


def _record(user, run=None, key=None, days_ago=0, **counts):
    return UsageRecord.objects.create(
        owner=user,
        training_run=run,
        api_key=key,
        base_model="tiny-llama",
        day=timezone.now().date() - timedelta(days=days_ago),
        **counts,
    )


def _key(user, name):
    issue_api_key(user, name)
    return ApiKey.objects.get(user=user, name=name)


def _total(page: str, name: str) -> int:
    return int(re.search(rf'data-count="{name}">(\d+)<', page).group(1))


def test_empty_state_explains_how_to_start(browser):
    page = browser.get("/usage/").content.decode()
    assert 'id="no-usage"' in page and "/keys/" in page and "usage_chart.js" not in page


def test_totals_per_day_per_run_and_per_key(browser, alice):
    run, key = make_run(alice), _key(alice, "laptop")
    _record(alice, run, key, tokens_trained=40, optimizer_steps=2)
    _record(alice, run, key, days_ago=3, tokens_trained=2, tokens_forward=5)
    _record(alice, None, None, tokens_sampled=9)  # the playground: no run, no key

    page = browser.get("/usage/").content.decode()

    assert [_total(page, n) for n in ("tokens_trained", "tokens_forward", "tokens_sampled", "optimizer_steps")] == [
        42,
        5,
        9,
        2,
    ]
    chart = json.loads(re.search(r'id="usage-series" type="application/json">(.*?)</script>', page).group(1))
    assert len(chart["days"]) == 30 and chart["days"][-1] == timezone.now().date().isoformat()
    assert chart["series"]["tokens_trained"][-1] == 40 and chart["series"]["tokens_trained"][-4] == 2
    assert sum(chart["series"]["tokens_sampled"]) == 9
    assert f'href="/runs/{run.id}/"' in page and f"{key.prefix}…" in page and "laptop" in page
    assert "Base model and shared checkpoints" in page and "Dashboard" in page
    assert page.count("<tr><td><time") == 2  # the table lists only the two days with usage


def test_period_choice(browser, alice):
    _record(alice, tokens_trained=3, days_ago=20)
    assert _total(browser.get("/usage/?days=7").content.decode(), "tokens_trained") == 0
    assert _total(browser.get("/usage/?days=30").content.decode(), "tokens_trained") == 3
    assert "Nothing in this period" in browser.get("/usage/?days=7").content.decode()
    assert _total(browser.get("/usage/?days=bogus").content.decode(), "tokens_trained") == 3  # back to 30


def test_shows_own_usage_only(browser, alice, bob):
    theirs = make_run(bob)
    _record(bob, theirs, _key(bob, "bobs-key"), tokens_trained=1000)
    _record(alice, tokens_trained=1)
    page = browser.get("/usage/").content.decode()
    assert _total(page, "tokens_trained") == 1 and theirs.id not in page and "bobs-key" not in page


def test_anonymous_is_sent_to_login(client, db):
    assert client.get("/usage/")["Location"] == "/accounts/login/?next=/usage/"


def test_runs_are_paged_by_50_keeping_the_period(browser, alice):
    runs = [make_run(alice) for _ in range(52)]
    for tokens, run in enumerate(runs, start=1):
        _record(alice, run, tokens_trained=tokens)  # most tokens first: runs[-1] leads
    first = browser.get("/usage/?days=7").content.decode()
    assert "Page 1 of 2" in first and "days=7&amp;page=2" in first
    assert runs[-1].id in first and runs[0].id not in first
    second = browser.get("/usage/?days=7&page=2").content.decode()
    assert runs[0].id in second and runs[1].id in second and runs[-1].id not in second
    assert _total(second, "tokens_trained") == sum(range(1, 53))  # the totals are of all runs
