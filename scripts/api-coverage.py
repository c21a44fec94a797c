#!/usr/bin/env python3
"""api-coverage.py PATH: how much of nixpkgs' NixOS tests hutch's driver runs.

Finds every .nix file under PATH (a nixpkgs checkout's nixos/tests, or any folder of test
files) with a `testScript`, extracts the script (a Nix indented string; `${...}` parts become
a placeholder name), and lists the test driver entries it uses: Machine methods and attributes
(`node.succeed(...)`) and the script's globals (`start_all`, `subtest`, ...). Each entry has
hutch's status (STATUS below, the same as the README's API table): `real` (works), `differs`
(works differently, see the README), `refused` (raises NotImplementedError: a container has
no screen, keyboard, QEMU monitor, VT...). A test "runs" when its script uses no refused entry
and its nodes ask for no VM-only feature (VM_ONLY_OPTIONS in the Nix text). Prints the share
of tests that run, what blocks the rest (entry, count) and the per-file detail with -v.

`api-coverage.py --driver DIR` instead compares upstream's driver source (DIR = a checkout's
nixos/lib/test-driver/src/test_driver) with hutch's bridge: every public method and attribute
of BaseMachine, QemuMachine, NspawnMachine, Driver, VLan and the logger must exist in hutch's,
accepting upstream's parameters with upstream's defaults. Exit code 1 when one does not.

Standard library only; run it with python3 >= 3.9.
"""

import ast
import os
import re
import sys
from collections import Counter

REAL, DIFFERS, REFUSED = "real", "differs", "refused"

# Upstream's Machine API (BaseMachine, QemuMachine, NspawnMachine) and hutch's status.
MACHINE = {
    **dict.fromkeys([
        "start", "shutdown", "crash", "is_up", "wait_for_shutdown", "execute", "succeed",
        "fail", "wait_until_succeeds", "wait_until_fails", "systemctl", "wait_for_unit",
        "get_unit_info", "get_unit_property", "require_unit_state", "start_job", "stop_job",
        "wait_for_file", "wait_for_open_port", "wait_for_closed_port",
        "wait_for_open_unix_socket", "wait_for_console_text", "get_console_log",
        "send_console", "log_serial", "copy_from_host", "copy_from_machine", "copy_from_vm",
        "block", "unblock", "log", "nested", "name", "state_dir", "shared_dir", "out_dir",
        "run_callbacks", "callbacks", "connect", "booted", "connected", "pid", "process",
        "full_console_log", "release", "cleanup_statedir", "keep_machine_state", "tmp_dir",
        "logger", "get_systemd_process",
    ], REAL),
    **dict.fromkeys([
        "reboot",  # a clean shutdown and start, not Ctrl-Alt-Del
        "sleep",  # host time, not guest time
        "copy_from_host_via_shell",  # the same copy as copy_from_host
        "shell_interact", "console_interact",  # a line prompt; console echo in the log
        "ssh_backdoor_command",  # an nsenter line, no ssh
        "forward_port",  # a relay on the host's 127.0.0.1 only, no QEMU hostfwd
        "start_command", "monitor", "shell", "qmp_client", "serial_thread", "last_lines",  # None
        "monitor_path", "qmp_path", "shell_path",
    ], DIFFERS),
    **dict.fromkeys([
        "screenshot", "get_screen_text", "get_screen_text_variants", "wait_for_text",
        "send_key", "send_keys", "send_chars", "send_monitor_command", "wait_for_monitor_prompt",
        "wait_for_qmp_event", "get_tty_text", "wait_until_tty_matches",
        "dump_tty_contents", "wait_for_x", "get_window_names", "wait_for_window", "switch_root",
        "dump_tpm_ek_cert",
    ], REFUSED),
}

# The script's globals (Driver.test_symbols, older drivers' extras) and hutch's status.
GLOBALS = {
    **dict.fromkeys([
        "start_all", "join_all", "test_script", "run_tests", "machines", "machines_qemu",
        "machines_nspawn", "vlans", "driver", "log", "subtest", "retry", "polling_condition",
        "serial_stdout_on", "serial_stdout_off", "t", "BaseMachine", "QemuMachine",
        "NspawnMachine", "Machine", "debug", "dump_machine_ssh", "RequestedAssertionFailed",
    ], REAL),
    "create_machine": REFUSED,
}

# Node options that need a VM, as they appear in a test's Nix text.
VM_ONLY_OPTIONS = [
    "enableOCR", "useBootLoader", "useEFIBoot", "virtualisation.tpm", "useSecureBoot",
    "virtualisation.qemu", "virtualisation.emptyDiskImages", "virtualisation.useNixStoreImage",
    "boot.kernelPackages", "boot.initrd.systemd", "virtualisation.graphics = true",
    "services.xserver.enable = true",
]


