"""The review half of the Segment dock: flag rule, lesion table, navigation and decisions.

The panel only shows and collects; the Segment dock owns the :class:`~napari_softseg.review.session.Review`
and reacts to the panel's signals. For a tissue model (:data:`napari_softseg.review.session.TARGETS`)
it shows the structure's volumes and uncertainty instead of the lesion table
(:meth:`ReviewPanel.set_target`).
"""

from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPushButton, QToolButton, QVBoxLayout, QWidget

from napari_softseg.review.session import DECISIONS
from napari_softseg.widgets.segment.flag_rule import FlagRuleEditor
from napari_softseg.widgets.segment.lesion_table import LesionTableWidget
from napari_softseg.widgets.segment.controls import fixed_lines

#: keyboard shortcuts of the viewer while the dock is open
NEXT_KEY, PREVIOUS_KEY = "N", "Shift-N"


def unbind_keys(viewer, keys) -> None:
    """Remove the dock's key bindings from the viewer (when the dock is closed)."""
    for key in keys:
        try:
            viewer.bind_key(key, None)
        except (KeyError, ValueError, RuntimeError):
            pass


class ReviewPanel(QWidget):
    """Flag-rule editor, lesion table, previous/next flagged, accept/reject/edit and comment."""

    decision_requested = Signal(str)  # a key of DECISIONS
    edit_requested = Signal()
    comment_changed = Signal(str)
    step_requested = Signal(int)  # +1 next flagged, -1 previous flagged

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        self._build_rule(lay)
        self.summary = QLabel("No lesions yet: click Segment.")
        fixed_lines(self.summary, 2)
        lay.addWidget(self.summary)
        self.structure = QLabel()
        self.structure.setWordWrap(True)
        self.structure.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.structure.setVisible(False)
        lay.addWidget(self.structure)
        self.table = LesionTableWidget()
        lay.addWidget(self.table, 1)
        self._build_navigation(lay)
        self._build_decisions(lay)
        self.set_selection(None)
        self.target = "lesions"

    def _build_rule(self, lay) -> None:
        self.rule_toggle = QToolButton()
        self.rule_toggle.setText("Flag rule: when a lesion deserves a second look")
        self.rule_toggle.setCheckable(True)
        self.rule_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.rule_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.rule_toggle.setAutoRaise(True)
        self.rule_toggle.setToolTip("Show the criteria that flag a lesion (any one suffices); the defaults are "
                                    "explained in each criterion's tooltip.")
        self.rule = FlagRuleEditor()
        self.rule.setVisible(False)
        self.rule_toggle.toggled.connect(self._toggle_rule)
        lay.addWidget(self.rule_toggle)
        lay.addWidget(self.rule)

    def _build_navigation(self, lay) -> None:
        nav = QHBoxLayout()
        self.previous_button = QPushButton("◀ Previous flagged")
        self.previous_button.setToolTip(f"Go to the previous flagged lesion in table order (shortcut {PREVIOUS_KEY} in the viewer).")
        self.next_button = QPushButton("Next flagged ▶")
        self.next_button.setToolTip(f"Go to the next flagged lesion in table order (shortcut {NEXT_KEY} in the viewer).")
        nav.addWidget(self.previous_button)
        nav.addWidget(self.next_button)
        self._navigation = QWidget()
        self._navigation.setLayout(nav)
        nav.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self._navigation)
        self.previous_button.clicked.connect(lambda: self.step_requested.emit(-1))
        self.next_button.clicked.connect(lambda: self.step_requested.emit(1))

    def _build_decisions(self, lay) -> None:
        row = QHBoxLayout()
        self.accept_button = QPushButton("Accept")
        self.reject_button = QPushButton("Reject")
        self.edit_button = QPushButton("Edit")
        self.reset_button = QPushButton("Undecide")
        self.accept_button.setToolTip(f"Accept the selected lesion: {DECISIONS['accepted']}.")
        self.reject_button.setToolTip(f"Reject the selected lesion: {DECISIONS['rejected']}.")
        self.edit_button.setToolTip("Correct the selected lesion's outline: the mask layer is selected in paint "
                                    "mode; paint (P) adds voxels, the eraser (E) removes them, Ctrl+Z undoes. "
                                    "Lesions you paint on are marked 'edited'.")
        self.reset_button.setToolTip(f"Set the selected lesion back to pending: {DECISIONS['pending']}.")
        for b in (self.accept_button, self.reject_button, self.edit_button, self.reset_button):
            row.addWidget(b)
        self._decisions = QWidget()
        self._decisions.setLayout(row)
        row.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self._decisions)
        self.comment = QLineEdit()
        self.comment.setPlaceholderText("Comment on the selected lesion (kept in the export)")
        lay.addWidget(self.comment)
        self.accept_button.clicked.connect(lambda: self.decision_requested.emit("accepted"))
        self.reject_button.clicked.connect(lambda: self.decision_requested.emit("rejected"))
        self.reset_button.clicked.connect(lambda: self.decision_requested.emit("pending"))
        self.edit_button.clicked.connect(self.edit_requested.emit)
        self.comment.editingFinished.connect(lambda: self.comment_changed.emit(self.comment.text()))

    def _toggle_rule(self, shown: bool) -> None:
        self.rule.setVisible(shown)
        self.rule_toggle.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    def set_selection(self, lesion_id: int | None, comment: str = "") -> None:
        """Enable the decision buttons for a selected lesion and show its comment."""
        on = lesion_id is not None
        for b in (self.accept_button, self.reject_button, self.edit_button, self.reset_button, self.comment):
            b.setEnabled(on)
        self.comment.blockSignals(True)
        self.comment.setText(comment if on else "")
        self.comment.blockSignals(False)

    def set_target(self, target: str) -> None:
        """Show the lesion review ("lesions") or the structure summary ("tissue")."""
        self.target = target
        lesions = target == "lesions"
        for w in (self.rule_toggle, self.table, self._navigation, self._decisions, self.comment):
            w.setVisible(lesions)
        self.rule.setVisible(lesions and self.rule_toggle.isChecked())
        self.structure.setVisible(not lesions)

    def set_summary(self, review) -> None:
        if review is None or review.table is None:
            self.summary.setText("No lesions yet: click Segment.")
            return
        s = review.summary()
        if review.target == "tissue":
            self.summary.setText(f"A tissue model: the structure as a whole, at threshold {review.threshold:.2f} "
                                 "(no lesion table).")
            self.structure.setText(structure_text(s["structure"]))
            return
        d = s["decisions"]
        possible = f", <b>{s['n_candidates']}</b> possible" if s["n_candidates"] else ""
        self.summary.setText(
            f"<b>{s['n_lesions']}</b> lesions at threshold {review.threshold:.2f}, <b>{s['n_flagged']}</b> flagged"
            f"{possible} · accepted {d['accepted']}, rejected {d['rejected']}, edited {d['edited']} · final "
            f"{s['final_volume_mm3']:.0f} mm³")


