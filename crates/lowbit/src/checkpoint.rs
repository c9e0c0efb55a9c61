//! Training checkpoints: files that let a killed run continue exactly where it stood
//! (`lowbit train --checkpoint-dir DIR [--checkpoint-every N]`, `--resume DIR`).
//!
//! A run with several training phases (an f32 baseline, then QAT) checkpoints each in its own file,
//! `DIR/{phase}.ckpt`. A file is a safetensors container (written by
//! [`lowbit_runtime::format::container_bytes`], so the same state gives the same bytes) whose `__metadata__`
//! holds `format = "lowbit.checkpoint"`, `format_version`, `lowbit_version`, `phase`, the run's `settings`
//! (JSON), a description of its training `data`, the training loop's position and history (`loop`, JSON with
//! every float stored as its bit pattern, so it reads back exactly) and a `checksum` (FNV-1a 64 over the other
//! metadata entries and the data section). Each tensor is one [`StateValue`] of a [`Stateful`] part, named by its
//! dotted path (`model.nodes.layers.0.dense.weight`, `optimizer.m.3`, `loop.order`), 1-D: F32 and F64 floats, U64
//! words, indices and counters, U8 flags. docs/CHECKPOINTS.md describes the layout for people.
//!
//! Writes are atomic: the new file is written and fsynced beside the old one, then renamed over it, so a kill at
//! any moment leaves either the previous checkpoint or the new one, both complete. Reads check sizes before
//! allocating, the checksum, the format and lowbit versions, the settings and data of the run, and that the
//! stored state fits the model exactly; each failure is a [`CheckpointError`] naming the file.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::error::{CheckpointError, Error, Result};
use crate::state::{StateValue, StateVisitor, Stateful};
use lowbit_runtime::format::{self, container_bytes};
use lowbit_runtime::FormatError;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// `format` metadata value of checkpoint files.
pub const CHECKPOINT_FORMAT: &str = "lowbit.checkpoint";
/// The checkpoint format version this build reads and writes. A checkpoint is only resumed by the lowbit version
/// that wrote it (its training arithmetic is what makes the resumed run bit-identical), so the format version
/// only tells this build's readers apart from future ones.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;
/// Largest checkpoint read, in bytes (checked before reading it).
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 32;
/// File name extension of checkpoints.
pub const EXTENSION: &str = "ckpt";

/// How a training run checkpoints, shared by its phases.
#[derive(Debug, Clone)]
pub struct Checkpointing {
    /// Directory of the checkpoint files (created if missing).
    pub dir: PathBuf,
    /// Also checkpoint every this many optimizer steps (counted over the phase); every epoch end always is.
    pub every_steps: Option<usize>,
    /// Continue from the checkpoints in `dir` (a phase without one starts from scratch).
    pub resume: bool,
    /// What identifies the run (JSON): a checkpoint is resumed only by a run with exactly these settings.
    pub settings: String,
}

impl Checkpointing {
    /// Checkpoints in `dir`, at every epoch end and every `every_steps` steps if given, resuming from what `dir`
    /// holds when `resume`; no settings yet (`settings` is `""`: set it, or let
    /// [`crate::pipeline::run_checkpointed`] set it from the run's configuration).
    pub fn new(dir: impl Into<PathBuf>, every_steps: Option<usize>, resume: bool) -> Self {
        Self {
            dir: dir.into(),
            every_steps,
            resume,
            settings: String::new(),
        }
    }

    /// The file of phase `phase`.
    pub fn path(&self, phase: &str) -> PathBuf {
        self.dir.join(format!("{phase}.{EXTENSION}"))
    }

    /// Readies the directory for a run with these phases, before anything is written: a run that does not
    /// resume must find no checkpoint of them there (it would overwrite it); one that resumes must find at least
    /// one, and each it finds must be readable and written by a run with the same settings. Creates the
    /// directory when missing (and not resuming).
    pub fn prepare(&self, phases: &[&str]) -> Result<()> {
        let err = |source| Error::Checkpoint {
            path: self.dir.clone(),
            source,
        };
        if self.every_steps == Some(0) {
            return Err(Error::option("--checkpoint-every", "must be at least 1"));
        }
        let existing: Vec<PathBuf> = phases
            .iter()
            .map(|p| self.path(p))
            .filter(|p| p.exists())
            .collect();
        if !self.resume {
            if let Some(p) = existing.first() {
                let file = p
                    .file_name()
                    .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
                return Err(err(CheckpointError::AlreadyExists { file }));
            }
            return std::fs::create_dir_all(&self.dir).map_err(|source| Error::Io {
                path: self.dir.clone(),
                source,
            });
        }
        if existing.is_empty() {
            let expected = phases
                .iter()
                .map(|p| format!("{p}.{EXTENSION}"))
                .collect::<Vec<_>>()
                .join(" or ");
            return Err(err(CheckpointError::NotFound { expected }));
        }
        for path in existing {
            Loaded::read(&path)?.check_settings(&self.settings)?;
        }
        Ok(())
    }

