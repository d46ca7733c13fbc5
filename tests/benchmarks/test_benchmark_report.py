"""The report builder turns results JSON into markdown tables and a verdict that follows the numbers."""

from __future__ import annotations

import json

from benchmarks.report import build_report, curve_comparison_by_cpu, verdict


def _write(folder, name, data):
    (folder / f"{name}.json").write_text(json.dumps(data), encoding="utf-8")


def test_report_has_the_table_rows_and_a_verdict_from_the_numbers(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    summary_u = {"dice/all_mean": 0.61, "mAP@0.10": 0.2, "AUC": 0.4, "hd95/liver": 12.5, "click_dice/mean": 0.3}
    summary_b = {"dice/all_mean": 0.55, "mAP@0.10": 0.35, "AUC": 0.7, "hd95/liver": 20.0}
    _write(results, "quality", {
        "mode": "full", "budget_cpu_s": 60.0, "threads": 2, "test_cases": 16, "training_items": 40,
        "unlabeled_items": 8, "unimed": {"run": {"steps": 50}, "summary": summary_u},
        "baselines": {"runs": {"segmentation": {"steps": 20, "items": 16}}, "summary": summary_b},
        "headline": {"segmentation": {"metric": "dice/all_mean", "unimed": 0.61, "baseline": 0.55},
                     "detection": {"metric": "mAP@0.10", "unimed": 0.2, "baseline": 0.35}},
    })  # fmt: skip
    _write(results, "claims", {"mode": "full", "budget_cpu_s": 60.0, "rows": [
        {"claim": "unlabeled data helps", "metric": "AUC", "a": "with MVM", "a_value": 0.6, "b": "without",
         "b_value": 0.5, "difference": 0.1, "ratio": 1.2, "note": "10 labeled"}]})  # fmt: skip
    _write(results, "speed", {
        "mode": "quick", "threads": 2, "repeats": 3, "weights": "random initialisation",
        "machine": {"cpus": 2, "processor": "x86_64", "platform": "Linux"},
        "inference": [{"model": "unimed", "shape": [64, 64, 64], "latency_s": 0.5, "peak_rss_mib": 700.0,
                       "inference_mib": 80.0, "parts_s": {}},
                      {"model": "baselines", "shape": [64, 64, 64], "latency_s": 1.5, "peak_rss_mib": 900.0,
                       "inference_mib": 200.0, "parts_s": {"segmentation": 0.4}}],
        "ratios": [{"shape": [64, 64, 64], "latency_baselines_over_unimed": 3.0, "peak_baselines_over_unimed": 1.29}],
        "training_samples_per_s": {"unimed": 2.0, "segmentation": 0.7},
        "torchrun_cpu": {"1": {"median_step_s": 1.0, "samples_per_s": 2.0},
                         "2": {"median_step_s": 1.2, "samples_per_s": 3.3}, "speedup_2_vs_1": 1.65},
    })  # fmt: skip
    out = tmp_path / "docs" / "benchmarks.md"
    text = build_report(results, out)
    assert out.read_text(encoding="utf-8") == text
    for name in ("quality.png", "speed.png"):
        assert (out.parent / "benchmarks" / name).stat().st_size > 1000
        assert f"![{name}](benchmarks/{name})" in text
    assert "| dice/all_mean | 0.610 | 0.550 | 1.11 |" in text
    assert "| hd95/liver | 12.500 | 20.000 | 0.62 |" in text
    assert "| click_dice/mean | 0.300 | n/a | n/a |" in text
    assert "| 64x64x64 | unimed | 0.500 | 700.000 | 80.000 |  |" in text
    assert "| 64x64x64 | 3.000 | 1.290 |" in text
    assert "Speed-up 2 vs 1 process: 1.65x" in text
    wins, losses = text.split("UniMed wins:")[1].split("UniMed loses")
    assert "segmentation (dice/all_mean, full mode): UniMed 0.610 vs baseline 0.550 (+0.060)" in wins
    assert "detection (mAP@0.10, full mode)" in losses and "detection" not in wins
    assert "unlabeled data helps" in wins and "latency at 64x64x64: baselines take 3.00x" in wins


def test_quick_mode_is_shown_as_a_smoke_run_and_left_out_of_the_verdict():
    from benchmarks.report import _quality, verdict

    quality = {"mode": "quick", "budget_cpu_s": 45.0, "threads": 2, "test_cases": 16, "training_items": 32,
               "unlabeled_items": 8, "unimed": {"run": {"steps": 24}, "summary": {"dice/all_mean": 0.0}},
               "baselines": {"runs": {}, "summary": {"dice/all_mean": 0.06}},
               "headline": {"segmentation": {"metric": "dice/all_mean", "unimed": 0.0, "baseline": 0.06}}}  # fmt: skip
    claims = {"mode": "quick", "rows": [{"claim": "tasks help each other", "metric": "AUC", "a": "joint",
              "a_value": 0.7, "b": "alone", "b_value": 0.4, "difference": 0.3}]}  # fmt: skip
    assert _quality(quality)[0] == "## Smoke run (quick mode): UniMed and MONAI's single-task models"
    text = "\n".join(verdict(quality, claims, None))
    assert "segmentation" not in text and "tasks help each other" not in text
    assert (
        "Not judged (a smoke run of the machinery, not a comparison): quality (quick mode), claims (quick mode)" in text
    )


def test_report_without_results_still_writes_a_page(tmp_path):
    text = build_report(tmp_path, tmp_path / "b.md", plots=False)
    assert text.startswith("# UniMed benchmarks") and "nothing measured" in text


def test_verdict_calls_differences_under_the_tolerance_even():
    from benchmarks.report import METRIC_TOLERANCE, RATIO_TOLERANCE, verdict

    headline = {"metric": "AUC", "unimed": 0.50, "baseline": 0.50 + METRIC_TOLERANCE / 2}
    clear = {"metric": "dice/all_mean", "unimed": 0.80, "baseline": 0.50}
    ratios = [{"shape": [64, 64, 64], "latency_baselines_over_unimed": 1 + RATIO_TOLERANCE / 2,
               "peak_baselines_over_unimed": 2.0}]  # fmt: skip
    text = "\n".join(
        verdict({"headline": {"classification": headline, "segmentation": clear}}, None, {"ratios": ratios})
    )
    wins, rest = text.split("UniMed loses")
    assert "segmentation (dice/all_mean)" in wins and "peak memory at 64x64x64" in wins
    even = rest.split("No measurable difference")[1]
    assert "classification (AUC)" in even and "latency at 64x64x64" in even
    chance = {"metric": "AUC", "unimed": 0.38, "baseline": 0.46}  # a gap of 0.08 between two coin flips
    text = "\n".join(verdict({"headline": {"classification": chance}}, None, None))
    assert (
        "classification (AUC): UniMed 0.380 vs baseline 0.460 (-0.080) (both at chance"
        in text.split("No measurable")[1]
    )


def test_report_shows_the_component_threshold_choice(tmp_path):
    found = {"mAP@0.10": 0.24, "recall@0.10": 0.33, "AP@0.10/cyst": 0.39, "AP@0.10/tumor": 0.09}
    (tmp_path / "component_threshold.json").write_text(json.dumps({
        "weights_sha256": "d3a4c1f7" + "0" * 56, "chosen": "score >= 0.2",
        "splits": {"test": {"label volume": {**found, "mAP@0.10": 0.09}, "score >= 0.2": found}}}))  # fmt: skip
    text = build_report(tmp_path, tmp_path / "b.md", plots=False)
    assert "chosen: **score >= 0.2**" in text and "`d3a4c1f7…`" in text
    assert "| test | label volume | 0.090 |" in text and "| test | score >= 0.2 | 0.240 |" in text


def test_report_shows_the_reporting_cut_and_its_froc(tmp_path):
    rows = [{"cut": 0.1, "sensitivity": 0.7, "fp_per_scan": 2.8, "detections_per_scan": 4.1},
            {"cut": 0.3, "sensitivity": 0.6, "fp_per_scan": 0.9, "detections_per_scan": 2.0}]  # fmt: skip
    (tmp_path / "reporting_cut.json").write_text(json.dumps({
        "weights_sha256": "d1f3a99c" + "0" * 56, "iou": 0.1, "fp_per_scan_budget": 1.0, "component_threshold": 0.1,
        "chosen": 0.3, "sets": {"test": {"scans": 16, "lesions": 27, "rows": rows}}}))  # fmt: skip
    text = build_report(tmp_path, tmp_path / "b.md", plots=False)
    assert "chosen: **score >= 0.3**" in text and "`d1f3a99c…`" in text
    assert "| test (16 scans, 27 lesions) | 0.300 | 0.600 | 0.900 | 2.000 |" in text


def test_report_shows_the_seeds_spread_of_unimeds_curve(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    spread = {"runs": ["curve_s0", "curve_s1", "curve_s2"], "seeds": [0, 1, 2], "step": 600,
              "metrics": {"organ Dice": {"mean": 0.65, "sd": 0.05, "min": 0.6, "max": 0.7, "n": 3},
                          "lesion mAP@0.1 (score map)": None}}  # fmt: skip
    _write(results, "learning_curve", {"rows": [], "seed_spread": [spread]})
    text = build_report(results, tmp_path / "benchmarks.md", plots=False)
    assert "## UniMed's learning curve" in text
    assert "| curve_s0, curve_s1, curve_s2 | 600 | 3 | 0.650 ± 0.050 (0.600-0.700) | n/a | n/a | n/a |" in text


def test_curve_is_also_compared_at_equal_cpu_time_with_unimeds_latest_snapshot_within_it():
    curve = {"rows": [{"task": "segmentation", "model": "segresnet", "step": s, "cpu_seconds": c, "organ Dice": d}
                      for s, c, d in ((10, 30.0, 0.1), (150, 120.0, 0.6), (300, 1200.0, 0.7))]}  # fmt: skip
    unimed = {"rows": [{"run": "a", "step": s, "cpu_seconds": c, "organ Dice": d}
                       for s, c, d in ((300, 60.0, 0.3), (600, 110.0, 0.5), (2400, 600.0, 0.8))]
              + [{"run": "b", "step": 300, "cpu_seconds": 5000.0, "organ Dice": 0.9}]}  # fmt: skip
    pairs = dict(curve_comparison_by_cpu(curve, unimed))
    assert list(pairs) == ["equal CPU time, 0.5 CPU-min", "equal CPU time, 2.0 CPU-min", "equal CPU time, 20.0 CPU-min"]
    assert [h["unimed"] for h in pairs["equal CPU time, 2.0 CPU-min"].values()] == [0.5]  # not step 2400's 0.8
    assert [h["unimed"] for h in pairs["equal CPU time, 20.0 CPU-min"].values()] == [0.8]  # run b is over budget
    text = "\n".join(verdict(None, None, None, curve_headlines=list(pairs.items())))
    assert (
        "segmentation, segresnet step 300 vs UniMed a step 2400 (dice/organs_mean, learning curve at equal CPU "
        "time, 20.0 CPU-min): UniMed 0.800 vs baseline 0.700" in text
    )
    assert "segresnet step 150 vs UniMed a step 600" in text.split("UniMed loses")[1]  # 0.5 against 0.6: a loss
    assert "Not compared (no UniMed measurement at that budget)" in text
    assert "segresnet step 10 vs UniMed (no snapshot yet)" in text
