//! The gRPC methods: each goes in by [`Handler::unary`] or
//! [`Handler::streaming`] (observed, admitted, decoded, authorized) and is
//! then the store call, with what it may hold counted in its peer's budget.

use super::*;

#[tonic::async_trait]
impl pb::realize_server::Realize for Handler {
    type ListStream = ServerStream<pb::ListResponse>;
    type ReadStream = ServerStream<pb::ReadResponse>;
    type DiffStream = ServerStream<pb::DiffResponse>;
    type WriteFilesStream = ServerStream<pb::WriteFilesResponse>;
    type ReadFilesStream = ServerStream<pb::ReadFilesResponse>;

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        self.unary(
            "List",
            request,
            Need::Read,
            |call, list: request::List| async move {
                let listing =
                    call.service()
                        .list(&list.dir, list.prefix.as_ref(), list.include_partial);
                let entries = self.cancellable(&call, listing).await?;
                Ok(self.cancellable_stream(call, server_stream(entries)))
            },
        )
        .await
    }

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        self.unary(
            "Read",
            request,
            Need::Read,
            |call, read: request::Read| async move {
                let memory = self
                    .reserve(&call, "a Read", read_memory(read.length))
                    .await?;
                let reading = call.service().read(
                    &read.dir,
                    &read.path,
                    read.offset,
                    read.length,
                    read.if_stamp,
                );
                let data = self.cancellable(&call, reading).await?;
                let stream = holding(server_stream(data), memory);
                Ok(self.cancellable_stream(call, stream))
            },
        )
        .await
    }

    async fn write(
        &self,
        request: Request<Streaming<pb::WriteRequest>>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.streaming(
            "Write",
            request,
            Need::Write,
            |call, header, stream| async move {
                let WriteHeader {
                    dir,
                    path,
                    offset,
                    file_size,
                    whole_file,
                } = header.clone();
                let budgeted = |data| {
                    let data =
                        budgeted_body(data, &call.connection.budget, &self.live, WRITE_CHUNK);
                    cancellable_body(data, &call)
                };
                let result = if let Some(algorithm) = whole_file {
                    let (data, expected) = whole_file_body(stream, header, algorithm);
                    call.service()
                        .write_file(&dir, &path, file_size, budgeted(data), expected)
                        .await
                } else {
                    let data = body(stream, header, pb::WriteRequest::into_data);
                    call.service()
                        .write(&dir, &path, offset, file_size, budgeted(data))
                        .await
                };
                let bytes_written = self.write_outcome(&call, result)?;
                tracing::debug!(%dir, %path, offset, bytes_written, "write");
                Ok(pb::WriteResponse::from(bytes_written))
            },
        )
        .await
    }

    async fn write_files(
        &self,
        request: Request<Streaming<pb::WriteFilesRequest>>,
    ) -> Result<Response<Self::WriteFilesStream>, Status> {
        self.admitted("WriteFiles", request, |call, files| async move {
            let peer_id = call.connection.peer.peer_id.clone();
            let (handler, span) = (self.clone(), tracing::Span::current());
            let (budget, live) = (Arc::clone(&call.connection.budget), Arc::clone(&self.live));
            // The files that have arrived are written together, in one
            // trip to the disk, while the next ones arrive. Each file is
            // counted in the peer's budget before the next is taken, until
            // its batch is written.
            let responses = files
                .map_ok(Named::<WriteFile>::from)
                .and_then(move |file| {
                    let size = file.request.as_ref().map_or(0, |w| w.file.data.len());
                    let reserving = reserve(&budget, &live, "a WriteFiles file", size as u64);
                    async move {
                        match reserving.await {
                            Ok(memory) => Ok((file, memory)),
                            Err(refusal) => Err(memory_refused(refusal).into()),
                        }
                    }
                })
                .ready_chunks(FILES_AT_ONCE)
                .map(move |messages| {
                    let (handler, peer_id) = (handler.clone(), peer_id.clone());
                    async move {
                        let mut files = Vec::with_capacity(messages.len());
                        let mut memory = Vec::with_capacity(messages.len());
                        let mut broken = None;
                        for message in messages {
                            match message {
                                Ok((file, held)) => {
                                    files.push(file);
                                    memory.push(held);
                                }
                                // The client's stream broke: no more files.
                                Err(status) => {
                                    broken = Some(status);
                                    break;
                                }
                            }
                        }
                        let mut answers: Vec<Result<pb::WriteFilesResponse, Status>> = handler
                            .write_some_files(&peer_id, files)
                            .await
                            .into_iter()
                            .map(Ok)
                            .collect();
                        drop(memory);
                        answers.extend(broken.map(Err));
                        stream::iter(answers)
                    }
                    .instrument(span.clone())
                })
                .buffered(2)
                .flatten()
                .boxed();
            Ok(self.cancellable_stream(call, responses))
        })
        .await
    }

    async fn read_files(
        &self,
        request: Request<pb::ReadFilesRequest>,
    ) -> Result<Response<Self::ReadFilesStream>, Status> {
        self.unary(
            "ReadFiles",
            request,
            Need::Read,
            |call, read: request::ReadFiles| {
                async move {
                    let request::ReadFiles { refs, algorithm } = read;
                    let valid = refs.valid();
                    // Read whole before they are sent: what the stamps claim is
                    // what the call may make the daemon hold.
                    let claimed = claimed_bytes(&valid)
                        .filter(|claimed| *claimed <= MAX_READ_BYTES_PER_CALL)
                        .ok_or_else(|| CallError::ReadTooLarge {
                            dir: refs.dir.clone(),
                            claimed: claimed_bytes(&valid),
                        })?;
                    let memory = self.reserve(&call, "a ReadFiles call", claimed).await?;
                    let reading = call
                        .service()
                        .read_files(&refs.dir, &valid, algorithm)
                        .map(Ok::<_, CallError>);
                    let read = self.cancellable(&call, reading).await?;
                    let answers: Vec<Result<pb::ReadFilesResponse, Status>> = refs
                        .answers(read)
                        .into_iter()
                        .map(|a| Ok(a.into()))
                        .collect();
                    let stream = holding(stream::iter(answers).boxed(), memory);
                    Ok(self.cancellable_stream(call, stream))
                }
            },
        )
        .await
    }

    async fn delete_files(
        &self,
        request: Request<pb::DeleteFilesRequest>,
    ) -> Result<Response<pb::DeleteFilesResponse>, Status> {
        self.unary(
            "DeleteFiles",
            request,
            Need::Write,
            |call, refs: FileRefs| {
                async move {
                    // Not cut by a cancellation, as Delete: it is short, and the
                    // client acts on nothing before it has the answer.
                    let deleted = call.service().delete_files(&refs.dir, &refs.valid()).await;
                    Ok(pb::DeleteFilesResponse::from(refs.answers(deleted)))
                }
            },
        )
        .await
    }

    async fn signature(
        &self,
        request: Request<pb::SignatureRequest>,
    ) -> Result<Response<pb::SignatureResponse>, Status> {
        self.unary(
            "Signature",
            request,
            Need::Read,
            |call, sig: request::Signature| async move {
                let needs = signature_memory(sig.range, sig.block_size);
                let _memory = self.reserve(&call, "a Signature", needs).await?;
                let signing =
                    call.service()
                        .signature(&sig.dir, &sig.path, sig.range, sig.block_size);
                let signature = self.cancellable(&call, signing).await?;
                Ok(pb::SignatureResponse::from(signature))
            },
        )
        .await
    }

    async fn diff(
        &self,
        request: Request<pb::DiffRequest>,
    ) -> Result<Response<Self::DiffStream>, Status> {
        self.unary(
            "Diff",
            request,
            Need::Read,
            |call, diff: request::Diff| async move {
                let needs = diff_memory(diff.range, diff.signature.len());
                let memory = self.reserve(&call, "a Diff", needs).await?;
                let diffing =
                    call.service()
                        .diff(&diff.dir, &diff.path, diff.range, diff.signature);
                let delta = self.cancellable(&call, diffing).await?;
                let stream = holding(server_stream(delta), memory);
                Ok(self.cancellable_stream(call, stream))
            },
        )
        .await
    }

    async fn apply_delta(
        &self,
        request: Request<Streaming<pb::ApplyDeltaRequest>>,
    ) -> Result<Response<pb::ApplyDeltaResponse>, Status> {
        self.streaming("ApplyDelta", request, Need::Write, |call, header, stream| {
            async move {
                let ApplyDeltaHeader {
                    dir,
                    path,
                    range,
                    file_size,
                } = header.clone();
                let needs = apply_delta_memory(range);
                let _memory = self.reserve(&call, "an ApplyDelta", needs).await?;
                let delta = body(stream, header, pb::ApplyDeltaRequest::into_delta);
                let delta = cancellable_body(delta, &call);
                let result = call
                    .service()
                    .apply_delta(&dir, &path, range, file_size, delta)
                    .await;
                let bytes_written = self.write_outcome(&call, result)?;
                tracing::debug!(%dir, %path, start = range.start, end = range.end, bytes_written, "delta applied");
                Ok(pb::ApplyDeltaResponse::from(bytes_written))
            }
        })
        .await
    }

    async fn hash(
        &self,
        request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        self.unary(
            "Hash",
            request,
            Need::Read,
            |call, hash: request::Hash| async move {
                let _memory = self.reserve(&call, "a Hash", HASH_BUFFERED).await?;
                let hashing = call.service().hash(
                    &hash.dir,
                    &hash.path,
                    hash.kind,
                    hash.range,
                    hash.algorithm,
                );
                let result = self.cancellable(&call, hashing).await?;
                Ok(pb::HashResponse::from(result))
            },
        )
        .await
    }

    async fn finish(
        &self,
        request: Request<pb::FinishRequest>,
    ) -> Result<Response<pb::FinishResponse>, Status> {
        self.unary(
            "Finish",
            request,
            Need::Write,
            |call, finish: request::Finish| {
                async move {
                    // Only a digest to check makes Finish read the file.
                    let needs = if finish.verified.is_some() {
                        HASH_BUFFERED
                    } else {
                        0
                    };
                    let _memory = self.reserve(&call, "a Finish", needs).await?;
                    call.service()
                        .finish(&finish.dir, &finish.path, finish.verified)
                        .await?;
                    Ok(pb::FinishResponse::from(()))
                }
            },
        )
        .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.unary(
            "Delete",
            request,
            Need::Write,
            |call, delete: request::Delete| async move {
                call.service()
                    .delete(&delete.dir, &delete.path, delete.if_stamp)
                    .await?;
                Ok(pb::DeleteResponse::from(()))
            },
        )
        .await
    }

    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        self.unary("Info", request, Need::Read, |call, _: request::Info| {
            async move {
                let mut service = self.cancellable(&call, call.service().info()).await?;
                // A peer sees only the directories it may access, and how.
                if let Some(peer) = call.live.peers.get(&call.connection.peer.peer_id) {
                    service.dirs.retain(|dir| peer.may_access(&dir.id));
                    for dir in &mut service.dirs {
                        dir.read_only = peer.access == Access::ReadOnly;
                    }
                }
                let send_limit = call.connection.peer.send_limit.get();
                Ok(pb::InfoResponse::from(response::Info {
                    service,
                    send_limit,
                }))
            }
        })
        .await
    }

    async fn configure(
        &self,
        request: Request<pb::ConfigureRequest>,
    ) -> Result<Response<pb::ConfigureResponse>, Status> {
        self.unary(
            "Configure",
            request,
            Need::Read,
            |call, configure: request::Configure| async move {
                let peer = &call.connection.peer;
                let limit = configure.send_limit.map(check_rate).transpose()?;
                let old = peer.send_limit.set(limit);
                if old != limit {
                    tracing::info!(
                        peer = %peer.peer_id,
                        connection = %peer.addr,
                        old = %Rate(old),
                        new = %Rate(limit),
                        "send limit changed"
                    );
                    record_limit(
                        limit,
                        &[
                            KeyValue::new("scope", "connection"),
                            KeyValue::new("peer", peer.peer_id.clone()),
                        ],
                    );
                }
                Ok(pb::ConfigureResponse::from(peer.send_limit.get()))
            },
        )
        .await
    }
}
