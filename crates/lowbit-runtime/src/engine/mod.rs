//! Runs a [`QuantModel`] integer-only.
//!
//! [`Engine::new`] validates the graph ([`crate::graph::check`], the same function the `.lbq` reader runs),
//! then plans it once (`plan`: aliases, fusions, buffers by liveness) and prepares every weight matrix for the
//! selected kernel tier. A run feeds a batch through the planned steps; between nodes activations are `u8`
//! codes, and only the output node's i32 accumulators become f32 logits. The arithmetic of each op is stated
//! (normatively) in its module under [`crate::ops`].
//!
//! Threading is decided here and only here: a batch large enough is cut into tasks of about `PAR_TASK_MACS`
//! multiply-accumulates that the calling thread and the [`workers`] take from a shared counter (or that rayon
//! runs, when called from inside its pool); each task runs every step on its samples with this thread's
//! buffers. A batch too small to split lets convolutions spread their samples over rayon's pool instead.
mod plan;

use crate::error::QuantError;
use crate::graph::{self, GraphInfo};
use crate::kernels::{self, Isa};
use crate::model::QuantModel;
use crate::ops::{fit, internal, shape_err, StepOut};
use crate::workers;
use plan::{Dst, Plan, Src};
use rayon::prelude::*;
use std::cell::RefCell;

pub use crate::ops::Shape;

/// Work per task when [`Engine::run`] splits a batch across threads, in multiply-accumulates. 1M MACs is about
/// 30-40 us on one Zen3 core, far above the cost of handing out a task (~1-2 us in rayon), and cuts a batch of 256 through
/// the 784-64-10 MLP (51K MACs per sample) into 11 tasks of 24 samples: taking tasks from a shared counter (or
/// work stealing, inside the pool) then rebalances when a thread is descheduled on a shared machine, which a split
/// into one equal half per thread cannot (the call waits for the slower half), and every layer of a task runs on
/// one thread with its data in cache.
const PAR_TASK_MACS: usize = 1_000_000;

/// Task rows are a multiple of this: the int8 micro-tile is 6 rows, the sub-byte one 4.
const PAR_TASK_ROW_MULTIPLE: usize = 12;

/// Every node's integer output for a batch, for node-by-node comparison with an independent interpreter.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Codes of each node except the last (the output), `[batch, elems]` NCHW each; `codes.len() ==
    /// nodes.len() - 1`, in node order.
    pub codes: Vec<Vec<u8>>,
    /// The last node's i32 accumulators `[batch, classes]` (zero-point corrected, bias included).
    pub accumulators: Vec<i32>,
    /// Logits `[batch, classes]`, computed from `accumulators` as [`crate::ops`]' matrix module states.
    pub logits: Vec<f32>,
}

/// Time spent in one planned step, from [`Engine::profile`].
#[derive(Debug, Clone, PartialEq)]
pub struct StepProfile {
    /// The node (or fused nodes, `conv + pool`) the step computes.
    pub name: String,
    /// The kernel that ran, for matrix ops (as in [`Engine::kernel_paths`]).
    pub path: Option<String>,
    /// Multiply-accumulates per sample.
    pub macs: usize,
    /// Best seconds per call of this step over the profiled runs, for the whole batch.
    pub seconds: f64,
}

/// Per-thread activation buffers reused across [`Engine::run`] calls (grown, never shrunk).
#[derive(Default)]
struct Buffers {
    slots: Vec<Vec<u8>>,
    acc: Vec<i32>,
}

