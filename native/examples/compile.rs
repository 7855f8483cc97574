//! Compiles one ONNX file `reps` times and prints the median time: for profiling loads.
//! `cargo run --release -p manymodels-native --example compile -- model.onnx 10`

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: compile <model.onnx> [reps]");
    let reps: usize = args.next().map(|r| r.parse().expect("reps")).unwrap_or(5);
    let bytes = std::fs::read(&path).expect("readable file");
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let started = std::time::Instant::now();
        let model = manymodels_native::Model::compile(&bytes).expect("compiles");
        times.push(started.elapsed());
        drop(model);
        if std::env::var_os("TRIM").is_some() {
            // As the scorer does after evictions: freed memory goes back to the OS, so the
            // next load faults its pages in again.
            // SAFETY: malloc_trim only returns free memory to the OS.
            unsafe { libc::malloc_trim(0) };
        }
    }
    times.sort();
    println!(
        "{path}: {} bytes, median {:?} over {reps}",
        bytes.len(),
        times[reps / 2]
    );
}
