"""Does the real SAELens use saerun's exports? Run INSIDE the SAELens virtualenv (no saerun
imports here):

    bench/.venvs/sae_lens/bin/python bench/saelens_check.py FOLDER [FOLDER ...]

Each FOLDER is an exported run folder (cfg.json, sae_weights.safetensors) plus check.safetensors
with `x` [n, d_in] raw input activations, `f` [n, d_sae] saerun's codes and `x_hat` [n, d_out]
saerun's reconstruction; optionally `tokens` [b, T] (eval tokens) with `delta_lm_loss` [1],
the registry's CE with the SAE spliced in minus the clean CE, over the positions saerun counts.

Per folder: `SAE.load_from_disk`; cfg.metadata.hook_name (and hook_name_out when the cfg has
one) and model_name as written; SAELens's encode(x) against f and decode(f) against x_hat (max
abs differences; `exact` where they are bit-equal); `HookedSAETransformer.add_sae` attaches the
SAE where the model loads offline (the embedded model is a local folder; otherwise skipped with
the reason), and with `tokens` the spliced CE difference, SAE bypassed at the special tokens,
against the registry's. Prints one JSON object per folder; exit 0 iff every folder is ok.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

# This file's folder is sys.path[0], and its neighbours (bench/kernels.py, data.py, ...) would
# shadow packages of the same name that transformers imports: it needs none of them.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

TOLERANCE = 1e-5  # relative to the largest magnitude compared; exact is reported separately
CE_TOLERANCE = 1e-5  # nats: HookedTransformer vs saerun's TransformerBridge (seen: 2e-7)
EMBEDDED = {"saerun/tiny-stdlib": Path(__file__).resolve().parents[1] / "saerun" / "embedded"
            / "tiny-stdlib"}
_models: dict[str, Any] = {}


def allow_local_gpt2() -> None:
    """transformer-lens 3.x's from_pretrained maps every name through get_official_model_name,
    which rejects a local folder though the loaders below it accept one; and it reads
    GPT2Config.n_ctx, which the transformers it is installed with no longer defines (see
    bench/peers/saelens_sweep.py)."""
    import transformer_lens.loading_from_pretrained as loading
    from transformers import GPT2Config

    if not hasattr(GPT2Config, "n_ctx"):
        GPT2Config.n_ctx = property(lambda self: self.n_positions)
    official = loading.get_official_model_name
    if getattr(official, "_saerun_local", False):
        return

    def official_or_path(name: str) -> str:
        return name if Path(name).is_dir() else official(name)

    official_or_path._saerun_local = True  # type: ignore[attr-defined]
    loading.get_official_model_name = official_or_path


def load_model(name: str | None) -> tuple[Any, str | None]:
    """(HookedSAETransformer, None) or (None, why not)."""
    if name is None:
        return None, "cfg.json has no metadata.model_name"
    path = EMBEDDED.get(name, Path(name))
    if not path.is_dir():
        return None, f"model {name!r} is not a local folder (no hub access here)"
    if name not in _models:
        from sae_lens import HookedSAETransformer

        allow_local_gpt2()
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON lines
            _models[name] = HookedSAETransformer.from_pretrained_no_processing(
                str(path), device="cpu", dtype=torch.float32)
        _models[name].eval()
        # A transcoder reading hook_mlp_in needs that hook on (off by default in TL).
        _models[name].set_use_hook_mlp_in(True)
    return _models[name], None


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = max(float(a.abs().max()), float(b.abs().max()), 1.0) if a.numel() else 1.0
    return a.shape == b.shape and max_diff(a, b) <= TOLERANCE * scale


def spliced_delta(model: Any, sae: Any, tokens: torch.Tensor) -> float:
    """CE with the SAE spliced in minus clean CE, as saerun counts it: next-token CE at the
    positions whose input token is not special, the SAE bypassed at the special ones
    (add_sae's exclude_special_tokens with the tokenizer's special ids: saerun's set)."""
    special = sorted(set(model.tokenizer.all_special_ids))
    keep = ~torch.isin(tokens[:, :-1], torch.tensor(special))

    def ce() -> torch.Tensor:
        logits = model(tokens, return_type="logits")[:, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        return -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)[keep].double()

    model.reset_saes()
    clean = ce()
    model.add_sae(sae, exclude_special_tokens=special)
    patched = ce()
    model.reset_saes()
    return float(patched.mean() - clean.mean())


def fold_topk(folder: Path, data: dict[str, torch.Tensor], out: dict[str, Any],
              problems: list[str]) -> None:
    """SAELens's fold_W_dec_norm refuses a TopK SAE with rescale_acts_by_decoder_norm false.
    saerun's TopK decoder rows all have one norm (1 at training, 1/scale once the
    normalisation is folded in), so switching rescaling on and folding keeps the choice of
    latents: codes become f * ||W_dec||, reconstructions stay."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(folder), device="cpu")
    norms = sae.W_dec.norm(dim=-1).detach().clone()
    sae.cfg.rescale_acts_by_decoder_norm = True
    sae.fold_W_dec_norm()
    with torch.no_grad():
        f = sae.encode(data["x"])
        x_hat = sae.decode(f)
    out["topk_fold_codes_max_abs_diff"] = max_diff(f, data["f"] * norms)
    out["topk_fold_decode_max_abs_diff"] = max_diff(x_hat, data["x_hat"])
    out["topk_decoder_norm_spread"] = float(norms.max() - norms.min())
    if not close(x_hat, data["x_hat"]) or not close(f, data["f"] * norms):
        problems.append("TopK after rescale + fold_W_dec_norm differs")


def check(folder: Path) -> dict[str, Any]:
    from sae_lens import SAE
    from safetensors.torch import load_file

    out: dict[str, Any] = {"folder": str(folder)}
    written = json.loads((folder / "cfg.json").read_text())
    meta = written.get("metadata", {})
    sae = SAE.load_from_disk(str(folder), device="cpu")
    out["architecture"] = sae.cfg.architecture()
    got = sae.cfg.metadata
    out["metadata"] = {k: got.get(k) for k in ("sae_lens_version", "hook_name", "model_name",
                                               "hook_name_out", "exclude_special_tokens")}
    problems = []
    keys = ["hook_name", "model_name"] + (["hook_name_out"] if "hook_name_out" in meta else [])
    for key in keys:
        if got.get(key) is None or got.get(key) != meta.get(key):
            problems.append(f"metadata.{key}: {got.get(key)!r}, written {meta.get(key)!r}")
    data = load_file(str(folder / "check.safetensors"))
    unrepresentable = written.get("saerun_not_representable")
    with torch.no_grad():
        f = sae.encode(data["x"])
        if unrepresentable and "k" in written:  # a TopK transcoder: SAELens has no top-k
            out["encode_without_topk_max_abs_diff"] = max_diff(f, data["f"])
            kept = f.topk(int(written["k"]), dim=-1)
            f = torch.zeros_like(f).scatter(-1, kept.indices, kept.values)
        x_hat = sae.decode(data["f"])
        y_sae = None
        if "y_hat" in data:  # a transcoder's whole output, skip connection included
            y_sae = sae(data["x"])
            if unrepresentable and "k" in written:  # SAELens's decode of the top-k'd encode
                skip = getattr(sae, "W_skip", None)
                y_sae = sae.decode(f) + (0 if skip is None else data["x"] @ skip.T)
            out["forward_max_abs_diff"] = max_diff(y_sae, data["y_hat"])
    if unrepresentable:
        out["not_representable"] = unrepresentable
    out["encode_max_abs_diff"] = max_diff(f, data["f"])
    out["decode_max_abs_diff"] = max_diff(x_hat, data["x_hat"])
    out["exact"] = out["encode_max_abs_diff"] == 0 and out["decode_max_abs_diff"] == 0
    out["l0_saelens"] = float((f > 0).float().sum(-1).mean())
    out["l0_saerun"] = float((data["f"] > 0).float().sum(-1).mean())
    if not close(f, data["f"]):
        problems.append(f"encode differs by {out['encode_max_abs_diff']:.3g}")
    if not close(x_hat, data["x_hat"]):
        problems.append(f"decode differs by {out['decode_max_abs_diff']:.3g}")
    if y_sae is not None and not close(y_sae, data["y_hat"]):
        problems.append(f"forward differs by {out['forward_max_abs_diff']:.3g}")
    saerun_topk = out["architecture"] == "topk" and "saerun_run_id" in meta
    if saerun_topk and not sae.cfg.rescale_acts_by_decoder_norm:
        fold_topk(folder, data, out, problems)
    model, why = load_model(got.model_name)
    if model is None:
        out["add_sae"] = f"skipped: {why}"
    else:
        model.reset_saes()
        model.add_sae(sae)
        attached = (got.hook_name in model.acts_to_saes
                    or got.get("hook_name_out") in model.acts_to_saes)
        model.reset_saes()
        out["add_sae"] = "attached" if attached else "NOT attached"
        if not attached:
            problems.append(f"add_sae did not attach at {got.hook_name!r}")
        elif "skip" in out["architecture"]:  # measured: its delta is ~2x saerun's
            out["spliced"] = ("skipped: SAELens 6.54.12's add_sae drops a skip transcoder's "
                              "W_skip (its _SAEWrapper runs decode(encode(x)), not forward)")
        elif unrepresentable:
            out["spliced"] = "skipped: SAELens runs this SAE without saerun's " \
                "(not representable) step"
        elif "tokens" in data and "delta_lm_loss" in data:
            with torch.no_grad():
                delta = spliced_delta(model, sae, data["tokens"].long())
            expected = float(data["delta_lm_loss"].reshape(-1)[0])
            out["delta_lm_loss_saelens"], out["delta_lm_loss_saerun"] = delta, expected
            if abs(delta - expected) > CE_TOLERANCE:
                problems.append(f"spliced CE difference {delta:.6f} vs registry {expected:.6f}")
    out["ok"] = not problems
    out["problems"] = problems
    return out


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)  # noqa: T201 - a script
        return 2
    torch.set_num_threads(2)
    ok = True
    for name in argv:
        try:
            result = check(Path(name))
        except Exception as err:  # noqa: BLE001 - one folder's failure is reported, not raised
            result = {"folder": name, "ok": False, "problems": [f"{type(err).__name__}: {err}"]}
        ok = ok and result["ok"]
        print(json.dumps(result, sort_keys=True), flush=True)  # noqa: T201 - a script
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
