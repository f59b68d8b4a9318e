"""Share and reproduce: export-spec gives a standalone spec with the same run id and bit-identical
weights in a fresh registry; `reproduce` says so; changed data is refused with a clear message."""

from __future__ import annotations

import itertools
import json

import yaml
from conftest import saerun
from safetensors.torch import load_file

from saerun.data import EMBEDDED_DATASETS

SPEC = """\
name: share
model: {{name: saerun/tiny-stdlib}}
site: {{hook_name: blocks.1.hook_resid_post}}
data: {{dataset: {data}, context_size: 64, train_tokens: 8192, eval_tokens: 1024,
       shuffle_buffer_tokens: 4096, lm_batch_sequences: 16}}
sae: {{architecture: relu, expansion_factor: 2, sparsity: {{penalty: sqrt_l1}}}}
train: {{lr: 5e-3, batch_tokens: 512, log_every_steps: 4}}
eval: {{metrics: [l0, mse, fvu, dead]}}
"""


def test_export_run_elsewhere_reproduce_and_refuse_changed_data(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    with open(EMBEDDED_DATASETS["saerun/stdlib"], encoding="utf-8") as src:
        corpus.write_text("".join(itertools.islice(src, 300)), encoding="utf-8")
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    alice.mkdir()
    bob.mkdir()
    (alice / "share.yaml").write_text(SPEC.format(data=corpus))
    first = saerun("share.yaml", "--quiet", cwd=alice)
    assert first.returncode == 0, first.stderr
    [run] = json.loads(saerun("ls", "--json", cwd=alice).stdout)

    # Alice sends Bob the exported spec; Bob trains it in his own registry.
    exported = saerun("export-spec", run["run_id"][:8], cwd=alice)
    assert exported.returncode == 0, exported.stderr
    folder = alice / "registry" / "runs" / run["run_id"]
    assert (folder / "run.yaml").read_text() == exported.stdout  # the run's folder holds it too
    spec = yaml.safe_load(exported.stdout)
    assert "sweep" not in spec and spec["sae"]["d_sae"] == 256  # derived values made explicit
    (bob / "from-alice.yaml").write_text(exported.stdout)
    second = saerun("from-alice.yaml", "--quiet", cwd=bob)
    assert second.returncode == 0, second.stderr
    [bobs] = json.loads(saerun("ls", "--json", cwd=bob).stdout)
    assert bobs["run_id"] == run["run_id"]
    a = load_file(alice / "registry" / "runs" / run["run_id"] / "sae_weights.safetensors")
    b = load_file(bob / "registry" / "runs" / run["run_id"] / "sae_weights.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)

    same = saerun("reproduce", run["run_id"][:8], "--into", str(tmp_path / "r1" / "r.db"),
                  cwd=alice)
    assert same.returncode == 0, same.stderr
    assert "reproduced: every weight is bit-identical" in same.stdout

    # A deliberately changed data file: refused before any training, with the reason.
    with open(corpus, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "def changed():\n    return 1\n"}) + "\n")
    changed = saerun("reproduce", run["run_id"][:8], cwd=alice)
    assert changed.returncode == 2
    assert f"the data of run {run['run_id'][:10]} changed" in changed.stderr
    assert "can only be reproduced on the data it was trained on" in changed.stderr


def test_a_local_data_file_enters_the_run_id_by_content_not_path(tmp_path):
    from saerun.runner import prepare

    text = "".join(itertools.islice(open(EMBEDDED_DATASETS["saerun/stdlib"], encoding="utf-8"),
                                    50))
    ids = []
    for folder in ("a", "b/c"):
        (tmp_path / folder).mkdir(parents=True)
        corpus = tmp_path / folder / "corpus.jsonl"
        corpus.write_text(text, encoding="utf-8")
        (tmp_path / folder / "s.yaml").write_text(SPEC.format(data=corpus))
        ids.append(prepare(tmp_path / folder / "s.yaml").plan.jobs[0].run_id)
    assert ids[0] == ids[1]
    with open(tmp_path / "b/c/corpus.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "x = 1\n"}) + "\n")
    assert prepare(tmp_path / "b/c/s.yaml").plan.jobs[0].run_id != ids[0]