/// How an [`Engine`] runs, beyond what the model fixes. Build with struct update syntax,
/// `EngineOptions { allow_spinning: true, ..EngineOptions::default() }`, so that new options keep old code compiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineOptions {
    /// After a batch split over the helper threads, let them poll for the next batch for `LOWBIT_SPIN_US`
    /// microseconds (default [`workers::DEFAULT_SPIN_US`]) before they sleep, like ONNX Runtime's
    /// `allow_spinning`. Back-to-back calls then skip the helpers' wake-up (tens of microseconds on a VM, against
    /// about 100 us for a batch of 256 through the MLP), at the price of a busy core per helper after every call.
    /// Off by default, so that a library call leaves the host process idle when it returns; `lowbit bench`,
    /// `lowbit eval` and the benchmarks turn it on. The `split_ab` example measures both ways (BENCHMARKS.md).
    pub allow_spinning: bool,
    /// Keep 3x3 stride-1 convolutions on the direct channel-pair-plane kernel instead of Winograd F(2x2, 3x3)
    /// ([`crate::kernels::winograd`]). The codes are the same either way; this exists for A/B measurements
    /// (the `engine_profile` example's `ab` mode).
    pub direct_3x3: bool,
}

/// A validated, planned, ready-to-run quantized model.
///
/// An `Engine` is immutable once built and is `Send + Sync` (asserted at compile time): share one between threads
/// (by reference, or in an `Arc`) and call [`Engine::run`] from all of them at once. Every call uses its own
/// thread's scratch buffers and returns exactly the logits a single-threaded call would. A large batch is split
/// between the calling thread and the runtime's helper threads ([`workers`]); while one call holds the helpers,
/// concurrent calls run on their own threads.
#[derive(Debug)]
pub struct Engine {
    options: EngineOptions,
    info: GraphInfo,
    plan: Plan,
    /// The same graph without aliases or fusions, for [`Engine::run_traced`].
    traced: Plan,
    classes: usize,
}

// Fails to compile if a field ever makes `Engine` unshareable between threads (its docs promise that it is).
const _: fn() = || {
    fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Engine>();
};

impl Engine {
    /// Validates `model` completely and prepares it to run on the selected kernel tier, with the default
    /// [`EngineOptions`].
    pub fn new(model: &QuantModel) -> Result<Engine, QuantError> {
        Self::with_isa(model, kernels::selected_isa())
    }

    /// [`Engine::new`] with explicit [`EngineOptions`].
    pub fn with_options(model: &QuantModel, options: EngineOptions) -> Result<Engine, QuantError> {
        Self::with_isa_options(model, kernels::selected_isa(), options)
    }

    /// The options this engine runs with.
    pub fn options(&self) -> EngineOptions {
        self.options
    }

    /// Like [`Engine::new`] with weights prepared for `isa` (which must be available on this CPU; the
    /// reference tier always is).
    pub(crate) fn with_isa(model: &QuantModel, isa: Isa) -> Result<Engine, QuantError> {
        Self::with_isa_options(model, isa, EngineOptions::default())
    }

    fn with_isa_options(
        model: &QuantModel,
        isa: Isa,
        options: EngineOptions,
    ) -> Result<Engine, QuantError> {
        let info = graph::check(model)?;
        let winograd = !options.direct_3x3;
        let plan = plan::plan(model, &info, isa, false, winograd)?;
        let traced = plan::plan(model, &info, isa, true, winograd)?;
        Ok(Engine {
            options,
            classes: model.classes,
            info,
            plan,
            traced,
        })
    }

    /// The kernel path of each matrix node, in order (`dense 784x64: avx2 pairs`, `conv 16x150: direct`...), for
    /// reports that say which kernel ran.
    pub fn kernel_paths(&self) -> Vec<String> {
        self.plan
            .steps
            .iter()
            .filter_map(|s| s.step.path())
            .collect()
    }

    /// Input features per sample.
    pub fn input_features(&self) -> usize {
        self.info.input_features
    }

    /// Logits per sample.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Largest per-sample buffer (activation, im2col scratch) a run allocates, in elements; lets a loader bound
    /// the memory an untrusted model can demand.
    pub fn max_sample_elems(&self) -> usize {
        self.info.max_sample_elems
    }

    /// Shape and quantization of every value (see [`GraphInfo`]).
    pub fn graph_info(&self) -> &GraphInfo {
        &self.info
    }

