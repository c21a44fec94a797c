
# --- The Machine classes (after hutch_support.py; hutch_driver.py follows: one module) ---

import pathlib

_CONTAINER = "hutch nodes are containers"
# Why each VM-only method is refused: one reason per missing device.
_NO_SCREEN = f"{_CONTAINER}, which have no screen to capture or read (OCR); check with commands"
_NO_KEYBOARD = f"{_CONTAINER}, which have no keyboard; run the command, or use send_console()"
_NO_MONITOR = f"{_CONTAINER}: there is no QEMU monitor or QMP socket"
_NO_VT = f"{_CONTAINER}, which have no virtual terminals (/dev/ttyN, /dev/vcsN)"
_NO_DISPLAY = f"{_CONTAINER}, which have no display for an X server"


class BaseMachine:
    """Upstream's base class of every node, for type hints and isinstance."""


class QemuMachine(BaseMachine):
    """Upstream's QEMU VM. No hutch node is one: `isinstance(node, QemuMachine)` is False, so
    scripts that do VM-only things under that test skip them."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(f"QemuMachine(): {_CONTAINER}; declare nodes in the test file")


class NspawnMachine(BaseMachine):
    """Upstream's systemd-nspawn container. Every hutch node is one of these (a container)."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("NspawnMachine(): declare nodes in the test file")

    @staticmethod
    def machine_name_from_start_command(start_command):
        m = re.search("run-(.+)-nspawn", os.path.basename(start_command))
        assert m is not None, f"Could not extract node name from {start_command}"
        return m.group(1)


class _NodeProcess:
    """`machine.process`: the running node's init, in the shape of a subprocess.Popen."""

    def __init__(self, machine, pid):
        self.machine = machine
        self.pid = pid
        self.returncode = None

    def poll(self):
        if self.returncode is None and not self.machine.is_up():
            self.returncode = 0
        return self.returncode

    def wait(self, timeout=None):
        self.machine.wait_for_shutdown(timeout=900 if timeout is None else timeout)
        return self.poll()

    def terminate(self):
        self.machine.release()

    kill = terminate


