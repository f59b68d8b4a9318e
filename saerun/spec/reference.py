"""The spec reference in README.md, generated from the schema; `python -m saerun.spec.reference`
regenerates it in place (a test keeps it in sync)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from saerun.spec.architectures import ImportedSAEConfig, KSchedule
from saerun.spec.launcher import LAUNCHERS
from saerun.spec.schema import SAE_CONFIG_BY_TAG, SparsityConfig, Spec


def reference_markdown() -> str:
    """The spec reference in README.md, generated from the schema (a test keeps it in sync)."""
    sections: list[tuple[str, type[BaseModel]]] = [("(top level)", Spec)]
    sections += [(name, f.annotation) for name, f in Spec.model_fields.items()
                 if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)]
    sections += [(f"sae (architecture: {tag})", cls) for tag, cls in SAE_CONFIG_BY_TAG.items()]
    sections.append(("sae (from_pretrained: an SAE trained elsewhere)", ImportedSAEConfig))
    sections.append(("sae.sparsity", SparsityConfig))
    sections.append(("sae.k_schedule (architecture: topk)", KSchedule))
    sections += [(f"launcher (kind: {tag})", cls) for tag, cls in LAUNCHERS.items()]
    out = []
    for title, model in sections:
        out += [f"**{title}**", "", "| field | default | meaning |", "|---|---|---|"]
        for name, f in model.model_fields.items():
            if title == "(top level)" and name not in ("name", "seed"):
                continue
            if f.is_required():
                default = "required"
            elif f.default_factory is dict:
                default = "`{}`"
            elif f.default_factory is not None:
                default = "see section" if name != "metrics" else "all"
            else:
                default = f"`{f.default!r}`" if f.default is not None else "`null`"
            out.append(f"| `{name}` | {default} | {f.description} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # noqa: T201 - regenerate the README's spec reference in place
    readme = Path(__file__).resolve().parents[2] / "README.md"
    text = readme.read_text()
    start, end = "<!-- spec-reference:start -->", "<!-- spec-reference:end -->"
    head, rest = text.split(start)
    _, tail = rest.split(end)
    readme.write_text(f"{head}{start}\n{reference_markdown()}\n{end}{tail}")
