//! The named parameters of one bridge call, read with the Python-side names in messages.

use std::time::Duration;

use serde_json::{Map, Value};

/// An error to raise in Python: the exception type and its message.
#[derive(Debug, Clone)]
pub struct CallError {
    /// `RequestedAssertionFailed`, `Exception`, `TypeError`, `AttributeError`, `NotImplementedError`.
    pub kind: &'static str,
    /// The message.
    pub message: String,
}

impl CallError {
    pub(crate) fn type_error(message: String) -> CallError {
        CallError {
            kind: "TypeError",
            message,
        }
    }
}

/// A call's parameters by name.
pub(crate) struct Params<'a> {
    pub method: &'a str,
    pub map: &'a Map<String, Value>,
}

impl Params<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn wrong(&self, name: &str, want: &str) -> CallError {
        CallError::type_error(format!("{}(): `{name}` must be {want}", self.method))
    }

    pub fn str(&self, name: &str) -> Result<&str, CallError> {
        self.get(name).and_then(Value::as_str).ok_or_else(|| self.wrong(name, "a string"))
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&str>, CallError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.wrong(name, "a string or None")),
        }
    }

    pub fn strs(&self, name: &str) -> Result<Vec<String>, CallError> {
        let list = self
            .get(name)
            .and_then(Value::as_array)
            .ok_or_else(|| self.wrong(name, "a list of strings"))?;
        list.iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(|| self.wrong(name, "a list of strings")))
            .collect()
    }

    pub fn u64(&self, name: &str) -> Result<u64, CallError> {
        self.get(name)
            .and_then(Value::as_u64)
            .ok_or_else(|| self.wrong(name, "a whole number"))
    }

    pub fn bool_or(&self, name: &str, default: bool) -> Result<bool, CallError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.wrong(name, "True or False")),
        }
    }

    pub fn port(&self, name: &str) -> Result<u16, CallError> {
        self.get(name)
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| self.wrong(name, "a port number from 0 to 65535"))
    }

    /// Seconds (already converted from a timedelta by the Python side); None when absent.
    pub fn opt_secs(&self, name: &str) -> Result<Option<Duration>, CallError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(s) if s >= 0.0 && s.is_finite() => Ok(Some(Duration::from_secs_f64(s))),
                _ => Err(self.wrong(name, "a number of seconds (>= 0) or a datetime.timedelta")),
            },
        }
    }

    pub fn secs_or(&self, name: &str, default: Duration) -> Result<Duration, CallError> {
        Ok(self.opt_secs(name)?.unwrap_or(default))
    }
}
