"""The "Rater fusion" dock: fuse two or more raters of one scan in a worker thread.

Inputs are rater layers (confidence levels, used as ``level / 10``), other Labels layers
(binary masks: non-zero is foreground), soft-map Image layers (values in [0, 1]) and rater
files. Every input must lie on the reference grid (the chosen scan, else the first rater).
Results are added as layers aligned with the reference: the fused soft map (Image, contrast
0-1), the hard consensus (Labels) and the disagreement map (entropy of the rater average,
in bits: 0 where the raters agree, 1 where two binary raters split evenly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QListWidget, QListWidgetItem,
    QPushButton, QTableWidget, QTableWidgetItem,
)

from napari_softseg.errors import UserError
from napari_softseg.fusion.methods import METHODS, disagreement_map, fuse, rater_statistics
from napari_softseg.io.nifti import nifti_stem, read_nifti
from napari_softseg.io import geometry
from napari_softseg.io.nifti import ScanGeometry
from napari_softseg.labels.levels import levels_to_soft
from napari_softseg.plugin import roles
from napari_softseg.plugin.notify import notify_error
from napari_softseg.plugin.planes import layer_frame
from napari_softseg.widgets.base import DockBase, frame_kwargs, layer_geometry, same_grid, true_affine, widget_row

#: World-coordinate tolerance (mm) when checking that two grids coincide.
GRID_ATOL = 1e-3


@dataclass
class RaterInput:
    """One rater to fuse: a layer's array (copied) or a file, with its grid."""

    name: str
    kind: str  # "levels", "mask", "soft" or "file"
    data: np.ndarray | None = None
    path: Path | None = None
    shape: tuple | None = None
    affine: np.ndarray | None = None

    def load(self) -> np.ndarray:
        """The rater as a binary mask or a float32 soft map in [0, 1]."""
        if self.kind == "levels":
            return levels_to_soft(self.data)
        if self.kind == "mask":
            return (np.asarray(self.data) != 0).astype(np.uint8)
        if self.kind == "soft":
            return np.clip(np.asarray(self.data, dtype=np.float32), 0.0, 1.0)
        vol = read_nifti(self.path)
        data = np.asarray(vol.data)
        if data.dtype == bool or np.issubdtype(data.dtype, np.integer):
            values = np.unique(data)
            if not np.all(np.isin(values, (0, 1))):
                raise UserError(f"{self.path.name} holds integer labels {values[:6].tolist()}, not a "
                                "binary or soft rater mask.")
            return data.astype(np.uint8)
        return np.clip(data.astype(np.float32), 0.0, 1.0)


def input_from_layer(layer, reference=None) -> RaterInput | None:
    """How a layer can be fused, or None when it cannot (3-D only). Its grid is its file's
    affine; a layer on the ``reference`` layer's grid (:func:`same_grid`) gets the reference's."""
    from napari.layers import Labels

    if layer.ndim != 3:
        return None
    affine = true_affine(reference if reference is not None and same_grid(layer, reference) else layer)
    if isinstance(layer, Labels):
        kind = "levels" if roles.is_rater(layer) else "mask"
    elif roles.is_soft_map(layer):
        kind = "soft"
    else:
        return None
    return RaterInput(layer.name, kind, data=layer.data, shape=tuple(layer.data.shape), affine=affine)


def input_from_file(path) -> RaterInput:
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
    except Exception:
        read_nifti(path)  # raises the one-sentence UserError
        raise
    shape = tuple(int(s) for s in img.shape[:3])
    return RaterInput(nifti_stem(path), "file", path=path, shape=shape, affine=np.asarray(img.affine, float))


def check_grid(inputs: list[RaterInput], ref_name: str, ref_shape, ref_affine) -> None:
    """Raise :class:`UserError` naming the first rater that is not on the reference grid."""
    for inp in inputs:
        if tuple(inp.shape) != tuple(ref_shape):
            raise UserError(f"Rater {inp.name!r} has shape {tuple(inp.shape)} but {ref_name} is "
                            f"{tuple(ref_shape)}; fused raters must share the scan's grid.")
        diff = float(np.max(np.abs(np.asarray(inp.affine) - np.asarray(ref_affine))))
        if diff > GRID_ATOL:
            raise UserError(f"Rater {inp.name!r} is not aligned with {ref_name}: their voxel-to-world "
                            f"transforms differ by up to {diff:.3g} mm.")