def indented_string(text, i):
    """The Nix indented string starting after the `''` at text[i-2:i]; its text (antiquotations
    as a placeholder name) and the index after its closing `''`."""
    out = []
    while i < len(text):
        if text.startswith("'''", i):
            out.append("''")
            i += 3
        elif text.startswith("''$", i) or text.startswith("''\\", i):
            out.append(text[i + 2])
            i += 3
        elif text.startswith("''", i):
            return dedent("".join(out)), i + 2
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while j < len(text) and depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            out.append(placeholder(text[i + 2:j - 1]))
            i = j
        else:
            out.append(text[i])
            i += 1
    return None, i


def placeholder(expr):
    """A Python name standing for a Nix antiquotation (keeps the script parseable)."""
    return "__nix_" + re.sub(r"\W+", "_", expr.strip())[:30]


def dedent(s):
    lines = s.split("\n")
    widths = [len(line) - len(line.lstrip(" ")) for line in lines if line.strip()]
    cut = min(widths, default=0)
    return "\n".join(line[cut:] for line in lines)


def test_script(nix, path):
    """The text of the file's testScript (also one read from a file next to it:
    `testScript = builtins.readFile ./test.py;`), or None when it has none we can read."""
    m = re.search(r"\btestScript\s*=\s*", nix)
    if not m:
        return None
    rest = nix[m.end():]
    read = re.match(r"(?:builtins\.|lib\.)?readFile\s+(\./[\w./-]+)\s*;", rest)
    if read:
        try:
            return open(os.path.join(os.path.dirname(path), read.group(1))).read()
        except OSError:
            return None
    if rest.startswith('"'):
        dq = re.match(r'"((?:[^"\\]|\\.)*)"', rest)
        return dq and dq.group(1).encode().decode("unicode_escape")
    q = rest.find("''")
    semi = rest.find(";")
    # `{ nodes, ... }: ''...''` and `let ...; in ''...''` put the string after other text.
    if q < 0 or (0 <= semi < q and not re.match(r"(let\b|\{)", rest)):
        return None
    if not re.match(r"(\{[^}]*\}\s*:\s*)?let\b", rest):
        script, _ = indented_string(nix, m.end() + q + 2)
        return script
    # `let` bindings build parts of the script (per-node snippets): every indented string up
    # to the end of the string after the let's `in`, one fragment per line group.
    body = re.search(r"\bin\s*''", rest)
    if not body:
        return None
    end = indented_string(nix, m.end() + body.end())[1]
    parts, i = [], m.end()
    while True:
        q = nix.find("''", i, end)
        if q < 0:
            return "\n".join(parts)
        part, i = indented_string(nix, q + 2)
        parts.append(part or "")


def uses(script):
    """(machine entries, globals) the script uses; falls back to regexes when it won't parse."""
    methods, names = set(), set()
    try:
        tree = ast.parse(script)
    except SyntaxError:
        methods = {a for a in re.findall(r"\.(\w+)\b", script) if a in MACHINE}
        names = {n for n in re.findall(r"\b(\w+)\b", script) if n in GLOBALS}
        return methods, names
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in MACHINE:
            methods.add(node.attr)
        elif isinstance(node, ast.Name) and node.id in GLOBALS:
            names.add(node.id)
    return methods, names


BRIDGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "driver", "src", "bridge")
# Upstream class -> the hutch class that stands for it.
COUNTERPART = {"BaseMachine": "Machine", "QemuMachine": "Machine", "NspawnMachine": "Machine",
               "Driver": "Driver", "VLan": "VLan", "AbstractLogger": "_Log"}


