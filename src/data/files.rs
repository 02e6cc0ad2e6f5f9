//! Datasets of image FILES, listed but not decoded: a class folder (`DIR/<class>/<image>`), a
//! folder of splits (`DIR/{train,val,test}/<class>/<image>`) and a manifest (`FILE.csv` or
//! `FILE.jsonl` of `path,label`). Decoding and resizing belong to the model's preprocessing
//! (`repository::preprocess`), so these lists are what the CLI tools stream in batches and what
//! the trainer decodes at its input size; any image size is fine here.

use std::path::{Path, PathBuf};

use super::DataError;

/// File name extensions read as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "webp", "gif"];

/// The split folder names of `DIR/{train,val,test}/<class>/*`.
pub const SPLIT_FOLDERS: [&str; 3] = ["train", "val", "test"];

/// A labelled list of image files.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFiles {
    /// The folder or manifest the list came from (for messages).
    pub origin: PathBuf,
    /// The image files, in listing order.
    pub paths: Vec<PathBuf>,
    /// Label of each file: an index into `class_names`.
    pub labels: Vec<usize>,
    /// Class names: folder names (sorted), a manifest's label names (sorted), or `"0"..` when
    /// a manifest gives class indices.
    pub class_names: Vec<String>,
    /// True when the labels are class indices given as numbers (a manifest of indices), not
    /// names: they then index a model's labels directly.
    pub indexed: bool,
}

impl ImageFiles {
    /// Number of files.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// True when there are no files.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The files at `indices`, in that order (same classes). Panics on an index out of range.
    pub fn subset(&self, indices: &[usize]) -> ImageFiles {
        ImageFiles {
            origin: self.origin.clone(),
            paths: indices.iter().map(|&i| self.paths[i].clone()).collect(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            class_names: self.class_names.clone(),
            indexed: self.indexed,
        }
    }

    /// Class name of each file.
    pub fn label_names(&self) -> impl Iterator<Item = &str> {
        self.labels.iter().map(|&l| self.class_names[l].as_str())
    }
}

/// Whether `name` has an image extension and is not hidden.
pub fn is_image_name(name: &str) -> bool {
    !name.starts_with('.')
        && Path::new(name)
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>, DataError> {
    let mut v = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DataError::io(dir, e))?;
    v.sort_by_key(|e| e.file_name());
    Ok(v)
}

/// The split folders `DIR/train`, `DIR/val`, `DIR/test` that exist, or `None` when `dir` has no
/// `train` folder (it is then one split of class folders).
pub fn split_folders(dir: &Path) -> Option<Vec<(&'static str, PathBuf)>> {
    if !dir.join("train").is_dir() {
        return None;
    }
    Some(
        SPLIT_FOLDERS
            .iter()
            .map(|s| (*s, dir.join(s)))
            .filter(|(_, p)| p.is_dir())
            .collect(),
    )
}

/// Lists `dir/<class>/<image>`: classes are the subfolders in sorted name order, images the
/// image files directly inside them (hidden files and other extensions are skipped).
pub fn list_class_folder(dir: &Path) -> Result<ImageFiles, DataError> {
    let mut class_names = Vec::new();
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    for class_dir in sorted_entries(dir)? {
        let path = class_dir.path();
        let name = class_dir.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !path.is_dir() {
            continue;
        }
        let label = class_names.len();
        class_names.push(name);
        for f in sorted_entries(&path)? {
            if is_image_name(&f.file_name().to_string_lossy()) && f.path().is_file() {
                paths.push(f.path());
                labels.push(label);
            }
        }
    }
    if paths.is_empty() {
        return Err(DataError::ShapeMismatch {
            path: dir.to_path_buf(),
            detail: "no images found (expected DIR/<class>/<image> files)".into(),
        });
    }
    Ok(ImageFiles {
        origin: dir.to_path_buf(),
        paths,
        labels,
        class_names,
        indexed: false,
    })
}

/// Reads a manifest: `.csv` lines `path,label` (an optional `path,label` header; the last comma
/// separates, so paths may hold commas) or `.jsonl` objects `{"path": ..., "label": ...}`.
/// Paths are relative to the manifest's folder. Labels that are all non-negative integers are
/// class indices; otherwise every label is a class name (classes in sorted name order).
pub fn read_manifest(path: &Path) -> Result<ImageFiles, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let bad = |line: usize, detail: String| DataError::Decode {
        path: path.to_path_buf(),
        detail: format!("line {line}: {detail}"),
    };
    let jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("ndjson"));
    let mut rows: Vec<(String, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if jsonl {
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(i + 1, e.to_string()))?;
            let file = v.get("path").and_then(|p| p.as_str());
            let label = match v.get("label") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            match (file, label) {
                (Some(f), Some(l)) => rows.push((f.to_string(), l)),
                _ => {
                    return Err(bad(
                        i + 1,
                        "expected {\"path\": STRING, \"label\": STRING or NUMBER}".into(),
                    ));
                }
            }
        } else {
            let unquote = |s: &str| s.trim().trim_matches('"').to_string();
            let (f, l) = line
                .rsplit_once(',')
                .ok_or_else(|| bad(i + 1, "expected PATH,LABEL".into()))?;
            let (f, l) = (unquote(f), unquote(l));
            if rows.is_empty() && f.eq_ignore_ascii_case("path") && l.eq_ignore_ascii_case("label")
            {
                continue;
            }
            if f.is_empty() || l.is_empty() {
                return Err(bad(i + 1, "empty path or label".into()));
            }
            rows.push((f, l));
        }
    }
    if rows.is_empty() {
        return Err(DataError::ShapeMismatch {
            path: path.to_path_buf(),
            detail: "the manifest lists no images".into(),
        });
    }
    let base = path.parent().unwrap_or(Path::new(""));
    let indices: Option<Vec<usize>> = rows.iter().map(|(_, l)| l.parse().ok()).collect();
    let (labels, class_names, indexed) = match indices {
        Some(ix) => {
            let k = ix.iter().max().map_or(0, |m| m + 1);
            (ix, super::numbered_classes(k), true)
        }
        None => {
            let mut names: Vec<String> = rows.iter().map(|(_, l)| l.clone()).collect();
            names.sort();
            names.dedup();
            let labels = rows
                .iter()
                .map(|(_, l)| names.binary_search(l).unwrap_or_default())
                .collect();
            (labels, names, false)
        }
    };
    Ok(ImageFiles {
        origin: path.to_path_buf(),
        paths: rows.iter().map(|(f, _)| base.join(f)).collect(),
        labels,
        class_names,
        indexed,
    })
}

