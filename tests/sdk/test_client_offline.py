"""The SDK against an in-process fake server: seq ids and ordering, chunking and metric merging,
retries with the same seq_id, error mapping, polling, custom loss, sampling, configuration."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch

import lorasmith
from lorasmith import AdamParams, Datum, ModelInput, SamplingParams
from lorasmith._internal import transport

from .fake_server import API_KEY, BASE_URL, FakeServer


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(transport, "_backoff", lambda attempt: 0.0)


@pytest.fixture
def server():
    return FakeServer()


@pytest.fixture
def service(server):
    client = server.client()
    yield client
    client.close()


def datum(n: int = 3) -> Datum:
    return Datum(
        model_input=ModelInput.from_ints(list(range(1, n + 1))), loss_fn_inputs={"target_tokens": list(range(2, n + 2))}
    )


def training_seqs(server: FakeServer) -> list[int]:
    return [
        c.body["seq_id"]
        for c in server.calls
        if c.path in ("forward_backward", "optim_step", "save_weights_for_sampler")
    ]


def test_bootstrap_creates_a_session_and_a_model(server, service):
    training = service.create_lora_training_client("tiny-llama", rank=4, seed=7, train_unembed=False)
    assert training.model_id == "sess:train:0"
    assert [c.path for c in server.calls] == [
        "client/config",
        "create_session",
        "create_model",
        "retrieve_future",
        "get_info",
    ]
    create = server.bodies("create_model")[0]
    assert create["lora_config"] == {
        "rank": 4,
        "seed": 7,
        "train_unembed": False,
        "train_mlp": True,
        "train_attn": True,
    }
    assert (create["model_seq_id"], create["optimizer_config"]) == (0, {"type": "adamw"})
    assert service.create_lora_training_client("tiny-llama").model_id == "sess:train:1"
    assert training.get_info().model_data["tokenizer_id"] == "tiny-llama"


def test_a_model_loaded_from_state_has_the_id_the_server_gave(server, service):
    server.do_load_weights = lambda body: server.future(
        {"path": body["path"], "model_id": "run-from-server", "type": "load_weights"}, model_id="run-from-server"
    )
    training = service.create_training_client_from_state_with_optimizer("tinker://old/weights/w")
    training.optim_step().result(timeout=10)
    load = server.bodies("load_weights")[0]
    assert (load["session_id"], load["model_seq_id"], load["optimizer"]) == ("sess", 0, True)
    assert training.model_id == "run-from-server"
    assert server.bodies("get_info")[0]["model_id"] == "run-from-server"
    assert [(b["model_id"], b["seq_id"]) for b in server.bodies("optim_step")] == [("run-from-server", 1)]


def test_session_carries_display_name_and_logs_server_messages(server, caplog):
    server.do_create_session = lambda body: {"session_id": "sess", "warning_message": "maintenance at 5pm"}
    service = server.client(display_name="nightly", project_id="p1", user_metadata={"team": "a"})
    try:
        with caplog.at_level("INFO", logger="lorasmith"):
            assert service.session_id == "sess"
        assert server.bodies("create_session")[0] == {
            "tags": [],
            "user_metadata": {"team": "a"},
            "sdk_version": "lorasmith-0.1.0",
            "type": "create_session",
            "display_name": "nightly",
            "project_id": "p1",
        }
        assert "server: maintenance at 5pm" in caplog.text
    finally:
        service.close()


def test_seq_ids_start_at_one_and_follow_call_order(server, service):
    training = service.create_lora_training_client("tiny-llama")
    futures = [
        training.forward_backward([datum()]),
        training.optim_step(AdamParams(learning_rate=0.5)),
        training.forward([datum()]),
        training.save_weights_for_sampler("s"),
    ]
    [f.result(timeout=10) for f in futures]
    assert training_seqs(server) == [1, 2, 3, 4]
    assert server.bodies("optim_step")[0]["adam_params"] == {
        "learning_rate": 0.5,
        "beta1": 0.9,
        "beta2": 0.95,
        "eps": 1e-12,
        "weight_decay": 0.0,
        "grad_clip_norm": 0.0,
    }
    assert [b["forward_only"] for b in server.bodies("forward_backward")] == [False, True]
    assert futures[3].result().path == "tinker://sess:train:0/sampler_weights/s"


def test_a_slow_post_holds_back_later_requests_of_the_model(server, service):
    training = service.create_lora_training_client("tiny-llama")
    server.delays = {1: 0.3, 4: 0.2, 11: 0.1}

    async def twenty():
        futures = []
        for _ in range(10):
            futures.append(await training.forward_backward_async([datum()]))
            futures.append(await training.optim_step_async())
        return [await f for f in futures]

    results = asyncio.run(twenty())
    assert training_seqs(server) == list(range(1, 21))
    assert [r.metrics["seq:max"] for r in results[::2]] == [float(s) for s in range(1, 21, 2)]


def test_first_await_returns_once_the_server_accepted(server, service):
    training = service.create_lora_training_client("tiny-llama")
    server.delays = {1: 0.2}

    async def submit():
        future = await training.forward_backward_async([datum()])
        return len(server.bodies("forward_backward")), future

    accepted, future = asyncio.run(submit())
    assert accepted == 1
    assert future.result(timeout=10).metrics["loss:sum"] == 9.0  # -(-2 - 3 - 4)


def test_big_batches_are_chunked_with_consecutive_seq_ids_and_merged(server, service, monkeypatch):
    import lorasmith.training

    monkeypatch.setattr(lorasmith.training, "MAX_CHUNK_DATUMS", 2)
    training = service.create_lora_training_client("tiny-llama")
    output = training.forward_backward([datum(n) for n in (1, 2, 3, 4, 5)]).result(timeout=10)
    step = training.optim_step().result(timeout=10)
    assert [len(b["data"]) for b in server.bodies("forward_backward")] == [2, 2, 1]
    assert training_seqs(server) == [1, 2, 3, 4]
    assert [o["logprobs"].tolist() for o in output.loss_fn_outputs] == [
        [-2.0],
        [-2.0, -3.0],
        [-2.0, -3.0, -4.0],
        [-2.0, -3.0, -4.0, -5.0],
        [-2.0, -3.0, -4.0, -5.0, -6.0],
    ]
    # sum adds; mean weights each chunk by its datums (2, 2, 1); min/max over chunks
    assert output.metrics == {
        "loss:sum": 2.0 + 5.0 + 9.0 + 14.0 + 20.0,
        "datums:mean": (2 * 2 + 2 * 2 + 1 * 1) / 5,
        "seq:max": 3.0,
        "seq:min": 1.0,
    }
    assert step.metrics == {"grad_norm:mean": 1.0}


def test_chunk_limits_come_from_the_servers_client_config(server):
    server.do_client_config = lambda body: {"fwdbwd_max_chunk_len": 3, "fwdbwd_max_chunk_bytes_count": 10**6}
    service = server.client()
    try:
        training = service.create_lora_training_client("tiny-llama")
        assert len(training.forward([datum() for _ in range(7)]).result(timeout=10).loss_fn_outputs) == 7
        assert [len(b["data"]) for b in server.bodies("forward_backward")] == [3, 3, 1]
    finally:
        service.close()


def test_large_payloads_are_chunked_by_size(server, service, monkeypatch):
    import lorasmith.training

    monkeypatch.setattr(lorasmith.training, "MAX_CHUNK_BYTES", 3000)
    training = service.create_lora_training_client("tiny-llama")
    output = training.forward([datum(100) for _ in range(4)]).result(timeout=10)
    sizes = [len(b["data"]) for b in server.bodies("forward_backward")]
    assert len(sizes) > 1 and sum(sizes) == 4 and len(output.loss_fn_outputs) == 4


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(503, json={"detail": "busy"}),
        httpx.Response(429, json={"detail": "slow down"}, headers={"retry-after": "0.01"}),
        httpx.ConnectError("connection refused"),
    ],
)
def test_retries_resend_the_same_seq_id(server, service, failure):
    training = service.create_lora_training_client("tiny-llama")
    server.fail_next("forward_backward", failure)
    result = training.forward_backward([datum()]).result(timeout=10)
    first, second = server.bodies("forward_backward")
    assert first == second and first["seq_id"] == 1
    assert result.metrics["loss:sum"] == 9.0


def test_a_full_quota_is_waited_out_beyond_max_retries(server, caplog):
    """429 = over a quota, nothing stored: retried (same seq_id) until the patience runs out."""
    service = server.client(max_retries=0, rate_limit_patience=30.0)
    try:
        training = service.create_lora_training_client("tiny-llama")
        full = httpx.Response(429, json={"error": "you have 9 operations pending"}, headers={"retry-after-ms": "1"})
        server.fail_next("forward_backward", *[full] * 4)
        with caplog.at_level("WARNING", logger="lorasmith"):
            assert training.forward_backward([datum()]).result(timeout=10).metrics["loss:sum"] == 9.0
        assert [b["seq_id"] for b in server.bodies("forward_backward")] == [1] * 5
        assert "you have 9 operations pending" in caplog.text
    finally:
        service.close()


@pytest.mark.parametrize(
    "status, body, error, message",
    [
        (
            400,
            {"error": "unknown loss_fn 'nope'", "field": "loss_fn"},
            lorasmith.BadRequestError,
            "unknown loss_fn 'nope'",
        ),
        (422, {"detail": "weights must be float32"}, lorasmith.BadRequestError, "weights must be float32"),
        (401, {"detail": "invalid or revoked API key"}, lorasmith.AuthenticationError, "invalid or revoked"),
        (403, {"detail": "not yours"}, lorasmith.PermissionDeniedError, "not yours"),
        (404, {"detail": "model not found"}, lorasmith.NotFoundError, "model not found"),
        (409, {"detail": "conflict"}, lorasmith.ConflictError, "conflict"),
        (422, {"detail": "unprocessable"}, lorasmith.UnprocessableEntityError, "unprocessable"),
        (429, {"detail": "quota: 100 queued operations"}, lorasmith.RateLimitError, "quota"),
        (500, {"detail": "boom"}, lorasmith.InternalServerError, "boom"),
    ],
)
def test_http_errors_are_typed_with_the_server_message(server, status, body, error, message):
    service = server.client(max_retries=1, rate_limit_patience=0.0)
    try:
        training = service.create_lora_training_client("tiny-llama")
        server.fail_next("forward_backward", *[httpx.Response(status, json=body)] * 2)
        with pytest.raises(error, match=message) as raised:
            training.forward_backward([datum()]).result(timeout=10)
        assert raised.value.status_code == status
        if "field" in body:
            assert raised.value.field == "loss_fn"
    finally:
        service.close()


def test_error_classes_carry_tinkers_names():
    assert lorasmith.APIStatusError is lorasmith.APIError
    assert issubclass(lorasmith.UnprocessableEntityError, lorasmith.BadRequestError)
    assert issubclass(lorasmith.APITimeoutError, lorasmith.APIConnectionError)


def test_a_timeout_is_typed_as_such(server):
    service = server.client(max_retries=0)
    try:
        server.fail_next("create_session", httpx.ReadTimeout("slow"))
        with pytest.raises(lorasmith.APITimeoutError, match="cannot reach"):
            service.session_id
    finally:
        service.close()


def test_unreachable_server_says_so():
    service = lorasmith.ServiceClient(
        base_url="http://127.0.0.1:9", api_key=API_KEY, use_websocket=False, max_retries=2
    )
    with pytest.raises(lorasmith.APIConnectionError, match="cannot reach the Lorasmith server at http://127.0.0.1:9"):
        service.create_lora_training_client("tiny-llama")


def test_failed_future_raises_request_failed_with_category(server, service):
    training = service.create_lora_training_client("tiny-llama")
    server.do_optim_step = lambda body: server.future({"error": "runner crashed", "category": "server"})
    with pytest.raises(lorasmith.RequestFailedError) as failed:
        training.optim_step().result(timeout=10)
    assert (failed.value.message, failed.value.category) == ("runner crashed", "server")
    assert failed.value.request_id.startswith("req-")


def test_polling_reasks_until_the_result_is_ready(server, service):
    server.pending_polls = 3
    training = service.create_lora_training_client("tiny-llama")
    result = training.forward([datum()]).result(timeout=10)
    assert result.metrics["loss:sum"] == 9.0
    assert max(server.polls.values()) == 4


def test_polling_waits_out_a_server_outage(server):
    service = server.client(max_retries=1)
    try:
        training = service.create_lora_training_client("tiny-llama")
        server.fail_next(
            "retrieve_future",
            *[httpx.Response(503, json={"detail": "restarting"})] * 4,
            httpx.ConnectError("connection refused"),
        )
        assert training.forward([datum()]).result(timeout=10).metrics["loss:sum"] == 9.0
    finally:
        service.close()


def test_custom_loss_sends_minus_the_gradient_as_weights(server, service):
    training = service.create_lora_training_client("tiny-llama")
    server.forward_logprobs = lambda d: [-0.5] * len(d["loss_fn_inputs"]["target_tokens"]["data"])
    with_extra = Datum(
        model_input=ModelInput.from_ints([1, 2]), loss_fn_inputs={"target_tokens": [2, 3], "advantages": [1.0, 1.0]}
    )

    def squared(data, logprobs):  # loss = sum over datums of (sum of logprobs)^2
        return sum(lp.sum() ** 2 for lp in logprobs), {"pairs:sum": 1.0}

    out = training.forward_backward_custom([datum(3), with_extra], squared).result(timeout=10)
    forward, backward = server.bodies("forward_backward")
    assert (forward["seq_id"], forward["forward_only"], backward["seq_id"], backward["forward_only"]) == (
        1,
        True,
        2,
        False,
    )
    assert all(set(d["loss_fn_inputs"]) == {"target_tokens", "weights"} for d in forward["data"] + backward["data"])
    # d/dlp (sum lp)^2 = 2 * sum lp: -3 for datum 1 (3 x -0.5), -2 for datum 2; weights are minus that
    assert [d["loss_fn_inputs"]["weights"]["data"] for d in backward["data"]] == [[3.0] * 3, [2.0] * 2]
    assert out.metrics["loss:sum"] == pytest.approx(1.5**2 + 1.0**2)
    assert out.metrics["surrogate_loss:sum"] == pytest.approx(2.5) and out.metrics["pairs:sum"] == 1.0
    assert training.optim_step().result(timeout=10) is not None and training_seqs(server)[-1] == 3


def test_sampling_and_compute_logprobs(server, service):
    sampler = service.create_sampling_client(base_model="tiny-llama")
    response = sampler.sample(ModelInput.from_ints([1, 2, 3]), 2, SamplingParams(max_tokens=2, seed=1)).result(10)
    assert [s.tokens for s in response.sequences] == [[7, 8], [7, 8]]
    assert [s.sequence_id for s in response.sequences] == ["s0", "s1"]
    assert sampler.compute_logprobs(ModelInput.from_ints([1, 2, 3])).result(10) == [None, -1.0, -1.0]
    first, second = server.bodies("asample")
    assert (first["seq_id"], second["seq_id"]) == (0, 1)
    assert first["sampling_params"] == {"max_tokens": 2, "seed": 1, "temperature": 1.0, "top_k": -1, "top_p": 1.0}
    assert (second["num_samples"], second["sampling_params"]["max_tokens"], second["prompt_logprobs"]) == (1, 1, True)
    assert server.bodies("create_sampling_session")[0] == {
        "session_id": "sess",
        "sampling_session_seq_id": 0,
        "type": "create_sampling_session",
        "base_model": "tiny-llama",
    }


def test_sample_async_returns_the_response(server, service):
    sampler = service.create_sampling_client(base_model="tiny-llama")
    response = asyncio.run(sampler.sample_async(ModelInput.from_ints([1]), 1, SamplingParams(max_tokens=2)))
    assert response.sequences[0].stop_reason == "length"


def test_settings_come_from_the_environment(monkeypatch, server):
    monkeypatch.delenv("LORASMITH_BASE_URL", raising=False)
    monkeypatch.delenv("LORASMITH_API_KEY", raising=False)
    monkeypatch.setenv("TINKER_BASE_URL", BASE_URL)
    monkeypatch.setenv("TINKER_API_KEY", API_KEY)
    service = lorasmith.ServiceClient(use_websocket=False, http_transport=httpx.MockTransport(server.handle))
    assert (service.transport.base_url, service.transport.api_key) == (BASE_URL, API_KEY)
    monkeypatch.setenv("LORASMITH_API_KEY", "tml-preferred")
    assert lorasmith.ServiceClient(use_websocket=False).transport.api_key == "tml-preferred"
    monkeypatch.delenv("TINKER_BASE_URL")
    with pytest.raises(lorasmith.LorasmithError, match="LORASMITH_BASE_URL"):
        lorasmith.ServiceClient()


def test_rest_client_reads_the_same_settings_without_a_service(monkeypatch):
    monkeypatch.delenv("LORASMITH_BASE_URL", raising=False)
    monkeypatch.delenv("LORASMITH_API_KEY", raising=False)
    monkeypatch.setenv("TINKER_BASE_URL", BASE_URL)
    monkeypatch.setenv("TINKER_API_KEY", API_KEY)
    rest = lorasmith.RestClient()
    assert (rest.transport.base_url, rest.transport.api_key, rest.transport.events) == (BASE_URL, API_KEY, None)
    assert lorasmith.RestClient("http://other.test/", "tml-explicit").transport.base_url == "http://other.test"
    with pytest.raises(lorasmith.LorasmithError, match="keys start with 'tml-'"):
        lorasmith.RestClient(BASE_URL, "sk-not-a-lorasmith-key")


def test_close_finishes_the_session_once(server):
    with server.client() as service:
        service.create_lora_training_client("tiny-llama")
    assert server.calls[-1].path == "sessions/sess/finish"
    assert server.calls[-1].body == {"reason": {"type": "success"}, "detail": None}
    service.close()
    assert [c.path for c in server.calls].count("sessions/sess/finish") == 1
    with pytest.raises(lorasmith.LorasmithError, match="closed"):
        service.create_lora_training_client("tiny-llama")


def test_leaving_with_an_error_reports_it_and_keeps_it(server):
    with pytest.raises(KeyError), server.client() as service:
        service.create_lora_training_client("tiny-llama")
        server.fail_next(
            "sessions/sess/finish",
            httpx.ConnectError("gone"),
            httpx.ConnectError("gone"),
            httpx.ConnectError("gone"),
            httpx.ConnectError("gone"),
            httpx.ConnectError("gone"),
            httpx.ConnectError("gone"),
        )
        raise KeyError("user bug")
    assert server.calls[-1].body == {"reason": {"type": "errored"}, "detail": "KeyError('user bug')"}


def test_datum_accepts_torch_and_numpy_inputs():
    d = Datum(
        model_input=ModelInput.from_ints([1, 2]),
        loss_fn_inputs={
            "target_tokens": torch.tensor([2, 3], dtype=torch.int32),
            "weights": torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64),
        },
    )
    wire = d.model_dump(mode="json")["loss_fn_inputs"]
    assert wire["target_tokens"] == {"data": [2, 3], "dtype": "int64", "shape": [2]}
    assert wire["weights"] == {"data": [0.5, 0.5, 1.0, 0.0], "dtype": "float32", "shape": [2, 2]}


def test_a_refused_request_that_used_up_its_seq_leaves_no_gap(server, service):
    training = service.create_lora_training_client("tiny-llama")
    server.fail_next(
        "forward_backward", httpx.Response(400, json={"error": "unknown loss_fn 'nope'", "consumed_seq_id": 1})
    )
    rejected, later = training.forward_backward([datum()], "nope"), training.optim_step()
    with pytest.raises(lorasmith.BadRequestError, match="unknown loss_fn 'nope'") as refusal:
        rejected.result(timeout=10)
    assert refusal.value.consumed_seq_id == 1
    assert later.result(timeout=10).metrics == {"grad_norm:mean": 1.0}
    assert training_seqs(server) == [1, 2]  # nothing sent in between: the server holds seq 1 itself


def test_a_refusal_that_left_a_gap_makes_later_requests_fail_instead_of_hanging(server, service):
    training = service.create_lora_training_client("tiny-llama")
    server.fail_next("forward_backward", httpx.Response(404, json={"detail": "model not found"}))
    rejected, later = training.forward_backward([datum()]), training.optim_step()
    with pytest.raises(lorasmith.NotFoundError):
        rejected.result(timeout=10)
    with pytest.raises(lorasmith.LorasmithError, match="was not sent: an earlier request .* model not found"):
        later.result(timeout=10)
    assert server.bodies("optim_step") == []


def test_a_failing_custom_loss_fills_its_seq_so_the_model_goes_on(server, service):
    training = service.create_lora_training_client("tiny-llama")

    def broken(data, logprobs):
        raise ValueError("my loss has a bug")

    with pytest.raises(ValueError, match="my loss has a bug"):
        training.forward_backward_custom([datum()], broken).result(timeout=10)
    assert training.optim_step().result(timeout=10).metrics == {"grad_norm:mean": 1.0}
    assert training_seqs(server) == [1, 2, 3]
    assert [b["forward_only"] for b in server.bodies("forward_backward")] == [True, True]


def test_a_refused_custom_loss_pass_leaves_no_gap(server, service):
    training = service.create_lora_training_client("tiny-llama")
    server.fail_next("forward_backward", httpx.Response(400, json={"error": "weights too long", "consumed_seq_id": 1}))
    with pytest.raises(lorasmith.BadRequestError):
        training.forward_backward_custom([datum()], lambda d, lps: (lps[0].sum(), {})).result(timeout=10)
    assert training.optim_step().result(timeout=10).metrics == {"grad_norm:mean": 1.0}
    assert training_seqs(server) == [1, 2, 3]  # refused (seq held by the server), filler of the unsent pass, step


def test_async_twins_of_saving_and_sampling(server, service):
    training = service.create_lora_training_client("tiny-llama")

    async def flow():
        saved = await (await training.save_weights_for_sampler_async("snap"))
        sampler = await training.save_weights_and_get_sampling_client_async()
        return saved, sampler, await sampler.compute_logprobs_async(ModelInput.from_ints([4, 5]))

    saved, sampler, logprobs = asyncio.run(flow())
    assert saved.path == "tinker://sess:train:0/sampler_weights/snap"
    assert sampler.sampling_session_id == "sess:sample:0" and logprobs == [None, -1.0]
    assert training_seqs(server) == [1, 2]


def test_blocking_calls_on_the_sdk_loop_are_refused(service):
    from lorasmith._internal import background

    async def inside():
        service.get_server_capabilities()

    with pytest.raises(RuntimeError, match="use the \\*_async method"):
        background.run(inside())


def test_heartbeat_runs_in_the_background_until_the_session_is_gone(server, monkeypatch):
    import lorasmith.service

    monkeypatch.setattr(lorasmith.service, "HEARTBEAT_SECONDS", 0.01)
    server.fail_next("session_heartbeat", httpx.Response(503, json={"detail": "blip"}))
    beats = []

    def heartbeat(body):  # two good beats, then the server has forgotten the session
        beats.append(body)
        if len(beats) == 2:
            server.fail_next("session_heartbeat", httpx.Response(410, json={"detail": "session expired"}))
        return {"type": "session_heartbeat"}

    server.do_session_heartbeat = heartbeat
    service = server.client()
    service.create_sampling_client(base_model="tiny-llama")
    service._heartbeat.result(timeout=10)  # the loop ends by itself on 410
    assert beats[0] == {"session_id": "sess", "type": "session_heartbeat"}
    assert [c.path for c in server.calls].count("session_heartbeat") == 4  # 503, ok, ok, 410


def test_wait_all_gives_results_in_order_with_a_progress_bar(server, service, capsys):
    training = service.create_lora_training_client("tiny-llama")
    futures = [training.forward([datum(n)]) for n in (1, 2, 3)]
    results = lorasmith.wait_all(futures, timeout=10, desc="forwards")
    assert [r.metrics["loss:sum"] for r in results] == [2.0, 5.0, 9.0]
    assert "forwards: 100%" in capsys.readouterr().err
    assert training.optim_step().result(timeout=10, progress=True).metrics == {"grad_norm:mean": 1.0}


def test_tokenizer_by_hub_id(server, service, monkeypatch):
    import transformers

    server.do_base_models_tiny_llama_tokenizer = lambda body: {"hub_id": "org/tokenizer"}
    loaded = []
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda name: loaded.append(name) or "tok")
    assert service.create_lora_training_client("tiny-llama").get_tokenizer() == "tok"
    assert loaded == ["org/tokenizer"]


def test_polling_treats_408_as_pending_and_stops_on_a_client_error(server, service):
    training = service.create_lora_training_client("tiny-llama")
    server.fail_next(
        "retrieve_future",
        httpx.Response(408, json={"detail": "still queued"}),
        httpx.Response(429, json={"detail": "slow"}, headers={"retry-after": "0.01"}),
    )
    assert training.forward([datum()]).result(timeout=10).metrics["loss:sum"] == 9.0
    server.fail_next("retrieve_future", httpx.Response(404, json={"detail": "unknown future"}))
    with pytest.raises(lorasmith.NotFoundError, match="unknown future"):
        training.forward([datum()]).result(timeout=10)


def test_metrics_stream_needs_the_websocket(server, service):
    training = service.create_lora_training_client("tiny-llama")
    with pytest.raises(lorasmith.LorasmithError, match="use_websocket=False"):
        asyncio.run(training.subscribe_metrics())