    /// The checkpoints of one phase training on data described by `data`.
    pub fn phase(&self, phase: &str, data: String) -> PhaseCheckpoints {
        PhaseCheckpoints {
            path: self.path(phase),
            tmp: self.dir.join(format!(".{phase}.{EXTENSION}.tmp")),
            phase: phase.to_string(),
            settings: self.settings.clone(),
            data,
            every_steps: self.every_steps,
            resume: self.resume,
        }
    }
}

/// The checkpoint file of one training phase and what its run is.
#[derive(Debug, Clone)]
pub struct PhaseCheckpoints {
    path: PathBuf,
    tmp: PathBuf,
    phase: String,
    settings: String,
    data: String,
    every_steps: Option<usize>,
    resume: bool,
}

impl PhaseCheckpoints {
    /// The checkpoint file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a checkpoint is due after optimizer step `global_step` (1-based, counted over the phase).
    pub fn due_at_step(&self, global_step: usize) -> bool {
        self.every_steps
            .is_some_and(|n| n > 0 && global_step.is_multiple_of(n))
    }

    /// The phase's checkpoint when resuming and there is one, read, checked against this run's settings and
    /// data, ready to [`restore`](Loaded::restore) from.
    pub fn load(&self) -> Result<Option<Loaded>> {
        if !self.resume || !self.path.exists() {
            return Ok(None);
        }
        let loaded = Loaded::read(&self.path)?;
        loaded.check_settings(&self.settings)?;
        if loaded.meta("phase")? != self.phase {
            return Err(loaded.error(CheckpointError::OtherSettings {
                setting: "phase".into(),
                checkpoint: loaded.meta("phase")?.to_string(),
                this_run: self.phase.clone(),
            }));
        }
        let data = loaded.meta("data")?;
        if data != self.data {
            return Err(loaded.error(CheckpointError::OtherData {
                checkpoint: data.to_string(),
                this_run: self.data.clone(),
            }));
        }
        Ok(Some(loaded))
    }

    /// Writes a checkpoint atomically: `loop_state` (serialized exactly, see [`to_exact_json`]) and every part's
    /// state under its name. The previous checkpoint stays in place until the new one is complete on disk.
    pub fn save<T: Serialize>(
        &self,
        loop_state: &T,
        parts: &mut [(&str, &mut dyn Stateful)],
    ) -> Result<()> {
        let mut tensors: Vec<format::Tensor> = Vec::new();
        let mut names = HashSet::new();
        let mut sink = |name: &str, value: StateValue<'_>| {
            if !names.insert(name.to_string()) {
                return Err(Error::Shape(format!("state name {name} visited twice")));
            }
            tensors.push(encode(name, value));
            Ok(())
        };
        let mut v = StateVisitor::new(&mut sink);
        for (name, part) in parts.iter_mut() {
            v.part(name, &mut **part)?;
        }
        let mut meta: BTreeMap<&str, String> = BTreeMap::new();
        meta.insert("format", CHECKPOINT_FORMAT.into());
        meta.insert("format_version", CHECKPOINT_FORMAT_VERSION.to_string());
        meta.insert("lowbit_version", env!("CARGO_PKG_VERSION").into());
        meta.insert("phase", self.phase.clone());
        meta.insert("settings", self.settings.clone());
        meta.insert("data", self.data.clone());
        meta.insert("loop", to_exact_json(loop_state)?);
        let data = tensors.iter().map(|t| t.3.as_slice());
        let sum = checksum(&meta, data);
        meta.insert("checksum", format!("{sum:016x}"));
        let meta: Vec<(&str, String)> = meta.into_iter().collect();
        let bytes = container_bytes(&meta, &tensors).map_err(|e| Error::Checkpoint {
            path: self.path.clone(),
            source: CheckpointError::Malformed(e.to_string()),
        })?;
        self.write(&bytes)
    }

    /// Temp file, fsync, rename over the checkpoint, fsync of the directory. The temp name is fixed per phase, so
    /// a save killed halfway leaves one stale temp file that the next save overwrites.
    fn write(&self, bytes: &[u8]) -> Result<()> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        if let Some(dir) = self.tmp.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut f = std::fs::File::create(&self.tmp).map_err(io(&self.tmp))?;
        f.write_all(bytes).map_err(io(&self.tmp))?;
        f.sync_all().map_err(io(&self.tmp))?;
        drop(f);
        let n = SAVES.fetch_add(1, Ordering::SeqCst) + 1;
        if test_pause() == Some(&Pause::Save(n)) {
            pause(&format!("checkpoint save {n}, before the rename"));
        }
        std::fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        if let Some(dir) = self.path.parent() {
            // Persists the rename; not every platform can open a directory, so failure is not an error.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

/// Checkpoint saves of this process, for the `save:N` test pause.
static SAVES: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug, Clone, PartialEq)]
enum Pause {
    /// After optimizer step `n` of the phase (any phase when `None`).
    Step { phase: Option<String>, n: usize },
    /// During the `n`-th save of the process.
    Save(usize),
}

