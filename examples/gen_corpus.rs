//! Write the fuzzers' seed corpus to `fuzz/corpus/<target>/`.
//!
//! `cargo run --example gen_corpus --features fuzzing` (the fuzz-target
//! bodies are behind that feature). Deterministic: running it again
//! rewrites the same files.

use std::fs;
use std::path::Path;

use ephemera::fuzzing;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for &target in fuzzing::TARGETS {
        let dir = root.join(target);
        fs::create_dir_all(&dir)?;
        let mut total = 0;
        for (name, bytes) in fuzzing::seeds(target) {
            // Every seed must pass before it is written.
            fuzzing::run(target, &bytes);
            total += bytes.len();
            fs::write(dir.join(name), bytes)?;
        }
        println!("{target}: {total} octets in {}", dir.display());
    }
    Ok(())
}
