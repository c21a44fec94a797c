"""hutch's test-script bridge: the NixOS test driver's globals and Machine objects, each call
forwarded to the hutch driver as one line of JSON over the socket in $HUTCH_BRIDGE_FD.
Standard library only; embedded in the hutch binary and run as `python3 -c`."""

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
import traceback


class RequestedAssertionFailed(AssertionError):
    """A check the test asked for failed (succeed, fail, require_unit_state...)."""


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

    def call(self, node, method, params):
        with self.lock:
            if self.gone:
                raise ConnectionError(self.gone)
            self.next_id += 1
            rid = self.next_id
            slot = [threading.Event(), None]
            self.waiting[rid] = slot
            line = json.dumps({"id": rid, "node": node, "method": method, "params": params})
            self.sock.sendall(line.encode() + b"\n")
        slot[0].wait()
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


def _seconds(t):
    if isinstance(t, datetime.timedelta):
        return t.total_seconds()
    if t is None or isinstance(t, (int, float)):
        return t
    raise TypeError(f"timeout must be seconds or a datetime.timedelta, not {type(t).__name__}")


def _check_polling():
    if getattr(_in_condition, "on", False):
        return
    for cond in list(_polling):
        cond.maybe_raise()


def _call(node, method, **params):
    if node is not None:
        _check_polling()
    return _chan.call(node, method, params)


_NO_SCREEN = [
    "screenshot", "get_screen_text", "get_screen_text_variants", "wait_for_text", "send_key",
    "send_keys", "send_chars", "wait_for_x", "wait_for_window", "get_window_names",
    "send_monitor_command", "forward_port", "wait_for_qmp_event", "switch_root",
    "dump_tpm_ek_cert",
]


def _no_screen(method):
    def refuse(self, *args, **kwargs):
        raise NotImplementedError(
            f"{self.name}.{method}(): hutch nodes are containers, which have no screen, "
            "keyboard, X11 display or QEMU monitor; check the state with commands instead"
        )
    refuse.__name__ = method
    return refuse


class Machine:
    """One node; every method runs in the hutch driver."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"<Machine '{self.name}'>"

    def _c(self, method, **params):
        return _call(self.name, method, **params)

    def start(self, allow_reboot=False):
        self._c("start")

    def shutdown(self):
        self._c("shutdown")

    def crash(self):
        self._c("crash")

    def reboot(self):
        self._c("reboot")

    def is_up(self):
        return self._c("is_up")

    @property
    def booted(self):
        return self.is_up()

    def wait_for_shutdown(self, timeout=900):
        self._c("wait_for_shutdown", timeout=_seconds(timeout))

    def execute(self, command, check_return=True, check_output=True, timeout=900):
        status, out = self._c("execute", command=command, timeout=_seconds(timeout))
        return (status, out if check_output else "")

    def succeed(self, *commands, timeout=None):
        return self._c("succeed", commands=list(commands), timeout=_seconds(timeout))

    def fail(self, *commands, timeout=None):
        return self._c("fail", commands=list(commands), timeout=_seconds(timeout))

    def wait_until_succeeds(self, command, timeout=900):
        return self._c("wait_until_succeeds", command=command, timeout=_seconds(timeout))

    def wait_until_fails(self, command, timeout=900):
        return self._c("wait_until_fails", command=command, timeout=_seconds(timeout))

    def systemctl(self, q, user=None):
        status, out = self._c("systemctl", q=q, user=user)
        return (status, out)

    def wait_for_unit(self, unit, user=None, timeout=900):
        self._c("wait_for_unit", unit=unit, user=user, timeout=_seconds(timeout))

    def get_unit_info(self, unit, user=None):
        return self._c("get_unit_info", unit=unit, user=user)

    def get_unit_property(self, unit, property, user=None):
        return self._c("get_unit_property", unit=unit, property=property, user=user)

    def require_unit_state(self, unit, require_state="active"):
        self._c("require_unit_state", unit=unit, require_state=require_state)

    def start_job(self, jobname, user=None):
        return tuple(self._c("start_job", jobname=jobname, user=user))

    def stop_job(self, jobname, user=None):
        return tuple(self._c("stop_job", jobname=jobname, user=user))

    def wait_for_file(self, filename, timeout=900):
        self._c("wait_for_file", filename=filename, timeout=_seconds(timeout))

    def wait_for_open_port(self, port, addr="localhost", timeout=900):
        self._c("wait_for_open_port", port=port, addr=addr, timeout=_seconds(timeout))

    def wait_for_closed_port(self, port, addr="localhost", timeout=900):
        self._c("wait_for_closed_port", port=port, addr=addr, timeout=_seconds(timeout))

    def wait_for_open_unix_socket(self, addr, is_datagram=False, timeout=900):
        self._c("wait_for_open_unix_socket", addr=addr, is_datagram=is_datagram,
                timeout=_seconds(timeout))

    def wait_for_console_text(self, regex, timeout=None):
        self._c("wait_for_console_text", regex=regex, timeout=_seconds(timeout))

    def get_console_log(self):
        return self._c("get_console_log")

    def sleep(self, secs):
        self._c("sleep", secs=_seconds(secs))

    def copy_from_host(self, source, target):
        self._c("copy_from_host", source=str(source), target=str(target))

    def copy_from_host_via_shell(self, source, target):
        self.copy_from_host(source, target)

    def copy_from_machine(self, source, target_dir=""):
        return self._c("copy_from_machine", source=str(source), target_dir=str(target_dir))

    def block(self):
        self._c("block")

    def unblock(self):
        self._c("unblock")

    def log(self, msg):
        self._c("log", msg=str(msg))

    @contextlib.contextmanager
    def nested(self, msg, attrs=None):
        self.log(msg)
        yield

    def shell_interact(self, address=None):
        print(f"{self.name}: shell commands run in the node; an empty line or Ctrl-D leaves",
              file=sys.stderr)
        while True:
            try:
                line = input(f"{self.name}$ ")
            except EOFError:
                break
            if not line.strip():
                break
            status, out = self.execute(line, timeout=None)
            sys.stdout.write(out)
            if status:
                print(f"[exit code {status}]", file=sys.stderr)

    for _m in _NO_SCREEN:
        locals()[_m] = _no_screen(_m)
    del _m


class VLan:
    """A virtual LAN, by number (`vlans` in the NixOS driver)."""

    def __init__(self, nr):
        self.nr = nr

    def __repr__(self):
        return f"<VLan {self.nr}>"


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


def retry(fn, timeout=900):
    """Call fn(last_try) until it returns true; raise after `timeout` seconds."""
    timeout = _seconds(timeout)
    end = time.monotonic() + timeout
    pause = 0.02
    while time.monotonic() < end:
        if fn(False):
            return
        time.sleep(min(pause, max(0.0, end - time.monotonic())))
        pause = min(pause * 1.5, 1.0)
    if not fn(True):
        raise Exception(f"action timed out after {timeout} seconds")


class _Log:
    """The NixOS driver's `log` global."""

    def log(self, message, attributes=None):
        _call(None, "log", msg=str(message))

    info = warning = error = log

    def __call__(self, message):
        self.log(message)

    @contextlib.contextmanager
    def nested(self, message, attributes=None):
        self.log(message)
        yield

    def print_serial_logs(self, enable):
        _call(None, "serial_stdout", on=bool(enable))


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