/// `LOWBIT_TEST_PAUSE`, read once: a hook for the crash tests (`lowbit-cli/tests/checkpoint_resume.rs`), which
/// SIGKILL the process while it waits. `step:N` (or `step:PHASE:N`) stops after optimizer step N of a phase
/// (of phase PHASE), its checkpoint written if one was due; `save:N` stops during the process's N-th checkpoint
/// save, after the new file is complete and before it replaces the old one.
fn test_pause() -> Option<&'static Pause> {
    static PAUSE: OnceLock<Option<Pause>> = OnceLock::new();
    PAUSE
        .get_or_init(|| {
            let v = std::env::var("LOWBIT_TEST_PAUSE").ok()?;
            let parts: Vec<&str> = v.split(':').collect();
            match parts.as_slice() {
                ["step", n] => Some(Pause::Step {
                    phase: None,
                    n: n.parse().ok()?,
                }),
                ["step", phase, n] => Some(Pause::Step {
                    phase: Some(phase.to_string()),
                    n: n.parse().ok()?,
                }),
                ["save", n] => Some(Pause::Save(n.parse().ok()?)),
                _ => None,
            }
        })
        .as_ref()
}

fn pause(at: &str) -> ! {
    eprintln!("lowbit: paused by LOWBIT_TEST_PAUSE at {at}");
    loop {
        std::thread::park();
    }
}

impl PhaseCheckpoints {
    /// The `step` test pause, called by the training loop after each optimizer step (1-based `global_step`).
    pub(crate) fn after_step(&self, global_step: usize) {
        if let Some(Pause::Step { phase, n }) = test_pause() {
            if *n == global_step && phase.as_ref().is_none_or(|p| *p == self.phase) {
                pause(&format!("{} step {global_step}", self.phase));
            }
        }
    }
}

/// A state value as a 1-D little-endian tensor.
fn encode(name: &str, value: StateValue<'_>) -> format::Tensor {
    fn le<const N: usize>(xs: impl Iterator<Item = [u8; N]>) -> Vec<u8> {
        xs.flatten().collect()
    }
    let (dtype, n, bytes) = match value {
        StateValue::F32(x) => ("F32", x.len(), le(x.iter().map(|v| v.to_le_bytes()))),
        StateValue::F32Vec(x) => ("F32", x.len(), le(x.iter().map(|v| v.to_le_bytes()))),
        StateValue::F64(x) => ("F64", x.len(), le(x.iter().map(|v| v.to_le_bytes()))),
        StateValue::U64(x) => ("U64", x.len(), le(x.iter().map(|v| v.to_le_bytes()))),
        StateValue::Indices(x) => (
            "U64",
            x.len(),
            le(x.iter().map(|&v| (v as u64).to_le_bytes())),
        ),
        StateValue::Count(c) | StateValue::Len(c) => ("U64", 1, (*c as u64).to_le_bytes().to_vec()),
        StateValue::Flag(f) => ("U8", 1, vec![u8::from(*f)]),
    };
    (name.to_string(), dtype, vec![n], bytes)
}

/// FNV-1a 64 over the metadata entries (key, 0, value, 0, in key order) and then the data section.
fn checksum<'a>(meta: &BTreeMap<&str, String>, data: impl Iterator<Item = &'a [u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (k, v) in meta.iter().filter(|(k, _)| **k != "checksum") {
        feed(k.as_bytes());
        feed(&[0]);
        feed(v.as_bytes());
        feed(&[0]);
    }
    for d in data {
        feed(d);
    }
    h
}

