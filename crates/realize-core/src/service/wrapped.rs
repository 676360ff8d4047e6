//! `Wrapped`: the one way to decorate a [`Service`], forwarding every method.
//!
//! A decorator written by hand must restate all the trait's methods, and one
//! it forgets falls back to the trait's default: a batch call then becomes a
//! call per file, silently. [`Wrapped`] forwards each method, batch calls
//! included, to the inner service, and lets a small [`Filter`] see each call
//! and the data going in and out.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    ByteRange, ByteStream, EntryStream, ExpectedHash, FileKind, FileStamp, HashResult, Service,
    ServiceInfo, WholeFile,
};
use crate::error::ServiceError;
use crate::path::{DirId, RelPath};
use crate::{Digest, DigestAlgorithm};

/// A method of [`Service`], to tell calls apart without their arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Method {
    /// [`Service::info`].
    Info,
    /// [`Service::list`].
    List,
    /// [`Service::read`].
    Read,
    /// [`Service::read_hashed`].
    ReadHashed,
    /// [`Service::write`].
    Write,
    /// [`Service::write_file`].
    WriteFile,
    /// [`Service::signature`].
    Signature,
    /// [`Service::diff`].
    Diff,
    /// [`Service::apply_delta`].
    ApplyDelta,
    /// [`Service::hash`].
    Hash,
    /// [`Service::finish`].
    Finish,
    /// [`Service::delete`].
    Delete,
    /// [`Service::read_files`].
    ReadFiles,
    /// [`Service::write_files`].
    WriteFiles,
    /// [`Service::delete_files`].
    DeleteFiles,
}

impl Method {
    /// Every method, in the order the trait declares them.
    pub const ALL: [Method; 15] = [
        Method::Info,
        Method::List,
        Method::Read,
        Method::ReadHashed,
        Method::Write,
        Method::WriteFile,
        Method::Signature,
        Method::Diff,
        Method::ApplyDelta,
        Method::Hash,
        Method::Finish,
        Method::Delete,
        Method::ReadFiles,
        Method::WriteFiles,
        Method::DeleteFiles,
    ];

    /// The method's name in the trait.
    pub fn name(self) -> &'static str {
        match self {
            Method::Info => "info",
            Method::List => "list",
            Method::Read => "read",
            Method::ReadHashed => "read_hashed",
            Method::Write => "write",
            Method::WriteFile => "write_file",
            Method::Signature => "signature",
            Method::Diff => "diff",
            Method::ApplyDelta => "apply_delta",
            Method::Hash => "hash",
            Method::Finish => "finish",
            Method::Delete => "delete",
            Method::ReadFiles => "read_files",
            Method::WriteFiles => "write_files",
            Method::DeleteFiles => "delete_files",
        }
    }
}

/// A call about to be forwarded, with its arguments (data streams apart).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Call<'a> {
    /// A call of [`Service::info`].
    Info,
    /// A call of [`Service::list`].
    List {
        /// The directory.
        dir: &'a DirId,
        /// Its `prefix` argument.
        prefix: Option<&'a RelPath>,
        /// Its `include_partial` argument.
        include_partial: bool,
    },
    /// A call of [`Service::read`].
    Read {
        /// The directory.
        dir: &'a DirId,
        /// The file.
        path: &'a RelPath,
        /// Its `offset` argument.
        offset: u64,
        /// Its `length` argument.
        length: Option<u64>,
        /// Its `if_stamp` argument.
        if_stamp: Option<FileStamp>,
    },
    /// A call of [`Service::read_hashed`].
    ReadHashed {
        /// The directory.
        dir: &'a DirId,
        /// The file.
        path: &'a RelPath,
        /// Its `stamp` argument.
        stamp: FileStamp,
        /// Its `algorithm` argument.
        algorithm: DigestAlgorithm,
    },
    /// A call of [`Service::write`].
    Write {
        /// The directory.
        dir: &'a DirId,
        /// The file.
        path: &'a RelPath,
        /// Its `offset` argument.
        offset: u64,
        /// Its `file_size` argument.
        file_size: u64,
    },
    /// A call of [`Service::write_file`].
    WriteFile {
        /// The directory.
        dir: &'a DirId,
        /// The file.
        path: &'a RelPath,
        /// Its `file_size` argument.
        file_size: u64,
        /// The algorithm of its `expected` digest.
        algorithm: DigestAlgorithm,
    },
    /// A call of [`Service::signature`].
    Signature {
        /// The directory.
        dir: &'a DirId,
        /// The file.
        path: &'a RelPath,
        /// Its `range` argument.
        range: ByteRange,
        /// Its `block_size` argument.
        block_size: u32,
    },
    /// A call of [`Service::diff`].
    Diff {
        /// The directory.
        dir: &'a DirId,
        /// The file.
        path: &'a RelPath,
        /// Its `range` argument.
        range: ByteRange,
    },
    /// A call of [`Service::apply_delta`].
    ApplyDelta {
        /// The directory.
        dir: &'a DirId,
        /// The file.
        path: &'a RelPath,
        /// Its `range` argument.
        range: ByteRange,
        /// Its `file_size` argument.
        file_size: u64,
    },
    /// A call of [`Service::hash`].
    Hash {
        /// The directory.
        dir: &'a DirId,
        /// The file.
        path: &'a RelPath,
        /// Its `kind` argument.
        kind: FileKind,
        /// Its `range` argument.
        range: Option<ByteRange>,
        /// Its `algorithm` argument.
        algorithm: DigestAlgorithm,
    },
    /// A call of [`Service::finish`].
    Finish {
        /// The directory.
        dir: &'a DirId,
        /// The file.
        path: &'a RelPath,
        /// Its `expected` argument.
        expected: Option<Digest>,
    },
    /// A call of [`Service::delete`].
    Delete {
        /// The directory.
        dir: &'a DirId,
        /// The file.
        path: &'a RelPath,
        /// Its `if_stamp` argument.
        if_stamp: Option<FileStamp>,
    },
    /// A call of [`Service::read_files`].
    ReadFiles {
        /// The directory.
        dir: &'a DirId,
        /// The files, in order.
        files: &'a [(RelPath, FileStamp)],
        /// Its `algorithm` argument.
        algorithm: DigestAlgorithm,
    },
    /// A call of [`Service::write_files`].
    WriteFiles {
        /// The directory.
        dir: &'a DirId,
        /// The files, in order.
        files: &'a [WholeFile],
    },
    /// A call of [`Service::delete_files`].
    DeleteFiles {
        /// The directory.
        dir: &'a DirId,
        /// The files, in order.
        files: &'a [(RelPath, FileStamp)],
    },
}

