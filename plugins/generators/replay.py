"""Replay: a generator that trains nothing and returns real training images, with designed label noise and a
designed subgroup shift, so that its ``q_t`` and ``u_t`` (SPEC §4) are known before they are measured.

It is the instrument for two jobs: **calibrating** the harness's ``q_t`` / ``u_t`` measurements (measured values
must match the design values within sampling and oracle error), and **designed studies** of Zhang et al.'s
conjecture, where ``1 − q_t`` and ``u_t`` are set on a grid instead of being whatever a trained generator gives.
With ``flip = shift = 0`` and ``loop.labeler = "previous_classifier"`` it is Wyllie et al.'s SeqClass (real images,
labels from the previous classifier; ``configs/seqclass.toml``, with ``shortfall = "borrow"``).

**The pool** (what :meth:`Replay.fit` keeps): the real images of its training set ``D_{t-1}`` (``origin = 0``),
i.e. ``D_real`` in the ``stack`` and ``accumulate`` regimes, so every generation replays the same source and the
design values do not drift. When ``D_{t-1}`` holds no real image (regime ``replace`` from generation 2 on) the pool
is every image given, with the labels it carries (possibly the previous classifier's) and, for the harness's
synthetic images, unknown subgroups (``-1``): the replay then replays the previous replay, flips compound, and
``shift`` has no subgroup to act on (those classes are replayed unshifted; ``target_subgroup_per_class`` records
``-1``). ``pool_size`` keeps a stratified random subset (exact quotas per class × subgroup cell) instead.

**Sampling**, for the requested labels (``n_c`` images of class ``c``), all as integer quotas, so the design
fractions are hit exactly up to rounding (largest remainder, ties broken at random):

1. Class ``c``'s subgroup mix is moved toward its target subgroup: ``p'_c = (1 − shift) · p_c + shift · e_target``,
   with ``p_c`` the pool's subgroup distribution of class ``c`` and target its majority subgroup (ties: the lower
   index) or ``target_subgroup``. Unknown subgroups form one extra category that ``p_c`` includes.
   The ``n_c`` images get subgroup quotas ``round(n_c · p'_c)``.
2. ``round(flip · N)`` of the ``N`` images (split over classes in proportion to ``n_c``, then over each class's
   subgroup quotas in proportion) are **flipped**: drawn from another class, spread evenly over the other classes.
   ``flip_subgroup = "keep"`` (default): a flipped image keeps the subgroup its quota gave it (an image of another
   class *in the conditioning class's colour*), so the conditioning class's subgroup mix stays exactly ``p'_c``
   and ``u`` does not depend on ``flip``; where no other class has that subgroup it falls back to ``"source"``:
   the flipped image follows its own class's mix ``p_{c'}`` (a uniform draw from that class). For ``per_class``
   datasets, where subgroup ``g`` means something else in every class, use ``"source"``.
3. Each (class, subgroup) cell of the pool serves its quota without replacement when it holds enough images,
   otherwise (``shortfall = "repeat"``) every image once per full pass and a random subset for the rest.
   ``shortfall = "borrow"`` serves such excess requests with other cells' unused images instead (counted as
   flips when they come from another class), repeating only once the whole pool is used: asked for ``|pool|``
   images it returns every pool image exactly once, whatever the pool's class counts — what SeqClass needs
   when the pool's labels are the previous classifier's. A requested class absent from the pool is served
   entirely by other classes' images (counted as flips).

**Design values** (:meth:`Replay.design`, recorded in the fit statistics; :attr:`Replay.last_draw` holds the exact
values of the last :meth:`Replay.sample`): ``q`` = the fraction of images drawn from their conditioning class (what
an error-free oracle measures); ``u`` = the mean over classes of the total-variation distance between the known
subgroups of the images conditioned on ``c`` and the pool's ``p_c`` (what ``u_t`` measures when subgroups are
observed without error and the pool is ``D_real``). With ``flip_subgroup = "keep"`` these are ``q = 1 − flip`` and
``u_c = shift · (1 − p_{target,c})``; with ``"source"`` flipped images pull class ``c``'s mix toward the other
classes' and ``u`` includes that. The measured ``q_t`` is this ``q`` seen through the oracle's errors (docs).

**State**: the pool itself, ``pool.images`` (uint8) ``pool.labels``, ``pool.subgroups`` — ``P × C × H × W`` bytes:
9.4 MB for the embedded 4,000 Colorized MNIST digits, 141 MB for all 60,000 (use ``pool_size`` for sweeps).
All randomness comes from torch's global generator.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field

from harness.errors import ConfigError
from harness.imageset import ImageSet
from harness.interfaces import Generator, Options


def allocate(totals: torch.Tensor, weights: torch.Tensor, *, integer: bool = True) -> torch.Tensor:
    """Split each row's total in proportion to that row's weights: ``B`` totals, ``B×M`` weights → ``B×M``.

    ``integer``: largest-remainder counts summing exactly to the totals (ties broken at random with torch's global
    generator); otherwise the exact fractional shares. Rows whose weights sum to 0 get nothing.
    """
    w = weights.double().clamp_min(0)
    s = w.sum(1, keepdim=True)
    share = torch.where(s > 0, w / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(w))
    exact = totals.double().unsqueeze(1) * share
    if not integer:
        return exact
    base = torch.floor(exact)
    short = (totals.double() * (s.squeeze(1) > 0) - base.sum(1)).round().long()  # ≥ 0 per row
    remainder = torch.round((exact - base) * 1e9)  # equal remainders compare equal despite float noise
    b, m = w.shape
    shuffle = torch.rand(b, m).argsort(1)  # random order first, so equal remainders are broken at random
    order = shuffle.gather(1, torch.argsort(-remainder.gather(1, shuffle), dim=1, stable=True))
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(m).expand(b, m).contiguous())
    return (base + (rank < short.unsqueeze(1)).double() * (share > 0)).long()


class Replay(Generator):
    """Returns real images of its training set with designed label noise and subgroup shift; see the module doc."""

    class Options(Options):
        """``flip`` lowers ``q``, ``shift`` raises ``u``; both 0 is plain replay (SeqClass with relabelling)."""

        flip: float = Field(0.0, ge=0.0, le=1.0, description="fraction of images drawn from another class")
        shift: float = Field(
            0.0, ge=0.0, le=1.0, description="fraction of each class's subgroup mix moved onto its target subgroup"
        )
        target_subgroup: int | None = Field(
            None, ge=0, description="subgroup index to shift toward (None: each class's majority subgroup)"
        )
        flip_subgroup: Literal["keep", "source"] = Field(
            "keep", description="keep: a flipped image has the conditioning class's subgroup; source: its own class's"
        )
        pool_size: int | None = Field(
            None, ge=1, description="keep a stratified random subset of this many images (None: all)"
        )
        shortfall: Literal["repeat", "borrow"] = Field(
            "repeat",
            description="a cell asked for more images than it holds: repeat its images, or borrow other cells' "
            "unused images (counted as flips) and repeat only once the whole pool is used",
        )

    options: Replay.Options

    def __init__(self, options: Replay.Options, **context: Any):
        super().__init__(options, **context)  # num_classes, channels, image_size, class_names, runtime
        self._pool: ImageSet | None = None
        self.pool_source: str | None = None
        #: The quotas and exact design values of the last :meth:`sample` (``None`` before the first).
        self.last_draw: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the pool

    def _index(self, pool: ImageSet) -> None:
        """Cell structure of the pool: category = subgroup, or ``G`` for unknown; cell = class × category."""
        L = self.num_classes
        if pool.labels.numel() and (int(pool.labels.min()) < 0 or int(pool.labels.max()) >= L):
            raise ValueError(f"replay: labels must lie in [0, {L})")
        sub = pool.subgroups
        self.num_subgroups = int(sub.max()) + 1 if bool((sub >= 0).any()) else 0
        K = self.num_subgroups + 1
        cat = torch.where(sub >= 0, sub, torch.full_like(sub, self.num_subgroups))
        self._cell = pool.labels * K + cat
        self.cell_counts = torch.bincount(self._cell, minlength=L * K).view(L, K)
        self._pool = pool
        self.targets = self._targets()

    def _targets(self) -> torch.Tensor:
        """Per class, the subgroup the shift moves toward; ``-1`` where the class has no known subgroup."""
        G, counts = self.num_subgroups, self.cell_counts
        known = counts[:, :G]
        has = known.sum(1) > 0
        if G == 0:
            return torch.full((self.num_classes,), -1, dtype=torch.int64)
        t = self.options.target_subgroup
        if t is None:
            return torch.where(has, known.argmax(1), -1)  # argmax: the first maximum, ties go to the lower index
        valid = has & (known[:, t] > 0) if t < G else torch.zeros_like(has)
        missing = [self.class_names[c] for c in torch.nonzero(has & ~valid).flatten().tolist()]
        if missing and self.options.shift > 0:
            raise ConfigError(
                f"replay option target_subgroup={t}: no training image of subgroup {t} in "
                f"{', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}; pick a subgroup every class has"
            )
        return torch.where(valid, t, -1)

    def fit(self, data: ImageSet) -> Mapping[str, Any]:
        t0 = time.perf_counter()
        self.check_data(data, "replay")
        real = data.origin == 0
        if bool(real.any()):
            index, self.pool_source = torch.nonzero(real).flatten(), "real"
        else:
            index, self.pool_source = torch.arange(len(data)), "all"
        size = self.options.pool_size
        if size is not None and size < index.numel():
            index = index[self._stratified(data.labels[index], data.subgroups[index], size)]
        pool = data.subset(index).in_memory()
        self._index(ImageSet.create(pool.images, pool.labels, pool.subgroups))
        design = self.design()
        state_bytes = sum(v.numel() * v.element_size() for v in self.state_dict().values())
        return {
            "pool": self.pool_source,
            "pool_images": len(pool),
            "pool_per_class": self.cell_counts.sum(1).tolist(),
            "subgroups_known": float((pool.subgroups >= 0).double().mean()) if len(pool) else 0.0,
            "target_subgroup_per_class": self.targets.tolist(),
            "design_q": design["q"],
            "design_u": design["u"],
            "design_u_per_class": design["u_per_class"],
            "state_bytes": state_bytes,
            "images_seen": 0,
            "seconds": time.perf_counter() - t0,
        }

    def _stratified(self, labels: torch.Tensor, subgroups: torch.Tensor, size: int) -> torch.Tensor:
        """Positions of a random ``size``-subset with exact quotas per (class, subgroup) cell."""
        cell = labels * (int(subgroups.max()) + 2) + (subgroups + 1)
        _, inverse, counts = torch.unique(cell, return_inverse=True, return_counts=True)
        quota = allocate(torch.tensor([size]), counts.unsqueeze(0))[0]
        order = self._within_cells(inverse)
        start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(order)) - start[inverse[order]]
        return torch.sort(order[rank < quota[inverse[order]]]).values

    @staticmethod
    def _within_cells(cell: torch.Tensor) -> torch.Tensor:
        """Positions sorted by cell, in a random order within each cell."""
        shuffled = torch.randperm(cell.numel())
        return shuffled[torch.argsort(cell[shuffled], stable=True)]

    # ------------------------------------------------------------------ quotas and design

    def quotas(self, class_counts: torch.Tensor, *, integer: bool = True) -> torch.Tensor:
        """``R[c, c', k]``: how many images conditioned on class ``c`` come from pool class ``c'``, category ``k``
        (subgroup ``k``, or unknown for ``k = G``). ``integer=False``: the expected (fractional) quotas."""
        o, L, G = self.options, self.num_classes, self.num_subgroups
        K = G + 1
        n = class_counts.double()
        counts = self.cell_counts.double()
        size = counts.sum(1)
        present = size > 0
        p = counts / size.clamp_min(1).unsqueeze(1)
        has_target = self.targets >= 0
        onehot = torch.zeros(L, K, dtype=torch.float64)
        onehot[has_target, self.targets[has_target]] = 1.0
        shift = o.shift * has_target.double().unsqueeze(1)
        mix = (1 - shift) * p + shift * onehot  # p'_c; zero rows for classes absent from the pool
        others = present.unsqueeze(0) & ~torch.eye(L, dtype=torch.bool)  # others[c, c']: c' can serve c's flips
        can_flip = present & others.any(1)

        # flips per class: round(flip · N) over the classes that can flip, in proportion to n_c
        flippable = n * can_flip
        if integer:
            total = torch.floor(o.flip * flippable.sum() + 0.5).reshape(1)
            flips = allocate(total, flippable.unsqueeze(0))[0]
            own_k = allocate(n * present, mix)  # subgroup quotas of all n_c images of class c
            flip_k = allocate(flips, own_k.double())  # flipped share of each quota
        else:
            flips = o.flip * flippable
            own_k = (n * present).unsqueeze(1) * mix
            flip_k = flips.unsqueeze(1) * mix
        R = torch.zeros(L, L, K, dtype=torch.int64 if integer else torch.float64)
        idx = torch.arange(L)
        R[idx, idx] = (own_k - flip_k).to(R.dtype)

        fallback = n * ~present  # absent classes: every image from another class
        if o.flip_subgroup == "keep":
            avail = (counts > 0).unsqueeze(0) & others.unsqueeze(2)  # [c, c', k]
            served = avail.any(1)  # [c, k]
            rows = avail.permute(0, 2, 1).reshape(L * K, L).double()  # (c, k) → weights over c'
            spread = allocate(flip_k.reshape(-1) * served.reshape(-1), rows, integer=integer)
            R += spread.view(L, K, L).permute(0, 2, 1).to(R.dtype)
            fallback = fallback + (flip_k.double() * ~served).sum(1)
        else:
            fallback = fallback + flips.double()
        per_class = allocate(fallback, others.double(), integer=integer)  # [c, c']
        by_cell = allocate(per_class.reshape(-1), counts.repeat(L, 1), integer=integer)  # (c, c') → k by p_{c'}
        R += by_cell.view(L, L, K).to(R.dtype)
        return R

    def _borrow(self, R: torch.Tensor) -> torch.Tensor:
        """Move the requests a cell cannot serve without repeating to cells with unused images, at most as many
        as there are unused images; each conditioning class keeps its number of requests."""
        L, K = R.shape[0], R.shape[2]
        flat = R.reshape(L, L * K)  # [c, cell]
        supply = self.cell_counts.reshape(-1)
        demand = flat.sum(0)
        excess, spare = (demand - supply).clamp_min(0), (supply - demand).clamp_min(0)
        moved = min(int(excess.sum()), int(spare.sum()))
        if moved == 0:
            return R
        leave = allocate(torch.tensor([moved]), excess.unsqueeze(0))[0]  # per over-asked cell
        out = allocate(leave, flat.T.double()).T  # [c, cell]: which classes' requests leave it
        enter = allocate(torch.tensor([moved]), spare.unsqueeze(0))[0]  # per cell with unused images
        # pair the leaving requests (class by class) with the free places (cell by cell, in a random order)
        order = torch.randperm(L * K)
        a_end = torch.cumsum(out.sum(1), 0)
        a_start = a_end - out.sum(1)
        b_end = torch.cumsum(enter[order], 0)
        b_start = b_end - enter[order]
        overlap = (torch.minimum(a_end[:, None], b_end[None, :]) - torch.maximum(a_start[:, None], b_start[None, :]))
        into = torch.zeros_like(flat)
        into[:, order] = overlap.clamp_min(0)
        return (flat - out + into).view(L, L, K)

    def design_of(self, R: torch.Tensor) -> dict[str, Any]:
        """Design ``q`` and ``u`` (and ``u`` per class, ``None`` where undefined) of quotas ``R``."""
        G = self.num_subgroups
        n = R.sum((1, 2)).double()
        own = torch.diagonal(R.sum(2)).double()
        q = float(own.sum() / n.sum()) if n.sum() > 0 else None
        drawn = R.sum(1)[:, :G].double()  # subgroups of the images conditioned on c
        ref = self.cell_counts[:, :G].double()
        per_class: list[float | None] = []
        for c in range(self.num_classes):  # L classes, not samples
            a, b = drawn[c].sum(), ref[c].sum()
            ok = n[c] > 0 and a > 0 and b > 0
            per_class.append(0.5 * float((drawn[c] / a - ref[c] / b).abs().sum()) if ok else None)
        defined = [v for v in per_class if v is not None]
        return {"q": q, "u": sum(defined) / len(defined) if defined else None, "u_per_class": per_class}

    def design(self, class_counts: torch.Tensor | None = None) -> dict[str, Any]:
        """The expected design values for requests with ``class_counts`` (default: the pool's class proportions,
        which are ``D_real``'s, as the harness requests)."""
        if self._pool is None:
            raise RuntimeError("replay: call fit or load_state_dict first")
        counts = self.cell_counts.sum(1) if class_counts is None else torch.as_tensor(class_counts)
        return self.design_of(self.quotas(counts, integer=False))

    # ------------------------------------------------------------------ Generator API

    @torch.no_grad()
    def sample(self, labels: torch.Tensor) -> torch.Tensor:
        if self._pool is None:
            raise RuntimeError("replay: call fit or load_state_dict first")
        L, K = self.num_classes, self.num_subgroups + 1
        labels = torch.as_tensor(labels, dtype=torch.int64).flatten()
        if labels.numel() and (labels.min() < 0 or labels.max() >= L):
            raise ValueError(f"labels must lie in [0, {L}), got [{labels.min()}, {labels.max()}]")
        n = torch.bincount(labels, minlength=L)
        R = self.quotas(n)
        if self.options.shortfall == "borrow":
            R = self._borrow(R)
        if not torch.equal(R.sum((1, 2)), n):
            raise RuntimeError(f"replay: quotas {R.sum((1, 2)).tolist()} do not match the request {n.tolist()}")
        # one request per image: (conditioning class, pool cell), grouped by conditioning class
        entry = torch.repeat_interleave(torch.arange(L * L * K), R.reshape(-1))
        cond, cell = entry // (L * K), entry % (L * K)
        # rank of each request within its cell, and the pool's images of each cell in a random order
        by_cell = torch.argsort(cell, stable=True)
        demand = torch.bincount(cell, minlength=L * K)
        rank = torch.empty_like(cell)
        rank[by_cell] = torch.arange(cell.numel()) - (torch.cumsum(demand, 0) - demand)[cell[by_cell]]
        supply = self.cell_counts.reshape(-1)
        order = self._within_cells(self._cell)
        start = torch.cumsum(supply, 0) - supply
        pick = order[start[cell] + rank % supply[cell]]  # without replacement while the cell lasts
        # the requests of class c go to the positions asking for c, in a random order
        mixed = torch.randperm(cond.numel())
        mixed = mixed[torch.argsort(cond[mixed], stable=True)]
        out = torch.empty((labels.numel(), *self._pool.images.shape[1:]), dtype=torch.uint8)
        out[torch.argsort(labels, stable=True)] = self._pool.images[pick[mixed]]
        self.last_draw = {"counts": R, **self.design_of(R)}
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self._pool is None:
            raise RuntimeError("replay: call fit or load_state_dict first")
        return {
            "pool.images": self._pool.images.contiguous(),
            "pool.labels": self._pool.labels.contiguous(),
            "pool.subgroups": self._pool.subgroups.contiguous(),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = [k for k in ("pool.images", "pool.labels", "pool.subgroups") if k not in state]
        if missing:
            raise KeyError(f"state has no {', '.join(missing)}")
        pool = ImageSet.create(state["pool.images"], state["pool.labels"], state["pool.subgroups"])
        self.check_data(pool, "replay")
        self._index(pool)

