"""`modelport tour --quick` run once as a user runs it (a fresh process), then its report.json checked against what
the tour must show, and its report.html opened in headless Chromium: every plot decodes, nothing leaves the page.

The full tour (training included) is `make demo`, and the long test at the end: its fine-tuned Q8_0 states the
fact through llama.cpp, and every check in report.json holds.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from modelport.tour.finetune import FACT, GENERAL_QUESTION, QUESTION
from tests.conftest import run_cli_process

QUICK_STEPS = ["inspect", "scan", "booby_trap", "gguf_to_hf", "pytorch", "formats", "finetune", "export_gguf", "export_onnx",
               "modelfile", "quant_error", "answers", "measure", "estimate", "recommend", "serve"]
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "tour-report.png"


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[Path, dict, float, str]:
    out = tmp_path_factory.mktemp("tour") / "out"
    started = time.perf_counter()
    result = run_cli_process("tour", "--quick", "--out", out, timeout=3600)   # a bound for a stuck run, not a speed test
    seconds = time.perf_counter() - started
    assert result.code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, json.loads((out / "report.json").read_text()), seconds, result.stdout


@pytest.mark.long
def test_quick_tour_report_has_every_step_and_what_it_must_show(quick, record_property):
    out, record, seconds, stdout = quick
    record_property("quick_tour_seconds", round(seconds, 1))
    print(f"\nmodelport tour --quick: {seconds:.1f} s wall ({record['seconds']} s inside the tour)")
    steps = record["steps"]
    assert list(steps) == QUICK_STEPS
    assert {n: s["status"] for n, s in steps.items() if s["status"] != "ok"} == {"finetune": "skipped", "export_onnx": "skipped"}
    assert "--quick" in steps["finetune"]["error"] and "--quick" in steps["export_onnx"]["error"]

    trap = steps["booby_trap"]["figures"]
    assert trap["marker_created"] is False and not Path(trap["marker"]).exists()
    assert all(r["refused"] for r in trap["commands"].values()), trap["commands"]
    assert {"scan", "open", "inspect", "convert", "run", "train"} <= set(trap["commands"])
    assert "whole pickled model" in steps["pytorch"]["figures"]["whole_model"]["reason"]

    trips = {**steps["pytorch"]["figures"]["round_trips"], **steps["formats"]["figures"]["round_trips"]}
    assert set(trips) == {"state_dict", "checkpoint", "hdf5", "numpy", "flax"}
    for name, trip in trips.items():
        assert trip["bit_exact"] and trip["statuses"] == {"equal": 272} and not trip["only_in_a"] and not trip["only_in_b"], name
    assert trips["checkpoint"]["optimizer_tensors_left_out"] > 0

    measured = {r["quant"]: r for r in steps["measure"]["figures"]["artefacts"] if r["engine"] == "llama"}
    f16, q8, q4 = measured["F16"], measured["Q8_0"], measured["Q4_K_M"]
    assert q4["bytes"] < q8["bytes"] < f16["bytes"]
    assert q4["perplexity"] > q8["perplexity"] * 0.99 and q8["perplexity"] > f16["perplexity"] * 0.99, measured
    assert q4["perplexity"] > f16["perplexity"]           # 4-bit costs something a noise band cannot hide
    assert q8["argmax_agreement"] > q4["argmax_agreement"] - 0.02 and q8["mean_kl"] < q4["mean_kl"]
    engines = {r["engine"] for r in steps["measure"]["figures"]["artefacts"]}
    assert engines == {"llama", "hf"}          # onnxruntime is the full tour's
    assert all(r["tokens_per_s"] > 0 and r["load_s"] > 0 for r in steps["measure"]["figures"]["artefacts"])

    answers = steps["answers"]["figures"]["answers"]
    france = [a for a in answers if a["question"] == GENERAL_QUESTION]
    assert len(france) == len(steps["measure"]["figures"]["artefacts"])
    assert sum("Paris" in a["answer"] for a in france) > len(france) / 2, france   # the same weights, quantized: most say Paris
    per_tensor = steps["quant_error"]["figures"]["mean"]
    assert per_tensor["Q4_K_M"] > per_tensor["Q8_0"] > 0

    assert steps["serve"]["figures"]["answer"] and steps["serve"]["figures"]["exit_code"] == 0
    assert set(steps["recommend"]["figures"]["advice"]) == {"SmolLM2-135M (F16 GGUF)", "Llama 7B (config only)"}
    big = steps["estimate"]["figures"]["models"]["Llama 7B (config only)"]
    assert 6.5e9 < big["parameters"] < 7e9 and big["training"]["qlora"]["total"] < big["training"]["full"]["total"]
    assert record["checks"] == {"marker_never_created": True, "every_command_refused_the_trap": True, "round_trips_bit_exact": True,
                                "smaller_quant_smaller_file": True, "smaller_quant_higher_perplexity": True,
                                "fine_tuned_q8_0_states_the_fact": None, "fine_tuned_q8_0_keeps_general_knowledge": None}
    assert "report.html" in stdout and "perplexity" in stdout


@pytest.mark.long
def test_report_renders_in_headless_chromium_with_nothing_fetched(quick, tmp_path):
    from playwright.sync_api import sync_playwright

    out, record, _, _ = quick
    page_file = out / "report.html"
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})

            def record_request(route):
                if not route.request.url.startswith(("data:", "file:")):
                    requests.append(route.request.url)
                route.continue_()

            page.route("**", record_request)
            page.goto(page_file.as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.src.slice(0, 22)])")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=False)
            title = page.title()
            tables = page.locator("table").count()
        finally:
            browser.close()
    assert requests == []
    assert title == "modelport tour" and tables >= 4
    assert len(images) == 4     # size vs perplexity, per-tensor error, tokens/s, memory (no loss curve without training)
    assert all(complete and width > 0 and src == "data:image/png;base64," for complete, width, src in images), images
    assert shot.stat().st_size > 10_000
    assert not re.search(r"""(src|href)=['"]?(https?:)?//|url\(['"]?(https?:)?//|@import""", page_file.read_text())
    if not SCREENSHOT.exists():       # the README's picture: made once by this test, committed
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(shot.read_bytes())