def fusion_job(inputs: list[RaterInput], method: str, spacing):
    """Generator for a worker: yields progress text, returns ``("ok", result, disagreement,
    rows)`` or ``("error", message)`` — it never raises, so no traceback reaches the user."""
    try:
        raters = []
        for k, inp in enumerate(inputs, 1):
            yield f"Reading rater {k}/{len(inputs)}: {inp.name}"
            raters.append(inp.load())
        yield f"Fusing {len(raters)} raters ({METHODS[method].label})…"
        result = fuse(raters, method)
        yield "Disagreement map…"
        dis = disagreement_map(raters)
        rows = rater_statistics(raters, result, names=[i.name for i in inputs], spacing=spacing)
        return ("ok", result, dis, rows)
    except UserError as err:
        return ("error", str(err))
    except MemoryError:
        return ("error", "Not enough memory to fuse these raters.")
    except Exception as err:  # a bug: still one sentence, never a traceback dialog
        return ("error", f"Fusion failed ({type(err).__name__}: {err}).")


def disagreement_colormap():
    """Transparent where raters agree, cyan (distinct from the soft-map ramp) up to 1 bit."""
    from napari.utils.colormaps import Colormap

    colors = [[0.0, 0.0, 0.0, 0.0], [0.0, 0.45, 0.9, 0.55], [0.3, 1.0, 1.0, 1.0]]
    return Colormap(colors=colors, controls=[0.0, 0.25, 1.0], name="softseg-disagreement")


