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
use crate::Sha256Hash;
use crate::error::ServiceError;
use crate::path::{DirId, RelPath};

/// A method of [`Service`], to tell calls apart without their arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Info,
    List,
    Read,
    ReadHashed,
    Write,
    WriteFile,
    Signature,
    Diff,
    ApplyDelta,
    Hash,
    Finish,
    Delete,
    ReadFiles,
    WriteFiles,
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
pub enum Call<'a> {
    Info,
    List {
        dir: &'a DirId,
        prefix: Option<&'a RelPath>,
        include_partial: bool,
    },
    Read {
        dir: &'a DirId,
        path: &'a RelPath,
        offset: u64,
        length: Option<u64>,
        if_stamp: Option<FileStamp>,
    },
    ReadHashed {
        dir: &'a DirId,
        path: &'a RelPath,
        stamp: FileStamp,
    },
    Write {
        dir: &'a DirId,
        path: &'a RelPath,
        offset: u64,
        file_size: u64,
    },
    WriteFile {
        dir: &'a DirId,
        path: &'a RelPath,
        file_size: u64,
    },
    Signature {
        dir: &'a DirId,
        path: &'a RelPath,
        range: ByteRange,
        block_size: u32,
    },
    Diff {
        dir: &'a DirId,
        path: &'a RelPath,
        range: ByteRange,
    },
    ApplyDelta {
        dir: &'a DirId,
        path: &'a RelPath,
        range: ByteRange,
        file_size: u64,
    },
    Hash {
        dir: &'a DirId,
        path: &'a RelPath,
        kind: FileKind,
        range: Option<ByteRange>,
    },
    Finish {
        dir: &'a DirId,
        path: &'a RelPath,
        expected: Option<Sha256Hash>,
    },
    Delete {
        dir: &'a DirId,
        path: &'a RelPath,
        if_stamp: Option<FileStamp>,
    },
    ReadFiles {
        dir: &'a DirId,
        files: &'a [(RelPath, FileStamp)],
    },
    WriteFiles {
        dir: &'a DirId,
        files: &'a [WholeFile],
    },
    DeleteFiles {
        dir: &'a DirId,
        files: &'a [(RelPath, FileStamp)],
    },
}

impl Call<'_> {
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
    ) -> Result<(ByteStream, ExpectedHash), ServiceError> {
        self.filter
            .before(Call::ReadHashed { dir, path, stamp })
            .await;
        let (data, expected) = self.inner.read_hashed(dir, path, stamp).await?;
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
    ) -> Result<HashResult, ServiceError> {
        let call = Call::Hash {
            dir,
            path,
            kind,
            range,
        };
        self.filter.before(call).await;
        self.inner.hash(dir, path, kind, range).await
    }

    async fn finish(
        &self,
        dir: &DirId,
        path: &RelPath,
        expected: Option<Sha256Hash>,
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
    ) -> Vec<Result<WholeFile, ServiceError>> {
        self.filter.before(Call::ReadFiles { dir, files }).await;
        let read = self.inner.read_files(dir, files).await;
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
