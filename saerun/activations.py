"""The language model, its hooks, its tokens and the training activations it produces.

The only module that imports transformer-lens (lazily, so `saerun --help` stays instant). Models
load through `TransformerBridge.boot_transformers`, the same code path for the embedded default
and for hub names. Numerics mode: raw Hugging Face (no `enable_compatibility_mode()`): the
legacy hook names (blocks.N.hook_resid_post, ...) resolve as aliases, and the logits equal the
HF model's to float precision, so an SAE trained here splices into the HF model unchanged.
"""

from __future__ import annotations

import itertools
import json
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from saerun import data as data_mod
from saerun import faults
from saerun.errors import SaerunError
from saerun.models import layer_of, model_info
from saerun.spec import DataConfig

if TYPE_CHECKING:  # transformer-lens loads in `LanguageModel.load`, only when a model is needed
    from transformer_lens.model_bridge import TransformerBridge

    from saerun.actcache import ActivationCache

NUMERICS_MODE = "transformer_bridge/raw_hf"


class LanguageModel:
    def __init__(self, name: str, bridge: TransformerBridge, device: str,
                 dtype: torch.dtype = torch.float32) -> None:
        self.name = name
        self.bridge = bridge
        self.device = device
        self.dtype = dtype
        self.tokenizer = bridge.tokenizer
        self.numerics_mode = NUMERICS_MODE
        self.n_layers = bridge.cfg.n_layers
        self.d_model = bridge.cfg.d_model
        self.bos_id = self.tokenizer.bos_token_id
        self.eos_id = self.tokenizer.eos_token_id
        self.special_ids = torch.tensor(sorted(set(self.tokenizer.all_special_ids)))

    @classmethod
    def load(cls, name: str, device: str = "cpu",
             dtype: torch.dtype = torch.float32) -> LanguageModel:
        import logging

        import transformers
        from transformer_lens.model_bridge import TransformerBridge

        logging.getLogger("transformers").setLevel(logging.ERROR)
        transformers.utils.logging.disable_progress_bar()  # our own progress display suffices
        info = model_info(name)
        bridge = TransformerBridge.boot_transformers(info.source, device=device, dtype=dtype)
        bridge.eval()
        # blocks.N.hook_mlp_in (a transcoder's usual input) is off by default in the bridge;
        # switching it on adds a hook and changes no activation or logit.
        bridge.set_use_hook_mlp_in(True)
        return cls(name, bridge, device, dtype)

    def special_mask(self, tokens: Tensor) -> Tensor:
        """[b, T] True where the token is special (BOS/EOS/pad)."""
        return torch.isin(tokens, self.special_ids.to(tokens.device))

    @staticmethod
    def _flat(act: Tensor) -> Tensor:
        # attn.hook_z is [b, T, n_heads, d_head]; SAEs see one [b, T, n_heads * d_head] vector
        # (d_model for most models; not for Gemma, whose heads are wider).
        return act.flatten(2) if act.dim() == 4 else act

    @torch.no_grad()
    def capture(self, tokens: Tensor, hook_names: list[str]) -> dict[str, Tensor]:
        """Activations at the hooks, running the model only up to the deepest block needed."""
        layers = [layer_of(h) for h in hook_names]
        stop = max(layer if layer is not None else -1 for layer in layers) + 1
        wanted = set(hook_names)
        faults.point("lm_forward")
        _, cache = self.bridge.run_with_cache(
            tokens.to(self.device), names_filter=lambda n: n in wanted,
            stop_at_layer=stop if stop < self.n_layers else None,
        )
        return {h: self._flat(cache[h]) for h in hook_names}

    @torch.no_grad()
    def forward_with_capture(self, tokens: Tensor, hook_names: list[str]
                             ) -> tuple[Tensor, dict[str, Tensor]]:
        """(logits [b, T, V], activations) from one full forward pass."""
        wanted = set(hook_names)
        logits, cache = self.bridge.run_with_cache(
            tokens.to(self.device), names_filter=lambda n: n in wanted
        )
        return logits, {h: self._flat(cache[h]) for h in hook_names}

    @torch.no_grad()
    def logits_patched(
        self, tokens: Tensor, hook_name: str, patch: Callable[[Tensor], Tensor]
    ) -> Tensor:
        """Logits with the hook's activation replaced by patch(activation) (flat view)."""

        def hook(act: Tensor, hook: object) -> Tensor:  # hook: the HookPoint, unused
            return patch(self._flat(act)).reshape(act.shape).to(act.dtype)

        return self.bridge.run_with_hooks(tokens.to(self.device), fwd_hooks=[(hook_name, hook)])


