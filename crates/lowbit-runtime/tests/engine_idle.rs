//! A library is a good citizen in its host process: with the default [`EngineOptions`], once [`Engine::run`]
//! returns the runtime's helper threads use no CPU; with `allow_spinning` they poll for the next batch, which the
//! same measurement sees (so that the first test could fail).
#![cfg(unix)]
use lowbit_runtime::engine::{Engine, EngineOptions};
use lowbit_runtime::testutil::{process_cpu_secs, reference_mlp, Rng};
use lowbit_runtime::workers;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// How long helpers poll after a batch that allows it, set for this process before the pool starts: long enough
/// that the spinning test's measurement cannot miss it on a loaded machine.
const SPIN_US: &str = "300000";

/// CPU the whole process may use in the idle second after `run` returns with the default options. What remains
/// is this thread's sleep and clock reads and the helpers parking after the batch: on the 2-core test VM, loaded
/// about 13 deep, that second measured 25-45 us, as much as a process that only sleeps (20-40 us). 500 us is over
/// ten times that, and the equal of one helper spinning for the runtime's old default of 500 us; with the spin
/// time this process sets, a helper spinning by default would use a hundred times more (next constant).
const IDLE_CPU_TOLERANCE_SECS: f64 = 500e-6;

/// CPU the 300 ms spin of [`SPIN_US`] must show at least: two helpers spinning on the same loaded VM used 83-133 ms
/// of that second; 20 ms leaves room for a machine loaded several times more.
const SPIN_CPU_DETECTED_SECS: f64 = 20e-3;

/// Serializes the tests (they share the helpers and measure the whole process) and configures the process once:
/// three rayon threads, so two helpers whatever `RAYON_NUM_THREADS` says, and the spin time.
fn setup() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    static ONCE: OnceLock<()> = OnceLock::new();
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    ONCE.get_or_init(|| {
        std::env::set_var("LOWBIT_SPIN_US", SPIN_US);
        // Fails only if the global pool already exists; then its thread count stands.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build_global();
        assert!(workers::helpers() > 0, "no helper threads to test");
    });
    guard
}

/// Runs batches of 256 (split over the helpers), then returns the process CPU used in the idle second after the
/// last one returns.
fn cpu_in_the_idle_second_after_run(engine: &Engine) -> f64 {
    let x = Rng(3).bytes(256 * engine.input_features());
    for _ in 0..20 {
        engine.run(&x, 256).unwrap();
    }
    // Start-up settles first: rayon's freshly started workers (its global pool starts with the first engine call)
    // yield for a while before they sleep, which is once per process, not after every call.
    std::thread::sleep(Duration::from_millis(200));
    engine.run(&x, 256).unwrap();
    let before = process_cpu_secs();
    std::thread::sleep(Duration::from_secs(1));
    process_cpu_secs() - before
}

#[test]
fn with_default_options_the_process_uses_no_cpu_in_the_second_after_run_returns() {
    let _setup = setup();
    let engine = Engine::new(&reference_mlp(1, 8)).unwrap();
    assert!(!engine.options().allow_spinning);
    let used = cpu_in_the_idle_second_after_run(&engine);
    eprintln!(
        "idle second after run, default options: {:.1} us of CPU",
        used * 1e6
    );
    assert!(
        used < IDLE_CPU_TOLERANCE_SECS,
        "the process used {:.1} us of CPU in the idle second after Engine::run returned (tolerance {:.0} us)",
        used * 1e6,
        IDLE_CPU_TOLERANCE_SECS * 1e6
    );
}

#[test]
fn with_spinning_allowed_the_helpers_use_cpu_after_run_returns() {
    let _setup = setup();
    let options = EngineOptions {
        allow_spinning: true,
        ..EngineOptions::default()
    };
    let engine = Engine::with_options(&reference_mlp(1, 8), options).unwrap();
    let used = cpu_in_the_idle_second_after_run(&engine);
    eprintln!(
        "idle second after run, spinning allowed: {:.1} ms of CPU",
        used * 1e3
    );
    assert!(
        used > SPIN_CPU_DETECTED_SECS,
        "spinning helpers used only {:.1} ms of CPU after Engine::run returned",
        used * 1e3
    );
}