def structure_text(st: dict) -> str:
    """The structure summary of a tissue model, as rich text lines."""
    def pct(v) -> str:
        return "–" if v is None else f"{100 * v:.1f} %"

    lines = [f"<b>Hard volume</b> (p ≥ {st['threshold']:.2f}): {st['hard_volume_mm3']:,.0f} mm³ "
             f"({st['hard_voxels']:,} voxels)",
             f"<b>Soft volume</b> (Σp): {st['soft_volume_mm3']:,.0f} mm³",
             f"<b>Unsure voxels</b> (0.2 ≤ p < 0.8): {st['boundary_volume_mm3']:,.0f} mm³, "
             f"{pct(st['boundary_fraction'])} of the hard volume",
             "<b>Mean entropy</b> (p ≥ 0.05): " + ("–" if st["mean_entropy_bits"] is None
                                                  else f"{st['mean_entropy_bits']:.2f} bits")]
    if st.get("n_samples"):
        lines.append(f"<b>Across {st['n_samples']} samples</b>: hard volume CV {pct(st.get('hard_volume_cv'))}, "
                     f"soft volume CV {pct(st.get('soft_volume_cv'))}, IoU of the masks "
                     + ("–" if st.get("sample_iou") is None else f"{st['sample_iou']:.2f}"))
    return "<br>".join(lines)
