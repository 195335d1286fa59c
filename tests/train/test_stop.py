"""The stop request's handling of repeated signals, in this process."""

import os
import signal

import pytest

from train.stop import StopRequest, exit_status


def test_a_second_sigterm_changes_nothing_and_a_ctrl_c_after_it_stops_at_once():
    """Slurm's scancel and torchrun each send one SIGTERM: the second must not end the step in flight.
    Ctrl-C after a stop request raises KeyboardInterrupt, as it would without one."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    with StopRequest() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert (stop.requested(), stop.name) == (True, "SIGTERM")
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert {signum: signal.getsignal(signum) for signum in before} == before
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_exit_status_is_the_shells_for_the_signal():
    assert (exit_status("SIGINT"), exit_status("SIGTERM")) == (130, 143)
