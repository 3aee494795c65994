"""The sl recipe on the built-in mixture-of-experts model (`--base-model tiny-qwen3-moe`): expert
LoRA trains end to end through the SDK and the server, and the held-out NLL falls."""

from __future__ import annotations

import pytest

from cookbook.recipes import sl
from tests.conftest import embedded_server


@pytest.mark.slow
def test_sl_on_tiny_qwen3_moe_lowers_held_out_nll(tmp_path):
    with embedded_server(tmp_path / "server", {"LORASMITH_BASE_MODELS": "tiny-qwen3-moe"}) as server:
        config = sl.Config(
            base_url=server.base_url,
            api_key=server.api_key,
            log_dir=str(tmp_path / "run"),
            show_progress=False,
            seed=0,
            base_model="tiny-qwen3-moe",
            steps=8,
            batch_size=8,
            eval_every=4,
            save_every=8,
        )
        result = sl.run(config)
    assert result["heldout/nll"] < result["heldout/nll_initial"] - 0.3