# data.boundaries -> (each row starts with BOS, BOS before each document, EOS after each).
BOUNDARIES: dict[str, tuple[bool, bool, bool]] = {
    "row_bos+bos_eos": (True, True, True), "row_bos+eos": (True, False, True),
    "row_bos+bos": (True, True, False), "row_bos": (True, False, False),
    "bos_eos": (False, True, True), "eos": (False, False, True), "bos": (False, True, False),
    "none": (False, False, False),
}
ENCODE_BATCH = 64  # documents per call of the tokenizer's batch encode


def _special_id(lm: LanguageModel, which: str, data: DataConfig) -> int:
    token = lm.bos_id if which == "BOS" else lm.eos_id
    if token is None:
        raise SaerunError(f"model {lm.name!r} has no {which} token, which data.boundaries "
                          f"{data.boundaries!r} asks for",
                          hint="choose data.boundaries without it, e.g. 'none'")
    return int(token)


def encoded_documents(lm: LanguageModel, data: DataConfig,
                      split: Literal["train", "eval"], skip: int = 0) -> Iterator[list[int]]:
    """The token ids of each document of a split, no special token added: text through the
    tokenizer's batch call (ENCODE_BATCH documents at once, not one Python call each), a
    pretokenized row as it is, once its ids are checked against the vocabulary. The first
    `skip` documents are passed over unread by the tokenizer (a resumed stream)."""
    vocab = int(lm.bridge.cfg.d_vocab)
    pending: list[str] = []

    def flush() -> Iterator[list[int]]:
        if pending:
            yield from lm.tokenizer(pending, add_special_tokens=False)["input_ids"]
            pending.clear()

    for doc in itertools.islice(data_mod.iter_documents(data, split), skip, None):
        if isinstance(doc, str):
            pending.append(doc)
            if len(pending) == ENCODE_BATCH:
                yield from flush()
            continue
        yield from flush()
        if doc and max(doc) >= vocab:
            raise SaerunError(f"dataset {data.dataset!r} holds token id {max(doc)}, outside the "
                              f"vocabulary of model {lm.name!r} ({vocab} tokens)",
                              hint="pretokenize it with this model's tokenizer")
        yield doc
    yield from flush()


@dataclass(frozen=True)
class PackerState:
    """Where the packer of the train split stands right after one language-model batch: the
    epoch, how many of its documents are packed, and the tokens packed into no row yet. A
    stream resumed from it goes on exactly as the uninterrupted one, without tokenising (or
    running the model over) what came before."""

    epoch: int
    documents: int
    remainder: tuple[int, ...]


