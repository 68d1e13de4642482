"""The flag score: the probability that a lesion needs a correction, learned on phantoms.

A lesion **needs a correction** when it is false (no true lesion under it), its extent is
wrong (Dice with its true lesion(s) < 0.5) or it merges true lesions or splits one
(:func:`napari_softseg.review.flag_fit.correction_labels`). The score is a logistic
regression ``σ(b + Σ w_j z_j)`` on standardised features ``z_j = (x_j − mean_j) / scale_j``
of the lesion **at the model's own threshold** (so it does not move with the threshold
slider), fitted on validation phantoms for one model
(:func:`napari_softseg.review.flag_fit.fit_flag_model`) and stored with it
(:mod:`napari_softseg.review.profile`). A second logistic model scores **candidates**, the
sub-threshold blobs of the soft map: the probability that one is a lesion the mask missed.

Features (:data:`FEATURES`; each weight is sign-constrained to the direction in which the
feature makes an error more likely, so the score responds monotonically and its reasons
read the right way):

* lesions: mean and peak probability (lower → worse), hard volume (log10 mm³, smaller →
  worse), |log(soft / hard volume)| (soft and hard volume disagree → worse), boundary
  sharpness (blurred → worse), the number of cores (parts above half the peak; several →
  worse: merged lesions), elongation (more → worse: merged lesions), mean entropy in bits
  (higher → worse); with MC-dropout or
  TTA samples also the IoU of the lesion across samples (lower → worse), its volume CV
  (higher → worse; undefined, i.e. no sample reproduces it, counts as :data:`CV_CAP`) and
  the fraction of samples that reproduce it (lower → worse);
* candidates: peak and mean probability, probability mass (log10 of Σp·mm³) and volume, all
  "higher → more likely a lesion", and with samples the fraction of samples in which the blob
  reaches the model's threshold.

Separate models are fitted per sampling kind (:data:`SAMPLINGS`: "none", "tta", "mc");
"mc+tta" uses the "mc" model; a kind without a model falls back to "none" (its features
ignore the samples). The **reason** of a score lists the features that push it up most
(contribution ``w_j z_j`` > 0, the strongest and any at least half as strong), in words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

#: flag models are fitted per sampling kind; see :func:`sampling_kind`
SAMPLINGS = ("none", "tta", "mc")
#: volume CV given to a lesion that no sample reproduces (CV undefined), and the cap of the CV
CV_CAP = 2.0
FORMAT = "napari-softseg-flags"


@dataclass(frozen=True)
class Feature:
    """One input of a flag model: how to word it and which way makes a positive more likely.

    ``sign`` +1: higher values raise the score (weight >= 0); -1: lower values raise it
    (weight <= 0). ``low``/``high``: words for a value below/above the fitted mean;
    ``show`` turns the raw feature back into the number shown in a reason.
    """

    name: str
    sign: int
    low: str
    high: str
    fmt: str = "{:.2f}"
    show: object = None  # callable(value) -> shown value, or None

    def words(self, z: float, value: float) -> str:
        shown = self.show(value) if self.show is not None else value
        return f"{self.high if z > 0 else self.low} ({self.fmt.format(shown)})"


def _pow10(v: float) -> float:
    return 10.0 ** v


def _ratio(v: float) -> float:
    return math.exp(v)


FEATURES: dict[str, Feature] = {f.name: f for f in (
    Feature("mean_p", -1, "low mean probability", "high mean probability"),
    Feature("max_p", -1, "low peak probability", "high peak probability"),
    Feature("log_volume", -1, "small", "large", "{:.1f} mm³", _pow10),
    Feature("volume_mismatch", +1, "soft and hard volume agree", "soft and hard volume disagree",
            "soft/hard x{:.2f}", _ratio),
    Feature("sharpness", -1, "blurred boundary", "sharp boundary"),
    Feature("cores", +1, "one core", "several cores (merged lesions?)", "{:.0f}"),
    Feature("elongation", +1, "round", "elongated (merged lesions?)", "x{:.1f}"),
    Feature("entropy", +1, "low entropy", "high entropy", "{:.2f} bits"),
    Feature("sample_iou", -1, "samples disagree on its outline", "samples agree on its outline", "IoU {:.2f}"),
    Feature("volume_cv", +1, "stable volume across samples", "volume varies across samples", "CV {:.2f}"),
    Feature("sample_hits", -1, "missing from some samples", "present in every sample", "{:.0%} of samples"),
    Feature("cand_max_p", +1, "low peak probability", "high peak probability"),
    Feature("cand_mean_p", +1, "low mean probability", "high mean probability"),
    Feature("cand_mass", +1, "little probability mass", "much probability mass", "{:.2f} mm³", _pow10),
    Feature("cand_volume", +1, "small", "large", "{:.1f} mm³", _pow10),
    Feature("cand_hits", +1, "below the threshold in every sample", "above the threshold in some samples",
            "{:.0%} of samples"),
)}
LESION_FEATURES = ("mean_p", "max_p", "log_volume", "volume_mismatch", "sharpness", "cores", "elongation", "entropy")
LESION_SAMPLE_FEATURES = ("sample_iou", "volume_cv", "sample_hits")
CANDIDATE_FEATURES = ("cand_max_p", "cand_mean_p", "cand_mass", "cand_volume")
CANDIDATE_SAMPLE_FEATURES = ("cand_hits",)


def sampling_kind(mc_samples: int = 0, tta: int = 0) -> str:
    """"none", "tta", "mc" or "mc+tta" for a prediction's MC-dropout draws and TTA views."""
    mc, views = int(mc_samples) > 0, int(tta) > 1
    return {(False, False): "none", (False, True): "tta", (True, False): "mc", (True, True): "mc+tta"}[(mc, views)]


