"""Editing the lesion flag rule (:class:`napari_softseg.review.lesions.FlagRule`) in the Segment dock.

Every criterion has a check box (on/off) and a value, with a tooltip that explains what
it measures and why the default is sensible. The first two are the learned scores, whose
values the dock sets to the model's fitted operating points
(:meth:`FlagRuleEditor.set_scores`); the others are hand rules, off by default.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QDoubleSpinBox, QGridLayout, QWidget

from napari_softseg.review.lesions import FlagRule


@dataclass(frozen=True)
class Criterion:
    field: str
    label: str
    minimum: float
    maximum: float
    step: float
    decimals: int
    fallback: float  # value shown when the default rule disables the criterion
    tooltip: str


CRITERIA: tuple[Criterion, ...] = (
    Criterion("flag_score", "flag score ≥", 0.0, 1.0, 0.01, 2, 0.5,
              "Flag lesions whose flag score reaches this value. The score is the probability that the lesion "
              "needs a correction (a false lesion, a wrong outline, a merge or a split), learned on validation "
              "phantoms for the model from its probabilities, size, boundary, entropy and, with MC dropout / TTA, "
              "the agreement of the samples, at the model's own threshold (the slider does not change it).\n"
              "Default: the model's fitted operating point (set when you choose the model and the sampling)."),
    Criterion("candidate_score", "possible lesion ≥", 0.0, 1.0, 0.01, 2, 0.5,
              "List sub-threshold blobs of the soft map whose possible-lesion score (the learned probability "
              "that the mask missed a lesion there) reaches this value, as 'possible lesion' rows: not in the "
              "mask unless you accept them.\n"
              "Default: the model's fitted operating point (at most about 2 false candidates per scan on the "
              "validation phantoms)."),
    Criterion("min_mean_probability", "mean probability <", 0.0, 1.0, 0.05, 2, 0.6,
              "Flag lesions whose mean predicted probability is below this value.\n"
              "Off by default (it flagged every lesion of the shipped lesion model); 0.6: a lesion that only just passes the threshold on average is one the model "
              "is unsure about (the soft map of a clear lesion is near 1 in its core)."),
    Criterion("max_mean_entropy", "mean entropy >", 0.0, 1.0, 0.05, 2, 0.72,
              "Flag lesions whose mean voxel entropy (bits; at most 1 at p = 0.5) exceeds this.\n"
              "Off by default: it mostly repeats the mean-probability criterion; 0.72 bits means p "
              "between about 0.2 and 0.8 on average."),
    Criterion("min_sample_iou", "sample IoU <", 0.0, 1.0, 0.05, 2, 0.5,
              "Flag lesions whose outline changes across MC-dropout / test-time-augmentation samples:\n"
              "IoU of the lesion's structure in every sample (intersection over union). Needs samples.\n"
              "Off by default; 0.5 (Nair et al. 2020; ivadomed): below it the samples disagree on more than "
              "half of the lesion."),
    Criterion("max_volume_cv", "volume CV >", 0.0, 5.0, 0.05, 2, 0.3,
              "Flag lesions whose volume varies across samples: coefficient of variation (std / mean).\n"
              "Needs samples. Off by default; 0.3: a 30 % spread of the volume between samples."),
    Criterion("min_volume_mm3", "volume (mm³) <", 0.0, 10000.0, 1.0, 1, 3.0,
              "Flag lesions smaller than this hard volume.\n"
              "Off by default; 3 mm³: below about three 1 mm voxels a lesion is indistinguishable from noise "
              "(MS guidelines count lesions of 3 mm diameter and more)."),
)


class FlagRuleEditor(QWidget):
    """Check boxes and spin boxes for each :class:`FlagRule` criterion; emits ``changed``."""

    changed = Signal()

    def __init__(self, rule: FlagRule | None = None, parent=None) -> None:
        super().__init__(parent)
        rule = rule or FlagRule()
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(6)
        grid.setVerticalSpacing(2)
        self._boxes: dict[str, tuple[QCheckBox, QDoubleSpinBox]] = {}
        for i, c in enumerate(CRITERIA):
            value = getattr(rule, c.field)
            check = QCheckBox(c.label)
            spin = QDoubleSpinBox()
            spin.setRange(c.minimum, c.maximum)
            spin.setSingleStep(c.step)
            spin.setDecimals(c.decimals)
            spin.setValue(c.fallback if value is None else float(value))
            check.setChecked(value is not None)
            spin.setEnabled(value is not None)
            for w in (check, spin):
                w.setToolTip(c.tooltip)
            check.toggled.connect(spin.setEnabled)
            check.toggled.connect(lambda *_: self.changed.emit())
            spin.valueChanged.connect(lambda *_: self.changed.emit())
            grid.addWidget(check, i // 2, 2 * (i % 2))
            grid.addWidget(spin, i // 2, 2 * (i % 2) + 1)
            self._boxes[c.field] = (check, spin)
        assert {f.name for f in fields(FlagRule)} >= set(self._boxes)

    def controls(self) -> dict[str, tuple[QCheckBox, QDoubleSpinBox]]:
        """``{FlagRule field: (on/off check box, value spin box)}`` of every criterion."""
        return dict(self._boxes)

    def set_scores(self, flag_score: float | None, candidate_score: float | None) -> None:
        """Set (and switch on; None: off) the two score criteria, emitting ``changed`` once."""
        for name, value in (("flag_score", flag_score), ("candidate_score", candidate_score)):
            check, spin = self._boxes[name]
            for w in (check, spin):
                w.blockSignals(True)
            check.setChecked(value is not None)
            spin.setEnabled(value is not None)
            if value is not None:
                spin.setValue(float(value))
            for w in (check, spin):
                w.blockSignals(False)
        self.changed.emit()

    def rule(self) -> FlagRule:
        values = {name: (float(spin.value()) if check.isChecked() else None)
                  for name, (check, spin) in self._boxes.items()}
        return FlagRule(**values)
