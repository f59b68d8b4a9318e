"""The language model, its hooks, tokens and shuffled activation batches.

The only module that imports transformer-lens (lazily, so `saerun --help` stays instant). Models
load through `TransformerBridge.boot_transformers`, the same code path for the embedded default
and for hub names. Numerics mode: raw Hugging Face (no `enable_compatibility_mode()`): the
legacy hook names (blocks.N.hook_resid_post, ...) resolve as aliases, and the logits equal the
HF model's to float precision, so an SAE trained here splices into the HF model unchanged.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Literal, cast

import torch
from torch import Tensor

from saerun import data as data_mod
from saerun import faults
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


def token_batches(lm: LanguageModel, data: DataConfig,
                  split: Literal["train", "eval"]) -> Iterator[Tensor]:
    """Packed rows [n, context_size]: documents joined by EOS, each row starting with BOS.
    The train split cycles (epochs) until the consumer stops; eval stops at data.eval_tokens."""
    n = data.context_size - 1
    rows: list[list[int]] = []
    stream: list[int] = []
    counted = 0
    while True:
        empty = True
        for text in data_mod.iter_documents(data, split):
            empty = False
            stream.extend(lm.tokenizer.encode(text))
            stream.append(lm.eos_id)
            while len(stream) >= n:
                rows.append([lm.bos_id] + stream[:n])
                stream = stream[n:]
                counted += n
                if len(rows) == data.lm_batch_sequences:
                    yield torch.tensor(rows)
                    rows = []
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
    return actcache.ActivationCache(root, ingredients, hook_names)


def train_activations(lm: LanguageModel, data: DataConfig, hook_names: list[str]
                      ) -> Iterator[dict[str, Tensor]]:
    """{hook: [n, d]} at the counted positions of each language-model batch of the train
    stream, in order, in the model's dtype; read from the activation cache where it has the
    batch, else one forward pass (written to the cache when one is on)."""
    cache = activation_cache(lm, data, hook_names)
    for index, tokens in enumerate(token_batches(lm, data, "train")):
        acts = cache.get(index) if cache is not None else None
        if acts is None:
            captured = lm.capture(tokens, hook_names)
            keep = (~lm.special_mask(tokens) if data.exclude_special_tokens
                    else torch.ones_like(tokens, dtype=torch.bool)).to(lm.device)
            acts = {h: captured[h][keep] for h in hook_names}
            if cache is not None:
                cache.put(index, acts)
        yield {h: a.to(lm.device) for h, a in acts.items()}


def eval_token_batches(lm: LanguageModel, data: DataConfig) -> list[Tensor]:
    return list(token_batches(lm, data, "eval"))


class ActivationStream:
    """Shuffled training activations for every hook of a group, from ONE forward per batch.

    Yields {hook: [batch_tokens, d]} (float32), special-token positions dropped, mixed through a
    buffer of data.shuffle_buffer_tokens vectors (one permutation shared by every hook so rows
    stay aligned: a transcoder's IN and OUT rows are the same tokens); 0: no shuffling, in the
    model's order. Stops after data.train_tokens vectors.
    """

    def __init__(self, lm: LanguageModel, data: DataConfig, hook_names: list[str],
                 batch_tokens: int, device: str = "cpu") -> None:
        self.lm, self.data, self.hooks = lm, data, list(hook_names)
        self.batch_tokens, self.device = batch_tokens, device
        self.n_batches = data.train_tokens // batch_tokens
        self._skip = 0

    def skip(self, n_batches: int) -> None:
        """Resume: regenerate the stream deterministically and drop its first n batches."""
        self._skip = n_batches

    def _vectors(self) -> Iterator[dict[str, Tensor]]:
        for acts in train_activations(self.lm, self.data, self.hooks):
            yield {h: a.float() for h, a in acts.items()}

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        if self.data.shuffle_buffer_tokens == 0:
            yield from self._in_order()
            return
        g = torch.Generator().manual_seed(self.data.shuffle_seed)
        capacity = max(self.data.shuffle_buffer_tokens, 2 * self.batch_tokens)
        buffer: dict[str, Tensor] | None = None
        produced = 0
        source = self._vectors()
        while produced < self.n_batches:
            # Refill to capacity, shuffle, emit the first half; the rest mixes with new data.
            filled = 0 if buffer is None else buffer[self.hooks[0]].shape[0]
            parts: list[dict[str, Tensor]] = [buffer] if buffer is not None else []
            while filled < capacity:
                chunk = next(source)
                parts.append(chunk)
                filled += chunk[self.hooks[0]].shape[0]
            merged = {h: torch.cat([p[h] for p in parts]) for h in self.hooks}
            perm = torch.randperm(filled, generator=g).to(merged[self.hooks[0]].device)
            merged = {h: v[perm] for h, v in merged.items()}
            n_out = max(self.batch_tokens, (filled // 2) // self.batch_tokens * self.batch_tokens)
            for start in range(0, n_out, self.batch_tokens):
                if produced >= self.n_batches:
                    return
                if produced >= self._skip:
                    yield {h: merged[h][start:start + self.batch_tokens].to(self.device)
                           for h in self.hooks}
                produced += 1
            buffer = {h: v[n_out:] for h, v in merged.items()}

    def _in_order(self) -> Iterator[dict[str, Tensor]]:
        """data.shuffle_buffer_tokens 0: the batches in the order the model produced them."""
        parts: list[dict[str, Tensor]] = []
        filled = produced = 0
        source = self._vectors()
        while produced < self.n_batches:
            while filled < self.batch_tokens:
                chunk = next(source)
                parts.append(chunk)
                filled += chunk[self.hooks[0]].shape[0]
            merged = {h: torch.cat([p[h] for p in parts]) for h in self.hooks}
            if produced >= self._skip:
                yield {h: merged[h][:self.batch_tokens].to(self.device) for h in self.hooks}
            produced += 1
            parts = [{h: v[self.batch_tokens:] for h, v in merged.items()}]
            filled -= self.batch_tokens


@torch.no_grad()
def estimate_norm_scale(lm: LanguageModel, data: DataConfig, hook_names: list[str],
                        n_tokens: int = 32_768) -> dict[str, float]:
    """s with E||s x|| = sqrt(d_in) on training activations (special tokens excluded): puts
    every site on one scale, so one sparsity coefficient means the same thing everywhere."""
    sums = dict.fromkeys(hook_names, 0.0)
    count = 0
    widths: dict[str, int] = {}
    # Special tokens are always left out of the estimate (a BOS residual can be far larger
    # than any text token's), whether or not the SAEs train on them.
    counted = data.model_copy(update={"exclude_special_tokens": True})
    for acts in train_activations(lm, counted, hook_names):
        for h in hook_names:
            x = acts[h].float()
            sums[h] += x.norm(dim=-1).double().sum().item()
            widths[h] = x.shape[-1]
        count += acts[hook_names[0]].shape[0]  # the same counted positions at every hook
        if count >= n_tokens:
            break
    return {h: (widths[h] ** 0.5) / (sums[h] / count) for h in hook_names}


_DONE = object()  # the producer's end-of-stream marker


def prefetch(batches: Iterable[dict[str, Tensor]], depth: int = 2
             ) -> Generator[dict[str, Tensor], None, None]:
    """`batches`, produced ahead by a background thread into a queue of `depth` batches, so the
    next language-model forward runs while the SAEs step (torch releases the GIL in its ops).

    The same batches in the same order: the producer runs the very iterator the consumer would
    have, so the result is bit-identical. An exception in the producer is raised here, in the
    consumer, at the batch where it happened; when the consumer stops early (a break, an error,
    the generator closed) the producer is told to stop and joined, so no thread outlives the
    loop. On CUDA the producer works on a side stream; each batch waits for it on the
    consumer's stream before it is used."""
    items: queue.Queue[tuple[dict[str, Tensor] | object, torch.cuda.Event | None]] = \
        queue.Queue(maxsize=depth)
    stop = threading.Event()
    failure: list[BaseException] = []
    cuda = torch.cuda.is_available()

    def put(item: dict[str, Tensor] | object, event: torch.cuda.Event | None) -> bool:
        while not stop.is_set():
            try:
                items.put((item, event), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        side = torch.cuda.Stream() if cuda else None
        source = iter(batches)
        try:
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                for batch in source:
                    event = None
                    if side is not None:
                        event = torch.cuda.Event()
                        event.record(side)
                    if not put(batch, event):
                        return
        except BaseException as err:  # handed to the consumer, never swallowed
            failure.append(err)
        finally:
            close = getattr(source, "close", None)
            if close is not None:  # a generator left mid-way is closed on its own thread
                close()
        put(_DONE, None)

    thread = threading.Thread(target=produce, name="saerun-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, event = items.get()
            if item is _DONE:
                if failure:
                    raise failure[0]
                return
            batch = cast("dict[str, Tensor]", item)
            if event is not None:  # the side stream's work on this batch is done before use
                current = torch.cuda.current_stream()
                current.wait_event(event)
                for t in batch.values():
                    t.record_stream(current)  # its memory is not reused while in use here
            yield batch
    finally:
        stop.set()
        thread.join()
