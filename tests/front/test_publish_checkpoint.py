"""Publish and unpublish: POST only; another user's is a 404."""

from __future__ import annotations

from .conftest import make_checkpoint, make_run


def _url(checkpoint) -> str:
    return f"/runs/{checkpoint.training_run_id}/checkpoints/sampler_weights/{checkpoint.name}/publish/"


def test_publish_then_unpublish(browser, alice, data_dir):
    checkpoint = make_checkpoint(make_run(alice))
    answer = browser.post(_url(checkpoint), {"public": "true"}, follow=True)
    checkpoint.refresh_from_db()
    assert checkpoint.public and "is public" in answer.content.decode()
    browser.post(_url(checkpoint), {"public": "false"})
    checkpoint.refresh_from_db()
    assert not checkpoint.public


def test_get_is_refused(browser, alice, data_dir):
    assert browser.get(_url(make_checkpoint(make_run(alice)))).status_code == 405


def test_another_users_checkpoint_is_404(browser, bob, data_dir):
    checkpoint = make_checkpoint(make_run(bob))
    assert browser.post(_url(checkpoint), {"public": "true"}).status_code == 404
    checkpoint.refresh_from_db()
    assert not checkpoint.public
