//! The node-local image directory (`images.dir`): the native images of the models this
//! scorer compiled, so that the next load of a version reads a ready-to-serve image
//! instead of fetching, parsing and compiling its ONNX file.
//!
//! Layout: `<dir>/<model id>/<version>.mmimg`, written atomically (a unique temporary
//! file, then a rename), so a reader sees a whole image or none, and an image is never
//! written in place: a model serving from a mapping of its image (large images are mapped)
//! keeps its pages through a rename over the file or its deletion. Each image names the
//! store's tag of the file it was compiled from (`ModelStore::source_tag`): a version
//! replaced in the store behind the scorer's back makes its image stale, never wrong.
//!
//! What it deliberately is not: shared storage. Images are the scorer's own cache on its
//! own volume (the chart's `emptyDir`); they are never read from or written to the model
//! store, so nothing another party writes is ever taken as a compiled model. A missing,
//! stale or corrupt image costs one compile; the image is then written again.
//!
//! The directory is bounded by `images.max_bytes`: after each write, the least recently
//! used images are deleted until it fits.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model_id::ModelId;

const EXTENSION: &str = "mmimg";

/// The image directory and its books.
#[derive(Debug)]
pub struct Images {
    dir: PathBuf,
    max_bytes: u64,
    books: Mutex<Books>,
    /// Unique suffixes for temporary files.
    writes: AtomicU64,
}

#[derive(Debug, Default)]
struct Books {
    /// Each image's size and the tick of its last use.
    files: HashMap<PathBuf, (u64, u64)>,
    bytes: u64,
    tick: u64,
}

/// What one write did to the directory.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub bytes: u64,
    /// Images deleted to keep the directory within `images.max_bytes`.
    pub evicted: usize,
}

impl Images {
    /// Opens (creating) `dir`, removes temporary files a killed process left, and counts
    /// the images already there (a restarted container keeps its `emptyDir`).
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Images> {
        std::fs::create_dir_all(dir)?;
        let mut books = Books::default();
        let mut found: Vec<(PathBuf, u64, std::time::SystemTime)> = Vec::new();
        for model in std::fs::read_dir(dir)? {
            let model = model?.path();
            if !model.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&model)? {
                let entry = entry?;
                let path = entry.path();
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(&path);
                } else if path.extension().is_some_and(|e| e == EXTENSION) {
                    let meta = entry.metadata()?;
                    let used = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                    found.push((path, meta.len(), used));
                }
            }
        }
        // Oldest first, so the ticks keep the files' order of last write.
        found.sort_by_key(|(_, _, used)| *used);
        for (path, bytes, _) in found {
            books.tick += 1;
            books.bytes += bytes;
            books.files.insert(path, (bytes, books.tick));
        }
        Ok(Images {
            dir: dir.to_path_buf(),
            max_bytes,
            books: Mutex::new(books),
            writes: AtomicU64::new(0),
        })
    }

    fn path(&self, id: &ModelId, version: u64) -> PathBuf {
        // A `ModelId` is a safe path component (`ModelId::parse`).
        self.dir
            .join(id.as_str())
            .join(format!("{version}.{EXTENSION}"))
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The image of `id` `version` and its length, when there is one. Blocking.
    pub fn open_image(&self, id: &ModelId, version: u64) -> Option<(File, u64)> {
        let path = self.path(id, version);
        let file = File::open(&path).ok()?;
        let len = file.metadata().ok()?.len();
        let mut books = self.books();
        books.tick += 1;
        let tick = books.tick;
        if let Some(entry) = books.files.get_mut(&path) {
            entry.1 = tick;
        }
        Some((file, len))
    }

    /// Deletes the image of `id` `version` (stale or corrupt). Blocking.
    pub fn remove(&self, id: &ModelId, version: u64) {
        let path = self.path(id, version);
        let _ = std::fs::remove_file(&path);
        let mut books = self.books();
        if let Some((bytes, _)) = books.files.remove(&path) {
            books.bytes = books.bytes.saturating_sub(bytes);
        }
    }

    /// Writes the image of `id` `version` atomically, then deletes the least recently
    /// used images until the directory fits its bound. Blocking.
    pub fn write(&self, id: &ModelId, version: u64, image: &[u8]) -> std::io::Result<Written> {
        let path = self.path(id, version);
        let folder = path.parent().expect("an image has a model folder");
        std::fs::create_dir_all(folder)?;
        let temp = folder.join(format!(
            ".{version}.{}.{}.tmp",
            std::process::id(),
            self.writes.fetch_add(1, Ordering::Relaxed)
        ));
        let written = std::fs::write(&temp, image).and_then(|()| std::fs::rename(&temp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        let bytes = image.len() as u64;
        let victims = {
            let mut books = self.books();
            books.tick += 1;
            let tick = books.tick;
            if let Some((old, _)) = books.files.insert(path.clone(), (bytes, tick)) {
                books.bytes = books.bytes.saturating_sub(old);
            }
            books.bytes += bytes;
            let mut victims = Vec::new();
            if books.bytes > self.max_bytes {
                let mut by_age: Vec<(u64, PathBuf, u64)> = books
                    .files
                    .iter()
                    .filter(|(p, _)| **p != path)
                    .map(|(p, (b, t))| (*t, p.clone(), *b))
                    .collect();
                by_age.sort_unstable_by_key(|(t, _, _)| *t);
                for (_, victim, size) in by_age {
                    if books.bytes <= self.max_bytes {
                        break;
                    }
                    books.files.remove(&victim);
                    books.bytes = books.bytes.saturating_sub(size);
                    victims.push(victim);
                }
            }
            victims
        };
        for victim in &victims {
            let _ = std::fs::remove_file(victim);
        }
        Ok(Written {
            bytes,
            evicted: victims.len(),
        })
    }

    /// Bytes of images on disk, by the books.
    pub fn bytes(&self) -> u64 {
        self.books().bytes
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ModelId {
        ModelId::parse(s).unwrap()
    }

    #[test]
    fn images_are_written_whole_read_back_and_kept_within_the_bound() {
        let dir = std::env::temp_dir().join(format!("mm-images-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let images = Images::open(&dir, 250).unwrap();
        assert!(images.open_image(&id("a"), 1).is_none());
        images.write(&id("a"), 1, &[1; 100]).unwrap();
        images.write(&id("b"), 1, &[2; 100]).unwrap();
        // `a` is used, so `b` is the least recently used when `c` does not fit.
        let (_, len) = images.open_image(&id("a"), 1).unwrap();
        assert_eq!(len, 100);
        let written = images.write(&id("c"), 2, &[3; 100]).unwrap();
        assert_eq!(written.evicted, 1);
        assert!(images.open_image(&id("b"), 1).is_none());
        assert!(images.open_image(&id("a"), 1).is_some());
        assert_eq!(images.bytes(), 200);
        // A rewrite replaces the image and its size.
        images.write(&id("a"), 1, &[4; 50]).unwrap();
        assert_eq!(images.bytes(), 150);
        let (mut file, _) = images.open_image(&id("a"), 1).unwrap();
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut back).unwrap();
        assert_eq!(back, vec![4; 50]);
        images.remove(&id("a"), 1);
        assert!(images.open_image(&id("a"), 1).is_none());
        assert_eq!(images.bytes(), 100);
        // A temporary file a killed writer left is removed; images on disk are counted.
        std::fs::write(dir.join("c").join(".2.99.0.tmp"), b"partial").unwrap();
        let reopened = Images::open(&dir, 250).unwrap();
        assert_eq!(reopened.bytes(), 100);
        assert!(!dir.join("c").join(".2.99.0.tmp").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
