//! The training loop's side of checkpoints: its own state ([`LoopState`], [`LoopArrays`]), the data
//! fingerprint, and saving and resuming a run through [`crate::checkpoint`].
use super::{Diagnostics, EpochStats, Samples};
use crate::checkpoint::PhaseCheckpoints;
use crate::error::{CheckpointError, Result};
use crate::nn::Model;
use crate::optim::Optimizer;
use crate::state::{StateValue, StateVisitor, Stateful};

/// Where the loop stands between two steps: what a checkpoint holds besides the model, the optimizer, the data
/// order and the last good weights ([`LoopArrays`]).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct LoopState {
    /// Epochs completed.
    pub(super) epochs_done: usize,
    /// Steps completed in the current epoch (0 at an epoch boundary, before its shuffle).
    pub(super) steps_done: usize,
    /// Steps completed over the run (the schedule's and the quantization delay's clock).
    pub(super) global_step: usize,
    /// Whether the quantizers are bypassed (quantization delay not over).
    pub(super) bypassed: bool,
    /// The current epoch's loss sum (weighted by batch size), correct predictions and training seconds so far.
    pub(super) loss_sum: f64,
    pub(super) correct: usize,
    pub(super) seconds: f64,
    /// The current epoch's diagnostics so far.
    pub(super) diag: Diagnostics,
    /// Completed epochs.
    pub(super) history: Vec<EpochStats>,
}

/// The loop's arrays, checkpointed as tensors: the data order (the current epoch's permutation of the training
/// samples, so the next epoch's shuffle continues from it) and the last good weights (restored on divergence).
pub(super) struct LoopArrays<'a> {
    pub(super) order: &'a mut Vec<usize>,
    pub(super) good: &'a mut Vec<Vec<f32>>,
}

impl Stateful for LoopArrays<'_> {
    fn visit_state(&mut self, v: &mut StateVisitor<'_>) -> Result<()> {
        v.value("order", StateValue::Indices(self.order))?;
        v.f32_list("good", self.good)
    }
}

/// Number of samples, sample shape and a 64-bit fingerprint of every label and sample value: a checkpoint is
/// resumed only on the data it was trained on.
pub(super) fn data_identity<S: Samples + ?Sized>(data: &S) -> String {
    let shape = data.sample_shape();
    let mut x = vec![0.0f32; shape.iter().product()];
    // A multiply-xorshift mix per 32-bit word: fast enough for 47M values (Fashion-MNIST) in well under a
    // second, and any changed pixel or label changes it.
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut mix = |w: u32| {
        h = (h ^ u64::from(w)).wrapping_mul(0xD1B5_4A32_D192_ED03);
        h ^= h >> 29;
    };
    for i in 0..data.len() {
        data.write_sample(i, &mut x);
        mix(u32::from(data.label(i)));
        x.iter().for_each(|v| mix(v.to_bits()));
    }
    format!("{} samples of {shape:?}, fingerprint {h:016x}", data.len())
}

/// Writes a checkpoint of the loop, the model and the optimizer.
pub(super) fn save_checkpoint(
    file: &PhaseCheckpoints,
    st: &LoopState,
    model: &mut Model,
    opt: &mut Optimizer,
    arrays: &mut LoopArrays<'_>,
) -> Result<()> {
    file.save(
        st,
        &mut [("model", model), ("optimizer", opt), ("loop", arrays)],
    )
}

/// Restores a run from `file`'s checkpoint, if resuming and there is one; checks that the restored state fits
/// this run (optimizer moments, the order is a permutation of `order`'s samples, the position in the run).
pub(super) fn resume(
    file: &PhaseCheckpoints,
    model: &mut Model,
    opt: &mut Optimizer,
    order: &mut Vec<usize>,
    good: &mut Vec<Vec<f32>>,
    steps: usize,
    epochs: usize,
) -> Result<Option<LoopState>> {
    let Some(mut ck) = file.load()? else {
        return Ok(None);
    };
    let st: LoopState = ck.loop_state()?;
    let mut train_samples = order.clone();
    ck.restore("model", model)?;
    ck.restore("optimizer", opt)?;
    ck.restore("loop", &mut LoopArrays { order, good })?;
    let params = model.params_mut();
    let bad = |what: String| Err(ck.error(CheckpointError::OtherModel(what)));
    if let Err(e) = opt.check_params(&params) {
        return bad(e.to_string());
    }
    let param_lens: Vec<usize> = params.iter().map(|p| p.value.len()).collect();
    drop(params);
    if good.iter().map(Vec::len).ne(param_lens.iter().copied()) {
        return bad("its last good weights do not fit the model's parameters".into());
    }
    let mut stored = order.clone();
    stored.sort_unstable();
    train_samples.sort_unstable();
    if stored != train_samples {
        return bad("its data order is not a permutation of this run's training samples".into());
    }
    let position_ok = st.epochs_done <= epochs
        && st.steps_done < steps
        && (st.epochs_done < epochs || st.steps_done == 0)
        && st.global_step == st.epochs_done * steps + st.steps_done
        && st.history.len() == st.epochs_done;
    if !position_ok {
        return Err(ck.error(CheckpointError::Malformed(format!(
            "inconsistent position: {} epochs and {} steps done, step {} of {steps} per epoch, {} epochs of history",
            st.epochs_done,
            st.steps_done,
            st.global_step,
            st.history.len()
        ))));
    }
    ck.finish()?;
    Ok(Some(st))
}
