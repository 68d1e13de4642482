"""Flag quality: does the learned flag score point at the lesions that need a correction?

On **unseen** varied phantoms (``build_phantom(seed, vary=True)``, seeds :data:`SEEDS`, none
used by the model's training or by ``scripts/fit_flags.py``), the shipped ``ms-lesion``
model with the flag model stored for it (:mod:`napari_softseg.review.profile`), for each
sampling kind (no samples, 4 test-time-augmentation views, 5 MC-dropout draws):

* **lesion flags**: AUROC of the flag score for "this lesion needs a correction" (false,
  Dice with its true lesion < 0.5, merge or split; :mod:`napari_softseg.review.flag_fit`),
  the share of those lesions flagged at the fitted operating point (recall) and the share of
  correct lesions flagged (false-flag rate);
* **candidates**: the share of the true lesions the mask misses that a listed possible-lesion
  row recovers, and the false candidates per scan;
* **time** per scan: the prediction, and the review (lesion analysis, flags and candidates).

Bars (issue "review that points at the errors"): AUROC >= 0.85, recall >= 80 %, false-flag
rate <= 30 %, candidate recall >= 50 %, <= 3 false candidates per scan. ``--quick``: the
sample phantom's lesion slices, no samples and 2 TTA views (a smoke test of the pipeline;
its numbers mean little).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks import _common as C

SEEDS = tuple(range(20260101, 20260107))
BARS = {"auroc": 0.85, "recall": 0.80, "false_flag_rate": 0.30, "candidate_recall": 0.50, "false_per_scan": 3.0}


def _quick_cases(model, flags_floor: float) -> list:
    """The sample phantom's lesion slices, without samples and with 2 TTA views."""
    from types import SimpleNamespace

    from napari_softseg.engine.predict import predict_volume
    from napari_softseg.io.nifti import read_nifti
    from napari_softseg.io.phantom import Lesion, phantom_files
    from napari_softseg.review.flag_fit import case_data, phantom_truth_labels

    files = phantom_files()
    image, truth = read_nifti(files["image"]), read_nifti(files["truth"]).data.astype(np.float32)
    info = json.loads(files["lesions"].read_text())
    lesions = [Lesion(**{k: d[k] for k in ("id", "centre", "semi_axes", "rotation", "faint", "touching")})
               for d in info["lesions"]]
    labels = phantom_truth_labels(SimpleNamespace(truth=truth, lesions=lesions))
    z = np.flatnonzero(labels.any(axis=(0, 1)))
    sl = slice(max(int(z.min()) - 1, 0), int(z.max()) + 2)
    img, labels = np.ascontiguousarray(image.data[:, :, sl]), np.ascontiguousarray(labels[:, :, sl])
    threshold = float(model.softseg_config["threshold"])
    cases = []
    for sampling, kw in (("none", {}), ("tta", {"tta": 2})):
        t0 = time.perf_counter()
        pred = predict_volume(model, img, spacing=image.spacing, return_prediction=True, **kw)
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        case = case_data("sample phantom", pred.soft, labels, threshold=threshold, floor=flags_floor,
                         spacing=image.spacing, samples=pred.samples, sampling=sampling, seconds={"predict": seconds})
        case.seconds["features"] = time.perf_counter() - t1
        cases.append(case)
    return cases


def _bars(results: dict) -> list[dict]:
    out = []
    for sampling, r in results.items():
        les, cand = r.get("lesions") or {}, r.get("candidates") or {}
        for key, value, limit, upper in (
                ("flag AUROC", les.get("auroc"), BARS["auroc"], False),
                ("recall of lesions needing a correction", les.get("recall"), BARS["recall"], False),
                ("correct lesions flagged", les.get("false_flag_rate"), BARS["false_flag_rate"], True),
                ("missed lesions recovered by candidates", cand.get("recall"), BARS["candidate_recall"], False),
                ("false candidates per scan", cand.get("false_per_scan"), BARS["false_per_scan"], True)):
            ok = None if value is None or not math.isfinite(value) else (value <= limit if upper else value >= limit)
            out.append({"bar": f"{sampling}: {key} {'<=' if upper else '>='} {limit:g}", "value": value,
                        "limit": limit, "met": ok, "detail": C.fmt(value)})
    return out


def run(quick: bool = False, out_dir: Path = C.RESULTS) -> dict:
    from napari_softseg.engine.predict import MODELS_DIR, load_model
    from napari_softseg.review.flag_fit import evaluate_flags, phantom_cases
    from napari_softseg.review.profile import review_profile

    C.set_threads(1 if quick else C.THREADS)
    out_dir = Path(out_dir)
    model = load_model("ms-lesion")
    profile = review_profile(model.softseg_config, MODELS_DIR / "ms-lesion.pt")
    flags = profile.flags
    t0 = time.perf_counter()
    cases = _quick_cases(model, flags.candidate_floor) if quick else \
        phantom_cases(model, SEEDS, floor=flags.candidate_floor, report=lambda s: print(s, flush=True))
    results = evaluate_flags(flags, cases)
    for sampling, r in results.items():
        cs = [c for c in cases if c.sampling == sampling]
        r["predict_s_per_scan"] = statistics.mean(c.seconds["predict"] for c in cs)
        r["review_s_per_scan"] = statistics.mean(c.seconds["features"] for c in cs)
    result = {"quick": quick, "model": "ms-lesion", "flags": flags.label, "flags_source": profile.flags_source,
              "seeds": [] if quick else list(SEEDS), "threads": 1 if quick else C.THREADS,
              "seconds": time.perf_counter() - t0, "by_sampling": results, "bars": _bars(results)}
    C.write_json(out_dir / "flags.json", result)
    C.write_text(out_dir / "flags.md", _markdown(result))
    return result


def _markdown(r: dict) -> str:
    pct = lambda v: "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.0f} %"  # noqa: E731
    rows = []
    for sampling, s in r["by_sampling"].items():
        les, cand = s.get("lesions") or {}, s.get("candidates") or {}
        rows.append([sampling, f"{les.get('n', 0)} ({les.get('n_needs_correction', 0)})", C.fmt(les.get("auroc")),
                     f"{C.fmt(les.get('operating_point'))}", pct(les.get("recall")), pct(les.get("false_flag_rate")),
                     f"{cand.get('recovered', 0)} / {cand.get('n_missed', 0)}", C.fmt(cand.get("false_per_scan")),
                     f"{s['predict_s_per_scan']:.1f} s", f"{s['review_s_per_scan']:.2f} s"])
    head = ["sampling", "lesions (need a correction)", "flag AUROC", "operating point", "flagged of those",
            "correct ones flagged", "missed lesions recovered", "false candidates / scan", "predict / scan",
            "review / scan"]
    scans = "the sample phantom's lesion slices (quick)" if r["quick"] else \
        f"{len(r['seeds'])} unseen varied phantoms (seeds {r['seeds'][0]}–{r['seeds'][-1]})"
    lines = ["## Flag quality", "", f"`ms-lesion` on {scans}, {r['threads']} torch thread(s); flag model: "
             f"{r['flags']} ({r['flags_source']}).", "", C.md_table(head, rows), "Bars:", ""]
    lines += [f"- {b['bar']}: {b['detail']} — {'met' if b['met'] else 'not met' if b['met'] is False else 'n/a'}"
              for b in r["bars"]]
    lines += ["", f"Total {r['seconds']:.0f} s on a shared machine (timings are indicative)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from benchmarks.run_all import bench_cli

    raise SystemExit(bench_cli(__doc__, run, "flags"))
