"""The runs list: own runs only, status and last loss, filters, sort, pages, empty states."""

from __future__ import annotations

import re

from .conftest import add_points, make_operation, make_run


def _rows(page) -> list[str]:
    """The run ids of the table's rows, in order."""
    return re.findall(r'<a href="/runs/([^/]+)/">', page.content.decode())


def test_empty_state_explains_how_to_start(browser):
    page = browser.get("/runs/").content.decode()
    assert "No training runs yet" in page and "/keys/" in page and "create_lora_training_client" in page


def test_shows_own_runs_only(browser, alice, bob):
    mine = make_run(alice)
    make_run(bob)
    assert _rows(browser.get("/runs/")) == [mine.id]


def test_columns_status_and_last_loss(browser, alice):
    run = make_run(alice, rank=16, step=7)
    add_points(run, 6, {"loss:sum": 25.0, "loss:per_token": 2.5})
    add_points(run, 7, {"loss:per_token": 1.25, "loss:sum": 12.5, "grad_norm:mean": 3.0})
    make_operation(run, status="queued")
    page = browser.get("/runs/").content.decode()
    assert "status-queued" in page and ">16<" in page and ">7<" in page and ">1.25<" in page  # per token, not the sum


def test_status_filter(browser, alice):
    running, queued, idle = make_run(alice), make_run(alice), make_run(alice)
    failed, finished = make_run(alice), make_run(alice, finished=True)
    make_operation(running, status="running", seq_id=1)
    make_operation(running, status="queued", seq_id=2)
    make_operation(queued, status="queued")
    make_operation(idle, status="done")
    make_operation(failed, status="done", seq_id=1)
    make_operation(failed, status="failed", seq_id=2)
    make_operation(finished, status="done")
    assert _rows(browser.get("/runs/?status=running")) == [running.id]
    assert _rows(browser.get("/runs/?status=queued")) == [queued.id]
    assert _rows(browser.get("/runs/?status=idle")) == [idle.id]
    assert _rows(browser.get("/runs/?status=failed")) == [failed.id]
    assert _rows(browser.get("/runs/?status=finished")) == [finished.id]


def test_a_failure_followed_by_success_is_not_failed(browser, alice):
    run = make_run(alice)
    make_operation(run, status="failed", seq_id=1)
    make_operation(run, status="done", seq_id=2)
    assert _rows(browser.get("/runs/?status=idle")) == [run.id]


def test_base_model_filter_offers_own_models(browser, alice, bob):
    tiny, other = make_run(alice, base_model="tiny-llama"), make_run(alice, base_model="tiny-qwen")
    make_run(bob, base_model="secret-model")
    page = browser.get("/runs/?base_model=tiny-qwen")
    assert _rows(page) == [other.id] and tiny.id not in _rows(page)
    assert "secret-model" not in page.content.decode()


def test_sorts(browser, alice):
    few, many = make_run(alice, step=1), make_run(alice, step=9)
    add_points(few, 1, {"loss:sum": 50.0, "loss:per_token": 0.5})  # a bigger batch's sum is bigger
    add_points(many, 9, {"loss:sum": 3.0, "loss:per_token": 3.0})
    unscored = make_run(alice)
    assert _rows(browser.get("/runs/")) == [unscored.id, many.id, few.id]  # newest first
    assert _rows(browser.get("/runs/?sort=-step")) == [many.id, few.id, unscored.id]
    assert _rows(browser.get("/runs/?sort=last_loss")) == [few.id, many.id, unscored.id]


def test_no_match_says_so(browser, alice):
    make_run(alice)
    page = browser.get("/runs/?status=finished").content.decode()
    assert "No runs match these filters" in page


def test_bad_filter_values_fall_back_to_all(browser, alice):
    run = make_run(alice)
    assert _rows(browser.get("/runs/?status=bogus&sort=password")) == [run.id]


def test_pages_of_25_keep_the_filter(browser, alice):
    runs = [make_run(alice) for _ in range(30)]
    first = browser.get("/runs/?sort=created_at")
    assert _rows(first) == [r.id for r in runs[:25]]
    assert "sort=created_at&amp;page=2" in first.content.decode() and "Page 1 of 2" in first.content.decode()
    assert _rows(browser.get("/runs/?sort=created_at&page=2")) == [r.id for r in runs[25:]]
    assert _rows(browser.get("/runs/?sort=created_at&page=99")) == [r.id for r in runs[25:]]  # last page


def test_anonymous_is_sent_to_login(client, db):
    assert client.get("/runs/")["Location"] == "/accounts/login/?next=/runs/"
