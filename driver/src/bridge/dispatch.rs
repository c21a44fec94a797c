//! From a bridge call to the Rust Machine API and back to a JSON result or a Python exception.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::params::{CallError, Params};
use super::State;
use crate::machine::{Machine, MachineError, DEFAULT_TIMEOUT};

impl From<MachineError> for CallError {
    fn from(e: MachineError) -> CallError {
        CallError {
            kind: if e.is_assertion() {
                "RequestedAssertionFailed"
            } else {
                "Exception"
            },
            message: e.to_string(),
        }
    }
}

type Reply = Result<Value, CallError>;

/// A global function: `start_all`, `join_all`, `log`, `log_serial`, `serial_stdout`.
pub(crate) fn global(state: &State, method: &str, p: &Params) -> Reply {
    match method {
        "start_all" => {
            state.log.info("starting all nodes");
            each(&state.machines, |m| m.start())?;
            Ok(Value::Null)
        }
        "join_all" => {
            each(&state.machines, |m| m.wait_for_shutdown(DEFAULT_TIMEOUT))?;
            Ok(Value::Null)
        }
        "log" => {
            state.log.info(p.str("msg")?);
            Ok(Value::Null)
        }
        "log_serial" => {
            state.log.console(p.str("machine")?, &[p.str("msg")?.as_bytes().to_vec()]);
            Ok(Value::Null)
        }
        "serial_stdout" => {
            state.log.set_serial_stdout(p.bool_or("on", true)?);
            Ok(Value::Null)
        }
        _ => Err(CallError {
            kind: "AttributeError",
            message: format!("the hutch driver has no global function `{method}`"),
        }),
    }
}

/// Run `f` on every machine at once; the first error (in node order) wins.
fn each(machines: &[Arc<Machine>], f: impl Fn(&Machine) -> Result<(), MachineError> + Sync) -> Result<(), MachineError> {
    let results: Vec<Result<(), MachineError>> = std::thread::scope(|s| {
        let hs: Vec<_> = machines.iter().map(|m| s.spawn(|| f(m))).collect();
        hs.into_iter().map(|h| h.join().unwrap_or(Ok(()))).collect()
    });
    results.into_iter().collect()
}

fn null<T>(r: Result<T, MachineError>) -> Reply {
    r.map(|_| Value::Null).map_err(CallError::from)
}

/// A Machine method on node `m`.
pub(crate) fn machine(state: &State, m: &Machine, method: &str, p: &Params) -> Reply {
    let wait = |p: &Params| p.secs_or("timeout", DEFAULT_TIMEOUT);
    match method {
        "start" => null(m.start()),
        "shutdown" => null(m.shutdown()),
        "crash" => null(m.crash()),
        "reboot" => null(m.reboot()),
        "is_up" => Ok(json!(m.is_up())),
        "wait_for_shutdown" => null(m.wait_for_shutdown(wait(p)?)),
        "execute" => {
            let out = m.execute(p.str("command")?, p.opt_secs("timeout")?)?;
            Ok(json!([out.status, out.stdout]))
        }
        "succeed" | "fail" => {
            let timeout = p.opt_secs("timeout")?;
            let mut all = String::new();
            for c in p.strs("commands")? {
                all += &if method == "succeed" {
                    m.succeed(&c, timeout)?
                } else {
                    m.fail(&c, timeout)?
                };
            }
            Ok(json!(all))
        }
        "wait_until_succeeds" => Ok(json!(m.wait_until_succeeds(p.str("command")?, wait(p)?)?)),
        "wait_until_fails" => Ok(json!(m.wait_until_fails(p.str("command")?, wait(p)?)?)),
        "systemctl" => Ok(json!(m.systemctl(p.str("q")?, p.opt_str("user")?)?)),
        "wait_for_unit" => null(m.wait_for_unit(p.str("unit")?, p.opt_str("user")?, wait(p)?)),
        "get_unit_info" => Ok(json!(m.get_unit_info(p.str("unit")?, p.opt_str("user")?)?)),
        "get_unit_property" => Ok(json!(m.get_unit_property(
            p.str("unit")?,
            p.str("property")?,
            p.opt_str("user")?
        )?)),
        "require_unit_state" => {
            let state = p.opt_str("require_state")?.unwrap_or("active");
            null(m.require_unit_state(p.str("unit")?, state))
        }
        "start_job" => Ok(json!(m.start_job(p.str("jobname")?, p.opt_str("user")?)?)),
        "stop_job" => Ok(json!(m.stop_job(p.str("jobname")?, p.opt_str("user")?)?)),
        "wait_for_file" => null(m.wait_for_file(p.str("filename")?, wait(p)?)),
        "wait_for_open_port" | "wait_for_closed_port" => {
            let addr = p.opt_str("addr")?.unwrap_or("localhost");
            let port = p.port("port")?;
            null(if method == "wait_for_open_port" {
                m.wait_for_open_port(port, addr, wait(p)?)
            } else {
                m.wait_for_closed_port(port, addr, wait(p)?)
            })
        }
        "wait_for_open_unix_socket" => null(m.wait_for_open_unix_socket(p.str("addr")?, p.bool_or("is_datagram", false)?, wait(p)?)),
        "wait_for_console_text" => null(m.wait_for_console_text(p.str("regex")?, p.opt_secs("timeout")?)),
        "get_console_log" => Ok(json!(m.get_console_log())),
        "sleep" => null(m.sleep(p.secs_or("secs", Duration::ZERO)?)),
        "copy_from_host" => {
            let src = Path::new(p.str("source")?);
            let src = state.base_dir.join(src);
            null(m.copy_from_host(&src, p.str("target")?))
        }
        "copy_from_machine" => {
            let dir = p.opt_str("target_dir")?.unwrap_or("");
            let dest = m.copy_from_machine(p.str("source")?, dir)?;
            Ok(json!(dest.display().to_string()))
        }
        "block" => null(m.block()),
        "unblock" => null(m.unblock()),
        "forward_port" => null(m.forward_port(p.port("host_port")?, p.port("guest_port")?)),
        "log" => {
            m.log(p.str("msg")?);
            Ok(Value::Null)
        }
        "log_serial" => {
            m.log_serial(p.str("msg")?);
            Ok(Value::Null)
        }
        "send_console" => null(m.send_console(p.str("chars")?)),
        "shell_interact" => Ok(json!(m.shell_interact()?)),
        "shell_open" => Ok(json!(m.shell_open()?)),
        "shell_line" => {
            let (out, status) = m.shell_line(p.u64("session")?, p.str("line")?)?;
            Ok(json!([out, status]))
        }
        "shell_close" => null(m.shell_close(p.u64("session")?)),
        "release" => null(m.terminate()),
        "pid" => Ok(json!(m.pid())),
        "cleanup_statedir" => null(m.cleanup_statedir()),
        _ => Err(CallError {
            kind: "AttributeError",
            message: format!("'Machine' object has no attribute '{method}'"),
        }),
    }
}
