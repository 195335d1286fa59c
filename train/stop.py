"""A graceful stop: SIGINT or SIGTERM (Ctrl-C, a scheduler's preemption) ends training after the step
in flight, with a checkpoint, so that a resume loses nothing; a Ctrl-C after it stops at once."""

import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """While entered (from the main thread; elsewhere it does nothing), the first SIGINT or SIGTERM is
    recorded in ``signum`` for the training loop to read at its next step. A SIGINT after it is handled
    as it would be without this (KeyboardInterrupt): a person pressing Ctrl-C again. A SIGTERM after it
    changes nothing: under Slurm and torchrun one preemption sends two (scancel signals every process
    of the job, and torchrun forwards its own), and the scheduler's SIGKILL follows its grace period
    anyway. A signal the process ignores stays ignored (a shell starts a background job with SIGINT
    ignored). The previous handlers are restored on exit."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            handled = [signum for signum in STOP_SIGNALS if signal.getsignal(signum) != signal.SIG_IGN]
            self._previous = {signum: signal.signal(signum, self._handle) for signum in handled}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
            print(
                f"[jcra] {self.name}: stopping after this step with a checkpoint (Ctrl-C again: at once)",
                file=sys.stderr,
                flush=True,
            )
        elif signum == signal.SIGINT:  # as if this handler were not there
            previous = self._previous[signum]
            if callable(previous):
                previous(signum, frame)  # Python's: KeyboardInterrupt
            else:
                signal.signal(signum, previous)
                signal.raise_signal(signum)


def exit_status(name: str) -> int:
    """The status the shell gives a process the signal ``name`` (e.g. ``"SIGTERM"``) ended: 128 + its
    number, which tells a scheduler or a script that the run did not finish."""
    return 128 + signal.Signals[name].value


def ignore_stop_signals(worker_id: int) -> None:
    """A data loader worker's ``worker_init_fn``: Ctrl-C reaches the whole process group, and a worker it
    ended would take the batch in flight with it. Workers end with their loader, or when the main
    process is gone."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
