"""The one training loop: N SAEs stepped in lockstep on one shared activation stream.

Read it top to bottom: schedules are pure functions of the step; `Trainer` is one SAE's whole
loop state (SAE, Adam, step, dead-latent clocks), checkpointed whole; `train_group` feeds every
batch of the group's stream to every trainer that still needs it. No architecture branches here:
everything architecture-specific is behind `SAE.loss` / `SAE.after_step`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saerun import faults
from saerun.resample import resample_dead_latents
from saerun.sae import SAE, LossOutput, StepInfo, build_sae
from saerun.spec import RunConfig, TrainConfig

WEIGHT_LIMIT = 1e6  # a weight beyond this (in normalised units) is an explosion, not learning

# -- schedules (pure) --------------------------------------------------------------------------


def lr_at(step: int, total_steps: int, t: TrainConfig, resampled_at: int | None = None) -> float:
    """Linear warm-up from 0, constant, then decay to 0 over the last lr_decay_fraction; after a
    resampling (at step `resampled_at`) the LR warms up again over resample.lr_rewarmup_steps."""
    rewarm = t.resample.lr_rewarmup_steps if t.resample is not None else 0
    factor = 1.0
    if resampled_at is not None and rewarm and 0 <= step - resampled_at < rewarm:
        factor = (step - resampled_at + 1) / rewarm
    return factor * _base_lr_at(step, total_steps, t)


def _base_lr_at(step: int, total_steps: int, t: TrainConfig) -> float:
    if t.lr_warmup_steps and step < t.lr_warmup_steps:
        return t.lr * (step + 1) / t.lr_warmup_steps
    decay_steps = int(total_steps * t.lr_decay_fraction) if t.lr_decay != "none" else 0
    decay_start = total_steps - decay_steps
    if decay_steps > 0 and step >= decay_start:
        progress = (step - decay_start) / decay_steps  # in [0, 1)
        if t.lr_decay == "linear":
            return t.lr * (1.0 - progress)
        return t.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return t.lr


def sparsity_at(step: int, total_steps: int, t: TrainConfig) -> float:
    """Linear warm-up of the sparsity coefficient: lets latents find directions before the
    penalty starts killing them."""
    warm = int(total_steps * t.sparsity_warmup_fraction)
    return min(1.0, (step + 1) / warm) if warm > 0 else 1.0


def k_at(step: int, total_steps: int, sae: object) -> int | None:
    """The k of this step under sae.k_schedule (topk): from `start` at step 0 to sae.k at step
    int(until_fraction * total_steps), linearly or geometrically, rounded; sae.k from there on.
    None without a schedule (the SAE uses its own k)."""
    schedule = getattr(sae, "k_schedule", None)
    k = getattr(sae, "k", None)
    if schedule is None or k is None:
        return None
    end = int(total_steps * schedule.until_fraction)
    if step >= end:
        return int(k)
    p = step / end
    if schedule.shape == "linear":
        value = schedule.start + (k - schedule.start) * p
    else:
        value = schedule.start * (k / schedule.start) ** p
    return max(1, round(value))


def compiled(sae: SAE) -> Callable[[Tensor, StepInfo, Tensor | None], LossOutput]:
    """`sae.loss` compiled by torch.compile (inductor): the forward and, through AOTAutograd,
    its backward. A compiled SAE takes the dense products (the path a GPU takes anyway): the
    sparse kernels' data-dependent choice and index bookkeeping would break the graph into
    pieces. The batch shape is fixed, so nothing recompiles after the first step."""
    sae.sparse_kernels = False
    loss = torch.compile(sae.loss, dynamic=False)

    def step(x: Tensor, info: StepInfo, y: Tensor | None = None) -> LossOutput:
        # The warm-up factor as a tensor: a Python float is a constant to the compiler, and a
        # new one every warm-up step would recompile the graph each step (then fall back).
        scale = torch.tensor(info.sparsity_scale, device=x.device)
        return loss(x, info._replace(sparsity_scale=scale), y)

    return step


# -- one SAE's loop state ----------------------------------------------------------------------


@dataclass
class Trainer:
    run_id: str
    config: RunConfig
    sae: SAE
    optimizer: torch.optim.Adam
    total_steps: int
    step: int = 0
    tokens: int = 0
    tokens_since_fired: Tensor = field(default_factory=lambda: torch.zeros(0))
    curve: list[dict[str, float]] = field(default_factory=list)  # points since the last flush
    resampled_at: int | None = None  # step of the last neuron resampling (LR re-warm-up)
    resampled_total: int = 0  # latents revived so far
    failure: str | None = None  # why this run stopped (non-finite loss, exploding weights)
    # The first step whose loss was not finite (-1: none yet), kept on the device so that
    # watching for it costs no sync; read by `check_health` on logging and checkpoint steps.
    first_bad_step: Tensor = field(default_factory=lambda: torch.tensor(-1))
    # The SAE's loss as this run calls it: `sae.loss`, or its torch.compile'd form.
    loss_fn: Callable[[Tensor, StepInfo, Tensor | None], LossOutput] = field(init=False,
                                                                            repr=False)

    def __post_init__(self) -> None:
        self.loss_fn = compiled(self.sae) if self.config.train.compile else self.sae.loss

    @classmethod
    def create(cls, run_id: str, config: RunConfig, device: str) -> Trainer:
        sae = build_sae(config.sae, config.seed).to(device)
        t = config.train
        optimizer = torch.optim.Adam(sae.parameters(), lr=t.lr, betas=t.adam_betas)
        total = config.data.train_tokens // t.batch_tokens
        clocks = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
        return cls(run_id, config, sae, optimizer, total, tokens_since_fired=clocks)

    @property
    def hook_name(self) -> str:
        return self.config.site.hook_name

    @property
    def hook_name_out(self) -> str | None:
        """A transcoder's target hook; None for an SAE (its target is its input)."""
        return self.config.site.hook_name_out

    @property
    def hooks(self) -> list[str]:
        """The hooks this run reads: its input, and a transcoder's target."""
        out = self.hook_name_out
        return [self.hook_name] if out is None else [self.hook_name, out]

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def dead_mask(self) -> Tensor:
        return self.tokens_since_fired >= self.config.train.dead_window_tokens

    def train_step(self, x: Tensor, y: Tensor | None = None) -> None:
        """One optimiser step on a batch of normalised activations [batch_tokens, d_in] against
        the normalised target y [batch_tokens, d_out] (None: x, an SAE)."""
        t = self.config.train
        if self.step == 0:
            self.sae.init_b_dec(x if y is None else y)  # b_dec lives in the target's space
        lr = lr_at(self.step, self.total_steps, t, self.resampled_at)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        info = StepInfo(sparsity_at(self.step, self.total_steps, t), self.dead_mask(),
                        k_at(self.step, self.total_steps, self.config.sae))
        # bf16: the loss under autocast (its matmuls in bf16, everything else as it was: the
        # weights, the Adam state, the thresholds and the loss's reductions stay fp32). bf16
        # has fp32's exponent range, so no gradient scaler is needed.
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16"):
            out = self.loss_fn(x, info, y)
        bad = ~torch.isfinite(out.loss.detach())
        self.first_bad_step = torch.where(
            (self.first_bad_step < 0) & bad, torch.full_like(self.first_bad_step, self.step),
            self.first_bad_step,
        )
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        faults.point("train_step")
        if t.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.sae.parameters(), t.grad_clip_norm)
        self.optimizer.step()
        self.sae.after_step()

        fired = out.fired()
        self.tokens_since_fired += x.shape[0]
        self.tokens_since_fired[fired] = 0
        self.step += 1
        self.tokens += x.shape[0]
        self.maybe_resample(x)
        if self.step % t.log_every_steps == 0 or self.done:
            # .item() is a device sync: only on logging steps.
            self.curve.append(
                {
                    "step": self.step,
                    "tokens": self.tokens,
                    "loss": out.loss.item(),
                    "mse": out.mse.item(),
                    "l0": out.l0.item(),
                    "dead_fraction": self.dead_mask().float().mean().item(),
                    "lr": lr,
                }
            )

    def check_health(self) -> str | None:
        """Why this run cannot go on, or None: a non-finite loss at some step, or weights that
        are not finite or beyond WEIGHT_LIMIT (activations are normalised to E||x|| =
        sqrt(d_in), so healthy weights are O(1)..O(100)). Sets `failure`; one host sync."""
        bad = int(self.first_bad_step)
        if bad >= 0:
            self.failure = f"non-finite loss at step {bad}"
            return self.failure
        for name, p in self.sae.named_parameters():
            top = p.detach().abs().max()
            if not torch.isfinite(top):
                self.failure = f"non-finite weights ({name}) at step {self.step}"
            elif top > WEIGHT_LIMIT:
                self.failure = (
                    f"exploding weights (max |{name}| = {top.item():.3g} > {WEIGHT_LIMIT:g}) "
                    f"at step {self.step}"
                )
            if self.failure:
                return self.failure
        return None

    def maybe_resample(self, x: Tensor) -> None:
        """Neuron resampling when this step crossed a multiple of resample.every_tokens (and
        training is not past resample.stop_fraction); see `saerun.resample`."""
        r = self.config.train.resample
        if r is None or self.tokens > r.stop_fraction * self.config.data.train_tokens:
            return
        if self.tokens // r.every_tokens == (self.tokens - x.shape[0]) // r.every_tokens:
            return
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step)
        idx = resample_dead_latents(
            self.sae, self.optimizer, x, self.dead_mask(), r.encoder_scale, generator
        )
        if idx.numel() == 0:  # nothing was dead: the run goes on untouched (no LR re-warm-up)
            return
        self.tokens_since_fired[idx] = 0  # a fresh dead-latent window for the revived
        self.resampled_at = self.step
        self.resampled_total += idx.numel()

    # -- checkpoint state: everything needed to continue bit-identically -----------------------
    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors = {f"sae.{k}": v for k, v in self.sae.state_dict().items()}
        opt = self.optimizer.state_dict()
        for idx, st in opt["state"].items():
            for key, value in st.items():
                tensors[f"adam.{idx}.{key}"] = torch.as_tensor(value)
        tensors["tokens_since_fired"] = self.tokens_since_fired
        meta = {
            "step": self.step, "tokens": self.tokens, "run_id": self.run_id,
            "resampled_at": self.resampled_at, "resampled_total": self.resampled_total,
        }
        return tensors, meta

    def load_state(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        device = self.tokens_since_fired.device
        sae_state = {k[4:]: v for k, v in tensors.items() if k.startswith("sae.")}
        self.sae.load_state_dict(sae_state)
        opt = self.optimizer.state_dict()
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("adam."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value.to(device)
        opt["state"] = state
        self.optimizer.load_state_dict(opt)
        self.tokens_since_fired = tensors["tokens_since_fired"].to(device)
        self.step, self.tokens = int(meta["step"]), int(meta["tokens"])
        self.resampled_at = meta.get("resampled_at")
        self.resampled_total = int(meta.get("resampled_total", 0))


# -- the group loop ----------------------------------------------------------------------------


def train_group(
    trainers: list[Trainer],
    batches: Iterable[dict[str, Tensor]],
    start_step: int,
    scales: dict[str, float],
    on_checkpoint: Callable[[Trainer], None],
    on_batch: Callable[[int], None] = lambda i: None,
    on_failure: Callable[[Trainer], None] = lambda tr: None,
) -> None:
    """Step every trainer on every batch of the shared stream, in lockstep.

    `batches` yields {hook_name: [batch_tokens, d]} (every run's input and target hooks, rows
    aligned; each normalised by its own scale) starting at global batch `start_step`; a
    trainer resumed at a later step sits out the batches it has already seen. A trainer's
    health is checked on its logging steps and before every checkpoint (so a checkpoint is
    never written from a broken state); a broken one stops (`on_failure`), the others go on.
    """
    if not trainers:
        return
    hooks = sorted({h for tr in trainers for h in tr.hooks})
    for index, batch in enumerate(batches, start=start_step):
        # Normalise once per site, not once per SAE.
        scaled = {h: batch[h] * scales[h] if scales[h] != 1.0 else batch[h] for h in hooks}
        for tr in trainers:
            if tr.step != index or tr.done or tr.failure:
                continue
            out = tr.hook_name_out
            tr.train_step(scaled[tr.hook_name], None if out is None else scaled[out])
            every = tr.config.train.checkpoint_every_tokens
            crossed = tr.tokens // every != (tr.tokens - scaled[tr.hook_name].shape[0]) // every
            logged = tr.step % tr.config.train.log_every_steps == 0
            if (crossed or tr.done or logged) and tr.check_health():
                on_failure(tr)
                continue
            if crossed or tr.done:
                on_checkpoint(tr)
        on_batch(index + 1)
        if all(tr.done or tr.failure for tr in trainers):
            break