impl Call<'_> {
    /// The method this call is for.
    pub fn method(&self) -> Method {
        match self {
            Call::Info => Method::Info,
            Call::List { .. } => Method::List,
            Call::Read { .. } => Method::Read,
            Call::ReadHashed { .. } => Method::ReadHashed,
            Call::Write { .. } => Method::Write,
            Call::WriteFile { .. } => Method::WriteFile,
            Call::Signature { .. } => Method::Signature,
            Call::Diff { .. } => Method::Diff,
            Call::ApplyDelta { .. } => Method::ApplyDelta,
            Call::Hash { .. } => Method::Hash,
            Call::Finish { .. } => Method::Finish,
            Call::Delete { .. } => Method::Delete,
            Call::ReadFiles { .. } => Method::ReadFiles,
            Call::WriteFiles { .. } => Method::WriteFiles,
            Call::DeleteFiles { .. } => Method::DeleteFiles,
        }
    }
}

/// What a [`Wrapped`] service does besides forwarding; every hook does
/// nothing by default.
///
/// "Incoming" is data the caller hands the service (written bytes, deltas
/// to apply, whole files to write), "outgoing" what the service hands back
/// (bytes read, deltas computed, whole files read).
#[async_trait]
pub trait Filter: Send + Sync + std::fmt::Debug {
    /// Before each call is forwarded, the batch calls once for the batch.
    async fn before(&self, _call: Call<'_>) {}

    /// The data of `write` and `write_file`, and the delta of `apply_delta`.
    fn incoming(&self, _method: Method, data: ByteStream) -> ByteStream {
        data
    }

    /// The data of `read` and `read_hashed`, and the delta of `diff`.
    fn outgoing(&self, _method: Method, data: ByteStream) -> ByteStream {
        data
    }

    /// The files given to `write_files`, before they are forwarded.
    async fn incoming_files(&self, files: Vec<WholeFile>) -> Vec<WholeFile> {
        files
    }

    /// What `read_files` answered, before it is returned.
    fn outgoing_files(
        &self,
        files: Vec<Result<WholeFile, ServiceError>>,
    ) -> Vec<Result<WholeFile, ServiceError>> {
        files
    }
}

/// `inner` with `filter` applied to its calls; every method is forwarded,
/// so the inner service's own batch calls and hashing reads are kept.
#[derive(Debug)]
pub struct Wrapped<S: ?Sized, F> {
    filter: F,
    inner: Arc<S>,
}

impl<S: ?Sized, F> Wrapped<S, F> {
    /// `inner`, its calls passed through `filter`.
    pub fn new(inner: Arc<S>, filter: F) -> Self {
        Wrapped { filter, inner }
    }
}

#[async_trait]
impl<S, F> Service for Wrapped<S, F>
where
    S: Service + ?Sized,
    F: Filter,
{
    async fn info(&self) -> Result<ServiceInfo, ServiceError> {
        self.filter.before(Call::Info).await;
        self.inner.info().await
    }

    async fn list(
        &self,
        dir: &DirId,
        prefix: Option<&RelPath>,
        include_partial: bool,
    ) -> Result<EntryStream, ServiceError> {
        self.filter
            .before(Call::List {
                dir,
                prefix,
                include_partial,
            })
            .await;
        self.inner.list(dir, prefix, include_partial).await
    }

    async fn read(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        length: Option<u64>,
        if_stamp: Option<FileStamp>,
    ) -> Result<ByteStream, ServiceError> {
        let call = Call::Read {
            dir,
            path,
            offset,
            length,
            if_stamp,
        };
        self.filter.before(call).await;
        let data = self.inner.read(dir, path, offset, length, if_stamp).await?;
        Ok(self.filter.outgoing(Method::Read, data))
    }

    async fn read_hashed(
        &self,
        dir: &DirId,
        path: &RelPath,
        stamp: FileStamp,
        algorithm: DigestAlgorithm,
    ) -> Result<(ByteStream, ExpectedHash), ServiceError> {
        let call = Call::ReadHashed {
            dir,
            path,
            stamp,
            algorithm,
        };
        self.filter.before(call).await;
        let (data, expected) = self.inner.read_hashed(dir, path, stamp, algorithm).await?;
        Ok((self.filter.outgoing(Method::ReadHashed, data), expected))
    }

    async fn write(
        &self,
        dir: &DirId,
        path: &RelPath,
        offset: u64,
        file_size: u64,
        data: ByteStream,
    ) -> Result<u64, ServiceError> {
        let call = Call::Write {
            dir,
            path,
            offset,
            file_size,
        };
        self.filter.before(call).await;
        let data = self.filter.incoming(Method::Write, data);
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
        let call = Call::WriteFile {
            dir,
            path,
            file_size,
            algorithm: expected.algorithm,
        };
        self.filter.before(call).await;
        let data = self.filter.incoming(Method::WriteFile, data);
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
        let call = Call::Signature {
            dir,
            path,
            range,
            block_size,
        };
        self.filter.before(call).await;
        self.inner.signature(dir, path, range, block_size).await
    }

    async fn diff(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        signature: Bytes,
    ) -> Result<ByteStream, ServiceError> {
        self.filter.before(Call::Diff { dir, path, range }).await;
        let delta = self.inner.diff(dir, path, range, signature).await?;
        Ok(self.filter.outgoing(Method::Diff, delta))
    }

    async fn apply_delta(
        &self,
        dir: &DirId,
        path: &RelPath,
        range: ByteRange,
        file_size: u64,
        delta: ByteStream,
    ) -> Result<u64, ServiceError> {
        let call = Call::ApplyDelta {
            dir,
            path,
            range,
            file_size,
        };
        self.filter.before(call).await;
        let delta = self.filter.incoming(Method::ApplyDelta, delta);
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
        algorithm: DigestAlgorithm,
    ) -> Result<HashResult, ServiceError> {
        let call = Call::Hash {
            dir,
            path,
            kind,
            range,
            algorithm,
        };
        self.filter.before(call).await;
        self.inner.hash(dir, path, kind, range, algorithm).await
    }

    async fn finish(
        &self,
        dir: &DirId,
        path: &RelPath,
        expected: Option<Digest>,
    ) -> Result<(), ServiceError> {
        let call = Call::Finish {
            dir,
            path,
            expected,
        };
        self.filter.before(call).await;
        self.inner.finish(dir, path, expected).await
    }

    async fn delete(
        &self,
        dir: &DirId,
        path: &RelPath,
        if_stamp: Option<FileStamp>,
    ) -> Result<(), ServiceError> {
        let call = Call::Delete {
            dir,
            path,
            if_stamp,
        };
        self.filter.before(call).await;
        self.inner.delete(dir, path, if_stamp).await
    }

    async fn read_files(
        &self,
        dir: &DirId,
        files: &[(RelPath, FileStamp)],
        algorithm: DigestAlgorithm,
    ) -> Vec<Result<WholeFile, ServiceError>> {
        let call = Call::ReadFiles {
            dir,
            files,
            algorithm,
        };
        self.filter.before(call).await;
        let read = self.inner.read_files(dir, files, algorithm).await;
        self.filter.outgoing_files(read)
    }

    async fn write_files(
        &self,
        dir: &DirId,
        files: Vec<WholeFile>,
    ) -> Vec<Result<u64, ServiceError>> {
        self.filter
            .before(Call::WriteFiles { dir, files: &files })
            .await;
        let files = self.filter.incoming_files(files).await;
        self.inner.write_files(dir, files).await
    }

    async fn delete_files(
        &self,
        dir: &DirId,
        files: &[(RelPath, FileStamp)],
    ) -> Vec<Result<(), ServiceError>> {
        self.filter.before(Call::DeleteFiles { dir, files }).await;
        self.inner.delete_files(dir, files).await
    }
}

#[cfg(test)]
mod tests;