class FusionWidget(DockBase):
    """Fuse rater layers or files (average, majority, STAPLE, soft STAPLE) into new layers."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.worker = None
        self.last = None  # (FusionResult, disagreement, rows) of the last run
        self.frame: dict = {}  # display placement of the reference grid (affine, axis labels, units)
        self._files: list[RaterInput] = []
        self._seen: set[str] = set()
        g = self.group("Raters of one scan")
        self.list = QListWidget()
        self.list.setMinimumHeight(90)
        self.list.setMaximumHeight(140)
        g.addWidget(self.list)
        row = QHBoxLayout()
        add = QPushButton("Add rater files…")
        add.clicked.connect(self._add_files_dialog)
        row.addWidget(add)
        row.addWidget(QLabel("Reference:"))
        self.reference = QComboBox()
        row.addWidget(self.reference, 1)
        g.addLayout(row)

        g = self.group("Method")
        self.method = QComboBox()
        for name, cls in METHODS.items():
            self.method.addItem(cls.label, name)
        self.method.setCurrentIndex(list(METHODS).index("staple"))
        self.run_button = QPushButton("Fuse")
        self.run_button.clicked.connect(self.start)
        g.addLayout(widget_row(self.method, self.run_button))

        g = self.group("Raters against the consensus")
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["Rater", "Sens.", "Spec.", "Dice %", "mm³"])
        self.table.horizontalHeaderItem(1).setToolTip("STAPLE sensitivity")
        self.table.horizontalHeaderItem(2).setToolTip("STAPLE specificity")
        self.table.horizontalHeaderItem(3).setToolTip("Dice of the rater (>= 0.5) against the hard consensus")
        self.table.horizontalHeaderItem(4).setToolTip("Rater volume (>= 0.5), mm³")
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        g.addWidget(self.table)
        self.finish_layout()
        ev = self.viewer.layers.events
        for e in (ev.inserted, ev.removed, ev.moved):
            e.connect(self.refresh)
        self.refresh()

    # ------------------------------------------------------------------ inputs
    def refresh(self, event=None) -> None:
        """Rebuild the rater list and the reference choices. Ticks are kept; a rater seen for
        the first time is ticked when it is a rater layer, a mask or a file (not results)."""
        ticked = {self.list.item(i).text() for i in range(self.list.count())
                  if self.list.item(i).checkState() == Qt.CheckState.Checked}
        self.list.clear()
        entries = []
        for layer in self.viewer.layers:
            inp = input_from_layer(layer)
            if inp is not None:
                auto = inp.kind in ("levels", "mask") and not roles.is_fusion_result(layer)
                entries.append((f"{layer.name}  [{inp.kind}]", ("layer", layer.name), auto))
        entries += [(f"{inp.name}  [file]", ("file", str(inp.path)), True) for inp in self._files]
        for text, key, auto in entries:
            self._add_item(text, key, text in ticked if text in self._seen else auto)
            self._seen.add(text)
        keep = self.reference.currentText()
        self.reference.clear()
        self.reference.addItem("(first rater)", None)
        for layer in self.viewer.layers:
            if roles.is_scan(layer):
                self.reference.addItem(layer.name, layer.name)
        i = self.reference.findText(keep)
        self.reference.setCurrentIndex(i if i >= 0 else (1 if self.reference.count() > 1 else 0))

    def _add_item(self, text: str, key, checked: bool) -> None:
        item = QListWidgetItem(text)
        item.setData(Qt.ItemDataRole.UserRole, key)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
        self.list.addItem(item)

    def select(self, names) -> None:
        """Tick exactly the raters named (layer names or file stems)."""
        names = set(names)
        for i in range(self.list.count()):
            item = self.list.item(i)
            key = item.data(Qt.ItemDataRole.UserRole)
            name = key[1] if key[0] == "layer" else nifti_stem(key[1])
            item.setCheckState(Qt.CheckState.Checked if name in names else Qt.CheckState.Unchecked)

    def add_files(self, paths) -> None:
        """Add rater files (their grids are checked when fusing)."""
        for p in paths:
            inp = input_from_file(p)
            if all(f.path != inp.path for f in self._files):
                self._files.append(inp)
        self.refresh()

    def inputs(self) -> tuple[list[RaterInput], str, tuple, np.ndarray, ScanGeometry | None]:
        """The ticked raters (arrays copied) and the reference grid (its true affine); raises
        UserError. The reference's display placement is kept in ``self.frame``."""
        chosen = []
        layers = {lay.name: lay for lay in self.viewer.layers}
        files = {str(f.path): f for f in self._files}
        ref_name = self.reference.currentData()
        ref_layer = layers.get(ref_name) if ref_name else None
        for i in range(self.list.count()):
            item = self.list.item(i)
            if item.checkState() != Qt.CheckState.Checked:
                continue
            kind, key = item.data(Qt.ItemDataRole.UserRole)
            if kind == "file":
                chosen.append(files[key])
            elif key in layers:
                inp = input_from_layer(layers[key], ref_layer)
                inp.data = np.array(inp.data, copy=True)  # painting may go on during the fusion
                ref_layer = ref_layer if ref_layer is not None else layers[key]  # "(first rater)"
                chosen.append(inp)
        if len(chosen) < 2:
            raise UserError("Tick at least two raters to fuse.")
        geo = None
        if ref_name and ref_name in layers:
            ref = layers[ref_name]
            geo = layer_geometry(ref)
            shape, affine, label = tuple(ref.data.shape), geo.affine, f"the scan {ref_name!r}"
            self.frame = frame_kwargs(ref)
        else:
            first = chosen[0]
            shape, affine, label = tuple(first.shape), np.asarray(first.affine), f"rater {first.name!r}"
            self.frame = layer_frame(affine)
            if first.kind != "file" and first.name in layers:
                geo = layer_geometry(layers[first.name])
                self.frame = frame_kwargs(layers[first.name])
        check_grid(chosen, label, shape, affine)
        return chosen, label, shape, affine, geo

    # ------------------------------------------------------------------ run
    def start(self):
        """Check the inputs and fuse them in a napari worker thread; returns the worker."""
        from napari.qt.threading import thread_worker

        try:
            job = self._job()
        except UserError as err:
            notify_error(str(err))
            return None
        self.run_button.setEnabled(False)
        worker = thread_worker(fusion_job, start_thread=False)(*job)
        worker.yielded.connect(self.say)
        worker.returned.connect(self._finished)
        worker.finished.connect(lambda: self.run_button.setEnabled(True))
        self.worker = worker
        worker.start()
        return worker

    def run_now(self):
        """The same as :meth:`start` without a thread (scripts and tests)."""
        gen = fusion_job(*self._job())
        try:
            while True:
                self.say(next(gen))
        except StopIteration as stop:
            return self._finished(stop.value)

    def _job(self) -> tuple:
        """The arguments of :func:`fusion_job` for the ticked raters; keeps what the results need."""
        chosen, _, _, affine, geo = self.inputs()
        method = self.method.currentData()
        spacing = geometry.spacing(affine)
        self._pending = (chosen, affine, geo, method, self._prefix(), dict(self.frame))
        return chosen, method, spacing

    def _finished(self, outcome):
        if outcome[0] == "error":
            notify_error(outcome[1])
            self.say(outcome[1])
            return None
        _, result, dis, rows = outcome
        chosen, affine, geo, method, prefix, frame = self._pending
        self.last = (result, dis, rows)
        self._show_layers(result, dis, affine, geo, method, len(chosen), prefix, frame)
        self._show_table(rows)
        it = f", {result.iterations} EM iterations" if result.iterations is not None else ""
        self.say(f"Fused {len(chosen)} raters with {METHODS[method].label}{it}.")
        return self.last

    def _prefix(self) -> str:
        return self.reference.currentData() or "raters"

    def _show_layers(self, result, dis, affine, geo, method, n, prefix, frame) -> None:
        """Add (or update) the fused map, the consensus and the disagreement, named after the
        method so that fusing with another method adds layers next to the first ones."""
        from napari_softseg.plugin.layers import soft_colormap

        meta = {}
        if geo is not None and geo.header is not None and np.allclose(geo.affine, affine, atol=GRID_ATOL):
            meta = {"affine": np.asarray(geo.affine).tolist(), "shape": list(geo.shape),
                    "nifti_header": geo.header.copy(), "source_path": None}
        specs = [
            (f"{prefix} fused ({method})", result.soft.astype(np.float32), "image", roles.FUSED,
             dict(colormap=soft_colormap(), contrast_limits=(0.0, 1.0), blending="translucent", opacity=0.8)),
            (f"{prefix} consensus ({method})", result.hard.astype(np.uint8), "labels", roles.CONSENSUS,
             dict(opacity=0.5)),
            (f"{prefix} disagreement ({method})", dis.astype(np.float32), "image", roles.DISAGREEMENT,
             dict(colormap=disagreement_colormap(), contrast_limits=(0.0, 1.0),
                  blending="translucent", opacity=0.9)),
        ]
        for name, data, kind, role, kwargs in specs:
            md = dict(meta, **{roles.ROLE_KEY: role, "softseg_fusion": {"method": method, "n_raters": n}})
            old = [lay for lay in self.viewer.layers if lay.name == name and roles.role(lay) == role]
            if old and old[0].data.shape == data.shape:
                old[0].data = data
                old[0].affine = frame["affine"]
                old[0].metadata = md
                if role == roles.FUSED:
                    old[0].contrast_limits = (0.0, 1.0)
                continue
            add = self.viewer.add_image if kind == "image" else self.viewer.add_labels
            add(data, name=name, metadata=md, **frame, **kwargs)

    def _show_table(self, rows) -> None:
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            sens = row.get("sensitivity")
            spec = row.get("specificity")
            vals = [row["name"], "-" if sens is None else f"{sens:.4f}", "-" if spec is None else f"{spec:.4f}",
                    f"{row['dice']:.1f}", f"{row['volume_mm3']:.0f}"]
            for c, text in enumerate(vals):
                item = QTableWidgetItem(text)
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, item)

    def _add_files_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Add rater files", "", "NIfTI (*.nii *.nii.gz)")
        if paths:
            try:
                self.add_files(paths)
            except UserError as err:
                notify_error(str(err))
