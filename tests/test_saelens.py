"""saerun/saelens.py: the cfg.json an export writes, and reading SAELens folders (every key
checked; the inference maths by hand). Offline and without SAELens: folders are written here
in its layout (tests/test_saelens_real.py checks against the real package)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import unit_config
from safetensors.torch import save_file

from saerun import imported, saelens
from saerun.errors import SaerunError

D_IN, D_SAE, D_OUT = 3, 4, 2
SIZES = {"d_in": D_IN, "d_sae": D_SAE, "d_out": D_OUT}


def tensors_for(arch: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {name: torch.randn(*(SIZES[d] for d in dims), generator=g)
           for name, dims in saelens.TENSORS[arch].items()}
    if "threshold" in out:
        out["threshold"] = out["threshold"].abs()
    return out


def make_folder(root: Path, arch: str = "standard", tensors: dict | None = None,
                **cfg: object) -> Path:
    folder = root / arch
    folder.mkdir(parents=True, exist_ok=True)
    base = {"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
            "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
            "reshape_activations": "none",
            "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.0.hook_resid_post"}}
    if arch == "topk":
        base |= {"k": 2, "rescale_acts_by_decoder_norm": False}
    kind = cfg.get("architecture", arch)
    if kind in saelens.TRANSCODER_KINDS:  # as SAELens writes them
        base |= {"d_out": D_OUT, "apply_b_dec_to_input": False}
        base["metadata"] = {**base["metadata"], "hook_name_out": "blocks.0.hook_mlp_out"}
    base |= cfg
    (folder / "cfg.json").write_text(json.dumps({k: v for k, v in base.items() if v != "DROP"}))
    save_file(tensors if tensors is not None else tensors_for(kind if kind in saelens.TENSORS
                                                              else arch),
              str(folder / "sae_weights.safetensors"))
    return folder


# -- writing ---------------------------------------------------------------------------------


class _Exported:
    d_in, d_sae = 8, 32


def test_export_cfg_keeps_what_saelens_reads_into_metadata():
    config = unit_config()
    metrics = {"l0": 12.5, "dead_fraction_train": 0.25}
    cfg = saelens.export_cfg(_Exported(), config, "abc", "mode", 0.5, metrics)
    meta = cfg["metadata"]
    # >= 6.0: SAELens keeps `metadata` as written instead of rebuilding it from top-level keys.
    assert meta["sae_lens_version"] == saelens.SAELENS_VERSION
    assert int(meta["sae_lens_version"].split(".")[0]) >= 6
    assert meta["hook_name"] == "h" and meta["model_name"] == config.model.name
    assert meta["context_size"] == config.data.context_size and meta["prepend_bos"] is True
    assert meta["exclude_special_tokens"] is True and meta["hook_head_index"] is None
    assert meta["dataset_path"] == config.data.dataset
    assert meta["training_architecture"] == "relu"
    assert meta["training_architecture_details"]["sparsity"]["coefficient"] == 0.1
    assert meta["l0"] == 12.5 and meta["num_dead_features"] == 8  # 0.25 of 32 latents
    assert meta["saerun_run_id"] == "abc" and meta["normalization_scale_folded"] == 0.5
    assert (cfg["d_in"], cfg["d_sae"], cfg["normalize_activations"]) == (8, 32, "none")
    assert cfg["reshape_activations"] == "none"
    json.dumps(cfg, allow_nan=False)  # strict JSON


def test_export_cfg_writes_no_nan_and_reshapes_hook_z():
    config = unit_config()
    config = config.model_copy(update={"site": config.site.model_copy(
        update={"hook_name": "blocks.0.attn.hook_z"})})
    cfg = saelens.export_cfg(_Exported(), config, "abc", "mode", 1.0, {"l0": math.nan})
    assert cfg["metadata"]["l0"] is None and cfg["metadata"]["num_dead_features"] is None
    assert cfg["reshape_activations"] == "hook_z"


# -- reading: every key checked --------------------------------------------------------------


def test_read_folder_reads_widths_options_and_hash(tmp_path):
    info = saelens.read_folder(make_folder(tmp_path, "topk"))
    assert (info.architecture, info.d_in, info.d_sae) == ("topk", D_IN, D_SAE)
    assert info.options["k"] == 2 and info.options["rescale_acts_by_decoder_norm"] is False
    assert info.hook_name == "blocks.0.hook_resid_post" and info.scaling_factor is None
    # The device is not the SAE's content; a weight is.
    same = saelens.read_folder(make_folder(tmp_path / "b", "topk", device="cuda"))
    assert same.content_sha256 == info.content_sha256
    tensors = tensors_for("topk")
    tensors["b_dec"][0] += 1e-3
    other = saelens.read_folder(make_folder(tmp_path / "c", "topk", tensors=tensors))
    assert other.content_sha256 != info.content_sha256
    k3 = saelens.read_folder(make_folder(tmp_path / "d", "topk", k=3))
    assert k3.content_sha256 != info.content_sha256


@pytest.mark.parametrize(("cfg", "expected"), [
    ({"architecture": "sparsemax"}, "architecture: unknown architecture 'sparsemax'"),
    ({"architecture": "skip_transcoder", "apply_b_dec_to_input": True},
     "apply_b_dec_to_input: true is not defined for a skip_transcoder"),
    ({"architecture": "transcoder", "d_out": "DROP"}, "d_out: must be a positive integer"),
    ({"architecture": "jumprelu_transcoder", "k": 3},
     "k: an option saerun does not know for a jumprelu_transcoder"),
    ({"normalize_activations": "layer_norm"}, "normalize_activations: 'layer_norm' is not"),
    ({"normalize_activations": "expected_average_only_in"},
     "normalize_activations: 'expected_average_only_in' needs the factor"),
    ({"reshape_activations": "hook_q"}, "reshape_activations: 'hook_q' is not honoured"),
    ({"l1_coefficient": 5}, "l1_coefficient: an option saerun does not know for a standard"),
    ({"k": 2}, "k: an option saerun does not know for a standard SAE"),
    ({"metadata": {"sae_lens_version": "5.9.1"}}, "metadata.sae_lens_version: '5.9.1'"),
    ({"metadata": {}}, "metadata.sae_lens_version: None"),
    ({"metadata": "DROP"}, "metadata: missing"),
    ({"d_sae": 0}, "d_sae: must be a positive integer, got 0"),
    ({"metadata": {"sae_lens_version": "6.1", "hook_head_index": 3}},
     "metadata.hook_head_index: 3: an SAE on one attention head"),
    ({"dtype": "int8"}, "dtype: unknown dtype 'int8'"),
    ({"apply_b_dec_to_input": "yes"}, "apply_b_dec_to_input: must be true or false"),
])
def test_an_option_saerun_cannot_honour_is_an_error_naming_the_key(tmp_path, cfg, expected):
    folder = make_folder(tmp_path, **cfg)
    with pytest.raises(SaerunError) as err:
        saelens.read_folder(folder)
    assert err.value.message.startswith(f"{folder}/cfg.json: {expected}"), err.value.message


def test_topk_options_are_checked(tmp_path):
    with pytest.raises(SaerunError, match=r"k: must be an integer in 1..d_sae \(4\), got 5"):
        saelens.read_folder(make_folder(tmp_path, "topk", k=5))
    with pytest.raises(SaerunError, match="rescale_acts_by_decoder_norm: must be true or false"):
        saelens.read_folder(make_folder(tmp_path, "topk", rescale_acts_by_decoder_norm=1))


def test_the_scaling_factor_comes_from_the_spec_or_the_folder(tmp_path):
    folder = make_folder(tmp_path, normalize_activations="expected_average_only_in")
    assert saelens.read_folder(folder, 2.5).scaling_factor == 2.5
    (folder / "activation_scaler.json").write_text('{"scaling_factor": 0.75}')
    info = saelens.read_folder(folder)
    assert info.scaling_factor == 0.75
    assert info.content_sha256 != saelens.read_folder(folder, 2.5).content_sha256
    plain = make_folder(tmp_path / "p")
    with pytest.raises(SaerunError, match="'none' takes no norm_scaling_factor"):
        saelens.read_folder(plain, 2.0)


def test_missing_files_are_errors(tmp_path):
    with pytest.raises(SaerunError, match="no cfg.json in"):
        saelens.read_folder(tmp_path)
    folder = make_folder(tmp_path)
    (folder / "sae_weights.safetensors").unlink()
    with pytest.raises(SaerunError, match="no sae_weights.safetensors in"):
        saelens.read_folder(folder)


def test_tensors_are_checked_by_name_and_shape(tmp_path):
    extra = tensors_for("standard") | {"W_skip": torch.zeros(D_IN, D_IN)}
    with pytest.raises(SaerunError, match="tensor 'W_skip' is not part of a standard SAE"):
        imported.load_sae(saelens.read_folder(make_folder(tmp_path / "a", tensors=extra)))
    missing = {k: v for k, v in tensors_for("gated").items() if k != "r_mag"}
    with pytest.raises(SaerunError, match="tensor 'r_mag' is missing"):
        imported.load_sae(saelens.read_folder(make_folder(tmp_path / "b", "gated",
                                                         tensors=missing)))
    wrong = tensors_for("standard") | {"b_enc": torch.zeros(D_SAE + 1)}
    with pytest.raises(SaerunError, match=r"'b_enc' has shape \(5,\), cfg.json says \(4,\)"):
        imported.load_sae(saelens.read_folder(make_folder(tmp_path / "c", tensors=wrong)))


# -- the inference maths, by hand --------------------------------------------------------------


X = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 1.0]])
W_ENC = torch.tensor([[1.0, 0.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.5], [1.0, 1.0, 1.0, 0.0]])
W_DEC = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.5], [1.0, 1.0, 1.0]])
B_DEC = torch.tensor([0.0, 1.0, 0.0])
ZERO = torch.zeros(D_SAE)


def sae_of(tmp_path: Path, arch: str, extra: dict, **cfg: object) -> imported.SAELensSAE:
    tensors = {"W_enc": W_ENC, "W_dec": W_DEC, "b_dec": B_DEC} | extra
    return imported.load_sae(saelens.read_folder(make_folder(tmp_path, arch, tensors, **cfg)))


def test_standard_and_apply_b_dec(tmp_path):
    # x - b_dec = [[1, 1, 0], [0, -2, 1]]; pre = that @ W_enc + b_enc (b_enc = [0, 0, 0, -1]).
    sae = sae_of(tmp_path / "a", "standard", {"b_enc": torch.tensor([0.0, 0.0, 0.0, -1.0])})
    f = sae.encode(X)
    assert torch.equal(f, torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]]))
    assert torch.equal(sae.decode(f), torch.tensor([[1.0, 3.0, 0.0], [1.0, 1.0, 0.5]]))
    # apply_b_dec_to_input false: pre = x @ W_enc + b_enc.
    raw = sae_of(tmp_path / "b", "standard", {"b_enc": ZERO}, apply_b_dec_to_input=False)
    assert torch.equal(raw.encode(X), torch.tensor([[1.0, 2.0, 0.0, 1.5], [1.0, 0.0, 1.0, 0.0]]))


def test_jumprelu_is_relu_times_the_step(tmp_path):
    # pre = [[1, 1, -1, 1], [1, -1, 1, -1]]; a negative threshold keeps SAELens's ReLU.
    theta = torch.tensor([1.0, 0.5, -2.0, 0.99])
    sae = sae_of(tmp_path, "jumprelu", {"b_enc": ZERO, "threshold": theta})
    assert torch.equal(sae.encode(X), torch.tensor([[0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]]))


def test_gated_gate_and_magnitude(tmp_path):
    # gate: pre + b_gate > 0; magnitude: ReLU((x - b_dec) @ (W_enc * exp(r_mag)) + b_mag).
    extra = {"b_gate": torch.tensor([0.0, -1.0, 0.0, 0.0]), "r_mag": torch.tensor([0.0, 0.0,
             0.0, math.log(2.0)]), "b_mag": torch.tensor([1.0, 0.0, 0.0, 0.0])}
    f = sae_of(tmp_path, "gated", extra).encode(X)
    assert torch.allclose(f, torch.tensor([[2.0, 0.0, 0.0, 2.0], [2.0, 0.0, 1.0, 0.0]]))


def test_topk_with_decoder_norm_rescaling(tmp_path):
    # pre = [[1, 1, -1, 1], [1, -1, 1, -1]] times ||W_dec|| = [1, 2, 0.5, sqrt 3]; top 2.
    sae = sae_of(tmp_path, "topk", {"b_enc": ZERO}, rescale_acts_by_decoder_norm=True)
    f = sae.encode(X)
    assert torch.allclose(f, torch.tensor([[0.0, 2.0, 0.0, 3**0.5], [1.0, 0.0, 0.5, 0.0]]))
    # decode divides the codes by the norms again: [[0, 1, 0, 1], [1, 0, 1, 0]] @ W_dec + b_dec.
    assert torch.allclose(sae.decode(f), torch.tensor([[1.0, 4.0, 1.0], [1.0, 1.0, 0.5]]))
    # Without rescaling, the top 2 of pre + b_enc = [[1.2, 1.1, -1, 1], [1.2, -0.9, 1, -1]].
    plain = sae_of(tmp_path / "p", "topk", {"b_enc": torch.tensor([0.2, 0.1, 0.0, 0.0])})
    assert torch.allclose(plain.encode(X), torch.tensor([[1.2, 1.1, 0.0, 0.0],
                                                         [1.2, 0.0, 1.0, 0.0]]))


def test_a_scaling_factor_scales_inputs_and_unscales_outputs(tmp_path):
    extra = {"b_enc": torch.tensor([0.0, 0.0, 0.0, -1.0])}
    plain = sae_of(tmp_path / "a", "standard", extra)
    tensors = {"W_enc": W_ENC, "W_dec": W_DEC, "b_dec": B_DEC} | extra
    folder = make_folder(tmp_path / "b", "standard", tensors,
                         normalize_activations="expected_average_only_in")
    (folder / "activation_scaler.json").write_text('{"scaling_factor": 4.0}')
    scaled = imported.load_sae(saelens.read_folder(folder))
    # The SAE sees 4 x: its codes are the plain SAE's of 4 x, its output that / 4.
    assert torch.equal(scaled.encode(X), plain.encode(4 * X))
    assert torch.equal(scaled.decode(scaled.encode(X)), plain.decode(plain.encode(4 * X)) / 4)


def test_transcoders_read_d_out_and_the_target_hook(tmp_path):
    info = saelens.read_folder(make_folder(tmp_path, "jumprelu_skip_transcoder"))
    assert (info.d_in, info.d_sae, info.d_out) == (D_IN, D_SAE, D_OUT) and info.transcoder
    assert info.hook_name_out == "blocks.0.hook_mlp_out"
    assert not saelens.read_folder(make_folder(tmp_path, "jumprelu")).transcoder
    shapes = {k: tuple(v.shape) for k, v in imported.load_sae(info).tensors().items()}
    assert shapes == {"W_enc": (3, 4), "b_enc": (4,), "W_dec": (4, 2), "b_dec": (2,),
                      "threshold": (4,), "W_skip": (2, 3)}


TC_W_DEC = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, -1.0]])
TC_B_DEC = torch.tensor([0.5, 0.0])
W_SKIP = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])


def transcoder_of(tmp_path: Path, arch: str, extra: dict, **cfg: object) -> imported.SAELensSAE:
    tensors = {"W_enc": W_ENC, "b_enc": torch.tensor([0.0, 0.0, 0.0, -1.0]), "W_dec": TC_W_DEC,
               "b_dec": TC_B_DEC} | extra
    return imported.load_sae(saelens.read_folder(make_folder(tmp_path, arch, tensors, **cfg)))


def test_transcoder_maths_no_input_centring_and_the_skip_on_the_raw_input(tmp_path):
    from saerun.evaluate import output

    # pre = x @ W_enc + b_enc (no b_dec: it is d_out wide) = [[1, 2, 0, 0.5], [1, 0, 1, -1.5]].
    plain = transcoder_of(tmp_path / "a", "transcoder", {})
    f = plain.encode(X)
    assert torch.equal(f, torch.tensor([[1.0, 2.0, 0.0, 0.5], [1.0, 0.0, 1.0, 0.0]]))
    # f @ W_dec + b_dec = [[1, 3.5], [2, 1]] + [0.5, 0].
    assert torch.equal(output(plain, X, f), torch.tensor([[1.5, 3.5], [2.5, 1.0]]))
    # JumpReLU: ReLU(pre) where pre > threshold; the skip adds x W_skip^T = [[1, 0], [0, 2]].
    theta = torch.tensor([1.0, 0.5, 0.5, 0.0])
    jump = transcoder_of(tmp_path / "b", "jumprelu_skip_transcoder",
                         {"threshold": theta, "W_skip": W_SKIP})
    g = jump.encode(X)
    assert torch.equal(g, torch.tensor([[0.0, 2.0, 0.0, 0.5], [0.0, 0.0, 1.0, 0.0]]))
    assert torch.equal(output(jump, X, g), torch.tensor([[1.5, 3.5], [1.5, 3.0]]))
    # expected_average_only_in scales the encoder's input only, never the skip's or the output.
    tensors = {"W_enc": W_ENC, "b_enc": torch.tensor([0.0, 0.0, 0.0, -1.0]), "W_dec": TC_W_DEC,
               "b_dec": TC_B_DEC, "W_skip": W_SKIP}
    folder = make_folder(tmp_path / "c", "skip_transcoder", tensors,
                         normalize_activations="expected_average_only_in")
    scaled = imported.load_sae(saelens.read_folder(folder, 2.0))
    unscaled = transcoder_of(tmp_path / "d", "skip_transcoder", {"W_skip": W_SKIP})
    h = scaled.encode(X)
    assert torch.equal(h, unscaled.encode(2 * X))
    assert torch.equal(output(scaled, X, h), unscaled.decode(h) + X @ W_SKIP.t())


def test_older_jumprelu_log_threshold_is_converted(tmp_path):
    tensors = tensors_for("jumprelu")
    theta = tensors.pop("threshold")
    tensors["log_threshold"] = theta.log()
    sae = imported.load_sae(saelens.read_folder(make_folder(tmp_path, "jumprelu", tensors)))
    assert torch.allclose(sae.tensors()["threshold"], theta)


# -- an imported SAE, end to end (the real CLI) ------------------------------------------------


def test_an_imported_sae_is_evaluated_and_registered(tmp_path):
    from conftest import saerun

    from saerun.activations import LanguageModel, eval_token_batches
    from saerun.spec import RunConfig

    g = torch.Generator().manual_seed(0)
    d_in, d_sae = 128, 64  # the embedded model's width
    w_dec = torch.randn(d_sae, d_in, generator=g)
    tensors = {"W_enc": w_dec.t().contiguous() / 10, "b_enc": torch.zeros(d_sae),
               "W_dec": w_dec / 10, "b_dec": torch.zeros(d_in),
               "threshold": torch.rand(d_sae, generator=g)}
    folder = tmp_path / "specs" / "theirs"
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae,
        "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.1.hook_resid_post"}}))
    (tmp_path / "specs" / "imp.yaml").write_text(
        "name: imp\nsite: {hook_name: blocks.1.hook_resid_post}\n"
        "data: {context_size: 64, train_tokens: 4096, eval_tokens: 1024}\n"
        "sae: {from_pretrained: theirs}\n")
    done = saerun("specs/imp.yaml", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listed = json.loads(saerun("ls", "--json", cwd=tmp_path).stdout)
    assert len(listed) == 1 and listed[0]["status"] == "done"
    run = json.loads(saerun("show", listed[0]["run_id"], "--json", cwd=tmp_path).stdout)
    assert run["config"]["sae"]["architecture"] == "imported"
    assert run["config"]["sae"]["from_pretrained"] == str(folder)
    assert run["tokens_trained"] == 0
    for name in ("run.yaml", "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"):
        assert (Path(run["artifacts"]) / name).exists(), name
    # Its L0 is the folder's SAE's (SAELens's maths) on the held-out activations.
    cfg = RunConfig.model_validate(run["config"])
    lm = LanguageModel.load(cfg.model.name)
    tokens = torch.cat(eval_token_batches(lm, cfg.data))
    with torch.no_grad():
        x = lm.capture(tokens, [cfg.site.hook_name])[cfg.site.hook_name][~lm.special_mask(tokens)]
        f = imported.load_sae(saelens.read_folder(folder)).encode(x)
    l0 = float((f > 0).double().sum(-1).mean())
    assert 0 < run["metrics"]["l0"] and abs(run["metrics"]["l0"] - l0) < 1e-9 * l0
    assert run["metrics"]["fvu"] > 0


def _transcoder_folder(root: Path, hook_out: str | None = "blocks.1.hook_mlp_out") -> Path:
    g = torch.Generator().manual_seed(1)
    d, d_sae = 128, 64  # the embedded model's widths at hook_mlp_in and hook_mlp_out
    tensors = {"W_enc": torch.randn(d, d_sae, generator=g) / 10, "b_enc": torch.zeros(d_sae),
               "W_dec": torch.randn(d_sae, d, generator=g) / 10, "b_dec": torch.zeros(d),
               "W_skip": torch.randn(d, d, generator=g) / 100}
    root.mkdir(parents=True)
    save_file(tensors, str(root / "sae_weights.safetensors"))
    meta = {"sae_lens_version": "6.54.12", "hook_name": "blocks.1.hook_mlp_in"}
    if hook_out is not None:
        meta["hook_name_out"] = hook_out
    (root / "cfg.json").write_text(json.dumps({
        "architecture": "skip_transcoder", "d_in": d, "d_sae": d_sae, "d_out": d,
        "apply_b_dec_to_input": False, "metadata": meta}))
    return root


SITE_TC = "site: {hook_name: blocks.1.hook_mlp_in, hook_name_out: blocks.1.hook_mlp_out}\n"


@pytest.mark.parametrize(("site", "expected"), [
    ("site: {hook_name: blocks.1.hook_mlp_in}\n",
     "{d}/spec.yaml:2: site.hook_name_out: the SAE in {d}/theirs is a skip_transcoder: it "
     "reads one hook"),
    ("site: {hook_name: blocks.1.hook_mlp_in, hook_name_out: blocks.2.hook_mlp_out}\n",
     "{d}/spec.yaml:2: site.hook_name_out: the transcoder in {d}/theirs was trained to predict "
     "'blocks.1.hook_mlp_out'"),
    ("site: {hook_name: blocks.1.hook_mlp_in, hook_name_out: blocks.1.hook_nope}\n",
     "{d}/spec.yaml:2: site.hook_name_out: unknown hook name 'blocks.1.hook_nope'"),
])
def test_an_imported_transcoder_needs_its_target_hook(tmp_path, site, expected):
    from saerun.errors import SpecError
    from saerun.runner import prepare

    _transcoder_folder(tmp_path / "theirs")
    (tmp_path / "spec.yaml").write_text(f"name: s\n{site}sae: {{from_pretrained: theirs}}\n")
    with pytest.raises(SpecError) as err:
        prepare(tmp_path / "spec.yaml")
    assert str(err.value).split("error: ", 1)[-1].startswith(expected.format(d=tmp_path)), \
        str(err.value)


def test_an_sae_folder_with_a_target_hook_is_an_error(tmp_path):
    from saerun.errors import SpecError
    from saerun.runner import prepare

    folder = tmp_path / "theirs"
    folder.mkdir()
    save_file({"W_enc": torch.zeros(128, 8), "b_enc": torch.zeros(8), "W_dec": torch.zeros(8, 128),
               "b_dec": torch.zeros(128)}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": 128, "d_sae": 8,
        "metadata": {"sae_lens_version": "6.54.12"}}))
    (tmp_path / "spec.yaml").write_text(f"name: s\n{SITE_TC}sae: {{from_pretrained: theirs}}\n")
    with pytest.raises(SpecError, match="is a standard SAE, not a transcoder"):
        prepare(tmp_path / "spec.yaml")


def test_an_imported_transcoder_is_scored_against_its_target(tmp_path):
    """A skip transcoder read from a SAELens folder: the registry's FVU is its output's
    (decode of its codes plus x W_skip^T) against the activation at hook_name_out."""
    from conftest import saerun

    from saerun.activations import LanguageModel, eval_token_batches
    from saerun.evaluate import output
    from saerun.spec import RunConfig

    folder = _transcoder_folder(tmp_path / "specs" / "theirs")
    (tmp_path / "specs" / "imp.yaml").write_text(
        f"name: imp\n{SITE_TC}data: {{context_size: 64, train_tokens: 4096, eval_tokens: 1024}}\n"
        "sae: {from_pretrained: theirs}\n")
    done = saerun("specs/imp.yaml", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (listed,) = json.loads(saerun("ls", "--json", cwd=tmp_path).stdout)
    assert listed["config"]["sae"]["d_out"] == 128
    assert listed["config"]["sae"]["saelens_architecture"] == "skip_transcoder"
    cfg = RunConfig.model_validate(listed["config"])
    lm = LanguageModel.load(cfg.model.name)
    tokens = torch.cat(eval_token_batches(lm, cfg.data))
    hooks = ["blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out"]
    with torch.no_grad():
        acts = lm.capture(tokens, hooks)
        keep = ~lm.special_mask(tokens)
        x, y = acts[hooks[0]][keep], acts[hooks[1]][keep]
        sae = imported.load_sae(saelens.read_folder(folder))
        y_hat = output(sae, x, sae.encode(x))
    fvu = ((y - y_hat).double().pow(2).sum() / (y - y.mean(0)).double().pow(2).sum()).item()
    assert listed["metrics"]["fvu"] == pytest.approx(fvu, rel=1e-5)
