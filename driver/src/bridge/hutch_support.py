"""hutch's test-script bridge: the NixOS test driver's globals and Machine objects, each call
forwarded to the hutch driver as one line of JSON over the socket in $HUTCH_BRIDGE_FD.
Standard library only; embedded in the hutch binary and run as `python3 -c`.

This first part is the plumbing every global uses: the channel to the driver, the errors, the
argument conversions, `retry`, polling conditions, `log` and `subtest`. hutch_machine.py (the
Machine classes) and hutch_driver.py (the `driver`, the globals, main) follow: the three files
are one module."""

import contextlib
import datetime
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback


class TestScriptError(Exception):
    """The NixOS driver's base of errors that fail the test script (test_driver.errors)."""


class RequestedAssertionFailed(TestScriptError, AssertionError):
    """A check the test asked for failed (succeed, fail, waits, units, `t.assert*`).
    Also an AssertionError, so scripts catching either keep working."""


class MachineError(TestScriptError):
    """A node could not do what was asked (upstream's test_driver.errors.MachineError)."""


class PollingConditionError(Exception):
    """A polling condition stopped holding."""


_ERRORS = {
    "RequestedAssertionFailed": RequestedAssertionFailed,
    "NotImplementedError": NotImplementedError,
    "AttributeError": AttributeError,
    "TypeError": TypeError,
    "TimeoutError": TimeoutError,
}


class _Channel:
    """Requests out, replies in, matched by id; any thread may call."""

    def __init__(self, fd):
        self.sock = socket.socket(fileno=fd)
        self.reader = self.sock.makefile("rb")
        self.lock = threading.Lock()
        self.next_id = 0
        self.waiting = {}
        self.gone = None
        threading.Thread(target=self._read, name="hutch-bridge", daemon=True).start()

    def _read(self):
        try:
            for line in self.reader:
                msg = json.loads(line)
                with self.lock:
                    slot = self.waiting.pop(msg["id"], None)
                # A reply nobody waits for (a call posted without waiting) is dropped here.
                if slot is not None:
                    slot[1] = msg
                    slot[0].set()
        except Exception as e:  # the driver went away
            self.gone = repr(e)
        with self.lock:
            self.gone = self.gone or "the hutch driver closed the connection"
            for slot in self.waiting.values():
                slot[0].set()
            self.waiting.clear()
        # Python never outlives the driver: the main thread may sit at the REPL's prompt,
        # where only a signal reaches it (the REPL turns SIGTERM into a clean exit). Sent to
        # that thread, and again until the process ends: readline looks at signals only when
        # one interrupts its wait for a key, so one that lands while it handles a key is
        # seen no sooner than the next key.
        while True:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
            time.sleep(0.2)

    def _send(self, node, method, params, slot):
        with self.lock:
            if self.gone:
                raise ConnectionError(self.gone)
            self.next_id += 1
            rid = self.next_id
            if slot is not None:
                self.waiting[rid] = slot
            line = json.dumps({"id": rid, "node": node, "method": method, "params": params})
            self.sock.sendall(line.encode() + b"\n")
        return rid

    def post(self, node, method, params):
        """Send a call and do not wait for its reply (execute(..., check_output=False))."""
        self._send(node, method, params, None)

    def call(self, node, method, params):
        slot = [threading.Event(), None]
        rid = self._send(node, method, params, slot)
        try:
            slot[0].wait()
        except KeyboardInterrupt:
            # Ctrl-C (`hutch test --interactive`): stop waiting, and have the driver cancel
            # the call (the command it runs in the node is killed) before the prompt comes
            # back; its late reply is dropped.
            with self.lock:
                self.waiting.pop(rid, None)
            if not self.gone:
                with contextlib.suppress(OSError, ConnectionError):
                    self.call(None, "cancel", {"call": rid})
            raise
        msg = slot[1]
        if msg is None:
            raise ConnectionError(self.gone)
        if "error" in msg:
            err = msg["error"]
            exc = _ERRORS.get(err["type"], Exception)(err["message"])
            exc.hutch_call = rid
            raise exc
        return msg.get("ok")


_chan = None
_polling = []
_in_condition = threading.local()

# A number as upstream's driver would pass it to a shell: 5, 2.5, "5", "2.5s", "1m".
_NUMBER = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(t, what="timeout"):
    """Seconds from a number, a datetime.timedelta, or a string `sleep` would take; None stays."""
    if isinstance(t, datetime.timedelta):
        return t.total_seconds()
    if t is None or (isinstance(t, (int, float)) and not isinstance(t, bool)):
        return t
    m = _NUMBER.match(t) if isinstance(t, str) else None
    if m:
        return float(m.group(1)) * _UNIT[m.group(2)]
    raise TypeError(
        f"{what} must be seconds (a number, or a string such as \"10\" or \"1m\") or a "
        f"datetime.timedelta, not {t!r}")