def feature_names(what: str, sampling: str) -> tuple[str, ...]:
    """The features of the lesion (``what="lesion"``) or candidate model for a sampling kind."""
    base, extra = (LESION_FEATURES, LESION_SAMPLE_FEATURES) if what == "lesion" else \
        (CANDIDATE_FEATURES, CANDIDATE_SAMPLE_FEATURES)
    return base + (extra if sampling != "none" else ())


def lesion_features(records, names: Sequence[str]) -> np.ndarray:
    """``(n, len(names))`` feature matrix of lesion records (:class:`LesionRecord`)."""
    def row(r) -> list[float]:
        vol = max(r.hard_volume_mm3, 1e-6)
        cv = CV_CAP if not math.isfinite(r.volume_cv) else min(r.volume_cv, CV_CAP)
        values = {"mean_p": r.mean_probability, "max_p": r.max_probability, "log_volume": math.log10(vol),
                  "volume_mismatch": abs(math.log(max(r.soft_volume_mm3, 1e-6) / vol)),
                  "sharpness": r.sharpness, "cores": float(r.cores), "elongation": r.elongation,
                  "entropy": r.mean_entropy,
                  "sample_iou": r.sample_iou, "volume_cv": cv, "sample_hits": r.sample_hits}
        return [values[n] for n in names]

    return np.array([row(r) for r in records], dtype=np.float64).reshape(-1, len(names))


def candidate_features(records, names: Sequence[str]) -> np.ndarray:
    """``(n, len(names))`` feature matrix of candidate records (``sample_hits`` holds the
    fraction of samples in which the blob reaches the model's threshold)."""
    def row(r) -> list[float]:
        values = {"cand_max_p": r.max_probability, "cand_mean_p": r.mean_probability,
                  "cand_mass": math.log10(max(r.soft_volume_mm3, 1e-6)),
                  "cand_volume": math.log10(max(r.hard_volume_mm3, 1e-6)), "cand_hits": r.sample_hits}
        return [values[n] for n in names]

    return np.array([row(r) for r in records], dtype=np.float64).reshape(-1, len(names))


