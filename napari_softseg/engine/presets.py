"""Training presets: label mode + final activation + loss, as compared in the papers.

SoftSeg (Gros, Lemay & Cohen-Adad, MedIA 2021, Table 4.2) compares five binary candidates,
named *Labels-Activation-Loss*:

==================  ========  =========  =============  ==========================
key                 labels    activation loss           note
==================  ========  =========  =============  ==========================
``softseg``         soft      NormReLU   Adaptive Wing  Soft-ReLU-Wing, the default
``conventional``    hard      sigmoid    Dice           Hard-Sig-Dice, the baseline
``hard-relu-wing``  hard      NormReLU   Adaptive Wing
``soft-relu-dice``  soft      NormReLU   Dice
``soft-sig-wing``   soft      sigmoid    Adaptive Wing
==================  ========  =========  =============  ==========================

The label-fusion study (Lemay et al., MELBA 2022) adds a multi-class pair: softmax + Dice
versus multi-class NormReLU + Adaptive Wing. Multi-class networks have a background
channel first (``1 + K`` outputs, see :meth:`Preset.out_channels`).

"hard" means the labels are binarised at 0.5 *after* augmentation; "soft" means they never are.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from napari_softseg.errors import UserError
from napari_softseg.engine.losses import LOSSES
from napari_softseg.engine.model import ACTIVATIONS, is_multiclass

__all__ = ["Preset", "PRESETS", "DEFAULT_PRESET", "get_preset"]

LABEL_MODES = ("soft", "hard")


@dataclass(frozen=True)
class Preset:
    """One training recipe.

    Attributes
    ----------
    name : str
        Registry key (``"softseg"``, ...).
    title : str
        The paper's name (``"Soft-ReLU-Wing"``).
    label_mode : ``"soft"`` or ``"hard"``
        Keep interpolated labels soft, or binarise them at 0.5 after augmentation.
    activation : str
        Key of :data:`napari_softseg.engine.model.ACTIVATIONS`.
    loss : str
        Key of :data:`napari_softseg.engine.losses.LOSSES`.
    description : str
        One line for menus and ``--help``.
    """

    name: str
    title: str
    label_mode: str
    activation: str
    loss: str
    description: str

    def __post_init__(self) -> None:
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"preset {self.name}: label_mode must be 'soft' or 'hard'")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"preset {self.name}: unknown activation {self.activation!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"preset {self.name}: unknown loss {self.loss!r}")

    @property
    def soft_labels(self) -> bool:
        return self.label_mode == "soft"

    @property
    def multiclass(self) -> bool:
        """Outputs include a background channel 0 and the classes sum to one (decided by the
        activation, :func:`napari_softseg.engine.model.is_multiclass`)."""
        return is_multiclass(self.activation)

    @property
    def norm_scope(self) -> str:
        """The scope of the :class:`~napari_softseg.engine.model.NormReLU` of a new network:
        ``"batch"`` for the ``normrelu`` presets (trained with the batch-wide maximum,
        predicting with a stored normaliser), ``"slice"`` for the others (which have none)."""
        return "batch" if self.activation == "normrelu" else "slice"

    @property
    def dropout(self) -> float:
        """Dropout of a new network: 0 for the ``normrelu`` presets, 0.3 (the paper's) for the
        others. Measured (spinal-cord grey matter, 5 folds, uniform loss): with dropout 0.3 a
        NormReLU network collapsed to an all-zero output in 2 of 5 folds -- in training mode its
        batch maximum stayed positive only through upward dropout fluctuations, while in eval
        mode no voxel was positive from epoch 5 on -- and in 0 of 5 without (0 of 10 with
        :class:`~napari_softseg.engine.losses.ScoreMargin` as well), Dice rising from about 28 to
        80 %; on the lesion phantom dropout also left a low-p haze on the
        background (15 % of background voxels positive in training mode). A network without
        dropout gives no Monte-Carlo dropout samples (use test-time augmentation)."""
        return 0.0 if self.norm_scope == "batch" else 0.3

    def make_activation(self) -> nn.Module:
        """A fresh instance of the final activation (NormReLU: its default ``"slice"`` scope;
        a network builds its own with :attr:`norm_scope`)."""
        return ACTIVATIONS[self.activation]()

    def make_loss(self, **kwargs) -> nn.Module:
        """A fresh loss with the papers' defaults (Adaptive Wing: ω=8, θ=0.5, ε=1, α=2.1,
        weighted loss map W=10, τ=0.2);
        keyword arguments override them (e.g. ``reduction="sum"``)."""
        return LOSSES[self.loss](**kwargs)

    def out_channels(self, n_structures: int = 1) -> int:
        """Network outputs for ``n_structures`` foreground classes (``+1`` background if multi-class)."""
        return n_structures + 1 if self.multiclass else n_structures


_ALL = (
    Preset("softseg", "Soft-ReLU-Wing", "soft", "normrelu", "adaptive_wing",
           "SoftSeg: soft labels, normalised ReLU, Adaptive Wing loss (default)."),
    Preset("conventional", "Hard-Sig-Dice", "hard", "sigmoid", "dice",
           "Conventional baseline: binary labels, sigmoid, Dice loss."),
    Preset("hard-relu-wing", "Hard-ReLU-Wing", "hard", "normrelu", "adaptive_wing",
           "Binary labels with SoftSeg's normalised ReLU and Adaptive Wing loss."),
    Preset("soft-relu-dice", "Soft-ReLU-Dice", "soft", "normrelu", "dice",
           "Soft labels, normalised ReLU, Dice loss."),
    Preset("soft-sig-wing", "Soft-Sig-Wing", "soft", "sigmoid", "adaptive_wing",
           "Soft labels, sigmoid, Adaptive Wing loss."),
    Preset("multiclass-softmax-dice", "Multi-class Softmax-Dice", "hard", "softmax", "dice",
           "Multi-class baseline: binary labels per class, softmax, Dice loss."),
    Preset("multiclass-softseg", "Multi-class Soft-ReLU-Wing", "soft", "multiclass_normrelu", "adaptive_wing",
           "Multi-class SoftSeg: soft labels, multi-class normalised ReLU, Adaptive Wing loss."),
)

#: key -> preset.
PRESETS: dict[str, Preset] = {p.name: p for p in _ALL}
DEFAULT_PRESET = "softseg"


def get_preset(name: str | Preset) -> Preset:
    """Look a preset up by key (a :class:`Preset` is returned as is)."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise UserError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.") from None
