//! One file's bytes brought to the destination: a new file in one pass,
//! or a partial or different file resumed by ranges, hashes and deltas.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::*;

/// Brings the destination's partial file to the source's content.
pub(super) struct Transfer<'a> {
    pub(super) src: &'a dyn Service,
    pub(super) dst: &'a dyn Service,
    pub(super) dir: &'a DirId,
    /// The file on the source.
    pub(super) path: &'a RelPath,
    /// Where it goes on the destination (the same path but for a sub-path move).
    pub(super) target: &'a RelPath,
    pub(super) size: u64,
    pub(super) options: &'a MoveOptions,
    pub(super) file: &'a FileTracker,
}

impl Transfer<'_> {
    /// Copies a file the destination has in no form, hashing it on its way,
    /// and has the destination check and finish it in the same call: one
    /// read of the source, one write of the destination, nothing read back.
    /// Returns the source's digest and the bytes sent.
    pub(super) async fn whole_file(&self, stamp: FileStamp) -> Result<(Digest, u64), MoveError> {
        if self.size > 0 {
            self.file.phase(Phase::Copying);
        }
        let (data, source_hash) = self
            .src
            .read_hashed(self.dir, self.path, stamp, self.options.algorithm())
            .await
            .map_err(|e| self.source_error(e))?;
        let file = self.file.clone();
        let data = on_end(data, move || file.phase(Phase::Checking));
        // Counted as the destination takes them.
        let (data, relay) = Relay::new(data, self.file, true);
        // The source's hash goes on to the destination, and is kept for the
        // log and for a mismatch's error; never sent if the data failed.
        let (expected_tx, value) = tokio::sync::oneshot::channel();
        let expected = ExpectedHash {
            algorithm: source_hash.algorithm,
            value,
        };
        let kept = OnceLock::new();
        let forwarding = async {
            if let Ok(hash) = source_hash.value.await {
                let _ = kept.set(hash);
                let _ = expected_tx.send(hash);
            }
        };
        let writing = self
            .dst
            .write_file(self.dir, self.target, self.size, data, expected);
        let ((), written) = future::join(forwarding, writing).await;
        match (written, kept.get().copied()) {
            (Ok(_), Some(source_hash)) => Ok((source_hash, relay.bytes())),
            (Ok(_), None) => Err(MoveError::destination(ServiceError::Protocol(
                "finished the file without waiting for its digest".into(),
            ))),
            (Err(e), _) if relay.source_failed() => Err(self.source_error(e)),
            (Err(e), Some(source_hash)) => Err(self.finish_error(e, source_hash).await),
            (Err(e), None) => Err(MoveError::destination(e)),
        }
    }

    /// Brings the destination's partial or final file to the source's
    /// content, sending only what differs, then has it checked and finished.
    /// Returns the source's digest and the bytes sent.
    pub(super) async fn resume(
        &self,
        entry: &Entry,
        state: DestinationState,
    ) -> Result<(Digest, u64), MoveError> {
        let (src, dst, dir, path, size) = (self.src, self.dst, self.dir, self.path, self.size);
        let algorithm = self.options.algorithm();
        let target = self.target;
        let source_hash = async {
            let result = src
                .hash(dir, path, FileKind::Final, None, algorithm)
                .await
                .map_err(MoveError::source)?;
            if result.stamp != entry.stamp {
                return Err(MoveError::SourceChanged {
                    dir: dir.clone(),
                    path: path.clone(),
                });
            }
            Ok(result.hash)
        };
        let destination = async {
            // A final file of the same size may already be identical: compare
            // hashes before sending anything.
            if state.partial_stamp.is_none()
                && let Some(final_stamp) = state.final_stamp
                && final_stamp.size == size
            {
                self.file.phase(Phase::Hashing);
                let result = dst
                    .hash(dir, target, FileKind::Final, None, algorithm)
                    .await
                    .map_err(MoveError::destination)?;
                return Ok((Some(result.hash), 0));
            }
            let working = match (state.partial_stamp, state.final_stamp) {
                (Some(partial), _) => Some((FileKind::Partial, partial.size)),
                (None, Some(final_stamp)) => Some((FileKind::Final, final_stamp.size)),
                (None, None) => None,
            };
            Ok((None, self.run(working).await?))
        };
        let (source_hash, (existing_hash, mut sent)) =
            future::try_join(source_hash, destination).await?;
        // An identical final file needs no check beyond the hashes just compared.
        let expected = match existing_hash {
            Some(hash) if hash == source_hash => None,
            Some(_) => {
                tracing::info!(size, "destination differs from source, overwriting it");
                sent += self.run(Some((FileKind::Final, size))).await?;
                Some(source_hash)
            }
            None => Some(source_hash),
        };
        if expected.is_some() {
            self.file.phase(Phase::Checking);
        }
        // The destination checks its digest against the source's on disk,
        // then fsyncs and renames, in one call.
        if let Err(error) = dst.finish(dir, target, expected).await {
            return Err(self.finish_error(error, source_hash).await);
        }
        Ok((source_hash, sent))
    }

    pub(super) fn source_error(&self, error: ServiceError) -> MoveError {
        source_error(self.dir, self.path, error)
    }

    async fn finish_error(&self, error: ServiceError, source_hash: Digest) -> MoveError {
        finish_error(self.dst, self.dir, self.target, error, source_hash).await
    }

    /// `working` is the destination's working copy (form and length) if it
    /// has one. Returns the bytes sent.
    async fn run(&self, working: Option<(FileKind, u64)>) -> Result<u64, MoveError> {
        let (mut kind, base_len) = working.unwrap_or((FileKind::Partial, 0));
        let mut sent = 0;
        let mut offset = 0;
        let recorded = self.options.recorded();
        if base_len > 0 && self.size > 0 {
            self.file.phase(Phase::Hashing);
        }
        // Ranges stop at the end of what the destination has, so its whole
        // length is compared and the rest is streamed, resumable chunk by chunk.
        while offset < self.size.min(base_len) {
            let end = (offset + self.options.range_size)
                .min(self.size)
                .min(base_len);
            let range = ByteRange::new(offset, end);
            let (source, destination) = future::try_join(
                self.src
                    .hash(
                        self.dir,
                        self.path,
                        FileKind::Final,
                        Some(range),
                        self.options.algorithm(),
                    )
                    .map_err(MoveError::source),
                self.dst
                    .hash(
                        self.dir,
                        self.target,
                        kind,
                        Some(range),
                        self.options.algorithm(),
                    )
                    .map_err(MoveError::destination),
            )
            .await?;
            if destination.hash == source.hash {
                recorded.delta_saved.add(range.len(), &[]);
            } else {
                self.file.phase(Phase::Copying);
                let patch_sent = self.patch(range, source.hash).await?;
                recorded
                    .delta_saved
                    .add(range.len().saturating_sub(patch_sent), &[]);
                sent += patch_sent;
                kind = FileKind::Partial;
            }
            self.file.progress.bytes(range.len());
            offset = range.end;
        }
        // Always called, even with nothing left to copy: it also sets the
        // partial file's final size and turns a final file into a partial one.
        let rest = ByteRange::new(offset, self.size);
        if !rest.is_empty() {
            self.file.phase(Phase::Copying);
        }
        sent += self.copy_range(rest, true).await?;
        tracing::debug!(bytes_sent = sent, resumed_from = base_len, "transfer done");
        Ok(sent)
    }

    /// Patches one range with an rsync delta, checks it by SHA-256, and
    /// falls back to copying the range if the delta did not reproduce it.
    async fn patch(&self, range: ByteRange, expected: Digest) -> Result<u64, MoveError> {
        let signature = self
            .dst
            .signature(self.dir, self.target, range, self.options.block_size)
            .await
            .map_err(MoveError::destination)?;
        let signature_len = signature.len() as u64;
        let delta = self
            .src
            .diff(self.dir, self.path, range, signature)
            .await
            .map_err(MoveError::source)?;
        let (delta, relay) = Relay::new(delta, self.file, false);
        self.dst
            .apply_delta(self.dir, self.target, range, self.size, delta)
            .await
            .map_err(|e| relay.error(e))?;
        let mut sent = signature_len + relay.bytes();
        let patched = self
            .dst
            .hash(
                self.dir,
                self.target,
                FileKind::Partial,
                Some(range),
                self.options.algorithm(),
            )
            .await
            .map_err(MoveError::destination)?;
        if patched.hash != expected {
            tracing::warn!(
                start = range.start,
                end = range.end,
                "delta did not reproduce the range, copying it"
            );
            sent += self.copy_range(range, false).await?;
        }
        Ok(sent)
    }

    /// Copies `range` of the source and sets the destination's size; the
    /// bytes are reported to the file's progress if `report`.
    async fn copy_range(&self, range: ByteRange, report: bool) -> Result<u64, MoveError> {
        let data = self
            .src
            .read(self.dir, self.path, range.start, Some(range.len()), None)
            .await
            .map_err(MoveError::source)?;
        let (data, relay) = Relay::new(data, self.file, report);
        self.dst
            .write(self.dir, self.target, range.start, self.size, data)
            .await
            .map_err(|e| relay.error(e))?;
        Ok(relay.bytes())
    }
}

