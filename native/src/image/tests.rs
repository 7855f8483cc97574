use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::*;
use crate::graph::Op;
use crate::tree::{self, Core, Ensemble, Mode};
use crate::value::{Data, Elem, Tensor};

const KEY: &[u8] = b"store-key:1234:5678";
const ANNEX: &[u8] = br#"{"classes":[null]}"#;

fn corpus() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/corpus");
    let mut files = Vec::new();
    for dir in [root.clone(), root.join("ops")] {
        for entry in std::fs::read_dir(&dir).expect("the corpus is committed") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|x| x == "onnx") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn name(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

/// Rows of every input, deterministic, with NaN, infinities and small integers among
/// ordinary values (so splits go both ways and categorical splits match).
fn inputs(model: &Model, rows: usize, seed: u64) -> Vec<Tensor> {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    model
        .inputs()
        .iter()
        .map(|port| {
            let width = match port.shape.as_slice() {
                [_, w] if *w > 0 => *w as usize,
                _ => 1,
            };
            let n = rows * width;
            let mut value = || -> f64 {
                match next() % 16 {
                    0 => f64::NAN,
                    1 => f64::INFINITY,
                    2 => f64::from(next() % 8),
                    _ => f64::from(next() % 20_000) / 1000.0 - 10.0,
                }
            };
            let data = match port.elem {
                Elem::F32 => Data::F32((0..n).map(|_| value() as f32).collect()),
                Elem::F64 => Data::F64((0..n).map(|_| value()).collect()),
                Elem::I64 => Data::I64((0..n).map(|_| (next() % 8) as i64).collect()),
                Elem::I32 => Data::I32((0..n).map(|_| (next() % 8) as i32).collect()),
                Elem::Bool => Data::Bool((0..n).map(|_| next() % 2 == 0).collect()),
                Elem::Str => Data::Str((0..n).map(|_| "a".to_string()).collect()),
            };
            let shape = if port.shape.len() == 2 {
                vec![rows, width]
            } else {
                vec![n]
            };
            Tensor { shape, data }
        })
        .collect()
}

/// Outputs as text: `Debug` prints each float's shortest round-trip form, so equal text
/// is equal bits (NaN aside, which both print alike).
fn run(model: &Model, x: Vec<Tensor>) -> String {
    format!("{:?}", model.run(x))
}

fn read(image: &[u8], key: &[u8]) -> Result<(Model, Vec<u8>), ImageError> {
    Model::from_image(&mut &image[..], image.len() as u64, key)
}

/// A file of this test's own, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(bytes: &[u8]) -> TempFile {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "mm-native-image-{}-{}.mmimg",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, bytes).expect("temporary file written");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `image` written to a file and mapped, as a scorer opens a large image (whatever its
/// size here).
fn map(image: &[u8], key: &[u8]) -> Result<(Model, Vec<u8>), ImageError> {
    let file = TempFile::new(image);
    let opened = std::fs::File::open(&file.0).expect("opened");
    open_image(&opened, image.len() as u64, key, true)
}

/// The models whose layout cannot be imaged: trees whose shared true branch was laid out
/// before a node that joins it (LightGBM's categorical splits through ONNX Runtime's
/// relayout). They compile from their file every time.
const NOT_IMAGED: &[&str] = &[];

#[test]
fn every_corpus_model_answers_alike_from_its_image() {
    let (mut imaged, mut not_imaged) = (0, Vec::new());
    for path in corpus() {
        let bytes = std::fs::read(&path).unwrap();
        let Ok(model) = Model::compile(&bytes) else {
            continue;
        };
        let Some(image) = model.to_image(KEY, ANNEX) else {
            not_imaged.push(name(&path));
            continue;
        };
        let (back, annex) = read(&image, KEY).unwrap_or_else(|e| panic!("{}: {e}", name(&path)));
        let (mapped, mapped_annex) =
            map(&image, KEY).unwrap_or_else(|e| panic!("{} mapped: {e}", name(&path)));
        assert_eq!(annex, ANNEX);
        assert_eq!(mapped_annex, ANNEX);
        let trees = model.steps.iter().any(|s| matches!(s.op, Op::Tree(_)));
        // A forest's arrays are served from the mapping, which the model then counts.
        assert_eq!(mapped.is_mapped(), trees, "{}", name(&path));
        if trees {
            assert!(mapped.heap_bytes() >= image.len(), "{}", name(&path));
        }
        for copy in [&back, &mapped] {
            assert_eq!(copy.inputs(), model.inputs(), "{}", name(&path));
            assert_eq!(copy.outputs(), model.outputs(), "{}", name(&path));
            for (rows, seed) in [(1, 1), (7, 2), (300, 3)] {
                let x = inputs(&model, rows, seed);
                assert_eq!(
                    run(copy, x.clone()),
                    run(&model, x),
                    "{} on {rows} rows",
                    name(&path)
                );
            }
            // Written again, an image is the same bytes: nothing depends on addresses.
            assert_eq!(copy.to_image(KEY, ANNEX).as_deref(), Some(&image[..]));
        }
        imaged += 1;
    }
    assert!(imaged >= 40, "{imaged} models imaged");
    not_imaged.sort();
    assert_eq!(not_imaged, NOT_IMAGED);
}

/// A small multi-class forest with string labels (every kind of section: ports, steps,
/// nodes, weights, labels, a ZipMap) and a linear classifier.
fn samples() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/corpus");
    ["skl_rf_multi_str_zipmap", "skl_logreg_multinomial"]
        .iter()
        .map(|n| {
            let bytes = std::fs::read(root.join(format!("{n}.onnx"))).expect("in the corpus");
            let model = Model::compile(&bytes).expect("compiles");
            (n.to_string(), model.to_image(KEY, ANNEX).expect("imaged"))
        })
        .collect::<Vec<_>>()
}

