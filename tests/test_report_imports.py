"""report/ is a pure function of registry rows: importing any of it leaves torch unloaded."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import saerun.report

MODULES = sorted(f"saerun.report.{m.name}" for m in pkgutil.iter_modules(saerun.report.__path__))


def test_every_report_module_is_torch_free():
    assert "saerun.report.build" in MODULES and "saerun.report.findings" in MODULES
    code = ("import sys\n" + "".join(f"import {m}\n" for m in MODULES)
            + "heavy = sorted(m for m in ('torch', 'transformer_lens', 'saerun.runner', "
              "'saerun.train', 'saerun.activations', 'saerun.evaluate', 'saerun.sae') "
              "if m in sys.modules)\n"
            + "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
