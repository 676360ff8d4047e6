//! Every method of `Service` goes through `Wrapped` to the inner service,
//! and past the filter.

use std::sync::{Arc, Mutex};

use futures::StreamExt;

use super::*;
use crate::testing::sha256;

/// Records the method of every call it gets.
#[derive(Debug, Default)]
struct Recording(Mutex<Vec<Method>>);

impl Recording {
    fn record(&self, method: Method) {
        self.0.lock().unwrap().push(method);
    }

    fn take(&self) -> Vec<Method> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn stamp() -> FileStamp {
    FileStamp {
        size: 0,
        mtime_unix_nanos: 0,
        inode: 0,
    }
}

fn empty() -> ByteStream {
    futures::stream::empty().boxed()
}

#[async_trait]
impl Service for Recording {
    async fn info(&self) -> Result<ServiceInfo, ServiceError> {
        self.record(Method::Info);
        Ok(ServiceInfo {
            version: String::new(),
            dirs: Vec::new(),
            digests: Vec::new(),
        })
    }

    async fn list(
        &self,
        _: &DirId,
        _: Option<&RelPath>,
        _: bool,
    ) -> Result<EntryStream, ServiceError> {
        self.record(Method::List);
        Ok(futures::stream::empty().boxed())
    }

    async fn read(
        &self,
        _: &DirId,
        _: &RelPath,
        _: u64,
        _: Option<u64>,
        _: Option<FileStamp>,
    ) -> Result<ByteStream, ServiceError> {
        self.record(Method::Read);
        Ok(empty())
    }

    async fn read_hashed(
        &self,
        _: &DirId,
        _: &RelPath,
        _: FileStamp,
        algorithm: DigestAlgorithm,
    ) -> Result<(ByteStream, ExpectedHash), ServiceError> {
        self.record(Method::ReadHashed);
        let value = tokio::sync::oneshot::channel().1;
        Ok((empty(), ExpectedHash { algorithm, value }))
    }

    async fn write(
        &self,
        _: &DirId,
        _: &RelPath,
        _: u64,
        _: u64,
        _: ByteStream,
    ) -> Result<u64, ServiceError> {
        self.record(Method::Write);
        Ok(0)
    }

    async fn write_file(
        &self,
        _: &DirId,
        _: &RelPath,
        _: u64,
        _: ByteStream,
        _: ExpectedHash,
    ) -> Result<u64, ServiceError> {
        self.record(Method::WriteFile);
        Ok(0)
    }

    async fn signature(
        &self,
        _: &DirId,
        _: &RelPath,
        _: ByteRange,
        _: u32,
    ) -> Result<Bytes, ServiceError> {
        self.record(Method::Signature);
        Ok(Bytes::new())
    }

    async fn diff(
        &self,
        _: &DirId,
        _: &RelPath,
        _: ByteRange,
        _: Bytes,
    ) -> Result<ByteStream, ServiceError> {
        self.record(Method::Diff);
        Ok(empty())
    }

    async fn apply_delta(
        &self,
        _: &DirId,
        _: &RelPath,
        _: ByteRange,
        _: u64,
        _: ByteStream,
    ) -> Result<u64, ServiceError> {
        self.record(Method::ApplyDelta);
        Ok(0)
    }

    async fn hash(
        &self,
        _: &DirId,
        _: &RelPath,
        _: FileKind,
        _: Option<ByteRange>,
        _: DigestAlgorithm,
    ) -> Result<HashResult, ServiceError> {
        self.record(Method::Hash);
        Ok(HashResult {
            hash: sha256(b""),
            stamp: stamp(),
        })
    }

    async fn finish(&self, _: &DirId, _: &RelPath, _: Option<Digest>) -> Result<(), ServiceError> {
        self.record(Method::Finish);
        Ok(())
    }

    async fn delete(
        &self,
        _: &DirId,
        _: &RelPath,
        _: Option<FileStamp>,
    ) -> Result<(), ServiceError> {
        self.record(Method::Delete);
        Ok(())
    }

