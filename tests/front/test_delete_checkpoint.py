"""Delete: a confirmation page, then POST removes the row and its files; another user's is a 404."""

from __future__ import annotations

from pathlib import Path

from training.models import Checkpoint

from .conftest import make_checkpoint, make_run


def test_get_confirms_post_deletes_with_files(browser, alice, data_dir):
    checkpoint = make_checkpoint(make_run(alice), "old")
    url = f"/runs/{checkpoint.training_run_id}/checkpoints/sampler_weights/old/delete/"
    assert "Delete checkpoint" in browser.get(url).content.decode()
    assert Checkpoint.objects.filter(pk=checkpoint.pk).exists()
    answer = browser.post(url)
    assert answer["Location"] == "/checkpoints/"
    assert not Checkpoint.objects.filter(pk=checkpoint.pk).exists() and not Path(checkpoint.directory).exists()


def test_another_users_checkpoint_is_404_even_when_public(browser, bob, data_dir):
    checkpoint = make_checkpoint(make_run(bob), "theirs", public=True)
    url = f"/runs/{checkpoint.training_run_id}/checkpoints/sampler_weights/theirs/delete/"
    assert browser.get(url).status_code == 404 and browser.post(url).status_code == 404
    assert Checkpoint.objects.filter(pk=checkpoint.pk).exists()
