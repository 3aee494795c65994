"""The dashboard in a real browser: Debian's chromium (never a downloaded one) driven by
Playwright, against a private `manage.py serve` (embedded runner). One person's whole journey:
sign up, log out and in, create a key, train through the SDK with it while the run page's chart
grows without a reload, download a checkpoint and load it in peft, change its TTL, sample in the
playground, read usage equal to the tokens sent, revoke the key and see the SDK refused. Then a
second user sees none of it and gets 404 for its URLs. Every page is screenshotted into the test's
tmp dir. Under CI=true a missing chromium or Playwright fails instead of skipping."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tarfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

import lorasmith
from lorasmith import AdamParams, Datum, ModelInput
from tests.conftest import embedded_server
from tests.platform.wire import Wire, datum_json

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "a-long-enough-password-1"
# the SDK's training data: model_input = s[:-1], so each step trains on sum(len(s) - 1) tokens
SEQUENCES = [[3, 320, 265, 203, 44, 538, 83], [3, 17, 99, 41, 7]]
STEPS = 4
FORWARD_ONLY = [[3, 5, 6, 7, 8, 9]]


# what sticks out past a 390 px screen, for the failure message
WIDER_THAN_THE_SCREEN = """[...document.querySelectorAll("body *")]
    .filter((e) => e.getBoundingClientRect().right > 391)
    .slice(0, 5)
    .map((e) => `${e.tagName}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`)"""


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "Playwright's Python package is not installed (requirements-dev.txt)"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The server and one headless chromium for the module's tests."""
    missing = _missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}, and CI=true forbids skipping the browser tests")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright  # found just above; absent it, the module still imports

    # plain HTTP on loopback: the Secure flag would keep the session cookie from coming back
    with (
        embedded_server(tmp_path_factory.mktemp("browser-server"), {"LORASMITH_SECURE_COOKIES": "false"}) as server,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield server, browser
        finally:
            browser.close()


class Pages:
    """One browser context (one person's cookies) that screenshots each page it is asked to."""

    def __init__(self, browser, server, shots: Path, who: str):
        self.context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
        self.context.set_default_timeout(30_000)
        self.page = self.context.new_page()
        self.base = server.base_url
        self.shots, self.who = shots, who

    def go(self, path: str):
        return self.page.goto(f"{self.base}{path}")

    def shot(self, name: str) -> None:
        self.page.screenshot(path=self.shots / f"{self.who}-{name}.png", full_page=True)

    def sign_up(self, username: str) -> None:
        self.go("/accounts/signup/")
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Email").fill(f"{username}@example.com")
        self.page.get_by_label("Password", exact=True).fill(PASSWORD)
        self.page.get_by_label("Password confirmation").fill(PASSWORD)
        self.shot("signup")
        self.page.get_by_role("button", name="Sign up").click()
        self.page.wait_for_url("**/keys/")

    def count(self, name: str) -> int:
        return int(self.page.locator(f'#usage-totals [data-count="{name}"]').inner_text())


def _datum(sequence: list[int]) -> Datum:
    return Datum(model_input=ModelInput.from_ints(sequence[:-1]), loss_fn_inputs={"target_tokens": sequence[1:]})


def _points(page, metric: str) -> int:
    label = page.locator(f'figure[data-metric="{metric}"] svg').get_attribute("aria-label") or ""
    found = re.match(rf"{re.escape(metric)}: (\d+) points", label)
    return int(found.group(1)) if found else 0


def _wait_points(page, metric: str, count: int) -> None:
    page.wait_for_function(
        """([metric, count]) => {
            const svg = document.querySelector(`figure[data-metric="${metric}"] svg`);
            const found = svg && /: (\\d+) points/.exec(svg.getAttribute("aria-label") || "");
            return found && Number(found[1]) >= count;
        }""",
        arg=[metric, count],
        timeout=60_000,
    )


def test_a_users_journey_through_the_dashboard(site, tmp_path):
    server, browser = site
    carol = Pages(browser, server, tmp_path, "carol")
    page = carol.page

    # sign up, log out, log in
    carol.sign_up("carol")
    page.get_by_role("link", name="Log out").click()  # a confirmation page, then the POST
    carol.shot("logout-confirm")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/accounts/login/")
    carol.go("/accounts/login/")
    page.get_by_label("Username").fill("carol")
    page.get_by_label("Password").fill(PASSWORD)
    carol.shot("login")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/runs/")
    assert page.get_by_text("No training runs yet").is_visible()
    carol.shot("runs-empty")

    # a key: its secret once, then only its prefix
    carol.go("/keys/")
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key-secret").inner_text()
    assert secret.startswith("tml-")
    assert f'base_url="{server.base_url}"' in page.locator("#new-key-snippet").inner_text()
    carol.shot("key-created")
    page.reload()  # POST-redirect-GET: a reload shows the list, never makes a second key
    assert secret not in page.content() and f"{secret[:12]}…" in page.locator("table").inner_text()
    assert page.locator("table tbody tr").count() == 1
    carol.shot("keys")

    # train through the SDK in the background while the run page is open
    service = lorasmith.ServiceClient(base_url=server.base_url, api_key=secret)
    training = service.create_lora_training_client("tiny-llama", rank=8, seed=3)
    carol.go(f"/runs/{training.model_id}/")
    page.get_by_text("Live: new points").wait_for()
    page.evaluate("window.loadedOnce = true")  # gone if the page reloads
    first_step_seen, done, errors = threading.Event(), threading.Event(), []

    def train() -> None:
        try:
            for step in range(STEPS):
                training.forward_backward([_datum(s) for s in SEQUENCES]).result()
                training.optim_step(AdamParams(learning_rate=2e-2)).result()
                if step == 0:
                    assert first_step_seen.wait(60), "the page never showed the first point"
            training.forward([_datum(s) for s in FORWARD_ONLY]).result()
            training.save_weights_for_sampler("s1").result()
            training.save_state("state1").result()
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            done.set()

    worker = threading.Thread(target=train, daemon=True)
    worker.start()
    _wait_points(page, "loss:sum", 1)
    carol.shot("run-first-point")
    first_step_seen.set()
    _wait_points(page, "loss:sum", STEPS)
    assert done.wait(120) and not errors, errors
    assert page.evaluate("window.loadedOnce") is True  # the points came without a reload
    assert _points(page, "loss:sum") == STEPS
    assert page.locator("#run-steps").inner_text() == str(STEPS)  # the facts follow too
    page.locator("#run-status", has_text="idle").wait_for()
    # the operations and checkpoints tables followed too, without a reload
    page.locator("#run-checkpoints tr", has_text="sampler_weights/s1").wait_for(timeout=30_000)
    page.locator("#run-checkpoints tr", has_text="weights/state1").wait_for(timeout=30_000)
    assert page.locator('#run-operations tr[data-kind="optim_step"][data-status="done"]').count() == STEPS
    assert page.locator('#run-operations tr[data-kind="save_weights_for_sampler"]').count() == 1
    assert page.evaluate("window.loadedOnce") is True
    carol.shot("run-live")
    carol.go("/runs/")
    assert page.get_by_role("link", name=training.model_id).is_visible()
    carol.shot("runs")

    # download the checkpoint from its link; the archive loads in peft with the trained weights
    carol.go("/checkpoints/")
    carol.shot("checkpoints")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download s1").click()
    archive = tmp_path / "s1.tar"
    download.value.save_as(archive)
    adapter = tmp_path / "adapter"
    with tarfile.open(archive) as tar:
        tar.extractall(adapter, filter="data")
    _assert_loads_in_peft(server.data_dir, adapter)

    # change the TTL
    row = page.locator("tr", has_text="sampler_weights/s1")
    row.get_by_label("Expiry of s1").select_option(label="7 days")
    row.get_by_role("button", name="Set expiry").click()
    message = page.locator(".messages").inner_text()
    assert "now expires:" in message and "s1" in message
    expiry = _expiry_of(httpx.get(f"{server.base_url}/api/v1/checkpoints", headers={"X-API-Key": secret}).json())
    assert timedelta(days=6, hours=23) < expiry < timedelta(days=7, minutes=1)
    carol.shot("checkpoint-ttl")

    # the playground: text in, tokens out with their logprobs on hover
    page.get_by_role("link", name="Playground for s1").click()
    page.get_by_label("Prompt").fill("Once upon a time")
    page.get_by_label("Max tokens").fill("8")
    page.get_by_label("Temperature").fill("0")
    carol.shot("playground-form")
    page.get_by_role("button", name="Sample").click()
    tokens = page.locator("#sample-output .completion .token")
    tokens.first.wait_for(timeout=60_000)
    sampled = tokens.count()
    assert 1 <= sampled <= 8
    tokens.first.hover()
    assert re.search(r"logprob -?\d", tokens.first.get_attribute("title") or "")
    assert float(tokens.first.get_attribute("data-logprob")) <= 0
    carol.shot("playground")

    # a training checkpoint offers no playground, and its playground URL shows the intake's refusal
    assert page.locator("tr", has_text="weights/state1").get_by_role("link", name=re.compile("Playground")).count() == 0
    carol.go(f"/runs/{training.model_id}/checkpoints/weights/state1/playground/")
    page.get_by_label("Prompt").fill("Once upon a time")
    page.get_by_role("button", name="Sample").click()
    refusal = page.locator("form .errors, .errorlist, .error").first
    refusal.wait_for()
    assert "sampler_weights" in page.locator("main").inner_text() and "model_path" in page.locator("main").inner_text()
    carol.shot("playground-training-refused")

    # usage equals what was sent: model_input tokens of each step, the forward pass, the sampled tokens
    carol.go("/usage/")
    trained = STEPS * sum(len(s) - 1 for s in SEQUENCES)
    assert carol.count("tokens_trained") == trained
    assert carol.count("tokens_forward") == sum(len(s) - 1 for s in FORWARD_ONLY)
    assert carol.count("tokens_sampled") == sampled
    assert carol.count("optimizer_steps") == STEPS
    assert str(trained) in page.locator("#usage-per-key tr", has_text=secret[:12]).inner_text()
    assert page.locator("#usage-charts figure").count() == 4
    carol.shot("usage")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: tables scroll, charts stack
    carol.shot("usage-narrow")
    page.set_viewport_size({"width": 1100, "height": 900})
    carol.go("/overview/")
    assert page.locator("#runners").is_visible()
    carol.shot("overview")

    # compare this run with a second one: ticked in the runs list, two lines per shared metric
    second = service.create_lora_training_client("tiny-llama", rank=4, seed=5)
    for _ in range(2):
        second.forward_backward([_datum(s) for s in SEQUENCES]).result()
        second.optim_step(AdamParams(learning_rate=1e-2)).result()
    carol.go("/runs/")
    page.get_by_label(f"Compare {training.model_id}").check()
    page.get_by_label(f"Compare {second.model_id}").check()
    page.get_by_role("button", name="Compare selected").click()
    page.wait_for_url("**/runs/compare/?run=*")
    lines = page.locator('figure[data-metric="loss:per_token"] path.line')
    lines.first.wait_for()
    assert lines.count() == 2 and page.locator("#compare-legend li").count() == 2
    assert {lines.nth(i).get_attribute("stroke") for i in range(2)} == {"#0072b2", "#d55e00"}  # one colour each
    page.locator('figure[data-metric="loss:per_token"] svg').hover()
    assert page.locator('figure[data-metric="loss:per_token"] .chart-hover').inner_text().count(":") >= 2
    page.get_by_label("Log scale").check()
    carol.shot("compare")

    # a phone: no page scrolls sideways at 390 x 844 (tables scroll inside their box)
    page.set_viewport_size({"width": 390, "height": 844})
    checkpoint = f"/runs/{training.model_id}/checkpoints/sampler_weights/s1"
    for name, url in [
        ("runs", "/runs/"),
        ("run", f"/runs/{training.model_id}/"),
        ("compare", f"/runs/compare/?run={training.model_id}&run={second.model_id}"),
        ("checkpoints", "/checkpoints/"),
        ("playground", f"{checkpoint}/playground/"),
        ("usage", "/usage/"),
        ("overview", "/overview/"),
        ("keys", "/keys/"),
        ("password", "/accounts/password/"),
        ("logout", "/accounts/logout/"),
        ("not-found", "/no/such/page/"),
    ]:
        carol.go(url)
        page.wait_for_load_state("networkidle")
        width = page.evaluate("document.documentElement.scrollWidth")
        carol.shot(f"phone-{name}")
        assert width <= 390, (name, width, page.evaluate(WIDER_THAN_THE_SCREEN))
    page.set_viewport_size({"width": 1100, "height": 900})

    # revoke the key: the SDK is refused from then on
    carol.go("/keys/")
    page.get_by_role("link", name=re.compile(r"Revoke")).click()
    carol.shot("revoke")
    page.get_by_role("button", name="Revoke this key").click()
    assert "is revoked" in page.locator(".messages").inner_text()
    assert page.get_by_text("You have no active keys").is_visible()
    carol.shot("keys-revoked")
    with pytest.raises(lorasmith.AuthenticationError):
        training.forward_backward([_datum(SEQUENCES[0])]).result()
    service.close()
    carol.context.close()
    assert len(list(tmp_path.glob("carol-*.png"))) >= 28
    _keep_screenshots(tmp_path)


def _keep_screenshots(shots: Path) -> None:
    """LORASMITH_SCREENSHOTS=dir copies the screenshots there, to be looked at."""
    target = os.environ.get("LORASMITH_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for shot in shots.glob("*.png"):
            shutil.copy(shot, Path(target) / shot.name)


def _assert_loads_in_peft(data_dir: Path, adapter: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(data_dir / "models" / "tiny-llama", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    trained = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert trained and any(p.abs().sum() > 0 for p in trained)  # B starts at zero: these were trained
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([SEQUENCES[0]])).logits).all()


def _expiry_of(listing: dict) -> timedelta:
    (checkpoint,) = [c for c in listing["checkpoints"] if c["checkpoint_id"] == "sampler_weights/s1"]
    return datetime.fromisoformat(checkpoint["expires_at"]) - datetime.now(UTC)


def test_a_second_user_sees_nothing_of_the_first(site, tmp_path):
    server, browser = site
    wire = Wire(httpx.Client(base_url=f"{server.base_url}/api/v1", headers={"X-API-Key": server.make_api_key("dave")}))
    model_id = wire.model(wire.session(), seed=2)
    wire.result(wire.forward_backward(model_id, 1, [datum_json(SEQUENCES[0])]))
    wire.result(wire.optim_step(model_id, 2))
    path = wire.result(wire.post("save_weights_for_sampler", {"model_id": model_id, "seq_id": 3, "path": "d1"}))["path"]
    sample = wire.post("asample", wire.sample_body(wire.sampler(wire.session(), model_path=path)))
    assert wire.result(sample)["sequences"]
    checkpoint = f"/runs/{model_id}/checkpoints/sampler_weights/d1"

    eve = Pages(browser, server, tmp_path, "eve")
    eve.sign_up("eve")
    for name, url in [
        ("runs", "/runs/"),
        ("checkpoints", "/checkpoints/"),
        ("usage", "/usage/"),
        ("overview", "/overview/"),
        ("keys", "/keys/"),
    ]:
        assert eve.go(url).status == 200
        text = eve.page.content()
        assert model_id not in text and "d1" not in eve.page.locator("main").inner_text(), name
        eve.shot(name)
    for url in [
        f"/runs/{model_id}/",
        f"{checkpoint}/download/",
        f"{checkpoint}/delete/",
        f"{checkpoint}/playground/",
        f"{checkpoint}/playground/?request={sample['request_id']}",
    ]:
        assert eve.go(url).status == 404, url
    eve.shot("not-found")
    csrf = next(c["value"] for c in eve.context.cookies() if c["name"] == "csrftoken")
    for action in ("ttl", "publish", "delete"):  # the POST forms too, with eve's own CSRF token
        answer = eve.page.request.post(
            f"{server.base_url}{checkpoint}/{action}/", form={"ttl_seconds": "86400"}, headers={"X-CSRFToken": csrf}
        )
        assert answer.status == 404, (action, answer.status)
    assert wire.get(f"training_runs/{model_id}/checkpoints")["checkpoints"][0]["expires_at"] is None  # untouched
    eve.context.close()


def test_playground_tools_named_downloads_and_where_runs_live(site, tmp_path):
    """Issue 21's second pass in a browser: the playground's prompt-format hint (from the run's
    renderer) and its stop sequences, a refused form that keeps the last output, whitespace made
    visible; a download named after its run; the overview and run page naming each run's runner and
    snapshot as the API does; the new parts at phone width without sideways scrolling."""
    server, browser = site
    grace = Pages(browser, server, tmp_path, "grace")
    page = grace.page
    grace.sign_up("grace")
    key = server.make_api_key("grace")
    service = lorasmith.ServiceClient(base_url=server.base_url, api_key=key)
    training = service.create_lora_training_client(
        "tiny-llama", rank=8, seed=4, user_metadata={"renderer": "completion"}
    )
    training.forward_backward([_datum(s) for s in SEQUENCES]).result()
    training.optim_step(AdamParams(learning_rate=2e-2)).result()
    training.save_weights_for_sampler("g1").result()
    checkpoint = f"/runs/{training.model_id}/checkpoints/sampler_weights/g1"

    # the hint names the run's renderer, and its stop string starts the stop field
    grace.go(f"{checkpoint}/playground/")
    hint = page.locator("#format-hint")
    assert "completion" in hint.locator("summary").inner_text()
    assert page.locator("#format-template").inner_text() == "<|bos|>{your text}"
    assert page.get_by_label("Stop sequences").input_value() == "\\n"
    page.get_by_label("Prompt").fill("Once upon a time")
    page.get_by_role("button", name="Wrap my prompt in this format").click()
    assert page.get_by_label("Prompt").input_value() == "<|bos|>Once upon a time"
    page.get_by_label("Stop sequences").fill("")
    page.get_by_label("Max tokens").fill("12")
    page.get_by_label("Temperature").fill("0")
    grace.shot("playground-hint")
    page.get_by_role("button", name="Sample").click()
    cells = page.locator("#sample-output .token-table td code.token-text")
    cells.first.wait_for(state="attached", timeout=60_000)  # in a closed <details>
    free = [cells.nth(i).text_content() for i in range(cells.count())]
    assert 2 < len(free) <= 12 and all(free)  # no blank cell
    assert all(not ch.isspace() for c in free for ch in c)  # whitespace shows as ↵ → ·

    # a stop sequence taken from that output ends the next sample there (greedy: same tokens)
    texts = [c.replace("·", " ").replace("↵", "\n").replace("→", "\t") for c in free]
    cut = next(i for i in range(2, len(texts)) if texts[i].strip() and texts[i] not in "".join(texts[:i]))
    page.get_by_label("Stop sequences").fill(texts[cut].replace("\n", "\\n").replace("\t", "\\t"))
    page.get_by_role("button", name="Sample").click()
    page.locator("#sample-output h3", has_text="stopped: stop").wait_for(timeout=60_000)
    assert [cells.nth(i).text_content() for i in range(cells.count())] == free[: cut + 1]
    grace.shot("playground-stopped")

    # a refused form keeps that output on the page, next to the error
    page.get_by_label("Max tokens").fill("0")
    page.get_by_role("button", name="Sample").click()
    page.locator(".field.invalid .error").first.wait_for()
    assert page.locator("#sample-output .sequence").count() == 1 and cells.count() == cut + 1
    grace.shot("playground-error-keeps-output")

    # the download is named after the run and the checkpoint
    grace.go("/checkpoints/")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download g1").click()
    assert re.fullmatch(r"[0-9a-f]{8}-g1\.tar", download.value.suggested_filename), download.value.suggested_filename
    assert training.model_id.replace("-", "").startswith(download.value.suggested_filename[:8])

    # where the run lives: the overview and the run page say what the API says
    described = httpx.get(
        f"{server.base_url}/api/v1/training_runs/{training.model_id}", headers={"X-API-Key": key}
    ).json()
    runner = described["runner"]
    assert runner and runner["host"]
    place = runner["host"] + (f" · {runner['device']}" if runner["device"] else "")  # the embedded one: no device
    grace.go("/overview/")
    row = page.locator(f'#active-runs tr[data-run="{training.model_id}"]')
    assert row.locator(".runner-cell").inner_text().startswith(place)
    snapshot = described["snapshot_seq_id"]
    assert row.locator(".snapshot-cell").inner_text() == (str(snapshot) if snapshot is not None else "none yet")
    grace.shot("overview-active-runs")
    grace.go(f"/runs/{training.model_id}/")
    assert (
        page.locator("#run-runner").inner_text().startswith(place)
        and page.locator(f'#run-runner code[title="runner {runner["id"]}"]').count() == 1
    )
    assert (str(snapshot) if snapshot is not None else "none yet") in page.locator("#run-snapshot").inner_text()
    grace.shot("run-runner")

    page.set_viewport_size({"width": 390, "height": 844})
    for name, url in [("playground", f"{checkpoint}/playground/"), ("overview", "/overview/")]:
        grace.go(url)
        page.wait_for_load_state("networkidle")
        width = page.evaluate("document.documentElement.scrollWidth")
        grace.shot(f"phone-{name}")
        assert width <= 390, (name, width, page.evaluate(WIDER_THAN_THE_SCREEN))
    service.close()
    grace.context.close()
    _keep_screenshots(tmp_path)
