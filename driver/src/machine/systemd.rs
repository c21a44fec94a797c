//! systemd: `systemctl`, unit properties, and `wait_for_unit`, which fails fast on a failed
//! unit or an inactive one nothing will start, as the NixOS driver does.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{shell_quote, Machine, MachineError};

impl Machine {
    /// `systemctl <q>` as root, or `systemctl --user <q>` as `user`; returns (status, stdout).
    pub fn systemctl(&self, q: &str, user: Option<&str>) -> Result<(i32, String), MachineError> {
        let cmd = match user {
            Some(u) => format!(
                "su -l {} --shell /bin/sh -c {}",
                shell_quote(u),
                shell_quote(&format!("XDG_RUNTIME_DIR=/run/user/`id -u` systemctl --user {q}"))
            ),
            None => format!("systemctl {q}"),
        };
        let out = self.execute(&cmd, None)?;
        Ok((out.status, out.stdout))
    }

    /// All properties of a unit (`systemctl show`), e.g. `ActiveState`.
    pub fn get_unit_info(&self, unit: &str, user: Option<&str>) -> Result<BTreeMap<String, String>, MachineError> {
        let (status, text) = self.systemctl(&format!("--no-pager show {}", shell_quote(unit)), user)?;
        if status != 0 {
            return Err(MachineError::Systemctl {
                node: self.name.clone(),
                message: format!(
                    "retrieving systemctl info for unit \"{unit}\"{} failed with exit code {status}",
                    user.map(|u| format!(" under user \"{u}\"")).unwrap_or_default()
                ),
            });
        }
        Ok(parse_show(&text))
    }

    /// One property of a unit.
    pub fn get_unit_property(&self, unit: &str, property: &str, user: Option<&str>) -> Result<String, MachineError> {
        let q = format!("--no-pager show {} --property={}", shell_quote(unit), shell_quote(property));
        let (status, text) = self.systemctl(&q, user)?;
        if status != 0 {
            return Err(MachineError::Systemctl {
                node: self.name.clone(),
                message: format!("retrieving systemctl property \"{property}\" for unit \"{unit}\" failed with exit code {status}"),
            });
        }
        parse_show(&text).remove(property).ok_or_else(|| MachineError::Systemctl {
            node: self.name.clone(),
            message: format!("systemctl show printed no property \"{property}\" for unit \"{unit}\": {text:?}"),
        })
    }

    /// Wait until a unit is active; fail at once when it failed, or when it is inactive and no
    /// job is pending that would start it.
    pub fn wait_for_unit(&self, unit: &str, user: Option<&str>, timeout: Duration) -> Result<(), MachineError> {
        self.log(&format!("waiting for unit {unit}"));
        let t = std::time::Instant::now();
        self.retry(&format!("waiting for unit {unit}"), timeout, |_| {
            let info = self.get_unit_info(unit, user)?;
            let state = info.get("ActiveState").cloned().unwrap_or_default();
            match state.as_str() {
                "active" => return Ok(Ok(())),
                "failed" => {
                    return Err(MachineError::UnitFailed {
                        node: self.name.clone(),
                        unit: unit.to_string(),
                        user: user.map(str::to_string),
                    })
                }
                "inactive" => {
                    let (_, jobs) = self.systemctl("list-jobs --full 2>&1", user)?;
                    if jobs.contains("No jobs") {
                        let again = self.get_unit_info(unit, user)?;
                        if again.get("ActiveState").map(String::as_str) == Some("inactive") {
                            return Err(MachineError::UnitInactive {
                                node: self.name.clone(),
                                unit: unit.to_string(),
                            });
                        }
                    }
                }
                _ => {}
            }
            Ok(Err(Some(format!("ActiveState={state}"))))
        })?;
        self.log(&format!("unit {unit} is active after {:.3}s", t.elapsed().as_secs_f64()));
        Ok(())
    }

    /// Fail unless the unit is in `state` now.
    pub fn require_unit_state(&self, unit: &str, state: &str) -> Result<(), MachineError> {
        self.log(&format!("checking that unit {unit} is {state}"));
        let info = self.get_unit_info(unit, None)?;
        let actual = info.get("ActiveState").cloned().unwrap_or_default();
        if actual != state {
            return Err(MachineError::UnitState {
                node: self.name.clone(),
                unit: unit.to_string(),
                expected: state.to_string(),
                actual,
            });
        }
        Ok(())
    }

    /// `systemctl start <job>`; returns (status, stdout).
    pub fn start_job(&self, job: &str, user: Option<&str>) -> Result<(i32, String), MachineError> {
        self.systemctl(&format!("start {}", shell_quote(job)), user)
    }

    /// `systemctl stop <job>`; returns (status, stdout).
    pub fn stop_job(&self, job: &str, user: Option<&str>) -> Result<(i32, String), MachineError> {
        self.systemctl(&format!("stop {}", shell_quote(job)), user)
    }
}

/// `Key=Value` lines of `systemctl show`.
pub(crate) fn parse_show(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn show_output_is_parsed() {
        let m = super::parse_show("Id=nginx.service\nActiveState=active\nExecStart={ path=/x ; argv[]=/x -g a=b }\n\nnot a property\n");
        assert_eq!(m["ActiveState"], "active");
        assert_eq!(m["ExecStart"], "{ path=/x ; argv[]=/x -g a=b }");
        assert_eq!(m.len(), 3);
    }
}
