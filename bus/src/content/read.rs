//! Reading stored bytes: a blob's parts found from its manifest, read part by part and
//! chunk by chunk with a window ahead, a byte range cut across chunks exactly.

use super::*;

impl ContentStore {
    /// The parts of the bytes named `sha256`, if they are stored.
    ///
    /// # Errors
    /// The object store's, but "not found"; a manifest that cannot be read.
    pub async fn blob(&self, sha256: &str) -> Result<Option<Blob>, ContentError> {
        let Some(info) = self.info(sha256).await? else {
            return Ok(None);
        };
        if info.description.as_deref() != Some(MANIFEST) {
            return Ok(Some(Blob {
                size: info.size as u64,
                parts: vec![Part {
                    name: sha256.to_owned(),
                    size: info.size as u64,
                }],
            }));
        }
        if info.size as u64 > MAX_MANIFEST {
            return Err(store_error(format!(
                "the manifest of {sha256} has {} bytes",
                info.size
            )));
        }
        // Read by direct gets, as parts are: the object store's own `get` makes a consumer
        // per call, and a burst of downloads ran into the stream's consumer limit (the
        // fault harness's check that every file can be downloaded).
        let subject = format!("$O.{FILES_BUCKET}.C.{}", info.nuid);
        let mut manifest = Vec::with_capacity(info.size);
        let mut chunks = std::pin::pin!(self.read_chunks(subject, info.chunks));
        while let Some(chunk) = chunks.try_next().await.map_err(store_error)? {
            manifest.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&manifest)
            .map(Some)
            .map_err(|e| store_error(format!("the manifest of {sha256}: {e}")))
    }

    /// Bytes `start..start + length` of `blob`, streamed a chunk at a time; whole parts
    /// before `start` are not read at all.
    pub fn read(
        &self,
        blob: &Blob,
        start: u64,
        length: u64,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let mut skip = start;
        let mut wanted = Vec::new();
        for part in &blob.parts {
            if skip >= part.size {
                skip -= part.size;
                continue;
            }
            wanted.push((part.name.clone(), skip));
            skip = 0;
        }
        let this = self.clone();
        futures::stream::iter(wanted)
            .map(move |(name, skip)| {
                let this = this.clone();
                this.read_part(name).skip_bytes(skip)
            })
            .flatten()
            .limit_bytes(length)
    }

