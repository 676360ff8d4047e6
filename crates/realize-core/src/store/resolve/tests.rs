//! The fallback walk, called directly (the kernels that run these tests
//! have openat2), against openat2's answers.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;

use rustix::fs::{OFlags, fstat};

use super::{DirError, create_dirs, open_dir, open_root, walk};

/// What an open answered: the inode of the directory opened, or why not.
fn answer(opened: Result<OwnedFd, DirError>) -> Result<u64, String> {
    match opened {
        Ok(fd) => Ok(fstat(&fd).unwrap().st_ino),
        Err(DirError::Missing) => Err("missing".into()),
        Err(DirError::NotADirectory(index)) => Err(format!("not a directory at {index}")),
        Err(DirError::Io(e)) => Err(e.to_string()),
    }
}

fn ino(path: &Path) -> u64 {
    std::fs::symlink_metadata(path).unwrap().ino()
}

#[test]
fn the_walk_opens_directories_beneath_the_root_and_never_through_a_symlink() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let (root, outside) = (root.path(), outside.path());
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::create_dir_all(outside.join("x")).unwrap();
    std::fs::write(root.join("a/file"), b"a file").unwrap();
    symlink(outside, root.join("a/out")).unwrap();
    // Even a symlink that stays inside the root is not followed.
    symlink(root.join("a/b"), root.join("a/in")).unwrap();
    let fd = open_root(root).unwrap();
    let cases: [(&[&str], Result<u64, String>); 10] = [
        (&[], Ok(ino(root))),
        (&["a"], Ok(ino(&root.join("a")))),
        (&["a", "b"], Ok(ino(&root.join("a/b")))),
        (&["a", "out"], Err("not a directory at 1".into())),
        (&["a", "out", "x"], Err("not a directory at 1".into())),
        (&["a", "in"], Err("not a directory at 1".into())),
        (&["a", "file"], Err("not a directory at 1".into())),
        (&["a", "file", "x"], Err("not a directory at 1".into())),
        (&["a", "missing", "x"], Err("missing".into())),
        (&["a", "b", "missing"], Err("missing".into())),
    ];
    for (components, expected) in cases {
        for flags in [OFlags::PATH, OFlags::RDONLY] {
            let walked = answer(walk(fd.as_fd(), components, flags));
            assert_eq!(walked, expected, "walk of {components:?}, {flags:?}");
            // openat2 answers the same, its own way.
            let opened = answer(open_dir(fd.as_fd(), components, flags));
            assert_eq!(opened, expected, "open_dir of {components:?}, {flags:?}");
        }
    }
    // What the walk opens to read can be read.
    let listing = rustix::fs::Dir::new(walk(fd.as_fd(), &["a"], OFlags::RDONLY).unwrap());
    let mut names: Vec<String> = listing
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().to_string())
        .filter(|name| name != "." && name != "..")
        .collect();
    names.sort();
    assert_eq!(names, ["b", "file", "in", "out"]);
}

#[test]
fn parents_are_created_one_by_one_and_never_through_a_symlink() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let (root, outside) = (root.path(), outside.path());
    symlink(outside, root.join("out")).unwrap();
    std::fs::create_dir(root.join("a")).unwrap();
    symlink(outside, root.join("a/out")).unwrap();
    let fd = open_root(root).unwrap();

    let created = answer(create_dirs(fd.as_fd(), &["a", "new", "deeper"]));
    assert_eq!(created, Ok(ino(&root.join("a/new/deeper"))));
    for (components, at) in [(&["out", "x"][..], 0), (&["a", "out", "x"][..], 1)] {
        let refused = answer(create_dirs(fd.as_fd(), components));
        assert_eq!(refused, Err(format!("not a directory at {at}")));
    }
    assert_eq!(std::fs::read_dir(outside).unwrap().count(), 0);
}
