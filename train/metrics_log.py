"""The metrics a run logs: JSON lines, and TensorBoard where it imports."""

import json
import math
from pathlib import Path


def _logged_step(line: str) -> float:
    """The step of a metrics line; infinity for a line cut short by a killed run (never kept)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class MetricsLog:
    """Metrics to a JSON-lines file, and to TensorBoard when ``torch.utils.tensorboard`` imports."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int = 0):
        """resume_step: the step a resumed run continues from; earlier lines stay, and those after it
        (logged by the interrupted run after its last checkpoint, and about to be redone) go. 0 starts
        the file afresh."""
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        if enabled and self.path.is_file():
            lines = self.path.read_text().splitlines(keepends=True) if resume_step else []
            self.path.write_text("".join(line for line in lines if _logged_step(line) <= resume_step))
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def log(self, step: int, kind: str, values: dict) -> None:
        from jcra.evaluation import strict_json

        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "kind": kind, **strict_json(values)}) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, int | float):
                    self.writer.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