    /// Runs `batch` samples of raw `u8` input (`[batch, features]`) and returns f32 logits `[batch, classes]`.
    pub fn run(&self, input: &[u8], batch: usize) -> Result<Vec<f32>, QuantError> {
        Ok(self.execute(input, batch, None, true)?.1)
    }

    /// Like [`Engine::run`], but a large batch is always handed whole to the rayon pool, the caller waiting on
    /// rayon's latch, as `run` does only when called from inside the pool (for comparisons: the `split_ab`
    /// example times the two strategies in alternating windows).
    pub fn run_pooled(&self, input: &[u8], batch: usize) -> Result<Vec<f32>, QuantError> {
        Ok(self.execute(input, batch, None, false)?.1)
    }

    /// Like [`Engine::run`], also returning every node's integer output.
    pub fn run_traced(&self, input: &[u8], batch: usize) -> Result<Trace, QuantError> {
        let mut codes = Vec::with_capacity(self.traced.steps.len().saturating_sub(1));
        let (accumulators, logits) = self.execute(input, batch, Some(&mut codes), true)?;
        Ok(Trace {
            codes,
            accumulators,
            logits,
        })
    }

    /// Times every planned step on the calling thread: `runs` runs of `batch` samples (at least one), each
    /// step's best time kept. The batch is neither split over threads nor spread within a step, so the
    /// figures are one core's; steps are those of [`Engine::run`] (fusions included) in plan order.
    pub fn profile(
        &self,
        input: &[u8],
        batch: usize,
        runs: usize,
    ) -> Result<Vec<StepProfile>, QuantError> {
        let t0 = std::time::Instant::now();
        self.profile_with_clock(input, batch, runs, &|| t0.elapsed().as_secs_f64())
    }

    /// [`Engine::profile`] with another clock (seconds from any origin), e.g. the thread's CPU time, which on a
    /// shared machine leaves out the time other processes held the core.
    pub fn profile_with_clock(
        &self,
        input: &[u8],
        batch: usize,
        runs: usize,
        clock: &dyn Fn() -> f64,
    ) -> Result<Vec<StepProfile>, QuantError> {
        let _single = workers::SplitTask::enter();
        let mut best = vec![f64::INFINITY; self.plan.steps.len()];
        for _ in 0..runs.max(1) {
            let mut times = Vec::with_capacity(best.len());
            BUFFERS_PROFILE.with(|cell| {
                let mut b = cell.borrow_mut();
                self.execute_in(input, batch, None, &mut b, Some((&mut times, clock)))
            })?;
            for (b, t) in best.iter_mut().zip(times) {
                *b = b.min(t);
            }
        }
        Ok(self
            .plan
            .steps
            .iter()
            .zip(best)
            .map(|(p, seconds)| StepProfile {
                name: p.name.clone(),
                path: p.step.path(),
                macs: p.macs,
                seconds,
            })
            .collect())
    }

    /// Predicted class per sample: argmax of the logits, ties going to the lowest index.
    pub fn predict(&self, input: &[u8], batch: usize) -> Result<Vec<usize>, QuantError> {
        let logits = self.run(input, batch)?;
        Ok(argmax_rows(&logits, self.classes))
    }

    /// Runs the graph with this thread's reusable activation buffers (only the returned logits are allocated,
    /// plus the accumulators and codes when tracing). Returns the last node's accumulators only when tracing.
    fn execute(
        &self,
        input: &[u8],
        batch: usize,
        trace: Option<&mut Vec<Vec<u8>>>,
        caller_splits: bool,
    ) -> Result<(Vec<i32>, Vec<f32>), QuantError> {
        // A lone sample's convolutions split over the helpers (`workers::join`), which spin afterwards only if
        // this engine allows it.
        let _spin = workers::SpinScope::enter(self.options.allow_spinning);
        let rows = self.task_rows();
        if trace.is_none() && batch > rows && rayon::current_num_threads() > 1 {
            let features = self.info.input_features;
            if batch.checked_mul(features) != Some(input.len()) {
                return self.execute_local(input, batch, None);
            }
            if caller_splits && rayon::current_thread_index().is_none() {
                return self.execute_split(input, batch, rows);
            }
            let mut logits = vec![0f32; batch * self.classes];
            logits
                .par_chunks_mut(rows * self.classes)
                .zip(input.par_chunks(rows * features))
                .try_for_each(|(out, x)| {
                    let (_, l) = self.execute_local(x, x.len() / features, None)?;
                    out.copy_from_slice(&l);
                    Ok::<(), QuantError>(())
                })?;
            return Ok((Vec::new(), logits));
        }
        self.execute_local(input, batch, trace)
    }