def _port(p):
    """A TCP port from a number or a string of digits (several nixpkgs tests pass "1025")."""
    if isinstance(p, str) and p.strip().isdigit():
        p = int(p)
    if isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 65535:
        return p
    raise TypeError(f"port must be a number from 0 to 65535 (or a string of digits), not {p!r}")


def _check_polling():
    if getattr(_in_condition, "on", False):
        return
    for cond in list(_polling):
        cond.maybe_raise()


def _call(node, method, **params):
    if node is not None:
        _check_polling()
    return _chan.call(node, method, params)


class PollingCondition:
    """A condition checked (at most every `seconds_interval`) before machine calls while active."""

    def __init__(self, condition, seconds_interval=2.0, description=None):
        self.condition = condition
        self.seconds_interval = seconds_interval
        self.description = description or (condition.__doc__ or condition.__name__).strip()
        self.last_called = float("-inf")
        self.last = True

    def check(self, force=False):
        if not force and time.monotonic() - self.last_called < self.seconds_interval:
            return self.last
        _in_condition.on = True
        try:
            self.last = bool(self.condition())
        except Exception:
            self.last = False
        finally:
            _in_condition.on = False
            self.last_called = time.monotonic()
        return self.last

    def maybe_raise(self):
        if not self.check():
            raise PollingConditionError(f"Polling condition failed: {self.description}")

    def wait(self, timeout=900):
        retry(lambda _: self.check(force=True), timeout)

    def __enter__(self):
        _polling.append(self)
        return self

    def __exit__(self, *exc):
        _polling.remove(self)


def polling_condition(fun_=None, *, seconds_interval=2.0, description=None):
    def wrap(fun):
        return PollingCondition(fun, seconds_interval, description)
    return wrap(fun_) if fun_ is not None else wrap


def retry(fn, timeout_seconds=900, timeout=None):
    """Call fn(last_try) once a second until it returns true; after `timeout_seconds` one last
    call, fn(True), and RequestedAssertionFailed if that is false too (as upstream). `timeout=`
    is the keyword older NixOS drivers used."""
    if timeout is not None:
        timeout_seconds = timeout
    limit = _seconds(timeout_seconds, "timeout_seconds")
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if fn(False):
            return
        time.sleep(1)
    elapsed = time.monotonic() - start
    if not fn(True):
        raise RequestedAssertionFailed(
            f"action timed out after {elapsed:.2f} seconds (timeout={timeout_seconds})")


def _text(args):
    return " ".join(str(a) for a in args)


class _Log:
    """The NixOS driver's `log` global (its AbstractLogger), writing to hutch's log."""

    def __init__(self):
        self.level = None

    def log(self, message, attributes={}):
        _call(None, "log", msg=str(message))

    def debug(self, *args, **kwargs):
        self.log(_text(args))

    info = warning = error = debug

    def log_test_error(self, *args, **kwargs):
        self.log("!!! " + _text(args))

    def log_serial(self, message, machine):
        """A line shown as if `machine` had printed it on its console."""
        _call(None, "log_serial", msg=str(message), machine=str(getattr(machine, "name", machine)))

    def __call__(self, message):
        self.log(message)

    @contextlib.contextmanager
    def nested(self, message, attributes={}):
        self.log(message)
        yield

    def subtest(self, name, attributes={}):
        return subtest(name)

    def print_serial_logs(self, enable):
        _call(None, "serial_stdout", on=bool(enable))

    def set_log_level(self, level):
        """Kept for the API; hutch's log has no levels (everything goes to the log files)."""
        self.level = level


log = _Log()


@contextlib.contextmanager
def subtest(name):
    """A named part of the test: timed, logged, and a test case in the JUnit report."""
    _call(None, "subtest_start", name=name)
    try:
        yield
    except BaseException as e:
        keep_going = _call(None, "subtest_end", name=name, error=f"{type(e).__name__}: {e}",
                           traceback=traceback.format_exc())
        if not keep_going or not isinstance(e, Exception):
            raise
    else:
        _call(None, "subtest_end", name=name, error=None, traceback=None)


class _LazyAssertions:
    """`t`: a unittest.TestCase for its assert methods, made on first use (saves the import);
    its failures are RequestedAssertionFailed, as upstream's AssertionTester."""

    def __getattr__(self, name):
        import unittest

        class _Assertions(unittest.TestCase):
            failureException = RequestedAssertionFailed

            def runTest(self):
                pass

        case = _Assertions()
        self.__class__ = type(case)
        self.__dict__.update(case.__dict__)
        return getattr(self, name)


class _Debug:
    """`debug`: upstream's DebugNop. A breakpoint needs the Nix sandbox's debug hook; under hutch
    run `hutch test --interactive` instead."""

    def breakpoint(self, host="127.0.0.1", port=4444):
        log.log("debug.breakpoint(): ignored; use `hutch test --interactive` to stop in a test")


debug = _Debug()
