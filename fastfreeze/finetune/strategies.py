"""Freezing strategies for `fine_tune` (docs/schedules.md): which layer groups train when, and at which lrs.

A strategy turns `fine_tune(epochs, base_lr, ...)` into a list of `Phase`s; `fine_tune` runs each phase
as its own `fit_one_cycle` after `freeze_to(phase.freeze_to)` (phases are separate fits: the param
groups never change inside a fit). Built in, under `fine_tune(strategy=...)`, with G layer groups
(head last) and `disc(lr)` the discriminative lr spec of `fine_tune` (below):

- `None` (the default, `FastaiFineTune`): fastai's recipe, exactly: `freeze_epochs` epochs of the head
  only at `slice(base_lr)` (pct_start 0.99, div 25), then `epochs` epochs of all groups at `disc(base_lr/2)`
  (`freeze_epochs + epochs` in all).
- `'gentle'` (`Gentle`): fastai's recipe with the body as one group: the same frozen phase, then every body
  group at the first group's lr of `disc(base_lr/2)` and the head at base_lr/2 (fastai on a timm model).
- `'freeze'` (`Freeze`): `epochs` epochs of the head only.
- `'no_freeze'` (`NoFreeze`): `epochs` epochs of all groups.
- `('freeze_unfreeze', e)` (`FreezeUnfreeze`): the head only for epochs [0, e), all groups for [e, epochs).
- `('unfreeze_milestones', ((e1, e2), k))` (`UnfreezeMilestones`): the head only for [0, e1); the head and
  the last k body groups (groups G-1-k .. G-1: `freeze_to(G-1-k)`) for [e1, e2); all groups for [e2, epochs)
  (one phase from e1 when k is the whole body).
- `('gradual', k)` (`GradualUnfreezing`): ULMFiT's gradual unfreezing: the head only for k epochs, then
  one more group, from the head down, every k epochs until all groups train, which they do for the rest.
- `'lora'` (`finetune.lora.LoRA(freeze_epochs=freeze_epochs)`): fastai's recipe with LoRA adapters on the body
  in place of unfreezing: the same frozen phase, then `epochs` epochs of the adapters and the head at
  `disc(base_lr/2)`, the body's own weights frozen (docs/lora.md; resolved by `fine_tune`, as lora.py builds
  on this module).

Except the default, every phase is a one-cycle at `disc(base_lr)` with `fine_tune`'s `pct_start` and `div`,
and the epochs of all phases add up to `epochs`; phases of zero epochs are left out.

Learning rates: `disc(head_lr)` gives every group its own peak lr, the same in every phase it trains in:
`slice(head_lr/lr_mult, head_lr)` (geometric from the first group to the head), or with
`layer_decay=d` `lrs_decay(head_lr, d)` (group i: `head_lr * d**(G-1-i)`). Frozen groups are given their
lr too: it moves nothing except the normalization parameters that `train_bn` keeps training in frozen
groups (they train at their own group's lr).

A strategy of your own: subclass `Strategy` and yield `Phase`s::

    class HeadThenAll(Strategy):
        def phases(self, learn, epochs, base_lr, disc):
            yield Phase(2, learn.n_groups - 1, base_lr, "head")          # one float lr: every group
            yield Phase(epochs - 2, 0, disc(base_lr / 10), "all")       # discriminative lrs

    learn.fine_tune(5, strategy=HeadThenAll())
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

from ..core.lrs import LrSpec, expand_lrs, lrs_decay
from ..utils.checks import is_int

if TYPE_CHECKING:  # pragma: no cover
    from ..core.loop import BaseLearner

Discriminative = Callable[[float], LrSpec]  # head lr -> one lr spec for all groups


@dataclass(frozen=True)
class Phase:
    """One fit of a fine-tune: `epochs` epochs of one-cycle after `learn.freeze_to(freeze_to)`, with peak lrs
    `lr` (a float, a slice, one lr per group or `lrs_decay(...)`), labelled `label` in the Recorder.
    `pct_start` and `div` of the cycle default to `fine_tune`'s."""
    epochs: int
    freeze_to: int
    lr: LrSpec
    label: str
    pct_start: Optional[float] = None
    div: Optional[float] = None


class Strategy:
    """Base class of the freezing strategies: `phases` yields the `Phase`s of `fine_tune(epochs, base_lr)`.

    `disc(head_lr)` is the per-group lr spec that `fine_tune`'s `lr_mult` / `layer_decay` give for a head
    lr (`slice(head_lr/lr_mult, head_lr)` or `lrs_decay(head_lr, layer_decay)`); use it, or any lr spec.
    """

    def prepare(self, learn: "BaseLearner") -> None:
        """Called by `fine_tune` once before `phases` (and before a resume loads its checkpoint): a strategy that
        changes the model (LoRA adds adapters) does it here. Does nothing by default."""

    def phases(self, learn: "BaseLearner", epochs: int, base_lr: float, disc: Discriminative) -> Iterable[Phase]:
        raise NotImplementedError(f"{type(self).__name__} must define phases(learn, epochs, base_lr, disc)")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def phase_label(frozen: int, n_groups: int) -> str:
    """'unfrozen' (all groups train), 'frozen' (the head only) or 'unfrozen from group k'."""
    if frozen == 0:
        return "unfrozen"
    if frozen == n_groups - 1:
        return "frozen"
    return f"unfrozen from group {frozen}"