/// One stored tensor: dtype, element count, byte range in the file.
struct Entry {
    dtype: Dtype,
    len: usize,
    bytes: Range<usize>,
}

/// A checkpoint read from disk and checked (format, versions, checksum), whose parts can be restored.
pub struct Loaded {
    path: PathBuf,
    bytes: Vec<u8>,
    meta: std::collections::HashMap<String, String>,
    entries: BTreeMap<String, Entry>,
    used: HashSet<String>,
}

impl Loaded {
    /// Reads and checks the file at `path`; the tensors are checked when restored.
    pub fn read(path: &Path) -> Result<Loaded> {
        let err = |source| Error::Checkpoint {
            path: path.to_path_buf(),
            source,
        };
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_CHECKPOINT_BYTES {
            return Err(err(CheckpointError::Container(
                FormatError::LimitExceeded {
                    what: "file bytes".into(),
                    value: len,
                    max: MAX_CHECKPOINT_BYTES,
                },
            )));
        }
        let bytes = std::fs::read(path).map_err(io)?;
        Self::from_bytes(bytes, path)
    }

    /// Checks `bytes`, the content of the file at `path` (which names it in errors), as [`Loaded::read`] does.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<Loaded> {
        let err = |source| Error::Checkpoint {
            path: path.to_path_buf(),
            source,
        };
        let len = bytes.len() as u64;
        let header = format::parse_header(&bytes).map_err(|e| {
            err(match e {
                FormatError::BadMagic { .. } | FormatError::Malformed(_) => {
                    CheckpointError::NotACheckpoint {
                        found: e.to_string(),
                    }
                }
                other => CheckpointError::Container(other),
            })
        })?;
        let format = header.metadata.get("format").map(String::as_str);
        if format != Some(CHECKPOINT_FORMAT) {
            return Err(err(CheckpointError::NotACheckpoint {
                found: format.map_or_else(|| "no format key".into(), |f| format!("format {f:?}")),
            }));
        }
        let version = header.metadata.get("format_version");
        if version.map(String::as_str) != Some(&CHECKPOINT_FORMAT_VERSION.to_string()) {
            return Err(err(CheckpointError::UnsupportedFormat {
                found: version.cloned().unwrap_or_else(|| "(none)".into()),
                supported: CHECKPOINT_FORMAT_VERSION,
            }));
        }
        let written_by = header.metadata.get("lowbit_version");
        if written_by.map(String::as_str) != Some(env!("CARGO_PKG_VERSION")) {
            return Err(err(CheckpointError::OtherVersion {
                written_by: written_by.cloned().unwrap_or_else(|| "(unknown)".into()),
                this: env!("CARGO_PKG_VERSION").into(),
            }));
        }
        // `parse_header` bounds the header by MAX_HEADER_BYTES; the data section by the file size read.
        let needed = 8u64
            .saturating_add(header.header_len)
            .saturating_add(header.data_bytes);
        if needed > len {
            return Err(err(CheckpointError::Container(FormatError::Truncated {
                section: "data".into(),
                needed,
                available: len,
            })));
        }
        if needed < len {
            return Err(err(CheckpointError::Malformed(format!(
                "{} bytes after the data section",
                len - needed
            ))));
        }
        let (_, layout) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| err(CheckpointError::Malformed(format!("safetensors: {e}"))))?;
        // `header_len` fits: the whole file was read into memory.
        let start = 8 + header.header_len as usize;
        let entries = layout
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let (a, b) = info.data_offsets;
                let entry = Entry {
                    dtype: info.dtype,
                    len: info.shape.iter().product(),
                    bytes: start + a..start + b,
                };
                (name, entry)
            })
            .collect();
        let meta: BTreeMap<&str, String> = header
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let stored = header
            .metadata
            .get("checksum")
            .and_then(|c| u64::from_str_radix(c, 16).ok())
            .ok_or_else(|| err(CheckpointError::Malformed("missing or bad checksum".into())))?;
        let data = bytes.get(start..).unwrap_or_default();
        let computed = checksum(&meta, std::iter::once(data));
        if computed != stored {
            return Err(err(CheckpointError::ChecksumMismatch { stored, computed }));
        }
        Ok(Loaded {
            path: path.to_path_buf(),
            meta: header.metadata,
            bytes,
            entries,
            used: HashSet::new(),
        })
    }

    /// `source` as an error naming this file.
    pub fn error(&self, source: CheckpointError) -> Error {
        Error::Checkpoint {
            path: self.path.clone(),
            source,
        }
    }

    /// A metadata entry.
    fn meta(&self, key: &str) -> Result<&str> {
        self.meta
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| self.error(CheckpointError::Malformed(format!("no {key} entry"))))
    }

    /// Fails unless the checkpoint was written by a run with exactly `settings` (compared as text: both were
    /// serialized by the same code), naming the first setting that differs.
    pub fn check_settings(&self, settings: &str) -> Result<()> {
        let stored = self.meta("settings")?;
        if stored == settings {
            return Ok(());
        }
        let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::String(s.into()));
        let (setting, checkpoint, this_run) =
            first_difference(&parse(stored), &parse(settings), String::new())
                .unwrap_or_else(|| ("settings".into(), stored.to_string(), settings.to_string()));
        Err(self.error(CheckpointError::OtherSettings {
            setting,
            checkpoint,
            this_run,
        }))
    }

    /// The training loop's state, as [`PhaseCheckpoints::save`] stored it.
    pub fn loop_state<T: DeserializeOwned>(&self) -> Result<T> {
        from_exact_json(self.meta("loop")?)
            .map_err(|e| self.error(CheckpointError::Malformed(format!("loop state: {e}"))))
    }

    /// Overwrites `part`'s state with the values stored under `name`: each must exist, with the dtype and (where
    /// the part fixes it) the length of the part's value, and hold finite floats.
    pub fn restore(&mut self, name: &str, part: &mut dyn Stateful) -> Result<()> {
        let Loaded {
            path,
            bytes,
            entries,
            used,
            ..
        } = self;
        let err = |source| Error::Checkpoint {
            path: path.clone(),
            source,
        };
        let limit = entries.len();
        let mut sink = |name: &str, value: StateValue<'_>| {
            let e = entries.get(name).ok_or_else(|| {
                err(CheckpointError::OtherModel(format!(
                    "the checkpoint has no {name}"
                )))
            })?;
            used.insert(name.to_string());
            let data = bytes.get(e.bytes.clone()).unwrap_or_default();
            decode(name, e, data, value, limit).map_err(err)
        };
        StateVisitor::new(&mut sink).part(name, part)
    }

    /// Fails if the file holds state no [`restore`](Self::restore) asked for (a part the model does not have).
    pub fn finish(self) -> Result<()> {
        match self.entries.keys().find(|k| !self.used.contains(*k)) {
            Some(name) => Err(self.error(CheckpointError::OtherModel(format!(
                "the checkpoint holds {name}, which this run does not have"
            )))),
            None => Ok(()),
        }
    }
}

