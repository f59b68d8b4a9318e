"""One per-GPU process of the local launcher (launch/local.py `spread`):

    python -m saerun.launch.local_worker PAYLOAD REGISTRY [--retry-failed]

PAYLOAD is the JSON file the parent wrote: {"launcher": the launch record, "groups": [[run, ...],
...]}, one list per device job (`plan.DeviceJob`), every run as planned (run id, name, group
key, resolved config). The worker claims the next device job no one holds and runs it against
the registry, until none is left. A user error
is printed on stderr as the CLI prints it, and the exit code is 2, so the parent raises too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from saerun.errors import SaerunError
from saerun.execute import Summary, job_from_payload
from saerun.launch.local import run_here
from saerun.registry import Registry


def work(payload_path: Path, registry_path: Path, retry_failed: bool) -> Summary:
    """Claim and run the payload's device jobs in this process; the summary of what it did."""
    payload = json.loads(payload_path.read_text(encoding="utf-8"))
    groups = [[job_from_payload(job) for job in group] for group in payload["groups"]]
    summary = Summary(jobs=[job for group in groups for job in group])
    with Registry(registry_path, must_exist=True) as reg:
        run_here(reg, groups, payload["launcher"], retry_failed, None, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saerun.launch.local_worker")
    parser.add_argument("payload", type=Path)
    parser.add_argument("registry", type=Path)
    parser.add_argument("--retry-failed", action="store_true")
    args = parser.parse_args(argv)
    try:
        work(args.payload, args.registry, args.retry_failed)
    except SaerunError as err:
        sys.stderr.write(f"{err}\n")
        return err.exit_code
    except KeyboardInterrupt:  # the parent got it too and says what to do
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
