"""The stop request's handling of repeated signals, in this process."""

import os
import signal

import pytest

from train.stop import StopRequest, exit_status


@pytest.fixture
def python_handlers():
    """SIGINT as Python sets it (KeyboardInterrupt) and SIGTERM's default, whatever this process
    inherited (a shell's background job starts with SIGINT ignored); restored after."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def test_a_second_sigterm_changes_nothing_and_a_ctrl_c_after_it_stops_at_once(python_handlers):
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


def test_an_ignored_signal_stays_ignored(python_handlers):
    """A background job's SIGINT is ignored by its shell's choice: a stop request leaves it so."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.name == "SIGTERM"
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_exit_status_is_the_shells_for_the_signal():
    assert (exit_status("SIGINT"), exit_status("SIGTERM")) == (130, 143)


def test_the_first_signal_names_the_stop_and_a_ctrl_c_after_it_reaches_the_handler_before(python_handlers):
    """A SIGTERM after a Ctrl-C leaves the stop a SIGINT (exit status 130, not 143); a Ctrl-C after a stop
    request goes to whatever handler the program had installed, not only to Python's."""
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.name == "SIGINT"
    seen = []
    signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            pytest.fail("the Ctrl-C skipped the program's own handler")
        assert stop.name == "SIGTERM" and seen == [signal.SIGINT]
