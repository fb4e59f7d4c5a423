//! PostgreSQL's binary `COPY ... TO STDOUT` format, read as it arrives: the rows of a copy
//! out, each as its fields' bytes, from the chunks the server sends (a chunk may end
//! anywhere in a row).
//!
//! The format (PostgreSQL's documentation, "COPY", "Binary Format"): an 11-byte signature,
//! 32-bit flags and a 32-bit header extension length (with the extension); then each row as
//! a 16-bit field count and, per field, a 32-bit length (-1 for NULL) and that many bytes
//! in the type's binary form; a field count of -1 ends the data. Integers are big-endian.

/// The signature a binary copy starts with.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Rows of one binary copy out. Feed it the chunks with [`push`](Self::push) and take the
/// complete rows with [`next_row`](Self::next_row).
#[derive(Debug, Default)]
pub(super) struct BinaryRows {
    buffer: Vec<u8>,
    /// Where the unread bytes of `buffer` start.
    at: usize,
    header_read: bool,
    ended: bool,
}

/// A row's fields: `None` for NULL.
pub(super) type Fields<'a> = Vec<Option<&'a [u8]>>;

impl BinaryRows {
    /// Adds the next chunk of the copy.
    pub(super) fn push(&mut self, chunk: &[u8]) {
        if self.at > 0 && self.at >= self.buffer.len() / 2 {
            self.buffer.drain(..self.at);
            self.at = 0;
        }
        self.buffer.extend_from_slice(chunk);
    }

    /// Whether the copy's end marker was read.
    pub(super) fn ended(&self) -> bool {
        self.ended
    }

    /// The next complete row, `Ok(None)` when the bytes so far hold none (push more, or the
    /// copy ended).
    ///
    /// # Errors
    /// When the bytes are not a binary copy.
    pub(super) fn next_row(&mut self) -> Result<Option<Fields<'_>>, String> {
        if self.ended {
            return Ok(None);
        }
        if !self.header_read {
            let rest = &self.buffer[self.at..];
            if rest.len() < SIGNATURE.len() + 8 {
                return Ok(None);
            }
            if &rest[..SIGNATURE.len()] != SIGNATURE {
                return Err("not a binary COPY: the signature is missing".into());
            }
            let extension = be_u32(&rest[SIGNATURE.len() + 4..]) as usize;
            let header = SIGNATURE.len() + 8 + extension;
            if rest.len() < header {
                return Ok(None);
            }
            self.at += header;
            self.header_read = true;
        }
        let rest = &self.buffer[self.at..];
        if rest.len() < 2 {
            return Ok(None);
        }
        let count = i16::from_be_bytes([rest[0], rest[1]]);
        if count == -1 {
            self.at += 2;
            self.ended = true;
            return Ok(None);
        }
        let count = usize::try_from(count).map_err(|_| format!("a row of {count} fields"))?;
        // Where each field is in `rest`, found before any is handed out.
        let mut spans = Vec::with_capacity(count);
        let mut offset = 2;
        for _ in 0..count {
            let Some(length) = rest.get(offset..offset + 4) else {
                return Ok(None);
            };
            let length = i32::from_be_bytes([length[0], length[1], length[2], length[3]]);
            offset += 4;
            if length < 0 {
                spans.push(None);
                continue;
            }
            let end = offset + length as usize;
            if rest.len() < end {
                return Ok(None);
            }
            spans.push(Some(offset..end));
            offset = end;
        }
        let start = self.at;
        self.at += offset;
        let row = &self.buffer[start..start + offset];
        Ok(Some(
            spans
                .into_iter()
                .map(|span| span.map(|range| &row[range]))
                .collect(),
        ))
    }
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// A `bigint` field.
pub(super) fn int8(field: Option<&[u8]>) -> Result<i64, String> {
    let bytes: [u8; 8] = field
        .ok_or("a NULL bigint")?
        .try_into()
        .map_err(|_| "a bigint of other than 8 bytes")?;
    Ok(i64::from_be_bytes(bytes))
}