    /// The bytes of one object, a chunk at a time.
    ///
    /// An object's chunks are messages on one subject, usually at consecutive stream
    /// sequences (one writer wrote them in turn): the next [`READ_AHEAD`] sequences are
    /// asked for at once, each checked to be a chunk of this object; where another
    /// object's message sits between (writers interleaved), the next chunk is looked up by
    /// subject instead. At most `READ_AHEAD` chunks are held.
    fn read_part(&self, name: String) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
        let this = self.clone();
        futures::stream::once(async move {
            let info = this
                .info(&name)
                .await
                .map_err(std::io::Error::other)?
                .ok_or_else(|| std::io::Error::other(format!("part {name} is missing")))?;
            let subject = format!("$O.{FILES_BUCKET}.C.{}", info.nuid);
            Ok::<_, std::io::Error>(this.read_chunks(subject, info.chunks))
        })
        .try_flatten()
    }

    /// `chunks` messages on `subject`, in order.
    fn read_chunks(
        &self,
        subject: String,
        chunks: usize,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
        struct Reading {
            stream: JsStream,
            subject: String,
            left: usize,
            /// The sequence after the last chunk read (0 before the first).
            after: u64,
            ahead: futures::stream::FuturesOrdered<
                futures::future::BoxFuture<
                    'static,
                    Result<async_nats::jetstream::message::StreamMessage, String>,
                >,
            >,
            /// The next sequence asked for ahead.
            asked: u64,
        }
        impl Reading {
            fn ask_ahead(&mut self) {
                while self.after > 0
                    && self.ahead.len() < READ_AHEAD
                    && (self.asked - self.after) < self.left as u64
                {
                    let (stream, seq) = (self.stream.clone(), self.asked);
                    self.ahead.push_back(Box::pin(async move {
                        stream.direct_get(seq).await.map_err(|e| e.to_string())
                    }));
                    self.asked += 1;
                }
            }
            async fn by_subject(&mut self) -> std::io::Result<Bytes> {
                self.ahead = futures::stream::FuturesOrdered::new();
                let message = self
                    .stream
                    .direct_get_next_for_subject(self.subject.clone(), Some(self.after.max(1)))
                    .await
                    .map_err(std::io::Error::other)?;
                Ok(self.took(message.sequence, message.payload))
            }
            fn took(&mut self, sequence: u64, payload: Bytes) -> Bytes {
                self.left -= 1;
                self.after = sequence + 1;
                if self.ahead.is_empty() {
                    self.asked = self.after;
                }
                payload
            }
        }
        let reading = Reading {
            stream: self.stream.clone(),
            subject,
            left: chunks,
            after: 0,
            ahead: futures::stream::FuturesOrdered::new(),
            asked: 0,
        };
        futures::stream::try_unfold(reading, |mut reading| async move {
            if reading.left == 0 {
                return Ok(None);
            }
            reading.ask_ahead();
            let payload = match reading.ahead.next().await {
                Some(Ok(message)) if *message.subject == *reading.subject => {
                    reading.took(message.sequence, message.payload)
                }
                // Not this object's chunk (or gone): find the next one by subject.
                Some(_) | None => reading.by_subject().await?,
            };
            Ok(Some((payload, reading)))
        })
    }

    /// The hex SHA-256 of `blob`'s bytes, read from the store.
    ///
    /// # Errors
    /// Reading failures.
    pub async fn hash(&self, blob: &Blob) -> Result<String, ContentError> {
        let mut hasher = Sha256::new();
        let mut bytes = std::pin::pin!(self.read(blob, 0, blob.size));
        while let Some(chunk) = bytes.try_next().await? {
            hasher.update(&chunk);
        }
        Ok(hex(&hasher.finalize()))
    }

    /// The whole bytes named `sha256` as a reader, if they are stored.
    ///
    /// # Errors
    /// The object store's, but "not found".
    pub async fn get(&self, sha256: &str) -> Result<Option<impl AsyncRead + Send>, ContentError> {
        Ok(self.blob(sha256).await?.map(|blob| {
            tokio_util::io::StreamReader::new(Box::pin(self.read(&blob, 0, blob.size)))
        }))
    }
}

/// Byte-level `skip` and `take` on a stream of chunks.
trait ByteStream: Stream<Item = std::io::Result<Bytes>> + Sized {
    fn skip_bytes(self, skip: u64) -> impl Stream<Item = std::io::Result<Bytes>> {
        let mut skip = skip;
        self.try_filter_map(move |mut chunk| {
            let keep = if skip >= chunk.len() as u64 {
                skip -= chunk.len() as u64;
                None
            } else {
                let _ = chunk.split_to(skip as usize);
                skip = 0;
                Some(chunk)
            };
            std::future::ready(Ok(keep))
        })
    }

    fn limit_bytes(self, length: u64) -> impl Stream<Item = std::io::Result<Bytes>> {
        let mut left = length;
        self.try_take_while(move |_| std::future::ready(Ok(left > 0)))
            .map_ok(move |mut chunk| {
                if chunk.len() as u64 > left {
                    chunk.truncate(left as usize);
                }
                left -= chunk.len() as u64;
                chunk
            })
    }
}

impl<S: Stream<Item = std::io::Result<Bytes>>> ByteStream for S {}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> impl Stream<Item = std::io::Result<Bytes>> {
        let mut next = 0u8;
        let chunks: Vec<_> = sizes
            .iter()
            .map(|&n| {
                let chunk: Vec<u8> = (0..n)
                    .map(|_| {
                        next = next.wrapping_add(1);
                        next
                    })
                    .collect();
                Ok(Bytes::from(chunk))
            })
            .collect();
        futures::stream::iter(chunks)
    }

    async fn collect(stream: impl Stream<Item = std::io::Result<Bytes>>) -> Vec<u8> {
        stream
            .try_fold(Vec::new(), |mut all, chunk| async move {
                all.extend_from_slice(&chunk);
                Ok(all)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn skipping_and_limiting_bytes_cut_across_chunks_exactly() {
        let all: Vec<u8> = (1..=10).collect();
        for start in 0..=10 {
            for len in 0..=(10 - start) {
                let got = collect(chunks(&[3, 0, 4, 3]).skip_bytes(start).limit_bytes(len)).await;
                assert_eq!(
                    got,
                    all[start as usize..(start + len) as usize],
                    "{start}+{len}"
                );
            }
        }
    }
}
