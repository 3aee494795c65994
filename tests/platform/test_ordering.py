"""Per-model seq_id order: early arrivals wait for the gap to fill; repeats return the original future."""

from __future__ import annotations

import pytest

from .wire import Wire, datum_json

FIRST = [3, 320, 265, 203, 44, 538, 83, 685, 4]
SECOND = [203, 3, 334, 87, 485, 88, 203, 41, 77, 12]


def test_out_of_order_arrivals_execute_in_seq_order(live_server_embedded):
    wire = Wire(live_server_embedded.client())
    session = wire.session()
    shuffled, in_order = wire.model(session, 0, seed=5), wire.model(session, 1, seed=5)

    late = wire.forward_backward(shuffled, 3, [datum_json(SECOND)])  # seq 3 arrives first
    assert wire.post("retrieve_future", {"request_id": late["request_id"]})["type"] == "try_again"
    step = wire.optim_step(shuffled, 2)
    first = wire.forward_backward(shuffled, 1, [datum_json(FIRST)])

    expected = [
        wire.forward_backward(in_order, 1, [datum_json(FIRST)]),
        wire.optim_step(in_order, 2),
        wire.forward_backward(in_order, 3, [datum_json(SECOND)]),
    ]
    got = [wire.result(h) for h in (first, step, late)]
    want = [wire.result(h) for h in expected]
    assert got[0]["metrics"]["loss:sum"] == pytest.approx(want[0]["metrics"]["loss:sum"], rel=1e-5)
    # seq 3 saw the optimizer step of seq 2: its loss equals the in-order run's, not the untrained one
    assert got[2]["metrics"]["loss:sum"] == pytest.approx(want[2]["metrics"]["loss:sum"], rel=1e-5)
    untrained = wire.result(wire.forward_backward(wire.model(session, 2, seed=5), 1, [datum_json(SECOND)]))
    assert got[2]["metrics"]["loss:sum"] != pytest.approx(untrained["metrics"]["loss:sum"], rel=1e-4)


def test_repeated_seq_id_returns_the_original_future(live_server_embedded):
    wire = Wire(live_server_embedded.client())
    session = wire.session()
    model_id = wire.model(session, seed=2)
    once = wire.forward_backward(model_id, 1, [datum_json(FIRST)])
    again = wire.forward_backward(model_id, 1, [datum_json(SECOND)])
    assert again["request_id"] == once["request_id"]
    create_again = wire.post(
        "create_model",
        {"session_id": session, "model_seq_id": 0, "base_model": "tiny-llama", "lora_config": {"rank": 8, "seed": 1}},
    )
    assert create_again["model_id"] == model_id
    sampler = wire.post(
        "create_sampling_session", {"session_id": session, "sampling_session_seq_id": 0, "base_model": "tiny-llama"}
    )["sampling_session_id"]
    body = {
        "sampling_session_id": sampler,
        "seq_id": 7,
        "num_samples": 1,
        "sampling_params": {"max_tokens": 2},
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": FIRST}]},
    }
    assert wire.post("asample", body)["request_id"] == wire.post("asample", body)["request_id"]
    assert len(wire.result(once)["loss_fn_outputs"]) == 1


def test_two_steps_in_one_cycle_count_as_two(live_server_embedded):
    """seq 2-4 wait for seq 1, so all four run in one cycle: the run's step and the pushed metrics'
    steps must still advance once per optim_step."""
    wire = Wire(live_server_embedded.client())
    model_id = wire.model(wire.session(), seed=3)
    later = [
        wire.optim_step(model_id, 2),
        wire.forward_backward(model_id, 3, [datum_json(SECOND)]),
        wire.optim_step(model_id, 4),
    ]
    first = wire.forward_backward(model_id, 1, [datum_json(FIRST)])
    for handle in [first, *later]:
        assert "error" not in wire.result(handle)
    assert wire.get(f"training_runs/{model_id}")["step"] == 2