    /// The batch split when the caller is outside the rayon pool: the caller and the spinning [`workers`] take
    /// tasks of `rows` samples from a shared counter. Against handing the whole split to the rayon pool
    /// ([`Engine::run_pooled`]), whose workers fall asleep between calls and take tens of microseconds to wake on
    /// this VM, the `split_ab` example measures the difference in alternating windows (BENCHMARKS.md). While
    /// another thread's batch holds the helpers, this one runs on the calling thread alone.
    fn execute_split(
        &self,
        input: &[u8],
        batch: usize,
        rows: usize,
    ) -> Result<(Vec<i32>, Vec<f32>), QuantError> {
        use std::sync::Mutex;
        let features = self.info.input_features;
        let tasks = batch.div_ceil(rows);
        let mut logits = vec![0f32; batch * self.classes];
        let outs: Vec<Mutex<&mut [f32]>> = logits
            .chunks_mut(rows * self.classes)
            .map(Mutex::new)
            .collect();
        let first_err: Mutex<Option<QuantError>> = Mutex::new(None);
        let task = |i: usize| {
            let _split = workers::SplitTask::enter();
            let lo = i * rows;
            let hi = (lo + rows).min(batch);
            let result = self
                .execute_local(&input[lo * features..hi * features], hi - lo, None)
                .and_then(|(_, l)| {
                    let out = outs
                        .get(i)
                        .ok_or_else(|| internal("batch task out of range"))?;
                    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                    if out.len() != l.len() {
                        return Err(internal("batch task logits of the wrong length"));
                    }
                    out.copy_from_slice(&l);
                    Ok(())
                });
            if let Err(e) = result {
                first_err
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(e);
            }
        };
        let completed = workers::run_tasks(tasks, self.options.allow_spinning, &task);
        drop(outs);
        match first_err.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None if !completed => Err(internal("a batch task panicked")),
            None => Ok((Vec::new(), logits)),
        }
    }

    /// Samples per task of the batch split (see `PAR_TASK_MACS`). A sample of at least `PAR_TASK_MACS` is a task
    /// of its own: rounded up to 12 samples, ResNet-20's 40M-MAC samples made a batch of 64 five tasks and a third,
    /// and one of two threads idled through a third of a task.
    fn task_rows(&self) -> usize {
        match PAR_TASK_MACS.div_ceil(self.info.macs_per_sample.max(1)) {
            1 => 1,
            rows => rows.next_multiple_of(PAR_TASK_ROW_MULTIPLE),
        }
    }

    /// [`Engine::execute`] on the calling thread.
    fn execute_local(
        &self,
        input: &[u8],
        batch: usize,
        trace: Option<&mut Vec<Vec<u8>>>,
    ) -> Result<(Vec<i32>, Vec<f32>), QuantError> {
        thread_local! {
            static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
        }
        BUFFERS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut b) => self.execute_in(input, batch, trace, &mut b, None),
            Err(_) => self.execute_in(input, batch, trace, &mut Buffers::default(), None),
        })
    }

    fn execute_in(
        &self,
        input: &[u8],
        batch: usize,
        mut trace: Option<&mut Vec<Vec<u8>>>,
        bufs: &mut Buffers,
        mut times: Option<(&mut Vec<f64>, &dyn Fn() -> f64)>,
    ) -> Result<(Vec<i32>, Vec<f32>), QuantError> {
        let features = self.info.input_features;
        let expected = batch.checked_mul(features);
        if expected != Some(input.len()) {
            return Err(shape_err(
                "engine input",
                format!(
                    "batch {batch} x {features} features needs {expected:?} bytes, found {}",
                    input.len()
                ),
            ));
        }
        if batch == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let plan = if trace.is_some() {
            &self.traced
        } else {
            &self.plan
        };
        if bufs.slots.len() < plan.slots {
            bufs.slots.resize_with(plan.slots, Vec::new);
        }
        for p in &plan.steps {
            let start = times.as_ref().map(|(_, clock)| clock());
            let out_len = batch
                .checked_mul(p.out_elems)
                .ok_or_else(|| internal("batch too large"))?;
            match p.output {
                Dst::Logits => {
                    let inputs = gather(&p.inputs, input, &bufs.slots)?;
                    fit(&mut bufs.acc, out_len);
                    p.step.run(&inputs, batch, StepOut::Acc(&mut bufs.acc))?;
                    let logits = p.step.logits(&bufs.acc)?;
                    if let (Some((t, clock)), Some(t0)) = (times.as_mut(), start) {
                        t.push(clock() - t0);
                    }
                    let accumulators = if trace.is_some() {
                        bufs.acc.clone()
                    } else {
                        Vec::new()
                    };
                    return Ok((accumulators, logits));
                }
                Dst::Slot(s) => {
                    // The output buffer leaves the slot list while the step reads the others (never itself:
                    // the planner gives an output a slot no input holds).
                    let mut out =
                        std::mem::take(bufs.slots.get_mut(s).ok_or_else(|| internal("slot"))?);
                    fit(&mut out, out_len);
                    let result = gather(&p.inputs, input, &bufs.slots)
                        .and_then(|inputs| p.step.run(&inputs, batch, StepOut::Codes(&mut out)));
                    if let Some(t) = trace.as_deref_mut() {
                        t.push(out.clone());
                    }
                    bufs.slots[s] = out;
                    result?;
                    if let (Some((t, clock)), Some(t0)) = (times.as_mut(), start) {
                        t.push(clock() - t0);
                    }
                }
            }
        }
        Err(internal("the plan has no output step"))
    }
}

