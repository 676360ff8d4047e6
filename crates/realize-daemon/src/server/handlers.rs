//! The gRPC methods: each admits its call, decodes and authorizes its
//! request, and hands it to the store.

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
        let observed = observe("List", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let dir = realize_proto::dir_id(&request.dir).map_err(invalid)?;
                call.authorize(&dir, Need::Read)?;
                let entries = self
                    .cancellable(&call, async {
                        call.service()
                            .list(&dir, request.include_partial)
                            .await
                            .map_err(|e| status(&e))
                    })
                    .await?;
                let stream = server_stream(entries, pb::ListResponse::from);
                Ok(Response::new(self.cancellable_stream(call, stream)))
            })
            .await
    }

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let observed = observe("Read", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let (dir, path) = target(&request.dir, &request.path)?;
                call.authorize(&dir, Need::Read)?;
                let memory = self
                    .reserve(&call, "a Read", read_memory(request.length))
                    .await?;
                let data = self
                    .cancellable(&call, async {
                        call.service()
                            .read(
                                &dir,
                                &path,
                                request.offset,
                                request.length,
                                request.if_stamp.map(Into::into),
                            )
                            .await
                            .map_err(|e| status(&e))
                    })
                    .await?;
                let stream = server_stream(data, |data| pb::ReadResponse { data });
                Ok(Response::new(
                    self.cancellable_stream(call, holding(stream, memory)),
                ))
            })
            .await
    }

    async fn write(
        &self,
        request: Request<Streaming<pb::WriteRequest>>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        use pb::write_request::Message;
        let observed = observe("Write", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let mut stream = request.into_inner();
                let header = self
                    .cancellable(
                        &call,
                        call.activity
                            .awaiting_client(header(&mut stream, |m| match m.message {
                                Some(Message::Header(h)) => Some(h),
                                _ => None,
                            })),
                    )
                    .await?;
                let (dir, path) = target(&header.dir, &header.path)?;
                call.authorize(&dir, Need::Write)?;
                call.check_file_size(&dir, &path, header.file_size)?;
                let result = if header.whole_file {
                    if header.offset != 0 {
                        return Err(Status::invalid_argument(format!(
                            "{dir}/{path}: a whole-file write starts at offset 0, not {}",
                            header.offset
                        )));
                    }
                    let (data, expected) = whole_file_body(stream, &dir, &path);
                    let data =
                        budgeted_body(data, &call.connection.budget, &self.live, WRITE_CHUNK);
                    let data = cancellable_body(data, &call);
                    call.service()
                        .write_file(&dir, &path, header.file_size, data, expected)
                        .await
                } else {
                    let data = body(
                        stream,
                        |m| match m.message {
                            Some(Message::Data(d)) => Some(d),
                            _ => None,
                        },
                        &dir,
                        &path,
                    );
                    let data =
                        budgeted_body(data, &call.connection.budget, &self.live, WRITE_CHUNK);
                    let data = cancellable_body(data, &call);
                    call.service()
                        .write(&dir, &path, header.offset, header.file_size, data)
                        .await
                };
                let bytes_written = self.write_outcome(&call, result)?;
                tracing::debug!(%dir, %path, offset = header.offset, bytes_written, "write");
                Ok(Response::new(pb::WriteResponse { bytes_written }))
            })
            .await
    }

    async fn write_files(
        &self,
        request: Request<Streaming<pb::WriteFilesRequest>>,
    ) -> Result<Response<Self::WriteFilesStream>, Status> {
        let observed = observe("WriteFiles", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let peer_id = call.connection.peer.peer_id.clone();
                let (handler, span) = (self.clone(), tracing::Span::current());
                let (budget, live) = (Arc::clone(&call.connection.budget), Arc::clone(&self.live));
                // The files that have arrived are written together, in one
                // trip to the disk, while the next ones arrive. Each file is
                // counted in the peer's budget before the next is taken, until
                // its batch is written.
                let responses = request
                    .into_inner()
                    .and_then(move |file| {
                        let reserving =
                            reserve(&budget, &live, "a WriteFiles file", file.data.len() as u64);
                        async move {
                            reserving
                                .await
                                .map(|memory| (file, memory))
                                .map_err(memory_refused)
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
                Ok(Response::new(self.cancellable_stream(call, responses)))
            })
            .await
    }

    async fn read_files(
        &self,
        request: Request<pb::ReadFilesRequest>,
    ) -> Result<Response<Self::ReadFilesStream>, Status> {
        let observed = observe("ReadFiles", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let (dir, files) = file_refs(&request.dir, request.files)?;
                call.authorize(&dir, Need::Read)?;
                let valid = valid_refs(&files);
                // Read whole before they are sent: what the stamps claim is
                // what the call may make the daemon hold.
                let claimed = claimed_bytes(&valid)
                    .filter(|claimed| *claimed <= MAX_READ_BYTES_PER_CALL)
                    .ok_or_else(|| CallError::ReadTooLarge {
                        dir: dir.clone(),
                        claimed: claimed_bytes(&valid),
                    })?;
                let memory = self.reserve(&call, "a ReadFiles call", claimed).await?;
                let read = self
                    .cancellable(&call, async {
                        Ok(call.service().read_files(&dir, &valid).await)
                    })
                    .await?;
                let answers: Vec<Result<pb::ReadFilesResponse, Status>> = outcomes(files, read)
                    .into_iter()
                    .map(|(path, outcome)| {
                        let (code, message) = code_and_message(&outcome);
                        let (data, sha256) = match outcome {
                            Ok(whole) => {
                                (whole.data, bytes::Bytes::copy_from_slice(&whole.sha256.0))
                            }
                            Err(_) => Default::default(),
                        };
                        Ok(pb::ReadFilesResponse {
                            path,
                            code,
                            message,
                            data,
                            sha256,
                        })
                    })
                    .collect();
                let stream = holding(stream::iter(answers).boxed(), memory);
                Ok(Response::new(self.cancellable_stream(call, stream)))
            })
            .await
    }

    async fn delete_files(
        &self,
        request: Request<pb::DeleteFilesRequest>,
    ) -> Result<Response<pb::DeleteFilesResponse>, Status> {
        let observed = observe("DeleteFiles", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let (dir, files) = file_refs(&request.dir, request.files)?;
                call.authorize(&dir, Need::Write)?;
                let valid = valid_refs(&files);
                // Not cut by a cancellation, as Delete: it is short, and the
                // client acts on nothing before it has the answer.
                let deleted = call.service().delete_files(&dir, &valid).await;
                let results = outcomes(files, deleted)
                    .into_iter()
                    .map(|(path, outcome)| {
                        let (code, message) = code_and_message(&outcome);
                        pb::FileResult {
                            path,
                            code,
                            message,
                        }
                    })
                    .collect();
                Ok(Response::new(pb::DeleteFilesResponse { results }))
            })
            .await
    }

    async fn signature(
        &self,
        request: Request<pb::SignatureRequest>,
    ) -> Result<Response<pb::SignatureResponse>, Status> {
        let observed = observe("Signature", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let (dir, path) = target(&request.dir, &request.path)?;
                call.authorize(&dir, Need::Read)?;
                let range = required_range(request.range)?;
                let _memory = self
                    .reserve(
                        &call,
                        "a Signature",
                        signature_memory(range, request.block_size),
                    )
                    .await?;
                let signature = self
                    .cancellable(&call, async {
                        call.service()
                            .signature(&dir, &path, range, request.block_size)
                            .await
                            .map_err(|e| status(&e))
                    })
                    .await?;
                Ok(Response::new(pb::SignatureResponse { signature }))
            })
            .await
    }

    async fn diff(
        &self,
        request: Request<pb::DiffRequest>,
    ) -> Result<Response<Self::DiffStream>, Status> {
        let observed = observe("Diff", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let (dir, path) = target(&request.dir, &request.path)?;
                call.authorize(&dir, Need::Read)?;
                let range = required_range(request.range)?;
                let memory = self
                    .reserve(&call, "a Diff", diff_memory(range, request.signature.len()))
                    .await?;
                let delta = self
                    .cancellable(&call, async {
                        call.service()
                            .diff(&dir, &path, range, request.signature)
                            .await
                            .map_err(|e| status(&e))
                    })
                    .await?;
                let stream = server_stream(delta, |delta| pb::DiffResponse { delta });
                Ok(Response::new(
                    self.cancellable_stream(call, holding(stream, memory)),
                ))
            })
            .await
    }

    async fn apply_delta(
        &self,
        request: Request<Streaming<pb::ApplyDeltaRequest>>,
    ) -> Result<Response<pb::ApplyDeltaResponse>, Status> {
        use pb::apply_delta_request::Message;
        let observed = observe("ApplyDelta", &request);
        let method = observed.method;
        observed.run(async {
            let call = self.admit(&request, method)?;
            let mut stream = request.into_inner();
            let header = self
                .cancellable(
                    &call,
                    call.activity.awaiting_client(header(&mut stream, |m| match m.message {
                        Some(Message::Header(h)) => Some(h),
                        _ => None,
                    })),
                )
                .await?;
            let (dir, path) = target(&header.dir, &header.path)?;
            call.authorize(&dir, Need::Write)?;
            call.check_file_size(&dir, &path, header.file_size)?;
            let range = required_range(header.range)?;
            let _memory = self
                .reserve(&call, "an ApplyDelta", apply_delta_memory(range))
                .await?;
            let delta = body(
                stream,
                |m| match m.message {
                    Some(Message::Delta(d)) => Some(d),
                    _ => None,
                },
                &dir,
                &path,
            );
            let delta = cancellable_body(delta, &call);
            let result = call
                .service()
                .apply_delta(&dir, &path, range, header.file_size, delta)
                .await;
            let bytes_written = self.write_outcome(&call, result)?;
            tracing::debug!(%dir, %path, start = range.start, end = range.end, bytes_written, "delta applied");
            Ok(Response::new(pb::ApplyDeltaResponse { bytes_written }))
        })
        .await
    }

    async fn hash(
        &self,
        request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let observed = observe("Hash", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let (dir, path) = target(&request.dir, &request.path)?;
                call.authorize(&dir, Need::Read)?;
                let kind = realize_proto::file_kind(request.kind).map_err(invalid)?;
                let _memory = self.reserve(&call, "a Hash", HASH_BUFFERED).await?;
                let result = self
                    .cancellable(&call, async {
                        call.service()
                            .hash(&dir, &path, kind, request.range.map(ByteRange::from))
                            .await
                            .map_err(|e| status(&e))
                    })
                    .await?;
                Ok(Response::new(result.into()))
            })
            .await
    }

    async fn finish(
        &self,
        request: Request<pb::FinishRequest>,
    ) -> Result<Response<pb::FinishResponse>, Status> {
        let observed = observe("Finish", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let (dir, path) = target(&request.dir, &request.path)?;
                call.authorize(&dir, Need::Write)?;
                let verified = match request.sha256.len() {
                    0 => None,
                    _ => Some(Sha256Hash::from_slice(&request.sha256).ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "{dir}/{path}: sha256 must be 32 bytes, got {}",
                            request.sha256.len()
                        ))
                    })?),
                };
                // Only a digest to check makes Finish read the file.
                let needs = if verified.is_some() { HASH_BUFFERED } else { 0 };
                let _memory = self.reserve(&call, "a Finish", needs).await?;
                call.service()
                    .finish(&dir, &path, verified)
                    .await
                    .map_err(|e| status(&e))?;
                Ok(Response::new(pb::FinishResponse {}))
            })
            .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let observed = observe("Delete", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let request = request.into_inner();
                let (dir, path) = target(&request.dir, &request.path)?;
                call.authorize(&dir, Need::Write)?;
                call.service()
                    .delete(&dir, &path, request.if_stamp.map(Into::into))
                    .await
                    .map_err(|e| status(&e))?;
                Ok(Response::new(pb::DeleteResponse {}))
            })
            .await
    }

    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let observed = observe("Info", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let mut info = self
                    .cancellable(&call, async {
                        call.service().info().await.map_err(|e| status(&e))
                    })
                    .await?;
                // A peer sees only the directories it may access, and how.
                if let Some(peer) = call.live.peers.get(&call.connection.peer.peer_id) {
                    info.dirs.retain(|dir| peer.may_access(&dir.id));
                    for dir in &mut info.dirs {
                        dir.read_only = peer.access == Access::ReadOnly;
                    }
                }
                Ok(Response::new(pb::InfoResponse {
                    send_limit: call.connection.peer.send_limit.get(),
                    ..info.into()
                }))
            })
            .await
    }

    async fn configure(
        &self,
        request: Request<pb::ConfigureRequest>,
    ) -> Result<Response<pb::ConfigureResponse>, Status> {
        let observed = observe("Configure", &request);
        let method = observed.method;
        observed
            .run(async {
                let call = self.admit(&request, method)?;
                let peer = &call.connection.peer;
                let limit = request
                    .into_inner()
                    .send_limit
                    .map(check_rate)
                    .transpose()
                    .map_err(|e| Status::invalid_argument(format!("send_limit: {e}")))?;
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
                Ok(Response::new(pb::ConfigureResponse {
                    send_limit: peer.send_limit.get(),
                }))
            })
            .await
    }
}
