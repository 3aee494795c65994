"""The checkpoints page: own unexpired checkpoints with type, size, dates and public flag; actions
for each; an empty state; pages of 50."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from .conftest import make_checkpoint, make_run


def test_empty_state_says_how_to_save_one(browser):
    page = browser.get("/checkpoints/").content.decode()
    assert "No checkpoints yet" in page and "save_weights_for_sampler" in page


def test_lists_own_unexpired_checkpoints(browser, alice, bob, data_dir):
    run = make_run(alice)
    make_checkpoint(run, "sampler-one", size_bytes=2048, public=True)
    make_checkpoint(run, "state-one", kind="training", expires_at=timezone.now() + timedelta(days=2))
    make_checkpoint(run, "gone", expires_at=timezone.now() - timedelta(seconds=1))
    make_checkpoint(make_run(bob), "bobs", public=True)
    page = browser.get("/checkpoints/").content.decode()
    assert f"tinker://{run.id}/sampler_weights/sampler-one" in page and "2.0\xa0KB" in page
    assert f"tinker://{run.id}/weights/state-one" in page
    assert "gone" not in page and "bobs" not in page
    assert page.count(">Download<") == 1  # training state is not offered for download
    assert ">Unpublish<" in page and ">Publish<" in page


def test_pages_of_50(browser, alice, data_dir):
    run = make_run(alice)
    for i in range(51):
        make_checkpoint(run, f"c{i}", files=False)
    first = browser.get("/checkpoints/").content.decode()
    assert "Page 1 of 2" in first and "/sampler_weights/c0<" not in first
    assert "/sampler_weights/c0<" in browser.get("/checkpoints/?page=2").content.decode()


def test_anonymous_is_sent_to_login(client, db):
    assert client.get("/checkpoints/").status_code == 302
