//! The fuzz targets on stable Rust, for CI: each target's function (the same
//! one `fuzz/fuzz_targets/*.rs` calls) runs on the seeds, the committed corpus
//! and crash reproducers under `fuzz/`, and thousands of seeded mutations of
//! them. No input may panic, and no single allocation may exceed a bound
//! (a corrupt length must be refused, not allocated).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::time::Instant;

use da3_testkit::fuzz::{self, Outcome};
use da3_testkit::Rng;

/// Tracks the largest single allocation, per thread (tests run in parallel).
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

fn largest_since_reset() -> usize {
    LARGEST.with(|l| l.get())
}

fn reset_largest() {
    LARGEST.with(|l| l.set(0));
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Largest allocation any input may cause: the decoders' pixel budget
/// (`FUZZ_MAX_PIXELS` x 8 bytes) with room to spare, far below what a
/// corrupt length field could ask for (gigabytes).
const MAX_ALLOC: usize = 64 << 20;

/// Inputs per target on top of the seeds and the corpus.
const MUTATIONS: usize = 10_000;

fn files(dir: &Path) -> Vec<Vec<u8>> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn fuzz_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn run_target(name: &str, f: fn(&[u8]) -> Outcome, seeds: Vec<Vec<u8>>) {
    let t0 = Instant::now();
    let mut base = seeds;
    let corpus = files(&fuzz_dir().join("corpus").join(name));
    let regressions = files(&fuzz_dir().join("regressions").join(name));
    let (n_corpus, n_regr) = (corpus.len(), regressions.len());
    base.extend(corpus);
    base.extend(regressions);
    assert!(!base.is_empty());
    let mut rng = Rng::new(0xDA3_F022 ^ name.len() as u64);
    let mut inputs: Vec<Vec<u8>> = base.clone();
    for i in 0..MUTATIONS {
        let mut d = base[rng.index(base.len())].clone();
        if i % 10 == 9 {
            // Splice two inputs.
            let other = &base[rng.index(base.len())];
            let cut = rng.index(d.len() + 1);
            let from = rng.index(other.len() + 1);
            d.truncate(cut);
            d.extend_from_slice(&other[from..]);
        }
        rng.mutate(&mut d, 8);
        inputs.push(d);
    }
    let (mut accepted, mut rejected, mut crashed) = (0u64, 0u64, Vec::new());
    let (mut largest, mut too_large) = (0usize, None);
    for (i, d) in inputs.iter().enumerate() {
        reset_largest();
        match std::panic::catch_unwind(|| f(d)) {
            Ok(Outcome::Accepted) => accepted += 1,
            Ok(Outcome::Rejected) => rejected += 1,
            Err(_) => crashed.push(i),
        }
        let l = largest_since_reset();
        if l > MAX_ALLOC && too_large.is_none() {
            too_large = Some(i);
        }
        largest = largest.max(l);
    }
    println!(
        "fuzz figures: target={name} inputs={} (seeds+corpus {}, corpus {n_corpus}, regressions {n_regr}, mutations {MUTATIONS}) accepted={accepted} rejected={rejected} crashed={} largest_alloc={}KiB in {:.1}s",
        inputs.len(),
        base.len(),
        crashed.len(),
        largest / 1024,
        t0.elapsed().as_secs_f64()
    );
    if let Some(&i) = crashed.first() {
        let path = std::env::temp_dir().join(format!("{name}-crash-{i}.bin"));
        let _ = std::fs::write(&path, &inputs[i]);
        panic!(
            "{} inputs panicked in {name}; the first is saved as {} (add it to fuzz/regressions/{name}/ once fixed)",
            crashed.len(),
            path.display()
        );
    }
    if let Some(i) = too_large {
        let path = std::env::temp_dir().join(format!("{name}-alloc-{i}.bin"));
        let _ = std::fs::write(&path, &inputs[i]);
        panic!(
            "{name}: one allocation of {largest} bytes (bound {MAX_ALLOC}); the first input over it is saved as {} (add it to fuzz/regressions/{name}/ once fixed)",
            path.display()
        );
    }
    assert!(
        accepted > 0,
        "{name}: no input decoded, the seeds are broken"
    );
    assert!(
        rejected > 0,
        "{name}: nothing rejected, the mutations do nothing"
    );
}

#[test]
fn frame_decoder_never_panics() {
    run_target("frame_decoder", fuzz::frame_decoder, fuzz::frame_seeds());
}

#[test]
fn recording_reader_never_panics() {
    run_target(
        "recording_reader",
        fuzz::recording_reader,
        fuzz::recording_seeds(),
    );
}

#[test]
fn mcap_reader_never_panics() {
    run_target("mcap_reader", fuzz::mcap_reader, fuzz::mcap_seeds());
}

#[test]
fn huge_image_headers_are_refused_before_allocating() {
    use da3_msg::image_frame::{encode_jpeg, encode_png};
    use da3_msg::{DecodeLimits, Encoding, ImageFrame, MsgError};
    use da3_testkit::bad::{jpeg_claiming, png_claiming};
    let rgb = fuzz::picture(16, 12);
    let png = encode_png(16, 12, &rgb).unwrap();
    let jpeg = encode_jpeg(16, 12, &rgb, 80).unwrap();
    let cases = [
        (Encoding::Png, png_claiming(&png, 0x7fff_ffff, 0x7fff_ffff)),
        (Encoding::Png, png_claiming(&png, 100_000, 100_000)),
        (Encoding::Png, png_claiming(&png, 8193, 8193)),
        (Encoding::Jpeg, jpeg_claiming(&jpeg, 65_535, 65_535)),
        (Encoding::Jpeg, jpeg_claiming(&jpeg, 8193, 8193)),
    ];
    for (enc, data) in cases {
        let mut f = ImageFrame::rgb8(0, 0, Vec::new());
        f.encoding = enc;
        f.data = data;
        reset_largest();
        let r = f.to_rgb8(&DecodeLimits::default());
        let largest = largest_since_reset();
        println!("{enc} claiming a huge size: {r:?}, largest allocation {largest} bytes");
        assert!(matches!(r, Err(MsgError::TooLarge { .. })), "{enc}: {r:?}");
        assert!(
            largest < 1 << 20,
            "{enc}: allocated {largest} bytes before refusing"
        );
    }
}

/// Writes the seeds as the fuzzers' starting corpus (`fuzz/corpus/<target>/seed-*`).
/// Run by hand after changing the seeds: `cargo test -p da3-testkit --test fuzz_corpus -- --ignored`.
#[test]
#[ignore = "writes files under fuzz/corpus"]
fn write_seed_corpus() {
    for (name, seeds) in [
        ("frame_decoder", fuzz::frame_seeds()),
        ("recording_reader", fuzz::recording_seeds()),
        ("mcap_reader", fuzz::mcap_seeds()),
    ] {
        let dir = fuzz_dir().join("corpus").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
        }
    }
}