#[test]
fn a_changed_byte_anywhere_in_an_image_is_refused() {
    let samples = samples();
    assert!(!samples.is_empty());
    for (name, image) in samples {
        for i in 0..image.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = image.clone();
                bad[i] ^= flip;
                match read(&bad, KEY) {
                    Err(ImageError::Corrupt(_)) => {}
                    other => panic!("{name}: byte {i} ^ {flip:#x}: {:?}", other.map(|_| ())),
                }
            }
        }
    }
}

/// Through a mapping as through a read: a damaged file is refused, never served.
#[test]
fn a_damaged_mapped_image_is_refused() {
    for (name, image) in samples() {
        // Every 7th byte (the read path tries them all, above), and the last.
        for i in (0..image.len()).step_by(7).chain([image.len() - 1]) {
            let mut bad = image.clone();
            bad[i] ^= 0x10;
            assert!(
                matches!(map(&bad, KEY), Err(ImageError::Corrupt(_))),
                "{name}: byte {i}"
            );
        }
        for len in [0, 1, 9, image.len() / 2, image.len() - 1] {
            assert!(
                matches!(map(&image[..len], KEY), Err(ImageError::Corrupt(_))),
                "{name}: cut at {len}"
            );
        }
    }
}

/// The scorer replaces an image by a rename and deletes it by unlinking: a model mapped
/// from the old file answers as before through both.
#[test]
fn a_mapped_model_outlives_its_file_being_replaced_or_removed() {
    let model = forest();
    let image = model.to_image(KEY, ANNEX).expect("imaged");
    let file = TempFile::new(&image);
    let opened = std::fs::File::open(&file.0).expect("opened");
    let (mapped, _) = open_image(&opened, image.len() as u64, KEY, true).expect("mapped");
    drop(opened);
    assert!(mapped.is_mapped());
    let x = inputs(&model, 50, 9);
    let expected = run(&model, x.clone());
    let other = TempFile::new(b"not an image at all");
    std::fs::rename(&other.0, &file.0).expect("renamed over");
    assert_eq!(run(&mapped, x.clone()), expected);
    std::fs::remove_file(&file.0).expect("removed");
    assert_eq!(run(&mapped, x), expected);
}

#[test]
fn a_truncated_or_extended_image_is_refused() {
    for (name, image) in samples() {
        for len in 0..image.len() {
            assert!(
                matches!(read(&image[..len], KEY), Err(ImageError::Corrupt(_))),
                "{name}: cut at {len}"
            );
            // The reader told the whole length, but the bytes end early.
            assert!(
                Model::from_image(&mut &image[..len], image.len() as u64, KEY).is_err(),
                "{name}: {len} bytes of {}",
                image.len()
            );
        }
        let mut longer = image.clone();
        longer.push(0);
        assert!(matches!(read(&longer, KEY), Err(ImageError::Corrupt(_))));
    }
}

/// Rewrites a header field and seals the header again, as another engine would have.
fn reseal(image: &[u8], at: usize, value: u32) -> Vec<u8> {
    let mut out = image.to_vec();
    out[at..at + 4].copy_from_slice(&value.to_le_bytes());
    let key_len = u32::from_le_bytes(out[16..20].try_into().unwrap()) as usize;
    let annex_at = 20 + key_len;
    let annex_len = u32::from_le_bytes(out[annex_at..annex_at + 4].try_into().unwrap()) as usize;
    let hash_at = (annex_at + 4 + annex_len).next_multiple_of(8) + 8;
    let hash = xxh3_64(&out[..hash_at]);
    out[hash_at..hash_at + 8].copy_from_slice(&hash.to_le_bytes());
    out
}

