//! Opt-in wall-time accounting of a [`super::Model`]'s forward and backward passes, per node, for the training
//! speed measurements (`examples/train_step_timing.rs`).
//!
//! Off by default: each node then costs one thread-local flag test. [`start`] turns it on for the calling thread
//! (the thread that runs the passes; the layers' rayon work inside a node is part of that node's wall time) and
//! [`take`] returns what was accumulated and turns it off again.
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// Accumulated wall time per node of a model, indexed by node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeTimes {
    /// Time in each node's forward pass.
    pub forward: Vec<Duration>,
    /// Time in each node's backward pass (gradient sums of values read by several nodes excluded).
    pub backward: Vec<Duration>,
}

thread_local! {
    static TIMES: RefCell<Option<NodeTimes>> = const { RefCell::new(None) };
}

/// Starts (or restarts, from zero) the accounting on this thread.
pub fn start() {
    TIMES.with(|t| *t.borrow_mut() = Some(NodeTimes::default()));
}

/// What was accumulated since [`start`] (`None` if it was not started); stops the accounting.
pub fn take() -> Option<NodeTimes> {
    TIMES.with(|t| t.borrow_mut().take())
}

/// A start time if the accounting is on.
pub(crate) fn now() -> Option<Instant> {
    TIMES.with(|t| t.borrow().is_some().then(Instant::now))
}

/// Adds the time since `since` to node `node`'s forward (or backward) total.
pub(crate) fn record(since: Option<Instant>, node: usize, backward: bool) {
    let Some(since) = since else { return };
    let dt = since.elapsed();
    TIMES.with(|t| {
        if let Some(times) = t.borrow_mut().as_mut() {
            let v = if backward {
                &mut times.backward
            } else {
                &mut times.forward
            };
            if v.len() <= node {
                v.resize(node + 1, Duration::ZERO);
            }
            v[node] += dt;
        }
    });
}