def public_api(tree):
    """{class: ({method: ast.arguments}, {attribute})} for the classes of a module."""
    api = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        methods, attrs = {}, set()
        for node in cls.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if any(isinstance(d, ast.Name) and d.id in ("property", "cached_property")
                       or isinstance(d, ast.Attribute) and d.attr == "cached_property"
                       for d in node.decorator_list):
                    attrs.add(node.name)
                else:
                    methods[node.name] = node.args
                for sub in ast.walk(node):
                    if (node.name == "__init__" and isinstance(sub, ast.Attribute)
                            and isinstance(sub.value, ast.Name) and sub.value.id == "self"
                            and isinstance(sub.ctx, ast.Store)):
                        attrs.add(sub.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                attrs.add(node.target.id)
            elif isinstance(node, ast.Assign):
                attrs.update(t.id for t in node.targets if isinstance(t, ast.Name))
        # What a class inherits from classes of the same module counts as its own.
        for base in (b.id for b in cls.bases if isinstance(b, ast.Name) and b.id in api):
            methods = {**api[base][0], **methods}
            attrs |= api[base][1]
        api[cls.name] = (methods, attrs)
    return api


def accepts(ours, theirs):
    """Why a call written for upstream's parameters would not fit ours, or None."""
    if ours.vararg and ours.kwarg:
        return None
    pos_o, pos_t = ours.posonlyargs + ours.args, theirs.posonlyargs + theirs.args
    defaults_o = dict(zip([a.arg for a in pos_o][::-1], ours.defaults[::-1]))
    defaults_t = dict(zip([a.arg for a in pos_t][::-1], theirs.defaults[::-1]))
    for i, a in enumerate(pos_t):
        if i >= len(pos_o) or pos_o[i].arg != a.arg:
            return f"parameter {i} is `{a.arg}` upstream"
        if a.arg in defaults_t and (a.arg not in defaults_o or ast.unparse(defaults_o[a.arg])
                                    != ast.unparse(defaults_t[a.arg])):
            return f"`{a.arg}` defaults to {ast.unparse(defaults_t[a.arg])} upstream"
    extra = [a.arg for a in pos_o[len(pos_t):] if a.arg not in defaults_o]
    if extra:
        return f"hutch requires {extra} that upstream does not pass"
    kw_o = {a.arg for a in ours.kwonlyargs}
    missing = [a.arg for a in theirs.kwonlyargs if a.arg not in kw_o and not ours.kwarg]
    if missing:
        return f"keyword {missing} missing"
    if theirs.vararg and not ours.vararg:
        return f"*{theirs.vararg.arg} missing"
    return None


def check_signatures(driver_dir):
    """Compare upstream's test driver source (test_driver/) with hutch's bridge; print each
    public method or attribute that is missing or called differently; return their count."""
    ours = public_api(ast.parse("".join(open(os.path.join(BRIDGE, f)).read()
                                        for f in ("hutch_support.py", "hutch_machine.py", "hutch_driver.py"))))
    problems, checked = 0, 0
    for root, _, names in os.walk(driver_dir):
        for name in sorted(n for n in names if n.endswith(".py")):
            theirs = public_api(ast.parse(open(os.path.join(root, name)).read()))
            for cls, (methods, attrs) in theirs.items():
                if cls not in COUNTERPART:
                    continue
                o_methods, o_attrs = ours[COUNTERPART[cls]]
                for m, args in methods.items():
                    if m.startswith("_") and m not in ("__enter__", "__exit__"):
                        continue
                    checked += 1
                    why = ("missing" if m not in o_methods and m not in o_attrs
                           else m in o_methods and accepts(o_methods[m], args))
                    if why:
                        problems += 1
                        print(f"  {cls}.{m}: {why}")
                for a in sorted(attrs):
                    if a.startswith("_"):
                        continue
                    checked += 1
                    if a not in o_attrs and a not in o_methods:
                        problems += 1
                        print(f"  {cls}.{a}: attribute missing")
    print(f"{checked} public methods and attributes of upstream's driver checked in "
          f"{driver_dir}; {problems} missing or called differently in hutch's bridge")
    return problems


def main(argv):
    if len(argv) == 3 and argv[1] == "--driver":
        sys.exit(1 if check_signatures(argv[2]) else 0)
    verbose = "-v" in argv
    paths = [a for a in argv[1:] if a != "-v"]
    if len(paths) != 1:
        sys.exit("usage: api-coverage.py [-v] PATH   (e.g. nixpkgs/nixos/tests)\n"
                 "       api-coverage.py --driver nixpkgs/nixos/lib/test-driver/src/test_driver")
    files = []
    for root, _, names in os.walk(paths[0]):
        files += [os.path.join(root, n) for n in names if n.endswith(".nix")]
    tests, blockers, entries = [], Counter(), Counter()
    for path in sorted(files):
        nix = open(path, encoding="utf-8", errors="replace").read()
        script = test_script(nix, path)
        if script is None:
            continue
        methods, names = uses(script)
        refused = sorted(f".{m}()" for m in methods if MACHINE[m] == REFUSED)
        refused += sorted(f"{n}()" for n in names if GLOBALS[n] == REFUSED)
        vm = sorted(o for o in VM_ONLY_OPTIONS if o in nix)
        block = refused + [f"option {o}" for o in vm]
        blockers.update(block)
        entries.update(methods | names)
        tests.append((os.path.relpath(path, paths[0]), block, methods | names))
    if not tests:
        sys.exit(f"no .nix file with a testScript under {paths[0]}")
    runs = [t for t in tests if not t[1]]
    print(f"{len(tests)} test files with a testScript under {paths[0]}")
    print(f"{len(runs)} ({100 * len(runs) / len(tests):.0f}%) use only entries hutch does "
          "(works, or works differently) and no VM-only node option")
    if blockers:
        print("what blocks the others (entry or option: tests):")
        for what, n in blockers.most_common():
            print(f"  {what}: {n}")
    print("entries used (entry: tests):")
    print("  " + ", ".join(f"{e}: {n}" for e, n in sorted(entries.items(), key=lambda x: (-x[1], x[0]))))
    if verbose:
        for name, block, used in tests:
            state = "runs" if not block else "blocked by " + ", ".join(block)
            print(f"{name}: {state}; uses {', '.join(sorted(used))}")


if __name__ == "__main__":
    main(sys.argv)