    async fn read_files(
        &self,
        _: &DirId,
        _: &[(RelPath, FileStamp)],
        _: DigestAlgorithm,
    ) -> Vec<Result<WholeFile, ServiceError>> {
        self.record(Method::ReadFiles);
        Vec::new()
    }

    async fn write_files(&self, _: &DirId, _: Vec<WholeFile>) -> Vec<Result<u64, ServiceError>> {
        self.record(Method::WriteFiles);
        Vec::new()
    }

    async fn delete_files(
        &self,
        _: &DirId,
        _: &[(RelPath, FileStamp)],
    ) -> Vec<Result<(), ServiceError>> {
        self.record(Method::DeleteFiles);
        Vec::new()
    }
}

/// A filter that records the method of every call it sees.
#[derive(Debug, Default)]
struct Seen(Mutex<Vec<Method>>);

#[async_trait]
impl Filter for Seen {
    async fn before(&self, call: Call<'_>) {
        self.0.lock().unwrap().push(call.method());
    }
}

/// Makes the call `method` names; the `match` has an arm for each method.
async fn call(service: &dyn Service, method: Method) {
    let (dir, path) = (DirId::new("d").unwrap(), RelPath::new("f").unwrap());
    let range = ByteRange::new(0, 1);
    let files = [(path.clone(), stamp())];
    let whole = WholeFile {
        path: path.clone(),
        data: Bytes::new(),
        digest: sha256(b""),
    };
    match method {
        Method::Info => drop(service.info().await),
        Method::List => drop(service.list(&dir, Some(&path), false).await),
        Method::Read => drop(service.read(&dir, &path, 0, None, None).await),
        Method::ReadHashed => drop(
            service
                .read_hashed(&dir, &path, stamp(), DigestAlgorithm::Sha256)
                .await,
        ),
        Method::Write => drop(service.write(&dir, &path, 0, 0, empty()).await),
        Method::WriteFile => {
            let expected = ExpectedHash::known(sha256(b""));
            drop(service.write_file(&dir, &path, 0, empty(), expected).await)
        }
        Method::Signature => drop(service.signature(&dir, &path, range, 1024).await),
        Method::Diff => drop(service.diff(&dir, &path, range, Bytes::new()).await),
        Method::ApplyDelta => drop(service.apply_delta(&dir, &path, range, 1, empty()).await),
        Method::Hash => drop(
            service
                .hash(&dir, &path, FileKind::Final, None, DigestAlgorithm::Sha256)
                .await,
        ),
        Method::Finish => drop(service.finish(&dir, &path, None).await),
        Method::Delete => drop(service.delete(&dir, &path, None).await),
        Method::ReadFiles => drop(
            service
                .read_files(&dir, &files, DigestAlgorithm::Sha256)
                .await,
        ),
        Method::WriteFiles => drop(service.write_files(&dir, vec![whole]).await),
        Method::DeleteFiles => drop(service.delete_files(&dir, &files).await),
    }
}

/// The names of the methods the `Service` trait declares, read from its
/// source, so a method added to the trait is missed by nothing below.
fn declared_methods() -> Vec<String> {
    let source = include_str!("../../service.rs");
    let body = source
        .split_once("pub trait Service")
        .and_then(|(_, rest)| rest.split_once("\n}\n"))
        .map(|(body, _)| body)
        .expect("service.rs declares the Service trait");
    body.lines()
        .filter_map(|line| line.strip_prefix("    async fn "))
        .filter_map(|rest| rest.split_once('('))
        .map(|(name, _)| name.to_string())
        .collect()
}

#[test]
fn method_lists_every_method_of_the_trait() {
    let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
    assert_eq!(names, declared_methods());
}

#[tokio::test]
async fn every_method_is_forwarded_and_seen_by_the_filter() {
    let inner = Arc::new(Recording::default());
    let wrapped = Wrapped::new(inner.clone(), Seen::default());
    for method in Method::ALL {
        call(&wrapped, method).await;
        assert_eq!(
            inner.take(),
            [method],
            "{} reached the inner service as",
            method.name()
        );
    }
    assert_eq!(*wrapped.filter.0.lock().unwrap(), Method::ALL);
}