#[test]
fn an_image_of_another_engine_or_source_is_stale() {
    let (_, image) = samples().remove(0);
    assert!(read(&image, KEY).is_ok());
    assert!(matches!(
        read(&image, b"store-key:1234:5679"),
        Err(ImageError::Stale(_))
    ));
    let newer_format = reseal(&image, 8, FORMAT + 1);
    assert!(matches!(
        read(&newer_format, KEY),
        Err(ImageError::Stale(_))
    ));
    let other_engine = reseal(&image, 12, ENGINE_REVISION + 1);
    assert!(matches!(
        read(&other_engine, KEY),
        Err(ImageError::Stale(_))
    ));
    // Sealed as this engine writes it, the same bytes read again.
    assert!(read(&reseal(&image, 12, ENGINE_REVISION), KEY).is_ok());
}

fn forest() -> Model {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/corpus");
    Model::compile(&std::fs::read(root.join("skl_rf_reg.onnx")).unwrap()).unwrap()
}

fn first_core(model: &mut Model) -> &mut Core<f32> {
    match &mut model.steps[0].op {
        Op::Tree(Ensemble::F32(core)) => core,
        _ => panic!("a float forest"),
    }
}

/// An image whose checksums are right but whose structure would loop or index out of
/// range is refused: images are checked as a compile checks, not trusted.
#[test]
fn a_sealed_image_with_a_broken_structure_is_refused() {
    type Break = fn(&mut Model);
    let breaks: Vec<(&str, Break)> = vec![
        ("a split pointing back to the root", |m| {
            let core = first_core(m);
            let split = core
                .trees
                .nodes
                .iter()
                .position(|n| n.mode() != Mode::Leaf as u8);
            core.trees.nodes.to_mut()[split.unwrap()].index = 0;
        }),
        ("a split pointing past the nodes", |m| {
            let core = first_core(m);
            let split = core
                .trees
                .nodes
                .iter()
                .position(|n| n.mode() != Mode::Leaf as u8);
            core.trees.nodes.to_mut()[split.unwrap()].index = u32::MAX;
        }),
        ("a root past the nodes", |m| {
            let core = first_core(m);
            core.trees.roots.to_mut()[0] = core.trees.nodes.len() as u32;
        }),
        ("a feature past max_feature", |m| {
            let core = first_core(m);
            core.trees.max_feature = 0;
        }),
        ("an unknown mode", |m| {
            let core = first_core(m);
            core.trees.nodes.to_mut()[0].word |= 7 << tree::WORD_BITS;
        }),
        ("a step reading an unwritten slot", |m| {
            m.steps[0].inputs[0] = m.slots - 1;
        }),
        ("an output never written", |m| {
            m.slots += 1;
            m.output_slots[0] = m.slots - 1;
        }),
    ];
    for (what, break_it) in breaks {
        let mut model = forest();
        break_it(&mut model);
        assert!(model.to_image(KEY, ANNEX).is_none(), "{what}: imaged");
        let image = seal_unchecked(&model);
        match read(&image, KEY) {
            Err(ImageError::Corrupt(_)) => {}
            other => panic!("{what}: {:?}", other.map(|_| ())),
        }
    }
    // The unbroken model, sealed the same way, reads.
    assert!(read(&seal_unchecked(&forest()), KEY).is_ok());
}

/// `to_image` without its structure check, to make the images a bad writer would.
fn seal_unchecked(model: &Model) -> Vec<u8> {
    seal(model, KEY, ANNEX)
}

/// A declared length larger than the file is refused before anything of that size is
/// allocated (the counting is the reader's, against the length it was told).
#[test]
fn a_huge_declared_length_allocates_nothing() {
    let (_, image) = samples().remove(0);
    // The payload length field, rewritten to 2^60 and sealed again.
    let key_len = u32::from_le_bytes(image[16..20].try_into().unwrap()) as usize;
    let annex_at = 20 + key_len;
    let annex_len = u32::from_le_bytes(image[annex_at..annex_at + 4].try_into().unwrap()) as usize;
    let len_at = (annex_at + 4 + annex_len).next_multiple_of(8);
    let mut bad = image.clone();
    bad[len_at..len_at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let hash = xxh3_64(&bad[..len_at + 8]);
    bad[len_at + 8..len_at + 16].copy_from_slice(&hash.to_le_bytes());
    assert!(matches!(read(&bad, KEY), Err(ImageError::Corrupt(_))));
}