/// Writes stored tensor `e` (bytes `data`) into `value`; `max_len` bounds a [`StateValue::Len`].
fn decode(
    name: &str,
    e: &Entry,
    data: &[u8],
    value: StateValue<'_>,
    max_len: usize,
) -> std::result::Result<(), CheckpointError> {
    let want = |dtype: Dtype, len: Option<usize>| {
        if e.dtype != dtype {
            return Err(CheckpointError::Malformed(format!(
                "{name} is {:?}, expected {dtype:?}",
                e.dtype
            )));
        }
        match len {
            Some(n) if n != e.len => Err(CheckpointError::OtherModel(format!(
                "{name} holds {} values, the model {n}",
                e.len
            ))),
            _ => Ok(()),
        }
    };
    let f32s = || -> std::result::Result<Vec<f32>, CheckpointError> {
        let v: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        finite(name, v.iter().all(|x| x.is_finite()))?;
        Ok(v)
    };
    let u64s = || {
        data.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
    };
    let scalar = |what: &str| -> std::result::Result<usize, CheckpointError> {
        want(Dtype::U64, Some(1))?;
        u64s()
            .next()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| CheckpointError::Malformed(format!("{name}: bad {what}")))
    };
    match value {
        StateValue::F32(out) => {
            want(Dtype::F32, Some(out.len()))?;
            out.copy_from_slice(&f32s()?);
        }
        StateValue::F32Vec(out) => {
            want(Dtype::F32, None)?;
            *out = f32s()?;
        }
        StateValue::F64(out) => {
            want(Dtype::F64, Some(out.len()))?;
            let v: Vec<f64> = data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect();
            finite(name, v.iter().all(|x| x.is_finite()))?;
            out.copy_from_slice(&v);
        }
        StateValue::U64(out) => {
            want(Dtype::U64, Some(out.len()))?;
            for (o, v) in out.iter_mut().zip(u64s()) {
                *o = v;
            }
        }
        StateValue::Indices(out) => {
            want(Dtype::U64, None)?;
            *out = u64s()
                .map(usize::try_from)
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| CheckpointError::Malformed(format!("{name}: index out of range")))?;
        }
        StateValue::Count(out) => *out = scalar("count")?,
        StateValue::Len(out) => {
            let n = scalar("length")?;
            if n > max_len {
                return Err(CheckpointError::Malformed(format!(
                    "{name}: {n} entries, the file holds {max_len} tensors"
                )));
            }
            *out = n;
        }
        StateValue::Flag(out) => {
            want(Dtype::U8, Some(1))?;
            *out = match data.first() {
                Some(0) => false,
                Some(1) => true,
                _ => {
                    return Err(CheckpointError::Malformed(format!(
                        "{name}: a flag must be 0 or 1"
                    )))
                }
            };
        }
    }
    Ok(())
}

