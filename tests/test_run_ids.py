"""Run ids never change: a registry trained by an earlier saerun must still recognise its runs.

The ids below are what saerun gave before derived values (aux_k, Matryoshka prefixes, default
coefficients, decoder init norms) moved into the planner and `eval.metrics` was renamed: the
planner hashes the v1 identity view of each resolved config (`plan.v1_identity`)."""

from __future__ import annotations

import hashlib

import pytest

from saerun.runner import prepare

PINNED = {
    "specs/quickstart.yaml": [
        "13b56b8c158fe61f", "8dc18da4b7ae8a6a", "7a4af073ef361619", "cd01778160af5833",
        "66cf44ec44f64724", "ca5e237a8f6622c2",
    ],
    "specs/gpt2_topk.yaml": ["9b6bd60e2595cdb0"],
    "specs/matryoshka_batchtopk.yaml": [
        "454e7032f539d4c3", "365d60683f5e9f08", "040d3366151ebd66", "2ad459dfbefa9c5b",
        "6690d102a974f951", "d10e1cdabc2312e2",
    ],
    "specs/gemma2_2b_jumprelu.yaml": [
        "00357f5121cec406", "b1ddcaff8c638f4d", "40398df25c4fc612", "97215abd35213c5d",
        "f8c8787b910314e5", "b8722238a968e058",
    ],
    # every architecture with its defaults: derived aux_k, prefixes, coefficients, init norms
    "specs/architectures.yaml": [
        "22ad43325dcb91a3", "54b8060ebf4a5a53", "07845efa6cdd7506", "6d2a5747d13d1911",
        "677bd1bf2483caa7", "52d55a12fcfd18cf", "4c7b7edf10eb740b", "3b6f5b5b95225cf9",
    ],
    # a TopK transcoder and a ReLU skip transcoder, blocks.1.hook_mlp_in -> hook_mlp_out
    "specs/transcoders.yaml": ["5b1bb9f8ff2ee8bd", "0df027c1b6a2ada2"],
}

# The other committed specs: (number of runs, sha256 of their comma-joined ids, first 16 hex).
DIGESTS = {
    "specs/findings/_base.yaml": (1, "2343a7ede223f4bc"),
    "specs/findings/death-relu.yaml": (4, "f37bf317c98cf97d"),
    "specs/findings/death-topk.yaml": (4, "659f8e9564dc226e"),
    "specs/findings/frontier.yaml": (37, "c4b08dcba174ae4f"),
    "specs/findings/ideas-matryoshka.yaml": (7, "b3b042c43374ef4a"),
    "specs/findings/ideas-progressive.yaml": (11, "2b504c47ac06ffcb"),
    "specs/findings/ideas-gated-bmag.yaml": (9, "1c90b441af3fae90"),
    "specs/findings/ideas-jumprelu-memory.yaml": (6, "3c8e7a98291a8675"),
    "specs/findings/init.yaml": (12, "61fff656ec73543e"),
    "specs/findings/lr.yaml": (18, "e1e870d447f7c09d"),
    "specs/findings/shuffle.yaml": (8, "40cbc884bf820a88"),
    "specs/findings/transcoder-init.yaml": (8, "3874131a7a00cdc4"),
    "specs/findings/transcoders.yaml": (8, "8c011a8d6077d111"),
    "specs/gelu1l_gated.yaml": (10, "681c3c1199cd8c99"),
    "specs/gemma7b_gated.yaml": (120, "50d442e1b3783c70"),
    "specs/pythia2.8b_gated.yaml": (40, "69a2f54d79e76223"),
}


@pytest.mark.parametrize("path", sorted(PINNED))
def test_run_ids_are_those_of_v1(path):
    assert [job.run_id for job in prepare(path).plan.jobs] == PINNED[path]


@pytest.mark.parametrize("path", sorted(DIGESTS))
def test_every_committed_spec_keeps_its_run_ids(path):
    ids = [job.run_id for job in prepare(path).plan.jobs]
    digest = hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]
    assert (len(ids), digest) == DIGESTS[path]