def token_batches(lm: LanguageModel, data: DataConfig, split: Literal["train", "eval"],
                  resume: PackerState | None = None,
                  track: Callable[[PackerState], None] | None = None) -> Iterator[Tensor]:
    """Packed rows [n, context_size], documents joined as data.boundaries says (default: BOS
    and EOS around each document, each row starting with BOS, which is what every run before
    the field had on the embedded model, whose tokenizer prepended BOS in `encode`).
    The train split cycles (epochs) until the consumer stops; eval stops at data.eval_tokens.
    `resume` starts right after the batch a PackerState was taken at; `track` is told the
    state after each batch, before it is yielded."""
    row_bos, doc_bos, doc_eos = BOUNDARIES[data.boundaries]
    before = [_special_id(lm, "BOS", data)] if doc_bos else []
    after = [_special_id(lm, "EOS", data)] if doc_eos else []
    head = [_special_id(lm, "BOS", data)] if row_bos else []
    n = data.context_size - len(head)
    rows: list[list[int]] = []
    epoch, done = (resume.epoch, resume.documents) if resume is not None else (0, 0)
    stream: list[int] = list(resume.remainder) if resume is not None else []
    counted = 0

    def pack() -> Iterator[Tensor]:  # the full rows `stream` holds, a batch at a time
        nonlocal stream, rows, counted
        while len(stream) >= n:
            rows.append(head + stream[:n])
            stream = stream[n:]
            counted += n
            if len(rows) == data.lm_batch_sequences:
                if track is not None:
                    track(PackerState(epoch, done, tuple(stream)))
                yield torch.tensor(rows)
                rows = []
            if split == "eval" and counted >= data.eval_tokens:
                return

    yield from pack()  # a resumed remainder first
    while True:
        empty = done == 0
        for ids in encoded_documents(lm, data, split, skip=done):
            empty = False
            done += 1
            stream.extend(before)
            stream.extend(ids)
            stream.extend(after)
            yield from pack()
            if split == "eval" and counted >= data.eval_tokens:
                if rows:
                    yield torch.tensor(rows)
                return
        if empty:
            raise RuntimeError(f"the {split} split of {data.dataset!r} has no documents")
        if split == "eval":  # the held-out split is smaller than eval_tokens: use all of it
            if rows:
                yield torch.tensor(rows)
            return
        epoch, done = epoch + 1, 0


def activation_cache(lm: LanguageModel, data: DataConfig,
                     hook_names: list[str]) -> ActivationCache | None:
    """The on-disk activation cache of this stream (saerun/actcache.py), or None when off."""
    from saerun import actcache

    root = actcache.cache_root()
    if root is None:
        return None
    ingredients: dict[str, str | int | bool] = {
        "model": actcache.model_identity(lm.name, model_info(lm.name).source),
        "dtype": str(lm.dtype).removeprefix("torch."),
        "device_type": torch.device(lm.device).type,
        "numerics_mode": lm.numerics_mode,
        "data": data_mod.fingerprint(data),
        "context_size": data.context_size,
        "lm_batch_sequences": data.lm_batch_sequences,
        "exclude_special_tokens": data.exclude_special_tokens,
    }
    # Another packing is another token stream; the default is left out so caches filled before
    # the field existed stay valid. Outlier exclusion happens after the cache: not a key.
    if data.boundaries != "row_bos+bos_eos":
        ingredients["boundaries"] = data.boundaries
    return actcache.ActivationCache(root, ingredients, hook_names)


Kept = tuple[dict[str, Tensor], Tensor]  # ({hook: [n, d]}, special [n]) of one LM batch


@dataclass
class StreamPosition:
    """How far a train stream's source has got: language-model batches handed on, and the
    packer's state right after the last of them (None before the first)."""

    batches: int = 0
    packer: PackerState | None = None


def _kept_batches(lm: LanguageModel, data: DataConfig, hook_names: list[str],
                  start: int = 0, resume: PackerState | None = None,
                  position: StreamPosition | None = None) -> Iterator[Kept]:
    """Per language-model batch of the train stream from batch `start` on: the activations at
    the positions data.exclude_special_tokens keeps, in the model's dtype, and which of those
    are special tokens (none when they are excluded). From the activation cache where it has
    the batch, else one forward pass (written to the cache when one is on). `resume`, the
    packer's state after batch start - 1, starts the tokens there; without it the tokens
    before `start` are regenerated and dropped. `position` follows what was handed on."""
    cache = activation_cache(lm, data, hook_names)
    state: list[PackerState] = []
    batches = token_batches(lm, data, "train", resume, state.append)
    for index, tokens in enumerate(batches, start=start if resume is not None else 0):
        packer = state.pop() if state else None
        if index < start:
            continue
        acts = cache.get(index) if cache is not None else None
        special = lm.special_mask(tokens)
        keep = ~special if data.exclude_special_tokens else torch.ones_like(special)
        if acts is None:
            captured = lm.capture(tokens, hook_names)
            acts = {h: captured[h][keep.to(lm.device)] for h in hook_names}
            if cache is not None:
                cache.put(index, acts)
        if position is not None:
            position.batches, position.packer = index + 1, packer
        yield acts, special[keep]