fn finite(name: &str, ok: bool) -> std::result::Result<(), CheckpointError> {
    if ok {
        Ok(())
    } else {
        Err(CheckpointError::Malformed(format!(
            "{name} holds NaN or infinity"
        )))
    }
}

/// The first leaf where `a` and `b` differ: (dotted path, value in `a`, value in `b`).
fn first_difference(a: &Value, b: &Value, path: String) -> Option<(String, String, String)> {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                first_difference(va, vb, join(k))
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (va, vb))| first_difference(va, vb, join(&i.to_string()))),
        _ if a == b => None,
        _ => Some((path, a.to_string(), b.to_string())),
    }
}

/// Key that marks a float stored as its bit pattern in [`to_exact_json`].
const BITS_KEY: &str = "f64_bits";

/// `value` as JSON with every float replaced by `{"f64_bits": "<16 hex digits>"}`, so it reads back bit for bit
/// ([`from_exact_json`]) whatever the JSON parser's decimal rounding. Fails on a non-finite float.
pub fn to_exact_json<T: Serialize>(value: &T) -> Result<String> {
    fn walk(v: &mut Value) {
        match v {
            Value::Number(n) if n.is_f64() => {
                let bits = n.as_f64().unwrap_or_default().to_bits();
                *v = serde_json::json!({ BITS_KEY: format!("{bits:016x}") });
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            Value::Object(o) => o.values_mut().for_each(walk),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(value).map_err(|e| Error::Shape(e.to_string()))?;
    walk(&mut v);
    Ok(v.to_string())
}

/// Reads what [`to_exact_json`] wrote.
pub fn from_exact_json<T: DeserializeOwned>(text: &str) -> std::result::Result<T, String> {
    fn walk(v: &mut Value) -> std::result::Result<(), String> {
        match v {
            Value::Object(o) if o.len() == 1 && o.contains_key(BITS_KEY) => {
                let x = o
                    .get(BITS_KEY)
                    .and_then(Value::as_str)
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .map(f64::from_bits)
                    .and_then(serde_json::Number::from_f64)
                    .ok_or_else(|| format!("bad {BITS_KEY} entry {o:?}"))?;
                *v = Value::Number(x);
            }
            Value::Array(a) => a.iter_mut().try_for_each(walk)?,
            Value::Object(o) => o.values_mut().try_for_each(walk)?,
            _ => {}
        }
        Ok(())
    }
    let mut v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    walk(&mut v)?;
    serde_json::from_value(v).map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exact_json_round_trips_floats_bit_for_bit() {
        #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
        struct S {
            a: f32,
            b: f64,
            n: usize,
            v: Vec<Option<f32>>,
        }
        let s = S {
            a: 0.1 + 0.2,
            b: std::f64::consts::PI / 3.0,
            n: usize::MAX,
            v: vec![Some(f32::MIN_POSITIVE), None, Some(-1.0e-45)],
        };
        let text = to_exact_json(&s).unwrap();
        let back: S = from_exact_json(&text).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.a.to_bits(), s.a.to_bits());
    }

    #[test]
    fn first_difference_names_the_dotted_path() {
        let a = serde_json::json!({"train": {"lr": 0.1, "epochs": 2}, "model": "m"});
        let b = serde_json::json!({"train": {"lr": 0.2, "epochs": 2}, "model": "m"});
        assert_eq!(
            first_difference(&a, &b, String::new()),
            Some(("train.lr".into(), "0.1".into(), "0.2".into()))
        );
        assert_eq!(first_difference(&a, &a, String::new()), None);
    }
}
