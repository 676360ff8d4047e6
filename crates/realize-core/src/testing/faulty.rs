//! `Faulty`: a local store with one fault injected, for the tests of what
//! the move does when a side misbehaves.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::BytesMut;
use futures::StreamExt;

use crate::path::{DirId, RelPath};
use crate::service::{ByteStream, Call, FileKind, Filter, Method, WholeFile, Wrapped};
use crate::stop::Stop;
use crate::store::LocalStore;

/// What a [`Faulty`] store does wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Flips the first byte of every chunk, or whole file, it is asked to write.
    FlipWrittenBytes,
    /// Appends a byte to the file just before it is first hashed whole or read from its start.
    ChangeBeforeRead,
    /// Appends a byte to the file just before its first delete.
    ChangeBeforeDelete,
    /// Stops the move hard at the first write, which then never ends: a
    /// transfer in flight when the user presses Ctrl-C.
    HardStopOnWrite,
    /// Stops the move softly at the first write, which then goes on.
    SoftStopOnWrite,
    /// Stops the move hard at the first write, which then goes on: a
    /// destination that finishes what it had taken when the user pressed Ctrl-C.
    HardStopOnWriteThatFinishes,
    /// Renames the partial file to its final name just before it is first
    /// hashed: another client finishing it under the move.
    FinishedByAnotherClient,
}

/// The filter that injects a [`Fault`] into a local store.
#[derive(Debug)]
pub struct Faulty {
    root: PathBuf,
    fault: Fault,
    armed: AtomicBool,
    stop: Stop,
}

impl Faulty {
    /// A store of `root` served as directory `d`, with `fault`.
    pub fn new(root: &Path, fault: Fault) -> Wrapped<LocalStore, Self> {
        Self::stopping(root, fault, Stop::new())
    }

    /// Like [`Faulty::new`], with the move's `stop` for the stop faults.
    pub fn stopping(root: &Path, fault: Fault, stop: Stop) -> Wrapped<LocalStore, Self> {
        let dir = DirId::new("d").unwrap_or_else(|e| panic!("{e}"));
        let store = LocalStore::new([(dir, root.to_path_buf())]);
        let faulty = Faulty {
            root: root.to_path_buf(),
            fault,
            armed: AtomicBool::new(true),
            stop,
        };
        Wrapped::new(Arc::new(store), faulty)
    }

    /// Whether `fault` is this store's and has not happened yet; it now has.
    fn fires(&self, fault: Fault) -> bool {
        self.fault == fault && self.armed.swap(false, Ordering::SeqCst)
    }

    /// Appends a byte to `path` the first time `fault` is triggered.
    fn trigger(&self, fault: Fault, path: &RelPath) {
        if self.fires(fault) {
            let file = self.root.join(path.as_str());
            let appended = std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .and_then(|mut f| std::io::Write::write_all(&mut f, b"!"));
            appended.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    }

    /// The stop faults, at the start of any write.
    async fn before_write(&self) {
        match self.fault {
            Fault::HardStopOnWrite => {
                self.stop.hard();
                std::future::pending().await
            }
            Fault::SoftStopOnWrite => self.stop.soft(),
            Fault::HardStopOnWriteThatFinishes => self.stop.hard(),
            _ => {}
        }
    }

    /// Another client renames the partial file of `path` to its final name.
    fn finish_under_the_move(&self, path: &RelPath) {
        if self.fires(Fault::FinishedByAnotherClient) {
            let partial = self.root.join(path.partial_path().as_str());
            std::fs::rename(&partial, self.root.join(path.as_str()))
                .unwrap_or_else(|e| panic!("{}: {e}", partial.display()));
        }
    }
}

#[async_trait]
impl Filter for Faulty {
    async fn before(&self, call: Call<'_>) {
        match call {
            Call::Read {
                path, offset: 0, ..
            }
            | Call::ReadHashed { path, .. }
            | Call::Hash {
                path,
                kind: FileKind::Final,
                range: None,
                ..
            } => self.trigger(Fault::ChangeBeforeRead, path),
            Call::Hash {
                path,
                kind: FileKind::Partial,
                ..
            } => self.finish_under_the_move(path),
            Call::ReadFiles { files, .. } => {
                for (path, _) in files {
                    self.trigger(Fault::ChangeBeforeRead, path);
                }
            }
            Call::Delete { path, .. } => self.trigger(Fault::ChangeBeforeDelete, path),
            Call::DeleteFiles { files, .. } => {
                for (path, _) in files {
                    self.trigger(Fault::ChangeBeforeDelete, path);
                }
            }
            Call::Write { .. } | Call::WriteFile { .. } | Call::WriteFiles { .. } => {
                self.before_write().await
            }
            _ => {}
        }
    }

    fn incoming(&self, method: Method, data: ByteStream) -> ByteStream {
        if self.fault != Fault::FlipWrittenBytes || method == Method::ApplyDelta {
            return data;
        }
        data.map(|chunk| {
            let mut chunk = BytesMut::from(chunk?);
            flip_first(&mut chunk);
            Ok(chunk.freeze())
        })
        .boxed()
    }

    async fn incoming_files(&self, files: Vec<WholeFile>) -> Vec<WholeFile> {
        if self.fault != Fault::FlipWrittenBytes {
            return files;
        }
        files
            .into_iter()
            .map(|mut file| {
                let mut data = BytesMut::from(file.data);
                flip_first(&mut data);
                file.data = data.freeze();
                file
            })
            .collect()
    }
}

fn flip_first(data: &mut [u8]) {
    if let Some(first) = data.first_mut() {
        *first ^= 0xff;
    }
}