NORM_SAMPLE_TOKENS = 32_768  # counted training tokens the norm and the outlier limit come from


@dataclass
class StreamHead:
    """The first language-model batches of a train stream (until NORM_SAMPLE_TOKENS non-special
    positions), computed once: the outlier limit and the norm estimate are measured on them,
    and training replays them instead of running the model over them a second time."""

    batches: list[Kept]
    limits: dict[str, float] | None  # hook -> norm above which a position is an outlier
    scales: dict[str, float]  # hook -> s with E||s x|| = sqrt(d_in), outliers left out
    after: PackerState | None = None  # the packer right after the head's last batch


# One head per loaded model and stream; a cache of a deterministic computation (it changes no
# result, only how often the model runs), dropped with the model.
_HEADS: weakref.WeakKeyDictionary[LanguageModel, dict[str, StreamHead]] = \
    weakref.WeakKeyDictionary()


def outlier_mask(acts: dict[str, Tensor], limits: dict[str, float]) -> Tensor:
    """[n] True where the position's norm exceeds its hook's limit at any hook."""
    out = torch.zeros(next(iter(acts.values())).shape[0], dtype=torch.bool,
                      device=next(iter(acts.values())).device)
    for h, limit in limits.items():
        out |= acts[h].float().norm(dim=-1) > limit
    return out


def _measure(batches: list[Kept], hook_names: list[str], factor: float | None
             ) -> tuple[dict[str, float] | None, dict[str, float]]:
    """(outlier limits, norm scales) from the sample: the limit is factor x the (lower) median
    norm of the non-special positions; the scale averages the norms of the positions that are
    neither special nor outliers (summed batch by batch in float64, as before the limit)."""
    limits = None
    if factor is not None:
        limits = {}
        for h in hook_names:
            norms = torch.cat([a[h][~sp.to(a[h].device)].float().norm(dim=-1)
                               for a, sp in batches])
            limits[h] = factor * norms.median().item()
    sums = dict.fromkeys(hook_names, 0.0)
    widths: dict[str, int] = {}
    count = 0
    for acts, special in batches:
        keep = ~special.to(acts[hook_names[0]].device)
        if limits is not None:
            keep &= ~outlier_mask(acts, limits)
        for h in hook_names:
            x = acts[h][keep].float()
            sums[h] += x.norm(dim=-1).double().sum().item()
            widths[h] = x.shape[-1]
        count += int(keep.sum())
    return limits, {h: (widths[h] ** 0.5) / (sums[h] / count) for h in hook_names}


def stream_head(lm: LanguageModel, data: DataConfig, hook_names: list[str],
                n_tokens: int = NORM_SAMPLE_TOKENS) -> StreamHead:
    key = _head_key(data, hook_names, n_tokens)
    heads = _HEADS.setdefault(lm, {})
    if key not in heads:
        batches: list[Kept] = []
        count = 0
        position = StreamPosition()
        source = _kept_batches(lm, data, hook_names, position=position)
        for kept in source:
            batches.append(kept)
            count += int((~kept[1]).sum())
            if count >= n_tokens:
                break
        close = getattr(source, "close", None)
        if close is not None:  # a generator left mid-way releases its cache and files now
            close()
        limits, scales = _measure(batches, hook_names, data.exclude_outlier_norm)
        heads[key] = StreamHead(batches, limits, scales, position.packer)
    return heads[key]