thread_local! {
    /// [`Engine::profile`]'s buffers, apart from the runs' so that profiling does not grow those.
    static BUFFERS_PROFILE: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// The input slices of a step.
fn gather<'a>(
    srcs: &[Src],
    input: &'a [u8],
    slots: &'a [Vec<u8>],
) -> Result<Vec<&'a [u8]>, QuantError> {
    srcs.iter()
        .map(|s| match *s {
            Src::Input => Ok(input),
            Src::Slot(k) => slots
                .get(k)
                .map(Vec::as_slice)
                .ok_or_else(|| internal("slot")),
        })
        .collect()
}

/// Argmax of each row of `values` (`cols` per row), ties to the lowest index.
pub fn argmax_rows(values: &[f32], cols: usize) -> Vec<usize> {
    if cols == 0 {
        return Vec::new();
    }
    values
        .chunks(cols)
        .map(|row| {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            best
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{random_cnn, random_mlp, LayerOpts, Rng};

    #[test]
    fn reference_tier_engine_computes_the_same_logits_and_limits() {
        for seed in 0..6u64 {
            let o = LayerOpts {
                weight_bits: [8, 4, 2][seed as usize % 3],
                act_bits: 8,
                per_channel: seed % 2 == 0,
            };
            let model = if seed < 3 {
                random_cnn(seed, o)
            } else {
                random_mlp(seed, o)
            };
            let fast = Engine::new(&model).expect("valid model");
            let reference = Engine::with_isa(&model, Isa::Reference).expect("valid model");
            assert_eq!(fast.max_sample_elems(), reference.max_sample_elems());
            let x = Rng(seed).bytes(7 * fast.input_features());
            let (a, b) = (fast.run(&x, 7), reference.run(&x, 7));
            assert_eq!(a.expect("runs"), b.expect("runs"), "seed {seed}");
        }
    }
}