/// The labels of `files` as indices into `classes`, matching class names (for `indexed` files,
/// the numbers themselves, checked `< classes.len()`). Unknown names are an error naming the
/// first few and how many there are; `what` names the dataset in it.
pub fn labels_by_name(
    files: &ImageFiles,
    classes: &[String],
    what: &str,
) -> Result<Vec<usize>, DataError> {
    let mismatch = |detail: String| DataError::ShapeMismatch {
        path: files.origin.clone(),
        detail,
    };
    if files.indexed {
        if let Some(&l) = files.labels.iter().find(|&&l| l >= classes.len()) {
            return Err(mismatch(format!(
                "{what}: class index {l} is out of range (there are {} classes)",
                classes.len()
            )));
        }
        return Ok(files.labels.clone());
    }
    let map: Vec<Option<usize>> = files
        .class_names
        .iter()
        .map(|n| classes.iter().position(|c| c == n))
        .collect();
    let unknown: Vec<&str> = files
        .class_names
        .iter()
        .zip(&map)
        .filter(|(_, m)| m.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    if !unknown.is_empty() {
        return Err(mismatch(format!(
            "{what}: {} unknown class name{} {}; known names are {}",
            unknown.len(),
            if unknown.len() == 1 { "" } else { "s" },
            few(&unknown),
            few(&classes.iter().map(String::as_str).collect::<Vec<_>>()),
        )));
    }
    Ok(files
        .labels
        .iter()
        .map(|&l| map[l].unwrap_or_default())
        .collect())
}

/// At most five quoted names, then how many more: error messages stay short for 1000 classes.
pub fn few(names: &[&str]) -> String {
    const SHOWN: usize = 5;
    let mut s: Vec<String> = names.iter().take(SHOWN).map(|n| format!("{n:?}")).collect();
    if names.len() > SHOWN {
        s.push(format!("and {} more", names.len() - SHOWN));
    }
    s.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn lists_class_folders_and_detects_split_folders() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "b/1.png",
            "b/0.JPG",
            "a/x.jpeg",
            "a/.hidden.png",
            "a/notes.txt",
        ] {
            touch(&d.path().join(f));
        }
        let l = list_class_folder(d.path()).unwrap();
        assert_eq!(l.class_names, ["a", "b"]);
        assert_eq!(l.labels, [0, 1, 1]);
        assert!(l.paths[1].ends_with("b/0.JPG"));
        assert!(split_folders(d.path()).is_none());
        touch(&d.path().join("train/a/1.png"));
        touch(&d.path().join("test/a/1.png"));
        let s = split_folders(d.path()).unwrap();
        assert_eq!(
            s.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["train", "test"]
        );
    }

    #[test]
    fn manifests_of_names_and_of_indices() {
        let d = tempfile::tempdir().unwrap();
        let csv = d.path().join("m.csv");
        std::fs::write(
            &csv,
            "path,label\nimg/a,1.png,ship\n\"c.png\",cat\nd.png,ship\n",
        )
        .unwrap();
        let m = read_manifest(&csv).unwrap();
        assert_eq!(m.class_names, ["cat", "ship"]);
        assert_eq!(m.labels, [1, 0, 1]);
        assert_eq!(m.paths[0], d.path().join("img/a,1.png"));
        assert!(!m.indexed);
        let jsonl = d.path().join("m.jsonl");
        std::fs::write(
            &jsonl,
            "{\"path\": \"a.png\", \"label\": 3}\n{\"path\": \"b.png\", \"label\": 0}\n",
        )
        .unwrap();
        let m = read_manifest(&jsonl).unwrap();
        assert!(m.indexed);
        assert_eq!((m.labels.clone(), m.class_names.len()), (vec![3, 0], 4));
        let classes: Vec<String> = ["x", "y", "z", "w"].map(String::from).to_vec();
        assert_eq!(labels_by_name(&m, &classes, "m").unwrap(), [3, 0]);
        assert!(labels_by_name(&m, &classes[..3], "m").is_err());
        std::fs::write(&jsonl, "{\"file\": \"a.png\"}\n").unwrap();
        assert!(
            read_manifest(&jsonl)
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
    }

    #[test]
    fn names_are_matched_and_unknown_ones_are_named_briefly() {
        let files = ImageFiles {
            origin: "o".into(),
            paths: vec!["a".into(), "b".into()],
            labels: vec![0, 1],
            class_names: vec!["ship".into(), "cat".into()],
            indexed: false,
        };
        let model: Vec<String> = ["airplane", "cat", "ship"].map(String::from).to_vec();
        assert_eq!(labels_by_name(&files, &model, "d").unwrap(), [2, 1]);
        let many: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
        let e = labels_by_name(&files, &many, "d").unwrap_err().to_string();
        assert!(e.contains("2 unknown class names \"ship\", \"cat\""), "{e}");
        assert!(e.contains("and 995 more") && !e.contains("c999"), "{e}");
    }
}