/// A `timestamptz` field: microseconds since 2000-01-01 00:00 UTC.
pub(super) fn timestamptz(field: &[u8]) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let micros = int8(Some(field))?;
    let epoch = chrono::DateTime::from_timestamp(946_684_800, 0).ok_or("the epoch")?;
    epoch
        .checked_add_signed(chrono::TimeDelta::microseconds(micros))
        .ok_or_else(|| format!("a timestamp {micros} µs from 2000 is out of range"))
}

/// A `text` field (or `json`, whose binary form is its text).
pub(super) fn text(field: Option<&[u8]>) -> Result<&str, String> {
    std::str::from_utf8(field.ok_or("a NULL text")?).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::{int8, text, timestamptz, BinaryRows, SIGNATURE};

    /// A binary copy of `rows` (each field text, or NULL), as the server would send it.
    fn copy(rows: &[Vec<Option<&str>>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend(0u32.to_be_bytes());
        out.extend(4u32.to_be_bytes());
        out.extend(b"ext!");
        for row in rows {
            out.extend((row.len() as i16).to_be_bytes());
            for field in row {
                match field {
                    None => out.extend((-1i32).to_be_bytes()),
                    Some(s) => {
                        out.extend((s.len() as i32).to_be_bytes());
                        out.extend(s.as_bytes());
                    }
                }
            }
        }
        out.extend((-1i16).to_be_bytes());
        out
    }

    fn read_all(bytes: &[u8], chunk: usize) -> Vec<Vec<Option<String>>> {
        let mut rows = BinaryRows::default();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            rows.push(piece);
            while let Some(fields) = rows.next_row().unwrap() {
                out.push(
                    fields
                        .into_iter()
                        .map(|f| f.map(|b| text(Some(b)).unwrap().to_owned()))
                        .collect(),
                );
            }
        }
        assert!(rows.ended(), "the end marker is read");
        out
    }

    #[test]
    fn rows_come_whole_however_the_chunks_cut_them() {
        let rows = vec![
            vec![Some("inventory_item"), Some("SKU-1"), None, Some("")],
            vec![
                Some("order"),
                Some("a much longer value than the chunk"),
                Some("{}"),
                None,
            ],
        ];
        let bytes = copy(&rows);
        let want: Vec<Vec<Option<String>>> = rows
            .iter()
            .map(|r| r.iter().map(|f| f.map(str::to_owned)).collect())
            .collect();
        for chunk in [1, 2, 3, 7, 19, bytes.len()] {
            assert_eq!(read_all(&bytes, chunk), want, "in chunks of {chunk}");
        }
    }

    #[test]
    fn bigints_are_big_endian_and_other_bytes_are_refused() {
        assert_eq!(int8(Some(&(-5i64).to_be_bytes())), Ok(-5));
        assert_eq!(int8(Some(&1_000_000i64.to_be_bytes())), Ok(1_000_000));
        assert!(int8(Some(&[0, 1])).is_err());
        assert!(int8(None).is_err());
        assert!(text(Some(&[0xff, 0xfe])).is_err());
    }

    #[test]
    fn timestamps_count_microseconds_from_2000() {
        assert_eq!(
            timestamptz(&0i64.to_be_bytes()).unwrap().to_rfc3339(),
            "2000-01-01T00:00:00+00:00"
        );
        assert_eq!(
            timestamptz(&(-1i64).to_be_bytes()).unwrap().to_rfc3339(),
            "1999-12-31T23:59:59.999999+00:00"
        );
        assert!(timestamptz(&[1, 2, 3]).is_err());
    }

    #[test]
    fn what_is_not_a_binary_copy_is_an_error() {
        let mut rows = BinaryRows::default();
        rows.push(b"id,name\n1,apple\n and more");
        assert!(rows.next_row().is_err());
    }
}