def _check_epochs(name: str, value: Any, low: int = 0) -> int:
    if not is_int(value) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


class FastaiFineTune(Strategy):
    """fastai's `fine_tune` (docs/schedules.md), the default: `freeze_epochs` head-only epochs at `slice(base_lr)`
    (pct_start 0.99, div 25), then `epochs` epochs of all groups at `disc(base_lr / 2)`."""

    def __init__(self, freeze_epochs: int = 1):
        self.freeze_epochs = _check_epochs("freeze_epochs", freeze_epochs)

    def phases(self, learn: "BaseLearner", epochs: int, base_lr: float, disc: Discriminative) -> Iterator[Phase]:
        if self.freeze_epochs > 0:
            yield Phase(self.freeze_epochs, learn.n_groups - 1, slice(base_lr), "frozen", pct_start=0.99, div=25.0)
        yield Phase(epochs, 0, self.unfrozen_lrs(base_lr, learn.n_groups, disc), "unfrozen")

    @staticmethod
    def unfrozen_lrs(base_lr: float, n_groups: int, disc: Discriminative) -> Any:
        """The unfrozen phase's lrs: `disc(base_lr / 2)`."""
        return disc(base_lr / 2)


class Gentle(FastaiFineTune):
    """fastai's `fine_tune` as fastai runs it on a timm model, whose body is one layer group (`'gentle'`): the
    same frozen phase, then every body group at the first group's lr of `disc(base_lr / 2)` (base_lr/2/lr_mult)
    and the head at base_lr/2 (docs/few-shot.md compares it with the default)."""

    @staticmethod
    def unfrozen_lrs(base_lr: float, n_groups: int, disc: Discriminative) -> list[float]:
        """The unfrozen phase's lrs: `[lo] * (n_groups - 1) + [base_lr / 2]`, lo the first group's lr of
        `disc(base_lr / 2)`."""
        low = expand_lrs(disc(base_lr / 2), n_groups)[0]
        return [low] * (n_groups - 1) + [base_lr / 2]


class KeepProbe(Strategy):
    """No phase: the head fitted as a probe on cached features is the result (the body is not trained)."""

    def phases(self, learn: "BaseLearner", epochs: int, base_lr: float, disc: Discriminative) -> Iterator[Phase]:
        return iter(())

    def __repr__(self) -> str:
        return "KeepProbe()"


class Freeze(Strategy):
    """The body stays frozen: `epochs` epochs of the head only."""

    def phases(self, learn: "BaseLearner", epochs: int, base_lr: float, disc: Discriminative) -> Iterator[Phase]:
        yield from _milestone_phases(learn, epochs, base_lr, disc, [(0, learn.n_groups - 1)])


class NoFreeze(Strategy):
    """Everything trains from the start: `epochs` epochs of all groups."""

    def phases(self, learn: "BaseLearner", epochs: int, base_lr: float, disc: Discriminative) -> Iterator[Phase]:
        yield from _milestone_phases(learn, epochs, base_lr, disc, [(0, 0)])


class FreezeUnfreeze(Strategy):
    """The head only for epochs [0, unfreeze_epoch), then all groups until `epochs` (Lightning Flash's
    'freeze_unfreeze')."""

    def __init__(self, unfreeze_epoch: int):
        self.unfreeze_epoch = _check_epochs("the unfreeze epoch of 'freeze_unfreeze'", unfreeze_epoch)

    def phases(self, learn: "BaseLearner", epochs: int, base_lr: float, disc: Discriminative) -> Iterator[Phase]:
        if self.unfreeze_epoch > epochs:
            raise ValueError(f"('freeze_unfreeze', {self.unfreeze_epoch}) unfreezes after the last of {epochs} epochs: "
                             f"the unfreeze epoch must be in [0, {epochs}]")
        yield from _milestone_phases(learn, epochs, base_lr, disc,
                                     [(0, learn.n_groups - 1), (self.unfreeze_epoch, 0)])