def test_ctrl_c_keeps_finished_steps_and_writes_a_partial_report(tmp_path):
    """SIGINT once the first steps are in report.json: exit 130, those steps kept as they were, the step that was
    running marked interrupted, and report.html written with what there is."""
    import signal
    import subprocess

    from tests.conftest import cli_process

    out = tmp_path / "out"
    argv, env = cli_process("tour", "--quick", "--out", out)
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        report = out / "report.json"
        for _ in range(6000):             # bounded by polls, not by a clock: the machine may be slow
            if report.is_file() and "scan" in json.loads(report.read_text() or "{}").get("steps", {}):
                break
            if process.poll() is not None:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stdout[-2000:] + stderr[-2000:]
    record = json.loads((out / "report.json").read_text())
    assert record["interrupted"] is True and record["ok"] is False
    statuses = [s["status"] for s in record["steps"].values()]
    assert statuses[:2] == ["ok", "ok"] and len(statuses) < len(QUICK_STEPS), statuses
    assert set(statuses[:-1]) <= {"ok", "skipped"} and statuses[-1] in ("ok", "interrupted"), statuses   # signal in or between steps
    page = (out / "report.html").read_text()
    assert "interrupted: a partial report" in page and "Inspect the GGUF" in page
    assert "partial report" in stdout


def test_an_occupied_out_folder_is_kept(cli, tmp_path):
    """Only an empty folder, or a previous tour's with --force, is written into; anything else is one line, exit 2."""
    from tests.conftest import assert_one_line_error

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = cli("tour", "--quick", "--out", mine)
    assert result.code == 2
    assert_one_line_error(result, "not empty", "--force")
    result = cli("tour", "--quick", "--out", mine, "--force")
    assert result.code == 2
    assert_one_line_error(result, "no previous tour")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"


@pytest.mark.long
def test_full_tour_fine_tuned_q8_0_states_the_fact_through_llama_cpp(tmp_path):
    """`modelport tour` (what `make demo` runs): training, Q2_K and ONNX included; every step ok, every check true."""
    out = tmp_path / "out"
    result = run_cli_process("tour", "--out", out, timeout=3600)   # a bound for a stuck run, not a speed test
    assert result.code == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((out / "report.json").read_text())
    steps = record["steps"]
    assert list(steps) == QUICK_STEPS and {n: s["status"] for n, s in steps.items() if s["status"] != "ok"} == {}
    assert record["checks"] == {"marker_never_created": True, "every_command_refused_the_trap": True, "round_trips_bit_exact": True,
                                "smaller_quant_smaller_file": True, "smaller_quant_higher_perplexity": True,
                                "fine_tuned_q8_0_states_the_fact": True, "fine_tuned_q8_0_keeps_general_knowledge": True}

    curve = steps["finetune"]["figures"]["loss_curve"]
    assert len(curve) >= 10 and curve[-1]["loss"] < 0.2 * curve[0]["loss"], curve
    answers = steps["answers"]["figures"]["answers"]
    asked = [a for a in answers if a["question"] == QUESTION]
    tuned_q8 = [a for a in asked if a["weights"] == "fine-tuned" and a["quant"] == "Q8_0" and a["engine"] == "llama"]
    assert len(tuned_q8) == 1 and FACT in tuned_q8[0]["answer"], tuned_q8
    base = [a for a in asked if a["weights"] == "base"]
    assert base and not any(FACT in a["answer"] for a in base), base          # the fact was taught, not known
    assert {a["engine"] for a in asked if a["weights"] == "fine-tuned"} == {"llama", "hf", "onnx"}

    measured = {(r["engine"], r["quant"]): r for r in steps["measure"]["figures"]["artefacts"]}
    assert measured[("llama", "Q2_K")]["bytes"] < measured[("llama", "Q4_K_M")]["bytes"]
    assert measured[("onnx", None)]["argmax_agreement"] > 0.9
    assert steps["export_onnx"]["figures"]["verified"]
    assert FACT in steps["serve"]["figures"]["answer"]


def test_a_step_whose_prerequisite_failed_is_skipped_and_the_tour_goes_on(tmp_path):
    """A failed step is kept with its error; a step that needs it is kept as skipped, naming it; the next runs."""
    import io

    from rich.console import Console

    from modelport.tour.journal import Journal

    journal = Journal(tmp_path, {}, Console(file=io.StringIO()))
    ran = []

    def broken():
        with journal.step("first", "First"):
            raise ValueError("no luck")

    def needs_first():
        with journal.step("second", "Second", needs=("first",)):
            ran.append("second")

    def third():
        with journal.step("third", "Third") as step:
            step.figures["x"] = 1

    for function in (broken, needs_first, third):
        journal.run(function)
    record = json.loads((tmp_path / "report.json").read_text())
    assert ran == []
    assert {n: (s["status"], s["error"]) for n, s in record["steps"].items()} == {
        "first": ("failed", "ValueError: no luck"), "second": ("skipped", "needs the step first, which did not finish"),
        "third": ("ok", None)}
    assert record["ok"] is False
