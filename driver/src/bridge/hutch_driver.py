
# --- VLANs, the `driver`, the globals, main (after hutch_machine.py: one module) ---

import types


class VLan:
    """A virtual LAN, by number (`vlans` and `vlanN` in the NixOS driver); hutch's LAN is a
    bridge in the test's private network namespace, owned by the driver."""

    # vde_switch's plumbing: a bridge has none of it.
    socket_dir = tap_name = process = pid = fd = plug_process = None

    def __init__(self, nr):
        self.nr = nr
        self.logger = log

    def __repr__(self):
        return f"<Vlan Nr. {self.nr}>"

    def stop(self):
        """The driver removes the LANs when the test ends; nothing to do from the script."""


class _RaceTimer:
    """`driver.race_timer`: the whole-test timeout, which the hutch driver keeps."""

    def __init__(self, seconds):
        self.interval = seconds

    def start(self):
        pass

    def cancel(self):
        raise NotImplementedError(
            "driver.race_timer.cancel(): the whole-test timeout is kept by the hutch driver; "
            "raise [test] timeout in the test file instead")


class Driver:
    """The `driver` global: the test's machines and VLANs, and the global functions."""

    def __init__(self, machines, vlans, hello):
        self.machines_qemu = []
        self.machines_nspawn = machines
        self.vlans = vlans
        self.tests = hello["script"]["source"]
        self.out_dir = pathlib.Path(hello["out_dir"])
        timeout = hello["global_timeout"]
        self.global_timeout = int(timeout) if float(timeout).is_integer() else timeout
        self.race_timer = _RaceTimer(self.global_timeout)
        self.polling_conditions = _polling
        self.polling_condition = polling_condition
        self.logger = log
        self.log = log
        self.debug = debug
        self.symbols = {}
        self.compiled = None
        # In --interactive: None until test_script() ran, then "passed" or its failure.
        self.script_outcome = None

    @property
    def machines(self):
        return sorted(self.machines_qemu + self.machines_nspawn, key=lambda m: m.name)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        for machine in self.machines:
            machine.release()

    def subtest(self, name):
        return subtest(name)

    def test_symbols(self):
        return self.symbols

    def test_script(self):
        """Run the test script (the REPL of `hutch test --interactive` has this); the last
        run's outcome is the session's (`_interact`)."""
        self.script_outcome = None
        try:
            exec(self.compiled, self.symbols)
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            if not (isinstance(e, SystemExit) and e.code in (None, 0)):
                self.script_outcome = _failure(e, self.compiled.co_filename)
                raise
        self.script_outcome = "passed"

    def run_tests(self):
        self.test_script()
        for machine in self.machines:
            if machine.is_up():
                machine.execute("sync")

    def start_all(self):
        _call(None, "start_all")

    def join_all(self):
        _call(None, "join_all")

    def terminate_test(self):
        for machine in self.machines:
            machine.release()
        os.kill(os.getpid(), signal.SIGTERM)

    def create_machine(self, start_command, *, name=None, keep_machine_state=False):
        raise NotImplementedError(
            "create_machine(): hutch nodes are declared in the test file ([nodes.<name>]), "
            "not created from the script")

    def serial_stdout_on(self):
        _call(None, "serial_stdout", on=True)

    def serial_stdout_off(self):
        _call(None, "serial_stdout", on=False)

    def check_polling_conditions(self):
        _check_polling()

    def dump_machine_ssh(self, offset=0):
        print("hutch nodes are containers; a root shell in each (while the test runs):")
        width = max((len(m.name) for m in self.machines), default=0)
        for index, machine in enumerate(self.machines, start=offset + 1):
            print(f"    {machine.name}:{' ' * (width - len(machine.name) + 2)}"
                  f"{machine.ssh_backdoor_command(index)}")


