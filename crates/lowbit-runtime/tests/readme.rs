//! README.md (linked into this crate) shows `examples/run_lbq.rs` verbatim, so the code the `lowbit` crate's
//! README doctests compile is the example's.
#[test]
fn readme_shows_the_run_lbq_example_verbatim() {
    let block = format!(
        "```rust,no_run\n{}```",
        include_str!("../examples/run_lbq.rs")
    );
    assert!(
        include_str!("../README.md").contains(&block),
        "README.md's run_lbq block differs from examples/run_lbq.rs"
    );
}
