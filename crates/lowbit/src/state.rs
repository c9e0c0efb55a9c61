//! Named training state: the one interface through which checkpoints save and restore a model, its optimizer
//! and the loop around them.
//!
//! Each stateful component ([`crate::nn::Dense`], [`crate::nn::BatchNorm2d`], [`crate::quant::ActQuantizer`],
//! [`crate::optim::Optimizer`], ...) implements [`Stateful`]: it hands every value that training changes, its
//! parameters included, to a [`StateVisitor`] under a short name. One enumeration serves both directions: a
//! saving visitor reads each value, a loading visitor overwrites it, so save and load cannot disagree on names,
//! order or meaning. Containers visit their parts in [scopes](StateVisitor::scope), which makes names dotted
//! paths (`layers.3.dense.weight_quant.step`). Configuration (bit widths, momentum, kernel sizes) is not state:
//! it comes from the spec and settings the component is rebuilt from, and checkpoints compare those instead.
//!
//! A name only has to be stable for a given architecture; nothing else about the container (positions, layer
//! kinds) is known to the checkpoint code, so a container can change how it enumerates its parts without
//! touching the format.
use crate::error::Result;

/// One named value of a component's state, borrowed mutably: a saving visitor reads it, a loading visitor
/// overwrites it (checking lengths where the architecture fixes them).
#[derive(Debug)]
pub enum StateValue<'a> {
    /// Floats whose count the architecture fixes (weights, running statistics, a learned scalar).
    F32(&'a mut [f32]),
    /// Floats whose count can change while training (LSQ steps are empty until initialized, optimizer moments
    /// before the first step); loading resizes.
    F32Vec(&'a mut Vec<f32>),
    /// Double-precision accumulators of fixed count.
    F64(&'a mut [f64]),
    /// Raw 64-bit words of fixed count (a random generator's state).
    U64(&'a mut [u64]),
    /// Sample indices (a data order); loading resizes.
    Indices(&'a mut Vec<usize>),
    /// A counter (training steps seen).
    Count(&'a mut usize),
    /// How many entries follow under numbered names (`name.0`, `name.1`, ...); a loader checks it against the
    /// entries the file holds before the caller allocates anything for them.
    Len(&'a mut usize),
    /// A flag.
    Flag(&'a mut bool),
}

/// The receiving end of [`StateValue`]s: called with each value's full dotted name.
pub type StateSink<'s> = dyn FnMut(&str, StateValue<'_>) -> Result<()> + 's;

/// Walks a component's state, prefixing names with the scopes entered so far.
pub struct StateVisitor<'s> {
    /// `""` or the entered scopes, each followed by `.`.
    prefix: String,
    sink: &'s mut StateSink<'s>,
}

impl<'s> StateVisitor<'s> {
    /// A visitor handing every value to `sink`.
    pub fn new(sink: &'s mut StateSink<'s>) -> Self {
        Self {
            prefix: String::new(),
            sink,
        }
    }

    /// Hands `value` to the sink as `{scopes}.{name}`.
    pub fn value(&mut self, name: &str, value: StateValue<'_>) -> Result<()> {
        let len = self.prefix.len();
        self.prefix.push_str(name);
        let result = (self.sink)(&self.prefix, value);
        self.prefix.truncate(len);
        result
    }

    /// Runs `body` with `name` appended to the scope.
    pub fn scope(&mut self, name: &str, body: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        let len = self.prefix.len();
        self.prefix.push_str(name);
        self.prefix.push('.');
        let result = body(self);
        self.prefix.truncate(len);
        result
    }

    /// Visits `part`'s state under the scope `name`.
    pub fn part(&mut self, name: &str, part: &mut dyn Stateful) -> Result<()> {
        self.scope(name, |v| part.visit_state(v))
    }

    /// Visits a list of float tensors whose number can change (optimizer moments): its length, then each
    /// tensor as `name.{i}`. A loader sets the length first, so the list is resized before its entries load.
    pub fn f32_list(&mut self, name: &str, list: &mut Vec<Vec<f32>>) -> Result<()> {
        let mut n = list.len();
        self.value(name, StateValue::Len(&mut n))?;
        list.resize_with(n, Vec::new);
        self.scope(name, |v| {
            for (i, t) in list.iter_mut().enumerate() {
                v.value(&i.to_string(), StateValue::F32Vec(t))?;
            }
            Ok(())
        })
    }

    /// Visits an optional float pair (an observed range) as a presence flag and two floats.
    pub fn optional_pair(&mut self, name: &str, pair: &mut Option<(f32, f32)>) -> Result<()> {
        let mut present = pair.is_some();
        let mut values = pair.map_or([0.0; 2], |(a, b)| [a, b]);
        self.scope(name, |v| {
            v.value("present", StateValue::Flag(&mut present))?;
            v.value("values", StateValue::F32(&mut values))
        })?;
        *pair = present.then_some((values[0], values[1]));
        Ok(())
    }
}

/// A component with training state to checkpoint.
pub trait Stateful {
    /// Hands every value training changes, or a resumed run needs, to `v`: the same names in the same order each
    /// time for the same architecture. A loading visitor may overwrite any of them; the component re-derives
    /// whatever it caches from them (buffers sized by a loaded length, gradients of a resized parameter) before
    /// returning.
    fn visit_state(&mut self, v: &mut StateVisitor<'_>) -> Result<()>;
}

impl<T: Stateful + ?Sized> Stateful for Box<T> {
    fn visit_state(&mut self, v: &mut StateVisitor<'_>) -> Result<()> {
        (**self).visit_state(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Part {
        w: Vec<f32>,
        range: Option<(f32, f32)>,
        moments: Vec<Vec<f32>>,
        steps: usize,
    }

    impl Stateful for Part {
        fn visit_state(&mut self, v: &mut StateVisitor<'_>) -> Result<()> {
            v.value("w", StateValue::F32(&mut self.w))?;
            v.optional_pair("range", &mut self.range)?;
            v.f32_list("m", &mut self.moments)?;
            v.value("steps", StateValue::Count(&mut self.steps))
        }
    }

    #[test]
    fn scopes_make_dotted_names_and_lists_are_numbered() {
        let mut part = Part {
            w: vec![1.0, 2.0],
            range: Some((0.0, 3.0)),
            moments: vec![vec![0.5], vec![]],
            steps: 7,
        };
        let mut names = Vec::new();
        let mut sink = |name: &str, _: StateValue<'_>| {
            names.push(name.to_string());
            Ok(())
        };
        let mut v = StateVisitor::new(&mut sink);
        v.scope("layers", |v| v.part("0", &mut part)).unwrap();
        assert_eq!(
            names,
            [
                "layers.0.w",
                "layers.0.range.present",
                "layers.0.range.values",
                "layers.0.m",
                "layers.0.m.0",
                "layers.0.m.1",
                "layers.0.steps"
            ]
        );
    }

    #[test]
    fn a_loading_visitor_resizes_lists_and_clears_an_absent_range() {
        let mut part = Part {
            w: vec![1.0, 2.0],
            range: Some((0.0, 3.0)),
            moments: Vec::new(),
            steps: 0,
        };
        let mut sink = |name: &str, value: StateValue<'_>| {
            match (name, value) {
                ("range.present", StateValue::Flag(f)) => *f = false,
                ("m", StateValue::Len(n)) => *n = 3,
                (_, StateValue::F32Vec(t)) => *t = vec![9.0],
                ("steps", StateValue::Count(c)) => *c = 5,
                _ => {}
            }
            Ok(())
        };
        part.visit_state(&mut StateVisitor::new(&mut sink)).unwrap();
        assert_eq!(part.range, None);
        assert_eq!(part.moments, vec![vec![9.0]; 3]);
        assert_eq!(part.steps, 5);
    }
}