def _head_key(data: DataConfig, hook_names: list[str], n_tokens: int) -> str:
    return json.dumps([data.model_dump(mode="json"), sorted(hook_names), n_tokens])


def remember_head(lm: LanguageModel, data: DataConfig, hook_names: list[str],
                  limits: dict[str, float] | None, scales: dict[str, float]) -> None:
    """Take the head's measurements as known (a resumed job's checkpoints recorded them) so
    that no model pass over the head measures them again; the stream then computes the head's
    batches like any others, which a stream resumed past the head never needs."""
    key = _head_key(data, hook_names, NORM_SAMPLE_TOKENS)
    _HEADS.setdefault(lm, {}).setdefault(key, StreamHead([], limits, dict(scales)))


def outlier_limits(lm: LanguageModel, data: DataConfig, hook_names: list[str]
                   ) -> dict[str, float] | None:
    """hook -> the norm above which a position is excluded (data.exclude_outlier_norm x the
    median of the sample); None when the option is off."""
    if data.exclude_outlier_norm is None:
        return None
    return stream_head(lm, data, hook_names).limits


def train_activations(lm: LanguageModel, data: DataConfig, hook_names: list[str],
                      seen: dict[str, int] | None = None, start: int = 0,
                      resume: PackerState | None = None,
                      position: StreamPosition | None = None) -> Iterator[dict[str, Tensor]]:
    """{hook: [n, d]} at the counted positions of each language-model batch of the train
    stream, from batch `start` on, in the model's dtype: special tokens dropped where the spec
    says so, outlier positions always (data.exclude_outlier_norm). The head's batches are
    replayed (no second forward over them); the rest come from the cache or the model, from
    `resume` (the packer after batch start - 1) where given. `seen["outlier_positions"]`
    (when given) counts the outlier positions dropped so far; `position` follows the source."""
    head = stream_head(lm, data, hook_names)
    replay, head.batches = head.batches, []  # replayed once; a second stream recomputes
    source: Iterator[Kept]
    if start < len(replay):  # the rest of the stream goes on from the head's packer
        source = itertools.chain(
            _positioned(replay[start:], start, head.after, position),
            _kept_batches(lm, data, hook_names, len(replay), head.after, position))
    else:
        source = _kept_batches(lm, data, hook_names, start, resume, position)
    for acts, _ in source:
        if head.limits is not None:
            outliers = outlier_mask(acts, head.limits)
            if bool(outliers.any()):
                acts = {h: a[~outliers] for h, a in acts.items()}
                if seen is not None:
                    seen["outlier_positions"] = seen.get("outlier_positions", 0) + \
                        int(outliers.sum())
        yield {h: a.to(lm.device) for h, a in acts.items()}


def _positioned(batches: list[Kept], start: int, after: PackerState | None,
                position: StreamPosition | None) -> Iterator[Kept]:
    """The head's batches from index `start`, `position` counting them (the packer's state is
    known after the last only: a stream resumed inside the head replays it)."""
    for index, kept in enumerate(batches, start=start):
        if position is not None:
            last = index == start + len(batches) - 1
            position.batches, position.packer = index + 1, after if last else None
        yield kept


def eval_token_batches(lm: LanguageModel, data: DataConfig) -> list[Tensor]:
    return list(token_batches(lm, data, "eval"))


@torch.no_grad()
def estimate_norm_scale(lm: LanguageModel, data: DataConfig, hook_names: list[str],
                        n_tokens: int = NORM_SAMPLE_TOKENS) -> dict[str, float]:
    """s with E||s x|| = sqrt(d_in) on training activations: puts every site on one scale, so
    one sparsity coefficient means the same thing everywhere. Measured on the stream head (the
    first n_tokens of the train stream, which training then replays: no extra LM pass).
    Special tokens are always left out of the estimate (a BOS residual can be far larger than
    any text token's), whether or not the SAEs train on them; so are outlier positions."""
    return dict(stream_head(lm, data, hook_names, n_tokens).scales)