class UnfreezeMilestones(Strategy):
    """The head only for epochs [0, e1), the head and the last `n_body_groups` body groups for [e1, e2)
    (`freeze_to(G-1-n_body_groups)`), all groups for [e2, epochs) (Lightning Flash's 'unfreeze_milestones',
    with layer groups for Flash's layers)."""

    def __init__(self, milestones: tuple[int, int], n_body_groups: int):
        if not isinstance(milestones, (tuple, list)) or len(milestones) != 2:
            raise ValueError(f"unfreeze_milestones takes ((e1, e2), k), got milestones {milestones!r}")
        e1, e2 = (_check_epochs("an unfreeze milestone", e) for e in milestones)
        if e1 > e2:
            raise ValueError(f"unfreeze milestones must be in order (e1 <= e2), got {milestones!r}")
        self.milestones = (e1, e2)
        self.n_body_groups = _check_epochs("the number of body groups of 'unfreeze_milestones'", n_body_groups, low=1)

    def phases(self, learn: "BaseLearner", epochs: int, base_lr: float, disc: Discriminative) -> Iterator[Phase]:
        e1, e2 = self.milestones
        g, k = learn.n_groups, self.n_body_groups
        if e2 > epochs:
            raise ValueError(f"unfreeze milestones {self.milestones} go past the last of {epochs} epochs")
        if k > g - 1:
            raise ValueError(f"'unfreeze_milestones' unfreezes the last {k} body groups, but this learner has "
                             f"{g - 1} body groups (and the head): k must be in [1, {g - 1}]")
        yield from _milestone_phases(learn, epochs, base_lr, disc, [(0, g - 1), (e1, g - 1 - k), (e2, 0)])


class GradualUnfreezing(Strategy):
    """ULMFiT's gradual unfreezing: the head only for `every` epochs, then one more group (from the head
    down) every `every` epochs until all G groups train, which they do for the remaining epochs.
    Group j (0-based, j < G-1) starts training at epoch `(G-1-j) * every`; phases past `epochs` are cut."""

    def __init__(self, every: int = 1):
        self.every = _check_epochs("the epochs per step of 'gradual'", every, low=1)

    def phases(self, learn: "BaseLearner", epochs: int, base_lr: float, disc: Discriminative) -> Iterator[Phase]:
        g = learn.n_groups
        yield from _milestone_phases(learn, epochs, base_lr, disc,
                                     [(step * self.every, g - 1 - step) for step in range(g)])


def _milestone_phases(learn: "BaseLearner", epochs: int, base_lr: float, disc: Discriminative,
                      milestones: list[tuple[int, int]]) -> Iterator[Phase]:
    """Phases from `(start_epoch, frozen_groups)` milestones (increasing start epochs): each lasts until the
    next milestone that changes the freezing, or `epochs`; phases of zero epochs (or starting at or after
    `epochs`) are left out."""
    _check_epochs("epochs", epochs)
    changes = [m for i, m in enumerate(milestones) if i == 0 or m[1] != milestones[i - 1][1]]
    starts = [start for start, _ in changes] + [epochs]
    for (start, frozen), end in zip(changes, starts[1:]):
        end = min(end, epochs)
        if end > start:
            yield Phase(end - start, frozen, disc(base_lr), phase_label(frozen, learn.n_groups))


StrategySpec = Union[None, str, tuple, Strategy]

_FORMS = ("None (fastai's recipe), 'gentle', 'freeze', 'no_freeze', ('freeze_unfreeze', e), "
          "('unfreeze_milestones', ((e1, e2), k)), ('gradual', k), 'lora' or a Strategy object")


def resolve_strategy(spec: StrategySpec, freeze_epochs: int = 1) -> Strategy:
    """The `Strategy` for `fine_tune(strategy=spec)` (`freeze_epochs` is used by the default only)."""
    if spec is None:
        return FastaiFineTune(freeze_epochs)
    if isinstance(spec, Strategy):
        return spec
    if spec == "gentle":
        return Gentle(freeze_epochs)
    if spec == "freeze":
        return Freeze()
    if spec == "no_freeze":
        return NoFreeze()
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        name, arg = spec
        if name == "freeze_unfreeze":
            return FreezeUnfreeze(arg)
        if name == "unfreeze_milestones":
            if not isinstance(arg, (tuple, list)) or len(arg) != 2:
                raise ValueError(f"'unfreeze_milestones' takes ((e1, e2), k), got {arg!r}")
            return UnfreezeMilestones(arg[0], arg[1])
        if name == "gradual":
            return GradualUnfreezing(arg)
    raise ValueError(f"unknown fine_tune strategy {spec!r}: use {_FORMS}")


def discriminative(lr_mult: float = 100, layer_decay: Optional[float] = None) -> Discriminative:
    """`head_lr -> lr spec` for all groups: `slice(head_lr/lr_mult, head_lr)`, or with `layer_decay`
    `lrs_decay(head_lr, layer_decay)` (group i of G: `head_lr * layer_decay**(G-1-i)`)."""
    if layer_decay is not None:
        if not 0 < layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1] (e.g. 0.75), got {layer_decay}")
        return lambda head_lr: lrs_decay(head_lr, layer_decay)
    if not lr_mult >= 1:
        raise ValueError(f"lr_mult must be >= 1 (the head lr over the first group's; 1 gives every group the head's "
                         f"lr), got {lr_mult}")
    return lambda head_lr: slice(head_lr / lr_mult, head_lr)
