//! README.md (linked into this crate) shows `examples/quantize.rs` verbatim, so the code its doctests run (see
//! `ReadmeDoctests` in lib.rs) is the example's.
#[test]
fn readme_shows_the_quantize_example_verbatim() {
    let block = format!("```rust\n{}```", include_str!("../examples/quantize.rs"));
    assert!(
        include_str!("../README.md").contains(&block),
        "README.md's quantize block differs from examples/quantize.rs"
    );
}