class Machine(NspawnMachine):
    """One node; every method runs in the hutch driver."""

    keep_machine_state = False
    start_command = None
    # QEMU's plumbing: a container has none of it.
    monitor = qmp_client = shell = serial_thread = last_lines = None
    monitor_path = qmp_path = shell_path = None

    def __init__(self, name, state_dir, out_dir, shared_dir, callbacks):
        self.name = name
        self.state_dir = pathlib.Path(state_dir)
        self.out_dir = pathlib.Path(out_dir)
        self.tmp_dir = self.out_dir
        self.shared_dir = pathlib.Path(shared_dir)
        self.callbacks = callbacks
        self.logger = log

    def __repr__(self):
        return f"<Machine '{self.name}'>"

    def _c(self, method, **params):
        return _call(self.name, method, **params)

    def _refuse(self, method, why):
        raise NotImplementedError(f"{self.name}.{method}(): {why}")

    # Lifecycle.
    def start(self, allow_reboot=False):
        self._c("start")

    def connect(self):
        """Wait until commands can run in the node (starting it when it is down)."""
        self._c("start")

    def shutdown(self):
        self._c("shutdown")

    def crash(self):
        self._c("crash")

    def reboot(self):
        self._c("reboot")

    def release(self):
        """Stop the node at once, without a clean shutdown (the driver's teardown)."""
        self._c("release")

    def is_up(self):
        return self._c("is_up")

    @property
    def booted(self):
        return self.is_up()

    @property
    def connected(self):
        return self.is_up()

    @property
    def pid(self):
        """The node's init as the host sees it; None while the node is down."""
        return self._c("pid")

    get_systemd_process = pid

    @property
    def process(self):
        pid = self.pid
        return None if pid is None else _NodeProcess(self, pid)

    def wait_for_shutdown(self, timeout=900):
        self._c("wait_for_shutdown", timeout=_seconds(timeout))

    def cleanup_statedir(self):
        self._c("cleanup_statedir")

    def run_callbacks(self):
        for callback in self.callbacks:
            callback()

    # Commands.
    def execute(self, command, check_return=True, check_output=True, timeout=900):
        if not check_output:
            # Started, not waited for: a daemon run this way keeps running.
            self.run_callbacks()
            _chan.post(self.name, "execute", {"command": command, "timeout": _seconds(timeout)})
            return (-2, "")
        status, out = self._c("execute", command=command, timeout=_seconds(timeout))
        return (status if check_return else -1, out)

    def succeed(self, *commands, timeout=None):
        return self._c("succeed", commands=list(commands), timeout=_seconds(timeout))

    def fail(self, *commands, timeout=None):
        return self._c("fail", commands=list(commands), timeout=_seconds(timeout))

    def wait_until_succeeds(self, command, timeout=900):
        return self._c("wait_until_succeeds", command=command, timeout=_seconds(timeout))

    def wait_until_fails(self, command, timeout=900):
        return self._c("wait_until_fails", command=command, timeout=_seconds(timeout))

    def sleep(self, secs):
        self._c("sleep", secs=_seconds(secs, "secs"))

    # systemd.
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

    # Waits.
    def wait_for_file(self, filename, timeout=900):
        self._c("wait_for_file", filename=str(filename), timeout=_seconds(timeout))

    def wait_for_open_port(self, port, addr="localhost", timeout=900):
        self._c("wait_for_open_port", port=_port(port), addr=addr, timeout=_seconds(timeout))

    def wait_for_closed_port(self, port, addr="localhost", timeout=900):
        self._c("wait_for_closed_port", port=_port(port), addr=addr, timeout=_seconds(timeout))

    def wait_for_open_unix_socket(self, addr, is_datagram=False, timeout=900):
        self._c("wait_for_open_unix_socket", addr=str(addr), is_datagram=is_datagram,
                timeout=_seconds(timeout))

    # The console.
    def wait_for_console_text(self, regex, timeout=None):
        self._c("wait_for_console_text", regex=regex, timeout=_seconds(timeout))

    def get_console_log(self):
        return self._c("get_console_log")

    @property
    def full_console_log(self):
        return self.get_console_log().splitlines()

    def send_console(self, chars):
        """Type `chars` on the node's console (its /dev/console, a pty)."""
        self._c("send_console", chars=str(chars))

    def console_interact(self):
        """Connect this terminal's input to the node's console until Ctrl-D; the console's
        output shows in the log (serial_stdout_on() prints it here)."""
        self.log("Terminal is ready (there is no prompt):")
        while True:
            try:
                data = os.read(sys.stdin.fileno(), 1024)
            except KeyboardInterrupt:
                break
            if not data:
                self.log("Closing connection to the console")
                break
            self.send_console(data.decode(errors="replace"))

    def log_serial(self, msg):
        self._c("log_serial", msg=str(msg))

    # Files.
    def copy_from_host(self, source, target):
        self._c("copy_from_host", source=str(source), target=str(target))

    def copy_from_host_via_shell(self, source, target):
        self.copy_from_host(source, target)

    def copy_from_machine(self, source, target_dir=""):
        return self._c("copy_from_machine", source=str(source), target_dir=str(target_dir))

    def copy_from_vm(self, source, target_dir=""):
        """Upstream's deprecated name of copy_from_machine."""
        return self.copy_from_machine(source, target_dir)

    # The network.
    def block(self):
        self._c("block")

    def unblock(self):
        self._c("unblock")

    # Logging and interaction.
    def log(self, msg):
        self._c("log", msg=str(msg))

    @contextlib.contextmanager
    def nested(self, msg, attrs={}):
        self.log(msg)
        yield

    def ssh_backdoor_command(self, index):
        """How to get a root shell in the node from the host while the test runs."""
        pid = self.pid
        target = str(pid) if pid is not None else "$PID"
        # Every namespace the node has of its own (not --all: a node shares the time namespace,
        # which an unprivileged user may not enter).
        return (f"nsenter --target {target} --user --mount --uts --ipc --net --pid --cgroup "
                "-- /bin/sh -l"
                f"  # as the user who runs hutch; or {self.name}.shell_interact() "
                "under `hutch test --interactive`")

    def shell_interact(self, address=None):
        """A shell in the node for the user at the terminal: root's login shell on a fresh
        pty (`exit` or Ctrl-D comes back); from a pipe, one `sh` fed line by line. `cd` and
        `export` carry over; stderr shows; a failing line's status is printed."""
        if sys.stdin.isatty():
            sys.stdout.flush()
            self._c("shell_interact")
            return
        session = self._c("shell_open")
        try:
            while True:
                try:
                    line = input(f"{self.name}$ ")
                except EOFError:
                    break
                if line.strip() in ("exit", "logout"):
                    break
                if not line.strip():
                    continue
                out, status = self._c("shell_line", session=session, line=line)
                sys.stdout.write(out)
                sys.stdout.flush()
                if status:
                    print(f"[{self.name}: exit status {status}]", file=sys.stderr)
        finally:
            with contextlib.suppress(Exception):
                self._c("shell_close", session=session)

    # What only a VM has: refused, naming the method and the reason.
    def screenshot(self, filename):
        self._refuse("screenshot", _NO_SCREEN)

    def get_screen_text(self):
        self._refuse("get_screen_text", _NO_SCREEN)

    def get_screen_text_variants(self):
        self._refuse("get_screen_text_variants", _NO_SCREEN)

    def wait_for_text(self, regex, timeout=900):
        self._refuse("wait_for_text", _NO_SCREEN)

    def send_key(self, key, delay=0.01, log=True):
        self._refuse("send_key", _NO_KEYBOARD)

    def send_keys(self, *args, **kwargs):
        self._refuse("send_keys", _NO_KEYBOARD)

    def send_chars(self, chars, delay=0.01):
        self._refuse("send_chars", _NO_KEYBOARD)

    def send_monitor_command(self, command):
        self._refuse("send_monitor_command", _NO_MONITOR)

    def wait_for_monitor_prompt(self):
        self._refuse("wait_for_monitor_prompt", _NO_MONITOR)

    def wait_for_qmp_event(self, event_filter, timeout=60 * 10):
        self._refuse("wait_for_qmp_event", _NO_MONITOR)

    def forward_port(self, host_port=8080, guest_port=80):
        """The node's guest_port at 127.0.0.1:host_port on the host until the test ends."""
        self._c("forward_port", host_port=_port(host_port), guest_port=_port(guest_port))

    def get_tty_text(self, tty):
        self._refuse("get_tty_text", _NO_VT)

    def wait_until_tty_matches(self, tty, regexp, timeout=900):
        self._refuse("wait_until_tty_matches", _NO_VT)

    def dump_tty_contents(self, tty):
        self._refuse("dump_tty_contents", _NO_VT)

    def wait_for_x(self, timeout=900):
        self._refuse("wait_for_x", _NO_DISPLAY)

    def get_window_names(self):
        self._refuse("get_window_names", _NO_DISPLAY)

    def wait_for_window(self, regexp, timeout=900):
        self._refuse("wait_for_window", _NO_DISPLAY)

    def switch_root(self):
        self._refuse("switch_root", f"{_CONTAINER}: they boot no initrd, so there is no "
                     "stage 1 to switch from")

    def dump_tpm_ek_cert(self, *args, **kwargs):
        self._refuse("dump_tpm_ek_cert", f"{_CONTAINER}, which have no TPM")
