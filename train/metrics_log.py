"""The metrics a run logs: JSON lines, and TensorBoard where it imports."""

import json
from pathlib import Path

from jcra.files import remove_partial_writes, write_text_atomically


def _kept(line: str, resume_step: int, evaluated: bool) -> bool:
    """Whether a line of an interrupted run's log stays when it resumes from ``resume_step``: those of
    earlier steps, and that step's own unless an evaluation the checkpoint lacks (to be redone). A
    line cut short by the kill is no record and goes."""
    try:
        record = json.loads(line)
        step, kind = record["step"], record["kind"]
    except (ValueError, KeyError, TypeError):
        return False
    return step < resume_step or (step == resume_step and (kind != "val" or evaluated))


class MetricsLog:
    """Metrics to a JSON-lines file, and to TensorBoard when ``torch.utils.tensorboard`` imports."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int = 0, resume_evaluated: bool = False):
        """resume_step: the step a resumed run continues from (0 starts the log afresh); the lines the
        interrupted run logged after it go, since the resumed run logs them again, and so does that
        step's evaluation unless ``resume_evaluated`` (the checkpoint holds it). The file is rewritten
        atomically; TensorBoard is left showing what the kept lines hold."""
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        remove_partial_writes(self.path)
        kept: list[str] = []
        if self.path.is_file():
            lines = self.path.read_text().splitlines(keepends=True) if resume_step else []
            kept = [line for line in lines if _kept(line, resume_step, resume_evaluated)]
            write_text_atomically(self.path, "".join(kept))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        # TensorBoard drops every earlier event at or after purge_step, whatever its tag: those of the
        # resumed step go too (an evaluation there that the checkpoint lacks is redone), and the kept
        # lines of that step are written again, so each point is there once
        self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=max(resume_step, 1))
        for line in kept:
            record = json.loads(line)
            step, kind = record.pop("step"), record.pop("kind")
            if step == resume_step:
                self._to_tensorboard(step, kind, record)

    def log(self, step: int, kind: str, values: dict) -> None:
        from jcra.evaluation import strict_json

        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "kind": kind, **strict_json(values)}) + "\n")
        self._to_tensorboard(step, kind, values)

    def _to_tensorboard(self, step: int, kind: str, values: dict) -> None:
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, int | float):
                    self.writer.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
