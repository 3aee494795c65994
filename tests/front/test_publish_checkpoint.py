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


def test_the_public_page_lists_what_others_published(browser, alice, bob, data_dir):
    theirs = make_run(bob)
    make_checkpoint(theirs, "shared", public=True)
    make_checkpoint(theirs, "private")
    make_checkpoint(theirs, "state", kind="training", public=True)  # not for download or sampling
    make_checkpoint(make_run(alice), "mine", public=True)  # on alice's own page already
    page = browser.get("/checkpoints/public/").content.decode()
    assert f"tinker://{theirs.id}/sampler_weights/shared" in page and "<td>bob</td>" in page
    assert f"/runs/{theirs.id}/checkpoints/sampler_weights/shared/playground/" in page
    assert "private" not in page and "weights/state" not in page and "sampler_weights/mine" not in page
    assert browser.get(f"/runs/{theirs.id}/checkpoints/sampler_weights/shared/playground/").status_code == 200