/// `data`, with `ended` called once the destination has taken its last byte.
fn on_end(data: ByteStream, ended: impl FnOnce() + Send + 'static) -> ByteStream {
    stream::unfold((data, Some(ended)), |(mut data, ended)| async move {
        match data.next().await {
            Some(item) => Some((item, (data, ended))),
            None => {
                if let Some(ended) = ended {
                    ended();
                }
                None
            }
        }
    })
    .boxed()
}

/// Counts the bytes relayed from the source to the destination, and
/// remembers whether the source failed, so an error is blamed on the right side.
struct Relay {
    bytes: Arc<AtomicU64>,
    source_failed: Arc<AtomicBool>,
}

impl Relay {
    /// Wraps `stream` of `file`; each chunk is also reported to the file's
    /// progress if `report`.
    fn new(stream: ByteStream, file: &FileTracker, report: bool) -> (ByteStream, Relay) {
        let relay = Relay {
            bytes: Arc::default(),
            source_failed: Arc::default(),
        };
        let (bytes, source_failed) = (Arc::clone(&relay.bytes), Arc::clone(&relay.source_failed));
        let sent = Arc::clone(&file.sent);
        let progress = report.then(|| Arc::clone(&file.progress));
        let stream = stream
            .inspect(move |item| match item {
                Ok(chunk) => {
                    bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    if let Some(progress) = &progress {
                        progress.bytes(chunk.len() as u64);
                    }
                }
                Err(_) => source_failed.store(true, Ordering::Relaxed),
            })
            .boxed();
        (stream, relay)
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn source_failed(&self) -> bool {
        self.source_failed.load(Ordering::Relaxed)
    }

    fn error(&self, error: ServiceError) -> MoveError {
        if self.source_failed() {
            MoveError::source(error)
        } else {
            MoveError::destination(error)
        }
    }
}