@dataclass
class Logistic:
    """A sign-constrained, L2-regularised logistic regression on standardised features."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    operating_point: float = 0.5
    info: dict = field(default_factory=dict)

    def z(self, x: np.ndarray) -> np.ndarray:
        x = np.where(np.isfinite(x), x, self.mean)  # a missing value counts as typical
        return (x - self.mean) / self.scale

    def score(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for the rows of ``x`` (``(n, k)``)."""
        return _sigmoid(self.z(np.atleast_2d(x)) @ self.weights + self.bias)

    def reasons(self, x: np.ndarray) -> list[str]:
        """The features that push each row's score up most, in words ('' when none does)."""
        x = np.atleast_2d(x)
        zs = self.z(x)
        out = []
        for row, zrow in zip(x, zs):
            contrib = self.weights * zrow
            top = float(contrib.max(initial=0.0))
            picked = [j for j in np.argsort(-contrib) if contrib[j] > 0 and contrib[j] >= 0.5 * top][:2]
            out.append(", ".join(FEATURES[self.features[j]].words(zrow[j], row[j]) for j in picked))
        return out

    def to_dict(self) -> dict:
        return {"features": list(self.features), "mean": _floats(self.mean), "scale": _floats(self.scale),
                "weights": _floats(self.weights), "bias": float(self.bias),
                "operating_point": float(self.operating_point), "info": self.info}

    @classmethod
    def from_dict(cls, d: dict) -> "Logistic":
        names = tuple(d["features"])
        unknown = [n for n in names if n not in FEATURES]
        if unknown:
            raise ValueError(f"unknown flag features {unknown}")
        arrays = [np.asarray(d[k], dtype=np.float64) for k in ("mean", "scale", "weights")]
        if any(a.shape != (len(names),) for a in arrays):
            raise ValueError("flag model arrays do not match its features")
        return cls(names, *arrays, float(d["bias"]), float(d.get("operating_point", 0.5)), dict(d.get("info", {})))

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, features: Sequence[str], *, l2: float = 1.0) -> "Logistic":
        """Fit on rows ``x`` (``(n, k)``) and labels ``y`` (1 = positive).

        Minimises the mean log-loss plus ``l2 / (2 n) · |w|²`` with each weight bounded to its
        feature's sign (L-BFGS-B); features are standardised by the training mean and
        standard deviation (missing values replaced by the mean).
        """
        from scipy.optimize import minimize

        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        mean = np.array([np.nanmean(c) if np.isfinite(c).any() else 0.0 for c in x.T])
        x = np.where(np.isfinite(x), x, mean)
        scale = x.std(axis=0)
        scale = np.where(scale > 1e-9, scale, 1.0)
        z = (x - mean) / scale
        n, k = z.shape
        signs = np.array([FEATURES[f].sign for f in features])

        def loss(theta):
            w, b = theta[:k], theta[k]
            s = z @ w + b
            p = _sigmoid(s)
            value = np.mean(np.logaddexp(0.0, s) - y * s) + 0.5 * l2 / n * (w @ w)
            g = p - y
            return value, np.concatenate([z.T @ g / n + l2 / n * w, [g.mean()]])

        bounds = [(0.0, None) if sg > 0 else (None, 0.0) for sg in signs] + [(None, None)]
        prior = np.clip(y.mean(), 1e-3, 1 - 1e-3)
        start = np.concatenate([np.zeros(k), [math.log(prior / (1 - prior))]])
        res = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds)
        return cls(tuple(features), mean, scale, res.x[:k].copy(), float(res.x[k]),
                   info={"n": int(n), "n_positive": int(y.sum()), "l2": l2})


@dataclass
class FlagModel:
    """The lesion and candidate flag models of one segmentation model, per sampling kind.

    ``candidate_floor``: candidates are components of ``soft >= candidate_floor`` that do
    not touch the mask; ``model_threshold``: the threshold the features were computed at
    (the segmentation model's own); ``label``: where the fit comes from, in words.
    """

    lesion: dict[str, Logistic]
    candidate: dict[str, Logistic]
    model_threshold: float
    candidate_floor: float
    label: str = ""
    info: dict = field(default_factory=dict)

    def lesion_model(self, sampling: str) -> Logistic | None:
        return self.lesion.get(fitted_kind(sampling, self.lesion)) if self.lesion else None

    def candidate_model(self, sampling: str) -> Logistic | None:
        return self.candidate.get(fitted_kind(sampling, self.candidate)) if self.candidate else None

    def rule(self, sampling: str = "none"):
        """The default :class:`~napari_softseg.review.lesions.FlagRule`: flag and list
        candidates at the fitted operating points for ``sampling``."""
        from napari_softseg.review.lesions import FlagRule

        les, cand = self.lesion_model(sampling), self.candidate_model(sampling)
        return FlagRule(flag_score=None if les is None else les.operating_point,
                        candidate_score=None if cand is None else cand.operating_point)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": 1, "label": self.label,
                "model_threshold": self.model_threshold, "candidate_floor": self.candidate_floor,
                "lesion": {k: m.to_dict() for k, m in self.lesion.items()},
                "candidate": {k: m.to_dict() for k, m in self.candidate.items()}, "info": self.info}

    @classmethod
    def from_dict(cls, d: dict) -> "FlagModel":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError("not a napari-softseg flag model")
        return cls({k: Logistic.from_dict(v) for k, v in d.get("lesion", {}).items()},
                   {k: Logistic.from_dict(v) for k, v in d.get("candidate", {}).items()},
                   float(d["model_threshold"]), float(d["candidate_floor"]), str(d.get("label", "")),
                   dict(d.get("info", {})))


def fitted_kind(sampling: str, models: dict) -> str:
    """The fitted kind used for ``sampling``: itself, "mc" for "mc+tta", else "none"."""
    if sampling in models:
        return sampling
    if sampling == "mc+tta" and "mc" in models:
        return "mc"
    return "none"


def _sigmoid(s):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(s, np.float64)))


def _floats(a) -> list[float]:
    return [float(v) for v in np.asarray(a, np.float64)]
