//! Test doubles shared by the crate's tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use crate::digest::Sha256Hash;
use crate::error::ServiceError;
use crate::path::{DirId, RelPath};
use crate::service::{
    ByteRange, ByteStream, EntryStream, ExpectedHash, FileKind, FileStamp, HashResult, Service,
    ServiceInfo,
};
use crate::stop::Stop;
use crate::store::LocalStore;

/// What a [`Faulty`] store does wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Flips the first byte of every chunk it is asked to write.
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

/// A local store with a fault injected, delegating everything else.
#[derive(Debug)]
pub(crate) struct Faulty {
    inner: LocalStore,
    root: PathBuf,
    fault: Fault,
    armed: AtomicBool,
    stop: Stop,
}

impl Faulty {
    /// A store of `root` served as directory `d`.
    pub(crate) fn new(root: &Path, fault: Fault) -> Self {
        Self::stopping(root, fault, Stop::new())
    }

    /// Like [`Faulty::new`], with the move's `stop` for the stop faults.
    pub(crate) fn stopping(root: &Path, fault: Fault, stop: Stop) -> Self {
        Faulty {
            inner: LocalStore::new([(DirId::new("d").unwrap(), root.to_path_buf())]),
            root: root.to_path_buf(),
            fault,
            armed: AtomicBool::new(true),
            stop,
        }
    }

    /// Appends a byte to `path` the first time `fault` is triggered.
    fn trigger(&self, fault: Fault, path: &RelPath) {
        if self.fault == fault && self.armed.swap(false, Ordering::SeqCst) {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(self.root.join(path.as_str()))
                .unwrap();
            file.write_all(b"!").unwrap();
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

    /// The data a write is given, with the written-bytes fault applied.
    fn on_write(&self, data: ByteStream) -> ByteStream {
        if self.fault != Fault::FlipWrittenBytes {
            return data;
        }
        data.map(|chunk| {
            let mut chunk = BytesMut::from(chunk?);
            if let Some(first) = chunk.first_mut() {
                *first ^= 0xff;
            }
            Ok(chunk.freeze())
        })
        .boxed()
    }
}

#[async_trait]
impl Service for Faulty {
    async fn info(&self) -> Result<ServiceInfo, ServiceError> {
        self.inner.info().await
    }

    async fn list(&self, dir: &DirId, include_partial: bool) -> Result<EntryStream, ServiceError> {
        self.inner.list(dir, include_partial).await
    }

    async fn read(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        length: Option<u64>,
        if_stamp: Option<FileStamp>,
    ) -> Result<ByteStream, ServiceError> {
        if offset == 0 {
            self.trigger(Fault::ChangeBeforeRead, path);
        }
        self.inner.read(dir, path, offset, length, if_stamp).await
    }

    async fn write(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        file_size: u64,
        data: ByteStream,
    ) -> Result<u64, ServiceError> {
        self.before_write().await;
        let data = self.on_write(data);
        self.inner.write(dir, path, offset, file_size, data).await
    }

    async fn write_file(
        &self,
        dir: &DirId,
        path: &RelPath,
        file_size: u64,
        data: ByteStream,
        expected: ExpectedHash,
    ) -> Result<u64, ServiceError> {
        self.before_write().await;
        let data = self.on_write(data);
        self.inner
            .write_file(dir, path, file_size, data, expected)
            .await
    }

    async fn signature(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        block_size: u32,
    ) -> Result<Bytes, ServiceError> {
        self.inner.signature(dir, path, range, block_size).await
    }

    async fn diff(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        signature: Bytes,
    ) -> Result<ByteStream, ServiceError> {
        self.inner.diff(dir, path, range, signature).await
    }

    async fn apply_delta(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        file_size: u64,
        delta: ByteStream,
    ) -> Result<u64, ServiceError> {
        self.inner
            .apply_delta(dir, path, range, file_size, delta)
            .await
    }

    async fn hash(
        &self,
        dir: &DirId,
        path: &RelPath,
        kind: FileKind,
        range: Option<ByteRange>,
    ) -> Result<HashResult, ServiceError> {
        if kind == FileKind::Final && range.is_none() {
            self.trigger(Fault::ChangeBeforeRead, path);
        }
        if kind == FileKind::Partial
            && self.fault == Fault::FinishedByAnotherClient
            && self.armed.swap(false, Ordering::SeqCst)
        {
            let partial = self.root.join(path.partial_path().as_str());
            std::fs::rename(partial, self.root.join(path.as_str())).unwrap();
        }
        self.inner.hash(dir, path, kind, range).await
    }

    async fn finish(
        &self,
        dir: &DirId,
        path: &RelPath,
        verified: Option<Sha256Hash>,
    ) -> Result<(), ServiceError> {
        self.inner.finish(dir, path, verified).await
    }

    async fn delete(
        &self,
        dir: &DirId,
        path: &RelPath,
        if_stamp: Option<FileStamp>,
    ) -> Result<(), ServiceError> {
        self.trigger(Fault::ChangeBeforeDelete, path);
        self.inner.delete(dir, path, if_stamp).await
    }
}
