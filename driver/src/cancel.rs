//! Cancelling one script call: Ctrl-C in `hutch test --interactive` interrupts the Python call
//! that waits, and the bridge then cancels the driver's side of it. The token travels with
//! the serving thread (a thread-local, like Python's KeyboardInterrupt) instead of through
//! every Machine method: agent requests made on that thread stop waiting and ask the agent
//! to kill their command (`AgentRequest::Cancel`), and the Machine's waits and sleeps end.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

thread_local! {
    static TOKEN: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread with `token` as its cancellation: once the token is set, agent
/// requests made inside `f` end with `AgentError::Cancelled`.
pub fn scope<T>(token: Arc<AtomicBool>, f: impl FnOnce() -> T) -> T {
    let before = TOKEN.with(|t| t.borrow_mut().replace(token));
    let out = f();
    TOKEN.with(|t| *t.borrow_mut() = before);
    out
}

/// Whether the call this thread serves was cancelled.
pub fn requested() -> bool {
    TOKEN.with(|t| t.borrow().as_ref().is_some_and(|f| f.load(Ordering::SeqCst)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_seen_only_inside_its_scope_and_thread() {
        let token = Arc::new(AtomicBool::new(true));
        assert!(!requested());
        scope(Arc::clone(&token), || {
            assert!(requested());
            assert!(!std::thread::spawn(requested).join().unwrap());
        });
        assert!(!requested());
    }
}