def create_machine(*args, **kwargs):
    """The NixOS driver's way to add a VM from the script; hutch nodes come from the test file."""
    raise NotImplementedError(
        "create_machine(): hutch nodes are declared in the test file ([nodes.<name>]), "
        "not created from the script")


class _LazyAssertions:
    """`t`: a unittest.TestCase for its assert methods, made on first use (saves the import)."""

    def __getattr__(self, name):
        import unittest

        class _Assertions(unittest.TestCase):
            def runTest(self):
                pass

        case = _Assertions()
        self.__class__ = type(case)
        self.__dict__.update(case.__dict__)
        return getattr(self, name)


class Driver:
    """The `driver` global: the test's machines and VLANs, and the global functions."""

    def __init__(self, machines, vlans):
        self.machines = machines
        self.vlans = vlans
        self.subtest = subtest
        self.polling_condition = polling_condition
        self.log = log

    def start_all(self):
        _call(None, "start_all")

    def join_all(self):
        _call(None, "join_all")

    def serial_stdout_on(self):
        _call(None, "serial_stdout", on=True)

    def serial_stdout_off(self):
        _call(None, "serial_stdout", on=False)


def _globals(hello):
    machines = [Machine(n["name"]) for n in hello["nodes"]]
    vlans = [VLan(v) for v in hello["vlans"]]
    drv = Driver(machines, vlans)
    g = {
        "__name__": "__main__",
        "start_all": drv.start_all,
        "join_all": drv.join_all,
        "machines": machines,
        "vlans": vlans,
        "driver": drv,
        "subtest": subtest,
        "retry": retry,
        "polling_condition": polling_condition,
        "log": log,
        "serial_stdout_on": drv.serial_stdout_on,
        "serial_stdout_off": drv.serial_stdout_off,
        "t": _LazyAssertions(),
        "os": os,
        "Machine": Machine,
        "create_machine": create_machine,
        "RequestedAssertionFailed": RequestedAssertionFailed,
    }
    for n, m in zip(hello["nodes"], machines):
        g[n["python_name"]] = m
    if len(machines) == 1:
        g["machine"] = machines[0]
    return g


def _failure(exc, filename):
    """The exception's type, message, the script line it happened on, and a traceback."""
    line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    # Show the script's frames (and the user's own modules), not this bridge's plumbing.
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != "<string>"]
    text = "Traceback (most recent call last):\n" if frames else ""
    text += "".join(traceback.format_list(frames))
    text += "".join(traceback.format_exception_only(type(exc), exc))
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "line": line,
        "traceback": text,
        "call": getattr(exc, "hutch_call", None),
    }


def main():
    global _chan
    _chan = _Channel(int(os.environ["HUTCH_BRIDGE_FD"]))
    hello = _call(None, "hello")
    g = _globals(hello)
    filename = hello["script"]["filename"]
    try:
        compiled = compile(hello["script"]["source"], filename, "exec")
    except SyntaxError as e:
        _call(None, "script_failed", **_failure(e, filename))
        sys.exit(1)
    if hello.get("interactive"):
        import code
        g["test_script"] = lambda: exec(compiled, g)
        code.interact(
            banner="hutch: the test's globals are defined; test_script() runs the script",
            local=g, exitmsg="")
        _call(None, "script_done")
        return
    try:
        exec(compiled, g)
    except SystemExit as e:
        if e.code not in (None, 0):
            _call(None, "script_failed", **_failure(e, filename))
            sys.exit(1)
    except BaseException as e:
        _call(None, "script_failed", **_failure(e, filename))
        sys.exit(1)
    _call(None, "script_done")


main()