def _modules(g):
    """`import test_driver...` in a script finds the same classes (scripts import the errors)."""
    names = {
        "test_driver": {},
        "test_driver.errors": {"TestScriptError": TestScriptError, "MachineError": MachineError,
                               "RequestedAssertionFailed": RequestedAssertionFailed},
        "test_driver.machine": {"BaseMachine": BaseMachine, "QemuMachine": QemuMachine,
                                "NspawnMachine": NspawnMachine, "Machine": Machine,
                                "retry": retry},
        "test_driver.driver": {"Driver": Driver},
        "test_driver.polling_condition": {"PollingCondition": PollingCondition,
                                          "PollingConditionError": PollingConditionError},
        "test_driver.logger": {"AbstractLogger": _Log},
    }
    for name, attrs in names.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        if "." in name:
            setattr(sys.modules["test_driver"], name.split(".")[1], mod)


def _globals(hello):
    checks = []
    machines = [Machine(n["name"], n["state_dir"], hello["out_dir"], hello["shared_dir"], checks)
                for n in hello["nodes"]]
    vlans = [VLan(v) for v in hello["vlans"]]
    drv = Driver(machines, vlans, hello)
    checks.append(drv.check_polling_conditions)
    g = {
        "__name__": "__main__",
        "start_all": drv.start_all,
        "join_all": drv.join_all,
        "test_script": drv.test_script,
        "run_tests": drv.run_tests,
        "machines": machines,
        "machines_qemu": drv.machines_qemu,
        "machines_nspawn": drv.machines_nspawn,
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
        "debug": debug,
        "dump_machine_ssh": drv.dump_machine_ssh,
        "BaseMachine": BaseMachine,
        "QemuMachine": QemuMachine,
        "NspawnMachine": NspawnMachine,
        "Machine": Machine,
        "create_machine": drv.create_machine,
        "RequestedAssertionFailed": RequestedAssertionFailed,
    }
    for v in vlans:
        g[f"vlan{v.nr}"] = v
    for n, m in zip(hello["nodes"], machines):
        g[n["python_name"]] = m
    if len(machines) == 1:
        g["machine"] = machines[0]
    drv.symbols = g
    _modules(g)
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


class _DriverGone(SystemExit):
    """SIGTERM or SIGHUP in the REPL: hutch was stopped or killed, or the terminal closed."""


def _driver_gone(signum, _frame):
    # An exception, not a plain exit: readline, interrupted at the prompt, gives the terminal
    # its settings back as the exception leaves input(). The signal comes twice (parent-death
    # signal and the bridge socket's end): the second one must not interrupt the exit.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    raise _DriverGone(128 + signum)


def _completion(g):
    """Tab completes names, machine names and methods (rlcompleter); the history is kept
    in $HUTCH_HISTORY when that is set."""
    try:
        import readline
        import rlcompleter
    except ImportError:
        return
    readline.set_completer(rlcompleter.Completer(g).complete)
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    history = os.environ.get("HUTCH_HISTORY")
    if history:
        import atexit
        with contextlib.suppress(OSError):
            readline.read_history_file(history)
        atexit.register(_save_history, readline, history)


def _save_history(readline, path):
    with contextlib.suppress(OSError):
        readline.write_history_file(path)


def _interact(g):
    """The REPL of `hutch test --interactive`: ptpython when it is installed, else Python's
    own with tab completion. Ctrl-C interrupts the running call (the driver cancels it) and
    gives a new prompt; exit(), quit() and Ctrl-D end the session. Its outcome is the last
    test_script()'s, or "session ended, script not run"."""
    signal.signal(signal.SIGTERM, _driver_gone)
    signal.signal(signal.SIGHUP, _driver_gone)
    banner = ("hutch: the test's globals are defined; test_script() runs the script; "
              "exit() or Ctrl-D ends the session and stops the nodes")
    try:
        from ptpython.repl import embed
    except ImportError:
        embed = None
    try:
        if embed is None:
            import code
            _completion(g)
            code.interact(banner=banner, local=g, exitmsg="")
        else:
            print(banner)
            embed(globals=g, locals=g)
    except _DriverGone:
        print("\nhutch: the driver has ended (stopped or killed); so does this REPL",
              file=sys.stderr)
        raise
    except SystemExit:
        pass
    outcome = g["driver"].script_outcome
    if outcome is None:
        _call(None, "session_ended")
    elif outcome == "passed":
        _call(None, "script_done")
    else:
        _call(None, "script_failed", **outcome)


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
    g["driver"].compiled = compiled
    if hello.get("interactive"):
        _interact(g)
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
