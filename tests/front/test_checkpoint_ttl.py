"""Changing a checkpoint's expiry: one of the offered durations from now, or never; POST only;
another user's is a 404."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from .conftest import make_checkpoint, make_run


def _url(checkpoint) -> str:
    return f"/runs/{checkpoint.training_run_id}/checkpoints/sampler_weights/{checkpoint.name}/ttl/"


def test_set_and_clear_expiry(browser, alice, data_dir):
    checkpoint = make_checkpoint(make_run(alice))
    assert browser.post(_url(checkpoint), {"ttl_seconds": str(7 * 86400)})["Location"] == "/checkpoints/"
    checkpoint.refresh_from_db()
    assert abs(checkpoint.expires_at - (timezone.now() + timedelta(days=7))) < timedelta(minutes=1)
    browser.post(_url(checkpoint), {"ttl_seconds": ""})
    checkpoint.refresh_from_db()
    assert checkpoint.expires_at is None


def test_an_unoffered_duration_is_refused(browser, alice, data_dir):
    checkpoint = make_checkpoint(make_run(alice))
    answer = browser.post(_url(checkpoint), {"ttl_seconds": "5"}, follow=True)
    assert "Choose one of the listed durations" in answer.content.decode()
    checkpoint.refresh_from_db()
    assert checkpoint.expires_at is None


def test_get_is_refused(browser, alice, data_dir):
    assert browser.get(_url(make_checkpoint(make_run(alice)))).status_code == 405


def test_another_users_checkpoint_is_404(browser, bob, data_dir):
    checkpoint = make_checkpoint(make_run(bob))
    assert browser.post(_url(checkpoint), {"ttl_seconds": "86400"}).status_code == 404
    checkpoint.refresh_from_db()
    assert checkpoint.expires_at is None


def test_the_selector_shows_the_current_expiry(browser, alice, data_dir):
    checkpoint = make_checkpoint(make_run(alice))
    page = browser.get("/checkpoints/").content.decode()
    assert '<option value="" selected>Keep forever</option>' in page
    browser.post(_url(checkpoint), {"ttl_seconds": "86400"})
    page = browser.get("/checkpoints/").content.decode()
    assert '<option value="86400" selected>1 day</option>' in page and page.count(" selected>") == 1
    browser.post(_url(checkpoint), {"ttl_seconds": str(30 * 86400)})
    assert f'<option value="{30 * 86400}" selected>30 days</option>' in browser.get("/checkpoints/").content.decode()
